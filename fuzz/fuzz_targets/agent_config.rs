//! The agent's configuration from outside: a legacy `update.conf` and a TOML drop-in, through
//! the same stages the agent uses (`legacy::parse_text` → `Inputs::from_legacy`,
//! `dropins::parse_str` → `Inputs::merge` → `Settings::from_inputs`), then the reboot windows of
//! valid settings asked whether they are open at a few times (DST changes included).
//!
//! Input: `update.conf` text, a NUL byte, then the drop-in's text (no NUL: all of it is the
//! drop-in). Invalid UTF-8 is refused by the agent when it reads the file, so it is skipped here.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use maintenance_window::Timestamp;
use update_agent::config::{Inputs, Settings, dropins, legacy};

/// Times the windows are evaluated at: both European DST changes of 2026, the American autumn
/// one, and a time picked from the input (2000..2100).
const TIMES: [i64; 3] = [1_774_747_800, 1_792_890_000, 1_793_514_600];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (legacy_text, dropin_text) = text.split_once('\0').unwrap_or(("", text));
    let legacy_file = Path::new("/etc/flatcar/update.conf");
    let legacy = legacy::parse_text(legacy_text, legacy_file);
    for value in [&legacy.group, &legacy.server, &legacy.machine_alias]
        .into_iter()
        .flatten()
    {
        assert!(!value.value.contains('\n'), "a legacy value spans lines");
        assert_eq!(value.file, legacy_file);
    }
    let mut inputs = Inputs::from_legacy(&legacy);
    let _ = Settings::from_inputs(&inputs);

    let dropin = Path::new("/etc/platte/agent.d/50-fuzz.toml");
    let mut warnings = Vec::new();
    let Ok(fragment) = dropins::parse_str(dropin_text, dropin, &mut warnings) else {
        return;
    };
    inputs.merge(fragment, dropin);
    let Ok(settings) = Settings::from_inputs(&inputs) else {
        return;
    };
    let hash = data.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let picked = 946_684_800 + (hash % (100 * 365 * 86_400)) as i64;
    let windows = &settings.reboot.windows;
    for t in TIMES.into_iter().chain([picked]) {
        let t = Timestamp::from_second(t).expect("in range");
        let open = windows.contains(t);
        if let Some((start, end)) = windows.next_opening(t) {
            assert!(start < end, "empty opening {start}..{end} at {t}");
            assert!(end > t, "opening {start}..{end} already over at {t}");
            assert_eq!(
                open,
                start <= t,
                "contains({t}) disagrees with next_opening {start}..{end}"
            );
        } else {
            assert!(!open && windows.is_empty());
        }
        if let Some(next) = windows.next_start_after(t) {
            assert!(next > t);
        }
    }
});

//! The state file survives `kill -9` of a process saving it in a loop: after every kill the
//! state loads cleanly (never reported corrupt) and is the last or a later save than observed.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use update_agent::state::{self, AgentState, StateStore};

const CHURN_ENV: &str = "PLATTE_TEST_STATE_CHURN_DIR";

fn counter(s: &AgentState) -> u64 {
    s.checkpoint.as_ref().unwrap()["counter"].as_u64().unwrap()
}

/// Child side: save states with an increasing counter until killed.
fn churn(dir: &Path) -> ! {
    let store = StateStore::open(dir).unwrap();
    let mut s = store.load().unwrap().state;
    let mut i = s.checkpoint.as_ref().map_or(0, |_| counter(&s));
    let pad = "p".repeat(64 * 1024);
    loop {
        i += 1;
        s.checkpoint = Some(serde_json::json!({ "counter": i, "pad": pad }));
        s.deny_list.insert(format!("v{}", i % 7));
        store.save(&s).unwrap();
    }
}

#[test]
fn state_survives_kill_9() {
    if let Ok(dir) = std::env::var(CHURN_ENV) {
        churn(Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    let mut last_seen = 0;
    for round in 0..6u64 {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "state_survives_kill_9",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHURN_ENV, dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Let it make progress past what we saw, by a varying amount, then kill it mid-flight.
        let goal = last_seen + 3 + round * 7;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Ok(s)) = state::read_state(dir.path()).unwrap()
                && s.checkpoint.is_some()
                && counter(&s) >= goal
            {
                break;
            }
            assert!(Instant::now() < deadline, "child made no progress");
            assert!(child.try_wait().unwrap().is_none(), "child exited early");
            std::thread::yield_now();
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = StateStore::open(dir.path()).unwrap();
        let loaded = store.load().unwrap();
        assert!(
            loaded.corrupt.is_none(),
            "round {round}: {:?}",
            loaded.corrupt
        );
        let c = counter(&loaded.state);
        assert!(
            c >= goal,
            "round {round}: counter went back to {c} < {goal}"
        );
        last_seen = c;
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.contains("corrupt"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

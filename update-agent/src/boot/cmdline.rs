//! Which partition the running `/usr` (or root) came from, read from the kernel command line.
//!
//! Parameters are consulted in this order, and the first one naming a partition by PARTUUID or
//! PARTLABEL is used: `mount.usr=`, `verity.usr=` (Flatcar puts the PARTUUID there when
//! `mount.usr=/dev/mapper/usr`), `usr=`, `root=`. Values may be `PARTUUID=…`, `PARTLABEL=…`,
//! `/dev/disk/by-partuuid/…` or `/dev/disk/by-partlabel/…`.

use super::gpt::Guid;

/// Parameters consulted, in order of preference.
pub const PARAMS: [&str; 4] = ["mount.usr", "verity.usr", "usr", "root"];

/// A partition reference found on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PartRef {
    /// By unique partition GUID.
    PartUuid(Guid),
    /// By partition name.
    PartLabel(String),
}

/// Splits a kernel command line into words, honouring double quotes as the kernel does.
pub fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_quotes = false;
    let mut any = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                any = true;
            }
            c if c.is_whitespace() && !in_quotes => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if any {
        out.push(cur);
    }
    out
}

/// Parses one parameter value into a partition reference, if it names one.
pub fn parse_ref(value: &str) -> Option<PartRef> {
    let uuid = |s: &str| s.parse::<Guid>().ok().map(PartRef::PartUuid);
    let label = |s: &str| (!s.is_empty()).then(|| PartRef::PartLabel(unescape_label(s)));
    if let Some(v) = value.strip_prefix("PARTUUID=") {
        uuid(v)
    } else if let Some(v) = value.strip_prefix("PARTLABEL=") {
        label(v)
    } else if let Some(v) = value.strip_prefix("/dev/disk/by-partuuid/") {
        uuid(v)
    } else if let Some(v) = value.strip_prefix("/dev/disk/by-partlabel/") {
        label(v)
    } else {
        None
    }
}

/// Undoes udev's `\x2f`-style escaping used in `/dev/disk/by-partlabel/` names.
fn unescape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("\\x") {
        out.push_str(&rest[..pos]);
        let hex = rest.get(pos + 2..pos + 4);
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(b) if b.is_ascii() => {
                out.push(char::from(b));
                rest = &rest[pos + 4..];
            }
            _ => {
                out.push_str("\\x");
                rest = &rest[pos + 2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// All partition references on `cmdline`, in order of preference (see [`PARAMS`]).
///
/// When a parameter appears more than once the last occurrence counts, as for the kernel.
pub fn candidates(cmdline: &str) -> Vec<(&'static str, PartRef)> {
    let words = words(cmdline);
    PARAMS
        .iter()
        .filter_map(|&p| {
            let value = words
                .iter()
                .rev()
                .find_map(|w| w.strip_prefix(p).and_then(|r| r.strip_prefix('=')))?;
            parse_ref(value).map(|r| (p, r))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLATCAR: &str = "BOOT_IMAGE=/flatcar/vmlinuz-a mount.usr=/dev/mapper/usr \
        verity.usr=PARTUUID=7130c94a-213a-4e5a-8e26-6cce9662f132 rootflags=rw mount.usrflags=ro \
        consoleblank=0 root=LABEL=ROOT console=ttyS0,115200n8 flatcar.first_boot=detected";

    #[test]
    fn flatcar_cmdline_uses_verity_usr() {
        let c = candidates(FLATCAR);
        assert_eq!(
            c,
            vec![(
                "verity.usr",
                PartRef::PartUuid("7130c94a-213a-4e5a-8e26-6cce9662f132".parse().unwrap())
            )]
        );
    }

    #[test]
    fn preference_order_and_forms() {
        let c = candidates(
            "root=/dev/disk/by-partlabel/ROOT usr=PARTLABEL=USR-B \
             mount.usr=/dev/disk/by-partuuid/E03DD35C-7C2D-4A47-B3FE-27F15780A57C",
        );
        assert_eq!(c.len(), 3);
        assert_eq!(c[0].0, "mount.usr");
        assert_eq!(c[1], ("usr", PartRef::PartLabel("USR-B".into())));
        assert_eq!(c[2], ("root", PartRef::PartLabel("ROOT".into())));
    }

    #[test]
    fn quotes_last_occurrence_and_escapes() {
        let c = candidates(r#"usr=PARTLABEL=old usr="PARTLABEL=USR A" x"#);
        assert_eq!(c, vec![("usr", PartRef::PartLabel("USR A".into()))]);
        assert_eq!(
            parse_ref(r"/dev/disk/by-partlabel/USR\x2fA"),
            Some(PartRef::PartLabel("USR/A".into()))
        );
        // mount.usrflags must not be taken for mount.usr.
        assert!(candidates("mount.usrflags=PARTLABEL=x").is_empty());
    }

    #[test]
    fn unresolvable_values_are_skipped() {
        assert!(
            candidates("root=/dev/sda3 usr=PARTUUID=nope mount.usr=/dev/mapper/usr").is_empty()
        );
    }
}

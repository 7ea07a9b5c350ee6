//! The validators every section's settings are built with (`[updates]` … `[dbus]` in
//! [`super::settings`], `[extensions]` in [`super::extensions`]): each takes the key's
//! dotted name and its merged [`Sourced`] input, applies the default when it is unset, and
//! fails with a [`ConfigError::Invalid`] naming the key, the file that set it and what is allowed.

use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use super::ConfigError;
use super::inputs::Sourced;

/// Builds an "invalid value" error for `key`, naming the file `s` was set in (`s.origin`).
pub(crate) fn invalid<T>(
    key: &'static str,
    s: &Sourced<T>,
    message: impl Into<String>,
) -> ConfigError {
    ConfigError::Invalid {
        key,
        origin: s.origin.to_string(),
        message: message.into(),
    }
}

/// Seconds in `[min, max]` as a `Duration`, or the default.
pub(crate) fn secs(
    key: &'static str,
    v: &Option<Sourced<u64>>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<Duration, ConfigError> {
    match v {
        None => Ok(Duration::from_secs(default)),
        Some(s) if s.value < min || s.value > max => Err(invalid(
            key,
            s,
            format!("{} is out of range: must be {min}..={max} seconds", s.value),
        )),
        Some(s) => Ok(Duration::from_secs(s.value)),
    }
}

/// A count in `[min, max]`, or the default.
pub(crate) fn count(
    key: &'static str,
    v: &Option<Sourced<u64>>,
    default: u32,
    min: u32,
    max: u32,
) -> Result<u32, ConfigError> {
    match v {
        None => Ok(default),
        Some(s) => match u32::try_from(s.value) {
            Ok(n) if (min..=max).contains(&n) => Ok(n),
            _ => Err(invalid(
                key,
                s,
                format!("{} is out of range: must be {min}..={max}", s.value),
            )),
        },
    }
}

/// A token of `[A-Za-z0-9._+-]`, 1..=max chars.
pub(crate) fn is_token(v: &str, max: usize) -> bool {
    !v.is_empty()
        && v.len() <= max
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
}

/// A token (see [`is_token`]) of at most `max` characters, or `None` when unset.
pub(crate) fn token(
    key: &'static str,
    v: &Option<Sourced<String>>,
    max: usize,
) -> Result<Option<String>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) if !is_token(&s.value, max) => Err(invalid(
            key,
            s,
            format!(
                "{:?} must be 1..={max} characters of A-Z a-z 0-9 . _ + -",
                s.value
            ),
        )),
        Some(s) => Ok(Some(s.value.clone())),
    }
}

/// A URL with one of `schemes`.
pub(crate) fn parse_url(
    key: &'static str,
    s: &Sourced<String>,
    schemes: &[&str],
) -> Result<Url, ConfigError> {
    let url = Url::parse(&s.value).map_err(|e| invalid(key, s, format!("{:?}: {e}", s.value)))?;
    if !schemes.contains(&url.scheme()) {
        return Err(invalid(
            key,
            s,
            format!(
                "{:?}: scheme must be one of {}",
                s.value,
                schemes.join(", ")
            ),
        ));
    }
    Ok(url)
}

/// An absolute path, or `default` when unset.
pub(crate) fn absolute(
    key: &'static str,
    v: &Option<Sourced<PathBuf>>,
    default: &str,
) -> Result<PathBuf, ConfigError> {
    match v {
        None => Ok(PathBuf::from(default)),
        Some(s) if !s.value.is_absolute() => Err(invalid(
            key,
            s,
            format!("{} must be an absolute path", s.value.display()),
        )),
        Some(s) => Ok(s.value.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Origin;

    fn at<T>(value: T) -> Option<Sourced<T>> {
        Some(Sourced {
            value,
            origin: Origin::DropIn("/etc/platte/agent.d/50-x.toml".into()),
        })
    }

    #[test]
    fn defaults_ranges_and_errors_naming_key_and_file() {
        assert_eq!(
            secs("k.secs", &None, 7, 1, 9).unwrap(),
            Duration::from_secs(7)
        );
        assert_eq!(
            secs("k.secs", &at(9), 7, 1, 9).unwrap(),
            Duration::from_secs(9)
        );
        let e = secs("k.secs", &at(0), 7, 1, 9).unwrap_err().to_string();
        assert_eq!(
            e,
            "invalid value for `k.secs` in /etc/platte/agent.d/50-x.toml: 0 is out of range: must be 1..=9 seconds"
        );
        assert_eq!(count("k.n", &at(20), 3, 1, 20).unwrap(), 20);
        assert!(count("k.n", &at(u64::MAX), 3, 1, 20).is_err());
        assert_eq!(absolute("k.dir", &None, "/d").unwrap(), PathBuf::from("/d"));
        let e = absolute("k.dir", &at("rel".into()), "/d").unwrap_err();
        assert!(
            e.to_string().contains("rel must be an absolute path"),
            "{e}"
        );
        assert_eq!(
            token("k.t", &at("a.b_c+d-1".into()), 64)
                .unwrap()
                .as_deref(),
            Some("a.b_c+d-1")
        );
        assert!(token("k.t", &at("a b".into()), 64).is_err());
        assert!(!is_token("", 3) && !is_token("abcd", 3));
        let u = parse_url(
            "k.url",
            at("https://x/".to_owned()).as_ref().unwrap(),
            &["https"],
        );
        assert_eq!(u.unwrap().scheme(), "https");
        let e = parse_url(
            "k.url",
            at("ftp://x/".to_owned()).as_ref().unwrap(),
            &["http"],
        );
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("scheme must be one of http")
        );
    }
}

//! The `[sync]` section of the server's config file, and the settings it resolves to.
//!
//! ```toml
//! [sync]
//! upstream = "https://public.update.flatcar-linux.net/v1/update/"
//! interval_secs = 3600
//!
//! [[sync.channels]]
//! app = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
//! channel = "stable"
//! arch = "amd64"
//! mode = "follow"
//! host = true
//! ```

use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::config::ConfigError;
use crate::model::{PackageFormat, normalize_appid, normalize_arch};

/// Seconds between background passes unless `interval_secs` says otherwise.
pub const DEFAULT_INTERVAL_SECS: u64 = 3600;
/// The shortest interval accepted (a public server should not be polled harder).
pub const MIN_INTERVAL_SECS: u64 = 60;

/// What `[sync]` may say.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SyncFile {
    /// The upstream's Omaha endpoint (`…/v1/update/`).
    pub upstream: Option<String>,
    /// Seconds between background passes; 0 runs passes only on demand.
    pub interval_secs: Option<u64>,
    /// The channels followed.
    #[serde(default)]
    pub channels: Vec<ChannelFile>,
}

/// One `[[sync.channels]]` entry.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ChannelFile {
    /// Application (appid).
    pub app: String,
    /// The local channel.
    pub channel: String,
    /// The upstream's track [default: the channel's name].
    pub track: Option<String>,
    /// Architecture [default: `amd64`].
    pub arch: Option<String>,
    /// `follow` [default] or `import`.
    pub mode: Option<Mode>,
    /// Keep the payload and extra files here and serve them from this server [default: false].
    pub host: Option<bool>,
    /// The payload format asked for [default: `update_engine`].
    pub format: Option<PackageFormat>,
}

/// What a new upstream release does to the local channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The channel moves to it at once.
    #[default]
    Follow,
    /// It is only published; an operator promotes it with `channel set`.
    Import,
}

/// One followed channel, validated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ChannelSpec {
    /// Application (normalised appid).
    pub app: String,
    /// Local channel.
    pub channel: String,
    /// Upstream track.
    pub track: String,
    /// Architecture (normalised).
    pub arch: String,
    /// Follow or import.
    pub mode: Mode,
    /// Hosted here.
    pub host: bool,
    /// Payload format.
    pub format: PackageFormat,
}

/// The resolved `[sync]` settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    /// The upstream's Omaha endpoint.
    pub upstream: String,
    /// Between background passes (zero: only on demand).
    pub interval: Duration,
    /// The channels followed.
    pub channels: Vec<ChannelSpec>,
}

impl SyncFile {
    /// Validates the section; `None` when it names no upstream and no channel.
    pub fn resolve(&self) -> Result<Option<SyncSettings>, ConfigError> {
        let invalid = |key: &'static str, reason: String| ConfigError::Invalid { key, reason };
        let Some(upstream) = self.upstream.as_deref().map(str::trim) else {
            if self.channels.is_empty() {
                return Ok(None);
            }
            return Err(invalid(
                "sync.upstream",
                "channels are listed but no upstream".into(),
            ));
        };
        let parsed = reqwest::Url::parse(upstream)
            .map_err(|e| invalid("sync.upstream", format!("{upstream:?}: {e}")))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(invalid(
                "sync.upstream",
                format!("{upstream:?} is not http(s)"),
            ));
        }
        let interval = self.interval_secs.unwrap_or(DEFAULT_INTERVAL_SECS);
        if interval != 0 && interval < MIN_INTERVAL_SECS {
            return Err(invalid(
                "sync.interval_secs",
                format!(
                    "{interval} is less than {MIN_INTERVAL_SECS} (0 runs passes only on demand)"
                ),
            ));
        }
        if self.channels.is_empty() {
            return Err(invalid("sync.channels", "no channel to follow".into()));
        }
        let mut channels: Vec<ChannelSpec> = Vec::with_capacity(self.channels.len());
        for c in &self.channels {
            let name = c.channel.trim();
            let app = normalize_appid(&c.app);
            if app.is_empty() || name.is_empty() || name.len() > 100 {
                return Err(invalid(
                    "sync.channels",
                    format!("each channel needs an app and a channel name (1-100 bytes): {c:?}"),
                ));
            }
            let spec = ChannelSpec {
                app,
                channel: name.to_owned(),
                track: c.track.as_deref().map_or(name, str::trim).to_owned(),
                arch: normalize_arch(c.arch.as_deref().unwrap_or("amd64")),
                mode: c.mode.unwrap_or_default(),
                host: c.host.unwrap_or(false),
                format: c.format.unwrap_or(PackageFormat::UpdateEngine),
            };
            if channels.iter().any(|o| {
                o.app == spec.app
                    && o.channel == spec.channel
                    && o.arch == spec.arch
                    && o.format == spec.format
            }) {
                return Err(invalid(
                    "sync.channels",
                    format!(
                        "channel {} ({}) of {} is listed twice",
                        spec.channel, spec.arch, spec.app
                    ),
                ));
            }
            // A release is one package here, hosted or not: the channels that can share one
            // must agree.
            if let Some(o) = channels.iter().find(|o| {
                o.app == spec.app
                    && o.arch == spec.arch
                    && o.format == spec.format
                    && o.host != spec.host
            }) {
                return Err(invalid(
                    "sync.channels",
                    format!(
                        "channels {} and {} of {} ({}) disagree on `host`: a release both offer \
                         is one package here, hosted or not",
                        o.channel, spec.channel, spec.app, spec.arch
                    ),
                ));
            }
            channels.push(spec);
        }
        Ok(Some(SyncSettings {
            upstream: upstream.to_owned(),
            interval: Duration::from_secs(interval),
            channels,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Option<SyncSettings>, ConfigError> {
        toml::from_str::<SyncFile>(text).unwrap().resolve()
    }

    #[test]
    fn defaults_and_a_full_entry() {
        let s = parse(
            r#"
            upstream = "https://public.update.flatcar-linux.net/v1/update/"
            [[channels]]
            app = "{E96281A6-D1AF-4BDE-9A0A-97B76E56DC57}"
            channel = "stable"
            [[channels]]
            app = "e96281a6-d1af-4bde-9a0a-97b76e56dc57"
            channel = "lts"
            track = "lts-2024"
            arch = "aarch64"
            mode = "import"
            host = true
            "#,
        )
        .unwrap()
        .unwrap();
        assert_eq!(s.interval, Duration::from_secs(DEFAULT_INTERVAL_SECS));
        let stable = &s.channels[0];
        assert_eq!(stable.app, "e96281a6-d1af-4bde-9a0a-97b76e56dc57");
        assert_eq!(
            (
                stable.track.as_str(),
                stable.arch.as_str(),
                stable.mode,
                stable.host
            ),
            ("stable", "amd64", Mode::Follow, false)
        );
        assert_eq!(stable.format, PackageFormat::UpdateEngine);
        let lts = &s.channels[1];
        assert_eq!(
            (lts.track.as_str(), lts.arch.as_str(), lts.mode, lts.host),
            ("lts-2024", "arm64", Mode::Import, true)
        );
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(parse("").unwrap(), None);
        for (text, key) in [
            (
                "[[channels]]\napp = \"a\"\nchannel = \"s\"",
                "sync.upstream",
            ),
            (
                "upstream = \"ftp://x/\"\n[[channels]]\napp = \"a\"\nchannel = \"s\"",
                "sync.upstream",
            ),
            ("upstream = \"https://x/\"", "sync.channels"),
            (
                "upstream = \"https://x/\"\ninterval_secs = 5\n[[channels]]\napp = \"a\"\nchannel = \"s\"",
                "sync.interval_secs",
            ),
            (
                "upstream = \"https://x/\"\n[[channels]]\napp = \"a\"\nchannel = \"s\"\n[[channels]]\napp = \"a\"\nchannel = \"s\"",
                "sync.channels",
            ),
            (
                "upstream = \"https://x/\"\n[[channels]]\napp = \"a\"\nchannel = \"s\"\nhost = true\n[[channels]]\napp = \"a\"\nchannel = \"b\"",
                "sync.channels",
            ),
        ] {
            match parse(text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(toml::from_str::<SyncFile>("upstream = \"https://x/\"\nevery = 1").is_err());
    }
}

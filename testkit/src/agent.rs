//! What every test host's agent configuration shares.

/// The agent configuration that follows a test host's own `[updates]`, `[identity]` and
/// `[boot]`: state under `/var/lib/platte` (below the host root), a check at once and then every
/// minute without jitter, a checkpoint every 50 ms, and short HTTP timeouts.
pub const COMMON_CONFIG: &str = r#"[agent]
state_dir = "/var/lib/platte"

[check]
initial_delay_secs = 0
interval_secs = 60
jitter_secs = 0
backoff_base_secs = 1

[install]
checkpoint_interval_ms = 50

[http]
connect_timeout_secs = 5
request_timeout_secs = 10
stall_timeout_secs = 10
"#;

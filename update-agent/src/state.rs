//! Persistent agent state (`state.json` in the state directory), written atomically.
//!
//! A save writes `state.json.tmp` in the same directory, fsyncs it, renames it over
//! `state.json` and fsyncs the directory, so after a crash or `kill -9` at any point the file
//! holds either the previous or the new state, never a mix. A leftover temp file is ignored (and
//! overwritten by the next save). A state file that cannot be parsed is moved aside to
//! `state.json.corrupt-<unix time>` and reported, never silently replaced. One process holds
//! `state.lock` while it owns the state.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::atomic_file::{self, WriteError};
use crate::boot::SlotId;

/// State file name.
pub const STATE_FILE: &str = "state.json";
/// Temporary file written before the rename.
pub const STATE_TMP: &str = "state.json.tmp";
/// Lock file held by the owning process.
pub const LOCK_FILE: &str = "state.lock";
/// Current layout version written in `schema`.
pub const SCHEMA_VERSION: u32 = 1;
/// Largest state file read; a larger one is treated as corrupt.
pub const MAX_STATE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the agent is in the update flow (the persistent part of it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Nothing in progress.
    #[default]
    Idle,
    /// Writing an update into the target slot (resumable from `checkpoint`).
    Installing,
    /// An update is written, verified and marked active; waiting for a reboot.
    Staged,
}

/// The update being installed or staged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StagedUpdate {
    /// Version being installed.
    pub version: String,
    /// Slot it goes to.
    pub slot: SlotId,
}

/// An update that was staged and is expected to be running after the next boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledUpdate {
    /// Version installed.
    pub version: String,
    /// Slot it was written to.
    pub slot: SlotId,
    /// Version that was running when it was installed.
    pub from_version: String,
    /// Boot id of the boot during which it was installed.
    pub boot_id: String,
}

/// The last failure, for status displays and the next report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastError {
    /// Error code (update_engine's where one fits).
    pub code: u32,
    /// Human-readable message.
    pub message: String,
    /// When it happened (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// A delta payload that failed on this machine (its source did not match the active slot, or
/// the delta itself was bad): while the machine runs `running_version`, checks send
/// `delta_okay="false"` so the server offers the full payload. Forgotten once another version
/// runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaFailure {
    /// The version running when the delta failed (the delta's source version).
    pub running_version: String,
    /// The version the delta was to install.
    pub version: String,
    /// The error code reported for it.
    pub code: u32,
    /// When it failed (seconds since the Unix epoch).
    pub at_unix: u64,
}

/// Everything the agent persists. Unknown fields (from a newer agent) are ignored on load.
///
/// `phase`, `staged`, `checkpoint` and `installed_before_reboot` are the update flow's record of
/// the inactive slot in the file's layout: the agent writes them only from its
/// [`UpdateFlow`](crate::agent::UpdateFlow), through
/// [`SlotRecord::write_to`](crate::agent::SlotRecord::write_to), and reads them back with
/// [`SlotRecord::from_state`](crate::agent::SlotRecord::from_state).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct AgentState {
    /// Layout version ([`SCHEMA_VERSION`]).
    pub schema: u32,
    /// Current phase.
    pub phase: Phase,
    /// Update being installed or staged.
    pub staged: Option<StagedUpdate>,
    /// Payload applier checkpoint (opaque to the state store).
    pub checkpoint: Option<serde_json::Value>,
    /// Versions never to install automatically (rolled back before).
    pub deny_list: BTreeSet<String>,
    /// Last failure.
    pub last_error: Option<LastError>,
    /// Update installed before the pending reboot, checked after boot for a rollback.
    pub installed_before_reboot: Option<InstalledUpdate>,
    /// Version that ran before the last successful update (sent as `previousversion`).
    pub previous_version: Option<String>,
    /// A post-reboot outcome not yet reported to the server.
    pub pending_report: Option<PendingReport>,
    /// The last delta payload that failed, while its running version still runs (deltas are
    /// not asked for then). Absent from the file when there is none, so the file keeps the
    /// layout earlier agents wrote.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delta_failure: Option<DeltaFailure>,
}

/// A post-reboot outcome to report on the next check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum PendingReport {
    /// The update booted: the next check carries 3/2 with this `previousversion`.
    Rebooted {
        /// Version that ran before the update.
        previous_version: String,
    },
    /// The update rolled back: report 3/0 with update_engine's rollback code (44).
    RolledBack {
        /// The version that failed.
        version: String,
    },
}

impl Default for AgentState {
    fn default() -> Self {
        Self {
            schema: SCHEMA_VERSION,
            phase: Phase::Idle,
            staged: None,
            checkpoint: None,
            deny_list: BTreeSet::new(),
            last_error: None,
            installed_before_reboot: None,
            previous_version: None,
            pending_report: None,
            delta_failure: None,
        }
    }
}

impl AgentState {
    /// Whether a delta payload failed while `running_version` ran: checks then send
    /// `delta_okay="false"`.
    pub fn delta_failed_on(&self, running_version: &str) -> bool {
        self.delta_failure
            .as_ref()
            .is_some_and(|f| f.running_version == running_version)
    }

    /// Forgets a delta failure recorded while another version than `running_version` ran (the
    /// machine has moved on: deltas from the new version are okay); whether there was one.
    pub fn forget_stale_delta_failure(&mut self, running_version: &str) -> bool {
        let stale = self
            .delta_failure
            .as_ref()
            .is_some_and(|f| f.running_version != running_version);
        if stale {
            self.delta_failure = None;
        }
        stale
    }
}

/// A state file that could not be used and was moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CorruptState {
    /// Where it was moved.
    pub moved_to: PathBuf,
    /// Why it was rejected.
    pub reason: String,
}

/// The result of loading state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The state (default when there was none or it was corrupt).
    pub state: AgentState,
    /// Set when a corrupt file was found and moved aside.
    pub corrupt: Option<CorruptState>,
}

/// State store errors.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// An I/O operation on a state path failed.
    #[error("state {what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Another process owns the state directory.
    #[error("state directory {} is in use by another process (lock {} is held)", dir.display(), dir.join(LOCK_FILE).display())]
    Locked {
        /// The directory.
        dir: PathBuf,
    },
    /// The state could not be serialised.
    #[error("cannot serialise state: {0}")]
    Serialise(#[from] serde_json::Error),
    /// The update flow refused the change to record (a bug: the install's steps came out of
    /// order); nothing was saved.
    #[error("the update flow refused to record the install's step: {0}")]
    Refused(String),
}

impl From<WriteError> for StateError {
    fn from(e: WriteError) -> Self {
        StateError::Io {
            what: e.step,
            path: e.path,
            source: e.source,
        }
    }
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_owned();
    move |source| StateError::Io { what, path, source }
}

/// Parses the bytes of a JSON state file: a JSON object of `T`'s shape.
fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("the state is not a JSON object".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// Reads the JSON state file `path` (at most `max` bytes) without repairing it: `Ok(None)` when
/// there is none, `Ok(Some(Err(reason)))` when it is too large or cannot be parsed.
pub(crate) fn read_json<T: DeserializeOwned>(
    path: &Path,
    max: u64,
) -> Result<Option<Result<T, String>>, StateError> {
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", path)(e)),
        Ok(m) if m.len() > max => {
            return Ok(Some(Err(format!("{} bytes is larger than {max}", m.len()))));
        }
        Ok(_) => {}
    }
    let bytes = fs::read(path).map_err(io("reading", path))?;
    Ok(Some(parse(&bytes)))
}

/// Moves the corrupt state file `dir/file` aside to `file.corrupt-<unix time>` (with a `.N`
/// suffix when that name is taken, so an earlier one is never overwritten) and fsyncs `dir`;
/// returns where it went.
pub(crate) fn move_aside(dir: &Path, file: &str) -> Result<PathBuf, StateError> {
    let path = dir.join(file);
    let stamp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut moved_to = dir.join(format!("{file}.corrupt-{stamp}"));
    let mut n = 1;
    while moved_to.exists() {
        moved_to = dir.join(format!("{file}.corrupt-{stamp}.{n}"));
        n += 1;
    }
    fs::rename(&path, &moved_to).map_err(io("moving aside corrupt", &path))?;
    atomic_file::sync_dir(dir)?;
    Ok(moved_to)
}

/// Saves `value` as pretty-printed JSON (one trailing newline) to `dir/file` crash-safely
/// through `dir/tmp` ([`atomic_file::replace`]), readable by root only.
pub(crate) fn save_json<T: Serialize>(
    dir: &Path,
    file: &str,
    tmp: &str,
    value: &T,
) -> Result<(), StateError> {
    let mut bytes = serde_json::to_vec_pretty(value)?;
    bytes.push(b'\n');
    atomic_file::replace_with_bytes(&dir.join(file), &dir.join(tmp), 0o600, &bytes)?;
    Ok(())
}

/// Reads the state in `dir` without locking or repairing it (for status displays).
/// `Ok(None)` when there is no state file.
pub fn read_state(dir: &Path) -> Result<Option<Result<AgentState, String>>, StateError> {
    read_json(&dir.join(STATE_FILE), MAX_STATE_BYTES)
}

/// Owner of the state directory: loads and saves [`AgentState`] atomically.
#[derive(Debug)]
pub struct StateStore {
    dir: PathBuf,
    _lock: File,
}

impl StateStore {
    /// Opens (creating if needed, mode 0700) `dir` and takes its lock.
    pub fn open(dir: &Path) -> Result<Self, StateError> {
        fs::create_dir_all(dir).map_err(io("creating directory", dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io("opening lock", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(StateError::Locked {
                    dir: dir.to_owned(),
                });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io("locking", &lock_path)(e)),
        }
        Ok(Self {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// Loads the state; a corrupt file is moved aside, reported in [`Loaded::corrupt`] and logged.
    pub fn load(&self) -> Result<Loaded, StateError> {
        let path = self.path();
        let reason = match read_state(&self.dir)? {
            None => {
                return Ok(Loaded {
                    state: AgentState::default(),
                    corrupt: None,
                });
            }
            Some(Ok(state)) => {
                if state.schema > SCHEMA_VERSION {
                    tracing::warn!(
                        schema = state.schema,
                        "state was written by a newer agent; fields this agent does not know are dropped on the next save"
                    );
                }
                return Ok(Loaded {
                    state,
                    corrupt: None,
                });
            }
            Some(Err(reason)) => reason,
        };
        let moved_to = move_aside(&self.dir, STATE_FILE)?;
        tracing::warn!(
            file = %path.display(),
            moved_to = %moved_to.display(),
            reason = %reason,
            "state file is corrupt; moved it aside and starting from an empty state"
        );
        Ok(Loaded {
            state: AgentState::default(),
            corrupt: Some(CorruptState { moved_to, reason }),
        })
    }

    /// Saves `state` atomically (temp file, fsync, rename, fsync directory).
    pub fn save(&self, state: &AgentState) -> Result<(), StateError> {
        save_json(&self.dir, STATE_FILE, STATE_TMP, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentState {
        AgentState {
            phase: Phase::Staged,
            staged: Some(StagedUpdate {
                version: "4000.0.0".into(),
                slot: SlotId::B,
            }),
            checkpoint: Some(serde_json::json!({"offset": 1234, "sha": "ab"})),
            deny_list: ["3999.0.0".to_string()].into(),
            last_error: Some(LastError {
                code: 20,
                message: "hash mismatch".into(),
                at_unix: 1,
            }),
            installed_before_reboot: Some(InstalledUpdate {
                version: "4000.0.0".into(),
                slot: SlotId::B,
                from_version: "3998.0.0".into(),
                boot_id: "b".into(),
            }),
            previous_version: Some("3997.0.0".into()),
            delta_failure: Some(DeltaFailure {
                running_version: "3999.0.0".into(),
                version: "4000.0.0".into(),
                code: 3105,
                at_unix: 2,
            }),
            ..AgentState::default()
        }
    }

    #[test]
    fn round_trips_and_starts_empty() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        assert_eq!(s.load().unwrap().state, AgentState::default());
        s.save(&sample()).unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.state, sample());
        assert!(loaded.corrupt.is_none());
        assert!(!d.path().join(STATE_TMP).exists());
    }

    #[test]
    fn a_delta_failure_holds_while_its_version_runs() {
        let mut s = sample();
        assert!(s.delta_failed_on("3999.0.0"));
        assert!(!s.delta_failed_on("4000.0.0"));
        assert!(!s.forget_stale_delta_failure("3999.0.0"));
        assert!(s.delta_failure.is_some());
        assert!(s.forget_stale_delta_failure("4000.0.0"));
        assert_eq!(s.delta_failure, None);
        assert!(!s.delta_failed_on("3999.0.0"));
        // A state file from before deltas has none.
        let old: AgentState = serde_json::from_str(r#"{"schema": 1, "phase": "idle"}"#).unwrap();
        assert_eq!(old.delta_failure, None);
    }

    #[test]
    fn leftover_temp_file_is_ignored_and_replaced() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        s.save(&sample()).unwrap();
        fs::write(d.path().join(STATE_TMP), b"{\"phase\": \"inst").unwrap();
        assert_eq!(s.load().unwrap().state, sample());
        s.save(&AgentState::default()).unwrap();
        assert_eq!(s.load().unwrap().state, AgentState::default());
        assert!(!d.path().join(STATE_TMP).exists());
    }

    #[test]
    fn corrupt_file_is_moved_aside_and_reported() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        fs::write(s.path(), b"{not json").unwrap();
        let loaded = s.load().unwrap();
        assert_eq!(loaded.state, AgentState::default());
        let c = loaded.corrupt.unwrap();
        assert_eq!(fs::read(&c.moved_to).unwrap(), b"{not json");
        assert!(
            c.moved_to
                .file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("state.json.corrupt-")
        );
        assert!(!s.path().exists());
        // A second corrupt file does not overwrite the first one moved aside.
        fs::write(s.path(), b"[]").unwrap();
        let c2 = s.load().unwrap().corrupt.unwrap();
        assert_ne!(c2.moved_to, c.moved_to);
        assert!(c.moved_to.exists() && c2.moved_to.exists());
    }

    #[test]
    fn unknown_fields_from_newer_agents_are_tolerated() {
        let d = tempfile::tempdir().unwrap();
        let s = StateStore::open(d.path()).unwrap();
        fs::write(
            s.path(),
            br#"{"schema": 7, "phase": "staged", "future": [1,2]}"#,
        )
        .unwrap();
        let l = s.load().unwrap();
        assert!(l.corrupt.is_none());
        assert_eq!(l.state.phase, Phase::Staged);
        assert_eq!(l.state.schema, 7);
    }

    #[test]
    fn second_owner_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let _s = StateStore::open(d.path()).unwrap();
        assert!(matches!(
            StateStore::open(d.path()),
            Err(StateError::Locked { .. })
        ));
    }
}

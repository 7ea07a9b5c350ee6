//! Per-extension persistent state, `extensions.json` in the agent's state directory, written
//! atomically like `state.json` (temp file, fsync, rename, fsync directory). It is a file of its
//! own so the OS state and the extension state never overwrite each other's fields; both live
//! under the state directory whose lock the agent holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::state::{self as agent_state, LastError, StateError};

/// State file name.
pub const EXTENSIONS_STATE_FILE: &str = "extensions.json";
/// Temporary file written before the rename.
const TMP_FILE: &str = "extensions.json.tmp";
/// Current layout version.
pub const EXTENSIONS_SCHEMA: u32 = 1;
/// Largest state file read; a larger one is treated as corrupt.
const MAX_BYTES: u64 = 1024 * 1024;

/// A downloaded, verified image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    /// Version.
    pub version: String,
    /// File name in the image directory (`NAME-VERSION.raw`).
    pub file: String,
    /// The OS versions it supports (`os.versions` of its signed manifest).
    pub os_versions: String,
}

/// An image staged for the OS version a pending reboot activates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NextBoot {
    /// The image; `NAME.raw` already points at it (merged by the next boot).
    pub image: Image,
    /// The OS version it was staged for.
    pub os_version: String,
    /// The boot during which it was staged.
    pub boot_id: String,
}

/// An offer refused without a failure (other OS, pinned, deny-listed): not downloaded again for
/// the same OS version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    /// Offered version.
    pub version: String,
    /// The OS version it was checked against.
    pub os_version: String,
    /// Why.
    pub reason: String,
    /// Error code reported.
    #[serde(default)]
    pub code: u32,
    /// Reported as `3/0` (else `3/9`).
    #[serde(default)]
    pub failure: bool,
}

/// An activation interrupted by a crash or restart (set before the link switch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activating {
    /// The image being activated.
    pub image: Image,
}

/// Everything persisted about one extension.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionRecord {
    /// The image `NAME.raw` points at and the system runs.
    pub active: Option<Image>,
    /// The image before it (the rollback target).
    pub previous: Option<Image>,
    /// An image staged for the next boot's OS.
    pub next_boot: Option<NextBoot>,
    /// An activation in progress.
    pub activating: Option<Activating>,
    /// Versions never installed again automatically (they failed after activation).
    pub deny_list: BTreeSet<String>,
    /// Image files this agent wrote (only these are ever deleted).
    pub files: BTreeSet<String>,
    /// The last refused offer.
    pub refused: Option<Refused>,
    /// Last failure.
    pub last_error: Option<LastError>,
    /// `previousversion` of a 3/2 not yet delivered (an activation that completed).
    pub pending_completion: Option<String>,
}

/// The whole extension state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ExtensionsState {
    /// Layout version.
    pub schema: u32,
    /// By extension name.
    pub extensions: BTreeMap<String, ExtensionRecord>,
}

impl Default for ExtensionsState {
    fn default() -> Self {
        Self {
            schema: EXTENSIONS_SCHEMA,
            extensions: BTreeMap::new(),
        }
    }
}

/// Loads and saves [`ExtensionsState`] in one directory.
#[derive(Debug, Clone)]
pub struct ExtensionsStore {
    dir: PathBuf,
}

impl ExtensionsStore {
    /// The store in `dir` (the agent's state directory, created if needed).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_owned(),
        }
    }

    /// Path of the state file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(EXTENSIONS_STATE_FILE)
    }

    /// Loads the state; a missing file is an empty state, a corrupt one is moved aside to
    /// `extensions.json.corrupt-<unix time>` (logged) and replaced by an empty state.
    pub fn load(&self) -> Result<ExtensionsState, StateError> {
        let path = self.path();
        let reason = match agent_state::read_json(&path, MAX_BYTES)? {
            None => return Ok(ExtensionsState::default()),
            Some(Ok(s)) => return Ok(s),
            Some(Err(reason)) => reason,
        };
        let moved_to = agent_state::move_aside(&self.dir, EXTENSIONS_STATE_FILE)?;
        tracing::warn!(file = %path.display(), moved_to = %moved_to.display(), reason = %reason,
            "extension state is corrupt; moved it aside and starting from an empty state");
        Ok(ExtensionsState::default())
    }

    /// Saves `state` atomically (temp file, fsync, rename, fsync directory).
    pub fn save(&self, state: &ExtensionsState) -> Result<(), StateError> {
        fs::create_dir_all(&self.dir).map_err(|source| StateError::Io {
            what: "creating directory",
            path: self.dir.clone(),
            source,
        })?;
        agent_state::save_json(&self.dir, EXTENSIONS_STATE_FILE, TMP_FILE, state)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corrupt_file_moved_aside() {
        let d = tempfile::tempdir().unwrap();
        let s = ExtensionsStore::new(d.path());
        assert_eq!(s.load().unwrap(), ExtensionsState::default());
        let mut st = ExtensionsState::default();
        st.extensions.insert(
            "containerd".into(),
            ExtensionRecord {
                active: Some(Image {
                    version: "1.0".into(),
                    file: "containerd-1.0.raw".into(),
                    os_versions: "1.*".into(),
                }),
                deny_list: ["0.9".to_string()].into(),
                ..ExtensionRecord::default()
            },
        );
        s.save(&st).unwrap();
        assert_eq!(s.load().unwrap(), st);
        assert!(!d.path().join(TMP_FILE).exists());
        fs::write(s.path(), b"{\"extensions\": 7}").unwrap();
        assert_eq!(s.load().unwrap(), ExtensionsState::default());
        assert!(!s.path().exists());
        let moved: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("extensions.json.corrupt-")
            })
            .collect();
        assert_eq!(moved.len(), 1);
    }
}

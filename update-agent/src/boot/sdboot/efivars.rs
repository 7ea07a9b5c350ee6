//! The Boot Loader Interface's EFI variables as efivarfs shows them (`LoaderEntrySelected`, …):
//! how the backend learns which entry systemd-boot started.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use super::LOADER_VENDOR_GUID;
use crate::boot::BootError;

/// Reads a Boot Loader Interface string variable (`NAME-4a67b082-…` in efivarfs: a 4-byte
/// attribute word, then NUL-terminated UTF-16LE). `Ok(None)` when the variable does not exist.
pub fn read_loader_var(efivars_dir: &Path, name: &str) -> Result<Option<String>, BootError> {
    let path = efivars_dir.join(format!("{name}-{LOADER_VENDOR_GUID}"));
    let bad = |detail: String| BootError::Efivar {
        path: path.clone(),
        detail,
    };
    // efivarfs files cannot seek ("Illegal seek"): read the whole file in one go.
    let mut data = Vec::new();
    match File::open(&path).and_then(|f| f.take(64 * 1024).read_to_end(&mut data)) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    }
    let body = data.get(4..).ok_or_else(|| {
        bad(format!(
            "{} bytes: shorter than the attribute word",
            data.len()
        ))
    })?;
    if body.len() % 2 != 0 {
        return Err(bad(format!("odd UTF-16 length {}", body.len())));
    }
    let units: Vec<u16> = body
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .take_while(|&u| u != 0)
        .collect();
    String::from_utf16(&units)
        .map(Some)
        .map_err(|e| bad(format!("not UTF-16: {e}")))
}

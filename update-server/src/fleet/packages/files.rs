//! A package's extra files (Flatcar's OEM sysext `oem-<ID>.gz`, extension sysexts
//! `flatcar-<NAME>.gz`): each is served as a further `<package>` of the package's manifest,
//! after the payload, under the same codebase. A hosted package's extra files are uploaded and
//! hosted here too; a package hosted elsewhere names its extra files by reference, at its
//! codebase.

use hyper::body::Bytes;

use super::reference::{FileReference, MAX_FILES};
use super::{FileDigests, receive_error, valid_filename};
use crate::fleet::{Fleet, FleetError, FleetResult, activity};
use crate::model::{Package, PackageFile};

impl Fleet {
    /// Adds the extra file `name`, read from `upload`, to the hosted package `id`.
    pub async fn add_package_file<S, E>(
        &self,
        id: &str,
        name: &str,
        upload: S,
    ) -> FleetResult<Package>
    where
        S: futures_util::Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !valid_filename(name) {
            return Err(FleetError::Invalid(format!(
                "invalid extra file name {name:?}"
            )));
        }
        let pkg = self.package(id)?;
        if pkg.external_url.is_some() {
            return Err(FleetError::Conflict(format!(
                "package {id} is hosted at {}: name its extra files by reference there",
                pkg.external_url.as_deref().unwrap_or_default()
            )));
        }
        check_new_name(&pkg, name)?;
        let received = self
            .blobs
            .receive(upload, self.max_package_size)
            .await
            .map_err(receive_error)?;
        let digests = FileDigests::of(&received.sha1, &received.sha256);
        let file = PackageFile {
            name: name.to_owned(),
            size: received.size,
            sha1_base64: digests.sha1_base64,
            sha256_hex: digests.sha256_hex,
        };
        let _writing = self.write_lock.lock().await;
        let sha = file.sha256_hex.clone();
        self.blobs
            .commit(received)
            .map_err(|e| FleetError::Internal(e.to_string()))?;
        let added = self.append_file(id, file, "uploaded").await;
        if added.is_err() {
            // Not listed after all: its stored copy goes unless something else has it.
            self.remove_unused_blob(&sha)?;
        }
        added
    }

    /// Adds an extra file by reference to the package `id` hosted elsewhere (the file is at
    /// the package's codebase). With `verify`, it is downloaded once and checked against its
    /// size and digests first.
    pub async fn add_package_file_reference(
        &self,
        id: &str,
        input: FileReference,
        verify: bool,
    ) -> FleetResult<Package> {
        let file = input.to_file()?;
        let pkg = self.package(id)?;
        let Some(codebase) = pkg.external_url.clone() else {
            return Err(FleetError::Conflict(format!(
                "package {id} is hosted here: upload its extra files"
            )));
        };
        check_new_name(&pkg, &file.name)?;
        let how = if verify {
            self.fetch_file(&codebase, &file, false).await?;
            "by reference, verified"
        } else {
            "by reference"
        };
        let _writing = self.write_lock.lock().await;
        self.append_file(id, file, how).await
    }

    /// Removes the extra file `name` of package `id` (and its stored copy when nothing else
    /// has it).
    pub async fn remove_package_file(&self, id: &str, name: &str) -> FleetResult<Package> {
        let _writing = self.write_lock.lock().await;
        let mut pkg = self.package(id)?;
        let Some(at) = pkg.files.iter().position(|f| f.name == name) else {
            return Err(FleetError::NotFound(format!("file {name} of package {id}")));
        };
        let before = pkg.files.clone();
        let removed = pkg.files.remove(at);
        let mut act = activity(
            "package_file_removed",
            Some(&pkg.app_id),
            format!(
                "file {name} removed from package {} ({})",
                pkg.version, pkg.arch
            ),
        );
        act.version = Some(pkg.version.clone());
        self.store
            .set_package_files(id, &before, &pkg.files, &act)
            .await?;
        self.reload().await?;
        if pkg.external_url.is_none() {
            self.remove_unused_blob(&removed.sha256_hex)?;
        }
        Ok(pkg)
    }

    /// Appends `file` to package `id`'s extra files (the caller holds the write lock).
    async fn append_file(&self, id: &str, file: PackageFile, how: &str) -> FleetResult<Package> {
        let mut pkg = self.package(id)?;
        check_new_name(&pkg, &file.name)?;
        let mut act = activity(
            "package_file_added",
            Some(&pkg.app_id),
            format!(
                "file {} ({} bytes) added to package {} ({}), {how}",
                file.name, file.size, pkg.version, pkg.arch
            ),
        );
        act.version = Some(pkg.version.clone());
        let before = pkg.files.clone();
        pkg.files.push(file);
        self.store
            .set_package_files(id, &before, &pkg.files, &act)
            .await?;
        self.reload().await?;
        Ok(pkg)
    }
}

/// Checks that `name` may be added to `pkg`: not its payload's name, not already an extra
/// file, and within the limit.
fn check_new_name(pkg: &Package, name: &str) -> FleetResult<()> {
    if name == pkg.filename || pkg.files.iter().any(|f| f.name == name) {
        return Err(FleetError::Conflict(format!(
            "package {} already has a file named {name}",
            pkg.id
        )));
    }
    if pkg.files.len() >= MAX_FILES {
        return Err(FleetError::Conflict(format!(
            "package {} has {MAX_FILES} extra files, the most a package may have",
            pkg.id
        )));
    }
    Ok(())
}

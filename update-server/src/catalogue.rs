//! The in-memory catalogue: apps, channels, groups and packages as one immutable snapshot behind
//! an `Arc`, swapped whole after every admin change. An update check reads it without touching
//! the database. Package digests are decoded once here, when the snapshot is built, so an `ok`
//! answer only copies bytes.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use crate::model::{App, Channel, Group, Package, PackageDelta, PackageFile, PackageFormat};
use crate::rollout::RolloutSpec;
use crate::store::{CatalogueData, Store, StoreError};

/// A package's digests, decoded from their stored text forms (`None` when unreadable, which
/// publishing never produces: the server computes them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PackageDigests {
    /// SHA-1 (stored as base64).
    pub sha1: Option<[u8; 20]>,
    /// SHA-256 (stored as hex).
    pub sha256: Option<[u8; 32]>,
}

impl PackageDigests {
    /// Decodes the stored forms of `p`'s payload.
    pub fn of(p: &Package) -> Self {
        Self::decode(&p.sha1_base64, &p.sha256_hex)
    }

    /// Decodes the stored forms of an extra file's digests.
    pub fn of_file(f: &PackageFile) -> Self {
        Self::decode(&f.sha1_base64, &f.sha256_hex)
    }

    fn decode(sha1_base64: &str, sha256_hex: &str) -> Self {
        use base64::Engine as _;
        Self {
            sha1: base64::engine::general_purpose::STANDARD
                .decode(sha1_base64)
                .ok()
                .and_then(|v| <[u8; 20]>::try_from(v.as_slice()).ok()),
            sha256: hex::decode(sha256_hex)
                .ok()
                .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok()),
        }
    }
}

/// One consistent view of the catalogue.
#[derive(Debug, Default)]
pub struct Catalogue {
    apps: HashMap<String, App>,
    packages: HashMap<String, Package>,
    digests: HashMap<String, PackageDigests>,
    channels: HashMap<String, Channel>,
    groups: HashMap<String, Group>,
    group_by_track: HashMap<(String, String), String>,
    package_by_sha256: HashMap<String, String>,
    /// A delta's SHA-256 → its package's id and its index in the package's deltas.
    delta_by_sha256: HashMap<String, (String, usize)>,
    specs: HashMap<String, RolloutSpec>,
    /// Operator alias → the machine it is assigned to.
    alias_owners: HashMap<String, String>,
    /// Some group requires machine credentials.
    credentials_required: bool,
    data: CatalogueData,
}

impl Catalogue {
    /// Indexes loaded data.
    pub fn build(data: CatalogueData) -> Self {
        let mut c = Self::default();
        for (machine, alias) in &data.machine_aliases {
            c.alias_owners.insert(alias.clone(), machine.clone());
        }
        for a in &data.apps {
            c.apps.insert(a.id.clone(), a.clone());
        }
        for p in &data.packages {
            if p.external_url.is_none() {
                c.package_by_sha256
                    .insert(p.sha256_hex.clone(), p.id.clone());
            }
            for (i, d) in p.deltas.iter().enumerate() {
                c.delta_by_sha256
                    .insert(d.sha256_hex.clone(), (p.id.clone(), i));
            }
            c.digests.insert(p.id.clone(), PackageDigests::of(p));
            c.packages.insert(p.id.clone(), p.clone());
        }
        for ch in &data.channels {
            c.channels.insert(ch.id.clone(), ch.clone());
        }
        for g in &data.groups {
            c.group_by_track.insert(
                (g.app_id.clone(), g.track.to_ascii_lowercase()),
                g.id.clone(),
            );
            let spec = RolloutSpec::from_policy(&g.policy).unwrap_or_else(|e| {
                // Stored policies are validated on write; an unreadable one grants nothing.
                tracing::error!(group = %g.id, error = %e, "unreadable rollout policy; holding");
                RolloutSpec {
                    percentage: Some(0.0),
                    ..RolloutSpec::default()
                }
            });
            c.specs.insert(g.id.clone(), spec);
            c.credentials_required |= !g.policy.machine_credential.is_optional();
            c.groups.insert(g.id.clone(), g.clone());
        }
        c.data = data;
        c
    }

    /// The raw lists (for admin listings).
    pub fn data(&self) -> &CatalogueData {
        &self.data
    }

    /// An application by normalised appid.
    pub fn app(&self, id: &str) -> Option<&App> {
        self.apps.get(id)
    }

    /// A package by id.
    pub fn package(&self, id: &str) -> Option<&Package> {
        self.packages.get(id)
    }

    /// The decoded digests of a package (empty for an unknown id).
    pub fn digests(&self, package_id: &str) -> PackageDigests {
        self.digests.get(package_id).copied().unwrap_or_default()
    }

    /// A hosted package by SHA-256 (hex).
    pub fn hosted_package_by_sha256(&self, sha256_hex: &str) -> Option<&Package> {
        self.package_by_sha256
            .get(sha256_hex)
            .and_then(|id| self.packages.get(id))
    }

    /// Whether a hosted package or a hosted package's extra file other than `except` (a
    /// package id), or any package's delta (deltas are always hosted), has the content
    /// `sha256_hex`: its file in the store is still in use.
    pub fn hosted_content_in_use(&self, sha256_hex: &str, except: &str) -> bool {
        self.data.packages.iter().any(|p| {
            (p.external_url.is_none()
                && p.id != except
                && (p.sha256_hex == sha256_hex
                    || p.files.iter().any(|f| f.sha256_hex == sha256_hex)))
                || p.deltas.iter().any(|d| d.sha256_hex == sha256_hex)
        })
    }

    /// A package's delta with SHA-256 `sha256_hex` (deltas are hosted by this server, each
    /// under its own codebase `/packages/<its sha256>/`).
    pub fn delta_by_sha256(&self, sha256_hex: &str) -> Option<&PackageDelta> {
        let (id, i) = self.delta_by_sha256.get(sha256_hex)?;
        self.packages.get(id)?.deltas.get(*i)
    }

    /// The extra file `name` of a hosted package whose payload has SHA-256 `sha256_hex`
    /// (extra files are served under their package's codebase; packages sharing a payload share
    /// that codebase, so any of theirs).
    pub fn hosted_extra_file(&self, sha256_hex: &str, name: &str) -> Option<&PackageFile> {
        self.data
            .packages
            .iter()
            .filter(|p| p.external_url.is_none() && p.sha256_hex == sha256_hex)
            .flat_map(|p| p.files.iter())
            .find(|f| f.name == name)
    }

    /// A channel by id.
    pub fn channel(&self, id: &str) -> Option<&Channel> {
        self.channels.get(id)
    }

    /// Whether any group requires machine credentials (if none does, no check-in is gated).
    pub fn credentials_required(&self) -> bool {
        self.credentials_required
    }

    /// Whether `machine_id` is an alias an operator assigned to *another* machine. Canaries may
    /// name a machine by its operator alias, so a client must not claim that name as its
    /// machine id (the Omaha endpoint refuses it).
    pub fn is_alias_of_another(&self, machine_id: &str) -> bool {
        self.alias_owners
            .get(machine_id)
            .is_some_and(|owner| owner != machine_id)
    }

    /// The alias an operator assigned to a machine, if any.
    pub fn operator_alias(&self, machine_id: &str) -> Option<&str> {
        self.data
            .machine_aliases
            .get(machine_id)
            .map(String::as_str)
    }

    /// A group by id.
    pub fn group(&self, id: &str) -> Option<&Group> {
        self.groups.get(id)
    }

    /// The parsed rollout spec of a group (default when the group is unknown).
    pub fn spec(&self, group_id: &str) -> &RolloutSpec {
        static EMPTY: std::sync::OnceLock<RolloutSpec> = std::sync::OnceLock::new();
        self.specs
            .get(group_id)
            .unwrap_or_else(|| EMPTY.get_or_init(RolloutSpec::default))
    }

    /// Resolves an Omaha `track` to a group of `app_id`: by track (case-insensitive), then by id.
    pub fn resolve_group(&self, app_id: &str, track: &str) -> Option<&Group> {
        let key = (app_id.to_owned(), track.trim().to_ascii_lowercase());
        self.group_by_track
            .get(&key)
            .and_then(|id| self.groups.get(id))
            .or_else(|| self.groups.get(track.trim()).filter(|g| g.app_id == app_id))
    }

    /// The package a channel points at for `arch` (falling back to an `all` pointer) in the
    /// first of `formats` it has a pointer for.
    pub fn channel_package(
        &self,
        channel: &Channel,
        arch: &str,
        formats: &[PackageFormat],
    ) -> Option<&Package> {
        formats.iter().find_map(|f| {
            let pointers = channel.pointers(*f);
            pointers
                .get(arch)
                .or_else(|| pointers.get("all"))
                .and_then(|id| self.packages.get(id))
        })
    }

    /// Channel names pointing at a package (to refuse deleting a package in use).
    pub fn channels_using(&self, package_id: &str) -> Vec<&Channel> {
        self.data
            .channels
            .iter()
            .filter(|c| c.points_at(package_id))
            .collect()
    }
}

/// The current snapshot, replaced atomically.
#[derive(Debug, Default)]
pub struct CatalogueCache {
    current: RwLock<Arc<Catalogue>>,
    /// The database's catalogue generation the snapshot was loaded at (0: not loaded).
    generation: std::sync::atomic::AtomicI64,
    /// One reload at a time, so a slower reload never replaces a newer snapshot.
    reloading: tokio::sync::Mutex<()>,
}

impl CatalogueCache {
    /// A cache holding `c`.
    pub fn new(c: Catalogue) -> Self {
        Self {
            current: RwLock::new(Arc::new(c)),
            generation: std::sync::atomic::AtomicI64::new(0),
            reloading: tokio::sync::Mutex::new(()),
        }
    }

    /// The current snapshot (cheap: an `Arc` clone).
    pub fn get(&self) -> Arc<Catalogue> {
        match self.current.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    /// Replaces the snapshot.
    pub fn replace(&self, c: Catalogue) {
        let c = Arc::new(c);
        match self.current.write() {
            Ok(mut g) => *g = c,
            Err(p) => *p.into_inner() = c,
        }
    }

    /// Reloads the snapshot from `store`. The generation is read before the data, so a change
    /// committed in between is loaded again at the next [`CatalogueCache::refresh_if_changed`].
    pub async fn reload(&self, store: &dyn Store) -> Result<(), StoreError> {
        let _one_at_a_time = self.reloading.lock().await;
        let generation = store.catalogue_generation().await?;
        let data = store.load_catalogue().await?;
        self.replace(Catalogue::build(data));
        self.generation
            .store(generation, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Reloads the snapshot when the database's catalogue generation moved since it was loaded
    /// (a change made by any process); returns whether it did.
    pub async fn refresh_if_changed(&self, store: &dyn Store) -> Result<bool, StoreError> {
        let now = store.catalogue_generation().await?;
        if now == self.generation.load(std::sync::atomic::Ordering::Acquire) {
            return Ok(false);
        }
        self.reload(store).await?;
        Ok(true)
    }
}

/// How often every process polls the catalogue generation (a change made through any replica
/// is served by every replica within this, plus one reload).
pub const REFRESH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(250);

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::GroupPolicy;

    fn data() -> CatalogueData {
        let pkg = |id: &str, arch: &str| Package {
            id: id.into(),
            app_id: "a".into(),
            version: "2.0.0".into(),
            arch: arch.into(),
            kind: "full".into(),
            filename: "f".into(),
            size: 1,
            sha1_base64: String::new(),
            sha256_hex: format!("sha-{id}"),
            external_url: None,
            created_at: 0,
            format: crate::model::PackageFormat::Platte,
            metadata_size: None,
            metadata_signature_rsa: None,
            deadline: None,
            is_delta: false,
            disable_payload_backoff: true,
            needs_admin: false,
            files: Vec::new(),
            deltas: Vec::new(),
        };
        CatalogueData {
            apps: vec![App {
                id: "a".into(),
                name: "A".into(),
                description: String::new(),
                created_at: 0,
                completes_on: Default::default(),
            }],
            packages: vec![pkg("p-amd", "amd64"), pkg("p-all", "all")],
            channels: vec![Channel {
                id: "c".into(),
                app_id: "a".into(),
                name: "stable".into(),
                packages: BTreeMap::from([
                    ("amd64".into(), "p-amd".into()),
                    ("all".into(), "p-all".into()),
                ]),
                update_engine_packages: BTreeMap::new(),
                created_at: 0,
            }],
            groups: vec![Group {
                id: "g-1".into(),
                app_id: "a".into(),
                name: "Stable".into(),
                track: "Stable".into(),
                channel_id: Some("c".into()),
                description: String::new(),
                policy: GroupPolicy::default(),
                created_at: 0,
            }],
            machine_aliases: BTreeMap::from([("m-1".into(), "build-01".into())]),
        }
    }

    #[test]
    fn operator_aliases_by_machine() {
        let c = Catalogue::build(data());
        assert_eq!(c.operator_alias("m-1"), Some("build-01"));
        assert_eq!(c.operator_alias("build-01"), None);
        assert!(c.is_alias_of_another("build-01"));
        assert!(!c.is_alias_of_another("m-1"));
    }

    #[test]
    fn resolves_track_by_name_case_insensitively_or_id() {
        let c = Catalogue::build(data());
        assert_eq!(
            c.resolve_group("a", "stable").map(|g| g.id.as_str()),
            Some("g-1")
        );
        assert_eq!(
            c.resolve_group("a", "g-1").map(|g| g.id.as_str()),
            Some("g-1")
        );
        assert!(c.resolve_group("a", "beta").is_none());
        assert!(c.resolve_group("other", "stable").is_none());
    }

    #[test]
    fn arch_pointer_with_all_fallback() {
        let c = Catalogue::build(data());
        let ch = c.channel("c").unwrap();
        assert_eq!(
            c.channel_package(ch, "amd64", &PackageFormat::ALL)
                .unwrap()
                .id,
            "p-amd"
        );
        assert_eq!(
            c.channel_package(ch, "arm64", &PackageFormat::ALL)
                .unwrap()
                .id,
            "p-all"
        );
        assert_eq!(c.channels_using("p-amd").len(), 1);
        assert_eq!(c.hosted_package_by_sha256("sha-p-all").unwrap().id, "p-all");
    }

    #[test]
    fn digests_are_decoded_once_at_build() {
        let mut d = data();
        d.packages[0].sha1_base64 = "AAECAwQFBgcICQoLDA0ODxAREhM=".into();
        d.packages[0].sha256_hex = "ab".repeat(32);
        let c = Catalogue::build(d);
        let got = c.digests("p-amd");
        let sha1: Vec<u8> = (0..20).collect();
        assert_eq!(got.sha1.map(Vec::from), Some(sha1));
        assert_eq!(got.sha256, Some([0xab; 32]));
        // Unreadable stored forms (a short hex string here) decode to nothing, not to zeros.
        assert_eq!(c.digests("p-all"), PackageDigests::default());
        assert_eq!(c.digests("nope"), PackageDigests::default());
    }

    #[test]
    fn cache_swaps_snapshots() {
        let cache = CatalogueCache::new(Catalogue::default());
        let old = cache.get();
        cache.replace(Catalogue::build(data()));
        assert!(old.app("a").is_none());
        assert!(cache.get().app("a").is_some());
    }
}

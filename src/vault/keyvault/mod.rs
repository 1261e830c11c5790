//! The embedded key vault: RSA keys with versions, attributes, grants, soft delete,
//! purge protection and an audit log. Wrap and unwrap happen here; callers get back
//! only wrapped bytes or the DEK.
//!
//! ```text
//! VAULT/vault.json                    name, soft-delete retention, purge protection
//! VAULT/keys/NAME/key.json            attributes, versions, grants (0600)
//! VAULT/keys/NAME/VERSION.pem         private key of one version, PKCS#8 (0600)
//! VAULT/deleted-keys/NAME/...         a soft-deleted key, plus deleted.json
//! VAULT/audit.log, VAULT/audit.head   the hash-chained audit log
//! VAULT/lock                          flock held by the process using the vault
//! ```
//! NAME is the key name in lower case (names compare case-insensitively).

use super::audit::{self, AuditFault, AuditLog, Caller};
use super::custody::hsm::Hsm;
use super::custody::{Custody, HeldKey};
use super::kid::{key_url, validate_vault_name, KeyRef};
use super::{now_secs, VaultError};
use crate::crypto::random_bytes;
use crate::crypto::wrap::hex;
use crate::durable;
use crate::lock::StoreLock;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

mod access;
pub use access::ROLES;
mod authz;
mod deletion;
mod keys;
mod persist;
mod policy;
mod records;
mod token;
use token::{token_id, token_label, NewKey};
#[cfg(test)]
mod tests;
mod view;

pub use persist::OwnedEvent;
use persist::{write_json, LateRecord};
pub use policy::{
    parse_duration, Action, LifetimeAction, PolicyAttributes, RotationPolicy, Trigger,
    MIN_POLICY_SECS,
};
pub use records::{
    parse_key_ops, parse_permissions, validate_principal_id, Attributes, Deletion, Grant,
    KeyOptions, KeyRecord, KeyUpdate, Protection, RoleAssignment, VaultProps, VersionRecord,
    KEY_OPS, PERMISSIONS,
};

pub const VAULT_FILE: &str = "vault.json";
const KEYS_DIR: &str = "keys";
const DELETED_DIR: &str = "deleted-keys";
const KEY_FILE: &str = "key.json";
const DELETED_FILE: &str = "deleted.json";
pub const LOCK_FILE: &str = "lock";
pub const DEFAULT_RETENTION_DAYS: u32 = 90;
const DAY: i64 = 86_400;

struct KeyEntry {
    rec: KeyRecord,
    /// Shared so an unwrap can run its RSA operation without the vault lock.
    privs: BTreeMap<String, std::sync::Arc<HeldKey>>,
    /// Versions whose key file is unusable, and why: they refuse every use, the
    /// others work.
    broken: BTreeMap<String, String>,
}

impl KeyEntry {
    fn current(&self) -> &VersionRecord {
        self.rec.current()
    }

    fn version(&self, v: &str) -> Option<&VersionRecord> {
        self.rec.version(v)
    }
}

struct State {
    props: VaultProps,
    keys: BTreeMap<String, KeyEntry>,
    deleted: BTreeMap<String, (KeyEntry, Deletion)>,
    /// Keys whose files could not be loaded, by lower-case name. They stay listed, and
    /// every use of them fails with `KeyCorrupt`, so one bad file costs only its key.
    broken: BTreeMap<String, BrokenKey>,
    audit: AuditLog,
    /// Keys whose record in memory holds a revocation that could not be saved.
    unsaved: BTreeSet<String>,
    /// Keys deleted in memory whose directory could not be moved to deleted-keys.
    unsaved_deletes: BTreeSet<String>,
    /// Records of revocations that could not be written to the audit log when they
    /// happened; written, oldest first, before the next record.
    late: Vec<LateRecord>,
    /// The PKCS#11 token of `props.hsm`.
    hsm: Option<Arc<Hsm>>,
}

struct BrokenKey {
    /// The key's name as recorded, or its directory name if key.json is unreadable.
    name: String,
    /// Which file is bad and how.
    reason: String,
    deleted: bool,
}

impl BrokenKey {
    fn error(&self) -> VaultError {
        VaultError::KeyCorrupt {
            name: self.name.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// Says why a key (version `None`: any version) must stay usable, if it must.
pub type Guard = Box<dyn Fn(&str, Option<&str>) -> Option<String> + Send + Sync>;

pub struct KeyVault {
    guard: std::sync::OnceLock<Guard>,
    dir: PathBuf,
    _lock: StoreLock,
    /// Every disk open, wrap and unwrap takes it: slow work (making an RSA key)
    /// happens outside it.
    state: Mutex<State>,
    /// Bumped on every change; lets the store notice revocations cheaply.
    generation: AtomicU64,
    /// A daemon runs this vault (its reconciler runs the rotation policies), so a
    /// revocation applied in memory is enforced at once.
    live: AtomicBool,
    /// Keys whose policy rotation failed, and when: retried after a pause, so a
    /// lasting cause (a full file system) doesn't flood the log every pass.
    policy_failures: Mutex<BTreeMap<String, std::time::Instant>>,
    /// Seals and unseals the private key files.
    custody: Arc<Custody>,
}

/// Extension of a token key version's public half (`VERSION.pub`, PEM).
pub(super) const PUBLIC_EXT: &str = "pub";

/// What a vault key version's sealed file is bound to: vault, key and version.
fn key_file_id(vault: &str, l: &str, version: &str) -> String {
    format!("{vault}/{l}/{version}")
}

impl KeyVault {
    pub fn is_vault(dir: &Path) -> bool {
        dir.join(VAULT_FILE).is_file()
    }

    /// Creates an empty vault in `dir` (absent or empty).
    pub fn init(dir: &Path, name: &str) -> Result<(), VaultError> {
        validate_vault_name(name)?;
        if Self::is_vault(dir) {
            return Err(VaultError::InvalidArgument(format!(
                "{} is already a key vault",
                dir.display()
            )));
        }
        match durable::create_dir(dir, 0o700) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e.into()),
            _ => {}
        }
        for d in [KEYS_DIR, DELETED_DIR] {
            match durable::create_dir(&dir.join(d), 0o700) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e.into()),
                _ => {}
            }
        }
        let props = VaultProps {
            name: name.to_ascii_lowercase(),
            created: now_secs(),
            soft_delete_retention_in_days: DEFAULT_RETENTION_DAYS,
            enable_purge_protection: false,
            hsm: None,
            resource_group: None,
            location: None,
            access_policies: vec![],
            role_assignments: vec![],
        };
        // vault.json goes last: its presence means the vault is complete.
        write_json(&dir.join(VAULT_FILE), &props)?;
        Ok(())
    }

    /// A default vault name: `dv-` and 8 random hex digits.
    pub fn default_name() -> Result<String, VaultError> {
        Ok(format!("dv-{}", hex(&random_bytes(4)?)))
    }

    /// Opens a vault whose private keys are in `custody`'s care.
    pub fn open_with(dir: &Path, custody: Arc<Custody>) -> Result<KeyVault, VaultError> {
        let corrupt = |what: &Path, reason: String| VaultError::Corrupt {
            path: what.display().to_string(),
            reason,
        };
        let vf = dir.join(VAULT_FILE);
        let bytes = fs::read(&vf).map_err(|e| {
            if e.kind() == ErrorKind::NotFound {
                VaultError::VaultMissing(dir.display().to_string())
            } else {
                e.into()
            }
        })?;
        let props: VaultProps =
            serde_json::from_slice(&bytes).map_err(|e| corrupt(&vf, e.to_string()))?;
        let lock = StoreLock::try_acquire(&dir.join(LOCK_FILE))?
            .ok_or_else(|| VaultError::VaultLocked(dir.display().to_string()))?;
        let hsm = props.hsm.clone().map(|c| Arc::new(Hsm::new(c)));
        let mut keys = BTreeMap::new();
        let mut deleted = BTreeMap::new();
        let mut broken = BTreeMap::new();
        for (sub, is_deleted) in [(KEYS_DIR, false), (DELETED_DIR, true)] {
            let sd = dir.join(sub);
            let mut names: Vec<_> = fs::read_dir(&sd)?
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| !n.starts_with('.'))
                .collect();
            names.sort();
            for n in names {
                let kd = sd.join(&n);
                if !is_deleted && kd.join(DELETED_FILE).exists() {
                    // An interrupted delete (or recover): the key stays active.
                    fs::remove_file(kd.join(DELETED_FILE))?;
                }
                let loaded =
                    Self::load_key(&custody, &props.name, hsm.as_ref(), &kd).and_then(|entry| {
                        if !is_deleted {
                            return Ok((entry, None));
                        }
                        let p = kd.join(DELETED_FILE);
                        fs::read(&p)
                            .map_err(|e| e.to_string())
                            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                            .map(|del: Deletion| (entry, Some(del)))
                            .map_err(|r| format!("{}: {r}", p.display()))
                    });
                match loaded {
                    Ok((entry, Some(del))) => {
                        deleted.insert(n, (entry, del));
                    }
                    Ok((entry, None)) => {
                        keys.insert(n, entry);
                    }
                    Err(reason) => {
                        let name = Self::recorded_name(&kd).unwrap_or_else(|| n.clone());
                        let b = BrokenKey {
                            name,
                            reason,
                            deleted: is_deleted,
                        };
                        log::error!("{}", b.error());
                        broken.insert(n.to_ascii_lowercase(), b);
                    }
                }
            }
        }
        let audit = AuditLog::open(dir)?;
        Ok(KeyVault {
            guard: std::sync::OnceLock::new(),
            dir: dir.to_path_buf(),
            _lock: lock,
            state: Mutex::new(State {
                props,
                keys,
                deleted,
                broken,
                audit,
                unsaved: BTreeSet::new(),
                unsaved_deletes: BTreeSet::new(),
                late: Vec::new(),
                hsm,
            }),
            generation: AtomicU64::new(1),
            policy_failures: Default::default(),
            live: AtomicBool::new(false),
            custody,
        })
    }

    /// Opens a vault for a unit test, its keys sealed with the test host key.
    #[cfg(test)]
    pub fn open(dir: &Path) -> Result<KeyVault, VaultError> {
        Self::open_with(dir, tests::custody(dir))
    }

    pub fn custody(&self) -> &Arc<Custody> {
        &self.custody
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Installs the check that refuses disabling or deleting keys a rotation needs.
    pub fn set_guard(&self, g: Guard) {
        let _ = self.guard.set(g);
    }

    fn check_guard(&self, name: &str, version: Option<&str>) -> Result<(), VaultError> {
        match self.guard.get().and_then(|g| g(name, version)) {
            Some(why) => Err(VaultError::NeededByRotation(why)),
            None => Ok(()),
        }
    }

    /// How long ago the version named by `kid` was created.
    pub fn version_age(&self, kid: &str) -> Option<std::time::Duration> {
        let r = KeyRef::parse(kid).ok()?;
        let st = self.state.lock();
        let e = Self::entry(&st, &r.name).ok()?;
        let v = e.version(r.version.as_deref()?)?;
        Some(std::time::Duration::from_secs(
            now_secs().saturating_sub(v.attributes.created).max(0) as u64,
        ))
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn name(&self) -> String {
        self.state.lock().props.name.clone()
    }

    pub fn uri(&self) -> String {
        format!("https://{}{}/", self.name(), super::kid::VAULT_DNS_SUFFIX)
    }

    pub fn props(&self) -> VaultProps {
        self.state.lock().props.clone()
    }

    fn key_dir(&self, lname: &str) -> PathBuf {
        self.dir.join(KEYS_DIR).join(lname)
    }

    fn check_vault(st: &State, r: &KeyRef) -> Result<(), VaultError> {
        match &r.vault {
            Some(v) if *v != st.props.name => Err(VaultError::WrongVault {
                given: v.clone(),
                ours: st.props.name.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn entry<'a>(st: &'a State, name: &str) -> Result<&'a KeyEntry, VaultError> {
        let l = name.to_ascii_lowercase();
        st.keys.get(&l).ok_or_else(|| {
            if let Some(b) = st.broken.get(&l) {
                b.error()
            } else if st.deleted.contains_key(&l) {
                VaultError::KeyDeleted(name.to_string())
            } else {
                VaultError::KeyNotFound(name.to_string())
            }
        })
    }

    fn entry_mut<'a>(st: &'a mut State, name: &str) -> Result<&'a mut KeyEntry, VaultError> {
        Self::entry(st, name)?;
        Ok(st
            .keys
            .get_mut(&name.to_ascii_lowercase())
            .expect("checked above"))
    }

    /// Versioned URL of `r`: its own version, or the current one.
    pub fn resolve(&self, r: &KeyRef) -> Result<String, VaultError> {
        let st = self.state.lock();
        Self::check_vault(&st, r)?;
        let e = Self::entry(&st, &r.name)?;
        let v = match &r.version {
            Some(v) => e
                .version(v)
                .ok_or_else(|| VaultError::VersionNotFound(r.name.clone(), v.clone()))?,
            None => e.current(),
        };
        Ok(key_url(&st.props.name, &e.rec.name, Some(&v.version)))
    }

    fn kid_of(st: &State, name: &str, version: Option<&str>) -> String {
        let display = st
            .keys
            .get(&name.to_ascii_lowercase())
            .map(|e| e.rec.name.clone())
            .unwrap_or_else(|| name.to_string());
        key_url(&st.props.name, &display, version)
    }

    /// `view::key_json` of an entry, with the public half of the version shown.
    fn key_json(st: &State, e: &KeyEntry, version: Option<&str>) -> Value {
        let (n, ex) = e
            .privs
            .get(&e.rec.shown_version(version).version)
            .map(|k| k.public().parts())
            .unwrap_or_default();
        view::key_json(&st.props, &e.rec, version, &n, &ex)
    }

    /// Keys (not deleted), current version each.
    pub fn list_keys(&self) -> Vec<Value> {
        let st = self.state.lock();
        st.keys
            .values()
            .map(|e| view::key_item_json(&st.props.name, &e.rec))
            .chain(
                st.broken
                    .values()
                    .filter(|b| !b.deleted)
                    .map(|b| view::broken_item_json(&b.name, &b.error().to_string())),
            )
            .collect()
    }

    /// Names of keys, deleted keys, or a key's versions (for directory listings).
    pub fn key_names(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut v: Vec<String> = st.keys.values().map(|e| e.rec.name.clone()).collect();
        v.extend(
            st.broken
                .values()
                .filter(|b| !b.deleted)
                .map(|b| b.name.clone()),
        );
        v
    }

    pub fn deleted_names(&self) -> Vec<String> {
        let st = self.state.lock();
        let mut v: Vec<String> = st
            .deleted
            .values()
            .map(|(e, _)| e.rec.name.clone())
            .collect();
        v.extend(
            st.broken
                .values()
                .filter(|b| b.deleted)
                .map(|b| b.name.clone()),
        );
        v
    }

    pub fn version_ids(&self, name: &str) -> Result<Vec<String>, VaultError> {
        let st = self.state.lock();
        Ok(Self::entry(&st, name)?
            .rec
            .versions
            .iter()
            .map(|v| v.version.clone())
            .collect())
    }

    /// The key's record (attributes, versions, grants), unaudited, for display.
    pub fn record(&self, name: &str) -> Result<KeyRecord, VaultError> {
        let st = self.state.lock();
        Ok(Self::entry(&st, name)?.rec.clone())
    }

    /// Whether an active key of this name exists (a corrupt one counts: it is listed,
    /// and using it says what is wrong).
    pub fn exists(&self, name: &str) -> bool {
        let st = self.state.lock();
        let l = name.to_ascii_lowercase();
        st.keys.contains_key(&l) || st.broken.get(&l).is_some_and(|b| !b.deleted)
    }

    /// Whether key `name` is deleted in memory but its delete could not be saved yet
    /// (running the delete again saves it).
    pub fn delete_unsaved(&self, name: &str) -> bool {
        self.state
            .lock()
            .unsaved_deletes
            .contains(&name.to_ascii_lowercase())
    }

    pub fn list_deleted(&self) -> Vec<Value> {
        let st = self.state.lock();
        st.deleted
            .values()
            .map(|(e, d)| view::deleted_json(&st.props, &e.rec, d))
            .collect()
    }

    pub fn deleted_key(&self, name: &str) -> Result<Value, VaultError> {
        let st = self.state.lock();
        if let Some(b) = st
            .broken
            .get(&name.to_ascii_lowercase())
            .filter(|b| b.deleted)
        {
            return Err(b.error());
        }
        st.deleted
            .get(&name.to_ascii_lowercase())
            .map(|(e, d)| view::deleted_json(&st.props, &e.rec, d))
            .ok_or_else(|| VaultError::DeletedKeyNotFound(name.to_string()))
    }

    /// Turns purge protection on (it can never be turned off) and/or sets retention.
    pub fn set_props(
        &self,
        caller: &Caller,
        purge_protection: Option<bool>,
        retention_days: Option<u32>,
    ) -> Result<VaultProps, VaultError> {
        self.audited(
            "VaultPatch",
            caller,
            |st| format!("https://{}{}/", st.props.name, super::kid::VAULT_DNS_SUFFIX),
            |st| {
                let mut p = st.props.clone();
                if let Some(days) = retention_days {
                    if !(7..=90).contains(&days) {
                        return Err(VaultError::InvalidArgument(format!(
                            "soft-delete retention of {days} days is out of range; use 7 to 90"
                        )));
                    }
                    if p.enable_purge_protection && days != p.soft_delete_retention_in_days {
                        return Err(VaultError::RetentionLocked);
                    }
                    p.soft_delete_retention_in_days = days;
                }
                match purge_protection {
                    Some(false) if p.enable_purge_protection => {
                        return Err(VaultError::PurgeProtectionPermanent)
                    }
                    Some(on) => p.enable_purge_protection = on,
                    None => {}
                }
                write_json(&self.dir.join(VAULT_FILE), &p)?;
                st.props = p.clone();
                Ok(p)
            },
        )
    }

    /// `az keyvault show`-like JSON.
    pub fn show(&self) -> Value {
        let st = self.state.lock();
        let mut v = view::vault_json(&st.props, &self.dir, st.keys.len(), st.deleted.len());
        let mut p = match self.custody.protection() {
            Some(p) => p.summary(),
            None => serde_json::json!({ "seal": "none" }),
        };
        if !self.custody.store_id().is_empty() {
            p["storeId"] = self.custody.store_id().into();
        }
        drop(st);
        let clear = self.clear_key_files().len();
        if clear > 0 {
            p["clearVaultKeys"] = clear.into();
        }
        v["properties"]["keyProtection"] = p;
        if let Some(h) = self.hsm() {
            v["properties"]["hsm"] = h.status();
        }
        v
    }

    pub fn audit_text(&self) -> Vec<u8> {
        let _st = self.state.lock();
        fs::read(self.dir.join(audit::AUDIT_FILE)).unwrap_or_default()
    }

    pub fn verify_audit(&self) -> Result<audit::Verified, AuditFault> {
        let _st = self.state.lock();
        audit::verify(&self.dir)
    }
}

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
use super::kid::{key_url, validate_vault_name, KeyRef};
use super::{now_secs, VaultError};
use crate::crypto::random_bytes;
use crate::crypto::wrap::{hex, RsaKey};
use crate::durable;
use crate::lock::StoreLock;
use parking_lot::Mutex;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

mod authz;
mod deletion;
mod keys;
mod persist;
mod policy;
mod records;
mod view;

use persist::{write_json, LateRecord};
pub use policy::{
    parse_duration, Action, LifetimeAction, PolicyAttributes, RotationPolicy, Trigger,
    MIN_POLICY_SECS,
};
pub use records::{
    parse_key_ops, parse_permissions, validate_principal_id, Attributes, Deletion, Grant,
    KeyOptions, KeyRecord, KeyUpdate, VaultProps, VersionRecord, KEY_OPS, PERMISSIONS,
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
    privs: BTreeMap<String, RsaKey>,
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
    state: Mutex<State>,
    /// Bumped on every change; lets the store notice revocations cheaply.
    generation: AtomicU64,
    /// A daemon runs this vault (its reconciler runs the rotation policies), so a
    /// revocation applied in memory is enforced at once.
    live: AtomicBool,
    /// Keys whose policy rotation failed, and when: retried after a pause, so a
    /// lasting cause (a full file system) doesn't flood the log every pass.
    policy_failures: Mutex<BTreeMap<String, std::time::Instant>>,
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
        };
        // vault.json goes last: its presence means the vault is complete.
        write_json(&dir.join(VAULT_FILE), &props)?;
        Ok(())
    }

    /// A default vault name: `dv-` and 8 random hex digits.
    pub fn default_name() -> Result<String, VaultError> {
        Ok(format!("dv-{}", hex(&random_bytes(4)?)))
    }

    pub fn open(dir: &Path) -> Result<KeyVault, VaultError> {
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
                let loaded = Self::load_key(&kd).and_then(|entry| {
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
            }),
            generation: AtomicU64::new(1),
            policy_failures: Default::default(),
            live: AtomicBool::new(false),
        })
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
        let (n, ex) = e.privs[&e.rec.shown_version(version).version].public_parts();
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
        view::vault_json(&st.props, &self.dir, st.keys.len(), st.deleted.len())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Secret;
    use crate::vault::parse_time;

    fn vault() -> (tempfile::TempDir, KeyVault) {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("v");
        KeyVault::init(&dir, "testvault").unwrap();
        let v = KeyVault::open(&dir).unwrap();
        (d, v)
    }

    fn r(s: &str) -> KeyRef {
        KeyRef::parse(s).unwrap()
    }

    fn set_enabled(v: &KeyVault, r: &KeyRef, on: bool) {
        let u = KeyUpdate {
            enabled: Some(on),
            ..Default::default()
        };
        v.update_key(&Caller::current_user(), r, &u).unwrap();
    }

    #[test]
    fn durations_past_year_9999_are_refused() {
        assert_eq!(parse_duration("P90D").unwrap(), 90 * DAY);
        assert_eq!(parse_duration("PT10S").unwrap(), 10);
        for bad in [
            "P3000000D",
            "P106751991167300D",
            "P99999999999999999999D",
            "3000000d",
            "P10000Y",
            "",
            "P",
        ] {
            assert!(
                matches!(parse_duration(bad), Err(VaultError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
        let policy = |j: &str| {
            serde_json::from_str::<RotationPolicy>(j)
                .unwrap()
                .validate()
        };
        assert!(
            policy(r#"{"lifetimeActions":[],"attributes":{"expiryTime":"P3000000D"}}"#).is_err()
        );
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P3000000D"},"action":{"type":"Rotate"}}]}"#).is_err());
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"P3000000D"},"action":{"type":"Notify"}}]}"#).is_err());
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P1Y"}}"#).is_ok());
        // Duplicate members are refused by the derived deserializer.
        assert!(serde_json::from_str::<RotationPolicy>(
            r#"{"lifetimeActions":[],"lifetimeActions":[]}"#
        )
        .is_err());
    }

    #[test]
    fn huge_stored_times_and_durations_do_not_panic() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        // Refused through the API ...
        let far = KeyUpdate {
            exp: Some(Some(i64::MAX)),
            ..Default::default()
        };
        assert!(matches!(
            v.update_key(&me, &r("k1"), &far),
            Err(VaultError::InvalidArgument(_))
        ));
        // ... but a store that already holds such values still opens, shows and runs
        // its policies.
        let kd = v.dir().join(KEYS_DIR).join("k1");
        let mut rec: KeyRecord =
            serde_json::from_slice(&fs::read(kd.join(KEY_FILE)).unwrap()).unwrap();
        rec.attributes.exp = Some(i64::MAX);
        rec.attributes.nbf = Some(i64::MIN);
        rec.versions[0].attributes.created = i64::MIN;
        rec.rotation_policy = Some(RotationPolicy {
            lifetime_actions: vec![
                LifetimeAction {
                    trigger: Trigger {
                        time_after_create: Some("P106751991167300D".into()),
                        time_before_expiry: None,
                    },
                    action: Action {
                        kind: "Rotate".into(),
                    },
                },
                LifetimeAction {
                    trigger: Trigger {
                        time_after_create: None,
                        time_before_expiry: Some("P3000000D".into()),
                    },
                    action: Action {
                        kind: "Notify".into(),
                    },
                },
            ],
            attributes: PolicyAttributes {
                expiry_time: Some("P3000000D".into()),
            },
        });
        write_json(&kd.join(KEY_FILE), &rec).unwrap();
        let dir = v.dir().to_path_buf();
        drop(v);
        let v = KeyVault::open(&dir).unwrap();
        let j = v.get_key(&me, &r("k1")).unwrap();
        assert_eq!(j["keyAttributes"]["expires"], "9999-12-31T23:59:59Z");
        set_enabled(&v, &r("k1"), false);
        v.run_policies();
        assert!(v.version_age(&v.resolve(&r("k1")).unwrap()).is_some());
    }

    #[test]
    fn rotation_policies_have_a_floor() {
        let policy = |j: &str| {
            serde_json::from_str::<RotationPolicy>(j)
                .unwrap()
                .validate()
        };
        let rotate_after = |d: &str| {
            format!(
                r#"{{"lifetimeActions":[{{"trigger":{{"timeAfterCreate":"{d}"}},"action":{{"type":"Rotate"}}}}]}}"#
            )
        };
        for bad in ["PT0S", "PT9S", "0s", "P0D"] {
            let e = policy(&rotate_after(bad)).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{bad}");
            assert!(e.to_string().contains("at least PT10S"), "{e}");
        }
        assert!(policy(&rotate_after("PT10S")).is_ok());
        let expiring = |before: &str, exp: &str| {
            format!(
                r#"{{"lifetimeActions":[{{"trigger":{{"timeBeforeExpiry":"{before}"}},"action":{{"type":"Rotate"}}}}],"attributes":{{"expiryTime":"{exp}"}}}}"#
            )
        };
        for (before, exp) in [
            ("PT0S", "PT0S"),
            ("PT0S", "PT9S"),
            ("PT10S", "PT15S"),
            ("P30D", "P30D"),
            ("P31D", "P30D"),
        ] {
            let e = policy(&expiring(before, exp)).unwrap_err();
            assert_eq!(e.errno(), libc::EINVAL, "{before} {exp}");
        }
        assert!(policy(&expiring("PT0S", "PT10S")).is_ok());
        assert!(policy(&expiring("P30D", "P1Y")).is_ok());
        // A Notify before expiry rotates nothing: any lead time will do.
        assert!(policy(r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"P1Y"},"action":{"type":"Notify"}}],"attributes":{"expiryTime":"P30D"}}"#).is_ok());

        // A stored policy below the floor (from before it existed) never rotates a
        // version younger than the floor.
        let (_d, v) = vault();
        let me = Caller::current_user();
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        let kd = v.dir().join(KEYS_DIR).join("k1");
        let mut rec: KeyRecord =
            serde_json::from_slice(&fs::read(kd.join(KEY_FILE)).unwrap()).unwrap();
        rec.rotation_policy = Some(serde_json::from_str(&rotate_after("PT0S")).unwrap());
        write_json(&kd.join(KEY_FILE), &rec).unwrap();
        let dir = v.dir().to_path_buf();
        drop(v);
        let v = KeyVault::open(&dir).unwrap();
        for _ in 0..3 {
            v.run_policies();
        }
        assert_eq!(v.version_ids("k1").unwrap().len(), 1);
        // An old version is rotated once; the new one is young.
        drop(v);
        rec.versions[0].attributes.created -= MIN_POLICY_SECS;
        write_json(&kd.join(KEY_FILE), &rec).unwrap();
        let v = KeyVault::open(&dir).unwrap();
        for _ in 0..3 {
            v.run_policies();
        }
        assert_eq!(v.version_ids("k1").unwrap().len(), 2);
    }

    #[test]
    fn a_revocation_that_cannot_be_saved_applies_in_memory() {
        let (_d, v) = vault();
        // As in a daemon, whose reconciler enforces what is applied in memory.
        v.run_policies();
        let me = Caller::current_user();
        let des = Caller::des("s", "aaaaaaaa-0000-4000-8000-000000000001");
        let perms: Vec<String> = PERMISSIONS.iter().map(|s| s.to_string()).collect();
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        v.grant(&me, "k1", &des.object_id, "s", &perms).unwrap();
        let kid = v.resolve(&r("k1")).unwrap();
        let kd = v.dir().join(KEYS_DIR).join("k1");
        let saved = || fs::read(kd.join(KEY_FILE)).unwrap();
        // A directory where the atomic write puts its temporary file: every write of
        // key.json (and of deleted.json) fails.
        let block = |f: &str| fs::create_dir(kd.join(format!(".{f}.tmp"))).unwrap();
        let unblock = |f: &str| fs::remove_dir(kd.join(format!(".{f}.tmp"))).unwrap();
        block(KEY_FILE);
        let before = saved();
        let not_saved = |e: VaultError, what: &str| {
            assert!(matches!(e, VaultError::RevokedNotSaved { .. }), "{e}");
            let m = e.to_string();
            assert!(
                m.contains(what)
                    && m.contains("could not be saved")
                    && m.contains("run the command again"),
                "{m}"
            );
        };
        // Disable: refused on disk, applied in memory.
        let off = KeyUpdate {
            enabled: Some(false),
            ..Default::default()
        };
        not_saved(
            v.update_key(&me, &r("k1"), &off).unwrap_err(),
            "key 'k1' is disabled",
        );
        assert!(matches!(
            v.can_unwrap(&des, &kid),
            Err(VaultError::KeyDisabled(_))
        ));
        assert_eq!(saved(), before);
        // Taking unwrapKey out of key_ops, and removing the grant, likewise.
        let ops = KeyUpdate {
            key_ops: Some(vec!["wrapKey".into(), "wrapKey".into()]),
            ..Default::default()
        };
        not_saved(
            v.update_key(&me, &r("k1"), &ops).unwrap_err(),
            "no longer allows unwrapKey",
        );
        assert_eq!(v.record("k1").unwrap().key_ops, vec!["wrapKey".to_string()]);
        not_saved(
            v.revoke_grant(&me, "k1", &des.object_id).unwrap_err(),
            "grant of aaaaaaaa-0000-4000-8000-000000000001 on key 'k1' is removed",
        );
        assert!(v.record("k1").unwrap().grants.is_empty());
        // A change that revokes nothing is refused as before.
        let on = KeyUpdate {
            enabled: Some(true),
            ..Default::default()
        };
        assert!(matches!(
            v.update_key(&me, &r("k1"), &on),
            Err(VaultError::Io(_))
        ));
        assert!(!v.record("k1").unwrap().attributes.enabled);
        // Running the revocations again saves them.
        unblock(KEY_FILE);
        v.revoke_grant(&me, "k1", &des.object_id).unwrap();
        let rec: KeyRecord = serde_json::from_slice(&saved()).unwrap();
        assert!(rec.grants.is_empty() && !rec.attributes.enabled);
        assert!(matches!(
            v.revoke_grant(&me, "k1", &des.object_id),
            Err(VaultError::NoSuchGrant { .. })
        ));

        // Delete: the directory can't move, the key is deleted in memory.
        block(DELETED_FILE);
        not_saved(v.delete_key(&me, "k1").unwrap_err(), "key 'k1' is deleted");
        assert!(matches!(
            v.can_unwrap(&des, &kid),
            Err(VaultError::KeyDeleted(_))
        ));
        assert_eq!(v.deleted_names(), vec!["k1".to_string()]);
        assert!(kd.join(KEY_FILE).exists());
        // Recovering it puts it back; deleting again once there is room saves it.
        v.recover_key(&me, "k1").unwrap();
        assert!(v.exists("k1"));
        not_saved(v.delete_key(&me, "k1").unwrap_err(), "key 'k1' is deleted");
        unblock(DELETED_FILE);
        v.delete_key(&me, "k1").unwrap();
        assert!(!kd.exists());
        assert!(v
            .dir()
            .join(DELETED_DIR)
            .join("k1")
            .join(DELETED_FILE)
            .exists());
        v.recover_key(&me, "k1").unwrap();
        assert!(kd.join(KEY_FILE).exists());
        let a = v.verify_audit().unwrap();
        assert!(a.records > 0 && a.torn_tail == 0);
        let log = fs::read_to_string(v.dir().join(audit::AUDIT_FILE)).unwrap();
        assert!(log.contains("applied in memory only"));
    }

    #[test]
    fn key_ops_are_deduplicated_in_order() {
        let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_key_ops(&l(&["wrapKey", "wrapKey"])).unwrap(),
            l(&["wrapKey"])
        );
        assert_eq!(
            parse_key_ops(&l(&["unwrapKey", "wrapkey", "UNWRAPKEY", "wrapKey", "get"]))
                .unwrap_err()
                .errno(),
            libc::EINVAL
        );
        assert_eq!(
            parse_key_ops(&l(&["unwrapKey", "wrapkey", "UNWRAPKEY", "sign"])).unwrap(),
            l(&["unwrapKey", "wrapKey", "sign"])
        );
    }

    #[test]
    fn principal_ids_and_key_ops_are_checked() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        let all = ["get".to_string()];
        for bad in [
            "",
            "../../x",
            "local-uid-0",
            "AAAAAAAA-0000-4000-8000-000000000001",
            "aaaaaaaa-0000-1000-8000-000000000001",
            "aaaaaaaa-0000-4000-8000-00000000000g",
        ] {
            assert!(
                matches!(
                    v.grant(&me, "k1", bad, bad, &all),
                    Err(VaultError::InvalidArgument(_))
                ),
                "{bad:?}"
            );
        }
        v.grant(&me, "k1", "aaaaaaaa-0000-4000-8000-000000000001", "x", &all)
            .unwrap();
        let none = KeyUpdate {
            key_ops: Some(vec![]),
            ..Default::default()
        };
        let e = v.update_key(&me, &r("k1"), &none).unwrap_err();
        assert!(e.to_string().contains("list the operations to keep"), "{e}");
        assert_eq!(v.record("k1").unwrap().key_ops.len(), KEY_OPS.len());
    }

    #[test]
    fn a_corrupt_key_costs_only_that_key() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        let des = Caller::des("s", "aaaaaaaa-0000-4000-8000-000000000001");
        let perms: Vec<String> = PERMISSIONS.iter().map(|s| s.to_string()).collect();
        for k in ["good", "Bad"] {
            v.create_key(&me, k, &KeyOptions::default()).unwrap();
            v.grant(&me, k, &des.object_id, "s", &perms).unwrap();
        }
        let dek = Secret::new(vec![7u8; 64]);
        let wg = v.wrap(&des, &r("good"), &dek).unwrap();
        let wb = v.wrap(&des, &r("bad"), &dek).unwrap();
        let ver = v.version_ids("bad").unwrap()[0].clone();
        let dir = v.dir().to_path_buf();
        drop(v);
        let pem = dir.join(KEYS_DIR).join("bad").join(format!("{ver}.pem"));
        let mut b = fs::read(&pem).unwrap();
        let mid = b.len() / 2;
        b[mid] = b'#';
        fs::write(&pem, b).unwrap();
        let v = KeyVault::open(&dir).unwrap();
        assert_eq!(v.unwrap(&des, &wg).unwrap().expose(), dek.expose());
        assert!(v.key_names().contains(&"Bad".to_string()));
        assert!(v.exists("bad"));
        let file = format!("{ver}.pem");
        let kc_in = |e: VaultError, file: &str| {
            assert!(matches!(e, VaultError::KeyCorrupt { .. }), "{e}");
            assert_eq!(e.errno(), libc::EIO);
            let m = e.to_string();
            assert!(m.contains(file) && m.contains("backup"), "{m}");
        };
        let kc = |e: VaultError| kc_in(e, &file);
        kc(v.unwrap(&des, &wb).unwrap_err());
        kc(v.wrap(&des, &r("bad"), &dek).unwrap_err());
        kc(v.can_unwrap(&des, &wb.kid).unwrap_err());
        kc(v.can_wrap(&des, &r("bad")).unwrap_err());
        kc(v.get_key(&me, &r("bad")).unwrap_err());
        kc(v.create_key(&me, "bad", &KeyOptions::default())
            .unwrap_err());
        kc(v.delete_key(&me, "bad").unwrap_err());
        // A corrupt key.json too.
        drop(v);
        fs::write(dir.join(KEYS_DIR).join("good").join(KEY_FILE), b"{").unwrap();
        let v = KeyVault::open(&dir).unwrap();
        kc_in(v.unwrap(&des, &wg).unwrap_err(), "good/key.json");
        assert!(v.key_names().contains(&"good".to_string()));
    }

    #[test]
    fn grants_gate_wrap_and_unwrap() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        let des = Caller::des("set1", "aaaaaaaa-0000-4000-8000-000000000001");
        v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
        let dek = Secret::new(vec![9u8; 64]);
        let e = v.wrap(&des, &r("k1"), &dek).unwrap_err();
        assert!(e.to_string().starts_with("KeyVaultAccessForbidden: grant get, wrapKey and unwrapKey permissions on key k1 to disk encryption set 'set1'"), "{e}");
        v.grant(
            &me,
            "k1",
            &des.object_id,
            "set1",
            &["get".into(), "wrapKey".into(), "unwrapKey".into()],
        )
        .unwrap();
        let w = v.wrap(&des, &r("k1"), &dek).unwrap();
        assert!(w
            .kid
            .starts_with("https://testvault.vault.azure.net/keys/k1/"));
        assert_eq!(v.unwrap(&des, &w).unwrap().expose(), dek.expose());
        // Disabling the key, then the version, stops unwrap; enabling restores it.
        set_enabled(&v, &r("k1"), false);
        assert!(matches!(
            v.unwrap(&des, &w),
            Err(VaultError::KeyDisabled(_))
        ));
        set_enabled(&v, &r("k1"), true);
        set_enabled(&v, &r(&w.kid), false);
        assert!(matches!(
            v.unwrap(&des, &w),
            Err(VaultError::VersionDisabled(_))
        ));
        set_enabled(&v, &r(&w.kid), true);
        // An expired key still unwraps but no longer wraps.
        let past = parse_time("2020-01-01").unwrap();
        v.update_key(
            &me,
            &r("k1"),
            &KeyUpdate {
                exp: Some(Some(past)),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(v.unwrap(&des, &w).is_ok());
        assert!(matches!(
            v.wrap(&des, &r("k1"), &dek),
            Err(VaultError::Expired(..))
        ));
        v.revoke_grant(&me, "k1", &des.object_id).unwrap();
        assert!(matches!(
            v.unwrap(&des, &w),
            Err(VaultError::Forbidden { .. })
        ));
        assert_eq!(
            v.verify_audit().map(|x| x.records),
            Ok(16),
            "one audit line per operation, failures included"
        );
    }

    #[test]
    fn versions_soft_delete_and_purge_protection() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        v.create_key(
            &me,
            "K2",
            &KeyOptions {
                size: Some(3072),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(matches!(
            v.create_key(&me, "k2", &KeyOptions::default()),
            Err(VaultError::KeyExists(_))
        ));
        v.rotate_key(&me, "k2", &KeyOptions::default()).unwrap();
        let vers = v.version_ids("k2").unwrap();
        assert_eq!(vers.len(), 2);
        assert!(vers.iter().all(|x| crate::vault::kid::is_version(x)));
        assert_eq!(v.record("k2").unwrap().versions[1].key_size, 3072);
        v.set_props(&me, Some(true), Some(7)).unwrap();
        assert!(matches!(
            v.set_props(&me, Some(false), None),
            Err(VaultError::PurgeProtectionPermanent)
        ));
        v.delete_key(&me, "k2").unwrap();
        assert!(matches!(
            v.create_key(&me, "k2", &KeyOptions::default()),
            Err(VaultError::NameHeldByDeletedKey(_))
        ));
        assert!(matches!(
            v.purge_key(&me, "k2"),
            Err(VaultError::PurgeProtected { .. })
        ));
        let dir = v.dir().to_path_buf();
        drop(v);
        // State survives a reopen.
        let v = KeyVault::open(&dir).unwrap();
        assert_eq!(v.deleted_names(), vec!["K2".to_string()]);
        v.recover_key(&me, "k2").unwrap();
        assert_eq!(v.version_ids("K2").unwrap(), vers);
        assert!(v.verify_audit().is_ok());
    }

    #[test]
    fn purge_without_protection_and_bad_sizes() {
        let (_d, v) = vault();
        let me = Caller::current_user();
        assert!(matches!(
            v.create_key(
                &me,
                "k",
                &KeyOptions {
                    size: Some(1024),
                    ..Default::default()
                }
            ),
            Err(VaultError::Crypto(crate::crypto::CryptoError::KeySize(
                1024
            )))
        ));
        v.create_key(&me, "k", &KeyOptions::default()).unwrap();
        v.delete_key(&me, "k").unwrap();
        v.purge_key(&me, "k").unwrap();
        assert!(v.deleted_names().is_empty());
        assert!(fs::read_dir(v.dir().join(DELETED_DIR))
            .unwrap()
            .next()
            .is_none());
        v.create_key(&me, "k", &KeyOptions::default()).unwrap();
        assert!(matches!(
            v.import_key(&me, "x", "junk", &KeyOptions::default()),
            Err(VaultError::BadImport(_))
        ));
    }
}

//! The backing store: its layout on disk, its lock and its disks.
//!
//! ```text
//! STORE/diskvault.json        store header (format version)
//! STORE/keys/platform.key     platform key, RSA-2048, sealed (0600; see vault::custody)
//! STORE/disks/ID/meta.json    disk metadata, wrapped DEK (0600)
//! STORE/disks/ID/data         ciphertext, sparse (0600)
//! STORE/vault/                 the embedded key vault (see vault::keyvault), unless
//!                             the store was created with --vault DIR
//! STORE/disk-encryption-sets/NAME.json   disk encryption sets (0600)
//! STORE/vms/NAME.json         virtual machine records (0600)
//! STORE/vms/NAME.serial.log   a VM's serial console
//! STORE/lock                  flock held by the serving process
//! STORE/daemon.json           where the store is mounted (while mounted)
//! STORE/daemon.log            background daemon log
//! ```
//!
//! Module dependencies: each module uses only modules on lower lines (no cycles).
//! `vault` and `crypto` lie below all of them.
//!
//! ```text
//! Store      mod.rs and its impl files: header (init, diskvault.json), custody,
//!            disks, sets, rekey, reconcile, revoke, snapshots, reencrypt, reclaim,
//!            merge, usage, diff
//! objects    the object table
//! disk       mod, io, keys, merge, rekey, layered, units (units uses nothing of the store)
//! keyring    health
//! meta       des
//! encryption spec
//! error
//! ```

pub mod arm;
mod custody;
#[cfg(test)]
mod decrypt_tests;
mod delta;
pub mod des;
mod diff;
mod disk;
mod disks;
pub mod encryption;
mod error;
mod extents;
mod fullcopy;
mod header;
mod health;
pub mod keyring;
mod merge;
#[cfg(test)]
mod merge_tests;
mod objects;
mod placement;
mod reclaim;
mod reconcile;
mod reencrypt;
mod rekey;
mod reserve;
mod revoke;
mod sets;
#[cfg(test)]
mod snapshot_tests;
mod snapshots;
#[cfg(test)]
mod tests;
mod usage;
mod vms;
#[cfg(test)]
mod vms_tests;
pub mod vmss;

pub mod meta;
pub mod spec;

pub use crate::lock::StoreLock;
pub use custody::SealReport;
pub use diff::Diff;
pub use disk::{Disk, Revocation, SeekKind};
pub use encryption::{EncryptionType, LayerKind};
pub use error::{Result, StoreError};
use header::Header;
pub use header::InitOptions;
pub use health::HealthReport;
pub use merge::MERGE_RATE;
pub use reconcile::{panic_text, Delays, Invalidator, RevokeHook};
pub use rekey::{RekeyState, RekeyStatus};
pub use snapshots::{CopyOptions, FromSourceOptions};
pub use spec::{
    check_sector_multiple, parse_size, validate_name, validate_object_name, ObjectKind, Sku,
    MAX_DISK_SIZE,
};
pub use usage::Usage;
pub use vms::{
    validate_vm_name, vm_resource_id, External, PowerState, VmDisk, VmRecord, MAX_DATA_DISKS,
    VMS_DIR, VM_RESERVED,
};

use crate::crypto::wrap::hex;
use crate::crypto::{random_bytes, random_uuid, CipherKind, Secret};
use crate::durable;
use crate::vault::custody::{Custody, KeyProtection, SealKind, SealSetup, UnsealOptions};
use crate::vault::{KeyRef, KeyVault, PlatformKeys, WrappedKey};
use des::{des_name, DesRecord, DES_DIR};
use keyring::Keyring;
use meta::{key_check, DiskMeta, Encryption, Layer};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sets::load_sets;
use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub const HEADER_FILE: &str = "diskvault.json";
pub const LOCK_FILE: &str = "lock";
pub const DAEMON_FILE: &str = "daemon.json";
pub const LOG_FILE: &str = "daemon.log";
const KEYS_DIR: &str = "keys";
const DISKS_DIR: &str = "disks";
pub const VAULT_DIR: &str = "vault";
/// Version 2: private keys are sealed (`keyProtection`). Version 1 stores (clear keys)
/// still open, and become version 2 at `vault seal`.
pub const STORE_VERSION: u64 = 2;
const CLEAR_STORE_VERSION: u64 = 1;
/// Deltas an object's stack may have (Azure keeps at most 500 incremental snapshots
/// of a disk; each adds one).
pub const MAX_STACK: usize = 1024;
/// Snapshots a disk may have at a time (Azure's limit for incremental snapshots).
pub const MAX_SNAPSHOTS: usize = 500;

/// Where a running daemon serves the store; written while mounted.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DaemonInfo {
    pub pid: u32,
    pub store: String,
    /// The key vault directory the daemon holds (locked like the store).
    #[serde(default)]
    pub vault: String,
    pub mountpoint: String,
    pub started_at: String,
}

/// Options for a new disk.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateOptions {
    pub size: u64,
    pub sku: Sku,
    pub cipher: Option<CipherKind>,
    /// Name or id of the disk encryption set (customer-managed key).
    pub disk_encryption_set: Option<String>,
    /// `-g` and `-l`.
    #[serde(skip_serializing_if = "arm::Placement::is_empty")]
    pub placement: arm::Placement,
}

/// Gives freed heap memory back to the system after work that allocated a lot at
/// once (a status of 10,000 objects, a rotation on several threads), so the daemon's
/// resident size follows what it holds, not its peak.
pub fn trim_heap() {
    // Safe because: malloc_trim takes no pointers and is thread-safe in glibc.
    unsafe { libc::malloc_trim(0) };
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub struct Store {
    root: PathBuf,
    keys: Arc<Keyring>,
    /// Every disk, snapshot and image, by kind and name (one namespace per kind).
    disks: RwLock<objects::Objects>,
    /// Serializes namespace changes (create, rename, delete).
    ns: Mutex<()>,
    next_serial: AtomicU64,
    reconcile: reconcile::ReconcileState,
    rekeys: rekey::Rekeys,
    /// Disks deleted (or replaced by a rename) while open: gone from the namespace but
    /// still served to their handles, so still subject to revocation.
    orphans: Mutex<Vec<Arc<Disk>>>,
    /// Data extents and whiteouts of deltas that no longer change (no disk's top),
    /// for space accounting; pruned to the deltas in use.
    delta_sets: usage::DeltaSetCache,
    /// Deltas a delete noted for space reclaim, freed after `ns` is released.
    reclaim: Mutex<Vec<String>>,
    /// Serializes rewrites of `deltas/.gc` (reclaim runs without `ns`).
    gc_file: Mutex<()>,
    /// The delta merge thread's state.
    merges: merge::MergeState,
    /// Virtual machine records (the processes are `vm/`'s).
    vms: vms::Vms,
    /// Also in the keyring; kept here to unseal it at mount.
    platform: Arc<PlatformKeys>,
    /// Declared last so it is released last: whoever waits for it finds everything
    /// else (the vault included, unless a disk still holds it) released.
    _lock: StoreLock,
}

/// The resource id of a disk, as `az disk show` prints it.
pub fn disk_resource_id(name: &str) -> String {
    format!("/diskvault/disks/{name}")
}

impl Store {
    /// Records where the store is mounted (`daemon.json`). On a full store (say, after
    /// a kill -9 left it full) the metadata reserve is given up for it.
    pub fn save_daemon_info(&self, info: &DaemonInfo) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(info).expect("serializes");
        reserve::write_atomic(&self.root, &self.root.join(DAEMON_FILE), &json)
    }

    /// Who holds the store, for error messages and for the CLI to find the mount.
    pub fn daemon_info(root: &Path) -> Option<DaemonInfo> {
        serde_json::from_slice(&fs::read(root.join(DAEMON_FILE)).ok()?).ok()
    }

    /// Opens the store for exclusive use, with its vault (or the one at `vault_override`),
    /// reaching its KEK as the environment says (`UnsealOptions::from_env`).
    pub fn open(root: &Path, vault_override: Option<&Path>) -> Result<Store> {
        Self::open_with(root, vault_override, UnsealOptions::from_env())
    }

    /// `open` with the given ways to reach the KEK. Nothing is unsealed yet: the KEK
    /// is fetched at the first use of a private key (or by `unseal`).
    pub fn open_with(
        root: &Path,
        vault_override: Option<&Path>,
        unseal: UnsealOptions,
    ) -> Result<Store> {
        let header = Self::check_header(root)?;
        let lock = StoreLock::try_acquire(&root.join(LOCK_FILE))
            .map_err(|e| StoreError::io(format!("locking {}", root.display()), e))?
            .ok_or_else(|| StoreError::Locked {
                path: root.display().to_string(),
                holder: Self::daemon_info(root)
                    .map(|d| format!(" by diskvault pid {} mounted at {}", d.pid, d.mountpoint))
                    .unwrap_or_else(|| " by another diskvault process".into()),
            })?;
        let abs_root = std::path::absolute(root)
            .map_err(|e| StoreError::io(format!("resolving {}", root.display()), e))?;
        let eager = unseal.eager;
        let custody = Arc::new(match (&header.key_protection, &header.store_id) {
            (Some(p), Some(id)) => Custody::sealed(&abs_root, id, p.clone(), unseal),
            _ => Custody::clear(&abs_root, header.store_id.as_deref()),
        });
        let in_token = header.platform_key.as_deref() == Some("hsm");
        let mut platform = if in_token {
            None
        } else {
            Some(Arc::new(PlatformKeys::load(
                &root.join(KEYS_DIR),
                &custody,
            )?))
        };
        if eager && custody.is_sealed() {
            // Before anything else happens: without its KEK the store stays as it was.
            custody.sealing_key()?;
        }
        reserve::ensure(root);
        let vault_dir = match (vault_override, &header.vault) {
            (Some(v), _) => v.to_path_buf(),
            (None, Some(v)) => PathBuf::from(v),
            (None, None) => {
                let v = root.join(VAULT_DIR);
                if !KeyVault::is_vault(&v) {
                    // A store made before the vault existed gets an empty one.
                    KeyVault::init(&v, &KeyVault::default_name()?)?;
                }
                v
            }
        };
        let vault = Arc::new(KeyVault::open_with(&vault_dir, custody)?);
        let platform = match platform.take() {
            Some(p) => p,
            None => {
                let hsm = vault.hsm().ok_or_else(|| {
                    StoreError::Vault(crate::vault::VaultError::PlatformKeyUnusable(
                        "it is held in an HSM, but the vault has no HSM configured (vault.json 'hsm')".into(),
                    ))
                })?;
                let id = header.store_id.as_deref().unwrap_or_default();
                Arc::new(PlatformKeys::load_in_token(&root.join(KEYS_DIR), &hsm, id)?)
            }
        };
        if eager {
            // A platform key that doesn't unseal (a file from another store, a token
            // away) costs only the disks it wraps, which say why; the rest go on.
            if let Err(e) = platform.unseal() {
                log::error!("{e}");
            }
        }
        let des_dir = root.join(DES_DIR);
        if !des_dir.is_dir() {
            durable::create_dir(&des_dir, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", des_dir.display()), e))?;
        }
        let mut keys = Keyring::new(vault.clone(), load_sets(&des_dir)?);
        keys.register(platform.clone());
        keys.register(vault);
        let keys = Arc::new(keys);
        let weak = Arc::downgrade(&keys);
        keys.vault.set_guard(Box::new(move |name, version| {
            weak.upgrade()?.rotation_needs(name, version)
        }));
        let store = Store {
            root: root.to_path_buf(),
            platform,
            _lock: lock,
            keys,
            disks: Default::default(),
            ns: Mutex::new(()),
            next_serial: AtomicU64::new(1),
            reconcile: Default::default(),
            rekeys: Default::default(),
            orphans: Default::default(),
            delta_sets: Default::default(),
            reclaim: Default::default(),
            gc_file: Default::default(),
            merges: Default::default(),
            vms: Default::default(),
        };
        store.scan()?;
        store.load_vms()?;
        store.recover_vmss()?;
        store.resume_key_changes();
        Ok(store)
    }

    pub fn vault(&self) -> &Arc<KeyVault> {
        &self.keys.vault
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keys
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn disks_dir(&self) -> PathBuf {
        self.root.join(DISKS_DIR)
    }

    fn kind_dir(&self, kind: ObjectKind) -> PathBuf {
        self.root.join(kind.dir())
    }

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Every object: disks, snapshots and images (rotation and revocation cover all).
    pub fn list(&self) -> Vec<Arc<Disk>> {
        self.disks.read().values().cloned().collect()
    }

    /// The objects of one kind, by name.
    pub fn list_kind(&self, kind: ObjectKind) -> Vec<Arc<Disk>> {
        self.disks.read().of_kind(kind).cloned().collect()
    }

    pub fn get_kind(&self, kind: ObjectKind, name: &str) -> Option<Arc<Disk>> {
        self.disks.read().get(&(kind, name.to_string())).cloned()
    }

    pub fn get_kind_or_err(&self, kind: ObjectKind, name: &str) -> Result<Arc<Disk>> {
        if kind == ObjectKind::Disk {
            return self.get_or_err(name);
        }
        self.get_kind(kind, name)
            .ok_or_else(|| StoreError::ObjectNotFound {
                kind,
                name: name.to_string(),
            })
    }

    /// Every disk that can serve data: the listed ones and those deleted while open
    /// (until their last handle closes). Revocation must reach them all.
    pub fn served(&self) -> Vec<Arc<Disk>> {
        let mut v = self.list();
        let mut orphans = self.orphans.lock();
        orphans.retain(|d| d.open_handles() > 0);
        v.extend(orphans.iter().cloned());
        v
    }

    /// The disk with this serial (the FUSE layer's inode key), without copying the list.
    pub fn get_by_serial(&self, serial: u64) -> Option<Arc<Disk>> {
        self.disks.read().by_serial(serial).cloned()
    }

    /// The disk of this name (not a snapshot or image).
    pub fn get(&self, name: &str) -> Option<Arc<Disk>> {
        self.get_kind(ObjectKind::Disk, name)
    }

    pub fn get_or_err(&self, name: &str) -> Result<Arc<Disk>> {
        self.get(name)
            .ok_or_else(|| StoreError::DiskNotFound(name.to_string()))
    }

    /// A disk that exists and whose metadata is sound.
    pub fn get_usable(&self, name: &str) -> Result<Arc<Disk>> {
        let disk = self.get_or_err(name)?;
        match disk.corrupt_reason() {
            Some(r) => Err(StoreError::Unavailable {
                disk: name.into(),
                reason: r.into(),
            }),
            None => Ok(disk),
        }
    }

    /// `keyState`: `Available`, `Revoked: WHY` or `Unavailable: WHY`, the last for
    /// every disk that can't be served for another reason than a revocation.
    pub fn key_state(&self, disk: &Disk) -> String {
        let m = &disk.meta();
        if let Some(r) = disk.corrupt_reason() {
            return format!("Unavailable: {r}");
        }
        if let Some(r) = disk.revocation() {
            // An Ultra disk's handles outlived the revocation; once the last is
            // closed (its VM stopped), say so rather than that they still work.
            if let (true, 0, Some(i)) = (
                r.keep_open,
                disk.open_handles(),
                r.reason.find("; open handles keep working"),
            ) {
                return format!(
                    "{}; its open handles are closed now, and it can't be opened until the key is restored",
                    &r.reason[..i]
                );
            }
            return r.reason;
        }
        let customer = m.encryption.kind.uses_customer_key();
        // A revocation not (yet) acted on: no daemon runs, or its delay is pending.
        let mut pending = None;
        if customer {
            match self.key_access(m) {
                Ok(()) => {}
                Err(d) if d.broken => return format!("Unavailable: {}", d.why),
                Err(d) if self.revocation_pending(disk) => pending = Some(d.why),
                Err(d) => return format!("Revoked: {}", d.why),
            }
            if let Some(why) = self.enforcement_down() {
                return format!(
                    "Unavailable: key state is not being enforced ({why}); customer-key disks refuse I/O until the reconciler runs again (remount to restart it)"
                );
            }
        }
        if let Some(why) = disk.unavailable_reason() {
            return format!("Unavailable: {why}");
        }
        match pending {
            Some(why) => format!("Available (revocation pending: {why})"),
            None => "Available".to_string(),
        }
    }

    /// The reconciler's health, for status.
    pub fn reconciler_health(&self) -> HealthReport {
        self.reconcile.health.report()
    }

    /// Persists sizes and drops every key (clean shutdown).
    pub fn shutdown(&self) {
        self.stop_reconciler();
        self.stop_merger();
        // A merge under way stops at its next step; wait for it, so a clean
        // unmount leaves no half-finished commit for the next mount.
        drop(self.merges_idle());
        self.stop_rekeys();
        for d in self.list() {
            if let Err(e) = d.persist_size() {
                log::error!("{e}");
            }
        }
        self.disks.write().clear();
        self.orphans.lock().clear();
    }
}

//! The backing store: its layout on disk, its lock and its disks.
//!
//! ```text
//! STORE/diskvault.json        store header (format version)
//! STORE/keys/platform.pem     platform key, RSA-2048 PKCS#8, 0600
//! STORE/disks/ID/meta.json    disk metadata, wrapped DEK (0600)
//! STORE/disks/ID/data         ciphertext, sparse (0600)
//! STORE/vault/                 the embedded key vault (see vault::keyvault), unless
//!                             the store was created with --vault DIR
//! STORE/disk-encryption-sets/NAME.json   disk encryption sets (0600)
//! STORE/lock                  flock held by the serving process
//! STORE/daemon.json           where the store is mounted (while mounted)
//! STORE/daemon.log            background daemon log
//! ```

pub mod des;
mod disk;
pub mod encryption;
mod error;
mod health;
pub mod keyring;
mod reconcile;
mod rekey;
mod sets;
#[cfg(test)]
mod tests;

pub mod meta;
pub mod spec;

pub use crate::lock::StoreLock;
pub use disk::{Disk, Revocation, SeekKind};
pub use encryption::{EncryptionType, LayerKind};
pub use error::{Result, StoreError};
pub use health::HealthReport;
pub use reconcile::{panic_text, Delays, Invalidator};
pub use rekey::{RekeyState, RekeyStatus};
pub use spec::{parse_size, validate_name, Sku, MAX_DISK_SIZE};

use crate::crypto::wrap::hex;
use crate::crypto::{random_bytes, CipherKind, Secret};
use crate::durable;
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
use std::os::unix::fs::OpenOptionsExt;
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
pub const STORE_VERSION: u64 = 1;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Header {
    format: String,
    version: u64,
    created_at: String,
    /// Absolute path of a key vault kept outside the store (`--vault DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    vault: Option<String>,
}

/// Options for `Store::init`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Keep the key vault here instead of in `STORE/vault`.
    pub vault_dir: Option<PathBuf>,
    /// The vault's name (the VAULT in https://VAULT.vault.azure.net); random if unset.
    pub vault_name: Option<String>,
}

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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    pub size: u64,
    pub sku: Sku,
    pub cipher: Option<CipherKind>,
    /// Name or id of the disk encryption set (customer-managed key).
    pub disk_encryption_set: Option<String>,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

pub struct Store {
    root: PathBuf,
    keys: Arc<Keyring>,
    disks: RwLock<BTreeMap<String, Arc<Disk>>>,
    /// Serializes namespace changes (create, rename, delete).
    ns: Mutex<()>,
    next_serial: AtomicU64,
    reconcile: reconcile::ReconcileState,
    rekeys: rekey::Rekeys,
    /// Disks deleted (or replaced by a rename) while open: gone from the namespace but
    /// still served to their handles, so still subject to revocation.
    orphans: Mutex<Vec<Arc<Disk>>>,
    /// Declared last so it is released last: whoever waits for it finds everything
    /// else (the vault included, unless a disk still holds it) released.
    _lock: StoreLock,
}

/// The resource id of a disk, as `az disk show` prints it.
pub fn disk_resource_id(name: &str) -> String {
    format!("/diskvault/disks/{name}")
}

impl Store {
    /// Creates a new store at `root` (an absent or empty directory).
    pub fn init(root: &Path, opts: &InitOptions) -> Result<()> {
        let header = root.join(HEADER_FILE);
        if header.exists() {
            return Err(StoreError::AlreadyAStore(root.display().to_string()));
        }
        let io = |what: &str, e| StoreError::io(format!("{what} {}", root.display()), e);
        match fs::read_dir(root) {
            Ok(entries) => {
                // A half-finished init (no header yet) may be redone; anything else is refused.
                let foreign = entries.filter_map(|e| e.ok()).any(|e| {
                    !matches!(
                        e.file_name().to_str(),
                        Some(KEYS_DIR | DISKS_DIR | LOCK_FILE | VAULT_DIR | DES_DIR)
                    )
                });
                let has_disks = fs::read_dir(root.join(DISKS_DIR))
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
                if foreign || has_disks {
                    return Err(StoreError::NotAStore(root.display().to_string()));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                durable::create_dir(root, 0o700).map_err(|e| io("creating", e))?
            }
            Err(e) => return Err(io("reading", e)),
        }
        for d in [KEYS_DIR, DISKS_DIR, DES_DIR] {
            match durable::create_dir(&root.join(d), 0o700) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io("creating", e)),
                _ => {}
            }
        }
        PlatformKeys::create(&root.join(KEYS_DIR))?;
        let external = match &opts.vault_dir {
            Some(d) => {
                let abs = std::path::absolute(d).map_err(|e| io("resolving", e))?;
                Some(abs.display().to_string())
            }
            None => None,
        };
        let vault_dir = opts
            .vault_dir
            .clone()
            .unwrap_or_else(|| root.join(VAULT_DIR));
        if !KeyVault::is_vault(&vault_dir) {
            let name = match &opts.vault_name {
                Some(n) => n.clone(),
                None => KeyVault::default_name()?,
            };
            KeyVault::init(&vault_dir, &name)?;
        }
        let h = Header {
            format: "diskvault-store".into(),
            version: STORE_VERSION,
            created_at: now_rfc3339(),
            vault: external,
        };
        // The header goes last: its presence means the store is complete.
        let mut bytes = serde_json::to_vec_pretty(&h).expect("header serializes");
        bytes.push(b'\n');
        durable::write_atomic(&header, &bytes, 0o600).map_err(|e| io("writing header in", e))?;
        Ok(())
    }

    pub fn is_store(root: &Path) -> bool {
        root.join(HEADER_FILE).is_file()
    }

    fn check_header(root: &Path) -> Result<Header> {
        let path = root.join(HEADER_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(if root.is_dir() {
                    StoreError::NotAStore(root.display().to_string())
                } else {
                    StoreError::StoreMissing(root.display().to_string())
                })
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let bad = |reason: String| StoreError::BadHeader {
            path: path.display().to_string(),
            reason,
        };
        let h: Header = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if h.format != "diskvault-store" {
            return Err(bad(format!("format is '{}'", h.format)));
        }
        if h.version != STORE_VERSION {
            return Err(StoreError::UnsupportedVersion(h.version));
        }
        Ok(h)
    }

    /// Where a store's vault lives: `--vault`, else the header's, else embedded.
    pub fn vault_dir(root: &Path, vault_override: Option<&Path>) -> Result<PathBuf> {
        if let Some(v) = vault_override {
            return Ok(v.to_path_buf());
        }
        let h = Self::check_header(root)?;
        Ok(h.vault
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(VAULT_DIR)))
    }

    /// Who holds the store, for error messages and for the CLI to find the mount.
    pub fn daemon_info(root: &Path) -> Option<DaemonInfo> {
        serde_json::from_slice(&fs::read(root.join(DAEMON_FILE)).ok()?).ok()
    }

    /// Opens the store for exclusive use, with its vault (or the one at `vault_override`).
    pub fn open(root: &Path, vault_override: Option<&Path>) -> Result<Store> {
        let header = Self::check_header(root)?;
        let lock = StoreLock::try_acquire(&root.join(LOCK_FILE))
            .map_err(|e| StoreError::io(format!("locking {}", root.display()), e))?
            .ok_or_else(|| StoreError::Locked {
                path: root.display().to_string(),
                holder: Self::daemon_info(root)
                    .map(|d| format!(" by diskvault pid {} mounted at {}", d.pid, d.mountpoint))
                    .unwrap_or_else(|| " by another diskvault process".into()),
            })?;
        let platform = PlatformKeys::load(&root.join(KEYS_DIR))?;
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
        let vault = Arc::new(KeyVault::open(&vault_dir)?);
        let des_dir = root.join(DES_DIR);
        if !des_dir.is_dir() {
            durable::create_dir(&des_dir, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", des_dir.display()), e))?;
        }
        let mut keys = Keyring::new(vault.clone(), load_sets(&des_dir)?);
        keys.register(Arc::new(platform));
        keys.register(vault);
        let keys = Arc::new(keys);
        let weak = Arc::downgrade(&keys);
        keys.vault.set_guard(Box::new(move |name, version| {
            weak.upgrade()?.rotation_needs(name, version)
        }));
        let store = Store {
            root: root.to_path_buf(),
            _lock: lock,
            keys,
            disks: RwLock::new(BTreeMap::new()),
            ns: Mutex::new(()),
            next_serial: AtomicU64::new(1),
            reconcile: Default::default(),
            rekeys: Default::default(),
            orphans: Default::default(),
        };
        store.scan()?;
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

    fn serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// Loads every disk; finishes or rolls back interrupted creates and deletes.
    fn scan(&self) -> Result<()> {
        let dir = self.disks_dir();
        let entries = fs::read_dir(&dir)
            .map_err(|e| StoreError::io(format!("reading {}", dir.display()), e))?;
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut disks = self.disks.write();
        for os in names {
            let Some(name) = os.to_str() else { continue };
            let path = dir.join(name);
            if name.ends_with(".creating") || name.ends_with(".deleted") {
                log::info!("removing interrupted {}", path.display());
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() {
                continue;
            }
            let disk = self.load_disk(&path, name);
            let disk_name = disk.name();
            if disks.contains_key(&disk_name) {
                log::error!(
                    "disk directory {} repeats the name '{disk_name}'; ignoring it",
                    path.display()
                );
                continue;
            }
            if let Err(e) = disk.reconcile() {
                log::error!("cannot reconcile {}: {e}", path.display());
            }
            disks.insert(disk_name, Arc::new(disk));
        }
        Ok(())
    }

    /// Reads and validates a disk's metadata. On failure returns the name, if that part
    /// is readable (so the disk stays visible), and the reason.
    fn read_meta(
        meta_path: &Path,
        dir_name: &str,
    ) -> std::result::Result<DiskMeta, (Option<String>, String)> {
        let bytes = fs::read(meta_path).map_err(|e| (None, format!("cannot read it: {e}")))?;
        let meta = DiskMeta::from_json(&bytes).map_err(|reason| {
            let name = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("name")?.as_str().map(String::from))
                .filter(|n| validate_name(n).is_ok());
            (name, reason)
        })?;
        if meta.id != dir_name {
            return Err((
                Some(meta.name),
                "its id does not match its directory".into(),
            ));
        }
        Ok(meta)
    }

    /// Loads one disk; corrupt metadata yields an unavailable disk, not an error.
    fn load_disk(&self, path: &Path, dir_name: &str) -> Disk {
        let meta_path = path.join(disk::META_FILE);
        let parsed = Self::read_meta(&meta_path, dir_name);
        match parsed {
            Ok(meta) => Disk::new(
                path.to_path_buf(),
                meta,
                None,
                self.keys.clone(),
                self.reconcile.health.clone(),
                self.serial(),
            ),
            Err((name, reason)) => {
                let name = name.unwrap_or_else(|| dir_name.to_string());
                let reason = format!(
                    "metadata {} is corrupt: {reason}; restore it from a backup or delete the disk",
                    meta_path.display()
                );
                log::error!("disk '{name}': {reason}");
                let placeholder = DiskMeta {
                    format_version: meta::META_VERSION,
                    id: dir_name.to_string(),
                    name: name.clone(),
                    size_bytes: 0,
                    sku: Sku::default().name().into(),
                    created_at: String::new(),
                    encryption: Encryption {
                        kind: EncryptionType::PlatformKey,
                        disk_encryption_set_id: None,
                    },
                    data_unit_size: crate::crypto::DATA_UNIT as u64,
                    layers: vec![],
                    rekey: None,
                };
                Disk::new(
                    path.to_path_buf(),
                    placeholder,
                    Some(reason),
                    self.keys.clone(),
                    self.reconcile.health.clone(),
                    self.serial(),
                )
            }
        }
    }

    pub fn list(&self) -> Vec<Arc<Disk>> {
        self.disks.read().values().cloned().collect()
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
        self.disks
            .read()
            .values()
            .find(|d| d.serial == serial)
            .cloned()
    }

    pub fn get(&self, name: &str) -> Option<Arc<Disk>> {
        self.disks.read().get(name).cloned()
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

    /// Creates a platform-key disk: fresh DEK from the OS CSPRNG, wrapped with RSA-OAEP-256.
    pub fn create_disk(&self, name: &str, opts: &CreateOptions) -> Result<Arc<Disk>> {
        validate_name(name)?;
        if opts.size > MAX_DISK_SIZE {
            return Err(StoreError::TooLarge);
        }
        let _ns = self.ns.lock();
        if self.disks.read().contains_key(name) {
            return Err(StoreError::DiskExists(name.to_string()));
        }
        let cipher = opts.cipher.unwrap_or(CipherKind::Aes256Xts);
        let des = opts
            .disk_encryption_set
            .as_deref()
            .map(|d| self.keys.des(d))
            .transpose()?;
        let id = hex(&random_bytes(16)?);
        // Customer-key layer first (applied to plaintext first), platform layer last.
        let kind = des
            .as_ref()
            .map_or(EncryptionType::PlatformKey, |d| d.encryption_type);
        let mut layers = Vec::new();
        for (i, &layer) in kind.layers().iter().enumerate() {
            layers.push(self.keys.seal(layer, des.as_ref(), cipher, &id, i)?);
        }
        let meta = DiskMeta {
            format_version: meta::META_VERSION,
            id: id.clone(),
            name: name.to_string(),
            size_bytes: opts.size,
            sku: opts.sku.name().to_string(),
            created_at: now_rfc3339(),
            encryption: Encryption {
                kind,
                disk_encryption_set_id: des.as_ref().map(|d| d.id()),
            },
            data_unit_size: crate::crypto::DATA_UNIT as u64,
            layers,
            rekey: None,
        };
        let dir = self.disks_dir();
        let staging = dir.join(format!("{id}.creating"));
        let final_dir = dir.join(&id);
        let io = |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::EFBIG) {
                return StoreError::InvalidSize {
                    input: opts.size.to_string(),
                    reason: format!(
                        "the store's file system can't hold a file that large (ext4 stops at 16 TiB); make the disk smaller or keep the store on XFS or btrfs ({})",
                        dir.display()
                    ),
                };
            }
            StoreError::io(format!("creating disk '{name}' in {}", dir.display()), e)
        };
        let result = (|| {
            durable::create_dir(&staging, 0o700)?;
            let data = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(Disk::data_path(&staging))?;
            data.set_len(opts.size.div_ceil(4096) * 4096)?;
            data.sync_all()?;
            durable::write_atomic(&staging.join(disk::META_FILE), &meta.to_json(), 0o600)?;
            fs::rename(&staging, &final_dir)?;
            durable::sync_dir(&dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(io(e));
        }
        let disk = Arc::new(Disk::new(
            final_dir,
            meta,
            None,
            self.keys.clone(),
            self.reconcile.health.clone(),
            self.serial(),
        ));
        self.disks.write().insert(name.to_string(), disk.clone());
        log::info!(
            "created disk '{name}' ({} bytes, {cipher}, {})",
            opts.size,
            disk.meta().encryption.kind
        );
        Ok(disk)
    }

    /// Deletes a disk and crypto-shreds its wrapped DEK. Open handles keep working
    /// until closed (POSIX unlink semantics); then nothing of the disk remains.
    pub fn delete_disk(&self, name: &str) -> Result<()> {
        let _ns = self.ns.lock();
        self.delete_locked(name)
    }

    fn delete_locked(&self, name: &str) -> Result<()> {
        let disk = self.get_or_err(name)?;
        let dir = disk.dir();
        let doomed = self.disks_dir().join(format!("{}.deleted", disk.id));
        let io = |e| StoreError::io(format!("deleting disk '{name}'"), e);
        // One rename removes the disk; a crash after it finishes the delete at next open.
        fs::rename(&dir, &doomed).map_err(io)?;
        durable::sync_dir(&self.disks_dir()).map_err(io)?;
        disk.mark_deleted();
        disk.set_dir(doomed.clone());
        self.disks.write().remove(name);
        if disk.open_handles() > 0 {
            self.orphans.lock().push(disk.clone());
        }
        durable::shred(&doomed.join(disk::META_FILE));
        fs::remove_dir_all(&doomed).map_err(io)?;
        log::info!("deleted disk '{name}' (wrapped key destroyed)");
        Ok(())
    }

    /// Renames a disk; with `replace`, an existing disk of the new name is deleted first.
    pub fn rename_disk(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        validate_name(to)?;
        let _ns = self.ns.lock();
        let disk = self.get_or_err(from)?;
        if from == to {
            return Ok(());
        }
        if self.get(to).is_some() {
            if !replace {
                return Err(StoreError::DiskExists(to.to_string()));
            }
            // As with unlink, handles still open on the replaced disk keep working
            // until closed (and a close the kernel has not sent yet is no obstacle).
            self.delete_locked(to)?;
        }
        disk.update_meta(|m| m.name = to.to_string())?;
        let mut disks = self.disks.write();
        disks.remove(from);
        disks.insert(to.to_string(), disk);
        log::info!("renamed disk '{from}' to '{to}'");
        Ok(())
    }

    /// Changes a disk's SKU (`az disk update --sku`).
    pub fn set_sku(&self, name: &str, sku: Sku) -> Result<()> {
        let disk = self.get_usable(name)?;
        disk.update_meta(|m| m.sku = sku.name().to_string())
    }

    /// `keyState`: `Available`, `Revoked: WHY` or `Unavailable: WHY`, the last for
    /// every disk that can't be served for another reason than a revocation.
    pub fn key_state(&self, disk: &Disk) -> String {
        let m = &disk.meta();
        if let Some(r) = disk.corrupt_reason() {
            return format!("Unavailable: {r}");
        }
        if let Some(r) = disk.revocation() {
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

//! One disk: its metadata, its backing ciphertext file and the data path.
//!
//! Offsets in the backing file equal plaintext offsets; the file is the logical size
//! rounded up to whole 4 KiB data units. A data unit whose stored bytes are all zero is
//! a hole and reads as plaintext zeros. Bytes past the logical size inside the last
//! unit are undefined and are zeroed whenever the disk grows over them.

use super::encryption::LayerKind;
use super::error::{Result, StoreError};
use super::health::Health;
use super::keyring::Keyring;
use super::meta::{key_check, DiskMeta, Layer, Rekey};
use super::spec::MAX_DISK_SIZE;
use crate::crypto::{DataCipher, DATA_UNIT};
use crate::durable;
use crate::vault::KeyId;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

const U: u64 = DATA_UNIT as u64;
/// Units per lock granule: one lock covers 64 KiB, so a 1 MiB request takes 16 locks.
const GRANULE_SHIFT: u32 = 4;
const STRIPES: usize = 64;

pub const META_FILE: &str = "meta.json";
const KEY_CHECK_MISMATCH: &str = "its data key does not match its metadata (keyCheck mismatch: tampered or mixed-up meta.json); restore meta.json from a backup";
pub const DATA_FILE: &str = "data";

fn round_up(x: u64) -> u64 {
    x.div_ceil(U) * U
}

fn is_zero(buf: &[u8]) -> bool {
    let (pre, mid, post) = unsafe {
        // Safe because: u128 has no invalid bit patterns and align_to only reinterprets
        // the aligned middle part of an initialized byte slice.
        buf.align_to::<u128>()
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// A revoked disk: why, and whether handles already open keep working (Ultra and
/// Premium SSD v2, as in Azure) or fail at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub reason: String,
    pub keep_open: bool,
}

/// The key material a verdict applies to: the layers and a rekey's new layers.
type LayerSet = (Vec<Layer>, Option<Vec<Layer>>);

fn layer_set(m: &DiskMeta) -> LayerSet {
    (m.layers.clone(), m.rekey.as_ref().map(|r| r.layers.clone()))
}

/// Whether an unwrap failure lies in the disk's own metadata (tampered or mixed-up
/// wrapped key) rather than in the key's state in the vault, which `key_access`
/// checks live and reports as a revocation.
fn is_key_fault(e: &StoreError) -> bool {
    use crate::vault::VaultError as V;
    matches!(
        e,
        StoreError::Crypto(_)
            | StoreError::InvalidArgument(_)
            | StoreError::Vault(
                V::Crypto(_) | V::UnknownKey(_) | V::UnsupportedAlg(_) | V::InvalidKeyId { .. }
            )
    )
}

/// Whether an unwrap failed because the vault can't work (its audit log can't be
/// written), rather than because of the key's state.
fn is_vault_blocked(e: &StoreError) -> bool {
    use crate::vault::VaultError as V;
    matches!(e, StoreError::Vault(V::AuditUnavailable { .. } | V::Io(_)))
}

/// Counts one FUSE request on a disk from its start until it has been answered.
pub struct InflightGuard<'a>(&'a AtomicU64);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whence for `Disk::seek`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekKind {
    Data,
    Hole,
}

/// State that exists only while the disk is unlocked: its backing file and ciphers.
/// Dropping it zeroizes the keys (the AES key schedules zeroize on drop).
struct Unlocked {
    file: File,
    layers: Vec<DataCipher>,
    /// During a rekey: the new layers, used for units below the boundary.
    next: Option<Vec<DataCipher>>,
}

impl Unlocked {
    fn stack(&self, unit: u64, boundary: u64) -> &[DataCipher] {
        match &self.next {
            Some(n) if unit < boundary => n,
            _ => &self.layers,
        }
    }

    /// Encrypts whole units starting at `first_unit`; `boundary` splits new from old keys.
    fn encrypt(&self, first_unit: u64, buf: &mut [u8], boundary: u64) {
        let units = (buf.len() / DATA_UNIT) as u64;
        let split = match &self.next {
            Some(_) => boundary.clamp(first_unit, first_unit + units),
            None => first_unit,
        };
        let (new, old) = buf.split_at_mut(((split - first_unit) * U) as usize);
        if let Some(n) = &self.next {
            for l in n {
                l.encrypt_units(first_unit, new);
            }
        }
        for l in &self.layers {
            l.encrypt_units(split, old);
        }
    }

    fn decrypt_unit(&self, unit: u64, buf: &mut [u8], boundary: u64) {
        for l in self.stack(unit, boundary).iter().rev() {
            l.decrypt_units(unit, buf);
        }
    }
}

pub const JOURNAL_FILE: &str = "rekey.journal";
/// Units re-encrypted per step of a rekey (1 MiB): 16 lock granules, so I/O elsewhere
/// on the disk goes on.
const REKEY_CHUNK: u64 = 256;
/// Size of a rekey journal record: header, one chunk, hash.
pub(super) const REKEY_JOURNAL_BYTES: u64 = 16 + REKEY_CHUNK * U + 32;

pub struct Disk {
    pub id: String,
    /// Stable number for this process's lifetime; the FUSE layer derives inodes from it.
    pub serial: u64,
    dir: RwLock<PathBuf>,
    meta: Mutex<DiskMeta>,
    /// Why the disk can't be served (corrupt metadata), if so.
    corrupt: Option<String>,
    /// Whether the DEKs of these layers unwrap and match their keyCheck: `None` if so,
    /// else why not. Set by every unlock and by `unavailable_reason`, so a status read
    /// unwraps at most once per layer set.
    key_verdict: Mutex<Option<(LayerSet, Option<String>)>>,
    /// Why the last unlock failed for a reason of the vault's own (it can't write its
    /// audit log, e.g. its file system is full), until an unlock succeeds.
    vault_blocked: Mutex<Option<String>>,
    keys: Arc<Keyring>,
    /// The reconciler's health: customer-key disks fail closed while it is down.
    health: Arc<Health>,
    size: AtomicU64,
    size_dirty: AtomicBool,
    deleted: AtomicBool,
    mtime: Mutex<SystemTime>,
    unlocked: RwLock<Option<Arc<Unlocked>>>,
    /// Set while the disk's customer key is revoked (see Store::reconcile).
    revoked: RwLock<Option<Revocation>>,
    /// FUSE requests on this disk between their start and their reply; revocation
    /// waits for them before it drops cached pages.
    inflight: AtomicU64,
    /// Rekey progress: units below it are under the new DEKs (see meta `rekey`).
    boundary: AtomicU64,
    open_count: Mutex<u32>,
    /// Shared by reads and writes, exclusive for size changes.
    resize: RwLock<()>,
    /// Serializes writes that extend the disk.
    extend: Mutex<()>,
    stripes: Vec<RwLock<()>>,
}

enum Guards<'a> {
    Shared(#[allow(dead_code)] Vec<RwLockReadGuard<'a, ()>>),
    Exclusive(#[allow(dead_code)] Vec<RwLockWriteGuard<'a, ()>>),
}

impl Disk {
    pub(super) fn new(
        dir: PathBuf,
        meta: DiskMeta,
        corrupt: Option<String>,
        keys: Arc<Keyring>,
        health: Arc<Health>,
        serial: u64,
    ) -> Self {
        let mtime = std::fs::metadata(dir.join(DATA_FILE))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let boundary = meta.rekey.as_ref().map_or(0, |r| r.boundary);
        Disk {
            id: meta.id.clone(),
            serial,
            dir: RwLock::new(dir),
            size: AtomicU64::new(meta.size_bytes),
            meta: Mutex::new(meta),
            corrupt,
            key_verdict: Mutex::new(None),
            vault_blocked: Mutex::new(None),
            keys,
            health,
            size_dirty: AtomicBool::new(false),
            deleted: AtomicBool::new(false),
            mtime: Mutex::new(mtime),
            unlocked: RwLock::new(None),
            revoked: RwLock::new(None),
            inflight: AtomicU64::new(0),
            boundary: AtomicU64::new(boundary),
            open_count: Mutex::new(0),
            resize: RwLock::new(()),
            extend: Mutex::new(()),
            stripes: (0..STRIPES).map(|_| RwLock::new(())).collect(),
        }
    }

    pub fn name(&self) -> String {
        self.meta.lock().name.clone()
    }

    pub fn meta(&self) -> DiskMeta {
        let mut m = self.meta.lock().clone();
        m.size_bytes = self.size();
        m
    }

    pub fn size(&self) -> u64 {
        self.size.load(Ordering::Acquire)
    }

    pub fn mtime(&self) -> SystemTime {
        *self.mtime.lock()
    }

    pub fn set_mtime(&self, t: SystemTime) {
        *self.mtime.lock() = t;
    }

    pub fn corrupt_reason(&self) -> Option<&str> {
        self.corrupt.as_deref()
    }

    pub fn open_handles(&self) -> u32 {
        *self.open_count.lock()
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.read().clone()
    }

    /// Bytes the backing file occupies (sparse files use less than their size).
    pub fn allocated_bytes(&self) -> u64 {
        std::fs::metadata(self.dir().join(DATA_FILE))
            .map(|m| m.blocks() * 512)
            .unwrap_or(0)
    }

    fn unavailable(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            disk: self.name(),
            reason: reason.into(),
        }
    }

    /// Records why the DEKs of `meta`'s layers can't be used (`None`: they can).
    fn set_key_verdict(&self, meta: &DiskMeta, fault: Option<String>) {
        *self.key_verdict.lock() = Some((layer_set(meta), fault));
    }

    /// Unwraps and checks the DEKs of `layers` (the disk's, or a rekey's new ones).
    /// A fault in the metadata itself is recorded for `keyState`.
    fn unlock_layers(&self, meta: &DiskMeta, layers: &[Layer]) -> Result<Vec<DataCipher>> {
        let fault = |reason: String| {
            self.set_key_verdict(meta, Some(reason.clone()));
            self.unavailable(reason)
        };
        let mut out = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let p = layer.parse().map_err(fault)?;
            let dek = self.keys.unwrap(&meta.encryption, &p).map_err(|e| {
                let why = format!("cannot unwrap its data key: {e}");
                if is_key_fault(&e) {
                    fault(why)
                } else {
                    if is_vault_blocked(&e) {
                        *self.vault_blocked.lock() = Some(why.clone());
                    }
                    self.unavailable(why)
                }
            })?;
            if key_check(&dek, &meta.id, i, p.cipher, &p.nonce) != layer.key_check {
                return Err(fault(KEY_CHECK_MISMATCH.into()));
            }
            out.push(DataCipher::new(p.cipher, &dek, &p.nonce)?);
        }
        Ok(out)
    }

    /// Why the disk can't be served for a reason of its own (its data file, its
    /// platform-key layers, a failed unlock), checked cheaply: the platform layers
    /// are unwrapped at most once per layer set; customer-key layers only by unlocks.
    pub fn unavailable_reason(&self) -> Option<String> {
        if self.corrupt.is_some() {
            return None;
        }
        if let Some(p) = self.data_problem() {
            return Some(p);
        }
        if let Some(why) = self.vault_blocked.lock().clone() {
            return Some(format!(
                "{why} (at the last open; it opens again once the vault can write its audit log)"
            ));
        }
        let meta = self.meta.lock().clone();
        let platform_key = self.keys.platform_key();
        let rekey_layers = meta.rekey.iter().flat_map(|r| r.layers.iter());
        for l in meta.layers.iter().chain(rekey_layers) {
            let Ok(key) = KeyId::parse(&l.kid) else {
                continue;
            };
            if LayerKind::of(&key) == LayerKind::Platform && Some(&key) != platform_key.as_ref() {
                return Some(format!(
                    "its platform-key layer is wrapped by {} but the store's platform key is {} (STORE/keys/platform.pem was replaced); restore the original platform.pem",
                    l.kid,
                    platform_key.as_ref().map_or("missing".into(), |k| k.to_string())
                ));
            }
        }
        let set = layer_set(&meta);
        let mut verdict = self.key_verdict.lock();
        if let Some((_, v)) = verdict.as_ref().filter(|(s, _)| *s == set) {
            return v.clone();
        }
        let mut fault = None;
        for layers in std::iter::once(&set.0).chain(set.1.iter()) {
            fault = fault.or_else(|| self.check_platform_layers(&meta, layers));
        }
        *verdict = Some((set, fault.clone()));
        fault
    }

    /// Unwraps the platform-key layers among `layers` (no vault, no audit record) and
    /// compares their keyCheck.
    fn check_platform_layers(&self, meta: &DiskMeta, layers: &[Layer]) -> Option<String> {
        for (i, layer) in layers.iter().enumerate() {
            let p = match layer.parse() {
                Ok(p) => p,
                Err(r) => return Some(r),
            };
            if LayerKind::of(&p.key) != LayerKind::Platform {
                continue;
            }
            let dek = match self.keys.unwrap(&meta.encryption, &p) {
                Ok(d) => d,
                Err(e) => return Some(format!("cannot unwrap its data key: {e}")),
            };
            if key_check(&dek, &meta.id, i, p.cipher, &p.nonce) != layer.key_check {
                return Some(KEY_CHECK_MISMATCH.into());
            }
        }
        None
    }

    /// Whether the backing file is there, a regular file, and long enough.
    fn data_problem(&self) -> Option<String> {
        // Sizes change with the file first when growing and last when shrinking;
        // these locks exclude both, so the comparison below is exact.
        let _r = self.resize.read();
        let _e = self.extend.lock();
        let path = self.dir().join(DATA_FILE);
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Some(format!(
                    "its data file {} is missing; restore it from a backup or delete the disk",
                    path.display()
                ))
            }
            Err(e) => return Some(format!("cannot read its data file {}: {e}", path.display())),
        };
        if !md.is_file() {
            return Some(format!(
                "its data file {} is not a regular file; restore it from a backup or delete the disk",
                path.display()
            ));
        }
        let want = round_up(self.size());
        if md.len() < want {
            return Some(format!(
                "its data file {} is shorter than the disk ({} of {want} bytes); restore it from a backup or delete the disk",
                path.display(),
                md.len()
            ));
        }
        None
    }

    /// Unwraps every layer's DEK and opens the backing file.
    fn unlock(&self) -> Result<Unlocked> {
        if let Some(reason) = &self.corrupt {
            return Err(self.unavailable(reason.clone()));
        }
        let meta = self.meta.lock().clone();
        let layers = self.unlock_layers(&meta, &meta.layers)?;
        let next = match &meta.rekey {
            Some(rk) => Some(self.unlock_layers(&meta, &rk.layers)?),
            None => None,
        };
        self.set_key_verdict(&meta, None);
        *self.vault_blocked.lock() = None;
        let path = self.dir().join(DATA_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| self.unavailable(format!("cannot open {}: {e}", path.display())))?;
        Ok(Unlocked { file, layers, next })
    }

    /// Fails closed for a customer-key disk while revocations can't be enforced.
    fn check_enforced(&self) -> Result<()> {
        if let Some(why) = self.health.down() {
            if self.meta.lock().encryption.kind.uses_customer_key() {
                return Err(StoreError::EnforcementDown(why));
            }
        }
        Ok(())
    }

    /// The unlocked state, unwrapping temporarily if no handle has the disk open.
    fn unlocked(&self) -> Result<Arc<Unlocked>> {
        if let Some(r) = self.revoked.read().as_ref().filter(|r| !r.keep_open) {
            return Err(self.unavailable(r.reason.clone()));
        }
        self.check_enforced()?;
        if let Some(u) = self.unlocked.read().as_ref() {
            return Ok(u.clone());
        }
        Ok(Arc::new(self.unlock()?))
    }

    /// Runs `f` while no handle is open and none can be opened (Azure's "detached").
    pub(super) fn while_closed<T>(&self, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let n = self.open_count.lock();
        if *n > 0 {
            return Err(StoreError::Attached(self.name()));
        }
        let r = f();
        drop(n);
        r
    }

    /// Marks the start of a FUSE request on this disk; the guard marks its reply.
    pub fn inflight(&self) -> InflightGuard<'_> {
        self.inflight.fetch_add(1, Ordering::AcqRel);
        InflightGuard(&self.inflight)
    }

    /// Requests between their start and their reply.
    pub fn inflight_count(&self) -> u64 {
        self.inflight.load(Ordering::Acquire)
    }

    pub fn revocation(&self) -> Option<Revocation> {
        self.revoked.read().clone()
    }

    /// Revokes the disk. Unless `keep_open`, the keys are dropped (and zeroized) once
    /// requests already past the check have finished, and every later request fails.
    pub(super) fn revoke(&self, r: Revocation) {
        let _n = self.open_count.lock();
        let keep = r.keep_open;
        *self.revoked.write() = Some(r);
        if !keep {
            // Reads and writes hold `resize` shared for their whole run.
            let _quiesce = self.resize.write();
            *self.unlocked.write() = None;
        }
    }

    /// Lifts a revocation: open handles get their keys back (an audited unwrap).
    pub(super) fn restore(&self) -> Result<()> {
        let n = self.open_count.lock();
        if *n > 0 && self.unlocked.read().is_none() {
            let u = self.unlock()?;
            *self.unlocked.write() = Some(Arc::new(u));
        }
        *self.revoked.write() = None;
        Ok(())
    }

    /// Registers an open handle; the first one unwraps the DEK.
    pub fn open(&self) -> Result<()> {
        let mut n = self.open_count.lock();
        if let Some(r) = self.revoked.read().as_ref() {
            return Err(self.unavailable(r.reason.clone()));
        }
        self.check_enforced()?;
        if *n == 0 {
            let u = self.unlock()?;
            *self.unlocked.write() = Some(Arc::new(u));
        }
        *n += 1;
        Ok(())
    }

    /// Drops an open handle; the last one persists the size and zeroizes the keys.
    pub fn release(&self) -> Result<()> {
        let mut n = self.open_count.lock();
        *n = n.saturating_sub(1);
        let r = self.persist_size();
        if *n == 0 {
            *self.unlocked.write() = None;
        }
        r
    }

    /// Locks the granules covering units [first, end).
    fn lock_units(&self, first: u64, end: u64, exclusive: bool) -> Guards<'_> {
        let g0 = first >> GRANULE_SHIFT;
        let g1 = (end - 1) >> GRANULE_SHIFT;
        let mut idx: Vec<usize> = if g1 - g0 + 1 >= STRIPES as u64 {
            (0..STRIPES).collect()
        } else {
            (g0..=g1).map(|g| (g % STRIPES as u64) as usize).collect()
        };
        // A fixed order (ascending stripe index) rules out deadlock between requests.
        idx.sort_unstable();
        idx.dedup();
        if exclusive {
            Guards::Exclusive(idx.iter().map(|&i| self.stripes[i].write()).collect())
        } else {
            Guards::Shared(idx.iter().map(|&i| self.stripes[i].read()).collect())
        }
    }

    /// Reads up to `len` bytes at `off`; shorter at the end of the disk.
    pub fn read(&self, off: u64, len: usize) -> Result<Vec<u8>> {
        let _r = self.resize.read();
        let u = self.unlocked()?;
        let size = self.size();
        if off >= size || len == 0 {
            return Ok(Vec::new());
        }
        let end = size.min(off.saturating_add(len as u64));
        let first = off / U;
        let last = end.div_ceil(U);
        let mut buf = vec![0u8; ((last - first) * U) as usize];
        {
            let _g = self.lock_units(first, last, false);
            read_full(&u.file, &mut buf, first * U).map_err(|e| self.io_err("read", e))?;
            let b = self.boundary.load(Ordering::Acquire);
            for (i, unit) in buf.chunks_exact_mut(DATA_UNIT).enumerate() {
                if !is_zero(unit) {
                    u.decrypt_unit(first + i as u64, unit, b);
                }
            }
        }
        let head = (off - first * U) as usize;
        let n = (end - off) as usize;
        if head > 0 {
            buf.copy_within(head..head + n, 0);
        }
        buf.truncate(n);
        Ok(buf)
    }

    fn io_err(&self, what: &str, e: io::Error) -> StoreError {
        StoreError::io(format!("{what} on disk '{}'", self.name()), e)
    }

    /// Encrypts and writes `data` at `off`, read-modify-writing partial units.
    /// The caller holds `resize` (shared or exclusive).
    fn write_range(&self, u: &Unlocked, off: u64, data: &[u8]) -> Result<()> {
        let end = off + data.len() as u64;
        let first = off / U;
        let last = end.div_ceil(U);
        let mut buf = vec![0u8; ((last - first) * U) as usize];
        let head = (off - first * U) as usize;
        let _g = self.lock_units(first, last, true);
        let b = self.boundary.load(Ordering::Acquire);
        let fill_unit = |unit: u64, buf: &mut [u8]| -> Result<()> {
            let slot = &mut buf[((unit - first) * U) as usize..][..DATA_UNIT];
            read_full(&u.file, slot, unit * U).map_err(|e| self.io_err("read", e))?;
            if !is_zero(slot) {
                u.decrypt_unit(unit, slot, b);
            }
            Ok(())
        };
        if head != 0 || (end < (first + 1) * U) {
            fill_unit(first, &mut buf)?;
        }
        if last - 1 > first && !end.is_multiple_of(U) {
            fill_unit(last - 1, &mut buf)?;
        }
        buf[head..head + data.len()].copy_from_slice(data);
        u.encrypt(first, &mut buf, b);
        u.file
            .write_all_at(&buf, first * U)
            .map_err(|e| self.io_err("write", e))
    }

    /// Zeroes the undefined bytes between the current size and `upto` in the last unit.
    fn zero_tail(&self, u: &Unlocked, size: u64, upto: u64) -> Result<()> {
        let z_end = round_up(size).min(upto);
        if z_end > size {
            self.write_range(u, size, &vec![0u8; (z_end - size) as usize])?;
        }
        Ok(())
    }

    pub fn write(&self, off: u64, data: &[u8]) -> Result<usize> {
        if data.is_empty() {
            return Ok(0);
        }
        let end = off
            .checked_add(data.len() as u64)
            .filter(|&e| e <= MAX_DISK_SIZE)
            .ok_or(StoreError::TooLarge)?;
        let _r = self.resize.read();
        let u = self.unlocked()?;
        if end <= self.size() {
            self.write_range(&u, off, data)?;
        } else {
            let _e = self.extend.lock();
            let size = self.size();
            if off > size {
                self.zero_tail(&u, size, off)?;
            }
            self.write_range(&u, off, data)?;
            if end > size {
                self.size.store(end, Ordering::Release);
                self.size_dirty.store(true, Ordering::Release);
            }
        }
        self.set_mtime(SystemTime::now());
        Ok(data.len())
    }

    /// Changes the size (truncate). Growing reads as zeros; shrinking discards data.
    pub fn set_size(&self, new: u64) -> Result<()> {
        if new > MAX_DISK_SIZE {
            return Err(StoreError::TooLarge);
        }
        let _w = self.resize.write();
        let old = self.size();
        if new > old && !old.is_multiple_of(U) {
            let u = self.unlocked()?;
            self.zero_tail(&u, old, new)?;
        }
        // The file grows before the metadata records it, and shrinks after: a crash in
        // between is reconciled to the recorded size at the next open, and a failure
        // leaves both as they were.
        let f = self
            .backing_file()
            .map_err(|e| self.io_err("truncate", e))?;
        if new > old {
            f.set_len(round_up(new))
                .map_err(|e| self.io_err("truncate", e))?;
        }
        // An unlinked disk kept alive by open handles has no metadata left to update.
        let deleted = self.deleted.load(Ordering::Acquire);
        let recorded = if deleted {
            Ok(())
        } else {
            self.update_meta(|m| m.size_bytes = new)
        };
        if let Err(e) = recorded {
            if new > old {
                let _ = f.set_len(round_up(old));
            }
            return Err(e);
        }
        self.size.store(new, Ordering::Release);
        self.size_dirty.store(false, Ordering::Release);
        if new < old {
            f.set_len(round_up(new))
                .map_err(|e| self.io_err("truncate", e))?;
        }
        self.set_mtime(SystemTime::now());
        Ok(())
    }

    /// The backing file for a size change: the open one (all an unlinked disk has
    /// left), or opened by path.
    fn backing_file(&self) -> io::Result<File> {
        if let Some(u) = self.unlocked.read().as_ref() {
            return u.file.try_clone();
        }
        if self.deleted.load(Ordering::Acquire) {
            return Err(io::Error::from_raw_os_error(libc::ENOENT));
        }
        OpenOptions::new()
            .write(true)
            .open(self.dir().join(DATA_FILE))
    }

    /// Returns `[off, off+len)` to zeros without changing the size (fallocate PUNCH_HOLE).
    pub fn punch(&self, off: u64, len: u64) -> Result<()> {
        let _r = self.resize.read();
        let size = self.size();
        let end = off.saturating_add(len).min(size);
        if off >= end {
            return Ok(());
        }
        // Bytes past the size are undefined, so a range reaching the end may free the last unit.
        let full_end = if end == size {
            round_up(size)
        } else {
            end / U * U
        };
        let full_start = round_up(off);
        let u = self.unlocked()?;
        if full_start < full_end {
            let _g = self.lock_units(full_start / U, full_end / U, true);
            punch_file(&u.file, full_start, full_end - full_start)
                .map_err(|e| self.io_err("punch", e))?;
        }
        if off < full_start.min(end) {
            self.write_range(&u, off, &vec![0u8; (full_start.min(end) - off) as usize])?;
        }
        let tail_start = full_end.max(full_start).max(off);
        if tail_start < end {
            self.write_range(&u, tail_start, &vec![0u8; (end - tail_start) as usize])?;
        }
        self.set_mtime(SystemTime::now());
        Ok(())
    }

    /// fallocate ZERO_RANGE: zeros, growing the disk unless `keep_size`.
    pub fn zero_range(&self, off: u64, len: u64, keep_size: bool) -> Result<()> {
        let end = off.checked_add(len).ok_or(StoreError::TooLarge)?;
        if !keep_size && end > self.size() {
            self.set_size(end)?;
        }
        self.punch(off, len)
    }

    /// fallocate mode 0: reserve backing space (it reads as zeros) and grow unless
    /// `keep_size`. The size changes only once the space is reserved, so a failed
    /// fallocate (ENOSPC) leaves the disk as it was.
    pub fn allocate(&self, off: u64, len: u64, keep_size: bool) -> Result<()> {
        let end = off.checked_add(len).ok_or(StoreError::TooLarge)?;
        if end > MAX_DISK_SIZE {
            return Err(StoreError::TooLarge);
        }
        let grow = {
            let _r = self.resize.read();
            let u = self.unlocked()?;
            let size = self.size();
            let grow = !keep_size && end > size;
            let target = if grow { end } else { size };
            let (a, b) = (off / U * U, round_up(end.min(target)));
            if a < b {
                if let Err(e) = fallocate_keep_size(&u.file, a, b - a) {
                    if grow {
                        // Give back what was reserved past the old end before failing.
                        let tail = round_up(size).max(a);
                        if tail < b {
                            let _ = punch_file(&u.file, tail, b - tail);
                        }
                    }
                    return Err(self.io_err("allocate", e));
                }
            }
            grow
        };
        if grow {
            self.set_size(end)?;
        }
        Ok(())
    }

    /// SEEK_DATA / SEEK_HOLE, answered from the backing file's holes.
    pub fn seek(&self, off: u64, kind: SeekKind) -> Result<u64> {
        let _r = self.resize.read();
        let size = self.size();
        let nxio = || StoreError::io("seek", io::Error::from_raw_os_error(libc::ENXIO));
        if off >= size {
            return Err(nxio());
        }
        let u = self.unlocked()?;
        let f = &u.file;
        let whence = match kind {
            SeekKind::Data => libc::SEEK_DATA,
            SeekKind::Hole => libc::SEEK_HOLE,
        };
        // Safe because: the fd is valid while `f` lives; lseek takes no pointers.
        let r = unsafe { libc::lseek(f.as_raw_fd(), off as i64, whence) };
        if r < 0 {
            let e = io::Error::last_os_error();
            return match (kind, e.raw_os_error()) {
                (SeekKind::Data, Some(libc::ENXIO)) => Err(nxio()),
                _ => Err(self.io_err("seek", e)),
            };
        }
        let r = r as u64;
        match kind {
            SeekKind::Data if r >= size => Err(nxio()),
            SeekKind::Data => Ok(r),
            SeekKind::Hole => Ok(r.min(size)),
        }
    }

    /// Makes written data and the size durable (fsync/fdatasync).
    pub fn sync(&self) -> Result<()> {
        if let Some(u) = self.unlocked.read().clone() {
            u.file.sync_data().map_err(|e| self.io_err("fsync", e))?;
        }
        self.persist_size()
    }

    /// Writes the in-memory size to metadata if writes grew the disk.
    pub fn persist_size(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) || !self.size_dirty.swap(false, Ordering::AcqRel) {
            return Ok(());
        }
        let size = self.size();
        self.update_meta(|m| m.size_bytes = m.size_bytes.max(size))
            .inspect_err(|_| {
                self.size_dirty.store(true, Ordering::Release);
            })
    }

    /// Applies `f` to the metadata and replaces meta.json atomically.
    pub(super) fn update_meta(&self, f: impl FnOnce(&mut DiskMeta)) -> Result<()> {
        let mut meta = self.meta.lock();
        let mut next = meta.clone();
        f(&mut next);
        let path = self.dir().join(META_FILE);
        durable::write_atomic(&path, &next.to_json(), 0o600)
            .map_err(|e| StoreError::io(format!("updating {}", path.display()), e))?;
        *meta = next;
        Ok(())
    }

    /// Starts a rekey: records the new layers (boundary 0) and gives open handles
    /// the new ciphers too.
    pub(super) fn begin_rekey(&self, rk: Rekey) -> Result<()> {
        let n = self.open_count.lock();
        let _w = self.resize.write();
        self.boundary.store(rk.boundary, Ordering::Release);
        self.update_meta(|m| m.rekey = Some(rk))?;
        if *n > 0 {
            let u = self.unlock()?;
            *self.unlocked.write() = Some(Arc::new(u));
        }
        Ok(())
    }

    pub fn rekey_state(&self) -> Option<(u64, u64)> {
        let m = self.meta.lock();
        m.rekey
            .as_ref()
            .map(|r| (r.boundary, self.size().div_ceil(U)))
    }

    fn journal_path(&self) -> PathBuf {
        self.dir().join(JOURNAL_FILE)
    }

    /// Re-encrypts the disk from the recorded boundary to the end, chunk by chunk,
    /// while I/O goes on elsewhere; then makes the new layers the disk's layers.
    /// Each chunk: old ciphertext to the journal (fsync), new ciphertext in place
    /// (fdatasync), boundary in metadata (atomic). A crash mid-chunk is undone from
    /// the journal at the next open; `progress(done, total)` is called per chunk.
    pub(super) fn run_rekey(&self, progress: &dyn Fn(u64, u64), stop: &AtomicBool) -> Result<()> {
        let journal = self.journal_path();
        // One unwrap for the whole run (not one audited unwrap per chunk).
        let u = self.unlocked()?;
        loop {
            let _r = self.resize.read();
            let units = self.size().div_ceil(U);
            let b = self.boundary.load(Ordering::Acquire);
            progress(b.min(units), units);
            if b >= units || u.next.is_none() {
                break;
            }
            if stop.load(Ordering::Acquire) || self.deleted.load(Ordering::Acquire) {
                return Err(StoreError::Busy(self.name()));
            }
            if let Some(r) = self.revocation().filter(|r| !r.keep_open) {
                return Err(self.unavailable(r.reason));
            }
            // Holes hold no ciphertext under any key: skip to the next data, and
            // record the skip before journaling there (recovery matches the journal
            // against the recorded boundary). The gap is locked so no write lands in
            // it under the old keys while the boundary moves past it.
            let b = {
                let _gap = self.lock_units(b, units, true);
                let next =
                    next_data_unit(&u.file, b, units).map_err(|e| self.io_err("rekey seek", e))?;
                if next > b {
                    self.update_meta(|m| {
                        if let Some(r) = m.rekey.as_mut() {
                            r.boundary = next;
                        }
                    })?;
                    self.boundary.store(next, Ordering::Release);
                }
                next
            };
            if b >= units {
                continue;
            }
            let e = (b + REKEY_CHUNK).min(units);
            let _g = self.lock_units(b, e, true);
            let mut buf = vec![0u8; ((e - b) * U) as usize];
            read_full(&u.file, &mut buf, b * U).map_err(|e| self.io_err("rekey read", e))?;
            write_journal(&journal, b, &buf).map_err(|e| self.io_err("rekey journal", e))?;
            crate::fault::point("rekey.journal");
            for (i, unit) in buf.chunks_exact_mut(DATA_UNIT).enumerate() {
                if !is_zero(unit) {
                    let n = b + i as u64;
                    u.decrypt_unit(n, unit, 0);
                    // Boundary past `n`: encrypt with the new layers.
                    u.encrypt(n, unit, u64::MAX);
                }
            }
            write_sparse(&u.file, &buf, b * U)
                .and_then(|()| u.file.sync_data())
                .map_err(|e| self.io_err("rekey write", e))?;
            crate::fault::point("rekey.data");
            self.update_meta(|m| {
                if let Some(r) = m.rekey.as_mut() {
                    r.boundary = e;
                }
            })?;
            self.boundary.store(e, Ordering::Release);
            crate::fault::point("rekey.chunk");
        }
        drop(u);
        // Finish: the new layers become the disk's layers, atomically.
        let n = self.open_count.lock();
        let _w = self.resize.write();
        self.update_meta(|m| {
            if let Some(r) = m.rekey.take() {
                m.layers = r.layers;
            }
        })?;
        // Until the keys are reloaded every unit is under the new layers.
        self.boundary.store(u64::MAX, Ordering::Release);
        let _ = std::fs::remove_file(&journal);
        if *n > 0 {
            match self.unlock() {
                Ok(u) => {
                    *self.unlocked.write() = Some(Arc::new(u));
                    self.boundary.store(0, Ordering::Release);
                }
                Err(e) => log::warn!("disk '{}': keys not reloaded after rekey: {e}", self.name()),
            }
        } else {
            self.boundary.store(0, Ordering::Release);
        }
        progress(1, 1);
        Ok(())
    }

    /// Undoes a rekey chunk interrupted by a crash, from the journal.
    fn recover_rekey_journal(&self) -> io::Result<()> {
        let journal = self.journal_path();
        let Some(boundary) = self.meta.lock().rekey.as_ref().map(|r| r.boundary) else {
            let _ = std::fs::remove_file(&journal);
            return Ok(());
        };
        let bytes = match std::fs::read(&journal) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        if let Some((first, data)) = parse_journal(&bytes) {
            if first == boundary {
                log::info!(
                    "disk '{}': undoing an interrupted rekey step at unit {first}",
                    self.name()
                );
                let f = OpenOptions::new()
                    .write(true)
                    .open(self.dir().join(DATA_FILE))?;
                write_sparse(&f, data, first * U)?;
                f.sync_data()?;
            }
        }
        std::fs::remove_file(&journal)
    }

    /// Reconciles the backing file with the recorded size after a crash.
    pub(super) fn reconcile(&self) -> io::Result<()> {
        if self.corrupt.is_some() {
            return Ok(());
        }
        self.recover_rekey_journal()?;
        let path = self.dir().join(DATA_FILE);
        let f = OpenOptions::new().write(true).open(&path)?;
        let want = round_up(self.size());
        if f.metadata()?.len() != want {
            f.set_len(want)?;
            f.sync_all()?;
        }
        Ok(())
    }

    pub(super) fn set_dir(&self, dir: PathBuf) {
        *self.dir.write() = dir;
    }

    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    pub(super) fn data_path(dir: &Path) -> PathBuf {
        dir.join(DATA_FILE)
    }
}

/// Journal record: first unit (u64 LE), unit count (u64 LE), the old ciphertext, and
/// SHA-256 of all that, so a torn journal write is recognised and ignored.
fn write_journal(path: &Path, first: u64, data: &[u8]) -> io::Result<()> {
    use sha2::{Digest, Sha256};
    let mut rec = Vec::with_capacity(16 + data.len() + 32);
    rec.extend_from_slice(&first.to_le_bytes());
    rec.extend_from_slice(&((data.len() / DATA_UNIT) as u64).to_le_bytes());
    rec.extend_from_slice(data);
    let h = Sha256::digest(&rec);
    rec.extend_from_slice(&h);
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    std::io::Write::write_all(&mut f, &rec)?;
    f.sync_data()?;
    if !existed {
        durable::sync_dir(path.parent().unwrap_or(Path::new(".")))?;
    }
    Ok(())
}

fn parse_journal(b: &[u8]) -> Option<(u64, &[u8])> {
    use sha2::{Digest, Sha256};
    if b.len() < 48 {
        return None;
    }
    let (body, hash) = b.split_at(b.len() - 32);
    if Sha256::digest(body).as_slice() != hash {
        return None;
    }
    let first = u64::from_le_bytes(body[..8].try_into().ok()?);
    let count = u64::from_le_bytes(body[8..16].try_into().ok()?);
    let data = &body[16..];
    (data.len() as u64 == count * U).then_some((first, data))
}

/// The first unit at or after `unit` (below `units`) that holds data, or `units`.
fn next_data_unit(f: &File, unit: u64, units: u64) -> io::Result<u64> {
    // Safe because: the fd is valid while `f` lives; lseek takes no pointers.
    let r = unsafe { libc::lseek(f.as_raw_fd(), (unit * U) as i64, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(units),
            // No SEEK_DATA here: treat everything as data.
            Some(libc::EINVAL) => Ok(unit),
            _ => Err(e),
        };
    }
    Ok((r as u64 / U).clamp(unit, units))
}

/// Writes whole units at `off`, keeping all-zero units as holes (punched, not
/// written), so rewriting a chunk never allocates what was sparse.
fn write_sparse(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    let units: Vec<bool> = buf.chunks(DATA_UNIT).map(|u| !is_zero(u)).collect();
    let mut i = 0;
    while i < units.len() {
        let data = units[i];
        let mut j = i;
        while j < units.len() && units[j] == data {
            j += 1;
        }
        let (a, z) = (i * DATA_UNIT, (j * DATA_UNIT).min(buf.len()));
        if data {
            f.write_all_at(&buf[a..z], off + a as u64)?;
        } else {
            punch_file(f, off + a as u64, (z - a) as u64)?;
        }
        i = j;
    }
    Ok(())
}

/// pread that fills `buf`, leaving zeros past the end of the file.
fn read_full(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

/// Reserves `[off, off+len)` of the backing file without changing its size; a
/// filesystem that can't is not an error (holes read as zeros all the same).
fn fallocate_keep_size(f: &File, off: u64, len: u64) -> io::Result<()> {
    // Safe because: the fd is valid while `f` lives; fallocate takes no pointers.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
            return Err(e);
        }
    }
    Ok(())
}

/// Frees a unit-aligned range of the backing file; falls back to writing zeros
/// (which read back as a hole) where the filesystem can't punch.
fn punch_file(f: &File, off: u64, len: u64) -> io::Result<()> {
    // Safe because: the fd is valid while `f` lives; fallocate takes no pointers.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(libc::EOPNOTSUPP) {
        return Err(e);
    }
    let zeros = vec![0u8; 1 << 20];
    let mut pos = off;
    while pos < off + len {
        let n = (off + len - pos).min(zeros.len() as u64) as usize;
        f.write_all_at(&zeros[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_and_zero_detection() {
        assert_eq!(round_up(0), 0);
        assert_eq!(round_up(1), 4096);
        assert_eq!(round_up(4096), 4096);
        assert_eq!(round_up(4097), 8192);
        let mut b = vec![0u8; 4096];
        assert!(is_zero(&b));
        b[4095] = 1;
        assert!(!is_zero(&b));
        assert!(!is_zero(&b[1..]));
    }
}

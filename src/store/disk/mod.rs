//! One disk: its metadata, its backing ciphertext file and its keys. This file has
//! the `Disk` and its lifecycle (open, release, unlock, revocation, key verdicts);
//! `io` the data path, `rekey` the rekey engine and its journal, and `units` the pure
//! arithmetic of data units.
//!
//! Offsets in the backing file equal plaintext offsets; the file is the logical size
//! rounded up to whole 4 KiB data units. A data unit whose stored bytes are all zero is
//! a hole and reads as plaintext zeros. Bytes past the logical size inside the last
//! unit are undefined and are zeroed whenever the disk grows over them.

mod io;
mod keys;
pub(in crate::store) mod layered;
mod merge;
use keys::LayerSet;
mod rekey;
pub(in crate::store) mod units;

pub(in crate::store) use io::punch_file as io_punch_file;
pub use io::SeekKind;
#[cfg(test)]
pub(super) use rekey::JOURNAL_FILE;
pub(super) use rekey::REKEY_JOURNAL_BYTES;

use super::delta::delta_path;
use super::encryption::LayerKind;
use super::error::{Result, StoreError};
use super::health::Health;
use super::keyring::Keyring;
use super::meta::{key_check, DiskMeta, Layer};
use super::spec::ObjectKind;
use crate::crypto::{DataCipher, DATA_UNIT};
use crate::durable;
use crate::vault::KeyId;
use layered::{open_ro, Layered};
use parking_lot::{Mutex, RwLock};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;
use units::{is_zero, round_up, UNIT};

/// Units per lock granule: one lock covers 64 KiB, so a 1 MiB request takes 16 locks.
const GRANULE_SHIFT: u32 = 4;
const STRIPES: usize = 64;

pub const META_FILE: &str = "meta.json";
const KEY_CHECK_MISMATCH: &str = "its data key does not match its metadata (keyCheck mismatch: tampered or mixed-up meta.json); restore meta.json from a backup";
pub const DATA_FILE: &str = "data";

/// A revoked disk: why, and whether handles already open keep working (Ultra and
/// Premium SSD v2, as in Azure) or fail at once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Revocation {
    pub reason: String,
    pub keep_open: bool,
}

/// Counts one FUSE request on a disk from its start until it has been answered.
pub struct InflightGuard<'a>(&'a AtomicU64);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// State that exists only while the disk is unlocked: its backing file and ciphers.
/// Dropping it zeroizes the keys (the AES key schedules zeroize on drop).
struct Unlocked {
    /// The writable data of a disk (its data file or top delta); for a snapshot or an
    /// image its topmost delta, opened read-only.
    file: File,
    layers: Arc<Vec<DataCipher>>,
    /// During a rekey: the new layers, used for units below the boundary.
    next: Option<Arc<Vec<DataCipher>>>,
    /// The deltas below `file` and their index, for an object with more than one delta.
    layered: Option<Layered>,
}

impl Unlocked {
    /// Reads the stored bytes of whole units from `first` into `buf`, from whichever
    /// delta holds each (zeros for holes).
    fn read_stored(&self, first: u64, buf: &mut [u8]) -> std::io::Result<()> {
        match &self.layered {
            Some(l) => l.read(&self.file, first, buf),
            None => io::read_full(&self.file, buf, first * UNIT),
        }
    }

    /// Notes that units `r` of the writable top now hold ciphertext.
    fn note_written(&self, r: std::ops::Range<u64>) {
        if let Some(l) = self.layered.as_ref().filter(|l| l.top) {
            l.written.lock().insert(r);
        }
    }

    fn stack(&self, unit: u64, boundary: u64) -> &[DataCipher] {
        match &self.next {
            Some(n) if unit < boundary => n,
            _ => &self.layers,
        }
    }

    /// Encrypts whole units starting at `first_unit`; `boundary` splits new from old keys.
    fn encrypt(&self, first_unit: u64, buf: &mut [u8], boundary: u64) {
        self.encrypt_from(first_unit, None, buf, boundary);
    }

    /// As `encrypt`, the plaintext read from `src` (as long as `buf`) if given: the first
    /// layer's pass writes `buf`, the others run in place.
    fn encrypt_from(&self, first_unit: u64, src: Option<&[u8]>, buf: &mut [u8], boundary: u64) {
        let units = (buf.len() / DATA_UNIT) as u64;
        let split = match &self.next {
            Some(_) => boundary.clamp(first_unit, first_unit + units),
            None => first_unit,
        };
        let at = ((split - first_unit) * UNIT) as usize;
        let (new, old) = buf.split_at_mut(at);
        let (src_new, src_old) = match src {
            Some(s) => (Some(&s[..at]), Some(&s[at..])),
            None => (None, None),
        };
        let pass = |layers: &[DataCipher], first: u64, src: Option<&[u8]>, buf: &mut [u8]| {
            for (i, l) in layers.iter().enumerate() {
                match src {
                    Some(s) if i == 0 => l.encrypt_units_from(first, s, buf),
                    _ => l.encrypt_units(first, buf),
                }
            }
        };
        if let Some(n) = &self.next {
            pass(n, first_unit, src_new, new);
        }
        pass(&self.layers, split, src_old, old);
    }

    fn decrypt_unit(&self, unit: u64, buf: &mut [u8], boundary: u64) {
        for l in self.stack(unit, boundary).iter().rev() {
            l.decrypt_units(unit, buf);
        }
    }

    /// Decrypts whole stored units in place, each run of ciphertext units in one call
    /// per layer; holes (all-zero units) stay zeros.
    fn decrypt_stored(&self, first_unit: u64, buf: &mut [u8], boundary: u64) {
        let units = buf.len() / DATA_UNIT;
        let hole = |buf: &[u8], k: usize| is_zero(&buf[k * DATA_UNIT..][..DATA_UNIT]);
        let mut i = 0;
        while i < units {
            if hole(buf, i) {
                i += 1;
                continue;
            }
            // The run ends at a hole or where a rekey's boundary splits new from old keys.
            let n = first_unit + i as u64;
            let side = n < boundary;
            let mut j = i + 1;
            while j < units && !hole(buf, j) && ((first_unit + j as u64) < boundary) == side {
                j += 1;
            }
            let run = &mut buf[i * DATA_UNIT..j * DATA_UNIT];
            for l in self.stack(n, boundary).iter().rev() {
                l.decrypt_units(n, run);
            }
            i = j;
        }
    }
}

/// One disk: metadata, backing file, keys while unlocked, and the locks of its data
/// path.
///
/// # Lock order
///
/// A lock may be taken while holding only locks above it in this list, never below:
///
/// 1. `open_count`: open, release, revoke, restore and rekey begin/finish hold it
///    across the whole change, so no handle opens or closes midway.
/// 2. `resize`: shared by every data-path request, exclusive for a size change, a
///    revocation's quiesce and a rekey's begin/finish; so the size and the keys
///    don't change under a request.
/// 3. `extend`: serializes writes past the end (and `data_problem`'s size check),
///    taken under `resize` shared.
/// 4. `stripes`: the granule locks of the units a request touches, always several at
///    once in ascending index order; shared to read, exclusive to write or punch.
/// 5. `revoked`: read to check (and to name the disk in the refusal), written by
///    revoke and restore under `open_count` only.
/// 6. `unlocked`: held only to take, clone or swap the `Arc<Unlocked>`; the data path
///    works on its clone, so a revocation never waits for I/O on this lock.
/// 7. `key_verdict`: held while platform layers are unwrapped to fill it.
/// 8. `meta`: held across a metadata write (`update_meta`), and taken for the name in
///    every error message, so under any of the above.
/// 9. `dir`: read under `meta` to find meta.json; written alone (rename, delete).
///
/// `vault_blocked` and `mtime` are leaves: nothing is taken while holding them.
/// Unwrapping (under 1, 2 or 7) takes the keyring's set table and the key providers'
/// own locks, and `check_enforced` the reconciler health's; none of those calls back
/// into a disk. The store's `ns` lock comes before all of these (key changes and
/// renames take disk locks under it).
pub struct Disk {
    pub id: String,
    /// Disk, snapshot or image; the last two are read-only.
    pub kind: ObjectKind,
    /// The store's root, where `deltas/` is.
    root: PathBuf,
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
    /// Open handles.
    open_count: Mutex<u32>,
    /// Shared by reads and writes, exclusive for size changes.
    resize: RwLock<()>,
    /// Serializes writes that extend the disk.
    extend: Mutex<()>,
    /// Granule locks: unit `n` is covered by `stripes[(n >> GRANULE_SHIFT) % STRIPES]`.
    stripes: Vec<RwLock<()>>,
}

impl Disk {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        kind: ObjectKind,
        root: PathBuf,
        dir: PathBuf,
        meta: DiskMeta,
        corrupt: Option<String>,
        keys: Arc<Keyring>,
        health: Arc<Health>,
        serial: u64,
    ) -> Self {
        let mtime = std::fs::metadata(top_path(&root, &dir, &meta))
            .and_then(|m| m.modified())
            .unwrap_or_else(|_| SystemTime::now());
        let boundary = meta.rekey.as_ref().map_or(0, |r| r.boundary);
        Disk {
            id: meta.id.clone(),
            kind,
            root,
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

    /// Looks at the metadata without copying it (the reconciler's pass over every
    /// object).
    pub(in crate::store) fn with_meta<T>(&self, f: impl FnOnce(&DiskMeta) -> T) -> T {
        f(&self.meta.lock())
    }

    /// Whether the disk is revoked (without copying the reason).
    pub fn is_revoked(&self) -> bool {
        self.revoked.read().is_some()
    }

    /// The object's resource group and location.
    pub fn placement(&self) -> crate::store::arm::Placement {
        self.meta.lock().placement.clone()
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

    /// Bytes its data file or deltas occupy (sparse files use less than their size),
    /// shared ones included.
    pub fn allocated_bytes(&self) -> u64 {
        self.data_files()
            .iter()
            .map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
            .sum()
    }

    /// The file a disk writes to: `disks/ID/data`, or its top delta once it has deltas.
    pub(super) fn top_path(&self) -> PathBuf {
        top_path(&self.root, &self.dir(), &self.meta.lock())
    }

    /// Every file its data is in, bottom first.
    pub(super) fn data_files(&self) -> Vec<PathBuf> {
        let m = self.meta.lock();
        if m.stack.is_empty() {
            return vec![self.dir().join(DATA_FILE)];
        }
        m.stack.iter().map(|d| delta_path(&self.root, d)).collect()
    }

    /// Entries in the in-memory index of its deltas while it is open (None: not
    /// open, or a disk with one delta, which needs no index).
    pub fn index_entries(&self) -> Option<usize> {
        let u = self.unlocked.read().clone()?;
        u.layered.as_ref().map(|l| l.index_runs())
    }

    /// Delta ids, bottom first (empty: a disk with only `disks/ID/data`).
    pub fn stack(&self) -> Vec<String> {
        self.meta.lock().stack.clone()
    }

    /// Refuses a change to a snapshot or image.
    pub(super) fn check_writable(&self) -> Result<()> {
        if self.kind.read_only() {
            return Err(StoreError::ReadOnly {
                kind: self.kind,
                name: self.name(),
            });
        }
        Ok(())
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
        let json = next.to_json();
        super::reserve::write_atomic(&self.root, &path, &json)
            .map_err(|e| StoreError::io(format!("updating {}", path.display()), e))?;
        *meta = next;
        Ok(())
    }

    /// Reconciles the backing file with the recorded size after a crash.
    pub(super) fn reconcile(&self) -> std::io::Result<()> {
        if self.corrupt.is_some() {
            return Ok(());
        }
        if self.kind.read_only() {
            return Ok(());
        }
        self.recover_moved_data()?;
        self.recover_rekey_journal()?;
        let path = self.top_path();
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

    /// Deleted, but kept alive by open handles.
    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }

    pub(super) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    pub(super) fn data_path(dir: &Path) -> PathBuf {
        dir.join(DATA_FILE)
    }

    /// Finishes moving `disks/ID/data` to its delta (a crash between the metadata
    /// naming the delta and the rename; see `Store::make_layered`).
    fn recover_moved_data(&self) -> std::io::Result<()> {
        let stack = self.stack();
        let [only] = stack.as_slice() else {
            return Ok(());
        };
        let old = self.dir().join(DATA_FILE);
        let new = delta_path(&self.root, only);
        if !new.exists() && old.exists() {
            log::info!(
                "disk '{}': finishing the move of its data to {}",
                self.name(),
                new.display()
            );
            std::fs::rename(&old, &new)?;
            durable::sync_dir(new.parent().unwrap_or(Path::new(".")))?;
            durable::sync_dir(&self.dir())?;
        }
        Ok(())
    }
}

/// The writable (or, for a snapshot or image, topmost) data file of an object.
fn top_path(root: &Path, dir: &Path, meta: &DiskMeta) -> PathBuf {
    match meta.stack.last() {
        Some(d) => delta_path(root, d),
        None => dir.join(DATA_FILE),
    }
}

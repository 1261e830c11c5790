//! The data path of a disk: read, write, size changes, punch, allocate, seek and
//! sync, under the locks described on `Disk`.

use super::layered::From;
use super::units::{carve, hole_runs, round_down, round_up, units_in, Span, UNIT};
use super::{Disk, Unlocked, GRANULE_SHIFT, STRIPES};
use crate::crypto::DATA_UNIT;
use crate::store::delta::append_whiteouts;
use crate::store::error::{Result, StoreError};
use crate::store::spec::MAX_DISK_SIZE;
use parking_lot::{RwLockReadGuard, RwLockWriteGuard};
use std::fs::{File, OpenOptions};
use std::io;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

/// Whence for `Disk::seek`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SeekKind {
    Data,
    Hole,
}

/// The granule locks a request holds until it drops them.
pub(super) enum Guards<'a> {
    Shared(#[allow(dead_code)] Vec<RwLockReadGuard<'a, ()>>),
    Exclusive(#[allow(dead_code)] Vec<RwLockWriteGuard<'a, ()>>),
}

impl Disk {
    /// Locks the granules covering units [first, end).
    pub(super) fn lock_units(&self, first: u64, end: u64, exclusive: bool) -> Guards<'_> {
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
        self.read_with(off, len, |data| data.to_vec())
    }

    /// Reads up to `len` bytes at `off` (shorter at the end of the disk) into this
    /// thread's scratch buffer and hands them to `f` once the locks are dropped. The
    /// FUSE reply is written straight from the buffer: no allocation, no zero-filling
    /// and no copy per request.
    pub fn read_with<R>(&self, off: u64, len: usize, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        with_scratch(|buf| {
            let range = self.read_into(off, len, buf)?;
            Ok(f(&buf[range]))
        })
    }

    /// Decrypts the units `[off, off+len)` touches into `buf` (grown as needed, never
    /// shrunk); returns where in `buf` the requested bytes are.
    fn read_into(&self, off: u64, len: usize, buf: &mut Vec<u8>) -> Result<Range<usize>> {
        let _r = self.resize.read();
        let u = self.unlocked()?;
        let end = self.size().min(off.saturating_add(len as u64));
        let Some(span) = Span::new(off, end) else {
            return Ok(0..0);
        };
        let buf = scratch_slice(buf, span.unit_bytes());
        let _g = self.lock_units(span.first, span.last, false);
        // Every byte of `buf` is overwritten here (holes and past-EOF as zeros).
        u.read_stored(span.first, buf)
            .map_err(|e| self.io_err("read", e))?;
        let b = self.boundary.load(Ordering::Acquire);
        u.decrypt_stored(span.first, buf, b);
        Ok(span.head..span.head + span.len as usize)
    }

    pub(super) fn io_err(&self, what: &str, e: io::Error) -> StoreError {
        StoreError::io(format!("{what} on disk '{}'", self.name()), e)
    }

    /// Encrypts and writes `data` at `off`, read-modify-writing partial units.
    /// The caller holds `resize` (shared or exclusive).
    fn write_range(&self, u: &Unlocked, off: u64, data: &[u8]) -> Result<()> {
        let Some(span) = Span::new(off, off + data.len() as u64) else {
            return Ok(());
        };
        with_scratch(|buf| self.write_units(u, span, data, buf))
    }

    /// `write_range` with a scratch buffer to encrypt in.
    fn write_units(&self, u: &Unlocked, span: Span, data: &[u8], buf: &mut Vec<u8>) -> Result<()> {
        let buf = scratch_slice(buf, span.unit_bytes());
        let _g = self.lock_units(span.first, span.last, true);
        let b = self.boundary.load(Ordering::Acquire);
        let fill_unit = |unit: u64, buf: &mut [u8]| -> Result<()> {
            let slot = &mut buf[((unit - span.first) * UNIT) as usize..][..DATA_UNIT];
            u.read_stored(unit, slot)
                .map_err(|e| self.io_err("read", e))?;
            u.decrypt_stored(unit, slot, b);
            Ok(())
        };
        if span.partial_head() {
            fill_unit(span.first, buf)?;
        }
        if span.partial_tail() {
            fill_unit(span.last - 1, buf)?;
        }
        if span.head == 0 && data.len() == buf.len() {
            // Whole units: encrypted straight from the request, no copy first.
            u.encrypt_from(span.first, Some(data), buf, b);
        } else {
            buf[span.head..span.head + data.len()].copy_from_slice(data);
            u.encrypt(span.first, buf, b);
        }
        u.file
            .write_all_at(buf, span.start())
            .map_err(|e| self.io_err("write", e))?;
        u.note_written(span.first..span.last);
        Ok(())
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
        self.check_writable()?;
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
        self.check_writable()?;
        if new > MAX_DISK_SIZE {
            return Err(StoreError::TooLarge);
        }
        let _w = self.resize.write();
        let old = self.size();
        if new < old {
            // Deltas below must not show through if the disk grows again.
            self.white_out(units_in(new)..units_in(old))?;
        }
        if new > old && !old.is_multiple_of(UNIT) {
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
        OpenOptions::new().write(true).open(self.top_path())
    }

    /// Records durably that units `r` read as zeros whatever the deltas below hold
    /// (before the top's own data there is freed, so a crash never lets old data
    /// show through). Nothing to do for a disk without deltas below its top.
    fn white_out(&self, r: std::ops::Range<u64>) -> Result<()> {
        let Some(u) = self.unlocked.read().clone() else {
            // Not open: index the deltas for this one change.
            if self.stack().len() > 1 {
                let u = self.unlocked()?;
                return self.white_out_with(&u, r);
            }
            return Ok(());
        };
        self.white_out_with(&u, r)
    }

    fn white_out_with(&self, u: &Unlocked, r: std::ops::Range<u64>) -> Result<()> {
        let Some(l) = u.layered.as_ref().filter(|l| l.top) else {
            return Ok(());
        };
        // Lower data in `r` that no whiteout of the top hides yet.
        let hide: Vec<_> = crate::store::extents::RangeSet::from_ranges(l.lower_data(r))
            .subtract(&l.whiteouts.lock())
            .iter()
            .collect();
        if hide.is_empty() {
            return Ok(());
        }
        append_whiteouts(&l.whiteout_log, &hide).map_err(|e| self.io_err("whiteout", e))?;
        let mut wh = l.whiteouts.lock();
        for h in hide {
            wh.insert(h);
        }
        Ok(())
    }

    /// Returns `[off, off+len)` to zeros without changing the size (fallocate PUNCH_HOLE).
    pub fn punch(&self, off: u64, len: u64) -> Result<()> {
        self.check_writable()?;
        let _r = self.resize.read();
        let size = self.size();
        let end = off.saturating_add(len).min(size);
        if off >= end {
            return Ok(());
        }
        let c = carve(off, end, size);
        let u = self.unlocked()?;
        if !c.whole.is_empty() {
            let units = c.whole.start / UNIT..c.whole.end / UNIT;
            let _g = self.lock_units(units.start, units.end, true);
            self.white_out_with(&u, units.clone())?;
            punch_file(&u.file, c.whole.start, c.whole.end - c.whole.start)
                .map_err(|e| self.io_err("punch", e))?;
            if let Some(l) = u.layered.as_ref().filter(|l| l.top) {
                l.written.lock().remove(units);
            }
        }
        for part in [c.head, c.tail] {
            if !part.is_empty() {
                self.write_range(&u, part.start, &vec![0u8; (part.end - part.start) as usize])?;
            }
        }
        self.set_mtime(SystemTime::now());
        Ok(())
    }

    /// fallocate ZERO_RANGE: zeros, growing the disk unless `keep_size`.
    pub fn zero_range(&self, off: u64, len: u64, keep_size: bool) -> Result<()> {
        self.check_writable()?;
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
        self.check_writable()?;
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
            let (a, b) = (round_down(off), round_up(end.min(target)));
            // Over deltas, reserved (zero) blocks in the top would read as holes and
            // let the data below show through; they are reserved only without deltas.
            if a < b && u.layered.is_none() {
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
        if let Some(l) = &u.layered {
            return seek_layered(l, off, size, kind).ok_or_else(nxio);
        }
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
        // Not under `unlocked`: a revocation need not wait for the fsync.
        let u = self.unlocked.read().clone();
        if let Some(u) = u {
            u.file.sync_data().map_err(|e| self.io_err("fsync", e))?;
        }
        self.persist_size()
    }
}

/// Largest scratch buffer a thread keeps between requests (a FUSE request is at most
/// 1 MiB plus the partial units around it); a bigger one is freed after use.
const SCRATCH_KEEP: usize = 4 << 20;

thread_local! {
    static SCRATCH: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` with this thread's scratch buffer. Taken out of the slot while in use, so
/// a nested call gets a fresh one instead of a panic.
fn with_scratch<R>(f: impl FnOnce(&mut Vec<u8>) -> R) -> R {
    let mut buf = SCRATCH.take();
    let r = f(&mut buf);
    if buf.capacity() <= SCRATCH_KEEP {
        SCRATCH.set(buf);
    }
    r
}

/// The first `n` bytes of `buf`, growing it (zero-filled once) when it is shorter;
/// the bytes hold whatever the last request left, so callers overwrite them all.
fn scratch_slice(buf: &mut Vec<u8>, n: usize) -> &mut [u8] {
    if buf.len() < n {
        buf.resize(n, 0);
    }
    &mut buf[..n]
}

/// SEEK_DATA / SEEK_HOLE over the index of a layered object, in bounded steps.
fn seek_layered(l: &super::layered::Layered, off: u64, size: u64, kind: SeekKind) -> Option<u64> {
    const STEP: u64 = 1 << 20;
    let end = units_in(size);
    let mut pos = off / UNIT;
    while pos < end {
        let stop = (pos + STEP).min(end);
        for (r, from) in l.resolve(pos..stop) {
            let data = from != From::Zero;
            match kind {
                SeekKind::Data if data => return Some((r.start * UNIT).max(off)),
                SeekKind::Hole if !data => return Some((r.start * UNIT).max(off).min(size)),
                _ => {}
            }
        }
        pos = stop;
    }
    match kind {
        SeekKind::Data => None,
        SeekKind::Hole => Some(size),
    }
}

/// Writes whole units at `off`, keeping all-zero units as holes (punched, not
/// written), so rewriting a chunk never allocates what was sparse.
pub(super) fn write_sparse(f: &File, buf: &[u8], off: u64) -> io::Result<()> {
    for (r, data) in hole_runs(buf) {
        if data {
            f.write_all_at(&buf[r.clone()], off + r.start as u64)?;
        } else {
            punch_file(f, off + r.start as u64, r.len() as u64)?;
        }
    }
    Ok(())
}

/// pread that fills `buf`, leaving zeros past the end of the file.
pub(super) fn read_full(f: &File, buf: &mut [u8], off: u64) -> io::Result<()> {
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
pub(in crate::store) fn punch_file(f: &File, off: u64, len: u64) -> io::Result<()> {
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

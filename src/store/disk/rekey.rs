//! A disk's rekey: re-encrypting its data under fresh DEKs, online, chunk by chunk,
//! with a journal that undoes a chunk a crash interrupted. `store/rekey.rs` starts,
//! resumes and reports rekeys.

use super::io::{read_full, write_sparse};
use super::units::{is_zero, units_in, UNIT};
use super::Disk;
use crate::crypto::DATA_UNIT;
use crate::durable;
use crate::store::error::{Result, StoreError};
use crate::store::meta::Rekey;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

pub const JOURNAL_FILE: &str = "rekey.journal";
/// Units re-encrypted per step of a rekey (1 MiB): 16 lock granules, so I/O elsewhere
/// on the disk goes on.
const REKEY_CHUNK: u64 = 256;
/// Size of a rekey journal record: header, one chunk, hash.
pub(in crate::store) const REKEY_JOURNAL_BYTES: u64 = 16 + REKEY_CHUNK * UNIT + 32;

impl Disk {
    /// Starts a rekey: records the new layers (boundary 0) and gives open handles
    /// the new ciphers too.
    pub(in crate::store) fn begin_rekey(&self, rk: Rekey) -> Result<()> {
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
            .map(|r| (r.boundary, units_in(self.size())))
    }

    fn journal_path(&self) -> PathBuf {
        self.dir().join(JOURNAL_FILE)
    }

    /// Re-encrypts the disk from the recorded boundary to the end, chunk by chunk,
    /// while I/O goes on elsewhere; then makes the new layers the disk's layers.
    /// Each chunk: old ciphertext to the journal (fsync), new ciphertext in place
    /// (fdatasync), boundary in metadata (atomic). A crash mid-chunk is undone from
    /// the journal at the next open; `progress(done, total)` is called per chunk.
    pub(in crate::store) fn run_rekey(
        &self,
        progress: &dyn Fn(u64, u64),
        stop: &AtomicBool,
    ) -> Result<()> {
        let journal = self.journal_path();
        // One unwrap for the whole run (not one audited unwrap per chunk).
        let u = self.unlocked()?;
        loop {
            let _r = self.resize.read();
            let units = units_in(self.size());
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
            let mut buf = vec![0u8; ((e - b) * UNIT) as usize];
            read_full(&u.file, &mut buf, b * UNIT).map_err(|e| self.io_err("rekey read", e))?;
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
            write_sparse(&u.file, &buf, b * UNIT)
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
                // The new DEKs are the disk's own, under their own id.
                m.key_check_id = r.key_check_id;
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
    pub(super) fn recover_rekey_journal(&self) -> io::Result<()> {
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
                let f = OpenOptions::new().write(true).open(self.top_path())?;
                write_sparse(&f, data, first * UNIT)?;
                f.sync_data()?;
            }
        }
        std::fs::remove_file(&journal)
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
    (data.len() as u64 == count * UNIT).then_some((first, data))
}

/// The first unit at or after `unit` (below `units`) that holds data, or `units`.
fn next_data_unit(f: &File, unit: u64, units: u64) -> io::Result<u64> {
    // Safe because: the fd is valid while `f` lives; lseek takes no pointers.
    let r = unsafe { libc::lseek(f.as_raw_fd(), (unit * UNIT) as i64, libc::SEEK_DATA) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENXIO) => Ok(units),
            // No SEEK_DATA here: treat everything as data.
            Some(libc::EINVAL) => Ok(unit),
            _ => Err(e),
        };
    }
    Ok((r as u64 / UNIT).clamp(unit, units))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_torn_journal_record_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(JOURNAL_FILE);
        let data: Vec<u8> = (0..2 * DATA_UNIT).map(|i| i as u8).collect();
        write_journal(&path, 7, &data).unwrap();
        let rec = std::fs::read(&path).unwrap();
        assert_eq!(rec.len(), 16 + data.len() + 32);
        assert_eq!(parse_journal(&rec), Some((7, &data[..])));
        assert_eq!(parse_journal(&rec[..rec.len() - 1]), None);
        let mut flipped = rec.clone();
        flipped[20] ^= 1;
        assert_eq!(parse_journal(&flipped), None);
        assert_eq!(parse_journal(&[]), None);
    }
}

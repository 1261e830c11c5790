//! Delta files: the layers of layered disks, snapshots and images (docs/format.md).
//!
//! `STORE/deltas/ID` holds ciphertext at plaintext offsets, sparse, like a disk's
//! data file. `STORE/deltas/ID.whiteouts` lists unit ranges the delta zeroes over the
//! deltas below it (discards and shrinks over shared data). A delta is written only
//! while it is the top of exactly one disk; once a snapshot or image shares it, it
//! never changes again.

use super::extents::RangeSet;
const UNIT: u64 = crate::crypto::DATA_UNIT as u64;
use crate::durable;
use sha2::{Digest, Sha256};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const DELTAS_DIR: &str = "deltas";
const WHITEOUT_SUFFIX: &str = ".whiteouts";
/// start (u64 LE), count (u64 LE), check (first 8 bytes of SHA-256 of the 16 before).
const RECORD: usize = 24;

pub fn delta_path(root: &Path, id: &str) -> PathBuf {
    root.join(DELTAS_DIR).join(id)
}

pub fn whiteout_path(root: &Path, id: &str) -> PathBuf {
    root.join(DELTAS_DIR).join(format!("{id}{WHITEOUT_SUFFIX}"))
}

/// Whether `name` in `deltas/` is a whiteout log, and of which delta.
pub fn whiteout_owner(name: &str) -> Option<&str> {
    name.strip_suffix(WHITEOUT_SUFFIX)
}

fn record(r: &Range<u64>) -> [u8; RECORD] {
    let mut rec = [0u8; RECORD];
    rec[..8].copy_from_slice(&r.start.to_le_bytes());
    rec[8..16].copy_from_slice(&(r.end - r.start).to_le_bytes());
    let h = Sha256::digest(&rec[..16]);
    rec[16..].copy_from_slice(&h[..8]);
    rec
}

/// The whiteouts in a log and the length of its valid prefix. A record that is torn
/// or fails its check ends the log (a crash mid-append).
pub fn parse_whiteouts(bytes: &[u8]) -> (RangeSet, usize) {
    let mut set = RangeSet::new();
    let mut valid = 0;
    for rec in bytes.chunks_exact(RECORD) {
        let start = u64::from_le_bytes(rec[..8].try_into().expect("8 bytes"));
        let count = u64::from_le_bytes(rec[8..16].try_into().expect("8 bytes"));
        let Some(end) = start.checked_add(count) else {
            break;
        };
        if record(&(start..end)) != rec {
            break;
        }
        set.insert(start..end);
        valid += RECORD;
    }
    (set, valid)
}

pub fn read_whiteouts(path: &Path) -> io::Result<RangeSet> {
    match std::fs::read(path) {
        Ok(b) => Ok(parse_whiteouts(&b).0),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(RangeSet::new()),
        Err(e) => Err(e),
    }
}

/// Appends whiteout records durably (fdatasync, and the directory on creation),
/// first cutting off a torn tail so the new records are read.
pub fn append_whiteouts(path: &Path, ranges: &[Range<u64>]) -> io::Result<()> {
    if ranges.is_empty() {
        return Ok(());
    }
    let existed = path.exists();
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut bytes)?;
    let (_, valid) = parse_whiteouts(&bytes);
    let mut out = Vec::with_capacity(ranges.len() * RECORD);
    for r in ranges.iter().filter(|r| !r.is_empty()) {
        out.extend_from_slice(&record(r));
    }
    let result = f
        .write_all_at(&out, valid as u64)
        .and_then(|()| f.set_len((valid + out.len()) as u64))
        .and_then(|()| f.sync_data());
    if let Err(e) = result {
        // Leave the log as it was (a full file system must not tear it).
        let _ = f.set_len(valid as u64);
        return Err(e);
    }
    if !existed {
        if let Some(dir) = path.parent() {
            durable::sync_dir(dir)?;
        }
    }
    let _ = f.flush();
    Ok(())
}

/// The units of `f` in data extents (SEEK_DATA / SEEK_HOLE), rounded out to units.
/// Its cost grows with the number of extents, not the file's size.
pub fn scan_data(f: &File) -> io::Result<RangeSet> {
    let len = f.metadata()?.len();
    let mut set = RangeSet::new();
    let mut pos: u64 = 0;
    while pos < len {
        // Safe because: the fd is valid while `f` lives; lseek takes no pointers.
        let d = unsafe { libc::lseek(f.as_raw_fd(), pos as i64, libc::SEEK_DATA) };
        if d < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        // Safe because: as above.
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        if h < 0 {
            return Err(io::Error::last_os_error());
        }
        let (d, h) = (d as u64, (h as u64).min(len));
        if h <= d {
            // The data at `d` was punched between the two seeks (a reclaim running
            // beside a merge): look on past it, never stop short of later data.
            pos = d + 1;
            continue;
        }
        set.insert(d / UNIT..h.div_ceil(UNIT));
        pos = h;
    }
    Ok(set)
}

/// Creates an empty delta of `len` bytes (sparse), durable with its directory entry.
pub fn create_delta(path: &Path, len: u64) -> io::Result<File> {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)?;
    f.set_len(len)?;
    f.sync_all()?;
    if let Some(dir) = path.parent() {
        durable::sync_dir(dir)?;
    }
    Ok(f)
}

/// Removes a delta and its whiteout log.
pub fn remove_delta(root: &Path, id: &str) -> io::Result<()> {
    for p in [delta_path(root, id), whiteout_path(root, id)] {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    #[test]
    fn whiteout_log_round_trips_and_drops_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.whiteouts");
        assert!(read_whiteouts(&p).unwrap().is_empty());
        append_whiteouts(&p, &[3..7, 100..101]).unwrap();
        append_whiteouts(&p, &[(1 << 34) - 1..1 << 34]).unwrap();
        let want = RangeSet::from_ranges([3..7, 100..101, (1 << 34) - 1..1 << 34]);
        assert_eq!(read_whiteouts(&p).unwrap(), want);
        // A torn append: half a record, then a record with a bad check.
        let mut bytes = std::fs::read(&p).unwrap();
        let good = bytes.len();
        bytes.extend_from_slice(&record(&(50..60))[..10]);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_whiteouts(&p).unwrap(), want);
        let mut bad = record(&(50..60));
        bad[3] ^= 1;
        bytes.truncate(good);
        bytes.extend_from_slice(&bad);
        std::fs::write(&p, &bytes).unwrap();
        assert_eq!(read_whiteouts(&p).unwrap(), want);
        // The next append replaces the torn tail.
        append_whiteouts(&p, &[200..210]).unwrap();
        let mut w = want.clone();
        w.insert(200..210);
        assert_eq!(read_whiteouts(&p).unwrap(), w);
        assert_eq!(std::fs::metadata(&p).unwrap().len() as usize, good + RECORD);
    }

    #[test]
    fn scan_finds_written_units_of_a_sparse_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d");
        let f = create_delta(&p, 1 << 30).unwrap();
        assert!(scan_data(&f).unwrap().is_empty());
        f.write_all_at(&[1u8; 4096], 5 * 4096).unwrap();
        f.write_all_at(&[1u8; 8192], 1000 * 4096).unwrap();
        let s = scan_data(&f).unwrap();
        // File systems report data at their block size or larger: a superset.
        assert!(s.contains(5) && s.contains(1000) && s.contains(1001));
        assert!(!s.contains(500) && !s.contains(200_000));
        assert!(create_delta(&p, 0).is_err(), "never overwrites a delta");
    }
}

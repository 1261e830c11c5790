//! The index of a layered object: which delta holds each unit, answered from memory
//! in one lookup whatever the number of deltas (no walk down the stack).
//!
//! A unit's content is found top down: the first delta whose unit holds ciphertext
//! (is not all zero) gives it; a delta's whiteout over the unit makes it zero; with
//! neither, the unit is a hole. The writable top delta of a disk is tracked apart
//! (`written`, `whiteouts`), since only it changes; the lower deltas are merged into
//! one `ExtentMap` when the object is unlocked.
//!
//! Memory, only while the object is open: one `ExtentMap` entry (about 48 bytes with
//! the B-tree's overhead) per run of units owned by the same delta, one `RangeSet`
//! entry (about 32 bytes) per run of each lower delta's extents and whiteouts (kept
//! for the rare walk below a unit that holds zeros), and one per run of the top's
//! written units and whiteouts. It grows with the number of runs written, never with
//! the disk's size: a sparse 64 TiB disk with a thousand written runs under 50
//! snapshots needs well under a MiB. The worst case, every other unit written in
//! another delta, is about 100 bytes per written unit (a fully fragmented 1 TiB of
//! data: about 25 GiB; rekeying the disk collapses its stack to one delta and the
//! index to nothing). `Disk::index_entries` reports the entries (`indexEntries` in
//! `disk show`). With one delta a disk has no index at all.

use super::super::delta::{read_whiteouts, scan_data, whiteout_path};
use super::super::extents::{ExtentMap, RangeSet};
use super::io::read_full;
use super::units::is_zero;
use parking_lot::Mutex;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// What a lower delta says of a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::store) enum Src {
    /// Lower delta `i` (index in `Layered::lower`) holds it.
    Delta(u32),
    /// A whiteout: it reads as zeros.
    Whiteout,
}

/// Where a range of units is read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::store) enum From {
    Top,
    Lower(u32),
    Zero,
}

/// The lower deltas of an object and the index over them, plus the top's own
/// written units and whiteouts when the object has a writable top.
pub(in crate::store) struct Layered {
    pub lower: Vec<File>,
    pub lower_ids: Vec<String>,
    /// Each lower delta's data units (as the file system reports them, possibly in
    /// blocks bigger than a unit) and whiteouts, for the rare walk down the stack.
    pub sets: Vec<(RangeSet, RangeSet)>,
    pub map: ExtentMap<Src>,
    /// Whether the object's file is a writable top above `lower` (a disk).
    pub top: bool,
    /// Units of the top that may hold ciphertext (a superset is harmless).
    pub written: Mutex<RangeSet>,
    /// Units the top whites out, and its whiteout log.
    pub whiteouts: Mutex<RangeSet>,
    pub whiteout_log: PathBuf,
}

/// Adds delta `i` (its data units and whiteouts) on top of `map`.
pub(in crate::store) fn overlay(map: &mut ExtentMap<Src>, i: u32, data: &RangeSet, wh: &RangeSet) {
    for r in wh.iter() {
        map.assign(r, Src::Whiteout);
    }
    for r in data.iter() {
        map.assign(r, Src::Delta(i));
    }
}

impl Layered {
    /// Opens and indexes `lower` (ids, bottom first) under `root`; `top` is the
    /// object's writable delta if it has one (`top_id`, its open file).
    pub fn build(
        root: &Path,
        lower_ids: &[String],
        top: Option<(&str, &File)>,
    ) -> io::Result<Layered> {
        let mut lower = Vec::with_capacity(lower_ids.len());
        let mut sets = Vec::with_capacity(lower_ids.len());
        let mut map = ExtentMap::new();
        for (i, id) in lower_ids.iter().enumerate() {
            let f = open_ro(&super::super::delta::delta_path(root, id))?;
            let data = scan_data(&f)?;
            let wh = read_whiteouts(&whiteout_path(root, id))?;
            overlay(&mut map, i as u32, &data, &wh);
            lower.push(f);
            sets.push((data, wh));
        }
        let (written, whiteouts, log, is_top) = match top {
            Some((id, f)) => (
                scan_data(f)?,
                read_whiteouts(&whiteout_path(root, id))?,
                whiteout_path(root, id),
                true,
            ),
            None => (RangeSet::new(), RangeSet::new(), PathBuf::new(), false),
        };
        Ok(Layered {
            lower,
            lower_ids: lower_ids.to_vec(),
            sets,
            map,
            top: is_top,
            written: Mutex::new(written),
            whiteouts: Mutex::new(whiteouts),
            whiteout_log: log,
        })
    }

    /// `r` cut into pieces by where each is read from, in order, covering all of `r`.
    pub fn resolve(&self, r: Range<u64>) -> Vec<(Range<u64>, From)> {
        let mut out: Vec<(Range<u64>, From)> = Vec::new();
        let mut push = |r: Range<u64>, f: From| {
            if r.is_empty() {
                return;
            }
            match out.last_mut() {
                Some((last, lf)) if *lf == f && last.end == r.start => last.end = r.end,
                _ => out.push((r, f)),
            }
        };
        let lower = |r: Range<u64>, push: &mut dyn FnMut(Range<u64>, From)| {
            for (s, v) in self.map.segments(r) {
                match v {
                    Some(Src::Delta(i)) => push(s, From::Lower(i)),
                    _ => push(s, From::Zero),
                }
            }
        };
        if !self.top {
            lower(r, &mut push);
            return out;
        }
        let written = self.written.lock();
        let whiteouts = self.whiteouts.lock();
        let mut pos = r.start;
        let gap = |a: u64, b: u64, push: &mut dyn FnMut(Range<u64>, From)| {
            let mut p = a;
            for w in whiteouts.overlap(a..b) {
                lower(p..w.start, push);
                push(w.clone(), From::Zero);
                p = w.end;
            }
            lower(p..b, push);
        };
        for w in written.overlap(r.clone()) {
            gap(pos, w.start, &mut push);
            push(w.clone(), From::Top);
            pos = w.end;
        }
        gap(pos, r.end, &mut push);
        out
    }

    /// Reads the stored bytes (ciphertext, or zeros for holes) of the units from
    /// `first` into `buf`, each piece from the file that holds it.
    pub fn read(&self, top: &File, first: u64, buf: &mut [u8]) -> io::Result<()> {
        let unit = crate::crypto::DATA_UNIT as u64;
        let units = buf.len() as u64 / unit;
        for (r, from) in self.resolve(first..first + units) {
            let slot =
                &mut buf[((r.start - first) * unit) as usize..((r.end - first) * unit) as usize];
            let below = match from {
                From::Top => {
                    read_full(top, slot, r.start * unit)?;
                    self.lower.len()
                }
                From::Lower(i) => {
                    read_full(&self.lower[i as usize], slot, r.start * unit)?;
                    i as usize
                }
                From::Zero => {
                    slot.fill(0);
                    continue;
                }
            };
            // File systems report data in blocks that may be bigger than a unit: a
            // unit inside a reported extent that holds no ciphertext is not this
            // delta's, and the deltas below decide it.
            for (k, u) in slot.chunks_exact_mut(unit as usize).enumerate() {
                if is_zero(u) {
                    self.read_below(r.start + k as u64, below, from == From::Top, u)?;
                }
            }
        }
        Ok(())
    }

    /// Unit `n`, which the delta at `level` (`lower.len()` for the top) holds no
    /// ciphertext for: that delta's whiteout, or the first delta below it with
    /// ciphertext or a whiteout, decides it.
    fn read_below(&self, n: u64, level: usize, top: bool, out: &mut [u8]) -> io::Result<()> {
        let unit = crate::crypto::DATA_UNIT as u64;
        let own_whiteout = if top {
            self.whiteouts.lock().contains(n)
        } else {
            self.sets[level].1.contains(n)
        };
        if own_whiteout {
            return Ok(());
        }
        for j in (0..level).rev() {
            let (data, wh) = &self.sets[j];
            if data.contains(n) {
                read_full(&self.lower[j], out, n * unit)?;
                if !is_zero(out) {
                    return Ok(());
                }
            }
            if wh.contains(n) {
                break;
            }
        }
        out.fill(0);
        Ok(())
    }

    /// The units in `r` a lower delta holds ciphertext for (what a whiteout must hide).
    pub fn lower_data(&self, r: Range<u64>) -> Vec<Range<u64>> {
        self.map
            .segments(r)
            .into_iter()
            .filter(|(_, v)| matches!(v, Some(Src::Delta(_))))
            .map(|(r, _)| r)
            .collect()
    }

    /// Memory the index takes, in map entries.
    pub fn index_runs(&self) -> usize {
        let sets: usize = self.sets.iter().map(|(d, w)| d.runs() + w.runs()).sum();
        self.map.runs() + sets + self.written.lock().runs() + self.whiteouts.lock().runs()
    }
}

pub(in crate::store) fn open_ro(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
}

impl super::Disk {
    /// Moves a disk's data from `disks/ID/data` to the delta `deltas/ID`, so that
    /// snapshots can share it (formatVersion 2). The metadata names the delta first;
    /// a crash before the rename is finished at the next open (`recover_moved_data`).
    /// Open handles keep their file (a rename keeps the inode).
    pub(in crate::store) fn make_layered(&self) -> crate::store::Result<()> {
        use crate::store::meta::META_VERSION_LAYERED;
        self.check_writable()?;
        let _w = self.resize.write();
        if !self.stack().is_empty() {
            return Ok(());
        }
        let id = self.id.clone();
        let old = self.dir().join(super::DATA_FILE);
        let new = super::delta_path(&self.root, &id);
        let io = |e| {
            crate::store::StoreError::io(format!("moving the data of disk '{}'", self.name()), e)
        };
        self.update_meta(|m| {
            m.format_version = META_VERSION_LAYERED;
            m.stack = vec![id.clone()];
        })?;
        crate::fault::point("layered.meta");
        if let Err(e) = std::fs::rename(&old, &new) {
            // Nothing moved: name the data file again.
            let _ = self.update_meta(|m| {
                m.format_version = crate::store::meta::META_VERSION;
                m.stack.clear();
            });
            return Err(io(e));
        }
        crate::durable::sync_dir(new.parent().unwrap_or(Path::new(".")))
            .and_then(|()| crate::durable::sync_dir(&self.dir()))
            .map_err(io)?;
        Ok(())
    }

    /// Freezes the disk's writable delta and gives it `new_id` (an empty delta the
    /// caller made) as its new one: the point-in-time cut of a snapshot. Writes
    /// acknowledged before the call are in the frozen delta, later ones in the new.
    /// I/O waits only for a data sync of what is dirty and one metadata commit.
    /// `prepare` runs under the quiesce with the metadata of the cut (its stack is the
    /// frozen one) and writes the snapshot's own metadata.
    pub(in crate::store) fn push_delta(
        &self,
        new_id: &str,
        prepare: impl FnOnce(&crate::store::meta::DiskMeta) -> crate::store::Result<()>,
    ) -> crate::store::Result<()> {
        use crate::store::delta::{delta_path, whiteout_path};
        use std::sync::Arc;
        self.check_writable()?;
        let io = |what: &str, e| {
            crate::store::StoreError::io(format!("{what} of disk '{}'", self.name()), e)
        };
        // Most dirty data goes out before I/O is held.
        // Not under the read guard: a revocation must not wait for the sync.
        let u = self.unlocked.read().clone();
        if let Some(u) = u {
            u.file.sync_data().map_err(|e| io("syncing the data", e))?;
        }
        let _n = self.open_count.lock();
        let _w = self.resize.write();
        let m = self.meta();
        if m.stack.is_empty() {
            return Err(crate::store::StoreError::InvalidArgument(
                "internal: a disk gets its first delta before it is snapshotted".into(),
            ));
        }
        let new_path = delta_path(&self.root, new_id);
        let new_file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&new_path)
            .map_err(|e| io("opening the new delta", e))?;
        let want = super::units::round_up(m.size_bytes);
        if new_file.metadata().map(|md| md.len()).unwrap_or(0) != want {
            new_file
                .set_len(want)
                .and_then(|()| new_file.sync_all())
                .map_err(|e| io("sizing the new delta", e))?;
        }
        // The new index is built before the commit, so nothing can fail after it.
        let unlocked = self.unlocked.read().clone();
        let next = match &unlocked {
            Some(u) => {
                u.file.sync_data().map_err(|e| io("syncing the data", e))?;
                let top_id = m.stack.last().expect("stack checked non-empty");
                let (mut files, mut ids, mut map, mut sets) = match &u.layered {
                    Some(l) => (
                        l.lower
                            .iter()
                            .map(|f| f.try_clone())
                            .collect::<io::Result<Vec<_>>>()
                            .map_err(|e| io("indexing", e))?,
                        l.lower_ids.clone(),
                        l.map.clone(),
                        l.sets.clone(),
                    ),
                    None => (vec![], vec![], ExtentMap::new(), vec![]),
                };
                let (data, wh) = match &u.layered {
                    Some(l) => (l.written.lock().clone(), l.whiteouts.lock().clone()),
                    None => (
                        scan_data(&u.file).map_err(|e| io("indexing", e))?,
                        read_whiteouts(&whiteout_path(&self.root, top_id))
                            .map_err(|e| io("indexing", e))?,
                    ),
                };
                overlay(&mut map, files.len() as u32, &data, &wh);
                sets.push((data, wh));
                files
                    .push(open_ro(&delta_path(&self.root, top_id)).map_err(|e| io("indexing", e))?);
                ids.push(top_id.clone());
                Some(super::Unlocked {
                    file: new_file,
                    layers: u.layers.clone(),
                    next: u.next.clone(),
                    layered: Some(Layered {
                        lower: files,
                        lower_ids: ids,
                        sets,
                        map,
                        top: true,
                        written: Mutex::new(RangeSet::new()),
                        whiteouts: Mutex::new(RangeSet::new()),
                        whiteout_log: whiteout_path(&self.root, new_id),
                    }),
                })
            }
            None => None,
        };
        prepare(&m)?;
        crate::fault::point("snapshot.prepared");
        self.update_meta(|m| m.stack.push(new_id.to_string()))?;
        crate::fault::point("snapshot.committed");
        if let Some(n) = next {
            *self.unlocked.write() = Some(Arc::new(n));
        }
        Ok(())
    }
}

impl super::Disk {
    /// Bytes of the disk's content that lower deltas hold (what `materialize` copies).
    pub(in crate::store) fn lower_bytes(&self) -> crate::store::Result<u64> {
        let u = self.unlocked()?;
        let Some(l) = u.layered.as_ref().filter(|l| l.top) else {
            return Ok(0);
        };
        let units = super::units::units_in(self.size());
        // The top's own units count too: some may hold no ciphertext and read from
        // below (file systems report data in blocks bigger than a unit). An upper
        // bound, as a space check wants.
        Ok(l.resolve(0..units)
            .iter()
            .filter(|(_, f)| *f != From::Zero)
            .map(|(r, _)| (r.end - r.start) * super::units::UNIT)
            .sum())
    }

    /// Gives a disk with deltas below its top all of its data in the top: the
    /// ciphertext of every unit a lower delta holds is copied up (same DEKs, same
    /// units, so the content does not change, and a crash part-way loses nothing),
    /// then the metadata drops the lower deltas in one atomic write. Snapshots and
    /// images keep theirs. Returns the deltas dropped. Runs under the store's `ns`
    /// lock, so no snapshot freezes the top meanwhile.
    pub(in crate::store) fn materialize(&self) -> crate::store::Result<Vec<String>> {
        use super::units::{is_zero, units_in, UNIT};
        use std::os::unix::fs::FileExt;
        use std::sync::Arc;
        self.check_writable()?;
        let u = self.unlocked()?;
        let Some(l) = u.layered.as_ref().filter(|l| l.top) else {
            return Ok(vec![]);
        };
        const CHUNK: u64 = 256;
        let mut b = 0;
        loop {
            let _r = self.resize.read();
            let units = units_in(self.size());
            if b >= units {
                break;
            }
            let e = (b + CHUNK).min(units);
            let _g = self.lock_units(b, e, true);
            if l.resolve(b..e).iter().all(|(_, f)| *f == From::Zero) {
                b = e;
                continue;
            }
            // What the disk reads (ciphertext, resolved through the stack) against
            // what its top holds: every unit that differs comes from below.
            let io = |e| self.io_err("copying shared data", e);
            let len = ((e - b) * UNIT) as usize;
            let (mut want, mut own) = (vec![0u8; len], vec![0u8; len]);
            l.read(&u.file, b, &mut want).map_err(io)?;
            read_full(&u.file, &mut own, b * UNIT).map_err(io)?;
            let chunks = want
                .chunks_exact(UNIT as usize)
                .zip(own.chunks_exact(UNIT as usize));
            for (k, (w, o)) in chunks.enumerate() {
                if w != o && !is_zero(w) {
                    let n = b + k as u64;
                    u.file.write_all_at(w, n * UNIT).map_err(io)?;
                    u.note_written(n..n + 1);
                }
            }
            b = e;
        }
        u.file
            .sync_data()
            .map_err(|e| self.io_err("copying shared data", e))?;
        crate::fault::point("materialize.copied");
        let n = self.open_count.lock();
        let _w = self.resize.write();
        let stack = self.stack();
        let Some((top, lower)) = stack.split_last() else {
            return Ok(vec![]);
        };
        let lower = lower.to_vec();
        self.update_meta(|m| m.stack = vec![top.clone()])?;
        if *n > 0 {
            // The read guard must be gone before the write below (edition 2021 keeps
            // an `if let` scrutinee's temporaries to the end of the block).
            let cur = self.unlocked.read().clone();
            if let Some(cur) = cur {
                let file = cur
                    .file
                    .try_clone()
                    .map_err(|e| self.io_err("reopening", e))?;
                let next = super::Unlocked {
                    file,
                    layers: cur.layers.clone(),
                    next: cur.next.clone(),
                    layered: None,
                };
                *self.unlocked.write() = Some(Arc::new(next));
            }
        }
        Ok(lower)
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    fn layered(
        map: ExtentMap<Src>,
        top: bool,
        written: &[Range<u64>],
        wh: &[Range<u64>],
    ) -> Layered {
        Layered {
            lower: vec![],
            lower_ids: vec![],
            sets: vec![],
            map,
            top,
            written: Mutex::new(RangeSet::from_ranges(written.iter().cloned())),
            whiteouts: Mutex::new(RangeSet::from_ranges(wh.iter().cloned())),
            whiteout_log: PathBuf::new(),
        }
    }

    #[test]
    fn the_top_then_its_whiteouts_then_the_lower_map_decide() {
        // Lower: delta 0 holds 0..10, delta 1 holds 5..8 and whites out 8..9.
        let mut map = ExtentMap::new();
        overlay(
            &mut map,
            0,
            &RangeSet::from_ranges([0..10]),
            &RangeSet::new(),
        );
        overlay(
            &mut map,
            1,
            &RangeSet::from_ranges([5..8]),
            &RangeSet::from_ranges([8..9]),
        );
        let l = layered(map, true, &[2..3], &[3..4, 12..13]);
        assert_eq!(
            l.resolve(0..14),
            vec![
                (0..2, From::Lower(0)),
                (2..3, From::Top),
                (3..4, From::Zero),
                (4..5, From::Lower(0)),
                (5..8, From::Lower(1)),
                (8..9, From::Zero),
                (9..10, From::Lower(0)),
                (10..14, From::Zero),
            ]
        );
        // A top's data wins over its own whiteout (written after the discard).
        let l = layered(ExtentMap::new(), true, &[3..4], &[3..4]);
        assert_eq!(l.resolve(3..4), vec![(3..4, From::Top)]);
        // Without a writable top (a snapshot), only the map counts.
        let mut map = ExtentMap::new();
        overlay(
            &mut map,
            0,
            &RangeSet::from_ranges([1..2]),
            &RangeSet::new(),
        );
        let l = layered(map, false, &[0..5], &[]);
        assert_eq!(
            l.resolve(0..3),
            vec![
                (0..1, From::Zero),
                (1..2, From::Lower(0)),
                (2..3, From::Zero)
            ]
        );
    }

    #[test]
    fn a_delta_data_hides_its_own_whiteout_but_not_the_other_way() {
        let mut map = ExtentMap::new();
        overlay(
            &mut map,
            0,
            &RangeSet::from_ranges([0..4]),
            &RangeSet::from_ranges([2..6]),
        );
        assert_eq!(map.get(3), Some(Src::Delta(0)));
        assert_eq!(map.get(5), Some(Src::Whiteout));
        overlay(
            &mut map,
            1,
            &RangeSet::new(),
            &RangeSet::from_ranges([0..1]),
        );
        assert_eq!(map.get(0), Some(Src::Whiteout));
    }
}

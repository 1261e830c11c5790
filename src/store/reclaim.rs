//! Deleting snapshots and images, and the space reclaim that follows: what no object
//! reads any more is punched out of shared deltas, and unused deltas are removed.
//! `deltas/.gc` lists the deltas a delete may free, so a crash finishes the work at
//! the next open.

use super::delta::{
    delta_path, read_whiteouts, remove_delta, scan_data, whiteout_owner, whiteout_path,
};
use super::disk::layered::open_ro;
use super::disk::units::UNIT;
use super::extents::RangeSet;
use super::snapshots::COPYING;
use super::*;
use std::collections::{HashMap, HashSet};

const GC_FILE: &str = ".gc";

impl Store {
    /// Closes a handle of `obj`. The last close of a deleted object frees the space
    /// of deltas only it still read (if a store change is under way, the next open
    /// of the store does, from `.gc`).
    pub fn release(&self, obj: &Arc<Disk>) -> Result<()> {
        let r = obj.release();
        if obj.is_deleted() && obj.open_handles() == 0 {
            let stack = obj.stack();
            self.orphans.lock().retain(|d| !Arc::ptr_eq(d, obj));
            if !stack.is_empty() {
                self.reclaim.lock().extend(stack);
                self.reclaim_noted();
            }
        }
        r
    }

    /// `snapshot delete` and `image delete`.
    pub fn delete_object(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let ns = self.ns.lock();
        let r = self.delete_object_locked(kind, name);
        drop(ns);
        self.reclaim_noted();
        r
    }

    /// Records deltas whose space a delete may free (`deltas/.gc`), before it commits.
    pub(super) fn note_gc(&self, ids: &[String]) -> std::io::Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let _gc = self.gc_file.lock();
        let path = self.deltas_dir().join(GC_FILE);
        let mut all: Vec<String> = fs::read_to_string(&path)
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default();
        all.extend(ids.iter().cloned());
        all.sort();
        all.dedup();
        durable::write_atomic(&path, (all.join("\n") + "\n").as_bytes(), 0o600)
    }

    /// Deltas whose space deleting `obj` may free: those of its stack above the
    /// highest delta that another object has as its top. That object reads, in every
    /// delta at or below its top, at least what `obj` reads there, so nothing below
    /// can come free (in a chain of snapshots, only the deleted one's own delta).
    pub(super) fn reclaim_candidates(&self, obj: &Disk) -> Vec<String> {
        let stack = obj.stack();
        let mut floor = 0;
        for o in self.served() {
            if std::ptr::eq(&*o, obj) {
                continue;
            }
            let s = o.stack();
            if s.len() > floor && s.len() <= stack.len() && stack[..s.len()] == s[..] {
                floor = s.len();
            }
        }
        stack[floor..].to_vec()
    }

    /// Frees the space of the deltas a delete noted, after the delete has committed
    /// and released `Store::ns`. In a daemon the merge thread does it, so a delete
    /// returns at once and holds up no other command (writes to `.vault/command` are
    /// serialized by the kernel); without one (a CLI command on an unmounted store)
    /// it is done here. Punching runs while other objects are created, deleted, read
    /// and written: what an object reads of a delta only shrinks once nothing new is
    /// built on it, so units found dead stay dead.
    pub(super) fn reclaim_noted(&self) {
        if self.merges.background.load(Ordering::Acquire) {
            self.nudge_merges();
        } else {
            self.reclaim_queued();
        }
    }

    /// Frees what deletes queued (the caller runs no other reclaim or merge).
    pub(super) fn reclaim_queued(&self) {
        let ids = std::mem::take(&mut *self.reclaim.lock());
        if !ids.is_empty() {
            self.collect_garbage(&ids);
        }
    }

    /// Frees what no object can read any more in deltas `ids`: a delta no object
    /// uses is removed; in the others, units every user sees through a delta above
    /// are punched. Errors are logged (the space stays used, content is intact).
    pub(super) fn collect_garbage(&self, ids: &[String]) {
        let stacks: Vec<(Arc<Disk>, Vec<String>)> = self
            .served()
            .into_iter()
            .map(|o| {
                let s = o.stack();
                (o, s)
            })
            .collect();
        // Deltas a deleted object still open reads stay noted in `.gc`: the space
        // they hold for it is freed at the next open of the store.
        let mut keep: Vec<&String> = Vec::new();
        for id in ids {
            let users: Vec<&(Arc<Disk>, Vec<String>)> =
                stacks.iter().filter(|(_, s)| s.contains(id)).collect();
            if users.iter().any(|(u, _)| u.is_deleted()) {
                keep.push(id);
            }
            crate::fault::point("gc.punching");
            let r = if users.is_empty() {
                remove_delta(&self.root, id).map(|()| log::info!("freed delta {id}"))
            } else {
                self.punch_dead(id, &users)
            };
            if let Err(e) = r {
                log::error!("freeing space of delta {id}: {e}");
                return;
            }
        }
        crate::fault::point("gc.punched");
        let _gc = self.gc_file.lock();
        let path = self.deltas_dir().join(GC_FILE);
        let left: Vec<String> = fs::read_to_string(&path)
            .map(|s| {
                s.lines()
                    .filter(|l| !ids.iter().any(|i| i == l) || keep.iter().any(|k| k == l))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        let r = if left.is_empty() {
            fs::remove_file(&path).or_else(|e| {
                if e.kind() == ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        } else {
            durable::write_atomic(&path, (left.join("\n") + "\n").as_bytes(), 0o600)
        };
        if let Err(e) = r {
            log::warn!("updating {}: {e}", path.display());
        }
    }

    /// Punches the units of delta `id` that no user reads. The deltas above `id` in
    /// its users' stacks form a tree; walking it once, each node narrows what is still
    /// seen through it by the units it holds (data or whiteouts), and what reaches a
    /// node with an object on it is live.
    fn punch_dead(&self, id: &str, users: &[&(Arc<Disk>, Vec<String>)]) -> std::io::Result<()> {
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(delta_path(&self.root, id))?;
        let (data, live) = self.live_units(id, &f, users)?;
        let dead = data.subtract(&live);
        for r in dead.iter() {
            super::disk::io_punch_file(&f, r.start * UNIT, (r.end - r.start) * UNIT)?;
        }
        if !dead.is_empty() {
            f.sync_data()?;
            log::info!("freed {} bytes of delta {id}", dead.count() * UNIT);
        }
        Ok(())
    }

    /// The units delta `id` (open as `f`) reports, and those of them some user reads.
    pub(super) fn live_units(
        &self,
        id: &str,
        f: &fs::File,
        users: &[&(Arc<Disk>, Vec<String>)],
    ) -> std::io::Result<(RangeSet, RangeSet)> {
        let data = scan_data(f)?;
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut tops: HashSet<&str> = HashSet::new();
        for (_, stack) in users {
            let pos = stack.iter().position(|s| s == id).unwrap_or(stack.len());
            for w in stack[pos..].windows(2) {
                let c = children.entry(&w[0]).or_default();
                if !c.contains(&w[1].as_str()) {
                    c.push(&w[1]);
                }
            }
            if let Some(t) = stack.last() {
                tops.insert(t);
            }
        }
        let mut live = RangeSet::new();
        let mut walk = vec![(id, data.clone())];
        while let Some((node, left)) = walk.pop() {
            if tops.contains(node) {
                live.add(&left);
            }
            for &c in children.get(node).into_iter().flatten() {
                let cf = open_ro(&delta_path(&self.root, c))?;
                // Only units that really hold ciphertext cover: a file system may
                // report data in blocks bigger than a unit.
                let held = nonzero_units(&cf, &scan_data(&cf)?.intersect(&left))?;
                let l = left
                    .subtract(&held)
                    .subtract(&read_whiteouts(&whiteout_path(&self.root, c))?);
                if !l.is_empty() {
                    walk.push((c, l));
                }
            }
        }
        Ok((data, live))
    }

    /// At open: finishes space reclaim a crash interrupted, and removes deltas no
    /// object uses (an interrupted create or delete). With any object's metadata
    /// unreadable nothing is removed: that object may use them.
    pub(super) fn collect_garbage_at_open(&self) {
        // A re-encrypting copy a crash interrupted is not a disk anyone asked for.
        for d in self.list_kind(ObjectKind::Disk) {
            let name = d.name();
            if name.starts_with('.') && name.ends_with(COPYING) {
                log::info!("removing the interrupted copy '{name}'");
                if let Err(e) = self.delete_object_locked(ObjectKind::Disk, &name) {
                    log::error!("removing the interrupted copy '{name}': {e}");
                }
            }
        }
        let dir = self.deltas_dir();
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let pending: Vec<String> = fs::read_to_string(dir.join(GC_FILE))
            .map(|s| s.lines().map(String::from).collect())
            .unwrap_or_default();
        if self.list().iter().any(|d| d.corrupt_reason().is_some()) {
            log::warn!("not freeing unused deltas while an object's metadata is unreadable");
            return;
        }
        let used: std::collections::HashSet<String> =
            self.list().iter().flat_map(|d| d.stack()).collect();
        for e in entries.filter_map(|e| e.ok()) {
            let Some(name) = e.file_name().to_str().map(String::from) else {
                continue;
            };
            let id = whiteout_owner(&name).unwrap_or(&name);
            if name == GC_FILE || name.starts_with('.') || used.contains(id) {
                continue;
            }
            log::info!("removing unused {}", e.path().display());
            let _ = fs::remove_file(e.path());
        }
        self.reclaim_noted();
        if !pending.is_empty() {
            self.collect_garbage(&pending);
        }
    }
}

/// The units of `candidates` whose stored bytes in `f` are not all zero.
pub(super) fn nonzero_units(f: &fs::File, candidates: &RangeSet) -> std::io::Result<RangeSet> {
    use super::disk::units::is_zero;
    use std::os::unix::fs::FileExt;
    let mut out = RangeSet::new();
    let mut buf = vec![0u8; UNIT as usize];
    for r in candidates.iter() {
        for n in r {
            let got = f.read_at(&mut buf, n * UNIT)?;
            if got > 0 && !is_zero(&buf[..got]) {
                out.insert(n..n + 1);
            }
        }
    }
    Ok(out)
}

//! Full snapshots (`--incremental false`): readable at once through the source's
//! stack, like any snapshot, then copied on the merge thread into a delta of their
//! own (`deltas/ID`, the snapshot's id): the ciphertext of every unit the snapshot
//! reads, unchanged (the same DEKs; the snapshot has its own wrapped copy of them).
//! The commit is one metadata write (`stack` = `[ID]`, `fullCopy` = done); after it the
//! snapshot shares no delta with anything, so deleting its source and the rest of the
//! family leaves it whole, and for merges and depth it is a stack of its own. A crash
//! before the commit leaves `deltas/ID` unused (removed at the next open) and the copy
//! is made again; a delete of the snapshot meanwhile stops it.

use super::delta::{create_delta, delta_path, remove_delta};
use super::disk::layered::{open_ro, Layered};
use super::disk::units::{is_zero, round_up, units_in, UNIT};
use super::meta::FullCopy;
use super::*;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Units copied per step.
const STEP: u64 = 256;

impl Store {
    /// Snapshots whose full copy is still to be made.
    pub(super) fn pending_full_copies(&self) -> Vec<Arc<Disk>> {
        self.list_kind(ObjectKind::Snapshot)
            .into_iter()
            .filter(|d| d.with_meta(|m| m.full_copy == Some(FullCopy::Pending)))
            .collect()
    }

    /// `completionPercent` of a snapshot: 100 unless its full copy is under way.
    pub fn completion_percent(&self, obj: &Disk) -> u64 {
        match obj.with_meta(|m| m.full_copy) {
            Some(FullCopy::Pending) => self
                .merges
                .progress
                .lock()
                .get(&obj.serial)
                .copied()
                .unwrap_or(0),
            _ => 100,
        }
    }

    /// Makes every pending full copy; returns how many finished.
    pub(super) fn full_copies(&self, rate: u64) -> usize {
        let mut n = 0;
        for snap in self.pending_full_copies() {
            if self.merges.stop.load(Ordering::Acquire) {
                break;
            }
            match self.full_copy(&snap, rate) {
                Ok(true) => n += 1,
                Ok(false) => {}
                Err(e) => {
                    log::warn!(
                        "full copy of snapshot '{}': {e}; it is retried later",
                        snap.name()
                    );
                    *self.merges.last_error.lock() = Some(e.to_string());
                }
            }
            self.merges.progress.lock().remove(&snap.serial);
        }
        n
    }

    /// One full copy; false if it paused or the snapshot went away.
    fn full_copy(&self, snap: &Arc<Disk>, rate: u64) -> Result<bool> {
        let stack = snap.stack();
        let id = snap.id.clone();
        let size = snap.size();
        let io = |what: &str, e| {
            StoreError::io(
                format!("{what} (full copy of snapshot '{}')", snap.name()),
                e,
            )
        };
        let paused = || {
            snap.is_revoked()
                || snap.is_deleted()
                || self.merges.stop.load(Ordering::Acquire)
                || self.enforcement_down().is_some()
        };
        if paused() || stack.is_empty() {
            return Ok(false);
        }
        let path = delta_path(&self.root, &id);
        let _ = remove_delta(&self.root, &id);
        create_delta(&path, round_up(size)).map_err(|e| io("creating its delta", e))?;
        let fail = |e: StoreError| {
            let _ = remove_delta(&self.root, &id);
            e
        };
        let out = fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .map_err(|e| fail(io("opening its delta", e)))?;
        let view = Layered::build(&self.root, &stack, None)
            .map_err(|e| fail(io("indexing its stack", e)))?;
        let top = open_ro(&delta_path(&self.root, stack.last().expect("checked")))
            .map_err(|e| fail(io("opening its stack", e)))?;
        let units = units_in(size);
        let started = Instant::now();
        let mut copied = 0u64;
        let mut b = 0;
        while b < units {
            if paused() {
                let _ = remove_delta(&self.root, &id);
                return Ok(false);
            }
            let e = (b + STEP).min(units);
            let mut buf = vec![0u8; ((e - b) * UNIT) as usize];
            view.read(&top, b, &mut buf)
                .map_err(|e| fail(io("reading", e)))?;
            for (k, u) in buf.chunks_exact(UNIT as usize).enumerate() {
                if !is_zero(u) {
                    out.write_all_at(u, (b + k as u64) * UNIT)
                        .map_err(|e| fail(io("writing", e)))?;
                    copied += UNIT;
                }
            }
            crate::fault::point("fullcopy.step");
            self.merges
                .progress
                .lock()
                .insert(snap.serial, (e * 100 / units.max(1)).min(99));
            let due = Duration::from_secs_f64(copied as f64 / rate.max(1) as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
            b = e;
        }
        out.sync_all()
            .and_then(|()| durable::sync_dir(&self.deltas_dir()))
            .map_err(|e| fail(io("syncing", e)))?;
        crate::fault::point("fullcopy.copied");
        let _ns = self.ns.lock();
        if snap.is_deleted() || snap.stack() != stack {
            let _ = remove_delta(&self.root, &id);
            return Ok(false);
        }
        snap.restack(|m| {
            m.stack = vec![id.clone()];
            m.full_copy = Some(FullCopy::Done);
        })
        .map_err(fail)?;
        drop(_ns);
        crate::fault::point("fullcopy.committed");
        // The deltas it read before may now be free, in part or whole.
        self.collect_garbage(&stack);
        log::info!(
            "snapshot '{}' is a full copy now ({copied} bytes in its own delta)",
            snap.name()
        );
        Ok(true)
    }
}

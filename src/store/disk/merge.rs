//! What a delta merge needs of one object: copying units into a disk's writable top
//! under the same locks as a write, and dropping a merged delta from the object's
//! stack with its in-memory index rebuilt (the commit).

use super::super::delta::{read_whiteouts, whiteout_path};
use super::super::extents::RangeSet;
use super::Disk;
use crate::store::meta::DiskMeta;
use crate::store::{Result, StoreError};
use std::sync::Arc;

impl Disk {
    /// Runs `f` over units `b..e` of delta `upper`, this disk's writable top when the
    /// merge began, with the disk's size and those units locked as a write locks them,
    /// so no write or discard of the disk crosses it. `f` gets `upper`'s whiteouts as
    /// they are now (read under the locks: a discard logs its whiteouts before it
    /// punches; `upper` may have been frozen by a snapshot since, and the disk's top be
    /// another delta). Refuses (`Busy`) once a rekey has begun: from then on the top's
    /// units may be under new keys.
    pub(in crate::store) fn with_top_units<T>(
        &self,
        upper: &str,
        b: u64,
        e: u64,
        f: impl FnOnce(&RangeSet) -> std::io::Result<T>,
    ) -> Result<T> {
        let _r = self.resize.read();
        let _g = self.lock_units(b, e, true);
        if self.meta.lock().rekey.is_some() {
            return Err(StoreError::Busy(format!(
                "disk '{}' is being rekeyed",
                self.name()
            )));
        }
        let wh = read_whiteouts(&whiteout_path(&self.root, upper))
            .map_err(|e| self.io_err("reading whiteouts", e))?;
        f(&wh).map_err(|e| self.io_err("merging a delta", e))
    }

    /// Removes delta `id` from this object's stack (one atomic metadata write) once
    /// the delta above it holds everything the object read from it. An open object's
    /// index is rebuilt before the commit, so nothing can fail after it, and swapped
    /// in with no request running.
    pub(in crate::store) fn drop_delta(&self, id: &str) -> Result<()> {
        if !self.stack().iter().any(|s| s == id) {
            return Ok(());
        }
        crate::fault::point("merge.commit");
        self.restack(|m| m.stack.retain(|s| s != id))
    }

    /// Changes the object's stack (and whatever `f` changes with it) in one atomic
    /// metadata write, for a stack that reads the same content: an open object's
    /// index is rebuilt first, then swapped in with no request running.
    pub(in crate::store) fn restack(&self, f: impl Fn(&mut DiskMeta)) -> Result<()> {
        let n = self.open_count.lock();
        let _w = self.resize.write();
        let mut next_meta = self.meta();
        f(&mut next_meta);
        let cur = if *n > 0 {
            self.unlocked.read().clone()
        } else {
            None
        };
        let next = match cur {
            Some(cur) => {
                let (file, layered) = self.open_data(&next_meta).map_err(|(p, e)| {
                    StoreError::io(format!("reopening {} after a merge", p.display()), e)
                })?;
                Some(super::Unlocked {
                    file,
                    layers: cur.layers.clone(),
                    next: cur.next.clone(),
                    layered,
                })
            }
            None => None,
        };
        self.update_meta(|m| f(m))?;
        if let Some(next) = next {
            *self.unlocked.write() = Some(Arc::new(next));
        }
        Ok(())
    }
}

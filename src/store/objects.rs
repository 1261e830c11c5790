//! The store's object table: every disk, snapshot and image by kind and name, and by
//! serial (the FUSE layer's inode key), so a lookup costs the same at 10 objects and
//! at 10,000.

use super::{Disk, ObjectKind};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

type Key = (ObjectKind, String);

#[derive(Default)]
pub(super) struct Objects {
    by_name: BTreeMap<Key, Arc<Disk>>,
    by_serial: HashMap<u64, Arc<Disk>>,
    /// Live snapshots per source object id (Azure's 500-per-disk limit).
    snapshots_of: HashMap<String, usize>,
}

/// The id of the object a snapshot was taken of.
fn source_of(key: &Key, d: &Disk) -> Option<String> {
    if key.0 != ObjectKind::Snapshot {
        return None;
    }
    d.meta().creation_data.as_ref()?.source_unique_id.clone()
}

impl Objects {
    pub fn insert(&mut self, key: Key, d: Arc<Disk>) -> Option<Arc<Disk>> {
        if let Some(src) = source_of(&key, &d) {
            *self.snapshots_of.entry(src).or_default() += 1;
        }
        self.by_serial.insert(d.serial, d.clone());
        let old = self.by_name.insert(key.clone(), d.clone());
        if let Some(o) = &old {
            self.forget_source(&key, o);
            if o.serial != d.serial {
                self.by_serial.remove(&o.serial);
            }
        }
        old
    }

    pub fn remove(&mut self, key: &Key) -> Option<Arc<Disk>> {
        let old = self.by_name.remove(key)?;
        self.by_serial.remove(&old.serial);
        self.forget_source(key, &old);
        Some(old)
    }

    fn forget_source(&mut self, key: &Key, d: &Disk) {
        if let Some(src) = source_of(key, d) {
            if let Some(n) = self.snapshots_of.get_mut(&src) {
                *n -= 1;
                if *n == 0 {
                    self.snapshots_of.remove(&src);
                }
            }
        }
    }

    /// Snapshots taken of the object with this id that still exist.
    pub fn snapshots_of(&self, id: &str) -> usize {
        self.snapshots_of.get(id).copied().unwrap_or(0)
    }

    pub fn get(&self, key: &Key) -> Option<&Arc<Disk>> {
        self.by_name.get(key)
    }

    pub fn by_serial(&self, serial: u64) -> Option<&Arc<Disk>> {
        self.by_serial.get(&serial)
    }

    pub fn values(&self) -> impl Iterator<Item = &Arc<Disk>> {
        self.by_name.values()
    }

    /// The objects of one kind, in name order, without a pass over the others.
    pub fn of_kind(&self, kind: ObjectKind) -> impl Iterator<Item = &Arc<Disk>> {
        self.by_name
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, d)| d)
    }

    pub fn clear(&mut self) {
        self.by_name.clear();
        self.by_serial.clear();
        self.snapshots_of.clear();
    }
}

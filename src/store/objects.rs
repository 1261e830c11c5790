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
}

impl Objects {
    pub fn insert(&mut self, key: Key, d: Arc<Disk>) -> Option<Arc<Disk>> {
        self.by_serial.insert(d.serial, d.clone());
        let old = self.by_name.insert(key, d.clone());
        if let Some(o) = &old {
            if o.serial != d.serial {
                self.by_serial.remove(&o.serial);
            }
        }
        old
    }

    pub fn remove(&mut self, key: &Key) -> Option<Arc<Disk>> {
        let old = self.by_name.remove(key)?;
        self.by_serial.remove(&old.serial);
        Some(old)
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
    }
}

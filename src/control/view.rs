//! The Azure-shaped JSON views that `.vault/` files and the CLI show.

use crate::store::{Disk, Result, Store};
use serde_json::Value;

/// `.vault/status.json`: every disk and disk encryption set, and the daemon's health.
pub fn status(store: &Store) -> Value {
    store.status_json()
}

/// `disks/NAME/disk.json`, like `az disk show`.
pub fn disk(store: &Store, disk: &Disk) -> Value {
    store.disk_json(disk)
}

/// `disk-encryption-sets/NAME/status.json`, like `az disk-encryption-set show`.
pub fn set(store: &Store, name: &str) -> Result<Value> {
    store.des_show(name)
}

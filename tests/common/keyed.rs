//! For the revocation and rotation tests: a mounted store with customer keys, its
//! reconciler passes, control writes that must succeed, and how long to wait.

use super::*;
use serde_json::Value;
use std::time::Duration;

pub const LIMIT: Duration = Duration::from_secs(5);

pub fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

/// A mounted store with purge protection, key k1 granted to set1, and the given disks
/// (name, sku) in set1.
pub fn setup(extra_mount_args: &[&str], disks: &[(&str, &str)]) -> Mounted {
    let mut m = Mounted::new();
    if !extra_mount_args.is_empty() {
        m.umount();
        m.mount_with(extra_mount_args, &[]);
    }
    let disks: Vec<(&str, &str, &str)> = disks.iter().map(|(d, sku)| (*d, "4M", *sku)).collect();
    cmk_setup(&m, &disks);
    m
}

/// Completed reconciler passes of the mount's daemon.
pub fn passes(m: &Mounted) -> u64 {
    js(&std::fs::read_to_string(m.mnt.join(".vault/status.json")).unwrap())["reconcilerPasses"]
        .as_u64()
        .unwrap()
}

/// A control write that must succeed.
pub fn ctl(m: &Mounted, path: &str, data: &str) {
    std::fs::write(m.mnt.join(".vault").join(path), data)
        .unwrap_or_else(|e| panic!("{path} <- {data}: {e}"));
}

//! Raw access to the key vault's control files on a mount: writes that return the
//! errno of a refusal, reads, a key's version count and the reason of a refusal.

use super::*;

/// Writes `data` to a control file; returns the errno of a refusal.
pub fn ctl(m: &Mounted, path: &str, data: &str) -> Result<(), i32> {
    std::fs::write(m.mnt.join(".vault").join(path), data).map_err(|e| e.raw_os_error().unwrap_or(0))
}

pub fn read(m: &Mounted, path: &str) -> std::io::Result<String> {
    std::fs::read_to_string(m.mnt.join(".vault").join(path))
}

pub fn versions(m: &Mounted, key: &str) -> usize {
    std::fs::read_dir(m.mnt.join(".vault/keys").join(key).join("versions"))
        .unwrap()
        .count()
}

/// The reason of the last refused control write, from last-error or the daemon log.
pub fn reason_logged(m: &Mounted, needle: &str) -> bool {
    read(m, "last-error").unwrap_or_default().contains(needle)
        || std::fs::read_to_string(m.store.join("daemon.log"))
            .unwrap_or_default()
            .contains(needle)
}

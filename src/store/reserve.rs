//! Space kept back for metadata. A store whose file system fills up with data could
//! otherwise not save a disk's new size (meta.json is rewritten through a temporary
//! file), and the next mount would trim the data written past the recorded size. So
//! each open keeps a 1 MiB file, `STORE/reserve`; a metadata write that fails with
//! ENOSPC (or EDQUOT) gives it up and tries once more.

use crate::durable;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

pub const RESERVE_FILE: &str = "reserve";
const RESERVE_BYTES: i64 = 1 << 20;

/// Makes sure the reserve exists (after an earlier release, once there is room again).
/// Best effort: a store that can't hold it works as before.
pub(super) fn ensure(root: &Path) {
    let path = root.join(RESERVE_FILE);
    let made = (|| {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)?;
        // Safe because: the fd is valid while `f` lives; fallocate takes no pointers.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, RESERVE_BYTES) } != 0 {
            return Err(io::Error::last_os_error());
        }
        f.sync_all()?;
        durable::sync_dir(root)
    })();
    if let Err(e) = made {
        let _ = std::fs::remove_file(&path);
        log::warn!(
            "no room for the store's 1 MiB metadata reserve ({e}); a full store may not \
             save disk sizes: free space in {}",
            root.display()
        );
    }
}

/// `durable::write_atomic`, retried once after giving up the reserve if the file
/// system is full.
pub(super) fn write_atomic(root: &Path, path: &Path, bytes: &[u8]) -> io::Result<()> {
    let r = durable::write_atomic(path, bytes, 0o600);
    match r {
        Err(e) if is_full(&e) && release(root) => durable::write_atomic(path, bytes, 0o600),
        r => r,
    }
}

/// Whether `e` means the file system is full.
pub(super) fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Gives the reserve back to the file system; false if there was none left.
pub(super) fn release(root: &Path) -> bool {
    let path = root.join(RESERVE_FILE);
    if std::fs::remove_file(&path).is_err() {
        return false;
    }
    let _ = durable::sync_dir(root);
    log::warn!(
        "the store's file system is full: its 1 MiB metadata reserve was used; free \
         space in {} (the reserve is made again at the next mount)",
        root.display()
    );
    true
}

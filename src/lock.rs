//! One daemon per store: an exclusive flock on `STORE/lock`, released by the kernel
//! when the holder exits, even on kill -9.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

fn open(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    // Safe because: the fd is valid for the lifetime of `file`, and flock takes no pointers.
    let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl StoreLock {
    /// Takes the lock, or returns `Ok(None)` if another process holds it.
    pub fn try_acquire(path: &Path) -> io::Result<Option<StoreLock>> {
        let file = open(path)?;
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Blocks until no process holds the lock (used to wait for a daemon to exit).
    pub fn wait_released(path: &Path) -> io::Result<()> {
        let file = open(path)?;
        flock(&file, libc::LOCK_EX)?;
        flock(&file, libc::LOCK_UN)
    }
}

//! Control-file handles: one command per open file, gathered imports, and the reply
//! kept on the handle that carried the command.

use super::{errno, split, DiskVaultFs, DISKS, IMAGES, SNAPSHOTS};
use crate::control;
use crate::store::{ObjectKind, StoreError};
use crate::vault::Caller;
use fuser::{Errno, INodeNo};
use parking_lot::Mutex;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicBool, Ordering};

impl DiskVaultFs {
    /// Carries out one control command and keeps its reply on the handle, so the
    /// writer (the CLI) reads its own outcome, never another process's.
    pub(super) fn run_write(
        &self,
        path: &str,
        data: &[u8],
        caller: &Caller,
        last: &Mutex<Option<Vec<u8>>>,
    ) -> Result<(), Errno> {
        let parts = split(path);
        match self.control.write(&parts, data, caller) {
            Ok(reply) => {
                *last.lock() = Some(reply.to_bytes());
                // An object deleted through .vault/ must vanish from its directory at
                // once, not when the kernel's cached entry times out.
                if let (Some((kind, name)), Some(n)) = (&reply.deleted, self.notifier.get()) {
                    let dir = match kind {
                        ObjectKind::Disk => DISKS,
                        ObjectKind::Snapshot => SNAPSHOTS,
                        ObjectKind::Image => IMAGES,
                    };
                    let _ = n.inval_entry(INodeNo(dir), OsStr::new(name));
                }
                Ok(())
            }
            Err(e) => {
                *last.lock() = Some(format!("error: {e}\n").into_bytes());
                Err(self.fail(&format!("write .vault/{path}"), e))
            }
        }
    }

    /// One write(2) to a control file. A PEM import may come in several writes,
    /// gathered until it is complete.
    pub(super) fn write_control(
        &self,
        caller: &Caller,
        path: &str,
        data: &[u8],
        last: &Mutex<Option<Vec<u8>>>,
        pending: &Mutex<Vec<u8>>,
        ran: &AtomicBool,
    ) -> Result<(), Errno> {
        // One command per open file: a later write continues the one before
        // (bash's printf writes each line separately), so it is refused rather
        // than run as a second command; a blank one, like a final newline
        // written on its own, is fine.
        // The position is no guide: a refused write doesn't advance it.
        if ran.load(Ordering::Acquire) {
            if data.iter().all(u8::is_ascii_whitespace) {
                return Ok(());
            }
            let e = StoreError::InvalidArgument(
                "one command per open file: an earlier write through this file was already taken as the command, carried out or refused (shells write each line of printf or echo -e separately); write each command with its own echo".into(),
            );
            // Not in last-error, and not the handle's reply: both keep the outcome of
            // the command that was carried out; this write's errno tells its refusal.
            log::info!("write .vault/{path}: {e}");
            return Err(errno(&e));
        }
        let command = if control::gathers(&split(path)) {
            let mut p = pending.lock();
            // One allocation up front: no unzeroized copies of key material.
            if p.capacity() == 0 {
                p.reserve_exact(control::MAX_CONTROL_WRITE + (1 << 20));
            }
            p.extend_from_slice(data);
            if !control::import_complete(&p) && p.len() <= control::MAX_CONTROL_WRITE {
                return Ok(());
            }
            std::mem::take(&mut *p)
        } else {
            data.to_vec()
        };
        let command = zeroize::Zeroizing::new(command);
        ran.store(true, Ordering::Release);
        self.run_write(path, &command, caller, last)
    }
}

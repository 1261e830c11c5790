//! The one error type at the control boundary: an errno for the FUSE reply and a
//! message for the writer's reply, `last-error` and the CLI. Store and vault errors
//! are mapped to it here, once.

use crate::store::StoreError;
use std::fmt;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlError {
    pub errno: i32,
    pub message: String,
}

impl ControlError {
    /// Messages echo user input: never a PEM, never a second line, bounded.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        ControlError {
            errno,
            message: crate::shown::shown(&message.into(), MAX_MESSAGE),
        }
    }

    /// A `.vault/` path that does not exist.
    pub fn not_found(path: &[&str]) -> Self {
        Self::new(
            libc::ENOENT,
            format!(".vault/{} does not exist", path.join("/")),
        )
    }

    /// A write to a file that only reads.
    pub fn read_only(path: &[&str]) -> Self {
        Self::new(
            libc::EACCES,
            format!(".vault/{} is read-only", path.join("/")),
        )
    }
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ControlError {}

/// The longest message a reply, `last-error` or the log shows.
const MAX_MESSAGE: usize = 2000;

impl From<StoreError> for ControlError {
    fn from(e: StoreError) -> Self {
        ControlError::new(errno(&e), e.to_string())
    }
}

impl From<crate::vault::VaultError> for ControlError {
    fn from(e: crate::vault::VaultError) -> Self {
        StoreError::from(e).into()
    }
}

/// The errno a program sees for a store error, on a control file or a disk.
pub fn errno(e: &StoreError) -> i32 {
    use StoreError::*;
    match e {
        DiskNotFound(_)
        | DesNotFound(_)
        | ObjectNotFound { .. }
        | SourceNotFound(_)
        | VmNotFound(_)
        | NotFound(_) => libc::ENOENT,
        DiskExists(_) | DesExists(_) | ObjectExists { .. } | VmExists(_) => libc::EEXIST,
        VmCannotStart(_) => libc::EKEYREVOKED,
        ReadOnly { .. } => libc::EROFS,
        Refused(_) => libc::EINVAL,
        Limit(_) => libc::EDQUOT,
        InvalidName { name, .. } | InvalidObjectName { name, .. } if name.len() > 255 => {
            libc::ENAMETOOLONG
        }
        InvalidName { .. }
        | InvalidObjectName { .. }
        | InvalidSize { .. }
        | InvalidSku(_)
        | InvalidArgument(_)
        | InvalidSetName { .. }
        | VersionlessKeyUrl(_)
        | Crypto(_) => libc::EINVAL,
        TooLarge => libc::EFBIG,
        Busy(_)
        | RekeyRunning(_)
        | Locked { .. }
        | Attached(_)
        | DesInUse { .. }
        | VmConflict(_) => libc::EBUSY,
        NoSpace { .. } => libc::ENOSPC,
        PurgeProtectionRequired | CmkCannotBeDisabled | NotPermitted(_) => libc::EPERM,
        Vault(v) => v.errno(),
        Io { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        _ => libc::EIO,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_fitting_errnos() {
        let io = |n| StoreError::io("x", std::io::Error::from_raw_os_error(n));
        for (e, want) in [
            (StoreError::DiskNotFound("d".into()), libc::ENOENT),
            (StoreError::DesExists("s".into()), libc::EEXIST),
            (
                StoreError::InvalidName {
                    name: "x".repeat(256),
                    reason: "long".into(),
                },
                libc::ENAMETOOLONG,
            ),
            (StoreError::TooLarge, libc::EFBIG),
            (StoreError::PurgeProtectionRequired, libc::EPERM),
            (io(libc::ENOSPC), libc::ENOSPC),
            (
                crate::vault::VaultError::KeyNotFound("k".into()).into(),
                libc::ENOENT,
            ),
            (StoreError::EnforcementDown("down".into()), libc::EIO),
        ] {
            let c = ControlError::from(e);
            assert_eq!(c.errno, want, "{c}");
        }
        assert_eq!(ControlError::read_only(&["vault.json"]).errno, libc::EACCES);
    }
}

//! Typed requests: what a control-file write means, and what the CLI sends. Each has
//! a wire form (a control file and the bytes written to it) that the daemon parses
//! back into the same request; a unit test holds the two together.

use super::{ControlError, DiskRequest, KeyRequest, SetRequest, VaultRequest};
use zeroize::Zeroizing;

#[derive(Clone, Debug)]
pub enum Request {
    Vault(VaultRequest),
    Key(KeyRequest),
    Set(SetRequest),
    Disk(DiskRequest),
}

impl Request {
    /// The control file (relative to `.vault/`) and the bytes that carry this request
    /// to a daemon: one write(2), whose reply is read back on the same handle.
    pub fn wire(&self) -> (String, Zeroizing<Vec<u8>>) {
        match self {
            Request::Vault(r) => {
                let (p, b) = r.wire();
                (p, Zeroizing::new(b))
            }
            Request::Key(r) => r.wire(),
            Request::Set(r) => {
                let (p, b) = r.wire();
                (p, Zeroizing::new(b))
            }
            Request::Disk(r) => {
                let (p, b) = r.wire();
                (p, Zeroizing::new(b))
            }
        }
    }
}

impl Request {
    /// The names that become path segments of the wire form (objects and versions).
    fn path_names(&self) -> Vec<&str> {
        use KeyRequest as K;
        match self {
            Request::Vault(_) => vec![],
            Request::Key(K::Create { .. } | K::Import { .. }) => vec![],
            Request::Key(K::Update { name, version, .. }) => {
                let mut v = vec![name.as_str()];
                v.extend(version.as_deref());
                v
            }
            Request::Key(
                K::Rotate { name, .. }
                | K::Grant { name, .. }
                | K::RevokeGrant { name, .. }
                | K::RotationPolicy { name, .. }
                | K::Delete { name }
                | K::Recover { name }
                | K::Purge { name },
            ) => vec![name],
            Request::Set(SetRequest::Create { .. }) => vec![],
            Request::Set(SetRequest::Update { name, .. } | SetRequest::Delete { name }) => {
                vec![name]
            }
            Request::Disk(DiskRequest::Create { .. }) => vec![],
            Request::Disk(
                DiskRequest::Delete { name }
                | DiskRequest::Encryption { name, .. }
                | DiskRequest::Sku { name, .. }
                | DiskRequest::Rekey { name },
            ) => vec![name],
        }
    }

    /// Refuses a name that would lead the wire form to another file (`a/b`, `..`):
    /// through a mount, a name is a path segment.
    pub fn check_names(&self) -> Result<(), ControlError> {
        for n in self.path_names() {
            if n.is_empty() || n == "." || n == ".." || n.contains('/') || n.contains('\0') {
                return Err(ControlError::new(
                    libc::EINVAL,
                    format!(
                        "invalid name '{}': a name is not empty, '.' or '..' and has no '/'",
                        n.chars().take(80).collect::<String>()
                    ),
                ));
            }
        }
        Ok(())
    }
}

impl From<VaultRequest> for Request {
    fn from(r: VaultRequest) -> Self {
        Request::Vault(r)
    }
}

impl From<KeyRequest> for Request {
    fn from(r: KeyRequest) -> Self {
        Request::Key(r)
    }
}

impl From<SetRequest> for Request {
    fn from(r: SetRequest) -> Self {
        Request::Set(r)
    }
}

impl From<DiskRequest> for Request {
    fn from(r: DiskRequest) -> Self {
        Request::Disk(r)
    }
}

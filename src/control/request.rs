//! Typed requests: what a control-file write means, and what the CLI sends. Each has
//! a wire form (a control file and the bytes written to it) that the daemon parses
//! back into the same request; a unit test holds the two together.

use super::{DiskRequest, KeyRequest, SetRequest, VaultRequest};
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

//! Typed requests: what a control-file write means, and what the CLI sends. The CLI
//! sends the request itself, as JSON, to `.vault/command`; each request also has a
//! file form (an object's control file and the words or JSON a person would write to
//! it), and a unit test holds every request and its file form together.

use super::arm::ArmRequest;
use super::{CopyRequest, DiskRequest, KeyRequest, SetRequest, VaultRequest, VmRequest};
#[cfg(test)]
use zeroize::Zeroizing;

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Request {
    Vault(VaultRequest),
    Key(KeyRequest),
    Set(SetRequest),
    Disk(DiskRequest),
    Copy(CopyRequest),
    Vm(VmRequest),
    Arm(ArmRequest),
    Vmss(super::VmssRequest),
}

impl Request {
    /// The control file (relative to `.vault/`) and the bytes that express this
    /// request in the per-object tree, as a person would write them.
    #[cfg(test)]
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
            Request::Copy(r) => {
                let (p, b) = r.wire();
                (p, Zeroizing::new(b))
            }
            Request::Vm(r) => {
                let (p, b) = r.wire();
                (p, Zeroizing::new(b))
            }
            Request::Arm(r) => {
                let (p, b) = r.wire();
                (p, Zeroizing::new(b))
            }
            Request::Vmss(r) => {
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

impl From<CopyRequest> for Request {
    fn from(r: CopyRequest) -> Self {
        Request::Copy(r)
    }
}

impl From<super::VmssRequest> for Request {
    fn from(r: super::VmssRequest) -> Self {
        Request::Vmss(r)
    }
}

impl From<ArmRequest> for Request {
    fn from(r: ArmRequest) -> Self {
        Request::Arm(r)
    }
}

impl From<VmRequest> for Request {
    fn from(r: VmRequest) -> Self {
        Request::Vm(r)
    }
}

//! The control service: the operations behind `MOUNT/.vault/` and the CLI.
//!
//! The `.vault/` tree is declared once, in a route table (`routes.rs` and the area
//! files `root.rs`, `keys.rs`, `sets.rs`, `disks.rs`): each node with its kind, its
//! read handler and its write/mkdir/rmdir parser. A write is parsed into a typed
//! [`Request`], and [`Control::execute`] carries it out; the CLI builds the same
//! requests directly, so nothing typed is turned into text to be parsed back.
//! Failures leave here as one [`ControlError`] (errno and message). No FUSE types:
//! `fs/` calls this, and tests drive it without a mount. See docs/control-files.md.

pub mod args;
mod arm;
mod copies;
mod disks;
mod error;
mod key_request;
mod keys;
mod request;
mod root;
mod routes;
mod sets;
pub mod view;
mod vms;
mod vmss;

pub use arm::ArmRequest;
pub use copies::{CopyRequest, Kind as CopyKind};
pub use disks::DiskRequest;
pub use error::{errno, ControlError};
pub use keys::{parse_rotation_policy, time_value_of, Identity, KeyRequest};
pub use request::Request;

pub use root::VaultRequest;
pub use sets::SetRequest;
pub use vms::VmRequest;
pub use vmss::{upgrade_policy as vmss_upgrade_policy, VmssRequest};

pub use args::MAX_CONTROL_WRITE;

use crate::store::{DaemonInfo, Store, StoreError};
use crate::vault::{Caller, VaultError};
use crate::vm::VmManager;
use parking_lot::Mutex;
use routes::{Params, Route};
use std::sync::Arc;

pub const README: &str = include_str!("vault-readme.txt");

/// What a path is, with its permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A file; `read`/`write` say whether it may be read or written.
    File {
        read: bool,
        write: bool,
    },
}

impl Kind {
    /// Writable files are readable too: a read on the handle that wrote shows the
    /// reply to that write.
    pub fn mode(self) -> u16 {
        match self {
            Kind::Dir => 0o700,
            Kind::File { write: true, .. } => 0o600,
            Kind::File { .. } => 0o400,
        }
    }
}

/// Names a control file takes inside a directory of keys, sets or disks; they can't
/// be used as key, set or disk names.
pub const RESERVED: &[&str] = &["create", "import"];

pub fn check_reserved(name: &str) -> Result<(), StoreError> {
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(args::invalid(format!(
            "'{name}' is the name of a control file; choose another name"
        )));
    }
    Ok(())
}

/// Whether writes to `path` are gathered until they form one command (a PEM import
/// written in pieces, as `{ echo NAME; cat key.pem; } > import` does).
pub fn gathers(path: &[&str]) -> bool {
    path == ["keys", "import"]
}

pub use keys::import_complete;

/// What a request answers: the object it created or changed, as `show` would print
/// it, where there is one. It is the result of this very request, so a client never
/// prints what another one did meanwhile.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reply {
    pub result: Option<serde_json::Value>,
    /// A disk, snapshot or image this request deleted: the frontend drops its cached
    /// entry at once.
    pub deleted: Option<(crate::store::ObjectKind, String)>,
}

impl Reply {
    /// The reply a read of the writer's handle shows: `ok`, then the result as JSON.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = b"ok\n".to_vec();
        if let Some(v) = &self.result {
            out.extend(pretty(v));
        }
        out
    }
}

pub struct Control {
    store: Arc<Store>,
    daemon: Option<DaemonInfo>,
    vms: Arc<VmManager>,
    last_error: Mutex<(String, u64)>,
}

impl Control {
    /// Without a daemon: VMs can be defined and changed, not run.
    pub fn new(store: Arc<Store>, daemon: Option<DaemonInfo>) -> Self {
        let vms = VmManager::new(store.clone(), None);
        Self::with_vms(store, daemon, vms)
    }

    /// In a daemon, with the supervisor of its VMs.
    pub fn with_vms(store: Arc<Store>, daemon: Option<DaemonInfo>, vms: Arc<VmManager>) -> Self {
        Control {
            store,
            daemon,
            vms,
            last_error: Mutex::new((String::new(), 0)),
        }
    }

    pub fn vms(&self) -> &Arc<VmManager> {
        &self.vms
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Whether a daemon serves this store (the reconciler runs in the background).
    pub fn live(&self) -> bool {
        self.daemon.is_some()
    }

    pub fn daemon(&self) -> Option<&DaemonInfo> {
        self.daemon.as_ref()
    }

    /// Records why a request failed, for `.vault/last-error` and the daemon log.
    pub fn record_failure(&self, what: &str, e: &ControlError) {
        log::warn!("{what}: {e}");
        self.note_failure(what, e);
    }

    /// Records a failure for `.vault/last-error` only; the caller decides on logging.
    pub fn note_failure(&self, what: &str, e: &dyn std::fmt::Display) {
        let msg = format!("{what}: {e}");
        let mut last = self.last_error.lock();
        // The counter tells two identical failures in the same second apart.
        last.1 += 1;
        last.0 = format!("{} [{}] {msg}\n", crate::store::now_rfc3339(), last.1);
    }

    pub(crate) fn last_error(&self) -> String {
        self.last_error.lock().0.clone()
    }

    /// What `path` (relative to `.vault/`) is, if it exists.
    pub fn kind(&self, path: &[&str]) -> Option<Kind> {
        routes::find(self, path).map(|(r, _)| r.kind())
    }

    /// The entries of a directory.
    pub fn list(&self, path: &[&str]) -> Option<Vec<(String, Kind)>> {
        routes::list(self, path)
    }

    fn route<'a>(&self, path: &[&'a str]) -> Result<(&'static Route, Params<'a>), ControlError> {
        routes::find(self, path).ok_or_else(|| ControlError::not_found(path))
    }

    /// Reads a file's content (a snapshot taken at open).
    pub fn read(&self, path: &[&str], caller: &Caller) -> Result<Vec<u8>, ControlError> {
        let (route, p) = self.route(path)?;
        let read = route.read.ok_or_else(|| {
            ControlError::new(
                libc::EACCES,
                format!(".vault/{} is write-only", path.join("/")),
            )
        })?;
        Ok(read(self, &p, caller)?)
    }

    /// Parses one write to a control file into its request.
    pub fn parse(&self, path: &[&str], data: &[u8]) -> Result<Request, ControlError> {
        let (route, p) = self.route(path)?;
        let parse = route.write.ok_or_else(|| ControlError::read_only(path))?;
        Ok(parse(&p, data)?)
    }

    /// Carries out one write to a control file.
    pub fn write(
        &self,
        path: &[&str],
        data: &[u8],
        caller: &Caller,
    ) -> Result<Reply, ControlError> {
        let req = self.parse(path, data)?;
        self.execute(&req, caller)
    }

    /// mkdir: `keys/NAME` creates an RSA-2048 key.
    pub fn mkdir(&self, path: &[&str], caller: &Caller) -> Result<(), ControlError> {
        let refused = || {
            ControlError::from(StoreError::NotPermitted(format!(
                "mkdir is not supported in .vault/{}; only keys/NAME creates a key (see .vault/README)",
                path[..path.len().saturating_sub(1)].join("/")
            )))
        };
        let Some((name, parent)) = path.split_last() else {
            return Err(refused());
        };
        let (route, p) = routes::find(self, parent).ok_or_else(refused)?;
        let mkdir = route.mkdir.ok_or_else(refused)?;
        let req = mkdir(&p, name)?;
        self.execute(&req, caller).map(|_| ())
    }

    /// rmdir: `keys/NAME` soft-deletes a key, `deleted-keys/NAME` purges it,
    /// `disk-encryption-sets/NAME` deletes the set.
    pub fn rmdir(&self, path: &[&str], caller: &Caller) -> Result<(), ControlError> {
        let (route, p) = self.route(path)?;
        let rmdir = route.rmdir.ok_or_else(|| {
            ControlError::from(StoreError::NotPermitted(
                "this directory can't be removed (see .vault/README)".into(),
            ))
        })?;
        let req = rmdir(&p)?;
        self.execute(&req, caller).map(|_| ())
    }

    /// Carries out one typed request; its effects are enforced before it returns. A
    /// revocation that took effect in memory but could not be saved is enforced too,
    /// and still fails.
    pub fn execute(&self, req: &Request, caller: &Caller) -> Result<Reply, ControlError> {
        let r = match req {
            Request::Vault(r) => root::execute(self, r, caller),
            Request::Key(r) => key_request::execute(self, r, caller),
            Request::Set(r) => sets::execute(self, r),
            Request::Disk(r) => disks::execute(self, r),
            Request::Copy(r) => copies::execute(self, r),
            Request::Vm(r) => vms::execute(self, r),
            Request::Arm(r) => arm::execute(self, r, caller),
            Request::Vmss(r) => vmss::execute(self, r),
        };
        match r {
            Ok(result) => {
                // Creating, deleting and copying objects changes no key's state: no
                // pass to wait for (a pass costs a look at every object). A new object
                // under a revoked key can't unwrap its DEKs anyway, and the next pass
                // marks it revoked.
                let keyless = matches!(
                    req,
                    Request::Copy(_)
                        | Request::Disk(
                            DiskRequest::Create { .. }
                                | DiskRequest::Delete { .. }
                                | DiskRequest::Sku { .. }
                                | DiskRequest::Rekey { .. }
                        )
                );
                if !keyless {
                    self.after_change()?;
                }
                let deleted = match req {
                    Request::Disk(DiskRequest::Delete { name }) => {
                        Some((crate::store::ObjectKind::Disk, name.clone()))
                    }
                    Request::Copy(CopyRequest::Delete { kind, name }) => {
                        Some((kind.object(), name.clone()))
                    }
                    _ => None,
                };
                Ok(Reply { result, deleted })
            }
            Err(e @ StoreError::Vault(VaultError::RevokedNotSaved { .. })) => {
                let _ = self.after_change();
                Err(e.into())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// After a change: the daemon's reconciler acts on it at once (revocation,
    /// auto-rotation); without a daemon it runs here. Fails if the reconciler can't
    /// run, so that a change it must enforce is never reported as done.
    fn after_change(&self) -> Result<(), StoreError> {
        if self.live() {
            // The change itself is saved (a revocation is never refused); only its
            // enforcement is in doubt, and the data path fails closed meanwhile.
            self.store
                .reconcile_now(std::time::Duration::from_secs(1))
                .map_err(|e| match e {
                    StoreError::EnforcementDown(why) => {
                        StoreError::EnforcementDown(format!("the change was saved, but {why}"))
                    }
                    e => e,
                })
        } else {
            self.store.reconcile_offline();
            Ok(())
        }
    }
}

/// A write to a control file that confirms an irreversible step (`delete`, `purge`,
/// `recover`): `1` or the object's name, so that a stray write does nothing.
fn confirm_name(data: &[u8], name: &str, what: &str) -> Result<(), StoreError> {
    let t = args::text(data)?;
    if t == "1" || t.eq_ignore_ascii_case(name) {
        return Ok(());
    }
    confirm_refused(t, name, what)
}

/// As `confirm_name`, for disks, snapshots and images, whose names are case-sensitive
/// here (`Ab` and `ab` may both exist): the name must match exactly.
fn confirm_exact_name(data: &[u8], name: &str, what: &str) -> Result<(), StoreError> {
    let t = args::text(data)?;
    if t == "1" || t == name {
        return Ok(());
    }
    confirm_refused(t, name, what)
}

fn confirm_refused(t: &str, name: &str, what: &str) -> Result<(), StoreError> {
    Err(args::invalid(format!(
        "{what} takes `1` or the name ('{name}'), not '{}'",
        t.chars().take(40).collect::<String>()
    )))
}

/// `true`/`false` written to a flag file.
fn flag(data: &[u8], what: &str) -> Result<bool, StoreError> {
    let t = args::text(data)?;
    args::parse_bool(t).ok_or_else(|| {
        args::invalid(format!(
            "{what} takes true or false, not '{}'",
            t.chars().take(40).collect::<String>()
        ))
    })
}

fn pretty(v: &serde_json::Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("JSON serializes");
    s.push(b'\n');
    s
}

fn line(s: impl std::fmt::Display) -> Vec<u8> {
    format!("{s}\n").into_bytes()
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wire_tests;

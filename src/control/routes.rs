//! The route table: every node of the `.vault/` tree, declared once. Lookup, listing,
//! reads and writes all come from the same entries, so the tree can't disagree with
//! itself. A new area (snapshots, VMs) adds its routes and a request type.

use super::{Control, Kind, Request};
use crate::store::{ObjectKind, StoreError};
use crate::vault::{Caller, VaultError};
use std::sync::LazyLock;

/// One path segment: a fixed name, or a placeholder matching an existing object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Seg {
    Lit(&'static str),
    /// A key in the vault.
    Key,
    /// A key whose deletion took effect in memory but could not be saved: it stays
    /// reachable so the delete can be run again.
    UnsavedKey,
    /// A version of the key before it.
    Version,
    DeletedKey,
    Set,
    Disk,
    Snapshot,
    Image,
    /// A virtual machine (its name goes to `obj`).
    Vm,
    /// A VM scale set (its name goes to `obj`).
    Vmss,
}

/// The names a path's placeholders matched, and its last segment.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Params<'a> {
    pub key: &'a str,
    pub version: Option<&'a str>,
    pub set: &'a str,
    pub disk: &'a str,
    /// A snapshot's or image's name.
    pub obj: &'a str,
    /// The last segment (a file name), for handlers shared by several files.
    pub file: &'a str,
}

pub(super) type ReadFn = fn(&Control, &Params, &Caller) -> Result<Vec<u8>, StoreError>;
pub(super) type ParseFn = fn(&Params, &[u8]) -> Result<Request, StoreError>;
pub(super) type MkdirFn = fn(&Params, &str) -> Result<Request, StoreError>;
pub(super) type RmdirFn = fn(&Params) -> Result<Request, StoreError>;

pub(super) struct Route {
    pub path: Vec<Seg>,
    pub dir: bool,
    pub read: Option<ReadFn>,
    /// Parses a write into its request.
    pub write: Option<ParseFn>,
    /// On a directory: mkdir of a new entry in it.
    pub mkdir: Option<MkdirFn>,
    /// On a directory: rmdir of it.
    pub rmdir: Option<RmdirFn>,
    /// Exists only in a daemon (`daemon.json`).
    pub daemon_only: bool,
}

impl Route {
    pub fn dir(path: &[Seg]) -> Route {
        Route {
            path: path.to_vec(),
            dir: true,
            read: None,
            write: None,
            mkdir: None,
            rmdir: None,
            daemon_only: false,
        }
    }

    pub fn file(path: &[Seg], read: Option<ReadFn>, write: Option<ParseFn>) -> Route {
        Route {
            dir: false,
            read,
            write,
            ..Route::dir(path)
        }
    }

    pub fn r(path: &[Seg], read: ReadFn) -> Route {
        Route::file(path, Some(read), None)
    }

    pub fn w(path: &[Seg], write: ParseFn) -> Route {
        Route::file(path, None, Some(write))
    }

    pub fn rw(path: &[Seg], read: ReadFn, write: ParseFn) -> Route {
        Route::file(path, Some(read), Some(write))
    }

    pub fn mkdir(self, f: MkdirFn) -> Route {
        Route {
            mkdir: Some(f),
            ..self
        }
    }

    pub fn rmdir(self, f: RmdirFn) -> Route {
        Route {
            rmdir: Some(f),
            ..self
        }
    }

    pub fn daemon_only(self) -> Route {
        Route {
            daemon_only: true,
            ..self
        }
    }

    pub fn kind(&self) -> Kind {
        if self.dir {
            Kind::Dir
        } else {
            Kind::File {
                read: self.read.is_some(),
                write: self.write.is_some(),
            }
        }
    }
}

static ROUTES: LazyLock<Vec<Route>> = LazyLock::new(|| {
    let mut v = vec![Route::dir(&[])];
    v.extend(super::root::routes());
    v.extend(super::arm::routes());
    v.extend(super::keys::routes());
    v.extend(super::sets::routes());
    v.extend(super::disks::routes());
    v.extend(super::copies::routes());
    v.extend(super::vms::routes());
    v.extend(super::vmss::routes());
    v
});

fn exists(c: &Control, seg: Seg, name: &str, p: &Params) -> bool {
    let vault = c.store.vault();
    match seg {
        Seg::Lit(l) => l == name,
        Seg::Key => vault.exists(name),
        Seg::UnsavedKey => vault.delete_unsaved(name) && !vault.exists(name),
        Seg::Version => vault
            .version_ids(p.key)
            .is_ok_and(|vs| vs.iter().any(|x| x.eq_ignore_ascii_case(name))),
        // A deleted key or a set whose files are corrupt is still there; using it
        // says why it can't be used.
        Seg::DeletedKey => !matches!(
            vault.deleted_key(name),
            Err(VaultError::DeletedKeyNotFound(_))
        ),
        Seg::Set => !matches!(c.store.keyring().des(name), Err(StoreError::DesNotFound(_))),
        Seg::Disk => c.store.get(name).is_some(),
        Seg::Snapshot => c.store.get_kind(ObjectKind::Snapshot, name).is_some(),
        Seg::Image => c.store.get_kind(ObjectKind::Image, name).is_some(),
        Seg::Vm => c.store.vm_get(name).is_ok(),
        // An unreadable record is still there; using it says why.
        Seg::Vmss => c.store.vmss_names().iter().any(|n| n == name),
    }
}

fn capture<'a>(p: &mut Params<'a>, seg: Seg, name: &'a str) {
    match seg {
        Seg::Key | Seg::UnsavedKey | Seg::DeletedKey => p.key = name,
        Seg::Version => p.version = Some(name),
        Seg::Set => p.set = name,
        Seg::Disk => p.disk = name,
        Seg::Snapshot | Seg::Image | Seg::Vm | Seg::Vmss => p.obj = name,
        Seg::Lit(_) => {}
    }
}

/// Whether `path` matches `segs`; fixed names are compared first, so most routes are
/// ruled out without asking the vault or the store.
fn matches<'a>(c: &Control, segs: &[Seg], path: &[&'a str]) -> Option<Params<'a>> {
    if segs.len() != path.len() {
        return None;
    }
    let lits_match = segs
        .iter()
        .zip(path)
        .all(|(s, n)| !matches!(s, Seg::Lit(l) if l != n));
    if !lits_match {
        return None;
    }
    let mut p = Params::default();
    for (seg, name) in segs.iter().zip(path) {
        if !exists(c, *seg, name, &p) {
            return None;
        }
        capture(&mut p, *seg, name);
    }
    p.file = path.last().copied().unwrap_or("");
    Some(p)
}

/// The route a path names, with its parameters.
pub(super) fn find<'a>(c: &Control, path: &[&'a str]) -> Option<(&'static Route, Params<'a>)> {
    ROUTES.iter().find_map(|r| {
        if r.daemon_only && !c.live() {
            return None;
        }
        matches(c, &r.path, path).map(|p| (r, p))
    })
}

/// The entries of a directory, in table order.
pub(super) fn list(c: &Control, path: &[&str]) -> Option<Vec<(String, Kind)>> {
    let (dir, p) = find(c, path)?;
    if !dir.dir {
        return None;
    }
    let vault = c.store.vault();
    let mut out: Vec<(String, Kind)> = Vec::new();
    for r in ROUTES.iter() {
        if r.path.len() != path.len() + 1 || (r.daemon_only && !c.live()) {
            continue;
        }
        let (last, parent) = r.path.split_last().expect("child routes are not empty");
        if matches(c, parent, path).is_none() {
            continue;
        }
        let names = match last {
            Seg::Lit(n) => vec![n.to_string()],
            Seg::Key => vault.key_names(),
            Seg::UnsavedKey => Vec::new(),
            Seg::Version => vault.version_ids(p.key).unwrap_or_default(),
            Seg::DeletedKey => vault.deleted_names(),
            Seg::Set => c.store.des_list().into_iter().map(|d| d.name).collect(),
            Seg::Disk => names(c, ObjectKind::Disk),
            Seg::Snapshot => names(c, ObjectKind::Snapshot),
            Seg::Image => names(c, ObjectKind::Image),
            Seg::Vm => c.store.vm_list().into_iter().map(|r| r.name).collect(),
            Seg::Vmss => c.store.vmss_names(),
        };
        for n in names {
            if !out.iter().any(|(x, _)| *x == n) {
                out.push((n, r.kind()));
            }
        }
    }
    Some(out)
}

fn names(c: &Control, kind: ObjectKind) -> Vec<String> {
    c.store.list_kind(kind).iter().map(|d| d.name()).collect()
}

#[cfg(test)]
pub(super) fn all() -> &'static [Route] {
    &ROUTES
}

//! Inodes and nodes: what each inode is, its attributes and entries, and the
//! handles open on it.

use super::*;

impl DiskVaultFs {
    /// Records a failed request on a disk handle; logs the first one per handle and
    /// then a count every so often, so a guest hammering a revoked disk can't flood
    /// daemon.log. Returns its errno.
    pub(super) fn fail_io(&self, fh: FileHandle, what: &str, e: StoreError) -> Errno {
        const EVERY: Duration = Duration::from_secs(10);
        self.control.note_failure(what, &e);
        let now = std::time::Instant::now();
        let mut m = self.io_failures.lock();
        match m.get_mut(&fh.0) {
            None => {
                m.insert(fh.0, (0, now));
                log::warn!("{what}: {e} (further failures on this handle are counted)");
            }
            Some((n, since)) => {
                *n += 1;
                if now.duration_since(*since) >= EVERY {
                    log::warn!(
                        "{what}: {n} more failed requests on this handle in {} s; last: {e}",
                        now.duration_since(*since).as_secs()
                    );
                    *n = 0;
                    *since = now;
                }
            }
        }
        errno(&e)
    }

    /// At close: the count of failures not logged yet, if any.
    pub(super) fn io_failures_closed(&self, fh: FileHandle, name: &str) {
        if let Some((n, _)) = self.io_failures.lock().remove(&fh.0) {
            if n > 0 {
                log::warn!("'{name}': {n} more failed requests on a handle before it was closed");
            }
        }
    }

    /// Records and logs a failure; returns its errno.
    pub(super) fn fail(&self, what: &str, e: impl Into<ControlError>) -> Errno {
        let e = e.into();
        self.control.record_failure(what, &e);
        Errno::from_i32(e.errno)
    }

    pub(super) fn ctl_ino(&self, path: &str) -> u64 {
        if path.is_empty() {
            return VAULT;
        }
        if let Some(&i) = self.ctl_inodes.read().by_path.get(path) {
            return i;
        }
        let mut t = self.ctl_inodes.write();
        if let Some(&i) = t.by_path.get(path) {
            return i;
        }
        let i = CTL_BASE + t.by_path.len() as u64;
        t.by_path.insert(path.to_string(), i);
        t.by_ino.insert(i, path.to_string());
        i
    }

    pub(super) fn ctl_path(&self, ino: u64) -> Option<String> {
        if ino == VAULT {
            return Some(String::new());
        }
        self.ctl_inodes.read().by_ino.get(&ino).cloned()
    }

    pub(super) fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            DISKS => Some(Node::Disks),
            SNAPSHOTS => Some(Node::Snapshots),
            IMAGES => Some(Node::Images),
            i if i >= CTL_BASE || i == VAULT => {
                let path = self.ctl_path(i)?;
                let kind = self.control.kind(&split(&path))?;
                Some(Node::Ctl(path, kind))
            }
            i if i >= DISK_BASE => self
                .store
                .get_by_serial(i - DISK_BASE)
                .or_else(|| self.unlinked_disk(i - DISK_BASE))
                .map(Node::DiskFile),
            _ => None,
        }
    }

    /// A disk unlinked while open: it lives on through its handles until the last
    /// close, as POSIX says (fstat and ftruncate on the fd keep working).
    pub(super) fn unlinked_disk(&self, serial: u64) -> Option<Arc<Disk>> {
        self.handles.read().values().find_map(|h| match &**h {
            Handle::Disk(d) if d.serial == serial => Some(d.clone()),
            _ => None,
        })
    }

    pub(super) fn attr(
        &self,
        ino: u64,
        kind: FileType,
        perm: u16,
        size: u64,
        mtime: SystemTime,
    ) -> FileAttr {
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: mtime,
            mtime,
            ctime: mtime,
            crtime: self.started,
            kind,
            perm,
            nlink: if kind == FileType::Directory { 2 } else { 1 },
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    pub(super) fn node_attr(&self, ino: u64, node: &Node) -> (FileAttr, Duration) {
        let dir = |perm| {
            (
                self.attr(ino, FileType::Directory, perm, 0, self.started),
                ZERO_TTL,
            )
        };
        match node {
            Node::Root | Node::Disks | Node::Snapshots | Node::Images => dir(0o755),
            Node::Ctl(_, Kind::Dir) => dir(0o700),
            // Control files show size 0, as in /proc; they are read to EOF.
            Node::Ctl(_, k) => (
                self.attr(ino, FileType::RegularFile, k.mode(), 0, SystemTime::now()),
                ZERO_TTL,
            ),
            Node::DiskFile(d) => {
                let perm = if d.kind.read_only() { 0o400 } else { 0o600 };
                let mut a = self.attr(ino, FileType::RegularFile, perm, d.size(), d.mtime());
                a.blocks = d.allocated_bytes() / 512;
                (a, DISK_TTL)
            }
        }
    }

    /// (inode, type, name) of a directory's entries.
    pub(super) fn children(&self, node: &Node) -> Option<Vec<(u64, FileType, String)>> {
        use FileType::*;
        let v = match node {
            Node::Root => vec![
                (DISKS, Directory, "disks".into()),
                (SNAPSHOTS, Directory, "snapshots".into()),
                (IMAGES, Directory, "images".into()),
                (VAULT, Directory, ".vault".into()),
            ],
            Node::Disks | Node::Snapshots | Node::Images => self
                .store
                .list_kind(dir_kind(node)?)
                .iter()
                .map(|d| (disk_ino(d), RegularFile, d.name()))
                .collect(),
            Node::Ctl(path, Kind::Dir) => self
                .control
                .list(&split(path))?
                .into_iter()
                .map(|(name, k)| {
                    let t = if k == Kind::Dir {
                        Directory
                    } else {
                        RegularFile
                    };
                    (self.ctl_ino(&join(path, &name)), t, name)
                })
                .collect(),
            _ => return None,
        };
        Some(v)
    }

    pub(super) fn child(&self, parent: &Node, name: &OsStr) -> Option<(u64, Node)> {
        let name = name.to_str()?;
        match parent {
            Node::Ctl(path, Kind::Dir) => {
                let p = join(path, name);
                let kind = self.control.kind(&split(&p))?;
                Some((self.ctl_ino(&p), Node::Ctl(p, kind)))
            }
            Node::Disks | Node::Snapshots | Node::Images => self
                .store
                .get_kind(dir_kind(parent)?, name)
                .map(|d| (disk_ino(&d), Node::DiskFile(d))),
            Node::Root => {
                let ino = match name {
                    "disks" => DISKS,
                    "snapshots" => SNAPSHOTS,
                    "images" => IMAGES,
                    ".vault" => VAULT,
                    _ => return None,
                };
                Some((ino, self.node(ino)?))
            }
            _ => None,
        }
    }

    pub(super) fn parent_of(&self, node: &Node) -> u64 {
        match node {
            Node::Ctl(path, _) if !path.is_empty() => match path.rsplit_once('/') {
                Some((parent, _)) => self.ctl_ino(parent),
                None => VAULT,
            },
            _ => ROOT,
        }
    }

    pub(super) fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    pub(super) fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles.read().get(&fh.0).cloned()
    }

    pub(super) fn disk_handle(&self, fh: FileHandle) -> Result<Arc<Disk>, Errno> {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => Ok(d.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    pub(super) fn open_disk(
        &self,
        d: Arc<Disk>,
        flags: i32,
    ) -> Result<(FileHandle, FopenFlags), Errno> {
        d.open()
            .map_err(|e| self.fail(&format!("open '{}'", d.name()), e))?;
        let fopen = if flags & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        Ok((self.add_handle(Handle::Disk(d)), fopen))
    }

    pub(super) fn name_str<'a>(&self, name: &'a OsStr) -> Result<&'a str, Errno> {
        name.to_str().ok_or(Errno::EINVAL)
    }

    pub(super) fn create_disk(&self, parent: INodeNo, name: &OsStr) -> Result<Arc<Disk>, Errno> {
        if parent.0 != DISKS {
            return Err(Errno::EACCES);
        }
        let name = self.name_str(name)?;
        control::check_reserved(name)
            .map_err(|e| self.fail(&format!("create disk '{name}'"), e))?;
        self.store
            .create_disk(name, &CreateOptions::default())
            .map_err(|e| self.fail(&format!("create disk '{name}'"), e))
    }

    /// The control-tree path of a directory inode, for mkdir/rmdir.
    pub(super) fn ctl_dir(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        match self.node(parent.0) {
            Some(Node::Ctl(p, Kind::Dir)) => Ok(join(&p, self.name_str(name)?)),
            Some(_) => Err(Errno::EPERM),
            None => Err(Errno::ENOENT),
        }
    }
}

/// The kind of object a data directory holds.
pub(super) fn dir_kind(node: &Node) -> Option<crate::store::ObjectKind> {
    use crate::store::ObjectKind;
    match node {
        Node::Disks => Some(ObjectKind::Disk),
        Node::Snapshots => Some(ObjectKind::Snapshot),
        Node::Images => Some(ObjectKind::Image),
        _ => None,
    }
}

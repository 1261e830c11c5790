//! The FUSE frontend. It maps paths and inodes to store calls and store errors to
//! errnos; it holds no crypto and no format logic.
//!
//! Page cache: disk files opened without O_DIRECT use the kernel page cache, which is
//! dropped on every open (no FOPEN_KEEP_CACHE). `DiskVaultFs::invalidate` drops a disk's
//! cached pages through the session notifier, so revocation can remove cached plaintext.

use crate::control::{self, Control, ControlError, Kind};
use crate::store::{CreateOptions, DaemonInfo, Disk, SeekKind, Store, StoreError};
use crate::vault::Caller;
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

const ROOT: u64 = 1;
const DISKS: u64 = 2;
const SNAPSHOTS: u64 = 3;
/// `.vault/`, the root of the control tree.
const VAULT: u64 = 4;
/// Disk files: DISK_BASE + the disk's serial.
const DISK_BASE: u64 = 1000;
/// Control-tree paths get inodes from here on, interned by path.
const CTL_BASE: u64 = 1 << 40;

const DISK_TTL: Duration = Duration::from_secs(1);
const ZERO_TTL: Duration = Duration::ZERO;

fn disk_ino(d: &Disk) -> u64 {
    DISK_BASE + d.serial
}

/// What an inode is.
#[derive(Clone)]
enum Node {
    Root,
    Disks,
    Snapshots,
    DiskFile(Arc<Disk>),
    /// A path in the control tree (relative to `.vault/`) and what it is.
    Ctl(String, Kind),
}

enum Handle {
    Disk(Arc<Disk>),
    /// A control file: its path, its content as it was at open (for reads), the reply
    /// to the last write through this handle (what a read shows once set), and the
    /// writes gathered so far of a command that spans several (`keys/import`).
    Control {
        path: String,
        content: Vec<u8>,
        reply: parking_lot::Mutex<Option<Vec<u8>>>,
        pending: parking_lot::Mutex<Vec<u8>>,
        /// A command has been carried out through this handle.
        ran: std::sync::atomic::AtomicBool,
    },
}

/// Inode numbers of control-tree paths, assigned on first lookup and kept for the
/// life of the mount (the tree is small).
#[derive(Default)]
struct CtlInodes {
    by_path: HashMap<String, u64>,
    by_ino: HashMap<u64, String>,
}

pub struct DiskVaultFs {
    store: Arc<Store>,
    control: Control,
    uid: u32,
    gid: u32,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    ctl_inodes: RwLock<CtlInodes>,
    notifier: Arc<OnceLock<Notifier>>,
    started: SystemTime,
    /// Failed requests per disk handle not logged one by one: (count, since).
    io_failures: parking_lot::Mutex<HashMap<u64, (u64, std::time::Instant)>>,
}

/// The errno a program sees for a store error (mapped in `control`, once).
fn errno(e: &StoreError) -> Errno {
    Errno::from_i32(control::errno(e))
}

fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

fn split(path: &str) -> Vec<&str> {
    if path.is_empty() {
        Vec::new()
    } else {
        path.split('/').collect()
    }
}

impl DiskVaultFs {
    pub fn new(store: Arc<Store>, daemon: DaemonInfo) -> Self {
        // Safe because: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        DiskVaultFs {
            control: Control::new(store.clone(), Some(daemon)),
            store,
            uid,
            gid,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ctl_inodes: RwLock::new(CtlInodes::default()),
            notifier: Arc::new(OnceLock::new()),
            started: SystemTime::now(),
            io_failures: Default::default(),
        }
    }

    /// Slot for the session notifier, filled once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Carries out one control command and keeps its reply on the handle, so the
    /// writer (the CLI) reads its own outcome, never another process's.
    fn run_write(
        &self,
        path: &str,
        data: &[u8],
        caller: &Caller,
        last: &parking_lot::Mutex<Option<Vec<u8>>>,
    ) -> Result<(), Errno> {
        let parts = split(path);
        match self.control.write(&parts, data, caller) {
            Ok(()) => {
                *last.lock() = Some(b"ok\n".to_vec());
                // A disk deleted through .vault/ must vanish from disks/ at once, not
                // when the kernel's cached entry times out.
                if let ["disks", name, "delete"] = parts[..] {
                    if let Some(n) = self.notifier.get() {
                        let _ = n.inval_entry(INodeNo(DISKS), OsStr::new(name));
                    }
                }
                Ok(())
            }
            Err(e) => {
                *last.lock() = Some(format!("error: {e}\n").into_bytes());
                Err(self.fail(&format!("write .vault/{path}"), e))
            }
        }
    }

    /// Records a failed request on a disk handle; logs the first one per handle and
    /// then a count every so often, so a guest hammering a revoked disk can't flood
    /// daemon.log. Returns its errno.
    fn fail_io(&self, fh: FileHandle, what: &str, e: StoreError) -> Errno {
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
    fn io_failures_closed(&self, fh: FileHandle, name: &str) {
        if let Some((n, _)) = self.io_failures.lock().remove(&fh.0) {
            if n > 0 {
                log::warn!("'{name}': {n} more failed requests on a handle before it was closed");
            }
        }
    }

    /// Records and logs a failure; returns its errno.
    fn fail(&self, what: &str, e: impl Into<ControlError>) -> Errno {
        let e = e.into();
        self.control.record_failure(what, &e);
        Errno::from_i32(e.errno)
    }

    fn ctl_ino(&self, path: &str) -> u64 {
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

    fn ctl_path(&self, ino: u64) -> Option<String> {
        if ino == VAULT {
            return Some(String::new());
        }
        self.ctl_inodes.read().by_ino.get(&ino).cloned()
    }

    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT => Some(Node::Root),
            DISKS => Some(Node::Disks),
            SNAPSHOTS => Some(Node::Snapshots),
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
    fn unlinked_disk(&self, serial: u64) -> Option<Arc<Disk>> {
        self.handles.read().values().find_map(|h| match &**h {
            Handle::Disk(d) if d.serial == serial => Some(d.clone()),
            _ => None,
        })
    }

    fn attr(&self, ino: u64, kind: FileType, perm: u16, size: u64, mtime: SystemTime) -> FileAttr {
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

    fn node_attr(&self, ino: u64, node: &Node) -> (FileAttr, Duration) {
        let dir = |perm| {
            (
                self.attr(ino, FileType::Directory, perm, 0, self.started),
                ZERO_TTL,
            )
        };
        match node {
            Node::Root | Node::Disks | Node::Snapshots => dir(0o755),
            Node::Ctl(_, Kind::Dir) => dir(0o700),
            // Control files show size 0, as in /proc; they are read to EOF.
            Node::Ctl(_, k) => (
                self.attr(ino, FileType::RegularFile, k.mode(), 0, SystemTime::now()),
                ZERO_TTL,
            ),
            Node::DiskFile(d) => {
                let mut a = self.attr(ino, FileType::RegularFile, 0o600, d.size(), d.mtime());
                a.blocks = d.allocated_bytes() / 512;
                (a, DISK_TTL)
            }
        }
    }

    /// (inode, type, name) of a directory's entries.
    fn children(&self, node: &Node) -> Option<Vec<(u64, FileType, String)>> {
        use FileType::*;
        let v = match node {
            Node::Root => vec![
                (DISKS, Directory, "disks".into()),
                (SNAPSHOTS, Directory, "snapshots".into()),
                (VAULT, Directory, ".vault".into()),
            ],
            Node::Disks => self
                .store
                .list()
                .iter()
                .map(|d| (disk_ino(d), RegularFile, d.name()))
                .collect(),
            Node::Snapshots => vec![],
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

    fn child(&self, parent: &Node, name: &OsStr) -> Option<(u64, Node)> {
        let name = name.to_str()?;
        match parent {
            Node::Ctl(path, Kind::Dir) => {
                let p = join(path, name);
                let kind = self.control.kind(&split(&p))?;
                Some((self.ctl_ino(&p), Node::Ctl(p, kind)))
            }
            Node::Disks => self
                .store
                .get(name)
                .map(|d| (disk_ino(&d), Node::DiskFile(d))),
            Node::Root => {
                let ino = match name {
                    "disks" => DISKS,
                    "snapshots" => SNAPSHOTS,
                    ".vault" => VAULT,
                    _ => return None,
                };
                Some((ino, self.node(ino)?))
            }
            _ => None,
        }
    }

    fn parent_of(&self, node: &Node) -> u64 {
        match node {
            Node::Ctl(path, _) if !path.is_empty() => match path.rsplit_once('/') {
                Some((parent, _)) => self.ctl_ino(parent),
                None => VAULT,
            },
            _ => ROOT,
        }
    }

    fn add_handle(&self, h: Handle) -> FileHandle {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.handles.write().insert(fh, Arc::new(h));
        FileHandle(fh)
    }

    fn handle(&self, fh: FileHandle) -> Option<Arc<Handle>> {
        self.handles.read().get(&fh.0).cloned()
    }

    fn disk_handle(&self, fh: FileHandle) -> Result<Arc<Disk>, Errno> {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => Ok(d.clone()),
            _ => Err(Errno::EBADF),
        }
    }

    fn open_disk(&self, d: Arc<Disk>, flags: i32) -> Result<(FileHandle, FopenFlags), Errno> {
        d.open()
            .map_err(|e| self.fail(&format!("open '{}'", d.name()), e))?;
        let fopen = if flags & libc::O_DIRECT != 0 {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        };
        Ok((self.add_handle(Handle::Disk(d)), fopen))
    }

    fn name_str<'a>(&self, name: &'a OsStr) -> Result<&'a str, Errno> {
        name.to_str().ok_or(Errno::EINVAL)
    }

    fn create_disk(&self, parent: INodeNo, name: &OsStr) -> Result<Arc<Disk>, Errno> {
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
    fn ctl_dir(&self, parent: INodeNo, name: &OsStr) -> Result<String, Errno> {
        match self.node(parent.0) {
            Some(Node::Ctl(p, Kind::Dir)) => Ok(join(&p, self.name_str(name)?)),
            Some(_) => Err(Errno::EPERM),
            None => Err(Errno::ENOENT),
        }
    }
}

impl Filesystem for DiskVaultFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_write(1 << 20);
        let _ =
            config.add_capabilities(InitFlags::FUSE_ASYNC_DIO | InitFlags::FUSE_PARALLEL_DIROPS);
        Ok(())
    }

    fn destroy(&mut self) {
        self.handles.write().clear();
        self.store.shutdown();
        let _ = std::fs::remove_file(self.store.root().join(crate::store::DAEMON_FILE));
        log::info!("unmounted; keys dropped");
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let Some(p) = self.node(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        match self.child(&p, name) {
            Some((ino, node)) => {
                let (attr, ttl) = self.node_attr(ino, &node);
                reply.entry(&ttl, &attr, Generation(0));
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.node(ino.0) {
            Some(node) => {
                let (attr, ttl) = self.node_attr(ino.0, &node);
                reply.attr(&ttl, &attr);
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Node::DiskFile(d) = &node else {
            // Control files and directories have fixed attributes; writable control
            // files take the truncation to 0 that `echo >` sends.
            let writable = matches!(node, Node::Ctl(_, Kind::File { write: true, .. }));
            if size.is_some_and(|s| s != 0 || !writable)
                || mode.is_some()
                || uid.is_some()
                || gid.is_some()
            {
                return reply.error(Errno::EACCES);
            }
            let (a, t) = self.node_attr(ino.0, &node);
            return reply.attr(&t, &a);
        };
        // Disk files stay 0600 and the mounting user's: a chmod or chown (as `cp -a`
        // and rsync send) is accepted and ignored, so copying images just works.
        if mode.is_some_and(|m| m & 0o7777 != 0o600)
            || uid.is_some_and(|u| u != self.uid)
            || gid.is_some_and(|g| g != self.gid)
        {
            log::debug!(
                "disk '{}': chmod/chown ignored (disk files are always 0600, owned by the mounting user)",
                d.name()
            );
        }
        if let Some(s) = size {
            if let Err(e) = d.set_size(s) {
                return reply.error(self.fail(&format!("truncate '{}'", d.name()), e));
            }
        }
        if let Some(t) = mtime {
            d.set_mtime(match t {
                TimeOrNow::SpecificTime(t) => t,
                TimeOrNow::Now => SystemTime::now(),
            });
        }
        let (a, t) = self.node_attr(ino.0, &node);
        reply.attr(&t, &a);
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        if mode & libc::S_IFMT != libc::S_IFREG {
            return reply.error(Errno::EPERM);
        }
        match self.create_disk(parent, name) {
            Ok(d) => {
                let ino = disk_ino(&d);
                let (a, t) = self.node_attr(ino, &Node::DiskFile(d));
                reply.entry(&t, &a, Generation(0));
            }
            Err(e) => reply.error(e),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let path = match self.ctl_dir(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        if let Err(e) = self.control.mkdir(&split(&path), &Caller::user(req.uid())) {
            return reply.error(self.fail(&format!("mkdir .vault/{path}"), e));
        }
        let ino = self.ctl_ino(&path);
        let (a, t) = self.node_attr(ino, &Node::Ctl(path, Kind::Dir));
        reply.entry(&t, &a, Generation(0));
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 != DISKS {
            return reply.error(match self.node(parent.0) {
                Some(p) if self.child(&p, name).is_some() => Errno::EPERM,
                _ => Errno::ENOENT,
            });
        }
        let Ok(name) = self.name_str(name) else {
            return reply.error(Errno::ENOENT);
        };
        match self.store.delete_disk(name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("delete disk '{name}'"), e)),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let path = match self.ctl_dir(parent, name) {
            Ok(p) => p,
            Err(e) => return reply.error(e),
        };
        match self.control.rmdir(&split(&path), &Caller::user(req.uid())) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("rmdir .vault/{path}"), e)),
        }
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        // Only disks rename, within disks/. EPERM, not EXDEV: on EXDEV `mv` would copy
        // and delete, which in .vault/ means a new key with fresh key material.
        if parent.0 != DISKS || newparent.0 != DISKS {
            let e = StoreError::NotPermitted(
                "only disks can be renamed, within disks/; keys, sets and control files can't"
                    .into(),
            );
            return reply.error(self.fail("rename", e));
        }
        let (Ok(from), Ok(to)) = (self.name_str(name), self.name_str(newname)) else {
            return reply.error(Errno::EINVAL);
        };
        if let Err(e) = control::check_reserved(to) {
            return reply.error(self.fail(&format!("rename disk '{from}' to '{to}'"), e));
        }
        if flags.bits() & libc::RENAME_EXCHANGE != 0 {
            return reply.error(Errno::EINVAL);
        }
        let replace = flags.bits() & libc::RENAME_NOREPLACE == 0;
        match self.store.rename_disk(from, to, replace) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("rename disk '{from}' to '{to}'"), e)),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let acc = flags.0 & libc::O_ACCMODE;
        let (reading, writing) = (acc != libc::O_WRONLY, acc != libc::O_RDONLY);
        match self.node(ino.0) {
            Some(Node::DiskFile(d)) => match self.open_disk(d, flags.0) {
                Ok((fh, f)) => reply.opened(fh, f),
                Err(e) => reply.error(e),
            },
            Some(Node::Ctl(path, Kind::File { read, write })) => {
                // Root bypasses mode bits, so the file's own rules are checked here.
                // A writable file may be opened for reading too: to read the reply.
                if (reading && !read && !write) || (writing && !write) {
                    return reply.error(Errno::EACCES);
                }
                let content = if reading && read {
                    match self.control.read(&split(&path), &Caller::user(req.uid())) {
                        Ok(c) => c,
                        Err(e) => return reply.error(self.fail(&format!("read .vault/{path}"), e)),
                    }
                } else {
                    Vec::new()
                };
                let fh = self.add_handle(Handle::Control {
                    path,
                    content,
                    reply: Default::default(),
                    pending: Default::default(),
                    ran: Default::default(),
                });
                reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
            }
            Some(_) => reply.error(Errno::EISDIR),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let d = match self.create_disk(parent, name) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let ino = disk_ino(&d);
        match self.open_disk(d.clone(), flags) {
            Ok((fh, f)) => {
                let (a, t) = self.node_attr(ino, &Node::DiskFile(d));
                reply.created(&t, &a, Generation(0), fh, f);
            }
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyData,
    ) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => {
                // Counted until replied, so revocation can drop cached pages after it.
                let _inflight = d.inflight();
                match d.read(offset, size as usize) {
                    Ok(buf) => reply.data(&buf),
                    Err(e) => reply.error(self.fail_io(fh, &format!("read '{}'", d.name()), e)),
                }
            }
            Some(Handle::Control {
                content,
                reply: last,
                ..
            }) => {
                let last = last.lock();
                let content = last.as_deref().unwrap_or(content);
                let start = (offset as usize).min(content.len());
                let end = (start + size as usize).min(content.len());
                reply.data(&content[start..end]);
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => {
                let _inflight = d.inflight();
                match d.write(offset, data) {
                    Ok(n) => reply.written(n as u32),
                    Err(e) => reply.error(self.fail_io(fh, &format!("write '{}'", d.name()), e)),
                }
            }
            // Each write(2) to a control file is one complete command, as in sysfs;
            // a PEM import may come in several, gathered until it is complete.
            Some(Handle::Control {
                path,
                reply: last,
                pending,
                ran,
                ..
            }) => {
                // One command per open file: a later write continues the one before
                // (bash's printf writes each line separately), so it is refused rather
                // than run as a second command; a blank one, like a final newline
                // written on its own, is fine.
                // The position is no guide: a refused write doesn't advance it.
                if ran.load(Ordering::Acquire) {
                    if data.iter().all(u8::is_ascii_whitespace) {
                        return reply.written(data.len() as u32);
                    }
                    let e = StoreError::InvalidArgument(
                        "one command per open file: an earlier write through this file was already taken as the command, carried out or refused (shells write each line of printf or echo -e separately); write each command with its own echo".into(),
                    );
                    // Not in last-error: that keeps the reason of the command itself.
                    log::info!("write .vault/{path}: {e}");
                    *last.lock() = Some(format!("error: {e}\n").into_bytes());
                    return reply.error(errno(&e));
                }
                let caller = Caller::user(req.uid());
                let command = if control::gathers(&split(path)) {
                    let mut p = pending.lock();
                    // One allocation up front: no unzeroized copies of key material.
                    if p.capacity() == 0 {
                        p.reserve_exact(control::MAX_CONTROL_WRITE + (1 << 20));
                    }
                    p.extend_from_slice(data);
                    if !control::import_complete(&p) && p.len() <= control::MAX_CONTROL_WRITE {
                        return reply.written(data.len() as u32);
                    }
                    std::mem::take(&mut *p)
                } else {
                    data.to_vec()
                };
                let command = zeroize::Zeroizing::new(command);
                ran.store(true, Ordering::Release);
                match self.run_write(path, &command, &caller, last) {
                    Ok(()) => reply.written(data.len() as u32),
                    Err(e) => reply.error(e),
                }
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: fuser::LockOwner,
        reply: ReplyEmpty,
    ) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => match d.persist_size() {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail_io(fh, &format!("flush '{}'", d.name()), e)),
            },
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = self.handles.write().remove(&fh.0);
        match h.as_deref() {
            Some(Handle::Disk(d)) => {
                self.io_failures_closed(fh, &d.name());
                if let Err(e) = d.release() {
                    return reply.error(self.fail(&format!("close '{}'", d.name()), e));
                }
            }
            // An import left incomplete is carried out at the last close; its error
            // can only go to last-error and the log.
            Some(Handle::Control {
                path,
                reply: last,
                pending,
                ..
            }) => {
                let rest = zeroize::Zeroizing::new(std::mem::take(&mut *pending.lock()));
                if !rest.is_empty() {
                    let _ = self.run_write(path, &rest, &Caller::user(req.uid()), last);
                }
            }
            None => {}
        }
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.disk_handle(fh) {
            Ok(d) => match d.sync() {
                Ok(()) => reply.ok(),
                Err(e) => reply.error(self.fail_io(fh, &format!("fsync '{}'", d.name()), e)),
            },
            Err(_) => reply.ok(),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let Some(node) = self.node(ino.0) else {
            return reply.error(Errno::ENOENT);
        };
        let Some(children) = self.children(&node) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (self.parent_of(&node), FileType::Directory, "..".to_string()),
        ];
        entries.extend(children);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(ino), (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let mut st: libc::statvfs = unsafe {
            // Safe because: statvfs is plain old data; all-zero is a valid value.
            std::mem::zeroed()
        };
        let path = std::ffi::CString::new(self.store.root().as_os_str().as_encoded_bytes())
            .unwrap_or_default();
        // Safe because: `path` is a valid NUL-terminated string and `st` a valid out-pointer.
        let rc = unsafe { libc::statvfs(path.as_ptr(), &mut st) };
        if rc != 0 {
            return reply.error(Errno::EIO);
        }
        reply.statfs(
            st.f_blocks,
            st.f_bfree,
            st.f_bavail,
            st.f_files,
            st.f_ffree,
            st.f_bsize as u32,
            255,
            st.f_frsize as u32,
        );
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let d = match self.disk_handle(fh) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let keep = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let r = match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 => d.allocate(offset, length, keep),
            libc::FALLOC_FL_PUNCH_HOLE if keep => d.punch(offset, length),
            libc::FALLOC_FL_ZERO_RANGE => d.zero_range(offset, length, keep),
            _ => return reply.error(Errno::EOPNOTSUPP),
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail_io(fh, &format!("fallocate '{}'", d.name()), e)),
        }
    }

    // Requests diskvault has no use for, answered without fuser's "[Not Implemented]"
    // warning: Python's open() sends TCGETS, ls asks for security.selinux.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        // ENOSYS: the kernel stops asking and treats files as always ready.
        reply.error(Errno::ENOSYS);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        // ENOSYS: the kernel stops asking (and reports "not supported" to callers).
        reply.error(Errno::ENOSYS);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, _size: u32, reply: fuser::ReplyXattr) {
        reply.error(Errno::ENOSYS);
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOSYS);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::ENOSYS);
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let d = match self.disk_handle(fh) {
            Ok(d) => d,
            Err(e) => return reply.error(e),
        };
        let kind = match whence {
            libc::SEEK_DATA => SeekKind::Data,
            libc::SEEK_HOLE => SeekKind::Hole,
            _ => return reply.error(Errno::EINVAL),
        };
        if offset < 0 {
            return reply.error(Errno::ENXIO);
        }
        match d.seek(offset as u64, kind) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(errno(&e)),
        }
    }
}

/// Mount options for `mount`.
#[derive(Clone, Debug, Default)]
pub struct MountOptions {
    pub allow_other: bool,
    pub threads: usize,
}

/// Mounts the store; returns once the kernel has completed the FUSE handshake.
pub fn mount(
    store: Arc<Store>,
    daemon: DaemonInfo,
    mountpoint: &std::path::Path,
    opts: &MountOptions,
) -> std::io::Result<fuser::Session<DiskVaultFs>> {
    use fuser::{Config, MountOption, SessionACL};
    let fs = DiskVaultFs::new(store.clone(), daemon);
    let slot = fs.notifier_slot();
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(format!("diskvault:{}", store.root().display())),
        MountOption::Subtype("diskvault".into()),
        MountOption::DefaultPermissions,
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::RW,
    ];
    config.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    config.n_threads = Some(opts.threads.max(1));
    config.clone_fd = true;
    let session = fuser::Session::new(fs, mountpoint, &config)?;
    let _ = slot.set(session.notifier());
    store.set_invalidator(Box::new(move |d: &Disk| {
        // Requests that passed the key check before the revocation are answered first,
        // so no late reply can put plaintext back into the page cache.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while d.inflight_count() > 0 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if let Some(n) = slot.get() {
            if let Err(e) = n.inval_inode(INodeNo(disk_ino(d)), 0, 0) {
                log::warn!("cannot drop cached pages of '{}': {e}", d.name());
            }
        }
    }));
    Ok(session)
}

//! The FUSE frontend. It maps paths and inodes to store calls and store errors to
//! errnos; it holds no crypto and no format logic.
//!
//! Page cache: disk files opened without O_DIRECT use the kernel page cache, which is
//! dropped on every open (no FOPEN_KEEP_CACHE). `DiskVaultFs::invalidate` drops a disk's
//! cached pages through the session notifier, so revocation can remove cached plaintext.

pub mod control;

use crate::store::{CreateOptions, DaemonInfo, Disk, SeekKind, Store, StoreError};
use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, Notifier, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek, ReplyOpen, ReplyStatfs, ReplyWrite,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

const ROOT: u64 = 1;
const DISKS: u64 = 2;
const SNAPSHOTS: u64 = 3;
const VAULT: u64 = 4;
const V_README: u64 = 5;
const V_STATUS: u64 = 6;
const V_LAST_ERROR: u64 = 7;
const V_DAEMON: u64 = 8;
const V_DISKS: u64 = 9;
const V_CREATE: u64 = 10;
/// Per-disk inodes: data file, `.vault/disks/NAME/` and its `disk.json`.
const DISK_BASE: u64 = 1000;
const PER_DISK: u64 = 4;

const DISK_TTL: Duration = Duration::from_secs(1);
const ZERO_TTL: Duration = Duration::ZERO;

fn disk_ino(d: &Disk) -> u64 {
    DISK_BASE + d.serial * PER_DISK
}

/// What an inode is.
#[derive(Clone)]
enum Node {
    Dir(u64),
    Static(u64),
    DiskFile(Arc<Disk>),
    DiskCtlDir,
    DiskJson(Arc<Disk>),
}

enum Handle {
    Disk(Arc<Disk>),
    /// A control file: the content as it was at open, and whether it may be written.
    Control {
        content: Vec<u8>,
    },
}

pub struct DiskVaultFs {
    store: Arc<Store>,
    uid: u32,
    gid: u32,
    daemon: DaemonInfo,
    handles: RwLock<HashMap<u64, Arc<Handle>>>,
    next_fh: AtomicU64,
    last_error: Mutex<String>,
    notifier: Arc<OnceLock<Notifier>>,
    started: SystemTime,
}

/// Maps a store error to the errno a program sees.
pub fn errno(e: &StoreError) -> Errno {
    use StoreError::*;
    match e {
        DiskNotFound(_) => Errno::ENOENT,
        DiskExists(_) => Errno::EEXIST,
        InvalidName { name, .. } if name.len() > 255 => Errno::ENAMETOOLONG,
        InvalidName { .. }
        | InvalidSize { .. }
        | InvalidSku(_)
        | InvalidArgument(_)
        | Crypto(_) => Errno::EINVAL,
        TooLarge => Errno::EFBIG,
        Busy(_) | Locked { .. } => Errno::EBUSY,
        Io { source, .. } => source
            .raw_os_error()
            .map(Errno::from_i32)
            .unwrap_or(Errno::EIO),
        _ => Errno::EIO,
    }
}

impl DiskVaultFs {
    pub fn new(store: Arc<Store>, daemon: DaemonInfo) -> Self {
        // Safe because: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        DiskVaultFs {
            store,
            uid,
            gid,
            daemon,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            last_error: Mutex::new(String::new()),
            notifier: Arc::new(OnceLock::new()),
            started: SystemTime::now(),
        }
    }

    /// Slot for the session notifier, filled once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }

    /// Drops the kernel's cached pages and attributes of a disk.
    pub fn invalidate(&self, disk: &Disk) {
        if let Some(n) = self.notifier.get() {
            let _ = n.inval_inode(INodeNo(disk_ino(disk)), 0, 0);
        }
    }

    /// Records and logs a failure; returns its errno.
    fn fail(&self, what: &str, e: StoreError) -> Errno {
        let msg = format!("{what}: {e}");
        log::warn!("{msg}");
        *self.last_error.lock() = format!("{} {msg}\n", crate::store::now_rfc3339());
        errno(&e)
    }

    fn node(&self, ino: u64) -> Option<Node> {
        match ino {
            ROOT | DISKS | SNAPSHOTS | VAULT | V_DISKS => Some(Node::Dir(ino)),
            V_README | V_STATUS | V_LAST_ERROR | V_DAEMON | V_CREATE => Some(Node::Static(ino)),
            i if i >= DISK_BASE => {
                let serial = (i - DISK_BASE) / PER_DISK;
                let d = self.store.get_by_serial(serial)?;
                match (i - DISK_BASE) % PER_DISK {
                    0 => Some(Node::DiskFile(d)),
                    1 => Some(Node::DiskCtlDir),
                    2 => Some(Node::DiskJson(d)),
                    _ => None,
                }
            }
            _ => None,
        }
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

    fn static_content(&self, ino: u64) -> Vec<u8> {
        let pretty = |v: &serde_json::Value| {
            let mut s = serde_json::to_vec_pretty(v).expect("JSON serializes");
            s.push(b'\n');
            s
        };
        match ino {
            V_README => control::README.as_bytes().to_vec(),
            V_STATUS => pretty(&self.store.status_json()),
            V_LAST_ERROR => self.last_error.lock().clone().into_bytes(),
            V_DAEMON => pretty(&serde_json::to_value(&self.daemon).expect("serializes")),
            _ => Vec::new(),
        }
    }

    fn node_attr(&self, ino: u64, node: &Node) -> (FileAttr, Duration) {
        match node {
            Node::Dir(i) => {
                let perm = if *i == VAULT || *i == V_DISKS {
                    0o700
                } else {
                    0o755
                };
                (
                    self.attr(ino, FileType::Directory, perm, 0, self.started),
                    ZERO_TTL,
                )
            }
            Node::Static(i) => {
                let (perm, size) = match *i {
                    V_CREATE => (0o200, 0),
                    _ => (0o400, self.static_content(*i).len() as u64),
                };
                (
                    self.attr(ino, FileType::RegularFile, perm, size, SystemTime::now()),
                    ZERO_TTL,
                )
            }
            Node::DiskFile(d) => {
                let mut a = self.attr(ino, FileType::RegularFile, 0o600, d.size(), d.mtime());
                a.blocks = d.allocated_bytes() / 512;
                (a, DISK_TTL)
            }
            Node::DiskCtlDir => (
                self.attr(ino, FileType::Directory, 0o700, 0, self.started),
                ZERO_TTL,
            ),
            Node::DiskJson(d) => {
                let len = self.disk_json(d).len() as u64;
                (
                    self.attr(ino, FileType::RegularFile, 0o400, len, SystemTime::now()),
                    ZERO_TTL,
                )
            }
        }
    }

    fn disk_json(&self, d: &Disk) -> Vec<u8> {
        let mut s = serde_json::to_vec_pretty(&self.store.disk_json(d)).expect("JSON serializes");
        s.push(b'\n');
        s
    }

    fn children(&self, ino: u64) -> Option<Vec<(u64, FileType, String)>> {
        use FileType::*;
        let v = match ino {
            ROOT => vec![
                (DISKS, Directory, "disks".into()),
                (SNAPSHOTS, Directory, "snapshots".into()),
                (VAULT, Directory, ".vault".into()),
            ],
            DISKS => self
                .store
                .list()
                .iter()
                .map(|d| (disk_ino(d), RegularFile, d.name()))
                .collect(),
            SNAPSHOTS => vec![],
            VAULT => vec![
                (V_README, RegularFile, "README".into()),
                (V_STATUS, RegularFile, "status.json".into()),
                (V_LAST_ERROR, RegularFile, "last-error".into()),
                (V_DAEMON, RegularFile, "daemon.json".into()),
                (V_DISKS, Directory, "disks".into()),
            ],
            V_DISKS => {
                let mut v = vec![(V_CREATE, RegularFile, "create".to_string())];
                v.extend(
                    self.store
                        .list()
                        .iter()
                        .map(|d| (disk_ino(d) + 1, Directory, d.name())),
                );
                v
            }
            i if i >= DISK_BASE && (i - DISK_BASE) % PER_DISK == 1 => {
                self.node(i)?;
                vec![(i + 1, RegularFile, "disk.json".into())]
            }
            _ => return None,
        };
        Some(v)
    }

    fn parent_of(&self, ino: u64) -> u64 {
        match ino {
            DISKS | SNAPSHOTS | VAULT => ROOT,
            V_DISKS => VAULT,
            i if i >= DISK_BASE => V_DISKS,
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
        self.store
            .create_disk(name, &CreateOptions::default())
            .map_err(|e| self.fail(&format!("create disk '{name}'"), e))
    }

    fn control_write(&self, ino: u64, data: &[u8]) -> Result<(), StoreError> {
        match ino {
            V_CREATE => {
                let req = control::parse_create(data)?;
                self.store.create_disk(&req.name, &req.opts).map(|_| ())
            }
            _ => Err(StoreError::InvalidArgument(
                "this control file is read-only".into(),
            )),
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
        let Some(children) = self.children(parent.0) else {
            return reply.error(Errno::ENOENT);
        };
        let found = children.into_iter().find(|(_, _, n)| OsStr::new(n) == name);
        match found.and_then(|(ino, _, _)| Some((ino, self.node(ino)?))) {
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
            // Control files and directories have fixed attributes; only `create` takes
            // the O_TRUNC that `echo >` sends.
            if size.is_some() && ino.0 != V_CREATE {
                return reply.error(Errno::EACCES);
            }
            let (a, t) = self.node_attr(ino.0, &node);
            return reply.attr(&t, &a);
        };
        if mode.is_some_and(|m| m & 0o7777 != 0o600)
            || uid.is_some_and(|u| u != self.uid)
            || gid.is_some_and(|g| g != self.gid)
        {
            self.fail(
                &format!("chmod/chown '{}'", d.name()),
                StoreError::InvalidArgument(
                    "disk files are always mode 0600 and owned by the mounting user".into(),
                ),
            );
            return reply.error(Errno::EPERM);
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
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        if parent.0 != DISKS {
            return reply.error(if self.children(parent.0).is_some() {
                Errno::EPERM
            } else {
                Errno::ENOENT
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

    fn rmdir(&self, _req: &Request, _parent: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::EPERM);
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
        if parent.0 != DISKS || newparent.0 != DISKS {
            return reply.error(Errno::EXDEV);
        }
        let (Ok(from), Ok(to)) = (self.name_str(name), self.name_str(newname)) else {
            return reply.error(Errno::EINVAL);
        };
        if flags.bits() & libc::RENAME_EXCHANGE != 0 {
            return reply.error(Errno::EINVAL);
        }
        let replace = flags.bits() & libc::RENAME_NOREPLACE == 0;
        match self.store.rename_disk(from, to, replace) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(&format!("rename disk '{from}' to '{to}'"), e)),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writing = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        match self.node(ino.0) {
            Some(Node::DiskFile(d)) => match self.open_disk(d, flags.0) {
                Ok((fh, f)) => reply.opened(fh, f),
                Err(e) => reply.error(e),
            },
            Some(Node::Static(i)) => {
                if (i == V_CREATE) != writing {
                    return reply.error(Errno::EACCES);
                }
                let fh = self.add_handle(Handle::Control {
                    content: self.static_content(i),
                });
                reply.opened(fh, FopenFlags::FOPEN_DIRECT_IO);
            }
            Some(Node::DiskJson(d)) => {
                if writing {
                    return reply.error(Errno::EACCES);
                }
                let fh = self.add_handle(Handle::Control {
                    content: self.disk_json(&d),
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
            Some(Handle::Disk(d)) => match d.read(offset, size as usize) {
                Ok(buf) => reply.data(&buf),
                Err(e) => reply.error(self.fail(&format!("read '{}'", d.name()), e)),
            },
            Some(Handle::Control { content }) => {
                let start = (offset as usize).min(content.len());
                let end = (start + size as usize).min(content.len());
                reply.data(&content[start..end]);
            }
            None => reply.error(Errno::EBADF),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.handle(fh).as_deref() {
            Some(Handle::Disk(d)) => match d.write(offset, data) {
                Ok(n) => reply.written(n as u32),
                Err(e) => reply.error(self.fail(&format!("write '{}'", d.name()), e)),
            },
            // Each write(2) to a control file is one complete command, as in sysfs.
            Some(Handle::Control { .. }) => match self.control_write(ino.0, data) {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(self.fail("control write", e)),
            },
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
                Err(e) => reply.error(self.fail(&format!("flush '{}'", d.name()), e)),
            },
            _ => reply.ok(),
        }
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<fuser::LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let h = self.handles.write().remove(&fh.0);
        if let Some(Handle::Disk(d)) = h.as_deref() {
            if let Err(e) = d.release() {
                return reply.error(self.fail(&format!("close '{}'", d.name()), e));
            }
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
                Err(e) => reply.error(self.fail(&format!("fsync '{}'", d.name()), e)),
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
        let Some(children) = self.children(ino.0) else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, ".".to_string()),
            (self.parent_of(ino.0), FileType::Directory, "..".to_string()),
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
            Err(e) => reply.error(self.fail(&format!("fallocate '{}'", d.name()), e)),
        }
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
    Ok(session)
}

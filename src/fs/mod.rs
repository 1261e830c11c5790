//! The FUSE frontend. It maps paths and inodes to store calls and store errors to
//! errnos; it holds no crypto and no format logic.
//!
//! Page cache: disk files opened without O_DIRECT use the kernel page cache, which is
//! dropped on every open (no FOPEN_KEEP_CACHE). `DiskVaultFs::invalidate` drops a disk's
//! cached pages through the session notifier, so revocation can remove cached plaintext.

mod ctl;
mod io;
mod nodes;
mod ops;
mod sizes;

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
const IMAGES: u64 = 5;
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
    Images,
    /// A disk, or a read-only snapshot or image.
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
        /// Who opened it: permission is checked at open, so commands through this
        /// handle are that user's, even from a process it was passed to.
        opener: u32,
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
    sizes: sizes::RequestSizes,
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
    pub fn new(store: Arc<Store>, daemon: DaemonInfo, vms: Arc<crate::vm::VmManager>) -> Self {
        // Safe because: getuid/getgid have no preconditions and cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        DiskVaultFs {
            control: Control::with_vms(store.clone(), Some(daemon), vms),
            store,
            uid,
            gid,
            handles: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ctl_inodes: RwLock::new(CtlInodes::default()),
            notifier: Arc::new(OnceLock::new()),
            started: SystemTime::now(),
            io_failures: Default::default(),
            sizes: sizes::RequestSizes::new(),
        }
    }

    /// Slot for the session notifier, filled once the session exists.
    pub fn notifier_slot(&self) -> Arc<OnceLock<Notifier>> {
        self.notifier.clone()
    }
}

/// Worker threads when not given: one per CPU, at least 2 (with one, each request
/// waits for the thread to wake after its last reply: a third of the 4 KiB IOPS on
/// 2 cores), at most 16.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 16))
}

/// Mount options for `mount`.
#[derive(Clone, Default)]
pub struct MountOptions {
    pub allow_other: bool,
    pub threads: usize,
    /// The mount's readahead in KiB (0: the kernel's default, 128).
    pub readahead_kb: u32,
    /// The supervisor of the store's VMs (their disks are files of this mount).
    pub vms: Option<Arc<crate::vm::VmManager>>,
}

/// Sets the readahead of the mount at `mountpoint` (FUSE's init can only lower the
/// kernel's 128 KiB; a larger window turns sequential reads into 1 MiB requests).
/// Writes sysfs, so it needs root. The device comes from /proc/self/mountinfo, not
/// stat: a stat of our own mount would wait for a worker that isn't running yet.
fn set_readahead(mountpoint: &std::path::Path, kb: u32) -> std::io::Result<()> {
    let ours = crate::mountinfo::topmost(&crate::mountinfo::read(), mountpoint, |m| {
        m.fstype.starts_with("fuse")
    })
    .ok_or_else(|| std::io::Error::other(format!("{} not in mountinfo", mountpoint.display())))?;
    std::fs::write(
        format!("/sys/class/bdi/{}/read_ahead_kb", ours.dev),
        kb.to_string(),
    )
}

/// A mount made here with mount(2) (as root), so that the kernel shows the type
/// `fuse.diskvault` and the store's path as the source, as an fstab line has them
/// (fuser's own mount says plain `fuse`, and mount -a can't match it). It is
/// unmounted here too.
pub struct OwnMount(std::path::PathBuf);

impl OwnMount {
    /// Detaches the mount; the session then ends.
    pub fn unmount(&self) -> std::io::Result<()> {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes())
            .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
        // Safe because: `c` is a valid NUL-terminated path for the call's duration.
        if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// mount(2) of a fresh /dev/fuse connection as `fuse.diskvault`; `None` where this
/// process may not mount (not root), for fuser's fusermount3 path instead.
fn mount_direct(
    source: &std::path::Path,
    mountpoint: &std::path::Path,
    allow_other: bool,
) -> std::io::Result<Option<std::os::fd::OwnedFd>> {
    use std::os::fd::{AsRawFd, OwnedFd};
    // Safe because: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let dev: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")?
        .into();
    let cstr = |p: &[u8]| {
        std::ffi::CString::new(p).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))
    };
    let src = cstr(source.as_os_str().as_encoded_bytes())?;
    let target = cstr(mountpoint.as_os_str().as_encoded_bytes())?;
    // Safe because: getuid and getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode=40000,user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    let data = cstr(data.as_bytes())?;
    let fstype = cstr(b"fuse.diskvault")?;
    // Safe because: every pointer is a valid NUL-terminated string that outlives the
    // call, and the data string is the FUSE mount options the kernel parses.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(Some(dev))
}

/// Mounts the store; returns once the kernel has completed the FUSE handshake, with
/// the mount to undo when it was made here (`OwnMount`), not by fuser.
pub fn mount(
    store: Arc<Store>,
    daemon: DaemonInfo,
    mountpoint: &std::path::Path,
    opts: &MountOptions,
) -> std::io::Result<(fuser::Session<DiskVaultFs>, Option<OwnMount>)> {
    use fuser::{Config, MountOption, SessionACL};
    let vms = opts.vms.clone().unwrap_or_else(|| {
        crate::vm::VmManager::new(store.clone(), Some(mountpoint.to_path_buf()))
    });
    vms.install_revocation_hook();
    let fs = DiskVaultFs::new(store.clone(), daemon, vms);
    let slot = fs.notifier_slot();
    let source = std::fs::canonicalize(store.root()).unwrap_or_else(|_| store.root().to_path_buf());
    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName(source.display().to_string()),
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
    let acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    let (session, own) = match mount_direct(&source, mountpoint, opts.allow_other)? {
        Some(fd) => {
            let own = OwnMount(mountpoint.to_path_buf());
            match fuser::Session::from_fd(fs, fd, acl, config) {
                Ok(s) => (s, Some(own)),
                Err(e) => {
                    let _ = own.unmount();
                    return Err(e);
                }
            }
        }
        None => (fuser::Session::new(fs, mountpoint, &config)?, None),
    };
    let _ = slot.set(session.notifier());
    if opts.readahead_kb > 0 {
        if let Err(e) = set_readahead(mountpoint, opts.readahead_kb) {
            log::info!(
                "readahead stays at the kernel's 128 KiB: {e} (only root can set it; \
                 --readahead-kb 0 keeps the default without this message)"
            );
        }
    }
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
    Ok((session, own))
}

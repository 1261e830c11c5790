//! Virtual machines on QEMU: the processes behind the store's VM records.
//!
//! A VM runs `qemu-system-x86_64` as a child of the daemon, one supervisor thread per
//! VM waiting on it, with its disks as files of the mount. The store's reconciler
//! calls [`VmManager`]'s revocation hook right after a disk's I/O starts failing: VMs
//! on Premium/Standard disks are then stopped (QMP `quit`, SIGKILL if QEMU does not
//! go), while Ultra and Premium SSD v2 keep running on their open handles, as in
//! Azure. A QEMU the user started can be registered to get the same treatment.
//!
//! Lifecycle operations are serialised by `ops`; the running table is the truth about
//! which VM has a live QEMU, and every record change that depends on it is made under
//! its lock, so a VM that exits while it starts can't be recorded as running.

mod create;
mod disks;
mod lifecycle;
pub mod qemu;
pub mod qmp;
mod supervisor;
mod vmss;
pub use vmss::{Power, VmssSpec};

use crate::store::{Store, StoreError, VmRecord, VMS_DIR};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;
use supervisor::Running;

type Result<T> = std::result::Result<T, StoreError>;

/// How long QEMU gets to open its QMP socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `quit` gets before SIGKILL.
const QUIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a guest gets to release a hot-unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(15);

/// What `vm create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateSpec {
    pub name: String,
    pub image: Option<String>,
    pub attach_os_disk: Option<String>,
    pub os_disk_encryption_set: Option<String>,
    pub os_disk_size_gb: Option<u64>,
    pub storage_sku: Option<String>,
    pub data_disk_sizes_gb: Vec<u64>,
    pub data_disk_encryption_sets: Vec<String>,
    pub size: Option<String>,
    pub kernel: Option<String>,
    pub initrd: Option<String>,
    pub append: Option<String>,
    pub no_start: bool,
    /// `-g`, `-l`: the VM's, and its new disks'.
    #[serde(skip_serializing_if = "crate::store::arm::Placement::is_empty")]
    pub placement: crate::store::arm::Placement,
    /// `--admin-username` (recorded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_username: Option<String>,
    /// `--generate-ssh-keys`: accepted; a guest from a diskvault image has no sshd.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub generate_ssh_keys: bool,
    /// Set by `vmss`: the scale set and instance id this VM is (never from a request).
    #[serde(skip)]
    pub scale_set: Option<(String, u32)>,
}

/// Runtime facts for `vm show`.
pub struct RuntimeInfo {
    pub pid: Option<u32>,
    pub accel: Option<&'static str>,
    pub qmp: PathBuf,
}

pub struct VmManager {
    store: Arc<Store>,
    /// The mountpoint VMs open their disks under; `None` without a daemon.
    mount: Option<PathBuf>,
    running: Mutex<HashMap<String, Arc<Running>>>,
    ops: Mutex<()>,
    /// Serializes scale set changes (each takes `ops` per instance).
    vmss_ops: Mutex<()>,
    this: Weak<VmManager>,
}

fn hv(msg: impl Into<String>) -> StoreError {
    StoreError::Hypervisor(msg.into())
}

impl VmManager {
    pub fn new(store: Arc<Store>, mount: Option<PathBuf>) -> Arc<Self> {
        Arc::new_cyclic(|this| VmManager {
            store,
            mount,
            running: Mutex::new(HashMap::new()),
            ops: Mutex::new(()),
            vmss_ops: Mutex::new(()),
            this: this.clone(),
        })
    }

    fn vms_dir(&self) -> PathBuf {
        self.store.root().join(VMS_DIR)
    }

    fn paths(&self, rec: &VmRecord) -> qemu::Paths {
        qemu::paths(&self.vms_dir(), rec)
    }

    pub fn runtime(&self, name: &str) -> Option<RuntimeInfo> {
        let r = self.running.lock().get(name).cloned()?;
        let pid = *r.pid.lock();
        Some(RuntimeInfo {
            pid,
            accel: r.accel.map(|a| a.name()),
            qmp: r.qmp.clone(),
        })
    }

    pub fn serial_log(&self, rec: &VmRecord) -> PathBuf {
        self.paths(rec).serial
    }

    /// Names of the VMs with a live QEMU.
    pub fn running_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

/// A kernel or initrd path: absolute, and a readable file.
fn boot_file(p: &str) -> Result<String> {
    let path = std::path::absolute(p)
        .map_err(|e| StoreError::InvalidArgument(format!("bad path '{p}': {e}")))?;
    // stat first: opening a FIFO (or a device) could block the daemon.
    let readable = |m: std::fs::Metadata| {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&path)
            .map(|_| m)
    };
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => readable(m)
            .map(|_| path.display().to_string())
            .map_err(|e| {
                StoreError::InvalidArgument(format!(
                    "cannot read {}: {e}; give a kernel (e.g. /boot/vmlinuz-*) or initrd file",
                    path.display()
                ))
            }),
        Ok(_) => Err(StoreError::InvalidArgument(format!(
            "{} is not a file; give a kernel (e.g. /boot/vmlinuz-*) or initrd file",
            path.display()
        ))),
        Err(e) => Err(StoreError::InvalidArgument(format!(
            "cannot read {}: {e}; give a kernel (e.g. /boot/vmlinuz-*) or initrd file",
            path.display()
        ))),
    }
}

/// A random RFC 4122 version-4 uuid, Azure's `vmId` form.
fn uuid() -> String {
    crate::crypto::random_uuid().unwrap_or_else(|_| "00000000-0000-4000-8000-000000000000".into())
}

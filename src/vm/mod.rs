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

pub mod qemu;
pub mod qmp;

use crate::store::{
    vm_resource_id, Disk, External, ObjectKind, PowerState, Revocation, Store, StoreError, VmDisk,
    VmRecord, VMS_DIR,
};
use crate::vault::Caller;
use parking_lot::{Condvar, Mutex};
use qmp::Qmp;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

type Result<T> = std::result::Result<T, StoreError>;

/// How long QEMU gets to open its QMP socket after start.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `quit` gets before SIGKILL.
const QUIT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a guest gets to release a hot-unplugged disk.
const UNPLUG_TIMEOUT: Duration = Duration::from_secs(15);

/// A live QEMU.
struct Running {
    pid: Mutex<Option<u32>>,
    qmp: PathBuf,
    accel: Option<qemu::Accel>,
    /// Set by whoever stops the VM: the state to record and why.
    stopping: Mutex<Option<(PowerState, Option<String>)>>,
    exited: Mutex<bool>,
    exited_cond: Condvar,
}

impl Running {
    fn new(pid: Option<u32>, qmp: PathBuf, accel: Option<qemu::Accel>) -> Arc<Self> {
        Arc::new(Running {
            pid: Mutex::new(pid),
            qmp,
            accel,
            stopping: Mutex::new(None),
            exited: Mutex::new(false),
            exited_cond: Condvar::new(),
        })
    }

    fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut e = self.exited.lock();
        while !*e {
            if self.exited_cond.wait_until(&mut e, deadline).timed_out() {
                break;
            }
        }
        *e
    }

    fn kill(&self) {
        if let Some(pid) = *self.pid.lock() {
            // Safe because: kill takes plain integers; the pid is our child (reaped
            // only by its supervisor, after which `exited` is set and we don't get
            // here) or a registered QEMU watched through a pidfd.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

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
}

/// What a disk check is for, for its message.
#[derive(Clone, Copy)]
enum Action {
    Start,
    Attach,
    Register,
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
            this: this.clone(),
        })
    }

    /// Makes revocations stop VMs (in a daemon).
    pub fn install_revocation_hook(&self) {
        let weak = self.this.clone();
        self.store
            .set_revoke_hook(Box::new(move |disk: &Disk, rev: &Revocation| {
                if let Some(m) = weak.upgrade() {
                    m.on_revoked(disk, rev);
                }
            }));
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

    /// The reconciler revoked `disk`: stop the running VMs that use it, unless its
    /// SKU keeps open handles working (Ultra, Premium SSD v2).
    fn on_revoked(&self, disk: &Disk, rev: &Revocation) {
        if disk.kind != ObjectKind::Disk {
            return;
        }
        let name = disk.name();
        let Some(rec) = self.store.disk_owner(&name) else {
            return;
        };
        if !self.running.lock().contains_key(&rec.name) {
            return;
        }
        if rev.keep_open {
            log::warn!(
                "VM '{}' keeps running: disk '{name}' is {} and keeps its open handles; after a deallocate it won't start until the key is back",
                rec.name,
                disk.meta().sku
            );
            return;
        }
        let reason = format!(
            "Stopped: disk '{name}' can't be used ({}); start the VM again once the key is enabled or the disk encryption set has a usable key",
            rev.reason
        );
        let r = self.stop_running(&rec.name, PowerState::Stopped, Some(reason.clone()));
        let outcome = match &r {
            Ok(()) => ("OK", reason.as_str()),
            Err(_) => ("Failed", "QEMU did not exit; its disks fail all I/O"),
        };
        log::warn!("VM '{}': {reason} ({})", rec.name, outcome.0);
        self.store.vault().audit_event(
            "VirtualMachineStopped",
            &Caller::current_user(),
            &vm_resource_id(&rec.name),
            Some(outcome),
        );
    }

    /// Refuses to start a VM on (or hot-plug, or register) a disk that can't serve
    /// data now, or whose key is revoked with the revocation still pending.
    fn check_usable(&self, vm: &str, disk: &str, action: Action) -> Result<()> {
        let (what, then) = match action {
            Action::Start => (format!("VM '{vm}' can't start"), "start the VM".to_string()),
            Action::Attach => (
                format!("disk '{disk}' can't be attached to VM '{vm}'"),
                "attach it".to_string(),
            ),
            Action::Register => (
                format!("VM '{vm}' can't be registered"),
                "register it".to_string(),
            ),
        };
        let d = self.store.get_or_err(disk).map_err(|_| {
            StoreError::VmCannotStart(format!(
                "{what}: its disk '{disk}' no longer exists; detach it ('diskvault vm disk detach --vm-name {vm} --name {disk}')"
            ))
        })?;
        let state = self.store.key_state(&d);
        if state == "Available" {
            return Ok(());
        }
        let m = d.meta();
        let set = m
            .encryption
            .disk_encryption_set_id
            .as_deref()
            .and_then(|s| s.rsplit('/').next())
            .unwrap_or("")
            .to_string();
        // The key the disk's data key is wrapped with (during a set's key change,
        // the one it still needs).
        let key = m
            .layers
            .iter()
            .find_map(|l| match crate::vault::KeyId::parse(&l.kid) {
                Ok(crate::vault::KeyId::Vault(r)) => Some(r.name),
                _ => None,
            })
            .unwrap_or_else(|| "KEY".into());
        let fix = if state.starts_with("Revoked") || state.contains("revocation pending") {
            format!(
                "restore access to key '{key}' (enable the key and the version that wraps the disk: 'diskvault key set {key} [--version V] --enabled true'; recover it if deleted; grant set '{set}' again: 'diskvault key grant {key} --des {set}'), or give set '{set}' a usable key ('diskvault des update {set} --key-url URL'), then {then}"
            )
        } else {
            format!(
                "fix the disk (see 'diskvault disk show {disk}' and STORE/daemon.log), then {then}"
            )
        };
        let why = match state.strip_prefix("Available (revocation pending: ") {
            Some(p) => format!(
                "its key was revoked ({}; the VM running on it keeps going until --revocation-delay ends, but it can't be opened again)",
                p.trim_end_matches(')')
            ),
            None => state,
        };
        Err(StoreError::VmCannotStart(format!(
            "{what}: disk '{disk}' can't be used ({why}); {fix}"
        )))
    }

    /// `vm create`: makes the disks, records the VM and starts it unless asked not to.
    pub fn create(&self, spec: &CreateSpec) -> Result<VmRecord> {
        let _op = self.ops.lock();
        let invalid = |m: String| StoreError::InvalidArgument(m);
        crate::store::validate_vm_name(&spec.name)?;
        if self.store.vm_get(&spec.name).is_ok() {
            return Err(StoreError::VmExists(spec.name.clone()));
        }
        if !spec.no_start && self.mount.is_none() {
            return Err(StoreError::NotPermitted(format!(
                "VM '{}' would start at once, but VMs run only while the store is mounted; mount it first ('diskvault mount STORE MOUNTPOINT'), or create it with --no-start",
                spec.name
            )));
        }
        let (size, vcpus, memory_mb) =
            qemu::size(spec.size.as_deref().unwrap_or(qemu::DEFAULT_SIZE)).map_err(invalid)?;
        if spec.image.is_some() && spec.attach_os_disk.is_some() {
            return Err(invalid(
                "give --image or --attach-os-disk, not both".to_string(),
            ));
        }
        if spec.image.is_none() && spec.attach_os_disk.is_none() && spec.kernel.is_none() {
            return Err(invalid("give --image IMAGE or --attach-os-disk DISK (or --kernel for a diskless direct-kernel boot from an initrd)".into()));
        }
        if spec.image.is_none()
            && (spec.os_disk_encryption_set.is_some() || spec.os_disk_size_gb.is_some())
        {
            return Err(invalid("--os-disk-encryption-set and --os-disk-size-gb apply to an OS disk made from --image; an attached OS disk keeps its own".into()));
        }
        let sets = &spec.data_disk_encryption_sets;
        if !sets.is_empty() && sets.len() != spec.data_disk_sizes_gb.len() {
            return Err(invalid(format!(
                "usage error: Number of --data-disk-encryption-sets ({}) mismatches with number of --data-disk-sizes-gb ({})",
                sets.len(),
                spec.data_disk_sizes_gb.len()
            )));
        }
        if spec.data_disk_sizes_gb.len() > crate::store::MAX_DATA_DISKS as usize {
            return Err(StoreError::VmConflict(format!(
                "The maximum number of data disks allowed to be attached to a VM of this size is {}.",
                crate::store::MAX_DATA_DISKS
            )));
        }
        let max_gb = crate::store::MAX_DISK_SIZE >> 30;
        for gb in spec
            .data_disk_sizes_gb
            .iter()
            .chain(spec.os_disk_size_gb.iter())
        {
            if *gb == 0 || *gb > max_gb {
                return Err(invalid(format!(
                    "disk size {gb} GB is out of range; use 1 to {max_gb} (64 TiB)"
                )));
            }
        }
        let sku: crate::store::Sku = spec
            .storage_sku
            .as_deref()
            .unwrap_or("Premium_LRS")
            .parse()?;
        let kernel = spec.kernel.as_deref().map(boot_file).transpose()?;
        let initrd = spec.initrd.as_deref().map(boot_file).transpose()?;
        if let Some(a) = &spec.append {
            if a.len() > 4096 || a.chars().any(|c| c.is_control()) {
                return Err(invalid(
                    "--append takes one line of at most 4096 characters".into(),
                ));
            }
            if kernel.is_none() {
                return Err(invalid("--append needs --kernel".into()));
            }
        }
        if initrd.is_some() && kernel.is_none() {
            return Err(invalid("--initrd needs --kernel".into()));
        }
        // Check every name first, so a clash creates nothing.
        let os_name = format!("{}_OsDisk", spec.name);
        let data_names: Vec<String> = (0..spec.data_disk_sizes_gb.len())
            .map(|l| format!("{}_DataDisk_{l}", spec.name))
            .collect();
        let new_names = spec.image.iter().map(|_| &os_name).chain(data_names.iter());
        for n in new_names {
            if self.store.get(n).is_some() {
                return Err(StoreError::DiskExists(n.clone()));
            }
        }
        if let Some(d) = &spec.attach_os_disk {
            self.store.get_usable(d)?;
            if let Some(o) = self.store.disk_owner(d) {
                return Err(StoreError::VmConflict(format!(
                    "Cannot attach the disk {d} because it is already attached to VM {}. A disk can be attached to only one VM at a time.",
                    o.name
                )));
            }
        }
        let mut made: Vec<String> = Vec::new();
        let r = (|| -> Result<VmRecord> {
            let os_disk = match (&spec.image, &spec.attach_os_disk) {
                (Some(img), _) => {
                    let opts = crate::store::FromSourceOptions {
                        size: spec.os_disk_size_gb.unwrap_or(0) << 30,
                        sku,
                        disk_encryption_set: spec.os_disk_encryption_set.clone(),
                        encryption_type: None,
                    };
                    self.store.find_source(img, &[ObjectKind::Image])?;
                    self.store
                        .create_disk_from(&os_name, img, &opts, &|_, _| {})?;
                    made.push(os_name.clone());
                    Some(VmDisk {
                        name: os_name.clone(),
                        lun: None,
                        create_option: "FromImage".into(),
                    })
                }
                (None, Some(d)) => Some(VmDisk {
                    name: d.clone(),
                    lun: None,
                    create_option: "Attach".into(),
                }),
                (None, None) => None,
            };
            let mut data_disks = Vec::new();
            for (lun, gb) in spec.data_disk_sizes_gb.iter().enumerate() {
                let name = &data_names[lun];
                let opts = crate::store::CreateOptions {
                    size: gb << 30,
                    sku,
                    cipher: None,
                    disk_encryption_set: sets.get(lun).cloned(),
                };
                self.store.create_disk(name, &opts)?;
                made.push(name.clone());
                data_disks.push(VmDisk {
                    name: name.clone(),
                    lun: Some(lun as u32),
                    create_option: "Empty".into(),
                });
            }
            let rec = VmRecord {
                name: spec.name.clone(),
                vm_id: uuid(),
                size: size.to_string(),
                vcpus,
                memory_mb,
                kernel: kernel.clone(),
                initrd: initrd.clone(),
                append: spec.append.clone(),
                os_disk,
                data_disks,
                power_state: PowerState::Deallocated,
                status_reason: None,
                pid: None,
                external: None,
                time_created: crate::store::now_rfc3339(),
            };
            self.store.vm_create(&rec)?;
            Ok(rec)
        })();
        let rec = match r {
            Ok(rec) => rec,
            Err(e) => {
                for n in made.iter().rev() {
                    if let Err(e2) = self.store.delete_disk(n) {
                        log::error!("cannot remove disk '{n}' of the failed VM create: {e2}");
                    }
                }
                return Err(e);
            }
        };
        log::info!("created VM '{}'", rec.name);
        if spec.no_start {
            return Ok(rec);
        }
        // The VM and its disks stay (as in Azure, a failed start leaves them): say so.
        let left = |m: String| {
            format!(
                "VM '{}' was created but did not start: {m}; once fixed, run 'diskvault vm start {}' (or 'diskvault vm delete {}')",
                rec.name, rec.name, rec.name
            )
        };
        match self.start_locked(&rec.name) {
            Ok(()) => self.store.vm_get(&rec.name),
            Err(StoreError::VmCannotStart(m)) => Err(StoreError::VmCannotStart(left(m))),
            Err(StoreError::Hypervisor(m)) => Err(StoreError::Hypervisor(left(m))),
            Err(e) => Err(StoreError::Hypervisor(left(e.to_string()))),
        }
    }

    pub fn start(&self, name: &str) -> Result<()> {
        let _op = self.ops.lock();
        self.start_locked(name)
    }

    fn start_locked(&self, name: &str) -> Result<()> {
        let rec = self.store.vm_get(name)?;
        if self.running.lock().contains_key(name) {
            return Ok(());
        }
        if rec.external.is_some() {
            return Err(StoreError::VmConflict(format!(
                "VM '{name}' runs a QEMU that diskvault did not start; start that QEMU yourself, then register it again ('diskvault vm register {name} --qmp SOCKET --disk DISK ...')"
            )));
        }
        let Some(mount) = self.mount.clone() else {
            return Err(StoreError::NotPermitted(format!(
                "VM '{name}' can only run while its store is mounted (its disks are files of the mount); run 'diskvault mount STORE MOUNTPOINT' first"
            )));
        };
        for d in rec.disks() {
            self.check_usable(name, &d.name, Action::Start)?;
        }
        // The boot files were checked at create; they may have changed since.
        for f in rec.kernel.iter().chain(rec.initrd.iter()) {
            boot_file(f).map_err(|e| hv(format!("VM '{name}' can't start: {e}")))?;
        }
        let accel = qemu::accel(&self.vms_dir());
        let paths = self.paths(&rec);
        qemu::private_socket_dir(&paths.qmp, &self.vms_dir())
            .map_err(|e| hv(format!("VM '{name}' can't start: {e}")))?;
        let _ = std::fs::remove_file(&paths.qmp);
        // The console may show guest data: private, and fresh for each boot (QEMU
        // truncates it and keeps this mode).
        std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&paths.serial)
            .map_err(|e| StoreError::io(format!("creating {}", paths.serial.display()), e))?;
        let mut cmd = qemu::command(&rec, &mount, &paths, accel);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&paths.qemu_log)
            .map_err(|e| StoreError::io(format!("opening {}", paths.qemu_log.display()), e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| StoreError::io("duplicating the QEMU log", e))?;
        cmd.stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0);
        // Safe because: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
        // memory of the parent; it makes QEMU die with its supervisor thread (and so
        // with the daemon), instead of running on against a dead mount.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let run = Running::new(None, paths.qmp.clone(), Some(accel));
        self.running.lock().insert(name.to_string(), run.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let weak = self.this.clone();
        let vm = name.to_string();
        let sup = run.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || {
                let child = cmd.spawn();
                let mut child = match child {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        if let Some(m) = weak.upgrade() {
                            m.exited(&vm, &sup, None);
                        }
                        return;
                    }
                };
                *sup.pid.lock() = Some(child.id());
                let _ = tx.send(Ok(child.id()));
                let status = child.wait().ok();
                if let Some(m) = weak.upgrade() {
                    m.exited(&vm, &sup, status);
                }
            });
        if let Err(e) = spawned {
            self.running.lock().remove(name);
            return Err(StoreError::io("starting a VM supervisor thread", e));
        }
        let pid = match rx.recv() {
            Ok(Ok(pid)) => pid,
            Ok(Err(e)) => {
                return Err(hv(format!(
                "VM '{name}' can't start: cannot run {}: {e} (install the qemu-system-x86 package)",
                qemu::QEMU
            )))
            }
            Err(_) => return Err(hv(format!("VM '{name}' can't start: its supervisor died"))),
        };
        // QEMU is up once its QMP socket answers.
        let deadline = Instant::now() + START_TIMEOUT;
        let ready = loop {
            if *run.exited.lock() {
                break Err("QEMU exited at start".to_string());
            }
            match Qmp::connect(&paths.qmp, Duration::from_secs(2)) {
                Ok(mut q) => break q.execute("query-status", json!({})).map(|_| ()),
                Err(_) if Instant::now() < deadline => {
                    // QEMU creates the socket early in its start; polled, bounded.
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = ready {
            *run.stopping.lock() = Some((
                PowerState::Stopped,
                Some(format!("Stopped: start failed: {e}")),
            ));
            run.kill();
            run.wait_exit(QUIT_TIMEOUT);
            return Err(hv(format!(
                "VM '{name}' can't start: {e}; QEMU said: {} (STORE/daemon.log may say why a disk could not be opened)",
                last_lines(&paths.qemu_log)
            )));
        }
        let running = self.running.lock();
        if running.get(name).is_none_or(|r| !Arc::ptr_eq(r, &run)) || *run.exited.lock() {
            return Err(hv(format!(
                "VM '{name}' stopped while it started; see 'diskvault vm show {name}' and {}",
                paths.qemu_log.display()
            )));
        }
        let saved = self.store.vm_update(name, |r| {
            r.power_state = PowerState::Running;
            r.pid = Some(pid);
            r.status_reason = None;
            Ok(())
        });
        drop(running);
        if let Err(e) = saved {
            // A VM whose record says it is not running must not run.
            *run.stopping.lock() = Some((rec.power_state, rec.status_reason.clone()));
            run.kill();
            run.wait_exit(QUIT_TIMEOUT);
            return Err(e);
        }
        log::info!("VM '{name}' started (QEMU pid {pid}, {})", accel.name());
        // A revocation may have landed between the check and the start: the hook saw
        // the VM in the table and stopped it, or the check below does.
        for d in rec.disks() {
            if let Err(e) = self.check_usable(name, &d.name, Action::Start) {
                let _ = self.stop_running(name, PowerState::Stopped, Some(e.to_string()));
                return Err(e);
            }
        }
        Ok(())
    }

    /// Called once a VM's QEMU is gone: records why, and wakes whoever waits.
    fn exited(&self, name: &str, run: &Arc<Running>, status: Option<std::process::ExitStatus>) {
        let mut running = self.running.lock();
        if running.get(name).is_some_and(|r| Arc::ptr_eq(r, run)) {
            running.remove(name);
        }
        let (state, reason) = run.stopping.lock().clone().unwrap_or_else(|| {
            let why = match status {
                Some(s) if s.success() => "Stopped: the guest shut down".to_string(),
                Some(s) => format!(
                    "Stopped: QEMU ended ({s}); see {}",
                    self.paths_by_name(name).qemu_log.display()
                ),
                None => "Stopped: QEMU ended".to_string(),
            };
            (PowerState::Stopped, Some(why))
        });
        // Recorded in memory even if the file can't be saved (a full store): the
        // process is gone, and the next open finds a saved `running` stopped anyway.
        let r = self.store.vm_update_volatile(name, |r| {
            r.power_state = state;
            r.pid = None;
            if reason.is_some() {
                r.status_reason = reason.clone();
            }
        });
        if let Err(e) = r {
            if !matches!(e, StoreError::VmNotFound(_)) {
                log::error!("VM '{name}': cannot record that it stopped: {e}");
            }
        }
        drop(running);
        log::info!(
            "VM '{name}' is {}{}",
            state.display(),
            reason.map(|r| format!(": {r}")).unwrap_or_default()
        );
        *run.exited.lock() = true;
        run.exited_cond.notify_all();
    }

    fn paths_by_name(&self, name: &str) -> qemu::Paths {
        match self.store.vm_get(name) {
            Ok(rec) => self.paths(&rec),
            Err(_) => qemu::Paths {
                serial: PathBuf::new(),
                qemu_log: self.vms_dir().join(format!("{name}.qemu.log")),
                qmp: PathBuf::new(),
            },
        }
    }

    /// Ends a running VM's QEMU (QMP `quit`, then SIGKILL) and records `state`; a VM
    /// not running only has its record changed.
    fn stop_running(&self, name: &str, state: PowerState, reason: Option<String>) -> Result<()> {
        let run = self.running.lock().get(name).cloned();
        let Some(run) = run else {
            return self.store.vm_update(name, |r| {
                if state == PowerState::Deallocated || r.power_state == PowerState::Running {
                    r.power_state = state;
                }
                r.pid = None;
                if reason.is_some() {
                    r.status_reason = reason;
                }
                Ok(())
            });
        };
        {
            let mut s = run.stopping.lock();
            // A revocation's reason is kept over a later plain stop.
            match (&*s, &reason) {
                (Some((_, Some(_))), None) => {}
                _ => *s = Some((state, reason)),
            }
        }
        let quit = Qmp::connect(&run.qmp, Duration::from_millis(500))
            .and_then(|mut q| q.execute("quit", json!({})));
        if quit.is_err() || !run.wait_exit(QUIT_TIMEOUT) {
            run.kill();
        }
        if !run.wait_exit(QUIT_TIMEOUT) {
            return Err(hv(format!(
                "VM '{name}': QEMU (pid {:?}) did not exit after SIGKILL",
                *run.pid.lock()
            )));
        }
        if state == PowerState::Deallocated {
            // The exit handler recorded the state asked for; make sure of it.
            self.store
                .vm_update_volatile(name, |r| r.power_state = PowerState::Deallocated)?;
        }
        Ok(())
    }

    pub fn stop(&self, name: &str, deallocate: bool) -> Result<()> {
        let _op = self.ops.lock();
        let rec = self.store.vm_get(name)?;
        let state = if deallocate || rec.power_state == PowerState::Deallocated {
            PowerState::Deallocated
        } else {
            PowerState::Stopped
        };
        self.stop_running(name, state, None)?;
        self.store
            .vm_update_volatile(name, |r| r.status_reason = None)
    }

    pub fn restart(&self, name: &str) -> Result<()> {
        let _op = self.ops.lock();
        self.store.vm_get(name)?;
        let run = self.running.lock().get(name).cloned();
        let Some(run) = run else {
            return Err(StoreError::VmConflict(format!(
                "Operation 'restart' is not allowed on VM '{name}' since the VM is not running; start it ('diskvault vm start {name}')"
            )));
        };
        Qmp::connect(&run.qmp, Duration::from_secs(2))
            .and_then(|mut q| q.execute("system_reset", json!({})))
            .map_err(|e| hv(format!("VM '{name}': restart failed: {e}")))?;
        Ok(())
    }

    /// Deletes a VM (stopping it first); its disks stay, detached.
    pub fn delete(&self, name: &str) -> Result<()> {
        let _op = self.ops.lock();
        self.store.vm_get(name)?;
        self.stop_running(name, PowerState::Deallocated, None)?;
        let rec = self.store.vm_get(name)?;
        self.store.vm_remove(name)?;
        // Its console may show guest data; a VM made later under the name starts clean.
        let p = self.paths(&rec);
        for f in [&p.serial, &p.qemu_log, &p.qmp] {
            let _ = std::fs::remove_file(f);
        }
        log::info!("deleted VM '{name}'; its disks stay");
        Ok(())
    }

    /// `vm disk attach`: records the disk and, on a running VM, hot-plugs it.
    pub fn attach(&self, vm: &str, disk: &str, lun: Option<u32>) -> Result<u32> {
        let _op = self.ops.lock();
        self.store.get_usable(disk)?;
        let run = self.running.lock().get(vm).cloned();
        if run.is_some() {
            self.check_usable(vm, disk, Action::Attach)?;
        }
        let lun = self.store.vm_attach(vm, disk, lun)?;
        let Some(run) = run else {
            return Ok(lun);
        };
        let Some(mount) = &self.mount else {
            return Ok(lun);
        };
        let id = format!("lun{lun}");
        let file = mount.join("disks").join(disk);
        let plug = Qmp::connect(&run.qmp, Duration::from_secs(2)).and_then(|mut q| {
            q.execute(
                "blockdev-add",
                json!({
                    "node-name": id,
                    "driver": "raw",
                    "cache": {"direct": true},
                    "file": {"driver": "file", "filename": file.display().to_string(), "aio": "threads"},
                }),
            )?;
            let dev = q.execute(
                "device_add",
                json!({"driver": "virtio-blk-pci", "drive": id, "id": format!("dev-{id}"), "serial": id}),
            );
            if let Err(e) = dev {
                let _ = q.execute("blockdev-del", json!({"node-name": id}));
                return Err(e);
            }
            Ok(())
        });
        if let Err(e) = plug {
            let _ = self.store.vm_detach(vm, disk);
            return Err(hv(format!(
                "cannot hot-plug disk '{disk}' into VM '{vm}': {e}"
            )));
        }
        log::info!("attached disk '{disk}' to running VM '{vm}' at LUN {lun}");
        Ok(lun)
    }

    /// `vm disk detach`: on a running VM, the guest must release the device first.
    pub fn detach(&self, vm: &str, disk: &str) -> Result<()> {
        let _op = self.ops.lock();
        let rec = self.store.vm_get(vm)?;
        let lun = match rec.data_disks.iter().find(|d| d.name == disk) {
            Some(d) => d.lun.unwrap_or(0),
            // The store gives the precise error (OS disk, not attached).
            None => return self.store.vm_detach(vm, disk).map(|_| ()),
        };
        let run = self.running.lock().get(vm).cloned();
        if let Some(run) = run {
            let id = format!("lun{lun}");
            let dev = format!("dev-{id}");
            let r = Qmp::connect(&run.qmp, Duration::from_secs(2)).and_then(|mut q| {
                q.execute("device_del", json!({ "id": dev }))?;
                q.wait_event(
                    "DEVICE_DELETED",
                    |d| d.get("device").and_then(Value::as_str) == Some(&dev),
                    Instant::now() + UNPLUG_TIMEOUT,
                )?;
                // A hot-plugged disk's node stays until deleted; a disk given at
                // start went with its device.
                let _ = q.execute("blockdev-del", json!({ "node-name": id }));
                Ok(())
            });
            // A guest that powers off right after releasing the device may take
            // QEMU down before its event is sent: gone either way.
            if let Err(e) = r {
                if !run.wait_exit(Duration::from_millis(500)) {
                    return Err(StoreError::VmConflict(format!(
                        "cannot detach disk '{disk}' from running VM '{vm}': {e} (the guest must release the device; stop the VM and detach it then)"
                    )));
                }
            }
        }
        self.store.vm_detach(vm, disk)?;
        log::info!("detached disk '{disk}' from VM '{vm}'");
        Ok(())
    }

    /// `vm register`: a QEMU the user started, reachable at `qmp`, using `disks`.
    pub fn register(&self, name: &str, qmp_path: &Path, disks: &[String]) -> Result<VmRecord> {
        let _op = self.ops.lock();
        crate::store::validate_vm_name(name)?;
        if disks.is_empty() {
            return Err(StoreError::InvalidArgument(
                "give the VM's disks: --disk DISK (once per disk)".into(),
            ));
        }
        if let Ok(old) = self.store.vm_get(name) {
            if old.external.is_none() || self.running.lock().contains_key(name) {
                return Err(StoreError::VmExists(name.to_string()));
            }
            self.store.vm_remove(name)?;
        }
        let mut q = Qmp::connect(qmp_path, Duration::from_secs(2)).map_err(|e| {
            StoreError::InvalidArgument(format!(
                "cannot reach QEMU's QMP socket {}: {e}; start QEMU with -qmp unix:{},server=on,wait=off",
                qmp_path.display(),
                qmp_path.display()
            ))
        })?;
        let pid = q
            .peer_pid()
            .ok_or_else(|| hv("cannot tell QEMU's pid from its QMP socket"))?;
        let blocks = q.execute("query-block", json!({})).map_err(hv)?.to_string();
        drop(q);
        for d in disks {
            self.check_usable(name, d, Action::Register)?;
            if !blocks.contains(&format!("/disks/{d}\"")) {
                return Err(StoreError::InvalidArgument(format!(
                    "the QEMU at {} has no drive on MOUNT/disks/{d}; give only the disks it uses",
                    qmp_path.display()
                )));
            }
        }
        let rec = VmRecord {
            name: name.to_string(),
            vm_id: uuid(),
            size: "external".into(),
            vcpus: 0,
            memory_mb: 0,
            kernel: None,
            initrd: None,
            append: None,
            os_disk: None,
            data_disks: disks
                .iter()
                .enumerate()
                .map(|(i, d)| VmDisk {
                    name: d.clone(),
                    lun: Some(i as u32),
                    create_option: "Attach".into(),
                })
                .collect(),
            power_state: PowerState::Running,
            status_reason: None,
            pid: None,
            external: Some(External {
                qmp: qmp_path.display().to_string(),
            }),
            time_created: crate::store::now_rfc3339(),
        };
        self.store.vm_create(&rec)?;
        let run = Running::new(Some(pid), qmp_path.to_path_buf(), None);
        self.running.lock().insert(name.to_string(), run.clone());
        let weak = self.this.clone();
        let vm = name.to_string();
        let watch = std::thread::Builder::new()
            .name(format!("vm-{name}"))
            .spawn(move || {
                wait_pid(pid);
                if let Some(m) = weak.upgrade() {
                    m.exited(&vm, &run, None);
                }
            });
        if let Err(e) = watch {
            self.running.lock().remove(name);
            let _ = self.store.vm_remove(name);
            return Err(StoreError::io("starting a VM watcher thread", e));
        }
        log::info!("registered VM '{name}' (QEMU pid {pid})");
        self.store.vm_get(name)
    }

    /// Stops every running VM (the daemon is going away); registered ones are left
    /// to their owner.
    pub fn shutdown(&self, why: &str) {
        let names: Vec<String> = self.running.lock().keys().cloned().collect();
        for n in names {
            if self.store.vm_get(&n).is_ok_and(|r| r.external.is_some()) {
                continue;
            }
            let reason = format!("Stopped: {why}");
            if let Err(e) = self.stop_running(&n, PowerState::Stopped, Some(reason)) {
                log::error!("{e}");
            }
        }
    }

    /// Names of the VMs with a live QEMU.
    pub fn running_names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.running.lock().keys().cloned().collect();
        v.sort();
        v
    }
}

use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;

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

/// The end of QEMU's log, one line, for an error message.
fn last_lines(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(2).collect();
    let s = tail.into_iter().rev().collect::<Vec<_>>().join(" / ");
    if s.is_empty() {
        "nothing".into()
    } else {
        s
    }
}

/// Blocks until process `pid` (not our child) exits, through a pidfd.
fn wait_pid(pid: u32) {
    // Safe because: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        // Without pidfds, poll for the process's existence.
        while std::path::Path::new(&format!("/proc/{pid}")).exists() {
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Safe because: `pfd` is a valid pollfd for the fd just opened, count 1.
    while unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {}
    // Safe because: the fd is ours and closed once.
    unsafe { libc::close(fd) };
}

/// A random RFC 4122 version-4 uuid, Azure's `vmId` form.
fn uuid() -> String {
    let mut b = crate::crypto::random_bytes(16).unwrap_or_else(|_| vec![0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = crate::crypto::wrap::hex(&b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::InitOptions;

    fn manager() -> (tempfile::TempDir, Arc<VmManager>) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("s");
        Store::init(&root, &InitOptions::default()).unwrap();
        let store = Arc::new(Store::open(&root, None).unwrap());
        (d, VmManager::new(store, None))
    }

    fn spec(name: &str) -> CreateSpec {
        CreateSpec {
            name: name.into(),
            kernel: Some(std::env::current_exe().unwrap().display().to_string()),
            data_disk_sizes_gb: vec![1, 2],
            ..Default::default()
        }
    }

    /// Without a mount a VM can't run: a create that would start it is refused before
    /// anything is made; with --no-start it is made, and its disks.
    #[test]
    fn unmounted_create_makes_nothing_unless_told_not_to_start() {
        let (_d, m) = manager();
        let e = m.create(&spec("v1")).unwrap_err();
        assert!(e.to_string().contains("--no-start"), "{e}");
        assert!(m.store.list().is_empty() && m.store.vm_list().is_empty());
        let rec = m
            .create(&CreateSpec {
                no_start: true,
                ..spec("v1")
            })
            .unwrap();
        assert_eq!(rec.power_state, PowerState::Deallocated);
        assert_eq!(rec.data_disks.len(), 2);
        assert_eq!(m.store.get("v1_DataDisk_1").unwrap().size(), 2 << 30);
        let e = m.start("v1").unwrap_err();
        assert!(e.to_string().contains("mounted"), "{e}");
    }

    /// A create that fails part-way (the OS disk made from the image, then a data
    /// disk's set does not exist) removes the disks it made.
    #[test]
    fn a_failed_create_removes_its_disks() {
        let (_d, m) = manager();
        let opts = crate::store::CreateOptions {
            size: 1 << 20,
            ..Default::default()
        };
        m.store.create_disk("src", &opts).unwrap();
        m.store
            .create_copy(ObjectKind::Image, "img", "src", &Default::default())
            .unwrap();
        let e = m
            .create(&CreateSpec {
                no_start: true,
                image: Some("img".into()),
                data_disk_sizes_gb: vec![1],
                data_disk_encryption_sets: vec!["nope".into()],
                ..spec("v1")
            })
            .unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        let names: Vec<String> = m.store.list().iter().map(|d| d.name()).collect();
        assert_eq!(names, ["src", "img"], "disks left behind");
        assert!(m.store.vm_list().is_empty());
    }
}

//! Start, stop, restart and delete a VM; register a QEMU the user started.

use super::disks::Action;
use super::qmp::Qmp;
use super::supervisor::{wait_pid, Running};
use super::{boot_file, hv, qemu, uuid, Result, VmManager, QUIT_TIMEOUT, START_TIMEOUT};
use crate::store::{External, PowerState, StoreError, VmDisk, VmRecord};
use serde_json::json;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

impl VmManager {
    pub fn start(&self, name: &str) -> Result<()> {
        let _op = self.ops.lock();
        self.start_locked(name)
    }

    pub(super) fn start_locked(&self, name: &str) -> Result<()> {
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
            placement: Default::default(),
            admin_username: None,
            scale_set: None,
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

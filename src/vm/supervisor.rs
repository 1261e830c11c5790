//! The supervisor: a live QEMU (`Running`), its exit, stopping it, the revocation hook.

use super::qmp::Qmp;
use super::{hv, qemu, Result, VmManager, QUIT_TIMEOUT};
use crate::store::{vm_resource_id, Disk, ObjectKind, PowerState, Revocation, StoreError};
use crate::vault::Caller;
use parking_lot::{Condvar, Mutex};
use serde_json::json;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A live QEMU.
pub(super) struct Running {
    pub(super) pid: Mutex<Option<u32>>,
    pub(super) qmp: PathBuf,
    pub(super) accel: Option<qemu::Accel>,
    /// Set by whoever stops the VM: the state to record and why.
    pub(super) stopping: Mutex<Option<(PowerState, Option<String>)>>,
    pub(super) exited: Mutex<bool>,
    exited_cond: Condvar,
}

impl Running {
    pub(super) fn new(pid: Option<u32>, qmp: PathBuf, accel: Option<qemu::Accel>) -> Arc<Self> {
        Arc::new(Running {
            pid: Mutex::new(pid),
            qmp,
            accel,
            stopping: Mutex::new(None),
            exited: Mutex::new(false),
            exited_cond: Condvar::new(),
        })
    }

    pub(super) fn wait_exit(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut e = self.exited.lock();
        while !*e {
            if self.exited_cond.wait_until(&mut e, deadline).timed_out() {
                break;
            }
        }
        *e
    }

    pub(super) fn kill(&self) {
        if let Some(pid) = *self.pid.lock() {
            // Safe because: kill takes plain integers; the pid is our child (reaped
            // only by its supervisor, after which `exited` is set and we don't get
            // here) or a registered QEMU watched through a pidfd.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl VmManager {
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

    /// Called once a VM's QEMU is gone: records why, and wakes whoever waits.
    pub(super) fn exited(
        &self,
        name: &str,
        run: &Arc<Running>,
        status: Option<std::process::ExitStatus>,
    ) {
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
    pub(super) fn stop_running(
        &self,
        name: &str,
        state: PowerState,
        reason: Option<String>,
    ) -> Result<()> {
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
}

/// Blocks until process `pid` (not our child) exits, through a pidfd.
pub(super) fn wait_pid(pid: u32) {
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

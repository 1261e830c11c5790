//! A VM's disks: whether each can be used now, hot-plug attach, and detach.

use super::qmp::Qmp;
use super::{hv, Result, VmManager, UNPLUG_TIMEOUT};
use crate::store::StoreError;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// What a disk check is for, for its message.
#[derive(Clone, Copy)]
pub(super) enum Action {
    Start,
    Attach,
    Register,
}

impl VmManager {
    /// Refuses to start a VM on (or hot-plug, or register) a disk that can't serve
    /// data now, or whose key is revoked with the revocation still pending.
    pub(super) fn check_usable(&self, vm: &str, disk: &str, action: Action) -> Result<()> {
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
        check_sectors(&what, &d)?;
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

    /// `vm disk attach`: records the disk and, on a running VM, hot-plugs it.
    pub fn attach(&self, vm: &str, disk: &str, lun: Option<u32>) -> Result<u32> {
        let _op = self.ops.lock();
        let d = self.store.get_usable(disk)?;
        check_sectors(&format!("disk '{disk}' can't be attached to VM '{vm}'"), &d)?;
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
}

/// QEMU takes only disks of whole 512-byte sectors; one truncated to another size
/// through the mount is refused here, saying how to fix it.
pub(super) fn check_sectors(what: &str, d: &crate::store::Disk) -> Result<()> {
    let size = d.size();
    if size.is_multiple_of(512) {
        return Ok(());
    }
    Err(StoreError::VmConflict(format!(
        "{what}: disk '{}' is {size} bytes, not a whole number of 512-byte sectors, which QEMU refuses; resize it first (e.g. truncate -s {} MOUNT/disks/{})",
        d.name(),
        size.div_ceil(512) * 512,
        d.name()
    )))
}

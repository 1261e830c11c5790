//! Virtual machine records: which disks a VM has at which LUN, its hardware and its
//! last power state (`STORE/vms/NAME.json`, written atomically, 0600). The processes
//! themselves are `vm/`'s; the store keeps the records because the disk rules depend
//! on them (a disk attached to a VM can't be deleted, nor its key changed while the
//! VM is allocated), and those rules are checked where disks change.

use super::*;

pub const VMS_DIR: &str = "vms";
/// Azure's limit for the largest sizes; ours is the same for every size.
pub const MAX_DATA_DISKS: u32 = 64;

/// `powerState` as `az vm show -d` prints it. Only the steady states are recorded;
/// the transitional ones live in `vm/` while a change runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PowerState {
    #[serde(rename = "VM running")]
    Running,
    #[serde(rename = "VM stopped")]
    Stopped,
    #[default]
    #[serde(rename = "VM deallocated")]
    Deallocated,
}

impl PowerState {
    pub fn display(self) -> &'static str {
        match self {
            PowerState::Running => "VM running",
            PowerState::Stopped => "VM stopped",
            PowerState::Deallocated => "VM deallocated",
        }
    }

    /// `PowerState/running` and the like, for the instance view.
    pub fn code(self) -> &'static str {
        match self {
            PowerState::Running => "PowerState/running",
            PowerState::Stopped => "PowerState/stopped",
            PowerState::Deallocated => "PowerState/deallocated",
        }
    }

    /// Running or stopped: the VM still holds its hardware (Azure's "allocated").
    pub fn allocated(self) -> bool {
        self != PowerState::Deallocated
    }
}

/// One disk of a VM. The OS disk has no LUN.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmDisk {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lun: Option<u32>,
    /// `FromImage`, `Empty` or `Attach`, as Azure records how the disk came.
    pub create_option: String,
}

/// A QEMU the user started and registered (`vm register`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct External {
    pub qmp: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmRecord {
    pub name: String,
    pub vm_id: String,
    /// The size preset (`Standard_B1s`...), which sets vCPUs and memory.
    pub size: String,
    pub vcpus: u32,
    pub memory_mb: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_disk: Option<VmDisk>,
    #[serde(default)]
    pub data_disks: Vec<VmDisk>,
    pub power_state: PowerState,
    /// Why the VM last stopped, when it was not asked to (revocation, guest shutdown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_reason: Option<String>,
    /// The QEMU process while running, so a later daemon can end an orphan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external: Option<External>,
    pub time_created: String,
    /// Resource group and location (absent: `diskvault`, `local`).
    #[serde(
        default,
        skip_serializing_if = "crate::store::arm::Placement::is_empty"
    )]
    pub placement: crate::store::arm::Placement,
    /// `--admin-username` and whether `--generate-ssh-keys` was given (recorded; the
    /// guest's image decides what it does with them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_username: Option<String>,
    /// The scale set this VM is an instance of, and its instance id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_set: Option<(String, u32)>,
}

impl VmRecord {
    /// Every disk: the OS disk first, then the data disks in LUN order.
    pub fn disks(&self) -> impl Iterator<Item = &VmDisk> {
        self.os_disk.iter().chain(self.data_disks.iter())
    }

    pub fn has_disk(&self, disk: &str) -> bool {
        self.disks().any(|d| d.name == disk)
    }

    /// The lowest free LUN, as `az vm disk attach` picks.
    pub fn free_lun(&self) -> u32 {
        (0..)
            .find(|l| !self.data_disks.iter().any(|d| d.lun == Some(*l)))
            .unwrap_or(0)
    }
}

/// `/diskvault/virtualMachines/NAME`, the id a disk's `managedBy` holds.
pub fn vm_resource_id(name: &str) -> String {
    format!("/diskvault/virtualMachines/{name}")
}

/// Azure's rule for Linux VM names: 1-64 letters, digits, '-', '_' and '.'; no
/// leading '_' or '.', no trailing '.' or '-'.
pub fn validate_vm_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(StoreError::InvalidArgument(format!(
            "invalid VM name '{}': {reason}",
            name.chars().take(80).collect::<String>()
        )))
    };
    if name.is_empty() || name.len() > 64 {
        return bad("it must be 1 to 64 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return bad("use only letters, digits, '_', '.' and '-'");
    }
    if name.starts_with(['_', '.', '-']) || name.ends_with(['.', '-']) {
        return bad("it must start with a letter or digit and not end with '.' or '-'");
    }
    if crate::store::VM_RESERVED.contains(&name) {
        return bad("it is the name of a control file");
    }
    Ok(())
}

/// Names that `.vault/vms/` uses for its own files.
pub const VM_RESERVED: &[&str] = &["create", "register"];

#[derive(Default)]
pub(super) struct Vms {
    pub records: RwLock<BTreeMap<String, VmRecord>>,
}

impl Store {
    fn vms_dir(&self) -> PathBuf {
        self.root.join(VMS_DIR)
    }

    /// Loads the VM records at open. A VM recorded as running was run by a daemon
    /// that is gone (the store is ours now): it is stopped, and its QEMU, if it still
    /// runs on the dead mount, is ended.
    pub(super) fn load_vms(&self) -> Result<()> {
        let dir = self.vms_dir();
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(StoreError::io(format!("reading {}", dir.display()), e)),
        };
        let mut recs = self.vms.records.write();
        for e in entries.flatten() {
            let path = e.path();
            let Some(name) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
            else {
                continue;
            };
            if name.starts_with('.') {
                continue;
            }
            let bytes = fs::read(&path)
                .map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
            let mut rec: VmRecord = serde_json::from_slice(&bytes).map_err(|e| {
                StoreError::InvalidArgument(format!(
                    "VM record {} is corrupt ({e}); restore it from a backup or remove it",
                    path.display()
                ))
            })?;
            if rec.name != name {
                return Err(StoreError::InvalidArgument(format!(
                    "VM record {} names VM '{}'; restore it from a backup or remove it",
                    path.display(),
                    rec.name
                )));
            }
            if rec.power_state == PowerState::Running {
                if let Some(pid) = rec.pid {
                    end_orphan(pid, &rec.vm_id);
                }
                rec.power_state = PowerState::Stopped;
                rec.pid = None;
                rec.status_reason = Some(format!(
                    "Stopped: the diskvault daemon that ran it exited (found at {})",
                    now_rfc3339()
                ));
                self.write_vm(&rec)?;
            }
            recs.insert(rec.name.clone(), rec);
        }
        Ok(())
    }

    fn write_vm(&self, rec: &VmRecord) -> Result<()> {
        let dir = self.vms_dir();
        if !dir.is_dir() {
            durable::create_dir(&dir, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        }
        let mut bytes = serde_json::to_vec_pretty(rec).expect("VM record serializes");
        bytes.push(b'\n');
        let path = dir.join(format!("{}.json", rec.name));
        durable::write_atomic(&path, &bytes, 0o600)
            .map_err(|e| StoreError::io(format!("saving VM '{}'", rec.name), e))
    }

    pub fn vm_list(&self) -> Vec<VmRecord> {
        self.vms.records.read().values().cloned().collect()
    }

    pub fn vm_get(&self, name: &str) -> Result<VmRecord> {
        self.vms
            .records
            .read()
            .get(name)
            .cloned()
            .ok_or_else(|| StoreError::VmNotFound(name.to_string()))
    }

    /// Saves a new VM. Its disks must exist and belong to no other VM.
    pub fn vm_create(&self, rec: &VmRecord) -> Result<()> {
        validate_vm_name(&rec.name)?;
        let _ns = self.ns.lock();
        if self.vms.records.read().contains_key(&rec.name) {
            return Err(StoreError::VmExists(rec.name.clone()));
        }
        for d in rec.disks() {
            self.get_or_err(&d.name)?;
            self.check_unowned(&d.name)?;
        }
        self.write_vm(rec)?;
        self.vms
            .records
            .write()
            .insert(rec.name.clone(), rec.clone());
        Ok(())
    }

    /// Changes a VM's record atomically (file first, then memory). `f` may refuse.
    pub fn vm_update<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut VmRecord) -> Result<T>,
    ) -> Result<T> {
        let _ns = self.ns.lock();
        self.vm_update_locked(name, f)
    }

    fn vm_update_locked<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut VmRecord) -> Result<T>,
    ) -> Result<T> {
        let mut rec = self.vm_get(name)?;
        let out = f(&mut rec)?;
        self.write_vm(&rec)?;
        self.vms.records.write().insert(name.to_string(), rec);
        Ok(out)
    }

    /// A change of state that has already happened (QEMU is gone): made in memory
    /// even when the file can't be saved, whose error is then returned saying so.
    pub fn vm_update_volatile(&self, name: &str, f: impl FnOnce(&mut VmRecord)) -> Result<()> {
        let _ns = self.ns.lock();
        let mut rec = self.vm_get(name)?;
        f(&mut rec);
        let saved = self.write_vm(&rec);
        self.vms.records.write().insert(name.to_string(), rec);
        saved.map_err(|e| {
            StoreError::Hypervisor(format!(
                "VM '{name}' is {}, but its record could not be saved ({e}); it is saved at the next change, or found stopped at the next mount",
                self.vm_get(name).map(|r| r.power_state.display()).unwrap_or("changed")
            ))
        })
    }

    /// Attaches disk `disk` at `lun` (the lowest free one if `None`); Azure's errors
    /// for a taken LUN, a full VM and a disk another VM owns.
    pub fn vm_attach(&self, vm: &str, disk: &str, lun: Option<u32>) -> Result<u32> {
        let _ns = self.ns.lock();
        self.get_or_err(disk)?;
        let rec = self.vm_get(vm)?;
        if rec.has_disk(disk) {
            return Err(StoreError::VmConflict(format!(
                "disk '{disk}' is already attached to VM '{vm}'"
            )));
        }
        self.check_unowned(disk)?;
        self.vm_update_locked(vm, |r| {
            if r.data_disks.len() as u32 >= MAX_DATA_DISKS {
                return Err(StoreError::VmConflict(format!(
                    "The maximum number of data disks allowed to be attached to a VM of this size is {MAX_DATA_DISKS}."
                )));
            }
            let lun = match lun {
                Some(l) if l >= MAX_DATA_DISKS => {
                    return Err(StoreError::InvalidArgument(format!(
                        "parameter 'dataDisk.lun' is out of range: {l} (use 0 to {})",
                        MAX_DATA_DISKS - 1
                    )))
                }
                Some(l) => {
                    if let Some(d) = r.data_disks.iter().find(|d| d.lun == Some(l)) {
                        return Err(StoreError::VmConflict(format!(
                            "A disk at LUN {l} already exists ('{}'); pick another --lun or leave it out",
                            d.name
                        )));
                    }
                    l
                }
                None => r.free_lun(),
            };
            r.data_disks.push(VmDisk {
                name: disk.to_string(),
                lun: Some(lun),
                create_option: "Attach".into(),
            });
            r.data_disks.sort_by_key(|d| d.lun);
            Ok(lun)
        })
    }

    /// Detaches a data disk; returns its LUN. The OS disk can't be detached.
    pub fn vm_detach(&self, vm: &str, disk: &str) -> Result<u32> {
        self.vm_update(vm, |r| {
            if r.os_disk.as_ref().is_some_and(|d| d.name == disk) {
                return Err(StoreError::VmConflict(format!(
                    "disk '{disk}' is the OS disk of VM '{vm}' and can't be detached; delete the VM to free it"
                )));
            }
            let Some(i) = r.data_disks.iter().position(|d| d.name == disk) else {
                return Err(StoreError::InvalidArgument(format!(
                    "disk '{disk}' is not attached to VM '{vm}'; see 'diskvault vm show {vm}'"
                )));
            };
            Ok(r.data_disks.remove(i).lun.unwrap_or(0))
        })
    }

    /// Removes a VM's record; its disks stay (Azure's default).
    pub fn vm_remove(&self, name: &str) -> Result<()> {
        let _ns = self.ns.lock();
        self.vm_get(name)?;
        let path = self.vms_dir().join(format!("{name}.json"));
        match fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("deleting VM '{name}'"), e)),
        }
        durable::sync_dir(&self.vms_dir())
            .map_err(|e| StoreError::io(format!("deleting VM '{name}'"), e))?;
        self.vms.records.write().remove(name);
        Ok(())
    }

    /// The VM a disk is attached to, if any.
    pub fn disk_owner(&self, disk: &str) -> Option<VmRecord> {
        self.vms
            .records
            .read()
            .values()
            .find(|r| r.has_disk(disk))
            .cloned()
    }

    fn check_unowned(&self, disk: &str) -> Result<()> {
        match self.disk_owner(disk) {
            Some(o) => Err(StoreError::VmConflict(format!(
                "Cannot attach the disk {disk} because it is already attached to VM {}. A disk can be attached to only one VM at a time.",
                o.name
            ))),
            None => Ok(()),
        }
    }

    /// Refuses to delete or rename a disk that a VM has.
    pub(super) fn check_not_attached(&self, disk: &str, what: &str) -> Result<()> {
        match self.disk_owner(disk) {
            Some(o) => Err(StoreError::VmConflict(format!(
                "Disk '{disk}' is attached to VM '{}' and can't be {what}; detach it first ('diskvault vm disk detach --vm-name {} --name {disk}')",
                o.name, o.name
            ))),
            None => Ok(()),
        }
    }

    /// Refuses a change that Azure allows only while the disk's VM is deallocated.
    pub(super) fn check_not_allocated(&self, disk: &str, what: &str) -> Result<()> {
        match self.disk_owner(disk) {
            Some(o) if o.power_state.allocated() => Err(StoreError::VmConflict(format!(
                "{what} of disk '{disk}' is not allowed while it is attached to VM '{}', which is allocated ({}); deallocate the VM ('diskvault vm deallocate {}') or detach the disk, then retry",
                o.name,
                o.power_state.display(),
                o.name
            ))),
            _ => Ok(()),
        }
    }

    /// Truncate: a disk whose VM is allocated keeps its size (Azure resizes a disk
    /// only while its VM is deallocated, and never shrinks one).
    pub fn resize(&self, disk: &Disk, size: u64) -> Result<()> {
        if size != disk.size() && disk.kind == ObjectKind::Disk {
            self.check_not_allocated(&disk.name(), "Resizing")?;
        }
        disk.set_size(size)
    }

    /// `diskState`: `Attached` (its VM is allocated), `Reserved` (its VM is
    /// deallocated) or `Unattached`, with the VM's id for `managedBy`.
    pub fn disk_state(&self, disk: &str) -> (&'static str, Option<String>) {
        match self.disk_owner(disk) {
            Some(o) if o.power_state.allocated() => ("Attached", Some(vm_resource_id(&o.name))),
            Some(o) => ("Reserved", Some(vm_resource_id(&o.name))),
            None => ("Unattached", None),
        }
    }
}

/// Ends a QEMU left running by a daemon that died, if `pid` is still that VM's QEMU
/// (its command line carries the VM's uuid); its disks fail with ENOTCONN anyway.
fn end_orphan(pid: u32, vm_id: &str) {
    let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return;
    };
    let ours = cmd.split(|b| *b == 0).any(|a| a == vm_id.as_bytes())
        && cmd.split(|b| *b == 0).any(|a| a == b"-uuid");
    if ours {
        log::warn!("ending QEMU pid {pid}, left running on a mount that is gone");
        // Safe because: kill takes plain integers; the pid was checked to be our VM's
        // QEMU just above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

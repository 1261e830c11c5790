//! `vm create`: checks the request, makes the VM's disks and record, then starts it.

use super::{boot_file, qemu, uuid, CreateSpec, Result, VmManager};
use crate::store::arm::{same_location, ResType};
use crate::store::{ObjectKind, PowerState, StoreError, VmDisk, VmRecord};

/// Azure's rule for Linux admin user names: 1-32 characters, letters, digits, '-',
/// '_' and '.', not starting with '-' or '.', and not a reserved name.
fn validate_admin(u: &str) -> Result<()> {
    const RESERVED: [&str; 8] = [
        "root",
        "admin",
        "administrator",
        "user",
        "guest",
        "test",
        "sys",
        "daemon",
    ];
    let ok = (1..=32).contains(&u.len())
        && u.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !u.starts_with(['-', '.'])
        && !RESERVED.contains(&u.to_ascii_lowercase().as_str());
    if ok {
        Ok(())
    } else {
        Err(StoreError::InvalidArgument(format!(
            "invalid --admin-username '{}': use 1-32 letters, digits, '-', '_' or '.', not a reserved name like root or admin",
            u.chars().take(40).collect::<String>()
        )))
    }
}

impl VmManager {
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
        // Unless given, a VM is where its image, OS disk or set is (as az takes the
        // resource group's; a group's location comes first in `place`).
        let inherit = match (&spec.image, &spec.attach_os_disk) {
            (Some(img), _) => self
                .store
                .find_source(img, &[ObjectKind::Image])
                .ok()
                .map(|d| d.placement()),
            (None, Some(d)) => self.store.get(d).map(|d| d.placement()),
            (None, None) => None,
        }
        .or_else(|| {
            spec.os_disk_encryption_set
                .iter()
                .chain(spec.data_disk_encryption_sets.iter())
                .find_map(|s| self.store.keyring().des(s).ok())
                .map(|d| d.placement)
        });
        let placement = self.store.place(&spec.placement, inherit.as_ref())?;
        if let Some(u) = &spec.admin_username {
            validate_admin(u)?;
        }
        // The image's boot definition, unless the command gives its own kernel.
        let boot = match (&spec.image, &spec.kernel) {
            (Some(img), None) => self
                .store
                .find_source(img, &[ObjectKind::Image])?
                .meta()
                .boot
                .clone(),
            _ => None,
        };
        let (kernel_arg, initrd_arg, append_arg) = match &boot {
            Some(b) => (Some(&b.kernel), b.initrd.as_ref(), b.append.as_ref()),
            None => (
                spec.kernel.as_ref(),
                spec.initrd.as_ref(),
                spec.append.as_ref(),
            ),
        };
        let kernel = kernel_arg.map(|k| boot_file(k)).transpose()?;
        let initrd = initrd_arg.map(|k| boot_file(k)).transpose()?;
        let append = append_arg.cloned();
        if let Some(a) = &append {
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
        for set in spec
            .os_disk_encryption_set
            .iter()
            .filter(|_| spec.image.is_some())
            .chain(sets.iter())
        {
            let rec = self.store.keyring().des(set)?;
            self.store
                .check_set_location((ResType::Vm, &spec.name), &placement, &rec)?;
        }
        if let Some(d) = &spec.attach_os_disk {
            let disk = self.store.get_usable(d)?;
            super::disks::check_sectors(&format!("VM '{}' can't use it", spec.name), &disk)?;
            same_location(
                (ResType::Vm, &spec.name, placement.location()),
                (ResType::Disk, d, disk.placement().location()),
            )?;
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
                        placement: placement.clone(),
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
                    placement: placement.clone(),
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
                append,
                os_disk,
                data_disks,
                power_state: PowerState::Deallocated,
                status_reason: None,
                pid: None,
                external: None,
                time_created: crate::store::now_rfc3339(),
                placement: placement.clone(),
                admin_username: spec.admin_username.clone(),
                scale_set: spec.scale_set.clone(),
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{InitOptions, Store};
    use std::sync::Arc;

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

//! `vmss`: scale sets of identical VMs. Each instance is an ordinary VM made from
//! the set's model, so revocation, `umount --stop-vms` and the same-key rules apply
//! to it as to any VM. The store records each change before making it
//! (`store/vmss.rs`), so a crash leaves no orphan instance or disk.

use super::{CreateSpec, Result, VmManager};
use crate::store::vmss::{
    instance_disks, validate_vmss_name, Pending, VmssModel, VmssRecord, MAX_INSTANCES,
};
use crate::store::{ObjectKind, StoreError};
use serde::{Deserialize, Serialize};

/// What `vmss create` asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct VmssSpec {
    pub name: String,
    pub model: VmssModel,
    pub instance_count: u32,
    #[serde(skip_serializing_if = "crate::store::arm::Placement::is_empty")]
    pub placement: crate::store::arm::Placement,
    /// Define the instances without starting them.
    pub no_start: bool,
}

/// A power operation on a set's instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Power {
    Start,
    Stop,
    Deallocate,
    Restart,
}

impl VmManager {
    /// `vmss create`: records the set, then makes each instance; on any failure the
    /// instances made so far and the record are removed again.
    pub fn vmss_create(&self, spec: &VmssSpec) -> Result<VmssRecord> {
        let _g = self.vmss_ops.lock();
        validate_vmss_name(&spec.name)?;
        if self.store.vmss_get(&spec.name).is_ok() {
            return Err(StoreError::VmConflict(format!(
                "a VM scale set named '{}' already exists; choose another name or delete it first",
                spec.name
            )));
        }
        if spec.instance_count > MAX_INSTANCES {
            return Err(StoreError::InvalidArgument(format!(
                "--instance-count {} is out of range; use 0 to {MAX_INSTANCES}",
                spec.instance_count
            )));
        }
        let m = &spec.model;
        if !matches!(
            m.upgrade_policy.as_str(),
            "Manual" | "Automatic" | "Rolling"
        ) {
            return Err(StoreError::InvalidArgument(format!(
                "unknown --upgrade-policy '{}'; use automatic, manual or rolling",
                m.upgrade_policy
            )));
        }
        super::qemu::size(&m.vm_sku).map_err(StoreError::InvalidArgument)?;
        self.store.find_source(&m.image, &[ObjectKind::Image])?;
        let placement = self.store.place(&spec.placement, None)?;
        let ids: Vec<u32> = (0..spec.instance_count).collect();
        // Names first, so a clash makes nothing.
        for id in &ids {
            let vm = crate::store::vmss::instance_name(&spec.name, *id);
            if self.store.vm_get(&vm).is_ok() {
                return Err(StoreError::VmExists(vm));
            }
            for d in instance_disks(&spec.name, *id, m.data_disk_sizes_gb.len()) {
                if self.store.get(&d).is_some() {
                    return Err(StoreError::DiskExists(d));
                }
            }
        }
        let mut rec = VmssRecord {
            name: spec.name.clone(),
            unique_id: super::uuid(),
            model: m.clone(),
            instances: vec![],
            pending: Some(Pending {
                adding: ids.clone(),
                creating: true,
                ..Default::default()
            }),
            time_created: crate::store::now_rfc3339(),
            placement,
        };
        self.store.vmss_save(&rec)?;
        crate::fault::point("vmss.recorded");
        if let Err(e) = self.add_instances(&mut rec, &ids, spec.no_start) {
            let _ = self.store.vmss_remove(&rec.name);
            return Err(e);
        }
        rec.pending = None;
        self.store.vmss_save(&rec)?;
        log::info!(
            "created VM scale set '{}' with {} instances",
            rec.name,
            ids.len()
        );
        Ok(rec)
    }

    /// Makes instances `ids` (already recorded as pending); on a failure removes the
    /// ones made and leaves `rec.instances` as it was.
    fn add_instances(&self, rec: &mut VmssRecord, ids: &[u32], no_start: bool) -> Result<()> {
        let mut made = Vec::new();
        for id in ids {
            let m = &rec.model;
            let spec = CreateSpec {
                name: rec.instance_name(*id),
                image: Some(m.image.clone()),
                os_disk_encryption_set: m.os_disk_encryption_set.clone(),
                storage_sku: m.storage_sku.clone(),
                data_disk_sizes_gb: m.data_disk_sizes_gb.clone(),
                data_disk_encryption_sets: m.data_disk_encryption_sets.clone(),
                size: Some(m.vm_sku.clone()),
                no_start,
                placement: rec.placement.clone(),
                admin_username: m.admin_username.clone(),
                scale_set: Some((rec.name.clone(), *id)),
                ..Default::default()
            };
            match self.create(&spec) {
                Ok(_) => made.push(*id),
                Err(e) => {
                    for i in made.iter().chain(std::iter::once(id)) {
                        let _ = self.remove_instance(rec, *i);
                    }
                    // vm create's own advice (start or delete the VM) doesn't apply:
                    // the instance is gone again.
                    let why = e.to_string();
                    let why = why
                        .split_once(" did not start: ")
                        .map_or(why.as_str(), |(_, r)| r)
                        .split("; once fixed")
                        .next()
                        .unwrap_or_default()
                        .to_string();
                    let msg = format!(
                        "scale set '{}': instance {} could not be made ({why}); the instances this command made were removed again, and the set is as it was",
                        rec.name,
                        rec.instance_name(*id)
                    );
                    return Err(match e {
                        StoreError::VmCannotStart(_) => StoreError::VmCannotStart(msg),
                        StoreError::Hypervisor(_) => StoreError::Hypervisor(msg),
                        e => e,
                    });
                }
            }
            crate::fault::point("vmss.instance");
        }
        rec.instances.extend(made);
        rec.instances.sort_unstable();
        Ok(())
    }

    /// Powers off and deletes an instance's VM and the disks the set made for it.
    fn remove_instance(&self, rec: &VmssRecord, id: u32) -> Result<()> {
        let vm = rec.instance_name(id);
        if self.store.vm_get(&vm).is_ok() {
            self.delete(&vm)?;
        }
        self.store.vmss_remove_instance(rec, id)
    }

    /// `vmss scale --new-capacity N`: out with new ids after the highest, in from
    /// the highest ids down.
    pub fn vmss_scale(&self, name: &str, capacity: u32) -> Result<VmssRecord> {
        let _g = self.vmss_ops.lock();
        let mut rec = self.store.vmss_get(name)?;
        if capacity > MAX_INSTANCES {
            return Err(StoreError::InvalidArgument(format!(
                "--new-capacity {capacity} is out of range; use 0 to {MAX_INSTANCES}"
            )));
        }
        let now = rec.instances.len() as u32;
        if capacity > now {
            let ids = rec.next_ids(capacity - now);
            rec.pending = Some(Pending {
                adding: ids.clone(),
                ..Default::default()
            });
            self.store.vmss_save(&rec)?;
            let no_start = self.mount.is_none();
            let r = self.add_instances(&mut rec, &ids, no_start);
            rec.pending = None;
            self.store.vmss_save(&rec)?;
            r?;
        } else if capacity < now {
            let mut gone = rec.instances.clone();
            gone.sort_unstable_by(|a, b| b.cmp(a));
            gone.truncate((now - capacity) as usize);
            self.remove_ids(&mut rec, &gone)?;
        }
        Ok(rec)
    }

    /// `vmss delete-instances --instance-ids ...`.
    pub fn vmss_delete_instances(&self, name: &str, ids: &[u32]) -> Result<VmssRecord> {
        let _g = self.vmss_ops.lock();
        let mut rec = self.store.vmss_get(name)?;
        if let Some(bad) = ids.iter().find(|i| !rec.instances.contains(i)) {
            return Err(StoreError::NotFound(format!(
                "scale set '{name}' has no instance {bad}; see 'diskvault vmss list-instances -n {name}'"
            )));
        }
        self.remove_ids(&mut rec, ids)?;
        Ok(rec)
    }

    fn remove_ids(&self, rec: &mut VmssRecord, ids: &[u32]) -> Result<()> {
        rec.pending = Some(Pending {
            removing: ids.to_vec(),
            ..Default::default()
        });
        self.store.vmss_save(rec)?;
        for id in ids {
            self.remove_instance(rec, *id)?;
            crate::fault::point("vmss.removed");
        }
        rec.instances.retain(|i| !ids.contains(i));
        rec.pending = None;
        self.store.vmss_save(rec)
    }

    /// `vmss delete`: every instance and the disks the set made, then the set.
    pub fn vmss_delete(&self, name: &str) -> Result<()> {
        let _g = self.vmss_ops.lock();
        let mut rec = match self.store.vmss_get(name) {
            Ok(r) => r,
            Err(StoreError::Corrupt(why)) => {
                // The instances still say whose they are: stopped first, then removed
                // with the disks the set made for them.
                for vm in self.store.vm_list() {
                    if vm.scale_set.as_ref().is_some_and(|(s, _)| s == name) {
                        self.stop_running(&vm.name, crate::store::PowerState::Deallocated, None)?;
                    }
                }
                let gone = self.store.vmss_remove_unreadable(name)?;
                log::warn!(
                    "deleted scale set '{name}' with an unreadable record ({why}); {gone:?}"
                );
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        rec.pending = Some(Pending {
            deleting: true,
            ..Default::default()
        });
        self.store.vmss_save(&rec)?;
        for id in rec.instances.clone() {
            self.remove_instance(&rec, id)?;
            crate::fault::point("vmss.removed");
        }
        self.store.vmss_remove(name)?;
        log::info!("deleted VM scale set '{name}' with its instances and their disks");
        Ok(())
    }

    /// Start, stop, deallocate or restart instances (all, or `ids`). Each is tried;
    /// the first failure is returned after the rest were done.
    pub fn vmss_power(&self, name: &str, op: Power, ids: Option<&[u32]>) -> Result<()> {
        let rec = self.store.vmss_get(name)?;
        let ids: Vec<u32> = match ids {
            Some(ids) => {
                if let Some(bad) = ids.iter().find(|i| !rec.instances.contains(i)) {
                    return Err(StoreError::NotFound(format!(
                        "scale set '{name}' has no instance {bad}; see 'diskvault vmss list-instances -n {name}'"
                    )));
                }
                ids.to_vec()
            }
            None => rec.instances.clone(),
        };
        let mut first = None;
        for id in ids {
            let vm = rec.instance_name(id);
            let r = match op {
                Power::Start => self.start(&vm),
                Power::Stop => self.stop(&vm, false),
                Power::Deallocate => self.stop(&vm, true),
                Power::Restart => self.restart(&vm),
            };
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }
}

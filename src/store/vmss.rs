//! VM scale set records (`STORE/vmss/NAME.json`, 0600): the model every instance is
//! made from, and which instances exist. Instances are ordinary VMs (`NAME_ID`) with
//! disks `NAME_ID_OsDisk` and `NAME_ID_DataDisk_LUN`.
//!
//! Crash safety: a create or scale writes the record with the instance ids it is
//! about to add or remove (`pending`) before it touches any VM or disk, and clears
//! it after. At open, a pending change is undone for ids being added (their VMs and
//! disks are removed; a set still being created is removed whole) and finished for
//! ids being removed, so no orphan instance or disk is left and the set is as it
//! was last recorded.

use super::arm::Placement;
use super::error::{Result, StoreError};
use super::Store;
use crate::durable;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::ErrorKind;
use std::path::PathBuf;

pub const VMSS_DIR: &str = "vmss";
/// Most instances one set may have here (Azure allows 1,000; each is a QEMU).
pub const MAX_INSTANCES: u32 = 100;

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmssModel {
    pub image: String,
    /// The VM size of every instance (`--vm-sku`).
    pub vm_sku: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_disk_encryption_set: Option<String>,
    #[serde(default)]
    pub data_disk_sizes_gb: Vec<u64>,
    #[serde(default)]
    pub data_disk_encryption_sets: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_sku: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_username: Option<String>,
    /// `manual`, `automatic` or `rolling` (recorded; instances always follow the model).
    pub upgrade_policy: String,
}

/// A change in progress (see the module doc).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Pending {
    #[serde(default)]
    pub adding: Vec<u32>,
    #[serde(default)]
    pub removing: Vec<u32>,
    /// The set itself is being created (undo removes it) or deleted (redo finishes).
    #[serde(default)]
    pub creating: bool,
    #[serde(default)]
    pub deleting: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmssRecord {
    pub name: String,
    pub unique_id: String,
    pub model: VmssModel,
    /// Instance ids, ascending.
    pub instances: Vec<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    pub time_created: String,
    #[serde(default, skip_serializing_if = "Placement::is_empty")]
    pub placement: Placement,
}

impl VmssRecord {
    pub fn instance_name(&self, id: u32) -> String {
        instance_name(&self.name, id)
    }

    /// The next instance ids for `n` more instances: after the highest ever used
    /// here, as Azure numbers them.
    pub fn next_ids(&self, n: u32) -> Vec<u32> {
        let start = self.instances.iter().max().map_or(0, |m| m + 1);
        (start..start + n).collect()
    }
}

pub fn instance_name(set: &str, id: u32) -> String {
    format!("{set}_{id}")
}

/// The disks an instance's VM create makes (and its delete removes).
pub fn instance_disks(set: &str, id: u32, data: usize) -> Vec<String> {
    let vm = instance_name(set, id);
    std::iter::once(format!("{vm}_OsDisk"))
        .chain((0..data).map(|l| format!("{vm}_DataDisk_{l}")))
        .collect()
}

/// Azure's rule for scale set names: 1-64 letters, digits, '-', '_' and '.'; here
/// also no '_' followed only by digits at the end, so instance names stay unique.
pub fn validate_vmss_name(name: &str) -> Result<()> {
    super::validate_vm_name(name).map_err(|e| match e {
        StoreError::InvalidArgument(m) => {
            StoreError::InvalidArgument(m.replace("VM name", "scale set name"))
        }
        e => e,
    })?;
    if name.chars().count() > 58 {
        return Err(StoreError::InvalidArgument(format!(
            "invalid scale set name '{name}': at most 58 characters (instance names add _ID)"
        )));
    }
    Ok(())
}

impl Store {
    fn vmss_dir(&self) -> PathBuf {
        self.root.join(VMSS_DIR)
    }

    /// Every readable scale set (`vmss_names` has the unreadable ones too).
    pub fn vmss_list(&self) -> Vec<VmssRecord> {
        self.vmss_names()
            .iter()
            .filter_map(|n| self.vmss_get(n).ok())
            .collect()
    }

    pub fn vmss_get(&self, name: &str) -> Result<VmssRecord> {
        if validate_vmss_name(name).is_err() {
            return Err(StoreError::NotFound(format!(
                "no VM scale set named '{}'; see 'diskvault vmss list'",
                name.chars().take(80).collect::<String>()
            )));
        }
        let path = self.vmss_dir().join(format!("{name}.json"));
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(StoreError::NotFound(format!(
                    "no VM scale set named '{name}'; see 'diskvault vmss list'"
                )))
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let rec: VmssRecord = serde_json::from_slice(&bytes).map_err(|e| {
            StoreError::Corrupt(format!(
                "scale set record {} is corrupt ({e}); restore it from a backup, or delete the set ('diskvault vmss delete -n {name}' deletes the instances that name it)",
                path.display()
            ))
        })?;
        if rec.name != name {
            return Err(StoreError::Corrupt(format!(
                "scale set record {} names scale set '{}'; restore it from a backup, or delete the set ('diskvault vmss delete -n {name}')",
                path.display(),
                rec.name.chars().take(80).collect::<String>()
            )));
        }
        Ok(rec)
    }

    /// Names of every scale set record, readable or not.
    pub fn vmss_names(&self) -> Vec<String> {
        let Ok(entries) = fs::read_dir(self.vmss_dir()) else {
            return vec![];
        };
        let mut out: Vec<String> = entries
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_str()?.strip_suffix(".json")?.to_string();
                (!n.starts_with('.') && validate_vmss_name(&n).is_ok()).then_some(n)
            })
            .collect();
        out.sort();
        out
    }

    /// Deletes a scale set whose record can't be read: the VMs that say they are its
    /// instances, the disks the set made for them, then the record.
    pub fn vmss_remove_unreadable(&self, name: &str) -> Result<Vec<String>> {
        let mut gone = Vec::new();
        for vm in self.vm_list() {
            let Some((set, id)) = &vm.scale_set else {
                continue;
            };
            if set != name {
                continue;
            }
            let made: Vec<String> = vm
                .disks()
                .map(|d| d.name.clone())
                .filter(|d| d.starts_with(&format!("{}_", vm.name)))
                .collect();
            self.vm_remove(&vm.name)?;
            for d in made {
                if self.get(&d).is_some() && self.disk_owner(&d).is_none() {
                    self.delete_disk(&d)?;
                }
            }
            gone.push(format!("{}({id})", vm.name));
        }
        self.vmss_remove(name)?;
        Ok(gone)
    }

    /// Writes a scale set's record atomically.
    pub fn vmss_save(&self, rec: &VmssRecord) -> Result<()> {
        let dir = self.vmss_dir();
        if !dir.is_dir() {
            durable::create_dir(&dir, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        }
        let mut bytes = serde_json::to_vec_pretty(rec).expect("serializes");
        bytes.push(b'\n');
        durable::write_atomic(&dir.join(format!("{}.json", rec.name)), &bytes, 0o600)
            .map_err(|e| StoreError::io(format!("saving scale set '{}'", rec.name), e))
    }

    pub fn vmss_remove(&self, name: &str) -> Result<()> {
        let dir = self.vmss_dir();
        match fs::remove_file(dir.join(format!("{name}.json"))) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(format!("deleting scale set '{name}'"), e)),
        }
        durable::sync_dir(&dir)
            .map_err(|e| StoreError::io(format!("deleting scale set '{name}'"), e))
    }

    /// Removes an instance's VM record and the disks the set made for it; what is
    /// already gone is skipped. The VM must not be running (at open nothing runs).
    pub fn vmss_remove_instance(&self, rec: &VmssRecord, id: u32) -> Result<()> {
        let vm = rec.instance_name(id);
        if self.vm_get(&vm).is_ok() {
            self.vm_remove(&vm)?;
        }
        for d in instance_disks(&rec.name, id, rec.model.data_disk_sizes_gb.len()) {
            if self.get(&d).is_some() && self.disk_owner(&d).is_none() {
                self.delete_disk(&d)?;
            }
        }
        Ok(())
    }

    /// At open: every scale set change a crash interrupted is undone (ids being
    /// added, a set being created) or finished (ids being removed, a set being deleted).
    pub(super) fn recover_vmss(&self) -> Result<()> {
        for mut rec in self.vmss_list() {
            let Some(p) = rec.pending.clone() else {
                continue;
            };
            log::warn!(
                "scale set '{}': finishing a change a crash interrupted ({p:?})",
                rec.name
            );
            for id in p.adding.iter().chain(p.removing.iter()) {
                self.vmss_remove_instance(&rec, *id)?;
            }
            if p.deleting {
                for id in rec.instances.clone() {
                    self.vmss_remove_instance(&rec, id)?;
                }
            }
            if p.creating || p.deleting {
                self.vmss_remove(&rec.name)?;
                continue;
            }
            rec.instances
                .retain(|i| !p.removing.contains(i) && !p.adding.contains(i));
            rec.pending = None;
            self.vmss_save(&rec)?;
        }
        Ok(())
    }
}

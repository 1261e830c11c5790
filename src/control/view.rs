//! The Azure-shaped JSON views that `.vault/` files and the CLI show: disks, disk
//! encryption sets and the store's status. They read typed state from the store; the
//! key vault's own REST shapes are in `vault/keyvault/view.rs`, because the vault's
//! operations answer with them (as Key Vault's API does).

use crate::store::arm::ResType;
use crate::store::des::{DesRecord, TENANT_ID};
use crate::store::Usage;
use crate::store::{Disk, ObjectKind, Result, Sku, Store, VmDisk, VmRecord, STORE_VERSION};
use crate::vm::RuntimeInfo;
use serde_json::{json, Value};
use std::collections::HashMap;

/// `.vault/status.json`: the store, its reconciler, the vault, every set and disk.
pub fn status(store: &Store) -> Value {
    let usage = store.usage_all();
    json!({
        "store": store.root().display().to_string(),
        "formatVersion": STORE_VERSION,
        "platformKeyId": store.keyring().platform_key().map(|k| k.to_string()),
        "reconcilerPasses": store.reconcile_passes(),
        "reconciler": store.reconciler_health(),
        "merges": store.merge_status(),
        "keyVault": self::vault(store),
        "diskEncryptionSets": store
            .des_list()
            .iter()
            .map(|d| set_json(store, d))
            .collect::<Vec<_>>(),
        "disks": list(store, ObjectKind::Disk, &usage),
        "snapshots": list(store, ObjectKind::Snapshot, &usage),
        "images": list(store, ObjectKind::Image, &usage),
        "virtualMachines": store
            .vm_list()
            .iter()
            .map(|r| json!({"name": r.name, "powerState": r.power_state.display()}))
            .collect::<Vec<_>>(),
    })
}

/// One VM disk as `storageProfile` shows it.
fn vm_disk(store: &Store, d: &VmDisk) -> Value {
    let mut v = json!({
        "name": d.name,
        "createOption": d.create_option,
        "caching": "None",
    });
    if let Some(l) = d.lun {
        v["lun"] = json!(l);
        v["toBeDetached"] = json!(false);
    }
    let mut managed = json!({ "id": store.arm_id(ResType::Disk, &d.name) });
    if let Some(disk) = store.get(&d.name) {
        let m = disk.meta();
        let sku: Sku = m.sku.parse().unwrap_or_default();
        v["diskSizeGB"] = json!(m.size_bytes.div_ceil(1 << 30));
        managed["storageAccountType"] = json!(sku.name());
        if let Some(set) = &m.encryption.disk_encryption_set_id {
            managed["diskEncryptionSet"] = json!({ "id": store.display_id(set) });
        }
        v["encryption"] = json!(m.encryption.kind);
        v["keyState"] = json!(store.key_state(&disk));
    } else {
        v["keyState"] = json!("Unavailable: the disk no longer exists");
    }
    v["managedDisk"] = managed;
    v
}

/// `vms/NAME/vm.json`, like `az vm show -d`: the record, the disks with their
/// encryption, the power state and the QEMU process.
pub fn vm(
    store: &Store,
    rec: &VmRecord,
    rt: Option<RuntimeInfo>,
    serial: &std::path::Path,
) -> Value {
    let statuses = json!([
        {"code": "ProvisioningState/succeeded", "level": "Info", "displayStatus": "Provisioning succeeded"},
        {"code": rec.power_state.code(), "level": "Info", "displayStatus": rec.power_state.display()},
    ]);
    let mut local = json!({
        "vcpus": rec.vcpus,
        "memoryMb": rec.memory_mb,
        "pid": rt.as_ref().and_then(|r| r.pid),
        "accel": rt.as_ref().and_then(|r| r.accel),
        "qmpSocket": rt.as_ref().map(|r| r.qmp.display().to_string()),
        "serialLog": serial.display().to_string(),
        "statusReason": rec.status_reason,
        "kernel": rec.kernel,
        "initrd": rec.initrd,
        "append": rec.append,
    });
    if let Some(e) = &rec.external {
        local["external"] = json!({ "qmp": e.qmp });
    }
    json!({
        "name": rec.name,
        "id": store.arm_id_in(ResType::Vm, &rec.name, &rec.placement),
        "type": "Microsoft.Compute/virtualMachines",
        "location": rec.placement.location(),
        "resourceGroup": rec.placement.group(),
        "vmId": rec.vm_id,
        "hardwareProfile": { "vmSize": rec.size },
        "storageProfile": {
            "osDisk": rec.os_disk.as_ref().map(|d| {
                let mut v = vm_disk(store, d);
                v["osType"] = json!("Linux");
                v
            }),
            "dataDisks": rec.data_disks.iter().map(|d| vm_disk(store, d)).collect::<Vec<_>>(),
        },
        "provisioningState": "Succeeded",
        "powerState": rec.power_state.display(),
        "timeCreated": rec.time_created,
        "osProfile": { "computerName": rec.name, "adminUsername": rec.admin_username },
        "instanceView": { "statuses": statuses },
        "diskvault": local,
    })
}

/// `disks.json`, `snapshots.json`, `images.json`: one kind's list, as in
/// `status.json`, without the cost of the other kinds.
pub fn kind_list(store: &Store, kind: ObjectKind) -> Value {
    Value::Array(list(store, kind, &store.usage_all()))
}

/// The objects of one kind, with their usage from one pass over the store. A long
/// list is built on two threads (building the JSON is most of a status's cost).
fn list(store: &Store, kind: ObjectKind, usage: &HashMap<String, Usage>) -> Vec<Value> {
    let objs = store.list_kind(kind);
    let view = |d: &std::sync::Arc<Disk>| {
        object_with(
            store,
            d,
            Some(usage.get(&d.id).copied().unwrap_or_default()),
        )
    };
    if objs.len() < 2000 {
        return objs.iter().map(view).collect();
    }
    let (a, b) = objs.split_at(objs.len() / 2);
    std::thread::scope(|s| {
        let second = s.spawn(|| b.iter().map(view).collect::<Vec<_>>());
        let mut out: Vec<Value> = a.iter().map(view).collect();
        match second.join() {
            Ok(rest) => out.extend(rest),
            Err(p) => std::panic::resume_unwind(p),
        }
        out
    })
}

fn copy_fields(store: &Store, obj: &Disk, u: Option<Usage>, v: &mut Value) {
    let m = obj.meta();
    v["creationData"] = match &m.creation_data {
        Some(c) => {
            let mut c = serde_json::to_value(c).expect("serializes");
            if let Some(s) = c["sourceResourceId"].as_str() {
                c["sourceResourceId"] = json!(store.display_id(s));
            }
            c
        }
        None => json!({"createOption": "Empty"}),
    };
    if let Some(s) = &m.encryption.disk_encryption_set_id {
        v["encryption"]["diskEncryptionSetId"] = json!(store.display_id(s));
    }
    if let Some(u) = u {
        v["usedBytes"] = json!({"unique": u.unique, "shared": u.shared});
    }
    v["deltas"] = json!(m.stack.len().max(1));
    if let Some(n) = obj.index_entries() {
        v["indexEntries"] = json!(n);
    }
}

/// `snapshots/NAME/snapshot.json` and `images/NAME/image.json`: `az snapshot show`
/// and `az image show`, flattened as the CLI prints them.
pub fn object(store: &Store, obj: &Disk) -> Value {
    object_with(store, obj, Some(store.usage(obj)))
}

/// The reply of a command that made or changed an object: its view without
/// `usedBytes`, which costs a look at its whole family (`show` and `list` have it), so
/// that a create takes the same time in any store.
pub fn object_reply(store: &Store, obj: &Disk) -> Value {
    object_with(store, obj, None)
}

fn object_with(store: &Store, obj: &Disk, usage: Option<Usage>) -> Value {
    if obj.kind == ObjectKind::Disk {
        return disk_with(store, obj, usage);
    }
    let m = obj.meta();
    let mut v = json!({
        "name": m.name,
        "id": store.arm_id_in(obj.kind.res_type(), &m.name, &m.placement),
        "type": obj.kind.resource_type(),
        "location": m.placement.location(),
        "resourceGroup": m.placement.group(),
        "uniqueId": m.id,
        "diskSizeBytes": m.size_bytes,
        "diskSizeGB": m.size_bytes.div_ceil(1 << 30),
        "provisioningState": "Succeeded",
        "timeCreated": m.created_at,
        "encryption": m.encryption,
        "keyState": store.key_state(obj),
        "layerKeyIds": m.layers.iter().map(|l| l.kid.as_str()).collect::<Vec<_>>(),
    });
    match obj.kind {
        ObjectKind::Snapshot => {
            v["sku"] = json!({"name": "Standard_LRS", "tier": "Standard"});
            // Older versions recorded `false` for snapshots that shared data all the
            // same: only a full copy (`fullCopy` in the metadata) is not incremental.
            v["incremental"] = json!(m.full_copy.is_none());
            v["incrementalSnapshotFamilyId"] = json!(m.dek_id());
            v["diskState"] = json!(if obj.open_handles() > 0 {
                "ActiveSAS"
            } else {
                "Unattached"
            });
            v["completionPercent"] = json!(store.completion_percent(obj));
        }
        _ => {
            let src = m
                .creation_data
                .as_ref()
                .and_then(|c| c.source_resource_id.clone());
            let source_ref = match src.as_deref() {
                Some(s) if s.starts_with("/diskvault/snapshots/") => {
                    json!({"snapshot": {"id": store.display_id(s)}})
                }
                Some(s) => json!({"managedDisk": {"id": store.display_id(s)}}),
                None => json!({}),
            };
            let mut os = json!({
                "osType": "Linux",
                "osState": "Generalized",
                "diskSizeGB": m.size_bytes.div_ceil(1 << 30),
                "storageAccountType": "Standard_LRS",
            });
            if let (Some(o), Some(s)) = (os.as_object_mut(), source_ref.as_object()) {
                o.extend(s.clone());
            }
            if let Some(d) = &m.encryption.disk_encryption_set_id {
                os["diskEncryptionSet"] = json!({"id": store.display_id(d)});
            }
            v["storageProfile"] = json!({"osDisk": os, "dataDisks": [], "zoneResilient": false});
            v["hyperVGeneration"] = json!("V2");
            v["boot"] = json!(m.boot);
        }
    }
    copy_fields(store, obj, usage, &mut v);
    v
}

/// `disks/NAME/disk.json`, shaped like `az disk show` plus diskvault's own fields.
/// A VM's disk is `Attached` while the VM is allocated and `Reserved` once it is
/// deallocated; any other disk open by a program counts as `Attached`.
fn disk_state(store: &Store, disk: &Disk) -> &'static str {
    match store.disk_state(&disk.name()) {
        ("Unattached", _) if disk.open_handles() > 0 => "Attached",
        (s, _) => s,
    }
}

pub fn disk(store: &Store, disk: &Disk) -> Value {
    disk_with(store, disk, Some(store.usage(disk)))
}

fn disk_with(store: &Store, disk: &Disk, usage: Option<Usage>) -> Value {
    let m = disk.meta();
    let sku: Sku = m.sku.parse().unwrap_or_default();
    let (cipher, kid) = m
        .layers
        .first()
        .map(|l| (l.cipher.clone(), l.kid.clone()))
        .unwrap_or_default();
    let key_ids: Vec<&str> = m.layers.iter().map(|l| l.kid.as_str()).collect();
    let mut v = json!({
        "name": m.name,
        "id": store.arm_id_in(ResType::Disk, &m.name, &m.placement),
        "type": "Microsoft.Compute/disks",
        "location": m.placement.location(),
        "resourceGroup": m.placement.group(),
        "uniqueId": m.id,
        "sku": {"name": sku.name(), "tier": sku.tier()},
        "diskSizeBytes": m.size_bytes,
        "diskSizeGB": m.size_bytes.div_ceil(1 << 30),
        "diskState": disk_state(store, disk),
        "provisioningState": "Succeeded",
        "timeCreated": m.created_at,
        "encryption": m.encryption,
        "cipher": cipher,
        "keyId": kid,
        "layerKeyIds": key_ids,
        "keyState": store.key_state(disk),
        "allocatedBytes": disk.allocated_bytes(),
    });
    if let (_, Some(vm)) = store.disk_state(&m.name) {
        v["managedBy"] = json!(store.display_id(&vm));
    }
    copy_fields(store, disk, usage, &mut v);
    v
}

/// `disk-encryption-sets/NAME/status.json`, like `az disk-encryption-set show`.
pub fn set(store: &Store, name: &str) -> Result<Value> {
    Ok(set_json(store, &store.keyring().des(name)?))
}

/// `vault.json`, like `az keyvault show`: the vault's own view with its Azure id,
/// group, location and vault-wide access policies.
pub fn vault(store: &Store) -> Value {
    let vault = store.vault();
    let p = store.vault_placement();
    let props = vault.props();
    let mut v = vault.show();
    v["id"] = json!(store.arm_id_in(ResType::Vault, &props.name, &p));
    v["location"] = json!(p.location());
    v["resourceGroup"] = json!(p.group());
    v["properties"]["tenantId"] = json!(TENANT_ID);
    v["properties"]["accessPolicies"] = props
        .access_policies
        .iter()
        .map(|g| {
            json!({
                "objectId": g.object_id,
                "tenantId": TENANT_ID,
                "permissions": {"keys": g.permissions},
            })
        })
        .collect();
    v["properties"]["enableRbacAuthorization"] = json!(!props.role_assignments.is_empty());
    v
}

/// A set's JSON; a set whose file is corrupt shows why instead.
pub fn set_json(store: &Store, d: &DesRecord) -> Value {
    let id = store.arm_id_in(ResType::Set, &d.name, &d.placement);
    if let Some(e) = d.corrupt_error() {
        return json!({
            "name": d.name,
            "id": id,
            "type": "Microsoft.Compute/diskEncryptionSets",
            "provisioningState": d.provisioning_state,
            "error": e.to_string(),
        });
    }
    json!({
        "name": d.name,
        "id": id,
        "type": "Microsoft.Compute/diskEncryptionSets",
        "location": d.placement.location(),
        "resourceGroup": d.placement.group(),
        "encryptionType": d.encryption_type,
        "activeKey": {
            "keyUrl": d.active_key,
            "sourceVault": {"id": store.arm_id(ResType::Vault, &store.vault().name())},
        },
        "previousKeys": d.previous_keys.iter().map(|k| json!({"keyUrl": k})).collect::<Vec<_>>(),
        "identity": {
            "type": "SystemAssigned",
            "principalId": d.principal_id,
            "tenantId": TENANT_ID,
        },
        "provisioningState": d.provisioning_state,
        "rotationToLatestKeyVersionEnabled": d.rotation_to_latest_key_version_enabled,
        "lastKeyRotationTimestamp": d.last_key_rotation_timestamp,
        "autoKeyRotationError": d.auto_key_rotation_error,
        "timeCreated": d.created,
    })
}

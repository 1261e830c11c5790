//! `.vault/vmss/`: VM scale sets, as `az vmss` shows and changes them.

use super::args::{self, f, parse, Ty, Val};
use super::routes::{Params, Route, Seg, Seg::Lit};
use super::{confirm_exact_name, pretty, Control, Request};
use crate::store::arm::ResType;
use crate::store::vmss::{VmssModel, VmssRecord};
use crate::store::{Result, StoreError};
use crate::vault::Caller;
use crate::vm::{Power, VmssSpec};
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum VmssRequest {
    Create(Box<VmssSpec>),
    Scale {
        name: String,
        capacity: u32,
    },
    Power {
        name: String,
        op: Power,
        #[serde(default)]
        instance_ids: Option<Vec<u32>>,
    },
    DeleteInstances {
        name: String,
        instance_ids: Vec<u32>,
    },
    Delete {
        name: String,
    },
}

const CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["image"], false, true, Ty::Str),
    f(
        &["instanceCount", "instance-count"],
        false,
        false,
        Ty::NumOrStr,
    ),
    f(&["vmSku", "vm-sku"], false, false, Ty::Str),
    f(&["upgradePolicy", "upgrade-policy"], false, false, Ty::Str),
    f(&["adminUsername", "admin-username"], false, false, Ty::Str),
    f(
        &["osDiskEncryptionSet", "os-disk-encryption-set"],
        false,
        false,
        Ty::Str,
    ),
    f(
        &["dataDiskSizesGb", "data-disk-sizes-gb"],
        false,
        false,
        Ty::List,
    ),
    f(
        &["dataDiskEncryptionSets", "data-disk-encryption-sets"],
        false,
        false,
        Ty::List,
    ),
    f(&["storageSku", "storage-sku"], false, false, Ty::Str),
    f(&["noStart", "no-start"], false, false, Ty::Bool),
    args::GROUP,
    args::LOCATION,
];
const IDS_FIELDS: &[args::Field] = &[f(&["instanceIds", "instance-ids"], true, false, Ty::List)];

fn number(v: &str, what: &str) -> Result<u32> {
    v.trim().parse::<u32>().map_err(|_| {
        args::invalid(format!(
            "{what} takes a whole number, not '{}'",
            v.chars().take(40).collect::<String>()
        ))
    })
}

/// az's upgrade policy, however it was spelled.
pub fn upgrade_policy(s: &str) -> Result<String> {
    ["Automatic", "Manual", "Rolling"]
        .into_iter()
        .find(|p| p.eq_ignore_ascii_case(s.trim()))
        .map(String::from)
        .ok_or_else(|| {
            args::invalid(format!(
                "unknown upgrade policy '{}'; use automatic, manual or rolling",
                s.chars().take(40).collect::<String>()
            ))
        })
}

fn parse_create(data: &[u8]) -> Result<Request> {
    let a = parse(
        data,
        CREATE_FIELDS,
        "write `NAME image=IMAGE [instance-count=2] [data-disk-sizes-gb=64,128] [data-disk-encryption-sets=S,S] [os-disk-encryption-set=S]`, or a JSON object",
    )?;
    let s = |k: &str| a.str(k).map(String::from);
    let count = match a.get("instanceCount") {
        Some(Val::Num(n)) => {
            u32::try_from(*n).map_err(|_| args::invalid("instance-count is too large"))?
        }
        Some(Val::Str(t)) => number(t, "instance-count")?,
        _ => 2,
    };
    let sizes = a
        .list("dataDiskSizesGb")
        .unwrap_or_default()
        .iter()
        .map(|t| number(t, "data-disk-sizes-gb").map(u64::from))
        .collect::<Result<Vec<_>>>()?;
    Ok(Request::Vmss(VmssRequest::Create(Box::new(VmssSpec {
        name: s("name").unwrap_or_default(),
        model: VmssModel {
            image: s("image").unwrap_or_default(),
            vm_sku: s("vmSku").unwrap_or_else(|| crate::vm::qemu::DEFAULT_SIZE.to_string()),
            os_disk_encryption_set: s("osDiskEncryptionSet"),
            data_disk_sizes_gb: sizes,
            data_disk_encryption_sets: a
                .list("dataDiskEncryptionSets")
                .unwrap_or_default()
                .to_vec(),
            storage_sku: s("storageSku"),
            admin_username: s("adminUsername"),
            upgrade_policy: upgrade_policy(a.str("upgradePolicy").unwrap_or("Manual"))?,
        },
        instance_count: count,
        placement: args::placement(&a),
        no_start: a.bool("noStart").unwrap_or(false),
    }))))
}

fn ids(data: &[u8]) -> Result<Option<Vec<u32>>> {
    if args::text(data)?.is_empty() || args::text(data)? == "1" {
        return Ok(None);
    }
    let a = parse(
        data,
        IDS_FIELDS,
        "write `1` for every instance, or `instance-ids=0,1`",
    )?;
    a.list("instanceIds")
        .map(|l| l.iter().map(|t| number(t, "instance-ids")).collect())
        .transpose()
}

fn power(p: &Params, data: &[u8]) -> Result<Request> {
    let op = match p.file {
        "start" => Power::Start,
        "stop" => Power::Stop,
        "deallocate" => Power::Deallocate,
        _ => Power::Restart,
    };
    Ok(Request::Vmss(VmssRequest::Power {
        name: p.obj.into(),
        op,
        instance_ids: ids(data)?,
    }))
}

pub(super) fn routes() -> Vec<Route> {
    let (dir, set) = (Lit("vmss"), Seg::Vmss);
    vec![
        Route::dir(&[dir]),
        Route::r(&[Lit("vmss.json")], |c, _, _| {
            let sets: Vec<Value> = c
                .store()
                .vmss_names()
                .iter()
                .map(|n| match c.store().vmss_get(n) {
                    Ok(r) => vmss_json(c, &r),
                    Err(e) => {
                        json!({"name": n, "provisioningState": "Failed", "error": e.to_string()})
                    }
                })
                .collect();
            Ok(pretty(&Value::Array(sets)))
        }),
        Route::w(&[dir, Lit("create")], |_, d| parse_create(d)),
        Route::dir(&[dir, set]),
        Route::r(&[dir, set, Lit("vmss.json")], read),
        Route::r(&[dir, set, Lit("instances.json")], read),
        Route::r(&[dir, set, Lit("instance-view.json")], read),
        Route::w(&[dir, set, Lit("scale")], |p, data| {
            Ok(Request::Vmss(VmssRequest::Scale {
                name: p.obj.into(),
                capacity: number(args::text(data)?, "scale (the new capacity)")?,
            }))
        }),
        Route::w(&[dir, set, Lit("start")], power),
        Route::w(&[dir, set, Lit("stop")], power),
        Route::w(&[dir, set, Lit("deallocate")], power),
        Route::w(&[dir, set, Lit("restart")], power),
        Route::w(&[dir, set, Lit("delete-instances")], |p, data| {
            let ids = ids(data)?.ok_or_else(|| args::invalid("give instance-ids=0,1"))?;
            Ok(Request::Vmss(VmssRequest::DeleteInstances {
                name: p.obj.into(),
                instance_ids: ids,
            }))
        }),
        Route::w(&[dir, set, Lit("delete")], |p, data| {
            confirm_exact_name(data, p.obj, "delete")?;
            Ok(Request::Vmss(VmssRequest::Delete { name: p.obj.into() }))
        }),
    ]
}

fn read(c: &Control, p: &Params, _: &Caller) -> Result<Vec<u8>> {
    let rec = c.store().vmss_get(p.obj)?;
    Ok(pretty(&match p.file {
        "vmss.json" => vmss_json(c, &rec),
        "instances.json" => instances_json(c, &rec),
        "instance-view.json" => instance_view(c, &rec),
        other => unreachable!("no scale set file {other} in the route table"),
    }))
}

fn managed(c: &Control, sku: &str, set: Option<&String>) -> Value {
    let mut m = json!({ "storageAccountType": sku });
    if let Some(s) = set {
        let name = crate::store::des::des_name(s);
        m["diskEncryptionSet"] = json!({ "id": c.store().arm_id(ResType::Set, name) });
    }
    m
}

/// `az vmss show`.
pub fn vmss_json(c: &Control, rec: &VmssRecord) -> Value {
    let store = c.store();
    let m = &rec.model;
    let sku = m
        .storage_sku
        .clone()
        .unwrap_or_else(|| "Premium_LRS".into());
    let data: Vec<Value> = m
        .data_disk_sizes_gb
        .iter()
        .enumerate()
        .map(|(lun, gb)| {
            json!({
                "lun": lun,
                "createOption": "Empty",
                "caching": "None",
                "diskSizeGB": gb,
                "managedDisk": managed(c, &sku, m.data_disk_encryption_sets.get(lun)),
            })
        })
        .collect();
    json!({
        "name": rec.name,
        "id": store.arm_id_in(ResType::Vmss, &rec.name, &rec.placement),
        "type": "Microsoft.Compute/virtualMachineScaleSets",
        "location": rec.placement.location(),
        "resourceGroup": rec.placement.group(),
        "sku": {"name": m.vm_sku, "tier": "Standard", "capacity": rec.instances.len()},
        "uniqueId": rec.unique_id,
        "provisioningState": if rec.pending.is_some() { "Updating" } else { "Succeeded" },
        "upgradePolicy": {"mode": m.upgrade_policy},
        "timeCreated": rec.time_created,
        "virtualMachineProfile": {
            "osProfile": {
                "computerNamePrefix": rec.name.chars().take(9).collect::<String>(),
                "adminUsername": m.admin_username,
            },
            "storageProfile": {
                "imageReference": {"id": store.arm_id(ResType::Image, &m.image)},
                "osDisk": {
                    "createOption": "FromImage",
                    "caching": "ReadWrite",
                    "osType": "Linux",
                    "managedDisk": managed(c, &sku, m.os_disk_encryption_set.as_ref()),
                },
                "dataDisks": data,
            },
        },
        "instanceIds": rec.instances.iter().map(|i| i.to_string()).collect::<Vec<_>>(),
    })
}

/// `az vmss list-instances`: each instance as `vm show` shows it, with its id.
fn instances_json(c: &Control, rec: &VmssRecord) -> Value {
    Value::Array(
        rec.instances
            .iter()
            .filter_map(|id| {
                let vm = c.store().vm_get(&rec.instance_name(*id)).ok()?;
                let mut v = super::vms::show(c, &vm);
                v["instanceId"] = json!(id.to_string());
                Some(v)
            })
            .collect(),
    )
}

/// `az vmss get-instance-view`: the set's state and its instances' power states.
fn instance_view(c: &Control, rec: &VmssRecord) -> Value {
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for id in &rec.instances {
        if let Ok(vm) = c.store().vm_get(&rec.instance_name(*id)) {
            *counts.entry(vm.power_state.code()).or_default() += 1;
        }
    }
    json!({
        "statuses": [{
            "code": if rec.pending.is_some() { "ProvisioningState/updating" } else { "ProvisioningState/succeeded" },
            "level": "Info",
        }],
        "virtualMachine": {
            "statusesSummary": counts.iter().map(|(k, n)| json!({"code": k, "count": n})).collect::<Vec<_>>(),
        },
    })
}

pub(super) fn execute(c: &Control, r: &VmssRequest) -> Result<Option<Value>> {
    let vms = c.vms();
    let show = |name: &str| -> Result<Option<Value>> {
        Ok(Some(vmss_json(c, &c.store().vmss_get(name)?)))
    };
    match r {
        VmssRequest::Create(spec) => {
            let rec = vms.vmss_create(spec)?;
            show(&rec.name)
        }
        VmssRequest::Scale { name, capacity } => {
            vms.vmss_scale(name, *capacity)?;
            show(name)
        }
        VmssRequest::Power {
            name,
            op,
            instance_ids,
        } => {
            vms.vmss_power(name, *op, instance_ids.as_deref())?;
            show(name)
        }
        VmssRequest::DeleteInstances { name, instance_ids } => {
            vms.vmss_delete_instances(name, instance_ids)?;
            show(name)
        }
        VmssRequest::Delete { name } => {
            vms.vmss_delete(name)?;
            Ok(None)
        }
    }
}

/// An instance is changed through its set, as in Azure (unless its set is gone).
pub(super) fn check_not_instance(c: &Control, vm: &str, what: &str) -> Result<()> {
    let set = c.store().vm_get(vm).ok().and_then(|r| r.scale_set);
    match set.filter(|(s, id)| {
        c.store()
            .vmss_get(s)
            .is_ok_and(|r| r.instances.contains(id))
    }) {
        Some((set, id)) => Err(StoreError::VmConflict(format!(
            "VM '{vm}' is instance {id} of scale set '{set}'; {what} it through the set ('diskvault vmss delete-instances -n {set} --instance-ids {id}')"
        ))),
        None => Ok(()),
    }
}

/// The file form, for the test that holds requests to their parsers.
#[cfg(test)]
impl VmssRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        let list = |l: &[u32]| {
            l.iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        match self {
            VmssRequest::Create(s) => (
                "vmss/create".into(),
                serde_json::to_vec(&json!({
                    "name": s.name, "image": s.model.image, "instanceCount": s.instance_count,
                    "vmSku": s.model.vm_sku, "upgradePolicy": s.model.upgrade_policy,
                    "adminUsername": s.model.admin_username,
                    "osDiskEncryptionSet": s.model.os_disk_encryption_set,
                    "dataDiskSizesGb": s.model.data_disk_sizes_gb.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "dataDiskEncryptionSets": s.model.data_disk_encryption_sets,
                    "storageSku": s.model.storage_sku, "noStart": s.no_start,
                    "resourceGroup": s.placement.resource_group, "location": s.placement.location,
                }))
                .expect("serializes"),
            ),
            VmssRequest::Scale { name, capacity } => {
                (format!("vmss/{name}/scale"), capacity.to_string().into_bytes())
            }
            VmssRequest::Power {
                name,
                op,
                instance_ids,
            } => {
                let file = match op {
                    Power::Start => "start",
                    Power::Stop => "stop",
                    Power::Deallocate => "deallocate",
                    Power::Restart => "restart",
                };
                let body = match instance_ids {
                    None => "1".to_string(),
                    Some(l) => format!("instance-ids={}", list(l)),
                };
                (format!("vmss/{name}/{file}"), body.into_bytes())
            }
            VmssRequest::DeleteInstances { name, instance_ids } => (
                format!("vmss/{name}/delete-instances"),
                format!("instance-ids={}", list(instance_ids)).into_bytes(),
            ),
            VmssRequest::Delete { name } => (format!("vmss/{name}/delete"), name.clone().into_bytes()),
        }
    }
}

//! `.vault/vms/`: virtual machines on QEMU (create, power, disks, register).

use super::args::{f, parse, Ty, Val};
use super::routes::{Params, Route, Seg, Seg::Lit};
use super::{confirm_exact_name, line, pretty, Control, Request};
use crate::store::{Result, StoreError};
use crate::vault::Caller;
use crate::vm::CreateSpec;
use serde_json::Value;

/// A change to a VM.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum VmRequest {
    Create(Box<CreateSpec>),
    Start {
        name: String,
    },
    /// Power off; the VM keeps its hardware (`VM stopped`).
    Stop {
        name: String,
    },
    Deallocate {
        name: String,
    },
    Restart {
        name: String,
    },
    Delete {
        name: String,
    },
    Attach {
        vm: String,
        disk: String,
        #[serde(default)]
        lun: Option<u32>,
    },
    Detach {
        vm: String,
        disk: String,
    },
    Register {
        name: String,
        qmp: String,
        disks: Vec<String>,
    },
}

const CREATE_FIELDS: &[super::args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["image"], false, false, Ty::Str),
    f(&["attachOsDisk", "attach-os-disk"], false, false, Ty::Str),
    f(
        &["osDiskEncryptionSet", "os-disk-encryption-set"],
        false,
        false,
        Ty::Str,
    ),
    f(
        &["osDiskSizeGb", "os-disk-size-gb"],
        false,
        false,
        Ty::NumOrStr,
    ),
    f(&["storageSku", "storage-sku"], false, false, Ty::Str),
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
    f(&["size"], false, false, Ty::Str),
    f(&["kernel"], false, false, Ty::Str),
    f(&["initrd"], false, false, Ty::Str),
    f(&["append"], false, false, Ty::Str),
    f(&["noStart", "no-start"], false, false, Ty::Bool),
    super::args::GROUP,
    super::args::LOCATION,
    f(&["adminUsername", "admin-username"], false, false, Ty::Str),
    f(
        &["generateSshKeys", "generate-ssh-keys"],
        false,
        false,
        Ty::Bool,
    ),
];

fn number(v: &str, what: &str) -> Result<u64> {
    v.parse::<u64>().map_err(|_| {
        StoreError::InvalidArgument(format!(
            "{what} takes a whole number of GB, not '{}'",
            v.chars().take(40).collect::<String>()
        ))
    })
}

fn parse_create(data: &[u8]) -> Result<Request> {
    let a = parse(
        data,
        CREATE_FIELDS,
        "write `NAME image=IMAGE [data-disk-sizes-gb=8,8] [data-disk-encryption-sets=S1,S2] [size=Standard_B1s]`, or a JSON object",
    )?;
    let s = |k: &str| a.str(k).map(String::from);
    let os_size = match a.get("osDiskSizeGb") {
        Some(Val::Num(n)) => Some(*n),
        Some(Val::Str(t)) => Some(number(t, "os-disk-size-gb")?),
        _ => None,
    };
    let sizes = a
        .list("dataDiskSizesGb")
        .unwrap_or_default()
        .iter()
        .map(|t| number(t, "data-disk-sizes-gb"))
        .collect::<Result<Vec<_>>>()?;
    Ok(Request::Vm(VmRequest::Create(Box::new(CreateSpec {
        name: s("name").unwrap_or_default(),
        image: s("image"),
        attach_os_disk: s("attachOsDisk"),
        os_disk_encryption_set: s("osDiskEncryptionSet"),
        os_disk_size_gb: os_size,
        storage_sku: s("storageSku"),
        data_disk_sizes_gb: sizes,
        data_disk_encryption_sets: a
            .list("dataDiskEncryptionSets")
            .unwrap_or_default()
            .to_vec(),
        size: s("size"),
        kernel: s("kernel"),
        initrd: s("initrd"),
        append: s("append"),
        no_start: a.bool("noStart").unwrap_or(false),
        placement: super::args::placement(&a),
        admin_username: s("adminUsername"),
        generate_ssh_keys: a.bool("generateSshKeys").unwrap_or(false),
        scale_set: None,
    }))))
}

const REGISTER_FIELDS: &[super::args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["qmp"], true, true, Ty::Str),
    f(&["disks", "disk"], false, true, Ty::List),
];

fn parse_register(data: &[u8]) -> Result<Request> {
    let a = parse(
        data,
        REGISTER_FIELDS,
        "write `NAME QMP-SOCKET disks=DISK1,DISK2`, or a JSON object",
    )?;
    Ok(Request::Vm(VmRequest::Register {
        name: a.str("name").unwrap_or_default().into(),
        qmp: a.str("qmp").unwrap_or_default().into(),
        disks: a.list("disks").unwrap_or_default().to_vec(),
    }))
}

const ATTACH_FIELDS: &[super::args::Field] = &[
    f(&["disk", "name"], true, true, Ty::Str),
    f(&["lun"], false, false, Ty::NumOrStr),
];

fn parse_attach(p: &Params, data: &[u8]) -> Result<Request> {
    let a = parse(data, ATTACH_FIELDS, "write `DISK [lun=N]`")?;
    let lun = match a.get("lun") {
        Some(Val::Num(n)) => Some(*n),
        Some(Val::Str(t)) => Some(t.parse::<u64>().map_err(|_| {
            StoreError::InvalidArgument(format!(
                "lun takes a whole number, not '{}'",
                t.chars().take(40).collect::<String>()
            ))
        })?),
        _ => None,
    };
    let lun = lun
        .map(|l| {
            u32::try_from(l).map_err(|_| {
                StoreError::InvalidArgument(format!(
                    "parameter 'dataDisk.lun' is out of range: {l}"
                ))
            })
        })
        .transpose()?;
    Ok(Request::Vm(VmRequest::Attach {
        vm: p.obj.into(),
        disk: a.str("disk").unwrap_or_default().into(),
        lun,
    }))
}

fn parse_detach(p: &Params, data: &[u8]) -> Result<Request> {
    let a = parse(data, &ATTACH_FIELDS[..1], "write `DISK`")?;
    Ok(Request::Vm(VmRequest::Detach {
        vm: p.obj.into(),
        disk: a.str("disk").unwrap_or_default().into(),
    }))
}

pub(super) fn routes() -> Vec<Route> {
    let (vms, vm) = (Lit("vms"), Seg::Vm);
    vec![
        Route::dir(&[vms]),
        Route::w(&[vms, Lit("create")], |_, d| parse_create(d)),
        Route::w(&[vms, Lit("register")], |_, d| parse_register(d)),
        Route::dir(&[vms, vm]),
        Route::r(&[vms, vm, Lit("vm.json")], read),
        Route::r(&[vms, vm, Lit("power-state")], read),
        Route::r(&[vms, vm, Lit("disks")], read),
        Route::r(&[vms, vm, Lit("console")], read),
        Route::w(&[vms, vm, Lit("start")], |p, _| {
            Ok(Request::Vm(VmRequest::Start { name: p.obj.into() }))
        }),
        Route::w(&[vms, vm, Lit("stop")], |p, _| {
            Ok(Request::Vm(VmRequest::Stop { name: p.obj.into() }))
        }),
        Route::w(&[vms, vm, Lit("deallocate")], |p, _| {
            Ok(Request::Vm(VmRequest::Deallocate { name: p.obj.into() }))
        }),
        Route::w(&[vms, vm, Lit("restart")], |p, _| {
            Ok(Request::Vm(VmRequest::Restart { name: p.obj.into() }))
        }),
        Route::w(&[vms, vm, Lit("delete")], |p, data| {
            confirm_exact_name(data, p.obj, "delete")?;
            Ok(Request::Vm(VmRequest::Delete { name: p.obj.into() }))
        }),
        Route::w(&[vms, vm, Lit("attach")], parse_attach),
        Route::w(&[vms, vm, Lit("detach")], parse_detach),
    ]
}

/// The console log's last 64 KiB.
const CONSOLE_TAIL: u64 = 64 << 10;

fn read(c: &Control, p: &Params, _: &Caller) -> Result<Vec<u8>> {
    let rec = c.store().vm_get(p.obj)?;
    Ok(match p.file {
        "vm.json" => pretty(&show(c, &rec)),
        "power-state" => line(rec.power_state.display()),
        "disks" => rec
            .disks()
            .map(|d| match d.lun {
                Some(l) => format!("{l} {}\n", d.name),
                None => format!("os {}\n", d.name),
            })
            .collect::<String>()
            .into_bytes(),
        "console" => {
            use std::io::{Read, Seek, SeekFrom};
            let path = c.vms().serial_log(&rec);
            let mut out = Vec::new();
            if let Ok(mut f) = std::fs::File::open(&path) {
                let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                let _ = f.seek(SeekFrom::Start(len.saturating_sub(CONSOLE_TAIL)));
                let _ = f.take(CONSOLE_TAIL).read_to_end(&mut out);
            }
            out
        }
        other => unreachable!("no VM file {other} in the route table"),
    })
}

pub(super) fn show(c: &Control, rec: &crate::store::VmRecord) -> Value {
    super::view::vm(
        c.store(),
        rec,
        c.vms().runtime(&rec.name),
        &c.vms().serial_log(rec),
    )
}

pub(super) fn execute(
    c: &Control,
    r: &VmRequest,
) -> std::result::Result<Option<Value>, StoreError> {
    let vms = c.vms();
    let shown =
        |name: &str| -> Result<Option<Value>> { Ok(Some(show(c, &c.store().vm_get(name)?))) };
    match r {
        VmRequest::Create(spec) => {
            let rec = vms.create(spec)?;
            shown(&rec.name)
        }
        VmRequest::Start { name } => {
            vms.start(name)?;
            shown(name)
        }
        VmRequest::Stop { name } => {
            vms.stop(name, false)?;
            shown(name)
        }
        VmRequest::Deallocate { name } => {
            vms.stop(name, true)?;
            shown(name)
        }
        VmRequest::Restart { name } => {
            vms.restart(name)?;
            shown(name)
        }
        VmRequest::Delete { name } => {
            super::vmss::check_not_instance(c, name, "delete")?;
            vms.delete(name)?;
            Ok(None)
        }
        VmRequest::Attach { vm, disk, lun } => {
            let disk = c
                .store()
                .resolve_name(disk, crate::store::arm::ResType::Disk)?;
            vms.attach(vm, &disk, *lun)?;
            shown(vm)
        }
        VmRequest::Detach { vm, disk } => {
            vms.detach(vm, disk)?;
            shown(vm)
        }
        VmRequest::Register { name, qmp, disks } => {
            let rec = vms.register(name, std::path::Path::new(qmp), disks)?;
            shown(&rec.name)
        }
    }
}

/// The file form of a request, for the test that holds it to the parsers.
#[cfg(test)]
impl VmRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        match self {
            VmRequest::Create(s) => (
                "vms/create".into(),
                serde_json::to_vec(&serde_json::json!({
                    "name": s.name, "image": s.image, "attachOsDisk": s.attach_os_disk,
                    "osDiskEncryptionSet": s.os_disk_encryption_set,
                    "osDiskSizeGb": s.os_disk_size_gb, "storageSku": s.storage_sku,
                    "dataDiskSizesGb": s.data_disk_sizes_gb.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
                    "dataDiskEncryptionSets": s.data_disk_encryption_sets,
                    "size": s.size, "kernel": s.kernel, "initrd": s.initrd,
                    "append": s.append, "noStart": s.no_start,
                    "resourceGroup": s.placement.resource_group, "location": s.placement.location,
                    "adminUsername": s.admin_username, "generateSshKeys": s.generate_ssh_keys,
                }))
                .expect("serializes"),
            ),
            VmRequest::Start { name } => (format!("vms/{name}/start"), b"1".to_vec()),
            VmRequest::Stop { name } => (format!("vms/{name}/stop"), b"1".to_vec()),
            VmRequest::Deallocate { name } => (format!("vms/{name}/deallocate"), b"1".to_vec()),
            VmRequest::Restart { name } => (format!("vms/{name}/restart"), b"1".to_vec()),
            VmRequest::Delete { name } => (format!("vms/{name}/delete"), name.as_bytes().to_vec()),
            VmRequest::Attach { vm, disk, lun } => {
                let mut w = disk.clone();
                if let Some(l) = lun {
                    w += &format!(" lun={l}");
                }
                (format!("vms/{vm}/attach"), w.into_bytes())
            }
            VmRequest::Detach { vm, disk } => (format!("vms/{vm}/detach"), disk.clone().into_bytes()),
            VmRequest::Register { name, qmp, disks } => (
                "vms/register".into(),
                format!("{name} {qmp} disks={}", disks.join(",")).into_bytes(),
            ),
        }
    }
}

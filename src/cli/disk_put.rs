//! `disk create`'s az rules: an existing disk given with `-g` is az's PUT (an update
//! where `disk update` could make one), and `--encryption-type` checked against what
//! the set gives.

use super::access::Access;
use super::CliError;
use crate::control::DiskRequest;
use crate::store::CreateOptions;

/// az's `disk create` is an ARM PUT: given with `-g`, as az users write it, a disk
/// that exists is updated to what the command asks (its SKU, its set), not refused.
/// Only what an update may change can differ; the rest must match.
pub(super) fn put_existing(
    a: &Access,
    name: &str,
    o: &CreateOptions,
    source: Option<&str>,
) -> Result<bool, CliError> {
    if super::output::globals().resource_group.is_none() {
        return Ok(false);
    }
    let Ok(d) = a.read_json(&format!("disks/{name}/disk.json")) else {
        return Ok(false);
    };
    let group = d["resourceGroup"].as_str().unwrap_or_default();
    let asked = o.placement.group();
    let conflict = |why: String| {
        CliError(format!(
            "(OperationNotAllowed) disk '{name}' exists and {why}; 'disk create' on an existing disk updates it, as in az, only where 'disk update' could; delete it first or choose another name"
        ))
    };
    if !group.eq_ignore_ascii_case(asked) {
        return Err(conflict(format!(
            "is in resource group '{group}', not '{asked}'"
        )));
    }
    let location = d["location"].as_str().unwrap_or_default();
    if let Some(l) = &o.placement.location {
        let l = crate::store::arm::normalize_location(l)?;
        if l != location {
            return Err(conflict(format!("is in location '{location}', not '{l}'")));
        }
    }
    if source.is_some() || d["creationData"]["createOption"] != "Empty" {
        return Err(conflict("its creation source can't change".into()));
    }
    let size = d["diskSizeBytes"].as_u64().unwrap_or(0);
    if o.size != size {
        return Err(conflict(format!("is {size} bytes, not {}", o.size)));
    }
    if let Some(set) = &o.disk_encryption_set {
        let set = crate::store::arm::name_of(set, crate::store::arm::ResType::Set)?;
        let cur = d["encryption"]["diskEncryptionSetId"]
            .as_str()
            .unwrap_or("");
        if !cur
            .rsplit('/')
            .next()
            .unwrap_or("")
            .eq_ignore_ascii_case(&set)
        {
            a.send(DiskRequest::Encryption {
                name: name.into(),
                encryption_type: None,
                set: Some(set),
            })?;
        }
    }
    if d["sku"]["name"] != o.sku.name() {
        a.send(DiskRequest::Sku {
            name: name.into(),
            sku: o.sku,
        })?;
    }
    super::access::print_json(&a.read_json(&format!("disks/{name}/disk.json"))?);
    Ok(true)
}

/// Checks az's `--encryption-type` on create against what the set (or its absence)
/// gives the disk.
pub(super) fn check_create_type(a: &Access, ty: &str, set: Option<&str>) -> Result<(), CliError> {
    match set {
        None if ty == super::disk::PLATFORM_KEY_TYPE => Ok(()),
        None => Err(CliError(format!(
            "--encryption-type {ty} needs --disk-encryption-set SET (a set of that type)"
        ))),
        Some(s) => {
            let name = s.rsplit('/').next().unwrap_or(s);
            let st = a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?;
            let set_ty = st["encryptionType"].as_str().unwrap_or("");
            if set_ty.eq_ignore_ascii_case(ty) {
                Ok(())
            } else {
                Err(CliError(format!(
                    "--encryption-type {ty} does not match disk encryption set '{name}', which is {set_ty}; use --encryption-type {set_ty} or leave it out"
                )))
            }
        }
    }
}

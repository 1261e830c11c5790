//! `.vault/snapshots/` and `.vault/images/`: point-in-time copies of disks (the data
//! itself is `MOUNT/snapshots/NAME` and `MOUNT/images/NAME`, read-only).

use super::args::{f, parse, Ty};
use super::routes::{Params, Route, Seg, Seg::Lit};
use super::{check_reserved, confirm_exact_name, pretty, Control, Request};
use crate::store::arm::Placement;
use crate::store::meta::Boot;
use crate::store::{CopyOptions, EncryptionType, ObjectKind, Result, StoreError};
use crate::vault::Caller;
use serde_json::Value;

/// A change to a snapshot or image, or a question about one.
/// Snapshots are incremental unless asked otherwise (diskvault's default, unlike az's).
fn incremental_default() -> bool {
    true
}

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum CopyRequest {
    /// `snapshot create` / `image create`: from a disk or snapshot, in O(1).
    Create {
        kind: Kind,
        name: String,
        source: String,
        #[serde(default = "incremental_default")]
        incremental: bool,
        #[serde(default)]
        set: Option<String>,
        #[serde(default)]
        encryption_type: Option<String>,
        #[serde(default, skip_serializing_if = "Placement::is_empty")]
        placement: Placement,
        /// Images: how VMs made from the image boot.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        boot: Option<Boot>,
    },
    /// `image update --kernel --initrd --append`: the image's boot definition (none
    /// clears it).
    SetBoot {
        name: String,
        #[serde(default)]
        boot: Option<Boot>,
    },
    Delete {
        kind: Kind,
        name: String,
    },
    /// The changed ranges from snapshot `old` to `new` (a snapshot or, when absent,
    /// the disk `old` was taken from).
    Diff {
        old: String,
        #[serde(default)]
        new: Option<String>,
        /// At most this many ranges in the reply (`--max-ranges`), 1 to 100,000.
        #[serde(default)]
        max_ranges: Option<u64>,
        /// Where to go on: the `nextMarker` of the previous page.
        #[serde(default)]
        marker: Option<String>,
    },
}

/// Which read-only kind a request is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Kind {
    Snapshot,
    Image,
}

impl Kind {
    pub fn object(self) -> ObjectKind {
        match self {
            Kind::Snapshot => ObjectKind::Snapshot,
            Kind::Image => ObjectKind::Image,
        }
    }
}

const CREATE_FIELDS: &[super::args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["source", "sourceResourceId"], true, true, Ty::Str),
    f(&["incremental"], false, false, Ty::Bool),
    f(
        &[
            "des",
            "diskEncryptionSet",
            "diskEncryptionSetId",
            "disk-encryption-set",
        ],
        false,
        false,
        Ty::Str,
    ),
    f(
        &["type", "encryptionType", "encryption-type"],
        false,
        false,
        Ty::Str,
    ),
    super::args::GROUP,
    super::args::LOCATION,
    f(&["kernel"], false, false, Ty::Str),
    f(&["initrd"], false, false, Ty::Str),
    f(&["append"], false, false, Ty::Str),
];

const BOOT_FIELDS: &[super::args::Field] = &[
    f(&["kernel"], false, true, Ty::Str),
    f(&["initrd"], false, false, Ty::Str),
    f(&["append"], false, false, Ty::Str),
];

/// An image's boot definition from `kernel=`, `initrd=`, `append=`.
fn boot(a: &super::args::Args) -> Result<Option<Boot>> {
    match (a.str("kernel"), a.str("initrd"), a.str("append")) {
        (None, None, None) => Ok(None),
        (None, _, _) => Err(super::args::invalid(
            "initrd and append need a kernel: give kernel=PATH too",
        )),
        (Some(k), i, ap) => Ok(Some(Boot {
            kernel: k.to_string(),
            initrd: i.map(String::from),
            append: ap.map(String::from),
        })),
    }
}

fn parse_create(kind: Kind, data: &[u8]) -> Result<Request> {
    let a = parse(
        data,
        CREATE_FIELDS,
        "write `NAME SOURCE [incremental=true] [des=SET]`, e.g. `before-upgrade data1`, or a JSON object",
    )?;
    let name = a.str("name").unwrap_or_default().to_string();
    check_reserved(&name)?;
    Ok(Request::Copy(CopyRequest::Create {
        kind,
        name,
        source: a.str("source").unwrap_or_default().to_string(),
        incremental: a.bool("incremental").unwrap_or(true),
        set: a.str("des").map(String::from),
        encryption_type: a.str("type").map(String::from),
        placement: super::args::placement(&a),
        boot: boot(&a)?,
    }))
}

pub(super) fn routes() -> Vec<Route> {
    let (snaps, images) = (Lit("snapshots"), Lit("images"));
    let (snap, image) = (Seg::Snapshot, Seg::Image);
    vec![
        Route::dir(&[snaps]),
        Route::dir(&[images]),
        Route::w(&[snaps, Lit("create")], |_, d| {
            parse_create(Kind::Snapshot, d)
        }),
        Route::dir(&[snaps, snap]),
        Route::r(&[snaps, snap, Lit("snapshot.json")], read),
        Route::r(&[snaps, snap, Lit("diff")], read),
        Route::w(&[snaps, snap, Lit("delete")], |p, data| {
            confirm_exact_name(data, p.obj, "delete")?;
            Ok(Request::Copy(CopyRequest::Delete {
                kind: Kind::Snapshot,
                name: p.obj.into(),
            }))
        }),
        Route::w(&[images, Lit("create")], |_, d| {
            parse_create(Kind::Image, d)
        }),
        Route::dir(&[images, image]),
        Route::r(&[images, image, Lit("image.json")], read),
        Route::w(&[images, image, Lit("boot")], |p, data| {
            let t = super::args::text(data)?;
            let boot = if t == "none" {
                None
            } else {
                let a = parse(
                    data,
                    BOOT_FIELDS,
                    "write `kernel=PATH [initrd=PATH] [append=LINE]`, or `none` to clear",
                )?;
                boot(&a)?
            };
            Ok(Request::Copy(CopyRequest::SetBoot {
                name: p.obj.into(),
                boot,
            }))
        }),
        Route::w(&[images, image, Lit("delete")], |p, data| {
            confirm_exact_name(data, p.obj, "delete")?;
            Ok(Request::Copy(CopyRequest::Delete {
                kind: Kind::Image,
                name: p.obj.into(),
            }))
        }),
    ]
}

fn read(c: &Control, p: &Params, _: &Caller) -> Result<Vec<u8>> {
    let store = c.store();
    Ok(match p.file {
        "snapshot.json" => pretty(&super::view::object(
            store,
            &*store.get_kind_or_err(ObjectKind::Snapshot, p.obj)?,
        )),
        "image.json" => pretty(&super::view::object(
            store,
            &*store.get_kind_or_err(ObjectKind::Image, p.obj)?,
        )),
        "diff" => pretty(&diff(c, p.obj, None, None, None)?),
        other => unreachable!("no snapshot file {other} in the route table"),
    })
}

/// The diff's JSON: from `old` (a snapshot) to `new` (a snapshot, or `old`'s disk).
/// Most ranges one page of a diff may ask for.
pub const MAX_RANGES: u64 = 100_000;

fn diff(
    c: &Control,
    old: &str,
    new: Option<&str>,
    max_ranges: Option<u64>,
    marker: Option<&str>,
) -> Result<Value> {
    let store = c.store();
    if let Some(n) = max_ranges {
        if !(1..=MAX_RANGES).contains(&n) {
            return Err(StoreError::InvalidArgument(format!(
                "--max-ranges {n} is out of range: give 1 to {MAX_RANGES}"
            )));
        }
    }
    let from = match marker {
        None => 0,
        Some(m) => m
            .strip_prefix("dv1:")
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "'{}' is not a diff marker; pass the nextMarker of the previous page as it was",
                    crate::shown::shown(m, 80)
                ))
            })?,
    };
    let a = store.find_source(old, &[ObjectKind::Snapshot])?;
    let b = match new {
        Some(n) => store.find_source(n, &[ObjectKind::Snapshot, ObjectKind::Disk])?,
        None => {
            let cd = a.meta().creation_data;
            let src = cd
                .as_ref()
                .and_then(|c| c.source_resource_id.clone())
                .unwrap_or_default();
            // The source disk by its unique id: a rename keeps it.
            let uid = cd.and_then(|c| c.source_unique_id);
            let by_id = store
                .list_kind(ObjectKind::Disk)
                .into_iter()
                .find(|d| Some(&d.id) == uid.as_ref());
            match by_id {
                Some(d) if d.meta().dek_id() == a.meta().dek_id() => d,
                Some(d) => {
                    return Err(StoreError::Refused(format!(
                        "disk '{}' no longer shares data with snapshot '{old}' (it was rekeyed, or deleted and made again); name another snapshot of its family",
                        d.name()
                    )))
                }
                None => {
                    return Err(StoreError::Refused(format!(
                        "snapshot '{old}' has no disk to compare with (its source {src} is gone); name another snapshot of its family"
                    )))
                }
            }
        }
    };
    let d = store.diff(&a, &b)?;
    let (d, next) = match (max_ranges, marker) {
        (None, None) => (d, None),
        (max, _) => d.page(from, max.unwrap_or(MAX_RANGES) as usize),
    };
    let mut v = d.to_json();
    if max_ranges.is_some() || marker.is_some() {
        v["nextMarker"] = next.map(|n| format!("dv1:{n}")).into();
    }
    v["source"] = Value::from(a.kind.resource_id(&a.name()));
    v["target"] = Value::from(b.kind.resource_id(&b.name()));
    v["sourceSizeBytes"] = Value::from(a.size());
    v["targetSizeBytes"] = Value::from(b.size());
    Ok(v)
}

pub(super) fn execute(
    c: &Control,
    r: &CopyRequest,
) -> std::result::Result<Option<Value>, StoreError> {
    let store = c.store();
    match r {
        CopyRequest::Create {
            kind,
            name,
            source,
            incremental,
            set,
            encryption_type,
            placement,
            boot,
        } => {
            check_reserved(name)?;
            if boot.is_some() && *kind != Kind::Image {
                return Err(StoreError::InvalidArgument(
                    "a boot definition (--kernel) is for images; a snapshot has none".into(),
                ));
            }
            let opts = CopyOptions {
                placement: placement.clone(),
                boot: boot.clone(),
                full: kind.object() == ObjectKind::Snapshot && !*incremental,
                disk_encryption_set: set.clone(),
                encryption_type: encryption_type
                    .as_deref()
                    .map(|t| t.parse::<EncryptionType>())
                    .transpose()?,
            };
            let obj = store.create_copy(kind.object(), name, source, &opts)?;
            Ok(Some(super::view::object_reply(store, &obj)))
        }
        CopyRequest::Delete { kind, name } => {
            store.delete_object(kind.object(), name)?;
            Ok(None)
        }
        CopyRequest::SetBoot { name, boot } => {
            let img = store.set_image_boot(name, boot.clone())?;
            Ok(Some(super::view::object_reply(store, &img)))
        }
        CopyRequest::Diff {
            old,
            new,
            max_ranges,
            marker,
        } => Ok(Some(diff(
            c,
            old,
            new.as_deref(),
            *max_ranges,
            marker.as_deref(),
        )?)),
    }
}

/// The file form of a request, for the test that holds it to the parsers.
#[cfg(test)]
impl CopyRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        let dir = |k: &Kind| k.object().dir();
        match self {
            CopyRequest::Create {
                kind,
                name,
                source,
                incremental,
                set,
                encryption_type,
                placement,
                boot,
            } => {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), name.clone().into());
                m.insert("source".into(), source.clone().into());
                m.insert("incremental".into(), (*incremental).into());
                if let Some(s) = set {
                    m.insert("des".into(), s.clone().into());
                }
                if let Some(t) = encryption_type {
                    m.insert("type".into(), t.clone().into());
                }
                super::args::placement_wire(&mut m, placement);
                if let Some(b) = boot {
                    m.insert("kernel".into(), b.kernel.clone().into());
                    if let Some(i) = &b.initrd {
                        m.insert("initrd".into(), i.clone().into());
                    }
                    if let Some(a) = &b.append {
                        m.insert("append".into(), a.clone().into());
                    }
                }
                (
                    format!("{}/create", dir(kind)),
                    serde_json::to_vec(&Value::Object(m)).expect("serializes"),
                )
            }
            CopyRequest::SetBoot { name, boot } => {
                let w = match boot {
                    None => b"none".to_vec(),
                    Some(b) => serde_json::to_vec(b).expect("serializes"),
                };
                (format!("images/{name}/boot"), w)
            }
            CopyRequest::Delete { kind, name } => {
                (format!("{}/{name}/delete", dir(kind)), b"1".to_vec())
            }
            CopyRequest::Diff { old, .. } => (format!("snapshots/{old}/diff"), Vec::new()),
        }
    }
}

//! `.vault/disks/`: managed disks' settings (the data itself is `MOUNT/disks/NAME`).

use super::args::{f, invalid, parse, Ty, Val};
use super::routes::{Params, Route, Seg, Seg::Lit};
use super::{args, check_reserved, confirm_exact_name, line, pretty, Control, Request};
use crate::crypto::CipherKind;
use crate::store::{parse_size, CreateOptions, Result, Sku, StoreError};
use crate::vault::Caller;
use serde_json::Value;
#[cfg(test)]
use serde_json::{json, Map};

/// A change to a disk.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum DiskRequest {
    Create {
        name: String,
        options: CreateOptions,
        /// A snapshot, image or disk to start from (`--source`); then a size of 0
        /// means the source's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// With a source: the encryption type asked for (checked against the source's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        encryption_type: Option<String>,
    },
    Delete {
        name: String,
    },
    /// Encryption type (text, checked by the store) and/or disk encryption set.
    Encryption {
        name: String,
        encryption_type: Option<String>,
        set: Option<String>,
    },
    Sku {
        name: String,
        sku: Sku,
    },
    /// Re-encrypt under fresh data keys: in the background in a daemon, at once
    /// otherwise.
    Rekey {
        name: String,
    },
}

/// The file form of a request, for the test that holds it to the parsers.
#[cfg(test)]
impl DiskRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        let obj =
            |m: Map<String, Value>| serde_json::to_vec(&Value::Object(m)).expect("serializes");
        match self {
            DiskRequest::Create {
                name,
                options,
                source,
                encryption_type,
            } => {
                let mut m = Map::new();
                if let Some(s) = source {
                    m.insert("source".into(), json!(s));
                }
                if let Some(t) = encryption_type {
                    m.insert("encryptionType".into(), json!(t));
                }
                m.insert("name".into(), json!(name));
                m.insert("diskSizeBytes".into(), json!(options.size));
                m.insert("sku".into(), json!(options.sku.to_string()));
                if let Some(c) = options.cipher {
                    m.insert("cipher".into(), json!(c.name()));
                }
                if let Some(s) = &options.disk_encryption_set {
                    m.insert("diskEncryptionSetId".into(), json!(s));
                }
                args::placement_wire(&mut m, &options.placement);
                ("disks/create".into(), obj(m))
            }
            DiskRequest::Delete { name } => (format!("disks/{name}/delete"), b"1".to_vec()),
            DiskRequest::Encryption {
                name,
                encryption_type,
                set,
            } => {
                let mut m = Map::new();
                if let Some(t) = encryption_type {
                    m.insert("type".into(), json!(t));
                }
                if let Some(s) = set {
                    m.insert("diskEncryptionSetId".into(), json!(s));
                }
                (format!("disks/{name}/encryption"), obj(m))
            }
            DiskRequest::Sku { name, sku } => (format!("disks/{name}/sku"), line(sku)),
            DiskRequest::Rekey { name } => (format!("disks/{name}/rekey"), b"start".to_vec()),
        }
    }
}

const DISK_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["size"], true, false, Ty::NumOrStr),
    f(&["diskSizeBytes"], false, false, Ty::NumOrStr),
    f(&["source", "sourceResourceId"], false, false, Ty::Str),
    f(
        &["type", "encryptionType", "encryption-type"],
        false,
        false,
        Ty::Str,
    ),
    f(&["diskSizeGB"], false, false, Ty::NumOrStr),
    f(&["sku"], false, false, Ty::Str),
    f(&["cipher"], false, false, Ty::Str),
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
    args::GROUP,
    args::LOCATION,
];
const ENCRYPTION_FIELDS: &[args::Field] = &[
    f(&["type"], true, false, Ty::Str),
    f(
        &[
            "des",
            "diskEncryptionSetId",
            "diskEncryptionSet",
            "disk-encryption-set",
        ],
        true,
        false,
        Ty::Str,
    ),
];
const VALUE_FIELDS: &[args::Field] = &[f(&["value"], true, true, Ty::Str)];

const DISK: Seg = Seg::Disk;

pub(super) fn routes() -> Vec<Route> {
    let dir = Lit("disks");
    vec![
        Route::w(&[dir, Lit("create")], |_, data| {
            let (name, options, source, encryption_type) = parse_disk_create(data)?;
            Ok(Request::Disk(DiskRequest::Create {
                name,
                options,
                source,
                encryption_type,
            }))
        }),
        Route::dir(&[dir, DISK]).rmdir(|p| {
            Err(StoreError::NotPermitted(format!(
                "delete the disk itself with 'rm disks/{d}' (or 'diskvault disk delete {d}')",
                d = p.disk
            )))
        }),
        Route::r(&[dir, DISK, Lit("disk.json")], read_disk),
        Route::rw(&[dir, DISK, Lit("encryption")], read_disk, |p, data| {
            let a = parse(data, ENCRYPTION_FIELDS, "write `TYPE [DES]`, e.g. `EncryptionAtRestWithCustomerKey set1`, or {\"type\":..., \"diskEncryptionSetId\":...}")?;
            Ok(Request::Disk(DiskRequest::Encryption {
                name: p.disk.into(),
                encryption_type: a.str("type").map(String::from),
                set: a.str("des").map(String::from),
            }))
        }),
        Route::rw(&[dir, DISK, Lit("sku")], read_disk, |p, data| {
            let a = parse(data, VALUE_FIELDS, "write a SKU name, e.g. Standard_LRS")?;
            Ok(Request::Disk(DiskRequest::Sku {
                name: p.disk.into(),
                sku: a.str("value").unwrap_or_default().parse::<Sku>()?,
            }))
        }),
        Route::rw(&[dir, DISK, Lit("rekey")], read_disk, |p, data| {
            let t = args::text(data)?;
            if t != "start" && t != "1" {
                return Err(invalid(format!("unknown command '{}'; write `start` to re-encrypt the disk under fresh data keys", t.chars().take(40).collect::<String>())));
            }
            Ok(Request::Disk(DiskRequest::Rekey {
                name: p.disk.into(),
            }))
        }),
        // The write form of `rm disks/NAME`, so a reply can reach the writer.
        Route::w(&[dir, DISK, Lit("delete")], |p, data| {
            confirm_exact_name(data, p.disk, "delete")?;
            Ok(Request::Disk(DiskRequest::Delete {
                name: p.disk.into(),
            }))
        }),
    ]
}

fn read_disk(c: &Control, p: &Params, _: &Caller) -> Result<Vec<u8>> {
    let store = c.store();
    let disk = store.get_or_err(p.disk)?;
    Ok(match p.file {
        "disk.json" => pretty(&super::view::disk(store, &disk)),
        "encryption" => pretty(&serde_json::to_value(disk.meta().encryption).expect("serializes")),
        "sku" => line(disk.meta().sku),
        "rekey" => pretty(&serde_json::to_value(store.rekey_status(&disk)).expect("serializes")),
        other => unreachable!("no disk file {other} in the route table"),
    })
}

/// Parses a write to `disks/create`.
#[allow(clippy::type_complexity)]
pub fn parse_disk_create(
    data: &[u8],
) -> Result<(String, CreateOptions, Option<String>, Option<String>)> {
    let a = parse(
        data,
        DISK_CREATE_FIELDS,
        "write `NAME SIZE [sku=SKU] [cipher=CIPHER] [des=SET]` or `NAME source=SNAPSHOT [SIZE]`, e.g. `data1 30G`, or a JSON object",
    )?;
    let source = a.str("source").map(String::from);
    let name = a.str("name").unwrap_or_default().to_string();
    check_reserved(&name)?;
    // As in az, a bare number is GiB; bytes need a B, or diskSizeBytes.
    let gb = |g: String| -> Result<u64> {
        if g.trim() == "0" {
            return Err(invalid("diskSizeGB is a whole number of GiB, at least 1"));
        }
        parse_size(&format!("{g}G"))
    };
    let size = match (a.get("size"), a.get("diskSizeGB"), a.get("diskSizeBytes")) {
        (Some(Val::Num(n)), None, None) => parse_size(&n.to_string())?,
        (Some(Val::Str(s)), None, None) => parse_size(s)?,
        (None, Some(Val::Num(g)), None) => gb(g.to_string())?,
        (None, Some(Val::Str(g)), None) => gb(g.clone())?,
        (None, None, Some(Val::Num(b))) => parse_size(&format!("{b}B"))?,
        (None, None, Some(Val::Str(b))) => parse_size(&format!("{b}B"))?,
        (None, None, None) if source.is_some() => 0,
        (None, None, None) => {
            return Err(invalid(
                "a size is required, e.g. `data1 30` (GiB) or `data1 512M`",
            ))
        }
        _ => {
            return Err(invalid(
                "give the size once (size, diskSizeGB or diskSizeBytes)",
            ))
        }
    };
    let opts = CreateOptions {
        size,
        sku: a
            .str("sku")
            .map(|s| s.parse::<Sku>())
            .transpose()?
            .unwrap_or_default(),
        cipher: a
            .str("cipher")
            .map(|c| c.parse::<CipherKind>())
            .transpose()?,
        disk_encryption_set: a.str("des").map(String::from),
        placement: args::placement(&a),
    };
    if source.is_some() && opts.cipher.is_some() {
        return Err(invalid(
            "a disk made from a source uses the source's cipher; leave out cipher=",
        ));
    }
    let ty = a.str("type").map(String::from);
    if ty.is_some() && source.is_none() {
        return Err(invalid(
            "type= is for a disk made from a source; without one the disk encryption set decides it",
        ));
    }
    Ok((name, opts, source, ty))
}

pub(super) fn execute(
    c: &Control,
    r: &DiskRequest,
) -> std::result::Result<Option<Value>, StoreError> {
    let store = c.store();
    // A new disk's size is whole sectors, so QEMU can attach it (truncate through
    // the mount may still make any size: POSIX, refused only at attach).
    if let DiskRequest::Create { options, .. } = r {
        if options.size <= crate::store::MAX_DISK_SIZE {
            crate::store::check_sector_multiple(options.size)?;
        }
    }
    let disk = match r {
        DiskRequest::Create {
            name,
            options,
            source: Some(source),
            encryption_type,
        } => {
            check_reserved(name)?;
            // The word form and the CLI refuse it too; a JSON command must not
            // silently drop it.
            if options.cipher.is_some() {
                return Err(StoreError::InvalidArgument(
                    "a disk made from a source uses the source's cipher; leave out cipher".into(),
                ));
            }
            let opts = crate::store::FromSourceOptions {
                size: options.size,
                sku: options.sku,
                disk_encryption_set: options.disk_encryption_set.clone(),
                encryption_type: encryption_type
                    .as_deref()
                    .map(|t| t.parse::<crate::store::EncryptionType>())
                    .transpose()?,
                placement: options.placement.clone(),
            };
            store.create_disk_from(name, source, &opts, &|_, _| {})?
        }
        DiskRequest::Create { name, options, .. } => {
            check_reserved(name)?;
            // As the words form and the CLI say it, whichever way the size came.
            if options.size > crate::store::MAX_DISK_SIZE {
                return Err(StoreError::InvalidSize {
                    input: options.size.to_string(),
                    reason: "the largest disk is 64T".into(),
                });
            }
            store.create_disk(name, options)?
        }
        DiskRequest::Delete { name } => {
            store.delete_disk(name)?;
            return Ok(None);
        }
        DiskRequest::Encryption {
            name,
            encryption_type,
            set,
        } => {
            store.update_encryption(name, encryption_type.as_deref(), set.as_deref())?;
            store.get_or_err(name)?
        }
        DiskRequest::Sku { name, sku } => {
            store.set_sku(name, *sku)?;
            store.get_or_err(name)?
        }
        DiskRequest::Rekey { name } => {
            if c.live() {
                store.rekey_spawn(name)?;
            } else {
                store.rekey(name, &|_, _| {})?;
            }
            return Ok(None);
        }
    };
    Ok(Some(super::view::object_reply(store, &disk)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_create_words_and_json() {
        let (n, a, _, _) =
            parse_disk_create(b"d1 30G sku=Standard_LRS cipher=aes-256-ctr des=set1\n").unwrap();
        let (n2, b, _, _) = parse_disk_create(
            br#"{"name":"d1","size":"30G","sku":"Standard_LRS","cipher":"aes-256-ctr","diskEncryptionSetId":"set1"}"#,
        )
        .unwrap();
        assert_eq!((n, &a), (n2, &b));
        assert_eq!(a.size, 30 << 30);
        assert_eq!(a.cipher, Some(CipherKind::Aes256Ctr));
        let (_, c, _, _) = parse_disk_create(br#"{"name":"d2","diskSizeGB":2}"#).unwrap();
        let (_, d, s, _) = parse_disk_create(b"d3 source=snap1").unwrap();
        assert_eq!((d.size, s.as_deref()), (0, Some("snap1")));
        assert_eq!(c.size, 2 << 30);
        for bad in [
            &b"d1"[..],
            b"d1 30Q",
            b"d1 30G sku=Gold",
            b"d1 30G cipher=rot13",
            b"create 1G",
            b"{\"name\":\"d1\",\"size\":true}",
        ] {
            assert!(
                parse_disk_create(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

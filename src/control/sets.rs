//! `.vault/disk-encryption-sets/`: disk encryption sets.

use super::args::{self, f, invalid, parse, Ty};
use super::routes::{Params, Route, Seg, Seg::Lit};
use super::{check_reserved, confirm_name, flag, line, pretty, Control, Request};
use crate::store::{Result, StoreError};
use crate::vault::Caller;
use serde_json::Value;
#[cfg(test)]
use serde_json::{json, Map};

/// A change to a disk encryption set. Encryption types are given as text and checked
/// by the store, which owns their messages.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum SetRequest {
    Create {
        name: String,
        key_url: String,
        encryption_type: Option<String>,
        auto_rotate: bool,
        #[serde(
            default,
            skip_serializing_if = "crate::store::arm::Placement::is_empty"
        )]
        placement: crate::store::arm::Placement,
    },
    Update {
        name: String,
        key_url: Option<String>,
        auto_rotate: Option<bool>,
        encryption_type: Option<String>,
    },
    Delete {
        name: String,
    },
}

/// The file form of a request, for the test that holds it to the parsers.
#[cfg(test)]
impl SetRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        let obj =
            |m: Map<String, Value>| serde_json::to_vec(&Value::Object(m)).expect("serializes");
        match self {
            SetRequest::Create {
                name,
                key_url,
                encryption_type,
                auto_rotate,
                placement,
            } => {
                let mut m = Map::new();
                args::placement_wire(&mut m, placement);
                m.insert("name".into(), json!(name));
                m.insert("keyUrl".into(), json!(key_url));
                if let Some(t) = encryption_type {
                    m.insert("encryptionType".into(), json!(t));
                }
                m.insert("auto-rotate".into(), json!(auto_rotate));
                ("disk-encryption-sets/create".into(), obj(m))
            }
            SetRequest::Update {
                name,
                key_url,
                auto_rotate,
                encryption_type,
            } => {
                let mut m = Map::new();
                if let Some(u) = key_url {
                    m.insert("keyUrl".into(), json!(u));
                }
                if let Some(a) = auto_rotate {
                    m.insert("auto-rotate".into(), json!(a));
                }
                if let Some(t) = encryption_type {
                    m.insert("encryptionType".into(), json!(t));
                }
                (format!("disk-encryption-sets/{name}/update"), obj(m))
            }
            SetRequest::Delete { name } => {
                (format!("disk-encryption-sets/{name}/delete"), b"1".to_vec())
            }
        }
    }
}

const DES_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["key-url", "keyUrl"], true, true, Ty::Str),
    f(
        &["type", "encryptionType", "encryption-type"],
        false,
        false,
        Ty::Str,
    ),
    f(
        &["auto-rotate", "rotationToLatestKeyVersionEnabled"],
        false,
        false,
        Ty::Bool,
    ),
    args::GROUP,
    args::LOCATION,
];
const DES_UPDATE_FIELDS: &[args::Field] = &[
    f(&["key-url", "keyUrl"], false, false, Ty::Str),
    f(
        &["auto-rotate", "rotationToLatestKeyVersionEnabled"],
        false,
        false,
        Ty::Bool,
    ),
    f(
        &["type", "encryptionType", "encryption-type"],
        false,
        false,
        Ty::Str,
    ),
];

const SET: Seg = Seg::Set;

pub(super) fn routes() -> Vec<Route> {
    let dir = Lit("disk-encryption-sets");
    vec![
        Route::w(&[dir, Lit("create")], parse_create),
        Route::dir(&[dir, SET])
            .rmdir(|p| Ok(Request::Set(SetRequest::Delete { name: p.set.into() }))),
        Route::r(&[dir, SET, Lit("status.json")], read_set),
        Route::rw(&[dir, SET, Lit("key-url")], read_set, parse_update),
        Route::rw(&[dir, SET, Lit("auto-rotate")], read_set, parse_update),
        Route::r(&[dir, SET, Lit("identity")], read_set),
        Route::r(&[dir, SET, Lit("encryption-type")], read_set),
        Route::w(&[dir, SET, Lit("update")], parse_update),
        Route::w(&[dir, SET, Lit("delete")], |p, data| {
            confirm_name(data, p.set, "delete")?;
            Ok(Request::Set(SetRequest::Delete { name: p.set.into() }))
        }),
    ]
}

fn read_set(c: &Control, p: &Params, _: &Caller) -> Result<Vec<u8>> {
    let d = c.store().keyring().des(p.set)?;
    Ok(match p.file {
        "status.json" => pretty(&super::view::set(c.store(), p.set)?),
        "key-url" => line(&d.active_key),
        "auto-rotate" => line(d.rotation_to_latest_key_version_enabled),
        "identity" => line(&d.principal_id),
        "encryption-type" => line(d.encryption_type),
        other => unreachable!("no set file {other} in the route table"),
    })
}

fn parse_create(_: &Params, data: &[u8]) -> Result<Request> {
    let a = parse(data, DES_CREATE_FIELDS, "write `NAME KEY-URL [type=EncryptionAtRestWithCustomerKey|EncryptionAtRestWithPlatformAndCustomerKeys] [auto-rotate=true]` or a JSON object")?;
    let name = a.str("name").unwrap_or_default();
    check_reserved(name)?;
    Ok(Request::Set(SetRequest::Create {
        name: name.into(),
        key_url: a.str("key-url").unwrap_or_default().into(),
        encryption_type: a.str("type").map(String::from),
        auto_rotate: a.bool("auto-rotate").unwrap_or(false),
        placement: args::placement(&a),
    }))
}

/// `key-url`, `auto-rotate` and `update`.
fn parse_update(p: &Params, data: &[u8]) -> Result<Request> {
    let (key_url, auto_rotate, encryption_type) = match p.file {
        "key-url" => (Some(args::text(data)?.to_string()), None, None),
        "auto-rotate" => (None, Some(flag(data, "auto-rotate")?), None),
        _ => {
            let a = parse(
                data,
                DES_UPDATE_FIELDS,
                "write `key-url=URL` and/or `auto-rotate=true|false`",
            )?;
            if a.0.is_empty() {
                return Err(invalid("nothing to change; give key-url= or auto-rotate="));
            }
            (
                a.str("key-url").map(String::from),
                a.bool("auto-rotate"),
                a.str("type").map(String::from),
            )
        }
    };
    Ok(Request::Set(SetRequest::Update {
        name: p.set.into(),
        key_url,
        auto_rotate,
        encryption_type,
    }))
}

pub(super) fn execute(
    c: &Control,
    r: &SetRequest,
) -> std::result::Result<Option<Value>, StoreError> {
    let store = c.store();
    let rec = match r {
        SetRequest::Create {
            name,
            key_url,
            encryption_type,
            auto_rotate,
            placement,
        } => {
            check_reserved(name)?;
            store.des_create(
                name,
                key_url,
                encryption_type.as_deref(),
                *auto_rotate,
                placement,
            )?
        }
        SetRequest::Update {
            name,
            key_url,
            auto_rotate,
            encryption_type,
        } => store.des_update(
            name,
            key_url.as_deref(),
            *auto_rotate,
            encryption_type.as_deref(),
        )?,
        SetRequest::Delete { name } => {
            store.des_delete(name)?;
            return Ok(None);
        }
    };
    Ok(Some(super::view::set_json(store, &rec)))
}

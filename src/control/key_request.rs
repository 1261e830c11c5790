//! Typed key requests: what they mean to the vault, and their wire form.

use super::Control;
use crate::store::StoreError;
#[cfg(test)]
use crate::vault::secs_to_iso;
use crate::vault::{Caller, KeyOptions, KeyRef, KeyUpdate, RotationPolicy};
#[cfg(test)]
use serde_json::Map;
use serde_json::{json, Value};
use zeroize::Zeroizing;

/// Who a grant is for: a disk encryption set's identity, or a principal id.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum Identity {
    Set(String),
    ObjectId(String),
}

/// A change to a key. `version` (where present) narrows it to one version.
#[derive(Clone, serde::Serialize, serde::Deserialize)]
#[serde(
    rename_all = "camelCase",
    rename_all_fields = "camelCase",
    deny_unknown_fields
)]
pub enum KeyRequest {
    Create {
        name: String,
        options: KeyOptions,
    },
    /// `options.size` must be `None`: the size is the imported key's.
    Import {
        name: String,
        pem: Zeroizing<String>,
        options: KeyOptions,
    },
    Update {
        name: String,
        version: Option<String>,
        update: KeyUpdate,
    },
    Rotate {
        name: String,
        options: KeyOptions,
    },
    /// `permissions: None` grants get, wrapKey and unwrapKey.
    Grant {
        name: String,
        identity: Identity,
        permissions: Option<Vec<String>>,
    },
    RevokeGrant {
        name: String,
        identity: Identity,
    },
    RotationPolicy {
        name: String,
        policy: Option<RotationPolicy>,
    },
    Delete {
        name: String,
    },
    Recover {
        name: String,
    },
    Purge {
        name: String,
    },
}

/// Never shows the PEM of an import.
impl std::fmt::Debug for KeyRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use KeyRequest::*;
        match self {
            Create { name, options } => write!(f, "Create {name} {options:?}"),
            Import { name, options, .. } => write!(f, "Import {name} {options:?} (PEM hidden)"),
            Update {
                name,
                version,
                update,
            } => write!(f, "Update {name} {version:?} {update:?}"),
            Rotate { name, options } => write!(f, "Rotate {name} {options:?}"),
            Grant {
                name,
                identity,
                permissions,
            } => write!(f, "Grant {name} {identity:?} {permissions:?}"),
            RevokeGrant { name, identity } => write!(f, "RevokeGrant {name} {identity:?}"),
            RotationPolicy { name, policy } => write!(f, "RotationPolicy {name} {policy:?}"),
            Delete { name } => write!(f, "Delete {name}"),
            Recover { name } => write!(f, "Recover {name}"),
            Purge { name } => write!(f, "Purge {name}"),
        }
    }
}

#[cfg(test)]
fn key_dir(name: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("keys/{name}/versions/{v}"),
        None => format!("keys/{name}"),
    }
}

#[cfg(test)]
/// A time as the control files take it.
fn time_value(t: Option<i64>) -> Value {
    match t {
        Some(t) => json!(secs_to_iso(t)),
        None => json!("none"),
    }
}

#[cfg(test)]
fn options_json(o: &KeyOptions, m: &mut Map<String, Value>) {
    if let Some(s) = o.size {
        m.insert("size".into(), json!(s));
    }
    if let Some(p) = o.protection {
        m.insert("protection".into(), json!(p));
    }
    if let Some(ops) = &o.key_ops {
        m.insert("ops".into(), json!(ops));
    }
    if let Some(t) = o.nbf {
        m.insert("nbf".into(), time_value(Some(t)));
    }
    if let Some(t) = o.exp {
        m.insert("exp".into(), time_value(Some(t)));
    }
    if let Some(e) = o.enabled {
        m.insert("enabled".into(), json!(e));
    }
}

#[cfg(test)]
fn identity_json(i: &Identity, m: &mut Map<String, Value>) {
    match i {
        Identity::Set(s) => m.insert("des".into(), json!(s)),
        Identity::ObjectId(id) => m.insert("objectId".into(), json!(id)),
    };
}

/// The file form of a request, for the test that holds it to the parsers.
#[cfg(test)]
impl KeyRequest {
    /// The control file and the bytes that carry this request to a daemon.
    pub(super) fn wire(&self) -> (String, Zeroizing<Vec<u8>>) {
        use KeyRequest::*;
        let obj = |m: Map<String, Value>| {
            Zeroizing::new(serde_json::to_vec(&Value::Object(m)).expect("serializes"))
        };
        let one = || Zeroizing::new(b"1".to_vec());
        match self {
            Create { name, options } => {
                let mut m = Map::new();
                m.insert("name".into(), json!(name));
                options_json(options, &mut m);
                ("keys/create".into(), obj(m))
            }
            Import { name, pem, options } => {
                let mut m = Map::new();
                m.insert("name".into(), json!(name));
                options_json(options, &mut m);
                m.insert("pem".into(), json!(pem.as_str()));
                let bytes = obj(m);
                ("keys/import".into(), bytes)
            }
            Update {
                name,
                version,
                update,
            } => {
                let mut m = Map::new();
                if let Some(e) = update.enabled {
                    m.insert("enabled".into(), json!(e));
                }
                if let Some(t) = update.nbf {
                    m.insert("nbf".into(), time_value(t));
                }
                if let Some(t) = update.exp {
                    m.insert("exp".into(), time_value(t));
                }
                if let Some(ops) = &update.key_ops {
                    m.insert("ops".into(), json!(ops));
                }
                if update.force {
                    m.insert("force".into(), json!(true));
                }
                (
                    format!("{}/update", key_dir(name, version.as_deref())),
                    obj(m),
                )
            }
            Rotate { name, options } => {
                let mut m = Map::new();
                options_json(options, &mut m);
                let body = if m.is_empty() { one() } else { obj(m) };
                (format!("keys/{name}/rotate"), body)
            }
            Grant {
                name,
                identity,
                permissions,
            } => {
                let mut m = Map::new();
                m.insert("action".into(), json!("grant"));
                identity_json(identity, &mut m);
                if let Some(p) = permissions {
                    m.insert("permissions".into(), json!(p));
                }
                (format!("keys/{name}/grants"), obj(m))
            }
            RevokeGrant { name, identity } => {
                let mut m = Map::new();
                m.insert("action".into(), json!("revoke"));
                identity_json(identity, &mut m);
                (format!("keys/{name}/grants"), obj(m))
            }
            RotationPolicy { name, policy } => {
                let body = match policy {
                    Some(p) => serde_json::to_vec(p).expect("serializes"),
                    None => b"none".to_vec(),
                };
                (format!("keys/{name}/rotation-policy"), Zeroizing::new(body))
            }
            Delete { name } => (format!("keys/{name}/delete"), one()),
            Recover { name } => (format!("deleted-keys/{name}/recover"), one()),
            Purge { name } => (format!("deleted-keys/{name}/purge"), one()),
        }
    }
}

pub(super) fn execute(
    c: &Control,
    r: &KeyRequest,
    caller: &Caller,
) -> std::result::Result<Option<Value>, StoreError> {
    let vault = c.store().vault();
    Ok(Some(match r {
        KeyRequest::Create { name, options } => {
            super::check_reserved(name)?;
            vault.create_key(caller, name, options)?
        }
        KeyRequest::Import { name, pem, options } => {
            super::check_reserved(name)?;
            vault.import_key(caller, name, pem, options)?
        }
        KeyRequest::Update {
            name,
            version,
            update,
        } => {
            let r = KeyRef {
                vault: None,
                name: name.clone(),
                version: version.as_ref().map(|v| v.to_ascii_lowercase()),
            };
            vault.update_key(caller, &r, update)?
        }
        KeyRequest::Rotate { name, options } => vault.rotate_key(caller, name, options)?,
        KeyRequest::Grant {
            name,
            identity,
            permissions,
        } => {
            let (object_id, display) = resolve(c, identity)?;
            let perms: Vec<String> = match permissions {
                Some(p) => p.clone(),
                None => ["get", "wrapKey", "unwrapKey"]
                    .iter()
                    .map(|s| s.to_string())
                    .collect(),
            };
            vault.grant(caller, name, &object_id, &display, &perms)?
        }
        KeyRequest::RevokeGrant { name, identity } => {
            let (object_id, _) = resolve(c, identity)?;
            vault.revoke_grant(caller, name, &object_id)?
        }
        KeyRequest::RotationPolicy { name, policy } => {
            vault.set_rotation_policy(caller, name, policy.clone())?;
            json!(policy)
        }
        KeyRequest::Delete { name } => vault.delete_key(caller, name)?,
        KeyRequest::Recover { name } => vault.recover_key(caller, name)?,
        KeyRequest::Purge { name } => {
            vault.purge_key(caller, name)?;
            return Ok(None);
        }
    }))
}

/// The principal id and display name of a grant's identity.
fn resolve(c: &Control, i: &Identity) -> std::result::Result<(String, String), StoreError> {
    Ok(match i {
        Identity::Set(s) => {
            let d = c.store().keyring().des(s)?;
            (
                d.principal_id.clone(),
                format!("diskEncryptionSets/{}", d.name),
            )
        }
        // An object id that is a set's identity is named by its set, as the set's
        // own grant is; any other id has no name but itself.
        Identity::ObjectId(id) => {
            let name = c
                .store()
                .des_list()
                .into_iter()
                .find(|d| d.principal_id.eq_ignore_ascii_case(id))
                .map_or_else(|| id.clone(), |d| format!("diskEncryptionSets/{}", d.name));
            (id.clone(), name)
        }
    })
}

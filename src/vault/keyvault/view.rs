//! The Azure Key Vault-shaped JSON views of keys and of the vault.
//!
//! Each view is a plain function of public records: it needs neither the vault's lock
//! nor its private state, so views can move out of the vault unchanged.

use super::super::kid::{key_url, VAULT_DNS_SUFFIX};
use super::super::secs_to_iso;
use super::{Attributes, Deletion, Grant, KeyRecord, VaultProps};
use base64::Engine;
use serde_json::{json, Value};
use std::path::Path;

fn b64url(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// `az keyvault key show`: version `version` (or with `None` the current one, plus the
/// key's attributes, versions and grants). `n` and `e` are the RSA public modulus and
/// exponent of the version shown (`rec.shown_version(version)`).
pub(crate) fn key_json(
    props: &VaultProps,
    rec: &KeyRecord,
    version: Option<&str>,
    n: &[u8],
    e: &[u8],
) -> Value {
    let vault = &props.name;
    let ver = rec.shown_version(version);
    let recoverable = props.soft_delete_retention_in_days;
    let level = if props.enable_purge_protection {
        "Recoverable"
    } else {
        "Recoverable+Purgeable"
    };
    let attrs = |a: &Attributes| {
        json!({
            "enabled": a.enabled,
            "notBefore": a.nbf.map(secs_to_iso),
            "expires": a.exp.map(secs_to_iso),
            "created": secs_to_iso(a.created),
            "updated": secs_to_iso(a.updated),
            "recoverableDays": recoverable,
            "recoveryLevel": level,
            "exportable": false,
        })
    };
    let mut v = json!({
        "name": rec.name,
        "key": {
            "kid": key_url(vault, &rec.name, Some(&ver.version)),
            "kty": if ver.hsm { "RSA-HSM" } else { "RSA" },
            "keyOps": ver.key_ops,
            "n": b64url(n),
            "e": b64url(e),
        },
        "keySize": ver.key_size,
        "imported": ver.imported,
        // What az users read: the version as it can be used, so a disabled key (or
        // one whose dates are narrower) shows here too; `keyAttributes` is the key's own.
        "attributes": attrs(&effective(&rec.attributes, &ver.attributes)),
        "tags": {},
    });
    if version.is_none() {
        v["keyAttributes"] = attrs(&rec.attributes);
        v["keyAttributes"]["keyOps"] = json!(rec.key_ops);
        v["versions"] = rec
            .versions
            .iter()
            .map(|x| {
                json!({
                    "kid": key_url(vault, &rec.name, Some(&x.version)),
                    "enabled": x.attributes.enabled,
                    "created": secs_to_iso(x.attributes.created),
                })
            })
            .collect();
        v["grants"] = grants_json(&rec.grants);
    }
    v
}

/// A version's attributes as they apply: disabled if the key or the version is, and
/// valid only where both are.
fn effective(key: &Attributes, ver: &Attributes) -> Attributes {
    Attributes {
        enabled: key.enabled && ver.enabled,
        nbf: key.nbf.max(ver.nbf),
        exp: match (key.exp, ver.exp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
        created: ver.created,
        updated: ver.updated.max(key.updated),
    }
}

/// One key of `key list`: its current version.
pub(crate) fn key_item_json(vault: &str, rec: &KeyRecord) -> Value {
    let cur = rec.current();
    json!({
        "name": rec.name,
        "kid": key_url(vault, &rec.name, Some(&cur.version)),
        "enabled": rec.attributes.enabled && cur.attributes.enabled,
        "keySize": cur.key_size,
        "versions": rec.versions.len(),
        "created": secs_to_iso(rec.attributes.created),
    })
}

/// A key of `key list` whose files cannot be loaded, and why.
pub(crate) fn broken_item_json(name: &str, error: &str) -> Value {
    json!({
        "name": name,
        "enabled": false,
        "error": error,
    })
}

/// A soft-deleted key (`az keyvault key show-deleted`).
pub(crate) fn deleted_json(props: &VaultProps, rec: &KeyRecord, d: &Deletion) -> Value {
    json!({
        "name": rec.name,
        "recoveryId": format!("https://{}{}/deletedkeys/{}", props.name, VAULT_DNS_SUFFIX, rec.name),
        "kid": key_url(&props.name, &rec.name, Some(&rec.current().version)),
        "deletedDate": secs_to_iso(d.deleted_date),
        "scheduledPurgeDate": secs_to_iso(d.scheduled_purge_date),
        "versions": rec.versions.len(),
    })
}

/// A key's grants, as `grant` and `revoke` answer.
pub(crate) fn grants_json(grants: &[Grant]) -> Value {
    json!(grants)
}

/// `az keyvault show`-like JSON: `keys` and `deleted` count active and deleted keys.
pub(crate) fn vault_json(props: &VaultProps, dir: &Path, keys: usize, deleted: usize) -> Value {
    let p = props;
    json!({
        "name": p.name,
        "id": format!("/diskvault/vaults/{}", p.name),
        "type": "Microsoft.KeyVault/vaults",
        "location": "local",
        "properties": {
            "vaultUri": format!("https://{}{}/", p.name, VAULT_DNS_SUFFIX),
            "enableSoftDelete": true,
            "softDeleteRetentionInDays": p.soft_delete_retention_in_days,
            "enablePurgeProtection": p.enable_purge_protection,
            "provisioningState": "Succeeded",
        },
        "createdAt": secs_to_iso(p.created),
        "directory": dir.display().to_string(),
        "keys": keys,
        "deletedKeys": deleted,
    })
}

//! The vault's serialized records (vault.json, key.json, deleted.json) and the
//! checks on what goes into them: key operations, permissions, grantees, times.

use super::super::{check_time_range, VaultError};
use super::RotationPolicy;
use serde::{Deserialize, Serialize};

/// Operations a key may be used for (`key_ops`).
pub const KEY_OPS: [&str; 6] = [
    "encrypt",
    "decrypt",
    "sign",
    "verify",
    "wrapKey",
    "unwrapKey",
];
/// Permissions a grant can give.
pub const PERMISSIONS: [&str; 3] = ["get", "wrapKey", "unwrapKey"];

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VaultProps {
    pub name: String,
    pub created: i64,
    pub soft_delete_retention_in_days: u32,
    pub enable_purge_protection: bool,
    /// The PKCS#11 token that holds `--protection hsm` keys, if one is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hsm: Option<crate::vault::custody::hsm::HsmConfig>,
    /// The vault's resource group and location (`keyvault create -g -l`); absent in
    /// vaults from before them (`diskvault`, `local`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// Vault-wide access policies (`keyvault set-policy`): they apply to every key,
    /// beside each key's own grants.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_policies: Vec<Grant>,
    /// RBAC role assignments on the vault or its keys (`role assignment create`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub role_assignments: Vec<RoleAssignment>,
}

/// An Azure RBAC role assignment; only Key Vault's crypto roles give key permissions.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RoleAssignment {
    /// A GUID, as Azure names assignments.
    pub name: String,
    pub principal_id: String,
    pub role_definition_name: String,
    /// The vault's id, or a key's (`VAULTID/keys/NAME`).
    pub scope: String,
    pub created: i64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Attributes {
    pub enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    pub created: i64,
    pub updated: i64,
}

impl Attributes {
    pub(super) fn new(now: i64) -> Self {
        Attributes {
            enabled: true,
            nbf: None,
            exp: None,
            created: now,
            updated: now,
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VersionRecord {
    pub version: String,
    pub attributes: Attributes,
    pub key_ops: Vec<String>,
    pub key_size: usize,
    pub imported: bool,
    /// A near-expiry notification was logged for this version.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub near_expiry_notified: bool,
    /// Held in the vault's PKCS#11 token (`--protection hsm`), not in a file.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hsm: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Grant {
    pub object_id: String,
    pub display_name: String,
    pub permissions: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyRecord {
    pub name: String,
    pub attributes: Attributes,
    pub key_ops: Vec<String>,
    /// Oldest first; the last one is the current version.
    pub versions: Vec<VersionRecord>,
    pub grants: Vec<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation_policy: Option<RotationPolicy>,
}

impl KeyRecord {
    /// The current version. Every stored key has one: a record without versions
    /// is refused when the vault loads.
    pub fn current(&self) -> &VersionRecord {
        self.versions
            .last()
            .expect("a key has at least one version")
    }

    pub fn version(&self, v: &str) -> Option<&VersionRecord> {
        self.versions.iter().find(|x| x.version == v)
    }

    /// The version a view of `version` shows: that one if the key has it, else the
    /// current one.
    pub fn shown_version(&self, version: Option<&str>) -> &VersionRecord {
        version
            .and_then(|v| self.version(v))
            .unwrap_or(self.current())
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Deletion {
    pub deleted_date: i64,
    pub scheduled_purge_date: i64,
}

/// Where a key's private half lives (az's `--protection`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protection {
    Software,
    Hsm,
}

impl std::str::FromStr for Protection {
    type Err = VaultError;
    fn from_str(s: &str) -> Result<Self, VaultError> {
        match s {
            "software" => Ok(Protection::Software),
            "hsm" => Ok(Protection::Hsm),
            other => Err(VaultError::InvalidArgument(format!(
                "protection '{}' is not software or hsm",
                other.chars().take(40).collect::<String>()
            ))),
        }
    }
}

/// Settings for a new key or version.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyOptions {
    /// `hsm`: the key is made in (or imported into) the vault's token; `software`
    /// (default): a sealed file. A rotation keeps the key's protection.
    pub protection: Option<Protection>,
    pub size: Option<usize>,
    pub key_ops: Option<Vec<String>>,
    pub nbf: Option<i64>,
    pub exp: Option<i64>,
    pub enabled: Option<bool>,
}

/// A present field (a value, or null to clear) as `Some`; an absent one stays `None`.
fn set_or_clear<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A change of attributes (`key set`). `Some(None)` clears nbf or exp.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct KeyUpdate {
    pub enabled: Option<bool>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "set_or_clear"
    )]
    pub nbf: Option<Option<i64>>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "set_or_clear"
    )]
    pub exp: Option<Option<i64>>,
    pub key_ops: Option<Vec<String>>,
    /// Disable a version even though a rotation still needs it (a revocation).
    pub force: bool,
}

/// Canonical spelling of a key operation or permission, if it is one.
fn canon(list: &[&'static str], s: &str) -> Option<&'static str> {
    list.iter().copied().find(|x| x.eq_ignore_ascii_case(s))
}

pub fn parse_key_ops(items: &[String]) -> Result<Vec<String>, VaultError> {
    if items.is_empty() {
        return Err(VaultError::InvalidArgument(format!(
            "an empty key_ops list would stop every use of the key; list the operations to keep (e.g. wrapKey unwrapKey, from {}), or disable the key with enabled=false",
            KEY_OPS.join(", ")
        )));
    }
    // Each operation once, in the order first given.
    let mut out: Vec<String> = Vec::new();
    for s in items {
        let op = canon(&KEY_OPS, s).ok_or_else(|| {
            VaultError::InvalidArgument(format!(
                "unknown key operation '{s}'; use {}",
                KEY_OPS.join(", ")
            ))
        })?;
        if !out.iter().any(|x| x == op) {
            out.push(op.to_string());
        }
    }
    Ok(out)
}

pub fn parse_permissions(items: &[String]) -> Result<Vec<String>, VaultError> {
    let mut out: Vec<String> = Vec::new();
    for s in items {
        let p = canon(&PERMISSIONS, s).ok_or_else(|| {
            VaultError::InvalidArgument(format!(
                "unknown permission '{s}'; use get, wrapKey and unwrapKey"
            ))
        })?;
        if !out.iter().any(|x| x == p) {
            out.push(p.to_string());
        }
    }
    if out.is_empty() {
        return Err(VaultError::InvalidArgument(
            "a grant needs at least one permission".into(),
        ));
    }
    Ok(out)
}

/// A grantee: the principal id of a disk encryption set's identity, a version-4 UUID
/// in lower case as sets generate them (`e776e117-7f5b-469e-a98c-77e19781f08a`). Only
/// such identities are checked against grants; users (`local-uid-N`) manage the vault
/// and need none.
pub fn validate_principal_id(id: &str) -> Result<(), VaultError> {
    let b = id.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            14 => c == b'4',
            19 => matches!(c, b'8' | b'9' | b'a' | b'b'),
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        });
    if ok {
        Ok(())
    } else {
        Err(VaultError::InvalidArgument(format!(
            "invalid principal id '{}'; give a disk encryption set's identity, a lower-case UUID like e776e117-7f5b-469e-a98c-77e19781f08a (see disk-encryption-sets/SET/identity), or grant by set name",
            id.chars().take(60).collect::<String>()
        )))
    }
}

/// Refuses new times past year 9999 (the parsers already do; this guards the API).
/// Only values being set are checked, so a key holding such a value from an older
/// store can still be disabled.
pub(super) fn check_range(nbf: Option<i64>, exp: Option<i64>) -> Result<(), VaultError> {
    for t in [nbf, exp].into_iter().flatten() {
        check_time_range(t, &t.to_string())?;
    }
    Ok(())
}

pub(super) fn check_times(nbf: Option<i64>, exp: Option<i64>) -> Result<(), VaultError> {
    if let (Some(n), Some(x)) = (nbf, exp) {
        if n >= x {
            return Err(VaultError::InvalidArgument(
                "nbf (not before) must be earlier than exp (expires)".into(),
            ));
        }
    }
    Ok(())
}

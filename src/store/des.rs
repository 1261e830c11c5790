//! Disk encryption sets (`Microsoft.Compute/diskEncryptionSets`): a key URL, an
//! encryption type and a system-assigned identity that the vault grants access to.
//! Each is kept in `STORE/disk-encryption-sets/NAME.json` (0600).

use super::encryption::EncryptionType;
use super::error::{Result, StoreError};
use crate::crypto::{random_bytes, wrap::hex};
use crate::vault::Caller;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

pub const DES_DIR: &str = "disk-encryption-sets";
pub const DES_ID_PREFIX: &str = "/diskvault/diskEncryptionSets/";
/// The tenant all local identities belong to.
pub const TENANT_ID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DesRecord {
    pub name: String,
    pub encryption_type: EncryptionType,
    /// Versioned key URL that new wraps use.
    pub active_key: String,
    /// Keys still wrapping some disk while a key change is in progress.
    #[serde(default)]
    pub previous_keys: Vec<String>,
    pub rotation_to_latest_key_version_enabled: bool,
    pub principal_id: String,
    pub provisioning_state: ProvisioningState,
    #[serde(default)]
    pub last_key_rotation_timestamp: Option<String>,
    #[serde(default)]
    pub auto_key_rotation_error: Option<String>,
    pub created: String,
    /// Resource group and location (absent: `diskvault`, `local`).
    #[serde(
        default,
        skip_serializing_if = "crate::store::arm::Placement::is_empty"
    )]
    pub placement: crate::store::arm::Placement,
    /// Set for a set whose file could not be loaded (which file, and how): it stays
    /// listed, and every use of it fails with `StoreError::DesCorrupt`. Never saved.
    #[serde(skip)]
    pub corrupt: Option<String>,
}

/// A set's `provisioningState`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProvisioningState {
    Succeeded,
    /// A key change is re-wrapping the set's disks.
    Updating,
    /// The set's file is corrupt.
    Failed,
}

impl ProvisioningState {
    pub const ALL: [ProvisioningState; 3] = [
        ProvisioningState::Succeeded,
        ProvisioningState::Updating,
        ProvisioningState::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ProvisioningState::Succeeded => "Succeeded",
            ProvisioningState::Updating => "Updating",
            ProvisioningState::Failed => "Failed",
        }
    }
}

impl fmt::Display for ProvisioningState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ProvisioningState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        ProvisioningState::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "unknown provisioning state '{s}'; use Succeeded, Updating or Failed"
                ))
            })
    }
}

/// A DES name from a name or a resource id (diskvault's or Azure's).
pub fn des_name(name_or_id: &str) -> &str {
    let t = name_or_id.trim();
    if t.len() > DES_ID_PREFIX.len() && t[..DES_ID_PREFIX.len()].eq_ignore_ascii_case(DES_ID_PREFIX)
    {
        return &t[DES_ID_PREFIX.len()..];
    }
    match super::arm::parse_id(t) {
        Some(r) if r.ty == super::arm::ResType::Set => {
            t.trim_end_matches('/').rsplit('/').next().unwrap_or(t)
        }
        _ => t,
    }
}

pub fn des_id(name: &str) -> String {
    format!("{DES_ID_PREFIX}{name}")
}

/// Validates the name of a disk encryption set (the same rule as disk names: Azure's
/// 1-80 letters, digits, '_', '.' and '-'), with a message that says "disk encryption
/// set".
pub fn validate_set_name(name: &str) -> Result<()> {
    if name.starts_with('.') {
        return Err(StoreError::InvalidSetName {
            name: name.to_string(),
            reason: "it must start with a letter or digit".into(),
        });
    }
    super::spec::validate_name(name).map_err(|e| match e {
        StoreError::InvalidName { name, reason } => StoreError::InvalidSetName { name, reason },
        other => other,
    })
}

/// A stand-in for a set whose file `path` is corrupt, named after the file.
pub fn corrupt_placeholder(name: &str, reason: String) -> DesRecord {
    DesRecord {
        name: name.to_string(),
        encryption_type: EncryptionType::CustomerKey,
        active_key: String::new(),
        previous_keys: vec![],
        rotation_to_latest_key_version_enabled: false,
        principal_id: String::new(),
        provisioning_state: ProvisioningState::Failed,
        last_key_rotation_timestamp: None,
        auto_key_rotation_error: None,
        created: String::new(),
        placement: Default::default(),
        corrupt: Some(reason),
    }
}

/// A random version-4 UUID, the form of an Azure AD principal id.
pub fn new_principal_id() -> Result<String> {
    let mut b = random_bytes(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

impl DesRecord {
    pub fn id(&self) -> String {
        des_id(&self.name)
    }

    pub fn caller(&self) -> Caller {
        Caller::des(&self.name, &self.principal_id)
    }

    /// Why the set can't be used, if its file is corrupt.
    pub fn corrupt_error(&self) -> Option<StoreError> {
        self.corrupt.as_ref().map(|reason| StoreError::DesCorrupt {
            name: self.name.clone(),
            reason: reason.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ids_and_types() {
        assert_eq!(des_name("/diskvault/diskEncryptionSets/set1"), "set1");
        assert_eq!(des_name("set1"), "set1");
        assert_eq!(
            des_name("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/diskEncryptionSets/set1"),
            "set1"
        );
        let p = new_principal_id().unwrap();
        assert_eq!(p.len(), 36);
        assert_eq!(&p[14..15], "4");
        crate::vault::keyvault::validate_principal_id(&p).unwrap();
        let e = validate_set_name("bad/name").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid disk encryption set name 'bad/name'"),
            "{e}"
        );
        validate_set_name("set-1").unwrap();
        for p in ProvisioningState::ALL {
            assert_eq!(p.to_string().parse::<ProvisioningState>().unwrap(), p);
            assert_eq!(serde_json::to_string(&p).unwrap(), format!("\"{p}\""));
        }
        assert!("updating".parse::<ProvisioningState>().is_err());
    }
}

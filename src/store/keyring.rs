//! Who wraps and unwraps each layer's DEK: the platform key for platform layers, the
//! vault (as the disk's DES identity) for customer-key layers.

use super::des::{des_name, DesRecord};
use super::meta::Encryption;
use super::{Result, StoreError};
use crate::crypto::Secret;
use crate::vault::{Caller, KeyId, KeyProvider, KeyRef, KeyVault, PlatformKeys, WrappedKey};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

pub const PLATFORM_PREFIX: &str = "platform/";

pub struct Keyring {
    pub platform: PlatformKeys,
    pub vault: Arc<KeyVault>,
    /// Disk encryption sets by lower-case name.
    pub(super) sets: RwLock<BTreeMap<String, DesRecord>>,
}

pub fn is_platform_kid(kid: &str) -> bool {
    kid.starts_with(PLATFORM_PREFIX)
}

impl Keyring {
    pub fn des(&self, name_or_id: &str) -> Result<DesRecord> {
        let n = des_name(name_or_id);
        let rec = self
            .sets
            .read()
            .get(&n.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| StoreError::DesNotFound(n.to_string()))?;
        match rec.corrupt_error() {
            Some(e) => Err(e),
            None => Ok(rec),
        }
    }

    /// Why one version of key `name` must stay usable: a set is still moving its disks
    /// off or onto it. Disabling or deleting a whole key is a revocation and is never
    /// refused (the rotation stops and resumes after a restore).
    pub fn rotation_needs(&self, name: &str, version: Option<&str>) -> Option<String> {
        let version = version?.to_ascii_lowercase();
        let sets = self.sets.read();
        for d in sets.values().filter(|d| d.provisioning_state == "Updating") {
            for kid in d.previous_keys.iter().chain(std::iter::once(&d.active_key)) {
                let Ok(r) = KeyRef::parse(kid) else { continue };
                if r.name.eq_ignore_ascii_case(name) && r.version.as_deref() == Some(&version) {
                    return Some(format!(
                        "key version {kid} is still needed by disk encryption set '{}', which is re-wrapping its disks (provisioningState Updating); let it finish ('diskvault des update {}' retries it), or disable it anyway with --force (force=true), which revokes the disks still on it",
                        d.name, d.name
                    ));
                }
            }
        }
        None
    }

    pub fn wrap_platform(&self, dek: &Secret) -> Result<WrappedKey> {
        let id = self.platform_key();
        Ok(self.platform.wrap(&Caller::platform(), &id, dek)?)
    }

    /// The store's platform key.
    pub fn platform_key(&self) -> KeyId {
        self.platform
            .default_key()
            .expect("the platform provider has a key")
    }

    /// Wraps with the DES's active key, as the DES identity.
    pub fn wrap_des(&self, des: &DesRecord, dek: &Secret) -> Result<WrappedKey> {
        self.wrap_with(des, &des.active_key, dek)
    }

    pub fn wrap_with(&self, des: &DesRecord, key_url: &str, dek: &Secret) -> Result<WrappedKey> {
        Ok(self
            .vault
            .wrap(&des.caller(), &KeyRef::parse(key_url)?, dek)?)
    }

    /// Unwraps one layer's DEK of a disk with encryption `enc`.
    pub fn unwrap(&self, enc: &Encryption, w: &WrappedKey) -> Result<Secret> {
        if is_platform_kid(&w.kid) {
            let id = KeyId::parse(&w.kid)?;
            return Ok(self.platform.unwrap(&Caller::platform(), &id, w)?);
        }
        let id = enc.disk_encryption_set_id.as_deref().ok_or_else(|| {
            StoreError::InvalidArgument(format!(
                "layer wrapped by {} but the disk names no disk encryption set",
                w.kid
            ))
        })?;
        let des = self.des(id)?;
        Ok(KeyVault::unwrap(&self.vault, &des.caller(), w)?)
    }
}

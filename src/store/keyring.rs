//! Who wraps and unwraps each layer's DEK. Key providers sit behind `KeyProvider` and
//! are routed by the kind of each key id. A platform layer's key is used as the
//! platform; a customer-key layer's as the identity of the disk's encryption set.

use super::des::{des_name, DesRecord, ProvisioningState};
use super::encryption::LayerKind;
use super::error::{Result, StoreError};
use super::meta::{Encryption, Layer, ParsedLayer};
use crate::crypto::{CipherKind, Secret};
use crate::vault::{
    Caller, KeyId, KeyInfo, KeyProvider, KeyRef, KeyVault, ProviderKind, VaultError, WrappedKey,
};
use parking_lot::RwLock;
use std::collections::BTreeMap;
use std::sync::Arc;

pub struct Keyring {
    /// One provider per kind of key id.
    providers: Vec<Arc<dyn KeyProvider>>,
    /// The customer-key vault (registered as a provider too), for what only a vault
    /// does: key management, rotation policies, the audit log.
    pub vault: Arc<KeyVault>,
    /// Disk encryption sets by lower-case name.
    pub(super) sets: RwLock<BTreeMap<String, DesRecord>>,
}

impl Keyring {
    /// A keyring with no providers yet; see `register`.
    pub(super) fn new(vault: Arc<KeyVault>, sets: BTreeMap<String, DesRecord>) -> Self {
        Keyring {
            providers: Vec::new(),
            vault,
            sets: RwLock::new(sets),
        }
    }

    /// Adds a provider for the key ids of its kind (replacing any earlier one).
    pub(super) fn register(&mut self, p: Arc<dyn KeyProvider>) {
        self.providers.retain(|q| q.kind() != p.kind());
        self.providers.push(p);
    }

    fn provider(&self, kind: ProviderKind) -> Option<&dyn KeyProvider> {
        self.providers
            .iter()
            .find(|p| p.kind() == kind)
            .map(|p| &**p)
    }

    /// The provider that serves `key`.
    fn provider_for(&self, key: &KeyId) -> Result<&dyn KeyProvider> {
        self.provider(key.provider())
            .ok_or_else(|| VaultError::UnknownKey(key.to_string()).into())
    }

    pub fn des(&self, name_or_id: &str) -> Result<DesRecord> {
        let n = des_name(name_or_id);
        let rec = self
            .sets
            .read()
            .get(&n.to_ascii_lowercase())
            .cloned()
            .ok_or_else(|| StoreError::DesNotFound(n.to_string()))?;
        // An Azure id must name this store's subscription and the set's group.
        if let Some(r) = super::arm::parse_id(name_or_id) {
            let sub = match self.vault.custody().store_id() {
                "" => super::arm::NIL_SUBSCRIPTION,
                s => s,
            };
            if r.subscription
                .as_deref()
                .is_some_and(|s| !s.eq_ignore_ascii_case(sub))
            {
                return Err(StoreError::NotFound(format!(
                    "(SubscriptionNotFound) the id of disk encryption set '{n}' names another subscription than this store's '{sub}'"
                )));
            }
            if let Some(g) = r
                .group
                .filter(|g| !g.eq_ignore_ascii_case(rec.placement.group()))
            {
                return Err(StoreError::NotFound(format!(
                    "(ResourceNotFound) The Resource 'Microsoft.Compute/diskEncryptionSets/{n}' under resource group '{g}' was not found; it is in resource group '{}'",
                    rec.placement.group()
                )));
            }
        }
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
        for d in sets
            .values()
            .filter(|d| d.provisioning_state == ProvisioningState::Updating)
        {
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

    /// The store's platform key, which new platform layers are wrapped with.
    pub fn platform_key(&self) -> Option<KeyId> {
        self.provider(ProviderKind::Platform)?.default_key()
    }

    /// The key new layers of `kind` are wrapped with, and the identity it is used as:
    /// the platform key as the platform, or the set's active key as the set.
    pub fn wrapping_key(
        &self,
        kind: LayerKind,
        des: Option<&DesRecord>,
    ) -> Result<(KeyId, Caller)> {
        match (kind, des) {
            (LayerKind::Platform, _) => {
                let key = self.platform_key().ok_or_else(|| {
                    StoreError::from(VaultError::UnknownKey(ProviderKind::Platform.to_string()))
                })?;
                Ok((key, Caller::platform()))
            }
            (LayerKind::Customer, Some(d)) => Ok((KeyId::parse(&d.active_key)?, d.caller())),
            (LayerKind::Customer, None) => Err(StoreError::InvalidArgument(
                "a customer-key layer needs a disk encryption set".into(),
            )),
        }
    }

    /// A new layer of `kind` for disk `disk_id` (see `Layer::seal`), wrapped with the
    /// key and as the identity `wrapping_key` gives.
    pub fn seal(
        &self,
        kind: LayerKind,
        des: Option<&DesRecord>,
        cipher: CipherKind,
        disk_id: &str,
        index: usize,
    ) -> Result<Layer> {
        let (key, caller) = self.wrapping_key(kind, des)?;
        let provider = self.provider_for(&key)?;
        Ok(Layer::seal(
            provider, &caller, &key, cipher, disk_id, index,
        )?)
    }

    /// Wraps with the set's active key, as the set's identity.
    pub fn wrap_des(&self, des: &DesRecord, dek: &Secret) -> Result<WrappedKey> {
        let (key, caller) = self.wrapping_key(LayerKind::Customer, Some(des))?;
        self.wrap(&caller, &key, dek)
    }

    pub fn wrap(&self, caller: &Caller, key: &KeyId, dek: &Secret) -> Result<WrappedKey> {
        Ok(self.provider_for(key)?.wrap(caller, key, dek)?)
    }

    /// Unwraps one layer's DEK of a disk with encryption `enc`.
    pub fn unwrap(&self, enc: &Encryption, layer: &ParsedLayer) -> Result<Secret> {
        let caller = match LayerKind::of(&layer.key) {
            LayerKind::Platform => Caller::platform(),
            LayerKind::Customer => {
                let id = enc.disk_encryption_set_id.as_deref().ok_or_else(|| {
                    StoreError::InvalidArgument(format!(
                        "layer wrapped by {} but the disk names no disk encryption set",
                        layer.wrapped.kid
                    ))
                })?;
                self.des(id)?.caller()
            }
        };
        Ok(self
            .provider_for(&layer.key)?
            .unwrap(&caller, &layer.key, &layer.wrapped)?)
    }

    /// The key's resolved id (its latest version, for a versionless id).
    pub fn describe(&self, key: &KeyId) -> Result<KeyInfo> {
        Ok(self.provider_for(key)?.describe(key)?)
    }

    pub fn usable_for_wrap(&self, caller: &Caller, key: &KeyId) -> Result<()> {
        Ok(self.provider_for(key)?.usable_for_wrap(caller, key)?)
    }

    pub fn usable_for_unwrap(&self, caller: &Caller, key: &KeyId) -> Result<()> {
        Ok(self.provider_for(key)?.usable_for_unwrap(caller, key)?)
    }
}

//! The customer-key vault as a key provider. Only `KeyVault`'s public API is used:
//! access control, key state and the audit log stay the vault's own business.

use super::provider::{KeyId, KeyInfo, KeyProvider, ProviderKind};
use super::{Caller, KeyRef, KeyVault, VaultError, WrappedKey};
use crate::crypto::Secret;

/// The vault reference inside a vault key id.
fn vault_ref(key: &KeyId) -> Result<&KeyRef, VaultError> {
    match key {
        KeyId::Vault(r) => Ok(r),
        other => Err(VaultError::UnknownKey(other.to_string())),
    }
}

impl KeyProvider for KeyVault {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Vault
    }

    fn default_key(&self) -> Option<KeyId> {
        None
    }

    fn wrap(&self, caller: &Caller, key: &KeyId, dek: &Secret) -> Result<WrappedKey, VaultError> {
        KeyVault::wrap(self, caller, vault_ref(key)?, dek)
    }

    fn unwrap(
        &self,
        caller: &Caller,
        key: &KeyId,
        wrapped: &WrappedKey,
    ) -> Result<Secret, VaultError> {
        vault_ref(key)?;
        // The vault parses `wrapped.kid` itself and audits it as written.
        KeyVault::unwrap(self, caller, wrapped)
    }

    fn describe(&self, key: &KeyId) -> Result<KeyInfo, VaultError> {
        let kid = self.resolve(vault_ref(key)?)?;
        Ok(KeyInfo {
            kid: KeyId::parse(&kid)?,
            // Known only to whoever holds the key's public part (a `get`, audited).
            wrapped_len: None,
        })
    }

    fn usable_for_wrap(&self, caller: &Caller, key: &KeyId) -> Result<(), VaultError> {
        self.can_wrap(caller, vault_ref(key)?)
    }

    fn usable_for_unwrap(&self, caller: &Caller, key: &KeyId) -> Result<(), VaultError> {
        vault_ref(key)?;
        self.can_unwrap(caller, &key.to_string())
    }
}

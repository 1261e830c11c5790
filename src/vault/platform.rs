//! Platform-managed keys: an RSA-2048 key generated at store init, kept sealed in
//! `STORE/keys/platform.key` (mode 0600). Azure's default for every disk.

use super::custody::{Custody, HeldKey, KeyRole, LoadError};
use super::provider::{KeyId, KeyInfo, KeyProvider, PlatformKid, ProviderKind};
use super::{Caller, VaultError, WrappedKey};
use crate::crypto::wrap::{RsaKey, WRAP_ALG};
use crate::crypto::Secret;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The platform key's file name without extension (`platform.key` sealed, or
/// `platform.pem` in a store from before sealing).
pub const PLATFORM_KEY_STEM: &str = "platform";
const PLATFORM_KEY_BITS: usize = 2048;

pub struct PlatformKeys {
    kid: PlatformKid,
    key: HeldKey,
}

impl PlatformKeys {
    /// The sealed file's path.
    pub fn path(keys_dir: &Path) -> PathBuf {
        Custody::key_paths(keys_dir, PLATFORM_KEY_STEM)[0].clone()
    }

    /// Generates the platform key into `keys_dir` (which must exist), sealed.
    pub fn create(keys_dir: &Path, custody: &Custody) -> Result<Self, VaultError> {
        let key = RsaKey::generate(PLATFORM_KEY_BITS)?;
        custody.save_key(
            keys_dir,
            PLATFORM_KEY_STEM,
            KeyRole::Platform,
            PLATFORM_KEY_STEM,
            &key,
        )?;
        Ok(PlatformKeys {
            kid: PlatformKid::from_fingerprint(&key.fingerprint()),
            key: HeldKey::ready(key),
        })
    }

    /// Loads the platform key; its private half is unsealed on first use.
    pub fn load(keys_dir: &Path, custody: &Arc<Custody>) -> Result<Self, VaultError> {
        let key = custody
            .load_key(
                keys_dir,
                PLATFORM_KEY_STEM,
                KeyRole::Platform,
                PLATFORM_KEY_STEM,
            )
            .map_err(|e| match e {
                LoadError::Missing(p) => VaultError::MissingPlatformKey(p.display().to_string()),
                LoadError::Bad(m) => VaultError::PlatformKeyUnusable(m),
            })?;
        Ok(PlatformKeys {
            kid: PlatformKid::from_fingerprint(&key.public().fingerprint()),
            key,
        })
    }

    /// Unseals the private key now (a mount checks its KEK this way).
    pub fn unseal(&self) -> Result<(), VaultError> {
        self.key.private().map(|_| ())
    }

    /// The platform key is the only key it serves; any other id is unknown.
    fn check(&self, key: &KeyId) -> Result<(), VaultError> {
        match key {
            KeyId::Platform(k) if *k == self.kid => Ok(()),
            other => Err(VaultError::UnknownKey(other.to_string())),
        }
    }
}

/// No access control: the platform key is the service's own, so the caller is ignored.
impl KeyProvider for PlatformKeys {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Platform
    }

    fn default_key(&self) -> Option<KeyId> {
        Some(KeyId::Platform(self.kid.clone()))
    }

    fn wrap(&self, _: &Caller, key: &KeyId, dek: &Secret) -> Result<WrappedKey, VaultError> {
        self.check(key)?;
        Ok(WrappedKey {
            kid: key.to_string(),
            alg: WRAP_ALG.to_string(),
            value: self.key.wrap(dek)?,
        })
    }

    fn unwrap(&self, _: &Caller, key: &KeyId, wrapped: &WrappedKey) -> Result<Secret, VaultError> {
        if wrapped.alg != WRAP_ALG {
            return Err(VaultError::UnsupportedAlg(wrapped.alg.clone()));
        }
        if !matches!(key, KeyId::Platform(k) if *k == self.kid) {
            return Err(VaultError::UnknownKey(wrapped.kid.clone()));
        }
        self.key.unwrap(&wrapped.value)
    }

    fn describe(&self, key: &KeyId) -> Result<KeyInfo, VaultError> {
        self.check(key)?;
        Ok(KeyInfo {
            kid: key.clone(),
            wrapped_len: Some(self.key.public().wrapped_len()),
        })
    }

    fn usable_for_wrap(&self, _: &Caller, key: &KeyId) -> Result<(), VaultError> {
        self.check(key)
    }

    fn usable_for_unwrap(&self, _: &Caller, key: &KeyId) -> Result<(), VaultError> {
        self.check(key)
    }
}

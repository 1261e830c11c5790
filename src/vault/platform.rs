//! Platform-managed keys: an RSA-2048 key generated at store init, kept sealed in
//! `STORE/keys/platform.key` (mode 0600). Azure's default for every disk.

use super::custody::hsm::Hsm;
use super::custody::{Custody, HeldKey, KeyRole, LoadError};
use super::provider::{KeyId, KeyInfo, KeyProvider, PlatformKid, ProviderKind};
use super::{Caller, VaultError, WrappedKey};
use crate::crypto::wrap::RsaPublic;
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

    /// Generates the platform key in `hsm`'s token (`init --platform-key hsm`) and
    /// writes its public half, `keys/platform.pub`.
    pub fn create_in_token(
        keys_dir: &Path,
        hsm: &Arc<Hsm>,
        store_id: &str,
    ) -> Result<Self, VaultError> {
        let id = Self::token_id(store_id);
        let label = format!("diskvault:platform/{store_id}");
        let public = hsm.generate(PLATFORM_KEY_BITS, &label, &id)?;
        crate::durable::write_atomic(&Self::public_path(keys_dir), public.pem().as_bytes(), 0o600)?;
        Ok(PlatformKeys {
            kid: PlatformKid::from_fingerprint(&public.fingerprint()),
            key: HeldKey::in_token(public, hsm.clone(), id),
        })
    }

    /// Loads a platform key held in `hsm`'s token.
    pub fn load_in_token(
        keys_dir: &Path,
        hsm: &Arc<Hsm>,
        store_id: &str,
    ) -> Result<Self, VaultError> {
        let path = Self::public_path(keys_dir);
        let pem = std::fs::read_to_string(&path)
            .map_err(|e| VaultError::PlatformKeyUnusable(format!("{}: {e}", path.display())))?;
        let public = RsaPublic::from_pem(&pem)
            .map_err(|e| VaultError::PlatformKeyUnusable(format!("{}: {e}", path.display())))?;
        Ok(PlatformKeys {
            kid: PlatformKid::from_fingerprint(&public.fingerprint()),
            key: HeldKey::in_token(public, hsm.clone(), Self::token_id(store_id)),
        })
    }

    /// The platform key's CKA_ID in a token: the store id's 16 bytes.
    fn token_id(store_id: &str) -> Vec<u8> {
        crate::crypto::wrap::unhex(&store_id.replace('-', ""))
            .unwrap_or_else(|| store_id.as_bytes().to_vec())
    }

    /// `keys/platform.pub`: the public half of a platform key held in a token.
    pub fn public_path(keys_dir: &Path) -> PathBuf {
        keys_dir.join(format!("{PLATFORM_KEY_STEM}.pub"))
    }

    /// Unseals the private key now, or for a key in a token checks that the token
    /// answers (a mount checks its KEK this way).
    pub fn unseal(&self) -> Result<(), VaultError> {
        if self.key.token().is_some() {
            return self.key.check();
        }
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

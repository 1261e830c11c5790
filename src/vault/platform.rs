//! Platform-managed keys: an RSA-2048 key generated at store init, kept in
//! `STORE/keys/platform.pem` (mode 0600). Azure's default for every disk.

use super::provider::{KeyId, KeyInfo, KeyProvider, PlatformKid, ProviderKind};
use super::{Caller, VaultError, WrappedKey};
use crate::crypto::wrap::{RsaKey, WRAP_ALG};
use crate::crypto::Secret;
use crate::durable;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub const PLATFORM_KEY_FILE: &str = "platform.pem";
const PLATFORM_KEY_BITS: usize = 2048;

pub struct PlatformKeys {
    kid: PlatformKid,
    key: RsaKey,
}

impl PlatformKeys {
    /// Key id: `platform/` and the first 32 hex digits of the SPKI SHA-256 fingerprint.
    fn kid_for(key: &RsaKey) -> PlatformKid {
        PlatformKid::from_fingerprint(&key.fingerprint())
    }

    pub fn path(keys_dir: &Path) -> PathBuf {
        keys_dir.join(PLATFORM_KEY_FILE)
    }

    /// Generates the platform key into `keys_dir` (which must exist).
    pub fn create(keys_dir: &Path) -> Result<Self, VaultError> {
        let key = RsaKey::generate(PLATFORM_KEY_BITS)?;
        let pem = key.to_pkcs8_pem()?;
        durable::write_atomic(&Self::path(keys_dir), pem.as_bytes(), 0o600)?;
        Ok(PlatformKeys {
            kid: Self::kid_for(&key),
            key,
        })
    }

    pub fn load(keys_dir: &Path) -> Result<Self, VaultError> {
        let path = Self::path(keys_dir);
        let pem = match std::fs::read_to_string(&path) {
            Ok(s) => zeroize::Zeroizing::new(s),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(VaultError::MissingPlatformKey(path.display().to_string()))
            }
            Err(e) => return Err(e.into()),
        };
        let key = RsaKey::from_pem(&pem).map_err(|source| VaultError::BadPlatformKey {
            path: path.display().to_string(),
            source,
        })?;
        Ok(PlatformKeys {
            kid: Self::kid_for(&key),
            key,
        })
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
        Ok(self.key.unwrap(&wrapped.value)?)
    }

    fn describe(&self, key: &KeyId) -> Result<KeyInfo, VaultError> {
        self.check(key)?;
        Ok(KeyInfo {
            kid: key.clone(),
            wrapped_len: Some(self.key.wrapped_len()),
        })
    }

    fn usable_for_wrap(&self, _: &Caller, key: &KeyId) -> Result<(), VaultError> {
        self.check(key)
    }

    fn usable_for_unwrap(&self, _: &Caller, key: &KeyId) -> Result<(), VaultError> {
        self.check(key)
    }
}

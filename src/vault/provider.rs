//! The seam between the store and whoever holds wrapping keys: parsed key ids and the
//! `KeyProvider` trait.
//!
//! A key id names its provider: `platform/<32 hex>` is the store's platform key,
//! `https://VAULT.vault.azure.net/keys/NAME/VERSION` a key in the customer-key vault.
//! The store routes every wrap and unwrap by the id's `ProviderKind`. A new provider
//! (e.g. a PKCS#11 HSM) is a `KeyId` variant here, one file implementing
//! `KeyProvider`, and one registration line where the store opens its keyring.

use super::kid::{is_version, key_url, KeyRef};
use super::{Caller, VaultError, WrappedKey};
use crate::crypto::Secret;
use std::fmt;
use std::str::FromStr;

pub const PLATFORM_PREFIX: &str = "platform/";

/// Which provider serves a key id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// The store's platform key (`STORE/keys/platform.pem`).
    Platform,
    /// The customer-key vault.
    Vault,
}

impl ProviderKind {
    /// Whether its keys are the customer's (used through a disk encryption set's
    /// identity) rather than the platform's.
    pub fn customer_managed(self) -> bool {
        match self {
            ProviderKind::Platform => false,
            ProviderKind::Vault => true,
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ProviderKind::Platform => "platform key",
            ProviderKind::Vault => "key vault",
        })
    }
}

/// The platform key's id: 32 hex digits (the start of its SPKI SHA-256 fingerprint),
/// kept as written.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PlatformKid(String);

impl PlatformKid {
    /// The id of the key whose hex SPKI fingerprint is `fingerprint`.
    pub fn from_fingerprint(fingerprint: &str) -> PlatformKid {
        PlatformKid(fingerprint.chars().take(32).collect())
    }

    pub fn hex(&self) -> &str {
        &self.0
    }
}

/// A parsed key id, as stored in a layer's `kid` or a set's `activeKey`. `Display`
/// gives back the stored form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyId {
    Platform(PlatformKid),
    /// A vault key; `vault` is always set, `version` may be absent (its latest).
    Vault(KeyRef),
}

impl KeyId {
    /// Parses `platform/<32 hex>` or `https://VAULT.vault.azure.net/keys/NAME[/VERSION]`.
    /// The short forms `NAME[/VERSION]` that users may type are `KeyRef`s, not ids.
    pub fn parse(input: &str) -> Result<KeyId, VaultError> {
        let bad = |reason: &str| VaultError::InvalidKeyId {
            input: input.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        if let Some(hex) = input.strip_prefix(PLATFORM_PREFIX) {
            if !is_version(hex) {
                return Err(bad(
                    "a platform key id is platform/ and 32 hexadecimal digits",
                ));
            }
            return Ok(KeyId::Platform(PlatformKid(hex.to_string())));
        }
        if input.trim().starts_with("https://") {
            return Ok(KeyId::Vault(KeyRef::parse(input)?));
        }
        Err(bad(
            "expected platform/<32 hex digits> or https://VAULT.vault.azure.net/keys/NAME/VERSION",
        ))
    }

    pub fn provider(&self) -> ProviderKind {
        match self {
            KeyId::Platform(_) => ProviderKind::Platform,
            KeyId::Vault(_) => ProviderKind::Vault,
        }
    }

    /// Whether it names one key version (a platform key has only one).
    pub fn is_versioned(&self) -> bool {
        match self {
            KeyId::Platform(_) => true,
            KeyId::Vault(r) => r.version.is_some(),
        }
    }

    /// The same key without its version, which resolves to the latest one.
    pub fn versionless(&self) -> KeyId {
        match self {
            KeyId::Platform(_) => self.clone(),
            KeyId::Vault(r) => KeyId::Vault(KeyRef {
                version: None,
                ..r.clone()
            }),
        }
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyId::Platform(k) => write!(f, "{PLATFORM_PREFIX}{}", k.0),
            KeyId::Vault(KeyRef {
                vault: Some(v),
                name,
                version,
            }) => f.write_str(&key_url(v, name, version.as_deref())),
            // Not made by `parse`; shown in the short form it came from.
            KeyId::Vault(KeyRef {
                vault: None,
                name,
                version: Some(v),
            }) => write!(f, "{name}/{v}"),
            KeyId::Vault(KeyRef { name, .. }) => f.write_str(name),
        }
    }
}

impl FromStr for KeyId {
    type Err = VaultError;
    fn from_str(s: &str) -> Result<KeyId, VaultError> {
        KeyId::parse(s)
    }
}

/// What a provider tells about one of its keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key's full id, its version resolved (the latest for a versionless id).
    pub kid: KeyId,
    /// Length in bytes of a wrapped key it makes, if the provider knows it.
    pub wrapped_len: Option<usize>,
}

/// Who wraps and unwraps DEKs with keys of one `ProviderKind`. Every call names the
/// key and the identity it is used as; a provider without access control ignores the
/// caller. A key id of another kind fails with `VaultError::UnknownKey`.
pub trait KeyProvider: Send + Sync {
    /// The kind of key ids it serves.
    fn kind(&self) -> ProviderKind;
    /// The key new layers are wrapped with when nothing names one (the platform's),
    /// or None where a disk encryption set always names the key.
    fn default_key(&self) -> Option<KeyId>;
    /// Wraps `dek` with `key` (its version, or the latest) as `caller`.
    fn wrap(&self, caller: &Caller, key: &KeyId, dek: &Secret) -> Result<WrappedKey, VaultError>;
    /// Unwraps a DEK wrapped by `key` (`wrapped.kid` parsed); the DEK never leaves as
    /// anything but a `Secret`.
    fn unwrap(
        &self,
        caller: &Caller,
        key: &KeyId,
        wrapped: &WrappedKey,
    ) -> Result<Secret, VaultError>;
    /// The key's resolved id and what is known of it; fails if the key is unknown.
    fn describe(&self, key: &KeyId) -> Result<KeyInfo, VaultError>;
    /// Whether `caller` could wrap with `key` now (no audit record, no crypto).
    fn usable_for_wrap(&self, caller: &Caller, key: &KeyId) -> Result<(), VaultError>;
    /// Whether `caller` could unwrap with `key` now (no audit record, no crypto).
    fn usable_for_unwrap(&self, caller: &Caller, key: &KeyId) -> Result<(), VaultError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_ids_round_trip_exactly() {
        for s in [
            "platform/0123456789abcdef0123456789abcdef",
            "platform/0123456789ABCDEF0123456789abcdef",
            "https://dv-1234abcd.vault.azure.net/keys/Cmk-1/0123456789abcdef0123456789abcdef",
            "https://vault1.vault.azure.net/keys/k1",
        ] {
            let id = KeyId::parse(s).unwrap();
            assert_eq!(id.to_string(), s);
            assert_eq!(s.parse::<KeyId>().unwrap(), id);
        }
    }

    #[test]
    fn providers_and_versions() {
        let p = KeyId::parse("platform/0123456789abcdef0123456789abcdef").unwrap();
        assert_eq!(p.provider(), ProviderKind::Platform);
        assert!(p.is_versioned() && !p.provider().customer_managed());
        assert_eq!(p.versionless(), p);
        let v =
            KeyId::parse("https://vault1.vault.azure.net/keys/k1/0123456789abcdef0123456789abcdef")
                .unwrap();
        assert_eq!(v.provider(), ProviderKind::Vault);
        assert!(v.is_versioned() && v.provider().customer_managed());
        assert_eq!(
            v.versionless().to_string(),
            "https://vault1.vault.azure.net/keys/k1"
        );
        assert!(!v.versionless().is_versioned());
        assert_eq!(
            PlatformKid::from_fingerprint(&"ab".repeat(32)).hex(),
            "ab".repeat(16)
        );
    }

    #[test]
    fn rejects_what_no_provider_serves() {
        for bad in [
            "",
            "k1",
            "k1/0123456789abcdef0123456789abcdef",
            "platform/",
            "platform/00",
            "platform/0123456789abcdef0123456789abcdeg",
            "platform/0123456789abcdef0123456789abcdef0",
            "http://v1.vault.azure.net/keys/k1",
            "https://v1.example.com/keys/k1",
            "pkcs11:token=a;object=b",
        ] {
            let e = KeyId::parse(bad).unwrap_err();
            assert!(
                matches!(
                    e,
                    VaultError::InvalidKeyId { .. } | VaultError::InvalidName { .. }
                ),
                "{bad:?}: {e}"
            );
        }
    }
}

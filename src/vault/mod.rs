//! Key providers: who wraps and unwraps a disk's DEK.
//!
//! The store only sees the `KeyProvider` trait. The platform provider is the default;
//! the customer-key vault and an HSM provider plug in behind the same trait.

mod platform;

pub use platform::PlatformKeys;

use crate::crypto::{CryptoError, Secret};
use thiserror::Error;

/// A DEK in wrapped form, as stored in disk metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// Identifier of the wrapping key, including its version.
    pub kid: String,
    /// Wrapping algorithm, e.g. "RSA-OAEP-256".
    pub alg: String,
    /// The wrapped key bytes.
    pub value: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("platform key {0} is missing; restore it from a backup (without it no disk can be decrypted)")]
    MissingPlatformKey(String),
    #[error("platform key {path} is unreadable: {source}")]
    BadPlatformKey { path: String, source: CryptoError },
    #[error("key '{0}' that wrapped this disk's key is not known to this store")]
    UnknownKey(String),
    #[error("wrapping algorithm '{0}' is not supported; only RSA-OAEP-256 is")]
    UnsupportedAlg(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("key store I/O error: {0}")]
    Io(#[from] std::io::Error),
}

pub trait KeyProvider: Send + Sync {
    /// The identifier that new wraps are made with.
    fn current_kid(&self) -> String;
    /// Wraps a DEK with the current key.
    fn wrap(&self, dek: &Secret) -> Result<WrappedKey, VaultError>;
    /// Unwraps a DEK; the unwrapped key never leaves as anything but a `Secret`.
    fn unwrap(&self, wrapped: &WrappedKey) -> Result<Secret, VaultError>;
    /// Length in bytes of a wrapped key made by `kid`, if the provider knows it.
    fn wrapped_len(&self, kid: &str) -> Option<usize>;
}

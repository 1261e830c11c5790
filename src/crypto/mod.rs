//! Data ciphers and key wrapping. Nothing here touches files or FUSE.

mod ctr;
mod error;
mod keys;
pub mod oaep;
pub mod seal;
pub mod wrap;
mod xts;

pub use self::ctr::Ctr256;
pub use error::CryptoError;
pub use keys::{random_bytes, random_uuid, Secret};
pub use xts::{Xts256, XtsBackend};

use std::fmt;
use std::str::FromStr;

/// Size of one encryption data unit (the XTS "sector"). Fixed by the format.
pub const DATA_UNIT: usize = 4096;

/// The data cipher of one disk layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CipherKind {
    /// AES-256-XTS (IEEE 1619), 512-bit key, tweak = little-endian data-unit index.
    Aes256Xts,
    /// AES-256-CTR, 256-bit key, 128-bit big-endian counter = nonce + offset/16.
    Aes256Ctr,
}

impl CipherKind {
    pub const ALL: [CipherKind; 2] = [CipherKind::Aes256Xts, CipherKind::Aes256Ctr];

    pub fn name(self) -> &'static str {
        match self {
            CipherKind::Aes256Xts => "aes-256-xts",
            CipherKind::Aes256Ctr => "aes-256-ctr",
        }
    }

    /// Length of the secret key material (the DEK) for this cipher.
    pub fn key_len(self) -> usize {
        match self {
            CipherKind::Aes256Xts => 64,
            CipherKind::Aes256Ctr => 32,
        }
    }

    /// Length of the public per-disk nonce, if the cipher uses one.
    pub fn nonce_len(self) -> usize {
        match self {
            CipherKind::Aes256Xts => 0,
            CipherKind::Aes256Ctr => 16,
        }
    }
}

impl fmt::Display for CipherKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// As its name (`aes-256-xts`).
impl serde::Serialize for CipherKind {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for CipherKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for CipherKind {
    type Err = CryptoError;
    fn from_str(s: &str) -> Result<Self, CryptoError> {
        CipherKind::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| CryptoError::UnknownCipher(s.to_string()))
    }
}

/// A keyed data cipher that transforms whole data units in place.
pub enum DataCipher {
    Xts(Box<Xts256>),
    Ctr(Box<Ctr256>),
}

impl DataCipher {
    pub fn new(kind: CipherKind, key: &Secret, nonce: &[u8]) -> Result<Self, CryptoError> {
        if key.len() != kind.key_len() || nonce.len() != kind.nonce_len() {
            return Err(CryptoError::BadKeyLength);
        }
        Ok(match kind {
            CipherKind::Aes256Xts => DataCipher::Xts(Box::new(Xts256::new(key.expose()))),
            CipherKind::Aes256Ctr => DataCipher::Ctr(Box::new(Ctr256::new(key.expose(), nonce))),
        })
    }

    /// Encrypts `buf`, which starts at data unit `first_unit` and holds whole units
    /// (the last one may be short only for CTR callers; the store always passes whole units).
    pub fn encrypt_units(&self, first_unit: u64, buf: &mut [u8]) {
        match self {
            DataCipher::Xts(x) => x.encrypt_units(first_unit.into(), buf),
            DataCipher::Ctr(c) => c.apply(first_unit * DATA_UNIT as u64, buf),
        }
    }

    /// As `encrypt_units`, reading the plaintext from `src` (as long as `dst`), so a
    /// caller with read-only plaintext needs no copy first.
    pub fn encrypt_units_from(&self, first_unit: u64, src: &[u8], dst: &mut [u8]) {
        match self {
            DataCipher::Xts(x) => x.encrypt_units_from(first_unit.into(), src, dst),
            DataCipher::Ctr(c) => {
                dst.copy_from_slice(src);
                c.apply(first_unit * DATA_UNIT as u64, dst)
            }
        }
    }

    pub fn decrypt_units(&self, first_unit: u64, buf: &mut [u8]) {
        match self {
            DataCipher::Xts(x) => x.decrypt_units(first_unit.into(), buf),
            DataCipher::Ctr(c) => c.apply(first_unit * DATA_UNIT as u64, buf),
        }
    }
}

#[cfg(test)]
mod tests;

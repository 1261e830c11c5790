//! Key wrapping: RSA-OAEP with SHA-256 for both the OAEP hash and MGF1, empty label
//! (JWA "RSA-OAEP-256", as Azure Key Vault's wrapKey uses).

use super::{CryptoError, Secret};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{PrivateKey, PublicKey};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// The wrapping algorithm name recorded with every wrapped key.
pub const WRAP_ALG: &str = "RSA-OAEP-256";

/// RSA modulus sizes Azure accepts for disk encryption keys.
pub const ALLOWED_BITS: [usize; 3] = [2048, 3072, 4096];

/// An RSA private key. The underlying type zeroizes itself on drop.
pub struct RsaKey {
    key: PrivateKey,
}

impl RsaKey {
    pub fn generate(bits: usize) -> Result<Self, CryptoError> {
        if !ALLOWED_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        let key = PrivateKey::new(&mut getrandom::SysRng, bits).map_err(|_| CryptoError::KeyGen)?;
        Ok(RsaKey { key })
    }

    /// Parses a PEM private key in PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`) form.
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = if pem.contains("BEGIN RSA PRIVATE KEY") {
            PrivateKey::from_pkcs1_pem(pem).map_err(|e| CryptoError::KeyParse(e.to_string()))?
        } else {
            PrivateKey::from_pkcs8_pem(pem).map_err(|e| CryptoError::KeyParse(e.to_string()))?
        };
        let bits = key.size() * 8;
        if !ALLOWED_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        Ok(RsaKey { key })
    }

    /// PKCS#8 PEM of the private key, in a buffer that is zeroized on drop.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, CryptoError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map(|s| Zeroizing::new(s.to_string()))
            .map_err(|e| CryptoError::KeyParse(e.to_string()))
    }

    /// PKCS#8 DER of the private key, zeroized on drop (what a sealed key file seals).
    pub fn to_pkcs8_der(&self) -> Result<Secret, CryptoError> {
        self.key
            .to_pkcs8_der()
            .map(|d| Secret::new(d.as_bytes().to_vec()))
            .map_err(|e| CryptoError::KeyParse(e.to_string()))
    }

    /// Parses PKCS#8 DER, as `to_pkcs8_der` makes it.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key =
            PrivateKey::from_pkcs8_der(der).map_err(|e| CryptoError::KeyParse(e.to_string()))?;
        let bits = key.size() * 8;
        if !ALLOWED_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        Ok(RsaKey { key })
    }

    /// The public half, which wraps without the private key.
    pub fn public(&self) -> RsaPublic {
        RsaPublic {
            key: self.key.as_public_key().clone(),
        }
    }

    pub fn wrap(&self, dek: &Secret) -> Result<Vec<u8>, CryptoError> {
        self.public().wrap(dek)
    }

    pub fn public_pem(&self) -> String {
        self.public().pem()
    }

    pub fn public_parts(&self) -> (Vec<u8>, Vec<u8>) {
        self.public().parts()
    }

    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    pub fn wrapped_len(&self) -> usize {
        self.key.size()
    }

    pub fn fingerprint(&self) -> String {
        self.public().fingerprint()
    }

    pub fn unwrap(&self, wrapped: &[u8]) -> Result<Secret, CryptoError> {
        // The plaintext vector is moved straight into a zeroizing Secret.
        self.key
            .oaep_decrypt::<Sha256>(wrapped)
            .map(Secret::new)
            .map_err(|_| CryptoError::Unwrap)
    }
}

/// An RSA public key: wraps DEKs, and names its private key by fingerprint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RsaPublic {
    key: PublicKey,
}

/// The components of a private key, big-endian, zeroized on drop (for a PKCS#11
/// `C_CreateObject` that moves a key into a token).
pub struct RawParts {
    pub n: Zeroizing<Vec<u8>>,
    pub e: Zeroizing<Vec<u8>>,
    pub d: Zeroizing<Vec<u8>>,
    pub p: Zeroizing<Vec<u8>>,
    pub q: Zeroizing<Vec<u8>>,
    pub dp: Zeroizing<Vec<u8>>,
    pub dq: Zeroizing<Vec<u8>>,
    pub qinv: Zeroizing<Vec<u8>>,
}

impl RsaKey {
    /// The key's components, read back from its PKCS#1 encoding.
    pub fn raw_parts(&self) -> Result<RawParts, CryptoError> {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let der = self
            .key
            .to_pkcs1_der()
            .map_err(|e| CryptoError::KeyParse(e.to_string()))?;
        let k = rsa::pkcs1::RsaPrivateKeyRef::try_from(der.as_bytes())
            .map_err(|e| CryptoError::KeyParse(e.to_string()))?;
        let z = |u: &rsa::pkcs1::UintRef<'_>| Zeroizing::new(u.as_bytes().to_vec());
        Ok(RawParts {
            n: z(&k.modulus),
            e: z(&k.public_exponent),
            d: z(&k.private_exponent),
            p: z(&k.prime1),
            q: z(&k.prime2),
            dp: z(&k.exponent1),
            dq: z(&k.exponent2),
            qinv: z(&k.coefficient),
        })
    }
}

impl RsaPublic {
    /// From a big-endian modulus and public exponent (as a PKCS#11 token gives them).
    pub fn from_parts(n: &[u8], e: &[u8]) -> Result<Self, CryptoError> {
        let key = PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(n),
            rsa::BoxedUint::from_be_slice_vartime(e),
        )
        .map_err(|e| CryptoError::KeyParse(e.to_string()))?;
        let bits = key.size() * 8;
        if !ALLOWED_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        Ok(RsaPublic { key })
    }

    /// Parses a DER SubjectPublicKeyInfo of an RSA key of an allowed size.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        let key = PublicKey::from_public_key_der(der)
            .map_err(|e| CryptoError::KeyParse(e.to_string()))?;
        let bits = key.size() * 8;
        if !ALLOWED_BITS.contains(&bits) {
            return Err(CryptoError::KeySize(bits));
        }
        Ok(RsaPublic { key })
    }

    /// Parses a SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn from_pem(pem: &str) -> Result<Self, CryptoError> {
        let key = PublicKey::from_public_key_pem(pem)
            .map_err(|e| CryptoError::KeyParse(e.to_string()))?;
        Self::from_der(
            key.to_public_key_der()
                .map_err(|e| CryptoError::KeyParse(e.to_string()))?
                .as_bytes(),
        )
    }

    /// DER SubjectPublicKeyInfo.
    pub fn der(&self) -> Vec<u8> {
        self.key
            .to_public_key_der()
            .expect("encoding an RSA public key cannot fail")
            .as_bytes()
            .to_vec()
    }

    /// SubjectPublicKeyInfo PEM (`BEGIN PUBLIC KEY`).
    pub fn pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("encoding an RSA public key cannot fail")
    }

    /// Big-endian modulus and public exponent, for a JWK's `n` and `e`.
    pub fn parts(&self) -> (Vec<u8>, Vec<u8>) {
        let strip = |b: Box<[u8]>| {
            let first = b.iter().position(|&x| x != 0).unwrap_or(b.len());
            b[first..].to_vec()
        };
        (strip(self.key.n_bytes()), strip(self.key.e_bytes()))
    }

    pub fn bits(&self) -> usize {
        self.key.size() * 8
    }

    /// Length of a wrapped key: the modulus size in bytes.
    pub fn wrapped_len(&self) -> usize {
        self.key.size()
    }

    /// Hex SHA-256 of the DER SubjectPublicKeyInfo; identifies the key without revealing it.
    pub fn fingerprint(&self) -> String {
        hex(&Sha256::digest(self.der()))
    }

    pub fn wrap(&self, dek: &Secret) -> Result<Vec<u8>, CryptoError> {
        self.key
            .oaep_encrypt::<Sha256>(dek.expose())
            .map_err(|e| CryptoError::Wrap(e.to_string()))
    }
}

pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

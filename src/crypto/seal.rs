//! Sealing small secrets (private keys, a store's sealing key) with AES-256-GCM: a
//! random 96-bit nonce, a 128-bit tag, and associated data that names what is sealed,
//! so a sealed blob moved to another role, key or store fails to open.
//!
//! Layout of a sealed blob: `nonce (12) || ciphertext || tag (16)`.

use super::{random_bytes, CryptoError, Secret};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};

pub const SEAL_KEY_LEN: usize = 32;
pub const NONCE_LEN: usize = 12;
pub const TAG_LEN: usize = 16;

fn cipher(key: &Secret) -> Result<Aes256Gcm, CryptoError> {
    if key.len() != SEAL_KEY_LEN {
        return Err(CryptoError::BadKeyLength);
    }
    Aes256Gcm::new_from_slice(key.expose()).map_err(|_| CryptoError::BadKeyLength)
}

/// Seals `plaintext` under `key`, bound to `aad`, with a fresh random nonce.
pub fn seal(key: &Secret, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let nonce: [u8; NONCE_LEN] = random_bytes(NONCE_LEN)?
        .try_into()
        .expect("NONCE_LEN bytes");
    seal_with_nonce(key, &nonce, aad, plaintext)
}

/// `seal` with a given nonce: for test vectors only; a nonce must never repeat.
pub(crate) fn seal_with_nonce(
    key: &Secret,
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let ct = cipher(key)?
        .encrypt(
            &Nonce::from(*nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .map_err(|_| CryptoError::Seal)?;
    let mut out = Vec::with_capacity(NONCE_LEN + ct.len());
    out.extend_from_slice(nonce);
    out.extend_from_slice(&ct);
    Ok(out)
}

/// Opens a blob made by `seal` with the same key and associated data. Any other key,
/// associated data or a changed byte fails with `CryptoError::Unseal`.
pub fn open(key: &Secret, aad: &[u8], sealed: &[u8]) -> Result<Secret, CryptoError> {
    if sealed.len() < NONCE_LEN + TAG_LEN {
        return Err(CryptoError::Unseal);
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().expect("split at NONCE_LEN");
    cipher(key)?
        .decrypt(&Nonce::from(nonce), Payload { msg: ct, aad })
        .map(Secret::new)
        .map_err(|_| CryptoError::Unseal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::wrap::unhex;

    fn h(s: &str) -> Vec<u8> {
        unhex(s).unwrap()
    }

    /// McGrew and Viega, "The Galois/Counter Mode of Operation", test case 16
    /// (AES-256, 60-byte plaintext, 20-byte AAD).
    #[test]
    fn gcm_spec_test_case_16() {
        let key = Secret::new(h(
            "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        ));
        let nonce: [u8; 12] = h("cafebabefacedbaddecaf888").try_into().unwrap();
        let pt = h("d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39");
        let aad = h("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let want_ct = h("522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662");
        let want_tag = h("76fc6ece0f4e1768cddf8853bb2d551b");
        let sealed = seal_with_nonce(&key, &nonce, &aad, &pt).unwrap();
        assert_eq!(&sealed[..12], &nonce);
        assert_eq!(&sealed[12..12 + pt.len()], &want_ct[..]);
        assert_eq!(&sealed[12 + pt.len()..], &want_tag[..]);
        assert_eq!(open(&key, &aad, &sealed).unwrap().expose(), &pt[..]);
    }

    #[test]
    fn any_change_fails_to_open() {
        let key = Secret::random(32).unwrap();
        let other = Secret::random(32).unwrap();
        let sealed = seal(&key, b"role\0id", b"secret").unwrap();
        assert_eq!(
            open(&key, b"role\0id", &sealed).unwrap().expose(),
            b"secret"
        );
        assert!(matches!(
            open(&other, b"role\0id", &sealed),
            Err(CryptoError::Unseal)
        ));
        assert!(matches!(
            open(&key, b"role\0iD", &sealed),
            Err(CryptoError::Unseal)
        ));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert!(open(&key, b"role\0id", &bad).is_err(), "byte {i}");
        }
        for n in 0..NONCE_LEN + TAG_LEN {
            assert!(open(&key, b"role\0id", &sealed[..n]).is_err());
        }
        assert!(matches!(
            seal(&Secret::new(vec![0; 16]), b"", b"x"),
            Err(CryptoError::BadKeyLength)
        ));
        // Two seals of the same secret differ (fresh nonces).
        assert_ne!(
            seal(&key, b"", b"x").unwrap(),
            seal(&key, b"", b"x").unwrap()
        );
    }
}

//! RSAES-OAEP decoding (RFC 8017 §7.1.2, steps 3a-3g) with SHA-256 for the hash and
//! MGF1 and an empty label, for a raw RSA result computed elsewhere (a PKCS#11 token
//! that does `CKM_RSA_X_509` but not OAEP with SHA-256). Constant time in the
//! message's position and in which check fails, as the RFC requires: one error for all.

use super::{CryptoError, Secret};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::Zeroizing;

const H: usize = 32;

fn mgf1_xor(seed: &[u8], out: &mut [u8]) {
    for (counter, chunk) in out.chunks_mut(H).enumerate() {
        let mut d = Sha256::new();
        d.update(seed);
        d.update((counter as u32).to_be_bytes());
        let mask = d.finalize();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
    }
}

/// Decodes `em`, the k-byte result of the raw RSA private operation (k = modulus
/// length; a shorter input is left-padded with zeros, as some tokens strip them).
pub fn decode(em: &[u8], k: usize) -> Result<Secret, CryptoError> {
    if k < 2 * H + 2 || em.len() > k {
        return Err(CryptoError::Unwrap);
    }
    let mut buf = Zeroizing::new(vec![0u8; k]);
    buf[k - em.len()..].copy_from_slice(em);
    let (y, rest) = buf.split_at_mut(1);
    let (masked_seed, masked_db) = rest.split_at_mut(H);
    mgf1_xor(masked_db, masked_seed);
    let seed = Zeroizing::new(masked_seed.to_vec());
    mgf1_xor(&seed, masked_db);
    let db = masked_db;
    let lhash = Sha256::digest([]);
    let mut good = y[0].ct_eq(&0) & db[..H].ct_eq(&lhash[..]);
    // Find the 0x01 after the zero padding without branching on the data.
    let mut found = subtle::Choice::from(0);
    let mut index: u32 = 0;
    for (i, b) in db.iter().enumerate().skip(H) {
        let is_one = b.ct_eq(&1);
        let is_zero = b.ct_eq(&0);
        let first_one = is_one & !found;
        index.conditional_assign(&(i as u32), first_one);
        found |= is_one;
        // A nonzero byte other than the 0x01, before it, is an error.
        good &= found | is_zero;
    }
    good &= found;
    if !bool::from(good) {
        return Err(CryptoError::Unwrap);
    }
    Ok(Secret::new(db[index as usize + 1..].to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::wrap::RsaKey;
    use std::process::Command;

    /// The raw RSA result from openssl (no padding), decoded here, gives back the DEK
    /// the rsa crate's OAEP wrapped: two implementations agree.
    #[test]
    fn decodes_what_openssl_decrypts_raw() {
        let dir = tempfile::tempdir().unwrap();
        let key = RsaKey::generate(2048).unwrap();
        let pem = dir.path().join("k.pem");
        std::fs::write(&pem, key.to_pkcs8_pem().unwrap().as_bytes()).unwrap();
        for len in [32usize, 64, 190] {
            let dek = Secret::new(crate::testkit::pattern(len as u64, len));
            let wrapped = key.wrap(&dek).unwrap();
            let input = dir.path().join("w.bin");
            std::fs::write(&input, &wrapped).unwrap();
            let out = Command::new("openssl")
                .args(["pkeyutl", "-decrypt", "-inkey"])
                .arg(&pem)
                .arg("-in")
                .arg(&input)
                .args(["-pkeyopt", "rsa_padding_mode:none"])
                .output()
                .expect("openssl");
            assert!(out.status.success());
            assert_eq!(out.stdout.len(), 256);
            assert_eq!(decode(&out.stdout, 256).unwrap().expose(), dek.expose());
            // Leading zero bytes stripped by a token are put back.
            let first_nonzero = out.stdout.iter().position(|&b| b != 0).unwrap();
            assert_eq!(
                decode(&out.stdout[first_nonzero..], 256).unwrap().expose(),
                dek.expose()
            );
            // Any change fails, with the one error.
            for i in [0, 1, 40, 100, 255] {
                let mut bad = out.stdout.clone();
                bad[i] ^= 0x80;
                assert!(
                    matches!(decode(&bad, 256), Err(CryptoError::Unwrap)),
                    "byte {i}"
                );
            }
        }
        assert!(decode(&[0u8; 257], 256).is_err());
        assert!(decode(&[0u8; 256], 256).is_err());
        assert!(decode(&[], 60).is_err());
    }
}

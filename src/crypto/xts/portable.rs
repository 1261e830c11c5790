//! XTS over the `aes` crate, for any CPU: a unit's tweaks are computed first, so AES
//! runs over the whole unit with the crate's parallel `encrypt_blocks`.

use aes::Aes256;
use cipher::array::Array;
use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

use super::MAX_UNIT;

pub(super) struct Xts {
    data_key: Aes256,
    tweak_key: Aes256,
}

impl Xts {
    /// `key` is Key1 (data) followed by Key2 (tweak), 32 bytes each.
    pub(super) fn new(key: &[u8]) -> Self {
        Xts {
            data_key: Aes256::new_from_slice(&key[..32]).expect("32-byte key"),
            tweak_key: Aes256::new_from_slice(&key[32..]).expect("32-byte key"),
        }
    }

    /// Fills `tweaks` with T_j = E_K2(i) * alpha^j for each 16-byte block j.
    fn tweaks(&self, unit_index: u128, tweaks: &mut [u128]) {
        let mut t = Array::from(unit_index.to_le_bytes());
        self.tweak_key.encrypt_block(&mut t);
        let mut t = u128::from_le_bytes(t.into());
        for slot in tweaks.iter_mut() {
            *slot = t;
            // Multiply by alpha in GF(2^128), little-endian as IEEE 1619 specifies.
            let carry = (t >> 127) as u8;
            t = (t << 1) ^ (0x87 * carry as u128);
        }
    }

    fn xor_tweaks(buf: &mut [u8], tweaks: &[u128]) {
        for (block, t) in buf.chunks_exact_mut(16).zip(tweaks) {
            let b = u128::from_le_bytes(block.try_into().expect("16-byte chunk")) ^ t;
            block.copy_from_slice(&b.to_le_bytes());
        }
    }

    /// Encrypts (`DEC` false) or decrypts one data unit of 16..=4096 bytes in place.
    pub(super) fn crypt_unit<const DEC: bool>(&self, unit_index: u128, unit: &mut [u8]) {
        let mut tweaks = [0u128; MAX_UNIT / 16];
        let tweaks = &mut tweaks[..unit.len() / 16];
        self.tweaks(unit_index, tweaks);
        Self::xor_tweaks(unit, tweaks);
        let (blocks, _) = Array::slice_as_chunks_mut(unit);
        if DEC {
            self.data_key.decrypt_blocks(blocks);
        } else {
            self.data_key.encrypt_blocks(blocks);
        }
        Self::xor_tweaks(unit, tweaks);
    }
}

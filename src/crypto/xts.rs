//! XTS-AES-256 (IEEE 1619-2007) for whole data units.
//!
//! The `xts-mode` crate encrypts one 16-byte block at a time. Here a unit's tweaks are
//! computed first, so AES runs over the whole unit with the parallel (AES-NI/VAES)
//! `encrypt_blocks`, which is several times faster.

use aes::Aes256;
use cipher::array::Array;
use cipher::{BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};

/// Largest data unit this implementation handles in one call.
const MAX_UNIT: usize = 4096;

pub struct Xts256 {
    data_key: Aes256,
    tweak_key: Aes256,
}

impl Xts256 {
    /// `key` is 64 bytes: the data key (Key1) followed by the tweak key (Key2).
    pub fn new(key: &[u8]) -> Self {
        assert_eq!(key.len(), 64, "XTS-AES-256 takes a 512-bit key");
        Xts256 {
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

    fn check_len(len: usize) {
        assert!(
            len >= 16 && len.is_multiple_of(16) && len <= MAX_UNIT,
            "XTS data unit must be a multiple of 16 bytes, 16..=4096 (got {len})"
        );
    }

    /// Encrypts one data unit in place; `unit_index` is the IEEE 1619 data unit sequence number.
    pub fn encrypt_unit(&self, unit_index: u128, unit: &mut [u8]) {
        Self::check_len(unit.len());
        let mut tweaks = [0u128; MAX_UNIT / 16];
        let tweaks = &mut tweaks[..unit.len() / 16];
        self.tweaks(unit_index, tweaks);
        Self::xor_tweaks(unit, tweaks);
        let (blocks, _) = Array::slice_as_chunks_mut(unit);
        self.data_key.encrypt_blocks(blocks);
        Self::xor_tweaks(unit, tweaks);
    }

    pub fn decrypt_unit(&self, unit_index: u128, unit: &mut [u8]) {
        Self::check_len(unit.len());
        let mut tweaks = [0u128; MAX_UNIT / 16];
        let tweaks = &mut tweaks[..unit.len() / 16];
        self.tweaks(unit_index, tweaks);
        Self::xor_tweaks(unit, tweaks);
        let (blocks, _) = Array::slice_as_chunks_mut(unit);
        self.data_key.decrypt_blocks(blocks);
        Self::xor_tweaks(unit, tweaks);
    }
}

//! AES-256-CTR over the disk's byte space: the counter block for byte offset `o` is
//! (nonce + o/16) mod 2^128, big-endian, so any range can be processed independently.

use cipher::{KeyIvInit, StreamCipher, StreamCipherSeek};

type Ctr = ctr::Ctr128BE<aes::Aes256>;

pub struct Ctr256 {
    key: zeroize::Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
}

impl Ctr256 {
    pub fn new(key: &[u8], nonce: &[u8]) -> Self {
        let mut k = zeroize::Zeroizing::new([0u8; 32]);
        k.copy_from_slice(key);
        Ctr256 {
            key: k,
            nonce: nonce.try_into().expect("16-byte CTR nonce"),
        }
    }

    /// XORs the keystream for bytes `[offset, offset + buf.len())` into `buf`.
    pub fn apply(&self, offset: u64, buf: &mut [u8]) {
        let mut c =
            Ctr::new_from_slices(&self.key[..], &self.nonce).expect("fixed key and nonce sizes");
        c.seek(offset);
        c.apply_keystream(buf);
    }
}

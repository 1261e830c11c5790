//! Fused XTS-AES-256 kernels for x86_64: AES-NI (8 blocks interleaved) and VAES on
//! AVX-512 registers (16 blocks per iteration). One pass over the data; the tweaks
//! live in registers and are advanced by multiplying by powers of alpha there.
//!
//! Every function here is compiled for CPU features the caller must have checked.

use core::arch::x86_64::*;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Expanded AES-256 round keys. Secrets: zeroized on drop.
#[derive(Zeroize, ZeroizeOnDrop)]
pub(super) struct Keys {
    /// Key1 for encryption.
    enc: [__m128i; 15],
    /// Key1 for the "equivalent inverse cipher" (FIPS 197 5.3.5) that AESDEC implements:
    /// the encryption keys reversed, the middle 13 through InvMixColumns.
    dec: [__m128i; 15],
    /// Key2, which encrypts the data unit index into the unit's first tweak.
    tweak: [__m128i; 15],
}

impl Keys {
    /// `key` is Key1 followed by Key2, 32 bytes each.
    #[target_feature(enable = "aes")]
    pub(super) fn new(key: &[u8]) -> Self {
        // Expanded straight into the struct, not via temporaries nothing would zeroize.
        let mut keys = Keys {
            enc: [_mm_setzero_si128(); 15],
            dec: [_mm_setzero_si128(); 15],
            tweak: [_mm_setzero_si128(); 15],
        };
        expand_key(&key[..32], &mut keys.enc);
        expand_key(&key[32..], &mut keys.tweak);
        for (d, e) in keys.dec.iter_mut().zip(keys.enc.iter().rev()) {
            *d = *e;
        }
        for k in &mut keys.dec[1..14] {
            *k = _mm_aesimc_si128(*k);
        }
        keys
    }

    /// The unit's first tweak, T = E_K2(unit index as 16 little-endian bytes).
    #[inline]
    #[target_feature(enable = "aes")]
    fn first_tweak(&self, unit_index: u128) -> __m128i {
        let index = _mm_set_epi64x((unit_index >> 64) as i64, unit_index as i64);
        let mut b = _mm_xor_si128(index, self.tweak[0]);
        for k in &self.tweak[1..14] {
            b = _mm_aesenc_si128(b, *k);
        }
        _mm_aesenclast_si128(b, self.tweak[14])
    }
}

/// The AES-256 key schedule (FIPS 197 5.2) with AESKEYGENASSIST.
#[target_feature(enable = "aes")]
fn expand_key(key: &[u8], rk: &mut [__m128i; 15]) {
    /// Round key i from keys i-2 and i-1: `assist` is SubWord (and for even i RotWord
    /// and Rcon) of key i-1's last word, broadcast by the caller's shuffle.
    #[inline]
    #[target_feature(enable = "aes")]
    fn next(two_back: __m128i, assist: __m128i) -> __m128i {
        // Running xor of the four words: w0, w0^w1, w0^w1^w2, w0^w1^w2^w3.
        let mut t = _mm_xor_si128(two_back, _mm_slli_si128::<4>(two_back));
        t = _mm_xor_si128(t, _mm_slli_si128::<8>(t));
        _mm_xor_si128(t, assist)
    }

    /// Fills round keys i (even) and i+1 (when i < 14).
    #[inline]
    #[target_feature(enable = "aes")]
    fn pair<const RCON: i32>(rk: &mut [__m128i; 15], i: usize) {
        let assist = _mm_aeskeygenassist_si128::<RCON>(rk[i - 1]);
        rk[i] = next(rk[i - 2], _mm_shuffle_epi32::<0xff>(assist));
        if i < 14 {
            let assist = _mm_aeskeygenassist_si128::<0>(rk[i]);
            rk[i + 1] = next(rk[i - 1], _mm_shuffle_epi32::<0xaa>(assist));
        }
    }

    rk[0] = load1(key[..16].try_into().expect("32-byte key"));
    rk[1] = load1(key[16..32].try_into().expect("32-byte key"));
    pair::<0x01>(rk, 2);
    pair::<0x02>(rk, 4);
    pair::<0x04>(rk, 6);
    pair::<0x08>(rk, 8);
    pair::<0x10>(rk, 10);
    pair::<0x20>(rk, 12);
    pair::<0x40>(rk, 14);
}

#[inline]
#[target_feature(enable = "sse2")]
fn load1(b: &[u8; 16]) -> __m128i {
    // Safe because `b` is 16 readable bytes and the load has no alignment requirement.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "sse2")]
fn store1(b: &mut [u8; 16], v: __m128i) {
    // Safe because `b` is 16 writable bytes and the store has no alignment requirement.
    unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), v) }
}

/// Multiplies the tweak by alpha: shift the 128-bit value left by one; bit 63 carries into
/// bit 64 and bit 127 wraps round as the polynomial x^7 + x^2 + x + 1 (0x87).
#[inline]
#[target_feature(enable = "sse2")]
fn mul_alpha(t: __m128i) -> __m128i {
    // Each dword's top bit as all-ones or zero; dword 3's goes to dword 0, dword 1's to 2.
    let tops = _mm_shuffle_epi32::<0b00_01_00_11>(_mm_srai_epi32::<31>(t));
    let carries = _mm_and_si128(tops, _mm_set_epi32(0, 1, 0, 0x87));
    _mm_xor_si128(_mm_add_epi64(t, t), carries)
}

/// Multiplies the tweak by alpha^8: a 1-byte shift, the byte shifted out folded back in
/// as byte * 0x87. Fewer instructions than 8 `mul_alpha`, and off the AES ports.
#[inline]
#[target_feature(enable = "sse2,pclmulqdq")]
fn mul_alpha8(t: __m128i) -> __m128i {
    let out = _mm_srli_si128::<15>(t);
    let wrapped = _mm_clmulepi64_si128::<0x00>(out, _mm_set_epi64x(0, 0x87));
    _mm_xor_si128(_mm_slli_si128::<1>(t), wrapped)
}

/// The 14 AES-256 rounds over `N` independent blocks, with their tweaks xored in before
/// (merged with round key 0) and after (merged into the last round key).
#[inline]
#[target_feature(enable = "aes")]
fn rounds1<const DEC: bool, const N: usize>(
    rk: &[__m128i; 15],
    x: &mut [__m128i; N],
    tweaks: &[__m128i; N],
) {
    for (b, t) in x.iter_mut().zip(tweaks) {
        *b = _mm_xor_si128(*b, _mm_xor_si128(*t, rk[0]));
    }
    for k in &rk[1..14] {
        for b in x.iter_mut() {
            *b = if DEC {
                _mm_aesdec_si128(*b, *k)
            } else {
                _mm_aesenc_si128(*b, *k)
            };
        }
    }
    for (b, t) in x.iter_mut().zip(tweaks) {
        let last = _mm_xor_si128(rk[14], *t);
        *b = if DEC {
            _mm_aesdeclast_si128(*b, last)
        } else {
            _mm_aesenclast_si128(*b, last)
        };
    }
}

/// Blocks per AES-NI iteration: enough independent AESENCs to cover its latency (3-4
/// cycles at up to 2 per cycle), few enough to keep the blocks in the 16 xmm registers.
const BLOCKS: usize = 8;

/// Encrypts (`DEC` false) or decrypts `src` (or, if `None`, `buf` itself) into `buf`, as
/// consecutive `unit_len`-byte data units numbered from `first_unit`, with 128-bit
/// AES-NI, 8 blocks at a time. `src` is as long as `buf`.
#[target_feature(enable = "aes,pclmulqdq")]
pub(super) fn aesni<const DEC: bool>(
    keys: &Keys,
    first_unit: u128,
    src: Option<&[u8]>,
    buf: &mut [u8],
    unit_len: usize,
) {
    let rk = if DEC { &keys.dec } else { &keys.enc };
    for (i, unit) in buf.chunks_exact_mut(unit_len).enumerate() {
        let input = src.map(|s| &s[i * unit_len..][..unit_len]);
        // The tweaks of the next 8 blocks: T * alpha^0..=7.
        let mut tweaks = [keys.first_tweak(first_unit.wrapping_add(i as u128)); BLOCKS];
        for j in 1..BLOCKS {
            tweaks[j] = mul_alpha(tweaks[j - 1]);
        }
        let (groups, tail) = unit.as_chunks_mut::<{ 16 * BLOCKS }>();
        let tail_at = groups.len() * 16 * BLOCKS;
        for (g, group) in groups.iter_mut().enumerate() {
            let from = match input {
                Some(s) => &s[g * 16 * BLOCKS..][..16 * BLOCKS],
                None => &group[..],
            };
            let (blocks, _) = from.as_chunks::<16>();
            let mut x = [_mm_setzero_si128(); BLOCKS];
            for (v, b) in x.iter_mut().zip(blocks) {
                *v = load1(b);
            }
            rounds1::<DEC, BLOCKS>(rk, &mut x, &tweaks);
            let (blocks, _) = group.as_chunks_mut::<16>();
            for (v, b) in x.iter().zip(blocks) {
                store1(b, *v);
            }
            for tw in &mut tweaks {
                *tw = mul_alpha8(*tw);
            }
        }
        // Up to 7 blocks left, one at a time.
        let (blocks, _) = tail.as_chunks_mut::<16>();
        for (k, (b, tw)) in blocks.iter_mut().zip(tweaks).enumerate() {
            let from = match input {
                Some(s) => s[tail_at + 16 * k..][..16].try_into().expect("16 bytes"),
                None => *b,
            };
            let mut x = [load1(&from)];
            rounds1::<DEC, 1>(rk, &mut x, &[tw]);
            store1(b, x[0]);
        }
    }
}

/// Multiplies the tweak in each 128-bit lane of `t` by alpha^s, where `s` holds the lane's
/// power in both its qwords, 0..=56 (so the overflow times 0x87 fits in 64 bits).
#[inline]
#[target_feature(enable = "avx512f,vpclmulqdq")]
fn mul_alpha_pow(t: __m512i, s: __m512i) -> __m512i {
    // The top s bits of each qword, which the shift pushes out.
    let carries = _mm512_srlv_epi64(t, _mm512_sub_epi64(_mm512_set1_epi64(64), s));
    // The low qword's carry moves up into the high qword.
    let up = _mm512_maskz_unpacklo_epi64(0b1010_1010, carries, carries);
    // The high qword's carry wraps round to the low qword, reduced: carry * 0x87.
    let wrapped = _mm512_clmulepi64_epi128::<0x01>(carries, _mm512_set1_epi64(0x87));
    // Three-way xor.
    _mm512_ternarylogic_epi64::<0x96>(_mm512_sllv_epi64(t, s), up, wrapped)
}

/// Multiplies the tweak in each 128-bit lane by alpha^16: a 2-byte shift, the 16 bits
/// shifted out folded back in as bits * 0x87. Unlike `mul_alpha_pow`'s qword shifts, byte
/// shifts and VPCLMULQDQ don't compete with VAES for port 0 on Intel cores.
#[inline]
#[target_feature(enable = "avx512bw,vpclmulqdq")]
fn mul_alpha16(t: __m512i) -> __m512i {
    let out = _mm512_bsrli_epi128::<14>(t);
    let wrapped = _mm512_clmulepi64_epi128::<0x00>(out, _mm512_set1_epi64(0x87));
    _mm512_xor_si512(_mm512_bslli_epi128::<2>(t), wrapped)
}

/// The 14 AES-256 rounds over `N` vectors of 4 blocks; tweaks merged as in `rounds1`.
#[inline]
#[target_feature(enable = "avx512f,vaes")]
fn rounds4<const DEC: bool, const N: usize>(
    rk: &[__m512i; 15],
    x: &mut [__m512i; N],
    tweaks: &[__m512i; N],
) {
    for (b, t) in x.iter_mut().zip(tweaks) {
        *b = _mm512_ternarylogic_epi64::<0x96>(*b, *t, rk[0]);
    }
    for k in &rk[1..14] {
        for b in x.iter_mut() {
            *b = if DEC {
                _mm512_aesdec_epi128(*b, *k)
            } else {
                _mm512_aesenc_epi128(*b, *k)
            };
        }
    }
    for (b, t) in x.iter_mut().zip(tweaks) {
        let last = _mm512_xor_si512(rk[14], *t);
        *b = if DEC {
            _mm512_aesdeclast_epi128(*b, last)
        } else {
            _mm512_aesenclast_epi128(*b, last)
        };
    }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load4(b: &[u8; 64]) -> __m512i {
    // Safe because `b` is 64 readable bytes and the load has no alignment requirement.
    unsafe { _mm512_loadu_si512(b.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn store4(b: &mut [u8; 64], v: __m512i) {
    // Safe because `b` is 64 writable bytes and the store has no alignment requirement.
    unsafe { _mm512_storeu_si512(b.as_mut_ptr().cast(), v) }
}

/// As `aesni`, with VAES on 512-bit vectors: 16 blocks (4 vectors) per iteration, which
/// keeps the 15 round keys, the data and the tweaks all in the 32 zmm registers.
#[target_feature(enable = "aes,avx512f,avx512bw,vaes,vpclmulqdq")]
pub(super) fn vaes512<const DEC: bool>(
    keys: &Keys,
    first_unit: u128,
    src: Option<&[u8]>,
    buf: &mut [u8],
    unit_len: usize,
) {
    let mut rk = [_mm512_setzero_si512(); 15];
    for (wide, k) in rk.iter_mut().zip(if DEC { &keys.dec } else { &keys.enc }) {
        *wide = _mm512_broadcast_i32x4(*k);
    }
    for (i, unit) in buf.chunks_exact_mut(unit_len).enumerate() {
        let input = src.map(|s| &s[i * unit_len..][..unit_len]);
        let t = _mm512_broadcast_i32x4(keys.first_tweak(first_unit.wrapping_add(i as u128)));
        // The tweaks of the next 16 blocks: T * alpha^0..=15, 4 per vector.
        let mut tweaks = [_mm512_setzero_si512(); 4];
        for (j, tw) in (0..).zip(&mut tweaks) {
            let s = 4 * j;
            *tw = mul_alpha_pow(
                t,
                _mm512_set_epi64(s + 3, s + 3, s + 2, s + 2, s + 1, s + 1, s, s),
            );
        }
        let (groups, tail) = unit.as_chunks_mut::<256>();
        let tail_at = groups.len() * 256;
        for (g, group) in groups.iter_mut().enumerate() {
            let from = match input {
                Some(s) => &s[g * 256..][..256],
                None => &group[..],
            };
            let (vecs, _) = from.as_chunks::<64>();
            let mut x = [_mm512_setzero_si512(); 4];
            for (v, b) in x.iter_mut().zip(vecs) {
                *v = load4(b);
            }
            rounds4::<DEC, 4>(&rk, &mut x, &tweaks);
            let (vecs, _) = group.as_chunks_mut::<64>();
            for (v, b) in x.iter().zip(vecs) {
                store4(b, *v);
            }
            for tw in &mut tweaks {
                *tw = mul_alpha16(*tw);
            }
        }
        // Up to 15 blocks left: 4 at a time, the last 1 to 4 under a mask.
        for (k, (part, tw)) in tail.chunks_mut(64).zip(tweaks).enumerate() {
            let qwords: __mmask8 = ((1u32 << (part.len() / 8)) - 1) as u8;
            let from = match input {
                Some(s) => s[tail_at + 64 * k..][..part.len()].as_ptr(),
                None => part.as_ptr(),
            };
            // Safe because the mask enables exactly the qwords inside `part`, and `from`
            // has as many bytes (a same-length slice of `src`, or `part`); the CPU
            // neither reads nor writes, nor faults on, the masked-off ones.
            let mut x = [unsafe { _mm512_maskz_loadu_epi64(qwords, from.cast()) }];
            rounds4::<DEC, 1>(&rk, &mut x, &[tw]);
            // Safe as the load above.
            unsafe { _mm512_mask_storeu_epi64(part.as_mut_ptr().cast(), qwords, x[0]) };
        }
    }
}

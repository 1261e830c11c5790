//! XTS-AES-256 (IEEE 1619-2007) for whole data units.
//!
//! Each key picks, once, the fastest backend the CPU runs (see [`XtsBackend`]). The x86
//! backends make a single pass over the data: load, xor tweak, 14 AES rounds, xor tweak,
//! store, with the tweaks advanced in registers. The portable one runs the `aes` crate
//! between two passes that xor precomputed tweaks in: a third of the VAES speed.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use super::DATA_UNIT;

/// Largest data unit this implementation handles in one call.
const MAX_UNIT: usize = 4096;

/// An implementation of XTS-AES-256. All give identical results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XtsBackend {
    /// VAES and VPCLMULQDQ on AVX-512 registers: 16 blocks per iteration.
    Vaes512,
    /// AES-NI and PCLMULQDQ on 128-bit registers, 8 blocks interleaved.
    AesNi,
    /// The `aes` crate over a unit's precomputed tweaks; any CPU.
    Portable,
}

impl XtsBackend {
    /// Every backend, fastest first.
    pub const ALL: [XtsBackend; 3] = [XtsBackend::Vaes512, XtsBackend::AesNi, XtsBackend::Portable];

    /// Whether this CPU can run the backend (std caches the CPUID answers).
    pub fn is_available(self) -> bool {
        match self {
            XtsBackend::Portable => true,
            #[cfg(target_arch = "x86_64")]
            XtsBackend::AesNi => {
                std::is_x86_feature_detected!("aes") && std::is_x86_feature_detected!("pclmulqdq")
            }
            #[cfg(target_arch = "x86_64")]
            XtsBackend::Vaes512 => {
                std::is_x86_feature_detected!("aes")
                    && std::is_x86_feature_detected!("avx512f")
                    && std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("vaes")
                    && std::is_x86_feature_detected!("vpclmulqdq")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }
}

pub struct Xts256 {
    imp: Imp,
}

enum Imp {
    Portable(Box<portable::Xts>),
    /// Only built once the CPU is known to have AES-NI and PCLMULQDQ.
    #[cfg(target_arch = "x86_64")]
    AesNi(x86::Keys),
    /// Only built once the CPU is known to have AES-NI, AVX-512F/BW, VAES and VPCLMULQDQ.
    #[cfg(target_arch = "x86_64")]
    Vaes512(x86::Keys),
}

impl Xts256 {
    /// `key` is 64 bytes: the data key (Key1) followed by the tweak key (Key2).
    /// Uses the fastest backend this CPU supports.
    pub fn new(key: &[u8]) -> Self {
        XtsBackend::ALL
            .into_iter()
            .find_map(|b| Self::with_backend(key, b))
            .expect("the portable backend runs anywhere")
    }

    /// As [`Xts256::new`] with the given backend, or `None` if this CPU can't run it.
    pub fn with_backend(key: &[u8], backend: XtsBackend) -> Option<Self> {
        assert_eq!(key.len(), 64, "XTS-AES-256 takes a 512-bit key");
        if !backend.is_available() {
            return None;
        }
        let imp = match backend {
            XtsBackend::Portable => Imp::Portable(Box::new(portable::Xts::new(key))),
            // Safe because `is_available` just confirmed AES-NI, all `Keys::new` needs.
            #[cfg(target_arch = "x86_64")]
            XtsBackend::AesNi => Imp::AesNi(unsafe { x86::Keys::new(key) }),
            // Safe because `is_available` just confirmed AES-NI, all `Keys::new` needs.
            #[cfg(target_arch = "x86_64")]
            XtsBackend::Vaes512 => Imp::Vaes512(unsafe { x86::Keys::new(key) }),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("only the portable backend is available off x86_64"),
        };
        Some(Xts256 { imp })
    }

    pub fn backend(&self) -> XtsBackend {
        match self.imp {
            Imp::Portable(_) => XtsBackend::Portable,
            #[cfg(target_arch = "x86_64")]
            Imp::AesNi(_) => XtsBackend::AesNi,
            #[cfg(target_arch = "x86_64")]
            Imp::Vaes512(_) => XtsBackend::Vaes512,
        }
    }

    fn check_len(len: usize) {
        assert!(
            len >= 16 && len.is_multiple_of(16) && len <= MAX_UNIT,
            "XTS data unit must be a multiple of 16 bytes, 16..=4096 (got {len})"
        );
    }

    fn check_units(len: usize) {
        assert!(
            len.is_multiple_of(DATA_UNIT),
            "XTS buffers hold whole {DATA_UNIT}-byte data units (got {len} bytes)"
        );
    }

    /// Encrypts one data unit in place; `unit_index` is the IEEE 1619 data unit sequence number.
    pub fn encrypt_unit(&self, unit_index: u128, unit: &mut [u8]) {
        Self::check_len(unit.len());
        self.crypt::<false>(unit_index, None, unit, unit.len());
    }

    pub fn decrypt_unit(&self, unit_index: u128, unit: &mut [u8]) {
        Self::check_len(unit.len());
        self.crypt::<true>(unit_index, None, unit, unit.len());
    }

    /// Encrypts consecutive 4 KiB data units in place, the first one numbered `first_unit`.
    pub fn encrypt_units(&self, first_unit: u128, buf: &mut [u8]) {
        Self::check_units(buf.len());
        self.crypt::<false>(first_unit, None, buf, DATA_UNIT);
    }

    pub fn decrypt_units(&self, first_unit: u128, buf: &mut [u8]) {
        Self::check_units(buf.len());
        self.crypt::<true>(first_unit, None, buf, DATA_UNIT);
    }

    /// As `encrypt_units`, reading the plaintext from `src` (as long as `dst`): one pass
    /// instead of a copy and then the cipher.
    pub fn encrypt_units_from(&self, first_unit: u128, src: &[u8], dst: &mut [u8]) {
        Self::check_units(dst.len());
        assert_eq!(
            src.len(),
            dst.len(),
            "source and destination differ in length"
        );
        self.crypt::<false>(first_unit, Some(src), dst, DATA_UNIT);
    }

    /// Encrypts (`DEC` false) or decrypts `src` (`None`: `buf` in place) into `buf`, a
    /// whole number of `unit_len`-byte units.
    fn crypt<const DEC: bool>(
        &self,
        first_unit: u128,
        src: Option<&[u8]>,
        buf: &mut [u8],
        unit_len: usize,
    ) {
        match &self.imp {
            Imp::Portable(p) => {
                if let Some(src) = src {
                    buf.copy_from_slice(src);
                }
                for (i, unit) in buf.chunks_exact_mut(unit_len).enumerate() {
                    p.crypt_unit::<DEC>(first_unit.wrapping_add(i as u128), unit);
                }
            }
            // Safe because this variant exists only on a CPU with the features the kernel
            // enables (checked in `with_backend`).
            #[cfg(target_arch = "x86_64")]
            Imp::AesNi(k) => unsafe { x86::aesni::<DEC>(k, first_unit, src, buf, unit_len) },
            // Safe because this variant exists only on a CPU with the features the kernel
            // enables (checked in `with_backend`).
            #[cfg(target_arch = "x86_64")]
            Imp::Vaes512(k) => unsafe { x86::vaes512::<DEC>(k, first_unit, src, buf, unit_len) },
        }
    }
}

//! Test support shared by unit and integration tests; not part of the API.

use std::path::Path;
use std::process::Command;

/// Deterministic pseudo-random bytes (splitmix64), so every random test has a seed.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed;
    (0..len)
        .map(|_| {
            s = s.wrapping_add(0x9e3779b97f4a7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
            (z ^ (z >> 31)) as u8
        })
        .collect()
}

/// A seeded xorshift, so model tests are reproducible.
pub struct Rng(pub u64);

impl Rng {
    #[allow(clippy::should_implement_trait)]
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Below `n` (0 for `n` of 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// Unwraps `wrapped` with the PEM private key at `key` using the openssl CLI
/// (RSA-OAEP, SHA-256 for OAEP and MGF1): an independent check of our wrapping.
pub fn openssl_oaep_unwrap(key: &Path, wrapped: &[u8], workdir: &Path) -> Vec<u8> {
    let input = workdir.join("wrapped.bin");
    std::fs::write(&input, wrapped).expect("write wrapped key");
    let out = Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(key)
        .arg("-in")
        .arg(&input)
        .args(["-pkeyopt", "rsa_padding_mode:oaep"])
        .args(["-pkeyopt", "rsa_oaep_md:sha256"])
        .args(["-pkeyopt", "rsa_mgf1_md:sha256"])
        .output()
        .expect("openssl is required");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// The host key unit tests seal their stores with: one per test process, in a
/// temporary directory, so no test reads or makes the host's own key.
pub fn unit_host_key() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("diskvault-unit-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    })
    .join("host.key")
}

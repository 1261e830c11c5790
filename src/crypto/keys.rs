use super::CryptoError;
use std::fmt;
use zeroize::Zeroizing;

/// Secret key material, zeroized on drop and never printed.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(Zeroizing::new(bytes))
    }

    /// Fresh key material from the OS CSPRNG.
    pub fn random(len: usize) -> Result<Self, CryptoError> {
        let mut v = Zeroizing::new(vec![0u8; len]);
        getrandom::fill(&mut v).map_err(|_| CryptoError::Rng)?;
        Ok(Secret(v))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes, redacted)", self.0.len())
    }
}

/// A random RFC 4122 version-4 uuid (store ids, Azure's `vmId`).
pub fn random_uuid() -> Result<String, CryptoError> {
    let mut b = random_bytes(16)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = super::wrap::hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Public random bytes (nonces, ids).
pub fn random_bytes(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).map_err(|_| CryptoError::Rng)?;
    Ok(v)
}

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

/// Public random bytes (nonces, ids).
pub fn random_bytes(len: usize) -> Result<Vec<u8>, CryptoError> {
    let mut v = vec![0u8; len];
    getrandom::fill(&mut v).map_err(|_| CryptoError::Rng)?;
    Ok(v)
}

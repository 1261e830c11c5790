use thiserror::Error;

#[derive(Debug, Error)]
pub enum CryptoError {
    #[error("unknown cipher '{0}'; use aes-256-xts or aes-256-ctr")]
    UnknownCipher(String),
    #[error("key material has the wrong length for this cipher")]
    BadKeyLength,
    #[error("the operating system random number generator failed")]
    Rng,
    #[error("RSA key generation failed")]
    KeyGen,
    #[error("wrapped key does not unwrap with this RSA key (wrong key or tampered wrapped key)")]
    Unwrap,
    #[error("key wrapping failed: {0}")]
    Wrap(String),
    #[error("RSA key is not valid PEM (PKCS#8 or PKCS#1): {0}")]
    KeyParse(String),
    #[error("sealing failed")]
    Seal,
    #[error(
        "sealed data does not open with this key (wrong key, or the file was changed or moved)"
    )]
    Unseal,
    #[error("RSA key of {0} bits is not allowed; use 2048, 3072 or 4096")]
    KeySize(usize),
}

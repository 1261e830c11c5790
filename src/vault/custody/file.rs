//! Private key files: `NAME.key`, sealed under the store's sealing key, or (in a
//! store from before sealing) a clear `NAME.pem`. A loaded key's public half is known
//! at once; its private half is unsealed on first use, so commands that only list
//! never need the KEK.

use super::{Custody, B64};
use crate::crypto::seal;
use crate::crypto::wrap::{RsaKey, RsaPublic};
use crate::durable;
use crate::vault::VaultError;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use zeroize::Zeroizing;

/// Extension of a sealed private key file.
pub const SEALED_EXT: &str = "key";
/// Extension of a clear private key file (stores from before sealing).
pub const CLEAR_EXT: &str = "pem";
const FORMAT: &str = "diskvault-sealed-key";

/// What a private key is for; part of what its seal binds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRole {
    Platform,
    VaultKey,
}

impl KeyRole {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyRole::Platform => "platform",
            KeyRole::VaultKey => "vault-key",
        }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SealedFile {
    format: String,
    version: u32,
    role: String,
    id: String,
    /// Base64 DER SubjectPublicKeyInfo (also bound into the seal's associated data).
    public_key: String,
    /// Base64 of `nonce || AES-256-GCM(PKCS#8 DER) || tag`.
    sealed: String,
}

struct Sealed {
    custody: Arc<Custody>,
    role: KeyRole,
    id: String,
    blob: Vec<u8>,
    path: PathBuf,
}

/// A private key as the vault holds it: its public half, and its private half on
/// demand.
pub struct HeldKey {
    public: RsaPublic,
    private: OnceLock<Arc<RsaKey>>,
    sealed: Option<Sealed>,
    /// A key in a PKCS#11 token: its CKA_ID there. Its private half never leaves.
    token: Option<(Arc<super::hsm::Hsm>, Vec<u8>)>,
    /// The public half was checked against the private one (unsealed, or in the
    /// token): only then does it wrap, so a public key swapped into a file can't
    /// receive DEKs.
    verified: OnceLock<()>,
}

impl HeldKey {
    /// A key in hand (just made or imported).
    pub fn ready(key: RsaKey) -> HeldKey {
        let public = key.public();
        let private = OnceLock::new();
        let _ = private.set(Arc::new(key));
        let verified = OnceLock::new();
        let _ = verified.set(());
        HeldKey {
            public,
            private,
            sealed: None,
            token: None,
            verified,
        }
    }

    /// A key held in a token under `id`.
    pub fn in_token(public: RsaPublic, hsm: Arc<super::hsm::Hsm>, id: Vec<u8>) -> HeldKey {
        HeldKey {
            public,
            private: OnceLock::new(),
            sealed: None,
            token: Some((hsm, id)),
            verified: OnceLock::new(),
        }
    }

    /// The token and id of a key held in a token.
    pub fn token(&self) -> Option<(&Arc<super::hsm::Hsm>, &[u8])> {
        self.token.as_ref().map(|(h, id)| (h, id.as_slice()))
    }

    /// Whether it could unwrap now: its token answers, or its KEK is at hand (no
    /// RSA operation).
    pub fn check(&self) -> Result<(), VaultError> {
        if let Some((hsm, _)) = &self.token {
            return hsm.check();
        }
        match (&self.sealed, self.private.get()) {
            (Some(s), None) => s.custody.sealing_key().map(drop),
            _ => Ok(()),
        }
    }

    /// Wraps a DEK with the public half, once it is known to belong to the private
    /// half (a sealed key is unsealed for that, a token key's public key is read from
    /// the token).
    pub fn wrap(&self, dek: &crate::crypto::Secret) -> Result<Vec<u8>, VaultError> {
        if self.verified.get().is_none() {
            match &self.token {
                Some((hsm, id)) => {
                    if hsm.public(id)? != self.public {
                        return Err(VaultError::HsmKeyMissing(format!(
                            "{} (the token's public key is not the one in the vault: a changed .pub file?)",
                            super::hsm::hex_id(id)
                        )));
                    }
                }
                None => {
                    self.private()?;
                }
            }
            let _ = self.verified.set(());
        }
        Ok(self.public.wrap(dek)?)
    }

    /// Unwraps a DEK: in the token for a token key, else with the private key
    /// (unsealed on its first use).
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<crate::crypto::Secret, VaultError> {
        if let Some((hsm, id)) = &self.token {
            return hsm.unwrap(id, self.public.wrapped_len(), wrapped);
        }
        Ok(self.private()?.unwrap(wrapped)?)
    }

    pub fn public(&self) -> &RsaPublic {
        &self.public
    }

    /// The private key, unsealed on first use.
    pub fn private(&self) -> Result<Arc<RsaKey>, VaultError> {
        if let Some(k) = self.private.get() {
            return Ok(k.clone());
        }
        if self.token.is_some() {
            return Err(VaultError::InvalidArgument(
                "the private key is in the token and never leaves it".into(),
            ));
        }
        let s = self
            .sealed
            .as_ref()
            .expect("a held key is ready, sealed or in a token");
        let ksk = s.custody.sealing_key()?;
        let bad = |reason: &str| VaultError::SealedKeyBad {
            path: s.path.display().to_string(),
            reason: reason.to_string(),
        };
        let der = seal::open(
            ksk,
            &s.custody.file_aad(s.role, &s.id, &self.public.der()),
            &s.blob,
        )
        .map_err(|_| bad("it does not open with this store's sealing key: changed, or moved from another key or store"))?;
        let key = RsaKey::from_pkcs8_der(der.expose()).map_err(|_| bad("it holds no RSA key"))?;
        if key.public() != self.public {
            return Err(bad("its private key does not match its public key"));
        }
        Ok(self.private.get_or_init(|| Arc::new(key)).clone())
    }
}

impl Custody {
    /// The two names a private key may have: sealed, then clear.
    pub fn key_paths(dir: &Path, stem: &str) -> [PathBuf; 2] {
        [
            dir.join(format!("{stem}.{SEALED_EXT}")),
            dir.join(format!("{stem}.{CLEAR_EXT}")),
        ]
    }

    /// The bytes of a sealed key file for `key`.
    pub fn seal_key(&self, role: KeyRole, id: &str, key: &RsaKey) -> Result<Vec<u8>, VaultError> {
        let ksk = self.sealing_key()?;
        let spki = key.public().der();
        let der = key.to_pkcs8_der()?;
        let blob = seal::seal(ksk, &self.file_aad(role, id, &spki), der.expose())?;
        let f = SealedFile {
            format: FORMAT.into(),
            version: 1,
            role: role.as_str().into(),
            id: id.into(),
            public_key: B64.encode(&spki),
            sealed: B64.encode(blob),
        };
        let mut b = serde_json::to_vec_pretty(&f).expect("serializes");
        b.push(b'\n');
        Ok(b)
    }

    /// Saves a private key: `dir/stem.key` sealed, or `dir/stem.pem` in a store that
    /// is not sealed. Returns the path written.
    pub fn save_key(
        &self,
        dir: &Path,
        stem: &str,
        role: KeyRole,
        id: &str,
        key: &RsaKey,
    ) -> Result<PathBuf, VaultError> {
        let [sealed, clear] = Self::key_paths(dir, stem);
        if self.is_sealed() {
            let b = self.seal_key(role, id, key)?;
            durable::write_atomic(&sealed, &b, 0o600)?;
            Ok(sealed)
        } else {
            let pem = key.to_pkcs8_pem()?;
            durable::write_atomic(&clear, pem.as_bytes(), 0o600)?;
            Ok(clear)
        }
    }

    /// Loads the key `stem` in `dir`: the sealed file if there is one, else the clear
    /// one. Nothing is unsealed yet. The error names the file and what is wrong.
    pub fn load_key(
        self: &Arc<Self>,
        dir: &Path,
        stem: &str,
        role: KeyRole,
        id: &str,
    ) -> Result<HeldKey, LoadError> {
        let [sealed, clear] = Self::key_paths(dir, stem);
        match std::fs::read(&sealed) {
            Ok(b) => return self.parse_sealed(&sealed, &b, role, id),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(LoadError::Bad(format!("{}: {e}", sealed.display()))),
        }
        let pem = match std::fs::read_to_string(&clear) {
            Ok(s) => Zeroizing::new(s),
            Err(e) if e.kind() == ErrorKind::NotFound => return Err(LoadError::Missing(sealed)),
            Err(e) => return Err(LoadError::Bad(format!("{}: {e}", clear.display()))),
        };
        let key = RsaKey::from_pem(&pem)
            .map_err(|e| LoadError::Bad(format!("{}: {e}", clear.display())))?;
        Ok(HeldKey::ready(key))
    }

    fn parse_sealed(
        self: &Arc<Self>,
        path: &Path,
        b: &[u8],
        role: KeyRole,
        id: &str,
    ) -> Result<HeldKey, LoadError> {
        let bad = |why: String| LoadError::Bad(format!("{}: {why}", path.display()));
        if !self.is_sealed() {
            return Err(bad(
                "a sealed key in a store with no keyProtection in its header (diskvault.json was replaced?)".into(),
            ));
        }
        let f: SealedFile = serde_json::from_slice(b).map_err(|e| bad(e.to_string()))?;
        if f.format != FORMAT || f.version != 1 {
            return Err(bad(format!(
                "format '{}' version {} is not known",
                f.format, f.version
            )));
        }
        if f.role != role.as_str() || f.id != id {
            return Err(bad(format!(
                "it is sealed as {} '{}', not as {} '{id}' (moved from elsewhere?)",
                f.role,
                f.id,
                role.as_str()
            )));
        }
        let spki = B64
            .decode(&f.public_key)
            .map_err(|e| bad(format!("publicKey: {e}")))?;
        let public = RsaPublic::from_der(&spki).map_err(|e| bad(format!("publicKey: {e}")))?;
        let blob = B64
            .decode(&f.sealed)
            .map_err(|e| bad(format!("sealed: {e}")))?;
        Ok(HeldKey {
            public,
            private: OnceLock::new(),
            sealed: Some(Sealed {
                custody: self.clone(),
                role,
                id: id.to_string(),
                blob,
                path: path.to_path_buf(),
            }),
            token: None,
            verified: OnceLock::new(),
        })
    }
}

/// Why a private key file could not be loaded.
#[derive(Debug)]
pub enum LoadError {
    /// Neither file exists (the sealed name is given).
    Missing(PathBuf),
    /// A file exists but is unusable: the message names it and says how.
    Bad(String),
}

impl std::fmt::Display for LoadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LoadError::Missing(p) => write!(f, "{} is missing", p.display()),
            LoadError::Bad(m) => f.write_str(m),
        }
    }
}

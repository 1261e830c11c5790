//! Key versions held in the vault's PKCS#11 token: making their material outside the
//! vault lock, destroying what a failed create or rotation left in the token, and
//! connecting the vault to its token.

use super::persist::write_json;
use super::VAULT_FILE;
use super::{KeyVault, State, VaultProps};
use crate::crypto::random_bytes;
use crate::crypto::wrap::{hex, RsaKey, RsaPublic};
use crate::vault::audit::Caller;
use crate::vault::custody::hsm::{Hsm, HsmConfig};
use crate::vault::VaultError;
use std::sync::Arc;

/// The material of a new key version.
pub(super) enum NewKey {
    /// A key in hand, to be sealed to a file.
    Software(RsaKey),
    /// A key pair made in (or imported into) the token, under this version's id.
    Token { public: RsaPublic, version: String },
}

impl NewKey {
    /// The version of a key made in the token (to destroy it if it goes unused).
    pub(super) fn token_version(&self) -> Option<String> {
        match self {
            NewKey::Software(_) => None,
            NewKey::Token { version, .. } => Some(version.clone()),
        }
    }
}

/// A token key's CKA_ID: its version's 16 bytes.
pub(super) fn token_id(version: &str) -> Vec<u8> {
    crate::crypto::wrap::unhex(version).unwrap_or_else(|| version.as_bytes().to_vec())
}

/// A token key's CKA_LABEL: `diskvault:VAULT/KEY/VERSION`.
pub(super) fn token_label(vault: &str, l: &str, version: &str) -> String {
    format!("diskvault:{vault}/{l}/{version}")
}

impl KeyVault {
    /// The vault's token, or why there is none.
    pub(super) fn token(st: &State) -> Result<std::sync::Arc<Hsm>, VaultError> {
        st.hsm.clone().ok_or_else(|| {
            VaultError::InvalidArgument(
                "the vault has no HSM; connect one with 'diskvault vault set --hsm-module PATH --hsm-token LABEL --hsm-pin-file FILE'".into(),
            )
        })
    }

    /// Makes the material of a new version, outside the vault lock: an RSA key, or
    /// a key pair generated in the token.
    pub(super) fn make_key(
        &self,
        name: &str,
        bits: usize,
        hsm: bool,
    ) -> Result<NewKey, VaultError> {
        if !hsm {
            return Self::generate_key(bits).map(NewKey::Software);
        }
        let (token, vault) = {
            let st = self.state.lock();
            (Self::token(&st)?, st.props.name.clone())
        };
        let version = hex(&random_bytes(16)?);
        let label = token_label(&vault, &name.to_ascii_lowercase(), &version);
        let public = token.generate(bits, &label, &token_id(&version))?;
        Ok(NewKey::Token { public, version })
    }

    /// Destroys a token key made for a version that did not come to be.
    pub(super) fn discard(&self, version: Option<String>) {
        let Some(version) = version else { return };
        let token = Self::token(&self.state.lock());
        if let Ok(t) = token {
            if let Err(e) = t.destroy(&token_id(&version)) {
                log::warn!("cannot destroy the unused token key {version}: {e}");
            }
        }
    }

    /// Connects the vault to a PKCS#11 token (`vault set --hsm-module ...`). The
    /// token must answer (module, label, PIN) before anything is saved.
    pub fn set_hsm(&self, caller: &Caller, cfg: HsmConfig) -> Result<VaultProps, VaultError> {
        let hsm = Arc::new(Hsm::new(cfg.clone()));
        hsm.check()?;
        self.audited(
            "VaultPatch",
            caller,
            |st| format!("https://{}{}/", st.props.name, crate::vault::kid::VAULT_DNS_SUFFIX),
            |st| {
                let in_token = st
                    .keys
                    .values()
                    .chain(st.deleted.values().map(|(e, _)| e))
                    .any(|e| e.rec.versions.iter().any(|v| v.hsm));
if in_token && st.props.hsm.as_ref().is_some_and(|h| h.token != cfg.token) {
                    return Err(VaultError::InvalidArgument(
                        "keys are held in the current token; another token would not have them (the module path and the PIN file can change, not the token)".into(),
                    ));
                }
                let mut p = st.props.clone();
                p.hsm = Some(cfg);
                write_json(&self.dir.join(VAULT_FILE), &p)?;
                st.props = p.clone();
                st.hsm = Some(hsm);
                Ok(p)
            },
        )
    }

    /// The token, if the vault has one (for `vault show`).
    pub fn hsm(&self) -> Option<Arc<Hsm>> {
        self.state.lock().hsm.clone()
    }
}

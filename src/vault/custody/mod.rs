//! Key custody: private keys are stored only sealed, under a key-encryption key (KEK)
//! that is not in the store.
//!
//! Two levels, as LUKS keeps its volume key in keyslots: the store has one random
//! 256-bit *sealing key*, kept in the store header sealed under the KEK
//! (`keyProtection.sealingKey`); every private key file (the platform key, each vault
//! key version) is sealed under the sealing key. Changing the KEK source (`vault
//! reseal`) rewrites one header field. docs/format.md gives the exact layout.
//!
//! A store from before sealing has no `keyProtection`: its keys are clear PEM files
//! (`Custody::clear`), until `vault seal`.

mod file;
pub mod hsm;
pub mod kek;
pub mod tpm2;

pub use file::{HeldKey, KeyRole, LoadError, CLEAR_EXT, SEALED_EXT};
pub use kek::{Argon2Params, Prompt, SealKind, UnsealOptions};
pub use tpm2::Tpm2Seal;

use super::VaultError;
use crate::crypto::{seal, Secret};
use base64::Engine;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The store header's `keyProtection`: how the sealing key is sealed. Never a secret.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct KeyProtection {
    pub seal: SealKind,
    /// `kek::fingerprint` of the KEK.
    pub kek_fingerprint: String,
    /// A host key chosen at init (`--host-key`); relative paths are from the store.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub argon2: Option<Argon2Params>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm2: Option<Tpm2Seal>,
    /// Base64 of the sealing key sealed under the KEK (`nonce || ciphertext || tag`).
    pub sealing_key: String,
}

/// Associated data of the sealing key: what it is, which store, which seal.
fn sealing_key_aad(store_id: &str, kind: SealKind) -> Vec<u8> {
    format!("diskvault-sealing-key/1\0{store_id}\0{kind}").into_bytes()
}

/// The KEK and its source, as a setup for sealing (init, seal, reseal).
pub struct SealSetup {
    pub kind: SealKind,
    /// `--host-key` at init: kept in the header.
    pub host_key: Option<PathBuf>,
    /// `--tpm-tcti` at init: kept in the header.
    pub tpm_tcti: Option<String>,
}

impl KeyProtection {
    /// Makes the KEK of `setup` (a new host key if there is none, a passphrase asked
    /// twice, a TPM seal) and seals `sealing_key` under it. `root` is the store's
    /// directory (absolute), against which a host key path is recorded.
    pub fn create(
        root: &Path,
        store_id: &str,
        setup: &SealSetup,
        opts: &UnsealOptions,
        sealing_key: &Secret,
    ) -> Result<KeyProtection, VaultError> {
        let mut p = KeyProtection {
            seal: setup.kind,
            kek_fingerprint: String::new(),
            host_key: None,
            argon2: None,
            tpm2: None,
            sealing_key: String::new(),
        };
        let kek = match setup.kind {
            SealKind::Host => {
                let path = match (&setup.host_key, &opts.host_key) {
                    (Some(h), _) => {
                        let abs = std::path::absolute(h)?;
                        p.host_key = Some(recorded_path(root, &abs));
                        abs
                    }
                    (None, Some(h)) => h.clone(),
                    (None, None) => kek::default_host_key()?,
                };
                kek::read_or_create_host_key(&path)?
            }
            SealKind::Passphrase => {
                let params = Argon2Params::new()?;
                let pass = kek::passphrase(opts, &format!("the store {}", root.display()), true)?;
                let k = params.derive(&pass)?;
                p.argon2 = Some(params);
                k
            }
            SealKind::Tpm2 => {
                let tcti = setup
                    .tpm_tcti
                    .clone()
                    .or_else(|| opts.tpm_tcti.clone())
                    .unwrap_or_else(|| kek::DEFAULT_TCTI.to_string());
                let k = Secret::random(kek::KEK_LEN)?;
                let mut s = tpm2::tpm2_seal(&tcti, &k)?;
                s.tcti = setup.tpm_tcti.clone();
                // Proves the TPM gives it back before anything depends on it.
                let back = tpm2::tpm2_unseal(&tcti, &s)?;
                if back.expose() != k.expose() {
                    return Err(VaultError::KekUnavailable(format!(
                        "the TPM at '{tcti}' did not give back the key it sealed"
                    )));
                }
                p.tpm2 = Some(s);
                k
            }
        };
        p.kek_fingerprint = kek::fingerprint(&kek);
        p.sealing_key = B64.encode(seal::seal(
            &kek,
            &sealing_key_aad(store_id, setup.kind),
            sealing_key.expose(),
        )?);
        Ok(p)
    }

    /// What `vault show` reports as `properties.keyProtection`.
    pub fn summary(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "seal": self.seal.to_string(),
            "kekFingerprint": self.kek_fingerprint,
        });
        if let Some(h) = &self.host_key {
            v["hostKey"] = h.clone().into();
        }
        if let Some(a) = &self.argon2 {
            v["kdf"] = serde_json::json!({
                "algorithm": "argon2id",
                "memoryKib": a.memory_kib,
                "iterations": a.iterations,
                "parallelism": a.parallelism,
            });
        }
        if let Some(t) = &self.tpm2 {
            v["tpmTcti"] = t
                .tcti
                .clone()
                .unwrap_or_else(|| kek::DEFAULT_TCTI.into())
                .into();
        }
        v
    }
}

/// `abs` relative to the store when both lie under the store's parent, so a store
/// moved together with its host key still finds it; otherwise absolute.
fn recorded_path(root: &Path, abs: &Path) -> String {
    if let Some(parent) = root.parent() {
        if let Ok(rest) = abs.strip_prefix(parent) {
            return Path::new("..").join(rest).display().to_string();
        }
    }
    abs.display().to_string()
}

/// One store's key custody: its id, its protection, and the sealing key once unsealed.
pub struct Custody {
    root: PathBuf,
    store_id: String,
    protection: Option<KeyProtection>,
    opts: UnsealOptions,
    sealing_key: OnceLock<Secret>,
    /// One unseal at a time, so a passphrase is asked once.
    unsealing: Mutex<()>,
    /// Why the KEK could not be had: not tried again by this process (a wrong
    /// passphrase costs an Argon2id run per try, and the answer won't change).
    failed: OnceLock<String>,
}

impl Custody {
    /// A store whose private keys are clear PEM files (made before sealing).
    pub fn clear(root: &Path, store_id: Option<&str>) -> Custody {
        Custody {
            root: root.to_path_buf(),
            store_id: store_id.unwrap_or_default().to_string(),
            protection: None,
            opts: UnsealOptions::default(),
            sealing_key: OnceLock::new(),
            unsealing: Mutex::new(()),
            failed: OnceLock::new(),
        }
    }

    /// A sealed store; the KEK is fetched (and the sealing key unsealed) on first use.
    pub fn sealed(
        root: &Path,
        store_id: &str,
        protection: KeyProtection,
        opts: UnsealOptions,
    ) -> Custody {
        Custody {
            root: root.to_path_buf(),
            store_id: store_id.to_string(),
            protection: Some(protection),
            opts,
            sealing_key: OnceLock::new(),
            unsealing: Mutex::new(()),
            failed: OnceLock::new(),
        }
    }

    /// A sealed store whose sealing key is known already (init, seal).
    pub fn with_sealing_key(
        root: &Path,
        store_id: &str,
        protection: KeyProtection,
        sealing_key: Secret,
    ) -> Custody {
        let c = Custody::sealed(root, store_id, protection, UnsealOptions::default());
        let _ = c.sealing_key.set(sealing_key);
        c
    }

    pub fn is_sealed(&self) -> bool {
        self.protection.is_some()
    }

    pub fn protection(&self) -> Option<&KeyProtection> {
        self.protection.as_ref()
    }

    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    pub fn options(&self) -> &UnsealOptions {
        &self.opts
    }

    /// Where the host key of a host-sealed store is looked for: the flag or
    /// environment, else the header's path (relative to the store), else the default.
    pub fn host_key_path(&self) -> Result<PathBuf, VaultError> {
        if let Some(h) = &self.opts.host_key {
            return Ok(h.clone());
        }
        match self.protection.as_ref().and_then(|p| p.host_key.as_ref()) {
            Some(h) => Ok(self.root.join(h)),
            None => kek::default_host_key(),
        }
    }

    /// The KEK of this store, from its source. Checked against the header's
    /// fingerprint, so a wrong one is named as such.
    pub fn kek(&self) -> Result<Secret, VaultError> {
        let p = self.protection.as_ref().ok_or_else(|| {
            VaultError::InvalidArgument(
                "the store is not sealed; run 'diskvault vault seal'".into(),
            )
        })?;
        let (kek, wrong) = match p.seal {
            SealKind::Host => {
                let path = self.host_key_path()?;
                (
                    kek::read_host_key(&path)?,
                    format!(
                        "host key {} is not the one this store was sealed with (fingerprint {} expected); give the right one with --host-key PATH or {}=PATH",
                        path.display(),
                        p.kek_fingerprint,
                        kek::HOST_KEY_ENV
                    ),
                )
            }
            SealKind::Passphrase => {
                let a = p.argon2.as_ref().ok_or_else(|| {
                    VaultError::BadProtection("a passphrase seal without argon2 parameters".into())
                })?;
                let pass = kek::passphrase(
                    &self.opts,
                    &format!("the store {}", self.root.display()),
                    false,
                )?;
                (
                    a.derive(&pass)?,
                    format!(
                        "wrong passphrase for the store {}; nothing was changed",
                        self.root.display()
                    ),
                )
            }
            SealKind::Tpm2 => {
                let t = p.tpm2.as_ref().ok_or_else(|| {
                    VaultError::BadProtection("a tpm2 seal without its sealed object".into())
                })?;
                let tcti = self
                    .opts
                    .tpm_tcti
                    .clone()
                    .or_else(|| t.tcti.clone())
                    .unwrap_or_else(|| kek::DEFAULT_TCTI.to_string());
                (
                    tpm2::tpm2_unseal(&tcti, t)?,
                    format!("the TPM at '{tcti}' gave back a key that is not this store's"),
                )
            }
        };
        if kek::fingerprint(&kek) != p.kek_fingerprint {
            return Err(VaultError::KekUnavailable(wrong));
        }
        Ok(kek)
    }

    /// The sealing key, unsealed on first use.
    pub fn sealing_key(&self) -> Result<&Secret, VaultError> {
        if let Some(k) = self.sealing_key.get() {
            return Ok(k);
        }
        let _one = self.unsealing.lock();
        if let Some(k) = self.sealing_key.get() {
            return Ok(k);
        }
        let p = self.protection.as_ref().ok_or_else(|| {
            VaultError::InvalidArgument(
                "the store is not sealed; run 'diskvault vault seal'".into(),
            )
        })?;
        if let Some(why) = self.failed.get() {
            return Err(VaultError::KekUnavailable(why.clone()));
        }
        let kek = match self.kek() {
            Ok(k) => k,
            Err(VaultError::KekUnavailable(why)) => {
                let _ = self.failed.set(why.clone());
                return Err(VaultError::KekUnavailable(why));
            }
            Err(e) => return Err(e),
        };
        let sealed = B64
            .decode(&p.sealing_key)
            .map_err(|e| VaultError::BadProtection(format!("sealingKey: {e}")))?;
        let k = seal::open(&kek, &sealing_key_aad(&self.store_id, p.seal), &sealed).map_err(|_| {
            VaultError::BadProtection(
                "the sealed sealing key does not open with the right KEK (the header was changed or belongs to another store)".into(),
            )
        })?;
        if k.len() != seal::SEAL_KEY_LEN {
            return Err(VaultError::BadProtection(
                "the sealing key has the wrong length".into(),
            ));
        }
        Ok(self.sealing_key.get_or_init(|| k))
    }

    /// The associated data of a private key file.
    fn file_aad(&self, role: KeyRole, id: &str, spki: &[u8]) -> Vec<u8> {
        let mut a = format!(
            "diskvault-sealed-key/1\0{}\0{}\0{id}\0",
            self.store_id,
            role.as_str()
        )
        .into_bytes();
        a.extend_from_slice(spki);
        a
    }
}

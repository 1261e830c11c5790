//! The store's key custody: the header's `keyProtection`, sealing a store whose keys
//! are clear (`vault seal`), changing the KEK source (`vault reseal`), and the check
//! a mount makes that the KEK is at hand.

use super::{Header, Result, Store, StoreError, HEADER_FILE, KEYS_DIR, STORE_VERSION};
use crate::crypto::wrap::RsaKey;
use crate::crypto::{random_uuid, seal::SEAL_KEY_LEN, Secret};
use crate::durable;
use crate::vault::custody::{Custody, KeyProtection, KeyRole, SealSetup, UnsealOptions};
use crate::vault::platform::PLATFORM_KEY_STEM;
use crate::vault::VaultError;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What `vault seal` did.
#[derive(Debug)]
pub struct SealReport {
    pub protection: KeyProtection,
    /// Private key files sealed now (the rest were sealed already).
    pub sealed: usize,
}

pub(super) fn write_header(root: &Path, h: &Header) -> Result<()> {
    let mut bytes = serde_json::to_vec_pretty(h).expect("header serializes");
    bytes.push(b'\n');
    let path = root.join(HEADER_FILE);
    durable::write_atomic(&path, &bytes, 0o600)
        .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))
}

/// Seals one clear PEM file as `dir/stem.key`, then overwrites and removes the PEM.
/// A crash between the two leaves both; the sealed one is used, and the next `vault
/// seal` seals again and removes the PEM.
fn seal_file(
    custody: &Arc<Custody>,
    dir: &Path,
    stem: &str,
    role: KeyRole,
    id: &str,
) -> Result<()> {
    let [sealed, clear] = Custody::key_paths(dir, stem);
    // Sealed already (a seal cut short after it, maybe while overwriting the clear
    // copy): if the sealed file opens, the clear one only has to go.
    if sealed.exists() {
        if let Ok(k) = custody.load_key(dir, stem, role, id) {
            if k.private().is_ok() {
                return remove_clear(&clear, dir);
            }
        }
    }
    let pem = Zeroizing::new(
        std::fs::read_to_string(&clear)
            .map_err(|e| StoreError::io(format!("reading {}", clear.display()), e))?,
    );
    let key = RsaKey::from_pem(&pem).map_err(|e| {
        StoreError::Vault(VaultError::SealedKeyBad {
            path: clear.display().to_string(),
            reason: format!("{e}; nothing was sealed from it"),
        })
    })?;
    custody.save_key(dir, stem, role, id, &key)?;
    crate::fault::point("seal.sealed");
    remove_clear(&clear, dir)
}

/// Overwrites a clear key file with zeros, then removes it.
fn remove_clear(clear: &Path, dir: &Path) -> Result<()> {
    durable::shred(clear);
    crate::fault::point("seal.shredded");
    std::fs::remove_file(clear)
        .map_err(|e| StoreError::io(format!("removing {}", clear.display()), e))?;
    durable::sync_dir(dir).map_err(|e| StoreError::io(format!("syncing {}", dir.display()), e))?;
    crate::fault::point("seal.cleared");
    Ok(())
}

impl Store {
    /// Unseals the platform key now: a mount fails at once without its KEK, before
    /// anything is served.
    pub fn unseal(&self) -> Result<()> {
        let c = self.vault().custody();
        if c.is_sealed() {
            c.sealing_key()?;
        }
        self.platform.unseal()?;
        Ok(())
    }

    /// Private key files still in clear (a store from before sealing, or a seal cut
    /// short): counted by file, as a clear copy beside a sealed one counts too.
    pub fn clear_key_count(&self) -> usize {
        let platform = Custody::key_paths(&self.root.join(KEYS_DIR), PLATFORM_KEY_STEM)[1].exists();
        usize::from(platform) + self.vault().clear_key_files().len()
    }

    /// Seals every clear private key (the platform key, every vault key version) under
    /// a KEK from `setup`, in place. Crash-safe: the header's keyProtection is written
    /// first (keys still clear are read as before), then each key is sealed and its
    /// clear file overwritten and removed. Run again, it finishes what was left.
    pub fn seal_keys(&self, setup: &SealSetup, opts: &UnsealOptions) -> Result<SealReport> {
        let root = std::path::absolute(&self.root)
            .map_err(|e| StoreError::io(format!("resolving {}", self.root.display()), e))?;
        let mut h = Self::check_header(&self.root)?;
        let custody = match (&h.key_protection, &h.store_id) {
            (Some(p), Some(id)) => {
                if p.seal != setup.kind {
                    return Err(StoreError::Vault(VaultError::InvalidArgument(format!(
                        "the store is sealed with {} already; finish with 'diskvault vault seal --seal {}', or change the KEK with 'vault reseal'",
                        p.seal, p.seal
                    ))));
                }
                let c = Arc::new(Custody::sealed(&root, id, p.clone(), opts.clone()));
                c.sealing_key()?;
                c
            }
            _ => {
                let id = match &h.store_id {
                    Some(id) => id.clone(),
                    None => random_uuid()?,
                };
                let ksk = Secret::random(SEAL_KEY_LEN)?;
                let p = KeyProtection::create(&root, &id, setup, opts, &ksk)?;
                h.version = STORE_VERSION;
                h.store_id = Some(id.clone());
                h.key_protection = Some(p.clone());
                write_header(&self.root, &h)?;
                crate::fault::point("seal.header");
                Arc::new(Custody::with_sealing_key(&root, &id, p, ksk))
            }
        };
        let mut sealed = 0;
        let keys = self.root.join(KEYS_DIR);
        if Custody::key_paths(&keys, PLATFORM_KEY_STEM)[1].exists() {
            seal_file(
                &custody,
                &keys,
                PLATFORM_KEY_STEM,
                KeyRole::Platform,
                PLATFORM_KEY_STEM,
            )?;
            sealed += 1;
        }
        for (dir, stem, id) in self.vault().clear_key_files() {
            let staging = dir
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if staging {
                // An interrupted create's leftovers: no key uses them.
                let [_, clear] = Custody::key_paths(&dir, &stem);
                durable::shred(&clear);
                let _ = std::fs::remove_file(&clear);
                continue;
            }
            seal_file(&custody, &dir, &stem, KeyRole::VaultKey, &id)?;
            sealed += 1;
        }
        Ok(SealReport {
            protection: custody.protection().cloned().expect("sealed"),
            sealed,
        })
    }

    /// Seals the store's sealing key under a new KEK (`setup`, reached through
    /// `new_opts`); the old KEK (this store's unseal options) opens it first. One
    /// atomic header write.
    pub fn reseal(&self, setup: &SealSetup, new_opts: &UnsealOptions) -> Result<KeyProtection> {
        let mut h = Self::check_header(&self.root)?;
        let (Some(_), Some(id)) = (&h.key_protection, h.store_id.clone()) else {
            return Err(StoreError::Vault(VaultError::InvalidArgument(
                "the store's keys are not sealed yet; seal them with 'diskvault vault seal'".into(),
            )));
        };
        if self.clear_key_count() > 0 {
            return Err(StoreError::Vault(VaultError::InvalidArgument(
                "some keys are still in clear (an interrupted seal); finish with 'diskvault vault seal' first".into(),
            )));
        }
        let ksk = self.vault().custody().sealing_key()?.clone();
        let root = std::path::absolute(&self.root)
            .map_err(|e| StoreError::io(format!("resolving {}", self.root.display()), e))?;
        let p = KeyProtection::create(&root, &id, setup, new_opts, &ksk)?;
        h.key_protection = Some(p.clone());
        write_header(&self.root, &h)?;
        Ok(p)
    }
}

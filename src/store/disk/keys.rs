//! A disk's key state: unwrapping its DEKs (checked against their keyCheck), why it
//! can't be served (`unavailable_reason`), failing closed while key state is not
//! enforced, and revocation and restore.

use super::*;

/// The key material a verdict applies to: the layers and a rekey's new layers.
pub(super) type LayerSet = (Vec<Layer>, Option<Vec<Layer>>);

pub(super) fn layer_set(m: &DiskMeta) -> LayerSet {
    (m.layers.clone(), m.rekey.as_ref().map(|r| r.layers.clone()))
}

/// Whether an unwrap failure lies in the disk's own metadata (tampered or mixed-up
/// wrapped key) rather than in the key's state in the vault, which `key_access`
/// checks live and reports as a revocation.
pub(super) fn is_key_fault(e: &StoreError) -> bool {
    use crate::vault::VaultError as V;
    matches!(
        e,
        StoreError::Crypto(_)
            | StoreError::InvalidArgument(_)
            | StoreError::Vault(
                V::Crypto(_) | V::UnknownKey(_) | V::UnsupportedAlg(_) | V::InvalidKeyId { .. }
            )
    )
}

/// Whether an unwrap failed because the vault can't work (its audit log can't be
/// written), rather than because of the key's state.
pub(super) fn is_vault_blocked(e: &StoreError) -> bool {
    use crate::vault::VaultError as V;
    matches!(e, StoreError::Vault(V::AuditUnavailable { .. } | V::Io(_)))
}

impl Disk {
    pub(super) fn unavailable(&self, reason: impl Into<String>) -> StoreError {
        StoreError::Unavailable {
            disk: self.name(),
            reason: reason.into(),
        }
    }

    /// Records why the DEKs of `meta`'s layers can't be used (`None`: they can).
    pub(super) fn set_key_verdict(&self, meta: &DiskMeta, fault: Option<String>) {
        *self.key_verdict.lock() = Some((layer_set(meta), fault));
    }

    /// Unwraps and checks the DEKs of `layers` (the disk's, or a rekey's new ones).
    /// A fault in the metadata itself is recorded for `keyState`.
    pub(super) fn unlock_layers(
        &self,
        meta: &DiskMeta,
        layers: &[Layer],
        dek_id: &str,
    ) -> Result<Vec<DataCipher>> {
        let fault = |reason: String| {
            self.set_key_verdict(meta, Some(reason.clone()));
            self.unavailable(reason)
        };
        let mut out = Vec::with_capacity(layers.len());
        for (i, layer) in layers.iter().enumerate() {
            let p = layer.parse().map_err(fault)?;
            let dek = self.keys.unwrap(&meta.encryption, &p).map_err(|e| {
                let why = format!("cannot unwrap its data key: {e}");
                if is_key_fault(&e) {
                    fault(why)
                } else {
                    if is_vault_blocked(&e) {
                        *self.vault_blocked.lock() = Some(why.clone());
                    }
                    self.unavailable(why)
                }
            })?;
            if key_check(&dek, dek_id, i, p.cipher, &p.nonce) != layer.key_check {
                return Err(fault(KEY_CHECK_MISMATCH.into()));
            }
            out.push(DataCipher::new(p.cipher, &dek, &p.nonce)?);
        }
        Ok(out)
    }

    /// Why the disk can't be served for a reason of its own (its data file, its
    /// platform-key layers, a failed unlock), checked cheaply: the platform layers
    /// are unwrapped at most once per layer set; customer-key layers only by unlocks.
    pub fn unavailable_reason(&self) -> Option<String> {
        if self.corrupt.is_some() {
            return None;
        }
        if let Some(p) = self.data_problem() {
            return Some(p);
        }
        if let Some(why) = self.vault_blocked.lock().clone() {
            return Some(format!(
                "{why} (at the last open; it opens again once the vault can write its audit log)"
            ));
        }
        let meta = self.meta.lock().clone();
        let platform_key = self.keys.platform_key();
        let rekey_layers = meta.rekey.iter().flat_map(|r| r.layers.iter());
        for l in meta.layers.iter().chain(rekey_layers) {
            let Ok(key) = KeyId::parse(&l.kid) else {
                continue;
            };
            if LayerKind::of(&key) == LayerKind::Platform && Some(&key) != platform_key.as_ref() {
                return Some(format!(
                    "its platform-key layer is wrapped by {} but the store's platform key is {} (STORE/keys/platform.key was replaced); restore the original platform.key",
                    l.kid,
                    platform_key.as_ref().map_or("missing".into(), |k| k.to_string())
                ));
            }
        }
        let set = layer_set(&meta);
        let mut verdict = self.key_verdict.lock();
        if let Some((_, v)) = verdict.as_ref().filter(|(s, _)| *s == set) {
            return v.clone();
        }
        let mut fault = None;
        let ids = [meta.dek_id(), meta.rekey_dek_id()];
        for (layers, id) in std::iter::once(&set.0).chain(set.1.iter()).zip(ids) {
            fault = fault.or_else(|| self.check_platform_layers(&meta, layers, id));
        }
        *verdict = Some((set, fault.clone()));
        fault
    }

    /// Unwraps the platform-key layers among `layers` (no vault, no audit record) and
    /// compares their keyCheck.
    pub(super) fn check_platform_layers(
        &self,
        meta: &DiskMeta,
        layers: &[Layer],
        dek_id: &str,
    ) -> Option<String> {
        for (i, layer) in layers.iter().enumerate() {
            let p = match layer.parse() {
                Ok(p) => p,
                Err(r) => return Some(r),
            };
            if LayerKind::of(&p.key) != LayerKind::Platform {
                continue;
            }
            let dek = match self.keys.unwrap(&meta.encryption, &p) {
                Ok(d) => d,
                Err(e) => return Some(format!("cannot unwrap its data key: {e}")),
            };
            if key_check(&dek, dek_id, i, p.cipher, &p.nonce) != layer.key_check {
                return Some(KEY_CHECK_MISMATCH.into());
            }
        }
        None
    }

    /// Whether the backing files are there, regular files, and the writable one long
    /// enough.
    pub(super) fn data_problem(&self) -> Option<String> {
        // Sizes change with the file first when growing and last when shrinking;
        // these locks exclude both, so the comparison below is exact.
        let _r = self.resize.read();
        let _e = self.extend.lock();
        let files = self.data_files();
        let (top, lower) = files.split_last()?;
        for p in lower {
            match std::fs::symlink_metadata(p) {
                Ok(md) if md.is_file() => {}
                _ => {
                    return Some(format!(
                        "its delta file {} is missing or not a regular file; restore it from a backup of the store",
                        p.display()
                    ))
                }
            }
        }
        let path = top.clone();
        let md = match std::fs::symlink_metadata(&path) {
            Ok(md) => md,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Some(format!(
                    "its data file {} is missing; restore it from a backup or delete the disk",
                    path.display()
                ))
            }
            Err(e) => return Some(format!("cannot read its data file {}: {e}", path.display())),
        };
        if !md.is_file() {
            return Some(format!(
                "its data file {} is not a regular file; restore it from a backup or delete the disk",
                path.display()
            ));
        }
        let want = round_up(self.size());
        if md.len() < want && !self.kind.read_only() {
            return Some(format!(
                "its data file {} is shorter than the disk ({} of {want} bytes); restore it from a backup or delete the disk",
                path.display(),
                md.len()
            ));
        }
        None
    }

    /// Unwraps every layer's DEK and opens the backing file.
    pub(super) fn unlock(&self) -> Result<Unlocked> {
        if let Some(reason) = &self.corrupt {
            return Err(self.unavailable(reason.clone()));
        }
        let meta = self.meta.lock().clone();
        let layers = self.unlock_layers(&meta, &meta.layers, meta.dek_id())?;
        let next = match &meta.rekey {
            Some(rk) => Some(self.unlock_layers(&meta, &rk.layers, meta.rekey_dek_id())?),
            None => None,
        };
        self.set_key_verdict(&meta, None);
        *self.vault_blocked.lock() = None;
        let (file, layered) = self
            .open_data(&meta)
            .map_err(|(p, e)| self.unavailable(format!("cannot open {}: {e}", p.display())))?;
        Ok(Unlocked {
            file,
            layers: Arc::new(layers),
            next: next.map(Arc::new),
            layered,
        })
    }

    /// Opens the data files of `meta` and indexes its deltas. The error names the file.
    pub(super) fn open_data(
        &self,
        meta: &DiskMeta,
    ) -> std::result::Result<(File, Option<Layered>), (PathBuf, std::io::Error)> {
        let top = top_path(&self.root, &self.dir(), meta);
        let file = if self.kind.read_only() {
            open_ro(&top)
        } else {
            OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_CLOEXEC)
                .open(&top)
        }
        .map_err(|e| (top.clone(), e))?;
        let in_stack = |e| (self.root.join(super::super::delta::DELTAS_DIR), e);
        let layered = match (self.kind.read_only(), meta.stack.split_last()) {
            (true, Some(_)) => {
                Some(Layered::build(&self.root, &meta.stack, None).map_err(in_stack)?)
            }
            (false, Some((top_id, lower))) if !lower.is_empty() => Some(
                Layered::build(&self.root, lower, Some((top_id.as_str(), &file)))
                    .map_err(in_stack)?,
            ),
            _ => None,
        };
        Ok((file, layered))
    }

    /// Fails closed for a customer-key disk while revocations can't be enforced.
    pub(super) fn check_enforced(&self) -> Result<()> {
        if let Some(why) = self.health.down() {
            if self.meta.lock().encryption.kind.uses_customer_key() {
                return Err(StoreError::EnforcementDown(why));
            }
        }
        Ok(())
    }

    /// The unlocked state, unwrapping temporarily if no handle has the disk open.
    pub(super) fn unlocked(&self) -> Result<Arc<Unlocked>> {
        if let Some(r) = self.revoked.read().as_ref().filter(|r| !r.keep_open) {
            return Err(self.unavailable(r.reason.clone()));
        }
        self.check_enforced()?;
        if let Some(u) = self.unlocked.read().as_ref() {
            return Ok(u.clone());
        }
        Ok(Arc::new(self.unlock()?))
    }

    pub fn revocation(&self) -> Option<Revocation> {
        self.revoked.read().clone()
    }

    /// Revokes the disk. Unless `keep_open`, the keys are dropped (and zeroized) once
    /// requests already past the check have finished, and every later request fails.
    pub(in crate::store) fn revoke(&self, r: Revocation) {
        let _n = self.open_count.lock();
        let keep = r.keep_open;
        *self.revoked.write() = Some(r);
        if !keep {
            // Reads and writes hold `resize` shared for their whole run.
            let _quiesce = self.resize.write();
            *self.unlocked.write() = None;
        }
    }

    /// Lifts a revocation: open handles get their keys back (an audited unwrap).
    pub(in crate::store) fn restore(&self) -> Result<()> {
        let n = self.open_count.lock();
        if *n > 0 && self.unlocked.read().is_none() {
            let u = self.unlock()?;
            *self.unlocked.write() = Some(Arc::new(u));
        }
        *self.revoked.write() = None;
        Ok(())
    }
}

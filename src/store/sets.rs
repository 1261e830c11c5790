//! Store operations on disk encryption sets and on a disk's encryption: creating and
//! changing sets, moving disks to customer keys, re-wrapping DEKs on a key change.

use super::des::{
    corrupt_placeholder, des_id, new_principal_id, validate_set_name, ProvisioningState, DES_DIR,
};
use super::*;
use crate::vault::KeyId;

/// Loads every `STORE/disk-encryption-sets/NAME.json`.
pub(super) fn load_sets(dir: &Path) -> Result<BTreeMap<String, DesRecord>> {
    let mut out = BTreeMap::new();
    let entries =
        fs::read_dir(dir).map_err(|e| StoreError::io(format!("reading {}", dir.display()), e))?;
    for e in entries.filter_map(|e| e.ok()) {
        let path = e.path();
        let Some(fname) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if fname.starts_with('.') || !fname.ends_with(".json") {
            continue;
        }
        let stem = fname.trim_end_matches(".json").to_ascii_lowercase();
        let loaded = fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice::<DesRecord>(&b).map_err(|e| e.to_string()))
            .and_then(|rec| {
                if rec.name.to_ascii_lowercase() == stem {
                    Ok(rec)
                } else {
                    Err(format!("it names set '{}', not '{stem}'", rec.name))
                }
            });
        // One bad file costs only its set: it stays listed, and each use of it (and of
        // its disks) fails with DesCorrupt, while everything else mounts and serves.
        let rec = loaded.unwrap_or_else(|reason| {
            let rec = corrupt_placeholder(&stem, format!("{}: {reason}", path.display()));
            log::error!("{}", rec.corrupt_error().expect("corrupt"));
            rec
        });
        out.insert(stem, rec);
    }
    Ok(out)
}

impl Store {
    fn des_path(&self, name: &str) -> PathBuf {
        self.root
            .join(DES_DIR)
            .join(format!("{}.json", name.to_ascii_lowercase()))
    }

    pub(super) fn save_des(&self, rec: &DesRecord) -> Result<()> {
        let path = self.des_path(&rec.name);
        let mut b = serde_json::to_vec_pretty(rec).expect("JSON serializes");
        b.push(b'\n');
        durable::write_atomic(&path, &b, 0o600)
            .map_err(|e| StoreError::io(format!("writing {}", path.display()), e))?;
        self.keys
            .sets
            .write()
            .insert(rec.name.to_ascii_lowercase(), rec.clone());
        Ok(())
    }

    /// Resolves a DES key URL to a versioned URL; versionless only with auto-rotation.
    fn resolve_des_key(&self, url: &str, auto_rotate: bool) -> Result<String> {
        let r = KeyRef::parse(url)?;
        if r.version.is_none() && !auto_rotate {
            return Err(StoreError::VersionlessKeyUrl(url.trim().to_string()));
        }
        Ok(self.keys.vault.resolve(&r)?)
    }

    pub fn des_list(&self) -> Vec<DesRecord> {
        self.keys.sets.read().values().cloned().collect()
    }

    /// Disks whose encryption names the set.
    pub fn disks_in_set(&self, name: &str) -> Vec<Arc<Disk>> {
        let id = des_id(des_name(name)).to_ascii_lowercase();
        self.list()
            .into_iter()
            .filter(|d| {
                d.meta()
                    .encryption
                    .disk_encryption_set_id
                    .is_some_and(|x| x.to_ascii_lowercase() == id)
            })
            .collect()
    }

    /// `az disk-encryption-set create`. Needs purge protection on the vault; a set
    /// without a grant is valid but can't be used until the grant exists.
    pub fn des_create(
        &self,
        name: &str,
        key_url: &str,
        encryption_type: Option<&str>,
        auto_rotate: bool,
        placement: &super::arm::Placement,
    ) -> Result<DesRecord> {
        validate_set_name(name)?;
        let kind =
            encryption_type.map_or(Ok(EncryptionType::CustomerKey), EncryptionType::for_des)?;
        let _ns = self.ns.lock();
        match self.keys.des(name) {
            Err(StoreError::DesNotFound(_)) => {}
            Ok(_) => return Err(StoreError::DesExists(name.to_string())),
            // A corrupt set's file is not overwritten.
            Err(e) => return Err(e),
        }
        if !self.keys.vault.props().enable_purge_protection {
            return Err(StoreError::PurgeProtectionRequired);
        }
        let vault_place = self.vault_placement();
        let placement = self.place(placement, Some(&vault_place))?;
        super::arm::same_location(
            (super::arm::ResType::Set, name, placement.location()),
            (
                super::arm::ResType::Vault,
                &self.keys.vault.name(),
                vault_place.location(),
            ),
        )?;
        let active = self.resolve_des_key(key_url, auto_rotate)?;
        let rec = DesRecord {
            name: name.to_string(),
            encryption_type: kind,
            active_key: active,
            previous_keys: vec![],
            rotation_to_latest_key_version_enabled: auto_rotate,
            principal_id: new_principal_id()?,
            provisioning_state: ProvisioningState::Succeeded,
            last_key_rotation_timestamp: None,
            auto_key_rotation_error: None,
            created: now_rfc3339(),
            placement,
            corrupt: None,
        };
        self.save_des(&rec)?;
        log::info!(
            "created disk encryption set '{name}' ({kind}, key {})",
            rec.active_key
        );
        Ok(rec)
    }

    /// `az disk-encryption-set update`: a new key (re-wraps every disk of the set)
    /// and/or the auto-rotation flag. The encryption type never changes. A user's update
    /// also clears `autoKeyRotationError`, which resumes auto-rotation.
    pub fn des_update(
        &self,
        name: &str,
        key_url: Option<&str>,
        auto_rotate: Option<bool>,
        encryption_type: Option<&str>,
    ) -> Result<DesRecord> {
        self.des_update_inner(name, key_url, auto_rotate, encryption_type, true)
    }

    pub(super) fn des_update_inner(
        &self,
        name: &str,
        key_url: Option<&str>,
        auto_rotate: Option<bool>,
        encryption_type: Option<&str>,
        by_user: bool,
    ) -> Result<DesRecord> {
        let _ns = self.ns.lock();
        let mut rec = self.keys.des(name)?;
        if let Some(t) = encryption_type {
            if EncryptionType::for_des(t)? != rec.encryption_type {
                return Err(StoreError::NotPermitted(format!(
                    "the encryption type of disk encryption set '{}' cannot change; create a new set",
                    rec.name
                )));
            }
        }
        let auto = auto_rotate.unwrap_or(rec.rotation_to_latest_key_version_enabled);
        let new_key = key_url.map(|u| self.resolve_des_key(u, auto)).transpose()?;
        rec.rotation_to_latest_key_version_enabled = auto;
        if by_user {
            rec.auto_key_rotation_error = None;
        }
        match new_key {
            Some(k) if k != rec.active_key => {
                // The new key must be usable before any disk moves to it.
                self.keys
                    .usable_for_wrap(&rec.caller(), &KeyId::parse(&k)?)?;
                // Keys of an unfinished earlier change stay listed until no disk uses them.
                let mut prev = std::mem::take(&mut rec.previous_keys);
                prev.push(rec.active_key.clone());
                prev.retain(|p| *p != k);
                prev.dedup();
                rec.previous_keys = prev;
                rec.active_key = k;
                rec.provisioning_state = ProvisioningState::Updating;
                self.save_des(&rec)?;
                crate::fault::point("rotate.begin");
                self.finish_key_change(&mut rec)?;
            }
            _ if rec.provisioning_state == ProvisioningState::Updating => {
                self.save_des(&rec)?;
                self.finish_key_change(&mut rec)?;
            }
            _ => self.save_des(&rec)?,
        }
        Ok(rec)
    }

    /// Re-wraps each disk of the set still on a previous key, then marks the set done.
    /// Each disk's change is one atomic metadata write, so a crash leaves every disk
    /// wrapped by the old key or the new one; the next open resumes. Objects that hold
    /// the same wrapped DEKs (a disk and its snapshots) are re-wrapped with one unwrap,
    /// and those groups run on several threads (the RSA work is the cost).
    pub(super) fn finish_key_change(&self, rec: &mut DesRecord) -> Result<()> {
        let id = rec.id().to_ascii_lowercase();
        let mut groups: BTreeMap<Vec<String>, Vec<Arc<Disk>>> = BTreeMap::new();
        for d in self.list() {
            let m = d.meta();
            if d.corrupt_reason().is_some()
                || m.encryption
                    .disk_encryption_set_id
                    .as_ref()
                    .map(|x| x.to_ascii_lowercase())
                    != Some(id.clone())
            {
                continue;
            }
            let on_active = m.layers[0].kid == rec.active_key
                && m.rekey
                    .as_ref()
                    .is_none_or(|r| r.layers[0].kid == rec.active_key);
            if on_active {
                continue;
            }
            let mut key = vec![m.dek_id().to_string(), m.layers[0].wrapped_key.clone()];
            key.push(m.layers[0].key_check.clone());
            if let Some(rk) = &m.rekey {
                key.push(m.rekey_dek_id().to_string());
                key.push(rk.layers[0].wrapped_key.clone());
                key.push(rk.layers[0].key_check.clone());
            }
            groups.entry(key).or_default().push(d);
        }
        let groups: Vec<Vec<Arc<Disk>>> = groups.into_values().collect();
        let rec_ref: &DesRecord = rec;
        let failed = Mutex::new(None);
        self.in_parallel(groups.len(), |i| {
            let group = &groups[i];
            let enc = group[0].meta().encryption.clone();
            let r = self.rewrap_group(group, 0, enc, |dek| self.keys.wrap_des(rec_ref, dek));
            if let Err((d, e)) = r {
                failed.lock().get_or_insert(StoreError::NotPermitted(format!(
                    "disk encryption set '{}' is still moving to key {}: {} '{}' could not be re-wrapped ({e}); fix the cause and run 'diskvault des update {} --key-url {}' again",
                    rec_ref.name, rec_ref.active_key, d.kind, d.name(), rec_ref.name, rec_ref.active_key
                )));
                return false;
            }
            true
        });
        trim_heap();
        if let Some(e) = failed.into_inner() {
            return Err(e);
        }
        crate::fault::point("rotate.end");
        rec.previous_keys.clear();
        rec.provisioning_state = ProvisioningState::Succeeded;
        // A rotation stopped by a revocation has now finished: its error is resolved.
        rec.auto_key_rotation_error = None;
        rec.last_key_rotation_timestamp = Some(now_rfc3339());
        self.save_des(rec)?;
        log::info!(
            "disk encryption set '{}' now uses key {}",
            rec.name,
            rec.active_key
        );
        Ok(())
    }

    /// Finishes key changes interrupted by a crash.
    pub(super) fn resume_key_changes(&self) {
        for mut rec in self.des_list() {
            if rec.provisioning_state == ProvisioningState::Updating {
                log::info!("resuming key change of disk encryption set '{}'", rec.name);
                if let Err(e) = self.finish_key_change(&mut rec) {
                    log::error!("{e}");
                }
            }
        }
    }

    /// `az disk-encryption-set delete`: refused while any disk uses the set.
    pub fn des_delete(&self, name: &str) -> Result<()> {
        let _ns = self.ns.lock();
        let rec = self.keys.des(name)?;
        let users: Vec<String> = self
            .disks_in_set(&rec.name)
            .iter()
            .map(|d| format!("{} {}", d.kind, d.name()))
            .collect();
        if !users.is_empty() {
            return Err(StoreError::DesInUse {
                name: rec.name,
                disks: users.join(", "),
            });
        }
        let path = self.des_path(&rec.name);
        fs::remove_file(&path)
            .and_then(|()| durable::sync_dir(&self.root.join(DES_DIR)))
            .map_err(|e| StoreError::io(format!("removing {}", path.display()), e))?;
        self.keys
            .sets
            .write()
            .remove(&rec.name.to_ascii_lowercase());
        log::info!("deleted disk encryption set '{}'", rec.name);
        Ok(())
    }

    /// Runs `work(0..n)` on up to one thread per CPU (at most 4), until all are done or
    /// one returns false. On the reconciler thread, key state is enforced meanwhile
    /// every 100 ms, so a long re-wrap never holds up a revocation.
    fn in_parallel(&self, n: usize, work: impl Fn(usize) -> bool + Sync) {
        let threads = std::thread::available_parallelism()
            .map_or(2, |p| p.get())
            .clamp(1, 4)
            .min(n);
        let next = AtomicU64::new(0);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let finished = Mutex::new(0usize);
        let all_done = parking_lot::Condvar::new();
        let on_reconciler = std::thread::current().name() == Some("reconcile");
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| {
                    while !stop.load(Ordering::Acquire) {
                        let i = next.fetch_add(1, Ordering::AcqRel) as usize;
                        if i >= n || !work(i) {
                            stop.store(true, Ordering::Release);
                            break;
                        }
                    }
                    *finished.lock() += 1;
                    all_done.notify_all();
                });
            }
            let mut f = finished.lock();
            while *f < threads {
                if on_reconciler {
                    self.reconcile.health.beat();
                    let timed_out = all_done
                        .wait_for(&mut f, std::time::Duration::from_millis(100))
                        .timed_out();
                    if timed_out {
                        drop(f);
                        self.reconcile_access();
                        f = finished.lock();
                    }
                } else {
                    all_done.wait(&mut f);
                }
            }
        });
    }

    /// Unwraps layer `idx` of the objects in `group` (which hold the same wrapped DEKs)
    /// once, wraps it again with `wrap`, and writes the new wrapped key (and `enc`) in
    /// one atomic metadata update per object. No data is re-encrypted. A failure names
    /// the object it stopped at.
    fn rewrap_group(
        &self,
        group: &[Arc<Disk>],
        idx: usize,
        enc: Encryption,
        wrap: impl Fn(&Secret) -> Result<WrappedKey>,
    ) -> std::result::Result<(), (Arc<Disk>, StoreError)> {
        let first = &group[0];
        let m = first.meta();
        // The layer, and its successor if a rekey is in progress.
        let mut layers = vec![m.layers[idx].clone()];
        if let Some(rk) = &m.rekey {
            layers.push(rk.layers[idx].clone());
        }
        let mut wrapped = Vec::new();
        for (layer, id) in layers.iter().zip([m.dek_id(), m.rekey_dek_id()]) {
            let fail = |e| (first.clone(), e);
            let p = layer
                .parse()
                .map_err(|r| fail(StoreError::InvalidArgument(r.to_string())))?;
            let dek = self.keys.unwrap(&m.encryption, &p).map_err(fail)?;
            if key_check(&dek, id, idx, p.cipher, &p.nonce) != layer.key_check {
                return Err(fail(StoreError::Unavailable {
                    disk: m.name.clone(),
                    reason: "its data key does not match its metadata (keyCheck mismatch)".into(),
                }));
            }
            wrapped.push(wrap(&dek).map_err(fail)?);
        }
        for d in group {
            d.update_meta(|m| {
                m.encryption = enc.clone();
                m.layers[idx].set_wrapped(&wrapped[0]);
                if let (Some(rk), Some(w)) = (m.rekey.as_mut(), wrapped.get(1)) {
                    rk.layers[idx].set_wrapped(w);
                }
            })
            .map_err(|e| (d.clone(), e))?;
            crate::fault::point("rotate.disk");
        }
        Ok(())
    }

    /// `az disk update --encryption-type ... --disk-encryption-set ...`. Only while the
    /// disk is not open; only the wrapping of the DEK changes.
    pub fn update_encryption(
        &self,
        name: &str,
        encryption_type: Option<&str>,
        des: Option<&str>,
    ) -> Result<()> {
        let _ns = self.ns.lock();
        let disk = self.get_usable(name)?;
        let target_des = des.map(|d| self.keys.des(d)).transpose()?;
        if let Some(d) = &target_des {
            self.check_set_location((super::arm::ResType::Disk, name), &disk.placement(), d)?;
        }
        let target = match (encryption_type, &target_des) {
            (Some(t), _) => t.parse::<EncryptionType>()?,
            (None, Some(d)) => d.encryption_type,
            (None, None) => {
                return Err(StoreError::InvalidArgument(
                    "give --encryption-type and/or --disk-encryption-set".into(),
                ))
            }
        };
        if disk.rekey_state().is_some() {
            return Err(StoreError::NotPermitted(format!(
                "disk '{name}' is being rekeyed; change its encryption once the rekey is done"
            )));
        }
        self.check_not_sharing_keys(&disk)?;
        let current = disk.meta().encryption;
        if !target.uses_customer_key() {
            if current.kind.uses_customer_key() {
                return Err(StoreError::CmkCannotBeDisabled);
            }
            if target_des.is_some() {
                return Err(StoreError::InvalidArgument(
                    "a platform-key disk takes no disk encryption set".into(),
                ));
            }
            return Ok(());
        }
        let Some(des) = target_des else {
            return Err(StoreError::InvalidArgument(format!(
                "{target} needs --disk-encryption-set NAME"
            )));
        };
        if des.encryption_type != target {
            return Err(StoreError::InvalidArgument(format!(
                "disk encryption set '{}' is of type {}, not {target}",
                des.name, des.encryption_type
            )));
        }
        let from_platform = !current.kind.uses_customer_key();
        if !from_platform && current.kind != target {
            return Err(StoreError::NotPermitted(format!(
                "changing a disk from {} to {target} would re-encrypt all its data; create a new disk with --disk-encryption-set {} and copy the data (e.g. qemu-img convert)",
                current.kind, des.name
            )));
        }
        if from_platform && target == EncryptionType::PlatformAndCustomerKeys {
            return Err(StoreError::NotPermitted(format!(
                "adding double encryption to a platform-key disk would re-encrypt all its data; create a new disk with --disk-encryption-set {} and copy the data (e.g. qemu-img convert)",
                des.name
            )));
        }
        let enc = Encryption {
            kind: target,
            disk_encryption_set_id: Some(des.id()),
        };
        if current == enc {
            return Ok(());
        }
        // Azure: "Your existing disks must not be attached to a running VM in order
        // for you to encrypt them"; the open-file rule below covers other programs.
        self.check_not_allocated(name, "Changing the encryption")?;
        disk.while_closed(|| {
            self.rewrap_group(std::slice::from_ref(&disk), 0, enc, |dek| {
                self.keys.wrap_des(&des, dek)
            })
            .map_err(|(_, e)| e)
        })?;
        log::info!(
            "disk '{name}' now uses {target} through disk encryption set '{}'",
            des.name
        );
        Ok(())
    }
}

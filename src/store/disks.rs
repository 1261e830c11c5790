//! The disk namespace: loading every disk when the store opens, and creating,
//! renaming and deleting disks (under the store's `ns` lock).

use super::*;

impl Store {
    /// Loads every disk, snapshot and image; finishes or rolls back interrupted
    /// creates and deletes, then removes deltas nothing uses.
    pub(super) fn scan(&self) -> Result<()> {
        for kind in ObjectKind::ALL {
            self.scan_kind(kind)?;
        }
        let deltas = self.root.join(delta::DELTAS_DIR);
        if !deltas.is_dir() {
            durable::create_dir(&deltas, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", deltas.display()), e))?;
        }
        self.collect_garbage_at_open();
        Ok(())
    }

    fn scan_kind(&self, kind: ObjectKind) -> Result<()> {
        let dir = self.kind_dir(kind);
        if !dir.is_dir() && kind != ObjectKind::Disk {
            durable::create_dir(&dir, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        }
        let entries = fs::read_dir(&dir)
            .map_err(|e| StoreError::io(format!("reading {}", dir.display()), e))?;
        let mut names: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        names.sort();
        let mut disks = self.disks.write();
        for os in names {
            let Some(name) = os.to_str() else { continue };
            let path = dir.join(name);
            if name.ends_with(".creating") || name.ends_with(".deleted") {
                log::info!("removing interrupted {}", path.display());
                durable::shred(&path.join(disk::META_FILE));
                let _ = fs::remove_dir_all(&path);
                continue;
            }
            if !path.is_dir() {
                continue;
            }
            let disk = self.load_disk(kind, &path, name);
            let disk_name = disk.name();
            if disks.get(&(kind, disk_name.clone())).is_some() {
                log::error!(
                    "disk directory {} repeats the name '{disk_name}'; ignoring it",
                    path.display()
                );
                continue;
            }
            if let Err(e) = disk.reconcile() {
                log::error!("cannot reconcile {}: {e}", path.display());
            }
            disks.insert((kind, disk_name), Arc::new(disk));
        }
        Ok(())
    }

    /// Reads and validates a disk's metadata. On failure returns the name, if that part
    /// is readable (so the disk stays visible), and the reason.
    fn read_meta(
        meta_path: &Path,
        dir_name: &str,
    ) -> std::result::Result<DiskMeta, (Option<String>, String)> {
        let bytes = fs::read(meta_path).map_err(|e| (None, format!("cannot read it: {e}")))?;
        let meta = DiskMeta::from_json(&bytes).map_err(|reason| {
            let name = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v.get("name")?.as_str().map(String::from))
                .filter(|n| validate_name(n).is_ok());
            (name, reason)
        })?;
        if meta.id != dir_name {
            return Err((
                Some(meta.name),
                "its id does not match its directory".into(),
            ));
        }
        Ok(meta)
    }

    /// Loads one disk; corrupt metadata yields an unavailable disk, not an error.
    pub(super) fn load_disk(&self, kind: ObjectKind, path: &Path, dir_name: &str) -> Disk {
        let meta_path = path.join(disk::META_FILE);
        let parsed = Self::read_meta(&meta_path, dir_name);
        match parsed {
            Ok(meta) => Disk::new(
                kind,
                self.root.clone(),
                path.to_path_buf(),
                meta,
                None,
                self.keys.clone(),
                self.reconcile.health.clone(),
                self.serial(),
            ),
            Err((name, reason)) => {
                let name = name.unwrap_or_else(|| dir_name.to_string());
                let reason = format!(
                    "metadata {} is corrupt: {reason}; restore it from a backup or delete the {kind}",
                    meta_path.display()
                );
                log::error!("disk '{name}': {reason}");
                let placeholder = DiskMeta {
                    format_version: meta::META_VERSION,
                    id: dir_name.to_string(),
                    name: name.clone(),
                    size_bytes: 0,
                    sku: Sku::default().name().into(),
                    created_at: String::new(),
                    encryption: Encryption {
                        kind: EncryptionType::PlatformKey,
                        disk_encryption_set_id: None,
                    },
                    data_unit_size: crate::crypto::DATA_UNIT as u64,
                    layers: vec![],
                    rekey: None,
                    stack: vec![],
                    key_check_id: None,
                    creation_data: None,
                    incremental: None,
                    full_copy: None,
                    boot: None,
                    placement: Default::default(),
                };
                Disk::new(
                    kind,
                    self.root.clone(),
                    path.to_path_buf(),
                    placeholder,
                    Some(reason),
                    self.keys.clone(),
                    self.reconcile.health.clone(),
                    self.serial(),
                )
            }
        }
    }

    /// Creates a disk: a fresh DEK from the OS CSPRNG for each layer of its encryption
    /// type, each wrapped with RSA-OAEP-256 (see `Layer::seal`).
    pub fn create_disk(&self, name: &str, opts: &CreateOptions) -> Result<Arc<Disk>> {
        check_not_staging(name)?;
        self.create_disk_named(name, opts)
    }

    /// `create_disk` without the reserved-name check (for a copy's staging disk).
    pub(super) fn create_disk_named(&self, name: &str, opts: &CreateOptions) -> Result<Arc<Disk>> {
        validate_name(name)?;
        if opts.size > MAX_DISK_SIZE {
            return Err(StoreError::TooLarge);
        }
        let _ns = self.ns.lock();
        if self.get(name).is_some() {
            return Err(StoreError::DiskExists(name.to_string()));
        }
        let cipher = opts.cipher.unwrap_or(CipherKind::Aes256Xts);
        let des = opts
            .disk_encryption_set
            .as_deref()
            .map(|d| self.keys.des(d))
            .transpose()?;
        let placement = self.place(&opts.placement, des.as_ref().map(|d| &d.placement))?;
        if let Some(d) = &des {
            self.check_set_location((super::arm::ResType::Disk, name), &placement, d)?;
        }
        let id = hex(&random_bytes(16)?);
        // Customer-key layer first (applied to plaintext first), platform layer last.
        let kind = des
            .as_ref()
            .map_or(EncryptionType::PlatformKey, |d| d.encryption_type);
        let mut layers = Vec::new();
        for (i, &layer) in kind.layers().iter().enumerate() {
            layers.push(self.keys.seal(layer, des.as_ref(), cipher, &id, i)?);
        }
        let meta = DiskMeta {
            format_version: meta::META_VERSION,
            id: id.clone(),
            name: name.to_string(),
            size_bytes: opts.size,
            sku: opts.sku.name().to_string(),
            created_at: now_rfc3339(),
            encryption: Encryption {
                kind,
                disk_encryption_set_id: des.as_ref().map(|d| d.id()),
            },
            data_unit_size: crate::crypto::DATA_UNIT as u64,
            layers,
            rekey: None,
            stack: vec![],
            key_check_id: None,
            creation_data: None,
            incremental: None,
            full_copy: None,
            boot: None,
            placement,
        };
        let dir = self.disks_dir();
        let staging = dir.join(format!("{id}.creating"));
        let final_dir = dir.join(&id);
        let io = |e: std::io::Error| {
            if e.raw_os_error() == Some(libc::EFBIG) {
                return StoreError::InvalidSize {
                    input: opts.size.to_string(),
                    reason: format!(
                        "the store's file system can't hold a file that large (ext4 stops at 16 TiB); make the disk smaller or keep the store on XFS or btrfs ({})",
                        dir.display()
                    ),
                };
            }
            StoreError::io(format!("creating disk '{name}' in {}", dir.display()), e)
        };
        let result = (|| {
            durable::create_dir(&staging, 0o700)?;
            let data = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(Disk::data_path(&staging))?;
            data.set_len(opts.size.div_ceil(4096) * 4096)?;
            data.sync_all()?;
            durable::write_atomic(&staging.join(disk::META_FILE), &meta.to_json(), 0o600)?;
            fs::rename(&staging, &final_dir)?;
            durable::sync_dir(&dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_dir_all(&staging);
            return Err(io(e));
        }
        let disk = Arc::new(Disk::new(
            ObjectKind::Disk,
            self.root.clone(),
            final_dir,
            meta,
            None,
            self.keys.clone(),
            self.reconcile.health.clone(),
            self.serial(),
        ));
        self.disks
            .write()
            .insert((ObjectKind::Disk, name.to_string()), disk.clone());
        log::info!(
            "created disk '{name}' ({} bytes, {cipher}, {})",
            opts.size,
            disk.meta().encryption.kind
        );
        Ok(disk)
    }

    /// Deletes a disk and crypto-shreds its wrapped DEK. Open handles keep working
    /// until closed (POSIX unlink semantics); then nothing of the disk remains.
    pub fn delete_disk(&self, name: &str) -> Result<()> {
        let ns = self.ns.lock();
        let r = self.delete_locked(name);
        drop(ns);
        self.reclaim_noted();
        r
    }

    fn delete_locked(&self, name: &str) -> Result<()> {
        self.delete_object_locked(ObjectKind::Disk, name)
    }

    /// Deletes a disk, snapshot or image: its metadata (the wrapped DEKs) is shredded
    /// and the space only it used is freed; what others share stays.
    pub(super) fn delete_object_locked(&self, kind: ObjectKind, name: &str) -> Result<()> {
        let disk = self.get_kind_or_err(kind, name)?;
        if kind == ObjectKind::Disk {
            self.check_not_attached(name, "deleted")?;
        }
        let dir = disk.dir();
        let kdir = self.kind_dir(kind);
        let doomed = kdir.join(format!("{}.deleted", disk.id));
        let io = |e| StoreError::io(format!("deleting {kind} '{name}'"), e);
        let deltas = self.reclaim_candidates(&disk);
        // Deltas whose space may come free; recorded first so a crash after the
        // rename below still frees it at the next open.
        // Deleting is how a full store gets space back: if even this small note
        // can't be written, go on; what it would free is found at the next open
        // (unused deltas are removed then), only dead units of shared ones wait.
        if let Err(e) = self.note_gc(&deltas) {
            log::warn!("deleting {kind} '{name}': cannot note its deltas for space reclaim: {e}");
        }
        crate::fault::point("delete.noted");
        // One rename removes the object; a crash after it finishes the delete at next open.
        fs::rename(&dir, &doomed).map_err(io)?;
        durable::sync_dir(&kdir).map_err(io)?;
        crate::fault::point("delete.renamed");
        disk.mark_deleted();
        disk.set_dir(doomed.clone());
        self.disks.write().remove(&(kind, name.to_string()));
        if disk.open_handles() > 0 {
            self.orphans.lock().push(disk.clone());
        }
        durable::shred(&doomed.join(disk::META_FILE));
        fs::remove_dir_all(&doomed).map_err(io)?;
        crate::fault::point("delete.removed");
        // Freed once `ns` is released (`reclaim_noted`), or at the next open.
        self.reclaim.lock().extend(deltas);
        log::info!("deleted {kind} '{name}' (wrapped key destroyed)");
        Ok(())
    }

    /// Renames a disk; with `replace`, an existing disk of the new name is deleted first.
    pub fn rename_disk(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        let r = self.rename_disk_locked(from, to, replace);
        self.reclaim_noted();
        r
    }

    fn rename_disk_locked(&self, from: &str, to: &str, replace: bool) -> Result<()> {
        validate_name(to)?;
        check_not_staging(to)?;
        let _ns = self.ns.lock();
        let disk = self.get_or_err(from)?;
        if from == to {
            return Ok(());
        }
        self.check_not_attached(from, "renamed")?;
        if self.get(to).is_some() {
            if !replace {
                return Err(StoreError::DiskExists(to.to_string()));
            }
            self.check_not_attached(to, "replaced")?;
            // As with unlink, handles still open on the replaced disk keep working
            // until closed (and a close the kernel has not sent yet is no obstacle).
            self.delete_locked(to)?;
        }
        disk.update_meta(|m| m.name = to.to_string())?;
        let mut disks = self.disks.write();
        disks.remove(&(ObjectKind::Disk, from.to_string()));
        disks.insert((ObjectKind::Disk, to.to_string()), disk);
        log::info!("renamed disk '{from}' to '{to}'");
        Ok(())
    }

    /// Changes a disk's SKU (`az disk update --sku`).
    pub fn set_sku(&self, name: &str, sku: Sku) -> Result<()> {
        let disk = self.get_usable(name)?;
        if disk.meta().sku != sku.name() {
            self.check_not_allocated(name, "Changing the SKU")?;
        }
        disk.update_meta(|m| m.sku = sku.name().to_string())
    }
}

/// Names `.NAME.copying` are the staging disks of re-encrypting copies, removed at open
/// when a crash interrupted them; users can't take them.
fn check_not_staging(name: &str) -> Result<()> {
    if name.starts_with('.') && name.ends_with(snapshots::COPYING) {
        return Err(StoreError::InvalidName {
            name: name.to_string(),
            reason: "names that start with '.' and end with '.copying' are reserved for copies in progress".into(),
        });
    }
    Ok(())
}

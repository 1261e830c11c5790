//! Snapshots, images and disks made from them: O(1) copies that share deltas and
//! DEKs with their source, their key rules, deletion with space reclaim, and diffs.
//!
//! Every object's data is a stack of deltas (see `delta.rs`). A snapshot of a disk
//! freezes the disk's writable delta and gives the disk a fresh one; the snapshot's
//! stack is the disk's stack at that moment. A disk made from a snapshot or image
//! takes the source's stack plus a fresh writable delta. All objects of one stack
//! family share the source's DEKs (each keeps its own wrapped copy in its metadata),
//! so data is shared as ciphertext, never re-encrypted.

use super::arm::{Placement, ResType};
use super::delta::{create_delta, delta_path, remove_delta, DELTAS_DIR};
use super::disk::units::round_up;
use super::meta::{CreationData, FullCopy, META_VERSION_LAYERED};
use super::*;

/// Suffix of the temporary name of a disk being filled by a re-encrypting copy.
pub(super) const COPYING: &str = ".copying";

/// Options of `snapshot create` and `image create`.
#[derive(Clone, Debug, Default)]
pub struct CopyOptions {
    /// `--incremental false` (snapshots): readable at once, then copied in the
    /// background into a delta of its own.
    pub full: bool,
    /// `--disk-encryption-set`: must be the source's, if the source has one.
    pub disk_encryption_set: Option<String>,
    /// `--encryption-type`: must be the source's.
    pub encryption_type: Option<EncryptionType>,
    /// `-g`, `-l` (the location must be the source's).
    pub placement: Placement,
    /// Images: `--kernel`, `--initrd`, `--append`.
    pub boot: Option<super::meta::Boot>,
}

/// Options of `disk create --source`.
#[derive(Clone, Debug, Default)]
pub struct FromSourceOptions {
    /// 0: the source's size; otherwise at least that.
    pub size: u64,
    pub sku: Sku,
    pub disk_encryption_set: Option<String>,
    pub encryption_type: Option<EncryptionType>,
    pub placement: Placement,
}

impl Store {
    /// A copy's placement: in its source's location (a copy to another region is
    /// Azure's `CopyStart`, which diskvault has not got).
    fn place_copy(
        &self,
        ty: ResType,
        name: &str,
        asked: &Placement,
        src: &Disk,
    ) -> Result<Placement> {
        let sp = src.placement();
        // Unless given, a copy is where its source is: it can't be anywhere else.
        let asked = Placement {
            resource_group: asked.resource_group.clone(),
            location: asked
                .location
                .clone()
                .or_else(|| Some(sp.location().to_string())),
        };
        let p = self.place(&asked, Some(&sp))?;
        super::arm::same_location(
            (ty, name, p.location()),
            (src.kind.res_type(), &src.name(), sp.location()),
        )?;
        Ok(p)
    }

    /// `image update --kernel ...`: the image's boot definition (the one metadata
    /// change an image allows; `None` clears it).
    pub fn set_image_boot(&self, name: &str, boot: Option<super::meta::Boot>) -> Result<Arc<Disk>> {
        if let Some(b) = &boot {
            super::meta::check_boot(b)?;
        }
        let img = self.get_kind_or_err(ObjectKind::Image, name)?;
        img.update_meta(|m| m.boot = boot)?;
        Ok(img)
    }

    pub(super) fn deltas_dir(&self) -> PathBuf {
        self.root.join(DELTAS_DIR)
    }

    /// A source by name: a disk, snapshot or image, or a resource id
    /// (`/diskvault/snapshots/NAME`). A bare name is looked up in `kinds` order.
    pub fn find_source(&self, source: &str, kinds: &[ObjectKind]) -> Result<Arc<Disk>> {
        let parsed = super::arm::parse_id(source).and_then(|r| {
            ObjectKind::ALL
                .into_iter()
                .find(|k| k.res_type() == r.ty)
                .map(|k| (k, r))
        });
        if let Some((k, r)) = parsed {
            let name = self.resolve_name(source, r.ty)?;
            let name = name.as_str();
            {
                if !kinds.contains(&k) {
                    return Err(StoreError::Refused(format!(
                        "{} {k} can't be the source here; use a {}",
                        if k == ObjectKind::Image { "an" } else { "a" },
                        kinds
                            .iter()
                            .map(|k| k.noun())
                            .collect::<Vec<_>>()
                            .join(" or ")
                    )));
                }
                return self.get_kind_or_err(k, name);
            }
        }
        for &k in kinds {
            if let Some(d) = self.get_kind(k, source) {
                return Ok(d);
            }
        }
        Err(StoreError::SourceNotFound(format!(
            "no {} named '{source}'; see 'diskvault {} list'",
            kinds
                .iter()
                .map(|k| k.noun())
                .collect::<Vec<_>>()
                .join(" or "),
            kinds[0].noun()
        )))
    }

    /// A new delta file of `len` bytes; its id.
    fn new_delta(&self, len: u64) -> Result<String> {
        let dir = self.deltas_dir();
        if !dir.is_dir() {
            durable::create_dir(&dir, 0o700)
                .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        }
        let id = hex(&random_bytes(16)?);
        let path = delta_path(&self.root, &id);
        if let Err(e) = create_delta(&path, round_up(len)) {
            let _ = fs::remove_file(&path);
            if e.raw_os_error() == Some(libc::EFBIG) {
                return Err(StoreError::InvalidSize {
                    input: len.to_string(),
                    reason: format!(
                        "the store's file system can't hold a file that large (ext4 stops at 16 TiB); make the disk smaller or keep the store on XFS or btrfs ({})",
                        dir.display()
                    ),
                });
            }
            return Err(StoreError::io(
                format!("creating a delta in {}", dir.display()),
                e,
            ));
        }
        Ok(id)
    }

    /// Refuses a copy under other keys than its source's: a disk, its snapshots and
    /// images, and disks made from them share DEKs and one disk encryption set.
    fn check_same_key(
        &self,
        what: &str,
        src: &Disk,
        des: Option<&str>,
        ty: Option<EncryptionType>,
    ) -> Result<()> {
        let m = src.meta();
        let src_des = m.encryption.disk_encryption_set_id.clone();
        let src_name = format!("{} '{}'", src.kind, m.name);
        if let Some(t) = ty {
            if t != m.encryption.kind {
                return Err(StoreError::Refused(format!(
                    "{what} must use the encryption of its source {src_name} ({}), not {t}: it shares the source's data and keys{}",
                    m.encryption.kind,
                    if src.kind.read_only() && !m.encryption.kind.uses_customer_key() {
                        "; to re-encrypt, create a disk from it with --disk-encryption-set"
                    } else {
                        ""
                    }
                )));
            }
        }
        if let Some(d) = des {
            let rec = self.keys.des(d)?;
            if Some(rec.id()) != src_des {
                return Err(StoreError::Refused(format!(
                    "{what} must use the disk encryption set of its source {src_name} ({}), not '{}': a disk and its snapshots and images share one disk encryption set",
                    src_des.as_deref().unwrap_or("none: it uses the platform key"),
                    rec.name
                )));
            }
        }
        Ok(())
    }

    fn insert_object(&self, kind: ObjectKind, dir: PathBuf, meta: DiskMeta) -> Arc<Disk> {
        let name = meta.name.clone();
        let d = Arc::new(Disk::new(
            kind,
            self.root.clone(),
            dir,
            meta,
            None,
            self.keys.clone(),
            self.reconcile.health.clone(),
            self.serial(),
        ));
        self.disks.write().insert((kind, name), d.clone());
        d
    }

    /// The metadata of a new read-only copy of `src` (its keys, encryption, stack).
    fn copy_meta(
        &self,
        kind: ObjectKind,
        name: &str,
        src: &Disk,
        m: &DiskMeta,
        opts: &CopyOptions,
        placement: &Placement,
    ) -> Result<DiskMeta> {
        let (full, boot) = (opts.full, opts.boot.as_ref());
        Ok(DiskMeta {
            format_version: META_VERSION_LAYERED,
            id: hex(&random_bytes(16)?),
            name: name.to_string(),
            size_bytes: m.size_bytes,
            // Snapshots are standard-tier objects (Azure's default Standard_LRS).
            sku: Sku::StandardLrs.name().to_string(),
            created_at: now_rfc3339(),
            encryption: m.encryption.clone(),
            data_unit_size: m.data_unit_size,
            layers: m.layers.clone(),
            rekey: None,
            stack: m.stack.clone(),
            key_check_id: Some(m.dek_id().to_string()),
            // Sources of copies are disks and snapshots: always `Copy`.
            creation_data: Some(creation_data(src)),
            incremental: (kind == ObjectKind::Snapshot).then_some(!full),
            full_copy: (kind == ObjectKind::Snapshot && full).then_some(FullCopy::Pending),
            boot: boot.cloned(),
            placement: placement.clone(),
        })
    }

    /// Writes `meta` in `KIND/ID.creating/` (to be renamed into place by `publish`).
    fn stage(&self, kind: ObjectKind, meta: &DiskMeta) -> Result<PathBuf> {
        let dir = self.kind_dir(kind);
        let staging = dir.join(format!("{}.creating", meta.id));
        durable::create_dir(&staging, 0o700)
            .and_then(|()| {
                durable::write_atomic(&staging.join(disk::META_FILE), &meta.to_json(), 0o600)
            })
            .map_err(|e| {
                let _ = fs::remove_dir_all(&staging);
                StoreError::io(
                    format!("creating {kind} '{}' in {}", meta.name, dir.display()),
                    e,
                )
            })?;
        Ok(staging)
    }

    fn publish(&self, kind: ObjectKind, staging: &Path, id: &str) -> Result<PathBuf> {
        let dir = self.kind_dir(kind);
        let final_dir = dir.join(id);
        fs::rename(staging, &final_dir)
            .and_then(|()| durable::sync_dir(&dir))
            .map_err(|e| StoreError::io(format!("creating a {kind} in {}", dir.display()), e))?;
        Ok(final_dir)
    }

    fn discard_staging(&self, staging: &Path) {
        durable::shred(&staging.join(disk::META_FILE));
        let _ = fs::remove_dir_all(staging);
    }

    /// A read-only copy (snapshot or image) of a disk or snapshot, in O(1).
    pub fn create_copy(
        &self,
        kind: ObjectKind,
        name: &str,
        source: &str,
        opts: &CopyOptions,
    ) -> Result<Arc<Disk>> {
        validate_object_name(kind, name)?;
        if let Some(b) = &opts.boot {
            super::meta::check_boot(b)?;
        }
        let _ns = self.ns.lock();
        if self.get_kind(kind, name).is_some() {
            return Err(StoreError::ObjectExists {
                kind,
                name: name.to_string(),
            });
        }
        let kinds: &[ObjectKind] = match kind {
            ObjectKind::Image => &[ObjectKind::Disk, ObjectKind::Snapshot],
            _ => &[ObjectKind::Disk, ObjectKind::Snapshot],
        };
        let src = self.find_source(source, kinds)?;
        if kind == ObjectKind::Snapshot && src.kind == ObjectKind::Disk {
            let n = self.disks.read().snapshots_of(&src.id);
            if n >= MAX_SNAPSHOTS {
                return Err(StoreError::Limit(format!(
                    "disk '{}' has {n} snapshots, the limit per disk (as in Azure, {MAX_SNAPSHOTS} incremental snapshots of a disk at a time); delete older snapshots of it first ('diskvault snapshot list')",
                    src.name()
                )));
            }
        }
        if let Some(r) = src.corrupt_reason() {
            return Err(StoreError::Unavailable {
                disk: src.name(),
                reason: r.to_string(),
            });
        }
        let placement = self.place_copy(kind.res_type(), name, &opts.placement, &src)?;
        let what = format!("{kind} '{name}'");
        self.check_same_key(
            &what,
            &src,
            opts.disk_encryption_set.as_deref(),
            opts.encryption_type,
        )?;
        let obj = if src.kind == ObjectKind::Disk {
            if src.meta().rekey.is_some() {
                return Err(StoreError::RekeyRunning(src.name()));
            }
            if src.stack().len() >= MAX_STACK {
                return Err(StoreError::Refused(format!(
                    "disk '{}' has {MAX_STACK} deltas; delete older snapshots of it, or rekey it ('diskvault disk rekey {0}'), which gives it one", src.name()
                )));
            }
            src.make_layered()?;
            let delta = self.new_delta(src.size())?;
            let mut staged = None;
            let r = src.push_delta(&delta, |m| {
                let meta = self.copy_meta(kind, name, &src, m, opts, &placement)?;
                staged = Some((self.stage(kind, &meta)?, meta));
                Ok(())
            });
            match (r, staged) {
                (Ok(()), Some((staging, meta))) => {
                    crate::fault::point("snapshot.publish");
                    let dir = self.publish(kind, &staging, &meta.id)?;
                    self.insert_object(kind, dir, meta)
                }
                (r, staged) => {
                    if let Some((staging, _)) = staged {
                        self.discard_staging(&staging);
                    }
                    let _ = remove_delta(&self.root, &delta);
                    r?;
                    return Err(StoreError::InvalidArgument(
                        "internal: snapshot not staged".into(),
                    ));
                }
            }
        } else {
            let m = src.meta();
            let meta = self.copy_meta(kind, name, &src, &m, opts, &placement)?;
            let staging = self.stage(kind, &meta)?;
            crate::fault::point("snapshot.publish");
            let dir = self
                .publish(kind, &staging, &meta.id)
                .inspect_err(|_| self.discard_staging(&staging))?;
            self.insert_object(kind, dir, meta)
        };
        log::info!("created {kind} '{name}' from {} '{}'", src.kind, src.name());
        Ok(obj)
    }

    /// `disk create NAME --source SNAPSHOT|IMAGE|DISK`: instant when it shares the
    /// source's data (same keys); a full, re-encrypting copy from a platform-key
    /// source to a customer key (`progress(done, total)` in bytes).
    pub fn create_disk_from(
        &self,
        name: &str,
        source: &str,
        opts: &FromSourceOptions,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Arc<Disk>> {
        validate_name(name)?;
        let _ns = self.ns.lock();
        if self.get(name).is_some() {
            return Err(StoreError::DiskExists(name.to_string()));
        }
        let src = self.find_source(
            source,
            &[ObjectKind::Snapshot, ObjectKind::Image, ObjectKind::Disk],
        )?;
        if let Some(r) = src.corrupt_reason() {
            return Err(StoreError::Unavailable {
                disk: src.name(),
                reason: r.to_string(),
            });
        }
        let sm = src.meta();
        let size = if opts.size == 0 {
            sm.size_bytes
        } else {
            opts.size
        };
        if size < sm.size_bytes {
            return Err(StoreError::InvalidSize {
                input: size.to_string(),
                reason: format!(
                    "a disk made from {} '{}' must be at least its size ({} bytes); sizes only grow",
                    src.kind, sm.name, sm.size_bytes
                ),
            });
        }
        if size > MAX_DISK_SIZE {
            return Err(StoreError::TooLarge);
        }
        let placement = self.place_copy(ResType::Disk, name, &opts.placement, &src)?;
        let what = format!("disk '{name}'");
        let customer_source = sm.encryption.kind.uses_customer_key();
        let new_key = !customer_source
            && (opts.disk_encryption_set.is_some()
                || opts
                    .encryption_type
                    .is_some_and(|t| t != sm.encryption.kind));
        if new_key {
            drop(_ns);
            return self.copy_disk_reencrypting(name, &src, size, opts, progress);
        }
        self.check_same_key(
            &what,
            &src,
            opts.disk_encryption_set.as_deref(),
            opts.encryption_type,
        )?;
        if src.kind == ObjectKind::Disk {
            if sm.rekey.is_some() {
                return Err(StoreError::RekeyRunning(src.name()));
            }
            src.make_layered()?;
        }
        let delta = self.new_delta(size)?;
        let mut staged: Option<(PathBuf, DiskMeta)> = None;
        let mut stage = |m: &DiskMeta| -> Result<()> {
            let mut stack = m.stack.clone();
            stack.push(delta.clone());
            let meta = DiskMeta {
                format_version: META_VERSION_LAYERED,
                id: hex(&random_bytes(16)?),
                name: name.to_string(),
                size_bytes: m.size_bytes,
                sku: opts.sku.name().to_string(),
                created_at: now_rfc3339(),
                encryption: m.encryption.clone(),
                data_unit_size: m.data_unit_size,
                layers: m.layers.clone(),
                rekey: None,
                stack,
                key_check_id: Some(m.dek_id().to_string()),
                creation_data: Some(creation_data(&src)),
                incremental: None,
                full_copy: None,
                boot: None,
                placement: placement.clone(),
            };
            staged = Some((self.stage(ObjectKind::Disk, &meta)?, meta));
            Ok(())
        };
        let r = if src.kind == ObjectKind::Disk {
            // The source disk's writable delta is frozen and shared, as for a snapshot.
            let extra = self.new_delta(sm.size_bytes)?;
            let r = src.push_delta(&extra, |m| stage(m));
            if r.is_err() {
                let _ = remove_delta(&self.root, &extra);
            }
            r
        } else {
            stage(&sm)
        };
        let result = r.and_then(|()| {
            let (staging, meta) = staged.take().expect("staged on success");
            let disk = self.insert_staged(&staging, meta);
            // The source's last unit may hold undefined bytes past its size; a bigger
            // disk reads zeros there.
            if size > disk.size() {
                disk.set_size(size)
                    .inspect_err(|_| self.drop_staged(&disk))?;
            }
            crate::fault::point("clone.staged");
            let dir = self
                .publish(ObjectKind::Disk, &staging, &disk.id)
                .inspect_err(|_| self.drop_staged(&disk))?;
            disk.set_dir(dir);
            Ok(disk)
        });
        match result {
            Ok(disk) => {
                log::info!(
                    "created disk '{name}' from {} '{}' (shared)",
                    src.kind,
                    src.name()
                );
                Ok(disk)
            }
            Err(e) => {
                if let Some((staging, _)) = staged {
                    self.discard_staging(&staging);
                }
                let _ = remove_delta(&self.root, &delta);
                Err(e)
            }
        }
    }

    /// A staged disk, in the namespace so its data path works; `publish` makes it real.
    fn insert_staged(&self, staging: &Path, meta: DiskMeta) -> Arc<Disk> {
        self.insert_object(ObjectKind::Disk, staging.to_path_buf(), meta)
    }

    fn drop_staged(&self, disk: &Disk) {
        self.disks.write().remove(&(ObjectKind::Disk, disk.name()));
        self.discard_staging(&disk.dir());
        if let Some(d) = disk.stack().last() {
            let _ = remove_delta(&self.root, d);
        }
    }

    /// Other objects holding the DEKs of `obj` (its snapshots, images, clones).
    pub fn key_family(&self, obj: &Disk) -> Vec<Arc<Disk>> {
        let id = obj.meta().dek_id().to_string();
        self.list()
            .into_iter()
            .filter(|d| d.id != obj.id && d.meta().dek_id() == id)
            .collect()
    }

    /// Refuses to move a disk to other keys while others share its DEKs.
    pub(super) fn check_not_sharing_keys(&self, disk: &Disk) -> Result<()> {
        let fam = self.key_family(disk);
        if let Some(o) = fam.first() {
            return Err(StoreError::Refused(format!(
                "disk '{}' shares its data and keys with {} '{}'{}; a disk and its snapshots and images keep one disk encryption set. Give the disk keys of its own first: 'diskvault disk rekey {0}' (online; they keep theirs), then run this update again",
                disk.name(),
                o.kind,
                o.name(),
                if fam.len() > 1 { format!(" and {} more", fam.len() - 1) } else { String::new() }
            )));
        }
        Ok(())
    }
}

/// `creationData` of a disk made from `src`: `FromImage` from an image, else `Copy`.
pub(super) fn creation_data(src: &Disk) -> CreationData {
    CreationData {
        create_option: if src.kind == ObjectKind::Image {
            "FromImage"
        } else {
            "Copy"
        }
        .into(),
        source_resource_id: Some(src.kind.resource_id(&src.name())),
        source_unique_id: Some(src.id.clone()),
    }
}

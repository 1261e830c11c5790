//! A disk made from a platform-key source under a customer key: a full copy under
//! new DEKs, every unit decrypted and encrypted again, staged as `.NAME.copying`
//! until it is complete.

use super::disk::units::UNIT;
use super::snapshots::{creation_data, COPYING};
use super::*;

impl Store {
    /// A disk from a platform-key source under a customer key: new DEKs, every
    /// unit of data decrypted and encrypted again. Not instant; staged until done.
    pub(super) fn copy_disk_reencrypting(
        &self,
        name: &str,
        src: &Arc<Disk>,
        size: u64,
        opts: &FromSourceOptions,
        progress: &dyn Fn(u64, u64),
    ) -> Result<Arc<Disk>> {
        let staging_name = format!(".{name}{COPYING}");
        let copy = CreateOptions {
            size,
            sku: opts.sku,
            cipher: src
                .meta()
                .layers
                .first()
                .and_then(|l| l.cipher.parse().ok()),
            disk_encryption_set: opts.disk_encryption_set.clone(),
            placement: opts.placement.clone(),
        };
        if opts.disk_encryption_set.is_none() {
            return Err(StoreError::Refused(format!(
                "disk '{name}' with {} needs --disk-encryption-set",
                opts.encryption_type
                    .map(|t| t.to_string())
                    .unwrap_or_default()
            )));
        }
        if let Some(t) = opts.encryption_type {
            let rec = self
                .keys
                .des(opts.disk_encryption_set.as_deref().unwrap_or_default())?;
            if rec.encryption_type != t {
                return Err(StoreError::Refused(format!(
                    "disk encryption set '{}' is {}, not {t}; pick a set of that type",
                    rec.name, rec.encryption_type
                )));
            }
        }
        let dst = self.create_disk_named(&staging_name, &copy)?;
        let r = (|| -> Result<()> {
            src.open()?;
            let _close_src = scopeguard(|| {
                let _ = src.release();
            });
            dst.open()?;
            let _close_dst = scopeguard(|| {
                let _ = dst.release();
            });
            let total = src.size();
            let chunk = 1u64 << 20;
            let mut off = 0;
            while off < total {
                let mut next = src.seek(off, SeekKind::Data).unwrap_or(total);
                next = next / UNIT * UNIT;
                if next >= total {
                    break;
                }
                let len = chunk.min(total - next);
                let buf = src.read(next, len as usize)?;
                // Zero units stay holes, as in the source.
                for (r, data) in super::disk::units::hole_runs(&buf) {
                    if data {
                        dst.write(next + r.start as u64, &buf[r])?;
                    }
                }
                off = next + len;
                progress(off.min(total), total);
                crate::fault::point("copy.chunk");
            }
            dst.sync()?;
            Ok(())
        })();
        if let Err(e) = r {
            let _ = self.delete_disk(&staging_name);
            return Err(e);
        }
        let _ns = self.ns.lock();
        if self.get(name).is_some() {
            drop(_ns);
            let _ = self.delete_disk(&staging_name);
            return Err(StoreError::DiskExists(name.to_string()));
        }
        crate::fault::point("copy.renaming");
        dst.update_meta(|m| {
            m.name = name.to_string();
            m.creation_data = Some(creation_data(src));
        })?;
        let mut disks = self.disks.write();
        disks.remove(&(ObjectKind::Disk, staging_name));
        disks.insert((ObjectKind::Disk, name.to_string()), dst.clone());
        log::info!(
            "created disk '{name}' from {} '{}' (re-encrypted copy)",
            src.kind,
            src.name()
        );
        Ok(dst)
    }
}

/// Runs `f` when dropped.
fn scopeguard(f: impl FnOnce()) -> impl Drop {
    struct G<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for G<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f()
            }
        }
    }
    G(Some(f))
}

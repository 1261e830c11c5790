//! Soft delete, recovery and purge of keys.

use super::super::audit::Caller;
use super::super::{now_secs, secs_to_iso, VaultError};
use super::{view, Deletion, KeyVault, DAY, DELETED_DIR, DELETED_FILE, KEYS_DIR};
use crate::durable;
use serde_json::Value;
use std::fs;
use std::io::ErrorKind;

impl KeyVault {
    /// Soft delete: the key moves to deleted-keys until recovered or purged.
    pub fn delete_key(&self, caller: &Caller, name: &str) -> Result<Value, VaultError> {
        self.audited_revocation(
            "KeyDelete",
            caller,
            // Deleting a key is a revocation: never refused, even mid-rotation or
            // with the vault's file system full.
            |_| true,
            |st| Self::kid_of(st, name, None),
            |st| {
                let l = name.to_ascii_lowercase();
                let what = || format!("key '{name}' is deleted");
                if st.unsaved_deletes.contains(&l) {
                    // Deleted in memory before; save it now.
                    let (e, del) = &st.deleted[&l];
                    let v = view::deleted_json(&st.props, &e.rec, del);
                    if let Err(e) = self.persist_delete(&l, del) {
                        return Err(self.not_saved(what(), &e.into()));
                    }
                    st.unsaved_deletes.remove(&l);
                    return Ok(v);
                }
                Self::entry(st, name)?;
                let now = now_secs();
                let del = Deletion {
                    deleted_date: now,
                    scheduled_purge_date: now + st.props.soft_delete_retention_in_days as i64 * DAY,
                };
                let saved = self.persist_delete(&l, &del);
                let e = st.keys.remove(&l).expect("checked above");
                st.unsaved.remove(&l);
                let v = view::deleted_json(&st.props, &e.rec, &del);
                st.deleted.insert(l.clone(), (e, del));
                if let Err(e) = saved {
                    st.unsaved_deletes.insert(l);
                    return Err(self.not_saved(what(), &e.into()));
                }
                Ok(v)
            },
        )
    }

    pub fn recover_key(&self, caller: &Caller, name: &str) -> Result<Value, VaultError> {
        self.audited(
            "KeyRecover",
            caller,
            |st| Self::kid_of(st, name, None),
            |st| {
                let l = name.to_ascii_lowercase();
                if let Some(b) = st.broken.get(&l) {
                    return Err(b.error());
                }
                if !st.deleted.contains_key(&l) {
                    return Err(VaultError::DeletedKeyNotFound(name.to_string()));
                }
                let to = self.key_dir(&l);
                if st.unsaved_deletes.contains(&l) {
                    // Its deletion was never saved: the key is still in keys/.
                    match fs::remove_file(to.join(DELETED_FILE)) {
                        Err(e) if e.kind() != ErrorKind::NotFound => return Err(e.into()),
                        _ => {}
                    }
                    st.unsaved_deletes.remove(&l);
                } else {
                    let from = self.dir.join(DELETED_DIR).join(&l);
                    fs::rename(&from, &to)?;
                    durable::sync_dir(&self.dir.join(DELETED_DIR))?;
                    durable::sync_dir(&self.dir.join(KEYS_DIR))?;
                    fs::remove_file(to.join(DELETED_FILE))?;
                    durable::sync_dir(&to)?;
                }
                let (e, _) = st.deleted.remove(&l).expect("checked above");
                let v = Self::key_json(st, &e, None);
                st.keys.insert(l, e);
                Ok(v)
            },
        )
    }

    /// Permanently destroys a deleted key. Refused under purge protection until the
    /// retention period has passed.
    pub fn purge_key(&self, caller: &Caller, name: &str) -> Result<(), VaultError> {
        self.audited(
            "KeyPurge",
            caller,
            |st| Self::kid_of(st, name, None),
            |st| {
                let l = name.to_ascii_lowercase();
                if let Some(b) = st.broken.get(&l) {
                    return Err(b.error());
                }
                let Some((_, d)) = st.deleted.get(&l) else {
                    return Err(if st.keys.contains_key(&l) {
                        VaultError::PurgeActive(name.to_string())
                    } else {
                        VaultError::DeletedKeyNotFound(name.to_string())
                    });
                };
                if st.props.enable_purge_protection && now_secs() < d.scheduled_purge_date {
                    return Err(VaultError::PurgeProtected {
                        name: name.to_string(),
                        until: secs_to_iso(d.scheduled_purge_date),
                    });
                }
                if st.unsaved_deletes.contains(&l) {
                    // Deleted in memory only: finish saving the deletion first.
                    self.persist_delete(&l, d)?;
                    st.unsaved_deletes.remove(&l);
                }
                // Crypto-shred in the token first: a purge that can't reach it is
                // refused, so no key is left behind in the token.
                let in_token: Vec<String> = st.deleted[&l]
                    .0
                    .rec
                    .versions
                    .iter()
                    .filter(|v| v.hsm)
                    .map(|v| v.version.clone())
                    .collect();
                if !in_token.is_empty() {
                    let token = Self::token(st)?;
                    for v in &in_token {
                        token.destroy(&super::token_id(v))?;
                    }
                }
                let dir = self.dir.join(DELETED_DIR).join(&l);
                let doomed = self.dir.join(DELETED_DIR).join(format!(".{l}.purging"));
                fs::rename(&dir, &doomed)?;
                durable::sync_dir(&self.dir.join(DELETED_DIR))?;
                st.deleted.remove(&l);
                for f in fs::read_dir(&doomed)?.filter_map(|e| e.ok()) {
                    durable::shred(&f.path());
                }
                fs::remove_dir_all(&doomed)?;
                Ok(())
            },
        )
    }
}

//! Saving and loading key records, and the audit trail of every change: audited
//! mutations, revocations that apply in memory when they can't be saved
//! (`RevokedNotSaved`), and audit records written late.

use super::super::audit::{self, Caller};
use super::super::kid::validate_key_name;
use super::super::{now_iso, VaultError};
use super::{Deletion, KeyEntry, KeyRecord, KeyVault, State};
use super::{DELETED_DIR, DELETED_FILE, KEYS_DIR, KEY_FILE};
use crate::durable;
use crate::vault::custody::hsm::Hsm;
use crate::vault::custody::{Custody, HeldKey, KeyRole};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// An audit record that is owed: a revocation is never refused for lack of audit space.
pub(super) struct LateRecord {
    time: String,
    op: String,
    caller: Caller,
    kid: String,
    note: Option<(String, String)>,
}

/// An audit event owned by its caller, for `KeyVault::audit_events`.
#[derive(Clone, Debug)]
pub struct OwnedEvent {
    pub op: String,
    pub caller: Caller,
    pub kid: String,
    /// resultSignature and reason ("OK" and a note for a success with a note).
    pub note: Option<(String, String)>,
}

pub(super) fn write_json<T: Serialize>(path: &Path, v: &T) -> std::io::Result<()> {
    let mut b = serde_json::to_vec_pretty(v).expect("JSON serializes");
    b.push(b'\n');
    durable::write_atomic(path, &b, 0o600)
}

impl KeyVault {
    /// Every clear private key file in the vault (`NAME/VERSION.pem` under keys and
    /// deleted-keys, and any left in an interrupted create's staging directory), with
    /// the id its sealed file is bound to. For `vault seal`.
    pub fn clear_key_files(&self) -> Vec<(std::path::PathBuf, String, String)> {
        let vault = self.state.lock().props.name.clone();
        let mut out = Vec::new();
        for sub in [KEYS_DIR, DELETED_DIR] {
            let Ok(rd) = fs::read_dir(self.dir.join(sub)) else {
                continue;
            };
            for kd in rd.filter_map(|e| e.ok()).map(|e| e.path()) {
                let l = kd
                    .file_name()
                    .map(|n| n.to_string_lossy().to_string())
                    .unwrap_or_default();
                let Ok(files) = fs::read_dir(&kd) else {
                    continue;
                };
                for f in files.filter_map(|e| e.ok()) {
                    let name = f.file_name().to_string_lossy().to_string();
                    if let Some(stem) = name.strip_suffix(".pem") {
                        out.push((
                            kd.clone(),
                            stem.to_string(),
                            super::key_file_id(&vault, &l, stem),
                        ));
                    }
                }
            }
        }
        out.sort();
        out
    }

    /// Loads a key's record and private keys; the error names the bad file.
    pub(super) fn load_key(
        custody: &Arc<Custody>,
        vault: &str,
        hsm: Option<&Arc<Hsm>>,
        kd: &Path,
    ) -> Result<KeyEntry, String> {
        let kf = kd.join(KEY_FILE);
        let b = fs::read(&kf).map_err(|e| format!("cannot read {}: {e}", kf.display()))?;
        let rec: KeyRecord =
            serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", kf.display()))?;
        if rec.versions.is_empty() {
            return Err(format!("{}: the key has no versions", kf.display()));
        }
        let mut privs = BTreeMap::new();
        let l = kd
            .file_name()
            .map(|n| n.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        let mut broken = BTreeMap::new();
        let load = |v: &super::VersionRecord| -> Result<HeldKey, String> {
            if v.hsm {
                let Some(hsm) = hsm else {
                    return Err(format!(
                        "version {} is held in an HSM, but the vault has no HSM configured (vault.json 'hsm'); connect it with 'diskvault vault set --hsm-module ...'",
                        v.version
                    ));
                };
                let pf = kd.join(format!("{}.{}", v.version, super::PUBLIC_EXT));
                let pem = fs::read_to_string(&pf).map_err(|e| format!("{}: {e}", pf.display()))?;
                let public = crate::crypto::wrap::RsaPublic::from_pem(&pem)
                    .map_err(|e| format!("{}: {e}", pf.display()))?;
                return Ok(HeldKey::in_token(
                    public,
                    hsm.clone(),
                    super::token_id(&v.version),
                ));
            }
            let id = super::key_file_id(vault, &l, &v.version);
            custody
                .load_key(kd, &v.version, KeyRole::VaultKey, &id)
                .map_err(|e| e.to_string())
        };
        // One bad version file costs that version only; with none left, the key.
        for v in &rec.versions {
            match load(v) {
                Ok(k) => {
                    privs.insert(v.version.clone(), Arc::new(k));
                }
                Err(why) => {
                    log::error!(
                        "key '{}' version {} is unusable: {why}",
                        rec.name,
                        v.version
                    );
                    broken.insert(v.version.clone(), why);
                }
            }
        }
        if privs.is_empty() {
            return Err(broken.into_values().next().unwrap_or_default());
        }
        Ok(KeyEntry { rec, privs, broken })
    }

    /// The name in a key's key.json, if that much of it is readable.
    pub(super) fn recorded_name(kd: &Path) -> Option<String> {
        let v: Value = serde_json::from_slice(&fs::read(kd.join(KEY_FILE)).ok()?).ok()?;
        let name = v.get("name")?.as_str()?.to_string();
        validate_key_name(&name).ok().map(|()| name)
    }

    /// Writes a key's record (atomically) and makes it the live one.
    pub(super) fn save_record(&self, st: &mut State, rec: KeyRecord) -> Result<(), VaultError> {
        let l = rec.name.to_ascii_lowercase();
        Self::entry(st, &l)?;
        write_json(&self.key_dir(&l).join(KEY_FILE), &rec)?;
        Self::entry_mut(st, &l)?.rec = rec;
        st.unsaved.remove(&l);
        Ok(())
    }

    /// `save_record` for a revocation (`what` describes it, e.g. "key 'k1' is
    /// disabled"): if the record can't be written, it becomes the live one anyway, so
    /// the daemon enforces it at once, and the error says it is not saved.
    pub(super) fn save_revocation(
        &self,
        st: &mut State,
        rec: KeyRecord,
        what: Option<String>,
    ) -> Result<(), VaultError> {
        let Some(what) = what else {
            return self.save_record(st, rec);
        };
        let l = rec.name.to_ascii_lowercase();
        Self::entry(st, &l)?;
        if let Err(e) = write_json(&self.key_dir(&l).join(KEY_FILE), &rec) {
            Self::entry_mut(st, &l)?.rec = rec;
            st.unsaved.insert(l);
            return Err(self.not_saved(what, &e.into()));
        }
        Self::entry_mut(st, &l)?.rec = rec;
        st.unsaved.remove(&l);
        Ok(())
    }

    /// Whether the saved record of key `l` (not the one in memory) has a grant for
    /// `object_id`.
    pub(super) fn saved_grant(&self, l: &str, object_id: &str) -> bool {
        fs::read(self.key_dir(l).join(KEY_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice::<KeyRecord>(&b).ok())
            .is_some_and(|r| r.grants.iter().any(|g| g.object_id == object_id))
    }

    /// Moves a deleted key's directory to deleted-keys (or finishes a move that got
    /// as far as the rename).
    pub(super) fn persist_delete(&self, l: &str, del: &Deletion) -> std::io::Result<()> {
        let from = self.key_dir(l);
        let to = self.dir.join(DELETED_DIR).join(l);
        if from.exists() || !to.exists() {
            write_json(&from.join(DELETED_FILE), del)?;
            if let Err(e) = fs::rename(&from, &to) {
                let _ = fs::remove_file(from.join(DELETED_FILE));
                return Err(e);
            }
        }
        durable::sync_dir(&self.dir.join(KEYS_DIR))?;
        durable::sync_dir(&self.dir.join(DELETED_DIR))
    }

    /// Runs `f` under the vault lock and records the outcome in the audit log.
    ///
    /// No operation goes unrecorded (the log survives a full file system):
    /// - A change first reserves room for its record (`AuditLog::reserve`: space
    ///   preallocated past the end of the log, plus some free space for the change's
    ///   own files). If that fails the change is refused before anything happened.
    ///   A record can't be written before the change, as its outcome isn't known yet.
    /// - A read (get, wrap, unwrap) changes nothing, so if its record can't be written
    ///   it fails closed: the key material it produced is dropped.
    /// - Should a change's record still fail after the reservation, the change stands
    ///   (reporting it as failed would invite a second rotate or create); the log is
    ///   back at its last whole record and the daemon log says what happened.
    pub(super) fn audited<T>(
        &self,
        op: &str,
        caller: &Caller,
        id: impl Fn(&State) -> String,
        f: impl FnOnce(&mut State) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.audited_revocation(op, caller, |_| false, id, f)
    }

    /// `audited` for a change that may be a revocation (`revoking` says, under the
    /// lock). A revocation is never refused for lack of audit space: it skips the
    /// reservation, and if its record can't be written the daemon log says so and
    /// the record is written late, before the next one. If `f` could only apply it in
    /// memory (`RevokedNotSaved`), it still counts as a change.
    pub(super) fn audited_revocation<T>(
        &self,
        op: &str,
        caller: &Caller,
        revoking: impl FnOnce(&State) -> bool,
        id: impl Fn(&State) -> String,
        f: impl FnOnce(&mut State) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.audited_if(op, caller, revoking, id, f, |_| true)
    }

    /// The check before a change whose slow part runs without the lock (making an RSA
    /// key): `check` runs as `audited` runs a change, after the reservation, but only
    /// a refusal is recorded. The change is recorded when it is made.
    pub(super) fn audited_check<T>(
        &self,
        op: &str,
        caller: &Caller,
        id: impl Fn(&State) -> String,
        check: impl FnOnce(&State) -> Result<T, VaultError>,
    ) -> Result<T, VaultError> {
        self.audited_if(op, caller, |_| false, id, |st| check(st), Result::is_err)
    }

    /// `audited_revocation` that records the outcome only if `record` says so. An
    /// outcome left unrecorded must have changed nothing: it doesn't count as a change.
    pub(super) fn audited_if<T>(
        &self,
        op: &str,
        caller: &Caller,
        revoking: impl FnOnce(&State) -> bool,
        id: impl Fn(&State) -> String,
        f: impl FnOnce(&mut State) -> Result<T, VaultError>,
        record: impl FnOnce(&Result<T, VaultError>) -> bool,
    ) -> Result<T, VaultError> {
        let mutating = !matches!(op, "KeyGet" | "KeyWrap" | "KeyUnwrap" | "KeyList");
        let mut st = self.state.lock();
        Self::write_late_records(&mut st);
        let revoking = mutating && revoking(&st);
        if mutating && !revoking {
            if let Err(e) = st.audit.reserve() {
                log::error!("refusing {op}: no room for its audit record: {e}");
                return Err(self.audit_unavailable(e));
            }
        }
        let r = f(&mut st);
        if !record(&r) {
            return r;
        }
        let kid = id(&st);
        // Applied in memory counts only in a daemon: a command run on an unmounted
        // store exits without it, so there it is a failure.
        let live = self.live.load(Ordering::Acquire);
        let applied = match &r {
            Ok(_) => true,
            Err(VaultError::RevokedNotSaved { .. }) => live,
            Err(_) => false,
        };
        let note = match &r {
            Ok(_) => None,
            Err(e @ VaultError::RevokedNotSaved { .. }) if live => {
                Some(("OK".to_string(), format!("applied in memory only: {e}")))
            }
            Err(e) => Some((e.signature().to_string(), e.to_string())),
        };
        let note_ref = note.as_ref().map(|(s, m)| (s.as_str(), m.as_str()));
        if let Err(e) = st.audit.append(op, caller, &kid, note_ref) {
            match (applied, mutating) {
                (true, true) if revoking => {
                    log::error!(
                        "{op} on {kid} (a revocation) was carried out, but its audit record could not be written: {e}; it is written late, before the next record"
                    );
                    st.late.push(LateRecord {
                        time: now_iso(),
                        op: op.to_string(),
                        caller: caller.clone(),
                        kid: kid.clone(),
                        note,
                    });
                }
                (true, true) => log::error!(
                    "{op} on {kid} was carried out, but its audit record could not be written: {e}"
                ),
                (true, false) => {
                    log::error!("refusing {op} on {kid}: cannot write its audit record: {e}");
                    return Err(self.audit_unavailable(e));
                }
                (false, _) => {
                    log::error!("cannot record the failed {op} in the audit log: {e}")
                }
            }
        }
        drop(st);
        if applied && mutating {
            self.changed();
        }
        r
    }

    /// Writes the records owed by revocations, oldest first, while the log takes them.
    fn write_late_records(st: &mut State) {
        while let Some(l) = st.late.first() {
            let late = format!("recorded late; the operation was at {}", l.time);
            let (sig, why) = match &l.note {
                Some((s, m)) => (s.as_str(), format!("{late}; {m}")),
                None => ("OK", late),
            };
            if st
                .audit
                .append(&l.op, &l.caller, &l.kid, Some((sig, &why)))
                .is_err()
            {
                return;
            }
            st.late.remove(0);
        }
    }

    /// A revocation that could not be saved, applied in memory.
    pub(super) fn not_saved(&self, what: String, e: &VaultError) -> VaultError {
        let errno = match e {
            VaultError::Io(io) => io.raw_os_error().unwrap_or(libc::ENOSPC),
            _ => libc::ENOSPC,
        };
        let reason = match e {
            VaultError::Io(io) => io.to_string(),
            e => e.to_string(),
        };
        let live = self.live.load(Ordering::Acquire);
        log::error!(
            "{what}{}, but the change could not be saved: {reason}",
            if live { " in memory" } else { "" }
        );
        VaultError::RevokedNotSaved {
            what,
            reason,
            dir: self.dir.display().to_string(),
            live,
            errno,
        }
    }

    fn audit_unavailable(&self, source: std::io::Error) -> VaultError {
        VaultError::AuditUnavailable {
            path: self.dir.join(audit::AUDIT_FILE).display().to_string(),
            source,
        }
    }

    /// Records an event that is not a key operation of this module (e.g. a DES
    /// being refused), so the log stays complete.
    /// If the log can't take it now (a full file system), it is written late, like a
    /// revocation's: the effects of revocations must be on record too.
    pub fn audit_event(&self, op: &str, caller: &Caller, kid: &str, failure: Option<(&str, &str)>) {
        let mut st = self.state.lock();
        Self::write_late_records(&mut st);
        if let Err(e) = st.audit.append(op, caller, kid, failure) {
            log::error!("cannot append {op} on {kid} to the audit log: {e}; it is written late, before the next record");
            st.late.push(LateRecord {
                time: now_iso(),
                op: op.to_string(),
                caller: caller.clone(),
                kid: kid.to_string(),
                note: failure.map(|(s, m)| (s.to_string(), m.to_string())),
            });
        }
    }

    /// Records many events (one per disk of a revocation) in one append and one
    /// fsync. If the log can't take them now, each is written late, as one event is.
    pub fn audit_events(&self, events: &[OwnedEvent]) {
        if events.is_empty() {
            return;
        }
        let mut st = self.state.lock();
        Self::write_late_records(&mut st);
        let batch: Vec<audit::Event<'_>> = events
            .iter()
            .map(|e| audit::Event {
                operation: &e.op,
                caller: &e.caller,
                key_id: &e.kid,
                failure: e.note.as_ref().map(|(s, m)| (s.as_str(), m.as_str())),
            })
            .collect();
        if let Err(e) = st.audit.append_many(&batch) {
            log::error!(
                "cannot append {} records ({} first) to the audit log: {e}; they are written late, before the next record",
                events.len(),
                events[0].op
            );
            let time = now_iso();
            for e in events {
                st.late.push(LateRecord {
                    time: time.clone(),
                    op: e.op.clone(),
                    caller: e.caller.clone(),
                    kid: e.kid.clone(),
                    note: e.note.clone(),
                });
            }
        }
    }
}

impl Drop for KeyVault {
    /// Last chance for records owed to the audit log; what still finds no room is
    /// named in the daemon log, so its loss is on record there.
    fn drop(&mut self) {
        let st = self.state.get_mut();
        Self::write_late_records(st);
        for l in &st.late {
            log::error!(
                "audit record lost at shutdown (no room in the audit log): {} on {} at {}",
                l.op,
                l.kid,
                l.time
            );
        }
    }
}

//! What a reconciler pass does with its verdicts: the revocations' side effects in
//! one go (cached pages, VMs, one log line, the audit records in one append), the
//! restores, and the key fingerprints that let a pass ask once per set and key
//! versions.

use super::*;
use crate::vault::keyvault::OwnedEvent;
use crate::vault::Caller;

impl Store {
    /// After the revocations of a pass: cached pages, VMs, one summary log line and the
    /// audit records in one append.
    pub(super) fn finish_revocations(&self, revoked: &[(Arc<Disk>, Revocation, Caller, String)]) {
        if revoked.is_empty() {
            return;
        }
        if let Some(inv) = self.reconcile.invalidator.get() {
            for (d, r, ..) in revoked {
                if !r.keep_open {
                    inv(d);
                }
            }
        }
        if let Some(hook) = self.reconcile.on_revoke.get() {
            for (d, r, ..) in revoked {
                hook(d, r);
            }
        }
        let mut events = Vec::with_capacity(revoked.len());
        for (d, r, caller, kid) in revoked {
            log::debug!("{} '{}': {}", d.kind, d.name(), r.reason);
            events.push(OwnedEvent {
                op: "DiskAccessRevoked".into(),
                caller: caller.clone(),
                kid: format!("{} ({kid})", d.kind.resource_id(&d.name())),
                note: Some(("OK".into(), r.reason.clone())),
            });
        }
        let objs: Vec<&Arc<Disk>> = revoked.iter().map(|(d, ..)| d).collect();
        log::warn!(
            "revoked {} ({})",
            summarize(&objs),
            revoked[0].1.reason.trim_start_matches("Revoked: ")
        );
        self.keys.vault.audit_events(&events);
    }

    /// Lifts the revocations of objects whose key is usable again; an object that is
    /// open unwraps its keys here, the others at their next open.
    pub(super) fn finish_restores(&self, restores: &[(Arc<Disk>, String)]) {
        let mut events = Vec::new();
        let mut done = Vec::new();
        for (d, kid) in restores {
            let m = d.meta();
            let caller = self
                .keys
                .des(m.encryption.disk_encryption_set_id.as_deref().unwrap_or(""))
                .map(|s| s.caller())
                .unwrap_or_else(|_| Caller::current_user());
            match d.restore() {
                Ok(()) => {
                    log::debug!("{} '{}': key access restored", d.kind, m.name);
                    events.push(OwnedEvent {
                        op: "DiskAccessRestored".into(),
                        caller,
                        kid: format!("{} ({kid})", d.kind.resource_id(&m.name)),
                        note: Some(("OK".into(), "the key unwraps again".into())),
                    });
                    done.push(d);
                }
                Err(e) => log::warn!("{} '{}': cannot restore yet: {e}", d.kind, m.name),
            }
        }
        if !done.is_empty() {
            log::info!("key access restored to {}", summarize(&done));
        }
        self.keys.vault.audit_events(&events);
    }
}

/// A fingerprint of `access_key`, computed without allocating; None for an object
/// without a customer key.
pub(super) fn access_fingerprint(m: &DiskMeta) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    if !m.encryption.kind.uses_customer_key() {
        return None;
    }
    let mut h = std::collections::hash_map::DefaultHasher::new();
    m.encryption.disk_encryption_set_id.hash(&mut h);
    let rekey_layers = m.rekey.iter().flat_map(|r| r.layers.iter());
    for l in m.layers.iter().chain(rekey_layers) {
        l.kid.hash(&mut h);
    }
    Some(h.finish())
}

/// Whether `m`'s set and key versions are exactly `key`.
pub(super) fn same_access(m: &DiskMeta, key: &(String, Vec<String>)) -> bool {
    let rekey_layers = m.rekey.iter().flat_map(|r| r.layers.iter());
    m.encryption
        .disk_encryption_set_id
        .as_deref()
        .unwrap_or_default()
        == key.0
        && m.layers
            .iter()
            .chain(rekey_layers)
            .map(|l| l.kid.as_str())
            .eq(key.1.iter().map(|s| s.as_str()))
}

/// What decides a customer-key object's access: its set and every key version it uses.
pub(super) fn access_key(m: &DiskMeta) -> (String, Vec<String>) {
    let rekey_layers = m.rekey.iter().flat_map(|r| r.layers.iter());
    (
        m.encryption
            .disk_encryption_set_id
            .clone()
            .unwrap_or_default(),
        m.layers
            .iter()
            .chain(rekey_layers)
            .map(|l| l.kid.clone())
            .collect(),
    )
}

/// "3 disks and 1 snapshot: d1, d2, d3, s1", at most 10 names, for one log line.
pub(crate) fn summarize(objs: &[&Arc<Disk>]) -> String {
    let count = |k: ObjectKind| objs.iter().filter(|d| d.kind == k).count();
    let parts: Vec<String> = ObjectKind::ALL
        .iter()
        .map(|&k| (k, count(k)))
        .filter(|&(_, n)| n > 0)
        .map(|(k, n)| format!("{n} {}{}", k.noun(), if n == 1 { "" } else { "s" }))
        .collect();
    let names: Vec<String> = objs.iter().take(10).map(|d| d.name()).collect();
    let more = if objs.len() > 10 {
        format!(" (first 10 of {})", objs.len())
    } else {
        String::new()
    };
    format!("{}: {}{more}", parts.join(" and "), names.join(", "))
}

//! Keeping disks in step with the vault: revocation and restore of customer-key disks,
//! auto-rotation of disk encryption sets to a key's latest version, and finishing
//! interrupted key changes. `Store::reconcile` is one pass; the daemon runs it on a
//! thread, woken by every vault change and at least every 100 ms.

use super::des::ProvisioningState;
use super::health::Health;
use super::revoke::{access_fingerprint, access_key, same_access};
use super::*;
use crate::vault::{Caller, KeyId, VaultError};
use parking_lot::Condvar;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// How long the emulation waits before acting, as Azure does (up to an hour there).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delays {
    /// From a key becoming unusable to its disks failing.
    pub revocation: Duration,
    /// From a new key version to the re-wrap of auto-rotating sets.
    pub auto_rotation: Duration,
}

/// Called with a disk whose cached plaintext pages must go (set by the FUSE layer).
pub type Invalidator = Box<dyn Fn(&Disk) + Send + Sync>;

/// Called with a disk just revoked, after its I/O has begun to fail (set by the VM
/// supervisor, which stops the VMs that use it). It returns once they are stopped.
pub type RevokeHook = Box<dyn Fn(&Disk, &Revocation) + Send + Sync>;

#[derive(Default)]
pub(super) struct ReconcileState {
    pub delays: Mutex<Delays>,
    /// Disks whose key became unusable, and since when (for the revocation delay).
    pending: Mutex<HashMap<u64, Instant>>,
    pub invalidator: std::sync::OnceLock<Invalidator>,
    pub on_revoke: std::sync::OnceLock<RevokeHook>,
    wake: Mutex<bool>,
    cond: Condvar,
    stop: std::sync::atomic::AtomicBool,
    /// Vault generation at the last retry of an unfinished key change.
    retried_at: AtomicU64,
    /// Completed passes, shown in status.json so callers can wait for one.
    pub passes: AtomicU64,
    /// Passes started; a pass numbered above a change's snapshot saw the change.
    started: AtomicU64,
    done: Mutex<()>,
    done_cond: Condvar,
    /// Whether the thread that enforces key state is alive and well.
    pub health: Arc<Health>,
}

/// The text of a panic's payload (a caught one, or the panic hook's).
pub fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// Marks the reconciler thread as gone when it ends for any reason but shutdown.
struct ExitGuard(Arc<Health>, std::sync::Weak<Store>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        let stopping = self
            .1
            .upgrade()
            .is_none_or(|s| s.reconcile.stop.load(Ordering::Acquire));
        if !stopping {
            log::error!(
                "the reconciler thread ended; customer-key disks fail closed until remount"
            );
            self.0.exited.store(true, Ordering::Release);
            if let Some(s) = self.1.upgrade() {
                s.drop_customer_key_caches();
            }
        }
    }
}

/// Why a disk's customer key can't be used right now.
#[derive(Clone)]
pub(super) struct KeyDenied {
    /// A short phrase for `keyState`.
    pub why: String,
    /// Who was refused, for the audit record of a revocation.
    pub caller: Caller,
    /// The key or set file is corrupt: the disk is unavailable, not revoked.
    pub broken: bool,
    /// The key's holder can't be reached (its HSM token, the store's KEK): the disk
    /// stops serving at once (fail closed) and shows `Unavailable`, and is restored
    /// when the holder answers again.
    pub outage: bool,
}

impl KeyDenied {
    fn new(e: &StoreError, caller: Caller) -> Self {
        KeyDenied {
            why: revocation_phrase(e),
            caller,
            broken: matches!(
                e,
                StoreError::DesCorrupt { .. } | StoreError::Vault(VaultError::KeyCorrupt { .. })
            ),
            outage: matches!(
                e,
                StoreError::Vault(
                    VaultError::HsmUnavailable(_)
                        | VaultError::HsmKeyMissing(_)
                        | VaultError::KekUnavailable(_)
                )
            ),
        }
    }
}

/// A short phrase for why a key no longer unwraps, for `keyState`.
fn revocation_phrase(e: &StoreError) -> String {
    match e {
        StoreError::Vault(v) => match v {
            VaultError::KeyDisabled(k) => format!("key {k} disabled"),
            VaultError::VersionDisabled(kid) => format!("key version {kid} disabled"),
            VaultError::KeyDeleted(k) => format!("key {k} deleted"),
            VaultError::KeyNotFound(k) => format!("key {k} not found (purged)"),
            VaultError::VersionNotFound(k, v) => format!("key {k} version {v} not found"),
            VaultError::Forbidden { key, caller } => {
                format!("access of {caller} to key {key} revoked")
            }
            VaultError::OperationNotAllowed { op, kid } => {
                format!("{op} no longer permitted on {kid}")
            }
            other => other.to_string(),
        },
        StoreError::DesNotFound(d) => format!("disk encryption set {d} deleted"),
        other => other.to_string(),
    }
}

impl Store {
    pub fn set_delays(&self, d: Delays) {
        *self.reconcile.delays.lock() = d;
    }

    /// Where revoked disks' cached pages are dropped (the FUSE notifier).
    pub fn set_invalidator(&self, f: Invalidator) {
        let _ = self.reconcile.invalidator.set(f);
    }

    pub fn set_revoke_hook(&self, f: RevokeHook) {
        let _ = self.reconcile.on_revoke.set(f);
    }

    /// Asks the reconciler thread for a pass now.
    pub fn nudge(&self) {
        *self.reconcile.wake.lock() = true;
        self.reconcile.cond.notify_all();
    }

    /// Runs `reconcile` until the store shuts down. A panicking pass is caught, logged
    /// and retried; until a pass succeeds, customer-key disks fail closed (`Health`).
    pub fn spawn_reconciler(self: &Arc<Self>) -> Result<std::thread::JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        let health = self.reconcile.health.clone();
        health.beat();
        health.enforcing.store(true, Ordering::Release);
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || {
                let _exit = ExitGuard(health.clone(), weak.clone());
                loop {
                    let Some(store) = weak.upgrade() else { return };
                    if store.reconcile.stop.load(Ordering::Acquire) {
                        return;
                    }
                    store.supervised_pass();
                    let mut woken = store.reconcile.wake.lock();
                    if !*woken {
                        let wait = if health.failed.load(Ordering::Acquire) {
                            // Back off a little while passes keep failing.
                            Duration::from_millis(500)
                        } else {
                            Duration::from_millis(100)
                        };
                        store.reconcile.cond.wait_for(&mut woken, wait);
                    }
                    *woken = false;
                }
            })
            .map_err(|e| StoreError::io("starting the reconciler thread", e))
    }

    /// One pass, with a panic caught and recorded instead of ending the thread.
    fn supervised_pass(&self) {
        let h = &self.reconcile.health;
        h.beat();
        h.in_pass.store(true, Ordering::Release);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.reconcile()));
        h.in_pass.store(false, Ordering::Release);
        match r {
            Ok(()) => {
                if h.failed.swap(false, Ordering::AcqRel) {
                    log::warn!("reconciler recovered; key state is enforced again");
                }
                *h.failure.lock() = None;
            }
            Err(p) => {
                let msg = panic_text(&*p);
                h.panics.fetch_add(1, Ordering::AcqRel);
                log::error!(
                    "reconciler pass panicked: {msg}; restarting it (customer-key disks fail closed until a pass succeeds)"
                );
                *h.failure.lock() = Some(format!("{msg} at {}", now_rfc3339()));
                if !h.failed.swap(true, Ordering::AcqRel) {
                    self.drop_customer_key_caches();
                }
                // Wake anyone waiting for this pass: it is over, unsuccessfully.
                let _g = self.reconcile.done.lock();
                self.reconcile.done_cond.notify_all();
            }
        }
    }

    pub(super) fn stop_reconciler(&self) {
        self.reconcile.stop.store(true, Ordering::Release);
        self.nudge();
    }

    /// Whether every customer-key layer of a disk can be unwrapped right now.
    pub(super) fn key_access(&self, m: &DiskMeta) -> std::result::Result<(), KeyDenied> {
        let id = m.encryption.disk_encryption_set_id.as_deref().unwrap_or("");
        let des = match self.keys.des(id) {
            Ok(d) => d,
            Err(e) => return Err(KeyDenied::new(&e, Caller::current_user())),
        };
        let rekey_layers = m.rekey.iter().flat_map(|r| r.layers.iter());
        for l in m.layers.iter().chain(rekey_layers) {
            let usable = KeyId::parse(&l.kid)
                .map_err(StoreError::from)
                .and_then(|key| match LayerKind::of(&key) {
                    LayerKind::Platform => Ok(()),
                    LayerKind::Customer => self.keys.usable_for_unwrap(&des.caller(), &key),
                });
            if let Err(e) = usable {
                return Err(KeyDenied::new(&e, des.caller()));
            }
        }
        Ok(())
    }

    /// Without a daemon (a CLI command on an unmounted store): auto-rotation and
    /// unfinished key changes only. Nothing is open, so there is nothing to revoke, and
    /// rotation policies run only while mounted.
    pub fn reconcile_offline(&self) {
        self.auto_rotate();
        self.retry_key_changes();
    }

    /// Runs a pass that starts after this call, on the reconciler thread, and waits up
    /// to `limit` for it: after a control write returns, its revocations, restores and
    /// auto-rotations have happened. The wait is bounded so that a pass stuck behind
    /// busy FUSE threads can't hold the writer forever. Fails (closed) if the
    /// reconciler can't run: the caller's change may then not be enforced by it, and
    /// customer-key disks refuse I/O until it runs again.
    pub fn reconcile_now(&self, limit: Duration) -> Result<()> {
        let h = &self.reconcile.health;
        let down = |why: String| Err(StoreError::EnforcementDown(why));
        if let Some(why) = h.down() {
            return down(why);
        }
        let target = self.reconcile.started.load(Ordering::Acquire) + 1;
        let panics = h.panics.load(Ordering::Acquire);
        self.nudge();
        let deadline = Instant::now() + limit;
        let mut g = self.reconcile.done.lock();
        while self.reconcile.passes.load(Ordering::Acquire) < target {
            if h.panics.load(Ordering::Acquire) != panics {
                drop(g);
                return down(
                    h.down()
                        .unwrap_or_else(|| "a reconciler pass panicked".into()),
                );
            }
            if self
                .reconcile
                .done_cond
                .wait_until(&mut g, deadline)
                .timed_out()
            {
                drop(g);
                if let Some(why) = h.down() {
                    return down(why);
                }
                log::warn!("reconciler pass took longer than {limit:?}; not waiting for it");
                return Ok(());
            }
        }
        Ok(())
    }

    /// Drops the cached pages of every customer-key disk, so that failing closed
    /// covers what the kernel already holds.
    fn drop_customer_key_caches(&self) {
        let Some(inv) = self.reconcile.invalidator.get() else {
            return;
        };
        for d in self.served() {
            if d.meta().encryption.kind.uses_customer_key() {
                inv(&d);
            }
        }
    }

    /// Why customer-key disks can't be served now, if the reconciler is down.
    pub fn enforcement_down(&self) -> Option<String> {
        self.reconcile.health.down()
    }

    /// One pass: revocations and restores, auto-rotation, unfinished key changes.
    pub fn reconcile(&self) {
        self.reconcile.started.fetch_add(1, Ordering::AcqRel);
        let h = &self.reconcile.health;
        self.reconcile_access();
        h.beat();
        self.auto_rotate();
        h.beat();
        self.retry_key_changes();
        h.beat();
        self.keys.vault.run_policies();
        let _g = self.reconcile.done.lock();
        self.reconcile.passes.fetch_add(1, Ordering::AcqRel);
        self.reconcile.done_cond.notify_all();
    }

    /// Whether the disk's key is unusable but the revocation delay has not passed yet.
    pub(super) fn revocation_pending(&self, d: &Disk) -> bool {
        self.reconcile.pending.lock().contains_key(&d.serial)
    }

    /// Reconciler passes completed so far.
    pub fn reconcile_passes(&self) -> u64 {
        self.reconcile.passes.load(Ordering::Acquire)
    }

    /// Revokes customer-key objects whose key became unusable and restores those whose
    /// key is usable again. A key's verdict is asked once per pass for all objects that
    /// share its set and key versions, every object is revoked before any is
    /// invalidated or reported, and the audit records of a pass go in one append: the
    /// last of 10,000 objects fails about as soon as the first.
    pub(super) fn reconcile_access(&self) {
        crate::fault::point("reconcile.access");
        let delay = self.reconcile.delays.lock().revocation;
        let now = Instant::now();
        // Verdicts by a fingerprint of (set, key versions), each kept with what it was
        // computed for, so a fingerprint collision can't lend one key's verdict to
        // another; a hit costs no allocation.
        type Verdict = std::result::Result<(), KeyDenied>;
        let mut verdicts: HashMap<u64, ((String, Vec<String>), Verdict)> = HashMap::new();
        let mut revoked: Vec<(Arc<Disk>, Revocation, Caller, String)> = Vec::new();
        let mut restores: Vec<(Arc<Disk>, String)> = Vec::new();
        for d in self.served() {
            self.reconcile.health.beat();
            if d.corrupt_reason().is_some() {
                continue;
            }
            let Some(fp) = d.with_meta(access_fingerprint) else {
                continue;
            };
            let cached = verdicts
                .get(&fp)
                .filter(|(key, _)| d.with_meta(|m| same_access(m, key)))
                .map(|(_, v)| v.clone());
            let verdict = match cached {
                Some(v) => v,
                None => {
                    let m = d.meta();
                    let v = self.key_access(&m);
                    verdicts.insert(fp, (access_key(&m), v.clone()));
                    v
                }
            };
            match verdict {
                // A corrupt key or set is no revocation: its disks never unlocked
                // (both are loaded at mount) and show `Unavailable`.
                Err(denied) if denied.broken => {
                    self.reconcile.pending.lock().remove(&d.serial);
                }
                Err(KeyDenied {
                    why,
                    caller,
                    outage,
                    ..
                }) => {
                    if d.is_revoked() {
                        continue;
                    }
                    let since = *self.reconcile.pending.lock().entry(d.serial).or_insert(now);
                    if !outage && now.duration_since(since) < delay {
                        continue;
                    }
                    self.reconcile.pending.lock().remove(&d.serial);
                    let m = d.meta();
                    let kid = m.layers[0].kid.clone();
                    let sku: Sku = m.sku.parse().unwrap_or_default();
                    let keep_open = matches!(sku, Sku::UltraSsdLrs | Sku::PremiumV2Lrs);
                    let state = if outage { "Unavailable" } else { "Revoked" };
                    let mut reason = format!("{state}: {why} at {}", now_rfc3339());
                    if keep_open {
                        reason +=
                            &format!("; open handles keep working until closed ({})", sku.name());
                    }
                    let revocation = Revocation { reason, keep_open };
                    // Revoked at once; what is slower (invalidation, VMs, records) waits
                    // until every object of the pass has stopped serving.
                    d.revoke(revocation.clone());
                    revoked.push((d, revocation, caller, kid));
                }
                Ok(()) => {
                    self.reconcile.pending.lock().remove(&d.serial);
                    if d.is_revoked() {
                        let kid = d.with_meta(|m| m.layers[0].kid.clone());
                        restores.push((d, kid));
                    }
                }
            }
        }
        self.finish_revocations(&revoked);
        self.finish_restores(&restores);
    }

    /// Moves auto-rotating sets to their key's latest version.
    fn auto_rotate(&self) {
        let delay = self.reconcile.delays.lock().auto_rotation;
        for rec in self.des_list() {
            if !rec.rotation_to_latest_key_version_enabled
                || rec.auto_key_rotation_error.is_some()
                || rec.provisioning_state != ProvisioningState::Succeeded
            {
                continue;
            }
            let Ok(key) = KeyId::parse(&rec.active_key) else {
                continue;
            };
            // A deleted key is a revocation, not a rotation failure.
            let Ok(latest) = self.keys.describe(&key.versionless()) else {
                continue;
            };
            let latest = latest.kid.to_string();
            if latest == rec.active_key {
                continue;
            }
            let age = self.keys.vault.version_age(&latest).unwrap_or_default();
            if age < delay {
                continue;
            }
            log::info!(
                "auto-rotating disk encryption set '{}' to {latest}",
                rec.name
            );
            if let Err(e) = self.des_update_inner(&rec.name, Some(&latest), None, None, false) {
                log::error!(
                    "auto-rotation of disk encryption set '{}' failed: {e}",
                    rec.name
                );
                if let Ok(mut cur) = self.keys.des(&rec.name) {
                    cur.auto_key_rotation_error = Some(format!(
                        "Auto-key rotation was disabled for DiskEncryptionSet '{}' because re-wrapping with {latest} failed: {e}. Fix the cause, then run 'diskvault des update {} --auto-rotate true' to resume it.",
                        rec.name, rec.name
                    ));
                    if let Err(e) = self.save_des(&cur) {
                        log::error!("{e}");
                    }
                }
            }
        }
    }

    /// Retries key changes left unfinished (e.g. the old key was unusable) whenever
    /// the vault has changed since the last try.
    fn retry_key_changes(&self) {
        let generation = self.keys.vault.generation();
        if self.reconcile.retried_at.swap(generation, Ordering::AcqRel) == generation {
            return;
        }
        for mut rec in self.des_list() {
            if rec.provisioning_state == ProvisioningState::Updating {
                let _ns = self.ns.lock();
                if let Err(e) = self.finish_key_change(&mut rec) {
                    log::warn!("{e}");
                }
            }
        }
    }
}

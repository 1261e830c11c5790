//! The reconciler's health (see `Health`), apart from the reconciler so that disks
//! depend on it and not on the reconciler.

use parking_lot::Mutex;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A pass that has not moved on for this long counts as stuck.
/// Generous: a pass may generate an RSA-4096 key for a rotation policy, which takes
/// seconds; each step and each disk of a re-wrap counts as progress.
const STALL: Duration = Duration::from_secs(60);

/// The reconciler's health, which the data path consults: while the thread that
/// enforces revocations can't run, customer-key disks fail closed rather than keep
/// serving under a key that may have been revoked.
#[derive(Default)]
pub struct Health {
    /// Set once a daemon runs the reconciler; offline commands never enforce.
    pub(super) enforcing: AtomicBool,
    /// The reconciler thread has ended while the store is still open.
    pub(super) exited: AtomicBool,
    /// Why the last pass failed (a panic), until a pass succeeds.
    pub(super) failure: Mutex<Option<String>>,
    pub(super) failed: AtomicBool,
    pub(super) panics: AtomicU64,
    /// Milliseconds since `epoch` at the last sign of progress, while a pass runs.
    pub(super) in_pass: AtomicBool,
    beat: AtomicU64,
    epoch: OnceLock<Instant>,
}

impl Health {
    fn now_ms(&self) -> u64 {
        self.epoch.get_or_init(Instant::now).elapsed().as_millis() as u64
    }

    /// Marks progress of the current pass.
    pub fn beat(&self) {
        self.beat.store(self.now_ms(), Ordering::Release);
    }

    /// Why key state can't be enforced right now, if it can't.
    pub fn down(&self) -> Option<String> {
        if !self.enforcing.load(Ordering::Acquire) {
            return None;
        }
        if self.exited.load(Ordering::Acquire) {
            return Some("the reconciler thread has stopped".into());
        }
        if self.failed.load(Ordering::Acquire) {
            let why = self.failure.lock().clone().unwrap_or_default();
            return Some(format!("the reconciler failed: {why}"));
        }
        if self.in_pass.load(Ordering::Acquire) {
            let idle = self
                .now_ms()
                .saturating_sub(self.beat.load(Ordering::Acquire));
            if idle > STALL.as_millis() as u64 {
                return Some(format!(
                    "the reconciler has made no progress for {} s",
                    idle / 1000
                ));
            }
        }
        None
    }

    /// How the reconciler is doing, for status.
    pub fn report(&self) -> HealthReport {
        let down = self.down();
        let state = match &down {
            None if self.enforcing.load(Ordering::Acquire) => "Running",
            None => "NotRunning",
            Some(_) if self.exited.load(Ordering::Acquire) => "Stopped",
            Some(_) if self.failed.load(Ordering::Acquire) => "Failing",
            Some(_) => "Stalled",
        };
        HealthReport {
            state,
            error: down,
            panics: self.panics.load(Ordering::Acquire),
        }
    }
}

/// The reconciler's state: Running, NotRunning, Failing, Stalled or Stopped, why it
/// is down, and how many of its passes panicked.
#[derive(Clone, Debug, serde::Serialize)]
pub struct HealthReport {
    pub state: &'static str,
    pub error: Option<String>,
    pub panics: u64,
}

//! Fault injection for crash tests: `DISKVAULT_FAULT=POINT=N` makes the process kill
//! itself with SIGKILL the N-th time it reaches `point(POINT)`. Unset, a point costs
//! one relaxed load.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

static ARMED: AtomicBool = AtomicBool::new(true);

fn plan() -> &'static Option<(String, u64)> {
    static PLAN: OnceLock<Option<(String, u64)>> = OnceLock::new();
    PLAN.get_or_init(|| {
        let v = std::env::var("DISKVAULT_FAULT").ok()?;
        let (name, n) = v.split_once('=')?;
        let p = Some((name.to_string(), n.parse().ok()?));
        if p.is_none() {
            ARMED.store(false, Ordering::Relaxed);
        }
        p
    })
}

/// Marks a point where a crash must leave the store consistent.
pub fn point(name: &str) {
    if !ARMED.load(Ordering::Relaxed) {
        return;
    }
    let Some((target, n)) = plan() else {
        ARMED.store(false, Ordering::Relaxed);
        return;
    };
    if target != name {
        return;
    }
    static HITS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
    let mut hits = HITS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let c = hits.entry(name.to_string()).or_insert(0);
    *c += 1;
    if *c == *n {
        log::warn!("fault injection: killing the process at {name} #{n}");
        // Safe because: kill(2) with our own pid and a valid signal has no memory effects.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

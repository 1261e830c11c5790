//! Fault injection for crash tests, compiled only with the `testing` feature (which
//! the test suite turns on), so a release build can't be told to kill itself.
//!
//! `DISKVAULT_FAULT=POINT=N` makes the process kill itself with SIGKILL the N-th time
//! it reaches `point(POINT)`; `POINT=N:panic` panics the calling thread instead (to
//! test that a dying background thread is noticed), and `POINT=N+:panic` panics every
//! time from the N-th on; `POINT=1+:panic-if=PATH` panics at every hit while PATH
//! exists, so a test decides when; `POINT=N:wait-while=PATH` holds the thread at the
//! N-th hit until PATH is gone (a test shows what runs while a step is held). Unset,
//! a point costs one relaxed load.

#[cfg(feature = "testing")]
mod imp {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Mutex, OnceLock};

    static ARMED: AtomicBool = AtomicBool::new(true);

    struct Plan {
        name: String,
        n: u64,
        panic: bool,
        repeat: bool,
        only_if: Option<std::path::PathBuf>,
        wait_while: Option<std::path::PathBuf>,
    }

    fn plan() -> &'static Option<Plan> {
        static PLAN: OnceLock<Option<Plan>> = OnceLock::new();
        PLAN.get_or_init(|| {
            let v = std::env::var("DISKVAULT_FAULT").ok()?;
            let (name, rest) = v.split_once('=')?;
            let (count, action) = rest.split_once(':').unwrap_or((rest, "kill"));
            let (count, repeat) = match count.strip_suffix('+') {
                Some(c) => (c, true),
                None => (count, false),
            };
            Some(Plan {
                name: name.to_string(),
                n: count.parse().ok()?,
                panic: action.starts_with("panic"),
                repeat,
                only_if: action.strip_prefix("panic-if=").map(Into::into),
                wait_while: action.strip_prefix("wait-while=").map(Into::into),
            })
        })
    }

    pub fn point(name: &str) {
        if !ARMED.load(Ordering::Relaxed) {
            return;
        }
        let Some(p) = plan() else {
            ARMED.store(false, Ordering::Relaxed);
            return;
        };
        if p.name != name {
            return;
        }
        static HITS: OnceLock<Mutex<HashMap<String, u64>>> = OnceLock::new();
        let c = {
            let mut hits = HITS
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(|e| e.into_inner());
            let c = hits.entry(name.to_string()).or_insert(0);
            *c += 1;
            *c
        };
        if p.only_if.as_ref().is_some_and(|f| !f.exists()) {
            return;
        }
        if c == p.n || (p.repeat && c > p.n) {
            if let Some(f) = &p.wait_while {
                log::warn!(
                    "fault injection: holding {name} #{c} while {} exists",
                    f.display()
                );
                while f.exists() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                return;
            }
            if p.panic {
                panic!("fault injection: panic at {name} #{c}");
            }
            log::warn!("fault injection: killing the process at {name} #{c}");
            // Safe because: kill(2) with our own pid and a valid signal has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
        }
    }
}

/// Marks a point where a crash must leave the store consistent.
#[inline(always)]
pub fn point(_name: &str) {
    #[cfg(feature = "testing")]
    imp::point(_name);
}

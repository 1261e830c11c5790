//! Delta merge: a delta that is no object's top any more (its snapshot was deleted)
//! and that has the same delta directly above it in every stack that holds it is
//! folded into that delta, so a disk's stack stays about as deep as its live
//! snapshots, however long a snapshot schedule runs.
//!
//! Merging D into D' (the delta above) copies up, as ciphertext (same DEKs, same
//! units), every unit D holds that D' neither holds nor whites out, and appends to
//! D''s whiteout log the whiteouts of D that D' does not override. Every stack holding
//! D reads D' over D, so what any object reads never changes while this runs, and a
//! crash at any point leaves every object byte-identical. Then each object drops D
//! from its stack (one atomic metadata write each; a crash between them leaves some
//! stacks with D under D', which read the same), and D is removed. The next pass, or
//! the next mount, finishes what a crash interrupted.
//!
//! Merges run on their own thread, with a bounded I/O rate, and hold `Store::ns`
//! only for the commit. They pause while any object of the family is revoked or key
//! state is not enforced, and give up (to retry later) on any error, ENOSPC included.

use super::delta::whiteout_path;
use super::delta::{append_whiteouts, delta_path, read_whiteouts, remove_delta, scan_data};
use super::disk::layered::open_ro;
use super::disk::units::{is_zero, UNIT};
use super::extents::RangeSet;
use super::*;
use parking_lot::Condvar;
use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

/// Bytes a merge copies per second at most, so a merge never starves disk I/O.
pub const MERGE_RATE: u64 = 256 << 20;
/// Units copied per step (a step holds a disk's stripe locks for a live top).
const STEP: u64 = 256;

#[derive(Default)]
pub(super) struct MergeState {
    /// One merge at a time.
    running: Mutex<()>,
    wake: Mutex<bool>,
    cond: Condvar,
    pub stop: std::sync::atomic::AtomicBool,
    /// Merges finished since the mount.
    pub done: AtomicU64,
    /// A merge thread runs (it also does the reclaim deletes queue).
    pub background: std::sync::atomic::AtomicBool,
    /// Why the last merge stopped short, if it did.
    pub last_error: Mutex<Option<String>>,
    /// Percent done of full snapshot copies under way, by the snapshot's serial.
    pub progress: Mutex<HashMap<u64, u64>>,
}

/// A merge to do: `lower` into `upper`, and the objects whose stacks hold `lower`.
struct Merge {
    lower: String,
    upper: String,
    holders: Vec<Arc<Disk>>,
}

impl Store {
    /// Wakes the merge thread (after a delete).
    pub fn nudge_merges(&self) {
        *self.merges.wake.lock() = true;
        self.merges.cond.notify_all();
    }

    /// Merges finished since the store was opened.
    pub fn merges_done(&self) -> u64 {
        self.merges.done.load(Ordering::Acquire)
    }

    /// `merges.json`: dead deltas waiting to be merged (paused ones included) plus
    /// deltas a delete queued for space reclaim, merges done since the mount, whether
    /// the merge thread is at work now, and why the last merge stopped short.
    pub fn merge_status(&self) -> serde_json::Value {
        serde_json::json!({
            "pending": self.mergeable().len()
                + self.reclaim.lock().len()
                + self.pending_full_copies().len(),
            "running": self.merges.running.try_lock().is_none(),
            "done": self.merges_done(),
            "lastError": *self.merges.last_error.lock(),
        })
    }

    /// Runs merges until the store shuts down: woken by deletes, and every few
    /// seconds (a merge paused by a revocation resumes after the restore).
    pub fn spawn_merger(self: &Arc<Self>) -> Result<std::thread::JoinHandle<()>> {
        let weak = Arc::downgrade(self);
        self.merges.background.store(true, Ordering::Release);
        std::thread::Builder::new()
            .name("merge".into())
            .spawn(move || loop {
                let Some(store) = weak.upgrade() else { return };
                if store.merges.stop.load(Ordering::Acquire) {
                    return;
                }
                store.merge_all(MERGE_RATE);
                let mut woken = store.merges.wake.lock();
                if !*woken {
                    store
                        .merges
                        .cond
                        .wait_for(&mut woken, Duration::from_secs(2));
                }
                *woken = false;
            })
            .map_err(|e| StoreError::io("starting the merge thread", e))
    }

    /// Waits until no merge or reclaim runs (the guard keeps it so).
    pub(super) fn merges_idle(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.merges.running.lock()
    }

    pub(super) fn stop_merger(&self) {
        self.merges.stop.store(true, Ordering::Release);
        self.nudge_merges();
    }

    /// Runs every merge that can run now, at most `rate` bytes per second; returns
    /// how many finished. Used by the merge thread, and directly by tests.
    pub fn merge_all(&self, rate: u64) -> usize {
        let _one = self.merges.running.lock();
        // Space reclaim of deletes first: what it punches, a merge need not copy.
        self.reclaim_queued();
        let mut n = self.full_copies(rate);
        let mut failed = false;
        // Each merge can make another possible (D into D', then D' into D'').
        loop {
            let todo = self.mergeable();
            if todo.is_empty() {
                if !failed {
                    *self.merges.last_error.lock() = None;
                }
                return n;
            }
            let mut progressed = false;
            for m in todo {
                if self.merges.stop.load(Ordering::Acquire) {
                    return n;
                }
                match self.merge(&m, rate) {
                    Ok(true) => {
                        n += 1;
                        progressed = true;
                        self.merges.done.fetch_add(1, Ordering::AcqRel);
                        *self.merges.last_error.lock() = None;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let msg = e.to_string();
                        let mut last = self.merges.last_error.lock();
                        // Said once, not at every retry.
                        if last.as_deref() != Some(msg.as_str()) {
                            log::warn!(
                                "merging delta {} into {}: {msg}; it is retried later",
                                m.lower,
                                m.upper
                            );
                        }
                        *last = Some(msg);
                        failed = true;
                    }
                }
            }
            if !progressed {
                return n;
            }
        }
    }

    /// Deltas that no object has as its top and that have one and the same delta
    /// directly above them in every stack that holds them.
    fn mergeable(&self) -> Vec<Merge> {
        let objs = self.served();
        // delta -> (the delta above it in every stack so far, or None: differs or top)
        let mut above: HashMap<String, Option<String>> = HashMap::new();
        let mut holders: HashMap<String, Vec<Arc<Disk>>> = HashMap::new();
        for o in &objs {
            if o.corrupt_reason().is_some() {
                // Its stack is unknown: merge nothing it might hold.
                return Vec::new();
            }
            let stack = o.stack();
            for (i, d) in stack.iter().enumerate() {
                let up = stack.get(i + 1).cloned();
                holders.entry(d.clone()).or_default().push(o.clone());
                match above.get_mut(d) {
                    None => {
                        above.insert(d.clone(), up);
                    }
                    Some(cur) => {
                        if *cur != up {
                            *cur = None;
                        }
                    }
                }
            }
        }
        let holders_map = &holders;
        let mut out: Vec<Merge> = above
            .iter()
            .filter_map(|(lower, up)| {
                let upper = up.clone()?;
                let holders = holders_map.get(lower)?.clone();
                // Whatever reads the upper delta must read the lower one under it, or
                // the copies would show through where it read something else; unless
                // it dropped the lower one in a commit a crash interrupted (the copy
                // was complete and synced before any commit).
                let upper_holders = holders_map.get(&upper)?;
                let upto = |s: Vec<String>| -> Vec<String> {
                    let end = s
                        .iter()
                        .position(|x| *x == upper)
                        .map_or(s.len(), |p| p + 1);
                    s[..end].iter().filter(|x| *x != lower).cloned().collect()
                };
                let ok = upper_holders.iter().all(|u| {
                    holders.iter().any(|h| Arc::ptr_eq(h, u)) || {
                        let mine = upto(u.stack());
                        holders.iter().any(|h| upto(h.stack()) == mine)
                    }
                });
                if !ok {
                    return None;
                }
                let lower = lower.clone();
                Some(Merge {
                    lower,
                    upper,
                    holders,
                })
            })
            .collect();
        out.sort_by(|a, b| a.lower.cmp(&b.lower));
        out
    }

    /// Whether a merge must wait: an object of it is revoked (or its key unusable),
    /// or key state is not enforced.
    fn merge_paused(&self, m: &Merge) -> Option<String> {
        if let Some(why) = self.enforcement_down() {
            return Some(why);
        }
        for h in &m.holders {
            if let Some(r) = h.revocation() {
                return Some(format!("{} '{}': {}", h.kind, h.name(), r.reason));
            }
            let meta = h.meta();
            if meta.encryption.kind.uses_customer_key() {
                if let Err(d) = self.key_access(&meta) {
                    return Some(d.why);
                }
            }
        }
        None
    }

    /// One merge; false if it paused (or found nothing to do any more).
    fn merge(&self, m: &Merge, rate: u64) -> Result<bool> {
        if let Some(why) = self.merge_paused(m) {
            log::debug!("merge of delta {} paused: {why}", m.lower);
            return Ok(false);
        }
        // The upper delta is a disk's writable top only if that disk is its only
        // holder; then copies go under the disk's write locks.
        let live = m
            .holders
            .iter()
            .find(|h| !h.kind.read_only() && h.stack().last() == Some(&m.upper))
            .cloned();
        let io = |what: &str, e| StoreError::io(format!("{what} (merging delta {})", m.lower), e);
        // An earlier merge of this pass may have folded or removed either delta: this
        // one is stale then, and the next pass sees what is left to do.
        let (lf, uf) = match (
            open_ro(&delta_path(&self.root, &m.lower)),
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(delta_path(&self.root, &m.upper)),
        ) {
            (Ok(l), Ok(u)) => (l, u),
            (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(false)
            }
            (Err(e), _) | (_, Err(e)) => return Err(io("opening", e)),
        };
        let data = scan_data(&lf).map_err(|e| io("scanning", e))?;
        // The copies take space before the lower delta's is freed: merge only with
        // room for them (and 1% of the file system to spare), else wait.
        let upper_data = scan_data(&uf).map_err(|e| io("scanning", e))?;
        let upper_wh =
            read_whiteouts(&whiteout_path(&self.root, &m.upper)).map_err(|e| io("reading", e))?;
        let need = data.subtract(&upper_data).subtract(&upper_wh).count() * UNIT;
        if let Some((free, total)) = fs_space(&uf) {
            if need > 0 && free < need + total / 100 {
                return Err(StoreError::NoSpace {
                    what: format!("merging delta {} into {}", m.lower, m.upper),
                    need: need + total / 100,
                    detail: "the copies it makes before the merged delta is freed, and 1% to spare; the merge waits until then".into(),
                    free,
                    path: self.deltas_dir().display().to_string(),
                });
            }
        }
        let lower_wh =
            read_whiteouts(&whiteout_path(&self.root, &m.lower)).map_err(|e| io("reading", e))?;
        let started = Instant::now();
        let mut copied: u64 = 0;
        let mut lower_zero = RangeSet::new();
        for r in data.iter() {
            let mut b = r.start;
            while b < r.end {
                let e = (b + STEP).min(r.end);
                if let Some(why) = self.merge_paused(m) {
                    log::info!("merge of delta {} paused: {why}", m.lower);
                    return Ok(false);
                }
                if self.merges.stop.load(Ordering::Acquire) {
                    return Ok(false);
                }
                let step = |upper_wh: &RangeSet| -> std::io::Result<(u64, RangeSet)> {
                    copy_step(&lf, &uf, b, e, upper_wh)
                };
                let (n, zero) = match &live {
                    Some(d) => d.with_top_units(&m.upper, b, e, step)?,
                    None => {
                        let wh = read_whiteouts(&whiteout_path(&self.root, &m.upper))
                            .map_err(|e| io("reading", e))?;
                        step(&wh).map_err(|e| io("copying", e))?
                    }
                };
                lower_zero.add(&zero);
                copied += n;
                crate::fault::point("merge.step");
                // Bounded I/O rate: sleep off what this step ran ahead.
                let due = Duration::from_secs_f64(copied as f64 / rate.max(1) as f64);
                if let Some(ahead) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(ahead);
                }
                b = e;
            }
        }
        // Whiteouts of the lower delta where it holds no ciphertext, unless the upper
        // one has data or a whiteout there.
        let lower_wh = lower_wh.subtract(&data.subtract(&lower_zero));
        if !lower_wh.is_empty() {
            let add = |upper_wh: &RangeSet| -> std::io::Result<()> {
                let upper_data = scan_data(&uf)?;
                let mut todo = lower_wh.subtract(upper_wh);
                let held = super::reclaim::nonzero_units(&uf, &upper_data.intersect(&todo))?;
                todo = todo.subtract(&held);
                let ranges: Vec<_> = todo.iter().collect();
                append_whiteouts(&whiteout_path(&self.root, &m.upper), &ranges)
            };
            match &live {
                Some(d) => d.with_top_units(&m.upper, 0, u64::MAX >> 13, add)?,
                None => {
                    let wh = read_whiteouts(&whiteout_path(&self.root, &m.upper))
                        .map_err(|e| io("reading", e))?;
                    add(&wh).map_err(|e| io("whiteouts", e))?
                }
            }
        }
        uf.sync_data().map_err(|e| io("syncing", e))?;
        crate::fault::point("merge.copied");
        // The commit: each holder drops the lower delta, under `ns` so no copy, delete
        // or rekey changes the stacks meanwhile; the rule is checked again there.
        let _ns = self.ns.lock();
        let fresh = self.mergeable();
        let Some(now) = fresh
            .iter()
            .find(|x| x.lower == m.lower && x.upper == m.upper)
        else {
            return Ok(false);
        };
        for h in &now.holders {
            h.drop_delta(&m.lower)?;
        }
        crate::fault::point("merge.dropped");
        remove_delta(&self.root, &m.lower).map_err(|e| io("removing", e))?;
        self.delta_sets.forget(&m.lower);
        self.delta_sets.forget(&m.upper);
        log::info!(
            "merged delta {} into {} ({} bytes copied, {} objects)",
            m.lower,
            m.upper,
            copied,
            now.holders.len()
        );
        Ok(true)
    }
}

/// Copies units `b..e` of the lower delta that hold ciphertext into the upper one
/// where it holds none and has no whiteout. Returns the bytes copied and the lower
/// units in `b..e` that hold no ciphertext.
fn copy_step(
    lf: &fs::File,
    uf: &fs::File,
    b: u64,
    e: u64,
    upper_wh: &RangeSet,
) -> std::io::Result<(u64, RangeSet)> {
    let len = ((e - b) * UNIT) as usize;
    let mut low = vec![0u8; len];
    let mut up = vec![0u8; len];
    let got = lf.read_at(&mut low, b * UNIT)?;
    low[got..].fill(0);
    let got = uf.read_at(&mut up, b * UNIT)?;
    up[got..].fill(0);
    let mut copied = 0;
    let mut zero = RangeSet::new();
    for (k, (l, u)) in low
        .chunks_exact(UNIT as usize)
        .zip(up.chunks_exact(UNIT as usize))
        .enumerate()
    {
        let n = b + k as u64;
        if is_zero(l) {
            zero.insert(n..n + 1);
            continue;
        }
        if !is_zero(u) || upper_wh.contains(n) {
            continue;
        }
        uf.write_all_at(l, n * UNIT)?;
        copied += UNIT;
    }
    Ok((copied, zero))
}

/// Free bytes for an unprivileged writer and the size of `f`'s file system.
fn fs_space(f: &fs::File) -> Option<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // Safe because: the fd is open for the call and `st` is a valid out-pointer.
    if unsafe { libc::fstatvfs(f.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    let bs = st.f_frsize as u64;
    Some((st.f_bavail as u64 * bs, st.f_blocks as u64 * bs))
}

//! `disk rekey`: re-encrypting a disk's data under fresh DEKs, online, crash-safe and
//! resumable (the data path is in disk.rs). Beyond Azure, which only re-wraps.

use super::*;
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::AtomicBool;

/// Where a disk's rekey stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RekeyState {
    /// None has run since the store opened, and none is unfinished.
    #[default]
    Idle,
    Running,
    Done,
    Failed,
    /// Stopped part-way (a crash or a shutdown); `disk rekey` resumes it.
    Interrupted,
}

impl RekeyState {
    pub const ALL: [RekeyState; 5] = [
        RekeyState::Idle,
        RekeyState::Running,
        RekeyState::Done,
        RekeyState::Failed,
        RekeyState::Interrupted,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RekeyState::Idle => "idle",
            RekeyState::Running => "running",
            RekeyState::Done => "done",
            RekeyState::Failed => "failed",
            RekeyState::Interrupted => "interrupted",
        }
    }
}

impl fmt::Display for RekeyState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for RekeyState {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self> {
        RekeyState::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "unknown rekey state '{s}'; use idle, running, done, failed or interrupted"
                ))
            })
    }
}

/// What `disks/NAME/rekey` shows.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RekeyStatus {
    pub state: RekeyState,
    pub done_bytes: u64,
    pub total_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Default)]
pub(super) struct Rekeys {
    status: Mutex<HashMap<String, RekeyStatus>>,
    pub stop: AtomicBool,
}

impl Store {
    /// New layers for `disk`: fresh DEKs and nonces, same ciphers, wrapped like the
    /// current ones (platform key, or the set's active customer key).
    fn new_layers(&self, m: &DiskMeta, dek_id: &str) -> Result<Vec<Layer>> {
        let des = match &m.encryption.disk_encryption_set_id {
            Some(id) => Some(self.keys.des(id)?),
            None => None,
        };
        let kinds = m.encryption.kind.layers().iter();
        let mut out = Vec::new();
        for (i, (&kind, old)) in kinds.zip(&m.layers).enumerate() {
            let cipher = old.parse().map_err(StoreError::InvalidArgument)?.cipher;
            out.push(self.keys.seal(kind, des.as_ref(), cipher, dek_id, i)?);
        }
        Ok(out)
    }

    /// Starts a rekey, or picks up an interrupted one.
    pub(super) fn rekey_prepare(&self, name: &str) -> Result<Arc<Disk>> {
        let _ns = self.ns.lock();
        let disk = self.get_usable(name)?;
        let m = disk.meta();
        if m.rekey.is_none() && m.stack.len() > 1 {
            // Data shared with snapshots and images is copied into the disk's own
            // delta first (same keys), so the rekey never touches theirs.
            let shared = disk.lower_bytes()?;
            self.check_rekey_space_for(&disk, shared)?;
            self.note_gc(&m.stack)
                .map_err(|e| StoreError::io("recording deltas to free", e))?;
            disk.materialize()?;
            log::info!(
                "disk '{name}': copied {shared} shared bytes into its own delta for the rekey"
            );
            // Every delta noted above is done with: those the disk left are freed, and
            // its own stays in use (`.gc` must not keep listing it).
            self.collect_garbage(&m.stack);
        }
        self.check_rekey_space(&disk)?;
        if m.rekey.is_none() {
            // DEKs others keep (snapshots, images, clones) are named by the id they
            // were made under; the new ones get a fresh name, so the disk leaves
            // that family. A disk that shares nothing keeps its own id.
            let shared = m.key_check_id.is_some() || !self.key_family(&disk).is_empty();
            let key_check_id = shared.then(|| hex(&random_bytes(16).unwrap_or_default()));
            if key_check_id.as_deref().is_some_and(|k| k.len() != 32) {
                return Err(StoreError::InvalidArgument(
                    "no randomness for a key id".into(),
                ));
            }
            let layers = self.new_layers(&m, key_check_id.as_deref().unwrap_or(&m.id))?;
            disk.begin_rekey(meta::Rekey {
                layers,
                boundary: 0,
                started_at: now_rfc3339(),
                key_check_id,
            })?;
            log::info!("disk '{name}': rekey started");
        } else {
            log::info!("disk '{name}': resuming rekey");
        }
        Ok(disk)
    }

    /// Refuses a rekey that would run out of space part-way. In place, a rekey needs
    /// room for its journal (one chunk) and metadata updates; on copy-on-write
    /// filesystems every rewritten allocated unit needs a fresh block too.
    fn check_rekey_space(&self, disk: &Disk) -> Result<()> {
        self.check_rekey_space_for(disk, 0)
    }

    /// As `check_rekey_space`, plus `shared` bytes to copy out of shared deltas.
    fn check_rekey_space_for(&self, disk: &Disk, shared: u64) -> Result<()> {
        let dir = disk.dir();
        let (free, cow) = fs_space(&dir)
            .map_err(|e| StoreError::io(format!("checking free space in {}", dir.display()), e))?;
        let journal = disk::REKEY_JOURNAL_BYTES;
        let meta = 1 << 20;
        let rewrite = if cow { disk.allocated_bytes() } else { 0 };
        let need = journal + meta + rewrite + shared;
        if free < need {
            return Err(StoreError::NoSpace {
                what: format!("the rekey of disk '{}'", disk.name()),
                need,
                detail: match (cow, shared) {
                    (true, _) => format!("journal {journal}, metadata {meta}, data shared with snapshots {shared}, copy-on-write rewrite of {rewrite} allocated"),
                    (false, 0) => format!("journal {journal}, metadata {meta}"),
                    (false, _) => format!("journal {journal}, metadata {meta}, data shared with snapshots and images to copy {shared}"),
                },
                free,
                path: dir.display().to_string(),
            });
        }
        Ok(())
    }

    fn set_rekey_status(&self, id: &str, st: RekeyStatus) {
        self.rekeys.status.lock().insert(id.to_string(), st);
    }

    /// Rekeys `name` in this thread; `progress(done_bytes, total_bytes)`.
    pub fn rekey(&self, name: &str, progress: &dyn Fn(u64, u64)) -> Result<()> {
        let disk = self.rekey_prepare(name)?;
        let id = disk.id.clone();
        let report = |done: u64, total: u64| {
            let (d, t) = (done * U64, total * U64);
            self.set_rekey_status(
                &id,
                RekeyStatus {
                    state: RekeyState::Running,
                    done_bytes: d,
                    total_bytes: t,
                    error: None,
                },
            );
            progress(d, t);
        };
        let r = disk.run_rekey(&report, &self.rekeys.stop);
        let total = disk.size();
        self.set_rekey_status(
            &id,
            match &r {
                Ok(()) => RekeyStatus {
                    state: RekeyState::Done,
                    done_bytes: total,
                    total_bytes: total,
                    error: None,
                },
                Err(e) => RekeyStatus {
                    state: RekeyState::Failed,
                    error: Some(e.to_string()),
                    ..Default::default()
                },
            },
        );
        match &r {
            Ok(()) => log::info!("disk '{name}': rekey done; the old data keys are gone"),
            Err(e) => log::error!("disk '{name}': rekey stopped: {e}"),
        }
        r
    }

    /// Starts a rekey on a background thread (the daemon's `disks/NAME/rekey`).
    pub fn rekey_spawn(self: &Arc<Self>, name: &str) -> Result<()> {
        let disk = self.get_or_err(name)?;
        {
            let mut st = self.rekeys.status.lock();
            if st
                .get(&disk.id)
                .is_some_and(|s| s.state == RekeyState::Running)
            {
                return Err(StoreError::RekeyRunning(name.to_string()));
            }
            st.insert(
                disk.id.clone(),
                RekeyStatus {
                    state: RekeyState::Running,
                    ..Default::default()
                },
            );
        }
        // Prepare here so a refusal (e.g. a revoked key) reaches the caller.
        if let Err(e) = self.rekey_prepare(name) {
            self.rekeys.status.lock().remove(&disk.id);
            return Err(e);
        }
        let store = self.clone();
        let name = name.to_string();
        std::thread::Builder::new()
            .name(format!("rekey-{name}"))
            .spawn(move || {
                let _ = store.rekey(&name, &|_, _| {});
            })
            .map_err(|e| StoreError::io("starting the rekey thread", e))?;
        Ok(())
    }

    /// Resumes every rekey a crash interrupted (daemon start).
    pub fn resume_rekeys(self: &Arc<Self>) {
        for d in self.list() {
            if d.rekey_state().is_some() {
                if let Err(e) = self.rekey_spawn(&d.name()) {
                    log::error!("cannot resume the rekey of '{}': {e}", d.name());
                }
            }
        }
    }

    pub fn rekey_status(&self, disk: &Disk) -> RekeyStatus {
        if let Some(s) = self.rekeys.status.lock().get(&disk.id) {
            return s.clone();
        }
        match disk.rekey_state() {
            Some((b, _)) => RekeyStatus {
                state: RekeyState::Interrupted,
                done_bytes: (b * U64).min(disk.size()),
                total_bytes: disk.size(),
                error: None,
            },
            None => RekeyStatus {
                state: RekeyState::Idle,
                total_bytes: disk.size(),
                ..Default::default()
            },
        }
    }

    pub(super) fn stop_rekeys(&self) {
        self.rekeys.stop.store(true, Ordering::Release);
    }
}

const U64: u64 = crate::crypto::DATA_UNIT as u64;

/// Free bytes (for an unprivileged writer) of the filesystem holding `path`, and
/// whether it is copy-on-write (btrfs, ZFS, bcachefs), where overwrites allocate.
fn fs_space(path: &Path) -> std::io::Result<(u64, bool)> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // Safe because: statfs is plain old data; all-zero is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // Safe because: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    const BTRFS: i64 = 0x9123_683e;
    const ZFS: i64 = 0x2fc1_2fc1;
    const BCACHEFS: i64 = 0xca45_1a4e;
    let cow = matches!(st.f_type as i64, BTRFS | ZFS | BCACHEFS);
    Ok((st.f_bavail as u64 * st.f_bsize as u64, cow))
}

#[cfg(test)]
mod state_tests {
    use super::*;

    #[test]
    fn states_keep_their_names() {
        for s in RekeyState::ALL {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
            assert_eq!(s.name().parse::<RekeyState>().unwrap(), s);
        }
        let st = RekeyStatus {
            state: RekeyState::Interrupted,
            done_bytes: 1,
            total_bytes: 2,
            error: None,
        };
        assert_eq!(
            serde_json::to_string(&st).unwrap(),
            r#"{"state":"interrupted","doneBytes":1,"totalBytes":2}"#
        );
    }
}

//! The vault's audit log: one JSON line per key operation, shaped like Key Vault's
//! AuditEvent, chained by SHA-256 so that an edited, inserted or deleted line is found.
//!
//! Line format (docs/format.md): a compact JSON object `BODY` whose last member is
//! `"hash"`; `hash = hex(SHA-256(BODY without ,"hash":"..."))` and `BODY` carries
//! `seq` (1, 2, ...) and `prevHash` (the previous line's hash, 64 zeros for line 1).
//! `audit.head` records the last `seq` and `hash`, so dropping trailing lines shows too.

use crate::crypto::wrap::hex;
use crate::durable;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const AUDIT_FILE: &str = "audit.log";
pub const HEAD_FILE: &str = "audit.head";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// `,"hash":"` + 64 hex digits + `"}`.
const HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

/// Who performed an operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caller {
    /// Azure AD object id analogue: a DES principal id, or `local-uid-N` for a user.
    pub object_id: String,
    /// Human-readable name for messages and the log.
    pub name: String,
    pub is_service: bool,
}

impl Caller {
    /// The local user who runs the command or owns the mount.
    pub fn user(uid: u32) -> Caller {
        let name = users_name(uid).unwrap_or_else(|| format!("uid {uid}"));
        Caller {
            object_id: format!("local-uid-{uid}"),
            name,
            is_service: false,
        }
    }

    /// The current process's user.
    pub fn current_user() -> Caller {
        // Safe because: getuid has no preconditions and cannot fail.
        Caller::user(unsafe { libc::getuid() })
    }

    /// The vault's own rotation-policy engine.
    pub fn policy() -> Caller {
        Caller {
            object_id: "key-rotation-policy".into(),
            name: "Key Vault rotation policy".into(),
            is_service: false,
        }
    }

    /// The platform itself, using its own key for a disk's platform-key layer.
    pub fn platform() -> Caller {
        Caller {
            object_id: "platform".into(),
            name: "the platform".into(),
            is_service: true,
        }
    }

    /// A disk encryption set's system-assigned identity.
    pub fn des(name: &str, principal_id: &str) -> Caller {
        Caller {
            object_id: principal_id.to_string(),
            name: format!("disk encryption set '{name}'"),
            is_service: true,
        }
    }

    fn claim(&self) -> Value {
        if self.is_service {
            json!({"oid": self.object_id, "appid": self.name})
        } else {
            json!({"oid": self.object_id, "upn": self.name})
        }
    }
}

fn users_name(uid: u32) -> Option<String> {
    let passwd = fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        let id: u32 = f.nth(1)?.parse().ok()?;
        (id == uid).then(|| name.to_string())
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
struct Head {
    seq: u64,
    hash: String,
}

/// The writer side of the log; the vault serializes calls.
///
/// Records are whole lines written with one `write_all` and made durable before the
/// call returns; a failed write or fsync truncates the file back to the last complete
/// record, so a later record is never appended onto a torn one.
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    seq: u64,
    last: String,
    /// `audit.head` could not be updated after the last append: it lags by one record
    /// (which `verify` accepts). It is brought up to date before anything else is
    /// appended, so it never lags by more.
    head_stale: bool,
}

/// Space `reserve` preallocates past the end of the log for the next records.
const RESERVE_BYTES: u64 = 64 * 1024;
/// Free space `reserve` wants on the vault's file system besides, for the change's own
/// files (a key version's PEM, key.json, audit.head).
const MARGIN_BYTES: u64 = 64 * 1024;

/// What `verify` found: complete records, and the bytes of a torn last line (a crash
/// during an append), which the next append drops.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub struct Verified {
    pub records: u64,
    pub torn_tail: u64,
    /// Lines after the one `audit.head` records (it could not be rewritten, e.g. on a
    /// full file system); they are checked by the chain like every other line.
    pub head_lag: u64,
}

impl std::fmt::Display for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} audit records, hash chain intact", self.records)?;
        if self.head_lag > 1 {
            write!(
                f,
                "; {HEAD_FILE} lags by {} records (it could not be updated, e.g. the file system was full; the next append updates it)",
                self.head_lag
            )?;
        }
        if self.torn_tail > 0 {
            write!(
                f,
                "; a torn tail of {} bytes (a crash during an append, not an edit) will be dropped at the next append",
                self.torn_tail
            )?;
        }
        Ok(())
    }
}

/// What `verify` found wrong: the first bad line (1-based) and why.
#[derive(Debug, PartialEq, Eq)]
pub struct AuditFault {
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for AuditFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "audit log line {}: {}", self.line, self.reason)
    }
}

fn split_line(line: &str) -> Option<(String, &str)> {
    if line.len() < HASH_SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - HASH_SUFFIX_LEN;
    let suffix = line.get(cut..)?;
    let hash = suffix.strip_prefix(",\"hash\":\"")?.strip_suffix("\"}")?;
    Some((format!("{}}}", &line[..cut]), hash))
}

/// One event for `append_many`.
pub struct Event<'a> {
    pub operation: &'a str,
    pub caller: &'a Caller,
    pub key_id: &'a str,
    /// resultSignature and reason; a signature of "OK" records a success with a note.
    pub failure: Option<(&'a str, &'a str)>,
}

/// The line of record `seq` chained to `prev`, and its hash.
fn record_line(e: &Event<'_>, seq: u64, prev: &str) -> (String, String) {
    let (result_type, signature, description) = match e.failure {
        None => ("Success", "OK", ""),
        Some(("OK", why)) => ("Success", "OK", why),
        Some((sig, why)) => ("Failure", sig, why),
    };
    // Ids and reasons echo user input: never a PEM, and bounded in size.
    let description = crate::shown::shown(description, 1000);
    let key_id = crate::shown::shown(e.key_id, 300);
    let body = json!({
        "time": crate::vault::now_iso(),
        "seq": seq,
        "category": "AuditEvent",
        "operationName": e.operation,
        "operationVersion": "7.4",
        "resultType": result_type,
        "resultSignature": signature,
        "resultDescription": description,
        "identity": {"claim": e.caller.claim()},
        "callerIpAddress": "127.0.0.1",
        "properties": {"id": key_id, "clientInfo": concat!("diskvault/", env!("CARGO_PKG_VERSION"))},
        "prevHash": prev,
    });
    let body = serde_json::to_string(&body).expect("JSON serializes");
    let hash = digest(&body);
    (
        format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]),
        hash,
    )
}

fn digest(body: &str) -> String {
    hex(&Sha256::digest(body.as_bytes()))
}

impl AuditLog {
    /// Opens (or starts) the log in `dir`. A torn final line left by a crash is left
    /// in place, so that `verify` still sees and reports it; the next append cuts it
    /// off (under the vault lock) before writing.
    pub fn open(dir: &Path) -> io::Result<AuditLog> {
        let path = dir.join(AUDIT_FILE);
        let mut log = AuditLog {
            head_path: dir.join(HEAD_FILE),
            path,
            seq: 0,
            last: GENESIS.to_string(),
            head_stale: false,
        };
        let text = match fs::read(&log.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(log),
            Err(e) => return Err(e),
        };
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if complete < text.len() {
            log::warn!(
                "audit log {} ends in a torn line of {} bytes (a crash during an append); it is dropped at the next append",
                log.path.display(),
                text.len() - complete
            );
        }
        let text = String::from_utf8_lossy(&text[..complete]);
        if let Some(last) = text.lines().last() {
            if let Some((body, hash)) = split_line(last) {
                let seq = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v.get("seq")?.as_u64())
                    .unwrap_or(0);
                log.seq = seq;
                log.last = hash.to_string();
            }
        }
        Ok(log)
    }

    /// Appends one event and makes it durable before returning. `failure` is the
    /// resultSignature and reason; a signature of "OK" records a success with a note.
    pub fn append(
        &mut self,
        operation: &str,
        caller: &Caller,
        key_id: &str,
        failure: Option<(&str, &str)>,
    ) -> io::Result<()> {
        self.append_many(&[Event {
            operation,
            caller,
            key_id,
            failure,
        }])
    }

    /// Appends events in one write and one fsync (a revocation of thousands of disks
    /// records each of them without thousands of fsyncs). All or none: on a failure the
    /// file goes back to its last complete record and the chain is unchanged.
    pub fn append_many(&mut self, events: &[Event<'_>]) -> io::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut seq = self.seq;
        let mut last = self.last.clone();
        let mut text = String::new();
        for e in events {
            seq += 1;
            let (line, hash) = record_line(e, seq, &last);
            text += &line;
            last = hash;
        }
        if self.head_stale {
            self.write_head()?;
        }
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let base = self.drop_torn_fragment(&f)?;
        // One write of every line; on any failure the file goes back to `base`.
        if let Err(e) = f.write_all(text.as_bytes()).and_then(|()| f.sync_data()) {
            if let Err(t) = f.set_len(base).and_then(|()| f.sync_data()) {
                log::error!(
                    "cannot truncate the audit log {} back to its last record ({t}); the torn record is dropped at the next append",
                    self.path.display()
                );
            }
            return Err(e);
        }
        self.seq = seq;
        self.last = last;
        if let Err(e) = self.write_head() {
            // The records are durable and the chain intact; the head lags, which
            // verify accepts, and is caught up before the next append.
            log::error!(
                "cannot update {}: {e}; it is retried before the next audit record",
                self.head_path.display()
            );
            self.head_stale = true;
        }
        Ok(())
    }

    fn write_head(&mut self) -> io::Result<()> {
        let head = serde_json::to_vec(&Head {
            seq: self.seq,
            hash: self.last.clone(),
        })
        .expect("JSON serializes");
        durable::write_atomic(&self.head_path, &head, 0o600)?;
        self.head_stale = false;
        Ok(())
    }

    /// The log's length up to its last complete line. A fragment after it (an append
    /// whose truncation failed) is cut off; other extra content is left for `verify`.
    fn drop_torn_fragment(&self, f: &fs::File) -> io::Result<u64> {
        use std::os::unix::fs::FileExt;
        let size = f.metadata()?.len();
        if size == 0 {
            return Ok(0);
        }
        let mut last = [0u8];
        f.read_exact_at(&mut last, size - 1)?;
        if last[0] == b'\n' {
            return Ok(size);
        }
        // Find the last newline, reading backwards in blocks.
        let mut end = size;
        let mut buf = vec![0u8; 4096];
        while end > 0 {
            let start = end.saturating_sub(buf.len() as u64);
            let chunk = &mut buf[..(end - start) as usize];
            f.read_exact_at(chunk, start)?;
            if let Some(p) = chunk.iter().rposition(|&b| b == b'\n') {
                end = start + p as u64 + 1;
                break;
            }
            end = start;
        }
        log::warn!(
            "audit log {} ends in a torn line of {} bytes; dropping it",
            self.path.display(),
            size - end
        );
        f.set_len(end)?;
        f.sync_data()?;
        Ok(end)
    }

    /// Before a change: makes sure its record can be written afterwards. Preallocates
    /// space past the end of the log (`fallocate` with `KEEP_SIZE`, so the file's
    /// content is unchanged) and checks that the file system keeps some room for the
    /// change's own files. Fails (e.g. `ENOSPC`) before anything has changed.
    pub fn reserve(&mut self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        if self.head_stale {
            self.write_head()?;
        }
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        let len = f.metadata()?.len();
        // Safe because: the fd is open for the duration of the call; the range is checked
        // by the kernel.
        let r = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                len as libc::off_t,
                RESERVE_BYTES as libc::off_t,
            )
        };
        if r != 0 {
            let e = io::Error::last_os_error();
            // A file system without fallocate: the free-space check below must do.
            if !matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS)
            ) {
                return Err(e);
            }
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // Safe because: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // Safe because: `c` is a valid NUL-terminated path and `st` a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
        if free < MARGIN_BYTES {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        Ok(())
    }
}

/// Checks the chain; returns the number of records (and the size of a torn final
/// line), or the first bad line.
///
/// A final line with no newline is what a crash during an append leaves (records are
/// written whole, newline last): it is reported as a torn tail, not as tampering.
/// Every complete line must still verify, and `audit.head` must not name a record
/// beyond them, so cutting off a record and its newline is still found.
pub fn verify(dir: &Path) -> Result<Verified, AuditFault> {
    let path = dir.join(AUDIT_FILE);
    let text = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(AuditFault {
                line: 0,
                reason: format!("cannot read {}: {e}", path.display()),
            })
        }
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
    let torn_tail = (text.len() - complete) as u64;
    let mut text = text;
    text.truncate(complete);
    let text = String::from_utf8(text).map_err(|e| {
        let line = 1 + e.as_bytes()[..e.utf8_error().valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count() as u64;
        AuditFault {
            line,
            reason: "not UTF-8 text (the line was edited)".into(),
        }
    })?;
    let mut prev = GENESIS.to_string();
    let mut n = 0u64;
    for (i, line) in text.lines().enumerate() {
        let no = i as u64 + 1;
        let fault = |reason: &str| AuditFault {
            line: no,
            reason: reason.to_string(),
        };
        let (body, hash) = split_line(line).ok_or_else(|| {
            fault("not an audit record (no trailing hash); the line was edited or inserted")
        })?;
        let v: Value = serde_json::from_str(&body)
            .map_err(|_| fault("not valid JSON; the line was edited"))?;
        if v.get("prevHash").and_then(Value::as_str) != Some(prev.as_str()) {
            return Err(fault(
                "its prevHash does not match the line before; a line before it was deleted, or this one was inserted or edited",
            ));
        }
        if digest(&body) != hash {
            return Err(fault(
                "its hash does not match its content; the line was edited",
            ));
        }
        if v.get("seq").and_then(Value::as_u64) != Some(no) {
            return Err(fault(
                "its sequence number is out of order; lines were deleted or reordered",
            ));
        }
        prev = hash.to_string();
        n = no;
    }
    let mut head_lag = 0;
    if let Ok(b) = fs::read(dir.join(HEAD_FILE)) {
        let head: Head = serde_json::from_slice(&b).map_err(|_| AuditFault {
            line: n + 1,
            reason: format!("{HEAD_FILE} is corrupt"),
        })?;
        // The head may lag: by one line after a crash between append and head update,
        // by more when it could not be rewritten (a full file system). The lines after
        // it are chained like the rest; what it pins must still be there.
        if head.seq > n {
            return Err(AuditFault {
                line: n + 1,
                reason: format!(
                    "missing: {HEAD_FILE} records {} lines but the log has {n}; trailing lines were deleted",
                    head.seq
                ),
            });
        }
        let at = text
            .lines()
            .nth(head.seq.saturating_sub(1) as usize)
            .and_then(split_line)
            .map(|(_, h)| h.to_string());
        if head.seq > 0 && at.as_deref() != Some(head.hash.as_str()) {
            return Err(AuditFault {
                line: head.seq.max(1),
                reason: format!("does not match {HEAD_FILE}; the log was rewritten"),
            });
        }
        head_lag = n - head.seq;
    }
    Ok(Verified {
        records: n,
        torn_tail,
        head_lag,
    })
}

#[cfg(test)]
mod tests;

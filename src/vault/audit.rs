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
pub struct AuditLog {
    path: PathBuf,
    head_path: PathBuf,
    seq: u64,
    last: String,
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

fn digest(body: &str) -> String {
    hex(&Sha256::digest(body.as_bytes()))
}

impl AuditLog {
    /// Opens (or starts) the log in `dir`, dropping a torn final line left by a crash.
    pub fn open(dir: &Path) -> io::Result<AuditLog> {
        let path = dir.join(AUDIT_FILE);
        let mut log = AuditLog {
            head_path: dir.join(HEAD_FILE),
            path,
            seq: 0,
            last: GENESIS.to_string(),
        };
        let text = match fs::read(&log.path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(log),
            Err(e) => return Err(e),
        };
        let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |p| p + 1);
        if complete < text.len() {
            log::warn!(
                "audit log {} ends in a torn line (a crash during append); dropping it",
                log.path.display()
            );
            OpenOptions::new()
                .write(true)
                .open(&log.path)?
                .set_len(complete as u64)?;
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
        let (result_type, signature, description) = match failure {
            None => ("Success", "OK", ""),
            Some(("OK", why)) => ("Success", "OK", why),
            Some((sig, why)) => ("Failure", sig, why),
        };
        let seq = self.seq + 1;
        let body = json!({
            "time": crate::vault::now_iso(),
            "seq": seq,
            "category": "AuditEvent",
            "operationName": operation,
            "operationVersion": "7.4",
            "resultType": result_type,
            "resultSignature": signature,
            "resultDescription": description,
            "identity": {"claim": caller.claim()},
            "callerIpAddress": "127.0.0.1",
            "properties": {"id": key_id, "clientInfo": concat!("diskvault/", env!("CARGO_PKG_VERSION"))},
            "prevHash": self.last,
        });
        let body = serde_json::to_string(&body).expect("JSON serializes");
        let hash = digest(&body);
        let line = format!("{},\"hash\":\"{hash}\"}}\n", &body[..body.len() - 1]);
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        self.seq = seq;
        self.last = hash.clone();
        let head = serde_json::to_vec(&Head { seq, hash }).expect("JSON serializes");
        durable::write_atomic(&self.head_path, &head, 0o600)
    }
}

/// Checks the chain; returns the number of lines, or the first bad line.
pub fn verify(dir: &Path) -> Result<u64, AuditFault> {
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
    if let Ok(b) = fs::read(dir.join(HEAD_FILE)) {
        let head: Head = serde_json::from_slice(&b).map_err(|_| AuditFault {
            line: n + 1,
            reason: format!("{HEAD_FILE} is corrupt"),
        })?;
        // The head may lag by one line after a crash between append and head update.
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
        if head.seq > 0 && at.as_deref() != Some(head.hash.as_str()) || head.seq + 1 < n {
            return Err(AuditFault {
                line: head.seq.max(1),
                reason: format!("does not match {HEAD_FILE}; the log was rewritten"),
            });
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(dir: &Path, n: usize) {
        let mut log = AuditLog::open(dir).unwrap();
        let c = Caller::des("set1", "11111111-2222-3333-4444-555555555555");
        for i in 0..n {
            let fail = (i % 3 == 2).then_some(("Forbidden", "no grant"));
            log.append("KeyUnwrap", &c, &format!("k/{i}"), fail)
                .unwrap();
        }
    }

    #[test]
    fn chain_verifies_and_resumes() {
        let d = tempfile::tempdir().unwrap();
        sample(d.path(), 4);
        sample(d.path(), 3);
        assert_eq!(verify(d.path()), Ok(7));
    }

    #[test]
    fn edits_deletions_and_truncation_name_the_line() {
        let d = tempfile::tempdir().unwrap();
        sample(d.path(), 6);
        let path = d.path().join(AUDIT_FILE);
        let orig = fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = orig.lines().collect();
        let write = |ls: &[String]| fs::write(&path, ls.join("\n") + "\n").unwrap();
        let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();

        let mut edited = owned.clone();
        edited[2] = edited[2].replace("KeyUnwrap", "KeyWrap");
        write(&edited);
        assert_eq!(verify(d.path()).unwrap_err().line, 3);

        let mut deleted = owned.clone();
        deleted.remove(3);
        write(&deleted);
        assert_eq!(verify(d.path()).unwrap_err().line, 4);

        write(&owned[..5]);
        assert_eq!(verify(d.path()).unwrap_err().line, 6);

        let mut swapped = owned.clone();
        swapped.swap(1, 2);
        write(&swapped);
        assert_eq!(verify(d.path()).unwrap_err().line, 2);

        write(&owned);
        assert_eq!(verify(d.path()), Ok(6));
    }
}

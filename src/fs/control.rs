//! The `.vault/` control tree: which files and directories exist, what reading each
//! shows, and what a write, mkdir or rmdir means. It has no FUSE types, so the CLI
//! runs the very same operations in-process when the store is not mounted, and tests
//! can drive it without a mount. See docs/control-files.md.

use super::args::{self, f, invalid, parse, parse_bool, Args, Ty, Val};
use crate::crypto::CipherKind;
use crate::store::{parse_size, CreateOptions, DaemonInfo, Sku, Store, StoreError};
use crate::vault::{parse_time, Caller, KeyOptions, KeyRef, KeyUpdate, VaultError};
use parking_lot::Mutex;
use serde_json::{json, Value};
use std::sync::Arc;

pub use args::MAX_CONTROL_WRITE;

pub const README: &str = include_str!("vault-readme.txt");

/// What a path is, with its permission bits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Dir,
    /// A file; `read`/`write` say whether it may be read or written.
    File {
        read: bool,
        write: bool,
    },
}

impl Kind {
    const R: Kind = Kind::File {
        read: true,
        write: false,
    };
    const W: Kind = Kind::File {
        read: false,
        write: true,
    };
    const RW: Kind = Kind::File {
        read: true,
        write: true,
    };

    /// Writable files are readable too: a read on the handle that wrote shows the
    /// reply to that write (see `Reply`).
    pub fn mode(self) -> u16 {
        match self {
            Kind::Dir => 0o700,
            Kind::File { write: true, .. } => 0o600,
            Kind::File { .. } => 0o400,
        }
    }
}

/// Files in `keys/NAME/` and `keys/NAME/versions/VERSION/`.
const KEY_FILES: &[(&str, Kind)] = &[
    ("key.json", Kind::R),
    ("kid", Kind::R),
    ("public.pem", Kind::R),
    ("enabled", Kind::RW),
    ("nbf", Kind::RW),
    ("exp", Kind::RW),
    ("key-ops", Kind::RW),
    ("update", Kind::W),
];
/// Files only at key level.
const KEY_ONLY_FILES: &[(&str, Kind)] = &[
    ("rotate", Kind::W),
    ("grants", Kind::RW),
    ("rotation-policy", Kind::RW),
    ("delete", Kind::W),
];
const SET_FILES: &[(&str, Kind)] = &[
    ("status.json", Kind::R),
    ("key-url", Kind::RW),
    ("auto-rotate", Kind::RW),
    ("identity", Kind::R),
    ("encryption-type", Kind::R),
    ("update", Kind::W),
    ("delete", Kind::W),
];
const DISK_FILES: &[(&str, Kind)] = &[
    ("disk.json", Kind::R),
    ("encryption", Kind::RW),
    ("sku", Kind::RW),
    ("rekey", Kind::RW),
    ("delete", Kind::W),
];
const ROOT_FILES: &[(&str, Kind)] = &[
    ("README", Kind::R),
    ("status.json", Kind::R),
    ("daemon.json", Kind::R),
    ("last-error", Kind::R),
    ("audit.log", Kind::R),
    ("verify-audit", Kind::R),
    ("vault.json", Kind::R),
    ("purge-protection", Kind::RW),
    ("retention-days", Kind::RW),
];
const ROOT_DIRS: &[&str] = &["keys", "deleted-keys", "disk-encryption-sets", "disks"];

/// Names a control file takes inside a directory of keys, sets or disks; they can't
/// be used as key, set or disk names.
pub const RESERVED: &[&str] = &["create", "import"];

/// Whether writes to `path` are gathered until they form one command (a PEM import
/// written in pieces, as `{ echo NAME; cat key.pem; } > import` does).
pub fn gathers(path: &[&str]) -> bool {
    path == ["keys", "import"]
}

/// Whether gathered import writes are a whole command: a JSON object, anything that
/// is not a name line followed by (the start of) a PEM block, or a PEM block through
/// its END line. So `echo NAME` then `cat key.pem` gather, and garbage fails at once.
pub fn import_complete(data: &[u8]) -> bool {
    // Not UTF-8: complete as it is, and refused as such.
    let Ok(t) = std::str::from_utf8(data) else {
        return true;
    };
    let t = t.trim_start();
    if t.starts_with('{') {
        return serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok();
    }
    let Some((_, rest)) = t.split_once('\n') else {
        return true;
    };
    let rest = rest.trim_start();
    const BEGIN: &str = "-----BEGIN ";
    if rest.is_empty() || BEGIN.starts_with(rest) {
        return false;
    }
    if !rest.starts_with(BEGIN) {
        return true;
    }
    match rest.rfind("-----END ") {
        Some(i) => rest[i + 9..].contains("-----"),
        None => false,
    }
}

fn lookup(table: &[(&str, Kind)], name: &str) -> Option<Kind> {
    table.iter().find(|(n, _)| *n == name).map(|(_, k)| *k)
}

pub struct Control {
    store: Arc<Store>,
    daemon: Option<DaemonInfo>,
    last_error: Mutex<(String, u64)>,
}

fn pretty(v: &Value) -> Vec<u8> {
    let mut s = serde_json::to_vec_pretty(v).expect("JSON serializes");
    s.push(b'\n');
    s
}

fn line(s: impl std::fmt::Display) -> Vec<u8> {
    format!("{s}\n").into_bytes()
}

fn not_found(path: &[&str]) -> StoreError {
    StoreError::io(
        format!(".vault/{}", path.join("/")),
        std::io::Error::from_raw_os_error(libc::ENOENT),
    )
}

fn opt_time(v: Option<&Val>, what: &str) -> Result<Option<Option<i64>>, StoreError> {
    Ok(match v {
        None => None,
        Some(Val::Null) => Some(None),
        Some(Val::Str(s)) if s.trim().is_empty() => {
            return Err(invalid(format!(
                "{what} is empty; give a time (2027-01-31, +90d) or `none` to clear it"
            )))
        }
        Some(Val::Str(s)) if s.trim().eq_ignore_ascii_case("none") => Some(None),
        Some(Val::Str(s)) => Some(Some(parse_time(s)?)),
        Some(_) => return Err(invalid(format!("{what} must be a time string"))),
    })
}

const KEY_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["size", "keySize", "kty-size"], false, false, Ty::NumOrStr),
    f(&["ops", "keyOps", "key_ops"], false, false, Ty::List),
    f(&["nbf", "notBefore"], false, false, Ty::Str),
    f(&["exp", "expires"], false, false, Ty::Str),
    f(&["enabled"], false, false, Ty::Bool),
    f(&["pem"], false, false, Ty::Str),
];
const KEY_UPDATE_FIELDS: &[args::Field] = &[
    f(&["enabled"], false, false, Ty::Bool),
    f(&["nbf", "notBefore"], false, false, Ty::Str),
    f(&["exp", "expires"], false, false, Ty::Str),
    f(&["ops", "keyOps", "key_ops"], false, false, Ty::List),
    f(&["force"], false, false, Ty::Bool),
];
const ROTATE_FIELDS: &[args::Field] = &[
    f(&["size", "keySize"], false, false, Ty::NumOrStr),
    f(&["nbf", "notBefore"], false, false, Ty::Str),
    f(&["exp", "expires"], false, false, Ty::Str),
];
const GRANT_FIELDS: &[args::Field] = &[
    f(&["action"], true, true, Ty::Str),
    f(&["des", "diskEncryptionSet"], true, false, Ty::Str),
    f(&["permissions", "perms"], true, false, Ty::List),
    f(&["object-id", "objectId"], false, false, Ty::Str),
];
const DES_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["key-url", "keyUrl"], true, true, Ty::Str),
    f(
        &["type", "encryptionType", "encryption-type"],
        false,
        false,
        Ty::Str,
    ),
    f(
        &["auto-rotate", "rotationToLatestKeyVersionEnabled"],
        false,
        false,
        Ty::Bool,
    ),
];
const DES_UPDATE_FIELDS: &[args::Field] = &[
    f(&["key-url", "keyUrl"], false, false, Ty::Str),
    f(
        &["auto-rotate", "rotationToLatestKeyVersionEnabled"],
        false,
        false,
        Ty::Bool,
    ),
    f(
        &["type", "encryptionType", "encryption-type"],
        false,
        false,
        Ty::Str,
    ),
];
const DISK_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["size", "diskSizeBytes"], true, false, Ty::NumOrStr),
    f(&["diskSizeGB"], false, false, Ty::NumOrStr),
    f(&["sku"], false, false, Ty::Str),
    f(&["cipher"], false, false, Ty::Str),
    f(
        &[
            "des",
            "diskEncryptionSet",
            "diskEncryptionSetId",
            "disk-encryption-set",
        ],
        false,
        false,
        Ty::Str,
    ),
];
const ENCRYPTION_FIELDS: &[args::Field] = &[
    f(&["type"], true, false, Ty::Str),
    f(
        &[
            "des",
            "diskEncryptionSetId",
            "diskEncryptionSet",
            "disk-encryption-set",
        ],
        true,
        false,
        Ty::Str,
    ),
];
const VAULT_SET_FIELDS: &[args::Field] = &[f(&["value"], true, true, Ty::Str)];

fn key_options(a: &Args) -> Result<KeyOptions, StoreError> {
    let size = match a.get("size") {
        None | Some(Val::Null) => None,
        Some(Val::Num(n)) => Some(*n as usize),
        Some(Val::Str(s)) => Some(s.parse::<usize>().map_err(|_| {
            invalid(format!(
                "key size '{s}' is not a number; use 2048, 3072 or 4096"
            ))
        })?),
        Some(_) => return Err(invalid("size must be a number")),
    };
    Ok(KeyOptions {
        size,
        key_ops: a.list("ops").map(|l| l.to_vec()),
        nbf: opt_time(a.get("nbf"), "nbf")?.flatten(),
        exp: opt_time(a.get("exp"), "exp")?.flatten(),
        enabled: a.bool("enabled"),
    })
}

fn key_update(a: &Args) -> Result<KeyUpdate, StoreError> {
    let u = KeyUpdate {
        enabled: a.bool("enabled"),
        nbf: opt_time(a.get("nbf"), "nbf")?,
        exp: opt_time(a.get("exp"), "exp")?,
        key_ops: a.list("ops").map(|l| l.to_vec()),
        force: a.bool("force").unwrap_or(false),
    };
    if (KeyUpdate {
        force: false,
        ..u.clone()
    }) == KeyUpdate::default()
    {
        return Err(invalid(
            "nothing to change; give enabled=, nbf=, exp= or ops=",
        ));
    }
    Ok(u)
}

/// `true`/`false` written to a flag file.
fn flag(data: &[u8], what: &str) -> Result<bool, StoreError> {
    let t = args::text(data)?;
    parse_bool(t).ok_or_else(|| {
        invalid(format!(
            "{what} takes true or false, not '{}'",
            t.chars().take(40).collect::<String>()
        ))
    })
}

impl Control {
    pub fn new(store: Arc<Store>, daemon: Option<DaemonInfo>) -> Self {
        Control {
            store,
            daemon,
            last_error: Mutex::new((String::new(), 0)),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Records why a request failed, for `.vault/last-error` and the daemon log.
    pub fn record_failure(&self, what: &str, e: &StoreError) {
        log::warn!("{what}: {e}");
        self.note_failure(what, e);
    }

    /// Records a failure for `.vault/last-error` only; the caller decides on logging.
    pub fn note_failure(&self, what: &str, e: &StoreError) {
        let msg = format!("{what}: {e}");
        let mut last = self.last_error.lock();
        // The counter tells two identical failures in the same second apart.
        last.1 += 1;
        last.0 = format!("{} [{}] {msg}\n", crate::store::now_rfc3339(), last.1);
    }

    fn key_exists(&self, name: &str) -> bool {
        self.store.vault().exists(name)
    }

    fn version_exists(&self, name: &str, v: &str) -> bool {
        self.store
            .vault()
            .version_ids(name)
            .is_ok_and(|vs| vs.iter().any(|x| x.eq_ignore_ascii_case(v)))
    }

    fn deleted_exists(&self, name: &str) -> bool {
        // A deleted key whose files are corrupt is listed too; using it says why.
        !matches!(
            self.store.vault().deleted_key(name),
            Err(VaultError::DeletedKeyNotFound(_))
        )
    }

    fn set_exists(&self, name: &str) -> bool {
        // A set whose file is corrupt still exists: reading it says why it can't be used.
        !matches!(
            self.store.keyring().des(name),
            Err(StoreError::DesNotFound(_))
        )
    }

    fn disk_exists(&self, name: &str) -> bool {
        self.store.get(name).is_some()
    }

    /// What `path` (relative to `.vault/`) is, if it exists.
    pub fn kind(&self, path: &[&str]) -> Option<Kind> {
        match path {
            [] => Some(Kind::Dir),
            [d] if ROOT_DIRS.contains(d) => Some(Kind::Dir),
            ["daemon.json"] if self.daemon.is_none() => None,
            [file] => lookup(ROOT_FILES, file),
            ["keys", "create" | "import"] => Some(Kind::W),
            // A delete that could not be saved stays reachable, to be run again.
            ["keys", k] => {
                (self.key_exists(k) || self.store.vault().delete_unsaved(k)).then_some(Kind::Dir)
            }
            ["keys", k, "delete"] if self.store.vault().delete_unsaved(k) => Some(Kind::W),
            ["keys", k, "versions"] => self.key_exists(k).then_some(Kind::Dir),
            ["keys", k, file] => {
                if !self.key_exists(k) {
                    return None;
                }
                lookup(KEY_FILES, file).or_else(|| lookup(KEY_ONLY_FILES, file))
            }
            ["keys", k, "versions", v] => self.version_exists(k, v).then_some(Kind::Dir),
            ["keys", k, "versions", v, file] => {
                if !self.version_exists(k, v) {
                    return None;
                }
                lookup(KEY_FILES, file)
            }
            ["deleted-keys", k] => self.deleted_exists(k).then_some(Kind::Dir),
            ["deleted-keys", k, "deleted.json"] => self.deleted_exists(k).then_some(Kind::R),
            ["deleted-keys", k, "recover" | "purge"] => self.deleted_exists(k).then_some(Kind::W),
            ["disk-encryption-sets", "create"] => Some(Kind::W),
            ["disk-encryption-sets", s] => self.set_exists(s).then_some(Kind::Dir),
            ["disk-encryption-sets", s, file] => {
                if !self.set_exists(s) {
                    return None;
                }
                lookup(SET_FILES, file)
            }
            ["disks", "create"] => Some(Kind::W),
            ["disks", d] => self.disk_exists(d).then_some(Kind::Dir),
            ["disks", d, file] => {
                if !self.disk_exists(d) {
                    return None;
                }
                lookup(DISK_FILES, file)
            }
            _ => None,
        }
    }

    /// The entries of a directory.
    pub fn list(&self, path: &[&str]) -> Option<Vec<(String, Kind)>> {
        let files = |t: &[(&str, Kind)]| {
            t.iter()
                .map(|(n, k)| (n.to_string(), *k))
                .collect::<Vec<_>>()
        };
        let dirs = |names: Vec<String>| names.into_iter().map(|n| (n, Kind::Dir));
        let v = match path {
            [] => {
                let mut v = files(ROOT_FILES);
                if self.daemon.is_none() {
                    v.retain(|(n, _)| n != "daemon.json");
                }
                v.extend(ROOT_DIRS.iter().map(|d| (d.to_string(), Kind::Dir)));
                v
            }
            ["keys"] => {
                let mut v = vec![("create".into(), Kind::W), ("import".into(), Kind::W)];
                v.extend(dirs(self.store.vault().key_names()));
                v
            }
            ["keys", k] if self.store.vault().delete_unsaved(k) && !self.key_exists(k) => {
                vec![("delete".into(), Kind::W)]
            }
            ["keys", k] if self.key_exists(k) => {
                let mut v = files(KEY_FILES);
                v.extend(files(KEY_ONLY_FILES));
                v.push(("versions".into(), Kind::Dir));
                v
            }
            ["keys", k, "versions"] => dirs(self.store.vault().version_ids(k).ok()?).collect(),
            ["keys", k, "versions", v] if self.version_exists(k, v) => files(KEY_FILES),
            ["deleted-keys"] => dirs(self.store.vault().deleted_names()).collect(),
            ["deleted-keys", k] if self.deleted_exists(k) => vec![
                ("deleted.json".into(), Kind::R),
                ("recover".into(), Kind::W),
                ("purge".into(), Kind::W),
            ],
            ["disk-encryption-sets"] => {
                let mut v = vec![("create".into(), Kind::W)];
                v.extend(dirs(
                    self.store.des_list().into_iter().map(|d| d.name).collect(),
                ));
                v
            }
            ["disk-encryption-sets", s] if self.set_exists(s) => files(SET_FILES),
            ["disks"] => {
                let mut v = vec![("create".into(), Kind::W)];
                v.extend(dirs(self.store.list().iter().map(|d| d.name()).collect()));
                v
            }
            ["disks", d] if self.disk_exists(d) => files(DISK_FILES),
            _ => return None,
        };
        Some(v)
    }

    fn key_ref(k: &str, v: Option<&str>) -> KeyRef {
        KeyRef {
            vault: None,
            name: k.to_string(),
            version: v.map(|x| x.to_ascii_lowercase()),
        }
    }

    /// Reads a file's content (a snapshot taken at open).
    pub fn read(&self, path: &[&str], caller: &Caller) -> Result<Vec<u8>, StoreError> {
        let vault = self.store.vault();
        Ok(match path {
            ["README"] => README.as_bytes().to_vec(),
            ["status.json"] => pretty(&self.store.status_json()),
            ["daemon.json"] => match &self.daemon {
                Some(d) => pretty(&serde_json::to_value(d).expect("serializes")),
                None => return Err(not_found(path)),
            },
            ["last-error"] => self.last_error.lock().0.clone().into_bytes(),
            ["audit.log"] => vault.audit_text(),
            ["verify-audit"] => match vault.verify_audit() {
                Ok(v) => line(format!("OK: {v}")),
                Err(fault) => line(format!("FAILED: {fault}")),
            },
            ["vault.json"] => {
                let mut v = vault.show();
                v["keyList"] = json!(vault.list_keys());
                v["deletedKeyList"] = json!(vault.list_deleted());
                pretty(&v)
            }
            ["purge-protection"] => line(vault.props().enable_purge_protection),
            ["retention-days"] => line(vault.props().soft_delete_retention_in_days),
            ["keys", k, file] => self.read_key_file(k, None, file, caller)?,
            ["keys", k, "versions", v, file] => self.read_key_file(k, Some(v), file, caller)?,
            ["deleted-keys", k, "deleted.json"] => pretty(&vault.deleted_key(k)?),
            ["disk-encryption-sets", s, file] => {
                let d = self.store.keyring().des(s)?;
                match *file {
                    "status.json" => pretty(&self.store.des_show(s)?),
                    "key-url" => line(&d.active_key),
                    "auto-rotate" => line(d.rotation_to_latest_key_version_enabled),
                    "identity" => line(&d.principal_id),
                    "encryption-type" => line(&d.encryption_type),
                    _ => return Err(not_found(path)),
                }
            }
            ["disks", d, file] => {
                let disk = self.store.get_or_err(d)?;
                match *file {
                    "disk.json" => pretty(&self.store.disk_json(&disk)),
                    "encryption" => {
                        pretty(&serde_json::to_value(disk.meta().encryption).expect("serializes"))
                    }
                    "sku" => line(disk.meta().sku),
                    "rekey" => pretty(
                        &serde_json::to_value(self.store.rekey_status(&disk)).expect("serializes"),
                    ),
                    _ => return Err(not_found(path)),
                }
            }
            _ => return Err(not_found(path)),
        })
    }

    fn read_key_file(
        &self,
        k: &str,
        v: Option<&str>,
        file: &str,
        caller: &Caller,
    ) -> Result<Vec<u8>, StoreError> {
        let vault = self.store.vault();
        let r = Self::key_ref(k, v);
        let rec = vault.record(k)?;
        let (attrs, ops) = match v {
            None => (rec.attributes.clone(), rec.key_ops.clone()),
            Some(ver) => {
                let x = rec
                    .versions
                    .iter()
                    .find(|x| x.version.eq_ignore_ascii_case(ver))
                    .ok_or_else(|| VaultError::VersionNotFound(k.into(), ver.into()))?;
                (x.attributes.clone(), x.key_ops.clone())
            }
        };
        let time = |t: Option<i64>| {
            line(
                t.map(crate::vault::secs_to_iso)
                    .unwrap_or_else(|| "none".into()),
            )
        };
        Ok(match file {
            "key.json" => pretty(&vault.get_key(caller, &r)?),
            "public.pem" => vault.public_pem(caller, &r)?.into_bytes(),
            "kid" => line(vault.resolve(&r)?),
            "enabled" => line(attrs.enabled),
            "nbf" => time(attrs.nbf),
            "exp" => time(attrs.exp),
            "key-ops" => line(ops.join(" ")),
            "grants" => pretty(&json!(rec.grants)),
            "rotation-policy" => pretty(&json!(rec.rotation_policy)),
            _ => return Err(not_found(&["keys", k, file])),
        })
    }

    /// After a change: the daemon's reconciler acts on it at once (revocation,
    /// auto-rotation); without a daemon it runs here.
    /// After a change: the daemon's reconciler acts on it at once (revocation,
    /// auto-rotation); without a daemon it runs here. Fails if the reconciler can't
    /// run, so that a change it must enforce is never reported as done.
    fn after_change(&self) -> Result<(), StoreError> {
        if self.daemon.is_some() {
            // The change itself is saved (a revocation is never refused); only its
            // enforcement is in doubt, and the data path fails closed meanwhile.
            self.store
                .reconcile_now(std::time::Duration::from_secs(1))
                .map_err(|e| match e {
                    StoreError::EnforcementDown(why) => {
                        StoreError::EnforcementDown(format!("the change was saved, but {why}"))
                    }
                    e => e,
                })
        } else {
            self.store.reconcile_offline();
            Ok(())
        }
    }

    /// Carries out one write to a control file.
    pub fn write(&self, path: &[&str], data: &[u8], caller: &Caller) -> Result<(), StoreError> {
        let r = self.write_inner(path, data, caller);
        self.finish(r)
    }

    /// mkdir: `keys/NAME` creates an RSA-2048 key.
    pub fn mkdir(&self, path: &[&str], caller: &Caller) -> Result<(), StoreError> {
        let r = self.mkdir_inner(path, caller);
        self.finish(r)
    }

    /// rmdir: `keys/NAME` soft-deletes a key, `deleted-keys/NAME` purges it,
    /// `disk-encryption-sets/NAME` deletes the set.
    pub fn rmdir(&self, path: &[&str], caller: &Caller) -> Result<(), StoreError> {
        let r = self.rmdir_inner(path, caller);
        self.finish(r)
    }

    /// After a command: its effects are enforced before it returns. A revocation that
    /// took effect in memory but could not be saved is enforced too, and still fails.
    fn finish(&self, r: Result<(), StoreError>) -> Result<(), StoreError> {
        match r {
            Ok(()) => self.after_change(),
            Err(e @ StoreError::Vault(VaultError::RevokedNotSaved { .. })) => {
                let _ = self.after_change();
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    fn write_inner(&self, path: &[&str], data: &[u8], caller: &Caller) -> Result<(), StoreError> {
        let vault = self.store.vault();
        match path {
            ["purge-protection"] => {
                vault.set_props(caller, Some(flag(data, "purge-protection")?), None)?;
            }
            ["retention-days"] => {
                let t = args::text(data)?;
                let days: u32 = t.parse().map_err(|_| {
                    invalid(format!(
                        "retention-days takes a number of days (7 to 90), not '{t}'"
                    ))
                })?;
                vault.set_props(caller, None, Some(days))?;
            }
            ["keys", "create"] => {
                let a = parse(data, KEY_CREATE_FIELDS, "write `NAME [size=2048|3072|4096] [ops=wrapKey,unwrapKey] [nbf=TIME] [exp=TIME] [enabled=false]` or a JSON object")?;
                if a.get("pem").is_some() {
                    return Err(invalid("a PEM key goes to keys/import, not keys/create"));
                }
                let name = a.str("name").unwrap_or_default();
                check_reserved(name)?;
                vault.create_key(caller, name, &key_options(&a)?)?;
            }
            ["keys", "import"] => {
                let t = args::text(data)?;
                // Words form: options on the first line, the PEM after it.
                let (a, pem) = if t.starts_with('{') {
                    let a = parse(data, KEY_CREATE_FIELDS, "write {\"name\":..., \"pem\":...}")?;
                    let pem = a.str("pem").map(String::from);
                    (a, pem)
                } else {
                    let (first, rest) = t.split_once('\n').unwrap_or((t, ""));
                    let a = parse(
                        first.as_bytes(),
                        KEY_CREATE_FIELDS,
                        "write `NAME [options]` on the first line and the PEM private key after it",
                    )?;
                    (a, Some(rest.to_string()))
                };
                let pem = zeroize::Zeroizing::new(pem.unwrap_or_default());
                if pem.trim().is_empty() {
                    return Err(invalid("no PEM key given; write `NAME` on the first line and the PEM private key after it"));
                }
                let name = a.str("name").unwrap_or_default();
                check_reserved(name)?;
                let mut opts = key_options(&a)?;
                if opts.size.is_some() {
                    return Err(invalid("size is taken from the imported key; drop size="));
                }
                opts.size = None;
                vault.import_key(caller, name, &pem, &opts)?;
            }
            // The write form of `rmdir keys/NAME`, so a reply can reach the writer.
            ["keys", k, "delete"] => {
                confirm_name(data, k, "delete")?;
                vault.delete_key(caller, k)?;
            }
            ["keys", k, file] => self.write_key_file(k, None, file, data, caller)?,
            ["keys", k, "versions", v, file] => {
                self.write_key_file(k, Some(v), file, data, caller)?
            }
            ["deleted-keys", k, "recover"] => {
                confirm_name(data, k, "recover")?;
                vault.recover_key(caller, k)?;
            }
            ["deleted-keys", k, "purge"] => {
                confirm_name(data, k, "purge")?;
                vault.purge_key(caller, k)?
            }
            ["disk-encryption-sets", "create"] => {
                let a = parse(data, DES_CREATE_FIELDS, "write `NAME KEY-URL [type=EncryptionAtRestWithCustomerKey|EncryptionAtRestWithPlatformAndCustomerKeys] [auto-rotate=true]` or a JSON object")?;
                let name = a.str("name").unwrap_or_default();
                check_reserved(name)?;
                self.store.des_create(
                    name,
                    a.str("key-url").unwrap_or_default(),
                    a.str("type"),
                    a.bool("auto-rotate").unwrap_or(false),
                )?;
            }
            ["disk-encryption-sets", s, "delete"] => {
                confirm_name(data, s, "delete")?;
                self.store.des_delete(s)?;
            }
            ["disk-encryption-sets", s, file] => {
                let (url, auto, ty) = match *file {
                    "key-url" => (Some(args::text(data)?.to_string()), None, None),
                    "auto-rotate" => (None, Some(flag(data, "auto-rotate")?), None),
                    "update" => {
                        let a = parse(
                            data,
                            DES_UPDATE_FIELDS,
                            "write `key-url=URL` and/or `auto-rotate=true|false`",
                        )?;
                        if a.0.is_empty() {
                            return Err(invalid(
                                "nothing to change; give key-url= or auto-rotate=",
                            ));
                        }
                        (
                            a.str("key-url").map(String::from),
                            a.bool("auto-rotate"),
                            a.str("type").map(String::from),
                        )
                    }
                    _ => return Err(read_only(path)),
                };
                self.store
                    .des_update(s, url.as_deref(), auto, ty.as_deref())?;
            }
            // The write form of `rm disks/NAME`, so a reply can reach the writer.
            ["disks", d, "delete"] => {
                confirm_name(data, d, "delete")?;
                self.store.delete_disk(d)?;
            }
            ["disks", "create"] => {
                let (name, opts) = parse_disk_create(data)?;
                self.store.create_disk(&name, &opts)?;
            }
            ["disks", d, "encryption"] => {
                let a = parse(data, ENCRYPTION_FIELDS, "write `TYPE [DES]`, e.g. `EncryptionAtRestWithCustomerKey set1`, or {\"type\":..., \"diskEncryptionSetId\":...}")?;
                self.store
                    .update_encryption(d, a.str("type"), a.str("des"))?;
            }
            ["disks", d, "rekey"] => {
                let t = args::text(data)?;
                if t != "start" && t != "1" {
                    return Err(invalid(format!("unknown command '{}'; write `start` to re-encrypt the disk under fresh data keys", t.chars().take(40).collect::<String>())));
                }
                if self.daemon.is_some() {
                    self.store.rekey_spawn(d)?;
                } else {
                    self.store.rekey(d, &|_, _| {})?;
                }
            }
            ["disks", d, "sku"] => {
                let a = parse(
                    data,
                    VAULT_SET_FIELDS,
                    "write a SKU name, e.g. Standard_LRS",
                )?;
                self.store
                    .set_sku(d, a.str("value").unwrap_or_default().parse::<Sku>()?)?;
            }
            _ => return Err(read_only(path)),
        }
        Ok(())
    }

    fn write_key_file(
        &self,
        k: &str,
        v: Option<&str>,
        file: &str,
        data: &[u8],
        caller: &Caller,
    ) -> Result<(), StoreError> {
        let vault = self.store.vault();
        let r = Self::key_ref(k, v);
        let update = |u: KeyUpdate| -> Result<(), StoreError> {
            vault.update_key(caller, &r, &u)?;
            Ok(())
        };
        match file {
            "enabled" => update(KeyUpdate {
                enabled: Some(flag(data, "enabled")?),
                ..Default::default()
            }),
            "nbf" | "exp" => {
                let t = args::text(data)?;
                let when = opt_time(Some(&Val::Str(t.to_string())), file)?;
                update(if file == "nbf" {
                    KeyUpdate {
                        nbf: when,
                        ..Default::default()
                    }
                } else {
                    KeyUpdate {
                        exp: when,
                        ..Default::default()
                    }
                })
            }
            "key-ops" => {
                let ops: Vec<String> = args::text(data)?
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                // An empty list is refused by the vault (it would stop every use).
                update(KeyUpdate {
                    key_ops: Some(ops),
                    ..Default::default()
                })
            }
            "update" => update(key_update(&parse(
                data,
                KEY_UPDATE_FIELDS,
                "write `enabled=true|false nbf=TIME exp=TIME ops=LIST` (any of them)",
            )?)?),
            "rotate" if v.is_none() => {
                let a = parse_rotate(data)?;
                vault.rotate_key(caller, k, &key_options(&a)?)?;
                Ok(())
            }
            "grants" if v.is_none() => self.write_grants(k, data, caller),
            "rotation-policy" if v.is_none() => {
                let t = args::text(data)?;
                let policy = if t.is_empty() || t == "none" || t == "null" {
                    None
                } else {
                    Some(serde_json::from_str::<crate::vault::RotationPolicy>(t).map_err(|e| {
                        invalid(format!(
                            "malformed rotation policy: {e}; expected {{\"lifetimeActions\":[{{\"trigger\":{{\"timeAfterCreate\":\"P90D\"}},\"action\":{{\"type\":\"Rotate\"}}}}],\"attributes\":{{\"expiryTime\":\"P1Y\"}}}}, or none"
                        ))
                    })?)
                };
                vault.set_rotation_policy(caller, k, policy)?;
                Ok(())
            }
            _ => Err(read_only(&["keys", k, file])),
        }
    }

    /// `grant DES [PERMISSIONS]`, `revoke DES`, or `object-id=ID` instead of DES.
    fn write_grants(&self, k: &str, data: &[u8], caller: &Caller) -> Result<(), StoreError> {
        let usage = "write `grant SET [get,wrapKey,unwrapKey]` or `revoke SET` (SET is a disk encryption set; or object-id=ID)";
        let a = parse(data, GRANT_FIELDS, usage)?;
        let action = a.str("action").unwrap_or_default();
        if action != "grant" && action != "revoke" {
            return Err(invalid(format!("unknown command '{action}'; {usage}")));
        }
        // `grant object-id=ID get`: with object-id, the second word is the permissions.
        // Only a bare word: a set named as `des` (JSON, `des=`) is an identity.
        let perms_word = match (a.str("des"), a.str("object-id"), a.list("permissions")) {
            (Some(p), Some(_), None) if a.by_position("des") => Some(
                p.split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|x| !x.is_empty())
                    .map(String::from)
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        };
        let des = if perms_word.is_some() {
            None
        } else {
            a.str("des")
        };
        let (object_id, display) = match (des, a.str("object-id")) {
            (Some(s), None) => {
                let d = self.store.keyring().des(s)?;
                (
                    d.principal_id.clone(),
                    format!("diskEncryptionSets/{}", d.name),
                )
            }
            (None, Some(id)) => (id.to_string(), id.to_string()),
            _ => return Err(invalid(format!("name exactly one identity; {usage}"))),
        };
        let vault = self.store.vault();
        match action {
            "grant" => {
                let perms: Vec<String> = match a.list("permissions").or(perms_word.as_deref()) {
                    Some(p) => p.to_vec(),
                    None => ["get", "wrapKey", "unwrapKey"]
                        .iter()
                        .map(|s| s.to_string())
                        .collect(),
                };
                vault.grant(caller, k, &object_id, &display, &perms)?;
            }
            _ => {
                if a.list("permissions").is_some() || perms_word.is_some() {
                    return Err(invalid(format!("revoke takes no permissions; {usage}")));
                }
                vault.revoke_grant(caller, k, &object_id)?;
            }
        }
        Ok(())
    }

    fn mkdir_inner(&self, path: &[&str], caller: &Caller) -> Result<(), StoreError> {
        match path {
            ["keys", k] => {
                check_reserved(k)?;
                self.store.vault().create_key(caller, k, &KeyOptions::default())?;
                Ok(())
            }
            _ => Err(StoreError::NotPermitted(format!(
                "mkdir is not supported in .vault/{}; only keys/NAME creates a key (see .vault/README)",
                path[..path.len().saturating_sub(1)].join("/")
            ))),
        }
    }

    fn rmdir_inner(&self, path: &[&str], caller: &Caller) -> Result<(), StoreError> {
        match path {
            ["keys", k] => {
                self.store.vault().delete_key(caller, k)?;
            }
            ["deleted-keys", k] => self.store.vault().purge_key(caller, k)?,
            ["disk-encryption-sets", s] => self.store.des_delete(s)?,
            ["disks", d] => {
                return Err(StoreError::NotPermitted(format!(
                    "delete the disk itself with 'rm disks/{d}' (or 'diskvault disk delete {d}')"
                )))
            }
            _ => {
                return Err(StoreError::NotPermitted(
                    "this directory can't be removed (see .vault/README)".into(),
                ))
            }
        }
        Ok(())
    }
}

/// A write to `keys/NAME/rotate`: `1`, `1` plus options (`size=N nbf=TIME exp=TIME`),
/// the options alone, or a JSON object of them. Anything else is refused.
fn parse_rotate(data: &[u8]) -> Result<Args, StoreError> {
    let usage =
        "write `1`, or `1 size=N nbf=TIME exp=TIME` (any of the options), to add a new version";
    let t = args::text(data)?;
    if t.starts_with('{') {
        return parse(data, ROTATE_FIELDS, usage);
    }
    let rest = match t.split_once(char::is_whitespace) {
        _ if t == "1" => return Ok(Args::default()),
        Some(("1", rest)) => rest.trim(),
        _ if t.contains('=') => t,
        _ => {
            return Err(invalid(format!(
                "unknown command '{}'; {usage}",
                t.chars().take(40).collect::<String>()
            )))
        }
    };
    // Options only: any bare word is refused by `parse` (the fields are not positional).
    parse(rest.as_bytes(), ROTATE_FIELDS, usage)
}

/// A write to `deleted-keys/NAME/recover` or `purge`: `1` or the key's name, so that a
/// stray write does not purge a key irreversibly.
fn confirm_name(data: &[u8], name: &str, what: &str) -> Result<(), StoreError> {
    let t = args::text(data)?;
    if t == "1" || t.eq_ignore_ascii_case(name) {
        return Ok(());
    }
    Err(invalid(format!(
        "{what} takes `1` or the name ('{name}'), not '{}'",
        t.chars().take(40).collect::<String>()
    )))
}

fn read_only(path: &[&str]) -> StoreError {
    StoreError::io(
        format!(".vault/{} is read-only", path.join("/")),
        std::io::Error::from_raw_os_error(libc::EACCES),
    )
}

pub fn check_reserved(name: &str) -> Result<(), StoreError> {
    if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(name)) {
        return Err(invalid(format!(
            "'{name}' is the name of a control file; choose another name"
        )));
    }
    Ok(())
}

/// Parses a write to `disks/create`.
pub fn parse_disk_create(data: &[u8]) -> Result<(String, CreateOptions), StoreError> {
    let a = parse(
        data,
        DISK_CREATE_FIELDS,
        "write `NAME SIZE [sku=SKU] [cipher=CIPHER] [des=SET]`, e.g. `data1 30G`, or a JSON object",
    )?;
    let name = a.str("name").unwrap_or_default().to_string();
    check_reserved(&name)?;
    let size = match (a.get("size"), a.get("diskSizeGB")) {
        (Some(Val::Num(n)), None) => *n,
        (Some(Val::Str(s)), None) => parse_size(s)?,
        (None, Some(Val::Num(g))) => parse_size(&format!("{g}G"))?,
        (None, Some(Val::Str(g))) => parse_size(&format!("{g}G"))?,
        (None, None) => return Err(invalid("a size is required, e.g. `data1 30G`")),
        _ => return Err(invalid("give the size once (size or diskSizeGB)")),
    };
    let opts = CreateOptions {
        size,
        sku: a
            .str("sku")
            .map(|s| s.parse::<Sku>())
            .transpose()?
            .unwrap_or_default(),
        cipher: a
            .str("cipher")
            .map(|c| c.parse::<CipherKind>())
            .transpose()?,
        disk_encryption_set: a.str("des").map(String::from),
    };
    Ok((name, opts))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotate_purge_and_recover_take_only_documented_input() {
        assert!(parse_rotate(b"1\n").unwrap().0.is_empty());
        let a = parse_rotate(b"1 size=3072 exp=+30d").unwrap();
        assert_eq!(a.str("size"), Some("3072"));
        assert!(parse_rotate(b"size=3072").is_ok());
        assert!(parse_rotate(br#"{"keySize":3072}"#).is_ok());
        for bad in [
            &b""[..],
            b"please do not rotate",
            b"yes",
            b"true",
            b"0",
            b"11",
            b"1 now",
            b"1 1",
            b"foo size=3072",
            b"1 size=2048 size=3072",
            b"1 colour=red",
        ] {
            let e = parse_rotate(bad).unwrap_err();
            assert!(
                matches!(e, StoreError::InvalidArgument(_)),
                "{:?}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(confirm_name(b"1\n", "k1", "purge").is_ok());
        assert!(confirm_name(b"K1", "k1", "purge").is_ok());
        for bad in [&b"no thanks"[..], b"", b"k2", b"yes", b"1 1"] {
            let e = confirm_name(bad, "k1", "purge").unwrap_err().to_string();
            assert!(e.contains("purge takes `1` or the name"), "{e}");
        }
    }

    #[test]
    fn empty_times_are_refused_and_none_clears() {
        let e = opt_time(Some(&Val::Str(String::new())), "nbf").unwrap_err();
        assert!(e.to_string().contains("`none`"), "{e}");
        assert_eq!(
            opt_time(Some(&Val::Str("none".into())), "nbf").unwrap(),
            Some(None)
        );
        assert_eq!(opt_time(Some(&Val::Null), "nbf").unwrap(), Some(None));
        let a = parse(br#"{"nbf":""}"#, KEY_UPDATE_FIELDS, "u").unwrap();
        assert!(key_update(&a).is_err());
        let a = parse(b"exp=", KEY_UPDATE_FIELDS, "u").unwrap();
        assert!(key_update(&a).is_err());
        let a = parse(b"exp=+3000000d", KEY_UPDATE_FIELDS, "u").unwrap();
        assert!(key_update(&a).is_err());
    }

    #[test]
    fn disk_create_words_and_json() {
        let (n, a) =
            parse_disk_create(b"d1 30G sku=Standard_LRS cipher=aes-256-ctr des=set1\n").unwrap();
        let (n2, b) = parse_disk_create(
            br#"{"name":"d1","size":"30G","sku":"Standard_LRS","cipher":"aes-256-ctr","diskEncryptionSetId":"set1"}"#,
        )
        .unwrap();
        assert_eq!((n, &a), (n2, &b));
        assert_eq!(a.size, 30 << 30);
        assert_eq!(a.cipher, Some(CipherKind::Aes256Ctr));
        let (_, c) = parse_disk_create(br#"{"name":"d2","diskSizeGB":2}"#).unwrap();
        assert_eq!(c.size, 2 << 30);
        for bad in [
            &b"d1"[..],
            b"d1 30Q",
            b"d1 30G sku=Gold",
            b"d1 30G cipher=rot13",
            b"create 1G",
            b"{\"name\":\"d1\",\"size\":true}",
        ] {
            assert!(
                parse_disk_create(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

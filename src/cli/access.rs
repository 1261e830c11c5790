//! How a command reaches the store: in-process through the control tree when the
//! store is not mounted, or through `MOUNT/.vault/` files when a daemon holds it.
//! Either way the same control-tree operation runs, so both paths behave alike.

use super::CliError;
use crate::control::{Control, Request};
use crate::store::{Store, StoreError};
use crate::vault::{Caller, VaultError};
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(clap::Args, Clone)]
pub struct StoreArg {
    /// The store directory.
    #[arg(long, env = "DISKVAULT_STORE")]
    pub store: PathBuf,
    /// The key vault directory, if the store keeps it elsewhere (see 'init --vault').
    #[arg(long, env = "DISKVAULT_VAULT")]
    pub vault: Option<PathBuf>,
    #[command(flatten)]
    pub kek: super::seal::KekArgs,
}

pub enum Access {
    Direct(Control),
    Mounted(PathBuf),
}

/// The message for a path that does not exist, naming what is missing.
fn missing(path: &str) -> CliError {
    let p: Vec<&str> = path.split('/').collect();
    let e: Box<dyn std::fmt::Display> = match p.as_slice() {
        ["keys", k, "versions", v, ..] => {
            Box::new(VaultError::VersionNotFound(k.to_string(), v.to_string()))
        }
        ["keys", k, ..] => Box::new(VaultError::KeyNotFound(k.to_string())),
        ["deleted-keys", k, ..] => Box::new(VaultError::DeletedKeyNotFound(k.to_string())),
        ["disk-encryption-sets", s, ..] => Box::new(StoreError::DesNotFound(s.to_string())),
        ["disks", d, ..] => Box::new(StoreError::DiskNotFound(d.to_string())),
        ["vmss", s, ..] => Box::new(format!(
            "no VM scale set named '{s}'; see 'diskvault vmss list'"
        )),
        _ => Box::new(format!(".vault/{path} does not exist")),
    };
    CliError(e.to_string())
}

impl Access {
    /// Opens the store and checks az's `--subscription` and `--vault-name` against it.
    pub fn open(arg: &StoreArg) -> Result<Access, CliError> {
        let a = Self::open_with(arg, arg.kek.options())?;
        a.check_globals()?;
        Ok(a)
    }

    /// `open` without the checks (`account set`, which names the subscription).
    pub fn open_unchecked(arg: &StoreArg) -> Result<Access, CliError> {
        Self::open_with(arg, arg.kek.options())
    }

    /// An id given as a name must be in this store's subscription. Names are read
    /// after the store is opened, so this runs before every read and request.
    fn check_named(&self) -> Result<(), CliError> {
        let Some(sub) = super::output::named_subscription() else {
            return Ok(());
        };
        let raw = match self {
            Access::Direct(c) => c.read(&["account.json"], &Caller::current_user())?,
            Access::Mounted(mp) => std::fs::read(mp.join(".vault/account.json"))
                .map_err(|e| Self::read_error("account.json", e))?,
        };
        let acct: Value = serde_json::from_slice(&raw)?;
        let id = acct["id"].as_str().unwrap_or_default();
        if !sub.eq_ignore_ascii_case(id) {
            return Err(CliError(format!(
                "(SubscriptionNotFound) the id names subscription '{sub}', but this store is subscription '{id}' ('diskvault account show')"
            )));
        }
        Ok(())
    }

    fn check_globals(&self) -> Result<(), CliError> {
        let g = super::output::globals();
        if let Some(sub) = &g.subscription {
            let acct = self.read_json("account.json")?;
            let (id, name) = (
                acct["id"].as_str().unwrap_or_default(),
                acct["name"].as_str().unwrap_or_default(),
            );
            if !sub.eq_ignore_ascii_case(id) && !sub.eq_ignore_ascii_case(name) {
                // A store is named once; until then, `account set` names it.
                let hint = if name == id {
                    format!(", or name it with 'diskvault account set --subscription {sub}'")
                } else {
                    String::new()
                };
                return Err(CliError(format!(
                    "(SubscriptionNotFound) The subscription '{sub}' could not be found: this store is subscription '{name}' ({id}); give --subscription {id}{hint}"
                )));
            }
        }
        if let Some(v) = &g.vault_name {
            let ours = self.read_json("vault.json")?["name"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if !v.eq_ignore_ascii_case(&ours) {
                return Err(CliError(format!(
                    "(VaultNotFound) The vault '{v}' was not found: this store's key vault is '{ours}'; give --vault-name {ours}, or 'diskvault keyvault create -n {v}' to name a vault that has no keys yet"
                )));
            }
        }
        Ok(())
    }

    /// `open`, reaching the KEK with `unseal` when the store is not mounted.
    pub fn open_with(
        arg: &StoreArg,
        unseal: crate::vault::custody::UnsealOptions,
    ) -> Result<Access, CliError> {
        match Store::open_with(&arg.store, arg.vault.as_deref(), unseal) {
            Ok(s) => Ok(Access::Direct(Control::new(Arc::new(s), None))),
            Err(e @ StoreError::Locked { .. }) => match Store::daemon_info(&arg.store) {
                Some(d) if Path::new(&d.mountpoint).join(".vault").is_dir() => {
                    // The daemon serves its own vault; another one can't be reached.
                    if let Some(v) = &arg.vault {
                        let same = match (std::fs::canonicalize(v), std::fs::canonicalize(&d.vault))
                        {
                            (Ok(a), Ok(b)) => a == b,
                            _ => false,
                        };
                        if !same {
                            return Err(CliError(format!(
                                "--vault {} is not the key vault the mounted store uses ({}); leave --vault out, or unmount the store to use another vault",
                                v.display(),
                                d.vault
                            )));
                        }
                    }
                    Ok(Access::Mounted(d.mountpoint.into()))
                }
                _ => Err(e.into()),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Why a read of a control file failed. Reads have no handle to carry a reply,
    /// so the daemon's reason (in last-error) is pointed to, never guessed at.
    fn read_error(path: &str, e: std::io::Error) -> CliError {
        if e.kind() == std::io::ErrorKind::NotFound {
            return missing(path);
        }
        CliError(format!(
            "the mounted store refused to show .vault/{path}: {e} (the daemon's reason is in .vault/last-error and daemon.log)"
        ))
    }

    /// One request through `.vault/command`, a transaction file: write it, then read
    /// the reply bound to this very handle (the daemon keeps it per open file), so the
    /// outcome and the result are this command's own, whatever other processes do.
    fn send_mounted(mp: &Path, req: &Request) -> Result<Option<Value>, CliError> {
        use std::os::unix::fs::FileExt;
        let data = zeroize::Zeroizing::new(serde_json::to_vec(req).expect("serializes"));
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(mp.join(".vault/command"))
            .map_err(|e| Self::read_error("command", e))?;
        let written = f.write_all(&data);
        let mut reply = Vec::new();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match f.read_at(&mut buf, reply.len() as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => reply.extend_from_slice(&buf[..n]),
            }
        }
        let reply = String::from_utf8_lossy(&reply);
        if let Err(e) = written {
            return Err(match reply.trim().strip_prefix("error: ") {
                Some(msg) if !msg.is_empty() => CliError(msg.to_string()),
                _ => CliError(format!("the mounted store refused the command: {e}")),
            });
        }
        match reply.strip_prefix("ok\n") {
            Some(rest) if rest.trim().is_empty() => Ok(None),
            Some(rest) => Ok(Some(serde_json::from_str(rest)?)),
            None => Err(CliError(format!(
                "the mounted store answered '{}' instead of a reply; is it an older diskvault? remount it",
                reply.trim().chars().take(80).collect::<String>()
            ))),
        }
    }

    fn check(c: &Control, path: &str) -> Result<Vec<String>, CliError> {
        let parts: Vec<String> = path.split('/').map(String::from).collect();
        let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
        if c.kind(&refs).is_none() {
            return Err(missing(path));
        }
        Ok(parts)
    }

    pub fn read(&self, path: &str) -> Result<Vec<u8>, CliError> {
        self.check_named()?;
        match self {
            Access::Direct(c) => {
                let parts = Self::check(c, path)?;
                let refs: Vec<&str> = parts.iter().map(|s| s.as_str()).collect();
                Ok(c.read(&refs, &Caller::current_user())?)
            }
            Access::Mounted(mp) => {
                // A name is one path segment; `..` must not lead out of the tree.
                if path
                    .split('/')
                    .any(|s| s.is_empty() || s == "." || s == "..")
                {
                    return Err(missing(path));
                }
                std::fs::read(mp.join(".vault").join(path)).map_err(|e| Self::read_error(path, e))
            }
        }
    }

    pub fn read_json(&self, path: &str) -> Result<Value, CliError> {
        Ok(serde_json::from_slice(&self.read(path)?)?)
    }

    pub fn read_text(&self, path: &str) -> Result<String, CliError> {
        Ok(String::from_utf8_lossy(&self.read(path)?)
            .trim()
            .to_string())
    }

    /// Carries out one request and returns its result (the object it created or
    /// changed): in-process when the store is not mounted, through the daemon's
    /// `.vault/command` when it is. Either way the same `Control::execute` runs.
    pub fn send(&self, req: impl Into<Request>) -> Result<Option<Value>, CliError> {
        self.check_named()?;
        let req = req.into();
        match self {
            Access::Direct(c) => Ok(c.execute(&req, &Caller::current_user())?.result),
            Access::Mounted(mp) => Self::send_mounted(mp, &req),
        }
    }
}

/// Prints a request's result; a request that answers none (it can't happen for the
/// commands that call this, but an older daemon might) is shown by reading `path`.
pub fn print_reply(a: &Access, reply: Option<Value>, path: &str) -> Result<(), CliError> {
    match reply {
        Some(v) => print_json(&v),
        None => print_json(&a.read_json(path)?),
    }
    Ok(())
}

/// Prints a result as JSON, or as `-o` and `--query` ask.
pub fn print_json(v: &Value) {
    super::print_object(v, super::Format::Json);
}

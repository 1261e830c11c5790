//! `diskvault key ...`: keys in the key vault.

use super::access::{print_json, print_reply, Access, StoreArg};
use super::{cell, print_object, print_rows, CliError, Format, KeyName, OutputArg};
use crate::control::args::{bool_value, split_list};
use crate::control::{self, KeyRequest};
use crate::vault::{KeyOptions, KeyUpdate};
use clap::Subcommand;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Generate an RSA key in the vault.
    Create {
        #[command(flatten)]
        name: KeyName,
        /// 2048 (default), 3072 or 4096 bits.
        #[arg(long)]
        size: Option<usize>,
        /// software (default: a sealed key file) or hsm (made in the vault's PKCS#11
        /// token, never leaving it; see 'vault set --hsm-module').
        #[arg(long, value_name = "KIND")]
        protection: Option<String>,
        /// As in az: RSA (software) or RSA-HSM (the same as --protection hsm).
        #[arg(long, value_name = "KTY")]
        kty: Option<String>,
        #[command(flatten)]
        attrs: AttrArgs,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Import an RSA private key from PEM (PKCS#1 or PKCS#8): bring your own key.
    Import {
        #[command(flatten)]
        name: KeyName,
        /// PEM file with the private key.
        #[arg(long)]
        pem: PathBuf,
        /// software (default) or hsm: move the key into the vault's token, which then
        /// alone keeps it (destroy the PEM file afterwards).
        #[arg(long, value_name = "KIND")]
        protection: Option<String>,
        #[command(flatten)]
        attrs: AttrArgs,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List keys (or soft-deleted keys).
    List {
        /// List soft-deleted keys instead (as JSON unless -o table or tsv).
        #[arg(long)]
        deleted: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a key (its current version, or --version), like `az keyvault key show`.
    Show {
        #[command(flatten)]
        name: KeyName,
        /// Show this version (the last part of a versioned key URL) instead of the current one.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Add a new version to a key.
    Rotate {
        #[command(flatten)]
        name: KeyName,
        /// Key size of the new version in bits: 2048, 3072 or 4096 (default: the current one's).
        #[arg(long)]
        size: Option<usize>,
        /// Not valid before (for the new version): a time, a date or +1d.
        #[arg(long, visible_alias = "not-before")]
        nbf: Option<String>,
        /// Expiry of the new version.
        #[arg(long, visible_alias = "expires")]
        exp: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show or set a key's rotation policy (Key Vault's lifetimeActions), e.g.
    /// --set '{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}]}'.
    RotationPolicy {
        #[command(flatten)]
        name: KeyName,
        /// The policy as JSON, or @FILE.
        #[arg(long, conflicts_with = "clear")]
        set: Option<String>,
        /// Remove the policy.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change attributes of a key, or of one version with --version (az's
    /// `set-attributes` works too).
    #[command(visible_alias = "set-attributes")]
    Set {
        #[command(flatten)]
        name: KeyName,
        /// Change only this version: the version, or its versioned key URL.
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        attrs: AttrArgs,
        /// Disable a version even though a disk encryption set's key rotation still
        /// needs it; the disks still on that version are revoked.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Soft-delete a key (recoverable for the vault's retention period).
    Delete {
        #[command(flatten)]
        name: KeyName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Recover a soft-deleted key.
    Recover {
        #[command(flatten)]
        name: KeyName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Permanently destroy a soft-deleted key (refused under purge protection).
    Purge {
        #[command(flatten)]
        name: KeyName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Grant a disk encryption set's identity access to a key.
    Grant {
        #[command(flatten)]
        name: KeyName,
        #[command(flatten)]
        who: Identity,
        /// Comma-separated: get, wrapKey, unwrapKey (default: all three).
        #[arg(long, default_value = "get,wrapKey,unwrapKey")]
        permissions: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove an identity's grant on a key.
    RevokeGrant {
        #[command(flatten)]
        name: KeyName,
        #[command(flatten)]
        who: Identity,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct Identity {
    /// The disk encryption set whose identity gets (or loses) access.
    #[arg(long)]
    des: Option<String>,
    /// A principal id instead of a set name.
    #[arg(long)]
    object_id: Option<String>,
}

#[derive(clap::Args, Default)]
pub struct AttrArgs {
    /// true or false. false stops wraps and unwraps: the key's disks are revoked.
    #[arg(long, conflicts_with = "disabled")]
    enabled: Option<String>,
    /// As in az: --disabled (or --disabled true) is --enabled false.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "BOOL")]
    disabled: Option<bool>,
    /// Not valid before: RFC 3339, a date (2027-01-31), +30d, or none.
    #[arg(long, visible_alias = "not-before")]
    nbf: Option<String>,
    /// Expires: RFC 3339, a date, +90d, or none. Expired keys still unwrap.
    #[arg(long, visible_alias = "expires")]
    exp: Option<String>,
    /// Permitted operations, comma-separated (e.g. wrapKey,unwrapKey).
    #[arg(long)]
    ops: Option<String>,
}

impl AttrArgs {
    /// The `enabled` value asked for, from --enabled or --disabled.
    fn enabled(&self) -> Option<String> {
        self.enabled
            .clone()
            .or(self.disabled.map(|d| (!d).to_string()))
    }

    fn is_empty(&self) -> bool {
        self.enabled().is_none() && self.nbf.is_none() && self.exp.is_none() && self.ops.is_none()
    }

    fn enabled_bool(&self) -> Result<Option<bool>, CliError> {
        Ok(self
            .enabled()
            .map(|v| bool_value("enabled", &v))
            .transpose()?)
    }

    /// Settings for a new key.
    fn options(&self, size: Option<usize>) -> Result<KeyOptions, CliError> {
        Ok(KeyOptions {
            protection: None,
            size,
            key_ops: self.ops.as_deref().map(split_list),
            nbf: time(&self.nbf, "nbf")?.flatten(),
            exp: time(&self.exp, "exp")?.flatten(),
            enabled: self.enabled_bool()?,
        })
    }

    /// A change of attributes; `none` clears nbf or exp.
    fn update(&self, force: bool) -> Result<KeyUpdate, CliError> {
        Ok(KeyUpdate {
            enabled: self.enabled_bool()?,
            nbf: time(&self.nbf, "nbf")?,
            exp: time(&self.exp, "exp")?,
            key_ops: self.ops.as_deref().map(split_list),
            force,
        })
    }
}

/// `--nbf`/`--exp`: `Some(None)` for `none`.
fn time(v: &Option<String>, what: &str) -> Result<Option<Option<i64>>, CliError> {
    Ok(v.as_deref()
        .map(|s| control::time_value_of(what, s))
        .transpose()?)
}

fn print_keys(keys: &[Value], fmt: Format) {
    let header = ["NAME", "ENABLED", "SIZE", "VERSIONS", "KID"];
    let rows = keys
        .iter()
        .map(|k| {
            ["name", "enabled", "keySize", "versions", "kid"]
                .iter()
                .map(|f| cell(&k[*f]))
                .collect()
        })
        .collect();
    print_rows(header.map(String::from).to_vec(), rows, fmt);
}

fn print_deleted_keys(keys: &[Value], fmt: Format) {
    let header = ["NAME", "DELETED", "PURGE DATE", "VERSIONS", "RECOVERY ID"];
    let rows = keys
        .iter()
        .map(|k| {
            [
                "name",
                "deletedDate",
                "scheduledPurgeDate",
                "versions",
                "recoveryId",
            ]
            .iter()
            .map(|f| cell(&k[*f]))
            .collect()
        })
        .collect();
    print_rows(header.map(String::from).to_vec(), rows, fmt);
}

fn identity(who: &Identity) -> control::Identity {
    match (&who.des, &who.object_id) {
        (Some(d), _) => control::Identity::Set(d.clone()),
        (_, Some(o)) => control::Identity::ObjectId(o.clone()),
        _ => unreachable!("clap requires one"),
    }
}

/// `NAME` and `VERSION` of a key URL `https://VAULT.vault.azure.net/keys/NAME/VERSION`.
fn kid_parts(kid: &str) -> Option<(&str, Option<&str>)> {
    let rest = kid.split_once("/keys/")?.1;
    Some(match rest.split_once('/') {
        Some((n, v)) => (n, Some(v)),
        None => (rest, None),
    })
}

/// The disks, snapshots and images wrapped (in any layer) by key `key`, or by its
/// `version` only, from one read of status.json: (kind, name, keyState).
fn objects_on_key(a: &Access, key: &str, version: Option<&str>) -> Vec<(String, String, String)> {
    let Ok(status) = a.read_json("status.json") else {
        return Vec::new();
    };
    let uses = |kid: &str| match kid_parts(kid) {
        Some((n, v)) => n.eq_ignore_ascii_case(key) && version.is_none_or(|want| v == Some(want)),
        None => false,
    };
    let mut out = Vec::new();
    for (field, noun) in [
        ("disks", "disk"),
        ("snapshots", "snapshot"),
        ("images", "image"),
    ] {
        for d in status[field].as_array().into_iter().flatten() {
            let on_key = d["layerKeyIds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k.as_str().is_some_and(uses));
            if let (true, Some(name)) = (on_key, d["name"].as_str()) {
                out.push((noun.to_string(), name.to_string(), cell(&d["keyState"])));
            }
        }
    }
    out
}

/// Tells (on stderr, stdout stays JSON) what a key change did to the objects on the
/// key, one line per state however many objects there are, e.g. `revoked 500 disks
/// and 1500 snapshots on key k1: d1, d2, ... (first 10 of 2000); 'diskvault disk list'
/// shows all`.
fn report_disks(what: &str, objs: &[(String, String, String)]) {
    if objs.is_empty() {
        eprintln!("no disk, snapshot or image uses {what}");
        return;
    }
    eprintln!("{}", super::summary::by_state(what, objs).join("\n"));
}

pub fn run_key(cmd: KeyCmd) -> Result<(), CliError> {
    match cmd {
        KeyCmd::Create {
            name,
            size,
            protection,
            kty,
            attrs,
            store,
        } => {
            let name = name.get();
            crate::vault::kid::validate_key_name(name)?;
            let mut options = attrs.options(size)?;
            let from_kty = match kty.as_deref() {
                None => None,
                Some(k) if k.eq_ignore_ascii_case("RSA") => Some("software"),
                Some(k) if k.eq_ignore_ascii_case("RSA-HSM") => Some("hsm"),
                Some(k) => {
                    return Err(CliError(format!(
                        "--kty '{k}' is not supported; use RSA or RSA-HSM (disk encryption sets take RSA keys)"
                    )))
                }
            };
            let protection = match (protection.as_deref(), from_kty) {
                (Some(p), Some(k)) if !p.eq_ignore_ascii_case(k) => {
                    return Err(CliError(format!(
                        "--protection {p} and --kty {} disagree; RSA is software, RSA-HSM is hsm",
                        kty.unwrap_or_default()
                    )))
                }
                (Some(p), _) => Some(p.to_string()),
                (None, k) => k.map(String::from),
            };
            options.protection = protection.as_deref().map(str::parse).transpose()?;
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::Create {
                name: name.into(),
                options,
            })?;
            print_reply(&a, reply, &format!("keys/{name}/key.json"))?;
        }
        KeyCmd::Import {
            name,
            pem,
            protection,
            attrs,
            store,
        } => {
            let name = name.get();
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&pem)
                    .map_err(|e| CliError(format!("cannot read {}: {e}", pem.display())))?,
            );
            crate::vault::kid::validate_key_name(name)?;
            let mut options = attrs.options(None)?;
            options.protection = protection.as_deref().map(str::parse).transpose()?;
            let hsm = options.protection == Some(crate::vault::keyvault::Protection::Hsm);
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::Import {
                name: name.into(),
                pem: text,
                options,
            })?;
            print_reply(&a, reply, &format!("keys/{name}/key.json"))?;
            if hsm {
                eprintln!(
                    "the key is in the HSM now, which alone keeps it; destroy {} (e.g. shred -u {})",
                    pem.display(),
                    pem.display()
                );
            }
        }
        KeyCmd::List {
            deleted,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let v = a.read_json("vault.json")?;
            let list = v[if deleted { "deletedKeyList" } else { "keyList" }]
                .as_array()
                .cloned()
                .unwrap_or_default();
            // Deleted keys have always printed as JSON; keep that the default.
            match output.format(if deleted { Format::Json } else { Format::Table }) {
                Format::Json => print_json(&Value::Array(list)),
                fmt if deleted => print_deleted_keys(&list, fmt),
                fmt => print_keys(&list, fmt),
            }
        }
        KeyCmd::Show {
            name,
            version,
            output,
            store,
        } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let path = match &version {
                Some(v) => format!("keys/{name}/versions/{v}/key.json"),
                None => format!("keys/{name}/key.json"),
            };
            print_object(&a.read_json(&path)?, output.format(Format::Json));
        }
        KeyCmd::Rotate {
            name,
            size,
            nbf,
            exp,
            store,
        } => {
            let name = name.get();
            let options = KeyOptions {
                size,
                nbf: time(&nbf, "nbf")?.flatten(),
                exp: time(&exp, "exp")?.flatten(),
                ..Default::default()
            };
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::Rotate {
                name: name.into(),
                options,
            })?;
            print_reply(&a, reply, &format!("keys/{name}/key.json"))?;
        }
        KeyCmd::RotationPolicy {
            name,
            set,
            clear,
            store,
        } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let path = format!("keys/{name}/rotation-policy");
            let policy = match &set {
                Some(p) => {
                    let text = match p.strip_prefix('@') {
                        Some(f) => std::fs::read_to_string(f)
                            .map_err(|e| CliError(format!("cannot read {f}: {e}")))?,
                        None => p.clone(),
                    };
                    control::parse_rotation_policy(&text)?
                }
                None => None,
            };
            let reply = if set.is_some() || clear {
                a.send(KeyRequest::RotationPolicy {
                    name: name.into(),
                    policy,
                })?
            } else {
                None
            };
            print_reply(&a, reply, &path)?;
        }
        KeyCmd::Set {
            name,
            version,
            attrs,
            force,
            store,
        } => {
            let name = name.get();
            if attrs.is_empty() {
                return Err(CliError(
                    "nothing to change; give --enabled, --disabled, --nbf, --exp or --ops".into(),
                ));
            }
            let update = attrs.update(force)?;
            // A version, or a versioned key URL as every other option takes.
            let version = match version.as_deref().map(|v| (v, kid_parts(v))) {
                None => None,
                Some((v, None)) => Some(v.to_string()),
                Some((v, Some((n, ver)))) => {
                    if !n.eq_ignore_ascii_case(name) {
                        return Err(CliError(format!(
                            "--version '{v}' is a version of key '{n}', not of '{name}'"
                        )));
                    }
                    Some(ver.filter(|x| !x.is_empty()).map(String::from).ok_or_else(|| {
                        CliError(format!(
                            "--version '{v}' names no version; give a versioned key URL or the version itself"
                        ))
                    })?)
                }
            };
            let a = Access::open(&store)?;
            let dir = match &version {
                Some(v) => format!("keys/{name}/versions/{v}"),
                None => format!("keys/{name}"),
            };
            let reply = a.send(KeyRequest::Update {
                name: name.into(),
                version: version.clone(),
                update,
            })?;
            print_reply(&a, reply, &format!("{dir}/key.json"))?;
            // Enabling or disabling reaches every disk the key (version) wraps.
            if attrs.enabled().is_some() {
                let what = match &version {
                    Some(v) => format!("key {name} version {v}"),
                    None => format!("key {name}"),
                };
                report_disks(&what, &objects_on_key(&a, name, version.as_deref()));
            }
        }
        KeyCmd::Delete { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::Delete { name: name.into() })?;
            print_reply(&a, reply, &format!("deleted-keys/{name}/deleted.json"))?;
            report_disks(
                &format!("deleted key {name}"),
                &objects_on_key(&a, name, None),
            );
        }
        KeyCmd::Recover { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::Recover { name: name.into() })?;
            print_reply(&a, reply, &format!("keys/{name}/key.json"))?;
        }
        KeyCmd::Purge { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            a.send(KeyRequest::Purge { name: name.into() })?;
            println!("purged key {name}");
        }
        KeyCmd::Grant {
            name,
            who,
            permissions,
            store,
        } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::Grant {
                name: name.into(),
                identity: identity(&who),
                permissions: Some(split_list(&permissions)),
            })?;
            print_reply(&a, reply, &format!("keys/{name}/grants"))?;
        }
        KeyCmd::RevokeGrant { name, who, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let reply = a.send(KeyRequest::RevokeGrant {
                name: name.into(),
                identity: identity(&who),
            })?;
            print_reply(&a, reply, &format!("keys/{name}/grants"))?;
        }
    }
    Ok(())
}

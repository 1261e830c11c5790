//! `diskvault key ...`, `diskvault vault ...` and `diskvault des ...`.

use super::access::{print_json, Access, StoreArg};
use super::{cell, print_object, print_rows, CliError, Format, KeyName, OutputArg, SetName};
use crate::control::args::{bool_value, split_list};
use crate::control::{self, KeyRequest, SetRequest, VaultRequest};
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
    /// Change attributes of a key, or of one version with --version.
    Set {
        #[command(flatten)]
        name: KeyName,
        /// Change only this version (the last part of a versioned key URL).
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

/// Names of the disks wrapped (in any layer) by key `key`, or by its `version` only.
fn disks_on_key(a: &Access, key: &str, version: Option<&str>) -> Vec<String> {
    let Ok(status) = a.read_json("status.json") else {
        return Vec::new();
    };
    let uses = |kid: &str| match kid_parts(kid) {
        Some((n, v)) => n.eq_ignore_ascii_case(key) && version.is_none_or(|want| v == Some(want)),
        None => false,
    };
    status["disks"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|d| {
            d["layerKeyIds"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|k| k.as_str().is_some_and(uses))
        })
        .filter_map(|d| d["name"].as_str().map(String::from))
        .collect()
}

/// Tells (on stderr, stdout stays JSON) which disks a key change reached, and their
/// state now, e.g. `disks on key k1: data1 (Revoked: key k1 is disabled)`.
fn report_disks(a: &Access, what: &str, disks: &[String]) {
    if disks.is_empty() {
        eprintln!("no disk uses {what}");
        return;
    }
    let list: Vec<String> = disks
        .iter()
        .map(|d| match a.read_json(&format!("disks/{d}/disk.json")) {
            Ok(j) => format!("{d} ({})", cell(&j["keyState"])),
            Err(_) => d.clone(),
        })
        .collect();
    eprintln!("disks on {what}: {}", list.join(", "));
}

/// The vault's name as az's `--source-vault` gives it: a name, a resource id ending
/// in `/vaults/NAME`, or the vault URI.
fn source_vault_name(s: &str) -> &str {
    let s = s.trim().trim_end_matches('/');
    match s.strip_prefix("https://") {
        Some(host) => host.split(['.', '/']).next().unwrap_or(host),
        None => s.rsplit('/').next().unwrap_or(s),
    }
}

/// Refuses a `--source-vault` that is not this store's key vault.
fn check_source_vault(a: &Access, given: Option<&str>) -> Result<(), CliError> {
    let Some(given) = given else {
        return Ok(());
    };
    let ours = a.read_json("vault.json")?["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    if source_vault_name(given).eq_ignore_ascii_case(&ours) {
        return Ok(());
    }
    Err(CliError(format!(
        "--source-vault '{given}' is not this store's key vault '{ours}'; give --source-vault {ours} or leave it out"
    )))
}

pub fn run_key(cmd: KeyCmd) -> Result<(), CliError> {
    match cmd {
        KeyCmd::Create {
            name,
            size,
            attrs,
            store,
        } => {
            let name = name.get();
            crate::vault::kid::validate_key_name(name)?;
            let options = attrs.options(size)?;
            let a = Access::open(&store)?;
            a.send(KeyRequest::Create {
                name: name.into(),
                options,
            })?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
        }
        KeyCmd::Import {
            name,
            pem,
            attrs,
            store,
        } => {
            let name = name.get();
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&pem)
                    .map_err(|e| CliError(format!("cannot read {}: {e}", pem.display())))?,
            );
            crate::vault::kid::validate_key_name(name)?;
            let options = attrs.options(None)?;
            let a = Access::open(&store)?;
            a.send(KeyRequest::Import {
                name: name.into(),
                pem: text,
                options,
            })?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
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
            a.send(KeyRequest::Rotate {
                name: name.into(),
                options,
            })?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
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
            if set.is_some() || clear {
                a.send(KeyRequest::RotationPolicy {
                    name: name.into(),
                    policy,
                })?;
            }
            print_json(&a.read_json(&path)?);
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
            let a = Access::open(&store)?;
            let dir = match &version {
                Some(v) => format!("keys/{name}/versions/{v}"),
                None => format!("keys/{name}"),
            };
            a.send(KeyRequest::Update {
                name: name.into(),
                version: version.clone(),
                update,
            })?;
            print_json(&a.read_json(&format!("{dir}/key.json"))?);
            // Enabling or disabling reaches every disk the key (version) wraps.
            if attrs.enabled().is_some() {
                let what = match &version {
                    Some(v) => format!("key {name} version {v}"),
                    None => format!("key {name}"),
                };
                report_disks(&a, &what, &disks_on_key(&a, name, version.as_deref()));
            }
        }
        KeyCmd::Delete { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            let disks = disks_on_key(&a, name, None);
            a.send(KeyRequest::Delete { name: name.into() })?;
            print_json(&a.read_json(&format!("deleted-keys/{name}/deleted.json"))?);
            report_disks(&a, &format!("deleted key {name}"), &disks);
        }
        KeyCmd::Recover { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            a.send(KeyRequest::Recover { name: name.into() })?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
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
            a.send(KeyRequest::Grant {
                name: name.into(),
                identity: identity(&who),
                permissions: Some(split_list(&permissions)),
            })?;
            print_json(&a.read_json(&format!("keys/{name}/grants"))?);
        }
        KeyCmd::RevokeGrant { name, who, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            a.send(KeyRequest::RevokeGrant {
                name: name.into(),
                identity: identity(&who),
            })?;
            print_json(&a.read_json(&format!("keys/{name}/grants"))?);
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum VaultCmd {
    /// Show the key vault, like `az keyvault show`.
    Show {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Turn on purge protection (permanent) and/or set the soft-delete retention.
    Set {
        /// true turns on purge protection, permanently (disk encryption sets need it).
        #[arg(long, value_name = "BOOL")]
        purge_protection: Option<String>,
        /// 7 to 90 days.
        #[arg(long)]
        retention_days: Option<u32>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Check the audit log's hash chain; names the first bad line.
    VerifyAudit {
        #[command(flatten)]
        store: StoreArg,
    },
}

/// vault.json without the key lists (those are `key list`).
fn vault_json(a: &Access) -> Result<Value, CliError> {
    let mut v = a.read_json("vault.json")?;
    if let Some(o) = v.as_object_mut() {
        o.remove("keyList");
        o.remove("deletedKeyList");
    }
    Ok(v)
}

pub fn run_vault(cmd: VaultCmd) -> Result<(), CliError> {
    match cmd {
        VaultCmd::Show { output, store } => {
            let a = Access::open(&store)?;
            print_object(&vault_json(&a)?, output.format(Format::Json));
        }
        VaultCmd::Set {
            purge_protection,
            retention_days,
            store,
        } => {
            if purge_protection.is_none() && retention_days.is_none() {
                return Err(CliError(
                    "nothing to change; give --purge-protection or --retention-days".into(),
                ));
            }
            let a = Access::open(&store)?;
            // Retention first: purge protection fixes it.
            let purge_protection = purge_protection
                .map(|p| bool_value("purge-protection", &p))
                .transpose()?;
            if let Some(d) = retention_days {
                a.send(VaultRequest::RetentionDays(d))?;
            }
            if let Some(p) = purge_protection {
                a.send(VaultRequest::PurgeProtection(p))?;
            }
            print_json(&vault_json(&a)?);
        }
        VaultCmd::VerifyAudit { store } => {
            let a = Access::open(&store)?;
            let r = a.read_text("verify-audit")?;
            match r.strip_prefix("FAILED: ") {
                Some(why) => {
                    return Err(CliError(format!(
                        "{why}; the audit log was tampered with (or damaged)"
                    )))
                }
                None => println!("{r}"),
            }
        }
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum DesCmd {
    /// Create a disk encryption set (needs purge protection on the vault).
    Create {
        #[command(flatten)]
        name: SetName,
        /// Versioned key URL (NAME/VERSION or https://VAULT.vault.azure.net/keys/NAME/VERSION);
        /// versionless only with --auto-rotate.
        #[arg(long)]
        key_url: String,
        /// EncryptionAtRestWithCustomerKey (default) or EncryptionAtRestWithPlatformAndCustomerKeys.
        #[arg(long)]
        encryption_type: Option<String>,
        /// Follow the key's latest version (rotationToLatestKeyVersionEnabled):
        /// --auto-rotate, --auto-rotate true or --auto-rotate false.
        #[arg(long, visible_alias = "enable-auto-key-rotation", num_args = 0..=1,
              default_missing_value = "true", value_name = "BOOL")]
        auto_rotate: Option<bool>,
        /// As in az: the key's vault (name, id or URL); must be this store's vault.
        #[arg(long)]
        source_vault: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a set, like `az disk-encryption-set show`.
    Show {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List disk encryption sets: type, state, active key.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change the key (re-wraps every disk of the set) or the auto-rotation flag.
    Update {
        #[command(flatten)]
        name: SetName,
        /// The new key: a versioned URL (NAME/VERSION or the full URL); re-wraps every disk.
        #[arg(long)]
        key_url: Option<String>,
        /// Follow the key's latest version: --auto-rotate, --auto-rotate true or false.
        #[arg(long, visible_alias = "enable-auto-key-rotation", num_args = 0..=1,
              default_missing_value = "true", value_name = "BOOL")]
        auto_rotate: Option<bool>,
        /// As in az: the key's vault (name, id or URL); must be this store's vault.
        #[arg(long)]
        source_vault: Option<String>,
        /// Refused unless unchanged: the encryption type is fixed at creation.
        #[arg(long)]
        encryption_type: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a set that no disk uses.
    Delete {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        store: StoreArg,
    },
}

pub fn run_des(cmd: DesCmd) -> Result<(), CliError> {
    match cmd {
        DesCmd::Create {
            name,
            key_url,
            encryption_type,
            auto_rotate,
            source_vault,
            store,
        } => {
            let name = name.get();
            crate::store::des::validate_set_name(name)?;
            let a = Access::open(&store)?;
            check_source_vault(&a, source_vault.as_deref())?;
            a.send(SetRequest::Create {
                name: name.into(),
                key_url,
                encryption_type,
                auto_rotate: auto_rotate.unwrap_or(false),
            })?;
            print_json(&a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?);
        }
        DesCmd::Show {
            name,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let path = format!("disk-encryption-sets/{}/status.json", name.get());
            print_object(&a.read_json(&path)?, output.format(Format::Json));
        }
        DesCmd::List { output, store } => {
            let a = Access::open(&store)?;
            let sets = a.read_json("status.json")?["diskEncryptionSets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            match output.format(Format::Table) {
                Format::Json => print_json(&Value::Array(sets)),
                fmt => {
                    let header = [
                        "NAME",
                        "ENCRYPTION TYPE",
                        "STATE",
                        "AUTO-ROTATE",
                        "ACTIVE KEY",
                    ];
                    let rows = sets
                        .iter()
                        .map(|s| {
                            vec![
                                cell(&s["name"]),
                                cell(&s["encryptionType"]),
                                cell(&s["provisioningState"]),
                                cell(&s["rotationToLatestKeyVersionEnabled"]),
                                cell(&s["activeKey"]["keyUrl"]),
                            ]
                        })
                        .collect();
                    print_rows(header.map(String::from).to_vec(), rows, fmt);
                }
            }
        }
        DesCmd::Update {
            name,
            key_url,
            auto_rotate,
            source_vault,
            encryption_type,
            store,
        } => {
            let name = name.get();
            if key_url.is_none() && auto_rotate.is_none() && encryption_type.is_none() {
                return Err(CliError(
                    "nothing to change; give --key-url or --auto-rotate".into(),
                ));
            }
            let a = Access::open(&store)?;
            check_source_vault(&a, source_vault.as_deref())?;
            a.send(SetRequest::Update {
                name: name.into(),
                key_url,
                auto_rotate,
                encryption_type,
            })?;
            print_json(&a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?);
        }
        DesCmd::Delete { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            a.send(SetRequest::Delete { name: name.into() })?;
            println!("deleted disk encryption set {name}");
        }
    }
    Ok(())
}

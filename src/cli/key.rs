//! `diskvault key ...`, `diskvault vault ...` and `diskvault des ...`.

use super::access::{print_json, word, Access, StoreArg};
use super::CliError;
use clap::Subcommand;
use serde_json::Value;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum KeyCmd {
    /// Generate an RSA key in the vault.
    Create {
        name: String,
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
        name: String,
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
        #[arg(long)]
        deleted: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a key (its current version, or --version), like `az keyvault key show`.
    Show {
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Add a new version to a key.
    Rotate {
        name: String,
        #[arg(long)]
        size: Option<usize>,
        /// Not valid before (for the new version): a time, a date or +1d.
        #[arg(long)]
        nbf: Option<String>,
        /// Expiry of the new version.
        #[arg(long)]
        exp: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show or set a key's rotation policy (Key Vault's lifetimeActions), e.g.
    /// --set '{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}]}'.
    RotationPolicy {
        name: String,
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
        name: String,
        #[arg(long)]
        version: Option<String>,
        #[command(flatten)]
        attrs: AttrArgs,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Soft-delete a key (recoverable for the vault's retention period).
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Recover a soft-deleted key.
    Recover {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Permanently destroy a soft-deleted key (refused under purge protection).
    Purge {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Grant a disk encryption set's identity access to a key.
    Grant {
        name: String,
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
        name: String,
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
    /// true or false.
    #[arg(long)]
    enabled: Option<String>,
    /// Not valid before: RFC 3339, a date (2027-01-31), +30d, or none.
    #[arg(long)]
    nbf: Option<String>,
    /// Expires: RFC 3339, a date, +90d, or none. Expired keys still unwrap.
    #[arg(long)]
    exp: Option<String>,
    /// Permitted operations, comma-separated (e.g. wrapKey,unwrapKey).
    #[arg(long)]
    ops: Option<String>,
}

impl AttrArgs {
    fn words(&self) -> Result<String, CliError> {
        let mut s = String::new();
        for (k, v) in [
            ("enabled", &self.enabled),
            ("nbf", &self.nbf),
            ("exp", &self.exp),
            ("ops", &self.ops),
        ] {
            if let Some(v) = v {
                s += &format!(" {k}={}", word(v)?);
            }
        }
        Ok(s)
    }
}

fn print_keys(keys: &[Value]) {
    println!(
        "{:<24} {:<8} {:>6} {:>8}  KID",
        "NAME", "ENABLED", "SIZE", "VERSIONS"
    );
    for k in keys {
        println!(
            "{:<24} {:<8} {:>6} {:>8}  {}",
            k["name"].as_str().unwrap_or(""),
            k["enabled"].to_string(),
            k["keySize"].to_string(),
            k["versions"].to_string(),
            k["kid"].as_str().unwrap_or(""),
        );
    }
}

fn identity_words(who: &Identity) -> Result<String, CliError> {
    Ok(match (&who.des, &who.object_id) {
        (Some(d), _) => word(d)?.to_string(),
        (_, Some(o)) => format!("object-id={}", word(o)?),
        _ => unreachable!("clap requires one"),
    })
}

pub fn run_key(cmd: KeyCmd) -> Result<(), CliError> {
    match cmd {
        KeyCmd::Create {
            name,
            size,
            attrs,
            store,
        } => {
            crate::vault::kid::validate_key_name(&name)?;
            let a = Access::open(&store)?;
            let mut line = word(&name)?.to_string();
            if let Some(s) = size {
                line += &format!(" size={s}");
            }
            line += &attrs.words()?;
            a.write("keys/create", line.as_bytes())?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
        }
        KeyCmd::Import {
            name,
            pem,
            attrs,
            store,
        } => {
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&pem)
                    .map_err(|e| CliError(format!("cannot read {}: {e}", pem.display())))?,
            );
            crate::vault::kid::validate_key_name(&name)?;
            let a = Access::open(&store)?;
            let mut data = zeroize::Zeroizing::new(format!("{}{}\n", word(&name)?, attrs.words()?));
            data.push_str(&text);
            a.write("keys/import", data.as_bytes())?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
        }
        KeyCmd::List {
            deleted,
            json,
            store,
        } => {
            let a = Access::open(&store)?;
            let v = a.read_json("vault.json")?;
            let list = v[if deleted { "deletedKeyList" } else { "keyList" }]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if json || deleted {
                print_json(&Value::Array(list));
            } else {
                print_keys(&list);
            }
        }
        KeyCmd::Show {
            name,
            version,
            store,
        } => {
            let a = Access::open(&store)?;
            let path = match &version {
                Some(v) => format!("keys/{name}/versions/{v}/key.json"),
                None => format!("keys/{name}/key.json"),
            };
            print_json(&a.read_json(&path)?);
        }
        KeyCmd::Rotate {
            name,
            size,
            nbf,
            exp,
            store,
        } => {
            let a = Access::open(&store)?;
            let mut line = String::new();
            if let Some(s) = size {
                line += &format!("size={s} ");
            }
            if let Some(t) = &nbf {
                line += &format!("nbf={} ", word(t)?);
            }
            if let Some(t) = &exp {
                line += &format!("exp={} ", word(t)?);
            }
            let line = if line.is_empty() {
                "1".to_string()
            } else {
                line.trim().to_string()
            };
            a.write(&format!("keys/{name}/rotate"), line.as_bytes())?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
        }
        KeyCmd::RotationPolicy {
            name,
            set,
            clear,
            store,
        } => {
            let a = Access::open(&store)?;
            let path = format!("keys/{name}/rotation-policy");
            if let Some(p) = set {
                let text = match p.strip_prefix('@') {
                    Some(f) => std::fs::read_to_string(f)
                        .map_err(|e| CliError(format!("cannot read {f}: {e}")))?,
                    None => p,
                };
                a.write(&path, text.as_bytes())?;
            } else if clear {
                a.write(&path, b"none")?;
            }
            print_json(&a.read_json(&path)?);
        }
        KeyCmd::Set {
            name,
            version,
            attrs,
            store,
        } => {
            let words = attrs.words()?;
            if words.is_empty() {
                return Err(CliError(
                    "nothing to change; give --enabled, --nbf, --exp or --ops".into(),
                ));
            }
            let a = Access::open(&store)?;
            let dir = match &version {
                Some(v) => format!("keys/{name}/versions/{v}"),
                None => format!("keys/{name}"),
            };
            a.write(&format!("{dir}/update"), words.trim().as_bytes())?;
            print_json(&a.read_json(&format!("{dir}/key.json"))?);
        }
        KeyCmd::Delete { name, store } => {
            let a = Access::open(&store)?;
            a.rmdir(&format!("keys/{name}"))?;
            print_json(&a.read_json(&format!("deleted-keys/{name}/deleted.json"))?);
        }
        KeyCmd::Recover { name, store } => {
            let a = Access::open(&store)?;
            a.write(&format!("deleted-keys/{name}/recover"), b"1")?;
            print_json(&a.read_json(&format!("keys/{name}/key.json"))?);
        }
        KeyCmd::Purge { name, store } => {
            let a = Access::open(&store)?;
            a.rmdir(&format!("deleted-keys/{name}"))?;
            println!("purged key {name}");
        }
        KeyCmd::Grant {
            name,
            who,
            permissions,
            store,
        } => {
            let a = Access::open(&store)?;
            let line = format!(
                "grant {} permissions={}",
                identity_words(&who)?,
                word(&permissions)?
            );
            a.write(&format!("keys/{name}/grants"), line.as_bytes())?;
            print_json(&a.read_json(&format!("keys/{name}/grants"))?);
        }
        KeyCmd::RevokeGrant { name, who, store } => {
            let a = Access::open(&store)?;
            let line = format!("revoke {}", identity_words(&who)?);
            a.write(&format!("keys/{name}/grants"), line.as_bytes())?;
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
        store: StoreArg,
    },
    /// Turn on purge protection (permanent) and/or set the soft-delete retention.
    Set {
        #[arg(long)]
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

pub fn run_vault(cmd: VaultCmd) -> Result<(), CliError> {
    match cmd {
        VaultCmd::Show { store } => {
            let a = Access::open(&store)?;
            let mut v = a.read_json("vault.json")?;
            if let Some(o) = v.as_object_mut() {
                o.remove("keyList");
                o.remove("deletedKeyList");
            }
            print_json(&v);
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
            if let Some(d) = retention_days {
                a.write("retention-days", d.to_string().as_bytes())?;
            }
            if let Some(p) = &purge_protection {
                a.write("purge-protection", word(p)?.as_bytes())?;
            }
            let mut v = a.read_json("vault.json")?;
            if let Some(o) = v.as_object_mut() {
                o.remove("keyList");
                o.remove("deletedKeyList");
            }
            print_json(&v);
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
        name: String,
        /// Versioned key URL (NAME/VERSION or https://VAULT.vault.azure.net/keys/NAME/VERSION);
        /// versionless only with --auto-rotate.
        #[arg(long)]
        key_url: String,
        /// EncryptionAtRestWithCustomerKey (default) or EncryptionAtRestWithPlatformAndCustomerKeys.
        #[arg(long)]
        encryption_type: Option<String>,
        /// Follow the key's latest version (rotationToLatestKeyVersionEnabled).
        #[arg(long)]
        auto_rotate: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a set, like `az disk-encryption-set show`.
    Show {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change the key (re-wraps every disk of the set) or the auto-rotation flag.
    Update {
        name: String,
        #[arg(long)]
        key_url: Option<String>,
        #[arg(long)]
        auto_rotate: Option<String>,
        /// Refused unless unchanged: the encryption type is fixed at creation.
        #[arg(long)]
        encryption_type: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a set that no disk uses.
    Delete {
        name: String,
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
            store,
        } => {
            crate::store::validate_name(&name)?;
            let a = Access::open(&store)?;
            let mut line = format!("{} {}", word(&name)?, word(&key_url)?);
            if let Some(t) = &encryption_type {
                line += &format!(" type={}", word(t)?);
            }
            if auto_rotate {
                line += " auto-rotate=true";
            }
            a.write("disk-encryption-sets/create", line.as_bytes())?;
            print_json(&a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?);
        }
        DesCmd::Show { name, store } => {
            let a = Access::open(&store)?;
            print_json(&a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?);
        }
        DesCmd::List { json, store } => {
            let a = Access::open(&store)?;
            let sets = a.read_json("status.json")?["diskEncryptionSets"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if json {
                print_json(&Value::Array(sets));
            } else {
                println!(
                    "{:<24} {:<44} {:<11} ACTIVE KEY",
                    "NAME", "ENCRYPTION TYPE", "STATE"
                );
                for s in &sets {
                    println!(
                        "{:<24} {:<44} {:<11} {}",
                        s["name"].as_str().unwrap_or(""),
                        s["encryptionType"].as_str().unwrap_or(""),
                        s["provisioningState"].as_str().unwrap_or(""),
                        s["activeKey"]["keyUrl"].as_str().unwrap_or(""),
                    );
                }
            }
        }
        DesCmd::Update {
            name,
            key_url,
            auto_rotate,
            encryption_type,
            store,
        } => {
            let mut line = String::new();
            for (k, v) in [
                ("key-url", &key_url),
                ("auto-rotate", &auto_rotate),
                ("type", &encryption_type),
            ] {
                if let Some(v) = v {
                    line += &format!("{k}={} ", word(v)?);
                }
            }
            if line.is_empty() {
                return Err(CliError(
                    "nothing to change; give --key-url or --auto-rotate".into(),
                ));
            }
            let a = Access::open(&store)?;
            a.write(
                &format!("disk-encryption-sets/{name}/update"),
                line.trim().as_bytes(),
            )?;
            print_json(&a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?);
        }
        DesCmd::Delete { name, store } => {
            let a = Access::open(&store)?;
            a.rmdir(&format!("disk-encryption-sets/{name}"))?;
            println!("deleted disk encryption set {name}");
        }
    }
    Ok(())
}

//! `diskvault des ...`: disk encryption sets.

use super::access::{print_json, print_reply, Access, StoreArg};
use super::{cell, print_object, print_rows, CliError, Format, OutputArg, SetName};
use crate::control::SetRequest;
use clap::Subcommand;
use serde_json::Value;

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
    /// The disks, snapshots and images that use a set (their ids), like
    /// `az disk-encryption-set list-associated-resources`.
    ListAssociatedResources {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        output: OutputArg,
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
            let reply = a.send(SetRequest::Create {
                placement: super::output::placement(),
                name: name.into(),
                key_url,
                encryption_type,
                auto_rotate: auto_rotate.unwrap_or(false),
            })?;
            print_reply(
                &a,
                reply,
                &format!("disk-encryption-sets/{name}/status.json"),
            )?;
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
            super::check_group_of(&a, &format!("disk-encryption-sets/{name}/status.json"))?;
            let reply = a.send(SetRequest::Update {
                name: name.into(),
                key_url,
                auto_rotate,
                encryption_type,
            })?;
            print_reply(
                &a,
                reply,
                &format!("disk-encryption-sets/{name}/status.json"),
            )?;
        }
        DesCmd::ListAssociatedResources {
            name,
            output,
            store,
        } => {
            let name = name.get();
            let a = Access::open(&store)?;
            // The set must exist, and -g/its id name its group.
            super::check_group(&a.read_json(&format!("disk-encryption-sets/{name}/status.json"))?)?;
            let status = a.read_json("status.json")?;
            let ids: Vec<Value> = ["disks", "snapshots", "images"]
                .iter()
                .flat_map(|k| status[*k].as_array().cloned().unwrap_or_default())
                .filter(|o| {
                    o["encryption"]["diskEncryptionSetId"]
                        .as_str()
                        .and_then(|id| id.rsplit('/').next())
                        .is_some_and(|n| n.eq_ignore_ascii_case(name))
                })
                .map(|o| o["id"].clone())
                .collect();
            print_object(&Value::Array(ids), output.format(Format::Json));
        }
        DesCmd::Delete { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            super::check_group_of(&a, &format!("disk-encryption-sets/{name}/status.json"))?;
            a.send(SetRequest::Delete { name: name.into() })?;
            println!("deleted disk encryption set {name}");
        }
    }
    Ok(())
}

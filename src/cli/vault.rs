//! `diskvault vault ...`: the key vault itself.

use super::access::{print_json, Access, StoreArg};
use super::{print_object, CliError, Format, OutputArg};
use crate::control::args::bool_value;
use crate::control::VaultRequest;
use clap::Subcommand;
use serde_json::Value;

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
            let mut reply = None;
            if let Some(d) = retention_days {
                reply = a.send(VaultRequest::RetentionDays(d))?;
            }
            if let Some(p) = purge_protection {
                reply = a.send(VaultRequest::PurgeProtection(p))?;
            }
            match reply {
                Some(v) => print_json(&v),
                None => print_json(&vault_json(&a)?),
            }
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

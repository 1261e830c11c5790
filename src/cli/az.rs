//! az's own command paths that have no short form: `keyvault` (create, show, update,
//! list, set-policy, delete-policy; `keyvault key` is `key`), `role assignment`,
//! `account`, `group` and `configure`. They send the same typed requests as the
//! short commands, so both behave alike, mounted or not.

use super::access::{print_json, Access, StoreArg};
use super::{output, print_object, CliError, Format, OutputArg};
use crate::control::ArmRequest;
use clap::Subcommand;
use serde_json::Value;

/// `true`/`false` as az writes booleans (`--enable-purge-protection true`); a bare
/// flag is true.
fn parse_bool(s: &str) -> Result<bool, String> {
    crate::control::args::parse_bool(s)
        .ok_or_else(|| format!("'{s}' is not a boolean; use true or false"))
}

#[derive(Subcommand)]
pub enum KeyvaultCmd {
    /// Name the store's key vault (only while it has no keys) and set its properties:
    /// `keyvault create -n NAME -g GROUP -l LOCATION --enable-purge-protection true`.
    /// A store has one vault; the same name again just updates it.
    Create {
        /// The vault's name (3-24 letters, digits and hyphens).
        #[arg(short = 'n', long)]
        name: String,
        /// Purge protection (permanent once on; disk encryption sets need it).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
        enable_purge_protection: Option<bool>,
        /// Soft delete is always on, as in Azure today; `false` is refused.
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
        enable_soft_delete: Option<bool>,
        /// Soft-delete retention, 7 to 90 days.
        #[arg(long)]
        retention_days: Option<u32>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show the key vault, like `az keyvault show`.
    Show {
        /// The vault's name; must be this store's.
        #[arg(short = 'n', long)]
        name: Option<String>,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change the vault's purge protection or retention, like `az keyvault update`.
    Update {
        /// The vault's name; must be this store's.
        #[arg(short = 'n', long)]
        name: Option<String>,
        /// Turn purge protection on (permanent once on).
        #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
        enable_purge_protection: Option<bool>,
        /// Soft-delete retention, 7 to 90 days.
        #[arg(long)]
        retention_days: Option<u32>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List key vaults: the store's one.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Keys in the vault (`keyvault key create|show|list|set-attributes|rotate|...`).
    Key {
        #[command(subcommand)]
        cmd: super::key::KeyCmd,
    },
    /// Give an identity permissions on every key of the vault (a vault-wide access
    /// policy, beside each key's own grants): `--key-permissions wrapkey unwrapkey get`.
    SetPolicy {
        /// The vault's name; must be this store's.
        #[arg(short = 'n', long)]
        name: Option<String>,
        /// The identity: a disk encryption set's `identity.principalId`.
        #[arg(long)]
        object_id: String,
        /// get, wrapKey, unwrapKey (space-separated, as in az).
        #[arg(long, num_args = 1.., required = true)]
        key_permissions: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Remove an identity's vault-wide access policy (a revocation for what it gave).
    DeletePolicy {
        /// The vault's name; must be this store's.
        #[arg(short = 'n', long)]
        name: Option<String>,
        /// The identity: a disk encryption set's identity.principalId.
        #[arg(long)]
        object_id: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Subcommand)]
pub enum RoleCmd {
    /// Role assignments on the vault (Azure RBAC).
    Assignment {
        #[command(subcommand)]
        cmd: AssignmentCmd,
    },
}

#[derive(Subcommand)]
pub enum AssignmentCmd {
    /// Assign a role. "Key Vault Crypto Service Encryption User" gives get, wrapKey and
    /// unwrapKey on the scope's keys; Reader and the other control-plane roles give
    /// no key access, as in Azure.
    Create {
        /// The identity's principal id.
        #[arg(long)]
        assignee: String,
        /// The role, e.g. "Key Vault Crypto Service Encryption User" or Reader.
        #[arg(long)]
        role: String,
        /// The vault's id (or a key's, VAULTID/keys/NAME).
        #[arg(long)]
        scope: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List role assignments.
    List {
        /// The identity's principal id.
        #[arg(long)]
        assignee: Option<String>,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete the assignments that match every filter given.
    Delete {
        /// The identity's principal id.
        #[arg(long)]
        assignee: Option<String>,
        /// The role, e.g. "Key Vault Crypto Service Encryption User" or Reader.
        #[arg(long)]
        role: Option<String>,
        /// The vault's id (or a key's, VAULTID/keys/NAME).
        #[arg(long)]
        scope: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Subcommand)]
pub enum AccountCmd {
    /// The store as a subscription: its id (the store's id) and name.
    Show {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Select the subscription: this store's id, or a name for it (the first name
    /// given is kept, so the seed's `account set --subscription NAME` runs).
    Set {
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Create a resource group (`-n NAME -l LOCATION`); creating one again is a no-op.
    Create {
        /// The vault's name; must be this store's.
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a resource group.
    Show {
        /// The vault's name; must be this store's.
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List resource groups.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// Refuses a vault name that is not the store's vault.
fn check_vault(a: &Access, name: Option<&str>) -> Result<Value, CliError> {
    let v = a.read_json("vault.json")?;
    if let Some(n) = name {
        let ours = v["name"].as_str().unwrap_or_default();
        if !n.eq_ignore_ascii_case(ours) {
            return Err(CliError(format!(
                "(ResourceNotFound) The Resource 'Microsoft.KeyVault/vaults/{n}' was not found: this store's key vault is '{ours}'; give -n {ours}, or 'diskvault keyvault create -n {n}' to name a vault that has no keys yet"
            )));
        }
    }
    Ok(v)
}

pub fn run_keyvault(cmd: KeyvaultCmd) -> Result<(), CliError> {
    match cmd {
        KeyvaultCmd::Create {
            name,
            enable_purge_protection,
            enable_soft_delete,
            retention_days,
            store,
        } => {
            if enable_soft_delete == Some(false) {
                return Err(CliError(
                    "soft delete can't be turned off (as in Azure, where it is always on); leave out --enable-soft-delete false".into(),
                ));
            }
            let a = Access::open(&store)?;
            let p = output::placement();
            let reply = a.send(ArmRequest::VaultCreate {
                name,
                purge_protection: enable_purge_protection,
                retention_days,
                placement: p,
            })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
        KeyvaultCmd::Show {
            name,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let v = check_vault(&a, name.as_deref())?;
            print_object(&v, output.format(Format::Json));
        }
        KeyvaultCmd::Update {
            name,
            enable_purge_protection,
            retention_days,
            store,
        } => {
            if enable_purge_protection.is_none() && retention_days.is_none() {
                return Err(CliError(
                    "nothing to change; give --enable-purge-protection true or --retention-days N"
                        .into(),
                ));
            }
            let a = Access::open(&store)?;
            check_vault(&a, name.as_deref())?;
            // The requests `vault set` sends, so both leave the same records.
            let mut reply = None;
            if let Some(d) = retention_days {
                reply = a.send(crate::control::VaultRequest::RetentionDays(d))?;
            }
            if let Some(p) = enable_purge_protection {
                reply = a.send(crate::control::VaultRequest::PurgeProtection(p))?;
            }
            print_json(&reply.unwrap_or(Value::Null));
        }
        KeyvaultCmd::List { output, store } => {
            let a = Access::open(&store)?;
            let v = check_vault(&a, None)?;
            print_object(&Value::Array(vec![v]), output.format(Format::Json));
        }
        KeyvaultCmd::Key { cmd } => super::key::run_key(cmd)?,
        KeyvaultCmd::SetPolicy {
            name,
            object_id,
            key_permissions,
            store,
        } => {
            let a = Access::open(&store)?;
            check_vault(&a, name.as_deref())?;
            // az takes them space-separated; commas too.
            let permissions = key_permissions
                .iter()
                .flat_map(|p| p.split(','))
                .filter(|p| !p.is_empty())
                .map(String::from)
                .collect();
            let reply = a.send(ArmRequest::SetPolicy {
                object_id,
                permissions,
            })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
        KeyvaultCmd::DeletePolicy {
            name,
            object_id,
            store,
        } => {
            let a = Access::open(&store)?;
            check_vault(&a, name.as_deref())?;
            let reply = a.send(ArmRequest::DeletePolicy { object_id })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
    }
    Ok(())
}

pub fn run_role(cmd: RoleCmd) -> Result<(), CliError> {
    let RoleCmd::Assignment { cmd } = cmd;
    match cmd {
        AssignmentCmd::Create {
            assignee,
            role,
            scope,
            store,
        } => {
            let a = Access::open(&store)?;
            let reply = a.send(ArmRequest::RoleCreate {
                assignee,
                role,
                scope,
            })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
        AssignmentCmd::List {
            assignee,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let mut v = a.read_json("role-assignments")?;
            if let (Some(x), Some(list)) = (assignee, v.as_array_mut()) {
                list.retain(|r| r["principalId"] == Value::String(x.clone()));
            }
            print_object(&v, output.format(Format::Json));
        }
        AssignmentCmd::Delete {
            assignee,
            role,
            scope,
            store,
        } => {
            if assignee.is_none() && role.is_none() && scope.is_none() {
                return Err(CliError(
                    "give --assignee, --role or --scope to say which assignments to delete".into(),
                ));
            }
            let a = Access::open(&store)?;
            a.send(ArmRequest::RoleDelete {
                assignee,
                role,
                scope,
            })?;
        }
    }
    Ok(())
}

pub fn run_account(cmd: AccountCmd) -> Result<(), CliError> {
    match cmd {
        AccountCmd::Show { output, store } => {
            let a = Access::open(&store)?;
            print_object(&a.read_json("account.json")?, output.format(Format::Json));
        }
        AccountCmd::Set { store } => {
            let Some(sub) = output::globals().subscription.clone() else {
                return Err(CliError(
                    "give --subscription ID (this store's id, 'diskvault account show --query id')"
                        .into(),
                ));
            };
            // Sent without the global check: this is what sets the name it checks.
            let a = Access::open_unchecked(&store)?;
            a.send(ArmRequest::AccountSet { subscription: sub })?;
        }
    }
    Ok(())
}

pub fn run_group(cmd: GroupCmd) -> Result<(), CliError> {
    match cmd {
        GroupCmd::Create { name, store } => {
            let Some(location) = output::globals().location.clone() else {
                return Err(CliError(
                    "give -l LOCATION for the new group (e.g. -l westus)".into(),
                ));
            };
            let a = Access::open(&store)?;
            let reply = a.send(ArmRequest::GroupCreate { name, location })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
        GroupCmd::Show {
            name,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let groups = a.read_json("groups.json")?;
            let g = groups
                .as_array()
                .and_then(|l| {
                    l.iter()
                        .find(|g| g["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(&name)))
                })
                .cloned()
                .ok_or_else(|| {
                    CliError(format!(
                        "(ResourceGroupNotFound) Resource group '{name}' could not be found; see 'diskvault group list'"
                    ))
                })?;
            print_object(&g, output.format(Format::Json));
        }
        GroupCmd::List { output, store } => {
            let a = Access::open(&store)?;
            print_object(&a.read_json("groups.json")?, output.format(Format::Json));
        }
    }
    Ok(())
}

/// `configure --defaults group=G location=L`.
pub fn configure(defaults: &[String], store: &StoreArg) -> Result<(), CliError> {
    let (mut group, mut location) = (None, None);
    for d in defaults {
        match d.split_once('=') {
            Some(("group", v)) => group = Some(v.to_string()),
            Some(("location", v)) => location = Some(v.to_string()),
            _ => {
                return Err(CliError(format!(
                    "unknown default '{d}'; use group=NAME and/or location=NAME (an empty value clears it)"
                )))
            }
        }
    }
    let a = Access::open(store)?;
    let reply = if group.is_none() && location.is_none() {
        Some(a.read_json("configure")?)
    } else {
        a.send(ArmRequest::Configure { group, location })?
    };
    print_json(&reply.unwrap_or(Value::Null));
    Ok(())
}

//! `diskvault vault ...`: the key vault itself.

use super::access::{print_json, Access, StoreArg};
use super::seal::parse_seal;
use super::{print_object, CliError, Format, OutputArg};
use crate::control::args::bool_value;
use crate::control::VaultRequest;
use crate::vault::custody::{SealKind, SealSetup, UnsealOptions};
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
        hsm: HsmArgs,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Check the audit log's hash chain; names the first bad line.
    VerifyAudit {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Seal a store's clear private keys (made by an older release) in place, under a
    /// key-encryption key from --seal (host, tpm2 or passphrase). Crash-safe; run it
    /// again after an interruption. The store must not be mounted.
    Seal {
        /// Where the key-encryption key comes from: host (default), tpm2 or passphrase.
        #[arg(long, value_name = "KIND", alias = "with", value_parser = parse_seal)]
        seal: Option<SealKind>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Seal the store's keys under another key-encryption key (change the passphrase,
    /// move to a TPM...). The current one (--host-key, --passphrase-file, --tpm-tcti)
    /// opens them first. The store must not be mounted.
    Reseal {
        /// The new source: host, tpm2 or passphrase.
        #[arg(long, value_name = "KIND", value_parser = parse_seal)]
        seal: SealKind,
        /// For --seal host: the new host key (made if absent), recorded in the store.
        #[arg(long, value_name = "PATH")]
        new_host_key: Option<std::path::PathBuf>,
        /// For --seal passphrase: a file with the new passphrase (else it is asked).
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<std::path::PathBuf>,
        /// For --seal tpm2: the TPM's TCTI, recorded in the store.
        #[arg(long, value_name = "TCTI")]
        new_tpm_tcti: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// A PKCS#11 token for the vault's `--protection hsm` keys.
#[derive(clap::Args, Clone, Default)]
pub struct HsmArgs {
    /// The PKCS#11 module (e.g. /usr/lib/softhsm/libsofthsm2.so).
    #[arg(long, value_name = "PATH", requires = "hsm_token")]
    pub hsm_module: Option<std::path::PathBuf>,
    /// The token's label.
    #[arg(long, value_name = "LABEL", requires = "hsm_module")]
    pub hsm_token: Option<String>,
    /// A file with the user PIN (its path is recorded, never the PIN;
    /// DISKVAULT_HSM_PIN_FILE overrides it).
    #[arg(long, value_name = "FILE", requires = "hsm_module")]
    pub hsm_pin_file: Option<std::path::PathBuf>,
}

impl HsmArgs {
    pub fn config(&self) -> Result<Option<crate::vault::custody::hsm::HsmConfig>, CliError> {
        let (Some(m), Some(t)) = (&self.hsm_module, &self.hsm_token) else {
            return Ok(None);
        };
        let abs = |p: &std::path::Path| std::path::absolute(p).map(|p| p.display().to_string());
        Ok(Some(crate::vault::custody::hsm::HsmConfig {
            module: abs(m)?,
            token: t.clone(),
            pin_file: self.hsm_pin_file.as_deref().map(abs).transpose()?,
        }))
    }
}

/// The store, opened here: sealing rewrites files a daemon holds.
fn unmounted(
    store: &StoreArg,
    what: &str,
) -> Result<std::sync::Arc<crate::store::Store>, CliError> {
    match Access::open_with(store, store.kek.options_with_prompt())? {
        Access::Direct(c) => Ok(c.store().clone()),
        Access::Mounted(mp) => Err(CliError(format!(
            "the store is mounted at {}; unmount it first ('diskvault umount {}'), then run {what} again",
            mp.display(),
            mp.display()
        ))),
    }
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
            hsm,
            store,
        } => {
            if let Some(cfg) = hsm.config()? {
                let s = unmounted(&store, "'vault set --hsm-module'")?;
                let p = s
                    .vault()
                    .set_hsm(&crate::vault::Caller::current_user(), cfg)?;
                eprintln!(
                    "the vault's HSM is token '{}'",
                    p.hsm.as_ref().map(|h| h.token.as_str()).unwrap_or("")
                );
                if purge_protection.is_none() && retention_days.is_none() {
                    print_json(&s.vault().show());
                    return Ok(());
                }
            }
            if purge_protection.is_none() && retention_days.is_none() {
                return Err(CliError(
                    "nothing to change; give --purge-protection, --retention-days or --hsm-module"
                        .into(),
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
        VaultCmd::Seal { seal, store } => {
            let s = unmounted(&store, "'vault seal'")?;
            let setup = SealSetup {
                kind: seal.unwrap_or_default(),
                host_key: store.kek.host_key.clone(),
                tpm_tcti: store.kek.tpm_tcti.clone(),
            };
            if s.clear_key_count() == 0 {
                if let Some(p) = crate::store::Store::key_protection(&store.store)? {
                    println!(
                        "the store's keys are sealed already ({}); 'diskvault vault reseal --seal KIND' changes the key-encryption key",
                        p.seal
                    );
                    return Ok(());
                }
            }
            let r = s.seal_keys(&setup, &store.kek.options_with_prompt())?;
            eprintln!(
                "sealed {} private key files with {}; no clear copy is left in the store",
                r.sealed, r.protection.seal
            );
            print_json(&r.protection.summary());
        }
        VaultCmd::Reseal {
            seal,
            new_host_key,
            new_passphrase_file,
            new_tpm_tcti,
            store,
        } => {
            let conflict = match seal {
                SealKind::Host => new_passphrase_file.is_some() || new_tpm_tcti.is_some(),
                SealKind::Passphrase => new_host_key.is_some() || new_tpm_tcti.is_some(),
                SealKind::Tpm2 => new_host_key.is_some() || new_passphrase_file.is_some(),
            };
            if conflict {
                return Err(CliError(format!(
                    "--seal {seal} takes only its own --new-... option (--new-host-key for host, --new-passphrase-file for passphrase, --new-tpm-tcti for tpm2)"
                )));
            }
            let s = unmounted(&store, "'vault reseal'")?;
            let setup = SealSetup {
                kind: seal,
                host_key: new_host_key.clone(),
                tpm_tcti: new_tpm_tcti.clone(),
            };
            let mut new = UnsealOptions {
                host_key: new_host_key,
                passphrase_file: new_passphrase_file,
                tpm_tcti: new_tpm_tcti,
                ..store.kek.options_with_prompt()
            };
            new.passphrase = None;
            let p = s.reseal(&setup, &new)?;
            eprintln!("the store's keys are now sealed with {}", p.seal);
            print_json(&p.summary());
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

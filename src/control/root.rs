//! The top of `.vault/`: README, status, the audit log, and the vault's settings.

use super::routes::{Params, Route, Seg::Lit};
use super::{args, flag, line, pretty, Control, Request};
use crate::store::{Result, StoreError};
use crate::vault::Caller;
use serde_json::json;

/// A change to the key vault's own settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum VaultRequest {
    /// Turns purge protection on (it can't be turned off).
    PurgeProtection(bool),
    /// Soft-delete retention, 7 to 90 days.
    RetentionDays(u32),
}

/// The file form of a request, for the test that holds it to the parsers.
#[cfg(test)]
impl VaultRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        match self {
            VaultRequest::PurgeProtection(b) => ("purge-protection".into(), line(b)),
            VaultRequest::RetentionDays(d) => ("retention-days".into(), line(d)),
        }
    }
}

/// One kind's list (`disks.json` ...), as `status.json` has it.
fn list_json(c: &Control, kind: crate::store::ObjectKind) -> Vec<u8> {
    let v = pretty(&super::view::kind_list(c.store(), kind));
    crate::store::trim_heap();
    v
}

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::r(&[Lit("README")], |_, _, _| {
            Ok(super::README.as_bytes().to_vec())
        }),
        Route::r(&[Lit("status.json")], |c, _, _| {
            let v = pretty(&super::view::status(c.store()));
            crate::store::trim_heap();
            Ok(v)
        }),
        Route::r(&[Lit("disks.json")], |c, _, _| {
            Ok(list_json(c, crate::store::ObjectKind::Disk))
        }),
        Route::r(&[Lit("snapshots.json")], |c, _, _| {
            Ok(list_json(c, crate::store::ObjectKind::Snapshot))
        }),
        Route::r(&[Lit("images.json")], |c, _, _| {
            Ok(list_json(c, crate::store::ObjectKind::Image))
        }),
        Route::r(&[Lit("merges.json")], |c, _, _| {
            Ok(pretty(&c.store().merge_status()))
        }),
        Route::r(&[Lit("daemon.json")], |c, _, _| {
            Ok(pretty(
                &serde_json::to_value(c.daemon()).expect("serializes"),
            ))
        })
        .daemon_only(),
        Route::r(&[Lit("last-error")], |c, _, _| {
            Ok(c.last_error().into_bytes())
        }),
        Route::r(&[Lit("audit.log")], |c, _, _| {
            Ok(c.store().vault().audit_text())
        }),
        Route::r(&[Lit("verify-audit")], |c, _, _| {
            Ok(match c.store().vault().verify_audit() {
                Ok(v) => line(format!("OK: {v}")),
                Err(fault) => line(format!("FAILED: {fault}")),
            })
        }),
        Route::r(&[Lit("vault.json")], read_vault),
        Route::rw(
            &[Lit("purge-protection")],
            |c, _, _| Ok(line(c.store().vault().props().enable_purge_protection)),
            |_, data| {
                Ok(Request::Vault(VaultRequest::PurgeProtection(flag(
                    data,
                    "purge-protection",
                )?)))
            },
        ),
        Route::rw(
            &[Lit("retention-days")],
            |c, _, _| {
                Ok(line(
                    c.store().vault().props().soft_delete_retention_in_days,
                ))
            },
            parse_retention,
        ),
        // A typed request as JSON (what the CLI sends): any command of the tree.
        Route::w(&[Lit("command")], |_, data| {
            serde_json::from_slice::<Request>(args::text(data)?.as_bytes()).map_err(|e| {
                args::invalid(format!(
                    "malformed command: {e}; the command file takes a request as the CLI sends it (see docs/control-files.md)"
                ))
            })
        }),
        Route::dir(&[Lit("keys")]).mkdir(super::keys::mkdir),
        Route::dir(&[Lit("deleted-keys")]),
        Route::dir(&[Lit("disk-encryption-sets")]),
        Route::dir(&[Lit("disks")]),
    ]
}

fn read_vault(c: &Control, _: &Params, _: &Caller) -> Result<Vec<u8>> {
    let vault = c.store().vault();
    let mut v = super::view::vault(c.store());
    v["keyList"] = json!(vault.list_keys());
    v["deletedKeyList"] = json!(vault.list_deleted());
    Ok(pretty(&v))
}

fn parse_retention(_: &Params, data: &[u8]) -> Result<Request> {
    let t = args::text(data)?;
    let days: u32 = t.parse().map_err(|_| {
        args::invalid(format!(
            "retention-days takes a number of days (7 to 90), not '{t}'"
        ))
    })?;
    Ok(Request::Vault(VaultRequest::RetentionDays(days)))
}

pub(super) fn execute(
    c: &Control,
    r: &VaultRequest,
    caller: &Caller,
) -> std::result::Result<Option<serde_json::Value>, StoreError> {
    let vault = c.store().vault();
    match r {
        VaultRequest::PurgeProtection(on) => vault.set_props(caller, Some(*on), None)?,
        VaultRequest::RetentionDays(d) => vault.set_props(caller, None, Some(*d))?,
    };
    Ok(Some(super::view::vault(c.store())))
}

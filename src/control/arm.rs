//! The Azure frame around the store, as az's commands reach it: the vault as a
//! resource (`keyvault create`, `set-policy`, `delete-policy`), RBAC role assignments,
//! the subscription (`account`), resource groups and `configure --defaults`.

use super::args::{self, f, parse, Ty};
use super::routes::{Route, Seg::Lit};
use super::{pretty, Control, Request};
use crate::store::arm::{self, Group, Placement};
use crate::store::{Result, StoreError};
use crate::vault::Caller;
use serde_json::{json, Value};

#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub enum ArmRequest {
    /// `keyvault create -n NAME`: names a fresh vault, sets its properties.
    VaultCreate {
        name: String,
        #[serde(default)]
        purge_protection: Option<bool>,
        #[serde(default)]
        retention_days: Option<u32>,
        #[serde(default, skip_serializing_if = "Placement::is_empty")]
        placement: Placement,
    },
    SetPolicy {
        object_id: String,
        permissions: Vec<String>,
    },
    DeletePolicy {
        object_id: String,
    },
    RoleCreate {
        assignee: String,
        role: String,
        scope: String,
    },
    RoleDelete {
        #[serde(default)]
        assignee: Option<String>,
        #[serde(default)]
        role: Option<String>,
        #[serde(default)]
        scope: Option<String>,
    },
    /// `account set --subscription X`: the store's id, or a name for it (given once).
    AccountSet {
        subscription: String,
    },
    GroupCreate {
        name: String,
        location: String,
    },
    /// `configure --defaults group=G location=L` (an empty value clears one).
    Configure {
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        location: Option<String>,
    },
}

const VAULT_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(
        &[
            "purge-protection",
            "enablePurgeProtection",
            "enable-purge-protection",
        ],
        false,
        false,
        Ty::Bool,
    ),
    f(
        &["retention-days", "softDeleteRetentionInDays"],
        false,
        false,
        Ty::Str,
    ),
    args::GROUP,
    args::LOCATION,
];
const POLICY_FIELDS: &[args::Field] = &[
    f(&["object-id", "objectId"], true, true, Ty::Str),
    f(&["key-permissions", "permissions"], false, false, Ty::List),
];
const ROLE_FIELDS: &[args::Field] = &[
    f(&["assignee", "principalId"], false, false, Ty::Str),
    f(&["role", "roleDefinitionName"], false, false, Ty::Str),
    f(&["scope"], false, false, Ty::Str),
];
const GROUP_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["location"], true, true, Ty::Str),
];
const DEFAULT_FIELDS: &[args::Field] = &[
    f(&["group"], false, false, Ty::Str),
    f(&["location"], false, false, Ty::Str),
];

fn req(r: ArmRequest) -> Result<Request> {
    Ok(Request::Arm(r))
}

pub(super) fn routes() -> Vec<Route> {
    vec![
        Route::r(&[Lit("account.json")], |c, _, _| {
            Ok(pretty(&account(c.store())?))
        }),
        Route::w(&[Lit("account-set")], |_, data| {
            req(ArmRequest::AccountSet {
                subscription: args::text(data)?.to_string(),
            })
        }),
        Route::rw(
            &[Lit("configure")],
            |c, _, _| Ok(pretty(&json!(c.store().arm_state()?.defaults))),
            |_, data| {
                let a = parse(
                    data,
                    DEFAULT_FIELDS,
                    "write `group=G location=L` (empty clears one)",
                )?;
                if a.0.is_empty() {
                    return Err(args::invalid(
                        "nothing to set; give group= and/or location=",
                    ));
                }
                req(ArmRequest::Configure {
                    group: a.str("group").map(String::from),
                    location: a.str("location").map(String::from),
                })
            },
        ),
        Route::r(&[Lit("groups.json")], |c, _, _| {
            Ok(pretty(&groups(c.store())?))
        }),
        Route::w(&[Lit("group-create")], |_, data| {
            let a = parse(
                data,
                GROUP_FIELDS,
                "write `NAME LOCATION`, e.g. `rg1 westus`",
            )?;
            req(ArmRequest::GroupCreate {
                name: a.str("name").unwrap_or_default().into(),
                location: a.str("location").unwrap_or_default().into(),
            })
        }),
        Route::w(&[Lit("vault-create")], |_, data| {
            let a = parse(
                data,
                VAULT_CREATE_FIELDS,
                "write `NAME [purge-protection=true] [retention-days=N] [resourceGroup=G] [location=L]`",
            )?;
            let days = a
                .str("retention-days")
                .map(|d| {
                    d.parse::<u32>().map_err(|_| {
                        args::invalid(format!("retention-days takes 7 to 90, not '{d}'"))
                    })
                })
                .transpose()?;
            req(ArmRequest::VaultCreate {
                name: a.str("name").unwrap_or_default().into(),
                purge_protection: a.bool("purge-protection"),
                retention_days: days,
                placement: args::placement(&a),
            })
        }),
        Route::rw(
            &[Lit("access-policies")],
            |c, _, _| Ok(pretty(&json!(c.store().vault().props().access_policies))),
            |_, data| {
                let a = parse(
                    data,
                    POLICY_FIELDS,
                    "write `OBJECT-ID key-permissions=wrapkey,unwrapkey,get` to set, or `OBJECT-ID` alone (no permissions) to delete",
                )?;
                let object_id = a.str("object-id").unwrap_or_default().to_string();
                match a.list("key-permissions") {
                    Some(p) => req(ArmRequest::SetPolicy {
                        object_id,
                        permissions: p.to_vec(),
                    }),
                    None => req(ArmRequest::DeletePolicy { object_id }),
                }
            },
        ),
        Route::r(&[Lit("role-assignments")], |c, _, _| {
            Ok(pretty(&role_list(c.store())))
        }),
        Route::w(&[Lit("role-assignment-create")], |_, data| {
            let a = parse(data, ROLE_FIELDS, "write `assignee=ID role=ROLE scope=ID`")?;
            let need = |k: &str| {
                a.str(k)
                    .map(String::from)
                    .ok_or_else(|| args::invalid(format!("{k}= is required")))
            };
            req(ArmRequest::RoleCreate {
                assignee: need("assignee")?,
                role: need("role")?,
                scope: need("scope")?,
            })
        }),
        Route::w(&[Lit("role-assignment-delete")], |_, data| {
            let a = parse(
                data,
                ROLE_FIELDS,
                "write `[assignee=ID] [role=ROLE] [scope=ID]`",
            )?;
            if a.0.is_empty() {
                return Err(args::invalid(
                    "give assignee=, role= or scope= to say which",
                ));
            }
            req(ArmRequest::RoleDelete {
                assignee: a.str("assignee").map(String::from),
                role: a.str("role").map(String::from),
                scope: a.str("scope").map(String::from),
            })
        }),
    ]
}

/// `account show`: the store as a subscription.
pub fn account(store: &crate::store::Store) -> Result<Value> {
    let st = store.arm_state()?;
    let id = store.subscription_id();
    Ok(json!({
        "id": id,
        "name": st.subscription_name.clone().unwrap_or_else(|| id.clone()),
        "state": "Enabled",
        "isDefault": true,
        "tenantId": crate::store::des::TENANT_ID,
        "environmentName": "diskvault",
        "user": {"name": crate::vault::Caller::current_user().name, "type": "user"},
        "store": store.root().display().to_string(),
        "defaults": st.defaults,
    }))
}

fn group_json(store: &crate::store::Store, g: &Group) -> Value {
    json!({
        "id": format!("/subscriptions/{}/resourceGroups/{}", store.subscription_id(), g.name),
        "name": g.name,
        "location": g.location,
        "type": "Microsoft.Resources/resourceGroups",
        "properties": {"provisioningState": "Succeeded"},
    })
}

/// `group list`: groups created or used; objects from before groups are in `diskvault`.
pub fn groups(store: &crate::store::Store) -> Result<Value> {
    let mut gs = store.arm_state()?.groups;
    if !gs.iter().any(|g| g.name == arm::DEFAULT_GROUP) {
        gs.insert(
            0,
            Group {
                name: arm::DEFAULT_GROUP.into(),
                location: arm::DEFAULT_LOCATION.into(),
            },
        );
    }
    Ok(Value::Array(
        gs.iter().map(|g| group_json(store, g)).collect(),
    ))
}

fn role_list(store: &crate::store::Store) -> Value {
    let sub = store.subscription_id();
    let list: Vec<Value> = store
        .vault()
        .props()
        .role_assignments
        .iter()
        .map(|r| {
            json!({
                "id": format!("{}/providers/Microsoft.Authorization/roleAssignments/{}", r.scope, r.name),
                "name": r.name,
                "principalId": r.principal_id,
                "roleDefinitionName": r.role_definition_name,
                "scope": r.scope,
                "type": "Microsoft.Authorization/roleAssignments",
                "subscription": sub,
            })
        })
        .collect();
    Value::Array(list)
}

pub(super) fn execute(c: &Control, r: &ArmRequest, caller: &Caller) -> Result<Option<Value>> {
    let store = c.store();
    let vault = store.vault();
    match r {
        ArmRequest::VaultCreate {
            name,
            purge_protection,
            retention_days,
            placement,
        } => {
            let p = store.place(placement, Some(&store.vault_placement()))?;
            vault.create_named(
                caller,
                name,
                *purge_protection,
                *retention_days,
                p.resource_group.as_deref(),
                p.location.as_deref(),
            )?;
            Ok(Some(super::view::vault(store)))
        }
        ArmRequest::SetPolicy {
            object_id,
            permissions,
        } => {
            vault.set_policy(caller, object_id, permissions)?;
            Ok(Some(super::view::vault(store)))
        }
        ArmRequest::DeletePolicy { object_id } => {
            vault.delete_policy(caller, object_id)?;
            Ok(Some(super::view::vault(store)))
        }
        ArmRequest::RoleCreate {
            assignee,
            role,
            scope,
        } => {
            check_scope(store, scope)?;
            let a = vault.assign_role(caller, assignee, role, scope)?;
            let list = role_list(store);
            Ok(list
                .as_array()
                .and_then(|l| l.iter().find(|x| x["name"] == json!(a.name)).cloned()))
        }
        ArmRequest::RoleDelete {
            assignee,
            role,
            scope,
        } => {
            vault.delete_roles(
                caller,
                assignee.as_deref(),
                role.as_deref(),
                scope.as_deref(),
            )?;
            Ok(Some(role_list(store)))
        }
        ArmRequest::AccountSet { subscription } => {
            let id = store.subscription_id();
            let s = subscription.trim();
            if !s.eq_ignore_ascii_case(&id) {
                validate_sub_name(s)?;
                store.update_arm(|st| match &st.subscription_name {
                    Some(n) if !n.eq_ignore_ascii_case(s) => Err(StoreError::NotFound(format!(
                        "(SubscriptionNotFound) The subscription of '{s}' doesn't exist: this store is subscription '{n}' ({id}); give --subscription {n} or --subscription {id}"
                    ))),
                    _ => {
                        st.subscription_name = Some(s.to_string());
                        Ok(())
                    }
                })?;
            }
            Ok(Some(account(store)?))
        }
        ArmRequest::GroupCreate { name, location } => {
            let g = arm::validate_group(name)?;
            let l = arm::normalize_location(location)?;
            store.update_arm(|st| {
                match st.groups.iter_mut().find(|x| x.name.eq_ignore_ascii_case(&g)) {
                    // As az: creating an existing group is an update, but its location
                    // is fixed.
                    Some(x) if x.location != l => Err(StoreError::InvalidArgument(format!(
                        "(InvalidResourceGroupLocation) Invalid resource group location '{l}'. The Resource group already exists in location '{}'.",
                        x.location
                    ))),
                    Some(_) => Ok(()),
                    None => {
                        st.groups.push(Group {
                            name: g.clone(),
                            location: l.clone(),
                        });
                        Ok(())
                    }
                }
            })?;
            Ok(Some(group_json(
                store,
                &Group {
                    name: g,
                    location: l,
                },
            )))
        }
        ArmRequest::Configure { group, location } => {
            let g = group
                .as_deref()
                .filter(|g| !g.is_empty())
                .map(arm::validate_group)
                .transpose()?;
            let l = location
                .as_deref()
                .filter(|l| !l.is_empty())
                .map(arm::normalize_location)
                .transpose()?;
            store.update_arm(|st| {
                if group.is_some() {
                    st.defaults.resource_group = g;
                }
                if location.is_some() {
                    st.defaults.location = l;
                }
                Ok(())
            })?;
            Ok(Some(json!(store.arm_state()?.defaults)))
        }
    }
}

/// A subscription name: 1-64 printable characters.
fn validate_sub_name(s: &str) -> Result<()> {
    if s.is_empty() || s.chars().count() > 64 || s.chars().any(|c| c.is_control() || c == '/') {
        return Err(StoreError::InvalidArgument(format!(
            "invalid subscription '{}': give this store's id ('diskvault account show --query id') or a name of 1-64 characters",
            s.chars().take(80).collect::<String>()
        )));
    }
    Ok(())
}

/// A role's scope must hold this store's vault: its subscription, the vault's group,
/// the vault, or one of its keys.
fn check_scope(store: &crate::store::Store, scope: &str) -> Result<()> {
    let sub = store.subscription_id();
    let vault = store.vault().name();
    let group = store.vault_placement().group().to_string();
    let t = scope.trim().trim_end_matches('/');
    let parts: Vec<&str> = t.split('/').collect();
    let bad = |why: String| {
        Err(StoreError::InvalidArgument(format!(
            "invalid --scope '{}': {why}; give the vault's id ('diskvault keyvault show --query id')",
            t.chars().take(200).collect::<String>()
        )))
    };
    let eq = |a: &str, b: &str| a.eq_ignore_ascii_case(b);
    match parts.as_slice() {
        ["", s, id, rest @ ..] if eq(s, "subscriptions") => {
            if !eq(id, &sub) {
                return Err(StoreError::NotFound(format!(
                    "(SubscriptionNotFound) --scope names subscription '{id}', but this store is subscription '{sub}'"
                )));
            }
            match rest {
                [] => Ok(()),
                [rg, g, ..] if eq(rg, "resourceGroups") && !eq(g, &group) => bad(format!(
                    "resource group '{g}' does not hold key vault '{vault}' (it is in '{group}')"
                )),
                [_, _] => Ok(()),
                [_, _, "providers", ns, ty, v, tail @ ..]
                    if eq(&format!("{ns}/{ty}"), "Microsoft.KeyVault/vaults") && eq(v, &vault) =>
                {
                    match tail {
                        [] => Ok(()),
                        [k, key] if eq(k, "keys") => {
                            if store.vault().exists(key) {
                                Ok(())
                            } else {
                                Err(StoreError::Vault(crate::vault::VaultError::KeyNotFound(
                                    key.to_string(),
                                )))
                            }
                        }
                        _ => bad("only the vault or one of its keys can be the scope".into()),
                    }
                }
                _ => bad(format!("it is not key vault '{vault}' or one of its keys")),
            }
        }
        _ => bad("a scope is an Azure id".into()),
    }
}

/// The file form, for the test that holds requests to their parsers.
#[cfg(test)]
impl ArmRequest {
    pub(super) fn wire(&self) -> (String, Vec<u8>) {
        let obj = |v: Value| serde_json::to_vec(&v).expect("serializes");
        match self {
            ArmRequest::VaultCreate {
                name,
                purge_protection,
                retention_days,
                placement,
            } => {
                let mut m = serde_json::Map::new();
                m.insert("name".into(), json!(name));
                if let Some(p) = purge_protection {
                    m.insert("purge-protection".into(), json!(p));
                }
                if let Some(d) = retention_days {
                    m.insert("retention-days".into(), json!(d.to_string()));
                }
                args::placement_wire(&mut m, placement);
                ("vault-create".into(), obj(Value::Object(m)))
            }
            ArmRequest::SetPolicy {
                object_id,
                permissions,
            } => (
                "access-policies".into(),
                obj(json!({"object-id": object_id, "key-permissions": permissions})),
            ),
            ArmRequest::DeletePolicy { object_id } => {
                ("access-policies".into(), object_id.clone().into_bytes())
            }
            ArmRequest::RoleCreate {
                assignee,
                role,
                scope,
            } => (
                "role-assignment-create".into(),
                obj(json!({"assignee": assignee, "role": role, "scope": scope})),
            ),
            ArmRequest::RoleDelete {
                assignee,
                role,
                scope,
            } => {
                let mut m = serde_json::Map::new();
                for (k, v) in [("assignee", assignee), ("role", role), ("scope", scope)] {
                    if let Some(v) = v {
                        m.insert(k.into(), json!(v));
                    }
                }
                ("role-assignment-delete".into(), obj(Value::Object(m)))
            }
            ArmRequest::AccountSet { subscription } => {
                ("account-set".into(), super::line(subscription))
            }
            ArmRequest::GroupCreate { name, location } => (
                "group-create".into(),
                format!("{name} {location}").into_bytes(),
            ),
            ArmRequest::Configure { group, location } => {
                let mut m = serde_json::Map::new();
                if let Some(g) = group {
                    m.insert("group".into(), json!(g));
                }
                if let Some(l) = location {
                    m.insert("location".into(), json!(l));
                }
                ("configure".into(), obj(Value::Object(m)))
            }
        }
    }
}

//! The vault as an Azure resource: `keyvault create` (naming a fresh vault), vault-wide
//! access policies (`keyvault set-policy`, `delete-policy`) and RBAC role assignments
//! (`role assignment create`). Policies and the crypto roles apply to every key,
//! beside each key's own grants.

use super::super::audit::Caller;
use super::super::kid::validate_vault_name;
use super::super::{now_secs, VaultError};
use super::{
    parse_permissions, validate_principal_id, write_json, Grant, KeyVault, RoleAssignment, State,
    VaultProps, VAULT_FILE,
};
use crate::crypto::random_uuid;

/// Roles a `role assignment create` takes, and the key permissions each gives.
pub const ROLES: &[(&str, &[&str])] = &[
    (
        "Key Vault Crypto Service Encryption User",
        &["get", "wrapKey", "unwrapKey"],
    ),
    ("Key Vault Crypto User", &["get", "wrapKey", "unwrapKey"]),
    ("Key Vault Crypto Officer", &["get", "wrapKey", "unwrapKey"]),
    ("Key Vault Administrator", &["get", "wrapKey", "unwrapKey"]),
    ("Key Vault Reader", &[]),
    ("Reader", &[]),
    ("Contributor", &[]),
    ("Owner", &[]),
];

/// A role's canonical name (case-insensitive match).
fn role(name: &str) -> Result<&'static str, VaultError> {
    ROLES
        .iter()
        .find(|(r, _)| r.eq_ignore_ascii_case(name.trim()))
        .map(|(r, _)| *r)
        .ok_or_else(|| {
            VaultError::InvalidArgument(format!(
                "unknown role '{}'; use one of: {}",
                name.chars().take(80).collect::<String>(),
                ROLES.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", ")
            ))
        })
}

/// Whether an assignment's scope covers key `key` of the vault: the vault, the key,
/// the vault's resource group, or the subscription (checked when it was assigned).
fn covers(scope: &str, props: &VaultProps, key: &str) -> bool {
    let s = scope.trim_end_matches('/').to_ascii_lowercase();
    let v = format!(
        "/providers/microsoft.keyvault/vaults/{}",
        props.name.to_ascii_lowercase()
    );
    let parts: Vec<&str> = s.split('/').collect();
    let group = props
        .resource_group
        .as_deref()
        .unwrap_or("diskvault")
        .to_ascii_lowercase();
    match parts.as_slice() {
        ["", "subscriptions", _] => true,
        ["", "subscriptions", _, "resourcegroups", g] => *g == group,
        ["", "subscriptions", _, "resourcegroups", g, ..] if *g == group => {
            s.ends_with(&v) || s.ends_with(&format!("{v}/keys/{}", key.to_ascii_lowercase()))
        }
        _ => false,
    }
}

/// Whether the vault-wide policies or a role give `object_id` permission `p` on `key`.
pub(super) fn vault_grants(props: &VaultProps, object_id: &str, key: &str, p: &str) -> bool {
    props
        .access_policies
        .iter()
        .any(|g| g.object_id == object_id && g.permissions.iter().any(|x| x == p))
        || props.role_assignments.iter().any(|r| {
            r.principal_id == object_id
                && covers(&r.scope, props, key)
                && ROLES
                    .iter()
                    .any(|(n, perms)| *n == r.role_definition_name && perms.contains(&p))
        })
}

impl KeyVault {
    fn save_props(&self, st: &mut State, p: VaultProps) -> Result<VaultProps, VaultError> {
        write_json(&self.dir.join(VAULT_FILE), &p)?;
        st.props = p.clone();
        Ok(p)
    }

    /// `save_props` for a change that takes access away: it is never refused. If it
    /// can't be saved it still holds in memory (enforced at once), and the error says so.
    fn save_revoking(
        &self,
        st: &mut State,
        p: VaultProps,
        what: String,
    ) -> Result<VaultProps, VaultError> {
        if let Err(e) = write_json(&self.dir.join(VAULT_FILE), &p) {
            st.props = p;
            return Err(self.not_saved(what, &e.into()));
        }
        st.props = p.clone();
        Ok(p)
    }

    /// `keyvault create -n NAME`: names the vault (only while it has no keys, since
    /// key ids and sealed key files carry the name) and sets its properties. The same
    /// name again just sets them.
    pub fn create_named(
        &self,
        caller: &Caller,
        name: &str,
        purge_protection: Option<bool>,
        retention_days: Option<u32>,
        group: Option<&str>,
        location: Option<&str>,
    ) -> Result<VaultProps, VaultError> {
        validate_vault_name(name)?;
        let name = name.to_ascii_lowercase();
        self.audited(
            "VaultCreate",
            caller,
            |_| format!("https://{name}{}/", super::super::kid::VAULT_DNS_SUFFIX),
            |st| {
                let mut p = st.props.clone();
                if p.name != name {
                    if !st.keys.is_empty() || !st.deleted.is_empty() || !st.broken.is_empty() {
                        return Err(VaultError::InvalidArgument(format!(
                            "this store already has key vault '{}' with keys; a store has one vault: use --vault-name {} (or give a new store its own vault with 'diskvault init --vault DIR --vault-name {name}')",
                            p.name, p.name
                        )));
                    }
                    p.name = name.clone();
                }
                // A vault's location is fixed once it has one (Azure can't move a
                // vault between regions), and so is its group: `create` only places.
                let has_keys = !st.keys.is_empty() || !st.deleted.is_empty();
                let fixed = |cur: &Option<String>, default: &str, new: &str, what: &str| {
                    let now = cur.as_deref().unwrap_or(default);
                    if !now.eq_ignore_ascii_case(new) && (cur.is_some() || has_keys) {
                        return Err(VaultError::InvalidArgument(format!(
                            "the key vault '{}' is in {what} '{now}', not '{new}'; a vault's {what} can't change: give -{} {now}, or leave it out",
                            p.name,
                            if what == "location" { "l" } else { "g" }
                        )));
                    }
                    Ok(())
                };
                if let Some(g) = group {
                    fixed(&p.resource_group, "diskvault", g, "resource group")?;
                    p.resource_group = Some(g.to_string());
                }
                if let Some(l) = location {
                    fixed(&p.location, "local", l, "location")?;
                    p.location = Some(l.to_string());
                }
                if let Some(d) = retention_days {
                    if !(7..=90).contains(&d) {
                        return Err(VaultError::InvalidArgument(format!(
                            "soft-delete retention of {d} days is out of range; use 7 to 90"
                        )));
                    }
                    if p.enable_purge_protection && d != p.soft_delete_retention_in_days {
                        return Err(VaultError::RetentionLocked);
                    }
                    p.soft_delete_retention_in_days = d;
                }
                match purge_protection {
                    Some(false) if p.enable_purge_protection => {
                        return Err(VaultError::PurgeProtectionPermanent)
                    }
                    Some(on) => p.enable_purge_protection = on,
                    None => {}
                }
                self.save_props(st, p)
            },
        )
    }

    /// `keyvault set-policy --object-id ID --key-permissions ...`: a vault-wide policy.
    /// Narrowing an identity's permissions is a revocation.
    pub fn set_policy(
        &self,
        caller: &Caller,
        object_id: &str,
        permissions: &[String],
    ) -> Result<Vec<Grant>, VaultError> {
        let perms = parse_permissions(permissions)?;
        validate_principal_id(object_id)?;
        let narrows = |st: &State| {
            st.props.access_policies.iter().any(|g| {
                g.object_id == object_id && g.permissions.iter().any(|p| !perms.contains(p))
            })
        };
        self.audited_revocation(
            "VaultAccessPolicySet",
            caller,
            narrows,
            |st| {
                format!(
                    "https://{}{}/",
                    st.props.name,
                    super::super::kid::VAULT_DNS_SUFFIX
                )
            },
            |st| {
                let mut p = st.props.clone();
                p.access_policies.retain(|g| g.object_id != object_id);
                p.access_policies.push(Grant {
                    object_id: object_id.to_string(),
                    display_name: String::new(),
                    permissions: perms.clone(),
                });
                Ok(self
                    .save_revoking(
                        st,
                        p,
                        format!("the vault-wide access policy of {object_id} is narrowed"),
                    )?
                    .access_policies)
            },
        )
    }

    /// `keyvault delete-policy --object-id ID`: a revocation of what it gave.
    pub fn delete_policy(
        &self,
        caller: &Caller,
        object_id: &str,
    ) -> Result<Vec<Grant>, VaultError> {
        self.audited_revocation(
            "VaultAccessPolicyDelete",
            caller,
            |_| true,
            |st| {
                format!(
                    "https://{}{}/",
                    st.props.name,
                    super::super::kid::VAULT_DNS_SUFFIX
                )
            },
            |st| {
                let mut p = st.props.clone();
                let before = p.access_policies.len();
                p.access_policies.retain(|g| g.object_id != object_id);
                if p.access_policies.len() == before {
                    return Err(VaultError::InvalidArgument(format!(
                        "the vault has no access policy for '{}'; see 'diskvault keyvault show'",
                        object_id.chars().take(60).collect::<String>()
                    )));
                }
                Ok(self
                    .save_revoking(
                        st,
                        p,
                        format!("the vault-wide access policy of {object_id} is removed"),
                    )?
                    .access_policies)
            },
        )
    }

    /// `role assignment create --assignee ID --role ROLE --scope SCOPE`.
    pub fn assign_role(
        &self,
        caller: &Caller,
        principal: &str,
        role_name: &str,
        scope: &str,
    ) -> Result<RoleAssignment, VaultError> {
        validate_principal_id(principal)?;
        let r = role(role_name)?;
        if scope.len() > 1024 || !scope.starts_with('/') {
            return Err(VaultError::InvalidArgument(format!(
                "invalid --scope '{}': give the vault's id ('diskvault keyvault show --query id')",
                scope.chars().take(80).collect::<String>()
            )));
        }
        let name = random_uuid()?;
        self.audited(
            "RoleAssignmentCreate",
            caller,
            |_| scope.to_string(),
            |st| {
                let mut p = st.props.clone();
                if let Some(a) = p.role_assignments.iter().find(|a| {
                    a.principal_id == principal
                        && a.role_definition_name == r
                        && a.scope.eq_ignore_ascii_case(scope)
                }) {
                    // As in Azure: the same assignment again is the existing one.
                    return Ok(a.clone());
                }
                let a = RoleAssignment {
                    name: name.clone(),
                    principal_id: principal.to_string(),
                    role_definition_name: r.to_string(),
                    scope: scope.to_string(),
                    created: now_secs(),
                };
                p.role_assignments.push(a.clone());
                self.save_props(st, p)?;
                Ok(a)
            },
        )
    }

    /// `role assignment delete`: the assignments matching every filter given.
    pub fn delete_roles(
        &self,
        caller: &Caller,
        principal: Option<&str>,
        role_name: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Vec<RoleAssignment>, VaultError> {
        let r = role_name.map(role).transpose()?;
        self.audited_revocation(
            "RoleAssignmentDelete",
            caller,
            |_| true,
            |st| {
                format!(
                    "https://{}{}/",
                    st.props.name,
                    super::super::kid::VAULT_DNS_SUFFIX
                )
            },
            |st| {
                let mut p = st.props.clone();
                let hit = |a: &RoleAssignment| {
                    principal.is_none_or(|x| a.principal_id == x)
                        && r.is_none_or(|x| a.role_definition_name == x)
                        && scope.is_none_or(|x| a.scope.eq_ignore_ascii_case(x))
                };
                let gone: Vec<RoleAssignment> = p
                    .role_assignments
                    .iter()
                    .filter(|a| hit(a))
                    .cloned()
                    .collect();
                if gone.is_empty() {
                    return Err(VaultError::InvalidArgument(
                        "no role assignment matches; see 'diskvault role assignment list'".into(),
                    ));
                }
                p.role_assignments.retain(|a| !hit(a));
                self.save_revoking(
                    st,
                    p,
                    format!("{} role assignment(s) are removed", gone.len()),
                )?;
                Ok(gone)
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_cover_the_vault_its_keys_and_what_holds_it() {
        let props = VaultProps {
            name: "kv1".into(),
            created: 0,
            soft_delete_retention_in_days: 90,
            enable_purge_protection: true,
            hsm: None,
            resource_group: Some("G".into()),
            location: None,
            access_policies: vec![],
            role_assignments: vec![],
        };
        let v = "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/KV1";
        assert!(covers(v, &props, "k"));
        assert!(covers(&format!("{v}/keys/k"), &props, "k"));
        assert!(!covers(&format!("{v}/keys/other"), &props, "k"));
        assert!(covers("/subscriptions/s/resourceGroups/g", &props, "k"));
        assert!(covers("/subscriptions/s", &props, "k"));
        assert!(!covers("/subscriptions/s/resourceGroups/zzz", &props, "k"));
        assert!(!covers("/nonsense", &props, "k"));
        assert!(!covers(
            "/subscriptions/s/resourceGroups/g/providers/Microsoft.KeyVault/vaults/kv2",
            &props,
            "k"
        ));
        assert_eq!(role("reader").unwrap(), "Reader");
        assert!(role("Superuser").is_err());
    }
}

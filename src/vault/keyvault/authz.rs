//! Who may use a key: grants to disk encryption sets' identities, the checks of
//! `authorize` (grant, enabled, key_ops, nbf/exp), and wrap and unwrap themselves.

use super::super::audit::Caller;
use super::super::kid::{key_url, KeyRef};
use super::super::{now_secs, secs_to_iso, VaultError, WrappedKey};
use super::view;
use super::{parse_permissions, validate_principal_id, Grant, KeyVault, State};
use crate::crypto::wrap::WRAP_ALG;
use crate::crypto::Secret;
use crate::vault::custody::HeldKey;
use serde_json::Value;

impl KeyVault {
    /// Grants `permissions` on key `name` to the identity `object_id`.
    pub fn grant(
        &self,
        caller: &Caller,
        name: &str,
        object_id: &str,
        display_name: &str,
        permissions: &[String],
    ) -> Result<Value, VaultError> {
        // A new grant that takes away a permission the identity had is a revocation.
        let narrows = |st: &State| -> bool {
            let Ok(perms) = parse_permissions(permissions) else {
                return false;
            };
            Self::entry(st, name).is_ok_and(|e| {
                e.rec
                    .grants
                    .iter()
                    .filter(|g| g.object_id == object_id)
                    .any(|g| g.permissions.iter().any(|p| !perms.contains(p)))
            })
        };
        self.audited_revocation(
            "VaultAccessPolicyGrant",
            caller,
            narrows,
            |st| Self::kid_of(st, name, None),
            |st| {
                let perms = parse_permissions(permissions)?;
                validate_principal_id(object_id)?;
                let revoking = narrows(st);
                let e = Self::entry(st, name)?;
                let mut rec = e.rec.clone();
                rec.grants.retain(|g| g.object_id != object_id);
                rec.grants.push(Grant {
                    object_id: object_id.to_string(),
                    display_name: display_name.to_string(),
                    permissions: perms,
                });
                rec.attributes.updated = now_secs();
                let v = view::grants_json(&rec.grants);
                let what = revoking
                    .then(|| format!("the grant of {object_id} on key '{}' is narrowed", rec.name));
                self.save_revocation(st, rec, what)?;
                Ok(v)
            },
        )
    }

    /// Removes the identity's grant on key `name`.
    pub fn revoke_grant(
        &self,
        caller: &Caller,
        name: &str,
        object_id: &str,
    ) -> Result<Value, VaultError> {
        self.audited_revocation(
            "VaultAccessPolicyRevoke",
            caller,
            |_| true,
            |st| Self::kid_of(st, name, None),
            |st| {
                let e = Self::entry(st, name)?;
                let mut rec = e.rec.clone();
                let what = Some(format!(
                    "the grant of {object_id} on key '{}' is removed",
                    rec.name
                ));
                let before = rec.grants.len();
                rec.grants.retain(|g| g.object_id != object_id);
                if rec.grants.len() == before {
                    let l = name.to_ascii_lowercase();
                    if st.unsaved.contains(&l) && self.saved_grant(&l, object_id) {
                        // Removed in memory before; save it now.
                        let v = view::grants_json(&rec.grants);
                        self.save_revocation(st, rec, what)?;
                        return Ok(v);
                    }
                    return Err(VaultError::NoSuchGrant {
                        key: name.to_string(),
                        object_id: object_id.to_string(),
                    });
                }
                rec.attributes.updated = now_secs();
                let v = view::grants_json(&rec.grants);
                self.save_revocation(st, rec, what)?;
                Ok(v)
            },
        )
    }

    /// Checks that `caller` may do `op` with `kid`; returns the private key's owner entry
    /// name and version.
    fn authorize(
        st: &State,
        caller: &Caller,
        r: &KeyRef,
        permission: &str,
        wrapping: bool,
    ) -> Result<(String, String), VaultError> {
        Self::check_vault(st, r)?;
        let e = Self::entry(st, &r.name)?;
        let ver = match &r.version {
            Some(v) => e
                .version(v)
                .ok_or_else(|| VaultError::VersionNotFound(r.name.clone(), v.clone()))?,
            None => e.current(),
        };
        if let Some(why) = e.broken.get(&ver.version) {
            return Err(VaultError::KeyCorrupt {
                name: e.rec.name.clone(),
                reason: why.clone(),
            });
        }
        let kid = key_url(&st.props.name, &e.rec.name, Some(&ver.version));
        // A set reads the key (get) before it wraps with it, as in Azure.
        let needed: &[&str] = if wrapping {
            &["get", permission]
        } else {
            &[permission]
        };
        let granted =
            |p: &&str| {
                e.rec.grants.iter().any(|g| {
                    g.object_id == caller.object_id && g.permissions.iter().any(|x| x == p)
                }) || super::access::vault_grants(&st.props, &caller.object_id, &e.rec.name, p)
            };
        if caller.is_service && !needed.iter().all(granted) {
            return Err(VaultError::Forbidden {
                key: e.rec.name.clone(),
                caller: caller.name.clone(),
            });
        }
        if !e.rec.attributes.enabled {
            return Err(VaultError::KeyDisabled(e.rec.name.clone()));
        }
        if !ver.attributes.enabled {
            return Err(VaultError::VersionDisabled(kid));
        }
        if !e.rec.key_ops.iter().any(|o| o == permission)
            || !ver.key_ops.iter().any(|o| o == permission)
        {
            return Err(VaultError::OperationNotAllowed {
                op: permission.to_string(),
                kid,
            });
        }
        if wrapping {
            // Key Vault's date rule: outside nbf/exp a key still unwraps but does not wrap.
            let now = now_secs();
            for a in [&e.rec.attributes, &ver.attributes] {
                if a.nbf.is_some_and(|n| now < n) {
                    return Err(VaultError::NotYetValid(
                        kid,
                        secs_to_iso(a.nbf.unwrap_or(0)),
                    ));
                }
                if a.exp.is_some_and(|x| now >= x) {
                    return Err(VaultError::Expired(kid, secs_to_iso(a.exp.unwrap_or(0))));
                }
            }
        }
        Ok((e.rec.name.to_ascii_lowercase(), ver.version.clone()))
    }

    /// Wraps a DEK with `r` (its version, or the current one) as `caller`.
    pub fn wrap(
        &self,
        caller: &Caller,
        r: &KeyRef,
        dek: &Secret,
    ) -> Result<WrappedKey, VaultError> {
        self.audited(
            "KeyWrap",
            caller,
            |st| Self::kid_of(st, &r.name, r.version.as_deref()),
            |st| {
                let (l, v) = Self::authorize(st, caller, r, "wrapKey", true)?;
                let e = &st.keys[&l];
                Ok(WrappedKey {
                    kid: key_url(&st.props.name, &e.rec.name, Some(&v)),
                    alg: WRAP_ALG.to_string(),
                    value: e.privs[&v].wrap(dek)?,
                })
            },
        )
    }

    /// Unwraps a DEK as `caller`; the DEK only ever leaves as a `Secret`.
    pub fn unwrap(&self, caller: &Caller, w: &WrappedKey) -> Result<Secret, VaultError> {
        let r = KeyRef::parse(&w.kid)?;
        if r.version.is_none() {
            return Err(VaultError::InvalidKeyId {
                input: w.kid.clone(),
                reason: "a wrapped key must name a key version".into(),
            });
        }
        // The RSA operation runs without the vault lock, so that unwraps (a rotation's
        // thousands) run in parallel; the key's state is checked again, under the lock,
        // when the unwrap is recorded, so a key disabled meanwhile still refuses.
        let key = (w.alg == WRAP_ALG)
            .then(|| {
                let st = self.state.lock();
                let (l, v) = Self::authorize(&st, caller, &r, "unwrapKey", false).ok()?;
                Some(st.keys[&l].privs[&v].clone())
            })
            .flatten();
        let early = key.map(|k| (unwrap_with(&k, &w.value), k));
        self.audited(
            "KeyUnwrap",
            caller,
            |_| w.kid.clone(),
            |st| {
                if w.alg != WRAP_ALG {
                    return Err(VaultError::UnsupportedAlg(w.alg.clone()));
                }
                let (l, v) = Self::authorize(st, caller, &r, "unwrapKey", false)?;
                let now = &st.keys[&l].privs[&v];
                match early {
                    Some((dek, k)) if std::sync::Arc::ptr_eq(&k, now) => Ok(dek?),
                    _ => unwrap_with(now, &w.value),
                }
            },
        )
    }

    /// Whether `caller` could wrap with `r` right now (no audit record, no crypto).
    pub fn can_wrap(&self, caller: &Caller, r: &KeyRef) -> Result<(), VaultError> {
        let st = self.state.lock();
        Self::authorize(&st, caller, r, "wrapKey", true).map(|_| ())
    }

    /// Whether `caller` could unwrap with `kid` right now (no audit record, no crypto).
    /// A key held in a token also needs the token to answer (checked without the
    /// vault lock).
    pub fn can_unwrap(&self, caller: &Caller, kid: &str) -> Result<(), VaultError> {
        let r = KeyRef::parse(kid)?;
        let key = {
            let st = self.state.lock();
            let (l, v) = Self::authorize(&st, caller, &r, "unwrapKey", false)?;
            st.keys[&l].privs[&v].clone()
        };
        key.check()
    }
}

/// Unwraps with a held key (in its token, or unsealed on its first use).
fn unwrap_with(k: &HeldKey, wrapped: &[u8]) -> Result<Secret, VaultError> {
    k.unwrap(wrapped)
}

//! A key's life before deletion: creating, importing and rotating keys (with their
//! versions' files), reading them, and changing their attributes.

use super::super::audit::Caller;
use super::super::kid::{validate_key_name, KeyRef};
use super::super::{now_secs, VaultError};
use super::records::{check_range, check_times};
use super::{parse_key_ops, write_json};
use super::{token_id, token_label, NewKey, Protection, PUBLIC_EXT};
use super::{
    Attributes, KeyEntry, KeyOptions, KeyRecord, KeyUpdate, KeyVault, State, VersionRecord,
};
use super::{KEYS_DIR, KEY_FILE, KEY_OPS};
use crate::crypto::random_bytes;
use crate::crypto::wrap::{hex, RsaKey, ALLOWED_BITS};
use crate::durable;
use crate::vault::custody::{Custody, HeldKey, KeyRole};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

impl KeyVault {
    /// Makes a version record for `key` and saves it in `kd`: a software key sealed,
    /// a token key's public half as `VERSION.pub`.
    #[allow(clippy::too_many_arguments)]
    fn new_version(
        &self,
        st: &State,
        l: &str,
        kd: &Path,
        key: NewKey,
        opts: &KeyOptions,
        key_ops: Vec<String>,
        imported: bool,
    ) -> Result<(VersionRecord, HeldKey), VaultError> {
        let now = now_secs();
        let mut attributes = Attributes::new(now);
        attributes.nbf = opts.nbf;
        attributes.exp = opts.exp;
        let (version, held, hsm) = match key {
            NewKey::Software(key) => {
                let version = hex(&random_bytes(16)?);
                self.custody.save_key(
                    kd,
                    &version,
                    KeyRole::VaultKey,
                    &super::key_file_id(&st.props.name, l, &version),
                    &key,
                )?;
                (version, HeldKey::ready(key), false)
            }
            NewKey::Token { public, version } => {
                let hsm = Self::token(st)?;
                durable::write_atomic(
                    &kd.join(format!("{version}.{PUBLIC_EXT}")),
                    public.pem().as_bytes(),
                    0o600,
                )?;
                let id = token_id(&version);
                (version, HeldKey::in_token(public, hsm, id), true)
            }
        };
        Ok((
            VersionRecord {
                version,
                attributes,
                key_ops,
                key_size: held.public().bits(),
                imported,
                near_expiry_notified: false,
                hsm,
            },
            held,
        ))
    }

    /// Whether a key `name` can be made with `opts` now; its key_ops if so.
    fn check_new_key(st: &State, name: &str, opts: &KeyOptions) -> Result<Vec<String>, VaultError> {
        validate_key_name(name)?;
        check_range(opts.nbf, opts.exp)?;
        check_times(opts.nbf, opts.exp)?;
        let l = name.to_ascii_lowercase();
        if let Some(b) = st.broken.get(&l) {
            return Err(b.error());
        }
        if st.keys.contains_key(&l) {
            return Err(VaultError::KeyExists(name.to_string()));
        }
        if st.deleted.contains_key(&l) {
            return Err(VaultError::NameHeldByDeletedKey(name.to_string()));
        }
        match &opts.key_ops {
            Some(o) => parse_key_ops(o),
            None => Ok(KEY_OPS.iter().map(|s| s.to_string()).collect()),
        }
    }

    fn add_key(
        &self,
        st: &mut State,
        name: &str,
        key: NewKey,
        opts: &KeyOptions,
        imported: bool,
    ) -> Result<Value, VaultError> {
        let key_ops = Self::check_new_key(st, name, opts)?;
        let l = name.to_ascii_lowercase();
        let kd = self.key_dir(&l);
        let staging = self.dir.join(KEYS_DIR).join(format!(".{l}.creating"));
        let _ = fs::remove_dir_all(&staging);
        durable::create_dir(&staging, 0o700)?;
        let result = (|| {
            let (ver, key) =
                self.new_version(st, &l, &staging, key, opts, key_ops.clone(), imported)?;
            let now = ver.attributes.created;
            let mut attributes = Attributes::new(now);
            attributes.enabled = opts.enabled.unwrap_or(true);
            let rec = KeyRecord {
                name: name.to_string(),
                attributes,
                key_ops,
                versions: vec![ver],
                grants: vec![],
                rotation_policy: None,
            };
            write_json(&staging.join(KEY_FILE), &rec)?;
            fs::rename(&staging, &kd)?;
            durable::sync_dir(&self.dir.join(KEYS_DIR))?;
            let mut privs = BTreeMap::new();
            privs.insert(rec.versions[0].version.clone(), std::sync::Arc::new(key));
            Ok::<_, VaultError>(KeyEntry {
                rec,
                privs,
                broken: BTreeMap::new(),
            })
        })();
        let entry = match result {
            Ok(e) => e,
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        let v = Self::key_json(st, &entry, None);
        st.keys.insert(l, entry);
        Ok(v)
    }

    /// Generates a new RSA key (2048 bits unless `opts.size` says otherwise).
    pub fn create_key(
        &self,
        caller: &Caller,
        name: &str,
        opts: &KeyOptions,
    ) -> Result<Value, VaultError> {
        let bits = opts.size.unwrap_or(2048);
        let id = |st: &State| Self::kid_of(st, name, None);
        self.audited_check("KeyCreate", caller, id, |st| {
            check_size(bits)?;
            Self::check_new_key(st, name, opts).map(drop)
        })?;
        let hsm = opts.protection == Some(Protection::Hsm);
        let key = self.make_key(name, bits, hsm);
        // The name may have been taken meanwhile: add_key checks again.
        let made = key.as_ref().ok().and_then(NewKey::token_version);
        let r = self.audited("KeyCreate", caller, id, |st| {
            self.add_key(st, name, key?, opts, false)
        });
        if r.is_err() {
            self.discard(made);
        }
        r
    }

    /// Imports a private key from PEM (PKCS#1 or PKCS#8): bring your own key.
    pub fn import_key(
        &self,
        caller: &Caller,
        name: &str,
        pem: &str,
        opts: &KeyOptions,
    ) -> Result<Value, VaultError> {
        self.audited(
            "KeyImport",
            caller,
            |st| Self::kid_of(st, name, None),
            |st| {
                let key = parse_import(pem)?;
                if opts.protection != Some(Protection::Hsm) {
                    return self.add_key(st, name, NewKey::Software(key), opts, true);
                }
                Self::check_new_key(st, name, opts)?;
                // Into the token; only the token keeps it.
                let token = Self::token(st)?;
                let version = hex(&random_bytes(16)?);
                let label = token_label(&st.props.name, &name.to_ascii_lowercase(), &version);
                let public = token.import(&key, &label, &token_id(&version))?;
                drop(key);
                let r = self.add_key(
                    st,
                    name,
                    NewKey::Token {
                        public,
                        version: version.clone(),
                    },
                    opts,
                    true,
                );
                if r.is_err() {
                    let _ = token.destroy(&token_id(&version));
                }
                r
            },
        )
    }

    /// Adds a new version (same size as the current one unless given).
    pub fn rotate_key(
        &self,
        caller: &Caller,
        name: &str,
        opts: &KeyOptions,
    ) -> Result<Value, VaultError> {
        let id = |st: &State| Self::kid_of(st, name, None);
        let (mut bits, _) = self.audited_check("KeyRotate", caller, id, |st| {
            Self::check_rotation(st, name, opts)
        })?;
        // A new version keeps the key's protection.
        let hsm = {
            let st = self.state.lock();
            Self::entry(&st, name)
                .map(|e| e.current().hsm)
                .unwrap_or(false)
        };
        loop {
            let key = self.make_key(name, bits, hsm);
            let made = key.as_ref().ok().and_then(NewKey::token_version);
            // The key may have been deleted or rotated meanwhile: check again.
            let done = self.audited_if(
                "KeyRotate",
                caller,
                |_| false,
                id,
                |st| {
                    let (size, key_ops) = Self::check_rotation(st, name, opts)?;
                    if size != bits {
                        return Ok(Rotation::Resized(size));
                    }
                    self.add_version(st, name, key?, opts, key_ops)
                        .map(Rotation::Done)
                },
                |r| !matches!(r, Ok(Rotation::Resized(_))),
            );
            if !matches!(done, Ok(Rotation::Done(_))) {
                self.discard(made);
            }
            let done = done?;
            match done {
                Rotation::Done(v) => return Ok(v),
                // Another rotation changed the key's size, which a new version keeps.
                Rotation::Resized(size) => bits = size,
            }
        }
    }

    /// Whether key `name` can be rotated with `opts` now; the new version's size and
    /// key_ops if so.
    fn check_rotation(
        st: &State,
        name: &str,
        opts: &KeyOptions,
    ) -> Result<(usize, Vec<String>), VaultError> {
        check_range(opts.nbf, opts.exp)?;
        check_times(opts.nbf, opts.exp)?;
        let cur = Self::entry(st, name)?.current();
        let bits = opts.size.unwrap_or(cur.key_size);
        check_size(bits)?;
        let key_ops = match &opts.key_ops {
            Some(o) => parse_key_ops(o)?,
            None => cur.key_ops.clone(),
        };
        Ok((bits, key_ops))
    }

    fn add_version(
        &self,
        st: &mut State,
        name: &str,
        key: NewKey,
        opts: &KeyOptions,
        key_ops: Vec<String>,
    ) -> Result<Value, VaultError> {
        let l = name.to_ascii_lowercase();
        let kd = self.key_dir(&l);
        let (ver, key) = self.new_version(st, &l, &kd, key, opts, key_ops, false)?;
        let mut rec = Self::entry(st, name)?.rec.clone();
        rec.attributes.updated = ver.attributes.created;
        rec.versions.push(ver.clone());
        if let Err(err) = write_json(&kd.join(KEY_FILE), &rec) {
            for p in Custody::key_paths(&kd, &ver.version) {
                let _ = fs::remove_file(p);
            }
            let _ = fs::remove_file(kd.join(format!("{}.{PUBLIC_EXT}", ver.version)));
            return Err(err.into());
        }
        let e = Self::entry_mut(st, name)?;
        e.rec = rec;
        e.privs
            .insert(ver.version.clone(), std::sync::Arc::new(key));
        let e = Self::entry(st, name)?;
        Ok(Self::key_json(st, e, None))
    }

    /// Makes an RSA key. Never called under the vault lock: a 4096-bit key takes
    /// seconds, and every disk open and wrap would wait for them.
    pub(super) fn generate_key(bits: usize) -> Result<RsaKey, VaultError> {
        #[cfg(test)]
        tests::at_keygen();
        Ok(RsaKey::generate(bits)?)
    }

    /// `az keyvault key show`: the current version, or `r`'s version.
    pub fn get_key(&self, caller: &Caller, r: &KeyRef) -> Result<Value, VaultError> {
        self.audited(
            "KeyGet",
            caller,
            |st| Self::kid_of(st, &r.name, r.version.as_deref()),
            |st| {
                Self::check_vault(st, r)?;
                let e = Self::entry(st, &r.name)?;
                if let Some(v) = &r.version {
                    e.version(v)
                        .ok_or_else(|| VaultError::VersionNotFound(r.name.clone(), v.clone()))?;
                }
                Ok(Self::key_json(st, e, r.version.as_deref()))
            },
        )
    }

    /// SubjectPublicKeyInfo PEM of the current version or of `r`'s version.
    pub fn public_pem(&self, caller: &Caller, r: &KeyRef) -> Result<String, VaultError> {
        self.audited(
            "KeyGet",
            caller,
            |st| Self::kid_of(st, &r.name, r.version.as_deref()),
            |st| {
                Self::check_vault(st, r)?;
                let e = Self::entry(st, &r.name)?;
                let v = match &r.version {
                    Some(v) => v.clone(),
                    None => e.current().version.clone(),
                };
                if let Some(why) = e.broken.get(&v) {
                    return Err(VaultError::KeyCorrupt {
                        name: e.rec.name.clone(),
                        reason: why.clone(),
                    });
                }
                e.privs
                    .get(&v)
                    .map(|k| k.public().pem())
                    .ok_or_else(|| VaultError::VersionNotFound(r.name.clone(), v))
            },
        )
    }

    /// Changes attributes of the key (versionless `r`) or of one version.
    pub fn update_key(
        &self,
        caller: &Caller,
        r: &KeyRef,
        u: &KeyUpdate,
    ) -> Result<Value, VaultError> {
        let revocation = |st: &State| Self::update_revokes(st, r, u);
        self.audited_revocation(
            "KeyUpdate",
            caller,
            |st| revocation(st).is_some(),
            |st| Self::kid_of(st, &r.name, r.version.as_deref()),
            |st| {
                let revoking = revocation(st);
                Self::check_vault(st, r)?;
                if u.enabled == Some(false) && !u.force {
                    self.check_guard(&r.name, r.version.as_deref())?;
                }
                check_range(u.nbf.flatten(), u.exp.flatten())?;
                let key_ops = u.key_ops.as_deref().map(parse_key_ops).transpose()?;
                let e = Self::entry(st, &r.name)?;
                let mut rec = e.rec.clone();
                let now = now_secs();
                let apply = |a: &mut Attributes, ops: &mut Vec<String>| {
                    if let Some(en) = u.enabled {
                        a.enabled = en;
                    }
                    if let Some(n) = u.nbf {
                        a.nbf = n;
                    }
                    if let Some(x) = u.exp {
                        a.exp = x;
                    }
                    if let Some(o) = &key_ops {
                        *ops = o.clone();
                    }
                    a.updated = now;
                    check_times(a.nbf, a.exp)
                };
                match &r.version {
                    None => {
                        let mut ops = rec.key_ops.clone();
                        apply(&mut rec.attributes, &mut ops)?;
                        rec.key_ops = ops;
                    }
                    Some(v) => {
                        let ver = rec
                            .versions
                            .iter_mut()
                            .find(|x| x.version == *v)
                            .ok_or_else(|| {
                                VaultError::VersionNotFound(r.name.clone(), v.clone())
                            })?;
                        apply(&mut ver.attributes, &mut ver.key_ops)?;
                    }
                }
                self.save_revocation(st, rec, revoking)?;
                let e = Self::entry(st, &r.name)?;
                Ok(Self::key_json(st, e, r.version.as_deref()))
            },
        )
    }

    /// If `u` revokes (disables the key or version, or takes `unwrapKey` out of its
    /// `key_ops`), what it does, for messages.
    fn update_revokes(st: &State, r: &KeyRef, u: &KeyUpdate) -> Option<String> {
        let e = Self::entry(st, &r.name).ok()?;
        let (what, ops) = match &r.version {
            None => (format!("key '{}'", e.rec.name), &e.rec.key_ops),
            Some(v) => (
                format!("version {v} of key '{}'", e.rec.name),
                &e.version(v)?.key_ops,
            ),
        };
        if u.enabled == Some(false) {
            return Some(format!("{what} is disabled"));
        }
        let unwrap = |l: &[String]| l.iter().any(|o| o.eq_ignore_ascii_case("unwrapKey"));
        match &u.key_ops {
            Some(new) if !new.is_empty() && unwrap(ops) && !unwrap(new) => {
                Some(format!("{what} no longer allows unwrapKey"))
            }
            _ => None,
        }
    }
}

/// What the locked half of a rotation did.
enum Rotation {
    Done(Value),
    /// The key's size is not the one the new key was made at (it was rotated to
    /// another size meanwhile): the key must be made again, at this size.
    Resized(usize),
}

/// Refuses a size Azure doesn't offer, before any key is made.
fn check_size(bits: usize) -> Result<(), VaultError> {
    if ALLOWED_BITS.contains(&bits) {
        Ok(())
    } else {
        Err(crate::crypto::CryptoError::KeySize(bits).into())
    }
}

/// Parses an imported key, with a message that says what was wrong with it.
fn parse_import(pem: &str) -> Result<RsaKey, VaultError> {
    let bad = |r: &str| VaultError::BadImport(r.to_string());
    if pem.contains("BEGIN PUBLIC KEY") || pem.contains("BEGIN RSA PUBLIC KEY") {
        return Err(bad(
            "this is a public key; import the private key (it must unwrap)",
        ));
    }
    if pem.contains("BEGIN EC PRIVATE KEY") || pem.contains("BEGIN OPENSSH PRIVATE KEY") {
        return Err(bad("only RSA keys are accepted"));
    }
    if pem.contains("ENCRYPTED PRIVATE KEY") {
        return Err(bad("the key is passphrase-protected; export it unencrypted (openssl pkey -in K -out K.pem)"));
    }
    if !pem.contains("-----BEGIN") {
        return Err(bad(
            "not PEM; expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----",
        ));
    }
    RsaKey::from_pem(pem).map_err(|e| match e {
        crate::crypto::CryptoError::KeySize(b) => {
            VaultError::Crypto(crate::crypto::CryptoError::KeySize(b))
        }
        _ => bad("not an RSA private key in PKCS#1 or PKCS#8 PEM"),
    })
}

#[cfg(test)]
#[path = "keys_tests.rs"]
mod tests;

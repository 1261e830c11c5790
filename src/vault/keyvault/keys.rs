//! A key's life before deletion: creating, importing and rotating keys (with their
//! versions' files), reading them, and changing their attributes.

use super::super::audit::Caller;
use super::super::kid::{validate_key_name, KeyRef};
use super::super::{now_secs, VaultError};
use super::records::{check_range, check_times};
use super::{parse_key_ops, write_json};
use super::{
    Attributes, KeyEntry, KeyOptions, KeyRecord, KeyUpdate, KeyVault, State, VersionRecord,
};
use super::{KEYS_DIR, KEY_FILE, KEY_OPS};
use crate::crypto::random_bytes;
use crate::crypto::wrap::{hex, RsaKey, ALLOWED_BITS};
use crate::durable;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

impl KeyVault {
    fn new_version(
        kd: &Path,
        key: RsaKey,
        opts: &KeyOptions,
        key_ops: Vec<String>,
        imported: bool,
    ) -> Result<(VersionRecord, RsaKey), VaultError> {
        let version = hex(&random_bytes(16)?);
        let now = now_secs();
        let mut attributes = Attributes::new(now);
        attributes.nbf = opts.nbf;
        attributes.exp = opts.exp;
        let pem = key.to_pkcs8_pem()?;
        durable::write_atomic(&kd.join(format!("{version}.pem")), pem.as_bytes(), 0o600)?;
        Ok((
            VersionRecord {
                version,
                attributes,
                key_ops,
                key_size: key.bits(),
                imported,
                near_expiry_notified: false,
            },
            key,
        ))
    }

    fn add_key(
        &self,
        st: &mut State,
        name: &str,
        key: RsaKey,
        opts: &KeyOptions,
        imported: bool,
    ) -> Result<Value, VaultError> {
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
        let key_ops = match &opts.key_ops {
            Some(o) => parse_key_ops(o)?,
            None => KEY_OPS.iter().map(|s| s.to_string()).collect(),
        };
        let kd = self.key_dir(&l);
        let staging = self.dir.join(KEYS_DIR).join(format!(".{l}.creating"));
        let _ = fs::remove_dir_all(&staging);
        durable::create_dir(&staging, 0o700)?;
        let result = (|| {
            let (ver, key) = Self::new_version(&staging, key, opts, key_ops.clone(), imported)?;
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
            privs.insert(rec.versions[0].version.clone(), key);
            Ok::<_, VaultError>(KeyEntry { rec, privs })
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
        self.audited(
            "KeyCreate",
            caller,
            |st| Self::kid_of(st, name, None),
            |st| {
                if !ALLOWED_BITS.contains(&bits) {
                    return Err(crate::crypto::CryptoError::KeySize(bits).into());
                }
                validate_key_name(name)?;
                let key = RsaKey::generate(bits)?;
                self.add_key(st, name, key, opts, false)
            },
        )
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
                self.add_key(st, name, key, opts, true)
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
        self.audited(
            "KeyRotate",
            caller,
            |st| Self::kid_of(st, name, None),
            |st| {
                check_range(opts.nbf, opts.exp)?;
                check_times(opts.nbf, opts.exp)?;
                let l = name.to_ascii_lowercase();
                let e = Self::entry(st, name)?;
                let bits = opts.size.unwrap_or(e.current().key_size);
                let key = RsaKey::generate(bits)?;
                let key_ops = match &opts.key_ops {
                    Some(o) => parse_key_ops(o)?,
                    None => e.current().key_ops.clone(),
                };
                let kd = self.key_dir(&l);
                let (ver, key) = Self::new_version(&kd, key, opts, key_ops, false)?;
                let mut rec = e.rec.clone();
                rec.attributes.updated = ver.attributes.created;
                rec.versions.push(ver.clone());
                if let Err(err) = write_json(&kd.join(KEY_FILE), &rec) {
                    let _ = fs::remove_file(kd.join(format!("{}.pem", ver.version)));
                    return Err(err.into());
                }
                let e = Self::entry_mut(st, name)?;
                e.rec = rec;
                e.privs.insert(ver.version.clone(), key);
                let e = Self::entry(st, name)?;
                Ok(Self::key_json(st, e, None))
            },
        )
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
                e.privs
                    .get(&v)
                    .map(|k| k.public_pem())
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

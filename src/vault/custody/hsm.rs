//! Keys held in a PKCS#11 token (Azure's `--protection hsm`): generated in the token,
//! sensitive and non-extractable; unwraps run in the token. A token that is missing,
//! locked or refuses the PIN fails every use with `HsmUnavailable` and is tried again
//! at the next use, so it comes back without a remount.
//!
//! Unwrap tries `CKM_RSA_PKCS_OAEP` with SHA-256 and MGF1-SHA-256 first. A token that
//! refuses those parameters (SoftHSM2 2.6 knows OAEP only with SHA-1) gets
//! `CKM_RSA_X_509` instead: the private-key operation still runs in the token, and
//! the OAEP decoding on the host (`crypto::oaep`, constant time).

use super::super::VaultError;
use crate::crypto::wrap::RsaPublic;
use crate::crypto::{oaep, Secret};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as PkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

pub const PIN_ENV: &str = "DISKVAULT_HSM_PIN_FILE";
/// The systemd credential a unit can give (`LoadCredential=diskvault-hsm-pin:FILE`).
const PIN_CREDENTIAL: &str = "diskvault-hsm-pin";

/// The vault's token, as `vault.json` records it (`hsm`). The PIN is never stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HsmConfig {
    /// The PKCS#11 module (a shared library), e.g. /usr/lib/softhsm/libsofthsm2.so.
    pub module: String,
    /// The token's label.
    pub token: String,
    /// A file holding the user PIN; `DISKVAULT_HSM_PIN_FILE` overrides it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin_file: Option<String>,
}

/// How the token unwraps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnwrapPath {
    /// `CKM_RSA_PKCS_OAEP` with SHA-256: all of it in the token.
    Oaep,
    /// `CKM_RSA_X_509` in the token, OAEP decoding on the host.
    RawRsa,
}

impl UnwrapPath {
    pub fn describe(self) -> &'static str {
        match self {
            UnwrapPath::Oaep => "CKM_RSA_PKCS_OAEP (SHA-256) in the token",
            UnwrapPath::RawRsa => "CKM_RSA_X_509 in the token, OAEP-SHA-256 decoded on the host",
        }
    }

    /// The path after an in-token OAEP attempt failed with `rv`: a token that refuses
    /// the mechanism or its parameters gets the raw path; any other failure (a wrong
    /// key, a lost token) is an error, not a reason to switch.
    pub fn after_oaep_error(rv: RvError) -> Option<UnwrapPath> {
        match rv {
            RvError::MechanismInvalid | RvError::MechanismParamInvalid | RvError::ArgumentsBad => {
                Some(UnwrapPath::RawRsa)
            }
            _ => None,
        }
    }
}

struct Conn {
    _ctx: Pkcs11,
    slot: Slot,
    ctx_for_sessions: Pkcs11,
    /// Idle logged-in sessions: one per thread at a time, so unwraps run in parallel.
    idle: Mutex<Vec<Session>>,
}

pub struct Hsm {
    cfg: HsmConfig,
    conn: Mutex<Option<Arc<Conn>>>,
    path: Mutex<Option<UnwrapPath>>,
    /// SHA-256 of a PIN the token refused: not tried again, so a wrong PIN file can't
    /// lock the token by retries; a changed file is tried.
    refused_pin: Mutex<Option<[u8; 32]>>,
    /// The last failed connect: for a second, uses fail with it without trying
    /// again, so a reconciler pass over many disks tries the token once.
    failed: Mutex<Option<(std::time::Instant, String)>>,
}

fn unavailable(cfg: &HsmConfig, why: impl std::fmt::Display) -> VaultError {
    VaultError::HsmUnavailable(format!("token '{}' ({}): {why}", cfg.token, cfg.module))
}

/// Errors that mean the connection is gone (token removed, module reset).
fn is_lost(e: &PkError) -> bool {
    matches!(
        e,
        PkError::Pkcs11(
            RvError::DeviceRemoved
                | RvError::DeviceError
                | RvError::TokenNotPresent
                | RvError::SessionHandleInvalid
                | RvError::SessionClosed
                | RvError::CryptokiNotInitialized
                | RvError::UserNotLoggedIn,
            _
        )
    )
}

impl Hsm {
    pub fn new(cfg: HsmConfig) -> Hsm {
        Hsm {
            cfg,
            conn: Mutex::new(None),
            path: Mutex::new(None),
            refused_pin: Mutex::new(None),
            failed: Mutex::new(None),
        }
    }

    pub fn config(&self) -> &HsmConfig {
        &self.cfg
    }

    /// Where the PIN is read from: the environment, a systemd credential, the config.
    fn pin_path(&self) -> Result<PathBuf, VaultError> {
        if let Some(p) = std::env::var_os(PIN_ENV).filter(|v| !v.is_empty()) {
            return Ok(PathBuf::from(p));
        }
        if let Some(d) = std::env::var_os("CREDENTIALS_DIRECTORY") {
            let p = PathBuf::from(d).join(PIN_CREDENTIAL);
            if p.exists() {
                return Ok(p);
            }
        }
        self.cfg
            .pin_file
            .as_ref()
            .map(PathBuf::from)
            .ok_or_else(|| {
                unavailable(
                    &self.cfg,
                    format!("no PIN: give --hsm-pin-file FILE or {PIN_ENV}=FILE"),
                )
            })
    }

    fn read_pin(&self) -> Result<Zeroizing<String>, VaultError> {
        let path = self.pin_path()?;
        let mut s = Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
            unavailable(
                &self.cfg,
                format!("cannot read the PIN file {}: {e}", path.display()),
            )
        })?);
        while s.ends_with('\n') || s.ends_with('\r') {
            s.pop();
        }
        if s.is_empty() {
            return Err(unavailable(
                &self.cfg,
                format!("the PIN file {} is empty", path.display()),
            ));
        }
        Ok(s)
    }

    fn connect(&self) -> Result<Arc<Conn>, VaultError> {
        let cfg = &self.cfg;
        let pin_path = self.pin_path()?;
        let pin = self.read_pin()?;
        let digest: [u8; 32] = Sha256::digest(pin.as_bytes()).into();
        if *self.refused_pin.lock() == Some(digest) {
            return Err(unavailable(
                cfg,
                "the token refused this PIN before (not tried again, so as not to lock it); fix the PIN file",
            ));
        }
        let ctx = Pkcs11::new(&cfg.module)
            .map_err(|e| unavailable(cfg, format!("cannot load the PKCS#11 module: {e}")))?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(PkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(unavailable(cfg, format!("C_Initialize: {e}"))),
        }
        let slots = ctx
            .get_slots_with_token()
            .map_err(|e| unavailable(cfg, format!("listing slots: {e}")))?;
        let slot = slots
            .into_iter()
            .find(|s| {
                ctx.get_token_info(*s)
                    .map(|t| t.label().trim_end() == cfg.token)
                    .unwrap_or(false)
            })
            .ok_or_else(|| unavailable(cfg, "no token with this label is present"))?;
        let session = ctx
            .open_rw_session(slot)
            .map_err(|e| unavailable(cfg, format!("opening a session: {e}")))?;
        let auth = cryptoki::types::AuthPin::from(pin.as_str());
        match session.login(UserType::User, Some(&auth)) {
            Ok(()) | Err(PkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(PkError::Pkcs11(RvError::PinIncorrect, _)) => {
                *self.refused_pin.lock() = Some(digest);
                return Err(unavailable(
                    cfg,
                    format!(
                        "the token refused the PIN in {} (wrong PIN); fix that file",
                        pin_path.display()
                    ),
                ));
            }
            Err(PkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(unavailable(
                    cfg,
                    "the token's user PIN is locked; unlock it with the SO PIN",
                ));
            }
            Err(e) => return Err(unavailable(cfg, format!("login: {e}"))),
        }
        *self.refused_pin.lock() = None;
        Ok(Arc::new(Conn {
            ctx_for_sessions: ctx.clone(),
            _ctx: ctx,
            slot,
            idle: Mutex::new(vec![session]),
        }))
    }

    /// Runs `f` on a logged-in session (connecting first if needed). A lost
    /// connection is dropped, so the next use connects again.
    fn with_session<T>(
        &self,
        f: impl FnOnce(&Session) -> Result<T, PkError>,
    ) -> Result<T, VaultError> {
        let conn = {
            let mut c = self.conn.lock();
            match &*c {
                Some(conn) => conn.clone(),
                None => {
                    if let Some((at, why)) = &*self.failed.lock() {
                        if at.elapsed() < std::time::Duration::from_secs(1) {
                            return Err(VaultError::HsmUnavailable(why.clone()));
                        }
                    }
                    let conn = match self.connect() {
                        Ok(c) => c,
                        Err(e) => {
                            if let VaultError::HsmUnavailable(why) = &e {
                                *self.failed.lock() =
                                    Some((std::time::Instant::now(), why.clone()));
                            }
                            return Err(e);
                        }
                    };
                    *self.failed.lock() = None;
                    *c = Some(conn.clone());
                    conn
                }
            }
        };
        let session = match conn.idle.lock().pop() {
            Some(s) => s,
            None => conn
                .ctx_for_sessions
                .open_rw_session(conn.slot)
                .map_err(|e| self.lost(&conn, e))?,
        };
        match f(&session) {
            Ok(v) => {
                conn.idle.lock().push(session);
                Ok(v)
            }
            Err(e) if is_lost(&e) => Err(self.lost(&conn, e)),
            Err(e) => {
                conn.idle.lock().push(session);
                Err(unavailable(&self.cfg, e))
            }
        }
    }

    fn lost(&self, conn: &Arc<Conn>, e: PkError) -> VaultError {
        let mut c = self.conn.lock();
        if c.as_ref().is_some_and(|x| Arc::ptr_eq(x, conn)) {
            *c = None;
        }
        unavailable(&self.cfg, format!("{e} (tried again at the next use)"))
    }

    /// Whether the token can be reached now (connects if needed).
    pub fn check(&self) -> Result<(), VaultError> {
        self.with_session(|_| Ok(()))
    }

    fn find(s: &Session, class: ObjectClass, id: &[u8]) -> Result<Vec<ObjectHandle>, PkError> {
        s.find_objects(&[Attribute::Class(class), Attribute::Id(id.to_vec())])
    }

    fn public_of(s: &Session, h: ObjectHandle) -> Result<Result<RsaPublic, String>, PkError> {
        let attrs =
            s.get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])?;
        let (mut n, mut e) = (None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        Ok(match (n, e) {
            (Some(n), Some(e)) => RsaPublic::from_parts(&n, &e).map_err(|e| e.to_string()),
            _ => Err("the token gave no modulus or exponent".into()),
        })
    }

    /// Generates an RSA key pair in the token: private key sensitive, never
    /// extractable, decrypt and unwrap only. Returns its public key.
    pub fn generate(&self, bits: usize, label: &str, id: &[u8]) -> Result<RsaPublic, VaultError> {
        let public = [
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::ModulusBits((bits as u64).into()),
            Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::Verify(false),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let private = private_template(label, id);
        let r = self.with_session(|s| {
            let (pubh, _) =
                s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private)?;
            Self::public_of(s, pubh)
        })?;
        r.map_err(|e| unavailable(&self.cfg, e))
    }

    /// Imports a private key into the token (BYOK), with the same attributes as a
    /// generated one. Returns its public key.
    pub fn import(
        &self,
        key: &crate::crypto::wrap::RsaKey,
        label: &str,
        id: &[u8],
    ) -> Result<RsaPublic, VaultError> {
        let p = key.raw_parts()?;
        let mut private = private_template(label, id);
        private.extend([
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Modulus(p.n.to_vec()),
            Attribute::PublicExponent(p.e.to_vec()),
            Attribute::PrivateExponent(p.d.to_vec()),
            Attribute::Prime1(p.p.to_vec()),
            Attribute::Prime2(p.q.to_vec()),
            Attribute::Exponent1(p.dp.to_vec()),
            Attribute::Exponent2(p.dq.to_vec()),
            Attribute::Coefficient(p.qinv.to_vec()),
        ]);
        let public = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::KeyType(KeyType::RSA),
            Attribute::Token(true),
            Attribute::Private(false),
            Attribute::Encrypt(true),
            Attribute::Wrap(true),
            Attribute::Label(label.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
            Attribute::Modulus(p.n.to_vec()),
            Attribute::PublicExponent(p.e.to_vec()),
        ];
        let r = self.with_session(|s| {
            s.create_object(&private)?;
            s.create_object(&public)?;
            Ok(())
        });
        // The attribute copies of the private components are wiped as the rest are.
        for a in private.iter_mut() {
            use zeroize::Zeroize;
            match a {
                Attribute::PrivateExponent(v)
                | Attribute::Prime1(v)
                | Attribute::Prime2(v)
                | Attribute::Exponent1(v)
                | Attribute::Exponent2(v)
                | Attribute::Coefficient(v) => v.zeroize(),
                _ => {}
            }
        }
        r?;
        Ok(key.public())
    }

    /// The public key `id` as the token has it.
    pub fn public(&self, id: &[u8]) -> Result<RsaPublic, VaultError> {
        self.with_session(|s| {
            let Some(h) = Self::find(s, ObjectClass::PUBLIC_KEY, id)?
                .into_iter()
                .next()
            else {
                return Ok(Err(VaultError::HsmKeyMissing(hex_id(id))));
            };
            Ok(Self::public_of(s, h)?.map_err(|e| unavailable(&self.cfg, e)))
        })?
    }

    /// Unwraps a DEK with the private key `id`, in the token.
    pub fn unwrap(
        &self,
        id: &[u8],
        modulus_len: usize,
        wrapped: &[u8],
    ) -> Result<Secret, VaultError> {
        let path = *self.path.lock();
        let r = self.with_session(|s| {
            let Some(key) = Self::find(s, ObjectClass::PRIVATE_KEY, id)?
                .into_iter()
                .next()
            else {
                return Ok(Err(VaultError::HsmKeyMissing(hex_id(id))));
            };
            if path != Some(UnwrapPath::RawRsa) {
                let params = PkcsOaepParams::new(
                    MechanismType::SHA256,
                    PkcsMgfType::MGF1_SHA256,
                    PkcsOaepSource::empty(),
                );
                match s.decrypt(&Mechanism::RsaPkcsOaep(params), key, wrapped) {
                    Ok(dek) => return Ok(Ok((Secret::new(dek), UnwrapPath::Oaep))),
                    Err(PkError::Pkcs11(rv, _))
                        if UnwrapPath::after_oaep_error(rv).is_some() && path.is_none() => {}
                    Err(PkError::Pkcs11(
                        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                        _,
                    )) => return Ok(Err(crate::crypto::CryptoError::Unwrap.into())),
                    Err(e) => return Err(e),
                }
            }
            match s.decrypt(&Mechanism::RsaX509, key, wrapped) {
                Ok(em) => {
                    let em = Zeroizing::new(em);
                    Ok(oaep::decode(&em, modulus_len)
                        .map(|d| (d, UnwrapPath::RawRsa))
                        .map_err(VaultError::from))
                }
                Err(PkError::Pkcs11(
                    RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange,
                    _,
                )) => Ok(Err(crate::crypto::CryptoError::Unwrap.into())),
                Err(e) => Err(e),
            }
        })?;
        let (dek, used) = r?;
        let mut p = self.path.lock();
        if *p != Some(used) {
            log::info!(
                "token '{}' unwraps with {}",
                self.cfg.token,
                used.describe()
            );
            *p = Some(used);
        }
        Ok(dek)
    }

    /// The unwrap path the token took, once known.
    pub fn unwrap_path(&self) -> Option<UnwrapPath> {
        *self.path.lock()
    }

    /// Destroys the key pair `id` in the token (crypto-shred). Returns how many
    /// objects were destroyed.
    pub fn destroy(&self, id: &[u8]) -> Result<usize, VaultError> {
        self.with_session(|s| {
            let mut n = 0;
            for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                for h in Self::find(s, class, id)? {
                    s.destroy_object(h)?;
                    n += 1;
                }
            }
            Ok(n)
        })
    }

    /// `vault show`'s view of the token: where it is, and whether it answers now.
    pub fn status(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "module": self.cfg.module,
            "token": self.cfg.token,
        });
        if let Some(p) = &self.cfg.pin_file {
            v["pinFile"] = p.clone().into();
        }
        match self.check() {
            Ok(()) => v["state"] = "Available".into(),
            Err(e) => v["state"] = format!("Unavailable: {e}").into(),
        }
        v["unwrapMechanism"] = match self.unwrap_path() {
            Some(p) => p.describe().into(),
            None => "not probed yet (chosen at the first unwrap)".into(),
        };
        v
    }
}

/// The attributes every private key in the token has: on the token, private,
/// sensitive and never extractable, for decrypt and unwrap only.
fn private_template(label: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(true),
        Attribute::Unwrap(true),
        Attribute::Sign(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

pub fn hex_id(id: &[u8]) -> String {
    crate::crypto::wrap::hex(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The choice between the paths, from the probe's result: only a refusal of the
    /// mechanism or its parameters switches to the raw path (SoftHSM2 answers
    /// CKR_ARGUMENTS_BAD to OAEP with SHA-256; real HSMs take it).
    #[test]
    fn the_probe_picks_the_path() {
        for rv in [
            RvError::MechanismInvalid,
            RvError::MechanismParamInvalid,
            RvError::ArgumentsBad,
        ] {
            assert_eq!(UnwrapPath::after_oaep_error(rv), Some(UnwrapPath::RawRsa));
        }
        for rv in [
            RvError::EncryptedDataInvalid,
            RvError::PinIncorrect,
            RvError::DeviceRemoved,
            RvError::KeyHandleInvalid,
            RvError::UserNotLoggedIn,
        ] {
            assert_eq!(UnwrapPath::after_oaep_error(rv), None, "{rv:?}");
        }
    }
}

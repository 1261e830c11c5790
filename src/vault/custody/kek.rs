//! Where a key-encryption key (KEK) comes from: a host key file or a passphrase
//! (Argon2id) or a TPM 2.0 (through the tpm2-tools binaries, so the default build
//! needs nothing but cargo). Nothing here writes to the store.

use super::super::VaultError;
use crate::crypto::wrap::hex;
use crate::crypto::{random_bytes, Secret};
use crate::durable;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use zeroize::Zeroizing;

pub const KEK_LEN: usize = 32;
pub const HOST_KEY_ENV: &str = "DISKVAULT_HOST_KEY";
pub const PASSPHRASE_ENV: &str = "DISKVAULT_PASSPHRASE_FILE";
pub const TCTI_ENV: &str = "DISKVAULT_TPM_TCTI";
pub const DEFAULT_TCTI: &str = "device:/dev/tpmrm0";
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Where the KEK comes from (`--seal`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SealKind {
    #[default]
    Host,
    Tpm2,
    Passphrase,
}

impl FromStr for SealKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "host" => Ok(SealKind::Host),
            "tpm2" => Ok(SealKind::Tpm2),
            "passphrase" => Ok(SealKind::Passphrase),
            other => Err(format!(
                "unknown seal '{}'; use host, tpm2 or passphrase",
                other.chars().take(40).collect::<String>()
            )),
        }
    }
}

impl fmt::Display for SealKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SealKind::Host => "host",
            SealKind::Tpm2 => "tpm2",
            SealKind::Passphrase => "passphrase",
        })
    }
}

/// Asks for a passphrase on a terminal; the text is the prompt.
pub type Prompt = Arc<dyn Fn(&str) -> std::io::Result<Zeroizing<String>> + Send + Sync>;

/// How this process reaches KEKs: from flags or the environment, never from the store.
#[derive(Clone, Default)]
pub struct UnsealOptions {
    /// `--host-key` or `DISKVAULT_HOST_KEY`: overrides the store header's path.
    pub host_key: Option<PathBuf>,
    /// `--passphrase-file` or `DISKVAULT_PASSPHRASE_FILE`.
    pub passphrase_file: Option<PathBuf>,
    /// `--tpm-tcti` or `DISKVAULT_TPM_TCTI`.
    pub tpm_tcti: Option<String>,
    /// Asks on a terminal when no passphrase file is given.
    pub prompt: Option<Prompt>,
    /// A passphrase already asked for (by `mount`, which hands it to its daemon).
    pub passphrase: Option<Arc<Zeroizing<Vec<u8>>>>,
    /// Unseal when the store opens (a mount), so a missing KEK fails before anything.
    pub eager: bool,
}

impl UnsealOptions {
    /// The options the environment gives (flags are applied over them by the CLI).
    pub fn from_env() -> UnsealOptions {
        let var = |n: &str| std::env::var_os(n).filter(|v| !v.is_empty());
        UnsealOptions {
            host_key: var(HOST_KEY_ENV).map(PathBuf::from),
            passphrase_file: var(PASSPHRASE_ENV).map(PathBuf::from),
            tpm_tcti: var(TCTI_ENV).and_then(|v| v.into_string().ok()),
            prompt: None,
            passphrase: None,
            eager: false,
        }
    }
}

impl fmt::Debug for UnsealOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnsealOptions")
            .field("host_key", &self.host_key)
            .field("passphrase_file", &self.passphrase_file)
            .field("tpm_tcti", &self.tpm_tcti)
            .finish()
    }
}

/// A KEK's public name: HMAC-SHA256(KEK, "diskvault-kek-fingerprint"), first 16
/// bytes in hex. It tells a wrong KEK apart without revealing the right one.
pub fn fingerprint(kek: &Secret) -> String {
    use hmac::{KeyInit, Mac};
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(kek.expose()).expect("any key length");
    m.update(b"diskvault-kek-fingerprint");
    hex(&m.finalize().into_bytes()[..16])
}

pub(super) fn unavailable(msg: String) -> VaultError {
    VaultError::KekUnavailable(msg)
}

// ---- host key ----

/// The host key used when neither `--host-key`, `DISKVAULT_HOST_KEY` nor the store
/// names one: /var/lib/diskvault/host.key for root, else under XDG_STATE_HOME.
pub fn default_host_key() -> Result<PathBuf, VaultError> {
    #[cfg(test)]
    {
        Ok(crate::testkit::unit_host_key())
    }
    #[cfg(all(not(test), feature = "testing"))]
    {
        // Tests must never read or create the host's own key.
        Err(unavailable(format!(
            "this is a testing build: set {HOST_KEY_ENV} (tests never use the host's own key)"
        )))
    }
    #[cfg(all(not(test), not(feature = "testing")))]
    {
        // Safe because geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            return Ok(PathBuf::from("/var/lib/diskvault/host.key"));
        }
        let state = std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
            .ok_or_else(|| {
                unavailable(format!(
                    "neither XDG_STATE_HOME nor HOME is set, so there is no place for the host key; set {HOST_KEY_ENV}=PATH"
                ))
            })?;
        Ok(state.join("diskvault/host.key"))
    }
}

/// Reads a host key: exactly 32 bytes.
pub fn read_host_key(path: &Path) -> Result<Secret, VaultError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    // O_NONBLOCK: a FIFO in its place must not hang the caller.
    let mut f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(unavailable(format!(
                "host key {} does not exist; give the store's host key with --host-key PATH or {HOST_KEY_ENV}=PATH (a new one can't open this store)",
                path.display()
            )))
        }
        Err(e) => {
            return Err(unavailable(format!(
                "cannot read host key {}: {e}",
                path.display()
            )))
        }
    };
    let meta = f
        .metadata()
        .map_err(|e| unavailable(format!("cannot read host key {}: {e}", path.display())))?;
    if !meta.is_file() {
        return Err(unavailable(format!(
            "host key {} is not a regular file",
            path.display()
        )));
    }
    if meta.mode() & 0o077 != 0 {
        return Err(unavailable(format!(
            "host key {} can be read by others (mode {:o}); make it private with 'chmod 600 {}'",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        )));
    }
    let mut b = Zeroizing::new(Vec::with_capacity(KEK_LEN + 1));
    Read::by_ref(&mut f)
        .take(KEK_LEN as u64 + 1)
        .read_to_end(&mut b)
        .map_err(|e| unavailable(format!("cannot read host key {}: {e}", path.display())))?;
    if b.len() != KEK_LEN {
        return Err(unavailable(format!(
            "{} is not a diskvault host key (it must be exactly {KEK_LEN} bytes)",
            path.display()
        )));
    }
    Ok(Secret::new(b.to_vec()))
}

/// Reads the host key at `path`, or makes one (0600, parent directories 0700) if there
/// is none. Two processes making it at once end up with the same key: the new file is
/// linked into place, never renamed over another.
pub fn read_or_create_host_key(path: &Path) -> Result<Secret, VaultError> {
    if path.exists() {
        return read_host_key(path);
    }
    let fail =
        |e: std::io::Error| unavailable(format!("cannot create host key {}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(fail)?;
    }
    let key = Secret::random(KEK_LEN)?;
    let tmp = dir.join(format!(".host.key.{}.tmp", hex(&random_bytes(8)?)));
    let made = (|| {
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(key.expose())?;
        f.sync_all()?;
        match std::fs::hard_link(&tmp, path) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        }
        durable::sync_dir(dir)
    })();
    let _ = std::fs::remove_file(&tmp);
    made.map_err(fail)?;
    read_host_key(path)
}

// ---- passphrase ----

/// Argon2id parameters, kept in the store header.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Argon2Params {
    /// Base64 of 16 random bytes.
    pub salt: String,
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
}

impl Argon2Params {
    /// 64 MiB, 3 passes, 1 lane (about 0.2 s here): RFC 9106's second recommended
    /// option, at gocryptfs's memory cost.
    pub fn new() -> Result<Argon2Params, VaultError> {
        Ok(Argon2Params {
            salt: B64.encode(random_bytes(16)?),
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
        })
    }

    /// The KEK for `passphrase`.
    pub fn derive(&self, passphrase: &[u8]) -> Result<Secret, VaultError> {
        let bad = |why: String| VaultError::BadProtection(format!("argon2 parameters: {why}"));
        let salt = B64.decode(&self.salt).map_err(|e| bad(e.to_string()))?;
        // A header can't make us allocate more than 4 GiB or spin for hours.
        if self.memory_kib > 4 * 1024 * 1024 || self.iterations > 64 || self.parallelism > 16 {
            return Err(bad("out of range".into()));
        }
        let params = argon2::Params::new(
            self.memory_kib,
            self.iterations,
            self.parallelism,
            Some(KEK_LEN),
        )
        .map_err(|e| bad(e.to_string()))?;
        let a = argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new(vec![0u8; KEK_LEN]);
        a.hash_password_into(passphrase, &salt, &mut out)
            .map_err(|e| bad(e.to_string()))?;
        Ok(Secret::new(out.to_vec()))
    }
}

/// Reads a passphrase file: its bytes without one trailing newline. Empty is refused.
pub fn read_passphrase_file(path: &Path) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    const MAX: u64 = 64 * 1024;
    let fail = |e: std::io::Error| {
        unavailable(format!(
            "cannot read passphrase file {}: {e}",
            path.display()
        ))
    };
    let f = std::fs::File::open(path).map_err(fail)?;
    let mut b = Zeroizing::new(Vec::new());
    f.take(MAX + 1).read_to_end(&mut b).map_err(fail)?;
    if b.len() as u64 > MAX {
        return Err(unavailable(format!(
            "passphrase file {} is longer than 64 KiB; is it the right file?",
            path.display()
        )));
    }
    if b.last() == Some(&b'\n') {
        b.pop();
        if b.last() == Some(&b'\r') {
            b.pop();
        }
    }
    if b.is_empty() {
        return Err(unavailable(format!(
            "passphrase file {} is empty",
            path.display()
        )));
    }
    Ok(b)
}

/// The passphrase: from the file given, else asked on the terminal (twice if `confirm`).
pub fn passphrase(
    opts: &UnsealOptions,
    what: &str,
    confirm: bool,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    if let Some(p) = &opts.passphrase {
        return Ok(Zeroizing::new(p.to_vec()));
    }
    if let Some(f) = &opts.passphrase_file {
        return read_passphrase_file(f);
    }
    let Some(prompt) = &opts.prompt else {
        return Err(unavailable(format!(
            "{what} needs its passphrase: give --passphrase-file FILE or {PASSPHRASE_ENV}=FILE"
        )));
    };
    let ask =
        |p: &str| prompt(p).map_err(|e| unavailable(format!("cannot read the passphrase: {e}")));
    let first = ask(&format!("Passphrase for {what}: "))?;
    if first.is_empty() {
        return Err(unavailable("the passphrase is empty".into()));
    }
    if confirm && *ask("Again: ")? != *first {
        return Err(VaultError::InvalidArgument(
            "the passphrases differ; nothing was changed".into(),
        ));
    }
    Ok(Zeroizing::new(first.as_bytes().to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_tell_keks_apart_and_argon2_is_bounded() {
        let a = Secret::new(vec![1; 32]);
        let b = Secret::new(vec![2; 32]);
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 32);
        let mut p = Argon2Params::new().unwrap();
        p.memory_kib = 64;
        p.iterations = 1;
        let k1 = p.derive(b"pw").unwrap();
        assert_eq!(k1.len(), 32);
        assert_ne!(p.derive(b"pw2").unwrap().expose(), k1.expose());
        for (m, t, l) in [
            (u32::MAX, 1, 1),
            (64, 0, 1),
            (64, 65, 1),
            (64, 1, 17),
            (64, 1, 0),
        ] {
            let q = Argon2Params {
                memory_kib: m,
                iterations: t,
                parallelism: l,
                ..p.clone()
            };
            assert!(q.derive(b"pw").is_err(), "{m} {t} {l}");
        }
    }
}

//! Where a key-encryption key (KEK) comes from: a host key file, a passphrase
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
use std::process::{Command, Stdio};
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

fn unavailable(msg: String) -> VaultError {
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

// ---- TPM 2.0 ----

/// A KEK sealed to a TPM: the sealed object's public and private blobs (useless
/// without that TPM), and the TCTI given at sealing, if not the default.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tpm2Seal {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcti: Option<String>,
    pub public: String,
    pub private: String,
}

/// Refuses a TCTI that is not a TPM: `cmd:` would run a program and `device:` on a
/// file would write to it, and the TCTI may come from the store header, which whoever
/// owns the store can edit. Taken: `device:/dev/tpm*`, `swtpm:`, `mssim:`, `tabrmd:`.
pub fn check_tcti(tcti: &str) -> Result<(), VaultError> {
    let (kind, conf) = tcti.split_once(':').unwrap_or((tcti, ""));
    let ok = match kind {
        "device" => {
            conf.is_empty()
                || (conf.starts_with("/dev/tpm") && !conf.contains("..") && !conf.contains(','))
        }
        "swtpm" | "mssim" | "tabrmd" => !conf.contains('\n'),
        _ => false,
    };
    if ok {
        Ok(())
    } else {
        Err(unavailable(format!(
            "TCTI '{}' is not taken: use device:/dev/tpmrm0 (or another /dev/tpm*), swtpm:..., mssim:... or tabrmd:...",
            tcti.chars().take(80).collect::<String>()
        )))
    }
}

/// How long one tpm2-tools command may take before it is killed (a TPM that does not
/// answer must not hang a mount).
const TPM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs one tpm2-tools command against `tcti`; its stdout, or a one-line error.
fn tpm2(
    tool: &str,
    tcti: &str,
    args: &[&str],
    stdin: Option<&[u8]>,
) -> Result<Zeroizing<Vec<u8>>, VaultError> {
    check_tcti(tcti)?;
    let mut cmd = Command::new(tool);
    cmd.env_remove("TPM2TOOLS_TCTI")
        .arg("-T")
        .arg(tcti)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        unavailable(if e.kind() == ErrorKind::NotFound {
            format!("{tool} is not installed; install tpm2-tools (apt-get install tpm2-tools)")
        } else {
            format!("cannot run {tool}: {e}")
        })
    })?;
    if let Some(input) = stdin {
        let mut si = child.stdin.take().expect("piped");
        let _ = si.write_all(input);
    }
    // Read its output on threads, and kill it if it outlives the timeout.
    let mut so = child.stdout.take().expect("piped");
    let mut se = child.stderr.take().expect("piped");
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let start = std::time::Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() > TPM_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(unavailable(format!(
                    "the TPM at '{tcti}' did not answer {tool} within {} s",
                    TPM_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(5)),
            Err(e) => return Err(unavailable(format!("{tool}: {e}"))),
        }
    };
    let out = std::process::Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    };
    let stdout = Zeroizing::new(out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .find(|l| l.contains("ERROR") || l.contains("rror"))
            .or_else(|| err.lines().find(|l| !l.trim().is_empty()))
            .unwrap_or("no message")
            .chars()
            .take(200)
            .collect::<String>();
        return Err(unavailable(format!(
            "the TPM at '{tcti}' refused {tool}: {line}"
        )));
    }
    Ok(stdout)
}

/// A private scratch directory for tpm2-tools' context files.
fn scratch() -> Result<tempfile_lite::Dir, VaultError> {
    tempfile_lite::Dir::new()
        .map_err(|e| unavailable(format!("cannot make a scratch directory: {e}")))
}

fn create_primary(tcti: &str, dir: &Path) -> Result<PathBuf, VaultError> {
    let ctx = dir.join("primary.ctx");
    let c = ctx.to_str().expect("scratch paths are UTF-8");
    // The storage primary is re-derived from the owner seed each time: nothing of it
    // is kept.
    tpm2(
        "tpm2_createprimary",
        tcti,
        &["-Q", "-C", "o", "-g", "sha256", "-G", "ecc", "-c", c],
        None,
    )?;
    // Without a resource manager (swtpm, /dev/tpm0) loaded objects outlive the tool,
    // and a TPM has room for only a few: keep only the saved context.
    flush(tcti);
    Ok(ctx)
}

fn flush(tcti: &str) {
    let _ = tpm2("tpm2_flushcontext", tcti, &["-t"], None);
}

/// Seals `kek` to the TPM at `tcti`.
pub fn tpm2_seal(tcti: &str, kek: &Secret) -> Result<Tpm2Seal, VaultError> {
    let d = scratch()?;
    let r = (|| {
        let primary = create_primary(tcti, d.path())?;
        let (pubf, privf) = (d.path().join("seal.pub"), d.path().join("seal.priv"));
        tpm2(
            "tpm2_create",
            tcti,
            &[
                "-Q",
                "-C",
                primary.to_str().expect("UTF-8"),
                // noda: the object has no password to guess, and a power cut must
                // not lock it out (dictionary-attack lockout after an unclean stop).
                "-a",
                "fixedtpm|fixedparent|noda|userwithauth",
                "-i",
                "-",
                "-u",
                pubf.to_str().expect("UTF-8"),
                "-r",
                privf.to_str().expect("UTF-8"),
            ],
            Some(kek.expose()),
        )?;
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| unavailable(format!("tpm2_create wrote no {}: {e}", p.display())))
        };
        Ok(Tpm2Seal {
            tcti: None,
            public: B64.encode(read(&pubf)?),
            private: B64.encode(read(&privf)?),
        })
    })();
    flush(tcti);
    r
}

/// Unseals a KEK sealed by `tpm2_seal` with the TPM at `tcti`.
pub fn tpm2_unseal(tcti: &str, seal: &Tpm2Seal) -> Result<Secret, VaultError> {
    let d = scratch()?;
    let r = (|| {
        let bad = |e: base64::DecodeError| VaultError::BadProtection(format!("tpm2 blob: {e}"));
        let (pubf, privf, obj) = (
            d.path().join("seal.pub"),
            d.path().join("seal.priv"),
            d.path().join("seal.ctx"),
        );
        std::fs::write(&pubf, B64.decode(&seal.public).map_err(bad)?)?;
        std::fs::write(&privf, B64.decode(&seal.private).map_err(bad)?)?;
        let primary = create_primary(tcti, d.path())?;
        tpm2(
            "tpm2_load",
            tcti,
            &[
                "-Q",
                "-C",
                primary.to_str().expect("UTF-8"),
                "-u",
                pubf.to_str().expect("UTF-8"),
                "-r",
                privf.to_str().expect("UTF-8"),
                "-c",
                obj.to_str().expect("UTF-8"),
            ],
            None,
        )?;
        flush(tcti);
        let out = tpm2(
            "tpm2_unseal",
            tcti,
            &["-c", obj.to_str().expect("UTF-8")],
            None,
        )?;
        if out.len() != KEK_LEN {
            return Err(unavailable(format!(
                "the TPM at '{tcti}' unsealed {} bytes, not a {KEK_LEN}-byte key",
                out.len()
            )));
        }
        Ok(Secret::new(out.to_vec()))
    })();
    flush(tcti);
    r
}

/// A directory removed on drop (tempfile is only a dev-dependency).
mod tempfile_lite {
    use std::path::{Path, PathBuf};

    pub struct Dir(PathBuf);

    impl Dir {
        pub fn new() -> std::io::Result<Dir> {
            use std::os::unix::fs::DirBuilderExt;
            let base = std::env::temp_dir();
            for _ in 0..16 {
                let n = crate::crypto::wrap::hex(
                    &crate::crypto::random_bytes(8).map_err(std::io::Error::other)?,
                );
                let p = base.join(format!("diskvault-tpm-{n}"));
                match std::fs::DirBuilder::new().mode(0o700).create(&p) {
                    Ok(()) => return Ok(Dir(p)),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                    Err(e) => return Err(e),
                }
            }
            Err(std::io::Error::other("no free temporary name"))
        }

        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tpm_tctis_are_taken() {
        for ok in [
            "device:/dev/tpmrm0",
            "device:/dev/tpm0",
            "device",
            "swtpm:path=/tmp/s",
            "swtpm:host=localhost,port=2321",
            "mssim:host=localhost",
            "tabrmd:bus_type=system",
        ] {
            assert!(check_tcti(ok).is_ok(), "{ok}");
        }
        for bad in [
            "cmd:sh -c id",
            "device:/etc/passwd",
            "device:/dev/tpm0/../sda",
            "device:/tmp/x",
            "libtss2-tcti-cmd.so.0:id",
            "",
            "swtpm:path=/tmp/s\nx",
        ] {
            let e = check_tcti(bad).unwrap_err();
            assert!(e.to_string().contains("is not taken"), "{bad}: {e}");
        }
    }

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

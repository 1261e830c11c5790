//! A KEK sealed to a TPM 2.0, through the tpm2-tools binaries at run time (so the
//! default build needs nothing but cargo). The TPM is named by a TSS2 TCTI string,
//! which is checked first: it may come from the store header.

use super::kek::{unavailable, KEK_LEN};
use crate::crypto::Secret;
use crate::vault::VaultError;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use zeroize::Zeroizing;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

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
}

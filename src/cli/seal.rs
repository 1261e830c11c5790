//! Flags that say how to reach a store's KEK (`--host-key`, `--passphrase-file`,
//! `--tpm-tcti`), `--seal` for new seals, and the passphrase prompt.

use crate::vault::custody::{SealKind, UnsealOptions};
use clap::Args;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// How to reach the store's KEK. Each flag overrides its environment variable.
#[derive(Args, Clone, Default)]
pub struct KekArgs {
    /// The host key (default: the store's, else /var/lib/diskvault/host.key for root or
    /// ~/.local/state/diskvault/host.key). Env: DISKVAULT_HOST_KEY.
    #[arg(long, value_name = "PATH")]
    pub host_key: Option<PathBuf>,
    /// A file holding the passphrase of a passphrase-sealed store (else it is asked on
    /// the terminal). Env: DISKVAULT_PASSPHRASE_FILE.
    #[arg(long, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// The TPM of a tpm2-sealed store, as a TSS2 TCTI (default device:/dev/tpmrm0,
    /// e.g. swtpm:path=SOCKET). Env: DISKVAULT_TPM_TCTI.
    #[arg(long, value_name = "TCTI")]
    pub tpm_tcti: Option<String>,
}

impl KekArgs {
    /// The environment's options with these flags over them. No prompt: a command
    /// that only lists must never stop to ask (a passphrase comes from a file).
    pub fn options(&self) -> UnsealOptions {
        let mut o = self.options_with_prompt();
        o.prompt = None;
        o
    }

    /// `options`, asking for a passphrase on the terminal if there is one (init,
    /// mount, vault seal and reseal).
    pub fn options_with_prompt(&self) -> UnsealOptions {
        let mut o = UnsealOptions::from_env();
        if let Some(h) = &self.host_key {
            o.host_key = Some(h.clone());
        }
        if let Some(p) = &self.passphrase_file {
            o.passphrase_file = Some(p.clone());
        }
        if let Some(t) = &self.tpm_tcti {
            o.tpm_tcti = Some(t.clone());
        }
        o.prompt = terminal_prompt();
        o
    }
}

/// `--seal` and the KEK flags, for commands that make a seal (init, mount of a new
/// store, vault seal). `--host-key` and `--tpm-tcti` given here are recorded in the
/// store header; their environment variables are not.
#[derive(Args, Clone, Default)]
pub struct SealArgs {
    /// Where the key-encryption key comes from: host (a host key file, the default),
    /// tpm2 (sealed to the TPM) or passphrase (Argon2id).
    #[arg(long, value_name = "KIND", alias = "with", value_parser = parse_seal)]
    pub seal: Option<SealKind>,
    #[command(flatten)]
    pub kek: KekArgs,
}

pub fn parse_seal(s: &str) -> Result<SealKind, String> {
    s.parse()
}

/// Reads a passphrase from /dev/tty with echo off, if there is a terminal.
fn terminal_prompt() -> Option<crate::vault::custody::Prompt> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .ok()?;
    drop(tty);
    Some(Arc::new(|prompt: &str| {
        use std::os::fd::AsRawFd;
        let mut tty = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/tty")?;
        tty.write_all(prompt.as_bytes())?;
        tty.flush()?;
        let fd = tty.as_raw_fd();
        // Safe because: `t` is filled by tcgetattr before use and fd is open.
        let old = unsafe {
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(fd, &mut t) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let old = t;
            t.c_lflag &= !libc::ECHO;
            libc::tcsetattr(fd, libc::TCSANOW, &t);
            old
        };
        let mut line = Zeroizing::new(String::new());
        let r = std::io::BufReader::new(&tty).read_line(&mut line);
        // Safe because: `old` is the state tcgetattr returned for this fd.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
        let _ = tty.write_all(b"\n");
        r?;
        while line.ends_with('\n') || line.ends_with('\r') {
            line.pop();
        }
        Ok(line)
    }))
}

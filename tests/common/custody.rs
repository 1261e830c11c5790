//! Helpers for the key custody tests: running diskvault with extra environment, the
//! independent scanner, fixtures, and a software TPM.
#![allow(dead_code)]

use super::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const SCAN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/scan_private.py");
pub const DECRYPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_decrypt.py");

pub fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// diskvault with `env` over the test's environment.
pub fn dv(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run diskvault")
}

pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn err(o: Output) -> String {
    assert!(
        !o.status.success(),
        "succeeded: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs scan_private.py over `paths` (with the DEKs of `deks_of`'s objects); its
/// findings, one per line.
pub fn scan(deks_of: Option<&Path>, paths: &[&Path], env: &[(&str, &str)]) -> Vec<String> {
    let mut c = Command::new("python3");
    c.arg(SCAN).envs(env.iter().copied());
    if let Some(s) = deks_of {
        c.arg("--deks-of").arg(s);
    }
    let out = c.args(paths).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let found: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with("checking"))
        .map(String::from)
        .collect();
    assert_eq!(
        out.status.code(),
        Some(if found.is_empty() { 0 } else { 1 }),
        "scan_private.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    found
}

/// (path, sha256) of every file under `dir`: to show that nothing changed.
pub fn tree_sums(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut v: Vec<_> = walk(dir)
        .into_iter()
        .map(|p| {
            let s = sha256_hex(&std::fs::read(&p).unwrap());
            (p, s)
        })
        .collect();
    v.sort();
    v
}

/// A host key file of 32 random bytes, mode 0600.
pub fn new_host_key(at: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(at, diskvault::crypto::random_bytes(32).unwrap()).unwrap();
    std::fs::set_permissions(at, std::fs::Permissions::from_mode(0o600)).unwrap();
    at.to_path_buf()
}

pub fn copy_fixture(name: &str, to: &Path) {
    let src = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    assert!(Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(to)
        .status()
        .unwrap()
        .success());
    std::fs::create_dir_all(to.join("vault/deleted-keys")).unwrap();
}

pub fn fixture_sums(name: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(format!(
        "{}/tests/fixtures/{name}.sha256",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    text.lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            let n = if n.contains('/') {
                n.to_string()
            } else {
                format!("disks/{n}")
            };
            (n, h.to_string())
        })
        .collect()
}

/// Mounts `store` and checks every object against its recorded sum.
pub fn mounts_and_reads(store: &Path, mnt: &Path, want: &[(String, String)], when: &str) {
    let o = dv(
        &[
            "mount",
            "--no-create",
            store.to_str().unwrap(),
            mnt.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        o.status.success(),
        "{when}: mount failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let mut m = Mounted::adopt(store, mnt);
    for (path, sum) in want {
        let data = std::fs::read(m.mnt.join(path)).unwrap();
        assert_eq!(&sha256_hex(&data), sum, "{when}: {path}");
    }
    m.umount();
}

/// The stderr of a successful command.
pub fn ok_err(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A software TPM (swtpm) on a socket, stopped on drop.
pub struct Swtpm {
    state: PathBuf,
    sock: PathBuf,
    child: Option<std::process::Child>,
}

impl Swtpm {
    pub fn start(state: &Path) -> Swtpm {
        std::fs::create_dir_all(state).unwrap();
        let mut t = Swtpm {
            state: state.to_path_buf(),
            sock: state.join("sock"),
            child: None,
        };
        t.boot();
        t
    }

    fn boot(&mut self) {
        let _ = std::fs::remove_file(&self.sock);
        let child = Command::new("swtpm")
            .args(["socket", "--tpm2", "--flags", "startup-clear,not-need-init"])
            .arg("--tpmstate")
            .arg(format!("dir={}", self.state.display()))
            .arg("--server")
            .arg(format!("type=unixio,path={}", self.sock.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}.ctrl", self.sock.display()))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("swtpm is needed (apt-get install swtpm swtpm-tools tpm2-tools)");
        self.child = Some(child);
        let sock = self.sock.clone();
        Mounted::wait_for(std::time::Duration::from_secs(10), || sock.exists())
            .expect("swtpm listens");
    }

    /// Stops it as a power cut would, and starts a new one on the same state.
    pub fn reboot(&mut self) {
        self.stop();
        self.boot();
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn tcti(&self) -> String {
        format!("swtpm:path={}", self.sock.display())
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        self.stop();
    }
}

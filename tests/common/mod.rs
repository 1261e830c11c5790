//! Test harness: a real store mounted by the real binary in a temporary directory,
//! unmounted on drop even when the test panics.
#![allow(dead_code)]

/// Without the `testing` feature the binary ignores fault injection, so the tests
/// that use it would prove nothing: fail loudly instead (and still compile, so that
/// `cargo clippy --all-targets` checks them).
#[cfg(not(feature = "testing"))]
#[test]
fn the_testing_feature_is_on() {
    panic!(
        "the integration tests need fault injection: run `cargo test --release --features testing`"
    );
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The host key every diskvault this test binary runs seals with: one file under the
/// target directory, never the host's own (a testing build refuses the default).
pub fn host_key() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("host.key")
}

/// The platform key of `store` as a clear PEM file in `dir`, unsealed by
/// tests/unseal.py (written from docs/format.md, no diskvault code), for openssl.
pub fn unsealed_platform_pem(store: &Path, dir: &Path) -> PathBuf {
    let pem = dir.join("platform-unsealed.pem");
    let out = Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/unseal.py"))
        .arg(store)
        .arg("platform")
        .arg(&pem)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "unseal.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    pem
}

/// Sets DISKVAULT_HOST_KEY before main, while the process has one thread, so every
/// command a test runs (the binary, scripts, mount helpers) inherits it.
#[used]
#[link_section = ".init_array"]
static SET_HOST_KEY: extern "C" fn() = {
    extern "C" fn set() {
        std::env::set_var("DISKVAULT_HOST_KEY", host_key());
    }
    set
};

/// Customer-key steps run through the CLI and through the control files.
pub mod cmk;
/// Key custody: diskvault with extra environment, the scanner, fixtures, swtpm.
pub mod custody;
/// Tiny Linux guests under QEMU (TCG) for the VM tests.
pub mod guest;
/// A mounted store with customer keys, for the revocation and rotation tests.
pub mod keyed;
/// Raw writes and reads on the key vault's control files.
pub mod vault;

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_diskvault")
}

pub fn run(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("run diskvault")
}

pub fn run_ok(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        out.status.success(),
        "diskvault {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a command that must fail; returns its stderr.
pub fn run_err(args: &[&str]) -> String {
    let out = run(args);
    assert!(
        !out.status.success(),
        "diskvault {args:?} unexpectedly succeeded"
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim().lines().count(),
        1,
        "error is not one line: {err}"
    );
    err
}

pub struct Mounted {
    pub dir: tempfile::TempDir,
    pub store: PathBuf,
    pub mnt: PathBuf,
    mounted: bool,
}

impl Mounted {
    /// A new store (created by the first mount) mounted in a temp directory.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = dir.path().join("store");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let mut m = Mounted {
            dir,
            store,
            mnt,
            mounted: false,
        };
        m.mount();
        m
    }

    /// Mounts an existing store (which outlives this guard) on `mnt`.
    pub fn attach(_parent: &Path, store: &Path, mnt: &Path) -> Self {
        let mut m = Mounted {
            dir: tempfile::tempdir().expect("tempdir"),
            store: store.to_path_buf(),
            mnt: mnt.to_path_buf(),
            mounted: false,
        };
        m.mount();
        m
    }

    /// Takes over unmounting a store that the test mounted itself.
    pub fn adopt(store: &Path, mnt: &Path) -> Self {
        Mounted {
            dir: tempfile::tempdir().expect("tempdir"),
            store: store.to_path_buf(),
            mnt: mnt.to_path_buf(),
            mounted: true,
        }
    }

    pub fn mount(&mut self) {
        self.mount_with(&[], &[]);
    }

    /// Mounts with extra `mount` arguments and environment (e.g. DISKVAULT_FAULT).
    pub fn mount_with(&mut self, args: &[&str], env: &[(&str, &str)]) {
        let out = Command::new(bin())
            .arg("mount")
            .args(args)
            .arg(&self.store)
            .arg(&self.mnt)
            .envs(env.iter().copied())
            .output()
            .expect("run diskvault mount");
        assert!(
            out.status.success(),
            "mount failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.mounted = true;
    }

    /// The daemon's pid.
    pub fn daemon_pid(&self) -> i32 {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.mnt.join(".vault/daemon.json")).unwrap())
                .unwrap();
        info["pid"].as_i64().unwrap() as i32
    }

    /// After the daemon was killed: waits until it is gone (its store lock is free),
    /// then detaches the dead mount.
    pub fn reap_dead_daemon(&mut self) {
        use std::os::fd::AsRawFd;
        // The kernel closes a dead process's files one by one: wait for both locks.
        for l in [self.store.join("lock"), self.store.join("vault/lock")] {
            let lock = std::fs::File::open(&l).unwrap();
            // Safe because: the fd is open for the duration of the call.
            assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        }
        let c = std::ffi::CString::new(self.mnt.to_str().unwrap()).unwrap();
        // Safe because: `c` is a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        self.mounted = false;
    }

    /// Polls `cond` until it holds or `limit` passes; returns the time it took.
    pub fn wait_for(
        limit: std::time::Duration,
        mut cond: impl FnMut() -> bool,
    ) -> Option<std::time::Duration> {
        let start = std::time::Instant::now();
        loop {
            if cond() {
                return Some(start.elapsed());
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }

    pub fn umount(&mut self) {
        // Another test thread of this process may be between fork and exec, holding a
        // copy of a descriptor this test opened in the mount for that moment; the
        // mount is busy only then. Anything longer is a real failure.
        for _ in 0..100 {
            let out = run(&["umount", self.mnt.to_str().unwrap()]);
            if out.status.success() {
                self.mounted = false;
                return;
            }
            if !String::from_utf8_lossy(&out.stderr).contains("is busy") {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        run_ok(&["umount", self.mnt.to_str().unwrap()]);
        self.mounted = false;
    }

    pub fn s(&self) -> &str {
        self.store.to_str().unwrap()
    }

    pub fn disk(&self, name: &str) -> PathBuf {
        self.mnt.join("disks").join(name)
    }

    pub fn create(&self, name: &str, size: &str) {
        run_ok(&["disk", "create", name, "--size", size, "--store", self.s()]);
    }

    /// The backing directory of a disk, by name (from its metadata).
    pub fn backing_dir(&self, name: &str) -> PathBuf {
        for e in std::fs::read_dir(self.store.join("disks")).unwrap() {
            let p = e.unwrap().path();
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(p.join("meta.json")).unwrap()).unwrap();
            if meta["name"] == name {
                return p;
            }
        }
        panic!("no backing dir for {name}");
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        // VMs keep their disks open: power them off so the mount can go.
        let ok = run(&["umount", "--stop-vms", self.mnt.to_str().unwrap()])
            .status
            .success();
        if !ok {
            // Last resort so a failed test never leaves a mount behind.
            let c = std::ffi::CString::new(self.mnt.to_str().unwrap()).unwrap();
            // Safe because: `c` is a valid NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// Customer keys on a mounted store: purge protection, key k1, set `set1` on k1's
/// current version with a grant, and `disks` (name, size, sku) in set1. Returns k1's
/// versioned key URL.
pub fn cmk_setup(m: &Mounted, disks: &[(&str, &str, &str)]) -> String {
    let s = m.s();
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", s]);
    let key: serde_json::Value =
        serde_json::from_str(&run_ok(&["key", "create", "k1", "--store", s])).unwrap();
    let kid = key["key"]["kid"].as_str().unwrap().to_string();
    run_ok(&["des", "create", "set1", "--key-url", &kid, "--store", s]);
    run_ok(&["key", "grant", "k1", "--des", "set1", "--store", s]);
    for (d, size, sku) in disks {
        run_ok(&[
            "disk",
            "create",
            d,
            "--size",
            size,
            "--sku",
            sku,
            "--disk-encryption-set",
            "set1",
            "--store",
            s,
        ]);
    }
    kid
}

#[allow(unused_imports)] // each test crate uses a different subset
pub use diskvault::testkit::{openssl_oaep_unwrap, pattern};

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every byte of every file under `dir`.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for e in walk(dir) {
        out.extend(std::fs::read(e).unwrap_or_default());
    }
    out
}

pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            v.extend(walk(&p));
        } else {
            v.push(p);
        }
    }
    v
}

/// A disk (or any file) opened for reading and writing.
pub fn rw(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap()
}

/// `len` bytes read at `off` (fewer at the end of the file).
pub fn read_at(f: &std::fs::File, off: u64, len: usize) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    let mut done = 0;
    while done < len {
        let n = f.read_at(&mut buf[done..], off + done as u64).unwrap();
        if n == 0 {
            break;
        }
        done += n;
    }
    buf.truncate(done);
    buf
}

/// A tmpfs of `size` (e.g. "64M") mounted by the test at `at`, unmounted on drop even
/// when the test fails; drop it after anything mounted or open on it.
pub struct Tmpfs(pub PathBuf);

impl Tmpfs {
    pub fn new(at: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .unwrap();
        assert!(st.success(), "mount -t tmpfs failed");
        Tmpfs(at.to_path_buf())
    }

    /// Fills the file system with a `filler` file until ENOSPC; returns its path.
    pub fn fill(&self) -> PathBuf {
        let p = self.0.join("filler");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&p)
            .unwrap();
        let block = vec![0x5a; 64 * 1024];
        let mut small = false;
        loop {
            let buf = if small { &block[..512] } else { &block[..] };
            match std::io::Write::write(&mut f, buf) {
                Ok(n) if n == buf.len() => {}
                Ok(_) => small = true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) && !small => small = true,
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling: {e}"),
            }
        }
        p
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // Safe because: `c` is a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// A fresh RSA-2048 private key in PEM at `out`, made by openssl (not by diskvault).
pub fn openssl_genrsa(out: &Path) {
    let st = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(out)
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl genpkey");
}

/// Runs another program, which must succeed; returns its stdout.
pub fn tool(program: &str, args: &[&std::ffi::OsStr]) -> Vec<u8> {
    let out = Command::new(program).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{program}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// An Azure id (`/subscriptions/S/resourceGroups/G/providers/NS/TYPE/NAME`) in
/// diskvault's own short form, `/diskvault/TYPE/NAME`, for comparisons that don't
/// care about the subscription; other values as they are.
#[allow(dead_code)]
pub fn arm_short(v: &serde_json::Value) -> serde_json::Value {
    let Some(s) = v.as_str() else {
        return v.clone();
    };
    let p: Vec<&str> = s.split('/').collect();
    match p.as_slice() {
        ["", "subscriptions", _, "resourceGroups", _, "providers", _, ty, name] => {
            serde_json::Value::String(format!("/diskvault/{ty}/{name}"))
        }
        _ => v.clone(),
    }
}

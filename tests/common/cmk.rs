//! Customer-managed key steps that run three ways: through the CLI on an unmounted
//! store, through the CLI on a mounted one, and as raw mkdir, rmdir and write(2) on
//! the control files under MOUNT/.vault. Each step names its CLI command and the
//! control-file operation it stands for; `every_way!` makes the three tests.

use super::*;
use serde_json::Value;

/// How a step reaches the store.
#[derive(Clone, Copy, PartialEq, Debug)]
pub enum Via {
    /// The CLI; the store may or may not be mounted (the CLI picks the path).
    Cli,
    /// mkdir, rmdir and write(2) under MOUNT/.vault.
    Files,
}

/// A control-tree operation: the raw form of a CLI command.
pub enum Ctl<'a> {
    Write(&'a str, String),
    Mkdir(&'a str),
    Rmdir(&'a str),
}

/// A failed step: the errno (control files only) and the message.
#[derive(Debug)]
pub struct Failure {
    errno: Option<i32>,
    msg: String,
}

pub struct Env {
    pub store: PathBuf,
    pub mnt: PathBuf,
}

pub const CMK: &str = "EncryptionAtRestWithCustomerKey";
pub const DOUBLE: &str = "EncryptionAtRestWithPlatformAndCustomerKeys";

impl Env {
    /// The store and mountpoint of a mount.
    pub fn of(m: &Mounted) -> Env {
        Env {
            store: m.store.clone(),
            mnt: m.mnt.clone(),
        }
    }

    pub fn s(&self) -> &str {
        self.store.to_str().unwrap()
    }

    pub fn step(&self, via: Via, cli: &[&str], ctl: Ctl) -> Result<String, Failure> {
        match via {
            Via::Cli => {
                let mut args: Vec<&str> = cli.to_vec();
                args.extend(["--store", self.s()]);
                let out = run(&args);
                if out.status.success() {
                    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
                } else {
                    let msg = String::from_utf8_lossy(&out.stderr).into_owned();
                    assert_eq!(msg.trim().lines().count(), 1, "not one line: {msg}");
                    Err(Failure { errno: None, msg })
                }
            }
            Via::Files => {
                let v = self.mnt.join(".vault");
                let r = match ctl {
                    Ctl::Write(p, data) => std::fs::OpenOptions::new()
                        .write(true)
                        .truncate(true)
                        .open(v.join(p))
                        .and_then(|mut f| std::io::Write::write_all(&mut f, data.as_bytes())),
                    Ctl::Mkdir(p) => std::fs::create_dir(v.join(p)),
                    Ctl::Rmdir(p) => std::fs::remove_dir(v.join(p)),
                };
                r.map(|()| String::new()).map_err(|e| Failure {
                    errno: e.raw_os_error(),
                    msg: std::fs::read_to_string(v.join("last-error")).unwrap_or_default(),
                })
            }
        }
    }

    pub fn ok(&self, via: Via, cli: &[&str], ctl: Ctl) -> String {
        match self.step(via, cli, ctl) {
            Ok(s) => s,
            Err(f) => panic!("{via:?} {cli:?} failed: {f:?}"),
        }
    }

    /// The step must fail with `errno` (control files) and a message containing `needle`.
    pub fn fails(&self, via: Via, cli: &[&str], ctl: Ctl, errno: i32, needle: &str) {
        match self.step(via, cli, ctl) {
            Ok(_) => panic!("{via:?} {cli:?} unexpectedly succeeded"),
            Err(f) => {
                if via == Via::Files {
                    assert_eq!(f.errno, Some(errno), "{cli:?}: {f:?}");
                }
                assert!(
                    f.msg.contains(needle),
                    "{via:?} {cli:?}: expected '{needle}' in {f:?}"
                );
            }
        }
    }

    pub fn json(&self, cli: &[&str]) -> Value {
        let mut args = cli.to_vec();
        args.extend(["--store", self.s()]);
        serde_json::from_str(&run_ok(&args)).unwrap()
    }

    pub fn kid(&self, key: &str) -> String {
        self.json(&["key", "show", key])["key"]["kid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    pub fn disk(&self, name: &str) -> Value {
        self.json(&["disk", "show", name])
    }

    pub fn audit(&self) -> String {
        let path = if self.mnt.join(".vault/audit.log").exists() {
            self.mnt.join(".vault/audit.log")
        } else {
            self.store.join("vault/audit.log")
        };
        std::fs::read_to_string(path).unwrap()
    }

    // Setup: the steps that build what a test needs, each the way the test runs.

    /// Key cmk1; returns the versioned URL of its current version.
    pub fn create_cmk1(&self, via: Via) -> String {
        self.ok(
            via,
            &["key", "create", "cmk1"],
            Ctl::Write("keys/create", "cmk1".into()),
        );
        self.kid("cmk1")
    }

    /// Purge protection on, with a retention of 7 days: what a set needs.
    pub fn protect(&self, via: Via) {
        self.ok(
            via,
            &[
                "vault",
                "set",
                "--purge-protection",
                "true",
                "--retention-days",
                "7",
            ],
            Ctl::Write("purge-protection", "true".into()),
        );
    }

    /// A customer-key set on the key version `kid`.
    pub fn create_set(&self, via: Via, set: &str, kid: &str) {
        self.ok(
            via,
            &["des", "create", set, "--key-url", kid],
            Ctl::Write("disk-encryption-sets/create", format!("{set} {kid}")),
        );
    }

    /// A double-encryption set on the key version `kid`.
    pub fn create_double_set(&self, via: Via, set: &str, kid: &str) {
        self.ok(
            via,
            &[
                "des",
                "create",
                set,
                "--key-url",
                kid,
                "--encryption-type",
                DOUBLE,
            ],
            Ctl::Write(
                "disk-encryption-sets/create",
                format!("{set} {kid} type={DOUBLE}"),
            ),
        );
    }

    /// Grants `set` get, wrapKey and unwrapKey on cmk1.
    pub fn grant(&self, via: Via, set: &str) {
        self.ok(
            via,
            &["key", "grant", "cmk1", "--des", set],
            Ctl::Write("keys/cmk1/grants", format!("grant {set}")),
        );
    }

    /// A 1 MiB disk in `set`.
    pub fn create_disk(&self, via: Via, disk: &str, set: &str) {
        self.ok(
            via,
            &[
                "disk",
                "create",
                disk,
                "--size",
                "1M",
                "--disk-encryption-set",
                set,
            ],
            Ctl::Write("disks/create", format!("{disk} 1M des={set}")),
        );
    }

    /// Moves a platform-key disk to the customer key of `set`.
    pub fn move_to_cmk(&self, via: Via, disk: &str, set: &str) {
        let file = format!("disks/{disk}/encryption");
        self.ok(
            via,
            &[
                "disk",
                "update",
                disk,
                "--encryption-type",
                CMK,
                "--disk-encryption-set",
                set,
            ],
            Ctl::Write(&file, format!("{CMK} {set}")),
        );
    }

    /// Key cmk1, purge protection, and set1 on cmk1's current version with its grant.
    /// Returns that version's URL.
    pub fn ready_set1(&self, via: Via) -> String {
        let kid1 = self.create_cmk1(via);
        self.protect(via);
        self.create_set(via, "set1", &kid1);
        self.grant(via, "set1");
        kid1
    }
}

/// Open and read a disk through the mount: Ok, or the errno.
pub fn read_disk(mnt: &Path, name: &str) -> Result<Vec<u8>, i32> {
    std::fs::read(mnt.join("disks").join(name)).map_err(|e| e.raw_os_error().unwrap_or(0))
}

pub fn write_disk(mnt: &Path, name: &str, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("disks").join(name))
        .unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_all().unwrap();
}

/// A store (not yet made) and a mountpoint under `dir`.
pub fn fresh_env(dir: &Path) -> Env {
    let store = dir.join("store");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    Env { store, mnt }
}

/// A step: the store, how it is reached, and whether it is mounted (whether the
/// disks' data path can be checked).
pub type Step = fn(&Env, Via, bool);

/// Runs `step` through the CLI on a new store that is not mounted.
pub fn cli_unmounted(step: Step) {
    let dir = tempfile::tempdir().unwrap();
    let e = fresh_env(dir.path());
    run_ok(&["init", e.s(), "--vault-name", "cli-vault"]);
    step(&e, Via::Cli, false);
}

/// Runs `step` through the CLI on a new mounted store.
pub fn cli_mounted(step: Step) {
    let m = Mounted::new();
    step(&Env::of(&m), Via::Cli, true);
}

/// Runs `step` through the control files of a new mounted store.
pub fn control_files(step: Step) {
    let m = Mounted::new();
    step(&Env::of(&m), Via::Files, true);
}

/// For each `step` (a [`Step`] fn), a module of that name with three tests:
/// `cli_unmounted`, `cli_mounted` and `control_files`, each on a fresh store.
#[allow(unused_macros)] // not every test crate has such steps
macro_rules! every_way {
    ($($step:ident),+ $(,)?) => {$(
        mod $step {
            #[test]
            fn cli_unmounted() {
                $crate::common::cmk::cli_unmounted(super::$step);
            }

            #[test]
            fn cli_mounted() {
                $crate::common::cmk::cli_mounted(super::$step);
            }

            #[test]
            fn control_files() {
                $crate::common::cmk::control_files(super::$step);
            }
        }
    )+};
}
#[allow(unused_imports)] // not every test crate has such steps
pub(crate) use every_way;

/// A mount with purge protection, key k1 granted to set1 (CMK), and disk c1.
pub fn prepared() -> (Mounted, String) {
    let m = Mounted::new();
    let kid = cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    (m, kid)
}

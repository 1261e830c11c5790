//! Customer-managed keys end to end: the key vault, disk encryption sets, CMK and
//! double-encryption disks, through the CLI (unmounted and mounted) and through raw
//! control-file operations on a real mount.

mod common;

use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// How a step reaches the store.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Via {
    /// The CLI; the store may or may not be mounted (the CLI picks the path).
    Cli,
    /// mkdir, rmdir and write(2) under MOUNT/.vault.
    Files,
}

/// A control-tree operation: the raw form of a CLI command.
enum Ctl<'a> {
    Write(&'a str, String),
    Mkdir(&'a str),
    Rmdir(&'a str),
}

/// A failed step: the errno (control files only) and the message.
#[derive(Debug)]
struct Failure {
    errno: Option<i32>,
    msg: String,
}

struct Env {
    store: PathBuf,
    mnt: PathBuf,
}

impl Env {
    fn s(&self) -> &str {
        self.store.to_str().unwrap()
    }

    fn step(&self, via: Via, cli: &[&str], ctl: Ctl) -> Result<String, Failure> {
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

    fn ok(&self, via: Via, cli: &[&str], ctl: Ctl) -> String {
        match self.step(via, cli, ctl) {
            Ok(s) => s,
            Err(f) => panic!("{via:?} {cli:?} failed: {f:?}"),
        }
    }

    /// The step must fail with `errno` (control files) and a message containing `needle`.
    fn fails(&self, via: Via, cli: &[&str], ctl: Ctl, errno: i32, needle: &str) {
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

    fn json(&self, cli: &[&str]) -> Value {
        let mut args = cli.to_vec();
        args.extend(["--store", self.s()]);
        serde_json::from_str(&run_ok(&args)).unwrap()
    }

    fn kid(&self, key: &str) -> String {
        self.json(&["key", "show", key])["key"]["kid"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn disk(&self, name: &str) -> Value {
        self.json(&["disk", "show", name])
    }

    fn audit(&self) -> String {
        let path = if self.mnt.join(".vault/audit.log").exists() {
            self.mnt.join(".vault/audit.log")
        } else {
            self.store.join("vault/audit.log")
        };
        std::fs::read_to_string(path).unwrap()
    }
}

/// Open and read a disk through the mount: Ok, or the errno.
fn read_disk(mnt: &Path, name: &str) -> Result<Vec<u8>, i32> {
    std::fs::read(mnt.join("disks").join(name)).map_err(|e| e.raw_os_error().unwrap_or(0))
}

fn write_disk(mnt: &Path, name: &str, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(mnt.join("disks").join(name))
        .unwrap();
    f.write_all_at(data, 0).unwrap();
    f.sync_all().unwrap();
}

const CMK: &str = "EncryptionAtRestWithCustomerKey";
const DOUBLE: &str = "EncryptionAtRestWithPlatformAndCustomerKeys";

/// Every operation of the issue, in an order where each one matters. `mounted` says
/// whether the disk data path can be checked along the way.
fn scenario(e: &Env, via: Via, mounted: bool) {
    let data = pattern(7, 1 << 20);
    // A set needs purge protection on the vault.
    e.ok(
        via,
        &["key", "create", "cmk1"],
        Ctl::Write("keys/create", "cmk1".into()),
    );
    let kid1 = e.kid("cmk1");
    e.fails(
        via,
        &["des", "create", "set1", "--key-url", &kid1],
        Ctl::Write("disk-encryption-sets/create", format!("set1 {kid1}")),
        libc::EPERM,
        "purge protection",
    );
    e.ok(
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
    e.fails(
        via,
        &["vault", "set", "--purge-protection", "false"],
        Ctl::Write("purge-protection", "false".into()),
        libc::EPERM,
        "cannot be turned off",
    );
    // A versionless URL needs auto-rotation.
    e.fails(
        via,
        &["des", "create", "set1", "--key-url", "cmk1"],
        Ctl::Write("disk-encryption-sets/create", "set1 cmk1".into()),
        libc::EINVAL,
        "has no version",
    );
    e.ok(
        via,
        &["des", "create", "set1", "--key-url", &kid1],
        Ctl::Write("disk-encryption-sets/create", format!("set1 {kid1}")),
    );
    let set1 = e.json(&["des", "show", "set1"]);
    assert_eq!(set1["activeKey"]["keyUrl"], kid1.as_str());
    assert_eq!(set1["encryptionType"], CMK);
    assert_eq!(set1["identity"]["type"], "SystemAssigned");
    let principal = set1["identity"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(principal.len(), 36);
    // Without a grant the set can't be used.
    e.fails(
        via,
        &["disk", "create", "c1", "--size", "1M", "--disk-encryption-set", "set1"],
        Ctl::Write("disks/create", "c1 1M des=set1".into()),
        libc::EACCES,
        "KeyVaultAccessForbidden: grant get, wrapKey and unwrapKey permissions on key cmk1 to disk encryption set 'set1'",
    );
    e.ok(
        via,
        &["key", "grant", "cmk1", "--des", "set1"],
        Ctl::Write("keys/cmk1/grants", "grant set1".into()),
    );
    let grants = e.json(&["key", "show", "cmk1"])["grants"].clone();
    assert_eq!(grants[0]["objectId"], principal.as_str());
    e.ok(
        via,
        &[
            "disk",
            "create",
            "c1",
            "--size",
            "1M",
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/create", "c1 1M des=set1".into()),
    );
    let c1 = e.disk("c1");
    assert_eq!(c1["encryption"]["type"], CMK);
    assert_eq!(
        c1["encryption"]["diskEncryptionSetId"],
        "/diskvault/diskEncryptionSets/set1"
    );
    assert_eq!(c1["keyId"], kid1.as_str());

    // Double encryption: a platform layer and a customer layer.
    e.ok(
        via,
        &[
            "des",
            "create",
            "dbl",
            "--key-url",
            &kid1,
            "--encryption-type",
            DOUBLE,
        ],
        Ctl::Write(
            "disk-encryption-sets/create",
            format!("dbl {kid1} type={DOUBLE}"),
        ),
    );
    e.ok(
        via,
        &["key", "grant", "cmk1", "--des", "dbl"],
        Ctl::Write("keys/cmk1/grants", "grant dbl".into()),
    );
    e.ok(
        via,
        &[
            "disk",
            "create",
            "c2",
            "--size",
            "1M",
            "--disk-encryption-set",
            "dbl",
        ],
        Ctl::Write("disks/create", "c2 1M des=dbl".into()),
    );
    let c2 = e.disk("c2");
    assert_eq!(c2["encryption"]["type"], DOUBLE);
    assert_eq!(c2["layerKeyIds"].as_array().unwrap().len(), 2);
    e.fails(
        via,
        &["des", "update", "dbl", "--encryption-type", CMK],
        Ctl::Write("disk-encryption-sets/dbl/update", format!("type={CMK}")),
        libc::EPERM,
        "cannot change",
    );

    // A platform-key disk moves to the customer key; back is refused.
    run_ok(&["disk", "create", "p1", "--size", "1M", "--store", e.s()]);
    if mounted {
        write_disk(&e.mnt, "p1", &data);
        write_disk(&e.mnt, "c1", &data);
        write_disk(&e.mnt, "c2", &data);
    }
    e.ok(
        via,
        &[
            "disk",
            "update",
            "p1",
            "--encryption-type",
            CMK,
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/p1/encryption", format!("{CMK} set1")),
    );
    assert_eq!(e.disk("p1")["encryption"]["type"], CMK);
    e.fails(
        via,
        &[
            "disk",
            "update",
            "p1",
            "--encryption-type",
            "EncryptionAtRestWithPlatformKey",
        ],
        Ctl::Write(
            "disks/p1/encryption",
            "EncryptionAtRestWithPlatformKey".into(),
        ),
        libc::EPERM,
        "customer-managed key encryption cannot be disabled; copy the data to a new disk",
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "p1").unwrap(), data);
    }

    // Disabling the key stops unwrap; enabling restores it.
    e.ok(
        via,
        &["key", "set", "cmk1", "--enabled", "false"],
        Ctl::Write("keys/cmk1/enabled", "false".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1"), Err(libc::EIO));
    }
    e.ok(
        via,
        &["key", "set", "cmk1", "--enabled", "true"],
        Ctl::Write("keys/cmk1/enabled", "true".into()),
    );
    // An expired key still unwraps, but wraps no new disk.
    e.ok(
        via,
        &["key", "set", "cmk1", "--exp", "2020-01-01"],
        Ctl::Write("keys/cmk1/exp", "2020-01-01".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1").unwrap(), data);
    }
    e.fails(
        via,
        &[
            "disk",
            "create",
            "c3",
            "--size",
            "1M",
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/create", "c3 1M des=set1".into()),
        libc::EACCES,
        "expired",
    );
    e.ok(
        via,
        &["key", "set", "cmk1", "--exp", "none"],
        Ctl::Write("keys/cmk1/update", "exp=none".into()),
    );

    // Rotate the key and move the set to the new version: DEKs are re-wrapped.
    e.ok(
        via,
        &["key", "rotate", "cmk1"],
        Ctl::Write("keys/cmk1/rotate", "1".into()),
    );
    let kid2 = e.kid("cmk1");
    assert_ne!(kid1, kid2);
    e.ok(
        via,
        &["des", "update", "set1", "--key-url", &kid2],
        Ctl::Write("disk-encryption-sets/set1/key-url", kid2.clone()),
    );
    let set1 = e.json(&["des", "show", "set1"]);
    assert_eq!(set1["activeKey"]["keyUrl"], kid2.as_str());
    assert_eq!(set1["previousKeys"], serde_json::json!([]));
    assert_eq!(set1["provisioningState"], "Succeeded");
    assert!(set1["lastKeyRotationTimestamp"].is_string());
    assert_eq!(e.disk("c1")["keyId"], kid2.as_str());
    assert_eq!(e.disk("p1")["keyId"], kid2.as_str());
    // The old version is no longer needed: disabling it leaves c1 readable.
    let v1 = kid1.rsplit('/').next().unwrap();
    e.ok(
        via,
        &["key", "set", "cmk1", "--version", v1, "--enabled", "false"],
        Ctl::Write(&format!("keys/cmk1/versions/{v1}/enabled"), "false".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1").unwrap(), data);
        assert_eq!(
            read_disk(&e.mnt, "c2"),
            Err(libc::EIO),
            "c2 (set dbl) is still on version 1"
        );
    }
    e.ok(
        via,
        &["key", "set", "cmk1", "--version", v1, "--enabled", "true"],
        Ctl::Write(
            &format!("keys/cmk1/versions/{v1}/update"),
            "enabled=true".into(),
        ),
    );

    // A set in use can't be deleted; an unused one can.
    e.fails(
        via,
        &["des", "delete", "set1"],
        Ctl::Rmdir("disk-encryption-sets/set1"),
        libc::EBUSY,
        "is used by",
    );
    e.ok(
        via,
        &[
            "des",
            "create",
            "auto",
            "--key-url",
            "cmk1",
            "--auto-rotate",
        ],
        Ctl::Write(
            "disk-encryption-sets/create",
            "auto cmk1 auto-rotate=true".into(),
        ),
    );
    assert_eq!(
        e.json(&["des", "show", "auto"])["activeKey"]["keyUrl"],
        kid2.as_str()
    );
    assert_eq!(
        e.json(&["des", "show", "auto"])["rotationToLatestKeyVersionEnabled"],
        true
    );
    e.ok(
        via,
        &["des", "update", "auto", "--auto-rotate", "false"],
        Ctl::Write("disk-encryption-sets/auto/auto-rotate", "false".into()),
    );
    assert_eq!(
        e.json(&["des", "show", "auto"])["rotationToLatestKeyVersionEnabled"],
        false
    );
    e.ok(
        via,
        &["des", "delete", "auto"],
        Ctl::Rmdir("disk-encryption-sets/auto"),
    );
    assert!(run_ok(&["des", "list", "--json", "--store", e.s()]).contains("\"set1\""));

    // Soft delete, name reuse, recover, purge protection.
    e.ok(via, &["key", "create", "tmp"], Ctl::Mkdir("keys/tmp"));
    e.ok(via, &["key", "delete", "tmp"], Ctl::Rmdir("keys/tmp"));
    let deleted = e.json(&["key", "list", "--deleted"]);
    assert_eq!(deleted[0]["name"], "tmp");
    e.fails(
        via,
        &["key", "create", "tmp"],
        Ctl::Write("keys/create", "tmp".into()),
        libc::EEXIST,
        "soft-deleted",
    );
    e.ok(
        via,
        &["key", "recover", "tmp"],
        Ctl::Write("deleted-keys/tmp/recover", "1".into()),
    );
    e.ok(via, &["key", "delete", "tmp"], Ctl::Rmdir("keys/tmp"));
    e.fails(
        via,
        &["key", "purge", "tmp"],
        Ctl::Rmdir("deleted-keys/tmp"),
        libc::EPERM,
        "purge protection is on",
    );

    // Revoking a grant stops the set's disks.
    e.ok(
        via,
        &["key", "revoke-grant", "cmk1", "--des", "dbl"],
        Ctl::Write("keys/cmk1/grants", "revoke dbl".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c2"), Err(libc::EIO));
    }
    e.ok(
        via,
        &["key", "grant", "cmk1", "--des", "dbl"],
        Ctl::Write("keys/cmk1/grants", "grant dbl get,wrapKey,unwrapKey".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c2").unwrap(), data);
    }

    // Bring your own key, made by openssl.
    let pem = e.store.parent().unwrap().join("byok.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out"
        ])
        .arg(&pem)
        .status()
        .unwrap()
        .success());
    let pem_text = std::fs::read_to_string(&pem).unwrap();
    e.ok(
        via,
        &["key", "import", "byok", "--pem", pem.to_str().unwrap()],
        Ctl::Write("keys/import", format!("byok\n{pem_text}")),
    );
    let byok = e.json(&["key", "show", "byok"]);
    assert_eq!(byok["imported"], true);
    assert_eq!(byok["keySize"], 2048);

    // The audit log has every kind of operation, and its chain holds.
    let audit = e.audit();
    for op in [
        "KeyCreate",
        "KeyImport",
        "KeyRotate",
        "KeyGet",
        "KeyWrap",
        "KeyUnwrap",
        "KeyUpdate",
        "KeyDelete",
        "KeyRecover",
        "KeyPurge",
        "VaultAccessPolicyGrant",
        "VaultAccessPolicyRevoke",
        "VaultPatch",
    ] {
        assert!(
            audit.contains(&format!("\"operationName\":\"{op}\"")),
            "no {op} in the audit log"
        );
    }
    let forbidden = audit
        .lines()
        .find(|l| l.contains("\"resultSignature\":\"Forbidden\"") && l.contains("KeyWrap"))
        .expect("the refused wrap is logged");
    assert!(
        forbidden.contains(&principal),
        "the DES identity is the caller: {forbidden}"
    );
    assert!(forbidden.contains("\"resultType\":\"Failure\""));
    let v = run_ok(&["vault", "verify-audit", "--store", e.s()]);
    assert!(v.starts_with("OK: "), "{v}");
}

fn fresh_env(dir: &Path) -> Env {
    let store = dir.join("store");
    let mnt = dir.join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    Env { store, mnt }
}

#[test]
fn every_operation_through_the_cli_unmounted() {
    let dir = tempfile::tempdir().unwrap();
    let e = fresh_env(dir.path());
    run_ok(&["init", e.s(), "--vault-name", "cli-vault"]);
    scenario(&e, Via::Cli, false);
    // The data path works for every kind of disk once mounted.
    let mut m = Mounted::attach(dir.path(), &e.store, &e.mnt);
    for d in ["c1", "c2", "p1"] {
        let data = pattern(11, 300_000);
        write_disk(&m.mnt, d, &data);
        assert_eq!(&read_disk(&m.mnt, d).unwrap()[..data.len()], &data[..]);
    }
    m.umount();
}

#[test]
fn every_operation_through_the_cli_mounted() {
    let m = Mounted::new();
    let e = Env {
        store: m.store.clone(),
        mnt: m.mnt.clone(),
    };
    scenario(&e, Via::Cli, true);
}

#[test]
fn every_operation_through_control_files() {
    let m = Mounted::new();
    let e = Env {
        store: m.store.clone(),
        mnt: m.mnt.clone(),
    };
    scenario(&e, Via::Files, true);
}

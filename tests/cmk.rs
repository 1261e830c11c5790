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
    // wrapKey alone is not enough to wrap: the set also needs get.
    e.ok(
        via,
        &[
            "key",
            "grant",
            "cmk1",
            "--des",
            "set1",
            "--permissions",
            "wrapKey,unwrapKey",
        ],
        Ctl::Write("keys/cmk1/grants", "grant set1 wrapKey,unwrapKey".into()),
    );
    e.fails(
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
        libc::EACCES,
        "KeyVaultAccessForbidden",
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
            "-quiet",
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

/// A mount with purge protection, key k1 granted to set1 (CMK), and disk c1.
fn prepared() -> (Mounted, String) {
    let m = Mounted::new();
    let kid = cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    (m, kid)
}

/// Everything a bad write could change, as text.
fn state(m: &Mounted) -> String {
    let v = m.mnt.join(".vault");
    let mut out = String::new();
    for p in [
        "vault.json",
        "status.json",
        "keys/k1/grants",
        "keys/k1/enabled",
        "keys/k1/exp",
        "keys/k1/nbf",
        "keys/k1/key-ops",
        "purge-protection",
        "retention-days",
    ] {
        let text = std::fs::read_to_string(v.join(p)).unwrap();
        // The reconciler's pass counter moves on its own.
        out += &text
            .lines()
            .filter(|l| !l.contains("\"reconcilerPasses\""))
            .collect::<Vec<_>>()
            .join("\n");
    }
    out +=
        &run_ok(&["key", "show", "k1", "--store", m.s()]).replace(|c: char| c.is_ascii_digit(), "");
    out
}

#[test]
fn bad_control_writes_fail_with_errno_and_change_nothing() {
    let (m, kid) = prepared();
    let v = m.mnt.join(".vault");
    let other_vault = kid
        .replace(".vault.azure.net", "x.vault.azure.net")
        .replacen("https://", "https://other", 1);
    let pub_pem = std::fs::read_to_string(v.join("keys/k1/public.pem")).unwrap();
    let small = m.dir.path().join("small.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:1024",
            "-out"
        ])
        .arg(&small)
        .status()
        .unwrap()
        .success());
    let small = std::fs::read_to_string(&small).unwrap();
    let ec = m.dir.path().join("ec.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out"
        ])
        .arg(&ec)
        .status()
        .unwrap()
        .success());
    let ec = std::fs::read_to_string(&ec).unwrap();
    let big = "k9 ".to_string() + &"x".repeat(70 * 1024);
    let cases: Vec<(&str, String, i32, &str)> = vec![
        // keys/create: unknown option, bad JSON, wrong type, wrong size, too large, exists, reserved
        ("keys/create", "\n".into(), libc::EINVAL, "name is required"),
        (
            "keys/create",
            "k9 color=red".into(),
            libc::EINVAL,
            "unknown option 'color'",
        ),
        (
            "keys/create",
            "{\"name\":\"k9\"".into(),
            libc::EINVAL,
            "malformed JSON",
        ),
        (
            "keys/create",
            "{\"name\":5}".into(),
            libc::EINVAL,
            "must be a string",
        ),
        (
            "keys/create",
            "{\"name\":\"k9\",\"enabled\":\"yes\"}".into(),
            libc::EINVAL,
            "must be true or false",
        ),
        (
            "keys/create",
            "{\"name\":\"k9\",\"owner\":\"me\"}".into(),
            libc::EINVAL,
            "unknown field \"owner\"",
        ),
        (
            "keys/create",
            "k9 size=1024".into(),
            libc::EINVAL,
            "1024 bits is not allowed",
        ),
        (
            "keys/create",
            "k9 size=big".into(),
            libc::EINVAL,
            "not a number",
        ),
        (
            "keys/create",
            "k9 exp=someday".into(),
            libc::EINVAL,
            "invalid time",
        ),
        (
            "keys/create",
            "k9 ops=fly".into(),
            libc::EINVAL,
            "unknown key operation",
        ),
        (
            "keys/create",
            "bad_name".into(),
            libc::EINVAL,
            "invalid key name",
        ),
        (
            "keys/create",
            "create".into(),
            libc::EINVAL,
            "name of a control file",
        ),
        ("keys/create", big, libc::EINVAL, "too large"),
        ("keys/create", "k1".into(), libc::EEXIST, "already exists"),
        // keys/import: not PEM, public key, wrong size, wrong type
        ("keys/import", "k9\nhello".into(), libc::EINVAL, "not PEM"),
        (
            "keys/import",
            format!("k9\n{pub_pem}"),
            libc::EINVAL,
            "public key",
        ),
        (
            "keys/import",
            format!("k9\n{small}"),
            libc::EINVAL,
            "1024 bits is not allowed",
        ),
        (
            "keys/import",
            format!("k9\n{ec}"),
            libc::EINVAL,
            "not an RSA private key",
        ),
        ("keys/import", "k9".into(), libc::EINVAL, "no PEM key"),
        // per-key files
        (
            "keys/k1/enabled",
            "maybe".into(),
            libc::EINVAL,
            "true or false",
        ),
        (
            "keys/k1/exp",
            "tomorrow-ish".into(),
            libc::EINVAL,
            "invalid time",
        ),
        (
            "keys/k1/update",
            "nbf=2030-01-01 exp=2029-01-01".into(),
            libc::EINVAL,
            "earlier than exp",
        ),
        (
            "keys/k1/key-ops",
            "fly".into(),
            libc::EINVAL,
            "unknown key operation",
        ),
        (
            "keys/k1/update",
            "\n".into(),
            libc::EINVAL,
            "nothing to change",
        ),
        (
            "keys/k1/update",
            "colour=red".into(),
            libc::EINVAL,
            "unknown option",
        ),
        (
            "keys/k1/update",
            "{\"enabled\":1}".into(),
            libc::EINVAL,
            "must be true or false",
        ),
        (
            "keys/k1/rotate",
            "size=1000".into(),
            libc::EINVAL,
            "1000 bits is not allowed",
        ),
        (
            "keys/k1/grants",
            "bogus set1".into(),
            libc::EINVAL,
            "unknown command 'bogus'",
        ),
        (
            "keys/k1/grants",
            "grant nosuch".into(),
            libc::ENOENT,
            "no disk encryption set named 'nosuch'",
        ),
        (
            "keys/k1/grants",
            "grant set1 fly".into(),
            libc::EINVAL,
            "unknown permission",
        ),
        (
            "keys/k1/grants",
            "revoke object-id=abc".into(),
            libc::ENOENT,
            "has no grant",
        ),
        (
            "keys/k1/grants",
            "{\"action\":\"grant\"".into(),
            libc::EINVAL,
            "malformed JSON",
        ),
        // vault settings
        (
            "purge-protection",
            "maybe".into(),
            libc::EINVAL,
            "true or false",
        ),
        (
            "purge-protection",
            "false".into(),
            libc::EPERM,
            "cannot be turned off",
        ),
        ("retention-days", "5".into(), libc::EINVAL, "out of range"),
        (
            "retention-days",
            "abc".into(),
            libc::EINVAL,
            "number of days",
        ),
        (
            "retention-days",
            "30".into(),
            libc::EPERM,
            "cannot change once purge protection is on",
        ),
        // disk encryption sets
        (
            "disk-encryption-sets/create",
            "s2".into(),
            libc::EINVAL,
            "key-url is required",
        ),
        (
            "disk-encryption-sets/create",
            "s2 k1".into(),
            libc::EINVAL,
            "has no version",
        ),
        (
            "disk-encryption-sets/create",
            format!("s2 nokey/{}", "0".repeat(32)),
            libc::ENOENT,
            "no key named 'nokey'",
        ),
        (
            "disk-encryption-sets/create",
            format!("s2 {kid} type=EncryptionAtRestWithPlatformKey"),
            libc::EINVAL,
            "not a valid encryption type",
        ),
        (
            "disk-encryption-sets/create",
            format!("s2 {kid} type=Bogus"),
            libc::EINVAL,
            "unknown encryption type",
        ),
        (
            "disk-encryption-sets/create",
            format!("set1 {kid}"),
            libc::EEXIST,
            "already exists",
        ),
        (
            "disk-encryption-sets/create",
            format!("s2 {other_vault}"),
            libc::ENOENT,
            "names vault",
        ),
        (
            "disk-encryption-sets/set1/key-url",
            "https://example.com/keys/k1".into(),
            libc::EINVAL,
            "invalid key identifier",
        ),
        (
            "disk-encryption-sets/set1/auto-rotate",
            "maybe".into(),
            libc::EINVAL,
            "true or false",
        ),
        (
            "disk-encryption-sets/set1/update",
            "\n".into(),
            libc::EINVAL,
            "nothing to change",
        ),
        (
            "disk-encryption-sets/set1/update",
            format!("type={DOUBLE}"),
            libc::EPERM,
            "cannot change",
        ),
        // disks
        (
            "disks/create",
            "d9 1G des=nosuch".into(),
            libc::ENOENT,
            "no disk encryption set named",
        ),
        (
            "disks/c1/encryption",
            "EncryptionAtRestWithPlatformKey".into(),
            libc::EPERM,
            "cannot be disabled",
        ),
        (
            "disks/c1/encryption",
            "Bogus set1".into(),
            libc::EINVAL,
            "unknown encryption type",
        ),
        (
            "disks/c1/encryption",
            format!("{DOUBLE} set1"),
            libc::EINVAL,
            "is of type",
        ),
        ("disks/c1/sku", "Gold".into(), libc::EINVAL, "unknown sku"),
    ];
    let before = state(&m);
    for (path, input, errno, needle) in &cases {
        let r = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(v.join(path))
            .and_then(|mut f| std::io::Write::write_all(&mut f, input.as_bytes()));
        let e = r.expect_err(&format!(
            "{path} accepted {:?}",
            &input[..input.len().min(60)]
        ));
        assert_eq!(
            e.raw_os_error(),
            Some(*errno),
            "{path} {:?}",
            &input[..input.len().min(60)]
        );
        let why = std::fs::read_to_string(v.join("last-error")).unwrap();
        assert!(why.contains(needle), "{path}: expected '{needle}' in {why}");
        assert_eq!(why.trim().lines().count(), 1);
    }
    assert_eq!(before, state(&m), "a rejected write changed something");
    assert!(std::fs::read_dir(v.join("deleted-keys"))
        .unwrap()
        .next()
        .is_none());
    assert!(!v.join("keys/k9").exists());
    // The reasons also reach the daemon log.
    let log = std::fs::read_to_string(m.store.join("daemon.log")).unwrap();
    assert!(
        log.contains("unknown command 'bogus'"),
        "daemon log lacks the reason"
    );

    // Read-only files refuse writes, command files read back only the reply to a
    // write through the same handle (nothing here), and the tree
    // refuses what it doesn't support.
    for p in [
        "keys/k1/key.json",
        "audit.log",
        "status.json",
        "disk-encryption-sets/set1/identity",
    ] {
        let e = std::fs::write(v.join(p), "x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES), "{p}");
    }
    for p in ["keys/create", "keys/k1/rotate", "disks/create"] {
        assert_eq!(std::fs::read(v.join(p)).unwrap(), b"", "{p}");
    }
    let errno = |r: std::io::Result<()>| r.unwrap_err().raw_os_error();
    assert_eq!(
        errno(std::fs::create_dir(v.join("disk-encryption-sets/x"))),
        Some(libc::EPERM)
    );
    assert_eq!(
        errno(std::fs::create_dir(v.join("keys/bad_name"))),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno(std::fs::create_dir(v.join("keys/k1"))),
        Some(libc::EEXIST)
    );
    assert_eq!(
        errno(std::fs::remove_dir(v.join("keys/nosuch"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        errno(std::fs::remove_dir(v.join("disk-encryption-sets/set1"))),
        Some(libc::EBUSY)
    );
    assert_eq!(
        errno(std::fs::remove_file(v.join("keys/create"))),
        Some(libc::EPERM)
    );
    assert_eq!(before, state(&m));
}

#[test]
fn moving_a_disk_to_cmk_needs_it_closed_and_rewraps_only() {
    let (m, kid) = prepared();
    let s = m.s().to_string();
    m.create("p1", "2M");
    let data = pattern(3, 2 << 20);
    write_disk(&m.mnt, "p1", &data);
    let backing = m.backing_dir("p1").join("data");
    let cipher_before = std::fs::read(&backing).unwrap();
    // Held open: EBUSY through the control file, a clear message through the CLI.
    let held = std::fs::File::open(m.disk("p1")).unwrap();
    let e = std::fs::write(
        m.mnt.join(".vault/disks/p1/encryption"),
        format!("{CMK} set1"),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let msg = run_err(&[
        "disk",
        "update",
        "p1",
        "--encryption-type",
        CMK,
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    assert!(msg.contains("is attached"), "{msg}");
    assert_eq!(
        serde_json::from_str::<Value>(&run_ok(&["disk", "show", "p1", "--store", &s])).unwrap()
            ["encryption"]["type"],
        "EncryptionAtRestWithPlatformKey"
    );
    drop(held);
    // The kernel sends the release after close(2) returns.
    Mounted::wait_for(std::time::Duration::from_secs(5), || {
        serde_json::from_str::<Value>(&run_ok(&["disk", "show", "p1", "--store", &s])).unwrap()
            ["diskState"]
            == "Unattached"
    })
    .expect("released");
    run_ok(&[
        "disk",
        "update",
        "p1",
        "--encryption-type",
        CMK,
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    let show: Value =
        serde_json::from_str(&run_ok(&["disk", "show", "p1", "--store", &s])).unwrap();
    assert_eq!(show["encryption"]["type"], CMK);
    assert_eq!(show["keyId"], kid.as_str());
    // Not one byte of ciphertext changed: only the wrapping did.
    assert!(
        std::fs::read(&backing).unwrap() == cipher_before,
        "data was re-encrypted"
    );
    assert_eq!(read_disk(&m.mnt, "p1").unwrap(), data);
    // Adding double encryption would re-encrypt, so it is refused.
    run_ok(&[
        "des",
        "create",
        "dbl",
        "--key-url",
        &kid,
        "--encryption-type",
        DOUBLE,
        "--store",
        &s,
    ]);
    m.create("p2", "1M");
    let msg = run_err(&[
        "disk",
        "update",
        "p2",
        "--disk-encryption-set",
        "dbl",
        "--store",
        &s,
    ]);
    assert!(msg.contains("re-encrypt"), "{msg}");
    let status: Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/status.json")).unwrap()).unwrap();
    let p1 = status["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "p1")
        .unwrap();
    assert_eq!(
        p1["encryption"]["diskEncryptionSetId"],
        "/diskvault/diskEncryptionSets/set1"
    );
}

/// openssl unwraps each layer's DEK (customer key or platform key) and the Python
/// decryptor, written from docs/format.md, decrypts the backing data with them.
#[test]
fn cmk_and_double_encryption_decrypt_independently() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let pem = m.dir.path().join("customer.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
            "-out"
        ])
        .arg(&pem)
        .status()
        .unwrap()
        .success());
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", &s]);
    run_ok(&[
        "key",
        "import",
        "cust",
        "--pem",
        pem.to_str().unwrap(),
        "--store",
        &s,
    ]);
    for (set, ty) in [("one", CMK), ("two", DOUBLE)] {
        run_ok(&[
            "des",
            "create",
            set,
            "--key-url",
            "cust",
            "--auto-rotate",
            "--encryption-type",
            ty,
            "--store",
            &s,
        ]);
        run_ok(&["key", "grant", "cust", "--des", set, "--store", &s]);
    }
    let data = pattern(99, 3 << 20);
    for (disk, set, cipher) in [
        ("x1", "one", "aes-256-xts"),
        ("x2", "two", "aes-256-xts"),
        ("x3", "two", "aes-256-ctr"),
    ] {
        run_ok(&[
            "disk",
            "create",
            disk,
            "--size",
            "3M",
            "--cipher",
            cipher,
            "--disk-encryption-set",
            set,
            "--store",
            &s,
        ]);
        write_disk(&m.mnt, disk, &data);
    }
    for disk in ["x1", "x2", "x3"] {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(m.backing_dir(disk).join("meta.json")).unwrap())
                .unwrap();
        let mut deks = Vec::new();
        for layer in meta["layers"].as_array().unwrap() {
            let key = if layer["kid"].as_str().unwrap().starts_with("platform/") {
                m.store.join("keys/platform.pem")
            } else {
                pem.clone()
            };
            use base64::Engine;
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(layer["wrappedKey"].as_str().unwrap())
                .unwrap();
            let dek = openssl_oaep_unwrap(&key, &wrapped, m.dir.path());
            deks.push(dek.iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
        assert_eq!(deks.len(), if disk == "x1" { 1 } else { 2 });
        assert_ne!(
            deks.first(),
            deks.last().filter(|_| deks.len() == 2),
            "layers share a DEK"
        );
        let out = m.dir.path().join(format!("{disk}.plain"));
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&m.store)
            .arg(disk)
            .arg(&out)
            .args(&deks)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {disk} failed");
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{disk} decrypted wrongly"
        );
    }
    // A PKCS#1 key imports too, and the vault's public key is the one openssl derives.
    let pkcs1 = m.dir.path().join("pkcs1.pem");
    assert!(Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&pkcs1)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    run_ok(&[
        "key",
        "import",
        "legacy",
        "--pem",
        pkcs1.to_str().unwrap(),
        "--store",
        &s,
    ]);
    let pubout = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&pkcs1)
        .output()
        .unwrap();
    assert!(pubout.status.success());
    assert_eq!(
        std::fs::read_to_string(m.mnt.join(".vault/keys/legacy/public.pem")).unwrap(),
        String::from_utf8(pubout.stdout).unwrap()
    );
    // The customer key is required: the platform key alone can't unwrap a CMK layer.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(m.backing_dir("x1").join("meta.json")).unwrap())
            .unwrap();
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(meta["layers"][0]["wrappedKey"].as_str().unwrap())
        .unwrap();
    std::fs::write(m.dir.path().join("w.bin"), wrapped).unwrap();
    let st = Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(m.store.join("keys/platform.pem"))
        .arg("-in")
        .arg(m.dir.path().join("w.bin"))
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
        ])
        .output()
        .unwrap();
    assert!(!st.status.success());
}

#[test]
fn audit_log_edits_and_deletions_are_found() {
    let (mut m, _) = prepared();
    let s = m.s().to_string();
    run_ok(&["key", "rotate", "k1", "--store", &s]);
    std::fs::read(m.disk("c1")).unwrap();
    let via_mount = std::fs::read_to_string(m.mnt.join(".vault/verify-audit")).unwrap();
    assert!(via_mount.starts_with("OK: "), "{via_mount}");
    m.umount();
    let log = m.store.join("vault/audit.log");
    let orig = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = orig.lines().collect();
    assert!(lines.len() >= 8, "{} lines", lines.len());
    let put = |ls: Vec<String>| std::fs::write(&log, ls.join("\n") + "\n").unwrap();
    let owned = || lines.iter().map(|l| l.to_string()).collect::<Vec<_>>();

    let mut edited = owned();
    edited[2] = edited[2].replace("\"resultType\":\"Success\"", "\"resultType\":\"Failure\"");
    assert_ne!(edited[2], lines[2]);
    put(edited);
    let e = run_err(&["vault", "verify-audit", "--store", &s]);
    assert!(e.contains("audit log line 3:"), "{e}");

    let mut deleted = owned();
    deleted.remove(4);
    put(deleted);
    let e = run_err(&["vault", "verify-audit", "--store", &s]);
    assert!(e.contains("audit log line 5:"), "{e}");

    put(owned()[..lines.len() - 1].to_vec());
    let e = run_err(&["vault", "verify-audit", "--store", &s]);
    assert!(
        e.contains(&format!("audit log line {}:", lines.len())),
        "{e}"
    );

    put(owned());
    assert!(run_ok(&["vault", "verify-audit", "--store", &s]).starts_with("OK: "));
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn separate_vault_directory_and_private_files() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let vault = dir.path().join("keys-elsewhere");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(&[
        "init",
        store.to_str().unwrap(),
        "--vault",
        vault.to_str().unwrap(),
        "--vault-name",
        "far-vault",
    ]);
    assert!(!store.join("vault").exists());
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    let s = store.to_str().unwrap();
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", s]);
    run_ok(&["key", "create", "k1", "--store", s]);
    let show: Value = serde_json::from_str(&run_ok(&["vault", "show", "--store", s])).unwrap();
    assert_eq!(
        show["properties"]["vaultUri"],
        "https://far-vault.vault.azure.net/"
    );
    run_ok(&[
        "des",
        "create",
        "set1",
        "--key-url",
        "k1",
        "--auto-rotate",
        "--store",
        s,
    ]);
    run_ok(&["key", "grant", "k1", "--des", "set1", "--store", s]);
    run_ok(&[
        "disk",
        "create",
        "c1",
        "--size",
        "1M",
        "--disk-encryption-set",
        "set1",
        "--store",
        s,
    ]);
    // Key and metadata files are 0600, directories 0700.
    let mut pems = 0;
    for f in walk(&vault) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        pems += f.extension().is_some_and(|e| e == "pem") as usize;
    }
    assert_eq!(pems, 1);
    assert_eq!(mode(&vault), 0o700);
    assert_eq!(mode(&vault.join("keys/k1")), 0o700);
    for f in walk(&store.join("disk-encryption-sets")) {
        assert_eq!(mode(&f), 0o600);
    }
    // Without the vault the customer-key disk can't be read, even with the store.
    m.umount();
    std::fs::rename(&vault, dir.path().join("hidden")).unwrap();
    let e = run_err(&["mount", s, mnt.to_str().unwrap()]);
    assert!(
        e.contains("key vault") && e.contains("does not exist"),
        "{e}"
    );
    std::fs::rename(dir.path().join("hidden"), &vault).unwrap();
    m.mount();
    std::fs::read(mnt.join("disks/c1")).unwrap();
}

/// Only the mounting user (or root) may enter .vault/, even with --allow-other.
#[test]
fn control_tree_is_private_to_the_mounting_user() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    run_ok(&[
        "mount",
        "--allow-other",
        store.to_str().unwrap(),
        mnt.to_str().unwrap(),
    ]);
    let _guard = Mounted::adopt(&store, &mnt);
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .args(args)
            .output()
            .unwrap()
    };
    let ok = as_nobody(&["ls", mnt.to_str().unwrap()]);
    assert!(
        ok.status.success(),
        "the mount itself is visible with --allow-other"
    );
    for p in [".vault", ".vault/status.json", ".vault/keys"] {
        let out = as_nobody(&["cat", mnt.join(p).to_str().unwrap()]);
        assert!(!out.status.success(), "nobody read {p}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Permission denied"),
            "{p}"
        );
    }
    let out = as_nobody(&["mkdir", mnt.join(".vault/keys/sneaky").to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(!mnt.join(".vault/keys/sneaky").exists());
}

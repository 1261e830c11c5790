//! The key vault's own files: the audit log records every kind of operation (through
//! the CLI, unmounted and mounted, and through the control files) and finds edits and
//! deletions; a vault in a separate directory with private files; and a control tree
//! private to the mounting user.

mod common;

use common::cmk::*;
use common::*;
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

every_way!(the_audit_log_has_every_kind_of_operation);

/// The audit log has every kind of operation, refusals included (a refused wrap names
/// the set's identity as the caller), and its chain holds.
fn the_audit_log_has_every_kind_of_operation(e: &Env, via: Via, _mounted: bool) {
    let kid1 = e.create_cmk1(via);
    e.protect(via);
    e.create_set(via, "set1", &kid1);
    let principal = e.json(&["des", "show", "set1"])["identity"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    // Without a grant the wrap is refused (and logged as Forbidden).
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
    e.grant(via, "set1");
    e.create_disk(via, "c1", "set1");
    e.ok(
        via,
        &["key", "set", "cmk1", "--exp", "none"],
        Ctl::Write("keys/cmk1/update", "exp=none".into()),
    );
    // A rotation, and the set's move to the new version, which unwraps and re-wraps.
    e.ok(
        via,
        &["key", "rotate", "cmk1"],
        Ctl::Write("keys/cmk1/rotate", "1".into()),
    );
    let kid2 = e.kid("cmk1");
    e.ok(
        via,
        &["des", "update", "set1", "--key-url", &kid2],
        Ctl::Write("disk-encryption-sets/set1/key-url", kid2.clone()),
    );
    e.ok(
        via,
        &["key", "revoke-grant", "cmk1", "--des", "set1"],
        Ctl::Write("keys/cmk1/grants", "revoke set1".into()),
    );
    // Delete, recover, delete again, and a purge that purge protection refuses.
    e.ok(via, &["key", "create", "tmp"], Ctl::Mkdir("keys/tmp"));
    e.ok(via, &["key", "delete", "tmp"], Ctl::Rmdir("keys/tmp"));
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
    let pem = e.store.parent().unwrap().join("byok.pem");
    openssl_genrsa(&pem);
    let pem_text = std::fs::read_to_string(&pem).unwrap();
    e.ok(
        via,
        &["key", "import", "byok", "--pem", pem.to_str().unwrap()],
        Ctl::Write("keys/import", format!("byok\n{pem_text}")),
    );

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

#[test]
fn audit_log_edits_and_deletions_are_found() {
    let (mut m, _) = prepared();
    let s = m.s().to_string();
    run_ok(&["key", "rotate", "k1", "--store", &s]);
    // Reads are audited too (KeyGet): enough lines for the edits below.
    for _ in 0..3 {
        run_ok(&["key", "show", "k1", "--store", &s]);
    }
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
    // Mounted, the daemon's vault is the only one: naming it works, another is refused.
    let v = vault.to_str().unwrap();
    run_ok(&["key", "show", "k1", "--store", s, "--vault", v]);
    let other = dir.path().join("other-vault");
    std::fs::create_dir(&other).unwrap();
    let e = run_err(&[
        "key",
        "create",
        "k2",
        "--store",
        s,
        "--vault",
        other.to_str().unwrap(),
    ]);
    assert!(
        e.contains("not the key vault the mounted store uses"),
        "{e}"
    );
    assert!(run_err(&["key", "show", "k2", "--store", s]).contains("KeyNotFound"));
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
    let (mut sealed, mut pems) = (0, 0);
    for f in walk(&vault) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
        sealed += f.extension().is_some_and(|e| e == "key") as usize;
        pems += f.extension().is_some_and(|e| e == "pem") as usize;
    }
    assert_eq!((sealed, pems), (1, 0), "one sealed key file, no clear one");
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

//! Bad writes to the customer-key control files (keys, key import, vault settings,
//! disk encryption sets, disks) fail with the right errno and a one-line reason, and
//! change nothing; read-only files and unsupported tree operations are refused.

mod common;

use common::cmk::*;
use common::*;
use std::process::Command;

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

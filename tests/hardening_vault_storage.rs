//! Hardening of the key vault's storage (issue 8, and what the adversarial tester
//! found in it): a vault file system that fills up (the audit log, revocations and key
//! deletes on it), a torn audit log tail, and a corrupt key or set file. Each on a
//! real mount.

mod common;
use common::vault::*;
use common::*;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;

/// A store on normal disk with its vault on a 4 MiB tmpfs.
fn store_with_vault_on_tmpfs() -> (tempfile::TempDir, Tmpfs, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&dir.path().join("small"), "4M");
    let vault = fs.0.join("vault");
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(&[
        "init",
        store.to_str().unwrap(),
        "--vault",
        vault.to_str().unwrap(),
    ]);
    (dir, fs, store, vault, mnt)
}

#[test]
fn the_audit_log_survives_enospc() {
    let (dir, fs, store, vault, mnt) = store_with_vault_on_tmpfs();
    let m = Mounted::attach(dir.path(), &store, &mnt);
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    let log = vault.join("audit.log");
    let key_before = read(&m, "keys/k1/key.json").unwrap();

    // A full file system: the rotate is refused before anything changes.
    let filler = fs.fill();
    let audit_before = std::fs::read(&log).unwrap();
    assert_eq!(ctl(&m, "keys/k1/rotate", "1"), Err(libc::ENOSPC));
    let e = run_err(&["key", "rotate", "k1", "--store", &s]);
    assert!(e.contains("audit log"), "{e}");
    // (Disabling is a revocation, never refused: see
    // revocation_is_never_refused_when_the_vault_is_full.)
    assert_eq!(versions(&m, "k1"), 1);
    assert_eq!(std::fs::read(&log).unwrap(), audit_before);
    assert!(read(&m, "verify-audit").unwrap().starts_with("OK: "));

    // Space again: the log verifies and takes new records.
    std::fs::remove_file(&filler).unwrap();
    let v = read(&m, "verify-audit").unwrap();
    assert!(v.starts_with("OK: ") && !v.contains("torn"), "{v}");
    ctl(&m, "keys/k1/rotate", "1").unwrap();
    assert_eq!(versions(&m, "k1"), 2);
    assert_ne!(read(&m, "keys/k1/key.json").unwrap(), key_before);
    assert!(run_ok(&["vault", "verify-audit", "--store", &s]).starts_with("OK: "));

    // A torn tail (what a crash during an append leaves) is told apart from an edit,
    // and the next append drops it.
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    std::io::Write::write_all(&mut f, b"{\"time\":\"2026-").unwrap();
    drop(f);
    let v = read(&m, "verify-audit").unwrap();
    assert!(
        v.starts_with("OK: ") && v.contains("torn tail of 14 bytes"),
        "{v}"
    );
    ctl(&m, "keys/k1/rotate", "1").unwrap();
    let v = read(&m, "verify-audit").unwrap();
    assert!(v.starts_with("OK: ") && !v.contains("torn"), "{v}");
    drop(m);
    drop(fs);
}

#[test]
fn a_failed_append_is_rolled_back_to_the_last_record() {
    let (dir, fs, store, vault, mnt) = store_with_vault_on_tmpfs();
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    m.umount();
    // Drop the space reserved past the end of the log: copy it to a fresh file.
    let log = vault.join("audit.log");
    std::fs::copy(&log, vault.join("audit.copy")).unwrap();
    std::fs::rename(vault.join("audit.copy"), &log).unwrap();
    m.mount();
    // Reads (KeyGet) reserve nothing: grow the log until its last page has a little
    // room, less than a record, so the next record is written in part.
    let room = || {
        let len = std::fs::metadata(&log).unwrap().len();
        (4096 - len % 4096) % 4096
    };
    let mut tries = 0;
    while !(1..400).contains(&room()) {
        read(&m, "keys/k1/key.json").unwrap();
        tries += 1;
        assert!(tries < 64, "could not line up the log's length");
    }
    let before = std::fs::read(&log).unwrap();
    let filler = fs.fill();
    let e = read(&m, "keys/k1/key.json").unwrap_err();
    assert_eq!(
        e.raw_os_error(),
        Some(libc::ENOSPC),
        "a read whose record can't be written fails"
    );
    assert_eq!(
        std::fs::read(&log).unwrap(),
        before,
        "no torn record is left"
    );
    std::fs::remove_file(&filler).unwrap();
    read(&m, "keys/k1/key.json").unwrap();
    let v = read(&m, "verify-audit").unwrap();
    assert!(v.starts_with("OK: ") && !v.contains("torn"), "{v}");
    drop(m);
    drop(fs);
}

#[test]
fn verify_audit_reports_a_torn_tail_and_keeps_it_until_the_next_append() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    m.umount();
    let log = m.store.join("vault/audit.log");
    let mut torn = std::fs::read(&log).unwrap();
    let fragment = b"{\"time\":\"2026-01-01T00:00:00Z\",\"seq\":";
    torn.extend_from_slice(fragment);
    std::fs::write(&log, &torn).unwrap();
    let want = format!(
        "torn tail of {} bytes (a crash during an append, not an edit) will be dropped at the next append",
        fragment.len()
    );
    // Unmounted: the CLI opens the vault itself, which must not drop the tail.
    let v = run_ok(&["vault", "verify-audit", "--store", &s]);
    assert!(v.starts_with("OK: ") && v.contains(&want), "{v}");
    assert_eq!(std::fs::read(&log).unwrap(), torn);
    // Mounted: the same, by CLI and control file.
    m.mount();
    let v = run_ok(&["vault", "verify-audit", "--store", &s]);
    assert!(v.starts_with("OK: ") && v.contains(&want), "{v}");
    let v = read(&m, "verify-audit").unwrap();
    assert!(v.starts_with("OK: ") && v.contains(&want), "{v}");
    assert!(std::fs::read(&log).unwrap().starts_with(&torn));
    // The next append drops it.
    run_ok(&["key", "create", "k2", "--store", &s]);
    let v = read(&m, "verify-audit").unwrap();
    assert!(v.starts_with("OK: ") && !v.contains("torn"), "{v}");
    assert!(!contains(&std::fs::read(&log).unwrap(), b"\"seq\":{"));
    // An edit is still an edit.
    m.umount();
    let text = std::fs::read_to_string(&log).unwrap();
    let edited = text.replacen("127.0.0.1", "127.0.0.2", 1);
    assert_ne!(edited, text);
    std::fs::write(&log, edited).unwrap();
    let out = run(&["vault", "verify-audit", "--store", &s]);
    let all =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && all.contains("audit log line 1:"),
        "{all}"
    );
}

fn write_disk(m: &Mounted, name: &str, seed: u64) -> Vec<u8> {
    let data = pattern(seed, 8192);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.disk(name))
        .unwrap();
    f.write_all_at(&data, 4096).unwrap();
    f.sync_all().unwrap();
    data
}

fn read_disk(m: &Mounted, name: &str) -> std::io::Result<Vec<u8>> {
    let f = std::fs::File::open(m.disk(name))?;
    let mut b = vec![0u8; 8192];
    f.read_exact_at(&mut b, 4096)?;
    Ok(b)
}

#[test]
fn one_corrupt_key_or_set_file_does_not_stop_the_mount() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", &s]);
    for (k, set) in [("k1", "s1"), ("k2", "s2")] {
        let key: serde_json::Value =
            serde_json::from_str(&run_ok(&["key", "create", k, "--store", &s])).unwrap();
        let kid = key["key"]["kid"].as_str().unwrap().to_string();
        run_ok(&["des", "create", set, "--key-url", &kid, "--store", &s]);
        run_ok(&["key", "grant", k, "--des", set, "--store", &s]);
    }
    for (d, set) in [("d1", Some("s1")), ("d2", Some("s2")), ("p", None)] {
        let mut args = vec!["disk", "create", d, "--size", "1M", "--store", &s];
        if let Some(set) = set {
            args.extend(["--disk-encryption-set", set]);
        }
        run_ok(&args);
    }
    let data: Vec<(&str, Vec<u8>)> = [("d1", 1), ("d2", 2), ("p", 3)]
        .into_iter()
        .map(|(d, seed)| (d, write_disk(&m, d, seed)))
        .collect();
    m.umount();

    // A flipped byte in one of k1's private keys.
    let kdir = m.store.join("vault/keys/k1");
    let pem = std::fs::read_dir(&kdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "key"))
        .unwrap();
    let good_pem = std::fs::read(&pem).unwrap();
    let mut bad = good_pem.clone();
    let mid = bad.len() / 2;
    bad[mid] = b'#';
    std::fs::write(&pem, &bad).unwrap();
    m.mount();
    for (d, want) in &data {
        if *d == "d1" {
            let e = read_disk(&m, d).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{d}");
        } else {
            assert!(read_disk(&m, d).unwrap() == *want, "{d} must keep serving");
        }
    }
    let listed: Vec<String> = std::fs::read_dir(m.mnt.join(".vault/keys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(listed.contains(&"k1".to_string()), "{listed:?}");
    let e = read(&m, "keys/k1/key.json").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let file = pem.file_name().unwrap().to_str().unwrap().to_string();
    assert!(reason_logged(&m, &file), "the message names {file}");
    assert!(read(&m, "status.json").is_ok());
    // A deleted key with a corrupt file is listed too, and says why it can't be used.
    run_ok(&["key", "create", "k3", "--store", &s]);
    run_ok(&["key", "delete", "k3", "--store", &s]);
    m.umount();
    let dfile = m.store.join("vault/deleted-keys/k3/deleted.json");
    std::fs::write(&dfile, b"{").unwrap();
    m.mount();
    assert!(m.mnt.join(".vault/deleted-keys/k3").is_dir());
    let e = read(&m, "deleted-keys/k3/deleted.json").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    m.umount();

    // The same for a corrupt set file.
    std::fs::write(&pem, &good_pem).unwrap();
    let set_file = m.store.join("disk-encryption-sets/s2.json");
    let mut b = std::fs::read(&set_file).unwrap();
    b[0] = b'x';
    std::fs::write(&set_file, &b).unwrap();
    m.mount();
    for (d, want) in &data {
        if *d == "d2" {
            let e = read_disk(&m, d).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{d}");
        } else {
            assert!(read_disk(&m, d).unwrap() == *want, "{d} must keep serving");
        }
    }
    assert!(m.mnt.join(".vault/disk-encryption-sets/s2").is_dir());
    let e = read(&m, "disk-encryption-sets/s2/status.json").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    assert!(reason_logged(&m, "s2.json"));
    let st: serde_json::Value = serde_json::from_str(&read(&m, "status.json").unwrap()).unwrap();
    let s2 = st["diskEncryptionSets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "s2")
        .unwrap()
        .clone();
    assert!(s2["error"].as_str().unwrap().contains("restore"), "{s2}");
    // Its file is not overwritten by a new set of the same name.
    let kid = read(&m, "keys/k2/kid").unwrap();
    assert_eq!(
        ctl(
            &m,
            "disk-encryption-sets/create",
            &format!("s2 {}", kid.trim())
        ),
        Err(libc::EIO)
    );
    assert_eq!(std::fs::read(&set_file).unwrap(), b);
}

/// The one-line reason of a refused CLI command, or "" if it succeeded.
fn run_maybe(args: &[&str]) -> String {
    let out = run(args);
    if out.status.success() {
        return String::new();
    }
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        err.trim().lines().count(),
        1,
        "error is not one line: {err}"
    );
    err
}

/// A revocation on a full vault file system either succeeds or says that it took
/// effect in the daemon but could not be saved.
fn revoked_or_not_saved(outcome: Result<(), i32>, reason: &str, what: &str, m: &Mounted) {
    match outcome {
        Ok(()) => assert!(reason.is_empty(), "{reason}"),
        Err(errno) => {
            assert_eq!(errno, libc::ENOSPC, "{what}");
            let why = if reason.is_empty() {
                read(m, "last-error").unwrap()
            } else {
                reason.to_string()
            };
            assert!(
                why.contains(what)
                    && why.contains(
                        " in the running daemon (its disks are being revoked), but the change could not be saved"
                    )
                    && why.contains("No space left on device")
                    && why.contains("run the command again"),
                "{why}"
            );
        }
    }
}

fn eio<T>(r: std::io::Result<T>) -> bool {
    matches!(r, Err(e) if e.raw_os_error() == Some(libc::EIO))
}

#[test]
fn revocation_is_never_refused_when_the_vault_is_full() {
    let (dir, fs, store, vault, mnt) = store_with_vault_on_tmpfs();
    let m = Mounted::attach(dir.path(), &store, &mnt);
    let s = m.s().to_string();
    cmk_setup(&m, &[("ad", "1M", "Premium_LRS")]);
    let data = write_disk(&m, "ad", 11);
    let fd = std::fs::File::open(m.disk("ad")).unwrap();
    let read_fd = || {
        let mut b = vec![0u8; 8192];
        fd.read_exact_at(&mut b, 4096).map(|()| b)
    };
    assert!(read_fd().unwrap() == data);
    let revoked = || {
        Mounted::wait_for(std::time::Duration::from_secs(10), || eio(read_fd()))
            .expect("the open fd must fail with EIO");
        assert!(eio(read_disk(&m, "ad")), "new opens must fail with EIO");
    };
    let restored = || {
        Mounted::wait_for(std::time::Duration::from_secs(10), || {
            read_disk(&m, "ad").is_ok_and(|b| b == data)
        })
        .expect("the disk reads back after the restore");
        assert!(read_fd().unwrap() == data, "the open fd works again");
    };

    // Each revocation, by CLI (args) and by control file (path, data), with no space
    // left; then the restore.
    let grant: &[&str] = &["key", "grant", "k1", "--des", "set1"];
    let enable: &[&str] = &["key", "set", "k1", "--enabled", "true"];
    let recover: &[&str] = &["key", "recover", "k1"];
    /// What the message says; CLI args or a control file (path, data); the restore.
    type Case<'a> = (
        &'a str,
        &'a [&'a str],
        Option<(&'a str, &'a str)>,
        &'a [&'a str],
    );
    let cases: [Case; 8] = [
        (
            "key 'k1' is disabled",
            &["key", "set", "k1", "--enabled", "false"],
            None,
            enable,
        ),
        (
            "key 'k1' is disabled",
            &[],
            Some(("keys/k1/enabled", "false")),
            enable,
        ),
        (
            "key 'k1' no longer allows unwrapKey",
            &[],
            Some(("keys/k1/key-ops", "wrapKey")),
            &["key", "set", "k1", "--ops", "wrapKey,unwrapKey"],
        ),
        (
            "key 'k1' is deleted",
            &["key", "delete", "k1"],
            None,
            recover,
        ),
        (
            "key 'k1' is deleted",
            &[],
            Some(("keys/k1/delete", "k1")),
            recover,
        ),
        (
            "the grant of",
            &["key", "revoke-grant", "k1", "--des", "set1"],
            None,
            grant,
        ),
        (
            "the grant of",
            &[],
            Some(("keys/k1/grants", "revoke set1")),
            grant,
        ),
        (
            "is narrowed",
            &[
                "key",
                "grant",
                "k1",
                "--des",
                "set1",
                "--permissions",
                "get,wrapKey",
            ],
            None,
            grant,
        ),
    ];
    for (what, args, file, restore) in cases {
        let filler = fs.fill();
        let (outcome, why) = match file {
            Some((path, data)) => (ctl(&m, path, data), String::new()),
            None => {
                let mut a = args.to_vec();
                a.extend(["--store", &s]);
                let why = run_maybe(&a);
                let outcome = if why.is_empty() {
                    Ok(())
                } else {
                    Err(libc::ENOSPC)
                };
                (outcome, why)
            }
        };
        revoked_or_not_saved(outcome, &why, what, &m);
        revoked();
        std::fs::remove_file(&filler).unwrap();
        let mut a = restore.to_vec();
        a.extend(["--store", &s]);
        run_ok(&a);
        restored();
    }
    // The audit log took every record (those that found no room, late) and verifies.
    let v = read(&m, "verify-audit").unwrap();
    assert!(v.starts_with("OK: ") && !v.contains("torn"), "{v}");
    let log = std::fs::read_to_string(vault.join("audit.log")).unwrap();
    for op in ["KeyUpdate", "KeyDelete", "VaultAccessPolicyRevoke"] {
        assert!(log.contains(&format!("\"operationName\":\"{op}\"")), "{op}");
    }
    // Every revocation's effect is on record too, late where there was no room.
    let effects = log
        .matches("\"operationName\":\"DiskAccessRevoked\"")
        .count();
    assert!(
        effects >= cases.len(),
        "{effects} DiskAccessRevoked records"
    );
    drop(fd);
    drop(m);
    drop(fs);
}

/// A key delete that could not be saved (full vault file system) can be run again
/// once there is room, and then stays deleted across a remount.
#[test]
fn an_unsaved_key_delete_can_be_run_again() {
    let (dir, fs, store, _vault, mnt) = store_with_vault_on_tmpfs();
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    let s = m.s().to_string();
    cmk_setup(&m, &[("dd", "1M", "Premium_LRS")]);
    let filler = fs.fill();
    let why = run_maybe(&["key", "delete", "k1", "--store", &s]);
    assert!(why.contains("could not be saved"), "{why}");
    assert!(m.mnt.join(".vault/keys/k1/delete").exists());
    std::fs::remove_file(&filler).unwrap();
    run_ok(&["key", "delete", "k1", "--store", &s]);
    m.umount();
    m.mount();
    assert!(!m.mnt.join(".vault/keys/k1").exists());
    assert!(m.mnt.join(".vault/deleted-keys/k1").exists());
    let state =
        serde_json::from_str::<serde_json::Value>(&run_ok(&["disk", "show", "dd", "--store", &s]))
            .unwrap()["keyState"]
            .as_str()
            .unwrap()
            .to_string();
    assert!(state.contains("deleted"), "{state}");
}

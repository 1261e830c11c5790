//! Regression tests for what first users and an adversarial tester broke (issue 8),
//! revocation: a dead reconciler fails closed, revocation is never refused during a
//! rotation, disabling a version a rotation needs takes force, a full vault shows in
//! keyState, and revocation reaches disks unlinked while open. All on real mounts.

mod common;

use common::*;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(5);

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn status(m: &Mounted) -> Value {
    js(&std::fs::read_to_string(m.mnt.join(".vault/status.json")).unwrap())
}

fn log_text(m: &Mounted) -> String {
    std::fs::read_to_string(m.store.join("daemon.log")).unwrap_or_default()
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// A panicking reconciler is caught, logged with its message, and restarted; while
/// its passes fail, customer-key disks refuse I/O (open fds and new opens) and a
/// revocation write reports that it is not enforced. Platform-key disks keep going.
#[test]
fn dead_reconciler_fails_closed() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.create("p1", "4M");
    std::fs::write(m.disk("c1"), b"customer secret").unwrap();
    std::fs::write(m.disk("p1"), b"platform data").unwrap();
    m.umount();
    let trigger = m.dir.path().join("panic-now");
    let fault = format!("reconcile.access=1+:panic-if={}", trigger.display());
    m.mount_with(&[], &[("DISKVAULT_FAULT", &fault)]);
    let fd = File::open(m.disk("c1")).unwrap();
    let mut buf = [0u8; 15];
    fd.read_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"customer secret");

    File::create(&trigger).unwrap();
    Mounted::wait_for(LIMIT, || status(&m)["reconciler"]["state"] == "Failing")
        .expect("reconciler failure is noticed");
    assert_eq!(errno(fd.read_at(&mut buf, 0)), Some(libc::EIO));
    assert_eq!(errno(File::open(m.disk("c1"))), Some(libc::EIO));
    assert_eq!(
        std::fs::read(m.disk("p1")).unwrap()[..13],
        b"platform data"[..]
    );
    // A revocation is saved but reported as not enforced.
    let e = std::fs::write(m.mnt.join(".vault/keys/k1/enabled"), "false").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO));
    let last = std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    assert!(last.contains("not being enforced"), "{last}");
    let st = status(&m);
    assert!(
        st["reconciler"]["error"]
            .as_str()
            .unwrap()
            .contains("fault injection: panic at reconcile.access"),
        "{st}"
    );
    // The panic hook put the message and location in daemon.log.
    let log = log_text(&m);
    assert!(
        log.contains("panic in thread 'reconcile' at src/fault.rs"),
        "{log}"
    );
    assert!(log.contains("reconciler pass panicked"), "{log}");

    // Once passes succeed again, the revocation made meanwhile is enforced.
    std::fs::remove_file(&trigger).unwrap();
    Mounted::wait_for(LIMIT, || status(&m)["reconciler"]["state"] == "Running")
        .expect("reconciler recovers");
    assert!(status(&m)["reconciler"]["panics"].as_u64().unwrap() >= 1);
    assert_eq!(errno(fd.read_at(&mut buf, 0)), Some(libc::EIO));
    let state = js(&run_ok(&["disk", "show", "c1", "--store", &s]))["keyState"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(state.starts_with("Revoked: key k1 disabled"), "{state}");
    run_ok(&["key", "set", "k1", "--enabled", "true", "--store", &s]);
    Mounted::wait_for(LIMIT, || fd.read_at(&mut buf, 0).is_ok()).expect("restored");
    assert_eq!(&buf, b"customer secret");
}

/// Disabling a whole key, deleting it or removing its grant takes effect at once even
/// while a rotation of its set is in flight; the rotation stops, and resumes after
/// the key is restored.
#[test]
fn revocation_is_never_refused_during_a_rotation() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let disks: Vec<(String, &str, &str)> = (0..24)
        .map(|i| (format!("r{i}"), "1M", "Premium_LRS"))
        .collect();
    let refs: Vec<(&str, &str, &str)> =
        disks.iter().map(|(a, b, c)| (a.as_str(), *b, *c)).collect();
    cmk_setup(&m, &refs);
    run_ok(&[
        "des",
        "update",
        "set1",
        "--auto-rotate",
        "true",
        "--store",
        &s,
    ]);
    for (i, (d, _, _)) in disks.iter().enumerate() {
        std::fs::write(m.disk(d), pattern(i as u64, 4096)).unwrap();
    }
    let fd = File::open(m.disk("r0")).unwrap();
    // Rotate, and disable the key at once, while the set may still be re-wrapping.
    std::fs::write(m.mnt.join(".vault/keys/k1/rotate"), "1").unwrap();
    std::fs::write(m.mnt.join(".vault/keys/k1/enabled"), "false").unwrap();
    let mut buf = [0u8; 16];
    Mounted::wait_for(LIMIT, || {
        fd.read_at(&mut buf, 0)
            .is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
    })
    .expect("revoked at once");
    for (d, _, _) in &disks {
        assert_eq!(errno(File::open(m.disk(d))), Some(libc::EIO), "{d}");
    }
    // Restore: the rotation (if it was cut short) resumes and completes.
    std::fs::write(m.mnt.join(".vault/keys/k1/enabled"), "true").unwrap();
    let latest = js(&run_ok(&["key", "show", "k1", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    Mounted::wait_for(LIMIT, || {
        let set = js(&run_ok(&["des", "show", "set1", "--store", &s]));
        set["provisioningState"] == "Succeeded" && set["activeKey"]["keyUrl"] == latest.as_str()
    })
    .expect("rotation completes after restore");
    for (i, (d, _, _)) in disks.iter().enumerate() {
        let show = js(&run_ok(&["disk", "show", d, "--store", &s]));
        assert_eq!(show["keyId"], latest.as_str(), "{d}");
        assert_eq!(
            std::fs::read(m.disk(d)).unwrap()[..4096],
            pattern(i as u64, 4096)[..]
        );
    }
    assert!(js(&run_ok(&["des", "show", "set1", "--store", &s]))["autoKeyRotationError"].is_null());
}

/// Only disabling one version that an in-flight rotation still needs is refused
/// (EBUSY, naming --force); force=true disables it anyway, which revokes.
#[test]
fn disabling_a_needed_version_takes_force() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let k1 = cmk_setup(&m, &[("d1", "1M", "Premium_LRS")]);
    run_ok(&["key", "create", "k2", "--store", &s]);
    run_ok(&["key", "grant", "k2", "--des", "set1", "--store", &s]);
    let k2 = js(&run_ok(&["key", "show", "k2", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    // Stall the move to k2: k1's grant is gone, so d1 can't be re-wrapped.
    run_ok(&["key", "revoke-grant", "k1", "--des", "set1", "--store", &s]);
    run_err(&["des", "update", "set1", "--key-url", &k2, "--store", &s]);
    let v1 = k1.rsplit('/').next().unwrap();
    let ver = m.mnt.join(format!(".vault/keys/k1/versions/{v1}"));
    let e = std::fs::write(ver.join("enabled"), "false").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    assert!(std::fs::read_to_string(ver.join("enabled"))
        .unwrap()
        .starts_with("true"));
    std::fs::write(ver.join("update"), "enabled=false force=true").unwrap();
    assert!(std::fs::read_to_string(ver.join("enabled"))
        .unwrap()
        .starts_with("false"));
}

/// While the vault can't write its audit log (its file system is full), customer-key
/// disks can't be opened, and keyState says so instead of `Available`.
#[test]
fn full_vault_shows_in_key_state() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&dir.path().join("v"), "4M");
    let (store, vault, mnt) = (
        dir.path().join("store"),
        dir.path().join("v/vault"),
        dir.path().join("mnt"),
    );
    std::fs::create_dir(&mnt).unwrap();
    run_ok(&[
        "init",
        store.to_str().unwrap(),
        "--vault",
        vault.to_str().unwrap(),
    ]);
    let m = Mounted::attach(dir.path(), &store, &mnt);
    let s = m.s().to_string();
    cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    m.create("p1", "1M");
    let filler = fs.fill();
    // Each open is an audited unwrap: once the reserve is used up, opens fail.
    Mounted::wait_for(Duration::from_secs(30), || {
        errno(File::open(m.disk("c1"))) == Some(libc::EIO)
    })
    .expect("opens fail once the audit log can't grow");
    let state = js(&run_ok(&["disk", "show", "c1", "--store", &s]))["keyState"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        state.starts_with("Unavailable: ") && state.contains("audit"),
        "{state}"
    );
    assert!(
        File::open(m.disk("p1")).is_ok(),
        "platform disks don't need the vault"
    );
    std::fs::remove_file(filler).unwrap();
    File::open(m.disk("c1")).unwrap();
    let state = js(&run_ok(&["disk", "show", "c1", "--store", &s]))["keyState"].clone();
    assert_eq!(state, "Available");
}

/// Revocation reaches a customer-key disk that was deleted, or replaced by a rename,
/// while open: its handles fail with EIO like any other, and so does a reopen of them
/// through /proc/self/fd.
#[test]
fn revocation_reaches_disks_unlinked_while_open() {
    let m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(
        &m,
        &[("cz", "1M", "Premium_LRS"), ("cy", "1M", "Premium_LRS")],
    );
    m.create("p1", "1M");
    let mut fds = Vec::new();
    for d in ["cz", "cy"] {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(m.disk(d))
            .unwrap();
        f.write_all_at(b"CZ-SECRET", 512 << 10).unwrap();
        f.sync_all().unwrap();
        fds.push(f);
    }
    std::fs::remove_file(m.disk("cz")).unwrap();
    std::fs::rename(m.disk("p1"), m.disk("cy")).unwrap();
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", &s]);
    let mut buf = [0u8; 9];
    for f in &fds {
        Mounted::wait_for(LIMIT, || {
            errno(f.read_at(&mut buf, 512 << 10)) == Some(libc::EIO)
        })
        .expect("revoked though unlinked");
        assert_eq!(errno(f.write_at(b"x", 0)), Some(libc::EIO));
        use std::os::fd::AsRawFd;
        let again = format!("/proc/self/fd/{}", f.as_raw_fd());
        assert_eq!(errno(File::open(again)), Some(libc::EIO));
    }
}

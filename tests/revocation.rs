//! Revocation on real mounts: revocation of open disks within a second (page cache
//! included) and restore, for every trigger; Ultra semantics; the revocation delay.

mod common;

use common::keyed::*;
use common::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::time::Duration;

fn key_state(m: &Mounted, disk: &str) -> String {
    js(&run_ok(&["disk", "show", disk, "--store", m.s()]))["keyState"]
        .as_str()
        .unwrap()
        .to_string()
}

fn eio(r: std::io::Result<usize>) -> bool {
    r.is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
}

struct Trigger {
    name: &'static str,
    revoke: &'static str,
    revoke_data: &'static str,
    restore: &'static str,
    restore_data: &'static str,
    state: &'static str,
}

/// Each trigger: revoke through a control file, check open handles, cache and new
/// opens fail within the bound, restore, check the data comes back intact.
#[test]
fn revocation_and_restore_for_every_trigger() {
    let m = setup(&[], &[("d1", "Premium_LRS")]);
    let s = m.s().to_string();
    let data = pattern(5, 4 << 20);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("d1"))
        .unwrap();
    f.write_all_at(&data, 0).unwrap();
    f.sync_all().unwrap();
    let kid = js(&run_ok(&["key", "show", "k1", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let version = kid.rsplit('/').next().unwrap().to_string();
    let version_enabled = format!("keys/k1/versions/{version}/enabled");
    let triggers = [
        Trigger {
            name: "key disabled",
            revoke: "keys/k1/enabled",
            revoke_data: "false",
            restore: "keys/k1/enabled",
            restore_data: "true",
            state: "Revoked: key k1 disabled at ",
        },
        Trigger {
            name: "version disabled",
            revoke: Box::leak(version_enabled.clone().into_boxed_str()),
            revoke_data: "false",
            restore: Box::leak(version_enabled.into_boxed_str()),
            restore_data: "true",
            state: "Revoked: key version https://",
        },
        Trigger {
            name: "grant removed",
            revoke: "keys/k1/grants",
            revoke_data: "revoke set1",
            restore: "keys/k1/grants",
            restore_data: "grant set1",
            state: "Revoked: access of disk encryption set 'set1' to key k1 revoked at ",
        },
        Trigger {
            name: "key deleted",
            revoke: "",
            revoke_data: "",
            restore: "deleted-keys/k1/recover",
            restore_data: "1",
            state: "Revoked: key k1 deleted at ",
        },
    ];
    let mut buf = vec![0u8; 65536];
    for t in &triggers {
        // Fill the page cache with plaintext through the open handle.
        f.read_exact_at(&mut buf, 0).unwrap();
        assert_eq!(&buf[..], &data[..65536]);
        let audit_before = std::fs::read_to_string(m.mnt.join(".vault/audit.log"))
            .unwrap()
            .lines()
            .count();
        if t.revoke.is_empty() {
            std::fs::remove_dir(m.mnt.join(".vault/keys/k1")).unwrap();
        } else {
            ctl(&m, t.revoke, t.revoke_data);
        }
        // Reads (also of cached pages) and writes on the open handle fail: wait until
        // every 64 KiB of the disk fails, i.e. no cached page is left.
        let all_fail = |buf: &mut [u8]| {
            (0..data.len() as u64)
                .step_by(65536)
                .all(|o| eio(f.read_at(buf, o)))
        };
        let took = Mounted::wait_for(LIMIT, || all_fail(&mut buf))
            .unwrap_or_else(|| panic!("{}: reads still served after {LIMIT:?}", t.name));
        eprintln!("{}: revocation-to-EIO {took:?}", t.name);
        assert!(all_fail(&mut buf), "{}: cached data re-read", t.name);
        assert!(eio(f.write_at(b"x", 100)), "{}: write served", t.name);
        let e = File::open(m.disk("d1")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{}: new open", t.name);
        let state = key_state(&m, "d1");
        assert!(state.starts_with(t.state), "{}: keyState {state}", t.name);
        let status = std::fs::read_to_string(m.mnt.join(".vault/status.json")).unwrap();
        assert!(status.contains(t.state), "{}", t.name);
        // Restore: the same open handle reads the same data again.
        ctl(&m, t.restore, t.restore_data);
        let took = Mounted::wait_for(LIMIT, || f.read_at(&mut buf, 0).is_ok())
            .unwrap_or_else(|| panic!("{}: not restored after {LIMIT:?}", t.name));
        eprintln!("{}: restore {took:?}", t.name);
        let mut all = vec![0u8; data.len()];
        f.read_exact_at(&mut all, 0).unwrap();
        assert!(all == data, "{}: data changed", t.name);
        assert_eq!(key_state(&m, "d1"), "Available");
        File::open(m.disk("d1")).unwrap();
        // Trigger, effect and restore are in the audit log.
        let audit = std::fs::read_to_string(m.mnt.join(".vault/audit.log")).unwrap();
        let new: Vec<&str> = audit.lines().skip(audit_before).collect();
        assert!(
            new.iter()
                .any(|l| l.contains("\"operationName\":\"DiskAccessRevoked\"")
                    && l.contains(t.state.trim_end_matches(" at "))),
            "{}: no revocation record",
            t.name
        );
        assert!(
            new.iter()
                .any(|l| l.contains("\"operationName\":\"DiskAccessRestored\"")),
            "{}: no restore record",
            t.name
        );
    }
    assert!(run_ok(&["vault", "verify-audit", "--store", &s]).starts_with("OK"));
}

/// Ultra and Premium SSD v2: open handles keep working; once closed, no new open.
#[test]
fn ultra_disks_keep_open_handles_until_closed() {
    let m = setup(
        &[],
        &[
            ("u1", "UltraSSD_LRS"),
            ("v2", "PremiumV2_LRS"),
            ("p1", "Premium_LRS"),
        ],
    );
    let data = pattern(8, 1 << 20);
    let handles: Vec<File> = ["u1", "v2", "p1"]
        .iter()
        .map(|d| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(m.disk(d))
                .unwrap();
            f.write_all_at(&data, 0).unwrap();
            f
        })
        .collect();
    ctl(&m, "keys/k1/enabled", "false");
    let mut buf = vec![0u8; 4096];
    Mounted::wait_for(LIMIT, || eio(handles[2].read_at(&mut buf, 0)))
        .expect("Premium disk revoked");
    Mounted::wait_for(LIMIT, || {
        ["u1", "v2"]
            .iter()
            .all(|d| key_state(&m, d).starts_with("Revoked: "))
    })
    .expect("Ultra disks marked revoked");
    for (i, d) in ["u1", "v2"].iter().enumerate() {
        let f = &handles[i];
        f.write_all_at(b"still here", 0).unwrap();
        f.sync_all().unwrap();
        let mut got = vec![0u8; data.len()];
        f.read_exact_at(&mut got, 0).unwrap();
        assert_eq!(&got[..10], b"still here");
        assert_eq!(&got[10..], &data[10..]);
        assert_eq!(
            File::open(m.disk(d)).unwrap_err().raw_os_error(),
            Some(libc::EIO),
            "{d}: new open"
        );
        assert!(
            key_state(&m, d).contains("open handles keep working until closed"),
            "{d}"
        );
    }
    drop(handles);
    for d in ["u1", "v2"] {
        assert_eq!(
            File::open(m.disk(d)).unwrap_err().raw_os_error(),
            Some(libc::EIO),
            "{d}: reopen after close"
        );
    }
    ctl(&m, "keys/k1/enabled", "true");
    for d in ["u1", "v2", "p1"] {
        Mounted::wait_for(LIMIT, || File::open(m.disk(d)).is_ok())
            .unwrap_or_else(|| panic!("{d} not restored"));
    }
    assert_eq!(&std::fs::read(m.disk("u1")).unwrap()[..10], b"still here");
}

/// With --revocation-delay the disk keeps working for the delay, then fails.
#[test]
fn revocation_delay_is_honoured() {
    let m = setup(&["--revocation-delay", "3s"], &[("d1", "Premium_LRS")]);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("d1"))
        .unwrap();
    f.write_all_at(b"abc", 0).unwrap();
    let start = std::time::Instant::now();
    ctl(&m, "keys/k1/enabled", "false");
    let mut buf = [0u8; 3];
    // Wait for at least one reconciler pass after the change, then check it still works.

    let p0 = passes(&m);
    Mounted::wait_for(LIMIT, || passes(&m) > p0 + 1).expect("reconciler runs");
    if start.elapsed() < Duration::from_secs(3) {
        f.read_exact_at(&mut buf, 0)
            .expect("served during the delay");
        let state = key_state(&m, "d1");
        assert!(
            state.starts_with("Available (revocation pending: key k1 disabled"),
            "{state}"
        );
    }
    let took = Mounted::wait_for(Duration::from_secs(10), || eio(f.read_at(&mut buf, 0)))
        .expect("revoked after the delay");
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "revoked before the delay: {:?}",
        start.elapsed()
    );
    eprintln!("revoked {took:?} after the check");
}

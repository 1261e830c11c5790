//! Key rotation on real mounts: a rotation needs the old key until done,
//! auto-rotation and its delay, rotation policies, rotation under fio load, and kill -9
//! at every step and at random moments of a rotation.

mod common;

use common::keyed::*;
use common::*;
use std::fs::OpenOptions;
use std::process::Command;
use std::time::Duration;

/// A rotation that can't finish keeps previousKeys; disabling them is refused until
/// the old key unwraps again, then the rotation completes by itself.
#[test]
fn rotation_needs_the_old_key_until_done() {
    let m = setup(&[], &[("d1", "Premium_LRS"), ("d2", "Premium_LRS")]);
    let s = m.s().to_string();
    let data = pattern(21, 1 << 20);
    for d in ["d1", "d2"] {
        std::fs::write(m.disk(d), &data).unwrap();
    }
    run_ok(&["key", "create", "k2", "--store", &s]);
    run_ok(&["key", "grant", "k2", "--des", "set1", "--store", &s]);
    let k1 = js(&run_ok(&["key", "show", "k1", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let k2 = js(&run_ok(&["key", "show", "k2", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    // The old key stops unwrapping: the move to k2 can't finish, and says why.
    run_ok(&["key", "revoke-grant", "k1", "--des", "set1", "--store", &s]);
    let e = run_err(&["des", "update", "set1", "--key-url", &k2, "--store", &s]);
    assert!(
        e.contains("still moving to key") && e.contains("KeyVaultAccessForbidden"),
        "{e}"
    );
    let set = js(&run_ok(&["des", "show", "set1", "--store", &s]));
    assert_eq!(set["provisioningState"], "Updating");
    assert_eq!(set["previousKeys"][0]["keyUrl"], k1.as_str());
    assert_eq!(set["activeKey"]["keyUrl"], k2.as_str());
    // Disabling the one old version the rotation still needs is refused, naming --force.
    let v1 = k1.rsplit('/').next().unwrap().to_string();
    let e = std::fs::write(
        m.mnt.join(format!(".vault/keys/k1/versions/{v1}/enabled")),
        "false",
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let e = std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    assert!(
        e.contains("still needed by disk encryption set 'set1'") && e.contains("--force"),
        "{e}"
    );
    // Disabling or deleting the whole key is a revocation, never refused.
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", &s]);
    run_ok(&["key", "set", "k1", "--enabled", "true", "--store", &s]);
    run_ok(&["key", "delete", "k1", "--store", &s]);
    run_ok(&["key", "recover", "k1", "--store", &s]);
    // Restoring access lets the rotation finish on its own.
    run_ok(&["key", "grant", "k1", "--des", "set1", "--store", &s]);
    Mounted::wait_for(LIMIT, || {
        js(&run_ok(&["des", "show", "set1", "--store", &s]))["provisioningState"] == "Succeeded"
    })
    .expect("rotation completes");
    let set = js(&run_ok(&["des", "show", "set1", "--store", &s]));
    assert_eq!(set["previousKeys"], serde_json::json!([]));
    assert!(set["lastKeyRotationTimestamp"].is_string());
    for d in ["d1", "d2"] {
        assert_eq!(
            js(&run_ok(&["disk", "show", d, "--store", &s]))["keyId"],
            k2.as_str()
        );
        assert!(std::fs::read(m.disk(d)).unwrap()[..data.len()] == data[..]);
    }
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", &s]);
    assert!(std::fs::read(m.disk("d1")).is_ok(), "d1 no longer needs k1");
}

#[test]
fn auto_rotation_follows_new_versions_and_latches_errors() {
    let m = setup(&[], &[("d1", "Premium_LRS")]);
    let s = m.s().to_string();
    run_ok(&[
        "des",
        "update",
        "set1",
        "--auto-rotate",
        "true",
        "--store",
        &s,
    ]);
    std::fs::write(m.disk("d1"), b"payload").unwrap();
    let show = |what: &str| {
        js(&run_ok(&[
            what,
            "show",
            if what == "des" { "set1" } else { "d1" },
            "--store",
            &s,
        ]))
    };
    // A new version from the rotate control file moves the set and its disk.
    ctl(&m, "keys/k1/rotate", "1");
    let v2 = js(&run_ok(&["key", "show", "k1", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    Mounted::wait_for(LIMIT, || show("des")["activeKey"]["keyUrl"] == v2.as_str())
        .expect("auto-rotated");
    Mounted::wait_for(LIMIT, || show("disk")["keyId"] == v2.as_str()).expect("disk re-wrapped");
    // A version that can't wrap yet (nbf in the future) makes auto-rotation fail and stop.
    run_ok(&["key", "rotate", "k1", "--nbf", "+1d", "--store", &s]);
    Mounted::wait_for(LIMIT, || show("des")["autoKeyRotationError"].is_string())
        .expect("error recorded");
    let err = show("des")["autoKeyRotationError"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(err.contains("not valid before"), "{err}");
    assert_eq!(show("des")["activeKey"]["keyUrl"], v2.as_str());
    // Even a usable newer version is not picked up while the error stands.
    run_ok(&["key", "rotate", "k1", "--store", &s]);
    let v4 = js(&run_ok(&["key", "show", "k1", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();

    let p0 = passes(&m);
    Mounted::wait_for(LIMIT, || passes(&m) > p0 + 2).expect("reconciler runs");
    assert_eq!(
        show("des")["activeKey"]["keyUrl"],
        v2.as_str(),
        "auto-rotation should stay stopped"
    );
    // A user update clears the error and auto-rotation resumes.
    run_ok(&[
        "des",
        "update",
        "set1",
        "--auto-rotate",
        "true",
        "--store",
        &s,
    ]);
    Mounted::wait_for(LIMIT, || show("des")["activeKey"]["keyUrl"] == v4.as_str())
        .expect("resumed");
    assert!(show("des")["autoKeyRotationError"].is_null());
    assert_eq!(&std::fs::read(m.disk("d1")).unwrap()[..7], b"payload");
}

/// With --auto-rotate-delay a new version is picked up only after the delay.
#[test]
fn auto_rotation_delay_is_honoured() {
    let m = setup(&["--auto-rotate-delay", "3s"], &[("d1", "Premium_LRS")]);
    let s = m.s().to_string();
    run_ok(&[
        "des",
        "update",
        "set1",
        "--auto-rotate",
        "true",
        "--store",
        &s,
    ]);
    let active = || {
        js(&run_ok(&["des", "show", "set1", "--store", &s]))["activeKey"]["keyUrl"]
            .as_str()
            .unwrap()
            .to_string()
    };
    let old = active();
    let start = std::time::Instant::now();
    let new = js(&run_ok(&["key", "rotate", "k1", "--store", &s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();

    let p0 = passes(&m);
    Mounted::wait_for(LIMIT, || passes(&m) > p0 + 1).expect("reconciler runs");
    // Version ages count whole seconds, so allow one second of rounding.
    if start.elapsed() < Duration::from_secs(2) {
        assert_eq!(active(), old, "rotated before the delay");
    }
    Mounted::wait_for(Duration::from_secs(10), || active() == new)
        .expect("rotated after the delay");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "rotated after {:?}",
        start.elapsed()
    );
}

#[test]
fn rotation_policy_rotates_and_notifies() {
    let m = setup(&[], &[]);
    let s = m.s().to_string();
    run_ok(&["key", "create", "pk", "--exp", "+1h", "--store", &s]);
    // Notify 2 hours before expiry: due at once, logged once per version.
    run_ok(&[
        "key",
        "rotation-policy",
        "pk",
        "--set",
        r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"PT2H"},"action":{"type":"Notify"}}]}"#,
        "--store",
        &s,
    ]);
    let audit = || std::fs::read_to_string(m.mnt.join(".vault/audit.log")).unwrap();
    let notices = || {
        audit()
            .matches("KeyNearExpiryEventGridNotification")
            .count()
    };
    Mounted::wait_for(LIMIT, || notices() == 1).expect("notified");
    // A set that follows pk's latest version picks up policy rotations.
    run_ok(&[
        "des",
        "create",
        "ps",
        "--key-url",
        "pk",
        "--auto-rotate",
        "--store",
        &s,
    ]);
    run_ok(&["key", "grant", "pk", "--des", "ps", "--store", &s]);
    let first = js(&run_ok(&["des", "show", "ps", "--store", &s]))["activeKey"]["keyUrl"].clone();
    // Rotate ten seconds (the shortest a policy takes) after creation; new versions
    // expire in 30 days.
    ctl(
        &m,
        "keys/pk/rotation-policy",
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"PT10S"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P30D"}}"#,
    );
    Mounted::wait_for(Duration::from_secs(30), || {
        js(&run_ok(&["key", "show", "pk", "--store", &s]))["versions"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    })
    .expect("rotated by policy");
    assert!(audit()
        .lines()
        .any(|l| l.contains("\"operationName\":\"KeyRotate\"") && l.contains("rotation policy")));
    Mounted::wait_for(LIMIT, || {
        js(&run_ok(&["des", "show", "ps", "--store", &s]))["activeKey"]["keyUrl"] != first
    })
    .expect("the auto-rotating set follows the policy's new version");
    let cur = js(&run_ok(&["key", "show", "pk", "--store", &s]));
    assert!(
        cur["attributes"]["expires"].is_string(),
        "new version has the policy's expiry"
    );
    assert_eq!(notices(), 1, "one notice per version");
    // Bad policies are refused.
    for bad in [
        r#"{"lifetimeActions":[{"trigger":{},"action":{"type":"Rotate"}}]}"#,
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P1D"},"action":{"type":"Notify"}}]}"#,
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"soon"},"action":{"type":"Rotate"}}]}"#,
        "{",
    ] {
        let e = std::fs::write(m.mnt.join(".vault/keys/pk/rotation-policy"), bad).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{bad}");
    }
    run_ok(&["key", "rotation-policy", "pk", "--clear", "--store", &s]);
}

/// A child process that is killed and reaped if the test fails before waiting for it.
struct KillOnDrop(Option<std::process::Child>);

impl KillOnDrop {
    fn wait_with_output(mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// fio writes and verifies (crc32c) on three disks while the set's key changes six
/// times, to new versions and to another key: no I/O error, no verify error.
#[test]
fn rotation_under_fio_load() {
    let m = setup(
        &[],
        &[
            ("f1", "Premium_LRS"),
            ("f2", "StandardSSD_LRS"),
            ("f3", "Standard_LRS"),
        ],
    );
    let s = m.s().to_string();
    for d in ["f1", "f2", "f3"] {
        run_ok(&[
            "disk",
            "create",
            &format!("{d}x"),
            "--size",
            "1M",
            "--store",
            &s,
        ]);
        std::fs::remove_file(m.disk(&format!("{d}x"))).unwrap();
        let f = OpenOptions::new().write(true).open(m.disk(d)).unwrap();
        f.set_len(24 << 20).unwrap();
    }
    run_ok(&["key", "create", "k2", "--store", &s]);
    run_ok(&["key", "grant", "k2", "--des", "set1", "--store", &s]);
    let mut fio = Command::new("fio");
    fio.args([
        "--output-format=terse",
        "--ioengine=psync",
        "--bs=4k",
        "--size=24M",
        "--rw=randwrite",
        "--verify=crc32c",
        "--verify_fatal=1",
        "--do_verify=1",
        "--loops=4",
        "--randseed=42",
        "--verify_state_save=0",
    ]);
    for d in ["f1", "f2", "f3"] {
        fio.arg(format!("--name={d}"))
            .arg(format!("--filename={}", m.disk(d).display()));
    }
    // fio runs in the temp dir (any state file stays there) and is killed if an
    // assertion below fails.
    let child = KillOnDrop(Some(
        fio.current_dir(m.dir.path())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("fio"),
    ));
    let mut rotations = 0;
    for i in 0..6 {
        let target = if i % 3 == 2 {
            let k = if i == 2 { "k2" } else { "k1" };
            js(&run_ok(&["key", "show", k, "--store", &s]))["key"]["kid"]
                .as_str()
                .unwrap()
                .to_string()
        } else {
            let k = if i < 3 { "k1" } else { "k2" };
            js(&run_ok(&["key", "rotate", k, "--store", &s]))["key"]["kid"]
                .as_str()
                .unwrap()
                .to_string()
        };
        ctl(&m, "disk-encryption-sets/set1/key-url", &target);
        let set = js(&run_ok(&["des", "show", "set1", "--store", &s]));
        assert_eq!(set["activeKey"]["keyUrl"], target.as_str());
        assert_eq!(set["provisioningState"], "Succeeded");
        for d in ["f1", "f2", "f3"] {
            assert_eq!(
                js(&run_ok(&["disk", "show", d, "--store", &s]))["keyId"],
                target.as_str()
            );
        }
        rotations += 1;
    }
    let out = child.wait_with_output();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio failed: {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    // Terse v3: field 5 is the job's error code.
    for line in stdout.lines().filter(|l| l.starts_with("3;")) {
        assert_eq!(line.split(';').nth(4), Some("0"), "fio job error: {line}");
    }
    assert_eq!(stdout.lines().filter(|l| l.starts_with("3;")).count(), 3);
    assert_eq!(rotations, 6);
}

/// kill -9 at every step of a rotation of six disks, then remount: every disk reads
/// back intact and the rotation has completed.
#[test]
fn kill_9_at_every_step_of_a_rotation() {
    let names = ["r1", "r2", "r3", "r4", "r5", "r6"];
    let disks: Vec<(&str, &str)> = names.iter().map(|n| (*n, "Premium_LRS")).collect();
    let mut m = setup(&[], &disks);
    let s = m.s().to_string();
    for (i, d) in names.iter().enumerate() {
        std::fs::write(m.disk(d), pattern(i as u64, 200_000)).unwrap();
    }
    let mut points: Vec<String> = vec!["rotate.begin=1".into(), "rotate.end=1".into()];
    points.extend((1..=names.len()).map(|n| format!("rotate.disk={n}")));
    for (iter, point) in points.iter().enumerate() {
        m.umount();
        m.mount_with(&[], &[("DISKVAULT_FAULT", point)]);
        let target = js(&run_ok(&["key", "rotate", "k1", "--store", &s]))["key"]["kid"]
            .as_str()
            .unwrap()
            .to_string();
        // The write dies with the daemon.
        let r = std::fs::write(
            m.mnt.join(".vault/disk-encryption-sets/set1/key-url"),
            &target,
        );
        assert!(r.is_err(), "{point}: the daemon should have died");
        m.reap_dead_daemon();
        m.mount();
        let set = js(&run_ok(&["des", "show", "set1", "--store", &s]));
        assert_eq!(set["provisioningState"], "Succeeded", "{point}");
        assert_eq!(set["activeKey"]["keyUrl"], target.as_str(), "{point}");
        for (i, d) in names.iter().enumerate() {
            assert_eq!(
                js(&run_ok(&["disk", "show", d, "--store", &s]))["keyId"],
                target.as_str(),
                "{point} {d}"
            );
            let got = std::fs::read(m.disk(d)).unwrap();
            assert!(
                got[..200_000] == pattern(i as u64, 200_000)[..],
                "{point}: {d} damaged (iteration {iter})"
            );
        }
    }
}

/// Seeded random moments: kill -9 from outside while a rotation of many disks runs.
#[test]
fn kill_9_at_random_moments_of_a_rotation() {
    let names: Vec<String> = (0..16).map(|i| format!("q{i}")).collect();
    let disks: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "Premium_LRS")).collect();
    let mut m = setup(&[], &disks);
    let s = m.s().to_string();
    for (i, d) in names.iter().enumerate() {
        std::fs::write(m.disk(d), pattern(100 + i as u64, 65536)).unwrap();
    }
    let delays = pattern(2026, 8);
    for (iter, b) in delays.iter().enumerate() {
        let target = js(&run_ok(&["key", "rotate", "k1", "--store", &s]))["key"]["kid"]
            .as_str()
            .unwrap()
            .to_string();
        let pid = m.daemon_pid();
        let path = m.mnt.join(".vault/disk-encryption-sets/set1/key-url");
        let writer = std::thread::spawn(move || std::fs::write(path, target));
        // Seeded delay: 0 to ~50 ms into the rotation.
        std::thread::sleep(Duration::from_micros(*b as u64 * 200));
        // Safe because: kill takes plain integers.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        let _ = writer.join();
        m.reap_dead_daemon();
        m.mount();
        let set = js(&run_ok(&["des", "show", "set1", "--store", &s]));
        assert_eq!(set["provisioningState"], "Succeeded", "iteration {iter}");
        let active = set["activeKey"]["keyUrl"].as_str().unwrap().to_string();
        for (i, d) in names.iter().enumerate() {
            assert_eq!(
                js(&run_ok(&["disk", "show", d, "--store", &s]))["keyId"],
                active.as_str(),
                "iteration {iter}: {d}"
            );
            assert!(
                std::fs::read(m.disk(d)).unwrap()[..65536] == pattern(100 + i as u64, 65536)[..],
                "iteration {iter}: {d}"
            );
        }
    }
}

//! Scale behaviour through a real mount (the timings are in scripts/bench-scale):
//! a revocation reaches every object before the CLI returns, with one summary line
//! instead of one per object and every audit record written; the 500-snapshot limit;
//! the snapshot options and refusals of issue 19; fix texts that work when run.

mod common;
#[path = "common/snap.rs"]
mod snap;

use common::*;
use std::os::unix::fs::FileExt;

/// Writes one request to `.vault/command`; the reply, or the errno.
fn command(m: &Mounted, req: &serde_json::Value) -> Result<String, i32> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join(".vault/command"))
        .unwrap();
    if let Err(e) = f.write_all(req.to_string().as_bytes()) {
        return Err(e.raw_os_error().unwrap_or(0));
    }
    let mut buf = vec![0u8; 1 << 20];
    let n = f.read_at(&mut buf, 0).unwrap();
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn snap_req(name: &str, source: &str) -> serde_json::Value {
    serde_json::json!({"copy": {"create": {"kind": "snapshot", "name": name, "source": source}}})
}

fn readable(p: &std::path::Path) -> bool {
    std::fs::File::open(p)
        .and_then(|f| f.read_at(&mut [0u8; 4096], 0))
        .is_ok()
}

#[test]
fn revocation_of_many_objects_is_complete_when_the_cli_returns_and_says_so_in_a_line() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[]);
    let disks = 15;
    for i in 0..disks {
        let d = format!("d{i:02}");
        command(
            &m,
            &serde_json::json!({"disk": {"create": {"name": d, "options": {"size": 1 << 20,
                "sku": "Premium_LRS", "cipher": null, "diskEncryptionSet": "set1"}}}}),
        )
        .unwrap();
        rw(&m.disk(&d)).write_all_at(&pattern(i, 4096), 0).unwrap();
        for k in 0..3 {
            command(&m, &snap_req(&format!("{d}-s{k}"), &d)).unwrap();
        }
    }
    let mut objects: Vec<_> = (0..disks).map(|i| m.disk(&format!("d{i:02}"))).collect();
    for i in 0..disks {
        for k in 0..3 {
            objects.push(m.mnt.join(format!("snapshots/d{i:02}-s{k}")));
        }
    }
    assert!(objects.iter().all(|p| readable(p)));
    let audit_before = std::fs::read_to_string(m.store.join("vault/audit.log")).unwrap();
    let out = run(&["key", "set", "k1", "--enabled", "false", "--store", &s]);
    assert!(out.status.success());
    // Every object refuses I/O once the command has returned.
    let served: Vec<_> = objects.iter().filter(|p| readable(p)).collect();
    assert!(
        served.is_empty(),
        "still readable after the CLI returned: {served:?}"
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with("revoked 15 disks and 45 snapshots on key k1: d00, d01,")
            && err.contains("(first 10 of 60)"),
        "{err}"
    );
    assert!(err.len() < 600, "{} bytes: {err}", err.len());
    // One record per object, all written; the chain holds.
    let audit = std::fs::read_to_string(m.store.join("vault/audit.log")).unwrap();
    let revoked = audit[audit_before.len()..]
        .matches("\"operationName\":\"DiskAccessRevoked\"")
        .count();
    assert_eq!(revoked, 60);
    assert!(run_ok(&["vault", "verify-audit", "--store", &s]).contains("OK"));
    // One log line for the event, not one per object.
    let log = std::fs::read_to_string(m.store.join("daemon.log")).unwrap();
    assert_eq!(
        log.matches("revoked 15 disks and 45 snapshots").count(),
        1,
        "{log}"
    );
    assert!(
        !log.contains("disk 'd03': Revoked"),
        "a per-object line at warn level"
    );

    let out = run(&["key", "set", "k1", "--enabled", "true", "--store", &s]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("available 15 disks and 45 snapshots on key k1"),
        "{err}"
    );
    let dark: Vec<_> = objects.iter().filter(|p| !readable(p)).collect();
    assert!(dark.is_empty(), "not readable after the restore: {dark:?}");
    m.umount();
}

#[test]
fn a_disk_has_at_most_500_snapshots() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "1M");
    for i in 0..500 {
        command(&m, &snap_req(&format!("s{i:03}"), "d")).unwrap();
    }
    assert_eq!(command(&m, &snap_req("s500", "d")), Err(libc::EDQUOT));
    let err = run_err(&["snapshot", "create", "s500", "--source", "d", "--store", &s]);
    assert!(
        err.contains("500") && err.contains("delete older snapshots"),
        "{err}"
    );
    // Snapshots of other disks don't count, and a delete makes room.
    m.create("e", "1M");
    run_ok(&["snapshot", "create", "e1", "--source", "e", "--store", &s]);
    run_ok(&["snapshot", "delete", "s000", "--store", &s]);
    run_ok(&["snapshot", "create", "s500", "--source", "d", "--store", &s]);
    m.umount();
}

#[test]
fn incremental_takes_true_or_false_and_false_makes_an_independent_full_copy() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "1M");
    for (name, extra) in [
        ("a", vec![]),
        ("b", vec!["--incremental"]),
        ("c", vec!["--incremental", "true"]),
    ] {
        let mut args = vec!["snapshot", "create", name, "--source", "d", "--store", &s];
        args.extend(extra);
        let v: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
        assert_eq!(v["incremental"], true, "{name}");
    }
    let out = run(&[
        "snapshot",
        "create",
        "f",
        "--source",
        "d",
        "--incremental",
        "maybe",
        "--store",
        &s,
    ]);
    assert_eq!(out.status.code(), Some(2), "a usage error");
    assert!(!m.mnt.join("snapshots/f").exists());
    // Full copies, by the CLI and by the control file: readable at once, then
    // independent of their source.
    let data = pattern(9, 300_000);
    rw(&m.disk("d")).write_all_at(&data, 4096).unwrap();
    let v: serde_json::Value = serde_json::from_str(&run_ok(&[
        "snapshot",
        "create",
        "f",
        "--source",
        "d",
        "--incremental",
        "false",
        "--store",
        &s,
    ]))
    .unwrap();
    assert_eq!(v["incremental"], false);
    std::fs::write(
        m.mnt.join(".vault/snapshots/create"),
        "g d incremental=false\n",
    )
    .unwrap();
    let want = std::fs::read(m.disk("d")).unwrap();
    assert!(
        std::fs::read(m.mnt.join("snapshots/f")).unwrap() == want,
        "f at once"
    );
    rw(&m.disk("d"))
        .write_all_at(&pattern(10, 8192), 0)
        .unwrap();
    snap::settle_merges(&m);
    for n in ["f", "g"] {
        let v = snap::show(&m, "snapshot", n);
        assert_eq!(
            (v["completionPercent"].as_u64(), v["deltas"].as_u64()),
            (Some(100), Some(1)),
            "{n}: {v}"
        );
        assert_eq!(v["incremental"], false);
    }
    // Everything else of the family goes; the full copies keep their content.
    for n in ["a", "b", "c"] {
        run_ok(&["snapshot", "delete", n, "--store", &s]);
    }
    run_ok(&["disk", "delete", "d", "--store", &s]);
    snap::settle_merges(&m);
    for n in ["f", "g"] {
        assert!(
            std::fs::read(m.mnt.join(format!("snapshots/{n}"))).unwrap() == want,
            "{n}"
        );
    }
    m.umount();
}

#[test]
fn refusals_of_issue_19_change_nothing() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "1M");
    run_ok(&["snapshot", "create", "s1", "--source", "d", "--store", &s]);
    rw(&m.disk("d")).write_all_at(&pattern(1, 8192), 0).unwrap();
    run_ok(&["snapshot", "create", "s2", "--source", "d", "--store", &s]);
    // A diff from a newer snapshot to an older one.
    let err = run_err(&["snapshot", "diff", "s2", "s1", "--store", &s]);
    assert!(err.contains("older") && err.contains("swap"), "{err}");
    assert!(run_ok(&["snapshot", "diff", "s1", "s2", "--store", &s]).contains("pageRanges"));
    // Paged: one range at a time, following nextMarker, gives the same ranges.
    rw(&m.disk("d"))
        .write_all_at(&pattern(2, 4096), 64 * 4096)
        .unwrap();
    run_ok(&["snapshot", "create", "s3", "--source", "d", "--store", &s]);
    let all: serde_json::Value =
        serde_json::from_str(&run_ok(&["snapshot", "diff", "s1", "s3", "--store", &s])).unwrap();
    let mut pages = Vec::new();
    let mut marker: Option<String> = None;
    loop {
        let mut args = vec![
            "snapshot",
            "diff",
            "s1",
            "s3",
            "--max-ranges",
            "1",
            "--store",
            &s,
        ];
        if let Some(mk) = &marker {
            args.extend(["--marker", mk.as_str()]);
        }
        let v: serde_json::Value = serde_json::from_str(&run_ok(&args)).unwrap();
        pages.extend(v["pageRanges"].as_array().unwrap().clone());
        match v["nextMarker"].as_str() {
            Some(n) => marker = Some(n.to_string()),
            None => break,
        }
    }
    assert_eq!(serde_json::Value::from(pages), all["pageRanges"]);
    assert_eq!(all["pageRanges"].as_array().unwrap().len(), 2, "{all}");
    for bad in [vec!["--max-ranges", "0"], vec!["--marker", "garbage"]] {
        let mut args = vec!["snapshot", "diff", "s1", "s3", "--store", &s];
        args.extend(bad);
        let err = run_err(&args);
        assert!(
            err.contains("max-ranges") || err.contains("marker"),
            "{err}"
        );
    }
    // The JSON form of `disk create` from a source refuses a cipher as the others do.
    let req = serde_json::json!({"disk": {"create": {"name": "x", "source": "s1",
        "options": {"size": 0, "sku": "Standard_LRS", "cipher": "aes-256-xts", "diskEncryptionSet": null}}}});
    assert_eq!(command(&m, &req), Err(libc::EINVAL));
    assert!(!m.disk("x").exists());
    m.umount();
}

/// The fix text of a refused `disk update` is a command that works: run as given, the
/// update then succeeds.
#[test]
fn the_fix_for_an_update_of_a_disk_that_shares_keys_works() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    let kid = cmk_setup(&m, &[("c", "1M", "Premium_LRS")]);
    run_ok(&["des", "create", "set2", "--key-url", &kid, "--store", &s]);
    run_ok(&["key", "grant", "k1", "--des", "set2", "--store", &s]);
    rw(&m.disk("c")).write_all_at(&pattern(3, 4096), 0).unwrap();
    run_ok(&["snapshot", "create", "cs", "--source", "c", "--store", &s]);
    m.create("p", "1M");
    run_ok(&["snapshot", "create", "ps", "--source", "p", "--store", &s]);
    for (disk, args) in [
        (
            "p",
            vec![
                "--encryption-type",
                "EncryptionAtRestWithCustomerKey",
                "--disk-encryption-set",
                "set1",
            ],
        ),
        ("c", vec!["--disk-encryption-set", "set2"]),
    ] {
        let mut update = vec!["disk", "update", disk];
        update.extend(args.iter().copied());
        update.extend(["--store", &s]);
        let err = run_err(&update);
        let fix = err
            .split('\'')
            .find(|p| p.starts_with("diskvault "))
            .unwrap_or_else(|| panic!("no command in: {err}"));
        let words: Vec<&str> = fix.split_whitespace().skip(1).collect();
        let mut fix_args = words.clone();
        fix_args.extend(["--quiet", "--store", &s]);
        run_ok(&fix_args);
        run_ok(&update);
    }
    assert!(std::fs::read(m.mnt.join("snapshots/cs")).unwrap()[..4096] == pattern(3, 4096)[..]);
    m.umount();
}

/// After a kill -9 on a full store, the next mount still writes its daemon.json (the
/// metadata reserve is given up for it) instead of failing with a bare ENOSPC.
#[test]
fn a_full_store_mounts_again_after_a_kill() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&tmp.path().join("small"), "24M");
    let store = fs.0.join("store");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::attach(tmp.path(), &store, &mnt);
    m.create("d", "4M");
    rw(&m.disk("d"))
        .write_all_at(&pattern(5, 1 << 20), 0)
        .unwrap();
    let _filler = fs.fill();
    // Safe because: kill(2) takes no pointers.
    assert_eq!(unsafe { libc::kill(m.daemon_pid(), libc::SIGKILL) }, 0);
    m.reap_dead_daemon();
    m.mount();
    let mut buf = vec![0u8; 1 << 20];
    std::fs::File::open(m.disk("d"))
        .unwrap()
        .read_at(&mut buf, 0)
        .unwrap();
    assert!(buf == pattern(5, 1 << 20));
    m.umount();
    drop(fs);
}

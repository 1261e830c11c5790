//! Delta merge and space reclaim through a real mount: a kill -9 at every step of a
//! merge leaves every object byte-identical (through the mount and through the
//! independent decryptor), and the merge finishes at the next mount; a reclaim held
//! at a fault point holds up no unrelated read or create.

mod common;
#[path = "common/snap.rs"]
mod snap;

use common::*;
use snap::*;
use std::process::Command;

const MIB: usize = 1 << 20;

fn write_synced(m: &Mounted, disk: &str, off: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = rw(&m.disk(disk));
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

fn decrypt(store: &std::path::Path, kind: &str, name: &str, out: &std::path::Path) -> Vec<u8> {
    let o = Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/independent_decrypt.py"
        ))
        .args(["--kind", kind])
        .arg(store)
        .arg(name)
        .arg(out)
        .output()
        .expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

fn deltas(m: &Mounted, kind: &str, name: &str) -> u64 {
    show(m, kind, name)["deltas"].as_u64().unwrap()
}

fn daemon_dead(m: &Mounted) -> bool {
    matches!(
        std::fs::metadata(m.mnt.join(".vault/daemon.json")),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)
    )
}

/// d (2 MiB) with snapshots s1 and s2 over writes and a discard; deleting s1 leaves
/// its delta dead under s2's, and the merge that follows is killed at `fault`.
fn crash_case(fault: &str) {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "2M");
    let mut d = pattern(1, 2 * MIB);
    write_synced(&m, "d", 0, &d);
    run_ok(&["snapshot", "create", "s1", "--source", "d", "--store", &s]);
    let b = pattern(2, 300 << 10);
    write_synced(&m, "d", 512 << 10, &b);
    d[512 << 10..(512 << 10) + b.len()].copy_from_slice(&b);
    let f = rw(&m.disk("d"));
    // Safe because: the fd is open; fallocate takes no pointers.
    let r = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            1 << 20,
            64 << 10,
        )
    };
    assert_eq!(r, 0);
    f.sync_all().unwrap();
    drop(f);
    d[1 << 20..(1 << 20) + (64 << 10)].fill(0);
    run_ok(&["snapshot", "create", "s2", "--source", "d", "--store", &s]);
    let s2 = d.clone();
    let c = pattern(3, 100_000);
    write_synced(&m, "d", 7, &c);
    d[7..7 + c.len()].copy_from_slice(&c);
    m.umount();

    m.mount_with(&[], &[("DISKVAULT_FAULT", fault)]);
    run_ok(&["snapshot", "delete", "s1", "--store", &s]);
    assert!(
        Mounted::wait_for(std::time::Duration::from_secs(30), || daemon_dead(&m)).is_some(),
        "{fault}: the merge never reached the fault point"
    );
    m.reap_dead_daemon();
    let out = m.dir.path().join("plain");
    assert!(
        decrypt(&m.store, "disk", "d", &out) == d,
        "{fault}: d, decrypted after the crash"
    );
    assert!(
        decrypt(&m.store, "snapshot", "s2", &out) == s2,
        "{fault}: s2, decrypted after the crash"
    );
    m.mount();
    assert!(read_all(&m.disk("d")) == d, "{fault}: d after the crash");
    assert!(
        read_all(&m.mnt.join("snapshots/s2")) == s2,
        "{fault}: s2 after the crash"
    );
    settle_merges(&m);
    assert_eq!(
        deltas(&m, "snapshot", "s2"),
        1,
        "{fault}: s2's dead delta merged"
    );
    assert_eq!(deltas(&m, "disk", "d"), 2, "{fault}: d's stack");
    assert!(read_all(&m.disk("d")) == d, "{fault}: d after the merge");
    assert!(
        read_all(&m.mnt.join("snapshots/s2")) == s2,
        "{fault}: s2 after the merge"
    );
    m.umount();
    assert!(
        decrypt(&m.store, "snapshot", "s2", &out) == s2,
        "{fault}: s2, decrypted after the merge"
    );
    assert!(
        decrypt(&m.store, "disk", "d", &out) == d,
        "{fault}: d, decrypted after the merge"
    );
    let left: Vec<_> = std::fs::read_dir(m.store.join("deltas"))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.ends_with(".whiteouts") && !n.starts_with('.'))
        .collect();
    assert_eq!(left.len(), 2, "{fault}: deltas left {left:?}");
}

#[test]
fn crash_while_a_merge_copies() {
    crash_case("merge.step=1");
}

#[test]
fn crash_after_a_merge_copied() {
    crash_case("merge.copied=1");
}

#[test]
fn crash_between_the_holders_commits() {
    // The second holder's commit: the first already dropped the delta.
    crash_case("merge.commit=2");
}

#[test]
fn crash_before_the_merged_delta_is_removed() {
    crash_case("merge.dropped=1");
}

/// A reclaim held at a fault point (after the delete committed) holds up neither a
/// read of an unrelated disk nor a disk create.
#[test]
fn a_held_reclaim_blocks_no_read_and_no_create() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "4M");
    m.create("other", "1M");
    write_synced(&m, "d", 0, &pattern(1, 4 * MIB));
    write_synced(&m, "other", 0, &pattern(2, MIB));
    run_ok(&["snapshot", "create", "s1", "--source", "d", "--store", &s]);
    write_synced(&m, "d", 0, &pattern(3, 4 * MIB));
    m.umount();
    let hold = m.dir.path().join("hold");
    std::fs::File::create(&hold).unwrap();
    let fault = format!("gc.punching=1:wait-while={}", hold.display());
    m.mount_with(&[], &[("DISKVAULT_FAULT", &fault)]);
    // The delete returns once it has committed; the reclaim runs behind it.
    run_ok(&["snapshot", "delete", "s1", "--store", &s]);
    // The reclaim reaches the held point: the daemon log says so.
    let log = m.store.join("daemon.log");
    assert!(
        Mounted::wait_for(std::time::Duration::from_secs(20), || {
            std::fs::read_to_string(&log).is_ok_and(|t| t.contains("holding gc.punching"))
        })
        .is_some(),
        "the reclaim never reached gc.punching"
    );
    // With the reclaim held: a read of another disk and a create both complete.
    let got = read_all(&m.disk("other"));
    assert!(got == pattern(2, MIB), "the unrelated read");
    run_ok(&["disk", "create", "new", "--size", "1M", "--store", &s]);
    run_ok(&[
        "snapshot", "create", "s2", "--source", "other", "--store", &s,
    ]);
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/merges.json")).unwrap()).unwrap();
    assert_eq!(v["running"], true, "the reclaim was let go early: {v}");
    let before = store_data_bytes(&m.store);
    std::fs::remove_file(&hold).unwrap();
    settle_merges(&m);
    assert!(
        store_data_bytes(&m.store) < before,
        "the held reclaim freed nothing"
    );
    m.umount();
}

/// Dead deltas left by deletes made without a daemon (as an older version left them)
/// are merged after the next mount.
#[test]
fn dead_deltas_left_without_a_daemon_are_merged_after_the_next_mount() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "2M");
    let mut want = vec![0u8; 2 * MIB];
    for i in 0..20u64 {
        let off = (i as usize * 97 * 1024) % (2 * MIB - 8192);
        let data = pattern(i, 8192 + i as usize);
        write_synced(&m, "d", off as u64, &data);
        want[off..off + data.len()].copy_from_slice(&data);
        run_ok(&[
            "snapshot",
            "create",
            &format!("s{i:02}"),
            "--source",
            "d",
            "--store",
            &s,
        ]);
    }
    let last = want.clone();
    m.umount();
    for i in 0..19 {
        run_ok(&["snapshot", "delete", &format!("s{i:02}"), "--store", &s]);
    }
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["disk", "show", "d", "--store", &s])).unwrap();
    assert_eq!(v["deltas"], 21, "no merge without a daemon");
    m.mount();
    settle_merges(&m);
    assert_eq!(deltas(&m, "disk", "d"), 2, "merged after the mount");
    assert_eq!(deltas(&m, "snapshot", "s19"), 1);
    assert!(read_all(&m.disk("d")) == want, "d after the merges");
    assert!(
        read_all(&m.mnt.join("snapshots/s19")) == last,
        "s19 after the merges"
    );
    m.umount();
}

/// A full snapshot's copy killed at each step: after a remount it is made again,
/// and the snapshot reads the same throughout, through the mount and the decryptor.
#[test]
fn crash_during_a_full_copy() {
    for fault in [
        "fullcopy.step=1",
        "fullcopy.copied=1",
        "fullcopy.committed=1",
    ] {
        let mut m = Mounted::new();
        let s = m.s().to_string();
        m.create("d", "2M");
        let want = pattern(7, 2 * MIB);
        write_synced(&m, "d", 0, &want);
        m.umount();
        m.mount_with(&[], &[("DISKVAULT_FAULT", fault)]);
        run_ok(&[
            "snapshot",
            "create",
            "f",
            "--source",
            "d",
            "--incremental",
            "false",
            "--store",
            &s,
        ]);
        assert!(
            Mounted::wait_for(std::time::Duration::from_secs(30), || daemon_dead(&m)).is_some(),
            "{fault}: the copy never reached the fault point"
        );
        m.reap_dead_daemon();
        let out = m.dir.path().join("plain");
        assert!(
            decrypt(&m.store, "snapshot", "f", &out) == want,
            "{fault}: decrypted after the crash"
        );
        m.mount();
        assert!(
            read_all(&m.mnt.join("snapshots/f")) == want,
            "{fault}: after the crash"
        );
        settle_merges(&m);
        let v = show(&m, "snapshot", "f");
        assert_eq!(v["completionPercent"], 100, "{fault}: {v}");
        assert_eq!(v["deltas"], 1, "{fault}: {v}");
        run_ok(&["disk", "delete", "d", "--store", &s]);
        settle_merges(&m);
        assert!(
            read_all(&m.mnt.join("snapshots/f")) == want,
            "{fault}: without its source"
        );
        m.umount();
        assert!(
            decrypt(&m.store, "snapshot", "f", &out) == want,
            "{fault}: decrypted at the end"
        );
    }
}

/// On a nearly full store a merge, whose copies take space before the merged delta's
/// is freed, waits instead of filling the store; it runs once there is room.
#[test]
fn a_merge_waits_for_room_instead_of_filling_the_store() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&tmp.path().join("small"), "40M");
    let store = fs.0.join("store");
    let mnt = tmp.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::attach(tmp.path(), &store, &mnt);
    let s = m.s().to_string();
    m.create("e", "16M");
    let data = pattern(3, 16 * MIB);
    write_synced(&m, "e", 0, &data);
    run_ok(&["snapshot", "create", "se1", "--source", "e", "--store", &s]);
    write_synced(&m, "e", 5 * 4096, &pattern(4, 4096));
    run_ok(&["snapshot", "create", "se2", "--source", "e", "--store", &s]);
    let se2 = read_all(&m.mnt.join("snapshots/se2"));
    let filler = fs.fill();
    // Deleting se1 would merge its 16 MiB up into se2's delta: no room for that.
    run_ok(&["snapshot", "delete", "se1", "--store", &s]);
    let merges = || -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/merges.json")).unwrap()).unwrap()
    };
    assert!(
        Mounted::wait_for(std::time::Duration::from_secs(30), || merges()["lastError"]
            .as_str()
            .is_some_and(|e| e.contains("not enough free space")))
        .is_some(),
        "the merge did not say it waits for room: {}",
        merges()
    );
    assert_eq!(merges()["pending"], 1);
    std::fs::remove_file(&filler).unwrap();
    settle_merges(&m);
    assert_eq!(merges()["lastError"], serde_json::Value::Null);
    assert_eq!(deltas(&m, "snapshot", "se2"), 1);
    assert!(read_all(&m.mnt.join("snapshots/se2")) == se2);
    m.umount();
    drop(fs);
}

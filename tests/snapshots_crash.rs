//! Snapshots, images and disks made from them survive kill -9 (issue 10): a crash at
//! every fault point on the snapshot and clone paths leaves every object readable
//! with exactly its content, a new object either complete or absent, and no
//! leftovers in the store; and a seeded random mix of writes, discards, snapshots,
//! images, clones, deletes and kills matches an in-memory model. All on real mounts.
//!
//! The model test reads its seed from DISKVAULT_SEED (decimal or 0x-hex) and prints
//! it, with every step, when it fails; DISKVAULT_CHECK_EVERY_STEP=1 makes it compare
//! everything after every step, to find the first step that goes wrong.

mod common;
#[path = "common/snap.rs"]
mod snap;

use common::*;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MIB: usize = 1 << 20;

/// The kinds of objects, by their directory in the mount and in the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Disk,
    Snapshot,
    Image,
}

impl Kind {
    const ALL: [Kind; 3] = [Kind::Disk, Kind::Snapshot, Kind::Image];

    fn dir(self) -> &'static str {
        match self {
            Kind::Disk => "disks",
            Kind::Snapshot => "snapshots",
            Kind::Image => "images",
        }
    }

    fn noun(self) -> &'static str {
        match self {
            Kind::Disk => "disk",
            Kind::Snapshot => "snapshot",
            Kind::Image => "image",
        }
    }
}

/// Every object's bytes, by kind and name.
type Model = BTreeMap<(Kind, String), Vec<u8>>;

fn obj_path(m: &Mounted, kind: Kind, name: &str) -> std::path::PathBuf {
    m.mnt.join(kind.dir()).join(name)
}

/// Writes `data` at `off` of a disk and fsyncs it before returning.
fn write_synced(m: &Mounted, disk: &str, off: u64, data: &[u8]) {
    let f = rw(&m.disk(disk));
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

/// Punches (FALLOC_FL_PUNCH_HOLE) `len` bytes at `off` of a disk, then fsyncs.
fn punch_synced(m: &Mounted, disk: &str, off: u64, len: u64) {
    let f = rw(&m.disk(disk));
    // Safe because: the fd is open for the duration of the call; no pointers.
    let r = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as i64,
            len as i64,
        )
    };
    assert_eq!(
        r,
        0,
        "punch {disk} {off}+{len}: {}",
        std::io::Error::last_os_error()
    );
    f.sync_all().unwrap();
}

fn zero(v: &mut [u8], off: usize, len: usize) {
    let end = (off + len).min(v.len());
    v[off.min(end)..end].fill(0);
}

fn splice(v: &mut [u8], off: usize, data: &[u8]) {
    v[off..off + data.len()].copy_from_slice(data);
}

/// The names in MOUNT/KIND.
fn listed(m: &Mounted, kind: Kind) -> BTreeSet<String> {
    std::fs::read_dir(m.mnt.join(kind.dir()))
        .unwrap_or_else(|e| panic!("ls {}: {e}", kind.dir()))
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect()
}

/// Where two byte strings first differ, for messages.
fn first_diff(a: &[u8], b: &[u8]) -> String {
    if a.len() != b.len() {
        return format!("length {} != expected {}", a.len(), b.len());
    }
    let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap();
    format!(
        "first difference at byte {i} (unit {}): {:#04x} != expected {:#04x}",
        i / 4096,
        a[i],
        b[i]
    )
}

/// An object's full content through the mount equals `want`.
fn check_content(m: &Mounted, kind: Kind, name: &str, want: &[u8], ctx: &str) {
    let got = std::fs::read(obj_path(m, kind, name))
        .unwrap_or_else(|e| panic!("{ctx}: reading {} {name}: {e}", kind.noun()));
    assert!(
        got == want,
        "{ctx}: {} {name}: {}",
        kind.noun(),
        first_diff(&got, want)
    );
}

/// The mount lists exactly the model's objects, each with exactly its bytes.
fn check_model(m: &Mounted, model: &Model, ctx: &str) {
    for kind in Kind::ALL {
        let want: BTreeSet<String> = model
            .keys()
            .filter(|(k, _)| *k == kind)
            .map(|(_, n)| n.clone())
            .collect();
        assert_eq!(listed(m, kind), want, "{ctx}: ls {}", kind.dir());
    }
    for ((kind, name), bytes) in model {
        check_content(m, *kind, name, bytes, ctx);
    }
}

/// `check_store_files` once the daemon's background work (space reclaim and delta
/// merges, which change the store's files) is done.
fn check_settled(m: &Mounted, ctx: &str) {
    snap::settle_merges(m);
    check_store_files(&m.store, ctx);
}

/// The store's own files: no interrupted create or delete left behind, every delta
/// an object names exists, and every file in STORE/deltas belongs to an object's
/// stack (only `.gc` bookkeeping besides).
fn check_store_files(store: &Path, ctx: &str) {
    let mut used = BTreeSet::new();
    for kind in Kind::ALL {
        let dir = store.join(kind.dir());
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            assert!(
                !name.ends_with(".creating") && !name.ends_with(".deleted"),
                "{ctx}: leftover {}",
                e.path().display()
            );
            if !e.path().is_dir() {
                continue;
            }
            let meta: Value =
                serde_json::from_slice(&std::fs::read(e.path().join("meta.json")).unwrap())
                    .unwrap();
            let stack: Vec<String> = meta["stack"]
                .as_array()
                .map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect())
                .unwrap_or_default();
            if stack.is_empty() {
                assert_eq!(
                    kind,
                    Kind::Disk,
                    "{ctx}: {} without a stack",
                    e.path().display()
                );
                assert!(
                    e.path().join("data").is_file(),
                    "{ctx}: {} has neither a stack nor a data file",
                    e.path().display()
                );
            }
            for id in stack {
                assert!(
                    store.join("deltas").join(&id).is_file(),
                    "{ctx}: {} names missing delta {id}",
                    e.path().display()
                );
                used.insert(id);
            }
        }
    }
    let Ok(entries) = std::fs::read_dir(store.join("deltas")) else {
        return;
    };
    for e in entries {
        let name = e.unwrap().file_name().into_string().unwrap();
        if name.starts_with('.') {
            continue;
        }
        let id = name.strip_suffix(".whiteouts").unwrap_or(&name);
        assert!(
            used.contains(id),
            "{ctx}: STORE/deltas/{name} belongs to no object"
        );
    }
}

/// Whether the daemon is gone (its mount answers ENOTCONN). Only asked after a
/// command failed, when a dead daemon has already closed its FUSE device.
fn daemon_dead(m: &Mounted) -> bool {
    matches!(
        std::fs::metadata(m.mnt.join(".vault/daemon.json")),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN)
    )
}

// ---------------------------------------------------------------------------------
// Part 1: a crash at every step.
// ---------------------------------------------------------------------------------

/// The command cut short by the crash.
#[derive(Clone, Copy, Debug)]
enum Op {
    /// `snapshot create new --source d`
    Snapshot,
    /// `image create new --source d`
    Image,
    /// `disk create new --source d`
    CloneDisk,
    /// `disk create new --source d --size 3M`
    CloneDiskBigger,
    /// `disk create new --source s0`
    CloneSnapshot,
    /// `disk create new --source s0 --size 3M`
    CloneSnapshotBigger,
    /// `disk create new --source i0`
    CloneImage,
}

impl Op {
    fn kind(self) -> Kind {
        match self {
            Op::Snapshot => Kind::Snapshot,
            Op::Image => Kind::Image,
            _ => Kind::Disk,
        }
    }

    fn args(self, s: &str) -> Vec<String> {
        let v: &[&str] = match self {
            Op::Snapshot => &["snapshot", "create", "new", "--source", "d"],
            Op::Image => &["image", "create", "new", "--source", "d"],
            Op::CloneDisk => &["disk", "create", "new", "--source", "d"],
            Op::CloneDiskBigger => &["disk", "create", "new", "--source", "d", "--size", "3M"],
            Op::CloneSnapshot => &["disk", "create", "new", "--source", "s0"],
            Op::CloneSnapshotBigger => &["disk", "create", "new", "--source", "s0", "--size", "3M"],
            Op::CloneImage => &["disk", "create", "new", "--source", "i0"],
        };
        let mut v: Vec<String> = v.iter().map(|s| s.to_string()).collect();
        v.extend(["--store".to_string(), s.to_string()]);
        v
    }

    /// What the new object holds, given the model before the command.
    fn expected(self, model: &Model) -> Vec<u8> {
        let get = |k: Kind, n: &str| model[&(k, n.to_string())].clone();
        let mut v = match self {
            Op::Snapshot | Op::Image | Op::CloneDisk | Op::CloneDiskBigger => get(Kind::Disk, "d"),
            Op::CloneSnapshot | Op::CloneSnapshotBigger => get(Kind::Snapshot, "s0"),
            Op::CloneImage => get(Kind::Image, "i0"),
        };
        if matches!(self, Op::CloneDiskBigger | Op::CloneSnapshotBigger) {
            v.resize(3 * MIB, 0);
        }
        v
    }
}

fn run_strings(args: &[String]) -> std::process::Output {
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    run(&a)
}

/// Disk `d` (2 MiB) full of data; with `prior`, snapshot `s0` and image `i0` of it
/// and then some of `d` overwritten, so `d` is layered and shares deltas already.
/// Then the store is mounted with `fault`, `d` is written and punched (fsynced) and
/// `op` is run, which the fault kills. After a remount without the fault, every
/// object holds its content and the new one is complete or absent, with no leftover
/// in the store; then `op` succeeds, and the result stays put while `d` changes.
fn crash_case(fault: &str, prior: bool, op: Op) {
    let ctx = format!("{fault} prior={prior} {op:?}");
    let mut m = Mounted::new();
    let s = m.s().to_string();
    let mut model = Model::new();
    m.create("d", "2M");
    let mut d = pattern(1, 2 * MIB);
    write_synced(&m, "d", 0, &d);
    if prior {
        run_ok(&["snapshot", "create", "s0", "--source", "d", "--store", &s]);
        run_ok(&["image", "create", "i0", "--source", "d", "--store", &s]);
        model.insert((Kind::Snapshot, "s0".into()), d.clone());
        model.insert((Kind::Image, "i0".into()), d.clone());
        let b = pattern(2, 300 << 10);
        write_synced(&m, "d", 512 << 10, &b);
        splice(&mut d, 512 << 10, &b);
    }
    m.umount();

    m.mount_with(&[], &[("DISKVAULT_FAULT", fault)]);
    // Known data written under the daemon that is about to die: in the frozen delta
    // (and whiteouts over the lower one, with `prior`) when the cut happens.
    let c = pattern(3, 200_000);
    write_synced(&m, "d", 1_000_003, &c);
    splice(&mut d, 1_000_003, &c);
    punch_synced(&m, "d", 5 * 4096 + 100, 70_000);
    zero(&mut d, 5 * 4096 + 100, 70_000);
    // A hole punched across the old data of s0 (units shared with the snapshot).
    punch_synced(&m, "d", 600 << 10, 8192);
    zero(&mut d, 600 << 10, 8192);
    model.insert((Kind::Disk, "d".into()), d.clone());
    let want_new = op.expected(&model);

    let out = run_strings(&op.args(&s));
    assert!(
        !out.status.success(),
        "{ctx}: the fault point was not reached (the command succeeded)"
    );
    assert!(
        daemon_dead(&m),
        "{ctx}: the daemon survived: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    m.reap_dead_daemon();
    m.mount();
    check_settled(&m, &format!("{ctx}, after the crash"));
    let exists = listed(&m, op.kind()).contains("new");
    let mut after = model.clone();
    if exists {
        after.insert((op.kind(), "new".into()), want_new.clone());
    }
    check_model(
        &m,
        &after,
        &format!("{ctx}, after the crash (new exists: {exists})"),
    );
    if exists {
        run_ok(&[op.kind().noun(), "delete", "new", "--store", &s]);
    }

    // The same command now succeeds, with the same result.
    let out = run_strings(&op.args(&s));
    assert!(
        out.status.success(),
        "{ctx}: the retry failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    model.insert((op.kind(), "new".into()), want_new);
    check_model(&m, &model, &format!("{ctx}, after the retry"));
    // The copy is a point in time: later writes to d (and to the clone) stay apart.
    let e = pattern(4, 64 << 10);
    write_synced(&m, "d", 4096, &e);
    splice(model.get_mut(&(Kind::Disk, "d".into())).unwrap(), 4096, &e);
    if op.kind() == Kind::Disk {
        let f = pattern(5, 10_000);
        write_synced(&m, "new", 1_500_000, &f);
        splice(
            model.get_mut(&(Kind::Disk, "new".into())).unwrap(),
            1_500_000,
            &f,
        );
    }
    check_model(&m, &model, &format!("{ctx}, after writes"));
    m.umount();
    check_store_files(&m.store, &format!("{ctx}, after a clean unmount"));
    m.mount();
    check_model(&m, &model, &format!("{ctx}, after a remount"));
}

/// The first copy of a disk moves its data file into STORE/deltas: a crash once the
/// metadata names the delta, before the rename, is finished at the next mount.
#[test]
fn crash_while_a_disk_gets_its_first_delta() {
    for op in [Op::Snapshot, Op::Image, Op::CloneDisk, Op::CloneDiskBigger] {
        crash_case("layered.meta=1", false, op);
    }
}

/// A crash with the copy's metadata staged, before the disk's cut is committed.
#[test]
fn crash_after_the_copy_is_prepared() {
    for prior in [false, true] {
        for op in [Op::Snapshot, Op::Image, Op::CloneDisk] {
            crash_case("snapshot.prepared=1", prior, op);
        }
    }
}

/// A crash with the disk's new delta committed, before the copy is published.
#[test]
fn crash_after_the_cut_is_committed() {
    for prior in [false, true] {
        for op in [Op::Snapshot, Op::Image, Op::CloneDiskBigger] {
            crash_case("snapshot.committed=1", prior, op);
        }
    }
}

/// A crash just before the snapshot's or image's directory is renamed into place.
#[test]
fn crash_before_a_copy_is_published() {
    for prior in [false, true] {
        for op in [Op::Snapshot, Op::Image] {
            crash_case("snapshot.publish=1", prior, op);
        }
    }
}

/// A crash with a disk made from a source staged, before it is published.
#[test]
fn crash_before_a_clone_is_published() {
    for op in [
        Op::CloneDisk,
        Op::CloneDiskBigger,
        Op::CloneSnapshot,
        Op::CloneSnapshotBigger,
        Op::CloneImage,
    ] {
        crash_case("clone.staged=1", true, op);
    }
}

/// The store directory of an object, by kind and name (from its metadata).
fn obj_dir(store: &Path, kind: Kind, name: &str) -> std::path::PathBuf {
    for e in std::fs::read_dir(store.join(kind.dir())).unwrap() {
        let p = e.unwrap().path();
        let Ok(bytes) = std::fs::read(p.join("meta.json")) else {
            continue;
        };
        let meta: Value = serde_json::from_slice(&bytes).unwrap();
        if meta["name"] == name {
            return p;
        }
    }
    panic!("no {} named {name} in the store", kind.noun());
}

/// A delete has no fault points, so the states a kill -9 would leave at each of its
/// steps are made by hand on the unmounted store: (1) the deltas it may free recorded
/// in STORE/deltas/.gc, nothing else done; (2) also the object's directory renamed
/// to ID.deleted; (3) also that directory removed. At the next mount the object is
/// intact (1) or gone (2, 3), every other object holds its content, and nothing is
/// left behind.
#[test]
fn crash_at_each_step_of_a_delete() {
    for victim in [
        (Kind::Snapshot, "s1"),
        (Kind::Disk, "d"),
        (Kind::Image, "i1"),
    ] {
        for step in 1..=3 {
            let ctx = format!("delete {} {} cut at step {step}", victim.0.noun(), victim.1);
            let mut m = Mounted::new();
            let s = m.s().to_string();
            let mut model = Model::new();
            m.create("d", "2M");
            let mut d = pattern(11, 2 * MIB);
            write_synced(&m, "d", 0, &d);
            run_ok(&["snapshot", "create", "s1", "--source", "d", "--store", &s]);
            model.insert((Kind::Snapshot, "s1".into()), d.clone());
            let b = pattern(12, 256 << 10);
            write_synced(&m, "d", 256 << 10, &b);
            splice(&mut d, 256 << 10, &b);
            punch_synced(&m, "d", 1 << 20, 64 << 10);
            zero(&mut d, 1 << 20, 64 << 10);
            run_ok(&["snapshot", "create", "s2", "--source", "d", "--store", &s]);
            model.insert((Kind::Snapshot, "s2".into()), d.clone());
            run_ok(&["image", "create", "i1", "--source", "s1", "--store", &s]);
            model.insert(
                (Kind::Image, "i1".into()),
                model[&(Kind::Snapshot, "s1".into())].clone(),
            );
            run_ok(&["disk", "create", "c1", "--source", "s1", "--store", &s]);
            model.insert(
                (Kind::Disk, "c1".into()),
                model[&(Kind::Snapshot, "s1".into())].clone(),
            );
            let c = pattern(13, 100 << 10);
            write_synced(&m, "d", 0, &c);
            splice(&mut d, 0, &c);
            model.insert((Kind::Disk, "d".into()), d);
            m.umount();

            let dir = obj_dir(&m.store, victim.0, victim.1);
            let meta: Value =
                serde_json::from_slice(&std::fs::read(dir.join("meta.json")).unwrap()).unwrap();
            let stack: Vec<String> = meta["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap().to_string())
                .collect();
            std::fs::write(m.store.join("deltas/.gc"), stack.join("\n") + "\n").unwrap();
            if step >= 2 {
                let doomed = dir.with_file_name(format!(
                    "{}.deleted",
                    dir.file_name().unwrap().to_str().unwrap()
                ));
                std::fs::rename(&dir, &doomed).unwrap();
                if step == 3 {
                    std::fs::remove_dir_all(&doomed).unwrap();
                }
                model.remove(&(victim.0, victim.1.to_string()));
            }
            m.mount();
            check_settled(&m, &ctx);
            check_model(&m, &model, &ctx);
            assert!(
                !m.store.join("deltas/.gc").exists(),
                "{ctx}: the pending reclaim was not finished"
            );
            // Deleting (again) works, and the rest stays intact.
            let key = (victim.0, victim.1.to_string());
            if model.remove(&key).is_some() {
                run_ok(&[victim.0.noun(), "delete", victim.1, "--store", &s]);
            }
            check_model(&m, &model, &format!("{ctx}, after deleting it"));
            m.umount();
            check_store_files(&m.store, &format!("{ctx}, after deleting it"));
        }
    }
}

/// A re-encrypting copy (a platform-key source to a customer-key disk) has no fault
/// point; it is killed while it fills its staging disk `.NAME.copying`. After the
/// remount the new disk is absent or complete, no staging disk is left, and the copy
/// can be made again.
#[test]
fn kill_during_a_re_encrypting_copy() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[]);
    m.create("p", "32M");
    let data = pattern(21, 32 * MIB);
    write_synced(&m, "p", 0, &data);
    let args = [
        "disk",
        "create",
        "c",
        "--source",
        "p",
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ];
    let mut child = std::process::Command::new(bin())
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staging = m.disk(".c.copying");
    let mut exited = None;
    Mounted::wait_for(std::time::Duration::from_secs(20), || {
        exited = child.try_wait().unwrap();
        exited.is_some() || staging.exists()
    })
    .expect("the copy starts");
    assert!(
        exited.is_none(),
        "the copy finished before it could be interrupted; make the source bigger"
    );
    let pid = m.daemon_pid();
    // Safe because: kill(2) takes no pointers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    m.reap_dead_daemon();
    m.mount();
    let ctx = "after a kill during a re-encrypting copy";
    check_settled(&m, ctx);
    let mut model = Model::new();
    model.insert((Kind::Disk, "p".into()), data.clone());
    if listed(&m, Kind::Disk).contains("c") {
        model.insert((Kind::Disk, "c".into()), data.clone());
    }
    check_model(&m, &model, ctx);
    model.remove(&(Kind::Disk, "c".into()));
    if listed(&m, Kind::Disk).contains("c") {
        run_ok(&["disk", "delete", "c", "--store", &s]);
    }
    run_ok(&args);
    model.insert((Kind::Disk, "c".into()), data);
    check_model(&m, &model, "after the copy was made again");
    let show: Value = serde_json::from_str(&run_ok(&["disk", "show", "c", "--store", &s])).unwrap();
    assert!(
        show["encryption"]["diskEncryptionSetId"]
            .as_str()
            .is_some_and(|id| id.ends_with("set1")),
        "{show}"
    );
}

/// The clean-up of interrupted re-encrypting copies at mount must not take a disk
/// the user made: a disk named like a staging copy (`.NAME.copying`, a legal
/// temporary name) is either refused at creation or kept, with its data, across a
/// remount.
#[test]
fn a_disk_named_like_a_staging_copy_survives_a_remount() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    let out = run(&[
        "disk",
        "create",
        ".mine.copying",
        "--size",
        "1M",
        "--store",
        &s,
    ]);
    if !out.status.success() {
        return; // The name is reserved: fine.
    }
    let data = pattern(41, 8192);
    write_synced(&m, ".mine.copying", 0, &data);
    m.umount();
    m.mount();
    let mut model = Model::new();
    let mut want = data;
    want.resize(MIB, 0);
    model.insert((Kind::Disk, ".mine.copying".into()), want);
    check_model(
        &m,
        &model,
        "a user's disk named .mine.copying after a remount",
    );
}

/// Found by the model test: a snapshot or image deleted through the CLI must leave
/// the mount at once, like a disk; one created again under its name must open at
/// once, not fail with ENOENT while the kernel's cached entry for the deleted one
/// lives.
#[test]
fn a_copy_deleted_by_the_cli_and_made_again_opens_at_once() {
    let m = Mounted::new();
    let s = m.s().to_string();
    m.create("d", "1M");
    for kind in [Kind::Snapshot, Kind::Image] {
        let old = pattern(31, 4096);
        write_synced(&m, "d", 0, &old);
        run_ok(&[kind.noun(), "create", "x", "--source", "d", "--store", &s]);
        let path = obj_path(&m, kind, "x");
        assert_eq!(read_at(&std::fs::File::open(&path).unwrap(), 0, 4096), old);
        run_ok(&[kind.noun(), "delete", "x", "--store", &s]);
        let gone = std::fs::File::open(&path)
            .err()
            .and_then(|e| e.raw_os_error());
        assert_eq!(
            gone,
            Some(libc::ENOENT),
            "{} x after its delete",
            kind.noun()
        );
        let new = pattern(32, 4096);
        write_synced(&m, "d", 0, &new);
        run_ok(&[kind.noun(), "create", "x", "--source", "d", "--store", &s]);
        let f = std::fs::File::open(&path)
            .unwrap_or_else(|e| panic!("opening the new {} x: {e}", kind.noun()));
        assert_eq!(read_at(&f, 0, 4096), new, "{} x made again", kind.noun());
    }
}

// ---------------------------------------------------------------------------------
// Part 2: a seeded random model test with kills.
// ---------------------------------------------------------------------------------

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len() as u64) as usize]
    }
}

/// The seed in DISKVAULT_SEED, or a few fixed ones.
fn seeds() -> Vec<u64> {
    match std::env::var("DISKVAULT_SEED") {
        Ok(s) => {
            let s = s.trim();
            vec![match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .unwrap_or_else(|e| panic!("DISKVAULT_SEED={s}: {e}"))]
        }
        Err(_) => (0..4).map(|i| 0x5eed_0010 + i).collect(),
    }
}

/// Prints the seed when the test fails, so the run can be repeated.
struct SeedGuard(u64);

impl Drop for SeedGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "snapshot model test failed with seed {0} (rerun with DISKVAULT_SEED={0})",
                self.0
            );
        }
    }
}

/// Fault points on the copy paths a remount may arm.
const POINTS: [&str; 5] = [
    "layered.meta",
    "snapshot.prepared",
    "snapshot.committed",
    "snapshot.publish",
    "clone.staged",
];

/// Mounts, arming a fault point most of the time so that a later command dies there.
fn mount_maybe_armed(m: &mut Mounted, rng: &mut Rng) {
    if rng.below(10) < 7 {
        let fault = format!("{}={}", rng.pick(&POINTS), 1 + rng.below(3));
        eprintln!("  mount with DISKVAULT_FAULT={fault}");
        m.mount_with(&[], &[("DISKVAULT_FAULT", &fault)]);
    } else {
        eprintln!("  mount");
        m.mount();
    }
}

/// After a crash: remount, then everything must match the model and the store hold
/// no leftovers.
fn recover(m: &mut Mounted, rng: &mut Rng, model: &Model, ctx: &str) {
    m.reap_dead_daemon();
    mount_maybe_armed(m, rng);
    check_settled(m, ctx);
    check_model(m, model, ctx);
}

/// A seeded random mix of fsynced writes, punched holes, snapshots, images, disks
/// made from any object (sometimes bigger), deletes (CLI or rm) and kill -9 (between
/// steps, and inside snapshot and clone commands through fault points) matches a
/// model of every object's bytes. A command a kill cut short may have happened or
/// not, but if its object exists it holds exactly the source's content at the
/// command.
#[test]
fn random_snapshots_clones_deletes_and_kills_match_a_model() {
    for seed in seeds() {
        model_run(seed);
    }
}

fn model_run(seed: u64) {
    let _guard = SeedGuard(seed);
    eprintln!("seed {seed}");
    let mut rng = Rng(seed);
    let mut m = Mounted::new();
    let s = m.s().to_string();
    let mut model = Model::new();
    let mut counter = 0u32;
    // Names deleted earlier, reused sometimes (a new object under an old name).
    let mut deleted: Vec<(Kind, String)> = Vec::new();
    let (mut kills, mut crashes) = (0, 0);
    const STEPS: usize = 100;

    for step in 0..STEPS {
        let ctx = format!("seed {seed} step {step}");
        let names = |k: Kind| -> Vec<String> {
            model
                .keys()
                .filter(|(kk, _)| *kk == k)
                .map(|(_, n)| n.clone())
                .collect()
        };
        let disks = names(Kind::Disk);
        let mut fresh_name = |kind: Kind, rng: &mut Rng| -> String {
            if rng.below(5) == 0 {
                if let Some(i) = deleted.iter().position(|(k, _)| *k == kind) {
                    return deleted.remove(i).1;
                }
            }
            counter += 1;
            format!("{}{counter}", &kind.noun()[..1])
        };
        let mut r = rng.below(100);
        if disks.is_empty() {
            r = 70; // create a disk
        } else if model.len() >= 12 && r < 75 {
            r = 75; // delete something
        }
        match r {
            // pwrite, fsynced.
            0..=29 => {
                let d = rng.pick(&disks).clone();
                let size = model[&(Kind::Disk, d.clone())].len() as u64;
                let off = rng.below(size);
                let len = 1 + rng.below((size - off).min(256 << 10));
                let data = pattern(rng.next(), len as usize);
                eprintln!("{step}: write {d} {off}+{len}");
                write_synced(&m, &d, off, &data);
                splice(
                    model.get_mut(&(Kind::Disk, d)).unwrap(),
                    off as usize,
                    &data,
                );
            }
            // A punched hole, fsynced.
            30..=37 => {
                let d = rng.pick(&disks).clone();
                let size = model[&(Kind::Disk, d.clone())].len() as u64;
                let off = rng.below(size);
                let len = 1 + rng.below((size - off).min(512 << 10));
                eprintln!("{step}: punch {d} {off}+{len}");
                punch_synced(&m, &d, off, len);
                zero(
                    model.get_mut(&(Kind::Disk, d)).unwrap(),
                    off as usize,
                    len as usize,
                );
            }
            // snapshot create / image create / disk create --source.
            38..=69 => {
                let (kind, sources): (Kind, Vec<Kind>) = match r {
                    38..=51 => (Kind::Snapshot, vec![Kind::Disk, Kind::Snapshot]),
                    52..=58 => (Kind::Image, vec![Kind::Disk, Kind::Snapshot]),
                    _ => (Kind::Disk, vec![Kind::Disk, Kind::Snapshot, Kind::Image]),
                };
                let candidates: Vec<(Kind, String)> = model
                    .keys()
                    .filter(|(k, _)| sources.contains(k))
                    .cloned()
                    .collect();
                let src = rng.pick(&candidates).clone();
                let name = fresh_name(kind, &mut rng);
                let mut want = model[&src].clone();
                let mut args = vec![
                    kind.noun().to_string(),
                    "create".into(),
                    name.clone(),
                    "--source".into(),
                    src.1.clone(),
                ];
                if kind == Kind::Disk && rng.below(3) == 0 {
                    let bigger = want.len() / MIB + 1 + rng.below(2) as usize;
                    args.extend(["--size".into(), format!("{bigger}M")]);
                    want.resize(bigger * MIB, 0);
                }
                args.extend(["--store".into(), s.clone()]);
                eprintln!("{step}: {}", args[..args.len() - 2].join(" "));
                let out = run_strings(&args);
                if out.status.success() {
                    model.insert((kind, name), want);
                } else {
                    assert!(
                        daemon_dead(&m),
                        "{ctx}: {args:?} failed: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    crashes += 1;
                    eprintln!("  the daemon died in the command");
                    m.reap_dead_daemon();
                    mount_maybe_armed(&mut m, &mut rng);
                    // Done or not, but if done, completely.
                    let exists = listed(&m, kind).contains(&name);
                    eprintln!("  {} {name} exists after the crash: {exists}", kind.noun());
                    if exists {
                        model.insert((kind, name), want);
                    } else {
                        deleted.push((kind, name));
                    }
                    let ctx = format!("{ctx}, after a crash in {}", args[..5].join(" "));
                    check_settled(&m, &ctx);
                    check_model(&m, &model, &ctx);
                }
            }
            // A plain new disk, 1-4 MiB.
            70..=74 => {
                let name = fresh_name(Kind::Disk, &mut rng);
                let mib = 1 + rng.below(4) as usize;
                eprintln!("{step}: disk create {name} --size {mib}M");
                m.create(&name, &format!("{mib}M"));
                model.insert((Kind::Disk, name), vec![0; mib * MIB]);
            }
            // Delete anything, by the CLI or by rm in the mount.
            75..=89 => {
                let keys: Vec<(Kind, String)> = model.keys().cloned().collect();
                let (kind, name) = rng.pick(&keys).clone();
                if rng.below(2) == 0 {
                    eprintln!("{step}: {} delete {name}", kind.noun());
                    run_ok(&[kind.noun(), "delete", &name, "--store", &s]);
                } else {
                    eprintln!("{step}: rm {}/{name}", kind.dir());
                    std::fs::remove_file(obj_path(&m, kind, &name))
                        .unwrap_or_else(|e| panic!("{ctx}: rm {}/{name}: {e}", kind.dir()));
                }
                model.remove(&(kind, name.clone()));
                deleted.push((kind, name));
            }
            // kill -9 between steps.
            90..=94 => {
                eprintln!("{step}: kill -9 the daemon");
                kills += 1;
                let pid = m.daemon_pid();
                // Safe because: kill(2) takes no pointers.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
                recover(&mut m, &mut rng, &model, &format!("{ctx}, after kill -9"));
            }
            _ => {
                eprintln!("{step}: check");
                check_model(&m, &model, &ctx);
            }
        }
        if step % 10 == 9 || std::env::var("DISKVAULT_CHECK_EVERY_STEP").is_ok() {
            check_model(&m, &model, &format!("{ctx}, periodic check"));
        }
    }
    eprintln!("{kills} kills between steps, {crashes} crashes in commands");
    m.umount();
    m.mount();
    let ctx = format!("seed {seed}, final remount");
    check_settled(&m, &ctx);
    check_model(&m, &model, &ctx);
}

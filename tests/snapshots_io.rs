//! Snapshots on real mounts, with real tools: a point-in-time cut under a fio writer,
//! qemu-img and ext4 (fsck through a read-only loop device) on snapshot files, the
//! read-only file interface with SEEK_DATA/SEEK_HOLE, the space snapshots take and
//! free, disks made from snapshots, and snapshots of a store made by old code.

mod common;
#[path = "common/snap.rs"]
mod snap;

use common::*;
use snap::*;
use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const MIB: u64 = 1 << 20;
const BS: usize = 4096;

/// A background process killed (by its pid) and reaped on drop, so that a failing
/// test never leaves it holding a file on the mount.
struct Bg(Option<Child>);

impl Bg {
    fn wait(&mut self) -> std::process::Output {
        self.0.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A hash of each 4 KiB block.
fn block_hashes(data: &[u8]) -> Vec<u64> {
    use std::hash::{Hash, Hasher};
    data.chunks(BS)
        .map(|b| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            b.hash(&mut h);
            h.finish()
        })
        .collect()
}

/// Runs fio in `dir` (where it keeps its verify state files), which must succeed;
/// its output.
fn fio_ok(dir: &Path, args: &[String]) -> String {
    let out = Command::new("fio")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("fio is required");
    assert!(
        out.status.success(),
        "fio {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The number of reads and writes fio issued, from its `issued rwts: total=R,W` line.
fn fio_issued(out: &str) -> (u64, u64) {
    let line = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("issued rwts: total="))
        .unwrap_or_else(|| panic!("no 'issued rwts' in fio output:\n{out}"));
    let mut it = line.split(',').map(|n| n.parse::<u64>().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

/// Point in time under load. fio job A fills the disk with crc32c-verified blocks;
/// while job B rewrites every block in a seeded random order (logging the order), three
/// snapshots are taken. Each snapshot must be the disk after exactly the first K writes
/// of B for some K (no block of a later write, none of an earlier one missing, no torn
/// block), K no smaller than what the disk showed before the snapshot command and no
/// larger than what it showed after; fio verifies every snapshot's checksums and the
/// disk's final state.
#[test]
fn snapshots_are_point_in_time_under_a_fio_writer() {
    let m = Mounted::new();
    m.create("d", "16M");
    let disk = m.disk("d");
    let blocks = (16 * MIB) as usize / BS;
    let job = |name: &str, rw: &str, seed: u64| -> Vec<String> {
        vec![
            format!("--name={name}"),
            format!("--filename={}", disk.display()),
            format!("--rw={rw}"),
            "--bs=4k".into(),
            "--size=16M".into(),
            "--ioengine=psync".into(),
            "--iodepth=1".into(),
            "--verify=crc32c".into(),
            format!("--randseed={seed}"),
        ]
    };
    let with = |mut v: Vec<String>, extra: &[&str]| {
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let a = job("a", "write", 0x5a1);
    fio_ok(m.dir.path(), &with(a.clone(), &["--do_verify=0"]));
    let out = fio_ok(m.dir.path(), &with(a, &["--verify_only"]));
    assert_eq!(
        fio_issued(&out).0,
        blocks as u64,
        "fio verified job A:\n{out}"
    );
    let img_a = block_hashes(&read_all(&disk));

    let log = m.dir.path().join("b.iolog");
    let b = job("b", "randwrite", 0xb2);
    let mut writer = Bg(Some(
        Command::new("fio")
            .args(with(
                b.clone(),
                &[
                    "--do_verify=0",
                    "--rate=3m",
                    &format!("--write_iolog={}", log.display()),
                ],
            ))
            .current_dir(m.dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fio is required"),
    ));
    // B has started once its log names a write (fio flushes it in chunks).
    let started = Mounted::wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|s| s.contains(" write "))
    });
    assert!(started.is_some(), "fio job B never started writing");
    let mut scans = Vec::new();
    for i in 0..3 {
        let pre = block_hashes(&read_all(&disk));
        let v = snapshot(&m, &format!("s{i}"), "d");
        assert_eq!(
            arm_short(&v["creationData"]["sourceResourceId"]),
            "/diskvault/disks/d"
        );
        let post = block_hashes(&read_all(&disk));
        scans.push((pre, post));
    }
    let out = writer.wait();
    assert!(
        out.status.success(),
        "fio job B: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The disk against B's final state; B rewrote every block.
    let out = fio_ok(m.dir.path(), &with(b, &["--verify_only"]));
    assert_eq!(
        fio_issued(&out).0,
        blocks as u64,
        "fio verified job B:\n{out}"
    );
    let img_b = block_hashes(&read_all(&disk));
    assert!(img_a.iter().zip(&img_b).all(|(x, y)| x != y));
    // B's writes in order, each block once.
    let order: Vec<usize> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.get(2) == Some(&"write")).then(|| {
                assert_eq!(w[4], "4096", "{l}");
                w[3].parse::<usize>().unwrap() / BS
            })
        })
        .collect();
    assert_eq!(order.len(), blocks);
    assert_eq!(order.iter().collect::<HashSet<_>>().len(), blocks);

    let mut last_k = 0;
    let mut ks = Vec::new();
    for (i, (pre, post)) in scans.iter().enumerate() {
        let path = m.mnt.join("snapshots").join(format!("s{i}"));
        // fio checks every block's header and checksum (no torn block).
        let out = fio_ok(
            m.dir.path(),
            &[
                "--name=check".into(),
                format!("--filename={}", path.display()),
                "--rw=read".into(),
                "--bs=4k".into(),
                "--size=16M".into(),
                "--ioengine=psync".into(),
                "--verify=crc32c".into(),
            ],
        );
        assert_eq!(fio_issued(&out).0, blocks as u64, "{out}");
        let snap = block_hashes(&read_all(&path));
        let mut from_b = HashSet::new();
        for (n, h) in snap.iter().enumerate() {
            if *h == img_b[n] {
                from_b.insert(n);
            } else {
                assert_eq!(
                    *h, img_a[n],
                    "snapshot s{i} block {n} is neither A's nor B's"
                );
            }
        }
        let k = from_b.len();
        let prefix: HashSet<usize> = order[..k].iter().copied().collect();
        assert_eq!(
            from_b, prefix,
            "snapshot s{i} is not the disk after B's first {k} writes"
        );
        let seen_b = |scan: &[u64]| -> HashSet<usize> {
            (0..blocks).filter(|&n| scan[n] == img_b[n]).collect()
        };
        let (before, after) = (seen_b(pre), seen_b(post));
        assert!(
            before.is_subset(&from_b),
            "snapshot s{i} misses writes acknowledged before it was taken"
        );
        assert!(
            from_b.is_subset(&after),
            "snapshot s{i} has writes made after it was taken"
        );
        assert!(k >= last_k);
        last_k = k;
        ks.push(k);
    }
    assert!(
        ks[0] > 0 && ks[0] < blocks,
        "the first snapshot was not taken mid-run: {ks:?}"
    );
    // The disk kept its content across the snapshots.
    assert_eq!(block_hashes(&read_all(&disk)), img_b);
}

fn qemu(args: &[&str]) -> std::process::Output {
    tool_out("qemu-img", args)
}

fn qemu_ok(args: &[&str]) -> String {
    tool_ok("qemu-img", args)
}

/// qemu-img reads a snapshot file: info, convert to qcow2, compare, and back to raw.
#[test]
fn qemu_img_converts_and_compares_a_snapshot() {
    let m = Mounted::new();
    m.create("vm", "24M");
    let f = rw(&m.disk("vm"));
    let mut model = vec![0u8; 24 << 20];
    for (seed, off, len) in [
        (1u64, 0usize, 1 << 20),
        (2, 9 << 20, 5000),
        (3, (24 << 20) - 4096, 4096),
    ] {
        let p = pattern(seed, len);
        f.write_all_at(&p, off as u64).unwrap();
        model[off..off + len].copy_from_slice(&p);
    }
    snapshot(&m, "s", "vm");
    // The disk moves on; the snapshot must not.
    f.write_all_at(&pattern(4, 1 << 20), 0).unwrap();
    f.write_all_at(&pattern(5, 4096), 20 << 20).unwrap();
    drop(f);
    let snap = m.mnt.join("snapshots/s");
    let (s, d) = (snap.to_str().unwrap(), m.disk("vm"));
    let info: serde_json::Value =
        serde_json::from_str(&qemu_ok(&["info", "--output=json", "-f", "raw", s])).unwrap();
    assert_eq!(info["virtual-size"], 24 << 20);
    assert_eq!(info["format"], "raw");
    let q = m.dir.path().join("s.qcow2");
    let q = q.to_str().unwrap();
    qemu_ok(&["convert", "-f", "raw", "-O", "qcow2", s, q]);
    qemu_ok(&["compare", "-f", "qcow2", "-F", "raw", q, s]);
    // compare would notice a difference: the disk differs from its snapshot now.
    let out = qemu(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        q,
        d.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "compare with the changed disk");
    let qinfo: serde_json::Value =
        serde_json::from_str(&qemu_ok(&["info", "--output=json", q])).unwrap();
    assert_eq!(qinfo["format"], "qcow2");
    assert_eq!(qinfo["virtual-size"], 24 << 20);
    // Holes stayed holes in the qcow2: it holds about the 1 MiB of data, not 24.
    assert!(
        std::fs::metadata(q).unwrap().len() < 4 * MIB,
        "{}",
        std::fs::metadata(q).unwrap().len()
    );
    let back = m.dir.path().join("back.raw");
    qemu_ok(&[
        "convert",
        "-f",
        "qcow2",
        "-O",
        "raw",
        q,
        back.to_str().unwrap(),
    ]);
    assert_same(&read_all(&back), &model, "qcow2 converted back to raw");
    assert_same(&read_all(&snap), &model, "the snapshot");
    // An image of the snapshot compares equal to it.
    run_ok(&["image", "create", "img", "--source", "s", "--store", m.s()]);
    let img = m.mnt.join("images/img");
    qemu_ok(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        img.to_str().unwrap(),
        s,
    ]);
}

/// ext4 made on a disk, snapshotted, then changed: the snapshot, through a read-only
/// loop device, passes fsck and holds the files the disk had; the disk has the new ones.
#[test]
fn ext4_in_a_snapshot_checks_clean_through_a_loop_device() {
    let m = Mounted::new();
    m.create("fs", "32M");
    let disk = m.disk("fs");
    let src = m.dir.path().join("src");
    std::fs::create_dir_all(src.join("sub")).unwrap();
    std::fs::write(src.join("a.txt"), b"before the snapshot\n").unwrap();
    std::fs::write(src.join("sub/b.bin"), pattern(21, 300_000)).unwrap();
    std::fs::write(src.join("sub/c.bin"), pattern(22, 70_001)).unwrap();
    tool_ok(
        "mkfs.ext4",
        &[
            "-q".as_ref(),
            "-F".as_ref(),
            "-d".as_ref(),
            src.as_os_str(),
            disk.as_os_str(),
        ],
    );
    tool_ok("fsck.ext4", &["-fn".as_ref(), disk.as_os_str()]);
    let before = read_all(&disk);
    snapshot(&m, "fs-s", "fs");

    // Change the disk's file system: remove a file, add one, rewrite another.
    let newf = m.dir.path().join("new.bin");
    std::fs::write(&newf, pattern(23, 50_000)).unwrap();
    let debugfs_w = |cmd: &str| {
        tool_ok(
            "debugfs",
            &["-w".as_ref(), "-R".as_ref(), cmd.as_ref(), disk.as_os_str()],
        );
    };
    debugfs_w("rm /a.txt");
    debugfs_w(&format!("write {} /new.bin", newf.display()));
    debugfs_w("rm /sub/b.bin");
    debugfs_w(&format!("write {} /sub/b.bin", newf.display()));
    tool_ok("fsck.ext4", &["-fn".as_ref(), disk.as_os_str()]);
    assert!(first_diff(&read_all(&disk), &before).is_some());

    let snap = m.mnt.join("snapshots/fs-s");
    assert_same(&read_all(&snap), &before, "the snapshot file");
    let lp = Loop::attach(&snap, true);
    tool_ok("fsck.ext4", &["-fn".as_ref(), lp.0.as_os_str()]);
    assert_same(
        &read_all(&lp.0),
        &before,
        "the loop device over the snapshot",
    );
    let out = m.dir.path().join("dump");
    std::fs::create_dir(&out).unwrap();
    tool_ok(
        "debugfs",
        &[
            "-R".as_ref(),
            format!("rdump / {}", out.display()).as_ref(),
            lp.0.as_os_str(),
        ],
    );
    for f in ["a.txt", "sub/b.bin", "sub/c.bin"] {
        assert_eq!(
            std::fs::read(out.join(f)).unwrap(),
            std::fs::read(src.join(f)).unwrap(),
            "{f} in the snapshot"
        );
    }
    assert!(!out.join("new.bin").exists());
    // The disk has its new content.
    let ls = tool_ok(
        "debugfs",
        &["-R".as_ref(), "ls -l /".as_ref(), disk.as_os_str()],
    );
    assert!(ls.contains("new.bin") && !ls.contains("a.txt"), "{ls}");
    let cat = Command::new("debugfs")
        .args(["-R", "cat /sub/b.bin"])
        .arg(&disk)
        .output()
        .unwrap();
    assert_eq!(cat.stdout, pattern(23, 50_000));
    drop(lp);
    // A second loop device after all that reads the same.
    let lp = Loop::attach(&snap, true);
    tool_ok("fsck.ext4", &["-fn".as_ref(), lp.0.as_os_str()]);
    assert_same(
        &read_all(&lp.0),
        &before,
        "a new loop device over the snapshot",
    );
}

fn open_err(path: &Path, write: bool, read: bool, flags: i32) -> Option<i32> {
    OpenOptions::new()
        .read(read)
        .write(write)
        .custom_flags(flags)
        .open(path)
        .err()
        .and_then(|e| e.raw_os_error())
}

/// A snapshot file is read-only (EROFS, reasons in last-error), reads with cp and dd,
/// and keeps its holes and data when the disk discards shared data.
#[test]
fn snapshot_files_are_read_only_and_keep_holes_and_data() {
    let mut m = Mounted::new();
    m.create("d", "16M");
    let f = rw(&m.disk("d"));
    let mut model = vec![0u8; 16 << 20];
    for (seed, off) in [(31u64, 0usize), (32, 4 << 20)] {
        let p = pattern(seed, 1 << 20);
        f.write_all_at(&p, off as u64).unwrap();
        model[off..off + (1 << 20)].copy_from_slice(&p);
    }
    let snap_json = snapshot(&m, "s", "d");
    let snap = m.mnt.join("snapshots/s");
    let err_file = m.mnt.join(".vault/last-error");
    let last_error = || std::fs::read_to_string(&err_file).unwrap();

    for (what, write, read, flags) in [
        ("O_WRONLY", true, false, 0),
        ("O_RDWR", true, true, 0),
        ("O_RDONLY|O_TRUNC", false, true, libc::O_TRUNC),
        ("O_WRONLY|O_APPEND", true, false, libc::O_APPEND),
    ] {
        assert_eq!(
            open_err(&snap, write, read, flags),
            Some(libc::EROFS),
            "open {what}"
        );
        let e = last_error();
        assert!(e.contains("snapshot 's' is read-only"), "{what}: {e}");
    }
    let c = std::ffi::CString::new(snap.to_str().unwrap()).unwrap();
    // Safe because: `c` is a valid NUL-terminated path.
    let rc = unsafe { libc::truncate(c.as_ptr(), 4096) };
    assert_eq!(rc, -1);
    assert_eq!(
        std::io::Error::last_os_error().raw_os_error(),
        Some(libc::EROFS)
    );
    let e = last_error();
    assert!(e.contains("snapshot 's'") && e.contains("read-only"), "{e}");
    assert!(
        Command::new("sh")
            .arg("-c")
            .arg(format!("echo x > {}", snap.display()))
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .code()
            != Some(0)
    );
    assert_eq!(std::fs::metadata(&snap).unwrap().len(), 16 << 20);
    // A read-only handle can't punch or allocate.
    let ro = std::fs::File::open(&snap).unwrap();
    // Safe because: the fd is open for the duration of the call.
    let rc = unsafe {
        libc::fallocate(
            ro.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            0,
            4096,
        )
    };
    assert_eq!(rc, -1);
    drop(ro);

    // Reads: cp, and dd at an offset.
    let copy = m.dir.path().join("copy.raw");
    tool_ok("cp", &[snap.as_os_str(), copy.as_os_str()]);
    assert_same(&read_all(&copy), &model, "cp of the snapshot");
    let dd = Command::new("dd")
        .arg(format!("if={}", snap.display()))
        .args(["bs=64k", "skip=63", "count=3", "status=none"])
        .output()
        .unwrap();
    assert!(dd.status.success());
    assert_same(
        &dd.stdout,
        &model[63 * 65536..66 * 65536],
        "dd of the snapshot",
    );

    let want_snap = vec![(0, MIB), (4 * MIB, 5 * MIB)];
    assert_eq!(data_extents(&snap), want_snap);
    assert_eq!(data_extents(&m.disk("d")), want_snap);
    // Discards on the disk over data it shares with the snapshot.
    for (off, len) in [(0, MIB), (4 * MIB + 64 * 1024, 64 * 1024)] {
        // Safe because: the fd is open for the duration of the call.
        let rc = unsafe {
            libc::fallocate(
                f.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                off as i64,
                len as i64,
            )
        };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
    }
    drop(f);
    let mut disk_model = model.clone();
    disk_model[..1 << 20].fill(0);
    disk_model[(4 << 20) + 65536..(4 << 20) + 131072].fill(0);
    let want_disk = vec![
        (4 * MIB, 4 * MIB + 64 * 1024),
        (4 * MIB + 128 * 1024, 5 * MIB),
    ];
    let check = |m: &Mounted, when: &str| {
        assert_eq!(data_extents(&m.disk("d")), want_disk, "disk {when}");
        assert_eq!(data_extents(&snap), want_snap, "snapshot {when}");
        assert_same(
            &read_all(&m.disk("d")),
            &disk_model,
            &format!("disk {when}"),
        );
        assert_same(&read_all(&snap), &model, &format!("snapshot {when}"));
    };
    check(&m, "after the discards");
    m.umount();
    m.mount();
    check(&m, "after a remount");

    // An image is read-only too.
    run_ok(&["image", "create", "im", "--source", "s", "--store", m.s()]);
    let im = m.mnt.join("images/im");
    assert_eq!(open_err(&im, true, false, 0), Some(libc::EROFS));
    assert!(last_error().contains("read-only"), "{}", last_error());
    assert_eq!(data_extents(&im), want_snap);
    assert_same(&read_all(&im), &model, "the image");

    // show agrees with list, and with what create printed.
    let listed_s = listed(&m, "snapshot", "s");
    assert_eq!(listed_s["id"], snap_json["id"]);
    let shown = show(&m, "snapshot", "s");
    assert_eq!(shown, listed_s);
    let shown = show(&m, "image", "im");
    assert_eq!(shown, listed(&m, "image", "im"));

    // rm deletes a snapshot; the image made from it keeps its content.
    std::fs::remove_file(&snap).unwrap();
    assert!(!snap.exists());
    assert!(!run_ok(&["snapshot", "list", "--store", m.s()]).contains(" s "));
    assert_same(
        &read_all(&im),
        &model,
        "the image after its source is deleted",
    );
}

fn write_sync(path: &Path, off: u64, data: &[u8]) {
    let f = rw(path);
    f.write_all_at(data, off).unwrap();
    f.sync_all().unwrap();
}

/// Within `slack` bytes of `want`.
#[track_caller]
fn about(got: u64, want: u64, slack: u64, what: &str) {
    assert!(
        got.abs_diff(want) <= slack,
        "{what}: {got} bytes, expected about {want}"
    );
}

/// Space: a snapshot shares the disk's data; after the disk is overwritten, deleting
/// the snapshot frees the old data. Deleting the middle one of three snapshots frees
/// only what no other object can read, and the others keep their content.
#[test]
fn snapshot_space_is_shared_then_freed_on_delete() {
    let mut m = Mounted::new();
    let n = 8 * MIB;
    let slack = 256 * 1024;
    m.create("sp", "16M");
    let disk = m.disk("sp");
    write_sync(&disk, 0, &pattern(41, n as usize));
    let base = store_data_bytes(&m.store);
    about(base, n, slack, "the disk's data");
    snapshot(&m, "s1", "sp");
    about(
        store_data_bytes(&m.store),
        n,
        slack,
        "after an O(1) snapshot",
    );
    let (u, s) = used(&listed(&m, "snapshot", "s1"));
    assert_eq!(u, 0, "nothing of s1 is its alone yet");
    about(s, n, slack, "s1 shares the disk's data");
    let (u, s) = used(&listed(&m, "disk", "sp"));
    about(u, 0, slack, "the disk's own bytes");
    about(s, n, slack, "the disk's shared bytes");

    let new = pattern(42, n as usize);
    write_sync(&disk, 0, &new);
    let full = store_data_bytes(&m.store);
    about(full, 2 * n, 2 * slack, "after overwriting the disk");
    // `unique` is what a delete would free: the disk no longer reads the old data,
    // so it is s1's alone now.
    let (u, s) = used(&listed(&m, "disk", "sp"));
    about(u, n, slack, "the disk's new data is its own");
    assert_eq!(s, 0, "the disk reads none of the old data");
    let (u, s) = used(&listed(&m, "snapshot", "s1"));
    about(u, n, slack, "s1's data is its alone");
    assert_eq!(s, 0);
    assert_same(
        &read_all(&m.mnt.join("snapshots/s1")),
        &[pattern(41, n as usize), vec![0; n as usize]].concat(),
        "s1",
    );

    run_ok(&["snapshot", "delete", "s1", "--store", m.s()]);
    settle_merges(&m);
    let after = store_data_bytes(&m.store);
    about(full - after, n, slack, "freed by deleting s1");
    let (u, s) = used(&listed(&m, "disk", "sp"));
    about(u, n, slack, "the disk's data after the delete");
    assert_eq!(s, 0, "nothing is shared any more");
    assert_same(
        &read_all(&disk)[..n as usize],
        &new,
        "the disk after the delete",
    );

    // Three snapshots; the middle one holds data no one else reads.
    m.create("m", "8M");
    let d = m.disk("m");
    let p = |seed| pattern(seed, MIB as usize);
    write_sync(&d, 0, &[p(1), p(2)].concat());
    snapshot(&m, "m1", "m");
    write_sync(&d, 0, &p(3));
    write_sync(&d, 2 * MIB, &p(4));
    snapshot(&m, "m2", "m");
    write_sync(&d, 0, &p(5));
    snapshot(&m, "m3", "m");
    write_sync(&d, 5 * MIB, &p(6));
    let z = || vec![0u8; MIB as usize];
    let want_m1 = [p(1), p(2), z(), z(), z(), z(), z(), z()].concat();
    let want_m3 = [p(5), p(2), p(4), z(), z(), z(), z(), z()].concat();
    let want_disk = [p(5), p(2), p(4), z(), z(), p(6), z(), z()].concat();
    assert_same(
        &read_all(&m.mnt.join("snapshots/m2")),
        &[p(3), p(2), p(4), z(), z(), z(), z(), z()].concat(),
        "m2",
    );
    let before = store_data_bytes(&m.store);
    let (u2, _) = used(&listed(&m, "snapshot", "m2"));
    about(u2, MIB, slack, "m2's own bytes: what deleting it frees");
    let (u1, s1) = used(&listed(&m, "snapshot", "m1"));
    let (u3, _) = used(&listed(&m, "snapshot", "m3"));
    run_ok(&["snapshot", "delete", "m2", "--store", m.s()]);
    // m2's delta is then merged into m3's (its 1 MiB m3 reads moves up).
    settle_merges(&m);
    let freed = before - store_data_bytes(&m.store);
    about(
        freed,
        MIB,
        slack,
        "freed by deleting m2 (its 1 MiB no one else reads)",
    );
    assert_eq!(used(&listed(&m, "snapshot", "m1")), (u1, s1), "m1's bytes");
    assert_eq!(used(&listed(&m, "snapshot", "m3")).0, u3, "m3's own bytes");
    let check = |m: &Mounted, when: &str| {
        assert_same(
            &read_all(&m.mnt.join("snapshots/m1")),
            &want_m1,
            &format!("m1 {when}"),
        );
        assert_same(
            &read_all(&m.mnt.join("snapshots/m3")),
            &want_m3,
            &format!("m3 {when}"),
        );
        assert_same(&read_all(&d), &want_disk, &format!("disk {when}"));
        assert!(!m.mnt.join("snapshots/m2").exists());
    };
    check(&m, "after deleting m2");
    let kept = store_data_bytes(&m.store);
    m.umount();
    m.mount();
    check(&m, "after a remount");
    assert_eq!(
        store_data_bytes(&m.store),
        kept,
        "a remount frees nothing more"
    );
}

/// A disk from a snapshot with a bigger size: the snapshot's content then zeros, also
/// in the tail of the source's last unit; writing to it changes neither the snapshot
/// nor the source; a smaller size is refused, mounted and unmounted.
#[test]
fn a_bigger_disk_from_a_snapshot_reads_its_content_then_zeros() {
    let mut m = Mounted::new();
    m.create("src", "9M");
    let srcp = m.disk("src");
    // Data up to the end, then a shrink to an odd size: the last unit's ciphertext
    // covers bytes past the new end.
    write_sync(&srcp, 0, &pattern(51, 3 * MIB as usize));
    write_sync(&srcp, 8 * MIB - 4096, &pattern(52, MIB as usize + 4096));
    let size = 8 * MIB + 1000;
    rw(&srcp).set_len(size).unwrap();
    let src_content = read_all(&srcp);
    assert_eq!(src_content.len() as u64, size);
    snapshot(&m, "snap", "src");
    let snap = m.mnt.join("snapshots/snap");
    assert_same(&read_all(&snap), &src_content, "the snapshot");

    let v: serde_json::Value = serde_json::from_str(&run_ok(&[
        "disk",
        "create",
        "big",
        "--source",
        "snap",
        "--size",
        "16M",
        "--store",
        m.s(),
    ]))
    .unwrap();
    assert_eq!(v["diskSizeBytes"], 16 * MIB);
    assert_eq!(
        arm_short(&v["creationData"]["sourceResourceId"]),
        "/diskvault/snapshots/snap"
    );
    let big = m.disk("big");
    let mut want = src_content.clone();
    want.resize(16 * MIB as usize, 0);
    assert_same(&read_all(&big), &want, "the bigger disk");

    // Writes to the clone, in the shared part and in the grown part.
    let f = rw(&big);
    for (seed, off, len) in [
        (53u64, 4096u64, 10_000usize),
        (54, size - 10, 20),
        (55, 12 * MIB, 70_000),
    ] {
        let p = pattern(seed, len);
        f.write_all_at(&p, off).unwrap();
        want[off as usize..off as usize + len].copy_from_slice(&p);
    }
    f.sync_all().unwrap();
    drop(f);
    assert_same(&read_all(&big), &want, "the clone after writes");
    assert_same(
        &read_all(&snap),
        &src_content,
        "the snapshot after writes to the clone",
    );
    assert_same(
        &read_all(&srcp),
        &src_content,
        "the source after writes to the clone",
    );

    let err = run_err(&[
        "disk",
        "create",
        "small",
        "--source",
        "snap",
        "--size",
        "4M",
        "--store",
        m.s(),
    ]);
    assert!(err.contains("at least its size"), "{err}");
    assert!(!m.disk("small").exists());
    // The same size is fine (the default), and so is the source's size in bytes.
    run_ok(&[
        "disk",
        "create",
        "same",
        "--source",
        "snap",
        "--store",
        m.s(),
    ]);
    assert_same(&read_all(&m.disk("same")), &src_content, "a same-size disk");

    m.umount();
    let err = run_err(&[
        "disk",
        "create",
        "small",
        "--source",
        "snap",
        "--size",
        "8M",
        "--store",
        m.s(),
    ]);
    assert!(err.contains("at least its size"), "unmounted: {err}");
    run_ok(&[
        "disk",
        "create",
        "big2",
        "--source",
        "snap",
        "--size",
        "10M",
        "--store",
        m.s(),
    ]);
    m.mount();
    let mut want2 = src_content.clone();
    want2.resize(10 * MIB as usize, 0);
    assert_same(&read_all(&m.disk("big2")), &want2, "a disk made unmounted");
    assert_same(&read_all(&big), &want, "the clone after a remount");
    assert!(!m.disk("small").exists());
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Snapshots of the disks of a store made by old code (tests/fixtures/store-v1):
/// platform and customer key, content kept across disk writes and a remount.
#[test]
fn snapshots_of_a_store_made_by_old_code() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1");
    tool_ok("cp", &["-r".as_ref(), src.as_ref(), store.as_os_str()]);
    std::fs::create_dir_all(store.join("vault/deleted-keys")).unwrap();
    let want: Vec<(String, String)> = include_str!("fixtures/store-v1.sha256")
        .lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            (n.to_string(), h.to_string())
        })
        .collect();
    let sum = |n: &str| want.iter().find(|(x, _)| x == n).unwrap().1.clone();
    let mut m = Mounted::attach(dir.path(), &store, &mnt);

    let c1 = snapshot(&m, "c1-s", "c1");
    assert_eq!(
        arm_short(&c1["encryption"]["diskEncryptionSetId"]),
        "/diskvault/diskEncryptionSets/s1"
    );
    assert_eq!(c1["keyState"], "Available");
    snapshot(&m, "p1-s", "p1");
    snapshot(&m, "d1-s", "d1");
    let snaps = [("c1-s", "c1"), ("p1-s", "p1"), ("d1-s", "d1")];
    // The disks move on.
    let mut new = std::collections::HashMap::new();
    for (i, (_, d)) in snaps.iter().enumerate() {
        let mut content = read_all(&m.disk(d));
        let p = pattern(60 + i as u64, 9000);
        write_sync(&m.disk(d), 4000, &p);
        content[4000..13000].copy_from_slice(&p);
        new.insert(*d, content);
    }
    let check = |m: &Mounted, when: &str| {
        for (s, d) in snaps {
            assert_eq!(
                sha256_hex(&read_all(&m.mnt.join("snapshots").join(s))),
                sum(d),
                "snapshot {s} {when}"
            );
            assert_same(&read_all(&m.disk(d)), &new[d], &format!("disk {d} {when}"));
        }
        assert_eq!(sha256_hex(&read_all(&m.disk("p2"))), sum("p2"), "p2 {when}");
    };
    check(&m, "after the disks changed");
    m.umount();
    m.mount();
    check(&m, "after a remount");
    // A disk from the customer-key snapshot reads the old content.
    run_ok(&[
        "disk",
        "create",
        "c1-clone",
        "--source",
        "c1-s",
        "--store",
        m.s(),
    ]);
    assert_eq!(sha256_hex(&read_all(&m.disk("c1-clone"))), sum("c1"));
}

/// A full store: creating a copy fails with ENOSPC and a message that names the fix,
/// changing nothing; deleting a snapshot, which is how space comes back, works.
#[test]
fn on_a_full_store_copies_are_refused_and_deletes_free_space() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&dir.path().join("t"), "40M");
    let store = dir.path().join("t/store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    m.create("f", "16M");
    let data = pattern(61, 8 << 20);
    write_sync(&m.disk("f"), 0, &data);
    snapshot(&m, "f1", "f");
    let filler = fs.fill();
    let listed_before = run_ok(&["snapshot", "list", "-o", "json", "--store", m.s()]);
    let out = run(&[
        "snapshot",
        "create",
        "f2",
        "--source",
        "f",
        "--store",
        m.s(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        assert!(err.contains("full") && err.contains("delete"), "{err}");
        assert_eq!(
            run_ok(&["snapshot", "list", "-o", "json", "--store", m.s()]),
            listed_before,
            "a refused create changes nothing"
        );
    } else {
        run_ok(&["snapshot", "delete", "f2", "--store", m.s()]);
    }
    // Overwrite the disk, so that the snapshot holds data only it reads, then fill
    // the store again: deleting the snapshot must work and give that space back.
    std::fs::remove_file(&filler).unwrap();
    write_sync(&m.disk("f"), 0, &pattern(62, 8 << 20));
    let filler = fs.fill();
    let before = store_data_bytes(&m.store);
    run_ok(&["snapshot", "delete", "f1", "--store", m.s()]);
    settle_merges(&m);
    assert!(store_data_bytes(&m.store) < before, "space came back");
    drop(filler);
    m.umount();
    drop(fs);
}

//! The data path of real FUSE mounts, through the real binary: dd patterns, a seeded
//! model test, sparse disks, concurrent writers, file operations and O_DIRECT,
//! qemu-img, and fsynced data across kill -9 of the daemon.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::process::Command;

#[test]
fn dd_patterns_at_aligned_and_unaligned_offsets() {
    let m = Mounted::new();
    m.create("d1", "64M");
    let path = m.disk("d1");
    let f = rw(&path);
    let mut model = vec![0u8; 64 << 20];
    let cases: &[(u64, usize)] = &[
        (0, 4096),
        (4096, 1 << 20),
        (1, 1),
        (4095, 2),
        (8191, 4099),
        (12345, 100_000),
        (3 << 20, 17),
        ((64 << 20) - 5, 5),
    ];
    for (i, &(off, len)) in cases.iter().enumerate() {
        let data = pattern(i as u64 + 1, len);
        f.write_all_at(&data, off).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&data);
    }
    for &(off, len) in cases {
        assert_eq!(
            read_at(&f, off, len),
            &model[off as usize..off as usize + len],
            "at {off}+{len}"
        );
    }
    // dd itself, unaligned block size and seek.
    let src = m.dir.path().join("src.bin");
    std::fs::write(&src, pattern(99, 3000 * 7)).unwrap();
    let st = Command::new("dd")
        .arg(format!("if={}", src.display()))
        .arg(format!("of={}", path.display()))
        .args(["bs=3000", "seek=1001", "conv=notrunc", "status=none"])
        .status()
        .unwrap();
    assert!(st.success());
    let off = 3000 * 1001;
    model[off..off + 21000].copy_from_slice(&pattern(99, 21000));
    let out = Command::new("dd")
        .arg(format!("if={}", path.display()))
        .args(["bs=1M", "count=8", "status=none"])
        .output()
        .unwrap();
    assert_eq!(out.stdout, &model[..8 << 20]);
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 64 << 20);
}

/// fsx-style model test: seeded random operations on several disks, checked
/// against an in-memory model, then again after a remount.
#[test]
fn randomized_model_test() {
    let mut m = Mounted::new();
    let names = ["fsx0", "fsx1", "fsx2"];
    let mut models: Vec<Vec<u8>> = vec![Vec::new(); names.len()];
    let files: Vec<File> = names
        .iter()
        .map(|n| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(m.disk(n))
                .unwrap()
        })
        .collect();
    let mut rng = pattern(0xf5c, 1 << 16).into_iter().cycle();
    let mut r = move |max: u64| -> u64 {
        let v = (0..8).fold(0u64, |a, _| (a << 8) | rng.next().unwrap() as u64);
        v % max.max(1)
    };
    const MAX: u64 = 3 << 20;
    for op in 0..3000u64 {
        let d = r(names.len() as u64) as usize;
        let f = &files[d];
        let model = &mut models[d];
        match r(10) {
            0..=3 => {
                let off = r(MAX);
                let big = r(4) == 0;
                let len = 1 + r(if big { 200_000 } else { 9000 }) as usize;
                let data = pattern(op, len);
                f.write_all_at(&data, off).unwrap();
                let end = off as usize + len;
                if model.len() < end {
                    model.resize(end, 0);
                }
                model[off as usize..end].copy_from_slice(&data);
            }
            4..=6 => {
                let off = r(model.len() as u64 + 10);
                let len = 1 + r(70_000) as usize;
                let end = (off as usize + len).min(model.len());
                let want = if (off as usize) < model.len() {
                    &model[off as usize..end]
                } else {
                    &[][..]
                };
                assert_eq!(
                    read_at(f, off, len),
                    want,
                    "op {op}: read {off}+{len} of {}",
                    names[d]
                );
            }
            7 => {
                let size = r(MAX);
                f.set_len(size).unwrap();
                model.resize(size as usize, 0);
            }
            8 => {
                let off = r(model.len() as u64 + 1);
                let len = 1 + r(100_000);
                let punch = r(2) == 0;
                let mode = if punch {
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE
                } else {
                    libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE
                };
                // Safe because: the fd is open for the duration of the call.
                let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
                assert_eq!(rc, 0, "fallocate: {}", std::io::Error::last_os_error());
                let end = ((off + len) as usize).min(model.len());
                if (off as usize) < end {
                    model[off as usize..end].fill(0);
                }
            }
            _ => f.sync_all().unwrap(),
        }
        assert_eq!(
            f.metadata().unwrap().len(),
            model.len() as u64,
            "op {op}: size"
        );
    }
    drop(files);
    m.umount();
    m.mount();
    for (n, model) in names.iter().zip(&models) {
        assert_eq!(
            &std::fs::read(m.disk(n)).unwrap(),
            model,
            "{n} after remount"
        );
    }
}

#[test]
fn sparse_disks_take_no_space_until_written() {
    let m = Mounted::new();
    m.create("big", "10G");
    let backing = m.backing_dir("big");
    let used = |p: &std::path::Path| std::fs::metadata(p.join("data")).unwrap().blocks() * 512;
    assert!(
        used(&backing) < 64 * 1024,
        "fresh 10G disk uses {} bytes",
        used(&backing)
    );
    assert_eq!(std::fs::metadata(m.disk("big")).unwrap().len(), 10 << 30);
    let f = rw(&m.disk("big"));
    f.write_all_at(&pattern(5, 1 << 20), 5 << 30).unwrap();
    f.sync_all().unwrap();
    let u = used(&backing);
    assert!((1 << 20..4 << 20).contains(&u), "after 1 MiB written: {u}");
    // SEEK_DATA/SEEK_HOLE see the written extent.
    // Safe because: the fd is open for the duration of the calls.
    let data = unsafe { libc::lseek(f.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert_eq!(data, 5 << 30);
    let hole = unsafe { libc::lseek(f.as_raw_fd(), 5 << 30, libc::SEEK_HOLE) };
    assert_eq!(hole, (5 << 30) + (1 << 20));
    // Punching it returns the space and reads as zeros.
    let rc = unsafe {
        libc::fallocate(
            f.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            5 << 30,
            1 << 20,
        )
    };
    assert_eq!(rc, 0);
    assert!(used(&backing) < 64 * 1024);
    assert_eq!(read_at(&f, 5 << 30, 4096), vec![0u8; 4096]);
    assert_eq!(std::fs::metadata(m.disk("big")).unwrap().len(), 10 << 30);
    // statfs works on the mount.
    let out = Command::new("df").arg(&m.mnt).output().unwrap();
    assert!(out.status.success());
}

#[test]
fn qemu_img_info_convert_compare() {
    let m = Mounted::new();
    let src = m.dir.path().join("src.raw");
    let mut img = vec![0u8; 16 << 20];
    img[..1 << 20].copy_from_slice(&pattern(7, 1 << 20));
    img[9 << 20..(9 << 20) + 5000].copy_from_slice(&pattern(8, 5000));
    std::fs::write(&src, &img).unwrap();
    let qemu = |args: &[&str]| {
        let out = Command::new("qemu-img")
            .args(args)
            .output()
            .expect("qemu-img is required");
        assert!(
            out.status.success(),
            "qemu-img {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let dst = m.disk("vm1");
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    let info = qemu(&["info", "--output=json", "-f", "raw", dst.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(v["virtual-size"], 16 << 20);
    assert_eq!(v["format"], "raw");
    qemu(&[
        "compare",
        "-f",
        "raw",
        "-F",
        "raw",
        src.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    // And out again, into qcow2 and back.
    let q = m.dir.path().join("out.qcow2");
    qemu(&[
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        dst.to_str().unwrap(),
        q.to_str().unwrap(),
    ]);
    qemu(&[
        "compare",
        "-f",
        "qcow2",
        "-F",
        "raw",
        q.to_str().unwrap(),
        dst.to_str().unwrap(),
    ]);
    assert_eq!(std::fs::read(&dst).unwrap(), img);
}

#[test]
fn concurrent_writers_threads_and_processes() {
    let m = Mounted::new();
    m.create("cc", "4M");
    let path = m.disk("cc");
    // Threads write interleaved 512-byte slices that share every 4 KiB unit,
    // so each unit is read-modify-written by all of them at once.
    let threads = 4;
    std::thread::scope(|s| {
        for t in 0..threads {
            let path = path.clone();
            s.spawn(move || {
                let f = rw(&path);
                for round in 0..200u64 {
                    let unit = round % 64;
                    let off = unit * 4096 + t as u64 * 1024;
                    f.write_all_at(&vec![(t as u8 + 1) * 16 + (round % 7) as u8; 1024], off)
                        .unwrap();
                }
            });
        }
    });
    let f = File::open(&path).unwrap();
    let all = read_at(&f, 0, 64 * 4096);
    for unit in 0..64u64 {
        for t in 0..threads {
            let off = (unit * 4096 + t as u64 * 1024) as usize;
            let last_round = (0..200u64).filter(|r| r % 64 == unit).max().unwrap();
            let want = (t as u8 + 1) * 16 + (last_round % 7) as u8;
            assert!(
                all[off..off + 1024].iter().all(|&b| b == want),
                "unit {unit} slice {t}"
            );
        }
    }
    // Processes: dd writers on overlapping units.
    let children: Vec<_> = (0..4)
        .map(|i| {
            let src = m.dir.path().join(format!("p{i}"));
            std::fs::write(&src, pattern(100 + i, 100 * 1000)).unwrap();
            Command::new("dd")
                .arg(format!("if={}", src.display()))
                .arg(format!("of={}", path.display()))
                .arg("bs=1000")
                .arg(format!("seek={}", 1000 + i * 100))
                .args(["conv=notrunc", "status=none"])
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    for i in 0..4u64 {
        let got = read_at(&f, (1000 + i * 100) * 1000, 100 * 1000);
        assert_eq!(got, pattern(100 + i, 100 * 1000), "dd writer {i}");
    }
}

#[test]
fn file_operations_create_rename_truncate_unlink_odirect() {
    let m = Mounted::new();
    // O_CREAT makes a platform-key disk.
    let p = m.disk("new1");
    std::fs::write(&p, b"hello").unwrap();
    assert_eq!(std::fs::read(&p).unwrap(), b"hello");
    let show: serde_json::Value =
        serde_json::from_str(&run_ok(&["disk", "show", "new1", "--store", m.s()])).unwrap();
    assert_eq!(
        show["encryption"]["type"],
        "EncryptionAtRestWithPlatformKey"
    );
    assert_eq!(show["diskSizeBytes"], 5);
    // Truncate up reads zeros, truncate down discards, O_TRUNC empties.
    let f = rw(&p);
    f.set_len(10_000).unwrap();
    assert_eq!(read_at(&f, 0, 10_000)[5..], vec![0u8; 9995][..]);
    f.set_len(3).unwrap();
    f.set_len(5).unwrap();
    assert_eq!(read_at(&f, 0, 10), b"hel\0\0");
    drop(f);
    // Rename keeps data; the backing directory is unchanged.
    let backing = m.backing_dir("new1");
    std::fs::rename(&p, m.disk("new2")).unwrap();
    assert_eq!(std::fs::read(m.disk("new2")).unwrap(), b"hel\0\0");
    assert!(backing.exists());
    // Rename over an existing disk replaces it.
    std::fs::write(m.disk("victim"), b"x").unwrap();
    let victim = m.backing_dir("victim");
    std::fs::rename(m.disk("new2"), m.disk("victim")).unwrap();
    assert_eq!(std::fs::read(m.disk("victim")).unwrap(), b"hel\0\0");
    assert!(!victim.exists());
    OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(m.disk("victim"))
        .unwrap();
    assert_eq!(std::fs::metadata(m.disk("victim")).unwrap().len(), 0);
    // O_DIRECT with aligned buffers.
    m.create("od", "1M");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(m.disk("od"))
        .unwrap();
    let layout = std::alloc::Layout::from_size_align(8192, 4096).unwrap();
    // Safe because: the layout has non-zero size; the buffer is freed below.
    let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
    // Safe because: ptr points to 8192 initialized bytes owned here.
    let buf = unsafe { std::slice::from_raw_parts_mut(ptr, 8192) };
    buf.copy_from_slice(&pattern(11, 8192));
    f.write_all_at(buf, 4096).unwrap();
    buf.fill(0);
    assert_eq!(f.read_at(buf, 4096).unwrap(), 8192);
    assert_eq!(buf, &pattern(11, 8192)[..]);
    // Safe because: allocated above with the same layout.
    unsafe { std::alloc::dealloc(ptr, layout) };
    drop(f);
    // Unlink destroys the wrapped DEK: the backing directory is gone.
    let odb = m.backing_dir("od");
    std::fs::remove_file(m.disk("od")).unwrap();
    assert!(!odb.exists());
    assert!(!m.disk("od").exists());
}

/// Data and size acknowledged by fsync survive kill -9 of the daemon.
#[test]
fn fsynced_data_survives_kill_9() {
    let mut m = Mounted::new();
    let data = pattern(77, 300_000);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(m.disk("k9"))
        .unwrap();
    f.write_all_at(&data, 5000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/daemon.json")).unwrap()).unwrap();
    let pid = info["pid"].as_i64().unwrap() as i32;
    // Safe because: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    // The locks are released only when the daemon is gone: wait on them.
    m.reap_dead_daemon();
    m.mount();
    let got = std::fs::read(m.disk("k9")).unwrap();
    assert_eq!(got.len(), 5000 + data.len());
    assert_eq!(&got[5000..], &data[..]);
    assert!(got[..5000].iter().all(|&b| b == 0));
}

//! Regression tests for what first users and an adversarial tester broke (issue 8),
//! disks: sparse rekey and rekey without space, failed size changes change nothing,
//! POSIX unlink, control names are not disk names, rsync and `cp -a`, and disks too
//! large for the store's file system. All on real mounts.

mod common;

use common::*;
use serde_json::Value;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn errno<T>(r: std::io::Result<T>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Bytes allocated by every file under `dir`.
fn allocated(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    walk(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
}

fn seek(f: &File, off: i64, whence: i32) -> i64 {
    use std::os::fd::AsRawFd;
    // Safe because: the fd is valid while `f` lives; lseek takes no pointers.
    unsafe { libc::lseek(f.as_raw_fd(), off, whence) }
}

/// A store on a small tmpfs, mounted; the tmpfs outlives the mount.
fn small_store(size: &str) -> (tempfile::TempDir, Tmpfs, Mounted) {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&dir.path().join("t"), size);
    let store = dir.path().join("t/store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::attach(dir.path(), &store, &mnt);
    (dir, fs, m)
}

/// Rekey keeps a sparse disk sparse: a 1 GiB disk with 4 MiB written stays under
/// 16 MiB in a 64 MiB store, its data is intact and SEEK_HOLE still finds the holes.
#[test]
fn rekey_keeps_disks_sparse() {
    let (_d, _fs, m) = small_store("64M");
    let s = m.s().to_string();
    m.create("sp", "1G");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("sp"))
        .unwrap();
    for i in 0..64u64 {
        f.write_all_at(&pattern(i, 64 << 10), i * (16 << 20))
            .unwrap();
    }
    f.sync_all().unwrap();
    drop(f);
    run_ok(&["disk", "rekey", "sp", "--quiet", "--store", &s]);
    let used = allocated(&m.store);
    assert!(used < 16 << 20, "store uses {used} bytes after rekey");
    let f = File::open(m.disk("sp")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    for i in 0..64u64 {
        f.read_exact_at(&mut buf, i * (16 << 20)).unwrap();
        assert!(buf == pattern(i, 64 << 10), "chunk {i}");
    }
    assert_eq!(seek(&f, 0, libc::SEEK_HOLE), 64 << 10);
    assert_eq!(seek(&f, 64 << 10, libc::SEEK_DATA), 16 << 20);
    let st = js(&std::fs::read_to_string(m.mnt.join(".vault/disks/sp/rekey")).unwrap());
    assert_eq!(st["state"], "done");
}

/// Without room for its journal a rekey is refused up front, with the numbers, and
/// nothing changes.
#[test]
fn rekey_refuses_without_space() {
    let (d, _fs, m) = small_store("16M");
    let s = m.s().to_string();
    m.create("sp", "8M");
    std::fs::write(m.disk("sp"), pattern(1, 1 << 20)).unwrap();
    // Leave less than a journal's worth free.
    let filler = d.path().join("t/filler");
    let mut f = File::create(&filler).unwrap();
    let chunk = vec![1u8; 64 << 10];
    while std::io::Write::write_all(&mut f, &chunk).is_ok() {}
    drop(f);
    let meta_before = std::fs::read(m.backing_dir("sp").join("meta.json")).unwrap();
    let e = run_err(&["disk", "rekey", "sp", "--quiet", "--store", &s]);
    assert!(
        e.contains("not enough free space") && e.contains("needs"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(m.backing_dir("sp").join("meta.json")).unwrap(),
        meta_before
    );
    std::fs::remove_file(&filler).unwrap();
    run_ok(&["disk", "rekey", "sp", "--quiet", "--store", &s]);
    assert_eq!(
        std::fs::read(m.disk("sp")).unwrap()[..1 << 20],
        pattern(1, 1 << 20)[..]
    );
}

fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> Option<i32> {
    use std::os::fd::AsRawFd;
    // Safe because: the fd is valid while `f` lives; fallocate takes no pointers.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), mode, off as i64, len as i64) };
    (rc != 0).then(|| std::io::Error::last_os_error().raw_os_error().unwrap())
}

/// A fallocate that fails (64 TiB, or more than the store holds) leaves the size,
/// the metadata and the store's allocation as they were, across a remount.
#[test]
fn failed_fallocate_changes_nothing() {
    let (_d, _fs, mut m) = small_store("64M");
    let s = m.s().to_string();
    m.create("fa", "1M");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("fa"))
        .unwrap();
    f.write_all_at(b"keep me", 0).unwrap();
    for len in [64u64 << 40, 100 << 20] {
        let e = fallocate(&f, 0, 0, len);
        assert!(
            matches!(e, Some(libc::ENOSPC | libc::EFBIG)),
            "{len}: {e:?}"
        );
        assert_eq!(f.metadata().unwrap().len(), 1 << 20);
        let show = js(&run_ok(&["disk", "show", "fa", "--store", &s]));
        assert_eq!(show["diskSizeBytes"], 1 << 20);
        assert!(allocated(&m.store) < 8 << 20, "{}", allocated(&m.store));
    }
    // A fallocate that fits still grows the disk.
    assert_eq!(fallocate(&f, 0, 0, 2 << 20), None);
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    drop(f);
    m.umount();
    m.mount();
    assert_eq!(std::fs::metadata(m.disk("fa")).unwrap().len(), 2 << 20);
    assert_eq!(&std::fs::read(m.disk("fa")).unwrap()[..7], b"keep me");
}

/// A disk unlinked while open keeps working through its fd until the last close, as
/// POSIX says: reads, writes, fstat and ftruncate. Then nothing of it remains.
#[test]
fn unlinked_open_disk_lives_until_closed() {
    let m = Mounted::new();
    m.create("ul", "1M");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("ul"))
        .unwrap();
    f.write_all_at(b"still here", 0).unwrap();
    std::fs::remove_file(m.disk("ul")).unwrap();
    assert!(!m.disk("ul").exists());
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0).unwrap();
    assert_eq!(&buf, b"still here");
    f.write_all_at(b"and still", 4096).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 20);
    f.set_len(2 << 20).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 2 << 20);
    f.read_exact_at(&mut buf[..9], 4096).unwrap();
    assert_eq!(&buf[..9], b"and still");
    f.sync_all().unwrap();
    // A new disk may take the name meanwhile.
    m.create("ul", "1M");
    assert_eq!(std::fs::read(m.disk("ul")).unwrap(), vec![0u8; 1 << 20]);
    drop(f);
    assert_eq!(
        walk(&m.store.join("disks")).len(),
        2,
        "only the new disk's files"
    );
}

/// No control name can become a disk name, however the disk is made.
#[test]
fn control_names_are_not_disk_names() {
    let m = Mounted::new();
    let s = m.s().to_string();
    for name in ["create", "import", "CREATE"] {
        assert_eq!(
            errno(File::create(m.disk(name))),
            Some(libc::EINVAL),
            "{name}"
        );
        let e = run_err(&["disk", "create", name, "--size", "1M", "--store", &s]);
        assert!(e.contains("control file"), "{e}");
    }
    m.create("d1", "1M");
    let e = std::fs::rename(m.disk("d1"), m.disk("create")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(m.disk("d1").exists());
    let e = std::fs::write(m.mnt.join(".vault/disks/create"), "create 1M").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let names: Vec<String> = std::fs::read_dir(m.mnt.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["d1"]);
}

/// rsync and `cp -a` copy images into disks/ without special flags: rsync's
/// dot-prefixed temp file becomes the disk on rename, and chmod/chown to the source's
/// attributes is accepted (disk files stay 0600).
#[test]
fn rsync_and_cp_a_work() {
    use std::os::unix::fs::PermissionsExt;
    let m = Mounted::new();
    let src = m.dir.path().join("img.raw");
    let data = pattern(9, 3 << 20);
    std::fs::write(&src, &data).unwrap();
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o644)).unwrap();
    tool(
        "cp",
        &["-a".as_ref(), src.as_os_str(), m.disk("cp1").as_os_str()],
    );
    assert!(std::fs::read(m.disk("cp1")).unwrap() == data);
    let mode = std::fs::metadata(m.disk("cp1"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    {
        tool(
            "rsync",
            &["-a".as_ref(), src.as_os_str(), m.disk("rs1").as_os_str()],
        );
        assert!(std::fs::read(m.disk("rs1")).unwrap() == data);
        let names: Vec<String> = std::fs::read_dir(m.mnt.join("disks"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temp disk left: {names:?}");
        // The longest disk name leaves rsync room for its temporary name.
        let long = m.disk(&"a".repeat(80));
        tool("rsync", &["-a".as_ref(), src.as_os_str(), long.as_os_str()]);
        assert!(std::fs::read(&long).unwrap() == data);
    }
}

/// A disk larger than the store's file system can hold (ext4 stops at 16 TiB) is
/// refused with a message that says so, and leaves nothing behind.
#[test]
fn disk_too_large_for_the_file_system_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("ext4.img");
    File::create(&img).unwrap().set_len(64 << 20).unwrap();
    tool(
        "mkfs.ext4",
        &["-q".as_ref(), "-F".as_ref(), img.as_os_str()],
    );
    let at = dir.path().join("e");
    std::fs::create_dir(&at).unwrap();
    tool(
        "mount",
        &[
            "-o".as_ref(),
            "loop".as_ref(),
            img.as_os_str(),
            at.as_os_str(),
        ],
    );
    let _fs = Tmpfs(at.clone()); // unmounts it on drop, whatever it is
    let store = at.join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let m = Mounted::attach(dir.path(), &store, &mnt);
    let e = run_err(&["disk", "create", "huge", "--size", "20T", "--store", m.s()]);
    assert!(e.contains("can't hold a file that large"), "{e}");
    assert!(!m.disk("huge").exists());
    assert_eq!(std::fs::read_dir(store.join("disks")).unwrap().count(), 0);
    m.create("fine", "1T");
}

/// A store that fills up with data still saves the sizes its disks grew to: the
/// metadata reserve is given up for them, so nothing written is trimmed at the next
/// mount (before, a clean unmount reported success and the remount cut both disks to
/// their recorded size, 0).
#[test]
fn a_full_store_still_saves_the_sizes_of_grown_disks() {
    let (_d, _fs, mut m) = small_store("48M");
    let reserve = m.store.join("reserve");
    assert!(reserve.exists(), "no metadata reserve in a fresh store");
    let a_data = pattern(31, 10 << 20);
    let a = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.disk("A"))
        .unwrap();
    a.write_all_at(&a_data, 0).unwrap();
    let b = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(m.disk("B"))
        .unwrap();
    let chunk = vec![0xaau8; 1 << 20];
    let mut b_len = 0u64;
    loop {
        match b.write_at(&chunk, b_len) {
            Ok(n) => b_len += n as u64,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
    assert!(b_len > 8 << 20, "B took only {b_len} bytes");
    // Closing saves the sizes (through the reserve, which is gone afterwards).
    drop(a);
    drop(b);
    assert!(!reserve.exists(), "the reserve was not used");
    m.umount();
    m.mount();
    assert!(std::fs::read(m.disk("A")).unwrap() == a_data, "A lost data");
    let got = std::fs::read(m.disk("B")).unwrap();
    assert!(
        got.len() as u64 >= b_len,
        "B is {} bytes, {b_len} were written",
        got.len()
    );
    assert!(
        got[..b_len as usize].iter().all(|&x| x == 0xaa),
        "B lost data"
    );
}

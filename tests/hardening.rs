//! Regression tests for what first users and an adversarial tester broke (issue 8):
//! a dead reconciler fails closed, revocation is never refused, panics are logged,
//! failed size changes change nothing, sparse rekey, POSIX unlink, control names,
//! control replies bound to the writer, and quiet logs. All on real mounts.

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

/// A tmpfs of `size` mounted on `dir`, unmounted on drop (after anything on it).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn new(dir: &std::path::Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let st = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .unwrap();
        assert!(st.success(), "mount tmpfs");
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.to_str().unwrap()).unwrap();
        // Safe because: `c` is a valid NUL-terminated path.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
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

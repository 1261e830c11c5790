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

/// A rename inside .vault/ is EPERM (not EXDEV, on which `mv` would copy and delete,
/// making a new key with fresh key material); the key is unchanged.
#[test]
fn rename_in_vault_is_eperm() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "ka", "--store", &s]);
    let before = run_ok(&["key", "show", "ka", "--store", &s]);
    let keys = m.mnt.join(".vault/keys");
    let e = std::fs::rename(keys.join("ka"), keys.join("kb")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let out = std::process::Command::new("mv")
        .arg(keys.join("ka"))
        .arg(keys.join("kb"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!keys.join("kb").exists());
    assert_eq!(run_ok(&["key", "show", "ka", "--store", &s]), before);
    // Out of disks/ too.
    m.create("d1", "1M");
    let e = std::fs::rename(m.disk("d1"), m.mnt.join("d1")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
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

/// `keys/import` gathers a PEM written in several writes until it is complete, so the
/// documented `{ echo NAME; cat key.pem; } > import` works.
#[test]
fn import_gathers_several_writes() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let pem = m.dir.path().join("byok.pem");
    openssl_genrsa(&pem);
    let import = m.mnt.join(".vault/keys/import");
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "{{ echo byok; cat '{}'; }} > '{}'",
            pem.display(),
            import.display()
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = js(&run_ok(&["key", "show", "byok", "--store", &s]));
    assert_eq!(key["imported"], true);
    // The public key is the one in the PEM (checked with openssl).
    let want = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&pem)
        .output()
        .unwrap()
        .stdout;
    assert_eq!(
        std::fs::read(m.mnt.join(".vault/keys/byok/public.pem")).unwrap(),
        want
    );
    // Byte by byte works too; a PEM cut short is refused at close, nothing imported.
    let text = std::fs::read(&pem).unwrap();
    let mut f = OpenOptions::new().write(true).open(&import).unwrap();
    std::io::Write::write_all(&mut f, b"byok2\n").unwrap();
    for c in text.chunks(7) {
        std::io::Write::write_all(&mut f, c).unwrap();
    }
    drop(f);
    assert!(m.mnt.join(".vault/keys/byok2").is_dir());
    let mut f = OpenOptions::new().write(true).open(&import).unwrap();
    std::io::Write::write_all(&mut f, b"byok3\n").unwrap();
    std::io::Write::write_all(&mut f, &text[..text.len() / 2]).unwrap();
    drop(f);
    // The last close is answered after close(2) returns: wait for its verdict.
    let last = || std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    Mounted::wait_for(LIMIT, || last().contains("keys/import")).expect("import refused");
    assert!(last().contains("PEM"), "{}", last());
    assert!(!m.mnt.join(".vault/keys/byok3").exists());
}

/// The CLI prints the error of its own operation, never another process's: replies
/// are bound to the writer's file handle.
#[test]
fn cli_errors_are_its_own() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let noise = {
        let stop = stop.clone();
        let path = m.mnt.join(".vault/keys/create");
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = std::fs::write(&path, "zz1 zzz=noise");
                n += 1;
            }
            n
        })
    };
    for _ in 0..30 {
        let e = run_err(&["key", "set", "k1", "--ops", "fly", "--store", &s]);
        assert!(e.contains("unknown key operation 'fly'"), "{e}");
        let e = run_err(&["disk", "delete", "nope", "--store", &s]);
        assert!(e.contains("no disk named 'nope'"), "{e}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(noise.join().unwrap() > 0);
    // The noise really did fill last-error meanwhile.
    let last = std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    assert!(last.contains("zzz"), "{last}");
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

/// The daemon log stays quiet: no fuser "[Not Implemented]" lines for Python's TCGETS
/// or xattr probes, no unmount warning on a clean unmount, and one line (not one per
/// request) for a handle that keeps failing on a revoked disk.
#[test]
fn daemon_log_stays_quiet() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[("q1", "1M", "Premium_LRS")]);
    let disk = m.disk("q1");
    let py = format!(
        "import os\nf=open('{0}','rb'); f.read(4); f.close()\n\
         try:\n    os.getxattr('{0}','security.selinux')\nexcept OSError: pass\n\
         try:\n    os.listxattr('{0}')\nexcept OSError: pass\n",
        disk.display()
    );
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(&py)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fd = File::open(&disk).unwrap();
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", &s]);
    let mut buf = [0u8; 512];
    for _ in 0..200 {
        assert_eq!(errno(fd.read_at(&mut buf, 0)), Some(libc::EIO));
    }
    drop(fd);
    m.umount();
    let log = log_text(&m);
    assert!(!log.contains("Not Implemented"), "{log}");
    assert!(!log.contains("Failed to umount"), "{log}");
    let per_request = log.lines().filter(|l| l.contains("read 'q1'")).count();
    assert!(
        per_request <= 2,
        "{per_request} lines for failed reads:\n{log}"
    );
    assert!(
        log.contains("more failed requests on a handle before it was closed"),
        "{log}"
    );
}

/// Fault injection exists only in `testing` builds: a release build without the
/// feature ignores DISKVAULT_FAULT, so it can't be told to kill itself.
#[test]
fn release_build_ignores_fault_injection() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let target = root.join("target/no-testing");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "build",
            "--release",
            "--offline",
            "--bin",
            "diskvault",
            "--target-dir",
        ])
        .arg(&target)
        .current_dir(root)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = target.join("release/diskvault");
    let dir = tempfile::tempdir().unwrap();
    let (store, mnt) = (dir.path().join("store"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    // In a testing build this kills the daemon at its first reconciler pass.
    let out = std::process::Command::new(&bin)
        .arg("mount")
        .arg(&store)
        .arg(&mnt)
        .env("DISKVAULT_FAULT", "reconcile.access=1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = Mounted::adopt(&store, &mnt);
    let passes = || status(&m)["reconcilerPasses"].as_u64().unwrap_or(0);
    Mounted::wait_for(LIMIT, || passes() >= 3).expect("the daemon lives on");
    assert!(!log_text(&m).contains("fault injection"));
}

/// bash writes each line of a printf separately: a later line on the same open file
/// is refused, never run as another command (a blank one is fine).
#[test]
fn one_command_per_open_file() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    let versions = || {
        js(&run_ok(&["key", "show", "k1", "--store", &s]))["versions"]
            .as_array()
            .unwrap()
            .len()
    };
    let sh = |cmd: &str| {
        std::process::Command::new("bash")
            .arg("-c")
            .arg(cmd)
            .current_dir(m.mnt.join(".vault"))
            .output()
            .unwrap()
    };
    let out = sh("printf '1\\n1\\n1\\n' > keys/k1/rotate");
    assert!(!out.status.success());
    assert_eq!(
        versions(),
        2,
        "only the first line rotates: {}",
        log_text(&m)
    );
    let out = sh("printf 'please do not\\n1\\n' > keys/k1/rotate");
    assert!(!out.status.success());
    assert_eq!(versions(), 2);
    let out = sh("printf 'd1 1M\\nd2 1M\\n' > disks/create");
    assert!(!out.status.success());
    assert!(m.disk("d1").exists() && !m.disk("d2").exists());
    // A final newline written on its own is not a command.
    let out = sh("{ printf '1'; printf '\\n'; } > keys/k1/rotate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(versions(), 3);
}

/// `diskvault umount` through a symlink to the mountpoint unmounts that mount.
#[test]
fn umount_through_a_symlink() {
    let mut m = Mounted::new();
    let link = m.dir.path().join("link");
    std::os::unix::fs::symlink(&m.mnt, &link).unwrap();
    run_ok(&["umount", link.to_str().unwrap()]);
    m.reap_dead_daemon();
    assert!(!m.mnt.join(".vault").exists());
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

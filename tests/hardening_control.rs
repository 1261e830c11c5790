//! Regression tests for what first users and an adversarial tester broke (issue 8),
//! the control tree, the CLI and the daemon: renames in .vault/, key import in several
//! writes, control replies bound to the writer, one command per open file, quiet logs,
//! no fault injection in release builds, and umount through a symlink. All on real
//! mounts.

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
    // The reply on the handle stays that of the command carried out.
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.mnt.join(".vault/keys/create"))
        .unwrap();
    f.write_all(b"w1").unwrap();
    let e = f.write_all(b"w2").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let mut buf = vec![0u8; 64 << 10];
    let n = f.read_at(&mut buf, 0).unwrap();
    let reply = String::from_utf8_lossy(&buf[..n]);
    assert!(
        reply.starts_with("ok\n") && reply.contains("\"name\": \"w1\""),
        "{reply}"
    );
    assert!(!m.mnt.join(".vault/keys/w2").exists());
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

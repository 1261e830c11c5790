//! `diskvault umount` is safe: it refuses what is not a diskvault mount, still clears
//! a dead one, and names the loop device that keeps a disk busy.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// What /proc/self/mountinfo says is mounted on `path` (fs type), if anything.
fn fstype_at(path: &Path) -> Option<String> {
    let want = path.to_str().unwrap();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .rev()
        .filter(|l| l.split(' ').nth(4) == Some(want))
        .find_map(|l| l.split_once(" - ")?.1.split(' ').next().map(String::from))
}

#[test]
fn umount_refuses_what_is_not_a_diskvault_mount() {
    let dir = tempfile::tempdir().unwrap();
    let t = Tmpfs::new(&dir.path().join("t"), "1M");
    std::fs::write(t.0.join("precious"), b"keep me").unwrap();

    let e = run_err(&["umount", t.0.to_str().unwrap()]);
    assert!(e.contains("not a diskvault mount"), "{e}");
    assert_eq!(
        fstype_at(&t.0).as_deref(),
        Some("tmpfs"),
        "tmpfs was unmounted"
    );
    assert_eq!(std::fs::read(t.0.join("precious")).unwrap(), b"keep me");

    // A plain directory is refused too, and so is a path inside a diskvault mount.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    let e = run_err(&["umount", plain.to_str().unwrap()]);
    assert!(e.contains("not mounted"), "{e}");
    let m = Mounted::new();
    let e = run_err(&["umount", m.mnt.join("disks").to_str().unwrap()]);
    assert!(e.contains("not mounted"), "{e}");
    assert!(
        m.mnt.join(".vault").is_dir(),
        "the diskvault mount was touched"
    );
}

#[test]
fn umount_still_clears_a_dead_diskvault_mount() {
    let mut m = Mounted::new();
    let pid = m.daemon_pid();
    // Safe because: kill takes plain integers.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let dead = Mounted::wait_for(Duration::from_secs(10), || {
        std::fs::metadata(&m.mnt)
            .err()
            .and_then(|e| e.raw_os_error())
            == Some(libc::ENOTCONN)
    });
    assert!(dead.is_some(), "the mount did not go dead after kill -9");
    m.umount();
    assert_eq!(fstype_at(&m.mnt), None, "the dead mount is still there");
}

/// A loop device on a file, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn umount_names_the_loop_device_that_holds_a_disk() {
    let mut m = Mounted::new();
    m.create("lo1", "16M");
    let out = Command::new("losetup")
        .args(["-f", "--show"])
        .arg(m.disk("lo1"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lo = Loop(String::from_utf8(out.stdout).unwrap().trim().to_string());

    let e = run_err(&["umount", m.mnt.to_str().unwrap()]);
    assert!(e.contains("busy") && e.contains(&lo.0), "{e}");
    assert!(e.contains(&format!("losetup -d {}", lo.0)), "{e}");
    assert!(m.mnt.join(".vault").is_dir(), "unmounted although busy");

    let sys = PathBuf::from("/sys/block")
        .join(lo.0.trim_start_matches("/dev/"))
        .join("loop/backing_file");
    drop(lo);
    // Detaching finishes asynchronously on some kernels.
    assert!(Mounted::wait_for(Duration::from_secs(10), || !sys.exists()).is_some());
    m.umount();
}

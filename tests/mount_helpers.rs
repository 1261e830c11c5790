//! mount-helpers/: `mount -t fuse.diskvault` and fstab lines through the mount(8)
//! helper (real FUSE mounts), its errors, the systemd units (`systemd-analyze verify`)
//! and install.sh.
//!
//! mount(8) runs helpers only from /sbin, so the tests that go through it link
//! /sbin/mount.fuse.diskvault and /sbin/mount.diskvault to this repository's script
//! while they run (as root), one test at a time.

mod common;

use common::*;
use serde_json::Value;
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn helpers_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("mount-helpers")
}

fn script() -> PathBuf {
    helpers_dir().join("mount.fuse.diskvault")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// While alive: /sbin/mount.fuse.diskvault and /sbin/mount.diskvault run this
/// repository's helper, and no other test (in this or another process) uses them.
struct SbinHelpers {
    _lock: std::fs::File,
    created: Vec<PathBuf>,
}

impl SbinHelpers {
    fn install() -> SbinHelpers {
        // Safe because: geteuid has no preconditions.
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "these tests install the helper in /sbin and mount with mount(8): run them as root"
        );
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(std::env::temp_dir().join("diskvault-test-sbin-helpers.lock"))
            .unwrap();
        // Safe because: the fd is open for the duration of the call.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let mut guard = SbinHelpers {
            _lock: lock,
            created: Vec::new(),
        };
        let want = std::fs::canonicalize(script()).unwrap();
        for name in ["mount.fuse.diskvault", "mount.diskvault"] {
            let p = Path::new("/sbin").join(name);
            if std::fs::symlink_metadata(&p).is_ok() {
                assert_eq!(
                    std::fs::canonicalize(&p).ok().as_deref(),
                    Some(want.as_path()),
                    "{} exists and is not this repository's helper; remove it \
                     (mount-helpers/install.sh --uninstall) to run these tests",
                    p.display()
                );
            } else {
                std::os::unix::fs::symlink(&want, &p).unwrap();
                guard.created.push(p);
            }
        }
        guard
    }
}

impl Drop for SbinHelpers {
    fn drop(&mut self) {
        for p in &self.created {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// A store and an empty mountpoint in a temporary directory.
struct Dirs {
    dir: tempfile::TempDir,
    store: PathBuf,
    mnt: PathBuf,
}

fn dirs() -> Dirs {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    Dirs { dir, store, mnt }
}

/// `diskvault init STORE [--vault DIR]`: the helper never creates a store by itself.
fn init(store: &Path, vault: Option<&Path>) {
    let mut args = vec!["init".as_ref(), store.as_os_str()];
    if let Some(v) = vault {
        args.push("--vault".as_ref());
        args.push(v.as_os_str());
    }
    let out = Command::new(bin()).args(&args).output().unwrap();
    assert!(out.status.success(), "init: {}", text(&out.stderr));
}

/// mount(8) with the test's binary.
fn mount8(args: &[&OsStr]) -> Output {
    Command::new("mount")
        .args(args)
        .env("DISKVAULT_BIN", bin())
        .output()
        .expect("run mount(8)")
}

/// What is mounted exactly at `mnt`: type, source and options (from findmnt).
fn mounted_at(mnt: &Path) -> Option<(String, String, String)> {
    let out = Command::new("findmnt")
        .args(["-n", "-o", "FSTYPE,SOURCE,OPTIONS", "--mountpoint"])
        .arg(mnt)
        .output()
        .expect("run findmnt");
    if !out.status.success() {
        return None;
    }
    let s = text(&out.stdout);
    let mut f = s.split_whitespace().map(String::from);
    Some((f.next()?, f.next()?, f.next()?))
}

/// Checks that a diskvault mount of `store` is up on `mnt` and answers.
fn assert_diskvault_mount(store: &Path, mnt: &Path) -> (String, String, String) {
    let m = mounted_at(mnt).unwrap_or_else(|| panic!("nothing is mounted on {}", mnt.display()));
    // As an fstab line has it, so that mount -a finds it mounted.
    assert_eq!(m.0, "fuse.diskvault", "mounted as {}", m.0);
    assert_eq!(
        m.1,
        std::fs::canonicalize(store).unwrap().display().to_string()
    );
    let status: Value =
        serde_json::from_slice(&std::fs::read(mnt.join(".vault/status.json")).unwrap()).unwrap();
    assert_eq!(status["store"], store.to_str().unwrap(), "{status}");
    m
}

/// The daemon's command line (it re-executes itself with every flag spelled out).
fn daemon_args(mnt: &Path) -> Vec<String> {
    let info: Value =
        serde_json::from_slice(&std::fs::read(mnt.join(".vault/daemon.json")).unwrap()).unwrap();
    let pid = info["pid"].as_i64().unwrap();
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(text)
        .collect()
}

fn has_flag(args: &[String], flag: &str, value: &str) -> bool {
    args.windows(2).any(|w| w[0] == flag && w[1] == value)
}

/// Waits until no process holds the store's lock: the daemon has flushed and exited.
fn wait_daemon_gone(store: &Path) {
    let lock = std::fs::File::open(store.join("lock")).unwrap();
    let free = Mounted::wait_for(Duration::from_secs(30), || {
        // Safe because: the fd is open for the duration of the call.
        let ok = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0;
        if ok {
            // Safe because: as above.
            unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_UN) };
        }
        ok
    });
    assert!(
        free.is_some(),
        "the daemon still holds the store after 30 s"
    );
}

/// Checks that a refused mount said why on one line and left nothing behind.
fn assert_refused(d: &Dirs, out: &Output, code: i32, names: &[&str]) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    for n in names {
        assert!(err.contains(n), "{n:?} not named in: {err}");
    }
    assert!(mounted_at(&d.mnt).is_none(), "mounted anyway");
    assert!(!d.store.exists(), "a refused mount created the store");
}

#[test]
fn mount_t_fuse_diskvault_maps_every_option() {
    let d = dirs();
    let vault = d.dir.path().join("vault");
    init(&d.store, Some(&vault));
    let _sbin = SbinHelpers::install();
    let mut m = Mounted::adopt(&d.store, &d.mnt);
    let opts = format!(
        "allow_other,revocation_delay=2s,auto_rotate_delay=1h,threads=3,readahead_kb=512,vault={},\
         _netdev,nofail,noatime,nodev,x-systemd.requires=x.service,comment=test",
        vault.display()
    );
    let out = mount8(&[
        "-t".as_ref(),
        "fuse.diskvault".as_ref(),
        d.store.as_os_str(),
        d.mnt.as_os_str(),
        "-o".as_ref(),
        opts.as_ref(),
    ]);
    assert!(out.status.success(), "mount: {}", text(&out.stderr));

    let (_, _, mount_opts) = assert_diskvault_mount(&d.store, &d.mnt);
    assert!(
        mount_opts.split(',').any(|o| o == "allow_other"),
        "allow_other not in the mount's options {mount_opts}"
    );
    let args = daemon_args(&d.mnt);
    assert!(
        has_flag(&args, "--revocation-delay", "2000ms"),
        "revocation_delay=2s did not reach the daemon: {args:?}"
    );
    assert!(
        has_flag(&args, "--auto-rotate-delay", "3600000ms"),
        "{args:?}"
    );
    assert!(has_flag(&args, "--threads", "3"), "{args:?}");
    assert!(has_flag(&args, "--readahead-kb", "512"), "{args:?}");
    // The daemon set the mount's readahead (the kernel's default is 128).
    let dev = std::os::unix::fs::MetadataExt::dev(&std::fs::metadata(&d.mnt).unwrap());
    let ra = format!(
        "/sys/class/bdi/{}:{}/read_ahead_kb",
        libc::major(dev),
        libc::minor(dev)
    );
    assert_eq!(std::fs::read_to_string(&ra).unwrap().trim(), "512", "{ra}");
    assert!(
        has_flag(&args, "--vault", vault.to_str().unwrap()),
        "{args:?}"
    );
    assert!(args.iter().any(|a| a == "--allow-other"), "{args:?}");
    // The store keeps its key vault where vault= said.
    let info: Value =
        serde_json::from_slice(&std::fs::read(d.mnt.join(".vault/daemon.json")).unwrap()).unwrap();
    assert_eq!(info["vault"], vault.to_str().unwrap());
    assert!(vault.join("vault.json").is_file());
    assert!(!d.store.join("vault").exists());

    m.umount();
    assert!(mounted_at(&d.mnt).is_none());
}

#[test]
fn mount_t_diskvault_alias_and_plain_umount() {
    let d = dirs();
    init(&d.store, None);
    let _sbin = SbinHelpers::install();
    let _m = Mounted::adopt(&d.store, &d.mnt);
    let out = mount8(&[
        "-t".as_ref(),
        "diskvault".as_ref(),
        d.store.as_os_str(),
        d.mnt.as_os_str(),
    ]);
    assert!(out.status.success(), "mount: {}", text(&out.stderr));
    assert_diskvault_mount(&d.store, &d.mnt);
    // Defaults when no option is given.
    let args = daemon_args(&d.mnt);
    assert!(has_flag(&args, "--revocation-delay", "0ms"), "{args:?}");
    assert!(!args.iter().any(|a| a == "--allow-other"), "{args:?}");

    // umount(8) works on it too; the daemon then flushes and exits.
    let out = Command::new("umount").arg(&d.mnt).output().unwrap();
    assert!(out.status.success(), "umount: {}", text(&out.stderr));
    assert!(mounted_at(&d.mnt).is_none());
    wait_daemon_gone(&d.store);
}

#[test]
fn fstab_line_mounts_with_mount_capital_t() {
    let d = dirs();
    init(&d.store, None);
    let fstab = d.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "# a test fstab\n{} {} fuse.diskvault \
             revocation_delay=2s,nofail,_netdev,x-systemd.automount,\
             x-systemd.requires=diskvault-test.service 0 0\n",
            d.store.display(),
            d.mnt.display()
        ),
    )
    .unwrap();
    let _sbin = SbinHelpers::install();
    let mut m = Mounted::adopt(&d.store, &d.mnt);
    let out = mount8(&["-T".as_ref(), fstab.as_os_str(), d.mnt.as_os_str()]);
    assert!(out.status.success(), "mount -T: {}", text(&out.stderr));
    assert_diskvault_mount(&d.store, &d.mnt);
    let args = daemon_args(&d.mnt);
    assert!(has_flag(&args, "--revocation-delay", "2000ms"), "{args:?}");
    m.umount();
    assert!(mounted_at(&d.mnt).is_none());
}

/// `mount -a` on a store that is already mounted is a no-op: the kernel shows the
/// mount as the fstab line has it (type `fuse.diskvault`, the store's path), so
/// mount(8) finds it; `findmnt -t fuse.diskvault` lists it; umount works after.
#[test]
fn mount_a_twice_is_a_no_op() {
    let d = dirs();
    init(&d.store, None);
    let fstab = d.dir.path().join("fstab");
    std::fs::write(
        &fstab,
        format!(
            "{} {} fuse.diskvault defaults 0 0\n",
            d.store.display(),
            d.mnt.display()
        ),
    )
    .unwrap();
    let _sbin = SbinHelpers::install();
    let mut m = Mounted::adopt(&d.store, &d.mnt);
    for _ in 0..2 {
        let out = mount8(&["-a".as_ref(), "-T".as_ref(), fstab.as_os_str()]);
        assert!(out.status.success(), "mount -a: {}", text(&out.stderr));
        assert_diskvault_mount(&d.store, &d.mnt);
    }
    let pid = daemon_args(&d.mnt);
    assert!(!pid.is_empty());
    // One mount, not two stacked.
    let out = Command::new("findmnt")
        .args(["-n", "-t", "fuse.diskvault", "-o", "TARGET"])
        .output()
        .unwrap();
    let listed = text(&out.stdout);
    assert_eq!(
        listed
            .lines()
            .filter(|l| l.trim() == d.mnt.to_str().unwrap())
            .count(),
        1,
        "{listed}"
    );
    m.umount();
    assert!(mounted_at(&d.mnt).is_none());
}

#[test]
fn unknown_or_malformed_options_are_refused_on_one_line() {
    let d = dirs();
    let _sbin = SbinHelpers::install();
    let _m = Mounted::adopt(&d.store, &d.mnt);
    let try_opts = |o: &str| {
        mount8(&[
            "-t".as_ref(),
            "fuse.diskvault".as_ref(),
            d.store.as_os_str(),
            d.mnt.as_os_str(),
            "-o".as_ref(),
            o.as_ref(),
        ])
    };
    // Exit 1: mount(8)'s "incorrect invocation". The valid options are listed.
    let out = try_opts("revocation_delay=2s,frobnicate,nofail");
    assert_refused(
        &d,
        &out,
        1,
        &["'frobnicate'", "allow_other", "revocation_delay", "vault="],
    );
    assert_refused(&d, &try_opts("threads=many"), 1, &["threads=many"]);
    assert_refused(&d, &try_opts("threads=1"), 1, &["threads=1", "2 to 64"]);
    assert_refused(&d, &try_opts("threads=65"), 1, &["threads=65", "2 to 64"]);
    assert_refused(
        &d,
        &try_opts("readahead_kb=2"),
        1,
        &["readahead_kb=2", "multiple of 4"],
    );
    assert_refused(
        &d,
        &try_opts("readahead_kb=99999999"),
        1,
        &["readahead_kb=99999999"],
    );
    assert_refused(
        &d,
        &try_opts("readahead_kb=lots"),
        1,
        &["readahead_kb=lots"],
    );
    assert_refused(&d, &try_opts("revocation_delay"), 1, &["revocation_delay"]);
    assert_refused(&d, &try_opts("ro"), 1, &["read-write"]);
    // A value only diskvault can judge: its own message, still one line.
    assert_refused(&d, &try_opts("revocation_delay=soon"), 1, &["'soon'"]);
}

#[test]
fn a_missing_store_is_refused_unless_create_is_asked_for() {
    let d = dirs();
    let _sbin = SbinHelpers::install();
    let mut m = Mounted::adopt(&d.store, &d.mnt);
    let mount = |opts: &str| {
        mount8(&[
            "-t".as_ref(),
            "fuse.diskvault".as_ref(),
            d.store.as_os_str(),
            d.mnt.as_os_str(),
            "-o".as_ref(),
            opts.as_ref(),
        ])
    };
    // A typo in fstab must not make a new, empty store.
    assert_refused(
        &d,
        &mount("nofail"),
        32,
        &["not a diskvault store", "diskvault init"],
    );
    let out = mount("create,nofail");
    assert!(
        out.status.success(),
        "mount -o create: {}",
        text(&out.stderr)
    );
    assert_diskvault_mount(&d.store, &d.mnt);
    m.umount();
}

#[test]
fn a_failed_mount_exits_32_with_diskvaults_message() {
    let d = dirs();
    std::fs::write(d.mnt.join("occupied"), b"x").unwrap();
    let _sbin = SbinHelpers::install();
    let _m = Mounted::adopt(&d.store, &d.mnt);
    let out = mount8(&[
        "-t".as_ref(),
        "fuse.diskvault".as_ref(),
        d.store.as_os_str(),
        d.mnt.as_os_str(),
    ]);
    // 32: mount(8)'s "mount failure".
    assert_refused(&d, &out, 32, &["not empty"]);
}

#[test]
fn mount_f_fakes_and_mount_s_tolerates() {
    let d = dirs();
    let _sbin = SbinHelpers::install();
    let _m = Mounted::adopt(&d.store, &d.mnt);
    let out = mount8(&[
        "-f".as_ref(),
        "-s".as_ref(),
        "-t".as_ref(),
        "fuse.diskvault".as_ref(),
        d.store.as_os_str(),
        d.mnt.as_os_str(),
        "-o".as_ref(),
        "revocation_delay=2s,frobnicate".as_ref(),
    ]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "mount -f -s: {err}");
    // -s: the unknown option is named and ignored; -f: the command is shown, not run.
    assert!(
        err.contains("ignoring unknown option 'frobnicate'"),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "{} mount --no-create --revocation-delay=2s -- {} {}",
            bin(),
            d.store.display(),
            d.mnt.display()
        )),
        "{err}"
    );
    assert!(mounted_at(&d.mnt).is_none());
    assert!(!d.store.exists());
}

/// Runs install.sh with `args`; it must succeed.
fn install_sh(args: &[&str]) -> String {
    let out = Command::new(helpers_dir().join("install.sh"))
        .args(args)
        .env("DISKVAULT_BIN", bin())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install.sh {args:?}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Every file and symlink under `root`, relative, sorted (directories left out).
fn files_under(root: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                walk(&p, root, out);
            } else {
                out.push(p.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut v = Vec::new();
    walk(root, root, &mut v);
    v.sort();
    v
}

#[test]
fn systemd_units_pass_systemd_analyze_verify() {
    match Command::new("systemd-analyze").arg("--version").output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("systemd-analyze --version failed: {}", text(&o.stderr)),
        Err(e) => panic!(
            "systemd-analyze is missing ({e}): install systemd (apt-get install systemd) \
             to check the units"
        ),
    }
    let dest = tempfile::tempdir().unwrap();
    let destdir = dest.path().to_str().unwrap();
    // verify checks that ExecStart= binaries exist at their run-time path: point
    // BINDIR at the test's binary.
    let bindir = Path::new(bin()).parent().unwrap().to_str().unwrap();
    install_sh(&[&format!("DESTDIR={destdir}"), &format!("BINDIR={bindir}")]);
    let units = dest.path().join("etc/systemd/system");
    for u in ["diskvault@.service", "diskvault-vm@.service"] {
        let t = std::fs::read_to_string(units.join(u)).unwrap();
        assert!(!t.contains("@BINDIR@"), "{u} still has @BINDIR@");
        assert!(
            t.contains(&format!("ExecStart={bindir}/diskvault ")),
            "{u}: ExecStart does not run {bindir}/diskvault"
        );
    }
    // Instances as `systemctl enable` links them, and the VM's drop-in that names its
    // store, as mount-helpers/README.md shows.
    std::os::unix::fs::symlink("diskvault@.service", units.join("diskvault@data.service")).unwrap();
    std::os::unix::fs::symlink(
        "diskvault-vm@.service",
        units.join("diskvault-vm@web1.service"),
    )
    .unwrap();
    let dropin = units.join("diskvault-vm@web1.service.d");
    std::fs::create_dir(&dropin).unwrap();
    std::fs::write(
        dropin.join("store.conf"),
        "[Unit]\nBindsTo=diskvault@data.service\nAfter=diskvault@data.service\n\
         [Service]\nEnvironmentFile=/etc/diskvault/data.conf\n",
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(units.join("diskvault@data.service"))
        .arg(units.join("diskvault-vm@web1.service"))
        .output()
        .unwrap();
    let said = format!("{}{}", text(&out.stdout), text(&out.stderr));
    assert!(
        out.status.success(),
        "systemd-analyze verify failed: {said}"
    );
    // verify only warns (and exits 0) about unknown keys and bad values: none may
    // name our units (other lines would be about the host's own units).
    let ours: Vec<&str> = said.lines().filter(|l| l.contains("diskvault")).collect();
    assert!(ours.is_empty(), "systemd-analyze verify: {ours:#?}");
}

#[test]
fn install_sh_installs_idempotently_and_uninstalls_everything() {
    let dest = tempfile::tempdir().unwrap();
    let d = dest.path();
    let destdir = format!("DESTDIR={}", d.display());
    let expected = [
        "etc/systemd/system/diskvault-vm@.service",
        "etc/systemd/system/diskvault@.service",
        "sbin/mount.diskvault",
        "sbin/mount.fuse.diskvault",
        "usr/local/bin/diskvault",
    ];
    install_sh(&[&destdir]);
    assert_eq!(files_under(d), expected);
    assert_eq!(
        std::fs::read(d.join("usr/local/bin/diskvault")).unwrap(),
        std::fs::read(bin()).unwrap(),
        "the installed binary differs"
    );
    assert_eq!(
        std::fs::read_link(d.join("sbin/mount.diskvault")).unwrap(),
        Path::new("mount.fuse.diskvault")
    );
    let helper = std::fs::read_to_string(d.join("sbin/mount.fuse.diskvault")).unwrap();
    assert!(helper.contains("installed='/usr/local/bin/diskvault'"));
    // Again: the same files, no leftovers (no temporary files).
    install_sh(&[&destdir]);
    assert_eq!(files_under(d), expected);
    install_sh(&["--uninstall", &destdir]);
    assert_eq!(files_under(d), Vec::<String>::new(), "left behind");
    install_sh(&["--uninstall", &destdir]);

    // Every directory can be moved; the helper then finds the binary in BINDIR.
    let bindir = Path::new(bin()).parent().unwrap().to_str().unwrap();
    let vars = [
        destdir.clone(),
        "PREFIX=/opt/dv".to_string(),
        format!("BINDIR={bindir}"),
        "SBINDIR=/usr/sbin".to_string(),
        "UNITDIR=/usr/lib/systemd/system".to_string(),
    ];
    let vars: Vec<&str> = vars.iter().map(String::as_str).collect();
    install_sh(&vars);
    let rel_bin = format!("{}/diskvault", bindir.trim_start_matches('/'));
    let mut expected = vec![
        "usr/lib/systemd/system/diskvault-vm@.service".to_string(),
        "usr/lib/systemd/system/diskvault@.service".to_string(),
        "usr/sbin/mount.diskvault".to_string(),
        "usr/sbin/mount.fuse.diskvault".to_string(),
        rel_bin,
    ];
    expected.sort();
    assert_eq!(files_under(d), expected);
    let out = Command::new(d.join("usr/sbin/mount.fuse.diskvault"))
        .args(["/s", "/m", "-f", "-o", "threads=2"])
        .env_remove("DISKVAULT_BIN")
        .env("PATH", "/usr/bin:/bin")
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains(&format!(
            "{bindir}/diskvault mount --no-create --threads=2 -- /s /m"
        )),
        "{err}"
    );
    let mut un = vars.clone();
    un.insert(0, "--uninstall");
    install_sh(&un);
    assert_eq!(files_under(d), Vec::<String>::new(), "left behind");
}

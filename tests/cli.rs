//! The command line itself: umount safety, help texts, az vocabulary, output formats,
//! progress without a terminal, closed pipes, relative paths.

mod common;

use common::*;
use serde_json::Value;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

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

/// Every argument and subcommand has help text.
#[test]
fn every_argument_has_help() {
    fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for a in cmd.get_arguments() {
            if a.get_help().is_none() && a.get_long_help().is_none() {
                missing.push(format!("{path} {}", a.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let p = format!("{path} {}", sub.get_name());
            if sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(format!("{p} (the subcommand)"));
            }
            walk(sub, &p, missing);
        }
    }
    let mut missing = Vec::new();
    walk(&diskvault::cli::command(), "diskvault", &mut missing);
    assert!(missing.is_empty(), "no help text for: {missing:#?}");
    diskvault::cli::command().debug_assert();
}

/// `--auto-rotate` takes an optional value on both `des create` and `des update`, and
/// az's `--enable-auto-key-rotation` is the same flag.
#[test]
fn auto_rotate_is_the_same_flag_on_create_and_update() {
    let m = Mounted::new();
    let s = m.s();
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", s]);
    let kid = js(&run_ok(&["key", "create", "k1", "--store", s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    let auto = |set: &str| {
        js(&run_ok(&["des", "show", set, "--store", s]))["rotationToLatestKeyVersionEnabled"]
            .as_bool()
            .unwrap()
    };
    run_ok(&[
        "des",
        "create",
        "a",
        "--key-url",
        "k1",
        "--auto-rotate",
        "--store",
        s,
    ]);
    assert!(auto("a"));
    run_ok(&[
        "des",
        "create",
        "b",
        "--key-url",
        &kid,
        "--auto-rotate",
        "false",
        "--store",
        s,
    ]);
    assert!(!auto("b"));
    run_ok(&[
        "des",
        "create",
        "c",
        "--key-url",
        "k1",
        "--enable-auto-key-rotation",
        "true",
        "--store",
        s,
    ]);
    assert!(auto("c"));
    run_ok(&["des", "update", "b", "--auto-rotate", "--store", s]);
    assert!(auto("b"));
    run_ok(&["des", "update", "b", "--auto-rotate", "false", "--store", s]);
    assert!(!auto("b"));
    run_ok(&[
        "des",
        "update",
        "b",
        "--enable-auto-key-rotation",
        "--store",
        s,
    ]);
    assert!(auto("b"));
    let e = run(&["des", "update", "b", "--auto-rotate", "maybe", "--store", s]);
    assert!(!e.status.success());
}

#[test]
fn az_vocabulary_is_accepted() {
    let m = Mounted::new();
    let s = m.s();
    // disk create: -n/--name, --size-gb, --encryption-type.
    let d = js(&run_ok(&[
        "disk",
        "create",
        "-n",
        "d1",
        "--size-gb",
        "2",
        "--encryption-type",
        "EncryptionAtRestWithPlatformKey",
        "--store",
        s,
    ]));
    assert_eq!(d["name"], "d1");
    assert_eq!(d["diskSizeBytes"], 2u64 << 30);
    let d = js(&run_ok(&["disk", "show", "--name", "d1", "--store", s]));
    assert_eq!(d["name"], "d1");
    let e = run_err(&[
        "disk",
        "create",
        "d2",
        "--size-gb",
        "1",
        "--encryption-type",
        "EncryptionAtRestWithCustomerKey",
        "--store",
        s,
    ]);
    assert!(e.contains("--disk-encryption-set"), "{e}");
    // Not both a positional name and --name, and not both sizes.
    assert!(
        !run(&["disk", "create", "x", "-n", "y", "--size", "1G", "--store", s])
            .status
            .success()
    );
    assert!(!run(&[
        "disk",
        "create",
        "x",
        "--size",
        "1G",
        "--size-gb",
        "1",
        "--store",
        s
    ])
    .status
    .success());

    // Keys: --expires, --not-before, --disabled.
    let k = js(&run_ok(&[
        "key",
        "create",
        "k1",
        "--expires",
        "2030-01-31",
        "--not-before",
        "2020-01-31",
        "--disabled",
        "--store",
        s,
    ]));
    assert_eq!(k["keyAttributes"]["enabled"], false);
    assert_eq!(k["attributes"]["expires"], "2030-01-31T00:00:00Z");
    assert_eq!(k["attributes"]["notBefore"], "2020-01-31T00:00:00Z");
    let k = js(&run_ok(&[
        "key",
        "set",
        "k1",
        "--disabled",
        "false",
        "--store",
        s,
    ]));
    assert_eq!(k["keyAttributes"]["enabled"], true);

    // --source-vault: this store's vault (by name, id or URL), nothing else.
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", s]);
    let vault = js(&run_ok(&["vault", "show", "--store", s]));
    let name = vault["name"].as_str().unwrap();
    let e = run_err(&[
        "des",
        "create",
        "set0",
        "--key-url",
        "k1",
        "--auto-rotate",
        "--source-vault",
        "someone-elses",
        "--store",
        s,
    ]);
    assert!(e.contains("someone-elses") && e.contains(name), "{e}");
    assert!(!run_ok(&["des", "list", "-o", "json", "--store", s]).contains("set0"));
    for (set, sv) in [
        ("set1", name.to_string()),
        ("set2", vault["id"].as_str().unwrap().to_string()),
        (
            "set3",
            vault["properties"]["vaultUri"]
                .as_str()
                .unwrap()
                .to_string(),
        ),
    ] {
        run_ok(&[
            "des",
            "create",
            set,
            "--key-url",
            "k1",
            "--enable-auto-key-rotation",
            "--source-vault",
            &sv,
            "--store",
            s,
        ]);
    }
    let e = run_err(&[
        "des",
        "update",
        "set1",
        "--auto-rotate",
        "false",
        "--source-vault",
        "other",
        "--store",
        s,
    ]);
    assert!(e.contains("other"), "{e}");

    // --encryption-type on create must match the set's type.
    run_ok(&["key", "grant", "k1", "--des", "set1", "--store", s]);
    let e = run_err(&[
        "disk",
        "create",
        "c2",
        "--size",
        "16M",
        "--disk-encryption-set",
        "set1",
        "--encryption-type",
        "EncryptionAtRestWithPlatformAndCustomerKeys",
        "--store",
        s,
    ]);
    assert!(e.contains("EncryptionAtRestWithCustomerKey"), "{e}");
    run_ok(&[
        "disk",
        "create",
        "c1",
        "--size",
        "16M",
        "--disk-encryption-set",
        "set1",
        "--encryption-type",
        "EncryptionAtRestWithCustomerKey",
        "--store",
        s,
    ]);
}

#[test]
fn output_formats_on_list_and_show() {
    let m = Mounted::new();
    let s = m.s();
    m.create("d1", "1G");
    m.create("d2", "512M");
    let j = js(&run_ok(&["disk", "list", "-o", "json", "--store", s]));
    assert_eq!(j.as_array().unwrap().len(), 2);
    let tsv = run_ok(&["disk", "list", "-o", "tsv", "--store", s]);
    let rows: Vec<Vec<&str>> = tsv.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(rows.len(), 2, "tsv has no header: {tsv}");
    let d1 = rows.iter().find(|r| r[0] == "d1").unwrap();
    assert_eq!(d1[1], (1u64 << 30).to_string());
    let table = run_ok(&["disk", "list", "-o", "table", "--store", s]);
    assert!(table.starts_with("NAME"), "{table}");

    let show = run_ok(&["disk", "show", "d1", "-o", "tsv", "--store", s]);
    assert_eq!(show.lines().count(), 1);
    assert!(show.split('\t').any(|c| c == "d1"), "{show}");
    let show = run_ok(&["disk", "show", "d1", "-o", "table", "--store", s]);
    assert_eq!(show.lines().count(), 2);
    assert!(show.contains("diskSizeBytes"), "{show}");
    assert_eq!(
        js(&run_ok(&["disk", "show", "d1", "-o", "json", "--store", s]))["name"],
        "d1"
    );

    run_ok(&["key", "create", "k1", "--store", s]);
    let keys = run_ok(&["key", "list", "-o", "tsv", "--store", s]);
    assert!(keys.starts_with("k1\ttrue\t2048\t1\thttps://"), "{keys}");
    assert_eq!(
        js(&run_ok(&["key", "list", "-o", "json", "--store", s]))[0]["name"],
        "k1"
    );
    let k = run_ok(&["key", "show", "k1", "-o", "table", "--store", s]);
    assert!(k.contains("keySize") && k.contains("2048"), "{k}");
    let v = run_ok(&["vault", "show", "-o", "tsv", "--store", s]);
    assert_eq!(v.lines().count(), 1);
    run_ok(&["key", "delete", "k1", "--store", s]);
    let del = run_ok(&["key", "list", "--deleted", "-o", "table", "--store", s]);
    assert!(del.starts_with("NAME") && del.contains("k1"), "{del}");
    assert!(run_ok(&["des", "list", "-o", "table", "--store", s]).starts_with("NAME"));
}

/// The table shows human sizes, encryption, set and key, key state and rekey state;
/// key disable, key delete and disk delete name the disks they reach.
#[test]
fn disk_list_details_and_affected_disks() {
    let m = Mounted::new();
    let s = m.s();
    m.create("plain", "30G");
    cmk_setup(&m, &[("c1", "64M", "Premium_LRS")]);
    run_ok(&["disk", "rekey", "c1", "--quiet", "--store", s]);

    let table = run_ok(&["disk", "list", "--store", s]);
    let header = table.lines().next().unwrap();
    for col in ["SIZE", "ENCRYPTION", "SET/KEY", "KEY STATE", "REKEY"] {
        assert!(header.contains(col), "{header}");
    }
    let row = |name: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}: {table}"))
            .to_string()
    };
    let plain = row("plain");
    assert!(
        plain.contains("30 GiB") && plain.contains("PlatformKey"),
        "{plain}"
    );
    assert!(
        plain.contains("Available") && plain.trim_end().ends_with('-'),
        "{plain}"
    );
    let c1 = row("c1");
    assert!(c1.contains("64 MiB") && c1.contains("CustomerKey"), "{c1}");
    assert!(
        c1.contains("set1 k1/") && c1.trim_end().ends_with("done"),
        "{c1}"
    );

    let out = run(&["key", "set", "k1", "--enabled", "false", "--store", s]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("c1 (Revoked") && !err.contains("plain"),
        "{err}"
    );
    let out = run(&["key", "set", "k1", "--enabled", "true", "--store", s]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("c1 (Available"));

    let out = run(&["key", "delete", "k1", "--store", s]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("c1 (Revoked"), "{err}");

    let out = run_ok(&["disk", "delete", "plain", "--store", s]);
    assert!(out.contains("plain") && out.contains("30 GiB"), "{out}");
}

/// Lines of `rekey NAME: P% (...)` in `stderr`, as percentages.
fn progress_lines(name: &str, stderr: &str) -> Vec<u64> {
    let prefix = format!("rekey {name}: ");
    stderr
        .lines()
        .map(|l| {
            let rest = l
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("not a progress line: {l:?}"));
            rest.split('%').next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn rekey_progress_without_a_terminal() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("r1", "64M");
    std::fs::write(m.disk("r1"), pattern(5, 64 << 20)).unwrap();

    // Mounted: the CLI polls the daemon.
    let out = run(&["disk", "rekey", "r1", "--store", &s]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("0 B/0 B"), "{err}");
    let p = progress_lines("r1", &err);
    assert_eq!(p.last(), Some(&100), "{err}");

    // Unmounted: progress comes per chunk; a line at every 5% step, not one per chunk.
    m.umount();
    let out = run(&["disk", "rekey", "r1", "--store", &s]);
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let p = progress_lines("r1", &err);
    assert!(p.len() >= 10 && p.len() <= 25, "{err}");
    assert!(p.windows(2).all(|w| w[0] < w[1]), "{err}");
    assert_eq!(p.last(), Some(&100), "{err}");

    let out = run(&["disk", "rekey", "r1", "--quiet", "--store", &s]);
    assert!(out.status.success() && out.stderr.is_empty());
}

/// `disk list | head` with the reader gone: no panic, no backtrace.
#[test]
fn closed_pipe_is_quiet() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("s");
    run_ok(&["init", store.to_str().unwrap()]);
    for cmd in [
        &["disk", "list"][..],
        &["key", "list", "-o", "json"],
        &["vault", "show"],
        &["disk", "list", "--help"],
    ] {
        let mut fds = [0i32; 2];
        // Safe because: `fds` is a valid two-element array for pipe to fill.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // Safe because: pipe just returned these fds and nothing else owns them.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(rd);
        let out = Command::new(bin())
            .args(cmd)
            .arg("--store")
            .arg(&store)
            .stdout(Stdio::from(wr))
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "{cmd:?} wrote to stderr: {err}");
        assert!(
            out.status.signal() == Some(libc::SIGPIPE) || out.status.success(),
            "{cmd:?}: {:?}",
            out.status
        );
    }
}

#[test]
fn init_with_a_relative_path_and_cleanup_on_failure() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin())
        .args(["init", "s"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.path().join("s/diskvault.json").is_file());
    let out = Command::new(bin())
        .args(["disk", "list", "--store", "s"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());

    // A failed init removes the directories it created, and only those.
    let out = Command::new(bin())
        .args(["init", "s2", "--vault", "v2", "--vault-name", "x"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!dir.path().join("s2").exists(), "s2 left behind");
    assert!(!dir.path().join("v2").exists(), "v2 left behind");
    std::fs::create_dir(dir.path().join("s3")).unwrap();
    let out = Command::new(bin())
        .args(["init", "s3", "--vault-name", "x"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        dir.path().join("s3").is_dir(),
        "an existing directory was removed"
    );
}

/// `key set --force` reaches the daemon: disabling a version that a stalled rotation
/// still needs is refused (EBUSY, naming --force) without it and goes through with it.
#[test]
fn key_set_force_disables_a_version_a_rotation_needs() {
    let m = Mounted::new();
    let s = m.s();
    let k1 = cmk_setup(&m, &[("d1", "1M", "Premium_LRS")]);
    run_ok(&["key", "create", "k2", "--store", s]);
    run_ok(&["key", "grant", "k2", "--des", "set1", "--store", s]);
    let k2 = js(&run_ok(&["key", "show", "k2", "--store", s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    // Stall the move to k2: k1's grant is gone, so d1 can't be re-wrapped.
    run_ok(&["key", "revoke-grant", "k1", "--des", "set1", "--store", s]);
    run_err(&["des", "update", "set1", "--key-url", &k2, "--store", s]);
    let v1 = k1.rsplit('/').next().unwrap();
    let enabled = || {
        std::fs::read_to_string(m.mnt.join(format!(".vault/keys/k1/versions/{v1}/enabled")))
            .unwrap()
    };
    let set = ["key", "set", "k1", "--version", v1, "--enabled", "false"];
    let e = run_err(&[&set[..], &["--store", s]].concat());
    assert!(e.contains("--force"), "{e}");
    assert!(enabled().starts_with("true"));
    run_ok(&[&set[..], &["--force", "--store", s]].concat());
    assert!(enabled().starts_with("false"));
}

/// A bad set name is reported as a disk encryption set's, not a disk's.
#[test]
fn des_create_names_the_set_in_a_name_error() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("st");
    let e = run_err(&[
        "des",
        "create",
        "bad!",
        "--key-url",
        "k1",
        "--store",
        s.to_str().unwrap(),
    ]);
    assert!(e.contains("invalid disk encryption set name 'bad!'"), "{e}");
}

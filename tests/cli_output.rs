//! What the command line prints: output formats on list and show, the disk table's
//! details and the disks a command reaches, rekey progress without a terminal, and
//! quiet exits on a closed pipe.

mod common;

use common::*;
use serde_json::Value;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
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
    // A table of one object is readable: a row per field, nested ones by path, so
    // the encryption is there (one very wide row left it out).
    let show = run_ok(&["disk", "show", "d1", "-o", "table", "--store", s]);
    assert!(show.lines().count() > 10, "{show}");
    assert!(show.lines().all(|l| l.len() < 200), "{show}");
    assert!(
        show.lines().any(|l| l.starts_with("diskSizeBytes")),
        "{show}"
    );
    assert!(
        show.lines()
            .any(|l| l.starts_with("encryption.type")
                && l.contains("EncryptionAtRestWithPlatformKey")),
        "{show}"
    );
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
    let v = run_ok(&["vault", "show", "-o", "table", "--store", s]);
    assert!(
        v.lines()
            .any(|l| l.starts_with("properties.enablePurgeProtection")),
        "{v}"
    );
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

//! What a new user tripped over, each checked: key show's `attributes`, sizes as az
//! reads them, `key set --version URL`, ids for `vm disk attach --name`, a grant's
//! display name, `disk delete` asking on a terminal.

mod common;
use common::*;
use serde_json::Value;
use std::process::{Command, Stdio};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn key_show_tells_the_truth_in_attributes() {
    let m = Mounted::new();
    let s = m.s();
    run_ok(&["key", "create", "k1", "--store", s]);
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", s]);
    let k = json(&run_ok(&["key", "show", "k1", "--store", s]));
    assert_eq!(k["attributes"]["enabled"], false, "{k}");
    assert_eq!(k["keyAttributes"]["enabled"], false, "{k}");
    run_ok(&["key", "set", "k1", "--enabled", "true", "--store", s]);
    // A version given as its key URL, as every other option takes it.
    let kid = json(&run_ok(&["key", "show", "k1", "--store", s]))["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&["key", "rotate", "k1", "--store", s]);
    run_ok(&[
        "key",
        "set",
        "k1",
        "--version",
        &kid,
        "--enabled",
        "false",
        "--store",
        s,
    ]);
    let old = json(&run_ok(&[
        "key",
        "show",
        "k1",
        "--version",
        kid.rsplit('/').next().unwrap(),
        "--store",
        s,
    ]));
    assert_eq!(old["attributes"]["enabled"], false, "{old}");
    let k = json(&run_ok(&["key", "show", "k1", "--store", s]));
    assert_eq!(k["attributes"]["enabled"], true, "the current version: {k}");
    let other = kid.replace("/keys/k1/", "/keys/k2/");
    let e = run_err(&[
        "key",
        "set",
        "k1",
        "--version",
        &other,
        "--enabled",
        "true",
        "--store",
        s,
    ]);
    assert!(e.contains("not of 'k1'"), "{e}");
}

#[test]
fn sizes_are_read_as_az_reads_them() {
    let m = Mounted::new();
    let s = m.s();
    // A bare number is GiB, in the CLI and in the control file.
    run_ok(&["disk", "create", "d30", "--size", "30", "--store", s]);
    assert_eq!(std::fs::metadata(m.disk("d30")).unwrap().len(), 30 << 30);
    std::fs::write(m.mnt.join(".vault/disks/create"), "c2 2").unwrap();
    assert_eq!(std::fs::metadata(m.disk("c2")).unwrap().len(), 2 << 30);
    run_ok(&["disk", "create", "b", "--size", "4096B", "--store", s]);
    assert_eq!(std::fs::metadata(m.disk("b")).unwrap().len(), 4096);
    for (size, want) in [
        ("1000B", "512-byte sectors"),
        ("1.5G", "1536M"),
        ("30X", "a bare number is GiB"),
    ] {
        let e = run_err(&["disk", "create", "x", "--size", size, "--store", s]);
        assert!(e.contains(want), "{size}: {e}");
    }
    let e = run_err(&["disk", "create", "x", "--size-gb", "0", "--store", s]);
    assert!(e.contains("at least 1"), "{e}");
    let e = std::fs::write(m.mnt.join(".vault/disks/create"), "x 1000B").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(!m.disk("x").exists());
    // A disk truncated to an odd size keeps POSIX semantics, but no VM takes it.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.disk("b"))
        .unwrap();
    f.set_len(1000).unwrap();
    drop(f);
    assert_eq!(std::fs::metadata(m.disk("b")).unwrap().len(), 1000);
    let exe = std::env::current_exe().unwrap();
    run_ok(&[
        "vm",
        "create",
        "v1",
        "--kernel",
        exe.to_str().unwrap(),
        "--no-start",
        "--store",
        s,
    ]);
    let e = run_err(&[
        "vm",
        "disk",
        "attach",
        "--vm-name",
        "v1",
        "--name",
        "b",
        "--store",
        s,
    ]);
    assert!(
        e.contains("512-byte sectors") && e.contains("truncate"),
        "{e}"
    );
    let e = run_err(&[
        "vm",
        "create",
        "v2",
        "--attach-os-disk",
        "b",
        "--no-start",
        "--store",
        s,
    ]);
    assert!(e.contains("512-byte sectors"), "{e}");
    // The disk's id works where its name does.
    let id = run_ok(&[
        "disk", "show", "c2", "--query", "id", "-o", "tsv", "--store", s,
    ]);
    let v = json(&run_ok(&[
        "vm",
        "disk",
        "attach",
        "--vm-name",
        "v1",
        "--name",
        id.trim(),
        "--store",
        s,
    ]));
    assert_eq!(v["storageProfile"]["dataDisks"][0]["name"], "c2", "{v}");
}

#[test]
fn a_grant_by_object_id_names_the_set() {
    let m = Mounted::new();
    let s = m.s();
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", s]);
    run_ok(&["key", "create", "k1", "--store", s]);
    run_ok(&[
        "des",
        "create",
        "set1",
        "--key-url",
        "k1",
        "--auto-rotate",
        "--store",
        s,
    ]);
    let p = json(&run_ok(&["des", "show", "set1", "--store", s]))["identity"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    run_ok(&["key", "grant", "k1", "--object-id", &p, "--store", s]);
    let k = json(&run_ok(&["key", "show", "k1", "--store", s]));
    assert_eq!(
        k["grants"][0]["displayName"], "diskEncryptionSets/set1",
        "{k}"
    );
}

/// `disk delete` on a terminal asks, as az does; --yes doesn't; without a terminal it
/// proceeds (scripts). `script` gives the command a terminal.
#[test]
fn disk_delete_asks_on_a_terminal() {
    let m = Mounted::new();
    let s = m.s().to_string();
    for d in ["d1", "d2", "d3"] {
        m.create(d, "1M");
    }
    let on_tty = |cmd: &str, answer: &str| {
        let mut c = Command::new("script")
            .args(["-qec", cmd, "/dev/null"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        c.stdin
            .take()
            .unwrap()
            .write_all(answer.as_bytes())
            .unwrap();
        let out = c.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
        )
    };
    let (ok, out) = on_tty(&format!("{} disk delete d1 --store {s}", bin()), "n\n");
    assert!(!ok && out.contains("Are you sure"), "{out}");
    assert!(m.disk("d1").exists());
    let (ok, out) = on_tty(&format!("{} disk delete d1 --store {s}", bin()), "y\n");
    assert!(ok, "{out}");
    assert!(!m.disk("d1").exists());
    let (ok, out) = on_tty(&format!("{} disk delete d2 --yes --store {s}", bin()), "");
    assert!(ok && !out.contains("Are you sure"), "{out}");
    assert!(!m.disk("d2").exists());
    // No terminal: as before.
    run_ok(&["disk", "delete", "d3", "--store", &s]);
    assert!(!m.disk("d3").exists());
}

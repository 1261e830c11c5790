//! The command line's arguments: help texts, az vocabulary, `--auto-rotate` on
//! create and update, `--force`, relative paths and cleanup in init, and name errors
//! that name the right kind of thing.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
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

/// A command-line mistake is one line naming it and the help to read, exit 2.
#[test]
fn usage_errors_are_one_line() {
    for (args, want) in [
        (
            vec![
                "vm",
                "disk",
                "attach",
                "--vm-name",
                "v",
                "--name",
                "d",
                "--lun",
                "64",
                "--store",
                "/x",
            ],
            "'diskvault vm disk attach --help'",
        ),
        (vec!["vm", "show"], "--store"),
        (
            vec!["mount", "--revocation-delay", "99999999999999h", "/a", "/b"],
            "366d",
        ),
        (vec!["bogus"], "'bogus'"),
        // Each FUSE thread keeps a 16 MiB request buffer: thousands would exhaust memory.
        (
            vec!["mount", "--threads", "100000", "/a", "/b"],
            "from 2 to 64",
        ),
        (
            vec!["mount", "--threads", "99999999999999999999", "/a", "/b"],
            "from 2 to 64",
        ),
        (
            vec!["mount", "--threads", "-1", "/a", "/b"],
            "'-1' is not a number of worker threads",
        ),
        // One worker can't serve a revocation's wait for the disk's requests in flight.
        (vec!["mount", "--threads", "1", "/a", "/b"], "from 2 to 64"),
        (
            vec!["mount", "--readahead-kb", "99999999", "/a", "/b"],
            "from 0 to 65536",
        ),
        (
            vec!["mount", "--readahead-kb", "-1", "/a", "/b"],
            "'-1' is not a readahead",
        ),
        // The kernel counts whole pages: 2 KiB would turn readahead off.
        (
            vec!["mount", "--readahead-kb", "2", "/a", "/b"],
            "a multiple of 4",
        ),
        (
            vec!["mount", "--readahead-kb", "1023", "/a", "/b"],
            "a multiple of 4",
        ),
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    // Help is still help.
    let out = run(&["vm", "--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: diskvault vm"));
}

/// `--help` of a benchmark script prints its header and starts nothing (it used to
/// start the benchmark); `timeout` turns a started benchmark into a failure.
#[test]
fn bench_scripts_help_starts_nothing() {
    for s in ["bench-keys", "bench-snapshots", "bench-vm"] {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("scripts")
            .join(s);
        let out = std::process::Command::new("timeout")
            .arg("10")
            .arg("bash")
            .arg(&path)
            .arg("--help")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{s} --help: {:?}", out.status);
        assert!(text.to_lowercase().contains("benchmark"), "{s}: {text}");
        assert!(!text.contains("#!/"), "{s}: {text}");
    }
}

//! Replies are bound to the caller: concurrent CLI clients of one mounted store each
//! get their own command's outcome, never another's (the reply is read back on the
//! handle that carried the command, not from the shared last-error).

mod common;
use common::*;
use std::sync::{Arc, Barrier};

const ROUNDS: usize = 200;

#[test]
fn concurrent_cli_clients_each_get_their_own_reply() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    m.create("d1", "1M");
    m.create("d2", "1M");

    // Two clients whose commands the daemon refuses, each for its own reason, and
    // one whose commands succeed, all at once.
    type Check = fn(&std::process::Output) -> Result<(), String>;
    let clients: Vec<(Vec<&str>, Check)> = vec![
        (vec!["disk", "create", "d1", "--size", "1M"], |o| {
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() || !err.contains("a disk named 'd1' already exists") {
                return Err(format!("create d1: {err}"));
            }
            Ok(())
        }),
        (vec!["key", "rotate", "k1", "--size", "1234"], |o| {
            let err = String::from_utf8_lossy(&o.stderr);
            if o.status.success() || !err.contains("1234") || err.contains("d1") {
                return Err(format!("rotate --size 1234: {err}"));
            }
            Ok(())
        }),
        (vec!["disk", "update", "d2", "--sku", "Standard_LRS"], |o| {
            let err = String::from_utf8_lossy(&o.stderr);
            if !o.status.success() {
                return Err(format!("update d2 failed: {err}"));
            }
            Ok(())
        }),
    ];
    let start = Arc::new(Barrier::new(clients.len()));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|(args, check)| {
            let mut args: Vec<String> = args.into_iter().map(String::from).collect();
            args.extend(["--store".to_string(), s.clone()]);
            let start = start.clone();
            std::thread::spawn(move || {
                let refs: Vec<&str> = args.iter().map(|a| a.as_str()).collect();
                start.wait();
                let mut wrong = Vec::new();
                for _ in 0..ROUNDS {
                    if let Err(e) = check(&run(&refs)) {
                        wrong.push(e);
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} of {} outcomes were not the client's own, e.g. {:?}",
        wrong.len(),
        3 * ROUNDS,
        &wrong[..wrong.len().min(3)]
    );
    // Both refusals went to last-error too, for people using echo.
    let last = std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    assert!(
        last.contains("already exists") || last.contains("1234"),
        "{last}"
    );
}

/// Through a mount a name stays a name: `k1/../k1` or `../../x` never reaches
/// `keys/k1` or a file outside the tree, for commands or for shows.
#[test]
fn a_name_cannot_walk_the_mounted_tree() {
    let m = Mounted::new();
    run_ok(&["key", "create", "k1", "--store", m.s()]);
    let outside = m.dir.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("status.json"), r#"{"name":"FORGED"}"#).unwrap();
    std::fs::write(outside.join("disk.json"), r#"{"name":"FORGED"}"#).unwrap();
    for args in [
        vec!["key", "delete", "k1/../k1"],
        vec!["key", "set", "x/../k1", "--enabled", "false"],
        vec!["des", "show", "../../../outside"],
        vec!["disk", "show", "../../../outside"],
        vec!["des", "show", ".."],
    ] {
        let mut a = args.clone();
        a.extend(["--store", m.s()]);
        let err = run_err(&a);
        assert!(!err.contains("FORGED"), "{args:?}: {err}");
    }
    let k = run_ok(&["key", "show", "k1", "--store", m.s()]);
    assert!(k.contains("\"enabled\": true"), "{k}");
}

/// What a command prints is its own result: eight clients set eight expiry times on
/// one key at once, and each prints the time it set.
#[test]
fn concurrent_cli_clients_each_print_their_own_result() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    let start = Arc::new(Barrier::new(8));
    let threads: Vec<_> = (1..=8)
        .map(|i| {
            let (s, start) = (s.clone(), start.clone());
            std::thread::spawn(move || {
                let exp = format!("2030-01-0{i}T00:00:00Z");
                start.wait();
                let mut wrong = Vec::new();
                for _ in 0..25 {
                    let out = run_ok(&["key", "set", "k1", "--exp", &exp, "--store", &s]);
                    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
                    if v["keyAttributes"]["expires"] != exp.as_str() {
                        wrong.push(format!(
                            "set {exp}, printed {}",
                            v["keyAttributes"]["expires"]
                        ));
                    }
                }
                wrong
            })
        })
        .collect();
    let wrong: Vec<String> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    assert!(
        wrong.is_empty(),
        "{} wrong, e.g. {:?}",
        wrong.len(),
        &wrong[..wrong.len().min(3)]
    );
}

/// Permission is checked when a control file is opened, so a command written through
/// a handle that root opened and passed to another user is root's, and audited so.
#[test]
fn a_passed_handle_acts_as_its_opener() {
    let m = Mounted::new();
    let script = format!(
        "exec 3<>'{}/.vault/keys/create' && setpriv --reuid=65534 --regid=65534 --clear-groups sh -c 'printf nb1 >&3'",
        m.mnt.display()
    );
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let audit = std::fs::read_to_string(m.mnt.join(".vault/audit.log")).unwrap();
    let create = audit
        .lines()
        .find(|l| l.contains("\"operationName\":\"KeyCreate\""))
        .expect("the create is audited");
    assert!(create.contains("local-uid-0"), "{create}");
    assert!(!create.contains("65534"), "{create}");
}

//! VM scale sets without a guest: the model, scale out and in, bad input, and kill -9
//! at every step of create, scale and delete (the next open shows the set as it was
//! recorded, with no orphan instance or disk). The guest test is in tests/runbook.rs.

mod common;
use common::*;
use serde_json::Value;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

/// An unmounted store with an image and a customer-key set.
fn lab() -> (tempfile::TempDir, String) {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("store").display().to_string();
    run_ok(&["init", &s]);
    run_ok(&["disk", "create", "base", "--size", "4M", "--store", &s]);
    run_ok(&["image", "create", "img", "--source", "base", "--store", &s]);
    run_ok(&[
        "keyvault",
        "update",
        "--enable-purge-protection",
        "--store",
        &s,
    ]);
    run_ok(&["keyvault", "key", "create", "-n", "k1", "--store", &s]);
    run_ok(&[
        "des",
        "create",
        "set1",
        "--key-url",
        "k1",
        "--auto-rotate",
        "--store",
        &s,
    ]);
    run_ok(&["key", "grant", "k1", "--des", "set1", "--store", &s]);
    (d, s)
}

fn create_args<'a>(s: &'a str, name: &'a str, count: &'a str) -> Vec<&'a str> {
    vec![
        "vmss",
        "create",
        "-n",
        name,
        "--image",
        "img",
        "--instance-count",
        count,
        "--os-disk-encryption-set",
        "set1",
        "--data-disk-sizes-gb",
        "1",
        "2",
        "--data-disk-encryption-sets",
        "set1",
        "set1",
        "--no-start",
        "--store",
        s,
    ]
}

/// Disk and VM names of the store that belong to scale set `name`.
fn owned(s: &str, name: &str) -> (Vec<String>, Vec<String>) {
    let prefix = format!("{name}_");
    let disks = run_ok(&["disk", "list", "-o", "tsv", "--store", s])
        .lines()
        .filter_map(|l| l.split('\t').next())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect();
    let vms = json(&run_ok(&["vm", "list", "-o", "json", "--store", s]))
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .filter(|n| n.starts_with(&prefix))
        .map(String::from)
        .collect();
    (disks, vms)
}

fn killed_at(args: &[&str], point: &str) {
    let out = Command::new(bin())
        .args(args)
        .env("DISKVAULT_FAULT", point)
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{point}: not killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn scale_sets_follow_their_model_out_and_in() {
    let (_d, s) = lab();
    let v = json(&run_ok(&create_args(&s, "ss", "3")));
    assert_eq!(v["sku"]["capacity"], 3);
    assert_eq!(v["instanceIds"], serde_json::json!(["0", "1", "2"]));
    let (disks, vms) = owned(&s, "ss");
    assert_eq!((disks.len(), vms.len()), (9, 3), "{disks:?} {vms:?}");
    let d = json(&run_ok(&[
        "disk",
        "show",
        "-n",
        "ss_2_DataDisk_1",
        "--store",
        &s,
    ]));
    assert_eq!(d["diskSizeGB"], 2);
    assert_eq!(d["encryption"]["type"], "EncryptionAtRestWithCustomerKey");
    assert!(d["managedBy"]
        .as_str()
        .unwrap()
        .ends_with("/virtualMachines/ss_2"));
    // In from the highest id; out with new ids after the highest.
    run_ok(&[
        "vmss",
        "scale",
        "-n",
        "ss",
        "--new-capacity",
        "1",
        "--store",
        &s,
    ]);
    let v = json(&run_ok(&["vmss", "show", "-n", "ss", "--store", &s]));
    assert_eq!(v["instanceIds"], serde_json::json!(["0"]));
    run_ok(&[
        "vmss",
        "scale",
        "-n",
        "ss",
        "--new-capacity",
        "2",
        "--store",
        &s,
    ]);
    let v = json(&run_ok(&["vmss", "show", "-n", "ss", "--store", &s]));
    assert_eq!(v["instanceIds"], serde_json::json!(["0", "1"]));
    let inst = json(&run_ok(&[
        "vmss",
        "list-instances",
        "-n",
        "ss",
        "--store",
        &s,
    ]));
    assert_eq!(inst[1]["instanceId"], "1");
    assert_eq!(
        inst[1]["storageProfile"]["dataDisks"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    // An instance is deleted through its set, not as a VM.
    let e = run_err(&["vm", "delete", "-n", "ss_0", "--store", &s]);
    assert!(e.contains("vmss delete-instances"), "{e}");
    run_ok(&[
        "vmss",
        "delete-instances",
        "-n",
        "ss",
        "--instance-ids",
        "0",
        "--store",
        &s,
    ]);
    assert_eq!(owned(&s, "ss").1, vec!["ss_1".to_string()]);
    run_ok(&["vmss", "delete", "-n", "ss", "--store", &s]);
    assert_eq!(owned(&s, "ss"), (vec![], vec![]));
    assert!(run_err(&["vmss", "show", "-n", "ss", "--store", &s]).contains("no VM scale set"));
}

#[test]
fn bad_input_is_refused_and_makes_nothing() {
    let (_d, s) = lab();
    let before = (
        run_ok(&["disk", "list", "-o", "tsv", "--store", &s]),
        run_ok(&["vm", "list", "-o", "tsv", "--store", &s]),
    );
    for (args, want) in [
        (vec!["--instance-count", "101"], "out of range"),
        (vec!["--upgrade-policy", "sometimes"], "upgrade policy"),
        (vec!["--vm-sku", "Standard_Huge"], "Standard_Huge"),
        (vec!["--data-disk-encryption-sets", "set1"], "mismatches"),
        (
            vec!["--data-disk-encryption-sets", "nosuch", "nosuch"],
            "nosuch",
        ),
        (vec!["-l", "eastus"], "LocationMismatch"),
        (vec!["--admin-username", "root"], "admin-username"),
    ] {
        let mut a = vec![
            "vmss",
            "create",
            "-n",
            "bad",
            "--image",
            "img",
            "--os-disk-encryption-set",
            "set1",
            "--data-disk-sizes-gb",
            "1",
            "2",
            "--no-start",
            "--store",
            &s,
        ];
        a.extend(args.iter());
        let e = run_err(&a);
        assert!(e.contains(want), "{args:?}: {e}");
        assert!(run_err(&["vmss", "show", "-n", "bad", "--store", &s]).contains("no VM scale set"));
    }
    let e = run_err(&[
        "vmss",
        "create",
        "-n",
        "bad_set/x",
        "--image",
        "img",
        "--store",
        &s,
    ]);
    assert!(e.contains("scale set name"), "{e}");
    let e = run_err(&[
        "vmss",
        "scale",
        "-n",
        "nosuch",
        "--new-capacity",
        "1",
        "--store",
        &s,
    ]);
    assert!(e.contains("no VM scale set"), "{e}");
    let after = (
        run_ok(&["disk", "list", "-o", "tsv", "--store", &s]),
        run_ok(&["vm", "list", "-o", "tsv", "--store", &s]),
    );
    assert_eq!(before, after, "a refused create changed something");
}

#[test]
fn kill_9_at_every_step_leaves_the_set_as_recorded() {
    // Create: killed once the record exists, after one instance, after both: the next
    // open shows no set and no instance or disk of it.
    for point in ["vmss.recorded=1", "vmss.instance=1", "vmss.instance=2"] {
        let (_d, s) = lab();
        killed_at(&create_args(&s, "ss", "2"), point);
        assert!(
            run_err(&["vmss", "show", "-n", "ss", "--store", &s]).contains("no VM scale set"),
            "{point}"
        );
        assert_eq!(owned(&s, "ss"), (vec![], vec![]), "{point}");
        // The name is free again.
        run_ok(&create_args(&s, "ss", "1"));
    }
    // Scale out, killed after the first new instance: back to the one recorded.
    let (_d, s) = lab();
    run_ok(&create_args(&s, "ss", "1"));
    killed_at(
        &[
            "vmss",
            "scale",
            "-n",
            "ss",
            "--new-capacity",
            "3",
            "--store",
            &s,
        ],
        "vmss.instance=1",
    );
    let v = json(&run_ok(&["vmss", "show", "-n", "ss", "--store", &s]));
    assert_eq!(v["instanceIds"], serde_json::json!(["0"]));
    assert_eq!(v["provisioningState"], "Succeeded");
    assert_eq!(owned(&s, "ss").0.len(), 3, "{:?}", owned(&s, "ss"));
    // Scale in, killed after the first removal: the removal the record asked for is
    // finished.
    run_ok(&[
        "vmss",
        "scale",
        "-n",
        "ss",
        "--new-capacity",
        "3",
        "--store",
        &s,
    ]);
    killed_at(
        &[
            "vmss",
            "scale",
            "-n",
            "ss",
            "--new-capacity",
            "1",
            "--store",
            &s,
        ],
        "vmss.removed=1",
    );
    let v = json(&run_ok(&["vmss", "show", "-n", "ss", "--store", &s]));
    assert_eq!(v["instanceIds"], serde_json::json!(["0"]));
    assert_eq!(
        owned(&s, "ss"),
        (
            vec![
                "ss_0_DataDisk_0".to_string(),
                "ss_0_DataDisk_1".into(),
                "ss_0_OsDisk".into()
            ],
            vec!["ss_0".to_string()]
        )
    );
    // Delete, killed after the first instance: finished at the next open.
    run_ok(&[
        "vmss",
        "scale",
        "-n",
        "ss",
        "--new-capacity",
        "2",
        "--store",
        &s,
    ]);
    killed_at(
        &["vmss", "delete", "-n", "ss", "--store", &s],
        "vmss.removed=1",
    );
    run_ok(&["disk", "list", "--store", &s]);
    assert_eq!(owned(&s, "ss"), (vec![], vec![]));
    assert!(run_err(&["vmss", "show", "-n", "ss", "--store", &s]).contains("no VM scale set"));
}

/// A record whose name is not its file's, or that can't be read, deletes nothing of
/// another set; the list says which is broken; delete still cleans up its instances.
#[test]
fn a_bad_record_touches_no_other_set() {
    let (d, s) = lab();
    run_ok(&create_args(&s, "ss1", "1"));
    run_ok(&create_args(&s, "c3", "1"));
    let dir = d.path().join("store/vmss");
    let c3 = std::fs::read_to_string(dir.join("c3.json")).unwrap();
    std::fs::write(
        dir.join("c3.json"),
        c3.replace("\"name\": \"c3\"", "\"name\": \"ss1\""),
    )
    .unwrap();
    let e = run_err(&["vmss", "show", "-n", "c3", "--store", &s]);
    assert!(e.contains("names scale set 'ss1'"), "{e}");
    // Its delete removes only what names c3 (its instance), never ss1's.
    run_ok(&["vmss", "delete", "-n", "c3", "--store", &s]);
    assert_eq!(owned(&s, "c3"), (vec![], vec![]));
    assert_eq!(owned(&s, "ss1").1, vec!["ss1_0".to_string()]);
    assert_eq!(owned(&s, "ss1").0.len(), 3);
    run_ok(&create_args(&s, "c3", "1"));
    // Unreadable: listed with why; delete removes the instances that name it.
    std::fs::write(dir.join("c3.json"), "{trunc").unwrap();
    let list = json(&run_ok(&["vmss", "list", "-o", "json", "--store", &s]));
    let bad = list
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["name"] == "c3")
        .cloned()
        .unwrap();
    assert!(bad["error"].as_str().unwrap().contains("corrupt"), "{bad}");
    run_ok(&["vmss", "delete", "-n", "c3", "--store", &s]);
    assert_eq!(owned(&s, "c3"), (vec![], vec![]));
    assert_eq!(owned(&s, "ss1").1, vec!["ss1_0".to_string()]);
}

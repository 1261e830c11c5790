//! az's frame on every command: global arguments (--query, -o, -g, -l,
//! --subscription, --ids), Azure-shaped ids and their checks, vault-wide policies and
//! roles, and az paths that are the same requests as the short commands. The seed
//! runbook itself runs in tests/runbook.rs.

mod common;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}
#[test]
fn az_global_arguments_and_ids() {
    let m = Mounted::new();
    let s = m.s().to_string();
    // --query and every output format, on one show.
    run_ok(&[
        "disk", "create", "d1", "--size", "1M", "-g", "rg1", "-l", "West US", "--store", &s,
    ]);
    let id = run_ok(&[
        "disk", "show", "-n", "d1", "--query", "[id]", "-o", "tsv", "--store", &s,
    ]);
    let sub = json(&run_ok(&["account", "show", "--store", &s]))["id"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        id.trim(),
        format!("/subscriptions/{sub}/resourceGroups/rg1/providers/Microsoft.Compute/disks/d1")
    );
    // A multiselect hash keeps the query's order, as az prints it.
    let row = run_ok(&[
        "disk",
        "list",
        "--query",
        "[].{Name:name, Loc:location}",
        "-o",
        "tsv",
        "--store",
        &s,
    ]);
    assert_eq!(row.trim(), "d1\twestus", "{row}");
    let loc = run_ok(&[
        "disk", "show", "-n", "d1", "--query", "location", "-o", "tsv", "--store", &s,
    ]);
    assert_eq!(loc.trim(), "westus");
    // An id works wherever a name does; a wrong group or subscription in it does not.
    let shown = json(&run_ok(&["disk", "show", "-n", id.trim(), "--store", &s]));
    assert_eq!(shown["name"], "d1");
    let shown = json(&run_ok(&[
        "disk",
        "show",
        "--ids",
        id.trim(),
        "--store",
        &s,
    ]));
    assert_eq!(shown["name"], "d1");
    let bad = id.trim().replace("/rg1/", "/rg2/");
    let e = run_err(&[
        "snapshot", "create", "-n", "s1", "--source", &bad, "--store", &s,
    ]);
    assert!(e.contains("ResourceNotFound") && e.contains("rg1"), "{e}");
    let e = run_err(&["disk", "list", "--subscription", "nope", "--store", &s]);
    assert!(e.contains("SubscriptionNotFound"), "{e}");
    run_ok(&["disk", "list", "--subscription", &sub, "--store", &s]);
    // -o none prints nothing; yaml is read back as the same value by Python.
    assert_eq!(
        run_ok(&["disk", "show", "-n", "d1", "-o", "none", "--store", &s]),
        ""
    );
    let y = run_ok(&["disk", "show", "-n", "d1", "-o", "yaml", "--store", &s]);
    let j = run_ok(&["disk", "show", "-n", "d1", "-o", "json", "--store", &s]);
    let py = "import sys,json,yaml\na=yaml.safe_load(open(sys.argv[1]))\nb=json.load(open(sys.argv[2]))\nif a!=b: sys.exit(str(a)+' != '+str(b))";
    let (yf, jf) = (m.dir.path().join("d.yaml"), m.dir.path().join("d.json"));
    std::fs::write(&yf, y).unwrap();
    std::fs::write(&jf, j).unwrap();
    let ok = Command::new("python3")
        .args(["-c", py])
        .arg(&yf)
        .arg(&jf)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "yaml differs from json: {}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A table of one object lists nested fields by path (encryption was left out).
    let t = run_ok(&["disk", "show", "-n", "d1", "-o", "table", "--store", &s]);
    assert!(t.contains("encryption.type"), "{t}");
    // A bad query is one line.
    let e = run_err(&["disk", "show", "-n", "d1", "--query", "[id", "--store", &s]);
    assert!(
        e.contains("invalid --query") && e.lines().count() == 1,
        "{e}"
    );
    // configure --defaults fills -g and -l.
    run_ok(&[
        "configure",
        "--defaults",
        "group=g2",
        "location=eastus",
        "--store",
        &s,
    ]);
    run_ok(&["disk", "create", "d2", "--size", "1M", "--store", &s]);
    let d2 = json(&run_ok(&["disk", "show", "-n", "d2", "--store", &s]));
    assert_eq!(
        (d2["resourceGroup"].as_str(), d2["location"].as_str()),
        (Some("g2"), Some("eastus"))
    );
    let groups = run_ok(&[
        "group", "list", "--query", "[].name", "-o", "tsv", "--store", &s,
    ]);
    for g in ["diskvault", "rg1", "g2"] {
        assert!(groups.lines().any(|l| l == g), "{groups}");
    }
    // -g names the group the resource is in; another is ARM's ResourceNotFound, and
    // an update or delete under it changes nothing.
    let e = run_err(&["disk", "show", "-n", "d1", "-g", "rg2", "--store", &s]);
    assert!(e.contains("ResourceNotFound") && e.contains("rg1"), "{e}");
    let e = run_err(&[
        "disk",
        "update",
        "-n",
        "d1",
        "-g",
        "rg2",
        "--sku",
        "Standard_LRS",
        "--store",
        &s,
    ]);
    assert!(e.contains("ResourceNotFound"), "{e}");
    let e = run_err(&["disk", "delete", "-n", "d1", "-g", "rg2", "--store", &s]);
    assert!(e.contains("ResourceNotFound"), "{e}");
    let d1 = json(&run_ok(&[
        "disk", "show", "-n", "d1", "-g", "RG1", "--store", &s,
    ]));
    assert_eq!(d1["sku"]["name"], "Premium_LRS");
    // A bad group or location is refused and makes nothing.
    let e = run_err(&[
        "disk",
        "create",
        "d3",
        "--size",
        "1M",
        "-g",
        "bad/group",
        "--store",
        &s,
    ]);
    assert!(e.contains("invalid resource group"), "{e}");
    assert!(run_err(&["disk", "show", "-n", "d3", "--store", &s]).contains("d3"));
}

#[test]
fn vault_wide_policies_and_roles_grant_and_revoke() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&[
        "keyvault",
        "update",
        "--enable-purge-protection",
        "true",
        "--store",
        &s,
    ]);
    run_ok(&["keyvault", "key", "create", "-n", "k1", "--store", &s]);
    let kid = run_ok(&[
        "keyvault", "key", "show", "-n", "k1", "--query", "key.kid", "-o", "tsv", "--store", &s,
    ]);
    run_ok(&[
        "disk-encryption-set",
        "create",
        "-n",
        "set1",
        "--key-url",
        kid.trim(),
        "--store",
        &s,
    ]);
    let p = run_ok(&[
        "disk-encryption-set",
        "show",
        "-n",
        "set1",
        "--query",
        "identity.principalId",
        "-o",
        "tsv",
        "--store",
        &s,
    ]);
    let p = p.trim();
    // No grant yet: a disk under the set can't be made.
    assert!(run_err(&[
        "disk",
        "create",
        "d1",
        "--size",
        "1M",
        "--disk-encryption-set",
        "set1",
        "--store",
        &s
    ])
    .contains("k1"));
    // A vault-wide policy is enough, for every key.
    run_ok(&[
        "keyvault",
        "set-policy",
        "--object-id",
        p,
        "--key-permissions",
        "wrapkey",
        "unwrapkey",
        "get",
        "--store",
        &s,
    ]);
    run_ok(&[
        "disk",
        "create",
        "d1",
        "--size",
        "1M",
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    // Deleting it revokes: the disk stops serving data.
    run_ok(&["keyvault", "delete-policy", "--object-id", p, "--store", &s]);
    let st = run_ok(&[
        "disk", "show", "-n", "d1", "--query", "keyState", "-o", "tsv", "--store", &s,
    ]);
    assert!(st.trim() != "Available", "{st}");
    assert!(std::fs::read(m.disk("d1")).is_err());
    // The crypto role on the vault restores it; Reader does not.
    let vid = run_ok(&[
        "keyvault", "show", "--query", "id", "-o", "tsv", "--store", &s,
    ]);
    run_ok(&[
        "role",
        "assignment",
        "create",
        "--assignee",
        p,
        "--role",
        "Reader",
        "--scope",
        vid.trim(),
        "--store",
        &s,
    ]);
    let st = run_ok(&[
        "disk", "show", "-n", "d1", "--query", "keyState", "-o", "tsv", "--store", &s,
    ]);
    assert!(st.trim() != "Available", "{st}");
    run_ok(&[
        "role",
        "assignment",
        "create",
        "--assignee",
        p,
        "--role",
        "Key Vault Crypto Service Encryption User",
        "--scope",
        vid.trim(),
        "--store",
        &s,
    ]);
    let st = run_ok(&[
        "disk", "show", "-n", "d1", "--query", "keyState", "-o", "tsv", "--store", &s,
    ]);
    assert_eq!(st.trim(), "Available");
    assert!(std::fs::read(m.disk("d1")).is_ok());
    // One vault per store: another name is refused while keys exist.
    let e = run_err(&["keyvault", "create", "-n", "othervault", "--store", &s]);
    assert!(e.contains("one vault"), "{e}");
    let e = run_err(&[
        "keyvault",
        "key",
        "show",
        "--vault-name",
        "othervault",
        "-n",
        "k1",
        "--store",
        &s,
    ]);
    assert!(e.contains("VaultNotFound"), "{e}");
}

/// The audit operations of a store's log, in order.
fn audit_ops(store: &Path) -> Vec<String> {
    std::fs::read_to_string(store.join("vault/audit.log"))
        .unwrap()
        .lines()
        .map(|l| json(l)["operationName"].as_str().unwrap().to_string())
        .collect()
}

/// An az path and its short command are one typed request: on two fresh stores the
/// same steps, one spelled each way, leave the same audit operations and the same
/// objects, mounted and not.
#[test]
fn az_paths_and_short_commands_are_the_same_requests() {
    let steps: [(&[&str], &[&str]); 7] = [
        (
            &["vault", "set", "--purge-protection", "true"],
            &["keyvault", "update", "--enable-purge-protection", "true"],
        ),
        (
            &["key", "create", "k1"],
            &[
                "keyvault",
                "key",
                "create",
                "-n",
                "k1",
                "--protection",
                "software",
            ],
        ),
        (
            &["des", "create", "set1", "--key-url", "k1", "--auto-rotate"],
            &[
                "disk-encryption-set",
                "create",
                "-n",
                "set1",
                "--key-url",
                "k1",
                "--enable-auto-key-rotation",
                "true",
            ],
        ),
        (
            &["key", "grant", "k1", "--des", "set1"],
            &["key", "grant", "k1", "--des", "set1"],
        ),
        (
            &[
                "disk",
                "create",
                "d1",
                "--size",
                "1M",
                "--disk-encryption-set",
                "set1",
            ],
            &[
                "disk",
                "create",
                "-n",
                "d1",
                "--size",
                "1M",
                "--disk-encryption-set",
                "set1",
            ],
        ),
        (
            &["key", "set", "k1", "--enabled", "false"],
            &[
                "keyvault",
                "key",
                "set-attributes",
                "-n",
                "k1",
                "--enabled",
                "false",
            ],
        ),
        (
            &["key", "set", "k1", "--enabled", "true"],
            &[
                "keyvault",
                "key",
                "set-attributes",
                "--name",
                "k1",
                "--enabled",
                "true",
            ],
        ),
    ];
    for mounted in [false, true] {
        let mut logs = Vec::new();
        let mut disks = Vec::new();
        for az in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("store");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            run_ok(&["init", store.to_str().unwrap()]);
            let m = Mounted::adopt(&store, &mnt);
            let mut m = m;
            if mounted {
                m.mount();
            }
            for (short, long) in steps {
                let mut args: Vec<&str> = if az { long.to_vec() } else { short.to_vec() };
                args.extend(["--store", store.to_str().unwrap()]);
                run_ok(&args);
            }
            let d = json(&run_ok(&[
                "disk",
                "show",
                "-n",
                "d1",
                "--store",
                store.to_str().unwrap(),
            ]));
            disks.push((
                d["encryption"]["type"].clone(),
                d["keyState"].clone(),
                d["resourceGroup"].clone(),
            ));
            if mounted {
                m.umount();
            }
            logs.push(audit_ops(&store));
        }
        assert_eq!(logs[0], logs[1], "mounted: {mounted}");
        assert!(logs[0].iter().any(|o| o == "VaultPatch"), "{:?}", logs[0]);
        assert_eq!(disks[0], disks[1], "mounted: {mounted}");
    }
}

//! The seed's az runbook (tests/fixtures/seed-runbook.md, a copy of the document's
//! command blocks) runs unchanged with `az` replaced by `diskvault`, on a mounted
//! store, with a real guest for its VM; each block's Azure effect is checked.
//! The scale set's two instances are real guests too: revocation stops both and the
//! restore lets both start.

mod common;
use common::guest;
use common::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// The runbook's ```sh blocks, with `az` replaced by `diskvault`.
fn blocks() -> Vec<String> {
    let md = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/seed-runbook.md"),
    )
    .unwrap();
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in md.lines() {
        match (&mut cur, line.trim()) {
            (None, "```sh") => cur = Some(String::new()),
            (Some(b), "```") => {
                out.push(b.clone());
                cur = None;
            }
            (Some(b), l) => {
                let l = l
                    .strip_prefix("az ")
                    .map_or(l.to_string(), |r| format!("diskvault {r}"));
                let l = l.replace("$(az ", "$(diskvault ");
                b.push_str(&l);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Runs `script` under bash -e, as the next part of one session: the runbook's
/// variables carry over from the blocks before (through a file of `declare`s).
fn sh(m: &Mounted, script: &str) -> String {
    let bin_dir = Path::new(bin()).parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let vars = m.dir.path().join("runbook.vars");
    let mut names: Vec<String> = blocks()
        .iter()
        .flat_map(|b| b.lines().map(String::from).collect::<Vec<_>>())
        .filter_map(|l| {
            let (n, _) = l.split_once('=')?;
            n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
                .then(|| n.to_string())
        })
        .collect();
    names.dedup();
    let full = format!(
        "if [ -f {v} ]; then . {v}; fi\n{script}\nfor n in {names}; do declare -p $n 2>/dev/null || true; done > {v}\n",
        v = vars.display(),
        names = names.join(" ")
    );
    let out = Command::new("bash")
        .args(["-e", "-o", "pipefail", "-c", &full])
        .env("PATH", path)
        .env("DISKVAULT_STORE", &m.store)
        .output()
        .unwrap();
    let (so, se) = (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    );
    assert!(
        out.status.success(),
        "script failed: {se}\n--- script ---\n{script}\n--- stdout ---\n{so}"
    );
    so
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn wait_power(m: &Mounted, vm: &str, state: &str) -> Value {
    let t = Instant::now();
    loop {
        let v = json(&run_ok(&["vm", "show", vm, "--store", m.s()]));
        if v["powerState"] == state {
            return v;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{vm} is not '{state}': {v}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn the_seed_runbook_runs_as_written() {
    let _one = guest::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (store, mnt) = (dir.path().join("store"), dir.path().join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::adopt(&store, &mnt);
    m.dir = dir;
    m.mount_with(&[], &[("DISKVAULT_ACCEL", "tcg")]);
    let s = m.s().to_string();
    let b = blocks();
    assert_eq!(b.len(), 8, "the runbook has 8 blocks");
    let rg = "yourResourceGroupName";
    let loc = "westcentralus";

    // What the document presumes exists: the marketplace image, made in one step by
    // scripts/mkguest (a kernel-booted demo guest that writes a marker to its last
    // disk), and the existing disk of block 3.
    let guest_dir = m.dir.path().join("guest");
    let mk = Command::new("sh")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/mkguest"))
        .arg(&guest_dir)
        .args(["--image", "UbuntuLTS", "-g", rg, "-l", loc, "--store", &s])
        .env(
            "PATH",
            format!(
                "{}:{}",
                Path::new(bin()).parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .output()
        .unwrap();
    assert!(
        mk.status.success(),
        "mkguest --image: {}",
        String::from_utf8_lossy(&mk.stderr)
    );
    let img = json(&run_ok(&[
        "image",
        "show",
        "-n",
        "UbuntuLTS",
        "--store",
        &s,
    ]));
    assert!(
        img["boot"]["kernel"].as_str().unwrap().ends_with("vmlinuz"),
        "{img}"
    );
    run_ok(&[
        "disk",
        "create",
        "-n",
        "yourDiskName",
        "-g",
        rg,
        "-l",
        loc,
        "--size-gb",
        "30",
        "--store",
        &s,
    ]);

    // Block 1: the vault, its key, the set, the vault-wide policy, the role.
    sh(&m, &b[0]);
    let vault = json(&run_ok(&["keyvault", "show", "--store", &s]));
    assert_eq!(vault["name"], "yourkeyvaultname");
    assert_eq!(vault["location"], loc);
    assert_eq!(vault["resourceGroup"], rg);
    assert_eq!(vault["properties"]["enablePurgeProtection"], true);
    let acct = json(&run_ok(&["account", "show", "--store", &s]));
    assert_eq!(acct["name"], "yourSubscriptionID");
    assert!(vault["id"].as_str().unwrap().starts_with(&format!(
        "/subscriptions/{}/resourceGroups/{rg}/providers/Microsoft.KeyVault/vaults/",
        acct["id"].as_str().unwrap()
    )));
    let des = json(&run_ok(&[
        "disk-encryption-set",
        "show",
        "-n",
        "yourDiskEncryptionSetName",
        "--store",
        &s,
    ]));
    assert_eq!(des["location"], loc);
    let principal = des["identity"]["principalId"].as_str().unwrap().to_string();
    let policies = &vault["properties"]["accessPolicies"];
    assert_eq!(policies[0]["objectId"], principal.as_str(), "{vault}");
    let roles = json(&run_ok(&[
        "role",
        "assignment",
        "list",
        "--assignee",
        &principal,
        "--store",
        &s,
    ]));
    assert_eq!(roles[0]["roleDefinitionName"], "Reader", "{roles}");

    // Block 2: a VM from the image, OS and two 128 GiB data disks under the set.
    sh(&m, &b[1]);
    let vm = wait_power(&m, "yourVMName", "VM running");
    guest::wait_for_line(
        &store.join("vms/yourVMName.serial.log"),
        "guest: wrote",
        Duration::from_secs(60),
    )
    .unwrap();
    // The demo guest's console has no busybox noise before its marker (it had about
    // 190 lines of "No such file or directory").
    let console = std::fs::read_to_string(store.join("vms/yourVMName.serial.log")).unwrap();
    assert!(!console.contains("No such file or directory"), "{console}");
    let sp = &vm["storageProfile"];
    assert_eq!(sp["osDisk"]["createOption"], "FromImage");
    assert_eq!(vm["hardwareProfile"]["vmSize"], "Standard_DS3_v2");
    for d in std::iter::once(&sp["osDisk"]).chain(sp["dataDisks"].as_array().unwrap()) {
        assert_eq!(d["encryption"], "EncryptionAtRestWithCustomerKey", "{d}");
        assert_eq!(
            d["managedDisk"]["diskEncryptionSet"]["id"], des["id"],
            "{d}"
        );
    }
    assert_eq!(sp["dataDisks"].as_array().unwrap().len(), 2);
    assert_eq!(sp["dataDisks"][1]["diskSizeGB"], 128);

    // Block 3: the existing disk moves to the customer key.
    sh(&m, &b[2]);
    let d = json(&run_ok(&[
        "disk",
        "show",
        "-n",
        "yourDiskName",
        "--store",
        &s,
    ]));
    assert_eq!(d["encryption"]["type"], "EncryptionAtRestWithCustomerKey");

    // Block 4: a scale set of az's default 2 instances, each with a customer-key OS
    // disk from the image and two data disks, all under the set.
    sh(&m, &b[3]);
    let ss = json(&run_ok(&[
        "vmss",
        "show",
        "-n",
        "yourVMSSName",
        "--store",
        &s,
    ]));
    assert_eq!(ss["sku"]["capacity"], 2, "{ss}");
    assert_eq!(ss["upgradePolicy"]["mode"], "Automatic");
    let vp = &ss["virtualMachineProfile"];
    assert_eq!(vp["osProfile"]["adminUsername"], "azureuser");
    assert_eq!(
        vp["storageProfile"]["osDisk"]["managedDisk"]["diskEncryptionSet"]["id"],
        des["id"]
    );
    let luns: Vec<i64> = vp["storageProfile"]["dataDisks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["lun"].as_i64().unwrap())
        .collect();
    assert_eq!(luns, [0, 1]);
    for i in 0..2 {
        let vm = format!("yourVMSSName_{i}");
        wait_power(&m, &vm, "VM running");
        for d in ["OsDisk", "DataDisk_0", "DataDisk_1"] {
            let disk = json(&run_ok(&[
                "disk",
                "show",
                "-n",
                &format!("{vm}_{d}"),
                "--store",
                &s,
            ]));
            assert_eq!(
                disk["encryption"]["type"], "EncryptionAtRestWithCustomerKey",
                "{disk}"
            );
            assert!(
                disk["managedBy"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/virtualMachines/{vm}")),
                "{disk}"
            );
        }
        guest::wait_for_line(
            &store.join(format!("vms/{vm}.serial.log")),
            "guest: wrote",
            Duration::from_secs(90),
        )
        .unwrap();
    }

    // Block 5: `disk create` of the existing disk is az's PUT (an update), then the
    // disk is hot-plugged into the running VM at LUN 2 by its id.
    sh(&m, &b[4]);
    let vm = json(&run_ok(&["vm", "show", "yourVMName", "--store", &s]));
    let lun2 = vm["storageProfile"]["dataDisks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["lun"] == 2)
        .cloned()
        .unwrap_or_else(|| panic!("no LUN 2: {vm}"));
    assert_eq!(lun2["name"], "yourDiskName");

    // Block 6: a set in another group moves to the key's new version (the key was
    // rotated, as the document assumes); every disk of it is re-wrapped.
    sh(&m, &format!("diskvault disk-encryption-set create -n keyrotationdes -g keyrotationtesting -l {loc} --source-vault $keyVaultId --key-url $keyVaultKeyUrl -o none\nrotId=$(diskvault disk-encryption-set show -n keyrotationdes -g keyrotationtesting --query identity.principalId -o tsv)\ndiskvault keyvault set-policy -n $keyVaultName --object-id $rotId --key-permissions wrapkey unwrapkey get -o none\ndiskvault disk create -n rotdisk -g keyrotationtesting -l {loc} --size-gb 1 --disk-encryption-set keyrotationdes -o none\ndiskvault keyvault key rotate --vault-name $keyVaultName -n $keyName -o none"));
    sh(&m, &b[5]);
    let assoc = json(&run_ok(&[
        "disk-encryption-set",
        "list-associated-resources",
        "-n",
        "keyrotationdes",
        "-g",
        "keyrotationtesting",
        "--store",
        &s,
    ]));
    assert_eq!(assoc.as_array().unwrap().len(), 1, "{assoc}");
    assert!(
        assoc[0].as_str().unwrap().ends_with("/disks/rotdisk"),
        "{assoc}"
    );
    let rot = json(&run_ok(&[
        "disk-encryption-set",
        "show",
        "-n",
        "keyrotationdes",
        "--store",
        &s,
    ]));
    let key = json(&run_ok(&[
        "keyvault",
        "key",
        "show",
        "--vault-name",
        "yourKeyVaultName",
        "-n",
        "yourKeyName",
        "--store",
        &s,
    ]));
    assert_eq!(rot["activeKey"]["keyUrl"], key["key"]["kid"], "{rot}");
    assert_eq!(rot["resourceGroup"], "keyrotationtesting");
    let rd = json(&run_ok(&["disk", "show", "-n", "rotdisk", "--store", &s]));
    assert_eq!(rd["keyId"], key["key"]["kid"], "{rd}");

    // Block 7: the encryption type, as tsv.
    let out = sh(&m, &b[6]);
    assert_eq!(
        out.lines().last(),
        Some("EncryptionAtRestWithCustomerKey"),
        "{out}"
    );

    // Block 8: disabling the key stops the Premium VM; enabling it lets it start.
    let lines: Vec<&str> = b[7]
        .lines()
        .filter(|l| l.starts_with("diskvault"))
        .collect();
    assert_eq!(lines.len(), 2);
    sh(&m, lines[0]);
    for vm in ["yourVMName", "yourVMSSName_0", "yourVMSSName_1"] {
        wait_power(&m, vm, "VM stopped");
    }
    let k = json(&run_ok(&[
        "keyvault",
        "key",
        "show",
        "--vault-name",
        "yourKeyVaultName",
        "-n",
        "yourKeyName",
        "--store",
        &s,
    ]));
    assert_eq!(k["attributes"]["enabled"], false, "{k}");
    let e = run_err(&["vm", "start", "-n", "yourVMName", "--store", &s]);
    assert!(
        e.contains("yourKeyName") || e.to_lowercase().contains("revoked") || e.contains("disabled"),
        "{e}"
    );
    sh(&m, lines[1]);
    run_ok(&["vm", "start", "-n", "yourVMName", "--store", &s]);
    assert_eq!(
        run_ok(&["vmss", "start", "-n", "yourVMSSName", "--store", &s]),
        ""
    );
    for vm in ["yourVMName", "yourVMSSName_0", "yourVMSSName_1"] {
        wait_power(&m, vm, "VM running");
    }
    let view = json(&run_ok(&[
        "vmss",
        "get-instance-view",
        "-n",
        "yourVMSSName",
        "--store",
        &s,
    ]));
    assert_eq!(
        view["virtualMachine"]["statusesSummary"][0]["count"], 2,
        "{view}"
    );
    // Scale in removes the highest id with its disks; delete removes the rest.
    run_ok(&[
        "vmss",
        "scale",
        "-n",
        "yourVMSSName",
        "--new-capacity",
        "1",
        "--store",
        &s,
    ]);
    assert!(
        run_err(&["disk", "show", "-n", "yourVMSSName_1_OsDisk", "--store", &s])
            .contains("yourVMSSName_1_OsDisk")
    );
    run_ok(&["vmss", "delete", "-n", "yourVMSSName", "--store", &s]);
    let left = run_ok(&["disk", "list", "-o", "tsv", "--store", &s]);
    assert!(!left.contains("yourVMSSName"), "{left}");
    run_ok(&["vm", "delete", "-n", "yourVMName", "--yes", "--store", &s]);
    m.umount();
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

/// What a hostile review found, each kept fixed: a role scope that doesn't hold the
/// vault, ids naming another group, subscription or type, a vault's location moved,
/// the location of a VM from an image, az's PUT with another location.
#[test]
fn ids_scopes_and_locations_are_checked() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let r = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--store", &s]);
        run_ok(&a)
    };
    let e = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--store", &s]);
        run_err(&a)
    };
    r(&[
        "keyvault",
        "create",
        "-n",
        "kv1",
        "-g",
        "rg1",
        "-l",
        "westus",
        "--enable-purge-protection",
        "true",
    ]);
    r(&["keyvault", "key", "create", "-n", "k1"]);
    r(&[
        "disk-encryption-set",
        "create",
        "-n",
        "des1",
        "-g",
        "rg1",
        "--key-url",
        "k1",
        "--enable-auto-key-rotation",
    ]);
    let p = r(&[
        "disk-encryption-set",
        "show",
        "-n",
        "des1",
        "--query",
        "identity.principalId",
        "-o",
        "tsv",
    ]);
    let p = p.trim();
    let sub = r(&["account", "show", "--query", "id", "-o", "tsv"])
        .trim()
        .to_string();
    // Roles: a scope must hold the vault.
    let crypto = "Key Vault Crypto Service Encryption User";
    for (scope, want) in [
        ("/subscriptions/0000".to_string(), "SubscriptionNotFound"),
        (format!("/subscriptions/{sub}/resourceGroups/zzz"), "does not hold"),
        (
            format!("/subscriptions/{sub}/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/keys/nosuch"),
            "nosuch",
        ),
    ] {
        let out = e(&["role", "assignment", "create", "--assignee", p, "--role", crypto, "--scope", &scope]);
        assert!(out.contains(want), "{scope}: {out}");
    }
    assert_eq!(r(&["role", "assignment", "list"]).trim(), "[]");
    // Names given as ids: the type, the subscription and the group must be the
    // resource's, or nothing happens.
    r(&["disk", "create", "-n", "d1", "-g", "rg1", "--size", "1M"]);
    let did = r(&["disk", "show", "-n", "d1", "--query", "id", "-o", "tsv"]);
    let did = did.trim();
    for bad in [
        did.replace("/disks/", "/snapshots/"),
        did.replace(&sub, "00000000-0000-0000-0000-000000000001"),
        did.replace("/rg1/", "/zzz/"),
    ] {
        e(&["disk", "delete", "-n", &bad, "--yes"]);
        e(&["disk", "show", "-n", &bad]);
    }
    e(&["disk", "show", "-n", "d1", "-g", "nosuch"]);
    r(&["disk", "show", "-n", did]);
    let des_id = r(&[
        "disk-encryption-set",
        "show",
        "-n",
        "des1",
        "--query",
        "id",
        "-o",
        "tsv",
    ]);
    let out = e(&[
        "disk",
        "create",
        "-n",
        "q",
        "--size",
        "1M",
        "--disk-encryption-set",
        &des_id.trim().replace("/rg1/", "/zz/"),
    ]);
    assert!(out.contains("ResourceNotFound"), "{out}");
    // A disk created by its id is in the id's group.
    let qid = did
        .replace("/disks/d1", "/disks/q2")
        .replace("/rg1/", "/rg9/");
    r(&["disk", "create", "-n", &qid, "--size", "1M"]);
    assert_eq!(
        r(&[
            "disk",
            "show",
            "-n",
            "q2",
            "--query",
            "resourceGroup",
            "-o",
            "tsv"
        ])
        .trim(),
        "rg9"
    );
    // A vault with keys stays where it is.
    for args in [["-l", "eastus"], ["-g", "rg2"]] {
        let mut a = vec!["keyvault", "create", "-n", "kv1"];
        a.extend(args);
        let out = e(&a);
        assert!(out.contains("can't change"), "{out}");
    }
    assert_eq!(
        r(&["keyvault", "show", "--query", "location", "-o", "tsv"]).trim(),
        "westus"
    );
    // az's PUT on an existing disk refuses another location.
    let out = e(&[
        "disk", "create", "-n", "d1", "-g", "rg1", "-l", "eastus", "--size", "1M",
    ]);
    assert!(out.contains("location"), "{out}");
    // A VM from an image is where the image is, without -l.
    r(&[
        "disk",
        "create",
        "-n",
        "src",
        "-g",
        "rg3",
        "-l",
        "northeurope",
        "--size",
        "1M",
    ]);
    r(&["image", "create", "-n", "img", "--source", "src"]);
    let exe = std::env::current_exe().unwrap();
    r(&[
        "vm",
        "create",
        "-n",
        "v2",
        "--image",
        "img",
        "--kernel",
        exe.to_str().unwrap(),
        "--no-start",
    ]);
    assert_eq!(
        r(&["vm", "show", "-n", "v2", "--query", "location", "-o", "tsv"]).trim(),
        "northeurope"
    );
}

/// Taking a vault-wide policy away is a revocation even on a full file system: the
/// disks stop serving at once, and the message says the change is not saved.
#[test]
fn a_policy_removed_on_a_full_disk_still_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&dir.path().join("t"), "24M");
    let store = dir.path().join("t/store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(&["init", store.to_str().unwrap()]);
    let m = Mounted::attach(dir.path(), &store, &mnt);
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
    let p = run_ok(&[
        "des",
        "show",
        "set1",
        "--query",
        "identity.principalId",
        "-o",
        "tsv",
        "--store",
        &s,
    ]);
    run_ok(&[
        "keyvault",
        "set-policy",
        "--object-id",
        p.trim(),
        "--key-permissions",
        "get",
        "wrapkey",
        "unwrapkey",
        "--store",
        &s,
    ]);
    run_ok(&[
        "disk",
        "create",
        "c1",
        "--size",
        "1M",
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("c1"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"SECRET", 0).unwrap();
    let filler = fs.fill();
    let out = run(&[
        "keyvault",
        "delete-policy",
        "--object-id",
        p.trim(),
        "--store",
        &s,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("could not be saved"),
        "{err}"
    );
    let mut buf = [0u8; 6];
    let r = f.read_at(&mut buf, 0);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    drop(f);
    std::fs::remove_file(filler).unwrap();
    drop(m);
    drop(fs);
}

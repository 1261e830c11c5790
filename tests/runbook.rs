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

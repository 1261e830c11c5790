//! A store made by older code (tests/fixtures/store-v1, see its README) mounts and
//! decrypts unchanged: the on-disk format stays byte-compatible across refactors.

mod common;
use common::*;
use sha2::{Digest, Sha256};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

fn sha256_hex(b: &[u8]) -> String {
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// The fixture, copied so that mounting it changes nothing in the repository.
fn copy_fixture(to: &Path) {
    copy_named_fixture("store-v1", to)
}

fn copy_named_fixture(name: &str, to: &Path) {
    let src = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("cp")
        .arg("-r")
        .arg(src)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp fixture");
    // Git keeps no empty directories; the old store had this one.
    std::fs::create_dir_all(to.join("vault/deleted-keys")).unwrap();
}

fn expected() -> Vec<(String, String)> {
    let sums = include_str!("fixtures/store-v1.sha256");
    sums.lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            (n.to_string(), h.to_string())
        })
        .collect()
}

#[test]
fn a_store_made_by_old_code_mounts_and_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    copy_fixture(&store);
    let mut m = Mounted::attach(dir.path(), &store, &mnt);

    let want = expected();
    assert_eq!(want.len(), 4);
    for (name, sum) in &want {
        let data = std::fs::read(m.disk(name)).unwrap();
        assert_eq!(
            &sha256_hex(&data),
            sum,
            "disk {name} decrypts to its old content"
        );
    }
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join(".vault/status.json")).unwrap()).unwrap();
    let disks = status["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 4, "{status}");
    for d in disks {
        assert_eq!(d["keyState"], "Available", "{d}");
    }
    let s1 = run_ok(&["des", "show", "s1", "--store", m.s()]);
    assert!(s1.contains("\"provisioningState\": \"Succeeded\""), "{s1}");
    let d1 = run_ok(&["disk", "show", "d1", "--store", m.s()]);
    assert!(
        d1.contains("EncryptionAtRestWithPlatformAndCustomerKeys"),
        "{d1}"
    );

    // The old store stays writable, and a write survives a remount.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.disk("c1"))
        .unwrap();
    let new = pattern(7, 9000);
    f.write_all_at(&new, 4000).unwrap();
    f.sync_all().unwrap();
    drop(f);
    m.umount();
    m.mount();
    let mut got = vec![0u8; 9000];
    std::fs::File::open(m.disk("c1"))
        .unwrap()
        .read_exact_at(&mut got, 4000)
        .unwrap();
    assert_eq!(got, new);
    let p1 = std::fs::read(m.disk("p1")).unwrap();
    assert_eq!(sha256_hex(&p1), want[0].1, "p1 is untouched");
}

/// A store with snapshots, images and disks made from them (tests/fixtures/store-v2,
/// made by the release that introduced them): every object reads its recorded
/// content through the mount and through the independent decryptor, and the store
/// keeps working (a new snapshot, a delete).
#[test]
fn a_layered_store_made_by_the_snapshot_release_mounts_and_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    copy_named_fixture("store-v2", &store);
    let want: Vec<(String, String)> = include_str!("fixtures/store-v2.sha256")
        .lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            (n.to_string(), h.to_string())
        })
        .collect();
    assert_eq!(want.len(), 10);
    // Independently first, from the files alone.
    for (path, sum) in &want {
        let out = dir.path().join("plain");
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&store)
            .arg(path)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {path}");
        assert_eq!(
            &sha256_hex(&std::fs::read(&out).unwrap()),
            sum,
            "{path}, decrypted independently"
        );
    }
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    let check = |m: &Mounted, skip: &str| {
        for (path, sum) in &want {
            if path == skip {
                continue;
            }
            let data = std::fs::read(m.mnt.join(path)).unwrap();
            assert_eq!(&sha256_hex(&data), sum, "{path} reads its old content");
        }
    };
    check(&m, "");
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mnt.join(".vault/status.json")).unwrap()).unwrap();
    for key in ["disks", "snapshots", "images"] {
        for o in status[key].as_array().unwrap() {
            assert_eq!(o["keyState"], "Available", "{o}");
        }
    }
    assert_eq!(status["snapshots"].as_array().unwrap().len(), 4);
    // It keeps working: a new snapshot, and deleting one in the middle of a chain.
    run_ok(&[
        "snapshot",
        "create",
        "p1-c",
        "--source",
        "p1",
        "--store",
        m.s(),
    ]);
    let p1 = std::fs::read(m.mnt.join("disks/p1")).unwrap();
    assert_eq!(std::fs::read(m.mnt.join("snapshots/p1-c")).unwrap(), p1);
    run_ok(&["snapshot", "delete", "p1-b", "--store", m.s()]);
    check(&m, "snapshots/p1-b");
    m.umount();
    m.mount();
    check(&m, "snapshots/p1-b");
}

/// A store with merged deltas and full snapshots, one of them still pending
/// (tests/fixtures/store-v3): every object decrypts independently and reads its
/// content through the mount, and the pending copy is made at the mount.
#[test]
fn a_store_with_merges_and_full_snapshots_mounts_and_decrypts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    copy_named_fixture("store-v3", &store);
    let want: Vec<(String, String)> = include_str!("fixtures/store-v3.sha256")
        .lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            (n.to_string(), h.to_string())
        })
        .collect();
    assert_eq!(want.len(), 7);
    let decrypt = |path: &str| {
        let out = dir.path().join("plain");
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&store)
            .arg(path)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {path}");
        sha256_hex(&std::fs::read(&out).unwrap())
    };
    for (path, sum) in &want {
        assert_eq!(&decrypt(path), sum, "{path}, decrypted independently");
    }
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    let check = |m: &Mounted, when: &str| {
        for (path, sum) in &want {
            let data = std::fs::read(m.mnt.join(path)).unwrap();
            assert_eq!(&sha256_hex(&data), sum, "{path} {when}");
        }
    };
    check(&m, "at the mount");
    let settled = Mounted::wait_for(std::time::Duration::from_secs(60), || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(mnt.join(".vault/merges.json")).unwrap())
                .unwrap();
        v["pending"] == 0 && v["running"] == false
    });
    assert!(settled.is_some(), "the pending full copy never finished");
    let full: serde_json::Value =
        serde_json::from_str(&run_ok(&["snapshot", "show", "c1-full", "--store", m.s()])).unwrap();
    assert_eq!(full["completionPercent"], 100, "{full}");
    assert_eq!(full["deltas"], 1, "{full}");
    check(&m, "after the copy");
    m.umount();
    for (path, sum) in &want {
        assert_eq!(&decrypt(path), sum, "{path}, decrypted after the copy");
    }
}

/// A store with az's frame (tests/fixtures/store-v4): resource groups and locations
/// on every resource, a named subscription, defaults, a vault-wide policy, a role, an
/// image with a boot definition and a scale set. It opens, shows all of them as they
/// were recorded, and every object decrypts, independently and through the mount.
#[test]
fn a_store_with_groups_locations_and_a_scale_set_mounts() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    copy_named_fixture("store-v4", &store);
    std::fs::create_dir_all(store.join("snapshots")).unwrap();
    // The fixture's host key, 0600 as the store requires (git keeps no modes).
    let key = dir.path().join("host.key");
    std::fs::copy(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/store-v4.host.key"
        ),
        &key,
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (s, k) = (store.to_str().unwrap(), key.to_str().unwrap());
    let show = |args: &[&str]| -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["--store", s, "--host-key", k]);
        serde_json::from_str(&run_ok(&a)).unwrap()
    };
    let acct = show(&["account", "show"]);
    assert_eq!(acct["name"], "fixture-sub");
    assert_eq!(acct["defaults"]["resourceGroup"], "rg4");
    let sub = acct["id"].as_str().unwrap().to_string();
    let d4 = show(&["disk", "show", "-n", "d4"]);
    assert_eq!(
        (d4["resourceGroup"].as_str(), d4["location"].as_str()),
        (Some("rg4"), Some("westus"))
    );
    assert_eq!(
        d4["id"],
        format!("/subscriptions/{sub}/resourceGroups/rg4/providers/Microsoft.Compute/disks/d4")
    );
    assert!(d4["encryption"]["diskEncryptionSetId"]
        .as_str()
        .unwrap()
        .ends_with("/rg4/providers/Microsoft.Compute/diskEncryptionSets/des4"));
    let img = show(&["image", "show", "-n", "img4"]);
    assert_eq!(img["location"], "eastus");
    assert_eq!(img["boot"]["append"], "console=ttyS0");
    let ss = show(&["vmss", "show", "-n", "ss4"]);
    assert_eq!(ss["sku"]["capacity"], 1);
    assert_eq!(
        ss["virtualMachineProfile"]["osProfile"]["adminUsername"],
        "azureuser"
    );
    let vault = show(&["keyvault", "show"]);
    assert_eq!(
        vault["properties"]["accessPolicies"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        show(&["role", "assignment", "list"])[0]["roleDefinitionName"],
        "Reader"
    );
    // Every object decrypts independently, and through the mount.
    let want: Vec<(String, String)> = include_str!("fixtures/store-v4.sha256")
        .lines()
        .map(|l| {
            let (n, h) = l.split_once(' ').unwrap();
            (n.to_string(), h.to_string())
        })
        .collect();
    for (path, sum) in &want {
        let out = dir.path().join("plain");
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&store)
            .arg(path)
            .arg(&out)
            .env("DISKVAULT_HOST_KEY", &key)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {path}");
        assert_eq!(&sha256_hex(&std::fs::read(&out).unwrap()), sum, "{path}");
    }
    let mut m = Mounted::adopt(&store, &mnt);
    m.mount_with(&["--host-key", k], &[]);
    for (path, sum) in &want {
        let data = std::fs::read(mnt.join(path)).unwrap();
        assert_eq!(&sha256_hex(&data), sum, "{path} through the mount");
    }
    m.umount();
}

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
    let src = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v1");
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

//! `keyState` tells the truth (issue 8, item 16): every disk that can't be served says
//! `Unavailable: REASON` in `disk show`, disk.json and status.json, and the disks
//! around it keep saying `Available` and serving. All on real mounts.

mod common;

use common::*;
use serde_json::Value;
use std::fs::File;
use std::path::Path;
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(5);

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn status(m: &Mounted) -> Value {
    js(&std::fs::read_to_string(m.mnt.join(".vault/status.json")).unwrap())
}

/// keyState of `disk` from status.json.
fn listed_state(m: &Mounted, disk: &str) -> String {
    status(m)["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == disk)
        .unwrap_or_else(|| panic!("{disk} not in status.json"))["keyState"]
        .as_str()
        .unwrap()
        .to_string()
}

/// keyState of `disk` from `disk show` and from disk.json, which must agree with
/// status.json.
fn key_state(m: &Mounted, disk: &str) -> String {
    let shown = js(&run_ok(&["disk", "show", disk, "--store", m.s()]))["keyState"]
        .as_str()
        .unwrap()
        .to_string();
    let file =
        js(&std::fs::read_to_string(m.mnt.join(format!(".vault/disks/{disk}/disk.json"))).unwrap())
            ["keyState"]
            .as_str()
            .unwrap()
            .to_string();
    assert_eq!(shown, file, "{disk}: disk show and disk.json differ");
    assert_eq!(shown, listed_state(m, disk), "{disk}: status.json differs");
    shown
}

fn open_errno(m: &Mounted, disk: &str) -> Option<i32> {
    File::open(m.disk(disk))
        .err()
        .and_then(|e| e.raw_os_error())
}

/// Asserts that `disk` can't be opened (EIO) and says `Unavailable: ` naming `cause`.
fn assert_unavailable(m: &Mounted, disk: &str, cause: &str) {
    assert_eq!(open_errno(m, disk), Some(libc::EIO), "{disk} must not open");
    let state = key_state(m, disk);
    assert!(
        state.starts_with("Unavailable: ") && state.contains(cause),
        "{disk}: keyState {state} should be Unavailable naming {cause:?}"
    );
}

fn assert_serving(m: &Mounted, disk: &str, data: &[u8]) {
    assert_eq!(key_state(m, disk), "Available", "{disk}");
    let got = std::fs::read(m.disk(disk)).unwrap();
    assert_eq!(&got[..data.len()], data, "{disk} reads its data");
}

fn edit_meta(m: &Mounted, disk: &str, f: impl FnOnce(&mut Value)) {
    let path = m.backing_dir(disk).join("meta.json");
    let mut v = js(&std::fs::read_to_string(&path).unwrap());
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Changes the first character of a string field to another valid one.
fn flip_first(v: &mut Value, alphabet: (char, char)) {
    let s = v.as_str().unwrap();
    let c = if s.starts_with(alphabet.0) {
        alphabet.1
    } else {
        alphabet.0
    };
    *v = format!("{c}{}", &s[1..]).into();
}

/// A tampered wrapped key, a tampered keyCheck and a missing data file: each such
/// disk fails with EIO and says why, before and after an open is tried.
#[test]
fn disks_that_cannot_be_served_say_why() {
    let mut m = Mounted::new();
    for d in ["good", "wrapped", "check", "nodata"] {
        m.create(d, "1M");
        std::fs::write(m.disk(d), d.as_bytes()).unwrap();
        assert_eq!(key_state(&m, d), "Available", "{d}");
    }
    m.umount();
    edit_meta(&m, "wrapped", |v| {
        flip_first(&mut v["layers"][0]["wrappedKey"], ('A', 'B'))
    });
    edit_meta(&m, "check", |v| {
        flip_first(&mut v["layers"][0]["keyCheck"], ('0', '1'))
    });
    std::fs::remove_file(m.backing_dir("nodata").join("data")).unwrap();
    m.mount();

    let causes = [
        ("wrapped", "tampered wrapped key"),
        ("check", "keyCheck mismatch"),
        ("nodata", "data file"),
    ];
    // Before any open: found by the cheap checks (one platform unwrap per disk).
    for (d, cause) in causes {
        let state = key_state(&m, d);
        assert!(
            state.starts_with("Unavailable: ") && state.contains(cause),
            "{d}: {state}"
        );
    }
    for (d, cause) in causes {
        assert_unavailable(&m, d, cause);
    }
    assert!(key_state(&m, "nodata").contains("missing"));
    assert_serving(&m, "good", b"good");
}

/// A replaced platform key: its disks are unavailable and say so; a customer-key
/// disk, which the platform key does not wrap, goes on serving.
#[test]
fn replaced_platform_key_is_reported() {
    let mut m = Mounted::new();
    cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    m.create("p1", "1M");
    std::fs::write(m.disk("c1"), b"customer").unwrap();
    std::fs::write(m.disk("p1"), b"platform").unwrap();
    m.umount();
    // Another store's platform key, sealed for that store: it doesn't unseal here,
    // and it is not the key that wraps p1.
    let other = m.dir.path().join("other");
    run_ok(&["init", other.to_str().unwrap()]);
    std::fs::copy(
        other.join("keys/platform.key"),
        m.store.join("keys/platform.key"),
    )
    .unwrap();
    m.mount();
    assert_unavailable(&m, "p1", "platform.key was replaced");
    assert_serving(&m, "c1", b"customer");
}

/// Corrupts the first sealed key file in `dir`.
fn corrupt_key_file(dir: &Path) -> (std::path::PathBuf, Vec<u8>) {
    let pem = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "key"))
        .unwrap();
    let good = std::fs::read(&pem).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] = b'#';
    std::fs::write(&pem, &bad).unwrap();
    (pem, good)
}

/// A corrupt vault key or set file makes its disks unavailable, not revoked, and
/// the reconciler leaves them so; platform-key disks are unaffected.
#[test]
fn corrupt_key_or_set_is_unavailable_not_revoked() {
    let mut m = Mounted::new();
    cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    m.create("p1", "1M");
    std::fs::write(m.disk("c1"), b"customer").unwrap();
    std::fs::write(m.disk("p1"), b"platform").unwrap();
    m.umount();

    let (pem, good_pem) = corrupt_key_file(&m.store.join("vault/keys/k1"));
    m.mount();
    assert_unavailable(&m, "c1", "key 'k1' is unusable");
    // Reconciler passes don't turn it into a revocation.
    let passes = status(&m)["reconcilerPasses"].as_u64().unwrap();
    Mounted::wait_for(LIMIT, || {
        status(&m)["reconcilerPasses"].as_u64().unwrap() >= passes + 2
    })
    .expect("reconciler passes");
    assert_unavailable(&m, "c1", "key 'k1' is unusable");
    assert_serving(&m, "p1", b"platform");
    m.umount();

    std::fs::write(&pem, &good_pem).unwrap();
    let set = m.store.join("disk-encryption-sets/set1.json");
    let mut b = std::fs::read(&set).unwrap();
    b[0] = b'x';
    std::fs::write(&set, &b).unwrap();
    m.mount();
    assert_unavailable(&m, "c1", "disk encryption set 'set1' is unusable");
    assert_serving(&m, "p1", b"platform");
}

/// While the reconciler can't run, customer-key disks refuse I/O and say why;
/// once it runs again they are available.
#[test]
fn reconciler_down_is_reported() {
    let mut m = Mounted::new();
    cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    m.create("p1", "1M");
    std::fs::write(m.disk("c1"), b"customer").unwrap();
    std::fs::write(m.disk("p1"), b"platform").unwrap();
    m.umount();
    let trigger = m.dir.path().join("panic-now");
    let fault = format!("reconcile.access=1+:panic-if={}", trigger.display());
    m.mount_with(&[], &[("DISKVAULT_FAULT", &fault)]);
    assert_serving(&m, "c1", b"customer");

    File::create(&trigger).unwrap();
    Mounted::wait_for(LIMIT, || status(&m)["reconciler"]["state"] == "Failing")
        .expect("reconciler failure is noticed");
    assert_unavailable(&m, "c1", "not being enforced");
    assert_serving(&m, "p1", b"platform");

    std::fs::remove_file(&trigger).unwrap();
    Mounted::wait_for(LIMIT, || status(&m)["reconciler"]["state"] == "Running")
        .expect("reconciler recovers");
    assert_serving(&m, "c1", b"customer");
}

//! Snapshots and images under customer keys, on real stores: a copy keeps its
//! source's keys and disk encryption set (and other sets or types are refused, also
//! for disks made from copies, except a re-encrypting copy of a platform-key source);
//! a disk that shares keys with copies can't move to other keys; a set's key rotation
//! re-wraps snapshots and images too; revoking the key stops them as it stops disks;
//! deleting the last object of a family leaves neither its wrapped key nor its
//! deltas in the store; and a disk that shares data with copies is rekeyed without
//! touching them.

mod common;

use common::cmk::*;
use common::keyed::{ctl, js, LIMIT};
use common::*;
use serde_json::Value;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const PLATFORM: &str = "EncryptionAtRestWithPlatformKey";

fn set_id(name: &str) -> String {
    format!("/diskvault/diskEncryptionSets/{name}")
}

fn with_store<'a>(store: &'a str, args: &[&'a str]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--store", store]);
    v
}

/// A CLI command on `store` that must succeed; its stdout.
fn ok(store: &str, args: &[&str]) -> String {
    run_ok(&with_store(store, args))
}

fn json(store: &str, args: &[&str]) -> Value {
    js(&ok(store, args))
}

/// A CLI command line (split at spaces) on `store` that must succeed; its stdout.
fn cli(store: &str, line: &str) -> String {
    ok(store, &line.split_whitespace().collect::<Vec<_>>())
}

/// A CLI command line (split at spaces) that must be refused: exit status 1 and a
/// one-line message holding every needle (the cause and the fix).
fn refused(store: &str, line: &str, needles: &[&str]) {
    let args: Vec<&str> = line.split_whitespace().collect();
    let full = with_store(store, &args);
    let out = run(&full);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{args:?} should be refused: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "not one line: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: expected '{n}' in: {err}");
    }
}

/// `snapshot show`, `image show` or `disk show`.
fn show(store: &str, kind: &str, name: &str) -> Value {
    json(store, &[kind, "show", name])
}

/// What every list shows (snapshots, images, disks), to check a refusal changed nothing.
fn lists(store: &str) -> [String; 3] {
    ["snapshot", "image", "disk"].map(|k| ok(store, &[k, "list", "--json"]))
}

/// The metadata directory of the object `name` in `STORE/KIND` (disks, snapshots, images).
fn meta_dir(store: &Path, kind: &str, name: &str) -> PathBuf {
    for e in std::fs::read_dir(store.join(kind)).unwrap() {
        let p = e.unwrap().path();
        let Ok(b) = std::fs::read(p.join("meta.json")) else {
            continue;
        };
        let meta: Value = serde_json::from_slice(&b).unwrap();
        if meta["name"] == name {
            return p;
        }
    }
    panic!("no {kind} named {name} in {}", store.display());
}

fn meta(store: &Path, kind: &str, name: &str) -> Value {
    js(&std::fs::read_to_string(meta_dir(store, kind, name).join("meta.json")).unwrap())
}

/// The key (with version) that wraps layer 0 of an object, from its metadata.
fn kid0(store: &Path, kind: &str, name: &str) -> String {
    meta(store, kind, name)["layers"][0]["kid"]
        .as_str()
        .unwrap()
        .to_string()
}

fn wrapped0(store: &Path, kind: &str, name: &str) -> String {
    meta(store, kind, name)["layers"][0]["wrappedKey"]
        .as_str()
        .unwrap()
        .to_string()
}

fn version(kid: &str) -> &str {
    kid.rsplit('/').next().unwrap()
}

/// An object as the mount's status.json shows it (`disks`, `snapshots`, `images`).
fn status_obj(m: &Mounted, list: &str, name: &str) -> Value {
    let status = js(&std::fs::read_to_string(m.mnt.join(".vault/status.json")).unwrap());
    status[list]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("{name} not in status.json {list}"))
        .clone()
}

fn key_state(m: &Mounted, list: &str, name: &str) -> String {
    status_obj(m, list, name)["keyState"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The mounted file of an object: MOUNT/disks/NAME, MOUNT/snapshots/NAME, ...
fn file(mnt: &Path, kind: &str, name: &str) -> PathBuf {
    mnt.join(kind).join(name)
}

/// The whole content of an object, through a new open.
fn content(mnt: &Path, kind: &str, name: &str) -> Vec<u8> {
    std::fs::read(file(mnt, kind, name)).unwrap_or_else(|e| panic!("reading {kind}/{name}: {e}"))
}

fn eio<T>(r: std::io::Result<T>) -> bool {
    r.is_err_and(|e| e.raw_os_error() == Some(libc::EIO))
}

/// Writes `data` at the start of a mounted disk, synced.
fn write_all(m: &Mounted, disk: &str, data: &[u8]) {
    write_disk(&m.mnt, disk, data);
}

// ---------------------------------------------------------------------------------
// 1. Key rules and refusals, through the CLI on an unmounted and on a mounted store.
// ---------------------------------------------------------------------------------

#[test]
fn key_rules_cli_unmounted() {
    cli_unmounted(key_rules_and_refusals);
}

#[test]
fn key_rules_cli_mounted() {
    cli_mounted(key_rules_and_refusals);
}

/// Copies keep their source's set and type; other sets and types are refused with a
/// message naming the source's set; disks from customer-key copies share the data
/// (same set or none given), a disk from a platform-key snapshot under a set is a full
/// re-encrypted copy; a disk sharing keys with copies can't change keys. No refusal
/// changes anything.
fn key_rules_and_refusals(e: &Env, _via: Via, mounted: bool) {
    let s = e.s();
    let kid1 = e.ready_set1(Via::Cli);
    e.create_set(Via::Cli, "set2", &kid1);
    e.grant(Via::Cli, "set2");
    e.create_double_set(Via::Cli, "dbl", &kid1);
    e.grant(Via::Cli, "dbl");
    e.create_disk(Via::Cli, "c1", "set1");
    e.create_disk(Via::Cli, "c2", "dbl");
    cli(s, "disk create p1 --size 1M");
    let d1 = pattern(1, 1 << 20);
    let d2 = pattern(2, 1 << 20);
    let d3 = pattern(3, 1 << 20);
    // The mountpoint, when mounted: the data checks need it.
    let m = mounted.then_some(e.mnt.as_path());
    if let Some(m) = m {
        write_disk(m, "c1", &d1);
        write_disk(m, "c2", &d2);
        write_disk(m, "p1", &d3);
    }
    let (set1, set2, dbl) = (set_id("set1"), set_id("set2"), set_id("dbl"));

    // A snapshot of a customer-key disk gets the disk's set and type.
    cli(s, "snapshot create s1 --source c1");
    let s1 = show(s, "snapshot", "s1");
    assert_eq!(s1["encryption"]["type"], CMK);
    assert_eq!(arm_short(&s1["encryption"]["diskEncryptionSetId"]), set1);
    assert_eq!(
        arm_short(&s1["creationData"]["sourceResourceId"]),
        "/diskvault/disks/c1"
    );
    assert_eq!(s1["keyState"], "Available");
    // Naming the source's own set (by name or id) and type is accepted.
    cli(
        s,
        &format!(
            "snapshot create s1b --source c1 --disk-encryption-set {set1} --encryption-type {CMK}"
        ),
    );
    cli(s, "snapshot create sd --source c2");
    let sd = show(s, "snapshot", "sd");
    assert_eq!(sd["encryption"]["type"], DOUBLE);
    assert_eq!(arm_short(&sd["encryption"]["diskEncryptionSetId"]), dbl);
    cli(s, "image create i1 --source s1");
    let i1 = show(s, "image", "i1");
    assert_eq!(i1["encryption"]["type"], CMK);
    assert_eq!(arm_short(&i1["encryption"]["diskEncryptionSetId"]), set1);
    assert_eq!(i1["keyState"], "Available");
    cli(s, "image create i2 --source c2 --disk-encryption-set dbl");
    assert_eq!(
        arm_short(&show(s, "image", "i2")["encryption"]["diskEncryptionSetId"]),
        dbl
    );
    cli(s, "snapshot create ps --source p1");
    assert_eq!(show(s, "snapshot", "ps")["encryption"]["type"], PLATFORM);

    // Other sets and other encryption types are refused, for snapshots and images of
    // disks and snapshots, single and double encryption alike, and for disks made
    // from customer-key copies.
    let before = lists(s);
    let set_no = "must use the disk encryption set of its source";
    let type_no = "must use the encryption of its source";
    for (line, needles) in [
        (
            "snapshot create x --source c1 --disk-encryption-set set2".to_string(),
            vec!["snapshot 'x'", set_no, "disk 'c1'", &set1, "'set2'"],
        ),
        (
            "snapshot create x --source c1 --disk-encryption-set dbl".into(),
            vec![set_no, &set1, "'dbl'"],
        ),
        (
            format!("snapshot create x --source c1 --disk-encryption-set {set2}"),
            vec![set_no, &set1, "'set2'"],
        ),
        (
            format!("snapshot create x --source c1 --encryption-type {PLATFORM}"),
            vec![type_no, "disk 'c1'", CMK, PLATFORM],
        ),
        (
            format!("snapshot create x --source c1 --encryption-type {DOUBLE}"),
            vec![type_no, CMK],
        ),
        (
            "snapshot create x --source s1 --disk-encryption-set set2".into(),
            vec![set_no, "snapshot 's1'", &set1],
        ),
        (
            "snapshot create x --source c2 --disk-encryption-set set1".into(),
            vec![set_no, "disk 'c2'", &dbl, "'set1'"],
        ),
        (
            format!("snapshot create x --source c2 --encryption-type {CMK}"),
            vec![type_no, "disk 'c2'", DOUBLE],
        ),
        (
            format!("snapshot create x --source c2 --encryption-type {PLATFORM}"),
            vec![type_no, DOUBLE],
        ),
        (
            "snapshot create x --source p1 --disk-encryption-set set1".into(),
            vec![set_no, "disk 'p1'", "platform key"],
        ),
        (
            "image create x --source c1 --disk-encryption-set set2".into(),
            vec!["image 'x'", set_no, "disk 'c1'", &set1],
        ),
        (
            "image create x --source sd --disk-encryption-set set1".into(),
            vec!["image 'x'", set_no, "snapshot 'sd'", &dbl],
        ),
        (
            "disk create x --source s1 --disk-encryption-set set2".into(),
            vec!["disk 'x'", set_no, "snapshot 's1'", &set1, "'set2'"],
        ),
        (
            "disk create x --source i1 --disk-encryption-set set2".into(),
            vec!["disk 'x'", set_no, "image 'i1'", &set1],
        ),
        (
            "disk create x --source sd --disk-encryption-set set1".into(),
            vec!["disk 'x'", set_no, "snapshot 'sd'", &dbl],
        ),
        // A platform-key disk from a customer-key snapshot would drop the customer key.
        (
            format!("disk create x --source s1 --encryption-type {PLATFORM}"),
            vec!["disk 'x'", type_no, CMK],
        ),
    ] {
        refused(s, &line, &needles);
    }
    assert_eq!(lists(s), before, "a refused copy changed something");

    // Disks from customer-key copies with the same set, or none (inherited), share
    // the copy's data and DEKs: instant, nothing of their own yet.
    cli(s, "disk create f1 --source s1 --disk-encryption-set set1");
    cli(s, "disk create f2 --source i1");
    cli(s, "disk create f3 --source sd");
    for (disk, set, ty, src, root, data) in [
        ("f1", &set1, CMK, "/diskvault/snapshots/s1", "c1", &d1),
        ("f2", &set1, CMK, "/diskvault/images/i1", "c1", &d1),
        ("f3", &dbl, DOUBLE, "/diskvault/snapshots/sd", "c2", &d2),
    ] {
        let d = show(s, "disk", disk);
        assert_eq!(d["encryption"]["type"], ty, "{disk}");
        assert_eq!(
            arm_short(&d["encryption"]["diskEncryptionSetId"]),
            *set,
            "{disk}"
        );
        assert_eq!(d["keyState"], "Available", "{disk}");
        assert_eq!(
            arm_short(&d["creationData"]["sourceResourceId"]),
            src,
            "{disk}"
        );
        // The source's delta plus its own writable one.
        assert_eq!(d["deltas"], 2, "{disk}: not sharing its source's data");
        // Its key check is bound to the family's first disk: the same DEKs.
        assert_eq!(
            meta(&e.store, "disks", disk)["keyCheckId"],
            meta(&e.store, "disks", root)["id"],
            "{disk}: other DEKs than its family's"
        );
        if let Some(m) = m {
            let used = &d["usedBytes"];
            assert!(used["shared"].as_u64().unwrap() > 0, "{disk}: {used}");
            assert_eq!(used["unique"], 0, "{disk}: {used}");
            assert!(content(m, "disks", disk) == *data, "{disk}: content");
        }
    }
    if let Some(m) = m {
        for (kind, name, data) in [
            ("snapshots", "s1", &d1),
            ("snapshots", "sd", &d2),
            ("images", "i1", &d1),
            ("snapshots", "ps", &d3),
        ] {
            assert!(content(m, kind, name) == *data, "{kind}/{name}");
        }
    }

    // A disk from a platform-key snapshot under a set is a full, re-encrypted copy.
    cli(s, "disk create pc --source ps --disk-encryption-set set1");
    let pc = show(s, "disk", "pc");
    assert_eq!(pc["encryption"]["type"], CMK);
    assert_eq!(arm_short(&pc["encryption"]["diskEncryptionSetId"]), set1);
    assert_eq!(pc["keyState"], "Available");
    assert_eq!(pc["keyId"], kid1.as_str());
    assert_eq!(pc["usedBytes"]["shared"], 0, "{}", pc["usedBytes"]);
    assert_eq!(pc["deltas"], 1);
    assert_eq!(kid0(&e.store, "disks", "pc"), kid1);
    assert!(kid0(&e.store, "snapshots", "ps").starts_with("platform/"));
    assert_ne!(
        meta(&e.store, "disks", "pc")["keyCheckId"],
        meta(&e.store, "disks", "p1")["id"]
    );
    assert_eq!(show(s, "snapshot", "ps")["encryption"]["type"], PLATFORM);
    if let Some(m) = m {
        assert!(content(m, "disks", "pc") == d3, "pc: content");
        assert!(pc["usedBytes"]["unique"].as_u64().unwrap() >= d3.len() as u64);
    }

    // A disk sharing keys with snapshots, images or clones can't move to other keys;
    // the message names what it shares with and the way out.
    let before = lists(s);
    let fix = |d: &str| format!("diskvault disk rekey {d}");
    refused(
        s,
        "disk update c1 --disk-encryption-set set2",
        &["disk 'c1' shares its data and keys with", &fix("c1")],
    );
    refused(
        s,
        &format!("disk update p1 --encryption-type {CMK} --disk-encryption-set set1"),
        &[
            "disk 'p1' shares its data and keys with snapshot 'ps'",
            &fix("p1"),
        ],
    );
    refused(
        s,
        "disk update f1 --disk-encryption-set set2",
        &["disk 'f1' shares its data and keys with", &fix("f1")],
    );
    assert_eq!(lists(s), before, "a refused update changed something");
    assert_eq!(
        arm_short(&show(s, "disk", "c1")["encryption"]["diskEncryptionSetId"]),
        set1
    );
    assert_eq!(show(s, "disk", "p1")["encryption"]["type"], PLATFORM);
    // The same move of a disk without copies is allowed: the refusals were about sharing.
    e.create_disk(Via::Cli, "c3", "set1");
    cli(s, "disk update c3 --disk-encryption-set set2");
    assert_eq!(
        arm_short(&show(s, "disk", "c3")["encryption"]["diskEncryptionSetId"]),
        set2
    );
    if let Some(m) = m {
        assert!(content(m, "disks", "c1") == d1);
        assert!(content(m, "snapshots", "s1") == d1);
    }
}

// ---------------------------------------------------------------------------------
// 2. Rotation re-wraps snapshots and images.
// ---------------------------------------------------------------------------------

/// A new key version (by `des update` and by auto-rotation) re-wraps the disk, its
/// snapshot, image and clone; the old versions can then be disabled, and after a
/// remount every object still reads its own content.
#[test]
fn rotation_rewraps_snapshots_and_images() {
    let mut m = Mounted::new();
    let kid1 = cmk_setup(&m, &[("c1", "2M", "Premium_LRS")]);
    let s = m.s().to_string();
    let (a, b) = (pattern(21, 2 << 20), pattern(22, 1 << 20));
    write_all(&m, "c1", &a);
    cli(&s, "snapshot create s1 --source c1");
    cli(&s, "image create i1 --source s1");
    cli(&s, "disk create f1 --source s1");
    // The disk moves on: its first half is new, the copies keep the old content.
    write_all(&m, "c1", &b);
    let mut now = b.clone();
    now.extend_from_slice(&a[b.len()..]);
    let objects = [
        ("disks", "c1"),
        ("snapshots", "s1"),
        ("images", "i1"),
        ("disks", "f1"),
    ];
    for (kind, name) in objects {
        assert_eq!(kid0(&m.store, kind, name), kid1, "{kind}/{name}");
    }
    let wrapped_before = wrapped0(&m.store, "snapshots", "s1");

    // A new version by hand.
    let kid2 = json(&s, &["key", "rotate", "k1"])["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    cli(&s, &format!("des update set1 --key-url {kid2}"));
    let set = json(&s, &["des", "show", "set1"]);
    assert_eq!(set["provisioningState"], "Succeeded");
    assert_eq!(set["previousKeys"], serde_json::json!([]));
    for (kind, name) in objects {
        assert_eq!(
            kid0(&m.store, kind, name),
            kid2,
            "{kind}/{name} not re-wrapped"
        );
    }
    assert_ne!(wrapped0(&m.store, "snapshots", "s1"), wrapped_before);
    assert_eq!(key_state(&m, "snapshots", "s1"), "Available");

    // Auto-rotation follows the key's next version, snapshots and images included.
    cli(&s, "des update set1 --auto-rotate true");
    let kid3 = json(&s, &["key", "rotate", "k1"])["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    Mounted::wait_for(LIMIT, || {
        objects.iter().all(|(k, n)| kid0(&m.store, k, n) == kid3)
    })
    .unwrap_or_else(|| {
        panic!(
            "not all re-wrapped to {kid3}: {:?}",
            objects.map(|(k, n)| kid0(&m.store, k, n))
        )
    });

    // Nothing needs the old versions: disabling them is accepted and changes nothing.
    for old in [&kid1, &kid2] {
        let v = version(old);
        cli(&s, &format!("key set k1 --version {v} --enabled false"));
    }
    m.umount();
    m.mount();
    for (kind, name, want) in [
        ("disks", "c1", &now),
        ("snapshots", "s1", &a),
        ("images", "i1", &a),
        ("disks", "f1", &a),
    ] {
        assert!(
            content(&m.mnt, kind, name) == *want,
            "{kind}/{name} after remount"
        );
        assert_eq!(key_state(&m, kind, name), "Available", "{kind}/{name}");
    }
}

/// A rotation that can't re-wrap a snapshot keeps the old key in previousKeys and
/// refuses to disable it, as for disks; once the old key works again the rotation
/// completes, and the old key can go while the snapshot and image still read.
#[test]
fn previous_keys_cover_snapshots_and_images() {
    let m = Mounted::new();
    let kid1 = cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    let s = m.s().to_string();
    let data = pattern(31, 1 << 20);
    write_all(&m, "c1", &data);
    cli(&s, "snapshot create s1 --source c1");
    cli(&s, "image create i1 --source c1");
    // Only the snapshot and the image are left in the set.
    cli(&s, "disk delete c1");
    cli(&s, "key create k2");
    cli(&s, "key grant k2 --des set1");
    let kid2 = json(&s, &["key", "show", "k2"])["key"]["kid"]
        .as_str()
        .unwrap()
        .to_string();
    cli(&s, "key revoke-grant k1 --des set1");
    let err = run_err(&with_store(
        &s,
        &["des", "update", "set1", "--key-url", &kid2],
    ));
    assert!(
        err.contains("still moving to key")
            && err.contains("KeyVaultAccessForbidden")
            && (err.contains("'s1'") || err.contains("'i1'"))
            && err.contains("des update set1"),
        "{err}"
    );
    let set = json(&s, &["des", "show", "set1"]);
    assert_eq!(set["provisioningState"], "Updating");
    assert_eq!(set["previousKeys"][0]["keyUrl"], kid1.as_str());
    assert_eq!(kid0(&m.store, "snapshots", "s1"), kid1);
    assert_eq!(kid0(&m.store, "images", "i1"), kid1);
    // The one old version the snapshot still needs can't be disabled.
    let e = std::fs::write(
        m.mnt.join(format!(
            ".vault/keys/k1/versions/{}/enabled",
            version(&kid1)
        )),
        "false",
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let why = std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    assert!(
        why.contains("still needed by disk encryption set 'set1'") && why.contains("--force"),
        "{why}"
    );
    // Access comes back: the rotation finishes by itself, copies included.
    cli(&s, "key grant k1 --des set1");
    Mounted::wait_for(LIMIT, || {
        json(&s, &["des", "show", "set1"])["provisioningState"] == "Succeeded"
    })
    .expect("rotation completes");
    assert_eq!(
        json(&s, &["des", "show", "set1"])["previousKeys"],
        serde_json::json!([])
    );
    assert_eq!(kid0(&m.store, "snapshots", "s1"), kid2);
    assert_eq!(kid0(&m.store, "images", "i1"), kid2);
    // The whole old key can go now; the copies don't need it.
    cli(&s, "key set k1 --enabled false");
    let p0 = common::keyed::passes(&m);
    Mounted::wait_for(LIMIT, || common::keyed::passes(&m) > p0 + 1).expect("reconciler runs");
    assert!(content(&m.mnt, "snapshots", "s1") == data);
    assert!(content(&m.mnt, "images", "i1") == data);
    assert_eq!(key_state(&m, "snapshots", "s1"), "Available");
    assert_eq!(key_state(&m, "images", "i1"), "Available");
}

// ---------------------------------------------------------------------------------
// 3. Revocation.
// ---------------------------------------------------------------------------------

struct Trigger {
    name: &'static str,
    revoke: fn(&Mounted, &str),
    restore: fn(&Mounted, &str),
    state: &'static str,
}

/// Revoking the key (disabled, its grant removed, deleted) stops a snapshot, an image
/// and a disk made from the snapshot within the disks' bound, open handles and page
/// cache included, and shows Revoked; restoring brings the same data back on the same
/// handles. A platform-key snapshot reads throughout.
#[test]
fn revocation_stops_snapshots_images_and_clones() {
    let m = Mounted::new();
    let kid1 = cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    let s = m.s().to_string();
    let data = pattern(41, 1 << 20);
    let plain = pattern(42, 1 << 20);
    write_all(&m, "c1", &data);
    m.create("p1", "1M");
    write_all(&m, "p1", &plain);
    cli(&s, "snapshot create s1 --source c1");
    cli(&s, "image create i1 --source c1");
    cli(&s, "disk create f1 --source s1");
    cli(&s, "snapshot create ps --source p1");
    let objects = [("snapshots", "s1"), ("images", "i1"), ("disks", "f1")];
    let handles: Vec<File> = objects
        .iter()
        .map(|(k, n)| {
            // The clone is a disk: open it for writing too.
            if *k == "disks" {
                rw(&file(&m.mnt, k, n))
            } else {
                File::open(file(&m.mnt, k, n)).unwrap()
            }
        })
        .collect();
    let ps = File::open(file(&m.mnt, "snapshots", "ps")).unwrap();
    let triggers = [
        Trigger {
            name: "key disabled",
            revoke: |m, _| ctl(m, "keys/k1/enabled", "false"),
            restore: |m, _| ctl(m, "keys/k1/enabled", "true"),
            state: "Revoked: key k1 disabled at ",
        },
        Trigger {
            name: "version disabled",
            revoke: |m, v| ctl(m, &format!("keys/k1/versions/{v}/enabled"), "false"),
            restore: |m, v| ctl(m, &format!("keys/k1/versions/{v}/enabled"), "true"),
            state: "Revoked: key version https://",
        },
        Trigger {
            name: "grant removed",
            revoke: |m, _| ctl(m, "keys/k1/grants", "revoke set1"),
            restore: |m, _| ctl(m, "keys/k1/grants", "grant set1"),
            state: "Revoked: access of disk encryption set 'set1' to key k1 revoked at ",
        },
        Trigger {
            name: "key deleted",
            revoke: |m, _| {
                run_ok(&["key", "delete", "k1", "--store", m.s()]);
            },
            restore: |m, _| {
                run_ok(&["key", "recover", "k1", "--store", m.s()]);
            },
            state: "Revoked: key k1 deleted at ",
        },
    ];
    let mut buf = vec![0u8; 65536];
    let mut pbuf = vec![0u8; 65536];
    for t in &triggers {
        // Fill the page cache with plaintext through the open handles.
        for (h, (k, n)) in handles.iter().zip(&objects) {
            h.read_exact_at(&mut buf, 0).unwrap();
            assert!(buf[..] == data[..65536], "{}: {k}/{n}", t.name);
        }
        (t.revoke)(&m, version(&kid1));
        // Every 64 KiB of every object fails on the open handle: no cached page left.
        let all_fail = |buf: &mut [u8]| {
            handles.iter().all(|h| {
                (0..data.len() as u64)
                    .step_by(65536)
                    .all(|o| eio(h.read_at(buf, o)))
            })
        };
        let took = Mounted::wait_for(LIMIT, || all_fail(&mut buf))
            .unwrap_or_else(|| panic!("{}: copies still served after {LIMIT:?}", t.name));
        eprintln!("{}: revocation-to-EIO {took:?}", t.name);
        for (k, n) in objects {
            let e = File::open(file(&m.mnt, k, n)).unwrap_err();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EIO),
                "{}: new open of {k}/{n}",
                t.name
            );
            let state = key_state(&m, k, n);
            assert!(
                state.starts_with(t.state),
                "{}: {k}/{n} keyState {state}",
                t.name
            );
        }
        assert!(
            eio(handles[2].write_at(b"x", 0)),
            "{}: write to f1 served",
            t.name
        );
        // The platform-key snapshot is not affected.
        ps.read_exact_at(&mut pbuf, 0).unwrap();
        assert!(pbuf[..] == plain[..65536], "{}", t.name);
        assert!(content(&m.mnt, "snapshots", "ps") == plain, "{}", t.name);
        assert_eq!(key_state(&m, "snapshots", "ps"), "Available", "{}", t.name);

        (t.restore)(&m, version(&kid1));
        let took = Mounted::wait_for(LIMIT, || {
            handles.iter().all(|h| h.read_at(&mut buf, 0).is_ok())
        })
        .unwrap_or_else(|| panic!("{}: not restored after {LIMIT:?}", t.name));
        eprintln!("{}: restore {took:?}", t.name);
        for (h, (k, n)) in handles.iter().zip(&objects) {
            let mut all = vec![0u8; data.len()];
            h.read_exact_at(&mut all, 0).unwrap();
            assert!(all == data, "{}: {k}/{n} changed", t.name);
            assert_eq!(key_state(&m, k, n), "Available", "{}: {k}/{n}", t.name);
            assert!(content(&m.mnt, k, n) == data, "{}: reopen {k}/{n}", t.name);
        }
    }
}

// ---------------------------------------------------------------------------------
// 4. Crypto-shred.
// ---------------------------------------------------------------------------------

/// Names of the delta files in STORE/deltas (data and whiteout logs).
fn delta_files(store: &Path) -> Vec<String> {
    match std::fs::read_dir(store.join("deltas")) {
        Ok(rd) => rd
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect(),
        Err(_) => vec![],
    }
}

/// Deleting the disk leaves its snapshots (and their clone) readable; deleting the
/// last object of the family (the clone, while it is open) leaves no copy of the
/// family's wrapped key anywhere in the store and, once closed, none of its deltas.
/// Another family is untouched.
#[test]
fn deleting_the_last_of_a_family_shreds_its_key_and_data() {
    let m = Mounted::new();
    cmk_setup(
        &m,
        &[("c1", "2M", "Premium_LRS"), ("o1", "1M", "Premium_LRS")],
    );
    let s = m.s().to_string();
    let (a, b) = (pattern(51, 2 << 20), pattern(52, 1 << 20));
    write_all(&m, "c1", &a);
    cli(&s, "snapshot create s1 --source c1");
    write_all(&m, "c1", &b);
    cli(&s, "snapshot create s2 --source c1 --incremental");
    cli(&s, "image create i1 --source s2");
    cli(&s, "disk create f1 --source s1");
    // Another family that must survive.
    let other = pattern(53, 1 << 20);
    write_all(&m, "o1", &other);
    cli(&s, "snapshot create os --source o1");
    let mut at2 = b.clone();
    at2.extend_from_slice(&a[b.len()..]);

    // The family's wrapped key as the disk's first metadata holds it; every copy
    // holds the same bytes (one DEK, wrapped once).
    let wrapped = wrapped0(&m.store, "disks", "c1");
    assert!(wrapped.len() > 100);
    let family = [
        ("disks", "c1"),
        ("snapshots", "s1"),
        ("snapshots", "s2"),
        ("images", "i1"),
        ("disks", "f1"),
    ];
    let mut family_deltas = std::collections::BTreeSet::new();
    for (k, n) in family {
        assert_eq!(wrapped0(&m.store, k, n), wrapped, "{k}/{n}");
        for d in meta(&m.store, k, n)["stack"].as_array().unwrap() {
            family_deltas.insert(d.as_str().unwrap().to_string());
        }
    }
    let other_deltas: Vec<String> = ["o1", "os"]
        .iter()
        .zip(["disks", "snapshots"])
        .flat_map(|(n, k)| {
            meta(&m.store, k, n)["stack"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(family_deltas.len() >= 3, "{family_deltas:?}");
    assert!(family_deltas
        .iter()
        .all(|d| delta_files(&m.store).contains(d)));
    let has_key = || contains(&all_bytes(&m.store), wrapped.as_bytes());
    let family_files = || -> Vec<String> {
        delta_files(&m.store)
            .into_iter()
            .filter(|f| family_deltas.iter().any(|d| f.starts_with(d.as_str())))
            .collect()
    };

    // The disk goes; its snapshots, image and clone keep their content.
    cli(&s, "disk delete c1");
    assert!(content(&m.mnt, "snapshots", "s1") == a);
    assert!(content(&m.mnt, "snapshots", "s2") == at2);
    assert!(content(&m.mnt, "images", "i1") == at2);
    assert!(content(&m.mnt, "disks", "f1") == a);
    assert!(has_key(), "the copies still need the wrapped key");

    // rm on the mount, the CLI, and the control file delete the copies.
    std::fs::remove_file(file(&m.mnt, "snapshots", "s1")).unwrap();
    cli(&s, "snapshot delete s2");
    std::fs::write(m.mnt.join(".vault/images/i1/delete"), "i1").unwrap();
    // f1 alone still reads what s1 held.
    assert!(content(&m.mnt, "disks", "f1") == a);
    assert!(has_key());
    assert!(!family_files().is_empty());

    // The last one goes while open: the handle still reads (unlink semantics), but
    // the wrapped key is gone from the store at once.
    let h = File::open(file(&m.mnt, "disks", "f1")).unwrap();
    std::fs::remove_file(file(&m.mnt, "disks", "f1")).unwrap();
    assert!(
        read_at(&h, 0, 4096) == a[..4096],
        "open handle after delete"
    );
    assert!(!has_key(), "the family's wrapped key is still in the store");
    drop(h);
    // Once closed (the kernel's release comes after close(2)), no delta of it is left.
    Mounted::wait_for(LIMIT, || family_files().is_empty())
        .unwrap_or_else(|| panic!("family deltas left: {:?}", family_files()));
    assert!(!has_key());
    // Nothing of the family is listed; the other family is whole.
    for k in ["snapshot", "image", "disk"] {
        let l = ok(&s, &[k, "list", "--json"]);
        for n in ["c1", "s1", "s2", "i1", "f1"] {
            assert!(!l.contains(&format!("\"name\": \"{n}\"")), "{k} {n} listed");
        }
    }
    let left = delta_files(&m.store);
    assert!(
        other_deltas.iter().all(|d| left.contains(d)),
        "other family's deltas removed: {other_deltas:?} not all in {left:?}"
    );
    assert!(content(&m.mnt, "disks", "o1") == other);
    assert!(content(&m.mnt, "snapshots", "os") == other);
}

// ---------------------------------------------------------------------------------
// Rekey of disks that share data with copies.
// ---------------------------------------------------------------------------------

/// A disk with a snapshot, an image and a clone is rekeyed: the disk gets new DEKs
/// (a new wrapped key) and keeps its content; the copies keep theirs, under the old
/// DEKs. The disk no longer shares keys, so it may then move to another set.
#[test]
fn rekey_of_a_disk_with_copies_leaves_them_alone() {
    let m = Mounted::new();
    let kid1 = cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    let s = m.s().to_string();
    cli(&s, &format!("des create set2 --key-url {kid1}"));
    cli(&s, "key grant k1 --des set2");
    let (a, b) = (pattern(61, 1 << 20), pattern(62, 256 << 10));
    write_all(&m, "c1", &a);
    cli(&s, "snapshot create s1 --source c1");
    cli(&s, "image create i1 --source c1");
    cli(&s, "disk create f1 --source s1");
    write_all(&m, "c1", &b);
    let mut now = b.clone();
    now.extend_from_slice(&a[b.len()..]);
    let wrapped = wrapped0(&m.store, "disks", "c1");
    cli(&s, "disk rekey c1");
    assert_ne!(
        wrapped0(&m.store, "disks", "c1"),
        wrapped,
        "c1 kept its DEK"
    );
    // The deltas noted for the rekey's reclaim are done with once it is: `.gc` is
    // cleared now, not at the next mount.
    assert!(
        !m.store.join("deltas/.gc").exists(),
        "deltas/.gc: {:?}",
        std::fs::read_to_string(m.store.join("deltas/.gc"))
    );
    for (k, n) in [("snapshots", "s1"), ("images", "i1"), ("disks", "f1")] {
        assert_eq!(wrapped0(&m.store, k, n), wrapped, "{k}/{n}");
        assert!(content(&m.mnt, k, n) == a, "{k}/{n} after the rekey of c1");
    }
    assert!(content(&m.mnt, "disks", "c1") == now);
    assert_eq!(show(&s, "disk", "c1")["keyState"], "Available");
    // Nothing shares c1's keys any more: moving it to another set is no longer refused.
    cli(&s, "disk update c1 --disk-encryption-set set2");
    assert_eq!(
        arm_short(&show(&s, "disk", "c1")["encryption"]["diskEncryptionSetId"]),
        set_id("set2")
    );
    assert!(content(&m.mnt, "disks", "c1") == now);
    assert!(content(&m.mnt, "snapshots", "s1") == a);
}

/// A disk made from a snapshot is rekeyed: its content stays, it stays available,
/// and the snapshot still reads.
#[test]
fn rekey_of_a_disk_made_from_a_snapshot() {
    let m = Mounted::new();
    cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    let s = m.s().to_string();
    let (a, b) = (pattern(71, 1 << 20), pattern(72, 128 << 10));
    write_all(&m, "c1", &a);
    cli(&s, "snapshot create s1 --source c1");
    cli(&s, "disk create f1 --source s1");
    write_all(&m, "f1", &b);
    let mut f1 = b.clone();
    f1.extend_from_slice(&a[b.len()..]);
    let wrapped = wrapped0(&m.store, "disks", "f1");
    cli(&s, "disk rekey f1");
    let d = show(&s, "disk", "f1");
    assert_eq!(d["keyState"], "Available", "{d}");
    assert_ne!(wrapped0(&m.store, "disks", "f1"), wrapped);
    assert!(content(&m.mnt, "disks", "f1") == f1);
    assert!(content(&m.mnt, "snapshots", "s1") == a);
    assert!(content(&m.mnt, "disks", "c1") == a);
}

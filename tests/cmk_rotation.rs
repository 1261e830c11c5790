//! Key rotation for disk encryption sets: a new key version, the set moved to it, its
//! disks (made in the set or moved into it) re-wrapped, and the old version no longer
//! needed. Through the CLI (unmounted and mounted) and through the control files; and
//! disks made and re-wrapped on an unmounted store serve data once mounted.

mod common;

use common::cmk::*;
use common::*;

every_way!(rotating_the_key_and_moving_the_set_rewraps_its_disks);

/// Rotate the key and move the set to the new version: DEKs are re-wrapped, so the
/// old version is needed only by the disks of a set still on it (dbl).
fn rotating_the_key_and_moving_the_set_rewraps_its_disks(e: &Env, via: Via, mounted: bool) {
    let data = pattern(7, 1 << 20);
    let kid1 = e.ready_set1(via);
    e.create_disk(via, "c1", "set1");
    e.create_double_set(via, "dbl", &kid1);
    e.grant(via, "dbl");
    e.create_disk(via, "c2", "dbl");
    run_ok(&["disk", "create", "p1", "--size", "1M", "--store", e.s()]);
    e.move_to_cmk(via, "p1", "set1");
    if mounted {
        write_disk(&e.mnt, "c1", &data);
        write_disk(&e.mnt, "c2", &data);
    }
    e.ok(
        via,
        &["key", "rotate", "cmk1"],
        Ctl::Write("keys/cmk1/rotate", "1".into()),
    );
    let kid2 = e.kid("cmk1");
    assert_ne!(kid1, kid2);
    e.ok(
        via,
        &["des", "update", "set1", "--key-url", &kid2],
        Ctl::Write("disk-encryption-sets/set1/key-url", kid2.clone()),
    );
    let set1 = e.json(&["des", "show", "set1"]);
    assert_eq!(set1["activeKey"]["keyUrl"], kid2.as_str());
    assert_eq!(set1["previousKeys"], serde_json::json!([]));
    assert_eq!(set1["provisioningState"], "Succeeded");
    assert!(set1["lastKeyRotationTimestamp"].is_string());
    assert_eq!(e.disk("c1")["keyId"], kid2.as_str());
    assert_eq!(e.disk("p1")["keyId"], kid2.as_str());
    // The old version is no longer needed: disabling it leaves c1 readable.
    let v1 = kid1.rsplit('/').next().unwrap();
    e.ok(
        via,
        &["key", "set", "cmk1", "--version", v1, "--enabled", "false"],
        Ctl::Write(&format!("keys/cmk1/versions/{v1}/enabled"), "false".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1").unwrap(), data);
        assert_eq!(
            read_disk(&e.mnt, "c2"),
            Err(libc::EIO),
            "c2 (set dbl) is still on version 1"
        );
    }
    e.ok(
        via,
        &["key", "set", "cmk1", "--version", v1, "--enabled", "true"],
        Ctl::Write(
            &format!("keys/cmk1/versions/{v1}/update"),
            "enabled=true".into(),
        ),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c2").unwrap(), data);
    }
}

/// Disks of every kind made through the CLI on an unmounted store (customer key,
/// double encryption, moved from the platform key), and re-wrapped there by a
/// rotation, serve data once mounted.
#[test]
fn disks_made_and_rewrapped_unmounted_work_once_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let e = fresh_env(dir.path());
    run_ok(&["init", e.s(), "--vault-name", "cli-vault"]);
    let via = Via::Cli;
    let kid1 = e.ready_set1(via);
    e.create_disk(via, "c1", "set1");
    e.create_double_set(via, "dbl", &kid1);
    e.grant(via, "dbl");
    e.create_disk(via, "c2", "dbl");
    run_ok(&["disk", "create", "p1", "--size", "1M", "--store", e.s()]);
    e.move_to_cmk(via, "p1", "set1");
    e.ok(
        via,
        &["key", "rotate", "cmk1"],
        Ctl::Write("keys/cmk1/rotate", "1".into()),
    );
    let kid2 = e.kid("cmk1");
    e.ok(
        via,
        &["des", "update", "set1", "--key-url", &kid2],
        Ctl::Write("disk-encryption-sets/set1/key-url", kid2.clone()),
    );
    // The data path works for every kind of disk once mounted.
    let mut m = Mounted::attach(dir.path(), &e.store, &e.mnt);
    for d in ["c1", "c2", "p1"] {
        let data = pattern(11, 300_000);
        write_disk(&m.mnt, d, &data);
        assert_eq!(&read_disk(&m.mnt, d).unwrap()[..data.len()], &data[..]);
    }
    m.umount();
}

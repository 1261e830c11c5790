//! Disk encryption sets and their grants: a set takes a versioned key and gets an
//! identity, needs a grant of get, wrapKey and unwrapKey, moves platform-key disks to
//! the customer key (and not back), can't be deleted while in use, and stops its
//! disks when its grant is revoked. Each step runs through the CLI (unmounted and
//! mounted) and through the control files; then moving an open disk on a real mount.

mod common;

use common::cmk::*;
use common::*;
use serde_json::Value;

every_way!(
    a_set_takes_a_versioned_key_and_has_an_identity,
    a_set_needs_a_grant_of_get_wrap_and_unwrap,
    a_platform_key_disk_moves_to_the_customer_key_and_not_back,
    a_set_in_use_cannot_be_deleted_and_an_unused_one_can,
    revoking_a_grant_stops_the_sets_disks,
);

/// A versionless URL needs auto-rotation; a versioned one makes a set with a
/// system-assigned identity.
fn a_set_takes_a_versioned_key_and_has_an_identity(e: &Env, via: Via, _mounted: bool) {
    let kid1 = e.create_cmk1(via);
    e.protect(via);
    e.fails(
        via,
        &["des", "create", "set1", "--key-url", "cmk1"],
        Ctl::Write("disk-encryption-sets/create", "set1 cmk1".into()),
        libc::EINVAL,
        "has no version",
    );
    e.ok(
        via,
        &["des", "create", "set1", "--key-url", &kid1],
        Ctl::Write("disk-encryption-sets/create", format!("set1 {kid1}")),
    );
    let set1 = e.json(&["des", "show", "set1"]);
    assert_eq!(set1["activeKey"]["keyUrl"], kid1.as_str());
    assert_eq!(set1["encryptionType"], CMK);
    assert_eq!(set1["identity"]["type"], "SystemAssigned");
    let principal = set1["identity"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(principal.len(), 36);
}

/// Without a grant the set can't be used, and wrapKey alone is not enough to wrap:
/// the set also needs get. The grant names the set's identity.
fn a_set_needs_a_grant_of_get_wrap_and_unwrap(e: &Env, via: Via, _mounted: bool) {
    let kid1 = e.create_cmk1(via);
    e.protect(via);
    e.create_set(via, "set1", &kid1);
    let principal = e.json(&["des", "show", "set1"])["identity"]["principalId"]
        .as_str()
        .unwrap()
        .to_string();
    e.fails(
        via,
        &["disk", "create", "c1", "--size", "1M", "--disk-encryption-set", "set1"],
        Ctl::Write("disks/create", "c1 1M des=set1".into()),
        libc::EACCES,
        "KeyVaultAccessForbidden: grant get, wrapKey and unwrapKey permissions on key cmk1 to disk encryption set 'set1'",
    );
    e.ok(
        via,
        &[
            "key",
            "grant",
            "cmk1",
            "--des",
            "set1",
            "--permissions",
            "wrapKey,unwrapKey",
        ],
        Ctl::Write("keys/cmk1/grants", "grant set1 wrapKey,unwrapKey".into()),
    );
    e.fails(
        via,
        &[
            "disk",
            "create",
            "c1",
            "--size",
            "1M",
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/create", "c1 1M des=set1".into()),
        libc::EACCES,
        "KeyVaultAccessForbidden",
    );
    e.ok(
        via,
        &["key", "grant", "cmk1", "--des", "set1"],
        Ctl::Write("keys/cmk1/grants", "grant set1".into()),
    );
    let grants = e.json(&["key", "show", "cmk1"])["grants"].clone();
    assert_eq!(grants[0]["objectId"], principal.as_str());
    e.ok(
        via,
        &[
            "disk",
            "create",
            "c1",
            "--size",
            "1M",
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/create", "c1 1M des=set1".into()),
    );
    let c1 = e.disk("c1");
    assert_eq!(c1["encryption"]["type"], CMK);
    assert_eq!(
        arm_short(&c1["encryption"]["diskEncryptionSetId"]),
        "/diskvault/diskEncryptionSets/set1"
    );
    assert_eq!(c1["keyId"], kid1.as_str());
}

/// A platform-key disk moves to the customer key, data intact; back is refused.
fn a_platform_key_disk_moves_to_the_customer_key_and_not_back(e: &Env, via: Via, mounted: bool) {
    let data = pattern(7, 1 << 20);
    e.ready_set1(via);
    run_ok(&["disk", "create", "p1", "--size", "1M", "--store", e.s()]);
    if mounted {
        write_disk(&e.mnt, "p1", &data);
    }
    e.ok(
        via,
        &[
            "disk",
            "update",
            "p1",
            "--encryption-type",
            CMK,
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/p1/encryption", format!("{CMK} set1")),
    );
    assert_eq!(e.disk("p1")["encryption"]["type"], CMK);
    e.fails(
        via,
        &[
            "disk",
            "update",
            "p1",
            "--encryption-type",
            "EncryptionAtRestWithPlatformKey",
        ],
        Ctl::Write(
            "disks/p1/encryption",
            "EncryptionAtRestWithPlatformKey".into(),
        ),
        libc::EPERM,
        "customer-managed key encryption cannot be disabled; copy the data to a new disk",
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "p1").unwrap(), data);
    }
}

/// A set in use can't be deleted; an unused one can. A set on a versionless URL
/// follows the key's latest version while auto-rotation is on.
fn a_set_in_use_cannot_be_deleted_and_an_unused_one_can(e: &Env, via: Via, _mounted: bool) {
    e.ready_set1(via);
    e.create_disk(via, "c1", "set1");
    e.ok(
        via,
        &["key", "rotate", "cmk1"],
        Ctl::Write("keys/cmk1/rotate", "1".into()),
    );
    let kid2 = e.kid("cmk1");
    e.fails(
        via,
        &["des", "delete", "set1"],
        Ctl::Rmdir("disk-encryption-sets/set1"),
        libc::EBUSY,
        "is used by",
    );
    e.ok(
        via,
        &[
            "des",
            "create",
            "auto",
            "--key-url",
            "cmk1",
            "--auto-rotate",
        ],
        Ctl::Write(
            "disk-encryption-sets/create",
            "auto cmk1 auto-rotate=true".into(),
        ),
    );
    assert_eq!(
        e.json(&["des", "show", "auto"])["activeKey"]["keyUrl"],
        kid2.as_str()
    );
    assert_eq!(
        e.json(&["des", "show", "auto"])["rotationToLatestKeyVersionEnabled"],
        true
    );
    e.ok(
        via,
        &["des", "update", "auto", "--auto-rotate", "false"],
        Ctl::Write("disk-encryption-sets/auto/auto-rotate", "false".into()),
    );
    assert_eq!(
        e.json(&["des", "show", "auto"])["rotationToLatestKeyVersionEnabled"],
        false
    );
    e.ok(
        via,
        &["des", "delete", "auto"],
        Ctl::Rmdir("disk-encryption-sets/auto"),
    );
    assert!(run_ok(&["des", "list", "--json", "--store", e.s()]).contains("\"set1\""));
}

/// Revoking a grant stops the set's disks; granting again restores them.
fn revoking_a_grant_stops_the_sets_disks(e: &Env, via: Via, mounted: bool) {
    let data = pattern(7, 1 << 20);
    let kid1 = e.create_cmk1(via);
    e.protect(via);
    e.create_double_set(via, "dbl", &kid1);
    e.grant(via, "dbl");
    e.create_disk(via, "c2", "dbl");
    if mounted {
        write_disk(&e.mnt, "c2", &data);
    }
    e.ok(
        via,
        &["key", "revoke-grant", "cmk1", "--des", "dbl"],
        Ctl::Write("keys/cmk1/grants", "revoke dbl".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c2"), Err(libc::EIO));
    }
    e.ok(
        via,
        &["key", "grant", "cmk1", "--des", "dbl"],
        Ctl::Write("keys/cmk1/grants", "grant dbl get,wrapKey,unwrapKey".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c2").unwrap(), data);
    }
}

#[test]
fn moving_a_disk_to_cmk_needs_it_closed_and_rewraps_only() {
    let (m, kid) = prepared();
    let s = m.s().to_string();
    m.create("p1", "2M");
    let data = pattern(3, 2 << 20);
    write_disk(&m.mnt, "p1", &data);
    let backing = m.backing_dir("p1").join("data");
    let cipher_before = std::fs::read(&backing).unwrap();
    // Held open: EBUSY through the control file, a clear message through the CLI.
    let held = std::fs::File::open(m.disk("p1")).unwrap();
    let e = std::fs::write(
        m.mnt.join(".vault/disks/p1/encryption"),
        format!("{CMK} set1"),
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let msg = run_err(&[
        "disk",
        "update",
        "p1",
        "--encryption-type",
        CMK,
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    assert!(msg.contains("is attached"), "{msg}");
    assert_eq!(
        serde_json::from_str::<Value>(&run_ok(&["disk", "show", "p1", "--store", &s])).unwrap()
            ["encryption"]["type"],
        "EncryptionAtRestWithPlatformKey"
    );
    drop(held);
    // The kernel sends the release after close(2) returns.
    Mounted::wait_for(std::time::Duration::from_secs(5), || {
        serde_json::from_str::<Value>(&run_ok(&["disk", "show", "p1", "--store", &s])).unwrap()
            ["diskState"]
            == "Unattached"
    })
    .expect("released");
    run_ok(&[
        "disk",
        "update",
        "p1",
        "--encryption-type",
        CMK,
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    let show: Value =
        serde_json::from_str(&run_ok(&["disk", "show", "p1", "--store", &s])).unwrap();
    assert_eq!(show["encryption"]["type"], CMK);
    assert_eq!(show["keyId"], kid.as_str());
    // Not one byte of ciphertext changed: only the wrapping did.
    assert!(
        std::fs::read(&backing).unwrap() == cipher_before,
        "data was re-encrypted"
    );
    assert_eq!(read_disk(&m.mnt, "p1").unwrap(), data);
    // Adding double encryption would re-encrypt, so it is refused.
    run_ok(&[
        "des",
        "create",
        "dbl",
        "--key-url",
        &kid,
        "--encryption-type",
        DOUBLE,
        "--store",
        &s,
    ]);
    m.create("p2", "1M");
    let msg = run_err(&[
        "disk",
        "update",
        "p2",
        "--disk-encryption-set",
        "dbl",
        "--store",
        &s,
    ]);
    assert!(msg.contains("re-encrypt"), "{msg}");
    let status: Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/status.json")).unwrap()).unwrap();
    let p1 = status["disks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["name"] == "p1")
        .unwrap();
    assert_eq!(
        arm_short(&p1["encryption"]["diskEncryptionSetId"]),
        "/diskvault/diskEncryptionSets/set1"
    );
}

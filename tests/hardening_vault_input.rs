//! Hardening of what the key vault's control files take (issue 8, and what the
//! adversarial tester found in them): far-future times, rotate, purge and recover
//! words, empty writes, principal ids, fields given twice, set names, rotation policy
//! floors, RFC 3339 offsets and grant JSON. Each on a real mount.

mod common;
use common::vault::*;
use common::*;

use std::os::unix::fs::FileExt;

fn wait_reconciler_passes(m: &Mounted, n: u64) {
    let passes = || -> u64 {
        let v: serde_json::Value = serde_json::from_str(&read(m, "status.json").unwrap()).unwrap();
        v["reconcilerPasses"].as_u64().unwrap_or(0)
    };
    let start = passes();
    // Each control write waits for a pass; nudge with a harmless write.
    let done = Mounted::wait_for(std::time::Duration::from_secs(20), || {
        let _ = ctl(m, "retention-days", &read(m, "retention-days").unwrap());
        passes() >= start + n
    });
    assert!(done.is_some(), "the reconciler made no progress");
}

#[test]
fn far_future_times_are_refused_and_stored_ones_still_show() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    let before = read(&m, "keys/k1/key.json").unwrap();
    for (path, data) in [
        ("keys/k1/exp", "+3000000d"),
        ("keys/k1/exp", "+106751991167300d"),
        ("keys/k1/nbf", "10000-01-01"),
        ("keys/k1/exp", "10000-01-01T00:00:00Z"),
        ("keys/k1/update", "exp=+3000000d"),
        ("keys/k1/update", r#"{"expires":"+106751991167300d"}"#),
        ("keys/k1/rotate", "1 exp=+3000000d"),
        ("keys/k1/rotate", "exp=+106751991167300d"),
        ("keys/create", "k2 exp=+3000000d"),
        (
            "keys/k1/rotation-policy",
            r#"{"lifetimeActions":[],"attributes":{"expiryTime":"P3000000D"}}"#,
        ),
        (
            "keys/k1/rotation-policy",
            r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P3000000D"},"action":{"type":"Rotate"}}]}"#,
        ),
        (
            "keys/k1/rotation-policy",
            r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"P106751991167300D"},"action":{"type":"Notify"}}]}"#,
        ),
    ] {
        assert_eq!(ctl(&m, path, data), Err(libc::EINVAL), "{path} <- {data}");
    }
    let e = run_err(&["key", "create", "k3", "--exp", "+3000000d", "--store", &s]);
    assert!(e.contains("out of range") || e.contains("too long"), "{e}");
    assert_eq!(read(&m, "keys/k1/key.json").unwrap(), before);
    assert_eq!(versions(&m, "k1"), 1);
    assert!(!m.mnt.join(".vault/keys/k2").exists());

    // A store that already holds such values (written before this fix) still mounts,
    // shows them, and its reconciler survives the policy.
    m.umount();
    let kf = m.store.join("vault/keys/k1/key.json");
    let mut rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&kf).unwrap()).unwrap();
    rec["attributes"]["exp"] = serde_json::json!(i64::MAX);
    rec["versions"][0]["attributes"]["nbf"] = serde_json::json!(i64::MIN);
    rec["rotationPolicy"] = serde_json::json!({
        "lifetimeActions": [
            {"trigger": {"timeAfterCreate": "P106751991167300D"}, "action": {"type": "Rotate"}},
            {"trigger": {"timeBeforeExpiry": "P3000000D"}, "action": {"type": "Notify"}}
        ],
        "attributes": {"expiryTime": "P3000000D"}
    });
    std::fs::write(&kf, serde_json::to_vec_pretty(&rec).unwrap()).unwrap();
    m.mount();
    assert_eq!(
        read(&m, "keys/k1/exp").unwrap().trim(),
        "9999-12-31T23:59:59Z"
    );
    let j: serde_json::Value =
        serde_json::from_str(&read(&m, "keys/k1/key.json").unwrap()).unwrap();
    assert_eq!(j["keyAttributes"]["expires"], "9999-12-31T23:59:59Z");
    assert!(read(&m, "vault.json").is_ok());
    wait_reconciler_passes(&m, 2);
    run_ok(&["key", "show", "k1", "--store", &s]);
}

#[test]
fn rotate_purge_and_recover_take_only_documented_input() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    for bad in [
        "please do not rotate\n",
        "yes\n",
        "\n",
        "0",
        "1 now",
        "1 size=2048 size=3072",
    ] {
        assert_eq!(ctl(&m, "keys/k1/rotate", bad), Err(libc::EINVAL), "{bad:?}");
    }
    assert_eq!(versions(&m, "k1"), 1);
    ctl(&m, "keys/k1/rotate", "1\n").unwrap();
    ctl(&m, "keys/k1/rotate", "1 size=3072\n").unwrap();
    ctl(&m, "keys/k1/rotate", "size=2048").unwrap();
    assert_eq!(versions(&m, "k1"), 4);
    run_ok(&["key", "rotate", "k1", "--store", &s]);
    assert_eq!(versions(&m, "k1"), 5);

    run_ok(&["key", "delete", "k1", "--store", &s]);
    for file in ["purge", "recover"] {
        for bad in ["no thanks", "\n", "k2", "yes please"] {
            assert_eq!(
                ctl(&m, &format!("deleted-keys/k1/{file}"), bad),
                Err(libc::EINVAL),
                "{file} <- {bad:?}"
            );
        }
    }
    assert!(reason_logged(&m, "takes `1` or the name"));
    assert!(m.mnt.join(".vault/deleted-keys/k1").is_dir());
    ctl(&m, "deleted-keys/k1/recover", "k1\n").unwrap();
    assert!(m.mnt.join(".vault/keys/k1").is_dir());
    // `key recover` (the CLI) writes `1`.
    run_ok(&["key", "delete", "k1", "--store", &s]);
    run_ok(&["key", "recover", "k1", "--store", &s]);
}

#[test]
fn empty_writes_do_not_clear_or_revoke() {
    let m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[("c1", "1M", "Premium_LRS")]);
    let data = pattern(7, 4096);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("c1"))
        .unwrap();
    f.write_all_at(&data, 0).unwrap();
    drop(f);
    ctl(&m, "keys/k1/exp", "2030-01-01").unwrap();
    let ops = read(&m, "keys/k1/key-ops").unwrap();
    for (path, bad) in [
        ("keys/k1/key-ops", "\n"),
        ("keys/k1/key-ops", " , "),
        ("keys/k1/nbf", "\n"),
        ("keys/k1/exp", " \n"),
        ("keys/k1/update", "exp="),
        ("keys/k1/update", "ops="),
        ("keys/k1/update", r#"{"notBefore":""}"#),
        ("keys/k1/update", r#"{"keyOps":[]}"#),
        ("keys/create", "k2 ops="),
    ] {
        assert_eq!(ctl(&m, path, bad), Err(libc::EINVAL), "{path} <- {bad:?}");
    }
    assert!(reason_logged(&m, "list the operations to keep"));
    assert_eq!(read(&m, "keys/k1/key-ops").unwrap(), ops);
    assert_eq!(
        read(&m, "keys/k1/exp").unwrap().trim(),
        "2030-01-01T00:00:00Z"
    );
    let mut back = vec![0u8; 4096];
    std::fs::File::open(m.disk("c1"))
        .unwrap()
        .read_exact_at(&mut back, 0)
        .unwrap();
    assert!(back == data, "the disk must stay readable");
    // Clearing takes the explicit word.
    ctl(&m, "keys/k1/exp", "none\n").unwrap();
    assert_eq!(read(&m, "keys/k1/exp").unwrap().trim(), "none");
    ctl(&m, "keys/k1/update", r#"{"expires":null}"#).unwrap();
    run_ok(&["key", "set", "k1", "--exp", "none", "--store", &s]);
}

#[test]
fn grants_take_only_principal_ids_of_the_form_sets_use() {
    let m = Mounted::new();
    cmk_setup(&m, &[]);
    let grants = read(&m, "keys/k1/grants").unwrap();
    for bad in [
        "grant object-id=../../x",
        "grant object-id=",
        "grant object-id=local-uid-0",
        "grant object-id=E776E117-7F5B-469E-A98C-77E19781F08A",
        r#"{"action":"grant","objectId":""}"#,
        r#"{"action":"grant","objectId":"../../x","permissions":["get"]}"#,
    ] {
        assert_eq!(ctl(&m, "keys/k1/grants", bad), Err(libc::EINVAL), "{bad}");
    }
    assert!(reason_logged(&m, "invalid principal id"));
    assert_eq!(read(&m, "keys/k1/grants").unwrap(), grants);
    // The documented form works, permissions as the second word.
    let id = "e776e117-7f5b-469e-a98c-77e19781f08a";
    ctl(&m, "keys/k1/grants", &format!("grant object-id={id} get")).unwrap();
    let g: serde_json::Value = serde_json::from_str(&read(&m, "keys/k1/grants").unwrap()).unwrap();
    let mine = g
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["objectId"] == id)
        .expect("grant added");
    assert_eq!(mine["permissions"], serde_json::json!(["get"]));
    ctl(&m, "keys/k1/grants", &format!("revoke object-id={id}")).unwrap();
}

#[test]
fn a_field_given_twice_is_refused() {
    let m = Mounted::new();
    run_ok(&["key", "create", "k1", "--store", m.s()]);
    for (path, bad) in [
        ("keys/create", r#"{"name":"k8","name":"k9"}"#),
        ("keys/create", r#"{"name":"k9","size":2048,"keySize":3072}"#),
        ("keys/create", "k9 size=2048 size=3072"),
        ("keys/create", "k9 size=2048 keySize=3072"),
        ("keys/k1/update", r#"{"expires":"+1d","expires":null}"#),
        ("keys/k1/update", "enabled=true enabled=false"),
        ("keys/k1/rotate", r#"{"keySize":2048,"size":3072}"#),
        (
            "keys/k1/rotation-policy",
            r#"{"lifetimeActions":[],"lifetimeActions":[{"trigger":{"timeAfterCreate":"P1D"},"action":{"type":"Rotate"}}]}"#,
        ),
        ("disks/create", r#"{"name":"d1","size":"1M","size":"2M"}"#),
    ] {
        assert_eq!(ctl(&m, path, bad), Err(libc::EINVAL), "{path} <- {bad}");
    }
    assert!(reason_logged(&m, "more than once"));
    assert!(!m.mnt.join(".vault/keys/k8").exists());
    assert!(!m.mnt.join(".vault/keys/k9").exists());
    assert!(!m.disk("d1").exists());
    assert_eq!(versions(&m, "k1"), 1);
    assert_eq!(read(&m, "keys/k1/enabled").unwrap().trim(), "true");
    assert_eq!(read(&m, "keys/k1/rotation-policy").unwrap().trim(), "null");
}

#[test]
fn set_name_errors_say_disk_encryption_set() {
    let m = Mounted::new();
    let kid = cmk_setup(&m, &[]);
    assert_eq!(
        ctl(&m, "disk-encryption-sets/create", &format!("bad!set {kid}")),
        Err(libc::EINVAL)
    );
    assert!(reason_logged(
        &m,
        "invalid disk encryption set name 'bad!set'"
    ));
    assert!(!reason_logged(&m, "invalid disk name 'bad!set'"));
}

#[test]
fn rotation_policies_below_the_floor_are_refused() {
    let m = Mounted::new();
    let s = m.s().to_string();
    run_ok(&["key", "create", "k1", "--store", &s]);
    for bad in [
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"PT0S"},"action":{"type":"Rotate"}}]}"#,
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"PT9S"},"action":{"type":"Rotate"}}]}"#,
        r#"{"lifetimeActions":[],"attributes":{"expiryTime":"PT0S"}}"#,
        r#"{"lifetimeActions":[{"trigger":{"timeBeforeExpiry":"PT1H"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"PT1H"}}"#,
    ] {
        assert_eq!(
            ctl(&m, "keys/k1/rotation-policy", bad),
            Err(libc::EINVAL),
            "{bad}"
        );
        let e = run_err(&["key", "rotation-policy", "k1", "--set", bad, "--store", &s]);
        assert!(e.contains("PT10S"), "{e}");
    }
    assert_eq!(read(&m, "keys/k1/rotation-policy").unwrap().trim(), "null");
    // Nothing at all (an unset shell variable) is refused, not taken as `none`.
    let policy = r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}]}"#;
    ctl(&m, "keys/k1/rotation-policy", policy).unwrap();
    assert_eq!(ctl(&m, "keys/k1/rotation-policy", "\n"), Err(libc::EINVAL));
    let e = run_err(&["key", "rotation-policy", "k1", "--set", "", "--store", &s]);
    assert!(e.contains("empty"), "{e}");
    assert!(read(&m, "keys/k1/rotation-policy")
        .unwrap()
        .contains("P90D"));
    ctl(&m, "keys/k1/rotation-policy", "none").unwrap();
    // No rotation happened meanwhile.
    wait_reconciler_passes(&m, 3);
    assert_eq!(versions(&m, "k1"), 1);
    ctl(
        &m,
        "keys/k1/rotation-policy",
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"PT10S"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"PT1M"}}"#,
    )
    .unwrap();
    ctl(&m, "keys/k1/rotation-policy", "none").unwrap();
}

#[test]
fn rfc3339_offsets_duplicate_ops_and_grant_json() {
    let m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[]);
    // Numeric offsets and lower-case t/z, converted to UTC.
    for (given, utc) in [
        ("2027-01-31T01:00:00+01:00", "2027-01-31T00:00:00Z"),
        ("2027-01-31T00:00:00-00:00", "2027-01-31T00:00:00Z"),
        ("2027-01-30t18:30:00-05:30", "2027-01-31T00:00:00Z"),
        ("2027-02-01t00:00:00z", "2027-02-01T00:00:00Z"),
    ] {
        ctl(&m, "keys/k1/exp", given).unwrap();
        assert_eq!(read(&m, "keys/k1/exp").unwrap().trim(), utc, "{given}");
    }
    run_ok(&[
        "key",
        "set",
        "k1",
        "--nbf",
        "2026-01-01t02:00:00+02:00",
        "--store",
        &s,
    ]);
    assert_eq!(
        read(&m, "keys/k1/nbf").unwrap().trim(),
        "2026-01-01T00:00:00Z"
    );
    for bad in [
        "9999-12-31T23:59:59-01:00",
        "2027-01-31T00:00:00+24:00",
        "2027-01-31T00:00:00+0100",
    ] {
        assert_eq!(ctl(&m, "keys/k1/exp", bad), Err(libc::EINVAL), "{bad}");
    }
    ctl(&m, "keys/k1/exp", "none").unwrap();

    // Each key operation once, in the order given.
    ctl(&m, "keys/k1/key-ops", "wrapKey wrapKey unwrapKey wrapkey").unwrap();
    assert_eq!(
        read(&m, "keys/k1/key-ops").unwrap().trim(),
        "wrapKey unwrapKey"
    );

    // JSON maps by name: `des` is a set, never the permissions word.
    let id = "e776e117-7f5b-469e-a98c-77e19781f08a";
    let grants = read(&m, "keys/k1/grants").unwrap();
    for both in [
        format!(r#"{{"action":"grant","object-id":"{id}","des":"set1"}}"#),
        format!(
            r#"{{"action":"grant","objectId":"{id}","diskEncryptionSet":"set1","permissions":["get"]}}"#
        ),
        format!("grant des=set1 object-id={id}"),
    ] {
        assert_eq!(
            ctl(&m, "keys/k1/grants", &both),
            Err(libc::EINVAL),
            "{both}"
        );
        let why = read(&m, "last-error").unwrap();
        assert!(
            why.contains("name exactly one identity") && !why.contains("unknown permission"),
            "{why}"
        );
    }
    assert_eq!(read(&m, "keys/k1/grants").unwrap(), grants);
    ctl(
        &m,
        "keys/k1/grants",
        &format!(r#"{{"action":"grant","objectId":"{id}","permissions":["get"]}}"#),
    )
    .unwrap();
    ctl(
        &m,
        "keys/k1/grants",
        &format!("grant object-id={id} get,wrapKey"),
    )
    .unwrap();
    let g: serde_json::Value = serde_json::from_str(&read(&m, "keys/k1/grants").unwrap()).unwrap();
    let mine = g
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["objectId"] == id)
        .unwrap();
    assert_eq!(mine["permissions"], serde_json::json!(["get", "wrapKey"]));
    ctl(&m, "keys/k1/grants", r#"{"action":"revoke","des":"set1"}"#).unwrap();
    ctl(&m, "keys/k1/grants", r#"{"action":"grant","des":"set1"}"#).unwrap();
}

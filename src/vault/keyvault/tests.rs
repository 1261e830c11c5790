//! Unit tests of the vault as a whole: grants, revocations, corrupt keys, soft
//! delete. Rotation policies and key generation have theirs beside their code.

use super::*;
use crate::crypto::Secret;
use crate::vault::parse_time;

pub(super) fn vault() -> (tempfile::TempDir, KeyVault) {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("v");
    KeyVault::init(&dir, "testvault").unwrap();
    let v = KeyVault::open(&dir).unwrap();
    (d, v)
}

/// The custody of a test vault: sealed with the unit tests' host key, its header kept
/// beside the vault directory so a reopened vault unseals the same keys.
pub(super) fn custody(dir: &Path) -> Arc<Custody> {
    use crate::vault::custody::{KeyProtection, SealKind, SealSetup, UnsealOptions};
    let root = dir.parent().unwrap();
    let hf = root.join("protection.json");
    let id = "unit-test-store";
    let p = match fs::read(&hf) {
        Ok(b) => serde_json::from_slice(&b).unwrap(),
        Err(_) => {
            let setup = SealSetup {
                kind: SealKind::Host,
                host_key: None,
                tpm_tcti: None,
            };
            let ksk = Secret::random(32).unwrap();
            let p =
                KeyProtection::create(root, id, &setup, &UnsealOptions::default(), &ksk).unwrap();
            fs::write(&hf, serde_json::to_vec(&p).unwrap()).unwrap();
            p
        }
    };
    Arc::new(Custody::sealed(root, id, p, UnsealOptions::default()))
}

pub(super) fn r(s: &str) -> KeyRef {
    KeyRef::parse(s).unwrap()
}

pub(super) fn set_enabled(v: &KeyVault, r: &KeyRef, on: bool) {
    let u = KeyUpdate {
        enabled: Some(on),
        ..Default::default()
    };
    v.update_key(&Caller::current_user(), r, &u).unwrap();
}

#[test]
fn a_revocation_that_cannot_be_saved_applies_in_memory() {
    let (_d, v) = vault();
    // As in a daemon, whose reconciler enforces what is applied in memory.
    v.run_policies();
    let me = Caller::current_user();
    let des = Caller::des("s", "aaaaaaaa-0000-4000-8000-000000000001");
    let perms: Vec<String> = PERMISSIONS.iter().map(|s| s.to_string()).collect();
    v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
    v.grant(&me, "k1", &des.object_id, "s", &perms).unwrap();
    let kid = v.resolve(&r("k1")).unwrap();
    let kd = v.dir().join(KEYS_DIR).join("k1");
    let saved = || fs::read(kd.join(KEY_FILE)).unwrap();
    // A directory where the atomic write puts its temporary file: every write of
    // key.json (and of deleted.json) fails.
    let block = |f: &str| fs::create_dir(kd.join(format!(".{f}.tmp"))).unwrap();
    let unblock = |f: &str| fs::remove_dir(kd.join(format!(".{f}.tmp"))).unwrap();
    block(KEY_FILE);
    let before = saved();
    let not_saved = |e: VaultError, what: &str| {
        assert!(matches!(e, VaultError::RevokedNotSaved { .. }), "{e}");
        let m = e.to_string();
        assert!(
            m.contains(what)
                && m.contains("could not be saved")
                && m.contains("run the command again"),
            "{m}"
        );
    };
    // Disable: refused on disk, applied in memory.
    let off = KeyUpdate {
        enabled: Some(false),
        ..Default::default()
    };
    not_saved(
        v.update_key(&me, &r("k1"), &off).unwrap_err(),
        "key 'k1' is disabled",
    );
    assert!(matches!(
        v.can_unwrap(&des, &kid),
        Err(VaultError::KeyDisabled(_))
    ));
    assert_eq!(saved(), before);
    // Taking unwrapKey out of key_ops, and removing the grant, likewise.
    let ops = KeyUpdate {
        key_ops: Some(vec!["wrapKey".into(), "wrapKey".into()]),
        ..Default::default()
    };
    not_saved(
        v.update_key(&me, &r("k1"), &ops).unwrap_err(),
        "no longer allows unwrapKey",
    );
    assert_eq!(v.record("k1").unwrap().key_ops, vec!["wrapKey".to_string()]);
    not_saved(
        v.revoke_grant(&me, "k1", &des.object_id).unwrap_err(),
        "grant of aaaaaaaa-0000-4000-8000-000000000001 on key 'k1' is removed",
    );
    assert!(v.record("k1").unwrap().grants.is_empty());
    // A change that revokes nothing is refused as before.
    let on = KeyUpdate {
        enabled: Some(true),
        ..Default::default()
    };
    assert!(matches!(
        v.update_key(&me, &r("k1"), &on),
        Err(VaultError::Io(_))
    ));
    assert!(!v.record("k1").unwrap().attributes.enabled);
    // Running the revocations again saves them.
    unblock(KEY_FILE);
    v.revoke_grant(&me, "k1", &des.object_id).unwrap();
    let rec: KeyRecord = serde_json::from_slice(&saved()).unwrap();
    assert!(rec.grants.is_empty() && !rec.attributes.enabled);
    assert!(matches!(
        v.revoke_grant(&me, "k1", &des.object_id),
        Err(VaultError::NoSuchGrant { .. })
    ));

    // Delete: the directory can't move, the key is deleted in memory.
    block(DELETED_FILE);
    not_saved(v.delete_key(&me, "k1").unwrap_err(), "key 'k1' is deleted");
    assert!(matches!(
        v.can_unwrap(&des, &kid),
        Err(VaultError::KeyDeleted(_))
    ));
    assert_eq!(v.deleted_names(), vec!["k1".to_string()]);
    assert!(kd.join(KEY_FILE).exists());
    // Recovering it puts it back; deleting again once there is room saves it.
    v.recover_key(&me, "k1").unwrap();
    assert!(v.exists("k1"));
    not_saved(v.delete_key(&me, "k1").unwrap_err(), "key 'k1' is deleted");
    unblock(DELETED_FILE);
    v.delete_key(&me, "k1").unwrap();
    assert!(!kd.exists());
    assert!(v
        .dir()
        .join(DELETED_DIR)
        .join("k1")
        .join(DELETED_FILE)
        .exists());
    v.recover_key(&me, "k1").unwrap();
    assert!(kd.join(KEY_FILE).exists());
    let a = v.verify_audit().unwrap();
    assert!(a.records > 0 && a.torn_tail == 0);
    let log = fs::read_to_string(v.dir().join(audit::AUDIT_FILE)).unwrap();
    assert!(log.contains("applied in memory only"));
}

#[test]
fn key_ops_are_deduplicated_in_order() {
    let l = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        parse_key_ops(&l(&["wrapKey", "wrapKey"])).unwrap(),
        l(&["wrapKey"])
    );
    assert_eq!(
        parse_key_ops(&l(&["unwrapKey", "wrapkey", "UNWRAPKEY", "wrapKey", "get"]))
            .unwrap_err()
            .errno(),
        libc::EINVAL
    );
    assert_eq!(
        parse_key_ops(&l(&["unwrapKey", "wrapkey", "UNWRAPKEY", "sign"])).unwrap(),
        l(&["unwrapKey", "wrapKey", "sign"])
    );
}

#[test]
fn principal_ids_and_key_ops_are_checked() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
    let all = ["get".to_string()];
    for bad in [
        "",
        "../../x",
        "local-uid-0",
        "AAAAAAAA-0000-4000-8000-000000000001",
        "aaaaaaaa-0000-1000-8000-000000000001",
        "aaaaaaaa-0000-4000-8000-00000000000g",
    ] {
        assert!(
            matches!(
                v.grant(&me, "k1", bad, bad, &all),
                Err(VaultError::InvalidArgument(_))
            ),
            "{bad:?}"
        );
    }
    v.grant(&me, "k1", "aaaaaaaa-0000-4000-8000-000000000001", "x", &all)
        .unwrap();
    let none = KeyUpdate {
        key_ops: Some(vec![]),
        ..Default::default()
    };
    let e = v.update_key(&me, &r("k1"), &none).unwrap_err();
    assert!(e.to_string().contains("list the operations to keep"), "{e}");
    assert_eq!(v.record("k1").unwrap().key_ops.len(), KEY_OPS.len());
}

#[test]
fn a_corrupt_key_costs_only_that_key() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    let des = Caller::des("s", "aaaaaaaa-0000-4000-8000-000000000001");
    let perms: Vec<String> = PERMISSIONS.iter().map(|s| s.to_string()).collect();
    for k in ["good", "Bad"] {
        v.create_key(&me, k, &KeyOptions::default()).unwrap();
        v.grant(&me, k, &des.object_id, "s", &perms).unwrap();
    }
    let dek = Secret::new(vec![7u8; 64]);
    let wg = v.wrap(&des, &r("good"), &dek).unwrap();
    let wb = v.wrap(&des, &r("bad"), &dek).unwrap();
    let ver = v.version_ids("bad").unwrap()[0].clone();
    let dir = v.dir().to_path_buf();
    drop(v);
    let pem = dir.join(KEYS_DIR).join("bad").join(format!("{ver}.key"));
    let mut b = fs::read(&pem).unwrap();
    let mid = b.len() / 2;
    b[mid] = b'#';
    fs::write(&pem, b).unwrap();
    let v = KeyVault::open(&dir).unwrap();
    assert_eq!(v.unwrap(&des, &wg).unwrap().expose(), dek.expose());
    assert!(v.key_names().contains(&"Bad".to_string()));
    assert!(v.exists("bad"));
    let file = format!("{ver}.key");
    let kc_in = |e: VaultError, file: &str| {
        assert!(matches!(e, VaultError::KeyCorrupt { .. }), "{e}");
        assert_eq!(e.errno(), libc::EIO);
        let m = e.to_string();
        assert!(m.contains(file) && m.contains("backup"), "{m}");
    };
    let kc = |e: VaultError| kc_in(e, &file);
    kc(v.unwrap(&des, &wb).unwrap_err());
    kc(v.wrap(&des, &r("bad"), &dek).unwrap_err());
    kc(v.can_unwrap(&des, &wb.kid).unwrap_err());
    kc(v.can_wrap(&des, &r("bad")).unwrap_err());
    kc(v.get_key(&me, &r("bad")).unwrap_err());
    kc(v.create_key(&me, "bad", &KeyOptions::default())
        .unwrap_err());
    kc(v.delete_key(&me, "bad").unwrap_err());
    // A corrupt key.json too.
    drop(v);
    fs::write(dir.join(KEYS_DIR).join("good").join(KEY_FILE), b"{").unwrap();
    let v = KeyVault::open(&dir).unwrap();
    kc_in(v.unwrap(&des, &wg).unwrap_err(), "good/key.json");
    assert!(v.key_names().contains(&"good".to_string()));
}

#[test]
fn grants_gate_wrap_and_unwrap() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    let des = Caller::des("set1", "aaaaaaaa-0000-4000-8000-000000000001");
    v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
    let dek = Secret::new(vec![9u8; 64]);
    let e = v.wrap(&des, &r("k1"), &dek).unwrap_err();
    assert!(e.to_string().starts_with("KeyVaultAccessForbidden: grant get, wrapKey and unwrapKey permissions on key k1 to disk encryption set 'set1'"), "{e}");
    v.grant(
        &me,
        "k1",
        &des.object_id,
        "set1",
        &["get".into(), "wrapKey".into(), "unwrapKey".into()],
    )
    .unwrap();
    let w = v.wrap(&des, &r("k1"), &dek).unwrap();
    assert!(w
        .kid
        .starts_with("https://testvault.vault.azure.net/keys/k1/"));
    assert_eq!(v.unwrap(&des, &w).unwrap().expose(), dek.expose());
    // Disabling the key, then the version, stops unwrap; enabling restores it.
    set_enabled(&v, &r("k1"), false);
    assert!(matches!(
        v.unwrap(&des, &w),
        Err(VaultError::KeyDisabled(_))
    ));
    set_enabled(&v, &r("k1"), true);
    set_enabled(&v, &r(&w.kid), false);
    assert!(matches!(
        v.unwrap(&des, &w),
        Err(VaultError::VersionDisabled(_))
    ));
    set_enabled(&v, &r(&w.kid), true);
    // An expired key still unwraps but no longer wraps.
    let past = parse_time("2020-01-01").unwrap();
    v.update_key(
        &me,
        &r("k1"),
        &KeyUpdate {
            exp: Some(Some(past)),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(v.unwrap(&des, &w).is_ok());
    assert!(matches!(
        v.wrap(&des, &r("k1"), &dek),
        Err(VaultError::Expired(..))
    ));
    v.revoke_grant(&me, "k1", &des.object_id).unwrap();
    assert!(matches!(
        v.unwrap(&des, &w),
        Err(VaultError::Forbidden { .. })
    ));
    assert_eq!(
        v.verify_audit().map(|x| x.records),
        Ok(16),
        "one audit line per operation, failures included"
    );
}

#[test]
fn versions_soft_delete_and_purge_protection() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    v.create_key(
        &me,
        "K2",
        &KeyOptions {
            size: Some(3072),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(matches!(
        v.create_key(&me, "k2", &KeyOptions::default()),
        Err(VaultError::KeyExists(_))
    ));
    v.rotate_key(&me, "k2", &KeyOptions::default()).unwrap();
    let vers = v.version_ids("k2").unwrap();
    assert_eq!(vers.len(), 2);
    assert!(vers.iter().all(|x| crate::vault::kid::is_version(x)));
    assert_eq!(v.record("k2").unwrap().versions[1].key_size, 3072);
    v.set_props(&me, Some(true), Some(7)).unwrap();
    assert!(matches!(
        v.set_props(&me, Some(false), None),
        Err(VaultError::PurgeProtectionPermanent)
    ));
    v.delete_key(&me, "k2").unwrap();
    assert!(matches!(
        v.create_key(&me, "k2", &KeyOptions::default()),
        Err(VaultError::NameHeldByDeletedKey(_))
    ));
    assert!(matches!(
        v.purge_key(&me, "k2"),
        Err(VaultError::PurgeProtected { .. })
    ));
    let dir = v.dir().to_path_buf();
    drop(v);
    // State survives a reopen.
    let v = KeyVault::open(&dir).unwrap();
    assert_eq!(v.deleted_names(), vec!["K2".to_string()]);
    v.recover_key(&me, "k2").unwrap();
    assert_eq!(v.version_ids("K2").unwrap(), vers);
    assert!(v.verify_audit().is_ok());
}

#[test]
fn purge_without_protection_and_bad_sizes() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    assert!(matches!(
        v.create_key(
            &me,
            "k",
            &KeyOptions {
                size: Some(1024),
                ..Default::default()
            }
        ),
        Err(VaultError::Crypto(crate::crypto::CryptoError::KeySize(
            1024
        )))
    ));
    v.create_key(&me, "k", &KeyOptions::default()).unwrap();
    v.delete_key(&me, "k").unwrap();
    v.purge_key(&me, "k").unwrap();
    assert!(v.deleted_names().is_empty());
    assert!(fs::read_dir(v.dir().join(DELETED_DIR))
        .unwrap()
        .next()
        .is_none());
    v.create_key(&me, "k", &KeyOptions::default()).unwrap();
    assert!(matches!(
        v.import_key(&me, "x", "junk", &KeyOptions::default()),
        Err(VaultError::BadImport(_))
    ));
}

#[test]
fn one_bad_version_file_costs_only_that_version() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
    let dek = Secret::new(vec![9u8; 64]);
    let old = v.wrap(&me, &r("k1"), &dek).unwrap();
    v.rotate_key(&me, "k1", &KeyOptions::default()).unwrap();
    let new = v.wrap(&me, &r("k1"), &dek).unwrap();
    let first = v.version_ids("k1").unwrap()[0].clone();
    assert!(old.kid.ends_with(&first));
    let dir = v.dir().to_path_buf();
    drop(v);
    let file = dir.join(KEYS_DIR).join("k1").join(format!("{first}.key"));
    fs::write(&file, b"{").unwrap();
    let v = KeyVault::open(&dir).unwrap();
    // The current version works: unwrap, wrap, show, rotate.
    assert_eq!(v.unwrap(&me, &new).unwrap().expose(), dek.expose());
    v.wrap(&me, &r("k1"), &dek).unwrap();
    v.get_key(&me, &r("k1")).unwrap();
    // The old one says which file is bad.
    let e = v.unwrap(&me, &old).unwrap_err();
    assert!(matches!(e, VaultError::KeyCorrupt { .. }), "{e}");
    assert!(e.to_string().contains(&format!("{first}.key")), "{e}");
    v.rotate_key(&me, "k1", &KeyOptions::default()).unwrap();
}

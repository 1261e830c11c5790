//! Tests of key creation, rotation and generation outside the vault lock.
use super::super::tests::{r, vault};
use super::*;
use std::cell::RefCell;
use std::sync::mpsc;

thread_local! {
    static AT_KEYGEN: RefCell<Option<Box<dyn FnOnce()>>> = RefCell::new(None);
}

/// Runs the hook this thread set for its next key generation, if any.
pub(super) fn at_keygen() {
    if let Some(hook) = AT_KEYGEN.with(|h| h.borrow_mut().take()) {
        hook();
    }
}

/// Runs `op` in another thread and, while that thread is generating its first
/// key, checks that the vault lock is free and runs `meanwhile`.
fn during_keygen<T: Send>(
    v: &KeyVault,
    op: impl FnOnce() -> T + Send,
    meanwhile: impl FnOnce(),
) -> T {
    let (at_tx, at_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    // `move`: if a check below fails, unwinding drops `go_tx`, which lets `op`
    // finish, so the test fails instead of waiting for it forever.
    std::thread::scope(move |s| {
        let t = s.spawn(move || {
            AT_KEYGEN.with(|h| {
                *h.borrow_mut() = Some(Box::new(move || {
                    at_tx.send(()).unwrap();
                    // Returns when `go_tx` is sent to or dropped (a failed check).
                    let _ = go_rx.recv();
                }))
            });
            op()
        });
        at_rx.recv().expect("the operation generates a key");
        assert!(
            v.state.try_lock().is_some(),
            "the vault lock is held while a key is generated"
        );
        meanwhile();
        go_tx.send(()).unwrap();
        t.join().unwrap()
    })
}

#[test]
fn keys_are_generated_without_the_vault_lock() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    let des = Caller::des("s", "aaaaaaaa-0000-4000-8000-000000000001");
    let perms: Vec<String> = super::super::PERMISSIONS
        .iter()
        .map(|s| s.to_string())
        .collect();
    v.create_key(&me, "k1", &KeyOptions::default()).unwrap();
    v.grant(&me, "k1", &des.object_id, "s", &perms).unwrap();
    let kid = v.resolve(&r("k1")).unwrap();
    // What a disk open does, while another key is made.
    let disk_open = || {
        v.record("k1").unwrap();
        v.can_unwrap(&des, &kid).unwrap();
    };
    during_keygen(
        &v,
        || v.create_key(&me, "k2", &KeyOptions::default()),
        disk_open,
    )
    .unwrap();
    during_keygen(
        &v,
        || v.rotate_key(&me, "k2", &KeyOptions::default()),
        disk_open,
    )
    .unwrap();
    assert_eq!(v.version_ids("k2").unwrap().len(), 2);
    // A rotation policy's too: k2's current version is an hour old and due.
    let policy = r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"PT10S"},"action":{"type":"Rotate"}}]}"#;
    v.set_rotation_policy(&me, "k2", Some(serde_json::from_str(policy).unwrap()))
        .unwrap();
    if let Some(e) = v.state.lock().keys.get_mut("k2") {
        e.rec.versions.last_mut().unwrap().attributes.created -= 3600;
    }
    during_keygen(&v, || v.run_policies(), disk_open);
    assert_eq!(v.version_ids("k2").unwrap().len(), 3);
}

#[test]
fn a_key_changed_during_generation_is_checked_again() {
    let (_d, v) = vault();
    let me = Caller::current_user();
    let opts = KeyOptions::default();
    // Created meanwhile: refused as if the creation had come second.
    let e = during_keygen(
        &v,
        || v.create_key(&me, "k1", &opts),
        || {
            v.create_key(&me, "K1", &opts).unwrap();
        },
    )
    .unwrap_err();
    assert!(matches!(e, VaultError::KeyExists(_)), "{e}");
    assert_eq!(v.record("k1").unwrap().name, "K1");
    assert_eq!(fs::read_dir(v.dir().join(KEYS_DIR)).unwrap().count(), 1);
    // Deleted meanwhile.
    let e = during_keygen(
        &v,
        || v.rotate_key(&me, "k1", &opts),
        || {
            v.delete_key(&me, "k1").unwrap();
        },
    )
    .unwrap_err();
    assert!(matches!(e, VaultError::KeyDeleted(_)), "{e}");
    v.recover_key(&me, "k1").unwrap();
    assert_eq!(v.version_ids("k1").unwrap().len(), 1);
    // Rotated to another size meanwhile: the new version keeps that size.
    let bigger = KeyOptions {
        size: Some(3072),
        ..Default::default()
    };
    during_keygen(
        &v,
        || v.rotate_key(&me, "k1", &opts),
        || {
            v.rotate_key(&me, "k1", &bigger).unwrap();
        },
    )
    .unwrap();
    let sizes: Vec<usize> = v
        .record("k1")
        .unwrap()
        .versions
        .iter()
        .map(|x| x.key_size)
        .collect();
    assert_eq!(sizes, [2048, 3072, 3072]);
    // One audit record per operation: the check before a key is made adds none.
    assert_eq!(v.verify_audit().map(|a| a.records), Ok(7));
}

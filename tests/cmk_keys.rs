//! Customer-managed keys in the key vault: purge protection, disabling and expiring a
//! key, soft delete, recovery and purge, and importing a key made by openssl. Each
//! step runs through the CLI (unmounted and mounted) and through the control files.

mod common;

use common::cmk::*;
use common::*;
use std::process::Command;

every_way!(
    a_set_needs_purge_protection_which_stays_on,
    disabling_a_key_stops_unwrap_and_enabling_restores_it,
    an_expired_key_still_unwraps_but_wraps_no_new_disk,
    a_deleted_key_is_soft_deleted_and_purge_protected,
    a_key_made_by_openssl_imports,
);

/// A set needs purge protection on the vault, and once on it can't be turned off.
fn a_set_needs_purge_protection_which_stays_on(e: &Env, via: Via, _mounted: bool) {
    let kid1 = e.create_cmk1(via);
    e.fails(
        via,
        &["des", "create", "set1", "--key-url", &kid1],
        Ctl::Write("disk-encryption-sets/create", format!("set1 {kid1}")),
        libc::EPERM,
        "purge protection",
    );
    e.ok(
        via,
        &[
            "vault",
            "set",
            "--purge-protection",
            "true",
            "--retention-days",
            "7",
        ],
        Ctl::Write("purge-protection", "true".into()),
    );
    e.fails(
        via,
        &["vault", "set", "--purge-protection", "false"],
        Ctl::Write("purge-protection", "false".into()),
        libc::EPERM,
        "cannot be turned off",
    );
}

/// Disabling the key stops unwrap; enabling restores it.
fn disabling_a_key_stops_unwrap_and_enabling_restores_it(e: &Env, via: Via, mounted: bool) {
    let data = pattern(7, 1 << 20);
    e.ready_set1(via);
    e.create_disk(via, "c1", "set1");
    if mounted {
        write_disk(&e.mnt, "c1", &data);
    }
    e.ok(
        via,
        &["key", "set", "cmk1", "--enabled", "false"],
        Ctl::Write("keys/cmk1/enabled", "false".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1"), Err(libc::EIO));
    }
    e.ok(
        via,
        &["key", "set", "cmk1", "--enabled", "true"],
        Ctl::Write("keys/cmk1/enabled", "true".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1").unwrap(), data);
    }
}

/// An expired key still unwraps, but wraps no new disk; `none` clears the expiry.
fn an_expired_key_still_unwraps_but_wraps_no_new_disk(e: &Env, via: Via, mounted: bool) {
    let data = pattern(7, 1 << 20);
    e.ready_set1(via);
    e.create_disk(via, "c1", "set1");
    if mounted {
        write_disk(&e.mnt, "c1", &data);
    }
    e.ok(
        via,
        &["key", "set", "cmk1", "--exp", "2020-01-01"],
        Ctl::Write("keys/cmk1/exp", "2020-01-01".into()),
    );
    if mounted {
        assert_eq!(read_disk(&e.mnt, "c1").unwrap(), data);
    }
    e.fails(
        via,
        &[
            "disk",
            "create",
            "c3",
            "--size",
            "1M",
            "--disk-encryption-set",
            "set1",
        ],
        Ctl::Write("disks/create", "c3 1M des=set1".into()),
        libc::EACCES,
        "expired",
    );
    e.ok(
        via,
        &["key", "set", "cmk1", "--exp", "none"],
        Ctl::Write("keys/cmk1/update", "exp=none".into()),
    );
    e.create_disk(via, "c3", "set1");
}

/// Soft delete, name reuse, recover, purge protection.
fn a_deleted_key_is_soft_deleted_and_purge_protected(e: &Env, via: Via, _mounted: bool) {
    e.protect(via);
    e.ok(via, &["key", "create", "tmp"], Ctl::Mkdir("keys/tmp"));
    e.ok(via, &["key", "delete", "tmp"], Ctl::Rmdir("keys/tmp"));
    let deleted = e.json(&["key", "list", "--deleted"]);
    assert_eq!(deleted[0]["name"], "tmp");
    e.fails(
        via,
        &["key", "create", "tmp"],
        Ctl::Write("keys/create", "tmp".into()),
        libc::EEXIST,
        "soft-deleted",
    );
    e.ok(
        via,
        &["key", "recover", "tmp"],
        Ctl::Write("deleted-keys/tmp/recover", "1".into()),
    );
    e.ok(via, &["key", "delete", "tmp"], Ctl::Rmdir("keys/tmp"));
    e.fails(
        via,
        &["key", "purge", "tmp"],
        Ctl::Rmdir("deleted-keys/tmp"),
        libc::EPERM,
        "purge protection is on",
    );
}

/// Bring your own key, made by openssl.
fn a_key_made_by_openssl_imports(e: &Env, via: Via, _mounted: bool) {
    let pem = e.store.parent().unwrap().join("byok.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out"
        ])
        .arg(&pem)
        .status()
        .unwrap()
        .success());
    let pem_text = std::fs::read_to_string(&pem).unwrap();
    e.ok(
        via,
        &["key", "import", "byok", "--pem", pem.to_str().unwrap()],
        Ctl::Write("keys/import", format!("byok\n{pem_text}")),
    );
    let byok = e.json(&["key", "show", "byok"]);
    assert_eq!(byok["imported"], true);
    assert_eq!(byok["keySize"], 2048);
}

//! az's frame under hostile input: role scopes that don't hold the vault, ids that
//! name another type, group or subscription, a vault moved, locations a VM or a PUT
//! would break, and a vault-wide revocation on a full file system.

mod common;
use common::*;

/// What a hostile review found, each kept fixed: a role scope that doesn't hold the
/// vault, ids naming another group, subscription or type, a vault's location moved,
/// the location of a VM from an image, az's PUT with another location.
#[test]
fn ids_scopes_and_locations_are_checked() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let r = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--store", &s]);
        run_ok(&a)
    };
    let e = |args: &[&str]| {
        let mut a = args.to_vec();
        a.extend(["--store", &s]);
        run_err(&a)
    };
    r(&[
        "keyvault",
        "create",
        "-n",
        "kv1",
        "-g",
        "rg1",
        "-l",
        "westus",
        "--enable-purge-protection",
        "true",
    ]);
    r(&["keyvault", "key", "create", "-n", "k1"]);
    r(&[
        "disk-encryption-set",
        "create",
        "-n",
        "des1",
        "-g",
        "rg1",
        "--key-url",
        "k1",
        "--enable-auto-key-rotation",
    ]);
    let p = r(&[
        "disk-encryption-set",
        "show",
        "-n",
        "des1",
        "--query",
        "identity.principalId",
        "-o",
        "tsv",
    ]);
    let p = p.trim();
    let sub = r(&["account", "show", "--query", "id", "-o", "tsv"])
        .trim()
        .to_string();
    // Roles: a scope must hold the vault.
    let crypto = "Key Vault Crypto Service Encryption User";
    for (scope, want) in [
        ("/subscriptions/0000".to_string(), "SubscriptionNotFound"),
        (format!("/subscriptions/{sub}/resourceGroups/zzz"), "does not hold"),
        (
            format!("/subscriptions/{sub}/resourceGroups/rg1/providers/Microsoft.KeyVault/vaults/kv1/keys/nosuch"),
            "nosuch",
        ),
    ] {
        let out = e(&["role", "assignment", "create", "--assignee", p, "--role", crypto, "--scope", &scope]);
        assert!(out.contains(want), "{scope}: {out}");
    }
    assert_eq!(r(&["role", "assignment", "list"]).trim(), "[]");
    // Names given as ids: the type, the subscription and the group must be the
    // resource's, or nothing happens.
    r(&["disk", "create", "-n", "d1", "-g", "rg1", "--size", "1M"]);
    let did = r(&["disk", "show", "-n", "d1", "--query", "id", "-o", "tsv"]);
    let did = did.trim();
    for bad in [
        did.replace("/disks/", "/snapshots/"),
        did.replace(&sub, "00000000-0000-0000-0000-000000000001"),
        did.replace("/rg1/", "/zzz/"),
    ] {
        e(&["disk", "delete", "-n", &bad, "--yes"]);
        e(&["disk", "show", "-n", &bad]);
    }
    e(&["disk", "show", "-n", "d1", "-g", "nosuch"]);
    r(&["disk", "show", "-n", did]);
    let des_id = r(&[
        "disk-encryption-set",
        "show",
        "-n",
        "des1",
        "--query",
        "id",
        "-o",
        "tsv",
    ]);
    let out = e(&[
        "disk",
        "create",
        "-n",
        "q",
        "--size",
        "1M",
        "--disk-encryption-set",
        &des_id.trim().replace("/rg1/", "/zz/"),
    ]);
    assert!(out.contains("ResourceNotFound"), "{out}");
    // A disk created by its id is in the id's group.
    let qid = did
        .replace("/disks/d1", "/disks/q2")
        .replace("/rg1/", "/rg9/");
    r(&["disk", "create", "-n", &qid, "--size", "1M"]);
    assert_eq!(
        r(&[
            "disk",
            "show",
            "-n",
            "q2",
            "--query",
            "resourceGroup",
            "-o",
            "tsv"
        ])
        .trim(),
        "rg9"
    );
    // A vault with keys stays where it is.
    for args in [["-l", "eastus"], ["-g", "rg2"]] {
        let mut a = vec!["keyvault", "create", "-n", "kv1"];
        a.extend(args);
        let out = e(&a);
        assert!(out.contains("can't change"), "{out}");
    }
    assert_eq!(
        r(&["keyvault", "show", "--query", "location", "-o", "tsv"]).trim(),
        "westus"
    );
    // az's PUT on an existing disk refuses another location.
    let out = e(&[
        "disk", "create", "-n", "d1", "-g", "rg1", "-l", "eastus", "--size", "1M",
    ]);
    assert!(out.contains("location"), "{out}");
    // A VM from an image is where the image is, without -l.
    r(&[
        "disk",
        "create",
        "-n",
        "src",
        "-g",
        "rg3",
        "-l",
        "northeurope",
        "--size",
        "1M",
    ]);
    r(&["image", "create", "-n", "img", "--source", "src"]);
    let exe = std::env::current_exe().unwrap();
    r(&[
        "vm",
        "create",
        "-n",
        "v2",
        "--image",
        "img",
        "--kernel",
        exe.to_str().unwrap(),
        "--no-start",
    ]);
    assert_eq!(
        r(&["vm", "show", "-n", "v2", "--query", "location", "-o", "tsv"]).trim(),
        "northeurope"
    );
}

/// Taking a vault-wide policy away is a revocation even on a full file system: the
/// disks stop serving at once, and the message says the change is not saved.
#[test]
fn a_policy_removed_on_a_full_disk_still_revokes() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Tmpfs::new(&dir.path().join("t"), "24M");
    let store = dir.path().join("t/store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(&["init", store.to_str().unwrap()]);
    let m = Mounted::attach(dir.path(), &store, &mnt);
    let s = m.s().to_string();
    run_ok(&[
        "keyvault",
        "update",
        "--enable-purge-protection",
        "true",
        "--store",
        &s,
    ]);
    run_ok(&["keyvault", "key", "create", "-n", "k1", "--store", &s]);
    run_ok(&[
        "des",
        "create",
        "set1",
        "--key-url",
        "k1",
        "--auto-rotate",
        "--store",
        &s,
    ]);
    let p = run_ok(&[
        "des",
        "show",
        "set1",
        "--query",
        "identity.principalId",
        "-o",
        "tsv",
        "--store",
        &s,
    ]);
    run_ok(&[
        "keyvault",
        "set-policy",
        "--object-id",
        p.trim(),
        "--key-permissions",
        "get",
        "wrapkey",
        "unwrapkey",
        "--store",
        &s,
    ]);
    run_ok(&[
        "disk",
        "create",
        "c1",
        "--size",
        "1M",
        "--disk-encryption-set",
        "set1",
        "--store",
        &s,
    ]);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(m.disk("c1"))
        .unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(b"SECRET", 0).unwrap();
    let filler = fs.fill();
    let out = run(&[
        "keyvault",
        "delete-policy",
        "--object-id",
        p.trim(),
        "--store",
        &s,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("could not be saved"),
        "{err}"
    );
    let mut buf = [0u8; 6];
    let r = f.read_at(&mut buf, 0);
    assert_eq!(r.err().and_then(|e| e.raw_os_error()), Some(libc::EIO));
    drop(f);
    std::fs::remove_file(filler).unwrap();
    drop(m);
    drop(fs);
}

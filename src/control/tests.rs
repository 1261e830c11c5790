//! The control service without a mount: the route table agrees with itself, and every
//! typed request survives its wire form (what the CLI writes to a daemon).

use super::*;
use crate::control::{CopyKind, CopyRequest, VmRequest};
use crate::store::{CreateOptions, InitOptions};
use crate::vault::KeyOptions;
use crate::vm::CreateSpec;

pub(super) fn control() -> (tempfile::TempDir, Control) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    let store = Arc::new(Store::open(&root, None).unwrap());
    (d, Control::new(store, None))
}

pub(super) fn split(p: &str) -> Vec<&str> {
    if p.is_empty() {
        vec![]
    } else {
        p.split('/').collect()
    }
}

/// Every entry a directory lists resolves to the kind the listing gave, and every
/// directory's entries are listed; walks the whole tree.
fn walk(c: &Control, path: &str, seen: &mut Vec<String>) {
    let entries = c.list(&split(path)).expect("a directory lists");
    for (name, kind) in entries {
        let p = if path.is_empty() {
            name.clone()
        } else {
            format!("{path}/{name}")
        };
        assert_eq!(c.kind(&split(&p)), Some(kind), "{p}");
        seen.push(p.clone());
        if kind == Kind::Dir {
            walk(c, &p, seen);
        } else {
            assert!(c.list(&split(&p)).is_none(), "{p} is a file");
        }
    }
}

/// Purge protection, keys `keys`, set `s1` on the first key, and disk `d1`; returns
/// the first key's versioned URL.
pub(super) fn objects(c: &Control, keys: &[&str]) -> String {
    let caller = Caller::current_user();
    let run = |r: Request| c.execute(&r, &caller).unwrap();
    run(VaultRequest::PurgeProtection(true).into());
    for k in keys {
        run(KeyRequest::Create {
            name: k.to_string(),
            options: KeyOptions::default(),
        }
        .into());
    }
    let kid = c
        .store()
        .vault()
        .resolve(&crate::vault::KeyRef::parse(keys[0]).unwrap())
        .unwrap();
    run(SetRequest::Create {
        name: "s1".into(),
        key_url: kid.clone(),
        encryption_type: None,
        auto_rotate: false,
        placement: Default::default(),
    }
    .into());
    run(DiskRequest::Create {
        name: "d1".into(),
        options: CreateOptions {
            size: 1 << 20,
            ..Default::default()
        },
        source: None,
        encryption_type: None,
    }
    .into());
    for kind in [CopyKind::Snapshot, CopyKind::Image] {
        run(CopyRequest::Create {
            kind,
            name: "c1".into(),
            source: "d1".into(),
            incremental: true,
            set: None,
            encryption_type: None,
            placement: Default::default(),
            boot: None,
        }
        .into());
    }
    let exe = std::env::current_exe().unwrap().display().to_string();
    run(VmRequest::Create(Box::new(CreateSpec {
        name: "v1".into(),
        kernel: Some(exe),
        no_start: true,
        ..Default::default()
    }))
    .into());
    run(crate::control::VmssRequest::Create(Box::new(vmss_spec("ss1"))).into());
    kid
}

pub(super) fn vmss_spec(name: &str) -> crate::vm::VmssSpec {
    crate::vm::VmssSpec {
        name: name.into(),
        model: crate::store::vmss::VmssModel {
            image: "c1".into(),
            vm_sku: "Standard_B1s".into(),
            data_disk_sizes_gb: vec![1],
            upgrade_policy: "Manual".into(),
            ..Default::default()
        },
        instance_count: 1,
        no_start: true,
        ..Default::default()
    }
}

#[test]
fn the_tree_lists_what_it_resolves() {
    let (_d, c) = control();
    objects(&c, &["k1"]);
    let mut seen = Vec::new();
    walk(&c, "", &mut seen);
    let version = c.store().vault().version_ids("k1").unwrap().remove(0);
    for p in [
        "README".to_string(),
        "keys/create".into(),
        "keys/k1/rotate".into(),
        format!("keys/k1/versions/{version}/enabled"),
        "disk-encryption-sets/s1/key-url".into(),
        "disks/d1/rekey".into(),
    ] {
        assert!(seen.contains(&p), "{p} not listed: {seen:?}");
    }
    // Without a daemon there is no daemon.json, in listings or lookups.
    assert!(!seen.iter().any(|p| p == "daemon.json"));
    assert_eq!(c.kind(&["daemon.json"]), None);
    // Files that only make sense at key level are not in a version's directory.
    assert_eq!(
        c.kind(&["keys", "k1", "versions", &version, "rotate"]),
        None
    );
    assert_eq!(c.kind(&["keys", "nokey", "enabled"]), None);
    assert_eq!(
        c.kind(&["keys", "k1", "enabled"]),
        Some(Kind::File {
            read: true,
            write: true
        })
    );
    assert_eq!(
        Kind::File {
            read: true,
            write: false
        }
        .mode(),
        0o400
    );
    // Each path is declared once.
    let mut paths: Vec<String> = routes::all()
        .iter()
        .map(|r| format!("{:?}", r.path))
        .collect();
    let n = paths.len();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), n, "a route is declared twice");
}

#[test]
fn missing_and_read_only_paths_get_their_errno() {
    let (_d, c) = control();
    let caller = Caller::current_user();
    let e = c.read(&["nothing"], &caller).unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    let e = c.write(&["vault.json"], b"{}", &caller).unwrap_err();
    assert_eq!(e.errno, libc::EACCES);
    assert!(e.message.contains("read-only"), "{e}");
    let e = c
        .write(&["keys", "nokey", "enabled"], b"false", &caller)
        .unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    let e = c.mkdir(&["disks", "x"], &caller).unwrap_err();
    assert_eq!(e.errno, libc::EPERM);
    let e = c
        .write(&["command"], br#"{"key":{"bogus":{}}}"#, &caller)
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(e.message.contains("malformed command"), "{e}");
    let e = c.write(&["retention-days"], b"lots", &caller).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(
        e.message.starts_with("invalid argument: retention-days"),
        "{e}"
    );
}

/// What the CLI sends a daemon is parsed back into the very request it built.
#[test]
fn an_import_request_never_shows_its_key() {
    let r = KeyRequest::Import {
        name: "imp".into(),
        pem: zeroize::Zeroizing::new("SECRET-PEM".into()),
        options: KeyOptions::default(),
    };
    assert!(!format!("{r:?}").contains("SECRET"));
}

/// The examples of docs/control-files.md ("The command file") parse as documented.
#[test]
fn the_documented_command_examples_parse() {
    let (_d, c) = control();
    let doc = include_str!("../../docs/control-files.md");
    let section = doc.split("## The command file").nth(1).unwrap();
    let examples: Vec<&str> = section
        .split("```json")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect();
    assert_eq!(examples.len(), 4);
    let want = [
        "Update k1 None KeyUpdate { enabled: Some(false)",
        "Create { name: \"d1\", options: CreateOptions { size: 1073741824, sku: StandardLrs",
        "Delete { name: \"s1\" }",
        "RetentionDays(30)",
    ];
    for (e, w) in examples.iter().zip(want) {
        let r = c.parse(&["command"], e.as_bytes()).unwrap();
        assert!(format!("{r:?}").contains(w), "{e}: {r:?}");
    }
}

/// A private key pasted into the wrong field never reaches a reply, `last-error` or
/// the (permanent) audit log.
#[test]
fn a_misplaced_pem_is_never_echoed() {
    let (_d, c) = control();
    let caller = Caller::current_user();
    let pem = crate::crypto::wrap::RsaKey::generate(2048)
        .unwrap()
        .to_pkcs8_pem()
        .unwrap();
    let body = pem.lines().nth(1).unwrap().to_string();
    let mixed = serde_json::json!({"name": pem.as_str(), "pem": pem.as_str()}).to_string();
    let e = c
        .write(&["keys", "import"], mixed.as_bytes(), &caller)
        .unwrap_err();
    assert!(!e.message.contains(&body), "{e}");
    let typed = serde_json::json!({"key":{"create":{"name":"x","options":{"size": pem.as_str()}}}})
        .to_string();
    let e = c
        .write(&["command"], typed.as_bytes(), &caller)
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL);
    assert!(!e.message.contains(&body), "{e}");
    let e = c
        .write(&["keys", "k\nforged", "enabled"], b"false", &caller)
        .unwrap_err();
    assert!(!e.message.contains('\n'), "{e}");
    let delete =
        serde_json::json!({"key":{"delete":{"name": format!("zz\n{}", pem.as_str())}}}).to_string();
    let e = c
        .write(&["command"], delete.as_bytes(), &caller)
        .unwrap_err();
    assert!(
        !e.message.contains('\n') && !e.message.contains(&body),
        "{e}"
    );
    let audit = String::from_utf8(c.store().vault().audit_text()).unwrap();
    assert!(!audit.contains(&body), "the audit log holds the key");
}

/// The command file takes the same camelCase fields and gives the same errno as the
/// object's own file.
#[test]
fn the_command_file_agrees_with_the_object_files() {
    let (_d, c) = control();
    let caller = Caller::current_user();
    let huge = r#"{"disk":{"create":{"name":"zk","options":{"size":70368744177665}}}}"#;
    let e = c.write(&["command"], huge.as_bytes(), &caller).unwrap_err();
    assert_eq!(e.errno, libc::EINVAL, "{e}");
    assert!(e.message.contains("the largest disk is 64T"), "{e}");
    let e = c
        .write(
            &["disks", "create"],
            br#"{"name":"zj","diskSizeBytes":70368744177665}"#,
            &caller,
        )
        .unwrap_err();
    assert_eq!(e.errno, libc::EINVAL, "{e}");
    let set =
        r#"{"set":{"update":{"name":"s1","keyUrl":"k1","autoRotate":true,"encryptionType":null}}}"#;
    let r = c.parse(&["command"], set.as_bytes()).unwrap();
    assert!(
        format!("{r:?}").contains("auto_rotate: Some(true)"),
        "{r:?}"
    );
}

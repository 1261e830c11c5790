//! Every failure a user can cause: a one-line message naming the cause and the fix,
//! a non-zero exit or errno, and nothing destroyed.

mod common;

use common::*;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

#[test]
fn store_and_mountpoint_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = |p: &str| dir.path().join(p).to_str().unwrap().to_string();
    // Missing store for disk commands.
    let e = run_err(&["disk", "list", "--store", &d("nope")]);
    assert!(
        e.contains("does not exist") && e.contains("diskvault init"),
        "{e}"
    );
    // A directory that is not a store.
    std::fs::create_dir(d("junk")).unwrap();
    std::fs::write(dir.path().join("junk/file.txt"), "keep me").unwrap();
    let e = run_err(&["disk", "list", "--store", &d("junk")]);
    assert!(e.contains("not a diskvault store"), "{e}");
    let e = run_err(&["init", &d("junk")]);
    assert!(e.contains("not a diskvault store"), "{e}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("junk/file.txt")).unwrap(),
        "keep me"
    );
    // init twice.
    run_ok(&["init", &d("st")]);
    assert!(run_err(&["init", &d("st")]).contains("already a diskvault store"));
    // Mountpoint missing, not empty, not a directory.
    let e = run_err(&["mount", &d("st"), &d("nomnt")]);
    assert!(e.contains("does not exist") && e.contains("mkdir"), "{e}");
    let e = run_err(&["mount", &d("st"), &d("junk")]);
    assert!(e.contains("not empty"), "{e}");
    let e = run_err(&["mount", &d("st"), &d("junk/file.txt")]);
    assert!(e.contains("not a directory"), "{e}");
    // Bad store with a good mountpoint.
    std::fs::create_dir(d("m1")).unwrap();
    std::fs::create_dir(d("m2")).unwrap();
    let e = run_err(&["mount", &d("junk"), &d("m1")]);
    assert!(e.contains("not a diskvault store"), "{e}");
    // Store already mounted; mountpoint busy.
    run_ok(&["mount", &d("st"), &d("m1")]);
    let r = std::panic::catch_unwind(|| {
        let e = run_err(&["mount", &d("st"), &d("m2")]);
        assert!(e.contains("already in use") && e.contains("umount"), "{e}");
        let e = run_err(&["mount", &d("st"), &d("m1")]);
        assert!(e.contains("busy"), "{e}");
    });
    run_ok(&["umount", &d("m1")]);
    r.unwrap();
    assert!(run_err(&["umount", &d("m1")]).contains("not mounted"));
}

#[test]
fn disk_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("st");
    let s = s.to_str().unwrap();
    run_ok(&["init", s]);
    run_ok(&["disk", "create", "ok1", "--size", "1M", "--store", s]);
    for (args, needle) in [
        (vec!["--size", "30Q"], "invalid size"),
        (vec!["--size=-1G"], "invalid size"),
        (vec!["--size", "1.5G"], "invalid size"),
        (vec!["--size", "100T"], "64T"),
        (vec!["--size", "1G", "--sku", "Gold_LRS"], "unknown sku"),
        (
            vec!["--size", "1G", "--cipher", "aes-128-ecb"],
            "unknown cipher",
        ),
    ] {
        let mut a = vec!["disk", "create", "x1"];
        a.extend(args);
        a.extend(["--store", s]);
        let e = run_err(&a);
        assert!(e.contains(needle), "{a:?}: {e}");
    }
    for name in ["_bad", "bad.", "a/b", "has space"] {
        let e = run_err(&["disk", "create", name, "--size", "1M", "--store", s]);
        assert!(e.contains("invalid disk name"), "{name}: {e}");
    }
    let e = run_err(&["disk", "create", "ok1", "--size", "2M", "--store", s]);
    assert!(e.contains("already exists"), "{e}");
    // The collision changed nothing.
    let show: serde_json::Value =
        serde_json::from_str(&run_ok(&["disk", "show", "ok1", "--store", s])).unwrap();
    assert_eq!(show["diskSizeBytes"], 1 << 20);
}

#[test]
fn invalid_names_through_the_mount() {
    let m = Mounted::new();
    let e = std::fs::write(m.disk("bad name-"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    std::fs::write(m.disk("a1"), b"x").unwrap();
    let e = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(m.disk("a1"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
    let e = std::fs::create_dir(m.mnt.join("disks/dir")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EPERM));
    let e = std::fs::write(m.mnt.join("toplevel"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
}

/// One disk with corrupt or tampered metadata is unavailable (EIO); the rest work.
#[test]
fn corrupt_and_tampered_metadata_isolated() {
    let mut m = Mounted::new();
    for n in ["good", "trunc", "tamper", "swap"] {
        m.create(n, "1M");
        let f = OpenOptions::new().write(true).open(m.disk(n)).unwrap();
        f.write_all_at(n.as_bytes(), 0).unwrap();
    }
    m.umount();
    let meta_of = |n: &str| m.backing_dir(n).join("meta.json");
    let (trunc, tamper, swap, good) = (
        meta_of("trunc"),
        meta_of("tamper"),
        meta_of("swap"),
        meta_of("good"),
    );
    // Truncated JSON.
    let t = std::fs::read(&trunc).unwrap();
    std::fs::write(&trunc, &t[..t.len() / 2]).unwrap();
    // A flipped bit in the wrapped key (still valid base64).
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&tamper).unwrap()).unwrap();
    let w = v["layers"][0]["wrappedKey"].as_str().unwrap().to_string();
    let flipped = if w.starts_with('A') {
        w.replacen('A', "B", 1)
    } else {
        format!("A{}", &w[1..])
    };
    v["layers"][0]["wrappedKey"] = flipped.into();
    std::fs::write(&tamper, serde_json::to_vec(&v).unwrap()).unwrap();
    // Another disk's wrapped key and keyCheck copied in: the keyCheck binds to the id.
    let g: serde_json::Value = serde_json::from_slice(&std::fs::read(&good).unwrap()).unwrap();
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(&swap).unwrap()).unwrap();
    s["layers"] = g["layers"].clone();
    std::fs::write(&swap, serde_json::to_vec(&s).unwrap()).unwrap();
    let before: Vec<u8> = all_bytes(&m.store.join("disks"));

    m.mount();
    assert_eq!(&std::fs::read(m.disk("good")).unwrap()[..4], b"good");
    for n in ["tamper", "swap"] {
        let e = std::fs::read(m.disk(n)).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{n}");
    }
    // The truncated one is listed under its directory id and fails with EIO.
    let status: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/status.json")).unwrap()).unwrap();
    let disks = status["disks"].as_array().unwrap();
    let unavailable =
        |d: &&serde_json::Value| d["keyState"].as_str().unwrap().starts_with("Unavailable");
    // The tampered ones say so too (item 16); the good one doesn't.
    for n in ["tamper", "swap"] {
        assert!(
            disks.iter().any(|d| d["name"] == n && unavailable(&d)),
            "{status}"
        );
    }
    assert!(
        !disks.iter().any(|d| d["name"] == "good" && unavailable(&d)),
        "{status}"
    );
    let bad: Vec<_> = disks
        .iter()
        .filter(|d| !["good", "tamper", "swap"].iter().any(|n| d["name"] == *n))
        .filter(unavailable)
        .collect();
    assert_eq!(bad.len(), 1, "{status}");
    let bad_name = bad[0]["name"].as_str().unwrap();
    assert_eq!(
        std::fs::read(m.disk(bad_name)).unwrap_err().raw_os_error(),
        Some(libc::EIO)
    );
    assert!(
        std::fs::read_to_string(m.mnt.join(".vault/last-error"))
            .unwrap()
            .contains("keyCheck")
            || std::fs::read_to_string(m.mnt.join(".vault/last-error"))
                .unwrap()
                .contains("unavailable")
    );
    m.umount();
    // Nothing was rewritten or destroyed by the failed opens.
    assert_eq!(all_bytes(&m.store.join("disks")), before);
    m.mount();
}

#[test]
fn missing_platform_key_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("st");
    run_ok(&["init", s.to_str().unwrap()]);
    std::fs::rename(s.join("keys/platform.key"), dir.path().join("saved.key")).unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    let e = run_err(&["mount", s.to_str().unwrap(), mnt.to_str().unwrap()]);
    assert!(e.contains("platform key") && e.contains("restore"), "{e}");
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "nothing mounted"
    );
    let e = run_err(&["disk", "list", "--store", s.to_str().unwrap()]);
    assert!(e.contains("platform key"), "{e}");
}

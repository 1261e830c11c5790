//! The store behind a real FUSE mount, through the real binary: it persists, never
//! holds plaintext, and decrypts with the documented format and openssl; and its disks
//! are managed through status.json, the control tree and the CLI, unmounted and
//! mounted.

mod common;

use common::*;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::process::Command;

#[test]
fn persistence_and_no_plaintext_in_backing_store() {
    let mut m = Mounted::new();
    m.create("px", "8M");
    m.create("pc", "8M");
    run_ok(&["disk", "delete", "pc", "--store", m.s()]);
    run_ok(&[
        "disk",
        "create",
        "pc",
        "--size",
        "8M",
        "--cipher",
        "aes-256-ctr",
        "--store",
        m.s(),
    ]);
    let marker = b"DISKVAULT-PLAINTEXT-MARKER-0123456789".repeat(300);
    for n in ["px", "pc"] {
        let f = rw(&m.disk(n));
        f.write_all_at(&marker, 12_345).unwrap();
        f.write_all_at(&marker, 4 << 20).unwrap();
        f.sync_all().unwrap();
    }
    // Before and after unmount, the backing store never holds the plaintext or the DEK.
    for pass in 0..2 {
        let all = all_bytes(&m.store);
        assert!(
            !contains(&all, b"DISKVAULT-PLAINTEXT-MARKER"),
            "plaintext in backing store (pass {pass})"
        );
        if pass == 0 {
            m.umount();
        }
    }
    m.mount();
    for n in ["px", "pc"] {
        let f = File::open(m.disk(n)).unwrap();
        assert_eq!(read_at(&f, 12_345, marker.len()), marker);
        assert_eq!(read_at(&f, 4 << 20, marker.len()), marker);
        assert_eq!(read_at(&f, 0, 100), vec![0u8; 100]);
    }
    // Key and disk files are mode 0600, directories 0700.
    for p in walk(&m.store) {
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", p.display());
    }
    assert_eq!(
        std::fs::metadata(m.disk("px"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}

#[test]
fn independent_decryptor_reads_backing_store() {
    let mut m = Mounted::new();
    m.create("ix", "3M");
    run_ok(&[
        "disk",
        "create",
        "ic",
        "--size",
        "3M",
        "--cipher",
        "aes-256-ctr",
        "--store",
        m.s(),
    ]);
    let mut expect = Vec::new();
    for n in ["ix", "ic"] {
        let f = rw(&m.disk(n));
        let mut model = vec![0u8; 3 << 20];
        for (i, off) in [0u64, 4095, 70_000, (3 << 20) - 10].iter().enumerate() {
            let len = (10_000).min((3 << 20) - *off as usize);
            let d = pattern(i as u64 + 40, len);
            f.write_all_at(&d, *off).unwrap();
            model[*off as usize..*off as usize + len].copy_from_slice(&d);
        }
        expect.push(model);
    }
    m.umount();
    for (n, model) in ["ix", "ic"].iter().zip(expect) {
        let out = m.dir.path().join(format!("{n}.plain"));
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&m.store)
            .arg(n)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryptor failed for {n}");
        assert_eq!(std::fs::read(&out).unwrap(), model, "{n}");
    }
    m.mount();
}

#[test]
fn wrapped_dek_unwraps_with_openssl() {
    let mut m = Mounted::new();
    m.create("ow", "1M");
    m.umount();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.backing_dir("ow").join("meta.json")).unwrap())
            .unwrap();
    let b64 = meta["layers"][0]["wrappedKey"].as_str().unwrap();
    // Decode the base64 with openssl too, so no diskvault code is involved.
    let wrapped = m.dir.path().join("w.b64");
    std::fs::write(&wrapped, b64).unwrap();
    let bin = m.dir.path().join("w.bin");
    assert!(Command::new("openssl")
        .args(["base64", "-d", "-A", "-in"])
        .arg(&wrapped)
        .arg("-out")
        .arg(&bin)
        .status()
        .unwrap()
        .success());
    let dek = openssl_oaep_unwrap(
        &unsealed_platform_pem(&m.store, m.dir.path()),
        &std::fs::read(&bin).unwrap(),
        m.dir.path(),
    );
    assert_eq!(dek.len(), 64, "XTS DEK is 512 bits");
    m.mount();
}

#[test]
fn status_json_and_control_tree() {
    let m = Mounted::new();
    m.create("s1", "1G");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/status.json")).unwrap()).unwrap();
    let d = &v["disks"][0];
    assert_eq!(d["name"], "s1");
    assert_eq!(d["encryption"]["type"], "EncryptionAtRestWithPlatformKey");
    assert_eq!(d["sku"]["name"], "Premium_LRS");
    assert_eq!(d["diskSizeGB"], 1);
    // Create through the control file with echo-style input and JSON.
    std::fs::write(
        m.mnt.join(".vault/disks/create"),
        "c1 2M sku=Standard_LRS\n",
    )
    .unwrap();
    std::fs::write(
        m.mnt.join(".vault/disks/create"),
        r#"{"name":"c2","size":"1M","cipher":"aes-256-ctr"}"#,
    )
    .unwrap();
    let c1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/disks/c1/disk.json")).unwrap())
            .unwrap();
    assert_eq!(c1["sku"]["name"], "Standard_LRS");
    assert_eq!(std::fs::metadata(m.disk("c2")).unwrap().len(), 1 << 20);
    // Bad control input fails with EINVAL/EEXIST, changes nothing, and says why.
    for (input, errno) in [
        ("c3 12Q", libc::EINVAL),
        ("c3", libc::EINVAL),
        ("{\"name\":\"c3\"", libc::EINVAL),
        (
            "{\"name\":\"c3\",\"size\":\"1M\",\"colour\":1}",
            libc::EINVAL,
        ),
        ("c3 1M cipher=rot13", libc::EINVAL),
        ("-c3 1M", libc::EINVAL),
        ("c1 1M", libc::EEXIST),
        ("c3 65T", libc::EINVAL),
    ] {
        let e = std::fs::write(m.mnt.join(".vault/disks/create"), input).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(errno), "{input}");
        assert!(!std::fs::read_to_string(m.mnt.join(".vault/last-error"))
            .unwrap()
            .is_empty());
    }
    let e = std::fs::write(m.mnt.join(".vault/disks/create"), vec![b'x'; 100_000]).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    assert!(!m.disk("c3").exists());
    // Read-only control files refuse writes.
    let e = OpenOptions::new()
        .write(true)
        .open(m.mnt.join(".vault/status.json"))
        .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EACCES));
    assert!(std::fs::read_to_string(m.mnt.join(".vault/README"))
        .unwrap()
        .contains("disks/create"));
    assert_eq!(
        std::fs::metadata(m.mnt.join(".vault"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o700
    );
}

#[test]
fn cli_works_unmounted_and_mounted() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let s = store.to_str().unwrap();
    run_ok(&["init", s]);
    run_ok(&[
        "disk",
        "create",
        "a1",
        "--size",
        "2G",
        "--sku",
        "UltraSSD_LRS",
        "--store",
        s,
    ]);
    let list = run_ok(&["disk", "list", "--store", s]);
    assert!(list.contains("a1") && list.contains("UltraSSD_LRS"));
    let show: serde_json::Value =
        serde_json::from_str(&run_ok(&["disk", "show", "a1", "--store", s])).unwrap();
    assert_eq!(show["diskSizeBytes"], 2u64 << 30);
    // DISKVAULT_STORE works instead of --store.
    let out = Command::new(bin())
        .args(["disk", "list", "--json"])
        .env("DISKVAULT_STORE", s)
        .output()
        .unwrap();
    assert!(out.status.success());
    run_ok(&["disk", "delete", "a1", "--store", s]);
    assert!(run_err(&["disk", "show", "a1", "--store", s]).contains("no disk named 'a1'"));
    // Mounted: the CLI goes through the control files.
    let mnt = dir.path().join("m");
    std::fs::create_dir(&mnt).unwrap();
    run_ok(&["mount", s, mnt.to_str().unwrap()]);
    let r = std::panic::catch_unwind(|| {
        run_ok(&["disk", "create", "b1", "--size", "1M", "--store", s]);
        assert!(mnt.join("disks/b1").exists());
        assert!(run_ok(&["disk", "list", "--store", s]).contains("b1"));
        let e = run_err(&["disk", "create", "b1", "--size", "1M", "--store", s]);
        assert!(e.contains("already exists"), "{e}");
        run_ok(&["disk", "delete", "b1", "--store", s]);
        assert!(!mnt.join("disks/b1").exists());
        assert!(run_err(&["disk", "delete", "b1", "--store", s]).contains("no disk named"));
    });
    run_ok(&["umount", mnt.to_str().unwrap()]);
    r.unwrap();
}

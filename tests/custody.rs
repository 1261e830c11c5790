//! Key custody: no usable private key in the store or vault; a copy without its KEK
//! decrypts nothing; passphrase seals; reseal; a swapped public key gets no DEK.

mod common;
use common::custody::*;
use common::*;
use std::path::Path;
use std::process::Command;

/// After every operation that makes or uses keys, nothing in the store or vault is a
/// private key, and no file holds a DEK. The scanner is shown to find both first.
#[test]
fn no_private_key_or_dek_in_the_store() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.create("p1", "4M");
    std::fs::write(m.disk("p1"), pattern(1, 4096)).unwrap();
    std::fs::write(m.disk("c1"), pattern(2, 4096)).unwrap();
    run_ok(&["key", "rotate", "k1", "--store", &s]);
    let byok = m.dir.path().join("byok.pem");
    openssl_genrsa(&byok);
    run_ok(&[
        "key",
        "import",
        "b1",
        "--pem",
        byok.to_str().unwrap(),
        "--store",
        &s,
    ]);
    run_ok(&["key", "create", "k3", "--size", "3072", "--store", &s]);
    run_ok(&[
        "snapshot", "create", "p1-s", "--source", "p1", "--store", &s,
    ]);
    run_ok(&[
        "snapshot", "create", "c1-s", "--source", "c1", "--store", &s,
    ]);
    m.umount();

    // The scanner finds a clear key and a DEK where there are some.
    let control = m.dir.path().join("control");
    std::fs::create_dir(&control).unwrap();
    std::fs::copy(&byok, control.join("k.pem")).unwrap();
    let meta: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.backing_dir("p1").join("meta.json")).unwrap())
            .unwrap();
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(meta["layers"][0]["wrappedKey"].as_str().unwrap())
        .unwrap();
    let dek = openssl_oaep_unwrap(
        &unsealed_platform_pem(&m.store, m.dir.path()),
        &wrapped,
        m.dir.path(),
    );
    std::fs::write(
        control.join("dek.txt"),
        dek.iter().map(|b| format!("{b:02x}")).collect::<String>(),
    )
    .unwrap();
    let found = scan(Some(&m.store), &[&control], &[]);
    assert!(
        found
            .iter()
            .any(|f| f.ends_with("k.pem: a PEM private key")),
        "{found:?}"
    );
    assert!(
        found.iter().any(|f| f.ends_with("dek.txt: a DEK")),
        "{found:?}"
    );
    std::fs::remove_dir_all(&control).unwrap();
    std::fs::remove_file(m.dir.path().join("platform-unsealed.pem")).unwrap();

    let found = scan(Some(&m.store), &[&m.store], &[]);
    assert!(found.is_empty(), "private material in the store: {found:?}");
    // Every key file is sealed, mode 0600.
    for p in walk(&m.store) {
        let name = p.file_name().unwrap().to_string_lossy().to_string();
        assert!(!name.ends_with(".pem"), "a clear key file: {}", p.display());
        if name.ends_with(".key") {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
    }
    // The key's version files say how they are sealed, and vault show tells.
    let v: serde_json::Value =
        serde_json::from_str(&run_ok(&["vault", "show", "--store", &s])).unwrap();
    let kp = &v["properties"]["keyProtection"];
    assert_eq!(kp["seal"], "host", "{v}");
    assert_eq!(kp["kekFingerprint"].as_str().unwrap().len(), 32, "{v}");
    m.mount();
    assert_eq!(
        std::fs::read(m.disk("c1")).unwrap()[..4096],
        pattern(2, 4096)[..]
    );
}

/// A copy of the store made without its host key mounts to nothing and says why,
/// changing nothing; with the key it reads everything, here and independently.
#[test]
fn a_copy_without_its_kek_decrypts_nothing() {
    let mut m = Mounted::new();
    cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.create("p1", "4M");
    std::fs::write(m.disk("p1"), pattern(3, 8192)).unwrap();
    std::fs::write(m.disk("c1"), pattern(4, 8192)).unwrap();
    m.umount();
    let copy = m.dir.path().join("copy");
    assert!(Command::new("cp")
        .arg("-a")
        .arg(&m.store)
        .arg(&copy)
        .status()
        .unwrap()
        .success());
    let mnt = m.dir.path().join("mnt2");
    std::fs::create_dir(&mnt).unwrap();
    let before = tree_sums(&copy);
    let (c, mp) = (copy.to_str().unwrap(), mnt.to_str().unwrap());

    let missing = m.dir.path().join("no-such-host.key");
    let miss = missing.to_str().unwrap();
    let e = err(dv(
        &["mount", "--no-create", c, mp],
        &[("DISKVAULT_HOST_KEY", miss)],
    ));
    assert!(
        e.contains(miss) && e.contains("does not exist") && e.contains("--host-key"),
        "{e}"
    );
    assert!(
        !missing.exists(),
        "a missing host key is never made at mount"
    );
    let wrong = new_host_key(&m.dir.path().join("wrong.key"));
    let w = wrong.to_str().unwrap();
    // A host key others can read is refused, whatever it holds.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(dv(
            &["mount", "--no-create", c, mp],
            &[("DISKVAULT_HOST_KEY", w)],
        ));
        assert!(
            e.contains("can be read by others") && e.contains("chmod 600"),
            "{e}"
        );
        std::fs::set_permissions(&wrong, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let e = err(dv(
        &["mount", "--no-create", c, mp],
        &[("DISKVAULT_HOST_KEY", w)],
    ));
    assert!(
        e.contains("is not the one this store was sealed with"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        std::fs::read_dir(&mnt).unwrap().next().is_none(),
        "nothing mounted"
    );
    // Commands that need no private key still work; the disks say why they can't be read.
    let list = ok(dv(
        &["disk", "list", "--store", c, "-o", "json"],
        &[("DISKVAULT_HOST_KEY", w)],
    ));
    assert!(list.contains("\"p1\""), "{list}");
    // The independent decryptor refuses too.
    let o = Command::new("python3")
        .arg(DECRYPT)
        .arg(&copy)
        .arg("p1")
        .arg(m.dir.path().join("out"))
        .env("DISKVAULT_HOST_KEY", w)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert_eq!(
        tree_sums(&copy),
        before,
        "a refused mount changed the store"
    );

    // With its key, everything reads, through the mount and independently.
    let mut m2 = Mounted::attach(m.dir.path(), &copy, &mnt);
    assert_eq!(
        std::fs::read(m2.disk("p1")).unwrap()[..8192],
        pattern(3, 8192)[..]
    );
    assert_eq!(
        std::fs::read(m2.disk("c1")).unwrap()[..8192],
        pattern(4, 8192)[..]
    );
    m2.umount();
    for d in ["p1", "c1"] {
        let out = m.dir.path().join(format!("{d}.raw"));
        let st = Command::new("python3")
            .arg(DECRYPT)
            .arg(&copy)
            .arg(d)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {d}");
        let want = pattern(if d == "p1" { 3 } else { 4 }, 8192);
        assert_eq!(std::fs::read(&out).unwrap()[..8192], want[..]);
    }
}

/// A passphrase seal: the right passphrase mounts, a wrong one changes nothing and
/// says so in one line; listing needs no passphrase. The independent unsealer
/// (Argon2id from python3-argon2) decrypts with it.
#[test]
fn passphrase_seal() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let good = dir.path().join("pass");
    std::fs::write(&good, "correct horse battery staple\n").unwrap();
    let bad = dir.path().join("bad");
    std::fs::write(&bad, "correct horse battery stapler\n").unwrap();
    let (s, mp, g) = (
        store.to_str().unwrap(),
        mnt.to_str().unwrap(),
        good.to_str().unwrap(),
    );
    // No host key is involved: point it where none is.
    let nohost = dir.path().join("none.key");
    let nh = ("DISKVAULT_HOST_KEY", nohost.to_str().unwrap());
    ok(dv(
        &["init", s, "--seal", "passphrase", "--passphrase-file", g],
        &[nh],
    ));
    assert!(!nohost.exists());
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
    assert_eq!(h["keyProtection"]["seal"], "passphrase");
    assert_eq!(h["keyProtection"]["argon2"]["memoryKib"], 65536);
    ok(dv(&["mount", s, mp, "--passphrase-file", g], &[nh]));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "d1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("d1"), pattern(5, 4096)).unwrap();
    m.umount();

    let before = tree_sums(&store);
    let e = err(dv(
        &["mount", s, mp, "--passphrase-file", bad.to_str().unwrap()],
        &[nh],
    ));
    assert!(e.contains("wrong passphrase"), "{e}");
    assert_eq!(e.lines().count(), 1, "{e}");
    // Without one (no terminal here) the mount says how to give it.
    let e = err(dv(&["mount", s, mp], &[nh]));
    assert!(e.contains("--passphrase-file"), "{e}");
    assert_eq!(
        tree_sums(&store),
        before,
        "a refused mount changed the store"
    );
    // Listing opens no private key, so it needs no passphrase.
    let list = ok(dv(&["disk", "list", "--store", s, "-o", "tsv"], &[nh]));
    assert!(list.contains("d1"), "{list}");

    ok(dv(
        &["mount", s, mp],
        &[nh, ("DISKVAULT_PASSPHRASE_FILE", g)],
    ));
    let mut m = Mounted::adopt(&store, &mnt);
    assert_eq!(
        std::fs::read(m.disk("d1")).unwrap()[..4096],
        pattern(5, 4096)[..]
    );
    m.umount();
    let out = dir.path().join("d1.raw");
    let st = Command::new("python3")
        .arg(DECRYPT)
        .arg(&store)
        .arg("d1")
        .arg(&out)
        .env("DISKVAULT_PASSPHRASE_FILE", g)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(&out).unwrap()[..4096], pattern(5, 4096)[..]);
    assert!(scan(None, &[&store], &[]).is_empty());
}

/// vault reseal changes the KEK source without touching key files: host to
/// passphrase (the old host key then opens nothing), then to a host key kept beside
/// the store, recorded relative to it; the two moved together still mount.
#[test]
fn reseal_and_a_moved_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (s, mp) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    ok(dv(&["mount", s, mp], &[]));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "d1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("d1"), pattern(6, 4096)).unwrap();
    let e = run_err(&["vault", "reseal", "--seal", "host", "--store", s]);
    assert!(e.contains("unmount it first"), "{e}");
    m.umount();
    let key_files = |p: &Path| {
        let mut v: Vec<_> = walk(p)
            .into_iter()
            .filter(|f| f.extension().is_some_and(|x| x == "key"))
            .map(|f| (f.clone(), std::fs::read(&f).unwrap()))
            .collect();
        v.sort();
        v
    };
    let files = key_files(&store);
    let pass = dir.path().join("pass");
    std::fs::write(&pass, "p4ss").unwrap();
    let p = pass.to_str().unwrap();
    ok(dv(
        &[
            "vault",
            "reseal",
            "--seal",
            "passphrase",
            "--new-passphrase-file",
            p,
            "--store",
            s,
        ],
        &[],
    ));
    assert_eq!(key_files(&store), files, "reseal rewrote key files");
    let e = err(dv(&["mount", s, mp], &[]));
    assert!(e.contains("passphrase"), "{e}");

    // A host key on a removable device beside the store, recorded relative to it.
    let usb = dir.path().join("usb");
    std::fs::create_dir(&usb).unwrap();
    let hk = usb.join("host.key");
    ok(dv(
        &[
            "vault",
            "reseal",
            "--seal",
            "host",
            "--new-host-key",
            hk.to_str().unwrap(),
            "--store",
            s,
        ],
        &[("DISKVAULT_PASSPHRASE_FILE", p)],
    ));
    assert!(hk.exists());
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
    assert_eq!(h["keyProtection"]["hostKey"], "../usb/host.key", "{h}");
    // Move both; mount without DISKVAULT_HOST_KEY, by the recorded path alone.
    let moved = dir.path().join("moved");
    std::fs::create_dir(&moved).unwrap();
    std::fs::rename(&store, moved.join("st")).unwrap();
    std::fs::rename(&usb, moved.join("usb")).unwrap();
    let st2 = moved.join("st");
    let o = Command::new(bin())
        .args(["mount", st2.to_str().unwrap(), mp])
        .env_remove("DISKVAULT_HOST_KEY")
        .output()
        .unwrap();
    ok(o);
    let mut m = Mounted::adopt(&st2, &mnt);
    assert_eq!(
        std::fs::read(m.disk("d1")).unwrap()[..4096],
        pattern(6, 4096)[..]
    );
    m.umount();
}

/// A public key swapped into a sealed key file (no KEK needed for that) never
/// receives a DEK: a key wraps only once its private half has been unsealed and
/// matched to it.
#[test]
fn a_swapped_public_key_gets_no_dek() {
    let mut m = Mounted::new();
    let kid = cmk_setup(&m, &[("c1", "4M", "Premium_LRS")]);
    m.umount();
    let version = kid.rsplit('/').next().unwrap();
    let file = m.store.join(format!("vault/keys/k1/{version}.key"));
    let mut f: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let attacker = m.dir.path().join("attacker.pem");
    openssl_genrsa(&attacker);
    let spki = Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&attacker)
        .output()
        .unwrap()
        .stdout;
    use base64::Engine;
    f["publicKey"] = base64::engine::general_purpose::STANDARD
        .encode(&spki)
        .into();
    std::fs::write(&file, serde_json::to_vec(&f).unwrap()).unwrap();
    m.mount();
    let o = dv(
        &[
            "disk",
            "create",
            "c2",
            "--size",
            "4M",
            "--disk-encryption-set",
            "set1",
            "--store",
            m.s(),
        ],
        &[],
    );
    let e = err(o);
    assert!(e.contains("does not open") || e.contains("unusable"), "{e}");
    // Nothing on the store is wrapped to the attacker's key.
    for p in walk(&m.store) {
        if p.file_name().is_some_and(|n| n == "meta.json") {
            let meta: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            for l in meta["layers"].as_array().into_iter().flatten() {
                let w = base64::engine::general_purpose::STANDARD
                    .decode(l["wrappedKey"].as_str().unwrap())
                    .unwrap();
                let bin = m.dir.path().join("w.bin");
                std::fs::write(&bin, &w).unwrap();
                let st = Command::new("openssl")
                    .args(["pkeyutl", "-decrypt", "-inkey"])
                    .arg(&attacker)
                    .arg("-in")
                    .arg(&bin)
                    .args([
                        "-pkeyopt",
                        "rsa_padding_mode:oaep",
                        "-pkeyopt",
                        "rsa_oaep_md:sha256",
                        "-pkeyopt",
                        "rsa_mgf1_md:sha256",
                    ])
                    .output()
                    .unwrap();
                assert!(
                    !st.status.success(),
                    "{} is wrapped to the attacker's key",
                    p.display()
                );
            }
        }
    }
}

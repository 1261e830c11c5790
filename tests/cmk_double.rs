//! Double encryption (platform and customer keys): a disk in a double-encryption set
//! has two layers and its set can't change type; and each layer of CMK and double
//! encryption disks decrypts independently, with openssl and the Python decryptor.

mod common;

use common::cmk::*;
use common::*;
use serde_json::Value;
use std::process::Command;

every_way!(a_double_encryption_disk_has_two_layers_and_keeps_its_type);

/// Double encryption: a platform layer and a customer layer.
fn a_double_encryption_disk_has_two_layers_and_keeps_its_type(e: &Env, via: Via, _mounted: bool) {
    let kid1 = e.create_cmk1(via);
    e.protect(via);
    e.ok(
        via,
        &[
            "des",
            "create",
            "dbl",
            "--key-url",
            &kid1,
            "--encryption-type",
            DOUBLE,
        ],
        Ctl::Write(
            "disk-encryption-sets/create",
            format!("dbl {kid1} type={DOUBLE}"),
        ),
    );
    e.ok(
        via,
        &["key", "grant", "cmk1", "--des", "dbl"],
        Ctl::Write("keys/cmk1/grants", "grant dbl".into()),
    );
    e.ok(
        via,
        &[
            "disk",
            "create",
            "c2",
            "--size",
            "1M",
            "--disk-encryption-set",
            "dbl",
        ],
        Ctl::Write("disks/create", "c2 1M des=dbl".into()),
    );
    let c2 = e.disk("c2");
    assert_eq!(c2["encryption"]["type"], DOUBLE);
    assert_eq!(c2["layerKeyIds"].as_array().unwrap().len(), 2);
    e.fails(
        via,
        &["des", "update", "dbl", "--encryption-type", CMK],
        Ctl::Write("disk-encryption-sets/dbl/update", format!("type={CMK}")),
        libc::EPERM,
        "cannot change",
    );
}

/// openssl unwraps each layer's DEK (customer key or platform key) and the Python
/// decryptor, written from docs/format.md, decrypts the backing data with them.
#[test]
fn cmk_and_double_encryption_decrypt_independently() {
    let m = Mounted::new();
    let s = m.s().to_string();
    let pem = m.dir.path().join("customer.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-quiet",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:3072",
            "-out"
        ])
        .arg(&pem)
        .status()
        .unwrap()
        .success());
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", &s]);
    run_ok(&[
        "key",
        "import",
        "cust",
        "--pem",
        pem.to_str().unwrap(),
        "--store",
        &s,
    ]);
    for (set, ty) in [("one", CMK), ("two", DOUBLE)] {
        run_ok(&[
            "des",
            "create",
            set,
            "--key-url",
            "cust",
            "--auto-rotate",
            "--encryption-type",
            ty,
            "--store",
            &s,
        ]);
        run_ok(&["key", "grant", "cust", "--des", set, "--store", &s]);
    }
    let data = pattern(99, 3 << 20);
    for (disk, set, cipher) in [
        ("x1", "one", "aes-256-xts"),
        ("x2", "two", "aes-256-xts"),
        ("x3", "two", "aes-256-ctr"),
    ] {
        run_ok(&[
            "disk",
            "create",
            disk,
            "--size",
            "3M",
            "--cipher",
            cipher,
            "--disk-encryption-set",
            set,
            "--store",
            &s,
        ]);
        write_disk(&m.mnt, disk, &data);
    }
    for disk in ["x1", "x2", "x3"] {
        let meta: Value =
            serde_json::from_slice(&std::fs::read(m.backing_dir(disk).join("meta.json")).unwrap())
                .unwrap();
        let mut deks = Vec::new();
        for layer in meta["layers"].as_array().unwrap() {
            let key = if layer["kid"].as_str().unwrap().starts_with("platform/") {
                unsealed_platform_pem(&m.store, m.dir.path())
            } else {
                pem.clone()
            };
            use base64::Engine;
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(layer["wrappedKey"].as_str().unwrap())
                .unwrap();
            let dek = openssl_oaep_unwrap(&key, &wrapped, m.dir.path());
            deks.push(dek.iter().map(|b| format!("{b:02x}")).collect::<String>());
        }
        assert_eq!(deks.len(), if disk == "x1" { 1 } else { 2 });
        assert_ne!(
            deks.first(),
            deks.last().filter(|_| deks.len() == 2),
            "layers share a DEK"
        );
        let out = m.dir.path().join(format!("{disk}.plain"));
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&m.store)
            .arg(disk)
            .arg(&out)
            .args(&deks)
            .status()
            .unwrap();
        assert!(st.success(), "independent decryption of {disk} failed");
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{disk} decrypted wrongly"
        );
    }
    // A PKCS#1 key imports too, and the vault's public key is the one openssl derives.
    let pkcs1 = m.dir.path().join("pkcs1.pem");
    assert!(Command::new("openssl")
        .args(["genrsa", "-traditional", "-out"])
        .arg(&pkcs1)
        .arg("2048")
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    assert!(std::fs::read_to_string(&pkcs1)
        .unwrap()
        .contains("BEGIN RSA PRIVATE KEY"));
    run_ok(&[
        "key",
        "import",
        "legacy",
        "--pem",
        pkcs1.to_str().unwrap(),
        "--store",
        &s,
    ]);
    let pubout = Command::new("openssl")
        .args(["rsa", "-pubout", "-in"])
        .arg(&pkcs1)
        .output()
        .unwrap();
    assert!(pubout.status.success());
    assert_eq!(
        std::fs::read_to_string(m.mnt.join(".vault/keys/legacy/public.pem")).unwrap(),
        String::from_utf8(pubout.stdout).unwrap()
    );
    // The customer key is required: the platform key alone can't unwrap a CMK layer.
    let meta: Value =
        serde_json::from_slice(&std::fs::read(m.backing_dir("x1").join("meta.json")).unwrap())
            .unwrap();
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(meta["layers"][0]["wrappedKey"].as_str().unwrap())
        .unwrap();
    std::fs::write(m.dir.path().join("w.bin"), wrapped).unwrap();
    let st = Command::new("openssl")
        .args(["pkeyutl", "-decrypt", "-inkey"])
        .arg(unsealed_platform_pem(&m.store, m.dir.path()))
        .arg("-in")
        .arg(m.dir.path().join("w.bin"))
        .args([
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
        ])
        .output()
        .unwrap();
    assert!(!st.status.success());
}

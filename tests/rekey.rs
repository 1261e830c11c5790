//! `disk rekey`: data stays identical while I/O goes on, the old DEK no longer
//! decrypts the backing file, and kill -9 at any step resumes cleanly.

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn js(s: &str) -> Value {
    serde_json::from_str(s).unwrap()
}

fn meta(m: &Mounted, disk: &str) -> Value {
    js(&std::fs::read_to_string(m.backing_dir(disk).join("meta.json")).unwrap())
}

/// The DEK of layer `i`, unwrapped by openssl with `key`.
fn dek(m: &Mounted, disk: &str, i: usize, key: &Path) -> Vec<u8> {
    let w = base64::engine::general_purpose::STANDARD
        .decode(meta(m, disk)["layers"][i]["wrappedKey"].as_str().unwrap())
        .unwrap();
    openssl_oaep_unwrap(key, &w, m.dir.path())
}

/// Decrypts unit `n` of the backing file with an XTS DEK, in Python's `cryptography`.
fn xts_decrypt_unit(m: &Mounted, disk: &str, dek: &[u8], n: u64) -> Vec<u8> {
    let hex: String = dek.iter().map(|b| format!("{b:02x}")).collect();
    let script = "import sys\nfrom cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes\n\
        data, key, n = sys.argv[1], bytes.fromhex(sys.argv[2]), int(sys.argv[3])\n\
        f = open(data, 'rb'); f.seek(n * 4096); c = f.read(4096)\n\
        d = Cipher(algorithms.AES(key), modes.XTS(n.to_bytes(16, 'little'))).decryptor()\n\
        sys.stdout.buffer.write(d.update(c) + d.finalize())\n";
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(m.backing_dir(disk).join("data"))
        .arg(hex)
        .arg(n.to_string())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn platform_pem(m: &Mounted) -> std::path::PathBuf {
    unsealed_platform_pem(&m.store, m.dir.path())
}

#[test]
fn rekey_online_keeps_data_and_retires_the_old_dek() {
    let m = Mounted::new();
    let s = m.s().to_string();
    m.create("rk", "8M");
    let model = Arc::new(parking_lot::Mutex::new(pattern(1, 8 << 20)));
    std::fs::write(m.disk("rk"), &*model.lock()).unwrap();
    let old = dek(&m, "rk", 0, &platform_pem(&m));
    assert_eq!(
        xts_decrypt_unit(&m, "rk", &old, 5),
        model.lock()[5 * 4096..6 * 4096]
    );
    // A writer and a reader run against the disk during the whole rekey.
    let stop = Arc::new(AtomicBool::new(false));
    let path = m.disk("rk");
    let io = {
        let (stop, model, path) = (stop.clone(), model.clone(), path.clone());
        std::thread::spawn(move || {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            let mut seed = 7u64;
            let mut ops = 0u32;
            while !stop.load(Ordering::Acquire) || ops < 50 {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let off = (seed >> 20) % ((8 << 20) - 70000);
                let len = 1 + (seed >> 8) as usize % 65536;
                let mut m = model.lock();
                if ops.is_multiple_of(2) {
                    let data = pattern(seed, len);
                    f.write_all_at(&data, off).unwrap();
                    m[off as usize..off as usize + len].copy_from_slice(&data);
                } else {
                    let mut got = vec![0u8; len];
                    f.read_exact_at(&mut got, off).unwrap();
                    assert!(
                        got == m[off as usize..off as usize + len],
                        "read during rekey differs at {off}"
                    );
                }
                ops += 1;
            }
            ops
        })
    };
    let out = run_ok(&["disk", "rekey", "rk", "--quiet", "--store", &s]);
    assert!(out.contains("rekeyed disk rk"), "{out}");
    stop.store(true, Ordering::Release);
    let ops = io.join().unwrap();
    assert!(ops >= 50);
    assert!(
        std::fs::read(m.disk("rk")).unwrap() == *model.lock(),
        "data changed"
    );
    let st: Value =
        serde_json::from_slice(&std::fs::read(m.mnt.join(".vault/disks/rk/rekey")).unwrap())
            .unwrap();
    assert_eq!(st["state"], "done");
    // The old DEK no longer decrypts the backing file; the new one does.
    let new = dek(&m, "rk", 0, &platform_pem(&m));
    assert_ne!(old, new);
    for n in [0u64, 5, 1000, 2047] {
        let want = &model.lock()[(n * 4096) as usize..((n + 1) * 4096) as usize].to_vec();
        assert_ne!(
            &xts_decrypt_unit(&m, "rk", &old, n),
            want,
            "old DEK still decrypts unit {n}"
        );
        assert_eq!(
            &xts_decrypt_unit(&m, "rk", &new, n),
            want,
            "new DEK must decrypt unit {n}"
        );
    }
    assert!(meta(&m, "rk").get("rekey").is_none());
    assert!(!m.backing_dir("rk").join("rekey.journal").exists());
}

#[test]
fn rekey_of_customer_key_and_double_encrypted_disks_unmounted() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let s = store.to_str().unwrap();
    run_ok(&["init", s]);
    run_ok(&["vault", "set", "--purge-protection", "true", "--store", s]);
    run_ok(&["key", "create", "k1", "--store", s]);
    for (set, ty) in [
        ("one", "EncryptionAtRestWithCustomerKey"),
        ("two", "EncryptionAtRestWithPlatformAndCustomerKeys"),
    ] {
        run_ok(&[
            "des",
            "create",
            set,
            "--key-url",
            "k1",
            "--auto-rotate",
            "--encryption-type",
            ty,
            "--store",
            s,
        ]);
        run_ok(&["key", "grant", "k1", "--des", set, "--store", s]);
        run_ok(&[
            "disk",
            "create",
            &format!("d-{set}"),
            "--size",
            "3M",
            "--disk-encryption-set",
            set,
            "--store",
            s,
        ]);
    }
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::attach(dir.path(), &store, &mnt);
    let data = pattern(9, 3 << 20);
    for d in ["d-one", "d-two"] {
        std::fs::write(m.disk(d), &data).unwrap();
    }
    let before: Vec<Value> = ["d-one", "d-two"]
        .iter()
        .map(|d| meta(&m, d)["layers"].clone())
        .collect();
    m.umount();
    for d in ["d-one", "d-two"] {
        run_ok(&["disk", "rekey", d, "--quiet", "--store", s]);
    }
    m.mount();
    for (i, d) in ["d-one", "d-two"].iter().enumerate() {
        assert!(std::fs::read(m.disk(d)).unwrap() == data, "{d}");
        let after = meta(&m, d)["layers"].clone();
        for (a, b) in after
            .as_array()
            .unwrap()
            .iter()
            .zip(before[i].as_array().unwrap())
        {
            assert_ne!(
                a["wrappedKey"], b["wrappedKey"],
                "{d}: a layer kept its DEK"
            );
            assert_eq!(
                a["kid"].as_str().unwrap().starts_with("platform/"),
                b["kid"].as_str().unwrap().starts_with("platform/")
            );
        }
        // And the independent decryptor agrees.
        let out = m.dir.path().join(format!("{d}.plain"));
        let st = Command::new("python3")
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/independent_decrypt.py"
            ))
            .arg(&m.store)
            .arg(d)
            .arg(&out)
            .status()
            .unwrap();
        assert!(st.success());
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{d}: independent decryption"
        );
    }
    let audit = std::fs::read_to_string(store.join("vault/audit.log")).unwrap();
    assert!(audit.contains("\"operationName\":\"KeyWrap\""));
    // A revoked disk is not rekeyed.
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", s]);
    let e = run_err(&["disk", "rekey", "d-one", "--quiet", "--store", s]);
    assert!(e.contains("disabled"), "{e}");
}

/// kill -9 at every step of a rekey (journal written, data written, boundary
/// recorded, for each chunk): the next mount resumes and finishes, data intact.
#[test]
fn kill_9_during_rekey_resumes_cleanly() {
    let mut m = Mounted::new();
    let s = m.s().to_string();
    m.create("kk", "3M");
    let data = pattern(33, 3 << 20);
    std::fs::write(m.disk("kk"), &data).unwrap();
    let mut points = Vec::new();
    for n in 1..=3 {
        for p in ["rekey.journal", "rekey.data", "rekey.chunk"] {
            points.push(format!("{p}={n}"));
        }
    }
    for point in &points {
        let old = meta(&m, "kk")["layers"][0]["wrappedKey"].clone();
        m.umount();
        m.mount_with(&[], &[("DISKVAULT_FAULT", point)]);
        // The rekey runs in the daemon; the fault kills it part way.
        let _ = std::fs::write(m.mnt.join(".vault/disks/kk/rekey"), "start");
        m.reap_dead_daemon();
        let mid = meta(&m, "kk");
        assert!(
            mid.get("rekey").is_some(),
            "{point}: the rekey should be unfinished"
        );
        m.mount();
        // The daemon resumed it by itself.
        let done = Mounted::wait_for(Duration::from_secs(20), || {
            let st: Value = serde_json::from_slice(
                &std::fs::read(m.mnt.join(".vault/disks/kk/rekey")).unwrap(),
            )
            .unwrap();
            st["state"] == "done"
        });
        assert!(
            done.is_some(),
            "{point}: rekey did not finish after remount"
        );
        assert!(
            std::fs::read(m.disk("kk")).unwrap() == data,
            "{point}: data damaged"
        );
        let after = meta(&m, "kk");
        assert!(after.get("rekey").is_none());
        assert_ne!(after["layers"][0]["wrappedKey"], old, "{point}");
        let _ = &s;
    }
}

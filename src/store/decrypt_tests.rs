//! The independent decryptor (tests/independent_decrypt.py, written from
//! docs/format.md) against layered objects: snapshots, images, clones, whiteouts.

use super::*;
use crate::testkit::{openssl_oaep_unwrap, pattern};
use crate::vault::{Caller, KeyOptions};
use std::collections::BTreeMap;
use std::process::Command;

const U: u64 = 4096;
const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_decrypt.py");

type Model = BTreeMap<(ObjectKind, String), Vec<u8>>;

/// Runs the decryptor on one object; `deks` (hex, one per layer) skip its unwrapping.
fn decrypt(root: &Path, name_arg: &[&str], out: &Path, deks: &[String]) -> Vec<u8> {
    let o = Command::new("python3")
        .env("DISKVAULT_HOST_KEY", crate::testkit::unit_host_key())
        .arg(SCRIPT)
        .args(&name_arg[..name_arg.len() - 1])
        .arg(root)
        .arg(name_arg[name_arg.len() - 1])
        .arg(out)
        .args(deks)
        .output()
        .expect("python3 is required");
    assert!(
        o.status.success(),
        "decryptor failed on {name_arg:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    fs::read(out).unwrap()
}

fn first_difference(a: &[u8], b: &[u8]) -> String {
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    format!(
        "lengths {} and {}, first difference at byte {at} (unit {})",
        a.len(),
        b.len(),
        at as u64 / U
    )
}

/// Every object: the store reads what the model says, and the decryptor reads the
/// same from the files alone.
fn check_all(s: &Store, model: &Model, tmp: &Path, ctx: &str) {
    let listed: Vec<_> = s.list().iter().map(|d| (d.kind, d.name())).collect();
    assert_eq!(listed.len(), model.len(), "{ctx}: {listed:?}");
    for ((kind, name), want) in model {
        let obj = s.get_kind(*kind, name).unwrap();
        let got = obj.read(0, obj.size() as usize).unwrap();
        assert!(
            got == *want,
            "{ctx}: the store reads {kind} {name} wrongly: {}",
            first_difference(&got, want)
        );
        let on_disk = DiskMeta::from_json(&fs::read(obj.dir().join("meta.json")).unwrap()).unwrap();
        assert_eq!(on_disk.size_bytes, obj.size(), "{ctx}: {kind} {name} size");
        let out = tmp.join("plain");
        let plain = decrypt(s.root(), &["--kind", kind.noun(), name], &out, &[]);
        assert!(
            plain == *want,
            "{ctx}: the independent decryptor reads {kind} {name} wrongly: {}",
            first_difference(&plain, want)
        );
    }
}

fn write(s: &Store, m: &mut Model, name: &str, off: u64, data: &[u8]) {
    s.get(name).unwrap().write(off, data).unwrap();
    let v = m.get_mut(&(ObjectKind::Disk, name.to_string())).unwrap();
    v[off as usize..off as usize + data.len()].copy_from_slice(data);
}

fn punch(s: &Store, m: &mut Model, name: &str, off: u64, len: u64) {
    s.get(name).unwrap().punch(off, len).unwrap();
    let v = m.get_mut(&(ObjectKind::Disk, name.to_string())).unwrap();
    v[off as usize..(off + len) as usize].fill(0);
}

fn resize(s: &Store, m: &mut Model, name: &str, size: u64) {
    s.get(name).unwrap().set_size(size).unwrap();
    m.get_mut(&(ObjectKind::Disk, name.to_string()))
        .unwrap()
        .resize(size as usize, 0);
}

fn copy(s: &Store, m: &mut Model, kind: ObjectKind, name: &str, src: (ObjectKind, &str)) {
    s.create_copy(kind, name, src.1, &CopyOptions::default())
        .unwrap();
    let content = m[&(src.0, src.1.to_string())].clone();
    m.insert((kind, name.to_string()), content);
}

fn disk_from(s: &Store, m: &mut Model, name: &str, src: (ObjectKind, &str), size: u64) {
    let opts = FromSourceOptions {
        size,
        ..Default::default()
    };
    s.create_disk_from(name, src.1, &opts, &|_, _| {}).unwrap();
    let mut content = m[&(src.0, src.1.to_string())].clone();
    content.resize(size as usize, 0);
    m.insert((ObjectKind::Disk, name.to_string()), content);
}

/// One family: a disk, snapshots over writes, discards and a shrink (whiteouts), an
/// image and a bigger disk from the middle snapshot, which is then deleted.
fn family(s: &Store, m: &mut Model, p: &str, opts: &CreateOptions, seed: u64) {
    let d = format!("{p}d");
    let size = 40 * U + 100;
    s.create_disk(
        &d,
        &CreateOptions {
            size,
            ..opts.clone()
        },
    )
    .unwrap();
    m.insert((ObjectKind::Disk, d.clone()), vec![0; size as usize]);
    // Left open for a while, so both the open index and temporary unlocks are used.
    s.get(&d).unwrap().open().unwrap();
    write(s, m, &d, 0, &pattern(seed, 30 * U as usize + 17));
    write(s, m, &d, 39 * U, &pattern(seed + 1, U as usize + 100));
    copy(
        s,
        m,
        ObjectKind::Snapshot,
        &format!("{p}s1"),
        (ObjectKind::Disk, &d),
    );
    write(s, m, &d, 5 * U + 3, &pattern(seed + 2, 5 * U as usize));
    // Discards over the snapshot's data: whiteouts in the disk's top.
    punch(s, m, &d, 12 * U, 8 * U);
    punch(s, m, &d, 22 * U + 10, 2 * U);
    copy(
        s,
        m,
        ObjectKind::Snapshot,
        &format!("{p}s2"),
        (ObjectKind::Disk, &d),
    );
    // Data over a lower delta's whiteout, then a whiteout and data in one delta.
    write(s, m, &d, 14 * U, &pattern(seed + 3, 2 * U as usize));
    punch(s, m, &d, 2 * U, 3 * U);
    write(s, m, &d, 3 * U + 100, &pattern(seed + 4, 50));
    // Shrink over shared data, then grow: the cut units stay zero.
    resize(s, m, &d, 25 * U + 10);
    resize(s, m, &d, 45 * U);
    write(s, m, &d, 44 * U + 5, &pattern(seed + 5, 200));
    s.get(&d).unwrap().release().unwrap();
    copy(
        s,
        m,
        ObjectKind::Snapshot,
        &format!("{p}s3"),
        (ObjectKind::Disk, &d),
    );
    copy(
        s,
        m,
        ObjectKind::Image,
        &format!("{p}i1"),
        (ObjectKind::Snapshot, &format!("{p}s2")),
    );
    let c = format!("{p}c");
    disk_from(
        s,
        m,
        &c,
        (ObjectKind::Snapshot, &format!("{p}s2")),
        60 * U + 7,
    );
    write(s, m, &c, 13 * U, &pattern(seed + 6, 3 * U as usize));
    punch(s, m, &c, 0, 4 * U);
    write(s, m, &c, 58 * U, &pattern(seed + 7, 2 * U as usize));
    // A disk from the disk itself freezes its top as a snapshot does.
    disk_from(s, m, &format!("{p}e"), (ObjectKind::Disk, &d), 45 * U);
    write(s, m, &d, 20 * U, &pattern(seed + 8, U as usize));
    // The middle snapshot goes; its deltas stay for the others (units only it read
    // are punched).
    s.delete_object(ObjectKind::Snapshot, &format!("{p}s2"))
        .unwrap();
    m.remove(&(ObjectKind::Snapshot, format!("{p}s2")));
}

#[test]
fn the_independent_decryptor_reads_every_layered_object() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    let mut s = Store::open(&root, None).unwrap();
    // A customer key for double encryption (customer-key layer under a platform layer).
    let me = Caller::current_user();
    s.vault().set_props(&me, Some(true), None).unwrap();
    s.vault()
        .create_key(&me, "k1", &KeyOptions::default())
        .unwrap();
    let kid = s
        .vault()
        .resolve(&crate::vault::KeyRef::parse("k1").unwrap())
        .unwrap();
    let set = s
        .des_create(
            "set1",
            &kid,
            Some("EncryptionAtRestWithPlatformAndCustomerKeys"),
            false,
            &Default::default(),
        )
        .unwrap();
    let perms: Vec<String> = ["get", "wrapKey", "unwrapKey"].map(String::from).to_vec();
    s.vault()
        .grant(
            &me,
            "k1",
            &set.principal_id,
            "diskEncryptionSets/set1",
            &perms,
        )
        .unwrap();
    let mut m = Model::new();
    // A disk that is never copied keeps formatVersion 1 (disks/ID/data).
    s.create_disk(
        "v1",
        &CreateOptions {
            size: 10 * U + 1,
            ..Default::default()
        },
    )
    .unwrap();
    m.insert(
        (ObjectKind::Disk, "v1".into()),
        vec![0; 10 * U as usize + 1],
    );
    write(&s, &mut m, "v1", 4000, &pattern(9, 3 * U as usize));
    let families = [
        ("x", None, None),
        ("r", Some(CipherKind::Aes256Ctr), None),
        ("k", None, Some("set1".to_string())),
    ];
    for (i, (p, cipher, des)) in families.iter().enumerate() {
        let opts = CreateOptions {
            cipher: *cipher,
            disk_encryption_set: des.clone(),
            ..Default::default()
        };
        family(&s, &mut m, p, &opts, 100 * i as u64);
    }
    let deltas = root.join(delta::DELTAS_DIR);
    let whiteout_logs = fs::read_dir(&deltas)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".whiteouts")
        })
        .count();
    assert!(whiteout_logs >= 3 * 2, "{whiteout_logs} whiteout logs");
    let k = s.get("kd").unwrap().meta();
    assert_eq!(k.layers.len(), 2);
    assert!(
        s.get_kind(ObjectKind::Snapshot, "ks1")
            .unwrap()
            .meta()
            .key_check_id
            == Some(k.id)
    );
    check_all(&s, &m, dir.path(), "open");
    drop(s);
    s = Store::open(&root, None).unwrap();
    check_all(&s, &m, dir.path(), "reopened");
    assert_eq!(s.get("v1").unwrap().meta().format_version, 1);
    // Merges: deleting the first snapshot of each family leaves its delta dead under
    // the next one; folded in, every object still decrypts from the files alone.
    for (p, ..) in &families {
        s.delete_object(ObjectKind::Snapshot, &format!("{p}s1"))
            .unwrap();
        m.remove(&(ObjectKind::Snapshot, format!("{p}s1")));
    }
    assert!(s.merge_all(u64::MAX) >= families.len(), "no merge ran");
    check_all(&s, &m, dir.path(), "after merges");
    // The callers' form: STORE NAME OUTPUT, a disk by default.
    let out = dir.path().join("plain");
    let plain = decrypt(&root, &["v1"], &out, &[]);
    assert!(plain == m[&(ObjectKind::Disk, "v1".to_string())]);

    // The DEK of a snapshot's platform layer unwraps with openssl, and the decryptor
    // takes it (and the snapshots/NAME form of the name).
    let snap = s.get_kind(ObjectKind::Snapshot, "xs3").unwrap().meta();
    use base64::Engine;
    let wrapped = base64::engine::general_purpose::STANDARD
        .decode(&snap.layers[0].wrapped_key)
        .unwrap();
    // The platform key, unsealed by the independent unsealer (from the format doc).
    let pem = dir.path().join("platform.pem");
    let st = Command::new("python3")
        .env("DISKVAULT_HOST_KEY", crate::testkit::unit_host_key())
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/unseal.py"))
        .arg(&root)
        .arg("platform")
        .arg(&pem)
        .status()
        .unwrap();
    assert!(st.success());
    let dek = openssl_oaep_unwrap(&pem, &wrapped, dir.path());
    assert_eq!(dek.len(), 64);
    let plain = decrypt(&root, &["snapshots/xs3"], &out, &[hex(&dek)]);
    assert!(plain == m[&(ObjectKind::Snapshot, "xs3".to_string())]);
    // A wrong DEK fails the key check (bound to keyCheckId, not the snapshot's id).
    let o = Command::new("python3")
        .env("DISKVAULT_HOST_KEY", crate::testkit::unit_host_key())
        .arg(SCRIPT)
        .arg(&root)
        .arg("snapshots/xs3")
        .arg(&out)
        .arg(hex(&[7u8; 64]))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("keyCheck mismatch"));
}

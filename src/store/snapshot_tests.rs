//! Store-level tests of snapshots, images and clones without a mount: a seeded model
//! test against an in-memory copy of every object, reopening the store on the way.

use super::*;
use crate::testkit::{pattern, Rng};
use std::collections::BTreeMap;

const SIZE: u64 = 64 * 4096 + 100;

/// A new, empty store in a temporary directory (kept while the guard lives).
fn new_store() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    (dir, root)
}

/// Opens the store. Other tests in this process spawn programs; a child between its
/// fork and exec briefly holds a copy of the lock's descriptor (flock follows it), so
/// a reopen right after a close may find the lock held for that moment.
fn open(root: &Path) -> Store {
    for _ in 0..200 {
        match Store::open(root, None) {
            Err(StoreError::Locked { .. }) => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            r => return r.unwrap(),
        }
    }
    Store::open(root, None).unwrap()
}

fn check(s: &Store, model: &BTreeMap<(ObjectKind, String), Vec<u8>>, ctx: &str) {
    for ((k, name), want) in model {
        let d = s
            .get_kind(*k, name)
            .unwrap_or_else(|| panic!("{ctx}: {k} {name} missing"));
        assert_eq!(d.size(), want.len() as u64, "{ctx}: size of {k} {name}");
        let got = d.read(0, want.len()).unwrap();
        if got != *want {
            let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{ctx}: {k} {name} differs at byte {at} (unit {})",
                at / 4096
            );
        }
    }
    let listed: Vec<_> = s.list().iter().map(|d| (d.kind, d.name())).collect();
    assert_eq!(listed.len(), model.len(), "{ctx}: objects {listed:?}");
}

#[test]
fn random_snapshots_clones_writes_and_deletes_match_a_model() {
    let seed: u64 = std::env::var("DISKVAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(7);
    for round in 0..3u64 {
        let mut rng = Rng(((seed + round) * 0x9e37_79b9_7f4a_7c15) | 1);
        let (_dir, root) = new_store();
        let mut s = open(&root);
        let mut model: BTreeMap<(ObjectKind, String), Vec<u8>> = BTreeMap::new();
        s.create_disk(
            "d0",
            &CreateOptions {
                size: SIZE,
                ..Default::default()
            },
        )
        .unwrap();
        model.insert((ObjectKind::Disk, "d0".into()), vec![0; SIZE as usize]);
        let mut n = 0;
        for step in 0..120 {
            let ctx = format!("seed {seed} round {round} step {step}");
            let disks: Vec<String> = model
                .keys()
                .filter(|(k, _)| *k == ObjectKind::Disk)
                .map(|(_, n)| n.clone())
                .collect();
            let ro: Vec<(ObjectKind, String)> = model
                .keys()
                .filter(|(k, _)| *k != ObjectKind::Disk)
                .cloned()
                .collect();
            n += 1;
            match rng.below(11) {
                0..=3 if !disks.is_empty() => {
                    let name = &disks[rng.below(disks.len() as u64) as usize];
                    let m = model.get_mut(&(ObjectKind::Disk, name.clone())).unwrap();
                    let len = m.len() as u64;
                    let off = rng.below(len);
                    let l = 1 + rng.below((len - off).min(3 * 4096 + 7));
                    let data = pattern(rng.next(), l as usize);
                    s.get(name).unwrap().write(off, &data).unwrap();
                    m[off as usize..(off + l) as usize].copy_from_slice(&data);
                }
                4 if !disks.is_empty() => {
                    let name = &disks[rng.below(disks.len() as u64) as usize];
                    let m = model.get_mut(&(ObjectKind::Disk, name.clone())).unwrap();
                    let len = m.len() as u64;
                    let off = rng.below(len);
                    let l = 1 + rng.below((len - off).min(20 * 4096));
                    s.get(name).unwrap().punch(off, l).unwrap();
                    m[off as usize..(off + l) as usize].fill(0);
                }
                5 if !disks.is_empty() => {
                    let src = disks[rng.below(disks.len() as u64) as usize].clone();
                    let kind = if rng.below(3) == 0 {
                        ObjectKind::Image
                    } else {
                        ObjectKind::Snapshot
                    };
                    let name = format!("c{n}");
                    s.create_copy(kind, &name, &src, &CopyOptions::default())
                        .unwrap();
                    let content = model[&(ObjectKind::Disk, src)].clone();
                    model.insert((kind, name), content);
                }
                6 if !ro.is_empty() => {
                    let (k, src) = ro[rng.below(ro.len() as u64) as usize].clone();
                    let name = format!("d{n}");
                    let mut content = model[&(k, src.clone())].clone();
                    let grow = rng.below(2) * rng.below(5 * 4096);
                    let size = content.len() as u64 + grow;
                    let opts = FromSourceOptions {
                        size,
                        ..Default::default()
                    };
                    s.create_disk_from(&name, &src, &opts, &|_, _| {}).unwrap();
                    content.resize(size as usize, 0);
                    model.insert((ObjectKind::Disk, name), content);
                }
                7 if model.len() > 1 => {
                    let keys: Vec<_> = model.keys().cloned().collect();
                    let (k, name) = keys[rng.below(keys.len() as u64) as usize].clone();
                    s.delete_object(k, &name).unwrap();
                    model.remove(&(k, name));
                }
                8 if !disks.is_empty() => {
                    // Shrink or grow.
                    let name = &disks[rng.below(disks.len() as u64) as usize];
                    let m = model.get_mut(&(ObjectKind::Disk, name.clone())).unwrap();
                    let new = (m.len() as u64 / 2 + rng.below(m.len() as u64 + 4096)).max(1);
                    s.get(name).unwrap().set_size(new).unwrap();
                    m.resize(new as usize, 0);
                }
                9 => {
                    drop(s);
                    s = open(&root);
                    check(&s, &model, &format!("{ctx} after reopen"));
                }
                10 => {
                    // Dead deltas fold into the ones above; nothing any object reads changes.
                    s.merge_all(u64::MAX);
                    check(&s, &model, &format!("{ctx} after merges"));
                }
                _ => {}
            }
            if step % 10 == 0 {
                check(&s, &model, &ctx);
            }
        }
        check(&s, &model, "end");
        // Deleting everything frees every delta.
        let keys: Vec<_> = model.keys().cloned().collect();
        for (k, name) in keys {
            s.delete_object(k, &name).unwrap();
        }
        drop(s);
        let s = open(&root);
        assert!(s.list().is_empty());
        let left: Vec<_> = fs::read_dir(root.join("deltas"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "deltas left: {left:?}");
    }
}

#[test]
fn a_snapshot_keeps_its_content_while_the_disk_changes_and_after_it_is_deleted() {
    let (_dir, root) = new_store();
    let s = open(&root);
    let d = s
        .create_disk(
            "d",
            &CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    d.open().unwrap();
    let a = pattern(1, 1 << 20);
    d.write(0, &a).unwrap();
    let snap = s
        .create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    assert!(snap
        .write(0, b"x")
        .is_err_and(|e| matches!(e, StoreError::ReadOnly { .. })));
    let b = pattern(2, 4096);
    d.write(8192, &b).unwrap();
    d.punch(0, 4096).unwrap();
    assert_eq!(snap.read(0, 1 << 20).unwrap(), a);
    let mut want = a.clone();
    want[8192..12288].copy_from_slice(&b);
    want[..4096].fill(0);
    assert_eq!(d.read(0, 1 << 20).unwrap(), want);
    // SEEK_HOLE on the disk finds the discarded unit; the snapshot has none.
    assert_eq!(d.seek(0, SeekKind::Hole).unwrap(), 0);
    assert_eq!(d.seek(0, SeekKind::Data).unwrap(), 4096);
    assert_eq!(snap.seek(0, SeekKind::Hole).unwrap(), 1 << 20);
    let diff = s.diff(&snap, &d).unwrap();
    assert_eq!(diff.page_ranges, vec![(8192, 12287)]);
    assert_eq!(diff.clear_ranges, vec![(0, 4095)]);
    d.release().unwrap();
    s.delete_disk("d").unwrap();
    assert_eq!(snap.read(0, 1 << 20).unwrap(), a);
}

#[test]
fn zeros_inside_a_reported_extent_of_an_upper_delta_do_not_hide_the_data_below() {
    use std::os::unix::fs::FileExt;
    let (_dir, root) = new_store();
    let s = open(&root);
    let d = s
        .create_disk(
            "d",
            &CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let a = pattern(1, 1 << 20);
    d.write(0, &a).unwrap();
    s.create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    let b = pattern(2, 4096);
    d.write(0, &b).unwrap();
    // A file system with blocks bigger than a unit reports unit 1 as data: zeros.
    let top = root.join("deltas").join(d.stack().last().unwrap());
    fs::OpenOptions::new()
        .write(true)
        .open(&top)
        .unwrap()
        .write_all_at(&[0u8; 4096], 4096)
        .unwrap();
    drop((d, s));
    let s = open(&root);
    let d = s.get("d").unwrap();
    let mut want = a.clone();
    want[..4096].copy_from_slice(&b);
    assert_eq!(d.read(0, 1 << 20).unwrap(), want);
    // Nor does a rekey, which first copies what the disk reads from below into its
    // own delta.
    s.rekey("d", &|_, _| {}).unwrap();
    assert_eq!(d.stack().len(), 1);
    assert_eq!(d.read(0, 1 << 20).unwrap(), want);
    assert_eq!(
        s.get_kind(ObjectKind::Snapshot, "s1")
            .unwrap()
            .read(0, 1 << 20)
            .unwrap(),
        a
    );
    // Space reclaim must not take unit 1 from below either.
    s.delete_object(ObjectKind::Snapshot, "s1").unwrap();
    assert_eq!(d.read(0, 1 << 20).unwrap(), want);
    drop((d, s));
    let s = open(&root);
    assert_eq!(s.get("d").unwrap().read(0, 1 << 20).unwrap(), want);
}

#[test]
fn rekey_of_a_disk_with_snapshots_leaves_their_keys_and_data_alone() {
    let (_dir, root) = new_store();
    let s = open(&root);
    let d = s
        .create_disk(
            "d",
            &CreateOptions {
                size: 2 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let a = pattern(3, 2 << 20);
    d.write(0, &a).unwrap();
    let snap = s
        .create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    let b = pattern(4, 8192);
    d.write(1 << 20, &b).unwrap();
    d.punch(0, 4096).unwrap();
    let clone = s
        .create_disk_from("c", "s1", &FromSourceOptions::default(), &|_, _| {})
        .unwrap();
    let (old_disk, old_snap) = (d.meta().layers, snap.meta().layers);
    s.rekey("d", &|_, _| {}).unwrap();
    let m = d.meta();
    assert_eq!(m.stack.len(), 1, "the disk has its own delta only");
    // The new DEKs are named apart from the family the snapshot keeps.
    let fresh = m.key_check_id.clone().expect("a fresh key id");
    assert_ne!(fresh, snap.meta().dek_id());
    assert!(s.key_family(&d).is_empty(), "the disk left the family");
    assert_ne!(m.layers[0].key_check, old_disk[0].key_check, "a fresh DEK");
    assert_eq!(snap.meta().layers, old_snap);
    let mut want = a.clone();
    want[1 << 20..(1 << 20) + 8192].copy_from_slice(&b);
    want[..4096].fill(0);
    assert_eq!(d.read(0, 2 << 20).unwrap(), want);
    assert_eq!(snap.read(0, 2 << 20).unwrap(), a);
    assert_eq!(clone.read(0, 2 << 20).unwrap(), a);
    drop((d, snap, clone, s));
    let s = open(&root);
    assert_eq!(s.get("d").unwrap().read(0, 2 << 20).unwrap(), want);
    assert_eq!(
        s.get_kind(ObjectKind::Snapshot, "s1")
            .unwrap()
            .read(0, 2 << 20)
            .unwrap(),
        a
    );
    assert_eq!(s.get("c").unwrap().read(0, 2 << 20).unwrap(), a);
}

/// A rekey of a disk that is open (a VM holds it) and has a snapshot copies the
/// shared data up and swaps the open handle's view without blocking on itself.
#[test]
fn rekey_of_an_open_disk_with_a_snapshot_finishes() {
    let (_dir, root) = new_store();
    let s = Arc::new(open(&root));
    let d = s
        .create_disk(
            "d",
            &CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    let a = pattern(5, 1 << 20);
    d.write(0, &a).unwrap();
    s.create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    d.open().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = s.clone();
    std::thread::spawn(move || {
        let _ = tx.send(s2.rekey("d", &|_, _| {}).map_err(|e| e.to_string()));
    });
    let r = rx
        .recv_timeout(std::time::Duration::from_secs(60))
        .expect("the rekey of an open disk with a snapshot hangs");
    r.unwrap();
    assert_eq!(d.meta().stack.len(), 1);
    // The open handle reads the same data through the new keys.
    assert_eq!(d.read(0, 1 << 20).unwrap(), a);
    d.release().unwrap();
}

//! Store-level tests of delta merge: a snapshot schedule run for hundreds of cycles
//! against a model, merges into a disk's writable top while it is written, and the
//! depth and space they keep.

use super::delta::{delta_path, DELTAS_DIR};
use super::*;
use crate::testkit::{pattern, Rng};
use std::collections::VecDeque;
use std::os::unix::fs::MetadataExt;

const UNITS: u64 = 256;
const SIZE: u64 = UNITS * 4096;

fn new_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    let s = Store::open(&root, None).unwrap();
    (dir, s)
}

/// Disk "d" of SIZE bytes, platform key.
fn new_disk(s: &Store) {
    s.create_disk(
        "d",
        &CreateOptions {
            size: SIZE,
            ..Default::default()
        },
    )
    .unwrap();
}

/// Bytes the store's deltas take on disk.
fn delta_space(s: &Store) -> u64 {
    fs::read_dir(s.root().join(DELTAS_DIR))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.metadata().unwrap().blocks() * 512)
        .sum()
}

/// Bytes of every delta that some object reads.
fn live_space(s: &Store) -> u64 {
    let stacks: Vec<(Arc<Disk>, Vec<String>)> = s
        .served()
        .into_iter()
        .map(|o| {
            let st = o.stack();
            (o, st)
        })
        .collect();
    let ids: std::collections::BTreeSet<String> =
        stacks.iter().flat_map(|(_, s)| s.iter().cloned()).collect();
    let mut live = 0;
    for id in ids {
        let users: Vec<&(Arc<Disk>, Vec<String>)> =
            stacks.iter().filter(|(_, s)| s.contains(&id)).collect();
        let f = fs::File::open(delta_path(s.root(), &id)).unwrap();
        live += s.live_units(&id, &f, &users).unwrap().1.count() * 4096;
    }
    live
}

/// Random writes of a few short runs, in the store and in the model.
fn scribble(s: &Store, rng: &mut Rng, model: &mut [u8], runs: u64) {
    let d = s.get("d").unwrap();
    for _ in 0..runs {
        let off = rng.below(SIZE - 1);
        let len = (1 + rng.below(3 * 4096 + 17)).min(SIZE - off);
        let data = pattern(rng.next(), len as usize);
        d.write(off, &data).unwrap();
        model[off as usize..(off + len) as usize].copy_from_slice(&data);
    }
}

/// A daily snapshot keeping 7, with writes between, for `DISKVAULT_CYCLES` cycles
/// (300 by default; the bench runs 2,000).
#[test]
fn a_snapshot_schedule_keeps_its_depth_space_and_content() {
    let cycles: u64 = std::env::var("DISKVAULT_CYCLES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(300);
    let (_dir, s) = new_store();
    new_disk(&s);
    let mut rng = Rng(0x5eed_0019);
    let mut model = vec![0u8; SIZE as usize];
    let mut kept: VecDeque<(String, Vec<u8>)> = VecDeque::new();
    for day in 0..cycles {
        let runs = 1 + rng.below(12);
        scribble(&s, &mut rng, &mut model, runs);
        let name = format!("daily-{day:05}");
        s.create_copy(ObjectKind::Snapshot, &name, "d", &CopyOptions::default())
            .unwrap();
        kept.push_back((name, model.clone()));
        if kept.len() > 7 {
            let (old, _) = kept.pop_front().unwrap();
            s.delete_object(ObjectKind::Snapshot, &old).unwrap();
        }
        s.merge_all(u64::MAX);
        let depth = s.get("d").unwrap().stack().len();
        assert!(depth <= 8, "day {day}: the disk's stack is {depth} deep");
        if day % 25 == 0 || day + 1 == cycles {
            let ctx = format!("day {day}");
            assert_eq!(
                s.get("d").unwrap().read(0, SIZE as usize).unwrap(),
                model,
                "{ctx}: disk"
            );
            for (n, want) in &kept {
                let got = s
                    .get_kind(ObjectKind::Snapshot, n)
                    .unwrap()
                    .read(0, SIZE as usize);
                assert!(got.unwrap() == *want, "{ctx}: snapshot {n} differs");
            }
            let (space, live) = (delta_space(&s), live_space(&s));
            assert!(
                space <= live + live / 10 + 64 * 1024,
                "{ctx}: deltas take {space} bytes for {live} bytes of live data"
            );
        }
    }
    assert!(s.merges_done() >= cycles - 8, "{} merges", s.merges_done());
}

/// Deleting the newest snapshot leaves its delta under the disk's writable top; it is
/// merged into the top while another thread writes the disk, and nothing is lost.
#[test]
fn a_merge_into_a_disk_top_keeps_concurrent_writes() {
    let (_dir, s) = new_store();
    let s = Arc::new(s);
    new_disk(&s);
    let mut rng = Rng(99);
    let mut model = vec![0u8; SIZE as usize];
    let d = s.get("d").unwrap();
    d.open().unwrap();
    scribble(&s, &mut rng, &mut model, 40);
    d.punch(10 * 4096, 8 * 4096).unwrap();
    model[10 * 4096..18 * 4096].fill(0);
    s.create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    scribble(&s, &mut rng, &mut model, 20);
    d.punch(30 * 4096, 4 * 4096).unwrap();
    model[30 * 4096..34 * 4096].fill(0);
    s.create_copy(ObjectKind::Snapshot, "s2", "d", &CopyOptions::default())
        .unwrap();
    s.delete_object(ObjectKind::Snapshot, "s1").unwrap();
    s.delete_object(ObjectKind::Snapshot, "s2").unwrap();
    assert_eq!(d.stack().len(), 3);
    // Writes of units the merge copies, while it copies them.
    let writer = {
        let s = s.clone();
        let mut model = model.clone();
        std::thread::spawn(move || {
            let mut rng = Rng(7);
            scribble(&s, &mut rng, &mut model, 200);
            model
        })
    };
    s.merge_all(u64::MAX);
    let model = writer.join().unwrap();
    s.merge_all(u64::MAX);
    assert_eq!(d.stack().len(), 1, "every dead delta merged into the top");
    assert_eq!(d.read(0, SIZE as usize).unwrap(), model);
    d.release().unwrap();
    // And after a reopen, from the files alone.
    let root = s.root().to_path_buf();
    drop(d);
    drop(Arc::try_unwrap(s).ok().unwrap());
    let s = Store::open(&root, None).unwrap();
    assert_eq!(s.get("d").unwrap().read(0, SIZE as usize).unwrap(), model);
}

/// A branch point (two deltas above one) is not merged until one side is gone.
#[test]
fn a_branch_point_is_not_merged_until_one_branch_is_gone() {
    let (_dir, s) = new_store();
    new_disk(&s);
    let mut rng = Rng(5);
    let mut model = vec![0u8; SIZE as usize];
    scribble(&s, &mut rng, &mut model, 30);
    s.create_copy(ObjectKind::Snapshot, "base", "d", &CopyOptions::default())
        .unwrap();
    let base = model.clone();
    s.create_disk_from("clone", "base", &FromSourceOptions::default(), &|_, _| {})
        .unwrap();
    s.delete_object(ObjectKind::Snapshot, "base").unwrap();
    assert_eq!(
        s.merge_all(u64::MAX),
        0,
        "the base delta has two deltas above it"
    );
    assert_eq!(
        s.get("clone").unwrap().read(0, SIZE as usize).unwrap(),
        base
    );
    s.delete_disk("clone").unwrap();
    assert!(s.merge_all(u64::MAX) >= 1);
    assert_eq!(s.get("d").unwrap().stack().len(), 1);
    assert_eq!(s.get("d").unwrap().read(0, SIZE as usize).unwrap(), model);
}

/// A full snapshot reads its source's content at once, gets a delta of its own on
/// the merge thread's next run, and keeps its content when the rest of its family is
/// deleted.
#[test]
fn a_full_snapshot_copies_its_data_and_outlives_its_family() {
    let (_dir, s) = new_store();
    new_disk(&s);
    let mut rng = Rng(31);
    let mut model = vec![0u8; SIZE as usize];
    scribble(&s, &mut rng, &mut model, 30);
    s.create_copy(ObjectKind::Snapshot, "inc", "d", &CopyOptions::default())
        .unwrap();
    scribble(&s, &mut rng, &mut model, 10);
    s.get("d").unwrap().punch(8 * 4096, 8 * 4096).unwrap();
    model[8 * 4096..16 * 4096].fill(0);
    let full = CopyOptions {
        full: true,
        ..Default::default()
    };
    s.create_copy(ObjectKind::Snapshot, "f", "d", &full)
        .unwrap();
    let at = model.clone();
    let f = s.get_kind(ObjectKind::Snapshot, "f").unwrap();
    assert_eq!(f.read(0, SIZE as usize).unwrap(), at, "readable at once");
    assert_eq!(s.completion_percent(&f), 0);
    scribble(&s, &mut rng, &mut model, 10);
    s.merge_all(u64::MAX);
    assert_eq!(f.stack(), vec![f.id.clone()], "a stack of its own");
    assert_eq!(s.completion_percent(&f), 100);
    assert_eq!(f.read(0, SIZE as usize).unwrap(), at, "after the copy");
    s.delete_object(ObjectKind::Snapshot, "inc").unwrap();
    s.delete_disk("d").unwrap();
    s.merge_all(u64::MAX);
    assert_eq!(
        f.read(0, SIZE as usize).unwrap(),
        at,
        "after its family is gone"
    );
    let left: Vec<String> = fs::read_dir(s.root().join(DELTAS_DIR))
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert_eq!(left, vec![f.id.clone()], "only its own delta is left");
    let root = s.root().to_path_buf();
    drop(f);
    drop(s);
    let s = Store::open(&root, None).unwrap();
    let f = s.get_kind(ObjectKind::Snapshot, "f").unwrap();
    assert_eq!(f.read(0, SIZE as usize).unwrap(), at, "after a reopen");
}

/// A merge into a disk's top reads that delta's whiteouts, not the disk's current
/// top's: a snapshot may freeze the delta mid-merge (a copy over its whiteout would
/// bring discarded data back into the snapshot).
#[test]
fn a_merge_step_sees_the_whiteouts_of_the_delta_it_copies_into() {
    let (_dir, s) = new_store();
    new_disk(&s);
    let d = s.get("d").unwrap();
    d.write(0, &pattern(1, 16 * 4096)).unwrap();
    s.create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    // A discard over s1's data: a whiteout in the disk's top.
    d.punch(4 * 4096, 4096).unwrap();
    let top = d.stack().last().unwrap().clone();
    // A snapshot freezes that top; the disk writes on in a new one.
    s.create_copy(ObjectKind::Snapshot, "s2", "d", &CopyOptions::default())
        .unwrap();
    assert_ne!(d.stack().last().unwrap(), &top);
    let seen = d
        .with_top_units(&top, 0, 16, |wh| Ok(wh.contains(4)))
        .unwrap();
    assert!(seen, "the frozen delta's whiteout was not seen");
    let want = s
        .get_kind(ObjectKind::Snapshot, "s2")
        .unwrap()
        .read(0, 16 * 4096)
        .unwrap();
    assert!(want[4 * 4096..5 * 4096].iter().all(|&b| b == 0));
    s.delete_object(ObjectKind::Snapshot, "s1").unwrap();
    s.merge_all(u64::MAX);
    let got = s
        .get_kind(ObjectKind::Snapshot, "s2")
        .unwrap()
        .read(0, 16 * 4096)
        .unwrap();
    assert_eq!(got, want, "s2 changed in the merge");
}

/// Writes and discards from another thread while snapshots are taken, deleted and
/// merged: every kept snapshot keeps exactly what the disk held when it was taken.
#[test]
fn snapshots_keep_their_content_under_concurrent_writes_discards_and_merges() {
    use std::sync::Mutex as StdMutex;
    let (_dir, s) = new_store();
    let s = Arc::new(s);
    new_disk(&s);
    let d = s.get("d").unwrap();
    d.open().unwrap();
    let model = Arc::new(StdMutex::new(vec![0u8; SIZE as usize]));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (d, model, stop) = (d.clone(), model.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(0xd15c);
            while !stop.load(Ordering::Acquire) {
                let units = [1u64, 3, 16][rng.below(3) as usize];
                let at = rng.below(UNITS - units);
                let mut m = model.lock().unwrap();
                let r = (at * 4096) as usize..((at + units) * 4096) as usize;
                if rng.below(5) == 0 {
                    d.punch(at * 4096, units * 4096).unwrap();
                    m[r].fill(0);
                } else {
                    let data = pattern(rng.next(), r.len());
                    d.write(at * 4096, &data).unwrap();
                    m[r].copy_from_slice(&data);
                }
            }
        })
    };
    let merger = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Acquire) {
                s.merge_all(u64::MAX);
            }
        })
    };
    let mut rng = Rng(0x5a9);
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for round in 0..60 {
        let name = format!("s{round}");
        {
            let m = model.lock().unwrap();
            s.create_copy(ObjectKind::Snapshot, &name, "d", &CopyOptions::default())
                .unwrap();
            kept.push((name, m.clone()));
        }
        if kept.len() > 3 && rng.below(10) < 7 {
            let (n, _) = kept.remove(rng.below(kept.len() as u64) as usize);
            s.delete_object(ObjectKind::Snapshot, &n).unwrap();
        }
        for (n, want) in &kept {
            let got = s
                .get_kind(ObjectKind::Snapshot, n)
                .unwrap()
                .read(0, SIZE as usize)
                .unwrap();
            assert!(got == *want, "round {round}: snapshot {n} changed");
        }
    }
    stop.store(true, Ordering::Release);
    writer.join().unwrap();
    merger.join().unwrap();
    s.merge_all(u64::MAX);
    for (n, want) in &kept {
        let got = s
            .get_kind(ObjectKind::Snapshot, n)
            .unwrap()
            .read(0, SIZE as usize)
            .unwrap();
        assert!(got == *want, "at the end: snapshot {n} changed");
    }
    assert_eq!(d.read(0, SIZE as usize).unwrap(), *model.lock().unwrap());
    d.release().unwrap();
}

/// A merge in a customer-key family waits while the key is disabled and runs after
/// the restore.
#[test]
fn a_revoked_family_pauses_its_merges_until_the_restore() {
    use crate::vault::{Caller, KeyOptions, KeyRef, KeyUpdate};
    let (_dir, s) = new_store();
    let me = Caller::current_user();
    s.vault().set_props(&me, Some(true), None).unwrap();
    s.vault()
        .create_key(&me, "k1", &KeyOptions::default())
        .unwrap();
    let kid = s.vault().resolve(&KeyRef::parse("k1").unwrap()).unwrap();
    let set = s
        .des_create("set1", &kid, None, false, &Default::default())
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
    s.create_disk(
        "d",
        &CreateOptions {
            size: SIZE,
            disk_encryption_set: Some("set1".into()),
            ..Default::default()
        },
    )
    .unwrap();
    let mut rng = Rng(77);
    let mut model = vec![0u8; SIZE as usize];
    scribble(&s, &mut rng, &mut model, 20);
    s.create_copy(ObjectKind::Snapshot, "s1", "d", &CopyOptions::default())
        .unwrap();
    scribble(&s, &mut rng, &mut model, 5);
    s.create_copy(ObjectKind::Snapshot, "s2", "d", &CopyOptions::default())
        .unwrap();
    s.delete_object(ObjectKind::Snapshot, "s1").unwrap();
    let set_enabled = |on: bool| {
        let u = KeyUpdate {
            enabled: Some(on),
            ..Default::default()
        };
        s.vault()
            .update_key(&me, &KeyRef::parse("k1").unwrap(), &u)
            .unwrap();
        s.reconcile();
    };
    set_enabled(false);
    assert!(s.get("d").unwrap().is_revoked());
    assert_eq!(s.merge_all(u64::MAX), 0, "merged while revoked");
    assert_eq!(s.get("d").unwrap().stack().len(), 3);
    set_enabled(true);
    assert!(!s.get("d").unwrap().is_revoked());
    assert_eq!(s.merge_all(u64::MAX), 1);
    assert_eq!(s.get("d").unwrap().stack().len(), 2);
    assert_eq!(s.get("d").unwrap().read(0, SIZE as usize).unwrap(), model);
}

//! Store-level tests without a mount: the rekey boundary in the data path, and
//! crash recovery of a rekey from its journal.

use super::*;
use crate::testkit::pattern;
use std::sync::atomic::AtomicBool;

fn store() -> (tempfile::TempDir, Store) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    let s = Store::open(&root, None).unwrap();
    (d, s)
}

fn opts(size: u64, cipher: CipherKind) -> CreateOptions {
    CreateOptions {
        size,
        cipher: Some(cipher),
        ..Default::default()
    }
}

/// Stops a rekey once its boundary reaches `at` units.
fn rekey_until(disk: &Disk, at: u64) {
    let stop = AtomicBool::new(false);
    let r = disk.run_rekey(
        &|done, _| {
            if done >= at {
                stop.store(true, Ordering::Release);
            }
        },
        &stop,
    );
    assert!(r.is_err(), "the rekey should have been stopped part way");
}

#[test]
fn io_across_the_rekey_boundary_sees_one_consistent_disk() {
    for cipher in [CipherKind::Aes256Xts, CipherKind::Aes256Ctr] {
        let (_d, s) = store();
        let disk = s.create_disk("d", &opts(3 << 20, cipher)).unwrap();
        disk.open().unwrap();
        let mut model = pattern(1, 3 << 20);
        disk.write(0, &model).unwrap();
        s.rekey_prepare("d").unwrap();
        rekey_until(&disk, 256);
        let b = disk.rekey_state().unwrap().0;
        assert!((256..768).contains(&b), "boundary {b}");
        // Writes and reads that straddle the boundary, unaligned.
        for (off, len, seed) in [
            (b * 4096 - 1000, 9000, 2u64),
            (b * 4096 - 4096, 4096, 3),
            (b * 4096 + 17, 5, 4),
            // Whole units on both sides: encrypted straight from the data.
            (b * 4096 - 8192, 16384, 5),
        ] {
            let data = pattern(seed, len);
            disk.write(off, &data).unwrap();
            model[off as usize..off as usize + len].copy_from_slice(&data);
            assert_eq!(
                disk.read(off - 3, len + 6).unwrap(),
                model[off as usize - 3..off as usize + len + 3]
            );
        }
        // Holes on both sides of the boundary: one read decrypts runs of ciphertext
        // that end at a hole or at the boundary.
        for off in [b * 4096 - 12288, b * 4096 + 8192] {
            disk.punch(off, 4096).unwrap();
            model[off as usize..off as usize + 4096].fill(0);
        }
        assert!(
            disk.read(0, 3 << 20).unwrap() == model,
            "{cipher}: mid-rekey"
        );
        // Finish, then check again, and again from a fresh open of the store.
        let stop = AtomicBool::new(false);
        disk.run_rekey(&|_, _| {}, &stop).unwrap();
        assert!(disk.rekey_state().is_none());
        assert!(
            disk.read(0, 3 << 20).unwrap() == model,
            "{cipher}: after rekey"
        );
        disk.release().unwrap();
        let root = s.root().to_path_buf();
        drop(disk);
        s.shutdown();
        drop(s);
        let s = Store::open(&root, None).unwrap();
        let disk = s.get("d").unwrap();
        assert!(
            disk.read(0, 3 << 20).unwrap() == model,
            "{cipher}: after reopen"
        );
    }
}

#[test]
fn an_interrupted_rekey_step_is_undone_from_the_journal() {
    let (_d, s) = store();
    let disk = s
        .create_disk("d", &opts(2 << 20, CipherKind::Aes256Xts))
        .unwrap();
    let model = pattern(9, 2 << 20);
    disk.write(0, &model).unwrap();
    disk.sync().unwrap();
    s.rekey_prepare("d").unwrap();
    rekey_until(&disk, 256);
    let b = disk.rekey_state().unwrap().0;
    // Simulate a crash after a step journaled the next chunk and wrote part of its
    // new ciphertext, but before the boundary moved: scribble over the chunk.
    let data = disk.dir().join(disk::DATA_FILE);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&data)
        .unwrap();
    use std::os::unix::fs::FileExt;
    let mut old = vec![0u8; 256 * 4096];
    f.read_exact_at(&mut old, b * 4096).unwrap();
    let mut rec = Vec::new();
    rec.extend_from_slice(&b.to_le_bytes());
    rec.extend_from_slice(&256u64.to_le_bytes());
    rec.extend_from_slice(&old);
    use sha2::Digest;
    let h = sha2::Sha256::digest(&rec);
    rec.extend_from_slice(&h);
    fs::write(disk.dir().join(disk::JOURNAL_FILE), &rec).unwrap();
    f.write_all_at(&pattern(77, 100 * 4096), b * 4096).unwrap();
    let root = s.root().to_path_buf();
    drop(disk);
    drop(s);
    let s = Store::open(&root, None).unwrap();
    let disk = s.get("d").unwrap();
    assert!(
        !disk.dir().join(disk::JOURNAL_FILE).exists(),
        "journal not consumed"
    );
    assert!(
        disk.read(0, 2 << 20).unwrap() == model,
        "the interrupted step was not undone"
    );
    s.rekey("d", &|_, _| {}).unwrap();
    assert!(disk.read(0, 2 << 20).unwrap() == model);
}

/// Reads and writes reuse one scratch buffer per thread: whatever a request leaves in
/// it must never show through in the next (a hole after data, a partial unit after a
/// big read, a short read after a long one).
#[test]
fn the_scratch_buffer_never_leaks_between_requests() {
    let (_d, s) = store();
    let disk = s
        .create_disk("d", &opts(4 << 20, CipherKind::Aes256Xts))
        .unwrap();
    disk.open().unwrap();
    let mut model = vec![0u8; 4 << 20];
    let data = pattern(7, 1 << 20);
    disk.write(0, &data).unwrap();
    model[..1 << 20].copy_from_slice(&data);
    // A long read fills the buffer with plaintext; the next reads cover holes.
    assert!(disk.read(0, 1 << 20).unwrap() == data);
    assert!(disk.read(2 << 20, 1 << 20).unwrap().iter().all(|&b| b == 0));
    assert_eq!(
        disk.read((1 << 20) - 100, 8192).unwrap(),
        model[(1 << 20) - 100..(1 << 20) + 8092]
    );
    // Partial units around a write into a hole read back as zeros, not stale bytes.
    for (off, len, seed) in [
        (3 << 20, 1 << 20, 8u64),
        ((2 << 20) + 4000, 300, 9),
        ((2 << 20) + 70000, 5000, 10),
    ] {
        assert!(disk.read(0, 1 << 20).unwrap() == data);
        let p = pattern(seed, len);
        disk.write(off, &p).unwrap();
        model[off as usize..off as usize + len].copy_from_slice(&p);
        assert!(
            disk.read(0, 4 << 20).unwrap() == model,
            "after write at {off}"
        );
    }
    // Short reads after a long one, at the end of the disk too.
    assert_eq!(disk.read(5, 3).unwrap(), model[5..8]);
    assert_eq!(
        disk.read((4 << 20) - 2, 100).unwrap(),
        model[(4 << 20) - 2..]
    );
    assert!(disk.read(4 << 20, 100).unwrap().is_empty());
    disk.release().unwrap();
}

//! Key custody, continued: sealing old stores in place (kill -9 at every step, a full
//! file system), the TPM2 seal through swtpm, and TCTIs from the header.

mod common;
use common::custody::*;
use common::*;

/// Stores made before sealing mount with one warning, and `vault seal` seals them in
/// place; a kill -9 at every step leaves a store that mounts and reads, and the next
/// `vault seal` finishes without a clear copy left.
#[test]
fn old_stores_are_sealed_in_place_surviving_kill_9() {
    for (fixture, keys) in [("store-v2", 3usize), ("store-v1", 4)] {
        let want = fixture_sums(fixture);
        let mut plans = vec!["seal.header=1".to_string()];
        for n in 1..=keys {
            plans.push(format!("seal.sealed={n}"));
            plans.push(format!("seal.shredded={n}"));
            plans.push(format!("seal.cleared={n}"));
        }
        for plan in plans {
            let dir = tempfile::tempdir().unwrap();
            let store = dir.path().join("st");
            let mnt = dir.path().join("mnt");
            std::fs::create_dir(&mnt).unwrap();
            copy_fixture(fixture, &store);
            let s = store.to_str().unwrap();
            assert!(
                !scan(None, &[&store], &[]).is_empty(),
                "the fixture has clear keys"
            );
            let o = dv(&["mount", "--no-create", s, mnt.to_str().unwrap()], &[]);
            let e = ok_err(&o);
            assert!(
                e.contains("keeps its private keys in clear") && e.contains("vault seal"),
                "{e}"
            );
            Mounted::adopt(&store, &mnt).umount();

            let o = dv(
                &["vault", "seal", "--store", s],
                &[("DISKVAULT_FAULT", &plan)],
            );
            use std::os::unix::process::ExitStatusExt;
            assert_eq!(
                o.status.signal(),
                Some(9),
                "{plan}: not killed: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            mounts_and_reads(
                &store,
                &mnt,
                &want,
                &format!("{fixture} after kill at {plan}"),
            );
            // It finishes what was left (or says there was nothing left, after the
            // last key's clear file went).
            let out = ok(dv(&["vault", "seal", "--store", s], &[]));
            assert!(
                out.contains("\"seal\": \"host\"")
                    || (plan == format!("seal.cleared={keys}") && out.contains("sealed already")),
                "{plan}: {out}"
            );
            let found = scan(Some(&store), &[&store], &[]);
            assert!(found.is_empty(), "{fixture} {plan}: {found:?}");
            mounts_and_reads(
                &store,
                &mnt,
                &want,
                &format!("{fixture} sealed after {plan}"),
            );
            let again = ok(dv(&["vault", "seal", "--store", s], &[]));
            assert!(again.contains("sealed already"), "{again}");
        }
    }
}

/// A TPM2 seal through swtpm: seal, reboot (a new swtpm on the same state), unseal.
/// With the TPM gone the mount refuses; another TPM can't unseal it.
#[test]
fn tpm2_seal_survives_a_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let mut tpm = Swtpm::start(&dir.path().join("tpm"));
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (s, mp) = (store.to_str().unwrap(), mnt.to_str().unwrap());
    let tcti = tpm.tcti();
    ok(dv(&["init", s, "--seal", "tpm2", "--tpm-tcti", &tcti], &[]));
    let h: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
    assert_eq!(h["keyProtection"]["seal"], "tpm2");
    assert_eq!(h["keyProtection"]["tpm2"]["tcti"], tcti.as_str());
    ok(dv(&["mount", s, mp], &[]));
    let mut m = Mounted::adopt(&store, &mnt);
    run_ok(&["disk", "create", "d1", "--size", "4M", "--store", s]);
    std::fs::write(m.disk("d1"), pattern(8, 4096)).unwrap();
    m.umount();

    tpm.reboot();
    ok(dv(&["mount", s, mp], &[]));
    let mut m = Mounted::adopt(&store, &mnt);
    assert_eq!(
        std::fs::read(m.disk("d1")).unwrap()[..4096],
        pattern(8, 4096)[..]
    );
    m.umount();

    tpm.stop();
    let e = err(dv(&["mount", s, mp], &[]));
    assert!(e.contains("TPM") && e.contains(&tcti), "{e}");
    // Another TPM (fresh state) has another seed: nothing unseals.
    let other = Swtpm::start(&dir.path().join("tpm-other"));
    let e = err(dv(&["mount", s, mp, "--tpm-tcti", &other.tcti()], &[]));
    assert!(e.contains("TPM"), "{e}");
    assert!(std::fs::read_dir(&mnt).unwrap().next().is_none());
    assert!(scan(None, &[&store], &[]).is_empty());
}

/// The header is the store owner's to edit: a TCTI in it that would run a program
/// (`cmd:`) or write to a file (`device:` off /dev/tpm*) is refused before any
/// tpm2-tools run, for a listing as for a mount.
#[test]
fn a_header_tcti_never_runs_a_program() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("st");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let s = store.to_str().unwrap();
    ok(dv(&["init", s], &[]));
    let marker = dir.path().join("PWNED");
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"keep me").unwrap();
    for tcti in [
        format!("cmd:touch {}", marker.display()),
        format!("device:{}", victim.display()),
    ] {
        let mut h: serde_json::Value =
            serde_json::from_slice(&std::fs::read(store.join("diskvault.json")).unwrap()).unwrap();
        h["keyProtection"]["seal"] = "tpm2".into();
        h["keyProtection"]["tpm2"] =
            serde_json::json!({"tcti": tcti, "public": "AA==", "private": "AA=="});
        std::fs::write(
            store.join("diskvault.json"),
            serde_json::to_vec(&h).unwrap(),
        )
        .unwrap();
        let _ = dv(&["disk", "list", "--store", s], &[]);
        let e = err(dv(&["mount", "--no-create", s, mnt.to_str().unwrap()], &[]));
        assert!(e.contains("is not taken"), "{e}");
        assert!(!marker.exists(), "{tcti} ran a program");
        assert_eq!(
            std::fs::read(&victim).unwrap(),
            b"keep me",
            "{tcti} wrote to a file"
        );
    }
}

/// `vault seal` on a full file system fails with one line and leaves a store that
/// mounts and reads; with room again it finishes. Some space is left free each time,
/// so the failure falls at different steps (the header, one key, another).
#[test]
fn seal_on_a_full_file_system() {
    let want = fixture_sums("store-v2");
    for spare_kib in [0usize, 4, 8, 12, 16] {
        let dir = tempfile::tempdir().unwrap();
        let fs = Tmpfs::new(&dir.path().join("fs"), "2M");
        let store = fs.0.join("st");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        copy_fixture("store-v2", &store);
        let s = store.to_str().unwrap();
        let spare = fs.0.join("spare");
        std::fs::write(&spare, vec![1u8; spare_kib * 1024]).unwrap();
        let filler = fs.fill();
        std::fs::remove_file(&spare).unwrap();
        let o = dv(&["vault", "seal", "--store", s], &[]);
        if !o.status.success() {
            let e = String::from_utf8_lossy(&o.stderr);
            assert!(e.contains("No space left"), "{spare_kib} KiB: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        std::fs::remove_file(&filler).unwrap();
        mounts_and_reads(
            &store,
            &mnt,
            &want,
            &format!("after ENOSPC with {spare_kib} KiB free"),
        );
        let out = ok(dv(&["vault", "seal", "--store", s], &[]));
        assert!(out.contains("host"), "{out}");
        assert!(scan(None, &[&store], &[]).is_empty(), "{spare_kib} KiB");
        mounts_and_reads(
            &store,
            &mnt,
            &want,
            &format!("sealed after ENOSPC with {spare_kib} KiB free"),
        );
    }
}

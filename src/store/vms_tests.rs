//! Tests of VM records and the disk rules that depend on them (`vms.rs`).

use super::*;

fn store() -> (tempfile::TempDir, PathBuf, Store) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("s");
    Store::init(&root, &InitOptions::default()).unwrap();
    let s = Store::open(&root, None).unwrap();
    for n in ["a", "b", "c"] {
        s.create_disk(
            n,
            &CreateOptions {
                size: 1 << 20,
                ..Default::default()
            },
        )
        .unwrap();
    }
    (d, root, s)
}

fn rec(name: &str, disks: &[&str]) -> VmRecord {
    VmRecord {
        name: name.into(),
        vm_id: format!("id-{name}"),
        size: "Standard_B1s".into(),
        vcpus: 1,
        memory_mb: 1024,
        kernel: None,
        initrd: None,
        append: None,
        os_disk: None,
        data_disks: disks
            .iter()
            .enumerate()
            .map(|(i, d)| VmDisk {
                name: d.to_string(),
                lun: Some(i as u32),
                create_option: "Attach".into(),
            })
            .collect(),
        power_state: PowerState::Deallocated,
        status_reason: None,
        pid: None,
        external: None,
        time_created: now_rfc3339(),
        placement: Default::default(),
        admin_username: None,
        scale_set: None,
    }
}

#[test]
fn luns_and_owners_follow_azures_rules() {
    let (_d, _root, s) = store();
    s.vm_create(&rec("v1", &["a"])).unwrap();
    // A disk belongs to one VM.
    let e = s.vm_create(&rec("v2", &["a"])).unwrap_err();
    assert!(e.to_string().contains("already attached to VM v1"), "{e}");
    assert!(s.vm_get("v2").is_err());
    s.vm_create(&rec("v2", &[])).unwrap();
    let e = s.vm_attach("v2", "a", None).unwrap_err();
    assert!(matches!(e, StoreError::VmConflict(_)), "{e}");
    // The lowest free LUN, a taken LUN refused, the range checked.
    assert_eq!(s.vm_attach("v1", "b", Some(5)).unwrap(), 5);
    assert_eq!(s.vm_attach("v1", "c", None).unwrap(), 1);
    s.vm_detach("v1", "c").unwrap();
    let e = s.vm_attach("v1", "c", Some(5)).unwrap_err();
    assert!(e.to_string().contains("LUN 5 already exists"), "{e}");
    let e = s.vm_attach("v1", "c", Some(MAX_DATA_DISKS)).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = s.vm_attach("v1", "nope", None).unwrap_err();
    assert!(matches!(e, StoreError::DiskNotFound(_)), "{e}");
    // Attached disks can't be deleted or renamed; detached ones can.
    let e = s.delete_disk("b").unwrap_err();
    assert!(e.to_string().contains("detach it first"), "{e}");
    let e = s.rename_disk("b", "b2", false).unwrap_err();
    assert!(matches!(e, StoreError::VmConflict(_)), "{e}");
    let e = s.rename_disk("c", "b", true).unwrap_err();
    assert!(matches!(e, StoreError::VmConflict(_)), "{e}");
    assert!(s.get("b").is_some() && s.get("c").is_some());
    assert_eq!(s.disk_state("b"), ("Reserved", Some(vm_resource_id("v1"))));
    s.vm_detach("v1", "b").unwrap();
    assert_eq!(s.disk_state("b"), ("Unattached", None));
    s.delete_disk("b").unwrap();
    let e = s.vm_detach("v1", "b").unwrap_err();
    assert!(e.to_string().contains("not attached"), "{e}");
}

#[test]
fn an_allocated_vm_pins_its_disks_encryption_and_sku() {
    let (_d, _root, s) = store();
    let mut r = rec("v1", &["a"]);
    r.power_state = PowerState::Stopped;
    s.vm_create(&r).unwrap();
    assert_eq!(s.disk_state("a").0, "Attached");
    let e = s.set_sku("a", Sku::StandardLrs).unwrap_err();
    assert!(e.to_string().contains("deallocate the VM"), "{e}");
    s.set_sku("a", Sku::PremiumLrs).unwrap(); // no change: allowed
    s.vm_update("v1", |r| {
        r.power_state = PowerState::Deallocated;
        Ok(())
    })
    .unwrap();
    s.set_sku("a", Sku::StandardLrs).unwrap();
}

#[test]
fn records_survive_reopen_and_a_running_vm_is_found_stopped() {
    let (_d, root, s) = store();
    let mut r = rec("v1", &["a", "c"]);
    r.power_state = PowerState::Running;
    r.pid = Some(u32::MAX - 1);
    s.vm_create(&r).unwrap();
    let mode = fs::metadata(root.join(VMS_DIR).join("v1.json"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    drop(s);
    let s = Store::open(&root, None).unwrap();
    let got = s.vm_get("v1").unwrap();
    assert_eq!(got.power_state, PowerState::Stopped);
    assert!(got.status_reason.unwrap().contains("daemon"));
    assert_eq!(got.pid, None);
    assert_eq!(got.data_disks, r.data_disks);
    // And so on disk, for the next open.
    drop(s);
    let s = Store::open(&root, None).unwrap();
    assert_eq!(s.vm_get("v1").unwrap().power_state, PowerState::Stopped);
    s.vm_remove("v1").unwrap();
    assert!(!root.join(VMS_DIR).join("v1.json").exists());
}

#[test]
fn vm_names_follow_azures_rule() {
    for ok in ["v", "vm-1", "a.b_c", &"x".repeat(64)] {
        validate_vm_name(ok).unwrap();
    }
    for bad in [
        "",
        "-a",
        "_a",
        ".a",
        "a.",
        "a-",
        "a/b",
        "a b",
        "é",
        "create",
        &"x".repeat(65),
    ] {
        assert!(validate_vm_name(bad).is_err(), "{bad:?}");
    }
}

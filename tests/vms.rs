//! VMs on QEMU, with real guests: a Linux kernel and a busybox initramfs under TCG,
//! whose job scripts write and check patterns on their virtio disks and report on
//! the serial console (tests/common/guest.rs). Each test mounts its own store; the
//! guard powers its VMs off and unmounts even when the test fails.

mod common;

use common::guest::{self, Guest, CMDLINE};
use common::{arm_short, cmk_setup, run, run_err, run_ok, Mounted};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

const BOOT: Duration = Duration::from_secs(60);

/// A mounted store whose daemon runs VMs under TCG (one test probes KVM itself).
fn lab() -> Mounted {
    lab_with(&[])
}

/// `lab` with more `mount` arguments.
fn lab_with(args: &[&str]) -> Mounted {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = Mounted::adopt(&store, &mnt);
    m.dir = dir;
    m.mount_with(args, &[("DISKVAULT_ACCEL", "tcg")]);
    m
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn show(m: &Mounted, vm: &str) -> Value {
    json(&run_ok(&["vm", "show", vm, "--store", m.s()]))
}

fn serial(m: &Mounted, vm: &str) -> PathBuf {
    m.store.join("vms").join(format!("{vm}.serial.log"))
}

/// A diskless direct-kernel VM running `job`, not started; its disks are attached
/// after (in LUN order, so the first is /dev/vda).
fn define(m: &Mounted, vm: &str, job: &str, disks: &[&str]) {
    let g = Guest::get();
    let initrd = g.initramfs(m.dir.path(), job);
    run_ok(&[
        "vm",
        "create",
        vm,
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        CMDLINE,
        "--size",
        "Standard_B1ls",
        "--no-start",
        "--store",
        m.s(),
    ]);
    for d in disks {
        run_ok(&[
            "vm",
            "disk",
            "attach",
            "--vm-name",
            vm,
            "--name",
            d,
            "--store",
            m.s(),
        ]);
    }
}

fn start(m: &Mounted, vm: &str) -> Value {
    // As az: a power command prints nothing unless an output format is asked for.
    let out = run_ok(&["vm", "start", vm, "--store", m.s()]);
    assert_eq!(out, "", "vm start printed");
    let v = show(m, vm);
    assert_eq!(v["powerState"], "VM running", "{v}");
    v
}

/// Waits for the VM's power state to become `state`.
fn wait_state(m: &Mounted, vm: &str, state: &str, limit: Duration) -> Value {
    let mut last = Value::Null;
    let ok = Mounted::wait_for(limit, || {
        last = show(m, vm);
        last["powerState"] == state
    });
    assert!(ok.is_some(), "{vm} never became {state}: {last}");
    last
}

fn wait_line(m: &Mounted, vm: &str, marker: &str) -> String {
    guest::wait_for_line(&serial(m, vm), marker, BOOT).unwrap_or_else(|e| panic!("{vm}: {e}"))
}

fn pid_alive(pid: i64) -> bool {
    // Safe because: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Job: the writer loop on /dev/vda (seed), which never ends by itself; on a later
/// boot (block 0 already written) it counts the intact sequence blocks instead.
fn writer_or_check_job(seed: u32) -> String {
    format!(
        "if dv_read_blocks /dev/vda 0 1 | grep -q 'DVSEQ {seed} 0'; then\n\
         n=0\n\
         while [ \"$(dv_read_blocks /dev/vda $n 1 | md5sum)\" = \"$(dv_pattern DVSEQ {seed} $n 1 | md5sum)\" ]; do n=$((n + 1)); done\n\
         echo \"DV-INTACT $n\"\n\
         else dv_writer /dev/vda {seed} 1000000; fi\n\
         while true; do sleep 1; done\n"
    )
}

fn acked(m: &Mounted, vm: &str) -> u64 {
    guest::last_acknowledged(&serial(m, vm)).unwrap_or_else(|| panic!("{vm} acknowledged no write"))
}

/// Waits until the writer has acknowledged block `n`.
fn wait_acked(m: &Mounted, vm: &str, n: u64) {
    wait_line(m, vm, &format!("DV-WROTE {n}"));
}

#[test]
fn guest_writes_reach_the_disk_encrypted_and_survive_poweroff() {
    let _one = guest::one_at_a_time();
    // This one mounts without DISKVAULT_ACCEL: the daemon probes KVM itself.
    let mut m = Mounted::new();
    m.create("gw", "16M");
    let job = guest::write_pattern_sh("/dev/vda", 11, 1024);
    define(&m, "gw", &job, &["gw"]);
    let v = start(&m, "gw");
    let accel = v["diskvault"]["accel"].as_str().unwrap().to_string();
    assert!(accel == "kvm" || accel == "tcg", "{v}");
    let log = std::fs::read_to_string(m.store.join("daemon.log")).unwrap();
    assert!(
        log.contains(&format!("VMs run under {}", accel.to_uppercase())),
        "the daemon log does not say why it chose {accel}: {log}"
    );
    wait_line(&m, "gw", "DV-OK");
    let v = wait_state(&m, "gw", "VM stopped", BOOT);
    assert_eq!(
        v["diskvault"]["statusReason"], "Stopped: the guest shut down",
        "{v}"
    );
    assert!(v["diskvault"]["pid"].is_null(), "{v}");
    // The guest's data, through the mount...
    guest::verify_pattern(&m.disk("gw"), 11, 1024).unwrap();
    // ...and decrypted from the backing store by the independent decryptor.
    m.umount();
    let out = m.dir.path().join("gw.plain");
    let st = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/independent_decrypt.py"
        ))
        .arg(&m.store)
        .arg("gw")
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "independent decryptor failed");
    guest::verify_pattern(&out, 11, 1024).unwrap();
    // No plaintext pattern in the backing store.
    let stamp = String::from_utf8(guest::pattern_block(11, 7)[..40].to_vec()).unwrap();
    assert!(!common::contains(
        &common::all_bytes(&m.store),
        stamp.as_bytes()
    ));
}

#[test]
fn premium_vm_stops_on_revocation_others_run_on_and_it_starts_after_restore() {
    let _one = guest::one_at_a_time();
    let m = lab();
    let s = m.s();
    cmk_setup(&m, &[("ca", "16M", "Premium_LRS")]);
    m.create("pb", "16M");
    define(&m, "va", &writer_or_check_job(21), &["ca"]);
    define(&m, "vb", &writer_or_check_job(22), &["pb"]);
    let pid_a = start(&m, "va")["diskvault"]["pid"].as_i64().unwrap();
    start(&m, "vb");
    wait_acked(&m, "va", 5);
    wait_acked(&m, "vb", 5);
    assert_eq!(
        json(&run_ok(&["disk", "show", "ca", "--store", s]))["diskState"],
        "Attached"
    );

    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", s]);
    // The key change normally returns once the VM is stopped (scripts/bench-vm
    // times it); here only that it stops.
    let v = wait_state(&m, "va", "VM stopped", Duration::from_secs(10));
    let why = v["diskvault"]["statusReason"].as_str().unwrap();
    assert!(why.contains("disk 'ca'") && why.contains("k1"), "{why}");
    assert!(!pid_alive(pid_a), "QEMU {pid_a} still runs");
    let audit = std::fs::read_to_string(m.store.join("vault/audit.log")).unwrap();
    assert!(
        audit.contains("VirtualMachineStopped") && audit.contains("virtualMachines/va"),
        "no audit record of the stop"
    );

    // The other VM, the daemon and the mount go on.
    let b = acked(&m, "vb");
    wait_acked(&m, "vb", b + 3);
    assert_eq!(show(&m, "vb")["powerState"], "VM running");

    // Refused while revoked, with the disk, the key and the fix.
    let err = run_err(&["vm", "start", "va", "--store", s]);
    assert!(
        err.contains("disk 'ca'") && err.contains("k1") && err.contains("--enabled true"),
        "{err}"
    );
    let out = run(&["vm", "start", "va", "--store", s]);
    assert!(!out.status.success());
    assert_eq!(show(&m, "va")["powerState"], "VM stopped");

    // Restore: what the guest acknowledged is on the disk, and nothing later than
    // the one write that may have been in flight at the revocation.
    run_ok(&["key", "set", "k1", "--enabled", "true", "--store", s]);
    let last = acked(&m, "va");
    let high = guest::highest_sequence(&m.disk("ca"), 21)
        .unwrap()
        .expect("the guest's writes are on the disk");
    assert!(
        high >= last && high <= last + 1,
        "on disk up to block {high}, the guest acknowledged up to {last}"
    );
    start(&m, "va");
    let line = wait_line(&m, "va", "DV-INTACT");
    let intact: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert_eq!(intact, high + 1, "the restarted guest found {line}");
}

#[test]
fn ultra_vm_runs_on_after_revocation_and_cannot_start_after_deallocate() {
    let _one = guest::one_at_a_time();
    let m = lab();
    let s = m.s();
    cmk_setup(&m, &[("cu", "16M", "UltraSSD_LRS")]);
    define(&m, "vu", &writer_or_check_job(23), &["cu"]);
    let pid = start(&m, "vu")["diskvault"]["pid"].as_i64().unwrap();
    wait_acked(&m, "vu", 3);
    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", s]);
    let disk = json(&run_ok(&["disk", "show", "cu", "--store", s]));
    assert!(
        disk["keyState"].as_str().unwrap().starts_with("Revoked")
            && disk["keyState"]
                .as_str()
                .unwrap()
                .contains("open handles keep working"),
        "{disk}"
    );
    // Still running, and still writing through its open handle.
    let a = acked(&m, "vu");
    wait_acked(&m, "vu", a + 3);
    let v = show(&m, "vu");
    assert_eq!(v["powerState"], "VM running", "{v}");
    assert!(pid_alive(pid));

    let v = json(&run_ok(&[
        "vm",
        "deallocate",
        "vu",
        "-o",
        "json",
        "--store",
        s,
    ]));
    assert_eq!(v["powerState"], "VM deallocated", "{v}");
    assert!(!pid_alive(pid));
    let disk = json(&run_ok(&["disk", "show", "cu", "--store", s]));
    assert_eq!(disk["diskState"], "Reserved");
    // Its handles are gone with the VM: the state no longer says they work.
    let st = disk["keyState"].as_str().unwrap();
    assert!(
        st.starts_with("Revoked") && !st.contains("keep working") && st.contains("closed"),
        "{st}"
    );
    let err = run_err(&["vm", "start", "vu", "--store", s]);
    assert!(
        err.contains("disk 'cu'") && err.contains("Revoked"),
        "{err}"
    );
    assert_eq!(show(&m, "vu")["powerState"], "VM deallocated");

    run_ok(&["key", "set", "k1", "--enabled", "true", "--store", s]);
    let last = acked(&m, "vu");
    start(&m, "vu");
    let line = wait_line(&m, "vu", "DV-INTACT");
    let intact: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(intact > last, "acknowledged up to {last}, intact {line}");
}

#[test]
fn disks_hot_plug_and_unplug_in_a_running_guest() {
    let _one = guest::one_at_a_time();
    let m = lab();
    let s = m.s();
    m.create("hp", "16M");
    m.create("hp2", "16M");
    let job = format!(
        "{}\n\
         i=0\n\
         while [ -e \"/sys/block/$new\" ] && [ $i -lt 1200 ]; do sleep 0.05; i=$((i + 1)); done\n\
         if [ -e \"/sys/block/$new\" ]; then echo 'DV-FAIL still plugged'; else echo DV-UNPLUGGED; fi\n",
        guest::hotplug_job(31, 256, 60)
    );
    define(&m, "hv", &job, &[]);
    start(&m, "hv");
    wait_line(&m, "hv", "DV-READY");
    let v = json(&run_ok(&[
        "vm",
        "disk",
        "attach",
        "--vm-name",
        "hv",
        "--name",
        "hp",
        "--store",
        s,
    ]));
    assert_eq!(v["storageProfile"]["dataDisks"][0]["lun"], 0, "{v}");
    assert_eq!(v["storageProfile"]["dataDisks"][0]["name"], "hp", "{v}");
    wait_line(&m, "hv", "DV-HOTPLUG");
    wait_line(&m, "hv", "DV-OK");
    // A taken LUN, and a disk that is already attached, are refused.
    let err = run_err(&[
        "vm",
        "disk",
        "attach",
        "--vm-name",
        "hv",
        "--name",
        "hp2",
        "--lun",
        "0",
        "--store",
        s,
    ]);
    assert!(err.contains("LUN 0"), "{err}");
    let err = run_err(&[
        "vm",
        "disk",
        "attach",
        "--vm-name",
        "hv",
        "--name",
        "hp",
        "--store",
        s,
    ]);
    assert!(err.contains("already attached"), "{err}");

    let v = json(&run_ok(&[
        "vm",
        "disk",
        "detach",
        "--vm-name",
        "hv",
        "--name",
        "hp",
        "--store",
        s,
    ]));
    assert_eq!(
        v["storageProfile"]["dataDisks"],
        serde_json::json!([]),
        "{v}"
    );
    wait_line(&m, "hv", "DV-UNPLUGGED");
    assert_eq!(
        json(&run_ok(&["disk", "show", "hp", "--store", s]))["diskState"],
        "Unattached"
    );
    wait_state(&m, "hv", "VM stopped", BOOT);
    guest::verify_pattern(&m.disk("hp"), 31, 256).unwrap();
    // Deleting the VM takes its console (guest output) with it; the disks stay.
    assert!(serial(&m, "hv").exists());
    run_ok(&["vm", "delete", "hv", "--store", s]);
    assert!(!serial(&m, "hv").exists());
    assert!(m.disk("hp").exists());
}

#[test]
fn an_attached_disk_keeps_its_key_until_the_vm_is_deallocated() {
    let _one = guest::one_at_a_time();
    let m = lab();
    let s = m.s();
    cmk_setup(&m, &[]);
    m.create("rd", "16M");
    define(&m, "vr", "true", &["rd"]);
    start(&m, "vr");
    // The guest powers off at once: stopped, still allocated.
    wait_state(&m, "vr", "VM stopped", BOOT);
    let cmk = [
        "disk",
        "update",
        "rd",
        "--encryption-type",
        "EncryptionAtRestWithCustomerKey",
        "--disk-encryption-set",
        "set1",
        "--store",
        s,
    ];
    let err = run_err(&cmk);
    assert!(err.contains("deallocate") && err.contains("'vr'"), "{err}");
    let d = json(&run_ok(&["disk", "show", "rd", "--store", s]));
    assert_eq!(d["encryption"]["type"], "EncryptionAtRestWithPlatformKey");
    assert_eq!(d["diskState"], "Attached");
    assert_eq!(arm_short(&d["managedBy"]), "/diskvault/virtualMachines/vr");
    // The same refusal through the control file, with its errno.
    let e = std::fs::write(
        m.mnt.join(".vault/disks/rd/encryption"),
        "EncryptionAtRestWithCustomerKey set1",
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let err = run_err(&["disk", "delete", "rd", "--store", s]);
    assert!(err.contains("detach"), "{err}");
    let e = std::fs::remove_file(m.disk("rd")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    let e = std::fs::rename(m.disk("rd"), m.disk("rd2")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    // Nor does its size change under the (allocated) VM.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(m.disk("rd"))
        .unwrap();
    let e = f.set_len(1 << 20).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EBUSY));
    assert_eq!(std::fs::metadata(m.disk("rd")).unwrap().len(), 16 << 20);
    drop(f);

    run_ok(&["vm", "deallocate", "vr", "--store", s]);
    let d = json(&run_ok(&["disk", "show", "rd", "--store", s]));
    assert_eq!(d["diskState"], "Reserved");
    std::fs::OpenOptions::new()
        .write(true)
        .open(m.disk("rd"))
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    run_ok(&cmk);
    let d = json(&run_ok(&["disk", "show", "rd", "--store", s]));
    assert_eq!(d["encryption"]["type"], "EncryptionAtRestWithCustomerKey");
    // Still attached: deleting waits for the detach.
    run_err(&["disk", "delete", "rd", "--store", s]);
    run_ok(&[
        "vm",
        "disk",
        "detach",
        "--vm-name",
        "vr",
        "--name",
        "rd",
        "--store",
        s,
    ]);
    run_ok(&["disk", "delete", "rd", "--store", s]);
}

#[test]
fn a_vm_from_an_image_with_customer_key_disks() {
    let _one = guest::one_at_a_time();
    let m = lab();
    let s = m.s();
    cmk_setup(&m, &[]);
    m.create("src", "32M");
    guest::write_pattern(&m.disk("src"), 41, 512).unwrap();
    run_ok(&["image", "create", "img1", "--source", "src", "--store", s]);
    let g = Guest::get();
    let job = format!(
        "{}\n{}",
        guest::verify_pattern_sh("/dev/vda", 41, 512),
        guest::write_pattern_sh("/dev/vdb", 42, 256)
    );
    let initrd = g.initramfs(m.dir.path(), &job);
    let v = json(&run_ok(&[
        "vm",
        "create",
        "vi",
        "--image",
        "img1",
        "--os-disk-encryption-set",
        "set1",
        "--data-disk-sizes-gb",
        "1",
        "--data-disk-encryption-sets",
        "set1",
        "--kernel",
        g.kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
        "--append",
        CMDLINE,
        "--size",
        "Standard_B1ls",
        "--store",
        s,
    ]));
    assert_eq!(v["powerState"], "VM running", "{v}");
    let sp = &v["storageProfile"];
    assert_eq!(sp["osDisk"]["name"], "vi_OsDisk");
    assert_eq!(sp["osDisk"]["createOption"], "FromImage");
    assert_eq!(sp["dataDisks"][0]["name"], "vi_DataDisk_0");
    for d in [&sp["osDisk"], &sp["dataDisks"][0]] {
        assert_eq!(d["encryption"], "EncryptionAtRestWithCustomerKey", "{d}");
        assert!(
            d["managedDisk"]["diskEncryptionSet"]["id"]
                .as_str()
                .unwrap()
                .ends_with("/set1"),
            "{d}"
        );
    }
    // Both checks ran in the guest: the image's data on vda, new data on vdb.
    wait_line(&m, "vi", "DV-JOB-EXIT");
    wait_state(&m, "vi", "VM stopped", BOOT);
    let console = std::fs::read_to_string(serial(&m, "vi")).unwrap();
    assert_eq!(console.matches("DV-OK").count(), 2, "{console}");
    guest::verify_pattern(&m.disk("vi_DataDisk_0"), 42, 256).unwrap();

    // Bad input: mismatched lists, an unknown size, a taken name; nothing is made.
    let before = run_ok(&["disk", "list", "-o", "tsv", "--store", s]);
    for (args, want) in [
        (
            vec![
                "--data-disk-sizes-gb",
                "1",
                "1",
                "--data-disk-encryption-sets",
                "set1",
            ],
            "mismatches",
        ),
        (vec!["--size", "Standard_Huge"], "unknown VM size"),
        (vec!["--data-disk-sizes-gb", "99999"], "out of range"),
    ] {
        let mut a = vec![
            "vm",
            "create",
            "bad",
            "--image",
            "img1",
            "--no-start",
            "--store",
            s,
        ];
        a.extend(args);
        let err = run_err(&a);
        assert!(err.contains(want), "{err}");
    }
    let err = run_err(&[
        "vm",
        "create",
        "vi",
        "--image",
        "img1",
        "--no-start",
        "--store",
        s,
    ]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(run_ok(&["disk", "list", "-o", "tsv", "--store", s]), before);
}

#[test]
fn a_killed_daemon_takes_its_guests_down_and_the_next_mount_says_so() {
    let _one = guest::one_at_a_time();
    let mut m = lab();
    m.create("kd", "16M");
    define(&m, "vk", &writer_or_check_job(51), &["kd"]);
    let pid = start(&m, "vk")["diskvault"]["pid"].as_i64().unwrap();
    wait_acked(&m, "vk", 2);
    // Safe because: kill takes plain integers.
    unsafe { libc::kill(m.daemon_pid(), libc::SIGKILL) };
    m.reap_dead_daemon();
    assert!(
        Mounted::wait_for(Duration::from_secs(10), || !pid_alive(pid)).is_some(),
        "QEMU {pid} outlived its daemon"
    );
    m.mount_with(&[], &[("DISKVAULT_ACCEL", "tcg")]);
    let v = show(&m, "vk");
    assert_eq!(v["powerState"], "VM stopped", "{v}");
    let why = v["diskvault"]["statusReason"].as_str().unwrap();
    assert!(why.contains("daemon"), "{why}");
    // Everything it acknowledged is there, and it starts again.
    let last = acked(&m, "vk");
    let high = guest::highest_sequence(&m.disk("kd"), 51).unwrap().unwrap();
    assert!(high >= last, "acknowledged {last}, on disk {high}");
    start(&m, "vk");
    wait_line(&m, "vk", "DV-INTACT");
}

#[test]
fn a_registered_qemu_is_stopped_on_revocation() {
    let _one = guest::one_at_a_time();
    let m = lab();
    let s = m.s();
    cmk_setup(&m, &[("rg", "16M", "Premium_LRS")]);
    m.create("other", "16M");
    let g = Guest::get();
    let initrd = g.initramfs(m.dir.path(), &writer_or_check_job(61));
    let log = m.dir.path().join("ext.log");
    let qmp = m.dir.path().join("ext.qmp");
    let args = g.qemu_args(
        &initrd,
        &log,
        &[guest::Drive::new(m.disk("rg"))],
        Some(&qmp),
    );
    let mut q = guest::Qemu::spawn(&args, &log);
    q.wait_for_line("DV-WROTE 2", BOOT).unwrap();
    let qs = qmp.to_str().unwrap();
    // It must name disks the QEMU uses.
    let err = run_err(&[
        "vm", "register", "ext", "--qmp", qs, "--disk", "other", "--store", s,
    ]);
    assert!(err.contains("no drive"), "{err}");
    let v = json(&run_ok(&[
        "vm", "register", "ext", "--qmp", qs, "--disk", "rg", "--store", s,
    ]));
    assert_eq!(v["powerState"], "VM running", "{v}");
    assert_eq!(v["diskvault"]["pid"].as_u64(), Some(q.pid() as u64), "{v}");

    run_ok(&["key", "set", "k1", "--enabled", "false", "--store", s]);
    let st = q.wait_exit(Duration::from_secs(10)).unwrap();
    let v = wait_state(&m, "ext", "VM stopped", Duration::from_secs(10));
    assert_eq!(v["powerState"], "VM stopped", "{v}: QEMU {st}");
    assert!(v["diskvault"]["statusReason"]
        .as_str()
        .unwrap()
        .contains("disk 'rg'"));
    // diskvault never starts a QEMU it did not start.
    run_ok(&["key", "set", "k1", "--enabled", "true", "--store", s]);
    let err = run_err(&["vm", "start", "ext", "--store", s]);
    assert!(err.contains("register"), "{err}");
}

/// Sizes and names at their limits, through the control file as well as the CLI.
#[test]
fn vm_input_is_checked() {
    let m = lab();
    let s = m.s();
    let long = "v".repeat(65);
    for (name, want) in [
        (long.as_str(), "1 to 64"),
        ("_x", "start with"),
        ("create", "control file"),
    ] {
        let err = run_err(&[
            "vm",
            "create",
            name,
            "--kernel",
            "/boot",
            "--no-start",
            "--store",
            s,
        ]);
        assert!(err.contains(want), "{name}: {err}");
    }
    let err = run_err(&["vm", "create", "v1", "--no-start", "--store", s]);
    assert!(err.contains("--image"), "{err}");
    let err = run_err(&[
        "vm",
        "create",
        "v1",
        "--kernel",
        "/nonexistent",
        "--no-start",
        "--store",
        s,
    ]);
    assert!(err.contains("/nonexistent"), "{err}");
    let err = run_err(&[
        "vm",
        "create",
        "v1",
        "--kernel",
        "/boot",
        "--no-start",
        "--store",
        s,
    ]);
    assert!(err.contains("not a file"), "{err}");
    // A FIFO is refused without being opened (an open would block the daemon).
    let fifo = m.dir.path().join("fifo");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // Safe because: `c` is a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let err = run_err(&[
        "vm",
        "create",
        "v1",
        "--kernel",
        fifo.to_str().unwrap(),
        "--no-start",
        "--store",
        s,
    ]);
    assert!(err.contains("not a file"), "{err}");
    let err = run_err(&["vm", "start", "nope", "--store", s]);
    assert!(err.contains("no VM named 'nope'"), "{err}");
    let ctl = m.mnt.join(".vault/vms");
    let e = std::fs::write(
        ctl.join("create"),
        "v2 data-disk-sizes-gb=lots kernel=/boot/x",
    )
    .unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EINVAL));
    let last = std::fs::read_to_string(m.mnt.join(".vault/last-error")).unwrap();
    assert!(last.contains("lots"), "{last}");
    assert_eq!(
        std::fs::read_dir(&ctl)
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.path().is_dir())
            .count(),
        0
    );
}

/// While a revocation waits out `--revocation-delay`, a running VM runs on, but a
/// stopped one does not start: its disk can't be opened any more.
#[test]
fn a_pending_revocation_already_refuses_a_start() {
    let m = lab_with(&["--revocation-delay", "1h"]);
    let s = m.s();
    cmk_setup(&m, &[("pd", "16M", "Premium_LRS")]);
    define(&m, "vp", "true", &["pd"]);
    run_ok(&["key", "revoke-grant", "k1", "--des", "set1", "--store", s]);
    let d = json(&run_ok(&["disk", "show", "pd", "--store", s]));
    assert!(
        d["keyState"]
            .as_str()
            .unwrap()
            .contains("revocation pending"),
        "{d}"
    );
    let out = run(&["vm", "start", "vp", "--store", s]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("disk 'pd'") && err.contains("key grant k1 --des set1"),
        "{err}"
    );
    assert_eq!(show(&m, "vp")["powerState"], "VM deallocated");
}

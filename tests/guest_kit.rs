//! The guest kit (tests/common/guest.rs) on its own, without diskvault: a guest boots
//! on plain raw files, writes and verifies block patterns, runs the sequenced writer
//! loop under a hard power-off, and sees a hot-plugged disk.

#[path = "common/guest.rs"]
mod guest;

use guest::{Drive, Guest, Qemu, Qmp};
use std::path::Path;
use std::time::{Duration, Instant};

const BOOT: Duration = Duration::from_secs(60);

fn raw_file(path: &Path, size: u64) {
    std::fs::File::create(path)
        .and_then(|f| f.set_len(size))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
}

#[test]
fn patterns_on_the_host_side() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("img");
    raw_file(&f, 64 * 4096);
    let b = guest::pattern_block(7, 3);
    assert_eq!(b.len(), guest::BLOCK);
    assert!(b.starts_with(b"DVBLK 7 3\nDVBLK 7 3\n"));
    guest::write_pattern(&f, 7, 16).unwrap();
    guest::verify_pattern(&f, 7, 16).unwrap();
    guest::verify_pattern_at(&f, 7, 5, 11).unwrap();
    let e = guest::verify_pattern(&f, 8, 16).unwrap_err();
    assert!(e.contains("block 0 is not pattern seed 8"), "{e}");
    let e = guest::verify_pattern(&f, 7, 17).unwrap_err();
    assert!(e.contains("block 16") && e.contains("zeros"), "{e}");
    let e = guest::verify_pattern_at(&f, 7, 64, 1).unwrap_err();
    assert!(e.contains("ends inside block 64"), "{e}");

    let s = dir.path().join("seq");
    raw_file(&s, 32 * 4096);
    assert_eq!(guest::highest_sequence(&s, 9).unwrap(), None);
    use std::os::unix::fs::FileExt;
    let w = std::fs::OpenOptions::new().write(true).open(&s).unwrap();
    for n in 0..5 {
        w.write_all_at(&guest::sequence_block(9, n), n * 4096)
            .unwrap();
    }
    assert_eq!(guest::highest_sequence(&s, 9).unwrap(), Some(4));
    assert_eq!(guest::highest_sequence(&s, 10).unwrap(), None);
    w.write_all_at(&guest::sequence_block(9, 7), 7 * 4096)
        .unwrap();
    let e = guest::highest_sequence(&s, 9).unwrap_err();
    assert!(e.contains("block 7") && e.contains("block 5"), "{e}");
}

/// Boots on two raw files: the job writes the pattern to vda and verifies the one the
/// host wrote to vdb; the guest powers off and QEMU exits by itself.
#[test]
fn guest_writes_and_verifies_patterns_and_powers_off() {
    let g = Guest::get();
    let _one = guest::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    raw_file(&a, 16 << 20);
    raw_file(&b, 16 << 20);
    guest::write_pattern(&b, 99, 64).unwrap();
    let job = format!(
        "echo \"DV-READY $(dv_uptime) $(dv_disks)\"\n{}\n{}\n",
        guest::write_pattern_sh("/dev/vda", 4242, 256).replace("DV-OK", "DV-WROTE-A"),
        guest::verify_pattern_sh("/dev/vdb", 99, 64),
    );
    let initrd = g.initramfs(dir.path(), &job);
    let log = dir.path().join("serial.log");
    // /tmp is ext4 here; a tmpfs without O_DIRECT would need cache=writeback.
    let drives = [Drive::best(&a), Drive::best(&b)];
    eprintln!(
        "guest kit: kernel {} (booting {}), drives cache={}",
        g.vmlinuz.display(),
        g.kernel.display(),
        drives[0].cache
    );
    let args = g.qemu_args(&initrd, &log, &drives, None);
    let mut q = Qemu::spawn(&args, &log);
    let t0 = Instant::now();
    let ready = q.wait_for_line("DV-READY", BOOT).unwrap();
    let boot = t0.elapsed();
    assert!(ready.ends_with("vda vdb"), "{ready}");
    let wrote = Instant::now();
    q.wait_for_line("DV-WROTE-A", BOOT).unwrap();
    let wrote = wrote.elapsed();
    q.wait_for_line("DV-OK", BOOT).unwrap();
    let status = q.wait_exit(BOOT).unwrap();
    let total = t0.elapsed();
    assert!(status.success(), "QEMU: {status}\n{}", q.diagnostics());
    eprintln!(
        "guest kit: boot to job {:.2} s (guest uptime at job start {:?} s), \
         write+verify 1 MiB {:.2} s, spawn to QEMU exit {:.2} s",
        boot.as_secs_f64(),
        guest::boot_uptime(&log),
        wrote.as_secs_f64(),
        total.as_secs_f64()
    );
    guest::verify_pattern(&a, 4242, 256).unwrap();
    let e = guest::verify_pattern(&a, 4243, 256).unwrap_err();
    assert!(e.contains("block 0 is not pattern seed 4243"), "{e}");
    let e = guest::verify_pattern(&a, 4242, 257).unwrap_err();
    assert!(e.contains("block 256") && e.contains("zeros"), "{e}");
}

/// The writer loop acknowledges each block after O_DIRECT + fsync; after a hard kill
/// every acknowledged block is on the file and the sequence has no holes.
#[test]
fn writer_loop_survives_a_hard_power_off() {
    let g = Guest::get();
    let _one = guest::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    raw_file(&a, 16 << 20);
    let job = format!("echo DV-READY\n{}\n", guest::writer_sh("/dev/vda", 5, 4000));
    let initrd = g.initramfs(dir.path(), &job);
    let log = dir.path().join("serial.log");
    let mut q = Qemu::spawn(&g.qemu_args(&initrd, &log, &[Drive::best(&a)], None), &log);
    q.wait_for_line("DV-READY", BOOT).unwrap();
    let t = Instant::now();
    q.wait_for_line("DV-WROTE 30", BOOT).unwrap();
    let per_write = t.elapsed() / 31;
    q.kill();
    let acked = guest::last_acknowledged(&log).expect("a DV-WROTE line");
    let on_disk = guest::highest_sequence(&a, 5)
        .unwrap()
        .expect("sequence blocks");
    eprintln!(
        "guest kit: writer loop {:.1} ms per O_DIRECT+fsync 4 KiB write; \
         acknowledged {acked}, on disk {on_disk}",
        per_write.as_secs_f64() * 1000.0
    );
    assert!(acked >= 30, "{acked}");
    assert!(
        on_disk >= acked,
        "acknowledged {acked} but only {on_disk} on disk"
    );
    // The kill lands mid-loop: at most the block in flight is beyond the last ack.
    assert!(
        on_disk <= acked + 1,
        "on disk {on_disk}, acknowledged {acked}"
    );
}

/// A disk hot-plugged through QMP appears as /dev/vdb; the job writes the pattern.
#[test]
fn hotplugged_disk_gets_the_pattern() {
    let g = Guest::get();
    let _one = guest::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.raw"), dir.path().join("b.raw"));
    raw_file(&a, 16 << 20);
    raw_file(&b, 16 << 20);
    let initrd = g.initramfs(dir.path(), &guest::hotplug_job(77, 128, 60));
    let log = dir.path().join("serial.log");
    let sock = dir.path().join("qmp.sock");
    let mut q = Qemu::spawn(
        &g.qemu_args(&initrd, &log, &[Drive::best(&a)], Some(&sock)),
        &log,
    );
    let ready = q.wait_for_line("DV-READY", BOOT).unwrap();
    assert_eq!(ready, "DV-READY vda");
    let mut qmp = Qmp::connect(&sock, Duration::from_secs(10)).unwrap();
    let t = Instant::now();
    qmp.hotplug_virtio_blk("hot1", &b, guest::supports_o_direct(&b))
        .unwrap();
    let seen = q.wait_for_line("DV-HOTPLUG", BOOT).unwrap();
    eprintln!(
        "guest kit: hot-plugged disk seen after {:.2} s: {seen}",
        t.elapsed().as_secs_f64()
    );
    assert_eq!(seen, "DV-HOTPLUG vdb");
    q.wait_for_line("DV-OK", BOOT).unwrap();
    assert!(q.wait_exit(BOOT).unwrap().success());
    drop(qmp);
    guest::verify_pattern(&b, 77, 128).unwrap();
    guest::verify_pattern(&a, 77, 1).unwrap_err();
}

/// A failing job is reported as soon as it prints `DV-FAIL`, with the guest's own
/// diagnostics (the first differing block) in the error.
#[test]
fn a_failing_job_is_reported_early() {
    let g = Guest::get();
    let _one = guest::one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.raw");
    raw_file(&a, 1 << 20);
    guest::write_pattern(&a, 3, 8).unwrap();
    let job = format!(
        "echo DV-READY\n{}\n",
        guest::verify_pattern_sh("/dev/vda", 3, 9)
    );
    let initrd = g.initramfs(dir.path(), &job);
    let log = dir.path().join("serial.log");
    let mut q = Qemu::spawn(&g.qemu_args(&initrd, &log, &[Drive::best(&a)], None), &log);
    q.wait_for_line("DV-READY", BOOT).unwrap();
    let t = Instant::now();
    let e = q.wait_for_line("DV-OK", BOOT).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(20), "{e}");
    assert!(e.contains("DV-FAIL verify pattern /dev/vda"), "{e}");
    assert!(
        e.contains("dv_verify_pattern: /dev/vda block 8: ...."),
        "{e}"
    );
    assert!(q.wait_exit(BOOT).unwrap().success());
    // The free function sees the same.
    let e = guest::wait_for_line(&log, "DV-OK", Duration::ZERO).unwrap_err();
    assert!(e.contains("DV-FAIL"), "{e}");
}

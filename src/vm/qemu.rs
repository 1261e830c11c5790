//! QEMU's command line, VM size presets and the acceleration probe.

use crate::store::VmRecord;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const QEMU: &str = "qemu-system-x86_64";

/// VM sizes: a few of Azure's, with their vCPUs and memory (MiB).
pub const SIZES: &[(&str, u32, u64)] = &[
    ("Standard_B1ls", 1, 512),
    ("Standard_B1s", 1, 1024),
    ("Standard_B1ms", 1, 2048),
    ("Standard_B2s", 2, 4096),
    ("Standard_DS1_v2", 1, 3584),
    ("Standard_D2s_v3", 2, 8192),
    ("Standard_DS3_v2", 4, 14336),
    ("Standard_D4s_v3", 4, 16384),
];

pub const DEFAULT_SIZE: &str = "Standard_B1s";

/// The preset's (vCPUs, MiB), by name (case-insensitive, as Azure takes it).
pub fn size(name: &str) -> Result<(&'static str, u32, u64), String> {
    SIZES
        .iter()
        .find(|(n, _, _)| n.eq_ignore_ascii_case(name))
        .copied()
        .ok_or_else(|| {
            format!(
                "unknown VM size '{}'; use one of {}",
                name.chars().take(64).collect::<String>(),
                SIZES.iter().map(|s| s.0).collect::<Vec<_>>().join(", ")
            )
        })
}

/// `kvm` or `tcg`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
}

impl Accel {
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// The acceleration VMs use, probed once per daemon: KVM only if a probe guest really
/// runs under it (a nested paravirtual /dev/kvm accepts the guest and then hangs it),
/// else TCG. `DISKVAULT_ACCEL=kvm|tcg` decides without a probe.
pub fn accel(scratch: &Path) -> Accel {
    static ACCEL: OnceLock<Accel> = OnceLock::new();
    *ACCEL.get_or_init(|| {
        let forced = std::env::var("DISKVAULT_ACCEL").ok();
        match forced.as_deref() {
            Some("kvm") => return Accel::Kvm,
            Some("tcg") => return Accel::Tcg,
            _ => {}
        }
        match probe_kvm(scratch) {
            Ok(()) => {
                log::info!("VMs run under KVM (a probe guest ran)");
                Accel::Kvm
            }
            Err(why) => {
                log::info!("VMs run under TCG (software emulation): KVM is unusable: {why}");
                Accel::Tcg
            }
        }
    })
}

/// The probe guest: a 64 KiB firmware that does what a kernel does first (load a
/// GDT, enter 32-bit protected mode, far-jump into it) and then writes 0x2a to the
/// isa-debug-exit port, so QEMU exits with status (0x2a << 1) | 1. A nested
/// paravirtual KVM runs real mode but hangs at that switch, as it hangs a kernel.
fn probe_firmware() -> Vec<u8> {
    // Assembled from (GNU as, `.code16` at 0xF0000):
    //   cli; lgdtl %cs:gdtr; mov %cr0,%eax; or $1,%eax; mov %eax,%cr0;
    //   ljmpl $0x08,$pm32; .code32 pm32: mov $0x10,%ax; mov %ax,%ds; mov %ax,%ss;
    //   mov $0x7000,%esp; mov $0x2a,%al; out %al,$0xf4; 1: hlt; jmp 1b
    //   gdt: null, flat code (0x00CF9A000000FFFF), flat data (0x00CF92000000FFFF)
    //   gdtr: .word 23; .long 0xF0030
    const START: [u8; 78] = [
        0xfa, 0x2e, 0x66, 0x0f, 0x01, 0x16, 0x48, 0x00, 0x0f, 0x20, 0xc0, 0x66, 0x83, 0xc8, 0x01,
        0x0f, 0x22, 0xc0, 0x66, 0xea, 0x1a, 0x00, 0x0f, 0x00, 0x08, 0x00, 0x66, 0xb8, 0x10, 0x00,
        0x8e, 0xd8, 0x8e, 0xd0, 0xbc, 0x00, 0x70, 0x00, 0x00, 0xb0, 0x2a, 0xe6, 0xf4, 0xf4, 0xeb,
        0xfd, 0x66, 0x90, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0x00, 0x00,
        0x00, 0x9a, 0xcf, 0x00, 0xff, 0xff, 0x00, 0x00, 0x00, 0x92, 0xcf, 0x00, 0x17, 0x00, 0x30,
        0x00, 0x0f, 0x00,
    ];
    // The reset vector (F000:FFF0): ljmp $0xF000,$0.
    const RESET: [u8; 5] = [0xea, 0x00, 0x00, 0x00, 0xf0];
    let mut fw = vec![0u8; 64 << 10];
    fw[..START.len()].copy_from_slice(&START);
    let at = fw.len() - 16;
    fw[at..at + RESET.len()].copy_from_slice(&RESET);
    fw
}

fn probe_kvm(scratch: &Path) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map_err(|e| format!("/dev/kvm: {e}"))?;
    let fw = scratch.join(".kvm-probe.bin");
    std::fs::write(&fw, probe_firmware()).map_err(|e| format!("{}: {e}", fw.display()))?;
    let r = run_probe(&fw);
    let _ = std::fs::remove_file(&fw);
    r
}

fn run_probe(fw: &Path) -> Result<(), String> {
    let mut child = Command::new(QEMU)
        .args(["-accel", "kvm", "-M", "pc", "-m", "16", "-nodefaults"])
        .args(["-no-user-config", "-display", "none", "-bios"])
        .arg(fw)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot run {QEMU}: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match child.try_wait() {
            Ok(Some(st)) if st.code() == Some(0x55) => return Ok(()),
            Ok(Some(st)) => return Err(format!("the probe guest ended with {st}")),
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("the probe guest hung for 3 s".into());
            }
            // Polling a child that normally exits within milliseconds.
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// A value inside a QEMU option list: commas are doubled.
pub fn opt_escape(p: &Path) -> String {
    p.display().to_string().replace(',', ",,")
}

/// The `-drive` and `-device` for one disk: raw, O_DIRECT (cache=none) with a thread
/// pool (aio=threads: FUSE files take no native AIO), on virtio-blk.
pub fn disk_args(file: &Path, id: &str, boot: bool) -> [String; 4] {
    let mut dev = format!("virtio-blk-pci,drive={id},id=dev-{id},serial={id}");
    if boot {
        dev += ",bootindex=0";
    }
    [
        "-drive".into(),
        format!(
            "file={},format=raw,if=none,id={id},cache=none,aio=threads",
            opt_escape(file)
        ),
        "-device".into(),
        dev,
    ]
}

/// Where a VM's files live: its serial log, QEMU's own log and the QMP socket.
pub struct Paths {
    pub serial: PathBuf,
    pub qemu_log: PathBuf,
    pub qmp: PathBuf,
}

/// A unix socket path must fit in 108 bytes; a deep store puts the socket in a
/// private directory under the runtime or temp dir instead.
pub fn paths(vms_dir: &Path, rec: &VmRecord) -> Paths {
    let in_store = vms_dir.join(format!("{}.qmp", rec.name));
    let qmp = if in_store.as_os_str().len() < 100 {
        in_store
    } else {
        // Safe because: getuid has no preconditions and cannot fail.
        let uid = unsafe { libc::getuid() };
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir)
            .join(format!("diskvault-{uid}"));
        base.join(format!("{}.qmp", rec.vm_id))
    };
    Paths {
        serial: vms_dir.join(format!("{}.serial.log", rec.name)),
        qemu_log: vms_dir.join(format!("{}.qemu.log", rec.name)),
        qmp,
    }
}

/// Makes sure the directory of a QMP socket outside the store is ours alone: in a
/// shared /tmp someone else could have made it first and swap our socket for theirs.
pub fn private_socket_dir(qmp: &Path, vms_dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(dir) = qmp.parent() else {
        return Ok(());
    };
    if dir == vms_dir {
        return Ok(());
    }
    match crate::durable::create_dir(dir, 0o700) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let m = std::fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // Safe because: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !m.is_dir() || m.uid() != me || m.permissions().mode() & 0o077 != 0 {
        return Err(format!(
            "{} (for the VM's QMP socket, the store path being too long for one) is not a private directory of uid {me} (owner {}, mode {:o}); remove it, or set XDG_RUNTIME_DIR to a private directory",
            dir.display(),
            m.uid(),
            m.permissions().mode() & 0o7777
        ));
    }
    Ok(())
}

/// The whole command line of a VM whose disks are files under `mount/disks/`.
pub fn command(rec: &VmRecord, mount: &Path, paths: &Paths, accel: Accel) -> Command {
    let mut c = Command::new(QEMU);
    c.arg("-name")
        .arg(format!("guest={}", rec.name.replace(',', ",,")))
        .args(["-uuid", &rec.vm_id])
        .args(["-M", "pc", "-accel", accel.name()])
        .args(["-m", &rec.memory_mb.to_string()])
        .args(["-smp", &rec.vcpus.to_string()])
        .args(["-nodefaults", "-no-user-config", "-display", "none"]);
    if accel == Accel::Kvm {
        c.args(["-cpu", "host"]);
    }
    c.arg("-serial")
        .arg(format!("file:{}", paths.serial.display()))
        .arg("-qmp")
        .arg(format!(
            "unix:{},server=on,wait=off",
            opt_escape(&paths.qmp)
        ));
    if let Some(k) = &rec.kernel {
        c.arg("-kernel").arg(k);
    }
    if let Some(i) = &rec.initrd {
        c.arg("-initrd").arg(i);
    }
    if let Some(a) = &rec.append {
        c.arg("-append").arg(a);
    }
    let disks = mount.join("disks");
    if let Some(os) = &rec.os_disk {
        // With -kernel, QEMU's linuxboot ROM holds boot index 0.
        let boot = rec.kernel.is_none();
        c.args(disk_args(&disks.join(&os.name), "osdisk", boot));
    }
    for d in &rec.data_disks {
        let id = format!("lun{}", d.lun.unwrap_or(0));
        c.args(disk_args(&disks.join(&d.name), &id, false));
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket directory outside the store must be ours and private: one made by
    /// someone else (or open to others) is refused, a missing one is made 0700.
    #[test]
    fn socket_dirs_outside_the_store_are_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = std::env::temp_dir().join(format!("dv-sockdir-{}", std::process::id()));
        let store = d.join("store");
        std::fs::create_dir_all(&store).unwrap();
        let inside = store.join("v.qmp");
        private_socket_dir(&inside, &store).unwrap();
        let fresh = d.join("fresh").join("v.qmp");
        private_socket_dir(&fresh, &store).unwrap();
        let mode = std::fs::metadata(d.join("fresh"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o700);
        let open = d.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_socket_dir(&open.join("v.qmp"), &store).unwrap_err();
        assert!(e.contains("not a private directory"), "{e}");
        let link = d.join("link");
        std::os::unix::fs::symlink(d.join("fresh"), &link).unwrap();
        assert!(private_socket_dir(&link.join("v.qmp"), &store).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }

    /// The embedded probe is the firmware its comment describes: it must make TCG
    /// (which runs any correct guest) exit with the probe's status.
    #[test]
    fn probe_firmware_exits_under_tcg() {
        if Command::new(QEMU).arg("--version").output().is_err() {
            panic!("{QEMU} is missing: apt-get install qemu-system-x86");
        }
        let dir = std::env::temp_dir().join(format!("dv-probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fw = dir.join("probe.bin");
        std::fs::write(&fw, probe_firmware()).unwrap();
        let st = Command::new(QEMU)
            .args(["-accel", "tcg", "-M", "pc", "-m", "16", "-nodefaults"])
            .args(["-no-user-config", "-display", "none", "-bios"])
            .arg(&fw)
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .status()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(
            st.code(),
            Some(0x55),
            "the probe firmware did not reach its exit"
        );
    }
}

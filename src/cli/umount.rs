//! `umount`: finds the daemon behind a mountpoint, stops its VMs if asked, unmounts,
//! and waits for the daemon to exit.

use super::daemon::absolute;
use super::CliError;
use crate::store::{DaemonInfo, StoreLock, LOCK_FILE};
use std::path::{Path, PathBuf};

/// Reads which store a mount serves from its `.vault/daemon.json`.
fn daemon_of(mp: &Path) -> Option<DaemonInfo> {
    serde_json::from_slice(&std::fs::read(mp.join(".vault").join("daemon.json")).ok()?).ok()
}

/// The filesystem type and source of what is mounted on `path` (the topmost mount
/// there), from /proc/self/mountinfo.
fn mount_entry(path: &Path) -> Option<(String, String)> {
    crate::mountinfo::topmost(&crate::mountinfo::read(), path, |_| true)
        .map(|m| (m.fstype, m.source))
}

/// True for a diskvault FUSE mount: the type `fuse.diskvault` (mount(2) here as root,
/// fusermount3 otherwise). An older daemon's plain `fuse` mount with the source
/// `diskvault:STORE` counts too, so it can still be unmounted.
fn is_diskvault_mount(fstype: &str, source: &str) -> bool {
    fstype == "fuse.diskvault"
        || (matches!(fstype, "fuse" | "fuseblk") && source.starts_with("diskvault:"))
}

/// The path as mountinfo shows it: symlinks resolved in the parent, and the last
/// component kept, since stat on a dead FUSE mount fails (ENOTCONN).
fn mountinfo_path(mp: &Path) -> PathBuf {
    let mut abs = absolute(mp);
    // A symlink to a mountpoint means the mountpoint (a few hops at most).
    for _ in 0..8 {
        let Ok(target) = std::fs::read_link(&abs) else {
            break;
        };
        abs = absolute(&abs.parent().unwrap_or(Path::new("/")).join(target));
    }
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|p| p.join(name))
            .unwrap_or(abs),
        _ => abs,
    }
}

/// Loop devices whose backing file lies under `mp`: (`/dev/loop3`, `MP/disks/data1`).
fn loop_devices_under(mp: &Path) -> Vec<(String, String)> {
    let Ok(dir) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    let mut found: Vec<(String, String)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let dev = e.file_name().to_string_lossy().into_owned();
            let file = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let file = file.trim_end_matches('\n');
            let file = file.strip_suffix(" (deleted)").unwrap_or(file);
            Path::new(file)
                .starts_with(mp)
                .then(|| (format!("/dev/{dev}"), file.to_string()))
        })
        .collect();
    found.sort();
    found
}

/// VMs that run on the mount keep its disk files open: refuse, or stop them first.
fn stop_vms_on(abs: &Path, shown: &str, stop: bool) -> Result<(), CliError> {
    let ctl = abs.join(".vault");
    let Ok(bytes) = std::fs::read(ctl.join("status.json")) else {
        return Ok(());
    };
    let status: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let running: Vec<String> = status["virtualMachines"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["powerState"] == "VM running")
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect();
    if running.is_empty() {
        return Ok(());
    }
    if !stop {
        return Err(CliError(format!(
            "VMs run on {shown}: {}; stop them first ('diskvault vm stop NAME'), or unmount with --stop-vms to power them off",
            running.join(", ")
        )));
    }
    for vm in running {
        std::fs::write(ctl.join("vms").join(&vm).join("stop"), b"1").map_err(|e| {
            CliError(format!(
                "cannot stop VM '{vm}' ({e}; see {shown}/.vault/last-error); left {shown} mounted"
            ))
        })?;
        eprintln!("stopped VM {vm}");
    }
    Ok(())
}

pub fn umount(mp: &Path, stop_vms: bool) -> Result<(), CliError> {
    let abs = mountinfo_path(mp);
    let shown = mp.display();
    // Only ever unmount diskvault's own mounts, never what else is mounted there.
    let Some((fstype, source)) = mount_entry(&abs) else {
        return Err(CliError(format!("{shown} is not mounted; nothing to do")));
    };
    if !is_diskvault_mount(&fstype, &source) {
        return Err(CliError(format!(
            "{shown} is not a diskvault mount (it is {fstype} from {source}); left it mounted, use umount(8) if you mean it"
        )));
    }
    let info = daemon_of(&abs);
    stop_vms_on(&abs, &shown.to_string(), stop_vms)?;
    let c = std::ffi::CString::new(abs.as_os_str().as_encoded_bytes())
        .map_err(|_| CliError("mountpoint path contains a NUL byte".into()))?;
    // Safe because: `c` is a valid NUL-terminated path.
    if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
        let e = std::io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EBUSY) => {
                let loops = loop_devices_under(&abs);
                if !loops.is_empty() {
                    let devs: Vec<&str> = loops.iter().map(|(d, _)| d.as_str()).collect();
                    let held: Vec<String> = loops
                        .iter()
                        .map(|(d, f)| format!("{d} holds {f}"))
                        .collect();
                    return Err(CliError(format!(
                        "{shown} is busy: {}; detach with 'losetup -d {}' and retry",
                        held.join(", "),
                        devs.join(" ")
                    )));
                }
                return Err(CliError(format!(
                    "{shown} is busy: a program still uses it (see: fuser -vm '{shown}'); close it and retry"
                )));
            }
            Some(libc::EPERM) => {
                let ok = ["fusermount3", "fusermount"].iter().any(|bin| {
                    std::process::Command::new(bin)
                        .arg("-u")
                        .arg(&abs)
                        .status()
                        .is_ok_and(|s| s.success())
                });
                if !ok {
                    return Err(CliError(format!(
                        "not allowed to unmount {shown}: {e}; run as the user who mounted it"
                    )));
                }
            }
            _ => return Err(CliError(format!("cannot unmount {shown}: {e}"))),
        }
    }
    // The daemon holds the store and vault locks until it has flushed and exited.
    if let Some(info) = info {
        StoreLock::wait_released(&Path::new(&info.store).join(LOCK_FILE))?;
        if !info.vault.is_empty() {
            let vault_lock = Path::new(&info.vault).join(crate::vault::keyvault::LOCK_FILE);
            StoreLock::wait_released(&vault_lock)?;
        }
    }
    Ok(())
}

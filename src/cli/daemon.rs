//! `mount` and `umount`: the daemon's life cycle.
//!
//! `mount` re-executes itself in the foreground as a new session leader and waits on a
//! pipe until the child reports that the kernel handshake is done (or why it failed),
//! as gocryptfs and sshfs do.

use super::CliError;
use crate::fs::{self, MountOptions};
use crate::store::{now_rfc3339, DaemonInfo, Store, DAEMON_FILE, LOG_FILE};
use crate::vault::custody::{kek, SealKind, UnsealOptions};
use clap::Args;
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A pipe, both ends close-on-exec.
fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // Safe because: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // Safe because: pipe2 just returned these two fds and nothing else owns them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

#[derive(Args)]
pub struct MountArgs {
    /// The store directory; created with a new platform key if it does not exist.
    store: PathBuf,
    /// An existing, empty directory to mount on.
    mountpoint: PathBuf,
    /// Stay in the foreground and log to stderr.
    #[arg(short, long)]
    foreground: bool,
    /// Let other users access the mount (file modes still apply). Needs
    /// `user_allow_other` in /etc/fuse.conf when not root.
    #[arg(long)]
    allow_other: bool,
    /// The key vault directory, if the store keeps it elsewhere (see 'init --vault').
    #[arg(long, env = "DISKVAULT_VAULT")]
    vault: Option<PathBuf>,
    /// Delay from a key becoming unusable (disabled, deleted, grant removed) to its
    /// disks failing, e.g. 0s (default), 30s, 1h (Azure takes up to an hour).
    #[arg(long, default_value = "0s", value_parser = parse_delay)]
    revocation_delay: std::time::Duration,
    /// Delay from a new key version to the re-wrap of sets with auto-rotation.
    #[arg(long, default_value = "0s", value_parser = parse_delay)]
    auto_rotate_delay: std::time::Duration,
    /// FUSE worker threads, 2 to 64 (default: one per CPU, at least 2; measured best
    /// on 2 cores, see docs/benchmarks.md). Not 1: a control command that revokes a
    /// disk waits for that disk's requests in flight, which need a second worker.
    #[arg(long, value_parser = parse_threads, allow_negative_numbers = true)]
    threads: Option<u16>,
    /// Readahead of the mount in KiB, a multiple of 4 up to 65536 (0: the kernel's
    /// 128). Sequential reads turn into requests this big, up to FUSE's 1 MiB. Needs
    /// root; others keep the default.
    #[arg(long, default_value_t = 1024, value_parser = parse_readahead, allow_negative_numbers = true)]
    readahead_kb: u32,
    /// Refuse a STORE that does not exist instead of creating it (fstab and systemd
    /// use it: a typo in a path must not make a new, empty store).
    #[arg(long)]
    no_create: bool,
    #[command(flatten)]
    seal: super::seal::SealArgs,
    /// Internal: fd on which a background daemon reports readiness.
    #[arg(long, hide = true)]
    ready_fd: Option<i32>,
}

/// The longest delay taken: a year (Azure's is an hour); longer ones are typos.
const MAX_DELAY: std::time::Duration = std::time::Duration::from_secs(366 * 86400);

fn parse_delay(s: &str) -> Result<std::time::Duration, String> {
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("'{s}' is not a duration like 0s, 30s or 1h: {e}"))?;
    if d > MAX_DELAY {
        return Err(format!("'{s}' is longer than the longest delay, 366d"));
    }
    Ok(d)
}

fn parse_threads(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|n| (2..=64).contains(n))
        .ok_or_else(|| format!("'{s}' is not a number of worker threads from 2 to 64"))
}

/// The kernel keeps readahead in whole 4 KiB pages: 1..=3 would silently turn it off
/// and 1023 become 1020, so only multiples of 4 are taken.
fn parse_readahead(s: &str) -> Result<u32, String> {
    s.parse::<u32>()
        .ok()
        .filter(|n| *n <= 65536 && n % 4 == 0)
        .ok_or_else(|| {
            format!("'{s}' is not a readahead in KiB: a multiple of 4 from 0 to 65536, e.g. 1024")
        })
}

pub(super) fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// True if `path` is itself a mount point (per /proc/self/mountinfo).
fn is_mountpoint(path: &Path) -> bool {
    crate::mountinfo::topmost(&crate::mountinfo::read(), path, |_| true).is_some()
}

fn check_mountpoint(mp: &Path) -> Result<PathBuf, CliError> {
    let shown = mp.display();
    let meta = std::fs::metadata(mp).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => CliError(format!("mountpoint {shown} does not exist; create it with 'mkdir -p {shown}'")),
        Some(libc::ENOTCONN) => CliError(format!(
            "mountpoint {shown} is a dead mount (its daemon died); clear it with 'diskvault umount {shown}'"
        )),
        _ => CliError(format!("mountpoint {shown} is not usable: {e}")),
    })?;
    if !meta.is_dir() {
        return Err(CliError(format!(
            "mountpoint {shown} is not a directory; pass an empty directory"
        )));
    }
    let mp = std::fs::canonicalize(mp)?;
    if is_mountpoint(&mp) {
        return Err(CliError(format!(
            "mountpoint {shown} is busy: something is already mounted there; unmount it or pick another directory"
        )));
    }
    if std::fs::read_dir(&mp)?.next().is_some() {
        return Err(CliError(format!(
            "mountpoint {shown} is not empty; pick an empty directory"
        )));
    }
    Ok(mp)
}

fn init_options(args: &MountArgs, unseal: &UnsealOptions) -> crate::store::InitOptions {
    crate::store::InitOptions {
        vault_dir: args.vault.as_ref().map(|v| absolute(v)),
        vault_name: None,
        seal: args.seal.seal.unwrap_or_default(),
        host_key: args.seal.kek.host_key.clone(),
        tpm_tcti: args.seal.kek.tpm_tcti.clone(),
        unseal: unseal.clone(),
        hsm: None,
        platform_in_hsm: false,
    }
}

/// The unseal options of a mount. A passphrase is asked here, once, (twice for a new
/// store) so that the daemon, which has no terminal, can be handed it.
fn mount_unseal(args: &MountArgs, store: &Path) -> Result<UnsealOptions, CliError> {
    let mut o = args.seal.kek.options_with_prompt();
    let (kind, new) = if Store::is_store(store) {
        match Store::key_protection(store)? {
            Some(p) => (p.seal, false),
            None => {
                eprintln!(
                    "diskvault: warning: store {} keeps its private keys in clear; seal them with 'diskvault vault seal --store {}' (unmounted)",
                    store.display(),
                    store.display()
                );
                return Ok(o);
            }
        }
    } else {
        (args.seal.seal.unwrap_or_default(), true)
    };
    if kind == SealKind::Passphrase && o.passphrase_file.is_none() {
        let what = format!("the store {}", store.display());
        o.passphrase = Some(Arc::new(kek::passphrase(&o, &what, new)?));
    }
    Ok(o)
}

pub fn mount(args: MountArgs) -> Result<(), CliError> {
    let store = absolute(&args.store);
    if args.ready_fd.is_some() || args.foreground {
        return serve(&args, &store);
    }
    check_mountpoint(&args.mountpoint)?;
    if !Store::is_store(&store) {
        refuse_missing(&args, &store)?;
    }
    let unseal = mount_unseal(&args, &store)?;
    if !Store::is_store(&store) {
        Store::init(&store, &init_options(&args, &unseal))?;
        eprintln!(
            "diskvault: created new store {} with a fresh platform key",
            store.display()
        );
    }
    // Readiness pipe: the child writes "OK" or an error line, then keeps the fd closed.
    let mut fds = [0i32; 2];
    // Safe because: `fds` is a valid two-element array for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // Safe because: pipe2 just returned these two fds and nothing else owns them.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let wr_raw = fds[1];
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("mount")
        .arg("--ready-fd")
        .arg(wr_raw.to_string())
        .arg("--readahead-kb")
        .arg(args.readahead_kb.to_string())
        .arg("--revocation-delay")
        .arg(format!("{}ms", args.revocation_delay.as_millis()))
        .arg("--auto-rotate-delay")
        .arg(format!("{}ms", args.auto_rotate_delay.as_millis()));
    if let Some(v) = &args.vault {
        cmd.arg("--vault").arg(absolute(v));
    }
    if args.allow_other {
        cmd.arg("--allow-other");
    }
    if let Some(n) = args.threads {
        cmd.arg("--threads").arg(n.to_string());
    }
    if let Some(h) = &args.seal.kek.host_key {
        cmd.arg("--host-key").arg(absolute(h));
    }
    if let Some(t) = &args.seal.kek.tpm_tcti {
        cmd.arg("--tpm-tcti").arg(t);
    }
    // A passphrase reaches the daemon through a pipe, never argv or the environment.
    let mut pass_rd: Option<OwnedFd> = None;
    if let Some(p) = &unseal.passphrase {
        let (rd, wr) = pipe()?;
        std::fs::File::from(wr).write_all(p)?;
        cmd.arg("--passphrase-file")
            .arg(format!("/dev/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&rd)));
        pass_rd = Some(rd);
    } else if let Some(f) = &args.seal.kek.passphrase_file {
        cmd.arg("--passphrase-file").arg(absolute(f));
    }
    let pass_raw = pass_rd.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
    cmd.arg(&store)
        .arg(std::fs::canonicalize(&args.mountpoint)?)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Safe because: between fork and exec the closure only calls async-signal-safe
    // functions (setsid, fcntl) on an fd that is open in the child.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            for fd in std::iter::once(wr_raw).chain(pass_raw) {
                let flags = libc::fcntl(fd, libc::F_GETFD);
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn()?;
    drop(wr);
    drop(pass_rd);
    let mut msg = String::new();
    std::fs::File::from(rd).read_to_string(&mut msg)?;
    let msg = msg.trim();
    if msg == "OK" {
        return Ok(());
    }
    let _ = child.wait();
    if let Some(err) = msg.strip_prefix("ERR ") {
        return Err(CliError(err.to_string()));
    }
    Err(CliError(format!(
        "the daemon exited before the mount was ready; see {}",
        store.join(LOG_FILE).display()
    )))
}

fn init_logging(to_file: Option<&Path>) {
    let mut b = env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    // fuser warns when it can't unmount a mount that `umount` already removed: that is
    // every clean unmount, so only its errors are kept.
    b.filter_module("fuser::session", log::LevelFilter::Error);
    b.filter_module("fuser::mnt", log::LevelFilter::Error);
    if let Some(path) = to_file {
        if let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
        {
            b.target(env_logger::Target::Pipe(Box::new(f)));
        }
    }
    let _ = b.try_init();
}

/// Sends every panic's message and location to the log (daemon.log in the background,
/// where stderr is /dev/null), then to the default hook.
fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = crate::store::panic_text(info.payload());
        let at = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        let t = std::thread::current();
        log::error!(
            "panic in thread '{}' at {at}: {msg}",
            t.name().unwrap_or("unnamed")
        );
        default(info);
    }));
}

/// Blocks SIGINT/SIGTERM/SIGHUP in every thread and returns the set, so that one
/// thread can take them with sigwait and unmount cleanly.
fn block_signals() -> libc::sigset_t {
    // Safe because: the sigset is initialized by sigemptyset before use, and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn refuse_missing(args: &MountArgs, store: &Path) -> Result<(), CliError> {
    if args.no_create {
        return Err(CliError(format!(
            "{} is not a diskvault store and --no-create forbids making one; check the path, or create the store with 'diskvault init {}'",
            store.display(),
            store.display()
        )));
    }
    Ok(())
}

/// The daemon proper: open the store, mount, report readiness, serve until unmounted.
fn serve(args: &MountArgs, store_path: &Path) -> Result<(), CliError> {
    // Safe because: ready_fd was passed by our parent and is open and owned only here.
    let mut ready = args
        .ready_fd
        .map(|fd| std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) }));
    // A refused mount leaves the store as it was: a daemon.log it made goes again.
    let log_path = store_path.join(LOG_FILE);
    let log_existed = log_path.exists();
    let result = (|| {
        let mp = check_mountpoint(&args.mountpoint)?;
        let mut unseal = if args.ready_fd.is_none() {
            if !Store::is_store(store_path) {
                refuse_missing(args, store_path)?;
            }
            mount_unseal(args, store_path)?
        } else {
            args.seal.kek.options()
        };
        if !Store::is_store(store_path) && args.ready_fd.is_none() {
            Store::init(store_path, &init_options(args, &unseal))?;
        }
        init_logging(ready.as_ref().map(|_| store_path.join(LOG_FILE)).as_deref());
        install_panic_hook();
        unseal.prompt = None;
        unseal.eager = true;
        let store = Arc::new(Store::open_with(store_path, args.vault.as_deref(), unseal)?);
        let clear = store.clear_key_count();
        if clear > 0 {
            log::warn!(
                "the store keeps {clear} private keys in clear; seal them with 'diskvault vault seal' (unmounted)"
            );
        }
        store.set_delays(crate::store::Delays {
            revocation: args.revocation_delay,
            auto_rotation: args.auto_rotate_delay,
        });
        let info = DaemonInfo {
            pid: std::process::id(),
            store: store_path.display().to_string(),
            vault: store.vault().dir().display().to_string(),
            mountpoint: mp.display().to_string(),
            started_at: now_rfc3339(),
        };
        let sigs = block_signals();
        let vms = crate::vm::VmManager::new(store.clone(), Some(mp.clone()));
        let opts = MountOptions {
            allow_other: args.allow_other,
            threads: args.threads.map_or_else(fs::default_threads, usize::from),
            readahead_kb: args.readahead_kb,
            vms: Some(vms.clone()),
        };
        let (mut session, own) =
            fs::mount(store.clone(), info.clone(), &mp, &opts).map_err(|e| {
                CliError(format!(
                "cannot mount on {}: {e} (is /dev/fuse available and are you allowed to mount?)",
                mp.display()
            ))
            })?;
        store.save_daemon_info(&info).map_err(|e| {
            CliError(format!(
                "cannot write {}: {e}; free space in {} and mount again",
                store_path.join(DAEMON_FILE).display(),
                store_path.display()
            ))
        })?;
        let mut unmounter = session.unmount_callable();
        let own = own.map(std::sync::Arc::new);
        let own_signal = own.clone();
        let signal_vms = vms.clone();
        std::thread::spawn(move || {
            let mut sig = 0;
            // Safe because: `sigs` is an initialized set and `sig` a valid out-pointer.
            unsafe { libc::sigwait(&sigs, &mut sig) };
            log::info!("signal {sig}: stopping VMs and unmounting");
            // VMs hold disk files open, which would keep the mount busy.
            signal_vms.shutdown(&format!("the diskvault daemon received signal {sig}"));
            match &own_signal {
                Some(m) => {
                    let _ = m.unmount();
                }
                None => {
                    let _ = unmounter.unmount();
                }
            }
        });
        store.spawn_reconciler()?;
        store.spawn_merger()?;
        store.resume_rekeys();
        log::info!("serving {} on {}", store_path.display(), mp.display());
        Ok::<_, CliError>((session, store, vms, own))
    })();
    let (session, store, vms, own) = match result {
        Ok(v) => v,
        Err(CliError(msg)) => {
            if !log_existed && std::fs::metadata(&log_path).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&log_path);
            }
            if let Some(f) = ready.as_mut() {
                let _ = writeln!(f, "ERR {msg}");
            }
            return Err(CliError(msg));
        }
    };
    if let Some(mut f) = ready.take() {
        let _ = writeln!(f, "OK");
    }
    sd_notify("READY=1");
    let r = session.run();
    if let Some(m) = &own {
        // Ended by an error rather than an unmount: leave no dead mount behind.
        let _ = m.unmount();
    }
    vms.shutdown("the store was unmounted");
    drop(vms);
    drop(store);
    r.map_err(|e| CliError(format!("FUSE session ended with an error: {e}")))
}

/// Tells systemd (`Type=notify`) about the daemon's state, when it runs under it.
fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let sock = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(s) => s,
        Err(e) => return log::warn!("sd_notify: {e}"),
    };
    let bytes = path.as_encoded_bytes();
    let r = match bytes.strip_prefix(b"@") {
        // An abstract socket: '@' stands for the leading NUL.
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name)
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = r {
        log::warn!("sd_notify to {}: {e}", path.to_string_lossy());
    }
}

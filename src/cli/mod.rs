//! The `diskvault` command line. Commands act on the store directly when it is not
//! mounted, and through the mount's `.vault/` control files when it is.

mod access;
mod az;
mod copies;
mod daemon;
mod des;
mod disk;
mod disk_put;
mod key;
pub mod output;
mod seal;
mod summary;
mod umount;
mod vault;
mod vm;
mod vmss;

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "diskvault",
    version,
    about = "Azure Managed Disks server-side encryption, on one machine",
    after_help = "az's command paths work too: replace `az` with `diskvault` (keyvault ..., keyvault key ..., disk-encryption-set ..., disk, snapshot, image, vm, role assignment, account, group, configure), with az's global arguments (-g, -l, --query, -o, --subscription, --yes, --no-wait, --only-show-errors)."
)]
struct Cli {
    #[command(flatten)]
    globals: output::Globals,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new store: format header, a fresh RSA-2048 platform key and a key vault.
    Init {
        /// The store directory (absent or empty).
        store: PathBuf,
        /// Keep the key vault in this directory instead of STORE/vault (its name:
        /// --vault-name, as in https://NAME.vault.azure.net, 3-24 characters).
        #[arg(long)]
        vault: Option<PathBuf>,
        #[command(flatten)]
        seal: seal::SealArgs,
        #[command(flatten)]
        hsm: vault::HsmArgs,
        /// software (default: sealed like every key) or hsm: generate the platform key
        /// in the token of --hsm-module.
        #[arg(long, value_name = "KIND", value_parser = ["software", "hsm"])]
        platform_key: Option<String>,
    },
    /// Mount a store; returns once the mount is ready and leaves the daemon in the background.
    /// The store is created if it does not exist yet.
    Mount(daemon::MountArgs),
    /// Flush, drop all keys and unmount; waits for the daemon to exit.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
        /// Power off the VMs that run on the mount first (else their open disks keep
        /// it busy and umount refuses).
        #[arg(long)]
        stop_vms: bool,
    },
    /// Create, update, list, show and delete managed disks.
    Disk {
        #[command(subcommand)]
        cmd: disk::DiskCmd,
    },
    /// Keys in the key vault: create, import, rotate, set, delete, recover, purge, grant.
    Key {
        #[command(subcommand)]
        cmd: key::KeyCmd,
    },
    /// The key vault itself: show, set purge protection and retention, verify the audit log.
    Vault {
        #[command(subcommand)]
        cmd: vault::VaultCmd,
    },
    /// Disk encryption sets: create, show, list, update, delete (az's
    /// `disk-encryption-set` works too).
    #[command(visible_alias = "disk-encryption-set")]
    Des {
        #[command(subcommand)]
        cmd: des::DesCmd,
    },
    /// Snapshots: instant, read-only point-in-time copies of disks; list, show, diff, delete.
    Snapshot {
        #[command(subcommand)]
        cmd: copies::SnapshotCmd,
    },
    /// Images: captured from a disk or snapshot, to create disks from.
    Image {
        #[command(subcommand)]
        cmd: copies::ImageCmd,
    },
    /// Virtual machines on QEMU, on the store's disks: create, start, stop, attach;
    /// stopped when a key their disks need is revoked.
    Vm {
        #[command(subcommand)]
        cmd: vm::VmCmd,
    },
    /// VM scale sets (az's vmss): create, show, list, list-instances, scale, start,
    /// stop, deallocate, restart, delete-instances, delete.
    Vmss {
        #[command(subcommand)]
        cmd: vmss::VmssCmd,
    },
    /// az's `keyvault` tree: create (name the store's vault), show, update, list,
    /// key ..., set-policy, delete-policy.
    Keyvault {
        #[command(subcommand)]
        cmd: az::KeyvaultCmd,
    },
    /// Azure RBAC on the vault: `role assignment create|list|delete`.
    Role {
        #[command(subcommand)]
        cmd: az::RoleCmd,
    },
    /// The store as a subscription: `account show`, `account set --subscription`.
    Account {
        #[command(subcommand)]
        cmd: az::AccountCmd,
    },
    /// Resource groups: create, show, list.
    Group {
        #[command(subcommand)]
        cmd: az::GroupCmd,
    },
    /// Defaults for -g and -l, like `az configure --defaults group=G location=L`.
    Configure {
        /// group=NAME and/or location=NAME; an empty value clears it; none shows them.
        #[arg(long, num_args = 0.., value_name = "KEY=VALUE")]
        defaults: Vec<String>,
        #[command(flatten)]
        store: access::StoreArg,
    },
}

/// The whole command line, for tests that walk every subcommand's help.
pub fn command() -> clap::Command {
    Cli::command()
}

pub use output::{cell, print_rows, Format};

/// A command's output options. The flags themselves (`-o`, `--json`, `--query`) are
/// az's global ones (`output::Globals`); this asks for them.
#[derive(clap::Args, Clone, Copy)]
pub struct OutputArg {}

impl OutputArg {
    /// The chosen format; `default` when none was given. With a query (or a format
    /// only the generic printer has) it is JSON, whose printer applies both.
    pub fn format(&self, default: Format) -> Format {
        if output::generic() {
            return Format::Json;
        }
        output::format(default)
    }
}

/// Prints one object (a `show`): the query applied, then az's format; a table lists
/// every field, nested ones by path.
pub fn print_object(v: &Value, fmt: Format) {
    if let Err(CliError(m)) = check_group(v).and_then(|()| output::emit(v, fmt)) {
        eprintln!("diskvault: {m}");
        std::process::exit(1);
    }
}

/// The name in a resource id, or the name itself.
pub fn id_name(s: &str) -> &str {
    match crate::store::arm::parse_id(s) {
        Some(_) => s.trim_end_matches('/').rsplit('/').next().unwrap_or(s),
        None => s,
    }
}

/// The name in a resource id of one of `types`, or the name itself. An Azure id's
/// subscription and group are checked as `--subscription` and `-g` are; an id of
/// another type is refused here (one line, exit 1).
pub fn id_name_of<'a>(s: &'a str, types: &[crate::store::arm::ResType]) -> &'a str {
    let Some(r) = crate::store::arm::parse_id(s) else {
        return s;
    };
    if !types.contains(&r.ty) {
        eprintln!(
            "diskvault: '{}' is the id of a {}, not of a {}; give its name or its own id",
            s.chars().take(200).collect::<String>(),
            r.ty.noun(),
            types[0].noun()
        );
        std::process::exit(1);
    }
    output::note_id(r.subscription, r.group);
    id_name(s)
}

/// az's `-g` on a command that names one resource: the resource must be in that
/// group (`ResourceNotFound` otherwise, as ARM says).
pub fn check_group(v: &Value) -> Result<(), CliError> {
    let Some(g) = output::implied_group() else {
        return Ok(());
    };
    match (v["resourceGroup"].as_str(), v["type"].as_str(), v["name"].as_str()) {
        (Some(rg), Some(ty), Some(name)) if !rg.eq_ignore_ascii_case(&g) => Err(CliError(format!(
            "(ResourceNotFound) The Resource '{ty}/{name}' under resource group '{g}' was not found; it is in resource group '{rg}' (give -g {rg}, or leave -g out)"
        ))),
        _ => Ok(()),
    }
}

/// `check_group` for the resource a command is about to change.
pub fn check_group_of(a: &access::Access, path: &str) -> Result<(), CliError> {
    if output::implied_group().is_none() {
        return Ok(());
    }
    check_group(&a.read_json(path)?)
}

/// A name given as the positional NAME or as az's `-n/--name`.
macro_rules! name_arg {
    ($ty:ident, [$($rt:ident),*], $doc:tt, $doc_opt:tt) => {
        #[derive(clap::Args)]
        #[group(required = true, multiple = false)]
        pub struct $ty {
            #[doc = $doc]
            #[arg(value_name = "NAME")]
            name: Option<String>,
            #[doc = $doc_opt]
            #[arg(short = 'n', long = "name", value_name = "NAME")]
            name_opt: Option<String>,
            /// Its resource id, as az's --ids (instead of the name).
            #[arg(long = "ids", value_name = "ID")]
            ids: Option<String>,
        }
        impl $ty {
            /// The name; an id (Azure's or `/diskvault/...`) gives its name.
            pub fn get(&self) -> &str {
                let s = self
                    .name
                    .as_deref()
                    .or(self.name_opt.as_deref())
                    .or(self.ids.as_deref())
                    .expect("clap requires one");
                let types: &[crate::store::arm::ResType] = &[$(crate::store::arm::ResType::$rt),*];
                if types.is_empty() {
                    id_name(s)
                } else {
                    id_name_of(s, types)
                }
            }
        }
    };
}
name_arg!(
    DiskName,
    [Disk],
    "The disk's name.",
    "The disk's name, as in az (instead of the positional NAME)."
);
name_arg!(
    ObjName,
    [Snapshot, Image],
    "The snapshot's or image's name.",
    "The name, as in az (instead of the positional NAME)."
);
name_arg!(
    KeyName,
    [],
    "The key's name.",
    "The key's name, as in az (instead of the positional NAME)."
);
name_arg!(
    SetName,
    [Set],
    "The disk encryption set's name.",
    "The set's name, as in az (instead of the positional NAME)."
);

/// A size in binary units, e.g. 30 GiB, 512 MiB, 1.5 GiB.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 || v.fract() == 0.0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A user-facing failure: one line naming the cause and the fix.
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

/// `init`, with relative paths made absolute, and the directories it created removed
/// again if it fails.
fn init(
    store: &Path,
    vault: Option<&Path>,
    vault_name: Option<String>,
    seal: &seal::SealArgs,
    hsm: &vault::HsmArgs,
    platform_in_hsm: bool,
) -> Result<(), CliError> {
    let hsm_cfg = hsm.config()?;
    let store = std::path::absolute(store)?;
    let vault = vault.map(std::path::absolute).transpose()?;
    let new_dirs: Vec<PathBuf> = std::iter::once(&store)
        .chain(vault.as_ref())
        .filter(|d| !d.exists())
        .cloned()
        .collect();
    let opts = crate::store::InitOptions {
        vault_dir: vault,
        vault_name,
        seal: seal.seal.unwrap_or_default(),
        host_key: seal.kek.host_key.clone(),
        tpm_tcti: seal.kek.tpm_tcti.clone(),
        unseal: seal.kek.options_with_prompt(),
        hsm: hsm_cfg,
        platform_in_hsm,
    };
    match crate::store::Store::init(&store, &opts) {
        Ok(()) => {
            println!("initialized store {}", store.display());
            Ok(())
        }
        Err(e) => {
            for d in &new_dirs {
                let _ = std::fs::remove_dir_all(d);
            }
            Err(e.into())
        }
    }
}

/// A command-line mistake as one line naming it and where the help is (clap's own
/// report spans several lines); help and version print as clap does.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind as K;
    if matches!(
        e.kind(),
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut lines = text.lines();
    let mut first = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    // "the following required arguments were not provided:" lists them below.
    if first.ends_with(':') {
        let items: Vec<&str> = lines
            .take_while(|l| !l.trim().is_empty())
            .map(str::trim)
            .collect();
        first = format!("{} {}", first, items.join(", "));
    }
    // The (sub)command the arguments name, for its help.
    let mut cmd = Cli::command();
    let mut path = vec!["diskvault".to_string()];
    // Arguments that are not UTF-8 are the error being reported: no panic over them.
    for a in std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
    {
        let Some(sub) = cmd.find_subcommand(&a).cloned() else {
            break;
        };
        path.push(a);
        cmd = sub;
    }
    eprintln!("diskvault: {first}; see '{} --help'", path.join(" "));
    ExitCode::from(2)
}

pub fn main() -> ExitCode {
    // Die quietly when stdout is a closed pipe (`disk list | head`, also `--help`)
    // instead of panicking in println!. The daemon keeps ignoring SIGPIPE, as Rust
    // programs do.
    // Safe because: setting a signal disposition has no preconditions.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => return usage_error(e),
    };
    output::set(cli.globals.clone());
    if matches!(cli.cmd, Cmd::Mount(_)) {
        // Safe because: as above.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    }
    let result = match cli.cmd {
        Cmd::Init {
            store,
            vault,
            seal,
            hsm,
            platform_key,
        } => init(
            &store,
            vault.as_deref(),
            output::globals().vault_name.clone(),
            &seal,
            &hsm,
            platform_key.as_deref() == Some("hsm"),
        ),
        Cmd::Mount(args) => daemon::mount(args),
        Cmd::Umount {
            mountpoint,
            stop_vms,
        } => umount::umount(&mountpoint, stop_vms),
        Cmd::Disk { cmd } => disk::run(cmd),
        Cmd::Key { cmd } => key::run_key(cmd),
        Cmd::Vault { cmd } => vault::run_vault(cmd),
        Cmd::Des { cmd } => des::run_des(cmd),
        Cmd::Snapshot { cmd } => copies::run_snapshot(cmd),
        Cmd::Image { cmd } => copies::run_image(cmd),
        Cmd::Vm { cmd } => vm::run(cmd),
        Cmd::Keyvault { cmd } => az::run_keyvault(cmd),
        Cmd::Vmss { cmd } => vmss::run(cmd),
        Cmd::Role { cmd } => az::run_role(cmd),
        Cmd::Account { cmd } => az::run_account(cmd),
        Cmd::Group { cmd } => az::run_group(cmd),
        Cmd::Configure { defaults, store } => az::configure(&defaults, &store),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("diskvault: {msg}");
            ExitCode::FAILURE
        }
    }
}

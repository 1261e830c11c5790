//! The `diskvault` command line. Commands act on the store directly when it is not
//! mounted, and through the mount's `.vault/` control files when it is.

mod access;
mod daemon;
mod disk;
mod key;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "diskvault",
    version,
    about = "Azure Managed Disks server-side encryption, on one machine"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Create a new store: format header, a fresh RSA-2048 platform key and a key vault.
    Init {
        /// The store directory (absent or empty).
        store: PathBuf,
        /// Keep the key vault in this directory instead of STORE/vault.
        #[arg(long)]
        vault: Option<PathBuf>,
        /// The vault's name, as in https://NAME.vault.azure.net (3-24 characters).
        #[arg(long)]
        vault_name: Option<String>,
    },
    /// Mount a store; returns once the mount is ready and leaves the daemon in the background.
    /// The store is created if it does not exist yet.
    Mount(daemon::MountArgs),
    /// Flush, drop all keys and unmount; waits for the daemon to exit.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
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
        cmd: key::VaultCmd,
    },
    /// Disk encryption sets: create, show, list, update, delete.
    Des {
        #[command(subcommand)]
        cmd: key::DesCmd,
    },
}

/// A user-facing failure: one line naming the cause and the fix.
pub struct CliError(pub String);

impl<E: std::fmt::Display> From<E> for CliError {
    fn from(e: E) -> Self {
        CliError(e.to_string())
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Init {
            store,
            vault,
            vault_name,
        } => {
            let opts = crate::store::InitOptions {
                vault_dir: vault,
                vault_name,
            };
            crate::store::Store::init(&store, &opts)
                .map(|()| println!("initialized store {}", store.display()))
                .map_err(CliError::from)
        }
        Cmd::Mount(args) => daemon::mount(args),
        Cmd::Umount { mountpoint } => daemon::umount(&mountpoint),
        Cmd::Disk { cmd } => disk::run(cmd),
        Cmd::Key { cmd } => key::run_key(cmd),
        Cmd::Vault { cmd } => key::run_vault(cmd),
        Cmd::Des { cmd } => key::run_des(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("diskvault: {msg}");
            ExitCode::FAILURE
        }
    }
}

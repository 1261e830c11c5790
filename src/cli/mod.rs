//! The `diskvault` command line. Commands act on the store directly when it is not
//! mounted, and through the mount's `.vault/` control files when it is.

mod daemon;
mod disk;

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
    /// Create a new store: format header and a fresh RSA-2048 platform key.
    Init {
        /// The store directory (absent or empty).
        store: PathBuf,
    },
    /// Mount a store; returns once the mount is ready and leaves the daemon in the background.
    /// The store is created if it does not exist yet.
    Mount(daemon::MountArgs),
    /// Flush, drop all keys and unmount; waits for the daemon to exit.
    Umount {
        /// The mountpoint.
        mountpoint: PathBuf,
    },
    /// Create, list, show and delete managed disks.
    Disk {
        #[command(subcommand)]
        cmd: disk::DiskCmd,
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
        Cmd::Init { store } => crate::store::Store::init(&store)
            .map(|()| println!("initialized store {}", store.display()))
            .map_err(CliError::from),
        Cmd::Mount(args) => daemon::mount(args),
        Cmd::Umount { mountpoint } => daemon::umount(&mountpoint),
        Cmd::Disk { cmd } => disk::run(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError(msg)) => {
            eprintln!("diskvault: {msg}");
            ExitCode::FAILURE
        }
    }
}

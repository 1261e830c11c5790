//! `diskvault disk ...`: directly on an unmounted store, through `.vault/` when mounted.

use super::CliError;
use crate::crypto::CipherKind;
use crate::store::{parse_size, CreateOptions, Sku, Store, StoreError};
use clap::Subcommand;
use serde_json::Value;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct StoreArg {
    /// The store directory.
    #[arg(long, env = "DISKVAULT_STORE")]
    store: PathBuf,
}

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Create a platform-key disk.
    Create {
        name: String,
        /// Size, e.g. 30G, 512M, 1T or bytes (binary units).
        #[arg(long)]
        size: String,
        /// Premium_LRS, StandardSSD_LRS, Standard_LRS, UltraSSD_LRS or PremiumV2_LRS.
        #[arg(long, default_value = "Premium_LRS")]
        sku: String,
        /// aes-256-xts (default) or aes-256-ctr (weaker when data is overwritten).
        #[arg(long, default_value = "aes-256-xts")]
        cipher: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List disks.
    List {
        /// Print JSON like `az disk list` instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one disk as JSON, like `az disk show`.
    Show {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a disk and destroy its wrapped key (crypto-shred).
    Delete {
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// How to reach the store: directly, or through the mount of the daemon that holds it.
enum Access {
    Direct(Store),
    Mounted(PathBuf),
}

fn access(store: &Path) -> Result<Access, CliError> {
    match Store::open(store) {
        Ok(s) => Ok(Access::Direct(s)),
        Err(e @ StoreError::Locked { .. }) => match Store::daemon_info(store) {
            Some(d) if Path::new(&d.mountpoint).join(".vault").is_dir() => {
                Ok(Access::Mounted(d.mountpoint.into()))
            }
            _ => Err(e.into()),
        },
        Err(e) => Err(e.into()),
    }
}

/// Explains a failed control-file operation with the daemon's own reason.
fn control_error(mp: &Path, e: std::io::Error) -> CliError {
    let reason = std::fs::read_to_string(mp.join(".vault/last-error")).unwrap_or_default();
    let reason = reason.trim();
    // The line starts with a timestamp; the message follows it.
    match reason.split_once(' ') {
        Some((_, msg)) if !msg.is_empty() => CliError(msg.to_string()),
        _ => CliError(format!("the mounted store refused the request: {e}")),
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON serializes")
    );
}

fn print_table(disks: &[Value]) {
    println!(
        "{:<24} {:>12} {:<16} {:<12} {:<32} STATE",
        "NAME", "SIZE", "SKU", "CIPHER", "ENCRYPTION"
    );
    for d in disks {
        let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<24} {:>12} {:<16} {:<12} {:<32} {}",
            s("name"),
            d["diskSizeBytes"].as_u64().unwrap_or(0),
            d["sku"]["name"].as_str().unwrap_or(""),
            s("cipher"),
            d["encryption"]["type"].as_str().unwrap_or(""),
            s("keyState"),
        );
    }
}

pub fn run(cmd: DiskCmd) -> Result<(), CliError> {
    match cmd {
        DiskCmd::Create {
            name,
            size,
            sku,
            cipher,
            store,
        } => {
            let opts = CreateOptions {
                size: parse_size(&size)?,
                sku: sku.parse::<Sku>()?,
                cipher: Some(cipher.parse::<CipherKind>()?),
            };
            match access(&store.store)? {
                Access::Direct(s) => {
                    s.create_disk(&name, &opts)?;
                }
                Access::Mounted(mp) => {
                    let line = format!("{name} {} sku={} cipher={}\n", opts.size, opts.sku, cipher);
                    let path = mp.join(".vault/disks/create");
                    std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(line.as_bytes()))
                        .map_err(|e| control_error(&mp, e))?;
                }
            }
            println!("created disk {name}");
            Ok(())
        }
        DiskCmd::List { json, store } => {
            let status = match access(&store.store)? {
                Access::Direct(s) => s.status_json(),
                Access::Mounted(mp) => {
                    serde_json::from_slice(&std::fs::read(mp.join(".vault/status.json"))?)?
                }
            };
            let disks = status["disks"].as_array().cloned().unwrap_or_default();
            if json {
                print_json(&Value::Array(disks));
            } else {
                print_table(&disks);
            }
            Ok(())
        }
        DiskCmd::Show { name, store } => {
            let v = match access(&store.store)? {
                Access::Direct(s) => s.disk_json(&*s.get_or_err(&name)?),
                Access::Mounted(mp) => {
                    let p = mp.join(".vault/disks").join(&name).join("disk.json");
                    match std::fs::read(&p) {
                        Ok(b) => serde_json::from_slice(&b)?,
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                            return Err(StoreError::DiskNotFound(name).into())
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
            };
            print_json(&v);
            Ok(())
        }
        DiskCmd::Delete { name, store } => {
            match access(&store.store)? {
                Access::Direct(s) => s.delete_disk(&name)?,
                Access::Mounted(mp) => match std::fs::remove_file(mp.join("disks").join(&name)) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        return Err(StoreError::DiskNotFound(name).into())
                    }
                    Err(e) => return Err(control_error(&mp, e)),
                },
            }
            println!("deleted disk {name}");
            Ok(())
        }
    }
}

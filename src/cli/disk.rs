//! `diskvault disk ...`.

use super::access::{print_json, word, Access, StoreArg};
use super::CliError;
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Create a disk: platform key by default, customer key with --disk-encryption-set.
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
        /// Disk encryption set (name or id) whose key wraps the disk's key.
        #[arg(long)]
        disk_encryption_set: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change a disk: move it to a customer key (only while nothing has it open), or its SKU.
    Update {
        name: String,
        /// EncryptionAtRestWithCustomerKey or EncryptionAtRestWithPlatformAndCustomerKeys.
        #[arg(long)]
        encryption_type: Option<String>,
        #[arg(long)]
        disk_encryption_set: Option<String>,
        #[arg(long)]
        sku: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Re-encrypt a disk's data under fresh data keys (online, crash-safe, resumable),
    /// as cryptsetup reencrypt does. Use it when a DEK itself may have leaked.
    Rekey {
        name: String,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
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

fn print_table(disks: &[Value]) {
    println!(
        "{:<24} {:>12} {:<16} {:<12} {:<44} STATE",
        "NAME", "SIZE", "SKU", "CIPHER", "ENCRYPTION"
    );
    for d in disks {
        let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
        println!(
            "{:<24} {:>12} {:<16} {:<12} {:<44} {}",
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
            disk_encryption_set,
            store,
        } => {
            crate::store::validate_name(&name)?;
            let a = Access::open(&store)?;
            let mut line = format!(
                "{} {} sku={} cipher={}",
                word(&name)?,
                word(&size)?,
                word(&sku)?,
                word(&cipher)?
            );
            if let Some(d) = &disk_encryption_set {
                line += &format!(" des={}", word(d)?);
            }
            a.write("disks/create", line.as_bytes())?;
            print_json(&a.read_json(&format!("disks/{name}/disk.json"))?);
        }
        DiskCmd::Update {
            name,
            encryption_type,
            disk_encryption_set,
            sku,
            store,
        } => {
            if encryption_type.is_none() && disk_encryption_set.is_none() && sku.is_none() {
                return Err(CliError(
                    "nothing to change; give --encryption-type, --disk-encryption-set or --sku"
                        .into(),
                ));
            }
            let a = Access::open(&store)?;
            if encryption_type.is_some() || disk_encryption_set.is_some() {
                let mut line = String::new();
                if let Some(t) = &encryption_type {
                    line += &format!("type={} ", word(t)?);
                }
                if let Some(d) = &disk_encryption_set {
                    line += &format!("des={}", word(d)?);
                }
                a.write(&format!("disks/{name}/encryption"), line.as_bytes())?;
            }
            if let Some(s) = &sku {
                a.write(&format!("disks/{name}/sku"), word(s)?.as_bytes())?;
            }
            print_json(&a.read_json(&format!("disks/{name}/disk.json"))?);
        }
        DiskCmd::Rekey { name, quiet, store } => {
            let a = Access::open(&store)?;
            let bar = indicatif::ProgressBar::new(0);
            if quiet {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            bar.set_style(
                indicatif::ProgressStyle::with_template(
                    "rekey {msg} [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_message(name.clone());
            match &a {
                Access::Direct(c) => {
                    c.store().rekey(&name, &|done, total| {
                        bar.set_length(total);
                        bar.set_position(done);
                    })?;
                }
                Access::Mounted(_) => {
                    let path = format!("disks/{name}/rekey");
                    a.write(&path, b"start")?;
                    loop {
                        let st = a.read_json(&path)?;
                        bar.set_length(st["totalBytes"].as_u64().unwrap_or(0));
                        bar.set_position(st["doneBytes"].as_u64().unwrap_or(0));
                        match st["state"].as_str() {
                            Some("done") => break,
                            Some("running") => {}
                            _ => {
                                return Err(CliError(format!(
                                    "rekey of disk '{name}' stopped: {}; run 'diskvault disk rekey {name}' again to resume",
                                    st["error"].as_str().unwrap_or("interrupted")
                                )))
                            }
                        }
                        // The daemon reports progress per chunk; poll it a few times a second.
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                }
            }
            bar.finish();
            println!(
                "rekeyed disk {name}: its data is under new data keys; the old ones are destroyed"
            );
        }
        DiskCmd::List { json, store } => {
            let a = Access::open(&store)?;
            let status = a.read_json("status.json")?;
            let disks = status["disks"].as_array().cloned().unwrap_or_default();
            if json {
                print_json(&Value::Array(disks));
            } else {
                print_table(&disks);
            }
        }
        DiskCmd::Show { name, store } => {
            let a = Access::open(&store)?;
            print_json(&a.read_json(&format!("disks/{name}/disk.json"))?);
        }
        DiskCmd::Delete { name, store } => {
            let a = Access::open(&store)?;
            match &a {
                Access::Direct(c) => c.store().delete_disk(&name)?,
                Access::Mounted(mp) => {
                    if let Err(e) = std::fs::remove_file(mp.join("disks").join(&name)) {
                        if e.kind() == std::io::ErrorKind::NotFound {
                            return Err(crate::store::StoreError::DiskNotFound(name).into());
                        }
                        return Err(a.mounted_error_pub(&format!("disks/{name}"), e));
                    }
                }
            }
            println!("deleted disk {name}");
        }
    }
    Ok(())
}

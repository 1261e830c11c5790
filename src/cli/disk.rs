//! `diskvault disk ...`.

use super::access::{print_reply, Access, StoreArg};
use super::{cell, human, print_object, print_rows, CliError, DiskName, Format, OutputArg};
use crate::control::DiskRequest;
use crate::crypto::CipherKind;
use crate::store::{parse_size, CreateOptions, Sku};
use crate::vault::{KeyId, ProviderKind};
use clap::Subcommand;
use serde_json::Value;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub(super) const PLATFORM_KEY_TYPE: &str = "EncryptionAtRestWithPlatformKey";

#[derive(Subcommand)]
pub enum DiskCmd {
    /// Create a disk: platform key by default, customer key with --disk-encryption-set.
    ///
    /// With --source SNAPSHOT|IMAGE|DISK the disk starts with the source's content. It
    /// is instant when it keeps the source's keys (the same disk encryption set, which
    /// a customer-key source requires). From a platform-key source under a customer
    /// key (--disk-encryption-set) the data must be re-encrypted: a full copy, with a
    /// progress bar, not an instant clone.
    Create {
        #[command(flatten)]
        name: DiskName,
        /// Size: a bare number is GiB, as in az (30 is 30 GiB); or 512M, 1T, 4096B
        /// (binary units), a multiple of 512 bytes. With --source: the source's size
        /// unless given (it can only grow).
        #[arg(long, required_unless_present_any = ["size_gb", "source"], conflicts_with = "size_gb")]
        size: Option<String>,
        /// Size in GiB, as in az (instead of --size).
        #[arg(long)]
        size_gb: Option<u64>,
        /// Premium_LRS, StandardSSD_LRS, Standard_LRS, UltraSSD_LRS or PremiumV2_LRS.
        #[arg(long, default_value = "Premium_LRS")]
        sku: String,
        /// aes-256-xts (default) or aes-256-ctr (weaker when data is overwritten).
        #[arg(long, conflicts_with = "source")]
        cipher: Option<String>,
        /// A snapshot, image or disk to start from (name or /diskvault/snapshots/NAME).
        #[arg(long)]
        source: Option<String>,
        /// Disk encryption set (name or id) whose key wraps the disk's key.
        #[arg(long)]
        disk_encryption_set: Option<String>,
        /// As in az: EncryptionAtRestWithPlatformKey (no set), or the type of the
        /// --disk-encryption-set; checked, since the set decides it.
        #[arg(long)]
        encryption_type: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change a disk: move it to a customer key (only while nothing has it open), or its SKU.
    Update {
        #[command(flatten)]
        name: DiskName,
        /// EncryptionAtRestWithCustomerKey or EncryptionAtRestWithPlatformAndCustomerKeys.
        #[arg(long)]
        encryption_type: Option<String>,
        /// The disk encryption set (name or id) whose key will wrap the disk's key.
        #[arg(long)]
        disk_encryption_set: Option<String>,
        /// The new SKU, e.g. Standard_LRS.
        #[arg(long)]
        sku: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Re-encrypt a disk's data under fresh data keys (online, crash-safe, resumable),
    /// as cryptsetup reencrypt does. Use it when a DEK itself may have leaked.
    Rekey {
        #[command(flatten)]
        name: DiskName,
        /// No progress bar or progress lines.
        #[arg(long)]
        quiet: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List disks: size, SKU, encryption, set and key, key state, rekey state.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one disk as JSON, like `az disk show`.
    Show {
        #[command(flatten)]
        name: DiskName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a disk and destroy its wrapped key (crypto-shred).
    Delete {
        #[command(flatten)]
        name: DiskName,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// `name/version` (version shortened) of a key URL; "platform key" for the platform's.
fn short_kid(kid: &str) -> String {
    if KeyId::parse(kid).is_ok_and(|k| k.provider() == ProviderKind::Platform) {
        return "platform key".into();
    }
    match kid.split_once("/keys/") {
        Some((_, rest)) => match rest.split_once('/') {
            Some((name, ver)) => format!("{name}/{}", &ver[..ver.len().min(8)]),
            None => rest.to_string(),
        },
        None => kid.to_string(),
    }
}

/// The set and the customer key of a disk, e.g. `set1 cmk1/6f0e1a2b`.
fn set_and_key(d: &Value) -> String {
    let set = d["encryption"]["diskEncryptionSetId"]
        .as_str()
        .map(|id| id.rsplit('/').next().unwrap_or(id));
    let kids: Vec<&str> = d["layerKeyIds"]
        .as_array()
        .map(|a| a.iter().filter_map(|k| k.as_str()).collect())
        .unwrap_or_default();
    let key = kids
        .iter()
        .find(|k| !KeyId::parse(k).is_ok_and(|k| k.provider() == ProviderKind::Platform))
        .or(kids.first())
        .map(|k| short_kid(k))
        .unwrap_or_default();
    match set {
        Some(s) => format!("{s} {key}"),
        None => key,
    }
}

/// The rekey state for the table: `-` when none ran, else the state and how far.
fn rekey_cell(a: &Access, name: &str) -> String {
    let Ok(st) = a.read_json(&format!("disks/{name}/rekey")) else {
        return "?".into();
    };
    let state = st["state"].as_str().unwrap_or("");
    let (done, total) = (
        st["doneBytes"].as_u64().unwrap_or(0),
        st["totalBytes"].as_u64().unwrap_or(0),
    );
    match state {
        "" | "idle" => "-".into(),
        "done" => "done".into(),
        s if total > 0 => format!("{s} {}%", done * 100 / total),
        s => s.into(),
    }
}

fn print_disks(a: &Access, disks: &[Value], fmt: Format) {
    let header = [
        "NAME",
        "SIZE",
        "SKU",
        "ENCRYPTION",
        "SET/KEY",
        "KEY STATE",
        "REKEY",
    ];
    let rows = disks
        .iter()
        .map(|d| {
            let name = d["name"].as_str().unwrap_or("");
            let size = d["diskSizeBytes"].as_u64().unwrap_or(0);
            let enc = cell(&d["encryption"]["type"]);
            vec![
                name.to_string(),
                match fmt {
                    Format::Tsv => size.to_string(),
                    _ => human(size),
                },
                cell(&d["sku"]["name"]),
                match fmt {
                    Format::Tsv => enc,
                    // The common prefix only widens the table.
                    _ => enc
                        .strip_prefix("EncryptionAtRestWith")
                        .map(String::from)
                        .unwrap_or(enc),
                },
                set_and_key(d),
                cell(&d["keyState"]),
                rekey_cell(a, name),
            ]
        })
        .collect();
    print_rows(header.map(String::from).to_vec(), rows, fmt);
}

/// Rekey progress: a bar on a terminal; otherwise a line at every 5% and at least every
/// few seconds, so logs and pipes see it too.
struct Progress {
    /// What is being done: `rekey` or `copy`.
    verb: &'static str,
    name: String,
    quiet: bool,
    tty: bool,
    bar: Option<indicatif::ProgressBar>,
    last_pct: Option<u64>,
    last_line: Instant,
}

const LINE_EVERY: Duration = Duration::from_secs(5);

impl Progress {
    fn new(name: &str, quiet: bool) -> Self {
        Self::doing("rekey", name, quiet)
    }

    fn doing(verb: &'static str, name: &str, quiet: bool) -> Self {
        Progress {
            verb,
            name: name.to_string(),
            quiet,
            tty: std::io::stderr().is_terminal(),
            bar: None,
            last_pct: None,
            last_line: Instant::now(),
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        self.show(done, total, false);
    }

    fn show(&mut self, done: u64, total: u64, last: bool) {
        // Nothing is known until the total is: never draw `0 B/0 B`.
        if self.quiet || total == 0 {
            return;
        }
        if self.tty {
            let bar = self.bar.get_or_insert_with(|| {
                let b = indicatif::ProgressBar::new(total);
                b.set_style(
                    indicatif::ProgressStyle::with_template(&format!(
                        "{} {{msg}} [{{bar:40}}] {{bytes}}/{{total_bytes}} ({{bytes_per_sec}}, {{eta}})",
                        self.verb
                    ))
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_message(self.name.clone());
                b
            });
            bar.set_length(total);
            bar.set_position(done);
            return;
        }
        let pct = done.min(total) * 100 / total;
        let due = match self.last_pct {
            None => true,
            Some(prev) if last => prev < 100,
            Some(prev) => pct >= prev + 5 || self.last_line.elapsed() >= LINE_EVERY,
        };
        if due {
            eprintln!(
                "{} {}: {pct}% ({} of {})",
                self.verb,
                self.name,
                human(done),
                human(total)
            );
            self.last_pct = Some(pct);
            self.last_line = Instant::now();
        }
    }

    fn finish(&mut self, total: u64) {
        self.show(total, total, true);
        if let Some(b) = &self.bar {
            b.finish();
        }
    }
}

fn rekey(a: &Access, name: &str, quiet: bool) -> Result<(), CliError> {
    let progress = std::cell::RefCell::new(Progress::new(name, quiet));
    let total = match a {
        Access::Direct(c) => {
            let total = std::cell::Cell::new(0);
            c.store().rekey(name, &|done, t| {
                total.set(t);
                progress.borrow_mut().update(done, t);
            })?;
            total.get()
        }
        Access::Mounted(_) => {
            let path = format!("disks/{name}/rekey");
            a.send(DiskRequest::Rekey { name: name.into() })?;
            loop {
                let st = a.read_json(&path)?;
                let total = st["totalBytes"].as_u64().unwrap_or(0);
                progress
                    .borrow_mut()
                    .update(st["doneBytes"].as_u64().unwrap_or(0), total);
                match st["state"].as_str() {
                    Some("done") => break total,
                    Some("running") => {}
                    _ => {
                        return Err(CliError(format!(
                            "rekey of disk '{name}' stopped: {}; run 'diskvault disk rekey {name}' again to resume",
                            st["error"].as_str().unwrap_or("interrupted")
                        )))
                    }
                }
                // The daemon reports progress per chunk; poll it a few times a second.
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    };
    progress.borrow_mut().finish(total);
    println!("rekeyed disk {name}: its data is under new data keys; the old ones are destroyed");
    Ok(())
}

pub fn run(cmd: DiskCmd) -> Result<(), CliError> {
    match cmd {
        DiskCmd::Create {
            name,
            size,
            size_gb,
            sku,
            cipher,
            disk_encryption_set,
            encryption_type,
            source,
            store,
        } => {
            let name = name.get();
            crate::store::validate_name(name)?;
            let size = match (size, size_gb) {
                (Some(s), _) => parse_size(&s)?,
                (None, Some(0)) => return Err(CliError(
                    "--size-gb is a whole number of GiB, at least 1 (or --size 512M, --size 4096B)"
                        .into(),
                )),
                (None, Some(g)) => parse_size(&format!("{g}G"))?,
                (None, None) if source.is_some() => 0,
                (None, None) => unreachable!("clap requires --size or --size-gb"),
            };
            let cipher = match (&source, cipher) {
                (Some(_), _) => None,
                (None, c) => Some(
                    c.as_deref()
                        .unwrap_or("aes-256-xts")
                        .parse::<CipherKind>()?,
                ),
            };
            let options = CreateOptions {
                size,
                sku: sku.parse::<Sku>()?,
                cipher,
                disk_encryption_set: disk_encryption_set.clone(),
                placement: super::output::placement(),
            };
            let a = Access::open(&store)?;
            if let (Some(t), None) = (&encryption_type, &source) {
                super::disk_put::check_create_type(&a, t, disk_encryption_set.as_deref())?;
            }
            if super::disk_put::put_existing(&a, name, &options, source.as_deref())? {
                return Ok(());
            }
            // A disk from a source under new keys is a full, re-encrypting copy: show
            // its progress when it runs here.
            if let (Access::Direct(c), Some(src)) = (&a, &source) {
                if options.disk_encryption_set.is_some() {
                    let progress = std::cell::RefCell::new(Progress::doing("copy", name, false));
                    let opts = crate::store::FromSourceOptions {
                        size: options.size,
                        sku: options.sku,
                        disk_encryption_set: options.disk_encryption_set.clone(),
                        encryption_type: encryption_type
                            .as_deref()
                            .map(|t| t.parse::<crate::store::EncryptionType>())
                            .transpose()?,
                        placement: options.placement.clone(),
                    };
                    let disk = c.store().create_disk_from(name, src, &opts, &|d, t| {
                        progress.borrow_mut().update(d, t)
                    })?;
                    // A shared (instant) clone reports no progress: nothing to finish.
                    let mut p = progress.borrow_mut();
                    if p.last_pct.is_some() || p.bar.is_some() {
                        p.finish(disk.size());
                    }
                    super::access::print_json(&crate::control::view::disk(c.store(), &disk));
                    return Ok(());
                }
            }
            // Through the mount the daemon copies while this request waits: watch the
            // staging disk grow meanwhile.
            let watch = match (&a, &source, &options.disk_encryption_set) {
                (Access::Mounted(mp), Some(src), Some(_)) => Some((mp.clone(), src.clone())),
                _ => None,
            };
            let req = DiskRequest::Create {
                name: name.into(),
                options,
                encryption_type: encryption_type.filter(|_| source.is_some()),
                source,
            };
            let reply = match watch {
                Some((mp, src)) => {
                    let done = std::sync::atomic::AtomicBool::new(false);
                    std::thread::scope(|s| {
                        let w = s.spawn(|| watch_copy(Access::Mounted(mp), name, &src, &done));
                        let r = a.send(req);
                        done.store(true, std::sync::atomic::Ordering::Release);
                        let _ = w.join();
                        r
                    })?
                }
                None => a.send(req)?,
            };
            print_reply(&a, reply, &format!("disks/{name}/disk.json"))?;
        }
        DiskCmd::Update {
            name,
            encryption_type,
            disk_encryption_set,
            sku,
            store,
        } => {
            let name = name.get();
            if encryption_type.is_none() && disk_encryption_set.is_none() && sku.is_none() {
                return Err(CliError(
                    "nothing to change; give --encryption-type, --disk-encryption-set or --sku"
                        .into(),
                ));
            }
            let sku = sku.map(|s| s.parse::<Sku>()).transpose()?;
            let a = Access::open(&store)?;
            super::check_group_of(&a, &format!("disks/{name}/disk.json"))?;
            let mut reply = None;
            if encryption_type.is_some() || disk_encryption_set.is_some() {
                reply = a.send(DiskRequest::Encryption {
                    name: name.into(),
                    encryption_type,
                    set: disk_encryption_set,
                })?;
            }
            if let Some(sku) = sku {
                reply = a.send(DiskRequest::Sku {
                    name: name.into(),
                    sku,
                })?;
            }
            print_reply(&a, reply, &format!("disks/{name}/disk.json"))?;
        }
        DiskCmd::Rekey { name, quiet, store } => {
            let a = Access::open(&store)?;
            rekey(&a, name.get(), quiet)?;
        }
        DiskCmd::List { output, store } => {
            let a = Access::open(&store)?;
            let disks = a
                .read_json("disks.json")?
                .as_array()
                .cloned()
                .unwrap_or_default();
            match output.format(Format::Table) {
                Format::Json => super::access::print_json(&Value::Array(disks)),
                fmt => print_disks(&a, &disks, fmt),
            }
        }
        DiskCmd::Show {
            name,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let d = a.read_json(&format!("disks/{}/disk.json", name.get()))?;
            print_object(&d, output.format(Format::Json));
        }
        DiskCmd::Delete { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            super::check_group_of(&a, &format!("disks/{name}/disk.json"))?;
            // What is about to be destroyed, for the message.
            let what = a
                .read_json(&format!("disks/{name}/disk.json"))
                .map(|d| {
                    format!(
                        " ({}, {}, {})",
                        human(d["diskSizeBytes"].as_u64().unwrap_or(0)),
                        cell(&d["encryption"]["type"]),
                        set_and_key(&d)
                    )
                })
                .unwrap_or_default();
            // As az: on a terminal, ask unless --yes. Without one (scripts) it
            // proceeds, as diskvault always did.
            if std::io::stdin().is_terminal() && !super::output::globals().yes {
                eprint!("Are you sure you want to delete disk {name}{what}? Its data key is destroyed. (y/n): ");
                let mut answer = String::new();
                std::io::stdin().read_line(&mut answer)?;
                if !matches!(answer.trim(), "y" | "Y" | "yes") {
                    return Err(CliError(format!(
                        "disk {name} was not deleted (answer y, or give --yes)"
                    )));
                }
            }
            a.send(DiskRequest::Delete { name: name.into() })?;
            println!("deleted disk {name}{what}; its data key is destroyed");
        }
    }
    Ok(())
}

/// Progress of a re-encrypting copy run by the daemon: the staging disk
/// (`.NAME.copying`) against the bytes the source holds, until `done`.
fn watch_copy(a: Access, name: &str, source: &str, done: &std::sync::atomic::AtomicBool) {
    use std::sync::atomic::Ordering;
    let bare = source.rsplit('/').next().unwrap_or(source);
    let total = [
        format!("snapshots/{bare}/snapshot.json"),
        format!("images/{bare}/image.json"),
        format!("disks/{bare}/disk.json"),
    ]
    .iter()
    .find_map(|p| a.read_json(p).ok())
    .map(|v| {
        let used = v["usedBytes"]["unique"].as_u64().unwrap_or(0)
            + v["usedBytes"]["shared"].as_u64().unwrap_or(0);
        if used > 0 {
            used
        } else {
            v["diskSizeBytes"].as_u64().unwrap_or(0)
        }
    })
    .unwrap_or(0);
    let mut p = Progress::doing("copy", name, false);
    let path = format!("disks/.{name}.copying/disk.json");
    while !done.load(Ordering::Acquire) {
        if let Ok(v) = a.read_json(&path) {
            p.update(v["allocatedBytes"].as_u64().unwrap_or(0).min(total), total);
        }
        // A display refresh, not synchronisation: the copy ends when `done` is set.
        std::thread::sleep(Duration::from_millis(200));
    }
    if p.last_pct.is_some() || p.bar.is_some() {
        p.finish(total);
    }
}

//! `diskvault snapshot ...` and `diskvault image ...`.

use super::access::{print_json, print_reply, Access, StoreArg};
use super::{cell, human, print_object, print_rows, CliError, Format, ObjName, OutputArg};
use crate::control::{CopyKind, CopyRequest};
use clap::Subcommand;
use serde_json::Value;

#[derive(Subcommand)]
pub enum SnapshotCmd {
    /// Take a snapshot: the disk's content at this moment, instantly and without
    /// copying (it shares the disk's data and keys until the disk diverges).
    /// Snapshots of customer-key disks use the disk's disk encryption set.
    Create {
        #[command(flatten)]
        name: ObjName,
        /// The disk (or snapshot) to copy: a name or /diskvault/disks/NAME.
        #[arg(long)]
        source: String,
        /// `true` (the default here, unlike az; a bare flag means true): instant, sharing
        /// unchanged data with the disk. `false`: a full copy, readable at once and
        /// copied into its own delta in the background (`completionPercent`).
        #[arg(long, num_args = 0..=1, default_missing_value = "true", value_name = "true|false")]
        incremental: Option<bool>,
        /// Must be the source's set, if given (a disk and its snapshots share one).
        #[arg(long)]
        disk_encryption_set: Option<String>,
        /// Must be the source's encryption type, if given.
        #[arg(long)]
        encryption_type: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List snapshots: size, source, encryption, key state, bytes used.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one snapshot as JSON, like `az snapshot show`.
    Show {
        #[command(flatten)]
        name: ObjName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a snapshot; space only it used is freed, every other object keeps its content.
    Delete {
        #[command(flatten)]
        name: ObjName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The byte ranges that changed from snapshot OLD to NEW (a later snapshot of the
    /// same disk, or the disk; without NEW, OLD's disk), as JSON page and clear
    /// ranges with inclusive ends, like Azure's page-range diff.
    Diff {
        /// The older snapshot.
        old: String,
        /// The newer snapshot or the disk.
        new: Option<String>,
        /// At most N ranges (page and clear ranges together); the reply's
        /// `nextMarker` continues (Azure's maxresults).
        #[arg(long, value_name = "N")]
        max_ranges: Option<u64>,
        /// Go on from a previous page's `nextMarker`.
        #[arg(long)]
        marker: Option<String>,
        #[command(flatten)]
        store: StoreArg,
    },
}

/// An image's direct-kernel boot definition: VMs made from it boot this kernel
/// unless `vm create --kernel` gives another.
#[derive(clap::Args)]
pub struct BootArgs {
    /// A kernel on this host (its path is recorded, not its content).
    #[arg(long)]
    kernel: Option<std::path::PathBuf>,
    /// An initrd on this host, for --kernel.
    #[arg(long, requires = "kernel")]
    initrd: Option<std::path::PathBuf>,
    /// The kernel command line, for --kernel.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
}

impl BootArgs {
    fn boot(&self) -> Result<Option<crate::store::meta::Boot>, CliError> {
        let abs = |p: &std::path::PathBuf| -> Result<String, CliError> {
            if !p.is_file() {
                return Err(CliError(format!(
                    "{} is not a file; give the path of a kernel or initrd on this host",
                    p.display()
                )));
            }
            Ok(std::path::absolute(p)?.display().to_string())
        };
        Ok(match &self.kernel {
            None => None,
            Some(k) => Some(crate::store::meta::Boot {
                kernel: abs(k)?,
                initrd: self.initrd.as_ref().map(abs).transpose()?,
                append: self.append.clone(),
            }),
        })
    }
}

#[derive(Subcommand)]
pub enum ImageCmd {
    /// Capture an image of a disk or snapshot, instantly (it shares their data).
    Create {
        #[command(flatten)]
        name: ObjName,
        /// The disk or snapshot to capture.
        #[arg(long)]
        source: String,
        /// Must be the source's set, if given.
        #[arg(long)]
        disk_encryption_set: Option<String>,
        #[command(flatten)]
        boot: BootArgs,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Set or clear how VMs made from the image boot (--kernel, or --no-boot).
    Update {
        #[command(flatten)]
        name: ObjName,
        #[command(flatten)]
        boot: BootArgs,
        /// Clear the boot definition: VMs boot through the BIOS from the OS disk.
        #[arg(long, conflicts_with = "kernel")]
        no_boot: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List images.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show one image as JSON, like `az image show`.
    Show {
        #[command(flatten)]
        name: ObjName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete an image; disks made from it keep their content.
    Delete {
        #[command(flatten)]
        name: ObjName,
        #[command(flatten)]
        store: StoreArg,
    },
}

fn print_list(objs: &[Value], fmt: Format) {
    let header = [
        "NAME",
        "SIZE",
        "SOURCE",
        "ENCRYPTION",
        "KEY STATE",
        "UNIQUE",
        "SHARED",
    ];
    let rows = objs
        .iter()
        .map(|o| {
            let size = |v: &Value| match fmt {
                Format::Tsv => v.as_u64().unwrap_or(0).to_string(),
                _ => human(v.as_u64().unwrap_or(0)),
            };
            vec![
                cell(&o["name"]),
                size(&o["diskSizeBytes"]),
                cell(&o["creationData"]["sourceResourceId"]),
                cell(&o["encryption"]["type"]),
                cell(&o["keyState"]),
                size(&o["usedBytes"]["unique"]),
                size(&o["usedBytes"]["shared"]),
            ]
        })
        .collect::<Vec<_>>();
    print_rows(header.map(String::from).to_vec(), rows, fmt);
}

fn list(store: &StoreArg, output: &OutputArg, key: &str) -> Result<(), CliError> {
    let a = Access::open(store)?;
    let objs = a
        .read_json(&format!("{key}.json"))?
        .as_array()
        .cloned()
        .unwrap_or_default();
    match output.format(Format::Table) {
        Format::Json => print_json(&Value::Array(objs)),
        fmt => print_list(&objs, fmt),
    }
    Ok(())
}

fn delete(kind: CopyKind, name: &str, store: &StoreArg) -> Result<(), CliError> {
    crate::store::validate_name(name)?;
    let a = Access::open(store)?;
    a.send(CopyRequest::Delete {
        kind,
        name: name.into(),
    })?;
    println!("deleted {} {name}", kind.object().noun());
    Ok(())
}

pub fn run_snapshot(cmd: SnapshotCmd) -> Result<(), CliError> {
    match cmd {
        SnapshotCmd::Create {
            name,
            source,
            incremental,
            disk_encryption_set,
            encryption_type,
            store,
        } => {
            let name = name.get();
            crate::store::validate_object_name(crate::store::ObjectKind::Snapshot, name)?;
            let a = Access::open(&store)?;
            let reply = a.send(CopyRequest::Create {
                kind: CopyKind::Snapshot,
                name: name.into(),
                source,
                incremental: incremental.unwrap_or(true),
                set: disk_encryption_set,
                encryption_type,
                placement: super::output::placement(),
                boot: None,
            })?;
            print_reply(&a, reply, &format!("snapshots/{name}/snapshot.json"))?;
        }
        SnapshotCmd::List { output, store } => list(&store, &output, "snapshots")?,
        SnapshotCmd::Show {
            name,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let d = a.read_json(&format!("snapshots/{}/snapshot.json", name.get()))?;
            print_object(&d, output.format(Format::Json));
        }
        SnapshotCmd::Delete { name, store } => delete(CopyKind::Snapshot, name.get(), &store)?,
        SnapshotCmd::Diff {
            old,
            new,
            max_ranges,
            marker,
            store,
        } => {
            let a = Access::open(&store)?;
            let reply = a.send(CopyRequest::Diff {
                old,
                new,
                max_ranges,
                marker,
            })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
    }
    Ok(())
}

pub fn run_image(cmd: ImageCmd) -> Result<(), CliError> {
    match cmd {
        ImageCmd::Create {
            name,
            source,
            disk_encryption_set,
            boot,
            store,
        } => {
            let name = name.get();
            crate::store::validate_object_name(crate::store::ObjectKind::Image, name)?;
            let boot = boot.boot()?;
            let a = Access::open(&store)?;
            let reply = a.send(CopyRequest::Create {
                kind: CopyKind::Image,
                name: name.into(),
                source,
                incremental: false,
                set: disk_encryption_set,
                encryption_type: None,
                placement: super::output::placement(),
                boot,
            })?;
            print_reply(&a, reply, &format!("images/{name}/image.json"))?;
        }
        ImageCmd::Update {
            name,
            boot,
            no_boot,
            store,
        } => {
            let b = boot.boot()?;
            if b.is_none() && !no_boot {
                return Err(CliError(
                    "nothing to change; give --kernel PATH [--initrd PATH] [--append LINE], or --no-boot".into(),
                ));
            }
            let a = Access::open(&store)?;
            let name = name.get();
            let reply = a.send(CopyRequest::SetBoot {
                name: name.into(),
                boot: b,
            })?;
            print_reply(&a, reply, &format!("images/{name}/image.json"))?;
        }
        ImageCmd::List { output, store } => list(&store, &output, "images")?,
        ImageCmd::Show {
            name,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let d = a.read_json(&format!("images/{}/image.json", name.get()))?;
            print_object(&d, output.format(Format::Json));
        }
        ImageCmd::Delete { name, store } => delete(CopyKind::Image, name.get(), &store)?,
    }
    Ok(())
}

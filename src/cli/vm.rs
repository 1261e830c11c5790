//! `diskvault vm ...`: virtual machines on QEMU, in az's vocabulary.

use super::access::{print_json, Access, StoreArg};
use super::{cell, print_object, print_rows, CliError, Format, OutputArg};
use crate::control::VmRequest;
use crate::vm::CreateSpec;
use clap::Subcommand;
use serde_json::Value;

/// A VM's name, positional or as az's `-n/--name`.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
pub struct VmName {
    /// The VM's name.
    #[arg(value_name = "NAME")]
    name: Option<String>,
    /// The VM's name, as in az (instead of the positional NAME).
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    name_opt: Option<String>,
    /// The VM's resource id, as az's --ids (instead of the name).
    #[arg(long = "ids", value_name = "ID")]
    ids: Option<String>,
}

impl From<VmName> for String {
    fn from(n: VmName) -> String {
        n.get().to_string()
    }
}

impl VmName {
    fn get(&self) -> &str {
        super::id_name_of(
            self.name
                .as_deref()
                .or(self.name_opt.as_deref())
                .or(self.ids.as_deref())
                .expect("clap requires one"),
            &[crate::store::arm::ResType::Vm],
        )
    }
}

// Parsed once per run: the size of the biggest variant costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
pub enum VmCmd {
    /// Create a VM: its OS disk from an image (or an existing disk), empty data disks
    /// with their own encryption, and a QEMU definition; then start it (the store
    /// must be mounted to start). Disks are named NAME_OsDisk and NAME_DataDisk_LUN.
    Create {
        #[command(flatten)]
        name: VmName,
        /// The image for the OS disk (`diskvault image list`).
        #[arg(long, conflicts_with = "attach_os_disk")]
        image: Option<String>,
        /// Use this existing disk as the OS disk.
        #[arg(long)]
        attach_os_disk: Option<String>,
        /// Disk encryption set for the OS disk made from --image.
        #[arg(long)]
        os_disk_encryption_set: Option<String>,
        /// OS disk size in GB (at least the image's); default: the image's.
        #[arg(long)]
        os_disk_size_gb: Option<u64>,
        /// SKU of the new disks: Premium_LRS (default), StandardSSD_LRS, Standard_LRS,
        /// UltraSSD_LRS or PremiumV2_LRS. It decides what revocation does to the VM.
        #[arg(long)]
        storage_sku: Option<String>,
        /// Empty data disks to create, sizes in GB (LUN 0, 1, ...).
        #[arg(long, num_args = 1..)]
        data_disk_sizes_gb: Vec<u64>,
        /// A disk encryption set per data disk, in the same order.
        #[arg(long, num_args = 1..)]
        data_disk_encryption_sets: Vec<String>,
        /// VM size: vCPUs and memory (Standard_B1ls, Standard_B1s (default),
        /// Standard_B1ms, Standard_B2s, Standard_DS1_v2, Standard_D2s_v3,
        /// Standard_DS3_v2, Standard_D4s_v3).
        #[arg(long)]
        size: Option<String>,
        /// Boot this kernel directly (QEMU -kernel); without an OS disk the VM runs
        /// from --initrd alone.
        #[arg(long)]
        kernel: Option<String>,
        /// The initrd for --kernel.
        #[arg(long)]
        initrd: Option<String>,
        /// The kernel command line for --kernel (e.g. "console=ttyS0").
        #[arg(long, allow_hyphen_values = true)]
        append: Option<String>,
        /// Only define the VM; don't start it.
        #[arg(long)]
        no_start: bool,
        /// The guest's admin user, as in az (recorded on the VM).
        #[arg(long)]
        admin_username: Option<String>,
        /// Accepted as in az and recorded; a diskvault guest image has no sshd.
        #[arg(long)]
        generate_ssh_keys: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Start a stopped or deallocated VM; refused while one of its disks' keys is revoked.
    Start {
        #[command(flatten)]
        name: VmName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Power off a VM (QMP quit, like `az vm stop --skip-shutdown`); it stays allocated.
    Stop {
        #[command(flatten)]
        name: VmName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Power off a VM and release it: its disks become Reserved.
    Deallocate {
        #[command(flatten)]
        name: VmName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Reset a running VM.
    Restart {
        #[command(flatten)]
        name: VmName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a VM as JSON, like `az vm show -d`: power state, disks, QEMU pid.
    Show {
        #[command(flatten)]
        name: VmName,
        /// As in az; the details (power state, disks' key state) are always shown.
        #[arg(short = 'd', long)]
        show_details: bool,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List VMs with their power state.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete a VM (powering it off first); its disks stay.
    Delete {
        #[command(flatten)]
        name: VmName,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Attach or detach data disks (hot-plugged while the VM runs).
    Disk {
        #[command(subcommand)]
        cmd: VmDiskCmd,
    },
    /// Put a QEMU you started under diskvault's revocation rules: it is stopped
    /// (QMP quit) when a key its disks need is revoked.
    Register {
        #[command(flatten)]
        name: VmName,
        /// QEMU's QMP socket (start QEMU with -qmp unix:SOCKET,server=on,wait=off).
        #[arg(long)]
        qmp: std::path::PathBuf,
        /// A disk the QEMU uses (MOUNT/disks/DISK); repeat for each.
        #[arg(long = "disk", required = true)]
        disks: Vec<String>,
        #[command(flatten)]
        store: StoreArg,
    },
}

#[derive(Subcommand)]
pub enum VmDiskCmd {
    /// Attach a disk at a LUN (the lowest free one by default).
    Attach {
        /// The VM.
        #[arg(long)]
        vm_name: String,
        /// The disk (name or id).
        #[arg(
            short = 'n',
            long,
            required_unless_present = "ids",
            conflicts_with = "ids"
        )]
        name: Option<String>,
        /// The disk's id, as the seed writes it (`--ids $diskId`).
        #[arg(long)]
        ids: Option<String>,
        /// The LUN (0-63).
        #[arg(long, value_parser = clap::value_parser!(u32).range(0..=63))]
        lun: Option<u32>,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Detach a data disk; on a running VM the guest must release it.
    Detach {
        /// The VM.
        #[arg(long)]
        vm_name: String,
        /// The disk.
        #[arg(short = 'n', long)]
        name: String,
        #[command(flatten)]
        store: StoreArg,
    },
}

fn send_show(store: &StoreArg, req: VmRequest) -> Result<(), CliError> {
    let a = Access::open(store)?;
    if let Some(v) = a.send(req)? {
        print_json(&v);
    }
    Ok(())
}

/// A power operation: az prints nothing unless an output format is asked for.
fn send_quiet(store: &StoreArg, req: VmRequest) -> Result<(), CliError> {
    let a = Access::open(store)?;
    let reply = a.send(req)?;
    if let (Some(v), Some(_)) = (reply, super::output::asked()) {
        print_json(&v);
    }
    Ok(())
}

fn print_list(vms: &[Value], fmt: Format) {
    let header = [
        "NAME",
        "POWER STATE",
        "SIZE",
        "OS DISK",
        "DATA DISKS",
        "PID",
    ];
    let rows = vms
        .iter()
        .map(|v| {
            let data: Vec<String> = v["storageProfile"]["dataDisks"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|d| format!("{}:{}", cell(&d["lun"]), cell(&d["name"])))
                        .collect()
                })
                .unwrap_or_default();
            vec![
                cell(&v["name"]),
                cell(&v["powerState"]),
                cell(&v["hardwareProfile"]["vmSize"]),
                cell(&v["storageProfile"]["osDisk"]["name"]),
                data.join(","),
                cell(&v["diskvault"]["pid"]),
            ]
        })
        .collect();
    print_rows(header.map(String::from).to_vec(), rows, fmt);
}

pub fn run(cmd: VmCmd) -> Result<(), CliError> {
    match cmd {
        VmCmd::Create {
            name,
            image,
            attach_os_disk,
            os_disk_encryption_set,
            os_disk_size_gb,
            storage_sku,
            data_disk_sizes_gb,
            data_disk_encryption_sets,
            size,
            kernel,
            initrd,
            append,
            no_start,
            admin_username,
            generate_ssh_keys,
            store,
        } => {
            let name = name.get();
            crate::store::validate_vm_name(name)?;
            // Paths are the caller's: resolve them here, the daemon has another cwd.
            let abs = |p: Option<String>| -> Result<Option<String>, CliError> {
                Ok(
                    p.map(|p| std::path::absolute(&p).map(|a| a.display().to_string()))
                        .transpose()?,
                )
            };
            let spec = CreateSpec {
                name: name.into(),
                image,
                attach_os_disk,
                os_disk_encryption_set,
                os_disk_size_gb,
                storage_sku,
                data_disk_sizes_gb,
                data_disk_encryption_sets,
                size,
                kernel: abs(kernel)?,
                initrd: abs(initrd)?,
                append,
                no_start,
                placement: super::output::placement(),
                admin_username,
                generate_ssh_keys,
                scale_set: None,
            };
            send_show(&store, VmRequest::Create(Box::new(spec)))?;
        }
        VmCmd::Start { name, store } => send_quiet(&store, VmRequest::Start { name: name.into() })?,
        VmCmd::Stop { name, store } => send_quiet(&store, VmRequest::Stop { name: name.into() })?,
        VmCmd::Deallocate { name, store } => {
            send_quiet(&store, VmRequest::Deallocate { name: name.into() })?
        }
        VmCmd::Restart { name, store } => {
            send_quiet(&store, VmRequest::Restart { name: name.into() })?
        }
        VmCmd::Show {
            name,
            show_details: _,
            output,
            store,
        } => {
            let a = Access::open(&store)?;
            let v = a.read_json(&format!("vms/{}/vm.json", name.get()))?;
            print_object(&v, output.format(Format::Json));
        }
        VmCmd::List { output, store } => {
            let a = Access::open(&store)?;
            let status = a.read_json("status.json")?;
            let mut vms = Vec::new();
            for v in status["virtualMachines"].as_array().into_iter().flatten() {
                let n = cell(&v["name"]);
                vms.push(a.read_json(&format!("vms/{n}/vm.json"))?);
            }
            match output.format(Format::Table) {
                Format::Json => print_json(&Value::Array(vms)),
                fmt => print_list(&vms, fmt),
            }
        }
        VmCmd::Delete { name, store } => {
            let name = name.get();
            let a = Access::open(&store)?;
            a.send(VmRequest::Delete { name: name.into() })?;
            println!("deleted VM {name}; its disks stay");
        }
        VmCmd::Disk { cmd } => match cmd {
            VmDiskCmd::Attach {
                vm_name,
                name,
                ids,
                lun,
                store,
            } => {
                // An id is resolved by the store, which checks its group too.
                let disk = name.or(ids).expect("clap requires one");
                send_show(
                    &store,
                    VmRequest::Attach {
                        vm: vm_name,
                        disk,
                        lun,
                    },
                )?
            }
            VmDiskCmd::Detach {
                vm_name,
                name,
                store,
            } => send_show(
                &store,
                VmRequest::Detach {
                    vm: vm_name,
                    disk: name,
                },
            )?,
        },
        VmCmd::Register {
            name,
            qmp,
            disks,
            store,
        } => {
            let qmp = std::path::absolute(&qmp)?.display().to_string();
            send_show(
                &store,
                VmRequest::Register {
                    name: name.get().into(),
                    qmp,
                    disks,
                },
            )?
        }
    }
    Ok(())
}

//! `diskvault vmss ...`: VM scale sets, as `az vmss`.

use super::access::{print_json, Access, StoreArg};
use super::{cell, print_object, print_rows, CliError, Format, OutputArg};
use crate::control::VmssRequest;
use crate::store::vmss::VmssModel;
use crate::vm::{Power, VmssSpec};
use clap::Subcommand;
use serde_json::Value;

/// A scale set's name, as az's `-n/--name`.
#[derive(clap::Args)]
pub struct SetName {
    /// The scale set's name.
    #[arg(short = 'n', long = "name", value_name = "NAME")]
    name: String,
}

impl SetName {
    fn get(&self) -> &str {
        super::id_name_of(&self.name, &[crate::store::arm::ResType::Vmss])
    }
}

/// `--instance-ids 0 1` (space-separated, as az; `*` is every instance).
#[derive(clap::Args)]
pub struct InstanceIds {
    /// The instances (space-separated ids; `*` or none: all).
    #[arg(long, num_args = 1..)]
    instance_ids: Vec<String>,
}

impl InstanceIds {
    fn get(&self) -> Result<Option<Vec<u32>>, CliError> {
        if self.instance_ids.is_empty() || self.instance_ids.iter().any(|i| i == "*") {
            return Ok(None);
        }
        self.instance_ids
            .iter()
            .map(|i| {
                i.parse::<u32>().map_err(|_| {
                    CliError(format!(
                        "--instance-ids takes instance ids (0, 1, ...), not '{}'",
                        i.chars().take(40).collect::<String>()
                    ))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[derive(Subcommand)]
pub enum VmssCmd {
    /// Create a scale set: N identical VMs (NAME_0, NAME_1, ...), each with an OS disk
    /// from --image and its own data disks, encrypted as the model says.
    Create {
        #[command(flatten)]
        name: SetName,
        /// The image every instance's OS disk is made from.
        #[arg(long)]
        image: String,
        /// How many instances (az's default: 2).
        #[arg(long, default_value_t = 2)]
        instance_count: u32,
        /// The VM size of every instance (default: Standard_B1s).
        #[arg(long)]
        vm_sku: Option<String>,
        /// automatic, manual (default) or rolling (recorded).
        #[arg(long)]
        upgrade_policy: Option<String>,
        /// The guests' admin user (recorded).
        #[arg(long)]
        admin_username: Option<String>,
        /// Accepted as in az and recorded; a diskvault guest image has no sshd.
        #[arg(long)]
        generate_ssh_keys: bool,
        /// Disk encryption set for every instance's OS disk.
        #[arg(long)]
        os_disk_encryption_set: Option<String>,
        /// Empty data disks per instance, sizes in GB (LUN 0, 1, ...).
        #[arg(long, num_args = 1..)]
        data_disk_sizes_gb: Vec<u64>,
        /// A disk encryption set per data disk, in the same order.
        #[arg(long, num_args = 1..)]
        data_disk_encryption_sets: Vec<String>,
        /// SKU of the instances' disks (Premium_LRS by default; UltraSSD_LRS instances
        /// keep running when a key is revoked, as in Azure).
        #[arg(long)]
        storage_sku: Option<String>,
        /// Only define the instances; don't start them.
        #[arg(long)]
        no_start: bool,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Show a scale set, like `az vmss show`.
    Show {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List scale sets.
    List {
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// List a set's instances (each as `vm show` shows it, with its instanceId).
    ListInstances {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// The set's provisioning state and its instances' power states.
    GetInstanceView {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        output: OutputArg,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Change the number of instances: new ones follow the model; scale-in deletes
    /// the highest instance ids first, with their disks.
    Scale {
        #[command(flatten)]
        name: SetName,
        /// The new number of instances.
        #[arg(long)]
        new_capacity: u32,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Start instances (all, or --instance-ids).
    Start {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Power off instances; they stay allocated.
    Stop {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Power off and release instances.
    Deallocate {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Reset running instances.
    Restart {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete instances and the disks the set made for them.
    DeleteInstances {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        ids: InstanceIds,
        #[command(flatten)]
        store: StoreArg,
    },
    /// Delete the set, its instances and the disks it made for them.
    Delete {
        #[command(flatten)]
        name: SetName,
        #[command(flatten)]
        store: StoreArg,
    },
}

fn print_sets(sets: &[Value], fmt: Format) {
    let rows = sets
        .iter()
        .map(|s| {
            vec![
                cell(&s["name"]),
                cell(&s["sku"]["capacity"]),
                cell(&s["sku"]["name"]),
                cell(&s["upgradePolicy"]["mode"]),
                cell(&s["provisioningState"]),
                cell(&s["location"]),
            ]
        })
        .collect();
    let header = ["NAME", "CAPACITY", "VM SKU", "UPGRADE", "STATE", "LOCATION"];
    print_rows(header.map(String::from).to_vec(), rows, fmt);
}

/// A power command: as az, nothing is printed unless a format is asked for.
fn quiet(a: &Access, req: VmssRequest) -> Result<(), CliError> {
    let reply = a.send(req)?;
    if let (Some(v), Some(_)) = (reply, super::output::asked()) {
        print_json(&v);
    }
    Ok(())
}

fn power(name: &SetName, ids: &InstanceIds, store: &StoreArg, op: Power) -> Result<(), CliError> {
    let instance_ids = ids.get()?;
    let a = Access::open(store)?;
    quiet(
        &a,
        VmssRequest::Power {
            name: name.get().into(),
            op,
            instance_ids,
        },
    )
}

/// One of a set's files (`vmss.json`, `instances.json`, `instance-view.json`), shown.
fn show_file(
    name: &SetName,
    file: &str,
    output: &OutputArg,
    store: &StoreArg,
) -> Result<(), CliError> {
    let a = Access::open(store)?;
    let v = a.read_json(&format!("vmss/{}/{file}", name.get()))?;
    print_object(&v, output.format(Format::Json));
    Ok(())
}

pub fn run(cmd: VmssCmd) -> Result<(), CliError> {
    match cmd {
        VmssCmd::Create {
            name,
            image,
            instance_count,
            vm_sku,
            upgrade_policy,
            admin_username,
            generate_ssh_keys: _,
            os_disk_encryption_set,
            data_disk_sizes_gb,
            data_disk_encryption_sets,
            storage_sku,
            no_start,
            store,
        } => {
            let policy =
                crate::control::vmss_upgrade_policy(upgrade_policy.as_deref().unwrap_or("Manual"))?;
            let spec = VmssSpec {
                name: name.get().into(),
                model: VmssModel {
                    image: super::id_name(&image).into(),
                    vm_sku: vm_sku.unwrap_or_else(|| crate::vm::qemu::DEFAULT_SIZE.into()),
                    os_disk_encryption_set,
                    data_disk_sizes_gb,
                    data_disk_encryption_sets,
                    storage_sku,
                    admin_username,
                    upgrade_policy: policy,
                },
                instance_count,
                placement: super::output::placement(),
                no_start,
            };
            let a = Access::open(&store)?;
            let reply = a.send(VmssRequest::Create(Box::new(spec)))?;
            print_json(&reply.unwrap_or(Value::Null));
        }
        VmssCmd::Show {
            name,
            output,
            store,
        } => show_file(&name, "vmss.json", &output, &store)?,
        VmssCmd::List { output, store } => {
            let a = Access::open(&store)?;
            let sets = a
                .read_json("vmss.json")?
                .as_array()
                .cloned()
                .unwrap_or_default();
            match output.format(Format::Table) {
                Format::Json => print_json(&Value::Array(sets)),
                fmt => print_sets(&sets, fmt),
            }
        }
        VmssCmd::ListInstances {
            name,
            output,
            store,
        } => show_file(&name, "instances.json", &output, &store)?,
        VmssCmd::GetInstanceView {
            name,
            output,
            store,
        } => show_file(&name, "instance-view.json", &output, &store)?,
        VmssCmd::Scale {
            name,
            new_capacity,
            store,
        } => {
            let a = Access::open(&store)?;
            let reply = a.send(VmssRequest::Scale {
                name: name.get().into(),
                capacity: new_capacity,
            })?;
            print_json(&reply.unwrap_or(Value::Null));
        }
        VmssCmd::Start { name, ids, store } => power(&name, &ids, &store, Power::Start)?,
        VmssCmd::Stop { name, ids, store } => power(&name, &ids, &store, Power::Stop)?,
        VmssCmd::Deallocate { name, ids, store } => power(&name, &ids, &store, Power::Deallocate)?,
        VmssCmd::Restart { name, ids, store } => power(&name, &ids, &store, Power::Restart)?,
        VmssCmd::DeleteInstances { name, ids, store } => {
            let Some(ids) = ids.get()? else {
                return Err(CliError(
                    "give --instance-ids ID... (see 'diskvault vmss list-instances')".into(),
                ));
            };
            let a = Access::open(&store)?;
            quiet(
                &a,
                VmssRequest::DeleteInstances {
                    name: name.get().into(),
                    instance_ids: ids,
                },
            )?;
        }
        VmssCmd::Delete { name, store } => {
            let a = Access::open(&store)?;
            a.send(VmssRequest::Delete {
                name: name.get().into(),
            })?;
        }
    }
    Ok(())
}

//! A `Store` impl file: resource groups and locations of the store's objects, the
//! store's ARM settings (`arm.json`), and the Azure-shaped ids views show.

use super::arm::{self, ArmState, Group, Placement, ResType, ARM_FILE, NIL_SUBSCRIPTION};
use super::error::{Result, StoreError};
use super::{ObjectKind, Store};
use crate::durable;

/// Serializes read-modify-writes of `arm.json`.
static ARM_LOCK: parking_lot::Mutex<()> = parking_lot::Mutex::new(());

impl ObjectKind {
    pub fn res_type(self) -> ResType {
        match self {
            ObjectKind::Disk => ResType::Disk,
            ObjectKind::Snapshot => ResType::Snapshot,
            ObjectKind::Image => ResType::Image,
        }
    }
}

impl Store {
    /// The subscription id: the store's id (`storeId` in diskvault.json).
    pub fn subscription_id(&self) -> String {
        let id = self.vault().custody().store_id();
        if id.is_empty() {
            NIL_SUBSCRIPTION.to_string()
        } else {
            id.to_string()
        }
    }

    /// `arm.json`; a missing file is the empty state. A corrupt one is an error, so
    /// that no write replaces it unseen.
    pub fn arm_state(&self) -> Result<ArmState> {
        let path = self.root.join(ARM_FILE);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map_err(|e| {
                StoreError::Corrupt(format!(
                    "{} is not valid ({e}); fix or remove it (it holds only the subscription name, the defaults and resource groups)",
                    path.display()
                ))
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ArmState::default()),
            Err(e) => Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }

    /// Changes `arm.json` atomically.
    pub fn update_arm<T>(&self, f: impl FnOnce(&mut ArmState) -> Result<T>) -> Result<T> {
        let _g = ARM_LOCK.lock();
        let mut st = self.arm_state()?;
        let before = st.clone();
        let out = f(&mut st)?;
        if st != before {
            let bytes = serde_json::to_vec_pretty(&st).expect("serializes");
            durable::write_atomic(&self.root.join(ARM_FILE), &bytes, 0o600)
                .map_err(|e| StoreError::io(format!("saving {ARM_FILE}"), e))?;
        }
        Ok(out)
    }

    /// The group and location of a new object: what was asked, else the configured
    /// defaults; a location then falls back, as in az, to the group's, then to
    /// `inherit`'s (its source's or its set's), then `local`; a group to `inherit`'s,
    /// then `diskvault`. A group seen for the first time is recorded (`az group list`).
    pub fn place(&self, asked: &Placement, inherit: Option<&Placement>) -> Result<Placement> {
        let st = self.arm_state().unwrap_or_default();
        let mut defaults = st.defaults.clone();
        if asked.location.is_none() && defaults.location.is_none() {
            let group = asked
                .resource_group
                .as_ref()
                .or(defaults.resource_group.as_ref())
                .or(inherit.and_then(|i| i.resource_group.as_ref()));
            if let Some(g) = group.and_then(|g| st.group(g)) {
                defaults.location = Some(g.location.clone());
            }
        }
        if let Some(i) = inherit {
            defaults.resource_group = defaults.resource_group.or_else(|| i.resource_group.clone());
            defaults.location = defaults.location.or_else(|| i.location.clone());
        }
        let p = asked.resolve(&defaults)?;
        if st.group(p.group()).is_none() {
            self.update_arm(|s| {
                if s.group(p.group()).is_none() {
                    s.groups.push(Group {
                        name: p.group().to_string(),
                        location: p.location().to_string(),
                    });
                }
                Ok(())
            })?;
        }
        Ok(p)
    }

    /// The key vault's group and location.
    pub fn vault_placement(&self) -> Placement {
        let p = self.vault().props();
        Placement {
            resource_group: p.resource_group,
            location: p.location,
        }
    }

    /// The placement of a resource, if it exists.
    pub fn placement_of(&self, ty: ResType, name: &str) -> Option<Placement> {
        match ty {
            ResType::Disk => self.get_kind(ObjectKind::Disk, name).map(|d| d.placement()),
            ResType::Snapshot => self
                .get_kind(ObjectKind::Snapshot, name)
                .map(|d| d.placement()),
            ResType::Image => self
                .get_kind(ObjectKind::Image, name)
                .map(|d| d.placement()),
            ResType::Set => self.keyring().des(name).ok().map(|d| d.placement),
            ResType::Vm => self.vm_get(name).ok().map(|v| v.placement),
            ResType::Vmss => self.vmss_get(name).ok().map(|v| v.placement),
            ResType::Vault => Some(self.vault_placement()),
        }
    }

    /// The Azure id of a resource known to be in `p`.
    pub fn arm_id_in(&self, ty: ResType, name: &str, p: &Placement) -> String {
        arm::arm_id(&self.subscription_id(), p.group(), ty, name)
    }

    /// The Azure id of a resource by name (group `diskvault` if it is gone).
    pub fn arm_id(&self, ty: ResType, name: &str) -> String {
        let p = self.placement_of(ty, name).unwrap_or_default();
        self.arm_id_in(ty, name, &p)
    }

    /// A stored id (`/diskvault/TYPE/NAME`) as Azure shows it; other strings as they are.
    pub fn display_id(&self, stored: &str) -> String {
        match arm::parse_id(stored) {
            Some(r) if r.group.is_none() => self.arm_id(r.ty, &r.name),
            _ => stored.to_string(),
        }
    }

    /// A name or id given for a resource of type `ty`: its name. An Azure id must
    /// name this store's subscription, and the group the resource is in.
    pub fn resolve_name(&self, s: &str, ty: ResType) -> Result<String> {
        let name = arm::name_of(s, ty)?;
        if let Some(r) = arm::parse_id(s) {
            if let Some(sub) = &r.subscription {
                if !sub.eq_ignore_ascii_case(&self.subscription_id()) {
                    return Err(StoreError::InvalidArgument(format!(
                        "(SubscriptionNotFound) the id '{s}' names subscription '{sub}', but this store is subscription '{}' ('diskvault account show')",
                        self.subscription_id()
                    )));
                }
            }
            if let (Some(g), Some(p)) = (&r.group, self.placement_of(ty, &name)) {
                if !g.eq_ignore_ascii_case(p.group()) {
                    return Err(StoreError::NotFound(format!(
                        "(ResourceNotFound) The Resource '{}/{name}' under resource group '{g}' was not found; it is in resource group '{}'",
                        ty.provider_type(),
                        p.group()
                    )));
                }
            }
        }
        Ok(name)
    }

    /// Azure's same-region rule between a resource and the set it uses.
    pub fn check_set_location(
        &self,
        what: (ResType, &str),
        p: &Placement,
        set: &super::des::DesRecord,
    ) -> Result<()> {
        arm::same_location(
            (what.0, what.1, p.location()),
            (ResType::Set, &set.name, set.placement.location()),
        )
    }
}

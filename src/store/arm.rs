//! Azure Resource Manager's frame around the store's objects: resource groups and
//! locations (recorded on every object), the subscription (the store itself), and
//! resource ids in Azure's shape, `/subscriptions/SUB/resourceGroups/RG/providers/TYPE/NAME`.
//! Ids are computed for display; objects are still stored and looked up by name.

use super::error::{Result, StoreError};
use serde::{Deserialize, Serialize};

/// Where objects from before resource groups live.
pub const DEFAULT_GROUP: &str = "diskvault";
pub const DEFAULT_LOCATION: &str = "local";
/// The store's ARM settings: `STORE/arm.json`.
pub const ARM_FILE: &str = "arm.json";
/// The subscription id of a store from before storeId existed.
pub const NIL_SUBSCRIPTION: &str = "00000000-0000-0000-0000-000000000000";

/// A resource group and location, as a create request gives them (`-g`, `-l`); the
/// store's defaults fill what is missing.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Placement {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

impl Placement {
    pub fn is_empty(&self) -> bool {
        self.resource_group.is_none() && self.location.is_none()
    }

    pub fn new(group: Option<&str>, location: Option<&str>) -> Self {
        Placement {
            resource_group: group.map(String::from),
            location: location.map(String::from),
        }
    }

    /// The group, or `diskvault` for objects from before groups.
    pub fn group(&self) -> &str {
        self.resource_group.as_deref().unwrap_or(DEFAULT_GROUP)
    }

    /// The location, or `local` for objects from before locations.
    pub fn location(&self) -> &str {
        self.location.as_deref().unwrap_or(DEFAULT_LOCATION)
    }

    /// Both parts checked and normalized, with `defaults` for missing ones.
    pub fn resolve(&self, defaults: &Placement) -> Result<Placement> {
        let group = match self
            .resource_group
            .as_ref()
            .or(defaults.resource_group.as_ref())
        {
            Some(g) => validate_group(g)?,
            None => DEFAULT_GROUP.to_string(),
        };
        let location = match self.location.as_ref().or(defaults.location.as_ref()) {
            Some(l) => normalize_location(l)?,
            None => DEFAULT_LOCATION.to_string(),
        };
        Ok(Placement {
            resource_group: Some(group),
            location: Some(location),
        })
    }
}

/// The resource types diskvault shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResType {
    Disk,
    Snapshot,
    Image,
    Set,
    Vm,
    Vmss,
    Vault,
}

impl ResType {
    pub const ALL: [ResType; 7] = [
        ResType::Disk,
        ResType::Snapshot,
        ResType::Image,
        ResType::Set,
        ResType::Vm,
        ResType::Vmss,
        ResType::Vault,
    ];

    /// Azure's provider type, as in `type` and in ids.
    pub fn provider_type(self) -> &'static str {
        match self {
            ResType::Disk => "Microsoft.Compute/disks",
            ResType::Snapshot => "Microsoft.Compute/snapshots",
            ResType::Image => "Microsoft.Compute/images",
            ResType::Set => "Microsoft.Compute/diskEncryptionSets",
            ResType::Vm => "Microsoft.Compute/virtualMachines",
            ResType::Vmss => "Microsoft.Compute/virtualMachineScaleSets",
            ResType::Vault => "Microsoft.KeyVault/vaults",
        }
    }

    /// The segment of diskvault's own ids, `/diskvault/SEGMENT/NAME`.
    pub fn local_segment(self) -> &'static str {
        match self {
            ResType::Disk => "disks",
            ResType::Snapshot => "snapshots",
            ResType::Image => "images",
            ResType::Set => "diskEncryptionSets",
            ResType::Vm => "virtualMachines",
            ResType::Vmss => "virtualMachineScaleSets",
            ResType::Vault => "vaults",
        }
    }

    /// The type word of Azure's messages, e.g. `disk encryption set`.
    pub fn noun(self) -> &'static str {
        match self {
            ResType::Disk => "disk",
            ResType::Snapshot => "snapshot",
            ResType::Image => "image",
            ResType::Set => "disk encryption set",
            ResType::Vm => "virtual machine",
            ResType::Vmss => "virtual machine scale set",
            ResType::Vault => "key vault",
        }
    }
}

/// `/subscriptions/SUB/resourceGroups/RG/providers/TYPE/NAME`.
pub fn arm_id(sub: &str, group: &str, ty: ResType, name: &str) -> String {
    format!(
        "/subscriptions/{sub}/resourceGroups/{group}/providers/{}/{name}",
        ty.provider_type()
    )
}

/// A reference to a resource: what an id names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResRef {
    pub ty: ResType,
    pub name: String,
    /// From an ARM id: its subscription and group, to be checked.
    pub subscription: Option<String>,
    pub group: Option<String>,
}

/// Parses an ARM id or a `/diskvault/SEGMENT/NAME` id; `None` for anything else (a
/// plain name, a URL). Matching is case-insensitive, as ARM's is.
pub fn parse_id(s: &str) -> Option<ResRef> {
    let t = s.trim().trim_end_matches('/');
    let parts: Vec<&str> = t.split('/').collect();
    match parts.as_slice() {
        ["", dv, seg, name] if dv.eq_ignore_ascii_case("diskvault") && !name.is_empty() => {
            let ty = ResType::ALL
                .into_iter()
                .find(|r| r.local_segment().eq_ignore_ascii_case(seg))?;
            Some(ResRef {
                ty,
                name: name.to_string(),
                subscription: None,
                group: None,
            })
        }
        ["", subs, sub, rgs, rg, prov, ns, kind, name]
            if subs.eq_ignore_ascii_case("subscriptions")
                && rgs.eq_ignore_ascii_case("resourceGroups")
                && prov.eq_ignore_ascii_case("providers")
                && !name.is_empty() =>
        {
            let full = format!("{ns}/{kind}");
            let ty = ResType::ALL
                .into_iter()
                .find(|r| r.provider_type().eq_ignore_ascii_case(&full))?;
            Some(ResRef {
                ty,
                name: name.to_string(),
                subscription: Some(sub.to_string()),
                group: Some(rg.to_string()),
            })
        }
        _ => None,
    }
}

/// The name a name-or-id names, for resources of type `ty`; an id of another type is
/// refused. A plain name is returned as it is.
pub fn name_of(s: &str, ty: ResType) -> Result<String> {
    match parse_id(s) {
        Some(r) if r.ty == ty => Ok(r.name),
        Some(r) => Err(StoreError::InvalidArgument(format!(
            "'{}' is the id of a {}, not of a {}; give the {}'s name or id",
            s.chars().take(200).collect::<String>(),
            r.ty.noun(),
            ty.noun(),
            ty.noun()
        ))),
        None if s.starts_with('/') => Err(StoreError::InvalidArgument(format!(
            "'{}' is not a {} id; give its name, or an id like {}",
            s.chars().take(200).collect::<String>(),
            ty.noun(),
            arm_id("SUBSCRIPTION", "GROUP", ty, "NAME")
        ))),
        None => Ok(s.to_string()),
    }
}

/// Azure's rule for resource group names: 1-90 letters, digits, '_', '-', '.', '('
/// and ')'; not ending in '.'.
pub fn validate_group(g: &str) -> Result<String> {
    let bad = |why: &str| {
        Err(StoreError::InvalidArgument(format!(
            "invalid resource group name '{}': {why}",
            g.chars().take(100).collect::<String>()
        )))
    };
    if g.is_empty() || g.chars().count() > 90 {
        return bad("use 1 to 90 characters");
    }
    if !g
        .chars()
        .all(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | '(' | ')'))
    {
        return bad("use letters, digits, '_', '-', '.', '(' and ')'");
    }
    if g.ends_with('.') {
        return bad("it can't end with '.'");
    }
    Ok(g.to_string())
}

/// A location as az normalizes it: `West Central US` is `westcentralus`. Any name of
/// 1-64 letters and digits is accepted: the store has no regions to choose from.
pub fn normalize_location(l: &str) -> Result<String> {
    let n: String = l
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect::<String>()
        .to_ascii_lowercase();
    if n.is_empty() || n.len() > 64 || !n.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(StoreError::InvalidArgument(format!(
            "invalid location '{}': use a region name of letters and digits, like westcentralus",
            l.chars().take(80).collect::<String>()
        )));
    }
    Ok(n)
}

/// Azure's rule for customer-managed keys: the vault, the set, and the disks,
/// snapshots, images and VMs that use it are in one region.
pub fn same_location(what: (ResType, &str, &str), needs: (ResType, &str, &str)) -> Result<()> {
    let ((ty, name, loc), (nty, nname, nloc)) = (what, needs);
    if loc == nloc {
        return Ok(());
    }
    Err(StoreError::InvalidArgument(format!(
        "(LocationMismatch) the {} '{name}' is in location '{loc}' and the {} '{nname}' in '{nloc}'; all resources related to your customer-managed keys (key vaults, disk encryption sets, VMs, disks, and snapshots) must be in the same region: use -l {nloc}",
        ty.noun(),
        nty.noun()
    )))
}

/// A resource group's record (`az group show`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Group {
    pub name: String,
    pub location: String,
}

/// `STORE/arm.json`: the subscription's name, `configure --defaults`, and resource
/// groups. Absent in stores from before it: no name, no defaults, no groups.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ArmState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_name: Option<String>,
    #[serde(default)]
    pub defaults: Placement,
    #[serde(default)]
    pub groups: Vec<Group>,
}

impl ArmState {
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups
            .iter()
            .find(|g| g.name.eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_in_both_shapes() {
        let id = arm_id("sub", "rg1", ResType::Set, "set1");
        assert_eq!(
            id,
            "/subscriptions/sub/resourceGroups/rg1/providers/Microsoft.Compute/diskEncryptionSets/set1"
        );
        let r = parse_id(&id).unwrap();
        assert_eq!((r.ty, r.name.as_str()), (ResType::Set, "set1"));
        assert_eq!(r.group.as_deref(), Some("rg1"));
        let r = parse_id("/diskvault/diskEncryptionSets/set1").unwrap();
        assert_eq!((r.ty, r.group), (ResType::Set, None));
        let low = id.to_ascii_lowercase();
        assert_eq!(parse_id(&low).unwrap().ty, ResType::Set);
        for t in ResType::ALL {
            assert_eq!(parse_id(&arm_id("s", "g", t, "n")).unwrap().ty, t);
        }
    }

    #[test]
    fn names_of_the_wrong_type_or_shape_are_refused() {
        assert_eq!(name_of("d1", ResType::Disk).unwrap(), "d1");
        assert_eq!(
            name_of(&arm_id("s", "g", ResType::Disk, "d1"), ResType::Disk).unwrap(),
            "d1"
        );
        assert!(name_of(&arm_id("s", "g", ResType::Vm, "d1"), ResType::Disk).is_err());
        assert!(name_of("/subscriptions/x", ResType::Disk).is_err());
        assert!(
            parse_id("/subscriptions/s/resourceGroups/g/providers/Microsoft.Compute/disks/")
                .is_none()
        );
    }

    #[test]
    fn groups_and_locations_follow_azures_rules() {
        assert!(validate_group("my-rg_(1).x").is_ok());
        assert!(validate_group("").is_err());
        assert!(validate_group("rg.").is_err());
        assert!(validate_group(&"r".repeat(91)).is_err());
        assert!(validate_group("a/b").is_err());
        assert_eq!(
            normalize_location("West Central US").unwrap(),
            "westcentralus"
        );
        assert!(normalize_location("west-us").is_err());
        assert!(normalize_location("").is_err());
        assert!(normalize_location(&"a".repeat(65)).is_err());
    }

    #[test]
    fn placement_defaults_fill_gaps() {
        let d = Placement::new(Some("rg"), Some("eastus"));
        let p = Placement::new(None, Some("West US")).resolve(&d).unwrap();
        assert_eq!((p.group(), p.location()), ("rg", "westus"));
        let p = Placement::default().resolve(&Placement::default()).unwrap();
        assert_eq!((p.group(), p.location()), (DEFAULT_GROUP, DEFAULT_LOCATION));
        assert!(same_location((ResType::Disk, "d", "a"), (ResType::Set, "s", "b")).is_err());
    }
}

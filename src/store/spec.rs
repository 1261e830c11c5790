//! User-supplied disk parameters: names, sizes and SKUs, with their validation.

use super::error::StoreError;
use std::fmt;
use std::str::FromStr;

/// The kinds of object the store holds; each has its own directory and namespace.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ObjectKind {
    Disk,
    Snapshot,
    Image,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 3] = [ObjectKind::Disk, ObjectKind::Snapshot, ObjectKind::Image];

    /// Its directory in the store and in the mount: `disks`, `snapshots`, `images`.
    pub fn dir(self) -> &'static str {
        match self {
            ObjectKind::Disk => "disks",
            ObjectKind::Snapshot => "snapshots",
            ObjectKind::Image => "images",
        }
    }

    pub fn noun(self) -> &'static str {
        match self {
            ObjectKind::Disk => "disk",
            ObjectKind::Snapshot => "snapshot",
            ObjectKind::Image => "image",
        }
    }

    /// Snapshots and images never change after they are made.
    pub fn read_only(self) -> bool {
        self != ObjectKind::Disk
    }

    /// Azure's resource type, for `type` in JSON.
    pub fn resource_type(self) -> &'static str {
        match self {
            ObjectKind::Disk => "Microsoft.Compute/disks",
            ObjectKind::Snapshot => "Microsoft.Compute/snapshots",
            ObjectKind::Image => "Microsoft.Compute/images",
        }
    }

    /// `/diskvault/disks/NAME` and the like: the id `sourceResourceId` holds.
    pub fn resource_id(self, name: &str) -> String {
        format!("/diskvault/{}/{name}", self.dir())
    }
}

impl fmt::Display for ObjectKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.noun())
    }
}

/// Azure's largest managed disk: 64 TiB (UltraSSD/PremiumV2 limit).
pub const MAX_DISK_SIZE: u64 = 64 << 40;

/// Validates a disk name with Azure's rule: 1-80 characters of letters, digits, '_',
/// '.' and '-'; it starts with a letter or digit and ends with a letter, digit or '_'.
pub fn validate_name(name: &str) -> Result<(), StoreError> {
    let bad = |why: &str| {
        Err(StoreError::InvalidName {
            name: name.to_string(),
            reason: why.to_string(),
        })
    };
    // A leading '.' marks a temporary name, as rsync and editors use for the file
    // they rename into place; the rest follows Azure's rule.
    // Temporary names get room for what tools append (rsync: `.NAME.XXXXXX`), up to
    // the 255 bytes a file name may have.
    let (name, max) = match name.strip_prefix('.') {
        Some(rest) => (rest, 254),
        None => (name, 80),
    };
    if name.is_empty() || name.len() > max {
        return bad(
            "it must be 1 to 80 characters long (a temporary name starting with '.': up to 255)",
        );
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return bad("use only letters, digits, '_', '.' and '-'");
    }
    let first = name.chars().next().unwrap_or('.');
    let last = name.chars().last().unwrap_or('.');
    if !first.is_ascii_alphanumeric() {
        return bad("it must start with a letter or digit");
    }
    if !(last.is_ascii_alphanumeric() || last == '_') {
        return bad("it must end with a letter, digit or '_'");
    }
    Ok(())
}

/// Validates a snapshot's or image's name: Azure's rule (1-80 characters of letters,
/// digits, '_', '.' and '-', starting with a letter or digit, ending with a letter,
/// digit or '_'); the temporary `.NAME` form is for disk files only.
pub fn validate_object_name(kind: ObjectKind, name: &str) -> Result<(), StoreError> {
    if kind == ObjectKind::Disk {
        return validate_name(name);
    }
    let bad = |reason: &str| {
        Err(StoreError::InvalidObjectName {
            kind,
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.starts_with('.') {
        return bad("it must start with a letter or digit");
    }
    if name.is_empty() || name.len() > 80 {
        return bad("it must be 1 to 80 characters long");
    }
    match validate_name(name) {
        Err(StoreError::InvalidName { reason, .. }) => bad(&reason),
        r => r,
    }
}

/// Parses sizes like `30G`, `30GiB`, `512M`, `1T`, `4096` (bytes). Suffixes are binary
/// (K=1024), as `az disk create --size-gb` and qemu-img use GiB.
pub fn parse_size(s: &str) -> Result<u64, StoreError> {
    let bad = |why: &str| StoreError::InvalidSize {
        input: s.to_string(),
        reason: why.to_string(),
    };
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad(
            "it must start with a whole number, e.g. 30 (GiB, as in az), 512M or 4096B",
        ));
    }
    if t[digits_end..].starts_with(['.', ',']) {
        return Err(bad(
            "sizes are whole numbers of a unit; give a smaller unit instead, e.g. 1536M for 1.5G",
        ));
    }
    let n: u64 = t[..digits_end]
        .parse()
        .map_err(|_| bad("the number is too large"))?;
    let suffix = t[digits_end..].trim();
    let shift = match suffix.to_ascii_uppercase().as_str() {
        // A bare number is GiB, as az's sizes are; bytes need the B.
        "" => 30,
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => {
            return Err(bad(
                "unknown unit; use B, K, M, G or T (binary units; a bare number is GiB)",
            ))
        }
    };
    let size = n
        .checked_mul(1u64 << shift)
        .ok_or_else(|| bad("the size overflows"))?;
    if size > MAX_DISK_SIZE {
        return Err(bad("the largest disk is 64T"));
    }
    check_sector_multiple(size).map_err(|_| bad(SECTOR_REASON))?;
    Ok(size)
}

const SECTOR_REASON: &str =
    "a disk's size is a whole number of 512-byte sectors (QEMU refuses others); e.g. 1024B, not 1000B";

/// A new disk's size must be a multiple of 512, so that QEMU can attach it.
pub fn check_sector_multiple(size: u64) -> Result<(), StoreError> {
    if size.is_multiple_of(512) {
        return Ok(());
    }
    Err(StoreError::InvalidSize {
        input: format!("{size}B"),
        reason: SECTOR_REASON.into(),
    })
}

/// Disk SKUs (Azure's `sku.name`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Sku {
    #[default]
    PremiumLrs,
    StandardSsdLrs,
    StandardLrs,
    UltraSsdLrs,
    PremiumV2Lrs,
}

impl Sku {
    pub const ALL: [Sku; 5] = [
        Sku::PremiumLrs,
        Sku::StandardSsdLrs,
        Sku::StandardLrs,
        Sku::UltraSsdLrs,
        Sku::PremiumV2Lrs,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Sku::PremiumLrs => "Premium_LRS",
            Sku::StandardSsdLrs => "StandardSSD_LRS",
            Sku::StandardLrs => "Standard_LRS",
            Sku::UltraSsdLrs => "UltraSSD_LRS",
            Sku::PremiumV2Lrs => "PremiumV2_LRS",
        }
    }

    pub fn tier(self) -> &'static str {
        match self {
            Sku::PremiumLrs | Sku::PremiumV2Lrs => "Premium",
            Sku::StandardSsdLrs | Sku::StandardLrs => "Standard",
            Sku::UltraSsdLrs => "Ultra",
        }
    }
}

/// As its name (`Premium_LRS`), like Azure's JSON.
impl serde::Serialize for Sku {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Sku {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Sku {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        Sku::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| StoreError::InvalidSku(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        // A bare number is GiB, as in az; bytes need a B.
        assert_eq!(parse_size("30").unwrap(), 30 << 30);
        assert_eq!(parse_size("4096B").unwrap(), 4096);
        assert_eq!(parse_size("30G").unwrap(), 30 << 30);
        assert_eq!(parse_size("30GiB").unwrap(), 30 << 30);
        assert_eq!(parse_size("512m").unwrap(), 512 << 20);
        assert_eq!(parse_size("1T").unwrap(), 1 << 40);
        assert_eq!(parse_size("64T").unwrap(), MAX_DISK_SIZE);
        for bad in [
            "",
            "G",
            "-1G",
            "1.5G",
            "12X",
            "65T",
            "99999999999999999999",
            "1 G B",
            "1000B",
            "30B",
            "65537",
        ] {
            assert!(parse_size(bad).is_err(), "{bad} should be rejected");
        }
        let e = parse_size("1.5G").unwrap_err().to_string();
        assert!(e.contains("1536M"), "{e}");
        let e = parse_size("1000B").unwrap_err().to_string();
        assert!(e.contains("512"), "{e}");
    }

    #[test]
    fn snapshot_and_image_names_follow_azure_without_the_temporary_form() {
        for k in [ObjectKind::Snapshot, ObjectKind::Image] {
            assert!(validate_object_name(k, "before-upgrade_1").is_ok());
            for bad in [".hidden", "", "-x", "x.", &"a".repeat(81), "a/b"] {
                let e = validate_object_name(k, bad).unwrap_err().to_string();
                assert!(e.starts_with(&format!("invalid {k} name")), "{e}");
            }
        }
        // Disks keep the temporary names that copying tools use.
        assert!(validate_object_name(ObjectKind::Disk, ".data1.aB12cD").is_ok());
    }

    #[test]
    fn names() {
        // A leading '.' is a temporary name (rsync's `.NAME.XXXXXX`).
        for ok in [
            "a",
            "disk-1",
            "os_disk.v2",
            "A_",
            &"x".repeat(80),
            ".a",
            ".img.Xa9_",
        ] {
            validate_name(ok).unwrap();
        }
        for bad in [
            "",
            "-a",
            "..a",
            ".-a",
            "a.",
            "a-",
            "a/b",
            "a b",
            "é",
            &"x".repeat(81),
            ".",
            "..",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn skus() {
        for s in Sku::ALL {
            assert_eq!(s.name().parse::<Sku>().unwrap(), s);
        }
        assert!("Gold_LRS".parse::<Sku>().is_err());
    }
}

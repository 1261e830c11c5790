//! Encryption types (Azure's `encryption.type` of a disk and `encryptionType` of a
//! disk encryption set) and the one table of which layers each type has.

use super::error::StoreError;
use crate::vault::KeyId;
use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Whose key wraps a layer's DEK, which decides the identity the key is used as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerKind {
    /// The platform key, used by the platform itself.
    Platform,
    /// A customer key, used as the disk encryption set's identity.
    Customer,
}

impl LayerKind {
    /// The kind of layer a key id can wrap.
    pub fn of(key: &KeyId) -> LayerKind {
        if key.provider().customer_managed() {
            LayerKind::Customer
        } else {
            LayerKind::Platform
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum EncryptionType {
    #[serde(rename = "EncryptionAtRestWithPlatformKey")]
    PlatformKey,
    #[serde(rename = "EncryptionAtRestWithCustomerKey")]
    CustomerKey,
    #[serde(rename = "EncryptionAtRestWithPlatformAndCustomerKeys")]
    PlatformAndCustomerKeys,
}

impl EncryptionType {
    pub const ALL: [EncryptionType; 3] = [
        EncryptionType::PlatformKey,
        EncryptionType::CustomerKey,
        EncryptionType::PlatformAndCustomerKeys,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EncryptionType::PlatformKey => "EncryptionAtRestWithPlatformKey",
            EncryptionType::CustomerKey => "EncryptionAtRestWithCustomerKey",
            EncryptionType::PlatformAndCustomerKeys => {
                "EncryptionAtRestWithPlatformAndCustomerKeys"
            }
        }
    }

    /// A disk's layers, in the order they apply to plaintext: with double encryption
    /// the customer-key layer comes first and the platform layer last.
    pub fn layers(self) -> &'static [LayerKind] {
        match self {
            EncryptionType::PlatformKey => &[LayerKind::Platform],
            EncryptionType::CustomerKey => &[LayerKind::Customer],
            EncryptionType::PlatformAndCustomerKeys => &[LayerKind::Customer, LayerKind::Platform],
        }
    }

    /// Whether a customer key (through a disk encryption set) wraps a layer.
    pub fn uses_customer_key(self) -> bool {
        self.layers().contains(&LayerKind::Customer)
    }

    /// Parses the type of a disk encryption set (case-insensitive): a type with a
    /// customer key.
    pub fn for_des(s: &str) -> Result<EncryptionType, StoreError> {
        match s.parse()? {
            EncryptionType::PlatformKey => Err(StoreError::InvalidArgument(
                "EncryptionAtRestWithPlatformKey is not a valid encryption type for a disk encryption set; use EncryptionAtRestWithCustomerKey or EncryptionAtRestWithPlatformAndCustomerKeys".into(),
            )),
            t => Ok(t),
        }
    }
}

impl fmt::Display for EncryptionType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Case-insensitive, as az takes it.
impl FromStr for EncryptionType {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        EncryptionType::ALL
            .into_iter()
            .find(|t| t.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                StoreError::InvalidArgument(format!(
                    "unknown encryption type '{s}'; use EncryptionAtRestWithCustomerKey or EncryptionAtRestWithPlatformAndCustomerKeys"
                ))
            })
    }
}

/// Exact names only in stored documents; an unknown one says so.
impl<'de> Deserialize<'de> for EncryptionType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        EncryptionType::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                serde::de::Error::custom(format!("encryption type '{s}' is not supported"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_serialize_as_azure_spells_them() {
        for t in EncryptionType::ALL {
            let json = serde_json::to_string(&t).unwrap();
            assert_eq!(json, format!("\"{}\"", t.name()));
            assert_eq!(serde_json::from_str::<EncryptionType>(&json).unwrap(), t);
            assert_eq!(t.to_string().parse::<EncryptionType>().unwrap(), t);
            assert_eq!(
                t.name()
                    .to_ascii_lowercase()
                    .parse::<EncryptionType>()
                    .unwrap(),
                t
            );
        }
        let e = serde_json::from_str::<EncryptionType>("\"encryptionatrestwithplatformkey\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not supported"), "{e}");
        let e = "Bogus".parse::<EncryptionType>().unwrap_err().to_string();
        assert!(e.contains("unknown encryption type 'Bogus'"), "{e}");
    }

    #[test]
    fn one_table_of_layers() {
        use LayerKind::*;
        assert_eq!(EncryptionType::PlatformKey.layers(), &[Platform]);
        assert_eq!(EncryptionType::CustomerKey.layers(), &[Customer]);
        assert_eq!(
            EncryptionType::PlatformAndCustomerKeys.layers(),
            &[Customer, Platform]
        );
        assert!(!EncryptionType::PlatformKey.uses_customer_key());
        assert!(EncryptionType::CustomerKey.uses_customer_key());
        assert!(EncryptionType::for_des("EncryptionAtRestWithPlatformKey")
            .unwrap_err()
            .to_string()
            .contains("not a valid encryption type for a disk encryption set"));
        assert_eq!(
            EncryptionType::for_des("encryptionatrestwithcustomerkey").unwrap(),
            EncryptionType::CustomerKey
        );
    }
}

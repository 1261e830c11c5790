//! What each encryption layer's key is: the platform's or the customer's.

use crate::vault::KeyId;

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

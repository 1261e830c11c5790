//! Key providers: who wraps and unwraps a disk's DEK.
//!
//! The store only sees the `KeyProvider` trait (see `provider`). The platform provider
//! is the default; the customer-key vault and an HSM provider plug in behind the same
//! trait.

pub mod audit;
pub mod custody;
pub mod keyvault;
mod keyvault_provider;
pub mod kid;
pub mod platform;
pub mod provider;

pub use audit::Caller;
pub use keyvault::{KeyOptions, KeyUpdate, KeyVault, RotationPolicy};
pub use kid::KeyRef;
pub use platform::PlatformKeys;
pub use provider::{KeyId, KeyInfo, KeyProvider, PlatformKid, ProviderKind};

use crate::crypto::CryptoError;
use thiserror::Error;

/// A DEK in wrapped form, as stored in disk metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WrappedKey {
    /// Identifier of the wrapping key, including its version.
    pub kid: String,
    /// Wrapping algorithm, e.g. "RSA-OAEP-256".
    pub alg: String,
    /// The wrapped key bytes.
    pub value: Vec<u8>,
}

#[derive(Debug, Error)]
pub enum VaultError {
    #[error("platform key {0} is missing; restore it from a backup (without it no disk can be decrypted)")]
    MissingPlatformKey(String),
    #[error("HSM unavailable: {0}")]
    HsmUnavailable(String),
    #[error("the token has no private key with id {0} (destroyed in the token?); restore it, or the disks it wraps stay unavailable")]
    HsmKeyMissing(String),
    #[error("cannot unseal the store's keys: {0}")]
    KekUnavailable(String),
    #[error("the store's keyProtection (diskvault.json) is unusable: {0}; restore diskvault.json from a backup")]
    BadProtection(String),
    #[error("sealed key file {path} is unusable: {reason}; restore it from a backup of the store")]
    SealedKeyBad { path: String, reason: String },
    #[error("the platform key is unusable: {0}; restore STORE/keys from a backup (without it no platform-key disk can be decrypted)")]
    PlatformKeyUnusable(String),
    #[error("key '{0}' that wrapped this disk's key is not known to this store")]
    UnknownKey(String),
    #[error("wrapping algorithm '{0}' is not supported; only RSA-OAEP-256 is")]
    UnsupportedAlg(String),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("key store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid {what} name '{name}': {reason}")]
    InvalidName {
        what: &'static str,
        name: String,
        reason: String,
    },
    #[error("invalid key identifier '{input}': {reason}")]
    InvalidKeyId { input: String, reason: String },
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("KeyNotFound: no key named '{0}' in the vault; see 'diskvault key list'")]
    KeyNotFound(String),
    #[error("KeyNotFound: key '{0}' has no version {1}; see 'diskvault key show {0}'")]
    VersionNotFound(String, String),
    #[error("key '{0}' is deleted; recover it with 'diskvault key recover {0}'")]
    KeyDeleted(String),
    #[error("a key named '{0}' already exists; choose another name or rotate that key")]
    KeyExists(String),
    #[error("Conflict: key '{0}' is soft-deleted and holds its name; recover it or purge it before reusing the name")]
    NameHeldByDeletedKey(String),
    #[error("no deleted key named '{0}'; see 'diskvault key list --deleted'")]
    DeletedKeyNotFound(String),
    #[error("key '{0}' is not deleted; delete it first, then purge it")]
    PurgeActive(String),
    #[error("key URL names vault '{given}' but this store's vault is '{ours}'; use a key of vault '{ours}'")]
    WrongVault { given: String, ours: String },
    #[error("KeyVaultAccessForbidden: grant get, wrapKey and unwrapKey permissions on key {key} to {caller}")]
    Forbidden { key: String, caller: String },
    #[error("key '{0}' is disabled; enable it with 'diskvault key set {0} --enabled true'")]
    KeyDisabled(String),
    #[error("key version {0} is disabled; enable it with 'diskvault key set KEY --version VERSION --enabled true'")]
    VersionDisabled(String),
    #[error("operation {op} is not permitted by the key_ops of {kid}; add it with 'diskvault key set KEY --ops ...'")]
    OperationNotAllowed { op: String, kid: String },
    #[error("key {0} is not valid before {1}; it cannot wrap new keys yet")]
    NotYetValid(String, String),
    #[error("key {0} expired at {1}; expired keys still unwrap but cannot wrap new keys; rotate the key or extend --exp")]
    Expired(String, String),
    #[error("purge protection is on: deleted key '{name}' cannot be purged before {until}; recover it instead, or wait")]
    PurgeProtected { name: String, until: String },
    #[error("purge protection cannot be turned off once it is on (as in Azure Key Vault)")]
    PurgeProtectionPermanent,
    #[error("soft-delete retention cannot change once purge protection is on")]
    RetentionLocked,
    #[error("key '{key}' has no grant for identity {object_id}; see 'diskvault key show {key}'")]
    NoSuchGrant { key: String, object_id: String },
    #[error("{0}")]
    NeededByRotation(String),
    #[error("cannot import key: {0}")]
    BadImport(String),
    #[error("key vault {0} does not exist; initialize the store with 'diskvault init' or pass the right --vault")]
    VaultMissing(String),
    #[error("key vault {0} is in use by another diskvault process; unmount that store first")]
    VaultLocked(String),
    #[error("key vault file {path} is corrupt ({reason}); restore it from a backup")]
    Corrupt { path: String, reason: String },
    #[error(
        "key '{name}' is unusable: {reason}; restore that file from a backup of the key vault"
    )]
    KeyCorrupt { name: String, reason: String },
    #[error("cannot write the audit log {path} ({source}); nothing was done: free space on its file system and retry")]
    AuditUnavailable {
        path: String,
        source: std::io::Error,
    },
    /// A revocation that could not be saved. It is never refused: in a daemon it
    /// takes effect in memory (the reconciler revokes the disks at once).
    #[error("{}", revoked_not_saved(what, reason, dir, *live))]
    RevokedNotSaved {
        /// The change as a state, e.g. "key 'a1' is disabled".
        what: String,
        /// Why it could not be saved (the I/O error).
        reason: String,
        /// The vault directory, where space must be freed.
        dir: String,
        /// In a running daemon (which enforces it now) or in a one-off command.
        live: bool,
        errno: i32,
    },
}

fn revoked_not_saved(what: &str, reason: &str, dir: &str, live: bool) -> String {
    if live {
        format!("{what} in the running daemon (its disks are being revoked), but the change could not be saved: {reason}; free space in {dir} and run the command again, or it is undone at the next mount")
    } else {
        format!("the change ({what}) could not be saved: {reason}; nothing changed: free space in {dir} and run the command again")
    }
}

impl VaultError {
    /// The HTTP status text Key Vault would answer with (the audit log's resultSignature).
    pub fn signature(&self) -> &'static str {
        use VaultError::*;
        match self {
            Forbidden { .. }
            | KeyDisabled(_)
            | VersionDisabled(_)
            | OperationNotAllowed { .. }
            | NotYetValid(..)
            | Expired(..)
            | PurgeProtected { .. }
            | PurgeProtectionPermanent
            | RetentionLocked => "Forbidden",
            KeyNotFound(_)
            | VersionNotFound(..)
            | DeletedKeyNotFound(_)
            | NoSuchGrant { .. }
            | WrongVault { .. } => "NotFound",
            KeyExists(_)
            | NameHeldByDeletedKey(_)
            | KeyDeleted(_)
            | PurgeActive(_)
            | NeededByRotation(_) => "Conflict",
            InvalidName { .. }
            | InvalidKeyId { .. }
            | InvalidArgument(_)
            | BadImport(_)
            | UnsupportedAlg(_)
            | Crypto(_) => "BadRequest",
            _ => "InternalServerError",
        }
    }

    /// The errno a control-file write fails with.
    pub fn errno(&self) -> i32 {
        use VaultError::*;
        match self {
            Forbidden { .. }
            | KeyDisabled(_)
            | VersionDisabled(_)
            | OperationNotAllowed { .. }
            | NotYetValid(..)
            | Expired(..) => libc::EACCES,
            PurgeProtected { .. } | PurgeProtectionPermanent | RetentionLocked => libc::EPERM,
            KeyNotFound(_)
            | VersionNotFound(..)
            | DeletedKeyNotFound(_)
            | NoSuchGrant { .. }
            | WrongVault { .. }
            | KeyDeleted(_)
            | MissingPlatformKey(_)
            | VaultMissing(_) => libc::ENOENT,
            KeyExists(_) | NameHeldByDeletedKey(_) => libc::EEXIST,
            PurgeActive(_) | VaultLocked(_) | NeededByRotation(_) => libc::EBUSY,
            InvalidName { .. }
            | InvalidKeyId { .. }
            | InvalidArgument(_)
            | BadImport(_)
            | UnsupportedAlg(_)
            | Crypto(_) => libc::EINVAL,
            Io(e) => e.raw_os_error().unwrap_or(libc::EIO),
            AuditUnavailable { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
            RevokedNotSaved { errno, .. } => *errno,
            KeyCorrupt { .. } | SealedKeyBad { .. } | BadProtection(_) => libc::EIO,
            KekUnavailable(_) | HsmUnavailable(_) | HsmKeyMissing(_) => libc::ENOKEY,
            _ => libc::EIO,
        }
    }
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// The latest time the vault accepts or shows: 9999-12-31T23:59:59Z (RFC 3339 has
/// four-digit years).
pub const MAX_TIME: i64 = 253_402_300_799;

/// Formats a time as RFC 3339. Infallible for every i64: values outside
/// 1970..=9999 (which the parsers refuse, but an old store may hold) are clamped.
pub fn secs_to_iso(secs: i64) -> String {
    let clamped = secs.clamp(0, MAX_TIME);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(clamped as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

pub fn now_iso() -> String {
    secs_to_iso(now_secs())
}

/// Refuses a time past [`MAX_TIME`].
pub fn check_time_range(t: i64, input: &str) -> Result<i64, VaultError> {
    if (0..=MAX_TIME).contains(&t) {
        Ok(t)
    } else {
        Err(VaultError::InvalidArgument(format!(
            "time '{}' is out of range; give a time from 1970 up to 9999-12-31T23:59:59Z",
            input.chars().take(60).collect::<String>()
        )))
    }
}

/// Parses a time for nbf/exp: RFC 3339 (`2027-01-31T00:00:00Z`), a date
/// (`2027-01-31`), or an offset from now (`+90d`, `+12h`). Times past year 9999 and
/// offsets that overflow are refused.
pub fn parse_time(s: &str) -> Result<i64, VaultError> {
    let s = s.trim();
    let bad = || {
        VaultError::InvalidArgument(format!(
            "invalid time '{}'; use RFC 3339 (2027-01-31T00:00:00Z), a date (2027-01-31) or an offset (+90d)",
            s.chars().take(60).collect::<String>()
        ))
    };
    if let Some(rest) = s.strip_prefix('+') {
        let d = humantime::parse_duration(rest).map_err(|_| bad())?;
        let t = i64::try_from(d.as_secs())
            .ok()
            .and_then(|d| now_secs().checked_add(d))
            .unwrap_or(i64::MAX);
        return check_time_range(t, s);
    }
    // RFC 3339 allows lower-case `t` and `z`; humantime takes only upper case.
    let upper = s.to_ascii_uppercase();
    let (full, offset) = if upper.len() == 10 {
        (format!("{upper}T00:00:00Z"), 0)
    } else {
        match split_offset(&upper) {
            Some((local, off)) => (format!("{local}Z"), off),
            None => (upper, 0),
        }
    };
    let t = humantime::parse_rfc3339_weak(&full).map_err(|_| bad())?;
    let t = t
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|_| bad())
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))?;
    // A local time at offset +01:00 is an hour ahead of UTC.
    check_time_range(t.saturating_sub(offset), s)
}

/// Splits an RFC 3339 numeric offset (`+01:00`, `-05:30`, `-00:00`) off a date-time:
/// the local part and the offset in seconds east of UTC.
fn split_offset(s: &str) -> Option<(&str, i64)> {
    if !s.is_char_boundary(s.len().checked_sub(6)?) {
        return None;
    }
    let (local, off) = s.split_at(s.len() - 6);
    let b = off.as_bytes();
    let sign = match b[0] {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    if !local.contains(['T', ' ']) || b[3] != b':' {
        return None;
    }
    let num = |x: &[u8]| -> Option<i64> {
        x.iter()
            .all(u8::is_ascii_digit)
            .then(|| ((x[0] - b'0') * 10 + (x[1] - b'0')) as i64)
    };
    let (h, m) = (num(&b[1..3])?, num(&b[4..6])?);
    if h > 23 || m > 59 {
        return None;
    }
    Some((local, sign * (h * 3600 + m * 60)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatting_is_infallible_and_clamped() {
        assert_eq!(secs_to_iso(i64::MAX), "9999-12-31T23:59:59Z");
        assert_eq!(secs_to_iso(MAX_TIME + 1), "9999-12-31T23:59:59Z");
        assert_eq!(secs_to_iso(i64::MIN), "1970-01-01T00:00:00Z");
        assert_eq!(secs_to_iso(0), "1970-01-01T00:00:00Z");
        assert_eq!(secs_to_iso(MAX_TIME), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn rfc3339_offsets_and_lower_case_are_accepted() {
        let utc = parse_time("2027-01-31T00:00:00Z").unwrap();
        assert_eq!(parse_time("2027-01-31T01:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31T00:00:00+01:00").unwrap(), utc - 3600);
        assert_eq!(parse_time("2027-01-30T18:30:00-05:30").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31T00:00:00-00:00").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31T00:00:00+00:00").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31t00:00:00z").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31t01:00:00+01:00").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31T00:00:00.5Z").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31T01:00:00.25+01:00").unwrap(), utc);
        assert_eq!(parse_time("2027-01-31 01:00:00+01:00").unwrap(), utc);
        // The 9999 cap applies to the UTC time.
        assert_eq!(parse_time("9999-12-31T23:59:59+00:00").unwrap(), MAX_TIME);
        assert_eq!(
            parse_time("9999-12-31T23:59:59+01:00").unwrap(),
            MAX_TIME - 3600
        );
        for bad in [
            "9999-12-31T23:59:59-01:00",
            "1970-01-01T00:30:00+01:00",
            "2027-01-31T00:00:00+24:00",
            "2027-01-31T00:00:00+01:60",
            "2027-01-31T00:00:00+0100",
            "2027-01-31T00:00:00+1:00",
            "2027-01-31T00:00:00+01:0x",
            "2027-01-31T00:00:00 01:00",
            "2027-01-31+01:00",
            "+01:00",
            "2027-01-31T00:00:00€0:00",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(
                matches!(e, VaultError::InvalidArgument(_)) && e.errno() == libc::EINVAL,
                "{bad:?}: {e}"
            );
        }
    }

    #[test]
    fn far_future_times_are_refused() {
        assert_eq!(parse_time("9999-12-31T23:59:59Z").unwrap(), MAX_TIME);
        assert!(parse_time("2027-01-31").is_ok());
        assert!(parse_time("+90d").unwrap() > now_secs());
        for bad in [
            "+3000000d",
            "+106751991167300d",
            "+584942417355y",
            "+99999999999999999999d",
            "10000-01-01",
            "10000-01-01T00:00:00Z",
            "1969-12-31T23:59:59Z",
            "",
            "+",
        ] {
            let e = parse_time(bad).unwrap_err();
            assert!(
                matches!(e, VaultError::InvalidArgument(_)) && e.errno() == libc::EINVAL,
                "{bad:?}: {e}"
            );
        }
    }
}

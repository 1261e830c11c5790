use crate::crypto::CryptoError;
use crate::vault::VaultError;
use thiserror::Error;

/// Every failure of the store. Messages name the cause and the fix; none contains
/// key material or plaintext.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store {0} does not exist; create it with 'diskvault init {0}' (or mount it, which creates it)")]
    StoreMissing(String),
    #[error("{0} is not a diskvault store (no diskvault.json); pick the store directory or run 'diskvault init' on an empty one")]
    NotAStore(String),
    #[error("{0} is already a diskvault store; use it as it is, or pick an empty directory")]
    AlreadyAStore(String),
    #[error("store header {path} is corrupt ({reason}); restore it from a backup")]
    BadHeader { path: String, reason: String },
    #[error("store format version {0} is not supported by this diskvault (it reads versions 1 and 2); upgrade diskvault")]
    UnsupportedVersion(u64),
    #[error(
        "store {path} is already in use{holder}; unmount it first ('diskvault umount MOUNTPOINT')"
    )]
    Locked { path: String, holder: String },
    #[error("no disk named '{0}'; see 'diskvault disk list'")]
    DiskNotFound(String),
    #[error("a disk named '{0}' already exists; choose another name or delete that disk first")]
    DiskExists(String),
    #[error("invalid disk name '{name}': {reason}")]
    InvalidName { name: String, reason: String },
    #[error("invalid {kind} name '{name}': {reason}")]
    InvalidObjectName {
        kind: super::ObjectKind,
        name: String,
        reason: String,
    },
    #[error("invalid size '{input}': {reason}")]
    InvalidSize { input: String, reason: String },
    #[error("unknown sku '{0}'; use Premium_LRS, StandardSSD_LRS, Standard_LRS, UltraSSD_LRS or PremiumV2_LRS")]
    InvalidSku(String),
    #[error("offset or size beyond the 64 TiB disk limit")]
    TooLarge,
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    #[error("metadata of disk '{disk}' ({path}) is corrupt: {reason}; restore meta.json from a backup or delete the disk")]
    CorruptMeta {
        disk: String,
        path: String,
        reason: String,
    },
    #[error("disk '{disk}' is unavailable: {reason}")]
    Unavailable { disk: String, reason: String },
    #[error("disk '{0}' is in use; close every program that has it open and retry")]
    Busy(String),
    #[error("a rekey of disk '{0}' is already running; follow it in .vault/disks/{0}/rekey (or 'diskvault disk rekey {0}' once it is done)")]
    RekeyRunning(String),
    #[error("no {kind} named '{name}'; see 'diskvault {kind} list'")]
    ObjectNotFound {
        kind: super::ObjectKind,
        name: String,
    },
    #[error(
        "a {kind} named '{name}' already exists; choose another name or delete that {kind} first"
    )]
    ObjectExists {
        kind: super::ObjectKind,
        name: String,
    },
    #[error("{kind} '{name}' is read-only: snapshots and images never change; create a disk from it ('diskvault disk create NEW --source {name}') and write to that")]
    ReadOnly {
        kind: super::ObjectKind,
        name: String,
    },
    /// A source by bare name that is no disk, snapshot or image of the kinds asked for.
    #[error("{0}")]
    SourceNotFound(String),
    /// A rule on keys or sources (the same disk encryption set, sizes only grow).
    #[error("{0}")]
    Refused(String),
    /// A count limit (snapshots per disk), as Azure's quota.
    #[error("{0}")]
    Limit(String),
    #[error("no disk encryption set named '{0}'; see 'diskvault des list'")]
    DesNotFound(String),
    #[error("invalid disk encryption set name '{name}': {reason}")]
    InvalidSetName { name: String, reason: String },
    #[error("disk encryption set '{name}' is unusable: {reason}; restore that file from a backup of the store")]
    DesCorrupt { name: String, reason: String },
    #[error("a disk encryption set named '{0}' already exists; choose another name")]
    DesExists(String),
    #[error("disk encryption set '{name}' is used by {disks}; delete those, or move the disks to another set, first")]
    DesInUse { name: String, disks: String },
    #[error("a disk encryption set needs a key vault with purge protection; run 'diskvault vault set --purge-protection true' (it cannot be turned off again)")]
    PurgeProtectionRequired,
    #[error("key URL '{0}' has no version; give a versioned key URL, or enable auto-rotation (--auto-rotate) to follow the latest version")]
    VersionlessKeyUrl(String),
    #[error("customer-managed key encryption cannot be disabled; copy the data to a new disk")]
    CmkCannotBeDisabled,
    #[error("{0}")]
    NotPermitted(String),
    #[error("disk '{0}' is attached (a program holds it open); close it, the analogue of deallocating the VM, and retry")]
    Attached(String),
    #[error("{0}; key state is not being enforced, so customer-key disks refuse I/O until the reconciler runs again (details in STORE/daemon.log; remount to restart it)")]
    EnforcementDown(String),
    #[error("not enough free space for {what}: it needs {need} bytes ({detail}) but only {free} are free in {path}; free some space and retry")]
    NoSpace {
        what: String,
        need: u64,
        detail: String,
        free: u64,
        path: String,
    },
    /// A resource that is not there, in Azure's words (`ResourceNotFound`).
    #[error("{0}")]
    NotFound(String),
    /// A store file that does not parse; the message names it and the fix.
    #[error("{0}")]
    Corrupt(String),
    #[error("no VM named '{0}'; see 'diskvault vm list'")]
    VmNotFound(String),
    #[error("a VM named '{0}' already exists; choose another name or delete that VM first")]
    VmExists(String),
    /// Azure's `OperationNotAllowed`/`Conflict` for VMs and their disks.
    #[error("{0}")]
    VmConflict(String),
    /// A VM that can't start because a disk can't be used (its key is revoked).
    #[error("{0}")]
    VmCannotStart(String),
    /// QEMU failed, or could not be reached.
    #[error("{0}")]
    Hypervisor(String),
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        let mut context = context.into();
        if source.raw_os_error() == Some(libc::ENOSPC) {
            context.push_str(
                " (the store's file system is full: delete snapshots, images or disks you no longer need, or give it more space, and retry)",
            );
        }
        StoreError::Io { context, source }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;

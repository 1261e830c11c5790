//! diskvault: Azure Managed Disks server-side encryption, emulated on one machine.
//!
//! Layers, lowest first: `crypto` (ciphers, key wrapping) → `vault` (key providers)
//! → `store` (on-disk format, data path, locking) → `vm` (QEMU processes) → `control`
//! (the operations behind `.vault/` and the CLI) → `fs` (FUSE frontend) → `cli`.

pub mod cli;
pub mod control;
pub mod crypto;
pub mod durable;
#[doc(hidden)]
pub mod fault;
pub mod fs;
pub mod lock;
pub mod mountinfo;
pub mod shown;
pub mod store;
/// Test support (seeded patterns, an openssl cross-check); not part of the API.
#[doc(hidden)]
pub mod testkit;
pub mod vault;
pub mod vm;

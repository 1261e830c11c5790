//! The independent decryptor (tests/independent_decrypt.py, written from
//! docs/format.md) against layered objects: snapshots, images, clones, whiteouts.

//! Disk metadata (`disks/ID/meta.json`): serialization, validation and the key check
//! that binds each wrapped DEK to its disk. See docs/format.md.

use super::encryption::{EncryptionType, LayerKind};
use super::spec::{validate_name, Sku, MAX_DISK_SIZE};
use crate::crypto::wrap::{hex, unhex, WRAP_ALG};
use crate::crypto::{random_bytes, CipherKind, Secret, DATA_UNIT};
use crate::vault::{Caller, KeyId, KeyProvider, VaultError, WrappedKey};
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

/// Metadata of a disk without deltas (the first release's format, still written for
/// such disks so older stores stay readable by older releases).
pub const META_VERSION: u64 = 1;
/// Metadata with a delta `stack` (snapshots, images and the disks they share with).
pub const META_VERSION_LAYERED: u64 = 2;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Encryption {
    #[serde(rename = "type")]
    pub kind: EncryptionType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_encryption_set_id: Option<String>,
}

/// One encryption layer. Layer 0 is applied to plaintext first. With double
/// encryption layer 0 is the customer-key layer and layer 1 the platform layer.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Layer {
    pub cipher: String,
    /// Hex CTR nonce; empty for XTS.
    #[serde(default)]
    pub nonce: String,
    /// Id of the key that wrapped this layer's DEK, with its version.
    pub kid: String,
    pub alg: String,
    /// Standard base64 (with padding) of the RSA-OAEP output.
    pub wrapped_key: String,
    /// Hex HMAC-SHA256 binding the DEK to this disk and layer.
    pub key_check: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskMeta {
    pub format_version: u64,
    pub id: String,
    pub name: String,
    pub size_bytes: u64,
    pub sku: String,
    pub created_at: String,
    pub encryption: Encryption,
    pub data_unit_size: u64,
    pub layers: Vec<Layer>,
    /// A re-encryption under fresh DEKs in progress (`disk rekey`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rekey: Option<Rekey>,
    /// Delta ids, bottom first (formatVersion 2). A disk's last delta is its writable
    /// one; empty for a disk whose data is still `disks/ID/data` (formatVersion 1).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stack: Vec<String>,
    /// The id the layers' keyCheck binds to: the object whose DEKs these are, when
    /// they are shared (a snapshot, an image, a disk made from them). Absent: `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check_id: Option<String>,
    /// Where the object came from (`az ... show`'s `creationData`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_data: Option<CreationData>,
    /// Snapshots only: `--incremental`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<bool>,
    /// Snapshots made with `--incremental false`: a full copy of the source's data
    /// into the snapshot's own delta (`deltas/ID`), pending or done.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_copy: Option<FullCopy>,
    /// Images only: how VMs made from the image boot (`image create --kernel`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<Boot>,
    /// Resource group and location (absent: `diskvault`, `local`).
    #[serde(
        default,
        skip_serializing_if = "crate::store::arm::Placement::is_empty"
    )]
    pub placement: crate::store::arm::Placement,
}

/// An image's direct-kernel boot definition: host paths of the kernel and initrd
/// (not copied into the store, which holds only ciphertext) and the command line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Boot {
    pub kernel: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
}

/// Checks a boot definition: absolute paths, one short command line.
pub fn check_boot(b: &Boot) -> Result<(), super::StoreError> {
    let bad = |m: String| Err(super::StoreError::InvalidArgument(m));
    for p in std::iter::once(&b.kernel).chain(b.initrd.iter()) {
        if !p.starts_with('/') || p.len() > 4096 || p.chars().any(|c| c.is_control()) {
            return bad(format!(
                "boot file '{}' must be an absolute path of at most 4096 characters",
                p.chars().take(80).collect::<String>()
            ));
        }
    }
    if let Some(a) = &b.append {
        if a.len() > 4096 || a.chars().any(|c| c.is_control()) {
            return bad("--append takes one line of at most 4096 characters".into());
        }
    }
    Ok(())
}

/// The state of a full snapshot's copy.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum FullCopy {
    /// Readable through the shared stack; the copy is still to be made.
    Pending,
    /// The snapshot's stack is its own delta alone.
    Done,
}

/// `creationData` as in Azure: how and from what an object was made.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreationData {
    /// `Empty`, `Copy` (from a disk or snapshot) or `FromImage`.
    pub create_option: String,
    /// `/diskvault/disks/NAME`, `/diskvault/snapshots/NAME` or `/diskvault/images/NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_resource_id: Option<String>,
    /// The source's id (its uniqueId): a new object of the same name has another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_unique_id: Option<String>,
}

/// Rekey state: data units below `boundary` are encrypted with `layers` (new DEKs),
/// the rest with the disk's current layers.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rekey {
    pub layers: Vec<Layer>,
    pub boundary: u64,
    pub started_at: String,
    /// The id the new layers' keyCheck binds to, when it is not the object's `id`
    /// (a disk whose old DEKs its snapshots keep gets a fresh one, so the two
    /// families stay apart). It becomes `keyCheckId` when the rekey completes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_check_id: Option<String>,
}

/// A layer after validation: parsed cipher, nonce, key id and wrapped key.
pub struct ParsedLayer {
    pub cipher: CipherKind,
    pub nonce: Vec<u8>,
    /// `wrapped.kid`, parsed.
    pub key: KeyId,
    pub wrapped: WrappedKey,
}

impl Layer {
    /// Layer `index` of disk `disk_id` under a fresh DEK and nonce for `cipher`, the
    /// DEK wrapped by `provider` with `key` as `caller`. Every new layer is made here
    /// (disk creation and rekey).
    pub fn seal(
        provider: &dyn KeyProvider,
        caller: &Caller,
        key: &KeyId,
        cipher: CipherKind,
        disk_id: &str,
        index: usize,
    ) -> Result<Layer, VaultError> {
        let dek = Secret::random(cipher.key_len())?;
        let nonce = random_bytes(cipher.nonce_len())?;
        let wrapped = provider.wrap(caller, key, &dek)?;
        let mut layer = Layer {
            cipher: cipher.name().into(),
            nonce: hex(&nonce),
            kid: String::new(),
            alg: String::new(),
            wrapped_key: String::new(),
            key_check: key_check(&dek, disk_id, index, cipher, &nonce),
        };
        layer.set_wrapped(&wrapped);
        Ok(layer)
    }

    /// Records a wrapping of the layer's DEK; a re-wrap keeps the DEK, so the nonce
    /// and keyCheck stay.
    pub fn set_wrapped(&mut self, w: &WrappedKey) {
        self.kid = w.kid.clone();
        self.alg = w.alg.clone();
        self.wrapped_key = encode_wrapped(&w.value);
    }

    pub fn parse(&self) -> Result<ParsedLayer, String> {
        let cipher: CipherKind = self.cipher.parse().map_err(|e| format!("{e}"))?;
        let nonce = unhex(&self.nonce).ok_or("nonce is not hex")?;
        if nonce.len() != cipher.nonce_len() {
            return Err(format!(
                "nonce must be {} bytes for {cipher}",
                cipher.nonce_len()
            ));
        }
        if self.alg != WRAP_ALG {
            return Err(format!("unsupported wrapping algorithm '{}'", self.alg));
        }
        let value = base64::engine::general_purpose::STANDARD
            .decode(&self.wrapped_key)
            .map_err(|_| "wrappedKey is not base64")?;
        if unhex(&self.key_check).map(|k| k.len()) != Some(32) {
            return Err("keyCheck is not a 32-byte hex string".into());
        }
        let key = KeyId::parse(&self.kid).map_err(|e| e.to_string())?;
        Ok(ParsedLayer {
            cipher,
            nonce,
            key,
            wrapped: WrappedKey {
                kid: self.kid.clone(),
                alg: self.alg.clone(),
                value,
            },
        })
    }
}

/// HMAC-SHA256 keyed with the DEK over the parameters the DEK is used with.
/// Catches a wrapped key copied from another disk and edited cipher parameters.
pub fn key_check(
    dek: &Secret,
    disk_id: &str,
    layer: usize,
    cipher: CipherKind,
    nonce: &[u8],
) -> String {
    let mut mac =
        <Hmac<Sha256> as KeyInit>::new_from_slice(dek.expose()).expect("HMAC takes any key length");
    let msg = format!(
        "diskvault-keycheck-v1\n{disk_id}\n{layer}\n{}\n{}\n{DATA_UNIT}",
        cipher.name(),
        hex(nonce)
    );
    mac.update(msg.as_bytes());
    hex(&mac.finalize().into_bytes())
}

pub fn encode_wrapped(value: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(value)
}

impl DiskMeta {
    /// The id the layers' keyCheck binds to.
    pub fn dek_id(&self) -> &str {
        self.key_check_id.as_deref().unwrap_or(&self.id)
    }

    /// The id a rekey's new layers' keyCheck binds to.
    pub fn rekey_dek_id(&self) -> &str {
        self.rekey
            .as_ref()
            .and_then(|r| r.key_check_id.as_deref())
            .unwrap_or(&self.id)
    }

    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let meta: DiskMeta =
            serde_json::from_slice(bytes).map_err(|e| format!("invalid JSON: {e}"))?;
        meta.validate()?;
        Ok(meta)
    }

    pub fn to_json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(self).expect("metadata always serializes");
        v.push(b'\n');
        v
    }

    /// Structural checks; the cryptographic check happens when the DEK is unwrapped.
    pub fn validate(&self) -> Result<(), String> {
        let is_id = |s: &str| {
            s.len() == 32
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        match self.format_version {
            META_VERSION if !self.stack.is_empty() || self.key_check_id.is_some() => {
                return Err("formatVersion 1 has no stack or keyCheckId".into())
            }
            META_VERSION => {}
            META_VERSION_LAYERED if self.stack.is_empty() => {
                return Err("formatVersion 2 needs a non-empty stack".into())
            }
            META_VERSION_LAYERED => {}
            v => {
                return Err(format!(
                    "formatVersion {v} is not supported (expected 1 or 2)"
                ))
            }
        }
        if !is_id(&self.id) {
            return Err("id must be 32 lowercase hex digits".into());
        }
        if let Some(s) = self.stack.iter().find(|s| !is_id(s)) {
            return Err(format!("stack entry '{s}' is not 32 lowercase hex digits"));
        }
        let mut seen = std::collections::HashSet::new();
        if !self.stack.iter().all(|s| seen.insert(s)) {
            return Err("stack repeats a delta".into());
        }
        if self.stack.len() > super::MAX_STACK {
            return Err(format!("stack is deeper than {}", super::MAX_STACK));
        }
        let rekey_id = self.rekey.as_ref().and_then(|r| r.key_check_id.as_deref());
        if self
            .key_check_id
            .as_deref()
            .or(rekey_id)
            .is_some_and(|k| !is_id(k))
            || rekey_id.is_some_and(|k| !is_id(k))
        {
            return Err("keyCheckId must be 32 lowercase hex digits".into());
        }
        validate_name(&self.name).map_err(|e| e.to_string())?;
        if self.size_bytes > MAX_DISK_SIZE {
            return Err("sizeBytes exceeds 64 TiB".into());
        }
        self.sku.parse::<Sku>().map_err(|e| e.to_string())?;
        if self.data_unit_size != DATA_UNIT as u64 {
            return Err(format!("dataUnitSize must be {DATA_UNIT}"));
        }
        let kinds = self.encryption.kind.layers();
        let has_des = self.encryption.disk_encryption_set_id.is_some();
        if has_des != self.encryption.kind.uses_customer_key() {
            return Err(if has_des {
                "a platform-key disk must not name a disk encryption set".into()
            } else {
                "a customer-key disk must name its disk encryption set".into()
            });
        }
        if self.layers.len() != kinds.len() {
            return Err(format!(
                "{} expects {} encryption layer(s)",
                self.encryption.kind,
                kinds.len()
            ));
        }
        for (l, &kind) in self.layers.iter().zip(kinds) {
            let key = l.parse()?.key;
            if LayerKind::of(&key) != kind {
                return Err(format!(
                    "layer key '{}' does not fit {}",
                    l.kid, self.encryption.kind
                ));
            }
            if !key.is_versioned() {
                return Err(format!("layer key '{}' must be a versioned key URL", l.kid));
            }
        }
        if let Some(rk) = &self.rekey {
            if rk.layers.len() != self.layers.len() {
                return Err("rekey.layers must match layers".into());
            }
            for (new, old) in rk.layers.iter().zip(&self.layers) {
                let (new_key, old_key) = (new.parse()?.key, old.parse()?.key);
                if new.cipher != old.cipher || LayerKind::of(&new_key) != LayerKind::of(&old_key) {
                    return Err(
                        "rekey.layers must use the same ciphers and key kinds as layers".into(),
                    );
                }
            }
            if rk.boundary > self.size_bytes.div_ceil(DATA_UNIT as u64) {
                return Err("rekey.boundary lies past the end of the disk".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> DiskMeta {
        DiskMeta {
            format_version: 1,
            id: "0123456789abcdef0123456789abcdef".into(),
            name: "disk1".into(),
            size_bytes: 1 << 30,
            sku: "Premium_LRS".into(),
            created_at: "2026-11-29T00:00:00Z".into(),
            encryption: Encryption {
                kind: EncryptionType::PlatformKey,
                disk_encryption_set_id: None,
            },
            data_unit_size: 4096,
            layers: vec![Layer {
                cipher: "aes-256-xts".into(),
                nonce: String::new(),
                kid: "platform/0123456789abcdef0123456789abcdef".into(),
                alg: WRAP_ALG.into(),
                wrapped_key: encode_wrapped(&[7u8; 256]),
                key_check: "00".repeat(32),
            }],
            rekey: None,
            stack: vec![],
            key_check_id: None,
            creation_data: None,
            incremental: None,
            full_copy: None,
            boot: None,
            placement: Default::default(),
        }
    }

    #[test]
    fn round_trip() {
        let m = sample();
        assert_eq!(DiskMeta::from_json(&m.to_json()).unwrap(), m);
    }

    #[test]
    fn rejects_corruption() {
        let good = String::from_utf8(sample().to_json()).unwrap();
        let cases = [
            good[..good.len() / 2].to_string(),
            good.replace("\"formatVersion\": 1", "\"formatVersion\": 2"),
            good.replace("aes-256-xts", "aes-128-ecb"),
            good.replace("Premium_LRS", "Gold_LRS"),
            good.replace("\"dataUnitSize\": 4096", "\"dataUnitSize\": 512"),
            good.replace("\"name\": \"disk1\"", "\"name\": \"../etc\""),
            good.replace("RSA-OAEP-256", "RSA1_5"),
            good.replace("\"sizeBytes\": 1073741824", "\"sizeBytes\": -1"),
            good.replace("\"sizeBytes\": 1073741824,", ""),
            good.replace("\"nonce\": \"\"", "\"nonce\": \"00ff\""),
            good.replace("\"id\": \"0123", "\"id\": \"zz23"),
            good.replace("\"sku\"", "\"extra\": 1, \"sku\""),
            good.replace(
                "EncryptionAtRestWithPlatformKey",
                "EncryptionAtRestWithNothing",
            ),
            "null".to_string(),
        ];
        for (i, c) in cases.iter().enumerate() {
            assert_ne!(c, &good, "case {i} did not change the document");
            assert!(
                DiskMeta::from_json(c.as_bytes()).is_err(),
                "case {i} was accepted"
            );
        }
    }

    #[test]
    fn a_sealed_layer_unwraps_to_a_dek_that_matches_its_key_check() {
        use crate::vault::PlatformKeys;
        let dir = tempfile::tempdir().unwrap();
        let c = crate::vault::custody::Custody::clear(dir.path(), None);
        let p = PlatformKeys::create(dir.path(), &c).unwrap();
        let key = p.default_key().unwrap();
        let caller = Caller::platform();
        let id = "0123456789abcdef0123456789abcdef";
        for (i, cipher) in CipherKind::ALL.into_iter().enumerate() {
            let l = Layer::seal(&p, &caller, &key, cipher, id, i).unwrap();
            assert_eq!(
                (l.cipher.as_str(), l.kid.clone()),
                (cipher.name(), key.to_string())
            );
            let parsed = l.parse().unwrap();
            assert_eq!(parsed.key, key);
            assert_eq!(parsed.nonce.len(), cipher.nonce_len());
            let dek = p.unwrap(&caller, &key, &parsed.wrapped).unwrap();
            assert_eq!(dek.len(), cipher.key_len());
            assert_eq!(key_check(&dek, id, i, cipher, &parsed.nonce), l.key_check);
            assert_ne!(
                key_check(&dek, id, i + 1, cipher, &parsed.nonce),
                l.key_check
            );
        }
        let other = KeyId::parse("platform/ffffffffffffffffffffffffffffffff").unwrap();
        let e = Layer::seal(&p, &caller, &other, CipherKind::Aes256Xts, id, 0).unwrap_err();
        assert!(matches!(e, VaultError::UnknownKey(_)), "{e}");
    }

    #[test]
    fn key_check_binds_disk_and_parameters() {
        let dek = Secret::new(vec![1u8; 64]);
        let a = key_check(&dek, "aa", 0, CipherKind::Aes256Xts, &[]);
        assert_eq!(a.len(), 64);
        assert_ne!(a, key_check(&dek, "ab", 0, CipherKind::Aes256Xts, &[]));
        assert_ne!(a, key_check(&dek, "aa", 1, CipherKind::Aes256Xts, &[]));
        assert_ne!(
            a,
            key_check(
                &Secret::new(vec![2u8; 64]),
                "aa",
                0,
                CipherKind::Aes256Xts,
                &[]
            )
        );
    }
}

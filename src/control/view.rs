//! The Azure-shaped JSON views that `.vault/` files and the CLI show: disks, disk
//! encryption sets and the store's status. They read typed state from the store; the
//! key vault's own REST shapes are in `vault/keyvault/view.rs`, because the vault's
//! operations answer with them (as Key Vault's API does).

use crate::store::des::{DesRecord, TENANT_ID};
use crate::store::{disk_resource_id, Disk, Result, Sku, Store, STORE_VERSION};
use serde_json::{json, Value};

/// `.vault/status.json`: the store, its reconciler, the vault, every set and disk.
pub fn status(store: &Store) -> Value {
    let vault = store.vault();
    json!({
        "store": store.root().display().to_string(),
        "formatVersion": STORE_VERSION,
        "platformKeyId": store.keyring().platform_key().map(|k| k.to_string()),
        "reconcilerPasses": store.reconcile_passes(),
        "reconciler": store.reconciler_health(),
        "keyVault": vault.show(),
        "diskEncryptionSets": store
            .des_list()
            .iter()
            .map(|d| set_json(d, &vault.name()))
            .collect::<Vec<_>>(),
        "disks": store.list().iter().map(|d| disk(store, d)).collect::<Vec<_>>(),
    })
}

/// `disks/NAME/disk.json`, shaped like `az disk show` plus diskvault's own fields.
pub fn disk(store: &Store, disk: &Disk) -> Value {
    let m = disk.meta();
    let sku: Sku = m.sku.parse().unwrap_or_default();
    let (cipher, kid) = m
        .layers
        .first()
        .map(|l| (l.cipher.clone(), l.kid.clone()))
        .unwrap_or_default();
    let key_ids: Vec<&str> = m.layers.iter().map(|l| l.kid.as_str()).collect();
    json!({
        "name": m.name,
        "id": disk_resource_id(&m.name),
        "type": "Microsoft.Compute/disks",
        "location": "local",
        "uniqueId": m.id,
        "sku": {"name": sku.name(), "tier": sku.tier()},
        "diskSizeBytes": m.size_bytes,
        "diskSizeGB": m.size_bytes.div_ceil(1 << 30),
        "diskState": if disk.open_handles() > 0 { "Attached" } else { "Unattached" },
        "provisioningState": "Succeeded",
        "timeCreated": m.created_at,
        "encryption": m.encryption,
        "cipher": cipher,
        "keyId": kid,
        "layerKeyIds": key_ids,
        "keyState": store.key_state(disk),
        "allocatedBytes": disk.allocated_bytes(),
    })
}

/// `disk-encryption-sets/NAME/status.json`, like `az disk-encryption-set show`.
pub fn set(store: &Store, name: &str) -> Result<Value> {
    Ok(set_json(&store.keyring().des(name)?, &store.vault().name()))
}

/// A set's JSON; a set whose file is corrupt shows why instead.
pub fn set_json(d: &DesRecord, vault_name: &str) -> Value {
    if let Some(e) = d.corrupt_error() {
        return json!({
            "name": d.name,
            "id": d.id(),
            "type": "Microsoft.Compute/diskEncryptionSets",
            "provisioningState": d.provisioning_state,
            "error": e.to_string(),
        });
    }
    json!({
        "name": d.name,
        "id": d.id(),
        "type": "Microsoft.Compute/diskEncryptionSets",
        "location": "local",
        "resourceGroup": "diskvault",
        "encryptionType": d.encryption_type,
        "activeKey": {
            "keyUrl": d.active_key,
            "sourceVault": {"id": format!("/diskvault/vaults/{vault_name}")},
        },
        "previousKeys": d.previous_keys.iter().map(|k| json!({"keyUrl": k})).collect::<Vec<_>>(),
        "identity": {
            "type": "SystemAssigned",
            "principalId": d.principal_id,
            "tenantId": TENANT_ID,
        },
        "provisioningState": d.provisioning_state,
        "rotationToLatestKeyVersionEnabled": d.rotation_to_latest_key_version_enabled,
        "lastKeyRotationTimestamp": d.last_key_rotation_timestamp,
        "autoKeyRotationError": d.auto_key_rotation_error,
        "timeCreated": d.created,
    })
}

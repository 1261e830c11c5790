//! The test that holds every typed request to its file form: each one, written to its
//! object's control file and sent as JSON to `command`, parses back to itself.

use super::tests::{control, objects, split, vmss_spec};
use super::*;
use crate::control::{CopyKind, CopyRequest, VmRequest};
use crate::store::{CreateOptions, Sku};
use crate::vault::{KeyOptions, KeyUpdate, RotationPolicy};
use crate::vm::CreateSpec;

#[test]
fn every_request_survives_its_wire_form() {
    let (_d, c) = control();
    let caller = Caller::current_user();
    let kid = objects(&c, &["k1", "k2"]);
    let version = kid.rsplit('/').next().unwrap().to_string();
    c.execute(&KeyRequest::Delete { name: "k2".into() }.into(), &caller)
        .unwrap();
    let t = crate::vault::parse_time("2027-01-31T00:00:00Z").unwrap();
    let policy: RotationPolicy = serde_json::from_str(
        r#"{"lifetimeActions":[{"trigger":{"timeAfterCreate":"P90D"},"action":{"type":"Rotate"}}],"attributes":{"expiryTime":"P1Y"}}"#,
    )
    .unwrap();
    let full = KeyOptions {
        protection: Some(crate::vault::keyvault::Protection::Hsm),
        size: Some(3072),
        key_ops: Some(vec!["wrapKey".into(), "unwrapKey".into()]),
        nbf: Some(t),
        exp: Some(t + 86400),
        enabled: Some(false),
    };
    let requests: Vec<Request> = vec![
        VaultRequest::PurgeProtection(true).into(),
        VaultRequest::RetentionDays(30).into(),
        KeyRequest::Create {
            name: "new".into(),
            options: full.clone(),
        }
        .into(),
        KeyRequest::Create {
            name: "new".into(),
            options: KeyOptions::default(),
        }
        .into(),
        KeyRequest::Import {
            name: "imp".into(),
            pem: zeroize::Zeroizing::new(
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".into(),
            ),
            options: KeyOptions {
                size: None,
                ..full.clone()
            },
        }
        .into(),
        KeyRequest::Update {
            name: "k1".into(),
            version: None,
            update: KeyUpdate {
                enabled: Some(false),
                nbf: Some(None),
                exp: Some(Some(t)),
                key_ops: Some(vec!["unwrapKey".into()]),
                force: false,
            },
        }
        .into(),
        KeyRequest::Update {
            name: "k1".into(),
            version: Some(version.clone()),
            update: KeyUpdate {
                enabled: Some(true),
                force: true,
                ..Default::default()
            },
        }
        .into(),
        KeyRequest::Rotate {
            name: "k1".into(),
            options: KeyOptions::default(),
        }
        .into(),
        KeyRequest::Rotate {
            name: "k1".into(),
            options: KeyOptions {
                size: Some(4096),
                nbf: Some(t),
                exp: Some(t + 1),
                ..Default::default()
            },
        }
        .into(),
        KeyRequest::Grant {
            name: "k1".into(),
            identity: Identity::Set("s1".into()),
            permissions: None,
        }
        .into(),
        KeyRequest::Grant {
            name: "k1".into(),
            identity: Identity::ObjectId("3f2504e0-4f89-41d3-9a0c-0305e82c3301".into()),
            permissions: Some(vec!["get".into(), "unwrapKey".into()]),
        }
        .into(),
        KeyRequest::RevokeGrant {
            name: "k1".into(),
            identity: Identity::Set("s1".into()),
        }
        .into(),
        KeyRequest::RotationPolicy {
            name: "k1".into(),
            policy: Some(policy),
        }
        .into(),
        KeyRequest::RotationPolicy {
            name: "k1".into(),
            policy: None,
        }
        .into(),
        KeyRequest::Delete { name: "k1".into() }.into(),
        KeyRequest::Recover { name: "k2".into() }.into(),
        KeyRequest::Purge { name: "k2".into() }.into(),
        SetRequest::Create {
            name: "s2".into(),
            key_url: "k1".into(),
            encryption_type: Some("EncryptionAtRestWithPlatformAndCustomerKeys".into()),
            auto_rotate: true,
            placement: crate::store::arm::Placement::new(Some("rg1"), Some("local")),
        }
        .into(),
        SetRequest::Update {
            name: "s1".into(),
            key_url: Some(kid.clone()),
            auto_rotate: Some(false),
            encryption_type: None,
        }
        .into(),
        SetRequest::Delete { name: "s1".into() }.into(),
        DiskRequest::Create {
            name: "d2".into(),
            options: CreateOptions {
                size: 3 << 30,
                sku: Sku::UltraSsdLrs,
                cipher: Some(crate::crypto::CipherKind::Aes256Ctr),
                disk_encryption_set: Some("s1".into()),
                placement: crate::store::arm::Placement::new(Some("rg1"), None),
            },
            source: None,
            encryption_type: None,
        }
        .into(),
        DiskRequest::Create {
            name: "d3".into(),
            options: CreateOptions {
                size: 0,
                sku: Sku::StandardLrs,
                cipher: None,
                disk_encryption_set: Some("s1".into()),
                placement: Default::default(),
            },
            source: Some("c1".into()),
            encryption_type: Some("EncryptionAtRestWithCustomerKey".into()),
        }
        .into(),
        CopyRequest::Create {
            kind: CopyKind::Snapshot,
            name: "c2".into(),
            source: "/diskvault/disks/d1".into(),
            incremental: false,
            set: Some("s1".into()),
            encryption_type: Some("EncryptionAtRestWithCustomerKey".into()),
            placement: crate::store::arm::Placement::new(None, Some("local")),
            boot: None,
        }
        .into(),
        CopyRequest::Create {
            kind: CopyKind::Image,
            name: "i2".into(),
            source: "d1".into(),
            incremental: false,
            set: None,
            encryption_type: None,
            placement: Default::default(),
            boot: Some(crate::store::meta::Boot {
                kernel: "/boot/vmlinuz".into(),
                initrd: Some("/tmp/initrd".into()),
                append: Some("console=ttyS0 quiet".into()),
            }),
        }
        .into(),
        CopyRequest::SetBoot {
            name: "c1".into(),
            boot: Some(crate::store::meta::Boot {
                kernel: "/boot/vmlinuz".into(),
                initrd: None,
                append: Some("console=ttyS0 a=b".into()),
            }),
        }
        .into(),
        CopyRequest::SetBoot {
            name: "c1".into(),
            boot: None,
        }
        .into(),
        crate::control::VmssRequest::Create(Box::new(crate::vm::VmssSpec {
            model: crate::store::vmss::VmssModel {
                os_disk_encryption_set: Some("s1".into()),
                data_disk_encryption_sets: vec!["s1".into()],
                storage_sku: Some("UltraSSD_LRS".into()),
                admin_username: Some("azureuser".into()),
                upgrade_policy: "Automatic".into(),
                ..vmss_spec("ss2").model
            },
            instance_count: 3,
            placement: crate::store::arm::Placement::new(Some("rg"), Some("local")),
            ..vmss_spec("ss2")
        }))
        .into(),
        crate::control::VmssRequest::Scale {
            name: "ss1".into(),
            capacity: 4,
        }
        .into(),
        crate::control::VmssRequest::Power {
            name: "ss1".into(),
            op: crate::vm::Power::Deallocate,
            instance_ids: Some(vec![0, 2]),
        }
        .into(),
        crate::control::VmssRequest::Power {
            name: "ss1".into(),
            op: crate::vm::Power::Start,
            instance_ids: None,
        }
        .into(),
        crate::control::VmssRequest::DeleteInstances {
            name: "ss1".into(),
            instance_ids: vec![0],
        }
        .into(),
        crate::control::VmssRequest::Delete { name: "ss1".into() }.into(),
        crate::control::ArmRequest::VaultCreate {
            name: "kv1".into(),
            purge_protection: Some(true),
            retention_days: Some(30),
            placement: crate::store::arm::Placement::new(Some("rg1"), Some("westus")),
        }
        .into(),
        crate::control::ArmRequest::SetPolicy {
            object_id: "e776e117-7f5b-469e-a98c-77e19781f08a".into(),
            permissions: vec!["wrapKey".into(), "get".into()],
        }
        .into(),
        crate::control::ArmRequest::DeletePolicy {
            object_id: "e776e117-7f5b-469e-a98c-77e19781f08a".into(),
        }
        .into(),
        crate::control::ArmRequest::RoleCreate {
            assignee: "e776e117-7f5b-469e-a98c-77e19781f08a".into(),
            role: "Reader".into(),
            scope: "/subscriptions/x".into(),
        }
        .into(),
        crate::control::ArmRequest::RoleDelete {
            assignee: None,
            role: Some("Reader".into()),
            scope: None,
        }
        .into(),
        crate::control::ArmRequest::AccountSet {
            subscription: "mysub".into(),
        }
        .into(),
        crate::control::ArmRequest::GroupCreate {
            name: "rg1".into(),
            location: "westus".into(),
        }
        .into(),
        crate::control::ArmRequest::Configure {
            group: Some("rg1".into()),
            location: None,
        }
        .into(),
        CopyRequest::Delete {
            kind: CopyKind::Snapshot,
            name: "c1".into(),
        }
        .into(),
        CopyRequest::Delete {
            kind: CopyKind::Image,
            name: "c1".into(),
        }
        .into(),
        DiskRequest::Delete { name: "d1".into() }.into(),
        DiskRequest::Encryption {
            name: "d1".into(),
            encryption_type: Some("EncryptionAtRestWithCustomerKey".into()),
            set: Some("s1".into()),
        }
        .into(),
        DiskRequest::Sku {
            name: "d1".into(),
            sku: Sku::StandardLrs,
        }
        .into(),
        DiskRequest::Rekey { name: "d1".into() }.into(),
        VmRequest::Create(Box::new(CreateSpec {
            name: "v2".into(),
            image: Some("img".into()),
            os_disk_encryption_set: Some("s1".into()),
            os_disk_size_gb: Some(64),
            storage_sku: Some("UltraSSD_LRS".into()),
            data_disk_sizes_gb: vec![1, 128],
            data_disk_encryption_sets: vec!["s1".into(), "s1".into()],
            size: Some("Standard_B2s".into()),
            kernel: Some("/k".into()),
            initrd: Some("/i".into()),
            append: Some("console=ttyS0 quiet".into()),
            no_start: true,
            ..Default::default()
        }))
        .into(),
        VmRequest::Create(Box::new(CreateSpec {
            name: "v3".into(),
            attach_os_disk: Some("d1".into()),
            ..Default::default()
        }))
        .into(),
        VmRequest::Start { name: "v1".into() }.into(),
        VmRequest::Stop { name: "v1".into() }.into(),
        VmRequest::Deallocate { name: "v1".into() }.into(),
        VmRequest::Restart { name: "v1".into() }.into(),
        VmRequest::Delete { name: "v1".into() }.into(),
        VmRequest::Attach {
            vm: "v1".into(),
            disk: "d1".into(),
            lun: Some(7),
        }
        .into(),
        VmRequest::Attach {
            vm: "v1".into(),
            disk: "d1".into(),
            lun: None,
        }
        .into(),
        VmRequest::Detach {
            vm: "v1".into(),
            disk: "d1".into(),
        }
        .into(),
        VmRequest::Register {
            name: "ext".into(),
            qmp: "/run/q.sock".into(),
            disks: vec!["d1".into(), "d2".into()],
        }
        .into(),
    ];
    for req in requests {
        let (path, bytes) = req.wire();
        let parts = split(&path);
        let back = c
            .parse(&parts, &bytes)
            .unwrap_or_else(|e| panic!("{req:?} as {path}: {e}"));
        assert_eq!(format!("{back:?}"), format!("{req:?}"), "{path}");
        // And as the CLI sends it, typed, to `command`.
        let json = serde_json::to_vec(&req).unwrap();
        let typed = c.parse(&["command"], &json).unwrap();
        assert_eq!(format!("{typed:?}"), format!("{req:?}"), "command");
        if let (
            Request::Key(KeyRequest::Import { pem: a, .. }),
            Request::Key(KeyRequest::Import { pem: b, .. }),
        ) = (&req, &back)
        {
            assert_eq!(a, b);
        }
    }
}

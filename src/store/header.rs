//! The store header (`diskvault.json`): creating a store, and reading and checking
//! its header.

use super::*;

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Header {
    pub(super) format: String,
    pub(super) version: u64,
    pub(super) created_at: String,
    /// Absolute path of a key vault kept outside the store (`--vault DIR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) vault: Option<String>,
    /// A random uuid, bound into every sealed key (absent in stores made before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) store_id: Option<String>,
    /// How private keys are sealed; absent in a store whose keys are still clear.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) key_protection: Option<KeyProtection>,
    /// `hsm`: the platform key is held in the vault's PKCS#11 token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) platform_key: Option<String>,
}

/// Options for `Store::init`.
#[derive(Clone, Debug, Default)]
pub struct InitOptions {
    /// Keep the key vault here instead of in `STORE/vault`.
    pub vault_dir: Option<PathBuf>,
    /// The vault's name (the VAULT in https://VAULT.vault.azure.net); random if unset.
    pub vault_name: Option<String>,
    /// Where the KEK comes from (`--seal`).
    pub seal: SealKind,
    /// `--host-key`: a host key path recorded in the header.
    pub host_key: Option<PathBuf>,
    /// `--tpm-tcti`: a TCTI recorded in the header.
    pub tpm_tcti: Option<String>,
    /// How this process reaches KEKs (environment, passphrase prompt).
    pub unseal: UnsealOptions,
    /// A PKCS#11 token for the vault (`--hsm-module ...`).
    pub hsm: Option<crate::vault::custody::hsm::HsmConfig>,
    /// Generate the platform key in that token (`--platform-key hsm`).
    pub platform_in_hsm: bool,
}

impl Store {
    /// Creates a new store at `root` (an absent or empty directory).
    pub fn init(root: &Path, opts: &InitOptions) -> Result<()> {
        let header = root.join(HEADER_FILE);
        if header.exists() {
            return Err(StoreError::AlreadyAStore(root.display().to_string()));
        }
        let io = |what: &str, e| StoreError::io(format!("{what} {}", root.display()), e);
        let abs_root = std::path::absolute(root).map_err(|e| io("resolving", e))?;
        // The KEK first (a passphrase asked twice, a TPM seal): if that fails, nothing
        // was made.
        let store_id = random_uuid()?;
        let sealing_key = Secret::random(crate::crypto::seal::SEAL_KEY_LEN)?;
        let setup = SealSetup {
            kind: opts.seal,
            host_key: opts.host_key.clone(),
            tpm_tcti: opts.tpm_tcti.clone(),
        };
        let protection =
            KeyProtection::create(&abs_root, &store_id, &setup, &opts.unseal, &sealing_key)?;
        let custody =
            Custody::with_sealing_key(&abs_root, &store_id, protection.clone(), sealing_key);
        match fs::read_dir(root) {
            Ok(entries) => {
                // A half-finished init (no header yet) may be redone; anything else is refused.
                let foreign = entries.filter_map(|e| e.ok()).any(|e| {
                    !matches!(
                        e.file_name().to_str(),
                        Some(KEYS_DIR | DISKS_DIR | LOCK_FILE | VAULT_DIR | DES_DIR)
                    )
                });
                let has_disks = fs::read_dir(root.join(DISKS_DIR))
                    .map(|mut d| d.next().is_some())
                    .unwrap_or(false);
                if foreign || has_disks {
                    return Err(StoreError::NotAStore(root.display().to_string()));
                }
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                durable::create_dir(root, 0o700).map_err(|e| io("creating", e))?
            }
            Err(e) => return Err(io("reading", e)),
        }
        for d in [KEYS_DIR, DISKS_DIR, DES_DIR] {
            match durable::create_dir(&root.join(d), 0o700) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io("creating", e)),
                _ => {}
            }
        }
        if opts.platform_in_hsm && opts.hsm.is_none() {
            return Err(StoreError::Vault(crate::vault::VaultError::InvalidArgument(
                "--platform-key hsm needs the vault's token: give --hsm-module, --hsm-token and --hsm-pin-file".into(),
            )));
        }
        let external = match &opts.vault_dir {
            Some(d) => {
                let abs = std::path::absolute(d).map_err(|e| io("resolving", e))?;
                Some(abs.display().to_string())
            }
            None => None,
        };
        let vault_dir = opts
            .vault_dir
            .clone()
            .unwrap_or_else(|| root.join(VAULT_DIR));
        if !KeyVault::is_vault(&vault_dir) {
            let name = match &opts.vault_name {
                Some(n) => n.clone(),
                None => KeyVault::default_name()?,
            };
            KeyVault::init(&vault_dir, &name)?;
        }
        let custody = Arc::new(custody);
        {
            let vault = KeyVault::open_with(&vault_dir, custody.clone())?;
            if let Some(cfg) = &opts.hsm {
                vault.set_hsm(&crate::vault::Caller::current_user(), cfg.clone())?;
            }
            if opts.platform_in_hsm {
                let hsm = vault.hsm().expect("set above");
                PlatformKeys::create_in_token(&root.join(KEYS_DIR), &hsm, &store_id)?;
            } else {
                PlatformKeys::create(&root.join(KEYS_DIR), &custody)?;
            }
        }
        let h = Header {
            format: "diskvault-store".into(),
            version: STORE_VERSION,
            created_at: now_rfc3339(),
            vault: external,
            store_id: Some(store_id),
            key_protection: Some(protection),
            platform_key: opts.platform_in_hsm.then(|| "hsm".to_string()),
        };
        // The header goes last: its presence means the store is complete.
        custody::write_header(root, &h)
    }

    pub fn is_store(root: &Path) -> bool {
        root.join(HEADER_FILE).is_file()
    }

    pub(super) fn check_header(root: &Path) -> Result<Header> {
        let path = root.join(HEADER_FILE);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(if root.is_dir() {
                    StoreError::NotAStore(root.display().to_string())
                } else {
                    StoreError::StoreMissing(root.display().to_string())
                })
            }
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        };
        let bad = |reason: String| StoreError::BadHeader {
            path: path.display().to_string(),
            reason,
        };
        let h: Header = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        if h.format != "diskvault-store" {
            return Err(bad(format!("format is '{}'", h.format)));
        }
        match (h.version, &h.key_protection, &h.store_id) {
            (STORE_VERSION, Some(_), Some(_)) | (CLEAR_STORE_VERSION, None, _) => Ok(h),
            (STORE_VERSION | CLEAR_STORE_VERSION, ..) => {
                Err(bad("its version and keyProtection/storeId disagree".into()))
            }
            (v, ..) => Err(StoreError::UnsupportedVersion(v)),
        }
    }

    /// The header's keyProtection (None: the keys are clear).
    pub fn key_protection(root: &Path) -> Result<Option<KeyProtection>> {
        Ok(Self::check_header(root)?.key_protection)
    }

    /// Where a store's vault lives: `--vault`, else the header's, else embedded.
    pub fn vault_dir(root: &Path, vault_override: Option<&Path>) -> Result<PathBuf> {
        if let Some(v) = vault_override {
            return Ok(v.to_path_buf());
        }
        let h = Self::check_header(root)?;
        Ok(h.vault
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(VAULT_DIR)))
    }
}

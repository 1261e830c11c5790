//! Key identifiers: `https://VAULT.vault.azure.net/keys/NAME/VERSION`, and the short
//! forms `NAME` and `NAME/VERSION`. Names compare case-insensitively, as in Azure.

use super::VaultError;

pub const VAULT_DNS_SUFFIX: &str = ".vault.azure.net";

/// A parsed key reference; `version` is None for a versionless reference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRef {
    pub vault: Option<String>,
    pub name: String,
    pub version: Option<String>,
}

/// Vault names: 3-24 characters, letters, digits and hyphens, starting with a letter,
/// ending with a letter or digit, no consecutive hyphens.
pub fn validate_vault_name(name: &str) -> Result<(), VaultError> {
    let bad = |reason: &str| VaultError::InvalidName {
        what: "vault",
        name: name.to_string(),
        reason: reason.to_string(),
    };
    if !(3..=24).contains(&name.len()) {
        return Err(bad("it must be 3 to 24 characters long"));
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(bad("only letters, digits and hyphens are allowed"));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(bad("it must start with a letter"));
    }
    if name.ends_with('-') || name.contains("--") {
        return Err(bad(
            "it must end with a letter or digit and have no consecutive hyphens",
        ));
    }
    Ok(())
}

/// Key names: 1-127 characters from `[0-9a-zA-Z-]`.
pub fn validate_key_name(name: &str) -> Result<(), VaultError> {
    if name.is_empty() || name.len() > 127 {
        return Err(VaultError::InvalidName {
            what: "key",
            name: name.chars().take(140).collect(),
            reason: "it must be 1 to 127 characters long".into(),
        });
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(VaultError::InvalidName {
            what: "key",
            name: name.to_string(),
            reason: "only letters, digits and hyphens are allowed".into(),
        });
    }
    Ok(())
}

pub fn is_version(s: &str) -> bool {
    s.len() == 32 && s.chars().all(|c| c.is_ascii_hexdigit())
}

impl KeyRef {
    pub fn parse(input: &str) -> Result<KeyRef, VaultError> {
        let s = input.trim();
        let bad = |reason: &str| VaultError::InvalidKeyId {
            input: s.chars().take(300).collect(),
            reason: reason.to_string(),
        };
        let (vault, path) = if let Some(rest) = s.strip_prefix("https://") {
            let (host, path) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected https://VAULT.vault.azure.net/keys/NAME/VERSION"))?;
            let host = host.to_ascii_lowercase();
            let vault = host
                .strip_suffix(VAULT_DNS_SUFFIX)
                .ok_or_else(|| bad("the host must be VAULT.vault.azure.net"))?;
            validate_vault_name(vault)?;
            let path = path
                .strip_prefix("keys/")
                .ok_or_else(|| bad("the path must be /keys/NAME[/VERSION]"))?;
            (Some(vault.to_string()), path)
        } else if s.contains("://") {
            return Err(bad("only https:// key identifiers are accepted"));
        } else {
            (None, s)
        };
        let path = path.strip_suffix('/').unwrap_or(path);
        let mut parts = path.split('/');
        let name = parts.next().unwrap_or_default();
        validate_key_name(name)?;
        let version = match parts.next() {
            None => None,
            Some(v) if is_version(v) => Some(v.to_ascii_lowercase()),
            Some(_) => return Err(bad("a key version is 32 hexadecimal characters")),
        };
        if parts.next().is_some() {
            return Err(bad("expected NAME, NAME/VERSION or a full key URL"));
        }
        Ok(KeyRef {
            vault,
            name: name.to_string(),
            version,
        })
    }
}

/// The full identifier of a key (versionless) or of one of its versions.
pub fn key_url(vault: &str, name: &str, version: Option<&str>) -> String {
    match version {
        Some(v) => format!("https://{vault}{VAULT_DNS_SUFFIX}/keys/{name}/{v}"),
        None => format!("https://{vault}{VAULT_DNS_SUFFIX}/keys/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_and_short_forms() {
        let v = "0123456789abcdef0123456789ABCDEF";
        let full = KeyRef::parse(&format!("https://My-Vault.vault.azure.net/keys/k1/{v}")).unwrap();
        assert_eq!(full.vault.as_deref(), Some("my-vault"));
        assert_eq!(full.name, "k1");
        assert_eq!(full.version.as_deref(), Some(&*v.to_ascii_lowercase()));
        let short = KeyRef::parse("k1").unwrap();
        assert_eq!((short.vault, short.version), (None, None));
        assert_eq!(
            KeyRef::parse(&format!("k1/{v}"))
                .unwrap()
                .version
                .unwrap()
                .len(),
            32
        );
        assert!(KeyRef::parse("https://vault1.vault.azure.net/keys/k1")
            .unwrap()
            .version
            .is_none());
    }

    #[test]
    fn rejects_malformed_ids() {
        for bad in [
            "",
            "k_1",
            "k1/123",
            "k1/0123456789abcdef0123456789abcdef/x",
            "http://v1.vault.azure.net/keys/k1",
            "https://v1.example.com/keys/k1",
            "https://v1.vault.azure.net/secrets/k1",
            "https://-v.vault.azure.net/keys/k1",
            &"k".repeat(128),
        ] {
            assert!(KeyRef::parse(bad).is_err(), "{bad:?} accepted");
        }
        for bad in ["ab", "1abc", "a--b", "abc-", "a_bc", &"a".repeat(25)] {
            assert!(validate_vault_name(bad).is_err(), "{bad:?} accepted");
        }
        validate_vault_name("dv-1234abcd").unwrap();
    }
}

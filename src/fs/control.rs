//! The `.vault/` control tree: what each control file shows and what a write to it means.
//! Parsing lives here so it can be tested without a mount.

use crate::crypto::CipherKind;
use crate::store::{parse_size, CreateOptions, Sku, StoreError};
use serde_json::Value;

/// Largest write a control file accepts.
pub const MAX_CONTROL_WRITE: usize = 64 * 1024;

pub const README: &str = "\
diskvault control tree (.vault/)

  README              this file
  status.json         all disks, shaped like `az disk list` (read-only)
  daemon.json         pid, store and mountpoint of this daemon (read-only)
  last-error          why the last rejected control write failed (read-only)
  disks/create        write `NAME SIZE [sku=SKU] [cipher=CIPHER]` or a JSON object
                      {\"name\":..., \"size\": \"30G\"|bytes, \"sku\":..., \"cipher\":...}
                      to create a disk, e.g.  echo 'data1 30G sku=Standard_LRS' > disks/create
  disks/NAME/disk.json  one disk, like `az disk show` (read-only)

Disks themselves are the files in ../disks/: `rm disks/NAME` deletes a disk (its wrapped
key is destroyed), `mv` renames it, `truncate -s` resizes it, and creating a new file
creates a platform-key disk. A rejected write fails with an errno (EINVAL, EEXIST,
ENOENT, EFBIG, ...) and changes nothing; the reason is in last-error.
See docs/control-files.md for the full reference.
";

/// A parsed `disks/create` request.
#[derive(Debug, PartialEq)]
pub struct CreateRequest {
    pub name: String,
    pub opts: CreateOptions,
}

fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

/// Parses a write to `disks/create`.
pub fn parse_create(input: &[u8]) -> Result<CreateRequest, StoreError> {
    if input.len() > MAX_CONTROL_WRITE {
        return Err(invalid("control write too large (max 64 KiB)"));
    }
    let text =
        std::str::from_utf8(input).map_err(|_| invalid("control write is not UTF-8 text"))?;
    let text = text.trim();
    if text.starts_with('{') {
        parse_create_json(text)
    } else {
        parse_create_words(text)
    }
}

fn parse_create_words(text: &str) -> Result<CreateRequest, StoreError> {
    let mut words = text.split_whitespace();
    let usage = "expected `NAME SIZE [sku=SKU] [cipher=CIPHER]`, e.g. `data1 30G`";
    let name = words.next().ok_or_else(|| invalid(usage))?;
    let size = words.next().ok_or_else(|| invalid(usage))?;
    let mut opts = CreateOptions {
        size: parse_size(size)?,
        ..Default::default()
    };
    for w in words {
        match w.split_once('=') {
            Some(("sku", v)) => opts.sku = v.parse()?,
            Some(("cipher", v)) => opts.cipher = Some(v.parse::<CipherKind>()?),
            _ => return Err(invalid(format!("unknown option '{w}'; {usage}"))),
        }
    }
    Ok(CreateRequest {
        name: name.to_string(),
        opts,
    })
}

fn parse_create_json(text: &str) -> Result<CreateRequest, StoreError> {
    let v: Value =
        serde_json::from_str(text).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid("expected a JSON object"))?;
    let mut req = CreateRequest {
        name: String::new(),
        opts: CreateOptions::default(),
    };
    let mut have_size = false;
    for (k, val) in obj {
        let as_str = || {
            val.as_str()
                .ok_or_else(|| invalid(format!("\"{k}\" must be a string")))
        };
        match k.as_str() {
            "name" => req.name = as_str()?.to_string(),
            "size" | "diskSizeBytes" => {
                req.opts.size = match val {
                    Value::Number(n) => n.as_u64().ok_or_else(|| {
                        invalid(format!("\"{k}\" must be a whole number of bytes"))
                    })?,
                    Value::String(s) => parse_size(s)?,
                    _ => {
                        return Err(invalid(format!(
                            "\"{k}\" must be a size string or a number"
                        )))
                    }
                };
                have_size = true;
            }
            "diskSizeGB" => {
                let gb = val
                    .as_u64()
                    .ok_or_else(|| invalid("\"diskSizeGB\" must be a whole number"))?;
                req.opts.size = parse_size(&format!("{gb}G"))?;
                have_size = true;
            }
            "sku" => req.opts.sku = as_str()?.parse::<Sku>()?,
            "cipher" => req.opts.cipher = Some(as_str()?.parse::<CipherKind>()?),
            other => return Err(invalid(format!("unknown field \"{other}\""))),
        }
    }
    if req.name.is_empty() || !have_size {
        return Err(invalid("\"name\" and \"size\" are required"));
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_json() {
        let a = parse_create(b"d1 30G sku=Standard_LRS cipher=aes-256-ctr\n").unwrap();
        assert_eq!(a.name, "d1");
        assert_eq!(a.opts.size, 30 << 30);
        assert_eq!(a.opts.sku, Sku::StandardLrs);
        assert_eq!(a.opts.cipher, Some(CipherKind::Aes256Ctr));
        let b = parse_create(
            br#"{"name":"d1","size":"30G","sku":"Standard_LRS","cipher":"aes-256-ctr"}"#,
        )
        .unwrap();
        assert_eq!(a, b);
        let c = parse_create(br#"{"name":"d2","diskSizeGB":2}"#).unwrap();
        assert_eq!(c.opts.size, 2 << 30);
        assert_eq!(c.opts.cipher, None);
    }

    #[test]
    fn rejects_bad_input() {
        let big = vec![b'a'; MAX_CONTROL_WRITE + 1];
        for bad in [
            &b""[..],
            b"d1",
            b"d1 30Q",
            b"d1 30G color=red",
            b"d1 30G sku=Gold",
            b"d1 30G cipher=rot13",
            b"{\"name\":\"d1\"",
            b"{\"name\":\"d1\",\"size\":true}",
            b"{\"name\":5,\"size\":\"1G\"}",
            b"{\"name\":\"d1\",\"size\":\"1G\",\"owner\":\"x\"}",
            b"[1,2]",
            b"\xff\xfe",
            &big,
        ] {
            assert!(
                parse_create(bad).is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

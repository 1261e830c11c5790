//! `.vault/keys/` and `.vault/deleted-keys/`: the key vault's keys, their versions,
//! grants and rotation policies.

use super::args::{self, f, invalid, parse, Args, Ty, Val};
use super::routes::{Params, Route, Seg, Seg::Lit};
use super::{check_reserved, confirm_name, flag, line, pretty, Control, Request};
use crate::store::Result;
use crate::vault::{
    parse_time, secs_to_iso, Caller, KeyOptions, KeyRef, KeyUpdate, RotationPolicy, VaultError,
};
use serde_json::json;
use zeroize::Zeroizing;

pub use super::key_request::{Identity, KeyRequest};

const KEY: Seg = Seg::Key;
const VERSION: Seg = Seg::Version;

pub(super) fn routes() -> Vec<Route> {
    use Seg::DeletedKey as DK;
    let mut v = vec![
        Route::w(&[Lit("keys"), Lit("create")], parse_create),
        Route::w(&[Lit("keys"), Lit("import")], parse_import),
        Route::dir(&[Lit("keys"), KEY])
            .rmdir(|p| Ok(Request::Key(KeyRequest::Delete { name: p.key.into() }))),
    ];
    v.extend(key_files(&[Lit("keys"), KEY]));
    v.extend([
        Route::w(&[Lit("keys"), KEY, Lit("rotate")], parse_rotate),
        Route::rw(&[Lit("keys"), KEY, Lit("grants")], read_key, parse_grants),
        Route::rw(
            &[Lit("keys"), KEY, Lit("rotation-policy")],
            read_key,
            parse_policy,
        ),
        Route::w(&[Lit("keys"), KEY, Lit("delete")], parse_delete),
        Route::dir(&[Lit("keys"), KEY, Lit("versions")]),
        Route::dir(&[Lit("keys"), KEY, Lit("versions"), VERSION]),
    ]);
    v.extend(key_files(&[Lit("keys"), KEY, Lit("versions"), VERSION]));
    v.extend([
        // A delete that could not be saved stays reachable, to be run again.
        Route::dir(&[Lit("keys"), Seg::UnsavedKey]),
        Route::w(&[Lit("keys"), Seg::UnsavedKey, Lit("delete")], parse_delete),
        Route::dir(&[Lit("deleted-keys"), DK])
            .rmdir(|p| Ok(Request::Key(KeyRequest::Purge { name: p.key.into() }))),
        Route::r(
            &[Lit("deleted-keys"), DK, Lit("deleted.json")],
            |c, p, _| Ok(pretty(&c.store().vault().deleted_key(p.key)?)),
        ),
        Route::w(&[Lit("deleted-keys"), DK, Lit("recover")], |p, data| {
            confirm_name(data, p.key, "recover")?;
            Ok(Request::Key(KeyRequest::Recover { name: p.key.into() }))
        }),
        Route::w(&[Lit("deleted-keys"), DK, Lit("purge")], |p, data| {
            confirm_name(data, p.key, "purge")?;
            Ok(Request::Key(KeyRequest::Purge { name: p.key.into() }))
        }),
    ]);
    v
}

/// The files of a key and of each of its versions, under `dir`.
fn key_files(dir: &[Seg]) -> Vec<Route> {
    const FILES: [&str; 8] = [
        "key.json",
        "kid",
        "public.pem",
        "enabled",
        "nbf",
        "exp",
        "key-ops",
        "update",
    ];
    FILES
        .iter()
        .map(|file| {
            let path: Vec<Seg> = dir.iter().copied().chain([Lit(file)]).collect();
            match *file {
                "key.json" | "kid" | "public.pem" => Route::r(&path, read_key),
                "update" => Route::w(&path, parse_key_file),
                _ => Route::rw(&path, read_key, parse_key_file),
            }
        })
        .collect()
}

pub(super) fn mkdir(_: &Params, name: &str) -> Result<Request> {
    check_reserved(name)?;
    Ok(Request::Key(KeyRequest::Create {
        name: name.into(),
        options: KeyOptions::default(),
    }))
}

fn key_ref(p: &Params) -> KeyRef {
    KeyRef {
        vault: None,
        name: p.key.to_string(),
        version: p.version.map(|x| x.to_ascii_lowercase()),
    }
}

fn read_key(c: &Control, p: &Params, caller: &Caller) -> Result<Vec<u8>> {
    let vault = c.store().vault();
    let r = key_ref(p);
    let rec = vault.record(p.key)?;
    let (attrs, ops) = match p.version {
        None => (rec.attributes.clone(), rec.key_ops.clone()),
        Some(ver) => {
            let x = rec
                .versions
                .iter()
                .find(|x| x.version.eq_ignore_ascii_case(ver))
                .ok_or_else(|| VaultError::VersionNotFound(p.key.into(), ver.into()))?;
            (x.attributes.clone(), x.key_ops.clone())
        }
    };
    let time = |t: Option<i64>| line(t.map(secs_to_iso).unwrap_or_else(|| "none".into()));
    Ok(match p.file {
        "key.json" => pretty(&vault.get_key(caller, &r)?),
        "public.pem" => vault.public_pem(caller, &r)?.into_bytes(),
        "kid" => line(vault.resolve(&r)?),
        "enabled" => line(attrs.enabled),
        "nbf" => time(attrs.nbf),
        "exp" => time(attrs.exp),
        "key-ops" => line(ops.join(" ")),
        "grants" => pretty(&json!(rec.grants)),
        "rotation-policy" => pretty(&json!(rec.rotation_policy)),
        other => unreachable!("no key file {other} in the route table"),
    })
}

const KEY_CREATE_FIELDS: &[args::Field] = &[
    f(&["name"], true, true, Ty::Str),
    f(&["size", "keySize", "kty-size"], false, false, Ty::NumOrStr),
    f(&["ops", "keyOps", "key_ops"], false, false, Ty::List),
    f(&["nbf", "notBefore"], false, false, Ty::Str),
    f(&["exp", "expires"], false, false, Ty::Str),
    f(&["enabled"], false, false, Ty::Bool),
    f(&["pem"], false, false, Ty::Str),
    f(&["protection"], false, false, Ty::Str),
];
const KEY_UPDATE_FIELDS: &[args::Field] = &[
    f(&["enabled"], false, false, Ty::Bool),
    f(&["nbf", "notBefore"], false, false, Ty::Str),
    f(&["exp", "expires"], false, false, Ty::Str),
    f(&["ops", "keyOps", "key_ops"], false, false, Ty::List),
    f(&["force"], false, false, Ty::Bool),
];
const ROTATE_FIELDS: &[args::Field] = &[
    f(&["size", "keySize"], false, false, Ty::NumOrStr),
    f(&["nbf", "notBefore"], false, false, Ty::Str),
    f(&["exp", "expires"], false, false, Ty::Str),
];
const GRANT_FIELDS: &[args::Field] = &[
    f(&["action"], true, true, Ty::Str),
    f(&["des", "diskEncryptionSet"], true, false, Ty::Str),
    f(&["permissions", "perms"], true, false, Ty::List),
    f(&["object-id", "objectId"], false, false, Ty::Str),
];

/// A time for nbf/exp: `Some(None)` clears it (`none`, JSON null).
fn opt_time(v: Option<&Val>, what: &str) -> Result<Option<Option<i64>>> {
    Ok(match v {
        None => None,
        Some(Val::Null) => Some(None),
        Some(Val::Str(s)) if s.trim().is_empty() => {
            return Err(invalid(format!(
                "{what} is empty; give a time (2027-01-31, +90d) or `none` to clear it"
            )))
        }
        Some(Val::Str(s)) if s.trim().eq_ignore_ascii_case("none") => Some(None),
        Some(Val::Str(s)) => Some(Some(parse_time(s)?)),
        Some(_) => return Err(invalid(format!("{what} must be a time string"))),
    })
}

/// A time given for nbf/exp (RFC 3339, a date, +90d); `None` for `none`, which clears it.
pub fn time_value_of(what: &str, s: &str) -> Result<Option<i64>> {
    Ok(opt_time(Some(&Val::Str(s.to_string())), what)?.flatten())
}

fn key_options(a: &Args) -> Result<KeyOptions> {
    let size = match a.get("size") {
        None | Some(Val::Null) => None,
        Some(Val::Num(n)) => Some(*n as usize),
        Some(Val::Str(s)) => Some(s.parse::<usize>().map_err(|_| {
            invalid(format!(
                "key size '{s}' is not a number; use 2048, 3072 or 4096"
            ))
        })?),
        Some(_) => return Err(invalid("size must be a number")),
    };
    let protection = match a.get("protection") {
        None | Some(Val::Null) => None,
        Some(Val::Str(s)) => Some(
            s.parse::<crate::vault::keyvault::Protection>()
                .map_err(|e| invalid(e.to_string()))?,
        ),
        Some(_) => return Err(invalid("protection must be software or hsm")),
    };
    Ok(KeyOptions {
        protection,
        size,
        key_ops: a.list("ops").map(|l| l.to_vec()),
        nbf: opt_time(a.get("nbf"), "nbf")?.flatten(),
        exp: opt_time(a.get("exp"), "exp")?.flatten(),
        enabled: a.bool("enabled"),
    })
}

fn key_update(a: &Args) -> Result<KeyUpdate> {
    let u = KeyUpdate {
        enabled: a.bool("enabled"),
        nbf: opt_time(a.get("nbf"), "nbf")?,
        exp: opt_time(a.get("exp"), "exp")?,
        key_ops: a.list("ops").map(|l| l.to_vec()),
        force: a.bool("force").unwrap_or(false),
    };
    if (KeyUpdate {
        force: false,
        ..u.clone()
    }) == KeyUpdate::default()
    {
        return Err(invalid(
            "nothing to change; give enabled=, nbf=, exp= or ops=",
        ));
    }
    Ok(u)
}

fn parse_create(_: &Params, data: &[u8]) -> Result<Request> {
    let a = parse(data, KEY_CREATE_FIELDS, "write `NAME [size=2048|3072|4096] [ops=wrapKey,unwrapKey] [nbf=TIME] [exp=TIME] [enabled=false]` or a JSON object")?;
    if a.get("pem").is_some() {
        return Err(invalid("a PEM key goes to keys/import, not keys/create"));
    }
    let name = a.str("name").unwrap_or_default();
    check_reserved(name)?;
    Ok(Request::Key(KeyRequest::Create {
        name: name.into(),
        options: key_options(&a)?,
    }))
}

/// Options on the first line and the PEM after it, or a JSON object with `pem`.
fn parse_import(_: &Params, data: &[u8]) -> Result<Request> {
    let t = args::text(data)?;
    let (a, pem) = if t.starts_with('{') {
        let a = parse(data, KEY_CREATE_FIELDS, "write {\"name\":..., \"pem\":...}")?;
        let pem = a.str("pem").map(String::from);
        (a, pem)
    } else {
        let (first, rest) = t.split_once('\n').unwrap_or((t, ""));
        let a = parse(
            first.as_bytes(),
            KEY_CREATE_FIELDS,
            "write `NAME [options]` on the first line and the PEM private key after it",
        )?;
        (a, Some(rest.to_string()))
    };
    let pem = Zeroizing::new(pem.unwrap_or_default());
    if pem.trim().is_empty() {
        return Err(invalid(
            "no PEM key given; write `NAME` on the first line and the PEM private key after it",
        ));
    }
    let name = a.str("name").unwrap_or_default();
    check_reserved(name)?;
    let options = key_options(&a)?;
    if options.size.is_some() {
        return Err(invalid("size is taken from the imported key; drop size="));
    }
    Ok(Request::Key(KeyRequest::Import {
        name: name.into(),
        pem,
        options,
    }))
}

/// Whether gathered import writes are a whole command: a JSON object, anything that
/// is not a name line followed by (the start of) a PEM block, or a PEM block through
/// its END line. So `echo NAME` then `cat key.pem` gather, and garbage fails at once.
pub fn import_complete(data: &[u8]) -> bool {
    // Not UTF-8: complete as it is, and refused as such.
    let Ok(t) = std::str::from_utf8(data) else {
        return true;
    };
    let t = t.trim_start();
    if t.starts_with('{') {
        return serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok();
    }
    let Some((_, rest)) = t.split_once('\n') else {
        return true;
    };
    let rest = rest.trim_start();
    const BEGIN: &str = "-----BEGIN ";
    if rest.is_empty() || BEGIN.starts_with(rest) {
        return false;
    }
    if !rest.starts_with(BEGIN) {
        return true;
    }
    match rest.rfind("-----END ") {
        Some(i) => rest[i + 9..].contains("-----"),
        None => false,
    }
}

/// `enabled`, `nbf`, `exp`, `key-ops` and `update`, of a key or one version.
fn parse_key_file(p: &Params, data: &[u8]) -> Result<Request> {
    let update = match p.file {
        "enabled" => KeyUpdate {
            enabled: Some(flag(data, "enabled")?),
            ..Default::default()
        },
        "nbf" | "exp" => {
            let t = args::text(data)?;
            let when = opt_time(Some(&Val::Str(t.to_string())), p.file)?;
            if p.file == "nbf" {
                KeyUpdate {
                    nbf: when,
                    ..Default::default()
                }
            } else {
                KeyUpdate {
                    exp: when,
                    ..Default::default()
                }
            }
        }
        // An empty list is refused by the vault (it would stop every use).
        "key-ops" => KeyUpdate {
            key_ops: Some(
                args::text(data)?
                    .split(|c: char| c == ',' || c.is_whitespace())
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            ),
            ..Default::default()
        },
        _ => key_update(&parse(
            data,
            KEY_UPDATE_FIELDS,
            "write `enabled=true|false nbf=TIME exp=TIME ops=LIST` (any of them)",
        )?)?,
    };
    Ok(Request::Key(KeyRequest::Update {
        name: p.key.into(),
        version: p.version.map(String::from),
        update,
    }))
}

/// A write to `keys/NAME/rotate`: `1`, `1` plus options (`size=N nbf=TIME exp=TIME`),
/// the options alone, or a JSON object of them. Anything else is refused.
fn rotate_args(data: &[u8]) -> Result<Args> {
    let usage =
        "write `1`, or `1 size=N nbf=TIME exp=TIME` (any of the options), to add a new version";
    let t = args::text(data)?;
    if t.starts_with('{') {
        return parse(data, ROTATE_FIELDS, usage);
    }
    let rest = match t.split_once(char::is_whitespace) {
        _ if t == "1" => return Ok(Args::default()),
        Some(("1", rest)) => rest.trim(),
        _ if t.contains('=') => t,
        _ => {
            return Err(invalid(format!(
                "unknown command '{}'; {usage}",
                t.chars().take(40).collect::<String>()
            )))
        }
    };
    // Options only: any bare word is refused by `parse` (the fields are not positional).
    parse(rest.as_bytes(), ROTATE_FIELDS, usage)
}

fn parse_rotate(p: &Params, data: &[u8]) -> Result<Request> {
    Ok(Request::Key(KeyRequest::Rotate {
        name: p.key.into(),
        options: key_options(&rotate_args(data)?)?,
    }))
}

/// `grant SET [PERMISSIONS]`, `revoke SET`, or `object-id=ID` instead of SET.
fn parse_grants(p: &Params, data: &[u8]) -> Result<Request> {
    let usage = "write `grant SET [get,wrapKey,unwrapKey]` or `revoke SET` (SET is a disk encryption set; or object-id=ID)";
    let a = parse(data, GRANT_FIELDS, usage)?;
    let action = a.str("action").unwrap_or_default();
    if action != "grant" && action != "revoke" {
        return Err(invalid(format!("unknown command '{action}'; {usage}")));
    }
    // `grant object-id=ID get`: with object-id, the second word is the permissions.
    // Only a bare word: a set named as `des` (JSON, `des=`) is an identity.
    let perms_word = match (a.str("des"), a.str("object-id"), a.list("permissions")) {
        (Some(w), Some(_), None) if a.by_position("des") => Some(
            w.split(|c: char| c == ',' || c.is_whitespace())
                .filter(|x| !x.is_empty())
                .map(String::from)
                .collect::<Vec<_>>(),
        ),
        _ => None,
    };
    let des = if perms_word.is_some() {
        None
    } else {
        a.str("des")
    };
    let identity = match (des, a.str("object-id")) {
        (Some(s), None) => Identity::Set(s.into()),
        (None, Some(id)) => Identity::ObjectId(id.into()),
        _ => return Err(invalid(format!("name exactly one identity; {usage}"))),
    };
    let permissions = a.list("permissions").map(|l| l.to_vec()).or(perms_word);
    let name = p.key.to_string();
    Ok(Request::Key(if action == "grant" {
        KeyRequest::Grant {
            name,
            identity,
            permissions,
        }
    } else {
        if permissions.is_some() {
            return Err(invalid(format!("revoke takes no permissions; {usage}")));
        }
        KeyRequest::RevokeGrant { name, identity }
    }))
}

/// A rotation policy as Key Vault's JSON; `none` for no policy. Nothing at all is
/// refused, so an unset shell variable can't clear a policy by accident.
pub fn parse_rotation_policy(t: &str) -> Result<Option<RotationPolicy>> {
    let t = t.trim();
    if t.is_empty() {
        return Err(invalid(
            "the rotation policy is empty; give the policy as JSON, or `none` to remove it",
        ));
    }
    if t == "none" || t == "null" {
        return Ok(None);
    }
    serde_json::from_str::<RotationPolicy>(t).map(Some).map_err(|e| {
        invalid(format!(
            "malformed rotation policy: {e}; expected {{\"lifetimeActions\":[{{\"trigger\":{{\"timeAfterCreate\":\"P90D\"}},\"action\":{{\"type\":\"Rotate\"}}}}],\"attributes\":{{\"expiryTime\":\"P1Y\"}}}}, or none"
        ))
    })
}

fn parse_policy(p: &Params, data: &[u8]) -> Result<Request> {
    let policy = parse_rotation_policy(args::text(data)?)?;
    Ok(Request::Key(KeyRequest::RotationPolicy {
        name: p.key.into(),
        policy,
    }))
}

/// The write form of `rmdir keys/NAME`, so a reply can reach the writer.
fn parse_delete(p: &Params, data: &[u8]) -> Result<Request> {
    confirm_name(data, p.key, "delete")?;
    Ok(Request::Key(KeyRequest::Delete { name: p.key.into() }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn rotate_purge_and_recover_take_only_documented_input() {
        assert!(rotate_args(b"1\n").unwrap().0.is_empty());
        let a = rotate_args(b"1 size=3072 exp=+30d").unwrap();
        assert_eq!(a.str("size"), Some("3072"));
        assert!(rotate_args(b"size=3072").is_ok());
        assert!(rotate_args(br#"{"keySize":3072}"#).is_ok());
        for bad in [
            &b""[..],
            b"please do not rotate",
            b"yes",
            b"true",
            b"0",
            b"11",
            b"1 now",
            b"1 1",
            b"foo size=3072",
            b"1 size=2048 size=3072",
            b"1 colour=red",
        ] {
            let e = rotate_args(bad).unwrap_err();
            assert!(
                matches!(e, StoreError::InvalidArgument(_)),
                "{:?}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(confirm_name(b"1\n", "k1", "purge").is_ok());
        assert!(confirm_name(b"K1", "k1", "purge").is_ok());
        for bad in [&b"no thanks"[..], b"", b"k2", b"yes", b"1 1"] {
            let e = confirm_name(bad, "k1", "purge").unwrap_err().to_string();
            assert!(e.contains("purge takes `1` or the name"), "{e}");
        }
    }

    #[test]
    fn empty_times_are_refused_and_none_clears() {
        let e = opt_time(Some(&Val::Str(String::new())), "nbf").unwrap_err();
        assert!(e.to_string().contains("`none`"), "{e}");
        assert_eq!(
            opt_time(Some(&Val::Str("none".into())), "nbf").unwrap(),
            Some(None)
        );
        assert_eq!(opt_time(Some(&Val::Null), "nbf").unwrap(), Some(None));
        let a = parse(br#"{"nbf":""}"#, KEY_UPDATE_FIELDS, "u").unwrap();
        assert!(key_update(&a).is_err());
        let a = parse(b"exp=", KEY_UPDATE_FIELDS, "u").unwrap();
        assert!(key_update(&a).is_err());
        let a = parse(b"exp=+3000000d", KEY_UPDATE_FIELDS, "u").unwrap();
        assert!(key_update(&a).is_err());
    }
}

//! Parsing of control-file writes. A write is either words (`NAME VALUE key=value ...`)
//! or one JSON object; both map onto the same typed fields, so bad input gets the
//! same clear error either way.

use crate::store::StoreError;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};

/// Largest write a control file accepts.
pub const MAX_CONTROL_WRITE: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ty {
    Str,
    Bool,
    /// A whole number, or a string such as "30G" (the caller interprets it).
    NumOrStr,
    /// A comma/space separated list, or a JSON array of strings.
    List,
}

/// One accepted field: its names (the first is the canonical word key; the others
/// are aliases such as the JSON camelCase name), whether it may be given by position,
/// whether it is required, and its type.
pub struct Field {
    pub names: &'static [&'static str],
    pub positional: bool,
    pub required: bool,
    pub ty: Ty,
}

pub const fn f(names: &'static [&'static str], positional: bool, required: bool, ty: Ty) -> Field {
    Field {
        names,
        positional,
        required,
        ty,
    }
}

/// `-g` and `-l` of a create, in every create's file form.
pub const GROUP: Field = f(
    &["resourceGroup", "resource-group", "group"],
    false,
    false,
    Ty::Str,
);
pub const LOCATION: Field = f(&["location"], false, false, Ty::Str);

/// The placement a create's fields give.
pub fn placement(a: &Args) -> crate::store::arm::Placement {
    crate::store::arm::Placement::new(a.str("resourceGroup"), a.str("location"))
}

/// A placement in a create's JSON file form.
#[cfg(test)]
pub fn placement_wire(
    m: &mut serde_json::Map<String, serde_json::Value>,
    p: &crate::store::arm::Placement,
) {
    if let Some(g) = &p.resource_group {
        m.insert("resourceGroup".into(), g.clone().into());
    }
    if let Some(l) = &p.location {
        m.insert("location".into(), l.clone().into());
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Val {
    Str(String),
    Bool(bool),
    Num(u64),
    List(Vec<String>),
    /// JSON null: clear the value.
    Null,
}

pub fn invalid(msg: impl Into<String>) -> StoreError {
    StoreError::InvalidArgument(msg.into())
}

/// The text of a control write: UTF-8, at most 64 KiB, trimmed.
pub fn text(input: &[u8]) -> Result<&str, StoreError> {
    if input.len() > MAX_CONTROL_WRITE {
        return Err(invalid(format!(
            "control write of {} bytes is too large (max 64 KiB)",
            input.len()
        )));
    }
    Ok(std::str::from_utf8(input)
        .map_err(|_| invalid("control write is not UTF-8 text"))?
        .trim())
}

pub fn parse_bool(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Some(true),
        "false" | "no" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// A comma or space separated list.
pub fn split_list(s: &str) -> Vec<String> {
    s.split(|c: char| c == ',' || c.is_whitespace())
        .filter(|x| !x.is_empty())
        .map(String::from)
        .collect()
}

/// A true/false value of option `name`.
pub fn bool_value(name: &str, v: &str) -> Result<bool, StoreError> {
    parse_bool(v).ok_or_else(|| invalid(format!("{name} must be true or false, not '{v}'")))
}

fn word_value(field: &Field, name: &str, v: &str) -> Result<Val, StoreError> {
    Ok(match field.ty {
        Ty::Str | Ty::NumOrStr => Val::Str(v.to_string()),
        Ty::Bool => Val::Bool(bool_value(name, v)?),
        Ty::List => Val::List(split_list(v)),
    })
}

fn json_value(field: &Field, name: &str, v: &Value) -> Result<Val, StoreError> {
    let wrong = |what: &str| invalid(format!("\"{name}\" must be {what}"));
    Ok(match (field.ty, v) {
        (_, Value::Null) => Val::Null,
        (Ty::Str, Value::String(s)) => Val::Str(s.clone()),
        (Ty::Str, _) => return Err(wrong("a string")),
        (Ty::Bool, Value::Bool(b)) => Val::Bool(*b),
        (Ty::Bool, _) => return Err(wrong("true or false")),
        (Ty::NumOrStr, Value::Number(n)) => {
            Val::Num(n.as_u64().ok_or_else(|| wrong("a whole number"))?)
        }
        (Ty::NumOrStr, Value::String(s)) => Val::Str(s.clone()),
        (Ty::NumOrStr, _) => return Err(wrong("a number or a string")),
        (Ty::List, Value::String(s)) => Val::List(split_list(s)),
        (Ty::List, Value::Array(a)) => Val::List(
            a.iter()
                .map(|x| x.as_str().map(String::from))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| wrong("a list of strings"))?,
        ),
        (Ty::List, _) => return Err(wrong("a list of strings")),
    })
}

/// Parsed fields by canonical name, and which of them were given by position (a
/// bare word); JSON members and `key=value` words are given by name.
#[derive(Debug, Default)]
pub struct Args(pub BTreeMap<&'static str, Val>, BTreeSet<&'static str>);

impl Args {
    /// Whether field `k` was given as a bare word (by position), not by name.
    pub fn by_position(&self, k: &str) -> bool {
        self.1.contains(k)
    }
    pub fn str(&self, k: &str) -> Option<&str> {
        match self.0.get(k) {
            Some(Val::Str(s)) => Some(s),
            _ => None,
        }
    }
    pub fn bool(&self, k: &str) -> Option<bool> {
        match self.0.get(k) {
            Some(Val::Bool(b)) => Some(*b),
            _ => None,
        }
    }
    pub fn list(&self, k: &str) -> Option<&[String]> {
        match self.0.get(k) {
            Some(Val::List(l)) => Some(l),
            _ => None,
        }
    }
    pub fn get(&self, k: &str) -> Option<&Val> {
        self.0.get(k)
    }
}

/// A JSON object's members in order, duplicates kept (serde_json's `Map` keeps only the
/// last of a repeated key, which would let `{"exp":"+1d","exp":"none"}` slip through).
struct Members(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Members, A::Error> {
                let mut v = Vec::new();
                while let Some((k, val)) = m.next_entry::<String, Value>()? {
                    v.push((k, val));
                }
                Ok(Members(v))
            }
        }
        d.deserialize_map(V)
    }
}

/// Sets a field once; a second value for it (by any of its names) is refused.
fn put(out: &mut Args, field: &Field, given: &str, v: Val) -> Result<(), StoreError> {
    let key = field.names[0];
    if out.0.contains_key(key) {
        let names = if field.names.len() > 1 {
            format!(" (also named {})", field.names[1..].join(", "))
        } else {
            String::new()
        };
        return Err(invalid(format!(
            "{key}{names} is given more than once ('{given}'); give it once"
        )));
    }
    out.0.insert(key, v);
    Ok(())
}

/// Parses a write against `fields`; `usage` goes into error messages. A field given
/// twice, under the same name or two of its names, is refused.
pub fn parse(input: &[u8], fields: &[Field], usage: &str) -> Result<Args, StoreError> {
    let t = text(input)?;
    let mut out = Args::default();
    let find = |k: &str| {
        fields
            .iter()
            .find(|f| f.names.iter().any(|n| n.eq_ignore_ascii_case(k)))
    };
    if t.starts_with('{') {
        let obj: Members =
            serde_json::from_str(t).map_err(|e| invalid(format!("malformed JSON: {e}")))?;
        for (k, v) in &obj.0 {
            let field =
                find(k).ok_or_else(|| invalid(format!("unknown field \"{k}\"; {usage}")))?;
            put(&mut out, field, k, json_value(field, k, v)?)?;
        }
    } else if t.starts_with('[') || t.starts_with('"') {
        return Err(invalid(format!("expected a JSON object or words; {usage}")));
    } else {
        let mut positional = fields.iter().filter(|f| f.positional);
        for w in t.split_whitespace() {
            match w.split_once('=') {
                Some((k, v)) => {
                    let field =
                        find(k).ok_or_else(|| invalid(format!("unknown option '{k}'; {usage}")))?;
                    put(&mut out, field, k, word_value(field, k, v)?)?;
                }
                None => {
                    // The next positional field not already given as key=value.
                    let field = positional
                        .find(|f| !out.0.contains_key(f.names[0]))
                        .ok_or_else(|| invalid(format!("unexpected word '{w}'; {usage}")))?;
                    put(&mut out, field, w, word_value(field, field.names[0], w)?)?;
                    out.1.insert(field.names[0]);
                }
            }
        }
    }
    for fd in fields.iter().filter(|f| f.required) {
        if !out.0.contains_key(fd.names[0]) {
            return Err(invalid(format!("{} is required; {usage}", fd.names[0])));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: &[Field] = &[
        f(&["name"], true, true, Ty::Str),
        f(&["size", "keySize"], true, false, Ty::NumOrStr),
        f(&["enabled"], false, false, Ty::Bool),
        f(&["ops", "keyOps"], false, false, Ty::List),
    ];

    #[test]
    fn words_and_json_agree() {
        let a = parse(
            b"k1 3072 enabled=false ops=wrapKey,unwrapKey\n",
            FIELDS,
            "u",
        )
        .unwrap();
        let b = parse(
            br#"{"name":"k1","keySize":"3072","enabled":false,"keyOps":["wrapKey","unwrapKey"]}"#,
            FIELDS,
            "u",
        )
        .unwrap();
        assert_eq!(a.0, b.0);
        assert_eq!(a.list("ops").unwrap().len(), 2);
    }

    #[test]
    fn a_field_given_twice_is_refused() {
        for bad in [
            &br#"{"name":"k1","size":1,"size":2}"#[..],
            br#"{"name":"k1","size":1,"keySize":2}"#,
            br#"{"name":"k1","Size":1,"size":1}"#,
            br#"{"name":"k1","name":"k2"}"#,
            b"k1 size=1 size=2",
            b"k1 size=1 keySize=2",
            b"k1 2048 size=3072",
            b"k1 enabled=true enabled=false",
        ] {
            let e = parse(bad, FIELDS, "u").unwrap_err().to_string();
            assert!(
                e.contains("more than once") || e.contains("unexpected word"),
                "{}: {e}",
                String::from_utf8_lossy(bad)
            );
        }
        let a = parse(b"size=3072 k1", FIELDS, "u").unwrap();
        assert_eq!(a.str("name"), Some("k1"));
        assert_eq!(a.str("size"), Some("3072"));
    }

    #[test]
    fn json_maps_by_name_never_by_position() {
        let w = parse(b"k1 3072 enabled=false", FIELDS, "u").unwrap();
        assert!(w.by_position("name") && w.by_position("size"));
        assert!(!w.by_position("enabled"));
        let n = parse(b"name=k1 size=3072", FIELDS, "u").unwrap();
        assert!(!n.by_position("name") && !n.by_position("size"));
        let j = parse(br#"{"name":"k1","size":3072}"#, FIELDS, "u").unwrap();
        assert!(!j.by_position("name") && !j.by_position("size"));
        assert_eq!(j.str("name"), Some("k1"));
    }

    #[test]
    fn bad_input_is_refused() {
        let big = vec![b'a'; MAX_CONTROL_WRITE + 1];
        for bad in [
            &b""[..],
            b"k1 2048 extra",
            b"k1 color=red",
            b"k1 enabled=maybe",
            b"{\"name\":\"k1\"",
            b"{\"name\":5}",
            b"{\"name\":\"k1\",\"enabled\":\"yes\"}",
            b"{\"name\":\"k1\",\"owner\":\"x\"}",
            b"[1,2]",
            b"\xff\xfe",
            &big,
        ] {
            assert!(
                parse(bad, FIELDS, "u").is_err(),
                "{:?} accepted",
                String::from_utf8_lossy(bad)
            );
        }
    }
}

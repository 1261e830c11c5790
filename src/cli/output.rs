//! az's global arguments and output: `--query` (JMESPath), `-o json|jsonc|tsv|table|
//! yaml|none`, `-g`, `-l`, `--subscription`, `--yes`, `--no-wait`, `--only-show-errors`.
//! They are valid on every command, as in az, and are kept here once parsed.

use super::CliError;
use serde_json::Value;
use std::sync::OnceLock;

/// `-o/--output`.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Json,
    Jsonc,
    Table,
    Tsv,
    Yaml,
    None,
}

#[derive(clap::Args, Clone, Debug, Default)]
pub struct Globals {
    /// Output format (as in az): json, jsonc, table, tsv, yaml or none.
    #[arg(short, long, value_enum, global = true)]
    pub output: Option<Format>,
    /// Same as -o json.
    #[arg(long, global = true, conflicts_with = "output")]
    pub json: bool,
    /// A JMESPath query on the result, as in az (e.g. `[id]`, `key.kid`).
    #[arg(long, global = true, value_name = "JMESPATH")]
    pub query: Option<String>,
    /// The resource group: recorded on what a command creates, checked on what it
    /// names. Default: 'diskvault configure --defaults group=...', else 'diskvault'.
    #[arg(short = 'g', long, global = true, value_name = "GROUP")]
    pub resource_group: Option<String>,
    /// The location (region) of what a command creates; the vault, sets, disks and VMs
    /// that use them must share it. Default: configured, else the set's or 'local'.
    #[arg(short = 'l', long, global = true, value_name = "LOCATION")]
    pub location: Option<String>,
    /// The subscription: this store's id (or its name, 'account show'); checked.
    #[arg(long, global = true, value_name = "ID")]
    pub subscription: Option<String>,
    /// Don't ask for confirmation.
    #[arg(short = 'y', long, global = true)]
    pub yes: bool,
    /// Accepted as in az; diskvault's operations finish before the command returns.
    #[arg(long, global = true)]
    pub no_wait: bool,
    /// Print only errors, no warnings.
    #[arg(long, global = true)]
    pub only_show_errors: bool,
    /// The key vault's name (az's --vault-name); must be this store's vault.
    #[arg(long, global = true, value_name = "VAULT")]
    pub vault_name: Option<String>,
}

static GLOBALS: OnceLock<Globals> = OnceLock::new();

/// The subscription and group of an Azure id given as a name (`-n ID`).
static NAMED: std::sync::Mutex<(Option<String>, Option<String>)> =
    std::sync::Mutex::new((None, None));

pub fn note_id(sub: Option<String>, group: Option<String>) {
    if let Ok(mut n) = NAMED.lock() {
        *n = (sub, group);
    }
}

/// The subscription an id given as a name names, checked like `--subscription`.
pub fn named_subscription() -> Option<String> {
    NAMED.lock().ok().and_then(|n| n.0.clone())
}

/// `-g`, or the group of an id given as a name.
pub fn implied_group() -> Option<String> {
    globals()
        .resource_group
        .clone()
        .or_else(|| NAMED.lock().ok().and_then(|n| n.1.clone()))
}

/// `-g` and `-l`, for a create request (an id given as the name gives the group).
pub fn placement() -> crate::store::arm::Placement {
    let g = globals();
    crate::store::arm::Placement::new(implied_group().as_deref(), g.location.as_deref())
}

pub fn set(g: Globals) {
    let _ = GLOBALS.set(g);
}

pub fn globals() -> &'static Globals {
    static EMPTY: OnceLock<Globals> = OnceLock::new();
    GLOBALS
        .get()
        .unwrap_or_else(|| EMPTY.get_or_init(Globals::default))
}

/// The format asked for with -o (or --json), if any.
pub fn asked() -> Option<Format> {
    let g = globals();
    if g.json {
        return Some(Format::Json);
    }
    g.output
}

/// The format to print in: the one asked for, else `default`.
pub fn format(default: Format) -> Format {
    asked().unwrap_or(default)
}

/// Whether the generic printer must handle the output (a query, or a format a
/// command's own table doesn't do).
pub fn generic() -> bool {
    globals().query.is_some() || matches!(asked(), Some(Format::Yaml | Format::Jsonc))
}

/// Applies `--query`.
pub fn query(v: &Value) -> Result<Value, CliError> {
    let Some(q) = &globals().query else {
        return Ok(v.clone());
    };
    let expr = jmespath::compile(q).map_err(|e| {
        CliError(format!(
            "invalid --query '{q}': {}; see https://jmespath.org",
            e.to_string().lines().next().unwrap_or("syntax error")
        ))
    })?;
    let data =
        jmespath::Variable::from_serializable(v).map_err(|e| CliError(format!("--query: {e}")))?;
    let r = expr
        .search(data)
        .map_err(|e| CliError(format!("--query '{q}' failed: {e}")))?;
    serde_json::to_value(&*r).map_err(|e| CliError(format!("--query: {e}")))
}

/// Prints a result as az does: the query applied, then the format.
pub fn emit(v: &Value, default: Format) -> Result<(), CliError> {
    let v = query(v)?;
    print_value(&v, format(default));
    Ok(())
}

pub fn print_value(v: &Value, fmt: Format) {
    match fmt {
        Format::Json | Format::Jsonc => println!(
            "{}",
            serde_json::to_string_pretty(v).expect("JSON serializes")
        ),
        Format::None => {}
        Format::Yaml => print!("{}", yaml(v)),
        Format::Tsv => {
            for line in tsv(v) {
                println!("{line}");
            }
        }
        Format::Table => table(v),
    }
}

/// A JSON scalar as one table or tsv cell.
pub fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    }
}

/// The keys of a query's last multiselect hash (`[].{Name:name, Loc:location}`), in
/// the query's order: az prints them so, while the JSON map sorts them.
fn query_keys() -> Option<Vec<String>> {
    let q = globals().query.as_deref()?;
    let open = q.rfind('{')?;
    let body = &q[open + 1..];
    let mut depth = 0i32;
    let mut end = None;
    for (i, c) in body.char_indices() {
        match c {
            '{' | '[' | '(' => depth += 1,
            ']' | ')' => depth -= 1,
            '}' if depth == 0 => {
                end = Some(i);
                break;
            }
            '}' => depth -= 1,
            _ => {}
        }
    }
    let body = &body[..end?];
    let (mut keys, mut depth, mut start) = (Vec::new(), 0i32, 0);
    let mut push = |part: &str| {
        if let Some((k, _)) = part.split_once(':') {
            keys.push(k.trim().trim_matches('"').to_string());
        }
    };
    for (i, c) in body.char_indices() {
        match c {
            '{' | '[' | '(' => depth += 1,
            '}' | ']' | ')' => depth -= 1,
            ',' if depth == 0 => {
                push(&body[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    push(&body[start..]);
    Some(keys)
}

/// An object's fields in the query's order when the query made it, else the map's.
fn ordered(o: &serde_json::Map<String, Value>) -> Vec<(&String, &Value)> {
    if let Some(keys) = query_keys() {
        if keys.len() == o.len() && keys.iter().all(|k| o.contains_key(k)) {
            return keys
                .iter()
                .filter_map(|k| o.get_key_value(k.as_str()))
                .collect();
        }
    }
    o.iter().collect()
}

/// az's tsv: one line per list item (or one for an object), its scalar values
/// tab-separated; nested objects and lists are left out.
pub fn tsv(v: &Value) -> Vec<String> {
    let row = |v: &Value| -> String {
        match v {
            Value::Object(o) => ordered(o)
                .into_iter()
                .map(|(_, x)| x)
                .filter(|x| !x.is_object() && !x.is_array())
                .map(cell)
                .collect::<Vec<_>>()
                .join("\t"),
            Value::Array(a) => a
                .iter()
                .filter(|x| !x.is_object() && !x.is_array())
                .map(cell)
                .collect::<Vec<_>>()
                .join("\t"),
            x => cell(x),
        }
    };
    match v {
        Value::Array(a) => a.iter().map(row).collect(),
        Value::Null => vec![],
        x => vec![row(x)],
    }
}

/// Scalars of an object with dotted paths (`encryption.type`), lists of scalars
/// joined; lists of objects are counted.
fn flatten(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(o) => {
            for (k, x) in o {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&p, x, out);
            }
        }
        Value::Array(a) if a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            out.push((
                prefix.to_string(),
                a.iter().map(cell).collect::<Vec<_>>().join(", "),
            ));
        }
        Value::Array(a) => out.push((prefix.to_string(), format!("({} items)", a.len()))),
        Value::Null => {}
        x => out.push((prefix.to_string(), cell(x))),
    }
}

/// A table: a list of objects as rows of their scalar fields; one object as
/// FIELD/VALUE rows with nested fields by path, so nothing is cut off or too wide.
fn table(v: &Value) {
    match v {
        Value::Array(items) if items.iter().all(Value::is_object) && !items.is_empty() => {
            let mut header: Vec<String> = Vec::new();
            for it in items {
                for (k, x) in ordered(it.as_object().expect("objects")) {
                    if !x.is_object() && !x.is_array() && !header.contains(k) {
                        header.push(k.clone());
                    }
                }
            }
            let rows = items
                .iter()
                .map(|it| header.iter().map(|h| cell(&it[h])).collect())
                .collect();
            print_rows(
                header.iter().map(|h| title(h)).collect(),
                rows,
                Format::Table,
            );
        }
        Value::Array(items) => {
            for it in items {
                println!("{}", cell(it));
            }
        }
        Value::Object(_) => {
            let mut fields = Vec::new();
            flatten("", v, &mut fields);
            let rows = fields.into_iter().map(|(k, x)| vec![k, x]).collect();
            print_rows(vec!["Field".into(), "Value".into()], rows, Format::Table);
        }
        x => println!("{}", cell(x)),
    }
}

/// az's column titles: `provisioningState` is `ProvisioningState`.
fn title(k: &str) -> String {
    let mut c = k.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

/// Prints rows as an aligned table with a header, or as tab-separated values without one.
pub fn print_rows(header: Vec<String>, rows: Vec<Vec<String>>, fmt: Format) {
    if fmt == Format::None {
        return;
    }
    if fmt == Format::Tsv {
        for r in rows {
            println!("{}", r.join("\t"));
        }
        return;
    }
    let mut width: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        let cells: Vec<String> = r
            .iter()
            .zip(&width)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    };
    line(&header);
    for r in &rows {
        line(r);
    }
}

/// YAML for a JSON value (block style; strings quoted when YAML would read them
/// as something else).
pub fn yaml(v: &Value) -> String {
    let mut out = String::new();
    yaml_into(v, 0, &mut out);
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            // Plain only when no YAML reader could take it for anything but a
            // string: no leading digit or sign (numbers, dates, sexagesimals), no
            // indicators, no special words.
            let plain = s
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '/' || c == '_')
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || " _./-+=@,()".contains(c))
                && !s.ends_with(' ')
                && !matches!(
                    s.to_ascii_lowercase().as_str(),
                    "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
                );
            if plain {
                s.clone()
            } else {
                serde_json::to_string(s).expect("string serializes")
            }
        }
        _ => unreachable!("scalars only"),
    }
}

fn yaml_into(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(o) if o.is_empty() => out.push_str("{}\n"),
        Value::Array(a) if a.is_empty() => out.push_str("[]\n"),
        Value::Object(o) => {
            for (k, x) in o {
                out.push_str(&format!("{pad}{}:", yaml_scalar(&Value::String(k.clone()))));
                match x {
                    Value::Object(m) if !m.is_empty() => {
                        out.push('\n');
                        yaml_into(x, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push('\n');
                        yaml_into(x, indent, out);
                    }
                    Value::Object(_) | Value::Array(_) => {
                        out.push(' ');
                        yaml_into(x, 0, out);
                    }
                    s => out.push_str(&format!(" {}\n", yaml_scalar(s))),
                }
            }
        }
        Value::Array(a) => {
            for x in a {
                out.push_str(&format!("{pad}-"));
                match x {
                    Value::Object(m) if !m.is_empty() => {
                        // The first member on the dash's line, the rest below it.
                        let mut inner = String::new();
                        yaml_into(x, indent + 2, &mut inner);
                        out.push(' ');
                        out.push_str(inner.trim_start());
                    }
                    Value::Array(b) if !b.is_empty() => {
                        out.push('\n');
                        yaml_into(x, indent + 2, out);
                    }
                    Value::Object(_) | Value::Array(_) => {
                        out.push(' ');
                        yaml_into(x, 0, out);
                    }
                    s => out.push_str(&format!(" {}\n", yaml_scalar(s))),
                }
            }
        }
        s => out.push_str(&format!("{pad}{}\n", yaml_scalar(s))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn tsv_prints_what_az_prints_for_a_multiselect() {
        let v = json!(["/subscriptions/s/resourceGroups/g"]);
        assert_eq!(tsv(&v), vec!["/subscriptions/s/resourceGroups/g"]);
        assert_eq!(tsv(&json!("x")), vec!["x"]);
        assert_eq!(tsv(&json!({"a": 1, "b": "t", "c": {"d": 2}})), vec!["1\tt"]);
        assert_eq!(tsv(&json!([[1, 2], [3, 4]])), vec!["1\t2", "3\t4"]);
        assert!(tsv(&Value::Null).is_empty());
    }

    #[test]
    fn yaml_is_read_back_as_the_same_value() {
        let v = json!({
            "name": "d1", "n": 3, "ok": true, "none": null, "s": "true", "num": "10",
            "colon": "a: b", "list": [1, "x", {"k": "v", "k2": [1]}], "empty": {}, "e2": [],
            "nested": {"a": {"b": "-dash"}}, "q": "it's \"q\"", "line": "a\nb"
        });
        let y = yaml(&v);
        // Checked with an independent parser in tests/az.rs; here the shape.
        assert!(y.contains("name: d1\n"));
        assert!(y.contains("s: \"true\"\n"));
        assert!(y.contains("num: \"10\"\n"));
        assert!(y.contains("colon: \"a: b\"\n"));
        assert!(y.contains("line: \"a\\nb\"\n"));
        assert!(y.contains("list:\n- 1\n- x\n- k: v\n  k2:\n  - 1\n"), "{y}");
    }

    #[test]
    fn a_bad_query_is_one_line() {
        let q = jmespath::compile("[id");
        assert!(q.is_err());
    }
}

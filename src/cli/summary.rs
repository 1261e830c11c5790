//! One-line summaries of what a change did to many objects, so that a revocation of
//! 10,000 objects prints a few lines, not 10,000 names.

/// At most this many names are shown per line.
const NAMES: usize = 10;

/// "500 disks and 1500 snapshots" from (kind, ...) entries, kinds in first-seen order.
fn counts<T>(objs: &[(String, T)]) -> String {
    let mut kinds: Vec<(&str, usize)> = Vec::new();
    for (k, _) in objs {
        match kinds.iter_mut().find(|(n, _)| n == k) {
            Some(e) => e.1 += 1,
            None => kinds.push((k, 1)),
        }
    }
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, n)| format!("{n} {k}{}", if *n == 1 { "" } else { "s" }))
        .collect();
    parts.join(" and ")
}

/// "d1, d2, ... (first 10 of 2000); 'diskvault disk list' shows all", or every name.
fn names(list: &[&str]) -> String {
    let shown = list[..list.len().min(NAMES)].join(", ");
    if list.len() > NAMES {
        format!(
            "{shown}, ... (first {NAMES} of {}); 'diskvault disk list' and 'diskvault snapshot list' show all",
            list.len()
        )
    } else {
        shown
    }
}

/// One line per key state of `objs` (kind, name, keyState), for the objects on
/// `what` (e.g. "key k1"): revoked, pending, unavailable, available, in that order.
pub fn by_state(what: &str, objs: &[(String, String, String)]) -> Vec<String> {
    type Class = (&'static str, fn(&str) -> bool);
    let classes: [Class; 4] = [
        ("revoked", |s| s.starts_with("Revoked")),
        ("revocation pending for", |s| {
            s.starts_with("Available (revocation pending")
        }),
        ("unavailable", |s| s.starts_with("Unavailable")),
        ("available", |s| s == "Available"),
    ];
    let mut out = Vec::new();
    for (verb, test) in classes {
        let sel: Vec<&(String, String, String)> = objs.iter().filter(|o| test(&o.2)).collect();
        let Some(first) = sel.first() else { continue };
        let kinds: Vec<(String, ())> = sel.iter().map(|o| (o.0.clone(), ())).collect();
        let list: Vec<&str> = sel.iter().map(|o| o.1.as_str()).collect();
        out.push(format!(
            "{verb} {} on {what}: {} ({})",
            counts(&kinds),
            names(&list),
            if sel.len() == 1 {
                first.2.clone()
            } else {
                format!("{}: {}", first.1, first.2)
            }
        ));
    }
    let rest: Vec<&(String, String, String)> = objs
        .iter()
        .filter(|o| !classes.iter().any(|(_, t)| t(&o.2)))
        .collect();
    if !rest.is_empty() {
        let kinds: Vec<(String, ())> = rest.iter().map(|o| (o.0.clone(), ())).collect();
        let list: Vec<&str> = rest.iter().map(|o| o.1.as_str()).collect();
        out.push(format!("{} on {what}: {}", counts(&kinds), names(&list)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(kind: &str, name: String, state: &str) -> (String, String, String) {
        (kind.into(), name, state.into())
    }

    #[test]
    fn thousands_of_objects_make_one_line_per_state() {
        let mut objs: Vec<_> = (0..500)
            .map(|i| obj("disk", format!("d{i:03}"), "Revoked: key k1 disabled at T"))
            .collect();
        objs.extend(
            (0..1500).map(|i| obj("snapshot", format!("s{i}"), "Revoked: key k1 disabled at T")),
        );
        objs.push(obj("disk", "x".into(), "Available"));
        let lines = by_state("key k1", &objs);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines[0].starts_with("revoked 500 disks and 1500 snapshots on key k1: d000, d001,"),
            "{}",
            lines[0]
        );
        assert!(lines[0].contains("(first 10 of 2000)"), "{}", lines[0]);
        assert!(!lines[0].contains("d010"), "{}", lines[0]);
        assert!(lines[0].len() < 400, "{}", lines[0]);
        assert_eq!(lines[1], "available 1 disk on key k1: x (Available)");
    }

    #[test]
    fn a_few_objects_are_all_named_with_their_state() {
        let objs = vec![
            obj("disk", "a".into(), "Revoked: key k1 disabled at T"),
            obj(
                "image",
                "i".into(),
                "Available (revocation pending: key k1 disabled)",
            ),
            obj("disk", "b".into(), "Unavailable: corrupt"),
        ];
        assert_eq!(
            by_state("key k1", &objs),
            vec![
                "revoked 1 disk on key k1: a (Revoked: key k1 disabled at T)",
                "revocation pending for 1 image on key k1: i (Available (revocation pending: key k1 disabled))",
                "unavailable 1 disk on key k1: b (Unavailable: corrupt)",
            ]
        );
    }
}

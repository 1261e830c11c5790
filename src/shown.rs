//! Text from users, made safe to show: in replies, `last-error`, logs and the audit
//! log. A PEM block is never echoed (a private key pasted into the wrong field must not
//! land in a permanent, hash-chained log), control characters are escaped (so a
//! value can't forge a second line), and the length is capped. A long run of base64
//! (a key body pasted without its PEM lines) is not shown either.

const PEM_BEGIN: &str = "-----BEGIN";
/// Base64 runs this long are hidden: longer than any id or name a message needs
/// (key URLs, which may be longer, are recognised by their `/keys/`).
const LONG_BASE64: usize = 64;

fn is_b64(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '=')
}

/// `s` with PEM blocks removed, control characters escaped, at most `max` characters.
pub fn shown(s: &str, max: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max + 8));
    let mut rest = s;
    let mut n = 0;
    while !rest.is_empty() {
        if rest.starts_with(PEM_BEGIN) {
            out.push_str("[PEM block not shown]");
            n += 21;
            // Skip through the END line's closing dashes, or to the end.
            rest = match rest.find("-----END") {
                Some(i) => {
                    let after = &rest[i + 8..];
                    match after.find("-----") {
                        Some(j) => &after[j + 5..],
                        None => "",
                    }
                }
                None => "",
            };
            continue;
        }
        let run = rest.find(|c: char| !is_b64(c)).unwrap_or(rest.len());
        let at_start = !out.chars().next_back().is_some_and(is_b64);
        if at_start && run >= LONG_BASE64 && !rest[..run].contains("/keys/") {
            out.push_str("[long base64 text not shown]");
            n += 28;
            rest = &rest[run..];
            continue;
        }
        let c = rest.chars().next().expect("not empty");
        rest = &rest[c.len_utf8()..];
        if n >= max {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
        n += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::shown;

    #[test]
    fn pems_control_characters_and_length() {
        let pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----\n";
        let s = shown(&format!("invalid key name '{pem}': too long"), 1000);
        assert_eq!(s, "invalid key name '[PEM block not shown]\\n': too long");
        assert!(!shown(&format!("x {pem}"), 1000).contains("MIIE"));
        // A block cut short is hidden to the end.
        assert_eq!(
            shown("a -----BEGIN RSA PRIVATE KEY-----\nMIIB", 100),
            "a [PEM block not shown]"
        );
        assert_eq!(
            shown("zz\n2026 [0] forged\0tail", 100),
            "zz\\n2026 [0] forged\\u{0}tail"
        );
        assert_eq!(shown(&"é".repeat(10), 4), "éééé…");
        // A key body without its PEM lines, as `tr -d '\n'` leaves it.
        let flat = "unexpected word 'KEY-----MIICeAIBADANBgkqhkiG9w0BAQEFAASCAmIwggJeAgEAAoGBAMxyz0123456789abcdefABCDEF+/==-----END'";
        let s = shown(flat, 1000);
        assert!(
            !s.contains("MIIC") && s.contains("[long base64 text not shown]"),
            "{s}"
        );
        // Ids, hashes of ordinary length and key URLs stay.
        let url = "https://v1.vault.azure.net/keys/a-rather-long-key-name-of-many-words-indeed/6f0e1a2b3c4d5e6f7a8b9c0d1e2f3a4b";
        assert_eq!(shown(url, 1000), url);
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(shown(id, 100), id);
        assert_eq!(shown("plain", 5), "plain");
    }
}

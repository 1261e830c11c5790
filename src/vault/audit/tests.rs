//! The audit log's hash chain, torn tails and late records.

use super::*;

fn sample(dir: &Path, n: usize) {
    let mut log = AuditLog::open(dir).unwrap();
    let c = Caller::des("set1", "11111111-2222-3333-4444-555555555555");
    for i in 0..n {
        let fail = (i % 3 == 2).then_some(("Forbidden", "no grant"));
        log.append("KeyUnwrap", &c, &format!("k/{i}"), fail)
            .unwrap();
    }
}

#[test]
fn chain_verifies_and_resumes() {
    let d = tempfile::tempdir().unwrap();
    sample(d.path(), 4);
    sample(d.path(), 3);
    assert_eq!(verify(d.path()).map(|v| v.records), Ok(7));
}

#[test]
fn a_torn_tail_is_not_an_edit() {
    let d = tempfile::tempdir().unwrap();
    sample(d.path(), 3);
    let path = d.path().join(AUDIT_FILE);
    let orig = fs::read(&path).unwrap();
    // A crash part-way through appending record 4.
    let mut torn = orig.clone();
    let fragment = b"{\"time\":\"2026-01-01T00:00:00Z\",\"se";
    torn.extend_from_slice(fragment);
    fs::write(&path, &torn).unwrap();
    let v = verify(d.path()).unwrap();
    let n = fragment.len() as u64;
    assert_eq!((v.records, v.torn_tail), (3, n));
    assert!(
        v.to_string().contains(&format!("torn tail of {n} bytes")),
        "{v}"
    );
    // An edit of a complete line is still an edit, torn tail or not.
    let text = String::from_utf8(torn.clone()).unwrap();
    fs::write(&path, text.replacen("KeyUnwrap", "KeyWrap", 1)).unwrap();
    assert_eq!(verify(d.path()).unwrap_err().line, 1);
    // Cutting off the last record's newline (or the whole record) is not a
    // crash: audit.head names the record.
    fs::write(&path, &orig[..orig.len() - 1]).unwrap();
    assert!(verify(d.path()).is_err());
    // Opening leaves the torn tail for verify to report; the next append drops
    // it before writing.
    fs::write(&path, &torn).unwrap();
    let mut log = AuditLog::open(d.path()).unwrap();
    assert_eq!(fs::read(&path).unwrap(), torn, "open must not truncate");
    assert_eq!(verify(d.path()).unwrap().torn_tail, n);
    assert!(v.to_string().contains("dropped at the next append"), "{v}");
    let c = Caller::current_user();
    log.append("KeyGet", &c, "k", None).unwrap();
    assert_eq!(
        verify(d.path()).unwrap(),
        Verified {
            records: 4,
            torn_tail: 0,
            head_lag: 0
        }
    );
    log.reserve().unwrap();
    assert_eq!(verify(d.path()).unwrap().records, 4);
}

#[test]
fn edits_deletions_and_truncation_name_the_line() {
    let d = tempfile::tempdir().unwrap();
    sample(d.path(), 6);
    let path = d.path().join(AUDIT_FILE);
    let orig = fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = orig.lines().collect();
    let write = |ls: &[String]| fs::write(&path, ls.join("\n") + "\n").unwrap();
    let owned: Vec<String> = lines.iter().map(|s| s.to_string()).collect();

    let mut edited = owned.clone();
    edited[2] = edited[2].replace("KeyUnwrap", "KeyWrap");
    write(&edited);
    assert_eq!(verify(d.path()).unwrap_err().line, 3);

    let mut deleted = owned.clone();
    deleted.remove(3);
    write(&deleted);
    assert_eq!(verify(d.path()).unwrap_err().line, 4);

    write(&owned[..5]);
    assert_eq!(verify(d.path()).unwrap_err().line, 6);

    let mut swapped = owned.clone();
    swapped.swap(1, 2);
    write(&swapped);
    assert_eq!(verify(d.path()).unwrap_err().line, 2);

    write(&owned);
    assert_eq!(verify(d.path()).map(|v| v.records), Ok(6));

    // A head that could not be rewritten lags; what it pins still checks.
    let head_path = d.path().join(HEAD_FILE);
    let head = fs::read(&head_path).unwrap();
    let (_, h3) = split_line(lines[2]).unwrap();
    let lag = serde_json::to_vec(&Head {
        seq: 3,
        hash: h3.to_string(),
    })
    .unwrap();
    fs::write(&head_path, &lag).unwrap();
    let v = verify(d.path()).unwrap();
    assert_eq!((v.records, v.head_lag), (6, 3));
    assert!(v.to_string().contains("lags by 3 records"), "{v}");
    let mut forged = owned.clone();
    forged[2] = forged[2].replace("KeyUnwrap", "KeyWrap");
    write(&forged);
    assert_eq!(verify(d.path()).unwrap_err().line, 3);
    fs::write(&head_path, &head).unwrap();
}

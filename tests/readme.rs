//! The README's walkthrough runs top to bottom as written: its shell blocks under
//! "Using it" are run in order (with /tmp/dv moved into a temp dir and the built
//! binary on PATH), and the mount is cleaned up even when a step fails.

mod common;

use common::*;
use std::process::Command;

/// The `sh` blocks of the README's "Using it" section that use diskvault (not the
/// install step).
fn walkthrough() -> String {
    let readme = include_str!("../README.md");
    let section = readme
        .split("## Using it")
        .nth(1)
        .expect("README has a 'Using it' section");
    let section = section.split("\n## ").next().unwrap();
    let mut script = String::new();
    for (i, block) in section.split("```").enumerate() {
        if i % 2 == 1 && block.starts_with("sh\n") && !block.contains("cargo ") {
            script.push_str(&block[3..]);
            script.push('\n');
        }
    }
    script
}

#[test]
fn readme_walkthrough_runs_top_to_bottom() {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().join("dv");
    let script = walkthrough();
    assert!(script.contains("diskvault mount") && script.contains("diskvault umount"));
    let script = script.replace("/tmp/dv", base.to_str().unwrap());
    // Unmounts even when a step fails.
    let _guard = Mounted::adopt(&base.join("store"), &base.join("mnt"));
    let _hsm_guard = Mounted::adopt(&base.join("hstore"), &base.join("hmnt"));
    let bin_dir = std::path::Path::new(bin()).parent().unwrap();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("set -euo pipefail\n{script}"))
        .env("PATH", path)
        .env_remove("DISKVAULT_STORE")
        // From the clone, as a reader runs it (it uses scripts/).
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "the README walkthrough failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK: "), "verify-audit ran: {stdout}");
    // What the README says happens, happens: the refusal, and identical images
    // without a size warning.
    assert!(
        stdout.contains("another set: refused, as in Azure"),
        "{stdout}"
    );
    assert!(stdout.contains("Images are identical"), "{stdout}");
    assert!(!stdout.contains("mismatch"), "{stdout}");
}

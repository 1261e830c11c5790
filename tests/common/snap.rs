//! Helpers for the snapshot tests: snapshot and object JSON through the CLI, data
//! and hole maps of files, bytes a directory takes, loop devices and other tools.
//! Declared by each test crate that uses it (`#[path = "common/snap.rs"] mod snap;`),
//! after `mod common;`.
#![allow(dead_code)]

use crate::common::{run_ok, Mounted};
use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// `diskvault snapshot create NAME --source SOURCE`; the snapshot's JSON.
pub fn snapshot(m: &Mounted, name: &str, source: &str) -> serde_json::Value {
    let out = run_ok(&[
        "snapshot",
        "create",
        name,
        "--source",
        source,
        "--store",
        m.s(),
    ]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("snapshot create output {out}: {e}"))
}

/// One object's JSON (`kind`: disk, snapshot or image) from `KIND list -o json`.
pub fn listed(m: &Mounted, kind: &str, name: &str) -> serde_json::Value {
    let out = run_ok(&[kind, "list", "-o", "json", "--store", m.s()]);
    let all: serde_json::Value = serde_json::from_str(&out).unwrap();
    all.as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} in {out}"))
        .clone()
}

/// `diskvault KIND show NAME` as JSON.
pub fn show(m: &Mounted, kind: &str, name: &str) -> serde_json::Value {
    let out = run_ok(&[kind, "show", name, "--store", m.s()]);
    serde_json::from_str(&out).unwrap()
}

/// Waits until no dead delta is left to merge (`.vault/merges.json`), so space and
/// depth can be measured after a delete. Bounded: fails after 60 s.
pub fn settle_merges(m: &Mounted) {
    let path = m.mnt.join(".vault/merges.json");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if v["pending"] == 0 && v["running"] == false {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "merges never settled: {v}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// `usedBytes` of an object's JSON: (unique, shared).
pub fn used(v: &serde_json::Value) -> (u64, u64) {
    (
        v["usedBytes"]["unique"]
            .as_u64()
            .unwrap_or_else(|| panic!("no usedBytes.unique in {v}")),
        v["usedBytes"]["shared"]
            .as_u64()
            .unwrap_or_else(|| panic!("no usedBytes.shared in {v}")),
    )
}

/// The data extents of a file, as SEEK_DATA / SEEK_HOLE report them.
pub fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < size {
        // Safe because: the fd is open for the duration of the call.
        let d = unsafe { libc::lseek(f.as_raw_fd(), pos, libc::SEEK_DATA) };
        if d < 0 {
            let e = std::io::Error::last_os_error();
            assert_eq!(
                e.raw_os_error(),
                Some(libc::ENXIO),
                "SEEK_DATA at {pos}: {e}"
            );
            break;
        }
        // Safe because: as above.
        let h = unsafe { libc::lseek(f.as_raw_fd(), d, libc::SEEK_HOLE) };
        assert!(h > d, "SEEK_HOLE at {d} gave {h}");
        out.push((d as u64, h as u64));
        pos = h;
    }
    out
}

/// Bytes the files under `dir` take on disk (st_blocks), recursively.
pub fn disk_usage(dir: &Path) -> u64 {
    if !dir.exists() {
        return 0;
    }
    crate::common::walk(dir)
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.blocks() * 512).unwrap_or(0))
        .sum()
}

/// Bytes a store's disk data and deltas take.
pub fn store_data_bytes(store: &Path) -> u64 {
    let data: u64 = std::fs::read_dir(store.join("disks"))
        .unwrap()
        .map(|e| e.unwrap().path().join("data"))
        .filter(|p| p.exists())
        .map(|p| std::fs::metadata(p).unwrap().blocks() * 512)
        .sum();
    data + disk_usage(&store.join("deltas"))
}

/// Runs a program; its output, whatever its status.
pub fn tool_out<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} is required: {e}"))
}

/// Runs a program that must succeed; its stdout.
pub fn tool_ok<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = tool_out(program, args);
    assert!(
        out.status.success(),
        "{program} {:?} failed: {}{}",
        args.iter().map(|a| a.as_ref()).collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A loop device over a file, detached on drop (drop it before the mount it uses).
pub struct Loop(pub PathBuf);

impl Loop {
    /// `losetup -f --show [-r] FILE`.
    pub fn attach(file: &Path, read_only: bool) -> Loop {
        let mut args: Vec<&OsStr> = vec![OsStr::new("-f"), OsStr::new("--show")];
        if read_only {
            args.push(OsStr::new("-r"));
        }
        args.push(file.as_os_str());
        let dev = tool_ok("losetup", &args);
        Loop(PathBuf::from(dev.trim()))
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
    }
}

/// The whole content of a file or block device.
pub fn read_all(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// The first offset where `a` and `b` differ, for assertion messages.
pub fn first_diff(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

/// Asserts two byte strings are equal without printing megabytes.
#[track_caller]
pub fn assert_same(got: &[u8], want: &[u8], what: &str) {
    if let Some(at) = first_diff(got, want) {
        panic!(
            "{what}: differs at byte {at} (lengths {} and {})",
            got.len(),
            want.len()
        );
    }
}

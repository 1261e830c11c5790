//! The mounts of this process's namespace, from /proc/self/mountinfo (used by the
//! CLI to find and check mounts, and by the FUSE layer to find its own device).

use std::path::Path;

/// One mountinfo line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// "major:minor" of the mounted file system.
    pub dev: String,
    pub mountpoint: String,
    pub fstype: String,
    pub source: String,
}

/// Every mount in a mountinfo text, in its order: later lines are mounted on top of
/// earlier ones. Malformed lines are skipped.
pub fn parse(info: &str) -> Vec<Mount> {
    info.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let mut f = left.split(' ');
            let dev = f.nth(2)?.to_string();
            let mountpoint = unescape(f.nth(1)?);
            let mut r = right.split(' ');
            let fstype = r.next()?.to_string();
            let source = unescape(r.next()?);
            Some(Mount {
                dev,
                mountpoint,
                fstype,
                source,
            })
        })
        .collect()
}

/// This process's mounts; none if /proc can't be read.
pub fn read() -> Vec<Mount> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|i| parse(&i))
        .unwrap_or_default()
}

/// The topmost of `mounts` on `path` that `keep` accepts.
pub fn topmost(mounts: &[Mount], path: &Path, keep: impl Fn(&Mount) -> bool) -> Option<Mount> {
    let want = path.to_string_lossy();
    mounts
        .iter()
        .rev()
        .find(|m| m.mountpoint == want && keep(m))
        .cloned()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, and tab, newline, backslash).
pub fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
61 22 0:39 / /dev/shm/a\\040b rw,nosuid,nodev,relatime shared:30 - fuse diskvault:/s rw,user_id=0
62 22 0:41 / /mnt/x rw,relatime shared:31 - tmpfs tmpfs rw
63 22 0:42 / /mnt/x rw,nosuid - fuse.diskvault diskvault:/t rw,user_id=0
64 22 0:43 / /mnt/y rw,relatime - tmpfs tmpfs rw";

    fn fuse_dev(info: &str, path: &str) -> Option<String> {
        topmost(&parse(info), Path::new(path), |m| {
            m.fstype.starts_with("fuse")
        })
        .map(|m| m.dev)
    }

    #[test]
    fn the_topmost_mount_on_a_path() {
        assert_eq!(fuse_dev(INFO, "/dev/shm/a b").as_deref(), Some("0:39"));
        // Stacked mounts: the last one listed is on top.
        assert_eq!(fuse_dev(INFO, "/mnt/x").as_deref(), Some("0:42"));
        let x = topmost(&parse(INFO), Path::new("/mnt/x"), |_| true).unwrap();
        assert_eq!(
            (x.fstype.as_str(), x.source.as_str()),
            ("fuse.diskvault", "diskvault:/t")
        );
        assert_eq!(fuse_dev(INFO, "/mnt/y"), None);
        assert_eq!(fuse_dev(INFO, "/dev/shm/a\\040b"), None);
        assert_eq!(fuse_dev("garbage\n\n- -", "/"), None);
    }

    #[test]
    fn escapes() {
        assert_eq!(unescape("a\\040b\\011c\\012d\\134e"), "a b\tc\nd\\e");
        // Not an escape: kept as it is.
        assert_eq!(unescape("x\\09y\\"), "x\\09y\\");
    }
}

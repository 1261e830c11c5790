//! Histograms of the read and write request sizes the kernel sends, logged at debug
//! level when the mount ends (`RUST_LOG=diskvault=debug`): they show what readahead,
//! `max_pages` and the page cache turn a program's I/O into.

use std::sync::atomic::{AtomicU64, Ordering};

/// Buckets: up to 4 KiB, then each power of two up to 1 MiB, then larger.
const BUCKETS: usize = 10;

#[derive(Default)]
pub(super) struct RequestSizes {
    on: bool,
    read: [AtomicU64; BUCKETS],
    write: [AtomicU64; BUCKETS],
}

fn bucket(len: usize) -> usize {
    let log = usize::BITS - len.saturating_sub(1).max(1).leading_zeros();
    (log.saturating_sub(12) as usize).min(BUCKETS - 1)
}

fn label(b: usize) -> String {
    match b {
        0 => "<=4K".into(),
        b if b == BUCKETS - 1 => ">1M".into(),
        8 => "1M".into(),
        b => format!("{}K", 4 << b),
    }
}

impl RequestSizes {
    /// Counts only when debug logging is on, so a normal mount pays nothing.
    pub(super) fn new() -> Self {
        RequestSizes {
            on: log::log_enabled!(log::Level::Debug),
            ..Default::default()
        }
    }

    pub(super) fn read(&self, len: usize) {
        if self.on {
            self.read[bucket(len)].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn write(&self, len: usize) {
        if self.on {
            self.write[bucket(len)].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// One line per direction, e.g. "read requests by size: 128K 5120, 1M 20".
    pub(super) fn summary(&self) -> Vec<String> {
        [("read", &self.read), ("write", &self.write)]
            .into_iter()
            .map(|(what, counts)| {
                let parts: Vec<String> = counts
                    .iter()
                    .enumerate()
                    .map(|(b, c)| (b, c.load(Ordering::Relaxed)))
                    .filter(|&(_, c)| c > 0)
                    .map(|(b, c)| format!("{} {c}", label(b)))
                    .collect();
                let parts = if parts.is_empty() {
                    "none".to_string()
                } else {
                    parts.join(", ")
                };
                format!("{what} requests by size: {parts}")
            })
            .collect()
    }

    pub(super) fn log(&self) {
        if self.on {
            for line in self.summary() {
                log::debug!("{line}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_4k() {
        assert_eq!(bucket(0), 0);
        assert_eq!(bucket(1), 0);
        assert_eq!(bucket(4096), 0);
        assert_eq!(bucket(4097), 1);
        assert_eq!(bucket(8192), 1);
        assert_eq!(bucket(128 << 10), 5);
        assert_eq!(bucket(1 << 20), 8);
        assert_eq!(bucket((1 << 20) + 1), 9);
        assert_eq!(bucket(usize::MAX), 9);
        let labels: Vec<_> = (0..BUCKETS).map(label).collect();
        assert_eq!(
            labels,
            ["<=4K", "8K", "16K", "32K", "64K", "128K", "256K", "512K", "1M", ">1M"]
        );
    }

    #[test]
    fn summary_counts_each_size_in_its_bucket() {
        let s = RequestSizes {
            on: true,
            ..Default::default()
        };
        for _ in 0..3 {
            s.read(128 << 10);
        }
        s.read(1 << 20);
        s.write(4096);
        assert_eq!(
            s.summary(),
            [
                "read requests by size: 128K 3, 1M 1",
                "write requests by size: <=4K 1"
            ]
        );
        let off = RequestSizes::default();
        off.read(4096);
        assert_eq!(off.summary()[0], "read requests by size: none");
    }
}

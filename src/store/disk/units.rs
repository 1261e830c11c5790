//! Where byte ranges fall on data units: pure arithmetic on offsets and buffers, with
//! no files and no locks (like gocryptfs's contentenc). Snapshots will add their
//! extent map and copy-on-write here.
//!
//! A disk is a row of 4 KiB data units, each encrypted on its own. Plaintext offsets
//! equal backing-file offsets, so unit `n` holds bytes `[n * UNIT, (n + 1) * UNIT)`.
//! A unit whose stored bytes are all zero is a hole and reads as plaintext zeros.

use crate::crypto::DATA_UNIT;
use std::ops::Range;

pub const UNIT: u64 = DATA_UNIT as u64;

/// `x` rounded up to a whole unit. Past the last whole unit below 2^64 (far beyond
/// the 64 TiB limit) it saturates at `u64::MAX`.
pub fn round_up(x: u64) -> u64 {
    x.div_ceil(UNIT).saturating_mul(UNIT)
}

/// `x` rounded down to a whole unit.
pub fn round_down(x: u64) -> u64 {
    x / UNIT * UNIT
}

/// Units a disk of `size` bytes has (the last one may be partly past the size).
pub fn units_in(size: u64) -> u64 {
    size.div_ceil(UNIT)
}

/// Whether stored bytes are all zero: a hole, which holds no ciphertext.
pub fn is_zero(buf: &[u8]) -> bool {
    let (pre, mid, post) = unsafe {
        // Safe because: u128 has no invalid bit patterns and align_to only reinterprets
        // the aligned middle part of an initialized byte slice.
        buf.align_to::<u128>()
    };
    pre.iter().all(|&b| b == 0) && mid.iter().all(|&w| w == 0) && post.iter().all(|&b| b == 0)
}

/// How a non-empty byte range lies on units.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    /// First unit touched.
    pub first: u64,
    /// One past the last unit touched.
    pub last: u64,
    /// Offset of the range's start within the first unit.
    pub head: usize,
    /// Bytes in the range.
    pub len: u64,
}

impl Span {
    /// The units `[off, end)` touches; None if the range is empty.
    pub fn new(off: u64, end: u64) -> Option<Span> {
        (off < end).then(|| Span {
            first: off / UNIT,
            last: end.div_ceil(UNIT),
            head: (off % UNIT) as usize,
            len: end - off,
        })
    }

    pub fn units(&self) -> u64 {
        self.last - self.first
    }

    /// Byte offset of the first unit.
    pub fn start(&self) -> u64 {
        self.first * UNIT
    }

    /// Bytes of the whole units touched: the size of a buffer that holds them.
    pub fn unit_bytes(&self) -> usize {
        (self.units() * UNIT) as usize
    }

    /// Whether the first unit is only partly covered, so a write must read it first.
    pub fn partial_head(&self) -> bool {
        self.head != 0 || self.len < UNIT
    }

    /// Whether the last unit, when it is not the first, is only partly covered.
    pub fn partial_tail(&self) -> bool {
        // head + len is the range's end within its units, and no more than the end.
        self.units() > 1 && !(self.head as u64 + self.len).is_multiple_of(UNIT)
    }
}

/// How zeroing `[off, end)` of a disk of `size` bytes (`off < end <= size`) splits:
/// whole units to free, and a partial head and tail to overwrite with zeros. Each
/// range may be empty. Bytes past the size are undefined, so a range that reaches the
/// size frees its last unit whole.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Carve {
    pub head: Range<u64>,
    pub whole: Range<u64>,
    pub tail: Range<u64>,
}

pub fn carve(off: u64, end: u64, size: u64) -> Carve {
    let whole_start = round_up(off);
    let whole_end = if end == size {
        round_up(size)
    } else {
        round_down(end)
    };
    Carve {
        head: off..whole_start.min(end),
        whole: whole_start..whole_end,
        tail: whole_end.max(whole_start).max(off)..end,
    }
}

/// Splits `buf` (whole units; a short last one counts as a unit) into maximal runs of
/// data units (`true`) and holes (`false`), as byte ranges of `buf`, in order.
pub fn hole_runs(buf: &[u8]) -> Vec<(Range<usize>, bool)> {
    let mut runs: Vec<(Range<usize>, bool)> = Vec::new();
    for (i, unit) in buf.chunks(DATA_UNIT).enumerate() {
        let data = !is_zero(unit);
        let r = i * DATA_UNIT..i * DATA_UNIT + unit.len();
        match runs.last_mut() {
            Some((last, d)) if *d == data => last.end = r.end,
            _ => runs.push((r, data)),
        }
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MAX_DISK_SIZE;

    #[test]
    fn rounding() {
        assert_eq!(round_up(0), 0);
        assert_eq!(round_up(1), 4096);
        assert_eq!(round_up(4096), 4096);
        assert_eq!(round_up(4097), 8192);
        assert_eq!(round_down(4095), 0);
        assert_eq!(round_down(8191), 4096);
        assert_eq!((units_in(0), units_in(1), units_in(4096)), (0, 1, 1));
        assert_eq!(round_up(MAX_DISK_SIZE), MAX_DISK_SIZE);
        assert_eq!(round_up(MAX_DISK_SIZE - 1), MAX_DISK_SIZE);
        assert_eq!(units_in(MAX_DISK_SIZE), 1 << 34);
        // The last whole unit below 2^64, and past it saturation, never a wrap.
        assert_eq!(round_up(u64::MAX - 4095), u64::MAX - 4095);
        assert_eq!(round_up(u64::MAX - 4094), u64::MAX);
        assert_eq!(round_up(u64::MAX), u64::MAX);
        assert_eq!(round_down(u64::MAX), u64::MAX - 4095);
        assert_eq!(units_in(u64::MAX), 1 << 52);
    }

    #[test]
    fn zero_detection_at_any_alignment() {
        let mut b = vec![0u8; 4096 + 17];
        for start in 0..17 {
            assert!(is_zero(&b[start..start + 4096]));
        }
        assert!(is_zero(&[]));
        b[4095] = 1;
        assert!(!is_zero(&b[..4096]));
        assert!(!is_zero(&b[1..4096]));
        assert!(is_zero(&b[4096..]));
        b[4095] = 0;
        b[0] = 1;
        assert!(!is_zero(&b[..1]));
    }

    #[test]
    fn spans() {
        // Empty ranges touch nothing.
        assert_eq!(Span::new(0, 0), None);
        assert_eq!(Span::new(5000, 5000), None);
        assert_eq!(Span::new(5000, 10), None);
        // One whole unit.
        let s = Span::new(4096, 8192).unwrap();
        assert_eq!((s.first, s.last, s.head, s.len), (1, 2, 0, 4096));
        assert!(!s.partial_head() && !s.partial_tail());
        assert_eq!((s.start(), s.unit_bytes()), (4096, 4096));
        // Inside one unit: a partial head, and no separate tail.
        let s = Span::new(100, 200).unwrap();
        assert_eq!((s.first, s.last, s.head), (0, 1, 100));
        assert!(s.partial_head() && !s.partial_tail());
        // Aligned start, short of the unit's end: still a partial head.
        assert!(Span::new(0, 4095).unwrap().partial_head());
        // Unaligned head and tail across three units.
        let s = Span::new(4000, 8200).unwrap();
        assert_eq!((s.first, s.last, s.head, s.units()), (0, 3, 4000, 3));
        assert!(s.partial_head() && s.partial_tail());
        assert_eq!(s.unit_bytes(), 3 * 4096);
        // Aligned head, unaligned tail.
        let s = Span::new(8192, 8192 + 5000).unwrap();
        assert!(!s.partial_head() && s.partial_tail());
        // Unaligned head, aligned tail.
        let s = Span::new(10, 8192).unwrap();
        assert!(s.partial_head() && !s.partial_tail());
    }

    #[test]
    fn spans_at_the_limits() {
        // The last byte of a 64 TiB disk, and its last unit.
        let s = Span::new(MAX_DISK_SIZE - 1, MAX_DISK_SIZE).unwrap();
        assert_eq!((s.first, s.last, s.head), ((1 << 34) - 1, 1 << 34, 4095));
        assert_eq!(s.start(), MAX_DISK_SIZE - 4096);
        assert!(s.partial_head() && !s.partial_tail());
        let s = Span::new(MAX_DISK_SIZE - 4096, MAX_DISK_SIZE).unwrap();
        assert!(!s.partial_head() && !s.partial_tail());
        // The top of u64: nothing overflows.
        let s = Span::new(u64::MAX - 10, u64::MAX).unwrap();
        assert_eq!((s.first, s.last, s.units()), ((1 << 52) - 1, 1 << 52, 1));
        assert_eq!((s.start(), s.unit_bytes()), (u64::MAX - 4095, 4096));
        assert!(s.partial_head() && !s.partial_tail());
        let s = Span::new(u64::MAX - 5000, u64::MAX).unwrap();
        assert_eq!(s.units(), 2);
        assert!(s.partial_head() && s.partial_tail());
    }

    #[test]
    fn carving() {
        let size = 10 * 4096 + 100;
        // Inside one unit: all head.
        let c = carve(10, 20, size);
        assert_eq!(c.head, 10..20);
        assert!(c.whole.is_empty() && c.tail.is_empty());
        // Unaligned on both sides.
        let c = carve(100, 3 * 4096 + 7, size);
        assert_eq!(
            (c.head, c.whole, c.tail),
            (100..4096, 4096..3 * 4096, 3 * 4096..3 * 4096 + 7)
        );
        // Aligned on both sides: all whole.
        let c = carve(4096, 8192, size);
        assert!(c.head.is_empty() && c.tail.is_empty());
        assert_eq!(c.whole, 4096..8192);
        // Reaching the size frees the last, partial unit whole.
        let c = carve(10 * 4096, size, size);
        assert_eq!(c.whole, 10 * 4096..11 * 4096);
        assert!(c.head.is_empty() && c.tail.is_empty());
        let c = carve(5, size, size);
        assert_eq!((c.head, c.whole), (5..4096, 4096..11 * 4096));
        assert!(c.tail.is_empty());
        // Short of the size, the last partial unit is zeroed by writing.
        let c = carve(10 * 4096 + 1, size - 1, size);
        assert_eq!(c.head, 10 * 4096 + 1..size - 1);
        assert!(c.whole.is_empty() && c.tail.is_empty());
        // A 64 TiB disk, end to end.
        let c = carve(0, MAX_DISK_SIZE, MAX_DISK_SIZE);
        assert_eq!(c.whole, 0..MAX_DISK_SIZE);
        assert!(c.head.is_empty() && c.tail.is_empty());
    }

    #[test]
    fn runs_of_data_and_holes() {
        assert!(hole_runs(&[]).is_empty());
        let mut b = vec![0u8; 5 * 4096];
        assert_eq!(hole_runs(&b), vec![(0..5 * 4096, false)]);
        b[4096] = 1;
        b[2 * 4096 + 5] = 1;
        b[4 * 4096 + 4095] = 1;
        assert_eq!(
            hole_runs(&b),
            vec![
                (0..4096, false),
                (4096..3 * 4096, true),
                (3 * 4096..4 * 4096, false),
                (4 * 4096..5 * 4096, true),
            ]
        );
        // A short last unit is a unit of its own.
        assert_eq!(
            hole_runs(&b[..4096 + 10]),
            vec![(0..4096, false), (4096..4106, true)]
        );
    }
}

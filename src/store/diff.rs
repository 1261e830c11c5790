//! Changed ranges between two objects of one snapshot family (Azure's page-range
//! diff), answered from the deltas without keys.

use super::delta::{delta_path, read_whiteouts, scan_data, whiteout_path};
use super::disk::layered::{open_ro, From, Layered};
use super::disk::units::{units_in, UNIT};
use super::extents::RangeSet;
use super::*;
use serde_json::json;

/// Changed ranges between two objects of one family, in bytes, ends inclusive.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Units that hold data in the newer object and may differ.
    pub page_ranges: Vec<(u64, u64)>,
    /// Units that read as zeros in the newer object and may have held data.
    pub clear_ranges: Vec<(u64, u64)>,
}

impl Diff {
    /// At most `max` ranges (page and clear ranges together, in offset order) from
    /// byte `from` on, and where the next page starts, if anything is left: Azure's
    /// `maxresults` and continuation marker. A range that starts before `from` and
    /// ends after it is cut at `from`.
    pub fn page(&self, from: u64, max: usize) -> (Diff, Option<u64>) {
        let mut all: Vec<(u64, u64, bool)> = self
            .page_ranges
            .iter()
            .map(|&(s, e)| (s, e, true))
            .chain(self.clear_ranges.iter().map(|&(s, e)| (s, e, false)))
            .filter(|&(_, e, _)| e >= from)
            .map(|(s, e, p)| (s.max(from), e, p))
            .collect();
        all.sort_unstable();
        let next = all.get(max).map(|r| r.0);
        let mut out = Diff::default();
        for (s, e, p) in all.into_iter().take(max) {
            if p {
                out.page_ranges.push((s, e));
            } else {
                out.clear_ranges.push((s, e));
            }
        }
        (out, next)
    }

    pub fn to_json(&self) -> Value {
        let r = |v: &[(u64, u64)]| {
            v.iter()
                .map(|&(s, e)| json!({"start": s, "end": e}))
                .collect::<Vec<_>>()
        };
        json!({"pageRanges": r(&self.page_ranges), "clearRanges": r(&self.clear_ranges)})
    }
}

impl Store {
    /// The ranges where `new` may differ from `old` (both of one family: one shares
    /// deltas with the other). Answered from the deltas, without keys.
    pub fn diff(&self, old: &Disk, new: &Disk) -> Result<Diff> {
        let (a, b) = (old.stack(), new.stack());
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        if common == 0 || old.meta().dek_id() != new.meta().dek_id() {
            return Err(StoreError::Refused(format!(
                "{} '{}' and {} '{}' are not of one snapshot family (neither was made from the other's data); diff works between a disk and its snapshots, and between snapshots of one disk",
                old.kind, old.name(), new.kind, new.name()
            )));
        }
        if common == b.len() && a.len() > b.len() {
            return Err(StoreError::Refused(format!(
                "{} '{}' is older than {} '{}'; a diff goes from the older object to the newer: swap them",
                new.kind, new.name(), old.kind, old.name()
            )));
        }
        let io = |e| StoreError::io("diffing", e);
        let mut changed = RangeSet::new();
        for id in a[common..].iter().chain(&b[common..]) {
            let f = open_ro(&delta_path(&self.root, id)).map_err(io)?;
            changed = changed.union(&scan_data(&f).map_err(io)?);
            changed = changed.union(&read_whiteouts(&whiteout_path(&self.root, id)).map_err(io)?);
        }
        // Ranges lie within the newer object, as Azure's do within the target: a
        // shrunk one has no ranges past its end.
        let size = new.size();
        changed.remove(units_in(size)..u64::MAX);
        let view = Layered::build(&self.root, &b, None).map_err(io)?;
        let mut d = Diff::default();
        let clip = |r: std::ops::Range<u64>| (r.start * UNIT, (r.end * UNIT).min(size) - 1);
        for r in changed.iter() {
            for (piece, from) in view.resolve(r) {
                let v = if from == From::Zero {
                    &mut d.clear_ranges
                } else {
                    &mut d.page_ranges
                };
                v.push(clip(piece));
            }
        }
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cover_every_range_once_in_offset_order() {
        let d = Diff {
            page_ranges: vec![(0, 4095), (8192, 16383), (40960, 45055)],
            clear_ranges: vec![(4096, 8191), (20480, 24575)],
        };
        let mut from = 0;
        let mut seen = Vec::new();
        loop {
            let (p, next) = d.page(from, 2);
            assert!(p.page_ranges.len() + p.clear_ranges.len() <= 2);
            seen.extend(p.page_ranges.iter().map(|&r| (r, true)));
            seen.extend(p.clear_ranges.iter().map(|&r| (r, false)));
            match next {
                Some(n) => {
                    assert!(n > from, "no progress");
                    from = n
                }
                None => break,
            }
        }
        seen.sort();
        let mut want: Vec<_> = d.page_ranges.iter().map(|&r| (r, true)).collect();
        want.extend(d.clear_ranges.iter().map(|&r| (r, false)));
        want.sort();
        assert_eq!(seen, want);
        // A marker inside a range cuts it; past the end, nothing is left.
        let (p, next) = d.page(10000, 1);
        assert_eq!(p.page_ranges, vec![(10000, 16383)]);
        assert_eq!(next, Some(20480));
        let (p, next) = d.page(u64::MAX, 5);
        assert_eq!(p, Diff::default());
        assert_eq!(next, None);
        // Everything in one page: no marker.
        assert_eq!(d.page(0, 100_000), (d.clone(), None));
    }
}

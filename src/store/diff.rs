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
        let size = new.size().max(old.size());
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

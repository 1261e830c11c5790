//! Sets and maps of data-unit ranges: the in-memory index of layered disks. Pure data
//! structures with no files and no locks.
//!
//! Both keep disjoint ranges in a `BTreeMap` keyed by their start, so memory grows
//! with the number of runs, never with the disk's size: a 64 TiB disk with one
//! written run costs one entry (about 48 bytes with the map's overhead).

use std::collections::BTreeMap;
use std::ops::Range;

/// A set of unit numbers as disjoint, non-adjacent ranges.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    runs: BTreeMap<u64, u64>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_ranges(rs: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut s = Self::new();
        for r in rs {
            s.insert(r);
        }
        s
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs (the memory the set takes).
    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Units in the set.
    pub fn count(&self) -> u64 {
        self.runs.iter().map(|(s, e)| e - s).sum()
    }

    pub fn iter(&self) -> impl Iterator<Item = Range<u64>> + '_ {
        self.runs.iter().map(|(&s, &e)| s..e)
    }

    pub fn contains(&self, n: u64) -> bool {
        self.runs
            .range(..=n)
            .next_back()
            .is_some_and(|(_, &e)| n < e)
    }

    pub fn insert(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let (mut s, mut e) = (r.start, r.end);
        // Absorb a run that starts before and reaches `s`.
        if let Some((&ps, &pe)) = self.runs.range(..=s).next_back() {
            if pe >= s {
                s = ps;
                e = e.max(pe);
            }
        }
        // Absorb every run that starts inside [s, e].
        let inside: Vec<u64> = self.runs.range(s..=e).map(|(&k, _)| k).collect();
        for k in inside {
            let ke = self.runs.remove(&k).expect("key just listed");
            e = e.max(ke);
        }
        self.runs.insert(s, e);
    }

    pub fn remove(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let mut touched: Vec<(u64, u64)> = Vec::new();
        if let Some((&ps, &pe)) = self.runs.range(..r.start).next_back() {
            if pe > r.start {
                touched.push((ps, pe));
            }
        }
        touched.extend(self.runs.range(r.start..r.end).map(|(&s, &e)| (s, e)));
        for (s, e) in touched {
            self.runs.remove(&s);
            if s < r.start {
                self.runs.insert(s, r.start);
            }
            if e > r.end {
                self.runs.insert(r.end, e);
            }
        }
    }

    /// The parts of `r` in the set, in order.
    pub fn overlap(&self, r: Range<u64>) -> Vec<Range<u64>> {
        let mut out = Vec::new();
        if r.is_empty() {
            return out;
        }
        if let Some((_, &pe)) = self.runs.range(..r.start).next_back() {
            if pe > r.start {
                out.push(r.start..pe.min(r.end));
            }
        }
        for (&s, &e) in self.runs.range(r.start..r.end) {
            out.push(s..e.min(r.end));
        }
        out
    }

    pub fn union(&self, other: &RangeSet) -> RangeSet {
        let mut u = self.clone();
        for r in other.iter() {
            u.insert(r);
        }
        u
    }

    pub fn intersect(&self, other: &RangeSet) -> RangeSet {
        let mut out = RangeSet::new();
        for r in self.iter() {
            for o in other.overlap(r) {
                out.insert(o);
            }
        }
        out
    }

    /// `self` without `other`, in time that grows with `self`'s runs and what of
    /// `other` overlaps them (not with all of `other`).
    pub fn subtract(&self, other: &RangeSet) -> RangeSet {
        let mut d = RangeSet::new();
        for r in self.iter() {
            let mut pos = r.start;
            for o in other.overlap(r.clone()) {
                if o.start > pos {
                    d.runs.insert(pos, o.start);
                }
                pos = o.end;
            }
            if pos < r.end {
                d.runs.insert(pos, r.end);
            }
        }
        d
    }

    /// Adds every run of `other`.
    pub fn add(&mut self, other: &RangeSet) {
        for r in other.iter() {
            self.insert(r);
        }
    }
}

/// A map from unit ranges to values, later assignments overwriting earlier ones.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtentMap<V: Copy + Eq> {
    runs: BTreeMap<u64, (u64, V)>,
}

impl<V: Copy + Eq> ExtentMap<V> {
    pub fn new() -> Self {
        ExtentMap {
            runs: BTreeMap::new(),
        }
    }

    pub fn runs(&self) -> usize {
        self.runs.len()
    }

    /// Maps every unit of `r` to `v`.
    pub fn assign(&mut self, r: Range<u64>, v: V) {
        if r.is_empty() {
            return;
        }
        self.clear(r.clone());
        let (mut s, mut e) = (r.start, r.end);
        // Merge with equal neighbours so runs stay maximal.
        if let Some((&ps, &(pe, pv))) = self.runs.range(..s).next_back() {
            if pe == s && pv == v {
                self.runs.remove(&ps);
                s = ps;
            }
        }
        if let Some(&(ne, nv)) = self.runs.get(&e) {
            if nv == v {
                self.runs.remove(&e);
                e = ne;
            }
        }
        self.runs.insert(s, (e, v));
    }

    /// Unmaps every unit of `r`.
    pub fn clear(&mut self, r: Range<u64>) {
        if r.is_empty() {
            return;
        }
        let mut touched: Vec<(u64, u64, V)> = Vec::new();
        if let Some((&ps, &(pe, pv))) = self.runs.range(..r.start).next_back() {
            if pe > r.start {
                touched.push((ps, pe, pv));
            }
        }
        touched.extend(
            self.runs
                .range(r.start..r.end)
                .map(|(&s, &(e, v))| (s, e, v)),
        );
        for (s, e, v) in touched {
            self.runs.remove(&s);
            if s < r.start {
                self.runs.insert(s, (r.start, v));
            }
            if e > r.end {
                self.runs.insert(r.end, (e, v));
            }
        }
    }

    #[cfg(test)]
    pub fn get(&self, n: u64) -> Option<V> {
        self.runs
            .range(..=n)
            .next_back()
            .filter(|(_, &(e, _))| n < e)
            .map(|(_, &(_, v))| v)
    }

    /// `r` cut into maximal pieces by value, `None` where unmapped; covers all of `r`.
    pub fn segments(&self, r: Range<u64>) -> Vec<(Range<u64>, Option<V>)> {
        let mut out = Vec::new();
        let mut pos = r.start;
        let push = |out: &mut Vec<(Range<u64>, Option<V>)>, s: u64, e: u64, v| {
            if s < e {
                out.push((s..e, v));
            }
        };
        let first = self
            .runs
            .range(..r.start)
            .next_back()
            .filter(|(_, &(e, _))| e > r.start)
            .map(|(&s, &(e, v))| (s, e, v));
        for (s, e, v) in first.into_iter().chain(
            self.runs
                .range(r.start..r.end)
                .map(|(&s, &(e, v))| (s, e, v)),
        ) {
            let s = s.max(r.start);
            push(&mut out, pos, s, None);
            let e = e.min(r.end);
            push(&mut out, s, e, Some(v));
            pos = e;
        }
        push(&mut out, pos, r.end, None);
        out
    }

    #[cfg(test)]
    pub fn iter(&self) -> impl Iterator<Item = (Range<u64>, V)> + '_ {
        self.runs.iter().map(|(&s, &(e, v))| (s..e, v))
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)]
mod tests {
    use super::*;

    /// A seeded xorshift, so the model tests are reproducible.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn range_set_merges_splits_and_answers() {
        let mut s = RangeSet::new();
        s.insert(10..20);
        s.insert(20..30); // adjacent: merged
        s.insert(40..50);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..30, 40..50]);
        s.insert(25..45); // bridges both
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..50]);
        s.remove(15..17);
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![10..15, 17..50]);
        assert!(s.contains(10) && !s.contains(15) && s.contains(17) && !s.contains(50));
        assert_eq!(s.overlap(0..12), vec![10..12]);
        assert_eq!(s.overlap(14..18), vec![14..15, 17..18]);
        assert_eq!(s.count(), 5 + 33);
        // The top of the unit space (64 TiB has 2^34 units).
        let top = 1u64 << 34;
        s.insert(top - 1..top);
        assert!(s.contains(top - 1) && !s.contains(top));
    }

    #[test]
    fn range_set_matches_a_bitmap_model() {
        for seed in 1..40u64 {
            let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
            let mut s = RangeSet::new();
            let mut model = [false; 200];
            for _ in 0..60 {
                let a = rng.below(200);
                let b = (a + rng.below(30)).min(200);
                let add = rng.below(2) == 0;
                if add {
                    s.insert(a..b);
                } else {
                    s.remove(a..b);
                }
                model[a as usize..b as usize].fill(add);
                for (n, &m) in model.iter().enumerate() {
                    assert_eq!(s.contains(n as u64), m, "seed {seed} unit {n}");
                }
                // Runs stay maximal: no two touch.
                let runs: Vec<_> = s.iter().collect();
                assert!(runs.windows(2).all(|w| w[0].end < w[1].start));
            }
            let other = RangeSet::from_ranges([5..50, 120..190]);
            let (u, d, i) = (s.union(&other), s.subtract(&other), s.intersect(&other));
            for n in 0..200u64 {
                let (a, b) = (s.contains(n), other.contains(n));
                assert_eq!(u.contains(n), a || b);
                assert_eq!(d.contains(n), a && !b);
                assert_eq!(i.contains(n), a && b);
            }
        }
    }

    #[test]
    fn extent_map_matches_an_array_model() {
        for seed in 1..40u64 {
            let mut rng = Rng(seed * 0x2545_f491_4f6c_dd1d);
            let mut m: ExtentMap<u8> = ExtentMap::new();
            let mut model: Vec<Option<u8>> = vec![None; 150];
            for _ in 0..80 {
                let a = rng.below(150);
                let b = (a + rng.below(25)).min(150);
                let v = rng.below(4) as u8;
                if v == 3 {
                    m.clear(a..b);
                    model[a as usize..b as usize].fill(None);
                } else {
                    m.assign(a..b, v);
                    model[a as usize..b as usize].fill(Some(v));
                }
                for (n, &want) in model.iter().enumerate() {
                    assert_eq!(m.get(n as u64), want, "seed {seed} unit {n}");
                }
                let segs = m.segments(0..150);
                let mut pos = 0;
                for (r, v) in &segs {
                    assert_eq!(r.start, pos);
                    for n in r.clone() {
                        assert_eq!(model[n as usize], *v);
                    }
                    pos = r.end;
                }
                assert_eq!(pos, 150);
                // Adjacent runs with equal values are merged.
                let runs: Vec<_> = m.iter().collect();
                assert!(runs
                    .windows(2)
                    .all(|w| w[0].0.end < w[1].0.start || w[0].1 != w[1].1));
            }
        }
    }

    #[test]
    fn segments_of_an_inner_range() {
        let mut m = ExtentMap::new();
        m.assign(0..10, 'a');
        m.assign(20..30, 'b');
        assert_eq!(
            m.segments(5..25),
            vec![(5..10, Some('a')), (10..20, None), (20..25, Some('b'))]
        );
        assert_eq!(m.segments(12..14), vec![(12..14, None)]);
        assert!(m.segments(3..3).is_empty());
    }
}

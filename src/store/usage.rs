//! Space accounting (`usedBytes`): what each object would free if deleted, and what
//! it shares. Computed only when asked (show, list, status), one snapshot family at a
//! time: a family is the objects whose stacks share a bottom delta, and its deltas
//! form a tree (each delta's parent is the one below it in every stack that holds it).

use super::delta::{delta_path, read_whiteouts, scan_data, whiteout_path};
use super::disk::layered::open_ro;
use super::disk::units::UNIT;
use super::extents::RangeSet;
use super::*;
use std::collections::{HashMap, HashSet};

/// Bytes an object's deltas take: those only it uses, and those it shares.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub unique: u64,
    pub shared: u64,
}

/// Data extents and whiteouts of deltas that no longer change (no disk's top), for
/// space accounting; pruned to the deltas in use.
#[derive(Default)]
pub(super) struct DeltaSetCache(Mutex<HashMap<String, Arc<(RangeSet, RangeSet)>>>);

type Sets = Arc<(RangeSet, RangeSet)>;
/// Objects with their stacks.
type Stacks = Vec<(Arc<Disk>, Vec<String>)>;

impl DeltaSetCache {
    /// Drops a delta's cached extents (a merge changed or removed it).
    pub(super) fn forget(&self, id: &str) {
        self.0.lock().remove(id);
    }
}

impl Store {
    /// Bytes used by `obj`: only its own family is counted.
    pub fn usage(&self, obj: &Disk) -> Usage {
        let Some(root) = obj.stack().first().cloned() else {
            return Usage {
                unique: obj.allocated_bytes(),
                shared: 0,
            };
        };
        let family: Vec<(Arc<Disk>, Vec<String>)> = self
            .served()
            .into_iter()
            .map(|o| {
                let s = o.stack();
                (o, s)
            })
            .filter(|(_, s)| s.first() == Some(&root))
            .collect();
        self.family_usage(&family)
            .remove(&obj.id)
            .unwrap_or_default()
    }

    /// Bytes used by every object, by id: `unique` is what deleting it would free
    /// (deltas only it uses, and units of shared ones no other object reads),
    /// `shared` the units it reads that others read too. Counted from the file
    /// systems' extents, family by family (frozen deltas' extents are cached).
    pub fn usage_all(&self) -> HashMap<String, Usage> {
        let mut out = HashMap::new();
        let mut families: HashMap<String, Stacks> = HashMap::new();
        for o in self.served() {
            let stack = o.stack();
            match stack.first().cloned() {
                None => {
                    let u = Usage {
                        unique: o.allocated_bytes(),
                        shared: 0,
                    };
                    out.insert(o.id.clone(), u);
                }
                Some(root) => families.entry(root).or_default().push((o, stack)),
            }
        }
        let mut used = HashSet::new();
        for fam in families.values() {
            used.extend(fam.iter().flat_map(|(_, s)| s.iter().cloned()));
            out.extend(self.family_usage(fam));
        }
        // Keep only what is still in use.
        self.delta_sets.0.lock().retain(|id, _| used.contains(id));
        out
    }

    /// Usage of the objects of one family. For each delta with data, the tree below it
    /// is walked once, narrowing what each node still sees through the deltas above;
    /// a branch stops where nothing is left to see.
    fn family_usage(&self, fam: &[(Arc<Disk>, Vec<String>)]) -> HashMap<String, Usage> {
        let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut at: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut tops = HashSet::new();
        let mut below: HashMap<&str, usize> = HashMap::new();
        let mut owner: HashMap<&str, usize> = HashMap::new();
        for (i, (o, stack)) in fam.iter().enumerate() {
            for w in stack.windows(2) {
                let c = children.entry(&w[0]).or_default();
                if !c.contains(&w[1].as_str()) {
                    c.push(&w[1]);
                }
            }
            if let Some(top) = stack.last() {
                at.entry(top).or_default().push(i);
                if !o.kind.read_only() {
                    tops.insert(top.as_str());
                }
            }
            for d in stack {
                *below.entry(d).or_default() += 1;
                owner.insert(d, i);
            }
        }
        let mut fresh = HashMap::new();
        let mut out: HashMap<String, Usage> = fam
            .iter()
            .map(|(o, _)| (o.id.clone(), Usage::default()))
            .collect();
        for (&d, &users) in &below {
            if users == 1 {
                // Read by one object only: all its space is that object's.
                let blocks = fs::metadata(delta_path(&self.root, d))
                    .map(|m| m.blocks() * 512)
                    .unwrap_or(0);
                out.entry(fam[owner[d]].0.id.clone()).or_default().unique += blocks;
                continue;
            }
            let Some(sets) = self.sets_of(d, tops.contains(d), &mut fresh) else {
                continue;
            };
            if sets.0.is_empty() {
                continue;
            }
            // What each object sees of `d`, walking down from `d`.
            let mut seen: Vec<(usize, RangeSet)> = Vec::new();
            let mut walk = vec![(d, sets.0.clone())];
            while let Some((node, left)) = walk.pop() {
                for &i in at.get(node).into_iter().flatten() {
                    seen.push((i, left.clone()));
                }
                for &c in children.get(node).into_iter().flatten() {
                    let Some(cs) = self.sets_of(c, tops.contains(c), &mut fresh) else {
                        continue;
                    };
                    let l = left.subtract(&cs.0).subtract(&cs.1);
                    if !l.is_empty() {
                        walk.push((c, l));
                    }
                }
            }
            // Units seen once, and seen at least twice.
            let mut once = RangeSet::new();
            let mut twice = RangeSet::new();
            for (_, s) in &seen {
                twice.add(&once.intersect(s));
                once.add(s);
            }
            for (i, s) in &seen {
                let u = out.entry(fam[*i].0.id.clone()).or_default();
                u.unique += s.subtract(&twice).count() * UNIT;
                u.shared += s.intersect(&twice).count() * UNIT;
            }
        }
        out
    }

    /// A delta's extents and whiteouts: cached once it can't change any more.
    fn sets_of(&self, id: &str, is_top: bool, fresh: &mut HashMap<String, Sets>) -> Option<Sets> {
        if let Some(s) = fresh.get(id) {
            return Some(s.clone());
        }
        if !is_top {
            if let Some(s) = self.delta_sets.0.lock().get(id) {
                return Some(s.clone());
            }
        }
        let f = open_ro(&delta_path(&self.root, id)).ok()?;
        let sets = Arc::new((
            scan_data(&f).ok()?,
            read_whiteouts(&whiteout_path(&self.root, id)).ok()?,
        ));
        if !is_top {
            self.delta_sets
                .0
                .lock()
                .insert(id.to_string(), sets.clone());
        }
        fresh.insert(id.to_string(), sets.clone());
        Some(sets)
    }
}

//! Retired lease ids: the leases the indexer archived, whose closed escrows have left the
//! ledger's state and for which no escrow may be opened again (docs/ledger.md, "Retired
//! leases").
//!
//! The ids are kept as inclusive ranges, merged whenever two touch, so the set costs one
//! entry per gap of ids not yet retired (leases still live), not one per lease ever
//! retired.

use std::collections::BTreeMap;

use gpumesh_types::{Amount, LeaseId, LeaseRange};
use serde::{Deserialize, Serialize};

/// The most lease ids one `RetireLeases` transaction may name: the ledger visits each.
pub const MAX_RETIRED_PER_TX: u64 = 10_000;

/// Why a set of ranges cannot be retired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RangesError {
    /// A transaction that retires nothing.
    #[error("no ranges to retire")]
    Empty,
    #[error("the range from lease {0} ends before it starts")]
    Backwards(LeaseId),
    #[error("the range from lease {0} is out of order or overlaps the one before it")]
    Unsorted(LeaseId),
    /// More ids than the ledger visits in one transaction.
    #[error("more than {MAX_RETIRED_PER_TX} lease ids in one transaction")]
    TooMany,
    #[error("lease {0} is retired already")]
    Retired(LeaseId),
}

/// The retired ids, and what the escrows that left with them had settled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retired {
    /// First id → last id, inclusive; disjoint, and never adjacent (touching ranges merge).
    ranges: BTreeMap<u64, u64>,
    /// GPU-milliseconds the retired escrows settled.
    pub(crate) gpu_ms: u64,
    /// The treasury's fees out of that usage.
    pub(crate) fees: Amount,
}

impl Retired {
    pub fn contains(&self, id: LeaseId) -> bool {
        self.range_of(id.0).is_some()
    }

    /// The range that holds `id`, as (first, last).
    fn range_of(&self, id: u64) -> Option<(u64, u64)> {
        let (&first, &last) = self.ranges.range(..=id).next_back()?;
        (last >= id).then_some((first, last))
    }

    /// How many ranges the set holds.
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }

    /// The ranges, lowest first, as (first, last).
    pub fn ranges(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.ranges.iter().map(|(&f, &l)| (f, l))
    }

    /// The last id of the range starting at `first`, if one does.
    pub(crate) fn range_from(&self, first: u64) -> Option<u64> {
        self.ranges.get(&first).copied()
    }

    /// Whether anything was ever retired.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Checks that `ranges` may be retired: some, each forwards, in order and apart from one
    /// another, at most [`MAX_RETIRED_PER_TX`] ids in all, none retired already.
    pub fn check(&self, ranges: &[LeaseRange]) -> Result<(), RangesError> {
        if ranges.is_empty() {
            return Err(RangesError::Empty);
        }
        let mut ids: u64 = 0;
        let mut after: Option<LeaseId> = None;
        for r in ranges {
            if r.is_empty() {
                return Err(RangesError::Backwards(r.first));
            }
            if after.is_some_and(|a| r.first <= a) {
                return Err(RangesError::Unsorted(r.first));
            }
            after = Some(r.last);
            ids = ids.saturating_add(r.len());
            if ids > MAX_RETIRED_PER_TX {
                return Err(RangesError::TooMany);
            }
            // The nearest range at or before `last` is the only one that can overlap.
            if let Some((&f, &l)) = self.ranges.range(..=r.last.0).next_back()
                && l >= r.first.0
            {
                return Err(RangesError::Retired(LeaseId(f.max(r.first.0))));
            }
        }
        Ok(())
    }

    /// The ids from `from` up to `until` (excluded) that are not retired, as ranges.
    pub fn gaps(&self, from: u64, until: u64) -> Vec<LeaseRange> {
        let mut out = Vec::new();
        let mut next = from;
        for (&first, &last) in self.ranges.range(..until) {
            if last < next {
                continue;
            }
            if first > next {
                out.push(range(next, first - 1));
            }
            next = last.saturating_add(1);
            if last == u64::MAX {
                return out;
            }
        }
        if next < until {
            out.push(range(next, until - 1));
        }
        out
    }

    /// Adds a checked range, merging it with the ranges it touches. Returns the first ids
    /// of the ranges that changed or went (their leaves change), the merged one's last.
    pub(crate) fn insert(&mut self, first: u64, last: u64) -> Vec<u64> {
        let mut touched = Vec::with_capacity(3);
        let (mut lo, mut hi) = (first, last);
        if let Some(before) = first.checked_sub(1)
            && let Some((f, _)) = self.range_of(before)
        {
            self.ranges.remove(&f);
            touched.push(f);
            lo = f;
        }
        if let Some(after) = last.checked_add(1)
            && let Some(l) = self.ranges.remove(&after)
        {
            touched.push(after);
            hi = l;
        }
        self.ranges.insert(lo, hi);
        touched.push(lo);
        touched
    }
}

fn range(first: u64, last: u64) -> LeaseRange {
    LeaseRange {
        first: LeaseId(first),
        last: LeaseId(last),
    }
}

/// Lease ids as sorted ranges of consecutive ids, as `RetireLeases` names them.
pub fn ranges_of(mut ids: Vec<LeaseId>) -> Vec<LeaseRange> {
    ids.sort_unstable();
    ids.dedup();
    let mut out: Vec<LeaseRange> = Vec::new();
    for id in ids {
        match out.last_mut() {
            Some(r) if r.last.0.checked_add(1) == Some(id.0) => r.last = id,
            _ => out.push(range(id.0, id.0)),
        }
    }
    out
}

/// Sorted, disjoint ranges cut into transactions of at most [`MAX_RETIRED_PER_TX`] ids
/// each, a range that does not fit split where the transaction fills.
pub fn into_transactions(ranges: Vec<LeaseRange>) -> Vec<Vec<LeaseRange>> {
    let mut txs: Vec<Vec<LeaseRange>> = Vec::new();
    let mut room = 0;
    for mut r in ranges {
        while !r.is_empty() {
            if room == 0 {
                txs.push(Vec::new());
                room = MAX_RETIRED_PER_TX;
            }
            let tx = txs.last_mut().expect("one was just pushed");
            if r.len() <= room {
                room -= r.len();
                tx.push(r);
                break;
            }
            let cut = r.first.0 + room - 1;
            tx.push(range(r.first.0, cut));
            r.first = LeaseId(cut + 1);
            room = 0;
        }
    }
    txs
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(first: u64, last: u64) -> LeaseRange {
        range(first, last)
    }

    #[test]
    fn bad_ranges_are_refused() {
        let mut set = Retired::default();
        assert_eq!(set.check(&[]), Err(RangesError::Empty));
        assert_eq!(
            set.check(&[r(5, 4)]),
            Err(RangesError::Backwards(LeaseId(5)))
        );
        assert_eq!(
            set.check(&[r(5, 9), r(9, 12)]),
            Err(RangesError::Unsorted(LeaseId(9)))
        );
        assert_eq!(
            set.check(&[r(20, 30), r(1, 2)]),
            Err(RangesError::Unsorted(LeaseId(1)))
        );
        assert_eq!(
            set.check(&[r(0, MAX_RETIRED_PER_TX)]),
            Err(RangesError::TooMany)
        );
        assert_eq!(set.check(&[r(0, u64::MAX)]), Err(RangesError::TooMany));
        set.check(&[r(1, MAX_RETIRED_PER_TX)]).unwrap();
        set.insert(10, 20);
        assert_eq!(
            set.check(&[r(15, 15)]),
            Err(RangesError::Retired(LeaseId(15)))
        );
        assert_eq!(
            set.check(&[r(1, 10)]),
            Err(RangesError::Retired(LeaseId(10)))
        );
        assert_eq!(
            set.check(&[r(20, 25)]),
            Err(RangesError::Retired(LeaseId(20)))
        );
        assert_eq!(
            set.check(&[r(1, 30)]),
            Err(RangesError::Retired(LeaseId(10)))
        );
        set.check(&[r(1, 9), r(21, 30)]).unwrap();
    }

    #[test]
    fn touching_ranges_merge_into_one() {
        let mut set = Retired::default();
        assert_eq!(set.insert(10, 20), vec![10]);
        assert_eq!(set.insert(30, 40), vec![30]);
        // Fills the gap between them: the three become one, starting at 10.
        assert_eq!(set.insert(21, 29), vec![10, 30, 10]);
        assert_eq!(set.ranges().collect::<Vec<_>>(), vec![(10, 40)]);
        assert_eq!(set.insert(0, 8), vec![0]);
        assert_eq!(set.insert(u64::MAX, u64::MAX), vec![u64::MAX]);
        assert_eq!(
            set.ranges().collect::<Vec<_>>(),
            vec![(0, 8), (10, 40), (u64::MAX, u64::MAX)]
        );
        assert!(set.contains(LeaseId(8)) && set.contains(LeaseId(40)));
        assert!(!set.contains(LeaseId(9)) && !set.contains(LeaseId(41)));
    }

    proptest! {
        /// Ids retired in any order, in any runs: the set holds exactly them, in as few
        /// ranges as they allow, and refuses every one of them a second time.
        #[test]
        fn the_set_is_exactly_the_retired_ids_in_fewest_ranges(
            ids in proptest::collection::btree_set(0u64..300, 0..200),
            order in any::<u64>(),
        ) {
            let mut ids: Vec<u64> = ids.into_iter().collect();
            // A fixed shuffle by the seed: ids are retired in no particular order.
            ids.sort_by_key(|&i| (i ^ order).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let mut set = Retired::default();
            for &id in &ids {
                let range = [r(id, id)];
                prop_assert_eq!(set.check(&range), Ok(()));
                set.insert(id, id);
                prop_assert!(set.check(&range).is_err());
            }
            for id in 0..300 {
                prop_assert_eq!(set.contains(LeaseId(id)), ids.contains(&id));
            }
            let mut sorted = ids.clone();
            sorted.sort_unstable();
            let runs = sorted.windows(2).filter(|w| w[1] != w[0] + 1).count()
                + usize::from(!sorted.is_empty());
            prop_assert_eq!(set.range_count(), runs);
        }
    }

    proptest! {
        /// Ids cut into transactions: each transaction passes the ledger's check, and
        /// together they name exactly the ids, each once, in order.
        #[test]
        fn transactions_cover_exactly_the_ids_and_each_passes_the_check(
            runs in proptest::collection::vec((1u64..30_000, 0u64..40), 0..12),
        ) {
            let mut ids = Vec::new();
            let mut next = 0u64;
            for (len, gap) in runs {
                ids.extend((next..next + len).map(LeaseId));
                next += len + gap;
            }
            let txs = into_transactions(ranges_of(ids.clone()));
            let empty = Retired::default();
            let mut named = Vec::new();
            for tx in &txs {
                prop_assert_eq!(empty.check(tx), Ok(()));
                named.extend(tx.iter().flat_map(|r| (r.first.0..=r.last.0).map(LeaseId)));
            }
            prop_assert_eq!(named, ids);
        }

        /// The gaps between retired ranges are exactly the ids not retired.
        #[test]
        fn gaps_are_the_ids_not_retired(
            ids in proptest::collection::btree_set(0u64..200, 0..150),
            from in 0u64..50,
            until in 150u64..250,
        ) {
            let mut set = Retired::default();
            for r in ranges_of(ids.iter().copied().map(LeaseId).collect()) {
                set.insert(r.first.0, r.last.0);
            }
            let gaps: Vec<u64> = (set.gaps(from, until).iter())
                .flat_map(|r| r.first.0..=r.last.0)
                .collect();
            let expected: Vec<u64> = (from..until).filter(|i| !ids.contains(i)).collect();
            prop_assert_eq!(gaps, expected);
        }
    }
}

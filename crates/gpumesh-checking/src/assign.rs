//! Verifiable assignment: who checks which container in a period.
//!
//! Rendezvous (highest-random-weight) hashing over the period's eligible checkers. The
//! seed is derived from a sealed ledger block, so anyone holding the chain and the list of
//! containers recomputes every assignment, and nobody picks their own checkers.
//!
//! At network scale (hundreds of thousands of containers, tens of thousands of checkers)
//! scoring every checker for every container is too much work a minute, so checkers are
//! first dealt into groups of at least [`MIN_GROUP`] by the hash of (seed, checker), and a
//! container is ranked only against the checkers of its own group (chosen by the hash of
//! (seed, container)). With fewer than `2 × MIN_GROUP` checkers there is one group and the
//! ranking is plain rendezvous hashing. Each key is hashed with keccak256 once a period;
//! a score is a 64-bit mix of the two keys' hashes, so ranking a container costs one
//! keccak and a few nanoseconds per checker of its group.

use alloy_primitives::{Address, B256, keccak256};
use gpumesh_types::ContainerRef;

/// The smallest group of checkers a container is ranked in.
pub const MIN_GROUP: usize = 32;

/// The seed of a period's assignment: keccak256 of a domain, the period and the hash of
/// the ledger block it is drawn from.
pub fn period_seed(period: u64, block_hash: &B256) -> B256 {
    let mut m = b"gpumesh-assignment-v1".to_vec();
    m.extend_from_slice(&period.to_be_bytes());
    m.extend_from_slice(block_hash.as_slice());
    keccak256(m)
}

fn word(h: &B256) -> u64 {
    u64::from_be_bytes(h.0[..8].try_into().expect("8 bytes"))
}

/// The 64-bit key of a checker in a period.
pub fn checker_key(seed: &B256, checker: &Address) -> u64 {
    let mut m = [0u8; 53];
    m[0] = b'k';
    m[1..33].copy_from_slice(seed.as_slice());
    m[33..].copy_from_slice(checker.as_slice());
    word(&keccak256(m))
}

/// The 64-bit key of a container in a period.
pub fn container_key(seed: &B256, container: &ContainerRef) -> u64 {
    let mut m = [0u8; 55];
    m[0] = b'c';
    m[1..33].copy_from_slice(seed.as_slice());
    m[33..53].copy_from_slice(container.host.as_slice());
    m[53..].copy_from_slice(&container.index.to_be_bytes());
    word(&keccak256(m))
}

/// A checker's score for a container: the SplitMix64 finaliser of both keys.
pub fn score(container_key: u64, checker_key: u64) -> u64 {
    let mut z = container_key ^ checker_key.rotate_left(29);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The checkers of one period, keyed and grouped, ready to rank containers.
#[derive(Clone, Debug)]
pub struct Draw {
    pub seed: B256,
    /// Eligible checkers, ascending.
    pub checkers: Vec<Address>,
    keys: Vec<u64>,
    /// Indices into `checkers`, per group.
    groups: Vec<Vec<u32>>,
}

impl Draw {
    /// Keys and groups the eligible checkers (any order; duplicates are dropped).
    pub fn new(seed: B256, mut checkers: Vec<Address>) -> Draw {
        checkers.sort_unstable();
        checkers.dedup();
        let keys: Vec<u64> = checkers.iter().map(|c| checker_key(&seed, c)).collect();
        let count = (checkers.len() / MIN_GROUP).max(1);
        let mut groups = vec![Vec::new(); count];
        for (i, k) in keys.iter().enumerate() {
            groups[(k % count as u64) as usize].push(i as u32);
        }
        // A group can come out empty by chance; containers of it use the whole set.
        Draw {
            seed,
            checkers,
            keys,
            groups,
        }
    }

    /// The best `depth` checkers for a container, best first, as indices into `checkers`.
    /// Ties (equal scores) go to the lower address.
    pub fn rank(&self, container: &ContainerRef, depth: usize) -> Vec<u32> {
        if self.checkers.is_empty() {
            return Vec::new();
        }
        let ck = container_key(&self.seed, container);
        let group = &self.groups[(ck % self.groups.len() as u64) as usize];
        let all: Vec<u32>;
        let candidates: &[u32] = if group.is_empty() {
            all = (0..self.checkers.len() as u32).collect();
            &all
        } else {
            group
        };
        let mut scored: Vec<(u64, u32)> = candidates
            .iter()
            .map(|&i| (score(ck, self.keys[i as usize]), i))
            .collect();
        let depth = depth.min(scored.len());
        let by_rank = |a: &(u64, u32), b: &(u64, u32)| b.0.cmp(&a.0).then(a.1.cmp(&b.1));
        if depth < scored.len() {
            scored.select_nth_unstable_by(depth, by_rank);
            scored.truncate(depth);
        }
        scored.sort_unstable_by(by_rank);
        scored.into_iter().map(|(_, i)| i).collect()
    }

    /// [`Draw::rank`] as addresses.
    pub fn rank_addresses(&self, container: &ContainerRef, depth: usize) -> Vec<Address> {
        self.rank(container, depth)
            .into_iter()
            .map(|i| self.checkers[i as usize])
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn addr(i: u64) -> Address {
        Address::from_word(keccak256(i.to_be_bytes()))
    }

    fn container(i: u64) -> ContainerRef {
        ContainerRef {
            host: addr(1_000_000 + i / 8),
            index: (i % 8) as u16,
        }
    }

    /// The plain definition: score every checker, sort, take the best.
    fn naive(seed: B256, checkers: &[Address], c: &ContainerRef, depth: usize) -> Vec<Address> {
        let ck = container_key(&seed, c);
        let mut v: Vec<(u64, Address)> = checkers
            .iter()
            .map(|a| (score(ck, checker_key(&seed, a)), *a))
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
        v.dedup_by_key(|x| x.1);
        v.into_iter().take(depth).map(|x| x.1).collect()
    }

    proptest! {
        /// With one group, the ranking is exactly the plain rendezvous definition, and it
        /// does not depend on the order checkers were listed in.
        #[test]
        fn small_sets_rank_by_plain_rendezvous(n in 1usize..40, seed in any::<[u8; 32]>(), depth in 1usize..8) {
            let seed = B256::from(seed);
            let checkers: Vec<Address> = (0..n as u64).map(addr).collect();
            let mut reversed = checkers.clone();
            reversed.reverse();
            let a = Draw::new(seed, checkers.clone());
            let b = Draw::new(seed, reversed);
            for i in 0..20 {
                let c = container(i);
                let want = naive(seed, &checkers, &c, depth);
                prop_assert_eq!(a.rank_addresses(&c, depth), want.clone());
                prop_assert_eq!(b.rank_addresses(&c, depth), want);
            }
        }

        /// Ranks are distinct checkers, as many as asked for (or as there are).
        #[test]
        fn ranks_are_distinct(n in 1usize..200, seed in any::<[u8; 32]>()) {
            let d = Draw::new(B256::from(seed), (0..n as u64).map(addr).collect());
            for i in 0..10 {
                let r = d.rank(&container(i), 6);
                let mut s = r.clone();
                s.sort_unstable();
                s.dedup();
                prop_assert_eq!(s.len(), r.len());
                prop_assert!(r.len() == 6.min(n) || r.len() >= 6.min(MIN_GROUP));
            }
        }
    }

    #[test]
    fn another_seed_gives_another_assignment_and_load_is_spread() {
        let checkers: Vec<Address> = (0..9).map(addr).collect();
        let a = Draw::new(period_seed(1, &B256::ZERO), checkers.clone());
        let b = Draw::new(period_seed(2, &B256::ZERO), checkers.clone());
        let mut differ = 0;
        let mut load = [0u32; 9];
        for i in 0..900 {
            let c = container(i);
            let ra = a.rank(&c, 3);
            if ra != b.rank(&c, 3) {
                differ += 1;
            }
            for &k in &ra {
                load[k as usize] += 1;
            }
        }
        assert!(
            differ > 800,
            "only {differ} of 900 assignments changed with the seed"
        );
        // 2700 tasks over 9 checkers: 300 each on average.
        assert!(load.iter().all(|&l| (200..400).contains(&l)), "{load:?}");
    }
}

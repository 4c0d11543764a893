//! The state root: every state entry is a leaf; leaves fall into 2^16 buckets by the first
//! two bytes of their key id (`Key::id`); a bucket's hash covers its (id, leaf) pairs in id
//! order; the root is a binary
//! Merkle tree over the buckets (two empty children make an empty parent). Updating an
//! entry rehashes its bucket and the bucket's path at the next `root`, so a block's root
//! costs what the block changed, not the size of the state.

use alloy_primitives::{B256, keccak256};

use crate::par;

const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;

#[derive(Clone, Debug)]
pub(crate) struct Commitment {
    /// Per bucket: (key id, leaf hash), sorted by key id.
    buckets: Vec<Vec<(B256, B256)>>,
    /// The tree a level at a time: `levels[d]` holds the 2^d nodes at depth d, so the root
    /// is `levels[0][0]` and the bucket hashes are `levels[BUCKET_BITS]`. The children of
    /// node j at depth d are nodes 2j and 2j+1 at depth d+1.
    levels: Vec<Vec<B256>>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
}

impl Default for Commitment {
    fn default() -> Self {
        Commitment {
            buckets: vec![Vec::new(); BUCKETS],
            levels: (0..=BUCKET_BITS)
                .map(|d| vec![B256::ZERO; 1 << d])
                .collect(),
            dirty: Vec::new(),
            is_dirty: vec![false; BUCKETS],
        }
    }
}

fn node(l: &B256, r: &B256) -> B256 {
    if l.is_zero() && r.is_zero() {
        return B256::ZERO;
    }
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(l.as_slice());
    buf[32..].copy_from_slice(r.as_slice());
    keccak256(buf)
}

fn bucket_hash(bucket: &[(B256, B256)]) -> B256 {
    if bucket.is_empty() {
        return B256::ZERO;
    }
    let mut buf = Vec::with_capacity(64 * bucket.len());
    for (k, v) in bucket {
        buf.extend_from_slice(k.as_slice());
        buf.extend_from_slice(v.as_slice());
    }
    keccak256(&buf)
}

/// One core's share of a root: its first bucket, its dirty buckets, its slices of the
/// levels from the split depth down.
type Subtree<'a> = (usize, &'a [u32], Vec<&'a mut [B256]>);

/// Rehashes the `dirty` buckets (sorted, all inside this subtree) and the nodes above
/// them up to the subtree's root. `levels[0]` is the subtree's top level, the last is its
/// share of the bucket hashes; `first` is the index of its first bucket.
fn rehash_subtree(
    buckets: &[Vec<(B256, B256)>],
    levels: &mut [&mut [B256]],
    dirty: &[u32],
    first: usize,
) {
    let Some(last) = levels.len().checked_sub(1) else {
        return;
    };
    let mut changed: Vec<usize> = dirty.iter().map(|&b| b as usize - first).collect();
    for &i in &changed {
        levels[last][i] = bucket_hash(&buckets[first + i]);
    }
    for d in (0..last).rev() {
        for i in changed.iter_mut() {
            *i /= 2;
        }
        changed.dedup();
        let (upper, lower) = levels.split_at_mut(d + 1);
        let (parents, children) = (&mut upper[d], &lower[0]);
        for &j in &changed {
            parents[j] = node(&children[2 * j], &children[2 * j + 1]);
        }
    }
}

impl Commitment {
    /// Sets (or, with `None`, removes) the leaf of a key.
    pub fn set(&mut self, key: B256, leaf: Option<B256>) {
        let b = u16::from_be_bytes([key[0], key[1]]) as usize;
        let bucket = &mut self.buckets[b];
        match (bucket.binary_search_by(|(k, _)| k.cmp(&key)), leaf) {
            (Ok(i), Some(leaf)) => bucket[i].1 = leaf,
            (Ok(i), None) => {
                bucket.remove(i);
            }
            (Err(i), Some(leaf)) => bucket.insert(i, (key, leaf)),
            (Err(_), None) => return,
        }
        if !self.is_dirty[b] {
            self.is_dirty[b] = true;
            self.dirty.push(b as u32);
        }
    }

    /// The root, after rehashing what changed. A large change is split by subtree, one
    /// per core, down from depth log2(cores); the few nodes above are then recomputed.
    pub fn root(&mut self) -> B256 {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        for &b in &dirty {
            self.is_dirty[b as usize] = false;
        }
        let split_bits = if dirty.len() < par::MIN_PARALLEL {
            0
        } else {
            par::threads().min(16).ilog2()
        };
        let parts = 1usize << split_bits;
        let per_part = BUCKETS / parts;
        // Each part gets its own slice of every level from depth `split_bits` down.
        let mut subtrees: Vec<Vec<&mut [B256]>> = (0..parts).map(|_| Vec::new()).collect();
        for level in self.levels[split_bits as usize..].iter_mut() {
            let width = level.len() / parts;
            for (p, chunk) in level.chunks_mut(width).enumerate() {
                subtrees[p].push(chunk);
            }
        }
        let buckets = &self.buckets;
        let work: Vec<Subtree<'_>> = subtrees
            .into_iter()
            .enumerate()
            .map(|(p, levels)| {
                let lo = dirty.partition_point(|&b| (b as usize) < p * per_part);
                let hi = dirty.partition_point(|&b| (b as usize) < (p + 1) * per_part);
                (p * per_part, &dirty[lo..hi], levels)
            })
            .collect();
        par::each(work, |(first, dirty, mut levels)| {
            rehash_subtree(buckets, &mut levels, dirty, first)
        });
        for d in (0..split_bits as usize).rev() {
            let (upper, lower) = self.levels.split_at_mut(d + 1);
            for (j, parent) in upper[d].iter_mut().enumerate() {
                *parent = node(&lower[0][2 * j], &lower[0][2 * j + 1]);
            }
        }
        dirty.clear();
        self.dirty = dirty;
        self.levels[0][0]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_depends_on_content_not_on_history() {
        let k = |i: u64| keccak256(i.to_be_bytes());
        let mut a = Commitment::default();
        let mut b = Commitment::default();
        for i in 0..1000 {
            a.set(k(i), Some(k(i + 7)));
        }
        assert_ne!(a.root(), B256::ZERO);
        for i in (0..1000).rev() {
            b.set(k(i), Some(k(i)));
            b.set(k(i + 5000), Some(k(1)));
        }
        for i in 0..1000 {
            b.set(k(i), Some(k(i + 7)));
            b.set(k(i + 5000), None);
        }
        assert_eq!(a.root(), b.root());
        a.set(k(3), Some(k(4)));
        assert_ne!(a.root(), b.root(), "a changed leaf changes the root");
        for i in 0..1000 {
            a.set(k(i), None);
        }
        assert_eq!(a.root(), B256::ZERO, "an empty state has the empty root");
    }

    /// The root recomputed from nothing: every bucket, every node.
    fn full_root(c: &Commitment) -> B256 {
        let mut level: Vec<B256> = c.buckets.iter().map(|b| bucket_hash(b)).collect();
        while level.len() > 1 {
            level = level.chunks(2).map(|p| node(&p[0], &p[1])).collect();
        }
        level[0]
    }

    #[test]
    fn large_changes_split_across_cores_give_the_same_root() {
        let k = |i: u64| keccak256(i.to_be_bytes());
        let mut c = Commitment::default();
        // Large (split by subtree where there are several cores), then small (not).
        for i in 0..50_000 {
            c.set(k(i), Some(k(i + 1)));
        }
        assert_eq!(c.root(), full_root(&c));
        for i in (0..50_000).step_by(97) {
            c.set(k(i), None);
        }
        c.set(k(1_000_000), Some(k(3)));
        assert_eq!(c.root(), full_root(&c));
        for i in 0..30_000 {
            c.set(k(i * 3), Some(k(i)));
        }
        assert_eq!(c.root(), full_root(&c));
    }
}

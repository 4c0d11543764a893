//! The state root: every state entry is a leaf; leaves fall into 2^16 buckets by the hash
//! of their key; a bucket's hash covers its leaves in key order; the root is a binary
//! Merkle tree over the buckets (two empty children make an empty parent). Updating an
//! entry rehashes its bucket and the bucket's path at the next `root`, so a block's root
//! costs what the block changed, not the size of the state.

use alloy_primitives::{B256, keccak256};

use crate::par;

const BUCKET_BITS: u32 = 16;
const BUCKETS: usize = 1 << BUCKET_BITS;

#[derive(Clone, Debug)]
pub(crate) struct Commitment {
    /// Per bucket: (key hash, leaf hash), sorted by key hash.
    buckets: Vec<Vec<(B256, B256)>>,
    /// Tree nodes in heap order: the root at 1, children of i at 2i and 2i+1, buckets
    /// from `BUCKETS` on.
    tree: Vec<B256>,
    dirty: Vec<u32>,
    is_dirty: Vec<bool>,
}

impl Default for Commitment {
    fn default() -> Self {
        Commitment {
            buckets: vec![Vec::new(); BUCKETS],
            tree: vec![B256::ZERO; 2 * BUCKETS],
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

    /// The root, after rehashing what changed.
    pub fn root(&mut self) -> B256 {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        let hashes = par::map(&dirty, |&b| {
            let bucket = &self.buckets[b as usize];
            if bucket.is_empty() {
                return B256::ZERO;
            }
            let mut buf = Vec::with_capacity(64 * bucket.len());
            for (k, v) in bucket {
                buf.extend_from_slice(k.as_slice());
                buf.extend_from_slice(v.as_slice());
            }
            keccak256(&buf)
        });
        // Then the tree, a level at a time, each changed node once.
        let mut level: Vec<usize> = Vec::with_capacity(dirty.len());
        for (&b, hash) in dirty.iter().zip(hashes) {
            self.is_dirty[b as usize] = false;
            self.tree[BUCKETS + b as usize] = hash;
            level.push(BUCKETS + b as usize);
        }
        while level.first().is_some_and(|&i| i > 1) {
            for i in level.iter_mut() {
                *i /= 2;
            }
            level.dedup();
            for &i in &level {
                self.tree[i] = node(&self.tree[2 * i], &self.tree[2 * i + 1]);
            }
        }
        dirty.clear();
        self.dirty = dirty;
        self.tree[1]
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
}

//! Merkle trees in the layout of OpenZeppelin's `StandardMerkleTree`.
//!
//! Leaves are sorted, laid out at the end of an array in reverse, and each inner node is
//! keccak256 of its two children in ascending order ("commutative" hashing), so a proof
//! is just the list of siblings and `MerkleProof.verify` in Solidity accepts it. The
//! ledger uses the same tree for transaction, state and reward roots.

use alloy_primitives::{B256, keccak256};

use crate::par;

/// keccak256 of the two nodes, smaller first.
pub fn hash_pair(a: &B256, b: &B256) -> B256 {
    let (lo, hi) = if a <= b { (a, b) } else { (b, a) };
    let mut buf = [0u8; 64];
    buf[..32].copy_from_slice(lo.as_slice());
    buf[32..].copy_from_slice(hi.as_slice());
    keccak256(buf)
}

/// A whole tree, kept for proofs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MerkleTree {
    /// Nodes in OpenZeppelin's array layout: root at 0, children of i at 2i+1 and 2i+2.
    nodes: Vec<B256>,
    leaves: usize,
}

impl MerkleTree {
    /// Builds the tree over `leaves`, which it sorts first (as `StandardMerkleTree` does).
    pub fn new(mut leaves: Vec<B256>) -> MerkleTree {
        leaves.sort_unstable();
        let n = leaves.len();
        if n == 0 {
            return MerkleTree {
                nodes: Vec::new(),
                leaves: 0,
            };
        }
        let mut nodes = vec![B256::ZERO; 2 * n - 1];
        let len = nodes.len();
        for (i, leaf) in leaves.into_iter().enumerate() {
            nodes[len - 1 - i] = leaf;
        }
        // The inner nodes, a depth at a time from the deepest: nodes 2^d - 1 .. 2^(d+1) - 1
        // are at depth d, their children from 2^(d+1) - 1 on, so a depth's nodes can be
        // hashed on every core at once.
        let inner = len - n;
        if inner > 0 {
            let deepest = (inner as u64).ilog2();
            for d in (0..=deepest).rev() {
                let first = (1usize << d) - 1;
                let children = (1usize << (d + 1)) - 1;
                let (upper, lower) = nodes.split_at_mut(children);
                let parents = &mut upper[first..inner.min(children)];
                par::fill(parents, |k| {
                    let i = first + k;
                    hash_pair(&lower[2 * i + 1 - children], &lower[2 * i + 2 - children])
                });
            }
        }
        MerkleTree { nodes, leaves: n }
    }

    /// A tree from its nodes as [`MerkleTree::nodes`] gave them (stored, read back):
    /// `None` when their count is not that of a tree (2n - 1 for n leaves, or none).
    pub fn from_nodes(nodes: Vec<B256>) -> Option<MerkleTree> {
        if nodes.is_empty() {
            return Some(MerkleTree { nodes, leaves: 0 });
        }
        if nodes.len().is_multiple_of(2) {
            return None;
        }
        let leaves = nodes.len().div_ceil(2);
        Some(MerkleTree { nodes, leaves })
    }

    /// Every node, root first, in OpenZeppelin's array layout.
    pub fn nodes(&self) -> &[B256] {
        &self.nodes
    }

    /// The root; zero for an empty tree.
    pub fn root(&self) -> B256 {
        self.nodes.first().copied().unwrap_or(B256::ZERO)
    }

    pub fn len(&self) -> usize {
        self.leaves
    }

    pub fn is_empty(&self) -> bool {
        self.leaves == 0
    }

    /// The siblings from `leaf` up to the root, or `None` if it is not a leaf of this tree.
    pub fn proof(&self, leaf: &B256) -> Option<Vec<B256>> {
        let len = self.nodes.len();
        // The leaves sit at the end in descending order.
        let first = len - self.leaves;
        let mut i = first + self.nodes[first..].binary_search_by(|x| leaf.cmp(x)).ok()?;
        let mut proof = Vec::new();
        while i > 0 {
            let sibling = if i % 2 == 1 { i + 1 } else { i - 1 };
            proof.push(self.nodes[sibling]);
            i = (i - 1) / 2;
        }
        Some(proof)
    }
}

/// The root of the tree over `leaves` without keeping the tree.
pub fn root(leaves: Vec<B256>) -> B256 {
    MerkleTree::new(leaves).root()
}

/// What `MerkleProof.processProof` computes: fold the proof into the leaf.
pub fn process_proof(leaf: B256, proof: &[B256]) -> B256 {
    proof
        .iter()
        .fold(leaf, |node, sibling| hash_pair(&node, sibling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(i: u64) -> B256 {
        keccak256(i.to_be_bytes())
    }

    #[test]
    fn every_leaf_proves_against_the_root() {
        for n in 1..40u64 {
            let leaves: Vec<B256> = (0..n).map(leaf).collect();
            let tree = MerkleTree::new(leaves.clone());
            for l in &leaves {
                let proof = tree.proof(l).unwrap();
                assert_eq!(process_proof(*l, &proof), tree.root(), "n={n}");
            }
            assert!(tree.proof(&leaf(n + 1)).is_none());
        }
    }

    #[test]
    fn large_trees_built_on_every_core_match_the_plain_loop() {
        for n in [8_191usize, 20_000, 65_537] {
            let leaves: Vec<B256> = (0..n as u64).map(leaf).collect();
            let tree = MerkleTree::new(leaves.clone());
            let mut sorted = leaves;
            sorted.sort_unstable();
            let len = 2 * n - 1;
            let mut nodes = vec![B256::ZERO; len];
            for (i, l) in sorted.into_iter().enumerate() {
                nodes[len - 1 - i] = l;
            }
            for i in (0..len - n).rev() {
                nodes[i] = hash_pair(&nodes[2 * i + 1], &nodes[2 * i + 2]);
            }
            assert_eq!(tree.root(), nodes[0], "n={n}");
            assert_eq!(tree.nodes, nodes, "n={n}");
        }
    }

    #[test]
    fn root_does_not_depend_on_leaf_order() {
        let leaves: Vec<B256> = (0..9).map(leaf).collect();
        let mut reversed = leaves.clone();
        reversed.reverse();
        assert_eq!(root(leaves), root(reversed));
    }

    #[test]
    fn small_trees_have_the_expected_shape() {
        let (a, b, c) = (leaf(1), leaf(2), leaf(3));
        assert_eq!(root(vec![a]), a);
        assert_eq!(root(vec![a, b]), hash_pair(&a, &b));
        // Three sorted leaves s0 < s1 < s2 sit at nodes 4, 3 and 2, so node 1 = H(s1, s0)
        // and the root = H(node 1, s2).
        let mut s = [a, b, c];
        s.sort();
        assert_eq!(
            root(vec![a, b, c]),
            hash_pair(&hash_pair(&s[1], &s[0]), &s[2])
        );
    }
}

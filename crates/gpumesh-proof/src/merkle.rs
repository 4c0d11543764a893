//! The commitment to C: a binary Merkle tree over one leaf per row, in row order.
//!
//! A leaf is keccak256(row index as u32 LE ‖ the row's i32 values LE); an inner node is
//! keccak256(left ‖ right) by position (not sorted). A leaf's preimage is at least 68 bytes
//! and a node's exactly 64, so one cannot pass for the other. When a level has an odd
//! number of nodes the last one is carried up unchanged (no duplication), so a path holds
//! one sibling per level where its node has one; the verifier knows the row count and so
//! how many siblings each index must have.

use alloy_primitives::{B256, keccak256};

pub(crate) fn leaf(index: u32, values: &[i32], buf: &mut Vec<u8>) -> B256 {
    buf.clear();
    buf.extend_from_slice(&index.to_le_bytes());
    for v in values {
        buf.extend_from_slice(&v.to_le_bytes());
    }
    keccak256(&buf[..])
}

fn node(left: &B256, right: &B256) -> B256 {
    let mut preimage = [0u8; 64];
    preimage[..32].copy_from_slice(left.as_slice());
    preimage[32..].copy_from_slice(right.as_slice());
    keccak256(preimage)
}

/// Every level of the tree, leaves first, root last.
#[derive(Clone, Debug)]
pub(crate) struct Tree {
    levels: Vec<Vec<B256>>,
}

impl Tree {
    /// `leaves` must not be empty (a proof has at least one row).
    pub(crate) fn new(leaves: Vec<B256>) -> Self {
        let mut levels = vec![leaves];
        while let Some(last) = levels.last().filter(|l| l.len() > 1) {
            let next = last
                .chunks(2)
                .map(|pair| match pair {
                    [l, r] => node(l, r),
                    [only] => *only,
                    _ => unreachable!("chunks(2) yields one or two"),
                })
                .collect();
            levels.push(next);
        }
        Self { levels }
    }

    pub(crate) fn root(&self) -> B256 {
        self.levels
            .last()
            .and_then(|l| l.first())
            .copied()
            .unwrap_or_default()
    }

    /// Siblings of leaf `index`, bottom-up. `index` must be in range.
    pub(crate) fn path(&self, index: u32) -> Vec<B256> {
        let mut idx = index as usize;
        let mut path = Vec::new();
        for level in &self.levels[..self.levels.len() - 1] {
            if let Some(sibling) = level.get(idx ^ 1) {
                path.push(*sibling);
            }
            idx /= 2;
        }
        path
    }
}

/// The root that `leaf` at `index` with these siblings leads to, in a tree of `leaves`
/// leaves; `None` when the path has the wrong number of siblings for that index.
pub(crate) fn root_from_path(leaf: B256, index: u32, leaves: u32, path: &[B256]) -> Option<B256> {
    let mut idx = index;
    let mut width = leaves;
    let mut hash = leaf;
    let mut siblings = path.iter();
    while width > 1 {
        if (idx ^ 1) < width {
            let sibling = siblings.next()?;
            hash = if idx.is_multiple_of(2) {
                node(&hash, sibling)
            } else {
                node(sibling, &hash)
            };
        }
        idx /= 2;
        width = width.div_ceil(2);
    }
    siblings.next().is_none().then_some(hash)
}

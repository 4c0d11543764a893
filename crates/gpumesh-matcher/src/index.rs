//! The kd-trees with aggregates for branch-and-bound.
//!
//! There is one tree per GPU model, and a tree holds only available groups (online, some
//! GPU free), so a search never walks past busy hosts. A group leaves its tree when it
//! becomes fully busy or goes offline, and comes back when a GPU frees up.

use crate::Group;
use crate::geo::Unit;

/// Groups per leaf when a tree is built; a leaf that grows by insertion past four times
/// that is split in two where it stands.
const LEAF_TARGET: usize = 8;
const LEAF_MAX: usize = 4 * LEAF_TARGET;
const NONE: u32 = u32::MAX;

/// The tree a group belongs in (its model's), if it is available.
#[inline]
pub(crate) fn tree_of(g: &Group) -> Option<usize> {
    g.available().then_some(g.model as usize)
}

/// Prices in aggregates drop their low bits, which keeps aggregates small; rounding down
/// keeps the minimum a valid lower bound.
pub(crate) const PRICE_SHIFT: u32 = 24;

#[inline]
pub(crate) fn shifted_price(price: u128) -> u64 {
    (price >> PRICE_SHIFT).min(u64::MAX as u128) as u64
}

/// What a subtree's available groups (online, with a free GPU) can offer at best.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agg {
    /// The lowest price, shifted right by `PRICE_SHIFT` (rounded down, so still a bound).
    pub min_price: u64,
    /// Countries present, as bits of the country id modulo 64: a one-hash Bloom filter.
    pub countries: u64,
    /// Union of the hosts' image bits (image id modulo 64): a one-hash Bloom filter.
    pub images: u64,
    pub max_vram: u32,
    pub max_free: u8,
    pub best_tier: u8,
}

impl Agg {
    pub const EMPTY: Agg = Agg {
        min_price: u64::MAX,
        countries: 0,
        images: 0,
        max_vram: 0,
        max_free: 0,
        best_tier: u8::MAX,
    };

    #[inline]
    fn add(&mut self, g: &Group) {
        if !g.available() {
            return;
        }
        self.min_price = self.min_price.min(shifted_price(g.price));
        self.max_vram = self.max_vram.max(g.vram_mib);
        self.max_free = self.max_free.max(g.free_count());
        self.best_tier = self.best_tier.min(g.tier);
        self.countries |= 1 << (g.country & 63);
        self.images |= g.image_bits;
    }

    #[inline]
    fn merge(a: &Agg, b: &Agg) -> Agg {
        Agg {
            min_price: a.min_price.min(b.min_price),
            max_vram: a.max_vram.max(b.max_vram),
            max_free: a.max_free.max(b.max_free),
            best_tier: a.best_tier.min(b.best_tier),
            countries: a.countries | b.countries,
            images: a.images | b.images,
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub lo: Unit,
    pub hi: Unit,
    pub agg: Agg,
    pub parent: u32,
    /// Children for an inner node; `left == NONE` for a leaf.
    pub left: u32,
    pub right: u32,
    /// Inner: the split dimension and value. Leaf: `leaf` indexes `members`.
    pub dim: u8,
    pub split: f32,
    pub leaf: u32,
}

impl Node {
    fn empty_leaf(parent: u32, leaf: u32) -> Node {
        Node {
            lo: [f32::MAX; 3],
            hi: [f32::MIN; 3],
            agg: Agg::EMPTY,
            parent,
            left: NONE,
            right: NONE,
            dim: 0,
            split: 0.0,
            leaf,
        }
    }

    #[inline]
    pub fn is_leaf(&self) -> bool {
        self.left == NONE
    }

    fn extend(&mut self, p: &Unit) {
        for (i, &x) in p.iter().enumerate() {
            self.lo[i] = self.lo[i].min(x);
            self.hi[i] = self.hi[i].max(x);
        }
    }
}

/// A kd-tree over the groups of one GPU model.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    /// Group ids of each leaf.
    pub members: Vec<Vec<u32>>,
    /// Index of the leaf node of each `members` entry.
    leaf_node: Vec<u32>,
}

impl Tree {
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.members.capacity() * std::mem::size_of::<Vec<u32>>()
            + self.members.iter().map(|m| m.capacity() * 4).sum::<usize>()
            + self.leaf_node.capacity() * 4
    }

    /// Builds the tree over `ids` from scratch.
    pub fn build(groups: &mut [Group], mut ids: Vec<u32>) -> Tree {
        let mut tree = Tree::default();
        if ids.is_empty() {
            return tree;
        }
        tree.build_node(groups, &mut ids, NONE);
        tree
    }

    fn build_node(&mut self, groups: &mut [Group], ids: &mut [u32], parent: u32) -> u32 {
        let index = self.nodes.len() as u32;
        let mut node = Node::empty_leaf(parent, NONE);
        for &id in ids.iter() {
            node.extend(&groups[id as usize].unit);
        }
        self.nodes.push(node);
        if ids.len() <= LEAF_TARGET {
            let leaf = self.members.len() as u32;
            self.members.push(ids.to_vec());
            self.leaf_node.push(index);
            self.nodes[index as usize].leaf = leaf;
            for &id in ids.iter() {
                groups[id as usize].leaf = leaf;
            }
            self.recompute(groups, index);
            return index;
        }
        let n = &self.nodes[index as usize];
        let extent = |i: usize| n.hi[i] - n.lo[i];
        let dim = (0..3)
            .max_by(|&a, &b| extent(a).total_cmp(&extent(b)))
            .unwrap_or(0);
        let mid = ids.len() / 2;
        ids.select_nth_unstable_by(mid, |a, b| {
            groups[*a as usize].unit[dim]
                .total_cmp(&groups[*b as usize].unit[dim])
                .then(a.cmp(b))
        });
        let split = groups[ids[mid] as usize].unit[dim];
        let (left_ids, right_ids) = ids.split_at_mut(mid);
        let left = self.build_node(groups, left_ids, index);
        let right = self.build_node(groups, right_ids, index);
        let agg = Agg::merge(
            &self.nodes[left as usize].agg,
            &self.nodes[right as usize].agg,
        );
        let node = &mut self.nodes[index as usize];
        node.left = left;
        node.right = right;
        node.dim = dim as u8;
        node.split = split;
        node.agg = agg;
        index
    }

    /// Recomputes a leaf's aggregate from its members.
    fn recompute(&mut self, groups: &[Group], node: u32) {
        let leaf = self.nodes[node as usize].leaf as usize;
        let mut agg = Agg::EMPTY;
        for &id in &self.members[leaf] {
            agg.add(&groups[id as usize]);
        }
        self.nodes[node as usize].agg = agg;
    }

    /// Walks from `node`'s parent to the root, merging children, until nothing changes.
    fn propagate(&mut self, mut node: u32) {
        loop {
            let parent = self.nodes[node as usize].parent;
            if parent == NONE {
                return;
            }
            let p = &self.nodes[parent as usize];
            let merged = Agg::merge(
                &self.nodes[p.left as usize].agg,
                &self.nodes[p.right as usize].agg,
            );
            if merged == p.agg {
                return;
            }
            self.nodes[parent as usize].agg = merged;
            node = parent;
        }
    }

    /// A group's state changed: refresh its leaf and the path above it.
    pub fn refresh(&mut self, groups: &[Group], id: u32) {
        let leaf = groups[id as usize].leaf;
        if leaf == u32::MAX {
            return;
        }
        let node = self.leaf_node[leaf as usize];
        self.recompute(groups, node);
        self.propagate(node);
    }

    /// Adds a group, growing boxes along its path; rebuilds when a leaf overflows.
    pub fn insert(&mut self, groups: &mut [Group], id: u32) {
        if self.nodes.is_empty() {
            self.nodes.push(Node::empty_leaf(NONE, 0));
            self.members.push(Vec::new());
            self.leaf_node.push(0);
        }
        let p = groups[id as usize].unit;
        let mut node = 0u32;
        loop {
            let n = &mut self.nodes[node as usize];
            n.extend(&p);
            if n.is_leaf() {
                break;
            }
            node = if p[n.dim as usize] < n.split {
                n.left
            } else {
                n.right
            };
        }
        let leaf = self.nodes[node as usize].leaf;
        self.members[leaf as usize].push(id);
        groups[id as usize].leaf = leaf;
        if self.members[leaf as usize].len() > LEAF_MAX {
            self.split(groups, node);
        }
        self.recompute_subtree(groups, node);
        self.propagate(node);
    }

    /// Turns an overfull leaf into an inner node over two halves, in place.
    fn split(&mut self, groups: &mut [Group], node: u32) {
        let leaf = self.nodes[node as usize].leaf;
        let mut ids = std::mem::take(&mut self.members[leaf as usize]);
        let n = &self.nodes[node as usize];
        let extent = |i: usize| n.hi[i] - n.lo[i];
        let dim = (0..3)
            .max_by(|&a, &b| extent(a).total_cmp(&extent(b)))
            .unwrap_or(0);
        let mid = ids.len() / 2;
        ids.select_nth_unstable_by(mid, |a, b| {
            groups[*a as usize].unit[dim]
                .total_cmp(&groups[*b as usize].unit[dim])
                .then(a.cmp(b))
        });
        let split = groups[ids[mid] as usize].unit[dim];
        let right_ids = ids.split_off(mid);
        // The old leaf's slot keeps the left half; the right half gets a new leaf.
        let right_leaf = self.members.len() as u32;
        let mut children = [NONE; 2];
        for (side, (half, leaf_slot)) in [(ids, leaf), (right_ids, right_leaf)]
            .into_iter()
            .enumerate()
        {
            let child = self.nodes.len() as u32;
            let mut c = Node::empty_leaf(node, leaf_slot);
            for &id in &half {
                c.extend(&groups[id as usize].unit);
                groups[id as usize].leaf = leaf_slot;
            }
            self.nodes.push(c);
            if leaf_slot == leaf {
                self.members[leaf as usize] = half;
                self.leaf_node[leaf as usize] = child;
            } else {
                self.members.push(half);
                self.leaf_node.push(child);
            }
            children[side] = child;
        }
        let n = &mut self.nodes[node as usize];
        n.left = children[0];
        n.right = children[1];
        n.dim = dim as u8;
        n.split = split;
        n.leaf = NONE;
    }

    /// Recomputes a node's aggregate: from members for a leaf, from children otherwise.
    fn recompute_subtree(&mut self, groups: &[Group], node: u32) {
        let n = &self.nodes[node as usize];
        if n.is_leaf() {
            self.recompute(groups, node);
        } else {
            let (l, r) = (n.left, n.right);
            self.recompute(groups, l);
            self.recompute(groups, r);
            self.nodes[node as usize].agg =
                Agg::merge(&self.nodes[l as usize].agg, &self.nodes[r as usize].agg);
        }
    }

    /// Removes a group (its host moved); boxes keep their size, which stays correct.
    pub fn remove(&mut self, groups: &mut [Group], id: u32) {
        let leaf = groups[id as usize].leaf;
        if leaf == u32::MAX {
            return;
        }
        let members = &mut self.members[leaf as usize];
        if let Some(pos) = members.iter().position(|&m| m == id) {
            members.swap_remove(pos);
        }
        groups[id as usize].leaf = u32::MAX;
        let node = self.leaf_node[leaf as usize];
        self.recompute(groups, node);
        self.propagate(node);
    }
}

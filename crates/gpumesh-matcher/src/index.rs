//! The kd-trees with aggregates for branch-and-bound.
//!
//! Every available group (online, some GPU free) is in two trees: its model's, for requests
//! that name a model, and its class's (data-centre, workstation, consumer), for requests
//! that name a class, such as cloud gaming on any consumer card. Busy and offline groups
//! are in no tree, so a search never walks past them.
//!
//! Leaves keep the hot fields of their groups inline ([`Item`]), so judging a leaf reads
//! one contiguous run of memory instead of one cache line per group elsewhere; every
//! change to a group rewrites its item.

use crate::Group;
use crate::geo::Unit;

/// Groups per leaf when a tree is built; a leaf that grows by insertion past four times
/// that is split in two where it stands.
const LEAF_TARGET: usize = 8;
const LEAF_MAX: usize = 4 * LEAF_TARGET;
// A group's place in its leaf is a `u8`; a leaf holds at most `LEAF_MAX + 1` items.
const _: () = assert!(LEAF_MAX < u8::MAX as usize);
pub(crate) const NONE: u32 = u32::MAX;

/// The trees a group belongs in (its model's and its class's), if it is available.
#[inline]
pub(crate) fn trees_of(g: &Group) -> Option<[usize; 2]> {
    g.available()
        .then(|| [g.model as usize, MODELS + g.model.class() as usize])
}

/// Model trees come first, one per catalog model; class trees follow.
pub(crate) const MODELS: usize = gpumesh_types::CATALOG.len();
pub(crate) const CLASSES: usize = 3;

/// A group's hot fields, inline in its leaf.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub price: u128,
    /// The price as `f64`, as scores take it (converting a `u128` is slow in a hot loop).
    pub price_f: f64,
    /// The price rounded down to `f32`, as aggregates keep it.
    pub price_lo: f32,
    pub unit: Unit,
    pub group: u32,
    pub image_bits: u64,
    pub vram: u32,
    pub free: u8,
    pub tier: u8,
    pub country: u8,
    pub model: u8,
}

impl Item {
    /// A group's facts as a leaf holds them; the scan judges groups through this too.
    pub(crate) fn of(g: &Group, id: u32) -> Item {
        Item {
            price: g.price,
            price_f: g.price_f,
            price_lo: g.price_lo,
            unit: g.unit,
            group: id,
            image_bits: g.image_bits,
            vram: g.vram_mib,
            free: g.free_count(),
            tier: g.tier,
            country: g.country,
            model: g.model as u8,
        }
    }

    /// Whether this item offers at least what `old` did in everything the aggregates
    /// keep, so that replacing `old` with it can only add to them.
    #[inline]
    fn dominates(&self, old: &Item) -> bool {
        self.price_f <= old.price_f
            && self.free >= old.free
            && self.vram >= old.vram
            && self.tier <= old.tier
            && self.country == old.country
            && self.model == old.model
            && self.image_bits & old.image_bits == old.image_bits
    }
}

/// Requests for this many GPUs or more are bounded by the lowest price among groups with
/// that many free.
pub(crate) const BIG_FREE: u8 = 4;

/// The largest `f32` at most `x`.
#[inline]
pub(crate) fn f32_below(x: f64) -> f32 {
    let y = x as f32;
    if f64::from(y) > x { y.next_down() } else { y }
}

/// What a subtree's groups can offer at best.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Agg {
    /// The lowest price, rounded down to `f32`: of all groups, and of those with at least
    /// [`BIG_FREE`] GPUs free, which bounds requests for that many far tighter (a cheap
    /// host with one GPU free says nothing about the price of eight). Converting from
    /// `u128` never decreases order and rounding down keeps a lower bound, so a price
    /// within a cap stays within it here too.
    pub min_price: [f32; 2],
    /// Countries present, as bits of the country id modulo 64 (a one-hash Bloom filter).
    pub countries: u64,
    /// Images present, as bits of the image id modulo 64.
    pub images: u64,
    pub max_vram: u32,
    /// Models present, as bits of `GpuModel as usize`.
    pub models: u16,
    pub max_free: u8,
    pub best_tier: u8,
}

impl Agg {
    pub const EMPTY: Agg = Agg {
        min_price: [f32::INFINITY; 2],
        countries: 0,
        images: 0,
        max_vram: 0,
        models: 0,
        max_free: 0,
        best_tier: u8::MAX,
    };

    #[inline]
    fn add(&mut self, i: &Item) {
        self.min_price[0] = self.min_price[0].min(i.price_lo);
        if i.free >= BIG_FREE {
            self.min_price[1] = self.min_price[1].min(i.price_lo);
        }
        self.countries |= 1 << (i.country & 63);
        self.images |= i.image_bits;
        self.max_vram = self.max_vram.max(i.vram);
        self.models |= 1 << i.model;
        self.max_free = self.max_free.max(i.free);
        self.best_tier = self.best_tier.min(i.tier);
    }

    #[inline]
    fn merge(a: &Agg, b: &Agg) -> Agg {
        Agg {
            min_price: [
                a.min_price[0].min(b.min_price[0]),
                a.min_price[1].min(b.min_price[1]),
            ],
            countries: a.countries | b.countries,
            images: a.images | b.images,
            max_vram: a.max_vram.max(b.max_vram),
            models: a.models | b.models,
            max_free: a.max_free.max(b.max_free),
            best_tier: a.best_tier.min(b.best_tier),
        }
    }
}

/// A node in 64 bytes: its box, its aggregate, its split and its children. The two
/// children of an inner node sit next to each other, so a search reads both in one go.
/// Parents live apart (`Tree::parents`): only updates walk up.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub lo: Unit,
    pub hi: Unit,
    pub agg: Agg,
    /// Leaf: `LEAF | leaf index`. Inner: `dim << DIM_SHIFT | left child` (the right one
    /// follows it).
    child: u32,
    /// Inner: points below this along `dim` go left.
    split: f32,
}

const LEAF: u32 = 1 << 31;
const DIM_SHIFT: u32 = 29;
const INDEX: u32 = (1 << DIM_SHIFT) - 1;

impl Node {
    fn empty() -> Node {
        Node {
            lo: [f32::MAX; 3],
            hi: [f32::MIN; 3],
            agg: Agg::EMPTY,
            child: LEAF,
            split: 0.0,
        }
    }

    #[inline]
    pub fn is_leaf(&self) -> bool {
        self.child & LEAF != 0
    }

    /// The leaf's index in `Tree::leaves`.
    #[inline]
    pub fn leaf(&self) -> u32 {
        self.child & !LEAF
    }

    /// The children of an inner node.
    #[inline]
    pub fn children(&self) -> [u32; 2] {
        let first = self.child & INDEX;
        [first, first + 1]
    }

    #[inline]
    fn dim(&self) -> usize {
        (self.child >> DIM_SHIFT) as usize & 3
    }

    fn set_inner(&mut self, first: u32, dim: usize, split: f32) {
        debug_assert!(first <= INDEX);
        self.child = (dim as u32) << DIM_SHIFT | first;
        self.split = split;
    }

    fn contains(&self, p: &Unit) -> bool {
        (0..3).all(|i| self.lo[i] <= p[i] && p[i] <= self.hi[i])
    }

    fn extend(&mut self, p: &Unit) {
        for (i, &x) in p.iter().enumerate() {
            self.lo[i] = self.lo[i].min(x);
            self.hi[i] = self.hi[i].max(x);
        }
    }
}

/// A leaf's items and the node it belongs to.
#[derive(Clone, Debug, Default)]
pub(crate) struct Leaf {
    pub items: Vec<Item>,
    node: u32,
}

/// A kd-tree over the available groups of one GPU model.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    parents: Vec<u32>,
    pub leaves: Vec<Leaf>,
    /// Which of a group's two tree places (model, class) this tree keeps.
    which: usize,
}

/// How much a factor e of price counts against distance on the unit sphere when a model
/// tree chooses where to split: a tree that splits on price as well as place keeps cheap
/// and dear groups apart, which tightens the bounds of the `balanced` policy.
const PRICE_WEIGHT: f32 = 0.5;

/// A group's coordinates for splitting: its place and, in model trees, its log price.
#[inline]
fn split_point(g: &Group, with_price: bool) -> [f32; 4] {
    let w = if with_price {
        g.price_f.max(1.0).ln() as f32 * PRICE_WEIGHT
    } else {
        0.0
    };
    [g.unit[0], g.unit[1], g.unit[2], w]
}

/// Splits points at the median of their widest dimension; reorders `ids` and returns the
/// dimension, the split value and the index of the first point of the second half.
fn median_split(groups: &[Group], ids: &mut [u32], with_price: bool) -> (usize, f32, usize) {
    let mut lo = [f32::MAX; 4];
    let mut hi = [f32::MIN; 4];
    for &id in ids.iter() {
        let p = split_point(&groups[id as usize], with_price);
        for k in 0..4 {
            lo[k] = lo[k].min(p[k]);
            hi[k] = hi[k].max(p[k]);
        }
    }
    let dim = (0..4)
        .max_by(|&a, &b| (hi[a] - lo[a]).total_cmp(&(hi[b] - lo[b])))
        .unwrap_or(0);
    let mid = ids.len() / 2;
    let key = |id: u32| split_point(&groups[id as usize], with_price)[dim];
    ids.select_nth_unstable_by(mid, |a, b| key(*a).total_cmp(&key(*b)).then(a.cmp(b)));
    (dim, key(ids[mid]), mid)
}

impl Tree {
    pub fn heap_bytes(&self) -> usize {
        self.nodes.capacity() * std::mem::size_of::<Node>()
            + self.parents.capacity() * 4
            + self.leaves.capacity() * std::mem::size_of::<Leaf>()
            + self
                .leaves
                .iter()
                .map(|l| l.items.capacity() * std::mem::size_of::<Item>())
                .sum::<usize>()
    }

    /// An empty tree keeping the groups' place number `which` (0: model, 1: class).
    pub fn new(which: usize) -> Tree {
        Tree {
            which,
            ..Tree::default()
        }
    }

    /// Builds the tree over `ids` from scratch.
    pub fn build(groups: &mut [Group], mut ids: Vec<u32>, which: usize) -> Tree {
        let mut tree = Tree::new(which);
        if !ids.is_empty() {
            tree.push(NONE);
            tree.build_into(groups, &mut ids, 0);
        }
        tree
    }

    fn new_leaf(&mut self, groups: &mut [Group], ids: &[u32], node: u32) -> u32 {
        let leaf = self.leaves.len() as u32;
        let items = ids
            .iter()
            .enumerate()
            .map(|(pos, &id)| {
                let g = &mut groups[id as usize];
                g.leaf[self.which] = leaf;
                g.pos[self.which] = pos as u8;
                Item::of(g, id)
            })
            .collect();
        self.leaves.push(Leaf { items, node });
        leaf
    }

    /// Builds the subtree of `ids` into the node at `index` (already allocated).
    fn build_into(&mut self, groups: &mut [Group], ids: &mut [u32], index: u32) {
        let mut node = Node::empty();
        for &id in ids.iter() {
            node.extend(&groups[id as usize].unit);
        }
        self.nodes[index as usize] = node;
        if ids.len() <= LEAF_TARGET {
            let leaf = self.new_leaf(groups, ids, index);
            self.nodes[index as usize].child = LEAF | leaf;
            self.recompute(index);
            return;
        }
        let (dim, split, mid) = median_split(groups, ids, self.which == 0);
        let (left_ids, right_ids) = ids.split_at_mut(mid);
        let first = self.push(index);
        self.push(index);
        self.build_into(groups, left_ids, first);
        self.build_into(groups, right_ids, first + 1);
        let agg = Agg::merge(
            &self.nodes[first as usize].agg,
            &self.nodes[first as usize + 1].agg,
        );
        let node = &mut self.nodes[index as usize];
        node.set_inner(first, dim, split);
        node.agg = agg;
    }

    /// Appends a node under `parent`.
    fn push(&mut self, parent: u32) -> u32 {
        self.nodes.push(Node::empty());
        self.parents.push(parent);
        self.nodes.len() as u32 - 1
    }

    /// Recomputes a leaf node's aggregate from its items.
    fn recompute(&mut self, node: u32) {
        let leaf = self.nodes[node as usize].leaf() as usize;
        let mut agg = Agg::EMPTY;
        for item in &self.leaves[leaf].items {
            agg.add(item);
        }
        self.nodes[node as usize].agg = agg;
    }

    /// Walks from `node`'s parent to the root, merging children, until nothing changes.
    fn propagate(&mut self, mut node: u32) {
        loop {
            let parent = self.parents[node as usize];
            if parent == NONE {
                return;
            }
            let [l, r] = self.nodes[parent as usize].children();
            let merged = Agg::merge(&self.nodes[l as usize].agg, &self.nodes[r as usize].agg);
            if merged == self.nodes[parent as usize].agg {
                return;
            }
            self.nodes[parent as usize].agg = merged;
            node = parent;
        }
    }

    /// A group in the tree changed (but not its place): rewrite its item.
    pub fn refresh(&mut self, groups: &[Group], id: u32) {
        let g = &groups[id as usize];
        let leaf = &mut self.leaves[g.leaf[self.which] as usize];
        let item = Item::of(g, id);
        let old = std::mem::replace(&mut leaf.items[g.pos[self.which] as usize], item);
        let node = leaf.node;
        if item.dominates(&old) {
            // A GPU freed up, say: the aggregate only gains what the item now offers.
            self.nodes[node as usize].agg.add(&item);
        } else {
            self.recompute(node);
        }
        self.propagate(node);
    }

    /// Adds a group: back into the leaf it last left when that leaf's box still holds its
    /// point (most groups come back when a GPU frees up, and a box holds whatever is inside
    /// it, so the bounds stay true and no path is walked), otherwise down the path its
    /// splits choose, growing boxes on the way. Splits a leaf that overflows.
    pub fn insert(&mut self, groups: &mut [Group], id: u32) {
        if self.nodes.is_empty() {
            self.push(NONE);
            self.leaves.push(Leaf {
                items: Vec::new(),
                node: 0,
            });
        }
        let p = groups[id as usize].unit;
        let hint = groups[id as usize].leaf[self.which];
        if let Some(leaf) = self.leaves.get(hint as usize)
            && self.nodes[leaf.node as usize].contains(&p)
        {
            let node = leaf.node;
            self.push_item(groups, id, node);
            return;
        }
        let key = split_point(&groups[id as usize], self.which == 0);
        let mut node = 0u32;
        loop {
            let n = &mut self.nodes[node as usize];
            n.extend(&p);
            if n.is_leaf() {
                break;
            }
            let [l, r] = n.children();
            node = if key[n.dim()] < n.split { l } else { r };
        }
        self.push_item(groups, id, node);
    }

    /// Appends a group's item to the leaf at `node`, whose box holds the group's point.
    fn push_item(&mut self, groups: &mut [Group], id: u32, node: u32) {
        let leaf = self.nodes[node as usize].leaf();
        let items = &mut self.leaves[leaf as usize].items;
        groups[id as usize].leaf[self.which] = leaf;
        groups[id as usize].pos[self.which] = items.len() as u8;
        let item = Item::of(&groups[id as usize], id);
        items.push(item);
        if items.len() > LEAF_MAX {
            self.split(groups, node);
        } else {
            self.nodes[node as usize].agg.add(&item);
        }
        self.propagate(node);
    }

    /// Turns an overfull leaf into an inner node over two halves, in place.
    fn split(&mut self, groups: &mut [Group], node: u32) {
        let leaf = self.nodes[node as usize].leaf();
        let mut ids: Vec<u32> = self.leaves[leaf as usize]
            .items
            .iter()
            .map(|i| i.group)
            .collect();
        let (dim, split, mid) = median_split(groups, &mut ids, self.which == 0);
        let right_ids = ids.split_off(mid);
        let first = self.nodes.len() as u32;
        for (side, half) in [ids, right_ids].into_iter().enumerate() {
            let child = first + side as u32;
            self.push(node);
            for &id in &half {
                self.nodes[child as usize].extend(&groups[id as usize].unit);
            }
            // The left half keeps the old leaf's slot; the right half gets a new one.
            let slot = if side == 0 {
                let items = half.iter().enumerate().map(|(pos, &id)| {
                    let g = &mut groups[id as usize];
                    g.pos[self.which] = pos as u8;
                    Item::of(g, id)
                });
                self.leaves[leaf as usize] = Leaf {
                    items: items.collect(),
                    node: child,
                };
                leaf
            } else {
                self.new_leaf(groups, &half, child)
            };
            self.nodes[child as usize].child = LEAF | slot;
            self.recompute(child);
        }
        let agg = Agg::merge(
            &self.nodes[first as usize].agg,
            &self.nodes[first as usize + 1].agg,
        );
        let n = &mut self.nodes[node as usize];
        n.set_inner(first, dim, split);
        n.agg = agg;
    }

    /// Removes a group; boxes keep their size, which stays correct. The group keeps its
    /// leaf as the hint for [`Tree::insert`].
    pub fn remove(&mut self, groups: &mut [Group], id: u32) {
        let (leaf, pos) = (
            groups[id as usize].leaf[self.which],
            groups[id as usize].pos[self.which],
        );
        // Not in this tree (never inserted, or already removed: the leaf is only a hint).
        let Some(l) = self.leaves.get_mut(leaf as usize) else {
            return;
        };
        if l.items.get(pos as usize).is_none_or(|i| i.group != id) {
            return;
        }
        l.items.swap_remove(pos as usize);
        if let Some(moved) = l.items.get(pos as usize) {
            groups[moved.group as usize].pos[self.which] = pos;
        }
        let node = l.node;
        self.recompute(node);
        self.propagate(node);
    }
}

#[cfg(test)]
impl Tree {
    /// Checks the tree's structure against the groups: every item is its group's current
    /// facts at the place the group records, every box holds what lies below it, and every
    /// aggregate is exactly what lies below it. Returns the groups held.
    pub fn check(&self, groups: &[Group]) -> Result<Vec<u32>, String> {
        let mut held = Vec::new();
        if self.nodes.is_empty() {
            return Ok(held);
        }
        self.check_node(groups, 0, &mut held)?;
        Ok(held)
    }

    /// Checks the subtree at `node`; returns its aggregate and the points below it.
    fn check_node(
        &self,
        groups: &[Group],
        node: u32,
        held: &mut Vec<u32>,
    ) -> Result<(Agg, Vec<Unit>), String> {
        let n = &self.nodes[node as usize];
        let (agg, points) = if n.is_leaf() {
            let leaf = &self.leaves[n.leaf() as usize];
            if leaf.node != node {
                return Err(format!(
                    "leaf {} points at node {}, not {node}",
                    n.leaf(),
                    leaf.node
                ));
            }
            let mut agg = Agg::EMPTY;
            let mut points = Vec::new();
            for (pos, item) in leaf.items.iter().enumerate() {
                let g = &groups[item.group as usize];
                if (g.leaf[self.which], g.pos[self.which]) != (n.leaf(), pos as u8) {
                    return Err(format!("group {} is misplaced", item.group));
                }
                let fresh = Item::of(g, item.group);
                if format!("{fresh:?}") != format!("{item:?}") {
                    return Err(format!("item of group {} is stale", item.group));
                }
                agg.add(item);
                points.push(item.unit);
                held.push(item.group);
            }
            (agg, points)
        } else {
            let [l, r] = n.children();
            if self.parents[l as usize] != node || self.parents[r as usize] != node {
                return Err(format!("children of node {node} do not name it as parent"));
            }
            let (a, mut pa) = self.check_node(groups, l, held)?;
            let (b, pb) = self.check_node(groups, r, held)?;
            pa.extend(pb);
            (Agg::merge(&a, &b), pa)
        };
        if agg != n.agg {
            return Err(format!(
                "aggregate of node {node} is {:?}, not {agg:?}",
                n.agg
            ));
        }
        if let Some(p) = points.iter().find(|p| !n.contains(p)) {
            return Err(format!("box of node {node} misses {p:?}"));
        }
        Ok((agg, points))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_node_is_one_cache_line_and_an_item_at_most_one() {
        assert_eq!(std::mem::size_of::<super::Node>(), 64);
        assert!(std::mem::size_of::<super::Item>() <= 64);
        assert!(std::mem::size_of::<crate::Group>() <= 96);
    }
}

//! The price index: available groups in price order, per GPU model and free-count class
//! (1, 2–3, 4–7, 8 or more free), for the `price` policy without a round-trip bound, where
//! place does not matter and the cheapest eligible group wins.

use std::collections::BTreeSet;

use crate::Group;

pub(crate) const CLASSES: usize = 4;
pub(crate) const NO_SET: u8 = u8::MAX;

/// The set a group belongs in, if it is available.
#[inline]
pub(crate) fn set_of(g: &Group) -> Option<usize> {
    if !g.available() {
        return None;
    }
    let class = match g.free_count() {
        1 => 0,
        2..=3 => 1,
        4..=7 => 2,
        _ => 3,
    };
    Some(g.model as usize * CLASSES + class)
}

/// Whether groups of a class can hold `count` free GPUs.
#[inline]
pub(crate) fn class_serves(class: usize, count: u8) -> bool {
    [1u8, 3, 7, u8::MAX][class] >= count
}

#[derive(Clone, Debug)]
pub(crate) struct Prices {
    pub sets: Vec<BTreeSet<(u128, u32)>>,
}

impl Prices {
    pub fn new(models: usize) -> Prices {
        Prices {
            sets: vec![BTreeSet::new(); models * CLASSES],
        }
    }

    pub fn insert(&mut self, groups: &mut [Group], id: u32) {
        let g = &groups[id as usize];
        if let Some(set) = set_of(g) {
            self.sets[set].insert((g.price, id));
            groups[id as usize].pset = set as u8;
        }
    }

    /// Takes a group out of `set` (`NO_SET`: it is in none), where it stood at `price`.
    pub fn remove_at(&mut self, groups: &mut [Group], id: u32, set: u8, price: u128) {
        if set != NO_SET {
            self.sets[set as usize].remove(&(price, id));
            groups[id as usize].pset = NO_SET;
        }
    }

    pub fn heap_bytes(&self) -> usize {
        // A B-tree node holds up to 11 entries of 20 bytes plus overhead; count ~40 bytes each.
        self.sets.iter().map(|s| s.len() * 40).sum()
    }
}

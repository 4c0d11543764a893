//! The matching engine (docs/matching.md).
//!
//! Pairs a request with the best eligible GPUs on one host, by the request's policy
//! (lowest price, best experience, or a blend), and reserves them in the same call, so no
//! GPU is ever booked twice. Supply is indexed by GPU model in kd-trees over positions on
//! the sphere whose nodes carry aggregates (most free GPUs, lowest price, best tier, most
//! memory, countries present) for branch-and-bound search; every state change updates one
//! path of one tree. A plain scan over every group ([`Matcher::book_scan`]) answers the
//! same questions the same way: it is the property tests' oracle and the benchmark's
//! baseline. When nothing matches, [`Matcher::explain`] says which constraint ran out.
//!
//! Pure: no I/O, no clock (time is an argument), no randomness.

mod explain;
mod geo;
mod index;
pub mod latency;
mod prices;
mod search;

use std::collections::{BinaryHeap, HashMap};

use gpumesh_types::{Amount, CATALOG, Country, GeoPoint, GpuModel};
pub use gpumesh_types::{GpuSelector, ImagePolicy, RankPolicy};
use serde::{Deserialize, Serialize};

pub use explain::{Explanation, NearMiss, Stage};
pub use latency::{Coord, LatencyParams};

use crate::geo::Unit;
use crate::index::Tree;
use crate::prices::{NO_SET, Prices};

/// A host inside the matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HostId(pub u32);

/// A group (GPUs of one model on one host) inside the matcher.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u32);

/// A reservation: GPUs held for one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ReservationId {
    slot: u32,
    generation: u32,
}

/// A node whose round-trip times can be measured: a host, or an anchor (a checker or
/// any other point that measures).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NetNode {
    Host(HostId),
    Anchor(u32),
}

impl NetNode {
    /// A number unique to the node, which picks the direction a coordinate moves in when
    /// it coincides with this node's, so that updates stay deterministic.
    fn tiebreak(self) -> u64 {
        match self {
            NetNode::Host(h) => h.0 as u64 * 2,
            NetNode::Anchor(x) => x as u64 * 2 + 1,
        }
    }
}

/// The catalog models a selector accepts, as a bitmask over `GpuModel as usize`.
pub fn models_mask(selector: GpuSelector) -> u32 {
    CATALOG
        .iter()
        .filter(|s| match selector {
            GpuSelector::Model(m) => s.model == m,
            GpuSelector::Class(c) => s.class == c,
        })
        .fold(0, |mask, s| mask | 1 << s.model as usize)
}

/// A request: an AI job (model or class, memory, count, price, tier, countries) or a
/// gaming session (a player's place, a round-trip bound, a class, a price, the game image).
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub gpu: GpuSelector,
    pub count: u16,
    pub min_vram_mib: u32,
    pub near: GeoPoint,
    pub max_price_per_gpu_hour: Amount,
    /// Worst acceptable tier (1 is best); 3 accepts all.
    pub max_tier: u8,
    /// Only these countries, when not empty.
    pub countries: Vec<Country>,
    pub exclude_countries: Vec<Country>,
    /// Round-trip bound in ms (gaming), or none.
    pub max_rtt_ms: Option<f64>,
    pub image: Option<String>,
    pub image_policy: ImagePolicy,
    pub policy: RankPolicy,
}

impl Request {
    /// An AI job for `count` GPUs of one model, nearest first within the price cap.
    pub fn model(model: GpuModel, count: u16, near: GeoPoint, cap: Amount) -> Request {
        Request {
            gpu: GpuSelector::Model(model),
            count,
            min_vram_mib: 0,
            near,
            max_price_per_gpu_hour: cap,
            max_tier: 3,
            countries: Vec::new(),
            exclude_countries: Vec::new(),
            max_rtt_ms: None,
            image: None,
            image_policy: ImagePolicy::Any,
            policy: RankPolicy::Balanced,
        }
    }
}

/// GPUs reserved for a request.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Booking {
    pub reservation: ReservationId,
    pub host: HostId,
    pub group: GroupId,
    /// Bit i: the host's GPU `first_index + i` is reserved.
    pub mask: u64,
    pub first_index: u16,
    pub distance_km: f64,
    pub rtt_ms: f64,
    pub price_per_gpu_hour: Amount,
    pub score: f64,
}

impl Booking {
    /// The host's indices of the reserved GPUs.
    pub fn gpu_indices(&self) -> impl Iterator<Item = u16> + '_ {
        (0..64u16)
            .filter(|i| self.mask & (1 << i) != 0)
            .map(|i| self.first_index + i)
    }
}

/// Nothing matched; [`Matcher::explain`] says why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unmatched;

/// Why a reservation or an update was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatcherError {
    UnknownHost(HostId),
    UnknownGroup(GroupId),
    UnknownReservation,
    /// Some of the GPUs are not free (or not in the group).
    NotFree(GroupId),
    TooManyGpus,
    TooManyCountries,
}

/// What a host offers: its place, price, tier and images.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSpec {
    pub point: GeoPoint,
    pub country: Country,
    pub price_per_gpu_hour: Amount,
    /// 1 (best) to 3.
    pub tier: u8,
    pub images: Vec<String>,
}

/// GPUs of one model on a host: `count` GPUs from host index `first_index` on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    pub model: GpuModel,
    pub vram_mib: u32,
    pub first_index: u16,
    pub count: u8,
}

/// A group as the index sees it: what filtering, ranking and its trees need, in 96 bytes.
#[derive(Clone, Debug)]
pub(crate) struct Group {
    pub unit: Unit,
    pub price: u128,
    /// `price as f64`, and that rounded down to `f32`, kept so that rewriting an item
    /// converts nothing.
    pub price_f: f64,
    pub price_lo: f32,
    pub free: u64,
    /// Bit i set: the GPU may serve (its stake is in place, or none is required).
    pub enabled: u64,
    /// The host's images as bits (image id modulo 64).
    pub image_bits: u64,
    pub host: u32,
    pub vram_mib: u32,
    /// While available: the leaves holding the group's items in its model's and its class's
    /// trees, and its places there. Once out of them: the leaves it left, where it goes
    /// back if they still cover its point (`index::NONE`: find its place from the root).
    pub leaf: [u32; 2],
    pub pos: [u8; 2],
    pub first_index: u16,
    pub gpus: u8,
    pub model: GpuModel,
    pub tier: u8,
    pub country: u8,
    pub online: bool,
    /// Whether the group is in its trees.
    pub indexed: bool,
    /// The price set the group is in (`NO_SET` when unavailable).
    pub pset: u8,
}

fn image_bits(images: &[u32]) -> u64 {
    images.iter().fold(0, |bits, i| bits | 1 << (i % 64))
}

impl Group {
    /// GPUs that are free and may serve (a GPU whose stake is not in place may not).
    #[inline]
    pub fn servable(&self) -> u64 {
        self.free & self.enabled
    }

    #[inline]
    pub fn free_count(&self) -> u8 {
        self.servable().count_ones() as u8
    }

    #[inline]
    pub fn available(&self) -> bool {
        self.online && self.servable() != 0
    }

    fn full_mask(&self) -> u64 {
        if self.gpus >= 64 {
            u64::MAX
        } else {
            (1u64 << self.gpus) - 1
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Host {
    pub point: GeoPoint,
    pub unit: Unit,
    pub country: u8,
    pub tier: u8,
    pub online: bool,
    pub price: u128,
    /// Interned image ids, sorted.
    pub images: Box<[u32]>,
    pub groups: Vec<u32>,
    pub coord: Coord,
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    group: u32,
    mask: u64,
    /// `u64::MAX` once committed.
    expires_ms: u64,
    generation: u32,
    live: bool,
}

/// A host as a snapshot holds it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostSnapshot {
    pub spec: HostSpec,
    pub online: bool,
    pub coord: Coord,
    /// Each group with its free mask and its enabled mask.
    pub groups: Vec<(GroupSpec, u64, u64)>,
}

/// What [`Matcher::from_snapshot`] rebuilds from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    pub latency: LatencyParams,
    pub hosts: Vec<HostSnapshot>,
    /// Reservation slots: (group, mask, expiry, generation, live).
    pub reservations: Vec<(u32, u64, u64, u32, bool)>,
}

/// Anchors: measuring points with a place and a coordinate.
#[derive(Clone, Debug, Default)]
struct Anchors {
    points: Vec<(GeoPoint, [f64; 3], Coord)>,
    /// 3° cells of latitude and longitude → anchors inside.
    cells: HashMap<(i16, i16), Vec<u32>>,
}

/// The supply side of the network as matching sees it, and the reservations on it.
#[derive(Clone, Debug)]
pub struct Matcher {
    latency: LatencyParams,
    hosts: Vec<Host>,
    groups: Vec<Group>,
    trees: Vec<Tree>,
    prices: Prices,
    countries: Vec<Country>,
    country_index: HashMap<Country, u8>,
    images: HashMap<String, u32>,
    slots: Vec<Slot>,
    free_slots: Vec<u32>,
    expiries: BinaryHeap<std::cmp::Reverse<(u64, u32, u32)>>,
    anchors: Anchors,
    scratch: search::Scratch,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new(LatencyParams::default())
    }
}

impl Matcher {
    pub fn new(latency: LatencyParams) -> Matcher {
        Matcher {
            latency,
            hosts: Vec::new(),
            groups: Vec::new(),
            trees: (0..index::MODELS + index::CLASSES)
                .map(|t| Tree::new(usize::from(t >= index::MODELS)))
                .collect(),
            prices: Prices::new(CATALOG.len()),
            countries: Vec::new(),
            country_index: HashMap::new(),
            images: HashMap::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            expiries: BinaryHeap::new(),
            anchors: Anchors::default(),
            scratch: search::Scratch::default(),
        }
    }

    pub fn latency(&self) -> &LatencyParams {
        &self.latency
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn group_count(&self) -> usize {
        self.groups.len()
    }

    /// GPUs known, free or not.
    pub fn gpu_count(&self) -> usize {
        self.groups.iter().map(|g| g.gpus as usize).sum()
    }

    /// GPUs online and free.
    pub fn free_gpu_count(&self) -> usize {
        self.groups
            .iter()
            .filter(|g| g.online)
            .map(|g| g.free_count() as usize)
            .sum()
    }

    fn country_id(&mut self, country: Country) -> Result<u8, MatcherError> {
        if let Some(&id) = self.country_index.get(&country) {
            return Ok(id);
        }
        if self.countries.len() >= 256 {
            return Err(MatcherError::TooManyCountries);
        }
        let id = self.countries.len() as u8;
        self.countries.push(country);
        self.country_index.insert(country, id);
        Ok(id)
    }

    fn intern_images(&mut self, images: &[String]) -> Box<[u32]> {
        let mut ids: Vec<u32> = images
            .iter()
            .map(|name| {
                let next = self.images.len() as u32;
                *self.images.entry(name.clone()).or_insert(next)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids.into_boxed_slice()
    }

    /// Adds a host and its GPU groups; they are online and free.
    pub fn add_host(
        &mut self,
        spec: &HostSpec,
        groups: &[GroupSpec],
    ) -> Result<(HostId, Vec<GroupId>), MatcherError> {
        if groups.iter().any(|g| g.count == 0 || g.count > 64) {
            return Err(MatcherError::TooManyGpus);
        }
        let country = self.country_id(spec.country)?;
        let images = self.intern_images(&spec.images);
        let host_id = self.hosts.len() as u32;
        let unit = geo::unit(spec.point);
        let mut ids = Vec::with_capacity(groups.len());
        for g in groups {
            let id = self.groups.len() as u32;
            self.groups.push(Group {
                unit,
                price: spec.price_per_gpu_hour.0,
                price_f: spec.price_per_gpu_hour.0 as f64,
                price_lo: index::f32_below(spec.price_per_gpu_hour.0 as f64),
                free: if g.count >= 64 {
                    u64::MAX
                } else {
                    (1u64 << g.count) - 1
                },
                image_bits: image_bits(&images),
                enabled: u64::MAX,
                host: host_id,
                vram_mib: g.vram_mib,
                leaf: [index::NONE; 2],
                pos: [0; 2],
                first_index: g.first_index,
                gpus: g.count,
                model: g.model,
                tier: spec.tier.clamp(1, 3),
                country,
                online: true,
                indexed: false,
                pset: NO_SET,
            });
            ids.push(id);
        }
        self.hosts.push(Host {
            point: spec.point,
            unit,
            country,
            tier: spec.tier.clamp(1, 3),
            online: true,
            price: spec.price_per_gpu_hour.0,
            images,
            groups: ids.clone(),
            coord: Coord::default(),
        });
        for &id in &ids {
            self.reindex(id);
            self.prices.insert(&mut self.groups, id);
        }
        Ok((HostId(host_id), ids.into_iter().map(GroupId).collect()))
    }

    fn host_mut(&mut self, host: HostId) -> Result<&mut Host, MatcherError> {
        self.hosts
            .get_mut(host.0 as usize)
            .ok_or(MatcherError::UnknownHost(host))
    }

    /// Puts a group in its trees if it is available, takes it out if not, and otherwise
    /// refreshes its items there.
    fn reindex(&mut self, id: u32) {
        let g = &self.groups[id as usize];
        let (want, have) = (index::trees_of(g), g.indexed);
        match (want, have) {
            (Some(trees), true) => {
                for t in trees {
                    self.trees[t].refresh(&self.groups, id);
                }
            }
            (Some(trees), false) => {
                for t in trees {
                    self.trees[t].insert(&mut self.groups, id);
                }
                self.groups[id as usize].indexed = true;
            }
            (None, true) => self.unindex(id),
            (None, false) => {}
        }
    }

    /// Takes a group out of its trees.
    fn unindex(&mut self, id: u32) {
        let g = &self.groups[id as usize];
        if !g.indexed {
            return;
        }
        let trees = [g.model as usize, index::MODELS + g.model.class() as usize];
        for t in trees {
            self.trees[t].remove(&mut self.groups, id);
        }
        self.groups[id as usize].indexed = false;
    }

    /// Changes a group, then brings its tree and its price set up to date.
    fn change(&mut self, id: u32, f: impl FnOnce(&mut Group)) {
        let g = &mut self.groups[id as usize];
        let (set, price) = (g.pset, g.price);
        f(g);
        let moved = g.price != price;
        // Most bookings and releases keep a group in its price set at its price: the set
        // is touched only when its key changes.
        let reprice = moved || prices::set_of(g).map_or(NO_SET, |s| s as u8) != set;
        if moved {
            // Model trees split on price too: a new price is a new place in them, found
            // from the root.
            self.unindex(id);
            self.groups[id as usize].leaf[0] = index::NONE;
        }
        self.reindex(id);
        if reprice {
            self.prices.remove_at(&mut self.groups, id, set, price);
            self.prices.insert(&mut self.groups, id);
        }
    }

    /// Applies `f` to every group of the host.
    fn update_groups(&mut self, host: HostId, f: impl Fn(&mut Group)) -> Result<(), MatcherError> {
        let groups = std::mem::take(&mut self.host_mut(host)?.groups);
        for &g in &groups {
            self.change(g, &f);
        }
        self.hosts[host.0 as usize].groups = groups;
        Ok(())
    }

    /// Which of a group's GPUs may serve (bit i: GPU `first_index + i`); the others are
    /// kept out of matching, for instance until their stake is in place.
    pub fn set_enabled(&mut self, group: GroupId, mask: u64) -> Result<(), MatcherError> {
        self.groups
            .get(group.0 as usize)
            .ok_or(MatcherError::UnknownGroup(group))?;
        self.change(group.0, |g| g.enabled = mask);
        Ok(())
    }

    /// A host went offline or came back.
    pub fn set_online(&mut self, host: HostId, online: bool) -> Result<(), MatcherError> {
        self.host_mut(host)?.online = online;
        self.update_groups(host, |g| g.online = online)
    }

    pub fn set_price(&mut self, host: HostId, price: Amount) -> Result<(), MatcherError> {
        self.host_mut(host)?.price = price.0;
        self.update_groups(host, |g| {
            g.price = price.0;
            g.price_f = price.0 as f64;
            g.price_lo = index::f32_below(g.price_f);
        })
    }

    pub fn set_tier(&mut self, host: HostId, tier: u8) -> Result<(), MatcherError> {
        let tier = tier.clamp(1, 3);
        self.host_mut(host)?.tier = tier;
        self.update_groups(host, |g| g.tier = tier)
    }

    pub fn set_images(&mut self, host: HostId, images: &[String]) -> Result<(), MatcherError> {
        let ids = self.intern_images(images);
        let bits = image_bits(&ids);
        self.host_mut(host)?.images = ids;
        self.update_groups(host, |g| g.image_bits = bits)
    }

    /// Moves a host (it re-registered from elsewhere).
    pub fn set_location(
        &mut self,
        host: HostId,
        point: GeoPoint,
        country: Country,
    ) -> Result<(), MatcherError> {
        let country = self.country_id(country)?;
        let unit = geo::unit(point);
        let h = self.host_mut(host)?;
        h.point = point;
        h.unit = unit;
        h.country = country;
        let groups = h.groups.clone();
        for g in groups {
            // Out of its trees at the old place, into them at the new, from the root.
            self.unindex(g);
            let group = &mut self.groups[g as usize];
            group.unit = unit;
            group.country = country;
            group.leaf = [index::NONE; 2];
            self.reindex(g);
        }
        Ok(())
    }

    // ---- reservations ----

    fn new_slot(&mut self, group: u32, mask: u64, expires_ms: u64) -> ReservationId {
        let slot = match self.free_slots.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot {
                    group: 0,
                    mask: 0,
                    expires_ms: 0,
                    generation: 0,
                    live: false,
                });
                self.slots.len() as u32 - 1
            }
        };
        let s = &mut self.slots[slot as usize];
        s.generation = s.generation.wrapping_add(1);
        *s = Slot {
            group,
            mask,
            expires_ms,
            generation: s.generation,
            live: true,
        };
        if expires_ms != u64::MAX {
            self.expiries
                .push(std::cmp::Reverse((expires_ms, slot, s.generation)));
        }
        ReservationId {
            slot,
            generation: s.generation,
        }
    }

    fn slot(&self, id: ReservationId) -> Result<&Slot, MatcherError> {
        self.slots
            .get(id.slot as usize)
            .filter(|s| s.live && s.generation == id.generation)
            .ok_or(MatcherError::UnknownReservation)
    }

    fn take_gpus(&mut self, group: u32, mask: u64) {
        self.change(group, |g| g.free &= !mask);
    }

    /// Reserves exactly these GPUs (restoring from a store). `expires_ms` of `None` holds
    /// them until released.
    pub fn reserve_exact(
        &mut self,
        group: GroupId,
        mask: u64,
        expires_ms: Option<u64>,
    ) -> Result<ReservationId, MatcherError> {
        let g = self
            .groups
            .get(group.0 as usize)
            .ok_or(MatcherError::UnknownGroup(group))?;
        if mask == 0 || mask & !g.full_mask() != 0 || g.free & mask != mask {
            return Err(MatcherError::NotFree(group));
        }
        self.take_gpus(group.0, mask);
        Ok(self.new_slot(group.0, mask, expires_ms.unwrap_or(u64::MAX)))
    }

    /// The reservation is no longer at risk of expiring (its lease started).
    pub fn commit(&mut self, id: ReservationId) -> Result<(), MatcherError> {
        self.slot(id)?;
        self.slots[id.slot as usize].expires_ms = u64::MAX;
        Ok(())
    }

    /// Frees the reservation's GPUs.
    pub fn release(&mut self, id: ReservationId) -> Result<(), MatcherError> {
        let slot = *self.slot(id)?;
        self.slots[id.slot as usize].live = false;
        self.free_slots.push(id.slot);
        self.change(slot.group, |g| g.free |= slot.mask);
        Ok(())
    }

    /// Frees reservations whose time-to-live passed and returns them.
    pub fn expire(&mut self, now_ms: u64) -> Vec<ReservationId> {
        let mut expired = Vec::new();
        while let Some(std::cmp::Reverse((at, slot, generation))) = self.expiries.peek().copied() {
            if at > now_ms {
                break;
            }
            self.expiries.pop();
            let id = ReservationId { slot, generation };
            if self.slot(id).is_ok_and(|s| s.expires_ms == at) && self.release(id).is_ok() {
                expired.push(id);
            }
        }
        expired
    }

    /// The GPUs a reservation holds, as (group, mask).
    pub fn reservation(&self, id: ReservationId) -> Option<(GroupId, u64)> {
        self.slot(id).ok().map(|s| (GroupId(s.group), s.mask))
    }

    // ---- network coordinates ----

    /// Adds a measuring point (a checker, say) at `point`.
    pub fn add_anchor(&mut self, point: GeoPoint) -> u32 {
        let id = self.anchors.points.len() as u32;
        self.anchors
            .points
            .push((point, geo::unit64(point), Coord::default()));
        self.anchors
            .cells
            .entry(anchor_cell(point))
            .or_default()
            .push(id);
        id
    }

    /// Where a node is in network coordinates.
    pub fn coord(&self, node: NetNode) -> Option<Coord> {
        match node {
            NetNode::Host(h) => self.hosts.get(h.0 as usize).map(|h| h.coord),
            NetNode::Anchor(a) => self.anchors.points.get(a as usize).map(|a| a.2),
        }
    }

    fn coord_mut(&mut self, node: NetNode) -> Option<&mut Coord> {
        match node {
            NetNode::Host(h) => self.hosts.get_mut(h.0 as usize).map(|h| &mut h.coord),
            NetNode::Anchor(a) => self.anchors.points.get_mut(a as usize).map(|a| &mut a.2),
        }
    }

    /// A round trip that `node` reports to `peer`: only `node`'s coordinate moves, as in
    /// Vivaldi where each node updates its own. For measurements one end reports alone,
    /// which must not move the other end.
    pub fn observe_from(&mut self, node: NetNode, peer: NetNode, rtt_ms: f64) -> bool {
        let Some(other) = self.coord(peer) else {
            return false;
        };
        match self.coord_mut(node) {
            Some(c) => {
                c.observe(&other, rtt_ms as f32, peer.tiebreak());
                true
            }
            None => false,
        }
    }

    /// A measured round trip between two nodes: both coordinates move (Vivaldi).
    pub fn observe(&mut self, a: NetNode, b: NetNode, rtt_ms: f64) -> bool {
        let (Some(ca), Some(cb)) = (self.coord(a), self.coord(b)) else {
            return false;
        };
        if let Some(c) = self.coord_mut(a) {
            c.observe(&cb, rtt_ms as f32, b.tiebreak());
        }
        if let Some(c) = self.coord_mut(b) {
            c.observe(&ca, rtt_ms as f32, a.tiebreak());
        }
        true
    }

    /// The anchor a request at `point` is measured from: the nearest within the radius.
    fn anchor_for(&self, point: GeoPoint, q: &[f64; 3]) -> Option<u32> {
        if self.anchors.points.is_empty() {
            return None;
        }
        let (ci, cj) = anchor_cell(point);
        let mut best: Option<(f64, u32)> = None;
        for di in -1..=1 {
            for dj in -1..=1 {
                let Some(ids) = self.anchors.cells.get(&(ci + di, wrap_lon_cell(cj + dj))) else {
                    continue;
                };
                for &id in ids {
                    let (_, u, c) = &self.anchors.points[id as usize];
                    if c.error > self.latency.max_coordinate_error {
                        continue;
                    }
                    let d = geo::chord_km(geo::chord(q, &[u[0] as f32, u[1] as f32, u[2] as f32]));
                    if d <= self.latency.anchor_radius_km
                        && best.is_none_or(|(bd, bid)| (d, id) < (bd, bid))
                    {
                        best = Some((d, id));
                    }
                }
            }
        }
        best.map(|(_, id)| id)
    }

    /// Everything needed to rebuild the matcher: hosts, groups with their free GPUs, and
    /// the reservations.
    pub fn snapshot(&self) -> Snapshot {
        let image_names: HashMap<u32, &String> = self.images.iter().map(|(k, v)| (*v, k)).collect();
        let hosts = self
            .hosts
            .iter()
            .map(|h| HostSnapshot {
                spec: HostSpec {
                    point: h.point,
                    country: self.countries[h.country as usize],
                    price_per_gpu_hour: Amount(h.price),
                    tier: h.tier,
                    images: h
                        .images
                        .iter()
                        .filter_map(|i| image_names.get(i).map(|s| (*s).clone()))
                        .collect(),
                },
                online: h.online,
                coord: h.coord,
                groups: h
                    .groups
                    .iter()
                    .map(|&g| {
                        let g = &self.groups[g as usize];
                        (
                            GroupSpec {
                                model: g.model,
                                vram_mib: g.vram_mib,
                                first_index: g.first_index,
                                count: g.gpus,
                            },
                            g.free,
                            g.enabled,
                        )
                    })
                    .collect(),
            })
            .collect();
        let reservations = self
            .slots
            .iter()
            .map(|s| (s.group, s.mask, s.expires_ms, s.generation, s.live))
            .collect();
        Snapshot {
            latency: self.latency,
            hosts,
            reservations,
        }
    }

    /// Rebuilds a matcher from a snapshot, building each model's tree in bulk.
    pub fn from_snapshot(snapshot: &Snapshot) -> Result<Matcher, MatcherError> {
        let mut m = Matcher::new(snapshot.latency);
        m.hosts.reserve(snapshot.hosts.len());
        for h in &snapshot.hosts {
            let country = m.country_id(h.spec.country)?;
            let images = m.intern_images(&h.spec.images);
            let host = m.hosts.len() as u32;
            let unit = geo::unit(h.spec.point);
            let tier = h.spec.tier.clamp(1, 3);
            let mut ids = Vec::with_capacity(h.groups.len());
            let bits = image_bits(&images);
            for (g, free, enabled) in &h.groups {
                ids.push(m.groups.len() as u32);
                m.groups.push(Group {
                    unit,
                    price: h.spec.price_per_gpu_hour.0,
                    price_f: h.spec.price_per_gpu_hour.0 as f64,
                    price_lo: index::f32_below(h.spec.price_per_gpu_hour.0 as f64),
                    free: *free,
                    image_bits: bits,
                    enabled: *enabled,
                    host,
                    vram_mib: g.vram_mib,
                    leaf: [index::NONE; 2],
                    pos: [0; 2],
                    first_index: g.first_index,
                    gpus: g.count,
                    model: g.model,
                    tier,
                    country,
                    online: h.online,
                    indexed: false,
                    pset: NO_SET,
                });
            }
            m.hosts.push(Host {
                point: h.spec.point,
                unit,
                country,
                tier,
                online: h.online,
                price: h.spec.price_per_gpu_hour.0,
                images,
                groups: ids,
                coord: h.coord,
            });
        }
        let mut by_tree: Vec<Vec<u32>> = vec![Vec::new(); m.trees.len()];
        for (i, g) in m.groups.iter_mut().enumerate() {
            if let Some(trees) = index::trees_of(g) {
                for t in trees {
                    by_tree[t].push(i as u32);
                }
                g.indexed = true;
            }
        }
        for (t, ids) in by_tree.into_iter().enumerate() {
            m.trees[t] = Tree::build(&mut m.groups, ids, usize::from(t >= index::MODELS));
        }
        for id in 0..m.groups.len() as u32 {
            m.prices.insert(&mut m.groups, id);
        }
        for (slot, &(group, mask, expires_ms, generation, live)) in
            snapshot.reservations.iter().enumerate()
        {
            m.slots.push(Slot {
                group,
                mask,
                expires_ms,
                generation,
                live,
            });
            if !live {
                m.free_slots.push(slot as u32);
            } else if expires_ms != u64::MAX {
                m.expiries
                    .push(std::cmp::Reverse((expires_ms, slot as u32, generation)));
            }
        }
        Ok(m)
    }

    /// Search work since the last call: (tree nodes expanded, groups evaluated).
    pub fn take_work(&mut self) -> (u64, u64) {
        let work = (self.scratch.nodes, self.scratch.groups);
        self.scratch.nodes = 0;
        self.scratch.groups = 0;
        work
    }

    /// Bytes this matcher holds on the heap (capacity-based), for memory budgets.
    pub fn heap_bytes(&self) -> usize {
        use std::mem::size_of;
        let hosts = self.hosts.capacity() * size_of::<Host>()
            + self
                .hosts
                .iter()
                .map(|h| h.images.len() * 4 + h.groups.capacity() * 4)
                .sum::<usize>();
        let groups = self.groups.capacity() * size_of::<Group>();
        let trees =
            self.trees.iter().map(Tree::heap_bytes).sum::<usize>() + self.prices.heap_bytes();
        let slots = self.slots.capacity() * size_of::<Slot>() + self.free_slots.capacity() * 4;
        let expiries = self.expiries.capacity() * size_of::<(u64, u32, u32)>();
        let images = self.images.capacity() * (size_of::<(String, u32)>() + 32);
        let anchors = self.anchors.points.capacity() * size_of::<(GeoPoint, [f64; 3], Coord)>();
        hosts + groups + trees + slots + expiries + images + anchors + self.scratch.heap_bytes()
    }
}

fn anchor_cell(point: GeoPoint) -> (i16, i16) {
    (
        (point.lat / 3.0).floor() as i16,
        wrap_lon_cell((point.lon / 3.0).floor() as i16),
    )
}

/// Longitude cells run from -60 to 59; step across the antimeridian.
fn wrap_lon_cell(j: i16) -> i16 {
    (j + 60).rem_euclid(120) - 60
}

#[cfg(test)]
mod tests;

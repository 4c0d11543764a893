//! Eligibility, scores, the indexed branch-and-bound search and the plain scan.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use crate::geo;
use crate::index::{self, Agg, Item, Node};
use crate::prices::{CLASSES, class_serves};
use crate::{Booking, GpuSelector, Group, ImagePolicy, Matcher, RankPolicy, Request, Unmatched};
use gpumesh_types::EARTH_RADIUS_KM;

/// Tier steps cost this much in the experience score (ms) and in the balanced score.
const TIER_MS: f64 = 5.0;
const TIER_BALANCED: f64 = 0.05;
/// Round-trip reference for the balanced score when the request sets no bound.
const RTT_REFERENCE_MS: f64 = 100.0;

/// How far from the best score a candidate may be and still win by packing better.
fn slack(policy: RankPolicy) -> f64 {
    match policy {
        RankPolicy::Price => 0.0,
        RankPolicy::Experience => 2.0,
        RankPolicy::Balanced => 0.01,
    }
}

/// A request reduced to what the hot loop compares.
#[derive(Clone, Debug)]
pub(crate) struct Compiled {
    pub models: u32,
    pub gpu: GpuSelector,
    pub count: u8,
    pub min_vram: u32,
    pub cap: u128,
    pub cap_f: f64,
    pub max_tier: u8,
    pub allow: Option<[u64; 4]>,
    /// `allow` folded into the aggregates' 64-bit country filter.
    pub allow_bits: u64,
    pub deny: [u64; 4],
    /// The cap as `f64`, to compare with the aggregates' prices.
    pub cap_as_f64: f64,
    /// Which of the aggregates' lowest prices bounds this request (1: it wants at least
    /// `index::BIG_FREE` GPUs).
    pub price_bound: usize,
    /// Required image id; `Some(None)` when the image is required but unknown to all hosts.
    pub image: Option<Option<u32>>,
    /// The required image's bit in the hosts' image filter (0 when none is required).
    pub image_bit: u64,
    /// With at most 64 images known, each has its own bit and the filter is exact.
    pub image_bits_exact: bool,
    pub max_rtt: f64,
    pub rtt_ref: f64,
    pub q: [f64; 3],
    pub anchor: Option<u32>,
    pub policy: RankPolicy,
}

/// One eligible group with its score.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Candidate {
    pub group: u32,
    pub score: f64,
    pub price: u128,
    pub rtt: f64,
    pub km: f64,
    pub leftover: u8,
}

impl Candidate {
    /// Tightest fit first, then score, price, round-trip time and group id: a total order.
    fn order(&self, other: &Candidate) -> Ordering {
        self.leftover
            .cmp(&other.leftover)
            .then(self.score.total_cmp(&other.score))
            .then(self.price.cmp(&other.price))
            .then(self.rtt.total_cmp(&other.rtt))
            .then(self.group.cmp(&other.group))
    }
}

/// Reused buffers, so that a search allocates nothing once warm.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scratch {
    /// Subtrees to visit, as [`heap_entry`] packs them.
    heap: BinaryHeap<Reverse<u64>>,
    candidates: Vec<Candidate>,
    /// Work counters since the last `take_work`: nodes expanded, groups evaluated.
    pub nodes: u64,
    pub groups: u64,
}

impl Scratch {
    pub fn heap_bytes(&self) -> usize {
        self.heap.capacity() * 8 + self.candidates.capacity() * std::mem::size_of::<Candidate>()
    }
}

/// A subtree waiting in the search's heap: its lower bound rounded down to `f32` in the
/// high half, its node in the low half. Non-negative floats order as their bits do, so
/// entries order by bound (then node) as plain integers, and the rounded bound is still a
/// lower bound.
#[inline]
fn heap_entry(bound: f64, node: u32) -> u64 {
    u64::from(index::f32_below(bound.max(0.0)).to_bits()) << 32 | u64::from(node)
}

#[inline]
fn heap_bound(entry: u64) -> f64 {
    f64::from(f32::from_bits((entry >> 32) as u32))
}

#[inline]
fn country_bit(set: &[u64; 4], c: u8) -> bool {
    set[(c >> 6) as usize] & (1 << (c & 63)) != 0
}

impl Matcher {
    /// Prepares a request; `None` when it cannot match anything at all (a country or image
    /// that no host has ever named).
    pub(crate) fn compile(&self, r: &Request, image_required: bool) -> Compiled {
        let q = geo::unit64(r.near);
        let allow = (!r.countries.is_empty()).then(|| {
            let mut set = [0u64; 4];
            for c in &r.countries {
                if let Some(&id) = self.country_index.get(c) {
                    set[(id >> 6) as usize] |= 1 << (id & 63);
                }
            }
            set
        });
        let mut deny = [0u64; 4];
        for c in &r.exclude_countries {
            if let Some(&id) = self.country_index.get(c) {
                deny[(id >> 6) as usize] |= 1 << (id & 63);
            }
        }
        let image = if image_required {
            Some(
                r.image
                    .as_ref()
                    .and_then(|name| self.images.get(name).copied()),
            )
        } else {
            None
        };
        let image_bit = match image {
            Some(Some(id)) => 1u64 << (id % 64),
            _ => 0,
        };
        // Country i is bit i % 64 of the aggregates' filter: the four words folded.
        let allow_bits = allow.map_or(u64::MAX, |a| a[0] | a[1] | a[2] | a[3]);
        Compiled {
            image_bits_exact: self.images.len() <= 64,
            allow_bits,
            cap_as_f64: r.max_price_per_gpu_hour.0 as f64,
            price_bound: usize::from(r.count >= u16::from(index::BIG_FREE)),
            image_bit,
            models: crate::models_mask(r.gpu),
            gpu: r.gpu,
            count: r.count.min(255) as u8,
            min_vram: r.min_vram_mib,
            cap: r.max_price_per_gpu_hour.0,
            cap_f: (r.max_price_per_gpu_hour.0 as f64).max(1.0),
            max_tier: r.max_tier.clamp(1, 3),
            allow,
            deny,
            image,
            max_rtt: r.max_rtt_ms.unwrap_or(f64::INFINITY),
            rtt_ref: r.max_rtt_ms.unwrap_or(RTT_REFERENCE_MS).max(1.0),
            q,
            anchor: self.anchor_for(r.near, &q),
            policy: r.policy,
        }
    }

    /// Distance and estimated round-trip time from the request to a group's host.
    #[inline]
    pub(crate) fn rtt(&self, c: &Compiled, g: &Group) -> (f64, f64) {
        self.rtt_at(c, geo::chord(&c.q, &g.unit), g.host)
    }

    /// Distance and estimated round-trip time to a point of a host; the host is read only
    /// when the request has an anchor to measure from.
    #[inline]
    fn rtt_at(&self, c: &Compiled, chord: f64, host: u32) -> (f64, f64) {
        let km = geo::chord_km(chord);
        let geo_rtt = self.latency.geo_rtt_ms(km);
        let Some(anchor) = c.anchor else {
            return (km, geo_rtt);
        };
        let host = &self.hosts[host as usize].coord;
        if host.error > self.latency.max_coordinate_error {
            return (km, geo_rtt);
        }
        let measured = self.anchors.points[anchor as usize].2.rtt_ms(host) as f64;
        (km, measured.max(self.latency.physical_rtt_ms(km)))
    }

    #[inline]
    fn score(c: &Compiled, price: f64, rtt: f64, tier: u8) -> f64 {
        let tier_steps = (tier.saturating_sub(1)) as f64;
        match c.policy {
            RankPolicy::Price => price / c.cap_f,
            RankPolicy::Experience => rtt + TIER_MS * tier_steps,
            RankPolicy::Balanced => {
                0.5 * (price / c.cap_f) + 0.5 * (rtt / c.rtt_ref) + TIER_BALANCED * tier_steps
            }
        }
    }

    #[inline]
    /// Whether the item's own facts allow it; a required image is checked against the
    /// item's image filter only, which is exact with at most 64 images known (otherwise
    /// [`Self::judge_eligible`] asks the host).
    fn eligible(c: &Compiled, f: &Item) -> bool {
        c.models & (1 << f.model) != 0
            && f.free >= c.count
            && f.vram >= c.min_vram
            && f.price <= c.cap
            && f.tier <= c.max_tier
            && c.allow.is_none_or(|a| country_bit(&a, f.country))
            && !country_bit(&c.deny, f.country)
            && match c.image {
                None => true,
                Some(None) => false,
                Some(Some(_)) => f.image_bits & c.image_bit != 0,
            }
    }

    /// Judges an online group of a wanted model from its leaf item and the chord from the
    /// request to it; the scan and the index both come here, so they judge alike.
    #[inline]
    fn judge(&self, c: &Compiled, f: &Item, chord: f64) -> Option<Candidate> {
        if !Self::eligible(c, f) {
            return None;
        }
        self.judge_eligible(c, f, chord)
    }

    /// What is left to judge of an item whose own facts are [`Self::eligible`]: the
    /// host's image list when the image filter is not exact, and the round trip. The host
    /// is read only for these, so most items never touch their group.
    #[inline]
    fn judge_eligible(&self, c: &Compiled, f: &Item, chord: f64) -> Option<Candidate> {
        let id = f.group;
        let needs_host = (c.image.is_some() && !c.image_bits_exact) || c.anchor.is_some();
        let host = if needs_host {
            self.groups[id as usize].host
        } else {
            0
        };
        if let Some(Some(img)) = c.image
            && !c.image_bits_exact
            && self.hosts[host as usize]
                .images
                .binary_search(&img)
                .is_err()
        {
            return None;
        }
        let (km, rtt) = self.rtt_at(c, chord, host);
        if rtt > c.max_rtt {
            return None;
        }
        Some(Candidate {
            group: id,
            score: Self::score(c, f.price_f, rtt, f.tier),
            price: f.price,
            rtt,
            km,
            leftover: f.free - c.count,
        })
    }

    #[inline]
    fn candidate(&self, c: &Compiled, id: u32) -> Option<Candidate> {
        let g = &self.groups[id as usize];
        if c.models & (1 << g.model as usize) == 0 || !g.online {
            return None;
        }
        self.judge(c, &Item::of(g, id), geo::chord(&c.q, &g.unit))
    }

    /// The least round-trip time a host at least `km` away can be estimated at: the
    /// geographic model's for a request without an anchor (it uses that model for every
    /// host), otherwise only physics; lowered a little against rounding.
    #[inline]
    fn rtt_bound(&self, c: &Compiled, km: f64) -> f64 {
        let rtt = if c.anchor.is_none() {
            self.latency.geo_rtt_ms(km)
        } else {
            self.latency.physical_rtt_ms(km)
        };
        rtt * (1.0 - 1e-12) - 1e-9
    }

    /// Whether a subtree may hold an eligible group, and the least score it could give.
    #[inline]
    fn bound(&self, c: &Compiled, n: &Node) -> Option<f64> {
        let a: &Agg = &n.agg;
        if a.max_free < c.count
            || (a.models as u32) & c.models == 0
            || a.max_vram < c.min_vram
            || f64::from(a.min_price[c.price_bound]) > c.cap_as_f64
            || a.best_tier > c.max_tier
            || a.images & c.image_bit != c.image_bit
            || a.countries & c.allow_bits == 0
        {
            return None;
        }
        // The chord times the radius is at most the great-circle distance (asin x ≥ x),
        // a bound that needs no arcsine.
        let rtt = self.rtt_bound(c, EARTH_RADIUS_KM * geo::box_chord(&c.q, &n.lo, &n.hi));
        if rtt > c.max_rtt {
            return None;
        }
        let score = Self::score(c, f64::from(a.min_price[c.price_bound]), rtt, a.best_tier);
        Some(score * (1.0 - 1e-12) - 1e-12)
    }

    /// Picks from the candidates within the slack of the best score.
    fn select(policy: RankPolicy, candidates: &[Candidate]) -> Option<Candidate> {
        let best = candidates.iter().map(|c| c.score).min_by(f64::total_cmp)?;
        let limit = best + slack(policy);
        candidates
            .iter()
            .filter(|c| c.score <= limit)
            .min_by(|a, b| a.order(b))
            .copied()
    }

    /// The indexed search.
    pub(crate) fn search(&mut self, c: &Compiled) -> Option<Candidate> {
        if c.image == Some(None) {
            return None;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.heap.clear();
        scratch.candidates.clear();
        let margin = slack(c.policy);
        let mut best = f64::INFINITY;
        // The least round-trip time any host can have for this request.
        let rtt_floor = if c.anchor.is_none() {
            self.latency.geo_rtt_ms(0.0)
        } else {
            0.0
        };
        if c.policy == RankPolicy::Price && c.max_rtt.is_infinite() {
            self.walk_prices(c, &mut scratch);
            let chosen = Self::select(c.policy, &scratch.candidates);
            self.scratch = scratch;
            return chosen;
        }
        // Only these rankings or a round-trip bound make the distance worth bounding.
        let distance_counts = c.policy != RankPolicy::Price || c.max_rtt.is_finite();
        // A request for a model searches that model's tree; one for a class, the class's.
        let tree = match c.gpu {
            GpuSelector::Model(m) => m as usize,
            GpuSelector::Class(class) => index::MODELS + class as usize,
        };
        let tree = &self.trees[tree];
        if let Some(lb) = tree.nodes.first().and_then(|root| self.bound(c, root)) {
            scratch.heap.push(Reverse(heap_entry(lb, 0)));
        }
        while let Some(Reverse(entry)) = scratch.heap.pop() {
            if heap_bound(entry) > best + margin {
                break;
            }
            // Walk down the better child while it is no worse than anything in the heap;
            // the other child waits in the heap. Same order as popping both, fewer heap
            // operations.
            let mut node = entry as u32;
            loop {
                let n = &tree.nodes[node as usize];
                scratch.nodes += 1;
                if n.is_leaf() {
                    let items = &tree.leaves[n.leaf() as usize].items;
                    scratch.groups += items.len() as u64;
                    for item in items {
                        // The cheap checks first: the item's own facts, then price and
                        // tier against the best so far.
                        if !Self::eligible(c, item)
                            || Self::score(c, item.price_f, rtt_floor, item.tier) > best + margin
                        {
                            continue;
                        }
                        // The chord's bound on the distance needs no arcsine; the exact
                        // estimate is never below it.
                        let chord = geo::chord(&c.q, &item.unit);
                        if distance_counts {
                            let rtt = self.rtt_bound(c, EARTH_RADIUS_KM * chord);
                            if rtt > c.max_rtt
                                || Self::score(c, item.price_f, rtt, item.tier) > best + margin
                            {
                                continue;
                            }
                        }
                        if let Some(cand) = self.judge_eligible(c, item, chord)
                            && cand.score <= best + margin
                        {
                            best = best.min(cand.score);
                            scratch.candidates.push(cand);
                        }
                    }
                    break;
                }
                let [l, r] = n.children();
                let bl = self
                    .bound(c, &tree.nodes[l as usize])
                    .filter(|&b| b <= best + margin);
                let br = self
                    .bound(c, &tree.nodes[r as usize])
                    .filter(|&b| b <= best + margin);
                let (next, next_bound, other) = match (bl, br) {
                    (None, None) => break,
                    (Some(b), None) => (l, b, None),
                    (None, Some(b)) => (r, b, None),
                    (Some(x), Some(y)) if x <= y => (l, x, Some((r, y))),
                    (Some(x), Some(y)) => (r, y, Some((l, x))),
                };
                if let Some((o, ob)) = other {
                    scratch.heap.push(Reverse(heap_entry(ob, o)));
                }
                let next_entry = heap_entry(next_bound, next);
                if scratch
                    .heap
                    .peek()
                    .is_some_and(|Reverse(top)| next_entry > *top)
                {
                    scratch.heap.push(Reverse(next_entry));
                    break;
                }
                node = next;
            }
        }
        let chosen = Self::select(c.policy, &scratch.candidates);
        self.scratch = scratch;
        chosen
    }

    /// Cheapest first: in each price set that can hold the count, take groups in ascending
    /// price while their score can still be the best, and keep the eligible ones.
    fn walk_prices(&self, c: &Compiled, scratch: &mut Scratch) {
        let mut best = f64::INFINITY;
        for (set, groups) in self.prices.sets.iter().enumerate() {
            let (model, class) = (set / CLASSES, set % CLASSES);
            if c.models & (1 << model) == 0 || !class_serves(class, c.count) {
                continue;
            }
            for &(price, id) in groups {
                if price > c.cap || Self::score(c, price as f64, 0.0, 1) > best {
                    break;
                }
                scratch.groups += 1;
                if let Some(cand) = self.candidate(c, id) {
                    best = best.min(cand.score);
                    scratch.candidates.push(cand);
                }
            }
        }
    }

    /// The plain scan: every group of the requested models, the same rules.
    pub(crate) fn scan(&mut self, c: &Compiled) -> Option<Candidate> {
        if c.image == Some(None) {
            return None;
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.candidates.clear();
        for (id, g) in self.groups.iter().enumerate() {
            if c.models & (1 << g.model as usize) == 0 {
                continue;
            }
            if let Some(cand) = self.candidate(c, id as u32) {
                scratch.candidates.push(cand);
            }
        }
        let chosen = Self::select(c.policy, &scratch.candidates);
        self.scratch = scratch;
        chosen
    }

    fn run(&mut self, request: &Request, indexed: bool) -> Option<Candidate> {
        let go = |m: &mut Matcher, required: bool| {
            let c = m.compile(request, required);
            if indexed { m.search(&c) } else { m.scan(&c) }
        };
        match request.image_policy {
            ImagePolicy::Any => go(self, false),
            ImagePolicy::Require => go(self, true),
            ImagePolicy::Prefer => go(self, true).or_else(|| go(self, false)),
        }
    }

    /// The best match, without reserving it.
    pub fn find(&mut self, request: &Request) -> Option<(crate::GroupId, f64, f64, f64)> {
        self.run(request, true)
            .map(|c| (crate::GroupId(c.group), c.score, c.rtt, c.km))
    }

    fn reserve(&mut self, cand: Candidate, count: u16, expires_ms: Option<u64>) -> Booking {
        let g = &self.groups[cand.group as usize];
        let mut mask = 0u64;
        let mut free = g.servable();
        for _ in 0..count {
            let bit = free.trailing_zeros();
            mask |= 1 << bit;
            free &= !(1u64 << bit);
        }
        let (host, first_index, price) = (g.host, g.first_index, g.price);
        self.take_gpus(cand.group, mask);
        let reservation = self.new_slot(cand.group, mask, expires_ms.unwrap_or(u64::MAX));
        Booking {
            reservation,
            host: crate::HostId(host),
            group: crate::GroupId(cand.group),
            mask,
            first_index,
            distance_km: cand.km,
            rtt_ms: cand.rtt,
            price_per_gpu_hour: gpumesh_types::Amount(price),
            score: cand.score,
        }
    }

    /// Finds the best match and reserves it until `expires_ms` (or until released, if `None`).
    pub fn book(
        &mut self,
        request: &Request,
        expires_ms: Option<u64>,
    ) -> Result<Booking, Unmatched> {
        if request.count == 0 || request.count > 64 {
            return Err(Unmatched);
        }
        let cand = self.run(request, true).ok_or(Unmatched)?;
        Ok(self.reserve(cand, request.count, expires_ms))
    }

    /// [`Matcher::book`] by scanning every group: the oracle and the baseline.
    pub fn book_scan(
        &mut self,
        request: &Request,
        expires_ms: Option<u64>,
    ) -> Result<Booking, Unmatched> {
        if request.count == 0 || request.count > 64 {
            return Err(Unmatched);
        }
        let cand = self.run(request, false).ok_or(Unmatched)?;
        Ok(self.reserve(cand, request.count, expires_ms))
    }
}

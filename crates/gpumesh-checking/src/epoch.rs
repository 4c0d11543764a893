//! The epoch's reward inputs, decided from verdicts: which containers earn capacity
//! rewards, and how delivered work is split by container and tier. The ledger pays
//! from these lists; the indexer only gathers the facts.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use gpumesh_types::{ContainerRef, HostCapacity, HostDelivery};

/// What an epoch saw of one container.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerEpoch {
    pub container: ContainerRef,
    /// Spec weight K, in hundredths.
    pub k_centi: u32,
    /// Its capacity proof passed by quorum (or none is required on this network).
    pub verified: bool,
    /// Its stake covers the requirement.
    pub staked: bool,
    /// Liveness verdicts of the epoch.
    pub up: u32,
    pub down: u32,
    /// Its host was online by heartbeats the whole epoch (the fallback without checkers).
    pub online: bool,
}

/// Whether a container earns the epoch's capacity reward: verified and staked, and live.
/// With checkers, live means at least one quorum said up and none said down; without
/// them (`by_quorum` false), that its host never went offline by heartbeats.
pub fn earns_capacity(c: &ContainerEpoch, by_quorum: bool) -> bool {
    let live = if by_quorum {
        c.up > 0 && c.down == 0
    } else {
        c.online
    };
    c.verified && c.staked && c.k_centi > 0 && live
}

/// The capacity list in the ledger's canonical order (hosts ascending, GPUs ascending).
pub fn capacity_list(containers: &[ContainerEpoch], by_quorum: bool) -> Vec<HostCapacity> {
    let mut by_host: BTreeMap<Address, Vec<(u16, u32)>> = BTreeMap::new();
    for c in containers.iter().filter(|c| earns_capacity(c, by_quorum)) {
        by_host
            .entry(c.container.host)
            .or_default()
            .push((c.container.index, c.k_centi));
    }
    by_host
        .into_iter()
        .map(|(h, mut v)| {
            v.sort_unstable();
            v.dedup_by_key(|x| x.0);
            (h, v)
        })
        .collect()
}

/// Splits a lease's newly settled GPU-milliseconds evenly over its GPUs; the remainder
/// goes to the first GPUs, so the parts add up to the whole.
pub fn split_delivery(gpu_ms: u64, gpus: &[u16]) -> Vec<(u16, u64)> {
    let n = gpus.len() as u64;
    if n == 0 {
        return Vec::new();
    }
    let (each, rest) = (gpu_ms / n, gpu_ms % n);
    gpus.iter()
        .enumerate()
        .map(|(i, &g)| (g, each + u64::from((i as u64) < rest)))
        .collect()
}

/// The delivery list in the ledger's canonical order, each container with its host's tier.
pub fn delivery_list(
    delivered: impl IntoIterator<Item = (ContainerRef, u64)>,
    tier_of: impl Fn(&Address) -> u8,
) -> Vec<HostDelivery> {
    let mut by_host: BTreeMap<Address, BTreeMap<u16, u64>> = BTreeMap::new();
    for (c, gpu_ms) in delivered {
        if gpu_ms > 0 {
            *by_host
                .entry(c.host)
                .or_default()
                .entry(c.index)
                .or_default() += gpu_ms;
        }
    }
    by_host
        .into_iter()
        .map(|(h, v)| {
            let tier = tier_of(&h).clamp(1, 3);
            (h, v.into_iter().map(|(i, ms)| (i, ms, tier)).collect())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn c(host: u8, index: u16) -> ContainerRef {
        ContainerRef {
            host: Address::repeat_byte(host),
            index,
        }
    }

    proptest! {
        /// Delivery parts add up to the whole and differ by at most one.
        #[test]
        fn delivery_splits_exactly(gpu_ms in any::<u64>(), n in 1usize..9) {
            let gpus: Vec<u16> = (0..n as u16).collect();
            let parts = split_delivery(gpu_ms, &gpus);
            prop_assert_eq!(parts.iter().map(|p| p.1 as u128).sum::<u128>(), gpu_ms as u128);
            let (lo, hi) = (parts.iter().map(|p| p.1).min().unwrap(), parts.iter().map(|p| p.1).max().unwrap());
            prop_assert!(hi - lo <= 1);
        }

        /// Only verified, staked, live containers earn; the list is canonical (hosts and
        /// indices strictly ascending), whatever order the facts came in.
        #[test]
        fn capacity_list_is_canonical_and_only_of_earners(
            facts in proptest::collection::vec((0u8..5, 0u16..4, any::<bool>(), any::<bool>(), 0u32..3, 0u32..2, any::<bool>()), 0..40),
            by_quorum in any::<bool>(),
        ) {
            let containers: Vec<ContainerEpoch> = facts.iter().map(|&(h, i, verified, staked, up, down, online)| ContainerEpoch {
                container: c(h, i), k_centi: 100, verified, staked, up, down, online,
            }).collect();
            let list = capacity_list(&containers, by_quorum);
            for w in list.windows(2) { prop_assert!(w[0].0 < w[1].0); }
            for (host, v) in &list {
                for w in v.windows(2) { prop_assert!(w[0].0 < w[1].0); }
                for (index, _) in v {
                    prop_assert!(containers.iter().any(|x| x.container == c(host.0[0], *index) && earns_capacity(x, by_quorum)));
                }
            }
            for x in containers.iter().filter(|x| earns_capacity(x, by_quorum)) {
                prop_assert!(list.iter().any(|(h, v)| *h == x.container.host && v.iter().any(|e| e.0 == x.container.index)));
            }
        }
    }

    #[test]
    fn a_container_with_a_down_verdict_earns_no_capacity_reward() {
        let mut x = ContainerEpoch {
            container: c(1, 0),
            k_centi: 100,
            verified: true,
            staked: true,
            up: 5,
            down: 0,
            online: true,
        };
        assert!(earns_capacity(&x, true));
        x.down = 1;
        assert!(!earns_capacity(&x, true));
        assert!(earns_capacity(&x, false));
        x.verified = false;
        assert!(!earns_capacity(&x, false));
    }

    #[test]
    fn delivery_is_grouped_by_host_with_its_tier() {
        let list = delivery_list(
            [(c(2, 1), 10), (c(1, 0), 5), (c(2, 1), 7), (c(2, 0), 0)],
            |h| if h.0[0] == 1 { 1 } else { 3 },
        );
        assert_eq!(
            list,
            vec![
                (Address::repeat_byte(1), vec![(0, 5, 1)]),
                (Address::repeat_byte(2), vec![(1, 17, 3)]),
            ]
        );
    }
}

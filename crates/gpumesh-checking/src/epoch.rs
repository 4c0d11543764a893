//! The epoch's reward inputs, decided from verdicts: which containers earn capacity
//! rewards, and how delivered work and its payments are split by container and tier. The
//! ledger pays from these lists (by what buyers paid, capped: docs/economics.md); the
//! indexer only gathers the facts.

use std::collections::BTreeMap;

use alloy_primitives::Address;
use gpumesh_types::{Amount, ContainerRef, GpuDelivery, HostCapacity, HostDelivery};

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

/// What a container delivered: settled GPU-milliseconds, what its buyers were charged
/// for them, and the part of that the treasury kept as its fee.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delivered {
    pub gpu_ms: u64,
    pub paid: Amount,
    pub fee: Amount,
}

impl Delivered {
    /// Adds `other`, saturating (an epoch's sums stay far below the limits).
    pub fn add(&mut self, other: Delivered) {
        self.gpu_ms = self.gpu_ms.saturating_add(other.gpu_ms);
        self.paid = Amount(self.paid.0.saturating_add(other.paid.0));
        self.fee = Amount(self.fee.0.saturating_add(other.fee.0));
    }

    /// What was added since `earlier` (a lease's settled totals before a settlement).
    pub fn since(self, earlier: Delivered) -> Delivered {
        Delivered {
            gpu_ms: self.gpu_ms.saturating_sub(earlier.gpu_ms),
            paid: self.paid.saturating_sub(earlier.paid),
            fee: self.fee.saturating_sub(earlier.fee),
        }
    }

    fn is_empty(&self) -> bool {
        self.gpu_ms == 0 && self.paid.0 == 0
    }
}

/// Splits `whole` evenly over `n` parts; the remainder goes to the first parts.
fn split_evenly(whole: u128, n: usize) -> impl Iterator<Item = u128> {
    let (each, rest) = (whole / n.max(1) as u128, whole % n.max(1) as u128);
    (0..n).map(move |i| each + u128::from((i as u128) < rest))
}

/// Splits a lease's newly settled work (GPU-milliseconds, payment and fee) evenly over its
/// GPUs; each remainder goes to the first GPUs, so the parts add up to the whole, and no
/// GPU's fee is above its payment when the whole's is not.
pub fn split_delivery(whole: Delivered, gpus: &[u16]) -> Vec<(u16, Delivered)> {
    let n = gpus.len();
    let gpu_ms = split_evenly(whole.gpu_ms as u128, n);
    let paid = split_evenly(whole.paid.0, n);
    let fee = split_evenly(whole.fee.0, n);
    gpus.iter()
        .zip(gpu_ms.zip(paid).zip(fee))
        .map(|(&g, ((gpu_ms, paid), fee))| {
            let part = Delivered {
                // A part of a u64 fits a u64.
                gpu_ms: gpu_ms as u64,
                paid: Amount(paid),
                fee: Amount(fee),
            };
            (g, part)
        })
        .collect()
}

/// The delivery list in the ledger's canonical order, each container with its host's tier.
pub fn delivery_list(
    delivered: impl IntoIterator<Item = (ContainerRef, Delivered)>,
    tier_of: impl Fn(&Address) -> u8,
) -> Vec<HostDelivery> {
    let mut by_host: BTreeMap<Address, BTreeMap<u16, Delivered>> = BTreeMap::new();
    for (c, d) in delivered {
        if !d.is_empty() {
            by_host
                .entry(c.host)
                .or_default()
                .entry(c.index)
                .or_default()
                .add(d);
        }
    }
    by_host
        .into_iter()
        .map(|(h, v)| {
            let tier = tier_of(&h).clamp(1, 3);
            let gpus = v
                .into_iter()
                .map(|(index, d)| GpuDelivery {
                    index,
                    gpu_ms: d.gpu_ms,
                    paid: d.paid,
                    fee: d.fee,
                    tier,
                })
                .collect();
            (h, gpus)
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
        /// Delivery parts add up to the whole and differ by at most one, and no part's
        /// fee is above its payment.
        #[test]
        fn delivery_splits_exactly(gpu_ms in any::<u64>(), a in any::<u128>(), b in any::<u128>(), n in 1usize..9) {
            let (paid, fee) = (a.max(b), a.min(b));
            let whole = Delivered { gpu_ms, paid: Amount(paid), fee: Amount(fee) };
            let gpus: Vec<u16> = (0..n as u16).collect();
            let parts = split_delivery(whole, &gpus);
            prop_assert_eq!(parts.iter().map(|p| p.0).collect::<Vec<_>>(), gpus);
            prop_assert_eq!(parts.iter().map(|p| p.1.gpu_ms as u128).sum::<u128>(), gpu_ms as u128);
            prop_assert_eq!(parts.iter().map(|p| p.1.paid.0).sum::<u128>(), paid);
            prop_assert_eq!(parts.iter().map(|p| p.1.fee.0).sum::<u128>(), fee);
            let (lo, hi) = (parts.iter().map(|p| p.1.gpu_ms).min().unwrap(), parts.iter().map(|p| p.1.gpu_ms).max().unwrap());
            prop_assert!(hi - lo <= 1);
            for (_, p) in &parts {
                prop_assert!(p.fee <= p.paid);
            }
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

    fn delivered(gpu_ms: u64, paid: u128, fee: u128) -> Delivered {
        Delivered {
            gpu_ms,
            paid: Amount(paid),
            fee: Amount(fee),
        }
    }

    #[test]
    fn delivery_is_grouped_by_host_with_its_tier_and_payments() {
        let list = delivery_list(
            [
                (c(2, 1), delivered(10, 100, 20)),
                (c(1, 0), delivered(5, 50, 10)),
                (c(2, 1), delivered(7, 70, 14)),
                (c(2, 0), delivered(0, 0, 0)),
            ],
            |h| if h.0[0] == 1 { 1 } else { 3 },
        );
        let gpu = |index, gpu_ms, paid, fee, tier| GpuDelivery {
            index,
            gpu_ms,
            paid: Amount(paid),
            fee: Amount(fee),
            tier,
        };
        assert_eq!(
            list,
            vec![
                (Address::repeat_byte(1), vec![gpu(0, 5, 50, 10, 1)]),
                (Address::repeat_byte(2), vec![gpu(1, 17, 170, 34, 3)]),
            ]
        );
    }

    #[test]
    fn a_lease_split_over_its_gpus_gives_the_remainders_to_the_first() {
        assert_eq!(
            split_delivery(delivered(7, 5, 1), &[4, 2, 9]),
            vec![
                (4, delivered(3, 2, 1)),
                (2, delivered(2, 2, 0)),
                (9, delivered(2, 1, 0)),
            ]
        );
        assert!(split_delivery(delivered(7, 5, 1), &[]).is_empty());
    }
}

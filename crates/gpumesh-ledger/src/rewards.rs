//! Epochs, rewards, vesting and slashing (docs/protocol.md, docs/ledger.md).

use alloy_primitives::{Address, B256, U256, keccak256};
use gpumesh_types::{Amount, EpochClose, GpuDelivery, HostCapacity, HostDelivery, Offence};

use crate::genesis::YEAR_MS;
use crate::merkle::MerkleTree;
use crate::par;
use crate::state::{Key, Ledger, LedgerError, Stake};

/// The leaf of OpenZeppelin's `StandardMerkleTree` for `(address, uint256)`:
/// keccak256(keccak256(abi.encode(account, amount))).
pub fn reward_leaf(account: &Address, amount: Amount) -> B256 {
    let mut encoded = [0u8; 64];
    encoded[12..32].copy_from_slice(account.as_slice());
    encoded[32..].copy_from_slice(&U256::from(amount.0).to_be_bytes::<32>());
    keccak256(keccak256(encoded))
}

/// The reward tree over every account's cumulative reward.
pub fn reward_tree<I: IntoIterator<Item = (Address, Amount)>>(cumulative: I) -> MerkleTree {
    let accounts: Vec<(Address, Amount)> = cumulative.into_iter().collect();
    MerkleTree::new(par::map(&accounts, |(a, v)| reward_leaf(a, *v)))
}

/// Splits `pool` by `weights` (rounding down); returns the shares and what is left over.
fn split(pool: u128, weights: &[u128]) -> (Vec<u128>, u128) {
    let total: u128 = weights.iter().sum();
    if total == 0 {
        return (vec![0; weights.len()], pool);
    }
    let shares: Vec<u128> = weights
        .iter()
        .map(|&w| Amount(pool).mul_div_floor(w, total).map_or(0, |a| a.0))
        .collect();
    let paid: u128 = shares.iter().sum();
    (shares, pool - paid)
}

/// The most a container earns in delivery rewards in an epoch (docs/economics.md):
/// `cap_bps` of what its buyers paid in it, and `cap_bps / fee_bps` of the fee the
/// treasury kept from that payment, whichever is less, each rounded down. With `cap_bps`
/// below `fee_bps` (the genesis requires it), the cap is less than the fee whenever the
/// fee is more than zero, and zero when it is zero: a payment earns back less than the
/// treasury took from it.
pub fn delivery_cap(paid: Amount, fee: Amount, cap_bps: u32, fee_bps: u32) -> Amount {
    if cap_bps == 0 || fee_bps == 0 {
        return Amount::ZERO;
    }
    let of_paid = paid.mul_div_floor(cap_bps as u128, 10_000);
    let of_fee = fee.mul_div_floor(cap_bps as u128, fee_bps as u128);
    of_paid.zip(of_fee).map_or(Amount::ZERO, |(p, f)| p.min(f))
}

/// One container's claim on an epoch's delivery pool.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeliveryClaim {
    /// What its buyers paid times its tier's weight in basis points; zero when its stake
    /// does not qualify it.
    pub weight: u128,
    /// The most it may receive ([`delivery_cap`]).
    pub cap: u128,
}

/// An epoch's delivery pool, paid out.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliveryPayout {
    /// Each claim's reward, in the claims' order.
    pub rewards: Vec<u128>,
    /// What rounding down left over: emitted, to the treasury.
    pub rest: u128,
    /// What the caps held back: not emitted, it stays in the reward pool.
    pub withheld: u128,
    /// What leaves the reward pool: the rewards and the rest. Zero, with nothing paid,
    /// when no claim's share comes to a base unit.
    pub emitted: u128,
}

/// Splits `pool` over the claims by weight (each share rounded down), then holds each
/// share to its claim's cap. The parts add up exactly: `rewards + rest + withheld` is the
/// pool whenever anything is emitted. The weights must add up to no more than `u128::MAX`.
pub fn pay_delivery(pool: u128, claims: &[DeliveryClaim]) -> DeliveryPayout {
    let weights: Vec<u128> = claims.iter().map(|c| c.weight).collect();
    let (shares, rest) = split(pool, &weights);
    if rest == pool {
        return DeliveryPayout {
            rewards: vec![0; claims.len()],
            ..DeliveryPayout::default()
        };
    }
    let rewards: Vec<u128> = shares
        .iter()
        .zip(claims)
        .map(|(&share, c)| share.min(c.cap))
        .collect();
    let withheld = pool - rest - rewards.iter().sum::<u128>();
    DeliveryPayout {
        rewards,
        rest,
        withheld,
        emitted: pool - withheld,
    }
}

/// Checks the canonical order of a per-host list: hosts strictly ascending, and each
/// host's GPU indices strictly ascending.
fn check_order<T>(
    what: &str,
    list: &[(Address, Vec<T>)],
    index: impl Fn(&T) -> u16,
) -> Result<(), LedgerError> {
    for pair in list.windows(2) {
        if pair[0].0 >= pair[1].0 {
            return Err(LedgerError::InvalidEpoch(format!(
                "{what}: host {} is out of order or listed twice",
                pair[1].0
            )));
        }
    }
    for (host, containers) in list {
        if containers.windows(2).any(|p| index(&p[0]) >= index(&p[1])) {
            return Err(LedgerError::InvalidEpoch(format!(
                "{what}: the GPU indices of {host} are out of order or repeated"
            )));
        }
    }
    Ok(())
}

/// A host with its capacity and delivery lists, either of which may be absent.
type HostLists<'a> = (Address, Option<&'a [(u16, u32)]>, Option<&'a [GpuDelivery]>);

/// Joins the capacity and delivery lists (each in ascending host order) by host.
fn side_by_side<'a>(
    capacity: &'a [HostCapacity],
    delivery: &'a [HostDelivery],
) -> Vec<HostLists<'a>> {
    let mut out = Vec::with_capacity(capacity.len().max(delivery.len()));
    let (mut c, mut d) = (capacity.iter().peekable(), delivery.iter().peekable());
    loop {
        let next = match (c.peek(), d.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let (x, y) = (c.next(), d.next());
                x.zip(y).map(|(x, y)| (x.0, Some(&x.1[..]), Some(&y.1[..])))
            }
            (Some(x), Some(y)) if x.0 < y.0 => c.next().map(|x| (x.0, Some(&x.1[..]), None)),
            (_, Some(_)) => d.next().map(|y| (y.0, None, Some(&y.1[..]))),
            (Some(_), None) => c.next().map(|x| (x.0, Some(&x.1[..]), None)),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

/// Pairs each host of a per-host list with its share, leaving out zero shares.
fn with_hosts<T>(list: &[(Address, Vec<T>)], shares: Vec<u128>) -> Vec<(Address, u128)> {
    list.iter()
        .map(|l| l.0)
        .zip(shares)
        .filter(|s| s.1 > 0)
        .collect()
}

/// Adds up two lists of (host, amount), each sorted by host, into one.
fn merge(a: Vec<(Address, u128)>, b: Vec<(Address, u128)>) -> Vec<(Address, u128)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) if x.0 == y.0 => {
                let (x, y) = (a.next(), b.next());
                x.zip(y).map(|(x, y)| (x.0, x.1 + y.1))
            }
            (Some(x), Some(y)) if x.0 < y.0 => a.next(),
            (Some(_), Some(_)) => b.next(),
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        out.extend(next);
    }
    out
}

impl Ledger {
    /// Releases this epoch's step of every vesting grant.
    fn release_vesting(&mut self, epoch: u64) {
        let mut released: Vec<(Address, u128)> = Vec::new();
        for (account, v) in self.vesting.iter_mut() {
            let mut amount = v.rate;
            while let Some(&(end, step, rem)) = v.ends.front() {
                if end > epoch {
                    break;
                }
                amount += rem;
                v.rate -= step;
                v.ends.pop_front();
            }
            let amount = amount.min(v.locked.0);
            if amount > 0 {
                v.locked.0 -= amount;
                released.push((*account, amount));
            }
        }
        for (account, amount) in released {
            self.credit(account, amount);
        }
        self.vesting
            .retain(|_, v| v.locked.0 > 0 || !v.ends.is_empty());
    }

    /// Grants `amount` to vest from the next epoch over the vesting period.
    fn grant(&mut self, account: Address, amount: u128, epoch: u64) {
        if amount == 0 {
            return;
        }
        let steps = self.genesis.economics.vesting_steps() as u128;
        let step = amount / steps;
        let rem = amount - step * steps;
        let v = self.vesting.entry(account).or_default();
        v.locked.0 += amount;
        v.rate += step;
        // The grant's steps fall in epochs epoch+1 ..= epoch+steps; the last adds the rest.
        v.ends.push_back((epoch + steps as u64, step, rem));
        self.touch(Key::Account(account));
    }

    /// Closes an epoch: releases vesting, emits the pools, pays rewards, updates the roots.
    pub(crate) fn close_epoch(&mut self, e: &EpochClose, _now_ms: u64) -> Result<(), LedgerError> {
        if e.epoch != self.totals.next_epoch {
            return Err(LedgerError::EpochOutOfOrder {
                expected: self.totals.next_epoch,
                got: e.epoch,
            });
        }
        let econ = self.genesis.economics.clone();
        // Check everything first: the lists are in canonical order, so one pass each.
        check_order("capacity", &e.capacity, |c| c.0)?;
        check_order("delivery", &e.delivery, |d| d.index)?;
        let mut paid_total = 0u128;
        for (host, containers) in &e.delivery {
            for d in containers {
                if !(1..=3).contains(&d.tier) {
                    return Err(LedgerError::InvalidEpoch(format!(
                        "tier {} of container {} of {host} is not 1 to 3",
                        d.tier, d.index
                    )));
                }
                if d.fee > d.paid {
                    return Err(LedgerError::InvalidEpoch(format!(
                        "container {} of {host} has a fee above what its buyers paid",
                        d.index
                    )));
                }
                paid_total = paid_total.saturating_add(d.paid.0);
            }
        }
        // So that no weight (paid × a tier weight of at most 10000) nor their sum overflows.
        if paid_total > u128::MAX / 10_000 {
            return Err(LedgerError::InvalidEpoch(
                "delivery: what buyers paid adds up to more than the ledger can weigh".into(),
            ));
        }
        for pair in e.checkers.windows(2) {
            if pair[0].0 >= pair[1].0 {
                return Err(LedgerError::InvalidEpoch(format!(
                    "checker {} is out of order or listed twice",
                    pair[1].0
                )));
            }
        }
        if let Some(c) = e.checkers.iter().find(|c| c.2 > 10_000) {
            return Err(LedgerError::InvalidEpoch(format!(
                "checker {} has an uptime over 10000 basis points",
                c.0
            )));
        }

        self.release_vesting(e.epoch);

        // Emissions.
        let t = self.totals;
        let provider_left = econ.provider_pool.0 - t.provider_emitted.0;
        let provider = Amount(provider_left)
            .mul_div_floor(
                econ.provider_rate_bps as u128 * econ.epoch_ms as u128,
                10_000 * YEAR_MS as u128,
            )
            .map_or(0, |a| a.0);
        let capacity_pool = provider * econ.capacity_share_bps as u128 / 10_000;
        let delivery_pool = provider - capacity_pool;
        let checker_pool = econ
            .checker_pool
            .mul_div_floor(econ.epoch_ms as u128, econ.checker_schedule_ms as u128)
            .map_or(0, |a| a.0)
            .min(econ.checker_pool.0 - t.checker_emitted.0);
        let bonus_pool = if e.quarter_bonus {
            econ.checker_bonus_pool
                .mul_div_floor(econ.quarter_ms as u128, econ.checker_schedule_ms as u128)
                .map_or(0, |a| a.0)
                .min(econ.checker_bonus_pool.0 - t.bonus_emitted.0)
        } else {
            0
        };

        // Each host's capacity weight and its containers' delivery claims, read on every
        // core. Rewards need the stake in place: for capacity, the requirement of the
        // container's K; for delivery, that of the K it was live with this epoch, or any
        // stake at all. A host's two lists are walked side by side (both by GPU index), so
        // each container's stake is read once. Delivery weighs what buyers paid by tier,
        // capped per container by `delivery_cap` (docs/economics.md).
        let hosts = side_by_side(&e.capacity, &e.delivery);
        let stake_ok = |s: Option<&Stake>, k: u32| {
            s.is_some_and(|s| s.bonded.0 > 0 && s.bonded.0 >= econ.requirement(k).0)
        };
        let fee_bps = self.genesis.fee_bps;
        let claim = |d: &GpuDelivery, staked: bool| DeliveryClaim {
            weight: if staked {
                d.paid.0 * econ.tier_bps[d.tier as usize - 1] as u128
            } else {
                0
            },
            cap: delivery_cap(d.paid, d.fee, econ.delivery_cap_bps, fee_bps).0,
        };
        let weights: Vec<(u128, Vec<DeliveryClaim>)> = par::map(&hosts, |&(host, cap, del)| {
            let (cap, del) = (cap.unwrap_or(&[]), del.unwrap_or(&[]));
            let stake = |index: u16| self.stakes.get(&(host, index));
            // Delivery by a container that was not live: any stake will do.
            let not_live = |x: &GpuDelivery| claim(x, stake_ok(stake(x.index), 0));
            let (mut cap_w, mut claims, mut d) = (0u128, Vec::with_capacity(del.len()), 0);
            for &(index, k) in cap {
                while let Some(x) = del.get(d).filter(|x| x.index < index) {
                    claims.push(not_live(x));
                    d += 1;
                }
                let s = stake(index);
                if k > 0 && stake_ok(s, k) {
                    cap_w += k as u128;
                }
                if let Some(x) = del.get(d).filter(|x| x.index == index) {
                    claims.push(claim(x, stake_ok(s, k)));
                    d += 1;
                }
            }
            claims.extend(del[d..].iter().map(not_live));
            (cap_w, claims)
        });
        let mut cap_weights = Vec::with_capacity(e.capacity.len());
        let mut claims = Vec::new();
        let mut claims_per_host = Vec::with_capacity(e.delivery.len());
        for ((_, cap, del), (cap_w, host_claims)) in hosts.iter().zip(weights) {
            if cap.is_some() {
                cap_weights.push(cap_w);
            }
            if del.is_some() {
                claims_per_host.push(host_claims.len());
                claims.extend(host_claims);
            }
        }
        let (cap_shares, cap_rest) = split(capacity_pool, &cap_weights);
        let cap_emitted = if cap_rest < capacity_pool {
            capacity_pool
        } else {
            0
        };
        // What a cap holds back is not emitted: it stays in the pool for later epochs.
        let delivery = pay_delivery(delivery_pool, &claims);
        let mut rewards = delivery.rewards.iter();
        let del_shares: Vec<u128> = claims_per_host
            .iter()
            .map(|&n| rewards.by_ref().take(n).sum())
            .collect();
        let del_emitted = delivery.emitted;

        let tasks: Vec<u128> = e.checkers.iter().map(|c| c.1 as u128).collect();
        let (chk_shares, chk_rest) = split(checker_pool, &tasks);
        let chk_emitted = if chk_rest < checker_pool {
            checker_pool
        } else {
            0
        };
        let bonus_tasks: Vec<u128> = e
            .checkers
            .iter()
            .map(|c| {
                if c.2 >= econ.bonus_uptime_bps {
                    c.1 as u128
                } else {
                    0
                }
            })
            .collect();
        let (bonus_shares, bonus_rest) = split(bonus_pool, &bonus_tasks);
        let bonus_emitted = if bonus_rest < bonus_pool {
            bonus_pool
        } else {
            0
        };

        // Pay. The pool shrinks by what was emitted; remainders go to the treasury.
        let emitted = cap_emitted + del_emitted + chk_emitted + bonus_emitted;
        let rest = |emitted: u128, rest: u128| if emitted > 0 { rest } else { 0 };
        let treasury_part = rest(cap_emitted, cap_rest)
            + delivery.rest
            + rest(chk_emitted, chk_rest)
            + rest(bonus_emitted, bonus_rest);
        let pool = self.genesis.reward_pool;
        let treasury = self.genesis.treasury;
        self.debit(pool, emitted);
        self.credit(treasury, treasury_part);

        let per_host = merge(
            with_hosts(&e.capacity, cap_shares),
            with_hosts(&e.delivery, del_shares),
        );
        for (host, reward) in per_host {
            let now = reward * econ.immediate_bps as u128 / 10_000;
            self.credit(host, now);
            self.grant(host, reward - now, e.epoch);
            // credit or grant has touched the account (the reward is not zero).
            self.cumulative.entry(host).or_default().0 += reward;
        }
        for (i, (checker, _, _)) in e.checkers.iter().enumerate() {
            let reward = chk_shares[i] + bonus_shares[i];
            if reward == 0 {
                continue;
            }
            self.credit(*checker, reward);
            self.cumulative.entry(*checker).or_default().0 += reward;
        }
        self.totals.provider_emitted.0 += cap_emitted + del_emitted;
        self.totals.checker_emitted.0 += chk_emitted;
        self.totals.bonus_emitted.0 += bonus_emitted;
        self.totals.next_epoch += 1;
        let tree = reward_tree(self.cumulative.iter().map(|(a, v)| (*a, *v)));
        self.reward_root = tree.root();
        self.reward_tree = Some(tree);
        self.touch(Key::Totals);
        Ok(())
    }

    /// Takes the penalty for an offence: unvested rewards first (newest grants first),
    /// then the container's bonded stake, then its unbonding stake; all to the treasury.
    pub(crate) fn slash(&mut self, host: Address, index: u16, k_centi: u32, offence: Offence) {
        let full = self.genesis.economics.requirement(k_centi).0;
        let mut due = match offence {
            Offence::Downtime => full / 3,
            Offence::Malicious | Offence::Underperformance => full,
        };
        let mut taken = 0u128;
        let next_epoch = self.totals.next_epoch;
        if let Some(v) = self.vesting.get_mut(&host) {
            // Take from the newest grants, keeping each one's future steps consistent.
            let mut i = v.ends.len();
            while due > 0 && i > 0 {
                i -= 1;
                let (end, step, rem) = v.ends[i];
                let steps_left = end.saturating_sub(next_epoch.saturating_sub(1)) as u128;
                let left = step * steps_left + rem;
                let take = left.min(due);
                let left = left - take;
                let new_step = left.checked_div(steps_left).unwrap_or(0);
                let new_rem = left - new_step * steps_left;
                v.rate = v.rate - step + new_step;
                v.ends[i] = (end, new_step, new_rem);
                v.locked.0 -= take;
                due -= take;
                taken += take;
            }
            self.touch(Key::Account(host));
        }
        if let Some(s) = self.stakes.get_mut(&(host, index)) {
            for part in [&mut s.bonded, &mut s.unbonding] {
                let take = part.0.min(due);
                part.0 -= take;
                due -= take;
                taken += take;
            }
            self.touch(Key::Stake(host, index));
        }
        let treasury = self.genesis.treasury;
        self.credit(treasury, taken);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn claims() -> impl Strategy<Value = Vec<DeliveryClaim>> {
        proptest::collection::vec(
            (0u128..1 << 100, 0u128..1 << 90)
                .prop_map(|(weight, cap)| DeliveryClaim { weight, cap }),
            0..8,
        )
    }

    proptest! {
        /// The delivery pool's parts add up exactly; no reward is above its cap or its
        /// share by weight; the caps hold back exactly what exceeds them; and nothing is
        /// emitted when no share comes to a base unit.
        #[test]
        fn delivery_pays_by_weight_within_caps_and_adds_up(pool in 0u128..1 << 100, claims in claims()) {
            let payout = pay_delivery(pool, &claims);
            prop_assert_eq!(payout.rewards.len(), claims.len());
            let weights: Vec<u128> = claims.iter().map(|c| c.weight).collect();
            let (shares, _) = split(pool, &weights);
            let paid: u128 = payout.rewards.iter().sum();
            if shares.iter().all(|&s| s == 0) {
                prop_assert_eq!(payout, DeliveryPayout { rewards: vec![0; claims.len()], ..DeliveryPayout::default() });
                return Ok(());
            }
            prop_assert_eq!(paid + payout.rest + payout.withheld, pool);
            prop_assert_eq!(payout.emitted, paid + payout.rest);
            let mut held = 0;
            for ((reward, share), c) in payout.rewards.iter().zip(&shares).zip(&claims) {
                prop_assert!(*reward <= c.cap && reward <= share);
                prop_assert_eq!(*reward, (*share).min(c.cap));
                held += share - reward;
            }
            prop_assert_eq!(held, payout.withheld);
        }

        /// The cap is at most `cap_bps` of the payment and, with `cap_bps` below
        /// `fee_bps`, less than any fee above zero (zero with a zero fee).
        #[test]
        fn the_delivery_cap_is_below_the_fee(paid in any::<u64>(), fee_bps in 1u32..=10_000, cap_of_fee in 0u32..10_000, extra_fee in 0u128..3) {
            let cap_bps = cap_of_fee * fee_bps / 10_000;
            let paid = Amount(paid as u128);
            // A fee as the ledger takes it, or a base unit or two more from settling a
            // lease's cumulative cost in steps.
            let fee = Amount((crate::fee_split(paid, fee_bps).1.0 + extra_fee).min(paid.0));
            let cap = delivery_cap(paid, fee, cap_bps, fee_bps);
            prop_assert!(cap.0 <= paid.0 * cap_bps as u128 / 10_000);
            if fee.0 > 0 {
                prop_assert!(cap < fee);
            } else {
                prop_assert_eq!(cap, Amount::ZERO);
            }
        }
    }

    #[test]
    fn a_pool_no_one_earns_stays_whole() {
        let payout = pay_delivery(1_000, &[DeliveryClaim { weight: 0, cap: 5 }]);
        assert_eq!(payout.emitted, 0);
        assert_eq!(payout.rewards, vec![0]);
        // Two equal claims, one capped: 500 and 200 paid, 300 held back.
        let claims = [
            DeliveryClaim {
                weight: 7,
                cap: 1_000,
            },
            DeliveryClaim {
                weight: 7,
                cap: 200,
            },
        ];
        let payout = pay_delivery(1_001, &claims);
        assert_eq!(payout.rewards, vec![500, 200]);
        assert_eq!(
            (payout.rest, payout.withheld, payout.emitted),
            (1, 300, 701)
        );
    }
}

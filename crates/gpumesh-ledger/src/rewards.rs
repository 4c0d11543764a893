//! Epochs, rewards, vesting and slashing (DESIGN.md §4; docs/ledger.md).

use std::collections::HashMap;

use alloy_primitives::{Address, B256, U256, keccak256};
use gpumesh_types::{Amount, EpochClose, Offence};

use crate::genesis::YEAR_MS;
use crate::merkle::MerkleTree;
use crate::state::{Key, Ledger, LedgerError};

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
    MerkleTree::new(
        cumulative
            .into_iter()
            .map(|(a, v)| reward_leaf(&a, v))
            .collect(),
    )
}

/// Splits `pool` by `weights` (rounding down); returns the shares and what is left over.
fn split(pool: u128, weights: &[(usize, u128)], total: u128) -> (Vec<(usize, u128)>, u128) {
    if total == 0 {
        return (Vec::new(), pool);
    }
    let mut paid = 0u128;
    let shares = weights
        .iter()
        .map(|&(who, w)| {
            let share = Amount(pool).mul_div_floor(w, total).map_or(0, |a| a.0);
            paid += share;
            (who, share)
        })
        .collect();
    (shares, pool - paid)
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
        // Check everything first.
        let mut seen = std::collections::HashSet::new();
        for (host, containers) in &e.capacity {
            for &(index, _) in containers {
                if !seen.insert((*host, index)) {
                    return Err(LedgerError::InvalidEpoch(format!(
                        "container {index} of {host} is listed twice for capacity"
                    )));
                }
            }
        }
        seen.clear();
        for (host, containers) in &e.delivery {
            for &(index, _, tier) in containers {
                if !(1..=3).contains(&tier) {
                    return Err(LedgerError::InvalidEpoch(format!(
                        "tier {tier} of container {index} of {host} is not 1 to 3"
                    )));
                }
                if !seen.insert((*host, index)) {
                    return Err(LedgerError::InvalidEpoch(format!(
                        "container {index} of {host} is listed twice for delivery"
                    )));
                }
            }
        }
        let mut checkers = std::collections::HashSet::new();
        for (checker, _, uptime) in &e.checkers {
            if *uptime > 10_000 || !checkers.insert(*checker) {
                return Err(LedgerError::InvalidEpoch(format!(
                    "checker {checker} is listed twice or its uptime is over 10000"
                )));
            }
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

        // Who is owed what. Rewards need the stake in place.
        let staked = |ledger: &Ledger, host: &Address, index: u16, k: u32| {
            ledger
                .stakes
                .get(&(*host, index))
                .is_some_and(|s| s.bonded.0 >= econ.requirement(k).0 && s.bonded.0 > 0)
        };
        let mut hosts: Vec<Address> = Vec::new();
        let mut host_index: HashMap<Address, usize> = HashMap::new();
        let mut host_of = |h: Address| -> usize {
            *host_index.entry(h).or_insert_with(|| {
                hosts.push(h);
                hosts.len() - 1
            })
        };
        let mut cap_weights = Vec::new();
        let mut k_of: HashMap<(Address, u16), u32> = HashMap::new();
        for (host, containers) in &e.capacity {
            for &(index, k) in containers {
                k_of.insert((*host, index), k);
                if k > 0 && staked(self, host, index, k) {
                    cap_weights.push((host_of(*host), k as u128));
                }
            }
        }
        let mut del_weights = Vec::new();
        for (host, containers) in &e.delivery {
            for &(index, gpu_ms, tier) in containers {
                // Delivery needs a stake too; its requirement is the capacity entry's K if
                // the container was live, else any stake at all.
                let k = k_of.get(&(*host, index)).copied().unwrap_or(0);
                let has_stake = self
                    .stakes
                    .get(&(*host, index))
                    .is_some_and(|s| s.bonded.0 > 0 && s.bonded.0 >= econ.requirement(k).0);
                if gpu_ms > 0 && has_stake {
                    del_weights.push((
                        host_of(*host),
                        gpu_ms as u128 * econ.tier_bps[tier as usize - 1] as u128,
                    ));
                }
            }
        }
        let cap_total: u128 = cap_weights.iter().map(|w| w.1).sum();
        let del_total: u128 = del_weights.iter().map(|w| w.1).sum();
        let (cap_shares, cap_rest) = split(capacity_pool, &cap_weights, cap_total);
        let (del_shares, del_rest) = split(delivery_pool, &del_weights, del_total);
        let cap_emitted = if cap_total > 0 { capacity_pool } else { 0 };
        let del_emitted = if del_total > 0 { delivery_pool } else { 0 };

        let chk_weights: Vec<(usize, u128)> = e
            .checkers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.1 > 0)
            .map(|(i, c)| (i, c.1 as u128))
            .collect();
        let chk_total: u128 = chk_weights.iter().map(|w| w.1).sum();
        let (chk_shares, chk_rest) = split(checker_pool, &chk_weights, chk_total);
        let chk_emitted = if chk_total > 0 { checker_pool } else { 0 };
        let bonus_weights: Vec<(usize, u128)> = e
            .checkers
            .iter()
            .enumerate()
            .filter(|(_, c)| c.1 > 0 && c.2 >= econ.bonus_uptime_bps)
            .map(|(i, c)| (i, c.1 as u128))
            .collect();
        let bonus_total: u128 = bonus_weights.iter().map(|w| w.1).sum();
        let (bonus_shares, bonus_rest) = split(bonus_pool, &bonus_weights, bonus_total);
        let bonus_emitted = if bonus_total > 0 { bonus_pool } else { 0 };

        // Pay. The pool shrinks by what was emitted; remainders go to the treasury.
        let emitted = cap_emitted + del_emitted + chk_emitted + bonus_emitted;
        let treasury_part = (if cap_total > 0 { cap_rest } else { 0 })
            + (if del_total > 0 { del_rest } else { 0 })
            + (if chk_total > 0 { chk_rest } else { 0 })
            + (if bonus_total > 0 { bonus_rest } else { 0 });
        let pool = self.genesis.reward_pool;
        let treasury = self.genesis.treasury;
        self.debit(pool, emitted);
        self.credit(treasury, treasury_part);

        let mut per_host = vec![0u128; hosts.len()];
        for (h, share) in cap_shares.into_iter().chain(del_shares) {
            per_host[h] += share;
        }
        for (h, reward) in per_host.into_iter().enumerate() {
            if reward == 0 {
                continue;
            }
            let host = hosts[h];
            let now = reward * econ.immediate_bps as u128 / 10_000;
            self.credit(host, now);
            self.grant(host, reward - now, e.epoch);
            self.cumulative.entry(host).or_default().0 += reward;
            self.touch(Key::Account(host));
        }
        let mut per_checker = vec![0u128; e.checkers.len()];
        for (i, share) in chk_shares.into_iter().chain(bonus_shares) {
            per_checker[i] += share;
        }
        for (i, reward) in per_checker.into_iter().enumerate() {
            if reward == 0 {
                continue;
            }
            let checker = e.checkers[i].0;
            self.credit(checker, reward);
            self.cumulative.entry(checker).or_default().0 += reward;
            self.touch(Key::Account(checker));
        }
        self.totals.provider_emitted.0 += cap_emitted + del_emitted;
        self.totals.checker_emitted.0 += chk_emitted;
        self.totals.bonus_emitted.0 += bonus_emitted;
        self.totals.next_epoch += 1;
        self.reward_root = reward_tree(self.cumulative.iter().map(|(a, v)| (*a, *v))).root();
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

//! The genesis: the parameters and first balances every replay starts from.

use alloy_primitives::{Address, B256, keccak256};
use gpumesh_types::{Amount, CheckingParams};
use serde::{Deserialize, Serialize};

/// Total supply: 42 billion tokens (docs/protocol.md).
pub const TOTAL_SUPPLY: Amount = Amount::from_tokens(42_000_000_000);
/// The protocol's share of each service fee, in basis points (20%).
pub const DEFAULT_FEE_BPS: u32 = 2_000;

/// Milliseconds in a year of 365 days and in a day.
pub const YEAR_MS: u64 = 365 * DAY_MS;
pub const DAY_MS: u64 = 24 * 3_600_000;

/// The token economy's parameters (docs/protocol.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Economics {
    /// Stake required per unit of spec weight K (an H100 is K = 1.00).
    pub staking_coefficient: Amount,
    /// How long an unstaked container's stake stays locked before it can be withdrawn.
    pub unbonding_ms: u64,
    /// Length of an epoch: rewards are paid per epoch.
    pub epoch_ms: u64,
    /// The most compute providers are ever paid in epoch rewards.
    pub provider_pool: Amount,
    /// Share of what remains of the provider pool emitted per year, in basis points: a
    /// yearly decaying emission.
    pub provider_rate_bps: u32,
    /// Share of each provider emission for Proof of Capacity; the rest is Proof of Delivery.
    pub capacity_share_bps: u32,
    /// Paid to checkers by correct tasks, evenly over `checker_schedule_ms`.
    pub checker_pool: Amount,
    /// Paid each quarter over the same schedule to checkers above `bonus_uptime_bps`.
    pub checker_bonus_pool: Amount,
    pub checker_schedule_ms: u64,
    pub quarter_ms: u64,
    pub bonus_uptime_bps: u16,
    /// Share of host rewards paid at once; the rest vests linearly over `vesting_ms`.
    pub immediate_bps: u32,
    pub vesting_ms: u64,
    /// Proof of Delivery weight of tiers 1, 2 and 3, in basis points.
    pub tier_bps: [u32; 3],
    /// The most a container earns in delivery rewards per epoch, in basis points of what
    /// its buyers paid in it; below the genesis `fee_bps` (or zero), so that leasing to
    /// oneself always costs more in fees than it earns back (docs/economics.md).
    #[serde(default = "default_delivery_cap_bps")]
    pub delivery_cap_bps: u32,
    /// Usage billable beyond the observed time, per GPU: the host's clock and its report
    /// latency against the indexer's (docs/ledger.md, "Billable time").
    #[serde(default = "default_usage_slack_ms")]
    pub usage_slack_ms: u64,
}

/// The default [`Economics::delivery_cap_bps`]: 10% of what buyers paid, half the
/// protocol's default fee.
pub const DEFAULT_DELIVERY_CAP_BPS: u32 = 1_000;

fn default_delivery_cap_bps() -> u32 {
    DEFAULT_DELIVERY_CAP_BPS
}

/// The default [`Economics::usage_slack_ms`]: two seconds per GPU.
pub const USAGE_SLACK_MS: u64 = 2_000;

fn default_usage_slack_ms() -> u64 {
    USAGE_SLACK_MS
}

impl Economics {
    /// The public network's parameters: 180-day unbonding and vesting, daily epochs, 10% of
    /// supply to checkers over four years plus a 5% bonus, 35% to providers.
    pub fn network(total: Amount) -> Economics {
        Economics {
            staking_coefficient: Amount::from_tokens(10_000),
            unbonding_ms: 180 * DAY_MS,
            epoch_ms: DAY_MS,
            provider_pool: Amount(total.0 / 100 * 35),
            provider_rate_bps: 2_000,
            capacity_share_bps: 4_000,
            checker_pool: Amount(total.0 / 10),
            checker_bonus_pool: Amount(total.0 / 20),
            checker_schedule_ms: 4 * YEAR_MS,
            quarter_ms: YEAR_MS / 4,
            bonus_uptime_bps: 9_500,
            immediate_bps: 3_000,
            vesting_ms: 180 * DAY_MS,
            tier_bps: [10_000, 7_500, 5_000],
            delivery_cap_bps: DEFAULT_DELIVERY_CAP_BPS,
            usage_slack_ms: USAGE_SLACK_MS,
        }
    }

    /// A local network: the same rules on a fast clock (minute epochs, five-minute
    /// unbonding, hour-long vesting) and small stakes.
    pub fn local(total: Amount) -> Economics {
        Economics {
            staking_coefficient: Amount::from_tokens(10),
            unbonding_ms: 5 * 60_000,
            epoch_ms: 60_000,
            vesting_ms: 3_600_000,
            ..Economics::network(total)
        }
    }

    /// Epochs over which a vesting grant releases.
    pub fn vesting_steps(&self) -> u64 {
        (self.vesting_ms / self.epoch_ms.max(1)).max(1)
    }

    /// The stake a container of spec weight `k_centi` (K in hundredths) needs.
    pub fn requirement(&self, k_centi: u32) -> Amount {
        Amount(self.staking_coefficient.0 * k_centi as u128 / 100)
    }
}

/// An account no key controls, derived from a label; only protocol rules move its funds.
pub fn system_address(label: &str) -> Address {
    Address::from_word(keccak256(format!("gpumesh:system:{label}")))
}

/// The parameters and initial balances of a network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Genesis {
    pub chain_id: u64,
    /// A local network: simulated GPUs accepted, faucet allowed.
    pub local: bool,
    pub time_ms: u64,
    pub total_supply: Amount,
    /// Signs protocol transactions (escrow closes now; epochs and slashes later).
    pub protocol: Address,
    /// Receives the protocol's fees and rounding remainders.
    pub treasury: Address,
    /// Rewards for compute providers and checkers, emitted per epoch.
    pub reward_pool: Address,
    /// The local network's faucet, whose key the indexer holds.
    pub faucet: Option<Address>,
    /// The protocol's share of each settled payment, in basis points.
    pub fee_bps: u32,
    pub economics: Economics,
    pub allocations: Vec<Allocation>,
    /// Checker licences and how containers are checked (docs/checking.md). Left out of
    /// the serialised genesis when it is the default of a network without checkers, so a
    /// genesis from before checkers keeps its hash.
    #[serde(default = "no_checkers", skip_serializing_if = "is_no_checkers")]
    pub checking: CheckingParams,
}

fn no_checkers() -> CheckingParams {
    CheckingParams::network(Vec::new())
}

fn is_no_checkers(c: &CheckingParams) -> bool {
    *c == no_checkers()
}

/// A first balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub address: Address,
    pub amount: Amount,
    pub label: String,
}

/// Why a genesis cannot start a ledger.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GenesisError {
    #[error("allocations add up to {allocated} base units, not the total supply {supply}")]
    SupplyMismatch { allocated: Amount, supply: Amount },
    #[error(
        "allocations add up to {given} base units, more than the {available} left beside the reward pool"
    )]
    OverAllocated { given: Amount, available: Amount },
    #[error("address {0} is allocated twice")]
    DuplicateAllocation(Address),
    #[error("fee of {0} basis points is over 10000")]
    Fee(u32),
    #[error("the reward pools add up to more than the reward pool's allocation")]
    RewardPools,
    #[error("economics: {0}")]
    Economics(&'static str),
    #[error("checking: {0}")]
    ProofRate(String),
}

impl Genesis {
    /// A local network: half the supply to the reward pool (docs/protocol.md) and the other half
    /// to the faucet that funds test wallets. The treasury starts empty, so its balance is
    /// exactly the fees it collected.
    pub fn local(chain_id: u64, time_ms: u64, protocol: Address, faucet: Address) -> Genesis {
        let total = TOTAL_SUPPLY;
        let reward = Amount(total.0 / 2);
        let faucet_amount = Amount(total.0 - reward.0);
        let reward_pool = system_address("reward-pool");
        let treasury = system_address("treasury");
        Genesis {
            chain_id,
            local: true,
            time_ms,
            total_supply: total,
            protocol,
            treasury,
            reward_pool,
            faucet: Some(faucet),
            fee_bps: DEFAULT_FEE_BPS,
            economics: Economics::local(total),
            checking: CheckingParams::local(Vec::new()),
            allocations: vec![
                Allocation {
                    address: reward_pool,
                    amount: reward,
                    label: "reward-pool".into(),
                },
                Allocation {
                    address: faucet,
                    amount: faucet_amount,
                    label: "faucet".into(),
                },
            ],
        }
    }

    /// A public network: no faucet and the public parameters. The reward pool holds what
    /// providers and checkers will ever be paid (half the supply), `allocations` are the
    /// first balances, and the treasury holds the rest.
    pub fn network(
        chain_id: u64,
        time_ms: u64,
        protocol: Address,
        allocations: Vec<Allocation>,
        checkers: Vec<Address>,
    ) -> Result<Genesis, GenesisError> {
        let total = TOTAL_SUPPLY;
        let economics = Economics::network(total);
        let reward_pool = system_address("reward-pool");
        let treasury = system_address("treasury");
        let reward =
            economics.provider_pool.0 + economics.checker_pool.0 + economics.checker_bonus_pool.0;
        let available = Amount(total.0 - reward);
        let given = allocations
            .iter()
            .fold(0u128, |sum, a| sum.saturating_add(a.amount.0));
        if given > available.0 {
            return Err(GenesisError::OverAllocated {
                given: Amount(given),
                available,
            });
        }
        let mut all = vec![Allocation {
            address: reward_pool,
            amount: Amount(reward),
            label: "reward-pool".into(),
        }];
        all.extend(allocations);
        let rest = total.0 - reward - given;
        if rest > 0 {
            all.push(Allocation {
                address: treasury,
                amount: Amount(rest),
                label: "treasury".into(),
            });
        }
        let genesis = Genesis {
            chain_id,
            local: false,
            time_ms,
            total_supply: total,
            protocol,
            treasury,
            reward_pool,
            faucet: None,
            fee_bps: DEFAULT_FEE_BPS,
            economics,
            allocations: all,
            checking: CheckingParams::network(checkers),
        };
        genesis.validate()?;
        Ok(genesis)
    }

    /// The same genesis with these checker licences.
    pub fn with_checkers(mut self, checkers: Vec<Address>) -> Genesis {
        self.checking.checkers = checkers;
        self
    }

    /// Each catalog entry is one model's, measured, and its proof fits a checker's slot
    /// (the 2N+1 proofs of a container take turns on its GPU).
    fn validate_proof_rates(&self) -> Result<(), GenesisError> {
        let c = &self.checking;
        let mut models = std::collections::BTreeSet::new();
        for rate in &c.sizing.proof_rates {
            let model = rate.model;
            if !models.insert(model) {
                return Err(GenesisError::ProofRate(format!(
                    "{model} has two reference proof rates"
                )));
            }
            if rate.measured.trim().is_empty() || rate.measured.len() > 512 {
                return Err(GenesisError::ProofRate(format!(
                    "{model}'s reference rate must say who measured it, on what, and when (at most 512 characters)"
                )));
            }
            let Some(sized) = c.proof_for(model, false).filter(|_| rate.macs_per_s > 0) else {
                return Err(GenesisError::ProofRate(format!(
                    "{model}'s reference rate must be above zero"
                )));
            };
            if sized.deadline_ms > c.proof_slot_ms() {
                return Err(GenesisError::ProofRate(format!(
                    "a proof of {model} has {} ms, more than a checker's slot of {} ms (the proof window over 2N+1)",
                    sized.deadline_ms,
                    c.proof_slot_ms()
                )));
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<(), GenesisError> {
        let c = &self.checking;
        if c.period_ms == 0 || c.takeover_ms >= c.period_ms {
            return Err(GenesisError::Economics(
                "checking: the period must be longer than zero and than the take-over time",
            ));
        }
        if c.sizing.proof.validate().is_err() {
            return Err(GenesisError::Economics(
                "checking: the proof size is invalid",
            ));
        }
        self.validate_proof_rates()?;
        if c.sizing.simulated_macs_per_tflop > 0 && !self.local {
            return Err(GenesisError::Economics(
                "checking: only a local network may accept simulated GPUs' speed",
            ));
        }
        if !(1..=63).contains(&c.n) {
            return Err(GenesisError::Economics(
                "checking: N must be 1 to 63 (each container gets 2N+1 checkers)",
            ));
        }
        if !c.checkers.is_empty() && c.checkers.len() < c.quorum() {
            return Err(GenesisError::Economics(
                "checking: a network with checkers needs at least 2N+1 of them",
            ));
        }
        let mut licences = c.checkers.clone();
        licences.sort_unstable();
        licences.dedup();
        if licences.len() != c.checkers.len() {
            return Err(GenesisError::Economics(
                "checking: a checker is licensed twice",
            ));
        }
        if self.fee_bps > 10_000 {
            return Err(GenesisError::Fee(self.fee_bps));
        }
        if self.faucet.is_some() && !self.local {
            return Err(GenesisError::Economics("only a local network has a faucet"));
        }
        let mut seen = std::collections::BTreeSet::new();
        let mut allocated: u128 = 0;
        for a in &self.allocations {
            if !seen.insert(a.address) {
                return Err(GenesisError::DuplicateAllocation(a.address));
            }
            allocated = allocated.saturating_add(a.amount.0);
        }
        if allocated != self.total_supply.0 {
            return Err(GenesisError::SupplyMismatch {
                allocated: Amount(allocated),
                supply: self.total_supply,
            });
        }
        let e = &self.economics;
        let pools = e
            .provider_pool
            .0
            .saturating_add(e.checker_pool.0)
            .saturating_add(e.checker_bonus_pool.0);
        let reward_allocation: u128 = self
            .allocations
            .iter()
            .filter(|a| a.address == self.reward_pool)
            .map(|a| a.amount.0)
            .sum();
        if pools > reward_allocation {
            return Err(GenesisError::RewardPools);
        }
        if e.epoch_ms == 0 || e.checker_schedule_ms == 0 || e.quarter_ms == 0 {
            return Err(GenesisError::Economics(
                "epoch, schedule and quarter lengths must be more than zero",
            ));
        }
        if e.provider_rate_bps > 10_000
            || e.capacity_share_bps > 10_000
            || e.immediate_bps > 10_000
            || e.bonus_uptime_bps > 10_000
        {
            return Err(GenesisError::Economics(
                "shares are at most 10000 basis points",
            ));
        }
        if e.tier_bps.iter().any(|&t| t > 10_000) {
            return Err(GenesisError::Economics(
                "tier weights are at most 10000 basis points",
            ));
        }
        if e.delivery_cap_bps > 0 && e.delivery_cap_bps >= self.fee_bps {
            return Err(GenesisError::Economics(
                "the delivery cap must be below the fee (or zero), so that leasing to oneself loses money",
            ));
        }
        Ok(())
    }

    /// Commits to every field; the first block's parent.
    pub fn hash(&self) -> B256 {
        let mut bytes = b"gpumesh-genesis-v1".to_vec();
        serde_json::to_writer(&mut bytes, self).expect("genesis serialises");
        keccak256(bytes)
    }
}

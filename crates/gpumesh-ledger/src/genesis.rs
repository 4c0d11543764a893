//! The genesis: the parameters and first balances every replay starts from.

use alloy_primitives::{Address, B256, keccak256};
use gpumesh_types::Amount;
use serde::{Deserialize, Serialize};

/// Total supply: 42 billion tokens (DESIGN.md §4).
pub const TOTAL_SUPPLY: Amount = Amount::from_tokens(42_000_000_000);
/// The protocol's share of each service fee, in basis points (20%).
pub const DEFAULT_FEE_BPS: u32 = 2_000;

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
    pub allocations: Vec<Allocation>,
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
    #[error("address {0} is allocated twice")]
    DuplicateAllocation(Address),
    #[error("fee of {0} basis points is over 10000")]
    Fee(u32),
}

impl Genesis {
    /// A local network: half the supply to the reward pool (DESIGN.md §4) and the other half
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

    pub fn validate(&self) -> Result<(), GenesisError> {
        if self.fee_bps > 10_000 {
            return Err(GenesisError::Fee(self.fee_bps));
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
        Ok(())
    }

    /// Commits to every field; the first block's parent.
    pub fn hash(&self) -> B256 {
        let mut bytes = b"gpumesh-genesis-v1".to_vec();
        serde_json::to_writer(&mut bytes, self).expect("genesis serialises");
        keccak256(bytes)
    }
}

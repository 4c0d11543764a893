//! The settlement ledger as a deterministic state machine (docs/ledger.md).
//!
//! Accounts hold integer balances in base units; buyers lock escrows per lease; hosts'
//! signed usage records pay hosts and the treasury out of them; the rest is refunded.
//! Every change is a signed [`gpumesh_types::Tx`] with a per-account nonce, batched into
//! hash-chained blocks that commit to a transaction root and a state root, so anyone can
//! replay the chain from genesis and check it ([`replay()`]).
//!
//! This crate does no I/O and reads no clock: time is an argument, storage is the caller's.

mod commitment;
pub mod genesis;
pub mod merkle;
mod par;
mod replay;
pub mod retired;
mod rewards;
mod snapshot;
mod state;

pub use genesis::{
    Allocation, DAY_MS, DEFAULT_DELIVERY_CAP_BPS, DEFAULT_FEE_BPS, Economics, Genesis,
    GenesisError, TOTAL_SUPPLY, YEAR_MS, system_address,
};
pub use replay::{
    ProofError, ReplayError, ReplayReport, prove_reward, prove_reward_in, replay, replay_from,
    reward_proof,
};
pub use retired::{MAX_RETIRED_PER_TX, RangesError, Retired, into_transactions, ranges_of};
pub use rewards::{
    DeliveryClaim, DeliveryPayout, delivery_cap, pay_delivery, reward_leaf, reward_tree,
};
pub use snapshot::LedgerSnapshot;
pub use state::{
    Account, Activity, Applied, CheckedTx, Escrow, Ledger, LedgerError, Stake, Totals, Verified,
    Vesting, escrow_amount, fee_split, usage_cost,
};

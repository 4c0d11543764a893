//! Ledger snapshots: the whole state at a sealed block, so that a restart starts there and
//! replays only the blocks after it.
//!
//! A snapshot holds the block's header and every state entry (accounts, escrows, stakes,
//! allowances, vesting, cumulative rewards, the pools' totals). Loading one rebuilds the
//! state commitment from the entries and checks that it gives the header's state root,
//! that the reward root is the header's and that supply is conserved: a snapshot that
//! does not match the block it names is refused, so trusting one is trusting the block.
//! `replay` from genesis stays the audit (`gpumesh ledger verify`).
//!
//! Layout 2 appends the retired lease ids and their sums to layout 1's fields; layout 1,
//! written before leases retired, is read as having retired nothing.

use alloy_primitives::{Address, B256};
use gpumesh_types::{Amount, BlockHeader, LeaseId};
use serde::{Deserialize, Serialize};

use crate::genesis::Genesis;
use crate::par::Map;
use crate::retired::Retired;
use crate::state::{Account, Escrow, Key, Ledger, Stake, Totals, Vesting};

/// The first byte of an encoded snapshot: its layout.
const FORMAT: u8 = 2;
/// The layout before retired leases, still read.
const FORMAT_1: u8 = 1;

/// The ledger's state right after a sealed block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSnapshot {
    /// The block the state is the state after.
    pub head: BlockHeader,
    pub(crate) accounts: Vec<(Address, Account)>,
    pub(crate) escrows: Vec<(LeaseId, Escrow)>,
    pub(crate) stakes: Vec<((Address, u16), Stake)>,
    pub(crate) allowances: Vec<((Address, u64), Amount)>,
    pub(crate) vesting: Vec<(Address, Vesting)>,
    pub(crate) cumulative: Vec<(Address, Amount)>,
    pub(crate) totals: Totals,
    pub(crate) reward_root: B256,
    /// Encoded after the fields above (layout 2), so that layout 1 still decodes.
    #[serde(skip)]
    pub(crate) retired: Retired,
}

impl LedgerSnapshot {
    pub fn height(&self) -> u64 {
        self.head.height
    }

    /// The transactions the chain holds up to and including the snapshot's block.
    pub fn transaction_count(&self) -> u64 {
        self.head.first_seq + self.head.tx_count as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT];
        out.extend(postcard::to_stdvec(self).expect("a snapshot serialises"));
        out.extend(postcard::to_stdvec(&self.retired).expect("a snapshot serialises"));
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<LedgerSnapshot, String> {
        let bad = |e: postcard::Error| format!("the snapshot does not decode: {e}");
        match bytes.split_first() {
            Some((&FORMAT, rest)) => {
                let (mut snapshot, tail) =
                    postcard::take_from_bytes::<LedgerSnapshot>(rest).map_err(bad)?;
                snapshot.retired = postcard::from_bytes(tail).map_err(bad)?;
                Ok(snapshot)
            }
            Some((&FORMAT_1, rest)) => postcard::from_bytes(rest).map_err(bad),
            Some((other, _)) => Err(format!(
                "snapshot layout {other} is not one this version reads ({FORMAT_1} or {FORMAT})"
            )),
            None => Err("the snapshot is empty".into()),
        }
    }
}

fn sorted<K: Ord + Copy, V: Clone>(map: &Map<K, V>) -> Vec<(K, V)> {
    let mut entries: Vec<(K, V)> = map.iter().map(|(k, v)| (*k, v.clone())).collect();
    entries.sort_unstable_by_key(|(k, _)| *k);
    entries
}

impl Ledger {
    /// The state after the head block; `None` while transactions wait to be sealed (a
    /// snapshot is always of a block).
    pub fn snapshot(&self) -> Option<LedgerSnapshot> {
        if !self.unsealed().is_empty() {
            return None;
        }
        Some(LedgerSnapshot {
            head: self.head().clone(),
            accounts: sorted(&self.accounts),
            escrows: sorted(&self.escrows),
            stakes: sorted(&self.stakes),
            allowances: sorted(&self.allowances),
            vesting: sorted(&self.vesting),
            cumulative: sorted(&self.cumulative),
            totals: self.totals,
            reward_root: self.reward_root,
            retired: self.retired.clone(),
        })
    }

    /// The ledger a snapshot holds, checked against the block it names: the state root
    /// recomputed from its entries, the reward root, and the supply.
    pub fn from_snapshot(genesis: Genesis, snapshot: LedgerSnapshot) -> Result<Ledger, String> {
        let head = snapshot.head.clone();
        let mut ledger = Ledger::new(genesis).map_err(|e| e.to_string())?;
        ledger.accounts = snapshot.accounts.into_iter().collect();
        ledger.escrows = snapshot.escrows.into_iter().collect();
        ledger.stakes = snapshot.stakes.into_iter().collect();
        ledger.allowances = snapshot.allowances.into_iter().collect();
        ledger.vesting = snapshot.vesting.into_iter().collect();
        ledger.cumulative = snapshot.cumulative.into_iter().collect();
        ledger.totals = snapshot.totals;
        ledger.reward_root = snapshot.reward_root;
        ledger.retired = snapshot.retired;
        ledger.recount_activity();
        // Every entry is new to the commitment (genesis's accounts were touched already
        // and are either still here or rewritten as empty).
        let keys: Vec<Key> = (ledger.accounts.keys().map(|a| Key::Account(*a)))
            .chain(ledger.vesting.keys().map(|a| Key::Account(*a)))
            .chain(ledger.cumulative.keys().map(|a| Key::Account(*a)))
            .chain(ledger.escrows.keys().map(|l| Key::Escrow(*l)))
            .chain(ledger.stakes.keys().map(|(a, i)| Key::Stake(*a, *i)))
            .chain(
                ledger
                    .allowances
                    .keys()
                    .map(|(a, d)| Key::Allowance(*a, *d)),
            )
            .chain(
                ledger
                    .retired
                    .ranges()
                    .map(|(first, _)| Key::Retired(first)),
            )
            .chain([Key::Totals, Key::RetiredSums])
            .collect();
        for key in keys {
            ledger.touch(key);
        }
        let state_root = ledger.state_root();
        if state_root != head.state_root {
            return Err(format!(
                "the snapshot's state gives root {state_root}, but block {} has {}",
                head.height, head.state_root
            ));
        }
        if ledger.reward_root != head.reward_root {
            return Err(format!(
                "the snapshot's reward root {} is not block {}'s {}",
                ledger.reward_root, head.height, head.reward_root
            ));
        }
        if !ledger.supply_conserved() {
            return Err(format!(
                "the snapshot holds {} against a total supply of {}",
                ledger.supply_held(),
                ledger.genesis().total_supply
            ));
        }
        ledger.restart_at(head);
        Ok(ledger)
    }
}

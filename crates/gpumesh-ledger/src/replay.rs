//! Replaying a chain from genesis: how a restarted indexer rebuilds its ledger and how
//! `gpumesh ledger verify` audits one.
//!
//! Replay re-applies every transaction (so every signature and nonce is checked again),
//! recomputes every block's transaction and state roots, follows the hash chain, and
//! checks that balances plus escrows still add up to the total supply after each block.

use alloy_primitives::{Address, B256};
use gpumesh_types::{Amount, BlockHeader, LedgerEntry, RewardProof, TxKind};

use crate::genesis::{Genesis, GenesisError};
use crate::merkle::MerkleTree;
use crate::rewards::{reward_leaf, reward_tree};
use crate::state::{Ledger, LedgerError};

/// What a successful replay found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayReport {
    /// Sealed blocks after genesis.
    pub blocks: u64,
    pub transactions: u64,
    pub state_root: B256,
    pub head_hash: B256,
    pub supply_conserved: bool,
}

/// The first thing that did not check out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    #[error("genesis is invalid: {0}")]
    Genesis(#[from] GenesisError),
    #[error("block {height} is bad: {reason}")]
    Block { height: u64, reason: String },
    #[error("unsealed transaction {seq} is bad: {reason}")]
    Unsealed { seq: u64, reason: String },
}

impl Ledger {
    /// Applies a recorded transaction, which must be the next in sequence.
    pub fn apply_entry(&mut self, entry: &LedgerEntry) -> Result<(), LedgerError> {
        if entry.seq != self.transaction_count() {
            return Err(LedgerError::OutOfSequence {
                expected: self.transaction_count(),
                got: entry.seq,
            });
        }
        self.apply(&entry.tx, entry.time_ms).map(|_| ())
    }

    /// Replays one sealed block on top of the current head and adopts it as the new head.
    pub fn replay_block(
        &mut self,
        header: &BlockHeader,
        entries: &[LedgerEntry],
    ) -> Result<(), String> {
        let head = self.head().clone();
        if !self.unsealed().is_empty() {
            return Err("the ledger has unsealed transactions before this block".into());
        }
        if header.height != head.height + 1 {
            return Err(format!("height follows {}", head.height));
        }
        if header.prev_hash != head.hash() {
            return Err(format!(
                "parent hash {} is not the hash of block {} ({})",
                header.prev_hash,
                head.height,
                head.hash()
            ));
        }
        if header.time_ms < head.time_ms {
            return Err("its time is before its parent's".into());
        }
        if header.first_seq != self.transaction_count() {
            return Err(format!(
                "first transaction is {}, expected {}",
                header.first_seq,
                self.transaction_count()
            ));
        }
        if header.tx_count as usize != entries.len() || entries.is_empty() {
            return Err(format!(
                "header counts {} transactions, block holds {}",
                header.tx_count,
                entries.len()
            ));
        }
        // Check signatures on every core, then apply in order.
        let verified = verify_all(entries);
        for (entry, verified) in entries.iter().zip(verified) {
            if entry.seq != self.transaction_count() {
                return Err(format!(
                    "transaction {} is out of sequence; expected {}",
                    entry.seq,
                    self.transaction_count()
                ));
            }
            let verified = verified.map_err(|e| format!("transaction {}: {e}", entry.seq))?;
            self.apply_verified(verified, entry.time_ms)
                .map_err(|e| format!("transaction {}: {e}", entry.seq))?;
        }
        let tx_root = self.unsealed_tx_root();
        if tx_root != header.tx_root {
            return Err(format!(
                "transaction root {} does not match the transactions ({tx_root})",
                header.tx_root
            ));
        }
        let state_root = self.state_root();
        if state_root != header.state_root {
            return Err(format!(
                "state root {} does not match the replayed state ({state_root})",
                header.state_root
            ));
        }
        if header.reward_root != self.reward_root() {
            return Err(format!(
                "reward root {} does not match the replayed rewards ({})",
                header.reward_root,
                self.reward_root()
            ));
        }
        if !self.supply_conserved() {
            return Err(format!(
                "supply not conserved: {} held against a total supply of {}",
                self.supply_held(),
                self.genesis().total_supply
            ));
        }
        self.set_head(header.clone());
        Ok(())
    }
}

/// Checks the signatures of `entries` on all cores.
fn verify_all(entries: &[LedgerEntry]) -> Vec<Result<crate::Verified<'_>, LedgerError>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(8);
    if threads == 1 || entries.len() < 64 {
        return entries
            .iter()
            .map(|e| crate::Verified::check(&e.tx))
            .collect();
    }
    let chunk = entries.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = entries
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|e| crate::Verified::check(&e.tx))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("signature checks do not panic"))
            .collect()
    })
}

/// Replays `blocks` (in height order, starting at 1) and then the unsealed entries.
pub fn replay<B, U>(
    genesis: Genesis,
    blocks: B,
    unsealed: U,
) -> Result<(Ledger, ReplayReport), ReplayError>
where
    B: IntoIterator<Item = (BlockHeader, Vec<LedgerEntry>)>,
    U: IntoIterator<Item = LedgerEntry>,
{
    replay_from(Ledger::new(genesis)?, blocks, unsealed)
}

/// Replays `blocks` (in height order, starting right after `ledger`'s head: a new ledger's
/// or a snapshot's) and then the unsealed entries. The report counts the blocks replayed.
pub fn replay_from<B, U>(
    mut ledger: Ledger,
    blocks: B,
    unsealed: U,
) -> Result<(Ledger, ReplayReport), ReplayError>
where
    B: IntoIterator<Item = (BlockHeader, Vec<LedgerEntry>)>,
    U: IntoIterator<Item = LedgerEntry>,
{
    let mut blocks_seen = 0;
    for (header, entries) in blocks {
        ledger
            .replay_block(&header, &entries)
            .map_err(|reason| ReplayError::Block {
                height: header.height,
                reason,
            })?;
        blocks_seen += 1;
    }
    for entry in unsealed {
        ledger
            .apply_entry(&entry)
            .map_err(|e| ReplayError::Unsealed {
                seq: entry.seq,
                reason: e.to_string(),
            })?;
    }
    let report = ReplayReport {
        blocks: blocks_seen,
        transactions: ledger.transaction_count(),
        state_root: ledger.state_root(),
        head_hash: ledger.head().hash(),
        supply_conserved: ledger.supply_conserved(),
    };
    Ok((ledger, report))
}

/// Why a reward proof could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("genesis is invalid: {0}")]
    Genesis(#[from] GenesisError),
    #[error("transaction {seq} does not replay: {reason}")]
    Replay { seq: u64, reason: String },
    #[error("epoch {epoch} has not been closed yet (the next epoch to close is {next})")]
    EpochNotClosed { epoch: u64, next: u64 },
    #[error("{account} had no rewards by the end of epoch {epoch}")]
    NoRewards { account: Address, epoch: u64 },
    #[error("the reward tree of epoch {epoch} has no leaf for the reward of {account}")]
    NotInTree { account: Address, epoch: u64 },
}

/// Proves `account`'s cumulative reward after `epoch` in the reward tree over `leaves`:
/// every account rewarded by then with its cumulative reward, as the ledger held them
/// when the epoch closed (and as the store keeps them per epoch).
pub fn prove_reward<I>(epoch: u64, leaves: I, account: Address) -> Result<RewardProof, ProofError>
where
    I: IntoIterator<Item = (Address, Amount)>,
{
    let leaves: Vec<(Address, Amount)> = leaves.into_iter().collect();
    let tree = reward_tree(leaves.iter().copied());
    prove_reward_in(epoch, &leaves, &tree, account)
}

/// [`prove_reward`] with the tree over `leaves` already built (stored with its epoch):
/// a lookup, no hashing beyond the account's leaf.
pub fn prove_reward_in(
    epoch: u64,
    leaves: &[(Address, Amount)],
    tree: &MerkleTree,
    account: Address,
) -> Result<RewardProof, ProofError> {
    let cumulative = leaves
        .iter()
        .find(|(a, _)| *a == account)
        .map(|(_, v)| *v)
        .filter(|v| v.0 > 0)
        .ok_or(ProofError::NoRewards { account, epoch })?;
    let leaf = reward_leaf(&account, cumulative);
    // A tree built from `leaves` always has the leaf; a stored one that does not is not
    // the tree of these leaves.
    let proof = tree
        .proof(&leaf)
        .ok_or(ProofError::NotInTree { account, epoch })?;
    Ok(RewardProof {
        account,
        epoch,
        cumulative,
        leaf,
        proof,
        root: tree.root(),
    })
}

/// Replays `entries` from genesis up to the close of `epoch` and proves `account`'s
/// cumulative reward against the reward root recorded then.
pub fn reward_proof<I>(
    genesis: Genesis,
    entries: I,
    account: Address,
    epoch: u64,
) -> Result<RewardProof, ProofError>
where
    I: IntoIterator<Item = LedgerEntry>,
{
    let mut ledger = Ledger::new(genesis)?;
    for entry in entries {
        ledger.apply_entry(&entry).map_err(|e| ProofError::Replay {
            seq: entry.seq,
            reason: e.to_string(),
        })?;
        if matches!(&entry.tx.tx.kind, TxKind::Epoch(e) if e.epoch == epoch) {
            let proof = prove_reward(epoch, ledger.cumulative_rewards(), account)?;
            debug_assert_eq!(proof.root, ledger.reward_root());
            return Ok(proof);
        }
    }
    Err(ProofError::EpochNotClosed {
        epoch,
        next: ledger.totals().next_epoch,
    })
}

//! The ledger's state and its transition function.
//!
//! [`Ledger::apply`] takes a signed transaction and the time it is applied, checks
//! everything (chain, signature, nonce, funds, escrow rules) before it changes anything,
//! and then applies it whole. Nothing here reads a clock or a disk.

use std::collections::VecDeque;

use crate::par::{self, Map};

use alloy_primitives::{Address, B256, keccak256};
use gpumesh_types::{
    Amount, BlockHeader, CloseReason, LeaseId, LeaseRange, LedgerEntry, MS_PER_HOUR,
    SettlementView, SignedTx, TxKind, UsageRecord,
};

use crate::commitment::Commitment;
use crate::genesis::{Genesis, GenesisError};
use crate::merkle;
use crate::retired::Retired;

/// A balance and the count of transactions the account has signed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Account {
    pub balance: Amount,
    pub nonce: u64,
}

/// Funds a buyer locked for one lease, and what has been paid out of them.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Escrow {
    pub buyer: Address,
    pub host: Address,
    pub price_per_gpu_hour: Amount,
    pub gpus: u16,
    pub max_gpu_ms: u64,
    pub amount: Amount,
    pub gpu_ms: u64,
    pub charged: Amount,
    pub host_share: Amount,
    pub treasury_share: Amount,
    pub refund: Amount,
    pub closed: bool,
    /// When the indexer accepted the host's report that the workload started (the
    /// time of the protocol's `StartLease`); `None` while it has not started. Usage is
    /// billable only from then.
    #[serde(default)]
    pub started_ms: Option<u64>,
}

impl Escrow {
    /// The most GPU-milliseconds that may be billed at `now_ms`: every GPU from the
    /// observed start until now, plus the network's stated slack per GPU; nothing before
    /// a start. Never more than the escrow covers.
    pub fn billable_gpu_ms(&self, now_ms: u64, slack_ms: u64) -> u64 {
        let Some(start) = self.started_ms else {
            return 0;
        };
        let elapsed = now_ms.saturating_sub(start).saturating_add(slack_ms);
        (self.gpus as u64)
            .saturating_mul(elapsed)
            .min(self.max_gpu_ms)
    }

    /// Still locked in the escrow: what is neither paid out nor refunded.
    pub fn held(&self) -> Amount {
        Amount(self.amount.0 - self.charged.0 - self.refund.0)
    }

    pub fn view(&self) -> SettlementView {
        SettlementView {
            escrow: self.amount,
            gpu_ms: self.gpu_ms,
            charged: self.charged,
            host_share: self.host_share,
            treasury_share: self.treasury_share,
            refund: self.refund,
            closed: self.closed,
            started_ms: self.started_ms,
            max_gpu_ms: self.max_gpu_ms,
            bound_gpu_ms: None,
        }
    }
}

/// A container's stake: bonded, and what is unbonding until when.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stake {
    pub bonded: Amount,
    pub unbonding: Amount,
    pub unbond_at_ms: u64,
}

/// Rewards an account has still to receive: each grant releases in equal steps, one per
/// epoch, the last step taking the remainder.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Vesting {
    pub locked: Amount,
    /// What the next epoch releases from grants that are not ending then.
    pub(crate) rate: u128,
    /// Grants by the epoch of their last step: (epoch, per-step amount, remainder).
    pub(crate) ends: VecDeque<(u64, u128, u128)>,
}

/// The key of one state entry, for the state commitment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Key {
    Account(Address),
    Escrow(LeaseId),
    Stake(Address, u16),
    Totals,
    Allowance(Address, u64),
    /// A range of retired lease ids, by its first id.
    Retired(u64),
    /// What retired escrows settled.
    RetiredSums,
}

impl Key {
    /// The key's place in the state commitment: two bytes that pick its bucket, a tag,
    /// then the key itself, zero-padded to 32 bytes. Addresses are already hashes, so an
    /// account and its stakes take their bucket from the address (and share it); lease
    /// ids are counted up, so they are spread by a fixed odd multiplier. No hashing: the
    /// leaf hash covers the content.
    fn id(&self) -> B256 {
        let mut b = [0u8; 32];
        match self {
            Key::Account(a) => {
                b[..2].copy_from_slice(&a[..2]);
                b[2] = 1;
                b[3..23].copy_from_slice(a.as_slice());
            }
            Key::Escrow(l) => {
                let spread = l.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48;
                b[..2].copy_from_slice(&(spread as u16).to_be_bytes());
                b[2] = 2;
                b[3..11].copy_from_slice(&l.0.to_be_bytes());
            }
            Key::Stake(a, i) => {
                b[..2].copy_from_slice(&a[..2]);
                b[2] = 3;
                b[3..23].copy_from_slice(a.as_slice());
                b[23..25].copy_from_slice(&i.to_be_bytes());
            }
            Key::Totals => b[2] = 4,
            Key::Allowance(a, deployment) => {
                b[..2].copy_from_slice(&a[..2]);
                b[2] = 5;
                b[3..23].copy_from_slice(a.as_slice());
                b[23..31].copy_from_slice(&deployment.to_be_bytes());
            }
            Key::Retired(first) => {
                let spread = first.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 48;
                b[..2].copy_from_slice(&(spread as u16).to_be_bytes());
                b[2] = 6;
                b[3..11].copy_from_slice(&first.to_be_bytes());
            }
            Key::RetiredSums => b[2] = 7,
        }
        B256::new(b)
    }
}

/// What the reward pools have paid so far, and the next epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub provider_emitted: Amount,
    pub checker_emitted: Amount,
    pub bonus_emitted: Amount,
    pub next_epoch: u64,
}

/// Why a transaction was rejected. Nothing of a rejected transaction is applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    #[error("transaction is for chain {got}, this ledger is chain {expected}")]
    WrongChain { expected: u64, got: u64 },
    #[error("bad signature: {0}")]
    BadSignature(String),
    #[error("wrong nonce for {account}: expected {expected}, got {got}")]
    WrongNonce {
        account: Address,
        expected: u64,
        got: u64,
    },
    #[error("insufficient funds in {account}: needs {needed} base units, has {available}")]
    InsufficientFunds {
        account: Address,
        needed: Amount,
        available: Amount,
    },
    #[error("account {0} is unknown: it has never held tokens")]
    UnknownAccount(Address),
    #[error("amount must be more than zero")]
    ZeroAmount,
    #[error("arithmetic overflow: {0}")]
    Overflow(&'static str),
    #[error("escrow for lease {0} already exists")]
    EscrowExists(LeaseId),
    #[error("no escrow for lease {0}")]
    UnknownEscrow(LeaseId),
    #[error("escrow for lease {0} is already closed")]
    EscrowClosed(LeaseId),
    #[error("escrow amount {got} does not equal price × GPUs × maximum duration = {expected}")]
    EscrowAmount { expected: Amount, got: Amount },
    #[error("invalid escrow terms: {0}")]
    EscrowTerms(&'static str),
    #[error("{signer} is not the host of lease {lease}")]
    NotEscrowHost { lease: LeaseId, signer: Address },
    #[error("usage of lease {lease} went down from {settled} to {reported} GPU-ms")]
    UsageDecreased {
        lease: LeaseId,
        settled: u64,
        reported: u64,
    },
    #[error("usage of lease {lease} ({reported} GPU-ms) exceeds what its escrow covers ({max})")]
    UsageExceedsEscrow {
        lease: LeaseId,
        reported: u64,
        max: u64,
    },
    #[error(
        "usage of lease {lease} ({reported} GPU-ms) exceeds the time observed since its start: at most {bound} GPU-ms are billable now"
    )]
    UsageExceedsElapsed {
        lease: LeaseId,
        reported: u64,
        bound: u64,
    },
    #[error("lease {0} has already started")]
    AlreadyStarted(LeaseId),
    #[error("lease {0} appears twice in one usage batch")]
    DuplicateUsage(LeaseId),
    #[error("a usage batch must hold at least one record")]
    EmptyUsage,
    #[error("only the protocol key may sign this transaction")]
    NotProtocol,
    #[error("recorded transaction {got} is out of sequence; expected {expected}")]
    OutOfSequence { expected: u64, got: u64 },
    #[error("container {index} of {host} has nothing staked")]
    NothingStaked { host: Address, index: u16 },
    #[error("container {index} of {host} has nothing unbonding")]
    NothingUnbonding { host: Address, index: u16 },
    #[error("the stake of container {index} unbonds at {at_ms}; it is {now_ms}")]
    StillUnbonding { index: u16, at_ms: u64, now_ms: u64 },
    #[error("epoch {got} is out of order; the next epoch is {expected}")]
    EpochOutOfOrder { expected: u64, got: u64 },
    #[error("invalid epoch: {0}")]
    InvalidEpoch(String),
    #[error("lease {0} is retired: its lease was archived, and no escrow can be opened for it")]
    LeaseRetired(LeaseId),
    #[error("escrow for lease {0} is still open; only closed escrows retire")]
    RetiringOpenEscrow(LeaseId),
    #[error("cannot retire these leases: {0}")]
    RetireRanges(#[from] crate::retired::RangesError),
    #[error("{owner} allows {allowed} base units for deployment {deployment}; {needed} are needed")]
    AllowanceExceeded {
        owner: Address,
        deployment: u64,
        needed: Amount,
        allowed: Amount,
    },
}

/// Proof that a transaction's signature was checked: only [`Verified::check`] makes one,
/// and it borrows the very transaction it checked, so [`Ledger::apply_verified`] applies
/// that transaction and no other: the tie is in the type, not in a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Verified<'a> {
    stx: &'a SignedTx,
    hash: B256,
}

impl<'a> Verified<'a> {
    /// Recovers the signer and checks it is the transaction's `from`.
    pub fn check(stx: &'a SignedTx) -> Result<Verified<'a>, LedgerError> {
        let hash = stx
            .verify()
            .map_err(|e| LedgerError::BadSignature(e.to_string()))?;
        Ok(Verified { stx, hash })
    }

    /// [`Verified::check`] for a transaction this process just signed, with the hash it
    /// signed: the signature is checked all the same. Only an epoch close's hash, which
    /// costs hundreds of milliseconds, is taken as given (and compared in debug builds);
    /// every other transaction's is computed again and must agree.
    pub fn check_signed_here(stx: &'a SignedTx, hash: B256) -> Result<Verified<'a>, LedgerError> {
        if !matches!(stx.tx.kind, TxKind::Epoch(_)) {
            return Verified::check(stx).and_then(|v| {
                if v.hash == hash {
                    Ok(v)
                } else {
                    Err(LedgerError::BadSignature(
                        "the hash given is not the transaction's".into(),
                    ))
                }
            });
        }
        let hash = stx
            .verify_hashed(hash)
            .map_err(|e| LedgerError::BadSignature(e.to_string()))?;
        Ok(Verified { stx, hash })
    }

    /// The transaction hash the signature covers.
    pub fn hash(&self) -> B256 {
        self.hash
    }

    /// The transaction that was checked.
    pub fn tx(&self) -> &'a SignedTx {
        self.stx
    }
}

/// A transaction whose signature was checked, owned: checked on one thread (an API
/// worker), applied on another (the one that holds the ledger), so the check costs the
/// ledger's holder nothing. [`CheckedTx::verified`] lends it as a [`Verified`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedTx {
    stx: SignedTx,
    hash: B256,
}

impl CheckedTx {
    /// Recovers the signer and checks it is the transaction's `from`.
    pub fn check(stx: SignedTx) -> Result<CheckedTx, LedgerError> {
        let hash = Verified::check(&stx)?.hash;
        Ok(CheckedTx { stx, hash })
    }

    pub fn verified(&self) -> Verified<'_> {
        Verified {
            stx: &self.stx,
            hash: self.hash,
        }
    }

    pub fn tx(&self) -> &SignedTx {
        &self.stx
    }
}

/// A transaction the ledger accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub entry: LedgerEntry,
    pub hash: B256,
}

/// The ledger: accounts, escrows, the chain head and the transactions not yet sealed.
#[derive(Clone, Debug)]
pub struct Ledger {
    pub(crate) genesis: Genesis,
    pub(crate) accounts: Map<Address, Account>,
    pub(crate) escrows: Map<LeaseId, Escrow>,
    pub(crate) stakes: Map<(Address, u16), Stake>,
    /// What the protocol may still spend of an owner's balance on a deployment's escrows.
    pub(crate) allowances: Map<(Address, u64), Amount>,
    pub(crate) vesting: Map<Address, Vesting>,
    /// Everything each account was ever granted in rewards.
    pub(crate) cumulative: Map<Address, Amount>,
    pub(crate) totals: Totals,
    /// The reward root after the last epoch.
    pub(crate) reward_root: B256,
    /// The ids of archived leases, and what their escrows settled.
    pub(crate) retired: Retired,
    next_seq: u64,
    head: BlockHeader,
    unsealed: Vec<LedgerEntry>,
    /// The transaction-root leaf of each unsealed entry, made while its hash was at hand.
    unsealed_leaves: Vec<B256>,
    commitment: Commitment,
    /// Entries changed since the commitment last saw them.
    touched: Vec<Key>,
    /// Running sums over every escrow, for statistics that must not walk them.
    activity: Activity,
    /// The reward tree the last epoch close built (for its root), until someone takes it
    /// to store: so it is built once (not committed; rebuilt by nobody).
    pub(crate) reward_tree: Option<crate::merkle::MerkleTree>,
}

/// What every escrow together has settled, kept as they settle (not committed: it is
/// derived from the escrows and the retired sums, and rebuilt from them when a snapshot
/// loads).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Activity {
    /// GPU-milliseconds of usage settled.
    pub delivered_gpu_ms: u64,
    /// The treasury's fees out of that usage.
    pub fees: Amount,
    /// What open escrows still hold for their leases.
    pub held: Amount,
}

impl Activity {
    /// The sums over `escrows`, counted afresh: what the running sums must equal.
    pub fn of<'a>(escrows: impl IntoIterator<Item = &'a Escrow>) -> Activity {
        escrows
            .into_iter()
            .fold(Activity::default(), |a, e| Activity {
                delivered_gpu_ms: a.delivered_gpu_ms.saturating_add(e.gpu_ms),
                fees: Amount(a.fees.0.saturating_add(e.treasury_share.0)),
                held: Amount(a.held.0 + if e.closed { 0 } else { e.held().0 }),
            })
    }
}

/// What escrow a lease needs: price × GPUs × maximum duration, rounded up to the base unit.
pub fn escrow_amount(
    price_per_gpu_hour: Amount,
    gpus: u16,
    max_duration_ms: u64,
) -> Option<Amount> {
    let gpu_ms = (gpus as u128).checked_mul(max_duration_ms as u128)?;
    price_per_gpu_hour.mul_div_ceil(gpu_ms, MS_PER_HOUR as u128)
}

/// What `gpu_ms` of usage costs at `price_per_gpu_hour`, rounded down.
pub fn usage_cost(price_per_gpu_hour: Amount, gpu_ms: u64) -> Option<Amount> {
    price_per_gpu_hour.mul_div_floor(gpu_ms as u128, MS_PER_HOUR as u128)
}

/// Splits a payment into the host's and the treasury's parts; the host gets the remainder.
pub fn fee_split(charged: Amount, fee_bps: u32) -> (Amount, Amount) {
    let treasury = charged
        .mul_div_floor(fee_bps as u128, 10_000)
        .unwrap_or(Amount::ZERO);
    (Amount(charged.0 - treasury.0), treasury)
}

impl Ledger {
    /// The ledger right after genesis, with block 0 as its head.
    pub fn new(genesis: Genesis) -> Result<Ledger, GenesisError> {
        genesis.validate()?;
        let mut accounts = Map::default();
        for a in &genesis.allocations {
            accounts.insert(
                a.address,
                Account {
                    balance: a.amount,
                    nonce: 0,
                },
            );
        }
        let mut ledger = Ledger {
            head: BlockHeader {
                height: 0,
                prev_hash: genesis.hash(),
                time_ms: genesis.time_ms,
                first_seq: 0,
                tx_count: 0,
                tx_root: B256::ZERO,
                state_root: B256::ZERO,
                reward_root: B256::ZERO,
            },
            touched: accounts
                .keys()
                .map(|a| Key::Account(*a))
                .chain([Key::Totals])
                .collect(),
            genesis,
            accounts,
            escrows: Map::default(),
            stakes: Map::default(),
            allowances: Map::default(),
            vesting: Map::default(),
            cumulative: Map::default(),
            totals: Totals::default(),
            reward_root: B256::ZERO,
            retired: Retired::default(),
            next_seq: 0,
            unsealed: Vec::new(),
            unsealed_leaves: Vec::new(),
            commitment: Commitment::default(),
            activity: Activity::default(),
            reward_tree: None,
        };
        ledger.head.state_root = ledger.state_root();
        Ok(ledger)
    }

    pub fn genesis(&self) -> &Genesis {
        &self.genesis
    }

    pub fn head(&self) -> &BlockHeader {
        &self.head
    }

    /// Transactions applied since the last sealed block.
    pub fn unsealed(&self) -> &[LedgerEntry] {
        &self.unsealed
    }

    pub fn account(&self, address: &Address) -> Account {
        self.accounts.get(address).copied().unwrap_or_default()
    }

    pub fn balance(&self, address: &Address) -> Amount {
        self.account(address).balance
    }

    /// Every escrow in the state, open and closed, by lease (those of retired leases have
    /// left it).
    pub fn escrows(&self) -> impl Iterator<Item = (LeaseId, &Escrow)> + '_ {
        self.escrows.iter().map(|(&id, e)| (id, e))
    }

    /// How many escrows the state holds (open ones, and closed ones not yet retired).
    pub fn escrow_count(&self) -> usize {
        self.escrows.len()
    }

    pub fn escrow(&self, lease: LeaseId) -> Option<&Escrow> {
        self.escrows.get(&lease)
    }

    pub fn transaction_count(&self) -> u64 {
        self.next_seq
    }

    pub fn stake(&self, host: &Address, index: u16) -> Stake {
        self.stakes
            .get(&(*host, index))
            .copied()
            .unwrap_or_default()
    }

    /// Every stake, for the registry to know which containers may serve.
    pub fn stakes(&self) -> impl Iterator<Item = ((Address, u16), Stake)> + '_ {
        self.stakes.iter().map(|(k, v)| (*k, *v))
    }

    pub fn vesting_locked(&self, address: &Address) -> Amount {
        self.vesting.get(address).map_or(Amount::ZERO, |v| v.locked)
    }

    pub fn cumulative_reward(&self, address: &Address) -> Amount {
        self.cumulative.get(address).copied().unwrap_or_default()
    }

    /// Every account ever rewarded with its cumulative reward: the reward tree's leaves.
    pub fn cumulative_rewards(&self) -> impl Iterator<Item = (Address, Amount)> + '_ {
        self.cumulative.iter().map(|(a, v)| (*a, *v))
    }

    pub fn totals(&self) -> Totals {
        self.totals
    }

    /// The reward tree the last epoch close built, if nobody took it yet: the one whose
    /// root is [`Ledger::reward_root`] when taken right after the close.
    pub fn take_reward_tree(&mut self) -> Option<crate::merkle::MerkleTree> {
        self.reward_tree.take()
    }

    /// Usage and fees settled by every escrow so far.
    pub fn activity(&self) -> Activity {
        self.activity
    }

    pub(crate) fn recount_activity(&mut self) {
        self.activity = self.recount();
    }

    /// The running sums counted afresh, over the escrows in memory and the retired sums:
    /// what [`Ledger::activity`] must equal.
    pub fn recount(&self) -> Activity {
        let live = Activity::of(self.escrows.values());
        Activity {
            delivered_gpu_ms: live.delivered_gpu_ms.saturating_add(self.retired.gpu_ms),
            fees: Amount(live.fees.0.saturating_add(self.retired.fees.0)),
            held: live.held,
        }
    }

    /// The retired lease ids (archived leases), as ranges.
    pub fn retired(&self) -> &Retired {
        &self.retired
    }

    pub fn reward_root(&self) -> B256 {
        self.reward_root
    }

    pub(crate) fn touch(&mut self, key: Key) {
        self.touched.push(key);
    }

    /// Checks and applies one transaction at `time_ms`.
    pub fn apply(&mut self, stx: &SignedTx, time_ms: u64) -> Result<Applied, LedgerError> {
        self.apply_verified(Verified::check(stx)?, time_ms)
    }

    /// Applies a transaction whose signature was checked already (perhaps on another
    /// thread, while this one applied earlier transactions).
    pub fn apply_verified(
        &mut self,
        verified: Verified<'_>,
        time_ms: u64,
    ) -> Result<Applied, LedgerError> {
        let stx = verified.stx;
        let tx = &stx.tx;
        let hash = verified.hash;
        if tx.chain_id != self.genesis.chain_id {
            return Err(LedgerError::WrongChain {
                expected: self.genesis.chain_id,
                got: tx.chain_id,
            });
        }

        let signer = self.account(&tx.from);
        if tx.nonce != signer.nonce {
            return Err(LedgerError::WrongNonce {
                account: tx.from,
                expected: signer.nonce,
                got: tx.nonce,
            });
        }
        // Every arm validates completely, then mutates; none can fail after its first write.
        match &tx.kind {
            TxKind::Transfer { to, amount } => self.transfer(tx.from, *to, *amount)?,
            TxKind::OpenEscrow {
                lease,
                host,
                price_per_gpu_hour,
                gpus,
                max_duration_ms,
                amount,
            } => self.open_escrow(
                tx.from,
                *lease,
                *host,
                *price_per_gpu_hour,
                *gpus,
                *max_duration_ms,
                *amount,
            )?,
            TxKind::SettleUsage { records } => self.settle_usage(tx.from, records, time_ms)?,
            TxKind::CloseEscrow { lease, reason } => self.close_escrow(tx.from, *lease, *reason)?,
            TxKind::StartLease { lease } => {
                self.only_protocol(tx.from)?;
                self.start_lease(*lease, time_ms)?
            }
            TxKind::Stake { index, amount } => self.stake_more(tx.from, &[(*index, *amount)])?,
            TxKind::StakeMany { stakes } => self.stake_more(tx.from, stakes)?,
            TxKind::Unstake { index } => self.unstake(tx.from, *index, time_ms)?,
            TxKind::Withdraw { index } => self.withdraw(tx.from, *index, time_ms)?,
            TxKind::Allow { deployment, amount } => {
                // An allowance no balance backs would let the protocol match replicas
                // that nobody can pay for.
                if *amount > Amount::ZERO {
                    self.debit_check(tx.from, *amount)?;
                }
                if *amount == Amount::ZERO {
                    self.allowances.remove(&(tx.from, *deployment));
                } else {
                    self.allowances.insert((tx.from, *deployment), *amount);
                }
                self.touch(Key::Allowance(tx.from, *deployment));
            }
            TxKind::OpenEscrowFor {
                buyer,
                deployment,
                lease,
                host,
                price_per_gpu_hour,
                gpus,
                max_duration_ms,
                amount,
            } => {
                self.only_protocol(tx.from)?;
                self.allowance_check(*buyer, *deployment, *amount)?;
                self.open_escrow(
                    *buyer,
                    *lease,
                    *host,
                    *price_per_gpu_hour,
                    *gpus,
                    *max_duration_ms,
                    *amount,
                )?;
                self.spend_allowance(*buyer, *deployment, *amount);
            }
            TxKind::ExtendEscrow {
                buyer,
                deployment,
                lease,
                extra_ms,
                amount,
            } => {
                self.only_protocol(tx.from)?;
                self.extend_escrow(*buyer, *deployment, *lease, *extra_ms, *amount)?
            }
            TxKind::Epoch(close) => {
                self.only_protocol(tx.from)?;
                self.close_epoch(close, time_ms)?
            }
            TxKind::RetireLeases { ranges } => {
                self.only_protocol(tx.from)?;
                self.retire(ranges)?
            }
            TxKind::Slash {
                host,
                index,
                k_centi,
                offence,
                ..
            } => {
                self.only_protocol(tx.from)?;
                self.slash(*host, *index, *k_centi, *offence)
            }
        }
        self.accounts.entry(tx.from).or_default().nonce += 1;
        self.touch(Key::Account(tx.from));
        let entry = LedgerEntry {
            seq: self.next_seq,
            time_ms,
            tx: stx.clone(),
        };
        self.next_seq += 1;
        self.unsealed_leaves
            .push(LedgerEntry::leaf_of(entry.seq, time_ms, &hash));
        self.unsealed.push(entry.clone());
        Ok(Applied { entry, hash })
    }

    fn debit_check(&self, account: Address, needed: Amount) -> Result<(), LedgerError> {
        // Spending from an account that never held tokens is its own mistake (a wrong
        // key or address), told apart from a balance that is too small.
        if !self.accounts.contains_key(&account) {
            return Err(LedgerError::UnknownAccount(account));
        }
        let available = self.balance(&account);
        if available < needed {
            return Err(LedgerError::InsufficientFunds {
                account,
                needed,
                available,
            });
        }
        Ok(())
    }

    fn credit_check(&self, account: Address, amount: Amount) -> Result<(), LedgerError> {
        self.balance(&account)
            .checked_add(amount)
            .map(|_| ())
            .ok_or(LedgerError::Overflow("balance"))
    }

    fn move_funds(&mut self, from: Address, to: Address, amount: Amount) {
        self.accounts.entry(from).or_default().balance.0 -= amount.0;
        self.accounts.entry(to).or_default().balance.0 += amount.0;
        self.touch(Key::Account(from));
        self.touch(Key::Account(to));
    }

    /// Adds to an account's balance (the caller has checked it fits).
    pub(crate) fn credit(&mut self, to: Address, amount: u128) {
        if amount > 0 {
            self.accounts.entry(to).or_default().balance.0 += amount;
            self.touch(Key::Account(to));
        }
    }

    pub(crate) fn debit(&mut self, from: Address, amount: u128) {
        if amount > 0 {
            self.accounts.entry(from).or_default().balance.0 -= amount;
            self.touch(Key::Account(from));
        }
    }

    fn only_protocol(&self, signer: Address) -> Result<(), LedgerError> {
        if signer != self.genesis.protocol {
            return Err(LedgerError::NotProtocol);
        }
        Ok(())
    }

    fn stake_more(&mut self, host: Address, stakes: &[(u16, Amount)]) -> Result<(), LedgerError> {
        if stakes.is_empty() {
            return Err(LedgerError::ZeroAmount);
        }
        let mut total: u128 = 0;
        for (i, &(index, amount)) in stakes.iter().enumerate() {
            if amount == Amount::ZERO {
                return Err(LedgerError::ZeroAmount);
            }
            if stakes[..i].iter().any(|(other, _)| *other == index) {
                return Err(LedgerError::EscrowTerms(
                    "a container is staked twice in one transaction",
                ));
            }
            self.stake(&host, index)
                .bonded
                .checked_add(amount)
                .ok_or(LedgerError::Overflow("stake"))?;
            total = total
                .checked_add(amount.0)
                .ok_or(LedgerError::Overflow("stake"))?;
        }
        self.debit_check(host, Amount(total))?;
        self.debit(host, total);
        for &(index, amount) in stakes {
            self.stakes.entry((host, index)).or_default().bonded.0 += amount.0;
            self.touch(Key::Stake(host, index));
        }
        Ok(())
    }

    fn unstake(&mut self, host: Address, index: u16, now_ms: u64) -> Result<(), LedgerError> {
        let stake = self
            .stakes
            .get_mut(&(host, index))
            .filter(|s| s.bonded.0 > 0)
            .ok_or(LedgerError::NothingStaked { host, index })?;
        stake.unbonding.0 += stake.bonded.0;
        stake.bonded = Amount::ZERO;
        stake.unbond_at_ms = now_ms.saturating_add(self.genesis.economics.unbonding_ms);
        self.touch(Key::Stake(host, index));
        Ok(())
    }

    fn withdraw(&mut self, host: Address, index: u16, now_ms: u64) -> Result<(), LedgerError> {
        let stake = self.stake(&host, index);
        if stake.unbonding.0 == 0 {
            return Err(LedgerError::NothingUnbonding { host, index });
        }
        if now_ms < stake.unbond_at_ms {
            return Err(LedgerError::StillUnbonding {
                index,
                at_ms: stake.unbond_at_ms,
                now_ms,
            });
        }
        self.credit_check(host, stake.unbonding)?;
        let s = self.stakes.get_mut(&(host, index)).expect("checked above");
        let amount = std::mem::take(&mut s.unbonding.0);
        if s.bonded.0 == 0 {
            self.stakes.remove(&(host, index));
        }
        self.credit(host, amount);
        self.touch(Key::Stake(host, index));
        Ok(())
    }

    fn transfer(&mut self, from: Address, to: Address, amount: Amount) -> Result<(), LedgerError> {
        if amount == Amount::ZERO {
            return Err(LedgerError::ZeroAmount);
        }
        self.debit_check(from, amount)?;
        if from != to {
            self.credit_check(to, amount)?;
        }
        self.move_funds(from, to, amount);
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn open_escrow(
        &mut self,
        buyer: Address,
        lease: LeaseId,
        host: Address,
        price: Amount,
        gpus: u16,
        max_duration_ms: u64,
        amount: Amount,
    ) -> Result<(), LedgerError> {
        if self.escrows.contains_key(&lease) {
            return Err(LedgerError::EscrowExists(lease));
        }
        if self.retired.contains(lease) {
            return Err(LedgerError::LeaseRetired(lease));
        }
        if gpus == 0 || max_duration_ms == 0 || price == Amount::ZERO {
            return Err(LedgerError::EscrowTerms(
                "price, GPUs and duration must be more than zero",
            ));
        }
        if host == buyer {
            return Err(LedgerError::EscrowTerms("a buyer cannot lease from itself"));
        }
        let expected =
            escrow_amount(price, gpus, max_duration_ms).ok_or(LedgerError::Overflow("escrow"))?;
        if expected != amount {
            return Err(LedgerError::EscrowAmount {
                expected,
                got: amount,
            });
        }
        // The most usage can ever cost must be computable without overflow.
        let max_gpu_ms = (gpus as u64)
            .checked_mul(max_duration_ms)
            .ok_or(LedgerError::Overflow("GPU-ms"))?;
        usage_cost(price, max_gpu_ms).ok_or(LedgerError::Overflow("usage cost"))?;
        self.debit_check(buyer, amount)?;
        self.debit(buyer, amount.0);
        self.touch(Key::Escrow(lease));
        self.activity.held.0 += amount.0;
        self.escrows.insert(
            lease,
            Escrow {
                buyer,
                host,
                price_per_gpu_hour: price,
                gpus,
                max_gpu_ms,
                amount,
                gpu_ms: 0,
                charged: Amount::ZERO,
                host_share: Amount::ZERO,
                treasury_share: Amount::ZERO,
                refund: Amount::ZERO,
                closed: false,
                started_ms: None,
            },
        );
        Ok(())
    }

    /// The workload of an open escrow's lease started (as the indexer observed it) at
    /// `now_ms`: billable time runs from here.
    fn start_lease(&mut self, lease: LeaseId, now_ms: u64) -> Result<(), LedgerError> {
        let escrow = self
            .escrows
            .get_mut(&lease)
            .ok_or(LedgerError::UnknownEscrow(lease))?;
        if escrow.closed {
            return Err(LedgerError::EscrowClosed(lease));
        }
        if escrow.started_ms.is_some() {
            return Err(LedgerError::AlreadyStarted(lease));
        }
        escrow.started_ms = Some(now_ms);
        self.touch(Key::Escrow(lease));
        Ok(())
    }

    /// What the protocol may still spend of `owner`'s balance on `deployment`'s escrows.
    pub fn allowance(&self, owner: &Address, deployment: u64) -> Amount {
        self.allowances
            .get(&(*owner, deployment))
            .copied()
            .unwrap_or(Amount::ZERO)
    }

    fn allowance_check(
        &self,
        owner: Address,
        deployment: u64,
        needed: Amount,
    ) -> Result<(), LedgerError> {
        let allowed = self.allowance(&owner, deployment);
        if allowed < needed {
            return Err(LedgerError::AllowanceExceeded {
                owner,
                deployment,
                needed,
                allowed,
            });
        }
        Ok(())
    }

    fn spend_allowance(&mut self, owner: Address, deployment: u64, amount: Amount) {
        let key = (owner, deployment);
        if let Some(left) = self.allowances.get_mut(&key) {
            left.0 -= amount.0;
            if left.0 == 0 {
                self.allowances.remove(&key);
            }
        }
        self.touch(Key::Allowance(owner, deployment));
    }

    /// Tops an open escrow up by `extra_ms` of its terms, paid by its buyer within the
    /// deployment's allowance.
    fn extend_escrow(
        &mut self,
        buyer: Address,
        deployment: u64,
        lease: LeaseId,
        extra_ms: u64,
        amount: Amount,
    ) -> Result<(), LedgerError> {
        let escrow = self
            .escrows
            .get(&lease)
            .ok_or(LedgerError::UnknownEscrow(lease))?;
        if escrow.closed {
            return Err(LedgerError::EscrowClosed(lease));
        }
        if escrow.buyer != buyer {
            return Err(LedgerError::EscrowTerms(
                "a top-up is paid by the escrow's own buyer",
            ));
        }
        if extra_ms == 0 {
            return Err(LedgerError::EscrowTerms(
                "a top-up adds more than zero time",
            ));
        }
        let expected = escrow_amount(escrow.price_per_gpu_hour, escrow.gpus, extra_ms)
            .ok_or(LedgerError::Overflow("escrow"))?;
        if expected != amount {
            return Err(LedgerError::EscrowAmount {
                expected,
                got: amount,
            });
        }
        let max_gpu_ms = (escrow.gpus as u64)
            .checked_mul(extra_ms)
            .and_then(|extra| escrow.max_gpu_ms.checked_add(extra))
            .ok_or(LedgerError::Overflow("GPU-ms"))?;
        let total = escrow
            .amount
            .checked_add(amount)
            .ok_or(LedgerError::Overflow("escrow"))?;
        usage_cost(escrow.price_per_gpu_hour, max_gpu_ms)
            .ok_or(LedgerError::Overflow("usage cost"))?;
        self.allowance_check(buyer, deployment, amount)?;
        self.debit_check(buyer, amount)?;
        self.debit(buyer, amount.0);
        self.spend_allowance(buyer, deployment, amount);
        let escrow = self.escrows.get_mut(&lease).expect("looked up above");
        self.activity.held.0 += amount.0;
        escrow.amount = total;
        escrow.max_gpu_ms = max_gpu_ms;
        self.touch(Key::Escrow(lease));
        Ok(())
    }

    /// Refuses usage above what the protocol observed of its lease: from the recorded
    /// start until now, per GPU, plus the stated slack (nothing before a start). A
    /// host's signature says who claims, not that the work happened. Now is never taken
    /// before the last sealed block, so a clock stepped back refuses nothing honest.
    fn check_elapsed(
        &self,
        r: &UsageRecord,
        escrow: &Escrow,
        now_ms: u64,
        slack_ms: u64,
    ) -> Result<(), LedgerError> {
        let bound = escrow.billable_gpu_ms(now_ms.max(self.head.time_ms), slack_ms);
        if r.gpu_ms > bound {
            return Err(LedgerError::UsageExceedsElapsed {
                lease: r.lease,
                reported: r.gpu_ms,
                bound,
            });
        }
        Ok(())
    }

    /// Checks usage records against the time observed of their leases, as a settlement
    /// would, without applying anything: for callers that check other bounds after
    /// this one (the registry's delivery bound).
    pub fn check_observed_usage(
        &self,
        records: &[UsageRecord],
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        let slack_ms = self.genesis.economics.usage_slack_ms;
        for r in records {
            if let Some(escrow) = self.escrows.get(&r.lease) {
                self.check_elapsed(r, escrow, now_ms, slack_ms)?;
            }
        }
        Ok(())
    }

    fn settle_usage(
        &mut self,
        host: Address,
        records: &[UsageRecord],
        now_ms: u64,
    ) -> Result<(), LedgerError> {
        if records.is_empty() {
            return Err(LedgerError::EmptyUsage);
        }
        let fee_bps = self.genesis.fee_bps;
        let slack_ms = self.genesis.economics.usage_slack_ms;
        let mut plans = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            if records[..i].iter().any(|o| o.lease == r.lease) {
                return Err(LedgerError::DuplicateUsage(r.lease));
            }
            let escrow = self
                .escrows
                .get(&r.lease)
                .ok_or(LedgerError::UnknownEscrow(r.lease))?;
            if escrow.closed {
                return Err(LedgerError::EscrowClosed(r.lease));
            }
            if escrow.host != host {
                return Err(LedgerError::NotEscrowHost {
                    lease: r.lease,
                    signer: host,
                });
            }
            if r.gpu_ms < escrow.gpu_ms {
                return Err(LedgerError::UsageDecreased {
                    lease: r.lease,
                    settled: escrow.gpu_ms,
                    reported: r.gpu_ms,
                });
            }
            if r.gpu_ms > escrow.max_gpu_ms {
                return Err(LedgerError::UsageExceedsEscrow {
                    lease: r.lease,
                    reported: r.gpu_ms,
                    max: escrow.max_gpu_ms,
                });
            }
            self.check_elapsed(r, escrow, now_ms, slack_ms)?;
            // Cumulative arithmetic: every settlement recomputes totals, so rounding never drifts.
            let charged = usage_cost(escrow.price_per_gpu_hour, r.gpu_ms)
                .ok_or(LedgerError::Overflow("usage cost"))?;
            let (host_share, treasury_share) = fee_split(charged, fee_bps);
            let refund = if r.is_final {
                Amount(escrow.amount.0 - charged.0)
            } else {
                Amount::ZERO
            };
            plans.push((r, charged, host_share, treasury_share, refund));
        }
        let treasury = self.genesis.treasury;
        for (r, charged, host_share, treasury_share, refund) in plans {
            let escrow = self.escrows.get_mut(&r.lease).expect("checked above");
            let host_delta = host_share.0 - escrow.host_share.0;
            let treasury_delta = treasury_share.0 - escrow.treasury_share.0;
            self.activity.delivered_gpu_ms = (self.activity.delivered_gpu_ms)
                .saturating_add(r.gpu_ms.saturating_sub(escrow.gpu_ms));
            self.activity.fees.0 = self.activity.fees.0.saturating_add(treasury_delta);
            self.activity.held.0 -= escrow.held().0;
            escrow.gpu_ms = r.gpu_ms;
            escrow.charged = charged;
            escrow.host_share = host_share;
            escrow.treasury_share = treasury_share;
            escrow.refund = refund;
            escrow.closed = r.is_final;
            if !escrow.closed {
                self.activity.held.0 += escrow.held().0;
            }
            let buyer = escrow.buyer;
            self.touch(Key::Escrow(r.lease));
            self.credit(host, host_delta);
            self.credit(treasury, treasury_delta);
            self.credit(buyer, refund.0);
        }
        Ok(())
    }

    fn close_escrow(
        &mut self,
        signer: Address,
        lease: LeaseId,
        _reason: CloseReason,
    ) -> Result<(), LedgerError> {
        if signer != self.genesis.protocol {
            return Err(LedgerError::NotProtocol);
        }
        let escrow = self
            .escrows
            .get_mut(&lease)
            .ok_or(LedgerError::UnknownEscrow(lease))?;
        if escrow.closed {
            return Err(LedgerError::EscrowClosed(lease));
        }
        // No charge for usage that was never settled, and no protocol fee on the refund.
        let refund = escrow.held();
        escrow.refund = refund;
        escrow.closed = true;
        self.activity.held.0 -= refund.0;
        let buyer = escrow.buyer;
        self.touch(Key::Escrow(lease));
        self.credit(buyer, refund.0);
        Ok(())
    }

    /// Retires archived leases' ids: checks every range and that no escrow among them is
    /// open, then drops their (closed) escrows, adding what they settled to the retired
    /// sums, and adds the ranges to the retired set (docs/ledger.md, "Retired leases").
    fn retire(&mut self, ranges: &[LeaseRange]) -> Result<(), LedgerError> {
        self.retired.check(ranges)?;
        let ids = || {
            ranges
                .iter()
                .flat_map(|r| (r.first.0..=r.last.0).map(LeaseId))
        };
        if let Some(open) = ids().find(|id| self.escrows.get(id).is_some_and(|e| !e.closed)) {
            return Err(LedgerError::RetiringOpenEscrow(open));
        }
        for id in ids() {
            if let Some(escrow) = self.escrows.remove(&id) {
                self.retired.gpu_ms = self.retired.gpu_ms.saturating_add(escrow.gpu_ms);
                self.retired.fees.0 = self.retired.fees.0.saturating_add(escrow.treasury_share.0);
                self.touch(Key::Escrow(id));
            }
        }
        for r in ranges {
            for changed in self.retired.insert(r.first.0, r.last.0) {
                self.touch(Key::Retired(changed));
            }
        }
        self.touch(Key::RetiredSums);
        Ok(())
    }

    /// All funds: balances plus what escrows still hold. Equals the total supply always.
    pub fn supply_held(&self) -> u128 {
        let balances: u128 = self.accounts.values().map(|a| a.balance.0).sum();
        let escrowed: u128 = self.escrows.values().map(|e| e.held().0).sum();
        let staked: u128 = self
            .stakes
            .values()
            .map(|s| s.bonded.0 + s.unbonding.0)
            .sum();
        let vesting: u128 = self.vesting.values().map(|v| v.locked.0).sum();
        balances + escrowed + staked + vesting
    }

    pub fn supply_conserved(&self) -> bool {
        self.supply_held() == self.genesis.total_supply.0
    }

    /// The leaf of one state entry, or `None` when it is empty.
    fn leaf(&self, key: &Key) -> Option<B256> {
        let mut bytes = Vec::with_capacity(160);
        match key {
            Key::Account(address) => {
                let a = self.account(address);
                let v = self.vesting.get(address);
                let cumulative = self.cumulative_reward(address);
                if a == Account::default() && v.is_none_or(|v| v.locked.0 == 0) && cumulative.0 == 0
                {
                    return None;
                }
                bytes.extend_from_slice(b"acct");
                bytes.extend_from_slice(address.as_slice());
                bytes.extend_from_slice(&a.balance.0.to_be_bytes());
                bytes.extend_from_slice(&a.nonce.to_be_bytes());
                bytes.extend_from_slice(&v.map_or(0, |v| v.locked.0).to_be_bytes());
                bytes.extend_from_slice(&v.map_or(0, |v| v.rate).to_be_bytes());
                bytes.extend_from_slice(&(v.map_or(0, |v| v.ends.len()) as u64).to_be_bytes());
                bytes.extend_from_slice(&cumulative.0.to_be_bytes());
            }
            Key::Escrow(lease) => {
                let e = self.escrows.get(lease)?;
                bytes.extend_from_slice(b"escrow");
                bytes.extend_from_slice(&lease.0.to_be_bytes());
                bytes.extend_from_slice(e.buyer.as_slice());
                bytes.extend_from_slice(e.host.as_slice());
                for v in [
                    e.price_per_gpu_hour,
                    e.amount,
                    e.charged,
                    e.host_share,
                    e.treasury_share,
                    e.refund,
                ] {
                    bytes.extend_from_slice(&v.0.to_be_bytes());
                }
                bytes.extend_from_slice(&e.gpus.to_be_bytes());
                bytes.extend_from_slice(&e.max_gpu_ms.to_be_bytes());
                bytes.extend_from_slice(&e.gpu_ms.to_be_bytes());
                bytes.push(e.closed as u8);
                match e.started_ms {
                    Some(at) => {
                        bytes.push(1);
                        bytes.extend_from_slice(&at.to_be_bytes());
                    }
                    None => bytes.push(0),
                }
            }
            Key::Stake(host, index) => {
                let s = self.stakes.get(&(*host, *index))?;
                bytes.extend_from_slice(b"stake");
                bytes.extend_from_slice(host.as_slice());
                bytes.extend_from_slice(&index.to_be_bytes());
                bytes.extend_from_slice(&s.bonded.0.to_be_bytes());
                bytes.extend_from_slice(&s.unbonding.0.to_be_bytes());
                bytes.extend_from_slice(&s.unbond_at_ms.to_be_bytes());
            }
            Key::Allowance(owner, deployment) => {
                let left = self.allowances.get(&(*owner, *deployment))?;
                bytes.extend_from_slice(b"allow");
                bytes.extend_from_slice(owner.as_slice());
                bytes.extend_from_slice(&deployment.to_be_bytes());
                bytes.extend_from_slice(&left.0.to_be_bytes());
            }
            Key::Retired(first) => {
                let last = self.retired.range_from(*first)?;
                bytes.extend_from_slice(b"retired");
                bytes.extend_from_slice(&first.to_be_bytes());
                bytes.extend_from_slice(&last.to_be_bytes());
            }
            Key::RetiredSums => {
                let r = &self.retired;
                if r.is_empty() && r.gpu_ms == 0 && r.fees.0 == 0 {
                    return None;
                }
                bytes.extend_from_slice(b"retired_sums");
                bytes.extend_from_slice(&self.retired.gpu_ms.to_be_bytes());
                bytes.extend_from_slice(&self.retired.fees.0.to_be_bytes());
            }
            Key::Totals => {
                let t = &self.totals;
                bytes.extend_from_slice(b"totals");
                for v in [t.provider_emitted, t.checker_emitted, t.bonus_emitted] {
                    bytes.extend_from_slice(&v.0.to_be_bytes());
                }
                bytes.extend_from_slice(&t.next_epoch.to_be_bytes());
                bytes.extend_from_slice(self.reward_root.as_slice());
            }
        }
        Some(keccak256(bytes))
    }

    /// The commitment to the whole state (docs/ledger.md, "Roots").
    pub fn state_root(&mut self) -> B256 {
        let mut touched = std::mem::take(&mut self.touched);
        touched.sort_unstable();
        touched.dedup();
        let leaves = par::map(&touched, |key| (key.id(), self.leaf(key)));
        for (key, leaf) in leaves {
            self.commitment.set(key, leaf);
        }
        touched.clear();
        self.touched = touched;
        self.commitment.root()
    }

    /// Seals the unsealed transactions into the next block, or returns `None` when there are none.
    pub fn seal(&mut self, time_ms: u64) -> Option<(BlockHeader, Vec<LedgerEntry>)> {
        if self.unsealed.is_empty() {
            return None;
        }
        let entries = std::mem::take(&mut self.unsealed);
        let leaves = std::mem::take(&mut self.unsealed_leaves);
        let header = BlockHeader {
            height: self.head.height + 1,
            prev_hash: self.head.hash(),
            time_ms: time_ms.max(self.head.time_ms),
            first_seq: entries[0].seq,
            tx_count: entries.len() as u32,
            tx_root: merkle::root(leaves),
            state_root: self.state_root(),
            reward_root: self.reward_root,
        };
        self.head = header.clone();
        Some((header, entries))
    }

    /// The transaction root the unsealed entries would get if sealed now.
    pub(crate) fn unsealed_tx_root(&self) -> B256 {
        merkle::root(self.unsealed_leaves.clone())
    }

    /// Restores a head read from the store after replaying up to it.
    /// Takes `header` as the head with every transaction up to it applied (a snapshot's
    /// state was just put in place).
    pub(crate) fn restart_at(&mut self, header: BlockHeader) {
        self.next_seq = header.first_seq + header.tx_count as u64;
        self.set_head(header);
    }

    pub(crate) fn set_head(&mut self, header: BlockHeader) {
        self.head = header;
        self.unsealed.clear();
        self.unsealed_leaves.clear();
    }
}

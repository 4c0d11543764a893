//! Ledger transactions as they cross the wire and sit in blocks.
//!
//! A [`Tx`] is what an account authorises; [`SignedTx`] adds its secp256k1 signature.
//! The signature is over [`Tx::hash`], the transaction's EIP-712 signing hash
//! (`crate::eip712`), exactly as `eth_signTypedData_v4` signs, so an Ethereum wallet can
//! show and sign a gpumesh transaction unchanged. The hash covers the chain id, so a
//! transaction signed for one network is void on another.

use alloy_primitives::{Address, B256, Signature, keccak256};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Amount, LeaseId};

/// A transaction before its signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Tx {
    pub chain_id: u64,
    /// The account that signs and whose nonce advances.
    pub from: Address,
    /// Must equal the account's transaction count so far.
    pub nonce: u64,
    pub kind: TxKind,
}

/// What a transaction does.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxKind {
    /// Moves tokens between accounts.
    Transfer { to: Address, amount: Amount },
    /// The buyer locks the most a lease can cost: price × GPUs × maximum duration.
    OpenEscrow {
        lease: LeaseId,
        host: Address,
        price_per_gpu_hour: Amount,
        gpus: u16,
        max_duration_ms: u64,
        amount: Amount,
    },
    /// The host's metered usage, cumulative per lease, signed by the host.
    SettleUsage { records: Vec<UsageRecord> },
    /// The protocol ends an escrow without further charge (host lost, never started)
    /// and refunds what is left to the buyer. Signed by the protocol key.
    CloseEscrow { lease: LeaseId, reason: CloseReason },
    /// The protocol records that the indexer accepted the host's report that the lease's
    /// workload started: billable time runs from this transaction's time. Signed by the
    /// protocol key.
    StartLease { lease: LeaseId },
    /// A host stakes (or tops up) for one of its GPUs (containers).
    Stake { index: u16, amount: Amount },
    /// A host stakes for several of its GPUs at once.
    StakeMany { stakes: Vec<(u16, Amount)> },
    /// A host starts unbonding a container's whole stake; the container is no longer
    /// eligible, and the stake can be withdrawn after the unbonding period.
    Unstake { index: u16 },
    /// A host takes back an unbonded stake.
    Withdraw { index: u16 },
    /// The signer lets the protocol spend up to `amount` of its balance on the escrows
    /// of its deployment `deployment` (replicas opened and topped up period by period).
    /// Replaces any earlier allowance for it; zero revokes it.
    Allow { deployment: u64, amount: Amount },
    /// The protocol opens a deployment replica's escrow from the owner's balance, within
    /// the owner's allowance for that deployment. Signed by the protocol key.
    OpenEscrowFor {
        buyer: Address,
        deployment: u64,
        lease: LeaseId,
        host: Address,
        price_per_gpu_hour: Amount,
        gpus: u16,
        max_duration_ms: u64,
        amount: Amount,
    },
    /// The protocol tops a replica's open escrow up by `extra_ms` of its terms, from the
    /// owner's balance within the allowance. Signed by the protocol key.
    ExtendEscrow {
        buyer: Address,
        deployment: u64,
        lease: LeaseId,
        extra_ms: u64,
        amount: Amount,
    },
    /// The protocol closes an epoch and pays its rewards. Signed by the protocol key.
    Epoch(Box<EpochClose>),
    /// The protocol retires the ids of leases it archived: their closed escrows leave the
    /// ledger's state (what they settled stays in its running sums) and no escrow can be
    /// opened for them again. Sorted, disjoint, inclusive ranges of lease ids. Signed by
    /// the protocol key.
    RetireLeases { ranges: Vec<LeaseRange> },
    /// The protocol slashes a container, with the hash of the evidence. Signed by the
    /// protocol key.
    Slash {
        host: Address,
        index: u16,
        /// The container's spec weight K, in hundredths.
        k_centi: u32,
        offence: Offence,
        evidence: B256,
    },
}

/// Lease ids from `first` to `last`, both included.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseRange {
    pub first: LeaseId,
    pub last: LeaseId,
}

impl LeaseRange {
    /// How many ids the range holds (0 for one that ends before it starts).
    pub fn len(&self) -> u64 {
        if self.last < self.first {
            return 0;
        }
        (self.last.0 - self.first.0).saturating_add(1)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a container was slashed for (docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Offence {
    /// Down while serving a lease: ⅓ × K × coefficient.
    Downtime,
    /// Malicious behaviour, such as a forged capacity proof: K × coefficient.
    Malicious,
    /// Performance far under the claimed spec: K × coefficient.
    Underperformance,
}

/// A host's containers whose liveness passed: (GPU index, spec weight K in hundredths).
pub type HostCapacity = (Address, Vec<(u16, u32)>);
/// A host's delivered work, one entry per container (GPU), by GPU index ascending.
pub type HostDelivery = (Address, Vec<GpuDelivery>);

/// What one container (GPU) delivered in an epoch, and what its buyers paid for it: the
/// inputs of its delivery reward (docs/economics.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuDelivery {
    /// The GPU index on its host.
    pub index: u16,
    /// GPU-milliseconds settled during the epoch.
    pub gpu_ms: u64,
    /// What its buyers were charged for that usage, in base units.
    pub paid: Amount,
    /// The part of `paid` the treasury kept as its fee.
    pub fee: Amount,
    /// The host's delivery tier, 1 to 3.
    pub tier: u8,
}

/// A checker's epoch: (address, correct tasks, uptime in basis points).
pub type CheckerTasks = (Address, u32, u16);

/// The inputs of an epoch's rewards, carried in the transaction so that a replay
/// recomputes every payout; `evidence` is the hash of the records they were computed from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EpochClose {
    pub epoch: u64,
    /// The end of the epoch; vesting and unbonding count from it.
    pub end_ms: u64,
    pub evidence: B256,
    /// Containers whose liveness verdicts passed, grouped by host: (GPU index, K in
    /// hundredths).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub capacity: Vec<HostCapacity>,
    /// Delivered work and what buyers paid for it, by host and GPU.
    #[schema(value_type = Vec<Vec<Object>>)]
    pub delivery: Vec<HostDelivery>,
    /// Checkers: (address, correct tasks, uptime in basis points).
    #[schema(value_type = Vec<Vec<Object>>)]
    pub checkers: Vec<CheckerTasks>,
    /// Pays the quarter's checker bonus.
    pub quarter_bonus: bool,
}

/// Cumulative usage of one lease, as metered by its host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UsageRecord {
    pub lease: LeaseId,
    /// GPU-milliseconds delivered since the lease started (GPUs × wall milliseconds).
    pub gpu_ms: u64,
    /// The last record of the lease: the escrow closes and the rest is refunded.
    #[serde(rename = "final")]
    pub is_final: bool,
}

/// Why the protocol closed an escrow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CloseReason {
    /// The host missed its heartbeats while the lease was live.
    HostLost,
    /// The lease was cancelled or expired before its workload started.
    NotStarted,
    /// The host failed to start the workload and reported so.
    StartFailed,
    /// The host did not report the lease's end by its deadline (its maximum duration or
    /// its cancellation, plus a grace): it keeps what it settled.
    Overdue,
    /// The registry and the ledger disagreed about the lease (found by reconciliation):
    /// the lease had ended, or never existed, while its escrow stayed open.
    Reconciled,
    /// A quorum of checkers found the lease not delivered (its service did not answer,
    /// or its workload was not running): the host keeps what it settled, the rest is
    /// refunded.
    Undelivered,
}

impl Tx {
    /// Whether the transaction moves tokens of `account` or names it (one of
    /// [`Tx::accounts`]).
    pub fn involves(&self, account: &Address) -> bool {
        self.accounts().binary_search(account).is_ok()
    }

    /// The accounts whose tokens the transaction moves or that it names: its signer, a
    /// payee, the host of an escrow, a slashed host, the hosts and checkers an epoch
    /// rewards. Sorted, each once: the keys of an account's indexed history.
    pub fn accounts(&self) -> Vec<Address> {
        let mut out = vec![self.from];
        match &self.kind {
            TxKind::Transfer { to, .. } => out.push(*to),
            TxKind::OpenEscrow { host, .. } | TxKind::Slash { host, .. } => out.push(*host),
            TxKind::OpenEscrowFor { buyer, host, .. } => out.extend([*buyer, *host]),
            TxKind::ExtendEscrow { buyer, .. } => out.push(*buyer),
            TxKind::Epoch(e) => {
                out.extend(e.capacity.iter().map(|c| c.0));
                out.extend(e.delivery.iter().map(|d| d.0));
                out.extend(e.checkers.iter().map(|c| c.0));
            }
            TxKind::SettleUsage { .. }
            | TxKind::CloseEscrow { .. }
            | TxKind::StartLease { .. }
            | TxKind::RetireLeases { .. }
            | TxKind::Stake { .. }
            | TxKind::StakeMany { .. }
            | TxKind::Unstake { .. }
            | TxKind::Withdraw { .. }
            | TxKind::Allow { .. } => {}
        }
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// A transaction with its signer's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignedTx {
    pub tx: Tx,
    pub signature: Sig,
}

/// Why a signed transaction does not authenticate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureCheck {
    #[error("signature does not recover to a public key: {0}")]
    Unrecoverable(String),
    #[error("signed by {recovered}, but the transaction is from {claimed}")]
    WrongSigner {
        claimed: Address,
        recovered: Address,
    },
}

impl SignedTx {
    pub fn hash(&self) -> B256 {
        self.tx.hash()
    }

    /// Recovers the signer and checks that it is `tx.from`.
    pub fn verify(&self) -> Result<B256, SignatureCheck> {
        self.verify_hashed(self.tx.hash())
    }

    /// [`SignedTx::verify`] with the transaction's hash already at hand (its signer just
    /// computed it to sign): the signer is recovered and checked all the same; only the
    /// hash, which for an epoch close costs hundreds of milliseconds, is not computed
    /// again (in debug builds it is, and must agree).
    pub fn verify_hashed(&self, hash: B256) -> Result<B256, SignatureCheck> {
        debug_assert_eq!(
            hash,
            self.tx.hash(),
            "the hash given is not the transaction's"
        );
        let recovered = self
            .signature
            .0
            .recover_address_from_prehash(&hash)
            .map_err(|e| SignatureCheck::Unrecoverable(e.to_string()))?;
        if recovered != self.tx.from {
            return Err(SignatureCheck::WrongSigner {
                claimed: self.tx.from,
                recovered,
            });
        }
        Ok(hash)
    }
}

/// A 65-byte secp256k1 signature (r ‖ s ‖ v), hex on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sig(pub Signature);

impl Serialize for Sig {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&alloy_primitives::hex::encode_prefixed(self.0.as_bytes()))
    }
}

impl<'de> Deserialize<'de> for Sig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for Sig {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bytes = alloy_primitives::hex::decode(text).map_err(|_| "signature is not hex")?;
        Signature::from_raw(&bytes)
            .map(Sig)
            .map_err(|e| format!("signature is not 65 bytes r‖s‖v: {e}"))
    }
}

/// A transaction as the ledger recorded it: its place in the sequence and the time it was
/// applied, which replay uses so that time-dependent rules give the same result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LedgerEntry {
    pub seq: u64,
    pub time_ms: u64,
    pub tx: SignedTx,
}

impl LedgerEntry {
    /// The leaf of the block's transaction tree: commits to order, time and content.
    pub fn leaf(&self) -> B256 {
        Self::leaf_of(self.seq, self.time_ms, &self.tx.hash())
    }

    /// The leaf of the entry at `seq` and `time_ms` whose transaction hashes to `tx_hash`.
    pub fn leaf_of(seq: u64, time_ms: u64, tx_hash: &B256) -> B256 {
        let mut bytes = [0u8; 48];
        bytes[..8].copy_from_slice(&seq.to_be_bytes());
        bytes[8..16].copy_from_slice(&time_ms.to_be_bytes());
        bytes[16..].copy_from_slice(tx_hash.as_slice());
        keccak256(bytes)
    }
}

/// A sealed block's header. Block 0 is the genesis block; every later block chains to
/// its parent by hash and commits to its transactions and to the state after them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BlockHeader {
    pub height: u64,
    pub prev_hash: B256,
    pub time_ms: u64,
    /// Sequence number of the block's first transaction.
    pub first_seq: u64,
    pub tx_count: u32,
    pub tx_root: B256,
    pub state_root: B256,
    /// Root of the cumulative rewards tree (zero until the first epoch closes).
    pub reward_root: B256,
}

impl BlockHeader {
    pub fn hash(&self) -> B256 {
        let mut bytes = b"gpumesh-block-v1".to_vec();
        serde_json::to_writer(&mut bytes, self).expect("block headers serialise");
        keccak256(bytes)
    }
}

//! The indexer's durable state in one redb file.
//!
//! Everything an indexer acknowledges is in the store before the acknowledgement leaves:
//! each API mutation becomes one [`Batch`] written in one durable redb transaction, so a
//! crash either keeps the whole change or none of it. On start the indexer reads it all
//! back ([`Store::load`]) and replays the ledger from genesis. Records are JSON, the same
//! wire types the API speaks, so a store can be inspected with ordinary tools.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use gpumesh_checking::CheckerRecord;
use gpumesh_ledger::merkle::MerkleTree;
use gpumesh_ledger::{Genesis, LedgerSnapshot};
use gpumesh_registry::{DeploymentRecord, HostRecord, LeaseRecord, Params, SessionRecord};
use gpumesh_types::{
    Address, Amount, B256, BlockHeader, ContainerRef, LeaseId, LeaseView, LedgerEntry, LogEntry,
    RewardProof, SessionId, SessionView,
};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const HOSTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("hosts");
const LEASES: TableDefinition<u64, &[u8]> = TableDefinition::new("leases");
const LOGS: TableDefinition<(u64, u64), &[u8]> = TableDefinition::new("logs");
const TXS: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_txs");
const BLOCKS: TableDefinition<u64, &[u8]> = TableDefinition::new("blocks");
const CHECKERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("checkers");
/// The current epoch's work per container (host address ‖ GPU index, big-endian).
const EPOCH_CONTAINERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("epoch_containers");
const DEPLOYMENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("deployments");
const SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("sessions");
/// An account's history: (account, transaction sequence number) for every account a
/// transaction involves ([`gpumesh_types::Tx::accounts`]).
const ACCOUNT_TXS: TableDefinition<(&[u8], u64), ()> = TableDefinition::new("account_txs");
/// Each closed epoch's reward tree: its root, then its leaves ([`EpochRewards`]).
const REWARD_TREES: TableDefinition<u64, &[u8]> = TableDefinition::new("reward_trees");
/// Every node of each epoch's reward tree (32 bytes each, root first), so that a proof is a
/// lookup; epochs without a row (migrated from layout 2) rebuild the tree from its leaves.
const REWARD_NODES: TableDefinition<u64, &[u8]> = TableDefinition::new("reward_nodes");
/// Ledger snapshots by block height (`gpumesh_ledger::LedgerSnapshot`); the newest two
/// are kept.
const SNAPSHOTS: TableDefinition<u64, &[u8]> = TableDefinition::new("ledger_snapshots");
/// Leases that ended longer ago than the indexer keeps them in memory, each as its final
/// view (`gpumesh_types::LeaseView`, its settlement included), by id; `leases` holds
/// only the others, which a restart reads back.
const ARCHIVE: TableDefinition<u64, &[u8]> = TableDefinition::new("archived_leases");
/// The archive indexed by buyer and by host: (address, lease id).
const ARCHIVE_BY_BUYER: TableDefinition<(&[u8], u64), ()> =
    TableDefinition::new("archived_by_buyer");
const ARCHIVE_BY_HOST: TableDefinition<(&[u8], u64), ()> = TableDefinition::new("archived_by_host");
/// Sessions that ended longer ago than the retention, as their final views
/// (`gpumesh_types::SessionView`), by id; `sessions` holds only the others.
const ARCHIVED_SESSIONS: TableDefinition<u64, &[u8]> = TableDefinition::new("archived_sessions");
/// How many snapshots are kept: the newest and the one before it.
pub const SNAPSHOTS_KEPT: usize = 2;

const GENESIS_KEY: &str = "genesis";
const PARAMS_KEY: &str = "params";
const SCHEMA_KEY: &str = "schema_version";

/// The layout of a data directory this version reads and writes. A store initialised
/// before versions were recorded is version 1.
///
/// - 1: ledger transactions hashed as keccak256 over their JSON, signed with EIP-191.
/// - 2: ledger transactions hashed and signed as EIP-712 typed data.
/// - 3: accounts' histories indexed and each epoch's reward tree stored.
/// - 4: usage billable only from a lease's observed start (`StartLease`): a chain of an
///   earlier layout holds usage with no recorded start, which this version's replay
///   refuses, so earlier layouts are refused rather than migrated.
/// - 5: leases and sessions ended longer ago than the retention move from `leases` and
///   `sessions` to archives, which an older version would not read (and would reuse
///   their ids). Layout 4 is migrated by recording the version: its archives are empty.
/// - 6: archived leases' ids retire in the ledger (`RetireLeases`; ledger snapshots of
///   layout 2), which an older version cannot replay. Layouts 4 and 5 are migrated by
///   recording the version: their transactions replay unchanged, and the indexer retires
///   the closed escrows of leases archived under layout 5 when it starts.
pub const SCHEMA_VERSION: u32 = 6;
const EPOCH_KEY: &str = "epoch";
/// The file inside a data directory.
pub const STORE_FILE: &str = "gpumesh.redb";

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {source}")]
    Database {
        path: PathBuf,
        source: Box<redb::Error>,
    },
    #[error("store {path} holds a record that does not decode ({what}): {reason}")]
    Corrupt {
        path: PathBuf,
        what: String,
        reason: String,
    },
    #[error("store {path} has no genesis; it was never initialised")]
    NoGenesis { path: PathBuf },
    #[error(
        "store {path} has layout version {found}, and this gpumesh reads only version {expected}{hint}"
    )]
    Schema {
        path: PathBuf,
        found: u32,
        expected: u32,
        hint: &'static str,
    },
}

/// Everything the store holds, read back at start.
#[derive(Debug)]
pub struct Snapshot {
    pub genesis: Genesis,
    pub params: Params,
    pub hosts: Vec<HostRecord>,
    /// The leases kept in memory: live ones and those ended within the retention.
    pub leases: Vec<LeaseRecord>,
    /// The log lines of `leases`.
    pub logs: Vec<(LeaseId, LogEntry)>,
    /// One past the highest lease id ever given, archived leases included.
    pub next_lease: u64,
    /// One past the highest session id ever given, archived sessions included.
    pub next_session: u64,
    /// The newest ledger snapshot that decodes, when one was asked for and there is one;
    /// `blocks` then start right after it.
    pub ledger: Option<LedgerSnapshot>,
    /// Newer snapshots that did not decode, passed over: (height, why).
    pub snapshots_skipped: Vec<(u64, String)>,
    /// Sealed blocks in height order, each with its transactions: all of them, or those
    /// after `ledger`'s block.
    pub blocks: Vec<(BlockHeader, Vec<LedgerEntry>)>,
    /// Transactions after the last sealed block.
    pub unsealed: Vec<LedgerEntry>,
    /// Checkers' standing: credited tasks, minority results, bans.
    pub checkers: Vec<CheckerRecord>,
    /// The current epoch's start and lost hosts, once recorded.
    pub epoch: Option<EpochStart>,
    pub epoch_containers: Vec<(ContainerRef, ContainerWork)>,
    pub deployments: Vec<DeploymentRecord>,
    pub sessions: Vec<SessionRecord>,
}

/// What the current epoch has seen beyond the ledger: when it began and which hosts were
/// lost in it. With [`ContainerWork`] it is everything the epoch's rewards depend on that
/// the ledger does not hold, stored so that a restart pays exactly what an uninterrupted
/// run would.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EpochStart {
    pub started_ms: u64,
    /// Hosts that went offline during the epoch: their containers earn no capacity.
    pub lost: BTreeSet<Address>,
}

/// One container's work in the current epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerWork {
    /// GPU-milliseconds delivered (settled) during the epoch.
    pub delivered_gpu_ms: u64,
    /// What its buyers were charged for that usage (the growth of their escrows'
    /// charges), and the treasury's fee out of it: what its delivery reward is weighed
    /// and capped by (docs/economics.md). Absent in records written before they were kept.
    #[serde(default)]
    pub paid: Amount,
    #[serde(default)]
    pub fee: Amount,
    /// Liveness verdicts during the epoch.
    pub up: u32,
    pub down: u32,
}

impl ContainerWork {
    /// The work done since `counted`, an earlier reading of the same container in the same
    /// epoch (every field only grows within an epoch).
    pub fn since(&self, counted: &ContainerWork) -> ContainerWork {
        debug_assert!(
            self.delivered_gpu_ms >= counted.delivered_gpu_ms
                && self.paid >= counted.paid
                && self.fee >= counted.fee
                && self.up >= counted.up
                && self.down >= counted.down,
            "a container's epoch work only grows"
        );
        ContainerWork {
            delivered_gpu_ms: self
                .delivered_gpu_ms
                .saturating_sub(counted.delivered_gpu_ms),
            paid: Amount(self.paid.0.saturating_sub(counted.paid.0)),
            fee: Amount(self.fee.0.saturating_sub(counted.fee.0)),
            up: self.up.saturating_sub(counted.up),
            down: self.down.saturating_sub(counted.down),
        }
    }
}

fn container_key(c: &ContainerRef) -> [u8; 22] {
    let mut key = [0u8; 22];
    key[..20].copy_from_slice(c.host.as_slice());
    key[20..].copy_from_slice(&c.index.to_be_bytes());
    key
}

/// One atomic change.
#[derive(Debug, Default)]
pub struct Batch {
    pub hosts: Vec<HostRecord>,
    pub leases: Vec<LeaseRecord>,
    pub logs: Vec<(LeaseId, LogEntry)>,
    pub txs: Vec<LedgerEntry>,
    pub blocks: Vec<BlockHeader>,
    pub checkers: Vec<CheckerRecord>,
    /// A new epoch began: every stored container's work is dropped before
    /// `epoch_containers` is written.
    pub epoch_reset: bool,
    pub epoch: Option<EpochStart>,
    pub epoch_containers: Vec<(ContainerRef, ContainerWork)>,
    pub deployments: Vec<DeploymentRecord>,
    pub sessions: Vec<SessionRecord>,
    /// Ended leases leaving memory, as their final views: each moves from `leases` to the
    /// archive, written after `leases`.
    pub archived: Vec<LeaseView>,
    /// Ended sessions leaving memory, as their final views: each moves from `sessions`
    /// to the session archive, written after `sessions`.
    pub archived_sessions: Vec<SessionView>,
    /// The reward trees of epochs closed by `txs`.
    pub rewards: Vec<EpochRewards>,
    /// The ledger's state after the last of `blocks`, to restart from; older snapshots
    /// beyond [`SNAPSHOTS_KEPT`] are removed in the same transaction.
    pub snapshot: Option<LedgerSnapshot>,
}

/// A closed epoch's reward tree as stored: every account rewarded by then with its
/// cumulative reward, the tree's root, and (when written by this version) every node of
/// the tree. A proof is read from it without replaying the chain or hashing the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EpochRewards {
    pub epoch: u64,
    pub root: B256,
    pub leaves: Vec<(Address, Amount)>,
    /// The whole tree over `leaves`, when known.
    pub tree: Option<MerkleTree>,
}

impl EpochRewards {
    /// The tree the ledger holds right after it closed `epoch`: the one the close built,
    /// taken from the ledger, or built again if it was taken already.
    pub fn of(ledger: &mut gpumesh_ledger::Ledger, epoch: u64) -> EpochRewards {
        let leaves: Vec<(Address, Amount)> = ledger.cumulative_rewards().collect();
        let tree = ledger
            .take_reward_tree()
            .filter(|t| t.root() == ledger.reward_root())
            .unwrap_or_else(|| gpumesh_ledger::reward_tree(leaves.iter().copied()));
        EpochRewards {
            epoch,
            root: ledger.reward_root(),
            leaves,
            tree: Some(tree),
        }
    }

    const LEAF: usize = 20 + 16;

    /// The root, then 20 address bytes and 16 big-endian amount bytes per leaf.
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.leaves.len() * Self::LEAF);
        out.extend_from_slice(self.root.as_slice());
        for (account, amount) in &self.leaves {
            out.extend_from_slice(account.as_slice());
            out.extend_from_slice(&amount.0.to_be_bytes());
        }
        out
    }

    fn decode(epoch: u64, bytes: &[u8]) -> Result<EpochRewards, String> {
        let (root, rest) = bytes
            .split_first_chunk::<32>()
            .ok_or_else(|| format!("{} bytes, shorter than a root", bytes.len()))?;
        if rest.len() % Self::LEAF != 0 {
            return Err(format!(
                "{} leaf bytes, not a whole number of leaves",
                rest.len()
            ));
        }
        let leaves = rest
            .chunks_exact(Self::LEAF)
            .map(|leaf| {
                let (account, amount) = leaf.split_at(20);
                let amount: [u8; 16] = amount.try_into().expect("16 bytes by the chunk size");
                (
                    Address::from_slice(account),
                    Amount(u128::from_be_bytes(amount)),
                )
            })
            .collect();
        Ok(EpochRewards {
            epoch,
            root: B256::from(*root),
            leaves,
            tree: None,
        })
    }
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        !self.epoch_reset
            && self.epoch.is_none()
            && self.epoch_containers.is_empty()
            && self.checkers.is_empty()
            && self.hosts.is_empty()
            && self.leases.is_empty()
            && self.logs.is_empty()
            && self.txs.is_empty()
            && self.blocks.is_empty()
            && self.deployments.is_empty()
            && self.sessions.is_empty()
            && self.archived.is_empty()
            && self.archived_sessions.is_empty()
            && self.rewards.is_empty()
            && self.snapshot.is_none()
    }
}

/// The redb database of one indexer.
#[derive(Debug)]
pub struct Store {
    db: Database,
    path: PathBuf,
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // The records are plain data; serialising them cannot fail.
    serde_json::to_vec(value).expect("records serialise")
}

impl Store {
    /// Opens the store in `dir`, creating the directory and the file if needed.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(STORE_FILE);
        let db_err = |e: redb::Error| StoreError::Database {
            path: path.clone(),
            source: Box::new(e),
        };
        std::fs::create_dir_all(dir).map_err(|e| db_err(redb::Error::Io(e)))?;
        let db = Database::create(&path).map_err(|e| db_err(e.into()))?;
        let store = Store { db, path };
        store.check_schema()?;
        // Create every table so that readers never meet a missing one.
        store.write(Batch::default())?;
        Ok(store)
    }

    /// Refuses a store of another layout before anything reads or writes it.
    fn check_schema(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let meta = match txn.open_table(META) {
            Ok(meta) => meta,
            // A new store: nothing to check.
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(self.db_err(e)),
        };
        if meta.get(GENESIS_KEY).map_err(|e| self.db_err(e))?.is_none() {
            return Ok(());
        }
        let found = match meta.get(SCHEMA_KEY).map_err(|e| self.db_err(e))? {
            Some(v) => self.decode(|| "schema version".into(), v.value())?,
            None => 1,
        };
        if found == SCHEMA_VERSION {
            return Ok(());
        }
        if found == 4 || found == 5 {
            drop(meta);
            drop(txn);
            return self.record_version();
        }
        Err(StoreError::Schema {
            path: self.path.clone(),
            found,
            expected: SCHEMA_VERSION,
            hint: if found == 2 || found == 3 {
                ": its chain bills usage without recorded starts, which this version refuses (usage is billable only from a lease's observed start). A local network can start afresh in a new data directory; a public network needs its genesis restarted by its operators"
            } else if found < SCHEMA_VERSION {
                ": its transactions were signed over JSON, which this version no longer accepts. A local network can start afresh in a new data directory; a public network needs its genesis restarted by its operators, since its signatures cannot be converted"
            } else {
                ": it was written by a newer gpumesh"
            },
        })
    }

    /// Migrates a store whose rows this version reads as they are (layouts 4 and 5).
    fn record_version(&self) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.db_err(e))?;
            meta.insert(SCHEMA_KEY, encode(&SCHEMA_VERSION).as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Opens an existing store without creating anything.
    pub fn open_existing(dir: &Path) -> Result<Store, StoreError> {
        let path = dir.join(STORE_FILE);
        if !path.exists() {
            return Err(StoreError::NoGenesis { path });
        }
        Store::open(dir)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn db_err(&self, e: impl Into<redb::Error>) -> StoreError {
        StoreError::Database {
            path: self.path.clone(),
            source: Box::new(e.into()),
        }
    }

    fn decode<T: DeserializeOwned>(
        &self,
        what: impl FnOnce() -> String,
        bytes: &[u8],
    ) -> Result<T, StoreError> {
        serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt {
            path: self.path.clone(),
            what: what(),
            reason: e.to_string(),
        })
    }

    /// The genesis and parameters, if the store was initialised.
    pub fn genesis(&self) -> Result<Option<(Genesis, Params)>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.db_err(e))?;
        let genesis = meta.get(GENESIS_KEY).map_err(|e| self.db_err(e))?;
        let params = meta.get(PARAMS_KEY).map_err(|e| self.db_err(e))?;
        match (genesis, params) {
            (Some(g), Some(p)) => Ok(Some((
                self.decode(|| "genesis".into(), g.value())?,
                self.decode(|| "params".into(), p.value())?,
            ))),
            _ => Ok(None),
        }
    }

    /// Records the genesis of a new network. Refuses to replace another.
    pub fn init(&self, genesis: &Genesis, params: &Params) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let mut meta = txn.open_table(META).map_err(|e| self.db_err(e))?;
            if let Some(existing) = meta.get(GENESIS_KEY).map_err(|e| self.db_err(e))? {
                let existing: Genesis = self.decode(|| "genesis".into(), existing.value())?;
                if existing != *genesis {
                    return Err(StoreError::Corrupt {
                        path: self.path.clone(),
                        what: "genesis".into(),
                        reason: "the store already belongs to another network".into(),
                    });
                }
            }
            meta.insert(GENESIS_KEY, encode(genesis).as_slice())
                .map_err(|e| self.db_err(e))?;
            meta.insert(PARAMS_KEY, encode(params).as_slice())
                .map_err(|e| self.db_err(e))?;
            meta.insert(SCHEMA_KEY, encode(&SCHEMA_VERSION).as_slice())
                .map_err(|e| self.db_err(e))?;
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Writes a batch in one durable transaction.
    pub fn write(&self, batch: Batch) -> Result<(), StoreError> {
        let txn = self.db.begin_write().map_err(|e| self.db_err(e))?;
        {
            let e = |e: redb::TableError| self.db_err(e);
            let s = |e: redb::StorageError| self.db_err(e);
            let mut meta = txn.open_table(META).map_err(e)?;
            if let Some(epoch) = &batch.epoch {
                meta.insert(EPOCH_KEY, encode(epoch).as_slice())
                    .map_err(s)?;
            }
            if batch.epoch_reset {
                txn.delete_table(EPOCH_CONTAINERS).map_err(e)?;
            }
            let mut work = txn.open_table(EPOCH_CONTAINERS).map_err(e)?;
            for (c, w) in &batch.epoch_containers {
                work.insert(container_key(c).as_slice(), encode(w).as_slice())
                    .map_err(s)?;
            }
            let mut hosts = txn.open_table(HOSTS).map_err(e)?;
            for h in &batch.hosts {
                hosts
                    .insert(h.address.as_slice(), encode(h).as_slice())
                    .map_err(s)?;
            }
            let mut leases = txn.open_table(LEASES).map_err(e)?;
            for l in &batch.leases {
                leases.insert(l.id.0, encode(l).as_slice()).map_err(s)?;
            }
            let mut archive = txn.open_table(ARCHIVE).map_err(e)?;
            let mut by_buyer = txn.open_table(ARCHIVE_BY_BUYER).map_err(e)?;
            let mut by_host = txn.open_table(ARCHIVE_BY_HOST).map_err(e)?;
            for view in &batch.archived {
                leases.remove(view.id.0).map_err(s)?;
                archive
                    .insert(view.id.0, encode(view).as_slice())
                    .map_err(s)?;
                by_buyer
                    .insert((view.buyer.as_slice(), view.id.0), ())
                    .map_err(s)?;
                by_host
                    .insert((view.host.as_slice(), view.id.0), ())
                    .map_err(s)?;
            }
            let mut logs = txn.open_table(LOGS).map_err(e)?;
            for (lease, entry) in &batch.logs {
                logs.insert((lease.0, entry.seq), encode(entry).as_slice())
                    .map_err(s)?;
            }
            let mut txs = txn.open_table(TXS).map_err(e)?;
            let mut history = txn.open_table(ACCOUNT_TXS).map_err(e)?;
            for entry in &batch.txs {
                txs.insert(entry.seq, encode(entry).as_slice()).map_err(s)?;
                for account in entry.tx.tx.accounts() {
                    history
                        .insert((account.as_slice(), entry.seq), ())
                        .map_err(s)?;
                }
            }
            let mut trees = txn.open_table(REWARD_TREES).map_err(e)?;
            let mut nodes = txn.open_table(REWARD_NODES).map_err(e)?;
            for rewards in &batch.rewards {
                trees
                    .insert(rewards.epoch, rewards.encode().as_slice())
                    .map_err(s)?;
                if let Some(tree) = &rewards.tree {
                    let bytes: Vec<u8> = tree.nodes().iter().flat_map(|n| n.0).collect();
                    nodes.insert(rewards.epoch, bytes.as_slice()).map_err(s)?;
                }
            }
            if let Some(snapshot) = &batch.snapshot {
                let mut snapshots = txn.open_table(SNAPSHOTS).map_err(e)?;
                snapshots
                    .insert(snapshot.height(), snapshot.encode().as_slice())
                    .map_err(s)?;
                let heights: Vec<u64> = (snapshots.iter().map_err(s)?)
                    .map(|row| row.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()
                    .map_err(s)?;
                for old in heights.iter().rev().skip(SNAPSHOTS_KEPT) {
                    snapshots.remove(*old).map_err(s)?;
                }
            }
            let mut blocks = txn.open_table(BLOCKS).map_err(e)?;
            for header in &batch.blocks {
                blocks
                    .insert(header.height, encode(header).as_slice())
                    .map_err(s)?;
            }
            let mut checkers = txn.open_table(CHECKERS).map_err(e)?;
            for c in &batch.checkers {
                checkers
                    .insert(c.address.as_slice(), encode(c).as_slice())
                    .map_err(s)?;
            }
            let mut deployments = txn.open_table(DEPLOYMENTS).map_err(e)?;
            for d in &batch.deployments {
                deployments
                    .insert(d.id.0, encode(d).as_slice())
                    .map_err(s)?;
            }
            let mut sessions = txn.open_table(SESSIONS).map_err(e)?;
            for x in &batch.sessions {
                sessions.insert(x.id.0, encode(x).as_slice()).map_err(s)?;
            }
            let mut archived_sessions = txn.open_table(ARCHIVED_SESSIONS).map_err(e)?;
            for view in &batch.archived_sessions {
                sessions.remove(view.id.0).map_err(s)?;
                archived_sessions
                    .insert(view.id.0, encode(view).as_slice())
                    .map_err(s)?;
            }
        }
        txn.commit().map_err(|e| self.db_err(e))
    }

    /// Reads everything back, the ledger as its newest snapshot and the blocks after it:
    /// what a restart needs.
    pub fn load(&self) -> Result<Snapshot, StoreError> {
        self.load_with(true)
    }

    /// Reads everything back, the ledger as its whole chain from genesis (when a snapshot
    /// does not match its block, or to audit).
    pub fn load_from_genesis(&self) -> Result<Snapshot, StoreError> {
        self.load_with(false)
    }

    /// The newest snapshot that decodes, with the newer ones that did not.
    fn newest_snapshot(&self, txn: &redb::ReadTransaction) -> Result<NewestSnapshot, StoreError> {
        let mut skipped = Vec::new();
        let table = match txn.open_table(SNAPSHOTS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok((None, skipped)),
            Err(other) => return Err(self.db_err(other)),
        };
        let blocks = txn.open_table(BLOCKS).map_err(|e| self.db_err(e))?;
        for row in table.iter().map_err(|e| self.db_err(e))?.rev() {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let height = k.value();
            // The snapshot must name the very block the chain holds at its height; its
            // state is then checked against that block's roots when loaded.
            let stored: Option<BlockHeader> =
                match blocks.get(height).map_err(|e| self.db_err(e))? {
                    Some(b) => Some(self.decode(|| format!("block {height}"), b.value())?),
                    None => None,
                };
            match LedgerSnapshot::decode(v.value()) {
                Ok(snapshot) if stored.as_ref() == Some(&snapshot.head) => {
                    return Ok((Some(snapshot), skipped));
                }
                Ok(_) => skipped.push((
                    height,
                    format!("its block header is not the stored block {height}'s"),
                )),
                Err(why) => skipped.push((height, why)),
            }
        }
        Ok((None, skipped))
    }

    fn load_with(&self, from_snapshot: bool) -> Result<Snapshot, StoreError> {
        let (genesis, params) = self.genesis()?.ok_or_else(|| StoreError::NoGenesis {
            path: self.path.clone(),
        })?;
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let e = |e: redb::TableError| self.db_err(e);
        let s = |e: redb::StorageError| self.db_err(e);

        let mut hosts = Vec::new();
        for row in txn.open_table(HOSTS).map_err(e)?.iter().map_err(s)? {
            let (_, v) = row.map_err(s)?;
            hosts.push(self.decode(|| "host".into(), v.value())?);
        }
        let mut leases: Vec<LeaseRecord> = Vec::new();
        for row in txn.open_table(LEASES).map_err(e)?.iter().map_err(s)? {
            let (k, v) = row.map_err(s)?;
            leases.push(self.decode(|| format!("lease {}", k.value()), v.value())?);
        }
        // Only the kept leases' lines: an archived lease's are read when asked for.
        let mut logs = Vec::new();
        let log_table = txn.open_table(LOGS).map_err(e)?;
        for lease in &leases {
            let id = lease.id.0;
            for row in log_table.range((id, 0)..=(id, u64::MAX)).map_err(s)? {
                let (k, v) = row.map_err(s)?;
                let (_, seq) = k.value();
                logs.push((
                    lease.id,
                    self.decode(|| format!("log {id}/{seq}"), v.value())?,
                ));
            }
        }
        let archived_last = match txn.open_table(ARCHIVE).map_err(e)?.last().map_err(s)? {
            Some((k, _)) => k.value(),
            None => 0,
        };
        let next_lease = leases
            .iter()
            .map(|l| l.id.0)
            .max()
            .unwrap_or(0)
            .max(archived_last)
            + 1;
        let mut checkers = Vec::new();
        if let Ok(table) = txn.open_table(CHECKERS) {
            for row in table.iter().map_err(s)? {
                let (_, v) = row.map_err(s)?;
                checkers.push(self.decode(|| "checker".into(), v.value())?);
            }
        }
        let epoch = match txn.open_table(META).map_err(e)?.get(EPOCH_KEY).map_err(s)? {
            Some(v) => Some(self.decode(|| "epoch".into(), v.value())?),
            None => None,
        };
        let mut epoch_containers = Vec::new();
        let table = match txn.open_table(EPOCH_CONTAINERS) {
            Ok(table) => Some(table),
            // A store from before epochs were stored.
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(other) => return Err(self.db_err(other)),
        };
        if let Some(table) = table {
            for row in table.iter().map_err(s)? {
                let (k, v) = row.map_err(s)?;
                let key = k.value();
                let corrupt = || StoreError::Corrupt {
                    path: self.path.clone(),
                    what: "epoch container key".into(),
                    reason: format!("{} bytes, not 22", key.len()),
                };
                let (host, index) = key.split_at_checked(20).ok_or_else(corrupt)?;
                let index: [u8; 2] = index.try_into().map_err(|_| corrupt())?;
                let c = ContainerRef {
                    host: Address::from_slice(host),
                    index: u16::from_be_bytes(index),
                };
                epoch_containers
                    .push((c, self.decode(|| format!("epoch work of {c}"), v.value())?));
            }
        }
        let mut deployments = Vec::new();
        let mut sessions = Vec::new();
        // Stores from before services have neither table; any other error is one.
        let open = |table| match txn.open_table(table) {
            Ok(table) => Ok(Some(table)),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(other) => Err(self.db_err(other)),
        };
        if let Some(table) = open(DEPLOYMENTS)? {
            for row in table.iter().map_err(s)? {
                let (k, v) = row.map_err(s)?;
                deployments.push(self.decode(|| format!("deployment {}", k.value()), v.value())?);
            }
        }
        if let Some(table) = open(SESSIONS)? {
            for row in table.iter().map_err(s)? {
                let (k, v) = row.map_err(s)?;
                sessions.push(self.decode(|| format!("session {}", k.value()), v.value())?);
            }
        }
        let last_archived_session = match open(ARCHIVED_SESSIONS)? {
            Some(table) => table.last().map_err(s)?.map_or(0, |(k, _)| k.value()),
            None => 0,
        };
        let next_session = sessions
            .iter()
            .map(|x: &SessionRecord| x.id.0)
            .max()
            .unwrap_or(0)
            .max(last_archived_session)
            + 1;
        let (ledger, snapshots_skipped) = if from_snapshot {
            self.newest_snapshot(&txn)?
        } else {
            (None, Vec::new())
        };
        let after = ledger
            .as_ref()
            .map_or((0, 0), |l| (l.height(), l.transaction_count()));
        let Chain {
            genesis,
            blocks,
            unsealed,
        } = self.read_chain(&txn, genesis, after)?;
        Ok(Snapshot {
            genesis,
            params,
            hosts,
            leases,
            logs,
            next_lease,
            next_session,
            ledger,
            snapshots_skipped,
            blocks,
            unsealed,
            checkers,
            epoch,
            epoch_containers,
            deployments,
            sessions,
        })
    }
}

/// The newest snapshot that decodes, if any, and the newer ones passed over: (height, why).
type NewestSnapshot = (Option<LedgerSnapshot>, Vec<(u64, String)>);

/// The ledger's part of a store: what replays need, without hosts, leases and logs.
struct Chain {
    genesis: Genesis,
    /// Sealed blocks in height order, each with its transactions.
    blocks: Vec<(BlockHeader, Vec<LedgerEntry>)>,
    /// Transactions after the last sealed block.
    unsealed: Vec<LedgerEntry>,
}

impl Store {
    /// Reads the chain in one read transaction: transactions grouped under their blocks.
    /// The blocks after height `after.0` and the transactions from sequence `after.1` on
    /// (`(0, 0)`: the whole chain).
    fn read_chain(
        &self,
        txn: &redb::ReadTransaction,
        genesis: Genesis,
        after: (u64, u64),
    ) -> Result<Chain, StoreError> {
        let e = |e: redb::TableError| self.db_err(e);
        let s = |e: redb::StorageError| self.db_err(e);
        let mut entries: Vec<LedgerEntry> = Vec::new();
        for row in txn
            .open_table(TXS)
            .map_err(e)?
            .range(after.1..)
            .map_err(s)?
        {
            let (k, v) = row.map_err(s)?;
            entries.push(self.decode(|| format!("transaction {}", k.value()), v.value())?);
        }
        let mut headers: Vec<BlockHeader> = Vec::new();
        for row in (txn.open_table(BLOCKS).map_err(e)?)
            .range(after.0 + 1..)
            .map_err(s)?
        {
            let (k, v) = row.map_err(s)?;
            headers.push(self.decode(|| format!("block {}", k.value()), v.value())?);
        }
        // Group the transactions under their blocks; the rest are unsealed.
        let mut entries = entries.into_iter().peekable();
        let mut blocks = Vec::with_capacity(headers.len());
        for header in headers {
            let end = header.first_seq + header.tx_count as u64;
            let mut txs = Vec::with_capacity(header.tx_count as usize);
            while let Some(entry) = entries.next_if(|e| e.seq < end) {
                txs.push(entry);
            }
            blocks.push((header, txs));
        }
        Ok(Chain {
            genesis,
            blocks,
            unsealed: entries.collect(),
        })
    }

    /// The chain alone, for replays.
    fn chain(&self) -> Result<Chain, StoreError> {
        let (genesis, _) = self.genesis()?.ok_or_else(|| StoreError::NoGenesis {
            path: self.path.clone(),
        })?;
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        self.read_chain(&txn, genesis, (0, 0))
    }

    /// Block headers, newest first, from height `below - 1` down (from the head when
    /// `below` is `None`), at most `limit`.
    pub fn headers(
        &self,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<BlockHeader>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(BLOCKS).map_err(|e| self.db_err(e))?;
        let range = table
            .range(..below.unwrap_or(u64::MAX))
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in range.rev().take(limit) {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            out.push(self.decode(|| format!("block {}", k.value()), v.value())?);
        }
        Ok(out)
    }

    /// The transaction with sequence number `seq`, if there is one.
    pub fn entry(&self, seq: u64) -> Result<Option<LedgerEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(TXS).map_err(|e| self.db_err(e))?;
        match table.get(seq).map_err(|e| self.db_err(e))? {
            Some(v) => Ok(Some(
                self.decode(|| format!("transaction {seq}"), v.value())?,
            )),
            None => Ok(None),
        }
    }

    /// The transactions that involve `account` ([`gpumesh_types::Tx::accounts`]), newest
    /// first, at most `limit`: read from the account's index, so the cost is what is
    /// returned, not the chain's length.
    pub fn history(&self, account: &Address, limit: usize) -> Result<Vec<LedgerEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let index = txn.open_table(ACCOUNT_TXS).map_err(|e| self.db_err(e))?;
        let table = txn.open_table(TXS).map_err(|e| self.db_err(e))?;
        let key = account.as_slice();
        let rows = index
            .range((key, 0)..=(key, u64::MAX))
            .map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in rows.rev().take(limit) {
            let (k, _) = row.map_err(|e| self.db_err(e))?;
            let seq = k.value().1;
            let v =
                table
                    .get(seq)
                    .map_err(|e| self.db_err(e))?
                    .ok_or_else(|| StoreError::Corrupt {
                        path: self.path.clone(),
                        what: format!("history of {account}"),
                        reason: format!("indexed transaction {seq} is missing"),
                    })?;
            out.push(self.decode(|| format!("transaction {seq}"), v.value())?);
        }
        Ok(out)
    }

    /// An archived lease's final view: one that ended longer ago than the indexer keeps
    /// leases in memory.
    pub fn archived_lease(&self, id: LeaseId) -> Result<Option<LeaseView>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(ARCHIVE).map_err(|e| self.db_err(e))?;
        match table.get(id.0).map_err(|e| self.db_err(e))? {
            Some(v) => Ok(Some(
                self.decode(|| format!("archived lease {id}"), v.value())?,
            )),
            None => Ok(None),
        }
    }

    /// Archived leases in id order after `after`, of this buyer and host when given, at
    /// most `limit`: read through the buyer's or the host's index when one is given, so
    /// the cost is the page (and, with both, that buyer's leases on other hosts).
    pub fn archived_leases(
        &self,
        buyer: Option<Address>,
        host: Option<Address>,
        after: Option<LeaseId>,
        limit: usize,
    ) -> Result<Vec<LeaseView>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(ARCHIVE).map_err(|e| self.db_err(e))?;
        let from = after.map_or(0, |a| a.0.saturating_add(1));
        let get =
            |id: u64| -> Result<LeaseView, StoreError> {
                let v = table.get(id).map_err(|e| self.db_err(e))?.ok_or_else(|| {
                    StoreError::Corrupt {
                        path: self.path.clone(),
                        what: "archive index".into(),
                        reason: format!("indexed lease {id} is not archived"),
                    }
                })?;
                self.decode(|| format!("archived lease {id}"), v.value())
            };
        let wanted =
            |v: &LeaseView| buyer.is_none_or(|b| v.buyer == b) && host.is_none_or(|h| v.host == h);
        let mut out = Vec::new();
        let index = match (buyer, host) {
            (Some(b), _) => Some((ARCHIVE_BY_BUYER, b)),
            (None, Some(h)) => Some((ARCHIVE_BY_HOST, h)),
            (None, None) => None,
        };
        match index {
            Some((index, who)) => {
                let index = txn.open_table(index).map_err(|e| self.db_err(e))?;
                let key = who.as_slice();
                for row in index
                    .range((key, from)..=(key, u64::MAX))
                    .map_err(|e| self.db_err(e))?
                {
                    if out.len() == limit {
                        break;
                    }
                    let (k, _) = row.map_err(|e| self.db_err(e))?;
                    let view = get(k.value().1)?;
                    if wanted(&view) {
                        out.push(view);
                    }
                }
            }
            None => {
                for row in table.range(from..).map_err(|e| self.db_err(e))?.take(limit) {
                    let (k, v) = row.map_err(|e| self.db_err(e))?;
                    out.push(self.decode(|| format!("archived lease {}", k.value()), v.value())?);
                }
            }
        }
        Ok(out)
    }

    /// An archived session's final view.
    pub fn archived_session(&self, id: SessionId) -> Result<Option<SessionView>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn
            .open_table(ARCHIVED_SESSIONS)
            .map_err(|e| self.db_err(e))?;
        match table.get(id.0).map_err(|e| self.db_err(e))? {
            Some(v) => Ok(Some(
                self.decode(|| format!("archived session {id}"), v.value())?,
            )),
            None => Ok(None),
        }
    }

    /// A lease's stored log lines from sequence `from` on, at most `limit`.
    pub fn logs(&self, id: LeaseId, from: u64, limit: usize) -> Result<Vec<LogEntry>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(LOGS).map_err(|e| self.db_err(e))?;
        let mut out = Vec::new();
        for row in (table.range((id.0, from)..=(id.0, u64::MAX)))
            .map_err(|e| self.db_err(e))?
            .take(limit)
        {
            let (k, v) = row.map_err(|e| self.db_err(e))?;
            let (_, seq) = k.value();
            out.push(self.decode(|| format!("log {id}/{seq}"), v.value())?);
        }
        Ok(out)
    }

    /// The reward tree stored when `epoch` closed.
    pub fn epoch_rewards(&self, epoch: u64) -> Result<Option<EpochRewards>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(REWARD_TREES).map_err(|e| self.db_err(e))?;
        let Some(v) = table.get(epoch).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        EpochRewards::decode(epoch, v.value())
            .map(Some)
            .map_err(|reason| StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("reward tree of epoch {epoch}"),
                reason,
            })
    }

    /// The next epoch to close: one past the last stored reward tree.
    fn next_epoch(&self) -> Result<u64, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = txn.open_table(REWARD_TREES).map_err(|e| self.db_err(e))?;
        let last = table.last().map_err(|e| self.db_err(e))?;
        Ok(last.map_or(0, |(k, _)| k.value() + 1))
    }

    /// The stored nodes of `epoch`'s reward tree, if this version wrote them.
    fn reward_nodes(&self, epoch: u64) -> Result<Option<Vec<B256>>, StoreError> {
        let txn = self.db.begin_read().map_err(|e| self.db_err(e))?;
        let table = match txn.open_table(REWARD_NODES) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(other) => return Err(self.db_err(other)),
        };
        let Some(v) = table.get(epoch).map_err(|e| self.db_err(e))? else {
            return Ok(None);
        };
        let bytes = v.value();
        if bytes.len() % 32 != 0 {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                what: format!("reward tree nodes of epoch {epoch}"),
                reason: format!("{} bytes, not a whole number of nodes", bytes.len()),
            });
        }
        Ok(Some(bytes.chunks_exact(32).map(B256::from_slice).collect()))
    }

    /// Proves `account`'s cumulative reward after `epoch` from the epoch's stored reward
    /// tree: a lookup of its leaf and siblings (or, for an epoch stored without its
    /// nodes, the tree's hashing), without replaying the chain. The tree is checked
    /// against the root stored with it.
    pub fn reward_proof(&self, account: Address, epoch: u64) -> Result<RewardProof, ProofError> {
        let Some(rewards) = self.epoch_rewards(epoch)? else {
            return Err(gpumesh_ledger::ProofError::EpochNotClosed {
                epoch,
                next: self.next_epoch()?,
            }
            .into());
        };
        let root = rewards.root;
        let corrupt = |reason: String| StoreError::Corrupt {
            path: self.path.clone(),
            what: format!("reward tree of epoch {epoch}"),
            reason,
        };
        let tree = match self.reward_nodes(epoch)? {
            Some(nodes) => MerkleTree::from_nodes(nodes)
                .filter(|t| t.len() == rewards.leaves.len())
                .ok_or_else(|| {
                    corrupt(format!(
                        "its nodes are not a tree over its {} leaves",
                        rewards.leaves.len()
                    ))
                })?,
            None => gpumesh_ledger::reward_tree(rewards.leaves.iter().copied()),
        };
        if tree.root() != root {
            return Err(corrupt(format!(
                "its tree's root is {}, not its stored root {root}",
                tree.root()
            ))
            .into());
        }
        Ok(gpumesh_ledger::prove_reward_in(
            epoch,
            &rewards.leaves,
            &tree,
            account,
        )?)
    }

    /// Proves as [`Store::reward_proof`] does, by replaying the stored chain from genesis
    /// instead: the audit of the stored trees.
    pub fn reward_proof_by_replay(
        &self,
        account: Address,
        epoch: u64,
    ) -> Result<RewardProof, ProofError> {
        let chain = self.chain()?;
        let entries = chain
            .blocks
            .into_iter()
            .flat_map(|(_, entries)| entries)
            .chain(chain.unsealed);
        Ok(gpumesh_ledger::reward_proof(
            chain.genesis,
            entries,
            account,
            epoch,
        )?)
    }

    /// Replays the stored chain from genesis, checking every signature, root and the
    /// conservation of supply, as `gpumesh ledger verify` does.
    pub fn verify(&self) -> Result<gpumesh_ledger::ReplayReport, VerifyError> {
        self.verify_with_progress(|_, _| {})
    }

    /// [`Store::verify`], telling `progress(blocks_started, blocks)` as it goes.
    pub fn verify_with_progress(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<gpumesh_ledger::ReplayReport, VerifyError> {
        let chain = self.chain()?;
        let total = chain.blocks.len() as u64;
        let mut started = 0;
        let blocks = chain.blocks.into_iter().inspect(|_| {
            started += 1;
            progress(started, total);
        });
        let (_, report) = gpumesh_ledger::replay(chain.genesis, blocks, chain.unsealed)?;
        Ok(report)
    }
}

/// Why a reward proof could not be made from the store.
#[derive(Debug, thiserror::Error)]
pub enum ProofError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Proof(#[from] gpumesh_ledger::ProofError),
}

/// Why a stored chain does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Replay(#[from] gpumesh_ledger::ReplayError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumesh_identity::Wallet;
    use gpumesh_ledger::Ledger;
    use gpumesh_types::{Amount, LogStream, Tx, TxKind};

    #[test]
    fn what_was_written_is_read_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let protocol = Wallet::from_label("protocol");
        let faucet = Wallet::from_label("faucet");
        let genesis = Genesis::local(5, 0, protocol.address(), faucet.address());
        let mut ledger = Ledger::new(genesis.clone()).unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.init(&genesis, &Params::local()).unwrap();
            let stx = faucet.sign_tx(Tx {
                chain_id: 5,
                from: faucet.address(),
                nonce: 0,
                kind: TxKind::Transfer {
                    to: protocol.address(),
                    amount: Amount(9),
                },
            });
            let applied = ledger.apply(&stx, 10).unwrap();
            let (header, _) = ledger.seal(11).unwrap();
            let stx = faucet.sign_tx(Tx {
                nonce: 1,
                ..stx.tx.clone()
            });
            let unsealed = ledger.apply(&stx, 12).unwrap();
            store
                .write(Batch {
                    txs: vec![applied.entry, unsealed.entry],
                    blocks: vec![header],
                    logs: vec![(
                        LeaseId(3),
                        LogEntry {
                            seq: 0,
                            at_ms: 1,
                            stream: LogStream::Stdout,
                            data: "hi\n".into(),
                        },
                    )],
                    ..Batch::default()
                })
                .unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let snapshot = store.load().unwrap();
        assert_eq!(snapshot.genesis, genesis);
        assert_eq!(snapshot.blocks.len(), 1);
        assert_eq!(snapshot.blocks[0].1.len(), 1);
        assert_eq!(snapshot.unsealed.len(), 1);
        // Lines are loaded with their kept lease (lease 3 has none here) and read by id.
        assert!(snapshot.logs.is_empty());
        let lines = store.logs(LeaseId(3), 0, 10).unwrap();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0].data, "hi\n");
        assert!(store.logs(LeaseId(3), 1, 10).unwrap().is_empty());
        assert_eq!(snapshot.next_lease, 1);
        let (mut replayed, report) =
            gpumesh_ledger::replay(genesis.clone(), snapshot.blocks, snapshot.unsealed).unwrap();
        assert_eq!(report.transactions, 2);
        assert_eq!(replayed.state_root(), ledger.state_root());

        let other = Genesis::local(6, 0, protocol.address(), faucet.address());
        assert!(
            store.init(&other, &Params::local()).is_err(),
            "a store belongs to one network"
        );
    }

    #[test]
    fn a_store_of_another_layout_is_refused_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        let protocol = Wallet::from_label("protocol");
        let genesis = Genesis::local(5, 0, protocol.address(), protocol.address());
        {
            let store = Store::open(dir.path()).unwrap();
            store.init(&genesis, &Params::local()).unwrap();
            // As a store of gpumesh before versions were recorded.
            let txn = store.db.begin_write().unwrap();
            txn.open_table(META).unwrap().remove(SCHEMA_KEY).unwrap();
            txn.commit().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(
                err,
                StoreError::Schema {
                    found: 1,
                    expected: SCHEMA_VERSION,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("new data directory"), "{err}");
        // A newer one is refused too.
        let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(META)
            .unwrap()
            .insert(SCHEMA_KEY, encode(&(SCHEMA_VERSION + 1)).as_slice())
            .unwrap();
        txn.commit().unwrap();
        drop(db);
        let err = Store::open(dir.path()).unwrap_err();
        assert!(err.to_string().contains("newer gpumesh"), "{err}");
        // Layouts 4 (no archive yet) and 5 (no retired leases yet) open, and are recorded
        // as this layout.
        for old in [4u32, 5] {
            let db = Database::create(dir.path().join(STORE_FILE)).unwrap();
            let txn = db.begin_write().unwrap();
            txn.open_table(META)
                .unwrap()
                .insert(SCHEMA_KEY, encode(&old).as_slice())
                .unwrap();
            txn.commit().unwrap();
            drop(db);
            let store = Store::open(dir.path()).unwrap();
            let txn = store.db.begin_read().unwrap();
            let meta = txn.open_table(META).unwrap();
            let recorded: u32 =
                serde_json::from_slice(meta.get(SCHEMA_KEY).unwrap().unwrap().value()).unwrap();
            assert_eq!(recorded, SCHEMA_VERSION, "from layout {old}");
        }
    }

    /// Writes `kind`, signed by `by`, as the indexer would: the transaction and, for an
    /// epoch, its reward tree in the same batch.
    fn commit(store: &Store, ledger: &mut Ledger, by: &Wallet, kind: TxKind, now: u64) {
        let stx = by.sign_tx(Tx {
            chain_id: 5,
            from: by.address(),
            nonce: ledger.account(&by.address()).nonce,
            kind,
        });
        let applied = ledger.apply(&stx, now).unwrap();
        let mut batch = Batch::default();
        if let TxKind::Epoch(close) = &stx.tx.kind {
            batch
                .rewards
                .push(EpochRewards::of(&mut *ledger, close.epoch));
        }
        batch.txs.push(applied.entry);
        store.write(batch).unwrap();
    }

    fn close(epoch: u64, checkers: &[Address]) -> TxKind {
        TxKind::Epoch(Box::new(gpumesh_types::EpochClose {
            epoch,
            end_ms: (epoch + 1) * 60_000,
            evidence: B256::ZERO,
            capacity: vec![],
            delivery: vec![],
            checkers: checkers.iter().map(|&c| (c, 10, 10_000)).collect(),
            quarter_bonus: false,
        }))
    }

    #[test]
    fn a_load_starts_from_the_newest_snapshot_and_only_two_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let protocol = Wallet::from_label("protocol");
        let faucet = Wallet::from_label("faucet");
        let genesis = Genesis::local(5, 0, protocol.address(), faucet.address());
        let mut ledger = Ledger::new(genesis.clone()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.init(&genesis, &Params::local()).unwrap();
        let someone = Address::with_last_byte(9);
        // Five blocks of one transfer each, a snapshot with each of them.
        for height in 1..=5u64 {
            let kind = TxKind::Transfer {
                to: someone,
                amount: Amount(height as u128),
            };
            commit(&store, &mut ledger, &faucet, kind, height * 1_000);
            let (header, _) = ledger.seal(height * 1_000).unwrap();
            store
                .write(Batch {
                    blocks: vec![header],
                    snapshot: ledger.snapshot(),
                    ..Batch::default()
                })
                .unwrap();
        }
        // One more transaction, unsealed.
        let kind = TxKind::Transfer {
            to: someone,
            amount: Amount(6),
        };
        commit(&store, &mut ledger, &faucet, kind, 6_000);

        let kept: Vec<u64> = {
            let txn = store.db.begin_read().unwrap();
            let table = txn.open_table(SNAPSHOTS).unwrap();
            table
                .iter()
                .unwrap()
                .map(|r| r.unwrap().0.value())
                .collect()
        };
        assert_eq!(kept, vec![4, 5], "the newest two snapshots are kept");

        let loaded = store.load().unwrap();
        assert_eq!(loaded.ledger.as_ref().map(|l| l.height()), Some(5));
        assert!(loaded.blocks.is_empty(), "no block after the snapshot's");
        assert_eq!(loaded.unsealed.len(), 1);
        let start = Ledger::from_snapshot(genesis.clone(), loaded.ledger.unwrap()).unwrap();
        let (restored, _) =
            gpumesh_ledger::replay_from(start, loaded.blocks, loaded.unsealed).unwrap();
        assert_eq!(restored.balance(&someone), ledger.balance(&someone));
        assert_eq!(restored.transaction_count(), 6);

        let whole = store.load_from_genesis().unwrap();
        assert!(whole.ledger.is_none());
        assert_eq!(whole.blocks.len(), 5);
        assert_eq!(whole.unsealed.len(), 1);

        // A newest snapshot that does not decode is passed over for the one before it.
        let fifth: Vec<u8> = {
            let txn = store.db.begin_read().unwrap();
            let table = txn.open_table(SNAPSHOTS).unwrap();
            table.get(5).unwrap().unwrap().value().to_vec()
        };
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(SNAPSHOTS)
                .unwrap()
                .insert(5, b"\x01garbage".as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let loaded = store.load().unwrap();
        assert_eq!(loaded.ledger.as_ref().map(|l| l.height()), Some(4));
        assert_eq!(loaded.blocks.len(), 1, "block 5 is replayed");
        assert_eq!(loaded.snapshots_skipped.len(), 1);
        assert_eq!(loaded.snapshots_skipped[0].0, 5);

        // One that names another block than the chain holds at its height is passed over
        // too: with none left, the chain is loaded from genesis.
        {
            let txn = store.db.begin_write().unwrap();
            txn.open_table(SNAPSHOTS)
                .unwrap()
                .insert(4, fifth.as_slice())
                .unwrap();
            txn.commit().unwrap();
        }
        let loaded = store.load().unwrap();
        assert!(loaded.ledger.is_none());
        assert_eq!(loaded.blocks.len(), 5);
        assert_eq!(loaded.snapshots_skipped.len(), 2);
        assert!(
            loaded.snapshots_skipped[1]
                .1
                .contains("not the stored block 4"),
            "{:?}",
            loaded.snapshots_skipped
        );
    }

    #[test]
    fn proofs_come_from_stored_trees_and_histories_from_the_index_as_a_replay_finds_them() {
        let dir = tempfile::tempdir().unwrap();
        let protocol = Wallet::from_label("protocol");
        let faucet = Wallet::from_label("faucet");
        let (a, b) = (
            Wallet::from_label("checker a"),
            Wallet::from_label("checker b"),
        );
        let genesis = Genesis::local(5, 0, protocol.address(), faucet.address());
        let mut ledger = Ledger::new(genesis.clone()).unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.init(&genesis, &Params::local()).unwrap();
        let (mut checkers, now) = (vec![a.address(), b.address()], 1);
        checkers.sort();
        let transfer = |to: Address| TxKind::Transfer {
            to,
            amount: Amount(7),
        };
        commit(&store, &mut ledger, &faucet, transfer(a.address()), now);
        commit(&store, &mut ledger, &protocol, close(0, &checkers), 60_000);
        commit(&store, &mut ledger, &faucet, transfer(b.address()), 61_000);
        commit(
            &store,
            &mut ledger,
            &protocol,
            close(1, &[a.address()]),
            120_000,
        );
        commit(&store, &mut ledger, &a, transfer(b.address()), 121_000);

        for (who, epoch) in [(&a, 0), (&b, 0), (&a, 1), (&b, 1)] {
            let stored = store.reward_proof(who.address(), epoch).unwrap();
            let replayed = store.reward_proof_by_replay(who.address(), epoch).unwrap();
            assert_eq!(stored, replayed, "epoch {epoch}");
            assert_eq!(
                gpumesh_ledger::merkle::process_proof(stored.leaf, &stored.proof),
                stored.root
            );
        }
        assert!(
            store.reward_proof(a.address(), 1).unwrap().cumulative
                > store.reward_proof(a.address(), 0).unwrap().cumulative
        );
        assert_eq!(
            store.reward_proof(a.address(), 1).unwrap().root,
            ledger.reward_root()
        );
        let err = store.reward_proof(a.address(), 2).unwrap_err().to_string();
        assert!(err.contains("next epoch to close is 2"), "{err}");
        let err = store
            .reward_proof(faucet.address(), 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("had no rewards"), "{err}");

        // Each account's history is what a scan of the chain finds, newest first.
        let chain: Vec<LedgerEntry> = (0..5)
            .map(|seq| store.entry(seq).unwrap().unwrap())
            .collect();
        for who in [&a, &b, &faucet, &protocol] {
            let scanned: Vec<u64> = chain
                .iter()
                .rev()
                .filter(|e| e.tx.tx.involves(&who.address()))
                .map(|e| e.seq)
                .collect();
            let indexed: Vec<u64> = store
                .history(&who.address(), 100)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(indexed, scanned);
            let two: Vec<u64> = store
                .history(&who.address(), 2)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect();
            assert_eq!(two, scanned.iter().take(2).copied().collect::<Vec<_>>());
        }
        assert_eq!(
            store
                .history(&a.address(), 100)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            [4, 3, 1, 0]
        );

        // Without stored nodes (an epoch migrated from layout 2) the tree is rebuilt from
        // its leaves: the same proofs.
        let with_nodes: Vec<RewardProof> = [(&a, 0), (&b, 0), (&a, 1)]
            .iter()
            .map(|(who, epoch)| store.reward_proof(who.address(), *epoch).unwrap())
            .collect();
        let drop_nodes = || {
            let txn = store.db.begin_write().unwrap();
            txn.delete_table(REWARD_NODES).unwrap();
            txn.commit().unwrap();
        };
        drop_nodes();
        let rebuilt: Vec<RewardProof> = [(&a, 0), (&b, 0), (&a, 1)]
            .iter()
            .map(|(who, epoch)| store.reward_proof(who.address(), *epoch).unwrap())
            .collect();
        assert_eq!(with_nodes, rebuilt);

        // A stored tree whose leaves do not match its nodes or its root is reported, not
        // served.
        let honest = store.epoch_rewards(1).unwrap().unwrap();
        let mut tampered = honest.clone();
        tampered.leaves[0].1.0 += 1;
        let account = tampered.leaves[0].0;
        tampered.tree = Some(gpumesh_ledger::reward_tree(honest.leaves.iter().copied()));
        store
            .write(Batch {
                rewards: vec![tampered],
                ..Batch::default()
            })
            .unwrap();
        let err = store.reward_proof(account, 1).unwrap_err().to_string();
        assert!(err.contains("has no leaf"), "{err}");
        drop_nodes();
        let err = store.reward_proof(account, 1).unwrap_err().to_string();
        assert!(err.contains("not its stored root"), "{err}");
    }

    #[test]
    fn container_work_stored_before_payments_were_kept_still_reads() {
        let old: ContainerWork =
            serde_json::from_slice(br#"{"delivered_gpu_ms":7,"up":2,"down":1}"#).unwrap();
        let expected = ContainerWork {
            delivered_gpu_ms: 7,
            up: 2,
            down: 1,
            ..ContainerWork::default()
        };
        assert_eq!(old, expected);
    }
}

//! The indexer's state and what each API call does to it.
//!
//! [`Core`] ties the registry (hosts, leases) to the ledger (money) and the leases' output.
//! Each operation takes the time as an argument and adds what it changed to a
//! [`Batch`]; the service writes the batch durably before it answers. An operation that
//! fails has changed nothing: each one checks everything that can fail before its first
//! change, in the registry and the ledger alike.

use std::collections::{HashMap, HashSet};

use gpumesh_checking::epoch::{self, ContainerEpoch};
use gpumesh_checking::{Checking, PeriodOutcome};
use gpumesh_identity::Wallet;
use gpumesh_ledger::{Applied, CheckedTx, Ledger, Verified};
use gpumesh_registry::{CapacityDecision, Dirty, Effect, Registry};
use gpumesh_store::{Batch, ContainerWork, EpochStart, Snapshot};
use gpumesh_types::{
    AccountView, Address, Amount, ContainerRef, ErrorCode, Heartbeat, HostRegistered, HostWork,
    JobRequest, LeaseFinish, LeaseId, LeaseState, LeaseView, LogAppend, LogEntry, LogStream,
    NetworkInfo, RegisterHost, SignedTx, Tx, TxAccepted, TxKind,
};

use crate::closing::{EpochInputs, PreparedEpoch};
use crate::error::Failure;

/// Output kept per lease; beyond it the rest is dropped with a note.
pub const MAX_LOG_BYTES_PER_LEASE: usize = 4 * 1024 * 1024;
/// The most one faucet request may give, in whole tokens.
pub const FAUCET_LIMIT_TOKENS: u64 = 100_000;

#[derive(Debug, Default)]
struct LeaseLog {
    entries: Vec<LogEntry>,
    bytes: usize,
    truncated: bool,
}

/// Registry, ledger and logs of one indexer.
#[derive(Debug)]
pub struct Core {
    registry: Registry,
    ledger: Ledger,
    logs: HashMap<LeaseId, LeaseLog>,
    protocol: Wallet,
    faucet: Option<Wallet>,
    epoch: EpochWork,
    checking: Checking,
    /// Deals canaries; derived from the protocol key, so checkers cannot know it.
    canary_seed: alloy_primitives::B256,
    /// Where canary tasks send checkers: the indexer's decoy agent.
    decoy_base: String,
    /// Each checker's measuring point (soft state, like the network coordinates).
    checker_anchors: HashMap<Address, u32>,
    /// Whether the full reconciliation at start has run.
    reconciled_once: bool,
    /// Leases whose escrow close failed, for reconciliation to retry.
    unclosed: std::collections::BTreeSet<LeaseId>,
    /// A ledger snapshot is written with the first block sealed this many transactions
    /// after the last one.
    snapshot_every: u64,
    /// The transaction count at the newest snapshot (0: none).
    snapshot_seq: u64,
    /// How long an ended lease (with its log) stays in memory before it moves to the
    /// store's archive.
    retention_ms: u64,
    /// Archived leases whose ids have yet to retire in the ledger, and when ids last
    /// retired: they retire together every [`Core::retire_every_ms`], not every tick.
    retiring: Vec<LeaseId>,
    retired_at_ms: u64,
    /// Where the epoch's close stands ([`crate::closing`]).
    closing: Closing,
    /// Whether the tick leaves a due close's inputs to be assembled off the lock, and
    /// those inputs until they are taken.
    epoch_off_lock: bool,
    epoch_ready: Option<EpochInputs>,
}

/// Where the epoch's close stands.
#[derive(Debug)]
enum Closing {
    /// None is under way; a refused or abandoned one is read again from `retry_at_ms`.
    Idle { retry_at_ms: u64 },
    /// Its inputs were read; being assembled. The next epoch begins where they were read,
    /// so the hosts offline then, and those that went offline since, are lost in it.
    Assembling { lost: HashSet<Address> },
}

/// The longest a refused (or abandoned) epoch close waits to be tried again: a minute, or
/// an epoch if that is shorter.
const EPOCH_RETRY_MS: u64 = 60_000;

/// How long ended leases stay in memory by default: an hour.
pub const RETENTION_MS: u64 = 3_600_000;

/// The longest archived leases' ids wait to retire in the ledger (unless the retention
/// is shorter, or 10,000 wait): one retirement carries up to ten seconds of ended work,
/// so the chain gains 8,640 of them a day, or one per 10,000 leases archived where more
/// end than that.
pub const RETIRE_EVERY_MS: u64 = 10_000;

/// The most ended leases one tick moves to the archive, so a tick after a long pause (or
/// a burst of ends) holds the state lock for a bounded time; the rest go next tick.
pub const MAX_ARCHIVED_PER_TICK: usize = 2_000;

/// Whether `signer` may read the output of lease `id` of `buyer` on `host`: its buyer or its
/// host.
pub fn may_read(
    signer: &Address,
    id: LeaseId,
    buyer: Address,
    host: Address,
) -> Result<(), Failure> {
    if buyer != *signer && host != *signer {
        return Err(Failure::new(
            ErrorCode::NotYourLease,
            format!("lease {id} belongs to another buyer"),
        ));
    }
    Ok(())
}

/// Transactions between ledger snapshots by default: a restart replays at most about
/// this many (under a second here) after loading the newest snapshot.
pub const SNAPSHOT_EVERY: u64 = 20_000;

/// What the current epoch has seen, for its rewards, beyond the ledger: stored as it
/// changes, so a restart mid-epoch pays exactly what an uninterrupted run would.
#[derive(Debug, Default)]
struct EpochWork {
    start: EpochStart,
    /// Per container: GPU-milliseconds delivered and liveness verdicts.
    containers: HashMap<ContainerRef, ContainerWork>,
    /// Containers changed since the last write; whether `start` changed; whether the
    /// stored work of the last epoch must go.
    dirty: HashSet<ContainerRef>,
    start_dirty: bool,
    reset: bool,
}

impl EpochWork {
    fn begin(now_ms: u64) -> EpochWork {
        EpochWork {
            start: EpochStart {
                started_ms: now_ms,
                lost: Default::default(),
            },
            start_dirty: true,
            reset: true,
            ..EpochWork::default()
        }
    }

    /// The next epoch, begun at `end_ms` where this one closed having counted `counted`:
    /// it holds what was done since (stored anew, as the old epoch's rows go).
    fn after_close(
        &self,
        counted: &HashMap<ContainerRef, ContainerWork>,
        end_ms: u64,
    ) -> EpochWork {
        let mut next = EpochWork::begin(end_ms);
        for (c, w) in &self.containers {
            let rest = counted.get(c).map_or(*w, |counted| w.since(counted));
            if rest != ContainerWork::default() {
                next.containers.insert(*c, rest);
                next.dirty.insert(*c);
            }
        }
        next
    }

    fn container(&mut self, c: ContainerRef) -> &mut ContainerWork {
        self.dirty.insert(c);
        self.containers.entry(c).or_default()
    }

    fn lost(&mut self, host: Address) {
        self.start_dirty |= self.start.lost.insert(host);
    }

    fn collect(&mut self, batch: &mut Batch) {
        batch.epoch_reset |= std::mem::take(&mut self.reset);
        if std::mem::take(&mut self.start_dirty) {
            batch.epoch = Some(self.start.clone());
        }
        for c in self.dirty.drain() {
            batch.epoch_containers.push((c, self.containers[&c]));
        }
    }
}

impl Core {
    /// Rebuilds the state from the store: replays the ledger from genesis (checking every
    /// block) and restores the registry and the logs.
    pub fn restore(
        snapshot: Snapshot,
        protocol: Wallet,
        faucet: Option<Wallet>,
        now_ms: u64,
    ) -> Result<Core, String> {
        if protocol.address() != snapshot.genesis.protocol {
            return Err(format!(
                "the protocol key is {}, but this network's genesis names {}",
                protocol.address(),
                snapshot.genesis.protocol
            ));
        }
        if let Some(f) = &faucet
            && snapshot.genesis.faucet != Some(f.address())
        {
            return Err(format!(
                "the faucet key {} is not this network's faucet",
                f.address()
            ));
        }
        let checking = Checking::new(
            snapshot.genesis.checking.clone(),
            snapshot.genesis.time_ms,
            snapshot.checkers,
        );
        let snapshot_seq = snapshot
            .ledger
            .as_ref()
            .map_or(0, |l| l.transaction_count());
        let start = match snapshot.ledger {
            Some(at) => {
                let height = at.height();
                Ledger::from_snapshot(snapshot.genesis, at)
                    .map_err(|e| format!("the ledger snapshot at block {height} is refused: {e}"))?
            }
            None => Ledger::new(snapshot.genesis)
                .map_err(|e| format!("the stored genesis is invalid: {e}"))?,
        };
        let (mut ledger, _) =
            gpumesh_ledger::replay_from(start, snapshot.blocks, snapshot.unsealed)
                .map_err(|e| format!("the stored ledger does not replay: {e}"))?;
        // A replayed epoch's reward tree is stored already.
        drop(ledger.take_reward_tree());
        let mut params = snapshot.params;
        params.checked = checking.enabled();
        let cp = checking.params();
        params.delivery_window_ms = 2 * (cp.period_ms + cp.report_grace_ms);
        params.provable_models = gpumesh_types::CATALOG
            .iter()
            .map(|spec| spec.model)
            .filter(|&model| cp.proof_for(model, false).is_some())
            .collect();
        params.private_endpoints = cp.private_endpoints;
        let (snapshot_next_lease, snapshot_next_session) =
            (snapshot.next_lease, snapshot.next_session);
        let mut registry = Registry::restore(params, snapshot.hosts, snapshot.leases, now_ms)?;
        registry.restore_services(snapshot.deployments, snapshot.sessions);
        let canary_seed = alloy_primitives::keccak256(
            protocol.sign_message(b"gpumesh-canary-seed-v1").as_bytes(),
        );
        let mut logs: HashMap<LeaseId, LeaseLog> = HashMap::new();
        for (lease, entry) in snapshot.logs {
            let log = logs.entry(lease).or_default();
            log.bytes += entry.data.len();
            log.entries.push(entry);
        }
        let mut core = Core {
            registry,
            ledger,
            logs,
            protocol,
            faucet,
            epoch: match snapshot.epoch {
                Some(start) => EpochWork {
                    start,
                    containers: snapshot.epoch_containers.into_iter().collect(),
                    ..EpochWork::default()
                },
                // A new network (or a store from before epochs were stored) starts one.
                None => EpochWork::begin(now_ms),
            },
            checking,
            canary_seed,
            decoy_base: String::new(),
            checker_anchors: HashMap::new(),
            reconciled_once: false,
            unclosed: Default::default(),
            snapshot_every: SNAPSHOT_EVERY,
            snapshot_seq,
            retention_ms: RETENTION_MS,
            retiring: Vec::new(),
            retired_at_ms: now_ms,
            closing: Closing::Idle { retry_at_ms: 0 },
            epoch_off_lock: false,
            epoch_ready: None,
        };
        core.registry.reserve_lease_ids(snapshot_next_lease);
        core.registry.reserve_session_ids(snapshot_next_session);
        // Leases archived before the stop whose ids had yet to retire wait for the next
        // retirement as they did (the start's reconciliation retires them at once).
        core.retiring = core.stale_ids();
        let stakes: Vec<(Address, u16)> = core.ledger.stakes().map(|(k, _)| k).collect();
        for (host, index) in stakes {
            core.sync_stake(host, index);
        }
        Ok(core)
    }

    /// The state as `snapshot` holds it, with this core's keys: what a failed operation
    /// puts back.
    pub fn reloaded(&self, snapshot: Snapshot, now_ms: u64) -> Result<Core, String> {
        let mut core = Core::restore(snapshot, self.protocol.clone(), self.faucet.clone(), now_ms)?;
        core.decoy_base = self.decoy_base.clone();
        core.snapshot_every = self.snapshot_every;
        core.retention_ms = self.retention_ms;
        core.epoch_off_lock = self.epoch_off_lock;
        Ok(core)
    }

    /// Tells the registry whether a container's stake covers its requirement.
    fn sync_stake(&mut self, host: Address, index: u16) {
        let Some(k) = self.registry.k_of(&host, index) else {
            return;
        };
        let required = self.ledger.genesis().economics.requirement(k);
        let bonded = self.ledger.stake(&host, index).bonded;
        let _ = self
            .registry
            .set_staked(&host, index, bonded.0 > 0 && bonded >= required);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Writes a ledger snapshot with the first block sealed `every` transactions after
    /// the last one.
    pub fn set_snapshot_every(&mut self, every: u64) {
        self.snapshot_every = every.max(1);
    }

    /// How long ended leases stay in memory before they move to the store's archive.
    pub fn set_retention(&mut self, retention_ms: u64) {
        self.retention_ms = retention_ms;
    }

    /// Moves leases and sessions that ended longer ago than the retention (leases with
    /// their logs) out of memory and into the store's archives as their final views (at
    /// most [`MAX_ARCHIVED_PER_TICK`] of each). A lease whose escrow is still open stays until
    /// reconciliation closes it: its settlement is not final. The archived leases' ids
    /// retire in the ledger later, together ([`Core::retire_archived`]).
    fn archive_ended(&mut self, now_ms: u64, batch: &mut Batch) {
        let before = now_ms.saturating_sub(self.retention_ms);
        // Sessions first: an ended session shows its replica's endpoints, read from the
        // replica's lease while it is still in memory.
        let due: Vec<gpumesh_types::SessionId> = self
            .registry
            .sessions_ended_before(before)
            .take(MAX_ARCHIVED_PER_TICK)
            .collect();
        for id in due {
            let Some(view) = self.registry.session_view(id) else {
                continue;
            };
            if self.registry.forget_session(id).is_some() {
                batch.archived_sessions.push(view);
            }
        }
        // Leases that cannot move yet (escrow still open) are passed over, not counted, so
        // they never hold back those behind them.
        let ledger = &self.ledger;
        let unclosed = &self.unclosed;
        let due: Vec<LeaseId> = self
            .registry
            .ended_before(before)
            .filter(|id| !unclosed.contains(id) && ledger.escrow(*id).is_none_or(|e| e.closed))
            .take(MAX_ARCHIVED_PER_TICK)
            .collect();
        for id in due {
            // Its final view, while its escrow (the settlement) is in the ledger.
            let Ok(view) = self.lease_view(id) else {
                continue;
            };
            // Its record may be waiting to be written; the archive write follows it.
            if self.registry.forget(id).is_some() {
                self.logs.remove(&id);
                self.retiring.push(id);
                batch.archived.push(view);
            }
        }
    }

    /// The archived leases whose ids wait to retire in the ledger.
    pub fn retiring(&self) -> &[LeaseId] {
        &self.retiring
    }

    /// How long archived leases' ids wait to retire: [`RETIRE_EVERY_MS`], or the
    /// retention if it is shorter.
    fn retire_every_ms(&self) -> u64 {
        self.retention_ms.min(RETIRE_EVERY_MS)
    }

    /// Retires in the ledger the ids of the leases archived since the last retirement,
    /// once [`Core::retire_every_ms`] has passed (or a transaction's worth is waiting):
    /// their closed escrows leave its memory, and no escrow can be opened for them again.
    ///
    /// Until then an archived lease's closed escrow stays in the ledger, and nothing can
    /// fund its id: an escrow opens only for a lease in the registry. A crash before they
    /// retire loses nothing either: the start retires every id no longer in memory
    /// ([`Core::retire_stale`]).
    /// With `now`, whatever waits retires at once.
    fn retire_archived(&mut self, now_ms: u64, batch: &mut Batch, now: bool) {
        let due = now
            || now_ms.saturating_sub(self.retired_at_ms) >= self.retire_every_ms()
            || self.retiring.len() as u64 >= gpumesh_ledger::MAX_RETIRED_PER_TX;
        if !due || self.retiring.is_empty() {
            return;
        }
        self.retired_at_ms = now_ms;
        let mut ids = std::mem::take(&mut self.retiring);
        ids.retain(|&id| !self.ledger.retired().contains(id));
        let mut txs = gpumesh_ledger::into_transactions(gpumesh_ledger::ranges_of(ids)).into_iter();
        while let Some(ranges) = txs.next() {
            let kind = TxKind::RetireLeases {
                ranges: ranges.clone(),
            };
            if let Err(e) = self.protocol_tx(kind, now_ms, batch) {
                // They wait for the next retirement (a bug, if it comes to that: the
                // ledger refuses only ids retired already or with an open escrow).
                tracing::error!(error = %e, "failed to retire the ids of archived leases");
                self.retiring = (std::iter::once(ranges).chain(txs).flatten())
                    .flat_map(|r| (r.first.0..=r.last.0).map(LeaseId))
                    .collect();
                return;
            }
        }
    }

    /// Where the indexer serves its decoy agent, for canary tasks.
    pub fn set_decoy_base(&mut self, base: String) {
        self.decoy_base = base;
    }

    pub fn checking(&self) -> &Checking {
        &self.checking
    }

    /// Moves the records the registry and the checkers changed into the batch.
    pub fn collect_dirty(&mut self, batch: &mut Batch) {
        batch.checkers.extend(self.checking.take_dirty());
        self.epoch.collect(batch);
        for dirty in self.registry.take_dirty() {
            match dirty {
                Dirty::Host(a) => batch.hosts.extend(self.registry.host(&a).cloned()),
                Dirty::Lease(id) => batch.leases.extend(self.registry.lease(id).cloned()),
                Dirty::Deployment(id) => batch
                    .deployments
                    .extend(self.registry.deployment(id).cloned()),
                Dirty::Session(id) => batch.sessions.extend(self.registry.session(id).cloned()),
            }
        }
    }

    pub fn info(&self) -> NetworkInfo {
        let genesis = self.ledger.genesis();
        let params = self.registry.params();
        NetworkInfo {
            chain_id: genesis.chain_id,
            local: genesis.local,
            protocol: genesis.protocol,
            treasury: genesis.treasury,
            fee_bps: genesis.fee_bps,
            heartbeat_interval_ms: params.heartbeat_interval_ms,
            settle_interval_ms: params.settle_interval_ms,
            hosts: self.registry.host_count() as u32,
            containers: self.registry.container_count() as u32,
            blocks: self.ledger.head().height,
            transactions: self.ledger.transaction_count(),
            staking_coefficient: genesis.economics.staking_coefficient,
            epoch_ms: genesis.economics.epoch_ms,
            next_epoch: self.ledger.totals().next_epoch,
            private_endpoints: genesis.local || genesis.checking.private_endpoints,
        }
    }

    /// The headline figures at `now_ms` (without the history, which the service keeps).
    pub fn stats(&self, now_ms: u64) -> gpumesh_types::NetworkStats {
        let registry = &self.registry;
        let ledger = &self.ledger;
        let mut by_state = std::collections::BTreeMap::new();
        let mut by_model = std::collections::BTreeMap::new();
        let containers = registry.containers();
        for c in &containers {
            *by_state
                .entry(crate::telemetry::wire_name(&c.state))
                .or_insert(0u32) += 1;
            *by_model.entry(c.gpu.to_string()).or_insert(0u32) += 1;
        }
        let busy = by_state.get("busy").copied().unwrap_or(0);
        let serving = busy + by_state.get("standby").copied().unwrap_or(0);
        let countries: HashSet<_> = containers.iter().map(|c| c.location.country).collect();
        let totals = ledger.totals();
        let activity = ledger.activity();
        let (delivered, fees) = (activity.delivered_gpu_ms, activity.fees.0);
        let age_ms = now_ms.saturating_sub(ledger.genesis().time_ms).max(1);
        let year_ms = gpumesh_ledger::YEAR_MS as u128;
        let hosts = registry.host_count() as u32;
        gpumesh_types::NetworkStats {
            time_ms: now_ms,
            hosts,
            hosts_online: hosts - registry.offline_hosts().count() as u32,
            countries: countries.len() as u32,
            containers: containers.len() as u32,
            containers_by_state: by_state,
            gpus_by_model: by_model,
            utilization_bps: (u64::from(busy) * 10_000)
                .checked_div(u64::from(serving))
                .unwrap_or(0) as u32,
            leases: registry.leases_made(),
            leases_live: registry.live_lease_count() as u64,
            delivered_gpu_ms: delivered,
            rewards_distributed: Amount(
                totals.provider_emitted.0 + totals.checker_emitted.0 + totals.bonus_emitted.0,
            ),
            blocks: ledger.head().height,
            transactions: ledger.transaction_count(),
            treasury_balance: ledger.balance(&ledger.genesis().treasury),
            fees_collected: Amount(fees),
            annualized_fee_revenue: Amount(fees.saturating_mul(year_ms) / age_ms as u128),
            checkers: self.checking.params().checkers.len() as u32,
            history: Vec::new(),
        }
    }

    pub fn chain_id(&self) -> u64 {
        self.ledger.genesis().chain_id
    }

    pub fn lease_view(&self, id: LeaseId) -> Result<LeaseView, Failure> {
        let slack = self.ledger.genesis().economics.usage_slack_ms;
        let ended = self.registry.lease(id).and_then(|l| l.ended_ms);
        let settlement = self.ledger.escrow(id).map(|e| {
            let mut view = e.view();
            view.bound_gpu_ms = ended.map(|at| e.billable_gpu_ms(at, slack));
            view
        });
        self.registry.view(id, settlement).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownLease,
                format!("lease {id} does not exist"),
            )
        })
    }

    /// Leases in memory in id order after `after`, of this buyer and host when given: up
    /// to `limit`. Archived leases are the store's to list
    /// (`gpumesh_store::Store::archived_leases`); the service merges the two.
    pub fn leases_page(
        &self,
        buyer: Option<Address>,
        host: Option<Address>,
        after: Option<LeaseId>,
        limit: usize,
    ) -> Vec<LeaseView> {
        self.registry
            .leases_after(buyer, host, after)
            .take(limit)
            .filter_map(|l| self.lease_view(l.id).ok())
            .collect()
    }

    pub fn account(&self, address: Address) -> AccountView {
        let a = self.ledger.account(&address);
        let mut stakes: Vec<gpumesh_types::StakeView> = self
            .ledger
            .stakes()
            .filter(|((host, _), _)| *host == address)
            .map(|((_, index), s)| gpumesh_types::StakeView {
                index,
                bonded: s.bonded,
                unbonding: s.unbonding,
                unbond_at_ms: s.unbond_at_ms,
            })
            .collect();
        stakes.sort_by_key(|s| s.index);
        AccountView {
            address,
            balance: a.balance,
            nonce: a.nonce,
            vesting: self.ledger.vesting_locked(&address),
            cumulative_rewards: self.ledger.cumulative_reward(&address),
            stakes,
        }
    }

    /// Log entries of a lease in memory from `from` on, and whether it has ended; `None`
    /// for a lease not in memory (archived, or unknown).
    pub fn logs(&self, id: LeaseId, from: u64) -> Option<(Vec<LogEntry>, bool)> {
        let lease = self.registry.lease(id)?;
        let entries = self
            .logs
            .get(&id)
            .map(|log| log.entries.iter().skip(from as usize).cloned().collect())
            .unwrap_or_default();
        Some((entries, lease.state.is_terminal()))
    }

    /// Checks that `signer` may read the lease's output: its buyer or its host. `None`
    /// for a lease not in memory.
    pub fn may_read_logs(&self, signer: &Address, id: LeaseId) -> Option<Result<(), Failure>> {
        let lease = self.registry.lease(id)?;
        Some(may_read(signer, id, lease.buyer, lease.host))
    }

    pub fn register_host(
        &mut self,
        signer: Address,
        request: RegisterHost,
        now_ms: u64,
        _batch: &mut Batch,
    ) -> Result<HostRegistered, Failure> {
        // A host that registers again (its agent restarted) keeps its live leases: the agent
        // adopts the workloads it finds still running and reports the end of those it
        // lost; a lease still starting is assigned again.
        let registered = self.registry.register_host(signer, request, now_ms)?;
        for index in 0..registered.containers as u16 {
            self.sync_stake(signer, index);
        }
        Ok(registered)
    }

    /// Leases to end whose escrows must be closed by the protocol; see [`Core::tick`].
    fn close_escrows(&mut self, effects: Vec<Effect>, now_ms: u64, batch: &mut Batch) {
        for effect in effects {
            match effect {
                Effect::CloseEscrow { lease, reason } => {
                    if self.ledger.escrow(lease).is_some_and(|e| !e.closed)
                        && let Err(e) =
                            self.protocol_tx(TxKind::CloseEscrow { lease, reason }, now_ms, batch)
                    {
                        tracing::error!(%lease, ?reason, error = %e, "failed to close an ended lease's escrow; reconciliation retries");
                        self.unclosed.insert(lease);
                    }
                }
                Effect::HostOffline { host, .. } => {
                    self.epoch.lost(host);
                    if let Closing::Assembling { lost } = &mut self.closing {
                        lost.insert(host);
                    }
                }
                Effect::FundReplica {
                    deployment,
                    owner,
                    lease,
                    host,
                    price_per_gpu_hour,
                    gpus,
                    max_duration_ms,
                    amount,
                } => {
                    let kind = TxKind::OpenEscrowFor {
                        buyer: owner,
                        deployment: deployment.0,
                        lease,
                        host,
                        price_per_gpu_hour,
                        gpus,
                        max_duration_ms,
                        amount,
                    };
                    match self.protocol_tx(kind, now_ms, batch) {
                        Ok(_) => {
                            if let Err(e) = self.registry.replica_funded(deployment, lease, now_ms)
                            {
                                tracing::error!(%lease, error = %e, "a funded replica could not start");
                            }
                        }
                        Err(e) => {
                            tracing::info!(%deployment, %lease, error = %e, "a replica could not be funded");
                            self.registry.replica_unfunded(
                                deployment,
                                lease,
                                &e.to_string(),
                                now_ms,
                            );
                        }
                    }
                }
                Effect::ExtendReplica {
                    deployment,
                    owner,
                    lease,
                    extra_ms,
                    amount,
                } => {
                    let kind = TxKind::ExtendEscrow {
                        buyer: owner,
                        deployment: deployment.0,
                        lease,
                        extra_ms,
                        amount,
                    };
                    match self.protocol_tx(kind, now_ms, batch) {
                        Ok(_) => self.registry.extended(lease, extra_ms, amount),
                        Err(e) => {
                            tracing::info!(%deployment, %lease, error = %e, "a replica's escrow could not be topped up");
                            self.registry
                                .underfunded(deployment, &e.to_string(), now_ms);
                        }
                    }
                }
                Effect::SlashDowntime {
                    host,
                    index,
                    model,
                    lease,
                    last_heartbeat_ms,
                } => {
                    // The evidence: which lease was being served, and when the host was last heard.
                    let evidence = alloy_primitives::keccak256(format!(
                        "downtime while serving: host {host} GPU {index} lease {lease} last heartbeat {last_heartbeat_ms} detected {now_ms}"
                    ));
                    let kind = TxKind::Slash {
                        host,
                        index,
                        k_centi: model.spec().k_factor,
                        offence: gpumesh_types::Offence::Downtime,
                        evidence,
                    };
                    if let Err(e) = self.protocol_tx(kind, now_ms, batch) {
                        tracing::error!(%host, index, error = %e, "failed to slash for downtime");
                    }
                }
            }
        }
    }

    /// Closes the epoch when its time is up, in the three steps of [`crate::closing`] run
    /// one after another: with [`Core::set_epoch_off_lock`] the tick only reads the inputs
    /// and leaves them for [`Core::take_epoch_inputs`], and the service assembles the close
    /// off the lock and brings it back to [`Core::close_epoch`].
    fn maybe_close_epoch(&mut self, now_ms: u64, batch: &mut Batch) {
        let Some(inputs) = self.epoch_inputs(now_ms) else {
            return;
        };
        if self.epoch_off_lock {
            self.epoch_ready = Some(inputs);
        } else {
            self.close_epoch(inputs.assemble(), now_ms, batch);
        }
    }

    /// Whether the epoch's close is assembled off the state lock: the tick leaves the
    /// inputs of a due close for [`Core::take_epoch_inputs`].
    pub fn set_epoch_off_lock(&mut self, off_lock: bool) {
        self.epoch_off_lock = off_lock;
    }

    /// The inputs of an epoch close a tick found due, for the caller to assemble
    /// ([`crate::closing::EpochInputs::assemble`]) and bring back to [`Core::close_epoch`]
    /// (or, if that fails, to [`Core::abandon_epoch_close`]): until then no other close
    /// is read.
    pub fn take_epoch_inputs(&mut self) -> Option<EpochInputs> {
        self.epoch_ready.take()
    }

    /// Step 1 of an epoch close ([`crate::closing`]): once the epoch's time is up and no
    /// close is being assembled, a copy of what the close reads. Capacity rewards go to
    /// verified, staked containers that checkers found live (or, without checkers, that
    /// stayed online), delivery by settled usage and tier, and checkers by credited tasks;
    /// what earns is decided by `gpumesh_checking::epoch`.
    fn epoch_inputs(&mut self, now_ms: u64) -> Option<EpochInputs> {
        let econ = &self.ledger.genesis().economics;
        let retry_at_ms = match self.closing {
            Closing::Idle { retry_at_ms } => retry_at_ms,
            Closing::Assembling { .. } => return None,
        };
        if now_ms < self.epoch.start.started_ms + econ.epoch_ms || now_ms < retry_at_ms {
            return None;
        }
        let epoch = self.ledger.totals().next_epoch;
        let quarter = |e: u64| (e * econ.epoch_ms) / econ.quarter_ms;
        let quarter_bonus = quarter(epoch + 1) > quarter(epoch);
        let work = &self.epoch;
        let containers: Vec<ContainerEpoch> = self
            .registry
            .epoch_facts()
            .into_iter()
            .map(|mut c| {
                let w = work
                    .containers
                    .get(&c.container)
                    .copied()
                    .unwrap_or_default();
                c.up = w.up;
                c.down = w.down;
                c.online &= !work.start.lost.contains(&c.container.host);
                c
            })
            .collect();
        let tiers = (work.containers.iter())
            .filter(|(_, w)| w.delivered_gpu_ms > 0 || w.paid.0 > 0 || w.fee.0 > 0)
            .map(|(c, _)| (c.host, self.registry.host(&c.host).map_or(3, |r| r.tier)))
            .collect();
        // Capacity is for hosts that stay online through an epoch: one offline as the
        // next one begins (here) has not.
        self.closing = Closing::Assembling {
            lost: self.registry.offline_hosts().collect(),
        };
        Some(EpochInputs {
            epoch,
            end_ms: now_ms,
            by_quorum: self.checking.enabled(),
            quarter_bonus,
            containers,
            work: work.containers.clone(),
            tiers,
            checkers: self.checking.epoch_counts(now_ms),
        })
    }

    /// Gives up the close being assembled (its assembly failed): nothing changed, and the
    /// epoch is read again later.
    pub fn abandon_epoch_close(&mut self, now_ms: u64) {
        self.closing = Closing::Idle {
            retry_at_ms: now_ms + self.epoch_retry_ms(),
        };
    }

    fn epoch_retry_ms(&self) -> u64 {
        EPOCH_RETRY_MS.min(self.ledger.genesis().economics.epoch_ms)
    }

    /// Step 3 of an epoch close ([`crate::closing`]): signs the assembled close at the
    /// protocol's current nonce and applies it; then what it counted leaves the epoch's
    /// work and the checkers' epoch counters, and the next epoch begins where it ended,
    /// with what arrived since. A refused close changes nothing but the time of the next
    /// try: nobody's work is lost.
    pub fn close_epoch(&mut self, prepared: PreparedEpoch, now_ms: u64, batch: &mut Batch) {
        let lost = match std::mem::replace(&mut self.closing, Closing::Idle { retry_at_ms: 0 }) {
            Closing::Assembling { lost } => lost,
            Closing::Idle { .. } => {
                tracing::error!(
                    epoch = prepared.epoch(),
                    "an epoch close came back that was not being assembled"
                );
                return;
            }
        };
        let epoch = prepared.epoch();
        if epoch != self.ledger.totals().next_epoch {
            tracing::error!(
                epoch,
                "an epoch close was assembled for an epoch already closed"
            );
            return;
        }
        let end_ms = prepared.end_ms();
        let PreparedEpoch {
            close,
            work,
            checkers,
        } = prepared;
        let from = self.protocol.address();
        let nonce = self.ledger.account(&from).nonce;
        let (stx, hash) = self.protocol.sign_epoch(close, self.chain_id(), nonce);
        let applied = Verified::check_signed_here(&stx, hash)
            .map_err(Failure::from)
            .and_then(|verified| self.apply_verified(verified, now_ms, batch));
        if let Err(e) = applied {
            tracing::error!(epoch, error = %e, "failed to close the epoch; it is tried again later");
            self.abandon_epoch_close(now_ms);
            return;
        }
        self.epoch = self.epoch.after_close(&work, end_ms);
        // Stored with the epoch, so a restart (which gives every host a fresh heartbeat
        // window) cannot make a lost host look online.
        for host in lost {
            self.epoch.lost(host);
        }
        self.checking.end_epoch(&checkers);
        tracing::info!(epoch, "closed the epoch");
    }

    /// Opens the checking period `now_ms` falls in, drawn from the ledger's head block,
    /// and decides the periods whose reports are all in.
    fn advance_checking(&mut self, now_ms: u64, batch: &mut Batch) {
        if !self.checking.enabled() {
            return;
        }
        let (period, _) = self.checking.period_at(now_ms);
        if self.checking.current_period() < Some(period) {
            let every = self.checking.params().capacity_every_ms;
            let targets = self.registry.check_targets(every, now_ms);
            let head = self.ledger.head();
            let (height, hash) = (head.height, head.hash());
            self.checking.begin_period(
                period,
                height,
                hash,
                targets,
                self.canary_seed,
                &self.decoy_base,
            );
        }
        for outcome in self.checking.close_due(now_ms) {
            self.apply_verdicts(outcome, now_ms, batch);
        }
    }

    /// What a period's quorum decided: capacity proofs pass or reject (and slash),
    /// liveness takes hosts offline or back, tiers follow.
    fn apply_verdicts(&mut self, outcome: PeriodOutcome, now_ms: u64, batch: &mut Batch) {
        let mut hosts_up: std::collections::BTreeMap<Address, bool> = Default::default();
        for v in &outcome.verdicts {
            match v.kind {
                gpumesh_types::TaskKind::Liveness => {
                    let counts = self.epoch.container(v.container);
                    if v.passed {
                        counts.up += 1;
                    } else {
                        counts.down += 1;
                    }
                    *hosts_up.entry(v.container.host).or_insert(true) &= v.passed;
                }
                // After the hosts' liveness (below): a lost host's leases end as lost.
                gpumesh_types::TaskKind::Delivery => {}
                gpumesh_types::TaskKind::Capacity => {
                    let Some(gpu) = self
                        .registry
                        .host(&v.container.host)
                        .and_then(|h| h.gpus.get(v.container.index as usize).cloned())
                    else {
                        continue;
                    };
                    let expected = self
                        .checking
                        .params()
                        .proof_for(gpu.model, gpu.simulated)
                        .map_or(u64::MAX, |p| p.expected_ms);
                    let verdict = if v.passed {
                        Ok(v.host_ms.unwrap_or(0))
                    } else {
                        Err(v.reason.unwrap_or(gpumesh_types::FailReason::BadOpening))
                    };
                    match self
                        .registry
                        .capacity_verdict(v.container, verdict, expected, now_ms)
                    {
                        Ok(CapacityDecision::Down(reason)) => {
                            // No proof was made: asked again next period. Whether the
                            // host is there is for its liveness checks to say (a signed
                            // refusal shows it is).
                            tracing::warn!(container = %v.container, reason = reason.describe(), "capacity proof not made: proven again next period");
                        }
                        Ok(CapacityDecision::Retry(reason)) => {
                            tracing::warn!(container = %v.container, reason = reason.describe(), "capacity proof failed once: proven again next period");
                        }
                        Ok(CapacityDecision::Rejected {
                            model,
                            reason,
                            offence,
                        }) => {
                            tracing::warn!(container = %v.container, reason = reason.describe(), "capacity proof rejected by quorum");
                            self.slash_rejected(v, model, reason, offence, now_ms, batch);
                        }
                        Ok(CapacityDecision::Passed | CapacityDecision::Unchanged) => {}
                        Err(e) => {
                            tracing::warn!(container = %v.container, error = %e, "capacity verdict on an unknown container")
                        }
                    }
                }
            }
        }
        for (host, up) in hosts_up {
            let effects = self.registry.liveness_verdict(&host, up, now_ms);
            if !up && !effects.is_empty() {
                tracing::warn!(%host, "a quorum of checkers found the host down");
            }
            self.close_escrows(effects, now_ms, batch);
            if let Some(r) = self.registry.host(&host) {
                let tier = gpumesh_checking::tier(r.up_verdicts, r.down_verdicts, r.proof_ok);
                self.registry.set_tier(&host, tier);
            }
        }
        // Delivery: a lease whose host the same quorum found down has ended as the host's
        // (downtime while serving); what is left are leases of live hosts.
        for v in outcome
            .verdicts
            .iter()
            .filter(|v| v.kind == gpumesh_types::TaskKind::Delivery)
        {
            let Some(lease) = v.lease else { continue };
            let seen = if v.passed {
                gpumesh_registry::DeliverySeen::Passed
            } else {
                gpumesh_registry::DeliverySeen::Failed(
                    v.reason.unwrap_or(gpumesh_types::FailReason::NotDelivered),
                )
            };
            let effects = self
                .registry
                .delivery_seen(lease, seen, v.period_start_ms, now_ms);
            if !effects.is_empty() {
                tracing::warn!(%lease, container = %v.container, "a quorum of checkers found the lease not delivered; ended it");
            }
            self.close_escrows(effects, now_ms, batch);
            if let Some(r) = self.registry.host(&v.container.host) {
                let tier = gpumesh_checking::tier(r.up_verdicts, r.down_verdicts, r.proof_ok);
                self.registry.set_tier(&v.container.host, tier);
            }
        }
        for &(lease, period_start_ms) in &outcome.delivery_unknown {
            self.registry.delivery_seen(
                lease,
                gpumesh_registry::DeliverySeen::Unknown,
                period_start_ms,
                now_ms,
            );
        }
        if !outcome.banned.is_empty() {
            tracing::warn!(banned = ?outcome.banned, period = outcome.period, "checkers banned");
        }
    }

    /// A container rejected by its capacity proofs claimed more than it has: two missed
    /// deadlines or failed openings are underperformance, a wrong row or path is
    /// malicious; both take K × the staking coefficient, with the verdict as evidence.
    fn slash_rejected(
        &mut self,
        v: &gpumesh_checking::Verdict,
        model: gpumesh_types::GpuModel,
        reason: gpumesh_types::FailReason,
        offence: gpumesh_types::Offence,
        now_ms: u64,
        batch: &mut Batch,
    ) {
        if self
            .ledger
            .stake(&v.container.host, v.container.index)
            .bonded
            .0
            == 0
        {
            return;
        }
        let evidence = alloy_primitives::keccak256(format!(
            "capacity proof rejected by quorum: container {} reason {:?} checkers {:?} at {now_ms}",
            v.container, reason, v.agreeing
        ));
        let kind = TxKind::Slash {
            host: v.container.host,
            index: v.container.index,
            k_centi: model.spec().k_factor,
            offence,
            evidence,
        };
        if let Err(e) = self.protocol_tx(kind, now_ms, batch) {
            tracing::error!(container = %v.container, error = %e, "failed to slash a rejected container");
        }
    }

    /// A checker's tasks now.
    pub fn checker_tasks(
        &self,
        checker: Address,
        now_ms: u64,
    ) -> Result<gpumesh_types::CheckerTasksView, Failure> {
        let record = self.checking.checker(&checker).ok_or_else(|| {
            Failure::new(
                ErrorCode::NotAChecker,
                format!("{checker} holds no checker licence"),
            )
        })?;
        let params = self.checking.params();
        let (period, start, tasks) = self.checking.tasks(&checker, now_ms).unwrap_or_else(|| {
            let (p, s) = self.checking.period_at(now_ms);
            (p, s, Vec::new())
        });
        Ok(gpumesh_types::CheckerTasksView {
            checker,
            period,
            period_start_ms: start,
            period_end_ms: start + params.period_ms,
            takeover_at_ms: start + params.takeover_ms,
            report_by_ms: start + params.period_ms + params.report_grace_ms,
            proofs_by_ms: start
                + params.period_ms
                + params.report_grace_ms
                + params.proof_window_ms,
            banned: record.banned(now_ms),
            tasks,
        })
    }

    /// A checker's signed report. Round trips it measured refine the network coordinates.
    pub fn report(
        &mut self,
        checker: Address,
        report: gpumesh_types::CheckReport,
        now_ms: u64,
    ) -> Result<gpumesh_types::ReportAccepted, Failure> {
        if let Some(point) = report.location {
            point.validate().map_err(|e| {
                Failure::new(ErrorCode::InvalidLocation, format!("checker location: {e}"))
            })?;
        }
        let accepted = self
            .checking
            .report(checker, &report, now_ms)
            .map_err(|e| Failure::new(e.code(), e.to_string()))?;
        if let Some(point) = report.location {
            // One measuring point per checker, where it first said it was: anchors are
            // never removed, so a checker that moves is not given more.
            let anchor = match self.checker_anchors.get(&checker) {
                Some(&id) => Some(id),
                None => self.registry.add_anchor(point).ok(),
            };
            if let Some(id) = anchor {
                self.checker_anchors.insert(checker, id);
                // Only the agent's own round trip places the host: a service's endpoint
                // is whatever address the host reported, which could be anywhere.
                let liveness = report
                    .results
                    .iter()
                    .filter(|r| r.kind == gpumesh_types::TaskKind::Liveness);
                for r in liveness {
                    if let gpumesh_types::CheckOutcome::Up { rtt_us } = r.outcome {
                        let rtt_ms = (rtt_us.max(1) as f64) / 1000.0;
                        let _ = self
                            .registry
                            .checker_measurement(r.container.host, id, rtt_ms);
                    }
                }
            }
        }
        Ok(gpumesh_types::ReportAccepted {
            period: report.period,
            accepted,
        })
    }

    pub fn heartbeat(
        &mut self,
        signer: Address,
        beat: Heartbeat,
        now_ms: u64,
    ) -> Result<(), Failure> {
        Ok(self.registry.heartbeat(signer, beat, now_ms)?)
    }

    pub fn observe(
        &mut self,
        reporter: Address,
        observation: gpumesh_types::Observation,
    ) -> Result<(), Failure> {
        Ok(self.registry.host_observation(reporter, &observation)?)
    }

    pub fn add_anchor(&mut self, point: gpumesh_types::GeoPoint) -> Result<u32, Failure> {
        if !self.ledger.genesis().local {
            return Err(Failure::new(
                ErrorCode::NotLocalNetwork,
                "anchors are added by hand only on a local network",
            ));
        }
        Ok(self.registry.add_anchor(point)?)
    }

    pub fn work(&self, host: &Address) -> Result<HostWork, Failure> {
        Ok(self.registry.work(host)?)
    }

    pub fn submit_job(
        &mut self,
        buyer: Address,
        job: JobRequest,
        now_ms: u64,
    ) -> Result<LeaseView, Failure> {
        let spendable = self.ledger.balance(&buyer);
        let id = self
            .registry
            .submit_job_within(buyer, job, Some(spendable), now_ms)?
            .id;
        self.lease_view(id)
    }

    pub fn cancel(
        &mut self,
        buyer: Address,
        id: LeaseId,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<LeaseView, Failure> {
        let (_, effects) = self.registry.cancel(&buyer, id, now_ms)?;
        self.close_escrows(effects, now_ms, batch);
        self.lease_view(id)
    }

    /// The host reports that the workload started. The first report of a funded lease
    /// is recorded in the ledger (`StartLease`, signed by the protocol): its time, the
    /// indexer's, is where billable time begins.
    pub fn started(
        &mut self,
        host: Address,
        id: LeaseId,
        report: gpumesh_types::LeaseStarted,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<LeaseView, Failure> {
        let starting = self
            .registry
            .lease(id)
            .is_some_and(|l| l.host == host && l.state == LeaseState::Starting);
        if starting
            && self
                .ledger
                .escrow(id)
                .is_none_or(|e| e.closed || e.started_ms.is_some())
        {
            return Err(Failure::new(
                ErrorCode::InvalidLeaseState,
                format!("lease {id}'s escrow is not open and unstarted; it cannot start"),
            ));
        }
        // Everything the ledger checks was checked above (an open escrow with no start),
        // so the start cannot be refused once the registry has moved; were it to be, the
        // host could bill nothing, the safe side.
        if self.registry.started(&host, id, report, now_ms)?
            && let Err(e) = self.protocol_tx(TxKind::StartLease { lease: id }, now_ms, batch)
        {
            tracing::error!(lease = %id, error = %e, "failed to record a lease's start in the ledger");
        }
        self.lease_view(id)
    }

    pub fn create_deployment(
        &mut self,
        owner: Address,
        request: gpumesh_types::DeploymentRequest,
        now_ms: u64,
    ) -> Result<gpumesh_types::DeploymentView, Failure> {
        let id = self.registry.create_deployment(owner, request, now_ms)?;
        self.deployment_view(id)
    }

    pub fn deployment_view(
        &self,
        id: gpumesh_types::DeploymentId,
    ) -> Result<gpumesh_types::DeploymentView, Failure> {
        self.registry.deployment_view(id).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownDeployment,
                format!("deployment {id} does not exist"),
            )
        })
    }

    /// Deployments, of one owner when given, in id order.
    pub fn deployments(&self, owner: Option<Address>) -> Vec<gpumesh_types::DeploymentView> {
        self.registry
            .deployments()
            .filter(|d| owner.is_none_or(|o| o == d.owner))
            .take(gpumesh_types::MAX_PAGE)
            .filter_map(|d| self.registry.deployment_view(d.id))
            .collect()
    }

    pub fn scale_deployment(
        &mut self,
        owner: Address,
        id: gpumesh_types::DeploymentId,
        scale: gpumesh_types::ScaleRequest,
    ) -> Result<gpumesh_types::DeploymentView, Failure> {
        self.registry.scale_deployment(&owner, id, &scale)?;
        self.deployment_view(id)
    }

    pub fn stop_deployment(
        &mut self,
        owner: Address,
        id: gpumesh_types::DeploymentId,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<gpumesh_types::DeploymentView, Failure> {
        let effects = self.registry.stop_deployment(&owner, id, now_ms)?;
        self.close_escrows(effects, now_ms, batch);
        self.deployment_view(id)
    }

    pub fn request_session(
        &mut self,
        owner: Address,
        request: gpumesh_types::SessionRequest,
        now_ms: u64,
    ) -> Result<gpumesh_types::SessionView, Failure> {
        let id = self.registry.request_session(&owner, &request, now_ms)?;
        self.session_view(id)
    }

    pub fn end_session(
        &mut self,
        owner: Address,
        id: gpumesh_types::SessionId,
        now_ms: u64,
    ) -> Result<gpumesh_types::SessionView, Failure> {
        self.registry.end_session(&owner, id, now_ms)?;
        self.session_view(id)
    }

    pub fn session_view(
        &self,
        id: gpumesh_types::SessionId,
    ) -> Result<gpumesh_types::SessionView, Failure> {
        self.registry.session_view(id).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownSession,
                format!("session {id} does not exist"),
            )
        })
    }

    /// The host reports a change of a running service's health.
    pub fn health_report(
        &mut self,
        host: Address,
        id: LeaseId,
        report: gpumesh_types::HealthReport,
    ) -> Result<LeaseView, Failure> {
        self.registry
            .health_report(&host, id, report.healthy, report.detail)?;
        self.lease_view(id)
    }

    pub fn append_logs(
        &mut self,
        host: Address,
        id: LeaseId,
        append: LogAppend,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<u64, Failure> {
        let lease = self.registry.lease(id).ok_or_else(|| {
            Failure::new(
                ErrorCode::UnknownLease,
                format!("lease {id} does not exist"),
            )
        })?;
        if lease.host != host {
            return Err(Failure::new(
                ErrorCode::NotYourLease,
                format!("lease {id} is not held by {host}"),
            ));
        }
        if !matches!(lease.state, LeaseState::Starting | LeaseState::Running) {
            return Err(Failure::new(
                ErrorCode::InvalidLeaseState,
                format!("lease {id} is {:?}; its output is closed", lease.state),
            ));
        }
        let log = self.logs.entry(id).or_default();
        for chunk in append.chunks {
            if log.truncated {
                break;
            }
            let (stream, data) = if log.bytes + chunk.data.len() > MAX_LOG_BYTES_PER_LEASE {
                log.truncated = true;
                (
                    LogStream::System,
                    format!("[output truncated at {MAX_LOG_BYTES_PER_LEASE} bytes]\n"),
                )
            } else {
                (chunk.stream, chunk.data)
            };
            log.bytes += data.len();
            let entry = LogEntry {
                seq: log.entries.len() as u64,
                at_ms: now_ms,
                stream,
                data,
            };
            batch.logs.push((id, entry.clone()));
            log.entries.push(entry);
        }
        Ok(log.entries.len() as u64)
    }

    /// The host reports the end of a lease with its final usage record.
    pub fn finish(
        &mut self,
        host: Address,
        id: LeaseId,
        finish: LeaseFinish,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<LeaseView, Failure> {
        self.registry.check_finish(&host, id)?;
        let usage = &finish.usage;
        // A final record for this lease, and no final record for any other: those end
        // through their own finish.
        let only_this_final = match &usage.tx.kind {
            TxKind::SettleUsage { records } => {
                records.iter().any(|r| r.lease == id && r.is_final)
                    && records.iter().all(|r| !r.is_final || r.lease == id)
            }
            _ => false,
        };
        if usage.tx.from != host || !only_this_final {
            return Err(Failure::new(
                ErrorCode::InvalidTransaction,
                format!(
                    "finishing lease {id} needs a SettleUsage transaction from its host with a final record for it and for no other lease"
                ),
            ));
        }
        self.apply_tx(usage, now_ms, batch)?;
        self.registry
            .finished(&host, id, finish.exit_code, finish.error, now_ms)
            .expect("checked before the ledger changed");
        self.lease_view(id)
    }

    /// A transaction submitted through the API.
    pub fn submit_tx(
        &mut self,
        checked: CheckedTx,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<TxAccepted, Failure> {
        let stx = checked.tx();
        let lease = match &stx.tx.kind {
            TxKind::OpenEscrow { .. } => Some(self.registry.check_escrow(
                stx.tx.from,
                &stx.tx.kind,
                now_ms,
            )?),
            TxKind::CloseEscrow { .. }
            | TxKind::Epoch(_)
            | TxKind::Slash { .. }
            | TxKind::OpenEscrowFor { .. }
            | TxKind::StartLease { .. }
            | TxKind::RetireLeases { .. }
            | TxKind::ExtendEscrow { .. } => {
                return Err(Failure::new(
                    ErrorCode::InvalidTransaction,
                    "escrow closes and starts, replica escrows, retired leases, epochs and slashes are the protocol's, not submitted through the API",
                ));
            }
            TxKind::SettleUsage { records } if records.iter().any(|r| r.is_final) => {
                return Err(Failure::new(
                    ErrorCode::InvalidTransaction,
                    "a final usage record ends its lease: the host sends it with the lease's finish (POST /v1/leases/{id}/finish), not through the ledger route",
                ));
            }
            TxKind::SettleUsage { records } => {
                // Usage is charged only for a workload that started: a lease that never
                // ran is refunded in full when it ends.
                if let Some(r) = records.iter().find(|r| {
                    self.registry
                        .lease(r.lease)
                        .is_none_or(|l| l.state != LeaseState::Running)
                }) {
                    return Err(Failure::new(
                        ErrorCode::InvalidLeaseState,
                        format!(
                            "lease {} is not running; usage is settled only for running leases",
                            r.lease
                        ),
                    ));
                }
                None
            }
            TxKind::Transfer { .. }
            | TxKind::Stake { .. }
            | TxKind::StakeMany { .. }
            | TxKind::Unstake { .. }
            | TxKind::Withdraw { .. }
            | TxKind::Allow { .. } => None,
        };
        let applied = self.apply_verified(checked.verified(), now_ms, batch)?;
        if let Some(lease) = lease {
            self.registry
                .escrow_opened(lease, now_ms)
                .expect("checked before the ledger changed");
        }
        Ok(TxAccepted {
            hash: applied.hash,
            seq: applied.entry.seq,
        })
    }

    /// Pays `amount` from the local network's faucet to `to`.
    pub fn faucet(
        &mut self,
        to: Address,
        amount: Amount,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<TxAccepted, Failure> {
        let Some(faucet) = self.faucet.clone() else {
            return Err(Failure::new(
                ErrorCode::NotLocalNetwork,
                "this network has no faucet; it is not a local network",
            ));
        };
        if amount == Amount::ZERO || amount > Amount::from_tokens(FAUCET_LIMIT_TOKENS) {
            return Err(Failure::new(
                ErrorCode::InvalidPrice,
                format!(
                    "a faucet request must be more than 0 and at most {FAUCET_LIMIT_TOKENS} tokens"
                ),
            ));
        }
        let nonce = self.ledger.account(&faucet.address()).nonce;
        let stx = faucet.sign_tx(Tx {
            chain_id: self.chain_id(),
            from: faucet.address(),
            nonce,
            kind: TxKind::Transfer { to, amount },
        });
        let applied = self.apply_tx(&stx, now_ms, batch)?;
        Ok(TxAccepted {
            hash: applied.hash,
            seq: applied.entry.seq,
        })
    }

    fn apply_tx(
        &mut self,
        stx: &SignedTx,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<Applied, Failure> {
        self.apply_verified(Verified::check(stx)?, now_ms, batch)
    }

    /// Applies a transaction whose signature was checked (before the state was locked).
    fn apply_verified(
        &mut self,
        verified: Verified<'_>,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<Applied, Failure> {
        let stx = verified.tx();
        if let TxKind::SettleUsage { records } = &stx.tx.kind {
            // The time observed first (the ledger's own rule, checked again when it
            // applies), then what checkers saw delivered.
            self.ledger.check_observed_usage(records, now_ms)?;
            let slack = self.ledger.genesis().economics.usage_slack_ms;
            self.registry
                .check_delivered_usage(records, now_ms, slack)?;
        }
        // Usage settled before this transaction (and what it cost, and the treasury's
        // fee), for this epoch's delivery.
        let settled = |ledger: &Ledger, lease: LeaseId| {
            ledger
                .escrow(lease)
                .map_or_else(Default::default, |e| epoch::Delivered {
                    gpu_ms: e.gpu_ms,
                    paid: e.charged,
                    fee: e.treasury_share,
                })
        };
        let before: Vec<(LeaseId, epoch::Delivered)> = match &stx.tx.kind {
            TxKind::SettleUsage { records } => records
                .iter()
                .map(|r| (r.lease, settled(&self.ledger, r.lease)))
                .collect(),
            _ => Vec::new(),
        };
        let applied = self.ledger.apply_verified(verified, now_ms)?;
        batch.txs.push(applied.entry.clone());
        match &stx.tx.kind {
            TxKind::SettleUsage { .. } => {
                for (lease, old) in before {
                    let delta = settled(&self.ledger, lease).since(old);
                    if let Some(l) = self.registry.lease(lease) {
                        for (index, part) in epoch::split_delivery(delta, &l.gpu_indices) {
                            let c = gpumesh_types::ContainerRef {
                                host: l.host,
                                index,
                            };
                            let w = self.epoch.container(c);
                            w.delivered_gpu_ms += part.gpu_ms;
                            w.paid.0 += part.paid.0;
                            w.fee.0 += part.fee.0;
                        }
                    }
                }
            }
            TxKind::Stake { index, .. }
            | TxKind::Unstake { index }
            | TxKind::Withdraw { index } => {
                self.sync_stake(stx.tx.from, *index);
            }
            TxKind::StakeMany { stakes } => {
                for &(index, _) in stakes {
                    self.sync_stake(stx.tx.from, index);
                }
            }
            TxKind::Slash { host, index, .. } => self.sync_stake(*host, *index),
            // Stored with the epoch's transaction, so that proofs need no replay.
            TxKind::Epoch(close) => batch.rewards.push(gpumesh_store::EpochRewards::of(
                &mut self.ledger,
                close.epoch,
            )),
            _ => {}
        }
        Ok(applied)
    }

    fn protocol_tx(
        &mut self,
        kind: TxKind,
        now_ms: u64,
        batch: &mut Batch,
    ) -> Result<Applied, Failure> {
        let from = self.protocol.address();
        let nonce = self.ledger.account(&from).nonce;
        let (stx, hash) = self.protocol.sign_tx_hashed(Tx {
            chain_id: self.chain_id(),
            from,
            nonce,
            kind,
        });
        // Hashed once: an epoch close's hash is the longest part of its close.
        self.apply_verified(Verified::check_signed_here(&stx, hash)?, now_ms, batch)
    }

    /// Compares leases with their escrows and repairs where they disagree, so that the
    /// registry and the ledger always tell one story: a live funded lease whose escrow is
    /// closed or missing ends `failed`; an ended (or unfunded, or unknown) lease whose
    /// escrow is still open has it closed and refunded by the protocol. Returns what it
    /// found, one line each. The first call (at start) compares every lease and escrow;
    /// later ones (on a timer) the live leases and the escrows whose close failed, so
    /// their cost follows what is live, not the network's history.
    pub fn reconcile(&mut self, now_ms: u64, batch: &mut Batch) -> Vec<String> {
        let full = !std::mem::replace(&mut self.reconciled_once, true);
        let mut found = Vec::new();
        let mut unbacked = Vec::new();
        let mut to_close = Vec::new();
        let retry: Vec<LeaseId> = std::mem::take(&mut self.unclosed).into_iter().collect();
        let leases: Vec<&gpumesh_registry::LeaseRecord> = if full {
            self.registry.leases().collect()
        } else {
            self.registry
                .live_leases()
                .chain(retry.iter().filter_map(|&id| self.registry.lease(id)))
                .collect()
        };
        for lease in leases {
            let escrow = self.ledger.escrow(lease.id);
            let open = escrow.is_some_and(|e| !e.closed);
            match lease.state {
                LeaseState::Starting | LeaseState::Running if !open => {
                    unbacked.push(lease.id);
                    found.push(format!(
                        "lease {} is {:?} but its escrow is {}; ended it as failed",
                        lease.id,
                        lease.state,
                        if escrow.is_some() {
                            "closed"
                        } else {
                            "missing"
                        }
                    ));
                }
                LeaseState::Matched if open => {
                    unbacked.push(lease.id);
                    to_close.push(lease.id);
                    found.push(format!(
                        "lease {} is matched, yet its escrow is open; ended it as failed and refunded the escrow",
                        lease.id
                    ));
                }
                state if state.is_terminal() && open => {
                    to_close.push(lease.id);
                    found.push(format!(
                        "lease {} is {state:?} but its escrow was open; closed and refunded it",
                        lease.id
                    ));
                }
                _ => {}
            }
        }
        let unknown = self.ledger.escrows().filter(|_| full).chain(
            retry
                .iter()
                .filter_map(|&id| Some((id, self.ledger.escrow(id)?))),
        );
        for (id, escrow) in unknown {
            if !escrow.closed && self.registry.lease(id).is_none() {
                to_close.push(id);
                found.push(format!(
                    "escrow {id} is open for a lease the registry never had; refunded it"
                ));
            }
        }
        let why = "the registry and the ledger disagreed about this lease; reconciliation ended it";
        for id in unbacked {
            self.registry.end_unbacked(id, why, now_ms);
        }
        let effects = to_close
            .into_iter()
            .map(|lease| Effect::CloseEscrow {
                lease,
                reason: gpumesh_types::CloseReason::Reconciled,
            })
            .collect();
        self.close_escrows(effects, now_ms, batch);
        if full {
            self.retire_stale(now_ms, batch);
        }
        for line in &found {
            tracing::warn!(repair = %line, "reconciliation");
        }
        found
    }

    /// The ids of leases no longer in memory that are not retired yet and whose escrow,
    /// if any, is closed.
    fn stale_ids(&self) -> Vec<LeaseId> {
        let until = self.registry.leases_made() + 1;
        (self.ledger.retired().gaps(1, until).iter())
            .flat_map(|r| (r.first.0..=r.last.0).map(LeaseId))
            .filter(|&id| {
                self.registry.lease(id).is_none() && self.ledger.escrow(id).is_none_or(|e| e.closed)
            })
            .collect()
    }

    /// Retires the ids of leases no longer in memory that are not retired yet: those
    /// archived before a crash or stop let them retire, those a store of layout 5 archived
    /// before archiving retired ids (their closed escrows were left in the ledger), and
    /// ids given to no stored lease. It walks the gaps between retired ranges, which after
    /// the first start are the leases in memory.
    fn retire_stale(&mut self, now_ms: u64, batch: &mut Batch) {
        let stale = self.stale_ids();
        if stale.is_empty() {
            return;
        }
        tracing::info!(
            leases = stale.len(),
            "retiring the ids of leases archived before a start"
        );
        // Every id waiting is among them.
        self.retiring = stale;
        self.retire_archived(now_ms, batch, true);
    }

    /// Time passes: lost hosts go offline and their leases fail with a refund; unfunded
    /// matches expire.
    pub fn tick(&mut self, now_ms: u64, batch: &mut Batch) {
        let effects = self.registry.tick(now_ms);
        self.close_escrows(effects, now_ms, batch);
        let ledger = &self.ledger;
        let spendable = |owner: Address, d: gpumesh_types::DeploymentId| {
            ledger.allowance(&owner, d.0).min(ledger.balance(&owner))
        };
        let effects = self.registry.deployments_tick(now_ms, &spendable);
        self.close_escrows(effects, now_ms, batch);
        self.advance_checking(now_ms, batch);
        self.maybe_close_epoch(now_ms, batch);
        self.archive_ended(now_ms, batch);
        self.retire_archived(now_ms, batch, false);
    }

    /// Seals the transactions since the last block into a new block.
    pub fn seal(&mut self, now_ms: u64, batch: &mut Batch) {
        if let Some((header, _)) = self.ledger.seal(now_ms) {
            batch.blocks.push(header);
            let count = self.ledger.transaction_count();
            if count - self.snapshot_seq >= self.snapshot_every {
                batch.snapshot = self.ledger.snapshot();
                self.snapshot_seq = count;
            }
        }
    }
}

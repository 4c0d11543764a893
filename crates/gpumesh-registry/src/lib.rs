//! The registry: hosts and their containers, and every lease from match to end.
//!
//! A deterministic state machine (docs/protocol.md) that the indexer drives under one lock and
//! the simulator can drive directly: every operation takes the current time as an
//! argument, changes nothing when it fails, and records which hosts and leases it changed
//! ([`Registry::take_dirty`]) so the caller can persist exactly those. Work that needs the
//! ledger (closing an escrow when a host is lost) comes back as [`Effect`]s.
//!
//! On a network with checkers a new container is `checking` until a quorum of checkers
//! passes its capacity proof, and quorum liveness verdicts take the host offline and
//! back; the heartbeat timer stays as a slower fallback. Without checkers, containers
//! serve once staked and the heartbeat timer alone decides liveness.

pub mod autoscale;
mod deploy;
mod lease;
mod validate;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use gpumesh_matcher::{GroupId, GroupSpec, HostSpec, Matcher, Request, ReservationId};
use gpumesh_types::{
    Address, Amount, Assignment, ContainerState, ContainerView, ErrorCode, GpuModel, Heartbeat,
    HostRegistered, HostWork, LeaseId, LeaseState, Location, RegisterHost, RuntimeKind,
};
use serde::{Deserialize, Serialize};

pub use deploy::{DeploymentRecord, MAX_QUEUE_MS, RegionState, Replica, SessionRecord};
pub use lease::{DeliverySeen, LeaseRecord};
pub use validate::{
    MAX_GPUS_PER_MODEL, MAX_HEALTH_DETAIL, MAX_HOST_TEXT, MAX_PRICE_TOKENS, challenge_url,
};

/// Protocol parameters the registry enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// A local network accepts simulated GPUs.
    pub local: bool,
    pub heartbeat_interval_ms: u64,
    /// Heartbeats a host may miss before it is offline (docs/protocol.md: 3).
    pub missed_heartbeats: u32,
    /// How long a match holds capacity while the buyer funds the escrow.
    pub match_ttl_ms: u64,
    pub max_lease_duration_ms: u64,
    /// How often hosts must settle usage of running leases ("at least every minute").
    pub settle_interval_ms: u64,
    /// Containers serve only once their stake is in place (docs/ledger.md).
    #[serde(default)]
    pub require_stake: bool,
    /// The network has checkers: containers serve only once their capacity proof passed,
    /// and liveness verdicts, not the heartbeat timer, take hosts offline (the timer
    /// waits `FALLBACK_FACTOR` times longer).
    #[serde(default)]
    pub checked: bool,
    /// How long a funded lease waits for its host to start the workload (an image pull
    /// included) before it fails and its escrow is refunded.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// How long a host has, after a lease's maximum duration or its cancellation, to
    /// report the end; past it the protocol ends the lease and closes its escrow.
    #[serde(default = "default_end_grace_ms")]
    pub end_grace_ms: u64,
    /// Matches one buyer may hold unfunded at once: each holds GPUs for the match's
    /// time-to-live without paying, so one buyer must not be able to hold them all.
    #[serde(default = "default_max_unfunded_matches")]
    pub max_unfunded_matches: u32,
    /// On a checked network: how far past a lease's last passed delivery check (or its
    /// start) its usage may be billed. Checks come once a period and are decided after
    /// its end and grace, so an honest host is never held back: two periods and two
    /// graces. Derived from the checking parameters when the indexer starts, never
    /// stored.
    #[serde(skip)]
    pub delivery_window_ms: u64,
    /// On a checked network: the models a real (unsimulated) GPU may be, those the
    /// genesis gives a reference proof rate (no other can be proven). Derived from the
    /// checking parameters when the indexer starts, never stored.
    #[serde(skip)]
    pub provable_models: Vec<GpuModel>,
    /// Checkers may be sent to private addresses (the genesis's `private_endpoints`), so
    /// challenge URLs may name them. Derived when the indexer starts, never stored.
    #[serde(skip)]
    pub private_endpoints: bool,
}

fn default_max_unfunded_matches() -> u32 {
    Params::network().max_unfunded_matches
}

fn default_start_timeout_ms() -> u64 {
    Params::network().start_timeout_ms
}

fn default_end_grace_ms() -> u64 {
    Params::network().end_grace_ms
}

/// Liveness verdicts kept per host for its tier: both counts are halved past this many.
pub const QUALITY_WINDOW: u32 = 200;

/// With checkers, the heartbeat timer marks a host offline only after this many times
/// its usual window, as a fallback when no verdict comes.
pub const FALLBACK_FACTOR: u64 = 5;

impl Params {
    /// The public network's defaults (docs/protocol.md).
    pub fn network() -> Params {
        Params {
            local: false,
            heartbeat_interval_ms: 60_000,
            missed_heartbeats: 3,
            match_ttl_ms: 30_000,
            max_lease_duration_ms: 7 * 24 * 3_600_000,
            settle_interval_ms: 30_000,
            require_stake: true,
            checked: false,
            start_timeout_ms: 15 * 60_000,
            end_grace_ms: 2 * 60_000,
            max_unfunded_matches: 16,
            delivery_window_ms: 0,
            provable_models: Vec::new(),
            private_endpoints: false,
        }
    }

    /// A local network: simulated GPUs allowed, and faster clocks so that a lost host is
    /// noticed in seconds rather than minutes.
    pub fn local() -> Params {
        Params {
            local: true,
            heartbeat_interval_ms: 1_000,
            settle_interval_ms: 5_000,
            start_timeout_ms: 60_000,
            end_grace_ms: 15_000,
            ..Params::network()
        }
    }

    /// The latest a lease can still be live, counted from its match: every lease is
    /// terminal by then, whatever order its events arrive in (docs/reliability.md). The
    /// indexer's tick, which runs every 250 ms, adds at most that.
    pub fn lease_bound_ms(&self, max_duration_ms: u64) -> u64 {
        self.match_ttl_ms + self.start_timeout_ms + max_duration_ms + self.end_grace_ms
    }

    fn offline_after_ms(&self) -> u64 {
        let window = self.heartbeat_interval_ms * self.missed_heartbeats as u64;
        if self.checked {
            window * FALLBACK_FACTOR
        } else {
            window
        }
    }
}

/// One GPU as registered.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRecord {
    pub model: GpuModel,
    pub vram_mib: u32,
    pub simulated: bool,
}

/// A host as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HostRecord {
    pub address: Address,
    pub name: String,
    pub location: Location,
    pub price_per_gpu_hour: Amount,
    pub runtime: RuntimeKind,
    pub images: Vec<String>,
    /// Index i is the host's GPU i, a container of the network.
    pub gpus: Vec<GpuRecord>,
    pub registered_ms: u64,
    /// Service tier from checkers' quality scores: 1 (best) to 3. New hosts start at 2.
    #[serde(default = "default_tier")]
    pub tier: u8,
    /// Where checkers reach the agent's challenge endpoint.
    #[serde(default)]
    pub challenge_url: Option<String>,
    /// Per GPU: its capacity proof's standing.
    #[serde(default)]
    pub capacity: Vec<Capacity>,
    /// Liveness verdicts for the tier (halved past the window).
    #[serde(default)]
    pub up_verdicts: u32,
    #[serde(default)]
    pub down_verdicts: u32,
    /// Whether the last capacity proofs met the claimed speed.
    #[serde(default)]
    pub proof_ok: Option<bool>,
    /// A quorum said it is down; only a quorum brings it back.
    #[serde(default)]
    pub down_by_quorum: bool,
}

/// A container's capacity proof, as decided by checkers' quorum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Capacity {
    /// Not proven yet: the container is `checking`.
    #[default]
    Pending,
    Passed {
        at_ms: u64,
        host_ms: u64,
    },
    /// Failed once for a reason that is no evidence of a false proof (a missed deadline,
    /// a failed opening): proven again the next period, and not offered meanwhile.
    Retry {
        at_ms: u64,
        reason: gpumesh_types::FailReason,
    },
    /// Final: a machine that failed keeps failing; new hardware registers anew.
    Rejected {
        at_ms: u64,
        reason: gpumesh_types::FailReason,
    },
}

/// What a capacity verdict did to a container ([`Registry::capacity_verdict`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CapacityDecision {
    Passed,
    /// No proof was made: not offered until a proof passes, asked again next period.
    Down(gpumesh_types::FailReason),
    /// Failed once without evidence: asked again next period.
    Retry(gpumesh_types::FailReason),
    /// Rejected now, for good: the caller slashes K × the staking coefficient for
    /// `offence`.
    Rejected {
        model: GpuModel,
        reason: gpumesh_types::FailReason,
        offence: gpumesh_types::Offence,
    },
    /// Already rejected.
    Unchanged,
}

/// What a rejection is slashed for: a wrong row or path is malicious; two proofs not
/// delivered, underperformance (a proof never made rejects nothing).
fn offence_of(reason: gpumesh_types::FailReason) -> gpumesh_types::Offence {
    match reason.class() {
        gpumesh_types::FailureClass::Malicious => gpumesh_types::Offence::Malicious,
        gpumesh_types::FailureClass::Underperforming | gpumesh_types::FailureClass::Down => {
            gpumesh_types::Offence::Underperformance
        }
    }
}

impl Capacity {
    pub fn is_passed(c: Option<&Capacity>) -> bool {
        matches!(c, Some(Capacity::Passed { .. }))
    }
}

fn default_tier() -> u8 {
    2
}

impl HostRecord {
    pub fn simulated(&self) -> bool {
        self.gpus.iter().any(|g| g.simulated)
    }
}

#[derive(Clone, Debug)]
struct Host {
    record: HostRecord,
    /// Per GPU: whether its stake is in place (all true when none is required).
    staked: Vec<bool>,
    /// The matcher's groups of this host: (group, first GPU index, GPU count).
    groups: Vec<(GroupId, u16, u16)>,
    last_heartbeat_ms: u64,
    online: bool,
}

/// A record the caller must persist because an operation changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dirty {
    Host(Address),
    Lease(LeaseId),
    Deployment(gpumesh_types::DeploymentId),
    Session(gpumesh_types::SessionId),
}

/// Ledger work the caller must do on the registry's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Close the lease's escrow without further charge and refund the rest to the buyer.
    CloseEscrow {
        lease: LeaseId,
        reason: gpumesh_types::CloseReason,
    },
    /// A host went offline: its containers fail this epoch's liveness.
    HostOffline {
        host: Address,
        last_heartbeat_ms: u64,
    },
    /// Open a new replica's escrow from its deployment owner's balance (the protocol
    /// signs, within the owner's allowance); on failure call
    /// [`Registry::replica_unfunded`], on success [`Registry::escrow_opened`].
    FundReplica {
        deployment: gpumesh_types::DeploymentId,
        owner: Address,
        lease: LeaseId,
        host: Address,
        price_per_gpu_hour: Amount,
        gpus: u16,
        max_duration_ms: u64,
        amount: Amount,
    },
    /// Top a running replica's escrow up by `extra_ms`; on success call
    /// [`Registry::extended`], on failure [`Registry::underfunded`].
    ExtendReplica {
        deployment: gpumesh_types::DeploymentId,
        owner: Address,
        lease: LeaseId,
        extra_ms: u64,
        amount: Amount,
    },
    /// A container was down while serving a lease: slash it for downtime.
    SlashDowntime {
        host: Address,
        index: u16,
        model: GpuModel,
        lease: LeaseId,
        last_heartbeat_ms: u64,
    },
}

/// Why an operation was refused. Nothing was changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RegistryError {
    #[error("{message}")]
    Invalid { code: ErrorCode, message: String },
    #[error("host {0} is not registered")]
    UnknownHost(Address),
    #[error("lease {0} does not exist")]
    UnknownLease(LeaseId),
    #[error("lease {lease} belongs to another {role}")]
    NotYours { lease: LeaseId, role: &'static str },
    #[error("lease {lease} is {state:?}; cannot {action}")]
    InvalidState {
        lease: LeaseId,
        state: LeaseState,
        action: &'static str,
    },
    /// Nothing matched; the explanation says which constraint ran out.
    #[error("{0}")]
    NoMatch(String),
}

impl RegistryError {
    pub fn code(&self) -> ErrorCode {
        match self {
            RegistryError::Invalid { code, .. } => *code,
            RegistryError::UnknownHost(_) => ErrorCode::UnknownHost,
            RegistryError::UnknownLease(_) => ErrorCode::UnknownLease,
            RegistryError::NotYours { .. } => ErrorCode::NotYourLease,
            RegistryError::InvalidState { .. } => ErrorCode::InvalidLeaseState,
            RegistryError::NoMatch(_) => ErrorCode::NoMatch,
        }
    }

    fn invalid(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError::Invalid {
            code,
            message: message.into(),
        }
    }
}

/// A measured round trip must be a time a network could take.
fn round_trip(rtt_ms: f64) -> Result<(), RegistryError> {
    if rtt_ms.is_finite() && rtt_ms > 0.0 && rtt_ms <= 10_000.0 {
        Ok(())
    } else {
        Err(RegistryError::invalid(
            ErrorCode::InvalidRequest,
            "round-trip time must be more than 0 and at most 10000 ms",
        ))
    }
}

/// One lease moved between states (`None`: into or out of memory).
fn shift(counts: &mut HashMap<LeaseState, u64>, from: Option<LeaseState>, to: Option<LeaseState>) {
    if let Some(from) = from {
        let n = counts.get_mut(&from);
        debug_assert!(
            n.as_ref().is_some_and(|n| **n > 0),
            "no lease counted as {from:?}"
        );
        if let Some(n) = n {
            *n = n.saturating_sub(1);
        }
    }
    if let Some(to) = to {
        *counts.entry(to).or_default() += 1;
    }
}

/// What one buyer's matched, unfunded leases hold: how many, and the escrows they need.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Unfunded {
    matches: u32,
    escrow: u128,
}

/// One more unfunded match for `buyer`, needing `escrow`.
fn hold_unfunded(unfunded: &mut HashMap<Address, Unfunded>, buyer: Address, escrow: Amount) {
    let held = unfunded.entry(buyer).or_default();
    held.matches += 1;
    held.escrow = held.escrow.saturating_add(escrow.0);
}

/// One fewer unfunded match for `buyer`, which needed `escrow`.
fn unfund(unfunded: &mut HashMap<Address, Unfunded>, buyer: Address, escrow: Amount) {
    if let std::collections::hash_map::Entry::Occupied(mut held) = unfunded.entry(buyer) {
        let h = held.get_mut();
        h.matches -= 1;
        h.escrow = h.escrow.saturating_sub(escrow.0);
        if h.matches == 0 {
            held.remove();
        }
    }
}

fn unfit(host: &Address, e: gpumesh_matcher::MatcherError) -> RegistryError {
    RegistryError::invalid(
        ErrorCode::InvalidRequest,
        format!("host {host} cannot be placed in the matching index: {e:?}"),
    )
}

/// Hosts, containers and leases.
#[derive(Debug)]
pub struct Registry {
    params: Params,
    hosts: Vec<Host>,
    by_address: HashMap<Address, u32>,
    matcher: Matcher,
    leases: BTreeMap<LeaseId, LeaseRecord>,
    /// The matcher's reservation of each lease that holds GPUs, and back.
    reservations: HashMap<LeaseId, ReservationId>,
    reserved_for: HashMap<ReservationId, LeaseId>,
    /// Each host's live leases (matched, starting, running), so that a host's work poll
    /// and its loss cost what it holds, not what the network ever leased.
    live_by_host: HashMap<Address, BTreeSet<LeaseId>>,
    /// Funded live leases by the time they must have moved on (`LeaseRecord::deadline_ms`),
    /// so that the tick finds overdue ones without scanning every lease.
    deadlines: BTreeSet<(u64, LeaseId)>,
    /// Each buyer's matched, unfunded leases.
    unfunded: HashMap<Address, Unfunded>,
    /// The leases in memory of each buyer and of each host, for their listings.
    by_buyer: HashMap<Address, BTreeSet<LeaseId>>,
    by_host: HashMap<Address, BTreeSet<LeaseId>>,
    /// Ended leases still in memory, by when they ended, so that those past the
    /// retention are found without a scan ([`Registry::ended_before`]).
    ended: BTreeSet<(u64, LeaseId)>,
    /// How many leases in memory are in each state, kept as they move.
    in_state: HashMap<LeaseState, u64>,
    /// Ended sessions still in memory, by when they ended ([`Registry::sessions_ended_before`]).
    ended_sessions: BTreeSet<(u64, gpumesh_types::SessionId)>,
    /// Measuring points added (network coordinates are soft state, not stored).
    anchors: usize,
    next_lease: u64,
    dirty: Vec<Dirty>,
    deployments: BTreeMap<gpumesh_types::DeploymentId, DeploymentRecord>,
    sessions: BTreeMap<gpumesh_types::SessionId, SessionRecord>,
    /// Sessions waiting for a slot (by deployment, oldest first), and the active sessions
    /// of each replica.
    queued: BTreeSet<(gpumesh_types::DeploymentId, gpumesh_types::SessionId)>,
    sessions_by_replica: HashMap<LeaseId, Vec<gpumesh_types::SessionId>>,
    next_deployment: u64,
    next_session: u64,
    autoscale_policy: autoscale::Policy,
}

impl Registry {
    pub fn new(params: Params) -> Registry {
        Registry {
            hosts: Vec::new(),
            by_address: HashMap::new(),
            matcher: Matcher::default(),
            leases: BTreeMap::new(),
            reservations: HashMap::new(),
            reserved_for: HashMap::new(),
            live_by_host: HashMap::new(),
            deadlines: BTreeSet::new(),
            unfunded: HashMap::new(),
            by_buyer: HashMap::new(),
            by_host: HashMap::new(),
            ended: BTreeSet::new(),
            in_state: HashMap::new(),
            ended_sessions: BTreeSet::new(),
            anchors: 0,
            next_lease: 1,
            dirty: Vec::new(),
            deployments: BTreeMap::new(),
            sessions: BTreeMap::new(),
            queued: BTreeSet::new(),
            sessions_by_replica: HashMap::new(),
            next_deployment: 1,
            next_session: 1,
            autoscale_policy: if params.local {
                autoscale::Policy::local()
            } else {
                autoscale::Policy::network()
            },
            params,
        }
    }

    /// Rebuilds the registry from stored records. Hosts get a full heartbeat window from
    /// `now_ms` to check in again, since heartbeats are not stored.
    pub fn restore(
        params: Params,
        hosts: impl IntoIterator<Item = HostRecord>,
        leases: impl IntoIterator<Item = LeaseRecord>,
        now_ms: u64,
    ) -> Result<Registry, String> {
        let mut registry = Registry::new(params);
        for record in hosts {
            registry
                .insert_host(record, now_ms)
                .map_err(|e| e.to_string())?;
        }
        let mut backfilled = Vec::new();
        for mut lease in leases {
            if lease.funded && lease.state.holds_capacity() {
                // Records from before deadlines were kept get theirs now; a lease that
                // was starting gets a fresh start window, since its host may have waited
                // for this indexer.
                if lease.deadline_ms == 0 {
                    lease.deadline_ms = match lease.started_ms {
                        Some(at) => at + lease.max_duration_ms + registry.params.end_grace_ms,
                        None => now_ms + registry.params.start_timeout_ms,
                    };
                    backfilled.push(lease.id);
                }
                registry.deadlines.insert((lease.deadline_ms, lease.id));
            }
            if lease.state.holds_capacity() {
                let host = registry.host_by_address(&lease.host).ok_or_else(|| {
                    format!(
                        "lease {} names host {} which is not registered",
                        lease.id, lease.host
                    )
                })?;
                let (group, mask) = registry.group_of(host, &lease.gpu_indices)?;
                let expires =
                    (lease.state == LeaseState::Matched).then_some(lease.matched_until_ms);
                let reservation = registry
                    .matcher
                    .reserve_exact(group, mask, expires)
                    .map_err(|e| format!("lease {} cannot hold its GPUs: {e:?}", lease.id))?;
                registry.reservations.insert(lease.id, reservation);
                registry.reserved_for.insert(reservation, lease.id);
                registry
                    .live_by_host
                    .entry(lease.host)
                    .or_default()
                    .insert(lease.id);
            }
            if lease.state == LeaseState::Matched {
                hold_unfunded(&mut registry.unfunded, lease.buyer, lease.escrow);
            }
            if lease.state.is_terminal() {
                let at = lease.ended_ms.unwrap_or(lease.created_ms);
                registry.ended.insert((at, lease.id));
            }
            registry.next_lease = registry.next_lease.max(lease.id.0 + 1);
            registry.keep(lease);
        }
        registry.dirty.clear();
        // Written with the next change, so the next restart keeps these deadlines.
        registry
            .dirty
            .extend(backfilled.into_iter().map(Dirty::Lease));
        Ok(registry)
    }

    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Gives new leases ids from `next` on at the least: the ids of leases no longer in
    /// memory (archived) are never given again.
    pub fn reserve_lease_ids(&mut self, next: u64) {
        self.next_lease = self.next_lease.max(next);
    }

    /// How many leases in memory are in `state`: every live one, and those ended within
    /// the caller's retention.
    pub fn leases_in(&self, state: LeaseState) -> u64 {
        self.in_state.get(&state).copied().unwrap_or(0)
    }

    /// How many leases hold GPUs now (matched, starting or running).
    pub fn live_lease_count(&self) -> usize {
        self.reservations.len()
    }

    /// How many leases were ever made (ids are given in sequence from 1).
    pub fn leases_made(&self) -> u64 {
        self.next_lease - 1
    }

    /// Puts a lease in memory with its buyer's and host's indexes.
    fn keep(&mut self, lease: LeaseRecord) -> &mut LeaseRecord {
        let id = lease.id;
        shift(&mut self.in_state, None, Some(lease.state));
        self.by_buyer.entry(lease.buyer).or_default().insert(id);
        self.by_host.entry(lease.host).or_default().insert(id);
        self.leases.entry(id).or_insert(lease)
    }

    /// Ended leases in memory that ended before `before_ms`, oldest first.
    pub fn ended_before(&self, before_ms: u64) -> impl Iterator<Item = LeaseId> + '_ {
        self.ended
            .range(..(before_ms, LeaseId(0)))
            .map(|&(_, id)| id)
    }

    /// Takes an ended lease out of memory (its record stays wherever the caller keeps
    /// it); a live one, or one not in memory, stays as it is. Ended leases hold no GPUs,
    /// deadline, unfunded match or session, so only the indexes point at them.
    pub fn forget(&mut self, id: LeaseId) -> Option<LeaseRecord> {
        if !self.leases.get(&id)?.state.is_terminal() {
            return None;
        }
        let lease = self.leases.remove(&id)?;
        shift(&mut self.in_state, Some(lease.state), None);
        let at = lease.ended_ms.unwrap_or(lease.created_ms);
        self.ended.remove(&(at, id));
        for (index, who) in [
            (&mut self.by_buyer, lease.buyer),
            (&mut self.by_host, lease.host),
        ] {
            if let std::collections::hash_map::Entry::Occupied(mut ids) = index.entry(who) {
                ids.get_mut().remove(&id);
                if ids.get().is_empty() {
                    ids.remove();
                }
            }
        }
        self.sessions_by_replica.remove(&id);
        Some(lease)
    }

    /// Records changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<Dirty> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.dedup();
        dirty
    }

    pub fn host(&self, address: &Address) -> Option<&HostRecord> {
        self.host_by_address(address)
            .map(|i| &self.hosts[i as usize].record)
    }

    pub fn host_online(&self, address: &Address) -> bool {
        self.host_by_address(address)
            .is_some_and(|i| self.hosts[i as usize].online)
    }

    pub fn lease(&self, id: LeaseId) -> Option<&LeaseRecord> {
        self.leases.get(&id)
    }

    /// Leases that hold GPUs: matched, starting or running.
    pub fn live_leases(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.reservations
            .keys()
            .filter_map(|id| self.leases.get(id))
    }

    /// One host's live leases (matched, starting, running), in id order.
    pub fn live_leases_of(&self, host: &Address) -> impl Iterator<Item = &LeaseRecord> {
        self.live_by_host
            .get(host)
            .into_iter()
            .flatten()
            .filter_map(|id| self.leases.get(id))
    }

    /// Leases in memory in id order, after `after` when given, of this buyer and host
    /// when given: through the buyer's or host's index, so a filtered page costs that
    /// buyer's or host's leases, not everyone's.
    pub fn leases_after(
        &self,
        buyer: Option<Address>,
        host: Option<Address>,
        after: Option<LeaseId>,
    ) -> Box<dyn Iterator<Item = &LeaseRecord> + '_> {
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let range = (from, std::ops::Bound::Unbounded);
        let indexed = match (buyer, host) {
            (Some(b), _) => Some(self.by_buyer.get(&b)),
            (None, Some(h)) => Some(self.by_host.get(&h)),
            (None, None) => None,
        };
        match indexed {
            Some(ids) => Box::new(
                ids.into_iter()
                    .flat_map(move |ids| ids.range(range))
                    .filter_map(|id| self.leases.get(id))
                    .filter(move |l| {
                        buyer.is_none_or(|b| l.buyer == b) && host.is_none_or(|h| l.host == h)
                    }),
            ),
            None => Box::new(self.leases.range(range).map(|(_, l)| l)),
        }
    }

    pub fn leases(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.leases.values()
    }

    /// Hosts that are offline now.
    pub fn offline_hosts(&self) -> impl Iterator<Item = Address> + '_ {
        self.hosts
            .iter()
            .filter(|h| !h.online)
            .map(|h| h.record.address)
    }

    pub fn host_count(&self) -> usize {
        self.hosts.len()
    }

    pub fn container_count(&self) -> usize {
        self.hosts.iter().map(|h| h.record.gpus.len()).sum()
    }

    fn host_by_address(&self, address: &Address) -> Option<u32> {
        self.by_address.get(address).copied()
    }

    /// The matcher group holding these GPUs of a host, and their mask in it.
    fn group_of(&self, host: u32, indices: &[u16]) -> Result<(GroupId, u64), String> {
        let h = &self.hosts[host as usize];
        let first = *indices.first().ok_or("a lease holds no GPUs")?;
        let &(group, start, count) = h
            .groups
            .iter()
            .find(|(_, start, count)| (*start..start + count).contains(&first))
            .ok_or_else(|| format!("host {} has no GPU {first}", h.record.address))?;
        let mut mask = 0u64;
        for &i in indices {
            if !(start..start + count).contains(&i) {
                return Err(format!(
                    "GPUs {indices:?} of host {} span several groups",
                    h.record.address
                ));
            }
            mask |= 1 << (i - start);
        }
        Ok((group, mask))
    }

    fn insert_host(&mut self, record: HostRecord, now_ms: u64) -> Result<(), RegistryError> {
        let index = self.hosts.len() as u32;
        // Runs of GPUs of one model and memory size are the matcher's groups.
        let mut specs: Vec<GroupSpec> = Vec::new();
        for (i, gpu) in record.gpus.iter().enumerate() {
            match specs.last_mut() {
                Some(g) if g.model == gpu.model && g.vram_mib == gpu.vram_mib && g.count < 64 => {
                    g.count += 1
                }
                _ => specs.push(GroupSpec {
                    model: gpu.model,
                    vram_mib: gpu.vram_mib,
                    first_index: i as u16,
                    count: 1,
                }),
            }
        }
        let spec = HostSpec {
            point: record.location.point,
            country: record.location.country,
            price_per_gpu_hour: record.price_per_gpu_hour,
            tier: record.tier,
            images: record.images.clone(),
        };
        // Validation caps GPUs per model at 64 and countries are ISO codes, so the matcher
        // takes every valid host; should it not, the registration is refused, unchanged.
        let (matcher_host, ids) = self
            .matcher
            .add_host(&spec, &specs)
            .map_err(|e| unfit(&record.address, e))?;
        debug_assert_eq!(
            matcher_host.0, index,
            "registry and matcher number hosts alike"
        );
        let groups: Vec<(GroupId, u16, u16)> = ids
            .into_iter()
            .zip(&specs)
            .map(|(id, g)| (id, g.first_index, g.count as u16))
            .collect();
        let mut record = record;
        let proven = if self.params.checked {
            Capacity::Pending
        } else {
            Capacity::Passed {
                at_ms: now_ms,
                host_ms: 0,
            }
        };
        record.capacity.resize(record.gpus.len(), proven);
        self.by_address.insert(record.address, index);
        let staked = vec![!self.params.require_stake; record.gpus.len()];
        let online = !record.down_by_quorum;
        self.hosts.push(Host {
            record,
            staked,
            groups,
            last_heartbeat_ms: now_ms,
            online,
        });
        self.sync_enabled(index);
        if !online {
            let _ = self
                .matcher
                .set_online(gpumesh_matcher::HostId(index), false);
        }
        Ok(())
    }

    /// Whether a GPU may serve: its stake is in place and its capacity proof passed.
    fn serves(host: &Host, i: usize) -> bool {
        host.staked[i] && Capacity::is_passed(host.record.capacity.get(i))
    }

    /// Tells the matcher which GPUs of a host may serve.
    fn sync_enabled(&mut self, h: u32) {
        let host = &self.hosts[h as usize];
        for &(group, start, count) in &host.groups {
            let mask = (0..count)
                .filter(|i| Self::serves(host, (start + i) as usize))
                .fold(0u64, |m, i| m | 1 << i);
            self.matcher
                .set_enabled(group, mask)
                .expect("the host's groups exist");
        }
    }

    /// Registers a host, or updates a known host's name, place, price and images.
    ///
    /// A known host must offer the same GPUs as before: a changed set is a new machine
    /// (docs/protocol.md) and needs a new key.
    pub fn register_host(
        &mut self,
        address: Address,
        request: RegisterHost,
        now_ms: u64,
    ) -> Result<HostRegistered, RegistryError> {
        let gpus = validate::host(
            &request,
            self.params.local,
            self.params.local || self.params.private_endpoints,
        )?;
        if self.params.checked && request.challenge_url.is_none() {
            return Err(RegistryError::invalid(
                ErrorCode::InvalidRequest,
                "this network checks its hosts: give the agent's challenge URL (challenge_url)",
            ));
        }
        if self.params.checked
            && let Some(gpu) = gpus
                .iter()
                .find(|g| !g.simulated && !self.params.provable_models.contains(&g.model))
        {
            return Err(RegistryError::invalid(
                ErrorCode::NoProofRate,
                format!(
                    "this network's genesis has no reference proof rate for {}, so checkers cannot prove its capacity; models it can prove: {}",
                    gpu.model,
                    if self.params.provable_models.is_empty() {
                        "none".to_string()
                    } else {
                        self.params
                            .provable_models
                            .iter()
                            .map(ToString::to_string)
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            ));
        }
        let record = HostRecord {
            address,
            name: request.name,
            location: request.location,
            price_per_gpu_hour: request.price_per_gpu_hour,
            runtime: request.runtime,
            images: request.images,
            gpus,
            registered_ms: now_ms,
            tier: default_tier(),
            challenge_url: request.challenge_url,
            capacity: Vec::new(),
            up_verdicts: 0,
            down_verdicts: 0,
            proof_ok: None,
            down_by_quorum: false,
        };
        match self.host_by_address(&address) {
            None => self.insert_host(record, now_ms)?,
            Some(index) => {
                let host = &self.hosts[index as usize];
                if host.record.gpus != record.gpus {
                    return Err(RegistryError::invalid(
                        ErrorCode::InvalidRequest,
                        format!(
                            "host {address} is registered with other GPUs; a changed set of GPUs is a new machine and needs its own key"
                        ),
                    ));
                }
                let mh = gpumesh_matcher::HostId(index);
                let known = "registered hosts are in the matcher";
                if host.record.location != record.location {
                    // The first change, so a refusal leaves the host as it was.
                    self.matcher
                        .set_location(mh, record.location.point, record.location.country)
                        .map_err(|e| unfit(&address, e))?;
                }
                self.matcher
                    .set_price(mh, record.price_per_gpu_hour)
                    .expect(known);
                self.matcher.set_images(mh, &record.images).expect(known);
                let host = &mut self.hosts[index as usize];
                if !host.record.down_by_quorum {
                    self.matcher.set_online(mh, true).expect(known);
                    host.online = true;
                }
                let old = &host.record;
                // What checkers decided stays with the machine.
                host.record = HostRecord {
                    registered_ms: old.registered_ms,
                    tier: old.tier,
                    capacity: old.capacity.clone(),
                    up_verdicts: old.up_verdicts,
                    down_verdicts: old.down_verdicts,
                    proof_ok: old.proof_ok,
                    down_by_quorum: old.down_by_quorum,
                    ..record
                };
                host.last_heartbeat_ms = now_ms;
            }
        }
        self.dirty.push(Dirty::Host(address));
        Ok(HostRegistered {
            host: address,
            containers: self.host(&address).map_or(0, |h| h.gpus.len() as u32),
            heartbeat_interval_ms: self.params.heartbeat_interval_ms,
            settle_interval_ms: self.params.settle_interval_ms,
        })
    }

    /// A host is alive; an offline host comes back to standby.
    pub fn heartbeat(
        &mut self,
        address: Address,
        beat: Heartbeat,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let index = self
            .host_by_address(&address)
            .ok_or(RegistryError::UnknownHost(address))?;
        if let Some(images) = &beat.images {
            validate::images(images)?;
        }
        let mh = gpumesh_matcher::HostId(index);
        let known = "registered hosts are in the matcher";
        let host = &mut self.hosts[index as usize];
        host.last_heartbeat_ms = host.last_heartbeat_ms.max(now_ms);
        if let Some(images) = beat.images {
            self.matcher.set_images(mh, &images).expect(known);
            host.record.images = images;
            self.dirty.push(Dirty::Host(address));
        }
        // A host a quorum found down comes back by a quorum's verdict, not its own word.
        if !host.online && !host.record.down_by_quorum {
            host.online = true;
            self.matcher.set_online(mh, true).expect(known);
        }
        Ok(())
    }

    /// Whether a container's stake is in place; a container serves only when it is (or
    /// when no stake is required).
    pub fn set_staked(
        &mut self,
        host: &Address,
        index: u16,
        staked: bool,
    ) -> Result<(), RegistryError> {
        let h = self
            .host_by_address(host)
            .ok_or(RegistryError::UnknownHost(*host))?;
        let entry = self.hosts[h as usize]
            .staked
            .get_mut(index as usize)
            .ok_or_else(|| {
                RegistryError::invalid(
                    ErrorCode::InvalidRequest,
                    format!("host {host} has no GPU {index}"),
                )
            })?;
        if *entry == staked || !self.params.require_stake {
            return Ok(());
        }
        *entry = staked;
        self.sync_enabled(h);
        Ok(())
    }

    /// Every container's standing for the epoch's rewards; liveness counts are the
    /// caller's to fill in.
    pub fn epoch_facts(&self) -> Vec<gpumesh_checking::epoch::ContainerEpoch> {
        let mut out = Vec::with_capacity(self.container_count());
        for h in &self.hosts {
            for (i, g) in h.record.gpus.iter().enumerate() {
                out.push(gpumesh_checking::epoch::ContainerEpoch {
                    container: gpumesh_types::ContainerRef {
                        host: h.record.address,
                        index: i as u16,
                    },
                    k_centi: g.model.spec().k_factor,
                    verified: Capacity::is_passed(h.record.capacity.get(i)),
                    staked: h.staked[i],
                    up: 0,
                    down: 0,
                    online: h.online,
                });
            }
        }
        out
    }

    /// The spec weight K (hundredths) of a host's GPU.
    pub fn k_of(&self, host: &Address, index: u16) -> Option<u32> {
        self.host(host)?
            .gpus
            .get(index as usize)
            .map(|g| g.model.spec().k_factor)
    }

    /// Every container, for listings.
    pub fn containers(&self) -> Vec<ContainerView> {
        self.containers_page(0, usize::MAX).0
    }

    /// Up to `limit` containers from the `from`-th on (hosts in registration order, then
    /// GPUs in order; hosts are only ever added, so positions are stable), and where the
    /// next page starts.
    pub fn containers_page(
        &self,
        from: usize,
        limit: usize,
    ) -> (Vec<ContainerView>, Option<usize>) {
        let busy: std::collections::HashSet<(Address, u16)> = self
            .live_leases()
            .flat_map(|l| l.gpu_indices.iter().map(move |&i| (l.host, i)))
            .collect();
        let mut out = Vec::with_capacity(limit.min(self.container_count()));
        let mut position = 0usize;
        for host in &self.hosts {
            let r = &host.record;
            if position + r.gpus.len() <= from {
                position += r.gpus.len();
                continue;
            }
            for (i, gpu) in r.gpus.iter().enumerate() {
                position += 1;
                if position <= from {
                    continue;
                }
                if out.len() == limit {
                    return (out, Some(position - 1));
                }
                let state = if let Some(Capacity::Rejected { .. }) = r.capacity.get(i) {
                    ContainerState::Rejected
                } else if !host.online {
                    // Offline before checking: a host that never proved and went away
                    // is away, not being checked.
                    ContainerState::Offline
                } else if !Capacity::is_passed(r.capacity.get(i)) {
                    ContainerState::Checking
                } else if !host.staked[i] {
                    ContainerState::AwaitingStake
                } else if busy.contains(&(r.address, i as u16)) {
                    ContainerState::Busy
                } else {
                    ContainerState::Standby
                };
                out.push(ContainerView {
                    host: r.address,
                    host_name: r.name.clone(),
                    index: i as u16,
                    gpu: gpu.model,
                    vram_mib: gpu.vram_mib,
                    simulated: gpu.simulated,
                    state,
                    location: r.location,
                    price_per_gpu_hour: r.price_per_gpu_hour,
                    tier: r.tier,
                    rejected: match r.capacity.get(i) {
                        Some(Capacity::Rejected { reason, .. }) => Some(reason.describe().into()),
                        _ => None,
                    },
                });
            }
        }
        (out, None)
    }

    /// A round trip a host reports it measured to a peer (`POST /v1/observations`).
    ///
    /// Only the reporter's own coordinate moves: what one host says must not move
    /// another host's or a measuring point's, or a host could push its competitors away
    /// from buyers, or drag an anchor (which places every request near it) wherever it
    /// liked. And only a local network takes these at all: on a public network a host
    /// that moved even its own coordinate could lie itself closer to buyers and win
    /// round-trip-bound matches it cannot serve, so there coordinates move only from the
    /// round trips checkers measure ([`Registry::checker_measurement`]), and a host's
    /// report is refused with `not_local_network`. A local network keeps them because its
    /// operator runs every host and tests and demos place coordinates with them.
    pub fn host_observation(
        &mut self,
        reporter: Address,
        observation: &gpumesh_types::Observation,
    ) -> Result<(), RegistryError> {
        let from = self
            .host_by_address(&reporter)
            .ok_or(RegistryError::UnknownHost(reporter))?;
        if !self.params.local {
            return Err(RegistryError::invalid(
                ErrorCode::NotLocalNetwork,
                "a public network takes no round trips from hosts: network coordinates move only from checkers' measurements",
            ));
        }
        round_trip(observation.rtt_ms)?;
        let to = match observation.peer {
            gpumesh_types::Peer::Host(address) if address == reporter => {
                return Err(RegistryError::invalid(
                    ErrorCode::InvalidRequest,
                    "a host cannot measure a round trip to itself",
                ));
            }
            gpumesh_types::Peer::Host(address) => {
                gpumesh_matcher::NetNode::Host(gpumesh_matcher::HostId(
                    self.host_by_address(&address)
                        .ok_or(RegistryError::UnknownHost(address))?,
                ))
            }
            gpumesh_types::Peer::Anchor(a) => self.anchor(a)?,
        };
        self.matcher.observe_from(
            gpumesh_matcher::NetNode::Host(gpumesh_matcher::HostId(from)),
            to,
            observation.rtt_ms,
        );
        Ok(())
    }

    /// A round trip a checker measured from its measuring point `anchor` to `host`'s
    /// agent: both coordinates move. The checker timed it itself, so neither end chose
    /// the number (a host can only make itself look farther away).
    pub fn checker_measurement(
        &mut self,
        host: Address,
        anchor: u32,
        rtt_ms: f64,
    ) -> Result<(), RegistryError> {
        let h = self
            .host_by_address(&host)
            .ok_or(RegistryError::UnknownHost(host))?;
        round_trip(rtt_ms)?;
        let anchor = self.anchor(anchor)?;
        self.matcher.observe(
            gpumesh_matcher::NetNode::Host(gpumesh_matcher::HostId(h)),
            anchor,
            rtt_ms,
        );
        Ok(())
    }

    /// Where a node is in network coordinates: a host's or a measuring point's.
    pub fn coordinate(&self, node: gpumesh_types::Peer) -> Option<gpumesh_matcher::Coord> {
        let node = match node {
            gpumesh_types::Peer::Host(address) => gpumesh_matcher::NetNode::Host(
                gpumesh_matcher::HostId(self.host_by_address(&address)?),
            ),
            gpumesh_types::Peer::Anchor(a) => gpumesh_matcher::NetNode::Anchor(a),
        };
        self.matcher.coord(node)
    }

    fn anchor(&self, a: u32) -> Result<gpumesh_matcher::NetNode, RegistryError> {
        if (a as usize) < self.anchors {
            Ok(gpumesh_matcher::NetNode::Anchor(a))
        } else {
            Err(RegistryError::invalid(
                ErrorCode::InvalidRequest,
                format!("anchor {a} does not exist"),
            ))
        }
    }

    /// Adds a measuring point; its id names it in observations.
    pub fn add_anchor(&mut self, point: gpumesh_types::GeoPoint) -> Result<u32, RegistryError> {
        point
            .validate()
            .map_err(|e| RegistryError::invalid(ErrorCode::InvalidLocation, e.to_string()))?;
        self.anchors += 1;
        Ok(self.matcher.add_anchor(point))
    }

    /// Leases the host must start, and leases it must stop.
    pub fn work(&self, host: &Address) -> Result<HostWork, RegistryError> {
        self.host_by_address(host)
            .ok_or(RegistryError::UnknownHost(*host))?;
        let mut work = HostWork {
            live: Some(Vec::new()),
            ..HostWork::default()
        };
        for lease in self.live_leases_of(host) {
            if matches!(lease.state, LeaseState::Starting | LeaseState::Running)
                && let Some(live) = &mut work.live
            {
                live.push(lease.id);
            }
            match lease.state {
                LeaseState::Starting if !lease.cancel_requested => work.start.push(Assignment {
                    lease: lease.id,
                    buyer: lease.buyer,
                    gpu: lease.gpu,
                    gpu_indices: lease.gpu_indices.clone(),
                    image: lease.image.clone(),
                    command: lease.command.clone(),
                    max_duration_ms: lease.max_duration_ms,
                    price_per_gpu_hour: lease.price_per_gpu_hour,
                    ports: lease.ports.clone(),
                    env: lease.env.clone(),
                    health: lease.health_check.clone(),
                }),
                LeaseState::Starting | LeaseState::Running if lease.cancel_requested => {
                    work.stop.push(lease.id)
                }
                _ => {}
            }
        }
        Ok(work)
    }

    /// Marks hosts that missed their heartbeats offline and expires unfunded matches.
    /// Live leases on a lost host fail; their escrows must be closed (the effects).
    pub fn tick(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        let offline_after = self.params.offline_after_ms();
        let mut lost = Vec::new();
        for (i, host) in self.hosts.iter_mut().enumerate() {
            if host.online && now_ms.saturating_sub(host.last_heartbeat_ms) > offline_after {
                host.online = false;
                lost.push(host.record.address);
                effects.push(Effect::HostOffline {
                    host: host.record.address,
                    last_heartbeat_ms: host.last_heartbeat_ms,
                });
                let _ = self
                    .matcher
                    .set_online(gpumesh_matcher::HostId(i as u32), false);
            }
        }
        // Matches whose escrow did not come in time: the matcher already freed their GPUs.
        for reservation in self.matcher.expire(now_ms) {
            if let Some(id) = self.reserved_for.remove(&reservation) {
                self.reservations.remove(&id);
                let why = "escrow was not funded before the match expired";
                self.end_lease(id, LeaseState::Cancelled, None, Some(why.into()), now_ms);
            }
        }
        let why = "host lost: it missed its heartbeats; undelivered time is refunded";
        effects.extend(self.fail_leases_of(&lost, why, now_ms));
        effects.extend(self.end_overdue(now_ms));
        effects
    }

    /// Ends funded leases past their deadline: one its host never started fails with a
    /// full refund; one whose host did not report its end in time (after its maximum
    /// duration, or after a cancellation) ends with the host paid what it settled.
    fn end_overdue(&mut self, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        while let Some(&(at, id)) = self.deadlines.first() {
            if at > now_ms {
                break;
            }
            self.deadlines.pop_first();
            let Some(lease) = self.leases.get(&id) else {
                continue;
            };
            let (state, why, reason) = match (lease.state, lease.cancel_requested) {
                (LeaseState::Starting, _) => (
                    LeaseState::Failed,
                    format!(
                        "the host did not start the workload within {} s; the escrow is refunded",
                        self.params.start_timeout_ms / 1000
                    ),
                    gpumesh_types::CloseReason::NotStarted,
                ),
                (LeaseState::Running, cancelled) => (
                    if cancelled {
                        LeaseState::Cancelled
                    } else {
                        LeaseState::Failed
                    },
                    format!(
                        "the host did not report the end within {} s of the lease's {}; it is paid the usage it settled and the rest is refunded",
                        self.params.end_grace_ms / 1000,
                        if cancelled {
                            "cancellation"
                        } else {
                            "maximum duration"
                        }
                    ),
                    gpumesh_types::CloseReason::Overdue,
                ),
                _ => continue,
            };
            self.end_lease(id, state, None, Some(why), now_ms);
            effects.push(Effect::CloseEscrow { lease: id, reason });
        }
        effects
    }

    /// Ends the live leases of lost hosts: unfunded matches are cancelled; running leases
    /// fail, their escrows close and their GPUs are slashed for downtime (the effects).
    fn fail_leases_of(&mut self, lost: &[Address], why: &str, now_ms: u64) -> Vec<Effect> {
        let mut effects = Vec::new();
        if lost.is_empty() {
            return effects;
        }
        let ids: Vec<LeaseId> = lost
            .iter()
            .filter_map(|h| self.live_by_host.get(h))
            .flatten()
            .copied()
            .collect();
        for id in ids {
            let lease = &self.leases[&id];
            let host_lost = lost.contains(&lease.host);
            match lease.state {
                LeaseState::Matched if host_lost => {
                    let why = "host went offline before the escrow was funded";
                    self.end_lease(id, LeaseState::Cancelled, None, Some(why.into()), now_ms);
                }
                LeaseState::Starting | LeaseState::Running if host_lost => {
                    let (host, model, indices) = (lease.host, lease.gpu, lease.gpu_indices.clone());
                    let last_heartbeat_ms = self
                        .host_by_address(&host)
                        .map_or(0, |h| self.hosts[h as usize].last_heartbeat_ms);
                    self.end_lease(id, LeaseState::Failed, None, Some(why.into()), now_ms);
                    effects.push(Effect::CloseEscrow {
                        lease: id,
                        reason: gpumesh_types::CloseReason::HostLost,
                    });
                    for index in indices {
                        effects.push(Effect::SlashDowntime {
                            host,
                            index,
                            model,
                            lease: id,
                            last_heartbeat_ms,
                        });
                    }
                }
                _ => {}
            }
        }
        effects
    }

    /// The containers checkers should check in a period: every GPU of a host that gave a
    /// challenge endpoint, except rejected ones; a capacity proof is due for those never
    /// proven and those proven more than `capacity_every_ms` ago.
    pub fn check_targets(
        &self,
        capacity_every_ms: u64,
        now_ms: u64,
    ) -> Vec<gpumesh_checking::Target> {
        // A GPU serving a lease is not proven again until it is free: the proof would
        // share the device with the buyer's workload.
        let leased: std::collections::HashSet<(Address, u16)> = self
            .live_leases()
            .flat_map(|l| l.gpu_indices.iter().map(move |&i| (l.host, i)))
            .collect();
        // Running leases are checked for delivery on their first GPU.
        let delivering: HashMap<(Address, u16), gpumesh_types::DeliveryProbe> = self
            .live_leases()
            .filter(|l| l.delivery_due(now_ms))
            .filter_map(|l| Some(((l.host, *l.gpu_indices.first()?), l.delivery_probe())))
            .collect();
        let mut out = Vec::with_capacity(self.container_count());
        for host in &self.hosts {
            let r = &host.record;
            let Some(endpoint) = &r.challenge_url else {
                continue;
            };
            for (i, gpu) in r.gpus.iter().enumerate() {
                let capacity_due = match r.capacity.get(i) {
                    Some(Capacity::Rejected { .. }) => continue,
                    Some(Capacity::Passed { at_ms, .. }) => {
                        at_ms + capacity_every_ms <= now_ms
                            && !leased.contains(&(r.address, i as u16))
                    }
                    Some(Capacity::Pending | Capacity::Retry { .. }) | None => true,
                    // An offline host is asked only its liveness: a proof it cannot make
                    // would say nothing more.
                } && host.online;
                out.push(gpumesh_checking::Target {
                    container: gpumesh_types::ContainerRef {
                        host: r.address,
                        index: i as u16,
                    },
                    endpoint: endpoint.clone(),
                    gpu: gpu.model,
                    simulated: gpu.simulated,
                    capacity_due,
                    delivery: delivering.get(&(r.address, i as u16)).cloned(),
                });
            }
        }
        out
    }

    /// A quorum's capacity verdict on a container, judged by what its failure is
    /// evidence of (docs/checking.md, "Failed proofs and what they cost"): a proof that
    /// was never made unproves a proven container until it proves again, and is asked
    /// again next period; a missed deadline or a failed opening gets a second proof; a
    /// second such failure, or a wrong row or path at once, rejects it for good.
    pub fn capacity_verdict(
        &mut self,
        c: gpumesh_types::ContainerRef,
        verdict: Result<u64, gpumesh_types::FailReason>,
        expected_ms: u64,
        now_ms: u64,
    ) -> Result<CapacityDecision, RegistryError> {
        use gpumesh_types::FailureClass;
        let h = self
            .host_by_address(&c.host)
            .ok_or(RegistryError::UnknownHost(c.host))?;
        let host = &mut self.hosts[h as usize];
        let i = c.index as usize;
        let Some(gpu) = host.record.gpus.get(i) else {
            return Err(RegistryError::invalid(
                ErrorCode::InvalidRequest,
                format!("host {} has no GPU {}", c.host, c.index),
            ));
        };
        let model = gpu.model;
        host.record
            .capacity
            .resize(host.record.gpus.len(), Capacity::Pending);
        let state = &mut host.record.capacity[i];
        let decision = match (&*state, verdict) {
            // A rejection stands.
            (Capacity::Rejected { .. }, _) => CapacityDecision::Unchanged,
            (_, Ok(host_ms)) => {
                *state = Capacity::Passed {
                    at_ms: now_ms,
                    host_ms,
                };
                host.record.proof_ok = Some(host_ms <= expected_ms);
                CapacityDecision::Passed
            }
            // No proof was made: nothing is proven, so a container proven before is not
            // offered until it proves again; nothing more (the host's liveness checks
            // judge whether it is there).
            (_, Err(reason)) if reason.class() == FailureClass::Down => {
                if matches!(state, Capacity::Passed { .. }) {
                    *state = Capacity::Pending;
                }
                CapacityDecision::Down(reason)
            }
            // A second failure in a row, or evidence at once.
            (previous, Err(reason))
                if matches!(previous, Capacity::Retry { .. })
                    || reason.class() == FailureClass::Malicious =>
            {
                *state = Capacity::Rejected {
                    at_ms: now_ms,
                    reason,
                };
                CapacityDecision::Rejected {
                    model,
                    reason,
                    offence: offence_of(reason),
                }
            }
            (_, Err(reason)) => {
                *state = Capacity::Retry {
                    at_ms: now_ms,
                    reason,
                };
                CapacityDecision::Retry(reason)
            }
        };
        self.dirty.push(Dirty::Host(c.host));
        self.sync_enabled(h);
        Ok(decision)
    }

    /// A quorum's liveness verdict on a host (down when any of its containers was found
    /// down). A host found down goes offline, and its live leases fail as a lost host's do
    /// (the effects); only an up verdict brings it back. Returns the effects.
    pub fn liveness_verdict(&mut self, host: &Address, up: bool, now_ms: u64) -> Vec<Effect> {
        let Some(h) = self.host_by_address(host) else {
            return Vec::new();
        };
        let mh = gpumesh_matcher::HostId(h);
        let entry = &mut self.hosts[h as usize];
        let r = &mut entry.record;
        if up {
            r.up_verdicts += 1;
        } else {
            r.down_verdicts += 1;
        }
        if r.up_verdicts + r.down_verdicts > QUALITY_WINDOW {
            r.up_verdicts /= 2;
            r.down_verdicts /= 2;
        }
        match (up, r.down_by_quorum, entry.online) {
            (true, true, _) => {
                r.down_by_quorum = false;
                entry.online = true;
                entry.last_heartbeat_ms = entry.last_heartbeat_ms.max(now_ms);
                let _ = self.matcher.set_online(mh, true);
                self.dirty.push(Dirty::Host(*host));
                Vec::new()
            }
            (false, false, _) => {
                r.down_by_quorum = true;
                let was_online = std::mem::replace(&mut entry.online, false);
                let last_heartbeat_ms = entry.last_heartbeat_ms;
                let _ = self.matcher.set_online(mh, false);
                self.dirty.push(Dirty::Host(*host));
                let mut effects = Vec::new();
                if was_online {
                    effects.push(Effect::HostOffline {
                        host: *host,
                        last_heartbeat_ms,
                    });
                }
                let why =
                    "host lost: a quorum of checkers found it down; undelivered time is refunded";
                effects.extend(self.fail_leases_of(&[*host], why, now_ms));
                effects
            }
            _ => Vec::new(),
        }
    }

    /// Sets a host's service tier, which the matcher ranks and filters by.
    pub fn set_tier(&mut self, host: &Address, tier: u8) {
        let Some(h) = self.host_by_address(host) else {
            return;
        };
        let r = &mut self.hosts[h as usize].record;
        if r.tier != tier {
            r.tier = tier;
            let _ = self.matcher.set_tier(gpumesh_matcher::HostId(h), tier);
            self.dirty.push(Dirty::Host(*host));
        }
    }

    fn end_lease(
        &mut self,
        id: LeaseId,
        state: LeaseState,
        exit_code: Option<i64>,
        failure: Option<String>,
        now_ms: u64,
    ) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        debug_assert!(!lease.state.is_terminal());
        if lease.state == LeaseState::Matched {
            unfund(&mut self.unfunded, lease.buyer, lease.escrow);
        }
        shift(&mut self.in_state, Some(lease.state), Some(state));
        lease.state = state;
        lease.exit_code = exit_code;
        // A host's `finish` error among them: cut to a bound before it is stored.
        lease.failure = failure.map(|f| validate::cut(f, validate::MAX_HOST_TEXT));
        lease.ended_ms = Some(now_ms);
        self.ended.insert((now_ms, id));
        let deadline = std::mem::take(&mut lease.deadline_ms);
        self.deadlines.remove(&(deadline, id));
        self.dirty.push(Dirty::Lease(id));
        let host = lease.host;
        if let Some(live) = self.live_by_host.get_mut(&host) {
            live.remove(&id);
            if live.is_empty() {
                self.live_by_host.remove(&host);
            }
        }
        if let Some(reservation) = self.reservations.remove(&id) {
            self.reserved_for.remove(&reservation);
            // The lease held this reservation, so releasing it cannot fail.
            let released = self.matcher.release(reservation);
            debug_assert!(released.is_ok(), "{released:?}");
        }
    }

    /// Matches a job and reserves its GPUs; the lease waits for its escrow until the TTL.
    /// Matches a job for a buyer who funds escrows by other means (a deployment's
    /// replicas, funded by the protocol within the owner's allowance), and for tests:
    /// no balance is asked. Buyers' own jobs go through [`Registry::submit_job_within`].
    pub fn submit_job(
        &mut self,
        buyer: Address,
        job: gpumesh_types::JobRequest,
        now_ms: u64,
    ) -> Result<&LeaseRecord, RegistryError> {
        self.submit_job_within(buyer, job, None, now_ms)
    }

    /// Matches a job and reserves its GPUs for the match's time-to-live, only if the
    /// buyer's `spendable` balance (when given) covers its escrow on top of the escrows
    /// its other unfunded matches need: a key with no funds holds no GPUs, however many
    /// keys there are.
    pub fn submit_job_within(
        &mut self,
        buyer: Address,
        job: gpumesh_types::JobRequest,
        spendable: Option<Amount>,
        now_ms: u64,
    ) -> Result<&LeaseRecord, RegistryError> {
        validate::job(&job, &self.params)?;
        let pending = self.unfunded.get(&buyer).copied().unwrap_or_default();
        let held = pending.matches;
        if held >= self.params.max_unfunded_matches {
            return Err(RegistryError::invalid(
                ErrorCode::RateLimited,
                format!(
                    "{buyer} holds {held} matches it has not funded, the most allowed; fund or cancel them first"
                ),
            ));
        }
        let request = Request {
            gpu: job.gpu,
            count: job.gpu_count,
            min_vram_mib: job.min_vram_mib.unwrap_or(0),
            near: job.near,
            max_price_per_gpu_hour: job.max_price_per_gpu_hour,
            max_tier: job.max_tier.unwrap_or(3),
            countries: job.countries.clone(),
            exclude_countries: job.exclude_countries.clone(),
            max_rtt_ms: job.max_rtt_ms.map(f64::from),
            image: Some(job.image.clone()),
            image_policy: job.image_policy,
            policy: job.policy,
        };
        let expires = now_ms + self.params.match_ttl_ms;
        let booking = match self.matcher.book(&request, Some(expires)) {
            Ok(b) => b,
            Err(_) => {
                let why = self.matcher.explain(&request).describe(|h| {
                    let r = &self.hosts[h.0 as usize].record;
                    format!("{} in {}", r.name, r.location.country)
                });
                return Err(RegistryError::NoMatch(why));
            }
        };
        let host = &self.hosts[booking.host.0 as usize].record;
        let gpu_indices: Vec<u16> = booking.gpu_indices().collect();
        let model = host.gpus[gpu_indices[0] as usize].model;
        let escrow = gpumesh_ledger::escrow_amount(
            booking.price_per_gpu_hour,
            job.gpu_count,
            job.max_duration_ms,
        )
        .expect("validated price and duration keep the escrow in range");
        let needed = escrow.0.saturating_add(pending.escrow);
        if let Some(spendable) = spendable
            && needed > spendable.0
        {
            let _ = self.matcher.release(booking.reservation);
            return Err(RegistryError::invalid(
                ErrorCode::InsufficientFunds,
                format!(
                    "{buyer} has {spendable} base units; this match's escrow of {escrow} on top of {} held by its unfunded matches needs {needed}",
                    pending.escrow
                ),
            ));
        }
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let lease = LeaseRecord {
            id,
            buyer,
            host: host.address,
            gpu: model,
            gpu_count: job.gpu_count,
            gpu_indices,
            near: job.near,
            distance_km: booking.distance_km,
            rtt_ms: booking.rtt_ms,
            image: job.image,
            command: job.command,
            price_per_gpu_hour: booking.price_per_gpu_hour,
            max_duration_ms: job.max_duration_ms,
            escrow,
            state: LeaseState::Matched,
            created_ms: now_ms,
            matched_until_ms: expires,
            started_ms: None,
            ended_ms: None,
            exit_code: None,
            failure: None,
            cancel_requested: false,
            funded: false,
            deadline_ms: 0,
            ports: job.ports,
            env: job.env,
            health_check: job.health,
            endpoints: Vec::new(),
            health: None,
            health_detail: None,
            deployment: None,
            delivered_ms: None,
            image_user: false,
        };
        self.dirty.push(Dirty::Lease(id));
        hold_unfunded(&mut self.unfunded, buyer, escrow);
        self.reservations.insert(id, booking.reservation);
        self.reserved_for.insert(booking.reservation, id);
        self.live_by_host.entry(lease.host).or_default().insert(id);
        Ok(self.keep(lease))
    }
}

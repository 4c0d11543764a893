//! The registry: hosts and their containers, and every lease from match to end.
//!
//! A deterministic state machine (DESIGN.md §3) that the indexer drives under one lock and
//! the simulator can drive directly: every operation takes the current time as an
//! argument, changes nothing when it fails, and records which hosts and leases it changed
//! ([`Registry::take_dirty`]) so the caller can persist exactly those. Work that needs the
//! ledger (closing an escrow when a host is lost) comes back as [`Effect`]s.
//!
//! Containers go straight to standby on registration for now: capacity checks and stake
//! requirements gate them once checkers and staking exist.

mod lease;
mod validate;

use std::collections::{BTreeMap, HashMap};

use gpumesh_matcher::{Group, GroupId, Matcher, NoMatch, Request};
use gpumesh_types::{
    Address, Amount, Assignment, ContainerState, ContainerView, ErrorCode, GpuModel, Heartbeat,
    HostRegistered, HostWork, LeaseId, LeaseState, Location, RegisterHost, RuntimeKind,
};
use serde::{Deserialize, Serialize};

pub use lease::LeaseRecord;
pub use validate::{MAX_GPUS_PER_MODEL, MAX_PRICE_TOKENS};

/// Protocol parameters the registry enforces.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Params {
    /// A local network accepts simulated GPUs.
    pub local: bool,
    pub heartbeat_interval_ms: u64,
    /// Heartbeats a host may miss before it is offline (DESIGN.md §4: 3).
    pub missed_heartbeats: u32,
    /// How long a match holds capacity while the buyer funds the escrow.
    pub match_ttl_ms: u64,
    pub max_lease_duration_ms: u64,
    /// How often hosts must settle usage of running leases ("at least every minute").
    pub settle_interval_ms: u64,
}

impl Params {
    /// The public network's defaults (DESIGN.md §4).
    pub fn network() -> Params {
        Params {
            local: false,
            heartbeat_interval_ms: 60_000,
            missed_heartbeats: 3,
            match_ttl_ms: 30_000,
            max_lease_duration_ms: 7 * 24 * 3_600_000,
            settle_interval_ms: 30_000,
        }
    }

    /// A local network: simulated GPUs allowed, and faster clocks so that a lost host is
    /// noticed in seconds rather than minutes.
    pub fn local() -> Params {
        Params {
            local: true,
            heartbeat_interval_ms: 1_000,
            settle_interval_ms: 5_000,
            ..Params::network()
        }
    }

    fn offline_after_ms(&self) -> u64 {
        self.heartbeat_interval_ms * self.missed_heartbeats as u64
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
}

impl HostRecord {
    pub fn simulated(&self) -> bool {
        self.gpus.iter().any(|g| g.simulated)
    }
}

#[derive(Clone, Debug)]
struct Host {
    record: HostRecord,
    groups: Vec<GroupId>,
    last_heartbeat_ms: u64,
    online: bool,
}

/// A record the caller must persist because an operation changed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dirty {
    Host(Address),
    Lease(LeaseId),
}

/// Ledger work the caller must do on the registry's behalf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Close the lease's escrow without further charge and refund the rest to the buyer.
    CloseEscrow {
        lease: LeaseId,
        reason: gpumesh_types::CloseReason,
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
    #[error("{0}")]
    NoMatch(NoMatch),
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

/// Hosts, containers and leases.
#[derive(Debug)]
pub struct Registry {
    params: Params,
    hosts: Vec<Host>,
    by_address: HashMap<Address, u32>,
    matcher: Matcher,
    leases: BTreeMap<LeaseId, LeaseRecord>,
    next_lease: u64,
    dirty: Vec<Dirty>,
}

impl Registry {
    pub fn new(params: Params) -> Registry {
        Registry {
            params,
            hosts: Vec::new(),
            by_address: HashMap::new(),
            matcher: Matcher::new(),
            leases: BTreeMap::new(),
            next_lease: 1,
            dirty: Vec::new(),
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
            registry.insert_host(record, now_ms);
        }
        for lease in leases {
            if lease.state.holds_capacity() {
                let host = registry.host_by_address(&lease.host).ok_or_else(|| {
                    format!(
                        "lease {} names host {} which is not registered",
                        lease.id, lease.host
                    )
                })?;
                let group = registry.group_of(host, lease.gpu)?;
                registry
                    .matcher
                    .reserve_exact(group, &lease.gpu_indices)
                    .map_err(|e| format!("lease {} cannot hold its GPUs: {e:?}", lease.id))?;
            }
            registry.next_lease = registry.next_lease.max(lease.id.0 + 1);
            registry.leases.insert(lease.id, lease);
        }
        registry.dirty.clear();
        Ok(registry)
    }

    pub fn params(&self) -> &Params {
        &self.params
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

    pub fn leases(&self) -> impl Iterator<Item = &LeaseRecord> {
        self.leases.values()
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

    fn group_of(&self, host: u32, model: GpuModel) -> Result<GroupId, String> {
        self.hosts[host as usize]
            .groups
            .iter()
            .copied()
            .find(|g| self.matcher.group(*g).is_some_and(|g| g.model == model))
            .ok_or_else(|| {
                format!(
                    "host {} has no {model}",
                    self.hosts[host as usize].record.address
                )
            })
    }

    fn insert_host(&mut self, record: HostRecord, now_ms: u64) {
        let index = self.hosts.len() as u32;
        let mut by_model: BTreeMap<GpuModel, Vec<u16>> = BTreeMap::new();
        for (i, gpu) in record.gpus.iter().enumerate() {
            by_model.entry(gpu.model).or_default().push(i as u16);
        }
        let groups = by_model
            .into_iter()
            .map(|(model, indices)| {
                self.matcher.add(Group::new(
                    index,
                    model,
                    record.location.point,
                    record.location.country,
                    record.price_per_gpu_hour,
                    indices,
                ))
            })
            .collect();
        self.by_address.insert(record.address, index);
        self.hosts.push(Host {
            record,
            groups,
            last_heartbeat_ms: now_ms,
            online: true,
        });
    }

    /// Registers a host, or updates a known host's name, place, price and images.
    ///
    /// A known host must offer the same GPUs as before: a changed set is a new machine
    /// (DESIGN.md §4) and needs a new key.
    pub fn register_host(
        &mut self,
        address: Address,
        request: RegisterHost,
        now_ms: u64,
    ) -> Result<HostRegistered, RegistryError> {
        let gpus = validate::host(&request, self.params.local)?;
        let record = HostRecord {
            address,
            name: request.name,
            location: request.location,
            price_per_gpu_hour: request.price_per_gpu_hour,
            runtime: request.runtime,
            images: request.images,
            gpus,
            registered_ms: now_ms,
        };
        match self.host_by_address(&address) {
            None => self.insert_host(record, now_ms),
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
                let groups = host.groups.clone();
                self.matcher
                    .set_location(&groups, record.location.point, record.location.country);
                self.matcher.set_price(&groups, record.price_per_gpu_hour);
                self.matcher.set_online(&groups, true);
                let host = &mut self.hosts[index as usize];
                let registered_ms = host.record.registered_ms;
                host.record = HostRecord {
                    registered_ms,
                    ..record
                };
                host.last_heartbeat_ms = now_ms;
                host.online = true;
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
        let host = &mut self.hosts[index as usize];
        host.last_heartbeat_ms = host.last_heartbeat_ms.max(now_ms);
        if let Some(images) = beat.images {
            host.record.images = images;
            self.dirty.push(Dirty::Host(address));
        }
        if !host.online {
            host.online = true;
            let groups = host.groups.clone();
            self.matcher.set_online(&groups, true);
        }
        Ok(())
    }

    /// Every container, for listings.
    pub fn containers(&self) -> Vec<ContainerView> {
        let mut busy: HashMap<(Address, u16), ()> = HashMap::new();
        for lease in self.leases.values().filter(|l| l.state.holds_capacity()) {
            for &i in &lease.gpu_indices {
                busy.insert((lease.host, i), ());
            }
        }
        let mut out = Vec::with_capacity(self.container_count());
        for host in &self.hosts {
            let r = &host.record;
            for (i, gpu) in r.gpus.iter().enumerate() {
                let state = if !host.online {
                    ContainerState::Offline
                } else if busy.contains_key(&(r.address, i as u16)) {
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
                });
            }
        }
        out
    }

    /// Leases the host must start, and leases it must stop.
    pub fn work(&self, host: &Address) -> Result<HostWork, RegistryError> {
        self.host_by_address(host)
            .ok_or(RegistryError::UnknownHost(*host))?;
        let mut work = HostWork::default();
        for lease in self.leases.values().filter(|l| l.host == *host) {
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
        for host in &mut self.hosts {
            if host.online && now_ms.saturating_sub(host.last_heartbeat_ms) > offline_after {
                host.online = false;
                lost.push(host.record.address);
                let groups = host.groups.clone();
                self.matcher.set_online(&groups, false);
            }
        }
        let ids: Vec<LeaseId> = self.leases.keys().copied().collect();
        for id in ids {
            let lease = &self.leases[&id];
            let host_lost = lost.contains(&lease.host);
            match lease.state {
                LeaseState::Matched if now_ms > lease.matched_until_ms || host_lost => {
                    let why = if host_lost {
                        "host went offline before the escrow was funded"
                    } else {
                        "escrow was not funded before the match expired"
                    };
                    self.end_lease(id, LeaseState::Cancelled, None, Some(why.into()), now_ms);
                }
                LeaseState::Starting | LeaseState::Running if host_lost => {
                    let why = "host lost: it missed its heartbeats; undelivered time is refunded";
                    self.end_lease(id, LeaseState::Failed, None, Some(why.into()), now_ms);
                    effects.push(Effect::CloseEscrow {
                        lease: id,
                        reason: gpumesh_types::CloseReason::HostLost,
                    });
                }
                _ => {}
            }
        }
        effects
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
        let held = lease.state.holds_capacity();
        lease.state = state;
        lease.exit_code = exit_code;
        lease.failure = failure;
        lease.ended_ms = Some(now_ms);
        let (host, model, indices) = (lease.host, lease.gpu, lease.gpu_indices.clone());
        self.dirty.push(Dirty::Lease(id));
        if held
            && let Some(h) = self.host_by_address(&host)
            && let Ok(group) = self.group_of(h, model)
        {
            // The lease held exactly these GPUs, so releasing them cannot fail.
            let released = self.matcher.release(group, &indices);
            debug_assert!(released.is_ok(), "{released:?}");
        }
    }

    /// Matches a job and reserves its GPUs; the lease waits for its escrow until the TTL.
    pub fn submit_job(
        &mut self,
        buyer: Address,
        job: gpumesh_types::JobRequest,
        now_ms: u64,
    ) -> Result<&LeaseRecord, RegistryError> {
        validate::job(&job, &self.params)?;
        let request = Request {
            model: job.gpu,
            count: job.gpu_count,
            near: job.near,
            max_price_per_gpu_hour: job.max_price_per_gpu_hour,
        };
        let booking = self
            .matcher
            .book(&request)
            .map_err(RegistryError::NoMatch)?;
        let host = &self.hosts[booking.host as usize].record;
        let escrow = gpumesh_ledger::escrow_amount(
            booking.price_per_gpu_hour,
            job.gpu_count,
            job.max_duration_ms,
        )
        .expect("validated price and duration keep the escrow in range");
        let id = LeaseId(self.next_lease);
        self.next_lease += 1;
        let lease = LeaseRecord {
            id,
            buyer,
            host: host.address,
            gpu: job.gpu,
            gpu_count: job.gpu_count,
            gpu_indices: booking.gpu_indices,
            near: job.near,
            distance_km: booking.distance_km,
            image: job.image,
            command: job.command,
            price_per_gpu_hour: booking.price_per_gpu_hour,
            max_duration_ms: job.max_duration_ms,
            escrow,
            state: LeaseState::Matched,
            created_ms: now_ms,
            matched_until_ms: now_ms + self.params.match_ttl_ms,
            started_ms: None,
            ended_ms: None,
            exit_code: None,
            failure: None,
            cancel_requested: false,
            funded: false,
        };
        self.dirty.push(Dirty::Lease(id));
        Ok(self.leases.entry(id).or_insert(lease))
    }
}

//! Deployments (replicas of one service across regions, kept at the size the autoscaler
//! wants, re-placed when lost or unhealthy, funded period by period) and the sessions
//! they serve (docs/services.md).

use std::collections::BTreeMap;

use gpumesh_types::{
    Address, Amount, DeploymentId, DeploymentRequest, DeploymentState, DeploymentView, ErrorCode,
    GeoPoint, JobRequest, LeaseId, LeaseState, RegionView, RejectReason, ReplicaView, ScaleRequest,
    ServiceHealth, SessionId, SessionRequest, SessionState, SessionView,
};
use serde::{Deserialize, Serialize};

use crate::autoscale::{self, RegionLoad, ReplicaLoad};
use crate::{Dirty, Effect, Registry, RegistryError, validate};

/// Regions one deployment may name, and replicas one region may hold.
pub const MAX_REGIONS: usize = 16;
pub const MAX_REPLICAS_PER_REGION: u16 = 64;
/// Replicas placed per deployment per tick at most, so one deployment's burst cannot
/// hold the lock for long.
const PLACEMENTS_PER_TICK: usize = 4;
/// After a placement or a payment fails, the next attempt waits this long.
const RETRY_MS: u64 = 2_000;
/// The longest a session request may queue.
pub const MAX_QUEUE_MS: u64 = 60_000;
/// Deployments one owner may hold that are not stopped.
pub const MAX_DEPLOYMENTS_PER_OWNER: usize = 64;
/// Sessions one deployment may hold queued at once.
pub const MAX_QUEUED_PER_DEPLOYMENT: usize = 10_000;

/// A region of a deployment as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RegionState {
    pub spec: gpumesh_types::RegionSpec,
    pub desired: u16,
    /// When the autoscaler last changed its size (the recent ones only).
    pub changes: Vec<u64>,
}

/// One replica: a lease of the deployment in a region.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    pub lease: LeaseId,
    pub region: u16,
    pub sessions: u16,
    pub served: u64,
    pub idle_since_ms: Option<u64>,
    /// Asked to stop (scaled down, unhealthy, the deployment stopped): no longer counts.
    pub retiring: bool,
}

/// A deployment as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: DeploymentId,
    pub owner: Address,
    pub spec: DeploymentRequest,
    pub state: DeploymentState,
    pub created_ms: u64,
    pub regions: Vec<RegionState>,
    pub replicas: Vec<Replica>,
    pub replicas_started: u64,
    pub replacements: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    pub sessions_served: u64,
    pub sessions_rejected: u64,
    /// Rejected sessions by reason.
    pub rejected_by_reason: BTreeMap<String, u64>,
    pub notice: Option<String>,
    /// No placement or top-up is tried before this, after one failed.
    pub retry_at_ms: u64,
}

/// A session as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub deployment: DeploymentId,
    pub state: SessionState,
    pub near: GeoPoint,
    pub max_rtt_ms: u32,
    /// The region nearest the player: where its demand counts.
    pub region: u16,
    pub created_ms: u64,
    pub queued_until_ms: u64,
    pub replica: Option<LeaseId>,
    pub rtt_ms: Option<f64>,
    pub assigned_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub rejected: Option<RejectReason>,
}

/// A replica a session could take.
struct Candidate {
    rtt_ms: f64,
    sessions: u16,
    lease: LeaseId,
}

impl Candidate {
    /// The lower estimated round trip, then fewer sessions, then the lower lease id.
    fn better_than(&self, other: &Candidate) -> bool {
        self.rtt_ms
            .total_cmp(&other.rtt_ms)
            .then(self.sessions.cmp(&other.sessions))
            .then(self.lease.cmp(&other.lease))
            .is_lt()
    }
}

fn invalid(code: ErrorCode, message: impl Into<String>) -> RegistryError {
    RegistryError::Invalid {
        code,
        message: message.into(),
    }
}

impl Registry {
    fn deployment_of(
        &self,
        owner: &Address,
        id: DeploymentId,
    ) -> Result<&DeploymentRecord, RegistryError> {
        let d = self.deployments.get(&id).ok_or_else(|| {
            invalid(
                ErrorCode::UnknownDeployment,
                format!("deployment {id} does not exist"),
            )
        })?;
        if d.owner != *owner {
            return Err(invalid(
                ErrorCode::NotYourDeployment,
                format!("deployment {id} belongs to another owner"),
            ));
        }
        Ok(d)
    }

    /// The job one replica of a deployment asks for in a region.
    fn replica_job(spec: &DeploymentRequest, region: &gpumesh_types::RegionSpec) -> JobRequest {
        let mut job = JobRequest::new(
            spec.gpu,
            spec.gpu_count,
            region.near,
            spec.max_price_per_gpu_hour,
            spec.period_ms,
            &spec.image,
            spec.command.clone(),
        );
        job.countries = region.country.into_iter().collect();
        job.max_rtt_ms = region.max_rtt_ms;
        job.ports = spec.ports.clone();
        job.env = spec.env.clone();
        job.health = spec.health.clone();
        job
    }

    /// Creates a deployment. Its replicas are placed by the tick once the owner allows
    /// the protocol to fund them (a `TxKind::Allow` for this deployment's id).
    pub fn create_deployment(
        &mut self,
        owner: Address,
        spec: DeploymentRequest,
        now_ms: u64,
    ) -> Result<DeploymentId, RegistryError> {
        if spec.regions.is_empty() || spec.regions.len() > MAX_REGIONS {
            return Err(invalid(
                ErrorCode::InvalidRegion,
                format!("a deployment names 1 to {MAX_REGIONS} regions"),
            ));
        }
        for (i, r) in spec.regions.iter().enumerate() {
            let named = !r.name.is_empty()
                && r.name.len() <= 64
                && r.name.chars().all(|c| c.is_ascii_graphic());
            if !named || spec.regions[..i].iter().any(|o| o.name == r.name) {
                return Err(invalid(
                    ErrorCode::InvalidRegion,
                    format!("region name {:?} is empty, too long or given twice", r.name),
                ));
            }
            r.near.validate().map_err(|e| {
                invalid(ErrorCode::InvalidRegion, format!("region {}: {e}", r.name))
            })?;
            if r.country.is_some_and(|c| !c.is_assigned()) {
                return Err(invalid(
                    ErrorCode::InvalidRegion,
                    format!("region {} names no assigned country", r.name),
                ));
            }
            bounds(&r.name, r.min, r.max)?;
        }
        if spec.period_ms < 10_000 || spec.period_ms > self.params.max_lease_duration_ms {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!(
                    "the period must be 10 s to {} s",
                    self.params.max_lease_duration_ms / 1_000
                ),
            ));
        }
        if spec.sessions_per_replica > 1_000 {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "a replica serves at most 1000 sessions",
            ));
        }
        // Each replica is a job: the same checks, region by region.
        for r in &spec.regions {
            validate::job(&Self::replica_job(&spec, r), &self.params)?;
        }
        let held = self
            .deployments
            .values()
            .filter(|d| d.owner == owner && d.state != DeploymentState::Stopped)
            .count();
        if held >= MAX_DEPLOYMENTS_PER_OWNER {
            return Err(invalid(
                ErrorCode::RateLimited,
                format!("{owner} holds {held} deployments, the most allowed; stop one first"),
            ));
        }
        let id = DeploymentId(self.next_deployment);
        self.next_deployment += 1;
        let regions = spec
            .regions
            .iter()
            .map(|r| RegionState {
                spec: r.clone(),
                desired: r.min,
                changes: Vec::new(),
            })
            .collect();
        self.deployments.insert(
            id,
            DeploymentRecord {
                id,
                owner,
                spec,
                state: DeploymentState::Active,
                created_ms: now_ms,
                regions,
                replicas: Vec::new(),
                replicas_started: 0,
                replacements: 0,
                scale_ups: 0,
                scale_downs: 0,
                sessions_served: 0,
                sessions_rejected: 0,
                rejected_by_reason: BTreeMap::new(),
                notice: None,
                retry_at_ms: 0,
            },
        );
        self.dirty.push(Dirty::Deployment(id));
        Ok(id)
    }

    /// New bounds for one region; the autoscaler moves within them.
    pub fn scale_deployment(
        &mut self,
        owner: &Address,
        id: DeploymentId,
        scale: &ScaleRequest,
    ) -> Result<(), RegistryError> {
        let d = self.deployment_of(owner, id)?;
        if d.state == DeploymentState::Stopped {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!("deployment {id} is stopped"),
            ));
        }
        let Some(region) = d.regions.iter().position(|r| r.spec.name == scale.region) else {
            return Err(invalid(
                ErrorCode::InvalidRegion,
                format!(
                    "deployment {id} has no region {:?}; it has {}",
                    scale.region,
                    d.regions
                        .iter()
                        .map(|r| r.spec.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        };
        bounds(&scale.region, scale.min, scale.max)?;
        let d = self.deployments.get_mut(&id).expect("looked up above");
        let r = &mut d.regions[region];
        r.spec.min = scale.min;
        r.spec.max = scale.max;
        r.desired = r.desired.clamp(scale.min, scale.max);
        self.dirty.push(Dirty::Deployment(id));
        Ok(())
    }

    /// Stops a deployment: every replica is cancelled (the effects close the escrows of
    /// those not started) and every session ends.
    pub fn stop_deployment(
        &mut self,
        owner: &Address,
        id: DeploymentId,
        now_ms: u64,
    ) -> Result<Vec<Effect>, RegistryError> {
        self.deployment_of(owner, id)?;
        let d = self.deployments.get_mut(&id).expect("looked up above");
        d.state = DeploymentState::Stopped;
        d.notice = Some("stopped by its owner".into());
        for r in &mut d.regions {
            r.desired = 0;
        }
        let leases: Vec<LeaseId> = d
            .replicas
            .iter_mut()
            .filter(|r| !r.retiring)
            .map(|r| {
                r.retiring = true;
                r.lease
            })
            .collect();
        self.dirty.push(Dirty::Deployment(id));
        let mut effects = Vec::new();
        for lease in leases {
            self.end_sessions_on(lease, RejectReason::DeploymentStopped, now_ms);
            effects.extend(self.retire(owner, lease, now_ms));
        }
        let queued: Vec<SessionId> = self.queued_of(id).collect();
        for s in queued {
            self.reject_session(s, RejectReason::DeploymentStopped, now_ms);
        }
        Ok(effects)
    }

    /// Cancels a replica's lease as its owner would; returns the escrow effects.
    fn retire(&mut self, owner: &Address, lease: LeaseId, now_ms: u64) -> Vec<Effect> {
        match self.cancel(owner, lease, now_ms) {
            Ok((_, effects)) => effects,
            // Already ended, or already asked to stop: nothing more to do.
            Err(_) => Vec::new(),
        }
    }

    /// Keeps every deployment at its size: drops ended replicas (counting losses as
    /// replacements), retires unhealthy ones and those above the size wanted, asks the
    /// autoscaler, places what is missing and tops up escrows that near their end.
    /// `spendable` says what the ledger lets the protocol spend on a deployment now (the
    /// owner's allowance, capped by the balance): nothing is placed or topped up that it
    /// cannot pay. Returns the ledger work.
    pub fn deployments_tick(
        &mut self,
        now_ms: u64,
        spendable: &dyn Fn(Address, DeploymentId) -> Amount,
    ) -> Vec<Effect> {
        let mut effects = Vec::new();
        let ids: Vec<DeploymentId> = self
            .deployments
            .iter()
            .filter(|(_, d)| d.state != DeploymentState::Stopped || !d.replicas.is_empty())
            .map(|(id, _)| *id)
            .collect();
        self.assign_queued(now_ms);
        for id in ids {
            self.sweep_replicas(id, now_ms, &mut effects);
            if self.deployments[&id].state == DeploymentState::Stopped {
                continue;
            }
            self.autoscale(id, now_ms, &mut effects);
            let owner = self.deployments[&id].owner;
            let mut funds = spendable(owner, id);
            self.top_up(id, now_ms, &mut funds, &mut effects);
            self.place(id, now_ms, &mut funds, &mut effects);
        }
        effects
    }

    fn sweep_replicas(&mut self, id: DeploymentId, now_ms: u64, effects: &mut Vec<Effect>) {
        let d = &self.deployments[&id];
        let owner = d.owner;
        let underfunded = d.state == DeploymentState::Underfunded;
        let mut ended = Vec::new();
        let mut unhealthy = Vec::new();
        for r in &d.replicas {
            let Some(lease) = self.leases.get(&r.lease) else {
                ended.push((r.lease, r.retiring));
                continue;
            };
            // A replica that never passed its check within the grace (and two more
            // checks) counts as unhealthy, whether or not its host says so.
            let never_ready = lease.health == Some(ServiceHealth::Pending)
                && match (&lease.health_check, lease.started_ms) {
                    (Some(check), Some(started)) => {
                        now_ms > started + check.grace_ms + 2 * check.interval_ms
                    }
                    _ => false,
                };
            if lease.state.is_terminal() {
                ended.push((r.lease, r.retiring));
            } else if !r.retiring && (lease.health == Some(ServiceHealth::Unhealthy) || never_ready)
            {
                unhealthy.push(r.lease);
            }
        }
        if ended.is_empty() && unhealthy.is_empty() {
            return;
        }
        for &(lease, retiring) in &ended {
            self.end_sessions_on(lease, RejectReason::ReplicaLost, now_ms);
            let d = self.deployments.get_mut(&id).expect("listed");
            d.replicas.retain(|r| r.lease != lease);
            // A replica that ended at the end of its paid period, while the owner could
            // not pay for the next, was wound down, not lost.
            if !retiring && !underfunded {
                d.replacements += 1;
            }
        }
        for lease in unhealthy {
            self.end_sessions_on(lease, RejectReason::ReplicaLost, now_ms);
            let d = self.deployments.get_mut(&id).expect("listed");
            if let Some(r) = d.replicas.iter_mut().find(|r| r.lease == lease) {
                r.retiring = true;
            }
            d.replacements += 1;
            effects.extend(self.retire(&owner, lease, now_ms));
        }
        self.dirty.push(Dirty::Deployment(id));
    }

    fn autoscale(&mut self, id: DeploymentId, now_ms: u64, effects: &mut Vec<Effect>) {
        let d = &self.deployments[&id];
        let owner = d.owner;
        let slots = d.spec.sessions_per_replica;
        let policy = self.autoscale_policy;
        let mut queued = vec![0u32; d.regions.len()];
        for s in self.queued_of(id) {
            queued[self.sessions[&s].region as usize] += 1;
        }
        let mut decisions = Vec::with_capacity(d.regions.len());
        for (i, region) in d.regions.iter().enumerate() {
            let replicas: Vec<ReplicaLoad> = d
                .replicas
                .iter()
                .filter(|r| r.region as usize == i && !r.retiring)
                .map(|r| ReplicaLoad {
                    id: r.lease.0,
                    sessions: r.sessions,
                    ready: self.serving(r.lease),
                    idle_since_ms: r.idle_since_ms,
                })
                .collect();
            let load = RegionLoad {
                min: region.spec.min,
                max: region.spec.max,
                desired: region.desired,
                replicas,
                queued: queued[i],
                slots_per_replica: slots,
            };
            let decision = if slots == 0 {
                // Without sessions there is no demand to follow: the minimum it is.
                autoscale::Decision {
                    desired: region.spec.min,
                    remove: Vec::new(),
                }
            } else {
                autoscale::decide(&load, &policy, &region.changes, now_ms)
            };
            decisions.push(decision);
        }
        let mut retire = Vec::new();
        let mut changed = false;
        let d = self.deployments.get_mut(&id).expect("listed");
        for (region, decision) in d.regions.iter_mut().zip(decisions) {
            let before = region.desired;
            if decision.desired == before && decision.remove.is_empty() {
                continue;
            }
            changed = true;
            if decision.desired > before {
                d.scale_ups += (decision.desired - before) as u64;
            }
            d.scale_downs += decision.remove.len() as u64;
            let moves = decision
                .desired
                .abs_diff(before)
                .max(decision.remove.len() as u16);
            region
                .changes
                .extend(std::iter::repeat_n(now_ms, moves as usize));
            let keep_after = now_ms.saturating_sub(policy.interval_ms);
            region.changes.retain(|&t| t > keep_after);
            region.desired = decision.desired;
            for lease in decision.remove {
                let lease = LeaseId(lease);
                if let Some(r) = d.replicas.iter_mut().find(|r| r.lease == lease) {
                    r.retiring = true;
                    retire.push(lease);
                }
            }
        }
        // More replicas than wanted (the owner lowered the bounds): the extra ones go,
        // those starting or holding the fewest sessions first, then the newest.
        let mut excess = Vec::new();
        for (i, region) in d.regions.iter().enumerate() {
            let mut live: Vec<&Replica> = d
                .replicas
                .iter()
                .filter(|r| r.region as usize == i && !r.retiring)
                .collect();
            let over = live.len().saturating_sub(region.desired as usize);
            if over == 0 {
                continue;
            }
            live.sort_by_key(|r| {
                (
                    r.sessions,
                    self.leases
                        .get(&r.lease)
                        .is_some_and(|l| l.state == LeaseState::Running),
                    std::cmp::Reverse(r.lease),
                )
            });
            excess.extend(live.iter().take(over).map(|r| r.lease));
        }
        for lease in &excess {
            if let Some(r) = d.replicas.iter_mut().find(|r| r.lease == *lease) {
                r.retiring = true;
            }
        }
        if !excess.is_empty() {
            d.scale_downs += excess.len() as u64;
            changed = true;
        }
        if changed {
            self.dirty.push(Dirty::Deployment(id));
        }
        for lease in excess {
            self.end_sessions_on(lease, RejectReason::ReplicaLost, now_ms);
            effects.extend(self.retire(&owner, lease, now_ms));
        }
        for lease in retire {
            effects.extend(self.retire(&owner, lease, now_ms));
        }
    }

    /// Whether a replica serves sessions: running, and healthy when it has a check.
    fn serving(&self, lease: LeaseId) -> bool {
        self.leases.get(&lease).is_some_and(|l| {
            l.state == LeaseState::Running
                && l.health.is_none_or(|h| h == ServiceHealth::Ready)
                && !l.cancel_requested
        })
    }

    fn place(
        &mut self,
        id: DeploymentId,
        now_ms: u64,
        funds: &mut Amount,
        effects: &mut Vec<Effect>,
    ) {
        let d = &self.deployments[&id];
        // An underfunded deployment tries again after a pause: a new replica's first
        // period is paid before it starts, so trying never runs anything unpaid.
        if d.state == DeploymentState::Stopped || now_ms < d.retry_at_ms {
            return;
        }
        let owner = d.owner;
        let mut wanted = Vec::new();
        for (i, region) in d.regions.iter().enumerate() {
            let live = d
                .replicas
                .iter()
                .filter(|r| r.region as usize == i && !r.retiring)
                .count() as u16;
            for _ in live..region.desired {
                wanted.push(i);
            }
        }
        let mut notice = None;
        let mut placed = 0;
        for region in wanted.into_iter().take(PLACEMENTS_PER_TICK) {
            let d = &self.deployments[&id];
            let job = Self::replica_job(&d.spec, &d.regions[region].spec);
            let name = d.regions[region].spec.name.clone();
            // Matched only when a period at the price cap can be paid: a match that its
            // escrow then fails would hold a host for nothing.
            let most = gpumesh_ledger::escrow_amount(
                job.max_price_per_gpu_hour,
                job.gpu_count,
                job.max_duration_ms,
            )
            .unwrap_or(Amount(u128::MAX));
            if *funds < most {
                let d = self.deployments.get_mut(&id).expect("listed");
                if d.state != DeploymentState::Underfunded {
                    self.underfunded(
                        id,
                        &format!(
                            "a new replica's period costs up to {} tokens and the allowance (or the balance) leaves {}",
                            most.tokens(),
                            funds.tokens()
                        ),
                        now_ms,
                    );
                }
                return;
            }
            match self.submit_job(owner, job, now_ms) {
                Ok(lease) => {
                    let lease = lease.id;
                    let l = self.leases.get_mut(&lease).expect("just made");
                    l.deployment = Some(id);
                    *funds = Amount(funds.0.saturating_sub(l.escrow.0));
                    effects.push(Effect::FundReplica {
                        deployment: id,
                        owner,
                        lease,
                        host: l.host,
                        price_per_gpu_hour: l.price_per_gpu_hour,
                        gpus: l.gpu_count,
                        max_duration_ms: l.max_duration_ms,
                        amount: l.escrow,
                    });
                    let d = self.deployments.get_mut(&id).expect("listed");
                    d.replicas.push(Replica {
                        lease,
                        region: region as u16,
                        sessions: 0,
                        served: 0,
                        idle_since_ms: Some(now_ms),
                        retiring: false,
                    });
                    d.replicas_started += 1;
                    placed += 1;
                }
                Err(e) => {
                    notice = Some(format!("region {name}: {e}"));
                    break;
                }
            }
        }
        let d = self.deployments.get_mut(&id).expect("listed");
        if let Some(notice) = notice {
            d.notice = Some(notice);
            d.retry_at_ms = now_ms + RETRY_MS;
            self.dirty.push(Dirty::Deployment(id));
        } else if placed > 0 {
            d.notice = None;
            self.dirty.push(Dirty::Deployment(id));
        }
    }

    /// Asks the ledger to top up every running replica whose paid time ends within half
    /// a period.
    fn top_up(
        &mut self,
        id: DeploymentId,
        now_ms: u64,
        funds: &mut Amount,
        effects: &mut Vec<Effect>,
    ) {
        let d = &self.deployments[&id];
        if now_ms < d.retry_at_ms {
            return;
        }
        let period = d.spec.period_ms;
        let mut short = None;
        for r in d.replicas.iter().filter(|r| !r.retiring) {
            let Some(lease) = self.leases.get(&r.lease) else {
                continue;
            };
            let Some(started) = lease.started_ms else {
                continue;
            };
            if lease.state != LeaseState::Running || lease.cancel_requested {
                continue;
            }
            let paid_until = started + lease.max_duration_ms;
            if paid_until > now_ms + period / 2 {
                continue;
            }
            let Some(amount) =
                gpumesh_ledger::escrow_amount(lease.price_per_gpu_hour, lease.gpu_count, period)
            else {
                continue;
            };
            if *funds < amount {
                short = Some((amount, *funds));
                continue;
            }
            *funds = Amount(funds.0 - amount.0);
            effects.push(Effect::ExtendReplica {
                deployment: id,
                owner: d.owner,
                lease: r.lease,
                extra_ms: period,
                amount,
            });
        }
        if let Some((amount, left)) = short {
            self.underfunded(
                id,
                &format!(
                    "a period costs {} tokens and the allowance (or the balance) leaves {}",
                    amount.tokens(),
                    left.tokens()
                ),
                now_ms,
            );
        }
    }

    /// The protocol funded a new replica: it may start, and the deployment is paid for.
    pub fn replica_funded(
        &mut self,
        id: DeploymentId,
        lease: LeaseId,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        self.escrow_opened(lease, now_ms)?;
        if let Some(d) = self.deployments.get_mut(&id)
            && d.state == DeploymentState::Underfunded
        {
            d.state = DeploymentState::Active;
            d.notice = None;
            self.dirty.push(Dirty::Deployment(id));
        }
        Ok(())
    }

    /// The protocol could not fund a new replica (the owner's allowance or balance is
    /// short): the match ends, and the deployment waits.
    pub fn replica_unfunded(&mut self, id: DeploymentId, lease: LeaseId, why: &str, now_ms: u64) {
        if self
            .leases
            .get(&lease)
            .is_some_and(|l| !l.state.is_terminal())
        {
            self.end_lease(
                lease,
                LeaseState::Cancelled,
                None,
                Some(format!("the deployment's owner could not fund it: {why}")),
                now_ms,
            );
        }
        if let Some(d) = self.deployments.get_mut(&id) {
            d.replicas.retain(|r| r.lease != lease);
            d.replicas_started = d.replicas_started.saturating_sub(1);
            self.underfunded(id, why, now_ms);
        }
    }

    /// A replica's escrow was topped up by `extra_ms`: its lease runs that much longer.
    pub fn extended(&mut self, lease: LeaseId, extra_ms: u64, amount: gpumesh_types::Amount) {
        let Some(l) = self.leases.get_mut(&lease) else {
            return;
        };
        l.max_duration_ms += extra_ms;
        l.escrow = gpumesh_types::Amount(l.escrow.0 + amount.0);
        let deadline = l
            .started_ms
            .map(|s| s + l.max_duration_ms + self.params.end_grace_ms);
        let deployment = l.deployment;
        self.dirty.push(Dirty::Lease(lease));
        if let Some(at) = deadline {
            self.set_deadline(lease, at);
        }
        if let Some(d) = deployment.and_then(|id| self.deployments.get_mut(&id))
            && d.state == DeploymentState::Underfunded
        {
            d.state = DeploymentState::Active;
            d.notice = None;
            self.dirty.push(Dirty::Deployment(d.id));
        }
    }

    /// A top-up failed: no new replica is placed, and running ones stop at the end of
    /// the period they are paid for.
    pub fn underfunded(&mut self, id: DeploymentId, why: &str, now_ms: u64) {
        let Some(d) = self.deployments.get_mut(&id) else {
            return;
        };
        d.state = DeploymentState::Underfunded;
        d.notice = Some(format!(
            "the next period cannot be paid ({why}); replicas stop at the end of the period they are paid for. Raise the allowance (gpumesh deployment allow) or the balance to resume"
        ));
        d.retry_at_ms = now_ms + RETRY_MS;
        self.dirty.push(Dirty::Deployment(id));
    }

    /// Ends the sessions on a replica that is going away.
    fn end_sessions_on(&mut self, lease: LeaseId, why: RejectReason, now_ms: u64) {
        let ids: Vec<SessionId> = self.sessions_by_replica.remove(&lease).unwrap_or_default();
        for s in ids {
            if self
                .sessions
                .get(&s)
                .is_some_and(|x| x.state == SessionState::Active)
            {
                self.close_session(s, SessionState::Ended, Some(why), now_ms);
            }
        }
    }

    /// Opens a session on a replica with a free slot within the bound, the lowest
    /// estimated round trip first; queues it when asked to and none fits.
    pub fn request_session(
        &mut self,
        owner: &Address,
        request: &SessionRequest,
        now_ms: u64,
    ) -> Result<SessionId, RegistryError> {
        let d = self.deployment_of(owner, request.deployment)?;
        if d.spec.sessions_per_replica == 0 {
            return Err(invalid(
                ErrorCode::NoSessions,
                format!("deployment {} takes no sessions", request.deployment),
            ));
        }
        if d.state == DeploymentState::Stopped {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!("deployment {} is stopped", request.deployment),
            ));
        }
        request
            .near
            .validate()
            .map_err(|e| invalid(ErrorCode::InvalidLocation, e.to_string()))?;
        if request.max_rtt_ms == 0 || request.max_rtt_ms > 10_000 {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                "round-trip bound must be 1 to 10000 ms",
            ));
        }
        if request.queue_ms > MAX_QUEUE_MS {
            return Err(invalid(
                ErrorCode::InvalidRequest,
                format!("a session queues for at most {} s", MAX_QUEUE_MS / 1_000),
            ));
        }
        if request.queue_ms > 0 {
            let queued = self.queued_of(request.deployment).count();
            if queued >= MAX_QUEUED_PER_DEPLOYMENT {
                return Err(invalid(
                    ErrorCode::RateLimited,
                    format!(
                        "deployment {} has {queued} sessions queued, the most allowed",
                        request.deployment
                    ),
                ));
            }
        }
        let region = d
            .regions
            .iter()
            .enumerate()
            .min_by(|a, b| {
                let da = request.near.distance_km(&a.1.spec.near);
                let db = request.near.distance_km(&b.1.spec.near);
                da.total_cmp(&db)
            })
            .map_or(0, |(i, _)| i as u16);
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            SessionRecord {
                id,
                deployment: request.deployment,
                state: SessionState::Queued,
                near: request.near,
                max_rtt_ms: request.max_rtt_ms,
                region,
                created_ms: now_ms,
                queued_until_ms: now_ms + request.queue_ms,
                replica: None,
                rtt_ms: None,
                assigned_ms: None,
                ended_ms: None,
                rejected: None,
            },
        );
        self.dirty.push(Dirty::Session(id));
        match self.try_assign(id, now_ms) {
            Ok(()) => {}
            Err(_) if request.queue_ms > 0 => {
                self.queued.insert((request.deployment, id));
            }
            Err(why) => self.reject_session(id, why, now_ms),
        }
        Ok(id)
    }

    /// Places a session on the best replica, or says why none fits.
    fn try_assign(&mut self, id: SessionId, now_ms: u64) -> Result<(), RejectReason> {
        let session = &self.sessions[&id];
        let d = &self.deployments[&session.deployment];
        let slots = d.spec.sessions_per_replica;
        let latency = *self.matcher.latency();
        let mut in_bound = false;
        let mut best: Option<Candidate> = None;
        for r in d.replicas.iter().filter(|r| !r.retiring) {
            if !self.serving(r.lease) {
                continue;
            }
            let Some(host) = self.leases.get(&r.lease).and_then(|l| self.host(&l.host)) else {
                continue;
            };
            let rtt = latency.geo_rtt_ms(session.near.distance_km(&host.location.point));
            if rtt > session.max_rtt_ms as f64 {
                continue;
            }
            in_bound = true;
            if r.sessions >= slots {
                continue;
            }
            let candidate = Candidate {
                rtt_ms: rtt,
                sessions: r.sessions,
                lease: r.lease,
            };
            if best.as_ref().is_none_or(|b| candidate.better_than(b)) {
                best = Some(candidate);
            }
        }
        let Some(Candidate {
            rtt_ms: rtt, lease, ..
        }) = best
        else {
            return Err(if in_bound {
                RejectReason::AllFull
            } else {
                RejectReason::NoReplicaInBound
            });
        };
        let deployment = session.deployment;
        let d = self
            .deployments
            .get_mut(&deployment)
            .expect("looked up above");
        let r = d
            .replicas
            .iter_mut()
            .find(|r| r.lease == lease)
            .expect("chosen above");
        r.sessions += 1;
        r.served += 1;
        r.idle_since_ms = None;
        d.sessions_served += 1;
        let session = self.sessions.get_mut(&id).expect("looked up above");
        session.state = SessionState::Active;
        session.replica = Some(lease);
        session.rtt_ms = Some(rtt);
        session.assigned_ms = Some(now_ms);
        self.sessions_by_replica.entry(lease).or_default().push(id);
        self.queued.remove(&(deployment, id));
        self.dirty.push(Dirty::Session(id));
        self.dirty.push(Dirty::Deployment(deployment));
        Ok(())
    }

    fn reject_session(&mut self, id: SessionId, why: RejectReason, now_ms: u64) {
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        self.queued.remove(&(session.deployment, id));
        let deployment = session.deployment;
        self.close_session(id, SessionState::Rejected, Some(why), now_ms);
        if let Some(d) = self.deployments.get_mut(&deployment) {
            d.sessions_rejected += 1;
            *d.rejected_by_reason.entry(format!("{why:?}")).or_default() += 1;
            self.dirty.push(Dirty::Deployment(deployment));
        }
    }

    /// Gives queued sessions the slots that opened; those past their wait are rejected
    /// with the reason that still holds.
    fn assign_queued(&mut self, now_ms: u64) {
        let queued: Vec<SessionId> = self.queued.iter().map(|&(_, s)| s).collect();
        for id in queued {
            if let Err(why) = self.try_assign(id, now_ms)
                && self.sessions[&id].queued_until_ms <= now_ms
            {
                self.reject_session(id, why, now_ms);
            }
        }
    }

    /// The player left: the slot is free again.
    pub fn end_session(
        &mut self,
        owner: &Address,
        id: SessionId,
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        let session = self.sessions.get(&id).ok_or_else(|| {
            invalid(
                ErrorCode::UnknownSession,
                format!("session {id} does not exist"),
            )
        })?;
        self.deployment_of(owner, session.deployment)?;
        match session.state {
            SessionState::Active => {}
            SessionState::Queued => {
                self.queued.remove(&(session.deployment, id));
                self.close_session(id, SessionState::Ended, None, now_ms);
                return Ok(());
            }
            _ => return Ok(()),
        }
        let (deployment, replica) = (session.deployment, session.replica);
        self.close_session(id, SessionState::Ended, None, now_ms);
        if let Some(lease) = replica {
            if let Some(list) = self.sessions_by_replica.get_mut(&lease) {
                list.retain(|s| *s != id);
            }
            if let Some(r) = self
                .deployments
                .get_mut(&deployment)
                .and_then(|d| d.replicas.iter_mut().find(|r| r.lease == lease))
            {
                r.sessions = r.sessions.saturating_sub(1);
                if r.sessions == 0 {
                    r.idle_since_ms = Some(now_ms);
                }
                self.dirty.push(Dirty::Deployment(deployment));
            }
        }
        Ok(())
    }

    /// The deployment's queued sessions, oldest first.
    fn queued_of(&self, id: DeploymentId) -> impl Iterator<Item = SessionId> + '_ {
        self.queued
            .range((id, SessionId(0))..=(id, SessionId(u64::MAX)))
            .map(|&(_, s)| s)
    }

    pub fn deployment(&self, id: DeploymentId) -> Option<&DeploymentRecord> {
        self.deployments.get(&id)
    }

    /// Every session, in id order.
    pub fn sessions(&self) -> impl Iterator<Item = &SessionRecord> {
        self.sessions.values()
    }

    pub fn session(&self, id: SessionId) -> Option<&SessionRecord> {
        self.sessions.get(&id)
    }

    /// Gives new sessions ids from `next` on at the least: archived sessions' ids are
    /// never given again.
    pub fn reserve_session_ids(&mut self, next: u64) {
        self.next_session = self.next_session.max(next);
    }

    /// Ends a session (`Ended` or `Rejected`, with why when given) at `now_ms`, and
    /// indexes it by its end: every way a session ends comes through here.
    fn close_session(
        &mut self,
        id: SessionId,
        state: SessionState,
        why: Option<RejectReason>,
        now_ms: u64,
    ) {
        debug_assert!(state.is_terminal());
        let Some(session) = self.sessions.get_mut(&id) else {
            return;
        };
        session.state = state;
        session.ended_ms = Some(now_ms);
        if why.is_some() {
            session.rejected = why;
        }
        self.ended_sessions.insert((now_ms, id));
        self.dirty.push(Dirty::Session(id));
    }

    /// Ended sessions in memory that ended before `before_ms`, oldest first.
    pub fn sessions_ended_before(&self, before_ms: u64) -> impl Iterator<Item = SessionId> + '_ {
        self.ended_sessions
            .range(..(before_ms, SessionId(0)))
            .map(|&(_, id)| id)
    }

    /// Takes an ended session out of memory; a live one, or one not in memory, stays.
    /// An ended session is in no queue and on no replica's list.
    pub fn forget_session(&mut self, id: SessionId) -> Option<SessionRecord> {
        let s = self.sessions.get(&id)?;
        if !s.state.is_terminal() {
            return None;
        }
        if let Some(at) = s.ended_ms {
            self.ended_sessions.remove(&(at, id));
        }
        self.sessions.remove(&id)
    }

    /// Every deployment, in id order.
    pub fn deployments(&self) -> impl Iterator<Item = &DeploymentRecord> {
        self.deployments.values()
    }

    pub fn deployment_view(&self, id: DeploymentId) -> Option<DeploymentView> {
        let d = self.deployments.get(&id)?;
        let regions = d
            .regions
            .iter()
            .enumerate()
            .map(|(i, r)| RegionView {
                name: r.spec.name.clone(),
                near: r.spec.near,
                min: r.spec.min,
                max: r.spec.max,
                desired: r.desired,
                live: d
                    .replicas
                    .iter()
                    .filter(|x| x.region as usize == i && !x.retiring)
                    .count() as u16,
                queued_sessions: self
                    .queued_of(id)
                    .filter(|s| self.sessions[s].region as usize == i)
                    .count() as u32,
            })
            .collect();
        let replicas = d
            .replicas
            .iter()
            .filter_map(|r| {
                let l = self.leases.get(&r.lease)?;
                Some(ReplicaView {
                    lease: r.lease,
                    region: d.regions[r.region as usize].spec.name.clone(),
                    host: l.host,
                    state: l.state,
                    health: l.health,
                    endpoints: l.endpoints.clone(),
                    sessions: r.sessions,
                    sessions_served: r.served,
                })
            })
            .collect();
        Some(DeploymentView {
            id,
            owner: d.owner,
            state: d.state,
            image: d.spec.image.clone(),
            gpu: d.spec.gpu,
            gpu_count: d.spec.gpu_count,
            ports: d.spec.ports.clone(),
            period_ms: d.spec.period_ms,
            sessions_per_replica: d.spec.sessions_per_replica,
            max_price_per_gpu_hour: d.spec.max_price_per_gpu_hour,
            regions,
            replicas,
            created_ms: d.created_ms,
            replicas_started: d.replicas_started,
            replacements: d.replacements,
            scale_ups: d.scale_ups,
            scale_downs: d.scale_downs,
            sessions_served: d.sessions_served,
            sessions_rejected: d.sessions_rejected,
            notice: d.notice.clone(),
        })
    }

    pub fn session_view(&self, id: SessionId) -> Option<SessionView> {
        let s = self.sessions.get(&id)?;
        let endpoints = s
            .replica
            .and_then(|l| self.leases.get(&l))
            .map(|l| l.endpoints.clone())
            .unwrap_or_default();
        Some(SessionView {
            id,
            deployment: s.deployment,
            state: s.state,
            max_rtt_ms: s.max_rtt_ms,
            created_ms: s.created_ms,
            queued_until_ms: s.queued_until_ms,
            replica: s.replica,
            endpoints,
            rtt_ms: s.rtt_ms,
            assigned_ms: s.assigned_ms,
            ended_ms: s.ended_ms,
            rejected: s.rejected,
        })
    }

    /// Puts stored deployments and sessions back (after [`Registry::restore`]).
    pub fn restore_services(
        &mut self,
        deployments: impl IntoIterator<Item = DeploymentRecord>,
        sessions: impl IntoIterator<Item = SessionRecord>,
    ) {
        for d in deployments {
            self.next_deployment = self.next_deployment.max(d.id.0 + 1);
            self.deployments.insert(d.id, d);
        }
        for s in sessions {
            self.next_session = self.next_session.max(s.id.0 + 1);
            if let Some(at) = s.ended_ms.filter(|_| s.state.is_terminal()) {
                self.ended_sessions.insert((at, s.id));
            }
            match (s.state, s.replica) {
                (SessionState::Queued, _) => {
                    self.queued.insert((s.deployment, s.id));
                }
                (SessionState::Active, Some(lease)) => {
                    self.sessions_by_replica
                        .entry(lease)
                        .or_default()
                        .push(s.id);
                }
                _ => {}
            }
            self.sessions.insert(s.id, s);
        }
    }
}

fn bounds(region: &str, min: u16, max: u16) -> Result<(), RegistryError> {
    if min > max || max > MAX_REPLICAS_PER_REGION {
        return Err(invalid(
            ErrorCode::InvalidRegion,
            format!(
                "region {region}: replicas {min}-{max} must have min ≤ max ≤ {MAX_REPLICAS_PER_REGION}"
            ),
        ));
    }
    Ok(())
}

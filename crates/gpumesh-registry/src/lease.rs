//! The lease lifecycle: funding, start, end, cancellation, and how a lease is shown.

use gpumesh_types::{
    Address, Amount, DeploymentId, Endpoint, EnvVar, GeoPoint, GpuModel, HealthCheck, LeaseId,
    LeaseState, LeaseView, PortSpec, ServiceHealth, SettlementView, TxKind,
};
use serde::{Deserialize, Serialize};

use crate::{Dirty, Effect, Registry, RegistryError};

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub id: LeaseId,
    pub buyer: Address,
    pub host: Address,
    pub gpu: GpuModel,
    pub gpu_count: u16,
    pub gpu_indices: Vec<u16>,
    pub near: GeoPoint,
    pub distance_km: f64,
    #[serde(default)]
    pub rtt_ms: f64,
    pub image: String,
    pub command: Vec<String>,
    pub price_per_gpu_hour: Amount,
    pub max_duration_ms: u64,
    pub escrow: Amount,
    pub state: LeaseState,
    pub created_ms: u64,
    pub matched_until_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub failure: Option<String>,
    pub cancel_requested: bool,
    /// The buyer's escrow is open in the ledger.
    pub funded: bool,
    /// While funded and live: when the lease must have moved on at the latest (started
    /// by then when starting, ended by then when running); the protocol ends it past
    /// this. 0 otherwise.
    #[serde(default)]
    pub deadline_ms: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSpec>,
    /// Given to the host that runs the lease, never shown.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// Reported by the host with the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// For a lease with a health check, once running: what the host last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ServiceHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
    /// The deployment this lease is a replica of (funded by the protocol from the
    /// owner's allowance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<DeploymentId>,
    /// On a checked network, once running: the start of the last period whose delivery
    /// check a quorum passed (the start itself until one has). Usage is billable up to
    /// the delivery window past it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
    /// The workload runs as its image's own user, which its host allows (from the start
    /// report).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_user: bool,
}

/// How long after its start a service without a health check has before checkers
/// expect it to answer (one with a check has its check's grace).
pub const SERVICE_GRACE_MS: u64 = 30_000;

/// What a period's checkers saw of a running lease's delivery
/// ([`Registry::delivery_seen`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliverySeen {
    Passed,
    /// No majority either way, or no results.
    Unknown,
    /// A majority failed it, with their most common reason.
    Failed(gpumesh_types::FailReason),
}

impl LeaseRecord {
    /// When checkers begin to check this running lease's delivery: at its start for a
    /// batch job; for a service once its host reports it ready, and at the latest when
    /// its health check's grace (or [`SERVICE_GRACE_MS`]) is over, so a service that is
    /// still loading is not failed and one that never answers is not spared.
    pub fn delivery_checked_from(&self) -> Option<u64> {
        let start = self.started_ms?;
        if self.ports.is_empty() {
            return Some(start);
        }
        let grace = self
            .health_check
            .as_ref()
            .map_or(SERVICE_GRACE_MS, |h| h.grace_ms);
        Some(start.saturating_add(grace))
    }

    /// Whether checkers should check this lease's delivery at `now_ms`.
    pub fn delivery_due(&self, now_ms: u64) -> bool {
        self.state == LeaseState::Running
            && (self.health == Some(ServiceHealth::Ready)
                || self.delivery_checked_from().is_some_and(|at| now_ms >= at))
    }

    /// How checkers probe this lease's delivery: a service at its first published TCP
    /// endpoint (the health check's path when it has an HTTP one), a batch job through
    /// its agent's signed statement.
    pub fn delivery_probe(&self) -> gpumesh_types::DeliveryProbe {
        let probed_port = self.health_check.as_ref().and_then(|h| h.port).or_else(|| {
            self.ports
                .iter()
                .find(|p| p.protocol == gpumesh_types::Protocol::Tcp)
                .map(|p| p.port)
        });
        let endpoint = self.endpoints.iter().find(|e| {
            Some(e.port.port) == probed_port && e.port.protocol == gpumesh_types::Protocol::Tcp
        });
        let service = endpoint.map(|e| match self.health_check.as_ref().map(|h| &h.probe) {
            Some(gpumesh_types::Probe::Http(path)) => format!("http://{}{path}", e.address),
            _ => format!("tcp://{}", e.address),
        });
        gpumesh_types::DeliveryProbe {
            lease: self.id,
            service,
        }
    }

    /// The most GPU-milliseconds billable at `now_ms` by what checkers saw delivered:
    /// its GPUs × (the last passed check, or when checks begin if later, + `window_ms` −
    /// the start) + `slack_ms` per GPU,
    /// and never past now. `None` when delivery is not checked (no checkers on this
    /// network) or the lease has not started.
    pub fn delivered_gpu_ms(&self, now_ms: u64, window_ms: u64, slack_ms: u64) -> Option<u64> {
        let (start, delivered) = (self.started_ms?, self.delivered_ms?);
        // Before checks begin (a service's grace) nothing can have been seen failing.
        let seen = delivered.max(self.delivery_checked_from().unwrap_or(start));
        let until = now_ms.min(seen.saturating_add(window_ms));
        let elapsed = until.saturating_sub(start).saturating_add(slack_ms);
        Some((self.gpu_count as u64).saturating_mul(elapsed))
    }
}

impl Registry {
    fn lease_for(&self, id: LeaseId) -> Result<&LeaseRecord, RegistryError> {
        self.leases.get(&id).ok_or(RegistryError::UnknownLease(id))
    }

    fn lease_of_host(&self, host: &Address, id: LeaseId) -> Result<&LeaseRecord, RegistryError> {
        let lease = self.lease_for(id)?;
        if lease.host != *host {
            return Err(RegistryError::NotYours {
                lease: id,
                role: "host",
            });
        }
        Ok(lease)
    }

    /// Checks that an `OpenEscrow` transaction funds this matched lease on its exact terms.
    pub fn check_escrow(
        &self,
        tx_from: Address,
        kind: &TxKind,
        now_ms: u64,
    ) -> Result<LeaseId, RegistryError> {
        let TxKind::OpenEscrow {
            lease,
            host,
            price_per_gpu_hour,
            gpus,
            max_duration_ms,
            amount,
        } = kind
        else {
            return Err(RegistryError::invalid(
                gpumesh_types::ErrorCode::InvalidTransaction,
                "not an OpenEscrow transaction",
            ));
        };
        let record = self.lease_for(*lease)?;
        if record.buyer != tx_from {
            return Err(RegistryError::NotYours {
                lease: *lease,
                role: "buyer",
            });
        }
        if record.state != LeaseState::Matched || now_ms >= record.matched_until_ms {
            let state = record.state;
            return Err(RegistryError::InvalidState {
                lease: *lease,
                state,
                action: "fund its escrow (the match is no longer held)",
            });
        }
        let terms_match = record.host == *host
            && record.price_per_gpu_hour == *price_per_gpu_hour
            && record.gpu_count == *gpus
            && record.max_duration_ms == *max_duration_ms
            && record.escrow == *amount;
        if !terms_match {
            return Err(RegistryError::invalid(
                gpumesh_types::ErrorCode::InvalidTransaction,
                format!(
                    "escrow terms differ from lease {lease}'s: host {}, price {}, {} GPUs, {} ms, escrow {}",
                    record.host,
                    record.price_per_gpu_hour,
                    record.gpu_count,
                    record.max_duration_ms,
                    record.escrow
                ),
            ));
        }
        Ok(*lease)
    }

    pub(crate) fn set_deadline(&mut self, id: LeaseId, at_ms: u64) {
        let Some(lease) = self.leases.get_mut(&id) else {
            return;
        };
        self.deadlines.remove(&(lease.deadline_ms, id));
        lease.deadline_ms = at_ms;
        self.deadlines.insert((at_ms, id));
    }

    /// The escrow is open: the host may start the workload, within the start timeout.
    pub fn escrow_opened(&mut self, id: LeaseId, now_ms: u64) -> Result<(), RegistryError> {
        let lease = self
            .leases
            .get_mut(&id)
            .ok_or(RegistryError::UnknownLease(id))?;
        if lease.state != LeaseState::Matched {
            return Err(RegistryError::InvalidState {
                lease: id,
                state: lease.state,
                action: "fund its escrow",
            });
        }
        crate::shift(
            &mut self.in_state,
            Some(lease.state),
            Some(LeaseState::Starting),
        );
        lease.state = LeaseState::Starting;
        lease.funded = true;
        crate::unfund(&mut self.unfunded, lease.buyer, lease.escrow);
        self.dirty.push(Dirty::Lease(id));
        // Funded: the GPUs stay reserved until the lease ends, not until the match's TTL.
        if let Some(&reservation) = self.reservations.get(&id) {
            let committed = self.matcher.commit(reservation);
            debug_assert!(committed.is_ok(), "{committed:?}");
        }
        self.set_deadline(id, now_ms + self.params.start_timeout_ms);
        Ok(())
    }

    /// The host started the workload, and says where its published ports are reached.
    /// Repeating it is harmless. Returns whether this report started the lease (the
    /// ledger then records the start: billable time runs from it).
    pub fn started(
        &mut self,
        host: &Address,
        id: LeaseId,
        report: impl Into<gpumesh_types::LeaseStarted>,
        now_ms: u64,
    ) -> Result<bool, RegistryError> {
        let gpumesh_types::LeaseStarted {
            endpoints,
            image_user,
        } = report.into();
        let lease = self.lease_of_host(host, id)?;
        // Outside a local network a service must be served from the host checkers reach
        // (its challenge endpoint's host): otherwise a host could name any public server
        // as its endpoint and pass delivery checks with nothing running.
        let served_from = (!self.params.local)
            .then(|| self.host(host).and_then(|h| h.challenge_url.as_deref()))
            .flatten()
            .and_then(|u| url::Url::parse(u).ok())
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        let on_host = |address: &str| match &served_from {
            None => true,
            Some(expected) => url::Url::parse(&format!("tcp://{address}"))
                .ok()
                .and_then(|u| u.host_str().map(str::to_ascii_lowercase))
                .is_some_and(|h| h == *expected),
        };
        let published = endpoints.len() == lease.ports.len()
            && endpoints.iter().all(|e| {
                lease.ports.contains(&e.port)
                    && !e.address.is_empty()
                    && e.address.len() <= 256
                    && e.address.chars().all(|c| c.is_ascii_graphic())
                    && on_host(&e.address)
            });
        if !published {
            return Err(RegistryError::invalid(
                gpumesh_types::ErrorCode::InvalidPort,
                format!(
                    "lease {id} publishes {} port(s); the start must give one endpoint (host:port) for each, on the host checkers reach the agent at",
                    lease.ports.len()
                ),
            ));
        }
        match lease.state {
            LeaseState::Running => Ok(false),
            LeaseState::Starting => {
                let lease = self.leases.get_mut(&id).expect("looked up above");
                crate::shift(
                    &mut self.in_state,
                    Some(LeaseState::Starting),
                    Some(LeaseState::Running),
                );
                lease.state = LeaseState::Running;
                lease.started_ms = Some(now_ms);
                lease.delivered_ms = self.params.checked.then_some(now_ms);
                lease.endpoints = endpoints;
                lease.image_user = image_user;
                lease.health = lease.health_check.as_ref().map(|_| ServiceHealth::Pending);
                let end_by = now_ms + lease.max_duration_ms + self.params.end_grace_ms;
                self.dirty.push(Dirty::Lease(id));
                self.set_deadline(id, end_by);
                Ok(true)
            }
            state => Err(RegistryError::InvalidState {
                lease: id,
                state,
                action: "start",
            }),
        }
    }

    /// The host reports a change of a running service's health. Returns whether it
    /// changed.
    pub fn health_report(
        &mut self,
        host: &Address,
        id: LeaseId,
        healthy: bool,
        detail: Option<String>,
    ) -> Result<bool, RegistryError> {
        let lease = self.lease_of_host(host, id)?;
        if lease.state != LeaseState::Running || lease.health_check.is_none() {
            return Err(RegistryError::InvalidState {
                lease: id,
                state: lease.state,
                action: "report health (only a running lease with a health check has it)",
            });
        }
        let health = if healthy {
            ServiceHealth::Ready
        } else {
            ServiceHealth::Unhealthy
        };
        let detail = detail.map(|d| crate::validate::cut(d, crate::validate::MAX_HEALTH_DETAIL));
        let lease = self.leases.get_mut(&id).expect("looked up above");
        let changed = lease.health != Some(health);
        lease.health = Some(health);
        lease.health_detail = detail;
        self.dirty.push(Dirty::Lease(id));
        Ok(changed)
    }

    /// Checks that the host may report the end of this lease.
    pub fn check_finish(&self, host: &Address, id: LeaseId) -> Result<(), RegistryError> {
        let lease = self.lease_of_host(host, id)?;
        match lease.state {
            LeaseState::Starting | LeaseState::Running => Ok(()),
            state => Err(RegistryError::InvalidState {
                lease: id,
                state,
                action: "finish",
            }),
        }
    }

    /// The workload ended (or could not start). Frees its GPUs.
    pub fn finished(
        &mut self,
        host: &Address,
        id: LeaseId,
        exit_code: Option<i64>,
        error: Option<String>,
        now_ms: u64,
    ) -> Result<LeaseState, RegistryError> {
        self.check_finish(host, id)?;
        let lease = &self.leases[&id];
        let state = if lease.cancel_requested {
            LeaseState::Cancelled
        } else if exit_code.is_none() {
            LeaseState::Failed
        } else {
            LeaseState::Completed
        };
        let failure = match (&error, state) {
            (Some(e), _) => Some(e.clone()),
            (None, LeaseState::Failed) => Some("the host reported no exit status".into()),
            _ => None,
        };
        self.end_lease(id, state, exit_code, failure, now_ms);
        Ok(state)
    }

    /// The buyer cancels. A lease whose workload has not started ends at once (a funded
    /// one with its escrow closed and refunded: the effect); a running lease asks its host
    /// to stop, and ends when the host reports the final usage, or at the end grace.
    pub fn cancel(
        &mut self,
        buyer: &Address,
        id: LeaseId,
        now_ms: u64,
    ) -> Result<(LeaseState, Vec<Effect>), RegistryError> {
        let lease = self.lease_for(id)?;
        if lease.buyer != *buyer {
            return Err(RegistryError::NotYours {
                lease: id,
                role: "buyer",
            });
        }
        match lease.state {
            LeaseState::Matched | LeaseState::Starting => {
                let funded = lease.funded;
                self.end_lease(
                    id,
                    LeaseState::Cancelled,
                    None,
                    Some("cancelled by the buyer before the workload started".into()),
                    now_ms,
                );
                let effects = if funded {
                    vec![Effect::CloseEscrow {
                        lease: id,
                        reason: gpumesh_types::CloseReason::NotStarted,
                    }]
                } else {
                    Vec::new()
                };
                Ok((LeaseState::Cancelled, effects))
            }
            LeaseState::Running => {
                let lease = self.leases.get_mut(&id).expect("looked up above");
                lease.cancel_requested = true;
                let grace_over = now_ms + self.params.end_grace_ms;
                let end_by = match lease.deadline_ms {
                    0 => grace_over,
                    deadline => grace_over.min(deadline),
                };
                self.dirty.push(Dirty::Lease(id));
                self.set_deadline(id, end_by);
                Ok((LeaseState::Running, Vec::new()))
            }
            state => Err(RegistryError::InvalidState {
                lease: id,
                state,
                action: "cancel",
            }),
        }
    }

    /// Refuses usage above what checkers saw delivered ([`LeaseRecord::delivered_gpu_ms`]).
    pub fn check_delivered_usage(
        &self,
        records: &[gpumesh_types::UsageRecord],
        now_ms: u64,
        slack_ms: u64,
    ) -> Result<(), RegistryError> {
        for r in records {
            let Some(lease) = self.leases.get(&r.lease) else {
                continue;
            };
            if let Some(bound) =
                lease.delivered_gpu_ms(now_ms, self.params.delivery_window_ms, slack_ms)
                && r.gpu_ms > bound
            {
                return Err(RegistryError::invalid(
                    gpumesh_types::ErrorCode::UsageExceedsDelivered,
                    format!(
                        "usage of lease {} ({} GPU-ms) exceeds what checkers saw delivered: at most {bound} GPU-ms are billable now",
                        r.lease, r.gpu_ms
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What a period's checkers saw of a running lease's delivery.
    ///
    /// - Passed: its delivered time moves to the period's start, and its host's quality
    ///   counts an up.
    /// - Unknown (no quorum either way): its delivered time moves too, since nobody saw
    ///   it fail; an honest host is never held back by checkers that did not decide.
    /// - Failed: it ends `failed`, its escrow closes with what was not settled refunded,
    ///   and its host's quality counts a down. Its GPUs are slashed for downtime while
    ///   serving only when the agent itself failed (did not answer, or answered with
    ///   another key's signature): a buyer's service that stops answering, or a job its
    ///   agent says is not running, is refunded without slashing the host, since a buyer
    ///   could otherwise have an honest host slashed by deploying a service that goes
    ///   quiet.
    ///
    /// A verdict about a lease no longer running changes nothing.
    pub fn delivery_seen(
        &mut self,
        id: LeaseId,
        seen: DeliverySeen,
        period_start_ms: u64,
        now_ms: u64,
    ) -> Vec<Effect> {
        let Some(lease) = self.leases.get(&id) else {
            return Vec::new();
        };
        if lease.state != LeaseState::Running {
            return Vec::new();
        }
        let host = lease.host;
        if seen != DeliverySeen::Unknown
            && let Some(h) = self.host_by_address(&host)
        {
            let r = &mut self.hosts[h as usize].record;
            if seen == DeliverySeen::Passed {
                r.up_verdicts += 1;
            } else {
                r.down_verdicts += 1;
            }
            if r.up_verdicts + r.down_verdicts > crate::QUALITY_WINDOW {
                r.up_verdicts /= 2;
                r.down_verdicts /= 2;
            }
            self.dirty.push(Dirty::Host(host));
        }
        let lease = self.leases.get_mut(&id).expect("looked up above");
        let reason = match seen {
            DeliverySeen::Passed | DeliverySeen::Unknown => {
                if let Some(d) = lease.delivered_ms.as_mut()
                    && period_start_ms > *d
                {
                    *d = period_start_ms;
                    self.dirty.push(Dirty::Lease(id));
                }
                return Vec::new();
            }
            DeliverySeen::Failed(reason) => reason,
        };
        let (model, indices) = (lease.gpu, lease.gpu_indices.clone());
        let last_heartbeat_ms = self
            .host_by_address(&host)
            .map_or(0, |h| self.hosts[h as usize].last_heartbeat_ms);
        let why = format!(
            "a quorum of checkers found the lease not delivered ({}); what was not settled is refunded",
            reason.describe()
        );
        self.end_lease(id, LeaseState::Failed, None, Some(why), now_ms);
        let mut effects = vec![Effect::CloseEscrow {
            lease: id,
            reason: gpumesh_types::CloseReason::Undelivered,
        }];
        let agent_failed = matches!(
            reason,
            gpumesh_types::FailReason::Unreachable | gpumesh_types::FailReason::BadSignature
        );
        if agent_failed {
            effects.extend(indices.into_iter().map(|index| Effect::SlashDowntime {
                host,
                index,
                model,
                lease: id,
                last_heartbeat_ms,
            }));
        }
        effects
    }

    /// Reconciliation's repair: ends a live lease that the ledger no longer backs (its
    /// escrow closed or missing). Returns whether it was live.
    pub fn end_unbacked(&mut self, id: LeaseId, why: &str, now_ms: u64) -> bool {
        let Some(lease) = self.leases.get(&id) else {
            return false;
        };
        if lease.state.is_terminal() {
            return false;
        }
        self.end_lease(id, LeaseState::Failed, None, Some(why.into()), now_ms);
        true
    }

    /// The lease as the API shows it, with its settlement when the escrow is open.
    pub fn view(&self, id: LeaseId, settlement: Option<SettlementView>) -> Option<LeaseView> {
        let l = self.leases.get(&id)?;
        let host = self.host(&l.host)?;
        Some(LeaseView {
            id: l.id,
            state: l.state,
            buyer: l.buyer,
            host: l.host,
            host_name: host.name.clone(),
            host_location: host.location,
            distance_km: l.distance_km,
            rtt_ms: l.rtt_ms,
            gpu: l.gpu,
            gpu_count: l.gpu_count,
            simulated: host.simulated(),
            runtime: host.runtime,
            image: l.image.clone(),
            price_per_gpu_hour: l.price_per_gpu_hour,
            max_duration_ms: l.max_duration_ms,
            escrow: l.escrow,
            created_ms: l.created_ms,
            matched_until_ms: l.matched_until_ms,
            started_ms: l.started_ms,
            ended_ms: l.ended_ms,
            exit_code: l.exit_code,
            failure: l.failure.clone(),
            cancel_requested: l.cancel_requested,
            settlement,
            endpoints: l.endpoints.clone(),
            env_names: l.env.iter().map(|v| v.name.clone()).collect(),
            health: l.health,
            health_detail: l.health_detail.clone(),
            image_user: l.image_user,
            health_check: l.health_check.clone(),
            deployment: l.deployment,
            delivered_ms: l.delivered_ms,
        })
    }
}

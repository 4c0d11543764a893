//! Services: workloads reached over the network (published ports, environment, health
//! checks), deployments of many such leases across regions, and the sessions a
//! deployment serves (docs/services.md).

use alloy_primitives::Address;
use serde::{Deserialize, Serialize};

use crate::{Amount, Country, GeoPoint, GpuSelector, LeaseId};

/// A transport protocol of a published port.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    #[default]
    Tcp,
    Udp,
}

/// A port the workload listens on inside its container, to be published on the host.
/// On the wire and the command line `8080`, `8080/tcp` or `5000/udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    pub port: u16,
    pub protocol: Protocol,
}

impl std::fmt::Display for PortSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.protocol {
            Protocol::Tcp => write!(f, "{}/tcp", self.port),
            Protocol::Udp => write!(f, "{}/udp", self.port),
        }
    }
}

/// Why a port, an environment variable, a health check or a region is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ServiceSyntaxError(pub String);

impl std::str::FromStr for PortSpec {
    type Err = ServiceSyntaxError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (number, protocol) = match s.split_once('/') {
            None => (s, Protocol::Tcp),
            Some((n, "tcp")) => (n, Protocol::Tcp),
            Some((n, "udp")) => (n, Protocol::Udp),
            Some((_, other)) => {
                return Err(ServiceSyntaxError(format!(
                    "port {s:?}: protocol {other:?} is neither tcp nor udp"
                )));
            }
        };
        let port: u32 = number.trim().parse().map_err(|_| {
            ServiceSyntaxError(format!(
                "port {s:?} is not PORT[/tcp|/udp] (for example 8080 or 5000/udp)"
            ))
        })?;
        let port = u16::try_from(port)
            .map_err(|_| ServiceSyntaxError(format!("port {port} is above 65535")))?;
        Ok(PortSpec { port, protocol })
    }
}

impl Serialize for PortSpec {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// An environment variable for the workload. Its value may be a secret: it is never
/// logged (`Debug` hides it) and no listing shows it; only the host running the lease
/// receives it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

impl std::fmt::Debug for EnvVar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}=<{} bytes hidden>", self.name, self.value.len())
    }
}

impl std::str::FromStr for EnvVar {
    type Err = ServiceSyntaxError;

    /// `KEY=VALUE`; the name is checked by the registry.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, value) = s.split_once('=').ok_or_else(|| {
            ServiceSyntaxError("an environment variable is KEY=VALUE".to_string())
        })?;
        Ok(EnvVar {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

/// What a health check asks of the service.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Probe {
    /// An HTTP GET of this path answers 2xx or 3xx.
    Http(String),
    /// A TCP connection is accepted.
    Tcp,
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Probe::Http(path) => write!(f, "http:{path}"),
            Probe::Tcp => f.write_str("tcp"),
        }
    }
}

impl std::str::FromStr for Probe {
    type Err = ServiceSyntaxError;

    /// `http:/path` or `tcp`; the path is checked by the registry.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "tcp" => Ok(Probe::Tcp),
            _ => match s.strip_prefix("http:") {
                Some(path) => Ok(Probe::Http(path.to_string())),
                None => Err(ServiceSyntaxError(format!(
                    "health check {s:?} is neither http:/PATH nor tcp"
                ))),
            },
        }
    }
}

impl Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How the host agent decides a service is ready and stays healthy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// `http:/path` or `tcp`.
    #[schema(value_type = String)]
    pub probe: Probe,
    /// The container port probed; the first published TCP port when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: u64,
    /// How long after the start the service has to pass its first check.
    #[serde(default = "default_grace_ms")]
    pub grace_ms: u64,
    /// Failed checks in a row, once ready, that make it unhealthy.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

fn default_interval_ms() -> u64 {
    2_000
}

fn default_grace_ms() -> u64 {
    30_000
}

fn default_failures() -> u32 {
    3
}

impl HealthCheck {
    pub fn new(probe: Probe) -> HealthCheck {
        HealthCheck {
            probe,
            port: None,
            interval_ms: default_interval_ms(),
            grace_ms: default_grace_ms(),
            failures: default_failures(),
        }
    }
}

/// Where a published port is reached: the host's advertised address and the host port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Endpoint {
    /// The container port.
    #[schema(value_type = String)]
    pub port: PortSpec,
    /// `host:port`.
    pub address: String,
}

/// A service's health as its host last reported it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ServiceHealth {
    /// No check has passed yet.
    #[default]
    Pending,
    /// Its health check passes (or it has none and runs).
    Ready,
    /// Its health check stopped passing, or never passed within its grace.
    Unhealthy,
}

/// `POST /v1/leases/{id}/health`: the host reports a change of a service's health.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthReport {
    pub healthy: bool,
    /// What the last check saw, for the buyer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

id_type!(
    /// A deployment's identifier.
    DeploymentId
);

/// Where a deployment's replicas run: near a point (a country's, or one given), in that
/// country only when one is named, within a round trip of it when one is given, between
/// `min` and `max` replicas.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    /// How the owner named it: `DE` or `48.1,11.6`.
    pub name: String,
    pub near: GeoPoint,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub country: Option<Country>,
    pub min: u16,
    pub max: u16,
    /// Replicas are placed only on hosts within this estimated round trip of `near`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rtt_ms: Option<u32>,
}

/// `POST /v1/deployments`: replicas of one service across regions, each a lease of its
/// own, funded period by period from the owner's balance under an allowance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentRequest {
    pub gpu: GpuSelector,
    pub gpu_count: u16,
    pub image: String,
    #[serde(default)]
    pub command: Vec<String>,
    #[serde(default)]
    #[schema(value_type = Vec<String>)]
    pub ports: Vec<PortSpec>,
    #[serde(default)]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
    pub regions: Vec<RegionSpec>,
    pub max_price_per_gpu_hour: Amount,
    /// Each replica's escrow covers one period and is topped up a period at a time.
    pub period_ms: u64,
    /// Sessions one replica serves at once; 0: the deployment takes no sessions.
    #[serde(default)]
    pub sessions_per_replica: u16,
}

/// Where a deployment stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentState {
    Active,
    /// The owner's balance or allowance cannot cover the next period: replicas are
    /// being wound down.
    Underfunded,
    Stopped,
}

/// One replica as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReplicaView {
    pub lease: LeaseId,
    pub region: String,
    pub host: Address,
    pub state: crate::LeaseState,
    pub health: Option<ServiceHealth>,
    pub endpoints: Vec<Endpoint>,
    /// Sessions it holds now, and has served in all.
    pub sessions: u16,
    pub sessions_served: u64,
}

/// One region of a deployment as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RegionView {
    pub name: String,
    pub near: GeoPoint,
    pub min: u16,
    pub max: u16,
    /// Replicas the autoscaler wants now.
    pub desired: u16,
    pub live: u16,
    pub queued_sessions: u32,
}

/// `GET /v1/deployments/{id}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeploymentView {
    pub id: DeploymentId,
    pub owner: Address,
    pub state: DeploymentState,
    pub image: String,
    pub gpu: GpuSelector,
    pub gpu_count: u16,
    #[schema(value_type = Vec<String>)]
    pub ports: Vec<PortSpec>,
    pub period_ms: u64,
    pub sessions_per_replica: u16,
    pub max_price_per_gpu_hour: Amount,
    pub regions: Vec<RegionView>,
    pub replicas: Vec<ReplicaView>,
    pub created_ms: u64,
    /// Replicas started in all, re-placed after a loss, and added and removed by the
    /// autoscaler.
    pub replicas_started: u64,
    pub replacements: u64,
    pub scale_ups: u64,
    pub scale_downs: u64,
    pub sessions_served: u64,
    pub sessions_rejected: u64,
    /// Why the deployment is not at its desired size, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notice: Option<String>,
}

/// `POST /v1/deployments/{id}/scale`: new bounds for one region.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScaleRequest {
    pub region: String,
    pub min: u16,
    pub max: u16,
}

id_type!(
    /// A session's identifier.
    SessionId
);

/// `POST /v1/sessions`: the deployment's owner (its matchmaker) asks for a slot for a
/// player near a point, within a round-trip bound.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    pub deployment: DeploymentId,
    pub near: GeoPoint,
    pub max_rtt_ms: u32,
    /// How long the request may wait in the queue for a slot; 0: answer at once.
    #[serde(default)]
    pub queue_ms: u64,
}

/// Where a session stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Waiting for a slot within its bound.
    Queued,
    Active,
    Ended,
    Rejected,
}

impl SessionState {
    /// Ended or rejected: nothing more happens to it.
    pub fn is_terminal(self) -> bool {
        matches!(self, SessionState::Ended | SessionState::Rejected)
    }
}

/// Why a session got no slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// No ready replica is within the round-trip bound.
    NoReplicaInBound,
    /// Replicas within the bound are all full.
    AllFull,
    /// Its replica ended.
    ReplicaLost,
    /// The deployment stopped.
    DeploymentStopped,
}

impl RejectReason {
    /// The wire name, as in JSON.
    pub fn code(self) -> &'static str {
        match self {
            RejectReason::NoReplicaInBound => "no_replica_in_bound",
            RejectReason::AllFull => "all_full",
            RejectReason::ReplicaLost => "replica_lost",
            RejectReason::DeploymentStopped => "deployment_stopped",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            RejectReason::NoReplicaInBound => "no ready replica is within the round-trip bound",
            RejectReason::AllFull => "every replica within the round-trip bound is full",
            RejectReason::ReplicaLost => "the session's replica ended",
            RejectReason::DeploymentStopped => "the deployment stopped",
        }
    }
}

/// `GET /v1/sessions/{id}`. Public, so it does not show where the player is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SessionView {
    pub id: SessionId,
    pub deployment: DeploymentId,
    pub state: SessionState,
    pub max_rtt_ms: u32,
    pub created_ms: u64,
    /// Until when a queued session waits.
    pub queued_until_ms: u64,
    pub replica: Option<LeaseId>,
    /// The replica's endpoints, once assigned.
    pub endpoints: Vec<Endpoint>,
    /// Estimated round-trip time from the player to the replica's host.
    pub rtt_ms: Option<f64>,
    pub assigned_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub rejected: Option<RejectReason>,
}

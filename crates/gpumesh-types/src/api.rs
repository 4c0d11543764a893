//! Requests and responses of the indexer's HTTP API, and its error format.
//!
//! Every mutating request carries the signature headers of [`crate::auth`]. Times are Unix
//! milliseconds; amounts are base-unit strings ([`Amount`]).

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

use crate::{
    Amount, Country, Endpoint, EnvVar, GeoPoint, GpuClass, GpuModel, HealthCheck, Location,
    PortSpec, ServiceHealth, SignedTx,
};

id_type!(
    /// A lease's identifier, unique within one indexer.
    LeaseId
);

/// How a host runs workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// OCI containers through the Docker Engine API: the default for real hosts.
    Container,
    /// Plain processes on the host: local development networks only.
    Process,
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeKind::Container => "container",
            RuntimeKind::Process => "process",
        })
    }
}

/// GPUs of one model that a host offers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GpuOffer {
    pub model: GpuModel,
    pub count: u16,
    /// Memory per GPU as discovered; defaults to the catalog's figure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vram_mib: Option<u32>,
    /// Declared for a local network rather than discovered on real hardware.
    pub simulated: bool,
}

/// `POST /v1/hosts`: a host registers itself (its signer is its identity) and its GPUs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterHost {
    pub name: String,
    pub location: Location,
    pub price_per_gpu_hour: Amount,
    pub gpus: Vec<GpuOffer>,
    pub runtime: RuntimeKind,
    /// Container images already present on the host.
    #[serde(default)]
    pub images: Vec<String>,
    /// Where checkers reach the agent's challenge endpoint (a base URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub challenge_url: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostRegistered {
    pub host: Address,
    pub containers: u32,
    pub heartbeat_interval_ms: u64,
    pub settle_interval_ms: u64,
}

/// `POST /v1/hosts/heartbeat`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// The host's image cache, when it changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images: Option<Vec<String>>,
}

/// `POST /v1/hosts/work`: long-poll for leases to start or stop.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WorkPoll {
    /// How long to wait for work before answering empty, at most 30 s.
    pub wait_ms: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HostWork {
    pub start: Vec<Assignment>,
    pub stop: Vec<LeaseId>,
    /// Every lease the network holds live on this host (starting or running): a host
    /// that comes back after it was thought lost stops the workloads of any other.
    /// Absent from an indexer that does not list them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live: Option<Vec<LeaseId>>,
}

/// A funded lease the host must run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Assignment {
    pub lease: LeaseId,
    pub buyer: Address,
    pub gpu: GpuModel,
    /// Indices of the host's GPUs reserved for this lease.
    pub gpu_indices: Vec<u16>,
    pub image: String,
    pub command: Vec<String>,
    pub max_duration_ms: u64,
    pub price_per_gpu_hour: Amount,
    /// Container ports to publish.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ports: Vec<PortSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

/// `POST /v1/leases/{id}/started`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseStarted {
    /// Where each published port is reached.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// The workload runs as its image's own user (root in most images), which its host
    /// allows; otherwise as an unprivileged user.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub image_user: bool,
}

impl From<Vec<Endpoint>> for LeaseStarted {
    /// A start with these endpoints, its workload unprivileged.
    fn from(endpoints: Vec<Endpoint>) -> LeaseStarted {
        LeaseStarted {
            endpoints,
            image_user: false,
        }
    }
}

/// `POST /v1/leases/{id}/logs`: output the workload printed, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LogAppend {
    pub chunks: Vec<LogChunk>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogChunk {
    pub stream: LogStream,
    pub data: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
    /// Lines from the host agent about the workload (pulling, starting, killed).
    System,
}

/// One stored piece of a lease's output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogEntry {
    pub seq: u64,
    pub at_ms: u64,
    pub stream: LogStream,
    pub data: String,
}

/// `POST /v1/leases/{id}/finish`: the workload ended; carries the final usage record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseFinish {
    /// The workload's exit status, when it ran.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why the workload could not run or was stopped by the host.
    #[serde(default)]
    pub error: Option<String>,
    /// A `SettleUsage` transaction whose record for this lease is final.
    pub usage: SignedTx,
}

/// Which GPUs a request accepts: one model, or any model of a class. On the wire, the
/// model's catalog name (`"H100"`) or the class (`"consumer"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GpuSelector {
    Model(GpuModel),
    Class(GpuClass),
}

impl From<GpuModel> for GpuSelector {
    fn from(model: GpuModel) -> Self {
        GpuSelector::Model(model)
    }
}

impl std::fmt::Display for GpuSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            GpuSelector::Model(m) => write!(f, "{m}"),
            GpuSelector::Class(GpuClass::Datacenter) => f.write_str("datacenter"),
            GpuSelector::Class(GpuClass::Workstation) => f.write_str("workstation"),
            GpuSelector::Class(GpuClass::Consumer) => f.write_str("consumer"),
        }
    }
}

impl std::str::FromStr for GpuSelector {
    type Err = crate::UnknownGpuModel;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "datacenter" => Ok(GpuSelector::Class(GpuClass::Datacenter)),
            "workstation" => Ok(GpuSelector::Class(GpuClass::Workstation)),
            "consumer" => Ok(GpuSelector::Class(GpuClass::Consumer)),
            _ => s
                .parse()
                .map(GpuSelector::Model)
                .map_err(|mut e: crate::UnknownGpuModel| {
                    e.known
                        .push_str(", or a class: datacenter, workstation, consumer");
                    e
                }),
        }
    }
}

impl Serialize for GpuSelector {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for GpuSelector {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// How the matcher ranks eligible hosts.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum RankPolicy {
    /// Lowest price per GPU-hour.
    Price,
    /// Lowest round-trip time, then the best tier.
    Experience,
    /// A blend of price, round-trip time and tier.
    #[default]
    Balanced,
}

/// Whether the request's image must already be on the host.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ImagePolicy {
    #[default]
    Any,
    /// Hosts holding the image first, others if none.
    Prefer,
    /// Only hosts holding the image (an instant start, as cloud gaming needs).
    Require,
}

/// `POST /v1/jobs`: a buyer asks for GPUs: an AI job (model or class, memory, count, tier,
/// countries) or a gaming session (a class, a round-trip bound, the game's image required).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub gpu: GpuSelector,
    pub gpu_count: u16,
    pub near: GeoPoint,
    pub max_price_per_gpu_hour: Amount,
    pub max_duration_ms: u64,
    pub image: String,
    pub command: Vec<String>,
    /// Least memory per GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_vram_mib: Option<u32>,
    /// Worst acceptable tier: 1 (best) to 3 (any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tier: Option<u8>,
    /// Only hosts in these countries, when not empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub countries: Vec<Country>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_countries: Vec<Country>,
    /// Estimated round-trip time bound, for interactive work such as games.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rtt_ms: Option<u32>,
    #[serde(default)]
    pub image_policy: ImagePolicy,
    #[serde(default)]
    pub policy: RankPolicy,
    /// Container ports to publish on the host (`8080`, `8080/tcp`, `5000/udp`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<String>)]
    pub ports: Vec<PortSpec>,
    /// Environment for the workload; values are never shown or logged.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// The lease is `ready` only once this check passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

impl JobRequest {
    /// A plain AI job: `count` GPUs of `model` near a point, under a price cap.
    pub fn new(
        gpu: impl Into<GpuSelector>,
        count: u16,
        near: GeoPoint,
        cap: Amount,
        max_duration_ms: u64,
        image: &str,
        command: Vec<String>,
    ) -> JobRequest {
        JobRequest {
            gpu: gpu.into(),
            gpu_count: count,
            near,
            max_price_per_gpu_hour: cap,
            max_duration_ms,
            image: image.into(),
            command,
            min_vram_mib: None,
            max_tier: None,
            countries: Vec::new(),
            exclude_countries: Vec::new(),
            max_rtt_ms: None,
            image_policy: ImagePolicy::Any,
            policy: RankPolicy::Balanced,
            ports: Vec::new(),
            env: Vec::new(),
            health: None,
        }
    }
}

/// Where a lease stands (docs/protocol.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Capacity reserved, waiting for the buyer's escrow until `matched_until_ms`.
    Matched,
    /// Escrow funded; the host is starting the workload.
    Starting,
    Running,
    Completed,
    Failed,
    Cancelled,
}

impl LeaseState {
    /// Every state, in lifecycle order.
    pub const ALL: [LeaseState; 6] = [
        LeaseState::Matched,
        LeaseState::Starting,
        LeaseState::Running,
        LeaseState::Completed,
        LeaseState::Failed,
        LeaseState::Cancelled,
    ];

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            LeaseState::Completed | LeaseState::Failed | LeaseState::Cancelled
        )
    }

    /// Whether GPUs are reserved for the lease in this state.
    pub fn holds_capacity(self) -> bool {
        !self.is_terminal()
    }
}

/// One page of a listing, and where the next one starts (`?after=NEXT`); `None` at the
/// end. Cursors are opaque to clients.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next: Option<String>,
}

/// The most items a listing returns at once, and how many it returns when not told.
pub const MAX_PAGE: usize = 1_000;
pub const DEFAULT_PAGE: usize = 100;

/// `GET /v1/stats`: the network's headline figures, for the dashboard.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkStats {
    pub time_ms: u64,
    pub hosts: u32,
    pub hosts_online: u32,
    /// Distinct countries hosts are in.
    pub countries: u32,
    pub containers: u32,
    /// Containers by state (`standby`, `busy`, `offline`, …).
    pub containers_by_state: std::collections::BTreeMap<String, u32>,
    /// GPUs by model.
    pub gpus_by_model: std::collections::BTreeMap<String, u32>,
    /// Busy containers over those that can serve (busy and standby), in basis points.
    pub utilization_bps: u32,
    pub leases: u64,
    pub leases_live: u64,
    /// GPU-milliseconds settled (delivered and paid for), all time.
    pub delivered_gpu_ms: u64,
    /// Capacity, delivery and checker rewards emitted, all time.
    pub rewards_distributed: Amount,
    pub blocks: u64,
    pub transactions: u64,
    pub treasury_balance: Amount,
    /// The protocol's share of settled payments, all time.
    pub fees_collected: Amount,
    /// Fees collected, scaled to a year from the network's age so far.
    pub annualized_fee_revenue: Amount,
    pub checkers: u32,
    /// Samples of utilization and transactions over the last day, oldest first: one a
    /// minute, kept in memory (a restarted indexer starts a new series).
    pub history: Vec<StatsSample>,
}

/// One sample of the dashboard's charts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatsSample {
    pub time_ms: u64,
    pub utilization_bps: u32,
    pub transactions: u64,
}

/// `GET /v1/health/ready`: whether the indexer takes changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Readiness {
    pub ready: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A lease as the API shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseView {
    pub id: LeaseId,
    pub state: LeaseState,
    pub buyer: Address,
    pub host: Address,
    pub host_name: String,
    pub host_location: Location,
    pub distance_km: f64,
    /// Estimated round-trip time from the buyer's point to the host, in ms.
    pub rtt_ms: f64,
    pub gpu: GpuModel,
    pub gpu_count: u16,
    pub simulated: bool,
    pub runtime: RuntimeKind,
    pub image: String,
    pub price_per_gpu_hour: Amount,
    pub max_duration_ms: u64,
    /// What the buyer must lock: price × GPUs × maximum duration.
    pub escrow: Amount,
    pub created_ms: u64,
    pub matched_until_ms: u64,
    pub started_ms: Option<u64>,
    pub ended_ms: Option<u64>,
    pub exit_code: Option<i64>,
    pub failure: Option<String>,
    pub cancel_requested: bool,
    /// Present once the escrow is open.
    pub settlement: Option<SettlementView>,
    /// Where the published ports are reached, once the host started the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<Endpoint>,
    /// Names of the environment variables given (never their values).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_names: Vec<String>,
    /// For a lease with a health check: what the host last reported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<ServiceHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_detail: Option<String>,
    /// Once started: the workload runs as its image's own user (root in most images),
    /// which its host allows; otherwise as an unprivileged user.
    #[serde(default)]
    pub image_user: bool,
    /// The service's health check, as the buyer asked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,
    /// The deployment this lease is a replica of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deployment: Option<crate::DeploymentId>,
    /// On a network with checkers, once running: the start of the last checking period
    /// whose delivery check a quorum passed (the start until one has).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered_ms: Option<u64>,
}

/// Money of one lease, all in base units; once closed, `host_share + treasury_share + refund == escrow`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SettlementView {
    pub escrow: Amount,
    pub gpu_ms: u64,
    pub charged: Amount,
    pub host_share: Amount,
    pub treasury_share: Amount,
    pub refund: Amount,
    pub closed: bool,
    /// When the ledger recorded the start (the indexer's acceptance of the host's
    /// report); absent while the workload has not started. Nothing before it is billable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The most GPU-milliseconds the escrow covers.
    #[serde(default)]
    pub max_gpu_ms: u64,
    /// Once the lease has ended: the most GPU-milliseconds that could be billed, its GPUs
    /// × (end − start + the network's slack), at most `max_gpu_ms`; `gpu_ms` is never
    /// above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_gpu_ms: Option<u64>,
}

/// One line of `GET /v1/leases/{id}/logs?follow=true` (newline-delimited JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum LogEvent {
    Log(LogEntry),
    /// The lease ended and its output is complete.
    End {
        lease: Box<LeaseView>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AccountView {
    pub address: Address,
    pub balance: Amount,
    pub nonce: u64,
    /// Rewards granted but not yet vested.
    #[serde(default)]
    pub vesting: Amount,
    /// Everything ever granted in rewards (the reward tree's value for this account).
    #[serde(default)]
    pub cumulative_rewards: Amount,
    /// Stakes of this account's containers (as a host).
    #[serde(default)]
    pub stakes: Vec<StakeView>,
}

/// A container's stake.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StakeView {
    pub index: u16,
    pub bonded: Amount,
    pub unbonding: Amount,
    pub unbond_at_ms: u64,
}

/// `POST /v1/faucet` (local networks only).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FaucetRequest {
    pub amount: Amount,
}

/// `GET /v1/info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NetworkInfo {
    pub chain_id: u64,
    /// A local network accepts simulated GPUs and has a faucet.
    pub local: bool,
    pub protocol: Address,
    pub treasury: Address,
    pub fee_bps: u32,
    pub heartbeat_interval_ms: u64,
    pub settle_interval_ms: u64,
    pub hosts: u32,
    pub containers: u32,
    pub blocks: u64,
    pub transactions: u64,
    /// Stake per unit of spec weight K; a GPU's requirement is K × this.
    pub staking_coefficient: Amount,
    pub epoch_ms: u64,
    pub next_epoch: u64,
    /// Checkers may be sent to private and loopback addresses (a local network, or a
    /// genesis for one organisation's private network).
    #[serde(default)]
    pub private_endpoints: bool,
}

/// A container (one GPU on one host) as listed by `GET /v1/containers`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerView {
    pub host: Address,
    pub host_name: String,
    pub index: u16,
    pub gpu: GpuModel,
    pub vram_mib: u32,
    pub simulated: bool,
    pub state: ContainerState,
    pub location: Location,
    pub price_per_gpu_hour: Amount,
    /// Service tier from checkers' verdicts: 1 (best) to 3.
    #[serde(default = "default_tier")]
    pub tier: u8,
    /// Why the capacity proof rejected it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<String>,
}

fn default_tier() -> u8 {
    2
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Registered; checkers are evaluating its capacity proof.
    Checking,
    /// Failed its capacity proof by quorum; see `rejected`.
    Rejected,
    /// Registered, but its stake is not in place yet.
    AwaitingStake,
    Standby,
    Busy,
    Offline,
}

/// `POST /v1/observations`: a host reports a round trip it measured, which refines the
/// network coordinates the matcher estimates latency with. The signer is one end.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Observation {
    pub peer: Peer,
    pub rtt_ms: f64,
}

/// The other end of a measured round trip.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Peer {
    Host(Address),
    /// A measuring point registered with `POST /v1/anchors`.
    Anchor(u32),
}

/// `POST /v1/anchors` (local networks only, until checkers register themselves): a fixed
/// point that measures round trips, so requests near it get measured estimates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnchorRequest {
    pub point: GeoPoint,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnchorAdded {
    pub anchor: u32,
}

/// Result of `POST /v1/ledger/txs`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TxAccepted {
    pub hash: alloy_primitives::B256,
    pub seq: u64,
}

/// The body of every error response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApiError {
    /// Stable, machine-readable; see [`ErrorCode`].
    pub code: ErrorCode,
    /// For a person.
    pub message: String,
}

/// Stable error codes. Adding one is fine; renaming one breaks clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    UnknownGpuModel,
    InvalidPrice,
    InvalidLocation,
    BodyTooLarge,
    MissingSignature,
    BadSignature,
    SignatureExpired,
    ReplayedRequest,
    UnknownLease,
    UnknownHost,
    UnknownAccount,
    NotFound,
    MethodNotAllowed,
    NotYourLease,
    InvalidLeaseState,
    NoMatch,
    InsufficientFunds,
    /// An amount whose arithmetic would overflow (for example price × GPUs × duration).
    Overflow,
    WrongNonce,
    InvalidTransaction,
    NotLocalNetwork,
    SimulatedNotAllowed,
    /// A real GPU of a model this network's genesis gives no reference proof rate:
    /// checkers could not prove its capacity.
    NoProofRate,
    /// A public network runs workloads only in containers, never as host processes.
    ProcessRuntimeNotAllowed,
    /// The signer sent more requests of this kind than its rate allows; retry later.
    RateLimited,
    /// The request took longer than the indexer allows for it.
    TimedOut,
    /// The indexer has as many requests waiting as it queues; retry after the
    /// `Retry-After` header's seconds.
    Overloaded,
    /// The signer holds no checker licence.
    NotAChecker,
    /// The checker is banned from tasks and rewards.
    CheckerBanned,
    /// A result for a container the checker was not assigned (or has lost to another).
    NotAssigned,
    /// A report for a period that is over, or not yet begun.
    LateReport,
    /// A result the checker already gave for this period.
    DuplicateResult,
    /// Usage above what the protocol observed: the lease's GPUs × the time since the
    /// indexer accepted its start, plus the network's slack (nothing before a start).
    UsageExceedsElapsed,
    /// Usage past what checkers saw delivered: the lease's last passed delivery check
    /// (or its start) plus the delivery window.
    UsageExceedsDelivered,
    /// A port that is 0, privileged, repeated or out of range.
    InvalidPort,
    /// An environment variable whose name is not an identifier, or that is too large.
    InvalidEnv,
    /// A health check whose path is not a path, or that names no published port.
    InvalidHealthCheck,
    /// A host's challenge URL that is not a plain http(s) URL (user info, a query or a
    /// fragment, another scheme), or, on a public network, that names an address checkers
    /// must not be sent to (loopback, private, link-local and other non-public ones).
    InvalidChallengeUrl,
    /// A region that names no place, or whose minimum is above its maximum.
    InvalidRegion,
    UnknownDeployment,
    /// The deployment belongs to another owner.
    NotYourDeployment,
    /// The deployment takes no sessions.
    NoSessions,
    UnknownSession,
    Internal,
    /// A code this client does not know yet.
    #[serde(other)]
    Unknown,
}

/// An account's cumulative reward after an epoch, with its Merkle proof in the layout of
/// OpenZeppelin's `StandardMerkleTree` over `(address, uint256)` leaves: what a cumulative
/// distributor contract needs to pay out the difference to what it paid before.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RewardProof {
    pub account: Address,
    pub epoch: u64,
    /// Everything the account was granted up to and including `epoch`.
    pub cumulative: Amount,
    /// keccak256(keccak256(abi.encode(account, cumulative))).
    pub leaf: B256,
    /// Sibling hashes from the leaf up, for `MerkleProof.verify(proof, root, leaf)`.
    pub proof: Vec<B256>,
    /// The reward root recorded after the epoch.
    pub root: B256,
}

/// The treasury, the reward pool and what has been emitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TreasuryView {
    pub treasury: Address,
    pub treasury_balance: Amount,
    pub reward_pool: Address,
    pub reward_pool_balance: Amount,
    pub provider_emitted: Amount,
    pub checker_emitted: Amount,
    pub bonus_emitted: Amount,
    /// The next epoch to close.
    pub next_epoch: u64,
    pub total_supply: Amount,
    pub reward_root: B256,
}

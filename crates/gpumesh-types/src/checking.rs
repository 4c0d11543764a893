//! Wire types of the checker role: the genesis parameters of checking, the tasks a
//! checker fetches, the signed report batches it sends, the host agent's challenge
//! endpoint, and the listings of checkers and verdicts (docs/checking.md).

use alloy_primitives::{Address, B256};
use serde::{Deserialize, Serialize};

pub use gpumesh_proof::{Challenge, OpenedRow, Opening, ProofParams};

use crate::GeoPoint;
use crate::GpuModel;

/// One GPU on one host: what checkers check and verdicts are about.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
pub struct ContainerRef {
    pub host: Address,
    pub index: u16,
}

impl std::fmt::Display for ContainerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.host, self.index)
    }
}

/// How a network checks its containers; part of the genesis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckingParams {
    /// Checker licences: the accounts that may check.
    pub checkers: Vec<Address>,
    /// Each container gets 2N+1 checkers a period.
    pub n: u8,
    /// Length of a checking period: every container's liveness is checked once a period.
    pub period_ms: u64,
    /// A primary checker that has not reported by this far into the period loses its
    /// tasks to the next checkers in rank.
    pub takeover_ms: u64,
    /// Liveness results for a period are taken until its end plus this.
    pub report_grace_ms: u64,
    /// Capacity results for a period are taken until its end, the grace and this. The
    /// 2N+1 proofs of a container run one after another, each in its own slot of
    /// `proof_window_ms / (2N+1)` from the period's start, so they never share the GPU.
    pub proof_window_ms: u64,
    /// How often a verified container proves its capacity again.
    pub capacity_every_ms: u64,
    /// How capacity proofs are sized and timed: the rule the indexer, the checkers and
    /// the agents share.
    #[serde(flatten)]
    pub sizing: ProofSizing,
    /// Checkers may be sent to private and loopback addresses: a network inside one
    /// organisation's private network, or a test on one machine. A local network always
    /// may; a public one only when its genesis says so.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub private_endpoints: bool,
    /// A checker with this many results against the majority (or a canary) within
    /// `ban_window_ms` is banned from tasks and rewards for `ban_ms`.
    pub ban_minority: u32,
    pub ban_window_ms: u64,
    pub ban_ms: u64,
    /// Chance, per checker per period, of a canary task whose answer the indexer knows.
    pub canary_per_mille: u16,
}

/// A GPU model's reference proof rate: multiply-accumulates a second over a whole proof
/// (deriving A and B, the product, hashing the rows of C and building their tree), as
/// `gpumesh bench proof` measures it on reference hardware of the model
/// (docs/capacity-proof.md, "Reference proof rates").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofRate {
    pub model: GpuModel,
    pub macs_per_s: u64,
    /// Who measured it, on which card, driver and date: what a reviewer re-runs.
    pub measured: String,
}

/// The protocol's one rule for sizing and timing capacity proofs (part of the genesis,
/// served at `GET /v1/checking/sizing`). The indexer sizes each task with it, checkers
/// time the commitment against its deadline, and an agent refuses only a challenge this
/// rule would never ask of its GPU.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProofSizing {
    /// The shape of a capacity proof: its inner dimension, spot rows and fewest rows. The
    /// rows of each proof are sized to the GPU's rate ([`ProofSizing::proof_for`]).
    pub proof: ProofParams,
    /// How long a proof should take at the GPU's rate, so that the work, not the
    /// network, dominates the time measured.
    pub proof_target_ms: u64,
    /// The proof's deadline: the time the rate needs, times this percentage, plus
    /// `proof_grace_ms` for the network.
    pub proof_slack_pct: u32,
    pub proof_grace_ms: u64,
    /// Simulated GPUs (local networks only) compute at this many multiply-accumulates a
    /// second per claimed FP16 TFLOP/s.
    pub simulated_macs_per_tflop: u64,
    /// The catalog's reference proof rates: a real GPU is held to its model's; a model
    /// without one cannot be checked, so a checked network does not register it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub proof_rates: Vec<ProofRate>,
}

/// One capacity proof as the rule sizes it for a GPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizedProof {
    pub params: ProofParams,
    /// The proof's time at the rate the GPU is held to.
    pub expected_ms: u64,
    /// How long the host has from the challenge to its commitment.
    pub deadline_ms: u64,
}

impl ProofSizing {
    /// The rate a GPU of this model is held to: a simulated one's declared speed, a real
    /// one's reference rate; `None` when this network cannot check it.
    pub fn rate(&self, model: GpuModel, simulated: bool) -> Option<u64> {
        if simulated {
            let per_tflop = self.simulated_macs_per_tflop;
            (per_tflop > 0).then(|| (model.spec().tflops_fp16 as u64).saturating_mul(per_tflop))
        } else {
            self.proof_rates
                .iter()
                .find(|r| r.model == model)
                .map(|r| r.macs_per_s)
        }
    }

    /// The proof a GPU of this model is given: `proof`'s shape with as many rows as its
    /// rate computes in `proof_target_ms` (at least `proof.rows`, at most the protocol's
    /// limit), and its deadline. `None` when the network has no rate for it.
    pub fn proof_for(&self, model: GpuModel, simulated: bool) -> Option<SizedProof> {
        let rate = self.rate(model, simulated)?;
        let per_row = u128::from(self.proof.inner) * u128::from(self.proof.inner);
        let macs = u128::from(rate) * u128::from(self.proof_target_ms) / 1000;
        let rows = (macs / per_row.max(1)).clamp(
            u128::from(self.proof.rows),
            u128::from(ProofParams::MAX_ROWS),
        ) as u32;
        let params = ProofParams { rows, ..self.proof };
        Some(SizedProof {
            params,
            expected_ms: gpumesh_proof::expected_ms(&params, rate),
            deadline_ms: gpumesh_proof::deadline_ms(
                &params,
                rate,
                self.proof_slack_pct,
                self.proof_grace_ms,
            ),
        })
    }
}

impl CheckingParams {
    /// The public network's defaults: 2N+1 = 3, one-minute periods, a daily capacity
    /// proof, two minority results in a week ban for a month.
    pub fn network(checkers: Vec<Address>) -> CheckingParams {
        CheckingParams {
            checkers,
            n: 1,
            period_ms: 60_000,
            takeover_ms: 30_000,
            report_grace_ms: 15_000,
            proof_window_ms: 45_000,
            capacity_every_ms: 24 * 3_600_000,
            sizing: ProofSizing {
                proof: ProofParams::NETWORK,
                proof_target_ms: 2_000,
                proof_slack_pct: 150,
                proof_grace_ms: 2_000,
                simulated_macs_per_tflop: 0,
                proof_rates: Vec::new(),
            },
            private_endpoints: false,
            ban_minority: 2,
            ban_window_ms: 7 * 24 * 3_600_000,
            ban_ms: 30 * 24 * 3_600_000,
            canary_per_mille: 50,
        }
    }

    /// A local network: the same rules on a fast clock (two-second periods, a proof
    /// every minute), small proofs, simulated GPUs at a ten-millionth of their claimed
    /// rate (so a dozen hosts' proofs share two cores), generous slack for a busy
    /// machine, and a canary for every checker every period.
    pub fn local(checkers: Vec<Address>) -> CheckingParams {
        CheckingParams {
            period_ms: 2_000,
            takeover_ms: 1_200,
            report_grace_ms: 1_000,
            proof_window_ms: 8_000,
            capacity_every_ms: 60_000,
            sizing: ProofSizing {
                // As few rows as spot rows: a slow model's proof stays short.
                proof: ProofParams {
                    rows: ProofParams::LOCAL.spot_rows as u32,
                    ..ProofParams::LOCAL
                },
                proof_target_ms: 300,
                proof_slack_pct: 300,
                proof_grace_ms: 400,
                simulated_macs_per_tflop: 100_000,
                proof_rates: Vec::new(),
            },
            canary_per_mille: 1_000,
            ..CheckingParams::network(checkers)
        }
    }

    /// A public network's rules for CPU reference devices on one machine (tests, and
    /// trying the unsimulated path without a GPU): real proofs of about half a second
    /// at `macs_per_s`, the catalog's only rate, on a fast clock (three-second periods,
    /// each of the 2N+1 = 3 proofs in a one-second slot), and private endpoints.
    pub fn cpu_reference(
        checkers: Vec<Address>,
        macs_per_s: u64,
        measured: impl Into<String>,
    ) -> CheckingParams {
        CheckingParams {
            period_ms: 3_000,
            takeover_ms: 1_800,
            report_grace_ms: 1_000,
            proof_window_ms: 3_000,
            capacity_every_ms: 60_000,
            sizing: ProofSizing {
                proof: ProofParams {
                    rows: 64,
                    inner: 1024,
                    spot_rows: 64,
                },
                proof_target_ms: 500,
                proof_slack_pct: 150,
                proof_grace_ms: 150,
                simulated_macs_per_tflop: 0,
                proof_rates: vec![ProofRate {
                    model: GpuModel::CpuReference,
                    macs_per_s,
                    measured: measured.into(),
                }],
            },
            private_endpoints: true,
            ..CheckingParams::network(checkers)
        }
    }

    /// The proof a GPU of this model is given ([`ProofSizing::proof_for`]).
    pub fn proof_for(&self, model: GpuModel, simulated: bool) -> Option<SizedProof> {
        self.sizing.proof_for(model, simulated)
    }

    pub fn quorum(&self) -> usize {
        2 * self.n as usize + 1
    }

    /// The length of each checker's proof slot.
    pub fn proof_slot_ms(&self) -> u64 {
        self.proof_window_ms / self.quorum() as u64
    }
}

/// What a task asks.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// Is the container's agent there, and how far away.
    Liveness,
    /// Does the GPU have the throughput it claims (a capacity proof).
    Capacity,
    /// Is the lease on this container being delivered: its service's endpoint answers
    /// from the checker's side, or its agent signs that its workload is running.
    Delivery,
}

/// What a delivery task checks: a lease in progress on the task's container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryProbe {
    pub lease: crate::LeaseId,
    /// A service's endpoint as the checker probes it: `http://host:port/path` for an
    /// HTTP health check, `tcp://host:port` for a TCP one or a service without a check.
    /// Absent for a batch job: the checker asks the agent for a signed statement that
    /// the lease's workload is running (`POST {endpoint}/delivery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One task of a checker in a period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckTask {
    pub container: ContainerRef,
    pub kind: TaskKind,
    /// The host agent's challenge endpoint (a base URL).
    pub endpoint: String,
    pub gpu: GpuModel,
    pub simulated: bool,
    /// For capacity tasks: the proof's size and how long the host has to commit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<ProofParams>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof_deadline_ms: Option<u64>,
    /// For capacity tasks: not before this time (ms since the Unix epoch), so that a
    /// container's proofs do not share its GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at_ms: Option<u64>,
    /// For delivery tasks: the lease and how to probe it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryProbe>,
}

/// `GET /v1/checking/tasks?checker=0x…`: a checker's tasks for the current period.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckerTasksView {
    pub checker: Address,
    pub period: u64,
    pub period_start_ms: u64,
    pub period_end_ms: u64,
    /// A primary checker that has not reported by then loses its tasks.
    pub takeover_at_ms: u64,
    /// Liveness results for this period are taken until then.
    pub report_by_ms: u64,
    /// Capacity results for this period are taken until then.
    pub proofs_by_ms: u64,
    pub banned: bool,
    pub tasks: Vec<CheckTask>,
}

/// Why a liveness probe failed or a proof was refused; stable codes.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum FailReason {
    /// The agent did not answer in time, or not at all.
    Unreachable,
    /// The liveness answer was not signed by the container's host.
    BadSignature,
    /// The agent refused the proof, with a refusal signed by the host (a challenge the
    /// sizing rule would not ask of its GPU, a GPU it does not have, or its prover
    /// failing): the host's own word that it did not prove, no evidence of a false one.
    Refused,
    /// The commitment came after the deadline the claimed throughput sets.
    DeadlineMissed,
    /// An opened row does not equal the product of the seeded matrices.
    WrongRow,
    /// An opened row's Merkle path does not lead to the committed root.
    BadPath,
    /// Rows asked for were missing, extra, or of the wrong length; or the answer was malformed.
    BadOpening,
    /// A lease was not being delivered: its service did not answer from the checker's
    /// side, or its agent said (signed) that its workload is not running.
    NotDelivered,
}

impl FailReason {
    pub fn describe(self) -> &'static str {
        match self {
            FailReason::Unreachable => "the host agent did not answer",
            FailReason::BadSignature => "the liveness answer was not signed by the host",
            FailReason::Refused => "capacity proof: the agent refused it, signed",
            FailReason::DeadlineMissed => {
                "capacity proof: the commitment missed the deadline the claimed throughput sets"
            }
            FailReason::WrongRow => {
                "capacity proof: an opened row is not the product of the challenge's matrices"
            }
            FailReason::BadPath => {
                "capacity proof: an opened row's Merkle path does not reach the committed root"
            }
            FailReason::BadOpening => "capacity proof: the opening was malformed or incomplete",
            FailReason::NotDelivered => {
                "delivery: the lease's service did not answer, or its workload was not running"
            }
        }
    }

    /// Whether the failure is a capacity proof's.
    pub fn is_proof(self) -> bool {
        !matches!(
            self,
            FailReason::Unreachable | FailReason::BadSignature | FailReason::NotDelivered
        )
    }

    /// What a capacity proof failing for this reason is evidence of.
    pub fn class(self) -> FailureClass {
        match self {
            FailReason::Unreachable
            | FailReason::BadSignature
            | FailReason::Refused
            | FailReason::NotDelivered => FailureClass::Down,
            FailReason::DeadlineMissed | FailReason::BadOpening => FailureClass::Underperforming,
            FailReason::WrongRow | FailReason::BadPath => FailureClass::Malicious,
        }
    }
}

/// What a failed capacity proof is evidence of, and so what it costs (docs/checking.md,
/// "Failed proofs and what they cost").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// No proof was made: the agent could not be reached, went away mid-proof, or
    /// refused. A liveness failure: the host is down by the downtime rules, and the
    /// proof is asked again the next period.
    Down,
    /// A proof was started but not delivered in time or in full: the GPU does less than
    /// its model's reference rate. A second proof decides; a second failure rejects the
    /// container and slashes it for underperformance.
    Underperforming,
    /// An opened row that is not the product, or a path that does not reach the
    /// committed root: cryptographic evidence of a false commitment. Rejected and
    /// slashed as malicious at once.
    Malicious,
}

/// What a checker found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum CheckOutcome {
    /// Liveness: the agent answered with the host's signature, in `rtt_us`.
    Up { rtt_us: u64 },
    /// Capacity: the proof verified; the commitment took `host_ms`.
    Valid { host_ms: u64 },
    /// Liveness down, or the proof refused, and why.
    Failed { reason: FailReason },
}

/// One result in a report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckResult {
    pub container: ContainerRef,
    pub kind: TaskKind,
    #[serde(flatten)]
    pub outcome: CheckOutcome,
}

/// `POST /v1/checking/reports`: a checker's results for one period, signed once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckReport {
    pub period: u64,
    /// Where the checker measures from; its round trips refine the network coordinates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<GeoPoint>,
    pub results: Vec<CheckResult>,
}

/// What the indexer made of a report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ReportAccepted {
    pub period: u64,
    pub accepted: u32,
}

/// A checker as listed by `GET /v1/checkers`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckerView {
    pub address: Address,
    /// Results that agreed with a decided verdict.
    pub credited: u64,
    /// Results against the majority or a canary's known answer.
    pub minority: u64,
    pub canaries_passed: u64,
    pub canaries_failed: u64,
    /// Credited over decided results, in basis points (10000 when none was decided).
    pub agreement_bps: u32,
    /// Periods with a report among the last periods it had tasks in.
    pub periods_reported: u64,
    pub banned_until_ms: Option<u64>,
    pub ban_reason: Option<String>,
}

/// `GET /v1/checking/assignment?period=P`: who checks whom, with the seed it was drawn
/// from, so that anyone can recompute it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AssignmentView {
    pub period: u64,
    /// The ledger block whose hash seeds the period, and the seed.
    pub block_height: u64,
    pub block_hash: B256,
    pub seed: B256,
    /// Checkers eligible in the period (licensed, not banned), ascending.
    pub eligible: Vec<Address>,
    /// A page of the period's containers with their checkers.
    pub containers: Vec<ContainerAssignment>,
    /// Where the next page starts (`?from=`), if there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerAssignment {
    pub container: ContainerRef,
    /// The primary checkers, best rank first.
    pub checkers: Vec<Address>,
}

/// The challenge endpoint of a host agent: `POST {endpoint}/liveness`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LivenessChallenge {
    pub checker: Address,
    pub index: u16,
    pub nonce: B256,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LivenessAnswer {
    /// EIP-191 signature by the host over [`liveness_message`].
    pub signature: crate::Sig,
}

/// What a host signs to prove it is alive for a checker's fresh nonce.
pub fn liveness_message(chain_id: u64, challenge: &LivenessChallenge) -> Vec<u8> {
    let mut m = b"gpumesh-liveness-v1".to_vec();
    m.extend_from_slice(&chain_id.to_be_bytes());
    m.extend_from_slice(challenge.checker.as_slice());
    m.extend_from_slice(&challenge.index.to_be_bytes());
    m.extend_from_slice(challenge.nonce.as_slice());
    m
}

/// The challenge endpoint of a host agent: `POST {endpoint}/delivery`, a checker asking
/// whether a batch job's workload is running, with a fresh nonce.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeliveryChallenge {
    pub checker: Address,
    pub lease: crate::LeaseId,
    pub nonce: B256,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DeliveryAnswer {
    /// Whether the lease's workload is running on this host now.
    pub running: bool,
    /// EIP-191 signature by the host over [`delivery_message`]: a statement the host
    /// answers for.
    pub signature: crate::Sig,
}

/// What a host signs to state whether a lease's workload runs, for a checker's nonce.
pub fn delivery_message(chain_id: u64, challenge: &DeliveryChallenge, running: bool) -> Vec<u8> {
    let mut m = b"gpumesh-delivery-v1".to_vec();
    m.extend_from_slice(&chain_id.to_be_bytes());
    m.extend_from_slice(challenge.checker.as_slice());
    m.extend_from_slice(&challenge.lease.0.to_be_bytes());
    m.extend_from_slice(challenge.nonce.as_slice());
    m.push(running as u8);
    m
}

/// `POST {endpoint}/proof/commit`: the host multiplies the seeded matrices on GPU
/// `index` and commits to the product. A proof costs the host its GPU's time, so only a
/// licensed checker may ask: it signs [`proof_challenge_message`] (EIP-191).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofCommitRequest {
    pub index: u16,
    pub challenge: Challenge,
    pub checker: Address,
    /// The signature holds until then (ms since the Unix epoch).
    pub expires_ms: u64,
    pub signature: crate::Sig,
}

/// What a checker signs to ask for a capacity proof.
pub fn proof_challenge_message(
    chain_id: u64,
    index: u16,
    challenge: &Challenge,
    checker: &Address,
    expires_ms: u64,
) -> Vec<u8> {
    let p = &challenge.params;
    let mut m = b"gpumesh-proof-challenge-v1".to_vec();
    m.extend_from_slice(&chain_id.to_be_bytes());
    m.extend_from_slice(checker.as_slice());
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(challenge.seed.as_slice());
    m.extend_from_slice(&p.rows.to_be_bytes());
    m.extend_from_slice(&p.inner.to_be_bytes());
    m.extend_from_slice(&p.spot_rows.to_be_bytes());
    m.extend_from_slice(&expires_ms.to_be_bytes());
    m
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProofCommitment {
    pub root: B256,
}

/// The body of an agent's refusal of `POST {endpoint}/proof/commit` (HTTP 422): why,
/// signed with the host's key over [`proof_refusal_message`] for the challenge's seed, so
/// a checker can report it as the host's own refusal rather than as an unreachable agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofRefusal {
    pub index: u16,
    pub seed: B256,
    pub reason: String,
    pub signature: crate::Sig,
}

/// What an agent signs to refuse a capacity proof.
pub fn proof_refusal_message(chain_id: u64, index: u16, seed: &B256, reason: &str) -> Vec<u8> {
    let mut m = b"gpumesh-proof-refusal-v1".to_vec();
    m.extend_from_slice(&chain_id.to_be_bytes());
    m.extend_from_slice(&index.to_be_bytes());
    m.extend_from_slice(seed.as_slice());
    m.extend_from_slice(reason.as_bytes());
    m
}

/// `POST {endpoint}/proof/open`: the rows the checker picked after the commitment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProofOpenRequest {
    pub seed: B256,
    pub rows: Vec<u32>,
}

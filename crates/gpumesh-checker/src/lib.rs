//! The checker node (`gpumesh checker`).
//!
//! Once a period it fetches its tasks from the indexer, runs them against the host agents
//! directly (never through the indexer): liveness (the agent signs a fresh nonce; the
//! round trip is measured) and capacity proofs (a fresh secret seed, the commitment timed
//! against the deadline the claimed throughput sets, then spot rows checked with
//! Freivalds' test, docs/capacity-proof.md). It sends all of a period's results in one
//! signed report. Which tasks a checker gets, and what its results count for, is the
//! indexer's pure `gpumesh-checking`; this crate is only the shell that probes.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloy_primitives::B256;
use futures_util::StreamExt;
use gpumesh_client::{Client, ClientError};
use gpumesh_identity::Wallet;
use gpumesh_proof::{Challenge, Opening, ProofFailure};
use gpumesh_types::{
    CheckOutcome, CheckReport, CheckResult, CheckTask, ContainerRef, FailReason, GeoPoint,
    LivenessAnswer, LivenessChallenge, ProofCommitRequest, ProofCommitment, ProofOpenRequest,
    TaskKind, liveness_message,
};
use rand::{RngCore, SeedableRng};
use tokio_util::sync::CancellationToken;

mod delivery;
mod probe;

/// How many probes run at once.
const PARALLEL_PROBES: usize = 32;
/// The most a proof opening may be: a network-sized proof's is about 1 MB.
const MAX_OPENING_BYTES: usize = 16 * 1024 * 1024;
/// The most any other answer of an agent may be: each is a signature or a root.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How a checker answers. Anything but `Honest` exists to show that the network catches
/// it, in demos and tests; the command line offers only `Honest`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Honest,
    /// Answers "up" and "valid" without probing anything.
    Lazy,
}

#[derive(Clone, Debug)]
pub struct CheckerConfig {
    pub indexer_url: String,
    /// The certificates to trust for an `https://` indexer instead of the system's roots.
    pub indexer_ca: Vec<gpumesh_client::Certificate>,
    pub wallet: Wallet,
    /// Where the checker measures from; its round trips refine the network coordinates.
    pub location: Option<GeoPoint>,
    pub behaviour: Behaviour,
    /// The longest a liveness probe waits.
    pub probe_timeout: Duration,
}

impl CheckerConfig {
    pub fn new(indexer_url: &str, wallet: Wallet) -> CheckerConfig {
        CheckerConfig {
            indexer_url: indexer_url.to_string(),
            indexer_ca: Vec::new(),
            wallet,
            location: None,
            behaviour: Behaviour::Honest,
            probe_timeout: Duration::from_secs(2),
        }
    }
}

struct Checker {
    client: Client,
    http: reqwest::Client,
    config: CheckerConfig,
    chain_id: u64,
    /// A local network, or one whose genesis allows private endpoints: agents and
    /// services may be on private and loopback addresses. Elsewhere only globally
    /// routable addresses are probed.
    local: bool,
}

/// Runs the checker until `shutdown`: a report a period.
pub async fn run(config: CheckerConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = Client::with_ca(
        &config.indexer_url,
        Some(config.wallet.clone()),
        config.indexer_ca.clone(),
    );
    let (chain_id, local) = loop {
        match client.info().await {
            Ok(info) => break (info.chain_id, info.private_endpoints),
            Err(e) => tracing::warn!(error = %e, "cannot reach the indexer; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    let http = probe::client(&config.indexer_ca, local)?;
    let checker = Arc::new(Checker {
        client,
        http,
        config,
        chain_id,
        local,
    });
    let me = checker.config.wallet.address();
    tracing::info!(checker = %me, behaviour = ?checker.config.behaviour, "checking");
    // The tasks of the current period already answered.
    let mut done: (u64, HashSet<(ContainerRef, TaskKind)>) = (u64::MAX, HashSet::new());
    let mut proofs = tokio::task::JoinSet::new();
    loop {
        let pause = match checker.client.checker_tasks(me).await {
            Ok(view) if view.banned => {
                tracing::warn!(checker = %me, "banned from tasks and rewards");
                Duration::from_millis(view.period_end_ms.saturating_sub(now_ms()).max(500))
            }
            Ok(view) => {
                if done.0 != view.period {
                    done = (view.period, HashSet::new());
                }
                let new: Vec<CheckTask> = view
                    .tasks
                    .into_iter()
                    .filter(|t| !done.1.contains(&(t.container, t.kind)))
                    .collect();
                if new.is_empty() {
                    // Tasks taken over from silent checkers appear later in a period:
                    // look again before it ends.
                    let left = view.period_end_ms.saturating_sub(now_ms());
                    Duration::from_millis((left / 3).clamp(100, 5_000))
                } else {
                    // Liveness first, in its own report: it is quick, and a checker that
                    // has reported early keeps its tasks; capacity proofs take longer.
                    let (liveness, capacity): (Vec<CheckTask>, Vec<CheckTask>) =
                        new.into_iter().partition(|t| t.kind != TaskKind::Capacity);
                    for t in liveness.iter().chain(&capacity) {
                        done.1.insert((t.container, t.kind));
                    }
                    // A probe must not hold the report past the take-over time.
                    let left = view.takeover_at_ms.saturating_sub(now_ms());
                    let timeout = checker
                        .config
                        .probe_timeout
                        .min(Duration::from_millis(left / 2))
                        .max(Duration::from_millis(200));
                    if !liveness.is_empty()
                        && !checker.send(view.period, liveness.clone(), timeout).await
                    {
                        // Not delivered: try these again on the next look.
                        for t in &liveness {
                            done.1.remove(&(t.container, t.kind));
                        }
                    }
                    // Proofs take a while: they report on their own, and the next
                    // period's liveness need not wait for them.
                    if !capacity.is_empty() {
                        let me = checker.clone();
                        let period = view.period;
                        let timeout = me.config.probe_timeout;
                        proofs.spawn(async move { me.send(period, capacity, timeout).await });
                    }
                    while proofs.try_join_next().is_some() {}
                    Duration::from_millis(50)
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot fetch tasks; retrying");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn failed(reason: FailReason) -> CheckOutcome {
    CheckOutcome::Failed { reason }
}

impl Checker {
    /// Runs a batch of tasks and reports their results, signed once. Whether the indexer
    /// got the report (taken or refused); false when it could not be reached.
    async fn send(self: &Arc<Self>, period: u64, tasks: Vec<CheckTask>, timeout: Duration) -> bool {
        let report = CheckReport {
            period,
            location: self.config.location,
            results: self.check_all(tasks, timeout).await,
        };
        for attempt in 0..3u32 {
            match self.client.report(&report).await {
                Ok(accepted) => {
                    tracing::debug!(period, accepted = accepted.accepted, "reported");
                    return true;
                }
                Err(ClientError::Api { error, .. }) => {
                    tracing::warn!(period, error = %error.message, "report refused");
                    return true;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "report failed; retrying");
                    tokio::time::sleep(Duration::from_millis(200 << attempt)).await;
                }
            }
        }
        false
    }

    async fn check_all(
        self: &Arc<Self>,
        tasks: Vec<CheckTask>,
        timeout: Duration,
    ) -> Vec<CheckResult> {
        futures_util::stream::iter(tasks)
            .map(|task| {
                let me = self.clone();
                async move {
                    let outcome = me.check(&task, timeout).await;
                    CheckResult {
                        container: task.container,
                        kind: task.kind,
                        outcome,
                    }
                }
            })
            .buffer_unordered(PARALLEL_PROBES)
            .collect()
            .await
    }

    async fn check(&self, task: &CheckTask, timeout: Duration) -> CheckOutcome {
        match (self.config.behaviour, task.kind) {
            (Behaviour::Lazy, TaskKind::Liveness | TaskKind::Delivery) => {
                CheckOutcome::Up { rtt_us: 1_000 }
            }
            (Behaviour::Honest, TaskKind::Delivery) => self.delivery(task, timeout).await,
            (Behaviour::Lazy, TaskKind::Capacity) => CheckOutcome::Valid { host_ms: 1 },
            (Behaviour::Honest, TaskKind::Liveness) => self.liveness(task, timeout).await,
            (Behaviour::Honest, TaskKind::Capacity) => {
                // A container's proofs take turns on its GPU: wait for this one's slot.
                if let Some(at) = task.start_at_ms {
                    tokio::time::sleep(Duration::from_millis(at.saturating_sub(now_ms()))).await;
                }
                self.capacity(task).await
            }
        }
    }

    /// The agent must sign this checker's fresh nonce with the container's host key.
    async fn liveness(&self, task: &CheckTask, timeout: Duration) -> CheckOutcome {
        let mut nonce = B256::ZERO;
        rand::thread_rng().fill_bytes(&mut nonce.0);
        let challenge = LivenessChallenge {
            checker: self.config.wallet.address(),
            index: task.container.index,
            nonce,
        };
        let began = Instant::now();
        let answer: LivenessAnswer = match self.post(task, "liveness", &challenge, timeout).await {
            Ok(a) => a,
            Err(_) => return failed(FailReason::Unreachable),
        };
        let rtt_us = began.elapsed().as_micros() as u64;
        let message = liveness_message(self.chain_id, &challenge);
        match answer.signature.0.recover_address_from_msg(message) {
            Ok(signer) if signer == task.container.host => CheckOutcome::Up { rtt_us },
            _ => failed(FailReason::BadSignature),
        }
    }

    /// A capacity proof with a fresh secret seed: the commitment must come within the
    /// deadline, then the rows picked after it must open and pass Freivalds' test.
    async fn capacity(&self, task: &CheckTask) -> CheckOutcome {
        let (Some(params), Some(deadline_ms)) = (task.proof, task.proof_deadline_ms) else {
            return failed(FailReason::BadOpening);
        };
        let mut rng = rand::rngs::StdRng::from_entropy();
        let mut seed = B256::ZERO;
        rng.fill_bytes(&mut seed.0);
        let challenge = Challenge { seed, params };
        let checker = self.config.wallet.address();
        let expires_ms = now_ms() + 60_000;
        let message = gpumesh_types::proof_challenge_message(
            self.chain_id,
            task.container.index,
            &challenge,
            &checker,
            expires_ms,
        );
        let request = ProofCommitRequest {
            index: task.container.index,
            challenge,
            checker,
            expires_ms,
            signature: gpumesh_types::Sig(self.config.wallet.sign_message(message)),
        };
        let deadline = Duration::from_millis(deadline_ms);
        let began = Instant::now();
        // No answer by the deadline from an agent that is there is a missed deadline; from
        // one that no longer answers its liveness either (a host gone dark drops the
        // connection silently) an absent agent. A refusal signed by the host is its own
        // word that it did not prove; anything else (no connection, a connection dropped
        // mid-proof, an unsigned error) is an absent agent. None of these is evidence of
        // a false proof (docs/checking.md, "Failed proofs and what they cost").
        let commitment: ProofCommitment = match self
            .post(
                task,
                "proof/commit",
                &request,
                deadline + Duration::from_millis(50),
            )
            .await
        {
            Ok(c) => c,
            Err(ProbeError::Timeout) => {
                let there = self.liveness(task, Duration::from_secs(2)).await;
                return failed(if matches!(there, CheckOutcome::Up { .. }) {
                    FailReason::DeadlineMissed
                } else {
                    FailReason::Unreachable
                });
            }
            Err(ProbeError::Answered(body)) if self.signed_refusal(task, &seed, &body) => {
                return failed(FailReason::Refused);
            }
            Err(_) => return failed(FailReason::Unreachable),
        };
        let host_ms = began.elapsed().as_millis() as u64;
        if began.elapsed() > deadline {
            return failed(FailReason::DeadlineMissed);
        }
        let rows = gpumesh_proof::pick_rows(&params, &mut rng);
        let open = ProofOpenRequest {
            seed,
            rows: rows.clone(),
        };
        let opening: Opening = match self
            .post(task, "proof/open", &open, Duration::from_secs(30))
            .await
        {
            Ok(o) => o,
            // It committed, then would not open: the opening is what failed.
            Err(ProbeError::Refused | ProbeError::Answered(_)) => {
                return failed(FailReason::BadOpening);
            }
            Err(_) => return failed(FailReason::Unreachable),
        };
        let verdict = tokio::task::spawn_blocking(move || {
            gpumesh_proof::verify(&challenge, commitment.root, &rows, &opening, &mut rng)
        })
        .await;
        match verdict {
            Ok(Ok(())) => CheckOutcome::Valid { host_ms },
            Ok(Err(ProofFailure::WrongRow(_))) => failed(FailReason::WrongRow),
            Ok(Err(ProofFailure::BadPath(_))) => failed(FailReason::BadPath),
            Ok(Err(_)) | Err(_) => failed(FailReason::BadOpening),
        }
    }

    async fn post<T: serde::de::DeserializeOwned>(
        &self,
        task: &CheckTask,
        path: &str,
        body: &impl serde::Serialize,
        timeout: Duration,
    ) -> Result<T, ProbeError> {
        let url = format!("{}/{path}", task.endpoint.trim_end_matches('/'));
        let url = probe::url(&url, self.local).ok_or(ProbeError::Other)?;
        let response = self
            .http
            .post(url)
            .json(body)
            .timeout(timeout)
            .send()
            .await
            .map_err(ProbeError::from)?;
        if !response.status().is_success() {
            return Err(match probe::body(response, MAX_ANSWER_BYTES).await {
                Ok(body) => ProbeError::Answered(body),
                Err(e) => e,
            });
        }
        // Read no more than the answer needs: a host cannot fill the checker's memory.
        let limit = if path == "proof/open" {
            MAX_OPENING_BYTES
        } else {
            MAX_ANSWER_BYTES
        };
        let body = probe::body(response, limit).await?;
        serde_json::from_slice(&body).map_err(|_| ProbeError::Refused)
    }
}

impl Checker {
    /// Whether `body` is the container's host's signed refusal of the proof for `seed`.
    fn signed_refusal(&self, task: &CheckTask, seed: &B256, body: &[u8]) -> bool {
        let Ok(refusal) = serde_json::from_slice::<gpumesh_types::ProofRefusal>(body) else {
            return false;
        };
        let message = gpumesh_types::proof_refusal_message(
            self.chain_id,
            refusal.index,
            &refusal.seed,
            &refusal.reason,
        );
        refusal.index == task.container.index
            && refusal.seed == *seed
            && refusal
                .signature
                .0
                .recover_address_from_msg(message)
                .is_ok_and(|signer| signer == task.container.host)
    }
}

#[derive(Debug)]
enum ProbeError {
    /// No answer in time.
    Timeout,
    /// The agent answered with an error status, and this body.
    Answered(Vec<u8>),
    /// The agent answered, but with an error, too much, or nothing that parses.
    Refused,
    /// No connection, or an address this checker may not be sent to.
    Other,
}

impl From<reqwest::Error> for ProbeError {
    fn from(e: reqwest::Error) -> ProbeError {
        if e.is_timeout() {
            ProbeError::Timeout
        } else {
            ProbeError::Other
        }
    }
}

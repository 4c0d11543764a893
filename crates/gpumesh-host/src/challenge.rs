//! The agent's challenge endpoint: checkers reach it directly, not through the indexer.
//!
//! `POST /liveness` signs the checker's fresh nonce with the host's key; `POST
//! /proof/commit` multiplies the challenge's seeded matrices on the named GPU and
//! answers the Merkle root of the product; `POST /proof/open` answers the rows the
//! checker picked after the commitment, with their paths (docs/capacity-proof.md).
//! How the product is computed is a [`Prover`]: the host's NVIDIA GPU through CUDA
//! ([`CudaProver`]), the CPU kernel of the CPU reference device, the simulated device of
//! a local network (the same kernel, paced to the speed its model is declared at), or, in
//! demos and tests only, a dishonest prover. A challenge the network's sizing rule would
//! never ask of a GPU, or one the prover fails, is refused with a [`ProofRefusal`] signed
//! by the host.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use gpumesh_identity::Wallet;
use gpumesh_proof::{Challenge, Proved};
use gpumesh_types::{
    Address, ApiError, ErrorCode, GpuModel, LivenessAnswer, LivenessChallenge, ProofCommitRequest,
    ProofCommitment, ProofOpenRequest, ProofRefusal, ProofSizing, Sig, liveness_message,
    proof_challenge_message, proof_refusal_message,
};
use tokio_util::sync::CancellationToken;

pub mod cuda;

pub use cuda::CudaProver;

/// Commitments kept for their openings, newest last.
const KEPT_PROOFS: usize = 64;
/// How long a commitment waits for its opening.
const PROOF_TTL: Duration = Duration::from_secs(120);

/// Computes capacity proofs on one of the host's GPUs.
pub trait Prover: Send + Sync + std::fmt::Debug {
    /// Multiplies the challenge's matrices on GPU `index` and commits to the product.
    /// Blocking: called on a blocking thread.
    fn prove(&self, index: u16, challenge: &Challenge) -> Result<Proved, String>;
    fn describe(&self) -> String;
}

/// The exact INT8 kernel on this machine's CPU, at full speed: the prover of the CPU
/// reference device ([`crate::discovery::CpuReference`]). Never a real GPU's: a CPU is far
/// slower than the GPU it would stand for, and would miss its deadlines.
#[derive(Debug, Default)]
pub struct CpuProver;

impl Prover for CpuProver {
    fn prove(&self, _index: u16, challenge: &Challenge) -> Result<Proved, String> {
        gpumesh_proof::prove(challenge).map_err(|e| e.to_string())
    }

    fn describe(&self) -> String {
        "CPU prover".into()
    }
}

/// A simulated GPU of a local network: the CPU kernel, then held until the time the
/// declared speed takes, so the local network runs the real protocol at simulated
/// speeds. Labelled simulated everywhere; only a local genesis accepts it.
#[derive(Debug)]
pub struct SimulatedProver {
    /// Multiply-accumulates a second the simulated device does.
    pub macs_per_s: u64,
    /// Skip this many rows in a thousand (a dishonest prover, for demos and tests only).
    pub skip_per_mille: u16,
}

impl Prover for SimulatedProver {
    fn prove(&self, index: u16, challenge: &Challenge) -> Result<Proved, String> {
        let began = Instant::now();
        let proved = if self.skip_per_mille == 0 {
            gpumesh_proof::prove(challenge)
        } else {
            gpumesh_proof::prove_skipping(challenge, self.skip_per_mille, index as u64)
        }
        .map_err(|e| e.to_string())?;
        let at_speed = Duration::from_millis(gpumesh_proof::expected_ms(
            &challenge.params,
            self.macs_per_s,
        ));
        if let Some(rest) = at_speed.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(proved)
    }

    fn describe(&self) -> String {
        let honesty = if self.skip_per_mille == 0 {
            String::new()
        } else {
            format!(", DISHONEST: skips {}‰ of rows", self.skip_per_mille)
        };
        format!(
            "simulated GPU prover at {} M multiply-accumulates/s{honesty}",
            self.macs_per_s / 1_000_000
        )
    }
}

struct Kept {
    proved: Arc<Proved>,
    at: Instant,
}

/// The checkers that may ask this agent for proofs: the network's licences, which the
/// agent refreshes from the indexer.
pub type Licences = Arc<std::sync::RwLock<HashSet<Address>>>;

/// The leases whose workloads run on this host now, as the agent keeps them: what the
/// agent states, signed, to a checker asking about a batch job's delivery.
pub type Running = Arc<std::sync::RwLock<HashSet<gpumesh_types::LeaseId>>>;

/// How long ahead a challenge's signature may claim to hold.
const MAX_CHALLENGE_TTL_MS: u64 = 5 * 60 * 1000;

struct Endpoint {
    /// Cancelled when the agent stops: connections still open then get no answer.
    stopped: CancellationToken,
    licences: Licences,
    running: Running,
    wallet: Wallet,
    chain_id: u64,
    /// Each GPU's model and whether it is simulated, by index.
    gpus: Vec<(GpuModel, bool)>,
    sizing: ProofSizing,
    prover: Arc<dyn Prover>,
    proofs: Mutex<VecDeque<Kept>>,
    /// One proof at a time per GPU, as on the device itself; checkers take turns in
    /// slots, so honest checks do not wait here.
    busy: Vec<tokio::sync::Semaphore>,
}

impl Endpoint {
    /// The refusal of a proof request not signed, in time, by a licensed checker.
    fn unauthorised(&self, request: &ProofCommitRequest) -> Option<Response> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if request.expires_ms < now {
            return Some(refuse(
                StatusCode::UNAUTHORIZED,
                ErrorCode::SignatureExpired,
                "the challenge's signature has expired",
            ));
        }
        if request.expires_ms > now + MAX_CHALLENGE_TTL_MS {
            return Some(refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!("a challenge's signature holds at most {MAX_CHALLENGE_TTL_MS} ms"),
            ));
        }
        let message = proof_challenge_message(
            self.chain_id,
            request.index,
            &request.challenge,
            &request.checker,
            request.expires_ms,
        );
        match request.signature.0.recover_address_from_msg(message) {
            Ok(signer) if signer == request.checker => {}
            _ => {
                return Some(refuse(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::BadSignature,
                    format!("the challenge is not signed by {}", request.checker),
                ));
            }
        }
        let licensed = self
            .licences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&request.checker);
        (!licensed).then(|| {
            refuse(
                StatusCode::FORBIDDEN,
                ErrorCode::NotAChecker,
                format!(
                    "{} holds no checker licence on this network",
                    request.checker
                ),
            )
        })
    }

    /// The refusal of a challenge for GPU `index`, if it may not be answered: the agent
    /// has stopped, or it has no such GPU.
    fn refusal(&self, index: u16) -> Option<Response> {
        if self.stopped.is_cancelled() {
            return Some(gone());
        }
        (usize::from(index) >= self.gpus.len()).then(|| {
            refuse(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidRequest,
                format!(
                    "this host has {} GPUs; there is no GPU {index}",
                    self.gpus.len()
                ),
            )
        })
    }

    /// A refusal of the proof for `seed` on GPU `index`, signed with the host's key: the
    /// checker reports the host's own word that it did not prove (a liveness failure),
    /// never a wrong proof.
    fn signed_refusal(&self, index: u16, seed: &gpumesh_types::B256, reason: String) -> Response {
        let signature = Sig(self.wallet.sign_message(proof_refusal_message(
            self.chain_id,
            index,
            seed,
            &reason,
        )));
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(ProofRefusal {
                index,
                seed: *seed,
                reason,
                signature,
            }),
        )
            .into_response()
    }
}

/// Why the network's sizing rule would never ask `asked` of GPU `index` (a `model`,
/// simulated or not), if it would not: the only proofs an agent refuses.
pub fn unasked(
    sizing: &ProofSizing,
    index: u16,
    model: GpuModel,
    simulated: bool,
    asked: &gpumesh_proof::ProofParams,
) -> Option<String> {
    match sizing.proof_for(model, simulated) {
        None => Some(format!(
            "the network has no proof rate for GPU {index} ({model}): no proof of it is asked"
        )),
        Some(rule) if rule.params != *asked => Some(format!(
            "the network's rule asks GPU {index} ({model}) for {} rows of inner dimension {} with {} spot rows, not {} rows of {} with {}",
            rule.params.rows,
            rule.params.inner,
            rule.params.spot_rows,
            asked.rows,
            asked.inner,
            asked.spot_rows
        )),
        Some(_) => None,
    }
}

fn refuse(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> Response {
    (
        status,
        Json(ApiError {
            code,
            message: message.into(),
        }),
    )
        .into_response()
}

fn gone() -> Response {
    refuse(
        StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Internal,
        "the agent has stopped",
    )
}

/// Who answers on the challenge endpoint, and what it answers from.
pub struct Answerer {
    /// The host's key: it signs liveness answers and delivery statements.
    pub wallet: Wallet,
    pub chain_id: u64,
    /// Each GPU's model and whether it is simulated, in the registration's order.
    pub gpus: Vec<(GpuModel, bool)>,
    /// The network's rule for sizing proofs (`GET /v1/checking/sizing`).
    pub sizing: ProofSizing,
    pub prover: Arc<dyn Prover>,
    pub licences: Licences,
    pub running: Running,
}

/// Serves the challenge endpoint on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    answerer: Answerer,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let Answerer {
        wallet,
        chain_id,
        gpus,
        sizing,
        prover,
        licences,
        running,
    } = answerer;
    let count = gpus.len();
    let state = Arc::new(Endpoint {
        stopped: shutdown.clone(),
        licences,
        running,
        wallet,
        chain_id,
        gpus,
        sizing,
        prover,
        proofs: Mutex::new(VecDeque::new()),
        busy: (0..count).map(|_| tokio::sync::Semaphore::new(1)).collect(),
    });
    let router = Router::new()
        .route("/liveness", post(liveness))
        .route("/delivery", post(delivery))
        .route("/proof/commit", post(commit))
        .route("/proof/open", post(open))
        .with_state(state);
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    Ok(())
}

async fn liveness(
    State(e): State<Arc<Endpoint>>,
    Json(challenge): Json<LivenessChallenge>,
) -> Response {
    if let Some(refused) = e.refusal(challenge.index) {
        return refused;
    }
    let signature = Sig(e
        .wallet
        .sign_message(liveness_message(e.chain_id, &challenge)));
    Json(LivenessAnswer { signature }).into_response()
}

/// Whether a lease's workload runs here, stated and signed for a checker's nonce. Any
/// checker may ask (the answer costs a signature, as liveness does); the statement is
/// evidence the host answers for.
async fn delivery(
    State(e): State<Arc<Endpoint>>,
    Json(challenge): Json<gpumesh_types::DeliveryChallenge>,
) -> Response {
    if e.stopped.is_cancelled() {
        return gone();
    }
    let running = e
        .running
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .contains(&challenge.lease);
    let signature = Sig(e.wallet.sign_message(gpumesh_types::delivery_message(
        e.chain_id, &challenge, running,
    )));
    Json(gpumesh_types::DeliveryAnswer { running, signature }).into_response()
}

async fn commit(
    State(e): State<Arc<Endpoint>>,
    Json(request): Json<ProofCommitRequest>,
) -> Response {
    if e.stopped.is_cancelled() {
        return gone();
    }
    if let Some(refused) = e.unauthorised(&request) {
        return refused;
    }
    let (index, seed) = (request.index, request.challenge.seed);
    if usize::from(index) >= e.gpus.len() {
        return e.signed_refusal(
            index,
            &seed,
            format!(
                "this host has {} GPUs; there is no GPU {index}",
                e.gpus.len()
            ),
        );
    }
    if let Err(err) = request.challenge.params.validate() {
        return e.signed_refusal(
            index,
            &seed,
            format!("the challenge's size is invalid: {err}"),
        );
    }
    let (model, simulated) = e.gpus[usize::from(index)];
    if let Some(why) = unasked(
        &e.sizing,
        index,
        model,
        simulated,
        &request.challenge.params,
    ) {
        return e.signed_refusal(index, &seed, why);
    }
    let Ok(_turn) = e.busy[usize::from(index)].acquire().await else {
        return gone();
    };
    tracing::info!(
        index,
        rows = request.challenge.params.rows,
        checker = %request.checker,
        "proving capacity"
    );
    let prover = e.prover.clone();
    let challenge = request.challenge;
    let proved = tokio::task::spawn_blocking(move || prover.prove(index, &challenge)).await;
    // An agent that stopped while proving answers nothing, as a killed one would not.
    if e.stopped.is_cancelled() {
        return gone();
    }
    let proved = match proved {
        Ok(Ok(p)) => Arc::new(p),
        Ok(Err(err)) => return e.signed_refusal(index, &seed, format!("the prover failed: {err}")),
        Err(err) => {
            return e.signed_refusal(index, &seed, format!("the prover failed: {err}"));
        }
    };
    let root = proved.root();
    let mut kept = e.proofs.lock().unwrap_or_else(|p| p.into_inner());
    kept.retain(|k| k.at.elapsed() < PROOF_TTL);
    if kept.len() >= KEPT_PROOFS {
        kept.pop_front();
    }
    kept.push_back(Kept {
        proved,
        at: Instant::now(),
    });
    Json(ProofCommitment { root }).into_response()
}

async fn open(State(e): State<Arc<Endpoint>>, Json(request): Json<ProofOpenRequest>) -> Response {
    if e.stopped.is_cancelled() {
        return gone();
    }
    let proved = {
        let kept = e.proofs.lock().unwrap_or_else(|p| p.into_inner());
        kept.iter()
            .rev()
            .find(|k| k.proved.challenge().seed == request.seed)
            .map(|k| k.proved.clone())
    };
    let Some(proved) = proved else {
        return refuse(
            StatusCode::NOT_FOUND,
            ErrorCode::NotFound,
            "no commitment for that seed (committed too long ago, or never)",
        );
    };
    if request.rows.len() > proved.challenge().params.spot_rows as usize {
        return refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            format!(
                "at most {} rows may be opened",
                proved.challenge().params.spot_rows
            ),
        );
    }
    let opened = tokio::task::spawn_blocking(move || proved.open(&request.rows)).await;
    match opened {
        Ok(Ok(opening)) => Json(opening).into_response(),
        Ok(Err(err)) => refuse(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest,
            err.to_string(),
        ),
        Err(err) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            format!("opening failed: {err}"),
        ),
    }
}

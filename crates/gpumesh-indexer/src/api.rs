//! The HTTP routes: JSON in, JSON out, errors as [`gpumesh_types::ApiError`].

use std::collections::HashMap;
use std::time::Duration;

use alloy_primitives::Address;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use gpumesh_types::{
    AccountView, AnchorAdded, AnchorRequest, ApiError, AssignmentView, BlockHeader,
    CheckerTasksView, CheckerView, ContainerView, DEFAULT_PAGE, HostRegistered, HostWork,
    LeaseView, LedgerEntry, MAX_PAGE, NetworkInfo, NetworkStats, Observation, Opening, Page,
    Readiness, ReportAccepted, RewardProof, TreasuryView, TxAccepted,
};
use gpumesh_types::{
    CheckReport, LivenessAnswer, LivenessChallenge, ProofCommitRequest, ProofCommitment,
    ProofOpenRequest,
};
use gpumesh_types::{
    DeploymentId, DeploymentRequest, DeploymentView, ErrorCode, FaucetRequest, HealthReport,
    Heartbeat, JobRequest, LeaseFinish, LeaseId, LeaseStarted, LogAppend, LogEvent, RegisterHost,
    ScaleRequest, SessionId, SessionRequest, SessionView, SignedTx, TxKind, WorkPoll,
};
use serde::Deserialize;

use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
use utoipa_swagger_ui::SwaggerUi;

use crate::AppState;
use crate::auth::Signed;
use crate::error::Failure;
use crate::limits::Limited;
use crate::openapi::SignatureHeaders;

/// The longest a host's work poll is held open.
const MAX_POLL: Duration = Duration::from_secs(30);

/// Every route of the API, each with its OpenAPI description: registered here and only
/// here, so the document (`/openapi.json`) lists exactly what the router serves.
fn documented() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(crate::openapi::ApiDoc::openapi())
        .routes(routes!(live))
        .routes(routes!(live_alias))
        .routes(routes!(ready))
        .routes(routes!(metrics))
        .routes(routes!(info))
        .routes(routes!(stats))
        .routes(routes!(crate::dashboard::index))
        .routes(routes!(crate::dashboard::asset))
        .routes(routes!(containers))
        .routes(routes!(register_host))
        .routes(routes!(heartbeat))
        .routes(routes!(work))
        .routes(routes!(submit_job))
        .routes(routes!(leases))
        .routes(routes!(lease))
        .routes(routes!(cancel))
        .routes(routes!(started))
        .routes(routes!(health_report))
        .routes(routes!(create_deployment, deployments))
        .routes(routes!(deployment))
        .routes(routes!(scale_deployment))
        .routes(routes!(stop_deployment))
        .routes(routes!(request_session))
        .routes(routes!(session))
        .routes(routes!(end_session))
        .routes(routes!(append_logs, logs))
        .routes(routes!(finish))
        .routes(routes!(submit_tx))
        .routes(routes!(head))
        .routes(routes!(blocks))
        .routes(routes!(ledger_tx))
        .routes(routes!(treasury))
        .routes(routes!(reward_proof))
        .routes(routes!(account))
        .routes(routes!(history))
        .routes(routes!(faucet))
        .routes(routes!(observe))
        .routes(routes!(add_anchor))
        .routes(routes!(checkers))
        .routes(routes!(proof_sizing))
        .routes(routes!(checker_tasks))
        .routes(routes!(report))
        .routes(routes!(assignment))
        .routes(routes!(decoy_liveness))
        .routes(routes!(decoy_delivery))
        .routes(routes!(decoy_commit))
        .routes(routes!(decoy_open))
}

/// The API's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    documented().split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let (api, document) = documented().split_for_parts();
    // The reference page: Swagger UI, its files served from the binary (no CDN), which
    // also serves the document at /openapi.json.
    let reference = SwaggerUi::new("/api")
        .url("/openapi.json", document)
        .config(utoipa_swagger_ui::Config::new(["/openapi.json"]).validator_url("none"));
    api.merge(reference)
        .fallback(|| async { Failure::new(ErrorCode::NotFound, "no such API route") })
        .method_not_allowed_fallback(|| async {
            Failure::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .layer(axum::middleware::from_fn(time_limit))
        .layer(axum::middleware::from_fn(crate::telemetry::track))
        // Each request gets an id (or keeps the caller's `x-request-id`), its span carries
        // it, and the response returns it, so a log line and a complaint can be matched.
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_request(())
                .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .with_state(state)
}

/// The span of one request: method, path (never the body: it may carry a workload's
/// environment) and request id.
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    let id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-");
    tracing::info_span!("request", method = %request.method(), path = %request.uri().path(), request_id = %id)
}

/// The longest any request may take to answer (a host's work poll: its wait and this).
/// A response that streams (a lease's output) is limited until its first byte only.
pub const ROUTE_TIMEOUT: Duration = Duration::from_secs(15);

/// Answers `timed_out` for a request that takes too long. The operation behind it, once
/// under way, still completes or not as a whole: the caller may ask again and see.
async fn time_limit(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let limit = if request.uri().path() == "/v1/hosts/work" {
        MAX_POLL + ROUTE_TIMEOUT
    } else {
        ROUTE_TIMEOUT
    };
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => Failure::new(
            ErrorCode::TimedOut,
            format!(
                "the request took longer than {} s; it may or may not have been applied, so look before retrying",
                limit.as_secs()
            ),
        )
        .into_response(),
    }
}

fn lease_id(text: &str) -> Result<LeaseId, Failure> {
    text.parse().map(LeaseId).map_err(|_| {
        Failure::new(
            ErrorCode::UnknownLease,
            format!("lease {text:?} does not exist"),
        )
    })
}

fn deployment_id(text: &str) -> Result<DeploymentId, Failure> {
    text.parse().map(DeploymentId).map_err(|_| {
        Failure::new(
            ErrorCode::UnknownDeployment,
            format!("deployment {text:?} does not exist"),
        )
    })
}

fn session_id(text: &str) -> Result<SessionId, Failure> {
    text.parse().map(SessionId).map_err(|_| {
        Failure::new(
            ErrorCode::UnknownSession,
            format!("session {text:?} does not exist"),
        )
    })
}

fn address(what: &str, text: &str) -> Result<Address, Failure> {
    text.parse().map_err(|_| {
        Failure::new(
            ErrorCode::InvalidRequest,
            format!("{what} {text:?} is not a 0x address"),
        )
    })
}

#[utoipa::path(get, path = "/v1/health", tag = "health", summary = "Liveness", responses((status = 200, description = "the process answers", body = String)))]
/// Liveness: the process answers. Restarting it is what helps when this fails.
async fn live() -> &'static str {
    "ok"
}

#[utoipa::path(get, path = "/v1/health/live", tag = "health", summary = "Liveness", responses((status = 200, description = "the process answers", body = String)))]
/// Liveness: the process answers. Restarting it is what helps when this fails.
async fn live_alias() -> &'static str {
    live().await
}

#[utoipa::path(get, path = "/v1/health/ready", tag = "health", summary = "Readiness: whether the indexer takes changes", responses((status = 200, body = Readiness), (status = 503, description = "not taking changes", body = Readiness)))]
/// Readiness: the indexer takes changes. False (503) after a store failure or a failed
/// operation, until it is restarted; while it restores its state at start it does not
/// listen yet, so it cannot be ready then either.
async fn ready(State(state): State<AppState>) -> Response {
    let failed = state.failed.load(std::sync::atomic::Ordering::SeqCst);
    let view = gpumesh_types::Readiness {
        ready: !failed,
        reason: failed.then(|| {
            "the indexer stopped taking changes after a store failure or a failed operation; restart it".to_string()
        }),
    };
    let status = if failed {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    (status, Json(view)).into_response()
}

#[utoipa::path(get, path = "/metrics", tag = "health", summary = "Prometheus metrics", responses((status = 200, description = "Prometheus text format 0.0.4", body = String, content_type = "text/plain")))]
/// `GET /metrics`: the Prometheus text exposition format.
async fn metrics(State(state): State<AppState>) -> Response {
    let ready = !state.failed.load(std::sync::atomic::Ordering::SeqCst);
    let now = crate::now_ms();
    state.read(|c| crate::telemetry::observe(c, ready, now));
    metrics::gauge!("gpumesh_replay_book_nonces").set(state.nonces.len() as f64);
    let body = crate::telemetry::handle().map_or_else(String::new, |h| h.render());
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

#[utoipa::path(get, path = "/v1/stats", tag = "network", summary = "The network's headline figures, with a day of samples for charts", responses((status = 200, body = NetworkStats)))]
async fn stats(State(state): State<AppState>) -> Json<NetworkStats> {
    Json(state.stats())
}

#[utoipa::path(get, path = "/v1/info", tag = "network", summary = "The network's parameters and size", responses((status = 200, body = NetworkInfo)))]
async fn info(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.read(|c| c.info()))
}

/// `?after=CURSOR&limit=N` of a listing: where to start, and how many (at most
/// `MAX_PAGE`).
fn page_query(query: &HashMap<String, String>) -> Result<(Option<u64>, usize), Failure> {
    let after = query
        .get("after")
        .map(|a| {
            a.parse::<u64>().map_err(|_| {
                Failure::new(
                    ErrorCode::InvalidRequest,
                    format!("after={a:?} is not a cursor from this listing's `next`"),
                )
            })
        })
        .transpose()?;
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|&n| (1..=MAX_PAGE).contains(&n))
            .ok_or_else(|| {
                Failure::new(
                    ErrorCode::InvalidRequest,
                    format!("limit={l:?} must be 1 to {MAX_PAGE}"),
                )
            })?,
    };
    Ok((after, limit))
}

#[utoipa::path(get, path = "/v1/containers", tag = "network", summary = "Containers (GPUs), a page at a time", params(("after" = Option<String>, Query, description = "the previous page's `next`"), ("limit" = Option<u32>, Query, description = "items per page, 1 to 1000 (default 100)")), responses((status = 200, body = Page<ContainerView>), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn containers(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let (after, limit) = page_query(&query)?;
    let from = after.unwrap_or(0) as usize;
    let (items, next) = state.read(|c| c.registry().containers_page(from, limit));
    Ok(Json(Page {
        items,
        next: next.map(|n| n.to_string()),
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/hosts", tag = "hosts", summary = "Register (or update) a host", request_body = RegisterHost, params(SignatureHeaders), responses((status = 201, body = HostRegistered), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn register_host(
    State(state): State<AppState>,
    req: Signed<RegisterHost>,
) -> Result<Response, Failure> {
    state.limit(Limited::Registration, req.signer)?;
    if let Some(url) = &req.body.challenge_url {
        let private = state.read(|c| c.info().private_endpoints);
        challenge_name(url, private).await?;
    }
    let registered = state
        .mutate(move |c, now, batch| c.register_host(req.signer, req.body, now, batch))
        .await?;
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}

/// On a public network, a challenge URL whose name resolves only to addresses checkers
/// may not be sent to (loopback, private, …) is refused before the registration is
/// queued: the registry, which does no I/O, judges only IP literals. A name that does not
/// resolve (yet) passes, as does anything the registry refuses for its own reasons:
/// checkers resolve names again at every probe and reach only public addresses, which is
/// the check that matters (a name can change after registration).
async fn challenge_name(raw: &str, private: bool) -> Result<(), Failure> {
    if private {
        return Ok(());
    }
    let Ok(url) = gpumesh_registry::challenge_url(raw, false) else {
        return Ok(());
    };
    let (Some(name), Some(port)) = (url.domain(), url.port_or_known_default()) else {
        return Ok(());
    };
    let lookup = tokio::net::lookup_host((name, port));
    let Ok(Ok(addresses)) = tokio::time::timeout(Duration::from_secs(2), lookup).await else {
        return Ok(());
    };
    let addresses: Vec<std::net::IpAddr> = addresses.map(|a| a.ip()).collect();
    resolved_challenge_name(raw, name, &addresses)
}

/// A challenge URL's name resolved to `addresses`: refused when there are some and none
/// is public.
fn resolved_challenge_name(
    raw: &str,
    name: &str,
    addresses: &[std::net::IpAddr],
) -> Result<(), Failure> {
    if addresses.is_empty() || addresses.iter().copied().any(gpumesh_types::net::is_public) {
        return Ok(());
    }
    Err(Failure::new(
        ErrorCode::InvalidChallengeUrl,
        format!(
            "challenge URL {raw:?} names {name}, which resolves only to addresses that are not public ({}); checkers could not reach it",
            addresses
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    ))
}

#[utoipa::path(post, path = "/v1/hosts/heartbeat", tag = "hosts", summary = "A host's heartbeat", request_body = Heartbeat, params(SignatureHeaders), responses((status = 200, description = "recorded", body = Object), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn heartbeat(
    State(state): State<AppState>,
    req: Signed<Heartbeat>,
) -> Result<Response, Failure> {
    state
        .mutate(move |c, now, _| c.heartbeat(req.signer, req.body, now))
        .await?;
    crate::telemetry::heartbeat();
    Ok(Json(serde_json::json!({})).into_response())
}

#[utoipa::path(post, path = "/v1/hosts/work", tag = "hosts", summary = "Long poll: leases to start and to stop", request_body = WorkPoll, params(SignatureHeaders), responses((status = 200, body = HostWork), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn work(State(state): State<AppState>, req: Signed<WorkPoll>) -> Result<Response, Failure> {
    let wait = Duration::from_millis(req.body.wait_ms).min(MAX_POLL);
    let deadline = tokio::time::Instant::now() + wait;
    let waiting = state.host_waiters.subscribe(req.signer);
    let bell = waiting.bell();
    loop {
        let rung = bell.notified();
        let work = state.read(|c| c.work(&req.signer))?;
        if !work.start.is_empty()
            || !work.stop.is_empty()
            || tokio::time::Instant::now() >= deadline
        {
            return Ok(Json(work).into_response());
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => return Ok(Json(work).into_response()),
            _ = tokio::time::sleep_until(deadline) => {}
            _ = rung => {}
        }
    }
}

#[utoipa::path(post, path = "/v1/jobs", tag = "leases", summary = "Match a job and reserve its GPUs", request_body = JobRequest, params(SignatureHeaders), responses((status = 201, description = "matched: the lease waits for its escrow", body = LeaseView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn submit_job(
    State(state): State<AppState>,
    req: Signed<JobRequest>,
) -> Result<Response, Failure> {
    state.limit(Limited::Job, req.signer)?;
    let lease = state
        .mutate(move |c, now, _| {
            let began = std::time::Instant::now();
            let lease = c.submit_job(req.signer, req.body, now);
            crate::telemetry::matched(began.elapsed(), lease.is_ok());
            lease
        })
        .await?;
    Ok((StatusCode::CREATED, Json(lease)).into_response())
}

#[derive(Deserialize)]
struct LeaseFilter {
    buyer: Option<String>,
    host: Option<String>,
}

#[utoipa::path(get, path = "/v1/leases", tag = "leases", summary = "Leases, a page at a time", params(("buyer" = Option<String>, Query, description = "only this buyer's"), ("host" = Option<String>, Query, description = "only this host's"), ("after" = Option<String>, Query, description = "the previous page's `next`"), ("limit" = Option<u32>, Query, description = "items per page, 1 to 1000 (default 100)")), responses((status = 200, body = Page<LeaseView>), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn leases(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let filter: LeaseFilter = LeaseFilter {
        buyer: query.get("buyer").cloned(),
        host: query.get("host").cloned(),
    };
    let buyer = filter
        .buyer
        .as_deref()
        .map(|b| address("buyer", b))
        .transpose()?;
    let host = filter
        .host
        .as_deref()
        .map(|h| address("host", h))
        .transpose()?;
    let (after, limit) = page_query(&query)?;
    let (items, next) = state
        .leases_page(buyer, host, after.map(LeaseId), limit)
        .await?;
    Ok(Json(Page {
        items,
        next: next.map(|id| id.0.to_string()),
    })
    .into_response())
}

#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases", summary = "One lease", params(("id" = u64, Path, description = "the lease id")), responses((status = 200, body = LeaseView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn lease(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    Ok(Json(state.lease_view(id).await?).into_response())
}

#[utoipa::path(post, path = "/v1/leases/{id}/cancel", tag = "leases", summary = "Cancel a lease (its buyer)", request_body = Object, params(("id" = u64, Path, description = "the lease id"), SignatureHeaders), responses((status = 200, body = LeaseView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<serde_json::Value>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let lease = state
        .mutate(move |c, now, batch| c.cancel(req.signer, id, now, batch))
        .await?;
    Ok(Json(lease).into_response())
}

#[utoipa::path(post, path = "/v1/leases/{id}/started", tag = "leases", summary = "The host started the workload", request_body = LeaseStarted, params(("id" = u64, Path, description = "the lease id"), SignatureHeaders), responses((status = 200, body = LeaseView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn started(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<LeaseStarted>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let lease = state
        .mutate(move |c, now, batch| c.started(req.signer, id, req.body, now, batch))
        .await?;
    Ok(Json(lease).into_response())
}

#[utoipa::path(post, path = "/v1/leases/{id}/health", tag = "leases", summary = "The host reports a change of a service's health", request_body = HealthReport, params(("id" = u64, Path, description = "the lease id"), SignatureHeaders), responses((status = 200, body = LeaseView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn health_report(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<HealthReport>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let lease = state
        .mutate(move |c, _, _| c.health_report(req.signer, id, req.body))
        .await?;
    Ok(Json(lease).into_response())
}

#[utoipa::path(post, path = "/v1/leases/{id}/logs", tag = "leases", summary = "The host appends the workload's output", request_body = LogAppend, params(("id" = u64, Path, description = "the lease id"), SignatureHeaders), responses((status = 200, description = "the next sequence number", body = Object), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn append_logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<LogAppend>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let next = state
        .mutate(move |c, now, batch| c.append_logs(req.signer, id, req.body, now, batch))
        .await?;
    Ok(Json(serde_json::json!({ "next_seq": next })).into_response())
}

#[utoipa::path(post, path = "/v1/leases/{id}/finish", tag = "leases", summary = "The host reports the end with the final usage", request_body = LeaseFinish, params(("id" = u64, Path, description = "the lease id"), SignatureHeaders), responses((status = 200, body = LeaseView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn finish(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<LeaseFinish>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let lease = state
        .mutate(move |c, now, batch| c.finish(req.signer, id, req.body, now, batch))
        .await?;
    Ok(Json(lease).into_response())
}

#[utoipa::path(get, path = "/v1/leases/{id}/logs", tag = "leases", summary = "A lease's output (its buyer or host)", params(("id" = u64, Path, description = "the lease id"), ("from" = Option<u64>, Query, description = "first sequence number"), ("follow" = Option<bool>, Query, description = "keep streaming until the lease ends"), SignatureHeaders), responses((status = 200, description = "newline-delimited JSON log events", body = LogEvent, content_type = "application/x-ndjson"), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
/// `GET /v1/leases/{id}/logs?from=N&follow=true`, signed by the lease's buyer or host:
/// newline-delimited [`LogEvent`]s; with `follow`, the stream stays open until the lease
/// ends and closes with an `end` event.
async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    req: Signed<serde_json::Value>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    state.may_read_logs(&req.signer, id).await?;
    let from = query_number(&query, "from")?.unwrap_or(0);
    let follow = query.get("follow").is_some_and(|v| v == "true" || v == "1");
    struct Cursor {
        state: AppState,
        waiting: crate::notify::Subscription<LeaseId>,
        next: u64,
        done: bool,
    }
    let waiting = state.lease_waiters.subscribe(id);
    let cursor = Cursor {
        state,
        waiting,
        next: from,
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, move |mut cur| async move {
        loop {
            if cur.done {
                return None;
            }
            let bell = cur.waiting.bell();
            let rung = bell.notified();
            let (entries, ended) = match cur.state.logs(id, cur.next).await {
                Ok(found) => found,
                // The stream has begun: a failed read can only end it.
                Err(e) => {
                    tracing::error!(lease = %id, error = %e.message, "a log stream failed");
                    return None;
                }
            };
            let mut out = Vec::new();
            for entry in entries {
                cur.next = entry.seq + 1;
                serde_json::to_writer(&mut out, &LogEvent::Log(entry))
                    .expect("log events serialise");
                out.push(b'\n');
            }
            if !out.is_empty() {
                return Some((
                    Ok::<_, std::convert::Infallible>(bytes::Bytes::from(out)),
                    cur,
                ));
            }
            if ended || !follow {
                cur.done = true;
                if let Ok(lease) = cur.state.lease_view(id).await
                    && ended
                {
                    serde_json::to_writer(
                        &mut out,
                        &LogEvent::End {
                            lease: Box::new(lease),
                        },
                    )
                    .expect("log events serialise");
                    out.push(b'\n');
                    return Some((Ok(bytes::Bytes::from(out)), cur));
                }
                return None;
            }
            tokio::select! {
                _ = cur.state.shutdown.cancelled() => return None,
                _ = rung => {}
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| Failure::internal(e.to_string()))
}

#[utoipa::path(post, path = "/v1/ledger/txs", tag = "ledger", summary = "Submit a signed ledger transaction", request_body = SignedTx, params(SignatureHeaders), responses((status = 200, body = TxAccepted), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn submit_tx(
    State(state): State<AppState>,
    req: Signed<SignedTx>,
) -> Result<Response, Failure> {
    // The signature is checked here, on this request's worker, not under the state lock.
    let checked = gpumesh_ledger::CheckedTx::check(req.body).map_err(Failure::from)?;
    // An allowance lets the protocol open escrows for a deployment: it costs what a
    // deployment does, so it counts against the same per-key rate.
    if let TxKind::Allow { .. } = checked.tx().tx.kind {
        state.limit(Limited::Job, checked.tx().tx.from)?;
    }
    let accepted = state
        .mutate(move |c, now, batch| c.submit_tx(checked, now, batch))
        .await?;
    Ok(Json(accepted).into_response())
}

#[utoipa::path(get, path = "/v1/ledger/head", tag = "ledger", summary = "The latest block", responses((status = 200, body = BlockHeader), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn head(State(state): State<AppState>) -> Result<Response, Failure> {
    Ok(Json(state.read(|c| c.ledger().head().clone())).into_response())
}

/// Reads the store off the async threads.
async fn from_store<T, F>(state: AppState, f: F) -> Result<T, Failure>
where
    T: Send + 'static,
    F: FnOnce(&gpumesh_store::Store) -> Result<T, Failure> + Send + 'static,
{
    tokio::task::spawn_blocking(move || f(&state.store))
        .await
        .map_err(|e| Failure::internal(format!("store read panicked: {e}")))?
}

fn store_failure(e: gpumesh_store::StoreError) -> Failure {
    Failure::internal(e.to_string())
}

/// A whole number from the query string, if it is there.
fn query_number(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, Failure> {
    query
        .get(name)
        .map(|text| {
            text.parse().map_err(|_| {
                Failure::new(
                    ErrorCode::InvalidRequest,
                    format!("{name} {text:?} is not a whole number"),
                )
            })
        })
        .transpose()
}

#[utoipa::path(get, path = "/v1/ledger/blocks", tag = "ledger", summary = "Block headers", params(("from" = Option<u64>, Query, description = "first height"), ("limit" = Option<u32>, Query, description = "how many")), responses((status = 200, body = Vec<BlockHeader>), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
/// Block headers, newest first: `?below=HEIGHT&limit=N` (at most 1000).
async fn blocks(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let below = query_number(&query, "below")?;
    let limit = query_number(&query, "limit")?.unwrap_or(20).min(1000) as usize;
    let headers = from_store(state, move |s| {
        s.headers(below, limit).map_err(store_failure)
    })
    .await?;
    Ok(Json(headers).into_response())
}

#[utoipa::path(get, path = "/v1/ledger/txs/{seq}", tag = "ledger", summary = "One transaction", params(("seq" = u64, Path, description = "the transaction's sequence number")), responses((status = 200, description = "the transaction and its hash", body = Object), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn ledger_tx(
    State(state): State<AppState>,
    Path(text): Path<String>,
) -> Result<Response, Failure> {
    let not_found = || {
        Failure::new(
            ErrorCode::NotFound,
            format!("transaction {text:?} does not exist"),
        )
    };
    let seq: u64 = text.parse().map_err(|_| not_found())?;
    let entry = from_store(state, move |s| s.entry(seq).map_err(store_failure)).await?;
    let entry = entry.ok_or_else(not_found)?;
    let hash = entry.tx.hash();
    Ok(Json(serde_json::json!({ "hash": hash, "entry": entry })).into_response())
}

#[utoipa::path(get, path = "/v1/ledger/treasury", tag = "ledger", summary = "The treasury and the reward pool", responses((status = 200, body = TreasuryView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn treasury(State(state): State<AppState>) -> Result<Response, Failure> {
    let view = state.read(|c| {
        let l = c.ledger();
        let g = l.genesis();
        let t = l.totals();
        gpumesh_types::TreasuryView {
            treasury: g.treasury,
            treasury_balance: l.balance(&g.treasury),
            reward_pool: g.reward_pool,
            reward_pool_balance: l.balance(&g.reward_pool),
            provider_emitted: t.provider_emitted,
            checker_emitted: t.checker_emitted,
            bonus_emitted: t.bonus_emitted,
            next_epoch: t.next_epoch,
            total_supply: g.total_supply,
            reward_root: l.reward_root(),
        }
    });
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/v1/ledger/proof/{address}", tag = "ledger", summary = "An account's cumulative reward with its Merkle proof", params(("address" = String, Path, description = "a 0x address"), ("epoch" = Option<u64>, Query, description = "the epoch")), responses((status = 200, body = RewardProof), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
/// `?epoch=E`: the account's cumulative reward after epoch E and its proof.
async fn reward_proof(
    State(state): State<AppState>,
    Path(text): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let account = address("account", &text)?;
    let epoch = query_number(&query, "epoch")?
        .ok_or_else(|| Failure::new(ErrorCode::InvalidRequest, "say which epoch: ?epoch=E"))?;
    let proof = from_store(state, move |s| {
        s.reward_proof(account, epoch).map_err(|e| match e {
            gpumesh_store::ProofError::Proof(
                e @ (gpumesh_ledger::ProofError::EpochNotClosed { .. }
                | gpumesh_ledger::ProofError::NoRewards { .. }),
            ) => Failure::new(ErrorCode::NotFound, e.to_string()),
            e => Failure::internal(e.to_string()),
        })
    })
    .await?;
    Ok(Json(proof).into_response())
}

#[utoipa::path(get, path = "/v1/accounts/{address}/history", tag = "accounts", summary = "An account's transactions", params(("address" = String, Path, description = "a 0x address"), ("limit" = Option<u32>, Query, description = "how many")), responses((status = 200, body = Vec<LedgerEntry>), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
/// `?limit=N` (at most 1000): the account's transactions, newest first.
async fn history(
    State(state): State<AppState>,
    Path(text): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let account = address("account", &text)?;
    let limit = query_number(&query, "limit")?.unwrap_or(50).min(1000) as usize;
    let entries = from_store(state, move |s| {
        s.history(&account, limit).map_err(store_failure)
    })
    .await?;
    Ok(Json(entries).into_response())
}

#[utoipa::path(get, path = "/v1/accounts/{address}", tag = "accounts", summary = "An account", params(("address" = String, Path, description = "a 0x address")), responses((status = 200, body = AccountView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn account(
    State(state): State<AppState>,
    Path(text): Path<String>,
) -> Result<Response, Failure> {
    let address = address("account", &text)?;
    Ok(Json(state.read(|c| c.account(address))).into_response())
}

#[utoipa::path(post, path = "/v1/observations", tag = "network", summary = "A measured round trip", request_body = Observation, params(SignatureHeaders), responses((status = 200, description = "recorded", body = Object), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn observe(
    State(state): State<AppState>,
    req: Signed<gpumesh_types::Observation>,
) -> Result<Response, Failure> {
    state
        .mutate(move |c, _, _| c.observe(req.signer, req.body))
        .await?;
    Ok(Json(serde_json::json!({})).into_response())
}

#[utoipa::path(post, path = "/v1/anchors", tag = "network", summary = "Add a measuring point", request_body = AnchorRequest, params(SignatureHeaders), responses((status = 201, body = AnchorAdded), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn add_anchor(
    State(state): State<AppState>,
    req: Signed<gpumesh_types::AnchorRequest>,
) -> Result<Response, Failure> {
    let anchor = state
        .mutate(move |c, _, _| c.add_anchor(req.body.point))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(gpumesh_types::AnchorAdded { anchor }),
    )
        .into_response())
}

#[utoipa::path(post, path = "/v1/faucet", tag = "accounts", summary = "Tokens from a local network's faucet", request_body = FaucetRequest, params(SignatureHeaders), responses((status = 200, body = TxAccepted), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn faucet(
    State(state): State<AppState>,
    req: Signed<FaucetRequest>,
) -> Result<Response, Failure> {
    state.limit(Limited::Faucet, req.signer)?;
    let accepted = state
        .mutate(move |c, now, batch| c.faucet(req.signer, req.body.amount, now, batch))
        .await?;
    Ok(Json(accepted).into_response())
}

#[utoipa::path(get, path = "/v1/checkers", tag = "checking", summary = "The checkers and their standing", responses((status = 200, body = Vec<CheckerView>)))]
async fn checkers(State(state): State<AppState>) -> impl IntoResponse {
    let now = crate::now_ms();
    Json(state.read(|c| {
        c.checking()
            .checkers()
            .map(|r| r.view(now))
            .collect::<Vec<_>>()
    }))
}

/// The rule capacity proofs are sized by: agents ask it so that they refuse only what it
/// would never ask of their GPUs.
#[utoipa::path(get, path = "/v1/checking/sizing", tag = "checking", summary = "How capacity proofs are sized and timed", responses((status = 200, body = gpumesh_types::ProofSizing)))]
async fn proof_sizing(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.read(|c| c.checking().params().sizing.clone()))
}

#[utoipa::path(get, path = "/v1/checking/tasks", tag = "checking", summary = "A checker's tasks this period", params(("checker" = String, Query, description = "the checker's address")), responses((status = 200, body = CheckerTasksView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn checker_tasks(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let checker = query.get("checker").ok_or_else(|| {
        Failure::new(
            ErrorCode::InvalidRequest,
            "name the checker: /v1/checking/tasks?checker=0x…",
        )
    })?;
    let checker = address("checker", checker)?;
    let now = crate::now_ms();
    Ok(Json(state.read(|c| c.checker_tasks(checker, now))?).into_response())
}

#[utoipa::path(post, path = "/v1/checking/reports", tag = "checking", summary = "A checker's signed report", request_body = CheckReport, params(SignatureHeaders), responses((status = 200, body = ReportAccepted), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn report(
    State(state): State<AppState>,
    req: Signed<CheckReport>,
) -> Result<Response, Failure> {
    let accepted = state
        .mutate(move |c, now, _| c.report(req.signer, req.body, now))
        .await?;
    Ok(Json(accepted).into_response())
}

/// Containers in one page of a period's assignment, at most.
const ASSIGNMENT_PAGE: u64 = 10_000;

#[utoipa::path(get, path = "/v1/checking/assignment", tag = "checking", summary = "A period's assignment, with what it was drawn from", params(("period" = Option<u64>, Query, description = "the period"), ("from" = Option<u64>, Query, description = "first container"), ("limit" = Option<u32>, Query, description = "how many")), responses((status = 200, body = AssignmentView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
/// Who checks whom: `?period=P&from=I&limit=N`, a page at a time (`next` says where the
/// following page starts).
async fn assignment(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let period = query_number(&query, "period")?;
    let from = query_number(&query, "from")?.unwrap_or(0) as usize;
    let limit = query_number(&query, "limit")?
        .unwrap_or(ASSIGNMENT_PAGE)
        .min(ASSIGNMENT_PAGE) as usize;
    state.read(|c| {
        let checking = c.checking();
        let period = period
            .or(checking.current_period())
            .ok_or_else(|| Failure::new(ErrorCode::NotFound, "no checking period has begun"))?;
        checking
            .assignment(period, from, limit)
            .map(|a| Json(a).into_response())
            .ok_or_else(|| {
                Failure::new(
                    ErrorCode::NotFound,
                    format!("period {period} is not open (only open periods are kept)"),
                )
            })
    })
}

/// The decoy agent behind canary tasks: it answers like a broken host (a liveness answer
/// or a delivery statement signed by the wrong key, a commitment no row opens against), so
/// a checker that
/// really checks reports a failure and one that does not is caught.
fn decoy(state: &AppState, token: &str) -> Result<(), Failure> {
    if state.read(|c| c.checking().decoy(token).is_some()) {
        Ok(())
    } else {
        Err(Failure::new(ErrorCode::NotFound, "no such API route"))
    }
}

#[utoipa::path(post, path = "/v1/decoy/{token}/liveness", tag = "checking", summary = "A canary task's agent: liveness", request_body = LivenessChallenge, params(("token" = String, Path, description = "the canary task's token")), responses((status = 200, body = LivenessAnswer), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn decoy_liveness(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Json(challenge): Json<LivenessChallenge>,
) -> Result<Response, Failure> {
    decoy(&state, &token)?;
    let stranger = gpumesh_identity::Wallet::from_label(&token);
    let message = gpumesh_types::liveness_message(state.chain_id, &challenge);
    let signature = gpumesh_types::Sig(stranger.sign_message(message));
    Ok(Json(LivenessAnswer { signature }).into_response())
}

#[utoipa::path(post, path = "/v1/decoy/{token}/delivery", tag = "checking", summary = "A canary task's agent: a delivery statement", request_body = gpumesh_types::DeliveryChallenge, params(("token" = String, Path, description = "the canary task's token")), responses((status = 200, body = gpumesh_types::DeliveryAnswer), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn decoy_delivery(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Json(challenge): Json<gpumesh_types::DeliveryChallenge>,
) -> Result<Response, Failure> {
    decoy(&state, &token)?;
    let stranger = gpumesh_identity::Wallet::from_label(&token);
    let message = gpumesh_types::delivery_message(state.chain_id, &challenge, true);
    let signature = gpumesh_types::Sig(stranger.sign_message(message));
    Ok(Json(gpumesh_types::DeliveryAnswer {
        running: true,
        signature,
    })
    .into_response())
}

#[utoipa::path(post, path = "/v1/decoy/{token}/proof/commit", tag = "checking", summary = "A canary task's agent: proof commitment", request_body = ProofCommitRequest, params(("token" = String, Path, description = "the canary task's token")), responses((status = 200, body = ProofCommitment), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn decoy_commit(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Json(_request): Json<ProofCommitRequest>,
) -> Result<Response, Failure> {
    decoy(&state, &token)?;
    let root = alloy_primitives::keccak256(token.as_bytes());
    Ok(Json(ProofCommitment { root }).into_response())
}

#[utoipa::path(post, path = "/v1/decoy/{token}/proof/open", tag = "checking", summary = "A canary task's agent: proof opening", request_body = ProofOpenRequest, params(("token" = String, Path, description = "the canary task's token")), responses((status = 200, body = Opening), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn decoy_open(
    State(state): State<AppState>,
    Path(token): Path<String>,
    Json(request): Json<ProofOpenRequest>,
) -> Result<Response, Failure> {
    decoy(&state, &token)?;
    let params = state.read(|c| c.checking().params().sizing.proof);
    let rows = request
        .rows
        .iter()
        .take(params.spot_rows as usize)
        .map(|&index| gpumesh_types::OpenedRow {
            index,
            values: vec![0; params.inner as usize],
            path: Vec::new(),
        })
        .collect();
    Ok(Json(gpumesh_types::Opening { rows }).into_response())
}

#[utoipa::path(post, path = "/v1/deployments", tag = "deployments", summary = "Create a deployment: replicas across regions, funded under an allowance", request_body = DeploymentRequest, params(SignatureHeaders), responses((status = 200, body = DeploymentView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn create_deployment(
    State(state): State<AppState>,
    req: Signed<DeploymentRequest>,
) -> Result<Response, Failure> {
    state.limit(Limited::Job, req.signer)?;
    let view = state
        .mutate(move |c, now, _| c.create_deployment(req.signer, req.body, now))
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/v1/deployments", tag = "deployments", summary = "Deployments, of one owner when asked (at most 1000)", params(("owner" = Option<String>, Query, description = "only this owner's")), responses((status = 200, body = Vec<DeploymentView>), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn deployments(
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let owner = query
        .get("owner")
        .map(|o| address("owner", o))
        .transpose()?;
    Ok(Json(state.read(|c| c.deployments(owner))).into_response())
}

#[utoipa::path(get, path = "/v1/deployments/{id}", tag = "deployments", summary = "One deployment: regions, replicas, sessions served", params(("id" = u64, Path, description = "the deployment id")), responses((status = 200, body = DeploymentView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = deployment_id(&id)?;
    Ok(Json(state.read(|c| c.deployment_view(id))?).into_response())
}

#[utoipa::path(post, path = "/v1/deployments/{id}/scale", tag = "deployments", summary = "New replica bounds for one region (its owner)", request_body = ScaleRequest, params(("id" = u64, Path, description = "the deployment id"), SignatureHeaders), responses((status = 200, body = DeploymentView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn scale_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<ScaleRequest>,
) -> Result<Response, Failure> {
    let id = deployment_id(&id)?;
    let view = state
        .mutate(move |c, _, _| c.scale_deployment(req.signer, id, req.body))
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(post, path = "/v1/deployments/{id}/stop", tag = "deployments", summary = "Stop a deployment and all its replicas (its owner)", request_body = Object, params(("id" = u64, Path, description = "the deployment id"), SignatureHeaders), responses((status = 200, body = DeploymentView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn stop_deployment(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<serde_json::Value>,
) -> Result<Response, Failure> {
    let id = deployment_id(&id)?;
    let view = state
        .mutate(move |c, now, batch| c.stop_deployment(req.signer, id, now, batch))
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(post, path = "/v1/sessions", tag = "deployments", summary = "A slot for a player on the deployment's nearest free replica within a round-trip bound (its owner)", request_body = SessionRequest, params(SignatureHeaders), responses((status = 200, body = SessionView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn request_session(
    State(state): State<AppState>,
    req: Signed<SessionRequest>,
) -> Result<Response, Failure> {
    state.limit(Limited::Job, req.signer)?;
    let view = state
        .mutate(move |c, now, _| c.request_session(req.signer, req.body, now))
        .await?;
    Ok(Json(view).into_response())
}

#[utoipa::path(get, path = "/v1/sessions/{id}", tag = "deployments", summary = "One session", params(("id" = u64, Path, description = "the session id")), responses((status = 200, body = SessionView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn session(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Failure> {
    let id = session_id(&id)?;
    Ok(Json(state.session_view(id).await?).into_response())
}

#[utoipa::path(post, path = "/v1/sessions/{id}/end", tag = "deployments", summary = "The player left: free the slot (the deployment's owner)", request_body = Object, params(("id" = u64, Path, description = "the session id"), SignatureHeaders), responses((status = 200, body = SessionView), (status = "4XX", description = "refused: the error code says why", body = ApiError), (status = "5XX", description = "the indexer failed", body = ApiError)))]
async fn end_session(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<serde_json::Value>,
) -> Result<Response, Failure> {
    let id = session_id(&id)?;
    let view = state
        .mutate(move |c, now, _| c.end_session(req.signer, id, now))
        .await?;
    Ok(Json(view).into_response())
}

#[cfg(test)]
mod tests {
    use super::resolved_challenge_name;
    use gpumesh_types::ErrorCode;

    #[test]
    fn a_challenge_name_must_resolve_to_a_public_address() {
        let ips = |list: &[&str]| -> Vec<std::net::IpAddr> {
            list.iter().map(|ip| ip.parse().unwrap()).collect()
        };
        let url = "http://agent.example.org:7701";
        let judge = |list: &[&str]| resolved_challenge_name(url, "agent.example.org", &ips(list));
        assert!(
            judge(&[]).is_ok(),
            "an unresolved name is left to the checkers"
        );
        assert!(judge(&["8.8.8.8"]).is_ok());
        assert!(judge(&["127.0.0.1", "2606:4700:4700::1111"]).is_ok());
        for private in [
            &["127.0.0.1", "::1"][..],
            &["10.0.0.1"],
            &["169.254.169.254"],
            &["::ffff:192.168.1.1", "fd00::1"],
        ] {
            let refused = judge(private).unwrap_err();
            assert_eq!(refused.code, ErrorCode::InvalidChallengeUrl, "{private:?}");
            assert!(
                refused.message.contains("agent.example.org"),
                "{}",
                refused.message
            );
        }
    }
}

//! The HTTP routes: JSON in, JSON out, errors as [`gpumesh_types::ApiError`].

use std::collections::HashMap;
use std::time::Duration;

use alloy_primitives::Address;
use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gpumesh_types::{
    ErrorCode, FaucetRequest, Heartbeat, JobRequest, LeaseFinish, LeaseId, LeaseStarted, LogAppend,
    LogEvent, RegisterHost, SignedTx, WorkPoll,
};
use serde::Deserialize;

use crate::AppState;
use crate::auth::Signed;
use crate::error::Failure;

/// The longest a host's work poll is held open.
const MAX_POLL: Duration = Duration::from_secs(30);

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/health", get(|| async { "ok" }))
        .route("/v1/info", get(info))
        .route("/v1/containers", get(containers))
        .route("/v1/hosts", post(register_host))
        .route("/v1/hosts/heartbeat", post(heartbeat))
        .route("/v1/hosts/work", post(work))
        .route("/v1/jobs", post(submit_job))
        .route("/v1/leases", get(leases))
        .route("/v1/leases/{id}", get(lease))
        .route("/v1/leases/{id}/cancel", post(cancel))
        .route("/v1/leases/{id}/started", post(started))
        .route("/v1/leases/{id}/logs", post(append_logs).get(logs))
        .route("/v1/leases/{id}/finish", post(finish))
        .route("/v1/ledger/txs", post(submit_tx))
        .route("/v1/ledger/blocks", get(blocks))
        .route("/v1/accounts/{address}", get(account))
        .route("/v1/faucet", post(faucet))
        .route("/v1/observations", post(observe))
        .route("/v1/anchors", post(add_anchor))
        .fallback(|| async { Failure::new(ErrorCode::NotFound, "no such API route") })
        .method_not_allowed_fallback(|| async {
            Failure::new(
                ErrorCode::MethodNotAllowed,
                "this route does not take that method",
            )
        })
        .with_state(state)
}

fn lease_id(text: &str) -> Result<LeaseId, Failure> {
    text.parse().map(LeaseId).map_err(|_| {
        Failure::new(
            ErrorCode::UnknownLease,
            format!("lease {text:?} does not exist"),
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

async fn info(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.read(|c| c.info()))
}

async fn containers(State(state): State<AppState>) -> impl IntoResponse {
    Json(state.read(|c| c.registry().containers()))
}

async fn register_host(
    State(state): State<AppState>,
    req: Signed<RegisterHost>,
) -> Result<Response, Failure> {
    let registered = state
        .mutate(move |c, now, batch| c.register_host(req.signer, req.body, now, batch))
        .await?;
    Ok((StatusCode::CREATED, Json(registered)).into_response())
}

async fn heartbeat(
    State(state): State<AppState>,
    req: Signed<Heartbeat>,
) -> Result<Response, Failure> {
    state
        .mutate(move |c, now, _| c.heartbeat(req.signer, req.body, now))
        .await?;
    Ok(Json(serde_json::json!({})).into_response())
}

async fn work(State(state): State<AppState>, req: Signed<WorkPoll>) -> Result<Response, Failure> {
    let wait = Duration::from_millis(req.body.wait_ms).min(MAX_POLL);
    let deadline = tokio::time::Instant::now() + wait;
    let mut changed = state.changed.subscribe();
    loop {
        changed.mark_unchanged();
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
            _ = changed.changed() => {}
        }
    }
}

async fn submit_job(
    State(state): State<AppState>,
    req: Signed<JobRequest>,
) -> Result<Response, Failure> {
    let lease = state
        .mutate(move |c, now, _| c.submit_job(req.signer, req.body, now))
        .await?;
    Ok((StatusCode::CREATED, Json(lease)).into_response())
}

#[derive(Deserialize)]
struct LeaseFilter {
    buyer: Option<String>,
    host: Option<String>,
}

async fn leases(
    State(state): State<AppState>,
    Query(filter): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    let filter: LeaseFilter = LeaseFilter {
        buyer: filter.get("buyer").cloned(),
        host: filter.get("host").cloned(),
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
    Ok(Json(state.read(|c| c.leases_of(buyer, host))).into_response())
}

async fn lease(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    Ok(Json(state.read(|c| c.lease_view(id))?).into_response())
}

async fn cancel(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<serde_json::Value>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let lease = state
        .mutate(move |c, now, _| c.cancel(req.signer, id, now))
        .await?;
    Ok(Json(lease).into_response())
}

async fn started(
    State(state): State<AppState>,
    Path(id): Path<String>,
    req: Signed<LeaseStarted>,
) -> Result<Response, Failure> {
    let id = lease_id(&id)?;
    let lease = state
        .mutate(move |c, now, _| c.started(req.signer, id, now))
        .await?;
    Ok(Json(lease).into_response())
}

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
    state.read(|c| c.may_read_logs(&req.signer, id))?;
    let from: u64 = match query.get("from") {
        Some(v) => v
            .parse()
            .map_err(|_| Failure::new(ErrorCode::InvalidRequest, "from must be a whole number"))?,
        None => 0,
    };
    let follow = query.get("follow").is_some_and(|v| v == "true" || v == "1");
    struct Cursor {
        state: AppState,
        changed: tokio::sync::watch::Receiver<u64>,
        next: u64,
        done: bool,
    }
    let changed = state.changed.subscribe();
    let cursor = Cursor {
        state,
        changed,
        next: from,
        done: false,
    };
    let stream = futures_util::stream::unfold(cursor, move |mut cur| async move {
        loop {
            if cur.done {
                return None;
            }
            cur.changed.mark_unchanged();
            let (entries, ended) = cur.state.read(|c| c.logs(id, cur.next));
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
                if let Ok(lease) = cur.state.read(|c| c.lease_view(id))
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
                _ = cur.changed.changed() => {}
            }
        }
    });
    Response::builder()
        .header("content-type", "application/x-ndjson")
        .body(Body::from_stream(stream))
        .map_err(|e| Failure::internal(e.to_string()))
}

async fn submit_tx(
    State(state): State<AppState>,
    req: Signed<SignedTx>,
) -> Result<Response, Failure> {
    let accepted = state
        .mutate(move |c, now, batch| c.submit_tx(req.body, now, batch))
        .await?;
    Ok(Json(accepted).into_response())
}

async fn blocks(State(state): State<AppState>) -> Result<Response, Failure> {
    Ok(Json(state.read(|c| c.ledger().head().clone())).into_response())
}

async fn account(
    State(state): State<AppState>,
    Path(text): Path<String>,
) -> Result<Response, Failure> {
    let address = address("account", &text)?;
    Ok(Json(state.read(|c| c.account(address))).into_response())
}

async fn observe(
    State(state): State<AppState>,
    req: Signed<gpumesh_types::Observation>,
) -> Result<Response, Failure> {
    state
        .mutate(move |c, _, _| c.observe(req.signer, req.body))
        .await?;
    Ok(Json(serde_json::json!({})).into_response())
}

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

async fn faucet(
    State(state): State<AppState>,
    req: Signed<FaucetRequest>,
) -> Result<Response, Failure> {
    let accepted = state
        .mutate(move |c, now, batch| c.faucet(req.signer, req.body.amount, now, batch))
        .await?;
    Ok(Json(accepted).into_response())
}

//! Prometheus metrics at `GET /metrics` (the text exposition format), through the `metrics`
//! facade and its Prometheus exporter.
//!
//! Counters and histograms are recorded where things happen: every request by method,
//! matched route and status (and by error code when refused), match latency, the state
//! lock's wait and hold times, store commit latency, heartbeats. Gauges (hosts, containers
//! and leases by state, the ledger's height and transactions, escrow held, the treasury)
//! are read from the state when scraped, so they are never stale. One recorder serves the
//! process: several indexers in one process (tests) share it.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use gpumesh_types::{ErrorCode, LeaseState};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::core::Core;

/// Latency buckets, in seconds: from a lock taken at once to a long poll.
const BUCKETS: &[f64] = &[
    0.000_01, 0.000_05, 0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 15.0, 45.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// The process's recorder, installed on first use. `None` if another recorder was
/// installed first (then nothing is recorded here).
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => Some(handle),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics are off: another recorder is installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Counts and times every request by method, route (the pattern, never the raw path, so
/// the label set stays small) and status; a refusal also by its error code.
pub async fn track(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    // Only the methods the API knows make labels: any other token a client sends would
    // add a series of its own.
    let method = match *request.method() {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        _ => "other",
    }
    .to_string();
    let began = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        let code = wire_name(code);
        metrics::counter!("gpumesh_http_errors_total", "route" => route.clone(), "code" => code)
            .increment(1);
    }
    let labels = [("method", method), ("route", route), ("status", status)];
    metrics::histogram!("gpumesh_http_request_duration_seconds", &labels)
        .record(began.elapsed().as_secs_f64());
    metrics::counter!("gpumesh_http_requests_total", &labels).increment(1);
    response
}

/// Time spent waiting for the state's lock, and holding it.
pub fn lock_times(wait: Duration, hold: Duration) {
    metrics::histogram!("gpumesh_state_lock_wait_seconds").record(wait.as_secs_f64());
    metrics::histogram!("gpumesh_state_lock_hold_seconds").record(hold.as_secs_f64());
}

/// A request whose caller had left when its turn came, dropped unrun.
pub fn abandoned() {
    metrics::counter!("gpumesh_requests_abandoned_total").increment(1);
}

/// A request refused because the commit queue was full.
pub fn overloaded() {
    metrics::counter!("gpumesh_requests_overloaded_total").increment(1);
}

/// How many operations one durable write carried.
pub fn group_commit(operations: usize) {
    metrics::histogram!("gpumesh_commit_group_operations").record(operations as f64);
}

/// One durable store write.
pub fn store_commit(took: Duration, ok: bool) {
    metrics::histogram!("gpumesh_store_commit_seconds").record(took.as_secs_f64());
    if !ok {
        metrics::counter!("gpumesh_store_commit_failures_total").increment(1);
    }
}

/// One match attempt (a job submitted), with how long the matcher and booking took.
pub fn matched(took: Duration, found: bool) {
    let outcome = if found { "matched" } else { "unmatched" };
    metrics::counter!("gpumesh_matches_total", "outcome" => outcome).increment(1);
    metrics::histogram!("gpumesh_match_duration_seconds").record(took.as_secs_f64());
}

pub fn heartbeat() {
    metrics::counter!("gpumesh_heartbeats_total").increment(1);
}

/// A value's name on the wire (a state or an error code as its snake_case string): what
/// labels and listings call it.
pub fn wire_name<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        _ => String::new(),
    }
}

/// Tokens as a gauge's float (for display only; the ledger counts base units).
fn tokens(amount: gpumesh_types::Amount) -> f64 {
    amount.0 as f64 / gpumesh_types::ONE_TOKEN as f64
}

/// Sets the gauges that describe the state now.
pub fn observe(core: &Core, ready: bool, now_ms: u64) {
    // The figures the dashboard shows, counted once, by `Core::stats`.
    let stats = core.stats(now_ms);
    let registry = core.registry();
    let ledger = core.ledger();
    metrics::gauge!("gpumesh_ready").set(if ready { 1.0 } else { 0.0 });
    metrics::gauge!("gpumesh_hosts", "online" => "true").set(stats.hosts_online as f64);
    metrics::gauge!("gpumesh_hosts", "online" => "false")
        .set((stats.hosts - stats.hosts_online) as f64);
    for (state, n) in stats.containers_by_state {
        metrics::gauge!("gpumesh_containers", "state" => state).set(n as f64);
    }
    // Every state gets its series, zero included, so a state that empties reads 0. Live
    // states count every live lease; ended ones, those still within the retention.
    for state in LeaseState::ALL {
        metrics::gauge!("gpumesh_leases", "state" => wire_name(&state))
            .set(registry.leases_in(state) as f64);
    }
    let mut deployments: std::collections::BTreeMap<String, u64> = [
        gpumesh_types::DeploymentState::Active,
        gpumesh_types::DeploymentState::Underfunded,
        gpumesh_types::DeploymentState::Stopped,
    ]
    .iter()
    .map(|s| (wire_name(s), 0))
    .collect();
    let mut replicas = 0u64;
    for d in registry.deployments() {
        *deployments.entry(wire_name(&d.state)).or_default() += 1;
        replicas += d.replicas.iter().filter(|r| !r.retiring).count() as u64;
    }
    for (state, n) in deployments {
        metrics::gauge!("gpumesh_deployments", "state" => state).set(n as f64);
    }
    metrics::gauge!("gpumesh_deployment_replicas").set(replicas as f64);
    let mut sessions: std::collections::BTreeMap<String, u64> = [
        gpumesh_types::SessionState::Queued,
        gpumesh_types::SessionState::Active,
        gpumesh_types::SessionState::Ended,
        gpumesh_types::SessionState::Rejected,
    ]
    .iter()
    .map(|s| (wire_name(s), 0))
    .collect();
    for s in registry.sessions() {
        *sessions.entry(wire_name(&s.state)).or_default() += 1;
    }
    for (state, n) in sessions {
        metrics::gauge!("gpumesh_sessions", "state" => state).set(n as f64);
    }
    metrics::gauge!("gpumesh_ledger_height").set(stats.blocks as f64);
    metrics::gauge!("gpumesh_ledger_transactions").set(stats.transactions as f64);
    metrics::gauge!("gpumesh_escrow_held_tokens").set(tokens(ledger.activity().held));
    metrics::gauge!("gpumesh_escrows").set(ledger.escrow_count() as f64);
    metrics::gauge!("gpumesh_retired_lease_ranges").set(ledger.retired().range_count() as f64);
    metrics::gauge!("gpumesh_treasury_tokens").set(tokens(stats.treasury_balance));
}

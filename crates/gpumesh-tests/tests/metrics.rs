//! `/metrics` parsed as Prometheus text, its counters moving with what the test does. In a
//! test binary of its own: the metrics recorder is one per process.

use gpumesh_devnet::RuntimeChoice;
use gpumesh_tests::devnet;
use openmetrics_parser::prometheus::parse_prometheus;
use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};

type Scrape = MetricsExposition<PrometheusType, PrometheusValue>;

/// The value of `name`'s samples whose labels include `labels`, summed over the rest (a
/// histogram's: its count).
fn sample(scrape: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(family) = scrape.families.get(name) else {
        return 0.0;
    };
    family
        .iter_samples()
        .filter(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            PrometheusValue::Counter(c) => c.value.as_f64(),
            PrometheusValue::Gauge(n) | PrometheusValue::Unknown(n) => n.as_f64(),
            PrometheusValue::Histogram(h) => h.count.unwrap_or(0) as f64,
            PrometheusValue::Summary(_) => 0.0,
        })
        .sum()
}

async fn scrape(http: &reqwest::Client, base: &str) -> Scrape {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = response.text().await.unwrap();
    parse_prometheus(&text).unwrap_or_else(|e| panic!("{e:?}\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text_and_move_with_what_happens() {
    let net = devnet(1, RuntimeChoice::Process).await;
    let http = gpumesh_client::http();
    let base = net.api_url.clone();
    let before = scrape(&http, &base).await;

    // A route nothing else in the network calls.
    for _ in 0..3 {
        http.get(format!("{base}/v1/ledger/treasury"))
            .send()
            .await
            .unwrap();
    }
    let missing = http
        .get(format!("{base}/v1/leases/999999"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let client = net.buyer_client();
    let job = gpumesh_tests::job(
        gpumesh_types::GpuModel::H100,
        1,
        "echo hi",
        std::time::Duration::from_secs(30),
    );
    let lease = client.submit_job(&job).await.unwrap();
    client.cancel(lease.id).await.unwrap();
    // A deployment whose owner has allowed nothing waits, underfunded.
    client
        .create_deployment(&gpumesh_types::DeploymentRequest {
            gpu: gpumesh_types::GpuSelector::Model(gpumesh_types::GpuModel::H100),
            gpu_count: 1,
            image: job.image.clone(),
            command: job.command.clone(),
            ports: Vec::new(),
            env: Vec::new(),
            health: None,
            regions: vec![gpumesh_types::RegionSpec {
                name: "eu".into(),
                near: job.near,
                country: None,
                min: 1,
                max: 1,
                max_rtt_ms: None,
            }],
            max_price_per_gpu_hour: job.max_price_per_gpu_hour,
            period_ms: 60_000,
            sessions_per_replica: 0,
        })
        .await
        .unwrap();
    // Hosts beat every second on a local network.
    tokio::time::sleep(std::time::Duration::from_millis(1_500)).await;
    let after = scrape(&http, &base).await;

    let info = [("route", "/v1/ledger/treasury"), ("status", "200")];
    let moved = |name: &str, labels: &[(&str, &str)]| {
        sample(&after, name, labels) - sample(&before, name, labels)
    };
    assert_eq!(moved("gpumesh_http_requests_total", &info), 3.0);
    assert_eq!(moved("gpumesh_http_request_duration_seconds", &info), 3.0);
    let unknown = [("route", "/v1/leases/{id}"), ("code", "unknown_lease")];
    assert_eq!(moved("gpumesh_http_errors_total", &unknown), 1.0);
    assert_eq!(
        moved("gpumesh_matches_total", &[("outcome", "matched")]),
        1.0
    );
    assert!(moved("gpumesh_heartbeats_total", &[]) >= 1.0);
    assert!(moved("gpumesh_store_commit_seconds", &[]) >= 2.0);
    assert!(moved("gpumesh_state_lock_hold_seconds", &[]) >= 2.0);
    // Gauges describe the state as the API does.
    let status: serde_json::Value = http
        .get(format!("{base}/v1/info"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(sample(&after, "gpumesh_hosts", &[("online", "true")]), 1.0);
    assert_eq!(
        sample(&after, "gpumesh_leases", &[("state", "cancelled")]),
        1.0
    );
    assert_eq!(sample(&after, "gpumesh_ready", &[]), 1.0);
    assert_eq!(
        sample(&after, "gpumesh_deployments", &[("state", "underfunded")]),
        1.0
    );
    assert_eq!(sample(&after, "gpumesh_deployment_replicas", &[]), 0.0);
    assert_eq!(
        sample(&after, "gpumesh_sessions", &[("state", "active")]),
        0.0
    );
    assert!(
        sample(&after, "gpumesh_ledger_transactions", &[])
            <= status["transactions"].as_f64().unwrap()
    );
    assert!(sample(&after, "gpumesh_ledger_transactions", &[]) >= 1.0);
    net.stop().await.unwrap();
}

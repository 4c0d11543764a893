//! Memory follows live work: a lease that ended longer ago than the indexer's retention
//! leaves its memory (with its output) and is still served from the store, by id, in its
//! buyer's and its host's listings and with its output, across a restart; so does an
//! ended session. In a test binary of its own: it reads gauges, and the metrics recorder
//! is one per process.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use gpumesh_client::buyer::{JobOutcome, run_job};
use gpumesh_devnet::{Devnet, DevnetConfig, RuntimeChoice};
use gpumesh_tests::{job, small_world};
use gpumesh_types::{
    Amount, DeploymentRequest, ErrorCode, GpuModel, GpuSelector, LeaseId, LeaseState, LeaseView,
    LogEvent, NetworkStats, Page, RegionSpec, SessionRequest, SessionState,
};

/// The `gpumesh_leases` gauge of `state`: leases of that state in the indexer's memory.
async fn in_memory(http: &reqwest::Client, base: &str, state: &str) -> u64 {
    gauge(http, base, "gpumesh_leases", state).await
}

/// A gauge's value for one `state` label (or, with `""`, of a gauge without labels).
async fn gauge(http: &reqwest::Client, base: &str, name: &str, state: &str) -> u64 {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = if state.is_empty() {
        format!("{name} ")
    } else {
        format!("{name}{{state=\"{state}\"}} ")
    };
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
        .trim()
        .parse::<f64>()
        .unwrap() as u64
}

async fn listed(http: &reqwest::Client, url: &str) -> Vec<LeaseId> {
    let page: Page<LeaseView> = http.get(url).send().await.unwrap().json().await.unwrap();
    page.items.iter().map(|l| l.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_past_the_retention_leaves_memory_and_is_still_served_from_the_store() {
    let mut net = Devnet::start(DevnetConfig {
        hosts: small_world(2),
        runtime: RuntimeChoice::Process,
        checkers: 0,
        retention: Duration::from_secs(1),
        ..DevnetConfig::default()
    })
    .await
    .expect("the devnet starts");
    let http = gpumesh_client::http();
    let base = net.api_url.clone();
    let client = net.buyer_client();
    let buyer = net.buyer.address();

    let request = job(
        GpuModel::H100,
        1,
        "sleep 1; echo kept-in-the-store",
        Duration::from_secs(30),
    );
    let ended = match run_job(&client, &request, |_| {}).await.unwrap() {
        JobOutcome::Ended { lease, .. } => lease,
        JobOutcome::Unmatched { reason } => panic!("unmatched: {reason}"),
    };
    assert_eq!(ended.state, LeaseState::Completed);
    let id = ended.id;

    // Out of memory within the retention and a tick or two, and its id retired in the
    // ledger at most one more retention later (archived ids retire together).
    let deadline = Instant::now() + Duration::from_secs(15);
    while in_memory(&http, &base, "completed").await > 0
        || gauge(&http, &base, "gpumesh_escrows", "").await > 0
    {
        assert!(Instant::now() < deadline, "lease {id} never left memory");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let settled = ended.settlement.clone().expect("run_job funds its lease");
    assert!(settled.closed && settled.gpu_ms > 0, "{settled:?}");
    for restarted in [false, true] {
        if restarted {
            net.restart_indexer().await.expect("the indexer restarts");
            // A restart reads live work, not the archive.
            assert_eq!(in_memory(&http, &base, "completed").await, 0);
        }
        // Its escrow left the ledger's memory with it: its id is retired, and what it
        // settled still counts in the network's figures.
        assert_eq!(gauge(&http, &base, "gpumesh_escrows", "").await, 0);
        assert_eq!(
            gauge(&http, &base, "gpumesh_retired_lease_ranges", "").await,
            1
        );
        let stats: NetworkStats = (http.get(format!("{base}/v1/stats")).send().await)
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            (stats.delivered_gpu_ms, stats.fees_collected),
            (settled.gpu_ms, settled.treasury_share)
        );
        // By id: the view it ended with, settlement included.
        let served = client.lease(id).await.expect("served from the archive");
        assert_eq!(served, *ended, "after a restart: {restarted}");
        // In its buyer's and its host's listings.
        let of_buyer = listed(&http, &format!("{base}/v1/leases?buyer={buyer}")).await;
        assert_eq!(of_buyer, [id]);
        let of_host = listed(&http, &format!("{base}/v1/leases?host={}", ended.host)).await;
        assert_eq!(of_host, [id]);
        assert_eq!(listed(&http, &format!("{base}/v1/leases")).await, [id]);
        // With its output, and the end event that closes it.
        let events: Vec<LogEvent> = client
            .logs(id, 0, true)
            .await
            .unwrap()
            .map(Result::unwrap)
            .collect()
            .await;
        let output: String = events
            .iter()
            .filter_map(|e| match e {
                LogEvent::Log(entry) => Some(entry.data.as_str()),
                LogEvent::End { .. } => None,
            })
            .collect();
        assert!(output.contains("kept-in-the-store"), "{events:?}");
        assert!(
            matches!(events.last(), Some(LogEvent::End { lease }) if lease.id == id),
            "{events:?}"
        );
    }

    // Its id is never given again, and an id never given is still unknown.
    let next = client.submit_job(&request).await.unwrap();
    assert!(next.id > id, "{} after {id}", next.id);
    client.cancel(next.id).await.unwrap();
    let unknown = client.lease(LeaseId(next.id.0 + 100)).await.unwrap_err();
    assert_eq!(unknown.code(), Some(ErrorCode::UnknownLease), "{unknown}");
    // A listing merges memory and the archive in id order, one page after another.
    let page: Page<LeaseView> = http
        .get(format!("{base}/v1/leases?buyer={buyer}&limit=1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(page.items.iter().map(|l| l.id).collect::<Vec<_>>(), [id]);
    assert_eq!(page.next, Some(id.0.to_string()));
    let rest = listed(&http, &format!("{base}/v1/leases?buyer={buyer}&after={id}")).await;
    assert_eq!(rest, [next.id]);

    // A session, once ended and past the retention, likewise.
    let deployment = client
        .create_deployment(&DeploymentRequest {
            gpu: GpuSelector::Model(GpuModel::H100),
            gpu_count: 1,
            image: gpumesh_host::demo_image::DEMO_IMAGE.into(),
            command: vec!["/bin/sh".into(), "-c".into(), "sleep 600".into()],
            ports: Vec::new(),
            env: Vec::new(),
            health: None,
            regions: vec![RegionSpec {
                name: "eu".into(),
                near: ended.host_location.point,
                country: None,
                min: 1,
                max: 1,
                max_rtt_ms: None,
            }],
            max_price_per_gpu_hour: Amount::from_tokens(5),
            period_ms: 20_000,
            sessions_per_replica: 2,
        })
        .await
        .unwrap();
    client
        .allow(deployment.id, Amount::from_tokens(50))
        .await
        .unwrap();
    let asked = SessionRequest {
        deployment: deployment.id,
        near: ended.host_location.point,
        max_rtt_ms: 1_000,
        queue_ms: 20_000,
    };
    let session = client.request_session(&asked).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.session(session.id).await.unwrap().state != SessionState::Active {
        assert!(
            Instant::now() < deadline,
            "session {} never seated",
            session.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.end_session(session.id).await.unwrap();
    let over = client.session(session.id).await.unwrap();
    assert_eq!(over.state, SessionState::Ended);
    let deadline = Instant::now() + Duration::from_secs(15);
    while gauge(&http, &base, "gpumesh_sessions", "ended").await > 0 {
        assert!(
            Instant::now() < deadline,
            "session {} never left memory",
            session.id
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(client.session(session.id).await.unwrap(), over);
    net.restart_indexer().await.expect("the indexer restarts");
    assert_eq!(gauge(&http, &base, "gpumesh_sessions", "ended").await, 0);
    assert_eq!(client.session(session.id).await.unwrap(), over);
    let again = client.request_session(&asked).await.unwrap();
    assert!(again.id > session.id, "{} after {}", again.id, session.id);
    client.stop_deployment(deployment.id).await.unwrap();
    net.stop().await.unwrap();
}

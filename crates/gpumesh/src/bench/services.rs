//! `gpumesh bench services`: on a devnet, the time from `run --detach`'s request to a
//! ready endpoint, and session assignment latency through the API.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use gpumesh_client::buyer::{ServiceOutcome, start_service};
use gpumesh_devnet::{Devnet, DevnetConfig, world};
use gpumesh_host::demo_image::{DEMO_IMAGE, demo_service_command, demo_service_job};
use gpumesh_types::{
    Amount, DeploymentRequest, GeoPoint, GpuModel, GpuSelector, RegionSpec, SessionRequest,
    SessionState,
};
use serde_json::json;

use super::startup::percentile;

fn micros_stats(mut values: Vec<u64>) -> serde_json::Value {
    values.sort_unstable();
    let ms = |us: u64| us as f64 / 1_000.0;
    json!({
        "samples": values.len(),
        "min_ms": values.first().map(|&v| ms(v)),
        "p50_ms": ms(percentile(&values, 50.0)),
        "p90_ms": ms(percentile(&values, 90.0)),
        "p99_ms": ms(percentile(&values, 99.0)),
        "max_ms": values.last().map(|&v| ms(v)),
    })
}

pub async fn services(
    runtime: gpumesh_devnet::RuntimeChoice,
    runs: u32,
    sessions: u32,
    docker_socket: Option<String>,
) -> anyhow::Result<ExitCode> {
    if runs == 0 || sessions == 0 {
        bail!("--runs and --sessions must be at least 1");
    }
    let config = DevnetConfig {
        hosts: world().into_iter().take(1).collect(),
        runtime,
        docker_socket,
        ..DevnetConfig::default()
    };
    let net = Devnet::start(config).await?;
    let client = net.buyer_client();
    let frankfurt = GeoPoint {
        lat: 50.11,
        lon: 8.68,
    };
    let job = demo_service_job(GpuModel::H100, frankfurt, Amount::from_tokens(10), 100);
    // The first start warms the engine's caches and is not counted.
    let mut ready = Vec::new();
    let bar = super::progress(runs as u64 + 1, "services");
    for i in 0..=runs {
        match start_service(&client, &job, |_| {}).await? {
            ServiceOutcome::Ready { lease, ready: took } => {
                if i > 0 {
                    ready.push(took.as_micros() as u64);
                }
                client.cancel(lease.id).await?;
                // Its GPU is free again once the host reports the end.
                let began = Instant::now();
                while !client.lease(lease.id).await?.state.is_terminal() {
                    if began.elapsed() > Duration::from_secs(30) {
                        bail!("lease {} did not end after its cancellation", lease.id);
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            other => bail!("the service did not become ready: {other:?}"),
        }
        bar.inc(1);
    }
    drop(bar);

    let deployment = client
        .create_deployment(&DeploymentRequest {
            gpu: GpuSelector::Model(GpuModel::H100),
            gpu_count: 1,
            image: DEMO_IMAGE.into(),
            command: demo_service_command(8080),
            ports: job.ports.clone(),
            env: Vec::new(),
            health: job.health.clone(),
            regions: vec![RegionSpec {
                name: "frankfurt".into(),
                near: frankfurt,
                country: None,
                min: 2,
                max: 2,
                max_rtt_ms: None,
            }],
            max_price_per_gpu_hour: Amount::from_tokens(10),
            period_ms: 600_000,
            sessions_per_replica: 100,
        })
        .await?;
    client
        .allow(deployment.id, Amount::from_tokens(100))
        .await?;
    let began = Instant::now();
    loop {
        let d = client.deployment(deployment.id).await?;
        let serving = d
            .replicas
            .iter()
            .filter(|r| r.health == Some(gpumesh_types::ServiceHealth::Ready))
            .count();
        if serving == 2 {
            break;
        }
        if began.elapsed() > Duration::from_secs(60) {
            bail!("the deployment's replicas did not become ready: {d:?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut assigned = Vec::new();
    let bar = super::progress(sessions as u64, "sessions");
    for _ in 0..sessions {
        let asked = Instant::now();
        let s = client
            .request_session(&SessionRequest {
                deployment: deployment.id,
                near: frankfurt,
                max_rtt_ms: 40,
                queue_ms: 0,
            })
            .await?;
        assigned.push(asked.elapsed().as_micros() as u64);
        if s.state != SessionState::Active {
            bail!("session {} got no slot: {:?}", s.id, s.rejected);
        }
        client.end_session(s.id).await?;
        bar.inc(1);
    }
    drop(bar);
    client.stop_deployment(deployment.id).await?;
    let report = json!({
        "runtime": net.runtime_kind(),
        "runtime_note": net.runtime_note,
        "detach_to_ready": micros_stats(ready),
        "session_assignment": micros_stats(assigned),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    net.stop().await?;
    Ok(ExitCode::SUCCESS)
}

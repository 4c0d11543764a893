//! `gpumesh bench startup`: request to first output on a one-host devnet.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::bail;
use gpumesh_client::buyer::{JobOutcome, run_job};
use gpumesh_devnet::{Devnet, DevnetConfig, world};
use gpumesh_host::demo_image::DEMO_IMAGE;
use gpumesh_types::{Amount, GpuModel, JobRequest, LeaseState};
use serde_json::json;

/// Percentile of sorted values (nearest rank).
pub fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn stats(mut values: Vec<u64>) -> serde_json::Value {
    values.sort_unstable();
    json!({
        "min": values.first(),
        "p50": percentile(&values, 50.0),
        "p90": percentile(&values, 90.0),
        "max": values.last(),
    })
}

pub async fn startup(
    runtime: gpumesh_devnet::RuntimeChoice,
    runs: u32,
    docker_socket: Option<String>,
) -> anyhow::Result<ExitCode> {
    if runs == 0 {
        bail!("--runs must be at least 1");
    }
    let config = DevnetConfig {
        hosts: world().into_iter().take(1).collect(),
        runtime,
        docker_socket,
        ..DevnetConfig::default()
    };
    let net = Devnet::start(config).await?;
    let client = net.buyer_client();
    let job = JobRequest::new(
        GpuModel::H100,
        1,
        "50.11,8.68".parse()?,
        Amount::from_tokens(10),
        60_000,
        DEMO_IMAGE,
        vec!["/bin/sh".into(), "-c".into(), "echo ready".into()],
    );
    let mut first = Vec::new();
    let mut total = Vec::new();
    let bar = super::progress(runs as u64 + 1, "jobs");
    for i in 0..=runs {
        bar.inc(1);
        let outcome = run_job(&client, &job, |_| {}).await?;
        let JobOutcome::Ended {
            lease,
            first_output,
            total: took,
        } = outcome
        else {
            bail!("the benchmark job was not matched");
        };
        if lease.state != LeaseState::Completed {
            bail!(
                "lease {} ended {:?}: {:?}",
                lease.id,
                lease.state,
                lease.failure
            );
        }
        let Some(first_output) = first_output else {
            bail!("lease {} printed nothing", lease.id);
        };
        if i > 0 {
            first.push(first_output.as_millis() as u64);
            total.push(took.as_millis() as u64);
        }
        eprint!("\r{}/{runs}", i);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!();
    let report = json!({
        "bench": "startup",
        "runtime": net.runtime_kind(),
        "runtime_note": net.runtime_note,
        "runs": runs,
        "request_to_first_output_ms": stats(first),
        "request_to_receipt_ms": stats(total),
    });
    net.stop().await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(ExitCode::SUCCESS)
}

//! The scripted demo (`gpumesh devnet --demo`): jobs of several GPU models from buyers in
//! several places, at least one that no host can take, and a summary with a receipt per
//! lease that must balance to the base unit.

use futures_util::future::join_all;
use gpumesh_client::buyer::{JobEvent, JobOutcome, run_job};
use gpumesh_host::demo_image::DEMO_IMAGE;
use gpumesh_types::{Amount, GeoPoint, GpuModel, JobRequest, LeaseState, LogStream};
use serde::Serialize;

use crate::Devnet;

/// One job of the script.
#[derive(Clone, Debug)]
pub struct DemoJob {
    pub name: &'static str,
    /// Where the buyer is, for the reader.
    pub from: &'static str,
    pub request: JobRequest,
}

/// The workload every demo job runs: it prints who and where it is, a few steps, and ends.
pub fn demo_command() -> Vec<String> {
    let script = "echo \"hello from lease $GPUMESH_LEASE_ID: $GPUMESH_GPU_COUNT x $GPUMESH_GPU_MODEL (simulated=$GPUMESH_SIMULATED)\"; \
                  i=1; while [ $i -le 3 ]; do echo \"step $i/3\"; sleep 0.2; i=$((i+1)); done; echo done";
    vec!["/bin/sh".into(), "-c".into(), script.into()]
}

fn job(
    name: &'static str,
    from: &'static str,
    near: (f64, f64),
    gpu: GpuModel,
    count: u16,
    cap: &str,
) -> DemoJob {
    DemoJob {
        name,
        from,
        request: JobRequest::new(
            gpu,
            count,
            GeoPoint {
                lat: near.0,
                lon: near.1,
            },
            Amount::parse_tokens(cap).expect("demo prices parse"),
            60_000,
            DEMO_IMAGE,
            demo_command(),
        ),
    }
}

/// The script: six jobs that the default world can take and two that it cannot.
pub fn script() -> Vec<DemoJob> {
    use GpuModel::*;
    vec![
        job("train-llm", "Paris", (48.8566, 2.3522), H100, 4, "3.00"),
        job(
            "render-frames",
            "Mumbai",
            (19.0760, 72.8777),
            Rtx4090,
            1,
            "1.00",
        ),
        job("finetune", "London", (51.5074, -0.1278), A100_80, 2, "2.00"),
        job("inference", "Seoul", (37.5665, 126.9780), H200, 1, "4.00"),
        job(
            "cloud-gaming",
            "Rio de Janeiro",
            (-22.9068, -43.1729),
            Rtx4090,
            1,
            "0.80",
        ),
        job("batch-embed", "Dubai", (25.2048, 55.2708), L40S, 2, "1.50"),
        job("too-big", "New York", (40.7128, -74.0060), H100, 16, "5.00"),
        job("too-cheap", "Osaka", (34.6937, 135.5023), H200, 1, "1.00"),
    ]
}

/// What one lease cost and who got what, all in base units.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    pub name: String,
    pub lease_id: u64,
    pub state: LeaseState,
    pub host: String,
    pub host_name: String,
    pub distance_km: f64,
    pub gpu: GpuModel,
    pub gpu_count: u16,
    pub exit_code: Option<i64>,
    pub gpu_ms: u64,
    pub escrow: Amount,
    pub charged: Amount,
    pub host_share: Amount,
    pub treasury_share: Amount,
    pub refund: Amount,
    /// `host_share + treasury_share + refund == escrow`.
    pub balanced: bool,
    pub first_output_ms: Option<u64>,
    pub total_ms: u64,
    /// What the workload printed.
    pub output: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Unmatched {
    pub name: String,
    pub from: String,
    pub gpu: gpumesh_types::GpuSelector,
    pub gpu_count: u16,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct LedgerCheck {
    pub blocks: u64,
    pub transactions: u64,
    pub state_root: String,
    pub supply_conserved: bool,
    pub error: Option<String>,
}

/// The demo's result; `--json` prints it as one object.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub api: String,
    pub runtime: gpumesh_types::RuntimeKind,
    pub runtime_note: String,
    pub jobs_submitted: u32,
    pub jobs_completed: u32,
    pub jobs_failed: u32,
    pub unmatched: u32,
    pub unmatched_jobs: Vec<Unmatched>,
    pub treasury_balance: Amount,
    pub ledger_ok: bool,
    pub ledger: Option<LedgerCheck>,
    pub receipts: Vec<Receipt>,
}

/// Runs the script's jobs at once and collects their receipts. `print` receives each
/// line of progress (for a person); pass a no-op for JSON output.
pub async fn run(
    devnet: &Devnet,
    jobs: &[DemoJob],
    print: &(dyn Fn(String) + Sync),
) -> anyhow::Result<Summary> {
    let client = devnet.buyer_client();
    let runs = jobs.iter().map(|job| {
        let client = &client;
        async move {
            let mut output = String::new();
            let outcome = run_job(client, &job.request, |event| match event {
                JobEvent::Matched(lease) => print(format!(
                    "[{}] from {}: matched {} × {} on {} ({:.0} km) at {} per GPU-hour, escrow {}",
                    job.name,
                    job.from,
                    lease.gpu_count,
                    lease.gpu,
                    lease.host_name,
                    lease.distance_km,
                    lease.price_per_gpu_hour.tokens(),
                    lease.escrow.tokens()
                )),
                JobEvent::Funded(_) => {}
                JobEvent::Output(entry) => {
                    if entry.stream != LogStream::System {
                        output.push_str(&entry.data);
                    }
                    for line in entry.data.lines() {
                        print(format!("[{}] {line}", job.name));
                    }
                }
                JobEvent::Reconnecting(e) => print(format!("[{}] reconnecting: {e}", job.name)),
            })
            .await;
            (job, outcome, output)
        }
    });
    let results = join_all(runs).await;

    let mut summary = Summary {
        api: devnet.api_url.clone(),
        runtime: devnet.runtime_kind(),
        runtime_note: devnet.runtime_note.clone(),
        jobs_submitted: jobs.len() as u32,
        jobs_completed: 0,
        jobs_failed: 0,
        unmatched: 0,
        unmatched_jobs: Vec::new(),
        treasury_balance: Amount::ZERO,
        ledger_ok: false,
        ledger: None,
        receipts: Vec::new(),
    };
    for (job, outcome, output) in results {
        match outcome? {
            JobOutcome::Unmatched { reason } => {
                print(format!(
                    "[{}] from {}: not matched: {reason}",
                    job.name, job.from
                ));
                summary.unmatched += 1;
                summary.unmatched_jobs.push(Unmatched {
                    name: job.name.into(),
                    from: job.from.into(),
                    gpu: job.request.gpu,
                    gpu_count: job.request.gpu_count,
                    reason,
                });
            }
            JobOutcome::Ended {
                lease,
                first_output,
                total,
            } => {
                if lease.state == LeaseState::Completed && lease.exit_code == Some(0) {
                    summary.jobs_completed += 1;
                } else {
                    summary.jobs_failed += 1;
                }
                let s = lease
                    .settlement
                    .clone()
                    .unwrap_or(gpumesh_types::SettlementView {
                        escrow: Amount::ZERO,
                        gpu_ms: 0,
                        charged: Amount::ZERO,
                        host_share: Amount::ZERO,
                        treasury_share: Amount::ZERO,
                        refund: Amount::ZERO,
                        closed: false,
                    });
                let balanced =
                    s.closed && s.host_share.0 + s.treasury_share.0 + s.refund.0 == s.escrow.0;
                summary.receipts.push(Receipt {
                    name: job.name.into(),
                    lease_id: lease.id.0,
                    state: lease.state,
                    host: lease.host.to_string(),
                    host_name: lease.host_name.clone(),
                    distance_km: (lease.distance_km * 10.0).round() / 10.0,
                    gpu: lease.gpu,
                    gpu_count: lease.gpu_count,
                    exit_code: lease.exit_code,
                    gpu_ms: s.gpu_ms,
                    escrow: s.escrow,
                    charged: s.charged,
                    host_share: s.host_share,
                    treasury_share: s.treasury_share,
                    refund: s.refund,
                    balanced,
                    first_output_ms: first_output.map(|d| d.as_millis() as u64),
                    total_ms: total.as_millis() as u64,
                    output,
                });
            }
        }
    }
    let treasury = client.info().await?.treasury;
    summary.treasury_balance = client.account(treasury).await?.balance;
    Ok(summary)
}

/// Replays the stopped devnet's ledger from its store and records the verdict.
pub fn check_ledger(summary: &mut Summary, data_dir: &std::path::Path) {
    let check = gpumesh_store::Store::open_existing(data_dir)
        .map_err(|e| e.to_string())
        .and_then(|store| store.verify().map_err(|e| e.to_string()));
    let check = match check {
        Ok(report) => LedgerCheck {
            blocks: report.blocks,
            transactions: report.transactions,
            state_root: report.state_root.to_string(),
            supply_conserved: report.supply_conserved,
            error: None,
        },
        Err(error) => LedgerCheck {
            blocks: 0,
            transactions: 0,
            state_root: String::new(),
            supply_conserved: false,
            error: Some(error),
        },
    };
    summary.ledger_ok = check.error.is_none()
        && check.supply_conserved
        && summary.receipts.iter().all(|r| r.balanced);
    summary.ledger = Some(check);
}

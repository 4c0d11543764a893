//! The scripted demo (`gpumesh devnet --demo`): jobs of several GPU models from buyers in
//! several places, at least one that no host can take, and a summary with a receipt per
//! lease that must balance to the base unit. Then the checkers at work: two cheating
//! hosts rejected by their capacity proofs, a host that goes silent marked offline by the
//! quorum, a lazy checker banned by canaries, and an epoch that pays checkers. And Proof
//! of Delivery: a host that bills its lease's whole escrow has every bill refused and its
//! buyer refunded, and a service that stops answering is ended by the checkers.

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
    /// Checker nodes in the network.
    pub checkers: u32,
    /// Hosts with a container the capacity proof rejected, and why.
    pub rejected_hosts: Vec<RejectedHost>,
    /// Hosts a quorum of checkers marked offline after they went silent.
    pub offline_detected: u32,
    /// From the host's death to the quorum's verdict.
    pub offline_detected_ms: Option<u64>,
    pub banned_checkers: u32,
    pub ban_reasons: Vec<String>,
    /// Rewards the ledger paid checkers (cumulative, base units).
    pub checker_rewards: Amount,
    /// A paid checker's proof for the first epoch, from the indexer's stored reward
    /// tree, with whether it folds to its root and how long the request took.
    pub reward_proof: Option<gpumesh_types::RewardProof>,
    pub reward_proof_ok: bool,
    pub reward_proof_ms: Option<u64>,
    /// The demo service's endpoint answered an HTTP request with its page.
    pub service_reachable: bool,
    /// From `run --detach`'s request to a ready endpoint.
    pub service_ready_ms: Option<u64>,
    pub deployments: u32,
    pub sessions_served: u64,
    pub sessions_rejected: u64,
    /// Rejected sessions by reason.
    pub sessions_rejected_reasons: std::collections::BTreeMap<String, u64>,
    /// Estimated round trip of the sessions served, 95th percentile.
    pub session_rtt_p95_ms: Option<f64>,
    /// Session requests answered with a slot at once, through the API: latency.
    pub session_assign_p50_ms: Option<f64>,
    pub session_assign_p99_ms: Option<f64>,
    pub scale_ups: u64,
    pub scale_downs: u64,
    /// Replicas re-placed after their host was lost (or they turned unhealthy).
    pub replicas_replaced: u64,
    /// Usage records the indexer refused as above the time it observed or checkers saw
    /// delivered (`usage_exceeds_elapsed`, `usage_exceeds_delivered`), as its metrics
    /// count them network-wide: in the demo only the over-billing host over-claims.
    pub overbilling_refused: u64,
    /// The over-billing host's lease ended with its buyer refunded everything unsettled.
    pub overbilled_buyer_refunded: bool,
    /// Leases a quorum of checkers ended as not delivered.
    pub delivery_failures_detected: u32,
    /// What the undelivered service's buyer got back.
    pub undelivered_refund: Amount,
}

/// What the delivery part of the demo saw.
#[derive(Debug, Clone, Default)]
pub struct DeliveryReport {
    pub overbilling_refused: u64,
    pub overbilled_buyer_refunded: bool,
    pub delivery_failures_detected: u32,
    pub undelivered_refund: Amount,
}

impl Summary {
    pub fn add_delivery(&mut self, report: DeliveryReport) {
        self.overbilling_refused = report.overbilling_refused;
        self.overbilled_buyer_refunded = report.overbilled_buyer_refunded;
        self.delivery_failures_detected = report.delivery_failures_detected;
        self.undelivered_refund = report.undelivered_refund;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct RejectedHost {
    pub host: String,
    pub reason: String,
}

/// The demo's world: the default hosts, and two that cheat on their capacity proofs.
pub fn hosts() -> Vec<crate::HostSpec> {
    let mut hosts = crate::world();
    let cheat = |name: &str, lat, lon, country: &str, gpu, prover| crate::HostSpec {
        name: name.into(),
        lat,
        lon,
        country: country.into(),
        gpu,
        count: 2,
        price: "0.20".into(),
        prover,
        claims: gpumesh_host::UsageClaims::Metered,
    };
    // Claims two H100s, computes at a T4's speed.
    hosts.push(cheat(
        "lagos-overclaim",
        6.5244,
        3.3792,
        "NG",
        GpuModel::H100,
        crate::SimulatedDevice::Actually(GpuModel::T4),
    ));
    // Proves its A10 honestly, then bills every lease's whole escrow, whatever ran.
    hosts.push(crate::HostSpec {
        name: OVERBILLING_HOST.into(),
        lat: 30.0444,
        lon: 31.2357,
        country: "EG".into(),
        gpu: GpuModel::A10,
        count: 1,
        price: "0.40".into(),
        prover: crate::SimulatedDevice::AsClaimed,
        claims: gpumesh_host::UsageClaims::WholeEscrow,
    });
    // Claims its RTX 4090s honestly but skips a tenth of the work.
    hosts.push(cheat(
        "warsaw-skipper",
        52.2297,
        21.0122,
        "PL",
        GpuModel::Rtx4090,
        crate::SimulatedDevice::SkipsRows(100),
    ));
    hosts
}

/// The demo's host that bills more than it ran.
pub const OVERBILLING_HOST: &str = "cairo-overbill";

/// Proof of Delivery at work, alongside the checks: a short job on the over-billing host,
/// whose every bill is refused until the protocol ends the lease at its deadline and
/// refunds the buyer; and a service that answers for a few seconds, then stops while its
/// workload runs on, which the checkers' quorum ends with the rest refunded.
pub async fn delivery(
    client: gpumesh_client::Client,
    api: String,
    print: &(dyn Fn(String) + Sync),
) -> anyhow::Result<DeliveryReport> {
    let mut report = DeliveryReport::default();
    let overbilled = async {
        let mut request = JobRequest::new(
            GpuModel::A10,
            1,
            GeoPoint {
                lat: 30.0444,
                lon: 31.2357,
            },
            Amount::from_tokens(1),
            // Long enough that the whole escrow stays far above the time observed
            // when its claim arrives: refused as such, the agent gives up its end, then
            // states the lease not running, and the checkers end it.
            600_000,
            DEMO_IMAGE,
            vec!["/bin/sh".into(), "-c".into(), "sleep 1; echo done".into()],
        );
        request.max_rtt_ms = None;
        run_job(&client, &request, |_| {}).await
    };
    let undelivered = async {
        let mut job = gpumesh_host::demo_image::demo_service_job(
            GpuModel::H100,
            GeoPoint {
                lat: 39.0438,
                lon: -77.4874,
            },
            Amount::from_tokens(5),
            300,
        );
        // Serves for a few seconds, then its server stops while the workload runs on.
        job.command = gpumesh_host::demo_image::failing_service_command(8080, 6);
        job.max_duration_ms = 300_000;
        let lease = match client.submit_job(&job).await {
            Ok(lease) => lease,
            Err(e) => return Err(anyhow::anyhow!("the failing service was not matched: {e}")),
        };
        client.fund(&lease).await?;
        print(format!(
            "a service on {} will stop answering while its workload runs on…",
            lease.host_name
        ));
        let began = std::time::Instant::now();
        loop {
            let view = client.lease(lease.id).await?;
            if view.state.is_terminal() || began.elapsed() > std::time::Duration::from_secs(60) {
                return Ok(view);
            }
            pause().await;
        }
    };
    let (overbilled, undelivered) = tokio::join!(overbilled, undelivered);
    if let Ok(JobOutcome::Ended { lease, .. }) = &overbilled {
        let s = lease.settlement.clone();
        report.overbilled_buyer_refunded = s
            .as_ref()
            .is_some_and(|s| s.closed && s.charged == Amount::ZERO && s.refund == s.escrow);
        print(format!(
            "{OVERBILLING_HOST} billed lease {}'s whole escrow: refused; the lease ended {:?} and its buyer got back {} of {} tokens",
            lease.id,
            lease.state,
            s.as_ref().map_or("0".into(), |s| s.refund.tokens()),
            s.as_ref().map_or("0".into(), |s| s.escrow.tokens()),
        ));
    }
    let metrics = gpumesh_client::http()
        .get(format!("{api}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    report.overbilling_refused = metrics
        .lines()
        .filter(|l| {
            l.starts_with("gpumesh_http_errors_total{")
                && (l.contains("code=\"usage_exceeds_elapsed\"")
                    || l.contains("code=\"usage_exceeds_delivered\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64;
    let lease = undelivered?;
    if lease.state == LeaseState::Failed
        && lease
            .failure
            .as_deref()
            .is_some_and(|f| f.contains("not delivered"))
    {
        report.delivery_failures_detected = 1;
        report.undelivered_refund = lease.settlement.as_ref().map_or(Amount::ZERO, |s| s.refund);
        print(format!(
            "the checkers found lease {} not delivered and ended it; its buyer got back {} tokens",
            lease.id,
            report.undelivered_refund.tokens()
        ));
    }
    Ok(report)
}

async fn pause() {
    tokio::time::sleep(std::time::Duration::from_millis(250)).await
}

/// The host that goes silent.
pub const SILENT_HOST: &str = "johannesburg";

/// After the jobs: what the checkers decided, a host killed and found offline by the
/// quorum, the lazy checker banned, and an epoch that pays checkers.
pub async fn checks(
    devnet: &mut Devnet,
    summary: &mut Summary,
    print: &(dyn Fn(String) + Sync),
) -> anyhow::Result<()> {
    let client = devnet.buyer_client();
    let checkers = devnet.checker_addresses();
    summary.checkers = checkers.len() as u32;
    let containers = client.containers().await?;
    let mut rejected: Vec<RejectedHost> = containers
        .iter()
        .filter_map(|c| {
            c.rejected.as_ref().map(|reason| RejectedHost {
                host: c.host_name.clone(),
                reason: reason.clone(),
            })
        })
        .collect();
    rejected.sort_by(|a, b| a.host.cmp(&b.host));
    rejected.dedup_by(|a, b| a.host == b.host);
    for r in &rejected {
        print(format!("checkers rejected {}: {}", r.host, r.reason));
    }
    summary.rejected_hosts = rejected;

    let silent = containers
        .iter()
        .find(|c| c.host_name == SILENT_HOST)
        .map(|c| c.host);
    devnet.kill_host(SILENT_HOST)?;
    let killed = std::time::Instant::now();
    print(format!("{SILENT_HOST} goes silent…"));
    while killed.elapsed() < std::time::Duration::from_secs(30) {
        let offline =
            client.containers().await?.iter().any(|c| {
                Some(c.host) == silent && c.state == gpumesh_types::ContainerState::Offline
            });
        if offline {
            summary.offline_detected = 1;
            summary.offline_detected_ms = Some(killed.elapsed().as_millis() as u64);
            print(format!(
                "a quorum of checkers marked {SILENT_HOST} offline after {} ms",
                killed.elapsed().as_millis()
            ));
            break;
        }
        pause().await;
    }

    let began = std::time::Instant::now();
    while began.elapsed() < std::time::Duration::from_secs(30) {
        let banned: Vec<gpumesh_types::CheckerView> = client
            .checkers()
            .await?
            .into_iter()
            .filter(|c| c.banned_until_ms.is_some())
            .collect();
        if !banned.is_empty() {
            summary.banned_checkers = banned.len() as u32;
            summary.ban_reasons = banned.iter().filter_map(|c| c.ban_reason.clone()).collect();
            for c in &banned {
                print(format!(
                    "checker {} banned: {}",
                    c.address,
                    c.ban_reason.clone().unwrap_or_default()
                ));
            }
            break;
        }
        pause().await;
    }

    // The first epoch closes a minute after the indexer started; it pays checkers.
    let began = std::time::Instant::now();
    print("waiting for the first epoch to pay checkers…".into());
    while began.elapsed() < std::time::Duration::from_secs(90) {
        let mut paid = Amount::ZERO;
        let mut first_paid = None;
        for &c in &checkers {
            let reward = client.account(c).await?.cumulative_rewards;
            if reward > Amount::ZERO {
                first_paid.get_or_insert(c);
            }
            paid = Amount(paid.0 + reward.0);
        }
        if let Some(checker) = first_paid {
            summary.checker_rewards = paid;
            print(format!(
                "epoch closed: checkers were paid {} tokens",
                paid.tokens()
            ));
            let asked = std::time::Instant::now();
            let proof = client.reward_proof(checker, 0).await?;
            summary.reward_proof_ms = Some(asked.elapsed().as_millis() as u64);
            summary.reward_proof_ok = proof.cumulative > Amount::ZERO
                && gpumesh_ledger::merkle::process_proof(proof.leaf, &proof.proof) == proof.root;
            print(format!(
                "checker {checker}'s reward proof for epoch 0: {} siblings, {}",
                proof.proof.len(),
                if summary.reward_proof_ok {
                    "folds to the reward root"
                } else {
                    "DOES NOT fold to the reward root"
                }
            ));
            summary.reward_proof = Some(proof);
            break;
        }
        pause().await;
    }
    let treasury = client.info().await?.treasury;
    summary.treasury_balance = client.account(treasury).await?.balance;
    Ok(())
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
        checkers: 0,
        rejected_hosts: Vec::new(),
        offline_detected: 0,
        offline_detected_ms: None,
        banned_checkers: 0,
        ban_reasons: Vec::new(),
        checker_rewards: Amount::ZERO,
        reward_proof: None,
        reward_proof_ok: false,
        reward_proof_ms: None,
        service_reachable: false,
        service_ready_ms: None,
        deployments: 0,
        sessions_served: 0,
        sessions_rejected: 0,
        sessions_rejected_reasons: Default::default(),
        session_rtt_p95_ms: None,
        session_assign_p50_ms: None,
        session_assign_p99_ms: None,
        scale_ups: 0,
        scale_downs: 0,
        overbilling_refused: 0,
        overbilled_buyer_refunded: false,
        delivery_failures_detected: 0,
        undelivered_refund: Amount::ZERO,
        replicas_replaced: 0,
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
                        started_ms: None,
                        max_gpu_ms: 0,
                        bound_gpu_ms: None,
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

/// Players of the session burst: (city, latitude, longitude).
const PLAYERS: &[(&str, f64, f64)] = &[
    ("Paris", 48.8566, 2.3522),
    ("Berlin", 52.52, 13.405),
    ("Madrid", 40.4168, -3.7038),
    ("London", 51.5074, -0.1278),
    ("Milan", 45.4642, 9.19),
    ("Vienna", 48.2082, 16.3738),
    ("New York", 40.7128, -74.006),
    ("Boston", 42.3601, -71.0589),
    ("Toronto", 43.6532, -79.3832),
    ("Chicago", 41.8781, -87.6298),
];

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some((sorted[rank - 1] * 10.0).round() / 10.0)
}

async fn wait_for<T>(
    what: &str,
    within: std::time::Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<Option<T>>,
) -> anyhow::Result<T> {
    let began = std::time::Instant::now();
    loop {
        if let Some(found) = check().await? {
            return Ok(found);
        }
        if began.elapsed() > within {
            anyhow::bail!("{what}: not within {} s", within.as_secs());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Services: a service started detached and fetched over HTTP at its endpoint; a
/// deployment in two regions serving a burst of players, growing and shrinking with them;
/// a host lost under a replica, which is re-placed.
pub async fn services(
    devnet: &mut Devnet,
    summary: &mut Summary,
    print: &(dyn Fn(String) + Sync),
) -> anyhow::Result<()> {
    use gpumesh_host::demo_image::{demo_service_command, demo_service_job};
    use gpumesh_types::{DeploymentRequest, GpuSelector, RegionSpec, SessionRequest, SessionState};
    let client = devnet.buyer_client();

    // One service, started detached, reached at its endpoint.
    let job = demo_service_job(
        GpuModel::H100,
        GeoPoint {
            lat: 48.8566,
            lon: 2.3522,
        },
        Amount::from_tokens(5),
        300,
    );
    match gpumesh_client::buyer::start_service(&client, &job, |_| {}).await? {
        gpumesh_client::buyer::ServiceOutcome::Ready { lease, ready } => {
            summary.service_ready_ms = Some(ready.as_millis() as u64);
            let address = lease
                .endpoints
                .first()
                .map(|e| e.address.clone())
                .unwrap_or_default();
            let page = gpumesh_client::http()
                .get(format!("http://{address}/"))
                .timeout(std::time::Duration::from_secs(5))
                .send()
                .await;
            let page = match page {
                Ok(answer) => answer.text().await.unwrap_or_default(),
                Err(e) => e.to_string(),
            };
            summary.service_reachable = page.contains(&format!("hello from lease {}", lease.id));
            print(format!(
                "[service] lease {} ready in {} ms at {address}; GET / answered {:?}",
                lease.id,
                ready.as_millis(),
                page.trim()
            ));
            client.cancel(lease.id).await?;
        }
        other => print(format!("[service] did not become ready: {other:?}")),
    }

    // A deployment in two regions that takes sessions.
    let region = |name: &str, lat, lon, min, max| RegionSpec {
        name: name.into(),
        near: GeoPoint { lat, lon },
        country: None,
        min,
        max,
        max_rtt_ms: None,
    };
    let request = DeploymentRequest {
        gpu: GpuSelector::Model(GpuModel::H100),
        gpu_count: 1,
        image: DEMO_IMAGE.into(),
        command: demo_service_command(8080),
        ports: job.ports.clone(),
        env: Vec::new(),
        health: job.health.clone(),
        regions: vec![
            region("europe", 50.1109, 8.6821, 1, 3),
            region("us-east", 39.0438, -77.4874, 1, 2),
        ],
        max_price_per_gpu_hour: Amount::from_tokens(5),
        period_ms: 30_000,
        sessions_per_replica: 4,
    };
    let deployment = client.create_deployment(&request).await?;
    client
        .allow(deployment.id, Amount::from_tokens(200))
        .await?;
    summary.deployments = 1;
    let id = deployment.id;
    let ready_replicas = |d: &gpumesh_types::DeploymentView| {
        d.replicas
            .iter()
            .filter(|r| r.health == Some(gpumesh_types::ServiceHealth::Ready))
            .count()
    };
    wait_for(
        "two replicas ready",
        std::time::Duration::from_secs(60),
        async || {
            let d = client.deployment(id).await?;
            Ok((ready_replicas(&d) >= 2).then_some(()))
        },
    )
    .await?;
    print(format!("[deployment {id}] ready in europe and us-east"));

    // A burst of players from several cities; some must queue while replicas are added.
    let mut sessions = Vec::new();
    let mut assign_ms = Vec::new();
    for i in 0..20 {
        let (city, lat, lon) = PLAYERS[i % PLAYERS.len()];
        let asked = std::time::Instant::now();
        let s = client
            .request_session(&SessionRequest {
                deployment: id,
                near: GeoPoint { lat, lon },
                max_rtt_ms: 40,
                queue_ms: 40_000,
            })
            .await?;
        if s.state == SessionState::Active {
            assign_ms.push(asked.elapsed().as_secs_f64() * 1_000.0);
        }
        print(format!("[session {}] {city}: {:?}", s.id, s.state));
        sessions.push(s.id);
    }
    // Two players too far from every replica for a 40 ms round trip.
    let mut far_away = Vec::new();
    for (city, lat, lon) in [("Sydney", -33.8688, 151.2093), ("Tokyo", 35.6762, 139.6503)] {
        let s = client
            .request_session(&SessionRequest {
                deployment: id,
                near: GeoPoint { lat, lon },
                max_rtt_ms: 40,
                queue_ms: 0,
            })
            .await?;
        print(format!(
            "[session {}] {city}: {:?} ({:?})",
            s.id, s.state, s.rejected
        ));
        far_away.push(s.id);
    }
    let mut rtts = Vec::new();
    wait_for(
        "every player seated",
        std::time::Duration::from_secs(60),
        async || {
            rtts.clear();
            for s in &sessions {
                let view = client.session(*s).await?;
                if view.state != SessionState::Active {
                    return Ok(None);
                }
                rtts.push(view.rtt_ms.unwrap_or_default());
            }
            Ok(Some(()))
        },
    )
    .await?;
    let grown = client.deployment(id).await?;
    print(format!(
        "[deployment {id}] {} players seated on {} replicas; scaled up {} time(s)",
        sessions.len(),
        grown.replicas.len(),
        grown.scale_ups
    ));
    rtts.sort_by(f64::total_cmp);
    summary.session_rtt_p95_ms = percentile(&rtts, 0.95);
    assign_ms.sort_by(f64::total_cmp);
    summary.session_assign_p50_ms = percentile(&assign_ms, 0.50);
    summary.session_assign_p99_ms = percentile(&assign_ms, 0.99);

    // The players leave; idle replicas go after the cool-down.
    for s in &sessions {
        client.end_session(*s).await?;
    }
    wait_for(
        "scaled down",
        std::time::Duration::from_secs(60),
        async || {
            let d = client.deployment(id).await?;
            Ok((d.scale_downs >= 1 && d.regions.iter().all(|r| r.desired == r.min)).then_some(()))
        },
    )
    .await?;
    print(format!("[deployment {id}] idle replicas removed"));

    // The host under the us-east replica is lost; the replica is re-placed elsewhere.
    let d = client.deployment(id).await?;
    let victim = d
        .replicas
        .iter()
        .find(|r| r.region == "us-east" && r.state == LeaseState::Running)
        .map(|r| r.lease);
    if let Some(victim) = victim {
        let host = client.lease(victim).await?.host_name;
        devnet.kill_host(&host)?;
        let killed = std::time::Instant::now();
        print(format!(
            "[deployment {id}] {host} is lost under replica {victim}…"
        ));
        wait_for(
            "re-placed",
            std::time::Duration::from_secs(60),
            async || {
                let d = client.deployment(id).await?;
                let back = d.replacements >= 1
                    && d.replicas.iter().any(|r| {
                        r.region == "us-east"
                            && r.lease != victim
                            && r.health == Some(gpumesh_types::ServiceHealth::Ready)
                    });
                Ok(back.then_some(()))
            },
        )
        .await?;
        print(format!(
            "[deployment {id}] replica re-placed and ready {} ms after {host} was lost",
            killed.elapsed().as_millis()
        ));
    }
    let d = client.stop_deployment(id).await?;
    summary.sessions_served = d.sessions_served;
    summary.sessions_rejected = d.sessions_rejected;
    summary.scale_ups = d.scale_ups;
    summary.scale_downs = d.scale_downs;
    summary.replicas_replaced = d.replacements;
    let mut reasons = std::collections::BTreeMap::new();
    for far in far_away {
        if let Some(r) = client.session(far).await?.rejected {
            *reasons.entry(r.code().to_string()).or_default() += 1;
        }
    }
    summary.sessions_rejected_reasons = reasons;
    Ok(())
}

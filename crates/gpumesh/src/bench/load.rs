//! `gpumesh bench load`: the indexer's HTTP path under a network's load, measured from
//! outside.
//!
//! This process starts a real indexer (`gpumesh indexer`, a child process, on loopback,
//! with a fresh data directory) and a separate load generator (this binary again, with
//! the hidden `--drive URL`), and watches the indexer's CPU time and memory while the
//! generator runs. The network is a local one (simulated GPUs, a faucet) with the public
//! network's heartbeat period, no stake requirement, and no cap on a buyer's unfunded
//! matches (the generator's buyers are few and busy); the report says so.
//!
//! The generator registers every host (the simulator's world, as `bench match` uses:
//! 95 countries, the network's GPU mix, sizes and prices), funds the buyers, stakes a few
//! hosts (so that epochs pay someone and reward proofs exist), then runs for `--duration`
//! seconds:
//!
//! - heartbeats from every host, each every `--heartbeat-s` seconds, on schedule (or, with
//!   `--heartbeats-only`, as fast as they are accepted);
//! - jobs (match and reserve, durable) from the buyers, `--job-concurrency` at a time, the
//!   simulator's stream of AI jobs and game servers; every `--cancel-every`-th one is
//!   cancelled by its buyer once matched; `no_match` answers are counted apart (a correct
//!   answer, not an error);
//! - transfers between the buyers at `--transfer-rate` a second.
//!
//! Every request is signed ahead of its sending by signer threads (signing is the
//! client's cost, not the server's); cancels name a lease known only once matched, so
//! they are signed when sent. After the run the indexer is stopped, started again on the
//! same data directory (`restart_s`), and asked for reward proofs (`proof_ms`).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use gpumesh_client::{Client, signature_headers};
use gpumesh_identity::{Kdf, Wallet};
use gpumesh_indexer::{FAUCET_KEY_FILE, GenesisFile, LOCAL_CHAIN_ID, PROTOCOL_KEY_FILE};
use gpumesh_ledger::Genesis;
use gpumesh_registry::Params;
use gpumesh_types::{
    Amount, GpuOffer, JobRequest, Location, RegisterHost, RuntimeKind, Tx, TxKind,
};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::{Mutex, Semaphore, mpsc};

use super::ledger::par_map;
use super::round;
use crate::cli::LoadBenchArgs;

/// How long a request signed ahead stays valid (the indexer takes up to five minutes).
const SIGNED_FOR: Duration = Duration::from_secs(240);
/// Requests signed ahead of the senders, at most: heartbeats and transfers (whose
/// schedule is known) are also signed no more than [`LOOKAHEAD`] before they are due, so
/// a signature never outlives its wait; jobs (closed loop) only this many.
const AHEAD: usize = 20_000;
const JOBS_AHEAD: usize = 2_000;
const LOOKAHEAD: Duration = Duration::from_secs(30);
/// Hosts that stake, so that epochs pay rewards and proofs can be asked for.
const STAKERS: usize = 16;
/// The seeds of the synthetic world (hosts) and of the request stream, as `bench match`.
const WORLD_SEED: u64 = 7;
const REQUEST_SEED: u64 = 11;

pub async fn run(args: LoadBenchArgs) -> anyhow::Result<ExitCode> {
    if args.hosts == 0 || args.buyers == 0 || args.duration == 0 {
        bail!("--hosts, --buyers and --duration must be at least 1");
    }
    if args.heartbeat_s == 0 || args.job_concurrency == 0 || args.cancel_every == 0 {
        bail!("--heartbeat-s, --job-concurrency and --cancel-every must be at least 1");
    }
    match args.drive.clone() {
        Some(url) => drive(args, url).await,
        None => orchestrate(args).await,
    }
}

// ---------------------------------------------------------------------------------------
// The orchestrator: the indexer process and the load generator process.

/// A process's CPU time so far and resident memory, from /proc.
fn cpu_and_rss(pid: u32) -> anyhow::Result<(Duration, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("failed to read /proc/{pid}/stat (Linux only)"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after ')'.
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    // The kernel's clock tick is 100 Hz on every Linux this runs on (USER_HZ).
    Ok((Duration::from_millis(ticks * 10), rss_kib * 1024))
}

/// Starts `gpumesh indexer` on the bench's network and waits until it serves; returns it
/// with its URL and how long it took.
/// This binary as a command, pinned to CPU `pin` (through `taskset`) when given.
fn this_binary(pin: Option<usize>) -> anyhow::Result<std::process::Command> {
    let exe = std::env::current_exe()?;
    Ok(match pin {
        Some(cpu) => {
            let mut command = std::process::Command::new("taskset");
            command.args(["-c", &cpu.to_string()]).arg(exe);
            command
        }
        None => std::process::Command::new(exe),
    })
}

fn start_indexer(
    genesis: &std::path::Path,
    data: &std::path::Path,
    retention_s: u64,
    pin: Option<usize>,
) -> anyhow::Result<(Child, String, f64)> {
    let began = Instant::now();
    let mut child = this_binary(pin)?
        .args(["indexer", "--listen", "127.0.0.1:0", "--genesis"])
        .arg(genesis)
        .arg("--data")
        .arg(data)
        .arg(format!("--retention={retention_s}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("failed to start the indexer")?;
    let stderr = child.stderr.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut said = Vec::new();
    let url = loop {
        let Some(line) = lines.next() else {
            bail!("the indexer exited before serving:\n{}", said.join("\n"));
        };
        let line = line?;
        if let Some(rest) = line.split("indexer serving ").nth(1) {
            break rest
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_string();
        }
        said.push(line);
    };
    let took = began.elapsed().as_secs_f64();
    // Its warnings and errors stay visible; the pipe never fills.
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            eprintln!("indexer: {line}");
        }
    });
    Ok((child, url, took))
}

/// Stops the indexer as an operator would (SIGTERM: it seals its last block) and waits.
fn stop_indexer(mut child: Child) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .context("failed to run kill")?;
    if !status.success() {
        bail!("kill -TERM {} failed", child.id());
    }
    let exit = child.wait()?;
    if !exit.success() {
        bail!("the indexer exited with {exit} when stopped");
    }
    Ok(())
}

async fn orchestrate(args: LoadBenchArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("gpumesh-bench-load-")
        .tempdir()
        .context("failed to create a data directory")?;
    let data = dir.path().join("net");
    std::fs::create_dir_all(&data)?;
    let protocol = Wallet::generate();
    let faucet = Wallet::generate();
    protocol.save(&data.join(PROTOCOL_KEY_FILE), "", Kdf::Light)?;
    faucet.save(&data.join(FAUCET_KEY_FILE), "", Kdf::Light)?;
    let params = Params {
        heartbeat_interval_ms: args.heartbeat_s * 1_000,
        require_stake: false,
        max_unfunded_matches: u32::MAX,
        ..Params::local()
    };
    let genesis_path = dir.path().join("genesis.json");
    GenesisFile {
        genesis: Genesis::local(
            LOCAL_CHAIN_ID,
            gpumesh_indexer::now_ms(),
            protocol.address(),
            faucet.address(),
        ),
        params,
    }
    .create(&genesis_path)?;

    // Pinned: the indexer on CPU 0, the generator on CPU 1.
    let pins = args.pin.then_some((0, 1));
    let (indexer, url, _) = start_indexer(&genesis_path, &data, args.retention, pins.map(|p| p.0))?;
    let pid = indexer.id();
    // The empty indexer's memory, so that what the hosts and their traffic add is apart.
    let (_, rss_empty) = cpu_and_rss(pid)?;
    eprintln!("indexer serving {url} (pid {pid}); starting the load generator");
    let mut generator = this_binary(pins.map(|p| p.1))?
        .args(["bench", "load", "--drive", &url])
        .args(args.passed_on())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("failed to start the load generator")?;
    let stdout = generator.stdout.take().expect("piped");
    // The generator says when its run starts and ends, then prints its result.
    let (events, mut events_rx) = mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if events.send(line).is_err() {
                break;
            }
        }
    });
    let (mut at_start, mut at_end, mut result) = (None, None, None);
    // The indexer's memory at the end of each minute of the run.
    let mut rss_by_minute: Vec<u64> = Vec::new();
    let mut minute: Option<tokio::time::Interval> = None;
    loop {
        let line = tokio::select! {
            line = events_rx.recv() => line,
            _ = async { minute.as_mut().expect("checked").tick().await }, if minute.is_some() => {
                rss_by_minute.push(cpu_and_rss(pid)?.1);
                continue;
            }
        };
        let Some(line) = line else {
            break;
        };
        match line.as_str() {
            "run started" => {
                at_start = Some((Instant::now(), cpu_and_rss(pid)?));
                let every = Duration::from_secs(60);
                minute = Some(tokio::time::interval_at(
                    tokio::time::Instant::now() + every,
                    every,
                ));
            }
            "run ended" => {
                at_end = Some((Instant::now(), cpu_and_rss(pid)?));
                minute = None;
            }
            other => {
                if let Some(json) = other.strip_prefix("result ") {
                    result = Some(serde_json::from_str::<Value>(json)?);
                }
            }
        }
    }
    let exit = generator.wait()?;
    let (Some(start), Some(end), Some(mut report)) = (at_start, at_end, result) else {
        let _ = stop_indexer(indexer);
        bail!("the load generator stopped before it finished ({exit})");
    };
    let wall = (end.0 - start.0).as_secs_f64();
    let cpu_s = (end.1.0.saturating_sub(start.1.0)).as_secs_f64();
    let server_cpu = cpu_s / wall;
    let rss = end.1.1;
    let at_minute5 = rss_by_minute.get(4).or(rss_by_minute.last()).copied();
    let requests = report["requests"].as_u64().unwrap_or(0);

    eprintln!("stopping the indexer and starting it again on its data…");
    stop_indexer(indexer)?;
    let store_bytes = std::fs::metadata(data.join(gpumesh_store::STORE_FILE))?.len();
    let (indexer, url, restart_s) =
        start_indexer(&genesis_path, &data, args.retention, pins.map(|p| p.0))?;
    let proofs = proof_times(
        &url,
        report["stakers"].as_array().cloned().unwrap_or_default(),
    )
    .await;
    stop_indexer(indexer)?;

    let object = report.as_object_mut().expect("the result is an object");
    object.remove("stakers");
    object.insert("server_cpu_cores".into(), json!(round(server_cpu, 2)));
    object.insert("indexer_rss_bytes".into(), json!(rss));
    object.insert(
        "server_cpu_us_per_request".into(),
        json!(round(cpu_s * 1e6 / requests.max(1) as f64, 1)),
    );
    object.insert(
        "rss_mb_by_minute".into(),
        json!(
            rss_by_minute
                .iter()
                .map(|b| b / (1 << 20))
                .collect::<Vec<_>>()
        ),
    );
    object.insert(
        "rss_last_vs_minute5".into(),
        json!(at_minute5.map(|m| round(rss as f64 / m.max(1) as f64, 3))),
    );
    object.insert("retention_s".into(), json!(args.retention));
    object.insert("pinned".into(), json!(args.pin));
    object.insert("indexer_rss_bytes_empty".into(), json!(rss_empty));
    object.insert(
        "indexer_rss_bytes_per_host".into(),
        json!(rss.saturating_sub(rss_empty) / args.hosts as u64),
    );
    object.insert("store_bytes_after".into(), json!(store_bytes));
    object.insert("restart_s".into(), json!(round(restart_s, 2)));
    match proofs {
        Ok((ms, epoch)) => {
            object.insert("proof_ms".into(), json!(round(ms, 2)));
            object.insert("proof_epoch".into(), json!(epoch));
        }
        Err(why) => {
            object.insert("proof_ms".into(), Value::Null);
            object.insert("proof_missing".into(), json!(why));
        }
    }
    super::print_report(&report, args.json)?;
    let errors = report["errors"].as_u64().unwrap_or(1);
    Ok(if errors == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// The median time of a reward proof for each staking host, for the newest epoch that
/// paid them, from the restarted indexer.
async fn proof_times(url: &str, stakers: Vec<Value>) -> Result<(f64, u64), String> {
    let client = Client::new(url, None);
    let info = client.info().await.map_err(|e| e.to_string())?;
    let Some(epoch) = info.next_epoch.checked_sub(1) else {
        return Err(
            "no epoch closed during the run (the local network's epoch is a minute)".into(),
        );
    };
    let mut times = Vec::new();
    for staker in stakers {
        let Some(address) = staker.as_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        let asked = Instant::now();
        if client.reward_proof(address, epoch).await.is_ok() {
            times.push(asked.elapsed().as_secs_f64() * 1e3);
        }
    }
    if times.is_empty() {
        return Err(format!("no staking host was rewarded by epoch {epoch}"));
    }
    times.sort_by(f64::total_cmp);
    Ok((times[times.len() / 2], epoch))
}

// ---------------------------------------------------------------------------------------
// The load generator.

/// A request signed ahead of its sending.
struct Signed {
    path: String,
    body: Vec<u8>,
    headers: [(&'static str, String); 4],
    /// When to send it, for scheduled traffic (milliseconds since the run's start).
    due_ms: u64,
    /// Which job, for cancelling every n-th.
    n: u64,
}

/// Signs requests with unique nonces: signing times in microseconds, strictly
/// increasing over every signer of this process (so unique per key, too).
struct Signer {
    chain_id: u64,
    last_nonce: AtomicU64,
}

impl Signer {
    fn sign(&self, wallet: &Wallet, path: String, body: Vec<u8>, due_ms: u64, n: u64) -> Signed {
        let now = gpumesh_indexer::now_ms() * 1_000;
        let nonce = loop {
            let last = self.last_nonce.load(Ordering::SeqCst);
            let next = now.max(last + 1);
            if self
                .last_nonce
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                break next;
            }
        };
        let expires = nonce / 1_000 + SIGNED_FOR.as_millis() as u64;
        let headers =
            signature_headers(wallet, self.chain_id, "POST", &path, nonce, expires, &body);
        Signed {
            path,
            body,
            headers,
            due_ms,
            n,
        }
    }
}

/// When the run started, for signers of scheduled traffic to keep within [`LOOKAHEAD`]
/// of it, and whether each has signed all it may before the start.
#[derive(Default)]
struct Pace {
    started: std::sync::OnceLock<Instant>,
    /// The heartbeat and transfer signers, ready for the clock to start.
    beats_ready: std::sync::atomic::AtomicBool,
    transfers_ready: std::sync::atomic::AtomicBool,
}

impl Pace {
    /// Waits until `due_ms` (after the start) is within the lookahead; says it is ready
    /// through `ready` when it first has to wait. False when stopped.
    fn wait_for(
        &self,
        due_ms: u64,
        ready: &std::sync::atomic::AtomicBool,
        stop: &tokio_util::sync::CancellationToken,
    ) -> bool {
        loop {
            if stop.is_cancelled() {
                return false;
            }
            let elapsed = self
                .started
                .get()
                .map_or(0, |s| s.elapsed().as_millis() as u64);
            if due_ms <= elapsed + LOOKAHEAD.as_millis() as u64 {
                return true;
            }
            ready.store(true, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// What the run counted.
struct Tally {
    began: Instant,
    /// Accepted requests per second of the run, all kinds.
    per_second: Vec<AtomicU64>,
    heartbeats: AtomicU64,
    jobs: AtomicU64,
    /// Jobs answered `no_match`: a correct answer (no suitable GPU was free), not an error.
    unmatched: AtomicU64,
    cancels: AtomicU64,
    transfers: AtomicU64,
    errors: AtomicU64,
    /// The first few distinct errors, with their counts.
    error_kinds: std::sync::Mutex<BTreeMap<String, u64>>,
    job_us: std::sync::Mutex<Histogram<u64>>,
    heartbeat_us: std::sync::Mutex<Histogram<u64>>,
    transfer_us: std::sync::Mutex<Histogram<u64>>,
    /// The second of the run (when sent) of each job slower than [`SLOW_JOB_US`], with
    /// the slowest that second: when the worst cases happened, to set beside the
    /// indexer's log (an epoch close, a snapshot).
    slow_jobs: std::sync::Mutex<BTreeMap<u64, f64>>,
}

/// A job slower than this is listed by the second it was sent (the bound on the
/// worst case).
const SLOW_JOB_US: u64 = 250_000;

impl Tally {
    /// Records how long an accepted request of `kind` took, from its sending.
    fn took(&self, kind: Kind, since: Instant) {
        let histogram = match kind {
            Kind::Job => &self.job_us,
            Kind::Heartbeat => &self.heartbeat_us,
            Kind::Transfer => &self.transfer_us,
        };
        let us = since.elapsed().as_micros() as u64;
        if kind == Kind::Job && us > SLOW_JOB_US {
            let second = since.saturating_duration_since(self.began).as_secs();
            let mut slow = self.slow_jobs.lock().unwrap_or_else(|p| p.into_inner());
            let worst = slow.entry(second).or_default();
            *worst = worst.max(round(us as f64 / 1e3, 1));
        }
        let _ = histogram
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(us.max(1));
    }

    fn ok(&self, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        let second = self.began.elapsed().as_secs() as usize;
        if let Some(slot) = self.per_second.get(second) {
            slot.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn error(&self, what: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        let mut kinds = self.error_kinds.lock().unwrap_or_else(|p| p.into_inner());
        if kinds.len() < 8 || kinds.contains_key(&what) {
            *kinds.entry(what).or_default() += 1;
        }
    }
}

/// Sends a signed request; the response body when accepted.
async fn send(http: &reqwest::Client, url: &str, request: &Signed) -> Result<Vec<u8>, String> {
    let mut builder = http
        .post(format!("{url}{}", request.path))
        .header("content-type", "application/json")
        .body(request.body.clone());
    for (name, value) in &request.headers {
        builder = builder.header(*name, value);
    }
    let response = builder
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    if status.is_success() {
        Ok(body.to_vec())
    } else {
        let code = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_string))
            .unwrap_or_default();
        Err(format!(
            "{} {} {code}",
            status.as_u16(),
            request
                .path
                .split('/')
                .take(3)
                .collect::<Vec<_>>()
                .join("/")
        ))
    }
}

/// A job as a buyer would send it for one of the simulator's requests. Tiers come from
/// checkers' verdicts, which this benchmark does not run, so no tier bound is asked.
fn job_of(r: gpumesh_matcher::Request) -> JobRequest {
    let image = r
        .image
        .clone()
        .unwrap_or_else(|| "pytorch/pytorch:2.5".to_string());
    let mut job = JobRequest::new(
        r.gpu,
        r.count,
        r.near,
        r.max_price_per_gpu_hour,
        3_600_000,
        &image,
        vec!["true".into()],
    );
    job.min_vram_mib = (r.min_vram_mib > 0).then_some(r.min_vram_mib);
    job.countries = r.countries;
    job.exclude_countries = r.exclude_countries;
    job.max_rtt_ms = r.max_rtt_ms.map(|ms| ms as u32);
    job.image_policy = r.image_policy;
    job.policy = r.policy;
    job
}

fn host_wallet(i: usize) -> Wallet {
    Wallet::from_label(&format!("bench load host {i}"))
}

fn buyer_wallet(i: usize) -> Wallet {
    Wallet::from_label(&format!("bench load buyer {i}"))
}

/// Sends `requests` with `concurrency` in flight; counts failures into `tally`.
async fn send_all(
    http: &reqwest::Client,
    url: &str,
    requests: Vec<Signed>,
    concurrency: usize,
    what: &str,
) -> anyhow::Result<()> {
    let total = requests.len() as u64;
    let bar = super::progress(total, what);
    let queue = Arc::new(Mutex::new(requests.into_iter()));
    let failed: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (queue, http, url, bar, failed) = (
            queue.clone(),
            http.clone(),
            url.to_string(),
            bar.clone(),
            failed.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let Some(request) = queue.lock().await.next() else {
                    return;
                };
                if let Err(e) = send(&http, &url, &request).await {
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                    return;
                }
                bar.inc(1);
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    if let Some(e) = failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
        bail!("{what}: {e}");
    }
    Ok(())
}

async fn drive(args: LoadBenchArgs, url: String) -> anyhow::Result<ExitCode> {
    let http = gpumesh_client::http();
    let info = Client::new(&url, None).info().await?;
    let signer = Arc::new(Signer {
        chain_id: info.chain_id,
        last_nonce: AtomicU64::new(0),
    });
    let hosts: Arc<Vec<Wallet>> = Arc::new(par_map(&(0..args.hosts).collect::<Vec<_>>(), |&i| {
        host_wallet(i)
    }));
    let buyers: Arc<Vec<Wallet>> = Arc::new((0..args.buyers).map(buyer_wallet).collect());

    // Setup: every host registers, the buyers are funded, a few hosts stake. Hosts are
    // the simulator's: 95 countries, the network's GPU mix, sizes and prices.
    let world: Vec<gpumesh_sim::SimHost> = {
        let mut hosts = gpumesh_sim::Hosts::new(WORLD_SEED);
        (0..args.hosts).map(|_| hosts.next_host()).collect()
    };
    let registrations = par_map(&(0..args.hosts).collect::<Vec<_>>(), |&i| {
        let host = &world[i];
        let body = RegisterHost {
            name: format!("bench-{i}"),
            location: Location {
                point: host.spec.point,
                country: host.spec.country,
            },
            price_per_gpu_hour: host.spec.price_per_gpu_hour,
            gpus: vec![GpuOffer {
                model: host.model,
                count: host.count as u16,
                vram_mib: None,
                simulated: true,
            }],
            runtime: RuntimeKind::Container,
            images: host.spec.images.clone(),
            challenge_url: None,
        };
        let body = serde_json::to_vec(&body).expect("requests serialise");
        signer.sign(&hosts[i], "/v1/hosts".into(), body, 0, 0)
    });
    let began = Instant::now();
    send_all(&http, &url, registrations, 64, "registering hosts").await?;
    let registered_per_s = args.hosts as f64 / began.elapsed().as_secs_f64();
    eprintln!(
        "registered {} hosts in {:.1} s ({registered_per_s:.0}/s)",
        args.hosts,
        began.elapsed().as_secs_f64()
    );
    // A match is made only for a buyer whose balance covers its escrow on top of its
    // other unfunded matches': enough for every match a buyer holds within the match's
    // time-to-live at the rates this benchmark sends.
    for buyer in buyers.iter() {
        Client::new(&url, Some(buyer.clone()))
            .faucet(Amount::from_tokens(100_000))
            .await
            .context("funding a buyer")?;
    }
    let mut stakers = Vec::new();
    for i in 0..STAKERS.min(args.hosts) {
        let host = Client::new(&url, Some(hosts[i].clone()));
        host.faucet(Amount::from_tokens(10_000)).await?;
        let model = world[i].model;
        let need = Amount(info.staking_coefficient.0 * model.spec().k_factor as u128 / 100);
        let stakes = (0..world[i].count as u16).map(|g| (g, need)).collect();
        host.send_tx(TxKind::StakeMany { stakes }).await?;
        stakers.push(json!(hosts[i].address()));
    }

    // The run.
    let duration = Duration::from_secs(args.duration);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();

    let pace = Arc::new(Pace::default());
    // Heartbeats: host i's k-th at k periods plus its share of one, signed ahead.
    let (beats, beats_rx) = mpsc::channel::<Signed>(AHEAD);
    {
        let (signer, hosts, stop, pace) =
            (signer.clone(), hosts.clone(), stop.clone(), pace.clone());
        let (period_ms, only) = (args.heartbeat_s * 1_000, args.heartbeats_only);
        let run_ms = args.duration * 1_000;
        std::thread::spawn(move || {
            let n = hosts.len() as u64;
            for k in 0.. {
                for i in 0..n {
                    let due = k * period_ms + i * period_ms / n;
                    if (!only && due >= run_ms) || stop.is_cancelled() {
                        pace.beats_ready.store(true, Ordering::SeqCst);
                        return;
                    }
                    if !only && !pace.wait_for(due, &pace.beats_ready, &stop) {
                        return;
                    }
                    let beat = signer.sign(
                        &hosts[i as usize],
                        "/v1/hosts/heartbeat".into(),
                        b"{}".to_vec(),
                        due,
                        0,
                    );
                    if beats.blocking_send(beat).is_err() {
                        return;
                    }
                }
            }
        });
    }
    // Jobs: from the buyers in turn, the simulator's stream of AI jobs and game servers.
    let (jobs, jobs_rx) = mpsc::channel::<Signed>(JOBS_AHEAD);
    if !args.heartbeats_only {
        let (signer, buyers, stop) = (signer.clone(), buyers.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut requests = gpumesh_sim::Requests::new(REQUEST_SEED);
            for n in 0u64.. {
                if stop.is_cancelled() {
                    return;
                }
                let body = job_of(requests.next_request());
                let body = serde_json::to_vec(&body).expect("requests serialise");
                let buyer = &buyers[(n % buyers.len() as u64) as usize];
                if jobs
                    .blocking_send(signer.sign(buyer, "/v1/jobs".into(), body, 0, n))
                    .is_err()
                {
                    return;
                }
            }
        });
    }
    // Transfers: each buyer to the next, a token's base unit at a time, each with the
    // buyer's next ledger nonce (signed twice: the transaction and the request).
    let (transfers, transfers_rx) = mpsc::channel::<Signed>(AHEAD.min(5_000));
    if !args.heartbeats_only && args.transfer_rate > 0 {
        let (signer, buyers, stop, pace) =
            (signer.clone(), buyers.clone(), stop.clone(), pace.clone());
        let rate = args.transfer_rate;
        std::thread::spawn(move || {
            let mut nonces = vec![0u64; buyers.len()];
            for n in 0u64.. {
                if stop.is_cancelled() {
                    return;
                }
                let due = n * 1_000 / rate;
                if !pace.wait_for(due, &pace.transfers_ready, &stop) {
                    return;
                }
                let from = (n % buyers.len() as u64) as usize;
                let to = buyers[(from + 1) % buyers.len()].address();
                let tx = buyers[from].sign_tx(Tx {
                    chain_id: signer.chain_id,
                    from: buyers[from].address(),
                    nonce: nonces[from],
                    kind: TxKind::Transfer {
                        to,
                        amount: Amount(1),
                    },
                });
                nonces[from] += 1;
                let body = serde_json::to_vec(&tx).expect("transactions serialise");
                let signed = signer.sign(&buyers[from], "/v1/ledger/txs".into(), body, due, n);
                if transfers.blocking_send(signed).is_err() {
                    return;
                }
            }
        });
    }
    // Let the signers get ahead before the clock starts: each has signed what it may
    // (its lookahead, or all there is), or filled half its queue.
    let ahead = |rx: &mpsc::Receiver<Signed>, ready: &std::sync::atomic::AtomicBool, of: usize| {
        rx.len() >= of / 2 || rx.is_closed() || ready.load(Ordering::SeqCst)
    };
    let (never, scheduled) = (
        std::sync::atomic::AtomicBool::new(false),
        !args.heartbeats_only,
    );
    while !ahead(&beats_rx, &pace.beats_ready, AHEAD)
        || !(args.heartbeats_only || ahead(&jobs_rx, &never, JOBS_AHEAD))
        || !(!scheduled
            || args.transfer_rate == 0
            || ahead(&transfers_rx, &pace.transfers_ready, AHEAD.min(5_000)))
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tally = Arc::new(Tally {
        began: Instant::now(),
        per_second: (0..args.duration + 1).map(|_| AtomicU64::new(0)).collect(),
        heartbeats: AtomicU64::new(0),
        jobs: AtomicU64::new(0),
        unmatched: AtomicU64::new(0),
        cancels: AtomicU64::new(0),
        transfers: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        error_kinds: Default::default(),
        job_us: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        heartbeat_us: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        transfer_us: std::sync::Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
        slow_jobs: Default::default(),
    });
    let _ = pace.started.set(tally.began);
    println!("run started");

    let sender = Sender {
        http: http.clone(),
        url: url.clone(),
        tally: tally.clone(),
        stop: stop.clone(),
        signer: signer.clone(),
        buyers: buyers.clone(),
        cancel_every: args.cancel_every,
    };
    let beats_rx: Queue = Arc::new(Mutex::new(beats_rx));
    if args.heartbeats_only {
        // As fast as they are accepted.
        for _ in 0..args.job_concurrency {
            let task = closed_loop(sender.clone(), beats_rx.clone(), Kind::Heartbeat);
            tasks.push(tokio::spawn(task));
        }
    } else {
        let task = on_schedule(sender.clone(), beats_rx, Kind::Heartbeat);
        tasks.push(tokio::spawn(task));
        let jobs_rx: Queue = Arc::new(Mutex::new(jobs_rx));
        for _ in 0..args.job_concurrency {
            let task = closed_loop(sender.clone(), jobs_rx.clone(), Kind::Job);
            tasks.push(tokio::spawn(task));
        }
        if args.transfer_rate > 0 {
            let queue: Queue = Arc::new(Mutex::new(transfers_rx));
            tasks.push(tokio::spawn(on_schedule(
                sender.clone(),
                queue,
                Kind::Transfer,
            )));
        }
    }
    tokio::time::sleep(duration).await;
    stop.cancel();
    let elapsed = tally.began.elapsed().as_secs_f64();
    println!("run ended");
    for task in tasks {
        let _ = task.await;
    }

    let per_s = |c: &AtomicU64| round(c.load(Ordering::Relaxed) as f64 / elapsed, 1);
    let window = (args.duration / 4).clamp(1, 60) as usize;
    let seconds: Vec<u64> = tally
        .per_second
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .take(args.duration as usize)
        .collect();
    let first: u64 = seconds.iter().take(window).sum();
    let last: u64 = seconds.iter().rev().take(window).sum();
    let job_us = tally
        .job_us
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let ms = |q: f64| round(job_us.value_at_quantile(q) as f64 / 1e3, 2);
    let quantile_ms = |h: &std::sync::Mutex<Histogram<u64>>, q: f64| {
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        if h.is_empty() {
            Value::Null
        } else {
            json!(round(h.value_at_quantile(q) as f64 / 1e3, 2))
        }
    };
    let counters = [
        &tally.heartbeats,
        &tally.jobs,
        &tally.unmatched,
        &tally.cancels,
        &tally.transfers,
    ];
    let requests: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let report = json!({
        "bench": "load",
        "hosts": args.hosts,
        "buyers": args.buyers,
        "duration_s": args.duration,
        "heartbeats_only": args.heartbeats_only,
        "heartbeat_every_s": args.heartbeat_s,
        "job_concurrency": args.job_concurrency,
        "cancel_every": args.cancel_every,
        "network": "a local network (simulated GPUs) with the public heartbeat period, no stake requirement and no cap on unfunded matches",
        "registrations_per_s": round(registered_per_s, 1),
        "heartbeats_per_s": per_s(&tally.heartbeats),
        "jobs_per_s": per_s(&tally.jobs),
        "jobs_unmatched_per_s": per_s(&tally.unmatched),
        "job_p50_ms": ms(0.5),
        "job_p99_ms": ms(0.99),
        "job_max_ms": ms(1.0),
        "slow_jobs_by_second": *tally.slow_jobs.lock().unwrap_or_else(|p| p.into_inner()),
        "heartbeat_p50_ms": quantile_ms(&tally.heartbeat_us, 0.5),
        "heartbeat_p99_ms": quantile_ms(&tally.heartbeat_us, 0.99),
        "transfer_p50_ms": quantile_ms(&tally.transfer_us, 0.5),
        "transfer_p99_ms": quantile_ms(&tally.transfer_us, 0.99),
        "cancels_per_s": per_s(&tally.cancels),
        "transfers_per_s": per_s(&tally.transfers),
        "requests": requests,
        "errors": tally.errors.load(Ordering::Relaxed),
        "error_kinds": *tally.error_kinds.lock().unwrap_or_else(|p| p.into_inner()),
        "first_minute_vs_last_minute": if first == 0 { 0.0 } else { round(last as f64 / first as f64, 3) },
        "window_s": window,
        "stakers": stakers,
    });
    println!("result {}", serde_json::to_string(&report)?);
    Ok(ExitCode::SUCCESS)
}

/// What every sending task shares.
#[derive(Clone)]
struct Sender {
    http: reqwest::Client,
    url: String,
    tally: Arc<Tally>,
    stop: tokio_util::sync::CancellationToken,
    signer: Arc<Signer>,
    buyers: Arc<Vec<Wallet>>,
    cancel_every: u64,
}

type Queue = Arc<Mutex<mpsc::Receiver<Signed>>>;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Heartbeat,
    Job,
    Transfer,
}

/// Sends each request at its due time (open loop: a slow server does not slow the
/// schedule; requests in flight pile up instead, up to a bound).
async fn on_schedule(sender: Sender, queue: Queue, kind: Kind) {
    let Sender {
        http,
        url,
        tally,
        stop,
        ..
    } = sender;
    let in_flight = Arc::new(Semaphore::new(2_048));
    let mut queue = queue.lock().await;
    loop {
        let request = tokio::select! {
            _ = stop.cancelled() => return,
            next = queue.recv() => match next { Some(r) => r, None => return },
        };
        let due = tally.began + Duration::from_millis(request.due_ms);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep_until(due.into()) => {}
        }
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let (http, url, tally) = (http.clone(), url.clone(), tally.clone());
        tokio::spawn(async move {
            let asked = Instant::now();
            let result = send(&http, &url, &request).await;
            drop(permit);
            match (result, kind) {
                (Ok(_), Kind::Transfer) => {
                    tally.took(kind, asked);
                    tally.ok(&tally.transfers)
                }
                (Ok(_), _) => {
                    tally.took(kind, asked);
                    tally.ok(&tally.heartbeats)
                }
                (Err(e), _) => tally.error(e),
            }
        });
    }
}

/// Sends the next request as soon as the last is answered.
async fn closed_loop(sender: Sender, queue: Queue, kind: Kind) {
    let Sender {
        http,
        url,
        tally,
        stop,
        signer,
        buyers,
        cancel_every,
    } = sender;
    loop {
        let next = tokio::select! {
            _ = stop.cancelled() => return,
            next = async { queue.lock().await.recv().await } => next,
        };
        let Some(request) = next else { return };
        let asked = Instant::now();
        let result = send(&http, &url, &request).await;
        if stop.is_cancelled() {
            return;
        }
        match (result, kind) {
            (Ok(body), Kind::Job) => {
                tally.took(kind, asked);
                tally.ok(&tally.jobs);
                if request.n % cancel_every == 0 {
                    let lease = serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["id"].as_u64());
                    let Some(lease) = lease else {
                        tally.error("a job's answer names no lease".into());
                        continue;
                    };
                    let buyer = &buyers[(request.n % buyers.len() as u64) as usize];
                    let cancel = signer.sign(
                        buyer,
                        format!("/v1/leases/{lease}/cancel"),
                        b"{}".to_vec(),
                        0,
                        0,
                    );
                    match send(&http, &url, &cancel).await {
                        Ok(_) => tally.ok(&tally.cancels),
                        Err(e) => tally.error(e),
                    }
                }
            }
            (Ok(_), Kind::Transfer) => {
                tally.took(kind, asked);
                tally.ok(&tally.transfers)
            }
            (Ok(_), Kind::Heartbeat) => {
                tally.took(kind, asked);
                tally.ok(&tally.heartbeats)
            }
            (Err(e), Kind::Job) if e.ends_with(" no_match") => tally.ok(&tally.unmatched),
            (Err(e), _) => tally.error(e),
        }
    }
}

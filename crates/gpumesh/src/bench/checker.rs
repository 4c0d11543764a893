//! `gpumesh bench checker`: checking at network scale on one core.
//!
//! A period over the whole network (by default 430,000 containers and 91,000 checkers):
//! the assignment is drawn, every checker's report is built and signed as the API would
//! receive it, then, timed, each report is decoded, its signature recovered and checked,
//! its results checked against the assignment and taken (`Checking::report`, the code the
//! indexer runs), and the period is closed into quorum verdicts. Then a capacity proof at
//! the benchmark size, timed on the host's side (multiply and commit, then open) and on
//! the checker's (Freivalds' check of the spot rows).

use std::process::ExitCode;
use std::time::Instant;

use alloy_primitives::{Address, B256, keccak256};
use gpumesh_checking::{Checking, Target};
use gpumesh_identity::Wallet;
use gpumesh_proof::{Challenge, ProofParams};
use gpumesh_types::auth::request_message;
use gpumesh_types::{
    CheckOutcome, CheckReport, CheckResult, CheckingParams, ContainerRef, GpuModel, Sig, TaskKind,
};
use rand::{RngCore, SeedableRng};

use crate::cli::CheckerBenchArgs;

const CHAIN: u64 = 31337;
const PATH: &str = "/v1/checking/reports";

/// One report as it arrives: the body and the request signature's parts.
struct Signed {
    signer: Address,
    nonce: u64,
    expires: u64,
    signature: Sig,
    body: Vec<u8>,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn run(args: CheckerBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.containers > 0 && args.checkers >= 3,
        "need containers and at least 3 checkers"
    );
    anyhow::ensure!(args.proofs > 0, "--proofs must be at least 1");
    let say = |line: String| {
        if !args.json {
            eprintln!("{line}");
        }
    };
    // Checker keys derived from labels: the same world every run.
    let began = Instant::now();
    let wallets: Vec<Wallet> = (0..args.checkers)
        .map(|i| Wallet::from_label(&format!("bench-checker-{i}")))
        .collect();
    let params = CheckingParams::network(wallets.iter().map(Wallet::address).collect());
    let genesis_ms = 1_700_000_000_000;
    let mut checking = Checking::new(params.clone(), genesis_ms, []);
    let targets: Vec<Target> = (0..args.containers)
        .map(|i| Target {
            container: ContainerRef {
                host: Address::from_slice(&keccak256((i / 8).to_be_bytes())[12..]),
                index: (i % 8) as u16,
            },
            endpoint: String::new(),
            gpu: GpuModel::H100,
            simulated: false,
            capacity_due: false,
            delivery: None,
        })
        .collect();
    let t = Instant::now();
    checking.begin_period(
        0,
        0,
        B256::repeat_byte(1),
        targets,
        B256::repeat_byte(2),
        "",
    );
    let assign_ms = t.elapsed().as_secs_f64() * 1e3;
    say(format!(
        "assigned {} containers to {} checkers in {assign_ms:.0} ms",
        args.containers, args.checkers
    ));

    // Every checker reports all its tasks, up, in one signed request.
    let now = genesis_ms + 1_000;
    let mut reports = Vec::with_capacity(wallets.len());
    let mut results_total = 0usize;
    for w in &wallets {
        let Some((period, _, tasks)) = checking.tasks(&w.address(), now) else {
            continue;
        };
        if tasks.is_empty() {
            continue;
        }
        results_total += tasks.len();
        let report = CheckReport {
            period,
            location: None,
            results: tasks
                .iter()
                .map(|t| CheckResult {
                    container: t.container,
                    kind: t.kind,
                    outcome: match t.kind {
                        TaskKind::Liveness | TaskKind::Delivery => {
                            CheckOutcome::Up { rtt_us: 20_000 }
                        }
                        // Canaries: the bench's checkers answer them as a lazy one would.
                        TaskKind::Capacity => CheckOutcome::Valid { host_ms: 900 },
                    },
                })
                .collect(),
        };
        let body = serde_json::to_vec(&report)?;
        let (nonce, expires) = (now * 1000, now + 60_000);
        let message = request_message(CHAIN, "POST", PATH, nonce, expires, &body);
        reports.push(Signed {
            signer: w.address(),
            nonce,
            expires,
            signature: Sig(w.sign_message(message.as_bytes())),
            body,
        });
    }
    say(format!(
        "{} signed reports with {results_total} results built in {:.1} s",
        reports.len(),
        began.elapsed().as_secs_f64()
    ));

    let t = Instant::now();
    let mut accepted = 0u64;
    for r in &reports {
        let message = request_message(CHAIN, "POST", PATH, r.nonce, r.expires, &r.body);
        let signer = r
            .signature
            .0
            .recover_address_from_msg(message.as_bytes())
            .map_err(|e| anyhow::anyhow!("a signature did not recover: {e}"))?;
        anyhow::ensure!(signer == r.signer, "a report's signer did not match");
        let report: CheckReport = serde_json::from_slice(&r.body)?;
        accepted += checking
            .report(signer, &report, now)
            .map_err(|e| anyhow::anyhow!("a report was refused: {e}"))? as u64;
    }
    let take_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let close_at = genesis_ms + params.period_ms + params.report_grace_ms + 1;
    let outcome = checking
        .close_period(0, close_at)
        .ok_or_else(|| anyhow::anyhow!("the period did not close"))?;
    let close_s = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        accepted as usize == results_total,
        "not every result was taken"
    );
    anyhow::ensure!(
        outcome.verdicts.len() == args.containers && outcome.verdicts.iter().all(|v| v.passed),
        "expected a passing verdict for every container"
    );
    let per_s = results_total as f64 / (take_s + close_s);
    say(format!(
        "verified and aggregated {results_total} results in {:.0} ms (+ {:.0} ms closing): {per_s:.0}/s",
        take_s * 1e3,
        close_s * 1e3
    ));

    // A capacity proof at the benchmark size.
    let bench = ProofParams::BENCH;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let (mut host_ms, mut checker_ms) = (Vec::new(), Vec::new());
    let bar = super::progress(args.proofs as u64, "proofs");
    for _ in 0..args.proofs {
        bar.inc(1);
        let mut seed = B256::ZERO;
        rng.fill_bytes(&mut seed.0);
        let challenge = Challenge {
            seed,
            params: bench,
        };
        let t = Instant::now();
        let proved = gpumesh_proof::prove(&challenge)?;
        let rows = gpumesh_proof::pick_rows(&bench, &mut rng);
        let opening = proved.open(&rows)?;
        host_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        gpumesh_proof::verify(&challenge, proved.root(), &rows, &opening, &mut rng)
            .map_err(|e| anyhow::anyhow!("an honest proof failed: {e}"))?;
        checker_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (host, checker) = (median(host_ms), median(checker_ms));
    let out = serde_json::json!({
        "bench": "checker",
        "containers": args.containers,
        "checkers": args.checkers,
        "reports": reports.len(),
        "results": results_total,
        "assign_ms": (assign_ms * 10.0).round() / 10.0,
        "verify_and_take_ms": (take_s * 1e4).round() / 10.0,
        "close_period_ms": (close_s * 1e4).round() / 10.0,
        "results_verified_per_s": per_s.round(),
        "proof_rows": bench.rows,
        "proof_inner": bench.inner,
        "proof_spot_rows": bench.spot_rows,
        "proof_host_ms": (host * 10.0).round() / 10.0,
        "proof_checker_ms": (checker * 100.0).round() / 100.0,
        "proof_cost_ratio": ((checker / host) * 1e5).round() / 1e5,
        "detection_probability": gpumesh_proof::detection_probability(0.1, bench.spot_rows),
        "detection_probability_exact": gpumesh_proof::detection_probability_exact(&bench, bench.rows / 10),
        "host_gmacs_per_s": ((bench.macs() as f64 / (host / 1e3)) / 1e7).round() / 100.0,
    });
    if args.json {
        println!("{out}");
    } else {
        println!("{}", serde_json::to_string_pretty(&out)?);
    }
    Ok(ExitCode::SUCCESS)
}

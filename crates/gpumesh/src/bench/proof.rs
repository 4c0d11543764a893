//! `gpumesh bench proof`: a device's whole capacity-proof rate.
//!
//! A GPU model's reference proof rate is multiply-accumulates per second for whole proofs
//! (docs/capacity-proof.md, "Reference proof rates"): deriving A and B from the seed, the
//! product, hashing C's rows and building the tree, since on a GPU the product is not the
//! largest part. This command measures exactly that, with the host agent's code: the
//! proof crate's CPU kernel, or the product on a CUDA device through `gpumesh-cuda` as
//! the agent's CUDA prover does (B uploaded once per proof, blocks of A in and of C out).
//!
//! One untimed warm-up proof comes first; its spot rows are opened and checked as a
//! checker would (Freivalds), so a device that multiplies wrongly fails here rather than
//! reporting a speed. Then `--runs` proofs, each on its own seed, timed phase by phase
//! (`gpumesh_proof::prove_timed`, `prove_with_timed`). The report is the median run's:
//! its rate, and each phase's share of it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use alloy_primitives::{B256, keccak256};
use anyhow::Context;
use gpumesh_proof::{Challenge, ProofParams, ProofTimings, Proved};
use gpumesh_types::GpuModel;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::json;

use super::round;
use crate::cli::{ProofBenchArgs, ProofDevice};

/// What computes the product.
enum Multiplier {
    /// The proof crate's kernel, on the calling thread.
    Cpu,
    /// One CUDA device, with the kernel loaded.
    Cuda(gpumesh_cuda::Device),
}

impl Multiplier {
    fn open(device: ProofDevice, gpu: usize) -> anyhow::Result<Self> {
        match device {
            ProofDevice::Cpu => Ok(Self::Cpu),
            ProofDevice::Cuda => {
                let cuda = gpumesh_cuda::Cuda::open().context("failed to load CUDA")?;
                let device = cuda
                    .device(gpu)
                    .with_context(|| format!("failed to open CUDA device {gpu}"))?;
                Ok(Self::Cuda(device))
            }
        }
    }

    /// What a person reads: the device's name.
    fn describe(&self) -> String {
        match self {
            Self::Cpu => {
                let name = cpu_name().unwrap_or_else(|| "unknown CPU".into());
                format!("CPU kernel, one thread ({name})")
            }
            Self::Cuda(device) => device.name().to_string(),
        }
    }

    /// One proof, with its phases timed from now.
    fn prove(&self, challenge: &Challenge) -> anyhow::Result<(Proved, ProofTimings)> {
        let start = Instant::now();
        let now = || start.elapsed();
        match self {
            Self::Cpu => Ok(gpumesh_proof::prove_timed(challenge, now)?),
            Self::Cuda(device) => {
                let inner = challenge.params.inner as usize;
                // B is the same for every block of one proof: uploaded on the first.
                let mut b_on_device = None;
                let proved = gpumesh_proof::prove_with_timed(challenge, now, |a, b, rows, c| {
                    let b_on_device = match &mut b_on_device {
                        Some(uploaded) => uploaded,
                        None => {
                            b_on_device.insert(device.upload(b, inner).map_err(|e| e.to_string())?)
                        }
                    };
                    device
                        .multiply(a, b_on_device, rows, c)
                        .map_err(|e| e.to_string())
                })
                .with_context(|| format!("failed to prove on {}", device.name()))?;
                Ok(proved)
            }
        }
    }
}

/// The CPU's model name, where the system says it (Linux).
fn cpu_name() -> Option<String> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    info.lines()
        .find_map(|line| line.strip_prefix("model name")?.split_once(':'))
        .map(|(_, name)| name.trim().to_string())
}

/// The challenge of run `run`: a seed of its own, the same in every invocation.
fn challenge(run: u32, params: ProofParams) -> Challenge {
    let seed: B256 = keccak256([b"gpumesh/bench/proof/".as_slice(), &run.to_be_bytes()].concat());
    Challenge { seed, params }
}

/// The GPUs NVML reports, as the host agent discovers them, or why it reports none.
fn nvml_gpus() -> serde_json::Value {
    match gpumesh_host::discovery::discover_nvml() {
        Ok(gpus) => gpus
            .iter()
            .map(|g| {
                json!({
                    "index": g.index,
                    "name": g.name,
                    "uuid": g.uuid,
                    "memory_mib": g.memory_mib,
                    "model": g.model.map(GpuModel::name),
                })
            })
            .collect(),
        Err(reason) => json!({ "error": reason }),
    }
}

pub fn run(args: ProofBenchArgs) -> anyhow::Result<ExitCode> {
    let params = ProofParams {
        rows: args.rows,
        inner: args.inner,
        spot_rows: args.spot_rows,
    };
    params.validate().context("invalid proof shape")?;
    let multiplier = Multiplier::open(args.device, args.gpu)?;
    let device_name = multiplier.describe();

    let bar = super::progress(u64::from(args.runs) + 1, "proofs");
    // The warm-up: not timed, and checked as a checker would check it.
    let warm_up = challenge(0, params);
    let (proved, _) = multiplier.prove(&warm_up)?;
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    let asked = gpumesh_proof::pick_rows(&params, &mut rng);
    let opening = proved.open(&asked)?;
    gpumesh_proof::verify(&warm_up, proved.root(), &asked, &opening, &mut rng)
        .map_err(|e| anyhow::anyhow!("the warm-up proof failed its spot check: {e}"))?;
    bar.inc(1);

    let mut runs = Vec::with_capacity(args.runs as usize);
    for run in 1..=args.runs {
        let (_, timings) = multiplier.prove(&challenge(run, params))?;
        runs.push(timings);
        bar.inc(1);
    }
    drop(bar);
    // The median run (the upper middle one for an even count), so its phases add up.
    runs.sort_by_key(ProofTimings::total);
    let median = runs[runs.len() / 2];
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let total = median.total().max(Duration::from_nanos(1));
    let share = |phase: Duration| round(100.0 * phase.as_secs_f64() / total.as_secs_f64(), 1);
    let rows_per_s = f64::from(params.rows) / total.as_secs_f64();
    let macs_per_s = params.macs() as f64 / total.as_secs_f64();

    let (gpu, uuid, model, nvml) = match &multiplier {
        Multiplier::Cpu => (None, None, None, None),
        Multiplier::Cuda(device) => (
            Some(device.ordinal()),
            Some(device.uuid()),
            GpuModel::from_nvml_name(device.name()).map(GpuModel::name),
            Some(nvml_gpus()),
        ),
    };
    let device = match args.device {
        ProofDevice::Cpu => "cpu",
        ProofDevice::Cuda => "cuda",
    };
    let mut report = json!({
        "bench": "proof",
        "device": device,
        "device_name": device_name,
        "gpu": gpu,
        "uuid": uuid,
        "model": model,
        "rows": params.rows,
        "inner": params.inner,
        "spot_rows": params.spot_rows,
        "macs_per_proof": params.macs(),
        "runs": args.runs,
        "spot_check": "passed",
        "ms_median": round(ms(median.total()), 3),
        "ms_min": round(ms(runs[0].total()), 3),
        "ms_max": round(ms(runs[runs.len() - 1].total()), 3),
        "rows_per_s": rows_per_s.round(),
        "macs_per_s": macs_per_s.round() as u64,
        "derive_pct": share(median.derive),
        "product_pct": share(median.product),
        "hash_rows_pct": share(median.hash_rows),
        "tree_pct": share(median.tree),
    });
    if let Some(nvml) = nvml {
        report["nvml_gpus"] = nvml;
    }
    if args.json {
        println!("{report}");
        return Ok(ExitCode::SUCCESS);
    }

    let device_line = match (gpu, model) {
        (None, _) => device_name,
        (Some(gpu), Some(model)) => format!("{device_name} (CUDA device {gpu}, model {model})"),
        (Some(gpu), None) => format!("{device_name} (CUDA device {gpu}, not in the catalog)"),
    };
    let rows = [
        ["device".to_string(), device_line],
        [
            "shape".into(),
            format!(
                "{} rows × {} inner, {} spot rows: {:.3e} MACs a proof",
                params.rows,
                params.inner,
                params.spot_rows,
                params.macs() as f64
            ),
        ],
        [
            "runs".into(),
            format!("{}, after a warm-up whose spot rows verified", args.runs),
        ],
        [
            "ms per proof".into(),
            format!(
                "{:.1} median, {:.1} min, {:.1} max",
                ms(median.total()),
                ms(runs[0].total()),
                ms(runs[runs.len() - 1].total())
            ),
        ],
        ["rows/s".into(), format!("{rows_per_s:.0}")],
        ["MAC/s".into(), format!("{macs_per_s:.3e}")],
        ["derive".into(), format!("{:.1}%", share(median.derive))],
        ["product".into(), format!("{:.1}%", share(median.product))],
        ["hashing".into(), format!("{:.1}%", share(median.hash_rows))],
        ["tree".into(), format!("{:.1}%", share(median.tree))],
    ];
    let mut table = comfy_table::Table::new();
    table.load_preset(comfy_table::presets::NOTHING);
    for row in rows {
        table.add_row(row);
    }
    // The preset pads every cell, the last column's too: trimmed so lines end cleanly.
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

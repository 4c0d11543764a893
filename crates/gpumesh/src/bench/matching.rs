//! `gpumesh bench match`: the matching engine at network scale, against a plain scan.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use gpumesh_matcher::{GroupId, HostId, Matcher, ReservationId};
use gpumesh_sim::{Requests, WorldConfig};
use hdrhistogram::Histogram;
use serde_json::json;

use crate::cli::MatchBenchArgs;

/// Resident memory of this process, in bytes (Linux), to cross-check the engine's own count.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What one pass over the request stream did.
struct Pass {
    choices: Vec<Option<(GroupId, u64)>>,
    /// By kind of request: (label, latency, nodes expanded, groups evaluated).
    by_kind: Vec<(String, Histogram<u64>, u64, u64)>,
    matches: u64,
    unmatched: u64,
    updates: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
    /// Latency of the requests that were booked.
    booked: Histogram<u64>,
    /// The explanation of each unmatched request (what the indexer answers `no_match`
    /// with), timed apart and not counted in `elapsed`.
    explained: Histogram<u64>,
}

/// Drives `requests` requests through `m` on this thread: each is booked (by the index or
/// by the scan) and committed; each match ends the oldest leases so utilisation stays
/// level; state updates (price, online, tier) run alongside at the given rate.
fn pass(
    m: &mut Matcher,
    live: Vec<ReservationId>,
    requests: usize,
    seed: u64,
    updates_per_match: f64,
    scan: bool,
    keep: usize,
) -> anyhow::Result<Pass> {
    let mut stream = Requests::new(seed);
    // Leases end oldest first; those of the world's start end before any booked here.
    let mut live: std::collections::VecDeque<ReservationId> = live.into();
    let hosts = m.host_count();
    let mut offline: Vec<HostId> = Vec::new();
    let mut latency =
        Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).context("histogram bounds")?;
    let mut booked_latency = latency.clone();
    let mut explained = latency.clone();
    let mut explaining = Duration::ZERO;
    let mut choices = Vec::with_capacity(keep);
    let mut by_kind: Vec<(String, Histogram<u64>, u64, u64)> = Vec::new();
    let (mut matches, mut unmatched, mut updates) = (0u64, 0u64, 0u64);
    let mut update_debt = 0.0;
    let mut release_debt: i64 = 0;
    let now_ms = 1_000_000;
    // Drawn between requests, every 4096, outside the timed calls.
    let bar = super::progress(requests as u64, "requests");
    let began = Instant::now();
    for i in 0..requests {
        if i % 4096 == 0 {
            bar.set_position(i as u64);
        }
        let request = stream.next_request();
        let t = Instant::now();
        let booked = if scan {
            m.book_scan(&request, Some(now_ms + 30_000))
        } else {
            m.book(&request, Some(now_ms + 30_000))
        };
        if let Ok(b) = &booked {
            m.commit(b.reservation)
                .map_err(|e| anyhow::anyhow!("commit failed: {e:?}"))?;
        }
        let took = t.elapsed().as_nanos().max(1) as u64;
        let (nodes, evaluated) = m.take_work();
        latency.record(took).context("latency out of range")?;
        if booked.is_ok() {
            booked_latency
                .record(took)
                .context("latency out of range")?;
        }
        let label = kind(&request, booked.is_ok());
        let at = match by_kind.iter().position(|(l, ..)| *l == label) {
            Some(at) => at,
            None => {
                let h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                    .context("histogram bounds")?;
                by_kind.push((label.to_string(), h, 0, 0));
                by_kind.len() - 1
            }
        };
        let entry = &mut by_kind[at];
        entry.1.record(took).context("latency out of range")?;
        entry.2 += nodes;
        entry.3 += evaluated;
        if i < keep {
            choices.push(booked.as_ref().ok().map(|b| (b.group, b.mask)));
        }
        match booked {
            Ok(b) => {
                matches += 1;
                live.push_back(b.reservation);
                // The oldest leases end, as many GPUs as this one took, so that
                // utilisation stays level (leases of equal length end in the order they
                // started).
                release_debt += b.mask.count_ones() as i64;
                while release_debt > 0 {
                    let Some(old) = live.pop_front() else { break };
                    let (_, mask) = m.reservation(old).context("a live reservation")?;
                    m.release(old)
                        .map_err(|e| anyhow::anyhow!("release failed: {e:?}"))?;
                    release_debt -= mask.count_ones() as i64;
                }
                update_debt += updates_per_match;
            }
            Err(_) => {
                unmatched += 1;
                let t = Instant::now();
                std::hint::black_box(m.explain(&request));
                let took = t.elapsed();
                explaining += took;
                explained
                    .record(took.as_nanos().max(1) as u64)
                    .context("latency out of range")?;
            }
        }
        while update_debt >= 1.0 {
            update_debt -= 1.0;
            updates += 1;
            let host = HostId(stream.below(hosts) as u32);
            let result = match stream.below(10) {
                0..=5 => m.set_price(host, stream.price_update()),
                6..=8 => {
                    // A host drops out, and one that dropped out earlier comes back.
                    if offline.len() > 100 || (stream.coin(0.5) && !offline.is_empty()) {
                        let back = offline.swap_remove(stream.below(offline.len()));
                        m.set_online(back, true)
                    } else {
                        offline.push(host);
                        m.set_online(host, false)
                    }
                }
                _ => m.set_tier(host, 1 + stream.below(3) as u8),
            };
            result.map_err(|e| anyhow::anyhow!("update failed: {e:?}"))?;
        }
    }
    Ok(Pass {
        choices,
        by_kind,
        booked: booked_latency,
        explained,
        matches,
        unmatched,
        updates,
        elapsed: began.elapsed() - explaining,
        latency,
    })
}

/// A label for the latency breakdown: AI jobs by policy, gaming sessions by image policy.
fn kind(r: &gpumesh_matcher::Request, matched: bool) -> &'static str {
    use gpumesh_matcher::{ImagePolicy, RankPolicy};
    match (r.max_rtt_ms.is_some(), r.image_policy, r.policy, matched) {
        (true, ImagePolicy::Any, _, true) => "gaming-any",
        (true, ImagePolicy::Any, _, false) => "gaming-any-unmatched",
        (true, ImagePolicy::Prefer, _, true) => "gaming-prefer",
        (true, ImagePolicy::Prefer, _, false) => "gaming-prefer-unmatched",
        (true, ImagePolicy::Require, _, true) => "gaming-require",
        (true, ImagePolicy::Require, _, false) => "gaming-require-unmatched",
        (false, _, RankPolicy::Price, true) => "ai-price",
        (false, _, RankPolicy::Price, false) => "ai-price-unmatched",
        (false, _, RankPolicy::Experience, true) => "ai-experience",
        (false, _, RankPolicy::Experience, false) => "ai-experience-unmatched",
        (false, _, RankPolicy::Balanced, true) => "ai-balanced",
        (false, _, RankPolicy::Balanced, false) => "ai-balanced-unmatched",
    }
}

/// PostgreSQL's text form of an array.
fn pg_array<T: std::fmt::Display>(items: impl IntoIterator<Item = T>) -> String {
    let inner: Vec<String> = items.into_iter().map(|i| i.to_string()).collect();
    format!("{{{}}}", inner.join(","))
}

/// Writes the world as it stands (every group with its free GPUs) and the request stream
/// as CSV for PostgreSQL's COPY.
fn export(
    dir: &std::path::Path,
    snapshot: &gpumesh_matcher::Snapshot,
    requests: usize,
    seed: u64,
) -> anyhow::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let mut groups = std::io::BufWriter::new(
        std::fs::File::create(dir.join("groups.csv")).context("failed to create groups.csv")?,
    );
    let mut id = 0u32;
    for h in &snapshot.hosts {
        for (g, free, enabled) in &h.groups {
            let images = pg_array(h.spec.images.iter().map(|i| format!("\"{i}\"")));
            writeln!(
                groups,
                "{id},{},{},{},{},{},{},{},{},{},\"{}\",{}",
                g.model as usize,
                h.spec.point.lat,
                h.spec.point.lon,
                h.spec.country,
                h.spec.price_per_gpu_hour.tokens(),
                h.spec.tier,
                (free & enabled).count_ones(),
                g.count,
                g.vram_mib,
                images.replace('"', "\"\""),
                h.online,
            )?;
            id += 1;
        }
    }
    groups.flush()?;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(dir.join("requests.csv")).context("failed to create requests.csv")?,
    );
    let mut stream = Requests::new(seed);
    let latency = gpumesh_matcher::LatencyParams::default();
    for id in 0..requests {
        let r = stream.next_request();
        let models = gpumesh_matcher::models_mask(r.gpu);
        // The round-trip bound as a distance bound under the geographic model.
        let max_km = r.max_rtt_ms.map(|rtt| {
            ((rtt - latency.access_ms) * latency.fibre_km_per_ms / (2.0 * latency.route_inflation))
                .max(0.0)
        });
        writeln!(
            out,
            "{id},\"{}\",{},{},{},{},{},\"{}\",\"{}\",{},{},{:?},{:?}",
            pg_array((0..32).filter(|b| models & (1 << b) != 0)),
            r.count,
            r.near.lat,
            r.near.lon,
            r.max_price_per_gpu_hour.tokens(),
            r.max_tier,
            pg_array(&r.countries),
            pg_array(&r.exclude_countries),
            max_km.map(|k| k.to_string()).unwrap_or_default(),
            r.image.clone().unwrap_or_default(),
            r.image_policy,
            r.policy,
        )?;
    }
    out.flush()?;
    Ok(())
}

fn us(nanos: u64) -> f64 {
    (nanos as f64 / 10.0).round() / 100.0
}

pub fn run(args: MatchBenchArgs) -> anyhow::Result<ExitCode> {
    if args.containers == 0 || args.requests == 0 {
        bail!("--containers and --requests must be more than zero");
    }
    if !(0.0..1.0).contains(&args.busy) {
        bail!("--busy must be at least 0 and below 1");
    }
    let rss_before = resident_bytes();
    eprintln!(
        "building a world of {} GPUs ({}% busy)…",
        args.containers,
        (args.busy * 100.0).round()
    );
    let world = gpumesh_sim::build(WorldConfig {
        containers: args.containers,
        busy: args.busy,
        seed: args.seed,
    });
    let rss_after = resident_bytes();
    let mut m = world.matcher;
    let containers = world.containers;
    let snapshot = m.snapshot();
    if let Some(dir) = &args.export {
        export(dir, &snapshot, args.requests, args.seed + 1)?;
        eprintln!(
            "wrote {}/groups.csv and {}/requests.csv",
            dir.display(),
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let mut rebuilds = Vec::new();
    for _ in 0..3 {
        let t = Instant::now();
        let rebuilt = Matcher::from_snapshot(&snapshot)
            .map_err(|e| anyhow::anyhow!("rebuild failed: {e:?}"))?;
        rebuilds.push(t.elapsed());
        drop(rebuilt);
    }
    rebuilds.sort();
    let rebuild_ms = rebuilds[1].as_secs_f64() * 1_000.0;

    eprintln!(
        "baseline: a plain scan answers the first {} requests…",
        args.baseline_requests
    );
    let mut base =
        Matcher::from_snapshot(&snapshot).map_err(|e| anyhow::anyhow!("rebuild failed: {e:?}"))?;
    let baseline = pass(
        &mut base,
        world.busy.clone(),
        args.baseline_requests,
        args.seed + 1,
        args.updates_per_match,
        true,
        args.baseline_requests,
    )?;
    drop(base);

    eprintln!("engine: {} requests…", args.requests);
    let engine = pass(
        &mut m,
        world.busy,
        args.requests,
        args.seed + 1,
        args.updates_per_match,
        false,
        args.baseline_requests,
    )?;
    let agree = engine
        .choices
        .iter()
        .zip(&baseline.choices)
        .take_while(|(a, b)| a == b)
        .count();

    let matches_per_s = engine.matches as f64 / engine.elapsed.as_secs_f64();
    let baseline_per_s = baseline.matches as f64 / baseline.elapsed.as_secs_f64();
    let bytes = m.heap_bytes();
    let h = &engine.latency;
    let report = json!({
        "bench": "match",
        "containers": containers,
        "hosts": m.host_count(),
        "groups": m.group_count(),
        "busy_fraction_at_end": 1.0 - m.free_gpu_count() as f64 / containers as f64,
        "requests": args.requests,
        "matches": engine.matches,
        "unmatched": engine.unmatched,
        "updates": engine.updates,
        "seconds": engine.elapsed.as_secs_f64(),
        "matches_per_s": matches_per_s.round(),
        "updates_per_s": (engine.updates as f64 / engine.elapsed.as_secs_f64()).round(),
        "p50_us": us(h.value_at_quantile(0.50)),
        "p99_us": us(h.value_at_quantile(0.99)),
        "p999_us": us(h.value_at_quantile(0.999)),
        "max_us": us(h.max()),
        "booked_p50_us": us(engine.booked.value_at_quantile(0.50)),
        "booked_p99_us": us(engine.booked.value_at_quantile(0.99)),
        "booked_p999_us": us(engine.booked.value_at_quantile(0.999)),
        "explain_p50_us": us(engine.explained.value_at_quantile(0.50)),
        "explain_p99_us": us(engine.explained.value_at_quantile(0.99)),
        "bytes_per_container": (bytes as f64 / containers as f64).round(),
        "rss_bytes_per_container": match (rss_before, rss_after) {
            (Some(a), Some(b)) => json!((b.saturating_sub(a) as f64 / containers as f64).round()),
            _ => json!(null),
        },
        "rebuild_ms": (rebuild_ms * 10.0).round() / 10.0,
        "baseline_requests": args.baseline_requests,
        "baseline_matches_per_s": baseline_per_s.round(),
        "baseline_p50_us": us(baseline.latency.value_at_quantile(0.50)),
        "speedup": (matches_per_s / baseline_per_s * 10.0).round() / 10.0,
        "baseline_agreement": format!("{agree}/{}", args.baseline_requests.min(args.requests)),
        "by_kind": engine.by_kind.iter().map(|(label, h, nodes, groups)| (label.clone(), json!({
            "requests": h.len(),
            "p50_us": us(h.value_at_quantile(0.5)),
            "p99_us": us(h.value_at_quantile(0.99)),
            "max_us": us(h.max()),
            "nodes_per_request": (*nodes as f64 / h.len() as f64).round(),
            "groups_per_request": (*groups as f64 / h.len() as f64).round(),
        }))).collect::<serde_json::Map<_, _>>(),
    });
    super::print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

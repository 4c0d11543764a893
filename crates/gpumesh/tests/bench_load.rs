//! `gpumesh bench load` end to end, small: an indexer process and a load-generating
//! process, every kind of request, then the restart and a reward proof.

mod common;

use std::process::Command;

#[test]
fn a_small_load_run_is_accepted_whole_and_reported() {
    let out = Command::new(common::BIN)
        .args([
            "bench",
            "load",
            "--hosts",
            "120",
            "--buyers",
            "20",
            "--duration",
            "6",
            "--heartbeat-s",
            "2",
            // Few jobs at once, each cancelled once matched: the hosts' GPUs never run
            // out, and no buyer nears its rate limit.
            "--job-concurrency",
            "2",
            "--cancel-every",
            "1",
            "--transfer-rate",
            "20",
            "--json",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}); stderr:\n{stderr}"));
    assert!(out.status.success(), "{report}\n{stderr}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["hosts"], 120);
    // Every kind of request was accepted during the run.
    for field in [
        "heartbeats_per_s",
        "jobs_per_s",
        "cancels_per_s",
        "transfers_per_s",
    ] {
        assert!(report[field].as_f64().unwrap() > 0.0, "{field}: {report}");
    }
    // 120 hosts beating every 2 s are 60 a second on schedule; never more (each heartbeat
    // is sent once, at its time), and the run's 6 s hold three rounds of them.
    let beats = report["heartbeats_per_s"].as_f64().unwrap();
    assert!((20.0..=61.0).contains(&beats), "{report}");
    assert!(report["job_p99_ms"].as_f64().unwrap() >= report["job_p50_ms"].as_f64().unwrap());
    // Per route: heartbeats and transfers have their latencies too.
    for route in ["heartbeat", "transfer"] {
        let p50 = report[format!("{route}_p50_ms")].as_f64().unwrap();
        let p99 = report[format!("{route}_p99_ms")].as_f64().unwrap();
        assert!(0.0 < p50 && p50 <= p99, "{route}: {report}");
    }
    // Every request answered is counted, and the indexer's CPU is spread over them.
    assert!(report["requests"].as_u64().unwrap() > 0, "{report}");
    assert!(report["server_cpu_us_per_request"].as_f64().unwrap() > 0.0);
    assert_eq!(report["pinned"], false);
    assert!(
        report["server_cpu_cores"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(report["indexer_rss_bytes_per_host"].as_u64().unwrap() > 0);
    assert!(report["restart_s"].as_f64().unwrap() > 0.0);
    // A minute-long epoch does not close in six seconds: the report says why there is no
    // proof time rather than making one up.
    assert!(
        report["proof_ms"].is_f64() || report["proof_missing"].is_string(),
        "{report}"
    );
}

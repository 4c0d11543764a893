//! `gpumesh wallet …` and `gpumesh ledger …` against a running local indexer.

mod common;

use std::path::Path;
use std::process::Command;

/// Runs `gpumesh ARGS` and returns (success, stdout, stderr).
fn gpumesh(url: &str, key: Option<&Path>, args: &[&str]) -> (bool, String, String) {
    let mut cmd = Command::new(common::BIN);
    cmd.args(args)
        .env("GPUMESH_INDEXER", url)
        .env("GPUMESH_PASSWORD", common::PASSWORD);
    match key {
        Some(k) => cmd.env("GPUMESH_KEY", k),
        None => cmd.env_remove("GPUMESH_KEY"),
    };
    let out = cmd.output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(url: &str, key: Option<&Path>, args: &[&str]) -> String {
    let (success, out, err) = gpumesh(url, key, args);
    assert!(success, "gpumesh {args:?} failed: {err}");
    out
}

fn json(url: &str, key: Option<&Path>, args: &[&str]) -> serde_json::Value {
    let out = ok(url, key, args);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("gpumesh {args:?}: {e}: {out}"))
}

#[test]
fn wallet_and_ledger_commands_work_against_an_indexer() {
    let dir = tempfile::tempdir().unwrap();
    let (mut indexer, url) = common::start(&dir.path().join("net"));
    let (alice, bob) = (dir.path().join("alice.key"), dir.path().join("bob.key"));
    let none = None;
    ok(
        &url,
        none,
        &[
            "wallet",
            "new",
            "--kdf",
            "light",
            "--out",
            alice.to_str().unwrap(),
        ],
    );
    let bob_address = ok(
        &url,
        none,
        &[
            "wallet",
            "new",
            "--kdf",
            "light",
            "--out",
            bob.to_str().unwrap(),
        ],
    );
    let bob_address = bob_address.trim();
    assert_eq!(
        ok(&url, Some(&bob), &["wallet", "address"]).trim(),
        bob_address
    );
    // A key file is never overwritten, and a wrong password opens nothing.
    let (success, _, err) = gpumesh(
        &url,
        none,
        &[
            "wallet",
            "new",
            "--kdf",
            "light",
            "--out",
            bob.to_str().unwrap(),
        ],
    );
    assert!(!success && err.contains("already exists"), "{err}");
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not it\n").unwrap();
    let (success, _, err) = gpumesh(
        &url,
        Some(&bob),
        &[
            "wallet",
            "transfer",
            "--to",
            bob_address,
            "--amount",
            "1",
            "--password-file",
            wrong.to_str().unwrap(),
        ],
    );
    assert!(!success && err.contains("wrong password"), "{err}");

    // An account that never held tokens cannot send.
    let (success, _, err) = gpumesh(
        &url,
        Some(&alice),
        &["wallet", "transfer", "--to", bob_address, "--amount", "1"],
    );
    assert!(!success);
    assert!(err.contains("unknown"), "{err}");

    ok(&url, Some(&alice), &["wallet", "faucet", "--amount", "100"]);
    let out = ok(
        &url,
        Some(&alice),
        &[
            "wallet",
            "transfer",
            "--to",
            bob_address,
            "--amount",
            "12.5",
        ],
    );
    assert!(out.contains("sent 12.5 tokens"), "{out}");
    let out = ok(
        &url,
        Some(&alice),
        &["wallet", "stake", "--index", "0", "--amount", "20"],
    );
    assert!(out.contains("staked 20 tokens on GPU 0"), "{out}");

    let a = json(&url, Some(&alice), &["wallet", "balance", "--json"]);
    assert_eq!(a["balance"], "67500000000000000000", "{a}");
    assert_eq!(a["stakes"][0]["bonded"], "20000000000000000000", "{a}");
    let b = json(
        &url,
        none,
        &["wallet", "balance", "--address", bob_address, "--json"],
    );
    assert_eq!(b["balance"], "12500000000000000000");

    let out = ok(&url, Some(&alice), &["wallet", "unstake", "--index", "0"]);
    assert!(out.contains("GPU 0 is unbonding"), "{out}");
    // Unbonding takes minutes even on a local network: withdrawing now is refused.
    let (success, _, err) = gpumesh(&url, Some(&alice), &["wallet", "withdraw", "--index", "0"]);
    assert!(!success && err.contains("unbonds at"), "{err}");

    let history = json(&url, Some(&alice), &["wallet", "history", "--json"]);
    let kinds: Vec<String> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let kind = &e["tx"]["tx"]["kind"];
            kind.as_object()
                .and_then(|o| o.keys().next().cloned())
                .unwrap_or_else(|| kind.to_string())
        })
        .collect();
    assert_eq!(
        kinds.len(),
        4,
        "faucet, transfer, stake, unstake: {kinds:?}"
    );
    let text = ok(&url, Some(&alice), &["wallet", "history"]);
    assert!(text.contains("transfer 12.5 tokens to"), "{text}");

    // The faucet's transfer is the first transaction; it names alice.
    let seq = history.as_array().unwrap().last().unwrap()["seq"]
        .as_u64()
        .unwrap();
    let tx = json(&url, none, &["ledger", "tx", &seq.to_string()]);
    assert_eq!(tx["entry"]["seq"], seq);
    assert!(tx["hash"].as_str().unwrap().starts_with("0x"));
    let (success, _, err) = gpumesh(&url, none, &["ledger", "tx", "999999"]);
    assert!(!success && err.contains("does not exist"), "{err}");

    let treasury = json(&url, none, &["ledger", "treasury", "--json"]);
    assert_eq!(treasury["next_epoch"], 0);
    assert!(treasury["reward_pool_balance"].as_str().unwrap().len() > 20);

    // No epoch has closed yet (local epochs last a minute): a clear refusal.
    let address = ok(
        &url,
        none,
        &["wallet", "address", "--key", alice.to_str().unwrap()],
    );
    let (success, _, err) = gpumesh(
        &url,
        none,
        &["ledger", "proof", address.trim(), "--epoch", "0"],
    );
    assert!(!success && err.contains("not been closed"), "{err}");

    // Blocks are sealed every few seconds; wait for one holding these transactions.
    let mut blocks = serde_json::Value::Null;
    for _ in 0..100 {
        blocks = json(&url, none, &["ledger", "blocks", "--json"]);
        if blocks.as_array().is_some_and(|b| !b.is_empty()) {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let head = &blocks[0];
    assert!(head["height"].as_u64().unwrap() >= 1, "{blocks}");
    let text = ok(&url, none, &["ledger", "blocks", "--limit", "1"]);
    let row = text.lines().nth(1).unwrap_or_default();
    assert!(
        text.trim_start().starts_with("block")
            && row.split_whitespace().next() == Some(&head["height"].to_string()),
        "{text}"
    );

    indexer.kill().unwrap();
    indexer.wait().unwrap();
    let verify = json(
        &url,
        none,
        &[
            "ledger",
            "verify",
            "--json",
            "--data",
            dir.path().join("net").to_str().unwrap(),
        ],
    );
    assert_eq!(verify["supply_conserved"], true);
}

#[test]
fn bench_proof_reports_a_whole_proof_rate_and_refuses_a_bad_shape() {
    // No indexer: the benchmark runs alone.
    let shape = ["--rows", "64", "--inner", "64", "--spot-rows", "8"];
    let args = [&["bench", "proof", "--json", "--runs", "1"][..], &shape].concat();
    let report = json("", None, &args);
    assert_eq!(report["bench"], "proof", "{report}");
    assert_eq!(report["device"], "cpu", "{report}");
    assert_eq!(report["rows"], 64, "{report}");
    assert_eq!(report["macs_per_proof"], 64 * 64 * 64, "{report}");
    assert!(report["macs_per_s"].as_u64().unwrap() > 0, "{report}");
    assert!(report["rows_per_s"].as_f64().unwrap() > 0.0, "{report}");
    for field in ["ms_median", "ms_min", "ms_max", "device_name"] {
        assert!(!report[field].is_null(), "{field} missing: {report}");
    }
    let shares: f64 = ["derive_pct", "product_pct", "hash_rows_pct", "tree_pct"]
        .iter()
        .map(|field| report[field].as_f64().unwrap())
        .sum();
    assert!(
        (shares - 100.0).abs() < 1.0,
        "phase shares add to {shares}: {report}"
    );

    let (success, out, err) = gpumesh("", None, &["bench", "proof", "--json", "--inner", "10"]);
    assert!(!success, "inner 10 was accepted: {out}");
    assert!(err.contains("inner dimension 10"), "{err}");
}

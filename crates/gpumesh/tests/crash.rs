//! The indexer killed with SIGKILL at many points while writers keep it busy, and started
//! again each time: the store opens, every transaction it acknowledged is there, and
//! `gpumesh ledger verify` passes at the end (crash safety). Writes are group-committed
//! and the indexer seals a block every 50 ms with a ledger snapshot in nearly every one,
//! so kills land in groups being written and in snapshots being written, and restarts
//! start from snapshots.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use gpumesh_client::Client;
use gpumesh_identity::Wallet;
use gpumesh_types::{Amount, B256, TxKind};

const KILL_POINTS: u64 = 24;
const WRITERS: usize = 4;

/// Sends transfers in a ring as fast as the indexer acknowledges them, until it dies.
/// Returns what was acknowledged: (sequence number, transaction hash).
async fn write_until_killed(
    url: String,
    me: Wallet,
    to: gpumesh_types::Address,
) -> Vec<(u64, B256)> {
    let client = Client::new(&url, Some(me));
    let mut acked = Vec::new();
    match client.faucet(Amount::from_tokens(5)).await {
        Ok(a) => acked.push((a.seq, a.hash)),
        Err(_) => return acked,
    }
    loop {
        let kind = TxKind::Transfer {
            to,
            amount: Amount(1 + acked.len() as u128),
        };
        match client.send_tx(kind).await {
            Ok(a) => acked.push((a.seq, a.hash)),
            // Killed: a transaction in flight may or may not have landed, and was not
            // acknowledged, so it is not counted.
            Err(_) => return acked,
        }
    }
}

/// Asks the restarted indexer for every acknowledged transaction.
async fn check_all_there(url: &str, acked: &[(u64, B256)]) {
    let http = gpumesh_client::http();
    for (seq, hash) in acked {
        let body: serde_json::Value = http
            .get(format!("{url}/v1/ledger/txs/{seq}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            body["hash"].as_str(),
            Some(hash.to_string().as_str()),
            "acknowledged transaction {seq} is missing or different after a SIGKILL: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_transactions_survive_sigkill_at_many_points() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("net");
    let wallets: Vec<Wallet> = (0..WRITERS)
        .map(|i| Wallet::from_label(&format!("crash writer {i}")))
        .collect();
    let mut acked: Vec<(u64, B256)> = Vec::new();
    let mut checked = 0;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let began = Instant::now();
    let mut from_snapshot = 0;
    for point in 0..=KILL_POINTS {
        let (mut child, url, log) = common::start_logged(&[
            "--local",
            "--data",
            data.to_str().unwrap(),
            "--block-ms",
            "50",
            "--snapshot-every",
            "2",
            // For the line that says how the state was rebuilt.
            "--verbose",
        ]);
        if log
            .iter()
            .any(|l| l.contains("rebuilt the state") && l.contains("from_snapshot=true"))
        {
            from_snapshot += 1;
        }
        // Everything acknowledged before the last kill must be there now.
        check_all_there(&url, &acked[checked..]).await;
        checked = acked.len();
        if point == KILL_POINTS {
            child.kill().unwrap();
            child.wait().unwrap();
            break;
        }
        let writers: Vec<_> = wallets
            .iter()
            .enumerate()
            .map(|(i, w)| {
                let to = wallets[(i + 1) % WRITERS].address();
                tokio::spawn(write_until_killed(url.clone(), w.clone(), to))
            })
            .collect();
        // Kill at a different moment each time: 30 to 400 ms into the load, so that
        // kills land in requests, in store commits and in block seals.
        rng = rng
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let after = 30 + (rng >> 33) % 370;
        tokio::time::sleep(Duration::from_millis(after)).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for w in writers {
            acked.extend(w.await.unwrap());
        }
    }
    assert!(
        acked.len() as u64 > KILL_POINTS * WRITERS as u64,
        "the writers kept the indexer busy: {} acknowledged",
        acked.len()
    );
    assert!(
        from_snapshot > KILL_POINTS / 2,
        "restarts started from a ledger snapshot only {from_snapshot} times of {KILL_POINTS}"
    );
    let out = Command::new(common::BIN)
        .args(["ledger", "verify", "--json", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(out.status.success(), "verify failed: {report}");
    assert_eq!(report["supply_conserved"], true);
    assert!(report["transactions"].as_u64().unwrap() >= acked.len() as u64);
    println!(
        "killed the indexer with SIGKILL at {KILL_POINTS} points under {WRITERS} writers in {:.1} s: \
         {} acknowledged transactions all present after each restart ({from_snapshot} restarts from a snapshot); \
         verify from genesis: {} blocks, {} transactions, supply conserved",
        began.elapsed().as_secs_f64(),
        acked.len(),
        report["blocks"],
        report["transactions"]
    );
}

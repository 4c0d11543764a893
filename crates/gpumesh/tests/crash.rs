//! The indexer killed with SIGKILL at many points while writers keep it busy, and started
//! again each time: the store opens, every transaction and every lease it acknowledged is
//! there, no lease id is given twice, and `gpumesh ledger verify` passes at the end (crash
//! safety). Writes are group-committed and the indexer seals a block every 50 ms with a
//! ledger snapshot in nearly every one, and keeps ended leases in memory for one second
//! only, so kills land in groups being written, in snapshots being written and in the
//! sweeps that move ended leases to the store's archive; restarts start from snapshots.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use gpumesh_client::{Client, ClientError};
use gpumesh_identity::Wallet;
use gpumesh_types::{
    Amount, B256, GeoPoint, GpuModel, GpuOffer, Heartbeat, JobRequest, LeaseId, Location,
    RegisterHost, RuntimeKind, TxKind,
};

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

/// Registers a host with one simulated GPU, staked, for the lease writer's jobs.
async fn host_ready(url: &str, host: &Wallet) {
    let client = Client::new(url, Some(host.clone()));
    client
        .register_host(&RegisterHost {
            name: "crash host".into(),
            location: Location {
                point: GeoPoint::new(50.0, 8.0).unwrap(),
                country: "DE".parse().unwrap(),
            },
            price_per_gpu_hour: Amount::from_tokens(1),
            gpus: vec![GpuOffer {
                model: GpuModel::H100,
                count: 1,
                vram_mib: None,
                simulated: true,
            }],
            runtime: RuntimeKind::Process,
            images: vec![],
            challenge_url: None,
        })
        .await
        .unwrap();
    let info = client.info().await.unwrap();
    let need = Amount(info.staking_coefficient.0 * GpuModel::H100.spec().k_factor as u128 / 100);
    while client.account(host.address()).await.unwrap().balance < need {
        client.faucet(Amount::from_tokens(100_000)).await.unwrap();
    }
    client
        .send_tx(TxKind::StakeMany {
            stakes: vec![(0, need)],
        })
        .await
        .unwrap();
}

/// Matches jobs on the host and cancels them, as fast as the indexer answers, until it
/// dies (keeping the host alive with heartbeats). Returns the leases it was given.
///
/// A kill can land after a match was committed and before its answer came back, or before
/// its cancel: that lease holds the only GPU for its whole minute. So each round first
/// cancels every lease of the buyer that has not ended, acknowledged or not.
async fn lease_until_killed(url: String, buyer: Wallet, host: Wallet) -> Vec<LeaseId> {
    let me = buyer.address();
    let buyer = Client::new(&url, Some(buyer));
    let host = Client::new(&url, Some(host));
    let mut given = Vec::new();
    if buyer.faucet(Amount::from_tokens(100)).await.is_err() {
        return given;
    }
    let Ok(mine) = buyer.leases_of_buyer(me).await else {
        return given;
    };
    for lease in mine.iter().filter(|l| !l.state.is_terminal()) {
        match buyer.cancel(lease.id).await {
            // Or it ended meanwhile (its match expired): the indexer said so.
            Ok(_) | Err(ClientError::Api { .. }) => {}
            Err(_) => return given,
        }
    }
    loop {
        if host.heartbeat(&Heartbeat::default()).await.is_err() {
            return given;
        }
        let job = JobRequest::new(
            GpuModel::H100,
            1,
            GeoPoint::new(50.0, 8.0).unwrap(),
            Amount::from_tokens(2),
            60_000,
            "example/model:1",
            vec![],
        );
        match buyer.submit_job(&job).await {
            Ok(lease) => given.push(lease.id),
            Err(e) if e.code() == Some(gpumesh_types::ErrorCode::NoMatch) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            Err(_) => return given,
        }
        if buyer.cancel(*given.last().unwrap()).await.is_err() {
            return given;
        }
    }
}

/// Asks the restarted indexer for every lease it gave: each is served (from memory or
/// from the archive) as the buyer's.
async fn check_leases_there(url: &str, given: &[LeaseId], buyer: &Wallet) {
    let client = Client::new(url, None);
    for &id in given {
        let lease = client
            .lease(id)
            .await
            .unwrap_or_else(|e| panic!("lease {id} is missing after a SIGKILL: {e}"));
        assert_eq!((lease.id, lease.buyer), (id, buyer.address()));
    }
}

/// The `gpumesh_leases` gauge of `state`: leases of that state in the indexer's memory.
async fn in_memory(url: &str, state: &str) -> u64 {
    let text = gpumesh_client::http()
        .get(format!("{url}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let prefix = format!("gpumesh_leases{{state=\"{state}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .and_then(|n| n.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no {prefix} in the scrape")) as u64
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
    let (buyer, host) = (
        Wallet::from_label("crash buyer"),
        Wallet::from_label("crash host"),
    );
    let mut acked: Vec<(u64, B256)> = Vec::new();
    let mut checked = 0;
    let mut leases: Vec<LeaseId> = Vec::new();
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
            "--retention",
            "1",
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
        check_leases_there(&url, &leases, &buyer).await;
        if point == 0 {
            host_ready(&url, &host).await;
        }
        if point == KILL_POINTS {
            // Past the retention every lease has left memory, and each is still served.
            let deadline = Instant::now() + Duration::from_secs(10);
            while in_memory(&url, "cancelled").await > 0 {
                assert!(Instant::now() < deadline, "ended leases stayed in memory");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            check_leases_there(&url, &leases, &buyer).await;
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
        let leasing = tokio::spawn(lease_until_killed(url.clone(), buyer.clone(), host.clone()));
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
        leases.extend(leasing.await.unwrap());
    }
    let distinct: std::collections::HashSet<_> = leases.iter().collect();
    assert_eq!(distinct.len(), leases.len(), "a lease id was given twice");
    // Its rounds are short (30 to 400 ms, shared with four transfer writers): a few
    // leases each.
    assert!(
        leases.len() as u64 >= KILL_POINTS / 2,
        "the lease writer kept the indexer busy: {} leases",
        leases.len()
    );
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
         {} acknowledged transactions and {} leases all present after each restart ({from_snapshot} restarts from a snapshot); \
         verify from genesis: {} blocks, {} transactions, supply conserved",
        began.elapsed().as_secs_f64(),
        acked.len(),
        leases.len(),
        report["blocks"],
        report["transactions"]
    );
}

//! The unsimulated proof path of a public network, end to end, on a machine without a
//! GPU: CPU reference devices (`gpumesh host --device cpu-reference`) under a genesis
//! that gives the `cpu-reference` model a reference proof rate measured here.
//!
//! - A real agent registers its real (unsimulated) device, three real checkers prove it
//!   by the one sizing rule, and a buyer's job runs on it in a container.
//! - A host whose device does half the rate its model claims (it claims twice its rate)
//!   misses its deadline twice and is rejected and slashed for underperformance, never as
//!   malicious.
//! - An agent killed while proving is down: not rejected, not slashed.
//!
//! Public networks run workloads only in containers, so this needs a container engine:
//! without one it prints why and passes, unless `GPUMESH_REQUIRE_CONTAINER_ENGINE=1`.

mod common;

use common::{Killed, key};

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gpumesh_client::Client;
use gpumesh_host::challenge::{CpuProver, Prover};
use gpumesh_host::discovery::{CpuReference, Devices, offers_from};
use gpumesh_host::runtime::container::ContainerRuntime;
use gpumesh_identity::Wallet;
use gpumesh_types::{
    Address, Amount, CheckingParams, ContainerState, ContainerView, GeoPoint, GpuModel, JobRequest,
    Location, ProofParams,
};
use tokio_util::sync::CancellationToken;

/// The reference rate this test's genesis gives `cpu-reference`: this machine's
/// whole-proof rate on one core at the size the preset's rule asks (the median of three
/// proofs), less a fifth for the load of the indexer, the checkers and the other agents
/// the test then runs on the same two cores (and, in CI, a fuzz build beside it). The
/// slow device is held to half of whatever rate this gives, so its verdict does not
/// depend on the load.
fn calibrate() -> u64 {
    let shape = CheckingParams::cpu_reference(Vec::new(), 1, "-")
        .sizing
        .proof;
    let median = |params: ProofParams| {
        let mut took: Vec<Duration> = (0..3)
            .map(|i| {
                let challenge = gpumesh_proof::Challenge {
                    seed: gpumesh_types::B256::repeat_byte(i),
                    params,
                };
                let began = Instant::now();
                gpumesh_proof::prove(&challenge).unwrap();
                began.elapsed()
            })
            .collect();
        took.sort();
        took[1]
    };
    let rate = |params: ProofParams, took: Duration| {
        (u128::from(params.macs()) * 1_000_000_000 / took.as_nanos().max(1)) as u64
    };
    let rough = ProofParams {
        rows: 2048,
        ..shape
    };
    let first = rate(rough, median(rough));
    let sized = CheckingParams::cpu_reference(Vec::new(), first, "-")
        .proof_for(GpuModel::CpuReference, false)
        .unwrap()
        .params;
    rate(sized, median(sized)) / 5 * 4
}

/// A device that does half the reference rate of the model it is registered as: each
/// proof is computed, then held until twice the time the reference rate needs (whatever
/// this machine's load, so the verdict never depends on it).
#[derive(Debug)]
struct HalfSpeed {
    reference_macs_per_s: u64,
}

impl Prover for HalfSpeed {
    fn prove(
        &self,
        index: u16,
        challenge: &gpumesh_proof::Challenge,
    ) -> Result<gpumesh_proof::Proved, String> {
        let began = Instant::now();
        let proved = CpuProver.prove(index, challenge)?;
        let at_half = Duration::from_millis(
            2 * gpumesh_proof::expected_ms(&challenge.params, self.reference_macs_per_s),
        );
        if let Some(rest) = at_half.checked_sub(began.elapsed()) {
            std::thread::sleep(rest);
        }
        Ok(proved)
    }

    fn describe(&self) -> String {
        "the CPU kernel at half speed".into()
    }
}

/// `gpumesh host --device cpu-reference` on containers, its log lines sent to `lines`.
fn host_process(
    url: &str,
    key: &str,
    name: &str,
    lines: std::sync::mpsc::Sender<String>,
) -> Killed {
    let mut child = common::host_command(
        url,
        key,
        name,
        &[
            "--price",
            "1",
            "--device",
            "cpu-reference",
            "--runtime",
            "container",
            "--container-network",
            "none",
            "--memory-per-gpu-mib",
            "256",
            "--cpus-per-gpu",
            "1",
        ],
    )
    .env("GPUMESH_LOG", "warn,gpumesh_host::challenge=info")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let name = name.to_string();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            eprintln!("{name}: {line}");
            let _ = lines.send(line);
        }
    });
    Killed(child)
}

async fn containers_of(client: &Client, host: Address) -> Vec<ContainerView> {
    client
        .containers()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|c| c.host == host)
        .collect()
}

async fn wait_for(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let began = Instant::now();
    while !done().await {
        assert!(began.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_network_proves_real_devices_by_the_rule_and_judges_failures_by_evidence() {
    let required = std::env::var("GPUMESH_REQUIRE_CONTAINER_ENGINE").is_ok_and(|v| v == "1");
    let engine = match ContainerRuntime::connect(None, "none").await {
        Ok(engine) => engine,
        Err(e) if required => panic!("GPUMESH_REQUIRE_CONTAINER_ENGINE=1 but {e:#}"),
        Err(e) => {
            eprintln!("skipping: no container engine ({e:#})");
            return;
        }
    };
    gpumesh_host::demo_image::ensure_demo_image(&engine)
        .await
        .expect("the demo image is there or is built");

    let rate = calibrate();
    eprintln!("cpu-reference rate on this machine: {rate} multiply-accumulates/s");
    let dir = tempfile::tempdir().unwrap();
    let (protocol, protocol_key) = key(dir.path(), "protocol");
    let checkers: Vec<(Wallet, String)> = (0..3)
        .map(|i| key(dir.path(), &format!("checker-{i}")))
        .collect();
    let (honest, honest_key) = key(dir.path(), "honest");
    let (slow, _) = key(dir.path(), "slow");
    let (killed, killed_key) = key(dir.path(), "killed");
    let buyer = Wallet::generate();
    let allocations = [&honest, &slow, &killed, &buyer]
        .iter()
        .enumerate()
        .map(|(i, w)| gpumesh_ledger::Allocation {
            address: w.address(),
            amount: Amount::from_tokens(1_000),
            label: format!("test {i}"),
        })
        .collect();
    let licences: Vec<Address> = checkers.iter().map(|(w, _)| w.address()).collect();
    let mut genesis = gpumesh_ledger::Genesis::network(
        4343,
        gpumesh_indexer::now_ms(),
        protocol.address(),
        allocations,
        licences.clone(),
    )
    .unwrap();
    genesis.checking = CheckingParams::cpu_reference(
        licences,
        rate,
        format!("calibrated by this test on its machine: {rate}"),
    );
    genesis.validate().unwrap();
    let params = gpumesh_registry::Params {
        heartbeat_interval_ms: 1_000,
        settle_interval_ms: 2_000,
        ..gpumesh_registry::Params::network()
    };
    let (_indexer, url) = common::start_network(dir.path(), genesis, params, &protocol_key);
    let _checkers: Vec<Killed> = checkers
        .iter()
        .map(|(_, key)| {
            Killed(
                Command::new(common::BIN)
                    .args(["checker", "--indexer", &url, "--key", key])
                    .env("GPUMESH_PASSWORD", common::PASSWORD)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    let client = Client::new(&url, Some(buyer.clone()));
    let info = client.info().await.unwrap();
    assert!(!info.local && info.private_endpoints);

    // The honest host and the one to be killed are the real command.
    let (honest_lines, _) = std::sync::mpsc::channel();
    let _honest = host_process(&url, &honest_key, "honest", honest_lines);
    let (killed_lines, proving) = std::sync::mpsc::channel();
    let mut killed_agent = Some(host_process(&url, &killed_key, "killed", killed_lines));
    // The slow host is the real agent with a device at half its model's rate.
    let found = CpuReference.discover().unwrap();
    let offered = offers_from(&found);
    assert!(!offered.offers[0].simulated);
    let stop_slow = CancellationToken::new();
    let slow_agent = tokio::spawn(gpumesh_host::run(
        gpumesh_host::HostConfig {
            indexer_url: url.clone(),
            indexer_ca: Vec::new(),
            wallet: slow.clone(),
            name: "slow".into(),
            location: Location {
                point: GeoPoint::new(50.11, 8.68).unwrap(),
                country: "DE".parse().unwrap(),
            },
            price_per_gpu_hour: Amount::from_tokens(1),
            gpus: offered.offers.clone(),
            gpu_uuids: Vec::new(),
            runtime: Arc::new(engine),
            memory_per_gpu: Some(256 * 1024 * 1024),
            nano_cpus_per_gpu: Some(1_000_000_000),
            auto_stake: true,
            public_address: "127.0.0.1".into(),
            publish_ip: std::net::IpAddr::from([127, 0, 0, 1]),
            claims: gpumesh_host::UsageClaims::Metered,
            image_user: false,
            challenge: Some(gpumesh_host::ChallengeConfig {
                listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                advertise: None,
                prover: Arc::new(HalfSpeed {
                    reference_macs_per_s: rate,
                }),
            }),
        },
        stop_slow.clone(),
    ));

    // The agent to be killed dies as soon as it starts its first proof.
    let killer = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(90);
        while Instant::now() < deadline {
            if let Ok(line) = proving.recv_timeout(Duration::from_millis(200))
                && line.contains("proving capacity")
            {
                drop(killed_agent.take());
                return true;
            }
        }
        false
    });

    // The honest device passes by the rule, and serves.
    wait_for(
        "the honest device proven and serving",
        Duration::from_secs(90),
        async || {
            containers_of(&client, honest.address())
                .await
                .first()
                .is_some_and(|c| c.state == ContainerState::Standby && !c.simulated)
        },
    )
    .await;
    let job = JobRequest::new(
        GpuModel::CpuReference,
        1,
        GeoPoint::new(52.0, 5.0).unwrap(),
        Amount::from_tokens(2),
        60_000,
        gpumesh_host::demo_image::DEMO_IMAGE,
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "echo ran on the reference device".into(),
        ],
    );
    let outcome = gpumesh_client::buyer::run_job(&client, &job, |_| {})
        .await
        .unwrap();
    let gpumesh_client::buyer::JobOutcome::Ended { lease, .. } = outcome else {
        panic!("the job was not matched: {outcome:?}");
    };
    assert_eq!(lease.host, honest.address());
    assert_eq!(
        lease.state,
        gpumesh_types::LeaseState::Completed,
        "{lease:?}"
    );

    // The slow device misses its deadline twice: rejected, slashed for underperformance.
    wait_for(
        "the slow device rejected",
        Duration::from_secs(90),
        async || {
            containers_of(&client, slow.address())
                .await
                .first()
                .is_some_and(|c| c.state == ContainerState::Rejected)
        },
    )
    .await;
    let rejected = containers_of(&client, slow.address()).await.remove(0);
    assert!(
        rejected.rejected.as_deref().unwrap().contains("deadline"),
        "{rejected:?}"
    );
    let history =
        serde_json::to_string(&client.history(slow.address(), 100).await.unwrap()).unwrap();
    assert!(history.contains("\"underperformance\""), "{history}");
    assert!(!history.contains("\"malicious\""), "{history}");
    let stake = client.account(slow.address()).await.unwrap().stakes;
    assert_eq!(
        stake[0].bonded,
        Amount(0),
        "the whole requirement was slashed"
    );

    // The killed agent is down, not rejected, not slashed.
    assert!(
        killer.await.unwrap(),
        "the killed agent never started a proof"
    );
    wait_for(
        "the killed agent's host found down",
        Duration::from_secs(60),
        async || {
            containers_of(&client, killed.address())
                .await
                .first()
                .is_some_and(|c| c.state == ContainerState::Offline)
        },
    )
    .await;
    let down = containers_of(&client, killed.address()).await.remove(0);
    assert_eq!(down.rejected, None, "{down:?}");
    let history =
        serde_json::to_string(&client.history(killed.address(), 100).await.unwrap()).unwrap();
    assert!(!history.contains("\"slash\""), "{history}");
    let stake = client.account(killed.address()).await.unwrap().stakes;
    assert!(stake[0].bonded > Amount(0), "{stake:?}");

    stop_slow.cancel();
    slow_agent.await.unwrap().unwrap();
}

//! A host agent that is killed outright and started again loses no work and leaves
//! nothing behind: the running workload is adopted (not restarted) and its lease
//! completes, billed exactly; containers an earlier run left for leases that are no longer
//! running here are removed; those of another host or network are left alone.
//!
//! Needs a container engine: without one it prints why and passes, unless
//! `GPUMESH_REQUIRE_CONTAINER_ENGINE=1`.

mod common;

use common::Killed;

use std::process::Stdio;
use std::time::{Duration, Instant};

use gpumesh_client::Client;
use gpumesh_client::buyer::JobOutcome;
use gpumesh_host::demo_image::DEMO_IMAGE;
use gpumesh_host::runtime::container::ContainerRuntime;
use gpumesh_host::runtime::{Runtime, WorkloadSpec};
use gpumesh_identity::Wallet;
use gpumesh_types::{Amount, GeoPoint, GpuModel, JobRequest, LeaseId, LeaseState, LeaseView};

const CHAIN: u64 = 4545;

fn agent(url: &str, key: &str) -> Killed {
    Killed(
        common::host_command(
            url,
            key,
            "restarts",
            &[
                "--price",
                "3.6",
                "--device",
                "cpu-reference",
                "--runtime",
                "container",
                "--container-network",
                "none",
                "--memory-per-gpu-mib",
                "128",
                "--cpus-per-gpu",
                "1",
            ],
        )
        .env("GPUMESH_LOG", "warn,gpumesh_host=info")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap(),
    )
}

fn job(script: &str) -> JobRequest {
    JobRequest::new(
        GpuModel::CpuReference,
        1,
        GeoPoint::new(52.0, 5.0).unwrap(),
        Amount::from_tokens(4),
        60_000,
        DEMO_IMAGE,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    )
}

async fn ended(client: &Client, job: JobRequest) -> LeaseView {
    let outcome = gpumesh_client::buyer::run_job(client, &job, |_| {})
        .await
        .unwrap();
    let JobOutcome::Ended { lease, .. } = outcome else {
        panic!("not matched: {outcome:?}");
    };
    *lease
}

/// A container labelled as this network's and `host`'s for `lease`, as an earlier run of
/// an agent would have left it.
async fn leftover(engine: &ContainerRuntime, network: u64, host: &str, lease: LeaseId) {
    let spec = WorkloadSpec {
        lease,
        image: DEMO_IMAGE.into(),
        command: vec!["sleep".into(), "300".into()],
        env: Vec::new(),
        gpu_uuids: Vec::new(),
        memory_bytes: Some(64 * 1024 * 1024),
        nano_cpus: None,
        ports: Vec::new(),
        publish_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        labels: vec![
            ("gpumesh.network".into(), network.to_string()),
            ("gpumesh.host".into(), host.into()),
        ],
        as_image_user: false,
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(8);
    // The handle is dropped; the container runs on, as a dead agent's would.
    engine.start(spec, tx).await.unwrap();
}

/// Containers labelled with `lease` (and `host`, when given: lease ids repeat across
/// networks and runs).
async fn containers_of(engine: &ContainerRuntime, host: Option<&str>, lease: LeaseId) -> usize {
    let lease = lease.to_string();
    let mut labels = vec![("gpumesh.lease", lease.as_str())];
    labels.extend(host.map(|h| ("gpumesh.host", h)));
    engine.labelled(&labels).await.unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_restarts_adopts_its_running_workload_and_removes_what_is_not_its_own() {
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
        .unwrap();

    // A network without checkers whose hosts may be on loopback and whose heartbeat
    // timer waits 15 s, longer than the restart takes.
    let dir = tempfile::tempdir().unwrap();
    let (protocol, protocol_key) = common::key(dir.path(), "protocol");
    let (host, host_key) = common::key(dir.path(), "host");
    let buyer = Wallet::generate();
    let allocations = [&host, &buyer]
        .iter()
        .map(|w| gpumesh_ledger::Allocation {
            address: w.address(),
            amount: Amount::from_tokens(1_000),
            label: "test".into(),
        })
        .collect();
    let mut genesis = gpumesh_ledger::Genesis::network(
        CHAIN,
        gpumesh_indexer::now_ms(),
        protocol.address(),
        allocations,
        Vec::new(),
    )
    .unwrap();
    genesis.checking.private_endpoints = true;
    let params = gpumesh_registry::Params {
        heartbeat_interval_ms: 1_000,
        missed_heartbeats: 15,
        settle_interval_ms: 2_000,
        ..gpumesh_registry::Params::network()
    };
    let (_indexer, url) = common::start_network(dir.path(), genesis, params, &protocol_key);
    let client = Client::new(&url, Some(buyer.clone()));
    let me = host.address().to_string();
    let mut running_agent = Some(agent(&url, &host_key));

    // A first lease runs to its end: its container goes with it.
    let began = Instant::now();
    let first = loop {
        match gpumesh_client::buyer::run_job(&client, &job("echo first"), |_| {}).await {
            Ok(JobOutcome::Ended { lease, .. }) => break *lease,
            // The host is still registering and staking.
            _ if began.elapsed() < Duration::from_secs(60) => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => panic!("the first job never ran: {other:?}"),
        }
    };
    assert_eq!(first.state, LeaseState::Completed, "{first:?}");
    assert_eq!(containers_of(&engine, Some(&me), first.id).await, 0);

    // A second runs for 12 s; its agent is SIGKILLed 3 s in.
    let second = tokio::spawn({
        let client = Client::new(&url, Some(buyer.clone()));
        async move { ended(&client, job("echo begin; sleep 12; echo end")).await }
    });
    let lease = loop {
        let leases = client.leases_of_buyer(buyer.address()).await.unwrap();
        if let Some(l) = leases
            .into_iter()
            .find(|l| l.id != first.id && l.state == LeaseState::Running)
        {
            break l;
        }
        assert!(began.elapsed() < Duration::from_secs(120), "never running");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(running_agent.take());
    let ids_of = |lease: LeaseId| {
        let (engine, me) = (&engine, &me);
        async move {
            engine
                .labelled(&[
                    ("gpumesh.lease", lease.to_string().as_str()),
                    ("gpumesh.host", me.as_str()),
                ])
                .await
                .unwrap()
        }
    };
    let before = ids_of(lease.id).await;
    assert_eq!(before.len(), 1, "the workload outlives its agent");

    // What a dead agent of this host left for an ended lease is removed at the restart;
    // another host's and another network's are not touched.
    let other_host = Wallet::generate().address().to_string();
    // Lease ids of their own, so that no other run's containers are counted.
    let strangers = [
        LeaseId(u64::from(rand::random::<u32>()) + 1_000_000),
        LeaseId(u64::from(rand::random::<u32>()) + 1_000_000),
    ];
    leftover(&engine, CHAIN, &me, first.id).await;
    leftover(&engine, CHAIN, &other_host, strangers[0]).await;
    leftover(&engine, CHAIN + 1, &me, strangers[1]).await;
    assert_eq!(containers_of(&engine, Some(&me), first.id).await, 1);

    let _restarted = agent(&url, &host_key);
    // Still the same container a few seconds on: adopted, not started again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ids_of(lease.id).await, before, "adopted, not restarted");
    let view = second.await.unwrap();
    assert_eq!(view.id, lease.id);
    assert_eq!(view.state, LeaseState::Completed, "{view:?}");
    assert_eq!(view.exit_code, Some(0), "the workload was not restarted");
    // Billed exactly for the metered time: the ledger's cost of what was settled, split
    // to the base unit, within what it observed.
    let s = view.settlement.as_ref().unwrap();
    assert!(s.closed);
    assert_eq!(
        s.charged,
        gpumesh_ledger::usage_cost(view.price_per_gpu_hour, s.gpu_ms).unwrap()
    );
    assert_eq!(
        s.host_share.0 + s.treasury_share.0 + s.refund.0,
        s.escrow.0,
        "{s:?}"
    );
    assert!(s.gpu_ms >= 12_000, "the 12 s of the workload: {s:?}");
    let observed = view.ended_ms.unwrap() - s.started_ms.unwrap();
    assert!(
        s.gpu_ms <= observed + 2_000,
        "{} GPU-ms billed for {observed} ms observed",
        s.gpu_ms
    );

    // Nothing of the lease is left; the ended lease's leftover went, the others stay.
    assert_eq!(containers_of(&engine, Some(&me), lease.id).await, 0);
    assert_eq!(containers_of(&engine, Some(&me), first.id).await, 0);
    for lease in strangers {
        assert_eq!(
            containers_of(&engine, None, lease).await,
            1,
            "{lease} left alone"
        );
        for id in engine
            .labelled(&[("gpumesh.lease", &lease.to_string())])
            .await
            .unwrap()
        {
            engine
                .remove(&gpumesh_host::runtime::Found {
                    id,
                    lease,
                    running: true,
                    ports: Vec::new(),
                })
                .await
                .unwrap();
        }
    }
}

/// The process runtime (local networks) cannot take over a process whose output went to
/// a dead agent, so a restarted agent ends it: the process group it recorded is killed,
/// and the lease ends, billed what was settled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_agent_ends_the_processes_a_killed_one_left() {
    let dir = tempfile::tempdir().unwrap();
    let (indexer, url) = common::start(&dir.path().join("data"));
    let _indexer = Killed(indexer);
    let (host, host_key) = common::key(dir.path(), "host");
    let buyer = Wallet::generate();
    for wallet in [&host, &buyer] {
        Client::new(&url, Some(wallet.clone()))
            .faucet(Amount::from_tokens(1_000))
            .await
            .unwrap();
    }
    let state = dir.path().join("state");
    let state_dir = state.to_str().unwrap();
    let start_agent = || {
        Killed(
            common::host_command(
                &url,
                &host_key,
                "processes",
                &[
                    "--price",
                    "3.6",
                    "--simulate-gpu",
                    "H100:1",
                    "--runtime",
                    "process",
                    "--dev",
                    "--state-dir",
                    state_dir,
                ],
            )
            .env("GPUMESH_LOG", "warn,gpumesh_host=info")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
        )
    };
    let mut first_agent = Some(start_agent());
    let client = Client::new(&url, Some(buyer.clone()));
    let mut job = job("echo begin; exec sleep 60");
    job.gpu = GpuModel::H100.into();
    let lease = loop {
        match client.submit_job(&job).await {
            Ok(lease) => break lease,
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    client.fund(&lease).await.unwrap();
    let began = Instant::now();
    while client.lease(lease.id).await.unwrap().state != LeaseState::Running {
        assert!(began.elapsed() < Duration::from_secs(30), "never running");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let recorded: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("process-workloads.json")).unwrap())
            .unwrap();
    let group = recorded[0]["group"].as_i64().unwrap();
    assert_eq!(recorded[0]["lease"], lease.id.0);
    drop(first_agent.take());
    let proc_dir = std::path::PathBuf::from(format!("/proc/{group}"));
    assert!(proc_dir.exists(), "the workload outlives its agent");

    let _second = start_agent();
    let began = Instant::now();
    let view = loop {
        let view = client.lease(lease.id).await.unwrap();
        if view.state.is_terminal() {
            break view;
        }
        assert!(
            began.elapsed() < Duration::from_secs(30),
            "never ended: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(view.state, LeaseState::Failed, "{view:?}");
    assert!(
        view.failure.as_deref().unwrap().contains("restarted"),
        "{view:?}"
    );
    // Killed (a zombie until its parent, gone, is reaped: not running).
    let stat = std::fs::read_to_string(proc_dir.join("stat")).unwrap_or_default();
    assert!(stat.is_empty() || stat.contains(") Z"), "{stat}");
    let s = view.settlement.unwrap();
    assert!(s.closed);
    assert_eq!(s.host_share.0 + s.treasury_share.0 + s.refund.0, s.escrow.0);
    let left: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("process-workloads.json")).unwrap())
            .unwrap();
    assert_eq!(left, serde_json::json!([]));
}

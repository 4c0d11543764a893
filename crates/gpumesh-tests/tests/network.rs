//! Whole networks in one process: jobs from request to receipt, an indexer restart in the
//! middle of a job, a host lost in the middle of a job, and real containers.

use std::time::Duration;

use gpumesh_client::buyer::{JobEvent, JobOutcome, run_job};
use gpumesh_devnet::RuntimeChoice;
use gpumesh_tests::{container_devnet, devnet, job};
use gpumesh_types::{GpuModel, LeaseState, LeaseView, LogStream};
use tokio::sync::mpsc;

/// Runs a job in the background, reporting its lease and its output lines as they come.
fn spawn_job(
    client: gpumesh_client::Client,
    request: gpumesh_types::JobRequest,
) -> (
    mpsc::UnboundedReceiver<String>,
    tokio::task::JoinHandle<JobOutcome>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(async move {
        run_job(&client, &request, |event| match event {
            JobEvent::Matched(lease) => drop(tx.send(format!("matched {}", lease.id))),
            JobEvent::Output(entry) if entry.stream == LogStream::Stdout => {
                for line in entry.data.lines() {
                    let _ = tx.send(line.to_string());
                }
            }
            _ => {}
        })
        .await
        .expect("the job runs to an end")
    });
    (rx, task)
}

fn ended(outcome: JobOutcome) -> Box<LeaseView> {
    match outcome {
        JobOutcome::Ended { lease, .. } => lease,
        JobOutcome::Unmatched { reason } => panic!("unmatched: {reason}"),
    }
}

fn assert_balanced(lease: &LeaseView) {
    let s = lease.settlement.as_ref().expect("an escrow was opened");
    assert!(s.closed, "the escrow is closed");
    assert_eq!(
        s.host_share.0 + s.treasury_share.0 + s.refund.0,
        s.escrow.0,
        "receipt balances to the base unit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_survives_an_indexer_restart() {
    let mut net = devnet(3, RuntimeChoice::Process).await;
    let buyer = net.buyer_client();
    let script = "for i in 1 2 3 4 5 6 7 8; do echo tick $i; sleep 0.5; done";
    let (mut lines, task) = spawn_job(
        net.buyer_client(),
        job(GpuModel::H100, 2, script, Duration::from_secs(60)),
    );
    let matched = lines.recv().await.expect("matched");
    let id = gpumesh_types::LeaseId(matched.trim_start_matches("matched ").parse().unwrap());
    assert_eq!(lines.recv().await.as_deref(), Some("tick 1"));

    let before = buyer.lease(id).await.unwrap();
    assert_eq!(before.state, LeaseState::Running);
    let host_before = buyer.account(before.host).await.unwrap().balance;
    let buyer_balance = buyer.account(net.buyer.address()).await.unwrap().balance;
    net.restart_indexer().await.expect("the indexer restarts");

    let after = buyer.lease(id).await.expect("the lease is still there");
    assert_eq!(
        (after.id, after.host, after.escrow, after.state),
        (before.id, before.host, before.escrow, LeaseState::Running)
    );
    assert_eq!(
        after.settlement.as_ref().map(|s| s.escrow),
        Some(before.escrow)
    );
    assert_eq!(
        buyer.account(net.buyer.address()).await.unwrap().balance,
        buyer_balance,
        "balances survive the restart"
    );

    let lease = ended(task.await.unwrap());
    let mut seen = Vec::new();
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    assert_eq!(
        seen.last().map(String::as_str),
        Some("tick 8"),
        "output after the restart arrives: {seen:?}"
    );
    assert_eq!(
        (lease.state, lease.exit_code),
        (LeaseState::Completed, Some(0))
    );
    assert_balanced(&lease);
    let s = lease.settlement.clone().unwrap();
    assert!(
        s.gpu_ms >= 2 * 3_500,
        "metered {} GPU-ms for about 4 s on 2 GPUs",
        s.gpu_ms
    );
    let host_balance = buyer.account(lease.host).await.unwrap().balance;
    assert_eq!(
        host_balance.0 - host_before.0,
        s.host_share.0,
        "the host was paid its share exactly"
    );
    let final_balance = buyer.account(net.buyer.address()).await.unwrap().balance;
    assert_eq!(
        final_balance.0,
        buyer_balance.0 + s.refund.0,
        "the buyer got the unused escrow back"
    );

    let data_dir = net.data_dir.clone();
    let _temp = net.stop().await.unwrap();
    let report = gpumesh_store::Store::open_existing(&data_dir)
        .unwrap()
        .verify()
        .expect("the chain verifies");
    assert!(report.supply_conserved);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_host_fails_its_lease_and_refunds_the_rest() {
    let mut net = devnet(3, RuntimeChoice::Process).await;
    let (mut lines, task) = spawn_job(
        net.buyer_client(),
        job(
            GpuModel::H100,
            1,
            "echo up; sleep 30",
            Duration::from_secs(120),
        ),
    );
    lines.recv().await.expect("matched");
    assert_eq!(lines.recv().await.as_deref(), Some("up"));
    // Frankfurt is the H100 host nearest to Paris.
    net.kill_host("frankfurt").unwrap();
    let lease = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("noticed within 20 s")
        .unwrap();
    let lease = ended(lease);
    assert_eq!(lease.state, LeaseState::Failed);
    assert!(
        lease
            .failure
            .as_deref()
            .unwrap_or_default()
            .contains("host lost"),
        "{:?}",
        lease.failure
    );
    assert_balanced(&lease);
    let s = lease.settlement.unwrap();
    assert!(
        s.refund.0 > s.escrow.0 / 2,
        "most of the escrow comes back: {s:?}"
    );
    // The lost host's GPUs are out of the market: the next H100 job goes to Ashburn.
    let next = net
        .buyer_client()
        .submit_job(&job(GpuModel::H100, 1, "true", Duration::from_secs(10)))
        .await
        .unwrap();
    assert_eq!(next.host_name, "ashburn");
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn containers_run_the_buyers_workload() {
    let Some(net) = container_devnet(1).await else {
        return;
    };
    assert_eq!(net.runtime_kind(), gpumesh_types::RuntimeKind::Container);
    let script = "echo \"in a container: $(cat /proc/1/cgroup | head -c 0)lease $GPUMESH_LEASE_ID on $GPUMESH_GPU_MODEL\"; hostname >/dev/null; ls /sys/class/net";
    let (mut lines, task) = spawn_job(
        net.buyer_client(),
        job(GpuModel::H100, 1, script, Duration::from_secs(30)),
    );
    let lease = ended(task.await.unwrap());
    let mut seen = Vec::new();
    while let Ok(line) = lines.try_recv() {
        seen.push(line);
    }
    assert_eq!(lease.runtime, gpumesh_types::RuntimeKind::Container);
    assert_eq!(
        (lease.state, lease.exit_code),
        (LeaseState::Completed, Some(0)),
        "{seen:?}"
    );
    assert!(
        seen.contains(&format!("in a container: lease {} on H100", lease.id)),
        "{seen:?}"
    );
    assert_eq!(
        seen.last().map(String::as_str),
        Some("lo"),
        "only loopback inside: {seen:?}"
    );
    assert_balanced(&lease);
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agents_container_is_labelled_and_removed_when_the_devnet_stops() {
    let Some(mut net) = container_devnet(1).await else {
        return;
    };
    let (mut lines, _task) = spawn_job(
        net.buyer_client(),
        job(
            GpuModel::H100,
            1,
            "echo up; sleep 300",
            Duration::from_secs(600),
        ),
    );
    lines.recv().await.expect("matched");
    assert_eq!(lines.recv().await.as_deref(), Some("up"));
    // Its output can arrive before the indexer has taken its start.
    let began = std::time::Instant::now();
    let lease = loop {
        let running = net
            .buyer_client()
            .leases_of_buyer(net.buyer.address())
            .await
            .unwrap()
            .into_iter()
            .find(|l| l.state == LeaseState::Running);
        if let Some(lease) = running {
            break lease;
        }
        assert!(
            began.elapsed() < Duration::from_secs(20),
            "the lease never ran"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let engine = gpumesh_host::runtime::container::ContainerRuntime::connect(None, "none")
        .await
        .unwrap();
    let (host, id) = (lease.host.to_string(), lease.id.to_string());
    let chain = net
        .buyer_client()
        .info()
        .await
        .unwrap()
        .chain_id
        .to_string();
    let whose = [
        ("gpumesh.network", chain.as_str()),
        ("gpumesh.host", host.as_str()),
        ("gpumesh.lease", id.as_str()),
        ("gpumesh.gpus", "0"),
    ];
    assert_eq!(engine.labelled(&whose).await.unwrap().len(), 1);
    // The agent dies with its workload running: the container outlives it...
    net.kill_host("frankfurt").unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(engine.labelled(&whose).await.unwrap().len(), 1);
    // ...until the local network exits, which leaves nothing of its own running.
    let _ = net.stop().await;
    assert!(engine.labelled(&whose).await.unwrap().is_empty());
}

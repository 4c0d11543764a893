//! Proof of Delivery a host cannot fake: a host driven by its own signed requests (no
//! agent) cannot bill a buyer for time the indexer did not observe, on any route; a
//! service whose endpoint stops answering while its workload runs on is ended by the
//! checkers' quorum with the undelivered time refunded; and no free action holds GPUs or
//! allowances that nobody can pay for.

use std::time::{Duration, Instant};

use gpumesh_client::{Client, ClientError};
use gpumesh_devnet::{Devnet, DevnetConfig, RuntimeChoice};
use gpumesh_identity::Wallet;
use gpumesh_tests::{devnet, job, small_world};
use gpumesh_types::{
    Amount, ErrorCode, GpuModel, GpuOffer, HealthCheck, Heartbeat, LeaseFinish, LeaseState,
    LeaseView, Location, PortSpec, Probe, Protocol, RegisterHost, RuntimeKind, TxKind, UsageRecord,
};

/// A host with one simulated T4 in Sydney that sends only what the test says, and a
/// heartbeat every half second so it stays online.
struct HandHost {
    client: Client,
    heartbeats: tokio::task::JoinHandle<()>,
}

impl HandHost {
    async fn register(net: &Devnet) -> HandHost {
        let wallet = Wallet::from_label("a host driven by hand");
        let client = Client::new(&net.api_url, Some(wallet.clone()));
        client.faucet(Amount::from_tokens(1_000)).await.unwrap();
        client
            .register_host(&RegisterHost {
                name: "by-hand".into(),
                location: Location {
                    point: gpumesh_types::GeoPoint {
                        lat: -33.87,
                        lon: 151.21,
                    },
                    country: "AU".parse().unwrap(),
                },
                price_per_gpu_hour: Amount::from_tokens(1),
                gpus: vec![GpuOffer {
                    model: GpuModel::T4,
                    count: 1,
                    vram_mib: None,
                    simulated: true,
                }],
                runtime: RuntimeKind::Process,
                images: Vec::new(),
                challenge_url: None,
            })
            .await
            .unwrap();
        client
            .send_tx(TxKind::Stake {
                index: 0,
                amount: Amount::from_tokens(500),
            })
            .await
            .unwrap();
        let beats = Client::new(&net.api_url, Some(wallet));
        let heartbeats = tokio::spawn(async move {
            loop {
                let _ = beats.heartbeat(&Heartbeat::default()).await;
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        HandHost { client, heartbeats }
    }

    /// The host's final record for `lease`, sent with the lease's finish.
    async fn finish(&self, lease: &LeaseView, gpu_ms: u64) -> Result<LeaseView, ClientError> {
        let record = UsageRecord {
            lease: lease.id,
            gpu_ms,
            is_final: true,
        };
        self.client
            .sign_next_tx(
                TxKind::SettleUsage {
                    records: vec![record],
                },
                async |usage| {
                    self.client
                        .finish(
                            lease.id,
                            &LeaseFinish {
                                exit_code: Some(0),
                                error: None,
                                usage,
                            },
                        )
                        .await
                },
            )
            .await
    }
}

impl Drop for HandHost {
    fn drop(&mut self) {
        self.heartbeats.abort();
    }
}

/// A funded lease on the hand host: one T4 for ten minutes at 1 token per GPU-hour.
async fn funded_lease(buyer: &Client) -> LeaseView {
    let mut request = job(GpuModel::T4, 1, "sleep 600", Duration::from_secs(600));
    request.near = gpumesh_types::GeoPoint {
        lat: -33.87,
        lon: 151.21,
    };
    let lease = buyer.submit_job(&request).await.unwrap();
    buyer.fund(&lease).await.unwrap();
    buyer.lease(lease.id).await.unwrap()
}

fn refused_with(result: Result<impl std::fmt::Debug, ClientError>, code: ErrorCode) {
    match result {
        Err(e) => assert_eq!(e.code(), Some(code), "{e}"),
        Ok(v) => panic!("accepted, but {code:?} was expected: {v:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_bill_time_the_indexer_did_not_observe() {
    let net = Devnet::start(DevnetConfig {
        hosts: small_world(1),
        runtime: RuntimeChoice::Process,
        checkers: 0,
        ..DevnetConfig::default()
    })
    .await
    .unwrap();
    let buyer = net.buyer_client();
    let host = HandHost::register(&net).await;

    // A finish before any start, claiming the whole ten minutes: refused, and nothing
    // changes; the honest end of a workload that never ran refunds the buyer in full.
    let lease = funded_lease(&buyer).await;
    assert_eq!(lease.state, LeaseState::Starting);
    let before = buyer.lease(lease.id).await.unwrap();
    refused_with(
        host.finish(&lease, 600_000).await,
        ErrorCode::UsageExceedsElapsed,
    );
    assert_eq!(buyer.lease(lease.id).await.unwrap(), before);
    let ended = host.finish(&lease, 0).await.unwrap();
    let s = ended.settlement.clone().unwrap();
    assert!(s.closed);
    assert_eq!(s.charged, Amount::ZERO);
    assert_eq!(s.refund, s.escrow);
    assert_eq!(s.started_ms, None);
    assert_eq!(s.bound_gpu_ms, Some(0));

    // A start, then five minutes claimed one second later through the ledger route,
    // and ten through the finish: both refused, nothing changes.
    let lease = funded_lease(&buyer).await;
    let running = host.client.started(lease.id, &[], false).await.unwrap();
    assert_eq!(running.state, LeaseState::Running);
    let started = running.settlement.as_ref().unwrap().started_ms;
    assert_eq!(started, running.started_ms, "the ledger records the start");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = buyer.lease(lease.id).await.unwrap();
    refused_with(
        host.client
            .send_tx(TxKind::SettleUsage {
                records: vec![UsageRecord {
                    lease: lease.id,
                    gpu_ms: 300_000,
                    is_final: false,
                }],
            })
            .await,
        ErrorCode::UsageExceedsElapsed,
    );
    refused_with(
        host.finish(&lease, 600_000).await,
        ErrorCode::UsageExceedsElapsed,
    );
    assert_eq!(buyer.lease(lease.id).await.unwrap(), before);
    // What it did run settles, and the receipt shows the bound it was held to.
    let ended = host.finish(&lease, 1_000).await.unwrap();
    assert_eq!(ended.state, LeaseState::Completed);
    let s = ended.settlement.unwrap();
    assert_eq!(s.gpu_ms, 1_000);
    let bound = s.bound_gpu_ms.unwrap();
    let observed = ended.ended_ms.unwrap() - s.started_ms.unwrap();
    assert!(bound >= 1_000 && bound <= observed + 2_000, "{bound}");
    assert_eq!(s.host_share.0 + s.treasury_share.0 + s.refund.0, s.escrow.0);
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_without_funds_hold_no_gpus_and_allow_nothing() {
    let net = devnet(1, RuntimeChoice::Process).await;
    // Fresh keys cost nothing: without a balance that covers the escrow, none is matched,
    // however many there are.
    for i in 0..4 {
        let broke = Client::new(
            &net.api_url,
            Some(Wallet::from_label(&format!("a key with no money {i}"))),
        );
        refused_with(
            broke
                .submit_job(&job(GpuModel::H100, 1, "true", Duration::from_secs(60)))
                .await,
            ErrorCode::InsufficientFunds,
        );
        refused_with(
            broke
                .send_tx(TxKind::Allow {
                    deployment: 1,
                    amount: Amount::from_tokens(1),
                })
                .await,
            ErrorCode::UnknownAccount,
        );
    }
    // A funded buyer's matches may not hold more than its balance covers.
    let buyer = net.buyer_client();
    let balance = buyer.account(net.buyer.address()).await.unwrap().balance;
    refused_with(
        buyer
            .send_tx(TxKind::Allow {
                deployment: 1,
                amount: Amount(balance.0 + 1),
            })
            .await,
        ErrorCode::InsufficientFunds,
    );
    let lease = buyer
        .submit_job(&job(GpuModel::H100, 1, "true", Duration::from_secs(60)))
        .await
        .unwrap();
    assert_eq!(lease.state, LeaseState::Matched);
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn checkers_end_a_service_that_stops_answering_and_the_buyer_is_refunded() {
    let net = devnet(1, RuntimeChoice::Process).await;
    let busybox = match gpumesh_host::demo_image::find_static_busybox() {
        Ok(path) => path,
        // CI installs busybox-static with the container engine, and requires this test.
        Err(e) if gpumesh_tests::container_engine_required() => {
            panic!("GPUMESH_REQUIRE_CONTAINER_ENGINE=1 but no static busybox: {e:#}")
        }
        Err(e) => {
            eprintln!("skipping: no static busybox to serve HTTP with ({e:#})");
            return;
        }
    };
    let client = net.buyer_client();
    // Serves for a few seconds, then its server stops while the workload runs on: a
    // host that kept billing would be paid for a service nobody can reach.
    let bb = busybox.display().to_string();
    let mut service = job(GpuModel::H100, 1, "", Duration::from_secs(300));
    service.command = vec![
        bb.clone(),
        "sh".into(),
        "-c".into(),
        format!(
            "d=$TMPDIR/www-$GPUMESH_LEASE_ID; mkdir -p $d && echo up > $d/index.html && \
             ({bb} httpd -f -p 127.0.0.1:$PORT -h $d & pid=$!; sleep 8; kill $pid); exec {bb} sleep 300"
        ),
    ];
    service.env = vec![gpumesh_types::EnvVar {
        name: "TMPDIR".into(),
        value: std::env::temp_dir().display().to_string(),
    }];
    service.ports = vec![PortSpec {
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    service.health = Some(HealthCheck {
        interval_ms: 300,
        grace_ms: 5_000,
        failures: 100,
        ..HealthCheck::new(Probe::Http("/index.html".into()))
    });
    let lease = client.submit_job(&service).await.unwrap();
    let stakes_before = client.account(lease.host).await.unwrap().stakes;
    client.fund(&lease).await.unwrap();
    let began = Instant::now();
    let (passed, ended) = loop {
        let view = client.lease(lease.id).await.unwrap();
        if view.state.is_terminal() {
            break (view.delivered_ms, view);
        }
        assert!(
            began.elapsed() < Duration::from_secs(60),
            "the checkers did not end the lease: {view:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!(
        "ended {} ms after funding: {:?}",
        began.elapsed().as_millis(),
        ended.failure
    );
    assert_eq!(ended.state, LeaseState::Failed);
    assert!(
        ended
            .failure
            .as_deref()
            .unwrap_or("")
            .contains("not delivered"),
        "{:?}",
        ended.failure
    );
    let s = ended.settlement.clone().unwrap();
    assert!(s.closed);
    // Billed at most to the last passed check plus the delivery window (two local
    // periods of 2 s with their 1 s graces) and the slack; the rest refunded.
    let started = ended.started_ms.unwrap();
    let passed = passed.unwrap();
    assert!(passed > started, "a delivery check passed while it served");
    let window = 2 * (2_000 + 1_000);
    assert!(
        s.gpu_ms <= passed + window + 2_000 - started,
        "billed {} GPU-ms; last passed check {} ms after the start",
        s.gpu_ms,
        passed - started
    );
    assert!(s.refund.0 > 0);
    assert_eq!(s.host_share.0 + s.treasury_share.0 + s.refund.0, s.escrow.0);
    // The agent answered all along: a buyer's service that went quiet is refunded, and
    // its host is not slashed for it.
    assert_eq!(
        client.account(ended.host).await.unwrap().stakes,
        stakes_before
    );
    let _ = net.stop().await;
}

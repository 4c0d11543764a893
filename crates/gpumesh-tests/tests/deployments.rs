//! Deployments: replicas kept at their size and re-placed when their host is lost (the
//! lost replica refunded to the base unit), escrows topped up period by period, sessions
//! placed within a round-trip bound, the autoscaler following them, and bad input.

use std::time::{Duration, Instant};

use gpumesh_client::{Client, ClientError};
use gpumesh_devnet::RuntimeChoice;
use gpumesh_host::demo_image::DEMO_IMAGE;
use gpumesh_tests::{container_devnet, devnet};
use gpumesh_types::{
    Amount, DeploymentRequest, DeploymentView, ErrorCode, GeoPoint, GpuModel, GpuSelector,
    HealthCheck, LeaseState, PortSpec, Probe, Protocol, RegionSpec, RejectReason, ScaleRequest,
    ServiceHealth, SessionRequest, SessionState,
};

const PARIS: GeoPoint = GeoPoint {
    lat: 48.8566,
    lon: 2.3522,
};

fn region(name: &str, near: GeoPoint, min: u16, max: u16) -> RegionSpec {
    RegionSpec {
        name: name.into(),
        near,
        country: None,
        min,
        max,
        max_rtt_ms: None,
    }
}

fn deployment(command: &str, regions: Vec<RegionSpec>, sessions: u16) -> DeploymentRequest {
    DeploymentRequest {
        gpu: GpuSelector::Model(GpuModel::H100),
        gpu_count: 1,
        image: DEMO_IMAGE.into(),
        command: vec!["/bin/sh".into(), "-c".into(), command.into()],
        ports: Vec::new(),
        env: Vec::new(),
        health: None,
        regions,
        max_price_per_gpu_hour: Amount::from_tokens(5),
        period_ms: 20_000,
        sessions_per_replica: sessions,
    }
}

/// Waits until the deployment satisfies `done`, for at most `within`.
async fn until(
    client: &Client,
    id: gpumesh_types::DeploymentId,
    within: Duration,
    what: &str,
    done: impl Fn(&DeploymentView) -> bool,
) -> DeploymentView {
    let began = Instant::now();
    loop {
        let view = client.deployment(id).await.unwrap();
        if done(&view) {
            return view;
        }
        assert!(
            began.elapsed() < within,
            "{what}: not within {within:?}: {view:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A deployment taking two sessions per replica, allowed `tokens`, once its first replica
/// runs.
async fn one_replica_running(client: &Client, region: RegionSpec, tokens: u64) -> DeploymentView {
    let created = client
        .create_deployment(&deployment("sleep 600", vec![region], 2))
        .await
        .unwrap();
    client
        .allow(created.id, Amount::from_tokens(tokens))
        .await
        .unwrap();
    until(
        client,
        created.id,
        Duration::from_secs(30),
        "one replica",
        |v| running(v).len() == 1,
    )
    .await
}

fn running(view: &DeploymentView) -> Vec<gpumesh_types::LeaseId> {
    view.replicas
        .iter()
        .filter(|r| r.state == LeaseState::Running)
        .map(|r| r.lease)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_on_a_lost_host_is_replaced_and_refunded_and_escrows_are_topped_up() {
    let mut net = devnet(3, RuntimeChoice::Process).await;
    let client = net.buyer_client();
    let owner = net.buyer.address();
    let before = client.account(owner).await.unwrap().balance;
    let created = client
        .create_deployment(&deployment("sleep 600", vec![region("eu", PARIS, 1, 1)], 0))
        .await
        .unwrap();
    // Nothing runs before the owner allows the protocol to pay.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        client
            .deployment(created.id)
            .await
            .unwrap()
            .replicas
            .is_empty()
    );
    client
        .allow(created.id, Amount::from_tokens(50))
        .await
        .unwrap();
    let view = until(
        &client,
        created.id,
        Duration::from_secs(30),
        "a replica runs",
        |v| running(v).len() == 1,
    )
    .await;
    let first = view.replicas[0].clone();
    let first_host = net
        .host_names()
        .into_iter()
        .find(|n| n == "frankfurt")
        .unwrap();
    assert_eq!(
        client.lease(first.lease).await.unwrap().host_name,
        first_host
    );

    // The host goes away: the replica is re-placed elsewhere within a bound.
    let lost_at = Instant::now();
    net.kill_host("frankfurt").unwrap();
    const BOUND: Duration = Duration::from_secs(30);
    let view = until(&client, created.id, BOUND, "re-placed", |v| {
        v.replacements >= 1 && running(v).len() == 1 && running(v)[0] != first.lease
    })
    .await;
    eprintln!(
        "re-placed {} ms after the host was killed",
        lost_at.elapsed().as_millis()
    );
    let replacement = client.lease(running(&view)[0]).await.unwrap();
    assert_eq!(replacement.host_name, "ashburn");
    assert_eq!(replacement.deployment, Some(created.id));

    // The lost replica's escrow closed, refunding exactly what was not settled.
    let lost = client.lease(first.lease).await.unwrap();
    assert_eq!(lost.state, LeaseState::Failed);
    let lost_settlement = lost.settlement.clone().unwrap();
    let s = &lost_settlement;
    assert!(s.closed);
    assert_eq!(s.charged.0 + s.refund.0, s.escrow.0, "{s:?}");
    assert_eq!(s.host_share.0 + s.treasury_share.0, s.charged.0, "{s:?}");
    assert!(s.refund.0 > 0, "{s:?}");

    // Period by period: the running replica's escrow is topped up before it runs out.
    let topped = tokio::time::timeout(Duration::from_secs(25), async {
        loop {
            let l = client.lease(replacement.id).await.unwrap();
            if l.max_duration_ms > 20_000 {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("topped up within a period");
    assert_eq!(topped.state, LeaseState::Running);
    let settlement = topped.settlement.unwrap();
    assert_eq!(
        settlement.escrow, topped.escrow,
        "registry and ledger agree"
    );

    // Stopping ends it; all that is not paid for comes back.
    let stopped = client.stop_deployment(created.id).await.unwrap();
    assert_eq!(stopped.state, gpumesh_types::DeploymentState::Stopped);
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let l = client.lease(replacement.id).await.unwrap();
            if l.state.is_terminal() {
                return l;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("the replica ends once stopped");
    let s = ended.settlement.unwrap();
    assert!(s.closed);
    assert_eq!(s.charged.0 + s.refund.0, s.escrow.0);
    let after = client.account(owner).await.unwrap().balance;
    let paid = before.0 - after.0;
    let charged = lost_settlement.charged.0 + s.charged.0;
    assert_eq!(paid, charged, "the owner paid exactly the usage charged");
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sessions_are_placed_within_their_bound_and_the_autoscaler_follows_them() {
    let net = devnet(3, RuntimeChoice::Process).await;
    let client = net.buyer_client();
    let created = one_replica_running(&client, region("eu", PARIS, 1, 3), 100).await;
    let ask = |near: GeoPoint, queue_ms: u64| SessionRequest {
        deployment: created.id,
        near,
        max_rtt_ms: 40,
        queue_ms,
    };
    // Five players near Paris: two fit at once, three queue; the autoscaler adds replicas.
    let mut sessions = Vec::new();
    let mut latencies = Vec::new();
    for _ in 0..5 {
        let asked = Instant::now();
        sessions.push(client.request_session(&ask(PARIS, 30_000)).await.unwrap());
        latencies.push(asked.elapsed());
    }
    eprintln!("session requests took {latencies:?}");
    assert_eq!(sessions[0].state, SessionState::Active);
    assert!(sessions[0].rtt_ms.unwrap() <= 40.0);
    assert_eq!(sessions[4].state, SessionState::Queued);
    let grown = until(
        &client,
        created.id,
        Duration::from_secs(30),
        "scaled up",
        |v| v.scale_ups >= 1 && v.sessions_served == 5,
    )
    .await;
    assert!(grown.regions[0].desired >= 3, "{grown:#?}");
    for s in &sessions {
        let s = client.session(s.id).await.unwrap();
        assert_eq!(s.state, SessionState::Active, "{s:?}");
    }
    // A player in Sydney is too far from every replica.
    let far = client
        .request_session(&ask(
            GeoPoint {
                lat: -33.87,
                lon: 151.21,
            },
            0,
        ))
        .await
        .unwrap();
    assert_eq!(far.state, SessionState::Rejected);
    assert_eq!(far.rejected, Some(RejectReason::NoReplicaInBound));

    // Everyone leaves: after the cool-down the idle replicas go, down to the minimum.
    for s in &sessions {
        client.end_session(s.id).await.unwrap();
    }
    let shrunk = until(
        &client,
        created.id,
        Duration::from_secs(40),
        "scaled down",
        |v| v.scale_downs >= 1 && v.regions[0].desired == 1 && running(v).len() == 1,
    )
    .await;
    assert_eq!(shrunk.sessions_rejected, 1);
    // The owner can see what each replica served.
    let served: u64 = shrunk.replicas.iter().map(|r| r.sessions_served).sum();
    assert!(served <= 5);

    // Bad input changes nothing.
    let other = gpumesh_identity::Wallet::from_label("someone else");
    let stranger = Client::new(&net.api_url, Some(other));
    let code = |e: ClientError| match e {
        ClientError::Api { error, .. } => error.code,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        code(stranger.request_session(&ask(PARIS, 0)).await.unwrap_err()),
        ErrorCode::NotYourDeployment
    );
    let no_sessions = client
        .create_deployment(&deployment("sleep 1", vec![region("eu", PARIS, 0, 1)], 0))
        .await
        .unwrap();
    let mut asked = ask(PARIS, 0);
    asked.deployment = no_sessions.id;
    assert_eq!(
        code(client.request_session(&asked).await.unwrap_err()),
        ErrorCode::NoSessions
    );
    for (what, request) in [
        (
            "min above max",
            deployment("true", vec![region("eu", PARIS, 3, 1)], 0),
        ),
        ("no region", deployment("true", vec![], 0)),
        (
            "a place that is none",
            deployment(
                "true",
                vec![region(
                    "nowhere",
                    GeoPoint {
                        lat: 123.0,
                        lon: 0.0,
                    },
                    0,
                    1,
                )],
                0,
            ),
        ),
    ] {
        assert_eq!(
            code(client.create_deployment(&request).await.unwrap_err()),
            ErrorCode::InvalidRegion,
            "{what}"
        );
    }
    // A region with a round-trip bound places nothing outside it, and says why.
    let mut bounded = region(
        "sydney",
        GeoPoint {
            lat: -33.87,
            lon: 151.21,
        },
        1,
        1,
    );
    bounded.max_rtt_ms = Some(40);
    let far = client
        .create_deployment(&deployment("sleep 600", vec![bounded], 0))
        .await
        .unwrap();
    client.allow(far.id, Amount::from_tokens(10)).await.unwrap();
    let waiting = until(&client, far.id, Duration::from_secs(10), "a notice", |v| {
        v.notice
            .as_deref()
            .is_some_and(|n| n.contains("region sydney"))
    })
    .await;
    assert!(waiting.replicas.is_empty(), "{waiting:#?}");
    let scale = ScaleRequest {
        region: "mars".into(),
        min: 0,
        max: 1,
    };
    assert_eq!(
        code(
            client
                .scale_deployment(created.id, &scale)
                .await
                .unwrap_err()
        ),
        ErrorCode::InvalidRegion
    );
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unhealthy_replica_in_a_container_is_replaced() {
    let Some(net) = container_devnet(1).await else {
        return;
    };
    let client = net.buyer_client();
    // Answers for 3 s, then stops answering while its container runs on.
    let mut request = deployment(
        "mkdir -p /tmp/www && echo up > /tmp/www/index.html && (httpd -f -p 8080 -h /tmp/www & pid=$!; sleep 3; kill $pid) ; sleep 300",
        vec![region("eu", PARIS, 1, 1)],
        0,
    );
    request.ports = vec![PortSpec {
        port: 8080,
        protocol: Protocol::Tcp,
    }];
    request.health = Some(HealthCheck {
        interval_ms: 300,
        grace_ms: 20_000,
        failures: 2,
        ..HealthCheck::new(Probe::Http("/".into()))
    });
    let created = client.create_deployment(&request).await.unwrap();
    client
        .allow(created.id, Amount::from_tokens(50))
        .await
        .unwrap();
    let first = until(&client, created.id, Duration::from_secs(40), "ready", |v| {
        v.replicas
            .iter()
            .any(|r| r.health == Some(ServiceHealth::Ready))
    })
    .await
    .replicas[0]
        .lease;
    let replaced = until(
        &client,
        created.id,
        Duration::from_secs(40),
        "replaced",
        |v| {
            v.replacements >= 1
                && v.replicas
                    .iter()
                    .any(|r| r.lease != first && r.health == Some(ServiceHealth::Ready))
        },
    )
    .await;
    eprintln!("replaced: {replaced:#?}");
    let old = client.lease(first).await.unwrap();
    assert_eq!(old.health, Some(ServiceHealth::Unhealthy));
    client.stop_deployment(created.id).await.unwrap();
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn deployments_and_sessions_survive_an_indexer_restart() {
    let mut net = devnet(2, RuntimeChoice::Process).await;
    let client = net.buyer_client();
    let created = one_replica_running(&client, region("eu", PARIS, 1, 2), 50).await;
    let session = client
        .request_session(&SessionRequest {
            deployment: created.id,
            near: PARIS,
            max_rtt_ms: 40,
            queue_ms: 0,
        })
        .await
        .unwrap();
    assert_eq!(session.state, SessionState::Active);
    let before = client.deployment(created.id).await.unwrap();
    net.restart_indexer().await.unwrap();
    let client = net.buyer_client();
    let after = client.deployment(created.id).await.unwrap();
    assert_eq!(after.replicas, before.replicas);
    assert_eq!(after.sessions_served, 1);
    assert_eq!(
        client.session(session.id).await.unwrap().state,
        SessionState::Active
    );
    // The replica's slot is still held, and freed when the player leaves.
    client.end_session(session.id).await.unwrap();
    let freed = client.deployment(created.id).await.unwrap();
    assert_eq!(freed.replicas[0].sessions, 0);
    assert_eq!(running(&freed), running(&before));
    // Lowered bounds retire the replicas above them.
    let lease = running(&freed)[0];
    client
        .scale_deployment(
            created.id,
            &ScaleRequest {
                region: "eu".into(),
                min: 0,
                max: 0,
            },
        )
        .await
        .unwrap();
    let shrunk = until(
        &client,
        created.id,
        Duration::from_secs(20),
        "retired",
        |v| v.replicas.is_empty(),
    )
    .await;
    assert!(shrunk.scale_downs >= 1);
    assert!(client.lease(lease).await.unwrap().state.is_terminal());
    let _ = net.stop().await;
}

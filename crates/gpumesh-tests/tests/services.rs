//! Services: published ports reached over HTTP, health checks that make a lease ready and
//! notice when it stops answering, and bad service input refused with its code.

use std::time::{Duration, Instant};

use gpumesh_client::buyer::{ServiceOutcome, start_service};
use gpumesh_client::{Client, ClientError};
use gpumesh_devnet::RuntimeChoice;
use gpumesh_tests::{container_devnet, devnet, job};
use gpumesh_types::{
    EnvVar, ErrorCode, GpuModel, HealthCheck, JobRequest, LeaseState, LeaseView, PortSpec, Probe,
    Protocol, ServiceHealth,
};

fn tcp(port: u16) -> PortSpec {
    PortSpec {
        port,
        protocol: Protocol::Tcp,
    }
}

fn service(command: Vec<String>, health: Probe) -> JobRequest {
    let mut job = job(GpuModel::H100, 1, "", Duration::from_secs(300));
    job.command = command;
    job.ports = vec![tcp(8080)];
    job.health = Some(HealthCheck {
        interval_ms: 300,
        grace_ms: 20_000,
        failures: 2,
        ..HealthCheck::new(health)
    });
    job
}

async fn ready(client: &Client, job: &JobRequest) -> (Box<LeaseView>, Duration) {
    match start_service(client, job, |_| {}).await.unwrap() {
        ServiceOutcome::Ready { lease, ready } => (lease, ready),
        other => panic!("the service did not become ready: {other:?}"),
    }
}

async fn get(address: &str) -> Result<String, reqwest::Error> {
    gpumesh_client::http()
        .get(format!("http://{address}/"))
        .timeout(Duration::from_secs(5))
        .send()
        .await?
        .text()
        .await
}

/// Waits until the lease satisfies `done`, for at most `within`.
async fn until(
    client: &Client,
    lease: &LeaseView,
    within: Duration,
    done: impl Fn(&LeaseView) -> bool,
) -> LeaseView {
    let began = Instant::now();
    loop {
        let view = client.lease(lease.id).await.unwrap();
        if done(&view) {
            return view;
        }
        assert!(
            began.elapsed() < within,
            "lease {} did not get there within {within:?}: {view:?}",
            lease.id
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_service_in_a_container_is_reached_at_its_endpoint_and_its_health_is_watched() {
    let Some(net) = container_devnet(1).await else {
        return;
    };
    let client = net.buyer_client();

    // A service whose page carries a secret from its environment.
    let mut job = service(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /tmp/www && echo \"hello from lease $GPUMESH_LEASE_ID with $GREETING\" > /tmp/www/index.html && exec httpd -f -p 8080 -h /tmp/www".into(),
        ],
        Probe::Http("/".into()),
    );
    job.env = vec![EnvVar {
        name: "GREETING".into(),
        value: "a secret greeting".into(),
    }];
    let (lease, took) = ready(&client, &job).await;
    eprintln!("ready {} ms after the request", took.as_millis());
    assert_eq!(lease.state, LeaseState::Running);
    assert_eq!(lease.health, Some(ServiceHealth::Ready));
    assert_eq!(lease.env_names, vec!["GREETING".to_string()]);
    let shown = serde_json::to_string(&lease).unwrap();
    assert!(!shown.contains("a secret greeting"), "{shown}");
    assert_eq!(lease.endpoints.len(), 1);
    assert_eq!(lease.endpoints[0].port, tcp(8080));
    let page = get(&lease.endpoints[0].address).await.unwrap();
    assert_eq!(
        page.trim(),
        format!("hello from lease {} with a secret greeting", lease.id)
    );
    client.cancel(lease.id).await.unwrap();

    // A service that answers, then stops answering while its container runs on.
    let job = service(
        vec![
            "/bin/sh".into(),
            "-c".into(),
            "mkdir -p /tmp/www && echo up > /tmp/www/index.html && (httpd -f -p 8080 -h /tmp/www & pid=$!; sleep 3; kill $pid) ; sleep 300".into(),
        ],
        Probe::Http("/".into()),
    );
    let (lease, _) = ready(&client, &job).await;
    let noticed = Instant::now();
    let unhealthy = until(&client, &lease, Duration::from_secs(20), |l| {
        l.health == Some(ServiceHealth::Unhealthy)
    })
    .await;
    eprintln!(
        "unhealthy {} ms after ready: {:?}",
        noticed.elapsed().as_millis(),
        unhealthy.health_detail
    );
    assert_eq!(unhealthy.state, LeaseState::Running);
    assert!(unhealthy.health_detail.is_some());
    client.cancel(lease.id).await.unwrap();
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_runtime_tells_a_service_its_port() {
    let net = devnet(1, RuntimeChoice::Process).await;
    let client = net.buyer_client();
    // The demo service under the process runtime needs busybox on the host; a TCP
    // listener from the shell's tools is enough where it is missing.
    let Ok(busybox) = gpumesh_host::demo_image::find_static_busybox() else {
        eprintln!("skipping: no static busybox to serve HTTP with");
        return;
    };
    let job = service(
        vec![
            busybox.display().to_string(),
            "sh".into(),
            "-c".into(),
            format!(
                "mkdir -p $TMPDIR/www-$GPUMESH_LEASE_ID && echo hi > $TMPDIR/www-$GPUMESH_LEASE_ID/index.html && exec {} httpd -f -p 127.0.0.1:$PORT -h $TMPDIR/www-$GPUMESH_LEASE_ID",
                busybox.display()
            ),
        ],
        Probe::Http("/index.html".into()),
    );
    let mut job = job;
    job.env = vec![EnvVar {
        name: "TMPDIR".into(),
        value: std::env::temp_dir().display().to_string(),
    }];
    let (lease, _) = ready(&client, &job).await;
    assert_eq!(get(&lease.endpoints[0].address).await.unwrap().trim(), "hi");
    client.cancel(lease.id).await.unwrap();
    let _ = net.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_service_input_is_refused_with_its_code() {
    let net = devnet(1, RuntimeChoice::Process).await;
    let client = net.buyer_client();
    let base = || service(vec!["true".into()], Probe::Tcp);
    let with = |f: &dyn Fn(&mut JobRequest)| {
        let mut job = base();
        f(&mut job);
        job
    };
    let cases: Vec<(&str, JobRequest, ErrorCode)> = vec![
        (
            "port 0",
            with(&|j| j.ports = vec![tcp(0)]),
            ErrorCode::InvalidPort,
        ),
        (
            "privileged port",
            with(&|j| j.ports = vec![tcp(80)]),
            ErrorCode::InvalidPort,
        ),
        (
            "duplicate port",
            with(&|j| j.ports = vec![tcp(8080), tcp(8080)]),
            ErrorCode::InvalidPort,
        ),
        (
            "env name not an identifier",
            with(&|j| {
                j.env = vec![EnvVar {
                    name: "1X".into(),
                    value: String::new(),
                }]
            }),
            ErrorCode::InvalidEnv,
        ),
        (
            "env name the agent sets",
            with(&|j| {
                j.env = vec![EnvVar {
                    name: "GPUMESH_LEASE_ID".into(),
                    value: "7".into(),
                }]
            }),
            ErrorCode::InvalidEnv,
        ),
        (
            "env name that picks the GPUs",
            with(&|j| {
                j.env = vec![EnvVar {
                    name: "NVIDIA_VISIBLE_DEVICES".into(),
                    value: "all".into(),
                }]
            }),
            ErrorCode::InvalidEnv,
        ),
        (
            "health path not a path",
            with(&|j| j.health = Some(HealthCheck::new(Probe::Http("healthz".into())))),
            ErrorCode::InvalidHealthCheck,
        ),
        (
            "health check without a TCP port",
            with(&|j| {
                j.ports = vec![PortSpec {
                    port: 5000,
                    protocol: Protocol::Udp,
                }]
            }),
            ErrorCode::InvalidHealthCheck,
        ),
    ];
    let before = client.leases_of_buyer(net.buyer.address()).await.unwrap();
    for (what, job, code) in cases {
        match client.submit_job(&job).await {
            Err(ClientError::Api { error, .. }) => {
                assert_eq!(error.code, code, "{what}: {}", error.message)
            }
            other => panic!("{what}: expected {code:?}, got {other:?}"),
        }
    }
    // A port above 65535 never parses.
    let mut raw = serde_json::to_value(base()).unwrap();
    raw["ports"] = serde_json::json!(["70000/tcp"]);
    let answer = gpumesh_client::http()
        .post(format!("{}/v1/jobs", net.api_url))
        .json(&raw)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 401, "unsigned requests are refused first");
    let signed = client.post_raw("/v1/jobs", &raw).await;
    match signed {
        Err(ClientError::Api { error, .. }) => {
            assert_eq!(error.code, ErrorCode::InvalidPort, "{}", error.message)
        }
        other => panic!("port 70000: {other:?}"),
    }
    let after = client.leases_of_buyer(net.buyer.address()).await.unwrap();
    assert_eq!(before, after, "refused requests change nothing");
    let _ = net.stop().await;
}

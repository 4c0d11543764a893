//! Both runtimes run a real workload: output, exit codes, kills and limits.
//!
//! The container tests need a Docker Engine API (Docker or Podman). Without one they
//! print why and pass, unless GPUMESH_REQUIRE_CONTAINER_ENGINE=1 makes the engine required.

use std::time::{Duration, Instant};

use gpumesh_host::demo_image::{DEMO_IMAGE, ensure_demo_image};
use gpumesh_host::runtime::container::ContainerRuntime;
use gpumesh_host::runtime::process::ProcessRuntime;
use gpumesh_host::runtime::{Output, Runtime, WorkloadSpec};
use gpumesh_types::{LeaseId, LogStream};
use tokio::sync::mpsc;

fn spec(image: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec {
        lease: LeaseId(7),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello from the workload".into())],
        gpu_uuids: vec![],
        memory_bytes: Some(64 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        ports: Vec::new(),
        publish_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        labels: vec![("gpumesh.host".into(), "a test".into())],
    }
}

async fn engine() -> Option<ContainerRuntime> {
    let required = std::env::var("GPUMESH_REQUIRE_CONTAINER_ENGINE").is_ok_and(|v| v == "1");
    match ContainerRuntime::connect(None, "none").await {
        Ok(runtime) => {
            ensure_demo_image(&runtime)
                .await
                .expect("the demo image imports");
            Some(runtime)
        }
        Err(e) if required => panic!("GPUMESH_REQUIRE_CONTAINER_ENGINE=1 but {e}"),
        Err(e) => {
            eprintln!(
                "skipping container test: {e} (set DOCKER_HOST, or GPUMESH_REQUIRE_CONTAINER_ENGINE=1 to require one)"
            );
            None
        }
    }
}

async fn run(
    runtime: &dyn Runtime,
    spec: WorkloadSpec,
    kill_after: Option<Duration>,
) -> (i64, Vec<Output>) {
    let (tx, mut rx) = mpsc::channel(64);
    let mut workload = runtime.start(spec, tx).await.expect("the workload starts");
    let code = match kill_after {
        None => workload.wait().await.unwrap(),
        Some(after) => {
            tokio::select! {
                code = workload.wait() => panic!("ended by itself with {code:?}"),
                _ = tokio::time::sleep(after) => {}
            }
            workload.kill().await.unwrap();
            workload.wait().await.unwrap()
        }
    };
    let mut out = Vec::new();
    while let Ok(item) = rx.try_recv() {
        out.push(item);
    }
    (code, out)
}

fn text(out: &[Output], stream: LogStream) -> String {
    out.iter()
        .filter(|(s, _)| *s == stream)
        .map(|(_, t)| t.as_str())
        .collect()
}

async fn check_output_and_exit(runtime: &dyn Runtime, image: &str) {
    let script = "echo \"$GREETING\"; echo lease $GPUMESH_LEASE_ID >&2; exit 3";
    let mut s = spec(image, script);
    s.env.push(("GPUMESH_LEASE_ID".into(), "7".into()));
    let (code, out) = run(runtime, s, None).await;
    assert_eq!(code, 3);
    assert_eq!(text(&out, LogStream::Stdout), "hello from the workload\n");
    assert_eq!(text(&out, LogStream::Stderr), "lease 7\n");
}

async fn check_kill(runtime: &dyn Runtime, image: &str) {
    let began = Instant::now();
    let (code, out) = run(
        runtime,
        spec(image, "echo started; sleep 30; echo never"),
        Some(Duration::from_millis(800)),
    )
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "kill took {:?}",
        began.elapsed()
    );
    assert_eq!(code, 137, "SIGKILL");
    assert_eq!(text(&out, LogStream::Stdout), "started\n");
}

#[tokio::test]
async fn process_runtime_runs_and_kills() {
    check_output_and_exit(&ProcessRuntime, "ignored").await;
    check_kill(&ProcessRuntime, "ignored").await;
}

#[tokio::test]
async fn container_runtime_runs_and_kills() {
    let Some(runtime) = engine().await else {
        return;
    };
    check_output_and_exit(&runtime, DEMO_IMAGE).await;
    check_kill(&runtime, DEMO_IMAGE).await;
}

#[tokio::test]
async fn container_runtime_isolates_and_limits() {
    let Some(runtime) = engine().await else {
        return;
    };
    // No network interfaces but loopback, no capabilities, and the memory limit in force.
    let script = "ls /sys/class/net; grep CapEff /proc/self/status; cat /sys/fs/cgroup/memory.max 2>/dev/null || cat /sys/fs/cgroup/memory/memory.limit_in_bytes";
    let (code, out) = run(&runtime, spec(DEMO_IMAGE, script), None).await;
    let stdout = text(&out, LogStream::Stdout);
    assert_eq!(code, 0, "{stdout} {}", text(&out, LogStream::Stderr));
    assert_eq!(stdout.lines().next(), Some("lo"), "{stdout}");
    assert!(stdout.contains("CapEff:\t0000000000000000"), "{stdout}");
    assert!(stdout.contains(&(64 * 1024 * 1024).to_string()), "{stdout}");
    // A missing image is refused with a reason, not pulled.
    let (tx, _rx) = mpsc::channel(1);
    let err = runtime
        .start(spec("localhost/not-here:0", "true"), tx)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("not on this host"), "{err}");
}

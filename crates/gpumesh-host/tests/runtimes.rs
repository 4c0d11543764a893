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

/// A lease id of its own for every workload: containers are named by network, host and
/// lease, and the tests of this file run at once on one engine.
fn next_lease() -> LeaseId {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    LeaseId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

fn spec(image: &str, script: &str) -> WorkloadSpec {
    WorkloadSpec {
        lease: next_lease(),
        image: image.into(),
        command: vec!["sh".into(), "-c".into(), script.into()],
        env: vec![("GREETING".into(), "hello from the workload".into())],
        gpu_uuids: vec![],
        memory_bytes: Some(64 * 1024 * 1024),
        nano_cpus: Some(500_000_000),
        ports: Vec::new(),
        publish_ip: std::net::IpAddr::from([127, 0, 0, 1]),
        labels: vec![
            ("gpumesh.network".into(), "0".into()),
            (
                "gpumesh.host".into(),
                format!("runtime-test-{}", std::process::id()),
            ),
        ],
        as_image_user: false,
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
    check_output_and_exit(&ProcessRuntime::default(), "ignored").await;
    check_kill(&ProcessRuntime::default(), "ignored").await;
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

/// Workloads run as an unprivileged user unless their host allows the image's own, and
/// the engine's own record says so; `/tmp` stays writable either way.
#[tokio::test]
async fn container_workloads_run_unprivileged_unless_the_host_allows_the_image_user() {
    let Some(runtime) = engine().await else {
        return;
    };
    let script = "id -u; id -g; echo written > /tmp/file && cat /tmp/file";
    let (code, out) = run(&runtime, spec(DEMO_IMAGE, script), None).await;
    let stdout = text(&out, LogStream::Stdout);
    assert_eq!(code, 0, "{stdout} {}", text(&out, LogStream::Stderr));
    assert_eq!(stdout, "65534\n65534\nwritten\n");
    let mut as_root = spec(DEMO_IMAGE, script);
    as_root.as_image_user = true;
    let (code, out) = run(&runtime, as_root, None).await;
    assert_eq!(code, 0);
    assert_eq!(text(&out, LogStream::Stdout), "0\n0\nwritten\n");

    // The engine's record of a running workload: `podman inspect` (or `docker inspect`).
    let sleeper = spec(DEMO_IMAGE, "sleep 30");
    let lease = sleeper.lease.to_string();
    let (tx, _rx) = mpsc::channel(64);
    let mut workload = runtime.start(sleeper, tx).await.unwrap();
    let ids = runtime
        .labelled(&[("gpumesh.lease", &lease)])
        .await
        .unwrap();
    assert_eq!(ids.len(), 1);
    let cli = if runtime.describe().contains("Podman") {
        "podman"
    } else {
        "docker"
    };
    let inspected = std::process::Command::new(cli)
        .args(["inspect", "--format", "{{.Config.User}}", &ids[0]])
        .output();
    workload.kill().await.unwrap();
    workload.wait().await.unwrap();
    match inspected {
        Ok(out) if out.status.success() => {
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "65534:65534");
        }
        // The engine's API is reachable but not its command line (another machine's socket).
        other => eprintln!("no {cli} command to inspect with: {other:?}"),
    }
}

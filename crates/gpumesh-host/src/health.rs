//! Health checks of the services a host publishes: the agent probes each service's port
//! from the host (an HTTP GET of a path, or a TCP connect) and reports every change to the
//! indexer, which shows the lease `ready` or `unhealthy` (docs/services.md).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gpumesh_client::Client;
use gpumesh_types::{HealthCheck, HealthReport, LeaseId, Probe, ServiceHealth};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The longest one probe may take.
const MAX_PROBE: Duration = Duration::from_secs(5);

/// Probes once: `Ok` with what it saw when the service passes, `Err` with why not.
pub async fn probe(probe: &Probe, target: SocketAddr, timeout: Duration) -> Result<String, String> {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect to {target}: {e}"))?;
        let Probe::Http(path) = probe else {
            return Ok(format!("{target} accepts connections"));
        };
        let request =
            format!("GET {path} HTTP/1.0\r\nHost: {target}\r\nUser-Agent: gpumesh-health\r\n\r\n");
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| format!("send to {target}: {e}"))?;
        // The status line is all a probe needs.
        let mut head = [0u8; 64];
        let mut len = 0;
        while len < head.len() && !head[..len].contains(&b'\n') {
            match stream.read(&mut head[len..]).await {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) => return Err(format!("read from {target}: {e}")),
            }
        }
        let line = String::from_utf8_lossy(&head[..len]);
        let status = line
            .lines()
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|code| code.parse::<u16>().ok())
            .ok_or_else(|| format!("GET {path} got no HTTP status line"))?;
        if (200..400).contains(&status) {
            Ok(format!("GET {path} answered {status}"))
        } else {
            Err(format!("GET {path} answered {status}"))
        }
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no answer within {} ms", timeout.as_millis())),
    }
}

/// What a run of probe results means, given the check's grace and failure threshold: a
/// pure step, so the rules are tested without sockets.
pub fn next_health(
    current: ServiceHealth,
    passed: bool,
    failures_in_a_row: u32,
    check: &HealthCheck,
    since_start: Duration,
) -> ServiceHealth {
    match (current, passed) {
        (_, true) => ServiceHealth::Ready,
        (ServiceHealth::Pending, false) if since_start.as_millis() as u64 > check.grace_ms => {
            ServiceHealth::Unhealthy
        }
        (ServiceHealth::Ready, false) if failures_in_a_row >= check.failures => {
            ServiceHealth::Unhealthy
        }
        (current, false) => current,
    }
}

/// Probes a started service until `stop`, reporting each change of its health. A report
/// that fails is sent again at the next probe.
pub async fn watch(
    client: &Client,
    lease: LeaseId,
    check: HealthCheck,
    target: SocketAddr,
    began: Instant,
    stop: CancellationToken,
) {
    let every = Duration::from_millis(check.interval_ms);
    let timeout = every.min(MAX_PROBE);
    let mut reported = ServiceHealth::Pending;
    let mut health = ServiceHealth::Pending;
    let mut failures = 0u32;
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let result = probe(&check.probe, target, timeout).await;
        let passed = result.is_ok();
        failures = if passed { 0 } else { failures + 1 };
        health = next_health(health, passed, failures, &check, began.elapsed());
        if health == reported || health == ServiceHealth::Pending {
            continue;
        }
        let detail = match result {
            Ok(saw) | Err(saw) => saw,
        };
        let report = HealthReport {
            healthy: health == ServiceHealth::Ready,
            detail: Some(detail.clone()),
        };
        match client.report_health(lease, &report).await {
            Ok(_) => {
                tracing::info!(lease = %lease, ?health, detail, "service health changed");
                reported = health;
            }
            Err(e) => tracing::warn!(lease = %lease, error = %e, "reporting health failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            probe: Probe::Tcp,
            port: None,
            interval_ms: 1_000,
            grace_ms: 10_000,
            failures: 3,
        }
    }

    #[test]
    fn health_follows_grace_and_threshold() {
        let c = check();
        let s = Duration::from_secs;
        use ServiceHealth::*;
        // Failing within the grace keeps it pending; past the grace it is unhealthy.
        assert_eq!(next_health(Pending, false, 5, &c, s(5)), Pending);
        assert_eq!(next_health(Pending, false, 11, &c, s(11)), Unhealthy);
        // Ready stays ready until the threshold of failures in a row.
        assert_eq!(next_health(Ready, false, 2, &c, s(100)), Ready);
        assert_eq!(next_health(Ready, false, 3, &c, s(100)), Unhealthy);
        // A pass makes it ready from any state.
        assert_eq!(next_health(Unhealthy, true, 0, &c, s(100)), Ready);
        assert_eq!(next_health(Pending, true, 0, &c, s(1)), Ready);
    }

    #[tokio::test]
    async fn probes_see_http_status_and_closed_ports() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 256];
                let n = s.read(&mut buf).await.unwrap();
                let asked = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if asked.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "503 Busy"
                };
                let _ = s
                    .write_all(format!("HTTP/1.0 {status}\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let t = Duration::from_secs(2);
        assert!(probe(&Probe::Http("/ok".into()), addr, t).await.is_ok());
        let bad = probe(&Probe::Http("/down".into()), addr, t)
            .await
            .unwrap_err();
        assert!(bad.contains("503"), "{bad}");
        assert!(probe(&Probe::Tcp, addr, t).await.is_ok());
        // A port nothing listens on.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        assert!(probe(&Probe::Tcp, gone, t).await.is_err());
    }
}

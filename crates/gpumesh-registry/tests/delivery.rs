//! Delivery in the registry: which running leases checkers check and how, what their
//! verdicts do (and whom they slash), the bound they put on usage, and the funds a
//! match needs.

use gpumesh_registry::{DeliverySeen, Effect, LeaseRecord, Params, Registry};
use gpumesh_types::{
    Address, Amount, ContainerRef, Endpoint, ErrorCode, FailReason, GeoPoint, GpuModel, GpuOffer,
    HealthCheck, JobRequest, LeaseId, LeaseState, Location, PortSpec, Probe, Protocol,
    RegisterHost, RuntimeKind, UsageRecord,
};

const PERIOD: u64 = 2_000;
const GRACE: u64 = 1_000;
const WINDOW: u64 = 2 * (PERIOD + GRACE);
const SLACK: u64 = 2_000;

fn host() -> Address {
    Address::with_last_byte(1)
}

fn buyer() -> Address {
    Address::with_last_byte(9)
}

/// The host's registration: two H100s (simulated on a local network), and its agent's
/// challenge endpoint when given.
fn registration(local: bool, challenge_url: Option<&str>) -> RegisterHost {
    RegisterHost {
        name: "h".into(),
        location: Location {
            point: GeoPoint::new(50.0, 8.0).unwrap(),
            country: "DE".parse().unwrap(),
        },
        price_per_gpu_hour: Amount::from_tokens(1),
        gpus: vec![GpuOffer {
            model: GpuModel::H100,
            count: 2,
            vram_mib: None,
            simulated: local,
        }],
        runtime: if local {
            RuntimeKind::Process
        } else {
            RuntimeKind::Container
        },
        images: vec![],
        challenge_url: challenge_url.map(String::from),
    }
}

/// A checked network (`local` as given) with one host of two H100s whose capacity
/// proofs passed, reached by checkers at 203.0.114.5.
fn network(local: bool) -> Registry {
    let mut r = Registry::new(Params {
        require_stake: false,
        checked: true,
        local,
        delivery_window_ms: WINDOW,
        provable_models: vec![GpuModel::H100],
        ..Params::local()
    });
    r.register_host(
        host(),
        registration(local, Some("http://203.0.114.5:7701")),
        0,
    )
    .unwrap();
    for index in 0..2 {
        let c = ContainerRef {
            host: host(),
            index,
        };
        r.capacity_verdict(c, Ok(10), 100, 0).unwrap();
    }
    r
}

fn job(ports: bool) -> JobRequest {
    let mut job = JobRequest::new(
        GpuModel::H100,
        1,
        GeoPoint::new(50.0, 8.0).unwrap(),
        Amount::from_tokens(5),
        600_000,
        "busybox",
        vec!["true".into()],
    );
    if ports {
        job.ports = vec![PortSpec {
            port: 8080,
            protocol: Protocol::Tcp,
        }];
        job.health = Some(HealthCheck {
            grace_ms: 10_000,
            ..HealthCheck::new(Probe::Http("/health".into()))
        });
    }
    job
}

/// A running lease started at `start`, serving on `address` when it publishes a port.
fn running(r: &mut Registry, ports: bool, address: &str, start: u64) -> LeaseId {
    let id = r.submit_job(buyer(), job(ports), start).unwrap().id;
    r.escrow_opened(id, start).unwrap();
    let endpoints = if ports {
        vec![Endpoint {
            port: PortSpec {
                port: 8080,
                protocol: Protocol::Tcp,
            },
            address: address.into(),
        }]
    } else {
        Vec::new()
    };
    assert!(r.started(&host(), id, endpoints, start).unwrap());
    id
}

fn lease(r: &Registry, id: LeaseId) -> &LeaseRecord {
    r.lease(id).unwrap()
}

fn usage(id: LeaseId, gpu_ms: u64) -> Vec<UsageRecord> {
    vec![UsageRecord {
        lease: id,
        gpu_ms,
        is_final: false,
    }]
}

#[test]
fn a_batch_job_is_checked_from_its_start_by_its_agents_statement() {
    let mut r = network(true);
    let id = running(&mut r, false, "", 1_000);
    let l = lease(&r, id);
    assert_eq!(l.delivered_ms, Some(1_000));
    assert!(l.delivery_due(1_000));
    assert_eq!(l.delivery_probe().service, None);
    let targets = r.check_targets(u64::MAX, 1_500);
    let probed: Vec<_> = targets.iter().filter_map(|t| t.delivery.clone()).collect();
    assert_eq!(probed.len(), 1, "one probe per lease, on its first GPU");
    assert_eq!(probed[0].lease, id);
}

#[test]
fn a_service_is_checked_once_ready_or_past_its_grace_at_its_health_path() {
    let mut r = network(true);
    let id = running(&mut r, true, "127.0.0.1:31000", 1_000);
    let l = lease(&r, id);
    assert!(!l.delivery_due(5_000), "still in its 10 s grace, not ready");
    assert!(l.delivery_due(11_000), "its grace is over");
    assert_eq!(
        l.delivery_probe().service.as_deref(),
        Some("http://127.0.0.1:31000/health")
    );
    assert!(
        r.check_targets(u64::MAX, 5_000)
            .iter()
            .all(|t| t.delivery.is_none())
    );
    r.health_report(&host(), id, true, None).unwrap();
    assert!(
        lease(&r, id).delivery_due(5_000),
        "ready before its grace ended"
    );
}

#[test]
fn usage_past_the_delivery_window_is_refused_until_a_check_passes() {
    let mut r = network(true);
    let id = running(&mut r, false, "", 0);
    // With no verdict yet, the window past the start is billable, and no more.
    let bound = WINDOW + SLACK;
    assert_eq!(
        lease(&r, id).delivered_gpu_ms(60_000, WINDOW, SLACK),
        Some(bound)
    );
    r.check_delivered_usage(&usage(id, bound), 60_000, SLACK)
        .unwrap();
    let refused = r
        .check_delivered_usage(&usage(id, bound + 1), 60_000, SLACK)
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::UsageExceedsDelivered);
    // A passed check at 40 s, and a period nobody decided at 50 s, move it on.
    assert!(
        r.delivery_seen(id, DeliverySeen::Passed, 40_000, 43_000)
            .is_empty()
    );
    assert_eq!(lease(&r, id).delivered_ms, Some(40_000));
    assert!(
        r.delivery_seen(id, DeliverySeen::Unknown, 50_000, 53_000)
            .is_empty()
    );
    assert_eq!(lease(&r, id).delivered_ms, Some(50_000));
    r.check_delivered_usage(&usage(id, 50_000 + WINDOW), 60_000, SLACK)
        .unwrap();
    // Never past now, whatever was delivered.
    assert_eq!(
        lease(&r, id).delivered_gpu_ms(51_000, WINDOW, SLACK),
        Some(51_000 + SLACK)
    );
    // An older verdict arriving late does not move it back.
    r.delivery_seen(id, DeliverySeen::Passed, 30_000, 60_000);
    assert_eq!(lease(&r, id).delivered_ms, Some(50_000));
}

#[test]
fn a_network_without_checkers_puts_no_delivery_bound_on_usage() {
    let mut r = Registry::new(Params {
        require_stake: false,
        ..Params::local()
    });
    r.register_host(host(), registration(true, None), 0)
        .unwrap();
    let id = running(&mut r, false, "", 0);
    assert_eq!(lease(&r, id).delivered_ms, None);
    r.check_delivered_usage(&usage(id, 600_000), 600_000, SLACK)
        .unwrap();
}

#[test]
fn a_failed_delivery_ends_the_lease_and_slashes_only_an_agent_that_failed() {
    for (reason, slashed) in [
        (FailReason::NotDelivered, false),
        (FailReason::Unreachable, true),
        (FailReason::BadSignature, true),
    ] {
        let mut r = network(true);
        let id = running(&mut r, false, "", 0);
        let effects = r.delivery_seen(id, DeliverySeen::Failed(reason), 4_000, 7_000);
        let l = lease(&r, id);
        assert_eq!(l.state, LeaseState::Failed, "{reason:?}");
        assert!(l.failure.as_deref().unwrap().contains("not delivered"));
        assert!(matches!(
            effects[0],
            Effect::CloseEscrow {
                reason: gpumesh_types::CloseReason::Undelivered,
                ..
            }
        ));
        let slashes = effects
            .iter()
            .filter(|e| matches!(e, Effect::SlashDowntime { .. }))
            .count();
        assert_eq!(slashes, if slashed { 1 } else { 0 }, "{reason:?}");
        let quality = r.host(&host()).unwrap();
        assert_eq!((quality.up_verdicts, quality.down_verdicts), (0, 1));
        // A verdict about an ended lease changes nothing.
        assert!(
            r.delivery_seen(id, DeliverySeen::Failed(reason), 6_000, 9_000)
                .is_empty()
        );
    }
}

#[test]
fn outside_a_local_network_a_service_must_be_served_from_the_hosts_own_address() {
    let mut r = network(false);
    let id = r.submit_job(buyer(), job(true), 0).unwrap().id;
    r.escrow_opened(id, 0).unwrap();
    let at = |address: &str| Endpoint {
        port: PortSpec {
            port: 8080,
            protocol: Protocol::Tcp,
        },
        address: address.into(),
    };
    let refused = r
        .started(&host(), id, vec![at("93.184.215.14:443")], 10)
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidPort);
    assert_eq!(lease(&r, id).state, LeaseState::Starting);
    assert!(
        r.started(&host(), id, vec![at("203.0.114.5:31000")], 10)
            .unwrap()
    );
}

#[test]
fn a_buyers_unfunded_matches_together_must_fit_its_balance() {
    let mut r = network(true);
    let escrow = gpumesh_ledger::escrow_amount(Amount::from_tokens(1), 1, 600_000)
        .unwrap()
        .0;
    // Enough for one match and a half: the second would hold more than the balance.
    let spendable = Some(Amount(escrow + escrow / 2));
    r.submit_job_within(buyer(), job(false), spendable, 0)
        .unwrap();
    let second = r
        .submit_job_within(buyer(), job(false), spendable, 0)
        .unwrap_err();
    assert_eq!(second.code(), ErrorCode::InsufficientFunds);
    assert!(second.to_string().contains("unfunded matches"), "{second}");
    // The refused match holds nothing: the host's other GPU is free to another buyer.
    let other = Address::with_last_byte(10);
    assert_eq!(
        r.submit_job_within(other, job(false), Some(Amount(escrow - 1)), 0)
            .unwrap_err()
            .code(),
        ErrorCode::InsufficientFunds
    );
    r.submit_job_within(other, job(false), Some(Amount(escrow)), 0)
        .unwrap();
    assert_eq!(
        r.submit_job_within(other, job(false), None, 0)
            .unwrap_err()
            .code(),
        ErrorCode::NoMatch,
        "two GPUs, two matches held"
    );
}

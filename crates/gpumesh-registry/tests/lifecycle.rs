//! The registry driven through lease lifecycles, bad input and restarts.

use std::collections::HashSet;

use gpumesh_registry::{CapacityDecision, Dirty, Effect, Params, Registry, RegistryError};
use gpumesh_types::{
    Address, Amount, CloseReason, ErrorCode, GeoPoint, GpuModel, GpuOffer, Heartbeat, HostWork,
    JobRequest, LeaseId, LeaseState, Location, RegisterHost, RuntimeKind, TxKind,
};
use proptest::prelude::*;

/// A local network without stake requirements; staking has its own test.
fn test_params() -> Params {
    Params {
        require_stake: false,
        ..Params::local()
    }
}

fn addr(n: u8) -> Address {
    Address::with_last_byte(n)
}

fn tokens(t: &str) -> Amount {
    Amount::parse_tokens(t).unwrap()
}

fn host_request(
    name: &str,
    lat: f64,
    lon: f64,
    model: GpuModel,
    count: u16,
    price: &str,
) -> RegisterHost {
    RegisterHost {
        name: name.into(),
        location: Location {
            point: GeoPoint::new(lat, lon).unwrap(),
            country: "DE".parse().unwrap(),
        },
        price_per_gpu_hour: tokens(price),
        gpus: vec![GpuOffer {
            model,
            count,
            vram_mib: None,
            simulated: true,
        }],
        runtime: RuntimeKind::Process,
        images: vec![],
        challenge_url: None,
    }
}

fn job(model: GpuModel, count: u16, cap: &str) -> JobRequest {
    JobRequest::new(
        model,
        count,
        GeoPoint::new(48.86, 2.35).unwrap(),
        tokens(cap),
        60_000,
        "busybox",
        vec!["echo".into(), "hi".into()],
    )
}

fn escrow_tx(registry: &Registry, id: LeaseId) -> TxKind {
    let l = registry.lease(id).unwrap();
    TxKind::OpenEscrow {
        lease: id,
        host: l.host,
        price_per_gpu_hour: l.price_per_gpu_hour,
        gpus: l.gpu_count,
        max_duration_ms: l.max_duration_ms,
        amount: l.escrow,
    }
}

fn network() -> Registry {
    let mut r = Registry::new(test_params());
    r.register_host(
        addr(1),
        host_request("frankfurt", 50.11, 8.68, GpuModel::H100, 8, "2.5"),
        0,
    )
    .unwrap();
    r.register_host(
        addr(2),
        host_request("virginia", 39.04, -77.49, GpuModel::H100, 2, "2.0"),
        0,
    )
    .unwrap();
    r.take_dirty();
    r
}

#[test]
fn a_lease_runs_from_match_to_completion() {
    let mut r = network();
    let buyer = addr(9);
    let id = r
        .submit_job(buyer, job(GpuModel::H100, 2, "3"), 1_000)
        .unwrap()
        .id;
    assert_eq!(r.take_dirty(), vec![Dirty::Lease(id)]);
    let lease = r.lease(id).unwrap();
    assert_eq!((lease.host, lease.state), (addr(1), LeaseState::Matched));
    // 2.5 × 2 GPUs × 1 minute = 0.0833… tokens, rounded up to the base unit.
    assert_eq!(lease.escrow, Amount(83_333_333_333_333_334));

    assert!(
        r.work(&addr(1)).unwrap().start.is_empty(),
        "nothing to start before funding"
    );
    let kind = escrow_tx(&r, id);
    assert_eq!(r.check_escrow(buyer, &kind, 2_000), Ok(id));
    assert!(matches!(
        r.check_escrow(addr(8), &kind, 2_000),
        Err(RegistryError::NotYours { .. })
    ));
    r.escrow_opened(id, 0).unwrap();
    let work = r.work(&addr(1)).unwrap();
    assert_eq!(work.start.len(), 1);
    assert_eq!(work.start[0].gpu_indices, vec![0, 1]);

    assert!(matches!(
        r.started(&addr(2), id, Vec::new(), 3_000),
        Err(RegistryError::NotYours { .. })
    ));
    r.started(&addr(1), id, Vec::new(), 3_000).unwrap();
    assert_eq!(
        r.finished(&addr(1), id, Some(0), None, 9_000).unwrap(),
        LeaseState::Completed
    );
    assert!(
        r.finished(&addr(1), id, Some(0), None, 9_500).is_err(),
        "a lease ends once"
    );
    let view = r.view(id, None).unwrap();
    assert_eq!(
        (view.started_ms, view.ended_ms, view.exit_code),
        (Some(3_000), Some(9_000), Some(0))
    );
    // The GPUs are free again: all 8 can be booked.
    assert!(
        r.submit_job(buyer, job(GpuModel::H100, 8, "3"), 10_000)
            .is_ok()
    );
}

#[test]
fn unmatched_jobs_say_why() {
    let mut r = network();
    let reasons: Vec<String> = [
        job(GpuModel::Rtx4090, 1, "9"),
        job(GpuModel::H100, 9, "9"),
        job(GpuModel::H100, 1, "1"),
    ]
    .into_iter()
    .map(|j| r.submit_job(addr(9), j, 0).unwrap_err().to_string())
    .collect();
    expect_test::expect![[r#"
        [
            "no host offers RTX4090",
            "10 H100 registered; 10 online; 10 in standby; 0 on hosts with 9 free; the most free on one host is 8 (frankfurt in DE)",
            "10 H100 registered; 10 online; 10 in standby; 10 on hosts with 1 free; 0 at or under 1 per GPU-hour; the cheapest is 2 (virginia in DE)",
        ]
    "#]]
    .assert_debug_eq(&reasons);
    assert!(r.take_dirty().is_empty(), "a refused job changes nothing");
}

#[test]
fn bad_input_is_refused_with_its_code() {
    let mut r = Registry::new(Params {
        require_stake: false,
        ..Params::network()
    });
    let mut bad_location = host_request("x", 0.0, 0.0, GpuModel::A10, 1, "1");
    bad_location.location.point.lat = 95.0;
    let mut twice = host_request("x", 0.0, 0.0, GpuModel::A10, 1, "1");
    twice.gpus.push(twice.gpus[0].clone());
    let mut real = host_request("x", 0.0, 0.0, GpuModel::A10, 1, "1");
    real.gpus[0].simulated = false;
    real.runtime = RuntimeKind::Container;
    let mut processes = real.clone();
    processes.runtime = RuntimeKind::Process;
    let cases = [
        (
            host_request("x", 0.0, 0.0, GpuModel::A10, 1, "0"),
            ErrorCode::InvalidPrice,
        ),
        (
            host_request("x", 0.0, 0.0, GpuModel::A10, 1, "1000001"),
            ErrorCode::InvalidPrice,
        ),
        (
            host_request("x", 0.0, 0.0, GpuModel::A10, 0, "1"),
            ErrorCode::InvalidRequest,
        ),
        (
            host_request("", 0.0, 0.0, GpuModel::A10, 1, "1"),
            ErrorCode::InvalidRequest,
        ),
        (
            host_request("x", 0.0, 0.0, GpuModel::A10, 1, "1"),
            ErrorCode::SimulatedNotAllowed,
        ),
        (bad_location, ErrorCode::InvalidLocation),
        (twice, ErrorCode::InvalidRequest),
        (processes, ErrorCode::ProcessRuntimeNotAllowed),
    ];
    for (mut request, code) in cases {
        if code != ErrorCode::SimulatedNotAllowed {
            request.gpus.iter_mut().for_each(|g| g.simulated = false);
        }
        if code != ErrorCode::ProcessRuntimeNotAllowed {
            request.runtime = RuntimeKind::Container;
        }
        let err = r.register_host(addr(1), request.clone(), 0).unwrap_err();
        assert_eq!(err.code(), code, "{request:?}: {err}");
    }
    assert_eq!(r.host_count(), 0);
    r.register_host(addr(1), real, 0).unwrap();

    let mut far = job(GpuModel::A10, 1, "2");
    far.near.lon = 200.0;
    let mut long = job(GpuModel::A10, 1, "2");
    long.max_duration_ms = 30 * 24 * 3_600_000;
    let mut blank = job(GpuModel::A10, 1, "2");
    blank.image = "two words".into();
    let cases = [
        (job(GpuModel::A10, 0, "2"), ErrorCode::InvalidRequest),
        (job(GpuModel::A10, 1, "0"), ErrorCode::InvalidPrice),
        (far, ErrorCode::InvalidLocation),
        (long, ErrorCode::InvalidRequest),
        (blank, ErrorCode::InvalidRequest),
    ];
    for (request, code) in cases {
        assert_eq!(
            r.submit_job(addr(9), request.clone(), 0)
                .unwrap_err()
                .code(),
            code,
            "{request:?}"
        );
    }
    assert_eq!(r.leases().count(), 0);
    assert!(matches!(
        r.heartbeat(addr(7), Heartbeat::default(), 0),
        Err(RegistryError::UnknownHost(_))
    ));
    assert!(matches!(
        r.cancel(&addr(9), LeaseId(42), 0),
        Err(RegistryError::UnknownLease(_))
    ));
}

#[test]
fn a_lost_host_fails_its_leases_and_returns_to_standby_when_it_beats_again() {
    let mut r = network();
    let buyer = addr(9);
    let running = r
        .submit_job(buyer, job(GpuModel::H100, 1, "3"), 0)
        .unwrap()
        .id;
    r.escrow_opened(running, 0).unwrap();
    r.started(&addr(1), running, Vec::new(), 100).unwrap();
    let unfunded = r
        .submit_job(buyer, job(GpuModel::H100, 1, "3"), 0)
        .unwrap()
        .id;
    r.heartbeat(addr(2), Heartbeat::default(), 3_000).unwrap();
    // Host 1 last beat at 0; with 1 s heartbeats it is lost after 3 s.
    assert!(r.tick(3_000).is_empty());
    let effects = r.tick(3_001);
    assert_eq!(
        effects,
        vec![
            Effect::HostOffline {
                host: addr(1),
                last_heartbeat_ms: 0
            },
            Effect::CloseEscrow {
                lease: running,
                reason: CloseReason::HostLost
            },
            Effect::SlashDowntime {
                host: addr(1),
                index: 0,
                model: GpuModel::H100,
                lease: running,
                last_heartbeat_ms: 0
            },
        ]
    );
    assert_eq!(r.lease(running).unwrap().state, LeaseState::Failed);
    assert_eq!(r.lease(unfunded).unwrap().state, LeaseState::Cancelled);
    assert!(!r.host_online(&addr(1)));
    // Jobs now go to the farther host, until the lost one beats again.
    let next = r
        .submit_job(buyer, job(GpuModel::H100, 1, "3"), 3_002)
        .unwrap();
    assert_eq!(next.host, addr(2));
    r.heartbeat(addr(1), Heartbeat::default(), 3_003).unwrap();
    assert_eq!(
        r.submit_job(buyer, job(GpuModel::H100, 1, "3"), 3_004)
            .unwrap()
            .host,
        addr(1)
    );
}

#[test]
fn matches_expire_and_cancels_reach_the_host() {
    let mut r = network();
    let buyer = addr(9);
    let id = r
        .submit_job(buyer, job(GpuModel::H100, 8, "3"), 0)
        .unwrap()
        .id;
    r.heartbeat(addr(1), Heartbeat::default(), 30_001).unwrap();
    r.heartbeat(addr(2), Heartbeat::default(), 30_001).unwrap();
    r.tick(30_001);
    assert_eq!(r.lease(id).unwrap().state, LeaseState::Cancelled);
    let kind = escrow_tx(&r, id);
    assert!(matches!(
        r.check_escrow(buyer, &kind, 30_002),
        Err(RegistryError::InvalidState { .. })
    ));

    let id = r
        .submit_job(buyer, job(GpuModel::H100, 8, "3"), 30_002)
        .unwrap()
        .id;
    r.escrow_opened(id, 30_002).unwrap();
    // Not started yet: the cancellation ends it at once, refunded in full, and the host
    // has nothing to start (a host that started it anyway has its start refused).
    assert_eq!(
        r.cancel(&buyer, id, 30_003).unwrap(),
        (
            LeaseState::Cancelled,
            vec![Effect::CloseEscrow {
                lease: id,
                reason: CloseReason::NotStarted
            }]
        )
    );
    assert_eq!(
        r.work(&addr(1)).unwrap(),
        HostWork {
            live: Some(Vec::new()),
            ..HostWork::default()
        },
        "nothing to start or stop, and nothing live"
    );
    assert!(r.started(&addr(1), id, Vec::new(), 30_004).is_err());

    // Running: the host is asked to stop, and reports the end.
    let id = r
        .submit_job(buyer, job(GpuModel::H100, 8, "3"), 30_005)
        .unwrap()
        .id;
    r.escrow_opened(id, 30_005).unwrap();
    r.started(&addr(1), id, Vec::new(), 30_006).unwrap();
    assert_eq!(
        r.cancel(&buyer, id, 30_007).unwrap(),
        (LeaseState::Running, vec![])
    );
    let work = r.work(&addr(1)).unwrap();
    assert!(work.start.is_empty());
    assert_eq!(work.stop, vec![id]);
    assert_eq!(
        r.finished(&addr(1), id, Some(137), None, 30_008).unwrap(),
        LeaseState::Cancelled
    );
}

#[test]
fn leases_whose_host_goes_quiet_end_at_their_deadline() {
    let mut r = network();
    let p = test_params();
    let buyer = addr(9);
    let beat = |r: &mut Registry, now| {
        for h in [1, 2] {
            r.heartbeat(addr(h), Heartbeat::default(), now).unwrap();
        }
    };
    // Funded, never started: fails at the start timeout with a full refund.
    let unstarted = r
        .submit_job(buyer, job(GpuModel::H100, 1, "3"), 0)
        .unwrap()
        .id;
    r.escrow_opened(unstarted, 10).unwrap();
    // Started, then never reported: ends after its maximum duration and the grace.
    let mut long = job(GpuModel::H100, 1, "3");
    long.max_duration_ms = 120_000;
    let silent = r.submit_job(buyer, long, 0).unwrap().id;
    r.escrow_opened(silent, 10).unwrap();
    r.started(&addr(1), silent, Vec::new(), 20).unwrap();
    // Cancelled while running, and the host never stops it: ends at the grace.
    let mut longer = job(GpuModel::H100, 1, "3");
    longer.max_duration_ms = 3_600_000;
    let stubborn = r.submit_job(buyer, longer, 0).unwrap().id;
    r.escrow_opened(stubborn, 10).unwrap();
    r.started(&addr(1), stubborn, Vec::new(), 20).unwrap();
    r.cancel(&buyer, stubborn, 1_000).unwrap();

    let start_by = 10 + p.start_timeout_ms;
    let cancel_by = 1_000 + p.end_grace_ms;
    let end_by = 20 + 120_000 + p.end_grace_ms;
    let mut ended = Vec::new();
    for now in (0..=end_by + 1_000).step_by(250) {
        beat(&mut r, now);
        for e in r.tick(now) {
            ended.push((now, e));
        }
    }
    let close = |lease, reason| Effect::CloseEscrow { lease, reason };
    assert_eq!(
        ended,
        vec![
            (cancel_by, close(stubborn, CloseReason::Overdue)),
            (
                start_by.next_multiple_of(250),
                close(unstarted, CloseReason::NotStarted)
            ),
            (
                end_by.next_multiple_of(250),
                close(silent, CloseReason::Overdue)
            ),
        ]
    );
    assert_eq!(r.lease(stubborn).unwrap().state, LeaseState::Cancelled);
    assert_eq!(r.lease(unstarted).unwrap().state, LeaseState::Failed);
    assert_eq!(r.lease(silent).unwrap().state, LeaseState::Failed);
    assert!(r.leases().all(|l| l.state.is_terminal()));
    // Their GPUs are free again.
    r.submit_job(buyer, job(GpuModel::H100, 8, "3"), end_by + 2_000)
        .unwrap();
}

#[test]
fn restore_rebuilds_the_same_reservations() {
    let mut r = network();
    let a = r
        .submit_job(addr(9), job(GpuModel::H100, 7, "3"), 0)
        .unwrap()
        .id;
    let b = r
        .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap()
        .id;
    r.escrow_opened(a, 0).unwrap();
    r.cancel(&addr(9), b, 1).unwrap();
    let hosts = [addr(1), addr(2)].map(|a| r.host(&a).unwrap().clone());
    let leases: Vec<_> = r.leases().cloned().collect();
    let mut restored = Registry::restore(test_params(), hosts, leases, 5).unwrap();
    // Host 1 has exactly one GPU free (7 held by lease a), so two go to Virginia.
    assert_eq!(
        restored
            .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 6)
            .unwrap()
            .host,
        addr(1)
    );
    assert_eq!(
        restored
            .submit_job(addr(9), job(GpuModel::H100, 2, "3"), 6)
            .unwrap()
            .host,
        addr(2)
    );
    assert_eq!(restored.lease(a).unwrap().state, LeaseState::Starting);
    assert!(
        restored
            .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 6)
            .is_err()
    );
}

#[derive(Clone, Debug)]
enum Op {
    Submit { count: u16 },
    Fund { pick: usize },
    Finish { pick: usize },
    Cancel { pick: usize },
    Tick { advance_ms: u64, beat: bool },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (1u16..5).prop_map(|count| Op::Submit { count }),
        any::<usize>().prop_map(|pick| Op::Fund { pick }),
        any::<usize>().prop_map(|pick| Op::Finish { pick }),
        any::<usize>().prop_map(|pick| Op::Cancel { pick }),
        (0u64..4_000, any::<bool>()).prop_map(|(advance_ms, beat)| Op::Tick { advance_ms, beat }),
    ]
}

proptest! {
    #[test]
    fn no_gpu_is_ever_booked_twice(ops in proptest::collection::vec(op(), 1..80)) {
        let mut r = network();
        let mut now = 0;
        let mut ids: Vec<LeaseId> = Vec::new();
        let pick = |ids: &[LeaseId], i: usize| ids.get(i % ids.len().max(1)).copied();
        for op in ops {
            match op {
                Op::Submit { count } => {
                    if let Ok(l) = r.submit_job(addr(9), job(GpuModel::H100, count, "3"), now) {
                        ids.push(l.id);
                    }
                }
                Op::Fund { pick: i } => if let Some(id) = pick(&ids, i) { let _ = r.escrow_opened(id, 0); },
                Op::Finish { pick: i } => if let Some(id) = pick(&ids, i) {
                    let host = r.lease(id).unwrap().host;
                    let _ = r.finished(&host, id, Some(0), None, now);
                },
                Op::Cancel { pick: i } => if let Some(id) = pick(&ids, i) { let _ = r.cancel(&addr(9), id, now); },
                Op::Tick { advance_ms, beat } => {
                    now += advance_ms;
                    if beat {
                        r.heartbeat(addr(1), Heartbeat::default(), now).unwrap();
                    }
                    r.heartbeat(addr(2), Heartbeat::default(), now).unwrap();
                    r.tick(now);
                }
            }
            let mut held = HashSet::new();
            for l in r.leases().filter(|l| l.state.holds_capacity()) {
                prop_assert_eq!(l.gpu_indices.len(), l.gpu_count as usize);
                for &i in &l.gpu_indices {
                    prop_assert!(held.insert((l.host, i)), "GPU {} of {} held twice", i, l.host);
                }
            }
            let busy = r.containers().iter().filter(|c| c.state == gpumesh_types::ContainerState::Busy).count();
            let offline_held = r.leases().filter(|l| l.state.holds_capacity() && !r.host_online(&l.host)).map(|l| l.gpu_count as usize).sum::<usize>();
            prop_assert_eq!(busy + offline_held, held.len());
        }
    }
}

#[test]
fn containers_serve_only_once_staked() {
    let mut r = Registry::new(Params::local());
    r.register_host(
        addr(1),
        host_request("frankfurt", 50.11, 8.68, GpuModel::H100, 2, "2.5"),
        0,
    )
    .unwrap();
    let err = r
        .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap_err();
    assert!(err.to_string().contains("0 in standby"), "{err}");
    assert!(
        r.containers()
            .iter()
            .all(|c| c.state == gpumesh_types::ContainerState::AwaitingStake)
    );
    r.set_staked(&addr(1), 1, true).unwrap();
    let lease = r
        .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap();
    assert_eq!(lease.gpu_indices, vec![1], "only the staked GPU serves");
    assert!(
        r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
            .is_err()
    );
    assert!(r.set_staked(&addr(1), 9, true).is_err(), "no such GPU");
}

/// A network with checkers: containers wait for their capacity proof.
fn checked_network() -> Registry {
    let mut r = Registry::new(Params {
        checked: true,
        provable_models: vec![GpuModel::H100],
        ..test_params()
    });
    let mut request = host_request("frankfurt", 50.11, 8.68, GpuModel::H100, 2, "2.5");
    // Without a challenge endpoint, a checked network refuses the host.
    let refused = r.register_host(addr(1), request.clone(), 0).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::InvalidRequest);
    request.challenge_url = Some("http://127.0.0.1:7701".into());
    r.register_host(addr(1), request, 0).unwrap();
    r
}

fn c(host: u8, index: u16) -> gpumesh_types::ContainerRef {
    gpumesh_types::ContainerRef {
        host: addr(host),
        index,
    }
}

#[test]
fn containers_serve_once_their_proof_passes_and_a_rejection_stands() {
    use gpumesh_types::{ContainerState, FailReason};
    let mut r = checked_network();
    let states = |r: &Registry| r.containers().iter().map(|c| c.state).collect::<Vec<_>>();
    assert_eq!(states(&r), vec![ContainerState::Checking; 2]);
    assert!(
        r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 10)
            .is_err()
    );
    assert_eq!(r.check_targets(60_000, 10).len(), 2);
    assert!(r.check_targets(60_000, 10).iter().all(|t| t.capacity_due));

    assert_eq!(
        r.capacity_verdict(c(1, 0), Ok(50), 100, 20),
        Ok(CapacityDecision::Passed)
    );
    // A proof never made leaves the container as it was: the host counts as down.
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::Unreachable), 100, 20),
        Ok(CapacityDecision::Down(FailReason::Unreachable))
    );
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::Refused), 100, 20),
        Ok(CapacityDecision::Down(FailReason::Refused))
    );
    // A missed deadline gets a second proof, still checking; a second failure rejects.
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::DeadlineMissed), 100, 20),
        Ok(CapacityDecision::Retry(FailReason::DeadlineMissed))
    );
    assert_eq!(
        states(&r),
        vec![ContainerState::Standby, ContainerState::Checking]
    );
    assert!(r.check_targets(60_000, 25)[1].capacity_due);
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::BadOpening), 100, 30),
        Ok(CapacityDecision::Rejected {
            model: GpuModel::H100,
            reason: FailReason::BadOpening,
            offence: gpumesh_types::Offence::Underperformance,
        }),
        "a second failure rejects and asks for a slash"
    );
    assert_eq!(
        states(&r),
        vec![ContainerState::Standby, ContainerState::Rejected]
    );
    // A later pass does not bring a rejected GPU back, nor does a second rejection slash again.
    assert_eq!(
        r.capacity_verdict(c(1, 1), Ok(50), 100, 30),
        Ok(CapacityDecision::Unchanged)
    );
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::WrongRow), 100, 30),
        Ok(CapacityDecision::Unchanged)
    );
    assert_eq!(
        states(&r),
        vec![ContainerState::Standby, ContainerState::Rejected]
    );
    // Rejected GPUs are no longer checked; a passed one proves again when it is due, but
    // not while it serves a lease.
    let targets = r.check_targets(60_000, 50);
    assert_eq!(targets.len(), 1);
    assert!(!targets[0].capacity_due);
    assert!(r.check_targets(60_000, 60_020)[0].capacity_due);
    let lease = r
        .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 40)
        .unwrap();
    assert_eq!(lease.gpu_indices, vec![0]);
    let id = lease.id;
    assert!(!r.check_targets(60_000, 60_020)[0].capacity_due);
    r.cancel(&addr(9), id, 60_030).unwrap();
    assert!(r.check_targets(60_000, 60_040)[0].capacity_due);
}

#[test]
fn a_wrong_row_rejects_at_once_and_an_unprovable_model_is_not_registered() {
    use gpumesh_types::FailReason;
    let mut r = checked_network();
    assert_eq!(
        r.capacity_verdict(c(1, 0), Err(FailReason::BadPath), 100, 20),
        Ok(CapacityDecision::Rejected {
            model: GpuModel::H100,
            reason: FailReason::BadPath,
            offence: gpumesh_types::Offence::Malicious,
        })
    );
    // A proven container whose agent refuses a later proof is not offered until it
    // proves again; the host stays online.
    let state_of_1 = |r: &Registry| r.containers()[1].state;
    r.capacity_verdict(c(1, 1), Ok(50), 100, 20).unwrap();
    assert_eq!(state_of_1(&r), gpumesh_types::ContainerState::Standby);
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::Refused), 100, 80_000),
        Ok(CapacityDecision::Down(FailReason::Refused))
    );
    assert_eq!(state_of_1(&r), gpumesh_types::ContainerState::Checking);
    assert!(
        r.check_targets(60_000, 80_010)
            .iter()
            .find(|t| t.container == c(1, 1))
            .unwrap()
            .capacity_due
    );
    // A passed container that fails a later proof once is suspended, not rejected.
    r.capacity_verdict(c(1, 1), Ok(50), 100, 20).unwrap();
    assert_eq!(
        r.capacity_verdict(c(1, 1), Err(FailReason::DeadlineMissed), 100, 90_000),
        Ok(CapacityDecision::Retry(FailReason::DeadlineMissed))
    );
    let mut request = host_request("tokyo", 35.6, 139.7, GpuModel::Rtx4090, 1, "0.5");
    request.challenge_url = Some("http://127.0.0.1:7702".into());
    request.gpus[0].simulated = false;
    let refused = r.register_host(addr(2), request, 100).unwrap_err();
    assert_eq!(refused.code(), ErrorCode::NoProofRate);
    assert!(refused.to_string().contains("RTX4090"), "{refused}");
    assert!(refused.to_string().contains("H100"), "{refused}");
}

#[test]
fn only_a_quorum_brings_back_a_host_it_found_down() {
    use gpumesh_types::ContainerState;
    let mut r = checked_network();
    r.capacity_verdict(c(1, 0), Ok(50), 100, 20).unwrap();
    r.capacity_verdict(c(1, 1), Ok(50), 100, 20).unwrap();
    let id = r
        .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 30)
        .unwrap()
        .id;
    r.escrow_opened(id, 0).unwrap();
    r.started(&addr(1), id, Vec::new(), 40).unwrap();
    r.take_dirty();

    let effects = r.liveness_verdict(&addr(1), false, 100);
    assert!(matches!(effects[0], Effect::HostOffline { .. }));
    assert!(effects.contains(&Effect::CloseEscrow {
        lease: id,
        reason: CloseReason::HostLost
    }));
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::SlashDowntime { .. }))
    );
    assert_eq!(r.lease(id).unwrap().state, LeaseState::Failed);
    assert!(
        r.containers()
            .iter()
            .all(|c| c.state == ContainerState::Offline)
    );
    // Its own heartbeat and a re-registration do not override the verdict.
    r.heartbeat(addr(1), Heartbeat::default(), 200).unwrap();
    let mut again = host_request("frankfurt", 50.11, 8.68, GpuModel::H100, 2, "2.5");
    again.challenge_url = Some("http://127.0.0.1:7701".into());
    r.register_host(addr(1), again, 210).unwrap();
    assert!(
        r.containers()
            .iter()
            .all(|c| c.state == ContainerState::Offline)
    );
    assert!(
        r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 220)
            .is_err()
    );
    // A second down verdict changes nothing more; an up verdict brings it back.
    assert!(r.liveness_verdict(&addr(1), false, 300).is_empty());
    assert!(r.liveness_verdict(&addr(1), true, 400).is_empty());
    assert!(
        r.containers()
            .iter()
            .all(|c| c.state == ContainerState::Standby)
    );
    let host = r.host(&addr(1)).unwrap();
    assert_eq!((host.up_verdicts, host.down_verdicts), (1, 2));
}

#[test]
fn made_up_country_codes_are_refused_and_real_ones_still_register() {
    let mut r = Registry::new(test_params());
    let mut refused = 0;
    // Every two-letter code in three spellings: 2,028 tries.
    for a in b'A'..=b'Z' {
        for b in b'A'..=b'Z' {
            for spelling in [
                [a, b],
                [a.to_ascii_lowercase(), b],
                [a, b.to_ascii_lowercase()],
            ] {
                let code = String::from_utf8(spelling.to_vec()).unwrap();
                match code.parse::<gpumesh_types::Country>() {
                    Err(e) => {
                        assert!(e.to_string().contains("ISO 3166-1"), "{e}");
                        refused += 1;
                    }
                    // An assigned code: a host of its own there, until the matcher holds
                    // every country in the world.
                    Ok(country) if spelling == [a, b] => {
                        let mut request = host_request(&code, 10.0, 10.0, GpuModel::A10, 1, "1");
                        request.location.country = country;
                        let n = r.host_count() as u64;
                        let host = Address::left_padding_from(&(1000 + n).to_be_bytes());
                        r.register_host(host, request, 0).unwrap();
                    }
                    Ok(_) => {}
                }
            }
        }
    }
    let assigned = r.host_count();
    assert_eq!(assigned, 249, "ISO 3166-1 assigns 249 codes");
    assert_eq!(refused, 3 * (676 - assigned));
    // A request decodes any two letters (so that old stores still open), and the
    // registry refuses the unassigned ones: as a host's country, and in a job's filters.
    let mut made_up = host_request("qq", 10.0, 10.0, GpuModel::A10, 1, "1");
    made_up.location = serde_json::from_str(r#"{"lat":10.0,"lon":10.0,"country":"QQ"}"#).unwrap();
    let err = r.register_host(addr(2), made_up, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidLocation, "{err}");
    assert!(
        err.to_string().contains("\"QQ\" is not an assigned"),
        "{err}"
    );
    let mut filtered = job(GpuModel::H100, 1, "3");
    filtered.exclude_countries = vec![serde_json::from_str(r#""ZZ""#).unwrap()];
    let err = r.submit_job(addr(9), filtered, 0).unwrap_err();
    assert_eq!(err.code(), ErrorCode::InvalidLocation, "{err}");
    r.register_host(
        addr(1),
        host_request("frankfurt", 50.11, 8.68, GpuModel::H100, 8, "2.5"),
        0,
    )
    .unwrap();
    r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap();
}

#[test]
fn one_buyer_cannot_hold_every_gpu_with_unfunded_matches() {
    let mut r = Registry::new(Params {
        max_unfunded_matches: 3,
        ..test_params()
    });
    r.register_host(
        addr(1),
        host_request("frankfurt", 50.11, 8.68, GpuModel::H100, 8, "2.5"),
        0,
    )
    .unwrap();
    let held: Vec<LeaseId> = (0..3)
        .map(|_| {
            r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
                .unwrap()
                .id
        })
        .collect();
    let refused = r
        .submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap_err();
    assert_eq!(refused.code(), ErrorCode::RateLimited, "{refused}");
    // Others still get GPUs; funding, cancelling or expiry frees the buyer's allowance.
    r.submit_job(addr(10), job(GpuModel::H100, 1, "3"), 0)
        .unwrap();
    r.escrow_opened(held[0], 0).unwrap();
    r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap();
    r.cancel(&addr(9), held[1], 0).unwrap();
    r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
        .unwrap();
    assert!(
        r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 0)
            .is_err()
    );
    r.heartbeat(addr(1), Heartbeat::default(), 30_001).unwrap();
    r.tick(30_001);
    r.submit_job(addr(9), job(GpuModel::H100, 1, "3"), 30_002)
        .unwrap();
}

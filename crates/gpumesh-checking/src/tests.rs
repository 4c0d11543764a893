//! The protocol against honest, colluding, lazy and late checkers.

use super::*;
use gpumesh_types::{CheckResult, CheckingParams};
use proptest::prelude::*;

const GENESIS_MS: u64 = 1_000_000;

fn addr(tag: u8, i: u64) -> Address {
    let mut m = vec![tag];
    m.extend_from_slice(&i.to_be_bytes());
    Address::from_slice(&keccak256(m)[12..])
}

fn params(n: u8, checkers: usize, canary_per_mille: u16) -> CheckingParams {
    CheckingParams {
        n,
        canary_per_mille,
        ..CheckingParams::local((0..checkers as u64).map(|i| addr(b'k', i)).collect())
    }
}

fn targets(count: u64, capacity_due: bool) -> Vec<Target> {
    (0..count)
        .map(|i| Target {
            container: ContainerRef {
                host: addr(b'h', i / 4),
                index: (i % 4) as u16,
            },
            endpoint: format!("http://127.0.0.1:9/{i}"),
            gpu: GpuModel::H100,
            simulated: true,
            capacity_due,
            delivery: None,
        })
        .collect()
}

/// `targets`, every third with a lease in progress to check delivery of.
fn with_leases(mut targets: Vec<Target>) -> Vec<Target> {
    for (i, t) in targets.iter_mut().enumerate().filter(|(i, _)| i % 3 == 0) {
        t.delivery = Some(DeliveryProbe {
            lease: LeaseId(100 + i as u64),
            service: (i % 2 == 0).then(|| format!("http://127.0.0.1:9/svc{i}")),
        });
    }
    targets
}

struct World {
    checking: Checking,
    period: u64,
}

impl World {
    fn new(p: CheckingParams) -> World {
        World {
            checking: Checking::new(p, GENESIS_MS, []),
            period: 0,
        }
    }

    fn start(&self) -> u64 {
        GENESIS_MS + self.period * self.checking.params().period_ms
    }

    fn begin(&mut self, targets: Vec<Target>) {
        let block = keccak256(self.period.to_be_bytes());
        self.checking.begin_period(
            self.period,
            self.period,
            block,
            targets,
            B256::repeat_byte(7),
            "http://indexer/v1/decoy",
        );
    }

    /// Every checker answers its tasks (as `answer` says) in one report at `at_ms` into
    /// the period.
    fn report_all(&mut self, at_ms: u64, answer: impl Fn(&Address, &CheckTask) -> CheckOutcome) {
        let now = self.start() + at_ms;
        for checker in self.checking.eligible(now) {
            let Some((period, _, tasks)) = self.checking.tasks(&checker, now) else {
                continue;
            };
            if tasks.is_empty() {
                continue;
            }
            let results = tasks
                .iter()
                .map(|t| CheckResult {
                    container: t.container,
                    kind: t.kind,
                    outcome: answer(&checker, t),
                })
                .collect();
            let report = CheckReport {
                period,
                location: None,
                results,
            };
            self.checking
                .report(checker, &report, now)
                .expect("an assigned checker's report is taken");
        }
    }

    fn close(&mut self) -> PeriodOutcome {
        let p = self.checking.params().clone();
        let end = self.start() + p.period_ms + p.report_grace_ms + p.proof_window_ms + 1;
        let out = self.checking.close_due(end);
        // Two stages: liveness, then capacity once the proofs' window is over.
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|o| o.period == self.period));
        self.period += 1;
        out.into_iter()
            .reduce(|mut a, b| {
                a.verdicts.extend(b.verdicts);
                a.banned.extend(b.banned);
                a.undecided += b.undecided;
                a
            })
            .unwrap()
    }
}

/// Everyone honest about a world that is up, except `liar`.
fn one_liar(c: &Address, t: &CheckTask, liar: &Address) -> CheckOutcome {
    if c == liar {
        lie(t, true)
    } else {
        honest(t, true)
    }
}

fn honest(t: &CheckTask, truth_up: bool) -> CheckOutcome {
    let decoy = t.endpoint.contains("decoy");
    match (t.kind, truth_up && !decoy) {
        (TaskKind::Liveness | TaskKind::Delivery, true) => CheckOutcome::Up { rtt_us: 800 },
        (TaskKind::Delivery, false) => CheckOutcome::Failed {
            reason: FailReason::NotDelivered,
        },
        (TaskKind::Capacity, true) => CheckOutcome::Valid { host_ms: 70 },
        (TaskKind::Liveness, false) => CheckOutcome::Failed {
            reason: FailReason::Unreachable,
        },
        (TaskKind::Capacity, false) => CheckOutcome::Failed {
            reason: FailReason::WrongRow,
        },
    }
}

fn lie(t: &CheckTask, truth_up: bool) -> CheckOutcome {
    honest(
        &CheckTask {
            endpoint: String::new(),
            ..t.clone()
        },
        !truth_up,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    /// N colluders among a container's 2N+1 checkers, answering the opposite of the
    /// truth, never decide a verdict: every verdict is the truth, and every colluder that
    /// voted was in the minority.
    #[test]
    fn n_colluders_of_2n_plus_1_cannot_flip_a_verdict(
        n in 1u8..3, extra in 0usize..6, count in 1u64..30, truth_up in any::<bool>(), pick in any::<u64>(),
    ) {
        let q = 2 * n as usize + 1;
        let mut w = World::new(params(n, q + extra, 0));
        let targets = with_leases(targets(count, true));
        let leases = targets.iter().filter(|t| t.delivery.is_some()).count() as u64;
        w.begin(targets);
        let assignment = w.checking.assignment(0, 0, usize::MAX).unwrap();
        // For each container, the adversary corrupts N of exactly its quorum.
        let mut colluding: std::collections::HashSet<(ContainerRef, Address)> = Default::default();
        for a in &assignment.containers {
            prop_assert_eq!(a.checkers.len(), q);
            let start = (pick as usize) % q;
            for j in 0..n as usize {
                colluding.insert((a.container, a.checkers[(start + j) % q]));
            }
        }
        w.report_all(100, |c, t| if colluding.contains(&(t.container, *c)) { lie(t, truth_up) } else { honest(t, truth_up) });
        let out = w.close();
        prop_assert_eq!(out.verdicts.len() as u64, 2 * count + leases);
        prop_assert_eq!(out.undecided, 0);
        for v in &out.verdicts {
            prop_assert_eq!(v.passed, truth_up);
            // A delivery verdict names its lease; no other does.
            prop_assert_eq!(v.lease.is_some(), v.kind == TaskKind::Delivery);
            prop_assert_eq!(v.agreeing.len(), n as usize + 1);
            for a in &v.agreeing {
                prop_assert!(!colluding.contains(&(v.container, *a)));
            }
        }
    }
}

#[test]
fn a_lazy_checker_that_always_says_up_is_caught_by_canaries_and_banned() {
    let mut w = World::new(params(1, 6, 1_000));
    let lazy = addr(b'k', 3);
    for _ in 0..2 {
        w.begin(targets(24, w.period == 0));
        // Every real host is up: only the canaries tell the lazy checker apart.
        w.report_all(100, |c, t| {
            if *c == lazy {
                honest(
                    &CheckTask {
                        endpoint: String::new(),
                        ..t.clone()
                    },
                    true,
                )
            } else {
                honest(t, true)
            }
        });
        let out = w.close();
        assert!(out.verdicts.iter().all(|v| v.passed));
    }
    let record = w.checking.checker(&lazy).unwrap();
    assert_eq!(record.canaries_failed, 2);
    assert!(record.banned(w.start()), "{record:?}");
    assert!(record.ban_reason.as_ref().unwrap().contains("canary"));
    // Every honest checker passed its canaries and is not banned.
    for c in w.checking.checkers().filter(|c| c.address != lazy) {
        assert_eq!(
            (c.canaries_passed, c.canaries_failed, c.minority),
            (2, 0, 0)
        );
        assert!(!c.banned(w.start()));
    }
    // Banned: no tasks, no report, no reward.
    w.begin(targets(24, false));
    assert!(!w.checking.eligible(w.start()).contains(&lazy));
    let report = CheckReport {
        period: w.period,
        location: None,
        results: vec![CheckResult {
            container: targets(1, false)[0].container,
            kind: TaskKind::Liveness,
            outcome: CheckOutcome::Up { rtt_us: 1 },
        }],
    };
    let err = w
        .checking
        .report(lazy, &report, w.start() + 10)
        .unwrap_err();
    assert_eq!(err.code(), ErrorCode::CheckerBanned);
    let epoch = w.checking.epoch_checkers(w.start());
    assert!(epoch.iter().all(|(a, ..)| *a != lazy));
    assert_eq!(epoch.len(), 5);
}

#[test]
fn two_minority_results_in_a_week_ban_and_one_does_not() {
    let p = params(1, 3, 0);
    let week = p.ban_window_ms;
    let odd = addr(b'k', 0);
    let mut w = World::new(p);
    // One container, three checkers: each checks it every period.
    w.begin(targets(1, false));
    w.report_all(100, |c, t| one_liar(c, t, &odd));
    w.close();
    assert_eq!(w.checking.checker(&odd).unwrap().minority, 1);
    assert!(!w.checking.checker(&odd).unwrap().banned(w.start()));
    // A week later the first one has expired: a second alone does not ban.
    w.period += week / w.checking.params().period_ms;
    w.begin(targets(1, false));
    w.report_all(100, |c, t| one_liar(c, t, &odd));
    w.close();
    assert!(!w.checking.checker(&odd).unwrap().banned(w.start()));
    // A third within the week of the second does.
    w.begin(targets(1, false));
    w.report_all(100, |c, t| one_liar(c, t, &odd));
    let out = w.close();
    assert_eq!(out.banned, vec![odd]);
    let r = w.checking.checker(&odd).unwrap();
    assert_eq!(r.minority, 3);
    assert!(r.banned_until_ms.is_some());
    assert!(r.banned(w.start() + w.checking.params().ban_ms - 10_000));
    assert!(!r.banned(w.start() + w.checking.params().ban_ms + 10_000));
}

#[test]
fn the_assignment_is_recomputed_from_the_block_hash_and_the_checkers() {
    let mut w = World::new(params(1, 40, 0));
    w.begin(targets(50, false));
    let view = w.checking.assignment(0, 0, usize::MAX).unwrap();
    assert_eq!(view.seed, period_seed(0, &view.block_hash));
    let draw = Draw::new(view.seed, view.eligible.clone());
    for a in &view.containers {
        assert_eq!(a.checkers, draw.rank_addresses(&a.container, 3));
    }
}

fn one(container: ContainerRef, kind: TaskKind, outcome: CheckOutcome) -> CheckResult {
    CheckResult {
        container,
        kind,
        outcome,
    }
}

#[test]
fn bad_reports_are_refused_whole_with_a_code() {
    let mut w = World::new(params(1, 5, 0));
    let t = targets(4, false);
    w.begin(t.clone());
    let view = w.checking.assignment(0, 0, usize::MAX).unwrap();
    let a = &view.containers[0];
    let mine = a.checkers[0];
    let other = view
        .containers
        .iter()
        .find(|x| !x.checkers.contains(&mine))
        .map(|x| x.container);
    let up = CheckOutcome::Up { rtt_us: 5 };
    let now = w.start() + 100;
    let report = |results| CheckReport {
        period: 0,
        location: None,
        results,
    };
    let check = |w: &mut World, who: Address, r: CheckReport, at: u64, code: ErrorCode| {
        let err = w.checking.report(who, &r, at).unwrap_err();
        assert_eq!(err.code(), code, "{err}");
    };
    // Not a licence holder.
    check(
        &mut w,
        addr(b'x', 1),
        report(vec![one(a.container, TaskKind::Liveness, up)]),
        now,
        ErrorCode::NotAChecker,
    );
    // A container it was not given, alongside one it was: neither is taken.
    let other = other.expect("five checkers, three a container: one is not this one's");
    check(
        &mut w,
        mine,
        report(vec![
            one(a.container, TaskKind::Liveness, up),
            one(other, TaskKind::Liveness, up),
        ]),
        now,
        ErrorCode::NotAssigned,
    );
    // A capacity result where no proof is due.
    check(
        &mut w,
        mine,
        report(vec![one(
            a.container,
            TaskKind::Capacity,
            CheckOutcome::Valid { host_ms: 1 },
        )]),
        now,
        ErrorCode::NotAssigned,
    );
    // An outcome that does not answer the task.
    check(
        &mut w,
        mine,
        report(vec![one(
            a.container,
            TaskKind::Liveness,
            CheckOutcome::Valid { host_ms: 1 },
        )]),
        now,
        ErrorCode::InvalidRequest,
    );
    // The same result twice in one report.
    check(
        &mut w,
        mine,
        report(vec![
            one(a.container, TaskKind::Liveness, up),
            one(a.container, TaskKind::Liveness, up),
        ]),
        now,
        ErrorCode::DuplicateResult,
    );
    // Nothing was taken so far; now one good report, then the same again.
    w.checking
        .report(
            mine,
            &report(vec![one(a.container, TaskKind::Liveness, up)]),
            now,
        )
        .unwrap();
    check(
        &mut w,
        mine,
        report(vec![one(a.container, TaskKind::Liveness, up)]),
        now + 1,
        ErrorCode::DuplicateResult,
    );
    // A period that is not open, and this one after its grace.
    check(
        &mut w,
        mine,
        CheckReport {
            period: 5,
            ..report(vec![one(a.container, TaskKind::Liveness, up)])
        },
        now,
        ErrorCode::LateReport,
    );
    let p = w.checking.params().clone();
    let after_grace = w.start() + p.period_ms + p.report_grace_ms + 1;
    check(
        &mut w,
        a.checkers[1],
        report(vec![one(a.container, TaskKind::Liveness, up)]),
        after_grace,
        ErrorCode::LateReport,
    );
    // Only the one good result counted: no verdict with a single vote.
    let out = w.close();
    assert!(out.verdicts.is_empty());
    assert_eq!(out.undecided, 1);
}

#[test]
fn a_silent_primary_loses_its_task_to_the_next_in_rank() {
    let mut w = World::new(params(1, 6, 0));
    w.begin(targets(1, false));
    let c = targets(1, false)[0].container;
    let p = w.checking.params().clone();
    let ranked = {
        let view = w.checking.assignment(0, 0, usize::MAX).unwrap();
        Draw::new(view.seed, view.eligible).rank_addresses(&c, 6)
    };
    let (silent, backup) = (ranked[0], ranked[3]);
    let before = w.start() + p.takeover_ms - 1;
    assert_eq!(w.checking.tasks(&backup, before).unwrap().2.len(), 0);
    assert_eq!(w.checking.tasks(&silent, before).unwrap().2.len(), 1);
    // The two others report in time; the first does not.
    let up = CheckOutcome::Up { rtt_us: 5 };
    for &k in &ranked[1..3] {
        w.checking
            .report(
                k,
                &CheckReport {
                    period: 0,
                    location: None,
                    results: vec![one(c, TaskKind::Liveness, up)],
                },
                before,
            )
            .unwrap();
    }
    let after = w.start() + p.takeover_ms + 1;
    assert_eq!(w.checking.tasks(&silent, after).unwrap().2.len(), 0);
    assert_eq!(w.checking.tasks(&backup, after).unwrap().2.len(), 1);
    assert_eq!(w.checking.tasks(&ranked[4], after).unwrap().2.len(), 0);
    let late = CheckReport {
        period: 0,
        location: None,
        results: vec![one(c, TaskKind::Liveness, up)],
    };
    assert_eq!(
        w.checking.report(silent, &late, after).unwrap_err().code(),
        ErrorCode::NotAssigned
    );
    w.checking.report(backup, &late, after).unwrap();
    let out = w.close();
    assert_eq!(out.verdicts.len(), 1);
    assert_eq!(out.verdicts[0].votes, 3);
    assert!(out.verdicts[0].agreeing.contains(&backup));
}

#[test]
fn epoch_lists_credited_tasks_and_uptime() {
    let mut w = World::new(params(1, 3, 0));
    let silent = addr(b'k', 2);
    for _ in 0..4 {
        w.begin(targets(2, false));
        let now = w.start() + 100;
        for checker in w.checking.eligible(now) {
            if checker == silent && w.period.is_multiple_of(2) {
                continue;
            }
            let (period, _, tasks) = w.checking.tasks(&checker, now).unwrap();
            let results = tasks
                .iter()
                .map(|t| one(t.container, t.kind, honest(t, true)))
                .collect();
            w.checking
                .report(
                    checker,
                    &CheckReport {
                        period,
                        location: None,
                        results,
                    },
                    now,
                )
                .unwrap();
        }
        w.close();
    }
    let epoch = w.checking.epoch_checkers(w.start());
    assert_eq!(epoch.len(), 3);
    for (a, credited, uptime) in &epoch {
        if *a == silent {
            assert_eq!((*credited, *uptime), (4, 5_000));
        } else {
            assert_eq!((*credited, *uptime), (8, 10_000));
        }
    }
    // Reading the list changes nothing.
    assert_eq!(w.checking.epoch_checkers(w.start()), epoch);
    // A close takes out what it counted; what a checker earned after the close read the
    // counters (here: one task and one period of the first) stays for the next epoch.
    let mut counted = w.checking.epoch_counts(w.start());
    let first = counted[0].checker;
    counted[0].credited -= 1;
    counted[0].periods -= 1;
    counted[0].reported -= 1;
    w.checking.end_epoch(&counted);
    assert_eq!(
        w.checking.epoch_counts(w.start()),
        vec![EpochCount {
            checker: first,
            credited: 1,
            periods: 1,
            reported: 1,
            banned: false,
        }]
    );
    let rest = w.checking.epoch_counts(w.start());
    w.checking.end_epoch(&rest);
    assert!(w.checking.epoch_checkers(w.start()).is_empty());
}

#[test]
fn tiers_follow_uptime_and_proof_speed() {
    assert_eq!(tier(0, 0, None), 2);
    assert_eq!(tier(99, 1, Some(true)), 1);
    assert_eq!(tier(99, 1, Some(false)), 2);
    assert_eq!(tier(95, 5, None), 2);
    assert_eq!(tier(94, 6, None), 3);
}

#[test]
fn a_containers_proofs_take_turns_and_are_decided_after_their_window() {
    let mut w = World::new(params(1, 3, 0));
    let p = w.checking.params().clone();
    w.begin(targets(1, true));
    let c = targets(1, true)[0].container;
    let now = w.start() + 10;
    // Each of the three checkers proves in its own slot.
    let mut starts: Vec<u64> = w
        .checking
        .eligible(now)
        .iter()
        .flat_map(|k| w.checking.tasks(k, now).unwrap().2)
        .filter(|t| t.kind == TaskKind::Capacity)
        .map(|t| t.start_at_ms.unwrap() - w.start())
        .collect();
    starts.sort_unstable();
    assert_eq!(starts, vec![0, p.proof_slot_ms(), 2 * p.proof_slot_ms()]);
    // Liveness is decided at the end and grace; the proofs only after their window, and
    // a capacity result is still taken in between.
    w.report_all(100, |_, t| match t.kind {
        TaskKind::Liveness | TaskKind::Delivery => CheckOutcome::Up { rtt_us: 1 },
        TaskKind::Capacity => CheckOutcome::Valid { host_ms: 1 },
    });
    // While the round is out, the next period gives no capacity task for the container.
    w.checking
        .begin_period(1, 1, B256::ZERO, targets(1, true), B256::ZERO, "");
    let next = w.start() + p.period_ms + 10;
    assert!(w.checking.eligible(next).iter().all(|k| {
        w.checking
            .tasks(k, next)
            .unwrap()
            .2
            .iter()
            .all(|t| t.kind == TaskKind::Liveness)
    }));
    let after_grace = w.start() + p.period_ms + p.report_grace_ms + 1;
    let first = w.checking.close_due(after_grace);
    assert_eq!(first.len(), 1);
    assert!(
        first[0]
            .verdicts
            .iter()
            .all(|v| v.kind == TaskKind::Liveness && v.container == c)
    );
    let late_liveness = CheckReport {
        period: 0,
        location: None,
        results: vec![one(c, TaskKind::Liveness, CheckOutcome::Up { rtt_us: 1 })],
    };
    let checker = w.checking.eligible(after_grace)[0];
    assert_eq!(
        w.checking
            .report(checker, &late_liveness, after_grace)
            .unwrap_err()
            .code(),
        ErrorCode::LateReport
    );
    let last = w
        .checking
        .close_due(after_grace + p.proof_window_ms)
        .into_iter()
        .find(|o| o.period == 0)
        .unwrap();
    assert_eq!(last.verdicts.len(), 1);
    assert_eq!(
        (last.verdicts[0].kind, last.verdicts[0].passed),
        (TaskKind::Capacity, true)
    );
}

#[test]
fn the_assignment_comes_in_pages() {
    let mut w = World::new(params(1, 5, 0));
    w.begin(targets(25, false));
    let all = w.checking.assignment(0, 0, usize::MAX).unwrap();
    assert_eq!((all.containers.len(), all.next), (25, None));
    let mut pages = Vec::new();
    let mut from = Some(0);
    while let Some(f) = from {
        let page = w.checking.assignment(0, f as usize, 10).unwrap();
        assert!(page.containers.len() <= 10);
        pages.extend(page.containers);
        from = page.next;
    }
    assert_eq!(pages, all.containers);
    assert!(
        w.checking
            .assignment(0, 40, 10)
            .unwrap()
            .containers
            .is_empty()
    );
    assert!(w.checking.assignment(7, 0, 10).is_none());
}

#[test]
fn a_lease_no_quorum_decided_is_reported_unknown_and_a_decided_one_is_not() {
    let mut w = World::new(params(1, 6, 0));
    let first_targets = with_leases(targets(9, false));
    let leases: Vec<LeaseId> = first_targets
        .iter()
        .filter_map(|t| Some(t.delivery.as_ref()?.lease))
        .collect();
    assert_eq!(leases.len(), 3);
    w.begin(first_targets);
    let start = w.start();
    // Checkers answer everything but the first lease's delivery.
    let first = leases[0];
    w.report_all(100, |_, t| {
        if t.delivery.as_ref().is_some_and(|d| d.lease == first) {
            CheckOutcome::Failed {
                reason: FailReason::Unreachable,
            }
        } else {
            honest(t, true)
        }
    });
    let out = w.close();
    let decided: Vec<LeaseId> = out.verdicts.iter().filter_map(|v| v.lease).collect();
    assert_eq!(decided.len(), 3, "every lease's delivery decided");
    assert!(out.delivery_unknown.is_empty());
    assert!(
        out.verdicts
            .iter()
            .filter(|v| v.lease == Some(first))
            .all(|v| !v.passed && v.reason == Some(FailReason::Unreachable))
    );
    // A period in which nobody reported decides nothing: every lease is unknown.
    w.begin(with_leases(targets(9, false)));
    let out = w.close();
    assert!(out.verdicts.is_empty());
    let unknown: Vec<LeaseId> = out.delivery_unknown.iter().map(|u| u.0).collect();
    assert_eq!(unknown, leases);
    assert!(out.delivery_unknown.iter().all(|u| u.1 > start));
}

/// A malicious verdict needs N+1 results that are evidence of a false proof: one checker
/// claiming a wrong row beside one that saw a missed deadline makes an underperforming
/// verdict, and beside one that could not reach the agent a down one.
#[test]
fn evidence_of_a_false_proof_needs_a_quorum_of_its_own() {
    let capacity_reason = |answers: [FailReason; 3]| {
        let mut w = World::new(params(1, 3, 0));
        w.begin(targets(1, true));
        let checkers = w.checking.eligible(w.start());
        w.report_all(100, |c, t| match t.kind {
            TaskKind::Capacity => CheckOutcome::Failed {
                reason: answers[checkers.iter().position(|k| k == c).unwrap()],
            },
            _ => CheckOutcome::Up { rtt_us: 1 },
        });
        let verdict = w
            .close()
            .verdicts
            .into_iter()
            .find(|v| v.kind == TaskKind::Capacity)
            .unwrap();
        assert!(!verdict.passed);
        verdict.reason.unwrap()
    };
    use FailReason::{BadPath, DeadlineMissed, Unreachable, WrongRow};
    assert_eq!(capacity_reason([BadPath, BadPath, DeadlineMissed]), BadPath);
    assert_eq!(
        capacity_reason([WrongRow, BadPath, Unreachable]).class(),
        gpumesh_types::FailureClass::Malicious
    );
    assert_eq!(
        capacity_reason([WrongRow, DeadlineMissed, DeadlineMissed]),
        DeadlineMissed
    );
    assert_eq!(
        capacity_reason([WrongRow, Unreachable, Unreachable]),
        Unreachable
    );
    assert_eq!(
        capacity_reason([WrongRow, DeadlineMissed, Unreachable]).class(),
        gpumesh_types::FailureClass::Down,
        "without a quorum of evidence, a tie goes to the least severe"
    );
}

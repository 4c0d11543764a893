//! The checkers' protocol, as a deterministic state machine (docs/checking.md).
//!
//! A period at a time: [`Checking::begin_period`] draws every container's 2N+1 checkers
//! by rendezvous hashing over the eligible checkers ([`assign`]), adds secret canary
//! tasks whose answers are known, and serves each checker its tasks
//! ([`Checking::tasks`]). Reports are checked result by result against the assignment
//! ([`Checking::report`]): unassigned, late and repeated results are refused and the
//! whole batch changes nothing. When the period's grace is over,
//! [`Checking::close_period`] takes the majority of each container's results as its
//! verdict, credits the checkers that agreed, counts the others' minority results and
//! failed canaries, and bans a checker with too many in a week. The indexer applies the
//! verdicts (states, tiers, slashes) and pays credited tasks through the ledger's epoch
//! ([`epoch`]). No I/O, no clock: time comes in as arguments, randomness as seeds.

pub mod assign;
pub mod epoch;

use std::collections::{BTreeMap, HashMap};

use alloy_primitives::{Address, B256, keccak256};
use gpumesh_types::{
    CheckOutcome, CheckReport, CheckTask, CheckerTasks, CheckerView, CheckingParams,
    ContainerAssignment, ContainerRef, DeliveryProbe, ErrorCode, FailReason, GpuModel, LeaseId,
    TaskKind,
};
use serde::{Deserialize, Serialize};

pub use assign::{Draw, period_seed};

/// A container to check in a period, as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub container: ContainerRef,
    pub endpoint: String,
    pub gpu: GpuModel,
    pub simulated: bool,
    /// Its capacity proof is due (never passed, or older than the proof interval).
    pub capacity_due: bool,
    /// A lease in progress on it to check delivery of (on the lease's first GPU only).
    pub delivery: Option<DeliveryProbe>,
}

/// A checker's standing, as stored.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckerRecord {
    pub address: Address,
    pub credited: u64,
    pub minority: u64,
    pub canaries_passed: u64,
    pub canaries_failed: u64,
    /// Times of minority results within the ban window.
    pub minority_at: Vec<u64>,
    pub banned_until_ms: Option<u64>,
    pub ban_reason: Option<String>,
    pub periods_with_tasks: u64,
    pub periods_reported: u64,
    /// This epoch's credited tasks and periods, for its rewards.
    pub epoch_credited: u64,
    pub epoch_periods: u64,
    pub epoch_reported: u64,
}

/// One checker's epoch counters as an epoch close reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochCount {
    pub checker: Address,
    pub credited: u64,
    pub periods: u64,
    pub reported: u64,
    /// Banned when the close read it: it earns nothing this epoch.
    pub banned: bool,
}

/// The epoch's checker list from its counts: each checker not banned with credited tasks,
/// its credits and its uptime (periods reported of periods with tasks, in basis points).
pub fn epoch_tasks(counts: &[EpochCount]) -> Vec<CheckerTasks> {
    counts
        .iter()
        .filter(|c| c.credited > 0 && !c.banned)
        .map(|c| {
            let uptime = (c.reported.min(c.periods) * 10_000)
                .checked_div(c.periods)
                .unwrap_or(10_000) as u16;
            (c.checker, c.credited.min(u32::MAX as u64) as u32, uptime)
        })
        .collect()
}

impl CheckerRecord {
    pub fn banned(&self, now_ms: u64) -> bool {
        self.banned_until_ms.is_some_and(|t| now_ms < t)
    }

    pub fn view(&self, now_ms: u64) -> CheckerView {
        let decided = self.credited + self.minority;
        CheckerView {
            address: self.address,
            credited: self.credited,
            minority: self.minority,
            canaries_passed: self.canaries_passed,
            canaries_failed: self.canaries_failed,
            agreement_bps: (self.credited * 10_000)
                .checked_div(decided)
                .unwrap_or(10_000) as u32,
            periods_reported: self.periods_reported,
            banned_until_ms: self.banned_until_ms.filter(|_| self.banned(now_ms)),
            ban_reason: self.ban_reason.clone().filter(|_| self.banned(now_ms)),
        }
    }
}

/// Why a report was refused; nothing of it was taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckingError {
    #[error("{0} holds no checker licence")]
    NotAChecker(Address),
    #[error("checker {0} is banned until {1} (ms since the Unix epoch)")]
    Banned(Address, u64),
    #[error("{0}")]
    Late(String),
    #[error("{0}")]
    NotAssigned(String),
    #[error("{0}")]
    Duplicate(String),
    #[error("{0}")]
    Invalid(String),
}

impl CheckingError {
    pub fn code(&self) -> ErrorCode {
        match self {
            CheckingError::NotAChecker(_) => ErrorCode::NotAChecker,
            CheckingError::Banned(..) => ErrorCode::CheckerBanned,
            CheckingError::Late(_) => ErrorCode::LateReport,
            CheckingError::NotAssigned(_) => ErrorCode::NotAssigned,
            CheckingError::Duplicate(_) => ErrorCode::DuplicateResult,
            CheckingError::Invalid(_) => ErrorCode::InvalidRequest,
        }
    }
}

/// The quorum's answer for one task of one container in one period.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    pub container: ContainerRef,
    pub kind: TaskKind,
    pub passed: bool,
    /// For a delivery verdict: the lease it is about.
    pub lease: Option<LeaseId>,
    /// The start of the period whose checks it decides (probes run after it).
    pub period_start_ms: u64,
    /// The most common reason among the failing results, when it failed.
    pub reason: Option<FailReason>,
    /// Medians over the agreeing results.
    pub rtt_us: Option<u64>,
    pub host_ms: Option<u64>,
    /// The checkers that agreed, ascending.
    pub agreeing: Vec<Address>,
    pub votes: u8,
}

/// What closing a period decided.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeriodOutcome {
    pub period: u64,
    pub verdicts: Vec<Verdict>,
    /// Checkers banned by this period's results.
    pub banned: Vec<Address>,
    /// Containers that got results but no majority.
    pub undecided: u32,
    /// Leases whose delivery was to be checked in the period but got no verdict (no
    /// majority, or no results): nobody saw them fail. With the period's start.
    pub delivery_unknown: Vec<(LeaseId, u64)>,
}

#[derive(Clone, Debug)]
struct Canary {
    checker: u32,
    kind: TaskKind,
    task: CheckTask,
    result: Option<bool>,
}

#[derive(Clone, Debug)]
struct Period {
    number: u64,
    start_ms: u64,
    block_height: u64,
    block_hash: B256,
    draw: Draw,
    targets: Vec<Target>,
    index: HashMap<ContainerRef, u32, foldhash::fast::RandomState>,
    /// `depth` ranked checkers per target (indices into `draw.checkers`).
    ranks: Vec<u32>,
    depth: usize,
    /// Per checker: (target, rank) of every target it is ranked for.
    by_checker: Vec<Vec<(u32, u8)>>,
    first_report_ms: Vec<Option<u64>>,
    /// Results per (target, kind): (checker, outcome).
    results: HashMap<(u32, TaskKind), Vec<(u32, CheckOutcome)>, foldhash::fast::RandomState>,
    canaries: HashMap<ContainerRef, Canary, foldhash::fast::RandomState>,
    /// Liveness is decided at the period's end and grace; capacity after the proofs' window.
    liveness_decided: bool,
}

impl Period {
    fn ranked(&self, t: u32) -> &[u32] {
        &self.ranks[t as usize * self.depth..(t as usize + 1) * self.depth]
    }
}

/// Every checker's standing and the open periods.
#[derive(Clone, Debug)]
pub struct Checking {
    params: CheckingParams,
    genesis_ms: u64,
    checkers: BTreeMap<Address, CheckerRecord>,
    periods: BTreeMap<u64, Period>,
    dirty: Vec<Address>,
}

fn median(mut v: Vec<u64>) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

fn passes(o: &CheckOutcome) -> bool {
    !matches!(o, CheckOutcome::Failed { .. })
}

impl Checking {
    /// The checkers of the genesis, with their stored records where there are any.
    pub fn new(
        params: CheckingParams,
        genesis_ms: u64,
        records: impl IntoIterator<Item = CheckerRecord>,
    ) -> Checking {
        let mut checkers: BTreeMap<Address, CheckerRecord> = params
            .checkers
            .iter()
            .map(|&address| {
                (
                    address,
                    CheckerRecord {
                        address,
                        ..CheckerRecord::default()
                    },
                )
            })
            .collect();
        for r in records {
            if let Some(slot) = checkers.get_mut(&r.address) {
                *slot = r;
            }
        }
        Checking {
            params,
            genesis_ms,
            checkers,
            periods: BTreeMap::new(),
            dirty: Vec::new(),
        }
    }

    pub fn params(&self) -> &CheckingParams {
        &self.params
    }

    /// Whether the network has checkers at all; without them the indexer's heartbeat
    /// timer decides liveness and containers need no capacity proof.
    pub fn enabled(&self) -> bool {
        !self.checkers.is_empty()
    }

    /// The period that `now_ms` falls in, and when it starts.
    pub fn period_at(&self, now_ms: u64) -> (u64, u64) {
        let p = now_ms.saturating_sub(self.genesis_ms) / self.params.period_ms.max(1);
        (p, self.genesis_ms + p * self.params.period_ms)
    }

    pub fn current_period(&self) -> Option<u64> {
        self.periods.keys().next_back().copied()
    }

    pub fn checker(&self, address: &Address) -> Option<&CheckerRecord> {
        self.checkers.get(address)
    }

    pub fn checkers(&self) -> impl Iterator<Item = &CheckerRecord> {
        self.checkers.values()
    }

    /// Checker records changed since the last call, for the store.
    pub fn take_dirty(&mut self) -> Vec<CheckerRecord> {
        let mut dirty = std::mem::take(&mut self.dirty);
        dirty.sort_unstable();
        dirty.dedup();
        dirty
            .into_iter()
            .filter_map(|a| self.checkers.get(&a).cloned())
            .collect()
    }

    /// Licensed checkers not banned at `now_ms`, ascending.
    pub fn eligible(&self, now_ms: u64) -> Vec<Address> {
        self.checkers
            .values()
            .filter(|c| !c.banned(now_ms))
            .map(|c| c.address)
            .collect()
    }

    /// Opens `period`: draws every target's checkers from the block's hash, and deals
    /// secret canaries from `canary_seed` (which checkers cannot know), served at
    /// `decoy_base/<token>`. `targets` must not repeat a container.
    pub fn begin_period(
        &mut self,
        period: u64,
        block_height: u64,
        block_hash: B256,
        targets: Vec<Target>,
        canary_seed: B256,
        decoy_base: &str,
    ) {
        let start_ms = self.genesis_ms + period * self.params.period_ms;
        let seed = period_seed(period, &block_hash);
        // One capacity proof round at a time per container: none while an open period's
        // proofs of it are still out.
        let mut targets = targets;
        let proving: std::collections::HashSet<ContainerRef> = self
            .periods
            .values()
            .flat_map(|p| p.targets.iter().filter(|t| t.capacity_due))
            .map(|t| t.container)
            .collect();
        // Nor for a GPU the network has no rate for, which cannot be asked a proof
        // (registration refuses them on a checked network; this keeps the rule whole).
        for t in targets.iter_mut().filter(|t| {
            proving.contains(&t.container) || self.params.proof_for(t.gpu, t.simulated).is_none()
        }) {
            t.capacity_due = false;
        }
        let draw = Draw::new(seed, self.eligible(start_ms));
        let q = self.params.quorum();
        let depth = (2 * q).min(draw.checkers.len());
        let mut ranks = Vec::with_capacity(targets.len() * depth);
        let mut by_checker = vec![Vec::new(); draw.checkers.len()];
        let mut index = HashMap::with_capacity_and_hasher(targets.len(), Default::default());
        for (t, target) in targets.iter().enumerate() {
            index.insert(target.container, t as u32);
            let ranked = draw.rank(&target.container, depth);
            for (r, &c) in ranked.iter().enumerate() {
                by_checker[c as usize].push((t as u32, r as u8));
            }
            ranks.extend(ranked.iter().copied());
            ranks.resize((t + 1) * depth, u32::MAX);
        }
        let mut canaries = HashMap::default();
        if !targets.is_empty() {
            for (c, checker) in draw.checkers.iter().enumerate() {
                let mut m = canary_seed.to_vec();
                m.extend_from_slice(&period.to_be_bytes());
                m.extend_from_slice(checker.as_slice());
                let h = keccak256(m);
                let roll = u16::from_be_bytes([h[0], h[1]]) % 1000;
                if roll >= self.params.canary_per_mille {
                    continue;
                }
                let like = &targets
                    [(u32::from_be_bytes([h[2], h[3], h[4], h[5]]) as usize) % targets.len()];
                // The decoy's host and its endpoint's token from separate hashes, so
                // neither gives the other away.
                let host = keccak256([h.as_slice(), b"host"].concat());
                let token = keccak256([h.as_slice(), b"token"].concat());
                let kind = match h[6] % 3 {
                    0 => TaskKind::Liveness,
                    1 => TaskKind::Capacity,
                    _ => TaskKind::Delivery,
                };
                let decoy = Target {
                    container: ContainerRef {
                        host: Address::from_slice(&host[12..]),
                        index: like.container.index,
                    },
                    endpoint: format!(
                        "{decoy_base}/{}",
                        alloy_primitives::hex::encode(&token[..16])
                    ),
                    // A delivery canary asks the decoy agent for its statement on a
                    // lease that is not there.
                    delivery: (kind == TaskKind::Delivery).then(|| DeliveryProbe {
                        lease: LeaseId(u64::from_be_bytes([
                            h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15],
                        ])),
                        service: None,
                    }),
                    ..like.clone()
                };
                let slot = (h[7] as usize) % self.params.quorum();
                let task = self.task(&decoy, kind, start_ms, slot);
                let container = decoy.container;
                canaries.insert(
                    container,
                    Canary {
                        checker: c as u32,
                        kind,
                        task,
                        result: None,
                    },
                );
            }
        }
        let n = draw.checkers.len();
        self.periods.insert(
            period,
            Period {
                number: period,
                start_ms,
                block_height,
                block_hash,
                draw,
                targets,
                index,
                ranks,
                depth,
                by_checker,
                first_report_ms: vec![None; n],
                results: HashMap::default(),
                canaries,
                liveness_decided: false,
            },
        );
    }

    /// A task for a target; a capacity task starts in its proof slot.
    fn task(&self, target: &Target, kind: TaskKind, start_ms: u64, slot: usize) -> CheckTask {
        let sized = (kind == TaskKind::Capacity)
            .then(|| self.params.proof_for(target.gpu, target.simulated))
            .flatten();
        CheckTask {
            container: target.container,
            kind,
            endpoint: target.endpoint.clone(),
            gpu: target.gpu,
            simulated: target.simulated,
            proof: sized.map(|s| s.params),
            proof_deadline_ms: sized.map(|s| s.deadline_ms),
            start_at_ms: sized.map(|_| start_ms + slot as u64 * self.params.proof_slot_ms()),
            delivery: target
                .delivery
                .clone()
                .filter(|_| kind == TaskKind::Delivery),
        }
    }

    /// Until when results of a kind are taken for a period.
    fn due_ms(&self, p: &Period, kind: TaskKind) -> u64 {
        let end = p.start_ms + self.params.period_ms + self.params.report_grace_ms;
        match kind {
            TaskKind::Liveness | TaskKind::Delivery => end,
            TaskKind::Capacity => end + self.params.proof_window_ms,
        }
    }

    /// The slot in which checker `c`, at `rank` for target `t`, holds its task at
    /// `now_ms`, if it does: a primary holds its own rank's slot until the take-over time,
    /// and after it only if it reported by then; the j-th backup holds the slot of the
    /// j-th primary that had not.
    fn slot(&self, p: &Period, t: u32, c: u32, rank: usize, now_ms: u64) -> Option<usize> {
        let q = self.params.quorum();
        let takeover = p.start_ms + self.params.takeover_ms;
        let on_time = |c: u32| p.first_report_ms[c as usize].is_some_and(|f| f <= takeover);
        if rank < q {
            return (now_ms <= takeover || on_time(c)).then_some(rank);
        }
        if now_ms <= takeover {
            return None;
        }
        p.ranked(t)[..q.min(p.depth)]
            .iter()
            .enumerate()
            .filter(|&(_, &k)| k != u32::MAX && !on_time(k))
            .nth(rank - q)
            .map(|(slot, _)| slot)
    }

    fn kinds(&self, target: &Target) -> &'static [TaskKind] {
        use TaskKind::{Capacity, Delivery, Liveness};
        match (target.capacity_due, target.delivery.is_some()) {
            (true, true) => &[Liveness, Capacity, Delivery],
            (true, false) => &[Liveness, Capacity],
            (false, true) => &[Liveness, Delivery],
            (false, false) => &[Liveness],
        }
    }

    /// A checker's tasks in the current period at `now_ms`, canaries mixed in by
    /// container order so that nothing marks them.
    pub fn tasks(&self, checker: &Address, now_ms: u64) -> Option<(u64, u64, Vec<CheckTask>)> {
        let p = self.periods.values().next_back()?;
        let Ok(c) = p.draw.checkers.binary_search(checker) else {
            return Some((p.number, p.start_ms, Vec::new()));
        };
        let c = c as u32;
        let mut tasks = Vec::new();
        for &(t, rank) in &p.by_checker[c as usize] {
            let Some(slot) = self.slot(p, t, c, rank as usize, now_ms) else {
                continue;
            };
            let target = &p.targets[t as usize];
            for &kind in self.kinds(target) {
                tasks.push(self.task(target, kind, p.start_ms, slot));
            }
        }
        tasks.extend(
            p.canaries
                .values()
                .filter(|k| k.checker == c)
                .map(|k| k.task.clone()),
        );
        tasks.sort_by_key(|a| (a.container, a.kind));
        Some((p.number, p.start_ms, tasks))
    }

    /// Takes a checker's signed report (the signature is checked by the caller). Every
    /// result must be for a task the checker holds, once; otherwise nothing is taken.
    pub fn report(
        &mut self,
        checker: Address,
        report: &CheckReport,
        now_ms: u64,
    ) -> Result<u32, CheckingError> {
        let record = self
            .checkers
            .get(&checker)
            .ok_or(CheckingError::NotAChecker(checker))?;
        if let Some(until) = record.banned_until_ms.filter(|_| record.banned(now_ms)) {
            return Err(CheckingError::Banned(checker, until));
        }
        let p = self.periods.get(&report.period).ok_or_else(|| {
            CheckingError::Late(format!(
                "period {} is not open for reports (the current period is {})",
                report.period,
                self.current_period()
                    .map_or("not begun".into(), |p| p.to_string())
            ))
        })?;
        for r in &report.results {
            let due = self.due_ms(p, r.kind);
            if now_ms > due || (r.kind != TaskKind::Capacity && p.liveness_decided) {
                return Err(CheckingError::Late(format!(
                    "{:?} results for period {} were due by {due}",
                    r.kind, report.period
                )));
            }
        }
        if report.results.is_empty() {
            return Err(CheckingError::Invalid("a report needs results".into()));
        }
        let c = p.draw.checkers.binary_search(&checker).map_err(|_| {
            CheckingError::NotAssigned(format!(
                "checker {checker} has no tasks in period {}",
                report.period
            ))
        })? as u32;
        // Check every result before taking any.
        let mut seen = std::collections::HashSet::with_capacity(report.results.len());
        let mut taken: Vec<(Option<u32>, ContainerRef, TaskKind, CheckOutcome)> =
            Vec::with_capacity(report.results.len());
        for r in &report.results {
            if !seen.insert((r.container, r.kind)) {
                return Err(CheckingError::Duplicate(format!(
                    "the report gives {} {:?} twice",
                    r.container, r.kind
                )));
            }
            let kind_fits = |k: TaskKind, o: &CheckOutcome| match o {
                CheckOutcome::Up { .. } => k != TaskKind::Capacity,
                CheckOutcome::Valid { .. } => k == TaskKind::Capacity,
                CheckOutcome::Failed { reason } => k == TaskKind::Capacity || !reason.is_proof(),
            };
            if !kind_fits(r.kind, &r.outcome) {
                return Err(CheckingError::Invalid(format!(
                    "outcome {:?} does not answer a {:?} task",
                    r.outcome, r.kind
                )));
            }
            if let Some(k) = p.canaries.get(&r.container) {
                if k.checker != c || k.kind != r.kind {
                    return Err(not_assigned(&r.container, r.kind, report.period));
                }
                if k.result.is_some() {
                    return Err(already(&r.container, r.kind));
                }
                taken.push((None, r.container, r.kind, r.outcome));
                continue;
            }
            let t = *p
                .index
                .get(&r.container)
                .ok_or_else(|| not_assigned(&r.container, r.kind, report.period))?;
            let rank = p.ranked(t).iter().position(|&k| k == c);
            let held = rank.is_some_and(|rank| self.slot(p, t, c, rank, now_ms).is_some())
                && self.kinds(&p.targets[t as usize]).contains(&r.kind);
            if !held {
                return Err(not_assigned(&r.container, r.kind, report.period));
            }
            if p.results
                .get(&(t, r.kind))
                .is_some_and(|v| v.iter().any(|(k, _)| *k == c))
            {
                return Err(already(&r.container, r.kind));
            }
            taken.push((Some(t), r.container, r.kind, r.outcome));
        }
        let p = self
            .periods
            .get_mut(&report.period)
            .expect("looked up above");
        p.first_report_ms[c as usize].get_or_insert(now_ms);
        let accepted = taken.len() as u32;
        for (t, container, kind, outcome) in taken {
            match t {
                Some(t) => p.results.entry((t, kind)).or_default().push((c, outcome)),
                None => {
                    if let Some(k) = p.canaries.get_mut(&container) {
                        // A canary's agent is a decoy: the right answer is a failure.
                        k.result = Some(!passes(&outcome));
                    }
                }
            }
        }
        Ok(accepted)
    }

    /// Closes every open period whose reports are all in by `now_ms` (its end plus the
    /// grace), oldest first.
    pub fn close_due(&mut self, now_ms: u64) -> Vec<PeriodOutcome> {
        let mut due: Vec<(u64, TaskKind)> = Vec::new();
        for p in self.periods.values() {
            if !p.liveness_decided && now_ms > self.due_ms(p, TaskKind::Liveness) {
                due.push((p.number, TaskKind::Liveness));
            }
            if now_ms > self.due_ms(p, TaskKind::Capacity) {
                due.push((p.number, TaskKind::Capacity));
            }
        }
        due.into_iter()
            .filter_map(|(n, kind)| self.decide(n, kind, now_ms))
            .collect()
    }

    /// Decides all of a period at once (both stages), whatever the time.
    pub fn close_period(&mut self, number: u64, now_ms: u64) -> Option<PeriodOutcome> {
        let mut outcome = self.decide(number, TaskKind::Liveness, now_ms)?;
        let proofs = self.decide(number, TaskKind::Capacity, now_ms)?;
        outcome.verdicts.extend(proofs.verdicts);
        outcome.banned.extend(proofs.banned);
        outcome.undecided += proofs.undecided;
        Some(outcome)
    }

    /// Decides one stage of a period: liveness (and the period's bookkeeping) at its end
    /// and grace; capacity, after which the period is gone, when the proofs' window is
    /// over. Each task's verdict is the majority of its results (at least N+1 alike); then
    /// credits, minority results, canaries and bans.
    fn decide(&mut self, number: u64, stage: TaskKind, now_ms: u64) -> Option<PeriodOutcome> {
        let mut p = self.periods.remove(&number)?;
        if stage == TaskKind::Liveness && p.liveness_decided {
            self.periods.insert(number, p);
            return None;
        }
        let need = self.params.n as usize + 1;
        let mut outcome = PeriodOutcome {
            period: number,
            ..PeriodOutcome::default()
        };
        let mut credit = vec![0u64; p.draw.checkers.len()];
        let mut minority: Vec<Vec<String>> = vec![Vec::new(); p.draw.checkers.len()];
        // Delivery is decided with liveness, at the period's end and grace.
        let in_stage =
            |k: TaskKind| k == stage || (stage == TaskKind::Liveness && k == TaskKind::Delivery);
        let mut keys: Vec<&(u32, TaskKind)> = p.results.keys().filter(|k| in_stage(k.1)).collect();
        keys.sort_unstable();
        let mut delivery_decided = std::collections::HashSet::new();
        for key in keys {
            let results = &p.results[key];
            let (t, kind) = *key;
            let ups = results.iter().filter(|(_, o)| passes(o)).count();
            let downs = results.len() - ups;
            let passed = if ups >= need {
                true
            } else if downs >= need {
                false
            } else {
                outcome.undecided += 1;
                continue;
            };
            let container = p.targets[t as usize].container;
            if kind == TaskKind::Delivery {
                delivery_decided.insert(t);
            }
            let mut reasons: BTreeMap<FailReason, usize> = BTreeMap::new();
            let mut agreeing = Vec::new();
            let (mut rtts, mut host_ms) = (Vec::new(), Vec::new());
            for (c, o) in results {
                if passes(o) != passed {
                    minority[*c as usize].push(format!(
                        "said {} of {container} {kind:?} in period {number} against the majority",
                        if passes(o) { "pass" } else { "fail" }
                    ));
                    continue;
                }
                credit[*c as usize] += 1;
                agreeing.push(p.draw.checkers[*c as usize]);
                match o {
                    CheckOutcome::Up { rtt_us } => rtts.push(*rtt_us),
                    CheckOutcome::Valid { host_ms: ms } => host_ms.push(*ms),
                    CheckOutcome::Failed { reason } => *reasons.entry(*reason).or_default() += 1,
                }
            }
            agreeing.sort_unstable();
            // Evidence of a false proof needs a quorum of its own: N checkers claiming a
            // wrong row cannot make a host malicious.
            let evident: usize = reasons
                .iter()
                .filter(|(r, _)| r.class() == gpumesh_types::FailureClass::Malicious)
                .map(|(_, n)| n)
                .sum();
            // With a quorum of it, the evidence is the verdict.
            let malicious = evident >= need;
            reasons
                .retain(|r, _| (r.class() == gpumesh_types::FailureClass::Malicious) == malicious);
            // The most common reason; on a tie the first in the code's order (the least
            // severe).
            let reason = reasons
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0)))
                .map(|(r, _)| *r);
            outcome.verdicts.push(Verdict {
                container,
                kind,
                passed,
                lease: p.targets[t as usize]
                    .delivery
                    .as_ref()
                    .filter(|_| kind == TaskKind::Delivery)
                    .map(|d| d.lease),
                period_start_ms: p.start_ms,
                reason,
                rtt_us: median(rtts),
                host_ms: median(host_ms),
                agreeing,
                votes: results.len() as u8,
            });
        }
        if stage == TaskKind::Liveness {
            outcome.delivery_unknown = p
                .targets
                .iter()
                .enumerate()
                .filter(|(t, _)| !delivery_decided.contains(&(*t as u32)))
                .filter_map(|(_, target)| Some((target.delivery.as_ref()?.lease, p.start_ms)))
                .collect();
        }
        let mut canary_results: Vec<(u32, bool, &Canary)> = p
            .canaries
            .values()
            .filter(|k| in_stage(k.kind))
            .filter_map(|k| k.result.map(|r| (k.checker, r, k)))
            .collect();
        canary_results.sort_by_key(|(c, ..)| *c);
        let mut canaries = vec![(0u64, 0u64); p.draw.checkers.len()];
        for (c, right, k) in canary_results {
            if right {
                canaries[c as usize].0 += 1;
                credit[c as usize] += 1;
            } else {
                canaries[c as usize].1 += 1;
                minority[c as usize].push(format!(
                    "said pass on canary {} {:?} in period {number}, whose agent was known to be faulty",
                    k.task.container, k.kind
                ));
            }
        }
        let window = self.params.ban_window_ms;
        let bookkeeping = stage == TaskKind::Liveness;
        for (c, address) in p.draw.checkers.iter().enumerate() {
            let had_tasks = bookkeeping && !p.by_checker[c].is_empty();
            let reported = bookkeeping && p.first_report_ms[c].is_some();
            let Some(record) = self.checkers.get_mut(address) else {
                continue;
            };
            let nothing = credit[c] == 0 && minority[c].is_empty() && canaries[c] == (0, 0);
            if nothing && !had_tasks && !reported {
                continue;
            }
            record.periods_with_tasks += had_tasks as u64;
            record.periods_reported += reported as u64;
            record.epoch_periods += had_tasks as u64;
            record.epoch_reported += reported as u64;
            record.credited += credit[c];
            record.epoch_credited += credit[c];
            record.canaries_passed += canaries[c].0;
            record.canaries_failed += canaries[c].1;
            record.minority += minority[c].len() as u64;
            record.minority_at.retain(|&t| t + window > now_ms);
            record
                .minority_at
                .extend(std::iter::repeat_n(now_ms, minority[c].len()));
            if record.minority_at.len() >= self.params.ban_minority as usize
                && !record.banned(now_ms)
            {
                record.banned_until_ms = Some(now_ms + self.params.ban_ms);
                record.ban_reason = Some(format!(
                    "{} results against the majority or a canary within {} days; last: {}",
                    record.minority_at.len(),
                    window / (24 * 3_600_000),
                    minority[c].last().cloned().unwrap_or_default()
                ));
                outcome.banned.push(*address);
            }
            self.dirty.push(*address);
        }
        if stage == TaskKind::Liveness {
            p.liveness_decided = true;
            self.periods.insert(number, p);
        }
        Some(outcome)
    }

    /// Every checker's epoch counters that are not all zero, ascending by address, as they
    /// stand at `now_ms`, and whether it is banned then: what an epoch close counts
    /// ([`epoch_tasks`]) and later takes away ([`Checking::end_epoch`]).
    pub fn epoch_counts(&self, now_ms: u64) -> Vec<EpochCount> {
        self.checkers
            .values()
            .filter(|r| r.epoch_credited + r.epoch_periods + r.epoch_reported > 0)
            .map(|r| EpochCount {
                checker: r.address,
                credited: r.epoch_credited,
                periods: r.epoch_periods,
                reported: r.epoch_reported,
                banned: r.banned(now_ms),
            })
            .collect()
    }

    /// The epoch's checker list for the ledger as it stands at `now_ms`: (address, credited
    /// tasks, uptime in basis points) of every checker not banned with credited tasks,
    /// ascending. Changes nothing.
    pub fn epoch_checkers(&self, now_ms: u64) -> Vec<CheckerTasks> {
        epoch_tasks(&self.epoch_counts(now_ms))
    }

    /// An epoch was closed with `counted`: those counts leave the checkers' epoch
    /// counters, and whatever they gained since stays for the next epoch.
    pub fn end_epoch(&mut self, counted: &[EpochCount]) {
        for c in counted {
            let Some(record) = self.checkers.get_mut(&c.checker) else {
                continue;
            };
            debug_assert!(
                record.epoch_credited >= c.credited
                    && record.epoch_periods >= c.periods
                    && record.epoch_reported >= c.reported,
                "epoch counters only grow until the epoch closes"
            );
            record.epoch_credited = record.epoch_credited.saturating_sub(c.credited);
            record.epoch_periods = record.epoch_periods.saturating_sub(c.periods);
            record.epoch_reported = record.epoch_reported.saturating_sub(c.reported);
            self.dirty.push(c.checker);
        }
    }

    /// The assignment of an open period, with the block and seed it was drawn from.
    /// `limit` containers from the `from`-th on, and where the next page starts.
    pub fn assignment(
        &self,
        period: u64,
        from: usize,
        limit: usize,
    ) -> Option<gpumesh_types::AssignmentView> {
        let p = self.periods.get(&period)?;
        let q = self.params.quorum().min(p.depth);
        let end = from.saturating_add(limit).min(p.targets.len());
        Some(gpumesh_types::AssignmentView {
            period,
            block_height: p.block_height,
            block_hash: p.block_hash,
            seed: p.draw.seed,
            eligible: p.draw.checkers.clone(),
            next: (end < p.targets.len()).then_some(end as u64),
            containers: p
                .targets
                .iter()
                .enumerate()
                .take(end)
                .skip(from)
                .map(|(t, target)| ContainerAssignment {
                    container: target.container,
                    checkers: p.ranked(t as u32)[..q]
                        .iter()
                        .filter(|&&k| k != u32::MAX)
                        .map(|&k| p.draw.checkers[k as usize])
                        .collect(),
                })
                .collect(),
        })
    }

    /// The canary task served at `token`, if it is one of an open period's.
    pub fn decoy(&self, token: &str) -> Option<&CheckTask> {
        self.periods
            .values()
            .flat_map(|p| p.canaries.values())
            .map(|k| &k.task)
            .find(|t| {
                t.endpoint
                    .rsplit('/')
                    .next()
                    .is_some_and(|end| end == token)
            })
    }
}

fn not_assigned(c: &ContainerRef, kind: TaskKind, period: u64) -> CheckingError {
    CheckingError::NotAssigned(format!(
        "no {kind:?} task of container {c} is yours in period {period}"
    ))
}

fn already(c: &ContainerRef, kind: TaskKind) -> CheckingError {
    CheckingError::Duplicate(format!(
        "a {kind:?} result for {c} was already taken from this checker this period"
    ))
}

/// A host's service tier from its checkers' verdicts: tier 1 at 99% liveness or better
/// with a capacity proof at its claimed speed, tier 2 at 95%, tier 3 below. `proof_ok`
/// is `None` when no proof has been timed yet.
pub fn tier(up: u32, down: u32, proof_ok: Option<bool>) -> u8 {
    let total = up + down;
    if total == 0 {
        return 2;
    }
    let uptime_bps = up as u64 * 10_000 / total as u64;
    if uptime_bps >= 9_900 && proof_ok != Some(false) {
        1
    } else if uptime_bps >= 9_500 {
        2
    } else {
        3
    }
}

#[cfg(test)]
mod tests;

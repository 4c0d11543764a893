//! Leases always end: random interleavings of everything that can happen to leases
//! (match, fund, start, settle, finish, cancel, a final record sent the wrong way, a host
//! going quiet, time passing, the indexer restarting from its store, ended leases moving
//! to the store's archive), checked after every step against the invariants the network
//! promises buyers and hosts. And an epoch's
//! rewards do not depend on whether the indexer restarted during it.

use std::collections::HashSet;

use gpumesh_identity::Wallet;
use gpumesh_indexer::core::{Core, RETIRE_EVERY_MS};
use gpumesh_ledger::{CheckedTx, Genesis};
use gpumesh_registry::Params;
use gpumesh_store::{Batch, Store};
use gpumesh_types::{
    Amount, ContainerState, GeoPoint, GpuModel, GpuOffer, Heartbeat, JobRequest, LeaseFinish,
    LeaseId, LeaseState, Location, RegisterHost, RuntimeKind, SignedTx, Tx, TxKind, UsageRecord,
};
use proptest::prelude::*;

/// A transaction as the API hands it to the core: its signature checked.
fn checked(stx: gpumesh_types::SignedTx) -> CheckedTx {
    CheckedTx::check(stx).expect("the model signs its transactions correctly")
}

struct World {
    dir: tempfile::TempDir,
    store: Option<Store>,
    core: Option<Core>,
    protocol: Wallet,
    faucet: Wallet,
    buyer: Wallet,
    hosts: [Wallet; 2],
    params: Params,
    now: u64,
}

/// Ended leases stay in memory this long, so that runs archive some of them.
const RETENTION_MS: u64 = 20_000;

fn params() -> Params {
    Params {
        require_stake: false,
        ..Params::local()
    }
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        // Keys from labels: two worlds run alike sign alike.
        let (protocol, faucet) = (Wallet::from_label("protocol"), Wallet::from_label("faucet"));
        let params = params();
        let store = Store::open(dir.path()).unwrap();
        let genesis = Genesis::local(31337, 0, protocol.address(), faucet.address());
        store.init(&genesis, &params).unwrap();
        let mut w = World {
            dir,
            store: Some(store),
            core: None,
            protocol,
            faucet,
            buyer: Wallet::from_label("buyer"),
            hosts: [Wallet::from_label("host-0"), Wallet::from_label("host-1")],
            params,
            now: 1_000,
        };
        w.restart();
        let buyer = w.buyer.address();
        w.apply(|c, now, b| {
            c.faucet(buyer, Amount::from_tokens(10_000), now, b)
                .map(|_| ())
        })
        .unwrap();
        for (i, host) in w.hosts.clone().iter().enumerate() {
            let request = RegisterHost {
                name: format!("host-{i}"),
                location: Location {
                    point: GeoPoint::new(50.0 + i as f64, 8.0).unwrap(),
                    country: "DE".parse().unwrap(),
                },
                price_per_gpu_hour: Amount::from_tokens(2),
                gpus: vec![GpuOffer {
                    model: GpuModel::H100,
                    count: 4,
                    vram_mib: None,
                    simulated: true,
                }],
                runtime: RuntimeKind::Process,
                images: vec![],
                challenge_url: None,
            };
            let address = host.address();
            w.apply(|c, now, b| c.register_host(address, request, now, b).map(|_| ()))
                .unwrap();
        }
        w
    }

    fn core(&self) -> &Core {
        self.core.as_ref().unwrap()
    }

    /// Runs one operation as the service does: then writes what it changed, durably.
    fn apply<T>(
        &mut self,
        f: impl FnOnce(&mut Core, u64, &mut Batch) -> Result<T, gpumesh_indexer::Failure>,
    ) -> Result<T, gpumesh_indexer::Failure> {
        let core = self.core.as_mut().unwrap();
        let mut batch = Batch::default();
        let result = f(core, self.now, &mut batch);
        core.collect_dirty(&mut batch);
        self.store.as_ref().unwrap().write(batch).unwrap();
        result
    }

    /// Time passes: the hosts `beats` picks (by index) send a heartbeat, then the tick.
    fn advance(&mut self, ms: u64, beats: impl Fn(usize) -> bool) {
        self.now += ms;
        for (i, host) in self.hosts.clone().iter().enumerate() {
            if beats(i) {
                let a = host.address();
                self.apply(|c, now, _| c.heartbeat(a, Heartbeat::default(), now))
                    .unwrap();
            }
        }
        self.apply(|c, now, b| {
            c.tick(now, b);
            Ok(())
        })
        .unwrap();
    }

    /// Stops the indexer and starts it again from its store alone.
    fn restart(&mut self) {
        self.core = None;
        self.store = None;
        let store = Store::open(self.dir.path()).unwrap();
        let snapshot = store.load().unwrap();
        let mut core = Core::restore(
            snapshot,
            self.protocol.clone(),
            Some(self.faucet.clone()),
            self.now,
        )
        .unwrap();
        core.set_retention(RETENTION_MS);
        self.core = Some(core);
        self.store = Some(store);
    }

    fn signed(&self, wallet: &Wallet, kind: TxKind) -> SignedTx {
        let from = wallet.address();
        wallet.sign_tx(Tx {
            chain_id: 31337,
            from,
            nonce: self.core().ledger().account(&from).nonce,
            kind,
        })
    }

    /// The lease's host, while the lease is in memory.
    fn host_wallet(&self, id: LeaseId) -> Option<Wallet> {
        let host = self.core().registry().lease(id)?.host;
        self.hosts.iter().find(|w| w.address() == host).cloned()
    }

    /// The lease's host, and its usage record for the lease, signed.
    fn usage_tx(&self, id: LeaseId, is_final: bool) -> Option<(gpumesh_types::Address, SignedTx)> {
        let host = self.host_wallet(id)?;
        let records = vec![UsageRecord {
            lease: id,
            gpu_ms: self.usage(id),
            is_final,
        }];
        Some((
            host.address(),
            self.signed(&host, TxKind::SettleUsage { records }),
        ))
    }

    /// GPU-milliseconds a host could claim now: what elapsed since the start, capped.
    fn usage(&self, id: LeaseId) -> u64 {
        let l = self.core().registry().lease(id).unwrap();
        let elapsed = self.now.saturating_sub(l.started_ms.unwrap_or(self.now));
        (elapsed * l.gpu_count as u64).min(l.max_duration_ms * l.gpu_count as u64)
    }

    /// A lease's view: from memory, or from the archive once it left memory.
    fn view(&self, id: LeaseId) -> Option<gpumesh_types::LeaseView> {
        match self.core().lease_view(id) {
            Ok(view) => Some(view),
            Err(_) => self.store.as_ref().unwrap().archived_lease(id).unwrap(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Submit { count: u16, seconds: u64 },
    Fund(usize),
    Start(usize),
    Settle(usize),
    Finish(usize),
    FinalThroughLedger(usize),
    Cancel(usize),
    Tick { advance_ms: u64, host0_beats: bool },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u16..4, 5u64..90).prop_map(|(count, seconds)| Op::Submit { count, seconds }),
        3 => any::<usize>().prop_map(Op::Fund),
        3 => any::<usize>().prop_map(Op::Start),
        1 => any::<usize>().prop_map(Op::Settle),
        2 => any::<usize>().prop_map(Op::Finish),
        1 => any::<usize>().prop_map(Op::FinalThroughLedger),
        2 => any::<usize>().prop_map(Op::Cancel),
        4 => (0u64..12_000, prop::bool::weighted(0.8))
            .prop_map(|(advance_ms, host0_beats)| Op::Tick { advance_ms, host0_beats }),
        1 => Just(Op::Restart),
    ]
}

fn step(w: &mut World, ids: &mut Vec<LeaseId>, op: Op) {
    let pick = |i: usize| ids.get(i % ids.len().max(1)).copied();
    match op {
        Op::Submit { count, seconds } => {
            let job = JobRequest::new(
                GpuModel::H100,
                count,
                GeoPoint::new(50.0, 8.0).unwrap(),
                Amount::from_tokens(3),
                seconds * 1000,
                "example/model:1",
                vec![],
            );
            let buyer = w.buyer.address();
            if let Ok(l) = w.apply(|c, now, _| c.submit_job(buyer, job, now)) {
                assert!(!ids.contains(&l.id), "lease id {} given twice", l.id);
                ids.push(l.id);
            }
        }
        Op::Fund(i) => {
            let Some(id) = pick(i) else { return };
            let view = w.view(id).unwrap();
            let stx = w.signed(
                &w.buyer,
                TxKind::OpenEscrow {
                    lease: id,
                    host: view.host,
                    price_per_gpu_hour: view.price_per_gpu_hour,
                    gpus: view.gpu_count,
                    max_duration_ms: view.max_duration_ms,
                    amount: view.escrow,
                },
            );
            let _ = w.apply(|c, now, b| c.submit_tx(checked(stx), now, b));
        }
        Op::Start(i) => {
            let Some(id) = pick(i) else { return };
            let Some(host) = w.host_wallet(id) else {
                return;
            };
            let host = host.address();
            let _ = w.apply(|c, now, batch| c.started(host, id, Vec::new().into(), now, batch));
        }
        Op::Settle(i) => {
            let Some(id) = pick(i) else { return };
            let Some((_, stx)) = w.usage_tx(id, false) else {
                return;
            };
            let _ = w.apply(|c, now, b| c.submit_tx(checked(stx), now, b));
        }
        Op::Finish(i) => {
            let Some(id) = pick(i) else { return };
            let Some((host, usage)) = w.usage_tx(id, true) else {
                return;
            };
            let finish = LeaseFinish {
                exit_code: Some(0),
                error: None,
                usage,
            };
            let _ = w.apply(|c, now, b| c.finish(host, id, finish, now, b));
        }
        Op::FinalThroughLedger(i) => {
            let Some(id) = pick(i) else { return };
            let Some((_, stx)) = w.usage_tx(id, true) else {
                return;
            };
            let refused = w.apply(|c, now, b| c.submit_tx(checked(stx), now, b));
            assert!(refused.is_err(), "a final record through the ledger route");
        }
        Op::Cancel(i) => {
            let Some(id) = pick(i) else { return };
            let buyer = w.buyer.address();
            let _ = w.apply(|c, now, b| c.cancel(buyer, id, now, b));
        }
        Op::Tick {
            advance_ms,
            host0_beats,
        } => {
            w.advance(advance_ms, |i| i > 0 || host0_beats);
        }
        Op::Restart => w.restart(),
    }
}

/// What must hold after every step.
fn check(w: &mut World, ids: &[LeaseId]) -> Result<(), TestCaseError> {
    let now = w.now;
    let params = w.params.clone();
    let core = w.core();
    // Every lease is in memory or archived, never both and never lost; only a lease that
    // ended longer ago than the retention, its escrow closed, is archived.
    for &id in ids {
        let archived = w.store.as_ref().unwrap().archived_lease(id).unwrap();
        let retired = core.ledger().retired().contains(id);
        match (core.registry().lease(id), archived) {
            (Some(_), None) => prop_assert!(!retired, "lease {} in memory is retired", id),
            (None, Some(view)) => {
                let ended = view.ended_ms.expect("an archived lease has ended");
                prop_assert!(ended + RETENTION_MS <= now, "lease {} archived early", id);
                prop_assert!(view.settlement.is_none_or(|s| s.closed));
                // Its id retired in the ledger, and its escrow left the ledger; or it
                // waits for the next retirement, its escrow closed (or never opened).
                if retired {
                    prop_assert!(core.ledger().escrow(id).is_none());
                    prop_assert!(!core.retiring().contains(&id));
                } else {
                    prop_assert!(
                        core.retiring().contains(&id),
                        "archived lease {} is neither retired nor waiting to",
                        id
                    );
                    prop_assert!(core.ledger().escrow(id).is_none_or(|e| e.closed));
                }
                prop_assert!(
                    core.logs(id, 0).is_none(),
                    "lease {}'s log is still in memory",
                    id
                );
            }
            (memory, archive) => prop_assert!(
                false,
                "lease {} in memory: {}, archived: {}",
                id,
                memory.is_some(),
                archive.is_some()
            ),
        }
    }
    prop_assert!(core.ledger().supply_conserved(), "supply not conserved");
    // The registry's running counts and indexes are what a scan of its leases finds.
    for state in LeaseState::ALL {
        let counted = core
            .registry()
            .leases()
            .filter(|l| l.state == state)
            .count() as u64;
        prop_assert_eq!(core.registry().leases_in(state), counted, "{:?}", state);
    }
    let buyer = w.buyer.address();
    let of_buyer: Vec<LeaseId> = (core.registry().leases_after(Some(buyer), None, None))
        .map(|l| l.id)
        .collect();
    let scanned: Vec<LeaseId> = (core.registry().leases())
        .filter(|l| l.buyer == buyer)
        .map(|l| l.id)
        .collect();
    prop_assert_eq!(of_buyer, scanned);
    for host in &w.hosts {
        let host = host.address();
        let of_host: Vec<LeaseId> = (core.registry().leases_after(None, Some(host), None))
            .map(|l| l.id)
            .collect();
        let scanned: Vec<LeaseId> = (core.registry().leases())
            .filter(|l| l.host == host)
            .map(|l| l.id)
            .collect();
        prop_assert_eq!(of_host, scanned);
    }
    // The running sums the statistics read are the sums over every escrow, retired ones
    // included: those in the ledger's memory and, for retired ones, the settlements the
    // archive holds.
    prop_assert_eq!(core.ledger().activity(), core.ledger().recount());
    let (mut gpu_ms, mut fees) = (0u64, 0u128);
    for &id in ids {
        let settled = match core.ledger().escrow(id) {
            Some(e) => Some((e.gpu_ms, e.treasury_share.0)),
            None => (w.store.as_ref().unwrap().archived_lease(id).unwrap())
                .and_then(|v| v.settlement)
                .map(|s| (s.gpu_ms, s.treasury_share.0)),
        };
        if let Some((g, f)) = settled {
            gpu_ms += g;
            fees += f;
        }
    }
    let activity = core.ledger().activity();
    prop_assert_eq!((activity.delivered_gpu_ms, activity.fees.0), (gpu_ms, fees));
    let mut held = HashSet::new();
    for l in core.registry().leases() {
        let escrow = core.ledger().escrow(l.id);
        if l.state.is_terminal() {
            prop_assert!(
                escrow.is_none_or(|e| e.closed),
                "lease {} is {:?} with its escrow open",
                l.id,
                l.state
            );
            continue;
        }
        let bound = l.created_ms + params.lease_bound_ms(l.max_duration_ms);
        prop_assert!(
            now <= bound,
            "lease {} is still {:?} at {now}, past its bound {bound}",
            l.id,
            l.state
        );
        let funded = escrow.is_some_and(|e| !e.closed);
        prop_assert_eq!(
            funded,
            l.state != LeaseState::Matched,
            "lease {} is {:?}, escrow {:?}",
            l.id,
            l.state,
            escrow
        );
        for &i in &l.gpu_indices {
            prop_assert!(
                held.insert((l.host, i)),
                "GPU {} of {} held twice",
                i,
                l.host
            );
        }
    }
    // Every GPU not held by a live lease is free: terminal leases hold nothing.
    let online_held = core
        .registry()
        .leases()
        .filter(|l| l.state.holds_capacity() && core.registry().host_online(&l.host))
        .map(|l| l.gpu_count as usize)
        .sum::<usize>();
    let busy = core
        .registry()
        .containers()
        .iter()
        .filter(|c| c.state == ContainerState::Busy)
        .count();
    prop_assert_eq!(busy, online_held);
    // A host's work, read from the per-host index, is what a scan of every lease finds.
    let hosts: HashSet<_> = core.registry().leases().map(|l| l.host).collect();
    for host in hosts {
        let work = core.work(&host).unwrap();
        let mut start = Vec::new();
        let mut stop = Vec::new();
        for l in core.registry().leases().filter(|l| l.host == host) {
            match (l.state, l.cancel_requested) {
                (LeaseState::Starting, false) => start.push(l.id),
                (LeaseState::Starting | LeaseState::Running, true) => stop.push(l.id),
                _ => {}
            }
        }
        let started: Vec<_> = work.start.iter().map(|a| a.lease).collect();
        prop_assert_eq!(started, start, "work to start for {}", host);
        prop_assert_eq!(work.stop, stop, "work to stop for {}", host);
    }
    // The registry and the ledger tell one story: reconciliation finds nothing to repair.
    let found = w.apply(|c, now, b| Ok(c.reconcile(now, b))).unwrap();
    prop_assert!(found.is_empty(), "reconciliation found {:?}", found);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn every_lease_ends_within_its_bound_and_money_is_conserved(
        ops in proptest::collection::vec(op(), 1..70)
    ) {
        let mut w = World::new();
        let mut ids = Vec::new();
        for op in ops {
            step(&mut w, &mut ids, op);
            check(&mut w, &ids)?;
        }
        // Then time alone ends everything that is left, refunding what was not delivered.
        let last = ids
            .iter()
            .filter_map(|&id| {
                let l = w.core().registry().lease(id)?;
                Some(l.created_ms + w.params.lease_bound_ms(l.max_duration_ms))
            })
            .max()
            .unwrap_or(0);
        while w.now <= last + 1_000 {
            step(&mut w, &mut ids, Op::Tick { advance_ms: 5_000, host0_beats: true });
            check(&mut w, &ids)?;
        }
        prop_assert!(w.core().registry().leases().all(|l| l.state.is_terminal()));
        prop_assert!(w.core().ledger().escrows().all(|(_, e)| e.closed));
        // And past the retention every lease is archived: memory holds no history.
        step(&mut w, &mut ids, Op::Tick { advance_ms: RETENTION_MS, host0_beats: true });
        check(&mut w, &ids)?;
        prop_assert_eq!(w.core().registry().leases().count(), 0);
        // Their ids retire together, at most ten seconds later.
        step(&mut w, &mut ids, Op::Tick { advance_ms: RETIRE_EVERY_MS, host0_beats: true });
        check(&mut w, &ids)?;
        prop_assert!(w.core().retiring().is_empty());
        // Nor does the ledger: every escrow retired with its lease, and the retired ids,
        // all of them, make one range.
        prop_assert_eq!(w.core().ledger().escrows().count(), 0);
        prop_assert_eq!(w.core().ledger().retired().range_count(), usize::from(!ids.is_empty()));
        let activity = w.core().ledger().activity();
        prop_assert_eq!(activity.held, Amount::ZERO);
    }
}

/// Runs two scripted epochs: in the first a lease delivers on host 0 and host 1 goes quiet
/// and is lost; through the second host 1 stays quiet. With `restart_at`, the indexer
/// restarts from its store at that moment. Returns the epochs' reward transactions and
/// what the hosts hold after them.
fn scripted_epochs(restart_at: Option<u64>) -> (Vec<SignedTx>, Vec<gpumesh_types::AccountView>) {
    let mut w = World::new();
    let mut ids = Vec::new();
    let until = |w: &mut World, t: u64, host1_beats: bool| {
        while w.now < t {
            if restart_at.is_some_and(|r| w.now < r && r <= w.now + 500) {
                w.now = restart_at.unwrap();
                w.restart();
            }
            w.advance(500, |i| i == 0 || host1_beats);
        }
    };
    until(&mut w, 2_000, true);
    step(
        &mut w,
        &mut ids,
        Op::Submit {
            count: 2,
            seconds: 120,
        },
    );
    assert_eq!(ids.len(), 1);
    step(&mut w, &mut ids, Op::Fund(0));
    step(&mut w, &mut ids, Op::Start(0));
    until(&mut w, 12_000, true);
    step(&mut w, &mut ids, Op::Settle(0));
    // Host 1 falls silent: lost in this epoch.
    until(&mut w, 40_000, false);
    step(&mut w, &mut ids, Op::Settle(0));
    until(&mut w, 50_000, false);
    step(&mut w, &mut ids, Op::Finish(0));
    // Host 1 stays silent through the second epoch too.
    until(&mut w, 125_000, false);
    assert_eq!(w.view(ids[0]).unwrap().state, LeaseState::Completed);
    let core = w.core();
    let epochs: Vec<&SignedTx> = core
        .ledger()
        .unsealed()
        .iter()
        .map(|e| &e.tx)
        .filter(|t| matches!(t.tx.kind, TxKind::Epoch(_)))
        .collect();
    assert_eq!(epochs.len(), 2, "two epochs closed");
    let accounts = w.hosts.iter().map(|h| core.account(h.address())).collect();
    (epochs.into_iter().cloned().collect(), accounts)
}

#[test]
fn a_restart_mid_epoch_pays_exactly_what_an_uninterrupted_run_pays() {
    let (epochs, accounts) = scripted_epochs(None);
    let closes: Vec<_> = epochs
        .iter()
        .map(|e| match &e.tx.kind {
            TxKind::Epoch(close) => close.clone(),
            other => panic!("{other:?}"),
        })
        .collect();
    // The run earned something to compare: delivery on host 0, capacity only for it.
    assert!(!closes[0].delivery.is_empty(), "{:?}", closes[0]);
    // Delivery carries what its buyers paid, and the treasury's fee out of it.
    let gpu = closes[0].delivery[0].1[0];
    assert!(gpu.fee.0 > 0 && gpu.fee < gpu.paid, "{gpu:?}");
    for close in &closes {
        assert_eq!(
            close.capacity.len(),
            1,
            "the quiet host earns no capacity: {close:?}"
        );
    }
    // Mid-delivery, after the loss, and just before the second epoch closes (where the
    // quiet host's fresh heartbeat window after a restart would still hold).
    for restart_at in [20_000, 45_000, 119_000] {
        let (restarted, restarted_accounts) = scripted_epochs(Some(restart_at));
        assert_eq!(restarted, epochs, "restart at {restart_at} ms");
        assert_eq!(restarted_accounts, accounts, "restart at {restart_at} ms");
    }
}

#[test]
fn reconciliation_repairs_a_store_where_registry_and_ledger_disagree() {
    let mut w = World::new();
    let mut ids = Vec::new();
    let submit = Op::Submit {
        count: 1,
        seconds: 60,
    };
    // Lease 0 runs and finishes (escrow closed); lease 1 is funded (escrow open).
    step(&mut w, &mut ids, submit.clone());
    step(&mut w, &mut ids, Op::Fund(0));
    step(&mut w, &mut ids, Op::Start(0));
    w.now += 5_000;
    step(&mut w, &mut ids, Op::Finish(0));
    step(&mut w, &mut ids, submit);
    step(&mut w, &mut ids, Op::Fund(1));
    let (done, funded) = (ids[0], ids[1]);
    assert_eq!(
        w.core().lease_view(done).unwrap().state,
        LeaseState::Completed
    );
    let buyer = w.buyer.address();
    let balance = w.core().ledger().balance(&buyer);
    let held = w.core().ledger().escrow(funded).unwrap().held();

    // A store as an older version could leave it: the finished lease still `running`,
    // the funded one `cancelled` with its escrow open.
    let mut running = w.core().registry().lease(done).unwrap().clone();
    running.state = LeaseState::Running;
    running.ended_ms = None;
    let mut cancelled = w.core().registry().lease(funded).unwrap().clone();
    cancelled.state = LeaseState::Cancelled;
    cancelled.ended_ms = Some(w.now);
    let batch = Batch {
        leases: vec![running, cancelled],
        ..Batch::default()
    };
    w.store.as_ref().unwrap().write(batch).unwrap();
    w.restart();

    let found = w.apply(|c, now, b| Ok(c.reconcile(now, b))).unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(
        found[0].contains("escrow is closed; ended it as failed"),
        "{found:?}"
    );
    assert!(
        found[1].contains("escrow was open; closed and refunded"),
        "{found:?}"
    );
    let core = w.core();
    assert_eq!(core.lease_view(done).unwrap().state, LeaseState::Failed);
    assert!(core.ledger().escrow(funded).unwrap().closed);
    assert_eq!(
        core.ledger().balance(&buyer),
        Amount(balance.0 + held.0),
        "the open escrow is refunded to the base unit"
    );
    assert!(core.ledger().supply_conserved());
    // Repaired for good: nothing more to find, and the repair survives a restart.
    w.restart();
    let found = w.apply(|c, now, b| Ok(c.reconcile(now, b))).unwrap();
    assert!(found.is_empty(), "{found:?}");
}

/// A store of layout 5 archived leases without retiring their ids, leaving their closed
/// escrows in the ledger: the first reconciliation after a start retires them, and what
/// they settled still counts.
#[test]
fn closed_escrows_that_an_older_archive_left_behind_retire_at_start() {
    let mut w = World::new();
    let mut ids = Vec::new();
    step(
        &mut w,
        &mut ids,
        Op::Submit {
            count: 1,
            seconds: 60,
        },
    );
    step(&mut w, &mut ids, Op::Fund(0));
    step(&mut w, &mut ids, Op::Start(0));
    w.now += 5_000;
    step(&mut w, &mut ids, Op::Finish(0));
    let done = ids[0];
    let activity = w.core().ledger().activity();
    assert!(activity.delivered_gpu_ms > 0);
    // Archived as layout 5 did it: out of `leases`, into the archive, nothing retired.
    let view = w.core().lease_view(done).unwrap();
    assert!(view.settlement.as_ref().is_some_and(|s| s.closed));
    let batch = Batch {
        archived: vec![view],
        ..Batch::default()
    };
    w.store.as_ref().unwrap().write(batch).unwrap();
    w.restart();
    assert!(w.core().registry().lease(done).is_none());

    let found = w.apply(|c, now, b| Ok(c.reconcile(now, b))).unwrap();
    assert!(found.is_empty(), "not a repair: {found:?}");
    let core = w.core();
    assert!(core.ledger().escrow(done).is_none());
    assert!(core.ledger().retired().contains(done));
    assert_eq!(core.ledger().activity(), activity);
    assert!(core.ledger().supply_conserved());
    // Durably: after another restart the ledger is the same.
    w.restart();
    assert!(w.core().ledger().retired().contains(done));
    assert_eq!(w.core().ledger().escrow_count(), 0);
}

/// Leases that end one after another, a second apart, retire in the ledger together: one
/// `RetireLeases` transaction per [`RETIRE_EVERY_MS`] however many sweeps archive them,
/// each naming what the sweeps archived since the one before.
#[test]
fn archived_leases_retire_together_every_ten_seconds() {
    let mut w = World::new();
    let mut ids = Vec::new();
    for i in 0..30 {
        step(
            &mut w,
            &mut ids,
            Op::Submit {
                count: 1,
                seconds: 60,
            },
        );
        step(&mut w, &mut ids, Op::Fund(i));
        step(&mut w, &mut ids, Op::Start(i));
        step(
            &mut w,
            &mut ids,
            Op::Tick {
                advance_ms: 1_000,
                host0_beats: true,
            },
        );
        step(&mut w, &mut ids, Op::Finish(i));
        assert_eq!(w.view(ids[i]).unwrap().state, LeaseState::Completed);
        check(&mut w, &ids).unwrap();
    }
    let began = w.now;
    while w.core().registry().leases().count() > 0 || !w.core().retiring().is_empty() {
        step(
            &mut w,
            &mut ids,
            Op::Tick {
                advance_ms: 1_000,
                host0_beats: true,
            },
        );
        check(&mut w, &ids).unwrap();
        assert!(
            w.now < began + RETENTION_MS + 2 * RETIRE_EVERY_MS,
            "never retired"
        );
    }
    let protocol = w.protocol.address();
    let retirements: Vec<u64> = (w.store.as_ref().unwrap().history(&protocol, 1_000).unwrap())
        .into_iter()
        .filter(|e| matches!(e.tx.tx.kind, TxKind::RetireLeases { .. }))
        .map(|e| e.time_ms)
        .collect();
    // Thirty leases archived over thirty sweeps, in four retirements ten seconds apart.
    assert!(
        (3..=5).contains(&retirements.len()),
        "{} retirements for 30 leases archived a second apart",
        retirements.len()
    );
    for pair in retirements.windows(2) {
        assert!(
            pair[0].abs_diff(pair[1]) >= RETIRE_EVERY_MS,
            "{retirements:?}"
        );
    }
    assert_eq!(w.core().ledger().escrow_count(), 0);
    assert!(
        ids.iter()
            .all(|&id| w.core().ledger().retired().contains(id))
    );
}

/// The epochs' closes among the ledger's unsealed transactions.
fn epoch_closes(w: &World) -> Vec<gpumesh_types::EpochClose> {
    (w.core().ledger().unsealed().iter())
        .filter_map(|e| match &e.tx.tx.kind {
            TxKind::Epoch(close) => Some((**close).clone()),
            _ => None,
        })
        .collect()
}

/// What the buyer paid for delivery in a close.
fn paid(close: &gpumesh_types::EpochClose) -> u128 {
    (close.delivery.iter())
        .flat_map(|(_, gpus)| gpus.iter().map(|g| g.paid.0))
        .sum()
}

/// As the service closes epochs: the tick reads the close's inputs and leaves them; the
/// close is assembled apart and applied later. What was settled before the inputs were
/// read is paid in that epoch, what was settled after in the next (across a restart), and
/// nothing twice; a host offline for a moment while the close was assembled is lost in the
/// next epoch; a close abandoned changes nothing and the epoch is read again later.
#[test]
fn an_epoch_assembled_off_the_lock_pays_what_it_read_and_leaves_the_rest_to_the_next() {
    let mut w = World::new();
    w.core.as_mut().unwrap().set_epoch_off_lock(true);
    let mut ids = Vec::new();
    let until = |w: &mut World, t: u64| {
        while w.now < t {
            w.advance(500, |_| true);
        }
    };
    until(&mut w, 2_000);
    step(
        &mut w,
        &mut ids,
        Op::Submit {
            count: 2,
            seconds: 300,
        },
    );
    step(&mut w, &mut ids, Op::Fund(0));
    step(&mut w, &mut ids, Op::Start(0));
    until(&mut w, 12_000);
    step(&mut w, &mut ids, Op::Settle(0));
    let lease = ids[0];
    let charged = |w: &World| w.core().ledger().escrow(lease).unwrap().charged.0;
    let before = charged(&w);
    assert!(before > 0);

    // The epoch ends: the tick leaves its inputs, and reads no other while they are out.
    let mut inputs = None;
    while inputs.is_none() {
        w.advance(500, |_| true);
        inputs = w.core.as_mut().unwrap().take_epoch_inputs();
        assert!(w.now < 62_000, "the epoch was never due");
    }
    let inputs = inputs.unwrap();
    w.advance(500, |_| true);
    assert!(w.core.as_mut().unwrap().take_epoch_inputs().is_none());
    // Settled while the close is assembled.
    step(&mut w, &mut ids, Op::Settle(0));
    let after = charged(&w);
    assert!(after > before);
    // And host 1 goes offline and comes back, after the next epoch began.
    let quiet = w.hosts[1].address();
    let offline = |w: &World| w.core().registry().offline_hosts().any(|h| h == quiet);
    while !offline(&w) {
        w.advance(500, |i| i == 0);
        assert!(w.now < 75_000, "host 1 never went offline");
    }
    w.advance(500, |_| true);
    assert!(!offline(&w));
    let prepared = inputs.assemble();
    w.apply(|c, now, b| {
        c.close_epoch(prepared, now, b);
        Ok(())
    })
    .unwrap();
    let closes = epoch_closes(&w);
    assert_eq!(closes.len(), 1);
    assert_eq!(paid(&closes[0]), before, "the close pays what it read");
    // What the close left for the next epoch is stored.
    w.restart();
    w.core.as_mut().unwrap().set_epoch_off_lock(true);

    // The next epoch's close never comes back: nothing changes, and it is read again a
    // minute later, with everything settled since the last close.
    until(&mut w, closes[0].end_ms + 60_000);
    let mut lost = None;
    while lost.is_none() {
        w.advance(500, |_| true);
        lost = w.core.as_mut().unwrap().take_epoch_inputs();
    }
    drop(lost);
    w.apply(|c, now, _| {
        c.abandon_epoch_close(now);
        Ok(())
    })
    .unwrap();
    let failed_at = w.now;
    let mut again = None;
    while again.is_none() {
        w.advance(500, |_| true);
        again = w.core.as_mut().unwrap().take_epoch_inputs();
    }
    assert!(
        w.now >= failed_at + 60_000,
        "tried again after {} ms",
        w.now - failed_at
    );
    let prepared = again.unwrap().assemble();
    w.apply(|c, now, b| {
        c.close_epoch(prepared, now, b);
        Ok(())
    })
    .unwrap();
    let closes = epoch_closes(&w);
    assert_eq!(closes.len(), 2);
    assert_eq!(closes[1].epoch, 1);
    assert_eq!(
        paid(&closes[1]),
        after - before,
        "the next close pays what was settled after the last one read"
    );
    let earning: Vec<gpumesh_types::Address> = closes[1].capacity.iter().map(|c| c.0).collect();
    assert_eq!(
        earning,
        vec![w.hosts[0].address()],
        "host 1 was lost in epoch 1"
    );
    assert!(w.core().ledger().supply_conserved());
}

//! The ledger driven as the indexer drives it: escrows, usage, closes, blocks, replay.

use gpumesh_identity::Wallet;
use gpumesh_ledger::{
    DEFAULT_FEE_BPS, Genesis, Ledger, LedgerError, LedgerSnapshot, RangesError, escrow_amount,
    fee_split, replay, replay_from,
};
use gpumesh_types::{
    Address, Amount, B256, CloseReason, EpochClose, GpuDelivery, LeaseId, LeaseRange, Offence,
    SignedTx, Tx, TxKind, UsageRecord,
};
use proptest::prelude::*;

const CHAIN: u64 = 31337;

struct World {
    now: u64,
    ledger: Ledger,
    protocol: Wallet,
    faucet: Wallet,
    buyer: Wallet,
    host: Wallet,
    sealed: Vec<(gpumesh_types::BlockHeader, Vec<gpumesh_types::LedgerEntry>)>,
}

impl World {
    fn new() -> World {
        let protocol = Wallet::from_label("protocol");
        let faucet = Wallet::from_label("faucet");
        let genesis = Genesis::local(CHAIN, 1_000, protocol.address(), faucet.address());
        let mut world = World {
            now: 2_000,
            ledger: Ledger::new(genesis).unwrap(),
            protocol,
            faucet,
            buyer: Wallet::from_label("buyer"),
            host: Wallet::from_label("host"),
            sealed: Vec::new(),
        };
        let buyer = world.buyer.address();
        world
            .send(
                &world.faucet.clone(),
                TxKind::Transfer {
                    to: buyer,
                    amount: Amount::from_tokens(1_000),
                },
            )
            .unwrap();
        world
    }

    /// Stakes `tokens` on GPU `index` of `host`.
    fn stake(&mut self, host: &Wallet, index: u16, tokens: u64) -> Result<(), LedgerError> {
        self.send(
            host,
            TxKind::Stake {
                index,
                amount: Amount::from_tokens(tokens),
            },
        )
    }

    /// Sends `tokens` from the faucet.
    fn fund(&mut self, to: Address, tokens: u64) {
        let faucet = self.faucet.clone();
        self.send(
            &faucet,
            TxKind::Transfer {
                to,
                amount: Amount::from_tokens(tokens),
            },
        )
        .unwrap();
    }

    fn sign(&self, wallet: &Wallet, kind: TxKind) -> SignedTx {
        let nonce = self.ledger.account(&wallet.address()).nonce;
        wallet.sign_tx(Tx {
            chain_id: CHAIN,
            from: wallet.address(),
            nonce,
            kind,
        })
    }

    fn send(&mut self, wallet: &Wallet, kind: TxKind) -> Result<(), LedgerError> {
        let stx = self.sign(wallet, kind);
        self.ledger.apply(&stx, self.now).map(|_| ())
    }

    fn open(
        &mut self,
        lease: u64,
        price: Amount,
        gpus: u16,
        max_ms: u64,
    ) -> Result<(), LedgerError> {
        let amount = escrow_amount(price, gpus, max_ms).unwrap();
        let host = self.host.address();
        self.send(
            &self.buyer.clone(),
            TxKind::OpenEscrow {
                lease: LeaseId(lease),
                host,
                price_per_gpu_hour: price,
                gpus,
                max_duration_ms: max_ms,
                amount,
            },
        )?;
        // The workload starts at once: billable time runs from here (tests/billing.rs
        // covers leases that never start).
        let protocol = self.protocol.clone();
        self.send(
            &protocol,
            TxKind::StartLease {
                lease: LeaseId(lease),
            },
        )
    }

    /// Settles usage, the clock first moved on as far as the claim needs (as it would
    /// have while a real workload ran).
    fn usage(&mut self, lease: u64, gpu_ms: u64, is_final: bool) -> Result<(), LedgerError> {
        if let Some(e) = self.ledger.escrow(LeaseId(lease))
            && let Some(start) = e.started_ms
        {
            self.now = self.now.max(start + gpu_ms.div_ceil(e.gpus as u64));
        }
        let records = vec![UsageRecord {
            lease: LeaseId(lease),
            gpu_ms,
            is_final,
        }];
        self.send(&self.host.clone(), TxKind::SettleUsage { records })
    }

    fn seal(&mut self) {
        if let Some(block) = self.ledger.seal(self.now) {
            self.sealed.push(block);
        }
    }
}

#[test]
fn a_lease_pays_host_and_treasury_and_refunds_the_rest_exactly() {
    let mut w = World::new();
    let price = Amount::parse_tokens("2.10").unwrap();
    // 2 GPUs for at most 10 minutes: escrow 2.10 × 2 × 1/6 = 0.7 tokens.
    w.open(1, price, 2, 600_000).unwrap();
    let escrow = w.ledger.escrow(LeaseId(1)).unwrap().amount;
    assert_eq!(escrow, Amount::parse_tokens("0.7").unwrap());
    w.usage(1, 60_000, false).unwrap(); // one GPU-minute
    w.usage(1, 250_001, true).unwrap();
    let e = w.ledger.escrow(LeaseId(1)).unwrap().view();
    assert!(e.closed);
    // 250001 GPU-ms at 2.1 tokens per GPU-hour, rounded down to the base unit.
    assert_eq!(
        e.charged.0,
        2_100_000_000_000_000_000u128 * 250_001 / 3_600_000
    );
    assert_eq!(e.treasury_share.0, e.charged.0 / 5);
    assert_eq!(e.host_share.0 + e.treasury_share.0 + e.refund.0, e.escrow.0);
    assert_eq!(w.ledger.balance(&w.host.address()), e.host_share);
    assert_eq!(
        w.ledger.balance(&w.buyer.address()).0,
        Amount::from_tokens(1_000).0 - e.charged.0
    );
    assert!(w.ledger.supply_conserved());
}

#[test]
fn rejected_transactions_change_nothing() {
    let mut w = World::new();
    let price = Amount::from_tokens(1);
    w.open(1, price, 1, 3_600_000).unwrap();
    let root = w.ledger.state_root();
    let count = w.ledger.transaction_count();
    let host = w.host.address();
    let stranger = Wallet::from_label("stranger");
    let cases: Vec<(&str, Result<(), LedgerError>)> = vec![
        ("usage over the escrow", w.usage(1, 3_600_001, false)),
        ("second escrow for the lease", w.open(1, price, 1, 1_000)),
        (
            "more than the balance",
            w.open(2, Amount::from_tokens(10_000), 1, 3_600_000),
        ),
        (
            "an escrow whose amount overflows",
            w.send(
                &w.buyer.clone(),
                TxKind::OpenEscrow {
                    lease: LeaseId(3),
                    host,
                    price_per_gpu_hour: Amount(u128::MAX / 2),
                    gpus: 8,
                    max_duration_ms: 3_600_000,
                    amount: Amount(u128::MAX),
                },
            ),
        ),
        (
            "a transfer from an account that never held tokens",
            w.send(
                &stranger,
                TxKind::Transfer {
                    to: host,
                    amount: Amount(1),
                },
            ),
        ),
        (
            "transfer of zero",
            w.send(
                &w.buyer.clone(),
                TxKind::Transfer {
                    to: host,
                    amount: Amount::ZERO,
                },
            ),
        ),
        (
            "close by a non-protocol key",
            w.send(
                &w.buyer.clone(),
                TxKind::CloseEscrow {
                    lease: LeaseId(1),
                    reason: CloseReason::HostLost,
                },
            ),
        ),
        ("usage by someone else", {
            let records = vec![UsageRecord {
                lease: LeaseId(1),
                gpu_ms: 1,
                is_final: false,
            }];
            w.send(&w.buyer.clone(), TxKind::SettleUsage { records })
        }),
        ("usage of an unknown lease", w.usage(9, 1, false)),
        (
            "an empty batch",
            w.send(&w.host.clone(), TxKind::SettleUsage { records: vec![] }),
        ),
    ];
    // Each kind of mistake has its own error, so that the API can give it a stable code.
    let expected = |what: &str, e: &LedgerError| match what {
        "more than the balance" => matches!(e, LedgerError::InsufficientFunds { .. }),
        "an escrow whose amount overflows" => matches!(e, LedgerError::Overflow(_)),
        "a transfer from an account that never held tokens" => {
            matches!(e, LedgerError::UnknownAccount(a) if *a == stranger.address())
        }
        _ => true,
    };
    for (what, result) in cases {
        let e = result.expect_err(what);
        assert!(expected(what, &e), "{what}: {e:?}");
    }
    // Wrong nonce, wrong chain and a bad signature.
    let mut stx = w.sign(
        &w.buyer,
        TxKind::Transfer {
            to: host,
            amount: Amount(1),
        },
    );
    stx.tx.nonce += 1;
    assert!(matches!(
        w.ledger.apply(&stx, 0),
        Err(LedgerError::BadSignature(_))
    ));
    let stx = w.buyer.sign_tx(Tx {
        nonce: 7,
        ..w.sign(
            &w.buyer,
            TxKind::Transfer {
                to: host,
                amount: Amount(1),
            },
        )
        .tx
    });
    assert!(matches!(
        w.ledger.apply(&stx, 0),
        Err(LedgerError::WrongNonce {
            expected: 1,
            got: 7,
            ..
        })
    ));
    let stx = w.buyer.sign_tx(Tx {
        chain_id: 1,
        ..w.sign(
            &w.buyer,
            TxKind::Transfer {
                to: host,
                amount: Amount(1),
            },
        )
        .tx
    });
    assert!(matches!(
        w.ledger.apply(&stx, 0),
        Err(LedgerError::WrongChain { .. })
    ));
    assert_eq!(w.ledger.state_root(), root);
    assert_eq!(w.ledger.transaction_count(), count);
}

#[test]
fn a_lost_host_is_paid_only_what_it_settled() {
    let mut w = World::new();
    w.open(1, Amount::from_tokens(3), 1, 3_600_000).unwrap();
    w.usage(1, 1_200_000, false).unwrap(); // 20 minutes settled
    let protocol = w.protocol.clone();
    w.send(
        &protocol,
        TxKind::CloseEscrow {
            lease: LeaseId(1),
            reason: CloseReason::HostLost,
        },
    )
    .unwrap();
    let e = w.ledger.escrow(LeaseId(1)).unwrap().view();
    assert_eq!(e.charged, Amount::from_tokens(1));
    assert_eq!(e.refund, Amount::from_tokens(2));
    assert!(
        w.usage(1, 1_300_000, true).is_err(),
        "a closed escrow takes no more usage"
    );
}

#[test]
fn replay_reproduces_the_chain_and_finds_tampering() {
    let mut w = World::new();
    w.seal();
    w.open(1, Amount::from_tokens(2), 4, 60_000).unwrap();
    w.usage(1, 100_000, false).unwrap();
    w.seal();
    w.usage(1, 200_000, true).unwrap();
    w.seal();
    let genesis = w.ledger.genesis().clone();
    let (ledger, report) = replay(genesis.clone(), w.sealed.clone(), vec![]).unwrap();
    assert_eq!(report.blocks, 3);
    // The buyer's funding, the escrow, its start and two settlements.
    assert_eq!(report.transactions, 5);
    assert!(report.supply_conserved);
    assert_eq!(report.state_root, w.ledger.state_root());
    assert_eq!(ledger.head(), w.ledger.head());

    let mut tampered = w.sealed.clone();
    if let gpumesh_types::TxKind::SettleUsage { records } = &mut tampered[1].1[2].tx.tx.kind {
        records[0].gpu_ms = 1; // changes the transaction, so its signature no longer holds
    }
    let err = replay(genesis.clone(), tampered, vec![]).unwrap_err();
    assert!(err.to_string().starts_with("block 2 is bad"), "{err}");

    let mut reordered = w.sealed.clone();
    reordered.swap(1, 2);
    let err = replay(genesis, reordered, vec![]).unwrap_err();
    assert!(err.to_string().starts_with("block 3 is bad"), "{err}");
}

#[derive(Clone, Debug)]
enum Op {
    Stake {
        index: u16,
        tokens: u64,
    },
    Unstake {
        index: u16,
    },
    Withdraw {
        index: u16,
    },
    Epoch {
        capacity: Vec<(u16, u32)>,
        delivery: Vec<GpuDelivery>,
        checker_tasks: u32,
        bonus: bool,
        advance_ms: u64,
    },
    Slash {
        index: u16,
        malicious: bool,
    },
    Transfer {
        to_host: bool,
        tokens: u64,
    },
    Open {
        lease: u64,
        price_milli: u64,
        gpus: u16,
        max_s: u64,
    },
    Usage {
        lease: u64,
        gpu_s: u64,
        is_final: bool,
    },
    Close {
        lease: u64,
    },
    Seal,
}

/// A container's delivery in an epoch, some with a fee above their payment and some with a
/// tier out of range: refused.
fn gpu_delivery() -> impl Strategy<Value = GpuDelivery> {
    (
        0u16..3,
        0u64..10_000_000,
        0u64..1_000_000,
        0u64..1_000_000,
        0u8..5,
    )
        .prop_map(|(index, gpu_ms, paid_milli, fee_milli, tier)| GpuDelivery {
            index,
            gpu_ms,
            paid: Amount(paid_milli as u128 * 1_000_000_000_000_000),
            fee: Amount(fee_milli as u128 * 200_000_000_000_000),
            tier,
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (any::<bool>(), 0u64..2_000).prop_map(|(to_host, tokens)| Op::Transfer { to_host, tokens }),
        (0u64..6, 0u64..5_000, 0u16..9, 0u64..7_200).prop_map(
            |(lease, price_milli, gpus, max_s)| Op::Open {
                lease,
                price_milli,
                gpus,
                max_s
            }
        ),
        (0u64..6, 0u64..30_000, any::<bool>()).prop_map(|(lease, gpu_s, is_final)| Op::Usage {
            lease,
            gpu_s,
            is_final
        }),
        (0u64..6).prop_map(|lease| Op::Close { lease }),
        Just(Op::Seal),
        (0u16..3, 0u64..40).prop_map(|(index, tokens)| Op::Stake { index, tokens }),
        (0u16..3).prop_map(|index| Op::Unstake { index }),
        (0u16..3).prop_map(|index| Op::Withdraw { index }),
        (
            proptest::collection::vec((0u16..3, 0u32..300), 0..3),
            proptest::collection::vec(gpu_delivery(), 0..3),
            0u32..50,
            any::<bool>(),
            0u64..600_000,
        )
            .prop_map(
                |(capacity, delivery, checker_tasks, bonus, advance_ms)| Op::Epoch {
                    capacity,
                    delivery,
                    checker_tasks,
                    bonus,
                    advance_ms
                }
            ),
        (0u16..3, any::<bool>()).prop_map(|(index, malicious)| Op::Slash { index, malicious }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn supply_is_conserved_and_replay_agrees(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new();
        let (faucet, host) = (w.faucet.clone(), w.host.address());
        w.send(&faucet, TxKind::Transfer { to: host, amount: Amount::from_tokens(100) }).unwrap();
        // (blocks sealed by then, the encoded snapshot of the ledger after them)
        let mut snapshots: Vec<(usize, Vec<u8>)> = Vec::new();
        for op in ops {
            let before = w.ledger.state_root();
            let result = match op {
                Op::Transfer { to_host, tokens } => {
                    let (from, to) = if to_host { (w.buyer.clone(), w.host.address()) } else { (w.host.clone(), w.buyer.address()) };
                    w.send(&from, TxKind::Transfer { to, amount: Amount::from_tokens(tokens) })
                }
                Op::Open { lease, price_milli, gpus, max_s } => {
                    w.open(lease, Amount(price_milli as u128 * 1_000_000_000_000_000), gpus, max_s * 1000)
                }
                Op::Usage { lease, gpu_s, is_final } => w.usage(lease, gpu_s * 1000, is_final),
                Op::Close { lease } => {
                    let protocol = w.protocol.clone();
                    w.send(&protocol, TxKind::CloseEscrow { lease: LeaseId(lease), reason: CloseReason::HostLost })
                }
                Op::Seal => {
                    w.seal();
                    let snapshot = w.ledger.snapshot().expect("nothing is unsealed right after a seal");
                    snapshots.push((w.sealed.len(), snapshot.encode()));
                    Ok(())
                }
                Op::Stake { index, tokens } => {
                    let host = w.host.clone();
                    w.stake(&host, index, tokens)
                }
                Op::Unstake { index } => {
                    let host = w.host.clone();
                    w.send(&host, TxKind::Unstake { index })
                }
                Op::Withdraw { index } => {
                    let host = w.host.clone();
                    let stx = w.sign(&host, TxKind::Withdraw { index });
                    w.now += 1;
                    w.ledger.apply(&stx, w.now).map(|_| ())
                }
                                Op::Epoch { mut capacity, mut delivery, checker_tasks, bonus, advance_ms } => {
                    w.now += advance_ms;
                    // The canonical order; tiers stay as drawn, some of them invalid.
                    capacity.sort_unstable_by_key(|c| c.0);
                    capacity.dedup_by_key(|c| c.0);
                    delivery.sort_unstable_by_key(|d| d.index);
                    delivery.dedup_by_key(|d| d.index);
                    let host = w.host.address();
                    let close = EpochClose {
                        epoch: w.ledger.totals().next_epoch,
                        end_ms: w.now,
                        evidence: B256::ZERO,
                        capacity: vec![(host, capacity)],
                        delivery: vec![(host, delivery)],
                        checkers: vec![(w.buyer.address(), checker_tasks, 9_600)],
                        quarter_bonus: bonus,
                    };
                    let protocol = w.protocol.clone();
                    let stx = w.sign(&protocol, TxKind::Epoch(Box::new(close)));
                    w.ledger.apply(&stx, w.now).map(|_| ())
                }
                Op::Slash { index, malicious } => {
                    let protocol = w.protocol.clone();
                    let offence = if malicious { Offence::Malicious } else { Offence::Downtime };
                    let host = w.host.address();
                    w.send(&protocol, TxKind::Slash { host, index, k_centi: 100, offence, evidence: B256::ZERO })
                }
            };
            if result.is_err() {
                prop_assert_eq!(w.ledger.state_root(), before, "a rejected transaction changed state");
            }
            prop_assert!(w.ledger.supply_conserved());
        }
        for lease in 0..6 {
            if let Some(e) = w.ledger.escrow(LeaseId(lease))
                && e.closed {
                    prop_assert_eq!(e.host_share.0 + e.treasury_share.0 + e.refund.0, e.amount.0);
                }
        }
        w.seal();
        let (_, report) = replay(w.ledger.genesis().clone(), w.sealed.clone(), vec![]).unwrap();
        prop_assert_eq!(report.state_root, w.ledger.state_root());
        prop_assert!(report.supply_conserved);
        // A restart from the first or the last snapshot, replaying only the blocks after
        // it, reaches the same state and head as the ledger that never stopped.
        for (sealed, bytes) in [snapshots.first(), snapshots.last()].into_iter().flatten() {
            let snapshot = LedgerSnapshot::decode(bytes).unwrap();
            prop_assert_eq!(snapshot.height(), *sealed as u64);
            let start = Ledger::from_snapshot(w.ledger.genesis().clone(), snapshot).unwrap();
            let (restarted, _) = replay_from(start, w.sealed[*sealed..].to_vec(), vec![]).unwrap();
            let mut restarted = restarted;
            prop_assert_eq!(restarted.state_root(), w.ledger.state_root());
            prop_assert_eq!(restarted.head(), w.ledger.head());
            prop_assert_eq!(restarted.transaction_count(), w.ledger.transaction_count());
            prop_assert_eq!(restarted.reward_root(), w.ledger.reward_root());
        }
    }
}

/// A container's delivery in an epoch: its buyers paid `paid_tokens`, the treasury kept its
/// fee out of it.
fn gpu(index: u16, gpu_ms: u64, paid_tokens: u64, tier: u8) -> GpuDelivery {
    let paid = Amount::from_tokens(paid_tokens);
    let (_, fee) = fee_split(paid, DEFAULT_FEE_BPS);
    GpuDelivery {
        index,
        gpu_ms,
        paid,
        fee,
        tier,
    }
}

/// Paid enough that no container's share of a local epoch's delivery pool reaches its cap.
const UNCAPPED: u64 = 1_000_000;

/// A per-host list in the canonical order the ledger requires: hosts ascending.
fn by_host<T>(mut list: Vec<(Address, Vec<T>)>) -> Vec<(Address, Vec<T>)> {
    list.sort_unstable_by_key(|l| l.0);
    list
}

fn epoch(
    w: &mut World,
    capacity: Vec<gpumesh_types::HostCapacity>,
    delivery: Vec<gpumesh_types::HostDelivery>,
    checkers: Vec<gpumesh_types::CheckerTasks>,
    bonus: bool,
) {
    w.now += 60_000;
    let close = EpochClose {
        epoch: w.ledger.totals().next_epoch,
        end_ms: w.now,
        evidence: B256::ZERO,
        capacity,
        delivery,
        checkers,
        quarter_bonus: bonus,
    };
    let protocol = w.protocol.clone();
    w.send(&protocol, TxKind::Epoch(Box::new(close))).unwrap();
}

#[test]
fn an_epoch_pays_by_weight_vests_linearly_and_conserves_supply() {
    let mut w = World::new();
    let (a, b) = (w.host.clone(), Wallet::from_label("host b"));
    for h in [&a, &b] {
        w.fund(h.address(), 100);
    }
    // A stakes its requirement for K = 1.00 (10 tokens locally); B for K = 2.00; A's
    // second container is unstaked and earns nothing.
    w.stake(&a, 0, 10).unwrap();
    w.stake(&b, 0, 20).unwrap();
    let econ = w.ledger.genesis().economics.clone();
    let treasury = w.ledger.genesis().treasury;
    let (a_before, b_before, t_before) = (
        w.ledger.balance(&a.address()),
        w.ledger.balance(&b.address()),
        w.ledger.balance(&treasury),
    );
    let checker = Wallet::from_label("checker").address();
    epoch(
        &mut w,
        by_host(vec![
            (a.address(), vec![(0, 100), (1, 100)]),
            (b.address(), vec![(0, 200)]),
        ]),
        by_host(vec![
            (a.address(), vec![gpu(0, 3_600_000, UNCAPPED, 3)]),
            (b.address(), vec![gpu(0, 3_600_000, UNCAPPED, 1)]),
        ]),
        vec![(checker, 7, 9_000)],
        false,
    );
    // The pools, computed independently from the parameters.
    let provider = econ.provider_pool.0 * econ.provider_rate_bps as u128 / 10_000
        * econ.epoch_ms as u128
        / gpumesh_ledger::YEAR_MS as u128;
    let capacity = provider * econ.capacity_share_bps as u128 / 10_000;
    let delivery = provider - capacity;
    let (cap_a, cap_b) = (capacity / 3, capacity * 2 / 3);
    let (del_a, del_b) = (delivery * 5_000 / 15_000, delivery * 10_000 / 15_000);
    let reward_a = cap_a + del_a;
    let reward_b = cap_b + del_b;
    // The provider emission's rounding may differ by a base unit or two from this
    // re-derivation (it multiplies before dividing); the ledger's own numbers must agree
    // with each other exactly.
    let got_a = w.ledger.cumulative_reward(&a.address()).0;
    let got_b = w.ledger.cumulative_reward(&b.address()).0;
    assert!(
        got_a.abs_diff(reward_a) < 10 && got_b.abs_diff(reward_b) < 10,
        "{got_a} vs {reward_a}, {got_b} vs {reward_b}"
    );
    assert_eq!(
        w.ledger.balance(&a.address()).0 - a_before.0,
        got_a * 3 / 10,
        "30% at once"
    );
    assert_eq!(
        w.ledger.vesting_locked(&a.address()).0,
        got_a - got_a * 3 / 10,
        "70% vests"
    );
    let checker_pool =
        econ.checker_pool.0 * econ.epoch_ms as u128 / econ.checker_schedule_ms as u128;
    assert_eq!(
        w.ledger.balance(&checker).0,
        checker_pool,
        "one checker takes the whole pool"
    );
    assert!(
        w.ledger.balance(&treasury).0 - t_before.0 < 10,
        "only rounding remainders reach the treasury"
    );
    assert!(w.ledger.supply_conserved());

    // The vesting releases in equal steps over the vesting period, then stops.
    let steps = econ.vesting_steps();
    let locked = w.ledger.vesting_locked(&a.address()).0;
    let bal = w.ledger.balance(&a.address()).0;
    epoch(&mut w, vec![], vec![], vec![], false);
    assert_eq!(
        w.ledger.balance(&a.address()).0 - bal,
        locked / steps as u128
    );
    for _ in 1..steps {
        epoch(&mut w, vec![], vec![], vec![], false);
    }
    assert_eq!(w.ledger.vesting_locked(&a.address()), Amount::ZERO);
    assert_eq!(
        w.ledger.balance(&a.address()).0 - a_before.0,
        got_a,
        "everything granted was paid"
    );
    assert_eq!(w.ledger.balance(&b.address()).0 - b_before.0, got_b);
    assert!(w.ledger.supply_conserved());
    w.seal();
    let (_, report) = replay(w.ledger.genesis().clone(), w.sealed.clone(), vec![]).unwrap();
    assert!(report.supply_conserved);
    assert_eq!(report.state_root, w.ledger.state_root());
}

#[test]
fn staking_unbonds_before_it_can_be_withdrawn() {
    let mut w = World::new();
    let host = w.host.clone();
    w.fund(host.address(), 50);
    w.stake(&host, 3, 30).unwrap();
    assert_eq!(
        w.ledger.stake(&host.address(), 3).bonded,
        Amount::from_tokens(30)
    );
    assert!(matches!(
        w.send(&host, TxKind::Withdraw { index: 3 }),
        Err(LedgerError::NothingUnbonding { .. })
    ));
    w.send(&host, TxKind::Unstake { index: 3 }).unwrap();
    let unbonding = w.ledger.genesis().economics.unbonding_ms;
    assert!(matches!(
        w.send(&host, TxKind::Withdraw { index: 3 }),
        Err(LedgerError::StillUnbonding { .. })
    ));
    w.now += unbonding;
    w.send(&host, TxKind::Withdraw { index: 3 }).unwrap();
    assert_eq!(w.ledger.balance(&host.address()), Amount::from_tokens(50));
    assert_eq!(
        w.ledger.stake(&host.address(), 3),
        gpumesh_ledger::Stake::default()
    );
    assert!(matches!(
        w.stake(&host, 0, 51),
        Err(LedgerError::InsufficientFunds { .. })
    ));
}

#[test]
fn slashing_takes_unvested_rewards_first_then_stake() {
    let mut w = World::new();
    let host = w.host.clone();
    w.fund(host.address(), 20);
    w.stake(&host, 0, 10).unwrap();
    epoch(
        &mut w,
        vec![(host.address(), vec![(0, 100)])],
        vec![],
        vec![],
        false,
    );
    let locked = w.ledger.vesting_locked(&host.address());
    assert!(locked > Amount::ZERO);
    let treasury = w.ledger.genesis().treasury;
    let t0 = w.ledger.balance(&treasury);
    // Downtime costs a third of K × coefficient: 3.33… tokens, all from unvested rewards.
    let protocol = w.protocol.clone();
    let slash = |offence| TxKind::Slash {
        host: host.address(),
        index: 0,
        k_centi: 100,
        offence,
        evidence: B256::repeat_byte(7),
    };
    w.send(&protocol, slash(Offence::Downtime)).unwrap();
    let third = Amount::from_tokens(10).0 / 3;
    let from_vesting = third.min(locked.0);
    assert_eq!(
        w.ledger.vesting_locked(&host.address()).0,
        locked.0 - from_vesting
    );
    assert_eq!(w.ledger.balance(&treasury).0 - t0.0, third);
    // Malicious behaviour costs the full K × coefficient; a host with no unvested rewards
    // pays it from its stake, and the container falls below its requirement.
    let other = Wallet::from_label("host without rewards");
    w.fund(other.address(), 20);
    w.stake(&other, 0, 12).unwrap();
    let t1 = w.ledger.balance(&treasury);
    let malicious = TxKind::Slash {
        host: other.address(),
        index: 0,
        k_centi: 100,
        offence: Offence::Malicious,
        evidence: B256::repeat_byte(9),
    };
    w.send(&protocol, malicious).unwrap();
    assert_eq!(
        w.ledger.stake(&other.address(), 0).bonded,
        Amount::from_tokens(2)
    );
    assert_eq!(
        w.ledger.balance(&treasury).0 - t1.0,
        Amount::from_tokens(10).0
    );
    assert!(w.ledger.supply_conserved());
    // Only the protocol slashes.
    assert!(matches!(
        w.send(&host.clone(), slash(Offence::Malicious)),
        Err(LedgerError::NotProtocol)
    ));
}

#[test]
fn an_epoch_out_of_canonical_order_is_refused_whole() {
    let mut w = World::new();
    let (a, b) = (w.host.address(), Wallet::from_label("host b").address());
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    let bad: Vec<(&str, EpochClose)> = vec![
        (
            "hosts descending",
            EpochClose {
                capacity: vec![(hi, vec![(0, 100)]), (lo, vec![(0, 100)])],
                ..empty_epoch(&w)
            },
        ),
        (
            "a host twice",
            EpochClose {
                delivery: vec![(lo, vec![gpu(0, 1, 1, 1)]), (lo, vec![gpu(1, 1, 1, 1)])],
                ..empty_epoch(&w)
            },
        ),
        (
            "a GPU twice",
            EpochClose {
                capacity: vec![(lo, vec![(1, 100), (1, 100)])],
                ..empty_epoch(&w)
            },
        ),
        (
            "tier 4",
            EpochClose {
                delivery: vec![(lo, vec![gpu(0, 1, 1, 4)])],
                ..empty_epoch(&w)
            },
        ),
        (
            "a fee above the payment",
            EpochClose {
                delivery: vec![(
                    lo,
                    vec![GpuDelivery {
                        fee: Amount(2),
                        paid: Amount(1),
                        ..gpu(0, 1, 0, 1)
                    }],
                )],
                ..empty_epoch(&w)
            },
        ),
        (
            "payments too large to weigh",
            EpochClose {
                delivery: vec![(
                    lo,
                    vec![
                        GpuDelivery {
                            paid: Amount(u128::MAX / 20_000 + 1),
                            ..gpu(0, 1, 0, 1)
                        },
                        GpuDelivery {
                            paid: Amount(u128::MAX / 20_000 + 1),
                            ..gpu(1, 1, 0, 1)
                        },
                    ],
                )],
                ..empty_epoch(&w)
            },
        ),
        (
            "checkers descending",
            EpochClose {
                checkers: vec![(hi, 1, 0), (lo, 1, 0)],
                ..empty_epoch(&w)
            },
        ),
        (
            "uptime over 100%",
            EpochClose {
                checkers: vec![(lo, 1, 10_001)],
                ..empty_epoch(&w)
            },
        ),
    ];
    let protocol = w.protocol.clone();
    for (what, close) in bad {
        let root = w.ledger.state_root();
        let result = w.send(&protocol, TxKind::Epoch(Box::new(close)));
        assert!(
            matches!(result, Err(LedgerError::InvalidEpoch(_))),
            "{what}: {result:?}"
        );
        assert_eq!(w.ledger.state_root(), root, "{what}: nothing changed");
        assert_eq!(w.ledger.totals().next_epoch, 0);
    }
    w.send(&protocol, TxKind::Epoch(Box::new(empty_epoch(&w))))
        .unwrap();
    assert_eq!(w.ledger.totals().next_epoch, 1);
}

fn empty_epoch(w: &World) -> EpochClose {
    EpochClose {
        epoch: w.ledger.totals().next_epoch,
        end_ms: w.now,
        evidence: B256::ZERO,
        capacity: vec![],
        delivery: vec![],
        checkers: vec![],
        quarter_bonus: false,
    }
}

/// Runs OpenZeppelin's own `StandardMerkleTree` (scripts/oz-merkle) over a reward tree and
/// its proofs. Skipped where Node.js or the package is missing, unless
/// GPUMESH_REQUIRE_OZ=1 (as in CI) makes it required.
fn check_with_openzeppelin(root: B256, proofs: &[gpumesh_types::RewardProof]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/oz-merkle");
    let required = std::env::var("GPUMESH_REQUIRE_OZ").is_ok_and(|v| v == "1");
    let node = std::process::Command::new("node").arg("--version").output();
    if node.is_err() || !dir.join("node_modules/@openzeppelin/merkle-tree").exists() {
        assert!(
            !required,
            "GPUMESH_REQUIRE_OZ=1 but node or scripts/oz-merkle/node_modules is missing (npm ci --prefix scripts/oz-merkle)"
        );
        eprintln!("skipping the OpenZeppelin check: no node or no scripts/oz-merkle/node_modules");
        return;
    }
    let values: Vec<_> = proofs
        .iter()
        .map(|p| serde_json::json!([p.account, p.cumulative]))
        .collect();
    let input = serde_json::json!({ "root": root, "values": values, "proofs": proofs });
    let mut child = std::process::Command::new("node")
        .arg(dir.join("check.mjs"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "OpenZeppelin disagrees: {report}");
    assert!(report.contains("\"ok\":true"), "{report}");
}

#[test]
fn reward_proofs_check_out_with_openzeppelin() {
    let mut w = World::new();
    let host = w.host.clone();
    w.fund(host.address(), 100);
    w.stake(&host, 0, 10).unwrap();
    // Many checkers with uneven task counts make a tree of odd, uneven shape.
    let mut checkers: Vec<gpumesh_types::CheckerTasks> = (0..37u32)
        .map(|i| {
            let a = Wallet::from_label(&format!("checker {i}")).address();
            (a, 1 + i * i % 97, 9_000 + (i as u16 * 37) % 1_000)
        })
        .collect();
    checkers.sort_unstable_by_key(|c| c.0);
    let capacity = vec![(host.address(), vec![(0, 100)])];
    let mut roots = Vec::new();
    for e in 0..2 {
        epoch(
            &mut w,
            capacity.clone(),
            vec![],
            checkers[e * 5..].to_vec(),
            e == 1,
        );
        w.seal();
        roots.push(w.sealed.last().unwrap().0.reward_root);
    }
    let entries: Vec<_> = w.sealed.iter().flat_map(|b| b.1.clone()).collect();
    let genesis = w.ledger.genesis().clone();
    for (e, root) in roots.iter().enumerate() {
        let rewarded: Vec<Address> = std::iter::once(host.address())
            .chain(checkers.iter().map(|c| c.0))
            .collect();
        let proofs: Vec<_> = rewarded
            .iter()
            .map(|a| gpumesh_ledger::reward_proof(genesis.clone(), entries.clone(), *a, e as u64))
            .collect::<Result<_, _>>()
            .unwrap();
        for p in &proofs {
            assert_eq!(p.root, *root, "epoch {e}: the proof's root is the block's");
            assert_eq!(
                gpumesh_ledger::merkle::process_proof(p.leaf, &p.proof),
                *root
            );
        }
        check_with_openzeppelin(*root, &proofs);
    }
    // Cumulative: a checker rewarded twice has more after the second epoch; one left out
    // of the second keeps its first amount.
    let proof = |a: Address, e: u64| {
        gpumesh_ledger::reward_proof(genesis.clone(), entries.clone(), a, e).unwrap()
    };
    let (twice, once) = (checkers[10].0, checkers[0].0);
    assert!(proof(twice, 1).cumulative > proof(twice, 0).cumulative);
    assert_eq!(proof(once, 1).cumulative, proof(once, 0).cumulative);
    assert!(matches!(
        gpumesh_ledger::reward_proof(genesis.clone(), entries.clone(), checkers[0].0, 2),
        Err(gpumesh_ledger::ProofError::EpochNotClosed { epoch: 2, next: 2 })
    ));
    let nobody = Wallet::from_label("nobody").address();
    assert!(matches!(
        gpumesh_ledger::reward_proof(genesis, entries, nobody, 1),
        Err(gpumesh_ledger::ProofError::NoRewards { .. })
    ));
}

#[test]
fn delivery_is_paid_by_the_stake_of_the_k_it_was_live_with() {
    let mut w = World::new();
    let (a, b) = (w.host.clone(), Wallet::from_label("host b"));
    for h in [&a, &b] {
        w.fund(h.address(), 100);
    }
    // Locally K = 1.00 needs 10 tokens. A's GPU 0 has it, GPU 1 has less, GPU 2 has some
    // but is not live; B's GPU 0 has some and is not live either.
    for (h, index, tokens) in [(&a, 0, 10), (&a, 1, 5), (&a, 2, 5), (&b, 0, 5)] {
        w.stake(h, index, tokens).unwrap();
    }
    let hour = 3_600_000;
    epoch(
        &mut w,
        vec![(a.address(), vec![(0, 100), (1, 100)])],
        by_host(vec![
            (
                a.address(),
                vec![
                    gpu(0, hour, UNCAPPED, 1),
                    gpu(1, hour, UNCAPPED, 1),
                    gpu(2, hour, UNCAPPED, 1),
                ],
            ),
            (b.address(), vec![gpu(0, hour, UNCAPPED, 1)]),
        ]),
        vec![],
        false,
    );
    let econ = w.ledger.genesis().economics.clone();
    let provider = w.ledger.totals().provider_emitted.0;
    let capacity = provider * econ.capacity_share_bps as u128 / 10_000;
    let delivery = provider - capacity;
    // Capacity: only A's GPU 0 (GPU 1's stake is under its requirement). Delivery: A's
    // GPU 0 (live, staked for its K) and GPU 2 (not live, staked), not GPU 1; B's GPU 0.
    // Each container's share is rounded down on its own.
    assert_eq!(w.ledger.cumulative_reward(&b.address()).0, delivery / 3);
    assert_eq!(
        w.ledger.cumulative_reward(&a.address()).0,
        capacity + delivery / 3 * 2
    );
    assert!(w.ledger.supply_conserved());
}

#[test]
fn deployment_escrows_are_paid_from_the_owners_balance_within_the_allowance() {
    let mut w = World::new();
    let price = Amount::from_tokens(3);
    let buyer = w.buyer.address();
    let host = w.host.address();
    let protocol = w.protocol.clone();
    let period = 600_000; // 10 minutes: 0.5 tokens at 3 tokens per GPU-hour
    let per_period = escrow_amount(price, 1, period).unwrap();
    let open = |lease: u64| TxKind::OpenEscrowFor {
        buyer,
        deployment: 7,
        lease: LeaseId(lease),
        host,
        price_per_gpu_hour: price,
        gpus: 1,
        max_duration_ms: period,
        amount: per_period,
    };
    let extend = |lease: u64, amount: Amount| TxKind::ExtendEscrow {
        buyer,
        deployment: 7,
        lease: LeaseId(lease),
        extra_ms: period,
        amount,
    };
    // Without an allowance the protocol cannot spend the owner's balance.
    assert!(matches!(
        w.send(&protocol, open(1)),
        Err(LedgerError::AllowanceExceeded { .. })
    ));
    // Only the owner sets it, only the protocol spends it.
    w.send(
        &w.buyer.clone(),
        TxKind::Allow {
            deployment: 7,
            amount: Amount(per_period.0 * 2),
        },
    )
    .unwrap();
    assert!(matches!(
        w.send(&w.host.clone(), open(1)),
        Err(LedgerError::NotProtocol)
    ));
    let before = w.ledger.balance(&buyer);
    w.send(&protocol, open(1)).unwrap();
    assert_eq!(w.ledger.balance(&buyer).0, before.0 - per_period.0);
    assert_eq!(w.ledger.allowance(&buyer, 7), per_period);
    // A top-up must be exactly one more period of the escrow's own terms.
    assert!(matches!(
        w.send(&protocol, extend(1, Amount(per_period.0 - 1))),
        Err(LedgerError::EscrowAmount { .. })
    ));
    w.send(&protocol, extend(1, per_period)).unwrap();
    let e = w.ledger.escrow(LeaseId(1)).unwrap().clone();
    assert_eq!(e.amount.0, per_period.0 * 2);
    assert_eq!(e.max_gpu_ms, 2 * period);
    // The allowance is spent: no third period.
    assert!(matches!(
        w.send(&protocol, extend(1, per_period)),
        Err(LedgerError::AllowanceExceeded { .. })
    ));
    // Usage over both periods settles once the workload started; the final record
    // refunds the rest to the owner.
    w.send(&protocol, TxKind::StartLease { lease: LeaseId(1) })
        .unwrap();
    w.usage(1, period + 60_000, false).unwrap();
    w.usage(1, period + 120_000, true).unwrap();
    let e = w.ledger.escrow(LeaseId(1)).unwrap().view();
    assert!(e.closed);
    assert_eq!(e.host_share.0 + e.treasury_share.0 + e.refund.0, e.escrow.0);
    assert_eq!(w.ledger.balance(&buyer).0, before.0 - e.charged.0);
    // A closed escrow takes no top-up, and a revoked allowance opens nothing.
    w.send(
        &w.buyer.clone(),
        TxKind::Allow {
            deployment: 7,
            amount: Amount::from_tokens(100),
        },
    )
    .unwrap();
    assert!(matches!(
        w.send(&protocol, extend(1, per_period)),
        Err(LedgerError::EscrowClosed(_))
    ));
    w.send(
        &w.buyer.clone(),
        TxKind::Allow {
            deployment: 7,
            amount: Amount::ZERO,
        },
    )
    .unwrap();
    assert_eq!(w.ledger.allowance(&buyer, 7), Amount::ZERO);
    assert!(w.ledger.supply_conserved());
    // Replayed from genesis, the chain reaches the same state.
    w.seal();
    let root = w.ledger.head().state_root;
    let (replayed, _) = replay(w.ledger.genesis().clone(), w.sealed.clone(), Vec::new()).unwrap();
    assert_eq!(replayed.head().state_root, root);
    assert_eq!(replayed.allowance(&buyer, 7), Amount::ZERO);
}

#[test]
fn a_snapshot_that_does_not_match_its_block_is_refused() {
    let mut w = World::new();
    let host = w.host.address();
    w.fund(host, 50);
    w.open(1, Amount::from_tokens(1), 1, 3_600_000).unwrap();
    w.seal();
    let genesis = w.ledger.genesis().clone();
    let snapshot = w.ledger.snapshot().unwrap();
    assert!(Ledger::from_snapshot(genesis.clone(), snapshot.clone()).is_ok());
    // Nothing unsealed may be left out of a snapshot.
    w.fund(host, 1);
    assert!(w.ledger.snapshot().is_none());

    // A balance changed in the stored bytes: the state root no longer matches the block.
    let honest = snapshot.encode();
    let buyer = w.buyer.address();
    let mut json = serde_json::to_value(&snapshot).unwrap();
    for account in json["accounts"].as_array_mut().unwrap() {
        if account[0] == serde_json::json!(buyer) {
            account[1]["balance"] = serde_json::json!("1");
        }
    }
    let forged: LedgerSnapshot = serde_json::from_value(json).unwrap();
    assert_ne!(forged.encode(), honest);
    let refused = Ledger::from_snapshot(genesis.clone(), forged).unwrap_err();
    assert!(
        refused.contains("state root") || refused.contains("root"),
        "{refused}"
    );

    // Bytes that are not a snapshot, or of another layout, are refused when decoded.
    assert!(LedgerSnapshot::decode(&honest[..honest.len() / 2]).is_err());
    let mut other = honest.clone();
    other[0] = 9;
    assert!(
        LedgerSnapshot::decode(&other)
            .unwrap_err()
            .contains("layout 9")
    );
    assert_eq!(LedgerSnapshot::decode(&honest).unwrap(), snapshot);
}

fn retire(ranges: &[(u64, u64)]) -> TxKind {
    TxKind::RetireLeases {
        ranges: (ranges.iter())
            .map(|&(first, last)| LeaseRange {
                first: LeaseId(first),
                last: LeaseId(last),
            })
            .collect(),
    }
}

#[test]
fn retired_leases_leave_the_state_and_can_never_be_funded_again() {
    let mut w = World::new();
    let (protocol, buyer) = (w.protocol.clone(), w.buyer.clone());
    let price = Amount::from_tokens(1);
    // Leases 1 and 2 deliver and close; 3 stays open; 4 is never funded.
    for lease in 1..=3 {
        w.open(lease, price, 1, 3_600_000).unwrap();
    }
    w.usage(1, 60_000, true).unwrap();
    w.usage(2, 30_000, true).unwrap();
    let settled = w.ledger.activity();
    assert_eq!(settled.delivered_gpu_ms, 90_000);
    let root = |w: &mut World| w.ledger.state_root();
    let before = root(&mut w);

    // Only the protocol retires, never an open escrow, only sorted disjoint ranges: each
    // refused whole, changing nothing.
    assert_eq!(
        w.send(&buyer, retire(&[(1, 2)])),
        Err(LedgerError::NotProtocol)
    );
    assert_eq!(
        w.send(&protocol, retire(&[(1, 3)])),
        Err(LedgerError::RetiringOpenEscrow(LeaseId(3)))
    );
    let refusals = [
        (&[(2, 2), (1, 1)][..], RangesError::Unsorted(LeaseId(1))),
        (&[(2, 1)], RangesError::Backwards(LeaseId(2))),
        (&[], RangesError::Empty),
        (&[(5, 5 + 10_000)], RangesError::TooMany),
    ];
    for (bad, why) in refusals {
        assert_eq!(
            w.send(&protocol, retire(bad)),
            Err(LedgerError::RetireRanges(why))
        );
    }
    assert!(w.ledger.escrow(LeaseId(1)).is_some());
    assert_eq!(root(&mut w), before);

    // 1, 2 and 4 retire: the closed escrows leave the state; what they settled still counts.
    w.send(&protocol, retire(&[(1, 2), (4, 4)])).unwrap();
    assert!(w.ledger.escrow(LeaseId(1)).is_none() && w.ledger.escrow(LeaseId(2)).is_none());
    assert!(w.ledger.escrow(LeaseId(3)).is_some());
    assert_eq!(w.ledger.activity(), settled);
    assert_eq!(w.ledger.recount(), settled);
    assert!(w.ledger.supply_conserved());
    assert_ne!(root(&mut w), before);
    // No escrow for a retired id again, whether it was funded or not, and no retiring
    // twice.
    for lease in [1, 4] {
        assert_eq!(
            w.open(lease, price, 1, 60_000),
            Err(LedgerError::LeaseRetired(LeaseId(lease)))
        );
    }
    assert_eq!(
        w.send(&protocol, retire(&[(4, 5)])),
        Err(LedgerError::RetireRanges(RangesError::Retired(LeaseId(4))))
    );
    // 3 closes and retires: the ranges merge into one.
    w.usage(3, 1_000, true).unwrap();
    w.send(&protocol, retire(&[(3, 3)])).unwrap();
    assert_eq!(
        w.ledger.retired().ranges().collect::<Vec<_>>(),
        vec![(1, 4)]
    );
    assert_eq!(w.ledger.escrows().count(), 0);
    assert_eq!(w.ledger.activity().delivered_gpu_ms, 91_000);

    // A snapshot carries the retired ids and sums: restored, it has the block's root (checked
    // as it loads), the same sums, and refuses a retired id; a replay from genesis agrees.
    w.seal();
    let genesis = w.ledger.genesis().clone();
    let snapshot = w.ledger.snapshot().unwrap();
    let decoded = LedgerSnapshot::decode(&snapshot.encode()).unwrap();
    assert_eq!(decoded, snapshot);
    let mut restored = Ledger::from_snapshot(genesis.clone(), decoded).unwrap();
    assert_eq!(restored.activity(), w.ledger.activity());
    assert_eq!(restored.retired(), w.ledger.retired());
    let escrow = TxKind::OpenEscrow {
        lease: LeaseId(2),
        host: w.host.address(),
        price_per_gpu_hour: price,
        gpus: 1,
        max_duration_ms: 60_000,
        amount: escrow_amount(price, 1, 60_000).unwrap(),
    };
    let stx = w.sign(&buyer, escrow);
    assert_eq!(
        restored.apply(&stx, w.now).map(|_| ()),
        Err(LedgerError::LeaseRetired(LeaseId(2)))
    );
    let (replayed, _) = replay(genesis, w.sealed.clone(), []).unwrap();
    assert_eq!(replayed.head(), w.ledger.head());
    assert_eq!(replayed.activity(), w.ledger.activity());
    // A retirement after the snapshot merges with the restored ranges exactly as with the
    // original's: the same set, the same state root.
    let stx = w.sign(&protocol, retire(&[(5, 5)]));
    w.ledger.apply(&stx, w.now).unwrap();
    restored.apply(&stx, w.now).unwrap();
    assert_eq!(
        restored.retired().ranges().collect::<Vec<_>>(),
        vec![(1, 5)]
    );
    assert_eq!(restored.retired(), w.ledger.retired());
    assert_eq!(restored.state_root(), w.ledger.state_root());
}

#[test]
fn a_snapshot_of_the_layout_before_retired_leases_still_loads() {
    let mut w = World::new();
    w.open(1, Amount::from_tokens(1), 1, 3_600_000).unwrap();
    w.seal();
    let snapshot = w.ledger.snapshot().unwrap();
    // Layout 1: the same fields, without the retired set after them.
    let mut old = vec![1u8];
    old.extend(postcard::to_stdvec(&snapshot).unwrap());
    let decoded = LedgerSnapshot::decode(&old).unwrap();
    assert_eq!(decoded, snapshot);
    Ledger::from_snapshot(w.ledger.genesis().clone(), decoded).unwrap();
}

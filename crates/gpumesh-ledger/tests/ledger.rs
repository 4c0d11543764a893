//! The ledger driven as the indexer drives it: escrows, usage, closes, blocks, replay.

use gpumesh_identity::Wallet;
use gpumesh_ledger::{Genesis, Ledger, LedgerError, escrow_amount, replay};
use gpumesh_types::{Amount, CloseReason, LeaseId, SignedTx, Tx, TxKind, UsageRecord};
use proptest::prelude::*;

const CHAIN: u64 = 31337;

struct World {
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
        self.ledger.apply(&stx, 2_000).map(|_| ())
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
        )
    }

    fn usage(&mut self, lease: u64, gpu_ms: u64, is_final: bool) -> Result<(), LedgerError> {
        let records = vec![UsageRecord {
            lease: LeaseId(lease),
            gpu_ms,
            is_final,
        }];
        self.send(&self.host.clone(), TxKind::SettleUsage { records })
    }

    fn seal(&mut self) {
        if let Some(block) = self.ledger.seal(3_000) {
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
    let cases: Vec<(&str, Result<(), LedgerError>)> = vec![
        ("usage over the escrow", w.usage(1, 3_600_001, false)),
        ("second escrow for the lease", w.open(1, price, 1, 1_000)),
        (
            "more than the balance",
            w.open(2, Amount::from_tokens(10_000), 1, 3_600_000),
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
    for (what, result) in cases {
        assert!(result.is_err(), "{what} must be rejected");
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
    assert_eq!(report.transactions, 4);
    assert!(report.supply_conserved);
    assert_eq!(report.state_root, w.ledger.state_root());
    assert_eq!(ledger.head(), w.ledger.head());

    let mut tampered = w.sealed.clone();
    if let gpumesh_types::TxKind::SettleUsage { records } = &mut tampered[1].1[1].tx.tx.kind {
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
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn supply_is_conserved_and_replay_agrees(ops in proptest::collection::vec(op(), 1..60)) {
        let mut w = World::new();
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
                Op::Seal => { w.seal(); Ok(()) }
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
    }
}

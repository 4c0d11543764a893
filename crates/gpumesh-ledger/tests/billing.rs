//! Billable time is observed, not claimed: usage is billed only from a lease's recorded
//! start (`StartLease`, the protocol's record of the indexer accepting the host's start
//! report), at most its GPUs × the time since plus the network's slack, on every route,
//! and again on replay.

use gpumesh_identity::Wallet;
use gpumesh_ledger::{Genesis, Ledger, LedgerError, escrow_amount, replay};
use gpumesh_types::{
    Amount, BlockHeader, CloseReason, LeaseId, LedgerEntry, SignedTx, Tx, TxKind, UsageRecord,
};
use proptest::prelude::*;

const CHAIN: u64 = 31337;
const GENESIS_MS: u64 = 1_000;

struct Net {
    ledger: Ledger,
    protocol: Wallet,
    buyer: Wallet,
    host: Wallet,
    now: u64,
    sealed: Vec<(BlockHeader, Vec<LedgerEntry>)>,
}

impl Net {
    fn new(genesis: Genesis) -> Net {
        let faucet = Wallet::from_label("faucet");
        let mut net = Net {
            ledger: Ledger::new(genesis).unwrap(),
            protocol: Wallet::from_label("protocol"),
            buyer: Wallet::from_label("buyer"),
            host: Wallet::from_label("host"),
            now: 2_000,
            sealed: Vec::new(),
        };
        let to = net.buyer.address();
        net.send(
            &faucet,
            TxKind::Transfer {
                to,
                amount: Amount::from_tokens(1_000_000),
            },
        )
        .unwrap();
        net
    }

    fn local() -> Net {
        Net::new(genesis())
    }

    fn send(&mut self, by: &Wallet, kind: TxKind) -> Result<(), LedgerError> {
        let nonce = self.ledger.account(&by.address()).nonce;
        let stx: SignedTx = by.sign_tx(Tx {
            chain_id: CHAIN,
            from: by.address(),
            nonce,
            kind,
        });
        self.ledger.apply(&stx, self.now).map(|_| ())
    }

    fn open(&mut self, lease: u64, gpus: u16, max_ms: u64) -> Result<(), LedgerError> {
        let price = Amount::from_tokens(1);
        let host = self.host.address();
        let buyer = self.buyer.clone();
        self.send(
            &buyer,
            TxKind::OpenEscrow {
                lease: LeaseId(lease),
                host,
                price_per_gpu_hour: price,
                gpus,
                max_duration_ms: max_ms,
                amount: escrow_amount(price, gpus, max_ms).unwrap(),
            },
        )
    }

    fn start(&mut self, lease: u64) -> Result<(), LedgerError> {
        let protocol = self.protocol.clone();
        self.send(
            &protocol,
            TxKind::StartLease {
                lease: LeaseId(lease),
            },
        )
    }

    fn settle(&mut self, lease: u64, gpu_ms: u64, is_final: bool) -> Result<(), LedgerError> {
        let host = self.host.clone();
        self.send(
            &host,
            TxKind::SettleUsage {
                records: vec![UsageRecord {
                    lease: LeaseId(lease),
                    gpu_ms,
                    is_final,
                }],
            },
        )
    }

    fn close(&mut self, lease: u64) -> Result<(), LedgerError> {
        let protocol = self.protocol.clone();
        self.send(
            &protocol,
            TxKind::CloseEscrow {
                lease: LeaseId(lease),
                reason: CloseReason::HostLost,
            },
        )
    }

    fn seal(&mut self) {
        if let Some(block) = self.ledger.seal(self.now) {
            self.sealed.push(block);
        }
    }
}

fn genesis() -> Genesis {
    Genesis::local(
        CHAIN,
        GENESIS_MS,
        Wallet::from_label("protocol").address(),
        Wallet::from_label("faucet").address(),
    )
}

fn slack() -> u64 {
    genesis().economics.usage_slack_ms
}

#[test]
fn a_lease_that_never_started_bills_nothing_and_its_finish_refunds_the_buyer_in_full() {
    let mut net = Net::local();
    let before = net.ledger.balance(&net.buyer.address());
    net.open(1, 1, 600_000).unwrap();
    net.now += 600_000;
    // The whole ten minutes, claimed at once with no start on record: refused.
    let refused = net.settle(1, 600_000, true).unwrap_err();
    assert_eq!(
        refused,
        LedgerError::UsageExceedsElapsed {
            lease: LeaseId(1),
            reported: 600_000,
            bound: 0,
        }
    );
    assert!(refused.to_string().contains("observed"), "{refused}");
    // Even one GPU-millisecond is too much before a start.
    assert!(matches!(
        net.settle(1, 1, true),
        Err(LedgerError::UsageExceedsElapsed { .. })
    ));
    // The honest end of a lease that never ran: nothing billed, all refunded.
    net.settle(1, 0, true).unwrap();
    let escrow = net.ledger.escrow(LeaseId(1)).unwrap();
    assert!(escrow.closed);
    assert_eq!(escrow.charged, Amount::ZERO);
    assert_eq!(escrow.refund, escrow.amount);
    assert_eq!(net.ledger.balance(&net.buyer.address()), before);
    assert_eq!(net.ledger.balance(&net.host.address()), Amount::ZERO);
    assert!(net.ledger.supply_conserved());
}

#[test]
fn usage_above_the_time_since_the_start_is_refused_and_changes_nothing() {
    let mut net = Net::local();
    net.open(1, 2, 600_000).unwrap();
    net.now += 5_000;
    net.start(1).unwrap();
    assert_eq!(
        net.start(1),
        Err(LedgerError::AlreadyStarted(LeaseId(1))),
        "a start is recorded once"
    );
    let started = net.ledger.escrow(LeaseId(1)).unwrap().started_ms;
    assert_eq!(started, Some(net.now));
    net.now += 1_000;
    // One second later: 2 GPUs × (1 s + slack) is the most; five minutes are refused.
    let bound = 2 * (1_000 + slack());
    let root = net.ledger.state_root();
    let count = net.ledger.transaction_count();
    assert_eq!(
        net.settle(1, 300_000, false),
        Err(LedgerError::UsageExceedsElapsed {
            lease: LeaseId(1),
            reported: 300_000,
            bound,
        })
    );
    assert_eq!(
        net.settle(1, bound + 1, true),
        Err(LedgerError::UsageExceedsElapsed {
            lease: LeaseId(1),
            reported: bound + 1,
            bound,
        })
    );
    assert_eq!(
        net.ledger.state_root(),
        root,
        "a refused record changed the state"
    );
    assert_eq!(net.ledger.transaction_count(), count);
    // Exactly the bound is fine, and the buyer gets the rest back.
    net.settle(1, bound, true).unwrap();
    let escrow = net.ledger.escrow(LeaseId(1)).unwrap();
    assert_eq!(escrow.gpu_ms, bound);
    assert_eq!(
        escrow.host_share.0 + escrow.treasury_share.0 + escrow.refund.0,
        escrow.amount.0
    );
    // A start is only for an open escrow, and only the protocol records one.
    assert_eq!(net.start(1), Err(LedgerError::EscrowClosed(LeaseId(1))));
    net.open(2, 1, 60_000).unwrap();
    let host = net.host.clone();
    assert_eq!(
        net.send(&host, TxKind::StartLease { lease: LeaseId(2) }),
        Err(LedgerError::NotProtocol)
    );
}

/// A chain whose blocks hold an over-bill, relinked to an honest genesis so that every
/// hash and root but the rule itself checks out: `ledger verify`'s replay refuses it.
#[test]
fn replay_refuses_a_chain_that_holds_an_over_bill() {
    // A network whose slack lets a host bill an hour it never ran.
    let mut lenient = genesis();
    lenient.economics.usage_slack_ms = 3_600_000;
    let mut net = Net::new(lenient.clone());
    net.open(1, 1, 3_600_000).unwrap();
    net.start(1).unwrap();
    net.seal();
    net.now += 1_000;
    net.settle(1, 3_600_000, true).unwrap();
    net.seal();
    assert!(replay(lenient, net.sealed.clone(), []).is_ok());

    let honest = genesis();
    let mut prev = Ledger::new(honest.clone()).unwrap().head().hash();
    let relinked: Vec<(BlockHeader, Vec<LedgerEntry>)> = net
        .sealed
        .iter()
        .map(|(header, entries)| {
            let header = BlockHeader {
                prev_hash: prev,
                ..header.clone()
            };
            prev = header.hash();
            (header, entries.clone())
        })
        .collect();
    let err = replay(honest, relinked, []).unwrap_err().to_string();
    assert!(
        err.contains("block 2") && err.contains("exceeds the time observed"),
        "{err}"
    );
}

#[derive(Clone, Debug)]
enum Op {
    Open {
        lease: u64,
        gpus: u16,
        max_s: u64,
    },
    Start {
        lease: u64,
    },
    Advance {
        ms: u64,
    },
    Settle {
        lease: u64,
        gpu_ms: u64,
        is_final: bool,
    },
    Close {
        lease: u64,
    },
    Seal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..4, 1u16..5, 1u64..600).prop_map(|(lease, gpus, max_s)| Op::Open {
            lease,
            gpus,
            max_s
        }),
        (0u64..4).prop_map(|lease| Op::Start { lease }),
        (0u64..120_000).prop_map(|ms| Op::Advance { ms }),
        (0u64..4, 0u64..2_500_000, any::<bool>()).prop_map(|(lease, gpu_ms, is_final)| {
            Op::Settle {
                lease,
                gpu_ms,
                is_final,
            }
        }),
        (0u64..4).prop_map(|lease| Op::Close { lease }),
        Just(Op::Seal),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever order starts, settlements, closes and time come in, no escrow is ever
    /// billed more than its GPUs × the time since its recorded start plus the slack
    /// (nothing at all without a start), supply is conserved, and a replay of the chain
    /// gives the same state.
    #[test]
    fn billing_never_exceeds_observed_time(ops in proptest::collection::vec(op(), 1..80)) {
        let mut net = Net::local();
        for op in ops {
            let _ = match op {
                Op::Open { lease, gpus, max_s } => net.open(lease, gpus, max_s * 1_000),
                Op::Start { lease } => net.start(lease),
                Op::Advance { ms } => { net.now += ms; Ok(()) }
                Op::Settle { lease, gpu_ms, is_final } => net.settle(lease, gpu_ms, is_final),
                Op::Close { lease } => net.close(lease),
                Op::Seal => { net.seal(); Ok(()) }
            };
            for (_, e) in net.ledger.escrows() {
                match e.started_ms {
                    None => prop_assert_eq!(e.gpu_ms, 0),
                    Some(start) => {
                        let observed = (e.gpus as u64) * (net.now - start + slack());
                        prop_assert!(e.gpu_ms <= observed, "{} GPU-ms billed, {} observed", e.gpu_ms, observed);
                    }
                }
                prop_assert!(e.gpu_ms <= e.max_gpu_ms);
            }
            prop_assert!(net.ledger.supply_conserved());
        }
        net.seal();
        let (replayed, _) = replay(genesis(), net.sealed.clone(), []).unwrap();
        let mut ledger = net.ledger.clone();
        let mut replayed = replayed;
        prop_assert_eq!(replayed.state_root(), ledger.state_root());
    }
}

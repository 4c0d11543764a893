//! A host's usage records as its lease's finish carries them (`LeaseFinish`): any bytes
//! decode or are refused; the records of a decoded one, signed by the lease's host, settle
//! against a prepared open escrow or are refused, and the escrow never pays out more than
//! it holds: supply conserved, the host and treasury paid no more than the escrow.
#![no_main]

use std::sync::OnceLock;

use gpumesh_identity::Wallet;
use gpumesh_indexer::decode_body;
use gpumesh_ledger::{Genesis, Ledger};
use gpumesh_types::{Amount, LeaseFinish, LeaseId, Tx, TxKind};
use libfuzzer_sys::fuzz_target;

const CHAIN: u64 = 31337;
const ESCROW: u128 = 4_000_000_000_000_000_000;
/// When the records are applied: half an hour after lease 1 started.
const SETTLED_AT: u64 = 1_800_002;

fn world() -> &'static (Ledger, Wallet) {
    static WORLD: OnceLock<(Ledger, Wallet)> = OnceLock::new();
    WORLD.get_or_init(|| {
        let [protocol, faucet, buyer, host] =
            ["protocol", "faucet", "buyer", "host"].map(Wallet::from_label);
        let genesis = Genesis::local(CHAIN, 0, protocol.address(), faucet.address());
        let mut ledger = Ledger::new(genesis).expect("a local genesis");
        let pay = faucet.sign_tx(Tx {
            chain_id: CHAIN,
            from: faucet.address(),
            nonce: 0,
            kind: TxKind::Transfer {
                to: buyer.address(),
                amount: Amount(ESCROW * 10),
            },
        });
        ledger.apply(&pay, 1).expect("the faucet pays");
        for (nonce, lease) in [(0, 1), (1, 2)] {
            let open = buyer.sign_tx(Tx {
                chain_id: CHAIN,
                from: buyer.address(),
                nonce,
                kind: TxKind::OpenEscrow {
                    lease: LeaseId(lease),
                    host: host.address(),
                    price_per_gpu_hour: Amount(2_000_000_000_000_000_000),
                    gpus: 2,
                    max_duration_ms: 3_600_000,
                    amount: Amount(ESCROW),
                },
            });
            ledger.apply(&open, 2).expect("the escrow opens");
        }
        // Lease 1's workload started; lease 2's never did.
        let start = protocol.sign_tx(Tx {
            chain_id: CHAIN,
            from: protocol.address(),
            nonce: 0,
            kind: TxKind::StartLease { lease: LeaseId(1) },
        });
        ledger.apply(&start, 2).expect("the start is recorded");
        (ledger, host)
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(finish) = decode_body::<LeaseFinish>(data) else {
        return;
    };
    let TxKind::SettleUsage { records } = finish.usage.tx.kind else {
        return;
    };
    let (ledger, host) = world();
    let mut ledger = ledger.clone();
    let before = ledger.balance(&host.address()).0 + ledger.balance(&ledger.genesis().treasury).0;
    let settle = host.sign_tx(Tx {
        chain_id: CHAIN,
        from: host.address(),
        nonce: ledger.account(&host.address()).nonce,
        kind: TxKind::SettleUsage { records },
    });
    let _ = ledger.apply(&settle, SETTLED_AT);
    assert!(ledger.supply_conserved());
    // Billed only from the recorded start: nothing for the lease that never started.
    let slack = ledger.genesis().economics.usage_slack_ms;
    let started = ledger.escrow(LeaseId(1)).expect("lease 1");
    assert!(started.gpu_ms <= 2 * (SETTLED_AT - 2 + slack));
    assert_eq!(ledger.escrow(LeaseId(2)).expect("lease 2").gpu_ms, 0);
    let after = ledger.balance(&host.address()).0 + ledger.balance(&ledger.genesis().treasury).0;
    assert!(
        after - before <= 2 * ESCROW,
        "paid {} from two escrows of {ESCROW}",
        after - before
    );
});

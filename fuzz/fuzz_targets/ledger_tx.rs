//! Ledger transactions from outside: any bytes decode to a signed transaction or are
//! refused; a decoded one verifies or not, hashes, and renders as typed data without a
//! panic. Then the decoded transaction, re-signed by a funded account of a prepared ledger
//! (so its signature holds and its rules run), is applied: it is taken or refused, and the
//! supply is conserved either way.
#![no_main]

use std::sync::OnceLock;

use gpumesh_identity::Wallet;
use gpumesh_ledger::{Genesis, Ledger};
use gpumesh_types::{Amount, LeaseId, SignedTx, Tx, TxKind};
use libfuzzer_sys::fuzz_target;

const CHAIN: u64 = 31337;

struct World {
    ledger: Ledger,
    wallets: Vec<Wallet>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let [protocol, faucet, buyer, host] =
            ["protocol", "faucet", "buyer", "host"].map(Wallet::from_label);
        let genesis = Genesis::local(CHAIN, 0, protocol.address(), faucet.address());
        let mut ledger = Ledger::new(genesis).expect("a local genesis");
        let mut nonce = 0;
        for to in [buyer.address(), host.address()] {
            let tx = faucet.sign_tx(Tx {
                chain_id: CHAIN,
                from: faucet.address(),
                nonce,
                kind: TxKind::Transfer {
                    to,
                    amount: Amount(1_000_000_000_000_000_000_000),
                },
            });
            ledger.apply(&tx, 1).expect("the faucet pays");
            nonce += 1;
        }
        let open = buyer.sign_tx(Tx {
            chain_id: CHAIN,
            from: buyer.address(),
            nonce: 0,
            kind: TxKind::OpenEscrow {
                lease: LeaseId(1),
                host: host.address(),
                price_per_gpu_hour: Amount(2_000_000_000_000_000_000),
                gpus: 2,
                max_duration_ms: 3_600_000,
                amount: Amount(4_000_000_000_000_000_000),
            },
        });
        ledger.apply(&open, 2).expect("the escrow opens");
        World {
            ledger,
            wallets: vec![protocol, faucet, buyer, host],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&who, json)) = data.split_first() else {
        return;
    };
    let Ok(stx) = serde_json::from_slice::<SignedTx>(json) else {
        return;
    };
    let _ = stx.verify();
    let hash = stx.hash();
    let typed = serde_json::to_value(stx.tx.typed_data()).expect("typed data serialises");
    assert!(typed["primaryType"].is_string());
    assert_eq!(stx.tx.typed_data().eip712_signing_hash().unwrap(), hash);

    let world = world();
    let signer = &world.wallets[who as usize % world.wallets.len()];
    let mut ledger = world.ledger.clone();
    let mut tx = stx.tx;
    tx.chain_id = CHAIN;
    tx.from = signer.address();
    if who & 0x80 == 0 {
        tx.nonce = ledger.account(&signer.address()).nonce;
    }
    let signed = signer.sign_tx(tx);
    let _ = ledger.apply(&signed, 3_000);
    assert!(
        ledger.supply_conserved(),
        "supply not conserved after {signed:?}"
    );
});

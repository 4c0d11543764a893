//! gpumesh's keys and transaction signatures read by eth-account, an Ethereum library of
//! another implementation: keystores made by `gpumesh wallet new` open there, keystores
//! made there import here, and every kind of transaction has the same EIP-712 digest and
//! signer in both. `GPUMESH_ETH_PYTHON` names a Python with eth-account (CI installs one);
//! without it the test looks for one and skips when there is none.

mod common;

use std::path::Path;
use std::process::Command;

use gpumesh_identity::Wallet;
use gpumesh_types::{
    Address, Amount, B256, CloseReason, EpochClose, LeaseId, LeaseRange, Offence, Sig, SignedTx,
    Tx, TxKind, UsageRecord,
};
use serde_json::{Value, json};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/eth-interop/check.py"
);

/// The Python to run eth-account with, or `None` (the test skips) when there is none and
/// none was asked for.
fn python() -> Option<String> {
    if let Ok(python) = std::env::var("GPUMESH_ETH_PYTHON") {
        return Some(python);
    }
    let found = Command::new("python3")
        .args(["-c", "import eth_account"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!(
            "skipping: no eth-account for python3; GPUMESH_ETH_PYTHON names a Python that has it"
        );
    }
    found.then(|| "python3".to_string())
}

fn eth(python: &str, args: &[&str]) -> Value {
    let out = Command::new(python)
        .arg(SCRIPT)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "check.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn gpumesh(args: &[&str]) -> String {
    let out = Command::new(common::BIN)
        .args(args)
        .env("GPUMESH_PASSWORD", common::PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gpumesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn text(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// One transaction of every kind.
fn every_kind(from: Address) -> Vec<Tx> {
    let (host, buyer) = (Address::repeat_byte(0xaa), Address::repeat_byte(0xbb));
    let kinds = vec![
        TxKind::Transfer {
            to: host,
            amount: Amount(12_500_000_000_000_000_000),
        },
        TxKind::OpenEscrow {
            lease: LeaseId(42),
            host,
            price_per_gpu_hour: Amount(2_000_000_000_000_000_000),
            gpus: 4,
            max_duration_ms: 3_600_000,
            amount: Amount(8_000_000_000_000_000_000),
        },
        TxKind::SettleUsage {
            records: vec![
                UsageRecord {
                    lease: LeaseId(42),
                    gpu_ms: 1_234_567,
                    is_final: false,
                },
                UsageRecord {
                    lease: LeaseId(43),
                    gpu_ms: 99,
                    is_final: true,
                },
            ],
        },
        TxKind::CloseEscrow {
            lease: LeaseId(42),
            reason: CloseReason::HostLost,
        },
        TxKind::CloseEscrow {
            lease: LeaseId(42),
            reason: CloseReason::Undelivered,
        },
        TxKind::StartLease { lease: LeaseId(42) },
        TxKind::Stake {
            index: 3,
            amount: Amount(u128::MAX),
        },
        TxKind::StakeMany {
            stakes: vec![(0, Amount(1)), (7, Amount(2))],
        },
        TxKind::Unstake { index: 3 },
        TxKind::Withdraw { index: 3 },
        TxKind::Allow {
            // Past 2^53, where a JSON number read as a double would be off.
            deployment: u64::MAX - 1,
            amount: Amount(5),
        },
        TxKind::OpenEscrowFor {
            buyer,
            deployment: 9,
            lease: LeaseId(44),
            host,
            price_per_gpu_hour: Amount(3),
            gpus: 1,
            max_duration_ms: 60_000,
            amount: Amount(1),
        },
        TxKind::ExtendEscrow {
            buyer,
            deployment: 9,
            lease: LeaseId(44),
            extra_ms: 60_000,
            amount: Amount(1),
        },
        TxKind::Epoch(Box::new(EpochClose {
            epoch: 5,
            end_ms: 1_800_000_000_000,
            evidence: B256::repeat_byte(0x11),
            capacity: vec![(host, vec![(0, 100), (1, 250)]), (buyer, vec![])],
            delivery: vec![(
                host,
                vec![gpumesh_types::GpuDelivery {
                    index: 0,
                    gpu_ms: 3_600_000,
                    paid: Amount(1_000_000_000_000_000_000_007),
                    fee: Amount(200_000_000_000_000_000_001),
                    tier: 2,
                }],
            )],
            checkers: vec![(buyer, 17, 9_950)],
            quarter_bonus: true,
        })),
        TxKind::RetireLeases {
            ranges: vec![
                LeaseRange {
                    first: LeaseId(1),
                    last: LeaseId(40),
                },
                LeaseRange {
                    first: LeaseId(42),
                    last: LeaseId(42),
                },
            ],
        },
        TxKind::Slash {
            host,
            index: 1,
            k_centi: 250,
            offence: Offence::Malicious,
            evidence: B256::repeat_byte(0x22),
        },
    ];
    kinds
        .into_iter()
        .enumerate()
        .map(|(nonce, kind)| Tx {
            chain_id: 31337,
            from,
            nonce: nonce as u64,
            kind,
        })
        .collect()
}

#[test]
fn keys_and_transaction_signatures_agree_with_eth_account() {
    let Some(python) = python() else { return };
    let dir = tempfile::tempdir().unwrap();

    // A key made by `gpumesh wallet new` opens in eth-account, with the same address and
    // the secret `wallet export --private-key` prints.
    let key = dir.path().join("alice.key");
    let address = gpumesh(&["wallet", "new", "--kdf", "light", "--out", text(&key)]);
    let opened = eth(&python, &["decrypt", text(&key), common::PASSWORD]);
    assert_eq!(opened["address"].as_str().unwrap(), address.trim());
    let exported = gpumesh(&["wallet", "export", "--private-key", "--key", text(&key)]);
    assert_eq!(opened["private_key"].as_str().unwrap(), exported.trim());
    // The keystore as exported is the file itself.
    let keystore = gpumesh(&["wallet", "export", "--key", text(&key)]);
    assert_eq!(keystore, std::fs::read_to_string(&key).unwrap());

    // A keystore made by eth-account imports, keeps its address and its password.
    let theirs = dir.path().join("theirs.json");
    let made = eth(&python, &["encrypt", text(&theirs), common::PASSWORD]);
    let imported = dir.path().join("imported.key");
    let address = gpumesh(&[
        "wallet",
        "import",
        "--keystore",
        text(&theirs),
        "--out",
        text(&imported),
    ]);
    assert_eq!(address.trim(), made["address"].as_str().unwrap());
    let wallet = Wallet::load(&imported, common::PASSWORD).unwrap();
    assert_eq!(wallet.address().to_string(), address.trim());

    // Every kind of transaction: eth-account computes the same EIP-712 digest from the
    // typed data alone and recovers the same signer from gpumesh's signature.
    let txs = every_kind(wallet.address());
    let cases: Vec<Value> = txs
        .iter()
        .map(|tx| {
            let signed = wallet.sign_tx(tx.clone());
            json!({
                "typed_data": tx.typed_data(),
                "signature": signed.signature,
                "private_key": wallet.secret_hex(),
            })
        })
        .collect();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, serde_json::to_vec(&cases).unwrap()).unwrap();
    let checked = eth(&python, &["typed", text(&file)]);
    assert_eq!(
        checked["cases"].as_array().unwrap().len(),
        txs.len(),
        "one answer per transaction"
    );
    for (tx, theirs) in txs.iter().zip(checked["cases"].as_array().unwrap()) {
        let kind = tx.typed_data().primary_type;
        assert_eq!(
            theirs["digest"].as_str().unwrap(),
            tx.hash().to_string(),
            "{kind}: the digests differ"
        );
        assert_eq!(
            theirs["signer"].as_str().unwrap(),
            wallet.address().to_string(),
            "{kind}: eth-account recovers another signer"
        );
    }
    // And a signature eth-account made verifies here.
    let signature: Sig = checked["signature_of_first"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let signed = SignedTx {
        tx: txs[0].clone(),
        signature,
    };
    assert_eq!(signed.verify().unwrap(), txs[0].hash());
}

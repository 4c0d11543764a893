//! `gpumesh bench restart`: how long an indexer takes to come back at a given chain
//! length, and what reward proofs and account histories cost there.
//!
//! A local network is created as `gpumesh indexer --local` creates it; its store is then
//! filled directly (not through the API, which would take as long as the chain is long)
//! with real signed transactions, applied by the ledger and written block by block as the
//! indexer writes them: the faucet funds the accounts, the accounts send each other
//! tokens, and every `--epoch-every` transactions the protocol closes an epoch that pays a
//! slice of the accounts as checkers. Then the indexer is opened on the store (the
//! restart: it rebuilds its state from the newest ledger snapshot, written every
//! `--snapshot-every` transactions as the indexer writes them, and the blocks after it),
//! served on loopback, and asked for reward proofs of
//! epochs spread over the chain and for account histories.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow, bail};
use gpumesh_identity::Wallet;
use gpumesh_indexer::{Config, FAUCET_KEY_FILE, Indexer, PROTOCOL_KEY_FILE};
use gpumesh_ledger::Ledger;
use gpumesh_store::{Batch, EpochRewards, Store};
use gpumesh_types::{Address, Amount, B256, EpochClose, SignedTx, Tx, TxKind};
use serde_json::json;

use super::ledger::{apply_all, par_map};
use super::round;
use crate::cli::RestartBenchArgs;

/// Milliseconds of ledger time per transaction: the chain's clock, not the wall's.
const TXS_PER_MS: u64 = 100;

pub async fn run(args: RestartBenchArgs) -> anyhow::Result<ExitCode> {
    if args.transactions == 0 || args.block_txs == 0 || args.epoch_every == 0 {
        bail!("--transactions, --block-txs and --epoch-every must be at least 1");
    }
    if args.accounts < 2 || args.rewarded_per_epoch > args.accounts {
        bail!("--accounts must be at least 2 and at least --rewarded-per-epoch");
    }
    let dir = tempfile::Builder::new()
        .prefix("gpumesh-bench-restart-")
        .tempdir()
        .context("failed to create a data directory")?;
    let data = dir.path().join("net");
    // The network as `gpumesh indexer --local` creates it: keys, genesis, store.
    drop(Indexer::open(Config::local(&data))?);
    let began = Instant::now();
    let chain = fill(&args, &data)?;
    let generate_s = began.elapsed().as_secs_f64();
    let store_bytes = std::fs::metadata(data.join(gpumesh_store::STORE_FILE))?.len();

    eprintln!(
        "restarting the indexer on {} transactions…",
        chain.transactions
    );
    let began = Instant::now();
    let indexer = Indexer::open(Config::local(&data))?;
    let restart_s = began.elapsed().as_secs_f64();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = tokio_util::sync::CancellationToken::new();
    let served = tokio::spawn(indexer.serve(listener, stop.clone().cancelled_owned()));
    let client = gpumesh_client::Client::new(&url, None);
    let (mut proof_ms, mut history_ms) = (Vec::new(), Vec::new());
    let epochs = chain.rewarded.len();
    for k in 0..args.proofs {
        // Epochs spread over the chain, the first and the last among them.
        let epoch = (k * epochs.saturating_sub(1)) / args.proofs.saturating_sub(1).max(1);
        let account = chain.rewarded[epoch][k % chain.rewarded[epoch].len()];
        let asked = Instant::now();
        let proof = client.reward_proof(account, epoch as u64).await?;
        proof_ms.push(asked.elapsed().as_secs_f64() * 1e3);
        if gpumesh_ledger::merkle::process_proof(proof.leaf, &proof.proof) != proof.root {
            bail!("the proof of {account} for epoch {epoch} does not fold to its root");
        }
        let asked = Instant::now();
        let history = client.history(account, 50).await?;
        history_ms.push(asked.elapsed().as_secs_f64() * 1e3);
        if history.is_empty() {
            bail!("{account} has no history");
        }
    }
    stop.cancel();
    served.await??;

    let report = json!({
        "bench": "restart",
        "chain_transactions": chain.transactions,
        "blocks": chain.blocks,
        "epochs": epochs,
        "accounts": args.accounts,
        "rewarded_accounts_last_epoch": chain.last_leaves,
        "generate_s": round(generate_s, 1),
        "store_bytes": store_bytes,
        "restart_s": round(restart_s, 2),
        "restart_us_per_transaction": round(restart_s * 1e6 / chain.transactions as f64, 1),
        "snapshot_every": args.snapshot_every,
        "replayed_after_snapshot": chain.transactions - chain.snapshot_seq,
        "proofs": proof_ms.len(),
        "proof_ms_p50": round(percentile(&mut proof_ms, 0.5), 2),
        "proof_ms_max": round(percentile(&mut proof_ms, 1.0), 2),
        "history_ms_p50": round(percentile(&mut history_ms, 0.5), 2),
        "history_ms_max": round(percentile(&mut history_ms, 1.0), 2),
    });
    super::print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

fn percentile(values: &mut [f64], q: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    values[((values.len() - 1) as f64 * q).round() as usize]
}

/// What was written.
struct Chain {
    transactions: u64,
    blocks: u64,
    /// Each epoch's rewarded accounts.
    rewarded: Vec<Vec<Address>>,
    last_leaves: usize,
    /// The transaction count at the newest snapshot (0: none).
    snapshot_seq: u64,
}

/// Fills the store with `args.transactions` signed transactions, a block at a time.
fn fill(args: &RestartBenchArgs, data: &std::path::Path) -> anyhow::Result<Chain> {
    let protocol = Wallet::load(&data.join(PROTOCOL_KEY_FILE), "")?;
    let faucet = Wallet::load(&data.join(FAUCET_KEY_FILE), "")?;
    let store = Store::open(data)?;
    let snapshot = store.load()?;
    let t0 = snapshot.genesis.time_ms;
    let (mut ledger, _) =
        gpumesh_ledger::replay(snapshot.genesis, snapshot.blocks, snapshot.unsealed)
            .map_err(|e| anyhow!("the new store does not replay: {e}"))?;
    let accounts: Vec<Wallet> = (0..args.accounts)
        .map(|i| Wallet::from_label(&format!("bench restart account {i}")))
        .collect();
    let mut nonces = vec![0u64; accounts.len()];
    let next = |w: &Wallet, ledger: &Ledger| ledger.account(&w.address()).nonce;
    let (mut faucet_nonce, mut protocol_nonce) = (next(&faucet, &ledger), next(&protocol, &ledger));
    let chain_id = ledger.genesis().chain_id;
    let fund = Amount::from_tokens(1_000);

    let mut chain = Chain {
        transactions: 0,
        blocks: 0,
        rewarded: Vec::new(),
        last_leaves: 0,
        snapshot_seq: 0,
    };
    let bar = super::progress(
        args.transactions,
        "signing, applying and writing transactions",
    );
    while chain.transactions < args.transactions {
        let made = chain.transactions;
        // A block ends at each epoch close, so that the stored tree is the one right
        // after it.
        let to_epoch = args.epoch_every - made % args.epoch_every;
        let n = (args.block_txs as u64)
            .min(to_epoch)
            .min(args.transactions - made);
        let closes = n == to_epoch;
        let mut unsigned: Vec<(Wallet, Tx)> = Vec::with_capacity(n as usize);
        for i in made..made + n {
            let (by, nonce, kind) = if closes && i == made + n - 1 {
                let epoch = chain.rewarded.len() as u64;
                let start = epoch as usize * args.rewarded_per_epoch;
                let mut paid: Vec<Address> = (0..args.rewarded_per_epoch)
                    .map(|k| accounts[(start + k) % accounts.len()].address())
                    .collect();
                paid.sort_unstable();
                let close = EpochClose {
                    epoch,
                    end_ms: t0 + i / TXS_PER_MS,
                    evidence: B256::ZERO,
                    capacity: vec![],
                    delivery: vec![],
                    checkers: paid.iter().map(|&a| (a, 10, 10_000)).collect(),
                    quarter_bonus: false,
                };
                chain.rewarded.push(paid);
                protocol_nonce += 1;
                (
                    &protocol,
                    protocol_nonce - 1,
                    TxKind::Epoch(Box::new(close)),
                )
            } else if (i as usize) < accounts.len() {
                faucet_nonce += 1;
                let to = accounts[i as usize].address();
                let kind = TxKind::Transfer { to, amount: fund };
                (&faucet, faucet_nonce - 1, kind)
            } else {
                let from = i as usize % accounts.len();
                let to = (from * 7 + 1) % accounts.len();
                let to = if to == from {
                    (to + 1) % accounts.len()
                } else {
                    to
                };
                nonces[from] += 1;
                let kind = TxKind::Transfer {
                    to: accounts[to].address(),
                    amount: Amount(1),
                };
                (&accounts[from], nonces[from] - 1, kind)
            };
            unsigned.push((
                by.clone(),
                Tx {
                    chain_id,
                    from: by.address(),
                    nonce,
                    kind,
                },
            ));
        }
        let signed: Vec<SignedTx> = par_map(&unsigned, |(w, tx)| w.sign_tx(tx.clone()));
        let time = t0 + (made + n) / TXS_PER_MS;
        let txs = apply_all(&mut ledger, &signed, time)?;
        let mut rewards = Vec::new();
        if closes {
            let epoch = chain.rewarded.len() as u64 - 1;
            let tree = EpochRewards::of(&mut ledger, epoch);
            chain.last_leaves = tree.leaves.len();
            rewards.push(tree);
        }
        let (header, _) = ledger.seal(time).context("a block")?;
        let snapshot = if ledger.transaction_count() - chain.snapshot_seq >= args.snapshot_every {
            chain.snapshot_seq = ledger.transaction_count();
            ledger.snapshot()
        } else {
            None
        };
        store.write(Batch {
            txs,
            blocks: vec![header],
            rewards,
            snapshot,
            ..Batch::default()
        })?;
        chain.transactions += n;
        chain.blocks += 1;
        bar.inc(n);
    }
    if chain.rewarded.is_empty() {
        bail!(
            "no epoch closed: --transactions {} is below --epoch-every {}",
            args.transactions,
            args.epoch_every
        );
    }
    Ok(chain)
}

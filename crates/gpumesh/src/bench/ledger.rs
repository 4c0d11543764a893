//! `gpumesh bench ledger`: durable usage settlement, epoch close at network scale, and
//! replay speed.

use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, anyhow};
use gpumesh_identity::Wallet;
use gpumesh_ledger::{Allocation, Economics, Genesis, Ledger, Verified, escrow_amount};
use gpumesh_store::{Batch, Store};
use gpumesh_types::{
    Address, Amount, B256, EpochClose, GpuDelivery, HostCapacity, HostDelivery, LeaseId, SignedTx,
    Tx, TxKind, UsageRecord,
};
use serde_json::json;

use crate::cli::LedgerBenchArgs;

const CHAIN: u64 = 7;

/// Runs `f` over `items` on every core, keeping order.
pub(super) fn par_map<'a, T: Sync, R: Send>(
    items: &'a [T],
    f: impl Fn(&'a T) -> R + Sync,
) -> Vec<R> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let chunk = items.len().div_ceil(threads).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|part| scope.spawn(|| part.iter().map(&f).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("workers do not panic"))
            .collect()
    })
}

fn sign_all(txs: &[(Wallet, Tx)]) -> Vec<SignedTx> {
    par_map(txs, |(w, tx)| w.sign_tx(tx.clone()))
}

/// A genesis for the benchmark: the public economics, and balances for the given accounts.
fn genesis(protocol: Address, funded: &[Address], each: Amount) -> Genesis {
    let mut g = Genesis::local(CHAIN, 0, protocol, Address::with_last_byte(0xfa));
    g.economics = Economics::network(g.total_supply);
    // Take what the accounts get from the faucet's half.
    let faucet = g
        .allocations
        .iter_mut()
        .find(|a| a.label == "faucet")
        .expect("a local genesis has a faucet");
    faucet.amount.0 -= each.0 * funded.len() as u128;
    g.allocations.extend(funded.iter().map(|&a| Allocation {
        address: a,
        amount: each,
        label: String::new(),
    }));
    g
}

/// Applies signed transactions: signatures checked on every core, applied in order.
pub(super) fn apply_all(
    ledger: &mut Ledger,
    txs: &[SignedTx],
    time_ms: u64,
) -> anyhow::Result<Vec<gpumesh_types::LedgerEntry>> {
    let verified = par_map(txs, Verified::check);
    let mut entries = Vec::with_capacity(txs.len());
    for v in verified {
        let v = v.map_err(|e| anyhow!("bad signature: {e}"))?;
        entries.push(
            ledger
                .apply_verified(v, time_ms)
                .map_err(|e| anyhow!("transaction refused: {e}"))?
                .entry,
        );
    }
    Ok(entries)
}

pub fn run(args: LedgerBenchArgs) -> anyhow::Result<ExitCode> {
    let dir = tempfile::Builder::new()
        .prefix("gpumesh-bench-ledger-")
        .tempdir()
        .context("failed to create a data directory")?;
    let (usage, verify) = usage_phase(&args, dir.path())?;
    let epoch = epoch_phase(&args)?;
    let report = json!({
        "bench": "ledger",
        "hosts": args.hosts,
        "leases": args.hosts * args.leases_per_host,
        "usage_records": usage.records,
        "usage_transactions": usage.txs,
        "blocks": usage.blocks,
        "usage_records_per_s": (usage.records as f64 / usage.seconds).round(),
        "usage_seconds": usage.seconds,
        "epoch_containers": epoch.containers,
        "epoch_checkers": epoch.checkers,
        "epoch_close_ms": (epoch.apply_ms * 10.0).round() / 10.0,
        "epoch_seal_ms": (epoch.seal_ms * 10.0).round() / 10.0,
        "epoch_transaction_bytes": epoch.bytes,
        "reward_root": epoch.reward_root.to_string(),
        "rewarded_accounts": epoch.rewarded,
        "verify_blocks_per_s": (verify.blocks as f64 / verify.seconds).round(),
        "verify_transactions_per_s": (verify.txs as f64 / verify.seconds).round(),
        "verify_supply_conserved": verify.supply_conserved,
    });
    super::print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

struct Usage {
    records: u64,
    txs: u64,
    blocks: u64,
    seconds: f64,
}

struct Replayed {
    blocks: u64,
    txs: u64,
    seconds: f64,
    supply_conserved: bool,
}

/// Hosts settle usage of their leases round after round; each block of transactions is
/// written durably before the next.
fn usage_phase(args: &LedgerBenchArgs, dir: &std::path::Path) -> anyhow::Result<(Usage, Replayed)> {
    let protocol = Wallet::from_label("bench protocol");
    let hosts: Vec<Wallet> = (0..args.hosts)
        .map(|i| Wallet::from_label(&format!("bench host {i}")))
        .collect();
    let buyers: Vec<Wallet> = (0..64)
        .map(|i| Wallet::from_label(&format!("bench buyer {i}")))
        .collect();
    let buyer_addresses: Vec<Address> = buyers.iter().map(Wallet::address).collect();
    let genesis = genesis(
        protocol.address(),
        &buyer_addresses,
        Amount::from_tokens(10_000_000),
    );
    let store = Store::open(dir)?;
    store.init(&genesis, &gpumesh_registry::Params::network())?;
    let mut ledger = Ledger::new(genesis).map_err(|e| anyhow!("{e}"))?;

    eprintln!("opening {} escrows…", args.hosts * args.leases_per_host);
    let price = Amount::parse_tokens("2")?;
    let max_ms = 24 * 3_600_000u64;
    let amount = escrow_amount(price, 1, max_ms).context("escrow")?;
    let mut opens = Vec::new();
    let mut nonces = vec![0u64; buyers.len()];
    for (h, host) in hosts.iter().enumerate() {
        for l in 0..args.leases_per_host {
            let lease = LeaseId((h * args.leases_per_host + l) as u64);
            let b = lease.0 as usize % buyers.len();
            let kind = TxKind::OpenEscrow {
                lease,
                host: host.address(),
                price_per_gpu_hour: price,
                gpus: 1,
                max_duration_ms: max_ms,
                amount,
            };
            opens.push((
                buyers[b].clone(),
                Tx {
                    chain_id: CHAIN,
                    from: buyers[b].address(),
                    nonce: nonces[b],
                    kind,
                },
            ));
            nonces[b] += 1;
        }
    }
    // Each workload starts at once: the protocol records the starts, from which usage
    // is billable.
    let starts: Vec<(Wallet, Tx)> = (0..(hosts.len() * args.leases_per_host) as u64)
        .map(|lease| {
            (
                protocol.clone(),
                Tx {
                    chain_id: CHAIN,
                    from: protocol.address(),
                    nonce: lease,
                    kind: TxKind::StartLease {
                        lease: LeaseId(lease),
                    },
                },
            )
        })
        .collect();
    let mut opens = sign_all(&opens);
    opens.extend(sign_all(&starts));
    let entries = apply_all(&mut ledger, &opens, 1)?;
    let (header, _) = ledger.seal(1).context("a block")?;
    store.write(Batch {
        txs: entries,
        blocks: vec![header],
        ..Batch::default()
    })?;

    eprintln!("signing {} rounds of usage…", args.rounds);
    let mut rounds = Vec::new();
    let bar = super::progress(args.rounds as u64, "signing rounds");
    for r in 1..=args.rounds as u64 {
        bar.inc(1);
        let txs: Vec<(Wallet, Tx)> = hosts
            .iter()
            .enumerate()
            .map(|(h, host)| {
                let records = (0..args.leases_per_host)
                    .map(|l| UsageRecord {
                        lease: LeaseId((h * args.leases_per_host + l) as u64),
                        gpu_ms: r * 60_000,
                        is_final: false,
                    })
                    .collect();
                (
                    host.clone(),
                    Tx {
                        chain_id: CHAIN,
                        from: host.address(),
                        nonce: r - 1,
                        kind: TxKind::SettleUsage { records },
                    },
                )
            })
            .collect();
        rounds.push(sign_all(&txs));
    }

    eprintln!("settling…");
    let mut usage = Usage {
        records: 0,
        txs: 0,
        blocks: 0,
        seconds: 0.0,
    };
    let began = Instant::now();
    // Group commit: a writer thread makes each block durable while the next one is
    // checked and applied; a block counts as settled when its commit returns, and the
    // clock stops at the last commit.
    let (to_writer, blocks) = std::sync::mpsc::sync_channel::<Batch>(2);
    let writer = std::thread::spawn(move || -> anyhow::Result<Store> {
        for batch in blocks {
            store.write(batch)?;
        }
        Ok(store)
    });
    // The blocks in order, each with its time; the signatures of the next block are
    // checked while this one is applied and sealed.
    let blocks: Vec<(u64, &[SignedTx])> = rounds
        .iter()
        .enumerate()
        .flat_map(|(r, txs)| {
            let time = 1 + (r as u64 + 1) * 60_000;
            txs.chunks(args.block_txs).map(move |block| (time, block))
        })
        .collect();
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut next = blocks
            .first()
            .map(|&(_, block)| scope.spawn(move || par_map(block, Verified::check)));
        for (i, &(time, block)) in blocks.iter().enumerate() {
            let verified = next
                .take()
                .map(|h| h.join().expect("signature checks do not panic"))
                .unwrap_or_default();
            next = blocks
                .get(i + 1)
                .map(|&(_, block)| scope.spawn(move || par_map(block, Verified::check)));
            let mut entries = Vec::with_capacity(block.len());
            for v in verified {
                let v = v.map_err(|e| anyhow!("bad signature: {e}"))?;
                let applied = ledger
                    .apply_verified(v, time)
                    .map_err(|e| anyhow!("transaction refused: {e}"))?;
                entries.push(applied.entry);
            }
            let (header, _) = ledger.seal(time).context("a block")?;
            let batch = Batch {
                txs: entries,
                blocks: vec![header],
                ..Batch::default()
            };
            if to_writer.send(batch).is_err() {
                break; // the writer failed; its error is reported below
            }
            usage.txs += block.len() as u64;
            usage.records += (block.len() * args.leases_per_host) as u64;
            usage.blocks += 1;
        }
        Ok(())
    })?;
    drop(to_writer);
    let store = writer
        .join()
        .map_err(|_| anyhow!("the store writer panicked"))??;
    usage.seconds = began.elapsed().as_secs_f64();
    drop(store);

    eprintln!("replaying the chain from the store…");
    let store = Store::open_existing(dir)?;
    let began = Instant::now();
    let report = store.verify()?;
    let seconds = began.elapsed().as_secs_f64();
    Ok((
        usage,
        Replayed {
            blocks: report.blocks,
            txs: report.transactions,
            seconds,
            supply_conserved: report.supply_conserved,
        },
    ))
}

struct EpochRun {
    containers: usize,
    checkers: usize,
    apply_ms: f64,
    seal_ms: f64,
    bytes: usize,
    reward_root: B256,
    rewarded: usize,
}

/// An epoch over the network's scale: every container staked and live, most of them
/// delivering, every checker reporting.
fn epoch_phase(args: &LedgerBenchArgs) -> anyhow::Result<EpochRun> {
    let per_host = 4usize;
    let host_count = args.containers.div_ceil(per_host);
    eprintln!(
        "staking {} containers on {host_count} hosts…",
        host_count * per_host
    );
    let protocol = Wallet::from_label("bench protocol");
    let hosts: Vec<Wallet> = par_map(&(0..host_count).collect::<Vec<_>>(), |i| {
        Wallet::from_label(&format!("epoch host {i}"))
    });
    let addresses: Vec<Address> = hosts.iter().map(Wallet::address).collect();
    let genesis = genesis(protocol.address(), &addresses, Amount::from_tokens(50_000));
    let requirement = genesis.economics.requirement(100);
    let mut ledger = Ledger::new(genesis).map_err(|e| anyhow!("{e}"))?;
    let stakes: Vec<(Wallet, Tx)> = hosts
        .iter()
        .map(|h| {
            let stakes = (0..per_host as u16).map(|i| (i, requirement)).collect();
            (
                h.clone(),
                Tx {
                    chain_id: CHAIN,
                    from: h.address(),
                    nonce: 0,
                    kind: TxKind::StakeMany { stakes },
                },
            )
        })
        .collect();
    let stakes = sign_all(&stakes);
    apply_all(&mut ledger, &stakes, 1)?;
    ledger.seal(1);

    // The canonical order: hosts ascending, GPU indices ascending, checkers ascending.
    let mut capacity: Vec<HostCapacity> = addresses
        .iter()
        .map(|&a| (a, (0..per_host as u16).map(|i| (i, 100)).collect()))
        .collect();
    // About 70% of containers delivered work this epoch, at mixed tiers.
    capacity.sort_unstable_by_key(|c| c.0);
    let mut delivery: Vec<HostDelivery> = addresses
        .iter()
        .enumerate()
        .map(|(h, &a)| {
            let list = (0..per_host as u16)
                .filter(|i| (h * per_host + *i as usize) % 10 < 7)
                .map(|i| {
                    // A day of a GPU at about 2 tokens an hour, 20% of it in fees.
                    let paid = Amount::from_tokens(48).0 - (h as u128 % 1000) * 1_000_000;
                    GpuDelivery {
                        index: i,
                        gpu_ms: 86_400_000 - (h as u64 % 1000) * 1000,
                        paid: Amount(paid),
                        fee: Amount(paid / 5),
                        tier: 1 + (h % 3) as u8,
                    }
                })
                .collect();
            (a, list)
        })
        .collect();
    delivery.sort_unstable_by_key(|d| d.0);
    let mut checkers: Vec<(Address, u32, u16)> = (0..args.checkers)
        .map(|i| {
            (
                Address::from_word(alloy_primitives_keccak(i)),
                1_440 - (i % 100) as u32,
                9_000 + (i % 1_000) as u16,
            )
        })
        .collect();
    checkers.sort_unstable_by_key(|c| c.0);
    let close = EpochClose {
        epoch: 0,
        end_ms: 86_400_000,
        evidence: B256::repeat_byte(1),
        capacity,
        delivery,
        checkers,
        quarter_bonus: true,
    };
    let tx = protocol.sign_tx(Tx {
        chain_id: CHAIN,
        from: protocol.address(),
        nonce: 0,
        kind: TxKind::Epoch(Box::new(close)),
    });
    let bytes = serde_json::to_vec(&tx).map(|v| v.len()).unwrap_or(0);
    eprintln!("closing the epoch ({} MB transaction)…", bytes / 1_000_000);
    let began = Instant::now();
    ledger
        .apply(&tx, 86_400_000)
        .map_err(|e| anyhow!("epoch refused: {e}"))?;
    let apply_ms = began.elapsed().as_secs_f64() * 1e3;
    let began = Instant::now();
    ledger.seal(86_400_000);
    let seal_ms = began.elapsed().as_secs_f64() * 1e3;
    if !ledger.supply_conserved() {
        return Err(anyhow!("supply not conserved after the epoch"));
    }
    Ok(EpochRun {
        containers: host_count * per_host,
        checkers: args.checkers,
        apply_ms,
        seal_ms,
        bytes,
        reward_root: ledger.reward_root(),
        rewarded: ledger.cumulative_rewards().count(),
    })
}

fn alloy_primitives_keccak(i: usize) -> B256 {
    alloy_primitives::keccak256((i as u64).to_be_bytes())
}

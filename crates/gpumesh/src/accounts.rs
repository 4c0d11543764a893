//! `gpumesh wallet …` and `gpumesh ledger …`: keys, tokens, stakes, blocks and proofs.

use std::process::ExitCode;

use anyhow::{Context, bail};
use gpumesh_identity::{Kdf, Wallet};
use gpumesh_types::{AccountView, Address, Amount, LedgerEntry, TxKind};

use crate::cli::{KdfArg, LedgerCommand, NewPassword, WalletCommand};
use crate::commands::{account_of, client};

fn parse_address(text: &str) -> anyhow::Result<Address> {
    text.parse()
        .with_context(|| format!("{text:?} is not a 0x address"))
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn print_account(a: &AccountView) {
    println!("{}", a.address);
    println!(
        "  balance             {} tokens ({} base units)",
        a.balance.tokens(),
        a.balance
    );
    println!("  vesting             {} tokens", a.vesting.tokens());
    println!(
        "  cumulative rewards  {} tokens",
        a.cumulative_rewards.tokens()
    );
    println!("  transactions        {}", a.nonce);
    for s in &a.stakes {
        let unbonding = if s.unbonding.0 > 0 {
            format!(
                ", {} unbonding until {} (Unix time in ms)",
                s.unbonding.tokens(),
                s.unbond_at_ms
            )
        } else {
            String::new()
        };
        println!(
            "  GPU {:>3} stake       {} tokens bonded{unbonding}",
            s.index,
            s.bonded.tokens()
        );
    }
}

/// One line about a recorded transaction.
fn describe(entry: &LedgerEntry) -> String {
    match &entry.tx.tx.kind {
        TxKind::Transfer { to, amount } => format!("transfer {} tokens to {to}", amount.tokens()),
        TxKind::OpenEscrow { lease, amount, .. } => {
            format!("escrow {} tokens for lease {lease}", amount.tokens())
        }
        TxKind::SettleUsage { records } => format!("usage of {} leases", records.len()),
        TxKind::CloseEscrow { lease, reason } => format!("close lease {lease} ({reason:?})"),
        TxKind::StartLease { lease } => format!("lease {lease} started: billable from now"),
        TxKind::RetireLeases { ranges } => {
            let leases = (ranges.iter()).fold(0u64, |n, r| n.saturating_add(r.len()));
            format!("retire {leases} archived leases")
        }
        TxKind::Allow { deployment, amount } => format!(
            "allow up to {} tokens for deployment {deployment}",
            amount.tokens()
        ),
        TxKind::OpenEscrowFor {
            lease,
            deployment,
            amount,
            ..
        } => format!(
            "escrow {} tokens for lease {lease} of deployment {deployment}",
            amount.tokens()
        ),
        TxKind::ExtendEscrow {
            lease,
            extra_ms,
            amount,
            ..
        } => format!(
            "top up lease {lease} by {} s for {} tokens",
            extra_ms / 1000,
            amount.tokens()
        ),
        TxKind::Stake { index, amount } => {
            format!("stake {} tokens on GPU {index}", amount.tokens())
        }
        TxKind::StakeMany { stakes } => format!("stake on {} GPUs", stakes.len()),
        TxKind::Unstake { index } => format!("unstake GPU {index}"),
        TxKind::Withdraw { index } => format!("withdraw the stake of GPU {index}"),
        TxKind::Epoch(e) => format!(
            "epoch {}: {} hosts live, {} delivering, {} checkers",
            e.epoch,
            e.capacity.len(),
            e.delivery.len(),
            e.checkers.len()
        ),
        TxKind::Slash {
            host,
            index,
            offence,
            ..
        } => format!("slash GPU {index} of {host} ({offence:?})"),
    }
}

fn kdf(arg: KdfArg) -> Kdf {
    match arg {
        KdfArg::Standard => Kdf::Standard,
        KdfArg::Light => Kdf::Light,
    }
}

/// Writes `wallet` as a new keystore at `out`, with a password from `password`.
fn write_key(wallet: &Wallet, out: &std::path::Path, password: &NewPassword) -> anyhow::Result<()> {
    if out.exists() {
        bail!(
            "{} already exists; refusing to overwrite a key",
            out.display()
        );
    }
    let secret = crate::password::get(
        &format!("the new key file {}", out.display()),
        password.password_file.as_deref(),
        true,
    )?;
    if secret.is_empty() && password.kdf == KdfArg::Standard {
        bail!(
            "an empty password protects nothing: give one, or --kdf light for a test key that holds nothing of value"
        );
    }
    wallet.save(out, &secret, kdf(password.kdf))?;
    println!("{}", wallet.address());
    eprintln!("key written to {} (readable by you only)", out.display());
    Ok(())
}

pub async fn wallet(command: WalletCommand) -> anyhow::Result<ExitCode> {
    match command {
        WalletCommand::New { out, password } => {
            write_key(&Wallet::generate(), &out, &password)?;
        }
        WalletCommand::Address { key } => println!("{}", Wallet::address_of(&key)?),
        WalletCommand::Import {
            out,
            keystore,
            private_key_file,
            password,
        } => match (keystore, private_key_file) {
            (Some(keystore), _) => {
                let secret = crate::password::get(
                    &format!("keystore {}", keystore.display()),
                    password.password_file.as_deref(),
                    false,
                )?;
                if out.exists() {
                    bail!(
                        "{} already exists; refusing to overwrite a key",
                        out.display()
                    );
                }
                let wallet = Wallet::open_keystore(&keystore, &secret)?;
                wallet.save(&out, &secret, kdf(password.kdf))?;
                println!("{}", wallet.address());
                eprintln!("key written to {} (readable by you only)", out.display());
            }
            (None, Some(file)) => {
                write_key(&Wallet::from_private_key_file(&file)?, &out, &password)?;
                eprintln!(
                    "{} still holds the key unencrypted: delete it once you have checked the new file",
                    file.display()
                );
            }
            (None, None) => unreachable!("clap requires one of them"),
        },
        WalletCommand::Export {
            key,
            private_key,
            password_file,
        } => {
            if private_key {
                let wallet = crate::commands::open_key(&key, password_file.as_deref())?;
                println!("{}", wallet.secret_hex());
                eprintln!(
                    "this is the private key: anyone who sees it owns {}",
                    wallet.address()
                );
            } else {
                // Checked first, so that only a keystore is printed.
                Wallet::address_of(&key)?;
                let text = std::fs::read_to_string(&key)
                    .with_context(|| format!("failed to read {}", key.display()))?;
                print!("{text}");
            }
        }
        WalletCommand::Faucet { connection, amount } => {
            let client = client(&connection, true)?;
            let amount = Amount::parse_tokens(&amount).context("--amount")?;
            client.faucet(amount).await?;
            let account = client.account(client.address()?).await?;
            println!("{}: {} tokens", account.address, account.balance.tokens());
        }
        WalletCommand::Balance(args) => {
            let address = account_of(&args)?;
            let account = client(&args.connection, false)?.account(address).await?;
            if args.json {
                print_json(&account)?;
            } else {
                print_account(&account);
            }
        }
        WalletCommand::Stake {
            connection,
            index,
            amount,
        } => {
            let amount = Amount::parse_tokens(&amount).context("--amount")?;
            let client = client(&connection, true)?;
            let accepted = client.send_tx(TxKind::Stake { index, amount }).await?;
            println!(
                "staked {} tokens on GPU {index} (transaction {})",
                amount.tokens(),
                accepted.seq
            );
        }
        WalletCommand::Unstake { connection, index } => {
            let client = client(&connection, true)?;
            let accepted = client.send_tx(TxKind::Unstake { index }).await?;
            let account = client.account(client.address()?).await?;
            let when = account
                .stakes
                .iter()
                .find(|s| s.index == index)
                .map_or(0, |s| s.unbond_at_ms);
            println!(
                "GPU {index} is unbonding (transaction {}); it can be withdrawn from {when} (Unix time in ms)",
                accepted.seq
            );
        }
        WalletCommand::Withdraw { connection, index } => {
            let client = client(&connection, true)?;
            let accepted = client.send_tx(TxKind::Withdraw { index }).await?;
            println!(
                "withdrew the stake of GPU {index} (transaction {})",
                accepted.seq
            );
        }
        WalletCommand::Transfer {
            connection,
            to,
            amount,
        } => {
            let to = parse_address(&to).context("--to")?;
            let amount = Amount::parse_tokens(&amount).context("--amount")?;
            let client = client(&connection, true)?;
            let accepted = client.send_tx(TxKind::Transfer { to, amount }).await?;
            println!(
                "sent {} tokens to {to} (transaction {})",
                amount.tokens(),
                accepted.seq
            );
        }
        WalletCommand::History { account, limit } => {
            let address = account_of(&account)?;
            let entries = client(&account.connection, false)?
                .history(address, limit)
                .await?;
            if account.json {
                print_json(&entries)?;
            } else if entries.is_empty() {
                println!("{address} has no transactions");
            } else {
                let rows = entries.iter().map(|e| {
                    [
                        e.seq.to_string(),
                        e.time_ms.to_string(),
                        e.tx.tx.from.to_string(),
                        e.tx.tx.nonce.to_string(),
                        describe(e),
                    ]
                });
                let header = ["seq", "time (ms)", "from", "nonce", "transaction"];
                println!("{}", crate::format::table(header, rows));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn verify(data: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    // A progress bar on a terminal (indicatif draws nothing when stderr is not one).
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template(
            "replaying {bar:40} {pos}/{len} blocks, {per_sec}, {eta} left",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    if json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let result = gpumesh_store::Store::open_existing(data)
        .map_err(anyhow::Error::from)
        .and_then(|store| {
            store
                .verify_with_progress(|done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .map_err(anyhow::Error::from)
        });
    bar.finish_and_clear();
    let ok = matches!(&result, Ok(r) if r.supply_conserved);
    if json {
        let value = match &result {
            Ok(r) => serde_json::json!({
                "ok": ok,
                "blocks": r.blocks,
                "transactions": r.transactions,
                "supply_conserved": r.supply_conserved,
                "state_root": r.state_root.to_string(),
                "head_hash": r.head_hash.to_string(),
            }),
            Err(e) => serde_json::json!({ "ok": false, "error": format!("{e:#}") }),
        };
        print_json(&value)?;
    } else {
        match &result {
            Ok(r) => println!(
                "verified {} blocks and {} transactions from genesis; supply conserved: {}; state root {}",
                r.blocks, r.transactions, r.supply_conserved, r.state_root
            ),
            Err(e) => eprintln!("verification failed: {e:#}"),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn ledger(command: LedgerCommand) -> anyhow::Result<ExitCode> {
    match command {
        LedgerCommand::Verify { data, json } => return verify(&data, json),
        LedgerCommand::Blocks {
            connection,
            below,
            limit,
            json,
        } => {
            let headers = client(&connection, false)?.blocks(below, limit).await?;
            if json {
                print_json(&headers)?;
            } else {
                let rows = headers.iter().map(|h| {
                    [
                        h.height.to_string(),
                        h.tx_count.to_string(),
                        h.first_seq.to_string(),
                        h.time_ms.to_string(),
                        h.hash().to_string(),
                        h.state_root.to_string(),
                    ]
                });
                let header = [
                    "block",
                    "txs",
                    "first tx",
                    "time (ms)",
                    "hash",
                    "state root",
                ];
                println!("{}", crate::format::table(header, rows));
            }
        }
        LedgerCommand::Tx {
            connection,
            seq,
            typed_data,
        } => {
            let found = client(&connection, false)?.ledger_tx(seq).await?;
            if typed_data {
                let entry: LedgerEntry = serde_json::from_value(found["entry"].clone())
                    .context("the indexer's transaction is not one this version reads")?;
                // Typed data that would not hash to what was signed is worse than none.
                let hash = entry.tx.tx.hash();
                if found["hash"].as_str() != Some(hash.to_string().as_str()) {
                    bail!(
                        "transaction {seq} hashes to {hash} here but to {} at the indexer: another version of gpumesh; its typed data would not be what was signed",
                        found["hash"]
                    );
                }
                print_json(&entry.tx.tx.typed_data())?;
            } else {
                print_json(&found)?;
            }
        }
        LedgerCommand::Treasury { connection, json } => {
            let t = client(&connection, false)?.treasury().await?;
            if json {
                print_json(&t)?;
            } else {
                println!(
                    "treasury     {}: {} tokens",
                    t.treasury,
                    t.treasury_balance.tokens()
                );
                println!(
                    "reward pool  {}: {} tokens",
                    t.reward_pool,
                    t.reward_pool_balance.tokens()
                );
                println!(
                    "emitted      providers {} · checkers {} · checker bonus {} tokens",
                    t.provider_emitted.tokens(),
                    t.checker_emitted.tokens(),
                    t.bonus_emitted.tokens()
                );
                println!(
                    "next epoch   {} · reward root {}",
                    t.next_epoch, t.reward_root
                );
            }
        }
        LedgerCommand::Proof {
            address,
            epoch,
            data,
            replay,
            connection,
        } => {
            let account = parse_address(&address)?;
            let proof = match data {
                Some(dir) => {
                    let store = gpumesh_store::Store::open_existing(&dir)?;
                    if replay {
                        store.reward_proof_by_replay(account, epoch)?
                    } else {
                        store.reward_proof(account, epoch)?
                    }
                }
                None => {
                    client(&connection, false)?
                        .reward_proof(account, epoch)
                        .await?
                }
            };
            // The values as StandardMerkleTree.of([[account, amount]], ["address", "uint256"])
            // has them, with the amount as a decimal string of base units.
            print_json(&serde_json::json!({
                "account": proof.account,
                "epoch": proof.epoch,
                "cumulative": proof.cumulative,
                "leaf_encoding": ["address", "uint256"],
                "leaf": proof.leaf,
                "proof": proof.proof,
                "root": proof.root,
            }))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

//! What each subcommand does: glue between the command line and the library crates.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use gpumesh_client::Client;
use gpumesh_client::buyer::{JobEvent, JobOutcome, ServiceOutcome, run_job, start_service};
use gpumesh_devnet::{Devnet, DevnetConfig, RuntimeChoice, demo};
use gpumesh_host::discovery;
use gpumesh_host::runtime::Runtime;
use gpumesh_host::runtime::container::ContainerRuntime;
use gpumesh_host::runtime::process::ProcessRuntime;
use gpumesh_identity::{Kdf, Wallet};
use gpumesh_types::{Address, Amount, GeoPoint, JobRequest, LeaseId, Location, LogStream};
use tokio_util::sync::CancellationToken;

use crate::cli::*;
use crate::format;
use crate::password;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Devnet(args) => devnet(args).await,
        Command::Indexer(args) => indexer(args).await,
        Command::Genesis(GenesisCommand::New(args)) => genesis_new(args),
        Command::Host(args) => host(args).await,
        Command::Checker(args) => checker(args).await,
        Command::Checkers(args) => checkers(args).await,
        Command::Run(args) => run_command(args).await,
        Command::Deploy(args) => crate::services::deploy(args).await,
        Command::Deployments(args) => crate::services::deployments(args).await,
        Command::Deployment(command) => crate::services::deployment(command).await,
        Command::Session(args) => crate::services::session(args).await,
        Command::Leases(args) => leases(args).await,
        Command::Containers(args) => containers(args).await,
        Command::Balance(args) => balance(args).await,
        Command::Cancel(args) => cancel(args).await,
        Command::Wallet(command) => crate::accounts::wallet(command).await,
        Command::Ledger(command) => crate::accounts::ledger(command).await,
        Command::Bench(command) => crate::bench::run(command).await,
    }
}

/// Completes on Ctrl-C or SIGTERM.
async fn interrupted() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

pub(crate) fn load_key(connection: &Connection) -> anyhow::Result<Wallet> {
    let Some(path) = &connection.key else {
        bail!(
            "this command needs your key: pass --key FILE or set GPUMESH_KEY (make one with `gpumesh wallet new`)"
        );
    };
    open_key(path, connection.password_file.as_deref())
}

/// Opens a keystore, asking for its password where `password::get` finds it.
pub(crate) fn open_key(path: &Path, password_file: Option<&Path>) -> anyhow::Result<Wallet> {
    // A file others can read, an unencrypted or a malformed one is reported before a
    // password is asked for.
    gpumesh_identity::check_private(path)?;
    Wallet::keystore_address(path)?;
    let password = password::get(
        &format!("key file {}", path.display()),
        password_file,
        false,
    )?;
    Ok(Wallet::load(path, &password)?)
}

pub(crate) fn client(connection: &Connection, needs_key: bool) -> anyhow::Result<Client> {
    // Reads are anonymous: only a command that signs opens the key (and asks for its
    // password).
    let wallet = needs_key.then(|| load_key(connection)).transpose()?;
    Ok(Client::with_ca(
        &connection.indexer,
        wallet,
        indexer_ca(connection)?,
    ))
}

/// The certificates `--ca-cert` names, or none (the system's roots).
pub(crate) fn indexer_ca(
    connection: &Connection,
) -> anyhow::Result<Vec<gpumesh_client::Certificate>> {
    match &connection.ca_cert {
        Some(path) => Ok(gpumesh_client::read_ca(path)?),
        None => Ok(Vec::new()),
    }
}

pub fn runtime_choice(arg: RuntimeArg) -> RuntimeChoice {
    match arg {
        RuntimeArg::Auto => RuntimeChoice::Auto,
        RuntimeArg::Container => RuntimeChoice::Container,
        RuntimeArg::Process => RuntimeChoice::Process,
    }
}

async fn devnet(args: DevnetArgs) -> anyhow::Result<ExitCode> {
    let config = DevnetConfig {
        data_dir: args.data.clone(),
        listen: if args.demo && args.listen == SocketAddr::from(([127, 0, 0, 1], 7700)) {
            // The demo exits by itself; any free port will do, so it never clashes with a running devnet.
            SocketAddr::from(([127, 0, 0, 1], 0))
        } else {
            args.listen
        },
        runtime: runtime_choice(args.runtime),
        docker_socket: args.docker_socket.clone(),
        checkers: args.checkers,
        ..DevnetConfig::default()
    };
    // The demo adds two cheating hosts and a lazy checker, for the checkers to catch.
    let config = if args.demo {
        DevnetConfig {
            hosts: demo::hosts(),
            checkers: config.checkers.max(5) + 1,
            lazy_checkers: 1,
            ..config
        }
    } else {
        config
    };
    let hosts = config.hosts.clone();
    let quiet = args.json;
    if !quiet {
        eprintln!("starting a local network with {} hosts…", hosts.len());
    }
    let mut net = Devnet::start(config).await?;
    let data_dir = net.data_dir.clone();
    if !args.demo {
        println!("gpumesh devnet is up: a local network (simulated GPUs, faucet on)");
        println!("  API          {}", net.api_url);
        println!("  runtime      {}", net.runtime_note);
        println!("               {}", net.runtime.describe());
        let list: Vec<String> = hosts
            .iter()
            .map(|h| format!("{} {}×{}", h.name, h.count, h.gpu))
            .collect();
        println!("  hosts        {}", list.join(", "));
        println!(
            "  checkers     {} (gpumesh checkers --indexer {} lists them)",
            net.checker_addresses().len(),
            net.api_url
        );
        println!(
            "  buyer key    {} ({}; a local network's keys have the empty password)",
            net.buyer_key.display(),
            net.buyer.address()
        );
        match &args.data {
            Some(_) => println!("  data         {} (kept)", data_dir.display()),
            None => println!(
                "  data         {} (deleted at exit; --data DIR keeps it)",
                data_dir.display()
            ),
        }
        println!();
        println!("Submit a job (from another terminal):");
        println!(
            "  GPUMESH_PASSWORD= gpumesh run --indexer {} --key {} --gpu RTX4090 --near 19.07,72.88 --max-price 1 --max-duration 60s -- /bin/sh -c 'echo hello from $GPUMESH_GPU_MODEL'",
            net.api_url,
            net.buyer_key.display()
        );
        println!("  (from a checkout: cargo run --release -- run …)");
        println!("Ctrl-C stops the network.");
        interrupted().await;
        eprintln!("stopping…");
        net.stop().await?;
        return Ok(ExitCode::SUCCESS);
    }
    let print = |line: String| {
        if !quiet {
            println!("{line}");
        }
    };
    if !quiet {
        println!("runtime: {}", net.runtime_note);
    }
    let script = demo::script();
    let mut result = demo::run(&net, &script, &print).await;
    if let Ok(summary) = &mut result
        && let Err(e) = demo::services(&mut net, summary, &print).await
    {
        result = Err(e);
    }
    if let Ok(summary) = &mut result {
        // Proof of Delivery runs while the checks wait on their verdicts and the epoch.
        let delivery = demo::delivery(net.buyer_client(), net.api_url.clone(), &print);
        let (checked, delivered) = tokio::join!(demo::checks(&mut net, summary, &print), delivery);
        match (checked, delivered) {
            (Ok(()), Ok(report)) => summary.add_delivery(report),
            (Err(e), _) | (_, Err(e)) => result = Err(e),
        }
    }
    let temp = net.stop().await?;
    let mut summary = result?;
    demo::check_ledger(&mut summary, &data_dir);
    drop(temp);
    let matchable = summary.jobs_submitted - summary.unmatched;
    let ok = summary.ledger_ok
        && summary.jobs_completed == matchable
        && summary.unmatched >= 1
        && summary.checkers >= 5
        && !summary.rejected_hosts.is_empty()
        && summary.offline_detected >= 1
        && summary.banned_checkers >= 1
        && summary.checker_rewards > gpumesh_types::Amount::ZERO
        && summary.service_reachable
        && summary.sessions_served >= 20
        && summary.scale_ups >= 1
        && summary.scale_downs >= 1
        && summary.overbilling_refused >= 1
        && summary.overbilled_buyer_refunded
        && summary.delivery_failures_detected >= 1;
    if quiet {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    } else {
        println!();
        println!(
            "{} jobs submitted: {} completed, {} failed, {} unmatched",
            summary.jobs_submitted, summary.jobs_completed, summary.jobs_failed, summary.unmatched
        );
        for r in &summary.receipts {
            println!(
                "  lease {:>3} {:<14} {:>2}×{:<10} on {:<12} first output {:>5} ms  cost {:<22} host {:<22} treasury {:<22} refund {}{}",
                r.lease_id,
                r.name,
                r.gpu_count,
                r.gpu.to_string(),
                r.host_name,
                r.first_output_ms.map_or("-".into(), |m| m.to_string()),
                r.charged.tokens(),
                r.host_share.tokens(),
                r.treasury_share.tokens(),
                r.refund.tokens(),
                if r.balanced { "" } else { "  NOT BALANCED" }
            );
        }
        println!(
            "service reachable: {}{}; deployments: {}; sessions served {}, rejected {} {:?}; session round trip p95 {} ms; scaled up {}, down {}; replicas re-placed {}",
            summary.service_reachable,
            summary.service_ready_ms.map_or(String::new(), |ms| format!(
                " (ready {ms} ms after the request)"
            )),
            summary.deployments,
            summary.sessions_served,
            summary.sessions_rejected,
            summary.sessions_rejected_reasons,
            summary
                .session_rtt_p95_ms
                .map_or("-".to_string(), |v| format!("{v:.1}")),
            summary.scale_ups,
            summary.scale_downs,
            summary.replicas_replaced
        );
        println!(
            "delivery: {} over-bills refused (buyer refunded: {}); leases ended as not delivered by checkers: {} (refund {} tokens)",
            summary.overbilling_refused,
            summary.overbilled_buyer_refunded,
            summary.delivery_failures_detected,
            summary.undelivered_refund.tokens()
        );
        println!(
            "treasury balance: {} tokens (fees, slashes and rounding)",
            summary.treasury_balance.tokens()
        );
        println!(
            "checkers: {}; rejected hosts: {}; offline detected: {}{}; banned checkers: {}; checker rewards: {} tokens",
            summary.checkers,
            summary
                .rejected_hosts
                .iter()
                .map(|r| format!("{} ({})", r.host, r.reason))
                .collect::<Vec<_>>()
                .join(", "),
            summary.offline_detected,
            summary
                .offline_detected_ms
                .map_or(String::new(), |ms| format!(" in {ms} ms")),
            summary.banned_checkers,
            summary.checker_rewards.tokens()
        );
        match &summary.ledger {
            Some(l) if l.error.is_none() => println!(
                "ledger: {} blocks, {} transactions replayed from genesis; supply conserved: {}",
                l.blocks, l.transactions, l.supply_conserved
            ),
            Some(l) => println!(
                "ledger: verification FAILED: {}",
                l.error.clone().unwrap_or_default()
            ),
            None => {}
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn indexer(args: IndexerArgs) -> anyhow::Result<ExitCode> {
    let mut config = gpumesh_indexer::Config::local(&args.data);
    if !args.local {
        config.create_local = None;
    }
    for checker in &args.checkers {
        config.local_checkers.push(
            checker
                .parse()
                .map_err(|_| anyhow::anyhow!("--checker {checker:?} is not a 0x address"))?,
        );
    }
    config.public_url = args.public_url.clone();
    config.snapshot_every = args.snapshot_every;
    config.retention = std::time::Duration::from_secs(args.retention);
    config.queue_limit = args.queue_limit as usize;
    config.seal_interval = std::time::Duration::from_millis(args.block_ms);
    config.protocol_key = args.protocol_key.clone();
    // The indexer is a service: its password comes from a file or the environment, never
    // a prompt.
    config.key_password = match &args.password_file {
        Some(file) => Some(password::get("the protocol key", Some(file), false)?),
        None => std::env::var(password::PASSWORD_ENV).ok(),
    }
    .map(gpumesh_indexer::Password);
    if let Some(path) = &args.genesis {
        config.genesis = Some(gpumesh_indexer::GenesisFile::read(path)?);
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let files = gpumesh_indexer::tls::TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        // Read now, so that a bad file stops the indexer before it says it serves.
        gpumesh_indexer::tls::server_config(&files)?;
        config.tls = Some(files);
    }
    let scheme = if config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let indexer = gpumesh_indexer::Indexer::open(config)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    eprintln!(
        "indexer serving {scheme}://{} (chain {}, data {})",
        listener.local_addr()?,
        indexer.chain_id(),
        args.data.display()
    );
    indexer.serve(listener, interrupted()).await?;
    Ok(ExitCode::SUCCESS)
}

fn genesis_new(args: GenesisNewArgs) -> anyhow::Result<ExitCode> {
    // Refused before any key is made or opened.
    if args.out.exists() {
        bail!(
            "{} already exists (it must not exist yet)",
            args.out.display()
        );
    }
    let address = |text: &str, what: &str| -> anyhow::Result<Address> {
        text.parse()
            .map_err(|_| anyhow::anyhow!("{what} {text:?} is not a 0x address"))
    };
    let mut allocations = Vec::new();
    for spec in &args.allocations {
        let (who, tokens) = spec
            .split_once('=')
            .with_context(|| format!("--alloc {spec:?} is not ADDRESS=TOKENS"))?;
        allocations.push(gpumesh_ledger::Allocation {
            address: address(who, "--alloc")?,
            amount: Amount::parse_tokens(tokens)
                .with_context(|| format!("--alloc {spec:?}: the amount"))?,
            label: format!("allocation {}", allocations.len() + 1),
        });
    }
    let checkers = args
        .checkers
        .iter()
        .map(|c| address(c, "--checker"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    // Read before the protocol key is made, so that a bad file changes nothing.
    let proof_rates: Vec<gpumesh_types::ProofRate> = match &args.proof_rates {
        None => Vec::new(),
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("failed to read {}", path.display()))?;
            serde_json::from_str(&text).with_context(|| {
                format!(
                    "{} is not a list of reference proof rates ({{\"model\", \"macs_per_s\", \"measured\"}})",
                    path.display()
                )
            })?
        }
    };
    // The whole genesis is checked (with a stand-in protocol address) before the key is
    // made: a bad allocation, licence list or rate file leaves nothing behind.
    let mut trial = gpumesh_ledger::Genesis::network(
        args.chain_id,
        0,
        Address::ZERO,
        allocations.clone(),
        checkers.clone(),
    )
    .context("the genesis is invalid")?;
    trial.checking.sizing.proof_rates = proof_rates.clone();
    trial.validate().context("the genesis is invalid")?;
    let protocol = if args.protocol_key.exists() {
        open_key(&args.protocol_key, args.password_file.as_deref())
            .with_context(|| format!("failed to load {}", args.protocol_key.display()))?
    } else {
        let wallet = Wallet::generate();
        let secret = password::get(
            &format!("the new protocol key {}", args.protocol_key.display()),
            args.password_file.as_deref(),
            true,
        )?;
        if secret.is_empty() {
            bail!(
                "the protocol key holds the network's funds: give it a password that is not empty"
            );
        }
        wallet
            .save(&args.protocol_key, &secret, Kdf::Standard)
            .with_context(|| format!("failed to create {}", args.protocol_key.display()))?;
        wallet
    };
    let mut genesis = gpumesh_ledger::Genesis::network(
        args.chain_id,
        gpumesh_indexer::now_ms(),
        protocol.address(),
        allocations,
        checkers,
    )
    .context("the genesis is invalid")?;
    if !proof_rates.is_empty() {
        genesis.checking.sizing.proof_rates = proof_rates;
        genesis.validate().context("the genesis is invalid")?;
    }
    let file = gpumesh_indexer::GenesisFile {
        genesis,
        params: gpumesh_registry::Params::network(),
    };
    file.create(&args.out)?;
    println!(
        "wrote {}: chain {}, genesis {}, protocol key {} ({})",
        args.out.display(),
        file.genesis.chain_id,
        file.genesis.hash(),
        protocol.address(),
        args.protocol_key.display()
    );
    println!(
        "start it with: gpumesh indexer --genesis {} --protocol-key {} --data DIR",
        args.out.display(),
        args.protocol_key.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the process runtime records its workloads: `--state-dir`, else
/// `$XDG_STATE_HOME/gpumesh`, else `~/.local/state/gpumesh`.
fn state_dir(args: &HostArgs) -> std::path::PathBuf {
    if let Some(dir) = &args.state_dir {
        return dir.clone();
    }
    match (std::env::var_os("XDG_STATE_HOME"), std::env::var_os("HOME")) {
        (Some(state), _) => std::path::PathBuf::from(state).join("gpumesh"),
        (None, Some(home)) => std::path::PathBuf::from(home).join(".local/state/gpumesh"),
        (None, None) => std::path::PathBuf::from(".gpumesh-state"),
    }
}

async fn host(args: HostArgs) -> anyhow::Result<ExitCode> {
    let wallet = load_key(&args.connection)?;
    let point: GeoPoint = args.location.parse()?;
    let location = Location {
        point,
        country: args.country.parse()?,
    };
    let price = Amount::parse_tokens(&args.price).context("--price")?;
    let (gpus, gpu_uuids, prover): (_, _, Arc<dyn gpumesh_host::challenge::Prover>) =
        if args.simulate_gpu.is_empty() {
            let devices: Box<dyn discovery::Devices> = match args.device {
                DeviceArg::Nvml => Box::new(discovery::Nvml),
                DeviceArg::CpuReference => Box::new(discovery::CpuReference),
            };
            let found = devices.discover().map_err(|reason| {
                anyhow::anyhow!(
                    "{reason}; on a local network, declare GPUs with --simulate-gpu MODEL:COUNT"
                )
            })?;
            let offered = discovery::offers_from(&found);
            for gpu in &offered.unknown {
                eprintln!(
                    "warning: GPU {} ({}) is not in the catalog; it is not offered",
                    gpu.index, gpu.name
                );
            }
            if offered.offers.is_empty() {
                bail!("no GPU of a known model was found");
            }
            eprintln!(
                "discovered: {}",
                found
                    .iter()
                    .map(|g| format!("{} ({})", g.name, g.uuid))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            // Capacity proofs run on the GPUs themselves (docs/capacity-proof.md).
            let prover = devices.prover(&offered.uuids).map_err(anyhow::Error::msg)?;
            let uuids = if devices.passes_gpus() {
                offered.uuids
            } else {
                Vec::new()
            };
            (offered.offers, uuids, prover)
        } else {
            let offers = args
                .simulate_gpu
                .iter()
                .map(|s| discovery::parse_simulated(s).map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<_>>>()?;
            eprintln!(
                "simulated GPUs (local networks only): {}",
                args.simulate_gpu.join(", ")
            );
            // Simulated GPUs compute at their model's declared local speed.
            let prover = Arc::new(gpumesh_host::challenge::SimulatedProver {
                macs_per_s: gpumesh_types::CheckingParams::local(Vec::new())
                    .sizing
                    .rate(offers[0].model, true)
                    .unwrap_or(1),
                skip_per_mille: 0,
            });
            (offers, Vec::new(), prover)
        };
    eprintln!("capacity proofs: {}", prover.describe());
    let runtime: Arc<dyn Runtime> = match args.runtime {
        RuntimeArg::Process if !args.dev => bail!(
            "the process runtime runs workloads without isolation; it needs --dev (local networks only)"
        ),
        RuntimeArg::Process => Arc::new(ProcessRuntime::recorded_in(&state_dir(&args))?),
        RuntimeArg::Container => Arc::new(
            ContainerRuntime::connect(args.docker_socket.as_deref(), &args.container_network)
                .await
                .map(|r| match &args.service_network {
                    Some(n) => r.with_service_network(n),
                    None => r,
                })?,
        ),
        RuntimeArg::Auto => {
            match ContainerRuntime::connect(args.docker_socket.as_deref(), &args.container_network)
                .await
                .map(|r| match &args.service_network {
                    Some(n) => r.with_service_network(n),
                    None => r,
                }) {
                Ok(engine) => Arc::new(engine),
                Err(e) if args.dev => {
                    eprintln!("warning: {e}; using the process runtime (--dev)");
                    Arc::new(ProcessRuntime::recorded_in(&state_dir(&args))?)
                }
                Err(e) => bail!(
                    "{e}; a host runs workloads in containers (start Docker or Podman), or pass --dev for the process runtime on a local network"
                ),
            }
        }
    };
    eprintln!("runtime: {}", runtime.describe());
    let public_address = public_address(&args)?;
    let config = gpumesh_host::HostConfig {
        indexer_url: args.connection.indexer.clone(),
        indexer_ca: indexer_ca(&args.connection)?,
        wallet,
        name: args.name,
        location,
        price_per_gpu_hour: price,
        gpus,
        gpu_uuids,
        runtime,
        memory_per_gpu: Some(args.memory_per_gpu_mib.saturating_mul(1024 * 1024)),
        nano_cpus_per_gpu: Some(args.cpus_per_gpu.saturating_mul(1_000_000_000)),
        auto_stake: !args.no_stake,
        public_address,
        publish_ip: args.publish_ip,
        claims: gpumesh_host::UsageClaims::Metered,
        image_user: args.allow_root_workloads,
        challenge: Some(gpumesh_host::ChallengeConfig {
            listen: args.challenge_listen,
            advertise: args.challenge_url.clone(),
            prover,
        }),
    };
    until_interrupted(
        |stop| tokio::spawn(gpumesh_host::run(config, stop)),
        "stopping: ending running leases…",
    )
    .await
}

/// Where buyers reach a host's published ports: `--public-address`, else the host of
/// `--challenge-url`, else loopback (a host on one machine).
fn public_address(args: &HostArgs) -> anyhow::Result<String> {
    if let Some(address) = &args.public_address {
        let valid = !address.is_empty()
            && address.len() <= 253
            && address
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
        anyhow::ensure!(
            valid,
            "--public-address {address:?} is not a host name or an IP address"
        );
        return Ok(address.clone());
    }
    let from_url = args.challenge_url.as_deref().and_then(|url| {
        let rest = url.split_once("://")?.1;
        let authority = rest.split(['/', '?', '#']).next()?;
        let host = match authority.strip_prefix('[') {
            Some(v6) => v6.split(']').next()?,
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        (!host.is_empty()).then(|| host.to_string())
    });
    Ok(from_url.unwrap_or_else(|| {
        eprintln!(
            "note: published ports are announced on 127.0.0.1; pass --public-address for buyers on other machines"
        );
        "127.0.0.1".into()
    }))
}

/// Runs a service until it ends by itself or Ctrl-C; then asks it to stop and waits for
/// it to finish (a host agent ends its leases first).
async fn until_interrupted(
    start: impl FnOnce(CancellationToken) -> tokio::task::JoinHandle<anyhow::Result<()>>,
    stopping: &str,
) -> anyhow::Result<ExitCode> {
    let stop = CancellationToken::new();
    let mut task = start(stop.clone());
    tokio::select! {
        result = &mut task => result??,
        _ = interrupted() => {
            eprintln!("{stopping}");
            stop.cancel();
            task.await??;
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn checker(args: CheckerArgs) -> anyhow::Result<ExitCode> {
    let wallet = load_key(&args.connection)?;
    let mut config = gpumesh_checker::CheckerConfig::new(&args.connection.indexer, wallet);
    config.indexer_ca = indexer_ca(&args.connection)?;
    config.location = args
        .location
        .as_deref()
        .map(|l| l.parse::<GeoPoint>())
        .transpose()
        .context("--location")?;
    let client = Client::with_ca(
        &args.connection.indexer,
        None,
        indexer_ca(&args.connection)?,
    );
    let me = config.wallet.address();
    match client.checkers().await {
        Ok(list) if !list.iter().any(|c| c.address == me) => bail!(
            "{me} holds no checker licence on this network; licences are granted in the genesis"
        ),
        Ok(_) => {}
        Err(e) => eprintln!("cannot list checkers yet ({e}); starting anyway"),
    }
    eprintln!("checker {me} checking for {}", args.connection.indexer);
    until_interrupted(
        |stop| tokio::spawn(gpumesh_checker::run(config, stop)),
        "stopping…",
    )
    .await
}

async fn checkers(args: CheckersArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connection, false)?;
    let list = client.checkers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        println!("this network has no checkers: containers need no capacity proof");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list.iter().map(|c| {
        [
            c.address.to_string(),
            c.credited.to_string(),
            c.minority.to_string(),
            format!("{:.2}%", c.agreement_bps as f64 / 100.0),
            format!("{}/{}", c.canaries_passed, c.canaries_failed),
            c.periods_reported.to_string(),
            match (&c.banned_until_ms, &c.ban_reason) {
                (Some(until), Some(why)) => format!("until {until}: {why}"),
                (Some(until), None) => format!("until {until}"),
                _ => "no".into(),
            },
        ]
    });
    let table = format::table(
        [
            "checker",
            "credited",
            "minority",
            "agreement",
            "canaries ok/failed",
            "periods",
            "banned",
        ],
        rows,
    );
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// Waits for the matched lease to run, then prints where its ports are reached.
async fn print_endpoints(
    client: Client,
    mut matched: tokio::sync::watch::Receiver<Option<LeaseId>>,
) {
    let Ok(id) = matched.wait_for(Option::is_some).await.map(|id| *id) else {
        return;
    };
    let Some(id) = id else {
        return;
    };
    loop {
        match client.lease(id).await {
            Ok(lease) if lease.state.is_terminal() => return,
            Ok(lease) if !lease.endpoints.is_empty() => {
                for e in &lease.endpoints {
                    eprintln!("lease {id}: {} → {}", e.port, e.address);
                }
                return;
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// `gpumesh run --detach`: starts the workload and returns once it is ready.
async fn run_detached(client: &Client, job: &JobRequest, json: bool) -> anyhow::Result<ExitCode> {
    let outcome = start_service(client, job, |event| {
        if let JobEvent::Matched(lease) = event {
            eprintln!(
                "matched lease {}: {} × {} on {} ({}, about {:.0} ms away) at {} per GPU-hour; escrow {} tokens",
                lease.id,
                lease.gpu_count,
                lease.gpu,
                lease.host_name,
                lease.host_location.country,
                lease.rtt_ms,
                lease.price_per_gpu_hour.tokens(),
                lease.escrow.tokens()
            );
        }
    })
    .await?;
    match outcome {
        ServiceOutcome::Unmatched { reason } => {
            eprintln!("no match: {reason}");
            Ok(ExitCode::from(2))
        }
        ServiceOutcome::NotReady { lease } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&lease)?);
            }
            eprintln!(
                "lease {} is {:?}{}: {}",
                lease.id,
                lease.state,
                match lease.health {
                    Some(h) => format!(" ({h:?})"),
                    None => String::new(),
                },
                lease
                    .health_detail
                    .as_deref()
                    .or(lease.failure.as_deref())
                    .unwrap_or("it never became ready")
            );
            Ok(ExitCode::FAILURE)
        }
        ServiceOutcome::Ready { lease, ready } => {
            if json {
                let mut value = serde_json::to_value(&lease)?;
                value["ready_ms"] = serde_json::json!(ready.as_millis() as u64);
                println!("{}", serde_json::to_string_pretty(&value)?);
            }
            eprintln!(
                "lease {} is ready {} ms after the request",
                lease.id,
                ready.as_millis()
            );
            for e in &lease.endpoints {
                eprintln!("  {} → {}", e.port, e.address);
            }
            eprintln!("stop it with: gpumesh cancel {}", lease.id);
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn run_command(args: RunArgs) -> anyhow::Result<ExitCode> {
    let client = client(&args.connection, true)?;
    let (gpu, gpu_count) = format::parse_gpu(&args.gpu)?;
    let mut job = JobRequest::new(
        gpu,
        gpu_count,
        args.near.parse()?,
        Amount::parse_tokens(&args.max_price).context("--max-price")?,
        format::parse_duration_ms(&args.max_duration)?,
        &args.image,
        args.command.clone(),
    );
    job.min_vram_mib = args.min_vram_gib.map(|g| g.saturating_mul(1024));
    job.max_tier = args.max_tier;
    job.countries = args
        .countries
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    job.exclude_countries = args
        .exclude_countries
        .iter()
        .map(|c| c.parse())
        .collect::<Result<_, _>>()?;
    job.max_rtt_ms = args.max_rtt_ms;
    job.image_policy = match args.image_policy {
        ImagePolicyArg::Any => gpumesh_types::ImagePolicy::Any,
        ImagePolicyArg::Prefer => gpumesh_types::ImagePolicy::Prefer,
        ImagePolicyArg::Require => gpumesh_types::ImagePolicy::Require,
    };
    job.policy = match args.policy {
        PolicyArg::Price => gpumesh_types::RankPolicy::Price,
        PolicyArg::Experience => gpumesh_types::RankPolicy::Experience,
        PolicyArg::Balanced => gpumesh_types::RankPolicy::Balanced,
    };
    job.ports = args.service.ports.clone();
    job.env = args.service.env.clone();
    job.health = args.service.health_check()?;
    if args.detach {
        return run_detached(&client, &job, args.json).await;
    }
    let json = args.json;
    let lease_id: std::sync::Mutex<Option<LeaseId>> = std::sync::Mutex::new(None);
    // A service's endpoints are printed once its host reports them.
    let (matched, matched_rx) = tokio::sync::watch::channel(None);
    let reader = self::client(&args.connection, false)?;
    let endpoints =
        (!job.ports.is_empty()).then(|| tokio::spawn(print_endpoints(reader, matched_rx)));
    let job_run = run_job(&client, &job, |event| match event {
        JobEvent::Matched(lease) => {
            *lease_id.lock().expect("lease id lock") = Some(lease.id);
            matched.send_replace(Some(lease.id));
            eprintln!(
                "matched lease {}: {} × {} on {} ({}, {:.0} km, about {:.0} ms away{}) at {} per GPU-hour; escrow {} tokens",
                lease.id,
                lease.gpu_count,
                lease.gpu,
                lease.host_name,
                lease.host_location.country,
                lease.distance_km,
                lease.rtt_ms,
                if lease.simulated {
                    ", simulated GPUs"
                } else {
                    ""
                },
                lease.price_per_gpu_hour.tokens(),
                lease.escrow.tokens()
            );
        }
        JobEvent::Funded(_) => {}
        JobEvent::Output(entry) => match entry.stream {
            LogStream::Stdout if !json => {
                print!("{}", entry.data);
                let _ = std::io::stdout().flush();
            }
            _ => eprint!("{}", entry.data),
        },
        JobEvent::Reconnecting(e) => eprintln!("(reconnecting to the indexer: {e})"),
    });
    tokio::pin!(job_run);
    let outcome = tokio::select! {
        outcome = &mut job_run => {
            if let Some(task) = &endpoints {
                task.abort();
            }
            outcome?
        }
        _ = interrupted() => {
            let id = *lease_id.lock().expect("lease id lock");
            if let Some(id) = id {
                eprintln!("cancelling lease {id}…");
                client.cancel(id).await?;
            }
            job_run.await?
        }
    };
    match outcome {
        JobOutcome::Unmatched { reason } => {
            eprintln!("no match: {reason}");
            Ok(ExitCode::from(2))
        }
        JobOutcome::Ended {
            lease,
            first_output,
            total,
        } => {
            if json {
                println!("{}", serde_json::to_string_pretty(&lease)?);
            }
            eprintln!("{}", format::receipt(&lease));
            if let Some(first) = first_output {
                eprintln!(
                    "first output {} ms after the request; {} ms in all",
                    first.as_millis(),
                    total.as_millis()
                );
            }
            let ok =
                lease.state == gpumesh_types::LeaseState::Completed && lease.exit_code == Some(0);
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

pub(crate) fn account_of(args: &AccountArgs) -> anyhow::Result<Address> {
    match &args.address {
        Some(a) => a
            .parse()
            .with_context(|| format!("{a:?} is not a 0x address")),
        None => {
            let Some(key) = &args.connection.key else {
                bail!("give --address ADDRESS, or your key with --key FILE or GPUMESH_KEY");
            };
            Ok(Wallet::address_of(key)?)
        }
    }
}

async fn leases(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let address = account_of(&args)?;
    let leases = client(&args.connection, false)?
        .leases_of_buyer(address)
        .await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&leases)?);
        return Ok(ExitCode::SUCCESS);
    }
    if leases.is_empty() {
        println!("no leases for {address}");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = leases.iter().map(|l| {
        [
            l.id.to_string(),
            format!("{:?}", l.state).to_lowercase(),
            format!("{}×{}", l.gpu_count, l.gpu),
            l.host_name.clone(),
            format!("{:.0} km", l.distance_km),
            l.settlement
                .as_ref()
                .map_or("-".to_string(), |s| s.charged.tokens()),
            format::endpoints(l),
            l.failure.clone().unwrap_or_default(),
        ]
    });
    println!(
        "{}",
        format::table(
            [
                "lease",
                "state",
                "GPUs",
                "host",
                "distance",
                "cost",
                "endpoints",
                "note"
            ],
            rows
        )
    );
    Ok(ExitCode::SUCCESS)
}

async fn containers(args: ContainersArgs) -> anyhow::Result<ExitCode> {
    let list = client(&args.connection, false)?.containers().await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = list.iter().map(|c| {
        let state = serde_json::to_value(c.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        [
            c.host_name.clone(),
            c.index.to_string(),
            format!("{}{}", c.gpu, if c.simulated { " (simulated)" } else { "" }),
            format!("{} GiB", c.vram_mib / 1024),
            c.location.country.to_string(),
            state,
            c.tier.to_string(),
            c.price_per_gpu_hour.tokens(),
        ]
    });
    println!(
        "{}",
        format::table(
            [
                "host",
                "GPU",
                "model",
                "memory",
                "country",
                "state",
                "tier",
                "price/GPU-hour"
            ],
            rows
        )
    );
    println!("{} containers", list.len());
    Ok(ExitCode::SUCCESS)
}

async fn balance(args: AccountArgs) -> anyhow::Result<ExitCode> {
    let address = account_of(&args)?;
    let account = client(&args.connection, false)?.account(address).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&account)?);
    } else {
        println!(
            "{}: {} tokens ({} base units), {} transactions",
            address,
            account.balance.tokens(),
            account.balance,
            account.nonce
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn cancel(args: CancelArgs) -> anyhow::Result<ExitCode> {
    let lease = client(&args.connection, true)?
        .cancel(LeaseId(args.lease))
        .await?;
    println!(
        "lease {}: {:?}{}",
        lease.id,
        lease.state,
        if lease.cancel_requested {
            " (the host is stopping it)"
        } else {
            ""
        }
    );
    Ok(ExitCode::SUCCESS)
}

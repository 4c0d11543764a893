//! The command line, as clap sees it.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// gpumesh: a decentralized GPU cloud. One binary, a subcommand per role.
#[derive(Debug, Parser)]
#[command(name = "gpumesh", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log more (or set GPUMESH_LOG, for example GPUMESH_LOG=debug).
    #[arg(long, short, global = true)]
    pub verbose: bool,
    /// How log lines are written to standard error: text for people, json (one object per
    /// line, with the request's span and id) for log shippers.
    #[arg(long, value_enum, global = true, default_value = "text")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a whole local network on loopback: an indexer, hosts with simulated GPUs in
    /// ten cities, and a funded buyer wallet.
    Devnet(DevnetArgs),
    /// Run the indexer: registry, matching, leases, ledger and the HTTP API.
    Indexer(IndexerArgs),
    /// Make a public network's genesis file.
    #[command(subcommand)]
    Genesis(GenesisCommand),
    /// Run the host agent on a GPU owner's machine.
    Host(HostArgs),
    /// Run a checker node: verify the containers the network assigns you (liveness,
    /// round trips, capacity proofs) and report, signed, once a period.
    Checker(CheckerArgs),
    /// List the network's checkers: credited tasks, agreement, canaries and bans.
    Checkers(CheckersArgs),
    /// Rent GPUs and run a workload on them: match, pay into escrow, stream its output,
    /// print the receipt.
    Run(RunArgs),
    /// Deploy a service: replicas across regions, each a lease, kept at the size demand
    /// asks for and paid period by period from your balance under an allowance.
    Deploy(DeployArgs),
    /// List your deployments.
    Deployments(AccountArgs),
    /// Show, scale, fund or stop one of your deployments.
    #[command(subcommand)]
    Deployment(DeploymentCommand),
    /// Ask one of your deployments for a player's session: the replica with a free slot
    /// and the lowest estimated round trip within the bound.
    Session(SessionArgs),
    /// List your leases.
    Leases(AccountArgs),
    /// List the network's containers (GPUs): where, what state, what price.
    Containers(ContainersArgs),
    /// Show your balance.
    Balance(AccountArgs),
    /// Cancel a lease of yours.
    Cancel(CancelArgs),
    /// Make and use keys.
    #[command(subcommand)]
    Wallet(WalletCommand),
    /// Inspect and verify the settlement ledger.
    #[command(subcommand)]
    Ledger(LedgerCommand),
    /// Benchmarks: commands that measure and print JSON.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Time from a buyer's request to the workload's first output, on a one-host devnet.
    Startup {
        #[arg(long, value_enum, default_value = "auto")]
        runtime: RuntimeArg,
        /// Jobs to time, one after another (after one untimed warm-up job).
        #[arg(long, default_value_t = 20)]
        runs: u32,
        #[arg(long)]
        docker_socket: Option<String>,
    },
    /// Services on a one-host devnet: from `run --detach`'s request to a ready endpoint
    /// (health checked over HTTP), and session assignment latency through the API.
    Services {
        #[arg(long, value_enum, default_value = "auto")]
        runtime: RuntimeArg,
        /// Services to start, one after another (after one untimed warm-up).
        #[arg(long, default_value_t = 10)]
        runs: u32,
        /// Session requests to time, one after another.
        #[arg(long, default_value_t = 1_000)]
        sessions: u32,
        #[arg(long)]
        docker_socket: Option<String>,
    },
    /// The matching engine on a synthetic world at network scale: booked matches per
    /// second on one thread with state updates alongside, latency percentiles, memory,
    /// rebuild time, and a plain scan answering the same requests as the baseline.
    Match(MatchBenchArgs),
    /// The ledger at network scale: usage records settled per second with every block
    /// written durably, an epoch close over every GPU and checker, and replay speed.
    Ledger(LedgerBenchArgs),
    /// Checking at network scale: signed report batches verified and aggregated into
    /// quorum verdicts per second on one core, and a capacity proof's cost to the host
    /// and to the checker.
    Checker(CheckerBenchArgs),
    /// A restart at chain length: a local network's store filled with signed transfers
    /// and epoch closes, then the indexer opened on it (rebuilding its state) and served,
    /// with reward proofs and account histories timed through the API.
    Restart(RestartBenchArgs),
    /// The indexer's HTTP path under a network's load: a real indexer process on
    /// loopback, driven by a separate load-generating process with requests signed ahead
    /// (host registrations, heartbeats on schedule, jobs and cancels, transfers); then a
    /// restart on the same data and reward proofs.
    Load(LoadBenchArgs),
    /// A device's whole capacity-proof rate: proofs timed end to end (deriving A and B,
    /// the INT8 product, hashing C's rows, the Merkle tree), with each phase's share; the
    /// figure a GPU model's reference proof rate is taken from (docs/capacity-proof.md).
    Proof(ProofBenchArgs),
    /// What checking a signed request costs on one core, by part: the EIP-191 hash and the
    /// signer's recovery through k256 and through libsecp256k1, on the same signatures.
    Signatures(SignaturesBenchArgs),
}

#[derive(Debug, Args)]
pub struct SignaturesBenchArgs {
    /// Signed requests to check, each by its own key.
    #[arg(long, default_value_t = 20_000)]
    pub signatures: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LoadBenchArgs {
    /// Hosts that register and heartbeat (the simulator's world: 1 to 8 simulated GPUs
    /// each, the network's mix of models, places and prices).
    #[arg(long, default_value_t = 10_000)]
    pub hosts: usize,
    /// Buyers that send jobs and transfers.
    #[arg(long, default_value_t = 100)]
    pub buyers: usize,
    /// Seconds of load after the setup.
    #[arg(long, default_value_t = 60)]
    pub duration: u64,
    /// Each host's heartbeat period in seconds (the public network's is 60).
    #[arg(long, default_value_t = 60)]
    pub heartbeat_s: u64,
    /// Only heartbeats, as fast as they are accepted (closed loop, --job-concurrency at a
    /// time), instead of on schedule alongside jobs and transfers.
    #[arg(long)]
    pub heartbeats_only: bool,
    /// Jobs in flight at once (each sent as soon as the last is answered).
    #[arg(long, default_value_t = 64)]
    pub job_concurrency: usize,
    /// Every this many jobs, the buyer cancels the lease once matched; the others'
    /// matches expire unfunded.
    #[arg(long, default_value_t = 4)]
    pub cancel_every: u64,
    /// Transfers between buyers per second, on schedule (0: none).
    #[arg(long, default_value_t = 200)]
    pub transfer_rate: u64,
    /// How long the indexer keeps ended leases in memory (`gpumesh indexer --retention`),
    /// in seconds: shorter than the run shows memory level off.
    #[arg(long, value_name = "SECONDS", default_value_t = gpumesh_indexer::core::RETENTION_MS / 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention: u64,
    /// Pin the indexer to CPU 0 and the load generator to CPU 1 (with `taskset`), so that
    /// the indexer's figures are one core's.
    #[arg(long)]
    pub pin: bool,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Internal: be the load generator for the indexer at this URL.
    #[arg(long, hide = true)]
    pub drive: Option<String>,
}

impl LoadBenchArgs {
    /// The arguments the load generator needs, as given to this command.
    pub fn passed_on(&self) -> Vec<String> {
        let mut out = vec![
            format!("--hosts={}", self.hosts),
            format!("--buyers={}", self.buyers),
            format!("--duration={}", self.duration),
            format!("--heartbeat-s={}", self.heartbeat_s),
            format!("--job-concurrency={}", self.job_concurrency),
            format!("--cancel-every={}", self.cancel_every),
            format!("--transfer-rate={}", self.transfer_rate),
        ];
        if self.heartbeats_only {
            out.push("--heartbeats-only".into());
        }
        out
    }
}

#[derive(Debug, Args)]
pub struct ProofBenchArgs {
    /// What computes the product: this crate's CPU kernel, or an NVIDIA GPU through CUDA
    /// (the driver and NVRTC loaded at run time). Deriving, hashing and the tree run on
    /// one CPU core either way, as in the host agent.
    #[arg(long, value_enum, default_value = "cpu")]
    pub device: ProofDevice,
    /// The CUDA device ordinal, with --device cuda.
    #[arg(long, default_value_t = 0)]
    pub gpu: usize,
    /// Rows of A and of C.
    #[arg(long, default_value_t = gpumesh_proof::ProofParams::BENCH.rows)]
    pub rows: u32,
    /// The inner dimension: A is rows × inner, B inner × inner.
    #[arg(long, default_value_t = gpumesh_proof::ProofParams::BENCH.inner)]
    pub inner: u32,
    /// Rows opened and checked (Freivalds) on the warm-up proof, which checks the
    /// device's product before its speed is reported.
    #[arg(long, default_value_t = gpumesh_proof::ProofParams::BENCH.spot_rows)]
    pub spot_rows: u16,
    /// Proofs to time, one after another (after one untimed warm-up).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub runs: u32,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

/// What `gpumesh bench proof` multiplies on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ProofDevice {
    Cpu,
    Cuda,
}

#[derive(Debug, Args)]
pub struct CheckerBenchArgs {
    /// Containers checked in the period.
    #[arg(long, default_value_t = 430_000)]
    pub containers: usize,
    /// Checkers licensed.
    #[arg(long, default_value_t = 91_000)]
    pub checkers: usize,
    /// Results per signed report batch.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Capacity proofs to time (host and checker), at the benchmark size.
    #[arg(long, default_value_t = 3)]
    pub proofs: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CheckerArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Where this checker measures from, as LAT,LON: its round trips refine the network's
    /// latency estimates.
    #[arg(long, allow_hyphen_values = true)]
    pub location: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckersArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RestartBenchArgs {
    /// Transactions in the chain before the restart.
    #[arg(long, default_value_t = 1_000_000)]
    pub transactions: u64,
    /// Accounts that send each other tokens.
    #[arg(long, default_value_t = 10_000)]
    pub accounts: usize,
    /// An epoch closes after every this many transactions, paying this many of the
    /// accounts as checkers (a different slice each time).
    #[arg(long, default_value_t = 20_000)]
    pub epoch_every: u64,
    #[arg(long, default_value_t = 2_000)]
    pub rewarded_per_epoch: usize,
    /// Transactions per block; each block is written durably before the next.
    #[arg(long, default_value_t = 5_000)]
    pub block_txs: usize,
    /// A ledger snapshot is written with the first block this many transactions after
    /// the last one, as the indexer writes them (`gpumesh indexer --snapshot-every`).
    #[arg(long, value_name = "TRANSACTIONS", default_value_t = gpumesh_indexer::core::SNAPSHOT_EVERY, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Reward proofs (and account histories) to time through the API after the restart.
    #[arg(long, default_value_t = 200)]
    pub proofs: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LedgerBenchArgs {
    /// Hosts settling usage.
    #[arg(long, default_value_t = 5_000)]
    pub hosts: usize,
    /// Leases per host; each settlement transaction carries one record per lease.
    #[arg(long, default_value_t = 8)]
    pub leases_per_host: usize,
    /// Settlement rounds (every host settles once per round).
    #[arg(long, default_value_t = 10)]
    pub rounds: usize,
    /// Transactions per block; each block is written durably before the next.
    #[arg(long, default_value_t = 2_000)]
    pub block_txs: usize,
    /// Staked containers in the epoch close.
    #[arg(long, default_value_t = 430_000)]
    pub containers: usize,
    /// Checkers paid in the epoch close.
    #[arg(long, default_value_t = 91_000)]
    pub checkers: usize,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct MatchBenchArgs {
    /// GPUs (containers) in the world.
    #[arg(long, default_value_t = 430_000)]
    pub containers: usize,
    /// Requests for the engine.
    #[arg(long, default_value_t = 1_000_000)]
    pub requests: usize,
    /// Requests for the scan baseline (it is slow), the first of the same stream.
    #[arg(long, default_value_t = 2_000)]
    pub baseline_requests: usize,
    /// Share of GPUs busy.
    #[arg(long, default_value_t = 0.7)]
    pub busy: f64,
    /// State updates (price, online, tier) per match.
    #[arg(long, default_value_t = 0.1)]
    pub updates_per_match: f64,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Print one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Write the world (groups.csv) and the request stream (requests.csv) to this
    /// directory, for a peer system to answer the same (scripts/bench-match-postgis.sh).
    #[arg(long)]
    pub export: Option<std::path::PathBuf>,
}

/// Where the indexer is and who you are.
#[derive(Debug, Args, Clone)]
pub struct Connection {
    /// The indexer's API address.
    #[arg(long, env = "GPUMESH_INDEXER", default_value = "http://127.0.0.1:7700")]
    pub indexer: String,
    /// Your key file (made by `gpumesh wallet new`).
    #[arg(long, env = "GPUMESH_KEY")]
    pub key: Option<PathBuf>,
    /// A file holding your key's password (else $GPUMESH_PASSWORD, else a prompt).
    #[arg(long, env = "GPUMESH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// For an https:// indexer: trust the certificates in this PEM file instead of the
    /// system's roots (an indexer whose certificate your own CA signed).
    #[arg(long, env = "GPUMESH_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum RuntimeArg {
    /// Containers when a Docker Engine API is reachable; for hosts, processes only with --dev.
    Auto,
    /// OCI containers through the Docker Engine API (Docker or Podman).
    Container,
    /// Plain processes: local development only.
    Process,
}

#[derive(Debug, Args)]
pub struct DevnetArgs {
    /// Keep the network's state in this directory (and reuse it next time). Without it a
    /// fresh temporary directory is used and deleted at exit.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Address for the indexer's API.
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: RuntimeArg,
    /// A Docker Engine API socket (default: $DOCKER_HOST, then the usual places).
    #[arg(long)]
    pub docker_socket: Option<String>,
    /// Run the scripted demo and exit instead of serving until Ctrl-C.
    #[arg(long)]
    pub demo: bool,
    /// With --demo: print the summary as one JSON object on stdout.
    #[arg(long, requires = "demo")]
    pub json: bool,
    /// Checker nodes to run (licensed in a new network's genesis). The demo adds a lazy
    /// one for the canaries to catch.
    #[arg(long, default_value_t = 5)]
    pub checkers: u16,
}

#[derive(Debug, Args)]
pub struct IndexerArgs {
    #[arg(long, default_value = "127.0.0.1:7700")]
    pub listen: SocketAddr,
    /// Data directory: the store, and the protocol key of a local network.
    #[arg(long)]
    pub data: PathBuf,
    /// If the data directory is new, create a local network in it (simulated GPUs allowed,
    /// faucet on).
    #[arg(long)]
    pub local: bool,
    /// With --local: grant a checker licence to this address in the new genesis. Repeat
    /// for several. Without checkers, containers need no capacity proof and the heartbeat
    /// timer alone decides liveness.
    #[arg(long = "checker", value_name = "ADDRESS", requires = "local")]
    pub checkers: Vec<String>,
    /// The URL checkers reach this indexer at (for canary tasks); default: the listen address.
    #[arg(long)]
    pub public_url: Option<String>,
    /// Start (or check that the data directory holds) the network of this genesis file,
    /// made by `gpumesh genesis new`.
    #[arg(long, value_name = "FILE", conflicts_with = "local")]
    pub genesis: Option<PathBuf>,
    /// The protocol key's file [default: protocol.key in the data directory].
    #[arg(long, value_name = "FILE")]
    pub protocol_key: Option<PathBuf>,
    /// A file holding the protocol key's password (else $GPUMESH_PASSWORD). A local
    /// network's own keys have the empty password.
    #[arg(long, env = "GPUMESH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Seal the transactions waiting into a block this often (milliseconds).
    #[arg(long, value_name = "MS", default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub block_ms: u64,
    /// Write a snapshot of the ledger's state with the first block sealed this many
    /// transactions after the last snapshot; a restart loads the newest and replays only
    /// the blocks after it.
    #[arg(long, value_name = "TRANSACTIONS", default_value_t = gpumesh_indexer::core::SNAPSHOT_EVERY, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,
    /// Keep an ended lease and its output in memory this long (seconds), then move it to
    /// the store's archive, from which the API still serves it.
    #[arg(long, value_name = "SECONDS", default_value_t = gpumesh_indexer::core::RETENTION_MS / 1_000, value_parser = clap::value_parser!(u64).range(1..=30 * 86_400))]
    pub retention: u64,
    /// Requests that may wait to be applied; past it they are refused at once with
    /// `overloaded` (HTTP 503, Retry-After).
    #[arg(long, value_name = "REQUESTS", default_value_t = gpumesh_indexer::QUEUE_LIMIT as u64, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub queue_limit: u64,
}

#[derive(Debug, Args)]
pub struct ContainersArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum GenesisCommand {
    /// Write the genesis file of a new public network: no faucet, no simulated GPUs, the
    /// public parameters. Half the supply goes to the reward pool, the allocations you
    /// give to their addresses, and the rest to the treasury.
    New(GenesisNewArgs),
}

#[derive(Debug, Args)]
pub struct GenesisNewArgs {
    /// Where to write the genesis file; never overwrites.
    #[arg(long, default_value = "genesis.json")]
    pub out: PathBuf,
    /// The network's chain id (signatures name it, so no two networks should share one).
    #[arg(long)]
    pub chain_id: u64,
    /// The protocol key, which signs escrow closes, epochs and slashes; created if missing.
    #[arg(long, value_name = "FILE", default_value = "protocol.key")]
    pub protocol_key: PathBuf,
    /// A file holding the protocol key's password (else $GPUMESH_PASSWORD, else a prompt).
    #[arg(long, env = "GPUMESH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// A first balance, ADDRESS=TOKENS. Repeat for several.
    #[arg(long = "alloc", value_name = "ADDRESS=TOKENS")]
    pub allocations: Vec<String>,
    /// Grant a checker licence to this address. Repeat; a network with checkers needs at
    /// least three.
    #[arg(long = "checker", value_name = "ADDRESS")]
    pub checkers: Vec<String>,
    /// The GPU catalog's reference proof rates: a JSON list of `{"model", "macs_per_s",
    /// "measured"}` (docs/capacity-proof.md, "Reference proof rates"). A network with
    /// checkers registers real GPUs only of models listed here.
    #[arg(long, value_name = "FILE")]
    pub proof_rates: Option<PathBuf>,
}

/// Where a host's real GPUs and their prover come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DeviceArg {
    Nvml,
    CpuReference,
}

#[derive(Debug, Args)]
pub struct HostArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// A name for this host, shown to buyers.
    #[arg(long)]
    pub name: String,
    /// Where the host is, as LAT,LON.
    #[arg(long, allow_hyphen_values = true)]
    pub location: String,
    /// Two-letter country code, such as DE.
    #[arg(long)]
    pub country: String,
    /// Price per GPU-hour in tokens, such as 2.10.
    #[arg(long)]
    pub price: String,
    /// Declare simulated GPUs (MODEL:COUNT) instead of discovering real ones; only a
    /// local network accepts them. Repeat for several models.
    #[arg(
        long = "simulate-gpu",
        value_name = "MODEL:COUNT",
        conflicts_with = "device"
    )]
    pub simulate_gpu: Vec<String>,
    /// Where the real GPUs come from: nvml (NVIDIA GPUs, proven through CUDA; a host
    /// whose CUDA cannot load does not start), or cpu-reference (this machine's CPU as
    /// one device of the catalog's cpu-reference model, for networks whose genesis lists
    /// it, such as tests; never a real GPU).
    #[arg(long, value_enum, default_value = "nvml")]
    pub device: DeviceArg,
    #[arg(long, value_enum, default_value = "auto")]
    pub runtime: RuntimeArg,
    /// Allow the process runtime (local development networks only).
    #[arg(long)]
    pub dev: bool,
    /// Where the process runtime records the processes it starts, so that the agent,
    /// started again after it was killed, ends those it left (default:
    /// $XDG_STATE_HOME/gpumesh, else ~/.local/state/gpumesh).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// A Docker Engine API socket (default: $DOCKER_HOST, then the usual places).
    #[arg(long)]
    pub docker_socket: Option<String>,
    /// Network for containers: bridge (isolated, with outbound access) or none.
    #[arg(long, default_value = "bridge")]
    pub container_network: String,
    /// Network for containers that publish ports (services); default: the same as
    /// --container-network. Services cannot run with none.
    #[arg(long)]
    pub service_network: Option<String>,
    /// Memory limit per leased GPU, in MiB.
    #[arg(long, default_value_t = 16 * 1024)]
    pub memory_per_gpu_mib: i64,
    /// CPU limit per leased GPU, in CPUs.
    #[arg(long, default_value_t = 4)]
    pub cpus_per_gpu: i64,
    /// Run workloads as their image's own user (root in most images) instead of an
    /// unprivileged one (uid and gid 65534). Leases say which.
    #[arg(long)]
    pub allow_root_workloads: bool,
    /// Do not stake at start; by default the agent stakes, from the host's balance, what
    /// each GPU's requirement still lacks (a GPU serves only once staked).
    #[arg(long)]
    pub no_stake: bool,
    /// Where the agent answers checkers' challenges (liveness, capacity proofs).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub challenge_listen: SocketAddr,
    /// The URL checkers reach the challenge endpoint at (default: http:// and the bound
    /// address); set it when checkers come from other machines.
    #[arg(long)]
    pub challenge_url: Option<String>,
    /// The address buyers reach services' published ports at (default: the host of
    /// --challenge-url, else 127.0.0.1).
    #[arg(long)]
    pub public_address: Option<String>,
    /// The local address services' ports are published on.
    #[arg(long, default_value = "0.0.0.0")]
    pub publish_ip: std::net::IpAddr,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// GPU model or class and count on one host, such as H100:4, RTX4090 or consumer.
    #[arg(long, value_name = "MODEL[:COUNT]")]
    pub gpu: String,
    /// Least memory per GPU, in GiB.
    #[arg(long)]
    pub min_vram_gib: Option<u32>,
    /// Worst acceptable service tier: 1 (best) to 3 (any).
    #[arg(long)]
    pub max_tier: Option<u8>,
    /// Only hosts in this country (two-letter code); repeat for several.
    #[arg(long = "country")]
    pub countries: Vec<String>,
    /// Never hosts in this country; repeat for several.
    #[arg(long = "exclude-country")]
    pub exclude_countries: Vec<String>,
    /// Estimated round-trip time bound in ms, for interactive work such as games.
    #[arg(long)]
    pub max_rtt_ms: Option<u32>,
    /// Whether the image must already be on the host: any, prefer or require.
    #[arg(long, value_enum, default_value = "any")]
    pub image_policy: ImagePolicyArg,
    /// How to rank hosts: price, experience (round-trip time, tier) or balanced.
    #[arg(long, value_enum, default_value = "balanced")]
    pub policy: PolicyArg,
    /// Where you are, as LAT,LON: the nearest suitable host is chosen.
    #[arg(long, allow_hyphen_values = true)]
    pub near: String,
    /// The most you pay per GPU-hour, in tokens.
    #[arg(long)]
    pub max_price: String,
    /// The longest the workload may run, such as 90s, 10m or 2h; the escrow covers it.
    #[arg(long, default_value = "10m")]
    pub max_duration: String,
    /// The container image (present on the host).
    #[arg(long, default_value = gpumesh_host::demo_image::DEMO_IMAGE)]
    pub image: String,
    /// Print the receipt as JSON on stdout (the workload's output goes to stderr).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// Return once the workload runs (and passes its health check) instead of following
    /// it to the end; prints its endpoints. Stop it with `gpumesh cancel`.
    #[arg(long)]
    pub detach: bool,
    /// The command to run, after `--`.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// What makes a workload a service: published ports, environment, a health check.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    /// A port the workload listens on, published on the host: PORT[/tcp|/udp]. Repeat.
    #[arg(long = "port", value_name = "PORT[/PROTO]")]
    pub ports: Vec<gpumesh_types::PortSpec>,
    /// An environment variable for the workload: KEY=VALUE (never logged). Repeat.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<gpumesh_types::EnvVar>,
    /// A health check: http:/PATH (a GET answering 2xx or 3xx) or tcp (a connection);
    /// the lease is ready only once it passes.
    #[arg(long, value_name = "http:/PATH|tcp")]
    pub health: Option<gpumesh_types::Probe>,
    /// How often the health check runs, such as 2s.
    #[arg(long, default_value = "2s")]
    pub health_interval: String,
    /// How long after the start the first check may take to pass, such as 30s.
    #[arg(long, default_value = "30s")]
    pub health_grace: String,
}

impl ServiceArgs {
    /// The health check these arguments ask for.
    pub fn health_check(&self) -> anyhow::Result<Option<gpumesh_types::HealthCheck>> {
        let Some(probe) = self.health.clone() else {
            return Ok(None);
        };
        let mut check = gpumesh_types::HealthCheck::new(probe);
        check.interval_ms = crate::format::parse_duration_ms(&self.health_interval)?;
        check.grace_ms = crate::format::parse_duration_ms(&self.health_grace)?;
        Ok(Some(check))
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ImagePolicyArg {
    Any,
    Prefer,
    Require,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum PolicyArg {
    Price,
    Experience,
    Balanced,
}

#[derive(Debug, Args)]
pub struct AccountArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// Another account's address instead of your key's.
    #[arg(long)]
    pub address: Option<String>,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    #[command(flatten)]
    pub connection: Connection,
    /// GPU model or class and count per replica, such as H100 or RTX4090:2.
    #[arg(long, value_name = "MODEL[:COUNT]")]
    pub gpu: String,
    /// The container image (present on the hosts).
    #[arg(long, default_value = gpumesh_host::demo_image::DEMO_IMAGE)]
    pub image: String,
    /// Where replicas run: CC (a country's point, in that country) or LAT,LON, then
    /// optionally :MIN-MAX replicas (default 1-1). Repeat, or separate with ';'.
    #[arg(
        long = "region",
        alias = "regions",
        value_delimiter = ';',
        required = true,
        allow_hyphen_values = true
    )]
    pub regions: Vec<String>,
    /// Place replicas only on hosts within this estimated round trip (ms) of their
    /// region's point (by default anywhere, nearest first).
    #[arg(long)]
    pub region_max_rtt: Option<u32>,
    /// The most you pay per GPU-hour, in tokens.
    #[arg(long)]
    pub max_price: String,
    /// Each replica's escrow covers one period and is topped up a period at a time.
    #[arg(long, default_value = "1h")]
    pub period: String,
    /// Sessions one replica serves at once (0: the deployment takes no sessions).
    #[arg(long, default_value_t = 0)]
    pub sessions_per_replica: u16,
    /// The most the network may spend from your balance on this deployment, in tokens
    /// (an allowance you can raise later with `gpumesh deployment allow`).
    #[arg(long)]
    pub budget: String,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[arg(long)]
    pub json: bool,
    /// The command to run, after `--` (default: the image's own).
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCommand {
    /// Regions, replicas, endpoints and sessions of a deployment.
    Show {
        #[command(flatten)]
        connection: Connection,
        id: u64,
        #[arg(long)]
        json: bool,
    },
    /// New replica bounds for one region.
    Scale {
        #[command(flatten)]
        connection: Connection,
        id: u64,
        /// The region's name as given at deploy time (such as DE or 48.1,11.6).
        #[arg(long, allow_hyphen_values = true)]
        region: String,
        #[arg(long)]
        min: u16,
        #[arg(long)]
        max: u16,
    },
    /// Set how much of your balance the network may still spend on it, in tokens.
    Allow {
        #[command(flatten)]
        connection: Connection,
        id: u64,
        tokens: String,
    },
    /// Stop every replica and end its sessions.
    Stop {
        #[command(flatten)]
        connection: Connection,
        id: u64,
    },
}

#[derive(Debug, Args)]
pub struct SessionArgs {
    #[command(flatten)]
    pub connection: Connection,
    #[arg(long)]
    pub deployment: u64,
    /// Where the player is, as LAT,LON.
    #[arg(long, allow_hyphen_values = true)]
    pub near: String,
    /// The worst estimated round trip the player accepts, in ms.
    #[arg(long, default_value_t = 40)]
    pub max_rtt: u32,
    /// How long to wait in the queue for a slot, such as 10s (at most 60s).
    #[arg(long, default_value = "10s")]
    pub queue: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct CancelArgs {
    #[command(flatten)]
    pub connection: Connection,
    pub lease: u64,
}

/// The password of a key file being written.
#[derive(Debug, Args)]
pub struct NewPassword {
    /// A file holding the new key's password (else $GPUMESH_PASSWORD, else a prompt, twice).
    #[arg(long, env = "GPUMESH_PASSWORD_FILE", value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// scrypt's cost: `standard` (N = 2^18, about a second to open) for keys that hold
    /// value; `light` (N = 2^12) for test keys.
    #[arg(long, value_enum, default_value = "standard")]
    pub kdf: KdfArg,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum KdfArg {
    Standard,
    Light,
}

#[derive(Debug, Subcommand)]
pub enum WalletCommand {
    /// Make a new key pair, write it as an Ethereum keystore (scrypt and AES-128-CTR, as
    /// geth, Foundry and MetaMask read them) and print its address.
    New {
        /// Where to write the key (readable by you only); never overwrites.
        #[arg(long, default_value = "gpumesh.key")]
        out: PathBuf,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Print the address of a key file (no password needed).
    Address {
        #[arg(long, env = "GPUMESH_KEY")]
        key: PathBuf,
    },
    /// Make a gpumesh key file from another wallet's key: a keystore of geth, Foundry
    /// (`cast wallet`) or MetaMask, or a private key in hex (as MetaMask exports it).
    Import {
        /// Where to write the key (readable by you only); never overwrites.
        #[arg(long, default_value = "gpumesh.key")]
        out: PathBuf,
        /// A keystore to import; it keeps its password.
        #[arg(
            long,
            value_name = "FILE",
            conflicts_with = "private_key_file",
            required_unless_present = "private_key_file"
        )]
        keystore: Option<PathBuf>,
        /// A file holding a private key in hex (or an unencrypted key file of an older
        /// gpumesh); the new keystore gets the password you give.
        #[arg(long, value_name = "FILE")]
        private_key_file: Option<PathBuf>,
        #[command(flatten)]
        password: NewPassword,
    },
    /// Print a key for another wallet: the keystore itself (geth, Foundry and MetaMask
    /// import it as is), or with --private-key the secret in hex.
    Export {
        #[arg(long, env = "GPUMESH_KEY")]
        key: PathBuf,
        /// Print the private key in hex (asks for the password). Anyone who sees it owns
        /// the account.
        #[arg(long)]
        private_key: bool,
        #[arg(long, env = "GPUMESH_PASSWORD_FILE", value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Get tokens from a local network's faucet.
    Faucet {
        #[command(flatten)]
        connection: Connection,
        /// Tokens to ask for.
        #[arg(long, default_value = "1000")]
        amount: String,
    },
    /// Balance, vesting rewards, cumulative rewards and stakes of an account.
    Balance(AccountArgs),
    /// Stake (or top up) tokens for one of your GPUs; it is matched and rewarded only
    /// once its stake covers K × the staking coefficient.
    Stake {
        #[command(flatten)]
        connection: Connection,
        /// The GPU's index on your host.
        #[arg(long)]
        index: u16,
        /// Tokens to add (for example 1500 or 0.25).
        #[arg(long)]
        amount: String,
    },
    /// Start unbonding a GPU's whole stake; withdraw it after the unbonding period.
    Unstake {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        index: u16,
    },
    /// Take back a stake whose unbonding period is over.
    Withdraw {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        index: u16,
    },
    /// Send tokens to another account.
    Transfer {
        #[command(flatten)]
        connection: Connection,
        /// The receiving 0x address.
        #[arg(long)]
        to: String,
        /// Tokens to send (for example 12.5).
        #[arg(long)]
        amount: String,
    },
    /// The account's ledger transactions, newest first.
    History {
        #[command(flatten)]
        account: AccountArgs,
        #[arg(long, default_value = "20")]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum LedgerCommand {
    /// Replay the chain in a data directory from genesis and check every signature, root
    /// and the conservation of supply. Exits non-zero at the first bad block.
    Verify {
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Block headers, newest first.
    Blocks {
        #[command(flatten)]
        connection: Connection,
        /// Start below this height (default: from the head).
        #[arg(long)]
        below: Option<u64>,
        #[arg(long, default_value = "10")]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// One recorded transaction by its sequence number, as JSON.
    Tx {
        #[command(flatten)]
        connection: Connection,
        seq: u64,
        /// Print what its signer signed instead: the EIP-712 typed data
        /// (eth_signTypedData_v4's JSON), which any Ethereum wallet shows and hashes.
        #[arg(long)]
        typed_data: bool,
    },
    /// The treasury, the reward pool and what has been emitted so far.
    Treasury {
        #[command(flatten)]
        connection: Connection,
        #[arg(long)]
        json: bool,
    },
    /// An account's cumulative reward after an epoch with its Merkle proof, in the leaf
    /// and tree format of OpenZeppelin's StandardMerkleTree (as JSON).
    Proof {
        /// The rewarded 0x address.
        address: String,
        /// The epoch (0 is the first) after whose close to prove the cumulative reward.
        #[arg(long)]
        epoch: u64,
        /// Read a stopped network's data directory instead of asking the indexer.
        #[arg(long)]
        data: Option<PathBuf>,
        /// With --data: prove by replaying the chain from genesis rather than from the
        /// epoch's stored reward tree (an audit of the stored tree; slow on long chains).
        #[arg(long, requires = "data")]
        replay: bool,
        #[command(flatten)]
        connection: Connection,
    },
}

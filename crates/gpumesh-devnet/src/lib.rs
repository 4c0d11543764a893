//! A whole gpumesh network in one process, on loopback (`gpumesh devnet`).
//!
//! An indexer on the embedded store, hosts with simulated GPUs in cities on five
//! continents, checker nodes licensed in the local genesis that verify every host's
//! capacity and liveness, and a buyer wallet funded from the local faucet. Workloads run as real
//! containers when a Docker Engine API is reachable (the demo image is built locally if
//! missing) and as processes otherwise; the network says which. [`demo`] runs a scripted
//! scenario on it. The integration tests drive the same code.

pub mod demo;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use gpumesh_client::Client;
use gpumesh_host::challenge::{Prover, SimulatedProver};
use gpumesh_host::demo_image::ensure_demo_image;
use gpumesh_host::runtime::Runtime;
use gpumesh_host::runtime::container::ContainerRuntime;
use gpumesh_host::runtime::process::ProcessRuntime;
use gpumesh_identity::{Kdf, Wallet};
use gpumesh_indexer::Indexer;
use gpumesh_types::{Address, Amount, GeoPoint, GpuModel, GpuOffer, Location, RuntimeKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Which runtime the hosts use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeChoice {
    /// Containers when an engine is reachable, processes otherwise.
    Auto,
    Container,
    Process,
}

/// One simulated host of the devnet world.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpec {
    pub name: String,
    pub lat: f64,
    pub lon: f64,
    pub country: String,
    pub gpu: GpuModel,
    pub count: u16,
    /// Price per GPU-hour in tokens, as a person writes it.
    pub price: String,
    /// How its simulated GPUs answer capacity proofs.
    pub prover: SimulatedDevice,
    /// What usage its agent claims (`Metered` but for the demo's over-billing host).
    pub claims: gpumesh_host::UsageClaims,
}

/// What a simulated host's GPUs really are. Anything but `AsClaimed` is a cheat that the
/// checkers must catch; the demo uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimulatedDevice {
    /// Computes at the speed the local genesis declares for the claimed model.
    AsClaimed,
    /// Claims its model but computes at the declared speed of a lesser one.
    Actually(GpuModel),
    /// Computes at the claimed speed but skips this many rows in a thousand.
    SkipsRows(u16),
}

/// The default world: ten hosts in ten cities on five continents.
pub fn world() -> Vec<HostSpec> {
    let host = |name: &str, lat, lon, country: &str, gpu, count, price: &str| HostSpec {
        name: name.into(),
        lat,
        lon,
        country: country.into(),
        gpu,
        count,
        price: price.into(),
        prover: SimulatedDevice::AsClaimed,
        claims: gpumesh_host::UsageClaims::Metered,
    };
    use GpuModel::*;
    vec![
        host("frankfurt", 50.1109, 8.6821, "DE", H100, 8, "2.40"),
        host("amsterdam", 52.3676, 4.9041, "NL", A100_80, 4, "1.50"),
        host("ashburn", 39.0438, -77.4874, "US", H100, 8, "2.10"),
        host("san-jose", 37.3382, -121.8863, "US", Rtx4090, 4, "0.45"),
        host("sao-paulo", -23.5505, -46.6333, "BR", Rtx4090, 2, "0.50"),
        host("mumbai", 19.0760, 72.8777, "IN", L40S, 4, "0.95"),
        host("singapore", 1.3521, 103.8198, "SG", Rtx4090, 4, "0.55"),
        host("tokyo", 35.6762, 139.6503, "JP", H200, 8, "3.20"),
        host("sydney", -33.8688, 151.2093, "AU", A100_40, 2, "1.10"),
        host("johannesburg", -26.2041, 28.0473, "ZA", Rtx3090, 2, "0.30"),
    ]
}

/// How to start a devnet.
#[derive(Clone, Debug)]
pub struct DevnetConfig {
    /// Keep state here (and reuse it on the next start); a fresh temporary directory if `None`.
    pub data_dir: Option<PathBuf>,
    pub listen: SocketAddr,
    pub runtime: RuntimeChoice,
    /// A Docker Engine API socket; the usual places when `None`.
    pub docker_socket: Option<String>,
    pub hosts: Vec<HostSpec>,
    /// Tokens the buyer wallet is topped up to.
    pub buyer_funds_tokens: u64,
    /// Checker nodes, licensed in the genesis (a new data directory only).
    pub checkers: u16,
    /// Of those, how many answer without checking (to show canaries catching them).
    pub lazy_checkers: u16,
    /// More checker licences in the genesis, with no node running (tests drive them).
    pub extra_licences: Vec<Address>,
    /// How long the indexer keeps ended leases in memory before it archives them.
    pub retention: Duration,
}

impl Default for DevnetConfig {
    fn default() -> Self {
        DevnetConfig {
            data_dir: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            runtime: RuntimeChoice::Auto,
            docker_socket: None,
            hosts: world(),
            buyer_funds_tokens: 10_000,
            checkers: 5,
            lazy_checkers: 0,
            extra_licences: Vec::new(),
            retention: Duration::from_millis(gpumesh_indexer::core::RETENTION_MS),
        }
    }
}

struct Service {
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await.context("a devnet task panicked")?
    }
}

/// A running devnet.
pub struct Devnet {
    pub api_url: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub runtime: Arc<dyn Runtime>,
    /// A line on why this runtime was chosen.
    pub runtime_note: String,
    pub buyer: Wallet,
    pub buyer_key: PathBuf,
    temp: Option<tempfile::TempDir>,
    indexer: Option<Service>,
    retention: Duration,
    hosts: Vec<(String, Service)>,
    checkers: Vec<(Address, Service)>,
}

impl std::fmt::Debug for Devnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Devnet")
            .field("api_url", &self.api_url)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

/// The password of a local network's keys: they hold nothing of value, and its users and
/// tests open them without asking.
pub const LOCAL_KEY_PASSWORD: &str = "";

fn key(path: &Path) -> anyhow::Result<Wallet> {
    if path.exists() {
        return Wallet::load(path, LOCAL_KEY_PASSWORD)
            .with_context(|| format!("failed to load {}", path.display()));
    }
    let wallet = Wallet::generate();
    wallet
        .save(path, LOCAL_KEY_PASSWORD, Kdf::Light)
        .with_context(|| format!("failed to create {}", path.display()))?;
    Ok(wallet)
}

async fn choose_runtime(
    choice: RuntimeChoice,
    socket: Option<&str>,
    data_dir: &Path,
) -> anyhow::Result<(Arc<dyn Runtime>, String)> {
    // Processes are recorded in the data directory: a devnet started again on it ends
    // those its killed agents left.
    let processes = || ProcessRuntime::recorded_in(data_dir).map(Arc::new);
    if choice == RuntimeChoice::Process {
        return Ok((processes()?, "process runtime, as asked".into()));
    }
    // Jobs get no network at all; services get the bridge, to publish their ports.
    let engine = match ContainerRuntime::connect(socket, "none")
        .await
        .map(|r| r.with_service_network("bridge"))
    {
        Ok(engine) => engine,
        Err(e) if choice == RuntimeChoice::Auto => {
            return Ok((processes()?, format!("process runtime, because {e}")));
        }
        Err(e) => return Err(e),
    };
    match ensure_demo_image(&engine).await {
        Ok(built) => {
            let note = if built {
                "built the demo image locally"
            } else {
                "the demo image was present"
            };
            Ok((Arc::new(engine), format!("container runtime; {note}")))
        }
        Err(e) if choice == RuntimeChoice::Auto => Ok((
            processes()?,
            format!("process runtime, because the demo image could not be built: {e:#}"),
        )),
        Err(e) => Err(e),
    }
}

async fn start_indexer(
    data_dir: &Path,
    listener: tokio::net::TcpListener,
    checkers: Vec<Address>,
    retention: Duration,
) -> anyhow::Result<Service> {
    let config = gpumesh_indexer::Config {
        local_checkers: checkers,
        retention,
        ..gpumesh_indexer::Config::local(data_dir)
    };
    let indexer = Indexer::open(config)?;
    let stop = CancellationToken::new();
    let task = tokio::spawn(indexer.serve(listener, stop.clone().cancelled_owned()));
    Ok(Service { stop, task })
}

/// The simulated device of a host: the declared speed of the model it claims, or, for
/// a cheat, of the model it really is.
fn simulated_prover(checking: &gpumesh_types::CheckingParams, spec: &HostSpec) -> Arc<dyn Prover> {
    let (model, skip_per_mille) = match spec.prover {
        SimulatedDevice::AsClaimed => (spec.gpu, 0),
        SimulatedDevice::Actually(model) => (model, 0),
        SimulatedDevice::SkipsRows(per_mille) => (spec.gpu, per_mille),
    };
    Arc::new(SimulatedProver {
        macs_per_s: checking.sizing.rate(model, true).unwrap_or(1),
        skip_per_mille,
    })
}

impl Devnet {
    /// Starts the indexer, the hosts and the buyer, and waits until every host registered.
    pub async fn start(config: DevnetConfig) -> anyhow::Result<Devnet> {
        let (data_dir, temp) = match &config.data_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("gpumesh-devnet-")
                    .tempdir()
                    .context("failed to create a temporary data directory")?;
                (temp.path().to_path_buf(), Some(temp))
            }
        };
        std::fs::create_dir_all(data_dir.join("keys"))
            .context("failed to create the key directory")?;
        let (runtime, runtime_note) =
            choose_runtime(config.runtime, config.docker_socket.as_deref(), &data_dir).await?;

        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("failed to listen on {}", config.listen))?;
        let addr = listener
            .local_addr()
            .context("failed to read the bound address")?;
        let api_url = format!("http://{addr}");
        let checker_wallets = (0..config.checkers)
            .map(|i| key(&data_dir.join("keys").join(format!("checker-{i}.key"))))
            .collect::<anyhow::Result<Vec<Wallet>>>()?;
        let licences = checker_wallets
            .iter()
            .map(Wallet::address)
            .chain(config.extra_licences.iter().copied())
            .collect();
        let indexer = start_indexer(&data_dir, listener, licences, config.retention).await?;
        let checking = gpumesh_types::CheckingParams::local(Vec::new());

        let mut hosts = Vec::new();
        for spec in &config.hosts {
            let wallet = key(&data_dir
                .join("keys")
                .join(format!("host-{}.key", spec.name)))?;
            // Hosts stake from their own balance: fund them from the faucet first.
            let host_client = Client::new(&api_url, Some(wallet.clone()));
            if host_client.account(wallet.address()).await?.balance < Amount::from_tokens(500) {
                host_client
                    .faucet(Amount::from_tokens(1_000))
                    .await
                    .context("failed to fund a host from the faucet")?;
            }
            let host_config = gpumesh_host::HostConfig {
                indexer_url: api_url.clone(),
                indexer_ca: Vec::new(),
                wallet,
                name: spec.name.clone(),
                location: Location {
                    point: GeoPoint::new(spec.lat, spec.lon)?,
                    country: spec.country.parse()?,
                },
                price_per_gpu_hour: Amount::parse_tokens(&spec.price)?,
                gpus: vec![GpuOffer {
                    model: spec.gpu,
                    count: spec.count,
                    vram_mib: None,
                    simulated: true,
                }],
                gpu_uuids: Vec::new(),
                runtime: runtime.clone(),
                memory_per_gpu: Some(512 * 1024 * 1024),
                nano_cpus_per_gpu: Some(250_000_000),
                auto_stake: true,
                public_address: "127.0.0.1".into(),
                publish_ip: std::net::IpAddr::from([127, 0, 0, 1]),
                claims: spec.claims,
                image_user: false,
                challenge: Some(gpumesh_host::ChallengeConfig {
                    listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                    advertise: None,
                    prover: simulated_prover(&checking, spec),
                }),
            };
            let stop = CancellationToken::new();
            let task = tokio::spawn(gpumesh_host::run(host_config, stop.clone()));
            hosts.push((spec.name.clone(), Service { stop, task }));
        }

        let mut checkers = Vec::new();
        for (i, wallet) in checker_wallets.into_iter().enumerate() {
            let address = wallet.address();
            let mut checker = gpumesh_checker::CheckerConfig::new(&api_url, wallet);
            if i < config.lazy_checkers as usize {
                checker.behaviour = gpumesh_checker::Behaviour::Lazy;
            }
            // Checkers measure from the cities of the world, in turn.
            let at = &world()[i % world().len()];
            checker.location = GeoPoint::new(at.lat, at.lon).ok();
            let stop = CancellationToken::new();
            let task = tokio::spawn(gpumesh_checker::run(checker, stop.clone()));
            checkers.push((address, Service { stop, task }));
        }
        let buyer_key = data_dir.join("keys").join("buyer.key");
        let buyer = key(&buyer_key)?;
        let devnet = Devnet {
            api_url,
            addr,
            data_dir,
            runtime,
            runtime_note,
            buyer,
            buyer_key,
            temp,
            indexer: Some(indexer),
            retention: config.retention,
            hosts,
            checkers,
        };
        devnet
            .wait_for_hosts(config.hosts.len() as u32, Duration::from_secs(40))
            .await?;
        let client = devnet.buyer_client();
        let want = Amount::from_tokens(config.buyer_funds_tokens);
        let have = client.account(devnet.buyer.address()).await?.balance;
        if have < want {
            client
                .faucet(Amount(want.0 - have.0))
                .await
                .context("failed to fund the buyer from the faucet")?;
        }
        Ok(devnet)
    }

    /// A client signing as the devnet's buyer.
    pub fn buyer_client(&self) -> Client {
        Client::new(&self.api_url, Some(self.buyer.clone()))
    }

    pub fn runtime_kind(&self) -> RuntimeKind {
        self.runtime.kind()
    }

    /// Names of the hosts still running.
    pub fn host_names(&self) -> Vec<String> {
        self.hosts.iter().map(|(n, _)| n.clone()).collect()
    }

    /// Addresses of the checker nodes, and whether each answers lazily.
    pub fn checker_addresses(&self) -> Vec<Address> {
        self.checkers.iter().map(|(a, _)| *a).collect()
    }

    /// Waits until every host registered, every container's stake is in place and
    /// checkers have decided every capacity proof.
    async fn wait_for_hosts(&self, hosts: u32, limit: Duration) -> anyhow::Result<()> {
        let client = Client::new(&self.api_url, None);
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let (Ok(info), Ok(containers)) = (client.info().await, client.containers().await)
                && info.hosts >= hosts
                && containers.iter().all(|c| {
                    !matches!(
                        c.state,
                        gpumesh_types::ContainerState::AwaitingStake
                            | gpumesh_types::ContainerState::Checking
                    )
                })
            {
                return Ok(());
            }
            for (name, host) in &self.hosts {
                if host.task.is_finished() {
                    bail!("host {name} stopped before it registered (see its log above)");
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "not all {hosts} hosts registered within {} s",
                    limit.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the indexer and starts it again on the same address and store, as a crash
    /// and restart would. Hosts and buyers reconnect by themselves.
    pub async fn restart_indexer(&mut self) -> anyhow::Result<()> {
        if let Some(indexer) = self.indexer.take() {
            indexer
                .stop()
                .await
                .context("the indexer failed while stopping")?;
        }
        let listener = tokio::net::TcpListener::bind(self.addr)
            .await
            .with_context(|| format!("failed to listen on {} again", self.addr))?;
        // The genesis is already in the store; its checker licences stand.
        self.indexer =
            Some(start_indexer(&self.data_dir, listener, Vec::new(), self.retention).await?);
        Ok(())
    }

    /// Kills one host agent without warning its leases' buyers (as a lost machine would).
    pub fn kill_host(&mut self, name: &str) -> anyhow::Result<()> {
        let i = self
            .hosts
            .iter()
            .position(|(n, _)| n == name)
            .with_context(|| format!("no host named {name}"))?;
        let (_, host) = self.hosts.remove(i);
        host.task.abort();
        Ok(())
    }

    /// Stops hosts, then the indexer (which seals the last block). Returns the data
    /// directory, which is deleted afterwards unless it was given.
    pub async fn stop(mut self) -> anyhow::Result<Option<tempfile::TempDir>> {
        for (address, checker) in self.checkers.drain(..) {
            if let Err(e) = checker.stop().await {
                tracing::warn!(checker = %address, error = %e, "checker stopped with an error");
            }
        }
        for (name, host) in self.hosts.drain(..) {
            if let Err(e) = host.stop().await {
                tracing::warn!(host = %name, error = %e, "host stopped with an error");
            }
        }
        // The agents stopped their workloads; those of agents that were killed (the demo
        // kills one) are still there: a local network leaves nothing running.
        match self.runtime.reap().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed the workloads of killed agents"),
            Err(e) => tracing::warn!(error = %e, "could not remove every workload"),
        }
        if let Some(indexer) = self.indexer.take() {
            indexer.stop().await?;
        }
        Ok(self.temp.take())
    }
}

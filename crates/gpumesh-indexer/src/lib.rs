//! The indexer: registry of hosts and containers, matching, the lease lifecycle, the
//! settlement ledger, and the public HTTP/JSON API, over an embedded redb store.
//!
//! This crate is the shell around the pure crates: [`core::Core`] calls the registry and
//! the ledger; the service here reads requests, runs one core operation at a time under a
//! lock, writes what it changed to the store in one durable transaction, and only then
//! answers. Background tasks mark lost hosts offline, expire unfunded matches and seal
//! ledger blocks. `run(config, listener, shutdown)` takes a bound listener so tests can
//! start an indexer on `127.0.0.1:0`.

mod api;
mod auth;
pub mod closing;
mod commit;
pub mod core;
mod dashboard;
mod error;
mod limits;
mod notify;
mod openapi;
pub mod telemetry;
pub mod tls;

// The decoders of outside input, for the fuzz targets (fuzz/).
pub use auth::authenticate;
pub use error::decode_body;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, bail};
use gpumesh_identity::{Kdf, Wallet};
use gpumesh_ledger::Genesis;
use gpumesh_registry::Params;
use gpumesh_store::{Batch, Store};
use gpumesh_types::{Address, LeaseId};
use tokio_util::sync::CancellationToken;

pub use api::openapi;
pub use auth::MAX_BODY_BYTES;
pub use commit::QUEUE_LIMIT;
pub use error::{Failure, status_of};
pub use limits::RateLimits;

use crate::auth::NonceBook;
use crate::core::Core;

/// The chain id of local networks (the same as Anvil's and Hardhat's).
pub const LOCAL_CHAIN_ID: u64 = 31337;
/// File names inside a data directory.
pub const PROTOCOL_KEY_FILE: &str = "protocol.key";
pub const FAUCET_KEY_FILE: &str = "faucet.key";

/// Log entries read from the store at a time, for a lease no longer in memory.
const LOG_PAGE: usize = 1_000;

/// The dashboard's history: a sample a minute, a day of them.
const HISTORY_EVERY: Duration = Duration::from_secs(60);
const HISTORY_SAMPLES: usize = 24 * 60;

/// Milliseconds since the Unix epoch, the indexer's one clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A network's genesis file: the ledger's genesis and the registry's parameters, all a
/// new indexer needs to start the network (with the protocol key).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisFile {
    pub genesis: Genesis,
    pub params: Params,
}

impl GenesisFile {
    /// Reads and checks a genesis file.
    pub fn read(path: &Path) -> anyhow::Result<GenesisFile> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read genesis file {}", path.display()))?;
        let file: GenesisFile = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a gpumesh genesis file", path.display()))?;
        file.genesis
            .validate()
            .with_context(|| format!("the genesis in {} is invalid", path.display()))?;
        if file.genesis.local != file.params.local {
            bail!(
                "{}: the genesis and the parameters disagree on whether the network is local",
                path.display()
            );
        }
        Ok(file)
    }

    /// Writes a new genesis file; never replaces one.
    pub fn create(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self).context("genesis serialises")?;
        text.push('\n');
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| {
                format!(
                    "failed to create {} (it must not exist yet)",
                    path.display()
                )
            })?;
        std::io::Write::write_all(&mut out, text.as_bytes())
            .and_then(|()| out.sync_all())
            .with_context(|| format!("failed to write {}", path.display()))
    }
}

/// How to start an indexer.
#[derive(Clone, Debug)]
pub struct Config {
    pub data_dir: PathBuf,
    /// When the store is new: create a local network with these parameters. Without it a
    /// new store is refused (a public network starts from a genesis file).
    pub create_local: Option<Params>,
    /// The network this indexer serves: a new data directory starts it; an existing one
    /// must hold it.
    pub genesis: Option<GenesisFile>,
    /// The protocol key's file; `protocol.key` in the data directory when `None`.
    pub protocol_key: Option<PathBuf>,
    /// The password of a public network's protocol key. A local network's own keys always
    /// have the empty password.
    pub key_password: Option<Password>,
    /// Serve HTTPS with these files instead of plain HTTP.
    pub tls: Option<tls::TlsFiles>,
    /// How often transactions are sealed into a block.
    pub seal_interval: Duration,
    /// How often lost hosts and expired matches are looked for.
    pub tick_interval: Duration,
    /// How often the registry's leases are reconciled with the ledger's escrows.
    pub reconcile_interval: Duration,
    /// A ledger snapshot is written with the first block sealed this many transactions
    /// after the last one; a restart replays only the blocks after the newest.
    pub snapshot_every: u64,
    /// Per-key limits on registrations, faucet requests and jobs.
    pub rate_limits: RateLimits,
    /// How long an ended lease (with its log) stays in memory before it moves to the
    /// store's archive, where reads still find it.
    pub retention: Duration,
    /// Requests that may wait for the committer; past it they are refused as
    /// `overloaded`.
    pub queue_limit: usize,
    /// Checker licences of a new local network.
    pub local_checkers: Vec<alloy_primitives::Address>,
    /// The base URL checkers reach this indexer at, for canary tasks; the listener's
    /// address when `None`.
    pub public_url: Option<String>,
}

impl Config {
    pub fn local(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            create_local: Some(Params::local()),
            genesis: None,
            protocol_key: None,
            key_password: None,
            tls: None,
            seal_interval: Duration::from_secs(1),
            tick_interval: Duration::from_millis(250),
            reconcile_interval: Duration::from_secs(60),
            snapshot_every: core::SNAPSHOT_EVERY,
            rate_limits: RateLimits::default(),
            retention: Duration::from_millis(core::RETENTION_MS),
            queue_limit: commit::QUEUE_LIMIT,
            local_checkers: Vec::new(),
            public_url: None,
        }
    }
}

/// State shared by every request handler.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

#[derive(Debug)]
pub struct Shared {
    core: Mutex<Core>,
    /// Operations waiting for the committer thread (`commit`).
    queue: std::sync::mpsc::Sender<commit::Op>,
    /// Requests waiting in `queue`, and how many may (background steps are not counted).
    waiting: Arc<std::sync::atomic::AtomicUsize>,
    queue_limit: usize,
    store: Store,
    nonces: NonceBook,
    limits: limits::Limits,
    /// The dashboard's charts: a sample a minute over the last day (soft state).
    history: Mutex<std::collections::VecDeque<gpumesh_types::StatsSample>>,
    chain_id: u64,
    /// Hosts' work polls wait here; woken when a commit touched one of their leases.
    host_waiters: notify::Topics<Address>,
    /// Lease log streams wait here; woken when a commit touched the lease or its log.
    lease_waiters: notify::Topics<LeaseId>,
    /// Set when a store write failed or an operation panicked: memory may be ahead of
    /// disk, so no more changes.
    failed: AtomicBool,
    shutdown: CancellationToken,
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl Shared {
    fn core(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock would leave it poisoned; the state itself is
        // only ever changed by operations that check before they change, so go on.
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Puts back the state the store holds (after a failed write or operation).
    fn reload(&self, core: &mut Core, now: u64) {
        match self
            .store
            .load()
            .map_err(|e| e.to_string())
            .and_then(|snapshot| core.reloaded(snapshot, now))
        {
            Ok(reloaded) => *core = reloaded,
            Err(e) => tracing::error!(
                error = %e,
                "could not reload the state from the store; reads may show changes that are not durable"
            ),
        }
    }
}

impl AppState {
    /// Adds a sample to the charts' history, dropping those older than a day.
    fn sample(&self) {
        let now = now_ms();
        let stats = self.read(|c| c.stats(now));
        let mut history = self.history.lock().unwrap_or_else(|p| p.into_inner());
        history.push_back(gpumesh_types::StatsSample {
            time_ms: now,
            utilization_bps: stats.utilization_bps,
            transactions: stats.transactions,
        });
        while history.len() > HISTORY_SAMPLES {
            history.pop_front();
        }
    }

    /// The headline figures with the charts' history.
    pub(crate) fn stats(&self) -> gpumesh_types::NetworkStats {
        let now = now_ms();
        let mut stats = self.read(|c| c.stats(now));
        stats.history = self
            .history
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        stats
    }

    /// Runs a store read on a blocking thread, never on an async worker.
    pub(crate) async fn read_store<T, F>(&self, what: &'static str, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<T, gpumesh_store::StoreError> + Send + 'static,
    {
        let state = self.clone();
        tokio::task::spawn_blocking(move || f(&state.store))
            .await
            .map_err(|e| Failure::internal(format!("a store read panicked: {e}")))?
            .map_err(|e| Failure::internal(format!("failed to read {what}: {e}")))
    }

    /// What memory `found`, or, when memory does not know it (`unknown`), what the
    /// store's archive holds.
    async fn or_archived<T, F>(
        &self,
        found: Result<T, Failure>,
        unknown: gpumesh_types::ErrorCode,
        archived: F,
    ) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&Store) -> Result<Option<T>, gpumesh_store::StoreError> + Send + 'static,
    {
        match found {
            Err(missing) if missing.code == unknown => self
                .read_store("the archive", archived)
                .await?
                .ok_or(missing),
            found => found,
        }
    }

    /// A lease: from memory, or from the store's archive once it left memory.
    pub(crate) async fn lease_view(
        &self,
        id: LeaseId,
    ) -> Result<gpumesh_types::LeaseView, Failure> {
        let found = self.read(|c| c.lease_view(id));
        self.or_archived(found, gpumesh_types::ErrorCode::UnknownLease, move |s| {
            s.archived_lease(id)
        })
        .await
    }

    /// A session: from memory, or from the store's archive once it left memory.
    pub(crate) async fn session_view(
        &self,
        id: gpumesh_types::SessionId,
    ) -> Result<gpumesh_types::SessionView, Failure> {
        let found = self.read(|c| c.session_view(id));
        self.or_archived(found, gpumesh_types::ErrorCode::UnknownSession, move |s| {
            s.archived_session(id)
        })
        .await
    }

    /// Leases in id order after `after`, of this buyer and host when given, from memory
    /// and the archive: up to `limit`, and the id to continue after. Memory is read
    /// first: a lease archived in between is then in both (and shown once), never in
    /// neither, since archiving removes it from memory and writes it in one group.
    pub(crate) async fn leases_page(
        &self,
        buyer: Option<Address>,
        host: Option<Address>,
        after: Option<LeaseId>,
        limit: usize,
    ) -> Result<(Vec<gpumesh_types::LeaseView>, Option<LeaseId>), Failure> {
        let mut items = self.read(|c| c.leases_page(buyer, host, after, limit + 1));
        let archived = self
            .read_store("the archive", move |s| {
                s.archived_leases(buyer, host, after, limit + 1)
            })
            .await?;
        items.extend(archived);
        items.sort_by_key(|l| l.id);
        items.dedup_by_key(|l| l.id);
        let next = if items.len() > limit {
            items.truncate(limit);
            items.last().map(|l| l.id)
        } else {
            None
        };
        Ok((items, next))
    }

    /// A lease's log entries from `from` on, and whether it has ended: from memory, or
    /// a page at a time from the store once the lease is archived.
    pub(crate) async fn logs(
        &self,
        id: LeaseId,
        from: u64,
    ) -> Result<(Vec<gpumesh_types::LogEntry>, bool), Failure> {
        if let Some(found) = self.read(|c| c.logs(id, from)) {
            return Ok(found);
        }
        let entries = self
            .read_store("the logs", move |s| s.logs(id, from, LOG_PAGE))
            .await?;
        Ok((entries, true))
    }

    /// Checks that `signer` may read the lease's output: its buyer or its host.
    pub(crate) async fn may_read_logs(&self, signer: &Address, id: LeaseId) -> Result<(), Failure> {
        if let Some(checked) = self.read(|c| c.may_read_logs(signer, id)) {
            return checked;
        }
        let lease = self.lease_view(id).await?;
        core::may_read(signer, id, lease.buyer, lease.host)
    }

    /// Reads the state.
    pub(crate) fn read<T>(&self, f: impl FnOnce(&Core) -> T) -> T {
        f(&self.core())
    }

    /// Runs a request's operation on the state and answers once its changes are
    /// durable: the committer runs it with whatever else is waiting and writes them
    /// together. Refused at once with `overloaded` when the queue is full; not run if
    /// this future is dropped (its caller left) before its turn.
    pub(crate) async fn mutate<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core, u64, &mut Batch) -> Result<T, Failure> + Send + 'static,
    {
        self.enqueue(f, true)?
            .await
            .map_err(|_| Failure::internal("the committer stopped before answering"))?
    }

    fn overloaded(&self) -> Failure {
        telemetry::overloaded();
        Failure::new(
            gpumesh_types::ErrorCode::Overloaded,
            format!(
                "the indexer has {} requests waiting, the most it queues; retry shortly",
                self.queue_limit
            ),
        )
    }

    /// Counts a request against its signer's rate limit, unless the queue is full: then
    /// it is refused as `overloaded` without spending the signer's allowance, since a
    /// client sends an overloaded request again.
    pub(crate) fn limit(&self, kind: limits::Limited, signer: Address) -> Result<(), Failure> {
        if self.waiting.load(Ordering::Acquire) >= self.queue_limit {
            return Err(self.overloaded());
        }
        self.limits.check(kind, signer)
    }

    /// [`AppState::mutate`] for the indexer's own steps (ticks, seals): never refused
    /// for a full queue, so time keeps passing under any load.
    pub(crate) async fn step<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core, u64, &mut Batch) -> Result<T, Failure> + Send + 'static,
    {
        self.enqueue(f, false)?
            .await
            .map_err(|_| Failure::internal("the committer stopped before answering"))?
    }

    fn enqueue<T, F>(
        &self,
        f: F,
        request: bool,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<T, Failure>>, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core, u64, &mut Batch) -> Result<T, Failure> + Send + 'static,
    {
        if self.failed.load(Ordering::SeqCst) {
            return Err(commit::stopped());
        }
        let slot = if request {
            let Some(slot) = commit::Slot::take(&self.waiting, self.queue_limit) else {
                return Err(self.overloaded());
            };
            Some(slot)
        } else {
            None
        };
        let (op, answered) = commit::op(f, slot);
        self.queue
            .send(op)
            .map_err(|_| Failure::internal("the committer has stopped"))?;
        Ok(answered)
    }

    /// [`AppState::mutate`] for callers outside the async runtime.
    #[cfg(test)]
    fn mutate_now<T, F>(&self, f: F) -> Result<T, Failure>
    where
        T: Send + 'static,
        F: FnOnce(&mut Core, u64, &mut Batch) -> Result<T, Failure> + Send + 'static,
    {
        self.enqueue(f, true)?
            .blocking_recv()
            .map_err(|_| Failure::internal("the committer stopped before answering"))?
    }
}

/// An opened indexer, ready to serve.
#[derive(Debug)]
pub struct Indexer {
    state: AppState,
    config: Config,
}

/// A password, never shown by `Debug`.
#[derive(Clone)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(…)")
    }
}

/// The password of the network's keys: a local network's have the empty password; a
/// public network's protocol key needs one.
fn key_password<'a>(config: &'a Config, genesis: &Genesis) -> anyhow::Result<&'a str> {
    match (&config.key_password, genesis.local) {
        (_, true) => Ok(""),
        (Some(password), false) => Ok(&password.0),
        (None, false) => bail!(
            "the protocol key is encrypted: give its password with --password-file FILE or GPUMESH_PASSWORD"
        ),
    }
}

/// Loads a key, or creates a local network's (light scrypt: it holds nothing of value).
fn load_or_create_key(path: &Path, create: bool, password: &str) -> anyhow::Result<Wallet> {
    if path.exists() {
        return Wallet::load(path, password)
            .with_context(|| format!("failed to load key {}", path.display()));
    }
    if !create {
        bail!("key file {} is missing", path.display());
    }
    let wallet = Wallet::generate();
    wallet
        .save(path, password, Kdf::Light)
        .with_context(|| format!("failed to create key {}", path.display()))?;
    Ok(wallet)
}

impl Indexer {
    /// Opens (or, with `create_local`, creates) the store in the data directory and
    /// rebuilds the state from it.
    pub fn open(config: Config) -> anyhow::Result<Indexer> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create data directory {}", dir.display()))?;
        let store = Store::open(dir).context("failed to open the store")?;
        let now = now_ms();
        let protocol_path = config
            .protocol_key
            .clone()
            .unwrap_or_else(|| dir.join(PROTOCOL_KEY_FILE));
        let stored = store.genesis().context("failed to read the genesis")?;
        let (genesis, _) = match (stored, config.genesis.clone()) {
            (Some((genesis, params)), file) => {
                if let Some(file) = &file
                    && (file.genesis != genesis || file.params != params)
                {
                    bail!(
                        "{} holds another network (chain {}, genesis {}) than the genesis file (chain {}, genesis {})",
                        dir.display(),
                        genesis.chain_id,
                        genesis.hash(),
                        file.genesis.chain_id,
                        file.genesis.hash()
                    );
                }
                (genesis, params)
            }
            (None, Some(GenesisFile { genesis, params })) => {
                let protocol =
                    load_or_create_key(&protocol_path, false, key_password(&config, &genesis)?)?;
                if protocol.address() != genesis.protocol {
                    bail!(
                        "the protocol key {} is {}, but the genesis names {}",
                        protocol_path.display(),
                        protocol.address(),
                        genesis.protocol
                    );
                }
                store
                    .init(&genesis, &params)
                    .context("failed to record the genesis")?;
                tracing::info!(
                    chain_id = genesis.chain_id,
                    local = genesis.local,
                    "started a network from its genesis file"
                );
                (genesis, params)
            }
            (None, None) => {
                let Some(params) = config.create_local.clone() else {
                    bail!(
                        "{} holds no network; start with --local to create a local network, or with --genesis FILE to start one from its genesis file",
                        dir.display()
                    );
                };
                let password = "";
                let protocol = load_or_create_key(&dir.join(PROTOCOL_KEY_FILE), true, password)?;
                let faucet = load_or_create_key(&dir.join(FAUCET_KEY_FILE), true, password)?;
                let genesis =
                    Genesis::local(LOCAL_CHAIN_ID, now, protocol.address(), faucet.address())
                        .with_checkers(config.local_checkers.clone());
                genesis
                    .validate()
                    .map_err(|e| anyhow::anyhow!("the local genesis is invalid: {e}"))?;
                store
                    .init(&genesis, &params)
                    .context("failed to record the genesis")?;
                tracing::info!(chain_id = genesis.chain_id, "created a local network");
                (genesis, params)
            }
        };
        let password = key_password(&config, &genesis)?;
        let protocol = load_or_create_key(&protocol_path, false, password)?;
        let faucet = match genesis.faucet {
            Some(_) => Some(load_or_create_key(
                &dir.join(FAUCET_KEY_FILE),
                false,
                password,
            )?),
            None => None,
        };
        let mut core = restore(&store, protocol, faucet, now)?;
        core.set_snapshot_every(config.snapshot_every);
        core.set_retention(config.retention.as_millis() as u64);
        // The metrics recorder, before the first request.
        telemetry::handle();
        let (queue, queued) = std::sync::mpsc::channel();
        let state = AppState(Arc::new(Shared {
            core: Mutex::new(core),
            queue,
            waiting: Arc::default(),
            queue_limit: config.queue_limit.max(1),
            store,
            nonces: NonceBook::new(now),
            limits: limits::Limits::new(config.rate_limits),
            history: Mutex::new(std::collections::VecDeque::new()),
            chain_id: genesis.chain_id,
            host_waiters: notify::Topics::new(),
            lease_waiters: notify::Topics::new(),
            failed: AtomicBool::new(false),
            shutdown: CancellationToken::new(),
        }));
        commit::spawn(Arc::downgrade(&state.0), queued)
            .context("failed to start the committer thread")?;
        Ok(Indexer { state, config })
    }

    pub fn chain_id(&self) -> u64 {
        self.state.chain_id
    }

    /// Serves the API on `listener` until `shutdown` completes, then seals the last block.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Indexer { state, config } = self;
        let tls = config.tls.as_ref().map(tls::server_config).transpose()?;
        let public = match &config.public_url {
            Some(url) => url.trim_end_matches('/').to_string(),
            None => format!(
                "{}://{}",
                if tls.is_some() { "https" } else { "http" },
                listener
                    .local_addr()
                    .context("failed to read the listener's address")?
            ),
        };
        state.core().set_decoy_base(format!("{public}/v1/decoy"));
        let token = state.shutdown.clone();
        let tasks = [
            spawn_ticks(config.tick_interval, state.clone()),
            spawn_every(
                config.seal_interval,
                state.clone(),
                |core, now, batch| core.seal(now, batch),
                |_, ()| {},
            ),
            // The first round runs at once: reconciliation at start, then on the timer.
            spawn_every(
                config.reconcile_interval,
                state.clone(),
                |core, now, batch| {
                    core.reconcile(now, batch);
                },
                |_, ()| {},
            ),
        ];
        let sampler = {
            let state = state.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(HISTORY_EVERY);
                loop {
                    tokio::select! {
                        _ = state.shutdown.cancelled() => break,
                        _ = every.tick() => state.sample(),
                    }
                }
            })
        };
        let pruner = {
            let state = state.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = state.shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(10)) => {
                            state.nonces.prune(now_ms());
                            state.limits.prune();
                        }
                    }
                }
            })
        };
        let router = api::router(state.clone());
        let stop = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            stop.cancel();
        });
        let served = match tls {
            None => {
                axum::serve(listener, router)
                    .with_graceful_shutdown(token.clone().cancelled_owned())
                    .await
            }
            Some(tls) => {
                let handle = axum_server::Handle::new();
                let stopping = (handle.clone(), token.clone());
                tokio::spawn(async move {
                    stopping.1.cancelled().await;
                    stopping.0.graceful_shutdown(Some(Duration::from_secs(10)));
                });
                match listener.into_std() {
                    Ok(listener) => match axum_server::from_tcp_rustls(listener, tls) {
                        Ok(server) => {
                            server
                                .handle(handle)
                                .serve(router.into_make_service())
                                .await
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
        };
        token.cancel();
        for task in tasks {
            let _ = task.await;
        }
        let _ = pruner.await;
        let _ = sampler.await;
        state
            .step(|core, now, batch| {
                core.seal(now, batch);
                Ok(())
            })
            .await
            .map_err(|e| anyhow::anyhow!(e.message))
            .context("failed to seal the last block")?;
        // An operation that had begun when its client went away still finishes on the
        // committer thread, holding the state; wait for those, so the store is closed when this returns
        // (a restart or `ledger verify` opens it next). Bounded, in case a reader lingers.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while Arc::strong_count(&state.0) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        served.context("the HTTP server failed")
    }
}

/// Rebuilds the state from the store: from the newest ledger snapshot and the blocks
/// after it, or, when no snapshot is usable, by replaying the chain from genesis.
fn restore(
    store: &Store,
    protocol: Wallet,
    faucet: Option<Wallet>,
    now: u64,
) -> anyhow::Result<Core> {
    let began = std::time::Instant::now();
    let snapshot = store.load().context("failed to read the store")?;
    for (height, why) in &snapshot.snapshots_skipped {
        tracing::warn!(height, why = %why, "passed over a ledger snapshot that does not decode");
    }
    let mut from = snapshot.ledger.as_ref().map(|l| l.height());
    let mut replayed = snapshot.blocks.len();
    let restored = Core::restore(snapshot, protocol.clone(), faucet.clone(), now);
    let core = match (restored, from) {
        (Ok(core), _) => core,
        (Err(e), Some(height)) => {
            tracing::warn!(height, error = %e, "could not restore from the ledger snapshot; replaying the chain from genesis");
            let snapshot = store
                .load_from_genesis()
                .context("failed to read the store")?;
            (from, replayed) = (None, snapshot.blocks.len());
            Core::restore(snapshot, protocol, faucet, now)
                .map_err(|e| anyhow::anyhow!(e))
                .context("failed to rebuild the state from the store")?
        }
        (Err(e), None) => {
            return Err(anyhow::anyhow!(e)).context("failed to rebuild the state from the store");
        }
    };
    tracing::info!(
        from_snapshot = from.is_some(),
        snapshot_height = from.unwrap_or(0),
        blocks_replayed = replayed,
        transactions = core.ledger().transaction_count(),
        took_ms = began.elapsed().as_millis() as u64,
        "rebuilt the state from the store"
    );
    Ok(core)
}

/// The tick, every `period`. An epoch close it finds due is assembled on a blocking
/// thread, without the state lock, and applied in a step of its own (`crate::closing`);
/// the ticks go on meanwhile.
fn spawn_ticks(period: Duration, state: AppState) -> tokio::task::JoinHandle<()> {
    state.core().set_epoch_off_lock(true);
    spawn_every(
        period,
        state,
        |core, now, batch| {
            core.tick(now, batch);
            core.take_epoch_inputs()
        },
        |state, inputs| {
            if let Some(inputs) = inputs {
                close_epoch(state.clone(), inputs)
            }
        },
    )
}

/// Assembles an epoch close off the lock, then applies it (or, if the assembly failed,
/// lets the epoch be read again later).
fn close_epoch(state: AppState, inputs: closing::EpochInputs) {
    tokio::spawn(async move {
        let epoch = inputs.epoch();
        let prepared = tokio::task::spawn_blocking(move || inputs.assemble()).await;
        if let Err(e) = &prepared {
            tracing::error!(epoch, error = %e, "assembling the epoch close failed");
        }
        let closed = state.step(move |core, now, batch| {
            match prepared {
                Ok(prepared) => core.close_epoch(prepared, now, batch),
                Err(_) => core.abandon_epoch_close(now),
            }
            Ok(())
        });
        if let Err(e) = closed.await {
            tracing::error!(epoch, error = %e.message, "the epoch close could not be applied");
        }
    });
}

/// Runs `f` as a step of its own every `period`, and `then` with what it returned.
fn spawn_every<T: Send + 'static>(
    period: Duration,
    state: AppState,
    f: fn(&mut Core, u64, &mut Batch) -> T,
    then: fn(&AppState, T),
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = interval.tick() => {
                    match state.step(move |core, now, batch| Ok(f(core, now, batch))).await {
                        Ok(done) => then(&state, done),
                        Err(e) => tracing::error!(error = %e.message, "background step failed"),
                    }
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use gpumesh_types::{Amount, ErrorCode, TxKind};

    use super::*;

    /// The service closes each epoch the tick finds due, assembled off the state lock and
    /// applied in a step of its own: with two-second epochs, epochs 0, 1, 2… close one
    /// after another, each once, each ending where the last one ended or later, and the
    /// supply holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_service_closes_each_epoch_once_assembled_off_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("net");
        std::fs::create_dir_all(&data).unwrap();
        let (protocol, faucet) = (Wallet::generate(), Wallet::generate());
        let light = gpumesh_identity::Kdf::Light;
        protocol
            .save(&data.join(PROTOCOL_KEY_FILE), "", light)
            .unwrap();
        faucet.save(&data.join(FAUCET_KEY_FILE), "", light).unwrap();
        let mut genesis = Genesis::local(
            LOCAL_CHAIN_ID,
            now_ms(),
            protocol.address(),
            faucet.address(),
        );
        genesis.economics.epoch_ms = 2_000;
        let path = dir.path().join("genesis.json");
        (GenesisFile {
            genesis,
            params: Params::local(),
        })
        .create(&path)
        .unwrap();
        let config = Config {
            create_local: None,
            genesis: Some(GenesisFile::read(&path).unwrap()),
            ..Config::local(&data)
        };
        let indexer = Indexer::open(config).unwrap();
        let state = indexer.state.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let served = tokio::spawn(indexer.serve(listener, async {
            let _ = stopped.await;
        }));
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while state.core().ledger().totals().next_epoch < 3 {
            assert!(
                std::time::Instant::now() < deadline,
                "three epochs did not close in 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let _ = stop.send(());
        served.await.unwrap().unwrap();
        let store = &state.store;
        let mut closes: Vec<(u64, u64)> = (store.history(&protocol.address(), 1_000).unwrap())
            .into_iter()
            .filter_map(|e| match &e.tx.tx.kind {
                TxKind::Epoch(close) => Some((close.epoch, close.end_ms)),
                _ => None,
            })
            .collect();
        closes.sort_unstable();
        let epochs: Vec<u64> = closes.iter().map(|c| c.0).collect();
        assert_eq!(epochs, (0..epochs.len() as u64).collect::<Vec<_>>());
        assert!(epochs.len() >= 3);
        for pair in closes.windows(2) {
            assert!(pair[1].1 >= pair[0].1 + 2_000, "{closes:?}");
        }
        assert!(state.core().ledger().supply_conserved());
    }

    #[test]
    fn operations_queued_while_a_group_writes_are_written_together_and_all_answered() {
        let dir = tempfile::tempdir().unwrap();
        let indexer = Indexer::open(Config::local(dir.path())).unwrap();
        let state = &indexer.state;
        let one = Amount::from_tokens(1);
        let people: Vec<Address> = (1..=50u8).map(Address::with_last_byte).collect();
        // Hold the state, as a group being written would, while 50 operations queue.
        let held = state.core();
        let answers: Vec<_> = people
            .iter()
            .map(|&who| {
                state
                    .enqueue(
                        move |core, now, batch| {
                            let before = batch.txs.len();
                            core.faucet(who, one, now, batch).map(|_| before)
                        },
                        true,
                    )
                    .unwrap()
            })
            .collect();
        drop(held);
        // One group: each operation found the transactions of those before it in the
        // same batch.
        let found: Vec<usize> = answers
            .into_iter()
            .map(|a| a.blocking_recv().unwrap().unwrap())
            .collect();
        assert_eq!(found, (0..50).collect::<Vec<_>>());
        drop(indexer);
        let restarted = Indexer::open(Config::local(dir.path())).unwrap();
        for who in &people {
            assert_eq!(restarted.state.read(|c| c.ledger().balance(who)), one);
        }
    }

    #[test]
    fn a_full_queue_refuses_at_once_and_a_request_whose_caller_left_is_not_applied() {
        let dir = tempfile::tempdir().unwrap();
        let indexer = Indexer::open(Config {
            queue_limit: 3,
            rate_limits: RateLimits {
                jobs_per_second: 1,
                job_burst: 1,
                ..RateLimits::default()
            },
            ..Config::local(dir.path())
        })
        .unwrap();
        let state = &indexer.state;
        let one = Amount::from_tokens(1);
        let who = |b: u8| Address::with_last_byte(b);
        // Hold the state, as a long group would, while requests queue.
        let held = state.core();
        let waiting: Vec<_> = (1..=2u8)
            .map(|b| {
                state
                    .enqueue(
                        move |core, now, batch| core.faucet(who(b), one, now, batch),
                        true,
                    )
                    .unwrap()
            })
            .collect();
        // The third caller gives up before its turn.
        let gone = state
            .enqueue(
                move |core, now, batch| core.faucet(who(3), one, now, batch),
                true,
            )
            .unwrap();
        drop(gone);
        // The queue is full: refused at once, with nothing queued.
        let began = std::time::Instant::now();
        let refused = state
            .enqueue(
                move |core, now, batch| core.faucet(who(4), one, now, batch),
                true,
            )
            .unwrap_err();
        assert!(began.elapsed() < Duration::from_millis(100));
        assert_eq!(refused.code, ErrorCode::Overloaded);
        assert_eq!(
            status_of(refused.code),
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        );
        let response = axum::response::IntoResponse::into_response(refused);
        assert_eq!(response.headers()["retry-after"], "1");
        // Refused for the full queue before its rate is counted: its one job a second
        // is still there afterwards.
        for _ in 0..3 {
            let refused = state.limit(limits::Limited::Job, who(5)).unwrap_err();
            assert_eq!(refused.code, ErrorCode::Overloaded);
        }
        // The indexer's own steps are never refused for a full queue.
        let step = state
            .enqueue(|_, _, _| Ok::<_, Failure>(()), false)
            .unwrap();
        drop(held);
        for answer in waiting {
            answer.blocking_recv().unwrap().unwrap();
        }
        step.blocking_recv().unwrap().unwrap();
        let balances = state.read(|c| {
            (1..=4u8)
                .map(|b| c.ledger().balance(&who(b)))
                .collect::<Vec<_>>()
        });
        assert_eq!(balances, [one, one, Amount::ZERO, Amount::ZERO]);
        // Places are given back: the queue takes requests again.
        state
            .mutate_now(move |core, now, batch| core.faucet(who(4), one, now, batch))
            .unwrap();
        assert_eq!(state.read(|c| c.ledger().balance(&who(4))), one);
        state.limit(limits::Limited::Job, who(5)).unwrap();
        let limited = state.limit(limits::Limited::Job, who(5)).unwrap_err();
        assert_eq!(limited.code, ErrorCode::RateLimited);
    }

    #[test]
    fn a_panicking_operation_stops_changes_and_leaves_only_what_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let someone = alloy_primitives::Address::with_last_byte(7);
        let five = Amount::from_tokens(5);
        {
            let indexer = Indexer::open(Config::local(dir.path())).unwrap();
            let state = &indexer.state;
            state
                .mutate_now(move |core, now, batch| core.faucet(someone, five, now, batch))
                .unwrap();
            let failed = state
                .mutate_now(move |core, now, batch| -> Result<(), Failure> {
                    core.faucet(someone, five, now, batch)?;
                    panic!("a bug, after the ledger moved");
                })
                .unwrap_err();
            assert_eq!(failed.code, ErrorCode::Internal);
            // Memory shows what is on disk: one payment, not two.
            assert_eq!(state.read(|c| c.ledger().balance(&someone)), five);
            // And nothing changes until a restart.
            let refused = state
                .mutate_now(move |core, now, batch| core.faucet(someone, five, now, batch))
                .unwrap_err();
            assert!(
                refused.message.contains("stopped taking changes"),
                "{refused}"
            );
            assert_eq!(state.read(|c| c.ledger().balance(&someone)), five);
        }
        let restarted = Indexer::open(Config::local(dir.path())).unwrap();
        assert_eq!(restarted.state.read(|c| c.ledger().balance(&someone)), five);
        restarted
            .state
            .mutate_now(move |core, now, batch| core.faucet(someone, five, now, batch))
            .unwrap();
    }
}

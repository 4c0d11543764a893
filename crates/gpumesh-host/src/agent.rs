//! The agent's loops: register, heartbeat, poll for work, run leases, settle usage.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::FutureExt;
use gpumesh_client::{Client, ClientError};
use gpumesh_identity::Wallet;
use gpumesh_types::{
    Amount, Assignment, ErrorCode, GpuOffer, Heartbeat, HostRegistered, LeaseFinish, LeaseId,
    Location, LogAppend, LogChunk, LogStream, RegisterHost, TxKind, UsageRecord,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::runtime::{Output, Runtime, Workload, WorkloadSpec};

/// How long one work poll waits at the indexer.
const POLL_WAIT: Duration = Duration::from_secs(25);
/// Output posted in one request at most.
const MAX_LOG_POST_BYTES: usize = 256 * 1024;

/// What a host offers and how it runs work.
#[derive(Debug, Clone)]
pub struct HostConfig {
    pub indexer_url: String,
    /// The certificates to trust for an `https://` indexer instead of the system's roots.
    pub indexer_ca: Vec<gpumesh_client::Certificate>,
    pub wallet: Wallet,
    pub name: String,
    pub location: Location,
    pub price_per_gpu_hour: Amount,
    pub gpus: Vec<GpuOffer>,
    /// NVIDIA UUIDs of the GPUs in registration order (one per GPU), empty when simulated.
    pub gpu_uuids: Vec<String>,
    pub runtime: Arc<dyn Runtime>,
    /// Memory limit per leased GPU, in bytes.
    pub memory_per_gpu: Option<i64>,
    /// CPU limit per leased GPU, in billionths of a CPU.
    pub nano_cpus_per_gpu: Option<i64>,
    /// Stake what each GPU's requirement still lacks, from the host's balance, at start.
    pub auto_stake: bool,
    /// The challenge endpoint checkers probe; without it the host cannot pass checks.
    pub challenge: Option<ChallengeConfig>,
    /// The address buyers reach this host's published ports at (a name or an IP).
    pub public_address: String,
    /// The local address ports are published on (0.0.0.0: every interface).
    pub publish_ip: std::net::IpAddr,
    /// What usage the agent claims: what it metered, always, on a real host.
    pub claims: UsageClaims,
    /// Workloads run as their image's own user (root in most images) instead of an
    /// unprivileged one: for hosts that accept root images.
    pub image_user: bool,
}

/// What usage an agent claims. Anything but `Metered` exists only to show that the
/// network refuses it, in demos and tests; the command line offers only `Metered`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum UsageClaims {
    /// What ran since the indexer accepted the start, per GPU.
    #[default]
    Metered,
    /// The lease's whole escrow, whatever ran: an over-billing host.
    WholeEscrow,
}

/// Where the agent answers checkers, and how it computes capacity proofs.
#[derive(Debug, Clone)]
pub struct ChallengeConfig {
    pub listen: std::net::SocketAddr,
    /// The URL checkers use; `http://` and the bound address when `None`.
    pub advertise: Option<String>,
    pub prover: Arc<dyn crate::challenge::Prover>,
}

#[derive(Debug)]
struct Live {
    gpus: u16,
    max_gpu_ms: u64,
    /// When the indexer accepted the start: billable time runs from then.
    started: Option<Instant>,
    /// Set when the workload ended: usage no longer grows.
    frozen_gpu_ms: Option<u64>,
    settled_gpu_ms: u64,
    stop: CancellationToken,
}

impl Live {
    /// The usage claimed for the lease now.
    fn claim(&self, claims: UsageClaims) -> u64 {
        match claims {
            UsageClaims::Metered => self.gpu_ms(),
            UsageClaims::WholeEscrow => self.max_gpu_ms,
        }
    }

    fn gpu_ms(&self) -> u64 {
        if let Some(frozen) = self.frozen_gpu_ms {
            return frozen;
        }
        let elapsed = self.started.map_or(0, |s| s.elapsed().as_millis() as u64);
        (elapsed.saturating_mul(self.gpus as u64)).min(self.max_gpu_ms)
    }
}

struct Agent {
    client: Client,
    config: HostConfig,
    leases: Mutex<HashMap<LeaseId, Live>>,
    /// The leases whose workloads run now: what the challenge endpoint states to checkers.
    running: crate::challenge::Running,
    /// The network's chain id, which labels the workloads' containers.
    chain_id: u64,
    challenge_url: Option<String>,
}

/// Runs the agent until `shutdown` is cancelled; then stops running leases and reports them.
pub async fn run(config: HostConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let client = Client::with_ca(
        &config.indexer_url,
        Some(config.wallet.clone()),
        config.indexer_ca.clone(),
    );
    // Every task the agent starts lives in a JoinSet, so that dropping `run` (a crash, in
    // tests) ends them all, as the death of the process would.
    let mut background = tokio::task::JoinSet::new();
    let mut challenge_url = None;
    let running = crate::challenge::Running::default();
    let chain_id = loop {
        match client.network_chain_id().await {
            Ok(id) => break id,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the network's chain id; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    // The rule capacity proofs are sized by: the endpoint refuses only what it would
    // never ask of this host's GPUs.
    let sizing = loop {
        match client.proof_sizing().await {
            Ok(sizing) => break sizing,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the network's proof sizing; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    // What an earlier run of this agent left on the engine. Those running are stated
    // running to checkers from the first moment: they are adopted below (or removed, and
    // then no longer stated).
    let found = match config
        .runtime
        .found(chain_id, config.wallet.address())
        .await
    {
        Ok(found) => found,
        Err(e) => {
            tracing::warn!(error = %e, "could not look for workloads an earlier run left");
            Vec::new()
        }
    };
    running
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .extend(found.iter().filter(|f| f.running).map(|f| f.lease));
    // Stops the challenge endpoint however `run` ends, a crash (the future dropped) too:
    // connections a checker still holds open must not outlive the agent.
    let challenge_stop = shutdown.child_token();
    let _challenge_guard = challenge_stop.clone().drop_guard();
    if let Some(challenge) = &config.challenge {
        let listener = tokio::net::TcpListener::bind(challenge.listen)
            .await
            .with_context(|| format!("failed to listen for checkers on {}", challenge.listen))?;
        let bound = listener.local_addr()?;
        challenge_url = Some(
            challenge
                .advertise
                .clone()
                .unwrap_or_else(|| format!("http://{bound}")),
        );
        // One entry per GPU, in the order the registration numbers them.
        let gpus = config
            .gpus
            .iter()
            .flat_map(|g| std::iter::repeat_n((g.model, g.simulated), usize::from(g.count)))
            .collect();
        tracing::info!(%bound, prover = %challenge.prover.describe(), "answering checkers");
        let licences = crate::challenge::Licences::default();
        background.spawn(refresh_licences(
            Client::with_ca(&config.indexer_url, None, config.indexer_ca.clone()),
            licences.clone(),
            challenge_stop.clone(),
        ));
        background.spawn(
            crate::challenge::serve(
                listener,
                crate::challenge::Answerer {
                    wallet: config.wallet.clone(),
                    chain_id,
                    gpus,
                    sizing,
                    prover: challenge.prover.clone(),
                    licences,
                    running: running.clone(),
                },
                challenge_stop.clone(),
            )
            .map(|r| {
                if let Err(e) = r {
                    tracing::error!(error = %e, "the challenge endpoint stopped")
                }
            }),
        );
    }
    let agent = Arc::new(Agent {
        client,
        config,
        leases: Mutex::new(HashMap::new()),
        running,
        chain_id,
        challenge_url,
    });
    let Some(registered) = agent.register(&shutdown).await? else {
        return Ok(());
    };
    tracing::info!(
        host = %registered.host,
        containers = registered.containers,
        runtime = %agent.config.runtime.describe(),
        "registered with the indexer"
    );
    if agent.config.auto_stake
        && let Err(e) = agent.stake_missing().await
    {
        tracing::warn!(error = %e, "could not stake; containers wait for their stake");
    }
    background.spawn(
        agent
            .clone()
            .heartbeat_loop(registered.clone(), shutdown.clone()),
    );
    let settle_every = Duration::from_millis(registered.settle_interval_ms);
    background.spawn(agent.clone().settle_loop(settle_every, shutdown.clone()));
    let mut runners = tokio::task::JoinSet::new();
    // What an earlier run of this agent left on the engine: adopted if its lease still
    // runs here, removed otherwise, before any new work.
    let untouched = agent.adopt_or_remove(found, &mut runners).await;
    let mut first_poll = true;
    loop {
        let work = tokio::select! {
            _ = shutdown.cancelled() => break,
            work = agent.client.work(POLL_WAIT) => work,
        };
        match work {
            Ok(work) => {
                // First what the network ended while this host was away (or thought
                // lost): its workloads stop before new work starts.
                if let Some(live) = &work.live {
                    agent.stop_not_live(live);
                    // Then what an earlier run left running that this one did not find.
                    if std::mem::take(&mut first_poll) {
                        agent.end_lost(live, &work.start, &untouched).await;
                    }
                }
                for assignment in work.start {
                    if let Some(stop) = agent.admit(&assignment) {
                        runners.spawn(agent.clone().run_lease(assignment, stop));
                    }
                }
                for id in work.stop {
                    if let Some(live) = agent.leases.lock().expect("lease table lock").get(&id) {
                        live.stop.cancel();
                    }
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "work poll failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
        while runners.try_join_next().is_some() {}
    }
    for live in agent.leases.lock().expect("lease table lock").values() {
        live.stop.cancel();
    }
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        while runners.join_next().await.is_some() {}
    })
    .await;
    background.abort_all();
    Ok(())
}

impl Agent {
    /// Stakes, for each GPU, what its requirement (K × the network's coefficient) lacks.
    async fn stake_missing(&self) -> anyhow::Result<()> {
        let info = self.client.info().await?;
        let account = self.client.account(self.config.wallet.address()).await?;
        let mut balance = account.balance;
        let mut stakes = Vec::new();
        let models = self
            .config
            .gpus
            .iter()
            .flat_map(|o| std::iter::repeat_n(o.model, o.count as usize));
        for (index, model) in models.enumerate() {
            let index = index as u16;
            let need = Amount(info.staking_coefficient.0 * model.spec().k_factor as u128 / 100);
            let bonded = account
                .stakes
                .iter()
                .find(|s| s.index == index)
                .map_or(Amount::ZERO, |s| s.bonded);
            let Some(missing) = need.checked_sub(bonded).filter(|m| m.0 > 0) else {
                continue;
            };
            if balance < missing {
                tracing::warn!(index, needs = %missing.tokens(), has = %balance.tokens(), "not enough balance to stake this GPU");
                continue;
            }
            balance = Amount(balance.0 - missing.0);
            stakes.push((index, missing));
        }
        if !stakes.is_empty() {
            let total: u128 = stakes.iter().map(|s| s.1.0).sum();
            let count = stakes.len();
            self.client.send_tx(TxKind::StakeMany { stakes }).await?;
            tracing::info!(gpus = count, staked = %Amount(total).tokens(), "staked");
        }
        Ok(())
    }

    /// Registers, retrying while the indexer cannot be reached. `None` when shut down first.
    async fn register(
        &self,
        shutdown: &CancellationToken,
    ) -> anyhow::Result<Option<HostRegistered>> {
        let images = match self.config.runtime.images().await {
            Ok(images) => images,
            Err(e) => {
                tracing::warn!(error = %e, "could not list local images");
                Vec::new()
            }
        };
        let request = RegisterHost {
            name: self.config.name.clone(),
            location: self.config.location,
            price_per_gpu_hour: self.config.price_per_gpu_hour,
            gpus: self.config.gpus.clone(),
            runtime: self.config.runtime.kind(),
            images,
            challenge_url: self.challenge_url.clone(),
        };
        let mut delay = Duration::from_millis(200);
        loop {
            match self.client.register_host(&request).await {
                Ok(registered) => return Ok(Some(registered)),
                Err(ClientError::Api { error, .. }) => {
                    bail!("the indexer refused the registration: {}", error.message)
                }
                Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    async fn heartbeat_loop(
        self: Arc<Self>,
        registered: HostRegistered,
        shutdown: CancellationToken,
    ) {
        let mut interval =
            tokio::time::interval(Duration::from_millis(registered.heartbeat_interval_ms));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reported: Option<Vec<String>> = None;
        let mut last_image_check = Instant::now() - Duration::from_secs(3600);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let mut beat = Heartbeat::default();
            if last_image_check.elapsed() > Duration::from_secs(30) {
                last_image_check = Instant::now();
                if let Ok(images) = self.config.runtime.images().await
                    && reported.as_ref() != Some(&images)
                {
                    beat.images = Some(images.clone());
                    reported = Some(images);
                }
            }
            match self.client.heartbeat(&beat).await {
                Ok(()) => {}
                Err(e) if e.code() == Some(gpumesh_types::ErrorCode::UnknownHost) => {
                    tracing::warn!("the indexer does not know this host; registering again");
                    if let Err(e) = self.register(&shutdown).await {
                        tracing::error!(error = %e, "registering again failed");
                    }
                }
                Err(e) => {
                    reported = None;
                    tracing::warn!(error = %e, "heartbeat failed");
                }
            }
        }
    }

    /// Settles the usage of running leases, so that none goes unpaid for longer than the interval.
    async fn settle_loop(self: Arc<Self>, every: Duration, shutdown: CancellationToken) {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = interval.tick() => {}
            }
            let records: Vec<UsageRecord> = {
                let leases = self.leases.lock().expect("lease table lock");
                leases
                    .iter()
                    .filter(|(_, l)| l.frozen_gpu_ms.is_none() && l.started.is_some())
                    .map(|(id, l)| UsageRecord {
                        lease: *id,
                        gpu_ms: l.claim(self.config.claims),
                        is_final: false,
                    })
                    .filter(|r| leases[&r.lease].settled_gpu_ms < r.gpu_ms)
                    .collect()
            };
            if records.is_empty() {
                continue;
            }
            match self
                .client
                .send_tx(TxKind::SettleUsage {
                    records: records.clone(),
                })
                .await
            {
                Ok(_) => {
                    let mut leases = self.leases.lock().expect("lease table lock");
                    for r in records {
                        if let Some(l) = leases.get_mut(&r.lease) {
                            l.settled_gpu_ms = l.settled_gpu_ms.max(r.gpu_ms);
                        }
                    }
                }
                Err(e @ ClientError::Api { .. }) => {
                    // A lease may have ended meanwhile (its final record settles it), or
                    // the network ended it (cancelled, overdue, its host thought lost):
                    // one ended lease must not hold up the others' pay, and a workload
                    // nobody pays for stops.
                    tracing::warn!(error = %e, "usage settlement refused; checking the leases");
                    let ids: Vec<LeaseId> = records.iter().map(|r| r.lease).collect();
                    self.stop_ended(ids).await;
                }
                Err(e) => tracing::warn!(error = %e, "usage settlement failed"),
            }
        }
    }

    /// Reports a start, retrying while the indexer is away: a lease whose start is never
    /// heard of fails at the start timeout, however well its workload runs.
    async fn report_started(
        &self,
        id: LeaseId,
        endpoints: &[gpumesh_types::Endpoint],
    ) -> Result<(), ClientError> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self
                .client
                .started(id, endpoints, self.config.image_user)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e @ ClientError::Api { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(lease = %id, error = %e, "reporting the start failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Stops the workloads of these leases that the network has ended.
    async fn stop_ended(&self, ids: Vec<LeaseId>) {
        for id in ids {
            let ended = match self.client.lease(id).await {
                Ok(view) => view.state.is_terminal(),
                Err(ClientError::Api { error, .. }) => error.code == ErrorCode::UnknownLease,
                Err(_) => false,
            };
            if ended && let Some(live) = self.leases.lock().expect("lease table lock").get(&id) {
                tracing::warn!(lease = %id, "the network ended this lease; stopping its workload");
                live.stop.cancel();
            }
        }
    }

    /// Stops the workloads of leases this agent runs that the network no longer holds
    /// live here (ended while the host was away, or thought lost).
    fn stop_not_live(&self, live: &[LeaseId]) {
        let live: std::collections::HashSet<&LeaseId> = live.iter().collect();
        for (id, l) in self.leases.lock().expect("lease table lock").iter() {
            if !live.contains(id) && l.frozen_gpu_ms.is_none() && !l.stop.is_cancelled() {
                tracing::warn!(lease = %id, "the network no longer runs this lease here; stopping its workload");
                l.stop.cancel();
            }
        }
    }

    /// What the engine holds for this network and host from an earlier run of the agent:
    /// a workload whose lease still runs here is adopted (its output, health checks and
    /// metering taken up again, the workload itself untouched); every other is stopped and
    /// removed. Leases still starting are removed too: the network assigns them again,
    /// and they start afresh.
    /// Returns the leases of those it could not judge (their lease unreadable) and left
    /// as they are.
    async fn adopt_or_remove(
        self: &Arc<Self>,
        found: Vec<crate::runtime::Found>,
        runners: &mut tokio::task::JoinSet<()>,
    ) -> Vec<LeaseId> {
        let me = self.config.wallet.address();
        let mut untouched = Vec::new();
        for f in found {
            let lease = match self.client.lease(f.lease).await {
                Ok(view) => Some(view),
                Err(ClientError::Api { error, .. }) if error.code == ErrorCode::UnknownLease => {
                    None
                }
                Err(e) => {
                    tracing::warn!(lease = %f.lease, error = %e, "could not read the lease of a workload found at start; left as it is");
                    untouched.push(f.lease);
                    continue;
                }
            };
            // A workload that ended while no agent ran is adopted too: its end (and exit
            // code) is reported, billed what was settled.
            let adoptable = lease.as_ref().filter(|v| {
                v.host == me
                    && v.state == gpumesh_types::LeaseState::Running
                    && v.settlement
                        .as_ref()
                        .is_some_and(|s| s.started_ms.is_some())
            });
            match adoptable {
                Some(view) => {
                    let view = view.clone();
                    match self.adopt(&f, &view).await {
                        Ok(run) => {
                            tracing::info!(lease = %f.lease, container = %f.id, "adopted a running workload of an earlier run");
                            runners.spawn(run);
                        }
                        Err(e) => {
                            tracing::warn!(lease = %f.lease, error = %e, "could not adopt a workload; removing it");
                            self.remove_found(&f).await;
                        }
                    }
                }
                None => self.remove_found(&f).await,
            }
        }
        untouched
    }

    /// Reports the end of the leases the network holds running here whose workloads this
    /// run of the agent neither found nor started (lost with the machine, or removed by
    /// hand): failed, billed what was settled, the rest refunded.
    async fn end_lost(&self, live: &[LeaseId], starting: &[Assignment], untouched: &[LeaseId]) {
        let lost: Vec<LeaseId> = {
            let leases = self.leases.lock().expect("lease table lock");
            live.iter()
                .filter(|id| {
                    !leases.contains_key(id)
                        && !untouched.contains(id)
                        && !starting.iter().any(|a| a.lease == **id)
                })
                .copied()
                .collect()
        };
        for id in lost {
            let settled = match self.client.lease(id).await {
                Ok(view) if view.state == gpumesh_types::LeaseState::Running => {
                    view.settlement.map_or(0, |s| s.gpu_ms)
                }
                _ => continue,
            };
            tracing::warn!(lease = %id, "this lease's workload was lost before the agent started; reporting its end");
            self.finish(
                id,
                settled,
                None,
                Some("the host's agent restarted and its workload was gone".into()),
            )
            .await;
        }
    }

    async fn remove_found(&self, f: &crate::runtime::Found) {
        self.running_now(f.lease, false);
        match self.config.runtime.remove(f).await {
            Ok(()) => {
                tracing::warn!(lease = %f.lease, container = %f.id, "removed a workload an earlier run left, whose lease is not running here")
            }
            Err(e) => {
                tracing::error!(lease = %f.lease, container = %f.id, error = %e, "could not remove a workload an earlier run left")
            }
        }
    }

    /// Takes a found workload of a running lease on; returns the task that runs it to its
    /// end.
    async fn adopt(
        self: &Arc<Self>,
        f: &crate::runtime::Found,
        view: &gpumesh_types::LeaseView,
    ) -> anyhow::Result<impl std::future::Future<Output = ()> + Send + 'static> {
        let id = view.id;
        let settlement = view
            .settlement
            .as_ref()
            .context("the lease has no escrow")?;
        let started_ms = settlement.started_ms.context("the lease has not started")?;
        let stop = CancellationToken::new();
        // Billable time runs from the ledger's start, measured on this clock.
        let since = now_ms().saturating_sub(started_ms);
        let began = Instant::now()
            .checked_sub(Duration::from_millis(since))
            .unwrap_or_else(Instant::now);
        {
            let mut leases = self.leases.lock().expect("lease table lock");
            if leases.contains_key(&id) {
                anyhow::bail!("lease {id} is already running here");
            }
            leases.insert(
                id,
                Live {
                    gpus: view.gpu_count,
                    max_gpu_ms: view
                        .max_duration_ms
                        .saturating_mul(u64::from(view.gpu_count)),
                    started: Some(began),
                    // Ended while no agent watched: when is unknown here, so only what
                    // was settled is claimed.
                    frozen_gpu_ms: (!f.running).then_some(settlement.gpu_ms),
                    settled_gpu_ms: settlement.gpu_ms,
                    stop: stop.clone(),
                },
            );
        }
        let (output, outputs) = mpsc::channel::<Output>(1024);
        let workload = match self.config.runtime.adopt(f, output.clone()).await {
            Ok(workload) => workload,
            Err(e) => {
                self.leases.lock().expect("lease table lock").remove(&id);
                return Err(e);
            }
        };
        let health = view.health_check.clone().and_then(|check| {
            let port = check
                .port
                .or_else(|| f.ports.first().map(|p| p.container))?;
            let host_port = f.ports.iter().find(|p| p.container == port)?.host;
            Some((check, self.probe_address(host_port)))
        });
        let max = Duration::from_millis(view.max_duration_ms);
        let agent = self.clone();
        Ok(async move {
            let shipper = tokio::spawn(ship_logs(agent.clone(), id, outputs));
            agent.running_now(id, true);
            let watcher = health.map(|(check, target)| {
                let (agent, stop) = (agent.clone(), stop.clone());
                tokio::spawn(async move {
                    crate::health::watch(&agent.client, id, check, target, began, stop).await
                })
            });
            let mut workload = workload;
            let (exit_code, error) = agent
                .supervise(id, workload.as_mut(), began, max, &stop, &output)
                .await;
            if let Some(watcher) = watcher {
                watcher.abort();
            }
            agent.end(id, exit_code, error, output, shipper).await;
        })
    }

    /// Takes an assignment on, unless it is already running. Returns its stop token.
    fn admit(&self, a: &Assignment) -> Option<CancellationToken> {
        let mut leases = self.leases.lock().expect("lease table lock");
        if leases.contains_key(&a.lease) {
            return None;
        }
        let stop = CancellationToken::new();
        let gpus = a.gpu_indices.len() as u16;
        leases.insert(
            a.lease,
            Live {
                gpus,
                max_gpu_ms: a.max_duration_ms.saturating_mul(gpus as u64),
                started: None,
                frozen_gpu_ms: None,
                settled_gpu_ms: 0,
                stop: stop.clone(),
            },
        );
        Some(stop)
    }

    fn spec(&self, a: &Assignment, ports: Vec<(gpumesh_types::PortSpec, u16)>) -> WorkloadSpec {
        let gpu_uuids: Vec<String> = a
            .gpu_indices
            .iter()
            .filter_map(|&i| self.config.gpu_uuids.get(i as usize).cloned())
            .collect();
        let simulated = self.config.gpus.iter().any(|g| g.simulated);
        let n = a.gpu_indices.len() as i64;
        // The buyer's own variables first, so that the agent's below win should a name
        // repeat (the registry refuses the names the agent sets, too).
        let mut env: Vec<(String, String)> = a
            .env
            .iter()
            .map(|v| (v.name.clone(), v.value.clone()))
            .collect();
        env.extend([
            ("GPUMESH_LEASE_ID".to_string(), a.lease.to_string()),
            ("GPUMESH_GPU_MODEL".to_string(), a.gpu.to_string()),
            (
                "GPUMESH_GPU_COUNT".to_string(),
                a.gpu_indices.len().to_string(),
            ),
            (
                "GPUMESH_GPU_INDICES".to_string(),
                a.gpu_indices
                    .iter()
                    .map(u16::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            (
                "GPUMESH_SIMULATED".to_string(),
                if simulated { "1" } else { "0" }.to_string(),
            ),
        ]);
        if !gpu_uuids.is_empty() {
            env.push(("NVIDIA_VISIBLE_DEVICES".to_string(), gpu_uuids.join(",")));
        }
        let uuid_label = gpu_uuids.join(",");
        WorkloadSpec {
            lease: a.lease,
            image: a.image.clone(),
            command: a.command.clone(),
            env,
            gpu_uuids,
            memory_bytes: self.config.memory_per_gpu.map(|m| m * n),
            nano_cpus: self.config.nano_cpus_per_gpu.map(|c| c * n),
            ports,
            publish_ip: self.config.publish_ip,
            as_image_user: self.config.image_user,
            labels: vec![
                ("gpumesh.network".to_string(), self.chain_id.to_string()),
                (
                    "gpumesh.host".to_string(),
                    self.config.wallet.address().to_string(),
                ),
                (
                    "gpumesh.gpus".to_string(),
                    a.gpu_indices
                        .iter()
                        .map(u16::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                ),
                // The devices themselves, where there are real ones.
                ("gpumesh.gpu-uuids".to_string(), uuid_label),
            ],
        }
    }

    /// Where buyers reach each published port.
    fn endpoints(&self, ports: &[(gpumesh_types::PortSpec, u16)]) -> Vec<gpumesh_types::Endpoint> {
        let host = &self.config.public_address;
        ports
            .iter()
            .map(|&(port, host_port)| gpumesh_types::Endpoint {
                port,
                address: if host.contains(':') {
                    format!("[{host}]:{host_port}")
                } else {
                    format!("{host}:{host_port}")
                },
            })
            .collect()
    }

    /// Where the agent itself probes a published port: the publish address, or loopback
    /// when ports are published on every interface.
    fn probe_address(&self, host_port: u16) -> std::net::SocketAddr {
        let ip = if self.config.publish_ip.is_unspecified() {
            std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)
        } else {
            self.config.publish_ip
        };
        std::net::SocketAddr::new(ip, host_port)
    }

    /// A lease's maximum duration as the indexer knows it now: a deployment's replica is
    /// topped up period by period, which lengthens it.
    async fn current_max_duration(&self, id: LeaseId) -> Option<u64> {
        match self.client.lease(id).await {
            Ok(view) if !view.state.is_terminal() => Some(view.max_duration_ms),
            _ => None,
        }
    }

    async fn run_lease(self: Arc<Self>, a: Assignment, stop: CancellationToken) {
        let id = a.lease;
        let (output, outputs) = mpsc::channel::<Output>(1024);
        let shipper = tokio::spawn(ship_logs(self.clone(), id, outputs));
        let max = Duration::from_millis(a.max_duration_ms);
        let ports = match crate::runtime::free_host_ports(self.config.publish_ip, &a.ports) {
            Ok(ports) => ports,
            Err(e) => {
                tracing::warn!(lease = %id, error = %e, "no free host ports");
                Vec::new()
            }
        };
        let started = if ports.len() != a.ports.len() {
            Err(anyhow::anyhow!(
                "no free host ports on {} to publish {} port(s)",
                self.config.publish_ip,
                a.ports.len()
            ))
        } else {
            self.config
                .runtime
                .start(self.spec(&a, ports.clone()), output.clone())
                .await
        };
        let endpoints = self.endpoints(&ports);
        let (exit_code, error) = match started {
            Err(e) => {
                let _ = output
                    .send((
                        LogStream::System,
                        format!("[gpumesh] the workload could not start: {e:#}\n"),
                    ))
                    .await;
                (None, Some(format!("the workload could not start: {e:#}")))
            }
            Ok(mut workload) => {
                let began = Instant::now();
                self.running_now(id, true);
                // In the background, so that the workload's own end, its maximum duration
                // and a stop still count while the indexer is away.
                let reporter = {
                    let (agent, stop) = (self.clone(), stop.clone());
                    let endpoints = endpoints.clone();
                    let health = a.health.clone().map(|check| {
                        let target = check
                            .port
                            .and_then(|p| {
                                ports.iter().find(|(s, _)| {
                                    s.port == p && s.protocol == gpumesh_types::Protocol::Tcp
                                })
                            })
                            .or_else(|| {
                                ports
                                    .iter()
                                    .find(|(s, _)| s.protocol == gpumesh_types::Protocol::Tcp)
                            })
                            .map(|&(_, host_port)| self.probe_address(host_port));
                        (check, target)
                    });
                    tokio::spawn(async move {
                        let reported = tokio::select! {
                            reported = agent.report_started(id, &endpoints) => reported,
                            _ = stop.cancelled() => return,
                        };
                        // Billable time runs from the indexer's acceptance of the start,
                        // which the ledger records: metering from the answer keeps every
                        // claim within what the protocol observed.
                        if reported.is_ok()
                            && let Some(l) =
                                agent.leases.lock().expect("lease table lock").get_mut(&id)
                        {
                            l.started = Some(Instant::now());
                        }
                        if reported.is_ok()
                            && let Some((check, Some(target))) = health
                        {
                            crate::health::watch(&agent.client, id, check, target, began, stop)
                                .await;
                            return;
                        }
                        match reported {
                            Ok(()) => {}
                            // Refused: the lease ended before its start counted (the buyer
                            // cancelled, or the start came after its timeout). Nobody pays
                            // for it.
                            Err(ClientError::Api { error, .. })
                                if matches!(
                                    error.code,
                                    ErrorCode::InvalidLeaseState | ErrorCode::UnknownLease
                                ) =>
                            {
                                tracing::warn!(lease = %id, error = %error.message, "the start was refused; stopping the workload");
                                stop.cancel();
                            }
                            Err(e) => {
                                tracing::warn!(lease = %id, error = %e, "failed to report the start")
                            }
                        }
                    })
                };
                let ended = self
                    .supervise(id, workload.as_mut(), began, max, &stop, &output)
                    .await;
                // The end is reported next; a start still unreported is moot.
                reporter.abort();
                ended
            }
        };
        self.end(id, exit_code, error, output, shipper).await;
    }

    /// Watches a started workload until it ends, its lease's maximum duration passes (and
    /// no top-up lengthened it), or the lease is stopped; then kills it if it still runs.
    /// Returns its exit code or why there is none.
    async fn supervise(
        &self,
        id: LeaseId,
        workload: &mut dyn Workload,
        began: Instant,
        mut max: Duration,
        stop: &CancellationToken,
        output: &mpsc::Sender<Output>,
    ) -> (Option<i64>, Option<String>) {
        let stopped = loop {
            let at_max = tokio::time::sleep_until((began + max).into());
            tokio::select! {
                code = workload.wait() => break Some(code),
                _ = at_max => {}
                _ = stop.cancelled() => break None,
            };
            // At the maximum duration: run on only if the escrow was topped up.
            match self.current_max_duration(id).await {
                Some(now_max) if now_max > max.as_millis() as u64 => {
                    max = Duration::from_millis(now_max);
                    if let Some(l) = self.leases.lock().expect("lease table lock").get_mut(&id) {
                        l.max_gpu_ms = now_max.saturating_mul(l.gpus as u64);
                    }
                    tracing::info!(lease = %id, max_duration_ms = now_max, "the escrow was topped up; running on");
                }
                _ => break None,
            }
        };
        match stopped {
            Some(Ok(code)) => (Some(code), None),
            Some(Err(e)) => (None, Some(format!("lost track of the workload: {e:#}"))),
            None => {
                let why = if began.elapsed() >= max {
                    format!(
                        "[gpumesh] stopped at the lease's maximum duration of {} s\n",
                        max.as_secs()
                    )
                } else {
                    "[gpumesh] stopped: the lease was cancelled\n".to_string()
                };
                let _ = output.send((LogStream::System, why)).await;
                if let Err(e) = workload.kill().await {
                    tracing::warn!(lease = %id, error = %e, "kill failed");
                }
                match workload.wait().await {
                    Ok(code) => (Some(code), None),
                    Err(e) => (None, Some(format!("lost track of the workload: {e:#}"))),
                }
            }
        }
    }

    /// Reports a lease's end with its final usage (frozen now), once its output is
    /// shipped, and forgets it.
    async fn end(
        &self,
        id: LeaseId,
        exit_code: Option<i64>,
        error: Option<String>,
        output: mpsc::Sender<Output>,
        shipper: tokio::task::JoinHandle<()>,
    ) {
        let gpu_ms = {
            let mut leases = self.leases.lock().expect("lease table lock");
            let live = leases
                .get_mut(&id)
                .expect("admitted leases stay until they finish");
            let gpu_ms = live.gpu_ms();
            live.frozen_gpu_ms = Some(gpu_ms);
            live.claim(self.config.claims)
        };
        drop(output);
        let _ = shipper.await;
        self.finish(id, gpu_ms, exit_code, error).await;
        // Stated running to checkers until its end is reported (its usage frozen since
        // the workload stopped): a check between the two must not fail an honest lease.
        self.running_now(id, false);
        self.leases.lock().expect("lease table lock").remove(&id);
    }

    /// Marks a lease's workload as running here or not, for checkers' delivery checks.
    fn running_now(&self, id: LeaseId, running: bool) {
        let mut set = self.running.write().unwrap_or_else(|p| p.into_inner());
        if running {
            set.insert(id);
        } else {
            set.remove(&id);
        }
    }

    /// Reports the end with the final usage record, retrying while the indexer is away.
    async fn finish(
        &self,
        id: LeaseId,
        gpu_ms: u64,
        exit_code: Option<i64>,
        error: Option<String>,
    ) {
        let record = UsageRecord {
            lease: id,
            gpu_ms,
            is_final: true,
        };
        let mut delay = Duration::from_millis(200);
        for _ in 0..20 {
            let result = self
                .client
                .sign_next_tx(
                    TxKind::SettleUsage {
                        records: vec![record],
                    },
                    async |usage| {
                        self.client
                            .finish(
                                id,
                                &LeaseFinish {
                                    exit_code,
                                    error: error.clone(),
                                    usage,
                                },
                            )
                            .await
                    },
                )
                .await;
            match result {
                Ok(lease) => {
                    tracing::info!(lease = %id, state = ?lease.state, exit_code, gpu_ms, "lease finished");
                    return;
                }
                // Checkers have not yet decided the last periods of the lease's delivery:
                // the bound moves on as they do.
                Err(ClientError::Api { error, .. })
                    if error.code == ErrorCode::UsageExceedsDelivered =>
                {
                    tracing::info!(lease = %id, error = %error.message, "the end waits for the checkers' last verdicts; retrying");
                }
                Err(ClientError::Api { error, .. }) => {
                    tracing::warn!(lease = %id, error = %error.message, "the indexer refused the lease's end");
                    return;
                }
                Err(e) => {
                    tracing::warn!(lease = %id, error = %e, "reporting the lease's end failed; retrying")
                }
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        tracing::error!(lease = %id, "gave up reporting the lease's end");
    }
}

/// Milliseconds since the Unix epoch on this machine's clock.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Keeps the network's checker licences, which the challenge endpoint answers proofs for,
/// fresh: at start, then every 30 s (licences change only with the genesis today, but a
/// ban or a new network must not need an agent restart).
async fn refresh_licences(
    client: Client,
    licences: crate::challenge::Licences,
    stop: CancellationToken,
) {
    loop {
        match client.checkers().await {
            Ok(list) => {
                let fresh = list.into_iter().map(|c| c.address).collect();
                *licences.write().unwrap_or_else(|p| p.into_inner()) = fresh;
            }
            Err(e) => tracing::warn!(error = %e, "could not read the checker licences"),
        }
        let every = if licences
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
        {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(30)
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// Posts the workload's output in order, batching whatever piled up while a post was in flight.
async fn ship_logs(agent: Arc<Agent>, id: LeaseId, mut outputs: mpsc::Receiver<Output>) {
    while let Some((stream, data)) = outputs.recv().await {
        let mut size = data.len();
        let mut chunks = vec![LogChunk { stream, data }];
        while size < MAX_LOG_POST_BYTES {
            match outputs.try_recv() {
                Ok((stream, data)) => {
                    size += data.len();
                    match chunks.last_mut() {
                        Some(last) if last.stream == stream => last.data.push_str(&data),
                        _ => chunks.push(LogChunk { stream, data }),
                    }
                }
                Err(_) => break,
            }
        }
        let append = LogAppend { chunks };
        for attempt in 0..5u32 {
            match agent.client.append_logs(id, &append).await {
                Ok(()) => break,
                Err(ClientError::Api { error, .. }) => {
                    tracing::warn!(lease = %id, error = %error.message, "output refused");
                    break;
                }
                Err(e) => {
                    tracing::warn!(lease = %id, error = %e, "posting output failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
                }
            }
        }
    }
}

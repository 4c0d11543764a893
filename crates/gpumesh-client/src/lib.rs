//! A typed client of the indexer's HTTP API.
//!
//! Every call that changes state (and every read of a lease's output) is signed with the
//! client's [`Wallet`] as [`gpumesh_types::auth`] describes. Ledger transactions are
//! signed with the account's next nonce, which the client tracks and serialises so that
//! several tasks can share one wallet.

pub mod buyer;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use gpumesh_identity::Wallet;
use gpumesh_types::auth::{
    HEADER_EXPIRES, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SIGNER, request_message,
};
use gpumesh_types::{
    AccountView, Address, Amount, ApiError, BlockHeader, ContainerView, ErrorCode, FaucetRequest,
    GeoPoint, Heartbeat, HostRegistered, HostWork, JobRequest, LeaseFinish, LeaseId, LeaseStarted,
    LeaseView, LedgerEntry, LogAppend, LogEvent, NetworkInfo, RegisterHost, RewardProof, Sig,
    SignedTx, TreasuryView, Tx, TxAccepted, TxKind, WorkPoll,
};
use reqwest::Method;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// How long a request signature stays valid.
const SIGNATURE_TTL: Duration = Duration::from_secs(60);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The indexer answered with an error.
    #[error("{message} ({code:?}, HTTP {status})", code = error.code, message = error.message)]
    Api { status: u16, error: ApiError },
    #[error("cannot reach the indexer at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("unexpected answer from {url}: {reason}")]
    Protocol { url: String, reason: String },
    #[error("this call needs a wallet (--key)")]
    NoWallet,
}

impl ClientError {
    /// The API's error code, when the indexer answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { error, .. } => Some(error.code),
            _ => None,
        }
    }
}

/// How many times a request refused as `overloaded` is sent in all, and the wait between
/// (the indexer's `Retry-After`).
pub const OVERLOADED_TRIES: u32 = 5;
const OVERLOADED_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// A connection to one indexer, optionally with a wallet to sign with.
#[derive(Debug)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    wallet: Option<Wallet>,
    chain_id: tokio::sync::OnceCell<u64>,
    last_nonce: AtomicU64,
    /// The next ledger nonce of the wallet's account; the lock orders its transactions.
    ledger_nonce: tokio::sync::Mutex<Option<u64>>,
}

fn now_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub use reqwest::Certificate;

/// Installs rustls's ring provider as the process's TLS provider (once; later calls do
/// nothing). Every HTTP client and TLS server of gpumesh is made after it.
pub fn install_tls() {
    // An error means a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Whether the system's CA store has certificates (a `FROM scratch` image has none, and
/// reqwest then refuses to build a client that trusts it).
fn system_roots() -> bool {
    static LOADED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOADED.get_or_init(|| {
        install_tls();
        let loaded = reqwest::Client::builder().build().is_ok();
        if !loaded {
            tracing::warn!(
                "no CA certificates in the system's store; https:// trusts Mozilla's roots (or --ca-cert)"
            );
        }
        loaded
    })
}

/// An HTTP client builder with TLS ready: where every HTTP client of gpumesh starts. It
/// trusts the system's CA store, or Mozilla's roots where the system has none.
pub fn http_builder() -> reqwest::ClientBuilder {
    install_tls();
    let builder = reqwest::Client::builder();
    if system_roots() {
        builder
    } else {
        builder.tls_certs_only(
            webpki_root_certs::TLS_SERVER_ROOT_CERTS
                .iter()
                .filter_map(|der| reqwest::Certificate::from_der(der.as_ref()).ok()),
        )
    }
}

/// An HTTP client with the default settings and TLS ready.
pub fn http() -> reqwest::Client {
    http_builder()
        .build()
        .expect("an HTTP client with default settings builds")
}

/// Why a CA file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("failed to read the CA file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("the CA file {path} holds no PEM certificate: {reason}")]
    Malformed {
        path: std::path::PathBuf,
        reason: String,
    },
}

/// The certificates of a PEM file, to trust instead of the system's roots (an indexer
/// whose certificate a private CA signed).
pub fn read_ca(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, CaError> {
    let pem = std::fs::read(path).map_err(|source| CaError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let malformed = |reason: String| CaError::Malformed {
        path: path.to_path_buf(),
        reason,
    };
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let ders = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| malformed(e.to_string()))?;
    if ders.is_empty() {
        return Err(malformed("no certificate in it".into()));
    }
    // Each is parsed as a trust anchor now, so that a client built from them cannot fail.
    let mut roots = rustls::RootCertStore::empty();
    ders.iter()
        .map(|der| {
            roots
                .add(der.clone())
                .map_err(|e| malformed(format!("a certificate in it does not parse: {e}")))?;
            reqwest::Certificate::from_der(der.as_ref()).map_err(|e| malformed(e.to_string()))
        })
        .collect()
}

/// The four headers that sign a request (docs/wallets.md): who signs, the nonce (a signing
/// time in microseconds, unique per signer), the expiry (milliseconds since the epoch),
/// and the EIP-191 signature over [`request_message`]. Public for load generators that
/// sign requests ahead of sending them.
pub fn signature_headers(
    wallet: &Wallet,
    chain_id: u64,
    method: &str,
    path: &str,
    nonce_us: u64,
    expires_ms: u64,
    body: &[u8],
) -> [(&'static str, String); 4] {
    let message = request_message(chain_id, method, path, nonce_us, expires_ms, body);
    let signature = Sig(wallet.sign_message(message.as_bytes()));
    [
        (HEADER_SIGNER, wallet.address().to_string()),
        (HEADER_NONCE, nonce_us.to_string()),
        (HEADER_EXPIRES, expires_ms.to_string()),
        (
            HEADER_SIGNATURE,
            serde_json::to_value(signature)
                .expect("signatures serialise")
                .as_str()
                .unwrap_or_default()
                .to_string(),
        ),
    ]
}

impl Client {
    pub fn new(base_url: &str, wallet: Option<Wallet>) -> Client {
        Client::with_ca(base_url, wallet, Vec::new())
    }

    /// A client that trusts only `ca` (when not empty) for `https://` indexers, instead
    /// of the system's roots.
    pub fn with_ca(
        base_url: &str,
        wallet: Option<Wallet>,
        ca: Vec<reqwest::Certificate>,
    ) -> Client {
        let builder = if ca.is_empty() {
            http_builder()
        } else {
            // Only the operator's CA: not the system's roots nor Mozilla's.
            install_tls();
            reqwest::Client::builder().tls_certs_only(ca)
        }
        .connect_timeout(Duration::from_secs(5));
        Client {
            http: builder
                .build()
                .expect("an HTTP client with parsed certificates builds"),
            base: base_url.trim_end_matches('/').to_string(),
            wallet,
            chain_id: tokio::sync::OnceCell::new(),
            last_nonce: AtomicU64::new(0),
            ledger_nonce: tokio::sync::Mutex::new(None),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn wallet(&self) -> Option<&Wallet> {
        self.wallet.as_ref()
    }

    pub fn address(&self) -> Result<Address, ClientError> {
        self.wallet
            .as_ref()
            .map(Wallet::address)
            .ok_or(ClientError::NoWallet)
    }

    async fn chain_id(&self) -> Result<u64, ClientError> {
        let fetch = || async {
            // Read directly rather than through `request`, which signs with the chain id.
            let url = format!("{}/v1/info", self.base);
            let unreachable = |source| ClientError::Unreachable {
                url: url.clone(),
                source,
            };
            let response = self.http.get(&url).send().await.map_err(unreachable)?;
            let bytes = response.bytes().await.map_err(unreachable)?;
            serde_json::from_slice::<NetworkInfo>(&bytes)
                .map(|info| info.chain_id)
                .map_err(|e| ClientError::Protocol {
                    url: url.clone(),
                    reason: e.to_string(),
                })
        };
        self.chain_id.get_or_try_init(fetch).await.copied()
    }

    /// A fresh request nonce: the time in microseconds, strictly increasing per client.
    fn next_nonce(&self) -> u64 {
        let now = now_us();
        let mut last = self.last_nonce.load(Ordering::SeqCst);
        loop {
            let next = now.max(last + 1);
            match self
                .last_nonce
                .compare_exchange(last, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Sends a request; one the indexer refused as `overloaded` (which changed nothing)
    /// is sent again, signed anew, a second later (the indexer's `Retry-After`), up to
    /// [`OVERLOADED_TRIES`] times in all.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        sign: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let mut tries = 1;
        loop {
            match self
                .request_once(method.clone(), path, body.clone(), sign)
                .await
            {
                Err(ClientError::Api { error, .. })
                    if error.code == ErrorCode::Overloaded && tries < OVERLOADED_TRIES =>
                {
                    tries += 1;
                    tracing::debug!(path, tries, "the indexer is overloaded; trying again");
                    tokio::time::sleep(OVERLOADED_WAIT).await;
                }
                other => return other,
            }
        }
    }

    async fn request_once(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        sign: bool,
    ) -> Result<reqwest::Response, ClientError> {
        let url = format!("{}{path}", self.base);
        let mut builder = self.http.request(method.clone(), &url);
        let body = body.unwrap_or_default();
        if sign {
            let wallet = self.wallet.as_ref().ok_or(ClientError::NoWallet)?;
            let chain_id = self.chain_id().await?;
            let nonce = self.next_nonce();
            let expires = now_us() / 1_000 + SIGNATURE_TTL.as_millis() as u64;
            for (name, value) in signature_headers(
                wallet,
                chain_id,
                method.as_str(),
                path,
                nonce,
                expires,
                &body,
            ) {
                builder = builder.header(name, value);
            }
        }
        if !body.is_empty() {
            builder = builder
                .header("content-type", "application/json")
                .body(body);
        }
        let response = builder
            .send()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        let error = serde_json::from_str::<ApiError>(&text).unwrap_or(ApiError {
            code: ErrorCode::Unknown,
            message: format!("HTTP {status}: {text}"),
        });
        Err(ClientError::Api { status, error })
    }

    async fn call<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
        sign: bool,
    ) -> Result<R, ClientError> {
        let body = body.map(|b| serde_json::to_vec(b).expect("requests serialise"));
        let url = format!("{}{path}", self.base);
        let response = self.request(method, path, body, sign).await?;
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
            url,
            reason: e.to_string(),
        })
    }

    async fn get<R: DeserializeOwned>(&self, path: &str) -> Result<R, ClientError> {
        self.call(Method::GET, path, None::<&()>, false).await
    }

    async fn post<R: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> Result<R, ClientError> {
        self.call(Method::POST, path, Some(body), true).await
    }

    /// A signed POST of any JSON body, for requests this client has no method for (and
    /// for tests that send what the typed methods cannot).
    pub async fn post_raw(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ClientError> {
        self.post(path, body).await
    }

    pub async fn create_deployment(
        &self,
        request: &gpumesh_types::DeploymentRequest,
    ) -> Result<gpumesh_types::DeploymentView, ClientError> {
        self.post("/v1/deployments", request).await
    }

    pub async fn deployment(
        &self,
        id: gpumesh_types::DeploymentId,
    ) -> Result<gpumesh_types::DeploymentView, ClientError> {
        self.get(&format!("/v1/deployments/{id}")).await
    }

    pub async fn deployments_of(
        &self,
        owner: Address,
    ) -> Result<Vec<gpumesh_types::DeploymentView>, ClientError> {
        self.get(&format!("/v1/deployments?owner={owner}")).await
    }

    pub async fn scale_deployment(
        &self,
        id: gpumesh_types::DeploymentId,
        scale: &gpumesh_types::ScaleRequest,
    ) -> Result<gpumesh_types::DeploymentView, ClientError> {
        self.post(&format!("/v1/deployments/{id}/scale"), scale)
            .await
    }

    pub async fn stop_deployment(
        &self,
        id: gpumesh_types::DeploymentId,
    ) -> Result<gpumesh_types::DeploymentView, ClientError> {
        self.post(
            &format!("/v1/deployments/{id}/stop"),
            &serde_json::json!({}),
        )
        .await
    }

    /// Lets the protocol spend up to `amount` of this wallet's balance on the
    /// deployment's escrows (replaces the earlier allowance).
    pub async fn allow(
        &self,
        deployment: gpumesh_types::DeploymentId,
        amount: Amount,
    ) -> Result<TxAccepted, ClientError> {
        self.send_tx(TxKind::Allow {
            deployment: deployment.0,
            amount,
        })
        .await
    }

    pub async fn request_session(
        &self,
        request: &gpumesh_types::SessionRequest,
    ) -> Result<gpumesh_types::SessionView, ClientError> {
        self.post("/v1/sessions", request).await
    }

    pub async fn session(
        &self,
        id: gpumesh_types::SessionId,
    ) -> Result<gpumesh_types::SessionView, ClientError> {
        self.get(&format!("/v1/sessions/{id}")).await
    }

    pub async fn end_session(
        &self,
        id: gpumesh_types::SessionId,
    ) -> Result<gpumesh_types::SessionView, ClientError> {
        self.post(&format!("/v1/sessions/{id}/end"), &serde_json::json!({}))
            .await
    }

    pub async fn info(&self) -> Result<NetworkInfo, ClientError> {
        self.get("/v1/info").await
    }

    /// Every container, following the listing's pages.
    pub async fn containers(&self) -> Result<Vec<ContainerView>, ClientError> {
        self.all_pages("/v1/containers?").await
    }

    /// Follows a paginated listing (`path` ends in `?` or `&`) to its end.
    async fn all_pages<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<T>, ClientError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page: gpumesh_types::Page<T> = match &after {
                None => {
                    self.get(&format!("{path}limit={}", gpumesh_types::MAX_PAGE))
                        .await?
                }
                Some(cursor) => {
                    self.get(&format!(
                        "{path}limit={}&after={cursor}",
                        gpumesh_types::MAX_PAGE
                    ))
                    .await?
                }
            };
            all.extend(page.items);
            match page.next {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    pub async fn account(&self, address: Address) -> Result<AccountView, ClientError> {
        self.get(&format!("/v1/accounts/{address}")).await
    }

    /// The account's transactions, newest first.
    pub async fn history(
        &self,
        address: Address,
        limit: usize,
    ) -> Result<Vec<LedgerEntry>, ClientError> {
        self.get(&format!("/v1/accounts/{address}/history?limit={limit}"))
            .await
    }

    /// The newest sealed block.
    pub async fn head(&self) -> Result<BlockHeader, ClientError> {
        self.get("/v1/ledger/head").await
    }

    /// Block headers, newest first, below height `below` (from the head when `None`).
    pub async fn blocks(
        &self,
        below: Option<u64>,
        limit: usize,
    ) -> Result<Vec<BlockHeader>, ClientError> {
        let below = below.map(|b| format!("&below={b}")).unwrap_or_default();
        self.get(&format!("/v1/ledger/blocks?limit={limit}{below}"))
            .await
    }

    /// A recorded transaction with its hash.
    pub async fn ledger_tx(&self, seq: u64) -> Result<serde_json::Value, ClientError> {
        self.get(&format!("/v1/ledger/txs/{seq}")).await
    }

    pub async fn treasury(&self) -> Result<TreasuryView, ClientError> {
        self.get("/v1/ledger/treasury").await
    }

    /// The account's cumulative reward after `epoch` and its Merkle proof.
    pub async fn reward_proof(
        &self,
        address: Address,
        epoch: u64,
    ) -> Result<RewardProof, ClientError> {
        self.get(&format!("/v1/ledger/proof/{address}?epoch={epoch}"))
            .await
    }

    pub async fn lease(&self, id: LeaseId) -> Result<LeaseView, ClientError> {
        self.get(&format!("/v1/leases/{id}")).await
    }

    pub async fn leases_of_buyer(&self, buyer: Address) -> Result<Vec<LeaseView>, ClientError> {
        self.all_pages(&format!("/v1/leases?buyer={buyer}&")).await
    }

    pub async fn register_host(
        &self,
        request: &RegisterHost,
    ) -> Result<HostRegistered, ClientError> {
        self.post("/v1/hosts", request).await
    }

    pub async fn heartbeat(&self, beat: &Heartbeat) -> Result<(), ClientError> {
        self.post::<serde_json::Value>("/v1/hosts/heartbeat", beat)
            .await
            .map(|_| ())
    }

    pub async fn work(&self, wait: Duration) -> Result<HostWork, ClientError> {
        self.post(
            "/v1/hosts/work",
            &WorkPoll {
                wait_ms: wait.as_millis() as u64,
            },
        )
        .await
    }

    pub async fn submit_job(&self, job: &JobRequest) -> Result<LeaseView, ClientError> {
        self.post("/v1/jobs", job).await
    }

    pub async fn cancel(&self, id: LeaseId) -> Result<LeaseView, ClientError> {
        self.post(&format!("/v1/leases/{id}/cancel"), &serde_json::json!({}))
            .await
    }

    pub async fn started(
        &self,
        id: LeaseId,
        endpoints: &[gpumesh_types::Endpoint],
        image_user: bool,
    ) -> Result<LeaseView, ClientError> {
        let started = LeaseStarted {
            endpoints: endpoints.to_vec(),
            image_user,
        };
        self.post(&format!("/v1/leases/{id}/started"), &started)
            .await
    }

    pub async fn report_health(
        &self,
        id: LeaseId,
        report: &gpumesh_types::HealthReport,
    ) -> Result<LeaseView, ClientError> {
        self.post(&format!("/v1/leases/{id}/health"), report).await
    }

    pub async fn append_logs(&self, id: LeaseId, append: &LogAppend) -> Result<(), ClientError> {
        self.post::<serde_json::Value>(&format!("/v1/leases/{id}/logs"), append)
            .await
            .map(|_| ())
    }

    pub async fn finish(
        &self,
        id: LeaseId,
        finish: &LeaseFinish,
    ) -> Result<LeaseView, ClientError> {
        self.post(&format!("/v1/leases/{id}/finish"), finish).await
    }

    /// Reports a round trip this host measured to a peer.
    pub async fn observe(
        &self,
        observation: &gpumesh_types::Observation,
    ) -> Result<(), ClientError> {
        self.post::<serde_json::Value>("/v1/observations", observation)
            .await
            .map(|_| ())
    }

    /// Checker licences and standing.
    pub async fn checkers(&self) -> Result<Vec<gpumesh_types::CheckerView>, ClientError> {
        self.get("/v1/checkers").await
    }

    /// The rule capacity proofs are sized by.
    pub async fn proof_sizing(&self) -> Result<gpumesh_types::ProofSizing, ClientError> {
        self.get("/v1/checking/sizing").await
    }

    /// A checker's tasks in the current period.
    pub async fn checker_tasks(
        &self,
        checker: Address,
    ) -> Result<gpumesh_types::CheckerTasksView, ClientError> {
        self.get(&format!("/v1/checking/tasks?checker={checker}"))
            .await
    }

    /// Sends this checker's results for a period, signed once for the whole batch.
    pub async fn report(
        &self,
        report: &gpumesh_types::CheckReport,
    ) -> Result<gpumesh_types::ReportAccepted, ClientError> {
        self.post("/v1/checking/reports", report).await
    }

    /// Who checks whom in a period (the current one when `None`), with its seed: every
    /// page, followed to the end.
    pub async fn assignment(
        &self,
        period: Option<u64>,
    ) -> Result<gpumesh_types::AssignmentView, ClientError> {
        let mut all: gpumesh_types::AssignmentView = match period {
            Some(p) => {
                self.get(&format!("/v1/checking/assignment?period={p}"))
                    .await?
            }
            None => self.get("/v1/checking/assignment").await?,
        };
        while let Some(from) = all.next.take() {
            let page: gpumesh_types::AssignmentView = self
                .get(&format!(
                    "/v1/checking/assignment?period={}&from={from}",
                    all.period
                ))
                .await?;
            all.containers.extend(page.containers);
            all.next = page.next;
        }
        Ok(all)
    }

    /// The chain id of the network, as the indexer reports it.
    pub async fn network_chain_id(&self) -> Result<u64, ClientError> {
        self.chain_id().await
    }

    /// Adds a measuring point (local networks only).
    pub async fn add_anchor(&self, point: GeoPoint) -> Result<u32, ClientError> {
        let added: gpumesh_types::AnchorAdded = self
            .post("/v1/anchors", &gpumesh_types::AnchorRequest { point })
            .await?;
        Ok(added.anchor)
    }

    pub async fn faucet(&self, amount: Amount) -> Result<TxAccepted, ClientError> {
        self.post("/v1/faucet", &FaucetRequest { amount }).await
    }

    pub async fn submit_tx(&self, stx: &SignedTx) -> Result<TxAccepted, ClientError> {
        self.post("/v1/ledger/txs", stx).await
    }

    /// Signs `kind` with the wallet's next ledger nonce and submits it. Transactions of one
    /// client are sent one at a time, in order; a nonce that went stale is refreshed once.
    pub async fn send_tx(&self, kind: TxKind) -> Result<TxAccepted, ClientError> {
        self.send_tx_with(|_| kind.clone())
            .await
            .map(|(accepted, _)| accepted)
    }

    /// Like [`Client::send_tx`], building the transaction from the nonce it will carry,
    /// and returning the signed transaction as well.
    pub async fn send_tx_with(
        &self,
        build: impl Fn(u64) -> TxKind,
    ) -> Result<(TxAccepted, SignedTx), ClientError> {
        let wallet = self.wallet.as_ref().ok_or(ClientError::NoWallet)?;
        let chain_id = self.chain_id().await?;
        let mut next = self.ledger_nonce.lock().await;
        for attempt in 0..2 {
            let nonce = match *next {
                Some(n) if attempt == 0 => n,
                _ => self.account(wallet.address()).await?.nonce,
            };
            let stx = wallet.sign_tx(Tx {
                chain_id,
                from: wallet.address(),
                nonce,
                kind: build(nonce),
            });
            match self.submit_tx(&stx).await {
                Ok(accepted) => {
                    *next = Some(nonce + 1);
                    return Ok((accepted, stx));
                }
                Err(e) if e.code() == Some(ErrorCode::WrongNonce) && attempt == 0 => *next = None,
                Err(e) => return Err(e),
            }
        }
        unreachable!("the second attempt returns")
    }

    /// Signs a transaction with the next ledger nonce without submitting it, reserving the
    /// nonce; `submit` then sends it through another call (such as a lease's finish).
    pub async fn sign_next_tx<R>(
        &self,
        kind: TxKind,
        submit: impl AsyncFnOnce(SignedTx) -> Result<R, ClientError>,
    ) -> Result<R, ClientError> {
        let wallet = self.wallet.as_ref().ok_or(ClientError::NoWallet)?;
        let chain_id = self.chain_id().await?;
        let mut next = self.ledger_nonce.lock().await;
        let nonce = match *next {
            Some(n) => n,
            None => self.account(wallet.address()).await?.nonce,
        };
        let stx = wallet.sign_tx(Tx {
            chain_id,
            from: wallet.address(),
            nonce,
            kind,
        });
        match submit(stx).await {
            Ok(r) => {
                *next = Some(nonce + 1);
                Ok(r)
            }
            Err(e) => {
                *next = None;
                Err(e)
            }
        }
    }

    /// Locks the escrow a matched lease asks for, on the lease's exact terms.
    pub async fn fund(&self, lease: &LeaseView) -> Result<TxAccepted, ClientError> {
        self.send_tx(TxKind::OpenEscrow {
            lease: lease.id,
            host: lease.host,
            price_per_gpu_hour: lease.price_per_gpu_hour,
            gpus: lease.gpu_count,
            max_duration_ms: lease.max_duration_ms,
            amount: lease.escrow,
        })
        .await
    }

    /// The lease's output from `from` on; with `follow`, until the lease ends.
    pub async fn logs(
        &self,
        id: LeaseId,
        from: u64,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<LogEvent, ClientError>> + use<>, ClientError> {
        let path = format!("/v1/leases/{id}/logs?from={from}&follow={follow}");
        let url = format!("{}{path}", self.base);
        let response = self.request(Method::GET, &path, None, true).await?;
        let lines = Lines {
            bytes: Box::pin(response.bytes_stream()),
            buffer: Vec::new(),
            url,
            done: false,
        };
        Ok(futures_util::stream::unfold(
            lines,
            |mut lines| async move {
                let item = lines.next_event().await?;
                Some((item, lines))
            },
        ))
    }
}

/// Splits a byte stream into newline-delimited JSON events.
struct Lines {
    bytes: std::pin::Pin<Box<dyn Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: Vec<u8>,
    url: String,
    done: bool,
}

impl Lines {
    async fn next_event(&mut self) -> Option<Result<LogEvent, ClientError>> {
        loop {
            if let Some(pos) = self.buffer.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buffer.drain(..=pos).collect();
                let line = &line[..line.len() - 1];
                if line.is_empty() {
                    continue;
                }
                return Some(
                    serde_json::from_slice(line).map_err(|e| ClientError::Protocol {
                        url: self.url.clone(),
                        reason: format!("bad log event: {e}"),
                    }),
                );
            }
            if self.done {
                return None;
            }
            match self.bytes.next().await {
                Some(Ok(chunk)) => self.buffer.extend_from_slice(&chunk),
                Some(Err(source)) => {
                    self.done = true;
                    return Some(Err(ClientError::Unreachable {
                        url: self.url.clone(),
                        source,
                    }));
                }
                None => {
                    self.done = true;
                    if self.buffer.is_empty() {
                        return None;
                    }
                    self.buffer.push(b'\n');
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Answers each connection's request with the next of `answers` (status, body).
    async fn serve(answers: Vec<(u16, &'static str)>) -> (String, tokio::task::JoinHandle<usize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let mut served = 0;
            for (status, body) in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf).await.unwrap();
                    request.extend_from_slice(&buf[..n]);
                }
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\nretry-after: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
                served += 1;
            }
            served
        });
        (url, task)
    }

    const OVERLOADED: &str = r#"{"code":"overloaded","message":"busy"}"#;

    #[tokio::test]
    async fn a_request_refused_as_overloaded_is_sent_again() {
        let (url, server) = serve(vec![
            (503, OVERLOADED),
            (503, OVERLOADED),
            (200, r#"{"items":[],"next":null}"#),
        ])
        .await;
        let client = Client::new(&url, None);
        let containers = client
            .containers()
            .await
            .expect("answered on the third try");
        assert!(containers.is_empty());
        assert_eq!(server.await.unwrap(), 3);
    }

    #[tokio::test]
    async fn overloaded_is_tried_a_bounded_number_of_times() {
        let answers = vec![(503, OVERLOADED); OVERLOADED_TRIES as usize];
        let (url, server) = serve(answers).await;
        let refused = Client::new(&url, None).containers().await.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::Overloaded));
        assert_eq!(server.await.unwrap(), OVERLOADED_TRIES as usize);
    }
}

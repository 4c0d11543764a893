//! Helpers for the integration tests: small devnets, jobs, and raw signed requests for
//! probing the API with bad input.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gpumesh_devnet::{Devnet, DevnetConfig, HostSpec, RuntimeChoice, world};
use gpumesh_host::demo_image::DEMO_IMAGE;
use gpumesh_identity::Wallet;
use gpumesh_types::auth::{
    HEADER_EXPIRES, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SIGNER, request_message,
};
use gpumesh_types::{Amount, GeoPoint, GpuModel, JobRequest, Sig};

/// Whether CI said a container engine is there, making container tests required.
pub fn container_engine_required() -> bool {
    std::env::var("GPUMESH_REQUIRE_CONTAINER_ENGINE").is_ok_and(|v| v == "1")
}

/// The first `n` hosts of the default world.
pub fn small_world(n: usize) -> Vec<HostSpec> {
    world().into_iter().take(n).collect()
}

/// A devnet with a few hosts and the given runtime.
pub async fn devnet(hosts: usize, runtime: RuntimeChoice) -> Devnet {
    Devnet::start(DevnetConfig {
        hosts: small_world(hosts),
        runtime,
        ..DevnetConfig::default()
    })
    .await
    .expect("the devnet starts")
}

/// A devnet on containers, or `None` (with the reason printed) where no engine is
/// reachable and CI did not require one.
pub async fn container_devnet(hosts: usize) -> Option<Devnet> {
    let config = DevnetConfig {
        hosts: small_world(hosts),
        runtime: RuntimeChoice::Container,
        ..DevnetConfig::default()
    };
    match Devnet::start(config).await {
        Ok(net) => Some(net),
        Err(e) if container_engine_required() => {
            panic!("GPUMESH_REQUIRE_CONTAINER_ENGINE=1 but {e:#}")
        }
        Err(e) => {
            eprintln!(
                "skipping: no container engine ({e:#}); GPUMESH_REQUIRE_CONTAINER_ENGINE=1 requires one"
            );
            None
        }
    }
}

/// A job near Paris running `script` under /bin/sh.
pub fn job(gpu: GpuModel, count: u16, script: &str, max_duration: Duration) -> JobRequest {
    JobRequest::new(
        gpu,
        count,
        GeoPoint {
            lat: 48.8566,
            lon: 2.3522,
        },
        Amount::from_tokens(5),
        max_duration.as_millis() as u64,
        DEMO_IMAGE,
        vec!["/bin/sh".into(), "-c".into(), script.into()],
    )
}

/// How to sign a raw request, and how to spoil it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signing {
    Good,
    None,
    /// Signed by another key than the one named.
    Forged,
    /// Valid signature, expiry in the past.
    Expired,
}

/// Raw requests to one indexer, for probing the API with what a normal client never sends.
#[derive(Debug, Clone)]
pub struct Probe {
    pub http: reqwest::Client,
    pub base: String,
    pub chain_id: u64,
}

impl Probe {
    /// A request signed by `wallet` as `signing` says, with an explicit nonce.
    pub fn request(
        &self,
        wallet: &Wallet,
        method: reqwest::Method,
        path: &str,
        body: Vec<u8>,
        signing: Signing,
        nonce: u64,
    ) -> reqwest::RequestBuilder {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_millis() as u64;
        let expires = if signing == Signing::Expired {
            now_ms - 1_000
        } else {
            now_ms + 60_000
        };
        let message = request_message(self.chain_id, method.as_str(), path, nonce, expires, &body);
        let signer = if signing == Signing::Forged {
            Wallet::from_label("forger")
        } else {
            wallet.clone()
        };
        let signature = Sig(signer.sign_message(message.as_bytes()));
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .body(body)
            .header("content-type", "application/json");
        if signing != Signing::None {
            let signature = serde_json::to_value(signature).expect("signature serialises");
            request = request
                .header(HEADER_SIGNER, wallet.address().to_string())
                .header(HEADER_NONCE, nonce.to_string())
                .header(HEADER_EXPIRES, expires.to_string())
                .header(
                    HEADER_SIGNATURE,
                    signature.as_str().expect("a string").to_string(),
                );
        }
        request
    }
}

/// A fresh request nonce (microseconds now, made unique by `bump`).
pub fn nonce(bump: u64) -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_micros() as u64
        + bump
}

//! Bad input at the API: every case gets its 4xx with a stable code and a readable
//! message, and changes nothing.

use std::time::Duration;

use gpumesh_devnet::RuntimeChoice;
use gpumesh_identity::Wallet;
use gpumesh_tests::{Probe, Signing, devnet, job, nonce};
use gpumesh_types::{Amount, ApiError, ErrorCode, GpuModel, Observation, Peer, Tx, TxKind};
use reqwest::Method;
use serde_json::{Value, json};

/// What was done, by whom, how, and the status and code expected.
type Case<'a> = (
    &'a str,
    &'a Wallet,
    Method,
    String,
    Vec<u8>,
    Signing,
    u16,
    ErrorCode,
);

/// Everything a bad request could have changed.
async fn digest(http: &reqwest::Client, base: &str) -> Value {
    let get = |path: &str| {
        let request = http.get(format!("{base}{path}"));
        async move { request.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let info = get("/v1/info").await;
    let leases = get("/v1/leases").await;
    let treasury = get("/v1/ledger/treasury").await;
    json!({ "hosts": info["hosts"], "containers": info["containers"], "transactions": info["transactions"], "leases": leases, "treasury": treasury })
}

fn job_json(gpu: &str, count: u16, price: &str, lat: f64) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "gpu": gpu, "gpu_count": count, "near": { "lat": lat, "lon": 2.35 },
        "max_price_per_gpu_hour": price, "max_duration_ms": 60000,
        "image": "localhost/gpumesh-demo:3", "command": ["true"],
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_stable_code_and_change_nothing() {
    let net = devnet(2, RuntimeChoice::Process).await;
    let base = net.api_url.clone();
    let http = gpumesh_client::http();
    let chain_id = net.buyer_client().info().await.unwrap().chain_id;
    // The probes get connections of their own, never pooled: the server answers an
    // oversized body early and closes that connection, which a pooled client could
    // otherwise pick for the next request.
    let probe = Probe {
        http: gpumesh_client::http_builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap(),
        base: base.clone(),
        chain_id,
    };
    let buyer = net.buyer.clone();
    let host = |name: &str| {
        Wallet::load(
            &net.data_dir.join("keys").join(format!("host-{name}.key")),
            "",
        )
        .unwrap()
    };
    let (frankfurt, amsterdam) = (host("frankfurt"), host("amsterdam"));
    // A matched lease on Frankfurt, for the cases about leases.
    let lease = net
        .buyer_client()
        .submit_job(&job(GpuModel::H100, 1, "true", Duration::from_secs(60)))
        .await
        .unwrap();
    let id = lease.id;

    let register = |price: &str, country: &str, model: &str| {
        serde_json::to_vec(&json!({
            "name": "x", "location": { "lat": 1.0, "lon": 2.0, "country": country },
            "price_per_gpu_hour": price, "runtime": "process",
            "gpus": [{ "model": model, "count": 1, "simulated": true }],
        }))
        .unwrap()
    };
    let register_at = |challenge_url: &str| {
        serde_json::to_vec(&json!({
            "name": "x", "location": { "lat": 1.0, "lon": 2.0, "country": "NL" },
            "price_per_gpu_hour": "1", "runtime": "process",
            "gpus": [{ "model": "H100", "count": 1, "simulated": true }],
            "challenge_url": challenge_url,
        }))
        .unwrap()
    };
    let observation = |peer: Peer| serde_json::to_vec(&Observation { peer, rtt_ms: 5.0 }).unwrap();
    let stale_tx = buyer.sign_tx(Tx {
        chain_id,
        from: buyer.address(),
        nonce: 99,
        kind: TxKind::Transfer {
            to: frankfurt.address(),
            amount: Amount(1),
        },
    });
    let stranger = Wallet::from_label("stranger with no money");
    let unknown_tx = stranger.sign_tx(Tx {
        chain_id,
        from: stranger.address(),
        nonce: 0,
        kind: TxKind::Transfer {
            to: buyer.address(),
            amount: Amount(1),
        },
    });
    let buyer_nonce = net
        .buyer_client()
        .account(buyer.address())
        .await
        .unwrap()
        .nonce;
    let too_much = Tx {
        chain_id,
        from: buyer.address(),
        nonce: buyer_nonce,
        kind: TxKind::Transfer {
            to: frankfurt.address(),
            amount: Amount(u128::MAX),
        },
    };
    let broke_tx = buyer.sign_tx(too_much.clone());
    // A transaction of the buyer's carrying a signature the stranger made.
    let mut forged_tx = stranger.sign_tx(Tx {
        from: stranger.address(),
        kind: TxKind::Transfer {
            to: frankfurt.address(),
            amount: Amount(1),
        },
        ..too_much
    });
    forged_tx.tx.from = buyer.address();
    // An allowance above the buyer's balance, and a start the protocol alone records.
    let buyer_balance = net
        .buyer_client()
        .account(buyer.address())
        .await
        .unwrap()
        .balance;
    let unbacked_allow = buyer.sign_tx(Tx {
        kind: TxKind::Allow {
            deployment: 1,
            amount: Amount(buyer_balance.0 + 1),
        },
        ..too_much.clone()
    });
    let start_tx = frankfurt.sign_tx(Tx {
        chain_id,
        from: frankfurt.address(),
        nonce: 0,
        kind: TxKind::StartLease { lease: id },
    });
    // Retiring lease ids is the protocol's too, whoever signs it.
    let retire_tx = buyer.sign_tx(Tx {
        chain_id,
        from: buyer.address(),
        nonce: 0,
        kind: TxKind::RetireLeases {
            ranges: vec![gpumesh_types::LeaseRange {
                first: id,
                last: id,
            }],
        },
    });

    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            b"{\"gpu\": \"H100\",".to_vec(),
            Signing::Good,
            400,
            ErrorCode::InvalidJson,
        ),
        (
            "unknown GPU model",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("B300", 1, "1", 48.0),
            Signing::Good,
            400,
            ErrorCode::UnknownGpuModel,
        ),
        (
            "zero price",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "0", 48.0),
            Signing::Good,
            400,
            ErrorCode::InvalidPrice,
        ),
        (
            "negative price",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "-1", 48.0),
            Signing::Good,
            400,
            ErrorCode::InvalidPrice,
        ),
        (
            "overflowing price",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json(
                "H100",
                1,
                "9999999999999999999999999999999999999999999",
                48.0,
            ),
            Signing::Good,
            400,
            ErrorCode::InvalidPrice,
        ),
        (
            "price over the cap",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "1000000000000000000000001", 48.0),
            Signing::Good,
            400,
            ErrorCode::InvalidPrice,
        ),
        (
            "latitude out of range",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "1", 91.0),
            Signing::Good,
            400,
            ErrorCode::InvalidLocation,
        ),
        (
            "zero GPUs",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 0, "1", 48.0),
            Signing::Good,
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "oversized body",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            vec![b' '; 2 * 1024 * 1024],
            Signing::Good,
            413,
            ErrorCode::BodyTooLarge,
        ),
        (
            "zero host price",
            &amsterdam,
            Method::POST,
            "/v1/hosts".into(),
            register("0", "NL", "H100"),
            Signing::Good,
            400,
            ErrorCode::InvalidPrice,
        ),
        (
            "bad country",
            &amsterdam,
            Method::POST,
            "/v1/hosts".into(),
            register("1", "NLD", "H100"),
            Signing::Good,
            400,
            ErrorCode::InvalidLocation,
        ),
        (
            "host offers unknown model",
            &amsterdam,
            Method::POST,
            "/v1/hosts".into(),
            register("1", "NL", "Voodoo5"),
            Signing::Good,
            400,
            ErrorCode::UnknownGpuModel,
        ),
        (
            "challenge URL with user information",
            &amsterdam,
            Method::POST,
            "/v1/hosts".into(),
            register_at("http://x@127.0.0.1:9"),
            Signing::Good,
            400,
            ErrorCode::InvalidChallengeUrl,
        ),
        (
            "challenge URL that is not http(s)",
            &amsterdam,
            Method::POST,
            "/v1/hosts".into(),
            register_at("ftp://127.0.0.1:9"),
            Signing::Good,
            400,
            ErrorCode::InvalidChallengeUrl,
        ),
        (
            "challenge URL with a fragment",
            &amsterdam,
            Method::POST,
            "/v1/hosts".into(),
            register_at("http://127.0.0.1:9/#agent"),
            Signing::Good,
            400,
            ErrorCode::InvalidChallengeUrl,
        ),
        (
            "a host observes itself",
            &amsterdam,
            Method::POST,
            "/v1/observations".into(),
            observation(Peer::Host(amsterdam.address())),
            Signing::Good,
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "an observation of an anchor that does not exist",
            &amsterdam,
            Method::POST,
            "/v1/observations".into(),
            observation(Peer::Anchor(999_999)),
            Signing::Good,
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "an observation from a key that is no host",
            &stranger,
            Method::POST,
            "/v1/observations".into(),
            observation(Peer::Host(frankfurt.address())),
            Signing::Good,
            404,
            ErrorCode::UnknownHost,
        ),
        (
            "unknown lease",
            &buyer,
            Method::GET,
            "/v1/leases/999999".into(),
            vec![],
            Signing::None,
            404,
            ErrorCode::UnknownLease,
        ),
        (
            "lease id not a number",
            &buyer,
            Method::GET,
            "/v1/leases/abc".into(),
            vec![],
            Signing::None,
            404,
            ErrorCode::UnknownLease,
        ),
        (
            "cancel of an unknown lease",
            &buyer,
            Method::POST,
            "/v1/leases/999999/cancel".into(),
            b"{}".to_vec(),
            Signing::Good,
            404,
            ErrorCode::UnknownLease,
        ),
        (
            "host reports on a lease it does not hold",
            &amsterdam,
            Method::POST,
            format!("/v1/leases/{id}/started"),
            b"{}".to_vec(),
            Signing::Good,
            403,
            ErrorCode::NotYourLease,
        ),
        (
            "buyer posts output",
            &buyer,
            Method::POST,
            format!("/v1/leases/{id}/logs"),
            br#"{"chunks":[{"stream":"stdout","data":"x"}]}"#.to_vec(),
            Signing::Good,
            403,
            ErrorCode::NotYourLease,
        ),
        (
            "stranger cancels",
            &stranger,
            Method::POST,
            format!("/v1/leases/{id}/cancel"),
            b"{}".to_vec(),
            Signing::Good,
            403,
            ErrorCode::NotYourLease,
        ),
        (
            "stranger reads output",
            &stranger,
            Method::GET,
            format!("/v1/leases/{id}/logs"),
            vec![],
            Signing::Good,
            403,
            ErrorCode::NotYourLease,
        ),
        (
            "unsigned",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "5", 48.0),
            Signing::None,
            401,
            ErrorCode::MissingSignature,
        ),
        (
            "forged signature",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "5", 48.0),
            Signing::Forged,
            401,
            ErrorCode::BadSignature,
        ),
        (
            "expired signature",
            &buyer,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "5", 48.0),
            Signing::Expired,
            401,
            ErrorCode::SignatureExpired,
        ),
        (
            "wrong ledger nonce",
            &buyer,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&stale_tx).unwrap(),
            Signing::Good,
            409,
            ErrorCode::WrongNonce,
        ),
        (
            "insufficient funds",
            &buyer,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&broke_tx).unwrap(),
            Signing::Good,
            402,
            ErrorCode::InsufficientFunds,
        ),
        (
            "a transaction from an account that never held tokens",
            &stranger,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&unknown_tx).unwrap(),
            Signing::Good,
            404,
            ErrorCode::UnknownAccount,
        ),
        (
            "a transaction with another key's signature",
            &buyer,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&forged_tx).unwrap(),
            Signing::Good,
            401,
            ErrorCode::BadSignature,
        ),
        (
            "a block height that is not a number",
            &buyer,
            Method::GET,
            "/v1/ledger/blocks?below=x".into(),
            vec![],
            Signing::None,
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "a proof without an epoch",
            &buyer,
            Method::GET,
            format!("/v1/ledger/proof/{}", buyer.address()),
            vec![],
            Signing::None,
            400,
            ErrorCode::InvalidRequest,
        ),
        (
            "a proof for an epoch not yet closed",
            &buyer,
            Method::GET,
            format!("/v1/ledger/proof/{}?epoch=999999", buyer.address()),
            vec![],
            Signing::None,
            404,
            ErrorCode::NotFound,
        ),
        (
            "a job from a key whose balance cannot cover its escrow",
            &stranger,
            Method::POST,
            "/v1/jobs".into(),
            job_json("H100", 1, "5000000000000000000", 48.0),
            Signing::Good,
            402,
            ErrorCode::InsufficientFunds,
        ),
        (
            "an allowance above the signer's balance",
            &buyer,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&unbacked_allow).unwrap(),
            Signing::Good,
            402,
            ErrorCode::InsufficientFunds,
        ),
        (
            "a lease start submitted by a host (the protocol records starts)",
            &frankfurt,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&start_tx).unwrap(),
            Signing::Good,
            400,
            ErrorCode::InvalidTransaction,
        ),
        (
            "a retirement of lease ids submitted by a buyer (the protocol retires archived leases)",
            &buyer,
            Method::POST,
            "/v1/ledger/txs".into(),
            serde_json::to_vec(&retire_tx).unwrap(),
            Signing::Good,
            400,
            ErrorCode::InvalidTransaction,
        ),
        (
            "unknown route",
            &buyer,
            Method::GET,
            "/v1/nothing".into(),
            vec![],
            Signing::None,
            404,
            ErrorCode::NotFound,
        ),
    ];
    let _ = frankfurt;
    for (i, (what, wallet, method, path, body, signing, status, code)) in
        cases.into_iter().enumerate()
    {
        let before = digest(&http, &base).await;
        let response = probe
            .request(wallet, method, &path, body, signing, nonce(i as u64))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let error: ApiError = response
            .json()
            .await
            .unwrap_or_else(|e| panic!("{what}: the error body is an ApiError: {e}"));
        assert_eq!(error.code, code, "{what}: {}", error.message);
        assert!(
            error.message.len() > 10,
            "{what}: a message a person can read: {:?}",
            error.message
        );
        assert_eq!(
            digest(&http, &base).await,
            before,
            "{what} changed something"
        );
    }

    // The same signed request twice: the second is refused and changes nothing.
    let body = job_json("H100", 1, "5000000000000000000", 48.0);
    let n = nonce(1_000);
    let first = probe
        .request(
            &buyer,
            Method::POST,
            "/v1/jobs",
            body.clone(),
            Signing::Good,
            n,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(first.status().as_u16(), 201);
    let before = digest(&http, &base).await;
    let again = probe
        .request(&buyer, Method::POST, "/v1/jobs", body, Signing::Good, n)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status().as_u16(), 401);
    assert_eq!(
        again.json::<ApiError>().await.unwrap().code,
        ErrorCode::ReplayedRequest
    );
    assert_eq!(
        digest(&http, &base).await,
        before,
        "a replay changed something"
    );
    let _ = net.stop().await;
}

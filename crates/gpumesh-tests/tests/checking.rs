//! Checkers on a whole network: cheating hosts rejected by their capacity proofs through
//! the real agent and API, a silent host taken offline by the quorum, a lazy checker
//! banned by canaries, the assignment recomputed from public data, and bad reports and
//! challenges refused with a code.

use std::time::{Duration, Instant};

use gpumesh_devnet::{Devnet, DevnetConfig, HostSpec, RuntimeChoice, SimulatedDevice};
use gpumesh_identity::Wallet;
use gpumesh_tests::{Probe, Signing, nonce, small_world};
use gpumesh_types::{
    ApiError, B256, Challenge, CheckOutcome, CheckReport, CheckResult, ContainerRef,
    ContainerState, ErrorCode, GpuModel, ProofCommitRequest, ProofParams, Sig, TaskKind,
    proof_challenge_message,
};

fn cheat(name: &str, gpu: GpuModel, prover: SimulatedDevice) -> HostSpec {
    HostSpec {
        name: name.into(),
        lat: 52.0,
        lon: 5.0,
        country: "NL".into(),
        gpu,
        count: 1,
        price: "0.20".into(),
        prover,
        claims: gpumesh_host::UsageClaims::Metered,
    }
}

async fn wait_for<T>(limit: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let began = Instant::now();
    while began.elapsed() < limit {
        if let Some(t) = check().await {
            return Some(t);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cheaters_are_caught_a_silent_host_goes_offline_and_a_lazy_checker_is_banned() {
    let mut hosts = small_world(2);
    hosts.push(cheat(
        "overclaim",
        GpuModel::H100,
        SimulatedDevice::Actually(GpuModel::T4),
    ));
    hosts.push(cheat(
        "skipper",
        GpuModel::Rtx4090,
        SimulatedDevice::SkipsRows(100),
    ));
    let mut net = Devnet::start(DevnetConfig {
        hosts,
        runtime: RuntimeChoice::Process,
        checkers: 4,
        lazy_checkers: 1,
        ..DevnetConfig::default()
    })
    .await
    .expect("the devnet starts and checkers decide every container");
    let client = net.buyer_client();
    let containers = client.containers().await.unwrap();
    let state_of = |name: &str| {
        containers
            .iter()
            .filter(|c| c.host_name == name)
            .map(|c| (c.state, c.rejected.clone()))
            .collect::<Vec<_>>()
    };
    let (state, reason) = state_of("overclaim").remove(0);
    assert_eq!(state, ContainerState::Rejected);
    assert!(reason.unwrap().contains("missed the deadline"));
    let (state, reason) = state_of("skipper").remove(0);
    assert_eq!(state, ContainerState::Rejected);
    assert!(reason.unwrap().contains("not the product"));
    for honest in ["frankfurt", "amsterdam"] {
        assert!(
            state_of(honest)
                .iter()
                .all(|(s, _)| *s == ContainerState::Standby),
            "{honest}: {:?}",
            state_of(honest)
        );
    }
    // The overclaiming host was slashed: K × coefficient of its stake is gone.
    let overclaim = containers
        .iter()
        .find(|c| c.host_name == "overclaim")
        .unwrap()
        .host;
    let stake = &client.account(overclaim).await.unwrap().stakes[0];
    assert_eq!(stake.bonded.0, 0, "{stake:?}");

    // A host that goes silent is taken offline by the quorum, well before the heartbeat
    // fallback (five times three missed one-second heartbeats).
    let frankfurt = containers
        .iter()
        .find(|c| c.host_name == "frankfurt")
        .unwrap()
        .host;
    net.kill_host("frankfurt").unwrap();
    let killed = Instant::now();
    let offline = wait_for(Duration::from_secs(20), async || {
        let all = client.containers().await.ok()?;
        all.iter()
            .filter(|c| c.host == frankfurt)
            .all(|c| c.state == ContainerState::Offline)
            .then(|| killed.elapsed())
    })
    .await
    .expect("the silent host goes offline");
    assert!(offline < Duration::from_secs(12), "took {offline:?}");

    // The lazy checker says "up" and "valid" to the canaries' decoys and is banned; the
    // honest ones are not.
    let lazy = net.checker_addresses()[0];
    let banned = wait_for(Duration::from_secs(20), async || {
        let list = client.checkers().await.ok()?;
        list.iter()
            .any(|c| c.banned_until_ms.is_some())
            .then_some(list)
    })
    .await
    .expect("a checker is banned");
    for c in &banned {
        assert_eq!(c.banned_until_ms.is_some(), c.address == lazy, "{c:?}");
        if c.address != lazy {
            assert!(c.credited > 0 && c.canaries_failed == 0, "{c:?}");
        }
    }
    net.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_assignment_is_recomputed_from_public_data_and_bad_reports_change_nothing() {
    let idle = Wallet::from_label("idle checker");
    let net = Devnet::start(DevnetConfig {
        hosts: small_world(2),
        runtime: RuntimeChoice::Process,
        checkers: 3,
        extra_licences: vec![idle.address()],
        ..DevnetConfig::default()
    })
    .await
    .expect("the devnet starts");
    let client = net.buyer_client();

    // Recompute who checks whom from the chain and the checker list alone.
    let view = wait_for(Duration::from_secs(20), async || {
        client
            .assignment(None)
            .await
            .ok()
            .filter(|a| a.block_height > 0)
    })
    .await
    .expect("a period drawn from a sealed block");
    let block = client
        .blocks(Some(view.block_height + 1), 1)
        .await
        .unwrap()
        .into_iter()
        .next()
        .unwrap();
    assert_eq!(block.height, view.block_height);
    assert_eq!(block.hash(), view.block_hash);
    let seed = gpumesh_checking::period_seed(view.period, &block.hash());
    assert_eq!(seed, view.seed);
    let mut licensed: Vec<_> = client
        .checkers()
        .await
        .unwrap()
        .iter()
        .filter(|c| c.banned_until_ms.is_none())
        .map(|c| c.address)
        .collect();
    licensed.sort();
    assert_eq!(licensed, view.eligible);
    let draw = gpumesh_checking::Draw::new(seed, licensed);
    assert_eq!(view.containers.len(), 12, "two hosts of 8 and 4 GPUs");
    // The API serves it in pages; the client followed them.
    let page: gpumesh_types::AssignmentView = gpumesh_client::http()
        .get(format!(
            "{}/v1/checking/assignment?period={}&limit=5",
            net.api_url, view.period
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!((page.containers.len(), page.next), (5, Some(5)));
    assert_eq!(page.containers[..], view.containers[..5]);
    for a in &view.containers {
        assert_eq!(draw.rank_addresses(&a.container, 3), a.checkers);
    }

    // Bad reports: each refused with its code, and none taken (checked below).
    let probe = Probe {
        http: gpumesh_client::http(),
        base: net.api_url.clone(),
        chain_id: client.info().await.unwrap().chain_id,
    };
    // Early in a period, before the idle checker's tasks go to its backups.
    let tasks = wait_for(Duration::from_secs(10), async || {
        let t = client.checker_tasks(idle.address()).await.ok()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_millis() as u64;
        (now.saturating_sub(t.period_start_ms) < 300).then_some(t)
    })
    .await
    .expect("a fresh period");
    // A real task (not a canary, whose container no host registered).
    let now_view = client.assignment(Some(tasks.period)).await.unwrap();
    let mine = tasks
        .tasks
        .iter()
        .find(|t| {
            t.kind == TaskKind::Liveness
                && now_view
                    .containers
                    .iter()
                    .any(|a| a.container == t.container)
        })
        .expect("the idle checker has tasks");
    let report = |container: ContainerRef, period: u64| {
        serde_json::to_vec(&CheckReport {
            period,
            location: None,
            results: vec![CheckResult {
                container,
                kind: TaskKind::Liveness,
                outcome: CheckOutcome::Up { rtt_us: 10 },
            }],
        })
        .unwrap()
    };
    let not_mine = now_view
        .containers
        .iter()
        .find(|a| !a.checkers.contains(&idle.address()))
        .map(|a| a.container)
        .unwrap_or(ContainerRef {
            host: idle.address(),
            index: 0,
        });
    let stranger = Wallet::from_label("not a checker");
    let cases: Vec<(&str, &Wallet, Vec<u8>, Signing, ErrorCode)> = vec![
        (
            "forged",
            &idle,
            report(mine.container, tasks.period),
            Signing::Forged,
            ErrorCode::BadSignature,
        ),
        (
            "unsigned",
            &idle,
            report(mine.container, tasks.period),
            Signing::None,
            ErrorCode::MissingSignature,
        ),
        (
            "expired",
            &idle,
            report(mine.container, tasks.period),
            Signing::Expired,
            ErrorCode::SignatureExpired,
        ),
        (
            "no licence",
            &stranger,
            report(mine.container, tasks.period),
            Signing::Good,
            ErrorCode::NotAChecker,
        ),
        (
            "unassigned",
            &idle,
            report(not_mine, tasks.period),
            Signing::Good,
            ErrorCode::NotAssigned,
        ),
        (
            "late",
            &idle,
            report(mine.container, tasks.period.saturating_sub(50)),
            Signing::Good,
            ErrorCode::LateReport,
        ),
        (
            "malformed",
            &idle,
            b"{\"period\": 1, \"results\": [{\"kind\": \"liveness\"}]}".to_vec(),
            Signing::Good,
            ErrorCode::InvalidJson,
        ),
    ];
    for (i, (name, wallet, body, signing, code)) in cases.into_iter().enumerate() {
        let response = probe
            .request(
                wallet,
                reqwest::Method::POST,
                "/v1/checking/reports",
                body,
                signing,
                nonce(i as u64),
            )
            .send()
            .await
            .unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let error: ApiError =
            serde_json::from_str(&text).unwrap_or_else(|_| panic!("{name}: HTTP {status}: {text}"));
        assert_eq!(error.code, code, "{name}: HTTP {status}: {}", error.message);
    }
    // None of those was taken: the same result, properly sent, is; then the very same
    // request again is a replay, and the result again a duplicate.
    let body = report(mine.container, tasks.period);
    let n = nonce(100);
    let send = |body: Vec<u8>, n: u64| {
        probe
            .request(
                &idle,
                reqwest::Method::POST,
                "/v1/checking/reports",
                body,
                Signing::Good,
                n,
            )
            .send()
    };
    let first = send(body.clone(), n).await.unwrap();
    assert!(
        first.status().is_success(),
        "{}",
        first.text().await.unwrap()
    );
    let accepted: gpumesh_types::ReportAccepted = first.json().await.unwrap();
    assert_eq!(accepted.accepted, 1);
    let replay: ApiError = send(body.clone(), n).await.unwrap().json().await.unwrap();
    assert_eq!(replay.code, ErrorCode::ReplayedRequest);
    let again: ApiError = send(body, nonce(200)).await.unwrap().json().await.unwrap();
    assert_eq!(again.code, ErrorCode::DuplicateResult);

    // Malformed challenges at the agent: a clear code, no proof.
    let http = gpumesh_client::http();
    let endpoint = mine.endpoint.trim_end_matches('/');
    // Proof requests must be signed, in time, by a licensed checker.
    let chain_id = probe.chain_id;
    let commit = |signer: &Wallet,
                  checker: &Wallet,
                  index: u16,
                  rows: u32,
                  inner: u32,
                  ttl: i64| {
        let challenge = Challenge {
            seed: B256::repeat_byte(0x11),
            params: ProofParams {
                rows,
                inner,
                spot_rows: 4,
            },
        };
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let expires_ms = (now + ttl) as u64;
        let message =
            proof_challenge_message(chain_id, index, &challenge, &checker.address(), expires_ms);
        serde_json::to_value(ProofCommitRequest {
            index,
            challenge,
            checker: checker.address(),
            expires_ms,
            signature: Sig(signer.sign_message(message)),
        })
        .unwrap()
    };
    // A challenge the sizing rule would never ask (a shape that is invalid, or not the
    // rule's for the GPU) is refused with the host's signature: a checker reports it as
    // the host's own refusal, never as a wrong proof.
    for (index, rows, inner, why) in [
        (0, 8, 17, "size is invalid"),
        (0, 4_000_000, 1024, "the network's rule asks GPU 0"),
        (999, 8, 16, "there is no GPU 999"),
    ] {
        let response = http
            .post(format!("{endpoint}/proof/commit"))
            .json(&commit(&idle, &idle, index, rows, inner, 60_000))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), 422);
        let refusal: gpumesh_types::ProofRefusal = response.json().await.unwrap();
        assert!(refusal.reason.contains(why), "{}", refusal.reason);
        let message = gpumesh_types::proof_refusal_message(
            chain_id,
            refusal.index,
            &refusal.seed,
            &refusal.reason,
        );
        assert_eq!(
            refusal
                .signature
                .0
                .recover_address_from_msg(message)
                .unwrap(),
            mine.container.host
        );
    }
    let bad = [
        (
            "proof/commit",
            commit(&stranger, &idle, 0, 64, 256, 60_000),
            (401, ErrorCode::BadSignature),
        ),
        (
            "proof/commit",
            commit(&idle, &idle, 0, 64, 256, -1_000),
            (401, ErrorCode::SignatureExpired),
        ),
        (
            "proof/commit",
            commit(&stranger, &stranger, 0, 64, 256, 60_000),
            (403, ErrorCode::NotAChecker),
        ),
        (
            "proof/open",
            serde_json::json!({"seed": format!("0x{}", "22".repeat(32)), "rows": [0]}),
            (404, ErrorCode::NotFound),
        ),
        (
            "liveness",
            serde_json::json!({"checker": idle.address(), "index": 999, "nonce": format!("0x{}", "33".repeat(32))}),
            (400, ErrorCode::InvalidRequest),
        ),
    ];
    for (path, body, (status, code)) in bad {
        let response = http
            .post(format!("{endpoint}/{path}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status().as_u16(), status, "{path} {body}");
        let error: ApiError = response.json().await.unwrap();
        assert_eq!(error.code, code, "{path}: {}", error.message);
    }
    let response = http
        .post(format!("{endpoint}/liveness"))
        .header("content-type", "application/json")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert!(response.status().is_client_error());
    net.stop().await.unwrap();
}

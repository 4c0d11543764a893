//! A public network started from `gpumesh genesis new`: no faucet, and only real GPUs in
//! containers.

mod common;

use std::process::Command;

use gpumesh_client::{Client, ClientError};
use gpumesh_identity::Wallet;
use gpumesh_types::{
    Amount, ErrorCode, GeoPoint, GpuModel, GpuOffer, Location, RegisterHost, RuntimeKind,
};

fn gpumesh(args: &[&str]) -> (bool, String) {
    let out = Command::new(common::BIN)
        .args(args)
        .env("GPUMESH_PASSWORD", common::PASSWORD)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn host(simulated: bool, runtime: RuntimeKind) -> RegisterHost {
    RegisterHost {
        name: "rack-7".into(),
        location: Location {
            point: GeoPoint::new(52.37, 4.9).unwrap(),
            country: "NL".parse().unwrap(),
        },
        price_per_gpu_hour: Amount::from_tokens(2),
        gpus: vec![GpuOffer {
            model: GpuModel::H100,
            count: 8,
            vram_mib: None,
            simulated,
        }],
        runtime,
        images: vec![],
        challenge_url: None,
    }
}

fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Api { error, .. }) => error.code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn a_public_network_starts_from_its_genesis_and_takes_only_real_gpus_in_containers() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (genesis, key, data) = (path("genesis.json"), path("protocol.key"), path("data"));
    let founder = Wallet::generate().address().to_string();
    let alloc = format!("{founder}=1000000");
    let (ok, out) = gpumesh(&[
        "genesis",
        "new",
        "--out",
        &genesis,
        "--chain-id",
        "4242",
        "--protocol-key",
        &key,
        "--alloc",
        &alloc,
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("chain 4242"), "{out}");
    // Never overwritten.
    let (ok, out) = gpumesh(&[
        "genesis",
        "new",
        "--out",
        &genesis,
        "--chain-id",
        "1",
        "--protocol-key",
        &path("other.key"),
    ]);
    assert!(!ok && out.contains("must not exist"), "{out}");
    assert!(!dir.path().join("other.key").exists(), "no key made");

    let (mut indexer, url) = common::start_with(&[
        "--genesis",
        &genesis,
        "--protocol-key",
        &key,
        "--data",
        &data,
    ]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let info = Client::new(&url, None).info().await.unwrap();
        assert!(!info.local);
        assert_eq!(info.chain_id, 4242);
        let client = Client::new(&url, Some(Wallet::generate()));
        for (simulated, runtime, refused) in [
            (true, RuntimeKind::Container, ErrorCode::SimulatedNotAllowed),
            (
                false,
                RuntimeKind::Process,
                ErrorCode::ProcessRuntimeNotAllowed,
            ),
        ] {
            let result = client.register_host(&host(simulated, runtime)).await;
            assert_eq!(code(result), refused);
        }
        assert_eq!(
            code(client.faucet(Amount::from_tokens(1)).await),
            ErrorCode::NotLocalNetwork
        );
        // A host claiming real GPUs in containers registers (checkers then prove them).
        client
            .register_host(&host(false, RuntimeKind::Container))
            .await
            .unwrap();
        let founder = founder.parse().unwrap();
        let account = Client::new(&url, None).account(founder).await.unwrap();
        assert_eq!(account.balance, Amount::from_tokens(1_000_000));
    });
    indexer.kill().unwrap();
    indexer.wait().unwrap();

    // The data directory belongs to its network: another genesis is refused.
    let other = path("other.json");
    let other_key = path("other.key");
    let (ok, out) = gpumesh(&[
        "genesis",
        "new",
        "--out",
        &other,
        "--chain-id",
        "4243",
        "--protocol-key",
        &other_key,
    ]);
    assert!(ok, "{out}");
    let (ok, out) = gpumesh(&[
        "indexer",
        "--listen",
        "127.0.0.1:0",
        "--genesis",
        &other,
        "--protocol-key",
        &other_key,
        "--data",
        &data,
    ]);
    assert!(!ok && out.contains("holds another network"), "{out}");
    // And a new directory refuses a protocol key that is not the genesis's.
    let (ok, out) = gpumesh(&[
        "indexer",
        "--listen",
        "127.0.0.1:0",
        "--genesis",
        &other,
        "--protocol-key",
        &key,
        "--data",
        &path("fresh"),
    ]);
    assert!(!ok && out.contains("but the genesis names"), "{out}");
}

#[test]
fn a_genesis_lists_reference_proof_rates_and_a_bad_list_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let checkers: Vec<String> = (0..3)
        .map(|_| Wallet::generate().address().to_string())
        .collect();
    let new = |rates: &str, out: &str| {
        std::fs::write(path("rates.json"), rates).unwrap();
        let mut args = vec![
            "genesis".to_string(),
            "new".into(),
            "--out".into(),
            path(out),
            "--chain-id".into(),
            "4242".into(),
            "--protocol-key".into(),
            path(&format!("{out}.key")),
            "--proof-rates".into(),
            path("rates.json"),
        ];
        for c in &checkers {
            args.extend(["--checker".to_string(), c.clone()]);
        }
        gpumesh(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let entry = |model: &str, rate: u64| {
        format!(
            r#"{{"model": "{model}", "macs_per_s": {rate}, "measured": "a reviewer, on that card"}}"#
        )
    };
    for (rates, why) in [
        (
            format!(
                "[{}, {}]",
                entry("H100", 40_000_000_000_000),
                entry("h100", 1)
            ),
            "two reference proof rates",
        ),
        (format!("[{}]", entry("H100", 0)), "above zero"),
        // A proof of the genesis size at 1 MAC/s would outlast a checker's slot.
        (format!("[{}]", entry("T4", 1)), "slot"),
        (
            "{\"not\": \"a list\"}".to_string(),
            "not a list of reference proof rates",
        ),
    ] {
        let (ok, out) = new(&rates, "bad.json");
        assert!(!ok && out.contains(why), "{rates}: {out}");
        assert!(!dir.path().join("bad.json").exists());
        assert!(
            !dir.path().join("bad.json.key").exists(),
            "no key left behind"
        );
    }
    let (ok, out) = new(
        &format!(
            "[{}, {}]",
            entry("H100", 40_000_000_000_000),
            entry("L40S", 9_000_000_000_000)
        ),
        "genesis.json",
    );
    assert!(ok, "{out}");
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path("genesis.json")).unwrap()).unwrap();
    let rates = &written["genesis"]["checking"]["proof_rates"];
    assert_eq!(rates[0]["model"], "H100", "{rates}");
    assert_eq!(rates[1]["macs_per_s"], 9_000_000_000_000u64, "{rates}");
}

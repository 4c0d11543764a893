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

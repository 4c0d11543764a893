//! Health that tells the truth: when the store stops taking writes, readiness turns false
//! and stays so, while liveness stays true.

use std::process::Command;

use gpumesh_devnet::RuntimeChoice;
use gpumesh_tests::devnet;
use gpumesh_types::{Amount, Readiness};

/// Sets or clears the immutable attribute, which refuses writes even through file
/// descriptors already open (root only). `false` when it cannot be set here.
fn immutable(path: &std::path::Path, on: bool) -> bool {
    Command::new("chattr")
        .arg(if on { "+i" } else { "-i" })
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_false_when_the_store_fails_and_liveness_stays_true() {
    let net = devnet(1, RuntimeChoice::Process).await;
    let http = gpumesh_client::http();
    let get = |path: &str| http.get(format!("{}{path}", net.api_url)).send();
    let ready = get("/v1/health/ready").await.unwrap();
    assert_eq!(ready.status(), 200);
    assert!(ready.json::<Readiness>().await.unwrap().ready);

    let store = net.data_dir.join("gpumesh.redb");
    if !immutable(&store, true) {
        assert!(
            std::env::var("GPUMESH_REQUIRE_ROOT").is_err(),
            "GPUMESH_REQUIRE_ROOT=1 but chattr +i failed on {}",
            store.display()
        );
        eprintln!("skipping: chattr +i needs root and a file system with attributes");
        return;
    }
    // The next change cannot be written: it is refused, and so is everything after it.
    let client = net.buyer_client();
    let refused = client.faucet(Amount::from_tokens(1)).await;
    immutable(&store, false);
    let err = refused.expect_err("a change the store could not write");
    assert!(
        err.to_string().contains("failed to write the store"),
        "{err}"
    );

    let ready = get("/v1/health/ready").await.unwrap();
    assert_eq!(ready.status(), 503);
    let view: Readiness = ready.json().await.unwrap();
    assert!(!view.ready);
    assert!(view.reason.unwrap().contains("restart"));
    for path in ["/v1/health/live", "/v1/health"] {
        assert_eq!(get(path).await.unwrap().status(), 200, "{path}");
    }
    // Reads still answer; changes do not, even now that the file is writable again.
    assert_eq!(get("/v1/info").await.unwrap().status(), 200);
    assert!(client.faucet(Amount::from_tokens(1)).await.is_err());
    assert_eq!(get("/v1/health/ready").await.unwrap().status(), 503);
    // Stopping cannot seal a last block either; that is expected here.
    let _ = net.stop().await;
}

//! Matching through the API: gaming sessions bounded by round-trip time, their
//! explanations, and round trips a host reports leaving others' placement alone.

use std::time::Duration;

use gpumesh_client::{Client, ClientError};
use gpumesh_devnet::RuntimeChoice;
use gpumesh_identity::Wallet;
use gpumesh_tests::{devnet, job};
use gpumesh_types::{
    Amount, ErrorCode, GeoPoint, GpuClass, GpuModel, GpuSelector, ImagePolicy, Observation, Peer,
    RankPolicy,
};

const MUMBAI: GeoPoint = GeoPoint {
    lat: 19.076,
    lon: 72.8777,
};

fn session(max_rtt_ms: u32) -> gpumesh_types::JobRequest {
    let mut request = job(GpuModel::Rtx4090, 1, "echo play", Duration::from_secs(30));
    request.gpu = GpuSelector::Class(GpuClass::Consumer);
    request.near = MUMBAI;
    request.max_price_per_gpu_hour = Amount::from_tokens(1);
    request.max_rtt_ms = Some(max_rtt_ms);
    request.policy = RankPolicy::Experience;
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaming_sessions_are_bounded_explained_and_not_moved_by_hosts() {
    let net = devnet(10, RuntimeChoice::Process).await;
    let buyer = net.buyer_client();

    // Nothing consumer-class is within 30 ms of Mumbai, and the indexer says what is nearest.
    let err = buyer.submit_job(&session(30)).await.unwrap_err();
    let ClientError::Api { status, error } = err else {
        panic!("an API error")
    };
    assert_eq!((status, error.code), (409, ErrorCode::NoMatch));
    assert!(
        error
            .message
            .contains("0 within 30 ms of 19.08,72.88; nearest is 66 ms away (singapore in SG)"),
        "{}",
        error.message
    );

    // Singapore says it measured 20 ms to a measuring point in Mumbai. A host's report
    // moves only its own coordinate, never a measuring point's, so the point does not
    // settle and the estimate near Mumbai stays what geography says: one host cannot
    // pull buyers towards itself or push them from others. Only checkers' measurements
    // settle measuring points (the matcher's tests show estimates refined by them).
    let anchor = buyer.add_anchor(MUMBAI).await.unwrap();
    let singapore = Wallet::load(&net.data_dir.join("keys/host-singapore.key"), "").unwrap();
    let host = Client::new(&net.api_url, Some(singapore));
    for _ in 0..200 {
        host.observe(&Observation {
            peer: Peer::Anchor(anchor),
            rtt_ms: 20.0,
        })
        .await
        .unwrap();
    }
    let err = buyer.submit_job(&session(40)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NoMatch));
    assert!(
        err.to_string()
            .contains("nearest is 66 ms away (singapore in SG)"),
        "{err}"
    );

    // Bad observations are refused.
    let bad = host
        .observe(&Observation {
            peer: Peer::Anchor(99),
            rtt_ms: 5.0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::InvalidRequest));
    let bad = host
        .observe(&Observation {
            peer: Peer::Anchor(anchor),
            rtt_ms: -1.0,
        })
        .await
        .unwrap_err();
    assert_eq!(bad.code(), Some(ErrorCode::InvalidRequest));

    // A required image no host holds: refused with the count that ran out.
    let mut game = session(200);
    game.image = "games/unknown:1".into();
    game.image_policy = ImagePolicy::Require;
    let err = buyer.submit_job(&game).await.unwrap_err();
    assert!(
        err.to_string().contains("0 with games/unknown:1 present"),
        "{err}"
    );
    let _ = net.stop().await;
}

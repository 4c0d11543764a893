//! Every request body the API decodes, through the indexer's own decoder: any bytes give
//! a value or a coded error, never a panic; a decoded value serialises and decodes again
//! to the same value.
#![no_main]

use gpumesh_indexer::decode_body;
use gpumesh_types::{
    AnchorRequest, CheckReport, DeploymentRequest, FaucetRequest, Heartbeat, JobRequest,
    LeaseFinish, ProofCommitRequest, ProofOpenRequest, RegisterHost, ScaleRequest, SessionRequest,
};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: Serialize + DeserializeOwned + std::fmt::Debug>(bytes: &[u8]) {
    let Ok(value) = decode_body::<T>(bytes) else {
        return;
    };
    let again = serde_json::to_vec(&value).expect("a decoded value serialises");
    let back = decode_body::<T>(&again)
        .unwrap_or_else(|e| panic!("{value:?} does not decode from its own JSON: {}", e.message));
    assert_eq!(
        serde_json::to_vec(&back).unwrap(),
        again,
        "a second round trip changed {value:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => round_trip::<JobRequest>(body),
        1 => round_trip::<RegisterHost>(body),
        2 => round_trip::<Heartbeat>(body),
        3 => round_trip::<LeaseFinish>(body),
        4 => round_trip::<FaucetRequest>(body),
        5 => round_trip::<AnchorRequest>(body),
        6 => round_trip::<CheckReport>(body),
        7 => round_trip::<ProofCommitRequest>(body),
        8 => round_trip::<ProofOpenRequest>(body),
        9 => round_trip::<DeploymentRequest>(body),
        10 => round_trip::<ScaleRequest>(body),
        _ => round_trip::<SessionRequest>(body),
    }
});

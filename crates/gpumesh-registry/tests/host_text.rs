//! Free text a host sends is cut to a bound before it is stored.

use gpumesh_registry::{MAX_HOST_TEXT, Params, Registry};
use gpumesh_types::{
    Address, Amount, GeoPoint, GpuModel, GpuOffer, JobRequest, LeaseState, Location, RegisterHost,
    RuntimeKind,
};

fn addr(n: u8) -> Address {
    Address::with_last_byte(n)
}

#[test]
fn a_finish_error_is_stored_cut_to_its_bound() {
    let mut r = Registry::new(Params {
        require_stake: false,
        ..Params::local()
    });
    let host = addr(1);
    r.register_host(
        host,
        RegisterHost {
            name: "frankfurt".into(),
            location: Location {
                point: GeoPoint::new(50.11, 8.68).unwrap(),
                country: "DE".parse().unwrap(),
            },
            price_per_gpu_hour: Amount::from_tokens(1),
            gpus: vec![GpuOffer {
                model: GpuModel::H100,
                count: 2,
                vram_mib: None,
                simulated: true,
            }],
            runtime: RuntimeKind::Process,
            images: vec![],
            challenge_url: None,
        },
        0,
    )
    .unwrap();
    let job = JobRequest::new(
        GpuModel::H100,
        1,
        GeoPoint::new(48.86, 2.35).unwrap(),
        Amount::from_tokens(2),
        60_000,
        "busybox",
        vec!["true".into()],
    );
    // A megabyte of multi-byte characters: cut on a character boundary.
    for (i, error) in ["é".repeat(1 << 19), "short".to_string()]
        .into_iter()
        .enumerate()
    {
        let id = r.submit_job(addr(9), job.clone(), 1_000).unwrap().id;
        r.escrow_opened(id, 1_000).unwrap();
        r.started(&host, id, Vec::new(), 2_000).unwrap();
        let state = r
            .finished(&host, id, None, Some(error.clone()), 3_000)
            .unwrap();
        assert_eq!(state, LeaseState::Failed);
        let stored = r.lease(id).unwrap().failure.clone().unwrap();
        if i == 0 {
            assert_eq!(stored.chars().count(), MAX_HOST_TEXT);
            assert!(error.starts_with(&stored));
        } else {
            assert_eq!(stored, error);
        }
    }
}

//! Round trips and network coordinates: what a host reports moves only its own
//! coordinate, and only on a local network; what a checker measures moves both ends.

use gpumesh_registry::{Params, Registry};
use gpumesh_types::{
    Address, Amount, ErrorCode, GeoPoint, GpuModel, GpuOffer, Location, Observation, Peer,
    RegisterHost, RuntimeKind,
};

fn addr(n: u8) -> Address {
    Address::with_last_byte(n)
}

fn host(name: &str, lat: f64, lon: f64, local: bool) -> RegisterHost {
    RegisterHost {
        name: name.into(),
        location: Location {
            point: GeoPoint::new(lat, lon).unwrap(),
            country: "DE".parse().unwrap(),
        },
        price_per_gpu_hour: Amount::parse_tokens("1").unwrap(),
        gpus: vec![GpuOffer {
            model: GpuModel::H100,
            count: 1,
            vram_mib: None,
            simulated: local,
        }],
        runtime: if local {
            RuntimeKind::Process
        } else {
            RuntimeKind::Container
        },
        images: vec![],
        challenge_url: (!local).then(|| "http://gpu.example.org:7701".into()),
    }
}

/// Two hosts and one measuring point between them.
fn network(params: Params) -> (Registry, u32) {
    let local = params.local;
    let mut r = Registry::new(Params {
        require_stake: false,
        ..params
    });
    r.register_host(addr(1), host("frankfurt", 50.11, 8.68, local), 0)
        .unwrap();
    r.register_host(addr(2), host("paris", 48.86, 2.35, local), 0)
        .unwrap();
    let anchor = r.add_anchor(GeoPoint::new(49.0, 6.0).unwrap()).unwrap();
    (r, anchor)
}

fn coordinates(r: &Registry, anchor: u32) -> [gpumesh_matcher::Coord; 3] {
    [
        Peer::Host(addr(1)),
        Peer::Host(addr(2)),
        Peer::Anchor(anchor),
    ]
    .map(|node| r.coordinate(node).unwrap())
}

#[test]
fn a_host_observation_moves_only_the_reporter() {
    let (mut r, anchor) = network(Params::local());
    let before = coordinates(&r, anchor);
    for peer in [Peer::Host(addr(2)), Peer::Anchor(anchor)] {
        for rtt_ms in [1.0, 500.0, 9_999.0] {
            r.host_observation(addr(1), &Observation { peer, rtt_ms })
                .unwrap();
        }
    }
    let after = coordinates(&r, anchor);
    assert_ne!(after[0], before[0], "the reporter's own coordinate moves");
    assert_eq!(after[1], before[1], "another host's coordinate stays");
    assert_eq!(after[2], before[2], "the anchor's coordinate stays");
}

#[test]
fn a_checker_measurement_moves_the_host_and_the_anchor() {
    let (mut r, anchor) = network(Params::local());
    let before = coordinates(&r, anchor);
    r.checker_measurement(addr(1), anchor, 40.0).unwrap();
    let after = coordinates(&r, anchor);
    assert_ne!(after[0], before[0]);
    assert_eq!(after[1], before[1]);
    assert_ne!(after[2], before[2]);
}

#[test]
fn a_public_network_takes_no_round_trips_from_hosts() {
    let (mut r, anchor) = network(Params::network());
    let before = coordinates(&r, anchor);
    for peer in [Peer::Host(addr(2)), Peer::Anchor(anchor)] {
        let err = r
            .host_observation(addr(1), &Observation { peer, rtt_ms: 5.0 })
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::NotLocalNetwork, "{err}");
    }
    assert_eq!(coordinates(&r, anchor), before, "nothing moved");
    // Checkers' measurements still refine them.
    r.checker_measurement(addr(1), anchor, 40.0).unwrap();
    assert_ne!(coordinates(&r, anchor)[0], before[0]);
}

#[test]
fn bad_observations_are_refused_and_move_nothing() {
    let (mut r, anchor) = network(Params::local());
    let before = coordinates(&r, anchor);
    let cases = [
        (addr(1), Peer::Host(addr(1)), 5.0, ErrorCode::InvalidRequest),
        (addr(1), Peer::Host(addr(7)), 5.0, ErrorCode::UnknownHost),
        (
            addr(1),
            Peer::Anchor(anchor + 1),
            5.0,
            ErrorCode::InvalidRequest,
        ),
        (
            addr(1),
            Peer::Anchor(anchor),
            0.0,
            ErrorCode::InvalidRequest,
        ),
        (
            addr(1),
            Peer::Anchor(anchor),
            -1.0,
            ErrorCode::InvalidRequest,
        ),
        (
            addr(1),
            Peer::Anchor(anchor),
            f64::NAN,
            ErrorCode::InvalidRequest,
        ),
        (
            addr(1),
            Peer::Anchor(anchor),
            10_001.0,
            ErrorCode::InvalidRequest,
        ),
        (addr(7), Peer::Anchor(anchor), 5.0, ErrorCode::UnknownHost),
    ];
    for (reporter, peer, rtt_ms, code) in cases {
        let err = r
            .host_observation(reporter, &Observation { peer, rtt_ms })
            .unwrap_err();
        assert_eq!(err.code(), code, "{peer:?} {rtt_ms}: {err}");
    }
    for (host, a, rtt_ms) in [
        (addr(7), anchor, 5.0),
        (addr(1), anchor + 1, 5.0),
        (addr(1), anchor, 0.0),
    ] {
        assert!(r.checker_measurement(host, a, rtt_ms).is_err());
    }
    assert_eq!(coordinates(&r, anchor), before);
}

//! Data-driven tests of ranking and explanations, and property tests of the indexed search
//! against the scan on random worlds with interleaved updates.

use expect_test::{Expect, expect};
use gpumesh_types::{Amount, Country, GeoPoint, GpuClass, GpuModel};
use proptest::prelude::*;

use crate::*;

fn tokens(t: &str) -> Amount {
    Amount::parse_tokens(t).unwrap()
}

fn country(c: &str) -> Country {
    c.parse().unwrap()
}

/// (name, lat, lon, country, price, tier, images, [(model, count)])
type Row<'a> = (
    &'a str,
    f64,
    f64,
    &'a str,
    &'a str,
    u8,
    &'a [&'a str],
    &'a [(GpuModel, u8)],
);

fn world(rows: &[Row]) -> (Matcher, Vec<String>) {
    let mut m = Matcher::default();
    let mut names = Vec::new();
    for (name, lat, lon, c, price, tier, images, gpus) in rows {
        let spec = HostSpec {
            point: GeoPoint {
                lat: *lat,
                lon: *lon,
            },
            country: country(c),
            price_per_gpu_hour: tokens(price),
            tier: *tier,
            images: images.iter().map(|s| s.to_string()).collect(),
        };
        let mut first = 0u16;
        let groups: Vec<GroupSpec> = gpus
            .iter()
            .map(|&(model, count)| {
                let g = GroupSpec {
                    model,
                    vram_mib: model.spec().vram_mib,
                    first_index: first,
                    count,
                };
                first += count as u16;
                g
            })
            .collect();
        m.add_host(&spec, &groups).unwrap();
        names.push(name.to_string());
    }
    (m, names)
}

fn check(m: &mut Matcher, names: &[String], request: Request, expected: Expect) {
    let scan = m.clone().book_scan(&request, None);
    let got = match m.book(&request, None) {
        Ok(b) => {
            assert_eq!(
                scan.map(|s| (s.group, s.mask)),
                Ok((b.group, b.mask)),
                "the scan agrees"
            );
            let gpus: Vec<u16> = b.gpu_indices().collect();
            format!(
                "{} gpus {gpus:?} {:.0} km {:.0} ms at {}",
                names[b.host.0 as usize],
                b.distance_km,
                b.rtt_ms,
                b.price_per_gpu_hour.tokens()
            )
        }
        Err(Unmatched) => {
            assert!(scan.is_err(), "the scan agrees");
            format!(
                "no match: {}",
                m.explain(&request)
                    .describe(|h| names[h.0 as usize].clone())
            )
        }
    };
    expected.assert_eq(&got);
}

const MUMBAI: GeoPoint = GeoPoint {
    lat: 19.076,
    lon: 72.8777,
};
const PARIS: GeoPoint = GeoPoint {
    lat: 48.8566,
    lon: 2.3522,
};

fn gaming(near: GeoPoint, max_rtt: f64, cap: &str) -> Request {
    Request {
        gpu: GpuSelector::Class(GpuClass::Consumer),
        max_rtt_ms: Some(max_rtt),
        policy: RankPolicy::Experience,
        ..Request::model(GpuModel::Rtx4090, 1, near, tokens(cap))
    }
}

#[test]
fn policies_rank_differently() {
    use GpuModel::*;
    let rows: &[Row] = &[
        ("frankfurt", 50.11, 8.68, "DE", "2.50", 1, &[], &[(H100, 8)]),
        ("warsaw", 52.23, 21.01, "PL", "1.80", 1, &[], &[(H100, 8)]),
        ("ashburn", 39.04, -77.49, "US", "1.60", 2, &[], &[(H100, 8)]),
    ];
    let (mut m, names) = world(rows);
    let request = |policy| Request {
        policy,
        ..Request::model(H100, 2, PARIS, tokens("3"))
    };
    check(
        &mut m,
        &names,
        request(RankPolicy::Experience),
        expect!["frankfurt gpus [0, 1] 478 km 12 ms at 2.5"],
    );
    check(
        &mut m,
        &names,
        request(RankPolicy::Price),
        expect!["ashburn gpus [0, 1] 6186 km 103 ms at 1.6"],
    );
    check(
        &mut m,
        &names,
        request(RankPolicy::Balanced),
        expect!["warsaw gpus [0, 1] 1366 km 26 ms at 1.8"],
    );
    let eu = Request {
        countries: vec![country("DE"), country("FR")],
        policy: RankPolicy::Price,
        ..request(RankPolicy::Price)
    };
    check(
        &mut m,
        &names,
        eu,
        expect!["frankfurt gpus [2, 3] 478 km 12 ms at 2.5"],
    );
    let not_us = Request {
        exclude_countries: vec![country("US")],
        ..request(RankPolicy::Price)
    };
    check(
        &mut m,
        &names,
        not_us,
        expect!["warsaw gpus [2, 3] 1366 km 26 ms at 1.8"],
    );
    let tier1 = Request {
        max_tier: 1,
        ..request(RankPolicy::Price)
    };
    check(
        &mut m,
        &names,
        tier1,
        expect!["warsaw gpus [4, 5] 1366 km 26 ms at 1.8"],
    );
}

#[test]
fn single_gpu_jobs_do_not_fragment_big_servers() {
    use GpuModel::*;
    let rows: &[Row] = &[
        (
            "server-8",
            50.11,
            8.68,
            "DE",
            "0.50",
            1,
            &[],
            &[(Rtx4090, 8)],
        ),
        ("pc-1", 50.12, 8.69, "DE", "0.50", 1, &[], &[(Rtx4090, 1)]),
        (
            "server-4",
            50.13,
            8.70,
            "DE",
            "0.50",
            1,
            &[],
            &[(Rtx4090, 4)],
        ),
    ];
    let (mut m, names) = world(rows);
    let one = Request {
        policy: RankPolicy::Experience,
        ..Request::model(Rtx4090, 1, PARIS, tokens("1"))
    };
    check(
        &mut m,
        &names,
        one.clone(),
        expect!["pc-1 gpus [0] 479 km 12 ms at 0.5"],
    );
    check(
        &mut m,
        &names,
        Request {
            count: 3,
            ..one.clone()
        },
        expect!["server-4 gpus [0, 1, 2] 480 km 12 ms at 0.5"],
    );
    check(
        &mut m,
        &names,
        one.clone(),
        expect!["server-4 gpus [3] 480 km 12 ms at 0.5"],
    );
    check(
        &mut m,
        &names,
        one,
        expect!["server-8 gpus [0] 478 km 12 ms at 0.5"],
    );
}

#[test]
fn gaming_sessions_respect_the_round_trip_bound_and_say_why_not() {
    use GpuModel::*;
    let rows: &[Row] = &[
        (
            "singapore",
            1.35,
            103.82,
            "SG",
            "0.55",
            1,
            &["game:dota"],
            &[(Rtx4090, 4)],
        ),
        (
            "frankfurt",
            50.11,
            8.68,
            "DE",
            "0.45",
            1,
            &["game:dota", "game:cs"],
            &[(Rtx4080, 2)],
        ),
        (
            "mumbai-dc",
            19.08,
            72.88,
            "IN",
            "2.00",
            1,
            &[],
            &[(H100, 8)],
        ),
    ];
    let (mut m, names) = world(rows);
    check(
        &mut m,
        &names,
        gaming(MUMBAI, 80.0, "1"),
        expect!["singapore gpus [0] 3904 km 66 ms at 0.55"],
    );
    check(
        &mut m,
        &names,
        gaming(MUMBAI, 30.0, "1"),
        expect![
            "no match: 6 consumer-class GPUs registered; 6 online; 5 in standby; 5 on hosts with 1 free; 5 at or under 1 per GPU-hour; 0 within 30 ms of 19.08,72.88; nearest is 66 ms away (singapore)"
        ],
    );
    let cs = Request {
        image: Some("game:cs".into()),
        image_policy: ImagePolicy::Require,
        ..gaming(MUMBAI, 150.0, "1")
    };
    check(
        &mut m,
        &names,
        cs.clone(),
        expect!["frankfurt gpus [0] 6564 km 109 ms at 0.45"],
    );
    let prefer = Request {
        image_policy: ImagePolicy::Prefer,
        image: Some("game:unknown".into()),
        ..cs.clone()
    };
    check(
        &mut m,
        &names,
        prefer,
        expect!["singapore gpus [1] 3904 km 66 ms at 0.55"],
    );
    check(
        &mut m,
        &names,
        Request {
            image: Some("game:unknown".into()),
            ..cs
        },
        expect![
            "no match: 6 consumer-class GPUs registered; 6 online; 3 in standby; 3 on hosts with 1 free; 3 at or under 1 per GPU-hour; 0 with game:unknown present"
        ],
    );
}

#[test]
fn explanations_name_the_first_constraint_that_ran_out() {
    use GpuModel::*;
    let rows: &[Row] = &[
        ("a", 50.11, 8.68, "DE", "2.50", 2, &[], &[(H100, 4)]),
        ("b", 52.37, 4.90, "NL", "2.10", 3, &[], &[(H100, 2)]),
    ];
    let (mut m, names) = world(rows);
    let base = Request::model(H100, 1, PARIS, tokens("3"));
    check(
        &mut m,
        &names,
        Request {
            count: 5,
            ..base.clone()
        },
        expect![
            "no match: 6 H100 registered; 6 online; 6 in standby; 0 on hosts with 5 free; the most free on one host is 4 (a)"
        ],
    );
    check(
        &mut m,
        &names,
        Request {
            max_price_per_gpu_hour: tokens("2"),
            ..base.clone()
        },
        expect![
            "no match: 6 H100 registered; 6 online; 6 in standby; 6 on hosts with 1 free; 0 at or under 2 per GPU-hour; the cheapest is 2.1 (b)"
        ],
    );
    check(
        &mut m,
        &names,
        Request {
            max_tier: 1,
            ..base.clone()
        },
        expect![
            "no match: 6 H100 registered; 6 online; 6 in standby; 6 on hosts with 1 free; 6 at or under 3 per GPU-hour; 0 of tier 1 or better; the best tier is 2 (a)"
        ],
    );
    check(
        &mut m,
        &names,
        Request {
            min_vram_mib: 90_000,
            ..base.clone()
        },
        expect![
            "no match: 6 H100 registered; 6 online; 6 in standby; 6 on hosts with 1 free; 0 with at least 90000 MiB; the most memory is 81559 MiB (a)"
        ],
    );
    check(
        &mut m,
        &names,
        Request {
            countries: vec![country("FR")],
            ..base.clone()
        },
        expect![
            "no match: 6 H100 registered; 6 online; 6 in standby; 6 on hosts with 1 free; 6 at or under 3 per GPU-hour; 0 in allowed countries"
        ],
    );
    m.set_online(HostId(0), false).unwrap();
    m.set_online(HostId(1), false).unwrap();
    check(
        &mut m,
        &names,
        base.clone(),
        expect!["no match: 6 H100 registered; 0 online"],
    );
    check(
        &mut m,
        &names,
        Request {
            gpu: GpuSelector::Model(L40S),
            ..base
        },
        expect!["no match: no host offers L40S"],
    );
}

#[test]
fn reservations_expire_commit_and_release() {
    use GpuModel::*;
    let (mut m, _) = world(&[("a", 0.0, 0.0, "DE", "1", 1, &[], &[(A10, 2)])]);
    let r = Request::model(A10, 2, GeoPoint { lat: 0.0, lon: 0.0 }, tokens("1"));
    let held = m.book(&r, Some(1_000)).unwrap();
    assert!(m.book(&r, None).is_err(), "both GPUs are held");
    assert!(m.expire(999).is_empty());
    assert_eq!(m.expire(1_000), vec![held.reservation]);
    let again = m.book(&r, Some(2_000)).unwrap();
    m.commit(again.reservation).unwrap();
    assert!(
        m.expire(5_000).is_empty(),
        "a committed reservation does not expire"
    );
    assert_eq!(
        m.release(held.reservation),
        Err(MatcherError::UnknownReservation),
        "stale ids are refused"
    );
    m.release(again.reservation).unwrap();
    assert_eq!(m.free_gpu_count(), 2);
    assert!(
        m.reserve_exact(again.group, 0b100, None).is_err(),
        "no GPU 2 in the group"
    );
}

#[test]
fn measured_round_trips_refine_the_estimate() {
    use GpuModel::*;
    let rows: &[Row] = &[
        (
            "near-but-slow",
            19.5,
            73.5,
            "IN",
            "0.5",
            1,
            &[],
            &[(Rtx4090, 1)],
        ),
        (
            "farther-but-fast",
            21.0,
            79.0,
            "IN",
            "0.5",
            1,
            &[],
            &[(Rtx4090, 1)],
        ),
    ];
    let (mut m, names) = world(rows);
    let request = gaming(MUMBAI, 60.0, "1");
    check(
        &mut m.clone(),
        &names,
        request.clone(),
        expect!["near-but-slow gpus [0] 81 km 5 ms at 0.5"],
    );
    // A checker in Mumbai measures 40 ms to the first host and 12 ms to the second.
    let anchor = m.add_anchor(MUMBAI);
    for i in 0..300u64 {
        let (h, rtt) = if i % 2 == 0 {
            (HostId(0), 40.0)
        } else {
            (HostId(1), 12.0)
        };
        m.observe(NetNode::Anchor(anchor), NetNode::Host(h), rtt);
    }
    check(
        &mut m,
        &names,
        request,
        expect!["farther-but-fast gpus [0] 674 km 12 ms at 0.5"],
    );
}

#[test]
fn a_snapshot_rebuilds_the_same_matcher() {
    use GpuModel::*;
    let (mut m, _) = world(&[
        (
            "a",
            10.0,
            10.0,
            "DE",
            "1",
            1,
            &["img"],
            &[(A10, 2), (T4, 3)],
        ),
        ("b", 11.0, 10.0, "FR", "2", 2, &[], &[(A10, 4)]),
    ]);
    let r = Request::model(
        A10,
        1,
        GeoPoint {
            lat: 10.0,
            lon: 10.0,
        },
        tokens("5"),
    );
    m.book(&r, Some(10)).unwrap();
    let mut rebuilt = Matcher::from_snapshot(&m.snapshot()).unwrap();
    assert_eq!(rebuilt.snapshot(), m.snapshot());
    assert_eq!(
        rebuilt.book(&r, None).map(|b| (b.group, b.mask)),
        m.book(&r, None).map(|b| (b.group, b.mask))
    );
    assert_eq!(
        rebuilt.expire(10).len(),
        1,
        "reservations and their TTLs survive"
    );
}

// ---- property tests against the scan ----

#[derive(Clone, Debug)]
struct HostGen {
    lat: f64,
    lon: f64,
    country: usize,
    price: u8,
    tier: u8,
    images: u8,
    groups: Vec<(usize, u8, bool)>,
}

const MODELS: [GpuModel; 4] = [
    GpuModel::H100,
    GpuModel::Rtx4090,
    GpuModel::Rtx3090,
    GpuModel::A100_80,
];
const COUNTRIES: [&str; 5] = ["DE", "US", "IN", "BR", "JP"];

fn host_gen() -> impl Strategy<Value = HostGen> {
    (
        prop_oneof![-89.9f64..89.9, Just(89.0), Just(-89.0), Just(0.0)],
        prop_oneof![-180.0f64..180.0, Just(179.9), Just(-179.9)],
        0..COUNTRIES.len(),
        0u8..4,
        1u8..4,
        0u8..4,
        proptest::collection::vec((0..MODELS.len(), 1u8..9, any::<bool>()), 1..3),
    )
        .prop_map(|(lat, lon, country, price, tier, images, groups)| HostGen {
            lat,
            lon,
            country,
            price,
            tier,
            images,
            groups,
        })
}

#[derive(Clone, Debug)]
struct RequestGen {
    model: usize,
    class: bool,
    count: u16,
    lat: f64,
    lon: f64,
    cap: u8,
    tier: u8,
    allow: Option<usize>,
    deny: Option<usize>,
    rtt: Option<u16>,
    image: u8,
    need: u8,
    policy: u8,
    big_vram: bool,
}

fn request_gen() -> impl Strategy<Value = RequestGen> {
    (
        (
            0..MODELS.len(),
            any::<bool>(),
            1u16..6,
            -90.0f64..90.0,
            -180.0f64..180.0,
            0u8..5,
            1u8..4,
        ),
        (
            proptest::option::of(0..COUNTRIES.len()),
            proptest::option::of(0..COUNTRIES.len()),
            proptest::option::of(5u16..200),
            0u8..4,
            0u8..3,
            0u8..3,
            any::<bool>(),
        ),
    )
        .prop_map(
            |(
                (model, class, count, lat, lon, cap, tier),
                (allow, deny, rtt, image, need, policy, big_vram),
            )| RequestGen {
                model,
                class,
                count,
                lat,
                lon,
                cap,
                tier,
                allow,
                deny,
                rtt,
                image,
                need,
                policy,
                big_vram,
            },
        )
}

impl RequestGen {
    fn build(&self) -> Request {
        let model = MODELS[self.model];
        Request {
            gpu: if self.class {
                GpuSelector::Class(model.class())
            } else {
                GpuSelector::Model(model)
            },
            count: self.count,
            min_vram_mib: if self.big_vram { 30_000 } else { 0 },
            near: GeoPoint {
                lat: self.lat,
                lon: self.lon,
            },
            max_price_per_gpu_hour: Amount(self.cap as u128 + 1),
            max_tier: self.tier,
            countries: self
                .allow
                .map(|c| vec![country(COUNTRIES[c])])
                .unwrap_or_default(),
            exclude_countries: self
                .deny
                .map(|c| vec![country(COUNTRIES[c])])
                .unwrap_or_default(),
            max_rtt_ms: self.rtt.map(f64::from),
            image: Some(format!("img{}", self.image)),
            image_policy: [ImagePolicy::Any, ImagePolicy::Prefer, ImagePolicy::Require]
                [self.need as usize],
            policy: [
                RankPolicy::Price,
                RankPolicy::Experience,
                RankPolicy::Balanced,
            ][self.policy as usize],
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Book(RequestGen),
    Release(usize),
    Commit(usize),
    Online(usize, bool),
    Price(usize, u8),
    Tier(usize, u8),
    Move(usize, f64, f64),
    Expire(u64),
    Observe(usize, u16),
    Enable(usize, u64),
    /// A host registers.
    Add(HostGen),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => request_gen().prop_map(Op::Book),
        2 => any::<usize>().prop_map(Op::Release),
        1 => any::<usize>().prop_map(Op::Commit),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(h, o)| Op::Online(h, o)),
        1 => (any::<usize>(), 0u8..4).prop_map(|(h, p)| Op::Price(h, p)),
        1 => (any::<usize>(), 1u8..4).prop_map(|(h, t)| Op::Tier(h, t)),
        1 => (any::<usize>(), -89.0f64..89.0, -180.0f64..180.0).prop_map(|(h, a, o)| Op::Move(h, a, o)),
        1 => (0u64..50).prop_map(Op::Expire),
        1 => (any::<usize>(), 1u16..300).prop_map(|(h, r)| Op::Observe(h, r)),
        1 => (any::<usize>(), any::<u64>()).prop_map(|(g, mask)| Op::Enable(g, mask)),
        1 => host_gen().prop_map(Op::Add),
    ]
}

fn build_world(hosts: &[HostGen], anchors: bool) -> Matcher {
    let mut m = Matcher::default();
    for h in hosts {
        add_host(&mut m, h);
    }
    if anchors {
        for (lat, lon) in [(50.0, 8.0), (19.0, 72.0), (-23.0, -46.0)] {
            m.add_anchor(GeoPoint { lat, lon });
        }
    } else {
        // More than 64 images: the image filter is no longer exact and hosts' lists decide.
        let spec = HostSpec {
            point: GeoPoint { lat: 0.0, lon: 0.0 },
            country: country("DE"),
            price_per_gpu_hour: Amount(1),
            tier: 3,
            images: (0..70).map(|i| format!("img{}", 4 + i)).collect(),
        };
        let group = GroupSpec {
            model: GpuModel::Rtx3090,
            vram_mib: 1,
            first_index: 0,
            count: 1,
        };
        m.add_host(&spec, &[group]).unwrap();
    }
    m
}

fn add_host(m: &mut Matcher, h: &HostGen) {
    let spec = HostSpec {
        point: GeoPoint {
            lat: h.lat,
            lon: h.lon,
        },
        country: country(COUNTRIES[h.country]),
        price_per_gpu_hour: Amount(h.price as u128 + 1),
        tier: h.tier,
        images: (0..4)
            .filter(|i| h.images & (1 << i) != 0)
            .map(|i| format!("img{i}"))
            .collect(),
    };
    let mut first = 0;
    let mut seen = Vec::new();
    let groups: Vec<GroupSpec> = h
        .groups
        .iter()
        .filter(|(model, _, _)| {
            let fresh = !seen.contains(model);
            seen.push(*model);
            fresh
        })
        .map(|&(model, count, big)| {
            let model = MODELS[model];
            let g = GroupSpec {
                model,
                vram_mib: model.spec().vram_mib / if big { 1 } else { 2 },
                first_index: first,
                count,
            };
            first += count as u16;
            g
        })
        .collect();
    m.add_host(&spec, &groups).unwrap();
}

/// The same host, moved into a box of about 1° by 2° around Frankfurt: packed worlds
/// make leaves overflow and split.
fn packed(h: &HostGen) -> HostGen {
    HostGen {
        lat: 50.0 + h.lat / 90.0,
        lon: 8.0 + h.lon / 180.0,
        ..h.clone()
    }
}

/// Free masks agree with the live reservations, and no GPU is held twice.
fn check_invariants(m: &Matcher) -> Result<(), TestCaseError> {
    let mut held = vec![0u64; m.groups.len()];
    for s in m.slots.iter().filter(|s| s.live) {
        prop_assert_eq!(held[s.group as usize] & s.mask, 0, "a GPU is held twice");
        held[s.group as usize] |= s.mask;
    }
    for (i, g) in m.groups.iter().enumerate() {
        prop_assert_eq!(
            g.free,
            g.full_mask() & !held[i],
            "free mask of group {} disagrees with its reservations",
            i
        );
        prop_assert_eq!(
            g.price_f,
            g.price as f64,
            "group {} has a stale f64 price",
            i
        );
        prop_assert_eq!(
            g.price_lo,
            index::f32_below(g.price_f),
            "group {} has a stale f32 price",
            i
        );
    }
    // Each tree holds exactly the available groups that belong in it, and is sound.
    for (t, tree) in m.trees.iter().enumerate() {
        let mut got = tree.check(&m.groups).map_err(TestCaseError::fail)?;
        got.sort_unstable();
        let want: Vec<u32> = (0..m.groups.len() as u32)
            .filter(|&id| index::trees_of(&m.groups[id as usize]).is_some_and(|ts| ts.contains(&t)))
            .collect();
        prop_assert_eq!(got, want, "tree {} holds the wrong groups", t);
    }
    Ok(())
}

/// The booked group satisfies every hard constraint of the request.
fn check_constraints(
    m: &Matcher,
    r: &Request,
    b: &Booking,
    free_before: u64,
) -> Result<(), TestCaseError> {
    let g = &m.groups[b.group.0 as usize];
    let h = &m.hosts[g.host as usize];
    prop_assert!(crate::models_mask(r.gpu) & (1 << g.model as usize) != 0);
    prop_assert!(g.online);
    prop_assert_eq!(b.mask & !free_before, 0, "booked a GPU that was not free");
    prop_assert_eq!(b.mask.count_ones() as u16, r.count);
    prop_assert!(g.vram_mib >= r.min_vram_mib);
    prop_assert!(b.price_per_gpu_hour <= r.max_price_per_gpu_hour);
    prop_assert!(g.tier <= r.max_tier);
    let c = m.countries[g.country as usize];
    prop_assert!(r.countries.is_empty() || r.countries.contains(&c));
    prop_assert!(!r.exclude_countries.contains(&c));
    if let Some(bound) = r.max_rtt_ms {
        prop_assert!(b.rtt_ms <= bound);
    }
    if r.image_policy == ImagePolicy::Require {
        let id = m.images[r.image.as_ref().unwrap()];
        prop_assert!(h.images.contains(&id));
    }
    Ok(())
}

/// A group that left its leaf comes back to it only while the leaf's box still covers its
/// point: here the leaf splits while the groups at both ends of it are booked, so one of
/// them finds its old leaf shrunk away from it and must be placed from the root.
#[test]
fn a_group_returns_to_its_leaf_only_while_the_leaf_covers_it() {
    let mut m = Matcher::default();
    let host = |m: &mut Matcher, i: usize| {
        let spec = HostSpec {
            point: GeoPoint {
                lat: 50.0,
                lon: 8.0 + i as f64 * 0.01,
            },
            country: country("DE"),
            price_per_gpu_hour: tokens("1"),
            tier: 1,
            images: Vec::new(),
        };
        let group = GroupSpec {
            model: GpuModel::H100,
            vram_mib: 81_920,
            first_index: 0,
            count: 1,
        };
        m.add_host(&spec, &[group]).unwrap().1[0]
    };
    let first: Vec<GroupId> = (0..20).map(|i| host(&mut m, i)).collect();
    let near = |i: usize| {
        Request::model(
            GpuModel::H100,
            1,
            GeoPoint {
                lat: 50.0,
                lon: 8.0 + i as f64 * 0.01,
            },
            tokens("2"),
        )
    };
    let west = m.book(&near(0), None).unwrap();
    let east = m.book(&near(19), None).unwrap();
    assert_eq!((west.group, east.group), (first[0], first[19]));
    let leaves_before = m.trees[GpuModel::H100 as usize].leaves.len();
    // Enough new hosts in between to overflow the leaf and split it.
    for i in 0..40 {
        host(&mut m, 1 + i % 18);
    }
    assert!(m.trees[GpuModel::H100 as usize].leaves.len() > leaves_before);
    m.release(west.reservation).unwrap();
    m.release(east.reservation).unwrap();
    for tree in &m.trees {
        tree.check(&m.groups).unwrap();
    }
    assert_eq!(m.book(&near(0), None).unwrap().group, first[0]);
    assert_eq!(m.book(&near(19), None).unwrap().group, first[19]);
}

/// Runs `ops` on a world of `hosts` (`packed`: all near one city), checking every booking
/// against the scan and the matcher's invariants after every step.
fn index_agrees_with_scan(
    hosts: &[HostGen],
    anchors: bool,
    ops: Vec<Op>,
    pack: bool,
) -> Result<(), TestCaseError> {
    let place = |h: &HostGen| if pack { packed(h) } else { h.clone() };
    let hosts: Vec<HostGen> = hosts.iter().map(place).collect();
    let mut m = build_world(&hosts, anchors);
    let mut live: Vec<ReservationId> = Vec::new();
    let mut now = 0u64;
    for op in ops {
        let n = m.hosts.len();
        match op {
            Op::Book(wanted) => {
                let r = wanted.build();
                let mut oracle = m.clone();
                let expected = oracle.book_scan(&r, Some(now + 20));
                let free_before: Vec<u64> = m.groups.iter().map(|g| g.servable()).collect();
                let got = m.book(&r, Some(now + 20));
                match (&got, &expected) {
                    (Ok(b), Ok(e)) => {
                        prop_assert_eq!(
                            (b.group, b.mask),
                            (e.group, e.mask),
                            "index and scan differ for {:?}",
                            r
                        );
                        prop_assert_eq!(b.score, e.score);
                        check_constraints(&m, &r, b, free_before[b.group.0 as usize])?;
                        live.push(b.reservation);
                    }
                    (Err(_), Err(_)) => {
                        let why = m.explain(&r);
                        prop_assert!(
                            why.failed.is_some(),
                            "an unmatched request names a constraint: {:?}",
                            why
                        );
                    }
                    _ => prop_assert!(false, "index {:?} vs scan {:?} for {:?}", got, expected, r),
                }
            }
            Op::Release(i) if !live.is_empty() => {
                let id = live.swap_remove(i % live.len());
                let _ = m.release(id);
            }
            Op::Commit(i) if !live.is_empty() => {
                let _ = m.commit(live[i % live.len()]);
            }
            Op::Online(h, on) => m.set_online(HostId((h % n) as u32), on).unwrap(),
            Op::Price(h, p) => m
                .set_price(HostId((h % n) as u32), Amount(p as u128 + 1))
                .unwrap(),
            Op::Tier(h, t) => m.set_tier(HostId((h % n) as u32), t).unwrap(),
            Op::Move(h, lat, lon) => m
                .set_location(
                    HostId((h % n) as u32),
                    GeoPoint { lat, lon },
                    country(COUNTRIES[h % 5]),
                )
                .unwrap(),
            Op::Expire(dt) => {
                now += dt;
                let gone = m.expire(now);
                live.retain(|id| !gone.contains(id));
            }
            Op::Enable(g, mask) => {
                let g = g % m.groups.len();
                // Mostly all enabled, sometimes some GPUs held back (no stake).
                let mask = if mask % 3 == 0 { mask } else { u64::MAX };
                m.set_enabled(GroupId(g as u32), mask).unwrap();
            }
            Op::Add(h) => add_host(&mut m, &place(&h)),
            Op::Observe(h, rtt) => {
                let anchor = (h % 3) as u32;
                m.observe(
                    NetNode::Anchor(anchor),
                    NetNode::Host(HostId((h % n) as u32)),
                    rtt as f64,
                );
            }
            _ => {}
        }
        check_invariants(&m)?;
    }
    // A rebuilt index answers like the incrementally maintained one.
    let mut rebuilt = Matcher::from_snapshot(&m.snapshot()).unwrap();
    let probe = Request::model(
        GpuModel::H100,
        1,
        GeoPoint {
            lat: 10.0,
            lon: 10.0,
        },
        Amount(5),
    );
    prop_assert_eq!(
        rebuilt.book(&probe, None).map(|b| (b.group, b.mask)),
        m.book(&probe, None).map(|b| (b.group, b.mask))
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_index_chooses_what_the_scan_chooses(
        hosts in proptest::collection::vec(host_gen(), 1..50),
        anchors in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        index_agrees_with_scan(&hosts, anchors, ops, false)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(6))]

    /// Worlds big and dense enough that leaves overflow and split as hosts register, while
    /// groups leave their trees and come back to the leaves they left.
    #[test]
    fn the_index_chooses_what_the_scan_chooses_in_packed_worlds(
        hosts in proptest::collection::vec(host_gen(), 300..600),
        anchors in any::<bool>(),
        ops in proptest::collection::vec(op(), 100..250),
    ) {
        index_agrees_with_scan(&hosts, anchors, ops, true)?;
    }
}

//! Tests of the whole protocol: honest proofs verify, every kind of tampering is rejected
//! with its own failure, skipping hosts are caught at the predicted rate, and the kernel
//! agrees with a naive integer product.

use alloy_primitives::B256;
use proptest::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::matrix::{self, Streams};
use crate::merkle::{self, Tree};
use crate::*;

fn challenge(seed: u8, params: ProofParams) -> Challenge {
    Challenge {
        seed: B256::repeat_byte(seed),
        params,
    }
}

fn rng(seed: u64) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed)
}

/// C = A·B by a naive triple loop over the derived matrices.
fn naive_product(challenge: &Challenge) -> Vec<Vec<i32>> {
    let ProofParams { rows, inner, .. } = challenge.params;
    let inner = inner as usize;
    let streams = Streams::new(&challenge.seed);
    let mut b = vec![vec![0i32; inner]; inner];
    let mut bytes = vec![0u8; inner];
    for (k, b_row) in b.iter_mut().enumerate() {
        streams.b_row_bytes(k as u32, &mut bytes);
        for (dst, &x) in b_row.iter_mut().zip(&bytes) {
            *dst = i32::from(x as i8);
        }
    }
    (0..rows)
        .map(|i| {
            let a = streams.a_row(i, inner);
            (0..inner)
                .map(|j| (0..inner).map(|k| i32::from(a[k]) * b[k][j]).sum())
                .collect()
        })
        .collect()
}

fn naive_root(challenge: &Challenge) -> B256 {
    let mut buf = Vec::new();
    let leaves = naive_product(challenge)
        .iter()
        .enumerate()
        .map(|(i, row)| merkle::leaf(i as u32, row, &mut buf))
        .collect();
    Tree::new(leaves).root()
}

/// A small honest proof, its asked rows and opening.
fn honest(seed: u8) -> (Challenge, Proved, Vec<u32>, Opening) {
    let ch = challenge(
        seed,
        ProofParams {
            rows: 37,
            inner: 32,
            spot_rows: 8,
        },
    );
    let proved = prove(&ch).unwrap();
    let asked = pick_rows(&ch.params, &mut rng(seed.into()));
    let opening = proved.open(&asked).unwrap();
    (ch, proved, asked, opening)
}

#[test]
fn honest_proof_verifies_at_every_size() {
    for params in [
        ProofParams {
            rows: 1,
            inner: 16,
            spot_rows: 1,
        },
        ProofParams {
            rows: 2,
            inner: 16,
            spot_rows: 2,
        },
        ProofParams {
            rows: 300,
            inner: 48,
            spot_rows: 300,
        },
        ProofParams::LOCAL,
    ] {
        let ch = challenge(7, params);
        let proved = prove(&ch).unwrap();
        for seed in 0..5 {
            let asked = pick_rows(&params, &mut rng(seed));
            assert_eq!(asked.len(), usize::from(params.spot_rows));
            assert!(asked.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
            let opening = proved.open(&asked).unwrap();
            assert_eq!(
                verify(&ch, proved.root(), &asked, &opening, &mut rng(seed + 100)),
                Ok(())
            );
        }
    }
}

#[test]
fn tampering_is_rejected_with_its_own_failure() {
    let (ch, proved, asked, opening) = honest(1);
    let root = proved.root();
    let check = |opening: &Opening, asked: &[u32]| verify(&ch, root, asked, opening, &mut rng(9));
    assert_eq!(check(&opening, &asked), Ok(()));

    let mut o = opening.clone();
    o.rows[3].values[5] += 1;
    // The leaf changes, so the path no longer leads to the root.
    assert_eq!(
        check(&o, &asked),
        Err(ProofFailure::BadPath(o.rows[3].index))
    );

    let mut o = opening.clone();
    o.rows[2].path[1] = B256::repeat_byte(0xab);
    assert_eq!(
        check(&o, &asked),
        Err(ProofFailure::BadPath(o.rows[2].index))
    );

    let mut o = opening.clone();
    o.rows[2].path.push(B256::ZERO);
    assert_eq!(
        check(&o, &asked),
        Err(ProofFailure::BadPath(o.rows[2].index))
    );

    let mut o = opening.clone();
    let removed = o.rows.remove(4);
    assert_eq!(
        check(&o, &asked),
        Err(ProofFailure::MissingRow(removed.index))
    );

    let extra = (0..ch.params.rows).find(|r| !asked.contains(r)).unwrap();
    let mut o = opening.clone();
    o.rows.extend(proved.open(&[extra]).unwrap().rows);
    assert_eq!(check(&o, &asked), Err(ProofFailure::UnaskedRow(extra)));

    let mut o = opening.clone();
    o.rows.push(o.rows[0].clone());
    assert_eq!(check(&o, &asked).map_err(|e| e.code()), Err("malformed"));

    let mut o = opening.clone();
    o.rows[1].values.pop();
    assert_eq!(
        check(&o, &asked),
        Err(ProofFailure::WrongLength {
            row: o.rows[1].index,
            expected: 32,
            got: 31
        })
    );

    // Opening another row's values under this row's index: the path fails.
    let mut o = opening.clone();
    o.rows[0].values = o.rows[1].values.clone();
    assert_eq!(
        check(&o, &asked),
        Err(ProofFailure::BadPath(o.rows[0].index))
    );

    // A root from another proof.
    let (_, other, _, _) = honest(2);
    assert_eq!(
        verify(&ch, other.root(), &asked, &opening, &mut rng(9)),
        Err(ProofFailure::BadPath(asked[0]))
    );
}

#[test]
fn a_committed_wrong_row_fails_freivalds() {
    // Commit to a product with one wrong entry: paths check out, the values do not.
    let ch = challenge(
        3,
        ProofParams {
            rows: 20,
            inner: 16,
            spot_rows: 20,
        },
    );
    let mut c = naive_product(&ch);
    c[11][4] -= 1;
    let mut buf = Vec::new();
    let tree = Tree::new(
        c.iter()
            .enumerate()
            .map(|(i, row)| merkle::leaf(i as u32, row, &mut buf))
            .collect(),
    );
    let asked: Vec<u32> = (0..20).collect();
    let opening = Opening {
        rows: asked
            .iter()
            .map(|&i| OpenedRow {
                index: i,
                values: c[i as usize].clone(),
                path: tree.path(i),
            })
            .collect(),
    };
    for seed in 0..20 {
        assert_eq!(
            verify(&ch, tree.root(), &asked, &opening, &mut rng(seed)),
            Err(ProofFailure::WrongRow(11))
        );
    }
}

#[test]
fn a_proof_for_another_seed_fails() {
    let (ch, proved, asked, opening) = honest(4);
    let other = Challenge {
        seed: B256::repeat_byte(5),
        ..ch
    };
    let result = verify(&other, proved.root(), &asked, &opening, &mut rng(0));
    assert_eq!(result, Err(ProofFailure::WrongRow(asked[0])));
}

#[test]
fn failure_codes_are_stable() {
    let codes: Vec<&str> = [
        ProofFailure::MissingRow(1),
        ProofFailure::UnaskedRow(1),
        ProofFailure::WrongLength {
            row: 1,
            expected: 2,
            got: 3,
        },
        ProofFailure::BadPath(1),
        ProofFailure::WrongRow(1),
        ProofFailure::Malformed("x".into()),
    ]
    .iter()
    .map(ProofFailure::code)
    .collect();
    assert_eq!(
        codes,
        [
            "missing_row",
            "unasked_row",
            "wrong_length",
            "bad_path",
            "wrong_row",
            "malformed"
        ]
    );
}

#[test]
fn opening_serialises_values_as_hex_and_round_trips() {
    let row = OpenedRow {
        index: 2,
        values: vec![1, -1, 0x01020304],
        path: vec![B256::ZERO],
    };
    let json = serde_json::to_value(&row).unwrap();
    assert_eq!(json["values"], "0x01000000ffffffff04030201");
    assert_eq!(serde_json::from_value::<OpenedRow>(json).unwrap(), row);
    let bad = serde_json::json!({"index": 0, "values": "0x010203", "path": []});
    assert!(serde_json::from_value::<OpenedRow>(bad).is_err());

    let (ch, proved, asked, opening) = honest(6);
    let back: Opening = serde_json::from_str(&serde_json::to_string(&opening).unwrap()).unwrap();
    assert_eq!(
        verify(&ch, proved.root(), &asked, &back, &mut rng(1)),
        Ok(())
    );
}

#[test]
fn open_refuses_bad_requests() {
    let (_, proved, _, _) = honest(1);
    assert_eq!(
        proved.open(&[37]),
        Err(ProofError::RowOutOfRange { row: 37, rows: 37 })
    );
    assert_eq!(proved.open(&[3, 5, 3]), Err(ProofError::RepeatedRow(3)));
    assert_eq!(proved.open(&[]).unwrap().rows, vec![]);
}

#[test]
fn params_are_validated() {
    let ok = ProofParams {
        rows: 64,
        inner: 64,
        spot_rows: 64,
    };
    assert_eq!(ok.validate(), Ok(()));
    for p in [ProofParams::NETWORK, ProofParams::LOCAL, ProofParams::BENCH] {
        assert_eq!(p.validate(), Ok(()));
    }
    let cases = [
        (ProofParams { inner: 0, ..ok }, ProofError::Inner(0)),
        (ProofParams { inner: 40, ..ok }, ProofError::Inner(40)),
        (ProofParams { inner: 1040, ..ok }, ProofError::Inner(1040)),
        (ProofParams { rows: 0, ..ok }, ProofError::Rows(0)),
        (
            ProofParams {
                rows: (1 << 22) + 1,
                ..ok
            },
            ProofError::Rows((1 << 22) + 1),
        ),
        (
            ProofParams { spot_rows: 0, ..ok },
            ProofError::SpotRows {
                spot_rows: 0,
                max: 64,
            },
        ),
        (
            ProofParams {
                spot_rows: 65,
                ..ok
            },
            ProofError::SpotRows {
                spot_rows: 65,
                max: 64,
            },
        ),
        (
            ProofParams {
                rows: 5000,
                spot_rows: 1025,
                ..ok
            },
            ProofError::SpotRows {
                spot_rows: 1025,
                max: 1024,
            },
        ),
    ];
    for (params, err) in cases {
        assert_eq!(params.validate(), Err(err.clone()));
        assert_eq!(prove(&challenge(0, params)).unwrap_err(), err);
    }
    assert_eq!(ProofParams::NETWORK.macs(), 1 << 36);
    assert_eq!(
        prove_skipping(&challenge(0, ok), 1001, 0).unwrap_err(),
        ProofError::SkipPerMille(1001)
    );
}

/// Checks `prove_skipping` against the exact detection odds over 200 checker seeds.
fn caught_count(skip_per_mille: u16) -> (u32, f64, u32) {
    let ch = challenge(8, ProofParams::LOCAL);
    let proved = prove_skipping(&ch, skip_per_mille, 42).unwrap();
    // Open every row once and answer each checker from it (the rows do not change).
    let all: Vec<u32> = (0..ch.params.rows).collect();
    let every_row = proved.open(&all).unwrap().rows;
    let caught = (0..200u64)
        .filter(|&seed| {
            let mut r = rng(seed);
            let asked = pick_rows(&ch.params, &mut r);
            let rows = asked
                .iter()
                .map(|&i| every_row[i as usize].clone())
                .collect();
            let opening = Opening { rows };
            match verify(&ch, proved.root(), &asked, &opening, &mut r) {
                Ok(()) => false,
                Err(ProofFailure::WrongRow(_)) => true,
                Err(other) => panic!("a skipper's opening fails only its values, got {other}"),
            }
        })
        .count() as u32;
    let p = detection_probability_exact(&ch.params, proved.skipped_rows());
    (caught, p, proved.skipped_rows())
}

#[test]
fn skipping_hosts_are_caught_at_the_predicted_rate() {
    // 0%: never caught.
    let (caught, p, skipped) = caught_count(0);
    assert_eq!((caught, p, skipped), (0, 0.0, 0));

    // 10% (about 102 of 1024 rows, k = 64): caught about 99.9% of the time.
    let (caught, p, skipped) = caught_count(100);
    assert!((70..=140).contains(&skipped), "skipped {skipped}");
    assert!(p > 0.99, "p = {p}");
    let sd = (200.0 * p * (1.0 - p)).sqrt();
    assert!(
        f64::from(caught) >= 200.0 * p - 5.0 * sd - 2.0,
        "caught {caught}/200, p = {p}"
    );

    // 1% (about 10 rows): caught about half the time; check both sides of the prediction.
    let (caught, p, skipped) = caught_count(10);
    assert!((4..=20).contains(&skipped), "skipped {skipped}");
    let expected = 200.0 * p;
    let sd = (200.0 * p * (1.0 - p)).sqrt();
    assert!(
        (f64::from(caught) - expected).abs() <= 5.0 * sd,
        "caught {caught}, expected {expected:.1}"
    );
    assert!(p > 0.2 && p < 0.8, "p = {p}");
}

#[test]
fn detection_formulas() {
    assert_eq!(detection_probability(0.0, 128), 0.0);
    assert_eq!(detection_probability(1.0, 1), 1.0);
    assert!((detection_probability(0.1, 64) - (1.0 - 0.9f64.powi(64))).abs() < 1e-12);
    assert!((detection_probability(0.5, 1) - 0.5).abs() < 1e-12);
    let p = ProofParams {
        rows: 10,
        inner: 16,
        spot_rows: 3,
    };
    // 1 − C(8,3)/C(10,3) = 1 − 56/120.
    assert!((detection_probability_exact(&p, 2) - (1.0 - 56.0 / 120.0)).abs() < 1e-12);
    assert_eq!(detection_probability_exact(&p, 8), 1.0);
    assert_eq!(detection_probability_exact(&p, 0), 0.0);
    // Distinct rows do at least as well as independent ones.
    let net = ProofParams::NETWORK;
    for s in [655, 6554, 32768] {
        let f = f64::from(s) / f64::from(net.rows);
        assert!(detection_probability_exact(&net, s) >= detection_probability(f, net.spot_rows));
    }
}

#[test]
fn timing_arithmetic() {
    let p = ProofParams::NETWORK; // 2^36 MACs
    assert_eq!(expected_ms(&p, 1 << 36), 1000);
    assert_eq!(expected_ms(&p, (1 << 36) * 1000), 1);
    assert_eq!(expected_ms(&p, ((1 << 36) * 1000) + 1), 1, "rounds up");
    assert_eq!(expected_ms(&p, 0), u64::MAX);
    assert_eq!(deadline_ms(&p, 1 << 36, 150, 250), 1750);
    assert_eq!(deadline_ms(&p, 0, 150, 250), u64::MAX);
}

#[test]
fn kernel_is_exact_at_the_extremes() {
    let inner = 1024;
    for (a, b) in [(-128i8, -128i8), (127, 127), (127, -128), (-128, 127)] {
        let af = vec![f32::from(a); 3 * inner];
        let bf = vec![f32::from(b); inner * inner];
        let mut c = vec![0f32; 3 * inner];
        matrix::multiply_f32(&af, &bf, 3, inner, &mut c);
        let want = i32::from(a) * i32::from(b) * inner as i32;
        assert!(c.iter().all(|&x| x as i32 == want), "{a}·{b}·1024 = {want}");
    }
    // Alternating extremes, so partial sums swing across the range.
    let a: Vec<i8> = (0..inner)
        .map(|k| if k % 3 == 0 { -128 } else { 127 })
        .collect();
    let b: Vec<i8> = (0..inner * inner)
        .map(|x| if x % 7 < 4 { -128 } else { 127 })
        .collect();
    let af: Vec<f32> = a.iter().map(|&x| f32::from(x)).collect();
    let bf: Vec<f32> = b.iter().map(|&x| f32::from(x)).collect();
    let bi: Vec<i32> = b.iter().map(|&x| i32::from(x)).collect();
    let mut c = vec![0f32; inner];
    matrix::multiply_f32(&af, &bf, 1, inner, &mut c);
    let want = matrix::row_times_b(&a, &bi, inner);
    assert_eq!(c.iter().map(|&x| x as i32).collect::<Vec<_>>(), want);
}

/// A block product by a naive integer loop, as a device would compute it.
fn naive_block(a: &[i8], b: &[i8], rows: usize, c: &mut [i32]) -> Result<(), String> {
    let inner = a.len() / rows;
    for i in 0..rows {
        for j in 0..inner {
            c[i * inner + j] = (0..inner)
                .map(|k| i32::from(a[i * inner + k]) * i32::from(b[k * inner + j]))
                .sum();
        }
    }
    Ok(())
}

#[test]
fn prove_with_an_integer_product_commits_what_prove_commits() {
    // 600 rows: two whole blocks of 256 and a partial one.
    for params in [
        ProofParams {
            rows: 600,
            inner: 64,
            spot_rows: 16,
        },
        ProofParams {
            rows: 3,
            inner: 16,
            spot_rows: 3,
        },
    ] {
        let ch = challenge(11, params);
        let mut calls = Vec::new();
        let with = prove_with(&ch, |a, b, rows, c| {
            calls.push(rows);
            assert_eq!(b.len(), (params.inner * params.inner) as usize);
            naive_block(a, b, rows, c)
        })
        .unwrap();
        assert_eq!(with.root(), prove(&ch).unwrap().root());
        assert_eq!(with.root(), naive_root(&ch));
        assert_eq!(calls.iter().sum::<usize>(), params.rows as usize);
        let asked = pick_rows(&ch.params, &mut rng(5));
        let opening = with.open(&asked).unwrap();
        assert_eq!(
            verify(&ch, with.root(), &asked, &opening, &mut rng(6)),
            Ok(())
        );
    }
}

#[test]
fn prove_with_passes_on_a_failed_product_and_bad_params() {
    let ch = challenge(12, ProofParams::LOCAL);
    let failed = prove_with(&ch, |_, _, _, _| Err("device lost".to_string()));
    assert_eq!(
        failed.unwrap_err(),
        ProveWithError::Product("device lost".into())
    );
    let bad = challenge(
        12,
        ProofParams {
            rows: 4,
            inner: 17,
            spot_rows: 1,
        },
    );
    let refused = prove_with(&bad, naive_block);
    assert_eq!(
        refused.unwrap_err(),
        ProveWithError::Params(ProofError::Inner(17))
    );
}

#[test]
fn a_wrong_product_gives_another_root() {
    let ch = challenge(13, ProofParams::LOCAL);
    let off_by_one = prove_with(&ch, |a, b, rows, c| {
        naive_block(a, b, rows, c)?;
        c[0] += 1;
        Ok(())
    })
    .unwrap();
    assert_ne!(off_by_one.root(), prove(&ch).unwrap().root());
}

#[test]
fn a_row_is_derived_alone_and_the_full_range_appears() {
    let streams = Streams::new(&B256::repeat_byte(9));
    let row = streams.a_row(500, 1024);
    let mut again = vec![0u8; 1024];
    streams.a_row_bytes(500, &mut again);
    assert_eq!(row, again.iter().map(|&b| b as i8).collect::<Vec<_>>());
    assert_ne!(row, streams.a_row(501, 1024));
    let mut b_row = vec![0u8; 1024];
    streams.b_row_bytes(500, &mut b_row);
    assert_ne!(again, b_row, "A and B use different keys");
    let all: Vec<i8> = (0..64).flat_map(|r| streams.a_row(r, 1024)).collect();
    assert!(all.contains(&-128) && all.contains(&127));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// The committed product equals a naive integer triple loop, and opened rows match it.
    #[test]
    fn prove_commits_to_the_exact_product(
        seed in any::<[u8; 32]>(),
        rows in 1u32..=64,
        inner_16ths in 1u32..=4,
    ) {
        let params = ProofParams { rows, inner: inner_16ths * 16, spot_rows: 1 };
        let ch = Challenge { seed: B256::from(seed), params };
        let proved = prove(&ch).unwrap();
        prop_assert_eq!(proved.root(), naive_root(&ch));
        let all: Vec<u32> = (0..rows).collect();
        let opened: Vec<Vec<i32>> =
            proved.open(&all).unwrap().rows.into_iter().map(|r| r.values).collect();
        prop_assert_eq!(opened, naive_product(&ch));
    }

    /// Every leaf's path leads to the root, for any leaf count.
    #[test]
    fn merkle_paths_lead_to_the_root(n in 1u32..=70, seed in any::<u8>()) {
        let leaves: Vec<B256> = (0..n).map(|i| alloy_primitives::keccak256([seed, i as u8])).collect();
        let tree = Tree::new(leaves.clone());
        for (i, leaf) in leaves.iter().enumerate() {
            let path = tree.path(i as u32);
            prop_assert_eq!(merkle::root_from_path(*leaf, i as u32, n, &path), Some(tree.root()));
            if n > 1 {
                let other = (i as u32 + 1) % n;
                prop_assert_ne!(merkle::root_from_path(*leaf, other, n, &path), Some(tree.root()));
            }
        }
    }
}

/// A clock that moves only when told: `tick` readings apart, plus what `product` adds.
struct FakeClock(std::cell::Cell<std::time::Duration>);

impl FakeClock {
    fn read(&self, tick: std::time::Duration) -> std::time::Duration {
        self.0.set(self.0.get() + tick);
        self.0.get()
    }
}

#[test]
fn timed_proofs_commit_what_untimed_ones_do_and_time_each_phase_per_block() {
    use std::time::Duration;
    let ms = Duration::from_millis;
    // 600 rows: blocks of 256, 256 and 88, so each per-block phase is timed three times.
    let params = ProofParams {
        rows: 600,
        inner: 64,
        spot_rows: 16,
    };
    let ch = challenge(14, params);
    let root = prove(&ch).unwrap().root();

    // Every reading advances the clock 1 ms: the phases count the laps they were given.
    let clock = FakeClock(Default::default());
    let (proved, timings) = prove_timed(&ch, || clock.read(ms(1))).unwrap();
    assert_eq!(proved.root(), root);
    let laps = ProofTimings {
        derive: ms(3),
        product: ms(3),
        hash_rows: ms(3),
        tree: ms(1),
    };
    assert_eq!(timings, laps);
    assert_eq!(timings.total(), ms(10));

    // A product that takes 100 ms a block is charged to the product phase alone.
    let clock = FakeClock(Default::default());
    let (proved, timings) = prove_with_timed(
        &ch,
        || clock.read(ms(1)),
        |a, b, rows, c| {
            clock.read(ms(100));
            naive_block(a, b, rows, c)
        },
    )
    .unwrap();
    assert_eq!(proved.root(), root);
    assert_eq!(
        timings,
        ProofTimings {
            product: ms(303),
            ..laps
        }
    );

    // Bad parameters and a failed product give the untimed variants' errors.
    let bad = challenge(
        14,
        ProofParams {
            inner: 10,
            ..params
        },
    );
    assert_eq!(
        prove_timed(&bad, || ms(0)).unwrap_err(),
        ProofError::Inner(10)
    );
    assert_eq!(
        prove_with_timed(&ch, || ms(0), |_, _, _, _| Err("device lost".into())).unwrap_err(),
        ProveWithError::Product("device lost".into())
    );
}

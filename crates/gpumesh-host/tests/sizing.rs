//! One sizing rule: for every catalog model under every preset, the proof the indexer
//! asks (the rule's) is one the agent accepts, it is a valid proof, and its deadline is
//! at least the time the reference rate needs; anything else is refused.

use gpumesh_host::challenge::unasked;
use gpumesh_types::{Address, CATALOG, CheckingParams, GpuModel, ProofParams, ProofRate};
use proptest::prelude::*;

/// The network's rules with every catalog model given `rate` (a real catalog's rates
/// differ by model; the rule treats each alone).
fn network_with(rate: u64) -> CheckingParams {
    let mut params = CheckingParams::network(vec![Address::ZERO; 3]);
    params.sizing.proof_rates = CATALOG
        .iter()
        .map(|spec| ProofRate {
            model: spec.model,
            macs_per_s: rate,
            measured: "test".into(),
        })
        .collect();
    params
}

fn presets(rate: u64) -> Vec<(&'static str, CheckingParams)> {
    vec![
        ("network", network_with(rate)),
        ("local", CheckingParams::local(Vec::new())),
        (
            "cpu-reference",
            CheckingParams::cpu_reference(Vec::new(), rate, "test"),
        ),
    ]
}

fn check(rate: u64) -> Result<(), TestCaseError> {
    for (name, params) in presets(rate) {
        for spec in CATALOG {
            for simulated in [false, true] {
                let Some(sized) = params.proof_for(spec.model, simulated) else {
                    // Nothing is asked, and the agent would refuse anything.
                    prop_assert!(
                        unasked(
                            &params.sizing,
                            0,
                            spec.model,
                            simulated,
                            &params.sizing.proof
                        )
                        .is_some()
                    );
                    continue;
                };
                let what = format!("{name} {} simulated {simulated}", spec.name);
                prop_assert_eq!(
                    unasked(&params.sizing, 0, spec.model, simulated, &sized.params),
                    None,
                    "{}",
                    what
                );
                prop_assert!(sized.params.validate().is_ok(), "{}", what);
                let rate = params.sizing.rate(spec.model, simulated).unwrap();
                let reference = gpumesh_proof::expected_ms(&sized.params, rate);
                prop_assert_eq!(sized.expected_ms, reference);
                prop_assert!(sized.deadline_ms >= reference, "{}", what);
                // A proof of another size is refused.
                let other = ProofParams {
                    rows: sized
                        .params
                        .rows
                        .saturating_add(1)
                        .min(ProofParams::MAX_ROWS - 1),
                    ..sized.params
                };
                if other != sized.params {
                    prop_assert!(
                        unasked(&params.sizing, 0, spec.model, simulated, &other).is_some()
                    );
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #[test]
    fn the_rule_s_proof_is_accepted_and_its_deadline_covers_the_reference_time(
        rate in 1u64..=u64::MAX / 2,
    ) {
        check(rate)?;
    }
}

#[test]
fn rates_across_the_catalog_s_range_are_accepted() {
    // From a slow CPU to beyond any GPU, and the clamps at both ends of the row count.
    for rate in [
        1,
        1_000_000,
        2_000_000_000,
        30_000_000_000,
        10u64.pow(13),
        10u64.pow(15),
    ] {
        check(rate).unwrap();
    }
}

#[test]
fn a_model_without_a_rate_is_never_asked() {
    let params = CheckingParams::network(vec![Address::ZERO; 3]);
    assert!(params.proof_for(GpuModel::H100, false).is_none());
    let refusal = unasked(
        &params.sizing,
        2,
        GpuModel::H100,
        false,
        &ProofParams::NETWORK,
    );
    assert!(refusal.unwrap().contains("no proof rate for GPU 2 (H100)"));
}

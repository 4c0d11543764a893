//! Deadlines and detection odds: plain arithmetic for whoever issues challenges.
//!
//! The rate in these functions is a whole-proof rate (multiply-accumulates per second for
//! deriving A, multiplying and hashing C together), best measured on reference hardware
//! of the claimed model rather than taken from a datasheet: at every allowed inner size a
//! GPU spends more of a proof hashing C than multiplying.

use crate::params::ProofParams;

/// Milliseconds a proof of `params` takes at `macs_per_s`, rounded up; `u64::MAX` for a
/// rate of zero.
pub fn expected_ms(params: &ProofParams, macs_per_s: u64) -> u64 {
    if macs_per_s == 0 {
        return u64::MAX;
    }
    let ms = (u128::from(params.macs()) * 1000).div_ceil(u128::from(macs_per_s));
    u64::try_from(ms).unwrap_or(u64::MAX)
}

/// The deadline for a host claiming `claimed_macs_per_s`: the expected time stretched by
/// `slack_pct` percent (100 = none), plus `grace_ms` for the round trip. Saturates.
pub fn deadline_ms(
    params: &ProofParams,
    claimed_macs_per_s: u64,
    slack_pct: u32,
    grace_ms: u64,
) -> u64 {
    let stretched =
        u128::from(expected_ms(params, claimed_macs_per_s)) * u128::from(slack_pct) / 100;
    u64::try_from(stretched)
        .unwrap_or(u64::MAX)
        .saturating_add(grace_ms)
}

/// Chance that `spot_rows` independent uniform picks hit at least one of a fraction
/// `skip_fraction` of skipped rows: 1 − (1 − f)^k. Distinct picks do at least as well
/// (see [`detection_probability_exact`]), so this is a lower bound for [`crate::pick_rows`].
pub fn detection_probability(skip_fraction: f64, spot_rows: u16) -> f64 {
    let f = if skip_fraction.is_nan() {
        0.0
    } else {
        skip_fraction.clamp(0.0, 1.0)
    };
    1.0 - (1.0 - f).powi(i32::from(spot_rows))
}

/// Exact chance that `params.spot_rows` distinct rows drawn uniformly from `params.rows`
/// include at least one of `skipped_rows` skipped ones: 1 − C(n−s, k) / C(n, k).
pub fn detection_probability_exact(params: &ProofParams, skipped_rows: u32) -> f64 {
    let n = u64::from(params.rows);
    let s = u64::from(skipped_rows).min(n);
    let k = u64::from(params.spot_rows).min(n);
    if s == 0 {
        return 0.0;
    }
    if n - s < k {
        return 1.0;
    }
    let survive: f64 = (0..k)
        .map(|i| (n - s - i) as f64 / (n - i) as f64)
        .product();
    1.0 - survive
}

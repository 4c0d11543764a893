//! Token amounts: unsigned integers in base units (18 decimals), never floats.
//!
//! On the wire an [`Amount`] is a decimal string of base units (`"2100000000000000000"`),
//! because JSON numbers lose precision past 2^53. People type and read whole tokens
//! (`"2.10"`), which [`Amount::parse_tokens`] and [`Amount::tokens`] convert exactly.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Number of decimal places between a token and its base unit.
pub const DECIMALS: u32 = 18;
/// Base units in one whole token.
pub const ONE_TOKEN: u128 = 10u128.pow(DECIMALS);

/// An amount of tokens in base units.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Amount(pub u128);

/// Why a string is not an amount.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("amount is empty")]
    Empty,
    #[error("amount {0:?} is not a non-negative decimal number")]
    NotDecimal(String),
    #[error("amount {0:?} has more than {DECIMALS} decimal places")]
    TooPrecise(String),
    #[error("amount {0:?} is too large")]
    Overflow(String),
}

impl Amount {
    pub const ZERO: Amount = Amount(0);

    /// Whole tokens, for tests and genesis tables.
    pub const fn from_tokens(tokens: u64) -> Amount {
        Amount(tokens as u128 * ONE_TOKEN)
    }

    /// Parses a token amount a person typed, such as `"2.10"` or `"1500"`, exactly.
    pub fn parse_tokens(text: &str) -> Result<Amount, AmountError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(AmountError::Empty);
        }
        let (whole, frac) = match text.split_once('.') {
            Some((w, f)) => (w, f),
            None => (text, ""),
        };
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
            return Err(AmountError::NotDecimal(text.to_string()));
        }
        if frac.len() > DECIMALS as usize {
            return Err(AmountError::TooPrecise(text.to_string()));
        }
        let overflow = || AmountError::Overflow(text.to_string());
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| overflow())?
        };
        let frac_units: u128 = if frac.is_empty() {
            0
        } else {
            let scale = 10u128.pow(DECIMALS - frac.len() as u32);
            frac.parse::<u128>().map_err(|_| overflow())? * scale
        };
        whole
            .checked_mul(ONE_TOKEN)
            .and_then(|w| w.checked_add(frac_units))
            .map(Amount)
            .ok_or_else(overflow)
    }

    /// The amount as whole tokens with the trailing zeros of the fraction removed.
    pub fn tokens(self) -> String {
        let whole = self.0 / ONE_TOKEN;
        let frac = self.0 % ONE_TOKEN;
        if frac == 0 {
            return whole.to_string();
        }
        let frac = format!("{frac:018}");
        format!("{whole}.{}", frac.trim_end_matches('0'))
    }

    pub fn checked_add(self, other: Amount) -> Option<Amount> {
        self.0.checked_add(other.0).map(Amount)
    }

    pub fn checked_sub(self, other: Amount) -> Option<Amount> {
        self.0.checked_sub(other.0).map(Amount)
    }

    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount(self.0.saturating_sub(other.0))
    }

    /// `self × numerator / denominator`, rounded down, without intermediate overflow
    /// as long as the result fits.
    pub fn mul_div_floor(self, numerator: u128, denominator: u128) -> Option<Amount> {
        mul_div(self.0, numerator, denominator, false).map(Amount)
    }

    /// `self × numerator / denominator`, rounded up.
    pub fn mul_div_ceil(self, numerator: u128, denominator: u128) -> Option<Amount> {
        mul_div(self.0, numerator, denominator, true).map(Amount)
    }
}

/// `a × b / d` in 256-bit intermediate precision.
fn mul_div(a: u128, b: u128, d: u128, round_up: bool) -> Option<u128> {
    if d == 0 {
        return None;
    }
    let (hi, lo) = widening_mul(a, b);
    if hi == 0 {
        let q = lo / d;
        let r = lo % d;
        return Some(if round_up && r != 0 {
            q.checked_add(1)?
        } else {
            q
        });
    }
    if hi >= d {
        return None; // quotient does not fit in 128 bits
    }
    // Long division of the 256-bit (hi, lo) by d, one bit at a time; rare path.
    let mut rem = hi;
    let mut q: u128 = 0;
    for i in (0..128).rev() {
        let carry = rem >> 127;
        rem = (rem << 1) | ((lo >> i) & 1);
        q <<= 1;
        if carry == 1 || rem >= d {
            rem = rem.wrapping_sub(d);
            q |= 1;
        }
    }
    Some(if round_up && rem != 0 {
        q.checked_add(1)?
    } else {
        q
    })
}

fn widening_mul(a: u128, b: u128) -> (u128, u128) {
    let mask = u64::MAX as u128;
    let (a_hi, a_lo) = (a >> 64, a & mask);
    let (b_hi, b_lo) = (b >> 64, b & mask);
    let ll = a_lo * b_lo;
    let lh = a_lo * b_hi;
    let hl = a_hi * b_lo;
    let hh = a_hi * b_hi;
    let mid = (ll >> 64) + (lh & mask) + (hl & mask);
    let lo = (ll & mask) | (mid << 64);
    let hi = hh + (lh >> 64) + (hl >> 64) + (mid >> 64);
    (hi, lo)
}

impl fmt::Display for Amount {
    /// Base units, as on the wire.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Amount {
    type Err = AmountError;

    /// Base units, as on the wire.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(AmountError::Empty);
        }
        if !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(AmountError::NotDecimal(s.to_string()));
        }
        s.parse::<u128>()
            .map(Amount)
            .map_err(|_| AmountError::Overflow(s.to_string()))
    }
}

impl Serialize for Amount {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_prints_tokens() {
        let cases = [
            ("2.10", 2_100_000_000_000_000_000u128, "2.1"),
            ("1500", 1_500 * ONE_TOKEN, "1500"),
            (".5", ONE_TOKEN / 2, "0.5"),
            ("0.000000000000000001", 1, "0.000000000000000001"),
            ("0", 0, "0"),
        ];
        for (text, units, shown) in cases {
            let amount = Amount::parse_tokens(text).unwrap();
            assert_eq!(amount.0, units, "{text}");
            assert_eq!(amount.tokens(), shown, "{text}");
        }
    }

    #[test]
    fn rejects_bad_token_text() {
        for text in [
            "",
            "-1",
            "1.2.3",
            "abc",
            "1e5",
            ".",
            "1.0000000000000000001",
        ] {
            assert!(
                Amount::parse_tokens(text).is_err(),
                "{text:?} should be rejected"
            );
        }
        assert!(matches!(
            Amount::parse_tokens("999999999999999999999999999999"),
            Err(AmountError::Overflow(_))
        ));
    }

    #[test]
    fn wire_form_is_a_decimal_string() {
        let json = serde_json::to_string(&Amount(12345)).unwrap();
        assert_eq!(json, "\"12345\"");
        assert_eq!(
            serde_json::from_str::<Amount>(&json).unwrap(),
            Amount(12345)
        );
        assert!(serde_json::from_str::<Amount>("\"-3\"").is_err());
        assert!(serde_json::from_str::<Amount>("12").is_err());
    }

    proptest! {
        #[test]
        fn mul_div_matches_wide_arithmetic(a in any::<u64>(), b in any::<u64>(), d in 1u64..) {
            let exact = a as u128 * b as u128;
            prop_assert_eq!(mul_div(a as u128, b as u128, d as u128, false), Some(exact / d as u128));
            let up = exact.div_ceil(d as u128);
            prop_assert_eq!(mul_div(a as u128, b as u128, d as u128, true), Some(up));
        }

        #[test]
        fn mul_div_wide_path_is_exact(a in any::<u128>(), b in 1u128..1_000_000, d in 1u128..1_000_000) {
            // (a*b)/d vs ((a/d)*b + (a%d)*b/d), the latter computed without overflow when it fits.
            let q = a / d;
            let r = a % d;
            let expected = q.checked_mul(b).and_then(|x| x.checked_add(r * b / d));
            prop_assert_eq!(mul_div(a, b, d, false), expected);
        }

        #[test]
        fn tokens_round_trip(units in any::<u128>()) {
            let amount = Amount(units);
            prop_assert_eq!(Amount::parse_tokens(&amount.tokens()).unwrap(), amount);
        }
    }
}

//! What a challenge asks for: the matrix sizes, the number of rows the checker opens, and
//! the seed, with the limits that keep the arithmetic exact and the work bounded.

use alloy_primitives::B256;
use serde::{Deserialize, Serialize};

/// Why a proof could not be made or opened. These are caller errors (bad parameters, bad
/// requests), not verdicts on a host: those are [`crate::ProofFailure`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    #[error("inner dimension {0} must be a multiple of 16 in 16..=1024")]
    Inner(u32),
    #[error("row count {0} must be in 1..=4194304")]
    Rows(u32),
    #[error("spot rows {spot_rows} must be in 1..={max}")]
    SpotRows { spot_rows: u16, max: u32 },
    #[error("row {row} is out of range (the product has {rows} rows)")]
    RowOutOfRange { row: u32, rows: u32 },
    #[error("row {0} is asked more than once")]
    RepeatedRow(u32),
    #[error("skip rate {0} per mille is over 1000")]
    SkipPerMille(u16),
}

/// The shape of one proof. A is `rows × inner` INT8, B is `inner × inner` INT8, and the
/// host computes C = A·B, `rows × inner` INT32; the checker opens `spot_rows` rows of C.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProofParams {
    pub rows: u32,
    pub inner: u32,
    pub spot_rows: u16,
}

impl ProofParams {
    /// Most rows a challenge may ask for (2^22: A is then 4 GiB at inner 1024).
    pub const MAX_ROWS: u32 = 1 << 22;
    /// Largest inner dimension: every entry of C is a sum of at most 1024 products of
    /// magnitude at most 2^14, so at most 2^24, which f32 represents exactly.
    pub const MAX_INNER: u32 = 1024;
    /// Most rows a checker may open.
    pub const MAX_SPOT_ROWS: u16 = 1024;

    /// The public network's default: 2^36 ≈ 6.9·10^10 multiply-accumulates, a 64 MiB A
    /// and a 256 MiB C to hash; about 2.5 s on one CPU core, a fraction of that on a GPU.
    /// The checker's share is about 3·10^-5 of the host's.
    pub const NETWORK: ProofParams = ProofParams {
        rows: 65_536,
        inner: 1024,
        spot_rows: 128,
    };

    /// For local networks of simulated hosts sharing a small CPU: 6.7·10^7
    /// multiply-accumulates, about 10 ms each on one core.
    pub const LOCAL: ProofParams = ProofParams {
        rows: 1024,
        inner: 256,
        spot_rows: 64,
    };

    /// The benchmark's size: 1.7·10^10 multiply-accumulates, about 0.7 s on one CPU core,
    /// with the checker taking about half a percent of the host's time (at 4096 rows it was
    /// over 1%, at 8192 just under: the checker's scalar arithmetic and hashing run far
    /// below the host's SIMD rate).
    pub const BENCH: ProofParams = ProofParams {
        rows: 16_384,
        inner: 1024,
        spot_rows: 128,
    };

    /// Multiply-accumulates the host performs: rows · inner².
    pub fn macs(&self) -> u64 {
        u64::from(self.rows) * u64::from(self.inner) * u64::from(self.inner)
    }

    pub fn validate(&self) -> Result<(), ProofError> {
        if self.inner < 16 || self.inner > Self::MAX_INNER || !self.inner.is_multiple_of(16) {
            return Err(ProofError::Inner(self.inner));
        }
        if self.rows == 0 || self.rows > Self::MAX_ROWS {
            return Err(ProofError::Rows(self.rows));
        }
        let max = self.rows.min(u32::from(Self::MAX_SPOT_ROWS));
        if self.spot_rows == 0 || u32::from(self.spot_rows) > max {
            return Err(ProofError::SpotRows {
                spot_rows: self.spot_rows,
                max,
            });
        }
        Ok(())
    }
}

impl Default for ProofParams {
    fn default() -> Self {
        Self::BENCH
    }
}

/// One challenge: a fresh seed from the checker and the shape to prove.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Challenge {
    pub seed: B256,
    pub params: ProofParams,
}

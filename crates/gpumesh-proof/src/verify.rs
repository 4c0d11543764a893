//! The checker's side: choose rows to open, then check an opening against the root and the
//! seed without redoing the host's multiplication.
//!
//! Each opened row C_i is checked with Freivalds' test: the checker draws a secret vector r
//! of `inner` integers in [0, 2^32), computes v = B·r once (inner² multiply-adds, deriving B
//! row by row), and accepts the row only if C_i·r = A_i·v exactly (in `i128`, where nothing
//! can overflow). A row that differs from A_i·B passes with probability at most 2^-32: the
//! difference d ≠ 0 makes d·r a nonzero linear form, and for any fixed values of the other
//! coordinates at most one of the 2^32 values of a coordinate where d is nonzero zeroes it.
//! The checker's work is about 2·inner² + k·(3·inner + hashing), against rows·inner² for the
//! host.

use std::collections::BTreeSet;

use alloy_primitives::B256;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::matrix::Streams;
use crate::merkle;
use crate::params::{Challenge, ProofParams};
use crate::prove::Opening;

/// Why a checker rejected an opening. [`ProofFailure::code`] is stable and short.
#[derive(
    Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ProofFailure {
    #[error("row {0} was asked for but not opened")]
    MissingRow(u32),
    #[error("row {0} was opened but not asked for")]
    UnaskedRow(u32),
    #[error("row {row} has {got} values, expected {expected}")]
    WrongLength { row: u32, expected: u32, got: u32 },
    #[error("row {0}'s Merkle path does not lead to the committed root")]
    BadPath(u32),
    #[error("row {0} is not the product of the challenge's matrices")]
    WrongRow(u32),
    #[error("malformed: {0}")]
    Malformed(String),
}

impl ProofFailure {
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingRow(_) => "missing_row",
            Self::UnaskedRow(_) => "unasked_row",
            Self::WrongLength { .. } => "wrong_length",
            Self::BadPath(_) => "bad_path",
            Self::WrongRow(_) => "wrong_row",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// `spot_rows` distinct rows in `0..rows`, sorted, drawn after the host has committed.
pub fn pick_rows(params: &ProofParams, rng: &mut impl RngCore) -> Vec<u32> {
    let amount = usize::from(params.spot_rows).min(params.rows as usize);
    let mut rows: Vec<u32> = rand::seq::index::sample(rng, params.rows as usize, amount)
        .into_iter()
        .map(|r| r as u32)
        .collect();
    rows.sort_unstable();
    rows
}

/// Checks that `opening` holds exactly the `asked` rows, that each is committed under
/// `root`, and that each equals its row of A·B for the challenge's seed (Freivalds, with a
/// fresh secret vector from `rng`).
pub fn verify(
    challenge: &Challenge,
    root: B256,
    asked: &[u32],
    opening: &Opening,
    rng: &mut impl RngCore,
) -> Result<(), ProofFailure> {
    let params = challenge.params;
    params
        .validate()
        .map_err(|e| ProofFailure::Malformed(e.to_string()))?;
    let asked_set: BTreeSet<u32> = asked.iter().copied().collect();
    if let Some(&row) = asked.iter().find(|&&r| r >= params.rows) {
        return Err(ProofFailure::Malformed(format!(
            "asked row {row} is out of range"
        )));
    }
    let mut opened = BTreeSet::new();
    for row in &opening.rows {
        if !asked_set.contains(&row.index) {
            return Err(ProofFailure::UnaskedRow(row.index));
        }
        if !opened.insert(row.index) {
            return Err(ProofFailure::Malformed(format!(
                "row {} is opened twice",
                row.index
            )));
        }
    }
    if let Some(&row) = asked_set.iter().find(|r| !opened.contains(r)) {
        return Err(ProofFailure::MissingRow(row));
    }

    let inner = params.inner as usize;
    let mut leaf_buf = Vec::with_capacity(4 + 4 * inner);
    for row in &opening.rows {
        if row.values.len() != inner {
            return Err(ProofFailure::WrongLength {
                row: row.index,
                expected: params.inner,
                got: u32::try_from(row.values.len()).unwrap_or(u32::MAX),
            });
        }
        let leaf = merkle::leaf(row.index, &row.values, &mut leaf_buf);
        if merkle::root_from_path(leaf, row.index, params.rows, &row.path) != Some(root) {
            return Err(ProofFailure::BadPath(row.index));
        }
    }
    if opening.rows.is_empty() {
        return Ok(());
    }

    // Freivalds: r secret, v = B·r once, then C_i·r == A_i·v for every opened row.
    let streams = Streams::new(&challenge.seed);
    let r: Vec<i64> = (0..inner).map(|_| i64::from(rng.next_u32())).collect();
    let mut b_row = vec![0u8; inner];
    // |B_k·r| ≤ 2^7 · 2^32 · 2^10 = 2^49: fits i64.
    let v: Vec<i64> = (0..params.inner)
        .map(|k| {
            streams.b_row_bytes(k, &mut b_row);
            b_row
                .iter()
                .zip(&r)
                .map(|(&b, &rj)| i64::from(b as i8) * rj)
                .sum()
        })
        .collect();
    let mut a_row = vec![0u8; inner];
    for row in &opening.rows {
        // Each product fits i64 (|c·r| < 2^63, |a·v| ≤ 2^56); the sums, up to 2^73 and
        // 2^66, need i128.
        let lhs: i128 = row
            .values
            .iter()
            .zip(&r)
            .map(|(&c, &rj)| i128::from(i64::from(c) * rj))
            .sum();
        streams.a_row_bytes(row.index, &mut a_row);
        let rhs: i128 = a_row
            .iter()
            .zip(&v)
            .map(|(&a, &vk)| i128::from(i64::from(a as i8) * vk))
            .sum();
        if lhs != rhs {
            return Err(ProofFailure::WrongRow(row.index));
        }
    }
    Ok(())
}

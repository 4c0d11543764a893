//! The host's side: compute C block by block, commit to its rows, open the rows asked for.
//!
//! Memory stays bounded whatever the row count: B (4·inner² bytes as `f32`), one block of
//! A and of C ([`BLOCK_ROWS`] rows each) and the Merkle tree (64 bytes per row). C itself
//! is not kept: [`Proved::open`] recomputes each opened row from its row of A and B with
//! integers, inner² multiply-accumulates per row, which for the checker's hundred-odd rows
//! is a small fraction of the proof.

use alloy_primitives::{B256, hex};
use rand::Rng;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::matrix::{self, Streams};
use crate::merkle::{self, Tree};
use crate::params::{Challenge, ProofError};

/// Rows of A multiplied per kernel call.
const BLOCK_ROWS: usize = 256;

/// A finished proof: the commitment, and what is needed to open rows of it.
#[derive(Clone, Debug)]
pub struct Proved {
    challenge: Challenge,
    tree: Tree,
    /// Rows that were not computed (committed as all zeros); empty for an honest host.
    skipped: Vec<bool>,
}

/// The rows a host opens in answer to the checker's request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Opening {
    pub rows: Vec<OpenedRow>,
}

/// One row of C with its Merkle path (siblings bottom-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenedRow {
    pub index: u32,
    /// On the wire: a hex string of the values' little-endian bytes.
    #[serde(with = "hex_i32")]
    pub values: Vec<i32>,
    pub path: Vec<B256>,
}

/// Computes C = A·B for the challenge and commits to it.
pub fn prove(challenge: &Challenge) -> Result<Proved, ProofError> {
    prove_inner(challenge, |_| false)
}

/// A dishonest host, for tests and demonstrations: skips about `skip_per_mille`/1000 of the
/// rows (chosen pseudo-randomly from `seed`), commits all zeros for them, and answers
/// openings from what it committed.
pub fn prove_skipping(
    challenge: &Challenge,
    skip_per_mille: u16,
    seed: u64,
) -> Result<Proved, ProofError> {
    if skip_per_mille > 1000 {
        return Err(ProofError::SkipPerMille(skip_per_mille));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    prove_inner(challenge, move |_| {
        rng.gen_range(0..1000u16) < skip_per_mille
    })
}

fn prove_inner(
    challenge: &Challenge,
    mut skip: impl FnMut(u32) -> bool,
) -> Result<Proved, ProofError> {
    let params = challenge.params;
    params.validate()?;
    let inner = params.inner as usize;
    let streams = Streams::new(&challenge.seed);
    let b = streams.b_f32(inner);

    let skipped: Vec<bool> = (0..params.rows).map(&mut skip).collect();
    let zero_row = vec![0i32; inner];
    let mut leaves = Vec::with_capacity(params.rows as usize);
    let mut leaf_buf = Vec::with_capacity(4 + 4 * inner);
    let mut a_block = vec![0f32; BLOCK_ROWS * inner];
    let mut c_block = vec![0f32; BLOCK_ROWS * inner];
    let mut a_bytes = vec![0u8; inner];
    let mut c_row = vec![0i32; inner];
    let mut block: Vec<u32> = Vec::with_capacity(BLOCK_ROWS);

    let mut start = 0u32;
    while start < params.rows {
        let end = start.saturating_add(BLOCK_ROWS as u32).min(params.rows);
        // The rows of this block that get computed; a skipper leaves its skipped rows out.
        block.clear();
        block.extend((start..end).filter(|&r| !skipped[r as usize]));
        for (slot, &row) in block.iter().enumerate() {
            streams.a_row_bytes(row, &mut a_bytes);
            let dst = &mut a_block[slot * inner..(slot + 1) * inner];
            for (d, &byte) in dst.iter_mut().zip(&a_bytes) {
                *d = f32::from(byte as i8);
            }
        }
        let n = block.len();
        if n > 0 {
            matrix::multiply_f32(
                &a_block[..n * inner],
                &b,
                n,
                inner,
                &mut c_block[..n * inner],
            );
        }
        let mut computed = block.iter().zip(c_block.chunks_exact(inner));
        let mut next = computed.next();
        for row in start..end {
            match next {
                Some((&r, c)) if r == row => {
                    for (dst, &x) in c_row.iter_mut().zip(c) {
                        // Exact: |x| ≤ 2^24 and integral (see `matrix`).
                        *dst = x as i32;
                    }
                    leaves.push(merkle::leaf(row, &c_row, &mut leaf_buf));
                    next = computed.next();
                }
                _ => leaves.push(merkle::leaf(row, &zero_row, &mut leaf_buf)),
            }
        }
        start = end;
    }
    Ok(Proved {
        challenge: *challenge,
        tree: Tree::new(leaves),
        skipped,
    })
}

impl Proved {
    /// The commitment to C that the host sends before the deadline.
    pub fn root(&self) -> B256 {
        self.tree.root()
    }

    pub fn challenge(&self) -> &Challenge {
        &self.challenge
    }

    /// How many rows were skipped (0 for [`prove`]).
    pub fn skipped_rows(&self) -> u32 {
        self.skipped.iter().filter(|&&s| s).count() as u32
    }

    /// Opens the given rows, in the order given. Errors on a row out of range or repeated.
    pub fn open(&self, rows: &[u32]) -> Result<Opening, ProofError> {
        let params = self.challenge.params;
        let mut seen = std::collections::BTreeSet::new();
        for &row in rows {
            if row >= params.rows {
                return Err(ProofError::RowOutOfRange {
                    row,
                    rows: params.rows,
                });
            }
            if !seen.insert(row) {
                return Err(ProofError::RepeatedRow(row));
            }
        }
        let inner = params.inner as usize;
        let streams = Streams::new(&self.challenge.seed);
        let b = if rows.is_empty() {
            Vec::new()
        } else {
            streams.b_i32(inner)
        };
        let rows = rows
            .iter()
            .map(|&index| {
                let values = if self.skipped[index as usize] {
                    vec![0; inner]
                } else {
                    matrix::row_times_b(&streams.a_row(index, inner), &b, inner)
                };
                OpenedRow {
                    index,
                    values,
                    path: self.tree.path(index),
                }
            })
            .collect();
        Ok(Opening { rows })
    }
}

/// `Vec<i32>` as a `0x`-prefixed hex string of its little-endian bytes.
mod hex_i32 {
    use super::*;

    pub(super) fn serialize<S: Serializer>(values: &[i32], s: S) -> Result<S::Ok, S::Error> {
        let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        s.serialize_str(&hex::encode_prefixed(bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<i32>, D::Error> {
        use serde::de::Error;
        let text = String::deserialize(d)?;
        let bytes = hex::decode(&text).map_err(D::Error::custom)?;
        if !bytes.len().is_multiple_of(4) {
            return Err(D::Error::custom(
                "row values must be a whole number of 4-byte words",
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .map(|w| i32::from_le_bytes([w[0], w[1], w[2], w[3]]))
            .collect())
    }
}

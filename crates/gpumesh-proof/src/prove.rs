//! The host's side: compute C block by block, commit to its rows, open the rows asked for.
//!
//! Memory stays bounded whatever the row count: B (inner² bytes, and 4·inner² more as `f32`
//! for the CPU kernel), one block of A and of C ([`BLOCK_ROWS`] rows each) and the Merkle
//! tree (64 bytes per row). The product itself is a closure over blocks ([`prove_with`]):
//! the CPU kernel for [`prove`], a device for a GPU prover; derivation, hashing and the
//! tree are this crate's either way, so the roots agree. C itself is not kept:
//! [`Proved::open`] recomputes each opened row from its row of A and B with integers,
//! inner² multiply-accumulates per row, which for the checker's hundred-odd rows is a small
//! fraction of the proof.
//!
//! [`prove_timed`] and [`prove_with_timed`] are the same proof with the time each phase
//! took ([`ProofTimings`]), by a clock the caller passes in: what `gpumesh bench proof`
//! measures a device's whole-proof rate with.

use std::convert::Infallible;
use std::time::Duration;

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Opening {
    pub rows: Vec<OpenedRow>,
}

/// One row of C with its Merkle path (siblings bottom-up).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OpenedRow {
    pub index: u32,
    /// On the wire: a hex string of the values' little-endian bytes.
    #[serde(with = "hex_i32")]
    #[schema(value_type = String)]
    pub values: Vec<i32>,
    pub path: Vec<B256>,
}

/// How long each phase of one proof took, by the clock passed to [`prove_timed`] or
/// [`prove_with_timed`]. The phases interleave block by block; each is the sum over the
/// blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProofTimings {
    /// Deriving B and every row of A from the seed.
    pub derive: Duration,
    /// The product C = A·B, block by block (for a device, its copies in and out too).
    pub product: Duration,
    /// Hashing each row of C into its Merkle leaf.
    pub hash_rows: Duration,
    /// Building the Merkle tree over the leaves.
    pub tree: Duration,
}

impl ProofTimings {
    /// The whole proof: the sum of the phases.
    pub fn total(&self) -> Duration {
        self.derive + self.product + self.hash_rows + self.tree
    }
}

/// Computes C = A·B for the challenge with this crate's CPU kernel and commits to it.
pub fn prove(challenge: &Challenge) -> Result<Proved, ProofError> {
    prove_timed(challenge, untimed).map(|(proved, _)| proved)
}

/// [`prove`], with the time each phase took. `now` is a monotonic clock (the time since
/// any fixed instant, as `Instant::elapsed` of one start gives), read once before the
/// first phase and at the end of every phase: three times per block of 256 rows and once
/// for the tree. This crate reads no clock of its own.
pub fn prove_timed(
    challenge: &Challenge,
    now: impl FnMut() -> Duration,
) -> Result<(Proved, ProofTimings), ProofError> {
    let mut kernel = CpuKernel::default();
    let proved = prove_inner(
        challenge,
        now,
        |_| false,
        |a, b, rows, c| kernel.multiply(a, b, rows, c),
    )?;
    Ok(proved.unwrap_or_else(|never| match never {}))
}

/// The clock of an untimed proof: it never moves, so every phase takes zero.
fn untimed() -> Duration {
    Duration::ZERO
}

/// Why [`prove_with`] made no proof.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProveWithError {
    /// The challenge's parameters are invalid.
    #[error(transparent)]
    Params(#[from] ProofError),
    /// The caller's product failed (a device error, say).
    #[error("the product failed: {0}")]
    Product(String),
}

/// Commits to C = A·B computed by `product`, which may run anywhere (a GPU): this crate
/// still derives A and B from the seed and hashes and commits the rows, so the root is
/// the one [`prove`] gives whenever `product` is right.
///
/// `product(a_block, b, rows, c_block)` must write `a_block · b` into `c_block`: `a_block`
/// is `rows × inner` (row-major, at most 256 rows), `b` is `inner × inner` (row-major, the
/// same slice on every call of one proof, so a device may upload it once), and `c_block`
/// is `rows × inner` INT32 (row-major, contents unspecified on entry).
pub fn prove_with(
    challenge: &Challenge,
    product: impl FnMut(&[i8], &[i8], usize, &mut [i32]) -> Result<(), String>,
) -> Result<Proved, ProveWithError> {
    prove_with_timed(challenge, untimed, product).map(|(proved, _)| proved)
}

/// [`prove_with`], with the time each phase took by the clock `now` (as in
/// [`prove_timed`]); `product`'s calls count as the product phase.
pub fn prove_with_timed(
    challenge: &Challenge,
    now: impl FnMut() -> Duration,
    product: impl FnMut(&[i8], &[i8], usize, &mut [i32]) -> Result<(), String>,
) -> Result<(Proved, ProofTimings), ProveWithError> {
    prove_inner(challenge, now, |_| false, product)?.map_err(ProveWithError::Product)
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
    let mut kernel = CpuKernel::default();
    let proved = prove_inner(
        challenge,
        untimed,
        move |_| rng.gen_range(0..1000u16) < skip_per_mille,
        |a, b, rows, c| kernel.multiply(a, b, rows, c),
    )?;
    Ok(proved.unwrap_or_else(|never| match never {}).0)
}

/// The CPU kernel as a block product: converts to `f32` and multiplies with
/// [`matrix::multiply_f32`], which is exact here (see `matrix`). One per proof: B is
/// converted on the first call and kept.
#[derive(Default)]
struct CpuKernel {
    b: Vec<f32>,
    a: Vec<f32>,
    c: Vec<f32>,
}

impl CpuKernel {
    fn multiply(
        &mut self,
        a: &[i8],
        b: &[i8],
        rows: usize,
        c: &mut [i32],
    ) -> Result<(), Infallible> {
        let inner = a.len() / rows;
        if self.b.len() != b.len() {
            self.b = b.iter().map(|&x| f32::from(x)).collect();
        }
        self.a.clear();
        self.a.extend(a.iter().map(|&x| f32::from(x)));
        self.c.resize(rows * inner, 0.0);
        matrix::multiply_f32(&self.a, &self.b, rows, inner, &mut self.c);
        for (dst, &x) in c.iter_mut().zip(&self.c) {
            // Exact: |x| ≤ 2^24 and integral (see `matrix`).
            *dst = x as i32;
        }
        Ok(())
    }
}

/// A clock split into laps, each added to one phase of [`ProofTimings`].
struct Laps<C> {
    now: C,
    last: Duration,
    timings: ProofTimings,
}

impl<C: FnMut() -> Duration> Laps<C> {
    fn start(mut now: C) -> Self {
        let last = now();
        Self {
            now,
            last,
            timings: ProofTimings::default(),
        }
    }

    /// Adds the time since the previous lap to the phase `phase` picks.
    fn lap(&mut self, phase: impl FnOnce(&mut ProofTimings) -> &mut Duration) {
        let now = (self.now)();
        *phase(&mut self.timings) += now.saturating_sub(self.last);
        self.last = now;
    }
}

/// Derives, multiplies block by block with `product` and commits, timing each phase by
/// `now`. The outer error is the challenge's (invalid parameters), the inner one the
/// product's.
fn prove_inner<E>(
    challenge: &Challenge,
    now: impl FnMut() -> Duration,
    mut skip: impl FnMut(u32) -> bool,
    mut product: impl FnMut(&[i8], &[i8], usize, &mut [i32]) -> Result<(), E>,
) -> Result<Result<(Proved, ProofTimings), E>, ProofError> {
    let params = challenge.params;
    params.validate()?;
    let mut laps = Laps::start(now);
    let inner = params.inner as usize;
    let streams = Streams::new(&challenge.seed);
    let b = streams.b_i8(inner);

    let skipped: Vec<bool> = (0..params.rows).map(&mut skip).collect();
    let zero_row = vec![0i32; inner];
    let mut leaves = Vec::with_capacity(params.rows as usize);
    let mut leaf_buf = Vec::with_capacity(4 + 4 * inner);
    let mut a_block = vec![0i8; BLOCK_ROWS * inner];
    let mut c_block = vec![0i32; BLOCK_ROWS * inner];
    let mut a_bytes = vec![0u8; inner];
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
                *d = byte as i8;
            }
        }
        laps.lap(|t| &mut t.derive);
        let n = block.len();
        if n > 0
            && let Err(e) = product(&a_block[..n * inner], &b, n, &mut c_block[..n * inner])
        {
            return Ok(Err(e));
        }
        laps.lap(|t| &mut t.product);
        let mut computed = block.iter().zip(c_block.chunks_exact(inner));
        let mut next = computed.next();
        for row in start..end {
            match next {
                Some((&r, c)) if r == row => {
                    leaves.push(merkle::leaf(row, c, &mut leaf_buf));
                    next = computed.next();
                }
                _ => leaves.push(merkle::leaf(row, &zero_row, &mut leaf_buf)),
            }
        }
        laps.lap(|t| &mut t.hash_rows);
        start = end;
    }
    let tree = Tree::new(leaves);
    laps.lap(|t| &mut t.tree);
    let proved = Proved {
        challenge: *challenge,
        tree,
        skipped,
    };
    Ok(Ok((proved, laps.timings)))
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

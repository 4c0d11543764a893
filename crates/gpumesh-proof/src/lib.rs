//! Capacity proofs (docs/capacity-proof.md).
//!
//! A host proves that it has the multiply throughput it claims: given a fresh [`Challenge`]
//! it derives two INT8 matrices from the seed, multiplies them exactly into INT32, commits
//! to the product's rows in a Merkle tree and answers with the root before a deadline
//! ([`prove`]). The checker then asks for a few random rows ([`pick_rows`]), and checks
//! each opened row against the root and, with Freivalds' test, against the seed
//! ([`verify`]), at well under 1% of the host's work. [`prove_with`] commits a product
//! computed elsewhere (a GPU) with the same derivation and commitment; [`prove_timed`] and
//! [`prove_with_timed`] also say how long each phase took, by a clock passed in.
//! [`timing`] turns a claimed rate into a deadline and gives the odds of catching a host
//! that skipped rows.
//!
//! This crate does no I/O, reads no clock and draws no unseeded randomness: the checker's
//! randomness comes in as an [`rand::RngCore`], the dishonest prover's as a seed, a timed
//! proof's clock as a function.

mod matrix;
mod merkle;
mod params;
mod prove;
pub mod timing;
mod verify;

pub use params::{Challenge, ProofError, ProofParams};
pub use prove::{
    OpenedRow, Opening, ProofTimings, ProveWithError, Proved, prove, prove_skipping, prove_timed,
    prove_with, prove_with_timed,
};
pub use timing::{deadline_ms, detection_probability, detection_probability_exact, expected_ms};
pub use verify::{ProofFailure, pick_rows, verify};

#[cfg(test)]
mod tests;

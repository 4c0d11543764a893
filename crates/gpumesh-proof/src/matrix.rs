//! The challenge's matrices and the host's multiply kernel.
//!
//! Every row of A and of B is its own ChaCha8 stream (stream number = row index) under a key
//! derived from the seed with a per-matrix domain, so anyone can derive one row without
//! deriving the rows before it. Entries are whole random bytes read as `i8` (the full range
//! -128..=127).
//!
//! The kernel multiplies blocks of A's rows by B in `f32` through ndarray's general matrix
//! multiply (matrixmultiply's sgemm, which picks AVX/FMA at run time). It is exact: each
//! product is at most 2^14 in magnitude and each sum has at most 1024 terms, so every
//! partial sum is an integer of magnitude at most 2^24, which `f32` represents exactly.
//! Measured single-threaded on the development machine (x86-64, release build, default
//! target features), rows 4096 × inner 512: sgemm ≈ 26 GMAC/s; the best plain integer
//! loops that LLVM vectorises: `i16` dot products ≈ 10 GMAC/s, `i16` axpy ≈ 9, `i32` axpy
//! ≈ 5, `f32` axpy ≈ 9; at inner 1024 sgemm ≈ 21–34 GMAC/s against ≈ 9 for the best loop.

use alloy_primitives::{B256, keccak256};
use ndarray::{ArrayView2, ArrayViewMut2, linalg::general_mat_mul};
use rand::RngCore;
use rand_chacha::{ChaCha8Rng, rand_core::SeedableRng};

const DOMAIN_A: &[u8] = b"gpumesh/capacity-proof/v1/A";
const DOMAIN_B: &[u8] = b"gpumesh/capacity-proof/v1/B";

/// The keys of A's and B's streams for one seed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Streams {
    key_a: [u8; 32],
    key_b: [u8; 32],
}

impl Streams {
    pub(crate) fn new(seed: &B256) -> Self {
        let key = |domain: &[u8]| {
            let mut preimage = Vec::with_capacity(domain.len() + 32);
            preimage.extend_from_slice(domain);
            preimage.extend_from_slice(seed.as_slice());
            keccak256(preimage).0
        };
        Self {
            key_a: key(DOMAIN_A),
            key_b: key(DOMAIN_B),
        }
    }

    fn fill(key: [u8; 32], row: u32, out: &mut [u8]) {
        let mut rng = ChaCha8Rng::from_seed(key);
        rng.set_stream(u64::from(row));
        rng.fill_bytes(out);
    }

    /// Row `row` of A (`out.len()` = inner) as raw bytes; read each as `i8`.
    pub(crate) fn a_row_bytes(&self, row: u32, out: &mut [u8]) {
        Self::fill(self.key_a, row, out);
    }

    /// Row `row` of B as raw bytes; read each as `i8`.
    pub(crate) fn b_row_bytes(&self, row: u32, out: &mut [u8]) {
        Self::fill(self.key_b, row, out);
    }

    pub(crate) fn a_row(&self, row: u32, inner: usize) -> Vec<i8> {
        let mut bytes = vec![0u8; inner];
        self.a_row_bytes(row, &mut bytes);
        bytes.into_iter().map(|b| b as i8).collect()
    }

    /// All of B, row-major, as `i8`: what a block product gets.
    pub(crate) fn b_i8(&self, inner: usize) -> Vec<i8> {
        let mut out = Vec::with_capacity(inner * inner);
        let mut bytes = vec![0u8; inner];
        for k in 0..inner as u32 {
            self.b_row_bytes(k, &mut bytes);
            out.extend(bytes.iter().map(|&b| b as i8));
        }
        out
    }

    /// All of B, row-major, as `i32` for exact row products.
    pub(crate) fn b_i32(&self, inner: usize) -> Vec<i32> {
        let mut out = Vec::with_capacity(inner * inner);
        let mut bytes = vec![0u8; inner];
        for k in 0..inner as u32 {
            self.b_row_bytes(k, &mut bytes);
            out.extend(bytes.iter().map(|&b| i32::from(b as i8)));
        }
        out
    }
}

/// C_block = A_block · B in `f32`; `a` is `rows × inner`, `b` is `inner × inner`, `c` is
/// `rows × inner`, all row-major. Exact for entries in the `i8` range and inner ≤ 1024.
pub(crate) fn multiply_f32(a: &[f32], b: &[f32], rows: usize, inner: usize, c: &mut [f32]) {
    let a = ArrayView2::from_shape((rows, inner), a).expect("A block matches its shape");
    let b = ArrayView2::from_shape((inner, inner), b).expect("B matches its shape");
    let mut c = ArrayViewMut2::from_shape((rows, inner), c).expect("C block matches its shape");
    general_mat_mul(1.0, &a, &b, 0.0, &mut c);
}

/// One row of C computed with integers: `a_row · B`, for openings (a few rows, so the
/// simple loop is fast enough).
pub(crate) fn row_times_b(a_row: &[i8], b: &[i32], inner: usize) -> Vec<i32> {
    let mut c = vec![0i32; inner];
    for (k, &a) in a_row.iter().enumerate() {
        let a = i32::from(a);
        for (cj, bj) in c.iter_mut().zip(&b[k * inner..(k + 1) * inner]) {
            *cj += a * bj;
        }
    }
    c
}

//! How a mutating HTTP request is signed.
//!
//! The client signs, with EIP-191 `personal_sign`, the text that [`request_message`]
//! builds from the chain id, method, path, a nonce, an expiry and the keccak256 of the
//! body, and sends the signer, nonce, expiry and signature in the headers below. The
//! indexer recovers the signer, rejects an expired signature, and accepts each
//! (signer, nonce) pair once.
//!
//! The nonce is the signing time in microseconds since the Unix epoch, made unique per
//! signer by the client. That lets the indexer remember used nonces in memory only: it
//! refuses nonces older than its own start or than the longest signature lifetime, so a
//! request signed before a restart can never be replayed after it.

use alloy_primitives::keccak256;

pub const HEADER_SIGNER: &str = "x-gpumesh-signer";
pub const HEADER_NONCE: &str = "x-gpumesh-nonce";
pub const HEADER_EXPIRES: &str = "x-gpumesh-expires";
pub const HEADER_SIGNATURE: &str = "x-gpumesh-signature";

/// The longest validity a request signature may claim, in milliseconds.
pub const MAX_SIGNATURE_TTL_MS: u64 = 5 * 60 * 1000;
/// How far a signer's clock may run ahead of the indexer's, in milliseconds.
pub const MAX_CLOCK_SKEW_MS: u64 = 30 * 1000;

/// The text a client signs for one request.
pub fn request_message(
    chain_id: u64,
    method: &str,
    path_and_query: &str,
    nonce: u64,
    expires_ms: u64,
    body: &[u8],
) -> String {
    format!(
        "gpumesh request\nchain: {chain_id}\n{method} {path_and_query}\nnonce: {nonce}\nexpires: {expires_ms}\nbody: {}",
        keccak256(body)
    )
}

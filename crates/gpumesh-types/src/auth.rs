//! How a mutating HTTP request is signed.
//!
//! The client signs, with EIP-191 `personal_sign`, the text that [`request_message`]
//! builds from the chain id, method, path, a nonce, an expiry and the keccak256 of the
//! body, and sends the signer, nonce, expiry and signature in the headers below. The
//! indexer recovers the signer, rejects an expired signature, and accepts each
//! (signer, nonce) pair once.

use alloy_primitives::keccak256;

pub const HEADER_SIGNER: &str = "x-gpumesh-signer";
pub const HEADER_NONCE: &str = "x-gpumesh-nonce";
pub const HEADER_EXPIRES: &str = "x-gpumesh-expires";
pub const HEADER_SIGNATURE: &str = "x-gpumesh-signature";

/// The longest validity a request signature may claim, in milliseconds.
pub const MAX_SIGNATURE_TTL_MS: u64 = 5 * 60 * 1000;

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

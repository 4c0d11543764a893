//! The signature envelope of a mutating request (`gpumesh_indexer::authenticate`): any
//! headers and body give a signer or a coded refusal, never a panic. Half the inputs carry
//! a real signature over a fuzzed method, path and body, so the checks past recovery run.
#![no_main]

use gpumesh_identity::Wallet;
use gpumesh_types::auth::{
    HEADER_EXPIRES, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SIGNER, MAX_CLOCK_SKEW_MS,
    MAX_SIGNATURE_TTL_MS, request_message,
};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const NOW: u64 = 1_800_000_000_000;
const CHAIN: u64 = 31337;

fn put(headers: &mut HeaderMap, name: &'static str, value: &[u8]) {
    if let Ok(value) = HeaderValue::from_bytes(value) {
        headers.insert(HeaderName::from_static(name), value);
    }
}

fuzz_target!(|data: &[u8]| {
    // Fields split at 0xff: flags, method, path, signer, nonce, expires, signature, body.
    let mut parts = data.splitn(8, |&b| b == 0xff);
    let flags = parts.next().and_then(|f| f.first().copied()).unwrap_or(0);
    let mut field = || parts.next().unwrap_or_default();
    let (method, path, signer, nonce, expires, signature, body) = (
        field(),
        field(),
        field(),
        field(),
        field(),
        field(),
        field(),
    );
    let method = String::from_utf8_lossy(method);
    let path = String::from_utf8_lossy(path);
    let mut headers = HeaderMap::new();
    if flags & 1 == 1 {
        // A real signature by a real key over what follows; the fuzzer picks the nonce and
        // expiry as numbers (possibly far outside the window) and may break one header.
        let wallet = Wallet::from_label("fuzz");
        let nonce = u64::from_le_bytes(pad(nonce));
        let expires = u64::from_le_bytes(pad(expires));
        let message = request_message(CHAIN, &method, &path, nonce, expires, body);
        let sig = gpumesh_types::Sig(wallet.sign_message(message.as_bytes()));
        put(
            &mut headers,
            HEADER_SIGNER,
            wallet.address().to_string().as_bytes(),
        );
        put(&mut headers, HEADER_NONCE, nonce.to_string().as_bytes());
        put(&mut headers, HEADER_EXPIRES, expires.to_string().as_bytes());
        let sig = serde_json::to_value(sig).unwrap();
        put(
            &mut headers,
            HEADER_SIGNATURE,
            sig.as_str().unwrap().as_bytes(),
        );
        if flags & 2 == 2 {
            put(&mut headers, HEADER_SIGNATURE, signature);
        }
        let result = gpumesh_indexer::authenticate(&headers, &method, &path, body, CHAIN, NOW);
        let in_window = expires >= NOW && expires <= NOW + MAX_SIGNATURE_TTL_MS + MAX_CLOCK_SKEW_MS;
        if flags & 2 == 0 {
            assert_eq!(
                result.is_ok(),
                in_window,
                "{:?}",
                result.err().map(|e| e.message)
            );
            if let Ok((signer, n)) = result {
                assert_eq!((signer, n), (wallet.address(), nonce));
            }
        }
    } else {
        put(&mut headers, HEADER_SIGNER, signer);
        put(&mut headers, HEADER_NONCE, nonce);
        put(&mut headers, HEADER_EXPIRES, expires);
        put(&mut headers, HEADER_SIGNATURE, signature);
        let _ = gpumesh_indexer::authenticate(&headers, &method, &path, body, CHAIN, NOW);
    }
});

fn pad(bytes: &[u8]) -> [u8; 8] {
    let mut out = [0u8; 8];
    let n = bytes.len().min(8);
    out[..n].copy_from_slice(&bytes[..n]);
    out
}

//! Authentication of requests: the [`Signed`] extractor.
//!
//! It reads the signature headers of [`gpumesh_types::auth`], reads the body (up to a
//! limit), recovers the signer from the EIP-191 signature, checks the expiry and the
//! nonce's freshness, refuses a nonce it has seen, and only then decodes the JSON body.

use std::collections::{BTreeSet, HashSet};
use std::sync::Mutex;

use alloy_primitives::Address;
use axum::extract::{FromRequest, Request};
use axum::http::HeaderMap;
use gpumesh_types::auth::{
    HEADER_EXPIRES, HEADER_NONCE, HEADER_SIGNATURE, HEADER_SIGNER, MAX_CLOCK_SKEW_MS,
    MAX_SIGNATURE_TTL_MS, request_message,
};
use gpumesh_types::{ErrorCode, Sig};
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::error::{Failure, decode_body};

/// The largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Nonces seen recently, per signer, each until it could no longer be accepted anyway.
///
/// Every request costs O(log n): a set answers "seen?", and an index by forgetting time
/// lets each request drop the expired entries at the front. Memory is bounded by the
/// requests signed within the signature lifetime, at any request rate.
#[derive(Debug)]
pub struct NonceBook {
    started_ms: u64,
    book: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    nonces: HashSet<(Address, u64)>,
    /// (forget at, signer, nonce), oldest first.
    by_expiry: BTreeSet<(u64, Address, u64)>,
}

impl Seen {
    fn forget_until(&mut self, now_ms: u64) {
        while let Some(&(at, signer, nonce)) = self.by_expiry.first() {
            if at >= now_ms {
                break;
            }
            self.by_expiry.pop_first();
            self.nonces.remove(&(signer, nonce));
        }
    }
}

impl NonceBook {
    pub fn new(started_ms: u64) -> NonceBook {
        NonceBook {
            started_ms,
            book: Mutex::new(Seen::default()),
        }
    }

    /// Accepts a fresh nonce once.
    fn admit(&self, signer: Address, nonce_us: u64, now_ms: u64) -> Result<(), Failure> {
        let signed_ms = nonce_us / 1_000;
        let oldest = self
            .started_ms
            .max(now_ms.saturating_sub(MAX_SIGNATURE_TTL_MS));
        if signed_ms < oldest {
            return Err(Failure::new(
                ErrorCode::SignatureExpired,
                "the request's nonce (its signing time in microseconds) is too old; sign it again",
            ));
        }
        if signed_ms > now_ms + MAX_CLOCK_SKEW_MS {
            return Err(Failure::new(
                ErrorCode::SignatureExpired,
                "the request's nonce lies in the future; check the signer's clock",
            ));
        }
        let mut seen = self.book.lock().unwrap_or_else(|p| p.into_inner());
        seen.forget_until(now_ms);
        if !seen.nonces.insert((signer, nonce_us)) {
            return Err(Failure::new(
                ErrorCode::ReplayedRequest,
                "this signed request was already used",
            ));
        }
        let forget_at = signed_ms + MAX_SIGNATURE_TTL_MS + MAX_CLOCK_SKEW_MS;
        seen.by_expiry.insert((forget_at, signer, nonce_us));
        Ok(())
    }

    /// Forgets nonces too old to be accepted again anyway.
    pub fn prune(&self, now_ms: u64) {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .forget_until(now_ms);
    }

    /// How many nonces are remembered.
    pub(crate) fn len(&self) -> usize {
        self.book
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .nonces
            .len()
    }
}

/// Checks a request's signature envelope, without its nonce's freshness: the signer named
/// in the headers signed this method, path and body for this chain, and the signature's
/// expiry is in the allowed window at `now`. Returns the signer and the nonce. Pure, so
/// that the fuzz target drives the same code.
pub fn authenticate(
    headers: &HeaderMap,
    method: &str,
    path: &str,
    body: &[u8],
    chain_id: u64,
    now: u64,
) -> Result<(Address, u64), Failure> {
    let signer: Address = header(headers, HEADER_SIGNER)?.parse().map_err(|_| {
        Failure::new(
            ErrorCode::BadSignature,
            format!("header {HEADER_SIGNER} is not an address"),
        )
    })?;
    let nonce = number(headers, HEADER_NONCE)?;
    let expires_ms = number(headers, HEADER_EXPIRES)?;
    let signature: Sig = header(headers, HEADER_SIGNATURE)?.parse().map_err(|e| {
        Failure::new(
            ErrorCode::BadSignature,
            format!("header {HEADER_SIGNATURE}: {e}"),
        )
    })?;
    let message = request_message(chain_id, method, path, nonce, expires_ms, body);
    let recovered = signature
        .0
        .recover_address_from_msg(message.as_bytes())
        .map_err(|e| {
            Failure::new(
                ErrorCode::BadSignature,
                format!("signature does not recover: {e}"),
            )
        })?;
    if recovered != signer {
        return Err(Failure::new(
            ErrorCode::BadSignature,
            format!(
                "signature is by {recovered}, not by the claimed signer {signer} (or the request was altered)"
            ),
        ));
    }
    if expires_ms < now {
        return Err(Failure::new(
            ErrorCode::SignatureExpired,
            "the request's signature has expired",
        ));
    }
    if expires_ms > now.saturating_add(MAX_SIGNATURE_TTL_MS + MAX_CLOCK_SKEW_MS) {
        return Err(Failure::new(
            ErrorCode::SignatureExpired,
            format!(
                "a request signature may be valid for at most {} s",
                MAX_SIGNATURE_TTL_MS / 1000
            ),
        ));
    }
    Ok((signer, nonce))
}

/// A request whose signer was authenticated, with its decoded JSON body.
#[derive(Debug)]
pub struct Signed<T> {
    pub signer: Address,
    pub body: T,
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Result<&'a str, Failure> {
    headers
        .get(name)
        .ok_or_else(|| {
            Failure::new(
                ErrorCode::MissingSignature,
                format!("request is not signed: header {name} is missing"),
            )
        })?
        .to_str()
        .map_err(|_| {
            Failure::new(
                ErrorCode::BadSignature,
                format!("header {name} is not text"),
            )
        })
}

fn number(headers: &HeaderMap, name: &str) -> Result<u64, Failure> {
    header(headers, name)?.parse().map_err(|_| {
        Failure::new(
            ErrorCode::BadSignature,
            format!("header {name} is not a whole number"),
        )
    })
}

impl<T: DeserializeOwned + Send> FromRequest<AppState> for Signed<T> {
    type Rejection = Failure;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        let (parts, body) = req.into_parts();
        let headers = &parts.headers;
        let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES)
            .await
            .map_err(|_| {
                Failure::new(
                    ErrorCode::BodyTooLarge,
                    format!("request body is over {MAX_BODY_BYTES} bytes"),
                )
            })?;
        let path = parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |p| p.as_str());
        let now = crate::now_ms();
        let (signer, nonce) = authenticate(
            headers,
            parts.method.as_str(),
            path,
            &bytes,
            state.chain_id,
            now,
        )?;
        state.nonces.admit(signer, nonce, now)?;
        let body = if bytes.is_empty() {
            decode_body(b"null").or_else(|_| decode_body(b"{}"))?
        } else {
            decode_body(&bytes)?
        };
        Ok(Signed { signer, body })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_taken_once_and_memory_follows_the_signature_lifetime() {
        let book = NonceBook::new(0);
        let signer = Address::with_last_byte(1);
        book.admit(signer, 5_000, 5).unwrap();
        let again = book.admit(signer, 5_000, 6).unwrap_err();
        assert_eq!(again.code, ErrorCode::ReplayedRequest);
        book.admit(Address::with_last_byte(2), 5_000, 6).unwrap();

        // One request every 10 ms for 400 s of signing times: the book never holds more
        // than the lifetime's worth, and forgets as it goes.
        let lifetime = MAX_SIGNATURE_TTL_MS + MAX_CLOCK_SKEW_MS;
        let mut most = 0;
        for i in 1..=40_000u64 {
            let now = 10 + i * 10;
            book.admit(signer, now * 1_000, now).unwrap();
            most = most.max(book.len());
            assert!(
                book.len() as u64 <= lifetime / 10 + 3,
                "{} at {now}",
                book.len()
            );
        }
        assert!(most as u64 >= lifetime / 10 - 1, "{most}");
        book.prune(10 + 40_000 * 10 + lifetime + 1);
        assert_eq!(book.len(), 0);
    }
}

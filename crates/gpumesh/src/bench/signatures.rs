//! `gpumesh bench signatures`: what checking a signed request costs the indexer, by part,
//! with the two secp256k1 implementations the project can use side by side.
//!
//! Every mutating request carries an EIP-191 signature over its method, path, nonce,
//! expiry and body; the indexer hashes that message and recovers the signer's address.
//! Recovery is the bulk of it. alloy's primitives offer it through k256 (pure Rust) and
//! through libsecp256k1 (the C library, the `secp256k1` crate); with both features on,
//! `recover_address_from_msg`, which the indexer calls, takes libsecp256k1. This command
//! times each on the same signatures, on one thread, and checks that they agree.

use std::process::ExitCode;
use std::time::Instant;

use alloy_primitives::{Address, B256, eip191_hash_message};
use anyhow::ensure;
use gpumesh_identity::Wallet;
use gpumesh_types::auth::request_message;
use serde_json::json;

use super::{print_report, round};
use crate::cli::SignaturesBenchArgs;

pub fn run(args: SignaturesBenchArgs) -> anyhow::Result<ExitCode> {
    ensure!(args.signatures > 0, "--signatures must be at least 1");
    // A typical request: a heartbeat-sized JSON body, each signed by its own key.
    let body = br#"{"containers":[{"gpu":0,"utilization":71,"vram_used_mib":40210}]}"#;
    let signed: Vec<(String, alloy_primitives::Signature, Address)> = (0..args.signatures)
        .map(|i| {
            let wallet = Wallet::from_label(&format!("bench signer {i}"));
            let nonce = 1_800_000_000_000_000 + i as u64;
            let message =
                request_message(1, "POST", "/v1/hosts/heartbeat", nonce, nonce / 1000, body);
            let signature = wallet.sign_message(message.as_bytes());
            (message, signature, wallet.address())
        })
        .collect();

    let t = Instant::now();
    let hashes: Vec<B256> = signed
        .iter()
        .map(|(message, ..)| eip191_hash_message(message.as_bytes()))
        .collect();
    let hash_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut k256_ok = 0u64;
    for ((.., signature, signer), hash) in signed.iter().zip(&hashes) {
        let key = signature.recover_from_prehash(hash)?;
        k256_ok += u64::from(Address::from_public_key(&key) == *signer);
    }
    let k256_s = t.elapsed().as_secs_f64();

    let t = Instant::now();
    let mut secp_ok = 0u64;
    for ((.., signature, signer), hash) in signed.iter().zip(&hashes) {
        let key = signature.recover_from_prehash_secp256k1(hash)?;
        secp_ok +=
            u64::from(Address::from_raw_public_key(&key.serialize_uncompressed()[1..]) == *signer);
    }
    let secp_s = t.elapsed().as_secs_f64();

    // What the indexer runs per request: the hash and the recovery, through the default.
    let t = Instant::now();
    let mut default_ok = 0u64;
    for (message, signature, signer) in &signed {
        default_ok += u64::from(signature.recover_address_from_msg(message.as_bytes())? == *signer);
    }
    let default_s = t.elapsed().as_secs_f64();

    let n = args.signatures as u64;
    ensure!(
        (k256_ok, secp_ok, default_ok) == (n, n, n),
        "a recovery gave another signer: k256 {k256_ok}, libsecp256k1 {secp_ok}, default {default_ok} of {n}"
    );
    let us = |s: f64| round(s * 1e6 / n as f64, 2);
    let report = json!({
        "bench": "signatures",
        "signatures": n,
        "message_bytes": signed[0].0.len(),
        "eip191_hash_us": us(hash_s),
        "recover_k256_us": us(k256_s),
        "recover_libsecp256k1_us": us(secp_s),
        "libsecp256k1_speedup": round(k256_s / secp_s, 2),
        "request_check_us": us(default_s),
        "request_checks_per_core_s": (n as f64 / default_s).round(),
    });
    print_report(&report, args.json)?;
    Ok(ExitCode::SUCCESS)
}

//! Ethereum keystores (Web3 Secret Storage, version 3), the key files of geth, Foundry,
//! MetaMask and eth-account: the secret encrypted with AES-128-CTR under a key derived
//! from the password by scrypt, and a MAC (keccak256 of the key's second half and the
//! ciphertext) that tells a wrong password from a right one.
//!
//! gpumesh writes them itself, to choose scrypt's cost and to name the address (which
//! `gpumesh wallet address` reads without the password); it opens them, scrypt or PBKDF2,
//! with the `eth-keystore` crate.

use std::path::Path;

use aes::cipher::{KeyIvInit, StreamCipher};
use alloy_primitives::{Address, hex, keccak256};
use rand::{CryptoRng, RngCore};
use serde::Deserialize;
use serde_json::json;

use crate::Kdf;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// The fields read before decrypting.
#[derive(Deserialize)]
struct Header {
    version: u8,
    #[serde(default)]
    address: Option<String>,
    crypto: Crypto,
}

#[derive(Deserialize)]
struct Crypto {
    cipher: String,
    kdf: String,
}

/// Checks that `text` is a version 3 keystore gpumesh can open and returns the address it
/// names, if any.
pub(crate) fn inspect(text: &str) -> Result<Option<Address>, String> {
    let header: Header = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if header.version != 3 {
        return Err(format!(
            "version {} (only version 3 is read)",
            header.version
        ));
    }
    if header.crypto.cipher != "aes-128-ctr" {
        return Err(format!(
            "cipher {:?} (only aes-128-ctr)",
            header.crypto.cipher
        ));
    }
    if !matches!(header.crypto.kdf.as_str(), "scrypt" | "pbkdf2") {
        return Err(format!(
            "kdf {:?} (only scrypt or pbkdf2)",
            header.crypto.kdf
        ));
    }
    header
        .address
        .map(|a| {
            let a = a.strip_prefix("0x").unwrap_or(&a).to_string();
            format!("0x{a}")
                .parse::<Address>()
                .map_err(|e| format!("its address is not one: {e}"))
        })
        .transpose()
}

pub(crate) enum DecryptError {
    /// The MAC does not match: a wrong password (or a damaged file).
    Mac,
    Malformed(String),
}

/// The 32-byte secret of the keystore at `path`.
pub(crate) fn decrypt(path: &Path, password: &str) -> Result<Vec<u8>, DecryptError> {
    eth_keystore::decrypt_key(path, password).map_err(|e| match e {
        eth_keystore::KeystoreError::MacMismatch => DecryptError::Mac,
        other => DecryptError::Malformed(other.to_string()),
    })
}

/// A keystore of `secret` (whose address is `address`) as JSON text.
pub(crate) fn encrypt(
    secret: &[u8; 32],
    address: Address,
    password: &str,
    kdf: Kdf,
    rng: &mut (impl RngCore + CryptoRng),
) -> String {
    let log_n = match kdf {
        Kdf::Standard => 18,
        Kdf::Light => 12,
    };
    let (r, p) = (8, 1);
    let mut salt = [0u8; 32];
    let mut iv = [0u8; 16];
    let mut id = [0u8; 16];
    rng.fill_bytes(&mut salt);
    rng.fill_bytes(&mut iv);
    rng.fill_bytes(&mut id);
    let params = scrypt::Params::new(log_n, r, p).expect("fixed scrypt parameters are valid");
    let mut derived = [0u8; 32];
    scrypt::scrypt(password.as_bytes(), &salt, &params, &mut derived)
        .expect("a 32-byte scrypt output is valid");
    let mut ciphertext = secret.to_vec();
    Aes128Ctr::new(derived[..16].into(), (&iv).into()).apply_keystream(&mut ciphertext);
    let mac = keccak256([&derived[16..], &ciphertext[..]].concat());
    // A random (version 4) UUID.
    id[6] = (id[6] & 0x0f) | 0x40;
    id[8] = (id[8] & 0x3f) | 0x80;
    let id = hex::encode(id);
    let uuid = format!(
        "{}-{}-{}-{}-{}",
        &id[..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..]
    );
    let mut text = serde_json::to_string_pretty(&json!({
        "version": 3,
        "id": uuid,
        "address": hex::encode(address.as_slice()),
        "crypto": {
            "cipher": "aes-128-ctr",
            "cipherparams": { "iv": hex::encode(iv) },
            "ciphertext": hex::encode(&ciphertext),
            "kdf": "scrypt",
            "kdfparams": {
                "dklen": 32,
                "n": 1u32 << log_n,
                "r": r,
                "p": p,
                "salt": hex::encode(salt),
            },
            "mac": hex::encode(mac),
        },
    }))
    .expect("a keystore serialises");
    text.push('\n');
    text
}

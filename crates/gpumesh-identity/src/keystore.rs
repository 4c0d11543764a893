//! Ethereum keystores (Web3 Secret Storage, version 3), the key files of geth, Foundry,
//! MetaMask and eth-account: the secret encrypted with AES-128-CTR under a key derived
//! from the password by scrypt, and a MAC (keccak256 of the key's second half and the
//! ciphertext) that tells a wrong password from a right one.
//!
//! gpumesh writes them itself, to choose scrypt's cost and to name the address (which
//! `gpumesh wallet address` reads without the password), and opens them itself (scrypt or
//! PBKDF2), checking every size and cost a file asks for before doing any work: keystores
//! come from other tools and are outside input.

use aes::cipher::{KeyIvInit, StreamCipher};
use alloy_primitives::{Address, hex, keccak256};
use rand::{CryptoRng, RngCore};
use serde::Deserialize;
use serde_json::json;

use crate::Kdf;

type Aes128Ctr = ctr::Ctr128BE<aes::Aes128>;

/// A keystore as read: the fields decryption needs, checked before any work is done.
#[derive(Deserialize)]
struct Keystore {
    version: u8,
    #[serde(default)]
    address: Option<String>,
    crypto: Crypto,
}

#[derive(Deserialize)]
struct Crypto {
    cipher: String,
    cipherparams: CipherParams,
    ciphertext: String,
    kdf: String,
    kdfparams: serde_json::Value,
    mac: String,
}

#[derive(Deserialize)]
struct CipherParams {
    iv: String,
}

#[derive(Deserialize)]
struct ScryptParams {
    dklen: u32,
    n: u64,
    r: u32,
    p: u32,
    salt: String,
}

#[derive(Deserialize)]
struct Pbkdf2Params {
    c: u32,
    dklen: u32,
    prf: String,
    salt: String,
}

/// The most memory scrypt may take to open a keystore (128 × r × N bytes): 1 GiB, four
/// times geth's standard cost; a file asking for more is refused, not obeyed.
const MAX_SCRYPT_BYTES: u64 = 1 << 30;
/// The most work (128 × r × N × p) scrypt may do: eight times geth's standard cost, some
/// seconds, so that no file keeps a command busy for minutes.
const MAX_SCRYPT_WORK: u64 = 1 << 31;
/// The most PBKDF2 rounds a keystore may ask for (geth's PBKDF2 files use 262,144).
const MAX_PBKDF2_ROUNDS: u32 = 10_000_000;

fn parse(text: &str) -> Result<Keystore, String> {
    let keystore: Keystore = serde_json::from_str(text).map_err(|e| e.to_string())?;
    if keystore.version != 3 {
        return Err(format!(
            "version {} (only version 3 is read)",
            keystore.version
        ));
    }
    if keystore.crypto.cipher != "aes-128-ctr" {
        return Err(format!(
            "cipher {:?} (only aes-128-ctr)",
            keystore.crypto.cipher
        ));
    }
    Ok(keystore)
}

fn hex_field(name: &str, text: &str, len: usize) -> Result<Vec<u8>, String> {
    let bytes = hex::decode(text).map_err(|_| format!("its {name} is not hex"))?;
    if bytes.len() != len {
        return Err(format!("its {name} is {} bytes, not {len}", bytes.len()));
    }
    Ok(bytes)
}

/// The AES-CTR counter. Python's eth-keyfile (behind eth-account) writes it as a big-endian
/// integer whose leading zero bytes are dropped, so one file in 256 has a 15-byte IV; it is
/// read the same way, left-padded to 16 bytes.
fn iv_field(text: &str) -> Result<[u8; 16], String> {
    let bytes = hex::decode(text).map_err(|_| "its iv is not hex".to_string())?;
    if bytes.is_empty() || bytes.len() > 16 {
        return Err(format!("its iv is {} bytes, not 1 to 16", bytes.len()));
    }
    let mut iv = [0u8; 16];
    iv[16 - bytes.len()..].copy_from_slice(&bytes);
    Ok(iv)
}

/// Checks that `text` is a version 3 keystore gpumesh can open and returns the address it
/// names, if any.
pub(crate) fn inspect(text: &str) -> Result<Option<Address>, String> {
    parse(text)?
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

/// The 32-byte secret of a keystore. Every size and cost is checked before any work, so a
/// hostile file gets an error, never a panic or an unbounded computation.
pub(crate) fn decrypt(text: &str, password: &str) -> Result<[u8; 32], DecryptError> {
    let bad = DecryptError::Malformed;
    let keystore = parse(text).map_err(bad)?;
    let crypto = keystore.crypto;
    let iv = iv_field(&crypto.cipherparams.iv).map_err(bad)?;
    let ciphertext = hex_field("ciphertext", &crypto.ciphertext, 32).map_err(bad)?;
    let mac = hex_field("mac", &crypto.mac, 32).map_err(bad)?;
    let mut derived = [0u8; 32];
    match crypto.kdf.as_str() {
        "scrypt" => {
            let p: ScryptParams = serde_json::from_value(crypto.kdfparams)
                .map_err(|e| bad(format!("its scrypt parameters: {e}")))?;
            let salt = hex::decode(&p.salt).map_err(|_| bad("its salt is not hex".into()))?;
            if p.dklen != 32 {
                return Err(bad(format!("scrypt dklen {} (only 32)", p.dklen)));
            }
            if !p.n.is_power_of_two() || p.n < 2 {
                return Err(bad(format!("scrypt n {} is not a power of two", p.n)));
            }
            let memory = 128u64.saturating_mul(u64::from(p.r)).saturating_mul(p.n);
            if p.r == 0
                || p.p == 0
                || memory > MAX_SCRYPT_BYTES
                || memory.saturating_mul(u64::from(p.p)) > MAX_SCRYPT_WORK
            {
                return Err(bad(format!(
                    "scrypt n {} r {} p {} would take more than 1 GiB, or eight times geth's standard work",
                    p.n, p.r, p.p
                )));
            }
            let params = scrypt::Params::new(p.n.trailing_zeros() as u8, p.r, p.p)
                .map_err(|e| bad(format!("scrypt parameters: {e}")))?;
            scrypt::scrypt(password.as_bytes(), &salt, &params, &mut derived)
                .map_err(|e| bad(format!("scrypt: {e}")))?;
        }
        "pbkdf2" => {
            let p: Pbkdf2Params = serde_json::from_value(crypto.kdfparams)
                .map_err(|e| bad(format!("its pbkdf2 parameters: {e}")))?;
            let salt = hex::decode(&p.salt).map_err(|_| bad("its salt is not hex".into()))?;
            if p.dklen != 32 || p.prf != "hmac-sha256" || p.c == 0 || p.c > MAX_PBKDF2_ROUNDS {
                return Err(bad(format!(
                    "pbkdf2 with dklen {}, prf {:?}, {} rounds (only 32, hmac-sha256, at most {MAX_PBKDF2_ROUNDS})",
                    p.dklen, p.prf, p.c
                )));
            }
            pbkdf2::pbkdf2::<hmac::Hmac<sha2::Sha256>>(
                password.as_bytes(),
                &salt,
                p.c,
                &mut derived,
            );
        }
        other => return Err(bad(format!("kdf {other:?} (only scrypt or pbkdf2)"))),
    }
    let expected = keccak256([&derived[16..], &ciphertext[..]].concat());
    // In constant time: how much of the MAC matched says nothing.
    let differs = expected
        .iter()
        .zip(&mac)
        .fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if differs != 0 {
        return Err(DecryptError::Mac);
    }
    let mut secret = [0u8; 32];
    secret.copy_from_slice(&ciphertext);
    Aes128Ctr::new(derived[..16].into(), (&iv).into()).apply_keystream(&mut secret);
    Ok(secret)
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

//! Identities: secp256k1 key pairs whose addresses are Ethereum addresses.
//!
//! A [`Wallet`] signs EIP-191 messages, which is how gpumesh signs both HTTP requests
//! ([`gpumesh_types::auth`]) and ledger transactions ([`gpumesh_types::Tx`]); the same
//! key works unchanged in an Ethereum wallet. Key files hold the secret in hex, are
//! created readable by their owner only, and are never overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, Signature, eip191_hash_message, hex, keccak256};
use gpumesh_types::{Sig, SignedTx, Tx};
use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};

/// A secp256k1 key pair.
#[derive(Clone)]
pub struct Wallet {
    key: SigningKey,
    address: Address,
}

impl std::fmt::Debug for Wallet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Wallet")
            .field("address", &self.address)
            .finish()
    }
}

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("key file {path} already exists; refusing to overwrite a key")]
    Exists { path: PathBuf },
    #[error("failed to {action} key file {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not a gpumesh key file: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` first")]
    TooOpen { path: PathBuf, mode: u32 },
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    address: Address,
    secret_key: String,
}

impl Wallet {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Wallet {
        Wallet::from_key(SigningKey::random(&mut rand::rngs::OsRng))
    }

    /// A key derived from a label: deterministic, for tests and simulations only.
    pub fn from_label(label: &str) -> Wallet {
        let mut seed = keccak256(label.as_bytes());
        loop {
            if let Ok(key) = SigningKey::from_slice(seed.as_slice()) {
                return Wallet::from_key(key);
            }
            seed = keccak256(seed);
        }
    }

    /// A key from its 32-byte secret in hex (with or without `0x`).
    pub fn from_secret_hex(secret: &str) -> Result<Wallet, String> {
        let bytes = hex::decode(secret.trim()).map_err(|e| format!("secret is not hex: {e}"))?;
        SigningKey::from_slice(&bytes)
            .map(Wallet::from_key)
            .map_err(|_| "secret is not a valid secp256k1 scalar".to_string())
    }

    fn from_key(key: SigningKey) -> Wallet {
        let address = Address::from_public_key(key.verifying_key());
        Wallet { key, address }
    }

    pub fn address(&self) -> Address {
        self.address
    }

    pub fn secret_hex(&self) -> String {
        hex::encode_prefixed(self.key.to_bytes())
    }

    /// Signs a 32-byte digest as is.
    pub fn sign_prehash(&self, digest: &B256) -> Signature {
        // Signing a 32-byte prehash with a valid key cannot fail.
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(digest.as_slice())
            .expect("a 32-byte prehash signs");
        Signature::from_signature_and_parity(sig, recid.is_y_odd())
    }

    /// Signs `message` the way `personal_sign` does (EIP-191, version 0x45).
    pub fn sign_message(&self, message: impl AsRef<[u8]>) -> Signature {
        self.sign_prehash(&eip191_hash_message(message))
    }

    /// Signs a ledger transaction. The transaction's `from` must be this wallet.
    pub fn sign_tx(&self, tx: Tx) -> SignedTx {
        debug_assert_eq!(
            tx.from, self.address,
            "signing a transaction of another account"
        );
        let signature = Sig(self.sign_message(tx.hash()));
        SignedTx { tx, signature }
    }

    /// Writes a new key file readable by its owner only; never overwrites.
    pub fn save(&self, path: &Path) -> Result<(), KeyFileError> {
        let io = |action, source| KeyFileError::Io {
            action,
            path: path.to_path_buf(),
            source,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
        }
        let mut options = OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io("create", e)
            }
        })?;
        let body = KeyFile {
            address: self.address,
            secret_key: self.secret_hex(),
        };
        let mut text = serde_json::to_string_pretty(&body).expect("key file serialises");
        text.push('\n');
        file.write_all(text.as_bytes())
            .map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))
    }

    /// Reads a key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<Wallet, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map_err(|source| KeyFileError::Io {
                    action: "inspect",
                    path: path.to_path_buf(),
                    source,
                })?
                .permissions()
                .mode();
            if mode & 0o077 != 0 {
                return Err(KeyFileError::TooOpen {
                    path: path.to_path_buf(),
                    mode: mode & 0o777,
                });
            }
        }
        let malformed = |reason: String| KeyFileError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let file: KeyFile = serde_json::from_str(&text).map_err(|e| malformed(e.to_string()))?;
        let wallet = Wallet::from_secret_hex(&file.secret_key).map_err(malformed)?;
        if wallet.address != file.address {
            return Err(malformed(format!(
                "its address {} does not match its key ({})",
                file.address, wallet.address
            )));
        }
        Ok(wallet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpumesh_types::{Amount, TxKind};

    #[test]
    fn known_key_has_known_address() {
        // The first account of the Hardhat/Anvil test mnemonic.
        let wallet = Wallet::from_secret_hex(
            "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
        )
        .unwrap();
        assert_eq!(
            wallet.address().to_string(),
            "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
        );
        let sig = wallet.sign_message("hello");
        assert_eq!(
            sig.recover_address_from_msg("hello").unwrap(),
            wallet.address()
        );
    }

    #[test]
    fn signed_transactions_verify_and_tampering_is_caught() {
        let alice = Wallet::from_label("alice");
        let bob = Wallet::from_label("bob");
        let tx = Tx {
            chain_id: 7,
            from: alice.address(),
            nonce: 0,
            kind: TxKind::Transfer {
                to: bob.address(),
                amount: Amount(5),
            },
        };
        let mut signed = alice.sign_tx(tx);
        assert!(signed.verify().is_ok());
        signed.tx.nonce = 1;
        assert!(
            signed.verify().is_err(),
            "a changed nonce must break the signature"
        );
        let bobs = bob.sign_tx(Tx {
            from: bob.address(),
            nonce: 0,
            ..signed.tx.clone()
        });
        let forged = SignedTx {
            tx: Tx {
                from: alice.address(),
                ..bobs.tx.clone()
            },
            signature: bobs.signature,
        };
        assert!(
            forged.verify().is_err(),
            "bob's signature cannot authorise alice's transaction"
        );
    }

    #[test]
    fn key_files_are_private_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host.key");
        let wallet = Wallet::generate();
        wallet.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        assert_eq!(Wallet::load(&path).unwrap().address(), wallet.address());
        assert!(matches!(
            Wallet::generate().save(&path),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(
            Wallet::load(&path).unwrap().address(),
            wallet.address(),
            "unchanged"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Wallet::load(&path),
                Err(KeyFileError::TooOpen { .. })
            ));
        }
    }
}

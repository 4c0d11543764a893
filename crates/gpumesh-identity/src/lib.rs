//! Identities: secp256k1 key pairs whose addresses are Ethereum addresses.
//!
//! A [`Wallet`] signs EIP-191 messages, which is how gpumesh signs HTTP requests
//! ([`gpumesh_types::auth`]), and EIP-712 typed data, which is how it signs ledger
//! transactions ([`gpumesh_types::Tx`]); the same key works unchanged in an Ethereum
//! wallet. Key files are Ethereum keystores (version 3: scrypt and AES-128-CTR, as geth,
//! Foundry and MetaMask write them), created readable by their owner only and never
//! overwritten.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use alloy_primitives::{Address, B256, Signature, eip191_hash_message, hex, keccak256};
use gpumesh_types::{Sig, SignedTx, Tx};
use k256::ecdsa::SigningKey;
use serde::Deserialize;

mod keystore;

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
    #[error("key file {path} is not an Ethereum keystore (version 3): {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("key file {path} is readable by others (mode {mode:o}); run `chmod 600 {path}` first")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("wrong password for key file {path}")]
    WrongPassword { path: PathBuf },
    #[error(
        "key file {path} does not name its address (the field is optional in keystores); import it with `gpumesh wallet import --keystore {path} --out NEW_FILE`"
    )]
    NoAddress { path: PathBuf },
    #[error(
        "key file {path} holds its secret unencrypted (the key format of gpumesh before keystores); encrypt it with `gpumesh wallet import --private-key-file {path} --out NEW_FILE`"
    )]
    Unencrypted { path: PathBuf },
}

/// Why a keystore's text does not open.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeystoreError {
    #[error("an unencrypted key of gpumesh before keystores")]
    Unencrypted,
    #[error("wrong password")]
    WrongPassword,
    #[error("not an Ethereum keystore (version 3): {0}")]
    Malformed(String),
}

/// The key file format of gpumesh before keystores: the secret in hex, unencrypted.
#[derive(Deserialize)]
struct PlainKeyFile {
    #[serde(default)]
    address: Option<Address>,
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
        self.sign_tx_hashed(tx).0
    }

    /// [`Wallet::sign_tx`], returning the hash it signed too, so that the signer need not
    /// compute it again to check or apply the transaction.
    pub fn sign_tx_hashed(&self, tx: Tx) -> (SignedTx, alloy_primitives::B256) {
        debug_assert_eq!(
            tx.from, self.address,
            "signing a transaction of another account"
        );
        let hash = tx.hash();
        let signature = Sig(self.sign_prehash(&hash));
        (SignedTx { tx, signature }, hash)
    }

    /// Signs an epoch close hashed ahead ([`gpumesh_types::eip712::HashedEpoch`]) as this
    /// wallet's transaction at `nonce`, returning the hash it signed: only the close's
    /// outer struct is hashed here.
    pub fn sign_epoch(
        &self,
        epoch: gpumesh_types::eip712::HashedEpoch,
        chain_id: u64,
        nonce: u64,
    ) -> (SignedTx, alloy_primitives::B256) {
        let (tx, hash) = epoch.into_tx(chain_id, self.address, nonce);
        let signature = Sig(self.sign_prehash(&hash));
        (SignedTx { tx, signature }, hash)
    }

    /// Writes the key as a new Ethereum keystore (version 3, scrypt, AES-128-CTR),
    /// encrypted with `password`; the file is readable by its owner only and never
    /// overwrites another.
    pub fn save(&self, path: &Path, password: &str, kdf: Kdf) -> Result<(), KeyFileError> {
        let text = keystore::encrypt(
            &self.key.to_bytes().into(),
            self.address,
            password,
            kdf,
            &mut rand::rngs::OsRng,
        );
        write_private(path, text.as_bytes())
    }

    /// The key as a keystore's text, encrypted with `password` at the light cost (for
    /// round trips in tests and fuzzing; `save` is how keys are written).
    pub fn to_keystore(&self, password: &str) -> String {
        keystore::encrypt(
            &self.key.to_bytes().into(),
            self.address,
            password,
            Kdf::Light,
            &mut rand::rngs::OsRng,
        )
    }

    /// Reads and decrypts a keystore, refusing one that others can read.
    pub fn load(path: &Path, password: &str) -> Result<Wallet, KeyFileError> {
        check_private(path)?;
        Wallet::open_keystore(path, password)
    }

    /// Reads and decrypts a keystore whoever can read it: another wallet's, to import.
    pub fn open_keystore(path: &Path, password: &str) -> Result<Wallet, KeyFileError> {
        let text = read(path)?;
        Wallet::from_keystore(&text, password).map_err(|e| match e {
            KeystoreError::Unencrypted => KeyFileError::Unencrypted {
                path: path.to_path_buf(),
            },
            KeystoreError::WrongPassword => KeyFileError::WrongPassword {
                path: path.to_path_buf(),
            },
            KeystoreError::Malformed(reason) => KeyFileError::Malformed {
                path: path.to_path_buf(),
                reason,
            },
        })
    }

    /// Decrypts a keystore's text: the decoder of key files, which come from other tools.
    pub fn from_keystore(text: &str, password: &str) -> Result<Wallet, KeystoreError> {
        let address = keystore::inspect(text).map_err(|reason| {
            if serde_json::from_str::<PlainKeyFile>(text).is_ok() {
                KeystoreError::Unencrypted
            } else {
                KeystoreError::Malformed(reason)
            }
        })?;
        let secret = keystore::decrypt(text, password).map_err(|e| match e {
            keystore::DecryptError::Mac => KeystoreError::WrongPassword,
            keystore::DecryptError::Malformed(reason) => KeystoreError::Malformed(reason),
        })?;
        let wallet = SigningKey::from_slice(&secret)
            .map(Wallet::from_key)
            .map_err(|_| {
                KeystoreError::Malformed("its secret is not a valid secp256k1 key".into())
            })?;
        if let Some(address) = address
            && address != wallet.address
        {
            return Err(KeystoreError::Malformed(format!(
                "its address {address} does not match its key ({})",
                wallet.address
            )));
        }
        Ok(wallet)
    }

    /// The address a keystore names, read without its password.
    pub fn address_of(path: &Path) -> Result<Address, KeyFileError> {
        Wallet::keystore_address(path)?.ok_or_else(|| KeyFileError::NoAddress {
            path: path.to_path_buf(),
        })
    }

    /// Checks that `path` is a keystore gpumesh can open, before its password is asked
    /// for, and returns the address it names (the field is optional in the format).
    pub fn keystore_address(path: &Path) -> Result<Option<Address>, KeyFileError> {
        let text = read(path)?;
        keystore::inspect(&text).map_err(|reason| {
            match serde_json::from_str::<PlainKeyFile>(&text) {
                Ok(_) => KeyFileError::Unencrypted {
                    path: path.to_path_buf(),
                },
                Err(_) => KeyFileError::Malformed {
                    path: path.to_path_buf(),
                    reason,
                },
            }
        })
    }

    /// A private key from a file as wallets export it: 64 hex digits (with or without
    /// `0x`), or an unencrypted key file of gpumesh before keystores.
    pub fn from_private_key_file(path: &Path) -> Result<Wallet, KeyFileError> {
        let text = read(path)?;
        let malformed = |reason: String| KeyFileError::Malformed {
            path: path.to_path_buf(),
            reason,
        };
        let (secret, named) = match serde_json::from_str::<PlainKeyFile>(&text) {
            Ok(plain) => (plain.secret_key, plain.address),
            Err(_) => (text.trim().to_string(), None),
        };
        let wallet = Wallet::from_secret_hex(&secret).map_err(malformed)?;
        match named {
            Some(named) if named != wallet.address => Err(malformed(format!(
                "its address {named} does not match its key ({})",
                wallet.address
            ))),
            _ => Ok(wallet),
        }
    }
}

/// How hard a keystore's password is to guess from the file: scrypt's cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// scrypt N = 2^18, r = 8, p = 1 (geth's and eth-account's default): about a second
    /// and 256 MiB to open. For keys that hold value.
    Standard,
    /// scrypt N = 2^12, r = 8, p = 1 (geth's `--lightkdf`): milliseconds. For local
    /// networks and tests, whose keys hold no value.
    Light,
}

fn read(path: &Path) -> Result<String, KeyFileError> {
    std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
        action: "read",
        path: path.to_path_buf(),
        source,
    })
}

/// Refuses a key file that others can read (checked before a password is asked for).
pub fn check_private(path: &Path) -> Result<(), KeyFileError> {
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
    Ok(())
}

/// Writes a new file readable by its owner only, atomically: the whole file or none, and
/// never over another. It is written and synced under a temporary name in the same folder,
/// then linked to its name (which fails if the name exists), and the folder is synced, so
/// a key that was reported written survives a crash.
fn write_private(path: &Path, body: &[u8]) -> Result<(), KeyFileError> {
    let io = |action, source| KeyFileError::Io {
        action,
        path: path.to_path_buf(),
        source,
    };
    let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(parent) => {
            std::fs::create_dir_all(parent).map_err(|e| io("create the folder of", e))?;
            parent.to_path_buf()
        }
        None => PathBuf::from("."),
    };
    if path.exists() {
        return Err(KeyFileError::Exists {
            path: path.to_path_buf(),
        });
    }
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let name = path
        .file_name()
        .map_or_else(|| "key".into(), |n| n.to_string_lossy().into_owned());
    let temp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = options.open(&temp).map_err(|e| io("create", e))?;
        file.write_all(body).map_err(|e| io("write", e))?;
        file.sync_all().map_err(|e| io("sync", e))?;
        std::fs::hard_link(&temp, path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                KeyFileError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                io("link", e)
            }
        })
    })();
    let _ = std::fs::remove_file(&temp);
    written?;
    std::fs::File::open(&parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| io("sync the folder of", e))
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
    fn key_files_are_private_keystores_and_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host.key");
        let wallet = Wallet::generate();
        wallet.save(&path, "hunter2", Kdf::Light).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            !text.contains(&wallet.secret_hex()[2..]),
            "the secret is encrypted"
        );
        assert_eq!(Wallet::address_of(&path).unwrap(), wallet.address());
        assert_eq!(
            Wallet::load(&path, "hunter2").unwrap().address(),
            wallet.address()
        );
        assert!(matches!(
            Wallet::load(&path, "hunter3"),
            Err(KeyFileError::WrongPassword { .. })
        ));
        assert!(matches!(
            Wallet::generate().save(&path, "x", Kdf::Light),
            Err(KeyFileError::Exists { .. })
        ));
        assert_eq!(
            Wallet::load(&path, "hunter2").unwrap().address(),
            wallet.address(),
            "unchanged"
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                Wallet::load(&path, "hunter2"),
                Err(KeyFileError::TooOpen { .. })
            ));
        }
    }

    /// The PBKDF2 test vector of the Web3 Secret Storage definition, written by another
    /// implementation.
    #[test]
    fn a_keystore_of_the_specification_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vector.json");
        write_private(
            &path,
            br#"{"crypto":{"cipher":"aes-128-ctr","cipherparams":{"iv":"6087dab2f9fdbbfaddc31a909735c1e6"},"ciphertext":"5318b4d5bcd28de64ee5559e671353e16f075ecae9f99c7a79a38af5f869aa46","kdf":"pbkdf2","kdfparams":{"c":262144,"dklen":32,"prf":"hmac-sha256","salt":"ae3cd4e7013836a3df6bd7241b12db061dbe2c6785853cce422d148a624ce0bd"},"mac":"517ead924a9d0dc3124507e3393d175ce3ff7c1e96529c6c555ce9e51205e9b2"},"id":"3198bc9c-6672-5ab3-d995-4942343ae5b6","version":3}"#,
        )
        .unwrap();
        let wallet = Wallet::load(&path, "testpassword").unwrap();
        assert_eq!(
            wallet.secret_hex(),
            "0x7a28b5ba57c53603b0b07b56bba752f7784bf506fa95edc395f5cf6c7514fe9d"
        );
    }

    /// A light keystore of the secret 0x0707…07 under the password "pw".
    fn sevens_keystore() -> String {
        keystore::encrypt(
            &[7u8; 32],
            Wallet::from_secret_hex(&"07".repeat(32)).unwrap().address(),
            "pw",
            Kdf::Light,
            &mut rand::rngs::OsRng,
        )
    }

    /// eth-account drops the IV's leading zero bytes (it writes it as an integer): a 15-byte
    /// IV is the 16-byte one with a zero in front.
    #[test]
    fn an_iv_written_without_its_leading_zero_opens_as_the_padded_one() {
        let dir = tempfile::tempdir().unwrap();
        let good = sevens_keystore();
        let files = std::cell::Cell::new(0);
        let with_iv = |iv: String| {
            files.set(files.get() + 1);
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
            v["crypto"]["cipherparams"]["iv"] = iv.into();
            // Another IV opens another key: the address would not match it.
            v.as_object_mut().unwrap().remove("address");
            let path = dir.path().join(format!("iv-{}", files.get()));
            write_private(&path, v.to_string().as_bytes()).unwrap();
            Wallet::load(&path, "pw").unwrap().secret_hex()
        };
        let tail = "ab".repeat(15);
        assert_eq!(with_iv(tail.clone()), with_iv(format!("00{tail}")));
        assert_ne!(with_iv(format!("00{tail}")), with_iv(format!("01{tail}")));
    }

    #[test]
    fn unencrypted_key_files_are_refused_and_imported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.key");
        let wallet = Wallet::generate();
        let old = format!(
            r#"{{"address":"{}","secret_key":"{}"}}"#,
            wallet.address(),
            wallet.secret_hex()
        );
        write_private(&path, old.as_bytes()).unwrap();
        assert!(matches!(
            Wallet::load(&path, ""),
            Err(KeyFileError::Unencrypted { .. })
        ));
        assert_eq!(
            Wallet::from_private_key_file(&path).unwrap().address(),
            wallet.address()
        );
        let hex_only = dir.path().join("exported.txt");
        write_private(
            &hex_only,
            format!("{}\n", &wallet.secret_hex()[2..]).as_bytes(),
        )
        .unwrap();
        assert_eq!(
            Wallet::from_private_key_file(&hex_only).unwrap().address(),
            wallet.address()
        );
    }

    /// Keystores come from other tools: sizes and costs that would panic or run without
    /// bound are refused as malformed before any work.
    #[test]
    fn hostile_keystores_are_refused_not_obeyed() {
        let dir = tempfile::tempdir().unwrap();
        let good = sevens_keystore();
        let mut cases = Vec::new();
        let mut edit = |name: &str, f: &dyn Fn(&mut serde_json::Value)| {
            let mut v: serde_json::Value = serde_json::from_str(&good).unwrap();
            f(&mut v);
            let path = dir.path().join(name);
            write_private(&path, v.to_string().as_bytes()).unwrap();
            cases.push(path);
        };
        edit("short-dklen", &|v| {
            v["crypto"]["kdfparams"]["dklen"] = 16.into()
        });
        edit("empty-iv", &|v| {
            v["crypto"]["cipherparams"]["iv"] = "".into()
        });
        edit("long-iv", &|v| {
            v["crypto"]["cipherparams"]["iv"] = "00".repeat(17).into()
        });
        edit("short-ciphertext", &|v| {
            v["crypto"]["ciphertext"] = "00".into()
        });
        edit("huge-n", &|v| {
            v["crypto"]["kdfparams"]["n"] = (1u64 << 40).into()
        });
        edit("odd-n", &|v| v["crypto"]["kdfparams"]["n"] = 4095.into());
        edit("many-passes", &|v| {
            v["crypto"]["kdfparams"]["p"] = 1_000_000.into()
        });
        edit("heavy-work", &|v| {
            v["crypto"]["kdfparams"]["n"] = (1u64 << 20).into();
            v["crypto"]["kdfparams"]["p"] = 16.into();
        });
        edit("other-kdf", &|v| v["crypto"]["kdf"] = "argon2".into());
        edit("pbkdf2-rounds", &|v| {
            v["crypto"]["kdf"] = "pbkdf2".into();
            v["crypto"]["kdfparams"] =
                serde_json::json!({"c": u32::MAX, "dklen": 32, "prf": "hmac-sha256", "salt": "00"});
        });
        edit("bad-mac", &|v| v["crypto"]["mac"] = "00".into());
        for path in &cases {
            let started = std::time::Instant::now();
            let err = Wallet::load(path, "pw").unwrap_err();
            assert!(
                matches!(err, KeyFileError::Malformed { .. }),
                "{}: {err}",
                path.display()
            );
            assert!(started.elapsed() < std::time::Duration::from_secs(5));
        }
        let ok = dir.path().join("good");
        write_private(&ok, good.as_bytes()).unwrap();
        assert_eq!(
            Wallet::load(&ok, "pw").unwrap().secret_hex(),
            format!("0x{}", "07".repeat(32))
        );
    }
}

//! Key files, which come from other tools (`wallet import --keystore`, every `--key`): any
//! text opens, or is refused as unencrypted, malformed or of another password, never a
//! panic, and no file makes the work unbounded (scrypt and PBKDF2 costs are capped).
#![no_main]

use gpumesh_identity::{KeystoreError, Wallet};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Wallet::from_keystore(text, "pw") {
        Ok(wallet) => {
            // What opened, written again, opens to the same key.
            let again = Wallet::from_keystore(&wallet.to_keystore("pw"), "pw").unwrap();
            assert_eq!(again.address(), wallet.address());
        }
        Err(
            KeystoreError::Unencrypted | KeystoreError::WrongPassword | KeystoreError::Malformed(_),
        ) => {}
    }
});

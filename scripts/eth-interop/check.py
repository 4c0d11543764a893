"""gpumesh's keys and signatures checked by eth-account, an Ethereum library of another
implementation (PyPI: eth-account). Used by crates/gpumesh/tests/wallets.rs.

    check.py typed CASES.json      each case's EIP-712 digest and signer, as eth-account
                                   computes them from the typed data alone; and one
                                   signature of eth-account's own over the first case
    check.py decrypt KEYSTORE PW   the address and private key in a keystore
    check.py encrypt OUT PW        a new random key, written as a keystore (scrypt, N=2^12)

Each prints one JSON object.
"""
import json
import sys

from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data


def typed(path):
    cases = json.load(open(path))
    out = []
    for case in cases:
        message = encode_typed_data(full_message=case["typed_data"])
        out.append({
            "digest": "0x" + _hash_eip191_message(message).hex(),
            "signer": Account.recover_message(message, signature=case["signature"]),
        })
    first = cases[0]
    signed = Account.sign_message(encode_typed_data(full_message=first["typed_data"]), first["private_key"])
    return {"cases": out, "signature_of_first": "0x" + signed.signature.hex()}


def decrypt(path, password):
    key = Account.decrypt(json.load(open(path)), password)
    return {"address": Account.from_key(key).address, "private_key": "0x" + key.hex()}


def encrypt(out, password):
    account = Account.create()
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=4096)
    with open(out, "w") as f:
        json.dump(keystore, f)
    return {"address": account.address}


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    print(json.dumps({"typed": typed, "decrypt": decrypt, "encrypt": encrypt}[command](*args)))

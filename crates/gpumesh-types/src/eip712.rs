//! Ledger transactions as EIP-712 typed data.
//!
//! Each [`TxKind`] is one EIP-712 struct type whose first two fields are the signer
//! (`from`) and its `nonce`; the domain is `{name: "gpumesh", version: "1", chainId}`.
//! A transaction's hash is the EIP-712 signing hash
//! (`keccak256(0x19 0x01 ‖ domainSeparator ‖ hashStruct(message))`), which is what
//! `eth_signTypedData_v4` signs: any Ethereum wallet can show a gpumesh transaction field
//! by field before signing it, and the hash depends on the types below, never on how a
//! serialiser orders fields.
//!
//! The type definitions are part of the protocol: changing one changes every hash.
//! Amounts are `uint256` in base units; enums (close reasons, offences) are their
//! snake_case names as `string`.

use std::sync::LazyLock;

use alloy_dyn_abi::TypedData;
use alloy_primitives::{Address, B256, Keccak256, U256, keccak256};
use alloy_sol_types::{Eip712Domain, SolStruct, eip712_domain, sol};
use rayon::prelude::*;
use serde::Serialize;

use crate::{Amount, CloseReason, EpochClose, Offence, Tx, TxKind};

/// The EIP-712 struct types of ledger transactions, in Solidity syntax.
pub mod types {
    use super::sol;

    sol! {
        #[derive(Debug, serde::Serialize)]
        struct Transfer { address from; uint64 nonce; address to; uint256 amount; }

        #[derive(Debug, serde::Serialize)]
        struct OpenEscrow {
            address from; uint64 nonce; uint64 lease; address host; uint256 pricePerGpuHour;
            uint16 gpus; uint64 maxDurationMs; uint256 amount;
        }

        #[derive(Debug, serde::Serialize)]
        struct UsageRecord { uint64 lease; uint64 gpuMs; bool isFinal; }

        #[derive(Debug, serde::Serialize)]
        struct SettleUsage { address from; uint64 nonce; UsageRecord[] records; }

        #[derive(Debug, serde::Serialize)]
        struct CloseEscrow { address from; uint64 nonce; uint64 lease; string reason; }

        #[derive(Debug, serde::Serialize)]
        struct StartLease { address from; uint64 nonce; uint64 lease; }

        #[derive(Debug, serde::Serialize)]
        struct Stake { address from; uint64 nonce; uint16 index; uint256 amount; }

        #[derive(Debug, serde::Serialize)]
        struct GpuStake { uint16 index; uint256 amount; }

        #[derive(Debug, serde::Serialize)]
        struct StakeMany { address from; uint64 nonce; GpuStake[] stakes; }

        #[derive(Debug, serde::Serialize)]
        struct Unstake { address from; uint64 nonce; uint16 index; }

        #[derive(Debug, serde::Serialize)]
        struct Withdraw { address from; uint64 nonce; uint16 index; }

        #[derive(Debug, serde::Serialize)]
        struct Allow { address from; uint64 nonce; uint64 deployment; uint256 amount; }

        #[derive(Debug, serde::Serialize)]
        struct OpenEscrowFor {
            address from; uint64 nonce; address buyer; uint64 deployment; uint64 lease;
            address host; uint256 pricePerGpuHour; uint16 gpus; uint64 maxDurationMs;
            uint256 amount;
        }

        #[derive(Debug, serde::Serialize)]
        struct ExtendEscrow {
            address from; uint64 nonce; address buyer; uint64 deployment; uint64 lease;
            uint64 extraMs; uint256 amount;
        }

        #[derive(Debug, serde::Serialize)]
        struct GpuCapacity { uint16 index; uint32 kCenti; }

        #[derive(Debug, serde::Serialize)]
        struct HostCapacity { address host; GpuCapacity[] gpus; }

        #[derive(Debug, serde::Serialize)]
        struct GpuDelivery { uint16 index; uint64 gpuMs; uint256 paid; uint256 fee; uint8 tier; }

        #[derive(Debug, serde::Serialize)]
        struct HostDelivery { address host; GpuDelivery[] gpus; }

        #[derive(Debug, serde::Serialize)]
        struct CheckerTasks { address checker; uint32 correctTasks; uint16 uptimeBps; }

        #[derive(Debug, serde::Serialize)]
        struct EpochClose {
            address from; uint64 nonce; uint64 epoch; uint64 endMs; bytes32 evidence;
            HostCapacity[] capacity; HostDelivery[] delivery; CheckerTasks[] checkers;
            bool quarterBonus;
        }

        #[derive(Debug, serde::Serialize)]
        struct LeaseRange { uint64 first; uint64 last; }

        #[derive(Debug, serde::Serialize)]
        struct RetireLeases { address from; uint64 nonce; LeaseRange[] ranges; }

        #[derive(Debug, serde::Serialize)]
        struct Slash {
            address from; uint64 nonce; address host; uint16 index; uint32 kCenti;
            string offence; bytes32 evidence;
        }
    }
}

/// The EIP-712 domain of a gpumesh network.
pub fn domain(chain_id: u64) -> Eip712Domain {
    eip712_domain! {
        name: "gpumesh",
        version: "1",
        chain_id: chain_id,
    }
}

fn amount(a: Amount) -> U256 {
    U256::from(a.0)
}

fn close_reason(reason: CloseReason) -> &'static str {
    match reason {
        CloseReason::HostLost => "host_lost",
        CloseReason::NotStarted => "not_started",
        CloseReason::StartFailed => "start_failed",
        CloseReason::Overdue => "overdue",
        CloseReason::Reconciled => "reconciled",
        CloseReason::Undelivered => "undelivered",
    }
}

fn offence(offence: Offence) -> &'static str {
    match offence {
        Offence::Downtime => "downtime",
        Offence::Malicious => "malicious",
        Offence::Underperformance => "underperformance",
    }
}

/// Something done with a transaction's typed struct, whichever its type.
trait Visit {
    type Output;
    fn visit<S: SolStruct + Serialize>(self, message: S, domain: Eip712Domain) -> Self::Output;
}

struct SigningHash;

impl Visit for SigningHash {
    type Output = B256;
    fn visit<S: SolStruct + Serialize>(self, message: S, domain: Eip712Domain) -> B256 {
        message.eip712_signing_hash(&domain)
    }
}

struct Json;

impl Visit for Json {
    type Output = TypedData;
    fn visit<S: SolStruct + Serialize>(self, message: S, domain: Eip712Domain) -> TypedData {
        let mut typed = TypedData::from_struct(&message, Some(domain));
        decimal_strings(&mut typed.message);
        typed
    }
}

/// Every number of a message as a decimal string: JavaScript wallets read JSON numbers as
/// doubles, exact only below 2^53, and `eth_signTypedData_v4` takes integers as strings.
/// (The message's only numbers are unsigned integers.)
fn decimal_strings(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Number(n) => *value = serde_json::Value::String(n.to_string()),
        serde_json::Value::Array(items) => items.iter_mut().for_each(decimal_strings),
        serde_json::Value::Object(fields) => fields.values_mut().for_each(decimal_strings),
        _ => {}
    }
}

/// The type hashes of an epoch close's structs, computed once: the generic path
/// (`SolStruct::eip712_hash_struct`) builds the type string and hashes it again for every
/// element, and an epoch at the network's size has about a million of them.
struct EpochTypes {
    epoch: B256,
    host_capacity: B256,
    gpu_capacity: B256,
    host_delivery: B256,
    gpu_delivery: B256,
    checker: B256,
}

static EPOCH_TYPES: LazyLock<EpochTypes> = LazyLock::new(|| {
    let of = |encoded: std::borrow::Cow<'static, str>| keccak256(encoded.as_bytes());
    EpochTypes {
        epoch: of(types::EpochClose::eip712_encode_type()),
        host_capacity: of(types::HostCapacity::eip712_encode_type()),
        gpu_capacity: of(types::GpuCapacity::eip712_encode_type()),
        host_delivery: of(types::HostDelivery::eip712_encode_type()),
        gpu_delivery: of(types::GpuDelivery::eip712_encode_type()),
        checker: of(types::CheckerTasks::eip712_encode_type()),
    }
});

/// An EIP-712 word: an unsigned integer (or a bool), big-endian in 32 bytes.
fn uint(v: impl Into<u64>) -> [u8; 32] {
    U256::from(v.into()).to_be_bytes()
}

/// An address as an EIP-712 word.
fn address_word(a: &Address) -> [u8; 32] {
    B256::left_padding_from(a.as_slice()).0
}

/// `keccak256(type hash ‖ words…)`: one struct's `hashStruct`.
fn hash_struct(type_hash: &B256, words: &[&[u8]]) -> B256 {
    let mut h = Keccak256::new();
    h.update(type_hash);
    for w in words {
        h.update(w);
    }
    h.finalize()
}

/// An array's `encodeData`: the hash of its elements' hashes, in order.
fn hash_array(hashes: impl IntoIterator<Item = B256>) -> B256 {
    let mut h = Keccak256::new();
    for x in hashes {
        h.update(x);
    }
    h.finalize()
}

/// An epoch close with its lists hashed: ready to be signed by any account at any nonce
/// in microseconds, where hashing the lists takes hundreds of milliseconds at the
/// network's size. The close cannot change once hashed, so the hash always is its own.
#[derive(Clone, Debug)]
pub struct HashedEpoch {
    close: EpochClose,
    lists: EpochListHashes,
}

impl HashedEpoch {
    /// Hashes the close's lists (on every core).
    pub fn new(close: EpochClose) -> HashedEpoch {
        let lists = EpochListHashes::of(&close);
        HashedEpoch { close, lists }
    }

    pub fn close(&self) -> &EpochClose {
        &self.close
    }

    /// The close as a transaction from `from` at `nonce`, with its signing hash (what
    /// [`Tx::hash`] computes, without hashing the lists again).
    pub fn into_tx(self, chain_id: u64, from: Address, nonce: u64) -> (Tx, B256) {
        let hash = epoch_signing_hash(from, nonce, &self.close, &self.lists, &domain(chain_id));
        let tx = Tx {
            chain_id,
            from,
            nonce,
            kind: TxKind::Epoch(Box::new(self.close)),
        };
        debug_assert_eq!(hash, tx.hash(), "a hashed epoch's hash is not its own");
        (tx, hash)
    }
}

/// The `encodeData` of an epoch close's three lists: all of its EIP-712 hash that does not
/// depend on who signs it or with which nonce, and nearly all of its cost (about a million
/// structs at the network's size).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct EpochListHashes {
    capacity: B256,
    delivery: B256,
    checkers: B256,
}

impl EpochListHashes {
    /// Hashes the close's capacity, delivery and checker lists, each on every core.
    fn of(e: &EpochClose) -> EpochListHashes {
        let t = &*EPOCH_TYPES;
        let capacity: Vec<B256> =
            e.capacity
                .par_iter()
                .map(|(host, gpus)| {
                    let gpus = hash_array(gpus.iter().map(|&(index, k)| {
                        hash_struct(&t.gpu_capacity, &[&uint(index), &uint(k)])
                    }));
                    hash_struct(&t.host_capacity, &[&address_word(host), gpus.as_slice()])
                })
                .collect();
        let delivery: Vec<B256> = e
            .delivery
            .par_iter()
            .map(|(host, gpus)| {
                let gpus = hash_array(gpus.iter().map(|d| {
                    let words: [&[u8]; 5] = [
                        &uint(d.index),
                        &uint(d.gpu_ms),
                        &amount(d.paid).to_be_bytes::<32>(),
                        &amount(d.fee).to_be_bytes::<32>(),
                        &uint(d.tier),
                    ];
                    hash_struct(&t.gpu_delivery, &words)
                }));
                hash_struct(&t.host_delivery, &[&address_word(host), gpus.as_slice()])
            })
            .collect();
        let checkers: Vec<B256> = e
            .checkers
            .par_iter()
            .map(|(checker, correct, uptime)| {
                let words: [&[u8]; 3] = [&address_word(checker), &uint(*correct), &uint(*uptime)];
                hash_struct(&t.checker, &words)
            })
            .collect();
        EpochListHashes {
            capacity: hash_array(capacity),
            delivery: hash_array(delivery),
            checkers: hash_array(checkers),
        }
    }
}

/// An epoch close's EIP-712 signing hash, as the generic path computes it (a test holds
/// them equal), from its lists' hashes: each type hash computed once and the lists hashed
/// on every core.
fn epoch_signing_hash(
    from: Address,
    nonce: u64,
    e: &EpochClose,
    lists: &EpochListHashes,
    domain: &Eip712Domain,
) -> B256 {
    let words: [&[u8]; 9] = [
        &address_word(&from),
        &uint(nonce),
        &uint(e.epoch),
        &uint(e.end_ms),
        e.evidence.as_slice(),
        lists.capacity.as_slice(),
        lists.delivery.as_slice(),
        lists.checkers.as_slice(),
        &uint(e.quarter_bonus),
    ];
    let message = hash_struct(&EPOCH_TYPES.epoch, &words);
    let mut digest = Keccak256::new();
    digest.update([0x19, 0x01]);
    digest.update(domain.separator());
    digest.update(message);
    digest.finalize()
}

impl Tx {
    /// The EIP-712 signing hash: what the signature covers and the transaction's id.
    pub fn hash(&self) -> B256 {
        match &self.kind {
            TxKind::Epoch(e) => epoch_signing_hash(
                self.from,
                self.nonce,
                e,
                &EpochListHashes::of(e),
                &domain(self.chain_id),
            ),
            _ => self.typed(SigningHash),
        }
    }

    /// The transaction as `eth_signTypedData_v4` JSON (`types`, `primaryType`, `domain`,
    /// `message`): what a wallet shows and signs.
    pub fn typed_data(&self) -> TypedData {
        self.typed(Json)
    }

    fn typed<V: Visit>(&self, v: V) -> V::Output {
        use types as t;
        let (from, nonce, domain) = (self.from, self.nonce, domain(self.chain_id));
        match &self.kind {
            TxKind::Transfer { to, amount: a } => v.visit(
                t::Transfer {
                    from,
                    nonce,
                    to: *to,
                    amount: amount(*a),
                },
                domain,
            ),
            TxKind::OpenEscrow {
                lease,
                host,
                price_per_gpu_hour,
                gpus,
                max_duration_ms,
                amount: a,
            } => v.visit(
                t::OpenEscrow {
                    from,
                    nonce,
                    lease: lease.0,
                    host: *host,
                    pricePerGpuHour: amount(*price_per_gpu_hour),
                    gpus: *gpus,
                    maxDurationMs: *max_duration_ms,
                    amount: amount(*a),
                },
                domain,
            ),
            TxKind::SettleUsage { records } => v.visit(
                t::SettleUsage {
                    from,
                    nonce,
                    records: records
                        .iter()
                        .map(|r| t::UsageRecord {
                            lease: r.lease.0,
                            gpuMs: r.gpu_ms,
                            isFinal: r.is_final,
                        })
                        .collect(),
                },
                domain,
            ),
            TxKind::CloseEscrow { lease, reason } => v.visit(
                t::CloseEscrow {
                    from,
                    nonce,
                    lease: lease.0,
                    reason: close_reason(*reason).to_string(),
                },
                domain,
            ),
            TxKind::StartLease { lease } => v.visit(
                t::StartLease {
                    from,
                    nonce,
                    lease: lease.0,
                },
                domain,
            ),
            TxKind::Stake { index, amount: a } => v.visit(
                t::Stake {
                    from,
                    nonce,
                    index: *index,
                    amount: amount(*a),
                },
                domain,
            ),
            TxKind::StakeMany { stakes } => v.visit(
                t::StakeMany {
                    from,
                    nonce,
                    stakes: stakes
                        .iter()
                        .map(|(index, a)| t::GpuStake {
                            index: *index,
                            amount: amount(*a),
                        })
                        .collect(),
                },
                domain,
            ),
            TxKind::Unstake { index } => v.visit(
                t::Unstake {
                    from,
                    nonce,
                    index: *index,
                },
                domain,
            ),
            TxKind::Withdraw { index } => v.visit(
                t::Withdraw {
                    from,
                    nonce,
                    index: *index,
                },
                domain,
            ),
            TxKind::Allow {
                deployment,
                amount: a,
            } => v.visit(
                t::Allow {
                    from,
                    nonce,
                    deployment: *deployment,
                    amount: amount(*a),
                },
                domain,
            ),
            TxKind::OpenEscrowFor {
                buyer,
                deployment,
                lease,
                host,
                price_per_gpu_hour,
                gpus,
                max_duration_ms,
                amount: a,
            } => v.visit(
                t::OpenEscrowFor {
                    from,
                    nonce,
                    buyer: *buyer,
                    deployment: *deployment,
                    lease: lease.0,
                    host: *host,
                    pricePerGpuHour: amount(*price_per_gpu_hour),
                    gpus: *gpus,
                    maxDurationMs: *max_duration_ms,
                    amount: amount(*a),
                },
                domain,
            ),
            TxKind::ExtendEscrow {
                buyer,
                deployment,
                lease,
                extra_ms,
                amount: a,
            } => v.visit(
                t::ExtendEscrow {
                    from,
                    nonce,
                    buyer: *buyer,
                    deployment: *deployment,
                    lease: lease.0,
                    extraMs: *extra_ms,
                    amount: amount(*a),
                },
                domain,
            ),
            TxKind::Epoch(e) => v.visit(
                t::EpochClose {
                    from,
                    nonce,
                    epoch: e.epoch,
                    endMs: e.end_ms,
                    evidence: e.evidence,
                    capacity: e
                        .capacity
                        .iter()
                        .map(|(host, gpus)| t::HostCapacity {
                            host: *host,
                            gpus: gpus
                                .iter()
                                .map(|&(index, k)| t::GpuCapacity { index, kCenti: k })
                                .collect(),
                        })
                        .collect(),
                    delivery: e
                        .delivery
                        .iter()
                        .map(|(host, gpus)| t::HostDelivery {
                            host: *host,
                            gpus: gpus
                                .iter()
                                .map(|d| t::GpuDelivery {
                                    index: d.index,
                                    gpuMs: d.gpu_ms,
                                    paid: amount(d.paid),
                                    fee: amount(d.fee),
                                    tier: d.tier,
                                })
                                .collect(),
                        })
                        .collect(),
                    checkers: e
                        .checkers
                        .iter()
                        .map(|&(checker, correct, uptime)| t::CheckerTasks {
                            checker,
                            correctTasks: correct,
                            uptimeBps: uptime,
                        })
                        .collect(),
                    quarterBonus: e.quarter_bonus,
                },
                domain,
            ),
            TxKind::RetireLeases { ranges } => v.visit(
                t::RetireLeases {
                    from,
                    nonce,
                    ranges: ranges
                        .iter()
                        .map(|r| t::LeaseRange {
                            first: r.first.0,
                            last: r.last.0,
                        })
                        .collect(),
                },
                domain,
            ),
            TxKind::Slash {
                host,
                index,
                k_centi,
                offence: o,
                evidence,
            } => v.visit(
                t::Slash {
                    from,
                    nonce,
                    host: *host,
                    index: *index,
                    kCenti: *k_centi,
                    offence: offence(*o).to_string(),
                    evidence: *evidence,
                },
                domain,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_primitives::{Address, keccak256};

    fn transfer(chain_id: u64, amount: u128) -> Tx {
        Tx {
            chain_id,
            from: Address::repeat_byte(1),
            nonce: 7,
            kind: TxKind::Transfer {
                to: Address::repeat_byte(2),
                amount: Amount(amount),
            },
        }
    }

    #[test]
    fn the_hash_is_the_eip712_signing_hash_of_the_typed_data() {
        let tx = transfer(31337, 5);
        assert_eq!(tx.typed_data().eip712_signing_hash().unwrap(), tx.hash());
        // Computed by hand from the EIP-712 definition, independently of sol!.
        let type_hash = keccak256("Transfer(address from,uint64 nonce,address to,uint256 amount)");
        let mut encoded = type_hash.to_vec();
        for word in [
            B256::left_padding_from(Address::repeat_byte(1).as_slice()),
            B256::from(U256::from(7u64)),
            B256::left_padding_from(Address::repeat_byte(2).as_slice()),
            B256::from(U256::from(5u64)),
        ] {
            encoded.extend_from_slice(word.as_slice());
        }
        let domain_type = keccak256("EIP712Domain(string name,string version,uint256 chainId)");
        let mut domain_encoded = domain_type.to_vec();
        domain_encoded.extend_from_slice(keccak256("gpumesh").as_slice());
        domain_encoded.extend_from_slice(keccak256("1").as_slice());
        domain_encoded.extend_from_slice(B256::from(U256::from(31337u64)).as_slice());
        let mut digest = vec![0x19, 0x01];
        digest.extend_from_slice(keccak256(domain_encoded).as_slice());
        digest.extend_from_slice(keccak256(encoded).as_slice());
        assert_eq!(keccak256(digest), tx.hash());
    }

    fn epoch_close() -> impl proptest::strategy::Strategy<Value = EpochClose> {
        use proptest::prelude::*;
        let address = any::<[u8; 20]>().prop_map(Address::from);
        let delivery = (
            any::<u16>(),
            any::<u64>(),
            any::<u128>(),
            any::<u128>(),
            any::<u8>(),
        )
            .prop_map(|(index, gpu_ms, paid, fee, tier)| crate::GpuDelivery {
                index,
                gpu_ms,
                paid: Amount(paid),
                fee: Amount(fee),
                tier,
            });
        (
            (any::<u64>(), any::<u64>(), any::<[u8; 32]>(), any::<bool>()),
            prop::collection::vec(
                (
                    address.clone(),
                    prop::collection::vec(any::<(u16, u32)>(), 0..4),
                ),
                0..6,
            ),
            prop::collection::vec(
                (address.clone(), prop::collection::vec(delivery, 0..4)),
                0..6,
            ),
            prop::collection::vec((address, any::<u32>(), any::<u16>()), 0..6),
        )
            .prop_map(
                |((epoch, end_ms, evidence, quarter_bonus), capacity, delivery, checkers)| {
                    EpochClose {
                        epoch,
                        end_ms,
                        evidence: B256::from(evidence),
                        capacity,
                        delivery,
                        checkers,
                        quarter_bonus,
                    }
                },
            )
    }

    proptest::proptest! {
        /// The epoch close's own hashing (type hashes once, lists on every core) is the
        /// generic EIP-712 path's, whatever the lists hold, empty ones included.
        #[test]
        fn an_epoch_close_hashes_as_the_generic_eip712_path(close in epoch_close(), nonce: u64) {
            let tx = Tx {
                chain_id: 31337,
                from: Address::repeat_byte(9),
                nonce,
                kind: TxKind::Epoch(Box::new(close)),
            };
            proptest::prop_assert_eq!(tx.hash(), tx.typed(SigningHash));
            proptest::prop_assert_eq!(tx.hash(), tx.typed_data().eip712_signing_hash().unwrap());
        }

        /// A close hashed ahead is signed as the same transaction with the same hash,
        /// whoever signs it at whatever nonce: the lists' part of the hash holds neither.
        #[test]
        fn a_close_hashed_ahead_has_the_hash_of_the_same_transaction(
            close in epoch_close(),
            nonce: u64,
            from: [u8; 20],
        ) {
            let from = Address::from(from);
            let (tx, hash) = HashedEpoch::new(close.clone()).into_tx(31337, from, nonce);
            let same = Tx { chain_id: 31337, from, nonce, kind: TxKind::Epoch(Box::new(close)) };
            proptest::prop_assert_eq!(&tx, &same);
            proptest::prop_assert_eq!(hash, same.typed(SigningHash));
        }
    }

    #[test]
    fn the_hash_covers_the_chain_and_every_field() {
        let tx = transfer(1, 5);
        assert_ne!(tx.hash(), transfer(2, 5).hash());
        assert_ne!(tx.hash(), transfer(1, 6).hash());
        let json = serde_json::to_value(tx.typed_data()).unwrap();
        assert_eq!(json["primaryType"], "Transfer");
        assert_eq!(json["message"]["nonce"], "7", "integers as decimal strings");
        assert_eq!(json["domain"]["name"], "gpumesh");
    }
}

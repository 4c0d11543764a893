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

use alloy_dyn_abi::TypedData;
use alloy_primitives::{B256, U256};
use alloy_sol_types::{Eip712Domain, SolStruct, eip712_domain, sol};
use serde::Serialize;

use crate::{Amount, CloseReason, Offence, Tx, TxKind};

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

impl Tx {
    /// The EIP-712 signing hash: what the signature covers and the transaction's id.
    pub fn hash(&self) -> B256 {
        self.typed(SigningHash)
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

//! An epoch close in three steps, so that the state lock is held for the least of it
//! (docs/scale.md, "The epoch close"):
//!
//! 1. [`Core::epoch_inputs`](crate::core::Core::epoch_inputs), under the lock: a copy of
//!    what the close reads (every container's facts, the epoch's work so far, the
//!    delivering hosts' tiers, the checkers' epoch counters). Nothing changes.
//! 2. [`EpochInputs::assemble`], anywhere: the capacity, delivery and checker lists, the
//!    evidence hash, and the lists' EIP-712 hash, which is most of the close's cost.
//! 3. [`Core::close_epoch`](crate::core::Core::close_epoch), under the lock: signs at the
//!    protocol's current nonce (microseconds, the lists being hashed), applies, and takes
//!    what the close counted out of the running epoch work and checker counters, so what
//!    arrived between 1 and 3 counts in the next epoch.
//!
//! A crash or a refused close between 1 and 3 changes nothing: the epoch is still due and
//! is read again.

use std::collections::HashMap;

use gpumesh_checking::EpochCount;
use gpumesh_checking::epoch::{self, ContainerEpoch};
use gpumesh_store::ContainerWork;
use gpumesh_types::eip712::HashedEpoch;
use gpumesh_types::{Address, ContainerRef, EpochClose};

/// What an epoch close reads, copied under the lock at the moment the epoch ends.
#[derive(Debug)]
pub struct EpochInputs {
    pub(crate) epoch: u64,
    pub(crate) end_ms: u64,
    pub(crate) by_quorum: bool,
    pub(crate) quarter_bonus: bool,
    /// Every container's facts, its liveness verdicts this epoch, and whether it was
    /// online through it (not offline as the epoch began).
    pub(crate) containers: Vec<ContainerEpoch>,
    /// The epoch's work as read: what the close pays for, and what it takes away.
    pub(crate) work: HashMap<ContainerRef, ContainerWork>,
    /// The tier of each host that delivered work.
    pub(crate) tiers: HashMap<Address, u8>,
    pub(crate) checkers: Vec<EpochCount>,
}

/// An epoch close assembled and hashed, with what it counted.
#[derive(Debug)]
pub struct PreparedEpoch {
    pub(crate) close: HashedEpoch,
    pub(crate) work: HashMap<ContainerRef, ContainerWork>,
    pub(crate) checkers: Vec<EpochCount>,
}

impl PreparedEpoch {
    pub fn epoch(&self) -> u64 {
        self.close.close().epoch
    }

    pub fn end_ms(&self) -> u64 {
        self.close.close().end_ms
    }
}

impl EpochInputs {
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Builds the close from what was read: pure, and the costly part (the lists and their
    /// hash, on every core), so it runs without the state lock.
    pub fn assemble(self) -> PreparedEpoch {
        let capacity = epoch::capacity_list(&self.containers, self.by_quorum);
        let delivered = self.work.iter().map(|(&c, w)| {
            let d = epoch::Delivered {
                gpu_ms: w.delivered_gpu_ms,
                paid: w.paid,
                fee: w.fee,
            };
            (c, d)
        });
        let tiers = &self.tiers;
        let delivery = epoch::delivery_list(delivered, |h| tiers.get(h).copied().unwrap_or(3));
        let checkers = gpumesh_checking::epoch_tasks(&self.checkers);
        let mut evidence = b"gpumesh-epoch-evidence".to_vec();
        serde_json::to_writer(&mut evidence, &(&capacity, &delivery, &checkers))
            .expect("evidence serialises");
        let close = EpochClose {
            epoch: self.epoch,
            end_ms: self.end_ms,
            evidence: alloy_primitives::keccak256(evidence),
            capacity,
            delivery,
            checkers,
            quarter_bonus: self.quarter_bonus,
        };
        PreparedEpoch {
            close: HashedEpoch::new(close),
            work: self.work,
            checkers: self.checkers,
        }
    }
}

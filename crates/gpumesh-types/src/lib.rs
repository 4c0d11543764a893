//! Wire types and domain primitives shared by every gpumesh process.
//!
//! Anything here is serialisable and therefore part of a boundary: the indexer's HTTP
//! API, the ledger's transactions and blocks, the store's records. Logic that decides
//! things lives in the pure crates (`gpumesh-matcher`, `gpumesh-registry`, `gpumesh-ledger`).

mod amount;
pub mod api;
pub mod auth;
pub mod checking;
mod geo;
mod gpu;
mod tx;

pub use alloy_primitives::{Address, B256};
pub use amount::{Amount, AmountError, DECIMALS, ONE_TOKEN};
pub use api::*;
pub use checking::*;
pub use geo::{Country, EARTH_RADIUS_KM, GeoError, GeoPoint, Location};
pub use gpu::{CATALOG, GpuClass, GpuModel, GpuSpec, UnknownGpuModel};
pub use tx::{
    BlockHeader, CheckerTasks, CloseReason, EpochClose, HostCapacity, HostDelivery, LedgerEntry,
    Offence, Sig, SignatureCheck, SignedTx, Tx, TxKind, UsageRecord,
};

/// Milliseconds in one hour, the unit prices are quoted in.
pub const MS_PER_HOUR: u64 = 3_600_000;

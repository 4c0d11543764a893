//! Wire types and domain primitives shared by every gpumesh process.
//!
//! Anything here is serialisable and therefore part of a boundary: the indexer's HTTP
//! API, the ledger's transactions and blocks, the store's records. Logic that decides
//! things lives in the pure crates (`gpumesh-matcher`, `gpumesh-registry`, `gpumesh-ledger`).

/// A numeric identifier: transparent on the wire, shown as its number.
macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Clone,
            Copy,
            Debug,
            PartialEq,
            Eq,
            Hash,
            PartialOrd,
            Ord,
            serde::Serialize,
            serde::Deserialize,
            utoipa::ToSchema,
        )]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "{}", self.0)
            }
        }
    };
}

mod amount;
pub mod api;
pub mod auth;
pub mod checking;
pub mod eip712;
mod geo;
mod gpu;
pub mod net;
pub mod service;
mod tx;

pub use alloy_primitives::{Address, B256};
pub use amount::{Amount, AmountError, DECIMALS, ONE_TOKEN};
pub use api::*;
pub use checking::*;
pub use geo::{Country, EARTH_RADIUS_KM, GeoError, GeoPoint, Location};
pub use gpu::{CATALOG, GpuClass, GpuModel, GpuSpec, UnknownGpuModel};
pub use service::*;
pub use tx::{
    BlockHeader, CheckerTasks, CloseReason, EpochClose, GpuDelivery, HostCapacity, HostDelivery,
    LeaseRange, LedgerEntry, Offence, Sig, SignatureCheck, SignedTx, Tx, TxKind, UsageRecord,
};

/// Milliseconds in one hour, the unit prices are quoted in.
pub const MS_PER_HOUR: u64 = 3_600_000;

/// OpenAPI schemas of the types with a serde form of their own: strings.
macro_rules! string_schema {
    ($($ty:ty => $description:literal;)*) => {$(
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .description(Some($description))
                    .into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    )*};
}

string_schema! {
    Amount => "An amount in integer base units (18 decimals) as a decimal string.";
    Country => "An assigned ISO 3166-1 alpha-2 country code, such as DE.";
    GpuModel => "A GPU model of the catalog, such as H100.";
    GpuSelector => "A GPU model (H100) or a class of models.";
    Sig => "A 65-byte secp256k1 signature (r, s, v) as 0x-prefixed hex.";
}

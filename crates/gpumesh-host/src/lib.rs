//! The host agent (`gpumesh host`): runs on a GPU owner's machine.
//!
//! It discovers the GPUs ([`discovery`]), registers them with the indexer, heartbeats,
//! long-polls for leases, runs each lease's workload through a [`runtime::Runtime`],
//! streams the workload's output to the indexer, enforces the lease's maximum duration,
//! meters GPU time and signs usage records for the ledger ([`agent`]), and probes the
//! health of services it publishes ([`health`]).

pub mod agent;
pub mod challenge;
pub mod demo_image;
pub mod discovery;
pub mod health;
pub mod runtime;

pub use agent::{ChallengeConfig, HostConfig, UsageClaims, run};

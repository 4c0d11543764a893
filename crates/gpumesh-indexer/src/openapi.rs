//! The API's OpenAPI 3 description, generated from the handlers' annotations (api.rs) and
//! the wire types' schemas (gpumesh-types); served at `/openapi.json`, browsable at `/api`.

use utoipa::OpenApi;

/// The document's frame; the paths come from `api::documented`.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "gpumesh indexer API",
        description = "The registry, matching, leases, settlement ledger and checking of a gpumesh network. Mutating requests are signed (EIP-191 over chain id, method, path, nonce, expiry and the body's hash) in the x-gpumesh-* headers. Amounts are integer base units (18 decimals) as decimal strings. Errors are {code, message} with a stable code."
    ),
    tags(
        (name = "health", description = "liveness, readiness, metrics"),
        (name = "network", description = "the network's parameters, containers and coordinates"),
        (name = "hosts", description = "what host agents call"),
        (name = "leases", description = "jobs and their leases"),
        (name = "deployments", description = "services across regions, their replicas and sessions"),
        (name = "ledger", description = "the settlement ledger"),
        (name = "accounts", description = "balances, stakes and history"),
        (name = "checking", description = "checkers' tasks, reports and canaries"),
    )
)]
pub struct ApiDoc;

/// The signature headers of a mutating request.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct SignatureHeaders {
    /// The signer's 0x address.
    #[param(rename = "x-gpumesh-signer")]
    signer: String,
    /// The signing time in microseconds since the Unix epoch; each is accepted once.
    #[param(rename = "x-gpumesh-nonce")]
    nonce: u64,
    /// When the signature expires, in milliseconds since the Unix epoch.
    #[param(rename = "x-gpumesh-expires")]
    expires: u64,
    /// The 65-byte EIP-191 signature as 0x-prefixed hex.
    #[param(rename = "x-gpumesh-signature")]
    signature: String,
}

//! API errors: every failure leaves as a stable code, an HTTP status and a readable
//! message. The mapping from code to status lives here and nowhere else.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gpumesh_ledger::LedgerError;
use gpumesh_registry::RegistryError;
use gpumesh_types::{ApiError, ErrorCode};

/// An error on its way to becoming a response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: ErrorCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn internal(message: impl Into<String>) -> Failure {
        Failure::new(ErrorCode::Internal, message)
    }
}

/// The one place where codes meet statuses.
pub fn status_of(code: ErrorCode) -> StatusCode {
    use ErrorCode::*;
    match code {
        InvalidJson | InvalidRequest | UnknownGpuModel | InvalidPrice | InvalidLocation
        | InvalidTransaction | Overflow | InvalidPort | InvalidEnv | InvalidHealthCheck
        | InvalidChallengeUrl | InvalidRegion => StatusCode::BAD_REQUEST,
        BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        MissingSignature | BadSignature | SignatureExpired | ReplayedRequest => {
            StatusCode::UNAUTHORIZED
        }
        InsufficientFunds => StatusCode::PAYMENT_REQUIRED,
        NotYourLease
        | NotLocalNetwork
        | SimulatedNotAllowed
        | NoProofRate
        | ProcessRuntimeNotAllowed
        | NotAChecker
        | CheckerBanned
        | NotAssigned
        | NotYourDeployment => StatusCode::FORBIDDEN,
        RateLimited => StatusCode::TOO_MANY_REQUESTS,
        TimedOut | Overloaded => StatusCode::SERVICE_UNAVAILABLE,
        UnknownLease | UnknownHost | UnknownAccount | NotFound | UnknownDeployment
        | UnknownSession => StatusCode::NOT_FOUND,
        MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        InvalidLeaseState
        | WrongNonce
        | NoMatch
        | LateReport
        | DuplicateResult
        | NoSessions
        | UsageExceedsElapsed
        | UsageExceedsDelivered => StatusCode::CONFLICT,
        Internal | Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        if self.code == ErrorCode::Internal {
            tracing::error!(message = %self.message, "request failed");
        }
        let body = ApiError {
            code: self.code,
            message: self.message,
        };
        let code = body.code;
        let mut response = (status_of(code), axum::Json(body)).into_response();
        // For the request metrics, which count refusals by code.
        response.extensions_mut().insert(code);
        if code == ErrorCode::Overloaded {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from_static("1"),
            );
        }
        response
    }
}

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Failure {
        Failure::new(e.code(), e.to_string())
    }
}

impl From<LedgerError> for Failure {
    fn from(e: LedgerError) -> Failure {
        use LedgerError::*;
        let code = match &e {
            WrongChain { .. }
            | ZeroAmount
            | EscrowExists(_)
            | EscrowClosed(_)
            | EscrowAmount { .. }
            | EscrowTerms(_)
            | UsageDecreased { .. }
            | UsageExceedsEscrow { .. }
            | AlreadyStarted(_)
            | DuplicateUsage(_)
            | EmptyUsage
            | NotProtocol
            | OutOfSequence { .. }
            | NothingStaked { .. }
            | NothingUnbonding { .. }
            | StillUnbonding { .. }
            | EpochOutOfOrder { .. }
            | InvalidEpoch(_)
            | LeaseRetired(_)
            | RetiringOpenEscrow(_)
            | RetireRanges(_) => ErrorCode::InvalidTransaction,
            BadSignature(_) => ErrorCode::BadSignature,
            Overflow(_) => ErrorCode::Overflow,
            UnknownAccount(_) => ErrorCode::UnknownAccount,
            WrongNonce { .. } => ErrorCode::WrongNonce,
            UsageExceedsElapsed { .. } => ErrorCode::UsageExceedsElapsed,
            InsufficientFunds { .. } | AllowanceExceeded { .. } => ErrorCode::InsufficientFunds,
            UnknownEscrow(_) => ErrorCode::UnknownLease,
            NotEscrowHost { .. } => ErrorCode::NotYourLease,
        };
        Failure::new(code, e.to_string())
    }
}

/// Decodes a request body; a failure's code comes from the field that refused it.
pub fn decode_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, Failure> {
    let mut json = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut json).map_err(|e| json_failure(&e))
}

/// Names the code of a JSON body that failed to decode, from the innermost named field
/// on the path to the value that refused it.
fn json_failure(error: &serde_path_to_error::Error<serde_json::Error>) -> Failure {
    let field = error
        .path()
        .iter()
        .filter_map(|segment| match segment {
            serde_path_to_error::Segment::Map { key } => Some(key.as_str()),
            serde_path_to_error::Segment::Seq { .. }
            | serde_path_to_error::Segment::Enum { .. }
            | serde_path_to_error::Segment::Unknown => None,
        })
        .next_back();
    let code = match field {
        Some("gpu" | "model") => ErrorCode::UnknownGpuModel,
        Some("max_price_per_gpu_hour" | "price_per_gpu_hour" | "amount") => ErrorCode::InvalidPrice,
        Some("country" | "countries" | "exclude_countries") => ErrorCode::InvalidLocation,
        Some("ports") => ErrorCode::InvalidPort,
        Some("env") => ErrorCode::InvalidEnv,
        Some("health" | "probe") => ErrorCode::InvalidHealthCheck,
        _ => ErrorCode::InvalidJson,
    };
    Failure::new(code, format!("request body is not valid: {error}"))
}

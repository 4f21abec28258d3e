//! `application/problem+json` (RFC 9457) errors. One closed table maps each error kind to its
//! status and stable `type`; internal error text never reaches a client (it is logged once).

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use ebb_bus::{RpcError, RpcErrorKind};
use serde::Serialize;
use std::collections::BTreeMap;

/// A problem response. Besides the members below, a problem the planner raised may carry
/// numeric members of its own (an `insufficient-load` says `available_kw`, for one).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    #[schema(value_type = ProblemType)]
    pub kind: &'static str,
    pub title: &'static str,
    pub status: u16,
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// Devices left out of a plan, by reason (on `insufficient-load` and `empty-plan`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub skipped: BTreeMap<String, u32>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: BTreeMap<String, f64>,
    /// Seconds for the `Retry-After` header, on the problems a client should retry later.
    #[serde(skip)]
    pub retry_after: Option<u64>,
}

/// The field a problem is about (a JSON path into the request, or a query or header name).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every kind of error the API returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    Unauthenticated,
    PermissionDenied,
    NotFound,
    Conflict,
    FailedPrecondition,
    /// The event is not in a state the request applies to.
    InvalidState,
    /// The event changed state between the request's read and its write: read it and retry.
    UpdateStateRace,
    InsufficientLoad,
    EmptyPlan,
    /// The key sent more requests than its rate allows (`Retry-After` says when to retry).
    RateLimited,
    Unavailable,
    /// The gateway is serving as many requests as it may; this one was shed, not queued.
    Overloaded,
    /// The planner did not answer a Start in time: it may or may not have started the
    /// curtailment. A retry with the same `Idempotency-Key` returns it if it did.
    OutcomeUnknown,
    Internal,
}

/// The closed list of problem `type` URIs, as the OpenAPI document states it.
#[derive(Debug)]
pub struct ProblemType;

impl utoipa::PartialSchema for ProblemType {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "The problem's stable type: one of a closed list, each with one status",
            ))
            .enum_values(Some(Kind::ALL.iter().map(|k| k.describe().1)))
            .into()
    }
}

impl utoipa::ToSchema for ProblemType {}

impl Kind {
    /// Every kind, so the OpenAPI document can list them all.
    pub const ALL: [Kind; 15] = [
        Kind::InvalidArgument,
        Kind::Unauthenticated,
        Kind::PermissionDenied,
        Kind::NotFound,
        Kind::Conflict,
        Kind::FailedPrecondition,
        Kind::InvalidState,
        Kind::UpdateStateRace,
        Kind::InsufficientLoad,
        Kind::EmptyPlan,
        Kind::RateLimited,
        Kind::Unavailable,
        Kind::Overloaded,
        Kind::OutcomeUnknown,
        Kind::Internal,
    ];

    /// The closed mapping: status, `type`, title.
    pub fn describe(self) -> (StatusCode, &'static str, &'static str) {
        use Kind::*;
        match self {
            InvalidArgument => (
                StatusCode::BAD_REQUEST,
                "https://ebb.dev/problems/invalid-argument",
                "Invalid argument",
            ),
            Unauthenticated => (
                StatusCode::UNAUTHORIZED,
                "https://ebb.dev/problems/unauthenticated",
                "Unauthenticated",
            ),
            PermissionDenied => (
                StatusCode::FORBIDDEN,
                "https://ebb.dev/problems/permission-denied",
                "Permission denied",
            ),
            NotFound => (
                StatusCode::NOT_FOUND,
                "https://ebb.dev/problems/not-found",
                "Not found",
            ),
            Conflict => (
                StatusCode::CONFLICT,
                "https://ebb.dev/problems/conflict",
                "Conflict",
            ),
            FailedPrecondition => (
                StatusCode::CONFLICT,
                "https://ebb.dev/problems/failed-precondition",
                "Failed precondition",
            ),
            InvalidState => (
                StatusCode::CONFLICT,
                "https://ebb.dev/problems/invalid-state",
                "Invalid state",
            ),
            UpdateStateRace => (
                StatusCode::CONFLICT,
                "https://ebb.dev/problems/update-state-race",
                "Update lost a state race",
            ),
            InsufficientLoad => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "https://ebb.dev/problems/insufficient-load",
                "Insufficient load",
            ),
            EmptyPlan => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "https://ebb.dev/problems/empty-plan",
                "No eligible devices",
            ),
            RateLimited => (
                StatusCode::TOO_MANY_REQUESTS,
                "https://ebb.dev/problems/rate-limited",
                "Too many requests",
            ),
            Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "https://ebb.dev/problems/unavailable",
                "Service unavailable",
            ),
            Overloaded => (
                StatusCode::SERVICE_UNAVAILABLE,
                "https://ebb.dev/problems/overloaded",
                "Overloaded",
            ),
            OutcomeUnknown => (
                StatusCode::GATEWAY_TIMEOUT,
                "https://ebb.dev/problems/outcome-unknown",
                "Outcome unknown",
            ),
            Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "https://ebb.dev/problems/internal",
                "Internal error",
            ),
        }
    }
}

impl Problem {
    pub fn new(kind: Kind, detail: impl Into<String>) -> Self {
        let (status, t, title) = kind.describe();
        Self {
            kind: t,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            skipped: BTreeMap::new(),
            extra: BTreeMap::new(),
            retry_after: None,
        }
    }

    /// The same problem, telling the client to retry after `seconds`.
    pub fn retry_after(self, seconds: u64) -> Self {
        Self {
            retry_after: Some(seconds.max(1)),
            ..self
        }
    }

    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        Self {
            errors: vec![FieldError {
                field: field.to_owned(),
                message: message.clone(),
            }],
            ..Self::new(Kind::InvalidArgument, format!("{field}: {message}"))
        }
    }

    /// Logs `err` in full and returns a problem that does not leak it.
    pub fn internal(err: impl std::fmt::Debug) -> Self {
        tracing::error!(error = ?err, "internal error");
        Self::new(Kind::Internal, "an internal error occurred")
    }
}

impl From<RpcError> for Problem {
    fn from(e: RpcError) -> Self {
        let kind = match e.kind {
            RpcErrorKind::InvalidArgument => Kind::InvalidArgument,
            RpcErrorKind::InsufficientLoad => Kind::InsufficientLoad,
            RpcErrorKind::EmptyPlan => Kind::EmptyPlan,
            RpcErrorKind::NotFound => Kind::NotFound,
            RpcErrorKind::FailedPrecondition => Kind::FailedPrecondition,
            RpcErrorKind::InvalidState => Kind::InvalidState,
            RpcErrorKind::StateRace => Kind::UpdateStateRace,
            RpcErrorKind::PermissionDenied => Kind::PermissionDenied,
            RpcErrorKind::Conflict => Kind::Conflict,
            RpcErrorKind::Unavailable => Kind::Unavailable,
            // The planner logged the cause; its message is already generic.
            RpcErrorKind::Internal => {
                return Problem::new(Kind::Internal, "an internal error occurred");
            }
        };
        let mut p = Problem::new(kind, e.message.clone());
        if let Some(f) = e.field {
            p.errors.push(FieldError {
                field: f.clone(),
                message: e.message,
            });
        }
        p.skipped = e.skipped;
        p.extra = e.detail;
        p
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry_after = self.retry_after;
        let mut r = (status, Json(self)).into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(s) = retry_after {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::Kind;

    /// Every kind is in [`Kind::ALL`], once: adding a kind without listing it fails to compile
    /// here (the match is exhaustive) or fails the position check.
    #[test]
    fn all_lists_every_kind_once() {
        let position = |k: Kind| -> usize {
            match k {
                Kind::InvalidArgument => 0,
                Kind::Unauthenticated => 1,
                Kind::PermissionDenied => 2,
                Kind::NotFound => 3,
                Kind::Conflict => 4,
                Kind::FailedPrecondition => 5,
                Kind::InvalidState => 6,
                Kind::UpdateStateRace => 7,
                Kind::InsufficientLoad => 8,
                Kind::EmptyPlan => 9,
                Kind::RateLimited => 10,
                Kind::Unavailable => 11,
                Kind::Overloaded => 12,
                Kind::OutcomeUnknown => 13,
                Kind::Internal => 14,
            }
        };
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(position(*k), i, "{k:?}");
        }
        let mut uris: Vec<_> = Kind::ALL.iter().map(|k| k.describe().1).collect();
        uris.sort_unstable();
        uris.dedup();
        assert_eq!(uris.len(), Kind::ALL.len(), "one type URI per kind");
    }
}

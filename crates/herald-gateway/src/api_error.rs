//! Errors as the gateway answers them: `{"error":{"kind":..,"message":..}}` with a status.
//!
//! | kind | status | when |
//! | --- | --- | --- |
//! | `bad_input` | 400 | the library's bad input (topic name, key, ...), malformed request |
//! | `too_large` | 413 | a body over the gateway's limit, a message over the topic's limit, a batch over the batch limit |
//! | `unauthorized` | 401 | no token, a token that does not verify, an expired token |
//! | `forbidden` | 403 | a valid token without the grant for the action on that topic |
//! | `not_found` | 404 | no such endpoint, map key or job |
//! | `conflict` | 412 | a map compare-and-set lost (`If-Match` / `If-None-Match: *`) |
//! | `stale` | 409 | a work-group outcome for a delivery that is no longer current |
//! | `unreachable` | 503 | Redis could not be reached in time (or replicas did not confirm) |
//! | `refused` | 502 | Redis refused, or holds data Herald cannot use |
//! | `other` | 500 | anything else |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use herald::ErrorKind;
use serde::Serialize;

/// An error answer.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub(crate) status: StatusCode,
    pub(crate) kind: &'static str,
    pub(crate) message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    kind: &'a str,
    message: &'a str,
}

impl ApiError {
    pub(crate) fn bad_input(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            kind: "bad_input",
            message: message.into(),
        }
    }

    pub(crate) fn too_large(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            kind: "too_large",
            message: message.into(),
        }
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNAUTHORIZED,
            kind: "unauthorized",
            message: message.into(),
        }
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::FORBIDDEN,
            kind: "forbidden",
            message: message.into(),
        }
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            kind: "not_found",
            message: message.into(),
        }
    }

    /// The JSON object `{"error":{"kind","message"}}`.
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::json!({"error": {"kind": self.kind, "message": self.message}})
    }
}

impl From<herald::Error> for ApiError {
    fn from(e: herald::Error) -> Self {
        let message = e.to_string();
        let (status, kind) = match (&e, e.kind()) {
            (herald::Error::MessageTooLarge { .. } | herald::Error::BatchTooLarge { .. }, _) => {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            }
            (_, ErrorKind::BadInput) => (StatusCode::BAD_REQUEST, "bad_input"),
            (_, ErrorKind::Conflict) => (StatusCode::PRECONDITION_FAILED, "conflict"),
            (_, ErrorKind::Unreachable) => (StatusCode::SERVICE_UNAVAILABLE, "unreachable"),
            (_, ErrorKind::Refused) => (StatusCode::BAD_GATEWAY, "refused"),
            _ => (StatusCode::INTERNAL_SERVER_ERROR, "other"),
        };
        ApiError {
            status,
            kind,
            message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&Body {
            error: Inner {
                kind: self.kind,
                message: &self.message,
            },
        })
        .unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

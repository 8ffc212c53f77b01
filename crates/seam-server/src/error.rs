//! The API's one error shape and the mapping of failures to HTTP statuses and stable codes.
//!
//! | code | status |
//! |---|---|
//! | `invalid_json`, `invalid_utf8`, `too_deep`, `invalid_body`, `invalid_form`, `invalid_gzip`, `invalid_events`, `invalid_reference`, `invalid_query`, `invalid_segment`, `invalid_computed_trait`, `invalid_template`, `invalid_journey` | 400 |
//! | `missing_key`, `invalid_key` | 401 |
//! | `forbidden` | 403 |
//! | `not_found`, `profile_not_found`, `segment_not_found`, `computed_trait_not_found`, `template_not_found`, `journey_not_found`, `message_not_found`, `not_suppressed` | 404 |
//! | `method_not_allowed` | 405 |
//! | `segment_in_use`, `template_in_use`, `journey_active`, `journey_not_active`, `not_a_dead_letter` | 409 |
//! | `payload_too_large` | 413 |
//! | `unsupported_encoding`, `unsupported_media_type` | 415 |
//! | `internal` | 500 |
//! | `overloaded`, `unavailable` | 503 (with `Retry-After`) |

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// One rejected event, or one rejected field.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ErrorItem {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
    pub field: String,
    pub reason: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub errors: Vec<ErrorItem>,
    #[serde(skip)]
    pub retry_after: Option<u32>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    pub fn with_errors(mut self, errors: Vec<ErrorItem>) -> Self {
        self.errors = errors;
        self
    }

    pub fn retry_after(mut self, secs: u32) -> Self {
        self.retry_after = Some(secs);
        self
    }

    /// A storage failure: overload and shutdown are temporary (503), anything else is logged and hidden (500).
    pub fn from_store(e: seam_store::StoreError) -> Self {
        match e {
            seam_store::StoreError::Overloaded => Self::new(
                503,
                "overloaded",
                "the server is busy; retry after the given delay",
            )
            .retry_after(1),
            seam_store::StoreError::Closed => {
                Self::new(503, "unavailable", "the server is shutting down; retry").retry_after(5)
            }
            seam_store::StoreError::Unavailable => {
                // The log writer logged the cause. The request's events may have reached the log unacknowledged
                // (a failed flush); a retry with the same messageIds is stored once.
                Self::new(
                    503,
                    "unavailable",
                    "the event log could not be written; retry",
                )
                .retry_after(5)
            }
            other => {
                tracing::error!(error = %other, "storage failure");
                Self::new(500, "internal", "internal error; it has been logged").retry_after(5)
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let retry = self.retry_after;
        let mut resp = (status, axum::Json(self)).into_response();
        if let Some(secs) = retry {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }
}

//! The Segment-compatible collection endpoints.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::Json;
use seam_core::clock::Stopwatch;
use seam_ingest::{decode_body, parse_call, CallKind, IngestOptions};
use serde_json::json;

use crate::error::ErrorItem;
use crate::{auth, ApiError, AppState};

/// `POST /v1/{call}`: identify, track, page, screen, group, alias, batch, or their one-letter forms.
pub(crate) async fn collect(
    State(state): State<AppState>,
    Path(call): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let watch = Stopwatch::start();
    let result = handle(&state, &call, &headers, body).await;
    let m = &state.metrics;
    match result {
        Ok(Answer::Stored) => {
            m.observe_ack(watch.elapsed());
            m.count_request(200);
            Json(json!({"success": true})).into_response()
        }
        Ok(Answer::Partly(e)) => {
            // The valid events of the batch were made durable before this answer.
            m.observe_ack(watch.elapsed());
            m.count_request(e.status);
            e.into_response()
        }
        Err(e) => {
            m.count_request(e.status);
            e.into_response()
        }
    }
}

/// A request that got as far as the log.
enum Answer {
    /// Every event is durable.
    Stored,
    /// The valid events are durable; the error names the others.
    Partly(ApiError),
}

async fn handle(
    state: &AppState,
    call: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Answer, ApiError> {
    let kind = CallKind::from_path(call).ok_or_else(|| {
        ApiError::new(
            404,
            "not_found",
            format!("/v1/{call} is not an endpoint; see /openapi.json"),
        )
    })?;
    let limits = state.settings.limits;
    let raw = axum::body::to_bytes(body, limits.max_batch_bytes + 1)
        .await
        .map_err(|_| too_large(limits.max_batch_bytes))?;
    let header_key = auth::header_key(headers);
    // Refuse a bad header key before spending time on the body.
    let ws_from_header = match header_key.as_deref() {
        Some(k) if !k.is_empty() => Some(auth::for_collect(state, Some(k))?),
        _ => None,
    };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok());
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let reject = |e: seam_ingest::BodyError| {
        state.metrics.count_rejected(1);
        ApiError::new(e.status(), e.code(), e.to_string())
    };
    let decoded = decode_body(&raw, encoding, ctype, limits.max_batch_bytes).map_err(reject)?;
    let body = decoded.body(kind).map_err(reject)?;
    let ws = match ws_from_header {
        Some(ws) => ws,
        None => auth::for_collect(state, body.write_key().as_deref())?,
    };
    let rules = state.store.identifier_rules(ws);
    let opts = IngestOptions {
        limits,
        default_region: state.settings.default_region,
        rules: &rules,
    };
    let parsed = parse_call(kind, &body, state.clock.now_ms(), &opts);
    let total = parsed.accepted.len() + parsed.rejected.len();
    let stored = parsed.accepted.len();
    state
        .store
        .append(ws, parsed.accepted.into_iter().map(Into::into).collect())
        .await
        .map_err(ApiError::from_store)?;
    if parsed.rejected.is_empty() {
        return Ok(Answer::Stored);
    }
    state.metrics.count_rejected(parsed.rejected.len() as u64);
    let only_size = parsed.rejected.iter().all(|e| e.too_large);
    let (status, code) = if only_size {
        (413, "payload_too_large")
    } else {
        (400, "invalid_events")
    };
    let message = if parsed.rejected.iter().any(|e| e.index.is_none()) {
        format!(
            "the request was rejected: {}",
            describe(&parsed.rejected[0])
        )
    } else {
        format!(
            "{} of {} events rejected (listed in errors by index); the other {} were stored",
            parsed.rejected.len(),
            total,
            stored
        )
    };
    let errors = parsed
        .rejected
        .into_iter()
        .map(|e| ErrorItem {
            index: e.index,
            field: e.field,
            reason: e.reason,
        })
        .collect();
    let error = ApiError::new(status, code, message).with_errors(errors);
    if stored > 0 {
        Ok(Answer::Partly(error))
    } else {
        Err(error)
    }
}

fn describe(e: &seam_ingest::FieldError) -> String {
    if e.field.is_empty() {
        e.reason.clone()
    } else {
        format!("{} {}", e.field, e.reason)
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        413,
        "payload_too_large",
        format!("the request body is larger than {limit} bytes"),
    )
}

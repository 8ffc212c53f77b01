//! API keys from the places SDKs put them: HTTP basic auth (key as user name), `X-Write-Key`, `Authorization:
//! Bearer`, or `writeKey` in the body.

use axum::http::{header, HeaderMap};
use base64::Engine;
use seam_store::{KeyKind, WorkspaceKey};

use crate::{ApiError, AppState};

/// The key a request carries in its headers, if any.
pub(crate) fn header_key(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers.get("x-write-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_owned());
    }
    let auth = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    let (scheme, rest) = auth.split_once(' ')?;
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let user = text.split_once(':').map_or(text.as_str(), |(u, _)| u);
            Some(user.to_owned())
        }
        "bearer" => Some(rest.trim().to_owned()),
        _ => None,
    }
}

/// Authenticates a key for sending events (write and secret keys both may).
pub(crate) fn for_collect(state: &AppState, key: Option<&str>) -> Result<WorkspaceKey, ApiError> {
    let key = key.filter(|k| !k.is_empty()).ok_or_else(|| {
        ApiError::new(
            401,
            "missing_key",
            "a write key is required: HTTP basic auth user name, X-Write-Key or writeKey",
        )
    })?;
    state
        .store
        .authenticate(key)
        .map(|(ws, _)| ws)
        .ok_or_else(|| ApiError::new(401, "invalid_key", "the write key is not known"))
}

/// Authenticates a secret key for the management API; a write key is refused.
pub(crate) fn for_management(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<WorkspaceKey, ApiError> {
    let key = header_key(headers)
        .filter(|k| !k.is_empty())
        .ok_or_else(|| {
            ApiError::new(
                401,
                "missing_key",
                "a secret key is required as Authorization: Bearer <key>",
            )
        })?;
    match state.store.authenticate(&key) {
        Some((ws, KeyKind::Secret)) => Ok(ws),
        Some((_, KeyKind::Write)) => Err(ApiError::new(
            403,
            "forbidden",
            "a write key can only send events; use a secret key",
        )),
        None => Err(ApiError::new(
            401,
            "invalid_key",
            "the secret key is not known",
        )),
    }
}

//! The profiles API: a person by id or by any identifier, and their timeline.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::Json;
use seam_core::{Identifier, IdentifierType, ProfileId};
use seam_ingest::normalize::{EmailAddress, PhoneE164};
use seam_store::read::Cursor;
use seam_store::{ProfileRef, ProfileView, TimelinePage};

use crate::error::ErrorItem;
use crate::{auth, ApiError, AppState};

const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 1_000;

/// Reads `prof_…` or `{type}:{value}`, normalising the value as ingest does.
pub(crate) fn parse_reference(raw: &str, state: &AppState) -> Result<ProfileRef, ApiError> {
    let bad = |reason: String| {
        ApiError::new(
            400,
            "invalid_reference",
            format!("{raw:?} is not a profile reference: {reason}"),
        )
        .with_errors(vec![ErrorItem {
            index: None,
            field: "reference".into(),
            reason,
        }])
    };
    let Some((kind, value)) = raw.split_once(':') else {
        return ProfileId::parse(raw).map(ProfileRef::Id).map_err(|e| {
            bad(format!(
                "{}; or use type:value such as email:anna@example.com",
                e.0
            ))
        });
    };
    let kind = IdentifierType::parse(kind).map_err(bad)?;
    let value = match kind.as_str() {
        IdentifierType::EMAIL => EmailAddress::parse(value)
            .map_err(|r| bad(format!("the e-mail {r}")))?
            .as_str()
            .to_owned(),
        IdentifierType::PHONE => PhoneE164::parse(value, state.settings.default_region)
            .map_err(|r| bad(format!("the phone {r}")))?
            .as_str()
            .to_owned(),
        _ => value.trim().to_owned(),
    };
    if value.is_empty() {
        return Err(bad("the value is empty".into()));
    }
    Ok(ProfileRef::Identifier(Identifier::new(kind, value)))
}

fn not_found(raw: &str) -> ApiError {
    ApiError::new(
        404,
        "profile_not_found",
        format!("no profile is known as {raw:?}"),
    )
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, seam_store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "read task failed");
            ApiError::new(500, "internal", "internal error; it has been logged")
        })?
        .map_err(ApiError::from_store)
}

/// `GET /v1/profiles/{reference}`
pub(crate) async fn get_profile(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<Json<ProfileView>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let r = parse_reference(&reference, &state)?;
    let store = state.store.clone();
    blocking(move || store.profile(ws, &r))
        .await?
        .map(Json)
        .ok_or_else(|| not_found(&reference))
}

/// `GET /v1/profiles/{reference}/events?limit=&before=`
pub(crate) async fn get_events(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<TimelinePage>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let r = parse_reference(&reference, &state)?;
    let query_error = |field: &str, reason: &str| {
        ApiError::new(400, "invalid_query", format!("{field} {reason}")).with_errors(vec![
            ErrorItem {
                index: None,
                field: field.into(),
                reason: reason.into(),
            },
        ])
    };
    let limit = match q.get("limit") {
        None => DEFAULT_PAGE,
        Some(s) => match s.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => n,
            _ => {
                return Err(query_error(
                    "limit",
                    "must be a whole number from 1 to 1000",
                ))
            }
        },
    };
    let before = match q.get("before").filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Cursor::parse(s).ok_or_else(|| {
            query_error("before", "must be a cursor from a previous page's next")
        })?),
    };
    let store = state.store.clone();
    let page = blocking(move || {
        let Some(id) = store.resolve(ws, &r)? else {
            return Ok(None);
        };
        store.timeline(ws, &id, before, limit).map(Some)
    })
    .await?;
    page.map(Json).ok_or_else(|| not_found(&reference))
}

//! The computed traits API: a measure of each person's events (`sum revenue of "Order Completed"`), kept on the
//! profile, returned by the profiles API, and usable in segments as `trait computed.<name>`.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use seam_audiences::ast::Metric;
use seam_audiences::{parse_metric, print_metric};
use seam_store::segments::{DefinitionKind, DefinitionRecord};
use seam_store::WorkspaceKey;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorItem;
use crate::profiles::blocking;
use crate::{auth, ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Body {
    name: Option<String>,
    definition: Option<String>,
}

#[derive(Debug, Serialize)]
pub(crate) struct View {
    #[serde(flatten)]
    record: DefinitionRecord,
    measure: Metric,
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    ApiError::new(400, "invalid_computed_trait", format!("{field}: {reason}")).with_errors(vec![
        ErrorItem {
            index: None,
            field: field.to_owned(),
            reason,
        },
    ])
}

fn view(record: DefinitionRecord) -> Result<View, ApiError> {
    let measure = parse_metric(&record.definition).map_err(|e| {
        tracing::error!(error = %e, "a stored computed trait definition does not parse");
        ApiError::new(500, "internal", "internal error; it has been logged")
    })?;
    Ok(View { record, measure })
}

fn valid_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            "must be 1-64 characters of a-z, 0-9 and _, starting with a letter",
        ))
    }
}

async fn all(state: &AppState, ws: WorkspaceKey) -> Result<Vec<DefinitionRecord>, ApiError> {
    let store = state.store.clone();
    blocking(move || store.definitions(ws, DefinitionKind::ComputedTrait)).await
}

async fn one(state: &AppState, ws: WorkspaceKey, id: &str) -> Result<DefinitionRecord, ApiError> {
    let (store, key) = (state.store.clone(), id.to_owned());
    blocking(move || store.definition(ws, DefinitionKind::ComputedTrait, &key))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                404,
                "computed_trait_not_found",
                format!("no computed trait has the id {id:?}"),
            )
        })
}

type JsonBody = Result<Json<Body>, axum::extract::rejection::JsonRejection>;

/// Checks a request: the name (unique in the workspace) and the measure.
async fn checked(
    state: &AppState,
    ws: WorkspaceKey,
    body: JsonBody,
    current: Option<&DefinitionRecord>,
) -> Result<(String, String), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::new(400, "invalid_json", e.body_text()))?;
    let name = body
        .name
        .or_else(|| current.map(|c| c.name.clone()))
        .ok_or_else(|| invalid("name", "is required"))?;
    valid_name(&name)?;
    let text = body
        .definition
        .ok_or_else(|| invalid("definition", "is required"))?;
    let m = parse_metric(&text).map_err(|e| invalid("definition", e.to_string()))?;
    if all(state, ws)
        .await?
        .iter()
        .any(|d| d.name == name && Some(&d.id) != current.map(|c| &c.id))
    {
        return Err(invalid(
            "name",
            format!("a computed trait named {name:?} exists already"),
        ));
    }
    Ok((name, print_metric(&m)))
}

/// `POST /v1/computed-traits`
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<(StatusCode, Json<View>), ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let (name, definition) = checked(&state, ws, body, None).await?;
    let id = seam_store::workspace::random_token("ct_", 16).map_err(ApiError::from_store)?;
    state
        .store
        .define(
            ws,
            DefinitionKind::ComputedTrait,
            &id,
            &name,
            &definition,
            state.clock.now_ms(),
        )
        .await
        .map_err(ApiError::from_store)?;
    Ok((
        StatusCode::CREATED,
        Json(view(one(&state, ws, &id).await?)?),
    ))
}

/// `GET /v1/computed-traits`
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let views: Vec<View> = all(&state, ws)
        .await?
        .into_iter()
        .map(view)
        .collect::<Result<_, _>>()?;
    Ok(Json(serde_json::json!({ "computed_traits": views })))
}

/// `GET /v1/computed-traits/{id}`
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<View>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    Ok(Json(view(one(&state, ws, &id).await?)?))
}

/// `PUT /v1/computed-traits/{id}`
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: JsonBody,
) -> Result<Json<View>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let current = one(&state, ws, &id).await?;
    let (name, definition) = checked(&state, ws, body, Some(&current)).await?;
    state
        .store
        .define(
            ws,
            DefinitionKind::ComputedTrait,
            &id,
            &name,
            &definition,
            state.clock.now_ms(),
        )
        .await
        .map_err(ApiError::from_store)?;
    Ok(Json(view(one(&state, ws, &id).await?)?))
}

/// `DELETE /v1/computed-traits/{id}`
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    one(&state, ws, &id).await?;
    state
        .store
        .delete_definition(ws, DefinitionKind::ComputedTrait, &id, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(StatusCode::NO_CONTENT)
}

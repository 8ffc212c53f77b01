//! The templates and journeys API: definitions saved as events in the log, checked when saved (every problem
//! named with its place), versioned, journeys activated and paused. The format is in `docs/journeys.md`.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::Json;
use seam_core::ProfileId;
use seam_journeys::definition::{self, Catalog, JourneySpec, Problem};
use seam_journeys::template::{self, Template, TemplateSpec};
use seam_journeys::Channel;
use seam_store::segments::{DefinitionKind, DefinitionRecord};
use seam_store::WorkspaceKey;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::ErrorItem;
use crate::profiles::{blocking, parse_reference};
use crate::{auth, ApiError, AppState};

/// A definition body may be this large.
const MAX_DEFINITION: usize = 256 * 1024;

#[derive(Debug, Serialize)]
pub(crate) struct View {
    id: String,
    name: String,
    version: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<String>,
    created_at: String,
    updated_at: String,
    definition: Value,
}

fn view(r: DefinitionRecord) -> Result<View, ApiError> {
    let definition = serde_json::from_str(&r.definition).map_err(|e| {
        tracing::error!(error = %e, "a stored definition is not JSON");
        ApiError::new(500, "internal", "internal error; it has been logged")
    })?;
    Ok(View {
        id: r.id,
        name: r.name,
        version: r.version,
        status: r.status,
        created_at: r.created_at,
        updated_at: r.updated_at,
        definition,
    })
}

fn problems(code: &'static str, what: &str, ps: Vec<Problem>) -> ApiError {
    let first = ps.first().map(ToString::to_string).unwrap_or_default();
    let more = if ps.len() > 1 {
        format!(" (and {} more)", ps.len() - 1)
    } else {
        String::new()
    };
    ApiError::new(400, code, format!("the {what} is not valid: {first}{more}")).with_errors(
        ps.into_iter()
            .map(|p| ErrorItem {
                index: None,
                field: p.field,
                reason: p.reason,
            })
            .collect(),
    )
}

async fn all(
    state: &AppState,
    ws: WorkspaceKey,
    kind: DefinitionKind,
) -> Result<Vec<DefinitionRecord>, ApiError> {
    let store = state.store.clone();
    blocking(move || store.definitions(ws, kind)).await
}

async fn find(
    state: &AppState,
    ws: WorkspaceKey,
    kind: DefinitionKind,
    id: &str,
) -> Result<Option<DefinitionRecord>, ApiError> {
    let (store, id) = (state.store.clone(), id.to_owned());
    blocking(move || store.definition(ws, kind, &id)).await
}

async fn one(
    state: &AppState,
    ws: WorkspaceKey,
    kind: DefinitionKind,
    id: &str,
) -> Result<DefinitionRecord, ApiError> {
    find(state, ws, kind, id).await?.ok_or_else(|| match kind {
        DefinitionKind::Template => ApiError::new(
            404,
            "template_not_found",
            format!("no template has the id {id:?}"),
        ),
        _ => ApiError::new(
            404,
            "journey_not_found",
            format!("no journey has the id {id:?}"),
        ),
    })
}

/// Reads a body as JSON, or as YAML when the content type says so.
fn read_body<T: for<'de> Deserialize<'de>>(
    headers: &HeaderMap,
    body: &Bytes,
    what: &str,
) -> Result<T, ApiError> {
    if body.len() > MAX_DEFINITION {
        return Err(ApiError::new(
            413,
            "payload_too_large",
            format!("a {what} is at most {MAX_DEFINITION} bytes"),
        ));
    }
    let text = std::str::from_utf8(body)
        .map_err(|_| ApiError::new(400, "invalid_utf8", "the body is not UTF-8"))?;
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json")
        .to_ascii_lowercase();
    let bad = |field: String, reason: String| {
        ApiError::new(400, "invalid_body", format!("{field}: {reason}")).with_errors(vec![
            ErrorItem {
                index: None,
                field,
                reason,
            },
        ])
    };
    if ctype.contains("yaml") {
        return serde_norway::from_str(text).map_err(|e| {
            let at = e
                .location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_else(|| "body".into());
            bad(at, e.to_string())
        });
    }
    if !ctype.contains("json") {
        return Err(ApiError::new(
            415,
            "unsupported_media_type",
            "send the definition as application/json or application/yaml",
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        bad(
            format!("line {}, column {}", e.line(), e.column()),
            e.to_string(),
        )
    })
}

/// Checks a template; every problem is named.
fn checked_template(spec: TemplateSpec) -> Result<Template, ApiError> {
    Template::check(spec, 1).map_err(|ps| problems("invalid_template", "template", ps))
}

fn stored_template(r: &DefinitionRecord) -> Option<Template> {
    let spec: TemplateSpec = serde_json::from_str(&r.definition).ok()?;
    Template::check(spec, r.version as u32).ok()
}

/// What journeys may refer to: the workspace's segments (by name) and templates.
struct StoreCatalog {
    segments: Vec<String>,
    templates: Vec<Template>,
}

impl Catalog for StoreCatalog {
    fn has_segment(&self, name: &str) -> bool {
        self.segments.iter().any(|s| s == name)
    }

    fn template_for(&self, template: &str, channel: Channel) -> Result<(), String> {
        match self.templates.iter().find(|t| t.id == template) {
            None => Err(format!("there is no template named `{template}`")),
            Some(t) if !t.has_variant(channel) => {
                Err(format!("template `{template}` has no {channel} variant"))
            }
            Some(_) => Ok(()),
        }
    }

    fn channel_enabled(&self, _channel: Channel) -> bool {
        true
    }
}

async fn catalog(state: &AppState, ws: WorkspaceKey) -> Result<StoreCatalog, ApiError> {
    let segments = all(state, ws, DefinitionKind::Segment)
        .await?
        .into_iter()
        .map(|s| s.name)
        .collect();
    let templates = all(state, ws, DefinitionKind::Template)
        .await?
        .iter()
        .filter_map(stored_template)
        .collect();
    Ok(StoreCatalog {
        segments,
        templates,
    })
}

async fn validated(
    state: &AppState,
    ws: WorkspaceKey,
    spec: &JourneySpec,
) -> Result<(), Vec<Problem>> {
    let catalog = match catalog(state, ws).await {
        Ok(c) => c,
        Err(e) => {
            return Err(vec![Problem {
                field: "definition".into(),
                reason: e.message,
            }])
        }
    };
    definition::validate(spec, 1, &catalog).map(|_| ())
}

fn path_id(path_id: &str, body_id: &str, field: &str) -> Result<(), ApiError> {
    if !body_id.is_empty() && body_id != path_id {
        let reason = format!("is {body_id:?}, but the address says {path_id:?}");
        return Err(
            ApiError::new(400, "invalid_body", format!("{field}: {reason}")).with_errors(vec![
                ErrorItem {
                    index: None,
                    field: field.into(),
                    reason,
                },
            ]),
        );
    }
    Ok(())
}

async fn save(
    state: &AppState,
    ws: WorkspaceKey,
    kind: DefinitionKind,
    id: &str,
    name: &str,
    definition: &str,
) -> Result<(StatusCode, Json<View>), ApiError> {
    let existed = find(state, ws, kind, id).await?.is_some();
    state
        .store
        .define(ws, kind, id, name, definition, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(view(one(state, ws, kind, id).await?)?)))
}

/// `GET /v1/templates`
pub(crate) async fn list_templates(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list(&state, &headers, DefinitionKind::Template, "templates").await
}

/// Every definition of a kind, under `field`.
async fn list(
    state: &AppState,
    headers: &HeaderMap,
    kind: DefinitionKind,
    field: &str,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(state, headers)?;
    let views: Vec<View> = all(state, ws, kind)
        .await?
        .into_iter()
        .map(view)
        .collect::<Result<_, _>>()?;
    Ok(Json(json!({ field: views })))
}

/// `GET /v1/templates/{id}`
pub(crate) async fn get_template(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<View>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    Ok(Json(view(
        one(&state, ws, DefinitionKind::Template, &id).await?,
    )?))
}

/// `PUT /v1/templates/{id}`: creates (201) or saves a new version (200).
pub(crate) async fn put_template(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<View>), ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let mut raw: Map<String, Value> = read_body(&headers, &body, "template")?;
    let body_id = raw
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    path_id(&id, &body_id, "id")?;
    raw.insert("id".into(), Value::String(id.clone()));
    let spec: TemplateSpec = serde_json::from_value(Value::Object(raw)).map_err(|e| {
        ApiError::new(
            400,
            "invalid_template",
            format!("the template is not valid: {e}"),
        )
        .with_errors(vec![ErrorItem {
            index: None,
            field: "template".into(),
            reason: e.to_string(),
        }])
    })?;
    let t = checked_template(spec)?;
    let name = if t.spec.name.is_empty() {
        id.clone()
    } else {
        t.spec.name.clone()
    };
    let text = serde_json::to_string(&t.spec)
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    save(&state, ws, DefinitionKind::Template, &id, &name, &text).await
}

/// `DELETE /v1/templates/{id}`: refused while a journey refers to it.
pub(crate) async fn delete_template(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    one(&state, ws, DefinitionKind::Template, &id).await?;
    let users: Vec<String> = all(&state, ws, DefinitionKind::Journey)
        .await?
        .into_iter()
        .filter(|j| {
            serde_json::from_str::<JourneySpec>(&j.definition)
                .is_ok_and(|spec| templates_of(&spec).iter().any(|t| *t == id))
        })
        .map(|j| j.id)
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            409,
            "template_in_use",
            format!("journeys {users:?} send template {id:?}; change them first"),
        ));
    }
    state
        .store
        .delete_definition(ws, DefinitionKind::Template, &id, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(StatusCode::NO_CONTENT)
}

fn templates_of(spec: &JourneySpec) -> Vec<&str> {
    use seam_journeys::definition::NodeSpec;
    spec.nodes
        .values()
        .flat_map(|n| match n {
            NodeSpec::Send { template, .. } | NodeSpec::FirstReachable { template, .. } => {
                vec![template.as_str()]
            }
            NodeSpec::Cascade { steps, .. } => steps.iter().map(|s| s.template.as_str()).collect(),
            _ => vec![],
        })
        .collect()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PreviewBody {
    /// `prof_…` or `type:value`.
    profile: String,
    #[serde(default)]
    channel: Option<Channel>,
    /// The event the message would follow: `{ "name": …, "properties": { … } }`.
    #[serde(default)]
    event: Option<Value>,
}

/// `POST /v1/templates/{id}/preview`: the template rendered for a real profile, per channel.
pub(crate) async fn preview_template(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PreviewBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let Json(body) = body.map_err(|e| ApiError::new(400, "invalid_json", e.body_text()))?;
    let record = one(&state, ws, DefinitionKind::Template, &id).await?;
    let t = stored_template(&record)
        .ok_or_else(|| ApiError::new(500, "internal", "a stored template does not check"))?;
    let reference = parse_reference(&body.profile, &state)?;
    let store = state.store.clone();
    let profile = blocking(move || store.profile(ws, &reference))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                404,
                "profile_not_found",
                format!("no profile for {:?}", body.profile),
            )
        })?;
    let (store, pid) = (state.store.clone(), profile.id.clone());
    let segments: Vec<String> = blocking(move || store.memberships_of(ws, &pid))
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let channels: Vec<Channel> = match body.channel {
        Some(c) if t.has_variant(c) => vec![c],
        Some(c) => {
            return Err(ApiError::new(
                400,
                "invalid_body",
                format!("channel: template {id:?} has no {c} variant"),
            ))
        }
        None => t.spec.variants.keys().copied().collect(),
    };
    let mut out = Map::new();
    for channel in channels {
        let ctx = template::context(
            json!({"id": profile.id.to_string(), "traits": profile.traits, "computed": profile.computed_traits, "segments": segments}),
            body.event.clone().unwrap_or_else(|| json!({})),
            json!({"channel": channel.as_str(), "journey": "preview", "id": "preview"}),
        );
        let rendered = match t.render(channel, &ctx) {
            Ok(parts) => json!(parts),
            Err(e) => json!({ "rendering_error": e }),
        };
        out.insert(channel.as_str().into(), rendered);
    }
    Ok(Json(
        json!({ "template": id, "version": record.version, "variants": out }),
    ))
}

/// `GET /v1/journeys`
pub(crate) async fn list_journeys(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    list(&state, &headers, DefinitionKind::Journey, "journeys").await
}

/// `GET /v1/journeys/{id}`
pub(crate) async fn get_journey(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<View>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    Ok(Json(view(
        one(&state, ws, DefinitionKind::Journey, &id).await?,
    )?))
}

/// `POST /v1/journeys/validate`: every problem of a definition, without saving it.
pub(crate) async fn validate_journey(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let spec: JourneySpec = match read_body(&headers, &body, "journey") {
        Ok(s) => s,
        Err(e) if e.status == 400 => {
            return Ok(Json(json!({ "valid": false, "problems": e.errors })))
        }
        Err(e) => return Err(e),
    };
    Ok(Json(match validated(&state, ws, &spec).await {
        Ok(()) => json!({ "valid": true, "problems": [] }),
        Err(ps) => json!({ "valid": false, "problems": ps }),
    }))
}

/// `PUT /v1/journeys/{id}` (JSON or YAML): creates a draft (201) or saves a new version (200). A run in flight
/// finishes on the version it started on.
pub(crate) async fn put_journey(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<View>), ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let mut raw: Value = read_body(&headers, &body, "journey")?;
    if let Some(obj) = raw.as_object_mut() {
        let body_id = obj
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        path_id(&id, &body_id, "id")?;
        obj.insert("id".into(), Value::String(id.clone()));
    }
    let spec: JourneySpec = serde_json::from_value(raw).map_err(|e| {
        problems(
            "invalid_journey",
            "journey",
            vec![Problem {
                field: "definition".into(),
                reason: e.to_string(),
            }],
        )
    })?;
    validated(&state, ws, &spec)
        .await
        .map_err(|ps| problems("invalid_journey", "journey", ps))?;
    let name = if spec.name.is_empty() {
        id.clone()
    } else {
        spec.name.clone()
    };
    let text =
        serde_json::to_string(&spec).map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    save(&state, ws, DefinitionKind::Journey, &id, &name, &text).await
}

/// `DELETE /v1/journeys/{id}`: refused while it is active (pause it first).
pub(crate) async fn delete_journey(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let j = one(&state, ws, DefinitionKind::Journey, &id).await?;
    if j.status.as_deref() == Some("active") {
        return Err(ApiError::new(
            409,
            "journey_active",
            format!("journey {id:?} is active; pause it first"),
        ));
    }
    state
        .store
        .delete_definition(ws, DefinitionKind::Journey, &id, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/journeys/{id}/activate`: checked again against today's segments and templates.
pub(crate) async fn activate_journey(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<View>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let j = one(&state, ws, DefinitionKind::Journey, &id).await?;
    let spec: JourneySpec = serde_json::from_str(&j.definition)
        .map_err(|e| ApiError::new(500, "internal", e.to_string()))?;
    validated(&state, ws, &spec)
        .await
        .map_err(|ps| problems("invalid_journey", "journey", ps))?;
    set_status(&state, ws, &id, "active").await
}

/// `POST /v1/journeys/{id}/pause`: no new runs start; runs in flight go on.
pub(crate) async fn pause_journey(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<View>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    one(&state, ws, DefinitionKind::Journey, &id).await?;
    set_status(&state, ws, &id, "paused").await
}

async fn set_status(
    state: &AppState,
    ws: WorkspaceKey,
    id: &str,
    status: &str,
) -> Result<Json<View>, ApiError> {
    state
        .store
        .set_journey_status(ws, id, status, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(Json(view(
        one(state, ws, DefinitionKind::Journey, id).await?,
    )?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EnterBody {
    /// `prof_…` or `type:value`.
    profile: String,
}

/// `POST /v1/journeys/{id}/enter`: starts a run for a person, under the journey's entry rules.
pub(crate) async fn enter_journey(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<EnterBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let Json(body) = body.map_err(|e| ApiError::new(400, "invalid_json", e.body_text()))?;
    let j = one(&state, ws, DefinitionKind::Journey, &id).await?;
    if j.status.as_deref() != Some("active") {
        return Err(ApiError::new(
            409,
            "journey_not_active",
            format!("journey {id:?} is not active"),
        ));
    }
    let profile = live_profile(&state, ws, &body.profile).await?;
    state
        .store
        .request_entry(ws, &id, &profile, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    let store = state.store.clone();
    let runs: Vec<_> = blocking(move || store.runs_of(ws, &profile))
        .await?
        .into_iter()
        .filter(|r| r.journey == id)
        .collect();
    Ok((StatusCode::ACCEPTED, Json(json!({ "runs": runs }))))
}

/// `GET /v1/journeys/{id}/stats`: entered, converted, waiting, exited by reason, and per node reached, sent,
/// held and deferred by reason.
pub(crate) async fn journey_stats(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    one(&state, ws, DefinitionKind::Journey, &id).await?;
    let store = state.store.clone();
    Ok(Json(blocking(move || store.journey_stats(ws, &id)).await?))
}

/// `GET /v1/profiles/{reference}/journeys`: the person's runs and where each stands.
pub(crate) async fn of_profile(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let profile = live_profile(&state, ws, &reference).await?;
    let (store, p) = (state.store.clone(), profile.clone());
    let runs = blocking(move || store.runs_of(ws, &p)).await?;
    Ok(Json(json!({ "profile_id": profile, "journeys": runs })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MessagesQuery {
    journey: Option<String>,
    profile: Option<String>,
    status: Option<String>,
    limit: Option<usize>,
}

/// `GET /v1/messages?journey=&profile=&limit=`: the outbox, newest first.
pub(crate) async fn messages(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<axum::extract::Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let axum::extract::Query(q) =
        query.map_err(|e| ApiError::new(400, "invalid_query", e.body_text()))?;
    let limit = q.limit.unwrap_or(50);
    if limit == 0 || limit > 1_000 {
        return Err(ApiError::new(400, "invalid_query", "limit: from 1 to 1000"));
    }
    let profile = match &q.profile {
        None => None,
        Some(raw) => Some(live_profile(&state, ws, raw).await?),
    };
    if let Some(s) = &q.status {
        if !["pending", "retry", "sent", "dead"].contains(&s.as_str()) {
            return Err(ApiError::new(
                400,
                "invalid_query",
                "status: one of pending, retry, sent, dead",
            ));
        }
    }
    let store = state.store.clone();
    let list = blocking(move || {
        store.messages(
            ws,
            q.journey.as_deref(),
            profile.as_ref(),
            q.status.as_deref(),
            limit,
        )
    })
    .await?;
    Ok(Json(json!({ "messages": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OutcomeBody {
    outcome: seam_journeys::Outcome,
}

/// A JSON body that could not be read, answered with the field the endpoint needs and what it must be.
fn unreadable(e: axum::extract::rejection::JsonRejection, field: &str, reason: &str) -> ApiError {
    ApiError::new(400, "invalid_body", e.body_text()).with_errors(vec![ErrorItem {
        index: None,
        field: field.into(),
        reason: reason.into(),
    }])
}

/// `POST /v1/messages/{key}/outcome`: the built-in outbox channels are told what became of a message
/// (`delivered`, `read`, `clicked`, `failed`, `bounced`); it comes back as the person's event.
pub(crate) async fn report_outcome(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Result<Json<OutcomeBody>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let Json(body) = body.map_err(|e| {
        unreadable(
            e,
            "outcome",
            "one of delivered, read, clicked, failed, bounced",
        )
    })?;
    let found = state
        .store
        .report_outcome(ws, &key, body.outcome, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    if !found {
        return Err(ApiError::new(
            404,
            "message_not_found",
            format!("no message has the key {key:?}"),
        ));
    }
    Ok(StatusCode::ACCEPTED)
}

/// `POST /v1/messages/{key}/replay`: sends a dead letter again; its attempts start over.
pub(crate) async fn replay_message(
    State(state): State<AppState>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let requeued = state
        .store
        .requeue(ws, &key, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    let store = state.store.clone();
    let k = key.clone();
    let delivery = blocking(move || store.delivery(ws, &k)).await?;
    match (requeued, delivery) {
        (true, Some(d)) => Ok((StatusCode::ACCEPTED, Json(d))),
        (false, Some(d)) => Err(ApiError::new(
            409,
            "not_a_dead_letter",
            format!(
                "message {key:?} is {}; only dead letters are sent again",
                d["status"].as_str().unwrap_or("?")
            ),
        )),
        _ => Err(ApiError::new(
            404,
            "message_not_found",
            format!("no message has the key {key:?}"),
        )),
    }
}

/// The live profile a reference (`prof_…` or `type:value`) names, or a 404.
async fn live_profile(
    state: &AppState,
    ws: WorkspaceKey,
    raw: &str,
) -> Result<ProfileId, ApiError> {
    let r = parse_reference(raw, state)?;
    let store = state.store.clone();
    blocking(move || store.resolve(ws, &r))
        .await?
        .ok_or_else(|| ApiError::new(404, "profile_not_found", format!("no profile for {raw:?}")))
}

/// An address in a path: `type:value`, normalised as at ingest (`email:Anna@Example.com` → `email:anna@example.com`).
fn address(raw: &str, state: &AppState) -> Result<String, ApiError> {
    match parse_reference(raw, state)? {
        seam_store::ProfileRef::Identifier(id) => Ok(id.to_string()),
        seam_store::ProfileRef::Id(_) => Err(ApiError::new(
            400,
            "invalid_reference",
            format!(
                "{raw:?} is a profile id; an address is type:value such as email:anna@example.com"
            ),
        )),
    }
}

/// `GET /v1/suppressions`: addresses no message goes to, newest first.
pub(crate) async fn list_suppressions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let store = state.store.clone();
    let list = blocking(move || store.suppressions(ws, 1_000)).await?;
    Ok(Json(json!({ "suppressions": list })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SuppressBody {
    reason: String,
}

/// `PUT /v1/suppressions/{address}` `{"reason": …}`: no message goes to the address any more.
pub(crate) async fn put_suppression(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SuppressBody>, axum::extract::rejection::JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let Json(body) = body.map_err(|e| {
        unreadable(
            e,
            "reason",
            "a reason is required (complaint, unsubscribed, erased, …)",
        )
    })?;
    if body.reason.trim().is_empty() || body.reason.len() > 200 {
        return Err(ApiError::new(
            400,
            "invalid_body",
            "reason: 1–200 characters",
        ));
    }
    let address = address(&raw, &state)?;
    state
        .store
        .set_suppression(ws, &address, Some(body.reason.trim()), state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/suppressions/{address}`: messages may go to the address again.
pub(crate) async fn delete_suppression(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let address = address(&raw, &state)?;
    let (store, a) = (state.store.clone(), address.clone());
    if !blocking(move || store.is_suppressed(ws, &a)).await? {
        return Err(ApiError::new(
            404,
            "not_suppressed",
            format!("{address:?} is not on the suppression list"),
        ));
    }
    state
        .store
        .set_suppression(ws, &address, None, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(StatusCode::NO_CONTENT)
}

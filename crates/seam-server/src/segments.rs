//! The segments API: definitions (create, read, update, delete), preview, members, a profile's segments, and
//! explain. Members and a profile's segments come from the memberships the projector keeps current; explain
//! evaluates one person from scratch with `seam_audiences::eval`, and preview the live profiles a block at a
//! time within a time budget (`Store::preview`).

use std::collections::{HashMap, HashSet};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use seam_audiences::{parse, print, Explanation, Expr, Library};
use seam_core::ProfileId;
use seam_store::segments::{DefinitionKind, DefinitionRecord, PersonData};
use seam_store::{Store, WorkspaceKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorItem;
use crate::profiles::{blocking, parse_reference};
use crate::{auth, ApiError, AppState};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SegmentBody {
    name: Option<String>,
    /// The definition as text.
    definition: Option<String>,
    /// The definition as a tree (the JSON form).
    tree: Option<Value>,
}

#[derive(Debug, Serialize)]
pub(crate) struct SegmentView {
    #[serde(flatten)]
    record: DefinitionRecord,
    tree: Expr,
    /// How far evaluation has got: `{profiles, pending, done}` — profiles of the workspace, those still to be
    /// evaluated against its segments (a new or changed segment queues everyone: the backfill), and whether
    /// none are left.
    #[serde(skip_serializing_if = "Option::is_none")]
    backfill: Option<Value>,
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    ApiError::new(400, "invalid_segment", format!("{field}: {reason}")).with_errors(vec![
        ErrorItem {
            index: None,
            field: field.to_owned(),
            reason,
        },
    ])
}

fn body_of(
    raw: Result<Json<SegmentBody>, axum::extract::rejection::JsonRejection>,
) -> Result<SegmentBody, ApiError> {
    raw.map(|Json(b)| b)
        .map_err(|e| ApiError::new(400, "invalid_json", e.body_text()))
}

/// The definition of a request, checked: text or tree (exactly one), parsed, within limits.
fn definition_of(body: &SegmentBody) -> Result<Expr, ApiError> {
    match (&body.definition, &body.tree) {
        (Some(text), None) => parse(text).map_err(|e| invalid("definition", e.to_string())),
        (None, Some(tree)) => {
            let expr: Expr =
                serde_json::from_value(tree.clone()).map_err(|e| invalid("tree", e.to_string()))?;
            // The tree goes through the same checks as text (types, `item` scope, limits).
            parse(&print(&expr)).map_err(|e| invalid("tree", format!("as text, {e}")))
        }
        (Some(_), Some(_)) => Err(invalid(
            "definition",
            "give the definition as text or as a tree, not both",
        )),
        (None, None) => Err(invalid(
            "definition",
            "is required (or tree, its JSON form)",
        )),
    }
}

/// Every segment of the workspace, parsed, by name.
fn parsed(all: &[DefinitionRecord]) -> HashMap<String, Expr> {
    all.iter()
        .filter_map(|s| parse(&s.definition).ok().map(|e| (s.name.clone(), e)))
        .collect()
}

/// Checks the name and the segments a definition refers to (they exist; no cycle back to this one).
fn check_references(
    name: &str,
    expr: &Expr,
    all: &[DefinitionRecord],
    own_id: Option<&str>,
) -> Result<(), ApiError> {
    if name.trim().is_empty() || name.chars().count() > 200 {
        return Err(invalid("name", "must be 1 to 200 characters"));
    }
    if all
        .iter()
        .any(|s| s.name == name && Some(s.id.as_str()) != own_id)
    {
        return Err(invalid(
            "name",
            format!("a segment named {name:?} exists already"),
        ));
    }
    let defs = parsed(all);
    let mut stack: Vec<String> = expr.references().into_iter().map(str::to_owned).collect();
    let mut seen = HashSet::new();
    while let Some(r) = stack.pop() {
        if r == name {
            return Err(invalid(
                "definition",
                format!("refers back to {name:?} itself through `in segment`"),
            ));
        }
        match defs.get(&r) {
            None => {
                return Err(invalid(
                    "definition",
                    format!("refers to an unknown segment {r:?}"),
                ))
            }
            Some(e) if seen.insert(r.clone()) => {
                stack.extend(e.references().into_iter().map(str::to_owned))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn view(record: DefinitionRecord) -> Result<SegmentView, ApiError> {
    let tree = parse(&record.definition).map_err(|e| {
        tracing::error!(error = %e, "a stored segment definition does not parse");
        ApiError::new(500, "internal", "internal error; it has been logged")
    })?;
    Ok(SegmentView {
        record,
        tree,
        backfill: None,
    })
}

async fn all_segments(store: &Store, ws: WorkspaceKey) -> Result<Vec<DefinitionRecord>, ApiError> {
    let store = store.clone();
    blocking(move || store.definitions(ws, DefinitionKind::Segment)).await
}

async fn one_segment(
    store: &Store,
    ws: WorkspaceKey,
    id: &str,
) -> Result<DefinitionRecord, ApiError> {
    let (store, key) = (store.clone(), id.to_owned());
    blocking(move || store.definition(ws, DefinitionKind::Segment, &key))
        .await?
        .ok_or_else(|| {
            ApiError::new(
                404,
                "segment_not_found",
                format!("no segment has the id {id:?}"),
            )
        })
}

/// `POST /v1/segments`
pub(crate) async fn create(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<SegmentBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<SegmentView>), ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let body = body_of(body)?;
    let expr = definition_of(&body)?;
    let name = body
        .name
        .clone()
        .ok_or_else(|| invalid("name", "is required"))?;
    let all = all_segments(&state.store, ws).await?;
    check_references(&name, &expr, &all, None)?;
    let id = seam_store::workspace::random_token("seg_", 16).map_err(ApiError::from_store)?;
    state
        .store
        .define(
            ws,
            DefinitionKind::Segment,
            &id,
            name.trim(),
            &print(&expr),
            state.clock.now_ms(),
        )
        .await
        .map_err(ApiError::from_store)?;
    Ok((
        StatusCode::CREATED,
        Json(view(one_segment(&state.store, ws, &id).await?)?),
    ))
}

/// `GET /v1/segments`
pub(crate) async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let views: Vec<SegmentView> = all_segments(&state.store, ws)
        .await?
        .into_iter()
        .map(view)
        .collect::<Result<_, _>>()?;
    Ok(Json(serde_json::json!({ "segments": views })))
}

/// `GET /v1/segments/{id}`
pub(crate) async fn get(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<SegmentView>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let mut v = view(one_segment(&state.store, ws, &id).await?)?;
    let store = state.store.clone();
    let (profiles, pending) = blocking(move || store.evaluation_progress(ws)).await?;
    v.backfill =
        Some(serde_json::json!({"profiles": profiles, "pending": pending, "done": pending == 0}));
    Ok(Json(v))
}

/// `PUT /v1/segments/{id}`
pub(crate) async fn update(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Result<Json<SegmentBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<SegmentView>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let current = one_segment(&state.store, ws, &id).await?;
    let body = body_of(body)?;
    let expr = definition_of(&body)?;
    let name = body.name.clone().unwrap_or(current.name);
    let all = all_segments(&state.store, ws).await?;
    check_references(&name, &expr, &all, Some(&id))?;
    state
        .store
        .define(
            ws,
            DefinitionKind::Segment,
            &id,
            name.trim(),
            &print(&expr),
            state.clock.now_ms(),
        )
        .await
        .map_err(ApiError::from_store)?;
    Ok(Json(view(one_segment(&state.store, ws, &id).await?)?))
}

/// `DELETE /v1/segments/{id}`: refused while another segment refers to it.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let current = one_segment(&state.store, ws, &id).await?;
    let all = all_segments(&state.store, ws).await?;
    let users: Vec<String> = all
        .iter()
        .filter(|s| {
            parse(&s.definition).is_ok_and(|e| e.references().contains(&current.name.as_str()))
        })
        .map(|s| s.name.clone())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            409,
            "segment_in_use",
            format!("segments {users:?} refer to this one; change them first"),
        ));
    }
    state
        .store
        .delete_definition(ws, DefinitionKind::Segment, &id, state.clock.now_ms())
        .await
        .map_err(ApiError::from_store)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The workspace's definitions, evaluated at one instant.
struct Membership {
    defs: Library,
    now: i64,
}

impl Membership {
    fn explain(&self, e: &Expr, data: &PersonData) -> Explanation {
        self.defs
            .explain(e, &data.traits, &data.identities, &data.events, self.now)
    }
}

async fn membership(state: &AppState, ws: WorkspaceKey) -> Result<Membership, ApiError> {
    Ok(Membership {
        defs: Library::new(parsed(&all_segments(&state.store, ws).await?)),
        now: state.clock.now_ms(),
    })
}

/// How long a preview evaluates before it answers with an estimate, unless asked for the exact count.
const PREVIEW_BUDGET: std::time::Duration = std::time::Duration::from_secs(5);

/// `POST /v1/segments/preview?exact=`: the count and a sample for a definition not saved yet — exact over
/// every live profile when that takes under five seconds or `exact=true` asks for it, else an estimate from
/// blocks of profiles spread over them all.
pub(crate) async fn preview(
    State(state): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Result<Json<SegmentBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let exact = match q.get("exact").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(query_error("exact", "must be true or false")),
    };
    let body = body_of(body)?;
    let expr = definition_of(&body)?;
    let all = all_segments(&state.store, ws).await?;
    check_references(
        body.name.as_deref().unwrap_or("\u{0}preview"),
        &expr,
        &all,
        None,
    )?;
    let m = membership(&state, ws).await?;
    let store = state.store.clone();
    let text = print(&expr);
    let budget = (!exact).then_some(PREVIEW_BUDGET);
    let p = blocking(move || store.preview(ws, &expr, &m.defs, m.now, budget)).await?;
    Ok(Json(serde_json::json!({
        "definition": text,
        "count": p.count,
        "estimate": p.estimate(),
        "complete": p.complete,
        "sample": p.sample,
        "profiles_evaluated": p.profiles_evaluated,
        "profiles": p.profiles,
    })))
}

/// `GET /v1/segments/{id}/members?limit=&after=`: as kept current by the projector.
pub(crate) async fn members(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let segment = one_segment(&state.store, ws, &id).await?;
    let limit = match q.get("limit").map(|s| s.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1_000).contains(&n) => n,
        Some(_) => {
            return Err(query_error(
                "limit",
                "must be a whole number from 1 to 1000",
            ))
        }
    };
    let after = match q.get("after").filter(|s| !s.is_empty()) {
        None => 0,
        Some(s) => ProfileId::parse(s)
            .map_err(|_| query_error("after", "must be the `next` of a previous page"))?
            .created_seq(),
    };
    let store = state.store.clone();
    let members = blocking(move || store.members(ws, &segment.id, after, limit)).await?;
    let next = if members.len() >= limit {
        members.last().cloned()
    } else {
        None
    };
    Ok(Json(
        serde_json::json!({ "members": members, "next": next }),
    ))
}

fn query_error(field: &str, reason: &str) -> ApiError {
    ApiError::new(400, "invalid_query", format!("{field} {reason}")).with_errors(vec![ErrorItem {
        index: None,
        field: field.into(),
        reason: reason.into(),
    }])
}

async fn person_of(
    state: &AppState,
    ws: WorkspaceKey,
    reference: &str,
) -> Result<(ProfileId, PersonData), ApiError> {
    let r = parse_reference(reference, state)?;
    let store = state.store.clone();
    blocking(move || match store.resolve(ws, &r)? {
        Some(id) => Ok(Some((id.clone(), store.person(ws, &id)?))),
        None => Ok(None),
    })
    .await?
    .ok_or_else(|| {
        ApiError::new(
            404,
            "profile_not_found",
            format!("no profile is known as {reference:?}"),
        )
    })
}

/// `GET /v1/profiles/{reference}/segments`: the segments the profile is in, as kept current by the projector.
pub(crate) async fn of_profile(
    State(state): State<AppState>,
    Path(reference): Path<String>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let r = parse_reference(&reference, &state)?;
    let store = state.store.clone();
    let found = blocking(move || match store.resolve(ws, &r)? {
        Some(id) => Ok(Some((id.clone(), store.memberships_of(ws, &id)?))),
        None => Ok(None),
    })
    .await?;
    let (id, memberships) = found.ok_or_else(|| {
        ApiError::new(
            404,
            "profile_not_found",
            format!("no profile is known as {reference:?}"),
        )
    })?;
    let names: HashMap<String, String> = all_segments(&state.store, ws)
        .await?
        .into_iter()
        .map(|s| (s.id, s.name))
        .collect();
    let member_of: Vec<Value> = memberships
        .into_iter()
        .map(|(seg, since)| serde_json::json!({"id": seg, "name": names.get(&seg), "since": since}))
        .collect();
    Ok(Json(
        serde_json::json!({ "profile": id, "segments": member_of }),
    ))
}

/// `GET /v1/segments/{id}/explain/{reference}`: why a profile is or is not a member, condition by condition.
pub(crate) async fn explain_for(
    State(state): State<AppState>,
    Path((id, reference)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let ws = auth::for_management(&state, &headers)?;
    let segment = one_segment(&state.store, ws, &id).await?;
    let (profile, data) = person_of(&state, ws, &reference).await?;
    let m = membership(&state, ws).await?;
    let expr = parse(&segment.definition).map_err(|e| invalid("definition", e.to_string()))?;
    let why = m.explain(&expr, &data);
    Ok(Json(serde_json::json!({
        "segment": segment.id,
        "profile": profile,
        "member": why.result,
        "explanation": why,
    })))
}

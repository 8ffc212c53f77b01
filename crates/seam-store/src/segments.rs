//! Segment definitions and the data a segment is evaluated on.
//!
//! A definition is an event in the log (`segment_defined`, `segment_deleted`), so the segments table is a
//! projection like any other and a rebuild restores it. Evaluation reads a person's traits, identifiers and
//! track events from the projections and the log.

use rusqlite::{params, OptionalExtension};
use seam_audiences::{Expr, Library, PersonEvent};
use seam_core::clock::format_rfc3339;
use seam_core::{Event, EventType, Millis, ProfileId};
use seam_profiles::ProfileState;
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::backfill::{self, Budget, PROFILES_PER_STEP};
pub use crate::backfill::{Preview, PREVIEW_SAMPLE};
use crate::process::key;
use crate::read::{identities_of, parse_state, state_of};
use crate::{LogRow, Store, StoreError, WorkspaceKey};

/// A person's segments for the API. The index is named: without statistics SQLite's planner walks every
/// membership of the workspace for it (the `since` column is not in the index).
pub(crate) const MEMBERSHIPS_OF: &str =
    "SELECT segment, since FROM p.memberships INDEXED BY memberships_by_profile
     WHERE ws = ?1 AND profile = ?2 ORDER BY segment";

/// A stored definition: a segment or computed trait (in canonical text), a template or a journey (as JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DefinitionRecord {
    pub id: String,
    pub name: String,
    pub definition: String,
    pub version: i64,
    pub created_at: String,
    pub updated_at: String,
    /// A journey's `draft`, `active` or `paused`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
}

/// What a segment is evaluated on for one person.
#[derive(Debug, Clone, Default)]
pub struct PersonData {
    pub traits: Map<String, Value>,
    pub identities: Vec<(String, String)>,
    pub events: Vec<PersonEvent>,
}

/// Which kind of definition: both are events in the log and tables in the projections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DefinitionKind {
    Segment,
    ComputedTrait,
    Template,
    Journey,
}

impl DefinitionKind {
    fn table(self) -> &'static str {
        match self {
            Self::Segment => "segments",
            Self::ComputedTrait => "computed_trait_defs",
            Self::Template => "templates",
            Self::Journey => "journeys",
        }
    }

    fn columns(self) -> &'static str {
        match self {
            Self::Journey => "id, name, definition, version, created_at, updated_at, status",
            _ => "id, name, definition, version, created_at, updated_at, NULL",
        }
    }

    fn events(self) -> (EventType, EventType) {
        match self {
            Self::Segment => (EventType::SegmentDefined, EventType::SegmentDeleted),
            Self::ComputedTrait => (
                EventType::ComputedTraitDefined,
                EventType::ComputedTraitDeleted,
            ),
            Self::Template => (EventType::TemplateDefined, EventType::TemplateDeleted),
            Self::Journey => (EventType::JourneyDefined, EventType::JourneyDeleted),
        }
    }
}

impl Store {
    /// (live profiles, profiles still queued for evaluation) in the workspace: how far a backfill has got.
    pub fn evaluation_progress(&self, ws: WorkspaceKey) -> Result<(i64, i64), StoreError> {
        self.with_reader(|c| {
            let profiles = c
                .prepare_cached(
                    "SELECT COUNT(*) FROM p.profiles WHERE ws = ?1 AND merged_into IS NULL",
                )?
                .query_row([ws.0], |r| r.get(0))?;
            // Queued one by one (a computed trait, due timers), and the rest of a segment's backfill.
            let pending = c
                .prepare_cached(
                    "SELECT (SELECT COUNT(*) FROM p.pending_evaluations WHERE ws = ?1)
                          + (SELECT COUNT(*) FROM p.profiles WHERE ws = ?1 AND merged_into IS NULL
                             AND profile > (SELECT MIN(after) FROM p.pending_backfills WHERE ws = ?1))",
                )?
                .query_row([ws.0], |r| r.get(0))?;
            Ok((profiles, pending))
        })
    }

    /// Every definition of a kind in the workspace, by name.
    pub fn definitions(
        &self,
        ws: WorkspaceKey,
        kind: DefinitionKind,
    ) -> Result<Vec<DefinitionRecord>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(&format!(
                "SELECT {} FROM p.{} WHERE ws = ?1 ORDER BY name, id",
                kind.columns(),
                kind.table()
            ))?;
            let rows = stmt.query_map([ws.0], record)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn definition(
        &self,
        ws: WorkspaceKey,
        kind: DefinitionKind,
        id: &str,
    ) -> Result<Option<DefinitionRecord>, StoreError> {
        self.with_reader(|c| {
            Ok(c.prepare_cached(&format!(
                "SELECT {} FROM p.{} WHERE ws = ?1 AND id = ?2",
                kind.columns(),
                kind.table()
            ))?
            .query_row(params![ws.0, id], record)
            .optional()?)
        })
    }

    /// Creates or replaces a definition: a `segment_defined` / `computed_trait_defined` event in the log.
    /// Resolves once it is applied (memberships and values follow as profiles are evaluated).
    pub async fn define(
        &self,
        ws: WorkspaceKey,
        kind: DefinitionKind,
        id: &str,
        name: &str,
        definition: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let props = json!({"id": id, "name": name, "definition": definition});
        self.append_definition(ws, kind.events().0, id, props, now)
            .await
    }

    /// Activates or pauses a journey: a `journey_status` event in the log.
    pub async fn set_journey_status(
        &self,
        ws: WorkspaceKey,
        id: &str,
        status: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        let props = json!({ "id": id, "status": status });
        self.append_definition(ws, EventType::JourneyStatus, id, props, now)
            .await
    }

    /// Deletes a definition: a `segment_deleted` / `computed_trait_deleted` event in the log.
    pub async fn delete_definition(
        &self,
        ws: WorkspaceKey,
        kind: DefinitionKind,
        id: &str,
        now: Millis,
    ) -> Result<(), StoreError> {
        self.append_definition(ws, kind.events().1, id, json!({ "id": id }), now)
            .await
    }

    async fn append_definition(
        &self,
        ws: WorkspaceKey,
        kind: EventType,
        id: &str,
        props: Value,
        now: Millis,
    ) -> Result<(), StoreError> {
        let message_id = format!(
            "$seam:{}:{id}:{}",
            kind.as_str(),
            crate::workspace::random_token("", 12)?
        );
        let event = Event::system(
            message_id,
            kind,
            now,
            props.as_object().cloned().unwrap_or_default(),
        );
        let json = serde_json::to_string(&event)?;
        self.append(ws, vec![LogRow::new(event, json)]).await?;
        self.caught_up().await;
        Ok(())
    }

    /// Members of a segment after `after` (a profile key), in profile order, as the projector keeps them.
    pub fn members(
        &self,
        ws: WorkspaceKey,
        segment: &str,
        after: i64,
        limit: usize,
    ) -> Result<Vec<ProfileId>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT profile FROM p.memberships WHERE ws = ?1 AND segment = ?2 AND profile > ?3
                 ORDER BY profile LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![ws.0, segment, after, limit as i64], |r| {
                r.get::<_, i64>(0)
            })?;
            Ok(rows
                .map(|r| r.map(ProfileId::from_seq))
                .collect::<Result<_, _>>()?)
        })
    }

    /// The segments a profile is in, as the projector keeps them: (segment id, since).
    pub fn memberships_of(
        &self,
        ws: WorkspaceKey,
        profile: &ProfileId,
    ) -> Result<Vec<(String, String)>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(MEMBERSHIPS_OF)?;
            let rows = stmt.query_map(params![ws.0, key(profile)], |r| {
                Ok((r.get::<_, String>(0)?, format_rfc3339(r.get(1)?)))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// What `expr` would hold at `now` over the live profiles of the workspace (the segments it refers to
    /// looked up in `library`): evaluated a block of profiles at a time, as a backfill reads them, in one read
    /// transaction, until every profile is done or it has taken `time`.
    pub fn preview(
        &self,
        ws: WorkspaceKey,
        expr: &Expr,
        library: &Library,
        now: Millis,
        time: Option<std::time::Duration>,
    ) -> Result<Preview, StoreError> {
        let budget = Budget {
            keys: PROFILES_PER_STEP as i64,
            time,
        };
        self.with_reader(|c| {
            backfill::preview(c, backfill::READER, ws.0, expr, library, now, budget)
        })
    }

    /// A live profile's traits, identifiers and track events.
    pub fn person(&self, ws: WorkspaceKey, profile: &ProfileId) -> Result<PersonData, StoreError> {
        self.with_reader(|c| person_data(c, "p", "main", ws, key(profile)))
    }
}

/// What a segment is evaluated on, read through `c`, where `proj` and `log` name the schemas of
/// projections.db and seam.db.
pub(crate) fn person_data(
    c: &rusqlite::Connection,
    proj: &str,
    log: &str,
    ws: WorkspaceKey,
    k: i64,
) -> Result<PersonData, StoreError> {
    let mut data = person_profile(c, proj, ws, k)?;
    data.events = track_events(c, proj, log, ws, k, 0)?
        .into_iter()
        .map(|(_, e)| e)
        .collect();
    Ok(data)
}

/// A person's traits (computed ones under `computed`) and identities; no events.
pub(crate) fn person_profile(
    c: &rusqlite::Connection,
    proj: &str,
    ws: WorkspaceKey,
    k: i64,
) -> Result<PersonData, StoreError> {
    let state = state_of(c, proj, ws, k)?;
    person_with(c, proj, ws, k, state)
}

/// Like [`person_profile`], for a profile that exists and was not merged away (`None` otherwise): the
/// profile's row is read once for both.
pub(crate) fn live_person_profile(
    c: &rusqlite::Connection,
    proj: &str,
    ws: WorkspaceKey,
    k: i64,
) -> Result<Option<PersonData>, StoreError> {
    let row: Option<(bool, Option<String>)> = c
        .prepare_cached(&format!(
            "SELECT merged_into IS NULL, state FROM {proj}.profiles WHERE ws = ?1 AND profile = ?2"
        ))?
        .query_row(params![ws.0, k], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match row {
        Some((true, state)) => Ok(Some(person_with(c, proj, ws, k, parse_state(state)?)?)),
        _ => Ok(None),
    }
}

/// The rest of what [`person_profile`] reads, given the profile's state.
fn person_with(
    c: &rusqlite::Connection,
    proj: &str,
    ws: WorkspaceKey,
    k: i64,
    state: ProfileState,
) -> Result<PersonData, StoreError> {
    let identities = identities_of(c, proj, ws, k)?;
    let mut traits = state.into_trait_values();
    let computed = computed_traits_of(c, proj, ws, k)?;
    if !computed.is_empty() {
        traits.insert("computed".to_owned(), Value::Object(computed));
    }
    Ok(PersonData {
        traits,
        identities,
        events: Vec::new(),
    })
}

/// A person's track events after log position `after` from their timeline, in time order, each with its log
/// position.
pub(crate) fn track_events(
    c: &rusqlite::Connection,
    proj: &str,
    log: &str,
    ws: WorkspaceKey,
    k: i64,
    after: i64,
) -> Result<Vec<(i64, PersonEvent)>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT t.seq, e.body FROM {proj}.timeline t JOIN {log}.events e ON e.seq = t.seq
         WHERE t.ws = ?1 AND t.profile = ?2 AND t.seq > ?3 AND t.track IS NOT 0 AND e.type = 'track'
         ORDER BY t.ts, t.seq"
    ))?;
    let mut events = Vec::new();
    let rows = stmt.query_map(params![ws.0, k, after], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
    })?;
    for row in rows {
        let (seq, body) = row?;
        events.push((seq, tracked(&body)?));
    }
    Ok(events)
}

/// What evaluation reads of a stored track event; the rest (context, identifiers) is skipped unparsed.
pub(crate) fn tracked(body: &str) -> Result<PersonEvent, StoreError> {
    #[derive(serde::Deserialize)]
    struct Tracked {
        #[serde(default)]
        event: String,
        timestamp: Millis,
        #[serde(default)]
        properties: Map<String, Value>,
    }
    let e: Tracked = serde_json::from_str(body)?;
    Ok(PersonEvent {
        name: e.event,
        at: e.timestamp,
        properties: e.properties,
    })
}

/// Like [`tracked`], with only the properties `keep` accepts (given the event's name and the property's)
/// parsed; the others are skipped as raw text.
pub(crate) fn tracked_keeping(
    body: &str,
    keep: impl Fn(&str, &str) -> bool,
) -> Result<PersonEvent, StoreError> {
    #[derive(serde::Deserialize)]
    struct Tracked<'a> {
        #[serde(default)]
        event: String,
        timestamp: Millis,
        #[serde(default, borrow)]
        properties:
            std::collections::BTreeMap<std::borrow::Cow<'a, str>, &'a serde_json::value::RawValue>,
    }
    let e: Tracked<'_> = serde_json::from_str(body)?;
    let mut properties = Map::new();
    for (k, v) in e.properties {
        if keep(&e.event, &k) {
            properties.insert(k.into_owned(), serde_json::from_str(v.get())?);
        }
    }
    Ok(PersonEvent {
        name: e.event,
        at: e.timestamp,
        properties,
    })
}

/// A profile's computed trait values, by name.
pub(crate) fn computed_traits_of(
    c: &rusqlite::Connection,
    proj: &str,
    ws: WorkspaceKey,
    k: i64,
) -> Result<Map<String, Value>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT name, value FROM {proj}.computed_traits WHERE ws = ?1 AND profile = ?2"
    ))?;
    let rows = stmt.query_map(params![ws.0, k], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut out = Map::new();
    for row in rows {
        let (name, value) = row?;
        out.insert(name, serde_json::from_str(&value)?);
    }
    Ok(out)
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<DefinitionRecord> {
    Ok(DefinitionRecord {
        id: r.get(0)?,
        name: r.get(1)?,
        definition: r.get(2)?,
        version: r.get(3)?,
        created_at: format_rfc3339(r.get(4)?),
        updated_at: format_rfc3339(r.get(5)?),
        status: r.get(6)?,
    })
}

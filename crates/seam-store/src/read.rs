//! Queries on the projections: a profile by id or by identifier, and a person's timeline.

use rusqlite::{params, Connection, OptionalExtension};
use seam_core::clock::format_rfc3339;
use seam_core::{Event, Identifier, Millis, ProfileId, Seq};
use seam_profiles::ProfileState;
use serde::Serialize;
use serde_json::{Map, Value};

use crate::process::key;
use crate::{Store, StoreError, WorkspaceKey};

/// How a profile is named in a URL: its id, or one of its identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProfileRef {
    Id(ProfileId),
    Identifier(Identifier),
}

/// A profile as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileView {
    pub id: ProfileId,
    pub identities: Vec<Identifier>,
    pub traits: Map<String, Value>,
    /// Values of the workspace's computed traits, by name.
    pub computed_traits: Map<String, Value>,
    pub first_seen: Option<String>,
    pub last_seen: Option<String>,
    pub event_count: u64,
    /// Profiles that were merged into this one.
    pub merged_from: Vec<ProfileId>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelineEntry {
    #[serde(rename = "type")]
    pub kind: String,
    pub event: Option<String>,
    pub timestamp: String,
    pub received_at: String,
    pub message_id: String,
    pub source: Option<String>,
    pub channel: Option<String>,
    pub properties: Map<String, Value>,
    #[serde(skip_serializing_if = "Map::is_empty")]
    pub traits: Map<String, Value>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TimelinePage {
    pub events: Vec<TimelineEntry>,
    /// Pass as `before` for the next (older) page; absent on the last page.
    pub next: Option<String>,
}

/// A position in a timeline: the page continues with entries older than this.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub ts: Millis,
    pub seq: Seq,
}

impl Cursor {
    pub fn encode(self) -> String {
        format!("{}.{}", self.ts, self.seq)
    }
    pub fn parse(s: &str) -> Option<Self> {
        let (ts, seq) = s.split_once('.')?;
        Some(Self {
            ts: ts.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

impl Store {
    /// The live profile a reference names (following merges), if any.
    pub fn resolve(
        &self,
        ws: WorkspaceKey,
        r: &ProfileRef,
    ) -> Result<Option<ProfileId>, StoreError> {
        self.with_reader(|c| resolve(c, ws, r))
    }

    pub fn profile(
        &self,
        ws: WorkspaceKey,
        r: &ProfileRef,
    ) -> Result<Option<ProfileView>, StoreError> {
        self.with_reader(|c| {
            let Some(id) = resolve(c, ws, r)? else { return Ok(None) };
            let k = key(&id);
            let state = state_of(c, "p", ws, k)?;
            let identities = identities_of(c, "p", ws, k)?
                .into_iter()
                .map(|(t, v)| {
                    let kind = seam_core::IdentifierType::parse(&t).map_err(StoreError::Corrupt)?;
                    Ok(Identifier::new(kind, v))
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            let mut stmt = c.prepare_cached(
                "SELECT profile FROM p.profiles WHERE ws = ?1 AND merged_into = ?2 ORDER BY profile",
            )?;
            let merged_from = stmt
                .query_map(params![ws.0, k], |r| r.get::<_, i64>(0))?
                .map(|row| row.map(ProfileId::from_seq))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(Some(ProfileView {
                id,
                identities,
                traits: state.trait_values(),
                computed_traits: crate::segments::computed_traits_of(c, "p", ws, k)?,
                first_seen: state.first_seen.map(format_rfc3339),
                last_seen: state.last_seen.map(format_rfc3339),
                event_count: state.event_count,
                merged_from,
            }))
        })
    }

    /// A page of a profile's timeline, newest first.
    pub fn timeline(
        &self,
        ws: WorkspaceKey,
        profile: &ProfileId,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<TimelinePage, StoreError> {
        self.with_reader(|c| {
            let before = before.unwrap_or(Cursor {
                ts: Millis::MAX,
                seq: Seq::MAX,
            });
            let mut stmt = c.prepare_cached(
                "SELECT t.ts, t.seq, e.body FROM p.timeline t JOIN events e ON e.seq = t.seq
                 WHERE t.ws = ?1 AND t.profile = ?2 AND (t.ts, t.seq) < (?3, ?4)
                 ORDER BY t.ts DESC, t.seq DESC LIMIT ?5",
            )?;
            let rows: Vec<(Millis, Seq, String)> = stmt
                .query_map(
                    params![ws.0, key(profile), before.ts, before.seq, limit as i64 + 1],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )?
                .collect::<Result<_, _>>()?;
            let more = rows.len() > limit;
            let mut events = Vec::with_capacity(limit.min(rows.len()));
            let mut last = None;
            for (ts, seq, body) in rows.into_iter().take(limit) {
                let e: Event = serde_json::from_str(&body)?;
                events.push(TimelineEntry {
                    kind: e.kind.as_str().to_owned(),
                    event: e.event,
                    timestamp: format_rfc3339(e.timestamp),
                    received_at: format_rfc3339(e.received_at),
                    message_id: e.message_id,
                    source: e.source,
                    channel: e.channel,
                    properties: e.properties,
                    traits: e.traits,
                });
                last = Some(Cursor { ts, seq });
            }
            Ok(TimelinePage {
                events,
                next: if more { last.map(Cursor::encode) } else { None },
            })
        })
    }
}

/// A live profile's state (empty for a profile that has none yet). `proj` names the schema of projections.db
/// on this connection (`p` on readers, `main` on the projector's).
pub(crate) fn state_of(
    c: &Connection,
    proj: &str,
    ws: WorkspaceKey,
    k: i64,
) -> Result<ProfileState, StoreError> {
    let state: Option<String> = c
        .prepare_cached(&format!(
            "SELECT state FROM {proj}.profiles WHERE ws = ?1 AND profile = ?2"
        ))?
        .query_row(params![ws.0, k], |r| r.get(0))
        .optional()?
        .flatten();
    parse_state(state)
}

/// A profile's state from its stored form (none stored: the empty state).
pub(crate) fn parse_state(state: Option<String>) -> Result<ProfileState, StoreError> {
    Ok(match state {
        Some(s) => serde_json::from_str(&s)?,
        None => ProfileState::default(),
    })
}

/// A profile's identifiers as `(type, value)`, ordered.
pub(crate) fn identities_of(
    c: &Connection,
    proj: &str,
    ws: WorkspaceKey,
    k: i64,
) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT type, value FROM {proj}.identities WHERE ws = ?1 AND profile = ?2 ORDER BY type, value"
    ))?;
    let rows = stmt.query_map(params![ws.0, k], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn resolve(
    c: &Connection,
    ws: WorkspaceKey,
    r: &ProfileRef,
) -> Result<Option<ProfileId>, StoreError> {
    let found: Option<i64> = match r {
        ProfileRef::Id(id) => c
            .query_row(
                "SELECT COALESCE(merged_into, profile) FROM p.profiles WHERE ws = ?1 AND profile = ?2",
                params![ws.0, key(id)],
                |r| r.get(0),
            )
            .optional()?,
        ProfileRef::Identifier(i) => c
            .query_row(
                "SELECT profile FROM p.identities WHERE ws = ?1 AND type = ?2 AND value = ?3",
                params![ws.0, i.kind.as_str(), i.value],
                |r| r.get(0),
            )
            .optional()?,
    };
    Ok(found.map(ProfileId::from_seq))
}

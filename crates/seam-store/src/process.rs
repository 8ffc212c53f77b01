//! Applying the log to the projections, one event at a time, in log order: identity, profile state, timeline.
//!
//! The same [`Processor`] runs live (in the projector thread) and in `seam rebuild`, so a rebuilt projection is
//! the live one by construction. Seam's own events (merges, identity conflicts) are decided here and written to
//! the `outbox` table in the same transaction; the log writer appends them to the log with message ids derived
//! from their cause, so a replay that decides them again finds them already there. When such an event comes back
//! through the log, it goes on the timeline and leaves the outbox.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use seam_core::{
    Event, EventKind, EventType, Identifier, IdentifierRules, IdentifierType, ProfileId, Seq,
};
use seam_identity::{alias_previous, resolve, IdentityView, Resolution, ResolveError};
use seam_profiles::ProfileState;
use serde_json::{json, Map, Value};

use crate::outbox::{Emitted, Pending};
use crate::StoreError;

/// Entries kept in each cache before it is emptied (the caches only save reads; the database is the truth).
/// A cached profile state takes about 2 KB (its traits as maps), an identifier's owner about 150 bytes: at
/// these bounds the caches stay under about 550 MB however many people there are.
const STATES_CACHED: usize = 200_000;
const OWNERS_CACHED: usize = 1_000_000;
/// A workspace with at most this many identifiers has them all read into the owners' cache when it is first
/// needed, so that an identifier not in the cache is known to be new without a read (half the cache's bound,
/// so that it has room to grow).
const OWNERS_READ_WHOLE: usize = OWNERS_CACHED / 2;

/// What a merge does in SQL, each statement taking (workspace, loser, survivor): the loser's scheduling state
/// goes, and everything of theirs follows the survivor.
const MERGE_STATEMENTS: &[&str] = &[
    // The index is named: SQLite's planner otherwise walks every membership of the workspace.
    "DELETE FROM memberships INDEXED BY memberships_by_profile WHERE ws = ?1 AND profile = ?2 AND ?3 = ?3",
    "DELETE FROM pending_evaluations WHERE ws = ?1 AND profile = ?2 AND ?3 = ?3",
    "DELETE FROM segment_timers WHERE ws = ?1 AND profile = ?2 AND ?3 = ?3",
    "DELETE FROM computed_traits WHERE ws = ?1 AND profile = ?2 AND ?3 = ?3",
    // The survivor's digest is made again from the joined timeline when next evaluated.
    "DELETE FROM digests WHERE ws = ?1 AND profile IN (?2, ?3)",
    "UPDATE identities SET profile = ?3 WHERE ws = ?1 AND profile = ?2",
    "UPDATE timeline SET profile = ?3 WHERE ws = ?1 AND profile = ?2",
    // The person's journey runs follow them (the anonymous visitor's cart reminder goes on once
    // they log in).
    "UPDATE journey_runs SET profile = ?3 WHERE ws = ?1 AND run IN
     (SELECT run FROM journey_runs INDEXED BY journey_runs_by_profile WHERE ws = ?1 AND profile = ?2)",
    "UPDATE pending_journey_events SET profile = ?3 WHERE ws = ?1 AND profile = ?2",
    "UPDATE messages SET profile = ?3 WHERE ws = ?1 AND key IN
     (SELECT key FROM messages INDEXED BY messages_by_profile WHERE ws = ?1 AND profile = ?2)",
    "UPDATE profiles SET merged_into = ?3, state = NULL WHERE ws = ?1 AND profile = ?2",
    // Found through the index first: with the indexed column in SET, SQLite would scan the workspace.
    "UPDATE profiles SET merged_into = ?3 WHERE ws = ?1 AND profile IN
     (SELECT profile FROM profiles WHERE ws = ?1 AND merged_into = ?2)",
];

/// The text of property `key` of `props`, or "" when it is missing or not text.
pub(crate) fn text<'a>(props: &'a Map<String, Value>, key: &str) -> &'a str {
    props.get(key).and_then(Value::as_str).unwrap_or_default()
}

/// The integer key a profile is stored under: the log position of the event that created it.
pub(crate) fn key(p: &ProfileId) -> i64 {
    p.created_seq()
}

/// The key of the person a system event is of (its `profile_id` property), if it names one.
pub(crate) fn profile_of(props: &Map<String, Value>) -> Option<i64> {
    ProfileId::parse(text(props, "profile_id"))
        .ok()
        .map(|id| key(&id))
}

pub(crate) struct Processor {
    rules: HashMap<i64, Arc<IdentifierRules>>,
    /// Profile states read or written recently; written back for those in `dirty` by `flush`.
    states: HashMap<(i64, i64), ProfileState>,
    dirty: HashSet<(i64, i64)>,
    /// Who holds an identifier (`None`: nobody), per workspace. Only the processor changes identities, so the
    /// cache stays exact; it is dropped whenever a transaction rolls back.
    owners: HashMap<i64, Owners>,
    /// A workspace's identifiers are read whole into `owners` when there are at most this many.
    owners_read_whole: usize,
    /// System events decided since the last `take_emitted`.
    emitted: Vec<Emitted>,
    /// System events that came back through the log (and left the outbox) since the last `take_emitted`.
    returned: usize,
    /// The outbox's rows: every system event decided and not yet back through the log.
    outbox: Pending,
    /// Timeline entries (workspace, profile, time, log position, whether a track event) of this transaction,
    /// written by `flush`.
    timeline: Vec<(i64, i64, i64, Seq, bool)>,
    /// Membership decisions are made for events after this log position (older ones are replayed).
    decide_after: Seq,
    /// Whether each workspace has any segment or computed trait (then touched profiles are evaluated).
    has_segments: HashMap<i64, bool>,
    /// Live profiles the events of this transaction touched in workspaces with segments: evaluated (or, in a
    /// backlog, queued) before it commits (see `decide::decide_touched`).
    touched: BTreeMap<(i64, i64), Touched>,
    /// The last track event queued in `touched` (its text is then needed to evaluate the person).
    last_track_queued: Seq,
    /// Whether a segment or computed trait was defined or deleted since the last `take_redefined`.
    redefined: bool,
    /// Whether each workspace has an active journey (then events are queued for the journeys).
    has_journeys: HashMap<i64, bool>,
    /// Whether each workspace has an active date-triggered journey (then trait changes are planned).
    has_date_journeys: HashMap<i64, bool>,
}

/// A profile touched in this transaction, to be evaluated against its segments before the commit.
#[derive(Debug, Default)]
pub(crate) struct Touched {
    /// The person's latest track event before this transaction (`ProfileState::last_track_seq`): a digest
    /// made up to it has seen every earlier event, and then `track` is all it lacks.
    pub before: Seq,
    /// Log positions of the track events applied to the person in this transaction.
    pub track: Vec<Seq>,
}

/// Whether the workspace has something (`sql` answers for `?1` = ws), remembered in `cache` until the
/// definitions change.
fn workspace_has(
    cache: &mut HashMap<i64, bool>,
    conn: &Connection,
    ws: i64,
    sql: &str,
) -> Result<bool, StoreError> {
    if let Some(&h) = cache.get(&ws) {
        return Ok(h);
    }
    let h: bool = conn.prepare_cached(sql)?.query_row([ws], |r| r.get(0))?;
    cache.insert(ws, h);
    Ok(h)
}

const DATE_JOURNEYS: &str =
    "SELECT EXISTS (SELECT 1 FROM journeys WHERE ws = ?1 AND status = 'active'
    AND json_extract(definition, '$.trigger.date') IS NOT NULL)";

/// Who holds each identifier of a workspace, as far as read or written (`None`: nobody).
#[derive(Default)]
struct Owners {
    by_id: HashMap<Identifier, Option<ProfileId>>,
    /// Every identifier of the workspace is in `by_id`: one that is not is held by nobody.
    whole: bool,
}

impl Owners {
    /// The workspace's identifiers, read whole when there are at most `up_to` of them (counted that far
    /// only), else none yet.
    fn read(conn: &Connection, ws: i64, up_to: usize) -> rusqlite::Result<Self> {
        let count: usize = conn
            .prepare_cached(
                "SELECT COUNT(*) FROM (SELECT 1 FROM identities WHERE ws = ?1 LIMIT ?2)",
            )?
            .query_row(params![ws, up_to.saturating_add(1) as i64], |r| r.get(0))?;
        if count > up_to {
            return Ok(Self::default());
        }
        let mut by_id = HashMap::with_capacity(count);
        let mut stmt =
            conn.prepare_cached("SELECT type, value, profile FROM identities WHERE ws = ?1")?;
        let mut rows = stmt.query([ws])?;
        while let Some(r) = rows.next()? {
            let kind = IdentifierType::parse(r.get_ref(0)?.as_str()?)
                .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
            by_id.insert(
                Identifier::new(kind, r.get::<_, String>(1)?),
                Some(ProfileId::from_seq(r.get(2)?)),
            );
        }
        Ok(Self { by_id, whole: true })
    }
}

struct SqlView<'c> {
    conn: &'c Connection,
    ws: i64,
    owners: &'c mut Owners,
}

impl IdentityView for SqlView<'_> {
    type Error = rusqlite::Error;

    fn owner(&mut self, id: &Identifier) -> rusqlite::Result<Option<ProfileId>> {
        if let Some(known) = self.owners.by_id.get(id) {
            return Ok(known.clone());
        }
        if self.owners.whole {
            return Ok(None);
        }
        let found = self
            .conn
            .prepare_cached(
                "SELECT profile FROM identities WHERE ws = ?1 AND type = ?2 AND value = ?3",
            )?
            .query_row(params![self.ws, id.kind.as_str(), id.value], |r| {
                r.get::<_, i64>(0)
            })
            .optional()?
            .map(ProfileId::from_seq);
        self.owners.by_id.insert(id.clone(), found.clone());
        Ok(found)
    }

    fn identities(&mut self, profile: &ProfileId) -> rusqlite::Result<Vec<Identifier>> {
        identities_of(self.conn, self.ws, key(profile))
    }
}

/// A `segment_entered` / `segment_exited` event from the log applied to the memberships.
fn apply_membership(conn: &Connection, ws: i64, event: &Event) -> Result<(), StoreError> {
    let field = |k: &str| text(&event.properties, k);
    let Some(profile) = profile_of(&event.properties) else {
        return Ok(());
    };
    if event.kind == EventType::SegmentEntered {
        conn.prepare_cached("INSERT OR REPLACE INTO memberships (ws, segment, profile, since) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ws, field("segment_id"), profile, event.timestamp])?;
    } else {
        conn.prepare_cached(
            "DELETE FROM memberships WHERE ws = ?1 AND segment = ?2 AND profile = ?3",
        )?
        .execute(params![ws, field("segment_id"), profile])?;
    }
    Ok(())
}

/// Creates or replaces a segment or computed trait (`table`) from its `…_defined` event (`id`, `name`,
/// `definition`).
fn define(conn: &Connection, table: &str, ws: i64, event: &Event) -> Result<(), StoreError> {
    let field = |k: &str| text(&event.properties, k);
    let (id, name, definition) = (field("id"), field("name"), field("definition"));
    conn.prepare_cached(&format!(
        "INSERT INTO {table} (ws, id, name, definition, version, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5)
         ON CONFLICT (ws, id) DO UPDATE SET name = excluded.name, definition = excluded.definition,
             version = version + 1, updated_at = excluded.updated_at"
    ))?
    .execute(params![ws, id, name, definition, event.timestamp])?;
    Ok(())
}

/// A template or journey saved, deleted, activated or paused.
fn apply_journey_definition(conn: &Connection, ws: i64, event: &Event) -> Result<(), StoreError> {
    let field = |k: &str| text(&event.properties, k);
    let id = field("id");
    match event.kind {
        EventType::TemplateDefined => define(conn, "templates", ws, event)?,
        EventType::TemplateDeleted => {
            conn.prepare_cached("DELETE FROM templates WHERE ws = ?1 AND id = ?2")?
                .execute(params![ws, id])?;
        }
        EventType::JourneyDefined => {
            define(conn, "journeys", ws, event)?;
            // A journey deleted and saved again under its id goes on counting versions: runs of the old one
            // keep theirs.
            conn.prepare_cached(
                "UPDATE journeys SET version = (SELECT MAX(version) + 1 FROM journey_versions WHERE ws = ?1 AND id = ?2)
                 WHERE ws = ?1 AND id = ?2 AND version = 1
                   AND EXISTS (SELECT 1 FROM journey_versions WHERE ws = ?1 AND id = ?2)",
            )?
            .execute(params![ws, id])?;
            conn.prepare_cached(
                "INSERT OR REPLACE INTO journey_versions (ws, id, version, definition)
                 SELECT ws, id, version, definition FROM journeys WHERE ws = ?1 AND id = ?2",
            )?
            .execute(params![ws, id])?;
        }
        EventType::JourneyDeleted => {
            for sql in [
                "DELETE FROM journeys WHERE ws = ?1 AND id = ?2",
                "DELETE FROM journey_stats WHERE ws = ?1 AND journey = ?2",
                "DELETE FROM journey_schedules WHERE ws = ?1 AND journey = ?2",
                "DELETE FROM journey_dates WHERE ws = ?1 AND journey = ?2",
            ] {
                conn.prepare_cached(sql)?.execute(params![ws, id])?;
            }
        }
        _ => {
            conn.prepare_cached(
                "UPDATE journeys SET status = ?3, updated_at = ?4 WHERE ws = ?1 AND id = ?2",
            )?
            .execute(params![ws, id, field("status"), event.timestamp])?;
            if field("status") == "active" {
                crate::journeys::schedule_on_activation(conn, ws, id)?;
            }
        }
    }
    Ok(())
}

fn identities_of(conn: &Connection, ws: i64, profile: i64) -> rusqlite::Result<Vec<Identifier>> {
    let mut stmt =
        conn.prepare_cached("SELECT type, value FROM identities WHERE ws = ?1 AND profile = ?2")?;
    let rows = stmt.query_map(params![ws, profile], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    rows.map(|row| {
        let (t, v) = row?;
        let kind = IdentifierType::parse(&t)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        Ok(Identifier::new(kind, v))
    })
    .collect()
}

impl Processor {
    pub(crate) fn new(rules: HashMap<i64, IdentifierRules>) -> Self {
        Self {
            rules: rules.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(),
            states: HashMap::new(),
            dirty: HashSet::new(),
            owners: HashMap::new(),
            owners_read_whole: OWNERS_READ_WHOLE,
            emitted: Vec::new(),
            returned: 0,
            outbox: Pending::default(),
            timeline: Vec::new(),
            decide_after: Seq::MAX,
            has_segments: HashMap::new(),
            touched: BTreeMap::new(),
            last_track_queued: 0,
            redefined: false,
            has_journeys: HashMap::new(),
            has_date_journeys: HashMap::new(),
        }
    }

    /// From which log position on this processor queues profiles for live membership decisions.
    pub(crate) fn decide_after(&mut self, seq: Seq) {
        self.decide_after = seq;
    }

    /// Whether the event at `seq` is decided on live (a system event there was decided by this projection).
    pub(crate) fn decides(&self, seq: Seq) -> bool {
        seq > self.decide_after
    }

    /// Marks a live profile for segment evaluation in this transaction, when the workspace has segments and
    /// the event is live. `before` is the person's latest track event before this one.
    fn queue_evaluation(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        profile: i64,
        before: Seq,
        track: bool,
    ) -> Result<(), StoreError> {
        if seq <= self.decide_after {
            return Ok(());
        }
        let has = workspace_has(
            &mut self.has_segments,
            conn,
            ws,
            "SELECT EXISTS (SELECT 1 FROM segments WHERE ws = ?1)
                 OR EXISTS (SELECT 1 FROM computed_trait_defs WHERE ws = ?1)",
        )?;
        if has {
            let t = self.touched.entry((ws, profile)).or_insert(Touched {
                before,
                track: Vec::new(),
            });
            if track {
                t.track.push(seq);
                self.last_track_queued = seq;
            }
        }
        Ok(())
    }

    /// The profiles touched since the last call, to evaluate before the transaction commits.
    pub(crate) fn take_touched(&mut self) -> BTreeMap<(i64, i64), Touched> {
        std::mem::take(&mut self.touched)
    }

    /// Whether the track event at `seq`, just applied, was queued for its person's evaluation in this
    /// transaction (which then reads its text).
    pub(crate) fn queued_track(&self, seq: Seq) -> bool {
        self.last_track_queued == seq
    }

    /// How many profiles this transaction touched in workspaces with segments.
    pub(crate) fn touched_count(&self) -> usize {
        self.touched.len()
    }

    /// Whether a segment or computed trait was defined or deleted since the last call.
    pub(crate) fn take_redefined(&mut self) -> bool {
        std::mem::take(&mut self.redefined)
    }

    /// Queues a live event of a profile for the journeys, when the workspace has a journey that runs or ran
    /// (a paused journey's runs in flight still see goals, awaited events and outcomes).
    fn queue_for_journeys(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        profile: i64,
    ) -> Result<(), StoreError> {
        if seq <= self.decide_after {
            return Ok(());
        }
        let has = workspace_has(
            &mut self.has_journeys,
            conn,
            ws,
            "SELECT EXISTS (SELECT 1 FROM journeys WHERE ws = ?1 AND status != 'draft')",
        )?;
        if has {
            conn.prepare_cached(
                "INSERT OR IGNORE INTO pending_journey_events (seq, ws, profile) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![seq, ws, profile])?;
        }
        Ok(())
    }

    pub(crate) fn set_rules(&mut self, ws: i64, rules: IdentifierRules) {
        self.rules.insert(ws, Arc::new(rules));
    }

    /// Applies one event of the log.
    pub(crate) fn apply(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        event: &Event,
    ) -> Result<(), StoreError> {
        if event.kind.kind() == EventKind::System {
            return self.apply_system(conn, seq, ws, event);
        }
        if event.message_id.starts_with("$seam:") {
            // Seam's own received-kind event (traits a journey set): back from the log, out of the outbox.
            self.returned += usize::from(self.outbox.returned(ws, &event.message_id).is_some());
        }
        let rules = self.rules.entry(ws).or_default().clone();
        let mut view = SqlView {
            conn,
            ws,
            owners: self.owners(conn, ws)?,
        };
        let mut ids = event.identifiers.clone();
        if event.kind == EventType::Alias {
            if let Some(prev) = &event.previous_id {
                ids.push(alias_previous(&mut view, prev)?);
            }
        }
        let r = match resolve(&rules, &mut view, &ids, ProfileId::from_seq(seq)) {
            Ok(r) => r,
            Err(ResolveError::NoIdentifier) => {
                tracing::warn!(seq, "event has no identifier of a type this workspace uses; not placed on a profile");
                return Ok(());
            }
            Err(ResolveError::View(e)) => return Err(e.into()),
        };
        self.apply_resolution(conn, seq, ws, event, &r)?;
        let profile = key(&r.profile);
        let state = self.state(conn, ws, profile)?;
        let before = state.last_track_seq;
        state.apply(event, seq);
        let track = event.kind == EventType::Track;
        self.queue_evaluation(conn, seq, ws, profile, before, track)?;
        if event.kind == EventType::Track && event.event.as_deref() == Some("Message Bounced") {
            crate::deliveries::suppress_bounced(conn, ws, profile, event)?;
        }
        if event.kind == EventType::Track {
            self.queue_for_journeys(conn, seq, ws, profile)?;
        }
        if event.kind == EventType::Identify && !event.traits.is_empty() && seq > self.decide_after
        {
            // Traits changed: the person's date-triggered journeys are planned again (if there are any).
            if workspace_has(&mut self.has_date_journeys, conn, ws, DATE_JOURNEYS)? {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO pending_date_plans (ws, profile) VALUES (?1, ?2)",
                )?
                .execute(params![ws, profile])?;
            }
        }
        self.timeline.push((
            ws,
            profile,
            event.timestamp,
            seq,
            event.kind == EventType::Track,
        ));
        Ok(())
    }

    /// A system event back from the log: onto the timeline of the profile it concerns, out of the outbox.
    fn apply_system(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        event: &Event,
    ) -> Result<(), StoreError> {
        match event.kind {
            EventType::TemplateDefined
            | EventType::TemplateDeleted
            | EventType::JourneyDefined
            | EventType::JourneyDeleted
            | EventType::JourneyStatus => {
                self.has_journeys.remove(&ws);
                self.has_date_journeys.remove(&ws);
                apply_journey_definition(conn, ws, event)?;
                if event.kind == EventType::JourneyStatus && seq > self.decide_after {
                    // A date journey activated: everyone's dates are planned.
                    conn.prepare_cached(
                        "INSERT OR IGNORE INTO pending_date_plans (ws, profile)
                         SELECT ws, profile FROM profiles WHERE ws = ?1 AND merged_into IS NULL
                         AND EXISTS (SELECT 1 FROM journeys WHERE ws = ?1 AND id = ?2 AND status = 'active'
                             AND json_extract(definition, '$.trigger.date') IS NOT NULL)",
                    )?
                    .execute(params![
                        ws,
                        text(&event.properties, "id")
                    ])?;
                }
                return Ok(());
            }
            EventType::SegmentDefined
            | EventType::SegmentDeleted
            | EventType::ComputedTraitDefined
            | EventType::ComputedTraitDeleted => {
                let id = text(&event.properties, "id");
                match event.kind {
                    EventType::SegmentDefined => define(conn, "segments", ws, event)?,
                    EventType::ComputedTraitDefined => {
                        define(conn, "computed_trait_defs", ws, event)?
                    }
                    EventType::SegmentDeleted => {
                        crate::backfill::forget(conn, ws, id)?;
                        conn.prepare_cached("DELETE FROM segments WHERE ws = ?1 AND id = ?2")?
                            .execute(params![ws, id])?;
                        conn.prepare_cached(
                            "DELETE FROM memberships WHERE ws = ?1 AND segment = ?2",
                        )?
                        .execute(params![ws, id])?;
                    }
                    _ => {
                        let name: Option<String> = conn
                            .prepare_cached(
                                "SELECT name FROM computed_trait_defs WHERE ws = ?1 AND id = ?2",
                            )?
                            .query_row(params![ws, id], |r| r.get(0))
                            .optional()?;
                        conn.prepare_cached(
                            "DELETE FROM computed_trait_defs WHERE ws = ?1 AND id = ?2",
                        )?
                        .execute(params![ws, id])?;
                        conn.prepare_cached(
                            "DELETE FROM computed_traits WHERE ws = ?1 AND name = ?2",
                        )?
                        .execute(params![ws, name])?;
                    }
                }
                self.has_segments.remove(&ws);
                self.redefined = true;
                let defined = matches!(
                    event.kind,
                    EventType::SegmentDefined | EventType::ComputedTraitDefined
                );
                if event.kind == EventType::SegmentDefined && seq > self.decide_after {
                    // Backfill: the new definition over every live profile, a range at a time (`backfill`).
                    crate::backfill::queue(conn, ws, id)?;
                } else if defined && seq > self.decide_after {
                    // A computed trait: every live profile is evaluated again (segments may read it).
                    conn.prepare_cached(
                        "INSERT OR IGNORE INTO pending_evaluations (ws, profile)
                         SELECT ws, profile FROM profiles WHERE ws = ?1 AND merged_into IS NULL",
                    )?
                    .execute([ws])?;
                }
                return Ok(());
            }
            _ => {}
        }
        let decided_here = self.outbox.returned(ws, &event.message_id).is_some();
        self.returned += usize::from(decided_here);
        if matches!(
            event.kind,
            EventType::SegmentEntered | EventType::SegmentExited
        ) && !decided_here
        {
            // Decided before this projection existed (a rebuild): take the decision from the log.
            apply_membership(conn, ws, event)?;
        }
        if event.kind == EventType::JourneyStep && !decided_here {
            // Not in the outbox, yet after `decide_after`: only its person was read (`projector::slim_event`).
            let whole: Event;
            let event = if self.decides(seq) {
                let body: String = conn
                    .prepare_cached("SELECT body FROM log.events WHERE seq = ?1")?
                    .query_row([seq], |r| r.get(0))?;
                whole = serde_json::from_str(&body)?;
                &whole
            } else {
                event
            };
            let mut counts = crate::journeys::Counts::new();
            crate::journeys::apply_step(conn, ws, event, &mut counts)?;
            crate::journeys::write_counts(conn, &mut counts)?;
        }
        if event.kind == EventType::MessageDelivery {
            crate::deliveries::apply(conn, ws, event)?;
        }
        if event.kind == EventType::Suppression {
            crate::deliveries::apply_suppression(conn, ws, event)?;
        }
        let Some(target) = profile_of(&event.properties) else {
            return Ok(());
        };
        self.place(conn, seq, ws, event.kind, event.timestamp, target)
    }

    /// A system event decided by these projections, back from the log at `seq`: if the outbox holds it, it
    /// leaves the outbox and goes on the timeline of the person it is of, its body unread (the outbox's row
    /// knows the person, and everything else it decided was applied when it was decided). Whether it did.
    pub(crate) fn came_back(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        message_id: &str,
        kind: EventType,
        timestamp: i64,
    ) -> Result<bool, StoreError> {
        // Seam's received-kind events (traits a journey set) are applied like any other.
        if kind.kind() != EventKind::System {
            return Ok(false);
        }
        let Some(row) = self.outbox.returned(ws, message_id) else {
            return Ok(false);
        };
        self.returned += 1;
        if let Some(profile) = row.profile {
            self.place(conn, seq, ws, kind, timestamp, profile)?;
        }
        Ok(true)
    }

    /// Puts a system event of `profile` (or of whom it was merged into since) on the timeline.
    fn place(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        kind: EventType,
        timestamp: i64,
        profile: i64,
    ) -> Result<(), StoreError> {
        let current: Option<i64> = conn
            .prepare_cached("SELECT COALESCE(merged_into, profile) FROM profiles WHERE ws = ?1 AND profile = ?2")?
            .query_row(params![ws, profile], |r| r.get(0))
            .optional()?;
        if let Some(current) = current {
            self.timeline
                .push((ws, current, timestamp, seq, kind == EventType::Track));
            if matches!(
                kind,
                EventType::SegmentEntered | EventType::SegmentExited | EventType::JourneyEnter
            ) {
                self.queue_for_journeys(conn, seq, ws, current)?;
            }
        }
        Ok(())
    }

    fn apply_resolution(
        &mut self,
        conn: &Connection,
        seq: Seq,
        ws: i64,
        event: &Event,
        r: &Resolution,
    ) -> Result<(), StoreError> {
        let survivor = key(&r.profile);
        if r.created {
            conn.prepare_cached("INSERT INTO profiles (ws, profile, merged_into, state) VALUES (?1, ?2, NULL, NULL)")?
                .execute(params![ws, survivor])?;
            self.states.insert((ws, survivor), ProfileState::default());
            self.dirty.insert((ws, survivor));
        }
        for loser_id in &r.merge {
            let loser = key(loser_id);
            let theirs = std::mem::take(self.state(conn, ws, loser)?);
            self.states.remove(&(ws, loser));
            self.dirty.remove(&(ws, loser));
            self.state(conn, ws, survivor)?.absorb(theirs);
            let owners = self.owners(conn, ws)?;
            for id in identities_of(conn, ws, loser)? {
                owners.by_id.insert(id, Some(r.profile.clone()));
            }
            // The loser's entries of this transaction too are moved.
            self.write_timeline(conn)?;
            for sql in MERGE_STATEMENTS {
                conn.prepare_cached(sql)?
                    .execute(params![ws, loser, survivor])?;
            }
            let props = json!({"profile_id": r.profile, "merged_profile_id": loser_id, "caused_by": event.message_id});
            self.emit(
                conn,
                ws,
                seq,
                event,
                EventType::Merge,
                loser_id.as_str(),
                props,
            )?;
        }
        let owners = self.owners(conn, ws)?;
        for id in &r.attach {
            conn.prepare_cached(
                "INSERT INTO identities (ws, type, value, profile) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![ws, id.kind.as_str(), id.value, survivor])?;
            owners.by_id.insert(id.clone(), Some(r.profile.clone()));
        }
        if !r.conflicts.is_empty() {
            for c in &r.conflicts {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO identity_conflicts
                     (seq, ws, type, value, profile, held_by, limit_type, max_per_profile)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                )?
                .execute(params![
                    seq,
                    ws,
                    c.identifier.kind.as_str(),
                    c.identifier.value,
                    survivor,
                    c.held_by.as_ref().map(key),
                    c.limit_type.as_str(),
                    c.limit
                ])?;
            }
            let props = json!({"profile_id": r.profile, "conflicts": r.conflicts, "caused_by": event.message_id});
            self.emit(conn, ws, seq, event, EventType::IdentityConflict, "", props)?;
        }
        Ok(())
    }

    /// Decides a system event caused by the event at `cause`: into the outbox, to be appended to the log.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        conn: &Connection,
        ws: i64,
        cause: Seq,
        caused_by: &Event,
        kind: EventType,
        key: &str,
        properties: Value,
    ) -> Result<(), StoreError> {
        let message_id = format!("$seam:{}:{cause}:{key}", kind.as_str());
        if self.outbox.holds(ws, &message_id) {
            return Ok(());
        }
        let props: Map<String, Value> = properties.as_object().cloned().unwrap_or_default();
        let mut event = Event::system(message_id, kind, caused_by.timestamp, props);
        event.received_at = caused_by.received_at;
        let emitted = Emitted::to_outbox(conn, ws, event)?;
        self.outbox.written(&emitted);
        self.emitted.push(emitted);
        Ok(())
    }

    /// The outbox's rows as the projections hold them (when they are opened).
    pub(crate) fn outbox_holds(&mut self, pending: Pending) {
        self.outbox = pending;
    }

    /// System events a committed transaction wrote to the outbox other than through this processor (membership
    /// changes, journey steps).
    pub(crate) fn outbox_committed(&mut self, emitted: &[Emitted]) {
        self.outbox.committed(emitted);
    }

    /// After the commit: the system events decided since the last call (to hand to the log writer), and how
    /// many came back through the log.
    pub(crate) fn take_emitted(&mut self) -> (Vec<Emitted>, usize) {
        self.outbox.settle();
        (
            std::mem::take(&mut self.emitted),
            std::mem::take(&mut self.returned),
        )
    }

    /// Who holds the identifiers of workspace `ws` (read whole on first use when it has few enough).
    fn owners(&mut self, conn: &Connection, ws: i64) -> Result<&mut Owners, StoreError> {
        Ok(match self.owners.entry(ws) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(slot) => slot.insert(Owners::read(conn, ws, self.owners_read_whole)?),
        })
    }

    /// Reads a workspace's identifiers whole only when there are at most `n` (a test takes the other way).
    #[cfg(test)]
    pub(crate) fn read_owners_whole_up_to(&mut self, n: usize) {
        self.owners_read_whole = n;
    }

    /// The state of a live profile, loaded into the cache and marked for writing back.
    fn state(
        &mut self,
        conn: &Connection,
        ws: i64,
        p: i64,
    ) -> Result<&mut ProfileState, StoreError> {
        let k = (ws, p);
        self.dirty.insert(k);
        match self.states.entry(k) {
            Entry::Occupied(e) => Ok(e.into_mut()),
            Entry::Vacant(slot) => {
                let raw: Option<Option<String>> = conn
                    .prepare_cached("SELECT state FROM profiles WHERE ws = ?1 AND profile = ?2")?
                    .query_row(params![ws, p], |r| r.get(0))
                    .optional()?;
                let loaded = match raw {
                    Some(Some(json)) => serde_json::from_str(&json)?,
                    Some(None) => ProfileState::default(),
                    None => {
                        return Err(StoreError::Corrupt(format!(
                            "profile {p} is referenced but missing"
                        )))
                    }
                };
                Ok(slot.insert(loaded))
            }
        }
    }

    /// Writes the timeline entries gathered, in key order: nearby entries go into pages just visited, where
    /// one at a time, in log order, each went to another person's page (the inserts took a tenth of the
    /// projector's time; sorted, ingest applies about 5 % more events a second).
    fn write_timeline(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.timeline.sort_unstable();
        let mut stmt = conn.prepare_cached(
            "INSERT OR IGNORE INTO timeline (ws, profile, ts, seq, track) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        for (ws, profile, ts, seq, track) in self.timeline.drain(..) {
            stmt.execute(params![ws, profile, ts, seq, track])?;
        }
        Ok(())
    }

    /// Writes the timeline entries and every touched profile state. Call before committing, and before
    /// reading the timeline in the transaction.
    pub(crate) fn flush(&mut self, conn: &Connection) -> Result<(), StoreError> {
        self.write_timeline(conn)?;
        self.outbox.delete_returned(conn)?;
        let mut stmt =
            conn.prepare_cached("UPDATE profiles SET state = ?3 WHERE ws = ?1 AND profile = ?2")?;
        // In key order, like the timeline.
        let mut dirty: Vec<(i64, i64)> = self.dirty.drain().collect();
        dirty.sort_unstable();
        for k in dirty {
            let state = self.states.get(&k).expect("a dirty state is cached");
            stmt.execute(params![k.0, k.1, serde_json::to_string(state)?])?;
        }
        if self.states.len() > STATES_CACHED {
            self.states.clear();
        }
        if self.owners.values().map(|o| o.by_id.len()).sum::<usize>() > OWNERS_CACHED {
            self.owners.clear();
        }
        Ok(())
    }

    /// Forgets everything not committed (after a rolled-back transaction).
    pub(crate) fn discard(&mut self) {
        self.dirty.clear();
        self.states.clear();
        self.owners.clear();
        self.emitted.clear();
        self.returned = 0;
        self.outbox.undo();
        self.timeline.clear();
        self.has_segments.clear();
        self.touched.clear();
        self.last_track_queued = 0;
        self.redefined = false;
    }
}

#[cfg(test)]
mod tests {
    /// Each merge statement finds the loser's rows through an index on the person: a walk of the workspace on
    /// every merge costs milliseconds each on a large one. (SQLite 3.50, without statistics, walked every
    /// membership of the workspace for the first statement until its index was named.)
    #[test]
    fn merges_and_a_persons_segments_find_their_rows_through_indexes() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("projections.db");
        let mut conn = rusqlite::Connection::open(&file).unwrap();
        crate::schema::migrate(&mut conn, crate::schema::PROJECTION_MIGRATIONS).unwrap();
        // A workspace with people in twenty segments: the planner weighs what the tables hold.
        let tx = conn.transaction().unwrap();
        for profile in 0..4_000 {
            for segment in 0..15 {
                if (profile * 7 + segment * 13) % 5 == 0 {
                    tx.execute(
                        "INSERT INTO memberships (ws, segment, profile, since) VALUES (1, ?1, ?2, 0)",
                        rusqlite::params![format!("seg_{segment:016}"), profile * 31 + 5],
                    )
                    .unwrap();
                }
            }
        }
        tx.commit().unwrap();
        // The API reads with the projections attached as `p`.
        let reader = rusqlite::Connection::open_in_memory().unwrap();
        reader
            .execute("ATTACH DATABASE ?1 AS p", [file.to_str().unwrap()])
            .unwrap();
        let statements = super::MERGE_STATEMENTS
            .iter()
            .map(|sql| (&conn, *sql))
            .chain([(&reader, crate::segments::MEMBERSHIPS_OF)]);
        for (conn, sql) in statements {
            let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).unwrap();
            let args =
                rusqlite::params_from_iter([1, 2, 3].into_iter().take(stmt.parameter_count()));
            let plan: Vec<String> = stmt
                .query_map(args, |r| r.get::<_, String>(3))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            // The journeys' event queue is emptied by every pass, so it stays short.
            let scans: Vec<&String> = plan
                .iter()
                // A search on the workspace alone walks all of it, like a scan.
                .filter(|p| p.starts_with("SCAN") || p.ends_with("(ws=?)"))
                .filter(|p| !p.contains("pending_journey_events"))
                .collect();
            assert!(scans.is_empty(), "{sql}: {plan:?}");
        }
    }
}

//! Live segment membership: decided in the projector's transactions.
//!
//! The profiles that the events of a projection transaction touched (when their workspace has segments) are
//! evaluated in that same transaction, once its events are applied (`decide_touched`): their digests take the
//! transaction's own track events, and the decisions commit with the events that caused them. A backlog (more
//! than `IN_STEP` people in one transaction), a new or changed computed trait (every live profile) and a due
//! timer queue profiles in `pending_evaluations` instead, evaluated by the decision passes (`decide`). A new or
//! changed segment is evaluated over everyone by `backfill`, set-at-a-time.
//! Each change of membership is decided once: written to `memberships`, and as a `segment_entered` /
//! `segment_exited` event to the outbox in the same transaction, from where the log writer appends it. For each
//! profile the earliest instant at which time alone may change one of its segments is kept in `segment_timers`.

use std::collections::{BTreeMap, HashMap, HashSet};

use rusqlite::types::ValueRef;
use rusqlite::{params, Connection, OptionalExtension};
use seam_audiences::ast::Metric;
use seam_audiences::digest::{Digest, Needs};
use seam_audiences::{measure, parse, parse_metric, Expr, Library, Person, PersonEvent};
use seam_core::{EventType, Millis, Seq};

use crate::evaluator::{Evaluator, Key};
use crate::outbox::Emitted;
use crate::process::Touched;
use crate::segments::{live_person_profile, track_events, tracked};
use crate::{StoreError, WorkspaceKey};

/// How far a pass counts the work still queued: enough to report a backlog, bounded so that a pass costs
/// the same however long the queue (a backfill queues every profile). Five times a pass's 2,000 timers: counted
/// up to 100,000, the count took a twentieth of each due timer's firing.
pub(crate) const COUNTED_UP_TO: i64 = 10_000;

/// Most profiles evaluated in the transaction that applied their events; more (a backlog) are queued for
/// the decision passes, where a person touched again meanwhile is evaluated once for all.
pub(crate) const IN_STEP: usize = 2_000;

/// What one decision pass did.
#[derive(Default)]
pub(crate) struct Decided {
    pub emitted: Vec<Emitted>,
    /// Work still queued after this pass (profiles, events, due timers), each kind counted up to
    /// [`COUNTED_UP_TO`].
    pub remaining: i64,
    /// Profiles decided from what the evaluator found, and those it found for that had changed meanwhile (so
    /// left queued, to be evaluated again).
    pub apart: u64,
    pub again: u64,
}

pub(crate) struct Defs {
    pub library: Library,
    /// (id, name, definition) of each segment.
    pub segments: Vec<(String, String, Expr)>,
    /// (name, measure) of each computed trait.
    computed: Vec<(String, Metric)>,
    /// What they read of events, and its fingerprint.
    needs: Needs,
    needs_fp: i64,
}

pub(crate) fn load_defs(conn: &Connection, ws: i64) -> Result<Defs, StoreError> {
    let mut stmt =
        conn.prepare_cached("SELECT id, name, definition FROM segments WHERE ws = ?1 ORDER BY id")?;
    let rows = stmt.query_map([ws], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut segments = Vec::new();
    for row in rows {
        let (id, name, text) = row?;
        match parse(&text) {
            Ok(expr) => segments.push((id, name, expr)),
            Err(e) => {
                tracing::error!(error = %e, "a stored segment definition does not parse; skipped")
            }
        }
    }
    let library = Library::new(segments.iter().map(|(_, n, e)| (n.clone(), e.clone())));
    let mut stmt = conn.prepare_cached(
        "SELECT name, definition FROM computed_trait_defs WHERE ws = ?1 ORDER BY name",
    )?;
    let rows = stmt.query_map([ws], |r| {
        Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?))
    })?;
    let mut computed = Vec::new();
    for row in rows {
        let (name, text) = row?;
        match parse_metric(&text) {
            Ok(m) => computed.push((name, m)),
            Err(e) => {
                tracing::error!(error = %e, "a stored computed trait definition does not parse; skipped")
            }
        }
    }
    let needs = Needs::of(
        segments.iter().map(|(_, _, e)| e),
        computed.iter().map(|(_, m)| m),
    );
    Ok(Defs {
        library,
        segments,
        computed,
        needs_fp: needs.fingerprint(),
        needs,
    })
}

/// The track events applied to a person in the current transaction, for bringing their digest up to date
/// without reading them back from the timeline.
pub(crate) struct Fresh<'a> {
    /// The person's latest track event before them (see `process::Touched`).
    pub before: Seq,
    /// Log position and stored body of each.
    pub events: Vec<(Seq, &'a str)>,
}

/// The person's events that the definitions read: their digest brought up to date with the events applied
/// since it was made (or made from the whole timeline when missing, made for other definitions, or the person
/// merged), pruned to `now`. When the digest has seen every track event up to `fresh.before`, the fresh
/// events are all it lacks and the timeline is not read. Also returns the digest to store when it changed
/// (needs fingerprint, last log position seen, body).
#[allow(clippy::type_complexity)]
fn digest_events(
    conn: &Connection,
    d: &Defs,
    ws: i64,
    profile: i64,
    now: Millis,
    fresh: Option<Fresh<'_>>,
) -> Result<(Vec<PersonEvent>, Option<(i64, i64, Vec<u8>)>), StoreError> {
    if d.needs.is_empty() {
        return Ok((Vec::new(), None));
    }
    // A digest made for other definitions (or stored in an earlier form, whose fingerprints differ) is made
    // again: its body is not read. So is one that cannot be read: it holds nothing the timeline does not.
    let stored = conn
        .prepare_cached("SELECT needs, upto, body FROM digests WHERE ws = ?1 AND profile = ?2")?
        .query_row(params![ws, profile], |r| {
            let made_for: i64 = r.get(0)?;
            Ok(match r.get_ref(2)? {
                ValueRef::Blob(body) if made_for == d.needs_fp => {
                    Some((r.get::<_, i64>(1)?, Digest::from_bytes(body)))
                }
                _ => None,
            })
        })
        .optional()?
        .flatten();
    let (mut digest, mut upto): (Digest, i64) = match stored {
        Some((upto, Ok(digest))) => (digest, upto),
        Some((_, Err(e))) => {
            tracing::warn!(profile, error = %e, "a stored digest is unreadable; made again from the timeline");
            (Digest::default(), -1)
        }
        None => (Digest::default(), -1),
    };
    let fresh = match fresh {
        Some(f) if upto >= 0 && upto == f.before => {
            let mut events = f
                .events
                .into_iter()
                .map(|(seq, body)| Ok((seq, tracked(body)?)))
                .collect::<Result<Vec<_>, StoreError>>()?;
            // In the timeline's order, as `track_events` reads them.
            events.sort_by_key(|(seq, e)| (e.at, *seq));
            events
        }
        _ => track_events(conn, "main", "log", WorkspaceKey(ws), profile, upto.max(0))?,
    };
    let mut changed = upto < 0 || !fresh.is_empty();
    for (seq, e) in fresh {
        d.needs
            .admit(&mut digest, seq, &e.name, e.at, &e.properties);
        upto = upto.max(seq);
    }
    changed |= d.needs.prune(&mut digest, now);
    let store = match changed {
        true => Some((d.needs_fp, upto.max(0), digest.to_bytes())),
        false => None,
    };
    Ok((digest.into_person_events(), store))
}

/// Records changes of membership decided in one transaction (by evaluation or by a backfill).
pub(crate) struct Recorder<'t> {
    tx: &'t Connection,
    /// The instant the changes are decided at (each batch of the evaluator's has its own).
    now: Millis,
    /// The running count of decisions (part of each decision's message id).
    decisions: i64,
    emitted: Vec<Emitted>,
}

impl<'t> Recorder<'t> {
    pub(crate) fn new(tx: &'t Connection, now: Millis) -> Result<Self, StoreError> {
        let decisions = tx
            .prepare_cached("SELECT value FROM meta WHERE key = 'decisions'")?
            .query_row([], |r| r.get(0))?;
        Ok(Self {
            tx,
            now,
            decisions,
            emitted: Vec::new(),
        })
    }

    /// Stores the count of decisions; returns the events decided.
    pub(crate) fn finish(self) -> Result<Vec<Emitted>, StoreError> {
        self.tx
            .prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'decisions'")?
            .execute([self.decisions])?;
        Ok(self.emitted)
    }

    /// Records that `profile` entered (`member`) or left segment `id`: its membership row, and a
    /// `segment_entered` / `segment_exited` event in the outbox.
    pub(crate) fn change(
        &mut self,
        ws: i64,
        profile: i64,
        id: &str,
        name: &str,
        member: bool,
    ) -> Result<(), StoreError> {
        let (tx, now) = (self.tx, self.now);
        let kind = if member {
            tx.prepare_cached(
                "INSERT INTO memberships (ws, segment, profile, since) VALUES (?1, ?2, ?3, ?4)",
            )?
            .execute(params![ws, id, profile, now])?;
            EventType::SegmentEntered
        } else {
            tx.prepare_cached(
                "DELETE FROM memberships WHERE ws = ?1 AND segment = ?2 AND profile = ?3",
            )?
            .execute(params![ws, id, profile])?;
            EventType::SegmentExited
        };
        self.decisions += 1;
        // Unique across rebuilds too (a rebuilt projection starts counting again, later in time).
        let message_id = format!(
            "$seam:{}:{id}:{profile}:{now}:{}",
            kind.as_str(),
            self.decisions
        );
        self.emitted.push(Emitted::membership(
            tx,
            ws,
            kind,
            message_id,
            now,
            (id, name),
            profile,
        )?);
        Ok(())
    }
}

/// Decides memberships in one transaction: evaluates profiles at `now` and records each change.
struct Decider<'t> {
    tx: &'t Connection,
    now: Millis,
    defs: HashMap<i64, Defs>,
    out: Recorder<'t>,
}

impl<'t> Decider<'t> {
    fn new(tx: &'t Connection, now: Millis) -> Result<Self, StoreError> {
        Ok(Self {
            tx,
            now,
            defs: HashMap::new(),
            out: Recorder::new(tx, now)?,
        })
    }

    /// Evaluates one profile (nothing when it was merged away) against every segment and computed trait of its
    /// workspace, writes the changes and the person's next timer.
    fn evaluate(
        &mut self,
        ws: i64,
        profile: i64,
        fresh: Option<Fresh<'_>>,
    ) -> Result<(), StoreError> {
        if let std::collections::hash_map::Entry::Vacant(slot) = self.defs.entry(ws) {
            slot.insert(load_defs(self.tx, ws)?);
        }
        match assess(self.tx, &self.defs[&ws], ws, profile, self.now, fresh)? {
            Some(a) => a.write(self.tx, &mut self.out, ws, profile),
            None => Ok(()),
        }
    }
}

/// What evaluating a person at some instant found, before anything of it is written: read through any
/// connection (the projector's, or an evaluator's reading a snapshot of the projections), written by the
/// projector.
#[derive(Debug)]
pub(crate) struct Assessment {
    /// The digest to store, when it changed: (needs fingerprint, last log position seen, body).
    digest: Option<(i64, i64, Vec<u8>)>,
    /// Each computed trait's value (`None`: none).
    computed: Vec<(String, Option<serde_json::Value>)>,
    /// Segments whose membership changes: (id, name, member).
    changes: Vec<(String, String, bool)>,
    /// The earliest instant at which time alone may change one of them.
    next: Option<Millis>,
}

/// Whether the profile exists and was not merged away.
fn live(conn: &Connection, ws: i64, profile: i64) -> Result<bool, StoreError> {
    let live: Option<bool> = conn
        .prepare_cached("SELECT merged_into IS NULL FROM profiles WHERE ws = ?1 AND profile = ?2")?
        .query_row(params![ws, profile], |r| r.get(0))
        .optional()?;
    Ok(live == Some(true))
}

/// Evaluates one profile at `now` against every segment and computed trait of its workspace (`d`), reading
/// through `conn` only; `None` when the profile was merged away or is unknown.
pub(crate) fn assess(
    conn: &Connection,
    d: &Defs,
    ws: i64,
    profile: i64,
    now: Millis,
    fresh: Option<Fresh<'_>>,
) -> Result<Option<Assessment>, StoreError> {
    let Some(mut data) = live_person_profile(conn, "main", WorkspaceKey(ws), profile)? else {
        return Ok(None);
    };
    let (events, digest) = digest_events(conn, d, ws, profile, now, fresh)?;
    data.events = events;
    // Computed traits first: segments may use them as `trait computed.<name>`.
    let mut computed = Vec::with_capacity(d.computed.len());
    if !d.computed.is_empty() {
        let mut values = serde_json::Map::new();
        let person = Person {
            traits: &data.traits,
            identities: &data.identities,
            events: &data.events,
            in_segment: &|_| false,
        };
        for (name, m) in &d.computed {
            let value = measure(m, &person, now);
            if let Some(v) = &value {
                values.insert(name.clone(), v.clone());
            }
            computed.push((name.clone(), value));
        }
        data.traits
            .insert("computed".to_owned(), serde_json::Value::Object(values));
    }
    let current: HashSet<String> = conn
        .prepare_cached("SELECT segment FROM memberships WHERE ws = ?1 AND profile = ?2")?
        .query_map(params![ws, profile], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut changes = Vec::new();
    for (id, name, expr) in &d.segments {
        let member = d
            .library
            .evaluate(expr, &data.traits, &data.identities, &data.events, now);
        if member != current.contains(id) {
            changes.push((id.clone(), name.clone(), member));
        }
    }
    // When time alone may change one of them: the needs are those of every segment and computed trait.
    let next = d.needs.next_change(&data.events, now);
    Ok(Some(Assessment {
        digest,
        computed,
        changes,
        next,
    }))
}

impl Assessment {
    /// Writes what was found for `profile`: its digest, computed traits, the changes of membership (through
    /// `out`) and its next timer.
    fn write(
        self,
        tx: &Connection,
        out: &mut Recorder<'_>,
        ws: i64,
        profile: i64,
    ) -> Result<(), StoreError> {
        if let Some((needs, upto, body)) = self.digest {
            tx.prepare_cached(
                "INSERT OR REPLACE INTO digests (ws, profile, needs, upto, body) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![ws, profile, needs, upto, body])?;
        }
        for (name, value) in self.computed {
            match value {
                Some(v) => tx
                    .prepare_cached(
                        // Like the timer below: an unchanged value is not written again.
                        "INSERT INTO computed_traits (ws, profile, name, value) VALUES (?1, ?2, ?3, ?4)
                         ON CONFLICT (ws, profile, name) DO UPDATE SET value = excluded.value
                         WHERE value != excluded.value",
                    )?
                    .execute(params![ws, profile, name, serde_json::to_string(&v)?])?,
                None => tx
                    .prepare_cached(
                        "DELETE FROM computed_traits WHERE ws = ?1 AND profile = ?2 AND name = ?3",
                    )?
                    .execute(params![ws, profile, name])?,
            };
        }
        for (id, name, member) in self.changes {
            out.change(ws, profile, &id, &name, member)?;
        }
        match self.next {
            Some(due) => tx
                .prepare_cached(
                    // An unchanged timer (the usual case) is not written again.
                    "INSERT INTO segment_timers (ws, profile, due) VALUES (?1, ?2, ?3)
                     ON CONFLICT (ws, profile) DO UPDATE SET due = excluded.due WHERE due != excluded.due",
                )?
                .execute(params![ws, profile, due])?,
            None => tx
                .prepare_cached("DELETE FROM segment_timers WHERE ws = ?1 AND profile = ?2")?
                .execute(params![ws, profile])?,
        };
        Ok(())
    }
}

/// Evaluates up to `limit` queued profiles at `now` (those of a backlog, of a computed trait's backfill, of a
/// due timer) and records the membership changes. With an `evaluator`, the queued profiles are handed to it
/// instead, in batches (as many as it has room for), and what it found for the batches back since is written
/// here (a profile changed since its batch was handed out stays queued; the profiles of a batch that failed
/// are evaluated here, at `now`); `inline` evaluates the queued profiles here all the same (while a backfill
/// step, writing memberships over a range of profiles, may run between a batch's snapshot and its return).
/// Returns the profiles to hand out once this transaction has committed.
pub(crate) fn decide(
    conn: &mut Connection,
    now: Millis,
    limit: usize,
    mut evaluator: Option<&mut Evaluator>,
    inline: bool,
) -> Result<(Decided, Vec<Key>), StoreError> {
    // Most passes of a workspace without segments have nothing to decide: found out without a write
    // transaction, whose commit would cost a flush of the projections' WAL each pass.
    if evaluator.as_ref().is_none_or(|e| e.held() == 0) {
        let work: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM pending_evaluations)
                     OR EXISTS (SELECT 1 FROM segment_timers WHERE due <= ?1)",
            )?
            .query_row([now], |r| r.get(0))?;
        if !work {
            return Ok((Decided::default(), Vec::new()));
        }
    }
    let tx = crate::write_projections(conn)?;
    tx.prepare_cached(
        "INSERT OR IGNORE INTO pending_evaluations (ws, profile) SELECT ws, profile FROM segment_timers WHERE due <= ?1",
    )?
    .execute([now])?;
    tx.prepare_cached("DELETE FROM segment_timers WHERE due <= ?1")?
        .execute([now])?;
    let mut decider = Decider::new(&tx, now)?;
    let unqueue = |key: Key| -> Result<(), StoreError> {
        tx.prepare_cached("DELETE FROM pending_evaluations WHERE ws = ?1 AND profile = ?2")?
            .execute(params![key.0, key.1])?;
        Ok(())
    };
    let mut hand_out = Vec::new();
    let (mut apart, mut again, mut failed_here) = (0, 0, Vec::new());
    if let Some(ev) = evaluator.as_mut() {
        for batch in ev.take_back() {
            let failed = match &batch.outcome {
                Ok(_) => false,
                Err(e) => {
                    tracing::warn!(error = %e, "evaluating a batch failed; the projector evaluates it");
                    true
                }
            };
            if failed {
                for key in batch.profiles {
                    unqueue(key)?;
                    failed_here.push(key);
                }
                continue;
            }
            let stale: Vec<bool> = batch.profiles.iter().map(|k| ev.stale(&batch, k)).collect();
            let mut outcomes = batch.outcome.unwrap_or_default().into_iter();
            decider.out.now = batch.now;
            for (key, stale) in batch.profiles.into_iter().zip(stale) {
                let found = outcomes.next().flatten();
                if stale {
                    // Left queued, to be evaluated again from a current reading by a later batch: the projector
                    // does not spend its own thread on it now. (The commit that touched it also queued it, or
                    // decided it from its events; after a definition changed it is read again with the new one.)
                    again += 1;
                    continue;
                }
                unqueue(key)?;
                apart += 1;
                if let Some(a) = found {
                    // Merged away since the snapshot (a merge touches only the survivor): nothing of it is
                    // written.
                    if live(&tx, key.0, key.1)? {
                        a.write(&tx, &mut decider.out, key.0, key.1)?;
                    }
                }
            }
        }
    }
    decider.out.now = now;
    for (ws, profile) in failed_here {
        decider.evaluate(ws, profile, None)?;
    }
    // The profiles of batches still out are not queued twice, nor evaluated here meanwhile.
    let held = |k: &Key| evaluator.as_ref().is_some_and(|e| e.holds(k));
    let out = evaluator.as_ref().map_or(0, |e| e.held());
    let apart_from_here = evaluator.as_ref().filter(|e| e.running() && !inline);
    // As many batches as the evaluator threads have room for (two a thread): with only one, the batch a thread
    // evaluates while the projector writes the other would be missing whenever both came back to one pass.
    let take = match apart_from_here {
        None => limit,
        Some(ev) if ev.room() > 0 => ev.room() * crate::evaluator::BATCH,
        Some(_) => 0,
    };
    let rows: Vec<Key> = match take {
        0 => Vec::new(),
        _ => tx
            .prepare_cached("SELECT ws, profile FROM pending_evaluations LIMIT ?1")?
            .query_map([(take + out) as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?,
    };
    let queued = rows.into_iter().filter(|k| !held(k)).take(take);
    match apart_from_here {
        Some(ev) if ev.room() > 0 => hand_out = queued.collect(),
        Some(_) => {}
        None => {
            for (ws, profile) in queued {
                unqueue((ws, profile))?;
                decider.evaluate(ws, profile, None)?;
            }
        }
    }
    let emitted = decider.out.finish()?;
    let remaining: i64 = tx
        .prepare_cached("SELECT COUNT(*) FROM (SELECT 1 FROM pending_evaluations LIMIT ?1)")?
        .query_row([COUNTED_UP_TO], |r| r.get(0))?;
    tx.commit()?;
    let decided = Decided {
        emitted,
        remaining,
        apart,
        again,
    };
    Ok((decided, hand_out))
}

/// Evaluates at `now`, inside the transaction that applied their events, the profiles those events touched
/// (or, more than [`IN_STEP`] of them, queues them for the decision passes); `body` gives the stored body of an
/// event of that transaction by its log position.
pub(crate) fn decide_touched<'b>(
    tx: &Connection,
    now: Millis,
    touched: BTreeMap<(i64, i64), Touched>,
    body: impl Fn(Seq) -> Option<&'b str>,
) -> Result<Vec<Emitted>, StoreError> {
    if touched.is_empty() {
        return Ok(Vec::new());
    }
    if touched.len() > IN_STEP {
        let mut queue = tx.prepare_cached(
            "INSERT OR IGNORE INTO pending_evaluations (ws, profile) VALUES (?1, ?2)",
        )?;
        for (ws, profile) in touched.keys() {
            queue.execute(params![ws, profile])?;
        }
        return Ok(Vec::new());
    }
    let mut decider = Decider::new(tx, now)?;
    for ((ws, profile), t) in touched {
        let events = t
            .track
            .iter()
            .map(|&seq| {
                body(seq).map(|b| (seq, b)).ok_or_else(|| {
                    StoreError::Corrupt(format!("event {seq} is not in the transaction"))
                })
            })
            .collect::<Result<_, _>>()?;
        let fresh = Fresh {
            before: t.before,
            events,
        };
        decider.evaluate(ws, profile, Some(fresh))?;
    }
    decider.out.finish()
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use super::{digest_events, load_defs, Fresh};

    const DAY: i64 = 86_400_000;

    fn body(seq: i64) -> String {
        format!(
            r#"{{"event":"Viewed","timestamp":{},"properties":{{"sku":"s{seq}"}}}}"#,
            seq * DAY
        )
    }

    /// A person (profile 7 of workspace 1) with `on_timeline` track events in the log and on their timeline,
    /// a segment reading them, and a digest made up to event `digested`.
    fn person(dir: &std::path::Path, on_timeline: i64, digested: i64) -> Connection {
        let (log, conn) = crate::schema::test_files(dir);
        conn.execute(
            "INSERT INTO segments (ws, id, name, definition, version, created_at, updated_at)
             VALUES (1, 'seg_1', 'viewers', 'count of \"Viewed\" in last 30 days >= 1', 1, 0, 0)",
            [],
        )
        .unwrap();
        for seq in 1..=on_timeline {
            log.execute(
                "INSERT INTO events (seq, ws, message_id, type, name, ts, received_at, body)
                 VALUES (?1, 1, ?2, 'track', 'Viewed', ?3, ?3, ?4)",
                params![seq, format!("m{seq}"), seq * DAY, body(seq)],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO timeline (ws, profile, ts, seq) VALUES (1, 7, ?1, ?2)",
                params![seq * DAY, seq],
            )
            .unwrap();
        }
        let defs = load_defs(&conn, 1).unwrap();
        let mut digest = seam_audiences::digest::Digest::default();
        for seq in 1..=digested {
            defs.needs.admit(
                &mut digest,
                seq,
                "Viewed",
                seq * DAY,
                &serde_json::from_value(serde_json::json!({"sku": format!("s{seq}")})).unwrap(),
            );
        }
        conn.execute(
            "INSERT INTO digests (ws, profile, needs, upto, body) VALUES (1, 7, ?1, ?2, ?3)",
            params![defs.needs_fp, digested, digest.to_bytes()],
        )
        .unwrap();
        conn
    }

    fn times(conn: &Connection, fresh: Fresh<'_>) -> Vec<i64> {
        let defs = load_defs(conn, 1).unwrap();
        digest_events(conn, &defs, 1, 7, 10 * DAY, Some(fresh))
            .unwrap()
            .0
            .iter()
            .map(|e| e.at / DAY)
            .collect()
    }

    /// A digest that has seen every earlier track event of the person takes the transaction's own events and
    /// does not read the timeline (event 3 is not on it here, so only the fresh events can bring it).
    #[test]
    fn a_digest_up_to_date_takes_the_fresh_events() {
        let dir = tempfile::tempdir().unwrap();
        let conn = person(dir.path(), 2, 2);
        let third = body(3);
        let fresh = Fresh {
            before: 2,
            events: vec![(3, third.as_str())],
        };
        assert_eq!(times(&conn, fresh), [1, 2, 3]);
    }

    /// A digest behind the person (events applied while nothing read them, say, with the same definitions
    /// back later) is brought up to date from the timeline: the fresh events alone would miss event 2.
    #[test]
    fn a_digest_behind_the_person_reads_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let conn = person(dir.path(), 3, 1);
        let third = body(3);
        let fresh = Fresh {
            before: 2,
            events: vec![(3, third.as_str())],
        };
        assert_eq!(times(&conn, fresh), [1, 2, 3]);
    }

    /// A digest stored as JSON (before digests were compact bytes) or whose bytes cannot be read is made again
    /// from the timeline rather than trusted or failing the evaluation.
    #[test]
    fn a_digest_in_another_form_or_unreadable_is_made_again_from_the_timeline() {
        let dir = tempfile::tempdir().unwrap();
        let conn = person(dir.path(), 3, 2);
        let fresh = |third: &str| -> Vec<i64> {
            times(
                &conn,
                Fresh {
                    before: 2,
                    events: vec![(3, third)],
                },
            )
        };
        let third = body(3);
        for stored in [
            rusqlite::types::Value::Text(
                r#"{"events":[{"s":1,"t":86400000,"n":"Viewed"}]}"#.into(),
            ),
            rusqlite::types::Value::Blob(vec![1, 5, 0]),
        ] {
            conn.execute("UPDATE digests SET body = ?1", [&stored])
                .unwrap();
            assert_eq!(fresh(&third), [1, 2, 3], "{stored:?}");
        }
        let (_, store) =
            digest_events(&conn, &load_defs(&conn, 1).unwrap(), 1, 7, 10 * DAY, None).unwrap();
        let (_, upto, body) = store.expect("the digest made again is stored");
        assert_eq!(upto, 3);
        let made = seam_audiences::digest::Digest::from_bytes(&body).unwrap();
        assert_eq!(
            made.events.iter().map(|k| k.seq).collect::<Vec<_>>(),
            [1, 2, 3]
        );
    }
}

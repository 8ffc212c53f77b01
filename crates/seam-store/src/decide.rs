//! Live segment membership: the projector's second phase.
//!
//! Applying an event queues its profile in `pending_evaluations` (when the workspace has segments); a new or
//! changed definition queues every live profile (the backfill); a due timer queues its profile again. Here the
//! queued profiles are evaluated against every segment of their workspace, and each change of membership is
//! decided once: written to `memberships`, and as a `segment_entered` / `segment_exited` event to the outbox in
//! the same transaction, from where the log writer appends it. For each profile the earliest instant at which
//! time alone may change one of its segments is kept in `segment_timers`.

use std::collections::{HashMap, HashSet};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use seam_audiences::ast::Metric;
use seam_audiences::digest::{Digest, Needs};
use seam_audiences::{measure, parse, parse_metric, Expr, Library, Person, PersonEvent};
use seam_core::{Event, EventType, Millis, ProfileId};
use serde_json::json;

use crate::process::Emitted;
use crate::segments::{person_profile, track_events};
use crate::{StoreError, WorkspaceKey};

/// How far a pass counts the work still queued: enough to report a backlog, bounded so that a pass costs
/// the same however long the queue (a backfill queues every profile).
pub(crate) const COUNTED_UP_TO: i64 = 100_000;

/// What one decision pass did.
#[derive(Default)]
pub(crate) struct Decided {
    pub emitted: Vec<Emitted>,
    /// Work still queued after this pass (profiles, events, due timers), each kind counted up to
    /// [`COUNTED_UP_TO`].
    pub remaining: i64,
}

struct Defs {
    library: Library,
    /// (id, name, definition) of each segment.
    segments: Vec<(String, String, Expr)>,
    /// (name, measure) of each computed trait.
    computed: Vec<(String, Metric)>,
    /// What they read of events, and its fingerprint.
    needs: Needs,
    needs_fp: i64,
}

fn load_defs(conn: &Connection, ws: i64) -> Result<Defs, StoreError> {
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

/// The person's events that the definitions read: their digest brought up to date with the events applied
/// since it was made (or made from the whole timeline when missing, made for other definitions, or the person
/// merged), pruned to `now`.
fn digest_events(
    tx: &Connection,
    d: &Defs,
    ws: i64,
    profile: i64,
    now: Millis,
) -> Result<Vec<PersonEvent>, StoreError> {
    if d.needs.is_empty() {
        return Ok(Vec::new());
    }
    let stored: Option<(i64, i64, String)> = tx
        .prepare_cached("SELECT needs, upto, body FROM digests WHERE ws = ?1 AND profile = ?2")?
        .query_row(params![ws, profile], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .optional()?;
    let (mut digest, mut upto): (Digest, i64) = match stored {
        Some((made_for, upto, body)) if made_for == d.needs_fp => {
            (serde_json::from_str(&body)?, upto)
        }
        _ => (Digest::default(), -1),
    };
    let fresh = track_events(tx, "main", "log", WorkspaceKey(ws), profile, upto.max(0))?;
    let mut changed = upto < 0 || !fresh.is_empty();
    for (seq, e) in fresh {
        d.needs
            .admit(&mut digest, seq, &e.name, e.at, &e.properties);
        upto = upto.max(seq);
    }
    changed |= d.needs.prune(&mut digest, now);
    if changed {
        tx.prepare_cached(
            "INSERT OR REPLACE INTO digests (ws, profile, needs, upto, body) VALUES (?1, ?2, ?3, ?4, ?5)",
        )?
        .execute(params![ws, profile, d.needs_fp, upto.max(0), serde_json::to_string(&digest)?])?;
    }
    Ok(digest.person_events())
}

/// Evaluates up to `limit` queued profiles at `now` and records the membership changes.
pub(crate) fn decide(
    conn: &mut Connection,
    now: Millis,
    limit: usize,
) -> Result<Decided, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT OR IGNORE INTO pending_evaluations (ws, profile) SELECT ws, profile FROM segment_timers WHERE due <= ?1",
        [now],
    )?;
    tx.execute("DELETE FROM segment_timers WHERE due <= ?1", [now])?;
    let queued: Vec<(i64, i64)> = tx
        .prepare_cached("SELECT ws, profile FROM pending_evaluations LIMIT ?1")?
        .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut decisions: i64 =
        tx.query_row("SELECT value FROM meta WHERE key = 'decisions'", [], |r| {
            r.get(0)
        })?;
    let mut defs: HashMap<i64, Defs> = HashMap::new();
    let mut emitted = Vec::new();
    for (ws, profile) in queued {
        tx.prepare_cached("DELETE FROM pending_evaluations WHERE ws = ?1 AND profile = ?2")?
            .execute(params![ws, profile])?;
        let live: Option<bool> = tx
            .prepare_cached(
                "SELECT merged_into IS NULL FROM profiles WHERE ws = ?1 AND profile = ?2",
            )?
            .query_row(params![ws, profile], |r| r.get(0))
            .optional()?;
        if live != Some(true) {
            continue;
        }
        if let std::collections::hash_map::Entry::Vacant(slot) = defs.entry(ws) {
            slot.insert(load_defs(&tx, ws)?);
        }
        let d = &defs[&ws];
        let mut data = person_profile(&tx, "main", WorkspaceKey(ws), profile)?;
        data.events = digest_events(&tx, d, ws, profile, now)?;
        let mut next: Option<Millis> = None;
        let mut soonest = |c: Option<Millis>| {
            if let Some(c) = c {
                next = Some(next.map_or(c, |n: Millis| n.min(c)));
            }
        };
        // Computed traits first: segments may use them as `trait computed.<name>`.
        if !d.computed.is_empty() {
            let mut values = serde_json::Map::new();
            let person = Person {
                traits: &data.traits,
                identities: &data.identities,
                events: &data.events,
                in_segment: &|_| false,
            };
            for (name, m) in &d.computed {
                let (value, change) = measure(m, &person, now);
                soonest(change);
                match value {
                    Some(v) => {
                        tx.prepare_cached(
                            // Like the timer below: an unchanged value is not written again.
                            "INSERT INTO computed_traits (ws, profile, name, value) VALUES (?1, ?2, ?3, ?4)
                             ON CONFLICT (ws, profile, name) DO UPDATE SET value = excluded.value
                             WHERE value != excluded.value",
                        )?
                        .execute(params![ws, profile, name, v.to_string()])?;
                        values.insert(name.clone(), v);
                    }
                    None => {
                        tx.prepare_cached("DELETE FROM computed_traits WHERE ws = ?1 AND profile = ?2 AND name = ?3")?
                            .execute(params![ws, profile, name])?;
                    }
                }
            }
            data.traits
                .insert("computed".to_owned(), serde_json::Value::Object(values));
        }
        let current: HashSet<String> = tx
            .prepare_cached("SELECT segment FROM memberships WHERE ws = ?1 AND profile = ?2")?
            .query_map(params![ws, profile], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        for (id, name, expr) in &d.segments {
            let (member, change) =
                d.library
                    .evaluate(expr, &data.traits, &data.identities, &data.events, now);
            soonest(change);
            let kind = match (member, current.contains(id)) {
                (true, false) => {
                    tx.prepare_cached("INSERT INTO memberships (ws, segment, profile, since) VALUES (?1, ?2, ?3, ?4)")?
                        .execute(params![ws, id, profile, now])?;
                    EventType::SegmentEntered
                }
                (false, true) => {
                    tx.prepare_cached(
                        "DELETE FROM memberships WHERE ws = ?1 AND segment = ?2 AND profile = ?3",
                    )?
                    .execute(params![ws, id, profile])?;
                    EventType::SegmentExited
                }
                _ => continue,
            };
            decisions += 1;
            // Unique across rebuilds too (a rebuilt projection starts counting again, later in time).
            let message_id = format!("$seam:{}:{id}:{profile}:{now}:{decisions}", kind.as_str());
            let props = json!({"segment_id": id, "segment": name, "profile_id": ProfileId::from_seq(profile)});
            let event = Event::system(
                message_id,
                kind,
                now,
                props.as_object().cloned().unwrap_or_default(),
            );
            let body = serde_json::to_string(&event)?;
            tx.prepare_cached("INSERT INTO outbox (ws, message_id, body) VALUES (?1, ?2, ?3)")?
                .execute(params![ws, event.message_id, body])?;
            emitted.push(Emitted {
                ws,
                event,
                json: body,
            });
        }
        match next {
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
    }
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'decisions'",
        [decisions],
    )?;
    let remaining: i64 = tx.query_row(
        "SELECT COUNT(*) FROM (SELECT 1 FROM pending_evaluations LIMIT ?1)",
        [COUNTED_UP_TO],
        |r| r.get(0),
    )?;
    tx.commit()?;
    Ok(Decided { emitted, remaining })
}

//! Backfill: a new or changed segment evaluated over every live profile's history, a range of profiles at a
//! time.
//!
//! A step takes the next `limit` live profiles (in key order) of the oldest queued backfill and reads what
//! they are evaluated on set-at-a-time, in one transaction: their states, identities and computed traits by
//! range scans, and their track events through the timeline, looked up in the log in log order (neighbouring
//! events share pages) and parsed only when the segments read their name. Only the changed segment and the
//! segments that refer to it (directly or through others) are evaluated: every other membership is current
//! already. Each change is recorded as live decisions are (`decide::Recorder`), and a person's segment timer
//! is brought forward when the segment may change by time alone sooner. The digests are left as they are:
//! made for the former definitions, each is made again from the timeline when its person is next evaluated.
//! The cursor (`pending_backfills.after`) commits with the step's decisions, so a crash resumes the backfill
//! where it was.
//!
//! A preview (a definition counted before it is saved) reads the same way, on a reader connection in one read
//! transaction, and records nothing: blocks of profile keys taken in an order spread over them all, every
//! block or as many as its time allows (then the count is scaled to every live profile).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use seam_audiences::digest::{Digest, Needs};
use seam_audiences::{Expr, Library, PersonEvent};
use seam_core::clock::Stopwatch;
use seam_core::{Millis, ProfileId};
use seam_profiles::ProfileState;
use serde_json::{Map, Value};

use crate::decide::{load_defs, Decided, Recorder, COUNTED_UP_TO};
use crate::segments::tracked_keeping;
use crate::StoreError;

/// Profiles a backfill step evaluates at most: a step stays short, so new events wait little behind it.
pub(crate) const PROFILES_PER_STEP: usize = 5_000;

/// Queues the backfill of segment `id` from the first profile (an edit during a backfill starts it again).
pub(crate) fn queue(conn: &Connection, ws: i64, id: &str) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO pending_backfills (ws, segment, after) VALUES (?1, ?2, -1)
         ON CONFLICT (ws, segment) DO UPDATE SET after = -1",
    )?
    .execute(params![ws, id])?;
    Ok(())
}

/// Drops the backfill of a deleted segment.
pub(crate) fn forget(conn: &Connection, ws: i64, id: &str) -> Result<(), StoreError> {
    conn.prepare_cached("DELETE FROM pending_backfills WHERE ws = ?1 AND segment = ?2")?
        .execute(params![ws, id])?;
    Ok(())
}

/// Whether `e` refers to the segment `name`, directly or through the segments it refers to.
fn refers_to(library: &Library, e: &Expr, name: &str) -> bool {
    let mut stack = e.references();
    let mut seen = HashSet::new();
    while let Some(r) = stack.pop() {
        if r == name {
            return true;
        }
        if seen.insert(r) {
            if let Some(d) = library.get(r) {
                stack.extend(d.references());
            }
        }
    }
    false
}

/// `exprs` and every segment they refer to, directly or through others.
fn with_references<'l>(library: &'l Library, exprs: Vec<&'l Expr>) -> Vec<&'l Expr> {
    let mut out = exprs.clone();
    let mut stack: Vec<&str> = exprs.iter().flat_map(|e| e.references()).collect();
    let mut seen = HashSet::new();
    while let Some(r) = stack.pop() {
        if seen.insert(r) {
            if let Some(d) = library.get(r) {
                out.push(d);
                stack.extend(d.references());
            }
        }
    }
    out
}

/// One live profile of a range, as evaluation reads it.
struct Person {
    profile: i64,
    traits: Map<String, Value>,
    identities: Vec<(String, String)>,
    /// (log position, event) of each track event the segments read.
    events: Vec<(i64, PersonEvent)>,
}

impl Person {
    /// The person's events as evaluation at `now` sees them: through a digest of what `needs` keeps, as the
    /// live path holds them.
    fn digested(&mut self, needs: &Needs, now: Millis) -> Vec<PersonEvent> {
        let mut events = std::mem::take(&mut self.events);
        events.sort_by_key(|(seq, e)| (e.at, *seq));
        let mut digest = Digest::default();
        for (seq, e) in &events {
            needs.admit(&mut digest, *seq, &e.name, e.at, &e.properties);
        }
        needs.prune(&mut digest, now);
        digest.into_person_events()
    }
}

/// How a connection names the two databases: projections.db and seam.db (the log).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Schemas {
    proj: &'static str,
    log: &'static str,
}

/// The projector's connection: the projections are `main`, the log is attached as `log`.
const PROJECTOR: Schemas = Schemas {
    proj: "main",
    log: "log",
};

/// A reader's connection: the log is `main`, the projections are attached as `p`.
pub(crate) const READER: Schemas = Schemas {
    proj: "p",
    log: "main",
};

/// Members a preview names at most.
pub const PREVIEW_SAMPLE: usize = 10;

/// What a definition would hold now, counted over every live profile or, when time ran out first, over blocks
/// of profiles spread across them all.
#[derive(Debug, Clone, PartialEq)]
pub struct Preview {
    /// Members among the profiles evaluated.
    pub count: usize,
    /// Members found first (from the blocks evaluated first, spread over the profiles).
    pub sample: Vec<ProfileId>,
    pub profiles_evaluated: usize,
    /// Live profiles of the workspace.
    pub profiles: usize,
    /// Whether every live profile was evaluated (then `count` is exact).
    pub complete: bool,
}

impl Preview {
    /// The members expected over every live profile: `count` when complete, else scaled from the blocks
    /// evaluated.
    pub fn estimate(&self) -> usize {
        match (self.complete, self.profiles_evaluated) {
            (true, _) | (_, 0) => self.count,
            (false, n) => (self.count as f64 * self.profiles as f64 / n as f64).round() as usize,
        }
    }
}

/// How a preview goes through the profiles: blocks of `keys` consecutive profile keys (`keys` at least 1),
/// until every block is done or it has taken `time` (one block at least).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    pub keys: i64,
    pub time: Option<Duration>,
}

/// A step through `blocks` blocks that visits each once and spreads the first ones over all of them: the
/// number coprime with `blocks` nearest above 0.618 of it.
fn stride(blocks: i64) -> i64 {
    fn gcd(a: i64, b: i64) -> i64 {
        if b == 0 {
            a
        } else {
            gcd(b, a % b)
        }
    }
    let mut s = ((blocks as f64 * 0.618) as i64).max(1);
    while gcd(s, blocks) != 1 {
        s += 1;
    }
    s
}

/// Evaluates `expr` (segments it refers to are looked up in `library`) at `now` over the live profiles of
/// workspace `ws`, a block of profile keys at a time in an order spread over them all, in one read transaction:
/// what is counted is one state of the data however long it takes.
pub(crate) fn preview(
    c: &Connection,
    dbs: Schemas,
    ws: i64,
    expr: &Expr,
    library: &Library,
    now: Millis,
    budget: Budget,
) -> Result<Preview, StoreError> {
    let watch = Stopwatch::start();
    let tx = c.unchecked_transaction()?;
    let needs = Needs::of(with_references(library, vec![expr]), []);
    let (first, last, live): (Option<i64>, Option<i64>, i64) = tx.query_row(
        &format!(
            "SELECT MIN(profile), MAX(profile), COUNT(*) FROM {}.profiles
             WHERE ws = ?1 AND merged_into IS NULL",
            dbs.proj
        ),
        [ws],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mut out = Preview {
        count: 0,
        sample: Vec::new(),
        profiles_evaluated: 0,
        profiles: live as usize,
        complete: true,
    };
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(out);
    };
    let keys = budget.keys.max(1);
    let blocks = (last - first) / keys + 1;
    let stride = stride(blocks);
    for i in 0..blocks {
        if i > 0 && budget.time.is_some_and(|t| watch.elapsed() >= t) {
            out.complete = false;
            break;
        }
        let after = first - 1 + (i * stride % blocks) * keys;
        let people = read_people(&tx, dbs, &needs, ws, after, after + keys, keys as usize)?;
        out.profiles_evaluated += people.len();
        for mut p in people {
            let events = p.digested(&needs, now);
            let member = library.evaluate(expr, &p.traits, &p.identities, &events, now);
            if member {
                out.count += 1;
                if out.sample.len() < PREVIEW_SAMPLE {
                    out.sample.push(ProfileId::from_seq(p.profile));
                }
            }
        }
    }
    Ok(out)
}

/// Evaluates the next `limit` profiles of the first queued backfill (by workspace and segment id) at `now` and
/// records the changes.
pub(crate) fn step(
    conn: &mut Connection,
    now: Millis,
    limit: usize,
) -> Result<Decided, StoreError> {
    let job: Option<(i64, String, i64)> = conn
        .prepare_cached(
            "SELECT ws, segment, after FROM pending_backfills ORDER BY ws, segment LIMIT 1",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((ws, segment, after)) = job else {
        return Ok(Decided::default());
    };
    let tx = crate::write_projections(conn)?;
    let defs = load_defs(&tx, ws)?;
    let mut emitted = Vec::new();
    let mut last = None;
    if let Some((_, target, _)) = defs.segments.iter().find(|(id, _, _)| *id == segment) {
        let affected: Vec<&(String, String, Expr)> = defs
            .segments
            .iter()
            .filter(|(_, name, e)| name == target || refers_to(&defs.library, e, target))
            .collect();
        let read = with_references(&defs.library, affected.iter().map(|(_, _, e)| e).collect());
        let needs = Needs::of(read, []);
        let people = read_people(&tx, PROJECTOR, &needs, ws, after, i64::MAX, limit)?;
        let more = people.len() >= limit;
        if let (Some(first), Some(end)) = (people.first(), people.last()) {
            let (lo, hi) = (first.profile, end.profile);
            let mut members: HashMap<&str, HashSet<i64>> = HashMap::new();
            for (id, _, _) in &affected {
                let rows = tx
                    .prepare_cached(
                        "SELECT profile FROM memberships WHERE ws = ?1 AND segment = ?2 AND profile BETWEEN ?3 AND ?4",
                    )?
                    .query_map(params![ws, id, lo, hi], |r| r.get(0))?
                    .collect::<Result<_, _>>()?;
                members.insert(id.as_str(), rows);
            }
            let mut out = Recorder::new(&tx, now)?;
            for mut p in people {
                let events = p.digested(&needs, now);
                for (id, name, expr) in &affected {
                    let member =
                        defs.library
                            .evaluate(expr, &p.traits, &p.identities, &events, now);
                    if member != members[id.as_str()].contains(&p.profile) {
                        out.change(ws, p.profile, id, name, member)?;
                    }
                }
                // The needs include the segments those affected refer to: a change of theirs that time
                // alone brings may change the affected ones.
                if let Some(due) = needs.next_change(&events, now) {
                    tx.prepare_cached(
                        // Brought forward only: a later timer of the person's other segments fires early, and
                        // its evaluation sets the next one.
                        "INSERT INTO segment_timers (ws, profile, due) VALUES (?1, ?2, ?3)
                         ON CONFLICT (ws, profile) DO UPDATE SET due = excluded.due WHERE excluded.due < due",
                    )?
                    .execute(params![ws, p.profile, due])?;
                }
            }
            emitted = out.finish()?;
            last = Some(hi).filter(|_| more);
        }
    }
    match last {
        Some(hi) => tx
            .prepare_cached(
                "UPDATE pending_backfills SET after = ?3 WHERE ws = ?1 AND segment = ?2",
            )?
            .execute(params![ws, segment, hi])?,
        // Every profile done (the last range was not full), or the segment deleted.
        None => forget(&tx, ws, &segment).map(|()| 0)?,
    };
    let remaining: i64 = tx.query_row(
        "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM pending_backfills b JOIN profiles p
                     ON p.ws = b.ws AND p.profile > b.after AND p.merged_into IS NULL LIMIT ?1))",
        [COUNTED_UP_TO],
        |r| r.get(0),
    )?;
    tx.commit()?;
    Ok(Decided {
        emitted,
        remaining,
        ..Decided::default()
    })
}

/// The next `limit` live profiles of workspace `ws` after profile key `after` up to `until` (included), with
/// their traits, identities and the track events `needs` reads, through a connection naming the databases as
/// `dbs` says.
fn read_people(
    tx: &Connection,
    dbs: Schemas,
    needs: &Needs,
    ws: i64,
    after: i64,
    until: i64,
    limit: usize,
) -> Result<Vec<Person>, StoreError> {
    let mut people = Vec::new();
    let rows = tx
        .prepare_cached(&format!(
            "SELECT profile, state FROM {}.profiles
             WHERE ws = ?1 AND profile > ?2 AND profile <= ?3 AND merged_into IS NULL
             ORDER BY profile LIMIT ?4",
            dbs.proj
        ))?
        .query_map(params![ws, after, until, limit as i64], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, Option<String>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    for (profile, state) in rows {
        let state: ProfileState = match state {
            Some(s) => serde_json::from_str(&s)?,
            None => ProfileState::default(),
        };
        people.push(Person {
            profile,
            traits: state.into_trait_values(),
            identities: Vec::new(),
            events: Vec::new(),
        });
    }
    let (Some(lo), Some(hi)) = (people.first(), people.last()) else {
        return Ok(people);
    };
    let (lo, hi) = (lo.profile, hi.profile);
    let at: HashMap<i64, usize> = people
        .iter()
        .enumerate()
        .map(|(i, p)| (p.profile, i))
        .collect();
    // In the order `read::identities_of` gives them.
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT profile, type, value FROM {}.identities INDEXED BY identities_by_profile
         WHERE ws = ?1 AND profile BETWEEN ?2 AND ?3 ORDER BY profile, type, value",
        dbs.proj
    ))?;
    let mut rows = stmt.query(params![ws, lo, hi])?;
    while let Some(r) = rows.next()? {
        if let Some(&i) = at.get(&r.get::<_, i64>(0)?) {
            people[i].identities.push((r.get(1)?, r.get(2)?));
        }
    }
    drop(rows);
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT profile, name, value FROM {}.computed_traits WHERE ws = ?1 AND profile BETWEEN ?2 AND ?3",
        dbs.proj
    ))?;
    let mut computed: HashMap<usize, Map<String, Value>> = HashMap::new();
    let mut rows = stmt.query(params![ws, lo, hi])?;
    while let Some(r) = rows.next()? {
        if let Some(&i) = at.get(&r.get::<_, i64>(0)?) {
            let value: Value = serde_json::from_str(&r.get::<_, String>(2)?)?;
            computed.entry(i).or_default().insert(r.get(1)?, value);
        }
    }
    drop(rows);
    // As `segments::person_profile` puts them: under `computed`, in place of a trait of that name.
    for (i, values) in computed {
        people[i]
            .traits
            .insert("computed".to_owned(), Value::Object(values));
    }
    if needs.is_empty() {
        return Ok(people);
    }
    let mut on_timeline: Vec<(i64, usize)> = Vec::new();
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT profile, seq FROM {}.timeline
         WHERE ws = ?1 AND profile BETWEEN ?2 AND ?3 AND track IS NOT 0",
        dbs.proj
    ))?;
    let mut rows = stmt.query(params![ws, lo, hi])?;
    while let Some(r) = rows.next()? {
        if let Some(&i) = at.get(&r.get::<_, i64>(0)?) {
            on_timeline.push((r.get(1)?, i));
        }
    }
    drop(rows);
    on_timeline.sort_unstable();
    let mut event = tx.prepare_cached(&format!(
        "SELECT name, body FROM {}.events WHERE seq = ?1 AND type = 'track'",
        dbs.log
    ))?;
    for (seq, i) in on_timeline {
        // The body is read (and parsed) only for an event of a name the segments read.
        let body = event
            .query_row([seq], |r| {
                let name = r.get_ref(0)?.as_str_or_null()?.unwrap_or_default();
                match needs.reads(name) {
                    true => r.get::<_, String>(1).map(Some),
                    false => Ok(None),
                }
            })
            .optional()?
            .flatten();
        if let Some(body) = body {
            people[i]
                .events
                .push((seq, tracked_keeping(&body, |n, p| needs.keeps(n, p))?));
        }
    }
    Ok(people)
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};

    use seam_core::ProfileId;

    use super::{preview, queue, step, Budget, PROJECTOR};
    use crate::WorkspaceKey;

    const DAY: i64 = 86_400_000;

    /// Projections over a log in `dir`: profiles 1 to 6 of workspace 1, profile `p` with `p` "Viewed" events
    /// (profile 4 merged into 3, its events moved there), and the segments given as (id, name, definition).
    fn shop(dir: &std::path::Path, segments: &[(&str, &str, &str)]) -> Connection {
        let (log, conn) = crate::schema::test_files(dir);
        let mut seq = 0;
        for p in 1..=6i64 {
            let merged = (p == 4).then_some(3);
            conn.execute(
                "INSERT INTO profiles (ws, profile, merged_into, state) VALUES (1, ?1, ?2, NULL)",
                params![p, merged],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO identities (ws, type, value, profile) VALUES (1, 'user_id', ?1, ?2)",
                params![format!("u{p}"), merged.unwrap_or(p)],
            )
            .unwrap();
            for _ in 0..p {
                seq += 1;
                let body = format!(
                    r#"{{"event":"Viewed","timestamp":{},"properties":{{"sku":"s{p}","noise":[1,2]}}}}"#,
                    seq * DAY
                );
                log.execute(
                    "INSERT INTO events (seq, ws, message_id, type, name, ts, received_at, body)
                     VALUES (?1, 1, ?2, 'track', 'Viewed', ?3, ?3, ?4)",
                    params![seq, format!("m{seq}"), seq * DAY, body],
                )
                .unwrap();
                // An identify on the timeline too: not a track event, so not read.
                log.execute(
                    "INSERT INTO events (seq, ws, message_id, type, name, ts, received_at, body)
                     VALUES (?1, 1, ?2, 'identify', NULL, ?3, ?3, '{}')",
                    params![seq + 1_000, format!("i{seq}"), seq * DAY],
                )
                .unwrap();
                for s in [seq, seq + 1_000] {
                    conn.execute(
                        "INSERT INTO timeline (ws, profile, ts, seq) VALUES (1, ?1, ?2, ?3)",
                        params![merged.unwrap_or(p), seq * DAY, s],
                    )
                    .unwrap();
                }
            }
        }
        for (id, name, definition) in segments {
            conn.execute(
                "INSERT INTO segments (ws, id, name, definition, version, created_at, updated_at)
                 VALUES (1, ?1, ?2, ?3, 1, 0, 0)",
                params![id, name, definition],
            )
            .unwrap();
        }
        conn
    }

    fn members(conn: &Connection, segment: &str) -> Vec<i64> {
        conn.prepare(
            "SELECT profile FROM memberships WHERE ws = 1 AND segment = ?1 ORDER BY profile",
        )
        .unwrap()
        .query_map([segment], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    }

    /// Steps of two profiles each: the cursor moves on with every full step, merged-away profiles are skipped, the
    /// changed segment and the one referring to it are decided (with their events in the outbox), the others
    /// are left alone, and a time window brings the person's timer forward.
    #[test]
    fn a_backfill_decides_the_segment_and_those_referring_to_it_a_range_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = shop(
            dir.path(),
            &[
                ("seg_a", "viewers", r#"count of "Viewed" >= 3"#),
                ("seg_b", "fans", r#"in segment "viewers" and has user_id"#),
                ("seg_c", "other", r#"count of "Viewed" >= 1"#),
            ],
        );
        // Profile 1 was in `viewers` under an earlier definition: the backfill takes it out.
        conn.execute(
            "INSERT INTO memberships (ws, segment, profile, since) VALUES (1, 'seg_a', 1, 0)",
            [],
        )
        .unwrap();
        queue(&conn, 1, "seg_a").unwrap();
        let mut cursors = vec![];
        let mut emitted = 0;
        loop {
            let d = step(&mut conn, 100 * DAY, 2).unwrap();
            emitted += d.emitted.len();
            let after: Option<i64> = conn
                .query_row("SELECT after FROM pending_backfills", [], |r| r.get(0))
                .ok();
            match after {
                Some(a) => cursors.push(a),
                None => {
                    assert_eq!(d.remaining, 0);
                    break;
                }
            }
        }
        assert_eq!(
            cursors,
            [2, 5],
            "two live profiles a step (4 merged into 3); the last, short, ends it"
        );
        assert_eq!(members(&conn, "seg_a"), [3, 5, 6], "3 holds 3 + 4 events");
        assert_eq!(members(&conn, "seg_b"), [3, 5, 6]);
        assert!(
            members(&conn, "seg_c").is_empty(),
            "not referring to it: untouched"
        );
        let outbox: i64 = conn
            .query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!((emitted, outbox), (7, 7), "1 exit, 3 + 3 entries");

        // A windowed definition sets the timers: profile 6's last event (day 21) leaves a 30-day window on
        // day 51 (its earlier ones sooner, but the count holds until the last leaves).
        conn.execute(
            "UPDATE segments SET definition = 'count of \"Viewed\" in last 30 days >= 1' WHERE id = 'seg_c'",
            [],
        )
        .unwrap();
        queue(&conn, 1, "seg_c").unwrap();
        let now = 45 * DAY + DAY / 2;
        while step(&mut conn, now, 100).unwrap().remaining > 0 {}
        assert_eq!(
            members(&conn, "seg_c"),
            [6],
            "the others' last views are older than 30 days"
        );
        let due: i64 = conn
            .query_row(
                "SELECT due FROM segment_timers WHERE profile = 6",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert!(due > now && due <= 51 * DAY + 1, "{due}");
    }

    /// Parsing only the properties kept gives what parsing everything and then keeping them gives (keys with
    /// escapes included).
    #[test]
    fn an_event_parsed_for_some_properties_equals_the_whole_event_filtered() {
        let body = r#"{"event":"Viewed","timestamp":5,"context":{"ip":"x"},
            "properties":{"sku":"s\"1","ca\u0074":{"a":[1,2.5,null]},"drop":"me","n":7}}"#;
        let keep = |name: &str, p: &str| name == "Viewed" && p != "drop";
        let mut whole = crate::segments::tracked(body).unwrap();
        whole.properties.retain(|k, _| keep("Viewed", k));
        let some = crate::segments::tracked_keeping(body, keep).unwrap();
        assert_eq!(
            (&some.name, some.at, &some.properties),
            (&whole.name, whole.at, &whole.properties)
        );
        assert_eq!(some.properties.len(), 3, "{:?}", some.properties);
    }

    /// A preview, two profiles at a time, counts what evaluating each live profile on its whole history gives:
    /// definitions over events, a time window, identities and other segments.
    #[test]
    fn a_preview_counts_what_evaluating_each_profile_on_its_whole_history_gives() {
        let dir = tempfile::tempdir().unwrap();
        let conn = shop(
            dir.path(),
            &[("seg_a", "viewers", r#"count of "Viewed" >= 3"#)],
        );
        let defs = crate::decide::load_defs(&conn, 1).unwrap();
        let now = 25 * DAY;
        let mut counts = vec![];
        for text in [
            r#"count of "Viewed" where sku = "s6" >= 1"#,
            r#"in segment "viewers" and count of "Viewed" in last 11 days >= 1"#,
            r#"has user_id and not in segment "viewers""#,
            r#"count of "Viewed" > 100"#,
        ] {
            let expr = seam_audiences::parse(text).unwrap();
            let every = Budget {
                keys: 2,
                time: None,
            };
            let got = preview(&conn, PROJECTOR, 1, &expr, &defs.library, now, every).unwrap();
            let mut expected = vec![];
            for profile in [1, 2, 3, 5, 6] {
                let d =
                    crate::segments::person_data(&conn, "main", "log", WorkspaceKey(1), profile)
                        .unwrap();
                let member = defs
                    .library
                    .evaluate(&expr, &d.traits, &d.identities, &d.events, now);
                if member {
                    expected.push(ProfileId::from_seq(profile));
                }
            }
            assert_eq!(
                (got.count, &got.sample, got.profiles_evaluated, got.complete),
                (expected.len(), &expected, 5, true),
                "{text}"
            );
            assert_eq!(got.estimate(), got.count);
            counts.push(got.count);
        }
        assert_eq!(
            counts,
            [1, 2, 2, 0],
            "days 14 – 25 hold profile 5's last two views and 6's"
        );
    }

    /// Out of time, a preview stops after its first block and scales what it counted to every live profile.
    #[test]
    fn a_preview_out_of_time_estimates_from_the_blocks_it_evaluated() {
        let dir = tempfile::tempdir().unwrap();
        let conn = shop(dir.path(), &[]);
        let library = seam_audiences::Library::new([]);
        let expr = seam_audiences::parse(r#"count of "Viewed" >= 2"#).unwrap();
        let spent = Budget {
            keys: 2,
            time: Some(std::time::Duration::ZERO),
        };
        let got = preview(&conn, PROJECTOR, 1, &expr, &library, 100 * DAY, spent).unwrap();
        assert_eq!(
            (got.profiles_evaluated, got.profiles, got.complete),
            (2, 5, false),
            "profiles 1 and 2 of the live 1, 2, 3, 5, 6"
        );
        assert_eq!(got.sample, [ProfileId::from_seq(2)]);
        assert_eq!((got.count, got.estimate()), (1, 3), "1 of 2, so 2.5 of 5");
    }

    /// The order blocks are visited in takes each once, whatever their number.
    #[test]
    fn blocks_are_each_visited_once() {
        for blocks in 1..300i64 {
            let s = super::stride(blocks);
            let mut seen: Vec<i64> = (0..blocks).map(|i| i * s % blocks).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..blocks).collect::<Vec<_>>(), "{blocks} blocks");
        }
        assert_eq!(super::stride(100), 61);
    }

    /// A deleted segment's backfill ends without deciding anything.
    #[test]
    fn the_backfill_of_a_deleted_segment_ends() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = shop(dir.path(), &[]);
        queue(&conn, 1, "seg_gone").unwrap();
        let d = step(&mut conn, DAY, 10).unwrap();
        assert!(d.emitted.is_empty());
        let left: i64 = conn
            .query_row("SELECT COUNT(*) FROM pending_backfills", [], |r| r.get(0))
            .unwrap();
        assert_eq!(left, 0);
    }
}

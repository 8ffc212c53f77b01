//! The projector: one thread, the only writer of `projections.db`. It follows the log in order and applies each
//! event with the [`Processor`], in transactions as large as the backlog (so a burst costs fewer page writes per
//! event), storing the position applied in the same transaction. Seam's own events it decides are handed to the
//! log writer after its commit; they come back through the log and leave the outbox then.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection};
use seam_core::{Event, IdentifierRules, Seq};
use tokio::sync::watch;

use crate::outbox::{Emitted, Pending};
use crate::process::Processor;
use crate::{Command, Stats, StoreError};

/// Most events applied in one projection transaction.
const MAX_CHUNK: usize = 200_000;

/// Most events read from the log in one read transaction: tens of milliseconds of applying, inside the 100 ms
/// a checkpointer waits for readers before it puts a restart of the log's WAL off. (1,000 measured alike.) The
/// tests read a few at a time, so that every step they take goes through several.
#[cfg(not(test))]
const READ_AT_ONCE: usize = 5_000;
#[cfg(test)]
const READ_AT_ONCE: usize = 3;

/// Queued profiles evaluated in one decision pass on the projector's thread (the evaluator threads take them in
/// batches of `evaluator::BATCH`).
const EVALUATED_PER_PASS: usize = 2_000;

/// How the log writer and the store tell the projector that there is work (or that it should stop).
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    state: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct WakeState {
    log_seq: Seq,
    /// Raised by `poke`: run a pass even if the log did not move (the clock did, or someone waits for a pass).
    poked: u64,
    stop: bool,
    rules: Vec<(i64, IdentifierRules)>,
}

impl Wakeup {
    pub(crate) fn log_advanced(&self, seq: Seq) {
        let mut s = self.state.lock().expect("wakeup lock");
        s.log_seq = s.log_seq.max(seq);
        self.cv.notify_all();
    }

    pub(crate) fn set_rules(&self, ws: i64, rules: IdentifierRules) {
        self.state
            .lock()
            .expect("wakeup lock")
            .rules
            .push((ws, rules));
        self.cv.notify_all();
    }

    /// Asks for a pass (timers are checked against the clock); returns the pass generation that will answer.
    pub(crate) fn poke(&self) -> u64 {
        let mut s = self.state.lock().expect("wakeup lock");
        s.poked += 1;
        self.cv.notify_all();
        s.poked
    }

    pub(crate) fn stop(&self) {
        self.state.lock().expect("wakeup lock").stop = true;
        self.cv.notify_all();
    }

    /// Waits until the log is past `applied`, a poke, or a second has passed (timers are due by the clock, so
    /// they are checked at least that often). Returns the log position and the poke generation seen, or None
    /// when a stop is asked.
    fn wait(&self, applied: Seq, seen_poke: u64, processor: &mut Processor) -> Option<(Seq, u64)> {
        let mut s = self.state.lock().expect("wakeup lock");
        let mut waited = false;
        loop {
            for (ws, rules) in s.rules.drain(..) {
                processor.set_rules(ws, rules);
            }
            if s.stop {
                return None;
            }
            if s.log_seq > applied || s.poked > seen_poke || waited {
                return Some((s.log_seq, s.poked));
            }
            let (guard, timeout) = self
                .cv
                .wait_timeout(s, std::time::Duration::from_secs(1))
                .expect("wakeup lock");
            s = guard;
            waited = timeout.timed_out();
        }
    }
}

/// The fields of a stored event that projections use; the properties and context of received events (most
/// of their bytes) are skipped unparsed.
#[derive(serde::Deserialize)]
struct Slim<'a> {
    message_id: String,
    #[serde(rename = "type")]
    kind: seam_core::EventType,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    previous_id: Option<String>,
    #[serde(default)]
    identifiers: Vec<seam_core::Identifier>,
    #[serde(default)]
    traits: serde_json::Map<String, serde_json::Value>,
    #[serde(default, borrow)]
    properties: Option<&'a serde_json::value::RawValue>,
    timestamp: i64,
    received_at: i64,
}

/// The person a journey step is of: all a step decided by this projection is read back for.
#[derive(serde::Deserialize)]
struct StepOf {
    #[serde(default)]
    profile_id: Option<String>,
}

/// `live`: the event is after `decide_after`, so a system event there was decided by these projections and
/// applied then; of a journey step (its run's state and rendered messages) only the person is read.
fn slim_event(body: &str, live: bool) -> Result<Event, StoreError> {
    let s: Slim<'_> = serde_json::from_str(body)?;
    let mut e = Event::system(s.message_id, s.kind, s.timestamp, serde_json::Map::new());
    // Other system events are read whole; of received ones only a bounce (its message's address is suppressed).
    if let Some(raw) = s.properties {
        if live && s.kind == seam_core::EventType::JourneyStep {
            let step: StepOf = serde_json::from_str(raw.get())?;
            if let Some(p) = step.profile_id {
                e.properties.insert("profile_id".into(), p.into());
            }
        } else if s.kind.kind() == seam_core::EventKind::System
            || s.event.as_deref() == Some("Message Bounced")
        {
            e.properties = serde_json::from_str(raw.get())?;
        }
    }
    e.source = None;
    e.event = s.event;
    e.previous_id = s.previous_id;
    e.identifiers = s.identifiers;
    e.traits = s.traits;
    e.received_at = s.received_at;
    Ok(e)
}

/// The WAL the projector starts over between its passes: its own, which nobody else can start over while the
/// projector writes nearly all the time. (The log's is its checkpointer's: a step holds a read on the log for at
/// most [`READ_AT_ONCE`] events.)
pub(crate) struct OwnWal {
    path: std::path::PathBuf,
    /// The last try: at most one a second.
    last: seam_core::clock::Stopwatch,
}

/// What one projection transaction did.
#[derive(Default)]
pub(crate) struct Step {
    /// System events decided, to be appended to the log.
    pub emitted: Vec<Emitted>,
    /// System events that came back through the log.
    pub returned: usize,
    /// Received (not system) events applied.
    pub applied: usize,
    pub last_received_at: i64,
}

/// Follows the log into the projections. Shared by the live thread and `seam rebuild`.
pub(crate) struct Projector {
    conn: Connection,
    log: Connection,
    processor: Processor,
    pub(crate) applied_seq: Seq,
    delivery: crate::journeys::Delivery,
    /// The WAL it starts over between its passes.
    own_wal: Option<OwnWal>,
    /// The thread that evaluates queued profiles on a snapshot meanwhile (the live projector has one; a
    /// rebuild evaluates nothing).
    evaluator: Option<crate::evaluator::Evaluator>,
}

impl Projector {
    pub(crate) fn open(
        conn: Connection,
        log: Connection,
        rules: HashMap<i64, IdentifierRules>,
        delivery: crate::journeys::Delivery,
    ) -> Result<Self, StoreError> {
        if let Some(path) = log.path() {
            conn.execute(
                "ATTACH DATABASE ?1 AS log",
                [format!("file:{path}?mode=ro")],
            )?;
        }
        let applied_seq: Seq = conn.query_row(
            "SELECT value FROM meta WHERE key = 'applied_seq'",
            [],
            |r| r.get(0),
        )?;
        let max_seq: Seq =
            log.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        let mut decide_after: Seq = conn.query_row(
            "SELECT value FROM meta WHERE key = 'decide_after'",
            [],
            |r| r.get(0),
        )?;
        if applied_seq == 0 && decide_after == 0 && max_seq > 0 {
            // New projections over an existing log: what the log holds was decided already; replay it.
            decide_after = max_seq;
            conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'decide_after'",
                [decide_after],
            )?;
        }
        let mut processor = Processor::new(rules);
        processor.decide_after(decide_after);
        processor.outbox_holds(Pending::load(&conn)?);
        Ok(Self {
            conn,
            log,
            processor,
            applied_seq,
            delivery,
            own_wal: None,
            evaluator: None,
        })
    }

    /// Hands queued evaluations to threads of their own, one for each of `readers` (the projections as
    /// `main`, the log attached as `log`).
    pub(crate) fn evaluating(mut self, readers: Vec<Connection>) -> Result<Self, StoreError> {
        self.evaluator = Some(crate::evaluator::Evaluator::start(readers)?);
        Ok(self)
    }

    /// Starts the projections' WAL (the file at `path`) over between passes.
    pub(crate) fn restarting_wal(mut self, path: std::path::PathBuf) -> Self {
        self.own_wal = Some(OwnWal {
            path,
            last: seam_core::clock::Stopwatch::start(),
        });
        self
    }

    /// Between passes, at most once a second: starts the projections' WAL over once past its limit (see
    /// `writer::checkpoint`). Copying it into its file is the checkpointer thread's work, on the other core; the
    /// projector takes it in hand only when the last copy found it past its limit, since a restart needs the
    /// moment when the projector writes nothing. (Copying the WALs here every second took a tenth of the
    /// projector's time.)
    fn restart_own_wal(&mut self, stats: &Stats) {
        use crate::writer::{checkpoint, PROJECTIONS_WAL_LIMITS};
        let Some(w) = &mut self.own_wal else { return };
        if w.last.elapsed() < std::time::Duration::from_secs(1) {
            return;
        }
        w.last = seam_core::clock::Stopwatch::start();
        if stats.projections_wal_held.load(Ordering::Relaxed)
            <= PROJECTIONS_WAL_LIMITS.restart_above
        {
            return;
        }
        // The projector is the writer of its WAL and nobody waits on its commits: it may hold itself for the
        // whole copy, however far the checkpointer thread is behind.
        let own = crate::writer::WalLimits {
            left_at_most: i64::MAX,
            ..PROJECTIONS_WAL_LIMITS
        };
        // Waiting for readers (an export, say) only briefly, as the checkpointer threads do.
        let done = crate::wait_for_locks(&self.conn, crate::LockWait::Brief)
            .map_err(StoreError::from)
            .and_then(|()| checkpoint(&self.conn, &w.path, own, &stats.projections_wal_held));
        match done {
            Ok(done) => done.count(stats),
            Err(e) => tracing::warn!(error = %e, "starting the projections' WAL over failed"),
        }
        if let Err(e) = crate::wait_for_locks(&self.conn, crate::LockWait::Long) {
            tracing::warn!(error = %e, "restoring the projections' wait for locks failed");
        }
    }

    /// One decision pass: segments and computed traits of the queued profiles (see `decide`), a step of a
    /// segment's backfill (see `backfill`), then journey runs (see `journeys`).
    pub(crate) fn decide(
        &mut self,
        now: seam_core::Millis,
    ) -> Result<crate::decide::Decided, StoreError> {
        // A backfill step writes memberships over a range of profiles between passes: while one is under
        // way the queued profiles are evaluated here, where nothing can change under them.
        let backfilling = self.evaluator.is_some()
            && self
                .conn
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM pending_backfills)")?
                .query_row([], |r| r.get::<_, bool>(0))?;
        let (mut d, hand_out) = crate::decide::decide(
            &mut self.conn,
            now,
            EVALUATED_PER_PASS,
            self.evaluator.as_mut(),
            backfilling,
        )?;
        self.processor.outbox_committed(&d.emitted);
        if let Some(ev) = &mut self.evaluator {
            ev.committed([], false);
            ev.hand_out(now, hand_out);
        }
        let b = crate::backfill::step(&mut self.conn, now, crate::backfill::PROFILES_PER_STEP)?;
        self.processor.outbox_committed(&b.emitted);
        if let (Some(ev), true) = (&mut self.evaluator, backfilling) {
            // What a batch still out read before this step may be stale.
            ev.committed([], true);
        }
        d.emitted.extend(b.emitted);
        d.remaining += b.remaining;
        let j = crate::journeys::decide(&mut self.conn, now, 2_000, &self.delivery)?;
        self.processor.outbox_committed(&j.emitted);
        d.emitted.extend(j.emitted);
        d.remaining += j.remaining;
        Ok(d)
    }

    /// After a rebuild: queues every live profile, so that the next start evaluates everyone once and sets the
    /// timers again.
    pub(crate) fn queue_everyone(&mut self) -> Result<(), StoreError> {
        self.conn.execute(
            "INSERT OR IGNORE INTO pending_evaluations (ws, profile)
             SELECT p.ws, p.profile FROM profiles p WHERE p.merged_into IS NULL
             AND EXISTS (SELECT 1 FROM segments s WHERE s.ws = p.ws)",
            [],
        )?;
        self.conn.execute(
            "INSERT OR IGNORE INTO pending_date_plans (ws, profile)
             SELECT p.ws, p.profile FROM profiles p WHERE p.merged_into IS NULL
             AND EXISTS (SELECT 1 FROM journeys j WHERE j.ws = p.ws AND j.status = 'active'
                 AND json_extract(j.definition, '$.trigger.date') IS NOT NULL)",
            [],
        )?;
        Ok(())
    }

    /// Applies the events after `applied_seq` up to `until`, at most `MAX_CHUNK`, in one transaction, and
    /// decides the segments of the profiles they touched in the same transaction, at the time read once the
    /// events are applied. The events are applied as they are read from the log, each parsed from the row in
    /// place; only the text of track events queued for evaluation is kept, for the segments' digests.
    pub(crate) fn step(
        &mut self,
        until: Seq,
        clock: &dyn seam_core::Clock,
    ) -> Result<Step, StoreError> {
        let mut stmt = self.log.prepare_cached(
            "SELECT seq, ws, body, received_at, message_id, type, ts FROM events
             WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?;
        // `pass` steps only when the log is ahead: there is nearly always something to apply.
        let tx = crate::write_projections(&mut self.conn)?;
        // The text of the track events queued for evaluation, by log position: the segments' digests take them
        // in `decide_touched`.
        let mut tracks: Vec<(Seq, String)> = Vec::new();
        let (mut last, mut last_received, mut received) = (0, 0, 0);
        let processor = &mut self.processor;
        let from = self.applied_seq;
        let applied = (|| {
            // Read a piece at a time, each piece in a read transaction of its own, so that the log's WAL is
            // never held for longer than a piece takes: its checkpointer can copy it up to the present and start
            // it over while the step goes on.
            let mut read = 0;
            loop {
                let piece = READ_AT_ONCE.min(MAX_CHUNK - read);
                let mut rows = stmt.query(params![last.max(from), until, piece as i64])?;
                let mut in_piece = 0;
                while let Some(row) = rows.next()? {
                    in_piece += 1;
                    let seq: Seq = row.get(0)?;
                    let text = |i: usize| {
                        row.get_ref(i)?.as_str().map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(
                                i,
                                rusqlite::types::Type::Text,
                                e.into(),
                            )
                        })
                    };
                    (last, last_received) = (seq, row.get(3)?);
                    // One of Seam's own events decided here: back without its body being parsed.
                    if let Some(kind) = seam_core::EventType::parse(text(5)?) {
                        if processor.came_back(
                            &tx,
                            seq,
                            row.get(1)?,
                            text(4)?,
                            kind,
                            row.get(6)?,
                        )? {
                            continue;
                        }
                    }
                    let body = text(2)?;
                    let event = slim_event(body, processor.decides(seq))?;
                    if event.kind.kind() == seam_core::EventKind::Received {
                        received += 1;
                    }
                    processor.apply(&tx, seq, row.get(1)?, &event)?;
                    if processor.queued_track(seq) {
                        if processor.touched_count() <= crate::decide::IN_STEP {
                            tracks.push((seq, body.to_owned()));
                        } else if !tracks.is_empty() {
                            // So many people are queued for the decision passes instead, which read the log.
                            tracks = Vec::new();
                        }
                    }
                }
                read += in_piece;
                if in_piece < piece || read == MAX_CHUNK {
                    return Ok::<_, StoreError>(());
                }
            }
        })();
        drop(stmt);
        if applied.is_ok() && last == 0 {
            return Ok(Step::default());
        }
        // The profiles this transaction touches, for the evaluator.
        let mut keys = Vec::new();
        let result = applied.and_then(|()| {
            processor.flush(&tx)?;
            let body = |seq: Seq| {
                tracks
                    .binary_search_by_key(&seq, |r| r.0)
                    .ok()
                    .map(|i| tracks[i].1.as_str())
            };
            let touched = processor.take_touched();
            // Only batches out can be made stale by what this transaction touches.
            if self.evaluator.as_ref().is_some_and(|e| e.held() > 0) {
                keys.extend(touched.keys().copied());
            }
            let decided = crate::decide::decide_touched(&tx, clock.now_ms(), touched, body)?;
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'applied_seq'")?
                .execute([last])?;
            Ok::<_, StoreError>(decided)
        });
        match result.and_then(|decided| tx.commit().map(|()| decided).map_err(StoreError::from)) {
            Ok(decided) => {
                self.applied_seq = last;
                let redefined = self.processor.take_redefined();
                if let Some(ev) = &mut self.evaluator {
                    ev.committed(keys, redefined);
                }
                self.processor.outbox_committed(&decided);
                let (mut emitted, returned) = self.processor.take_emitted();
                emitted.extend(decided);
                Ok(Step {
                    emitted,
                    returned,
                    applied: received,
                    last_received_at: last_received,
                })
            }
            Err(e) => {
                self.processor.discard();
                Err(e)
            }
        }
    }

    pub(crate) fn start(
        mut self,
        to_writer: SyncSender<Command>,
        wakeup: Arc<Wakeup>,
        stats: Arc<Stats>,
        applied_tx: watch::Sender<Seq>,
        clock: Arc<dyn seam_core::Clock>,
    ) -> Result<JoinHandle<()>, StoreError> {
        stats.applied_seq.store(self.applied_seq, Ordering::SeqCst);
        applied_tx.send_replace(self.applied_seq);
        let pending = Emitted::all(&self.conn)?;
        stats
            .pending_system
            .store(pending.len() as i64, Ordering::SeqCst);
        stats.pending_evaluations.store(1, Ordering::SeqCst); // unknown until the first pass
        std::thread::Builder::new()
            .name(crate::PROJECTOR_THREAD.into())
            .spawn(move || {
                if !pending.is_empty() {
                    let _ = to_writer.send(Command::System { events: pending });
                }
                let mut failures = 0u32;
                let mut seen_poke = 0;
                while let Some((log_seq, poke)) = wakeup.wait(self.applied_seq, seen_poke, &mut self.processor) {
                    seen_poke = poke;
                    match self.pass(log_seq, &to_writer, &stats, clock.as_ref()) {
                        Ok(()) => {
                            failures = 0;
                            // Between passes the projector writes nothing: the moment its WAL can be started
                            // over.
                            self.restart_own_wal(&stats);
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::error!(error = %e, failures, "applying events to projections failed; will retry");
                            // Back off so that a poisoned event does not spin the core; the log keeps growing.
                            std::thread::park_timeout(std::time::Duration::from_millis(
                                100 * u64::from(failures.min(50)),
                            ));
                            continue;
                        }
                    }
                    stats.passes.store(poke, Ordering::SeqCst);
                    applied_tx.send_replace(self.applied_seq);
                }
            })
            .map_err(StoreError::Io)
    }

    /// Applies the log up to `log_seq`, then decides memberships for the queued profiles.
    fn pass(
        &mut self,
        log_seq: Seq,
        to_writer: &SyncSender<Command>,
        stats: &Stats,
        clock: &dyn seam_core::Clock,
    ) -> Result<(), StoreError> {
        let send = |emitted: Vec<Emitted>| -> Result<(), StoreError> {
            if emitted.is_empty() {
                return Ok(());
            }
            stats
                .pending_system
                .fetch_add(emitted.len() as i64, Ordering::SeqCst);
            to_writer
                .send(Command::System { events: emitted })
                .map_err(|_| StoreError::Closed)
        };
        if log_seq > self.applied_seq {
            let step = self.step(log_seq, clock)?;
            stats.applied_seq.store(self.applied_seq, Ordering::SeqCst);
            stats
                .applied_received_at
                .store(step.last_received_at, Ordering::Relaxed);
            stats
                .pending_system
                .fetch_sub(step.returned as i64, Ordering::SeqCst);
            send(step.emitted)?;
        }
        loop {
            if let Some(ev) = &mut self.evaluator {
                ev.pace(stats.log_seq.load(Ordering::SeqCst) > self.applied_seq);
            }
            let decided = self.decide(clock.now_ms())?;
            stats
                .pending_evaluations
                .store(decided.remaining, Ordering::SeqCst);
            stats
                .evaluated_apart
                .fetch_add(decided.apart, Ordering::Relaxed);
            stats
                .evaluated_again
                .fetch_add(decided.again, Ordering::Relaxed);
            send(decided.emitted)?;
            // New events first: a long backfill goes on between steps, not in front of them.
            if decided.remaining == 0 || stats.log_seq.load(Ordering::SeqCst) > self.applied_seq {
                return Ok(());
            }
            // What is left may be in the evaluator's hands: wait for a batch rather than spin.
            if let Some(ev) = &mut self.evaluator {
                ev.wait(std::time::Duration::from_millis(20));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{params, Connection};
    use seam_core::{Event, EventType, Identifier, IdentifierType, ProfileId};
    use seam_journeys::run::{Run, Status};
    use serde_json::json;

    use super::Projector;
    use crate::schema::{migrate, LOG_MIGRATIONS, PROJECTION_MIGRATIONS};

    /// A projector over a new log (returned, for writing events into) and new projections in `dir`.
    fn projector(dir: &std::path::Path) -> (Connection, Projector) {
        let mut log = Connection::open(dir.join("log.db")).unwrap();
        migrate(&mut log, LOG_MIGRATIONS).unwrap();
        let mut conn = Connection::open(dir.join("projections.db")).unwrap();
        migrate(&mut conn, PROJECTION_MIGRATIONS).unwrap();
        let reader = Connection::open(dir.join("log.db")).unwrap();
        let p = Projector::open(conn, reader, Default::default(), Default::default()).unwrap();
        (log, p)
    }

    /// Opens the projector again on the files of [`projector`], as a restart does.
    fn reopened(dir: &std::path::Path) -> Projector {
        let conn = Connection::open(dir.join("projections.db")).unwrap();
        let reader = Connection::open(dir.join("log.db")).unwrap();
        Projector::open(conn, reader, Default::default(), Default::default()).unwrap()
    }

    /// Appends an event to the test log at `seq`.
    fn append(log: &Connection, seq: i64, e: &Event) {
        let json = serde_json::to_string(e).unwrap();
        append_row(log, seq, &crate::LogRow::new(e.clone(), json));
    }

    /// Appends a row the log writer would append, at `seq`.
    fn append_row(log: &Connection, seq: i64, r: &crate::LogRow) {
        log.execute(
            "INSERT INTO events (seq, ws, message_id, type, name, ts, received_at, body)
             VALUES (?1, 1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                seq,
                r.message_id,
                r.kind,
                r.name,
                r.timestamp,
                r.received_at,
                r.json
            ],
        )
        .unwrap();
    }

    /// Two visitors, the second logged in, then an identify that makes them one person (a merge, decided here).
    fn two_visitors_then_one_person(log: &Connection) {
        let events = [
            (
                EventType::Track,
                vec![id(IdentifierType::ANONYMOUS_ID, "a1")],
            ),
            (EventType::Track, vec![id(IdentifierType::USER_ID, "u1")]),
            (
                EventType::Identify,
                vec![
                    id(IdentifierType::ANONYMOUS_ID, "a1"),
                    id(IdentifierType::USER_ID, "u1"),
                ],
            ),
        ];
        for (seq, (kind, identifiers)) in (1i64..).zip(events) {
            received(log, seq, kind, identifiers);
        }
    }

    fn id(kind: &'static str, value: &str) -> Identifier {
        Identifier::new(IdentifierType::builtin(kind), value)
    }

    /// Appends at `seq` a received event of `kind` (a track event is "Viewed") by `identifiers`.
    fn received(log: &Connection, seq: i64, kind: EventType, identifiers: Vec<Identifier>) {
        let mut e = Event::system(format!("m{seq}"), kind, 1_000 * seq, Default::default());
        e.event = (kind == EventType::Track).then(|| "Viewed".to_owned());
        e.identifiers = identifiers;
        e.received_at = e.timestamp;
        append(log, seq, &e);
    }

    /// The timeline as (log position, profile), in log order.
    fn timeline(conn: &Connection) -> Vec<(i64, i64)> {
        conn.prepare("SELECT seq, profile FROM timeline ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Every row of the person-facing projections, to compare two moments.
    fn people(conn: &Connection) -> Vec<String> {
        let mut out = Vec::new();
        for q in [
            "SELECT profile || ':' || COALESCE(merged_into, '') || ':' || COALESCE(state, '') FROM profiles ORDER BY profile",
            "SELECT type || ':' || value || ':' || profile FROM identities ORDER BY type, value",
            "SELECT profile || ':' || seq FROM timeline ORDER BY seq",
        ] {
            let mut stmt = conn.prepare(q).unwrap();
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).unwrap();
            out.extend(rows.map(Result::unwrap));
        }
        out
    }

    /// A journey step after `decide_after` that the outbox does not hold is read whole and applied, though a
    /// step the outbox holds comes back without its body being read.
    #[test]
    fn a_live_step_missing_from_the_outbox_is_applied_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut p) = projector(dir.path());
        assert!(
            p.processor.decides(1),
            "an empty log: everything after it is live"
        );

        let profile = ProfileId::from_seq(7).to_string();
        let run = Run {
            id: "welcome-7".into(),
            journey: "welcome".into(),
            version: 1,
            profile: profile.clone(),
            entered_at: 1_000,
            trigger: None,
            node: 0,
            step: 1,
            wait: None,
            cascade_at: 0,
            messages: vec![],
            status: Status::Active,
            converted: false,
        };
        let props = json!({"run": run.id, "journey": "welcome", "version": 1, "profile_id": profile,
                           "state": run, "effects": [{"entered": true}], "messages": []});
        let event = Event::system(
            "$seam:journey_step:welcome-7:1".into(),
            EventType::JourneyStep,
            1_000,
            props.as_object().cloned().unwrap(),
        );
        log.execute(
            "INSERT INTO events (seq, ws, message_id, type, name, ts, received_at, body)
             VALUES (1, 1, ?1, 'journey_step', NULL, 1000, 1000, ?2)",
            params![event.message_id, serde_json::to_string(&event).unwrap()],
        )
        .unwrap();

        p.step(1, &seam_core::clock::ManualClock::new(2_000))
            .unwrap();
        let (journey, state): (String, String) = p
            .conn
            .query_row(
                "SELECT journey, state FROM journey_runs WHERE ws = 1 AND run = 'welcome-7'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert_eq!(journey, "welcome");
        let back: Run = serde_json::from_str(&state).unwrap();
        assert_eq!(back, run);
        let entered: i64 = p
            .conn
            .query_row(
                "SELECT n FROM journey_stats WHERE ws = 1 AND journey = 'welcome' AND counter = 'entered'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(entered, 1);
    }

    /// The timeline is written when a transaction's events are all applied, in key order; a merge within the
    /// transaction still takes the loser's entries of that transaction to the survivor.
    #[test]
    fn a_merge_takes_the_timeline_entries_of_its_own_transaction() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut p) = projector(dir.path());
        two_visitors_then_one_person(&log);

        p.step(3, &seam_core::clock::ManualClock::new(10_000))
            .unwrap();
        let live: Vec<i64> = p
            .conn
            .prepare("SELECT profile FROM profiles WHERE ws = 1 AND merged_into IS NULL")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(live.len(), 1, "the two visitors are one person");
        assert_eq!(
            timeline(&p.conn),
            [(1, live[0]), (2, live[0]), (3, live[0])]
        );
    }

    /// An event decided here comes back known by its row's message id and type alone: its body is not read (here
    /// it is not even JSON), it leaves the outbox, and it goes on the timeline of the person the outbox kept for
    /// it.
    #[test]
    fn an_event_decided_here_comes_back_without_its_body_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut p) = projector(dir.path());
        two_visitors_then_one_person(&log);
        let clock = seam_core::clock::ManualClock::new(10_000);
        let decided = p.step(3, &clock).unwrap().emitted;
        assert_eq!(decided.len(), 1, "the merge");
        let merge = &decided[0].log;
        let outbox = |c: &Connection| -> i64 {
            c.query_row("SELECT COUNT(*) FROM outbox", [], |r| r.get(0))
                .unwrap()
        };
        assert_eq!(outbox(&p.conn), 1);

        log.execute(
            "INSERT INTO events (seq, ws, message_id, type, name, ts, received_at, body)
             VALUES (4, 1, ?1, ?2, NULL, ?3, ?3, 'not read')",
            params![merge.message_id, merge.kind, merge.timestamp],
        )
        .unwrap();
        let back = p.step(4, &clock).unwrap();
        assert_eq!(back.returned, 1);
        assert!(back.emitted.is_empty());
        assert_eq!(outbox(&p.conn), 0);
        let survivor = timeline(&p.conn)[0].1;
        assert_eq!(timeline(&p.conn).last(), Some(&(4, survivor)));
    }

    /// Each timeline entry says whether it is a track event (an event decided here, back without its body
    /// read, included), and a person's track events are read from the log for the entries that say so and
    /// for those written before entries said (NULL) only.
    #[test]
    fn the_timeline_says_which_entries_are_track_events() {
        let dir = tempfile::tempdir().unwrap();
        let (log, mut p) = projector(dir.path());
        two_visitors_then_one_person(&log);
        let clock = seam_core::clock::ManualClock::new(10_000);
        let decided = p.step(3, &clock).unwrap().emitted;
        append_row(&log, 4, &decided[0].log);
        assert_eq!(p.step(4, &clock).unwrap().returned, 1, "the merge");
        let flags: Vec<(i64, Option<bool>)> = p
            .conn
            .prepare("SELECT seq, track FROM timeline ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            flags,
            [
                (1, Some(true)),
                (2, Some(true)),
                (3, Some(false)),
                (4, Some(false))
            ]
        );
        let person = timeline(&p.conn)[0].1;
        let tracks = |conn: &Connection| -> Vec<i64> {
            crate::segments::track_events(conn, "main", "log", crate::WorkspaceKey(1), person, 0)
                .unwrap()
                .into_iter()
                .map(|(seq, _)| seq)
                .collect()
        };
        assert_eq!(tracks(&p.conn), [1, 2]);
        // An entry marked as no track event is not looked up; one from before the marks is.
        p.conn
            .execute("UPDATE timeline SET track = 0 WHERE seq = 2", [])
            .unwrap();
        p.conn
            .execute("UPDATE timeline SET track = NULL WHERE seq = 1", [])
            .unwrap();
        assert_eq!(tracks(&p.conn), [1]);
    }

    /// After a restart the identifiers already held are found again, whether the workspace's identifiers are
    /// read whole into the cache (a new one is then known to be new without a read) or looked up one by one;
    /// both end with the same people.
    #[test]
    fn identifiers_held_before_a_restart_are_found_read_whole_or_one_by_one() {
        let clock = seam_core::clock::ManualClock::new(10_000);
        let run = |whole_up_to: usize| -> Vec<String> {
            let dir = tempfile::tempdir().unwrap();
            let (log, mut p) = projector(dir.path());
            two_visitors_then_one_person(&log);
            p.step(3, &clock).unwrap();
            drop(p);
            let mut p = reopened(dir.path());
            p.processor.read_owners_whole_up_to(whole_up_to);
            // The same person on a known device, then someone new.
            for (seq, anonymous) in [(4, "a1"), (5, "a9")] {
                received(
                    &log,
                    seq,
                    EventType::Track,
                    vec![id(IdentifierType::ANONYMOUS_ID, anonymous)],
                );
            }
            p.step(5, &clock).unwrap();
            let on = timeline(&p.conn);
            assert_eq!(
                on[3].1, on[0].1,
                "the known device is the same person: {on:?}"
            );
            assert_eq!(on[4], (5, 5), "the new device is a new person: {on:?}");
            people(&p.conn)
        };
        assert_eq!(run(usize::MAX), run(0));
    }

    /// The process dies after the projector committed a decision and before the log writer appended it: the
    /// decision is in the outbox, sent again when the projector starts, and when it comes back through the log
    /// it is confirmed, not applied a second time — the projections end as they do when nothing died.
    #[test]
    fn a_decision_lost_between_its_commit_and_the_log_is_sent_again_and_applied_once() {
        let clock = std::sync::Arc::new(seam_core::clock::ManualClock::new(10_000));
        let run = |dies: bool| -> Vec<String> {
            let dir = tempfile::tempdir().unwrap();
            let (log, mut p) = projector(dir.path());
            two_visitors_then_one_person(&log);
            let step = p.step(3, clock.as_ref()).unwrap();
            assert!(
                step.emitted
                    .iter()
                    .any(|e| e.log.kind == EventType::Merge.as_str()),
                "the identify merged two profiles"
            );
            let mut events = step.emitted;
            if dies {
                let decided: Vec<String> =
                    events.iter().map(|e| e.log.message_id.clone()).collect();
                drop(p); // nothing decided reached the log
                let (to_writer, from_projector) = std::sync::mpsc::sync_channel(4);
                let wakeup = std::sync::Arc::new(super::Wakeup::default());
                let (applied_tx, _applied) = tokio::sync::watch::channel(0);
                let thread = reopened(dir.path())
                    .start(
                        to_writer,
                        wakeup.clone(),
                        Default::default(),
                        applied_tx,
                        clock.clone(),
                    )
                    .unwrap();
                let sent = from_projector.recv_timeout(std::time::Duration::from_secs(30));
                let crate::Command::System { events: sent } = sent.expect("the outbox sent again")
                else {
                    panic!("the projector sends only its own events");
                };
                wakeup.stop();
                thread.join().unwrap();
                let ids: Vec<String> = sent.iter().map(|e| e.log.message_id.clone()).collect();
                assert_eq!(
                    ids, decided,
                    "sent again: the same events with the same ids"
                );
                events = sent;
                p = reopened(dir.path());
            }
            // The log writer appends them and the projector reads them back.
            for (seq, e) in (4i64..).zip(&events) {
                append_row(&log, seq, &e.log);
            }
            let step = p.step(3 + events.len() as i64, clock.as_ref()).unwrap();
            assert_eq!(step.returned, events.len(), "each confirmed");
            assert!(step.emitted.is_empty(), "nothing decided again");
            let left: i64 = p
                .conn
                .query_row("SELECT count(*) FROM outbox", [], |r| r.get(0))
                .unwrap();
            assert_eq!(left, 0);
            people(&p.conn)
        };
        assert_eq!(run(true), run(false));
    }
}

//! The single writer: group commit of appends, then projection work, in one transaction per round.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use seam_core::{Event, EventType, IdentifierRules, Seq};
use tokio::sync::{oneshot, watch};

use crate::process::Processor;
use crate::{AppendOutcome, Command, Stats, StoreError, StoreOptions};

/// More appended-but-unapplied events than this are dropped from memory and re-read from the log later.
const MAX_QUEUED: usize = 500_000;

/// Keeps projections following the log: events appended in this process wait in memory; anything older (after
/// a restart, or when the queue overflowed) is read back from the log.
pub(crate) struct Projector {
    processor: Processor,
    /// Last log position applied (received events) or skipped (system events).
    applied_seq: Seq,
    /// Events at positions up to here are applied from the log, not from `queue`.
    backlog_until: Seq,
    queue: VecDeque<(Seq, i64, Event)>,
    max_seq: Seq,
}

impl Projector {
    fn load(conn: &Connection, rules: HashMap<i64, IdentifierRules>) -> Result<Self, StoreError> {
        let applied: String = conn.query_row(
            "SELECT value FROM meta WHERE key = 'applied_seq'",
            [],
            |r| r.get(0),
        )?;
        let applied_seq = applied
            .parse()
            .map_err(|_| StoreError::Corrupt("meta.applied_seq".into()))?;
        let max_seq: Seq =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        Ok(Self {
            processor: Processor::new(rules),
            applied_seq,
            backlog_until: max_seq,
            queue: VecDeque::new(),
            max_seq,
        })
    }

    fn caught_up(&self) -> bool {
        self.queue.is_empty() && self.applied_seq >= self.backlog_until
    }

    /// Applies up to `budget` received events inside `conn`'s open transaction.
    fn step(&mut self, conn: &Connection, budget: usize) -> Result<usize, StoreError> {
        let mut done = 0;
        while done < budget {
            if self.applied_seq < self.backlog_until {
                let mut stmt = conn.prepare_cached(
                    "SELECT seq, ws, type, body FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
                )?;
                let rows: Vec<(Seq, i64, String, String)> = stmt
                    .query_map(
                        params![self.applied_seq, self.backlog_until, (budget - done) as i64],
                        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                    )?
                    .collect::<Result<_, _>>()?;
                if rows.is_empty() {
                    self.applied_seq = self.backlog_until;
                    continue;
                }
                for (seq, ws, kind, body) in rows {
                    let is_system = EventType::parse(&kind)
                        .is_none_or(|k| k.kind() == seam_core::EventKind::System);
                    if !is_system {
                        let event: Event = serde_json::from_str(&body)?;
                        self.processor.apply(conn, seq, ws, &event)?;
                        done += 1;
                    }
                    self.applied_seq = seq;
                }
            } else if let Some((seq, ws, event)) = self.queue.pop_front() {
                self.processor.apply(conn, seq, ws, &event)?;
                self.applied_seq = seq;
                done += 1;
            } else {
                break;
            }
        }
        self.processor.flush(conn)?;
        conn.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'applied_seq'")?
            .execute([self.applied_seq.to_string()])?;
        Ok(done)
    }

    /// After a failed transaction: forget in-memory work and take everything from the log again.
    fn reset_after_failure(&mut self, applied_before: Seq) {
        self.processor.discard();
        self.queue.clear();
        self.applied_seq = applied_before;
        self.backlog_until = self.max_seq;
    }

    /// The position projections are known to reflect: everything when caught up (trailing system events
    /// included), else the last applied event.
    fn visible_applied(&self) -> Seq {
        if self.caught_up() {
            self.max_seq.max(self.applied_seq)
        } else {
            self.applied_seq
        }
    }
}

pub(crate) struct Writer {
    conn: Connection,
    rx: Receiver<Command>,
    opts: StoreOptions,
    stats: Arc<Stats>,
    applied_tx: watch::Sender<Seq>,
    projector: Projector,
    /// Projection work failed; retried when new events arrive, not in a hot loop.
    stalled: bool,
}

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        rx: Receiver<Command>,
        opts: StoreOptions,
        rules: HashMap<i64, IdentifierRules>,
        stats: Arc<Stats>,
        applied_tx: watch::Sender<Seq>,
    ) -> Result<JoinHandle<()>, StoreError> {
        // Checkpoints run from a second connection so that the writer never copies the WAL itself.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let projector = Projector::load(&conn, rules)?;
        stats.log_seq.store(projector.max_seq, Ordering::SeqCst);
        stats
            .applied_seq
            .store(projector.applied_seq, Ordering::SeqCst);
        let path = conn.path().map(std::path::PathBuf::from);
        let mut w = Writer {
            conn,
            rx,
            opts,
            stats,
            applied_tx,
            projector,
            stalled: false,
        };
        if let Some(path) = path {
            start_checkpointer(path, Arc::downgrade(&w.stats));
        }
        std::thread::Builder::new()
            .name("seam-writer".into())
            .spawn(move || w.run())
            .map_err(StoreError::Io)
    }

    fn run(&mut self) {
        loop {
            let mut appends: Vec<(i64, Vec<seam_ingest::Accepted>, Reply)> = Vec::new();
            let mut events = 0usize;
            let idle = self.projector.caught_up() || self.stalled;
            let first = if idle {
                match self.rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(c) => Some(c),
                    Err(TryRecvError::Empty) => None,
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            let mut next = first;
            while let Some(cmd) = next.take() {
                match cmd {
                    Command::Append {
                        ws,
                        events: evs,
                        reply,
                    } => {
                        events += evs.len();
                        appends.push((ws, evs, reply));
                    }
                    Command::SetRules { ws, rules } => {
                        self.projector.processor.set_rules(ws, rules)
                    }
                }
                if events < self.opts.max_commit_events {
                    next = self.rx.try_recv().ok();
                }
            }
            if !appends.is_empty() {
                self.stalled = false;
            }
            self.round(appends);
        }
    }

    /// One transaction: append everything gathered, apply a budget of events, commit, acknowledge.
    fn round(&mut self, appends: Vec<(i64, Vec<seam_ingest::Accepted>, Reply)>) {
        let applied_before = self.projector.applied_seq;
        let queued_before = self.projector.queue.len();
        let max_before = self.projector.max_seq;
        let result = (|| -> Result<(Vec<(AppendOutcome, Reply)>, usize), StoreError> {
            let mut tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut replies = Vec::with_capacity(appends.len());
            for (ws, events, reply) in appends {
                let outcome = append(&tx, &mut self.projector, ws, events)?;
                replies.push((outcome, reply));
            }
            let applied = if self.stalled {
                0
            } else {
                let sp = tx.savepoint()?;
                match self.projector.step(&sp, self.opts.apply_budget) {
                    Ok(n) => {
                        sp.commit()?;
                        n
                    }
                    Err(e) => {
                        drop(sp); // rolls back the projection work only
                        tracing::error!(error = %e, "applying events to projections failed; will retry");
                        self.projector.reset_after_failure(applied_before);
                        self.stalled = true;
                        0
                    }
                }
            };
            tx.commit()?;
            Ok((replies, applied))
        })();
        match result {
            Ok((replies, _applied)) => {
                let s = &self.stats;
                s.commits.fetch_add(1, Ordering::Relaxed);
                s.log_seq.store(self.projector.max_seq, Ordering::SeqCst);
                let visible = self.projector.visible_applied();
                s.applied_seq.store(visible, Ordering::SeqCst);
                if let Some((_, _, e)) = self.projector.queue.front() {
                    s.applied_received_at
                        .store(e.received_at, Ordering::Relaxed);
                } else {
                    s.applied_received_at.store(0, Ordering::Relaxed);
                }
                for (outcome, reply) in replies {
                    s.stored.fetch_add(outcome.stored as u64, Ordering::Relaxed);
                    s.deduplicated
                        .fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
                    let _ = reply.send(Ok(outcome));
                }
                if self.projector.queue.len() > MAX_QUEUED {
                    self.projector.queue.clear();
                    self.projector.backlog_until = self.projector.max_seq;
                }
                self.applied_tx.send_replace(visible);
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; the batches in it were not acknowledged");
                self.projector.queue.truncate(queued_before);
                self.projector.max_seq = max_before;
                self.projector.reset_after_failure(applied_before);
                // `appends` moved into the closure; their reply senders were dropped, so callers see Closed.
            }
        }
    }
}

/// Appends one batch; events whose messageId the workspace already has are skipped.
fn append(
    tx: &Transaction<'_>,
    projector: &mut Projector,
    ws: i64,
    events: Vec<seam_ingest::Accepted>,
) -> Result<AppendOutcome, StoreError> {
    let mut stmt = tx.prepare_cached(
        "INSERT INTO events (ws, message_id, type, name, ts, received_at, body)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
    )?;
    let mut out = AppendOutcome::default();
    for a in events {
        let e = &a.event;
        let n = stmt.execute(params![
            ws,
            e.message_id,
            e.kind.as_str(),
            e.event,
            e.timestamp,
            e.received_at,
            a.json
        ])?;
        if n == 1 {
            let seq = tx.last_insert_rowid();
            projector.max_seq = seq;
            projector.queue.push_back((seq, ws, a.event));
            out.stored += 1;
        } else {
            out.duplicates += 1;
        }
    }
    Ok(out)
}

/// Moves the WAL into the database file every second without blocking the writer; stops with the store.
pub(crate) fn start_checkpointer(path: std::path::PathBuf, alive: std::sync::Weak<Stats>) {
    let _ = std::thread::Builder::new()
        .name("seam-checkpoint".into())
        .spawn(move || {
            let Ok(conn) = Connection::open(&path) else {
                return;
            };
            while alive.upgrade().is_some() {
                std::thread::park_timeout(std::time::Duration::from_secs(1));
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "wal checkpoint failed");
                }
            }
        });
}

/// Empties the projections and applies the whole log again.
pub(crate) fn rebuild(
    conn: &mut Connection,
    rules: HashMap<i64, IdentifierRules>,
) -> Result<u64, StoreError> {
    {
        let tx = conn.transaction()?;
        for table in crate::schema::PROJECTION_TABLES {
            tx.execute(&format!("DELETE FROM {table}"), [])?;
        }
        tx.execute("UPDATE meta SET value = '0' WHERE key = 'applied_seq'", [])?;
        tx.commit()?;
    }
    let mut projector = Projector::load(conn, rules)?;
    let mut total = 0u64;
    while !projector.caught_up() {
        let tx = conn.transaction()?;
        total += projector.step(&tx, 20_000)? as u64;
        tx.commit()?;
    }
    Ok(total)
}

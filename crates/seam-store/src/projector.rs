//! The projector: one thread, the only writer of `projections.db`. It follows the log in order and applies each
//! event with the [`Processor`], in transactions as large as the backlog (so a burst costs fewer page writes per
//! event), storing the position applied in the same transaction. Seam's own events it decides are handed to the
//! log writer after its commit; they come back through the log and leave the outbox then.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, TransactionBehavior};
use seam_core::{Event, IdentifierRules, Seq};
use tokio::sync::watch;

use crate::process::{Emitted, Processor};
use crate::{Command, Stats, StoreError};

/// Most events applied in one projection transaction.
const MAX_CHUNK: usize = 50_000;

/// How the log writer and the store tell the projector that there is work (or that it should stop).
#[derive(Debug, Default)]
pub(crate) struct Wakeup {
    state: Mutex<WakeState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct WakeState {
    log_seq: Seq,
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

    pub(crate) fn stop(&self) {
        self.state.lock().expect("wakeup lock").stop = true;
        self.cv.notify_all();
    }

    /// Waits until the log is past `applied` (returns its position) or a stop is asked (returns None).
    fn wait(&self, applied: Seq, processor: &mut Processor) -> Option<Seq> {
        let mut s = self.state.lock().expect("wakeup lock");
        loop {
            for (ws, rules) in s.rules.drain(..) {
                processor.set_rules(ws, rules);
            }
            if s.stop {
                return None;
            }
            if s.log_seq > applied {
                return Some(s.log_seq);
            }
            s = self.cv.wait(s).expect("wakeup lock");
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

fn slim_event(body: &str) -> Result<Event, StoreError> {
    let s: Slim<'_> = serde_json::from_str(body)?;
    let mut e = Event::system(s.message_id, s.kind, s.timestamp, serde_json::Map::new());
    if s.kind.kind() == seam_core::EventKind::System {
        if let Some(raw) = s.properties {
            e.properties = serde_json::from_str(raw.get())?;
        }
    }
    e.source = None;
    e.previous_id = s.previous_id;
    e.identifiers = s.identifiers;
    e.traits = s.traits;
    e.received_at = s.received_at;
    Ok(e)
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
}

impl Projector {
    pub(crate) fn open(
        conn: Connection,
        log: Connection,
        rules: HashMap<i64, IdentifierRules>,
    ) -> Result<Self, StoreError> {
        let applied_seq = conn.query_row(
            "SELECT value FROM meta WHERE key = 'applied_seq'",
            [],
            |r| r.get(0),
        )?;
        Ok(Self {
            conn,
            log,
            processor: Processor::new(rules),
            applied_seq,
        })
    }

    /// Applies the events after `applied_seq` up to `until`, at most `MAX_CHUNK`, in one transaction.
    pub(crate) fn step(&mut self, until: Seq) -> Result<Step, StoreError> {
        let mut stmt = self.log.prepare_cached(
            "SELECT seq, ws, body, received_at FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows: Vec<(Seq, i64, String, i64)> = stmt
            .query_map(params![self.applied_seq, until, MAX_CHUNK as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })?
            .collect::<Result<_, _>>()?;
        drop(stmt);
        let Some(&(last, _, _, last_received)) = rows.last() else {
            return Ok(Step::default());
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut received = 0;
        let result = (|| {
            for (seq, ws, body, _) in &rows {
                let event = slim_event(body)?;
                if event.kind.kind() == seam_core::EventKind::Received {
                    received += 1;
                }
                self.processor.apply(&tx, *seq, *ws, &event)?;
            }
            self.processor.flush(&tx)?;
            tx.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'applied_seq'",
                [last],
            )?;
            Ok::<_, StoreError>(())
        })();
        match result.and_then(|()| tx.commit().map_err(StoreError::from)) {
            Ok(()) => {
                self.applied_seq = last;
                let (emitted, returned) = self.processor.take_emitted();
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

    /// System events decided before a restart and perhaps never appended.
    fn outbox(&self) -> Result<Vec<Emitted>, StoreError> {
        let mut stmt = self.conn.prepare("SELECT ws, body FROM outbox")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (ws, json) = row?;
            out.push(Emitted {
                ws,
                event: serde_json::from_str(&json)?,
                json,
            });
        }
        Ok(out)
    }

    pub(crate) fn start(
        mut self,
        to_writer: SyncSender<Command>,
        wakeup: Arc<Wakeup>,
        stats: Arc<Stats>,
        applied_tx: watch::Sender<Seq>,
    ) -> Result<JoinHandle<()>, StoreError> {
        stats.applied_seq.store(self.applied_seq, Ordering::SeqCst);
        applied_tx.send_replace(self.applied_seq);
        let pending = self.outbox()?;
        stats
            .pending_system
            .store(pending.len() as i64, Ordering::SeqCst);
        std::thread::Builder::new()
            .name("seam-projector".into())
            .spawn(move || {
                if !pending.is_empty() {
                    let _ = to_writer.send(Command::System { events: pending });
                }
                let mut failures = 0u32;
                while let Some(until) = wakeup.wait(self.applied_seq, &mut self.processor) {
                    match self.step(until) {
                        Ok(step) => {
                            failures = 0;
                            stats.applied_seq.store(self.applied_seq, Ordering::SeqCst);
                            stats.applied_received_at.store(step.last_received_at, Ordering::Relaxed);
                            let delta = step.emitted.len() as i64 - step.returned as i64;
                            stats.pending_system.fetch_add(delta, Ordering::SeqCst);
                            if !step.emitted.is_empty()
                                && to_writer.send(Command::System { events: step.emitted }).is_err()
                            {
                                return;
                            }
                            applied_tx.send_replace(self.applied_seq);
                        }
                        Err(e) => {
                            failures += 1;
                            tracing::error!(error = %e, failures, "applying events to projections failed; will retry");
                            // Back off so that a poisoned event does not spin the core; the log keeps growing.
                            std::thread::park_timeout(std::time::Duration::from_millis(100 * u64::from(failures.min(50))));
                        }
                    }
                }
            })
            .map_err(StoreError::Io)
    }
}

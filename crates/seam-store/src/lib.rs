//! Seam's storage on SQLite: the event log and the projections built from it.
//!
//! A data folder holds two databases, each with exactly one writer thread:
//! - `seam.db`, the **log** (and workspace configuration), written by the [`writer`]: it gathers every batch
//!   waiting into one transaction (group commit), skips events whose `(workspace, messageId)` it already has,
//!   and acknowledges the batches once the WAL holding their commit is flushed to disk.
//! - `projections.db`, written by the [`projector`]: it follows the log in order and applies each event to the
//!   identity graph, the profiles and the timelines ([`process`]), storing the log position applied in the same
//!   transaction. It may run behind the log under load; [`Stats`] shows by how much.
//!
//! [`rebuild`] replays the whole log into an empty `projections.db` with the same code.
//! [`read`] answers profile and timeline queries from pooled read-only connections that see both files.
//! [`workspace`] creates workspaces and their keys (only hashes are stored) and authenticates keys.

mod backfill;
mod decide;
mod dedup;
pub mod deliveries;
mod evaluator;
pub mod journeys;
mod outbox;
mod process;
mod projector;
pub mod read;
mod schema;
pub mod segments;
pub mod workspace;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;

use rusqlite::{Connection, OpenFlags};
use seam_core::{IdentifierRules, Seq};
use tokio::sync::{oneshot, watch};

pub use read::{ProfileRef, ProfileView, TimelineEntry, TimelinePage};
pub use workspace::{Credentials, KeyKind, WorkspaceKey};

/// Storage failures. Callers map them to HTTP 503 (retry) or 500.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("stored JSON could not be read: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the write queue is full")]
    Overloaded,
    #[error("the store is shut down")]
    Closed,
    #[error("the event log could not be written")]
    Unavailable,
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("{file} was written by a newer version of Seam (schema version {found}; this one knows up to {known})")]
    NewerSchema {
        file: String,
        found: i64,
        known: i64,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Tuning of the log writer.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Batches waiting for the writer before `append` answers [`StoreError::Overloaded`].
    pub queue_capacity: usize,
    /// Most events appended in one transaction.
    pub max_commit_events: usize,
    /// The delivery rules journeys send under.
    pub delivery: journeys::Delivery,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4_096,
            max_commit_events: 20_000,
            delivery: journeys::Delivery::default(),
        }
    }
}

/// Counters the writer keeps; read by `/metrics` and `/healthz`.
#[derive(Debug, Default)]
pub struct Stats {
    /// Events appended to the log (each messageId once).
    pub stored: AtomicU64,
    /// Events skipped because their messageId was already in the log.
    pub deduplicated: AtomicU64,
    /// Highest log position written.
    pub log_seq: AtomicI64,
    /// Highest log position applied to the projections.
    pub applied_seq: AtomicI64,
    /// Receive time of the last applied event (for the processing lag in seconds).
    pub applied_received_at: AtomicI64,
    /// Seam's own events decided by the projector and not yet seen back in the log.
    pub pending_system: AtomicI64,
    /// Decision work still queued: profiles waiting for their segments to be evaluated (a backfill shows
    /// here), events for journeys, due timers; each kind counted up to 10,000.
    pub pending_evaluations: AtomicI64,
    /// Profiles whose segments were decided from what an evaluator thread found on a snapshot.
    pub evaluated_apart: AtomicU64,
    /// Profiles an evaluator thread evaluated that changed before what it found could be written, so were
    /// left queued to be evaluated again.
    pub evaluated_again: AtomicU64,
    /// The last poke generation a projector pass answered.
    pub passes: AtomicU64,
    /// Group commits done.
    pub commits: AtomicU64,
    /// WALs (the log's or the projections') started over once past their limit.
    pub wal_restarts: AtomicU64,
    /// WALs past their limit whose start over was put off to a later try: a reader still held it, or more was
    /// left to copy than may be copied while writes wait. Rising while `wal_restarts` stays means the WAL keeps
    /// growing.
    pub wal_restarts_deferred: AtomicU64,
    /// Bytes of frames in the log's WAL and in the projections' when they were last copied into their files
    /// (0 once started over): the projector starts a WAL over only when this says it is past its limit.
    pub log_wal_held: AtomicU64,
    pub projections_wal_held: AtomicU64,
    /// How long each batch waited for the group commit that holds it to start.
    pub commit_wait: seam_core::histogram::Histogram,
    /// How long each group commit took, from its start until the WAL holding it was flushed to disk.
    pub commit: seam_core::histogram::Histogram,
}

/// One event as the log stores it: the columns and the JSON body. Built in the caller's thread, so that the log
/// writer (a serial stage) only copies bytes.
#[derive(Debug, Clone)]
pub struct LogRow {
    pub message_id: String,
    pub kind: &'static str,
    pub name: Option<String>,
    pub timestamp: seam_core::Millis,
    pub received_at: seam_core::Millis,
    pub json: String,
}

impl From<seam_ingest::Accepted> for LogRow {
    fn from(a: seam_ingest::Accepted) -> Self {
        Self {
            message_id: a.message_id,
            kind: a.kind.as_str(),
            name: a.name,
            timestamp: a.timestamp,
            received_at: a.received_at,
            json: a.json,
        }
    }
}

impl LogRow {
    pub fn new(e: seam_core::Event, json: String) -> Self {
        Self {
            kind: e.kind.as_str(),
            timestamp: e.timestamp,
            received_at: e.received_at,
            message_id: e.message_id,
            name: e.event,
            json,
        }
    }
}

/// What one `append` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AppendOutcome {
    pub stored: usize,
    pub duplicates: usize,
}

pub(crate) enum Command {
    Append {
        ws: i64,
        events: Vec<LogRow>,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
        /// Started when the batch was handed to the writer.
        queued: seam_core::clock::Stopwatch,
    },
    /// Seam's own events from the projector.
    System { events: Vec<outbox::Emitted> },
}

impl Command {
    fn len(&self) -> usize {
        match self {
            Self::Append { events, .. } => events.len(),
            Self::System { events } => events.len(),
        }
    }
}

struct Shared {
    dir: PathBuf,
    tx: Mutex<Option<SyncSender<Command>>>,
    readers: Mutex<Vec<Connection>>,
    keys: RwLock<HashMap<[u8; 32], (WorkspaceKey, KeyKind)>>,
    rules: RwLock<HashMap<i64, Arc<IdentifierRules>>>,
    stats: Arc<Stats>,
    applied: watch::Receiver<Seq>,
    wakeup: Arc<projector::Wakeup>,
    writer: Mutex<Option<JoinHandle<()>>>,
    projector: Mutex<Option<JoinHandle<()>>>,
    checkpointer: Mutex<Option<writer::Checkpointer>>,
}

impl Drop for Shared {
    /// The last handle gone: the projector stops, which lets the log writer stop too.
    fn drop(&mut self) {
        self.wakeup.stop();
    }
}

/// A handle on the data folder's databases; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

/// The log database of a data folder.
pub const DB_FILE: &str = "seam.db";
/// The projections database of a data folder.
pub const PROJECTIONS_FILE: &str = "projections.db";
/// The name of the thread that applies the log to the projections and decides (what profilers and `/proc` show).
pub const PROJECTOR_THREAD: &str = "seam-projector";

pub(crate) fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI
    };
    let conn = Connection::open_with_flags(path, flags)?;
    wait_for_locks(&conn, LockWait::Long)?;
    // Every statement the projector runs stays prepared (it runs well over a hundred distinct ones).
    conn.set_prepared_statement_cache_capacity(256);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// A write transaction on the projections of the projector's connection, which has the log attached. `BEGIN
/// IMMEDIATE` would also begin a read of every attached database, and a read of the log held for as long as the
/// transaction (a step takes seconds) keeps its checkpointer from copying the WAL past it or starting it over.
/// Begun deferred, the transaction reads the log only if a statement of it does; its first statement writes, so
/// the projections' write lock is taken (waiting as the busy timeout allows) before anything is read.
pub(crate) fn write_projections(
    conn: &mut Connection,
) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Deferred)?;
    tx.prepare_cached("UPDATE main.meta SET value = value WHERE key = 'applied_seq'")?
        .execute([])?;
    Ok(tx)
}

/// How long a connection waits for another's lock before its statement fails with "database is locked".
pub(crate) const BUSY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a connection waits for another's lock: [`BUSY_TIMEOUT`], or [`writer::RESTART_WAIT`] for one
/// that holds others back while it waits (a WAL being started over).
#[derive(Debug, Clone, Copy)]
pub(crate) enum LockWait {
    Long,
    Brief,
}

/// Makes `conn` wait for another connection's lock as `wait` says, trying again every 100 µs for the first
/// 10 ms and every millisecond after that. SQLite's own handler sleeps 1, 2, 5, 10, 15, 20 ms… between tries,
/// so a group commit that met a lock held for a millisecond (a WAL being started over) went on 18 ms or more
/// later.
pub(crate) fn wait_for_locks(conn: &Connection, wait: LockWait) -> rusqlite::Result<()> {
    fn long(tries: i32) -> bool {
        try_again(tries, BUSY_TIMEOUT)
    }
    fn brief(tries: i32) -> bool {
        try_again(tries, writer::RESTART_WAIT)
    }
    conn.busy_handler(Some(match wait {
        LockWait::Long => long,
        LockWait::Brief => brief,
    }))
}

/// Whether to try a locked database again after `tries` tries, waiting at most about `limit` in all (the
/// sleeps themselves may run a little longer than asked).
fn try_again(tries: i32, limit: std::time::Duration) -> bool {
    let Some(step) = next_wait(tries, limit) else {
        return false;
    };
    std::thread::sleep(step);
    true
}

/// How long to sleep before the next try, after `tries` tries, or `None` once `limit` is spent.
fn next_wait(tries: i32, limit: std::time::Duration) -> Option<std::time::Duration> {
    use std::time::Duration;
    const FINE: u32 = 100;
    const FINE_STEP: Duration = Duration::from_micros(100);
    const STEP: Duration = Duration::from_millis(1);
    let tries = u32::try_from(tries).unwrap_or(0);
    let (waited, step) = if tries < FINE {
        (FINE_STEP * tries, FINE_STEP)
    } else {
        (FINE_STEP * FINE + STEP * (tries - FINE), STEP)
    };
    (waited < limit).then_some(step)
}

/// A read-only connection on the log with the projections attached as `p`.
pub(crate) fn open_reader(dir: &Path) -> rusqlite::Result<Connection> {
    let conn = open_connection(&dir.join(DB_FILE), true)?;
    let uri = format!("file:{}?mode=ro", dir.join(PROJECTIONS_FILE).display());
    conn.execute("ATTACH DATABASE ?1 AS p", [uri])?;
    Ok(conn)
}

/// Creates the data folder and its databases if needed and applies migrations.
pub fn prepare(data_dir: &Path) -> Result<(), StoreError> {
    std::fs::create_dir_all(data_dir)?;
    let mut log = open_connection(&data_dir.join(DB_FILE), false)?;
    schema::migrate(&mut log, schema::LOG_MIGRATIONS)?;
    let mut proj = open_connection(&data_dir.join(PROJECTIONS_FILE), false)?;
    schema::migrate(&mut proj, schema::PROJECTION_MIGRATIONS)?;
    Ok(())
}

impl Store {
    /// Opens the store in `data_dir` (migrating it) and starts the log writer and the projector.
    /// `clock` decides when time-driven segment changes are due.
    pub fn open(
        data_dir: &Path,
        opts: StoreOptions,
        clock: Arc<dyn seam_core::Clock>,
    ) -> Result<Self, StoreError> {
        prepare(data_dir)?;
        let log = open_connection(&data_dir.join(DB_FILE), false)?;
        let keys = workspace::load_keys(&log)?;
        let rules = workspace::load_rules(&log)?;
        let stats = Arc::new(Stats::default());
        let wakeup = Arc::new(projector::Wakeup::default());
        let (tx, rx) = sync_channel(opts.queue_capacity);
        let delivery = opts.delivery.clone();
        let wal = writer::WalFile::open(data_dir.join(format!("{DB_FILE}-wal")))?;
        let writer =
            writer::Writer::start(log, Box::new(wal), rx, opts, stats.clone(), wakeup.clone())?;
        wakeup.log_advanced(stats.log_seq.load(Ordering::SeqCst));
        let (applied_tx, applied_rx) = watch::channel(0);
        let projections = open_connection(&data_dir.join(PROJECTIONS_FILE), false)?;
        // A checkpointer thread of its own copies the projections' WAL: the projector never stops to do it in a commit.
        projections.pragma_update(None, "wal_autocheckpoint", 0)?;
        let projector = projector::Projector::open(
            projections,
            open_connection(&data_dir.join(DB_FILE), true)?,
            rules.clone(),
            delivery,
        )?
        .restarting_wal(data_dir.join(format!("{PROJECTIONS_FILE}-wal")))
        .evaluating(
            (0..evaluator::threads())
                .map(|_| {
                    let c = open_connection(&data_dir.join(PROJECTIONS_FILE), true)?;
                    let uri = format!("file:{}?mode=ro", data_dir.join(DB_FILE).display());
                    c.execute("ATTACH DATABASE ?1 AS log", [uri])?;
                    Ok(c)
                })
                .collect::<rusqlite::Result<_>>()?,
        )?
        .start(tx.clone(), wakeup.clone(), stats.clone(), applied_tx, clock)?;
        let checkpointer = writer::Checkpointer::start(
            vec![
                (data_dir.join(DB_FILE), writer::LOG_WAL_LIMITS, |s| {
                    &s.log_wal_held
                }),
                (
                    data_dir.join(PROJECTIONS_FILE),
                    writer::PROJECTIONS_WAL_LIMITS,
                    |s| &s.projections_wal_held,
                ),
            ],
            Arc::downgrade(&stats),
        )?;
        let shared = Shared {
            dir: data_dir.to_path_buf(),
            tx: Mutex::new(Some(tx)),
            readers: Mutex::new(Vec::new()),
            keys: RwLock::new(keys),
            rules: RwLock::new(rules.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            stats,
            applied: applied_rx,
            wakeup,
            writer: Mutex::new(Some(writer)),
            projector: Mutex::new(Some(projector)),
            checkpointer: Mutex::new(Some(checkpointer)),
        };
        Ok(Self {
            shared: Arc::new(shared),
        })
    }

    /// Appends accepted events of workspace `ws` and resolves once they are durable.
    /// Answers [`StoreError::Overloaded`] at once when the writer's queue is full.
    pub async fn append(
        &self,
        ws: WorkspaceKey,
        events: Vec<LogRow>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
            queued: seam_core::clock::Stopwatch::start(),
            ws: ws.0,
            events,
            reply,
        })?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    fn send(&self, cmd: Command) -> Result<(), StoreError> {
        let guard = self.shared.tx.lock().expect("sender lock");
        let tx = guard.as_ref().ok_or(StoreError::Closed)?;
        tx.try_send(cmd).map_err(|e| match e {
            TrySendError::Full(_) => StoreError::Overloaded,
            TrySendError::Disconnected(_) => StoreError::Closed,
        })
    }

    /// Sets the identifier rules of a workspace (from configuration); they apply to events processed from now on.
    pub fn set_identifier_rules(
        &self,
        ws: WorkspaceKey,
        rules: IdentifierRules,
    ) -> Result<(), StoreError> {
        let conn = open_connection(&self.shared.dir.join(DB_FILE), false)?;
        workspace::save_rules(&conn, ws.0, &rules)?;
        self.shared
            .rules
            .write()
            .expect("rules lock")
            .insert(ws.0, Arc::new(rules.clone()));
        self.shared.wakeup.set_rules(ws.0, rules);
        Ok(())
    }

    /// The identifier rules of a workspace.
    pub fn identifier_rules(&self, ws: WorkspaceKey) -> Arc<IdentifierRules> {
        self.shared
            .rules
            .read()
            .expect("rules lock")
            .get(&ws.0)
            .cloned()
            .unwrap_or_default()
    }

    /// The workspace and kind of an API key, if it is one.
    pub fn authenticate(&self, key: &str) -> Option<(WorkspaceKey, KeyKind)> {
        self.shared
            .keys
            .read()
            .expect("keys lock")
            .get(&workspace::hash_key(key))
            .copied()
    }

    /// Re-reads keys from the database (after `seam init` created some).
    pub fn reload_keys(&self) -> Result<(), StoreError> {
        let conn = self.reader()?;
        let keys = workspace::load_keys(&conn);
        self.put_reader(conn);
        *self.shared.keys.write().expect("keys lock") = keys?;
        Ok(())
    }

    pub fn stats(&self) -> &Stats {
        &self.shared.stats
    }

    /// Resolves once every event written so far is applied to the projections, Seam's own events included.
    pub async fn caught_up(&self) {
        let stats = &self.shared.stats;
        let mut rx = self.shared.applied.clone();
        loop {
            // A pass that starts after this point has seen everything written so far and the clock as it is now.
            let pass = self.shared.wakeup.poke();
            let target = stats.log_seq.load(Ordering::SeqCst);
            let done =
                |applied: &Seq| *applied >= target && stats.passes.load(Ordering::SeqCst) >= pass;
            if rx.wait_for(done).await.is_err() {
                return;
            }
            if stats.pending_system.load(Ordering::SeqCst) <= 0
                && stats.pending_evaluations.load(Ordering::SeqCst) <= 0
                && stats.log_seq.load(Ordering::SeqCst) == target
            {
                return;
            }
        }
    }

    /// Asks the projector for a pass now (after moving a virtual clock, for instance).
    pub fn poke(&self) {
        self.shared.wakeup.poke();
    }

    pub(crate) fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.shared.readers.lock().expect("readers lock").pop() {
            return Ok(c);
        }
        Ok(open_reader(&self.shared.dir)?)
    }

    pub(crate) fn put_reader(&self, conn: Connection) {
        let mut pool = self.shared.readers.lock().expect("readers lock");
        if pool.len() < 8 {
            pool.push(conn);
        }
    }

    /// Runs `f` on a pooled read-only connection (call from a blocking context).
    pub fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader()?;
        let out = f(&conn);
        self.put_reader(conn);
        out
    }

    /// Stops the projector, stops taking appends, lets the writer finish what it holds, and waits for both and for
    /// the WAL checkpointer.
    pub fn shutdown(&self) {
        self.shared.wakeup.stop();
        if let Some(handle) = self.shared.projector.lock().expect("projector lock").take() {
            let _ = handle.join();
        }
        self.shared.tx.lock().expect("sender lock").take();
        if let Some(handle) = self.shared.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
        if let Some(checkpointer) = self
            .shared
            .checkpointer
            .lock()
            .expect("checkpointer lock")
            .take()
        {
            checkpointer.stop();
        }
    }
}

/// Replays the whole log of the data folder into empty projections. Returns the events applied.
pub fn rebuild(data_dir: &Path) -> Result<u64, StoreError> {
    prepare(data_dir)?;
    let log = open_connection(&data_dir.join(DB_FILE), true)?;
    let rules = workspace::load_rules(&log)?;
    let proj = open_connection(&data_dir.join(PROJECTIONS_FILE), false)?;
    proj.execute_batch("BEGIN")?;
    for table in schema::PROJECTION_TABLES
        .iter()
        .chain(schema::SCHEDULE_TABLES)
    {
        proj.execute(&format!("DELETE FROM {table}"), [])?;
    }
    let max_seq: Seq =
        log.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
    // Membership changes up to here are in the log already: they are replayed, not decided again.
    proj.execute("UPDATE meta SET value = 0 WHERE key = 'applied_seq'", [])?;
    proj.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'decide_after'",
        [max_seq],
    )?;
    proj.execute_batch("COMMIT")?;
    let mut projector =
        projector::Projector::open(proj, log, rules, journeys::Delivery::default())?;
    let mut total = 0u64;
    while projector.applied_seq < max_seq {
        // System events decided again are already in the log (found there later in the replay), so they are
        // not appended; any never appended stay in the outbox for the next `seam serve` to append.
        total += projector
            .step(max_seq, &seam_core::clock::SystemClock)?
            .applied as u64;
    }
    projector.queue_everyone()?;
    Ok(total)
}

/// A stable text dump of every projection table, for comparing a rebuilt store with a live one.
pub fn dump_projections(data_dir: &Path) -> Result<String, StoreError> {
    let conn = open_connection(&data_dir.join(PROJECTIONS_FILE), true)?;
    let mut out = String::new();
    for table in schema::PROJECTION_TABLES {
        // The outbox's row numbers are not compared: a live store and a rebuilt one number their rows apart.
        let columns = if *table == "outbox" {
            "ws, message_id, body"
        } else {
            "*"
        };
        let cols = conn
            .prepare(&format!("SELECT {columns} FROM {table}"))?
            .column_count();
        let order: Vec<String> = (1..=cols).map(|i| i.to_string()).collect();
        let mut stmt = conn.prepare(&format!(
            "SELECT {columns} FROM {table} ORDER BY {}",
            order.join(", ")
        ))?;
        let cols = stmt.column_count();
        let mut rows = stmt.query([])?;
        out.push_str(&format!("## {table}\n"));
        while let Some(row) = rows.next()? {
            let vals: Vec<String> = (0..cols)
                .map(|i| match row.get_ref(i) {
                    Ok(rusqlite::types::ValueRef::Text(t)) => {
                        format!("{:?}", String::from_utf8_lossy(t))
                    }
                    Ok(v) => format!("{v:?}"),
                    Err(e) => format!("<{e}>"),
                })
                .collect();
            out.push_str(&vals.join("|"));
            out.push('\n');
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::next_wait;

    #[test]
    fn a_locked_database_is_tried_again_finely_at_first_then_each_millisecond_until_the_limit() {
        let limit = Duration::from_millis(15);
        let waits: Vec<Duration> = (0..).map_while(|t| next_wait(t, limit)).collect();
        assert_eq!(waits[0], Duration::from_micros(100));
        assert_eq!(waits[99], Duration::from_micros(100));
        assert_eq!(waits[100], Duration::from_millis(1));
        assert_eq!(waits.len(), 105);
        assert_eq!(waits.iter().sum::<Duration>(), limit);
        assert_eq!(next_wait(0, Duration::ZERO), None);
    }
}

//! Seam's storage on SQLite: the event log and the projections built from it.
//!
//! - [`Store::open`] opens (and migrates) `seam.db` in a data folder and starts the **writer**: one thread that
//!   owns the only write connection. Ingest hands it batches with [`Store::append`]; it gathers every batch that
//!   is waiting into one transaction (group commit), appends the events (a `(workspace, messageId)` seen before
//!   is skipped), applies them to the projections and commits with `synchronous=FULL` before any batch in it is
//!   acknowledged. When events arrive faster than they can be applied, the log runs ahead and the writer catches
//!   up between commits; [`Stats`] shows the lag.
//! - [`process`] holds the projection logic shared by the live writer and [`rebuild`].
//! - [`read`] answers profile and timeline queries from a small pool of read-only connections (WAL readers never
//!   block the writer).
//! - [`workspace`] creates workspaces and their keys, and authenticates keys (only hashes are stored).

mod process;
pub mod read;
mod schema;
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
use seam_ingest::Accepted;
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
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Batches waiting for the writer before `append` answers [`StoreError::Overloaded`].
    pub queue_capacity: usize,
    /// Most events appended in one transaction.
    pub max_commit_events: usize,
    /// Most events applied to projections in one transaction (bounds how long an acknowledgement waits).
    pub apply_budget: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            queue_capacity: 4_096,
            max_commit_events: 20_000,
            apply_budget: 4_000,
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
    /// Group commits done.
    pub commits: AtomicU64,
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
        events: Vec<Accepted>,
        reply: oneshot::Sender<Result<AppendOutcome, StoreError>>,
    },
    SetRules {
        ws: i64,
        rules: IdentifierRules,
    },
}

struct Shared {
    path: PathBuf,
    tx: Mutex<Option<SyncSender<Command>>>,
    readers: Mutex<Vec<Connection>>,
    keys: RwLock<HashMap<[u8; 32], (WorkspaceKey, KeyKind)>>,
    rules: RwLock<HashMap<i64, Arc<IdentifierRules>>>,
    stats: Arc<Stats>,
    applied: watch::Receiver<Seq>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

/// A handle on the data folder's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

pub const DB_FILE: &str = "seam.db";

pub(crate) fn open_connection(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(64);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
    }
    conn.pragma_update(None, "cache_size", -65_536)?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Creates the data folder and its database if needed and applies migrations.
pub fn prepare(data_dir: &Path) -> Result<PathBuf, StoreError> {
    std::fs::create_dir_all(data_dir)?;
    let path = data_dir.join(DB_FILE);
    let mut conn = open_connection(&path, false)?;
    schema::migrate(&mut conn)?;
    Ok(path)
}

impl Store {
    /// Opens the store in `data_dir` (migrating it) and starts the writer thread.
    pub fn open(data_dir: &Path, opts: StoreOptions) -> Result<Self, StoreError> {
        let path = prepare(data_dir)?;
        let conn = open_connection(&path, false)?;
        let keys = workspace::load_keys(&conn)?;
        let rules = workspace::load_rules(&conn)?;
        let stats = Arc::new(Stats::default());
        let (tx, rx) = sync_channel(opts.queue_capacity);
        let (applied_tx, applied_rx) = watch::channel(0);
        let writer =
            writer::Writer::start(conn, rx, opts, rules.clone(), stats.clone(), applied_tx)?;
        let shared = Shared {
            path,
            tx: Mutex::new(Some(tx)),
            readers: Mutex::new(Vec::new()),
            keys: RwLock::new(keys),
            rules: RwLock::new(rules.into_iter().map(|(k, v)| (k, Arc::new(v))).collect()),
            stats,
            applied: applied_rx,
            writer: Mutex::new(Some(writer)),
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
        events: Vec<Accepted>,
    ) -> Result<AppendOutcome, StoreError> {
        if events.is_empty() {
            return Ok(AppendOutcome::default());
        }
        let (reply, rx) = oneshot::channel();
        self.send(Command::Append {
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
        let conn = open_connection(&self.shared.path, false)?;
        workspace::save_rules(&conn, ws.0, &rules)?;
        self.shared
            .rules
            .write()
            .expect("rules lock")
            .insert(ws.0, Arc::new(rules.clone()));
        // Blocking send: configuration happens at start, before traffic.
        let guard = self.shared.tx.lock().expect("sender lock");
        guard
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(Command::SetRules { ws: ws.0, rules })
            .map_err(|_| StoreError::Closed)
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

    /// Resolves once every event written so far (up to the current log position) is applied to the projections.
    pub async fn caught_up(&self) {
        let target = self.shared.stats.log_seq.load(Ordering::SeqCst);
        let mut rx = self.shared.applied.clone();
        let _ = rx.wait_for(|&applied| applied >= target).await;
    }

    pub(crate) fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.shared.readers.lock().expect("readers lock").pop() {
            return Ok(c);
        }
        Ok(open_connection(&self.shared.path, true)?)
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

    /// Stops taking appends, lets the writer finish what it holds, and waits for it.
    pub fn shutdown(&self) {
        self.shared.tx.lock().expect("sender lock").take();
        if let Some(handle) = self.shared.writer.lock().expect("writer lock").take() {
            let _ = handle.join();
        }
    }
}

/// Replays the whole log of the database in `data_dir` into fresh projections. Returns the events applied.
pub fn rebuild(data_dir: &Path) -> Result<u64, StoreError> {
    let path = prepare(data_dir)?;
    let mut conn = open_connection(&path, false)?;
    let rules = workspace::load_rules(&conn)?;
    writer::rebuild(&mut conn, rules)
}

/// A stable text dump of every projection table, for comparing a rebuilt store with a live one.
pub fn dump_projections(data_dir: &Path) -> Result<String, StoreError> {
    let conn = open_connection(&data_dir.join(DB_FILE), true)?;
    let mut out = String::new();
    for table in schema::PROJECTION_TABLES {
        let mut stmt = conn.prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2, 3, 4"))?;
        let cols = stmt.column_count();
        let mut rows = stmt.query([])?;
        out.push_str(&format!("## {table}\n"));
        while let Some(row) = rows.next()? {
            let vals: Vec<String> = (0..cols)
                .map(|i| match row.get_ref(i) {
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

//! The log writer: one thread, the only writer of `seam.db`. Every batch waiting when it wakes goes into one
//! transaction (group commit). COMMIT writes the transaction to the WAL without waiting for the disk
//! (`synchronous=NORMAL` on this connection); a second thread, the [`Syncer`], flushes the WAL file and only
//! then acknowledges the batches and lets the projector read the events. So the writer builds the next
//! transaction while the disk takes the last one, and one flush covers every commit made while the one before
//! it ran.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection, TransactionBehavior};
use seam_core::clock::Stopwatch;
use seam_core::Seq;
use tokio::sync::oneshot;

use crate::dedup::{self, MessageIds};
use crate::projector::Wakeup;
use crate::{AppendOutcome, Command, LogRow, Stats, StoreError, StoreOptions};

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

pub(crate) struct Writer {
    conn: Connection,
    ids: MessageIds,
    rx: Receiver<Command>,
    opts: StoreOptions,
    stats: Arc<Stats>,
    /// The last log position committed (not necessarily on disk yet).
    committed_seq: Seq,
    to_syncer: Option<Sender<Committed>>,
    /// Set by the syncer when the WAL could not be flushed: nothing more is acknowledged.
    failed: Arc<AtomicBool>,
}

impl Writer {
    /// Starts the writer and its syncer on the log's connection; `wal` flushes the log's WAL file.
    pub(crate) fn start(
        mut conn: Connection,
        mut wal: Box<dyn Flush>,
        rx: Receiver<Command>,
        opts: StoreOptions,
        stats: Arc<Stats>,
        wakeup: Arc<Wakeup>,
    ) -> Result<JoinHandle<()>, StoreError> {
        // Checkpoints run from another connection so that the writer never copies the WAL itself.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // COMMIT does not wait for the disk: the syncer flushes the WAL before anything is acknowledged.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        let max_seq: Seq =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        // What a process that stopped left in the WAL may not be on the disk yet: it is, before anyone reads it.
        wal.flush()?;
        stats.log_seq.store(max_seq, Ordering::SeqCst);
        let ids = MessageIds::load(&mut conn, dedup::GENERATION)?;
        let failed = Arc::new(AtomicBool::new(false));
        let (to_syncer, syncer_rx) = channel();
        let syncer = Syncer {
            wal,
            rx: syncer_rx,
            stats: stats.clone(),
            wakeup,
            failed: failed.clone(),
        };
        let syncer = std::thread::Builder::new()
            .name("seam-log-sync".into())
            .spawn(move || syncer.run())
            .map_err(StoreError::Io)?;
        let mut w = Writer {
            conn,
            ids,
            rx,
            opts,
            stats,
            committed_seq: max_seq,
            to_syncer: Some(to_syncer),
            failed,
        };
        std::thread::Builder::new()
            .name("seam-writer".into())
            .spawn(move || {
                w.run();
                // The syncer ends once it has flushed and acknowledged every commit handed to it.
                w.to_syncer.take();
                let _ = syncer.join();
            })
            .map_err(StoreError::Io)
    }

    fn run(&mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut commands = vec![first];
            let mut events = commands[0].len();
            while events < self.opts.max_commit_events {
                match self.rx.try_recv() {
                    Ok(c) => {
                        events += c.len();
                        commands.push(c);
                    }
                    Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
                }
            }
            self.round(commands);
        }
    }

    /// One transaction: append everything gathered, commit, and hand the batches to the syncer.
    fn round(&mut self, commands: Vec<Command>) {
        let took = Stopwatch::start();
        let mut replies: Vec<(Reply, AppendOutcome)> = Vec::new();
        if self.failed.load(Ordering::SeqCst) {
            for cmd in commands {
                if let Command::Append { reply, .. } = cmd {
                    let _ = reply.send(Err(StoreError::Unavailable));
                }
            }
            return;
        }
        let result = (|| -> Result<(Option<Seq>, dedup::Written), StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut last = None;
            let mut appender = Appender::new(&tx)?;
            for cmd in commands {
                match cmd {
                    Command::Append {
                        ws,
                        events,
                        reply,
                        queued,
                    } => {
                        self.stats.commit_wait.observe(queued.elapsed());
                        let mut outcome = AppendOutcome::default();
                        for a in &events {
                            match appender.append(&mut self.ids, ws, a)? {
                                Some(seq) => {
                                    last = Some(seq);
                                    outcome.stored += 1;
                                }
                                None => outcome.duplicates += 1,
                            }
                        }
                        replies.push((reply, outcome));
                    }
                    Command::System { events } => {
                        for e in events {
                            if let Some(seq) = appender.append(&mut self.ids, e.ws, &e.log)? {
                                last = Some(seq);
                            }
                        }
                    }
                }
            }
            drop(appender);
            let written = self.ids.write_slice(&tx)?;
            tx.commit()?;
            Ok((last, written))
        })();
        match result {
            Ok((last, written)) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                if let Some(last) = last {
                    self.committed_seq = self.committed_seq.max(last);
                }
                self.ids.committed(written, self.committed_seq);
                // A batch of duplicates is acknowledged after the flush too: its first copies may be in a
                // commit the disk has not taken yet.
                let committed = Committed {
                    seq: self.committed_seq,
                    replies,
                    took,
                };
                if let Some(to_syncer) = &self.to_syncer {
                    let _ = to_syncer.send(committed);
                }
            }
            Err(e) => {
                self.ids.failed();
                tracing::error!(error = %e, "group commit failed; the batches in it were not acknowledged");
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Unavailable));
                }
            }
        }
    }
}

/// A group commit in the WAL, waiting for the WAL to reach the disk.
struct Committed {
    /// The log ends here once it is on disk.
    seq: Seq,
    replies: Vec<(Reply, AppendOutcome)>,
    took: Stopwatch,
}

/// Makes what was written to a file durable.
pub(crate) trait Flush: Send {
    fn flush(&mut self) -> std::io::Result<()>;
}

/// The log's WAL file, flushed with `fdatasync` through a descriptor of its own.
pub(crate) struct WalFile {
    path: std::path::PathBuf,
    file: std::fs::File,
}

impl WalFile {
    /// Opens the WAL of a database whose connection is open in WAL mode (SQLite has created the file).
    pub(crate) fn open(path: std::path::PathBuf) -> std::io::Result<Self> {
        let file = std::fs::File::open(&path).map_err(|e| {
            std::io::Error::new(e.kind(), format!("opening {}: {e}", path.display()))
        })?;
        Ok(WalFile { path, file })
    }
}

impl Flush for WalFile {
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.sync_data()?;
        // SQLite deletes a WAL only after copying all of it into the database file and flushing that file, so
        // the file flushed above held nothing that is not on disk; a new one is the one to flush from now on.
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() != self.file.metadata()?.ino() => {
                    self.file = std::fs::File::open(&self.path)?;
                    self.file.sync_data()?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// Flushes the log's WAL after group commits and only then acknowledges their batches and shows their events
/// to the projector (so nothing it applies can be lost from the log). Every commit made while one flush runs
/// is covered by the next.
struct Syncer {
    wal: Box<dyn Flush>,
    rx: Receiver<Committed>,
    stats: Arc<Stats>,
    wakeup: Arc<Wakeup>,
    failed: Arc<AtomicBool>,
}

impl Syncer {
    fn run(mut self) {
        while let Ok(first) = self.rx.recv() {
            let mut done = vec![first];
            while let Ok(c) = self.rx.try_recv() {
                done.push(c);
            }
            if self.failed.load(Ordering::SeqCst) {
                Self::refuse(done);
                continue;
            }
            if let Err(e) = self.wal.flush() {
                // After a failed flush the kernel may have dropped the pages it could not write, so a later
                // flush that succeeds proves nothing: stop acknowledging until a restart reads the log again.
                self.failed.store(true, Ordering::SeqCst);
                tracing::error!(error = %e, "the log's WAL could not be flushed to disk; no batch is acknowledged until Seam is restarted");
                Self::refuse(done);
                continue;
            }
            let s = &self.stats;
            let seq = done.iter().map(|c| c.seq).max().unwrap_or(0);
            if s.log_seq.fetch_max(seq, Ordering::SeqCst) < seq {
                self.wakeup.log_advanced(seq);
            }
            for c in done {
                s.commit.observe(c.took.elapsed());
                for (reply, outcome) in c.replies {
                    s.stored.fetch_add(outcome.stored as u64, Ordering::Relaxed);
                    s.deduplicated
                        .fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
                    let _ = reply.send(Ok(outcome));
                }
            }
        }
    }

    fn refuse(done: Vec<Committed>) {
        for c in done {
            for (reply, _) in c.replies {
                let _ = reply.send(Err(StoreError::Unavailable));
            }
        }
    }
}

/// The statements a group commit runs for each event, prepared once for all of them.
struct Appender<'t> {
    insert: rusqlite::CachedStatement<'t>,
    on_disk: rusqlite::CachedStatement<'t>,
}

impl<'t> Appender<'t> {
    fn new(tx: &'t Connection) -> Result<Self, StoreError> {
        Ok(Self {
            insert: tx.prepare_cached(
                "INSERT INTO events (ws, message_id, type, name, ts, received_at, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?,
            on_disk: tx.prepare_cached(dedup::ON_DISK)?,
        })
    }

    /// Appends one event unless its workspace already holds its messageId; returns its log position if stored.
    fn append(
        &mut self,
        ids: &mut MessageIds,
        ws: i64,
        r: &LogRow,
    ) -> Result<Option<Seq>, StoreError> {
        let k = dedup::key(ws, &r.message_id);
        if ids.contains_by(&mut self.on_disk, k)? {
            return Ok(None);
        }
        let seq = self.insert.insert(params![
            ws,
            r.message_id,
            r.kind,
            r.name,
            r.timestamp,
            r.received_at,
            r.json
        ])?;
        ids.add(k);
        Ok(Some(seq))
    }
}

/// When a WAL is started over (see [`checkpoint`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct WalLimits {
    /// A WAL holding more than this many bytes of frames is started over once they are in the database file.
    pub restart_above: u64,
    /// ... only when at most this many frames are left to copy: they are copied while new writes wait, so this
    /// bounds how long a group commit can be held back.
    pub left_at_most: i64,
    /// A WAL file larger than this (it grew while a reader held it) is truncated rather than reused when it is
    /// started over, so that the disk it holds stays bounded.
    pub truncate_file_above: u64,
}

/// The limits of the log's WAL: started over past 256 MiB of frames, with at most 4,096 frames (16 MiB of
/// 4 KiB pages) left to copy while group commits wait — far below the writer's busy timeout, and short enough
/// not to show in acknowledgement latency; a file past 1 GiB is truncated.
pub(crate) const LOG_WAL_LIMITS: WalLimits = WalLimits {
    restart_above: 256 << 20,
    left_at_most: 4096,
    truncate_file_above: 1 << 30,
};

/// The limits of the projections' WAL. Its writer is the projector, which nobody waits for, and its pages are
/// scattered, so a passive copy falls behind a projector catching up on a backlog, and copies slower the more
/// the WAL holds (SQLite sorts every frame of the WAL at each checkpoint): with the log's bound it was never
/// started over and grew by 100 MB/s on a 20-million-event ingest. Here the projector may be held while up to
/// 256 MiB are copied.
pub(crate) const PROJECTIONS_WAL_LIMITS: WalLimits = WalLimits {
    left_at_most: 65_536,
    ..LOG_WAL_LIMITS
};

/// How long starting a WAL over waits for readers to finish before it gives up until the next try.
pub(crate) const RESTART_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// What a [`checkpoint`] did to the WAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Checkpointed {
    /// The WAL is within its limit: its frames were copied as far as readers allow.
    Copied,
    /// Past the limit, but more than [`WalLimits::left_at_most`] frames were left to copy (readers on older
    /// snapshots): starting over now would hold the writer while they are copied, so the next try does it.
    Behind { left: i64 },
    /// Past the limit, but a reader still held the WAL (or a writer its lock) after [`RESTART_WAIT`].
    Busy,
    /// Every frame is in the database file and the next write starts the WAL file over from its beginning,
    /// writing over the blocks it already has.
    Restarted,
    /// As `Restarted`, and the file, past [`WalLimits::truncate_file_above`], was emptied.
    Truncated,
}

/// Moves what it can of the WAL `wal` of `conn`'s database into the database file without blocking the writer.
/// While the writer appends and readers keep reading (the projector following the log), SQLite never gets the
/// moment with no reader on the WAL that it needs to start the WAL over: under steady load it grows without
/// bound (15 GB on a 20-million-event ingest). So once it holds more than `limits.restart_above` bytes it is
/// started over: new writes wait while the frames still to copy are copied and current readers finish. That
/// wait is bounded: it starts only once the copy without blocking left at most `limits.left_at_most` frames
/// (one that started behind held a group commit past the writer's 5 s busy timeout on a 20-million-event
/// ingest), after the pages copied so far are flushed to disk without blocking anyone, and the WAL file is
/// kept for the next writes rather than truncated (emptying a 256 MiB file took 250 ms on this machine's
/// disk, all of it holding the writer). `held_now` is set to the bytes of frames the WAL holds (0 once
/// started over), so that others can tell whether a restart is due without copying anything themselves.
pub(crate) fn checkpoint(
    conn: &Connection,
    wal: &std::path::Path,
    limits: WalLimits,
    held_now: &AtomicU64,
) -> Result<Checkpointed, StoreError> {
    // `main.`: the projector's connection has the log attached, which is not its to checkpoint.
    let passive = || -> Result<(i64, i64), StoreError> {
        Ok(
            conn.query_row("PRAGMA main.wal_checkpoint(PASSIVE)", [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })?,
        )
    };
    let (log, _) = passive()?;
    let page: i64 = conn.query_row("PRAGMA main.page_size", [], |r| r.get(0))?;
    // A frame is a page and its 24-byte header.
    let held = log.max(0) as u64 * (page as u64 + 24);
    held_now.store(held, Ordering::Relaxed);
    if held <= limits.restart_above {
        return Ok(Checkpointed::Copied);
    }
    let file = conn
        .path()
        .filter(|p| !p.is_empty())
        .map(std::path::Path::new);
    // The pages copied so far go to the disk a piece at a time (most are there already: the checkpointer
    // threads do this after every copy); the writer went on meanwhile, so what it added is copied and written
    // back too, and what is left is counted as it stands.
    if let Some(file) = file {
        write_back_in_pieces(file)?;
    }
    let (log, copied) = passive()?;
    if let Some(file) = file {
        write_back_in_pieces(file)?;
    }
    let left = log - copied;
    if left > limits.left_at_most {
        tracing::debug!(
            wal = %wal.display(),
            held,
            left,
            "the WAL is behind its copy; starting it over later"
        );
        return Ok(Checkpointed::Behind { left });
    }
    // SQLite flushes the database file only when a checkpoint copied the whole WAL; flushed here (little is
    // left after the write-backs above), the restart below has only its own pages to flush while writes wait.
    if let Some(file) = file {
        std::fs::File::open(file)?.sync_data()?;
    }
    let truncate = wal_size(wal) > limits.truncate_file_above;
    let mode = if truncate { "TRUNCATE" } else { "RESTART" };
    let busy: i64 = conn.query_row(&format!("PRAGMA main.wal_checkpoint({mode})"), [], |r| {
        r.get(0)
    })?;
    if busy != 0 {
        tracing::debug!(wal = %wal.display(), held, "the WAL could not be started over yet; trying again");
        return Ok(Checkpointed::Busy);
    }
    held_now.store(0, Ordering::Relaxed);
    Ok(if truncate {
        Checkpointed::Truncated
    } else {
        Checkpointed::Restarted
    })
}

impl Checkpointed {
    /// Counts a WAL started over, or one put off, in `stats`.
    pub(crate) fn count(self, stats: &Stats) {
        let counter = match self {
            Checkpointed::Copied => return,
            Checkpointed::Restarted | Checkpointed::Truncated => &stats.wal_restarts,
            Checkpointed::Behind { .. } | Checkpointed::Busy => &stats.wal_restarts_deferred,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// How much of a database file [`write_back_in_pieces`] writes back at a time.
const WRITE_BACK_PIECE: u64 = 1 << 20;

/// Writes the dirty pages of the file at `path` back to the disk [`WRITE_BACK_PIECE`] at a time, waiting for
/// each piece before starting the next, so that the disk's queue never holds more than one piece of it: a
/// group commit's fsync of the log's WAL waits behind at most that piece, where an fsync of the whole file
/// queued every page copied since the previous one ahead of it. Clean ranges cost a look-up in the page
/// cache. Elsewhere than on Linux this does nothing (the next fsync of the file does it all).
#[allow(unsafe_code)]
pub(crate) fn write_back_in_pieces(path: &std::path::Path) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
            | libc::SYNC_FILE_RANGE_WRITE
            | libc::SYNC_FILE_RANGE_WAIT_AFTER;
        let mut offset = 0;
        while offset < len {
            // SAFETY: `sync_file_range` takes no pointers; the descriptor is `file`'s, open for the whole loop.
            let done = unsafe {
                libc::sync_file_range(
                    file.as_raw_fd(),
                    offset as libc::off64_t,
                    WRITE_BACK_PIECE as libc::off64_t,
                    flags,
                )
            };
            if done != 0 {
                return Err(std::io::Error::last_os_error());
            }
            offset += WRITE_BACK_PIECE;
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = path;
    Ok(())
}

/// The size of the WAL file `wal` in bytes (0 when there is none).
pub(crate) fn wal_size(wal: &std::path::Path) -> u64 {
    std::fs::metadata(wal).map(|m| m.len()).unwrap_or(0)
}

/// The figure of [`Stats`] that shows what a database's WAL holds.
pub(crate) type HeldIn = fn(&Stats) -> &AtomicU64;

/// The threads, one per database, that move each WAL into its file every second without blocking the writer:
/// a slow copy of one file (the projections' pages are scattered) never delays the other's.
pub(crate) struct Checkpointer {
    stop: Arc<AtomicBool>,
    handles: Vec<JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts checkpointing `paths`, each with its limits and the figure of [`Stats`] that shows what its WAL
    /// holds; the threads end when `alive` is gone or [`Checkpointer::stop`] is called.
    pub(crate) fn start(
        paths: Vec<(std::path::PathBuf, WalLimits, HeldIn)>,
        alive: std::sync::Weak<Stats>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let mut handles = Vec::with_capacity(paths.len());
        for (path, limits, held) in paths {
            let stopped = stop.clone();
            let alive = alive.clone();
            handles.push(
                std::thread::Builder::new()
                    .name("seam-checkpoint".into())
                    .spawn(move || {
                        let wal = std::path::PathBuf::from(format!("{}-wal", path.display()));
                        let Ok(conn) = Connection::open(&path) else {
                            tracing::warn!("the checkpointer could not open its database");
                            return;
                        };
                        // Starting the WAL over holds new writes back while it waits for readers: briefly.
                        if crate::wait_for_locks(&conn, crate::LockWait::Brief).is_err() {
                            return;
                        }
                        loop {
                            std::thread::park_timeout(std::time::Duration::from_secs(1));
                            let Some(stats) = alive.upgrade() else {
                                break;
                            };
                            if stopped.load(Ordering::SeqCst) {
                                break;
                            }
                            match checkpoint(&conn, &wal, limits, held(&stats)) {
                                Ok(done) => done.count(&stats),
                                Err(e) => tracing::warn!(error = %e, "wal checkpoint failed"),
                            }
                            // Here, off the writers' threads, rather than in the fsync of a later checkpoint.
                            if let Err(e) = write_back_in_pieces(&path) {
                                tracing::warn!(error = %e, "writing a database file back failed");
                            }
                        }
                    })?,
            );
        }
        Ok(Self { stop, handles })
    }

    /// Stops the threads and waits until their connections are closed, so that nothing touches the data
    /// folder's files once the store is shut down.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        for handle in &self.handles {
            handle.thread().unpark();
        }
        for handle in self.handles {
            let _ = handle.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use rusqlite::Connection;

    use super::{checkpoint, wal_size as size, Checkpointed, WalLimits};

    /// A WAL database with automatic checkpoints off and `rows` rows of 1 KB written.
    fn written(dir: &std::path::Path, rows: usize) -> (Connection, std::path::PathBuf) {
        let path = dir.join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        conn.execute("CREATE TABLE t (x BLOB)", []).unwrap();
        insert(&conn, rows);
        (conn, dir.join("t.db-wal"))
    }

    /// Another connection on the database of [`written`], waiting at most 10 ms for a lock.
    fn open(dir: &std::path::Path) -> Connection {
        let conn = Connection::open(dir.join("t.db")).unwrap();
        conn.busy_timeout(std::time::Duration::from_millis(10))
            .unwrap();
        conn
    }

    fn rows(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap()
    }

    /// A reader in a transaction that has read the `expected` rows: it holds its snapshot of the WAL.
    fn reading(dir: &std::path::Path, expected: i64) -> Connection {
        let reader = open(dir);
        reader.execute_batch("BEGIN").unwrap();
        assert_eq!(rows(&reader), expected);
        reader
    }

    /// Limits for a test: started over past `restart_above` bytes of frames, with at most `left_at_most` left.
    fn limits(restart_above: u64, left_at_most: i64) -> WalLimits {
        WalLimits {
            restart_above,
            left_at_most,
            truncate_file_above: u64::MAX,
        }
    }

    /// Frames in the WAL (what the last writes put there since it was started over).
    fn frames(conn: &Connection) -> i64 {
        conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(1))
            .unwrap()
    }

    /// Writes `n` rows of 1 KB, a transaction each.
    fn insert(conn: &Connection, n: usize) {
        for _ in 0..n {
            conn.execute("INSERT INTO t VALUES (zeroblob(1024))", [])
                .unwrap();
        }
    }

    #[test]
    fn a_wal_past_the_limit_is_started_over_once_no_reader_holds_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = AtomicU64::new(0);
        let (writer, wal) = written(dir.path(), 1_000);
        let checkpointer = open(dir.path());

        // A reader in a transaction holds the WAL (its snapshot is in it) while the writer goes on.
        let reader = reading(dir.path(), 1_000);
        insert(&writer, 1);

        // Under the limit: the frames are copied as far as the reader allows, the file keeps its size.
        let before = size(&wal);
        assert!(before > 1_000_000, "{before}");
        assert_eq!(
            checkpoint(&checkpointer, &wal, limits(before, 0), &held).unwrap(),
            Checkpointed::Copied
        );
        assert_eq!(size(&wal), before);
        // What it holds is shown: every frame, a 4 KiB page and its header each.
        let shown = held.load(Ordering::Relaxed);
        assert_eq!(shown, frames(&checkpointer) as u64 * (4096 + 24));
        assert!(shown > 1_000_000, "{shown}");

        // Past it: not started over while the reader stays, no error, no data lost.
        assert_eq!(
            checkpoint(&checkpointer, &wal, limits(1_000, 10), &held).unwrap(),
            Checkpointed::Busy
        );
        let framed = frames(&checkpointer);
        assert!(framed > 1_000, "{framed}");
        assert!(held.load(Ordering::Relaxed) > 1_000_000);

        // Once it is done, the next pass starts it over: the next writes go to the beginning of the same file.
        reader.execute_batch("COMMIT").unwrap();
        assert_eq!(
            checkpoint(&checkpointer, &wal, limits(1_000, 10), &held).unwrap(),
            Checkpointed::Restarted
        );
        assert_eq!(
            held.load(Ordering::Relaxed),
            0,
            "started over: nothing held"
        );
        let file = size(&wal);
        insert(&writer, 10);
        assert_eq!(size(&wal), file, "the file is written over, not grown");
        assert!(frames(&checkpointer) < 50, "{}", frames(&checkpointer));
        assert_eq!(rows(&open(dir.path())), 1_011);
    }

    /// The projector checkpoints its own connection, which has the log attached: only the main database's WAL
    /// is started over.
    #[test]
    fn only_the_main_database_of_a_connection_is_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let held = AtomicU64::new(0);
        let (writer, wal) = written(dir.path(), 100);
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let (_other_writer, other_wal) = written(&other, 100);
        let other_frames = size(&other_wal);
        writer
            .execute(
                "ATTACH DATABASE ?1 AS log",
                [format!("file:{}?mode=ro", other.join("t.db").display())],
            )
            .unwrap();
        assert_eq!(
            checkpoint(&writer, &wal, limits(1_000, 10), &held).unwrap(),
            Checkpointed::Restarted
        );
        insert(&writer, 1);
        assert!(frames(&open(dir.path())) < 10);
        assert_eq!(size(&other_wal), other_frames);
        assert_eq!(rows(&open(&other)), 100);
    }

    /// The projector writes the projections on a connection with the log attached. Its transactions must not
    /// hold a read of the log, or the log's checkpointer could not start the log's WAL over while one lasts (a
    /// step takes seconds). `BEGIN IMMEDIATE` would: it begins a read of every attached database.
    #[test]
    fn a_projections_transaction_leaves_the_attached_log_free() {
        let dir = tempfile::tempdir().unwrap();
        let held = AtomicU64::new(0);
        let log = dir.path().join("log");
        std::fs::create_dir(&log).unwrap();
        let (log_writer, log_wal) = written(&log, 100);
        let (mut projections, _) = written(dir.path(), 0);
        projections
            .execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER);
                 INSERT INTO meta VALUES ('applied_seq', 0);",
            )
            .unwrap();
        projections
            .execute(
                "ATTACH DATABASE ?1 AS log",
                [format!("file:{}?mode=ro", log.join("t.db").display())],
            )
            .unwrap();
        let checkpointer = open(&log);
        let whatever_is_left = limits(1_000, i64::MAX);

        let tx = projections
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .unwrap();
        insert(&log_writer, 10);
        assert_eq!(
            checkpoint(&checkpointer, &log_wal, whatever_is_left, &held).unwrap(),
            Checkpointed::Busy,
            "held by the immediate transaction's read of the log"
        );
        tx.rollback().unwrap();

        let tx = crate::write_projections(&mut projections).unwrap();
        insert(&tx, 1);
        insert(&log_writer, 10);
        assert_eq!(
            checkpoint(&checkpointer, &log_wal, whatever_is_left, &held).unwrap(),
            Checkpointed::Restarted
        );
        tx.commit().unwrap();
        assert_eq!(rows(&projections), 1);
        assert_eq!(rows(&open(&log)), 120);
    }

    /// A WAL file that grew past its bound (a reader held it) is emptied when it is started over.
    #[test]
    fn a_wal_file_past_its_bound_is_truncated() {
        let dir = tempfile::tempdir().unwrap();
        let held = AtomicU64::new(0);
        let (writer, wal) = written(dir.path(), 100);
        let checkpointer = open(dir.path());
        let bounded = WalLimits {
            truncate_file_above: 10_000,
            ..limits(1_000, 10)
        };
        assert_eq!(
            checkpoint(&checkpointer, &wal, bounded, &held).unwrap(),
            Checkpointed::Truncated
        );
        assert_eq!(size(&wal), 0);
        insert(&writer, 1);
        assert_eq!(rows(&open(dir.path())), 101);
    }

    /// Starting a WAL over copies what is left while the writer waits: when a reader on an old snapshot kept much
    /// of the WAL from being copied, it waits for a later try rather than copy it all with the writer held back;
    /// once the copy caught up, it is started over.
    #[test]
    fn a_wal_far_behind_its_copy_is_not_started_over_until_the_copy_catches_up() {
        let dir = tempfile::tempdir().unwrap();
        let held = AtomicU64::new(0);
        let (writer, wal) = written(dir.path(), 10);
        let checkpointer = open(dir.path());
        let reader = reading(dir.path(), 10);
        insert(&writer, 500);
        let stats = crate::Stats::default();
        let behind = checkpoint(&checkpointer, &wal, limits(1_000, 100), &held).unwrap();
        match behind {
            Checkpointed::Behind { left } => assert!(left > 100, "{left}"),
            other => panic!("{other:?}"),
        }
        behind.count(&stats);
        // The same WAL with no limit on what is left would be tried (and be busy while the reader stays).
        let busy = checkpoint(&checkpointer, &wal, limits(1_000, i64::MAX), &held).unwrap();
        assert_eq!(busy, Checkpointed::Busy);
        busy.count(&stats);

        reader.execute_batch("COMMIT").unwrap();
        let restarted = checkpoint(&checkpointer, &wal, limits(1_000, 100), &held).unwrap();
        assert_eq!(restarted, Checkpointed::Restarted);
        restarted.count(&stats);
        insert(&writer, 1);
        assert!(frames(&checkpointer) < 10, "{}", frames(&checkpointer));
        // What `/metrics` shows: two put off, one done.
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        assert_eq!(load(&stats.wal_restarts_deferred), 2);
        assert_eq!(load(&stats.wal_restarts), 1);
        assert_eq!(rows(&open(dir.path())), 511);
    }

    /// A file whose length is not a whole number of pieces is written back to its end unchanged; an empty
    /// file is nothing to do; a file that is not there is an error.
    #[test]
    fn writing_a_file_back_keeps_it_whole_and_a_missing_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content: Vec<u8> = (0..(3 * super::WRITE_BACK_PIECE + 12_345))
            .map(|i| (i % 251) as u8)
            .collect();
        std::fs::write(&path, &content).unwrap();
        super::write_back_in_pieces(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), content);
        super::write_back_in_pieces(&dir.path().join("empty")).unwrap_err();
        std::fs::write(dir.path().join("empty"), b"").unwrap();
        super::write_back_in_pieces(&dir.path().join("empty")).unwrap();
    }

    /// A flush that says when it is asked for and then does what the test sends it.
    struct Gate {
        asked: std::sync::mpsc::Sender<()>,
        go: std::sync::mpsc::Receiver<std::io::Result<()>>,
    }

    impl super::Flush for Gate {
        fn flush(&mut self) -> std::io::Result<()> {
            let _ = self.asked.send(());
            self.go.recv().unwrap_or(Ok(()))
        }
    }

    fn batch(
        to_writer: &std::sync::mpsc::SyncSender<crate::Command>,
        ids: &[&str],
    ) -> tokio::sync::oneshot::Receiver<Result<crate::AppendOutcome, crate::StoreError>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let events = ids
            .iter()
            .map(|id| crate::LogRow {
                message_id: (*id).to_string(),
                kind: "track",
                name: Some("Product Viewed".into()),
                timestamp: 1,
                received_at: 1,
                json: "{}".into(),
            })
            .collect();
        to_writer
            .send(crate::Command::Append {
                ws: 1,
                events,
                reply,
                queued: seam_core::clock::Stopwatch::start(),
            })
            .unwrap();
        answer
    }

    #[test]
    fn a_batch_is_acknowledged_and_shown_to_the_projector_only_once_the_wal_is_flushed() {
        let dir = tempfile::tempdir().unwrap();
        crate::prepare(dir.path()).unwrap();
        let log = dir.path().join(crate::DB_FILE);
        let (asked_tx, asked) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel();
        let (to_writer, rx) = std::sync::mpsc::sync_channel(16);
        let stats = std::sync::Arc::new(crate::Stats::default());
        let wal = Box::new(Gate {
            asked: asked_tx,
            go: go_rx,
        });
        go.send(Ok(())).unwrap(); // the flush at start
        let writer = super::Writer::start(
            crate::open_connection(&log, false).unwrap(),
            wal,
            rx,
            crate::StoreOptions::default(),
            stats.clone(),
            Default::default(),
        )
        .unwrap();
        asked.recv().unwrap();
        let reader = crate::open_connection(&log, true).unwrap();
        let count = || -> i64 {
            reader
                .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
                .unwrap()
        };

        // Committed, but not acknowledged nor shown until the flush returns.
        let mut first = batch(&to_writer, &["a", "b"]);
        asked.recv().unwrap();
        assert_eq!(count(), 2);
        assert!(first.try_recv().is_err());
        assert_eq!(stats.log_seq.load(Ordering::SeqCst), 0);
        go.send(Ok(())).unwrap();
        let outcome = first.blocking_recv().unwrap().unwrap();
        assert_eq!(outcome.stored, 2);
        assert_eq!(stats.log_seq.load(Ordering::SeqCst), 2);

        // A duplicate waits for a flush too: its first copy could be in a commit not yet on disk.
        let mut again = batch(&to_writer, &["b"]);
        asked.recv().unwrap();
        assert!(again.try_recv().is_err());
        go.send(Ok(())).unwrap();
        assert_eq!(again.blocking_recv().unwrap().unwrap().duplicates, 1);

        // A failed flush: the batch is refused, the projector is not shown its events, and nothing after it is
        // acknowledged.
        let failed = batch(&to_writer, &["c"]);
        asked.recv().unwrap();
        go.send(Err(std::io::Error::other("the disk is gone")))
            .unwrap();
        assert!(matches!(
            failed.blocking_recv().unwrap(),
            Err(crate::StoreError::Unavailable)
        ));
        let later = batch(&to_writer, &["d"]);
        assert!(matches!(
            later.blocking_recv().unwrap(),
            Err(crate::StoreError::Unavailable)
        ));
        assert_eq!(stats.log_seq.load(Ordering::SeqCst), 2);
        assert_eq!(
            count(),
            3,
            "the refused batch after the failure was not written"
        );
        drop(to_writer);
        writer.join().unwrap();
        assert!(asked.try_recv().is_err(), "no flush after the failure");
    }

    #[cfg(unix)]
    #[test]
    fn a_wal_file_deleted_and_made_again_is_the_one_flushed_from_then_on() {
        use super::Flush;
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db-wal");
        std::fs::write(&path, b"first").unwrap();
        let mut wal = super::WalFile::open(path.clone()).unwrap();
        wal.flush().unwrap();
        std::fs::remove_file(&path).unwrap();
        wal.flush().unwrap(); // no file at the path for now: the old one is kept
        std::fs::write(&path, b"second").unwrap();
        wal.flush().unwrap();
        assert_eq!(
            wal.file.metadata().unwrap().ino(),
            std::fs::metadata(&path).unwrap().ino()
        );
    }
}

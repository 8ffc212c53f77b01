//! The log writer: one thread, the only writer of `seam.db`. Every batch waiting when it wakes goes into one
//! transaction (group commit); the batches are acknowledged after COMMIT, which with `synchronous=FULL` in WAL
//! mode means the events are on disk.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::thread::JoinHandle;

use rusqlite::{params, Connection, Transaction, TransactionBehavior};
use seam_core::Seq;
use tokio::sync::oneshot;

use crate::projector::Wakeup;
use crate::{AppendOutcome, Command, LogRow, Stats, StoreError, StoreOptions};

type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

pub(crate) struct Writer {
    conn: Connection,
    rx: Receiver<Command>,
    opts: StoreOptions,
    stats: Arc<Stats>,
    wakeup: Arc<Wakeup>,
}

impl Writer {
    pub(crate) fn start(
        conn: Connection,
        rx: Receiver<Command>,
        opts: StoreOptions,
        stats: Arc<Stats>,
        wakeup: Arc<Wakeup>,
    ) -> Result<JoinHandle<()>, StoreError> {
        // Checkpoints run from another connection so that the writer never copies the WAL itself.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let max_seq: Seq =
            conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))?;
        stats.log_seq.store(max_seq, Ordering::SeqCst);
        let mut w = Writer {
            conn,
            rx,
            opts,
            stats,
            wakeup,
        };
        std::thread::Builder::new()
            .name("seam-writer".into())
            .spawn(move || w.run())
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

    /// One transaction: append everything gathered, commit, acknowledge.
    fn round(&mut self, commands: Vec<Command>) {
        let mut replies: Vec<(Reply, AppendOutcome)> = Vec::new();
        let result = (|| -> Result<Seq, StoreError> {
            let tx = self
                .conn
                .transaction_with_behavior(TransactionBehavior::Immediate)?;
            let mut last = None;
            for cmd in commands {
                match cmd {
                    Command::Append { ws, events, reply } => {
                        let mut outcome = AppendOutcome::default();
                        for a in &events {
                            match append(&tx, ws, a)? {
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
                            let ws = e.ws;
                            if let Some(seq) = append(&tx, ws, &LogRow::new(e.event, e.json))? {
                                last = Some(seq);
                            }
                        }
                    }
                }
            }
            tx.commit()?;
            Ok(last.unwrap_or(0))
        })();
        match result {
            Ok(last) => {
                let s = &self.stats;
                s.commits.fetch_add(1, Ordering::Relaxed);
                if last > 0 {
                    s.log_seq.fetch_max(last, Ordering::SeqCst);
                    self.wakeup.log_advanced(last);
                }
                for (reply, outcome) in replies {
                    s.stored.fetch_add(outcome.stored as u64, Ordering::Relaxed);
                    s.deduplicated
                        .fetch_add(outcome.duplicates as u64, Ordering::Relaxed);
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit failed; the batches in it were not acknowledged");
                for (reply, _) in replies {
                    let _ = reply.send(Err(StoreError::Unavailable));
                }
            }
        }
    }
}

/// Appends one event unless its workspace already holds its messageId; returns its log position if stored.
fn append(tx: &Transaction<'_>, ws: i64, r: &LogRow) -> Result<Option<Seq>, StoreError> {
    let n = tx
        .prepare_cached(
            "INSERT INTO events (ws, message_id, type, name, ts, received_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT DO NOTHING",
        )?
        .execute(params![
            ws,
            r.message_id,
            r.kind,
            r.name,
            r.timestamp,
            r.received_at,
            r.json
        ])?;
    Ok((n == 1).then(|| tx.last_insert_rowid()))
}

/// The thread that moves the WAL of each database into its file every second without blocking the writer.
pub(crate) struct Checkpointer {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: JoinHandle<()>,
}

impl Checkpointer {
    /// Starts checkpointing `paths`; the thread ends when `alive` is gone or [`Checkpointer::stop`] is called.
    pub(crate) fn start(
        paths: Vec<std::path::PathBuf>,
        alive: std::sync::Weak<Stats>,
    ) -> std::io::Result<Self> {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = std::thread::Builder::new()
            .name("seam-checkpoint".into())
            .spawn(move || {
                let conns: Vec<Connection> = paths
                    .iter()
                    .filter_map(|p| Connection::open(p).ok())
                    .collect();
                loop {
                    std::thread::park_timeout(std::time::Duration::from_secs(1));
                    if stopped.load(Ordering::SeqCst) || alive.upgrade().is_none() {
                        break;
                    }
                    for conn in &conns {
                        if let Err(e) =
                            conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                        {
                            tracing::warn!(error = %e, "wal checkpoint failed");
                        }
                    }
                }
            })?;
        Ok(Self { stop, handle })
    }

    /// Stops the thread and waits until its connections are closed, so that nothing touches the data folder's
    /// files once the store is shut down.
    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.thread().unpark();
        let _ = self.handle.join();
    }
}

//! The evaluators: threads that evaluate queued profiles against their segments, reading the projections,
//! while the projector goes on applying events, so that a backlog of evaluations uses the other cores rather
//! than taking turns with the events on the projector's.
//!
//! The projector hands them batches of profiles from `pending_evaluations` (at most two a thread out at a
//! time, never sharing a profile), each taken by whichever thread is free, and later writes what came back
//! ([`crate::decide::Assessment`]) in its own transaction, in the order the batches come back. An assessment
//! is only as good as the reading it was made from (a read transaction per [`PER_READ`] profiles, begun after
//! the batch was handed out), so the projector numbers its commits and remembers, while batches are out,
//! which profiles each commit touched and whether it changed the definitions or ran a step of a backfill. An
//! assessment of a profile touched after its batch was handed out (or of any profile, after such a change) is
//! dropped, and that profile stays queued for a later batch, which reads it again: the projector's own
//! thread, the one that applies events, does not evaluate it in the meantime.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use seam_core::Millis;

use crate::decide::{assess, load_defs, Assessment};
use crate::StoreError;

/// Batches out at once for each thread: one evaluated while the projector writes the other.
const IN_FLIGHT_PER_THREAD: usize = 2;

/// Evaluator threads: two a core, at most eight. In a drain of queued evaluations (after a backlog of events
/// was applied) the evaluation is the bottleneck and the projector, writing what was found, idles most of the
/// time (BENCHMARKS, "Evaluators on every core"); an evaluation also waits for pages of the log read from the
/// disk, and with one thread a core those waits left the cores about two fifths idle (BENCHMARKS, "Two
/// evaluator threads a core").
pub(crate) fn threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| (2 * n.get()).clamp(2, 8))
}

/// Profiles in a batch.
pub(crate) const BATCH: usize = 2_000;

/// Profiles evaluated in one read transaction. A read transaction that begins after either file changed
/// (nearly always: the projector and the log writer never stop) starts with SQLite's cache of it emptied, so
/// each one reads the upper pages of every index it uses again; evaluated one to a transaction, a person's
/// reads were mostly such pages. A hundred people take a few milliseconds, well within the 100 ms the
/// projector waits for readers before starting its WAL over; at 20 million events it gives up more often and
/// its WAL peaked higher (1.7 against 1.3 GB in one run each, BENCHMARKS), so fewer a transaction is the
/// lever if that matters.
const PER_READ: usize = 100;

/// A profile of a workspace: (workspace key, profile key).
pub(crate) type Key = (i64, i64);

struct Job {
    /// The projector's commits before the batch was handed out.
    commit: u64,
    now: Millis,
    profiles: Vec<Key>,
}

/// An evaluated batch: each profile's assessment (`None`: merged away or unknown), or why the batch failed.
pub(crate) struct Batch {
    pub commit: u64,
    pub now: Millis,
    pub profiles: Vec<Key>,
    pub outcome: Result<Vec<Option<Assessment>>, StoreError>,
}

/// The projector's side: the thread, the batches out, and what changed since they were handed out.
pub(crate) struct Evaluator {
    jobs: Option<SyncSender<Job>>,
    done: Receiver<Batch>,
    handles: Vec<JoinHandle<()>>,
    /// Batches that may be out at once.
    in_flight: usize,
    /// Whether the log is ahead of the projections (see [`Evaluator::room`]).
    log_ahead: bool,
    /// The commit each batch handed out and not yet taken back was handed out after, oldest first.
    out: VecDeque<u64>,
    /// Batches back, not yet written.
    ready: VecDeque<Batch>,
    /// The profiles of the batches out or ready.
    handed: HashSet<Key>,
    /// The projector's commits so far, of those that count here.
    commits: u64,
    /// The commit that last touched each profile, while batches are out.
    touched: HashMap<Key, u64>,
    /// The last commit that changed a definition or ran a step of a backfill.
    redefined: u64,
}

impl Evaluator {
    /// Starts a thread for each connection, reading the projections through it (with the log attached as
    /// `log`).
    pub(crate) fn start(conns: Vec<Connection>) -> std::io::Result<Self> {
        let in_flight = IN_FLIGHT_PER_THREAD * conns.len().max(1);
        let (jobs, inbox) = sync_channel::<Job>(in_flight);
        let (outbox, done) = sync_channel::<Batch>(in_flight);
        let inbox = Arc::new(Mutex::new(inbox));
        let mut handles = Vec::new();
        for conn in conns {
            let (inbox, outbox) = (inbox.clone(), outbox.clone());
            handles.push(
                std::thread::Builder::new()
                    .name("seam-evaluator".into())
                    .spawn(move || work(&conn, &inbox, &outbox))?,
            );
        }
        Ok(Self {
            jobs: Some(jobs),
            done,
            handles,
            in_flight,
            log_ahead: false,
            out: VecDeque::new(),
            ready: VecDeque::new(),
            handed: HashSet::new(),
            commits: 0,
            touched: HashMap::new(),
            redefined: 0,
        })
    }

    /// Tells whether the log is ahead of the projections: while it is, at most one thread's batches are out.
    /// A backlog of events touches the same people again and again, so what is evaluated before their events
    /// are all applied is mostly evaluated again, and writing it takes the projector's time, which the backlog
    /// is waiting for; once the projector has caught up, every thread takes batches.
    pub(crate) fn pace(&mut self, log_ahead: bool) {
        self.log_ahead = log_ahead;
    }

    /// How many more batches may be handed out.
    pub(crate) fn room(&self) -> usize {
        let most = if self.log_ahead {
            IN_FLIGHT_PER_THREAD.min(self.in_flight)
        } else {
            self.in_flight
        };
        most.saturating_sub(self.out.len() + self.ready.len())
    }

    /// How many profiles are in batches out or ready.
    pub(crate) fn held(&self) -> usize {
        self.handed.len()
    }

    /// Whether `key` is in a batch out or ready.
    pub(crate) fn holds(&self, key: &Key) -> bool {
        self.handed.contains(key)
    }

    /// Hands out `profiles` to be evaluated at `now`, each read after every commit counted so far, in batches
    /// of [`BATCH`] (as many as there is [`Evaluator::room`] for).
    pub(crate) fn hand_out(&mut self, now: Millis, profiles: Vec<Key>) {
        for batch in profiles.chunks(BATCH) {
            self.hand_out_batch(now, batch.to_vec());
        }
    }

    fn hand_out_batch(&mut self, now: Millis, profiles: Vec<Key>) {
        let Some(jobs) = &self.jobs else { return };
        if profiles.is_empty() {
            return;
        }
        let job = Job {
            commit: self.commits,
            now,
            profiles,
        };
        self.handed.extend(job.profiles.iter().copied());
        let commit = job.commit;
        match jobs.try_send(job) {
            Ok(()) => self.out.push_back(commit),
            // Never full (`room`), and the thread ends only with this side: its profiles stay queued.
            Err(e) => {
                let job = match e {
                    std::sync::mpsc::TrySendError::Full(j)
                    | std::sync::mpsc::TrySendError::Disconnected(j) => j,
                };
                for key in &job.profiles {
                    self.handed.remove(key);
                }
            }
        }
    }

    /// Waits up to `time` for a batch when one is out and none is ready.
    pub(crate) fn wait(&mut self, time: Duration) {
        if self.out.is_empty() || !self.ready.is_empty() {
            return;
        }
        match self.done.recv_timeout(time) {
            Ok(batch) => self.back(batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => self.lost(),
        }
    }

    /// A batch back from a thread. Threads finish in any order: the batch's own entry leaves `out`, so that
    /// the oldest batch still out keeps what touched its profiles since it was handed out.
    fn back(&mut self, batch: Batch) {
        if let Some(i) = self.out.iter().position(|&c| c == batch.commit) {
            self.out.remove(i);
        }
        self.ready.push_back(batch);
    }

    /// The batches back so far, to be written; their profiles are no longer handed out.
    pub(crate) fn take_back(&mut self) -> Vec<Batch> {
        loop {
            match self.done.try_recv() {
                Ok(batch) => self.back(batch),
                Err(std::sync::mpsc::TryRecvError::Empty) => break,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => {
                    self.lost();
                    break;
                }
            }
        }
        let batches: Vec<Batch> = self.ready.drain(..).collect();
        for b in &batches {
            for key in &b.profiles {
                self.handed.remove(key);
            }
        }
        batches
    }

    /// Whether what `batch` found for `key` may be out of date: the profile, or the definitions, changed in a
    /// commit after the batch was handed out.
    pub(crate) fn stale(&self, batch: &Batch, key: &Key) -> bool {
        self.redefined > batch.commit || self.touched.get(key).is_some_and(|&c| c > batch.commit)
    }

    /// Counts a commit of the projector that touched `keys` (and changed the definitions, or ran a backfill
    /// step, when `redefined`).
    pub(crate) fn committed(&mut self, keys: impl IntoIterator<Item = Key>, redefined: bool) {
        self.commits += 1;
        // A commit before the oldest batch out or ready was handed out cannot make it stale: what is kept is
        // what touched a profile since, not every profile touched while batches keep going out.
        let oldest = self
            .ready
            .iter()
            .map(|b| b.commit)
            .chain(self.out.iter().copied())
            .min();
        let Some(oldest) = oldest else {
            self.touched.clear();
            return;
        };
        self.touched.retain(|_, c| *c > oldest);
        for key in keys {
            self.touched.insert(key, self.commits);
        }
        if redefined {
            self.redefined = self.commits;
        }
    }

    /// Every thread is gone (each ended after a panic, see `work`): no batch will come back, and the profiles
    /// of those out, still queued, are handed out no more; the projector evaluates them itself from now on.
    fn lost(&mut self) {
        tracing::error!("the evaluator threads stopped; the projector evaluates alone");
        self.jobs = None;
        self.out.clear();
        self.handed.clear();
    }

    /// Whether the thread still takes batches.
    pub(crate) fn running(&self) -> bool {
        self.jobs.is_some()
    }
}

impl Drop for Evaluator {
    fn drop(&mut self) {
        // Without their inbox the threads end after the batch in hand (their answers fit the channel).
        self.jobs = None;
        for handle in self.handles.drain(..) {
            let _ = handle.join();
        }
    }
}

/// An evaluator thread: takes the next batch handed out, evaluates it and sends it back, until the projector's
/// side is gone. A batch whose evaluation panicked comes back as failed (the projector evaluates its profiles
/// itself) and the thread ends; the others go on.
fn work(conn: &Connection, inbox: &Mutex<Receiver<Job>>, outbox: &SyncSender<Batch>) {
    loop {
        let job = match inbox.lock().map(|rx| rx.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        let evaluated =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| evaluate(conn, &job)));
        let panicked = evaluated.is_err();
        let outcome = evaluated.unwrap_or_else(|_| {
            Err(StoreError::Io(std::io::Error::other(
                "an evaluator thread panicked",
            )))
        });
        let batch = Batch {
            commit: job.commit,
            now: job.now,
            profiles: job.profiles,
            outcome,
        };
        if outbox.send(batch).is_err() || panicked {
            return;
        }
    }
}

/// Evaluates a batch, [`PER_READ`] profiles to a read transaction: one consistent reading of each person, and
/// no snapshot held for long (starting the projections' WAL over waits for every reader). Every one of them
/// starts after the batch was handed out, which is all the staleness rule needs.
fn evaluate(conn: &Connection, job: &Job) -> Result<Vec<Option<Assessment>>, StoreError> {
    let mut defs = HashMap::new();
    let mut out = Vec::with_capacity(job.profiles.len());
    for people in job.profiles.chunks(PER_READ) {
        conn.execute_batch("BEGIN")?;
        let found = (|| {
            for &(ws, profile) in people {
                if let std::collections::hash_map::Entry::Vacant(slot) = defs.entry(ws) {
                    slot.insert(load_defs(conn, ws)?);
                }
                out.push(assess(conn, &defs[&ws], ws, profile, job.now, None)?);
            }
            Ok::<_, StoreError>(())
        })();
        conn.execute_batch("COMMIT")?;
        found?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::{Batch, Evaluator};

    fn batch(commit: u64) -> Batch {
        Batch {
            commit,
            now: 0,
            profiles: vec![(1, 7), (1, 8)],
            outcome: Ok(vec![None, None]),
        }
    }

    /// What a batch found is stale for a profile touched by a commit after the batch was handed out, and for
    /// every profile after a definition changed; commits before it, and other profiles, leave it good.
    #[test]
    fn a_profile_touched_after_its_batch_was_handed_out_is_stale() {
        let mut ev =
            Evaluator::start(vec![rusqlite::Connection::open_in_memory().unwrap()]).unwrap();
        ev.committed([(1, 7)], false);
        ev.hand_out(0, vec![(1, 7), (1, 8)]);
        assert!(ev.holds(&(1, 7)) && ev.holds(&(1, 8)));
        let handed = batch(1);
        assert!(
            !ev.stale(&handed, &(1, 7)),
            "touched before it was handed out"
        );
        ev.committed([(1, 8), (2, 7)], false);
        assert!(ev.stale(&handed, &(1, 8)));
        assert!(!ev.stale(&handed, &(1, 7)));
        ev.committed([], true);
        assert!(ev.stale(&handed, &(1, 7)), "the definitions changed");
        // A batch handed out after those commits is good again.
        assert!(!ev.stale(&batch(3), &(1, 8)));
    }

    /// With nothing handed out, commits are counted and nothing is remembered; a batch the thread could not
    /// evaluate comes back with its error, and its profiles are no longer held.
    #[test]
    fn a_failed_batch_comes_back_with_its_error() {
        let mut ev =
            Evaluator::start(vec![rusqlite::Connection::open_in_memory().unwrap()]).unwrap();
        ev.committed([(1, 7)], true);
        assert!(ev.touched.is_empty());
        ev.hand_out(5, vec![(1, 7)]);
        let mut back = Vec::new();
        while back.is_empty() {
            ev.wait(std::time::Duration::from_secs(5));
            back = ev.take_back();
        }
        assert_eq!(back.len(), 1);
        assert_eq!((back[0].commit, back[0].now), (1, 5));
        assert!(
            back[0].outcome.is_err(),
            "an empty database has no profiles table"
        );
        assert!(!ev.holds(&(1, 7)));
        assert_eq!(ev.room(), super::IN_FLIGHT_PER_THREAD);
    }

    /// What a commit touched is kept only while a batch handed out before it is out or waiting to be written.
    #[test]
    fn what_a_commit_touched_is_forgotten_once_no_older_batch_is_out() {
        let mut ev =
            Evaluator::start(vec![rusqlite::Connection::open_in_memory().unwrap()]).unwrap();
        ev.hand_out(0, vec![(1, 1)]);
        ev.committed([(1, 7)], false);
        assert!(ev.touched.contains_key(&(1, 7)));
        let mut back = Vec::new();
        while back.is_empty() {
            ev.wait(std::time::Duration::from_secs(5));
            back = ev.take_back();
        }
        ev.hand_out(0, vec![(1, 2)]);
        ev.committed([(1, 8)], false);
        assert!(!ev.touched.contains_key(&(1, 7)));
        assert!(ev.touched.contains_key(&(1, 8)));
    }

    /// Threads finish in any order: a later batch back first leaves the older one out, and what touched the
    /// older one's profiles since it was handed out is still remembered, so it is found stale.
    #[test]
    fn a_batch_back_before_an_older_one_keeps_the_older_ones_changes() {
        // No threads: the batches are handed out and brought back by hand, in the order the test needs.
        let mut ev = Evaluator::start(Vec::new()).unwrap();
        ev.out.push_back(0);
        ev.committed([(1, 7)], false);
        ev.out.push_back(1);
        ev.back(Batch {
            profiles: vec![(1, 8)],
            ..batch(1)
        });
        assert_eq!(ev.out, [0]);
        ev.committed([(1, 9)], false);
        let older = Batch {
            profiles: vec![(1, 7)],
            ..batch(0)
        };
        assert!(ev.stale(&older, &(1, 7)), "touched after it was handed out");
        ev.back(older);
        assert!(ev.out.is_empty());
        assert_eq!(ev.room(), 0, "two batches back and not yet written");
    }

    /// While the log is ahead of the projections one thread's batches may be out; once caught up, every
    /// thread's.
    #[test]
    fn while_the_log_is_ahead_one_threads_batches_are_out() {
        let conns = (0..3).map(|_| rusqlite::Connection::open_in_memory().unwrap());
        let mut ev = Evaluator::start(conns.collect()).unwrap();
        assert_eq!(ev.room(), 3 * super::IN_FLIGHT_PER_THREAD);
        ev.pace(true);
        assert_eq!(ev.room(), super::IN_FLIGHT_PER_THREAD);
        ev.out.push_back(0);
        assert_eq!(ev.room(), super::IN_FLIGHT_PER_THREAD - 1);
        ev.pace(false);
        assert_eq!(ev.room(), 3 * super::IN_FLIGHT_PER_THREAD - 1);
    }
}

//! Which messageIds the log already holds, so that an event sent again is stored once.
//!
//! A unique index on the events' `(workspace, messageId)` did this with one B-tree insert per event. The ids
//! the SDKs send are random UUIDs, so every insert landed on a different page of the index, and every group
//! commit wrote (and synced) a whole page per event: on a million events, 5.2 GB of WAL for the log instead of
//! 0.7 GB, and a third of the throughput.
//!
//! Here the ids are kept as a 128-bit key (the first 16 bytes of SHA-256 over the workspace and the id) in
//! four places, checked in this order: `pending`, the keys of events appended since the last generation was
//! frozen (memory); `sorting`, a generation frozen and being sorted on a thread of its own (memory, a set);
//! `frozen`, a generation being written to disk (memory, sorted); and the `message_ids` table of the log
//! (disk). A generation is frozen once it holds [`GENERATION`] keys and written in key order, a slice per
//! group commit, so each page of `message_ids` is written about once a generation rather than once an event.
//! `log_meta.message_ids_through` is the log position up to which every event's key is on disk; it moves
//! with the generation's last slice, in the same transaction. After a restart the keys of the events past it
//! are read back from the log: nothing is lost with the memory, and a key written twice is ignored.
//!
//! Nearly every event brings a new id, which the table does not hold; once the table outgrows the page cache,
//! finding that out read pages from the file (at 20 million events, half of the writer's time). So in front of
//! the table stands `OnDisk`, a Bloom filter over every key it holds: a key the filter does not hold is not
//! on disk, and only the rest (about 1 new key in 200, and the ids really sent again) are looked up there.
//!
//! Two different ids share a key with a probability of about n² / 2¹²⁹ for n ids (below 10⁻¹⁸ for ten
//! billion).

use std::collections::HashSet;
use std::sync::Arc;

use rusqlite::{params, Connection, OptionalExtension};
use seam_core::Seq;
use sha2::{Digest, Sha256};

use crate::StoreError;

/// How many keys a generation holds before it is written to disk: few enough events to read back after a
/// restart, and with [`ROUND_ROOM`] the most a set of 2²⁰ slots holds (17 MB), so that the pending set never
/// grows (growing it moved every key while the writer waited: 26 ms at half a million keys, 90 ms at twice
/// that). About 50 MB in all: the pending set, the set of the generation being sorted, and the sorted list.
pub(crate) const GENERATION: usize = 880_000;

/// The keys a group commit may add to a whole generation before it is frozen: the largest group commit by
/// default (20,000 events) and the batch that ends it, with room to spare. A larger one makes the set grow,
/// once.
const ROUND_ROOM: usize = 37_504;

/// The fewest keys of a frozen generation written with a group commit; it writes at least twice as many as
/// the commit appended, so a generation is on disk before the next one fills.
const SLICE_AT_LEAST: usize = 256;

/// A messageId as stored: the first 16 bytes of SHA-256 over the workspace (8 bytes, little-endian) and the
/// id, as two signed integers so that memory sorts them as SQLite does.
pub(crate) type Key = (i64, i64);

pub(crate) fn key(ws: i64, message_id: &str) -> Key {
    let mut h = Sha256::new();
    h.update(ws.to_le_bytes());
    h.update(message_id.as_bytes());
    let d = h.finalize();
    let half = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[i..i + 8]);
        i64::from_be_bytes(b)
    };
    (half(0), half(8))
}

/// Whether the `message_ids` table holds a key.
pub(crate) const ON_DISK: &str = "SELECT 1 FROM message_ids WHERE hi = ?1 AND lo = ?2";

/// Bits of filter per key it is made for: about 1 key in 200 that it does not hold passes a full one.
const BITS_PER_KEY: usize = 12;

/// A Bloom filter over keys, in blocks of one cache line: a key sets one bit in each of its block's eight
/// words, so that a lookup reads one line of memory. The keys are uniform already (SHA-256), so their own bits
/// choose the block (`hi`) and the bit in each word (six bits of `lo` a word).
#[derive(Debug)]
struct Filter {
    blocks: Vec<[u64; 8]>,
    /// The keys it is made for, and the keys in it.
    capacity: usize,
    len: usize,
}

impl Filter {
    fn with_capacity(keys: usize) -> Self {
        let blocks = (keys.max(1) * BITS_PER_KEY).div_ceil(512);
        Self {
            blocks: vec![[0; 8]; blocks],
            capacity: blocks * 512 / BITS_PER_KEY,
            len: 0,
        }
    }

    /// The block of `k`, and its bit in each of the block's words.
    fn bits(&self, k: Key) -> (usize, [u64; 8]) {
        // `hi` scaled to the number of blocks (a multiply and a shift, where a remainder would divide).
        let block = ((u128::from(k.0 as u64) * self.blocks.len() as u128) >> 64) as usize;
        let lo = k.1 as u64;
        (
            block,
            std::array::from_fn(|i| 1u64 << ((lo >> (6 * i)) & 63)),
        )
    }

    fn insert(&mut self, k: Key) {
        let (block, bits) = self.bits(k);
        for (word, bit) in self.blocks[block].iter_mut().zip(bits) {
            *word |= bit;
        }
        self.len += 1;
    }

    fn may_hold(&self, k: Key) -> bool {
        let (block, bits) = self.bits(k);
        self.blocks[block]
            .iter()
            .zip(bits)
            .all(|(word, bit)| word & bit == bit)
    }
}

/// The keys that the `message_ids` table may hold: every key written there passes; of the others, about 1 in
/// 200 while one filter serves, more as it grows (1.6 in 100 with five). Made when the writer starts, from the
/// table (on a thread of its own: [`Filtering`]), for the keys on disk and a generation more; when it is full,
/// a filter twice the size takes the keys that follow, and a key passes if any filter passes it (so it grows
/// without reading the table again, the filters' sizes doubling, so that there are few of them).
#[derive(Debug)]
struct OnDisk {
    filters: Vec<Filter>,
}

impl OnDisk {
    fn with_capacity(keys: usize) -> Self {
        Self {
            filters: vec![Filter::with_capacity(keys)],
        }
    }

    fn insert(&mut self, k: Key) {
        let mut newest = self.filters.last_mut().expect("one filter at least");
        if newest.len >= newest.capacity {
            let bigger = Filter::with_capacity(2 * newest.capacity);
            self.filters.push(bigger);
            newest = self.filters.last_mut().expect("just pushed");
        }
        newest.insert(k);
    }

    fn may_hold(&self, k: Key) -> bool {
        self.filters.iter().any(|f| f.may_hold(k))
    }

    /// Bytes of memory it takes.
    fn bytes(&self) -> usize {
        self.filters.iter().map(|f| f.blocks.len() * 64).sum()
    }

    /// Made from the `message_ids` table of the log at `path` (one read transaction), for `expected` keys.
    fn read(path: &std::path::Path, expected: usize) -> Result<Self, StoreError> {
        let conn = crate::open_connection(path, true)?;
        let mut on_disk = Self::with_capacity(expected);
        let mut stmt = conn.prepare("SELECT hi, lo FROM message_ids")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            on_disk.insert((row.get(0)?, row.get(1)?));
        }
        Ok(on_disk)
    }
}

/// The filter of [`MessageIds`]: made on a thread of its own when the writer starts (reading twenty million
/// keys takes seconds), during which every lookup goes to the table.
#[derive(Debug)]
enum Filtering {
    /// Being made; the keys written to the table meanwhile go in once it is.
    Loading(
        std::sync::mpsc::Receiver<Result<OnDisk, StoreError>>,
        Vec<Key>,
    ),
    Ready(OnDisk),
    /// Could not be made (logged): every lookup goes to the table.
    Off,
}

impl Filtering {
    /// Starts making the filter from the table of the log at `path`. Every key written to the table after this
    /// is given to [`Filtering::insert`] (a slice of a generation at a time).
    fn start(path: Option<&str>, expected: usize) -> Self {
        let Some(path) = path.filter(|p| !p.is_empty()).map(std::path::PathBuf::from) else {
            return Filtering::Off;
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("seam-id-filter".into())
            .spawn(move || {
                let made = seam_core::clock::Stopwatch::start();
                let filter = OnDisk::read(&path, expected);
                if let Ok(f) = &filter {
                    tracing::info!(
                        took_ms = made.elapsed().as_millis() as u64,
                        mib = f.bytes() >> 20,
                        "messageId filter made from the log's index"
                    );
                }
                let _ = tx.send(filter);
            });
        match spawned {
            Ok(_) => Filtering::Loading(rx, Vec::new()),
            Err(e) => {
                tracing::warn!(error = %e, "the messageId filter could not be made; every lookup reads the log's index");
                Filtering::Off
            }
        }
    }

    /// Takes the filter once it is made (`wait`: waits for it).
    fn poll(&mut self, wait: bool) {
        let Filtering::Loading(rx, since) = self else {
            return;
        };
        let got = match wait {
            true => rx.recv().ok(),
            false => match rx.try_recv() {
                Ok(made) => Some(made),
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            },
        };
        *self = match got {
            Some(Ok(mut f)) => {
                for &k in since.iter() {
                    f.insert(k);
                }
                Filtering::Ready(f)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "the messageId filter could not be made; every lookup reads the log's index");
                Filtering::Off
            }
            // The thread is gone without an answer (it panicked).
            None => Filtering::Off,
        };
    }

    fn insert(&mut self, keys: &[Key]) {
        match self {
            Filtering::Loading(_, since) => since.extend_from_slice(keys),
            Filtering::Ready(f) => keys.iter().for_each(|&k| f.insert(k)),
            Filtering::Off => {}
        }
    }

    /// Whether the table may hold `k` (always, until the filter is made).
    fn may_hold(&self, k: Key) -> bool {
        match self {
            Filtering::Ready(f) => f.may_hold(k),
            Filtering::Loading(..) | Filtering::Off => true,
        }
    }
}

/// A generation being sorted on a thread of its own (sorting a generation on the writer's thread held back the
/// next group commit 35 – 45 ms); meanwhile its keys are looked up in its set.
#[derive(Debug)]
struct Sorting {
    keys: Arc<HashSet<Key>>,
    through: Seq,
    /// `None` if the thread could not be started: the writer sorts it when it takes it.
    sorted: Option<std::thread::JoinHandle<Vec<Key>>>,
}

/// The keys of `set`, sorted.
fn sorted_keys(set: &HashSet<Key>) -> Vec<Key> {
    let mut sorted: Vec<Key> = set.iter().copied().collect();
    sorted.sort_unstable();
    sorted
}

/// A generation on its way to disk.
#[derive(Debug)]
struct Frozen {
    /// Sorted, each once.
    keys: Vec<Key>,
    /// `keys[..written]` are on disk.
    written: usize,
    /// The log position of its last event.
    through: Seq,
}

/// What a group commit wrote of the frozen generation, applied with [`MessageIds::committed`] once the commit
/// succeeded.
#[derive(Debug, Default)]
pub(crate) struct Written {
    upto: Option<usize>,
}

/// The messageIds of the log (see the module's documentation). Used by the log writer only.
#[derive(Debug)]
pub(crate) struct MessageIds {
    pending: HashSet<Key>,
    /// The keys added in the group commit under way (also in `pending`).
    round: Vec<Key>,
    sorting: Option<Sorting>,
    frozen: Option<Frozen>,
    /// The set of the last generation sorted, emptied: the next pending set, so that a set's memory is
    /// allocated (and first touched) once.
    spare: Option<HashSet<Key>>,
    /// Every key of the `message_ids` table.
    on_disk: Filtering,
    generation: usize,
    /// [`SLICE_AT_LEAST`], smaller in tests.
    slice_at_least: usize,
    /// Tests: a generation frozen is sorted before the group commit that froze it ends.
    #[cfg(test)]
    sort_at_once: bool,
}

impl MessageIds {
    /// Reads back the keys of the events past `message_ids_through`, writing whole generations of them to disk
    /// as they fill (after an upgrade from a log that had none, that is every event once).
    pub(crate) fn load(conn: &mut Connection, generation: usize) -> Result<Self, StoreError> {
        let through: Seq = conn.query_row(
            "SELECT value FROM log_meta WHERE key = 'message_ids_through'",
            [],
            |r| r.get(0),
        )?;
        let mut ids = Self {
            pending: HashSet::with_capacity(generation + ROUND_ROOM),
            round: Vec::new(),
            sorting: None,
            frozen: None,
            spare: None,
            on_disk: Filtering::Off,
            generation,
            slice_at_least: SLICE_AT_LEAST,
            #[cfg(test)]
            sort_at_once: false,
        };
        let mut from = through;
        loop {
            let rows: Vec<(Seq, i64, String)> = conn
                .prepare(
                    "SELECT seq, ws, message_id FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?
                .query_map(params![from, generation as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<Result<_, _>>()?;
            let Some(last) = rows.last().map(|r| r.0) else {
                break;
            };
            for (_, ws, id) in &rows {
                ids.pending.insert(key(*ws, id));
            }
            from = last;
            if ids.pending.len() >= generation {
                let mut keys: Vec<Key> = ids.pending.drain().collect();
                keys.sort_unstable();
                let tx = conn.transaction()?;
                insert(&tx, &keys)?;
                set_through(&tx, last)?;
                tx.commit()?;
                tracing::info!(
                    through = last,
                    keys = keys.len(),
                    "messageIds written to the log's index"
                );
            }
        }
        // Nearly every event up to the mark has its key on disk: the filter is made for them and a generation.
        let expected = usize::try_from(from).unwrap_or(0) + generation;
        ids.on_disk = Filtering::start(conn.path(), expected);
        Ok(ids)
    }

    /// Waits until the filter is made.
    #[cfg(test)]
    fn filter_made(&mut self) {
        self.on_disk.poll(true);
    }

    /// Whether the log holds `k` already (or it was added in this group commit).
    #[cfg(test)]
    pub(crate) fn contains(&self, conn: &Connection, k: Key) -> Result<bool, StoreError> {
        let mut on_disk = conn.prepare_cached(ON_DISK)?;
        self.contains_by(&mut on_disk, k)
    }

    /// [`MessageIds::contains`], with the statement [`ON_DISK`] prepared by the caller (a group commit prepares
    /// it once for all its events).
    pub(crate) fn contains_by(
        &self,
        on_disk: &mut rusqlite::Statement<'_>,
        k: Key,
    ) -> Result<bool, StoreError> {
        if self.pending.contains(&k)
            || self.sorting.as_ref().is_some_and(|s| s.keys.contains(&k))
            || self
                .frozen
                .as_ref()
                .is_some_and(|f| f.keys.binary_search(&k).is_ok())
        {
            return Ok(true);
        }
        if !self.on_disk.may_hold(k) {
            return Ok(false);
        }
        Ok(on_disk
            .query_row(params![k.0, k.1], |_| Ok(()))
            .optional()?
            .is_some())
    }

    /// Adds the key of an event appended in the group commit under way; [`MessageIds::failed`] takes it back
    /// if the commit fails.
    pub(crate) fn add(&mut self, k: Key) {
        self.pending.insert(k);
        self.round.push(k);
    }

    /// Takes back the keys added in a group commit that failed.
    pub(crate) fn failed(&mut self) {
        for k in self.round.drain(..) {
            self.pending.remove(&k);
        }
    }

    /// Writes the next slice of the frozen generation in the group commit `conn` is in: at least twice as many
    /// keys as the commit added. The last slice also moves `message_ids_through`. Its keys go into the filter
    /// first, so that it holds every key the table holds (if the commit fails they stay there, which only
    /// sends a lookup to the table).
    pub(crate) fn write_slice(&mut self, conn: &Connection) -> Result<Written, StoreError> {
        let Some(f) = &self.frozen else {
            return Ok(Written::default());
        };
        let upto = (f.written + (2 * self.round.len()).max(self.slice_at_least)).min(f.keys.len());
        let slice = &f.keys[f.written..upto];
        self.on_disk.insert(slice);
        insert(conn, slice)?;
        if upto == f.keys.len() {
            set_through(conn, f.through)?;
        }
        Ok(Written { upto: Some(upto) })
    }

    /// After a group commit succeeded, with the log now ending at `log_seq`: records what it wrote of the
    /// frozen generation; takes the generation being sorted once it is sorted (and the previous one is on
    /// disk); and starts sorting the pending keys once they make a generation and no other is on its way.
    pub(crate) fn committed(&mut self, written: Written, log_seq: Seq) {
        self.round.clear();
        // Once a group commit, not once an event: takes the filter if it was made meanwhile.
        self.on_disk.poll(false);
        if let (Some(f), Some(upto)) = (&mut self.frozen, written.upto) {
            f.written = upto;
            if upto == f.keys.len() {
                self.frozen = None;
            }
        }
        if self.sorting.is_none() && self.frozen.is_none() && self.pending.len() >= self.generation
        {
            let next = self
                .spare
                .take()
                .unwrap_or_else(|| HashSet::with_capacity(self.generation + ROUND_ROOM));
            let keys = Arc::new(std::mem::replace(&mut self.pending, next));
            let to_sort = keys.clone();
            let sorted = std::thread::Builder::new()
                .name("seam-id-sort".into())
                .spawn(move || sorted_keys(&to_sort))
                .map_err(|e| tracing::warn!(error = %e, "messageIds could not be sorted on a thread of their own; the log writer sorts them"))
                .ok();
            self.sorting = Some(Sorting {
                keys,
                through: log_seq,
                sorted,
            });
            #[cfg(test)]
            if self.sort_at_once {
                self.take_sorted(true);
            }
        }
        self.take_sorted(false);
    }

    /// Moves the generation being sorted to `frozen` once it is sorted (`wait`: waits for that).
    fn take_sorted(&mut self, wait: bool) {
        if self.frozen.is_some() {
            return;
        }
        let ready = |s: &mut Sorting| wait || s.sorted.as_ref().is_none_or(|h| h.is_finished());
        let Some(Sorting {
            keys,
            through,
            sorted,
        }) = self.sorting.take_if(ready)
        else {
            return;
        };
        let keys_sorted = match sorted.map(std::thread::JoinHandle::join) {
            Some(Ok(sorted)) => sorted,
            // The thread could not be started (or, never expected, panicked): sorted here.
            None | Some(Err(_)) => sorted_keys(&keys),
        };
        // The thread's handle on the set is gone with it.
        if let Ok(mut set) = Arc::try_unwrap(keys) {
            set.clear();
            self.spare = Some(set);
        }
        self.frozen = Some(Frozen {
            keys: keys_sorted,
            written: 0,
            through,
        });
    }
}

fn insert(conn: &Connection, keys: &[Key]) -> Result<(), StoreError> {
    let mut stmt =
        conn.prepare_cached("INSERT OR IGNORE INTO message_ids (hi, lo) VALUES (?1, ?2)")?;
    for k in keys {
        stmt.execute(params![k.0, k.1])?;
    }
    Ok(())
}

fn set_through(conn: &Connection, seq: Seq) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE log_meta SET value = ?1 WHERE key = 'message_ids_through'")?
        .execute([seq])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rusqlite::Connection;

    use super::{key, MessageIds, OnDisk};
    use crate::schema::{migrate, LOG_MIGRATIONS};

    fn log(dir: &std::path::Path) -> Connection {
        let mut conn = Connection::open(dir.join("log.db")).unwrap();
        migrate(&mut conn, LOG_MIGRATIONS).unwrap();
        conn
    }

    /// The ids of the log in `conn`, each generation sorted before the group commit that froze it ends (so
    /// that a test knows which commit writes it).
    fn load(conn: &mut Connection, generation: usize) -> MessageIds {
        let mut ids = MessageIds::load(conn, generation).unwrap();
        ids.sort_at_once = true;
        ids
    }

    /// One group commit as the writer makes it: each id appended unless the log holds it; returns which were.
    /// A round that `fails` is rolled back.
    fn round(
        conn: &mut Connection,
        ids: &mut MessageIds,
        batch: &[&str],
        fails: bool,
    ) -> Vec<bool> {
        let tx = conn.transaction().unwrap();
        let mut stored = vec![];
        for id in batch {
            let k = key(1, id);
            let new = !ids.contains(&tx, k).unwrap();
            if new {
                tx.execute(
                    "INSERT INTO events (ws, message_id, type, ts, received_at, body) VALUES (1, ?1, 'track', 0, 0, '{}')",
                    [id],
                )
                .unwrap();
                ids.add(k);
            }
            stored.push(new);
        }
        let written = ids.write_slice(&tx).unwrap();
        if fails {
            drop(tx);
            ids.failed();
            return vec![false; batch.len()];
        }
        tx.commit().unwrap();
        let last: i64 = conn
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0))
            .unwrap();
        ids.committed(written, last);
        stored
    }

    fn through(conn: &Connection) -> i64 {
        conn.query_row(
            "SELECT value FROM log_meta WHERE key = 'message_ids_through'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    }

    fn on_disk(conn: &Connection) -> i64 {
        conn.query_row("SELECT COUNT(*) FROM message_ids", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_id_sent_again_is_found_pending_frozen_on_disk_and_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = log(dir.path());
        let mut ids = load(&mut conn, 4);
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "b", "a"], false),
            [true, true, false]
        );
        assert_eq!(
            round(&mut conn, &mut ids, &["b", "c", "d"], false),
            [false, true, true]
        );
        // Four pending keys make a generation: frozen, nothing on disk yet.
        assert!(ids.frozen.is_some());
        assert_eq!(on_disk(&conn), 0);
        assert_eq!(
            round(&mut conn, &mut ids, &["c", "e"], false),
            [false, true]
        );
        // That commit wrote the whole frozen generation (at least 256 keys a slice) and moved the mark.
        assert!(ids.frozen.is_none());
        assert_eq!((on_disk(&conn), through(&conn)), (4, 4));
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "e", "f"], false),
            [false, false, true]
        );
        // After a restart the keys past the mark are read back from the log.
        drop(ids);
        let mut ids = load(&mut conn, 4);
        assert_eq!(ids.pending.len(), 2);
        let again = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(
            round(&mut conn, &mut ids, &again, false),
            [false, false, false, false, false, false, true]
        );
        // In another workspace the same id is another event.
        assert_ne!(key(1, "a"), key(2, "a"));
    }

    /// Every key put in passes, however far the filter grew past the size it was made for; of a hundred
    /// thousand others, 1,605 do (the keys are fixed, so that figure is the same every run).
    #[test]
    fn the_filter_passes_every_key_in_it_and_few_others() {
        let mut filter = OnDisk::with_capacity(1_000);
        let first = filter.filters[0].capacity;
        let keys: Vec<_> = (0..20_000).map(|i| key(1, &format!("in-{i}"))).collect();
        for &k in &keys {
            filter.insert(k);
        }
        assert!(filter.filters.len() > 2, "grew: {:?}", filter.filters.len());
        assert!(first < keys.len() / 4);
        assert!(keys.iter().all(|&k| filter.may_hold(k)));
        let passed = (0..100_000)
            .filter(|i| filter.may_hold(key(1, &format!("out-{i}"))))
            .count();
        assert!(passed < 2_500, "{passed} of 100,000 passed");
    }

    /// The filter is made from the table on a thread of its own; the keys written to the table meanwhile go in
    /// once it is made, so it passes every key on disk, and an id sent again is found either way.
    #[test]
    fn the_filter_made_meanwhile_holds_the_keys_written_while_it_was_made() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = log(dir.path());
        let mut ids = load(&mut conn, 2);
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "b", "c"], false),
            [true; 3]
        );
        assert_eq!(round(&mut conn, &mut ids, &["d"], false), [true]);
        drop(ids);
        // Restarted: "a" to "c" on disk, "d" read back from the log; the filter is made while "d" to "f" freeze
        // and go to disk, and "g" and "h" freeze.
        let mut ids = load(&mut conn, 2);
        assert!(matches!(ids.on_disk, super::Filtering::Loading(..)));
        assert_eq!(
            round(&mut conn, &mut ids, &["e", "f", "a"], false),
            [true, true, false]
        );
        assert_eq!(round(&mut conn, &mut ids, &["g", "h"], false), [true, true]);
        ids.filter_made();
        let super::Filtering::Ready(filter) = &ids.on_disk else {
            panic!("made: {:?}", ids.on_disk);
        };
        for id in ["a", "b", "c", "d", "e", "f"] {
            assert!(filter.may_hold(key(1, id)), "{id}");
        }
        assert!(ids.frozen.is_some());
        let again = ["a", "d", "f", "h", "i"];
        assert_eq!(
            round(&mut conn, &mut ids, &again, false),
            [false, false, false, false, true]
        );
    }

    /// A generation frozen is sorted on a thread of its own while group commits go on: its ids are found
    /// meanwhile, it goes to disk once sorted, and its emptied set is the next pending one.
    #[test]
    fn a_generation_is_sorted_apart_while_group_commits_go_on() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = log(dir.path());
        let mut ids = MessageIds::load(&mut conn, 3).unwrap();
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "b", "c"], false),
            [true; 3]
        );
        assert!(ids.pending.is_empty());
        assert!(ids.sorting.is_some() || ids.frozen.is_some());
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "d"], false),
            [false, true]
        );
        ids.take_sorted(true);
        assert!(ids.sorting.is_none());
        assert!(ids.spare.is_some());
        assert_eq!(
            round(&mut conn, &mut ids, &["b", "e"], false),
            [false, true]
        );
        assert_eq!((on_disk(&conn), through(&conn)), (3, 3));
        assert!(ids.frozen.is_none());
        assert_eq!(ids.pending.len(), 2);
    }

    #[test]
    fn a_group_commit_that_failed_leaves_no_key_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = log(dir.path());
        let mut ids = load(&mut conn, 1_000);
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "b"], true),
            [false, false]
        );
        assert_eq!(
            round(&mut conn, &mut ids, &["a", "b", "a"], false),
            [true, true, false]
        );
    }

    #[test]
    fn a_log_with_the_unique_index_is_upgraded_with_every_key_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = Connection::open(dir.path().join("log.db")).unwrap();
        migrate(&mut conn, &LOG_MIGRATIONS[..1]).unwrap();
        for i in 0..10 {
            conn.execute(
                "INSERT INTO events (ws, message_id, type, ts, received_at, body) VALUES (1, ?1, 'track', 0, 0, '{}')",
                [format!("m{i}")],
            )
            .unwrap();
        }
        migrate(&mut conn, LOG_MIGRATIONS).unwrap();
        let mut ids = load(&mut conn, 4);
        // Two whole generations went to disk while loading; the last two keys wait in memory.
        assert_eq!(
            (on_disk(&conn), through(&conn), ids.pending.len()),
            (8, 8, 2)
        );
        assert_eq!(
            round(&mut conn, &mut ids, &["m0", "m9", "m10"], false),
            [false, false, true]
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Round(Vec<u8>, bool),
        Restart,
    }

    proptest! {
        /// Whatever the generation size, failures, restarts and how long sorting takes: the log holds each id
        /// once, in the order it was first sent in a commit that succeeded, and a round says so of each id.
        #[test]
        fn the_log_holds_each_id_once(
            generation in 1usize..6,
            sort_at_once in any::<bool>(),
            ops in prop::collection::vec(prop_oneof![
                6 => (prop::collection::vec(0u8..24, 0..6), prop::bool::weighted(0.15)).prop_map(|(b, f)| Op::Round(b, f)),
                1 => Just(Op::Restart),
            ], 1..60),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut conn = log(dir.path());
            let open = |conn: &mut Connection| {
                let mut ids = load(conn, generation);
                ids.sort_at_once = sort_at_once;
                // Slices of one key: generations stay frozen over several rounds and restarts.
                ids.slice_at_least = 1;
                ids
            };
            let mut ids = open(&mut conn);
            let mut expected: Vec<String> = vec![];
            for op in ops {
                match op {
                    Op::Restart => ids = open(&mut conn),
                    Op::Round(batch, fails) => {
                        let names: Vec<String> = batch.iter().map(|b| format!("id-{b}")).collect();
                        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                        let stored = round(&mut conn, &mut ids, &refs, fails);
                        let mut want = vec![];
                        let mut added: Vec<String> = vec![];
                        for n in &names {
                            let new = !fails && !expected.contains(n) && !added.contains(n);
                            if new {
                                added.push(n.clone());
                            }
                            want.push(new);
                        }
                        prop_assert_eq!(stored, want);
                        expected.extend(added);
                    }
                }
            }
            let logged: Vec<String> = conn
                .prepare("SELECT message_id FROM events ORDER BY seq").unwrap()
                .query_map([], |r| r.get(0)).unwrap()
                .collect::<Result<_, _>>().unwrap();
            prop_assert_eq!(logged, expected);
        }
    }
}

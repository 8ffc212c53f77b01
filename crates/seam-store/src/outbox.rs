//! The outbox: Seam's own events (merges, membership changes, journey steps), each written to the `outbox`
//! table in the transaction that decided it and kept there until it comes back through the log. The log writer
//! appends them once that transaction commits; whatever a crash left unappended is appended again at the next
//! start (see `Projector::start`).
//!
//! The table is keyed by row number alone, so writing an event is an append, and the rows whose events came
//! back in a transaction are deleted together before it commits, a range of numbers at a time. Which row holds
//! which message id, and which person its event is of, is kept in memory by [`Pending`], exactly: a row is
//! entered as its transaction commits and leaves as its event comes back, and the changes of a transaction that
//! rolls back are undone. So an event decided here comes back without its body being read again.

use std::collections::HashMap;
use std::io::Write as _;

use rusqlite::{params, Connection};
use seam_core::{Event, EventType, Millis, ProfileId};

use crate::{LogRow, StoreError};

/// A system event decided in this transaction, to be appended to the log once it commits.
pub(crate) struct Emitted {
    pub ws: i64,
    /// The log's row of it, body included.
    pub log: LogRow,
    /// Its row in the outbox.
    pub row: i64,
    /// The person it is of (its `profile_id`, as a key), if any.
    pub profile: Option<i64>,
}

/// The properties of an event Seam emits, their values moved in (`json!` would copy each `Value` given to it
/// through its serialiser, a map insert per field).
pub(crate) fn properties<const N: usize>(
    entries: [(&str, serde_json::Value); N],
) -> serde_json::Map<String, serde_json::Value> {
    entries
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

/// Appends `s` to `out` as a JSON string.
fn json_string(out: &mut Vec<u8>, s: &str) -> Result<(), StoreError> {
    serde_json::to_writer(&mut *out, s)?;
    Ok(())
}

impl Emitted {
    /// Writes a decided event to the outbox (in the decision's transaction), to be appended to the log.
    pub(crate) fn to_outbox(conn: &Connection, ws: i64, event: Event) -> Result<Self, StoreError> {
        let json = serde_json::to_string(&event)?;
        let profile = crate::process::profile_of(&event.properties);
        Self::write(conn, ws, LogRow::new(event, json), profile)
    }

    /// Writes a change of membership to the outbox: the `segment_entered` / `segment_exited` event at `at` that
    /// says `profile` entered or left the segment `(id, name)`. Its body is what serialising
    /// `Event::system` of it gives, written without building the event (with segments active, a membership
    /// change is the system event Seam decides most).
    pub(crate) fn membership(
        conn: &Connection,
        ws: i64,
        kind: EventType,
        message_id: String,
        at: Millis,
        (segment_id, segment): (&str, &str),
        profile: i64,
    ) -> Result<Self, StoreError> {
        let person = String::from(ProfileId::from_seq(profile));
        let mut body = Vec::with_capacity(160 + message_id.len() + segment.len());
        body.extend_from_slice(b"{\"message_id\":");
        json_string(&mut body, &message_id)?;
        write!(
            body,
            r#","type":"{}","properties":{{"profile_id":"#,
            kind.as_str()
        )?;
        json_string(&mut body, &person)?;
        body.extend_from_slice(br#","segment":"#);
        json_string(&mut body, segment)?;
        body.extend_from_slice(br#","segment_id":"#);
        json_string(&mut body, segment_id)?;
        write!(
            body,
            r#"}},"timestamp":{at},"received_at":{at},"source":"seam"}}"#
        )?;
        let json = String::from_utf8(body).expect("written from UTF-8 text");
        let log = LogRow {
            message_id,
            kind: kind.as_str(),
            name: None,
            timestamp: at,
            received_at: at,
            json,
        };
        Self::write(conn, ws, log, Some(profile))
    }

    fn write(
        conn: &Connection,
        ws: i64,
        log: LogRow,
        profile: Option<i64>,
    ) -> Result<Self, StoreError> {
        conn.prepare_cached("INSERT INTO outbox (ws, message_id, body) VALUES (?1, ?2, ?3)")?
            .execute(params![ws, log.message_id, log.json])?;
        Ok(Self {
            ws,
            log,
            row: conn.last_insert_rowid(),
            profile,
        })
    }

    /// Every event the outbox holds, in the order written.
    pub(crate) fn all(conn: &Connection) -> Result<Vec<Self>, StoreError> {
        let mut stmt = conn.prepare("SELECT id, ws, body FROM outbox ORDER BY id")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (row, ws, json) = row?;
            let event: Event = serde_json::from_str(&json)?;
            let profile = crate::process::profile_of(&event.properties);
            out.push(Self {
                ws,
                log: LogRow::new(event, json),
                row,
                profile,
            });
        }
        Ok(out)
    }
}

/// An event in the outbox: its row, and the person it is of (its `profile_id`, as a key), if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Row {
    pub id: i64,
    pub profile: Option<i64>,
}

impl Row {
    fn of(e: &Emitted) -> Self {
        Self {
            id: e.row,
            profile: e.profile,
        }
    }
}

/// The outbox's rows by workspace and message id: every event decided and not yet back through the log.
#[derive(Default)]
pub(crate) struct Pending {
    rows: HashMap<i64, HashMap<String, Row>>,
    /// The rows whose events came back in the open transaction, deleted by [`Pending::delete_returned`].
    back: Vec<i64>,
    /// What the open transaction changed, undone if it rolls back.
    journal: Vec<Change>,
}

enum Change {
    Entered(i64, String),
    Left(i64, String, Row),
}

impl Pending {
    /// The rows the outbox holds now.
    pub(crate) fn load(conn: &Connection) -> Result<Self, StoreError> {
        let mut pending = Self::default();
        pending.committed(&Emitted::all(conn)?);
        Ok(pending)
    }

    /// Whether the outbox holds the event (decided and not yet back).
    pub(crate) fn holds(&self, ws: i64, message_id: &str) -> bool {
        self.rows
            .get(&ws)
            .is_some_and(|m| m.contains_key(message_id))
    }

    /// Events written by a transaction that has committed.
    pub(crate) fn committed(&mut self, emitted: &[Emitted]) {
        for e in emitted {
            self.rows
                .entry(e.ws)
                .or_default()
                .insert(e.log.message_id.clone(), Row::of(e));
        }
    }

    /// An event written by the open transaction.
    pub(crate) fn written(&mut self, e: &Emitted) {
        self.committed(std::slice::from_ref(e));
        self.journal
            .push(Change::Entered(e.ws, e.log.message_id.clone()));
    }

    /// An event back through the log, in the open transaction: its row leaves the outbox (deleted by
    /// [`Pending::delete_returned`]). Its row if it was there (decided by these projections; otherwise it was
    /// decided before they existed and is replayed).
    pub(crate) fn returned(&mut self, ws: i64, message_id: &str) -> Option<Row> {
        let (message_id, row) = self
            .rows
            .get_mut(&ws)
            .and_then(|m| m.remove_entry(message_id))?;
        self.back.push(row.id);
        self.journal.push(Change::Left(ws, message_id, row));
        Some(row)
    }

    /// Deletes the rows of the events back in the open transaction, each run of consecutive numbers in one
    /// statement (events come back in the order they were written, so most of a transaction's are one run).
    pub(crate) fn delete_returned(&mut self, conn: &Connection) -> Result<(), StoreError> {
        if self.back.is_empty() {
            return Ok(());
        }
        self.back.sort_unstable();
        let mut stmt = conn.prepare_cached("DELETE FROM outbox WHERE id BETWEEN ?1 AND ?2")?;
        let mut runs = self.back.chunk_by(|a, b| b - a == 1);
        runs.try_for_each(|run| {
            stmt.execute([run[0], run[run.len() - 1]])?;
            Ok::<_, StoreError>(())
        })?;
        self.back.clear();
        Ok(())
    }

    /// The open transaction committed.
    pub(crate) fn settle(&mut self) {
        debug_assert!(self.back.is_empty(), "rows deleted before the commit");
        self.journal.clear();
    }

    /// The open transaction rolled back: its changes are undone, newest first.
    pub(crate) fn undo(&mut self) {
        self.back.clear();
        while let Some(change) = self.journal.pop() {
            match change {
                Change::Entered(ws, id) => {
                    if let Some(m) = self.rows.get_mut(&ws) {
                        m.remove(&id);
                    }
                }
                Change::Left(ws, id, row) => {
                    self.rows.entry(ws).or_default().insert(id, row);
                }
            }
        }
    }

    /// Events decided and not yet back.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.rows.values().map(HashMap::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;
    use seam_core::{Event, EventType};

    use super::{Emitted, Pending};
    use crate::schema::{migrate, PROJECTION_MIGRATIONS};

    fn event(id: &str) -> Event {
        Event::system(
            id.into(),
            EventType::SegmentEntered,
            1_000,
            Default::default(),
        )
    }

    fn rows(conn: &Connection) -> Vec<String> {
        let mut stmt = conn
            .prepare("SELECT message_id FROM outbox ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// A change of membership is written as serialising its `Event::system` writes it, with a segment name
    /// that JSON must escape, and knows the person it is of.
    #[test]
    fn a_membership_change_is_written_as_its_event_would_be() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, PROJECTION_MIGRATIONS).unwrap();
        let name = "Says \"hi\" \\ naïve\n\u{1}";
        for kind in [EventType::SegmentEntered, EventType::SegmentExited] {
            let e = Emitted::membership(
                &conn,
                1,
                kind,
                "$seam:x\"y".into(),
                1_234,
                ("seg_7", name),
                42,
            )
            .unwrap();
            let props = super::properties([
                ("segment_id", "seg_7".into()),
                ("segment", name.into()),
                (
                    "profile_id",
                    String::from(seam_core::ProfileId::from_seq(42)).into(),
                ),
            ]);
            let event = Event::system("$seam:x\"y".into(), kind, 1_234, props);
            assert_eq!(e.log.json, serde_json::to_string(&event).unwrap());
            let serde = crate::LogRow::new(event, e.log.json.clone());
            assert_eq!(
                (e.log.kind, &e.log.name, e.log.timestamp, e.log.received_at),
                (serde.kind, &serde.name, serde.timestamp, serde.received_at)
            );
            assert_eq!(e.profile, Some(42));
        }
        let back = Emitted::all(&conn).unwrap();
        assert_eq!(back.len(), 2);
        assert!(back.iter().all(|e| e.profile == Some(42)));
    }

    /// A rolled-back transaction leaves the outbox's rows and the map of them as they were: an event it took
    /// back is found again, one it wrote is not.
    #[test]
    fn the_map_of_rows_follows_commits_and_rollbacks() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, PROJECTION_MIGRATIONS).unwrap();
        let a = Emitted::to_outbox(&conn, 1, event("a")).unwrap();
        let mut pending = Pending::default();
        pending.committed(&[a]);
        assert_eq!(Pending::load(&conn).unwrap().len(), 1);

        let tx = conn.transaction().unwrap();
        assert!(pending.returned(1, "a").is_some());
        pending.delete_returned(&tx).unwrap();
        let b = Emitted::to_outbox(&tx, 1, event("b")).unwrap();
        pending.written(&b);
        assert!(!pending.holds(1, "a") && pending.holds(1, "b"));
        drop(tx);
        pending.undo();
        assert!(pending.holds(1, "a") && !pending.holds(1, "b"));
        assert_eq!(rows(&conn), ["a"]);

        let tx = conn.transaction().unwrap();
        assert!(pending.returned(1, "a").is_some());
        assert!(pending.returned(1, "a").is_none(), "taken back once");
        assert!(pending.returned(2, "a").is_none(), "another workspace's");
        pending.delete_returned(&tx).unwrap();
        tx.commit().unwrap();
        pending.settle();
        pending.undo();
        assert_eq!(pending.len(), 0);
        assert!(rows(&conn).is_empty());
    }

    /// The rows of the events back in a transaction are deleted, runs of consecutive numbers and lone ones
    /// alike, and nothing else; each row remembers the person its event is of.
    #[test]
    fn rows_back_are_deleted_by_runs_and_know_their_person() {
        let mut conn = Connection::open_in_memory().unwrap();
        migrate(&mut conn, PROJECTION_MIGRATIONS).unwrap();
        let mut of_someone = event("p");
        of_someone.properties.insert(
            "profile_id".into(),
            String::from(seam_core::ProfileId::from_seq(7)).into(),
        );
        let mut emitted: Vec<Emitted> = ["a", "b", "c", "d", "e", "f"]
            .into_iter()
            .map(|id| Emitted::to_outbox(&conn, 1, event(id)).unwrap())
            .collect();
        emitted.push(Emitted::to_outbox(&conn, 1, of_someone).unwrap());
        let mut pending = Pending::default();
        pending.committed(&emitted);

        let tx = conn.transaction().unwrap();
        for id in ["e", "a", "b", "d"] {
            assert!(pending.returned(1, id).is_some());
        }
        let row = pending.returned(1, "p").unwrap();
        assert_eq!(row.profile, Some(7));
        pending.delete_returned(&tx).unwrap();
        tx.commit().unwrap();
        pending.settle();
        assert_eq!(rows(&conn), ["c", "f"]);
        assert_eq!(pending.len(), 2);
    }
}

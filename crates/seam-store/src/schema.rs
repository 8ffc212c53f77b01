//! Versioned schema migrations for the two SQLite files of a data folder. A released migration is never edited;
//! add a new one.
//!
//! - `seam.db` — the event log and the workspace configuration: the truth.
//! - `projections.db` — everything derived from the log; `seam rebuild` empties it and replays the log.
//!
//! Two files, because each has one writer thread of its own: appends are never queued behind projection work.
//! Profiles are keyed by an integer, the log position of the event that created them (`ProfileId::from_seq`).

use rusqlite::Connection;

pub const LOG_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE workspaces (
        ws INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE api_keys (
        key_hash BLOB PRIMARY KEY,
        ws INTEGER NOT NULL REFERENCES workspaces(ws),
        kind TEXT NOT NULL CHECK (kind IN ('write', 'secret')),
        created_at INTEGER NOT NULL
    );
    CREATE TABLE identifier_types (
        ws INTEGER NOT NULL,
        name TEXT NOT NULL,
        priority INTEGER NOT NULL,
        max_per_profile INTEGER NOT NULL,
        PRIMARY KEY (ws, name)
    );
    -- The event log: append-only, seq is the order of everything. (ws, message_id) is unique, so a re-sent
    -- event is stored once, and Seam's own events carry message ids derived from their cause.
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY,
        ws INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        type TEXT NOT NULL,
        name TEXT,
        ts INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        body TEXT NOT NULL
    );
    CREATE UNIQUE INDEX events_by_message_id ON events (ws, message_id);
    "#,
    ),
    (
        2,
        r#"
    -- The messageIds the log holds, as 128-bit keys of (workspace, messageId), in place of the unique index:
    -- written a generation at a time in key order (see dedup.rs) rather than one random page per event. Every
    -- event up to message_ids_through has its key here; the writer reads the later ones back when it starts.
    DROP INDEX events_by_message_id;
    CREATE TABLE message_ids (hi INTEGER NOT NULL, lo INTEGER NOT NULL, PRIMARY KEY (hi, lo)) WITHOUT ROWID;
    CREATE TABLE log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO log_meta (key, value) VALUES ('message_ids_through', 0);
    "#,
    ),
];

pub const PROJECTION_MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
    INSERT INTO meta (key, value) VALUES ('applied_seq', 0);
    CREATE TABLE profiles (
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL,
        merged_into INTEGER,
        state TEXT,
        PRIMARY KEY (ws, profile)
    ) WITHOUT ROWID;
    CREATE INDEX profiles_by_merged_into ON profiles (ws, merged_into);
    CREATE TABLE identities (
        ws INTEGER NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL,
        profile INTEGER NOT NULL,
        PRIMARY KEY (ws, type, value)
    ) WITHOUT ROWID;
    CREATE INDEX identities_by_profile ON identities (ws, profile);
    CREATE TABLE timeline (
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (ws, profile, ts, seq)
    ) WITHOUT ROWID;
    CREATE TABLE identity_conflicts (
        seq INTEGER NOT NULL,
        ws INTEGER NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL,
        profile INTEGER NOT NULL,
        held_by INTEGER,
        limit_type TEXT NOT NULL,
        max_per_profile INTEGER NOT NULL,
        PRIMARY KEY (seq, type, value)
    );
    -- Seam's own events decided here and not yet seen back in the log (see projector.rs).
    CREATE TABLE outbox (
        ws INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (ws, message_id)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        2,
        r#"
    -- Segment definitions, from segment_defined / segment_deleted events in the log.
    CREATE TABLE segments (
        ws INTEGER NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        definition TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ws, id)
    ) WITHOUT ROWID;
    CREATE INDEX segments_by_name ON segments (ws, name);
    "#,
    ),
    (
        3,
        r#"
    -- Who is in which segment, decided live and written to the log as segment_entered / segment_exited.
    CREATE TABLE memberships (
        ws INTEGER NOT NULL,
        segment TEXT NOT NULL,
        profile INTEGER NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (ws, segment, profile)
    ) WITHOUT ROWID;
    CREATE INDEX memberships_by_profile ON memberships (ws, profile);
    -- Scheduling state (not compared by dump_projections): profiles to evaluate again, and when time alone
    -- may change a profile's segments.
    CREATE TABLE pending_evaluations (ws INTEGER NOT NULL, profile INTEGER NOT NULL, PRIMARY KEY (ws, profile))
        WITHOUT ROWID;
    CREATE TABLE segment_timers (
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL,
        due INTEGER NOT NULL,
        PRIMARY KEY (ws, profile)
    ) WITHOUT ROWID;
    CREATE INDEX segment_timers_by_due ON segment_timers (due);
    -- Membership decisions are made for events after this log position; older ones are replayed from the log.
    INSERT INTO meta (key, value) VALUES ('decide_after', 0);
    -- Membership decisions made so far (numbers their events' message ids).
    INSERT INTO meta (key, value) VALUES ('decisions', 0);
    "#,
    ),
    (
        4,
        r#"
    -- Computed trait definitions, from computed_trait_defined / computed_trait_deleted events in the log.
    CREATE TABLE computed_trait_defs (
        ws INTEGER NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        definition TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ws, id)
    ) WITHOUT ROWID;
    -- Their values per profile, kept current with the memberships (JSON values).
    CREATE TABLE computed_traits (
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (ws, profile, name)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        5,
        r#"
    -- Message templates and journeys, from template_* / journey_* events in the log. `definition` is the
    -- definition as JSON.
    CREATE TABLE templates (
        ws INTEGER NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        definition TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ws, id)
    ) WITHOUT ROWID;
    CREATE TABLE journeys (
        ws INTEGER NOT NULL,
        id TEXT NOT NULL,
        name TEXT NOT NULL,
        definition TEXT NOT NULL,
        version INTEGER NOT NULL,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL,
        -- draft (saved, never activated), active, paused
        status TEXT NOT NULL DEFAULT 'draft',
        PRIMARY KEY (ws, id)
    ) WITHOUT ROWID;
    -- Every version of every journey: runs in flight finish on the version they started on.
    CREATE TABLE journey_versions (
        ws INTEGER NOT NULL,
        id TEXT NOT NULL,
        version INTEGER NOT NULL,
        definition TEXT NOT NULL,
        PRIMARY KEY (ws, id, version)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        6,
        r#"
    -- Journey runs, from journey_step events: the run's state as JSON, and when it wants to be woken.
    CREATE TABLE journey_runs (
        ws INTEGER NOT NULL,
        run TEXT NOT NULL,
        journey TEXT NOT NULL,
        profile INTEGER NOT NULL,
        entered_at INTEGER NOT NULL,
        active INTEGER NOT NULL,
        wake_at INTEGER,
        state TEXT NOT NULL,
        PRIMARY KEY (ws, run)
    ) WITHOUT ROWID;
    CREATE INDEX journey_runs_by_profile ON journey_runs (ws, profile);
    CREATE INDEX journey_runs_by_journey ON journey_runs (ws, journey, entered_at);
    CREATE INDEX journey_runs_by_wake ON journey_runs (wake_at) WHERE wake_at IS NOT NULL;
    -- The outbox of messages, each once by its idempotency key (run/step/channel), rendered.
    CREATE TABLE messages (
        ws INTEGER NOT NULL,
        key TEXT NOT NULL,
        run TEXT NOT NULL,
        journey TEXT NOT NULL,
        node TEXT NOT NULL,
        profile INTEGER NOT NULL,
        channel TEXT NOT NULL,
        address TEXT NOT NULL,
        category TEXT NOT NULL,
        content TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        PRIMARY KEY (ws, key)
    ) WITHOUT ROWID;
    CREATE INDEX messages_by_profile ON messages (ws, profile, created_at);
    CREATE INDEX messages_by_journey ON messages (ws, journey, created_at);
    -- Counters per journey: entered, converted, exited:<reason>, node:<name>:<what>.
    CREATE TABLE journey_stats (
        ws INTEGER NOT NULL,
        journey TEXT NOT NULL,
        counter TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (ws, journey, counter)
    ) WITHOUT ROWID;
    -- When each scheduled journey (campaign) fires next; NULL once a one-off has fired.
    CREATE TABLE journey_schedules (
        ws INTEGER NOT NULL,
        journey TEXT NOT NULL,
        next_at INTEGER,
        PRIMARY KEY (ws, journey)
    ) WITHOUT ROWID;
    -- Events waiting to be shown to journeys (triggers, waits, goals), in log order.
    CREATE TABLE pending_journey_events (
        seq INTEGER PRIMARY KEY,
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL
    );
    "#,
    ),
    (
        7,
        r#"
    -- Where each message of the outbox stands with its channel, from message_delivery events:
    -- pending (not tried yet), retry (an attempt failed; next_attempt_at), sent, dead (attempts exhausted).
    CREATE TABLE deliveries (
        ws INTEGER NOT NULL,
        key TEXT NOT NULL,
        status TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        next_attempt_at INTEGER,
        last_error TEXT,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (ws, key)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_due ON deliveries (next_attempt_at) WHERE status IN ('pending', 'retry');
    "#,
    ),
    (
        8,
        r#"
    -- Addresses (`type:value`) no message goes to, not even a transactional one: bounced, or put there by hand.
    CREATE TABLE suppressions (
        ws INTEGER NOT NULL,
        address TEXT NOT NULL,
        reason TEXT NOT NULL,
        since INTEGER NOT NULL,
        PRIMARY KEY (ws, address)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        9,
        r#"
    -- When each person's date-triggered journeys (birthdays, N days after a trait) next fire.
    CREATE TABLE journey_dates (
        ws INTEGER NOT NULL,
        journey TEXT NOT NULL,
        profile INTEGER NOT NULL,
        next_at INTEGER NOT NULL,
        PRIMARY KEY (ws, journey, profile)
    ) WITHOUT ROWID;
    CREATE INDEX journey_dates_due ON journey_dates (next_at);
    -- People whose dates are to be planned again (their traits changed, or a date journey was activated).
    CREATE TABLE pending_date_plans (
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL,
        PRIMARY KEY (ws, profile)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        10,
        r#"
    -- A dead letter sent again starts a new round of attempts (its records must not repeat the last round's).
    ALTER TABLE deliveries ADD COLUMN round INTEGER NOT NULL DEFAULT 0;
    -- The `at` a campaign's next time was planned from: a journey saved with another `at` is planned anew.
    ALTER TABLE journey_schedules ADD COLUMN planned_from INTEGER;
    "#,
    ),
    (
        11,
        r#"
    -- Each person's digest: the events their workspace's segments and computed traits can still read (see
    -- seam_audiences::digest), brought up to date with the person's new events at each evaluation; `upto` is
    -- the last log position it has seen, `needs` the fingerprint of the definitions it was made for (a digest
    -- made for other definitions, or a person who merged, is made again from the timeline).
    CREATE TABLE digests (
        ws INTEGER NOT NULL,
        profile INTEGER NOT NULL,
        needs INTEGER NOT NULL,
        upto INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (ws, profile)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        12,
        r#"
    -- A new or changed segment being evaluated over every live profile, a range of profiles at a time (see
    -- backfill.rs): `after` is the last profile key done.
    CREATE TABLE pending_backfills (
        ws INTEGER NOT NULL,
        segment TEXT NOT NULL,
        after INTEGER NOT NULL,
        PRIMARY KEY (ws, segment)
    ) WITHOUT ROWID;
    "#,
    ),
    (
        13,
        r#"
    -- The outbox keyed by row number: an event written is an append, one back through the log a delete by
    -- number; the projector keeps which row holds which message id (see outbox.rs).
    CREATE TABLE outbox_by_row (
        id INTEGER PRIMARY KEY,
        ws INTEGER NOT NULL,
        message_id TEXT NOT NULL,
        body TEXT NOT NULL
    );
    INSERT INTO outbox_by_row (ws, message_id, body) SELECT ws, message_id, body FROM outbox;
    DROP TABLE outbox;
    ALTER TABLE outbox_by_row RENAME TO outbox;
    "#,
    ),
    (
        14,
        r#"
    -- Whether each timeline entry is a track event (1) or not (0), so that a person's track events are read
    -- from the log without looking up their other entries there; NULL (entries written before) is looked up.
    ALTER TABLE timeline ADD COLUMN track INTEGER;
    "#,
    ),
    (
        15,
        r#"
    -- A digest's body is now compact bytes (seam_audiences::digest::codec), not JSON; digests are made again
    -- from the timeline at each person's next evaluation.
    DELETE FROM digests;
    "#,
    ),
];

/// Every table of projections.db: emptied by a rebuild, compared by `dump_projections`.
pub const PROJECTION_TABLES: &[&str] = &[
    "profiles",
    "identities",
    "timeline",
    "identity_conflicts",
    "outbox",
    "segments",
    "memberships",
    "computed_trait_defs",
    "computed_traits",
    "templates",
    "journeys",
    "journey_versions",
    "journey_runs",
    "messages",
    "journey_stats",
    "journey_schedules",
    "deliveries",
    "suppressions",
];

/// Scheduling and working tables of projections.db: emptied by a rebuild, not compared (they depend on when
/// things ran).
pub const SCHEDULE_TABLES: &[&str] = &[
    "digests",
    "pending_evaluations",
    "pending_backfills",
    "segment_timers",
    "pending_journey_events",
    "journey_dates",
    "pending_date_plans",
];

/// Brings the database of `conn` up to the last of `migrations`. A database that a newer Seam migrated further
/// is refused: this one would not keep what the newer schema promises (the log's messageIds unique, say).
pub fn migrate(conn: &mut Connection, migrations: &[(i64, &str)]) -> Result<(), crate::StoreError> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    let found: Option<i64> =
        conn.query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })?;
    let known = migrations.last().map_or(0, |m| m.0);
    if let Some(found) = found.filter(|f| *f > known) {
        return Err(crate::StoreError::NewerSchema {
            file: conn.path().unwrap_or_default().to_owned(),
            found,
            known,
        });
    }
    for (version, sql) in migrations {
        let done: bool = conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
            [version],
            |r| r.get(0),
        )?;
        if !done {
            let tx = conn.transaction()?;
            tx.execute_batch(sql)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, 0)",
                [version],
            )?;
            tx.commit()?;
        }
    }
    Ok(())
}

/// A log and projections in `dir`, migrated, with the log attached to the projections as `log` (as the
/// projector has them); for unit tests.
#[cfg(test)]
pub(crate) fn test_files(dir: &std::path::Path) -> (Connection, Connection) {
    let mut log = Connection::open(dir.join("log.db")).unwrap();
    migrate(&mut log, LOG_MIGRATIONS).unwrap();
    let mut conn = Connection::open(dir.join("projections.db")).unwrap();
    migrate(&mut conn, PROJECTION_MIGRATIONS).unwrap();
    conn.execute(
        "ATTACH DATABASE ?1 AS log",
        [dir.join("log.db").to_str().unwrap()],
    )
    .unwrap();
    (log, conn)
}

#[cfg(test)]
mod tests {
    use super::{migrate, LOG_MIGRATIONS};
    use crate::StoreError;

    #[test]
    fn a_database_migrated_by_a_newer_seam_is_refused_by_name_and_version() {
        let dir = tempfile::tempdir().unwrap();
        let mut conn = rusqlite::Connection::open(dir.path().join("seam.db")).unwrap();
        migrate(&mut conn, LOG_MIGRATIONS).unwrap();
        // Migrating again is a no-op; an older Seam knowing only the first migration is turned away.
        migrate(&mut conn, LOG_MIGRATIONS).unwrap();
        let err = migrate(&mut conn, &LOG_MIGRATIONS[..1]).unwrap_err();
        let newest = LOG_MIGRATIONS.last().unwrap().0;
        assert!(
            matches!(err, StoreError::NewerSchema { found, known: 1, .. } if found == newest),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.contains("seam.db") && text.contains("newer version"),
            "{text}"
        );
    }
}

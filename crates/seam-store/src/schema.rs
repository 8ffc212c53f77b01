//! Versioned schema migrations for the SQLite backend. A migration is never edited once released; add a new one.

use rusqlite::Connection;

/// Each entry is applied once, in order, inside one transaction with its version row.
const MIGRATIONS: &[(i64, &str)] = &[(
    1,
    r#"
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
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

    -- Projections: rebuilt from the log by `seam rebuild`.
    CREATE TABLE profiles (
        ws INTEGER NOT NULL,
        id TEXT NOT NULL,
        merged_into TEXT,
        state TEXT,
        PRIMARY KEY (ws, id)
    ) WITHOUT ROWID;
    CREATE INDEX profiles_by_merged_into ON profiles (ws, merged_into) WHERE merged_into IS NOT NULL;
    CREATE TABLE identities (
        ws INTEGER NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        PRIMARY KEY (ws, type, value)
    ) WITHOUT ROWID;
    CREATE INDEX identities_by_profile ON identities (ws, profile_id);
    CREATE TABLE timeline (
        ws INTEGER NOT NULL,
        profile_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY (ws, profile_id, ts, seq)
    ) WITHOUT ROWID;
    CREATE TABLE identity_conflicts (
        seq INTEGER NOT NULL,
        ws INTEGER NOT NULL,
        type TEXT NOT NULL,
        value TEXT NOT NULL,
        profile_id TEXT NOT NULL,
        held_by TEXT,
        limit_type TEXT NOT NULL,
        max_per_profile INTEGER NOT NULL,
        PRIMARY KEY (seq, type, value)
    );
    INSERT INTO meta (key, value) VALUES ('applied_seq', '0');
    "#,
)];

/// Tables that are projections of the log, emptied by a rebuild.
pub const PROJECTION_TABLES: &[&str] =
    &["profiles", "identities", "timeline", "identity_conflicts"];

pub fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
    )?;
    for (version, sql) in MIGRATIONS {
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

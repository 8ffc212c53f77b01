//! Workspaces, their API keys and their identifier rules.
//!
//! Keys are shown once, when created; only their SHA-256 is stored. A write key can only send events; a secret
//! key reads profiles (and can also send events, from a shop's backend).

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use rusqlite::{params, Connection, OptionalExtension};
use seam_core::{IdentifierRules, IdentifierType, TypeRule};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::{open_connection, prepare, StoreError};

/// A workspace's internal key (the `ws` column of every table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkspaceKey(pub i64);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyKind {
    Write,
    Secret,
}

/// A new workspace's id and keys, printed once by `seam init`.
#[derive(Clone, Serialize)]
pub struct Credentials {
    pub workspace: String,
    pub write_key: String,
    pub secret_key: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("workspace", &self.workspace)
            .field("write_key", &"<redacted>")
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

pub(crate) fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// A random id or key: `prefix` and `len` characters of `0-9A-Za-z`.
pub fn random_token(prefix: &str, len: usize) -> Result<String, StoreError> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(prefix.len() + len);
    out.push_str(prefix);
    while out.len() < prefix.len() + len {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf)
            .map_err(|e| StoreError::Io(std::io::Error::other(e.to_string())))?;
        // 62 * 4 = 248: rejecting bytes >= 248 keeps every character equally likely.
        for b in buf.into_iter().filter(|&b| b < 248) {
            if out.len() == prefix.len() + len {
                break;
            }
            out.push(ALPHABET[(b % 62) as usize] as char);
        }
    }
    Ok(out)
}

/// Creates the data folder, its database and a default workspace with a write key and a secret key, unless a
/// workspace exists already. Returns the new credentials, or `None` when the folder was initialised before.
pub fn init_data_dir(data_dir: &Path, now_ms: i64) -> Result<Option<Credentials>, StoreError> {
    prepare(data_dir)?;
    let mut conn = open_connection(&data_dir.join(crate::DB_FILE), false)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let exists: Option<i64> = tx
        .query_row("SELECT ws FROM workspaces LIMIT 1", [], |r| r.get(0))
        .optional()?;
    if exists.is_some() {
        return Ok(None);
    }
    let id = random_token("ws_", 16)?;
    tx.execute(
        "INSERT INTO workspaces (id, name, created_at) VALUES (?1, 'default', ?2)",
        params![id, now_ms],
    )?;
    let ws = tx.last_insert_rowid();
    let creds = Credentials {
        workspace: id,
        write_key: random_token("wk_", 32)?,
        secret_key: random_token("sk_", 40)?,
    };
    for (key, kind) in [(&creds.write_key, "write"), (&creds.secret_key, "secret")] {
        tx.execute(
            "INSERT INTO api_keys (key_hash, ws, kind, created_at) VALUES (?1, ?2, ?3, ?4)",
            params![hash_key(key).to_vec(), ws, kind, now_ms],
        )?;
    }
    save_rules(&tx, ws, &IdentifierRules::default())?;
    tx.commit()?;
    Ok(Some(creds))
}

/// The workspaces in a data folder: `(key, id)`, oldest first.
pub fn list_workspaces(data_dir: &Path) -> Result<Vec<(WorkspaceKey, String)>, StoreError> {
    let conn = open_connection(&data_dir.join(crate::DB_FILE), true)?;
    let mut stmt = conn.prepare("SELECT ws, id FROM workspaces ORDER BY ws")?;
    let rows = stmt.query_map([], |r| Ok((WorkspaceKey(r.get(0)?), r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

pub(crate) fn load_keys(
    conn: &Connection,
) -> Result<HashMap<[u8; 32], (WorkspaceKey, KeyKind)>, StoreError> {
    let mut stmt = conn.prepare("SELECT key_hash, ws, kind FROM api_keys")?;
    let rows = stmt.query_map([], |r| {
        let hash: Vec<u8> = r.get(0)?;
        let kind: String = r.get(2)?;
        Ok((hash, WorkspaceKey(r.get(1)?), kind))
    })?;
    let mut out = HashMap::new();
    for row in rows {
        let (hash, ws, kind) = row?;
        let hash: [u8; 32] = hash
            .try_into()
            .map_err(|_| StoreError::Corrupt("api key hash length".into()))?;
        let kind = if kind == "secret" {
            KeyKind::Secret
        } else {
            KeyKind::Write
        };
        out.insert(hash, (ws, kind));
    }
    Ok(out)
}

pub(crate) fn load_rules(conn: &Connection) -> Result<HashMap<i64, IdentifierRules>, StoreError> {
    let mut stmt =
        conn.prepare("SELECT ws, name, priority, max_per_profile FROM identifier_types")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i32>(2)?,
            r.get::<_, u32>(3)?,
        ))
    })?;
    let mut out: HashMap<i64, IdentifierRules> = HashMap::new();
    for row in rows {
        let (ws, name, priority, limit) = row?;
        let kind = IdentifierType::parse(&name).map_err(StoreError::Corrupt)?;
        out.entry(ws)
            .or_insert_with(IdentifierRules::empty)
            .set(kind, TypeRule { priority, limit });
    }
    Ok(out)
}

pub(crate) fn save_rules(
    conn: &Connection,
    ws: i64,
    rules: &IdentifierRules,
) -> Result<(), StoreError> {
    conn.execute("DELETE FROM identifier_types WHERE ws = ?1", [ws])?;
    for (kind, rule) in rules.iter() {
        conn.execute(
            "INSERT INTO identifier_types (ws, name, priority, max_per_profile) VALUES (?1, ?2, ?3, ?4)",
            params![ws, kind.as_str(), rule.priority, rule.limit],
        )?;
    }
    Ok(())
}

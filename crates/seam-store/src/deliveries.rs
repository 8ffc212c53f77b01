//! Where each message of the outbox stands with its channel.
//!
//! The dispatcher (in the server) takes the messages that are due, hands each to its channel, and records what
//! happened as a `message_delivery` event in the log: `sent`; `retry` (an attempt failed, the next is due at a
//! time from the back-off schedule); `dead` (the attempts are exhausted: the dead letters); `requeued` (a dead
//! letter sent again by the API). The `deliveries` table is the projection of those events, so a rebuild knows
//! what was sent and sends nothing again.
//!
//! The suppression list lives here too: addresses no message goes to. A bounce puts the address on it (from the
//! `Message Bounced` event itself, so a rebuild agrees); the API adds and removes addresses with `suppression`
//! events.

use rusqlite::{params, Connection, OptionalExtension};
use seam_core::clock::format_rfc3339;
use seam_core::{Event, EventType, Millis, ProfileId};
use serde::Serialize;
use serde_json::{json, Value};

use crate::process::text;
use crate::{LogRow, Store, StoreError, WorkspaceKey};

/// A message due for an attempt.
#[derive(Debug, Clone, Serialize)]
pub struct Due {
    #[serde(skip)]
    pub ws: WorkspaceKey,
    pub key: String,
    pub run: String,
    pub journey: String,
    pub node: String,
    pub profile_id: ProfileId,
    pub channel: String,
    pub address: String,
    pub content: Value,
    /// Attempts made before this one (in this round).
    pub attempts: u32,
    /// How many times the message was sent again from the dead letters.
    pub round: u32,
}

/// What an attempt came to.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    Sent,
    /// Failed; try again at `retry_at`, or never (`None`: dead letter).
    Failed {
        error: String,
        retry_at: Option<Millis>,
    },
}

/// Applies a `message_delivery` event.
pub(crate) fn apply(conn: &Connection, ws: i64, event: &Event) -> Result<(), StoreError> {
    let p = &event.properties;
    let s = |k: &str| text(p, k);
    let status = s("status");
    let (status, next, attempts, new_round) = match status {
        "requeued" => ("pending", Some(event.timestamp), Some(0), 1),
        "retry" => ("retry", p.get("retry_at").and_then(Value::as_i64), None, 0),
        "sent" | "dead" => (status, None, None, 0),
        _ => return Ok(()),
    };
    // An upsert: should a record ever precede its message in the log, the message's own insert (OR IGNORE)
    // then keeps the record rather than starting over as pending.
    conn.prepare_cached(
        "INSERT INTO deliveries (ws, key, status, attempts, next_attempt_at, last_error, updated_at, round)
         VALUES (?1, ?2, ?3, COALESCE(?5, ?6), ?4, ?7, ?8, ?9)
         ON CONFLICT (ws, key) DO UPDATE SET status = ?3, next_attempt_at = ?4,
             attempts = COALESCE(?5, ?6), last_error = ?7, updated_at = ?8, round = round + ?9",
    )?
    .execute(params![
        ws,
        s("key"),
        status,
        next,
        attempts,
        p.get("attempts").and_then(Value::as_i64).unwrap_or(0),
        p.get("error").and_then(Value::as_str),
        event.timestamp,
        new_round
    ])?;
    Ok(())
}

impl Store {
    /// Messages due for an attempt at `now`, oldest first.
    pub fn due_deliveries(&self, now: Millis, limit: usize) -> Result<Vec<Due>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT d.ws, d.key, m.run, m.journey, m.node, m.profile, m.channel, m.address, m.content, d.attempts,
                        d.round
                 FROM p.deliveries d JOIN p.messages m ON m.ws = d.ws AND m.key = d.key
                 WHERE d.status IN ('pending', 'retry') AND d.next_attempt_at <= ?1
                 ORDER BY d.next_attempt_at, d.key LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![now, limit as i64], |r| {
                Ok(Due {
                    ws: WorkspaceKey(r.get(0)?),
                    key: r.get(1)?,
                    run: r.get(2)?,
                    journey: r.get(3)?,
                    node: r.get(4)?,
                    profile_id: ProfileId::from_seq(r.get(5)?),
                    channel: r.get(6)?,
                    address: r.get(7)?,
                    content: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or(Value::Null),
                    attempts: r.get(9)?,
                    round: r.get(10)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// Records an attempt: a `message_delivery` event in the log, applied before this returns.
    pub async fn record_attempt(
        &self,
        due: &Due,
        attempt: Attempt,
        now: Millis,
    ) -> Result<(), StoreError> {
        let n = due.attempts + 1;
        let props = match &attempt {
            Attempt::Sent => json!({"status": "sent"}),
            Attempt::Failed {
                error,
                retry_at: Some(at),
            } => {
                json!({"status": "retry", "error": error, "retry_at": at})
            }
            Attempt::Failed {
                error,
                retry_at: None,
            } => json!({"status": "dead", "error": error}),
        };
        let mut props = props.as_object().cloned().unwrap_or_default();
        props.insert("key".into(), json!(due.key));
        props.insert("attempts".into(), json!(n));
        props.insert("channel".into(), json!(due.channel));
        props.insert("profile_id".into(), json!(due.profile_id));
        let status = props["status"].as_str().unwrap_or_default().to_owned();
        self.append_delivery(
            due.ws,
            format!("$seam:delivery:{}:{}:{n}:{status}", due.key, due.round),
            props,
            now,
        )
        .await
    }

    /// Sends a dead letter again: a `requeued` event; the attempts start over. False when the message is not
    /// a dead letter.
    pub async fn requeue(
        &self,
        ws: WorkspaceKey,
        key: &str,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let found: Option<(String, i64)> = self.with_reader(|c| {
            Ok(c.prepare_cached("SELECT d.status, m.profile FROM p.deliveries d JOIN p.messages m ON m.ws = d.ws AND m.key = d.key WHERE d.ws = ?1 AND d.key = ?2")?
                .query_row(params![ws.0, key], |r| Ok((r.get(0)?, r.get(1)?)))
                .optional()?)
        })?;
        let Some((status, profile)) = found else {
            return Ok(false);
        };
        if status != "dead" {
            return Ok(false);
        }
        let token = crate::workspace::random_token("", 8)?;
        let props =
            json!({"status": "requeued", "key": key, "profile_id": ProfileId::from_seq(profile)});
        self.append_delivery(
            ws,
            format!("$seam:delivery:{key}:requeued:{token}"),
            props.as_object().cloned().unwrap_or_default(),
            now,
        )
        .await?;
        Ok(true)
    }

    /// A message's delivery: status, attempts, the last error, when it is next tried.
    pub fn delivery(&self, ws: WorkspaceKey, key: &str) -> Result<Option<Value>, StoreError> {
        self.with_reader(|c| {
            Ok(c.prepare_cached(
                "SELECT status, attempts, next_attempt_at, last_error, updated_at FROM p.deliveries WHERE ws = ?1 AND key = ?2",
            )?
            .query_row(params![ws.0, key], |r| {
                Ok(json!({
                    "status": r.get::<_, String>(0)?,
                    "attempts": r.get::<_, i64>(1)?,
                    "next_attempt_at": r.get::<_, Option<i64>>(2)?.map(format_rfc3339),
                    "last_error": r.get::<_, Option<String>>(3)?,
                    "updated_at": format_rfc3339(r.get(4)?),
                }))
            })
            .optional()?)
        })
    }

    async fn append_delivery(
        &self,
        ws: WorkspaceKey,
        message_id: String,
        props: serde_json::Map<String, Value>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let event = Event::system(message_id, EventType::MessageDelivery, now, props);
        let body = serde_json::to_string(&event)?;
        self.append(ws, vec![LogRow::new(event, body)]).await?;
        self.caught_up().await;
        Ok(())
    }
}

/// A `Message Bounced` event of `profile`: the message's address goes on the suppression list — only when the
/// message is that person's (anyone holding the write key can send such an event).
pub(crate) fn suppress_bounced(
    conn: &Connection,
    ws: i64,
    profile: i64,
    event: &Event,
) -> Result<(), StoreError> {
    let Some(key) = event.properties.get("message_id").and_then(Value::as_str) else {
        return Ok(());
    };
    conn.prepare_cached(
        "INSERT OR IGNORE INTO suppressions (ws, address, reason, since)
         SELECT ws, address, 'bounced', ?3 FROM messages
         WHERE ws = ?1 AND key = ?2 AND profile = ?4 AND channel != 'webhook'",
    )?
    .execute(params![ws, key, event.timestamp, profile])?;
    Ok(())
}

/// A `suppression` event from the API.
pub(crate) fn apply_suppression(
    conn: &Connection,
    ws: i64,
    event: &Event,
) -> Result<(), StoreError> {
    let s = |k: &str| text(&event.properties, k);
    if s("action") == "remove" {
        conn.prepare_cached("DELETE FROM suppressions WHERE ws = ?1 AND address = ?2")?
            .execute(params![ws, s("address")])?;
    } else {
        conn.prepare_cached("INSERT OR REPLACE INTO suppressions (ws, address, reason, since) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![ws, s("address"), s("reason"), event.timestamp])?;
    }
    Ok(())
}

/// Which of `addresses` are on the suppression list.
pub(crate) fn suppressed_of(
    conn: &Connection,
    ws: i64,
    addresses: impl IntoIterator<Item = String>,
) -> Result<std::collections::BTreeSet<String>, StoreError> {
    let mut out = std::collections::BTreeSet::new();
    let mut stmt =
        conn.prepare_cached("SELECT 1 FROM suppressions WHERE ws = ?1 AND address = ?2")?;
    for a in addresses {
        if stmt.exists(params![ws, a])? {
            out.insert(a);
        }
    }
    Ok(out)
}

impl Store {
    /// The suppression list, newest first.
    pub fn suppressions(&self, ws: WorkspaceKey, limit: usize) -> Result<Vec<Value>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT address, reason, since FROM p.suppressions WHERE ws = ?1 ORDER BY since DESC, address LIMIT ?2",
            )?;
            let rows = stmt.query_map(params![ws.0, limit as i64], |r| {
                Ok(json!({"address": r.get::<_, String>(0)?, "reason": r.get::<_, String>(1)?,
                          "since": format_rfc3339(r.get(2)?)}))
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn is_suppressed(&self, ws: WorkspaceKey, address: &str) -> Result<bool, StoreError> {
        self.with_reader(|c| {
            Ok(
                c.prepare_cached("SELECT 1 FROM p.suppressions WHERE ws = ?1 AND address = ?2")?
                    .exists(params![ws.0, address])?,
            )
        })
    }

    /// Puts an address (`type:value`) on the suppression list, or takes it off: a `suppression` event.
    pub async fn set_suppression(
        &self,
        ws: WorkspaceKey,
        address: &str,
        reason: Option<&str>,
        now: Millis,
    ) -> Result<(), StoreError> {
        let token = crate::workspace::random_token("", 8)?;
        let props = match reason {
            Some(r) => json!({"action": "add", "address": address, "reason": r}),
            None => json!({"action": "remove", "address": address}),
        };
        let event = Event::system(
            format!("$seam:suppression:{token}"),
            EventType::Suppression,
            now,
            props.as_object().cloned().unwrap_or_default(),
        );
        let body = serde_json::to_string(&event)?;
        self.append(ws, vec![LogRow::new(event, body)]).await?;
        self.caught_up().await;
        Ok(())
    }
}

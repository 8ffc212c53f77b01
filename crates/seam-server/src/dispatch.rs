//! The dispatcher: hands the outbox's due messages to their channels and records what came of each.
//!
//! Channels are adapters. Built in: the **outbox file** for every messaging channel (e-mail, SMS, push,
//! messengers), which appends the message to `outbox/<channel>.jsonl` in the data folder — the development and
//! demo channel, whose outcomes are reported through `POST /v1/messages/{key}/outcome` — and the **webhook**, an
//! HTTP POST signed with HMAC-SHA-256. A failed attempt is tried again after the next delay of the back-off
//! schedule; when the schedule is exhausted (or the endpoint refuses the request for good) the message is a dead
//! letter, which the API can send again.
//!
//! Every attempt is recorded in the log (`message_delivery`) before the next batch is taken, so a message is
//! attempted again only if the process died between the attempt and the record; webhook requests carry the
//! message's key in `Idempotency-Key` so that the receiver can tell.

use std::path::PathBuf;
use std::time::Duration;

use hmac::{Hmac, Mac};
use seam_core::Millis;
use seam_store::deliveries::{Attempt, Due};
use serde_json::json;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;

use crate::AppState;

/// How the dispatcher works.
#[derive(Debug, Clone)]
pub struct DispatchSettings {
    /// Delays before the second, third, … attempt; after the last, a failed message is a dead letter.
    pub retry: Vec<Millis>,
    /// The key webhook requests are signed with.
    pub webhook_secret: String,
    /// Where the outbox channel writes (`<data>/outbox`).
    pub outbox_dir: PathBuf,
    /// How long a webhook request may take.
    pub timeout: Duration,
}

impl DispatchSettings {
    pub fn new(outbox_dir: PathBuf, webhook_secret: String) -> Self {
        Self {
            retry: [60_000, 600_000, 3_600_000, 6 * 3_600_000].to_vec(),
            webhook_secret,
            outbox_dir,
            timeout: Duration::from_secs(10),
        }
    }
}

/// What one dispatch pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Dispatched {
    pub sent: usize,
    pub retried: usize,
    pub dead: usize,
}

/// Why an attempt failed, and whether trying again can help.
struct Failure {
    error: String,
    permanent: bool,
}

/// Attempts every message due now (in batches of 100) and records each outcome.
pub async fn dispatch_due(
    state: &AppState,
    settings: &DispatchSettings,
    client: &reqwest::Client,
) -> Result<Dispatched, seam_store::StoreError> {
    let mut done = Dispatched::default();
    // Each message at most once a pass, whatever its record turns out to be.
    let mut tried = std::collections::HashSet::new();
    loop {
        let now = state.clock.now_ms();
        let store = state.store.clone();
        let due = tokio::task::spawn_blocking(move || store.due_deliveries(now, 100))
            .await
            .map_err(|_| seam_store::StoreError::Closed)??;
        let due: Vec<Due> = due
            .into_iter()
            .filter(|d| tried.insert(d.key.clone()))
            .collect();
        if due.is_empty() {
            return Ok(done);
        }
        for d in due {
            // Each request signed and timed when it goes, not when the batch was read.
            let now = state.clock.now_ms();
            let result = if let Some(e) = d.content.get("rendering_error") {
                // A message whose template did not render is not sent half-made.
                Err(Failure {
                    error: format!("the template did not render: {e}"),
                    permanent: true,
                })
            } else {
                match d.channel.as_str() {
                    "webhook" => post_webhook(&d, settings, client, now).await,
                    _ => append_to_outbox(&d, settings, now).await,
                }
            };
            let attempt = match result {
                Ok(()) => {
                    done.sent += 1;
                    Attempt::Sent
                }
                Err(f) => {
                    let retry_at = if f.permanent {
                        None
                    } else {
                        settings
                            .retry
                            .get(d.attempts as usize)
                            .map(|delay| now + delay)
                    };
                    if retry_at.is_some() {
                        done.retried += 1;
                    } else {
                        done.dead += 1;
                        // The error text may quote the person's data (a rendering error does): not logged.
                        tracing::warn!(key = %d.key, channel = %d.channel, "a message is a dead letter");
                    }
                    Attempt::Failed {
                        error: f.error,
                        retry_at,
                    }
                }
            };
            state.store.record_attempt(&d, attempt, now).await?;
        }
    }
}

/// Runs the dispatcher until the store closes: a pass every `every`.
pub async fn run(state: AppState, settings: DispatchSettings, every: Duration) {
    let client = match reqwest::Client::builder().timeout(settings.timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "the dispatcher's HTTP client could not be built; nothing is dispatched");
            return;
        }
    };
    loop {
        match dispatch_due(&state, &settings, &client).await {
            Ok(_) => {}
            Err(seam_store::StoreError::Closed) => return,
            Err(e) => tracing::error!(error = %e, "a dispatch pass failed; it will be tried again"),
        }
        tokio::time::sleep(every).await;
    }
}

/// The built-in channel: one JSON line per message in `outbox/<channel>.jsonl`, flushed to disk.
async fn append_to_outbox(
    d: &Due,
    settings: &DispatchSettings,
    now: Millis,
) -> Result<(), Failure> {
    let io = |e: std::io::Error| Failure {
        error: format!("writing the outbox file: {e}"),
        permanent: false,
    };
    tokio::fs::create_dir_all(&settings.outbox_dir)
        .await
        .map_err(io)?;
    let mut line = serde_json::to_vec(&json!({
        "key": d.key, "journey": d.journey, "run": d.run, "node": d.node, "profile_id": d.profile_id,
        "channel": d.channel, "address": d.address, "content": d.content,
        "at": seam_core::clock::format_rfc3339(now),
    }))
    .map_err(|e| Failure {
        error: e.to_string(),
        permanent: true,
    })?;
    line.push(b'\n');
    let path = settings.outbox_dir.join(format!("{}.jsonl", d.channel));
    let mut f = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .await
        .map_err(io)?;
    f.write_all(&line).await.map_err(io)?;
    f.sync_data().await.map_err(io)
}

/// The signature of a webhook body: `t=<unix seconds>,v1=<hex HMAC-SHA-256 of "<t>.<body>">`.
pub fn signature(secret: &str, t: i64, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes a key of any length");
    mac.update(format!("{t}.").as_bytes());
    mac.update(body);
    let hex: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("t={t},v1={hex}")
}

async fn post_webhook(
    d: &Due,
    settings: &DispatchSettings,
    client: &reqwest::Client,
    now: Millis,
) -> Result<(), Failure> {
    let body = serde_json::to_vec(&json!({
        "key": d.key, "journey": d.journey, "run": d.run, "node": d.node, "profile_id": d.profile_id,
        "event": d.content.get("event"), "sent_at": seam_core::clock::format_rfc3339(now),
    }))
    .map_err(|e| Failure {
        error: e.to_string(),
        permanent: true,
    })?;
    let resp = client
        .post(&d.address)
        .header("content-type", "application/json")
        .header("idempotency-key", &d.key)
        .header(
            "seam-signature",
            signature(&settings.webhook_secret, now / 1000, &body),
        )
        .body(body)
        .send()
        .await
        .map_err(|e| Failure {
            error: format!("the request failed: {e}"),
            permanent: false,
        })?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    // 4xx is the endpoint refusing the request itself (but for time-outs and rate limits): trying again
    // cannot help.
    let permanent = status.is_client_error() && status.as_u16() != 408 && status.as_u16() != 429;
    Err(Failure {
        error: format!("the endpoint answered {status}"),
        permanent,
    })
}

//! Prometheus text metrics: events accepted, rejected and deduplicated, requests by status, the acknowledgement
//! latency histogram and the processing lag.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use seam_core::histogram::Histogram;

use crate::AppState;

const STATUSES: [u16; 10] = [200, 400, 401, 403, 404, 413, 415, 429, 500, 503];

#[derive(Debug, Default)]
pub struct Metrics {
    rejected: AtomicU64,
    ack: Histogram,
    requests: [AtomicU64; STATUSES.len()],
    requests_other: AtomicU64,
}

impl Metrics {
    pub fn observe_ack(&self, d: Duration) {
        self.ack.observe(d);
    }

    pub fn count_rejected(&self, n: u64) {
        self.rejected.fetch_add(n, Ordering::Relaxed);
    }

    pub fn count_request(&self, status: u16) {
        match STATUSES.iter().position(|&s| s == status) {
            Some(i) => self.requests[i].fetch_add(1, Ordering::Relaxed),
            None => self.requests_other.fetch_add(1, Ordering::Relaxed),
        };
    }
}

pub(crate) async fn render(State(s): State<AppState>) -> impl IntoResponse {
    let m = &s.metrics;
    let st = s.store.stats();
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let mut out = String::with_capacity(2048);
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        "seam_events_accepted_total",
        "Events stored in the event log (each messageId once).",
        load(&st.stored),
    );
    counter(
        "seam_events_rejected_total",
        "Events (or whole bodies) rejected as invalid.",
        load(&m.rejected),
    );
    counter(
        "seam_events_deduplicated_total",
        "Events not stored again because their messageId was already in the log.",
        load(&st.deduplicated),
    );
    counter(
        "seam_group_commits_total",
        "Transactions committed by the log writer.",
        load(&st.commits),
    );
    counter(
        "seam_evaluations_apart_total",
        "Profiles whose segments were decided from an evaluation on an evaluator thread, off the projector's.",
        load(&st.evaluated_apart),
    );
    counter(
        "seam_evaluations_again_total",
        "Profiles evaluated off the projector's thread that changed meanwhile, so were left queued to be evaluated again.",
        load(&st.evaluated_again),
    );
    counter(
        "seam_wal_restarts_total",
        "WALs (the log's or the projections') started over once past their limit.",
        load(&st.wal_restarts),
    );
    counter(
        "seam_wal_restarts_deferred_total",
        "Restarts of a WAL past its limit put off because readers held it or too much was left to copy.",
        load(&st.wal_restarts_deferred),
    );
    let _ = writeln!(
        out,
        "# HELP seam_http_requests_total Collection requests answered, by status."
    );
    let _ = writeln!(out, "# TYPE seam_http_requests_total counter");
    for (i, status) in STATUSES.iter().enumerate() {
        let _ = writeln!(
            out,
            "seam_http_requests_total{{status=\"{status}\"}} {}",
            load(&m.requests[i])
        );
    }
    let _ = writeln!(
        out,
        "seam_http_requests_total{{status=\"other\"}} {}",
        load(&m.requests_other)
    );
    m.ack.render(
        &mut out,
        "seam_ack_latency_seconds",
        "Time from request to acknowledgement of collection calls.",
    );
    st.commit_wait.render(
        &mut out,
        "seam_group_commit_wait_seconds",
        "Time a batch waited for the log writer to start the group commit that holds it.",
    );
    st.commit.render(
        &mut out,
        "seam_group_commit_seconds",
        "Time from the start of one group commit of the log until the WAL holding it was flushed to disk.",
    );
    let log_seq = st.log_seq.load(Ordering::Relaxed);
    let applied = st.applied_seq.load(Ordering::Relaxed);
    let received = st.applied_received_at.load(Ordering::Relaxed);
    // Age of the last applied event when the projections are behind: how far back in time they are.
    let lag_secs = if applied < log_seq && received > 0 {
        (s.clock.now_ms() - received).max(0) as f64 / 1000.0
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "# HELP seam_processing_lag_events Log positions written but not yet applied to profiles."
    );
    let _ = writeln!(
        out,
        "# TYPE seam_processing_lag_events gauge\nseam_processing_lag_events {}",
        (log_seq - applied).max(0)
    );
    let _ = writeln!(
        out,
        "# HELP seam_processing_lag_seconds How far behind the log the profiles are, in seconds of receive time."
    );
    let _ = writeln!(
        out,
        "# TYPE seam_processing_lag_seconds gauge\nseam_processing_lag_seconds {lag_secs}"
    );
    let _ = writeln!(
        out,
        "# HELP seam_log_seq Highest position in the event log."
    );
    let _ = writeln!(out, "# TYPE seam_log_seq gauge\nseam_log_seq {log_seq}");
    let _ = writeln!(
        out,
        "# HELP seam_wal_held_bytes Bytes of frames each WAL held when last copied into its database file.\n\
         # TYPE seam_wal_held_bytes gauge\n\
         seam_wal_held_bytes{{file=\"log\"}} {}\n\
         seam_wal_held_bytes{{file=\"projections\"}} {}",
        load(&st.log_wal_held),
        load(&st.projections_wal_held)
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}

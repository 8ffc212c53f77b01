use serde_json::{json, Value};

use crate::spawn_app;

/// Every endpoint the router serves, as (method, OpenAPI path, a concrete path to call).
const ENDPOINTS: &[(&str, &str, &str)] = &[
    ("post", "/v1/identify", "/v1/identify"),
    ("post", "/v1/track", "/v1/track"),
    ("post", "/v1/page", "/v1/page"),
    ("post", "/v1/screen", "/v1/screen"),
    ("post", "/v1/group", "/v1/group"),
    ("post", "/v1/alias", "/v1/alias"),
    ("post", "/v1/batch", "/v1/batch"),
    ("post", "/v1/i", "/v1/i"),
    ("post", "/v1/t", "/v1/t"),
    ("post", "/v1/p", "/v1/p"),
    ("post", "/v1/s", "/v1/s"),
    ("post", "/v1/g", "/v1/g"),
    ("post", "/v1/a", "/v1/a"),
    ("post", "/v1/b", "/v1/b"),
    ("get", "/v1/profiles/{reference}", "/v1/profiles/user_id:1"),
    (
        "get",
        "/v1/profiles/{reference}/events",
        "/v1/profiles/user_id:1/events",
    ),
    (
        "get",
        "/v1/profiles/{reference}/segments",
        "/v1/profiles/user_id:1/segments",
    ),
    ("get", "/v1/computed-traits", "/v1/computed-traits"),
    ("post", "/v1/computed-traits", "/v1/computed-traits"),
    (
        "get",
        "/v1/computed-traits/{id}",
        "/v1/computed-traits/ct_x",
    ),
    (
        "put",
        "/v1/computed-traits/{id}",
        "/v1/computed-traits/ct_x",
    ),
    (
        "delete",
        "/v1/computed-traits/{id}",
        "/v1/computed-traits/ct_x",
    ),
    ("get", "/v1/segments", "/v1/segments"),
    ("post", "/v1/segments", "/v1/segments"),
    ("post", "/v1/segments/preview", "/v1/segments/preview"),
    ("get", "/v1/segments/{id}", "/v1/segments/seg_x"),
    ("put", "/v1/segments/{id}", "/v1/segments/seg_x"),
    ("delete", "/v1/segments/{id}", "/v1/segments/seg_x"),
    (
        "get",
        "/v1/segments/{id}/members",
        "/v1/segments/seg_x/members",
    ),
    (
        "get",
        "/v1/segments/{id}/explain/{reference}",
        "/v1/segments/seg_x/explain/user_id:1",
    ),
    ("get", "/v1/templates", "/v1/templates"),
    ("get", "/v1/templates/{id}", "/v1/templates/t"),
    ("put", "/v1/templates/{id}", "/v1/templates/t"),
    ("delete", "/v1/templates/{id}", "/v1/templates/t"),
    (
        "post",
        "/v1/templates/{id}/preview",
        "/v1/templates/t/preview",
    ),
    ("get", "/v1/journeys", "/v1/journeys"),
    ("post", "/v1/journeys/validate", "/v1/journeys/validate"),
    ("get", "/v1/journeys/{id}", "/v1/journeys/j"),
    ("put", "/v1/journeys/{id}", "/v1/journeys/j"),
    ("delete", "/v1/journeys/{id}", "/v1/journeys/j"),
    (
        "post",
        "/v1/journeys/{id}/activate",
        "/v1/journeys/j/activate",
    ),
    ("post", "/v1/journeys/{id}/pause", "/v1/journeys/j/pause"),
    ("post", "/v1/journeys/{id}/enter", "/v1/journeys/j/enter"),
    ("get", "/v1/journeys/{id}/stats", "/v1/journeys/j/stats"),
    (
        "get",
        "/v1/profiles/{reference}/journeys",
        "/v1/profiles/user_id:1/journeys",
    ),
    ("get", "/v1/messages", "/v1/messages"),
    (
        "post",
        "/v1/messages/{key}/outcome",
        "/v1/messages/k/outcome",
    ),
    ("post", "/v1/messages/{key}/replay", "/v1/messages/k/replay"),
    ("get", "/v1/suppressions", "/v1/suppressions"),
    (
        "put",
        "/v1/suppressions/{address}",
        "/v1/suppressions/email:a@example.com",
    ),
    (
        "delete",
        "/v1/suppressions/{address}",
        "/v1/suppressions/email:a@example.com",
    ),
    ("get", "/openapi.json", "/openapi.json"),
    ("get", "/healthz", "/healthz"),
    ("get", "/metrics", "/metrics"),
];

#[tokio::test]
async fn the_openapi_document_describes_every_endpoint_and_nothing_else() {
    let app = spawn_app().await;
    let doc: Value = app
        .client
        .get(format!("{}/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().unwrap();
    let mut described: Vec<(String, String)> = paths
        .iter()
        .flat_map(|(p, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), p.clone()))
        })
        .collect();
    described.sort();
    let mut served: Vec<(String, String)> = ENDPOINTS
        .iter()
        .map(|(m, p, _)| (m.to_string(), p.to_string()))
        .collect();
    served.sort();
    assert_eq!(described, served);
    // And each described endpoint is really served (a 404 here would be the router's "no such endpoint").
    for (method, _, concrete) in ENDPOINTS {
        let url = format!("{}{concrete}", app.base);
        let resp = match *method {
            "post" => app.client.post(&url).json(&json!({})).send().await.unwrap(),
            _ => app
                .client
                .get(&url)
                .bearer_auth(&app.secret_key)
                .send()
                .await
                .unwrap(),
        };
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_ne!(body["code"], "not_found", "{method} {concrete}");
    }
}

#[tokio::test]
async fn unknown_paths_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let r = app
        .client
        .get(format!("{}/nowhere", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "not_found");
    let r = app
        .client
        .post(format!("{}/v1/unknown-call", app.base))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = app
        .client
        .delete(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<Value>().await.unwrap()["code"],
        "method_not_allowed"
    );
}

#[tokio::test]
async fn metrics_count_accepted_rejected_and_deduplicated_events_and_ack_latency() {
    let app = spawn_app().await;
    app.send(
        "/v1/batch",
        json!({"batch": [
            {"type": "track", "userId": "m", "event": "A", "messageId": "1"},
            {"type": "track", "userId": "m", "event": "A", "messageId": "1"},
            {"type": "track", "event": "no id"},
        ]}),
    )
    .await;
    app.store.caught_up().await;
    let text = app
        .client
        .get(format!("{}/metrics", app.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for line in [
        "seam_events_accepted_total 1",
        "seam_events_rejected_total 1",
        "seam_events_deduplicated_total 1",
        "seam_http_requests_total{status=\"400\"} 1",
        "seam_ack_latency_seconds_count 1",
        "seam_group_commit_wait_seconds_count 1",
        "seam_processing_lag_events 0",
        "seam_wal_restarts_total 0",
        "seam_wal_restarts_deferred_total 0",
        // No segments here: nothing to evaluate, on either thread.
        "seam_evaluations_apart_total 0",
        "seam_evaluations_again_total 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // What each WAL holds is shown, for both files.
    for file in ["log", "projections"] {
        let name = format!("seam_wal_held_bytes{{file=\"{file}\"}}");
        assert!(
            text.lines().any(|l| l
                .strip_prefix(&name)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .is_some()),
            "missing {name} in\n{text}"
        );
    }
    // Every group commit is timed: the histogram counts as many as the counter.
    let value = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
    };
    assert!(value("seam_group_commits_total") >= 1);
    assert_eq!(
        value("seam_group_commit_seconds_count"),
        value("seam_group_commits_total")
    );
    let health: Value = app
        .client
        .get(format!("{}/healthz", app.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["log_seq"], health["applied_seq"]);
}

#[test]
fn overload_and_shutdown_answer_503_with_retry_after() {
    let e = seam_server::ApiError::from_store(seam_store::StoreError::Overloaded);
    assert_eq!(
        (e.status, e.code, e.retry_after),
        (503, "overloaded", Some(1))
    );
    for temporary in [
        seam_store::StoreError::Closed,
        seam_store::StoreError::Unavailable,
    ] {
        let e = seam_server::ApiError::from_store(temporary);
        assert_eq!((e.status, e.retry_after.is_some()), (503, true));
    }
}

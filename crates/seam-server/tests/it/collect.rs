use std::io::Write;

use base64::Engine;
use serde_json::{json, Value};

use crate::{spawn_app, NOW};

#[tokio::test]
async fn every_call_type_is_accepted_on_its_long_and_short_path() {
    let app = spawn_app().await;
    let calls = [
        (
            "identify",
            "i",
            json!({"userId": "1", "traits": {"name": "Anna"}}),
        ),
        (
            "track",
            "t",
            json!({"userId": "1", "event": "Product Viewed"}),
        ),
        ("page", "p", json!({"userId": "1", "name": "Home"})),
        ("screen", "s", json!({"userId": "1", "name": "Cart"})),
        ("group", "g", json!({"userId": "1", "groupId": "acme"})),
        ("alias", "a", json!({"userId": "1", "previousId": "anon-1"})),
        (
            "batch",
            "b",
            json!({"batch": [{"type": "track", "userId": "1", "event": "X"}]}),
        ),
    ];
    for (long, short, body) in calls {
        for path in [long, short] {
            let mut body = body.clone();
            match body.get_mut("batch") {
                Some(items) => items[0]["messageId"] = json!(format!("m-{path}")),
                None => body["messageId"] = json!(format!("m-{path}")),
            }
            let (status, resp) = app.send(&format!("/v1/{path}"), body).await;
            assert_eq!(
                (status, &resp),
                (200, &json!({"success": true})),
                "/v1/{path}"
            );
        }
    }
    let (_, p) = app.get("/v1/profiles/user_id:1").await;
    assert_eq!(p["event_count"], 14);
}

#[tokio::test]
async fn the_write_key_is_taken_from_basic_auth_the_x_write_key_header_or_the_body() {
    let app = spawn_app().await;
    let body = |id: &str| {
        serde_json::to_vec(&json!({"userId": "1", "event": "X", "messageId": id})).unwrap()
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:", app.write_key))
    );
    let (s, _) = app
        .send_raw("/v1/track", body("a"), &[("authorization", &basic)])
        .await;
    assert_eq!(s, 200);
    let (s, _) = app
        .send_raw("/v1/track", body("b"), &[("x-write-key", &app.write_key)])
        .await;
    assert_eq!(s, 200);
    let in_body =
        serde_json::to_vec(&json!({"userId": "1", "event": "X", "writeKey": app.write_key}))
            .unwrap();
    let (s, _) = app.send_raw("/v1/track", in_body, &[]).await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn a_missing_or_unknown_write_key_is_refused_with_401() {
    let app = spawn_app().await;
    let body = serde_json::to_vec(&json!({"userId": "1", "event": "X"})).unwrap();
    let (s, e) = app.send_raw("/v1/track", body.clone(), &[]).await;
    assert_eq!((s, e["code"].as_str()), (401, Some("missing_key")));
    let (s, e) = app
        .send_raw("/v1/track", body, &[("x-write-key", "wk_nope")])
        .await;
    assert_eq!((s, e["code"].as_str()), (401, Some("invalid_key")));
}

#[tokio::test]
async fn the_same_message_id_sent_again_is_stored_once() {
    let app = spawn_app().await;
    let e = json!({"userId": "1", "event": "Order Completed", "messageId": "order-1"});
    for _ in 0..3 {
        assert_eq!(app.send("/v1/track", e.clone()).await.0, 200);
    }
    // Also inside one batch, and a week later.
    app.clock
        .advance(std::time::Duration::from_secs(7 * 86_400));
    let batch = json!({"batch": [{"type": "track", "userId": "1", "event": "Order Completed", "messageId": "order-1"},
                                 {"type": "track", "userId": "1", "event": "Order Completed", "messageId": "order-1"}]});
    assert_eq!(app.send("/v1/batch", batch).await.0, 200);
    let (_, p) = app.get("/v1/profiles/user_id:1").await;
    assert_eq!(p["event_count"], 1);
    let (_, m) = (
        0,
        app.client
            .get(format!("{}/metrics", app.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );
    assert!(m.contains("seam_events_deduplicated_total 4"), "{m}");
}

#[tokio::test]
async fn gzip_bodies_are_accepted() {
    let app = spawn_app().await;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(
        &serde_json::to_vec(&json!({"batch": [{"type": "identify", "userId": "gz"}]})).unwrap(),
    )
    .unwrap();
    let (s, _) = app
        .send_raw(
            "/v1/batch",
            enc.finish().unwrap(),
            &[
                ("content-encoding", "gzip"),
                ("content-type", "application/json"),
                ("x-write-key", &app.write_key),
            ],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.get("/v1/profiles/user_id:gz").await.0, 200);
}

#[tokio::test]
async fn a_batch_with_bad_events_keeps_the_good_ones_and_names_each_bad_one() {
    let app = spawn_app().await;
    let (s, e) = app
        .send(
            "/v1/batch",
            json!({"batch": [
                {"type": "identify", "userId": "ok-1"},
                {"type": "track", "userId": {"id": 5}, "event": "X"},
                {"type": "track", "event": "No one"},
                {"type": "identify", "userId": "ok-2"},
            ]}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["code"], "invalid_events");
    assert_eq!(
        e["errors"],
        json!([
            {"index": 1, "field": "userId", "reason": "must be a string or a number, not an object"},
            {"index": 2, "field": "userId", "reason": "userId or anonymousId is required and must be a usable identifier"},
        ])
    );
    assert_eq!(app.get("/v1/profiles/user_id:ok-1").await.0, 200);
    assert_eq!(app.get("/v1/profiles/user_id:ok-2").await.0, 200);
}

#[tokio::test]
async fn malformed_bodies_get_clear_errors_and_the_server_keeps_serving() {
    let app = spawn_app().await;
    let key = app.write_key.clone();
    let deep = format!(
        "{{\"userId\":\"1\",\"event\":\"X\",\"properties\":{}1{}}}",
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"{\"userId\": \"1\", \"event\": ".to_vec(),
            400,
            "invalid_json",
        ),
        (
            b"{\"userId\": \"1\", \"event\": \"\xff\xfe\"}".to_vec(),
            400,
            "invalid_utf8",
        ),
        (deep.into_bytes(), 400, "too_deep"),
        (
            b"{\"userId\": \"1\", \"event\": \"X\", \"properties\": {\"n\": 1e999}}".to_vec(),
            400,
            "invalid_json",
        ),
        (b"[1, 2, 3]".to_vec(), 400, "invalid_body"),
        (b"".to_vec(), 400, "invalid_json"),
    ];
    for (body, status, code) in cases {
        let (s, e) = app
            .send_raw(
                "/v1/track",
                body,
                &[("x-write-key", &key), ("content-type", "application/json")],
            )
            .await;
        assert_eq!((s, e["code"].as_str()), (status, Some(code)), "{e}");
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    assert_eq!(
        app.send(
            "/v1/track",
            json!({"userId": "1", "event": "still serving"})
        )
        .await
        .0,
        200
    );
}

#[tokio::test]
async fn absurd_nesting_inside_limits_of_json_is_named_by_field() {
    let app = spawn_app().await;
    let mut deep = json!("leaf");
    for _ in 0..50 {
        deep = json!({ "x": deep });
    }
    let (s, e) = app
        .send(
            "/v1/track",
            json!({"userId": "1", "event": "X", "properties": deep}),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(e["errors"][0]["field"], "properties");
    assert!(e["errors"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("limit is 32"));
}

#[tokio::test]
async fn oversized_events_batches_and_bodies_are_refused_with_413() {
    let app = spawn_app().await;
    let (s, e) = app
        .send(
            "/v1/track",
            json!({"userId": "1", "event": "X", "properties": {"b": "x".repeat(33_000)}}),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (413, Some("payload_too_large")));
    assert_eq!(e["errors"][0]["index"], 0);

    let items: Vec<Value> = (0..2_501)
        .map(|i| json!({"type": "track", "userId": "1", "event": "X", "messageId": i.to_string()}))
        .collect();
    let (s, e) = app.send("/v1/batch", json!({ "batch": items })).await;
    assert_eq!((s, e["errors"][0]["field"].as_str()), (413, Some("batch")));

    let items: Vec<Value> = (0..30).map(|_| json!({"type": "track", "userId": "1", "event": "X", "properties": {"b": "x".repeat(20_000)}})).collect();
    let (s, e) = app.send("/v1/batch", json!({ "batch": items })).await;
    assert_eq!((s, e["code"].as_str()), (413, Some("payload_too_large")));
    assert_eq!(
        app.send("/v1/track", json!({"userId": "1", "event": "fine"}))
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn identifiers_are_normalised_at_the_door() {
    let app = spawn_app().await;
    let (s, _) = app
        .send(
            "/v1/identify",
            json!({"userId": "7", "traits": {"email": "  Anna.Petrova@Example.COM ", "phone": "8 (912) 345-67-89"}}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, p) = app.get("/v1/profiles/phone:+79123456789").await;
    assert_eq!(s, 200);
    assert_eq!(p["traits"]["email"], "anna.petrova@example.com");
    assert_eq!(
        app.get("/v1/profiles/email:ANNA.PETROVA@example.com")
            .await
            .0,
        200
    );
    let (s, e) = app
        .send(
            "/v1/identify",
            json!({"userId": "8", "traits": {"email": "anna@"}}),
        )
        .await;
    assert_eq!(
        (s, e["errors"][0]["field"].as_str()),
        (400, Some("traits.email"))
    );
}

#[tokio::test]
async fn junk_identifier_values_never_identify_anyone() {
    let app = spawn_app().await;
    for junk in [
        "null",
        "undefined",
        "anonymous",
        "0",
        "-1",
        "00000000-0000-0000-0000-000000000000",
    ] {
        let (s, _) = app
            .send(
                "/v1/track",
                json!({"userId": junk, "anonymousId": format!("dev-{junk}"), "event": "X"}),
            )
            .await;
        assert_eq!(s, 200);
        assert_eq!(
            app.get(&format!("/v1/profiles/user_id:{junk}")).await.0,
            404,
            "{junk}"
        );
    }
    let (s, e) = app
        .send("/v1/track", json!({"userId": "undefined", "event": "X"}))
        .await;
    assert_eq!((s, e["errors"][0]["field"].as_str()), (400, Some("userId")));
}

#[tokio::test]
async fn the_event_time_is_corrected_for_the_senders_clock_skew() {
    let app = spawn_app().await;
    // The phone's clock is 2 hours fast; it recorded the view 10 minutes before sending.
    let (s, _) = app
        .send(
            "/v1/track",
            json!({"userId": "s", "event": "Product Viewed",
                   "timestamp": "2026-11-23T01:50:00Z", "sentAt": "2026-11-23T02:00:00Z"}),
        )
        .await;
    assert_eq!(s, 200);
    let (_, page) = app.get("/v1/profiles/user_id:s/events").await;
    assert_eq!(
        page["events"][0]["timestamp"],
        seam_core::clock::format_rfc3339(NOW - 10 * 60_000)
    );
}

#[tokio::test]
async fn the_form_encoded_wrapping_is_accepted() {
    let app = spawn_app().await;
    let data =
        base64::engine::general_purpose::STANDARD.encode(r#"{"userId":"form-1","event":"X"}"#);
    let body = format!(
        "data={}&writeKey={}",
        data.replace('+', "%2B").replace('=', "%3D"),
        app.write_key
    );
    let (s, _) = app
        .send_raw(
            "/v1/track",
            body.into_bytes(),
            &[("content-type", "application/x-www-form-urlencoded")],
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(app.get("/v1/profiles/user_id:form-1").await.0, 200);
}

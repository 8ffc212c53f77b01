use serde_json::json;

use crate::spawn_app;

#[tokio::test]
async fn anonymous_browsing_before_login_ends_up_on_the_person() {
    let app = spawn_app().await;
    app.send("/v1/page", json!({"anonymousId": "laptop", "name": "Home"}))
        .await;
    app.send(
        "/v1/track",
        json!({"anonymousId": "phone", "event": "Product Viewed"}),
    )
    .await;
    app.send(
        "/v1/identify",
        json!({"anonymousId": "phone", "userId": "42", "traits": {"email": "anna@example.com"}}),
    )
    .await;
    app.send(
        "/v1/identify",
        json!({"anonymousId": "laptop", "userId": "42"}),
    )
    .await;

    let (s, p) = app.get("/v1/profiles/email:anna@example.com").await;
    assert_eq!(s, 200);
    assert_eq!(
        p["identities"],
        json!([{"type": "anonymous_id", "value": "laptop"}, {"type": "anonymous_id", "value": "phone"},
               {"type": "email", "value": "anna@example.com"}, {"type": "user_id", "value": "42"}])
    );
    assert_eq!(
        p["event_count"], 4,
        "identify calls count; the merge does not"
    );
    assert_eq!(p["traits"], json!({"email": "anna@example.com"}));
    let id = p["id"].as_str().unwrap();
    assert!(id.starts_with("prof_") && !id.contains(':'));
    assert_eq!(p["merged_from"].as_array().unwrap().len(), 1);

    // The merged-away id answers with the surviving profile; so does lookup by id.
    let merged = p["merged_from"][0].as_str().unwrap();
    let (s, q) = app.get(&format!("/v1/profiles/{merged}")).await;
    assert_eq!((s, q["id"].as_str()), (200, Some(id)));
    assert_eq!(app.get(&format!("/v1/profiles/{id}")).await.1, p);
}

#[tokio::test]
async fn a_shared_tablet_does_not_merge_two_customers() {
    let app = spawn_app().await;
    app.send(
        "/v1/identify",
        json!({"anonymousId": "tablet", "userId": "mum"}),
    )
    .await;
    app.send(
        "/v1/identify",
        json!({"anonymousId": "tablet", "userId": "dad"}),
    )
    .await;
    let (_, mum) = app.get("/v1/profiles/user_id:mum").await;
    let (_, dad) = app.get("/v1/profiles/user_id:dad").await;
    assert_ne!(mum["id"], dad["id"]);
    assert_eq!(dad["event_count"], 1);
    let (_, timeline) = app.get("/v1/profiles/user_id:dad/events").await;
    let kinds: Vec<&str> = timeline["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(
        kinds.contains(&"identity_conflict"),
        "the conflict is recorded on the timeline: {kinds:?}"
    );
}

#[tokio::test]
async fn alias_joins_the_previous_id_to_the_user() {
    let app = spawn_app().await;
    app.send(
        "/v1/track",
        json!({"anonymousId": "cookie-9", "event": "Product Viewed"}),
    )
    .await;
    app.send("/v1/identify", json!({"userId": "new-9"})).await;
    app.send(
        "/v1/alias",
        json!({"previousId": "cookie-9", "userId": "new-9"}),
    )
    .await;
    let (_, p) = app.get("/v1/profiles/anonymous_id:cookie-9").await;
    assert_eq!(p["event_count"], 3);
    assert_eq!(app.get("/v1/profiles/user_id:new-9").await.1["id"], p["id"]);
}

#[tokio::test]
async fn the_timeline_is_newest_first_and_pages_with_a_cursor() {
    let app = spawn_app().await;
    let batch: Vec<_> = (0..5)
        .map(|i| {
            json!({"type": "track", "userId": "t", "event": format!("E{i}"),
                   "timestamp": format!("2026-11-22T10:0{i}:00Z"), "properties": {"i": i},
                   "context": {"library": {"name": "analytics-python"}}, "channel": "server"})
        })
        .collect();
    app.send("/v1/batch", json!({ "batch": batch })).await;
    let (s, page) = app.get("/v1/profiles/user_id:t/events?limit=2").await;
    assert_eq!(s, 200);
    let names = |p: &serde_json::Value| -> Vec<String> {
        p["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["event"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(names(&page), ["E4", "E3"]);
    let e = &page["events"][0];
    assert_eq!(
        (
            e["type"].as_str(),
            e["source"].as_str(),
            e["channel"].as_str()
        ),
        (Some("track"), Some("analytics-python"), Some("server"))
    );
    assert_eq!(e["properties"], json!({"i": 4}));
    let next = page["next"].as_str().unwrap();
    let (_, page2) = app
        .get(&format!(
            "/v1/profiles/user_id:t/events?limit=2&before={next}"
        ))
        .await;
    assert_eq!(names(&page2), ["E2", "E1"]);
    let (_, page3) = app
        .get(&format!(
            "/v1/profiles/user_id:t/events?limit=2&before={}",
            page2["next"].as_str().unwrap()
        ))
        .await;
    assert_eq!(names(&page3), ["E0"]);
    assert!(page3["next"].is_null());
}

#[tokio::test]
async fn the_profiles_api_wants_a_secret_key() {
    let app = spawn_app().await;
    app.send("/v1/identify", json!({"userId": "k"})).await;
    app.store.caught_up().await;
    let url = format!("{}/v1/profiles/user_id:k", app.base);
    let r = app
        .client
        .get(&url)
        .bearer_auth(&app.write_key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "forbidden");
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(
        app.client
            .get(&url)
            .bearer_auth("sk_wrong")
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
}

#[tokio::test]
async fn unknown_profiles_and_bad_references_get_json_errors() {
    let app = spawn_app().await;
    let (s, e) = app.get("/v1/profiles/user_id:nobody").await;
    assert_eq!((s, e["code"].as_str()), (404, Some("profile_not_found")));
    let (s, e) = app.get("/v1/profiles/prof_0000000000009").await;
    assert_eq!((s, e["code"].as_str()), (404, Some("profile_not_found")));
    for bad in ["nonsense", "Email:x", "email:not-an-email", "prof_XYZ"] {
        let (s, e) = app.get(&format!("/v1/profiles/{bad}")).await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid_reference")),
            "{bad}"
        );
        assert_eq!(e["errors"][0]["field"], "reference");
    }
    app.send("/v1/identify", json!({"userId": "q"})).await;
    for bad in ["limit=0", "limit=abc", "limit=5000", "before=yesterday"] {
        let (s, e) = app
            .get(&format!("/v1/profiles/user_id:q/events?{bad}"))
            .await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid_query")),
            "{bad}"
        );
    }
}

#[tokio::test]
async fn traits_keep_the_latest_value_by_event_time() {
    let app = spawn_app().await;
    app.send(
        "/v1/identify",
        json!({"userId": "lt", "traits": {"plan": "gold"}, "timestamp": "2026-11-22T12:00:00Z"}),
    )
    .await;
    app.send("/v1/identify", json!({"userId": "lt", "traits": {"plan": "silver", "city": "Kazan"}, "timestamp": "2026-11-22T11:00:00Z"})).await;
    let (_, p) = app.get("/v1/profiles/user_id:lt").await;
    assert_eq!(p["traits"], json!({"plan": "gold", "city": "Kazan"}));
    assert_eq!(p["first_seen"], "2026-11-22T11:00:00.000Z");
    assert_eq!(p["last_seen"], "2026-11-22T12:00:00.000Z");
}

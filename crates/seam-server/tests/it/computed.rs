use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::{spawn_app, TestApp};

async fn define(app: &TestApp, name: &str, definition: &str) -> String {
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/computed-traits",
            Some(json!({"name": name, "definition": definition})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn track(app: &TestApp, user: &str, event: &str, props: serde_json::Value, id: &str) {
    let now = seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock));
    let body = json!({"userId": user, "event": event, "properties": props, "messageId": id, "timestamp": now});
    assert_eq!(app.send("/v1/track", body).await.0, 200);
}

#[tokio::test]
async fn computed_traits_are_kept_on_the_profile_and_usable_in_segments() {
    let app = spawn_app().await;
    track(&app, "k", "Order Completed", json!({"revenue": 700}), "o1").await;
    define(
        &app,
        "lifetime_spend",
        r#"sum revenue of "Order Completed""#,
    )
    .await;
    define(
        &app,
        "orders_90d",
        r#"count of "Order Completed" in last 90 days"#,
    )
    .await;
    define(
        &app,
        "last_viewed",
        r#"last product_id of "Product Viewed""#,
    )
    .await;
    define(
        &app,
        "favourite_category",
        r#"most frequent category of "Product Viewed""#,
    )
    .await;
    define(
        &app,
        "preferred_hour",
        r#"preferred hour of "Order Completed""#,
    )
    .await;
    let (_, p) = app.get("/v1/profiles/user_id:k").await;
    assert_eq!(
        p["computed_traits"],
        json!({"lifetime_spend": 700.0, "orders_90d": 1.0, "preferred_hour": 0}),
        "backfilled"
    );

    for (i, (sku, cat)) in [("s1", "tea"), ("s2", "coffee"), ("s3", "coffee")]
        .iter()
        .enumerate()
    {
        track(
            &app,
            "k",
            "Product Viewed",
            json!({"product_id": sku, "category": cat}),
            &format!("v{i}"),
        )
        .await;
    }
    track(&app, "k", "Order Completed", json!({"revenue": 500}), "o2").await;
    let (_, p) = app.get("/v1/profiles/user_id:k").await;
    let c = &p["computed_traits"];
    assert_eq!(
        (c["lifetime_spend"].as_f64(), c["orders_90d"].as_f64()),
        (Some(1200.0), Some(2.0))
    );
    assert_eq!(
        (c["last_viewed"].as_str(), c["favourite_category"].as_str()),
        (Some("s3"), Some("coffee"))
    );

    let (s, seg) = app
        .call(Method::POST, "/v1/segments", Some(json!({"name": "Big spenders", "definition": "trait computed.lifetime_spend > 1000"})))
        .await;
    assert_eq!(s, 201, "{seg}");
    let (_, mine) = app
        .call(Method::GET, "/v1/profiles/user_id:k/segments", None)
        .await;
    assert_eq!(mine["segments"][0]["id"], seg["id"]);

    // Time passing changes a windowed computed trait.
    app.clock.advance(Duration::from_secs(91 * 86_400));
    let (_, p) = app.get("/v1/profiles/user_id:k").await;
    assert_eq!(p["computed_traits"]["orders_90d"].as_f64(), Some(0.0));
    assert_eq!(
        p["computed_traits"]["lifetime_spend"].as_f64(),
        Some(1200.0)
    );
}

#[tokio::test]
async fn computed_traits_are_created_read_updated_deleted_and_checked() {
    let app = spawn_app().await;
    track(&app, "d", "Order Completed", json!({"revenue": 10}), "o1").await;
    let id = define(&app, "spend", r#"sum revenue of "Order Completed""#).await;
    let (s, got) = app
        .call(Method::GET, &format!("/v1/computed-traits/{id}"), None)
        .await;
    assert_eq!(
        (s, got["measure"]["agg"]["fn"].as_str()),
        (200, Some("sum"))
    );
    let (_, list) = app.call(Method::GET, "/v1/computed-traits", None).await;
    assert_eq!(list["computed_traits"].as_array().unwrap().len(), 1);
    let (s, up) = app
        .call(
            Method::PUT,
            &format!("/v1/computed-traits/{id}"),
            Some(json!({"definition": r#"max revenue of "Order Completed""#})),
        )
        .await;
    assert_eq!(
        (s, up["version"].as_i64(), up["name"].as_str()),
        (200, Some(2), Some("spend"))
    );
    for (body, field) in [
        (
            json!({"name": "Bad Name", "definition": "count of \"X\""}),
            "name",
        ),
        (
            json!({"name": "spend", "definition": "count of \"X\""}),
            "name",
        ),
        (
            json!({"name": "x", "definition": "has email"}),
            "definition",
        ),
        (
            json!({"name": "x", "definition": "count of \"X\" >= 1"}),
            "definition",
        ),
        (json!({"name": "x"}), "definition"),
    ] {
        let (s, e) = app
            .call(Method::POST, "/v1/computed-traits", Some(body.clone()))
            .await;
        assert_eq!(
            (s, e["errors"][0]["field"].as_str()),
            (400, Some(field)),
            "{body}: {e}"
        );
    }
    let (s, _) = app
        .call(Method::DELETE, &format!("/v1/computed-traits/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let (_, p) = app.get("/v1/profiles/user_id:d").await;
    assert_eq!(p["computed_traits"], json!({}));
    let (s, e) = app
        .call(Method::GET, &format!("/v1/computed-traits/{id}"), None)
        .await;
    assert_eq!(
        (s, e["code"].as_str()),
        (404, Some("computed_trait_not_found"))
    );
}

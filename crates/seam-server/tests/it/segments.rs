use serde_json::{json, Value};

use crate::{spawn_app, TestApp, NOW};

const DAY: i64 = 86_400_000;

impl TestApp {
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        self.store.caught_up().await;
        let mut req = self
            .client
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.secret_key);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

fn at(days_ago: i64) -> String {
    seam_core::clock::format_rfc3339(NOW - days_ago * DAY)
}

/// Anna called four times and bought nothing; Boris called and bought; Vera viewed one product three times.
async fn shop() -> TestApp {
    let app = spawn_app().await;
    let mut batch = vec![
        json!({"type": "identify", "userId": "anna", "traits": {"plan": "gold", "email": "anna@example.com"}}),
        json!({"type": "identify", "userId": "boris", "traits": {"plan": "silver"}}),
        json!({"type": "identify", "userId": "vera"}),
        json!({"type": "track", "userId": "boris", "event": "Call Started", "timestamp": at(2)}),
        json!({"type": "track", "userId": "boris", "event": "Order Completed", "timestamp": at(1), "properties": {"revenue": 990}}),
    ];
    for d in 1..=4 {
        batch.push(
            json!({"type": "track", "userId": "anna", "event": "Call Started", "timestamp": at(d)}),
        );
    }
    for d in 1..=3 {
        batch.push(
            json!({"type": "track", "userId": "vera", "event": "Product Viewed", "timestamp": at(d),
                          "properties": {"product_id": "sku-7"}}),
        );
    }
    for (i, e) in batch.iter_mut().enumerate() {
        e["messageId"] = json!(format!("shop-{i}"));
    }
    assert_eq!(
        app.send("/v1/batch", json!({ "batch": batch })).await.0,
        200
    );
    app
}

async fn create(app: &TestApp, name: &str, definition: &str) -> Value {
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/segments",
            Some(json!({"name": name, "definition": definition})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v
}

#[tokio::test]
async fn segments_are_created_read_listed_updated_and_deleted() {
    let app = shop().await;
    let seg = create(
        &app,
        "Callers who do not buy",
        seam_audiences::EXAMPLES[1].1,
    )
    .await;
    let id = seg["id"].as_str().unwrap().to_owned();
    assert!(id.starts_with("seg_"));
    assert_eq!(seg["version"], 1);
    assert_eq!(seg["tree"]["op"], "and");
    assert!(seg["definition"]
        .as_str()
        .unwrap()
        .starts_with("count of \"Call Started\" in last 30 days >= 3"));

    let (s, mut got) = app
        .call(reqwest::Method::GET, &format!("/v1/segments/{id}"), None)
        .await;
    // One segment read alone says how far the backfill has got (here: done).
    let backfill = got.as_object_mut().unwrap().remove("backfill").unwrap();
    assert_eq!(backfill["done"], true, "{backfill}");
    assert_eq!(backfill["pending"], 0);
    assert!(backfill["profiles"].as_i64().unwrap() > 0);
    assert_eq!((s, &got), (200, &seg));
    let (_, list) = app.call(reqwest::Method::GET, "/v1/segments", None).await;
    assert_eq!(list["segments"].as_array().unwrap().len(), 1);

    let (s, updated) = app
        .call(
            reqwest::Method::PUT,
            &format!("/v1/segments/{id}"),
            Some(json!({"definition": "has email"})),
        )
        .await;
    assert_eq!(
        (s, updated["version"].as_i64(), updated["name"].as_str()),
        (200, Some(2), Some("Callers who do not buy"))
    );

    let (s, _) = app
        .call(reqwest::Method::DELETE, &format!("/v1/segments/{id}"), None)
        .await;
    assert_eq!(s, 204);
    let (s, e) = app
        .call(reqwest::Method::GET, &format!("/v1/segments/{id}"), None)
        .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("segment_not_found")));
}

#[tokio::test]
async fn the_json_tree_is_accepted_as_the_definition() {
    let app = shop().await;
    let tree = seam_audiences::parse("trait plan = \"gold\"").unwrap();
    let (s, v) = app
        .call(
            reqwest::Method::POST,
            "/v1/segments",
            Some(json!({"name": "Gold", "tree": tree})),
        )
        .await;
    assert_eq!(
        (s, v["definition"].as_str()),
        (201, Some("trait plan = \"gold\""))
    );
}

#[tokio::test]
async fn preview_counts_and_samples_a_definition_before_it_is_saved() {
    let app = shop().await;
    let definition = json!({"definition": seam_audiences::EXAMPLES[1].1});
    let mut answers = vec![];
    for query in ["", "?exact=true", "?exact=yes"] {
        let path = format!("/v1/segments/preview{query}");
        answers.push(
            app.call(reqwest::Method::POST, &path, Some(definition.clone()))
                .await,
        );
    }
    let [(s, p), (exact_status, exact), (bad_status, bad)] = &answers[..] else {
        unreachable!("three requests")
    };
    assert_eq!(*s, 200, "{p}");
    assert_eq!(
        (
            p["count"].as_u64(),
            p["estimate"].as_u64(),
            p["profiles_evaluated"].as_u64(),
            p["profiles"].as_u64(),
            p["complete"].as_bool()
        ),
        (Some(1), Some(1), Some(3), Some(3), Some(true))
    );
    assert_eq!(
        (*exact_status, &exact["count"]),
        (200, &p["count"]),
        "{exact}"
    );
    assert_eq!(
        (*bad_status, &bad["errors"][0]["field"]),
        (400, &json!("exact")),
        "{bad}"
    );
    let (_, anna) = app.get("/v1/profiles/user_id:anna").await;
    assert_eq!(p["sample"], json!([anna["id"]]));
    let (_, list) = app.call(reqwest::Method::GET, "/v1/segments", None).await;
    assert!(
        list["segments"].as_array().unwrap().is_empty(),
        "a preview saves nothing"
    );
}

#[tokio::test]
async fn members_are_paginated() {
    let app = shop().await;
    let seg = create(
        &app,
        "Everyone",
        "trait plan is set or trait plan is not set",
    )
    .await;
    let id = seg["id"].as_str().unwrap();
    let (s, page) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/segments/{id}/members?limit=2"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(page["members"].as_array().unwrap().len(), 2);
    let next = page["next"].as_str().unwrap();
    let (_, page2) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/segments/{id}/members?limit=2&after={next}"),
            None,
        )
        .await;
    assert_eq!(page2["members"].as_array().unwrap().len(), 1);
    assert!(page2["next"].is_null());
    let (s, e) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/segments/{id}/members?limit=0"),
            None,
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("invalid_query")));
}

#[tokio::test]
async fn the_shipped_examples_find_the_right_people() {
    let app = shop().await;
    let mut ids = Vec::new();
    for (name, def) in seam_audiences::EXAMPLES {
        ids.push(
            create(&app, name, def).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (_, vera) = app
        .call(
            reqwest::Method::GET,
            "/v1/profiles/user_id:vera/segments",
            None,
        )
        .await;
    assert_eq!(
        vera["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap())
            .collect::<Vec<_>>(),
        [ids[0].as_str()]
    );
    let (_, anna) = app
        .call(
            reqwest::Method::GET,
            "/v1/profiles/user_id:anna/segments",
            None,
        )
        .await;
    assert_eq!(anna["segments"][0]["id"], ids[1]);
    let (_, boris) = app
        .call(
            reqwest::Method::GET,
            "/v1/profiles/user_id:boris/segments",
            None,
        )
        .await;
    assert!(boris["segments"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn explain_says_why_a_profile_is_or_is_not_in_a_segment() {
    let app = shop().await;
    let seg = create(
        &app,
        "Callers who do not buy",
        seam_audiences::EXAMPLES[1].1,
    )
    .await;
    let id = seg["id"].as_str().unwrap();
    let (s, why) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/segments/{id}/explain/user_id:boris"),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(why["member"], false);
    let parts = why["explanation"]["parts"].as_array().unwrap();
    assert_eq!(
        (parts[0]["detail"].as_str(), parts[0]["result"].as_bool()),
        (Some("1 >= 3"), Some(false))
    );
    assert_eq!(
        (parts[1]["detail"].as_str(), parts[1]["result"].as_bool()),
        (Some("1 = 0"), Some(false))
    );
    let (_, why) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/segments/{id}/explain/user_id:anna"),
            None,
        )
        .await;
    assert_eq!(why["member"], true);
    let (s, e) = app
        .call(
            reqwest::Method::GET,
            &format!("/v1/segments/{id}/explain/user_id:nobody"),
            None,
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (404, Some("profile_not_found")));
}

#[tokio::test]
async fn segments_can_build_on_other_segments() {
    let app = shop().await;
    create(&app, "Gold", "trait plan = \"gold\"").await;
    let both = create(
        &app,
        "Gold callers",
        "in segment \"Gold\" and count of \"Call Started\" >= 1",
    )
    .await;
    let (_, anna) = app
        .call(
            reqwest::Method::GET,
            "/v1/profiles/user_id:anna/segments",
            None,
        )
        .await;
    assert!(anna["segments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == both["id"]));
    let gold_id = app.call(reqwest::Method::GET, "/v1/segments", None).await.1["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "Gold")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, e) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/segments/{gold_id}"),
            None,
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (409, Some("segment_in_use")));
}

#[tokio::test]
async fn bad_definitions_are_refused_with_the_reason() {
    let app = shop().await;
    create(&app, "Taken", "has email").await;
    let cases = [
        (
            json!({"name": "x", "definition": "count of \"A\" in last 7 days"}),
            "definition",
            "line 1, column 28",
        ),
        (
            json!({"name": "x", "definition": "trait age > \"old\""}),
            "definition",
            "compares numbers",
        ),
        (
            json!({"name": "x", "definition": "in segment \"Nope\""}),
            "definition",
            "unknown segment \"Nope\"",
        ),
        (
            json!({"name": "Loop", "definition": "in segment \"Loop\""}),
            "definition",
            "refers back",
        ),
        (
            json!({"name": "x", "definition": format!("{}has email{}", "(".repeat(40), ")".repeat(40))}),
            "definition",
            "nested deeper",
        ),
        (
            json!({"name": "x", "definition": vec!["has email"; 300].join(" and ")}),
            "definition",
            "more than 256",
        ),
        (
            json!({"name": "x", "tree": {"op": "has"}}),
            "tree",
            "identifier",
        ),
        (json!({"name": "x"}), "definition", "is required"),
        (
            json!({"name": "Taken", "definition": "has phone"}),
            "name",
            "exists already",
        ),
        (
            json!({"name": "", "definition": "has phone"}),
            "name",
            "1 to 200",
        ),
    ];
    for (body, field, reason) in cases {
        let (s, e) = app
            .call(reqwest::Method::POST, "/v1/segments", Some(body.clone()))
            .await;
        assert_eq!(
            (s, e["code"].as_str()),
            (400, Some("invalid_segment")),
            "{body}: {e}"
        );
        assert_eq!(e["errors"][0]["field"], field, "{body}: {e}");
        assert!(
            e["errors"][0]["reason"].as_str().unwrap().contains(reason),
            "{body}: {e}"
        );
    }
    let (s, e) = app
        .call(
            reqwest::Method::POST,
            "/v1/segments",
            Some(json!({"name": "x", "definition": 5})),
        )
        .await;
    assert_eq!((s, e["code"].as_str()), (400, Some("invalid_json")));
    let (s, _) = app
        .call(reqwest::Method::GET, "/v1/segments/seg_unknown", None)
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn segment_definitions_are_a_projection_of_the_log_and_come_back_in_a_rebuild() {
    let app = shop().await;
    let seg = create(&app, "Gold", "trait plan = \"gold\"").await;
    let gone = create(&app, "Gone", "has phone").await;
    let (s, _) = app
        .call(
            reqwest::Method::DELETE,
            &format!("/v1/segments/{}", gone["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(s, 204);
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    assert!(
        live.contains(&format!("{:?}", seg["id"].as_str().unwrap())),
        "{live}"
    );
    assert!(!live.contains("\"Gone\""));
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(live == seam_store::dump_projections(&app.data_dir()).unwrap());
}

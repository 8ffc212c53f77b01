use reqwest::Method;
use serde_json::{json, Value};

use crate::{spawn_app, spawn_app_with_store, TestApp};

impl TestApp {
    /// Sends a raw body with a content type to a management endpoint with the secret key.
    async fn put_text(&self, path: &str, content_type: &str, body: &str) -> (u16, Value) {
        self.store.caught_up().await;
        let resp = self
            .client
            .put(format!("{}{path}", self.base))
            .bearer_auth(&self.secret_key)
            .header("content-type", content_type)
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// Saves a template and a journey (YAML) that sends it, and activates the journey.
    async fn install(&self, template_id: &str, template: Value, journey_id: &str, journey: &str) {
        let (s, v) = self
            .call(
                Method::PUT,
                &format!("/v1/templates/{template_id}"),
                Some(template),
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = self
            .put_text(
                &format!("/v1/journeys/{journey_id}"),
                "application/yaml",
                journey,
            )
            .await;
        assert_eq!(s, 201, "{v}");
        let (s, v) = self
            .call(
                Method::POST,
                &format!("/v1/journeys/{journey_id}/activate"),
                None,
            )
            .await;
        assert_eq!(s, 200, "{v}");
    }
}

fn cart_push() -> Value {
    json!({
        "name": "Cart reminder",
        "variants": {
            "web_push": {"title": "{{ profile.traits.first_name | default: 'You' }}, your cart", "body": "{{ event.properties.name }} is waiting"},
            "email": {"subject": "Your cart, {{ profile.traits.first_name }}", "body": "{{ profile.computed.lifetime_spend | default: 0 }}"}
        }
    })
}

const JOURNEY: &str = r#"
name: Abandoned cart
trigger: { event: Product Added, where: 'price > 100' }
reentry: after_exit
goal: { event: Order Completed, within: 7 days }
start: wait
nodes:
  wait: { type: wait, for: 20 minutes, next: remind }
  remind:
    type: cascade
    steps:
      - { channel: web_push, template: cart-push, within: 1 hour }
      - { channel: email, template: cart-push }
"#;

#[tokio::test]
async fn templates_are_checked_when_saved_versioned_and_previewed_for_a_real_profile() {
    let app = spawn_app().await;
    let (s, v) = app
        .call(Method::PUT, "/v1/templates/cart-push", Some(cart_push()))
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["id"].as_str(), v["version"].as_i64()),
        (Some("cart-push"), Some(1))
    );
    assert_eq!(
        v["definition"]["variants"]["web_push"]["body"],
        "{{ event.properties.name }} is waiting"
    );
    let (s, v) = app
        .call(Method::PUT, "/v1/templates/cart-push", Some(cart_push()))
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)));
    let (s, v) = app.get("/v1/templates").await;
    assert_eq!((s, v["templates"].as_array().unwrap().len()), (200, 1));

    // Broken templates: each problem names its part.
    let broken = json!({"variants": {
        "sms": {"text": "Hi {{ profle.first_name }}"},
        "email": {"body": "{% if %}"},
        "viber": {"text": "ok", "title": "no titles on viber"}
    }});
    let (s, v) = app
        .call(Method::PUT, "/v1/templates/broken", Some(broken))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_template")),
        "{v}"
    );
    let fields: Vec<&str> = v["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    for f in [
        "variants.sms.text",
        "variants.email.subject",
        "variants.email.body",
        "variants.viber.title",
    ] {
        assert!(fields.contains(&f), "{f} in {fields:?}");
    }
    let (s, v) = app
        .call(
            Method::PUT,
            "/v1/templates/x",
            Some(json!({"id": "y", "variants": {}})),
        )
        .await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (400, Some("id")),
        "{v}"
    );
    let (s, v) = app
        .call(
            Method::PUT,
            "/v1/templates/x",
            Some(json!({"variants": {"pigeon": {"text": "x"}}})),
        )
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(v["message"].as_str().unwrap().contains("pigeon"), "{v}");

    // Preview with a real profile's traits and the event it would follow.
    let body = json!({"userId": "u1", "traits": {"first_name": "Anna"}, "messageId": "i1"});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/templates/cart-push/preview",
            Some(json!({"profile": "user_id:u1", "event": {"name": "Product Added", "properties": {"name": "Kettle"}}})),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["variants"]["web_push"]["title"], "Anna, your cart");
    assert_eq!(v["variants"]["web_push"]["body"], "Kettle is waiting");
    assert_eq!(v["variants"]["email"]["body"], "0");
    let (s, _) = app
        .call(
            Method::POST,
            "/v1/templates/cart-push/preview",
            Some(json!({"profile": "user_id:nobody"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .call(
            Method::POST,
            "/v1/templates/cart-push/preview",
            Some(json!({"profile": "user_id:u1", "channel": "sms"})),
        )
        .await;
    assert_eq!(s, 400);
    let (s, v) = app.get("/v1/templates/nope").await;
    assert_eq!((s, v["code"].as_str()), (404, Some("template_not_found")));
}

#[tokio::test]
async fn journeys_are_validated_saved_as_drafts_versioned_activated_and_paused() {
    let app = spawn_app().await;
    // Before the template exists, the journey names it as the problem, in YAML as in JSON.
    let (s, v) = app
        .put_text("/v1/journeys/abandoned-cart", "application/yaml", JOURNEY)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (400, Some("invalid_journey")),
        "{v}"
    );
    assert_eq!(v["errors"][0]["field"], "nodes.remind.steps[0].template");
    assert_eq!(
        v["errors"][0]["reason"],
        "there is no template named `cart-push`"
    );
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/journeys/validate",
            Some(json!({
                "id": "j", "trigger": {"segment_entered": "Ghosts"}, "start": "a",
                "nodes": {"a": {"type": "wait", "for": "3 fortnights"}, "b": {"type": "exit"}}
            })),
        )
        .await;
    assert_eq!((s, v["valid"].as_bool()), (200, Some(false)), "{v}");
    let fields: Vec<&str> = v["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["trigger.segment_entered", "nodes.a.for"], "{v}");

    assert_eq!(
        app.call(Method::PUT, "/v1/templates/cart-push", Some(cart_push()))
            .await
            .0,
        201
    );
    let (s, v) = app
        .put_text("/v1/journeys/abandoned-cart", "application/yaml", JOURNEY)
        .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(
        (v["status"].as_str(), v["version"].as_i64()),
        (Some("draft"), Some(1))
    );
    assert_eq!(
        v["definition"]["nodes"]["remind"]["steps"][1]["channel"],
        "email"
    );
    let (s, v) = app
        .put_text("/v1/journeys/abandoned-cart", "application/yaml", JOURNEY)
        .await;
    assert_eq!((s, v["version"].as_i64()), (200, Some(2)));
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/journeys/validate",
            Some(v["definition"].clone()),
        )
        .await;
    assert_eq!((s, v["valid"].as_bool()), (200, Some(true)), "{v}");

    let (s, v) = app
        .call(Method::POST, "/v1/journeys/abandoned-cart/activate", None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("active")), "{v}");
    let (s, v) = app
        .call(Method::DELETE, "/v1/templates/cart-push", None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("template_in_use")),
        "{v}"
    );
    let (s, v) = app
        .call(Method::DELETE, "/v1/journeys/abandoned-cart", None)
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (409, Some("journey_active")),
        "{v}"
    );
    let (s, v) = app
        .call(Method::POST, "/v1/journeys/abandoned-cart/pause", None)
        .await;
    assert_eq!((s, v["status"].as_str()), (200, Some("paused")), "{v}");
    let (s, v) = app.get("/v1/journeys").await;
    assert_eq!(
        (s, v["journeys"][0]["status"].as_str()),
        (200, Some("paused"))
    );
    assert_eq!(
        app.call(Method::DELETE, "/v1/journeys/abandoned-cart", None)
            .await
            .0,
        204
    );
    assert_eq!(app.get("/v1/journeys/abandoned-cart").await.0, 404);
    // Saved again under the same id, it goes on counting versions (runs of the old one keep theirs).
    let (s, v) = app
        .put_text("/v1/journeys/abandoned-cart", "application/yaml", JOURNEY)
        .await;
    assert_eq!(
        (s, v["version"].as_i64(), v["status"].as_str()),
        (201, Some(3), Some("draft"))
    );
    assert_eq!(
        app.call(Method::DELETE, "/v1/journeys/abandoned-cart", None)
            .await
            .0,
        204
    );
    assert_eq!(
        app.call(Method::DELETE, "/v1/templates/cart-push", None)
            .await
            .0,
        204
    );

    // Bad bodies: the wrong media type, the wrong id, YAML that does not parse, a write key.
    let (s, v) = app.put_text("/v1/journeys/j", "text/plain", JOURNEY).await;
    assert_eq!(
        (s, v["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (s, v) = app
        .put_text(
            "/v1/journeys/j",
            "application/yaml",
            &format!("id: other\n{JOURNEY}"),
        )
        .await;
    assert_eq!(
        (s, v["errors"][0]["field"].as_str()),
        (400, Some("id")),
        "{v}"
    );
    let (s, v) = app
        .put_text("/v1/journeys/j", "application/yaml", "nodes: [unclosed")
        .await;
    assert_eq!(s, 400, "{v}");
    assert!(
        v["errors"][0]["field"]
            .as_str()
            .unwrap()
            .starts_with("line "),
        "{v}"
    );
    let resp = app
        .client
        .get(format!("{}/v1/journeys", app.base))
        .bearer_auth(&app.write_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        app.call(Method::POST, "/v1/journeys/nope/activate", None)
            .await
            .0,
        404
    );
}

#[tokio::test]
async fn templates_and_journeys_come_back_from_the_log_in_a_rebuild() {
    let app = spawn_app().await;
    assert_eq!(
        app.call(Method::PUT, "/v1/templates/cart-push", Some(cart_push()))
            .await
            .0,
        201
    );
    assert_eq!(
        app.put_text("/v1/journeys/j", "application/yaml", JOURNEY)
            .await
            .0,
        201
    );
    assert_eq!(
        app.call(Method::POST, "/v1/journeys/j/activate", None)
            .await
            .0,
        200
    );
    app.store.caught_up().await;
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    assert!(live.contains("## journey_versions\n"), "{live}");
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(
        live == seam_store::dump_projections(&app.data_dir()).unwrap(),
        "templates, journeys, their versions and status are projections of the log"
    );
}

async fn track_at_now(app: &TestApp, user: &str, event: &str, props: Value, id: &str) {
    let now = seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock));
    let body = json!({"userId": user, "event": event, "properties": props, "messageId": id, "timestamp": now});
    assert_eq!(app.send("/v1/track", body).await.0, 200);
}

async fn sent_to(app: &TestApp, user: &str) -> Vec<(String, Value)> {
    let (s, v) = app
        .get(&format!("/v1/messages?profile=user_id:{user}"))
        .await;
    assert_eq!(s, 200, "{v}");
    let mut out: Vec<(String, Value)> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["channel"].as_str().unwrap().to_owned(), m.clone()))
        .collect();
    out.reverse();
    out
}

const LIVE_JOURNEY: &str = r#"
name: Abandoned cart
trigger: { event: Product Added, where: 'price > 100' }
reentry: after_exit
goal: { event: Order Completed, within: 7 days }
start: wait
nodes:
  wait: { type: wait, for: 20 minutes, next: remind }
  remind:
    type: cascade
    steps:
      - { channel: email, template: cart, within: 1 hour }
      - { channel: sms, template: cart }
"#;

#[tokio::test]
async fn an_active_journey_runs_on_live_events_and_the_clock_and_ends_at_its_goal() {
    use std::time::Duration;
    let app = spawn_app().await;
    let template = json!({"variants": {
        "email": {"subject": "{{ profile.traits.first_name | default: 'Hello' }}, {{ event.properties.name }} is waiting", "body": "b"},
        "sms": {"text": "{{ event.properties.name }} is still in your cart"}
    }});
    app.install("cart", template, "cart", LIVE_JOURNEY).await;
    for (user, phone) in [
        ("u1", "+79123456781"),
        ("u2", "+79123456782"),
        ("u3", "+79123456783"),
    ] {
        let body = json!({"userId": user, "messageId": format!("id-{user}"), "traits": {
            "first_name": "Anna", "email": format!("{user}@example.com"), "phone": phone,
            "consent": {"email": true, "sms": true}}});
        assert_eq!(app.send("/v1/identify", body).await.0, 200);
    }
    // A cheap item does not match the trigger's filter; the grinder does.
    track_at_now(
        &app,
        "u1",
        "Product Added",
        json!({"price": 50, "name": "Filter"}),
        "a0",
    )
    .await;
    for u in ["u1", "u2", "u3"] {
        track_at_now(
            &app,
            u,
            "Product Added",
            json!({"price": 150, "name": "Grinder"}),
            &format!("a-{u}"),
        )
        .await;
    }
    let (_, v) = app.get("/v1/profiles/user_id:u1/journeys").await;
    assert_eq!(v["journeys"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["journeys"][0]["status"], "active");
    assert_eq!(v["journeys"][0]["node"], "wait");
    assert_eq!(v["journeys"][0]["waiting"]["for"], "time");

    // u3 buys before the reminder: the run ends at its goal and nothing is sent.
    app.clock.advance(Duration::from_secs(5 * 60));
    track_at_now(
        &app,
        "u3",
        "Order Completed",
        json!({"revenue": 150}),
        "o-u3",
    )
    .await;
    app.clock.advance(Duration::from_secs(15 * 60));
    let first = sent_to(&app, "u1").await;
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0, "email");
    assert_eq!(first[0].1["content"]["subject"], "Anna, Grinder is waiting");
    assert_eq!(first[0].1["address"], "email:u1@example.com");
    assert!(sent_to(&app, "u3").await.is_empty());

    // u2 reads the e-mail: the cascade has worked and stops there; u1 does not, and gets the SMS an hour later.
    let key = sent_to(&app, "u2").await[0].1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (s, _) = app
        .call(
            Method::POST,
            &format!("/v1/messages/{key}/outcome"),
            Some(json!({"outcome": "read"})),
        )
        .await;
    assert_eq!(s, 202);
    let (s, _) = app
        .call(
            Method::POST,
            "/v1/messages/nope/outcome",
            Some(json!({"outcome": "read"})),
        )
        .await;
    assert_eq!(s, 404);
    let (s, _) = app
        .call(
            Method::POST,
            &format!("/v1/messages/{key}/outcome"),
            Some(json!({"outcome": "eaten"})),
        )
        .await;
    assert_eq!(s, 400);
    app.clock.advance(Duration::from_secs(61 * 60));
    let u1: Vec<String> = sent_to(&app, "u1")
        .await
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(u1, ["email", "sms"]);
    let u2: Vec<String> = sent_to(&app, "u2")
        .await
        .into_iter()
        .map(|(c, _)| c)
        .collect();
    assert_eq!(u2, ["email"]);

    let (_, st) = app.get("/v1/journeys/cart/stats").await;
    assert_eq!(st["entered"], 3, "{st}");
    assert_eq!(st["converted"], 1, "{st}");
    assert_eq!(st["waiting"], 0, "{st}");
    assert_eq!(st["exited"]["goal"], 1, "{st}");
    assert_eq!(st["exited"]["completed"], 2, "{st}");
    assert_eq!(st["nodes"]["remind"]["sent"], 3, "{st}");
    let (_, v) = app.get("/v1/profiles/user_id:u2/journeys").await;
    assert_eq!(v["journeys"][0]["status"], "completed", "{v}");
    assert_eq!(
        v["journeys"][0]["messages"][0]["outcomes"],
        json!(["read"]),
        "{v}"
    );
    // The steps are on the person's timeline.
    let (_, t) = app.get("/v1/profiles/user_id:u1/events?limit=50").await;
    let steps = t["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "journey_step")
        .count();
    assert!(steps >= 3, "{t}");

    // Paused: no new runs. Entry by API needs an active journey.
    assert_eq!(
        app.call(Method::POST, "/v1/journeys/cart/pause", None)
            .await
            .0,
        200
    );
    track_at_now(
        &app,
        "u1",
        "Product Added",
        json!({"price": 150, "name": "Grinder"}),
        "again",
    )
    .await;
    let (_, st) = app.get("/v1/journeys/cart/stats").await;
    assert_eq!(st["entered"], 3, "{st}");
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/journeys/cart/enter",
            Some(json!({"profile": "user_id:u1"})),
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("journey_not_active")));

    // Everything above is a projection of the log.
    app.store.caught_up().await;
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(
        live == seam_store::dump_projections(&app.data_dir()).unwrap(),
        "runs, messages and stats rebuild"
    );
}

#[tokio::test]
async fn api_entries_and_update_nodes_go_through_the_log() {
    let app = spawn_app().await;
    let journey = r#"
trigger: { api: true }
start: tag
nodes:
  tag: { type: update, traits: { vip: true }, next: hello }
  hello: { type: send, channel: email, template: hi, category: transactional }
"#;
    let template = json!({"variants": {"email": {"subject": "Hi {{ profile.traits.first_name }}", "body": "b"}}});
    app.install("hi", template, "welcome", journey).await;
    let body = json!({"userId": "w1", "messageId": "w1", "traits": {"first_name": "Ivan", "email": "w1@example.com"}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/journeys/welcome/enter",
            Some(json!({"profile": "user_id:w1"})),
        )
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["runs"][0]["status"], "completed", "{v}");
    let (_, p) = app.get("/v1/profiles/user_id:w1").await;
    assert_eq!(p["traits"]["vip"], true, "{p}");
    let m = sent_to(&app, "w1").await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].1["content"]["subject"], "Hi Ivan");
    assert_eq!(m[0].1["category"], "transactional");
    // Once (the default re-entry policy): a second request starts nothing.
    app.call(
        Method::POST,
        "/v1/journeys/welcome/enter",
        Some(json!({"profile": "user_id:w1"})),
    )
    .await;
    assert_eq!(sent_to(&app, "w1").await.len(), 1);
    let (s, _) = app
        .call(
            Method::POST,
            "/v1/journeys/welcome/enter",
            Some(json!({"profile": "user_id:nobody"})),
        )
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn the_servers_delivery_rules_hold_back_messages_with_the_reason() {
    use seam_journeys::governance::{Cap, Policy, QuietHours};
    use std::time::Duration;
    // NOW is 2026-11-23 00:00 UTC: 03:00 in Moscow, inside quiet hours until 09:00.
    let opts = seam_store::StoreOptions {
        delivery: seam_store::journeys::Delivery {
            policy: Policy {
                caps: vec![Cap {
                    channel: None,
                    max: 1,
                    per: 86_400_000,
                    text: "1 per 1 day".into(),
                }],
                quiet_hours: Some(QuietHours {
                    start: 22 * 60,
                    end: 9 * 60,
                }),
                bought_window: 0,
            },
            zone: seam_journeys::local::zone("Europe/Moscow").unwrap(),
        },
        ..seam_store::StoreOptions::default()
    };
    let app = spawn_app_with_store(seam_server::ApiSettings::default(), opts).await;
    let template = json!({"variants": {"email": {"subject": "s", "body": "b"}}});
    let journey = "trigger: { api: true }\nreentry: after_exit\nstart: m\nnodes: { m: { type: send, channel: email, template: t } }\n";
    app.install("t", template, "promo", journey).await;
    let body = json!({"userId": "q1", "messageId": "q1", "traits": {"email": "q1@example.com", "consent": {"email": true}}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    let (_, v) = app
        .call(
            Method::POST,
            "/v1/journeys/promo/enter",
            Some(json!({"profile": "user_id:q1"})),
        )
        .await;
    assert_eq!(
        v["runs"][0]["waiting"]["until"], "2026-11-23T06:00:00.000Z",
        "deferred to 09:00 Moscow: {v}"
    );
    assert!(sent_to(&app, "q1").await.is_empty());
    app.clock.advance(Duration::from_secs(6 * 3600));
    assert_eq!(
        sent_to(&app, "q1").await.len(),
        1,
        "sent when quiet hours end"
    );
    // The cap (1 a day): a second run is held back, with the reason counted.
    app.call(
        Method::POST,
        "/v1/journeys/promo/enter",
        Some(json!({"profile": "user_id:q1"})),
    )
    .await;
    assert_eq!(sent_to(&app, "q1").await.len(), 1);
    let (_, st) = app.get("/v1/journeys/promo/stats").await;
    assert_eq!(st["nodes"]["m"]["deferred:quiet_hours"], 1, "{st}");
    assert_eq!(st["nodes"]["m"]["held:frequency_cap"], 1, "{st}");
}

#[tokio::test]
async fn conditions_over_the_history_and_offers_of_what_was_just_bought_read_the_persons_events() {
    let app = spawn_app().await;
    let template = json!({"variants": {"email": {"subject": "s", "body": "b"}}});
    // Buyers of the last 30 days are told apart by their history; the offer is the viewed product.
    let journey = r#"
trigger: { event: Product Viewed }
reentry: after_exit
start: check
nodes:
  check: { type: condition, if: 'count of "Order Completed" in last 30 days >= 1', then: offer, else: welcome }
  offer: { type: send, channel: email, template: t, offer: product_id }
  welcome: { type: send, channel: email, template: t }
"#;
    app.install("t", template, "views", journey).await;
    for user in ["h1", "h2", "h3"] {
        let body = json!({"userId": user, "messageId": format!("id-{user}"),
            "traits": {"email": format!("{user}@example.com"), "consent": {"email": true}}});
        assert_eq!(app.send("/v1/identify", body).await.0, 200);
    }
    // h2 bought something else, h3 bought the very product they look at next.
    let order = |p: &str| json!({"products": [{"product_id": p}]});
    track_at_now(&app, "h2", "Order Completed", order("tea"), "o2").await;
    track_at_now(&app, "h3", "Order Completed", order("mug"), "o3").await;
    for user in ["h1", "h2", "h3"] {
        let id = format!("v-{user}");
        track_at_now(
            &app,
            user,
            "Product Viewed",
            json!({"product_id": "mug"}),
            &id,
        )
        .await;
    }
    let node = |m: &(String, Value)| m.1["node"].as_str().unwrap().to_owned();
    let nodes = |v: Vec<(String, Value)>| v.iter().map(node).collect::<Vec<_>>();
    assert_eq!(
        nodes(sent_to(&app, "h1").await),
        ["welcome"],
        "no orders: welcomed"
    );
    assert_eq!(
        nodes(sent_to(&app, "h2").await),
        ["offer"],
        "a buyer: offered the mug"
    );
    assert!(
        sent_to(&app, "h3").await.is_empty(),
        "a buyer of the mug is not offered it again"
    );
    let (_, st) = app.get("/v1/journeys/views/stats").await;
    assert_eq!(st["nodes"]["offer"]["held:already_bought"], 1, "{st}");
}

/// A webhook receiver on 127.0.0.1: answers 500 to the first `failures` requests, then 200; keeps each request.
async fn receiver(
    failures: usize,
) -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(axum::http::HeaderMap, String)>>>,
) {
    use std::sync::{Arc, Mutex};
    let seen: Arc<Mutex<Vec<(axum::http::HeaderMap, String)>>> = Arc::default();
    let kept = seen.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: axum::http::HeaderMap, body: String| {
            let kept = kept.clone();
            async move {
                let mut k = kept.lock().unwrap();
                k.push((headers, body));
                if k.len() <= failures {
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    axum::http::StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

#[tokio::test]
async fn the_dispatcher_signs_webhooks_retries_on_a_schedule_keeps_dead_letters_and_replays_them() {
    use seam_server::dispatch::{dispatch_due, signature, DispatchSettings, Dispatched};
    use std::time::Duration;
    let app = spawn_app().await;
    let (url, seen) = receiver(3).await;
    let template = json!({"variants": {"email": {"subject": "Welcome", "body": "b"}}});
    let journey = format!(
        "trigger: {{ event: Signed Up }}\nstart: hook\nnodes:\n  hook: {{ type: webhook, url: \"{url}\", next: mail }}\n  mail: {{ type: send, channel: email, template: welcome }}\n"
    );
    app.install("welcome", template, "signup", &journey).await;
    let body = json!({"userId": "d1", "messageId": "d1", "traits": {"email": "d1@example.com", "consent": {"email": true}}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    track_at_now(&app, "d1", "Signed Up", json!({"plan": "free"}), "s1").await;
    app.store.caught_up().await;

    let state = seam_server::AppState::new(
        app.store.clone(),
        std::sync::Arc::new(app.clock.clone()),
        seam_server::ApiSettings::default(),
    );
    let outbox = app.data_dir().join("outbox");
    let mut settings = DispatchSettings::new(outbox.clone(), "whsec_test".into());
    settings.retry = vec![60_000, 600_000];
    let client = reqwest::Client::new();
    // First pass: the e-mail goes to the outbox file; the webhook fails and waits a minute.
    let d = dispatch_due(&state, &settings, &client).await.unwrap();
    assert_eq!(
        d,
        Dispatched {
            sent: 1,
            retried: 1,
            dead: 0
        }
    );
    let file = std::fs::read_to_string(outbox.join("email.jsonl")).unwrap();
    let line: Value = serde_json::from_str(file.lines().next().unwrap()).unwrap();
    assert_eq!(line["content"]["subject"], "Welcome");
    assert_eq!(line["address"], "email:d1@example.com");
    // Nothing is due again before the minute is up.
    assert_eq!(
        dispatch_due(&state, &settings, &client).await.unwrap(),
        Dispatched::default()
    );
    app.clock.advance(Duration::from_secs(60));
    assert_eq!(
        dispatch_due(&state, &settings, &client)
            .await
            .unwrap()
            .retried,
        1
    );
    app.clock.advance(Duration::from_secs(600));
    // The schedule is exhausted: a dead letter, shown with its error.
    assert_eq!(
        dispatch_due(&state, &settings, &client).await.unwrap().dead,
        1
    );
    let (_, v) = app.get("/v1/messages?status=dead").await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
    let dead = &v["messages"][0];
    assert_eq!(
        (dead["channel"].as_str(), dead["attempts"].as_i64()),
        (Some("webhook"), Some(3))
    );
    assert!(
        dead["last_error"].as_str().unwrap().contains("500"),
        "{dead}"
    );
    let key = dead["key"].as_str().unwrap().to_owned();
    // Replayed: the fourth request succeeds.
    let (s, v) = app
        .call(Method::POST, &format!("/v1/messages/{key}/replay"), None)
        .await;
    assert_eq!((s, v["status"].as_str()), (202, Some("pending")), "{v}");
    assert_eq!(
        dispatch_due(&state, &settings, &client).await.unwrap().sent,
        1
    );
    let (s, v) = app
        .call(Method::POST, &format!("/v1/messages/{key}/replay"), None)
        .await;
    assert_eq!((s, v["code"].as_str()), (409, Some("not_a_dead_letter")));
    let (_, v) = app.get("/v1/messages?status=sent").await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 2);

    // Every request carried the key and a signature the receiver can check.
    let requests = seen.lock().unwrap().clone();
    assert_eq!(requests.len(), 4);
    for (headers, body) in &requests {
        assert_eq!(headers["idempotency-key"], key.as_str());
        let sig = headers["seam-signature"].to_str().unwrap();
        let t: i64 = sig
            .split(',')
            .next()
            .unwrap()
            .trim_start_matches("t=")
            .parse()
            .unwrap();
        assert_eq!(sig, signature("whsec_test", t, body.as_bytes()));
        let b: Value = serde_json::from_str(body).unwrap();
        assert_eq!(b["event"]["properties"]["plan"], "free", "{b}");
    }
    // What was sent is in the log: a rebuild sends nothing again.
    app.store.caught_up().await;
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(live == seam_store::dump_projections(&app.data_dir()).unwrap());
}

#[tokio::test]
async fn a_run_started_by_an_anonymous_visitor_follows_them_when_they_log_in() {
    use std::time::Duration;
    let app = spawn_app().await;
    let template = json!({"variants": {"email": {"subject": "{{ event.properties.name }} is waiting", "body": "b"}}});
    let journey = "trigger: { event: Product Added }\nstart: wait\nnodes:\n  wait: { type: wait, for: 20 minutes, next: mail }\n  mail: { type: send, channel: email, template: cart, category: transactional }\n";
    app.install("cart", template, "cart", journey).await;
    // The customer is known from an earlier visit; today they browse anonymously on a new device.
    let known = json!({"userId": "m1", "messageId": "m1", "traits": {"email": "m1@example.com"}});
    assert_eq!(app.send("/v1/identify", known).await.0, 200);
    let now = seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock));
    let browse = json!({"anonymousId": "device-7", "event": "Product Added", "messageId": "pa",
                        "properties": {"name": "Kettle"}, "timestamp": now});
    assert_eq!(app.send("/v1/track", browse).await.0, 200);
    let (_, v) = app.get("/v1/profiles/anonymous_id:device-7/journeys").await;
    assert_eq!(v["journeys"][0]["status"], "active", "{v}");
    // They log in on that device: the anonymous profile merges into theirs, and the run comes along.
    let login = json!({"userId": "m1", "anonymousId": "device-7", "messageId": "login"});
    assert_eq!(app.send("/v1/identify", login).await.0, 200);
    let (_, v) = app.get("/v1/profiles/user_id:m1/journeys").await;
    assert_eq!(v["journeys"].as_array().unwrap().len(), 1, "{v}");
    app.clock.advance(Duration::from_secs(20 * 60));
    let m = sent_to(&app, "m1").await;
    assert_eq!(m.len(), 1, "{m:?}");
    assert_eq!(m[0].1["address"], "email:m1@example.com");
    assert_eq!(m[0].1["content"]["subject"], "Kettle is waiting");
    app.store.caught_up().await;
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(
        live == seam_store::dump_projections(&app.data_dir()).unwrap(),
        "the merge and the run rebuild alike"
    );
}

#[tokio::test]
async fn a_campaign_reaches_everyone_in_its_segment_once_at_its_time() {
    use std::time::Duration;
    let app = spawn_app().await;
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/segments",
            Some(json!({"name": "Subscribers", "definition": "trait subscribed = true"})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let template = json!({"variants": {"email": {"subject": "Winter sale", "body": "b"}, "sms": {"text": "Winter sale"}}});
    let at = seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock) + 3_600_000);
    let journey = format!(
        "trigger: {{ schedule: {{ at: \"{at}\", segment: Subscribers }} }}\nstart: announce\nnodes:\n  announce: {{ type: first_reachable, channels: [email, sms], template: sale }}\n"
    );
    app.install("sale", template, "sale", &journey).await;
    for (user, traits) in [
        (
            "c1",
            json!({"subscribed": true, "email": "c1@example.com", "phone": "+79123450001", "consent": {"email": true, "sms": true}}),
        ),
        (
            "c2",
            json!({"subscribed": true, "phone": "+79123450002", "consent": {"sms": true}}),
        ),
        (
            "c3",
            json!({"subscribed": true, "email": "c3@example.com", "phone": "+79123450003", "consent": {"sms": true}}),
        ),
        (
            "c4",
            json!({"subscribed": false, "email": "c4@example.com", "consent": {"email": true}}),
        ),
    ] {
        let body = json!({"userId": user, "messageId": user, "traits": traits});
        assert_eq!(app.send("/v1/identify", body).await.0, 200);
    }
    assert!(app.get("/v1/messages").await.1["messages"]
        .as_array()
        .unwrap()
        .is_empty());
    app.clock.advance(Duration::from_secs(3_600));
    let channels = |m: Vec<(String, Value)>| m.into_iter().map(|(c, _)| c).collect::<Vec<_>>();
    assert_eq!(channels(sent_to(&app, "c1").await), ["email"]);
    assert_eq!(channels(sent_to(&app, "c2").await), ["sms"]);
    assert_eq!(
        channels(sent_to(&app, "c3").await),
        ["sms"],
        "no e-mail consent"
    );
    assert!(sent_to(&app, "c4").await.is_empty(), "not in the segment");
    // A one-off campaign fires once.
    app.clock.advance(Duration::from_secs(86_400));
    assert_eq!(
        app.get("/v1/messages").await.1["messages"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (_, st) = app.get("/v1/journeys/sale/stats").await;
    assert_eq!(st["entered"], 3, "{st}");
}

#[tokio::test]
async fn a_bounce_puts_the_address_on_the_suppression_list_and_nothing_more_goes_there() {
    let app = spawn_app().await;
    let template = json!({"variants": {"email": {"subject": "Your order", "body": "b"}}});
    let journey = "trigger: { event: Order Completed }\nreentry: after_exit\nstart: m\nnodes: { m: { type: send, channel: email, template: order, category: transactional } }\n";
    app.install("order", template, "orders", journey).await;
    let body = json!({"userId": "b1", "messageId": "b1", "traits": {"email": "b1@example.com"}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    track_at_now(&app, "b1", "Order Completed", json!({}), "o1").await;
    let key = sent_to(&app, "b1").await[0].1["key"]
        .as_str()
        .unwrap()
        .to_owned();
    // Someone else's SDK claiming the bounce changes nothing: only the person's own message counts.
    let other = json!({"userId": "intruder", "event": "Message Bounced", "messageId": "fake",
                       "properties": {"message_id": key}});
    assert_eq!(app.send("/v1/track", other).await.0, 200);
    assert!(app.get("/v1/suppressions").await.1["suppressions"]
        .as_array()
        .unwrap()
        .is_empty());
    let (s, _) = app
        .call(
            Method::POST,
            &format!("/v1/messages/{key}/outcome"),
            Some(json!({"outcome": "bounced"})),
        )
        .await;
    assert_eq!(s, 202);
    let (_, v) = app.get("/v1/suppressions").await;
    assert_eq!(
        v["suppressions"][0]["address"], "email:b1@example.com",
        "{v}"
    );
    assert_eq!(v["suppressions"][0]["reason"], "bounced");
    // Even a transactional message is held back now, with the reason.
    track_at_now(&app, "b1", "Order Completed", json!({}), "o2").await;
    assert_eq!(sent_to(&app, "b1").await.len(), 1);
    let (_, st) = app.get("/v1/journeys/orders/stats").await;
    assert_eq!(st["nodes"]["m"]["held:suppressed"], 1, "{st}");
    // Taken off the list (the address is normalised as at ingest), the next order's message goes.
    let (s, _) = app
        .call(
            Method::DELETE,
            "/v1/suppressions/email:B1@Example.com",
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, v) = app
        .call(
            Method::DELETE,
            "/v1/suppressions/email:b1@example.com",
            None,
        )
        .await;
    assert_eq!((s, v["code"].as_str()), (404, Some("not_suppressed")));
    track_at_now(&app, "b1", "Order Completed", json!({}), "o3").await;
    assert_eq!(sent_to(&app, "b1").await.len(), 2);
    // By hand: a complaint.
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/suppressions/email:b1@example.com",
            Some(json!({"reason": "complaint"})),
        )
        .await;
    assert_eq!(s, 204);
    let (s, _) = app
        .call(
            Method::PUT,
            "/v1/suppressions/email:b1@example.com",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 400);
    let (_, v) = app.get("/v1/suppressions").await;
    assert_eq!(v["suppressions"][0]["reason"], "complaint");
    app.store.caught_up().await;
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(live == seam_store::dump_projections(&app.data_dir()).unwrap());
}

#[tokio::test]
async fn date_triggers_fire_on_each_persons_date_in_their_time_zone() {
    use std::time::Duration;
    // NOW is 2026-11-23 00:00 UTC.
    let app = spawn_app().await;
    let template = json!({"variants": {"email": {"subject": "Happy birthday, {{ profile.traits.first_name }}", "body": "b"}}});
    let body = json!({"userId": "h1", "messageId": "h1", "traits": {"first_name": "Anna", "email": "h1@example.com",
        "birthday": "1990-11-24", "timezone": "Europe/Moscow", "consent": {"email": true}}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    let journey = "trigger: { date: { trait: birthday, at: \"09:00\", yearly: true } }\nreentry: after_exit\nstart: m\nnodes: { m: { type: send, channel: email, template: bday } }\n";
    app.install("bday", template, "birthday", journey).await;
    // A birthday learned after the activation is planned too.
    let body = json!({"userId": "h2", "messageId": "h2", "traits": {"first_name": "Ivan", "email": "h2@example.com",
        "birthday": "1985-11-25", "consent": {"email": true}}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    app.get("/v1/journeys").await;
    // 24 November, 05:59 UTC: not yet (09:00 in Moscow is 06:00 UTC).
    app.clock.advance(Duration::from_secs(29 * 3600 + 59 * 60));
    assert!(sent_to(&app, "h1").await.is_empty());
    app.clock.advance(Duration::from_secs(60));
    let m = sent_to(&app, "h1").await;
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].1["content"]["subject"], "Happy birthday, Anna");
    assert!(sent_to(&app, "h2").await.is_empty());
    // 25 November 09:00 UTC (no time zone: the workspace's, UTC).
    app.clock.advance(Duration::from_secs(27 * 3600));
    assert_eq!(sent_to(&app, "h2").await.len(), 1);
    assert_eq!(sent_to(&app, "h1").await.len(), 1, "once a year");
}

#[tokio::test]
async fn a_message_whose_template_fails_to_render_goes_to_the_dead_letters_unsent() {
    use seam_server::dispatch::{dispatch_due, DispatchSettings, Dispatched};
    let app = spawn_app().await;
    // Saved fine (the sample event has no items); an item without a name fails when rendered.
    let template = json!({"variants": {"email": {"subject": "Your items", "body": "{% for p in event.properties.items %}{{ p.name }}{% endfor %}"}}});
    let journey = "trigger: { event: Ordered }\nstart: m\nnodes: { m: { type: send, channel: email, template: items, category: transactional } }\n";
    app.install("items", template, "items", journey).await;
    let body = json!({"userId": "r1", "messageId": "r1", "traits": {"email": "r1@example.com"}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    track_at_now(
        &app,
        "r1",
        "Ordered",
        json!({"items": [{"sku": "x"}]}),
        "or1",
    )
    .await;
    let m = sent_to(&app, "r1").await;
    assert!(m[0].1["content"]["rendering_error"].is_string(), "{m:?}");
    let state = seam_server::AppState::new(
        app.store.clone(),
        std::sync::Arc::new(app.clock.clone()),
        seam_server::ApiSettings::default(),
    );
    let settings = DispatchSettings::new(app.data_dir().join("outbox"), "k".into());
    let d = dispatch_due(&state, &settings, &reqwest::Client::new())
        .await
        .unwrap();
    assert_eq!(
        d,
        Dispatched {
            sent: 0,
            retried: 0,
            dead: 1
        }
    );
    assert!(
        !app.data_dir().join("outbox/email.jsonl").exists(),
        "nothing half-made went out"
    );
    let (_, v) = app.get("/v1/messages?status=dead").await;
    assert!(
        v["messages"][0]["last_error"]
            .as_str()
            .unwrap()
            .starts_with("the template did not render"),
        "{v}"
    );
    // Sent again from the dead letters, it fails again: a second round, recorded as such, dead again.
    let key = v["messages"][0]["key"].as_str().unwrap().to_owned();
    assert_eq!(
        app.call(Method::POST, &format!("/v1/messages/{key}/replay"), None)
            .await
            .0,
        202
    );
    let d = dispatch_due(&state, &settings, &reqwest::Client::new())
        .await
        .unwrap();
    assert_eq!(
        d,
        Dispatched {
            sent: 0,
            retried: 0,
            dead: 1
        }
    );
    let (_, v) = app.get("/v1/messages?status=dead").await;
    assert_eq!(v["messages"].as_array().unwrap().len(), 1, "{v}");
}

#[tokio::test]
async fn a_purchase_in_the_same_batch_as_the_cart_ends_the_run_even_while_the_journey_is_paused() {
    use std::time::Duration;
    let app = spawn_app().await;
    let template =
        json!({"variants": {"email": {"subject": "s", "body": "b"}, "sms": {"text": "t"}}});
    app.install("cart", template, "cart", LIVE_JOURNEY).await;
    let body = json!({"userId": "g1", "messageId": "g1", "traits": {"email": "g1@example.com", "consent": {"email": true}}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    // An SDK sends the cart and the purchase together, half a minute after they happened.
    let t = |s: i64| {
        seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock) - 30_000 + s * 1000)
    };
    let batch = json!({"batch": [
        {"type": "track", "userId": "g1", "event": "Product Added", "messageId": "b-1", "properties": {"price": 150}, "timestamp": t(0)},
        {"type": "track", "userId": "g1", "event": "Order Completed", "messageId": "b-2", "timestamp": t(5)},
    ]});
    assert_eq!(app.send("/v1/batch", batch).await.0, 200);
    let (_, v) = app.get("/v1/profiles/user_id:g1/journeys").await;
    assert_eq!(v["journeys"][0]["status"], "goal", "{v}");
    // A second person's run waits; the journey is paused; their purchase still ends it.
    let body = json!({"userId": "g2", "messageId": "g2", "traits": {"email": "g2@example.com", "consent": {"email": true}}});
    assert_eq!(app.send("/v1/identify", body).await.0, 200);
    track_at_now(&app, "g2", "Product Added", json!({"price": 150}), "g2-a").await;
    assert_eq!(
        app.call(Method::POST, "/v1/journeys/cart/pause", None)
            .await
            .0,
        200
    );
    app.clock.advance(Duration::from_secs(60));
    track_at_now(&app, "g2", "Order Completed", json!({}), "g2-o").await;
    app.clock.advance(Duration::from_secs(30 * 60));
    assert!(sent_to(&app, "g1").await.is_empty());
    assert!(sent_to(&app, "g2").await.is_empty());
    let (_, st) = app.get("/v1/journeys/cart/stats").await;
    assert_eq!(st["exited"]["goal"], 2, "{st}");
}

//! Membership kept current by the projector: changed by events and by time, written to the log as
//! `segment_entered` / `segment_exited`, equal at every step to a fresh evaluation.

use std::time::Duration;

use reqwest::Method;
use serde_json::json;

use crate::{spawn_app, TestApp};

async fn create(app: &TestApp, name: &str, definition: &str) -> String {
    let (s, v) = app
        .call(
            Method::POST,
            "/v1/segments",
            Some(json!({"name": name, "definition": definition})),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    v["id"].as_str().unwrap().to_owned()
}

async fn segments_of(app: &TestApp, user: &str) -> Vec<String> {
    let (s, v) = app
        .call(
            Method::GET,
            &format!("/v1/profiles/user_id:{user}/segments"),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn timeline_kinds(app: &TestApp, user: &str) -> Vec<String> {
    let (_, page) = app
        .call(
            Method::GET,
            &format!("/v1/profiles/user_id:{user}/events?limit=100"),
            None,
        )
        .await;
    page["events"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .map(|e| e["type"].as_str().unwrap().to_owned())
        .collect()
}

async fn track(app: &TestApp, user: &str, event: &str, sku: &str, id: &str) {
    let now = seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock));
    let body = json!({"userId": user, "event": event, "properties": {"sku": sku}, "messageId": id,
        "timestamp": now});
    assert_eq!(app.send("/v1/track", body).await.0, 200);
}

#[tokio::test]
async fn an_event_moves_a_person_in_and_out_the_moment_it_arrives() {
    let app = spawn_app().await;
    let seg = create(
        &app,
        "Callers who do not buy",
        seam_audiences::EXAMPLES[1].1,
    )
    .await;
    for i in 0..2 {
        track(&app, "anna", "Call Started", "k", &format!("c{i}")).await;
    }
    assert!(segments_of(&app, "anna").await.is_empty());
    track(&app, "anna", "Call Started", "k", "c2").await;
    assert_eq!(segments_of(&app, "anna").await, std::slice::from_ref(&seg));
    track(&app, "anna", "Order Completed", "k", "o1").await;
    assert!(segments_of(&app, "anna").await.is_empty());
    let kinds = timeline_kinds(&app, "anna").await;
    let membership: Vec<&str> = kinds
        .iter()
        .map(String::as_str)
        .filter(|k| k.starts_with("segment_"))
        .collect();
    assert_eq!(
        membership,
        ["segment_entered", "segment_exited"],
        "{kinds:?}"
    );
}

#[tokio::test]
async fn time_passing_moves_a_person_in_and_out() {
    let app = spawn_app().await;
    let cart = create(
        &app,
        "Abandoned cart",
        r#""Product Added" not followed by "Order Completed" within 20 minutes"#,
    )
    .await;
    let recent = create(
        &app,
        "Called this week",
        r#"count of "Call Started" in last 7 days >= 1"#,
    )
    .await;
    track(&app, "vera", "Product Added", "k", "a1").await;
    track(&app, "vera", "Call Started", "k", "c1").await;
    assert_eq!(
        segments_of(&app, "vera").await,
        std::slice::from_ref(&recent)
    );

    app.clock.advance(Duration::from_secs(19 * 60));
    assert_eq!(
        segments_of(&app, "vera").await,
        std::slice::from_ref(&recent),
        "19 minutes: still waiting for the order"
    );
    app.clock.advance(Duration::from_secs(2 * 60));
    let mut both = vec![cart.clone(), recent.clone()];
    both.sort();
    assert_eq!(
        segments_of(&app, "vera").await,
        both,
        "21 minutes: the cart is abandoned"
    );

    app.clock.advance(Duration::from_secs(7 * 86_400));
    assert_eq!(
        segments_of(&app, "vera").await,
        [cart],
        "a week later the call is out of the window"
    );
}

#[tokio::test]
async fn a_new_segment_is_backfilled_over_the_history() {
    let app = spawn_app().await;
    for (i, user) in ["a", "b", "c"].iter().enumerate() {
        for j in 0..=i {
            track(&app, user, "Product Viewed", "k", &format!("{user}{j}")).await;
        }
    }
    let seg = create(&app, "Viewed twice", r#"count of "Product Viewed" >= 2"#).await;
    let (_, page) = app
        .call(Method::GET, &format!("/v1/segments/{seg}/members"), None)
        .await;
    assert_eq!(page["members"].as_array().unwrap().len(), 2);
    let fans = create(&app, "Fans", r#"in segment "Viewed twice""#).await;
    let (s, updated) = app
        .call(
            Method::PUT,
            &format!("/v1/segments/{seg}"),
            Some(json!({"definition": "count of \"Product Viewed\" >= 3"})),
        )
        .await;
    assert_eq!(s, 200, "{updated}");
    for (id, why) in [
        (&seg, "an edited definition is backfilled again"),
        (&fans, "a segment referring to it follows"),
    ] {
        let (_, page) = app
            .call(Method::GET, &format!("/v1/segments/{id}/members"), None)
            .await;
        assert_eq!(page["members"].as_array().unwrap().len(), 1, "{why}");
    }
}

#[tokio::test]
async fn memberships_come_back_identical_from_a_rebuild() {
    let app = spawn_app().await;
    create(
        &app,
        "Callers",
        r#"count of "Call Started" in last 1 days >= 1"#,
    )
    .await;
    track(&app, "r", "Call Started", "k", "c1").await;
    app.clock.advance(Duration::from_secs(2 * 86_400));
    assert!(segments_of(&app, "r").await.is_empty());
    track(&app, "r", "Call Started", "k", "c2").await;
    assert_eq!(segments_of(&app, "r").await.len(), 1);
    app.store.caught_up().await;
    app.store.shutdown();
    let live = seam_store::dump_projections(&app.data_dir()).unwrap();
    assert!(live.contains("## memberships\n"));
    seam_store::rebuild(&app.data_dir()).unwrap();
    assert!(live == seam_store::dump_projections(&app.data_dir()).unwrap());
}

/// A small deterministic generator for the walk below.
struct Lcg(u64);

impl Lcg {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % n
    }
}

#[tokio::test]
async fn kept_membership_equals_a_fresh_evaluation_at_every_step_as_events_arrive_and_time_passes()
{
    let definitions = [
        r#"count of "A" in last 2 hours >= 2"#,
        r#""A" not followed by "B" within 30 minutes"#,
        r#"last time of "B" < 1 hours ago and count of "A" >= 1"#,
        r#"in segment "S0" or count of "B" between 3 hours ago and 1 hours ago = 1"#,
    ];
    // Defined halfway: every person's digest is made again for the new set of definitions.
    let later = r#"for some sku: (count of "A" where sku = item in last 1 days >= 2)"#;
    for seed in 1..=3u64 {
        let app = spawn_app().await;
        let mut ids = Vec::new();
        for (i, d) in definitions.iter().enumerate() {
            ids.push(create(&app, &format!("S{i}"), d).await);
        }
        let mut rng = Lcg(seed);
        let users = ["u0", "u1", "u2"];
        let mut devices = [0u64; 3];
        let (mut ins, mut outs) = (0, 0);
        for step in 0..48 {
            if step == 24 {
                ids.push(create(&app, "S4", later).await);
            }
            let u = rng.below(3) as usize;
            let event = if rng.below(2) == 0 { "A" } else { "B" };
            let sku = format!("k{}", rng.below(3));
            let message_id = format!("s{seed}-{step}");
            match rng.below(6) {
                0 => {
                    // Now and then a day or two: old events leave the digests.
                    let minutes = if rng.below(4) == 0 {
                        1_440 * (1 + rng.below(2))
                    } else {
                        1 + rng.below(90)
                    };
                    app.clock.advance(Duration::from_secs(60 * minutes));
                }
                1 => {
                    // A visitor browsing on a new device, not yet known as the user.
                    devices[u] += 1;
                    let now =
                        seam_core::clock::format_rfc3339(seam_core::Clock::now_ms(&app.clock));
                    let body = json!({"anonymousId": format!("d{seed}-{u}-{}", devices[u]), "event": event,
                        "properties": {"sku": sku}, "messageId": message_id, "timestamp": now});
                    assert_eq!(app.send("/v1/track", body).await.0, 200);
                }
                2 if devices[u] > 0 => {
                    // The visitor logs in: their device's history merges into the user's.
                    let body = json!({"userId": users[u], "anonymousId": format!("d{seed}-{u}-{}", devices[u]),
                        "messageId": message_id});
                    assert_eq!(app.send("/v1/identify", body).await.0, 200);
                }
                _ => track(&app, users[u], event, &sku, &message_id).await,
            }
            for user in users {
                let (s, _) = app
                    .call(Method::GET, &format!("/v1/profiles/user_id:{user}"), None)
                    .await;
                if s == 404 {
                    continue;
                }
                let kept = segments_of(&app, user).await;
                for id in &ids {
                    let (_, why) = app
                        .call(
                            Method::GET,
                            &format!("/v1/segments/{id}/explain/user_id:{user}"),
                            None,
                        )
                        .await;
                    let fresh = why["member"].as_bool().unwrap();
                    assert_eq!(
                        kept.contains(id),
                        fresh,
                        "seed {seed} step {step} {user} {id}: {why}"
                    );
                    if fresh {
                        ins += 1;
                    } else {
                        outs += 1;
                    }
                }
            }
        }
        assert!(
            ins > 10 && outs > 10,
            "seed {seed}: the walk saw members ({ins}) and non-members ({outs})"
        );
    }
}

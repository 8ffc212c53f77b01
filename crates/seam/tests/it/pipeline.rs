use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use seam::bench::shop::{batches, Shop};
use seam_core::clock::ManualClock;
use seam_server::{ApiSettings, AppState};
use seam_store::{Store, StoreOptions};
use serde_json::Value;

const NOW: i64 = 1_795_392_000_000;

/// The identifiers of a generated call as Seam normalises them.
fn identifiers(e: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for (field, kind) in [("userId", "user_id"), ("anonymousId", "anonymous_id")] {
        if let Some(v) = e[field].as_str() {
            out.push(format!("{kind}:{v}"));
        }
    }
    if let Some(t) = e.get("traits") {
        if let Some(m) = t["email"].as_str() {
            out.push(format!("email:{}", m.to_lowercase()));
        }
        if let Some(p) = t["phone"].as_str() {
            out.push(format!("phone:{p}"));
        }
    }
    out
}

fn actual_grouping(db: &std::path::Path) -> BTreeSet<BTreeSet<String>> {
    let conn = rusqlite::Connection::open(db).unwrap();
    let mut stmt = conn
        .prepare("SELECT profile, type, value FROM identities")
        .unwrap();
    let mut groups: BTreeMap<i64, BTreeSet<String>> = BTreeMap::new();
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })
        .unwrap();
    for row in rows {
        let (p, t, v) = row.unwrap();
        groups.entry(p).or_default().insert(format!("{t}:{v}"));
    }
    groups.into_values().collect()
}

/// A fresh data folder at `data` served on a random local port, its clock standing at `NOW`.
struct Served {
    store: Store,
    base: String,
    creds: seam_store::workspace::Credentials,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn serve_fresh(data: &std::path::Path) -> Served {
    let creds = seam_store::workspace::init_data_dir(data, NOW)
        .unwrap()
        .unwrap();
    let store = Store::open(
        data,
        StoreOptions::default(),
        Arc::new(ManualClock::new(NOW)),
    )
    .unwrap();
    let state = AppState::new(
        store.clone(),
        Arc::new(ManualClock::new(NOW)),
        ApiSettings::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(seam_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    Served {
        store,
        base,
        creds,
        stop,
        server,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shop_traffic_is_stitched_as_the_truth_says_and_a_rebuild_equals_the_live_projections() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("live");
    let Served {
        store,
        base,
        creds,
        stop,
        server,
    } = serve_fresh(&data).await;

    let mut shop = Shop::new(300, 7, NOW - 86_400_000);
    let events = shop.events(8_000);
    // Four requests in flight at a time, so group commits gather several batches.
    send_all(&base, &creds.write_key, &events).await;
    store.caught_up().await;

    // Every person's identifiers that ever appeared together are on one profile, and no profile holds
    // identifiers that never met (no over-merging).
    let calls: Vec<Vec<String>> = events.iter().map(|e| identifiers(&e.json)).collect();
    let expected = seam_identity::co_occurrence_groups(&calls);
    assert_eq!(actual_grouping(&data.join("projections.db")), expected);
    // And the truth agrees: no profile mixes two people.
    let owner: BTreeMap<String, usize> = events
        .iter()
        .flat_map(|e| identifiers(&e.json).into_iter().map(move |i| (i, e.person)))
        .collect();
    for group in &expected {
        let people: BTreeSet<usize> = group.iter().map(|i| owner[i]).collect();
        assert_eq!(people.len(), 1, "{group:?}");
    }

    let _ = stop.send(());
    server.await.unwrap().unwrap();
    store.shutdown();
    drop(store);

    let copy = dir.path().join("copy");
    std::fs::create_dir_all(&copy).unwrap();
    for f in std::fs::read_dir(&data).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), copy.join(f.file_name())).unwrap();
    }
    let applied = seam_store::rebuild(&copy).unwrap();
    assert_eq!(applied, events.len() as u64);
    let live = seam_store::dump_projections(&data).unwrap();
    let rebuilt = seam_store::dump_projections(&copy).unwrap();
    assert!(
        live.lines().count() > events.len(),
        "the projections are not trivial: {} lines",
        live.lines().count()
    );
    assert!(
        live == rebuilt,
        "a rebuilt projection differs from the live one"
    );
}

/// Sends `events` to the server at `base` as batches of 100, four requests in flight, each answered 200.
async fn send_all(base: &str, write_key: &str, events: &[seam::bench::shop::GenEvent]) {
    let client = reqwest::Client::new();
    let mut pending = Vec::new();
    for body in batches(events, 100) {
        let req = client
            .post(format!("{base}/v1/batch"))
            .basic_auth(write_key, Some(""))
            .header("content-type", "application/json")
            .body(body);
        pending.push(tokio::spawn(
            async move { req.send().await.unwrap().status() },
        ));
        if pending.len() == 4 {
            for p in pending.drain(..) {
                assert_eq!(p.await.unwrap(), 200);
            }
        }
    }
    for p in pending {
        assert_eq!(p.await.unwrap(), 200);
    }
}

/// With twenty segments active, a computed trait defined over existing traffic queues everyone at once: they
/// are evaluated on the evaluator threads, in batches, while more traffic arrives and changes
/// some of them meanwhile. Every live profile's memberships and computed trait then equal an evaluation of its
/// whole history from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memberships_decided_off_the_projector_equal_an_evaluation_from_scratch() {
    use seam_store::segments::DefinitionKind;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("live");
    let Served {
        store,
        base,
        creds,
        stop,
        server,
    } = serve_fresh(&data).await;
    let (ws, _) = store.authenticate(&creds.write_key).unwrap();

    let defs: Vec<(String, String, String)> = seam_audiences::EXAMPLES
        .iter()
        .chain(seam::bench::shop::SEGMENTS)
        .enumerate()
        .map(|(i, (name, text))| (format!("seg_{i}"), (*name).to_owned(), (*text).to_owned()))
        .collect();
    for (id, name, text) in &defs {
        store
            .define(ws, DefinitionKind::Segment, id, name, text, NOW)
            .await
            .unwrap();
    }
    let mut shop = Shop::new(2_500, 11, NOW - 86_400_000);
    let events = shop.events(16_000);
    let (before, during) = events.split_at(10_000);
    send_all(&base, &creds.write_key, before).await;
    store.caught_up().await;

    let spend = r#"sum revenue of "Order Completed""#;
    let define = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .define(
                    ws,
                    DefinitionKind::ComputedTrait,
                    "ct_1",
                    "lifetime_spend",
                    spend,
                    NOW,
                )
                .await
                .unwrap();
        })
    };
    send_all(&base, &creds.write_key, during).await;
    define.await.unwrap();
    store.caught_up().await;
    let apart = store
        .stats()
        .evaluated_apart
        .load(std::sync::atomic::Ordering::Relaxed);
    let again = store
        .stats()
        .evaluated_again
        .load(std::sync::atomic::Ordering::Relaxed);
    // Everyone live when the trait was defined (about 1,700) was handed to the evaluator; those the traffic
    // changed meanwhile were left queued and handed out again.
    assert!(
        apart >= 500 && apart + again >= 1_500,
        "evaluated apart {apart}, again {again}"
    );

    let library = seam_audiences::Library::new(
        defs.iter()
            .map(|(_, name, text)| (name.clone(), seam_audiences::parse(text).unwrap())),
    );
    let metric = seam_audiences::parse_metric(spend).unwrap();
    let conn = rusqlite::Connection::open(data.join("projections.db")).unwrap();
    let live: Vec<i64> = conn
        .prepare("SELECT profile FROM profiles WHERE merged_into IS NULL")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(live.len() >= 2_000, "{} live profiles", live.len());
    let mut members = 0;
    for key in live {
        let profile = seam_core::ProfileId::from_seq(key);
        let person = store.person(ws, &profile).unwrap();
        let mut traits = person.traits.clone();
        let stored = traits.remove("computed").unwrap_or_default();
        let whole = seam_audiences::Person {
            traits: &traits,
            identities: &person.identities,
            events: &person.events,
            in_segment: &|_| false,
        };
        let expected = seam_audiences::measure(&metric, &whole, NOW);
        assert_eq!(stored.get("lifetime_spend"), expected.as_ref(), "{profile}");
        let inside: BTreeSet<String> = store
            .memberships_of(ws, &profile)
            .unwrap()
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        for (id, name, text) in &defs {
            let expr = seam_audiences::parse(text).unwrap();
            let member = library.evaluate(
                &expr,
                &person.traits,
                &person.identities,
                &person.events,
                NOW,
            );
            assert_eq!(inside.contains(id), member, "{profile} in {name}");
            members += usize::from(member);
        }
    }
    assert!(
        members > 2_500,
        "the segments are not trivial: {members} memberships"
    );
    let _ = stop.send(());
    server.await.unwrap().unwrap();
    store.shutdown();
}

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use serde_json::json;

use crate::{init, Server};

const BATCHES: usize = 240;
const PER_BATCH: usize = 25;

fn batch_body(b: usize) -> Vec<u8> {
    let items: Vec<_> = (0..PER_BATCH)
        .map(|i| {
            let user = (b * 7 + i) % 40;
            if i == 0 {
                json!({"type": "identify", "messageId": format!("c-{b}-{i}"), "userId": format!("u{user}"),
                       "anonymousId": format!("dev-{}", b % 60), "traits": {"batch": b}})
            } else {
                json!({"type": "track", "messageId": format!("c-{b}-{i}"), "userId": format!("u{user}"),
                       "event": "Product Viewed", "properties": {"b": b, "i": i}})
            }
        })
        .collect();
    serde_json::to_vec(&json!({ "batch": items })).unwrap()
}

/// Sends the batches in `queue` with `inflight` requests at a time; a batch whose request fails (the server
/// died) goes back in the queue. Returns when the queue is empty or the server is gone.
async fn send_until_killed(
    base: String,
    key: String,
    queue: Arc<Mutex<Vec<usize>>>,
    acked: Arc<Mutex<BTreeSet<usize>>>,
    body: fn(usize) -> Vec<u8>,
) {
    let client = reqwest::Client::new();
    loop {
        let Some(b) = queue.lock().unwrap().pop() else {
            return;
        };
        let resp = client
            .post(format!("{base}/v1/batch"))
            .basic_auth(&key, Some(""))
            .header("content-type", "application/json")
            .body(body(b))
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == 200 => {
                acked.lock().unwrap().insert(b);
            }
            _ => {
                queue.lock().unwrap().push(b);
                return;
            }
        }
    }
}

/// Sends batches `0..batches` (built by `body`) to servers it starts on `data` and kills with SIGKILL after a
/// varying number of acknowledgements, requests still in flight, until every batch is acknowledged. Returns the
/// number of server starts.
async fn send_with_kills(
    data: &std::path::Path,
    key: &str,
    batches: usize,
    body: fn(usize) -> Vec<u8>,
) -> usize {
    let queue = Arc::new(Mutex::new((0..batches).rev().collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut round = 0;
    while !queue.lock().unwrap().is_empty() {
        round += 1;
        assert!(round < 50, "no progress");
        let mut server = Server::start(data).await;
        let kill_after = (acked.lock().unwrap().len() + 15 + (round * 13) % 40).min(batches);
        let senders: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(send_until_killed(
                    server.base.clone(),
                    key.to_owned(),
                    queue.clone(),
                    acked.clone(),
                    body,
                ))
            })
            .collect();
        // Not on an empty queue: the last batches may be in flight and would be retried forever.
        while acked.lock().unwrap().len() < kill_after && senders.iter().any(|s| !s.is_finished()) {
            tokio::task::yield_now().await;
        }
        server.kill();
        for s in senders {
            s.await.unwrap();
        }
    }
    assert_eq!(acked.lock().unwrap().len(), batches);
    round
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_acknowledged_event_is_present_exactly_once_and_profiles_are_consistent(
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, _) = init(&data);

    let round = send_with_kills(&data, &key, BATCHES, batch_body).await;
    assert!(
        round >= 3,
        "the server was killed at least twice mid-stream"
    );

    // Retries of acknowledged batches (an SDK that never saw the answer) change nothing.
    let server = Server::start(&data).await;
    let client = reqwest::Client::new();
    for b in (0..BATCHES).step_by(10) {
        let r = client
            .post(format!("{}/v1/batch", server.base))
            .basic_auth(&key, Some(""))
            .body(batch_body(b))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    server.wait_caught_up().await;
    drop(server);

    let conn = rusqlite::Connection::open(data.join("seam.db")).unwrap();
    let stored: Vec<String> = conn
        .prepare("SELECT message_id FROM events WHERE type NOT IN ('merge', 'identity_conflict') ORDER BY message_id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut expected: Vec<String> = (0..BATCHES)
        .flat_map(|b| (0..PER_BATCH).map(move |i| format!("c-{b}-{i}")))
        .collect();
    expected.sort();
    assert_eq!(stored, expected, "every acknowledged event exactly once");

    // Profiles count every event once, and equal a rebuild from the log.
    let conn = rusqlite::Connection::open(data.join("projections.db")).unwrap();
    let counted: i64 = conn
        .prepare("SELECT state FROM profiles WHERE merged_into IS NULL")
        .unwrap()
        .query_map([], |r| r.get::<_, String>(0))
        .unwrap()
        .map(|s| {
            serde_json::from_str::<serde_json::Value>(&s.unwrap()).unwrap()["event_count"]
                .as_i64()
                .unwrap()
        })
        .sum();
    assert_eq!(counted, (BATCHES * PER_BATCH) as i64);
    drop(conn);
    let live = seam_store::dump_projections(&data).unwrap();
    seam_store::rebuild(&data).unwrap();
    assert!(
        live == seam_store::dump_projections(&data).unwrap(),
        "projections after crashes equal a rebuild"
    );
}

const SIGNUP_BATCHES: usize = 60;
const PER_SIGNUP_BATCH: usize = 5;

/// Each batch: five people identify with an e-mail and sign up.
fn signup_body(b: usize) -> Vec<u8> {
    let items: Vec<_> = (0..PER_SIGNUP_BATCH)
        .flat_map(|i| {
            let u = b * PER_SIGNUP_BATCH + i;
            [
                json!({"type": "identify", "messageId": format!("i-{u}"), "userId": format!("s{u}"),
                       "traits": {"email": format!("s{u}@example.com")}}),
                json!({"type": "track", "messageId": format!("t-{u}"), "userId": format!("s{u}"),
                       "event": "Signed Up"}),
            ]
        })
        .collect();
    serde_json::to_vec(&json!({ "batch": items })).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_journey_step_is_taken_once_and_every_message_is_dispatched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, secret) = init(&data);
    {
        let server = Server::start(&data).await;
        let client = reqwest::Client::new();
        let put = |path: &str, ctype: &str, body: String| {
            client
                .put(format!("{}{path}", server.base))
                .bearer_auth(&secret)
                .header("content-type", ctype.to_owned())
                .body(body)
                .send()
        };
        let t = put(
            "/v1/templates/welcome",
            "application/json",
            json!({"variants": {"email": {"subject": "Welcome", "body": "b"}}}).to_string(),
        )
        .await
        .unwrap();
        assert_eq!(t.status(), 201);
        let journey = "trigger: { event: Signed Up }\nstart: mail\nnodes:\n  mail: { type: send, channel: email, template: welcome, category: transactional }\n";
        let j = put("/v1/journeys/welcome", "application/yaml", journey.into())
            .await
            .unwrap();
        assert_eq!(j.status(), 201);
        let a = client
            .post(format!("{}/v1/journeys/welcome/activate", server.base))
            .bearer_auth(&secret)
            .send()
            .await
            .unwrap();
        assert_eq!(a.status(), 200);
    }
    let round = send_with_kills(&data, &key, SIGNUP_BATCHES, signup_body).await;
    assert!(round >= 2, "killed at least once mid-stream");

    let people = SIGNUP_BATCHES * PER_SIGNUP_BATCH;
    let server = Server::start(&data).await;
    server.wait_caught_up().await;
    let client = reqwest::Client::new();
    let get = |path: String| {
        let req = client
            .get(format!("{}{path}", server.base))
            .bearer_auth(&secret);
        async move {
            req.send()
                .await
                .unwrap()
                .json::<serde_json::Value>()
                .await
                .unwrap()
        }
    };
    // One run and one message per person: no step was skipped or taken twice.
    let stats = get("/v1/journeys/welcome/stats".into()).await;
    assert_eq!(stats["entered"], people, "{stats}");
    assert_eq!(stats["nodes"]["mail"]["sent"], people, "{stats}");
    let messages = get("/v1/messages?limit=1000".into()).await;
    let mut to: Vec<String> = messages["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["address"].as_str().unwrap().to_owned())
        .collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), people);
    // The dispatcher (every second, in real time) hands each to the outbox file; poll until all are sent.
    let mut sent = 0;
    for _ in 0..300 {
        let v = get("/v1/messages?status=sent&limit=1000".into()).await;
        sent = v["messages"].as_array().unwrap().len();
        if sent == people {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(sent, people, "every message dispatched");
    let file = std::fs::read_to_string(data.join("outbox/email.jsonl")).unwrap();
    let keys: BTreeSet<String> = file
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(keys.len(), people, "each message is in the outbox file");
    drop(server);
    let live = seam_store::dump_projections(&data).unwrap();
    seam_store::rebuild(&data).unwrap();
    assert!(
        live == seam_store::dump_projections(&data).unwrap(),
        "runs, messages and deliveries after crashes equal a rebuild"
    );
}

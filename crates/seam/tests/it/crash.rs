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
            .body(batch_body(b))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_sigkill_every_acknowledged_event_is_present_exactly_once_and_profiles_are_consistent(
) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (key, _) = init(&data);
    let queue = Arc::new(Mutex::new((0..BATCHES).rev().collect::<Vec<_>>()));
    let acked = Arc::new(Mutex::new(BTreeSet::new()));

    // Kill the server with SIGKILL after a varying number of acknowledgements, requests still in flight.
    let mut round = 0;
    while !queue.lock().unwrap().is_empty() {
        round += 1;
        assert!(round < 50, "no progress");
        let mut server = Server::start(&data).await;
        let kill_after = (acked.lock().unwrap().len() + 15 + (round * 13) % 40).min(BATCHES);
        let senders: Vec<_> = (0..4)
            .map(|_| {
                tokio::spawn(send_until_killed(
                    server.base.clone(),
                    key.clone(),
                    queue.clone(),
                    acked.clone(),
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
    assert!(
        round >= 3,
        "the server was killed at least twice mid-stream"
    );
    assert_eq!(acked.lock().unwrap().len(), BATCHES);

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

//! Real Segment and RudderStack SDKs (Python and Node) send the same scenario to a real `seam serve`; the
//! profiles must come out as the scenario says. The SDKs are installed by `scripts/test` (and so by CI):
//! Python packages under `target/sdk-python`, Node packages under `crates/seam/tests/sdk/node_modules`.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::{init, Server};

fn sdk_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/sdk")
}

fn python_path() -> PathBuf {
    std::env::var_os("SEAM_SDK_PYTHONPATH")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/sdk-python")
        })
}

fn installed(sdk: &str) -> bool {
    match sdk {
        "segment-python" => python_path().join("segment/analytics").exists(),
        "rudder-python" => python_path().join("rudderstack/analytics").exists(),
        "segment-node" => sdk_dir()
            .join("node_modules/@segment/analytics-node")
            .exists(),
        _ => sdk_dir()
            .join("node_modules/@rudderstack/rudder-sdk-node")
            .exists(),
    }
}

async fn scenario_through(sdk: &str) {
    assert!(
        installed(sdk),
        "the {sdk} SDK is not installed: run scripts/test, which installs the SDKs before running the tests"
    );
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (write_key, secret_key) = init(&data);
    let server = Server::start(&data).await;
    let (program, script, flavour) = match sdk {
        "segment-python" => ("python3", "python_sdk.py", "segment"),
        "rudder-python" => ("python3", "python_sdk.py", "rudder"),
        "segment-node" => ("node", "node_sdk.js", "segment"),
        _ => ("node", "node_sdk.js", "rudder"),
    };
    let out = tokio::task::spawn_blocking({
        let (base, key, prefix) = (server.base.clone(), write_key.clone(), sdk.to_owned());
        move || {
            Command::new(program)
                .args([script, flavour, &base, &key, &prefix])
                .current_dir(sdk_dir())
                .env("PYTHONPATH", python_path())
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{sdk} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    server.wait_caught_up().await;

    let client = reqwest::Client::new();
    let get = |path: String| {
        let req = client
            .get(format!("{}{path}", server.base))
            .bearer_auth(&secret_key);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let p = get(format!("/v1/profiles/email:{sdk}.buyer@example.com")).await;
    let ids: Vec<String> = p["identities"]
        .as_array()
        .unwrap_or_else(|| panic!("{sdk}: no profile: {p}"))
        .iter()
        .map(|i| {
            format!(
                "{}:{}",
                i["type"].as_str().unwrap(),
                i["value"].as_str().unwrap()
            )
        })
        .collect();
    assert_eq!(
        ids,
        [
            format!("anonymous_id:{sdk}-anon-1"),
            format!("anonymous_id:{sdk}-anon-2"),
            format!("email:{sdk}.buyer@example.com"),
            "phone:+79123450001".to_owned(),
            format!("user_id:{sdk}-user-1"),
        ],
        "{sdk}"
    );
    assert_eq!(
        p["event_count"], 7,
        "{sdk}: page, 2 views, identify, order, alias, group"
    );
    assert_eq!(p["traits"]["name"], "Buyer", "{sdk}");
    let timeline = get(format!(
        "/v1/profiles/user_id:{sdk}-user-1/events?limit=100"
    ))
    .await;
    let events = timeline["events"].as_array().unwrap();
    let order = events
        .iter()
        .find(|e| e["event"] == "Order Completed")
        .unwrap();
    assert_eq!(order["properties"]["revenue"], 499, "{sdk}");
    assert!(
        order["source"].is_string(),
        "{sdk}: the library is recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_python_sends_to_seam() {
    scenario_through("segment-python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudder_sdk_python_sends_to_seam() {
    scenario_through("rudder-python").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_analytics_node_sends_to_seam() {
    scenario_through("segment-node").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rudderstack_sdk_node_sends_to_seam() {
    scenario_through("rudder-node").await;
}

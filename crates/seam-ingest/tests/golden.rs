//! Golden files: payloads recorded from the real Segment and RudderStack SDKs (`scripts/record-sdk-payloads.py`)
//! and the normalised events Seam makes of them. A change in parsing shows up here as a diff to review;
//! `SEAM_UPDATE_GOLDEN=1 cargo test -p seam-ingest --test golden` accepts it.

use std::path::PathBuf;

use seam_core::IdentifierRules;
use seam_ingest::{parse_call, CallKind, Decoded, IngestOptions, Limits};
use serde_json::{json, Value};

/// 2026-11-23T03:00:00Z, the receive time given to every recorded request.
const RECEIVED_AT: i64 = 1_795_402_800_000;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn normalise(recorded: &Value) -> Value {
    let rules = IdentifierRules::default();
    let opts = IngestOptions {
        limits: Limits::default(),
        default_region: seam_ingest::normalize::parse_region("RU").ok(),
        rules: &rules,
    };
    let requests: Vec<Value> = recorded
        .as_array()
        .expect("a list of recorded requests")
        .iter()
        .map(|req| {
            let path = req["path"].as_str().unwrap();
            let kind = CallKind::from_path(path.rsplit('/').next().unwrap()).expect("a collection path");
            let decoded = Decoded::json(req["body"].to_string());
            let parsed = parse_call(kind, &decoded.body(kind).unwrap(), RECEIVED_AT, &opts);
            json!({
                "path": path,
                "write_key": parsed.write_key,
                "accepted": parsed.accepted.iter().map(|a| serde_json::to_value(a.event()).unwrap()).collect::<Vec<_>>(),
                "rejected": parsed.rejected.iter().map(|e| json!({"index": e.index, "field": e.field, "reason": e.reason})).collect::<Vec<_>>(),
            })
        })
        .collect();
    Value::Array(requests)
}

#[test]
fn recorded_sdk_payloads_normalise_to_the_expected_events() {
    let mut checked = 0;
    for sdk in [
        "segment-python",
        "rudder-python",
        "segment-node",
        "rudder-node",
    ] {
        let recorded: Value = serde_json::from_str(
            &std::fs::read_to_string(golden_dir().join(format!("{sdk}.json"))).unwrap(),
        )
        .unwrap();
        let actual = normalise(&recorded);
        let expected_path = golden_dir().join(format!("{sdk}.expected.json"));
        if std::env::var_os("SEAM_UPDATE_GOLDEN").is_some() {
            std::fs::write(
                &expected_path,
                serde_json::to_string_pretty(&actual).unwrap() + "\n",
            )
            .unwrap();
        }
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(&expected_path).unwrap_or_else(|_| {
                panic!(
                    "{} is missing; run with SEAM_UPDATE_GOLDEN=1 and review it",
                    expected_path.display()
                )
            }),
        )
        .unwrap();
        assert_eq!(
            actual,
            expected,
            "{sdk}: normalised events differ from {}",
            expected_path.display()
        );

        // Whatever the SDK, the scenario's seven calls are all accepted and carry the normalised identifiers.
        let events: Vec<&Value> = actual
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|r| r["accepted"].as_array().unwrap())
            .collect();
        assert_eq!(events.len(), 7, "{sdk}");
        assert!(
            actual
                .as_array()
                .unwrap()
                .iter()
                .all(|r| r["rejected"].as_array().unwrap().is_empty()),
            "{sdk}"
        );
        let identify = events.iter().find(|e| e["type"] == "identify").unwrap();
        let ids: Vec<String> = identify["identifiers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                format!(
                    "{}:{}",
                    i["type"].as_str().unwrap(),
                    i["value"].as_str().unwrap()
                )
            })
            .collect();
        assert!(
            ids.contains(&format!("email:{sdk}.buyer@example.com")),
            "{sdk}: {ids:?}"
        );
        assert!(
            ids.contains(&"phone:+79123450001".to_owned()),
            "{sdk}: {ids:?}"
        );
        assert!(
            events.iter().all(|e| e["source"].is_string()),
            "{sdk}: every event names its library"
        );
        checked += 1;
    }
    assert_eq!(checked, 4);
}

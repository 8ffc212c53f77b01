use std::io::{BufRead, BufReader};
use std::process::Stdio;

use crate::{init, json_of, seam};

#[test]
fn init_prints_the_keys_as_json_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (write_key, secret_key) = init(&data);
    assert!(write_key.starts_with("wk_") && secret_key.starts_with("sk_"));
    let again = seam().args(["init", "--data"]).arg(&data).output().unwrap();
    assert!(!again.status.success());
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(err.contains("already initialised"), "{err}");
    assert!(!err.contains(&write_key));
}

#[test]
fn serve_on_a_new_folder_initialises_it_and_prints_the_keys_once() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("fresh");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let start = || {
        seam()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(&data)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut child = start();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: Vec<String> = (0..3).map(|_| lines.next().unwrap().unwrap()).collect();
    assert!(first[1].starts_with("write key:  wk_"), "{first:?}");
    assert!(first[2].starts_with("secret key: sk_"), "{first:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // The second start prints nothing on standard output: the keys are shown once.
    let mut child = start();
    let stdout = child.stdout.take().unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let rest: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    assert!(rest.iter().all(|l| !l.contains("wk_")), "{rest:?}");
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = seam()
        .args(["init", "--data"])
        .arg(dir.path())
        .env("SEAM_DEFAULT_REGION", "ZZ")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("default_region"));

    let cfg = dir.path().join("seam.toml");
    std::fs::write(&cfg, "[server]\nlisten = \"127.0.0.1:1\"\nbogus = 1\n").unwrap();
    let out = seam()
        .arg("--config")
        .arg(&cfg)
        .args(["init", "--data"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("bogus"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn help_lists_every_command() {
    let out = seam().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for cmd in ["init", "serve", "rebuild", "simulate", "bench"] {
        assert!(text.contains(cmd), "{text}");
    }
}

#[test]
fn a_benchmark_refuses_a_zero_count_with_the_option_named() {
    for args in [
        ["bench", "journeys", "--latency-rate", "0"],
        ["bench", "segments", "--secs", "0"],
        ["bench", "ingest", "--batch", "0"],
    ] {
        let out = seam().args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(args[2]) && err.contains("at least 1"), "{err}");
    }
    // Segment counts are bounded by the segments the benchmarks ship.
    for (command, count) in [("segments", "0"), ("segments", "21"), ("ingest", "21")] {
        let out = seam()
            .args(["bench", command, "--segments", count])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("--segments") && err.contains("1..=20"),
            "{err}"
        );
    }
}

/// The ingest benchmark end to end on a small shop: its preview, by default and exact, agrees with itself, and
/// the backfill it times finishes.
#[test]
fn the_ingest_benchmark_previews_and_backfills_a_segment() {
    let dir = tempfile::tempdir().unwrap();
    let r = json_of(
        seam()
            .args(["bench", "ingest", "--events", "2000", "--people", "200"])
            .args(["--backfill", "--json", "--data"])
            .arg(dir.path().join("data")),
    );
    let p = &r["preview"];
    assert_eq!(p["complete"], true, "{r}");
    assert_eq!(p["estimate"], p["exact_count"], "{r}");
    assert_eq!(p["profiles_evaluated"], p["profiles"], "{r}");
    assert!(p["profiles"].as_u64().unwrap() >= 200, "{r}");
    assert!(r["backfill_secs"].as_f64().is_some(), "{r}");
}

#[test]
fn simulate_prints_the_timeline_of_a_shipped_scenario_and_refuses_a_broken_one() {
    let scenarios = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scenarios");
    let out = seam()
        .args(["simulate"])
        .arg(scenarios.join("abandoned-cart.yaml"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines()
            .any(|l| l.starts_with("2026-11-24 10:20  unread")
                && l.contains("send")
                && l.contains("viber (remind): Anna, your promo code CART10")),
        "{text}"
    );
    assert!(
        text.contains("abandoned-cart: entered 11, converted 4"),
        "{text}"
    );

    let json = seam()
        .args(["simulate", "--json"])
        .arg(scenarios.join("reach-everyone-once.yaml"))
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["messages"].as_array().unwrap().len(), 6);
    assert_eq!(report["messages"][0]["at"], "2026-11-24T10:00:00.000Z");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "start: 2026-11-23T08:00:00Z\njourneys:\n  - id: j\n    trigger: { event: X }\n    start: a\n    nodes:\n      a: { type: send, channel: email, template: missing }\n",
    )
    .unwrap();
    let out = seam().arg("simulate").arg(&bad).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("journeys[0].nodes.a.template: there is no template named `missing`"),
        "{err}"
    );
}

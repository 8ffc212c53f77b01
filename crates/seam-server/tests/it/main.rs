//! Integration tests: the real server on a random port with a fresh data folder, driven over HTTP.

mod collect;
mod computed;
mod journeys;
mod membership;
mod operations;
mod profiles;
mod segments;

use std::sync::Arc;

use seam_core::clock::ManualClock;
use seam_server::{ApiSettings, AppState};
use seam_store::{Store, StoreOptions};
use serde_json::Value;

/// 2026-11-23T00:00:00Z: the server's (virtual) time in these tests.
pub const NOW: i64 = 1_795_392_000_000;

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub write_key: String,
    pub secret_key: String,
    pub store: Store,
    pub clock: ManualClock,
    dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(ApiSettings {
        default_region: seam_ingest::normalize::parse_region("RU").ok(),
        ..ApiSettings::default()
    })
    .await
}

pub async fn spawn_app_with(settings: ApiSettings) -> TestApp {
    spawn_app_with_store(settings, StoreOptions::default()).await
}

pub async fn spawn_app_with_store(settings: ApiSettings, opts: StoreOptions) -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let creds = seam_store::workspace::init_data_dir(&data, NOW)
        .unwrap()
        .expect("fresh folder");
    let clock = ManualClock::new(NOW);
    let store = Store::open(&data, opts, Arc::new(clock.clone())).unwrap();
    let state = AppState::new(store.clone(), Arc::new(clock.clone()), settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(seam_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    TestApp {
        base,
        client: reqwest::Client::new(),
        write_key: creds.write_key,
        secret_key: creds.secret_key,
        store,
        clock,
        dir,
        _stop: stop,
    }
}

impl TestApp {
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// POSTs a JSON body to a collection endpoint with the write key as basic auth.
    pub async fn send(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .basic_auth(&self.write_key, Some(""))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// POSTs raw bytes with the given headers.
    pub async fn send_raw(
        &self,
        path: &str,
        body: Vec<u8>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self.client.post(format!("{}{path}", self.base)).body(body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// GETs a management endpoint with the secret key, after everything sent so far is applied.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.store.caught_up().await;
        let resp = self
            .client
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.secret_key)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }
}

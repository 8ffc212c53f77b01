//! Integration tests of the `seam` command: the real binary (CLI, crash recovery, real SDKs) and the whole
//! pipeline on generated shop traffic.

mod cli;
mod crash;
mod pipeline;
mod sdk;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn seam() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_seam"));
    c.env("SEAM_LOG__LEVEL", "warn");
    c
}

/// Runs a `seam` command that must succeed and returns what it printed, read as JSON.
pub fn json_of(command: &mut Command) -> serde_json::Value {
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `seam init --json` and returns (write key, secret key).
pub fn init(data: &Path) -> (String, String) {
    let v = json_of(seam().args(["init", "--json", "--data"]).arg(data));
    (
        v["write_key"].as_str().unwrap().to_owned(),
        v["secret_key"].as_str().unwrap().to_owned(),
    )
}

/// A `seam serve` process; killed (SIGKILL) when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    pub async fn start(data: &Path) -> Server {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = seam()
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        s.wait_ready().await;
        s
    }

    /// Waits (bounded) until the server answers /healthz.
    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        for _ in 0..1_000 {
            if client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server did not come up");
    }

    /// Waits (bounded) until everything in the log is applied to the projections.
    pub async fn wait_caught_up(&self) {
        let client = reqwest::Client::new();
        for _ in 0..3_000 {
            let h: serde_json::Value = client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if h["applied_seq"].as_i64() >= h["log_seq"].as_i64()
                && h["pending_evaluations"].as_i64() == Some(0)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the server did not catch up");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

//! `seam bench …`: drives a real `seam serve` process over HTTP with generated shop traffic and reports what it
//! measured. The server runs as a child process on a fresh data folder, so its resident memory is its own.

pub mod journeys;
pub mod shop;

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use seam_core::clock::{Clock, Stopwatch, SystemClock};
use serde::Serialize;

use crate::cli::IngestBench;

#[derive(Debug, Serialize)]
pub struct IngestReport {
    pub events: usize,
    pub batch: usize,
    pub concurrency: usize,
    pub target_rate: Option<usize>,
    pub people: usize,
    /// Seconds from the first request to the last acknowledgement.
    pub acked_secs: f64,
    /// Seconds from the first request until every event was applied to profiles.
    pub applied_secs: f64,
    pub acked_events_per_sec: f64,
    pub applied_events_per_sec: f64,
    pub ack_p50_ms: f64,
    pub ack_p90_ms: f64,
    pub ack_p99_ms: f64,
    pub ack_max_ms: f64,
    pub retries_503: usize,
    pub server_peak_rss_mib: f64,
    pub server_rss_mib: f64,
    pub data_folder_mib: f64,
    /// Seconds from defining a new segment (after everything was applied) until every person was evaluated.
    pub backfill_secs: Option<f64>,
    /// The previews of that segment before it was defined.
    pub preview: Option<PreviewReport>,
}

/// `POST /v1/segments/preview` timed as it answers by default (within its time budget) and with `exact=true`.
#[derive(Debug, Serialize)]
pub struct PreviewReport {
    pub secs: f64,
    pub estimate: u64,
    pub complete: bool,
    pub profiles_evaluated: u64,
    pub profiles: u64,
    pub exact_secs: f64,
    pub exact_count: u64,
}

/// The segment `--backfill` defines: it reads product views (with a property filter) over 30 days.
const BACKFILL_SEGMENT: &str =
    r#"count of "Product Viewed" where category = "coffee" in last 30 days >= 2"#;

/// Waits until the server has applied its whole log and evaluated every queued person.
async fn wait_applied(client: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let health = format!("{base}/healthz");
    loop {
        let h: serde_json::Value = client.get(&health).send().await?.json().await?;
        let (log, applied) = (
            h["log_seq"].as_i64().unwrap_or(0),
            h["applied_seq"].as_i64().unwrap_or(-1),
        );
        let pending = h["pending_evaluations"].as_i64().unwrap_or(0);
        if applied >= log && pending == 0 {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Posts a segment definition to `path` (`/v1/segments` defines it, `/v1/segments/preview` counts it) and
/// returns the answer.
async fn post_segment(
    client: &reqwest::Client,
    server: &ServerProcess,
    path: &str,
    name: &str,
    definition: &str,
) -> anyhow::Result<serde_json::Value> {
    let secret = server
        .secret_key
        .as_deref()
        .context("the secret key of the server under test")?;
    let resp = client
        .post(format!("{}{path}", server.base))
        .bearer_auth(secret)
        .json(&serde_json::json!({ "name": name, "definition": definition }))
        .send()
        .await?;
    if !resp.status().is_success() {
        bail!("{path} for the segment {name:?} answered {}", resp.status());
    }
    Ok(resp.json().await?)
}

/// A `seam serve` child process on a fresh port.
struct ServerProcess {
    /// None when driving a server started elsewhere.
    child: Option<tokio::process::Child>,
    base: String,
    write_key: String,
    secret_key: Option<String>,
}

impl ServerProcess {
    async fn start(data: &Path) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let out = std::process::Command::new(&exe)
            .args(["init", "--json", "--data"])
            .arg(data)
            .env("SEAM_LOG__LEVEL", "warn")
            .output()
            .context("running seam init")?;
        if !out.status.success() {
            bail!("seam init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let creds: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let write_key = creds["write_key"].as_str().context("write_key")?.to_owned();
        let secret_key = creds["secret_key"].as_str().map(str::to_owned);
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = tokio::process::Command::new(&exe)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data"])
            .arg(data)
            .env("SEAM_LOG__LEVEL", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting seam serve")?;
        let s = Self {
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            write_key,
            secret_key,
        };
        let client = reqwest::Client::new();
        for _ in 0..500 {
            if client
                .get(format!("{}/healthz", s.base))
                .send()
                .await
                .is_ok()
            {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        bail!("the server did not start answering within 5 s")
    }

    fn memory_mib(&self) -> (f64, f64) {
        let Some(pid) = self.child.as_ref().and_then(|c| c.id()) else {
            return (0.0, 0.0);
        };
        memory_of(&pid.to_string())
    }
}

/// (peak, current) resident memory of a process (`self` or a pid) in MiB, from `/proc`.
fn memory_of(pid: &str) -> (f64, f64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(0.0, |kib| kib / 1024.0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// CPU seconds (user and system) spent so far by this process's threads named `name`, from `/proc` (whose
/// clock ticks are a hundredth of a second on Linux).
fn thread_cpu_secs(name: &str) -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    let ticks: u64 = tasks
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
        })
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // The fields after the name (which may hold spaces) from the third on: utime and stime are the
            // 14th and 15th.
            let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split(' ').collect();
            Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
        })
        .sum();
    ticks as f64 / 100.0
}

/// A minimal HTTP/1.1 keep-alive client, so that the load generator spends as little of the machine as it can.
struct RawConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl RawConn {
    async fn connect(host: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(host).await?;
        stream.set_nodelay(true)?;
        Ok(Self {
            stream,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Sends one pre-built request and reads the whole response; returns its status.
    async fn send(&mut self, request: &[u8]) -> anyhow::Result<u16> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(request).await?;
        self.buf.clear();
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end])?;
                let status: u16 = head.split(' ').nth(1).context("status line")?.parse()?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().ok())?
                    })
                    .context("content-length")?;
                while self.buf.len() < end + 4 + len {
                    if self.stream.read_buf(&mut self.buf).await? == 0 {
                        bail!("connection closed mid-response");
                    }
                }
                return Ok(status);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }
}

fn dir_size(p: &Path) -> u64 {
    std::fs::read_dir(p)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Runs of more events than this hold their batch bodies deflated (20 million events take about 18 GB as text)
/// and inflate each just before sending it, outside the timed part of the request.
const HELD_PLAIN_UP_TO: usize = 2_000_000;

/// One batch body of the load, as sent or deflated.
enum Held {
    Plain(Vec<u8>),
    Deflated(Vec<u8>),
}

impl Held {
    fn new(body: Vec<u8>, deflate: bool) -> Self {
        if !deflate {
            return Self::Plain(body);
        }
        use std::io::Write;
        let mut z = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(&body).expect("deflate into memory");
        Self::Deflated(z.finish().expect("deflate into memory"))
    }

    fn bytes(&self) -> std::io::Result<std::borrow::Cow<'_, [u8]>> {
        match self {
            Self::Plain(r) => Ok(std::borrow::Cow::Borrowed(r)),
            Self::Deflated(z) => {
                use std::io::Read;
                let mut r = Vec::with_capacity(z.len() * 8);
                flate2::read::DeflateDecoder::new(&z[..]).read_to_end(&mut r)?;
                Ok(std::borrow::Cow::Owned(r))
            }
        }
    }
}

/// `seam bench ingest`.
pub async fn ingest(args: IngestBench) -> anyhow::Result<()> {
    let temp;
    let data = match &args.data {
        Some(d) => d.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().join("data")
        }
    };
    eprintln!(
        "generating {} events for {} people…",
        args.events, args.people
    );
    let start_ms = SystemClock.now_ms() - 30 * 86_400_000;
    let mut shop = shop::Shop::new(args.people, args.seed, start_ms);
    let deflate = args.events > HELD_PLAIN_UP_TO;
    let bodies: Arc<Vec<Held>> = Arc::new(shop::batch_bodies(
        &mut shop,
        args.events,
        args.batch,
        |b| Held::new(b, deflate),
    ));

    let server = match (&args.url, &args.write_key) {
        (Some(url), Some(key)) => ServerProcess {
            child: None,
            base: url.trim_end_matches('/').to_owned(),
            write_key: key.clone(),
            secret_key: None,
        },
        _ => ServerProcess::start(&data).await?,
    };
    if let Some(n) = args.segments {
        let client = reqwest::Client::new();
        let all = seam_audiences::EXAMPLES.iter().chain(shop::SEGMENTS);
        for (name, definition) in all.take(usize::from(n)) {
            post_segment(&client, &server, "/v1/segments", name, definition).await?;
        }
        eprintln!("{n} segments defined");
    }
    let host = server.base.trim_start_matches("http://").to_owned();
    let batches = bodies.len();
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {host}\r\nX-Write-Key: {}\r\n\
         Content-Type: application/json\r\nContent-Length: ",
        server.write_key
    );
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    eprintln!(
        "sending {} batches of {} with {} in flight…",
        batches, args.batch, args.concurrency
    );
    let clock = Stopwatch::start();
    let mut tasks = Vec::new();
    for _ in 0..args.concurrency {
        let (bodies, next, retries, host, head) = (
            bodies.clone(),
            next.clone(),
            retries.clone(),
            host.clone(),
            head.clone(),
        );
        let (rate, batch) = (args.rate, args.batch);
        tasks.push(tokio::spawn(async move {
            let mut conn = RawConn::connect(&host).await?;
            let mut latencies: Vec<u32> = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= bodies.len() {
                    break;
                }
                if let Some(rate) = rate {
                    let due = Duration::from_secs_f64(i as f64 * batch as f64 / rate as f64);
                    let elapsed = clock.elapsed();
                    if due > elapsed {
                        tokio::time::sleep(due - elapsed).await;
                    }
                }
                let body = bodies[i].bytes()?;
                let mut request = format!("{head}{}\r\n\r\n", body.len()).into_bytes();
                request.extend_from_slice(&body);
                loop {
                    let t = Stopwatch::start();
                    let status = conn.send(&request).await?;
                    if status == 503 || status == 429 {
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                    if status != 200 {
                        bail!("batch {i} answered {status}");
                    }
                    latencies.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    break;
                }
            }
            Ok::<_, anyhow::Error>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(batches);
    for t in tasks {
        latencies.extend(t.await??);
    }
    let acked = clock.elapsed();
    eprintln!(
        "all acknowledged after {:.2} s ({:.0} events/s); waiting until applied to profiles…",
        acked.as_secs_f64(),
        args.events as f64 / acked.as_secs_f64()
    );
    let client = reqwest::Client::new();
    wait_applied(&client, &server.base).await?;
    let applied = clock.elapsed();
    let (peak, rss) = server.memory_mib();
    let (mut backfill_secs, mut preview) = (None, None);
    if args.backfill {
        eprintln!("previewing one more segment, within the time budget and exactly…");
        let mut timed = vec![];
        for path in ["/v1/segments/preview", "/v1/segments/preview?exact=true"] {
            let t = Stopwatch::start();
            let p = post_segment(&client, &server, path, "Backfilled", BACKFILL_SEGMENT).await?;
            timed.push((t.elapsed().as_secs_f64(), p));
        }
        let number = |p: &serde_json::Value, field: &str| {
            p[field].as_u64().context("a number in the preview")
        };
        let ((secs, p), (exact_secs, exact)) = (&timed[0], &timed[1]);
        preview = Some(PreviewReport {
            secs: *secs,
            estimate: number(p, "estimate")?,
            complete: p["complete"].as_bool().unwrap_or(false),
            profiles_evaluated: number(p, "profiles_evaluated")?,
            profiles: number(p, "profiles")?,
            exact_secs: *exact_secs,
            exact_count: number(exact, "count")?,
        });
        eprintln!("defining it and waiting for its backfill…");
        let t = Stopwatch::start();
        post_segment(
            &client,
            &server,
            "/v1/segments",
            "Backfilled",
            BACKFILL_SEGMENT,
        )
        .await?;
        wait_applied(&client, &server.base).await?;
        backfill_secs = Some(t.elapsed().as_secs_f64());
    }
    latencies.sort_unstable();
    let report = IngestReport {
        events: args.events,
        batch: args.batch,
        concurrency: args.concurrency,
        target_rate: args.rate,
        people: args.people,
        acked_secs: acked.as_secs_f64(),
        applied_secs: applied.as_secs_f64(),
        acked_events_per_sec: args.events as f64 / acked.as_secs_f64(),
        applied_events_per_sec: args.events as f64 / applied.as_secs_f64(),
        ack_p50_ms: percentile(&latencies, 0.50),
        ack_p90_ms: percentile(&latencies, 0.90),
        ack_p99_ms: percentile(&latencies, 0.99),
        ack_max_ms: percentile(&latencies, 1.0),
        retries_503: retries.load(Ordering::Relaxed),
        server_peak_rss_mib: peak,
        server_rss_mib: rss,
        data_folder_mib: dir_size(&data) as f64 / 1_048_576.0,
        backfill_secs,
        preview,
    };
    drop(server);
    print_report(&report, args.json)
}

#[allow(clippy::print_stdout)] // the report is the command's output
fn print_report(r: &IngestReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "events             {} in batches of {}, {} in flight, {} people",
        r.events, r.batch, r.concurrency, r.people
    );
    if let Some(rate) = r.target_rate {
        println!("offered load       {rate} events/s");
    }
    println!(
        "durable (acked)    {:.2} s   {:.0} events/s",
        r.acked_secs, r.acked_events_per_sec
    );
    println!(
        "applied to profiles {:.2} s  {:.0} events/s",
        r.applied_secs, r.applied_events_per_sec
    );
    println!(
        "ack latency        p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        r.ack_p50_ms, r.ack_p90_ms, r.ack_p99_ms, r.ack_max_ms
    );
    println!("503 retries        {}", r.retries_503);
    println!(
        "server memory      peak {:.0} MiB, at end {:.0} MiB",
        r.server_peak_rss_mib, r.server_rss_mib
    );
    println!("data folder        {:.0} MiB", r.data_folder_mib);
    if let Some(b) = r.backfill_secs {
        println!(
            "backfill           {b:.2} s for one new segment over the history of {} people ({:.0} people/s)",
            r.people,
            r.people as f64 / b
        );
    }
    if let Some(p) = &r.preview {
        let how = match p.complete {
            true => "exact".to_owned(),
            false => format!("estimated from {}", p.profiles_evaluated),
        };
        println!(
            "preview            {:.2} s for the same segment before it was saved: {} members ({how} of {} profiles); exact in {:.2} s: {}",
            p.secs, p.estimate, p.profiles, p.exact_secs, p.exact_count
        );
    }
    Ok(())
}

//! The command line.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Seam: one customer platform for every channel a shop meets its customers in.
///
/// Configuration comes in layers: built-in defaults, then `seam.toml` (or the file given by --config), then
/// SEAM_* environment variables (SEAM_DATA, SEAM_DEFAULT_REGION, SEAM_SERVER__LISTEN, …), then flags.
#[derive(Debug, Parser)]
#[command(name = "seam", version, propagate_version = true)]
pub struct Cli {
    /// Configuration file (default: ./seam.toml when it exists).
    #[arg(long, global = true, env = "SEAM_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the data folder and a default workspace, and print its write key and secret key.
    Init {
        #[command(flatten)]
        data: DataArg,
        /// Print the keys as JSON: {"workspace", "write_key", "secret_key"}.
        #[arg(long)]
        json: bool,
    },
    /// Run the server (initialising the data folder on first start).
    Serve {
        #[command(flatten)]
        data: DataArg,
        /// Address to listen on (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Replay the event log into fresh projections (profiles, identities, timelines).
    Rebuild {
        #[command(flatten)]
        data: DataArg,
    },
    /// Run a scripted scenario (profiles, events at virtual times, journeys, templates) on a virtual clock and
    /// print the timeline of decisions and messages. Examples: scenarios/*.yaml; format: docs/journeys.md.
    Simulate {
        /// The scenario file (YAML or JSON).
        scenario: PathBuf,
        /// Print the report as JSON: {"timeline", "messages", "stats"}.
        #[arg(long)]
        json: bool,
    },
    /// Benchmarks that drive a real server with generated shop traffic.
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Debug, Args)]
pub struct DataArg {
    /// Data folder (default ./seam-data).
    #[arg(long)]
    pub data: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Ingest throughput and acknowledgement latency: HTTP batches to durable events applied to profiles.
    Ingest(IngestBench),
    /// Journey throughput on the store: runs started by events, then timers firing and sending, on a
    /// virtual clock.
    Journeys(JourneysBench),
    /// From an event's acknowledgement to the `segment_entered` it causes, at a steady rate on the real clock.
    Segments(SegmentsBench),
}

#[derive(Debug, Args, Clone)]
pub struct SegmentsBench {
    /// People per second who sign up (each sign-up puts them in the measured segment).
    #[arg(long, default_value_t = 1_000, value_parser = at_least_one)]
    pub rate: usize,
    /// How long the load is offered, in seconds.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub secs: usize,
    /// Segments active, the measured one included (the others are those of `bench ingest --segments`, every
    /// person evaluated against each): 1 to 20.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=20))]
    pub segments: u16,
    /// Run on this data folder (kept afterwards) rather than a fresh temporary one. When it holds segments
    /// already (left by `bench ingest --segments 20 --data DIR`, say), those stay active, only the measured
    /// segment is added (and backfilled before the load starts) and `--segments` is not used.
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct JourneysBench {
    /// People, each with one run waiting on a timer.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    pub people: usize,
    /// For the latency phase: people per second who order (each order is sent a confirmation at once), on the
    /// real clock, for `latency_secs`.
    #[arg(long, default_value_t = 1_000, value_parser = at_least_one)]
    pub latency_rate: usize,
    /// How long the latency phase offers its load, in seconds.
    #[arg(long, default_value_t = 10, value_parser = at_least_one)]
    pub latency_secs: usize,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args, Clone)]
pub struct IngestBench {
    /// Events to send.
    #[arg(long, default_value_t = 1_000_000, value_parser = at_least_one)]
    pub events: usize,
    /// Events per HTTP batch.
    #[arg(long, default_value_t = 100, value_parser = at_least_one)]
    pub batch: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16, value_parser = at_least_one)]
    pub concurrency: usize,
    /// Send at this many events per second instead of as fast as possible (for latency at a given load).
    #[arg(long, value_parser = at_least_one)]
    pub rate: Option<usize>,
    /// People in the generated shop.
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    pub people: usize,
    /// Seed of the traffic generator.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Data folder for the server under test (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Drive an already running server at this base URL instead of starting one (memory is then not reported).
    #[arg(long, requires = "write_key")]
    pub url: Option<String>,
    /// The write key for --url.
    #[arg(long)]
    pub write_key: Option<String>,
    /// Define this many segments before sending (Seam's three examples first, then the shop's usual ones; at
    /// most 20), so that membership is kept current during ingest. Without a number: the three examples.
    #[arg(long, conflicts_with = "url", num_args = 0..=1, default_missing_value = "3",
          value_parser = clap::value_parser!(u16).range(1..=20))]
    pub segments: Option<u16>,
    /// After everything is applied, preview one more segment (within the preview's time budget, then exactly),
    /// then define it and time its backfill: every person evaluated against it over their whole history.
    #[arg(long, conflicts_with = "url")]
    pub backfill: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A count that must be at least 1 (people, events, a rate, seconds).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

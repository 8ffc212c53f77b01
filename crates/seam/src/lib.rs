//! The `seam` command's parts. `main.rs` only parses the command line and calls [`commands::run`].
//!
//! - [`cli`]: the command line (clap).
//! - [`config`]: configuration layers (defaults, `seam.toml`, `SEAM_*`, flags).
//! - [`commands`]: `init`, `serve`, `rebuild`, wiring storage and the server.
//! - [`bench`]: `seam bench …`, and [`bench::shop`], the generator of realistic shop traffic that knows the true
//!   person behind every identifier (used by benchmarks and tests).

pub mod bench;
pub mod cli;
pub mod commands;
pub mod config;

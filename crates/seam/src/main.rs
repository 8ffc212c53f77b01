//! The `seam` command: parses the command line and runs it.

use clap::Parser;

// The allocator matters for a server that parses JSON all day: mimalloc is measurably faster than glibc's here
// (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    match seam::commands::run(seam::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

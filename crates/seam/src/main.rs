//! The `seam` command: parses the command line and runs it.

use clap::Parser;

fn main() -> std::process::ExitCode {
    match seam::commands::run(seam::cli::Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

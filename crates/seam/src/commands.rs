//! The commands: wiring configuration, storage and the server together.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use seam_core::clock::{Clock, SystemClock};
use seam_store::{Credentials, Store};

use crate::cli::{BenchCommand, Cli, Command, DataArg};
use crate::config::Config;

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let config = Config::load(cli.config.as_deref())?;
    init_logging(&config)?;
    match cli.command {
        Command::Init { data, json } => init(&config, data, json),
        Command::Serve { data, listen } => {
            let mut config = config;
            if let Some(l) = listen {
                config.server.listen = l;
            }
            config.data = data_dir(&config, data);
            runtime()?.block_on(serve(config))
        }
        Command::Rebuild { data } => {
            let dir = data_dir(&config, data);
            let n = seam_store::rebuild(&dir)
                .with_context(|| format!("rebuilding {}", dir.display()))?;
            tracing::info!(events = n, "projections rebuilt from the event log");
            Ok(())
        }
        Command::Simulate { scenario, json } => simulate(&scenario, json),
        Command::Bench(BenchCommand::Ingest(args)) => {
            runtime()?.block_on(crate::bench::ingest(args))
        }
        Command::Bench(BenchCommand::Journeys(args)) => {
            runtime()?.block_on(crate::bench::journeys::run(args))
        }
        Command::Bench(BenchCommand::Segments(args)) => {
            runtime()?.block_on(crate::bench::journeys::segments(args))
        }
    }
}

/// Runs a scenario and writes its report to standard output; a scenario that does not check out is refused
/// with every problem named.
fn simulate(path: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the scenario {}", path.display()))?;
    let report = seam_journeys::simulate::simulate(&text).map_err(|problems| {
        let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
        anyhow::anyhow!(
            "{} is not a valid scenario:\n{}",
            path.display(),
            list.join("\n")
        )
    })?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        write!(out, "{}", report.to_text())?;
    }
    Ok(())
}

fn data_dir(config: &Config, arg: DataArg) -> PathBuf {
    arg.data.unwrap_or_else(|| config.data.clone())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&config.log.level)
        .with_context(|| format!("log.level: {:?} is not a valid filter", config.log.level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = if config.log.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
    result.map_err(|e| anyhow::anyhow!("starting logging: {e}"))
}

/// Writes new credentials to standard output, the one place keys are ever shown.
fn print_credentials(creds: &Credentials, json: bool) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string(creds)?)?;
    } else {
        writeln!(out, "workspace:  {}", creds.workspace)?;
        writeln!(
            out,
            "write key:  {}   (for SDKs: HTTP basic auth user name, X-Write-Key or writeKey)",
            creds.write_key
        )?;
        writeln!(
            out,
            "secret key: {}   (for the profiles API: Authorization: Bearer …)",
            creds.secret_key
        )?;
        writeln!(out, "Keep them: they are shown only once.")?;
    }
    Ok(())
}

fn init(config: &Config, data: DataArg, json: bool) -> anyhow::Result<()> {
    let dir = data_dir(config, data);
    match seam_store::workspace::init_data_dir(&dir, SystemClock.now_ms())
        .with_context(|| format!("initialising {}", dir.display()))?
    {
        Some(creds) => print_credentials(&creds, json),
        None => anyhow::bail!(
            "{} is already initialised; its keys were shown when it was created",
            dir.display()
        ),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let dir = &config.data;
    if let Some(creds) = seam_store::workspace::init_data_dir(dir, clock.now_ms())
        .with_context(|| format!("initialising {}", dir.display()))?
    {
        tracing::info!(data = %dir.display(), "initialised a new data folder with a default workspace");
        print_credentials(&creds, false)?;
    }
    let store = Store::open(dir, config.store_options()?, clock.clone())
        .with_context(|| format!("opening {}", dir.display()))?;
    let rules = config.identifier_rules()?;
    for (ws, _) in seam_store::workspace::list_workspaces(dir)? {
        store.set_identifier_rules(ws, rules.clone())?;
    }
    let listener = tokio::net::TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, data = %dir.display(), "seam is serving");
    let state = seam_server::AppState::new(store.clone(), clock, config.api_settings());
    let dispatch = config.dispatch_settings()?;
    let dispatcher = tokio::spawn(seam_server::dispatch::run(
        state.clone(),
        dispatch,
        std::time::Duration::from_secs(1),
    ));
    seam_server::serve(listener, state, shutdown_signal()).await?;
    dispatcher.abort();
    tracing::info!("shutting down: finishing the writer");
    tokio::task::spawn_blocking(move || store.shutdown()).await?;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}

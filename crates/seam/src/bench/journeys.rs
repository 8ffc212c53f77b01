//! `seam bench journeys`: the journey path of the store, in this process, on a virtual clock.
//!
//! `people` people sign up; an active journey ("wait 1 hour, then an e-mail") starts a run for each, which then
//! waits on its timer. The clock is moved on by the hour and every timer fires: a step each, with its message
//! rendered into the outbox. Reported: runs started per second (event applied → run decided and recorded),
//! timers fired per second (each a step with a send), and the process's peak memory.

use std::sync::Arc;
use std::time::Duration;

use seam_core::clock::{Clock, ManualClock, Stopwatch, SystemClock};
use seam_core::{Event, EventType, Identifier, IdentifierType};
use seam_store::segments::DefinitionKind;
use seam_store::{LogRow, Store, StoreOptions, WorkspaceKey};
use serde::Serialize;
use serde_json::json;

use crate::cli::JourneysBench;

#[derive(Debug, Serialize)]
pub struct JourneysReport {
    pub people: usize,
    /// Seconds to apply the sign-ups and start (and record) a run for each.
    pub start_secs: f64,
    pub runs_started_per_sec: f64,
    /// Runs waiting on a timer once they started.
    pub pending_timers: u64,
    /// Seconds for every timer to fire, each a step that renders and records a message.
    pub fire_secs: f64,
    pub timers_fired_per_sec: f64,
    pub messages: usize,
    pub peak_rss_mib: f64,
    pub data_folder_mib: f64,
}

fn event(kind: EventType, id: String, user: usize, at: i64) -> LogRow {
    let mut e = Event::system(id, kind, at, Default::default());
    e.identifiers = vec![
        Identifier::new(
            IdentifierType::builtin(IdentifierType::USER_ID),
            format!("u{user}"),
        ),
        Identifier::new(
            IdentifierType::builtin(IdentifierType::EMAIL),
            format!("u{user}@example.com"),
        ),
    ];
    if kind == EventType::Track {
        e.event = Some("Signed Up".into());
    } else {
        e.traits = json!({"first_name": "Anna", "email": format!("u{user}@example.com"), "consent": {"email": true}})
            .as_object()
            .cloned()
            .unwrap_or_default();
    }
    let body = serde_json::to_string(&e).expect("an event serialises");
    LogRow::new(e, body)
}

/// `seam bench journeys`.
pub async fn run(args: JourneysBench) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("data");
    let t0 = SystemClock.now_ms();
    seam_store::workspace::init_data_dir(&data, t0)?;
    let clock = ManualClock::new(t0);
    let store = Store::open(&data, StoreOptions::default(), Arc::new(clock.clone()))?;
    let ws = WorkspaceKey(1);
    let template = json!({"id": "welcome", "name": "welcome", "variants": {"email": {
        "subject": "Welcome, {{ profile.traits.first_name | default: 'friend' }}", "body": "Hello."}}});
    store
        .define(
            ws,
            DefinitionKind::Template,
            "welcome",
            "welcome",
            &template.to_string(),
            t0,
        )
        .await?;
    let journey = json!({"id": "welcome", "trigger": {"event": "Signed Up"}, "start": "wait", "nodes": {
        "wait": {"type": "wait", "for": "1 hour", "next": "mail"},
        "mail": {"type": "send", "channel": "email", "template": "welcome"}}});
    store
        .define(
            ws,
            DefinitionKind::Journey,
            "welcome",
            "welcome",
            &journey.to_string(),
            t0,
        )
        .await?;
    store
        .set_journey_status(ws, "welcome", "active", t0)
        .await?;

    eprintln!("{} people sign up…", args.people);
    let watch = Stopwatch::start();
    for chunk in (0..args.people).collect::<Vec<_>>().chunks(1_000) {
        let mut rows = Vec::with_capacity(chunk.len() * 2);
        for &u in chunk {
            rows.push(event(EventType::Identify, format!("i{u}"), u, t0));
            rows.push(event(EventType::Track, format!("t{u}"), u, t0));
        }
        store.append(ws, rows).await?;
    }
    store.caught_up().await;
    let start_secs = watch.elapsed().as_secs_f64();
    let pending_timers = store.journey_stats(ws, "welcome")?["waiting"]
        .as_u64()
        .unwrap_or(0);

    eprintln!("an hour later: {pending_timers} timers fire…");
    let watch = Stopwatch::start();
    clock.advance(Duration::from_secs(3_600));
    store.caught_up().await;
    let fire_secs = watch.elapsed().as_secs_f64();
    let messages = store
        .messages(ws, Some("welcome"), None, None, usize::MAX >> 1)?
        .len();
    store.shutdown();
    let report = JourneysReport {
        people: args.people,
        start_secs,
        runs_started_per_sec: args.people as f64 / start_secs,
        pending_timers,
        fire_secs,
        timers_fired_per_sec: pending_timers as f64 / fire_secs,
        messages,
        peak_rss_mib: super::memory_of("self").0,
        data_folder_mib: super::dir_size(&data) as f64 / 1_048_576.0,
    };
    print_report(&report, args.json)
}

#[allow(clippy::print_stdout)] // the report is the command's output
fn print_report(r: &JourneysReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!("people             {}", r.people);
    println!(
        "runs started       {:.2} s   {:.0} runs/s (sign-up applied, run decided and recorded)",
        r.start_secs, r.runs_started_per_sec
    );
    println!(
        "timers fired       {} in {:.2} s   {:.0} timers/s (each a step that sends)",
        r.pending_timers, r.fire_secs, r.timers_fired_per_sec
    );
    println!("messages           {}", r.messages);
    println!("memory             peak {:.0} MiB", r.peak_rss_mib);
    println!("data folder        {:.0} MiB", r.data_folder_mib);
    Ok(())
}

//! `seam bench journeys`: the journey path of the store, in this process, on a virtual clock.
//!
//! `people` people sign up; an active journey ("wait 1 hour, then an e-mail") starts a run for each, which then
//! waits on its timer. The clock is moved on by the hour and every timer fires: a step each, with its message
//! rendered into the outbox. Reported: runs started per second (event applied → run decided and recorded),
//! timers fired per second (each a step with a send), and the process's peak memory. Then, on the real clock,
//! people order at a steady rate and a journey confirms each at once: the time from an order's
//! acknowledgement to the decision that sends its confirmation.

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
    /// The process's resident memory while those timers wait (every person's profile, run and timer stored).
    pub rss_pending_mib: f64,
    /// Seconds for every timer to fire, each a step that renders and records a message.
    pub fire_secs: f64,
    pub timers_fired_per_sec: f64,
    /// CPU time of the projector's thread while the timers fire, per timer: steadier than the rate on a shared
    /// machine.
    pub projector_cpu_us_per_timer: f64,
    pub messages: usize,
    /// Latency phase: people per second offered, and from the acknowledgement of an order to the decision
    /// that sends its confirmation (the start of the projector pass that made it).
    pub latency_rate: usize,
    pub decision_p50_ms: f64,
    pub decision_p99_ms: f64,
    pub decision_max_ms: f64,
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

/// Saves a template and a journey, both named `id`, and activates the journey.
async fn install(
    store: &Store,
    ws: WorkspaceKey,
    id: &str,
    template: &serde_json::Value,
    journey: &serde_json::Value,
    at: i64,
) -> anyhow::Result<()> {
    let kinds = [
        (DefinitionKind::Template, template),
        (DefinitionKind::Journey, journey),
    ];
    for (kind, definition) in kinds {
        store
            .define(ws, kind, id, id, &definition.to_string(), at)
            .await?;
    }
    store.set_journey_status(ws, id, "active", at).await?;
    Ok(())
}

/// On the real clock: `latency_rate` people a second order, and an active journey sends each a confirmation at
/// once. Returns (p50, p99, max) in ms from each order's acknowledgement to the decision that sends it.
async fn latency(args: &JourneysBench) -> anyhow::Result<(f64, f64, f64)> {
    let temp = tempfile::tempdir()?;
    let data = temp.path().join("data");
    let clock = SystemClock;
    let t0 = clock.now_ms();
    seam_store::workspace::init_data_dir(&data, t0)?;
    let store = Store::open(&data, StoreOptions::default(), Arc::new(SystemClock))?;
    let ws = WorkspaceKey(1);
    let template = json!({"id": "confirm", "name": "confirm", "variants": {"email": {"subject": "Order received", "body": "Thank you."}}});
    let journey = json!({"id": "confirm", "trigger": {"event": "Signed Up"}, "start": "mail", "nodes": {
        "mail": {"type": "send", "channel": "email", "template": "confirm", "category": "transactional"}}});
    install(&store, ws, "confirm", &template, &journey, t0).await?;
    let total = args.latency_rate * args.latency_secs;
    let acked = offer(&store, ws, args.latency_rate, args.latency_secs).await?;
    let ms: Vec<i64> = store
        .messages(ws, Some("confirm"), None, None, total + 1)?
        .iter()
        .filter_map(|m| {
            let u: usize = m
                .address
                .strip_prefix("email:u")?
                .strip_suffix("@example.com")?
                .parse()
                .ok()?;
            let decided = seam_core::clock::parse_rfc3339(&m.created_at)?;
            Some((decided - acked[u]).max(0))
        })
        .collect();
    store.shutdown();
    if ms.len() != total {
        anyhow::bail!("{} of {total} confirmations were decided", ms.len());
    }
    Ok(percentiles(ms))
}

/// (p50, p99, max) of latencies in ms.
fn percentiles(mut ms: Vec<i64>) -> (f64, f64, f64) {
    ms.sort_unstable();
    let at = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize] as f64;
    (at(0.5), at(0.99), *ms.last().unwrap_or(&0) as f64)
}

/// `rate` people a second identify and sign up, for `secs` seconds, in batches every 10 ms. Returns each
/// person's acknowledgement time (after waiting until everything is applied and decided).
async fn offer(
    store: &Store,
    ws: WorkspaceKey,
    rate: usize,
    secs: usize,
) -> anyhow::Result<Vec<i64>> {
    eprintln!("{rate} people a second for {secs} s…");
    let clock = SystemClock;
    let total = rate * secs;
    let per_tick = (rate / 100).max(1);
    let mut acked = vec![0i64; total];
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    let mut next = 0;
    while next < total {
        tick.tick().await;
        let end = (next + per_tick).min(total);
        let rows = (next..end)
            .flat_map(|u| {
                let at = clock.now_ms();
                [
                    event(EventType::Identify, format!("i{u}"), u, at),
                    event(EventType::Track, format!("t{u}"), u, at),
                ]
            })
            .collect();
        store.append(ws, rows).await?;
        let at = clock.now_ms();
        acked[next..end].iter_mut().for_each(|a| *a = at);
        next = end;
    }
    store.caught_up().await;
    Ok(acked)
}

#[derive(Debug, Serialize)]
pub struct SegmentsReport {
    pub rate: usize,
    pub people: usize,
    pub segments: usize,
    pub entered_p50_ms: f64,
    pub entered_p99_ms: f64,
    pub entered_max_ms: f64,
}

/// The segment whose entries `seam bench segments` times.
const MEASURED: &str = "seg_new";

/// `seam bench segments`: `rate` people a second sign up (identify + a tracked event), and a segment of those
/// who signed up in the last day takes each in. Measured from each acknowledgement to the membership's
/// decision time (read once the projector transaction holding the events has applied them, or at the start of
/// the decision pass for people queued behind a backlog). With `--data` on a folder that holds segments, those
/// stay active and the measured one is added and backfilled first.
pub async fn segments(args: crate::cli::SegmentsBench) -> anyhow::Result<()> {
    let temp = tempfile::tempdir()?;
    let data = match &args.data {
        Some(d) => d.clone(),
        None => temp.path().join("data"),
    };
    let t0 = SystemClock.now_ms();
    seam_store::workspace::init_data_dir(&data, t0)?;
    let store = Store::open(&data, StoreOptions::default(), Arc::new(SystemClock))?;
    let ws = WorkspaceKey(1);
    let existing = store.definitions(ws, DefinitionKind::Segment)?.len();
    let first = seam_store::ProfileRef::Identifier(Identifier::new(
        IdentifierType::builtin(IdentifierType::USER_ID),
        "u0".to_owned(),
    ));
    if store.resolve(ws, &first)?.is_some() {
        anyhow::bail!(
            "{} holds the people of an earlier `bench segments` run; measure on a folder without them",
            data.display()
        );
    }
    let definition = r#"count of "Signed Up" in last 1 days >= 1"#;
    if existing > 0 {
        eprintln!("backfilling the measured segment over the folder's profiles…");
    }
    let backfill = Stopwatch::start();
    // Returns once the definition is applied and every profile evaluated against it.
    store
        .define(ws, DefinitionKind::Segment, MEASURED, "New", definition, t0)
        .await?;
    if existing > 0 {
        let (profiles, _) = store.evaluation_progress(ws)?;
        eprintln!(
            "backfilled over {profiles} profiles in {:.1} s",
            backfill.elapsed().as_secs_f64()
        );
    }
    let others = seam_audiences::EXAMPLES.iter().chain(super::shop::SEGMENTS);
    let more = if existing == 0 {
        usize::from(args.segments) - 1
    } else {
        0
    };
    for (i, (name, definition)) in others.take(more).enumerate() {
        let id = format!("seg_other_{i}");
        store
            .define(ws, DefinitionKind::Segment, &id, name, definition, t0)
            .await?;
    }
    let segments = store.definitions(ws, DefinitionKind::Segment)?.len();
    let acked = offer(&store, ws, args.rate, args.secs).await?;
    let mut ms = Vec::with_capacity(acked.len());
    for (u, ack) in acked.iter().enumerate() {
        let r = seam_store::ProfileRef::Identifier(Identifier::new(
            IdentifierType::builtin(IdentifierType::USER_ID),
            format!("u{u}"),
        ));
        let Some(id) = store.resolve(ws, &r)? else {
            continue;
        };
        let memberships = store.memberships_of(ws, &id)?;
        if let Some((_, since)) = memberships
            .into_iter()
            .find(|(segment, _)| segment == MEASURED)
        {
            if let Some(since) = seam_core::clock::parse_rfc3339(&since) {
                ms.push((since - ack).max(0));
            }
        }
    }
    store.shutdown();
    if ms.len() != acked.len() {
        anyhow::bail!("{} of {} people entered the segment", ms.len(), acked.len());
    }
    let (p50, p99, max) = percentiles(ms);
    let r = SegmentsReport {
        rate: args.rate,
        segments,
        people: acked.len(),
        entered_p50_ms: p50,
        entered_p99_ms: p99,
        entered_max_ms: max,
    };
    print_segments(&r, args.json)
}

#[allow(clippy::print_stdout)] // the report is the command's output
fn print_segments(r: &SegmentsReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(r)?);
        return Ok(());
    }
    println!(
        "ack → segment entered  p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} people/s, {} people, {} segments, real clock)",
        r.entered_p50_ms, r.entered_p99_ms, r.entered_max_ms, r.rate, r.people, r.segments
    );
    Ok(())
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
    let journey = json!({"id": "welcome", "trigger": {"event": "Signed Up"}, "start": "wait", "nodes": {
        "wait": {"type": "wait", "for": "1 hour", "next": "mail"},
        "mail": {"type": "send", "channel": "email", "template": "welcome"}}});
    install(&store, ws, "welcome", &template, &journey, t0).await?;

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
    let rss_pending_mib = super::memory_of("self").1;

    eprintln!("an hour later: {pending_timers} timers fire…");
    let watch = Stopwatch::start();
    let cpu_before = super::thread_cpu_secs(seam_store::PROJECTOR_THREAD);
    clock.advance(Duration::from_secs(3_600));
    store.caught_up().await;
    let fire_secs = watch.elapsed().as_secs_f64();
    let fire_cpu = super::thread_cpu_secs(seam_store::PROJECTOR_THREAD) - cpu_before;
    // Counted by the journey's statistics: listing a million messages would measure the listing.
    let messages = store.journey_stats(ws, "welcome")?["nodes"]["mail"]["sent"]
        .as_u64()
        .unwrap_or(0) as usize;
    store.shutdown();
    let data_folder_mib = super::dir_size(&data) as f64 / 1_048_576.0;
    let (p50, p99, max) = latency(&args).await?;
    let report = JourneysReport {
        people: args.people,
        start_secs,
        runs_started_per_sec: args.people as f64 / start_secs,
        pending_timers,
        rss_pending_mib,
        fire_secs,
        timers_fired_per_sec: pending_timers as f64 / fire_secs,
        projector_cpu_us_per_timer: fire_cpu * 1e6 / pending_timers.max(1) as f64,
        messages,
        latency_rate: args.latency_rate,
        decision_p50_ms: p50,
        decision_p99_ms: p99,
        decision_max_ms: max,
        peak_rss_mib: super::memory_of("self").0,
        data_folder_mib,
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
    println!(
        "projector CPU      {:.1} µs a timer (its thread's CPU time while they fire)",
        r.projector_cpu_us_per_timer
    );
    println!("messages           {}", r.messages);
    println!(
        "ack → send decision p50 {:.0} ms  p99 {:.0} ms  max {:.0} ms  ({} orders/s, real clock)",
        r.decision_p50_ms, r.decision_p99_ms, r.decision_max_ms, r.latency_rate
    );
    println!(
        "memory             {:.0} MiB with the timers pending, peak {:.0} MiB",
        r.rss_pending_mib, r.peak_rss_mib
    );
    println!("data folder        {:.0} MiB", r.data_folder_mib);
    Ok(())
}

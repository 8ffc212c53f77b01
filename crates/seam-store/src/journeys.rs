//! Journey runs in the server: the projector's third phase.
//!
//! Applying an event of a person queues it in `pending_journey_events` (when the workspace has an active
//! journey); here each is shown to the person's runs (goals, awaited events, message outcomes) and to the
//! triggers of active journeys, due run timers fire, and due campaigns start their runs. The machine itself is
//! `seam_journeys::run`. Every step is decided once: the run's new state, the messages it sends (rendered,
//! keyed by run, step and channel) and what it did are one `journey_step` event, written to the outbox and applied
//! to `journey_runs`, `messages` and `journey_stats` in the same transaction. When a `journey_step` comes back
//! through the log it is only confirmed; in a rebuild it is applied from the log as recorded, so the runs come
//! back as they were decided.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use jiff::tz::TimeZone;
use rusqlite::{params, Connection, OptionalExtension};
use seam_audiences::ast::Expr;
use seam_audiences::PersonEvent;
use seam_core::{Event, EventType, Identifier, Millis, ProfileId};
use seam_journeys::definition::{self, Journey, JourneySpec, Trigger};
use seam_journeys::governance::{self, Clearance, Facts, Policy, Request};
use seam_journeys::run::{self, Effect, Env, Run, TriggerEvent};
use seam_journeys::template::{self, Template, TemplateSpec};
use seam_journeys::{local, Category, Channel};
use serde_json::{json, Map, Value};

use crate::decide::Decided;
use crate::outbox::{properties, Emitted};
use crate::process::text;
use crate::segments::{person_profile, track_events, PersonData};
use crate::{StoreError, WorkspaceKey};

/// How far back sent messages count for frequency caps.
const CAP_HORIZON: Millis = 90 * 86_400_000;

/// The delivery rules every journey obeys, and the time zone of people without one.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub policy: Policy,
    pub zone: TimeZone,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            policy: Policy {
                bought_window: 7 * 86_400_000,
                ..Policy::default()
            },
            zone: TimeZone::UTC,
        }
    }
}

fn compile(definition: &str, version: u32) -> Option<Journey> {
    let spec: JourneySpec = serde_json::from_str(definition).ok()?;
    match definition::validate(&spec, version, &definition::Trusted) {
        Ok(j) => Some(j),
        Err(problems) => {
            tracing::error!(journey = %spec.id, problems = problems.len(), "a stored journey does not check; skipped");
            None
        }
    }
}

/// A workspace's journeys and templates.
struct Defs {
    /// Current versions, with their status.
    current: Vec<(Arc<Journey>, String)>,
    /// Every version runs were started on, loaded when needed.
    versions: HashMap<(String, u32), Option<Arc<Journey>>>,
    templates: HashMap<String, Template>,
}

fn load_defs(conn: &Connection, ws: i64) -> Result<Defs, StoreError> {
    let mut current = vec![];
    let mut stmt = conn.prepare_cached(
        "SELECT definition, version, status FROM journeys WHERE ws = ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([ws], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    for row in rows {
        let (definition, version, status) = row?;
        if let Some(j) = compile(&definition, version as u32) {
            current.push((Arc::new(j), status));
        }
    }
    let mut templates = HashMap::new();
    let mut stmt =
        conn.prepare_cached("SELECT definition, version FROM templates WHERE ws = ?1")?;
    let rows = stmt.query_map([ws], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (definition, version) = row?;
        let Ok(spec) = serde_json::from_str::<TemplateSpec>(&definition) else {
            continue;
        };
        if let Ok(t) = Template::check(spec, version as u32) {
            templates.insert(t.id.clone(), t);
        }
    }
    Ok(Defs {
        current,
        versions: HashMap::new(),
        templates,
    })
}

/// One person as the journeys see them.
struct Who {
    profile: i64,
    /// Traits and identities; the events only once a journey that reads them needs them
    /// (`history_loaded`).
    data: PersonData,
    history_loaded: bool,
    /// Names of the segments the person is in.
    segments: BTreeSet<String>,
    zone: TimeZone,
    runs: Vec<Run>,
}

struct StoreEnv<'a> {
    now: Millis,
    who: &'a Who,
    policy: &'a Policy,
    sent: Vec<(Millis, Channel, String)>,
    bought: Vec<(Millis, String)>,
    suppressed: BTreeSet<String>,
    excluded_by: Option<String>,
}

impl Env for StoreEnv<'_> {
    fn now(&self) -> Millis {
        self.now
    }

    fn zone(&self) -> TimeZone {
        self.who.zone.clone()
    }

    fn holds(&mut self, test: &Expr) -> bool {
        let d = &self.who.data;
        let person = seam_audiences::Person {
            traits: &d.traits,
            identities: &d.identities,
            events: &d.events,
            in_segment: &|s| self.who.segments.contains(s),
        };
        seam_audiences::evaluate(test, &person, self.now)
    }

    fn clear(&mut self, req: &Request<'_>) -> Clearance {
        let facts = Facts {
            identities: &self.who.data.identities,
            traits: &self.who.data.traits,
            suppressed: &self.suppressed,
            sent: &self.sent,
            zone: &self.who.zone,
            bought: &self.bought,
            excluded_by: self.excluded_by.as_deref(),
        };
        let c = governance::clear(self.policy, &facts, req, self.now);
        if matches!(c, Clearance::Send { .. }) && req.category == Category::Marketing {
            self.sent.push((self.now, req.channel, req.key.to_owned()));
        }
        c
    }
}

struct Decider<'t> {
    tx: &'t Connection,
    now: Millis,
    delivery: &'t Delivery,
    defs: HashMap<i64, Defs>,
    emitted: Vec<Emitted>,
    decisions: i64,
    /// Statistics counted by this pass, written once at its end.
    counts: Counts,
}

/// Runs up to `limit` due timers and queued events at `now`.
pub(crate) fn decide(
    conn: &mut Connection,
    now: Millis,
    limit: usize,
    delivery: &Delivery,
) -> Result<Decided, StoreError> {
    // Most passes have nothing for the journeys: find that out without a write transaction.
    let work: bool = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM pending_journey_events)
                 OR EXISTS (SELECT 1 FROM journey_runs WHERE wake_at <= ?1)
                 OR EXISTS (SELECT 1 FROM journey_schedules s JOIN journeys j ON j.ws = s.ws AND j.id = s.journey
                            WHERE j.status = 'active' AND s.next_at <= ?1)
                 OR EXISTS (SELECT 1 FROM pending_date_plans)
                 OR EXISTS (SELECT 1 FROM journey_dates WHERE next_at <= ?1)",
        )?
        .query_row([now], |r| r.get(0))?;
    if !work {
        return Ok(Decided::default());
    }
    let tx = crate::write_projections(conn)?;
    let decisions: i64 = tx
        .prepare_cached("SELECT value FROM meta WHERE key = 'decisions'")?
        .query_row([], |r| r.get(0))?;
    let mut d = Decider {
        tx: &tx,
        now,
        delivery,
        defs: HashMap::new(),
        emitted: vec![],
        decisions,
        counts: Counts::new(),
    };
    // Events first: they happened before this pass, and so before any timer it finds due (a purchase
    // that arrived while a reminder came due ends the run before the reminder).
    let queued: Vec<(i64, i64, i64)> = tx
        .prepare_cached(
            "SELECT seq, ws, profile FROM pending_journey_events ORDER BY seq LIMIT ?1",
        )?
        .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    for (seq, ws, profile) in queued {
        tx.prepare_cached("DELETE FROM pending_journey_events WHERE seq = ?1")?
            .execute([seq])?;
        d.event(seq, ws, profile)?;
    }
    // Timers, campaigns and dates only once every queued event has been shown: in a burst, a purchase still
    // queued ends its run before the reminder's timer fires.
    let events_queued: bool = tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM pending_journey_events)")?
        .query_row([], |r| r.get(0))?;
    if !events_queued {
        let due: Vec<(i64, String, i64)> = tx
            .prepare_cached("SELECT ws, run, profile FROM journey_runs WHERE wake_at <= ?1 ORDER BY wake_at, ws, run LIMIT ?2")?
            .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (ws, run, profile) in due {
            d.timer(ws, &run, profile)?;
        }
        let campaigns: Vec<(i64, String, Millis)> = tx
            .prepare_cached(
                "SELECT s.ws, s.journey, s.next_at FROM journey_schedules s
                 JOIN journeys j ON j.ws = s.ws AND j.id = s.journey
                 WHERE j.status = 'active' AND s.next_at <= ?1",
            )?
            .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<_, _>>()?;
        for (ws, journey, at) in campaigns {
            d.campaign(ws, &journey, at)?;
        }
        let dates: Vec<(i64, String, i64, Millis)> = tx
            .prepare_cached(
                "SELECT ws, journey, profile, next_at FROM journey_dates WHERE next_at <= ?1 ORDER BY next_at LIMIT ?2",
            )?
            .query_map(params![now, limit as i64], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
            .collect::<Result<_, _>>()?;
        for (ws, journey, profile, at) in dates {
            d.date(ws, &journey, profile, at)?;
        }
        let plans: Vec<(i64, i64)> = tx
            .prepare_cached("SELECT ws, profile FROM pending_date_plans LIMIT ?1")?
            .query_map([limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (ws, profile) in plans {
            tx.prepare_cached("DELETE FROM pending_date_plans WHERE ws = ?1 AND profile = ?2")?
                .execute(params![ws, profile])?;
            d.plan_dates(ws, profile, None)?;
        }
    }
    write_counts(&tx, &mut d.counts)?;
    let (emitted, decisions) = (std::mem::take(&mut d.emitted), d.decisions);
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'decisions'")?
        .execute([decisions])?;
    // Counted up to a bound: a pass must not cost more as the backlog grows (a campaign's millions of due
    // timers would otherwise be counted again after every 2,000 of them).
    let remaining: i64 = tx
        .prepare_cached(
            "SELECT (SELECT COUNT(*) FROM (SELECT 1 FROM pending_journey_events LIMIT ?2))
              + (SELECT COUNT(*) FROM (SELECT 1 FROM journey_runs WHERE wake_at <= ?1 LIMIT ?2))
              + (SELECT COUNT(*) FROM (SELECT 1 FROM pending_date_plans LIMIT ?2))
              + (SELECT COUNT(*) FROM (SELECT 1 FROM journey_dates WHERE next_at <= ?1 LIMIT ?2))",
        )?
        .query_row(params![now, crate::decide::COUNTED_UP_TO], |r| r.get(0))?;
    tx.commit()?;
    Ok(Decided {
        emitted,
        remaining,
        ..Decided::default()
    })
}

impl<'t> Decider<'t> {
    fn defs(&mut self, ws: i64) -> Result<&mut Defs, StoreError> {
        if !self.defs.contains_key(&ws) {
            let d = load_defs(self.tx, ws)?;
            self.defs.insert(ws, d);
        }
        Ok(self.defs.get_mut(&ws).expect("loaded above"))
    }

    /// The journey a run started on, at the version it started on.
    fn version(
        &mut self,
        ws: i64,
        id: &str,
        version: u32,
    ) -> Result<Option<Arc<Journey>>, StoreError> {
        let tx = self.tx;
        let defs = self.defs(ws)?;
        if let Some(j) = defs
            .current
            .iter()
            .find(|(j, _)| j.id == id && j.version == version)
        {
            return Ok(Some(j.0.clone()));
        }
        let key = (id.to_owned(), version);
        if !defs.versions.contains_key(&key) {
            let definition: Option<String> = tx
                .prepare_cached("SELECT definition FROM journey_versions WHERE ws = ?1 AND id = ?2 AND version = ?3")?
                .query_row(params![ws, id, version], |r| r.get(0))
                .optional()?;
            defs.versions.insert(
                key.clone(),
                definition.and_then(|d| compile(&d, version)).map(Arc::new),
            );
        }
        Ok(defs.versions[&key].clone())
    }

    fn who(&self, ws: i64, profile: i64) -> Result<Option<Who>, StoreError> {
        let live: Option<i64> = self
            .tx
            .prepare_cached("SELECT COALESCE(merged_into, profile) FROM profiles WHERE ws = ?1 AND profile = ?2")?
            .query_row(params![ws, profile], |r| r.get(0))
            .optional()?;
        let Some(profile) = live else { return Ok(None) };
        let data = person_profile(self.tx, "main", WorkspaceKey(ws), profile)?;
        let segments = self
            .tx
            .prepare_cached(
                "SELECT s.name FROM memberships m JOIN segments s ON s.ws = m.ws AND s.id = m.segment
                 WHERE m.ws = ?1 AND m.profile = ?2",
            )?
            .query_map(params![ws, profile], |r| r.get(0))?
            .collect::<Result<_, _>>()?;
        let zone = data
            .traits
            .get("timezone")
            .and_then(Value::as_str)
            .and_then(|z| local::zone(z).ok())
            .unwrap_or_else(|| self.delivery.zone.clone());
        let mut runs = vec![];
        let mut stmt = self
            .tx
            // The index is named: without statistics the planner prefers walking every run of the workspace.
            .prepare_cached(
                "SELECT state FROM journey_runs INDEXED BY journey_runs_by_profile
                 WHERE ws = ?1 AND profile = ?2 ORDER BY entered_at, run",
            )?;
        for state in stmt.query_map(params![ws, profile], |r| r.get::<_, String>(0))? {
            runs.push(serde_json::from_str(&state?)?);
        }
        Ok(Some(Who {
            profile,
            data,
            history_loaded: false,
            segments,
            zone,
            runs,
        }))
    }

    fn env<'w>(
        &mut self,
        ws: i64,
        who: &'w mut Who,
        j: &Journey,
    ) -> Result<StoreEnv<'w>, StoreError>
    where
        't: 'w,
    {
        if j.reads_history && !who.history_loaded {
            who.data.events =
                track_events(self.tx, "main", "log", WorkspaceKey(ws), who.profile, 0)?
                    .into_iter()
                    .map(|(_, e)| e)
                    .collect();
            who.history_loaded = true;
        }
        let who: &'w Who = who;
        let delivery: &'t Delivery = self.delivery;
        let mut sent = vec![];
        let mut stmt = self.tx.prepare_cached(
            "SELECT created_at, channel, key FROM messages
             WHERE ws = ?1 AND profile = ?2 AND category = 'marketing' AND created_at > ?3",
        )?;
        for row in stmt.query_map(params![ws, who.profile, self.now - CAP_HORIZON], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
            ))
        })? {
            let (at, channel, key) = row?;
            if let Some(c) = Channel::parse(&channel) {
                sent.push((at, c, key));
            }
        }
        let bought = who
            .data
            .events
            .iter()
            .filter(|e| e.name == "Order Completed")
            .flat_map(|e| {
                governance::bought_items(&e.properties)
                    .into_iter()
                    .map(move |i| (e.at, i))
            })
            .collect();
        let others = self.others(ws, who, j)?;
        let excluded_by = run::excluder(j, others.iter().map(|(j, r)| (&**j, *r)));
        let suppressed = crate::deliveries::suppressed_of(
            self.tx,
            ws,
            who.data.identities.iter().map(|(t, v)| format!("{t}:{v}")),
        )?;
        Ok(StoreEnv {
            now: self.now,
            who,
            policy: &delivery.policy,
            sent,
            bought,
            suppressed,
            excluded_by,
        })
    }

    /// The person's runs of other journeys, with those journeys (current versions).
    fn others<'w>(
        &mut self,
        ws: i64,
        who: &'w Who,
        j: &Journey,
    ) -> Result<Vec<(Arc<Journey>, &'w Run)>, StoreError> {
        let defs = self.defs(ws)?;
        Ok(who
            .runs
            .iter()
            .filter(|r| r.journey != j.id && r.is_active())
            .filter_map(|r| {
                Some((
                    defs.current
                        .iter()
                        .find(|(x, _)| x.id == r.journey)?
                        .0
                        .clone(),
                    r,
                ))
            })
            .collect())
    }

    fn timer(&mut self, ws: i64, run_id: &str, profile: i64) -> Result<(), StoreError> {
        let Some(mut who) = self.who(ws, profile)? else {
            return self.drop_timer(ws, run_id);
        };
        let Some(i) = who.runs.iter().position(|r| r.id == run_id) else {
            return self.drop_timer(ws, run_id);
        };
        let (journey, version) = (who.runs[i].journey.clone(), who.runs[i].version);
        let mut run = who.runs[i].clone();
        let deleted = !self.defs(ws)?.current.iter().any(|(j, _)| j.id == journey);
        let fx = match self.version(ws, &journey, version)?.filter(|_| !deleted) {
            Some(j) => {
                let mut env = self.env(ws, &mut who, &j)?;
                run::on_timer(&j, &mut run, &mut env)
            }
            // The journey was deleted: the run ends.
            None => run::preempt(&mut run, "(deleted)", self.now),
        };
        if fx.is_empty() && run == who.runs[i] {
            return self.drop_timer(ws, run_id);
        }
        who.runs[i] = run;
        self.record(ws, &who, i, fx)
    }

    /// A timer that can no longer fire anything is cleared rather than polled again.
    fn drop_timer(&self, ws: i64, run_id: &str) -> Result<(), StoreError> {
        self.tx
            .prepare_cached("UPDATE journey_runs SET wake_at = NULL WHERE ws = ?1 AND run = ?2")?
            .execute(params![ws, run_id])?;
        Ok(())
    }

    /// A campaign's time: everyone in its segment (or everyone) enters.
    fn campaign(&mut self, ws: i64, journey: &str, at: Millis) -> Result<(), StoreError> {
        let Some(j) = self
            .defs(ws)?
            .current
            .iter()
            .find(|(j, _)| j.id == journey)
            .map(|(j, _)| j.clone())
        else {
            return Ok(());
        };
        let Trigger::Schedule { segment, every, .. } = &j.trigger else {
            // Saved since as another kind of journey: the campaign is over.
            let props = json!({"schedule": {"journey": journey, "next_at": null}});
            return self.emit(ws, props, &format!("{journey}:{at}"));
        };
        let audience: Vec<i64> = match segment {
            Some(name) => self
                .tx
                .prepare_cached(
                    "SELECT m.profile FROM memberships m JOIN segments s ON s.ws = m.ws AND s.id = m.segment
                     WHERE m.ws = ?1 AND s.name = ?2 ORDER BY m.profile",
                )?
                .query_map(params![ws, name], |r| r.get(0))?
                .collect::<Result<_, _>>()?,
            None => self
                .tx
                .prepare_cached("SELECT profile FROM profiles WHERE ws = ?1 AND merged_into IS NULL ORDER BY profile")?
                .query_map([ws], |r| r.get(0))?
                .collect::<Result<_, _>>()?,
        };
        for profile in audience {
            if let Some(mut who) = self.who(ws, profile)? {
                self.enter(ws, &mut who, &j, format!("{}-s{at}-{profile}", j.id), None)?;
            }
        }
        let next = every.filter(|e| *e > 0).map(|e| {
            let mut n = at + e;
            while n <= self.now {
                n += e;
            }
            n
        });
        self.emit(
            ws,
            json!({"schedule": {"journey": journey, "next_at": next}}),
            &format!("{journey}:{at}"),
        )
    }

    /// Plans when the person's date-triggered journeys next fire (all of them, or one after it fired at
    /// `fired`).
    fn plan_dates(
        &mut self,
        ws: i64,
        profile: i64,
        fired: Option<(&str, Millis)>,
    ) -> Result<(), StoreError> {
        let Some(who) = self.who(ws, profile)? else {
            return Ok(());
        };
        let journeys: Vec<Arc<Journey>> = self
            .defs(ws)?
            .current
            .iter()
            .filter(|(j, status)| status == "active" && matches!(j.trigger, Trigger::Date { .. }))
            .filter(|(j, _)| fired.is_none_or(|(id, _)| j.id == id))
            .map(|(j, _)| j.clone())
            .collect();
        for j in journeys {
            // After a firing, from just after it; otherwise from now — or from a date already due and not yet
            // fired, which a new plan must not skip.
            let from = match fired {
                Some((_, at)) => at + 1,
                None => self
                    .tx
                    .prepare_cached(
                        "SELECT next_at FROM journey_dates WHERE ws = ?1 AND journey = ?2 AND profile = ?3",
                    )?
                    .query_row(params![ws, j.id, who.profile], |r| r.get::<_, i64>(0))
                    .optional()?
                    .map_or(self.now, |due| due.min(self.now)),
            };
            match run::next_date(&j, &who.data.traits, &who.zone, from) {
                Some(at) => self
                    .tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO journey_dates (ws, journey, profile, next_at) VALUES (?1, ?2, ?3, ?4)",
                    )?
                    .execute(params![ws, j.id, who.profile, at])?,
                None => self
                    .tx
                    .prepare_cached("DELETE FROM journey_dates WHERE ws = ?1 AND journey = ?2 AND profile = ?3")?
                    .execute(params![ws, j.id, who.profile])?,
            };
        }
        Ok(())
    }

    /// A person's date came: a run starts (under the entry rules), and the next date is planned.
    fn date(&mut self, ws: i64, journey: &str, profile: i64, at: Millis) -> Result<(), StoreError> {
        self.tx
            .prepare_cached(
                "DELETE FROM journey_dates WHERE ws = ?1 AND journey = ?2 AND profile = ?3",
            )?
            .execute(params![ws, journey, profile])?;
        let active = self
            .defs(ws)?
            .current
            .iter()
            .find(|(j, status)| j.id == journey && status == "active")
            .map(|(j, _)| j.clone());
        let (Some(j), Some(mut who)) = (active, self.who(ws, profile)?) else {
            return Ok(());
        };
        let run_id = format!("{journey}-d{at}-{}", who.profile);
        self.enter(ws, &mut who, &j, run_id, None)?;
        self.plan_dates(ws, who.profile, Some((journey, at)))
    }

    /// An event of the person: shown to their runs, then to the triggers of active journeys.
    fn event(&mut self, seq: i64, ws: i64, profile: i64) -> Result<(), StoreError> {
        let body: Option<String> = self
            .tx
            .prepare_cached("SELECT body FROM log.events WHERE seq = ?1")?
            .query_row([seq], |r| r.get(0))
            .optional()?;
        let Some(body) = body else { return Ok(()) };
        let ev: Event = serde_json::from_str(&body)?;
        let Some(mut who) = self.who(ws, profile)? else {
            return Ok(());
        };
        let pe = match ev.kind {
            EventType::Track => PersonEvent {
                name: ev.event.clone().unwrap_or_default(),
                at: ev.timestamp,
                properties: ev.properties.clone(),
            },
            EventType::SegmentEntered | EventType::SegmentExited => PersonEvent {
                name: if ev.kind == EventType::SegmentEntered {
                    "Segment Entered"
                } else {
                    "Segment Exited"
                }
                .into(),
                at: ev.timestamp,
                properties: ev.properties.clone(),
            },
            EventType::JourneyEnter => {
                let id = text(&ev.properties, "journey");
                let active = self
                    .defs(ws)?
                    .current
                    .iter()
                    .find(|(j, s)| j.id == id && s == "active")
                    .map(|(j, _)| j.clone());
                if let Some(j) = active {
                    self.enter(ws, &mut who, &j, format!("{id}-{seq}"), None)?;
                }
                return Ok(());
            }
            _ => return Ok(()),
        };
        for i in 0..who.runs.len() {
            let r = &who.runs[i];
            let journey = r.journey.clone();
            // A deleted journey's runs see no more events; their timers end them.
            if !self.defs(ws)?.current.iter().any(|(j, _)| j.id == journey) {
                continue;
            }
            let Some(j) = self.version(ws, &journey, who.runs[i].version)? else {
                continue;
            };
            let r = &who.runs[i];
            if !r.is_active() && (r.converted || !j.goal_reached(&pe, r.entered_at)) {
                continue;
            }
            let mut run = r.clone();
            let fx = {
                let mut env = self.env(ws, &mut who, &j)?;
                run::on_event(&j, &mut run, &pe, &mut env)
            };
            if !fx.is_empty() || run != who.runs[i] {
                who.runs[i] = run;
                self.record(ws, &who, i, fx)?;
            }
        }
        let triggered: Vec<Arc<Journey>> = self
            .defs(ws)?
            .current
            .iter()
            .filter(|(j, status)| status == "active" && j.triggered_by(&pe))
            .map(|(j, _)| j.clone())
            .collect();
        for j in triggered {
            let trigger = TriggerEvent {
                name: pe.name.clone(),
                at: pe.at,
                properties: pe.properties.clone(),
            };
            self.enter(ws, &mut who, &j, format!("{}-{seq}", j.id), Some(trigger))?;
        }
        Ok(())
    }

    fn enter(
        &mut self,
        ws: i64,
        who: &mut Who,
        j: &Journey,
        run_id: String,
        trigger: Option<TriggerEvent>,
    ) -> Result<(), StoreError> {
        if who.runs.iter().any(|r| r.id == run_id) {
            return Ok(());
        }
        let recent = match j.entry_cap {
            Some((_, per)) => self
                .tx
                .prepare_cached("SELECT COUNT(*) FROM journey_runs WHERE ws = ?1 AND journey = ?2 AND entered_at > ?3")?
                .query_row(params![ws, j.id, self.now - per], |r| r.get::<_, i64>(0))?
                as usize,
            None => 0,
        };
        let own: Vec<&Run> = who.runs.iter().filter(|r| r.journey == j.id).collect();
        let others = self.others(ws, who, j)?;
        let preempt = match run::admit(
            j,
            &own,
            others.iter().map(|(j, r)| (&**j, *r)),
            recent,
            self.now,
        ) {
            Ok(p) => p,
            Err(_) => return Ok(()),
        };
        drop(others);
        for id in preempt {
            if let Some(i) = who.runs.iter().position(|r| r.id == id) {
                let fx = run::preempt(&mut who.runs[i], &j.id, self.now);
                self.record(ws, who, i, fx)?;
            }
        }
        let profile_id = ProfileId::from_seq(who.profile).to_string();
        let (run, fx) = {
            let mut env = self.env(ws, who, j)?;
            run::start(j, run_id, profile_id, trigger, &mut env)
        };
        who.runs.push(run);
        let i = who.runs.len() - 1;
        self.record(ws, who, i, fx)
    }

    /// Decides a step of run `i`: one `journey_step` event with the run's state, its messages and effects.
    fn record(&mut self, ws: i64, who: &Who, i: usize, fx: Vec<Effect>) -> Result<(), StoreError> {
        let run = &who.runs[i];
        let mut messages = vec![];
        let mut effects = vec![];
        for e in &fx {
            match e {
                Effect::Send(m) => {
                    let content = match &m.template {
                        // A webhook carries the run's trigger event; the rest of the context is in the request.
                        None => json!({ "url": m.address, "event": run.trigger }),
                        Some(t) => self.render(ws, who, run, t, m.channel, &m.key),
                    };
                    messages.push(Value::Object(properties([
                        ("key", json!(m.key)),
                        ("node", json!(m.node)),
                        ("channel", json!(m.channel)),
                        ("address", json!(m.address)),
                        ("category", json!(m.category)),
                        ("topic", json!(m.topic)),
                        ("content", content),
                    ])));
                    effects.push(json!({"sent": m.key, "node": m.node, "channel": m.channel}));
                }
                Effect::UpdateTraits(traits) => {
                    effects.push(json!({ "update": traits }));
                    self.update_traits(ws, who, run, traits)?;
                }
                other => effects.push(effect_json(other)),
            }
        }
        let state = serde_json::to_value(run)?;
        let step = Step {
            profile: who.profile,
            run,
            state: &state,
            messages: &messages,
            effects: &effects,
            at: self.now,
        };
        step.apply(self.tx, ws, &mut self.counts)?;
        let props = Value::Object(properties([
            ("run", json!(run.id)),
            ("journey", json!(run.journey)),
            ("version", json!(run.version)),
            ("profile_id", json!(ProfileId::from_seq(who.profile))),
            ("state", state),
            ("effects", Value::Array(effects)),
            ("messages", Value::Array(messages)),
        ]));
        self.append(ws, props, &format!("{}:{}", run.id, run.step))
    }

    /// A decision that is not a run's step (a campaign's next time): applied as the log will apply it.
    fn emit(&mut self, ws: i64, props: Value, what: &str) -> Result<(), StoreError> {
        let event = Event::system(
            String::new(),
            EventType::JourneyStep,
            self.now,
            props.as_object().cloned().unwrap_or_default(),
        );
        apply_step(self.tx, ws, &event, &mut self.counts)?;
        self.append(ws, props, what)
    }

    /// Writes a decided `journey_step` to the outbox, to be appended to the log.
    fn append(&mut self, ws: i64, props: Value, what: &str) -> Result<(), StoreError> {
        self.decisions += 1;
        // Unique across rebuilds too (a rebuilt projection starts counting again, later in time).
        let message_id = format!("$seam:journey_step:{what}:{}:{}", self.now, self.decisions);
        let props = match props {
            Value::Object(m) => m,
            _ => Map::new(),
        };
        let event = Event::system(message_id, EventType::JourneyStep, self.now, props);
        self.emitted.push(Emitted::to_outbox(self.tx, ws, event)?);
        Ok(())
    }

    fn render(
        &mut self,
        ws: i64,
        who: &Who,
        run: &Run,
        template: &str,
        channel: Channel,
        key: &str,
    ) -> Value {
        let Ok(defs) = self.defs(ws) else {
            return json!({ "rendering_error": "the templates could not be read" });
        };
        let Some(t) = defs.templates.get(template) else {
            return json!({ "rendering_error": format!("no template `{template}`") });
        };
        let mut traits = who.data.traits.clone();
        let computed = traits.remove("computed").unwrap_or_else(|| json!({}));
        let event = run.trigger.as_ref().map_or(json!({}), |t| {
            Value::Object(properties([
                ("name", json!(t.name)),
                ("properties", Value::Object(t.properties.clone())),
            ]))
        });
        let ctx = template::context(
            Value::Object(properties([
                ("id", json!(run.profile)),
                ("traits", Value::Object(traits)),
                ("computed", computed),
                ("segments", json!(who.segments)),
            ])),
            event,
            json!({"channel": channel.as_str(), "journey": run.journey, "id": key}),
        );
        match t.render(channel, &ctx) {
            Ok(parts) => json!(parts),
            Err(e) => json!({ "rendering_error": e }),
        }
    }

    /// An `update` node: an identify event of the person with the traits, through the log like any other.
    fn update_traits(
        &mut self,
        ws: i64,
        who: &Who,
        run: &Run,
        traits: &Map<String, Value>,
    ) -> Result<(), StoreError> {
        let Some((kind, value)) = who.data.identities.first() else {
            return Ok(());
        };
        let Ok(kind) = seam_core::IdentifierType::parse(kind) else {
            return Ok(());
        };
        self.decisions += 1;
        let mut event = Event::system(
            format!(
                "$seam:journey_update:{}:{}:{}",
                run.id, run.step, self.decisions
            ),
            EventType::Identify,
            self.now,
            Map::new(),
        );
        event.identifiers = vec![Identifier::new(kind, value.clone())];
        event.traits = traits.clone();
        self.emitted.push(Emitted::to_outbox(self.tx, ws, event)?);
        Ok(())
    }
}

fn effect_json(e: &Effect) -> Value {
    match e {
        Effect::Entered => json!({ "entered": true }),
        Effect::Reached { node } => json!({ "reached": node }),
        Effect::Send(m) => json!({ "sent": m.key, "node": m.node, "channel": m.channel }),
        Effect::Held {
            node,
            channel,
            reason,
            deferred_until,
        } => json!({
            "held": reason.code(), "node": node, "channel": channel, "why": reason.to_string(),
            "until": deferred_until.map(seam_core::clock::format_rfc3339),
        }),
        Effect::UpdateTraits(t) => json!({ "update": t }),
        Effect::Converted => json!({ "converted": true }),
        Effect::Exited(r) => json!({ "exited": r.code() }),
    }
}

/// Statistics counters to add: (workspace, journey, counter) → how many.
pub(crate) type Counts = HashMap<(i64, String, String), i64>;

/// Adds the gathered counts to `journey_stats` and empties them.
pub(crate) fn write_counts(conn: &Connection, counts: &mut Counts) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO journey_stats (ws, journey, counter, n) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (ws, journey, counter) DO UPDATE SET n = n + excluded.n",
    )?;
    for ((ws, journey, counter), n) in counts.drain() {
        stmt.execute(params![ws, journey, counter, n])?;
    }
    Ok(())
}

/// A run's step as the projections take it: from the decision directly, or read back from the log.
struct Step<'a> {
    /// The person now (after any merge since the decision).
    profile: i64,
    run: &'a Run,
    state: &'a Value,
    messages: &'a [Value],
    effects: &'a [Value],
    at: Millis,
}

impl Step<'_> {
    /// The run's row, its messages and their deliveries; its counters go to `counts`.
    fn apply(&self, conn: &Connection, ws: i64, counts: &mut Counts) -> Result<(), StoreError> {
        let (run, profile) = (self.run, self.profile);
        conn.prepare_cached(
            // Only what a step changes is set: the indexes by person and by journey stay untouched (a merge
            // moves runs to the survivor itself).
            "INSERT INTO journey_runs (ws, run, journey, profile, entered_at, active, wake_at, state)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
             ON CONFLICT (ws, run) DO UPDATE SET active = excluded.active, wake_at = excluded.wake_at,
                 state = excluded.state",
        )?
        .execute(params![
            ws,
            run.id,
            run.journey,
            profile,
            run.entered_at,
            run.is_active(),
            run.wake_at(),
            serde_json::to_string(self.state)?
        ])?;
        for m in self.messages {
            let s = |k: &str| m.as_object().map_or("", |m| text(m, k));
            conn.prepare_cached(
                "INSERT OR IGNORE INTO messages (ws, key, run, journey, node, profile, channel, address, category, content, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                ws,
                s("key"),
                run.id,
                run.journey,
                s("node"),
                profile,
                s("channel"),
                s("address"),
                s("category"),
                m.get("content")
                    .map(serde_json::to_string)
                    .transpose()?
                    .unwrap_or_default(),
                self.at
            ])?;
            conn.prepare_cached(
                "INSERT OR IGNORE INTO deliveries (ws, key, status, attempts, next_attempt_at, last_error, updated_at)
                 VALUES (?1, ?2, 'pending', 0, ?3, NULL, ?3)",
            )?
            .execute(params![ws, s("key"), self.at])?;
        }
        for counter in self.effects.iter().filter_map(counter) {
            *counts
                .entry((ws, run.journey.clone(), counter))
                .or_default() += 1;
        }
        Ok(())
    }
}

/// Applies a `journey_step` to the projections: the run, its messages, the statistics (added to `counts`), a
/// campaign's next time. The live decision and a rebuild both come here, so they agree.
pub(crate) fn apply_step(
    conn: &Connection,
    ws: i64,
    event: &Event,
    counts: &mut Counts,
) -> Result<(), StoreError> {
    let p = &event.properties;
    let profile = crate::process::profile_of(p);
    // The person as they are now: a step decided before a merge and replayed after it lands on the survivor,
    // as the merge moved it live.
    let profile = match profile {
        Some(k) => conn
            .prepare_cached("SELECT COALESCE(merged_into, profile) FROM profiles WHERE ws = ?1 AND profile = ?2")?
            .query_row(params![ws, k], |r| r.get::<_, i64>(0))
            .optional()?
            .or(Some(k)),
        None => None,
    };
    if let (Some(state), Some(profile)) = (p.get("state"), profile) {
        let run: Run = serde_json::from_value(state.clone())?;
        let list = |k: &str| {
            p.get(k)
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
        };
        Step {
            profile,
            run: &run,
            state,
            messages: list("messages"),
            effects: list("effects"),
            at: event.timestamp,
        }
        .apply(conn, ws, counts)?;
    }
    if let Some(s) = p.get("schedule") {
        conn.prepare_cached(
            "UPDATE journey_schedules SET next_at = ?3 WHERE ws = ?1 AND journey = ?2",
        )?
        .execute(params![
            ws,
            s.as_object().map_or("", |s| text(s, "journey")),
            s.get("next_at").and_then(Value::as_i64)
        ])?;
    }
    Ok(())
}

/// The statistics counter an effect adds to.
fn counter(e: &Value) -> Option<String> {
    let s = |k: &str| e.get(k).and_then(Value::as_str);
    if e.get("entered").is_some() {
        return Some("entered".into());
    }
    if e.get("converted").is_some() {
        return Some("converted".into());
    }
    if let Some(r) = s("exited") {
        return Some(format!("exited:{r}"));
    }
    if let Some(n) = s("reached") {
        return Some(format!("node:{n}:reached"));
    }
    if e.get("sent").is_some() {
        return Some(format!("node:{}:sent", s("node")?));
    }
    if let Some(code) = s("held") {
        let kind = if e.get("until").is_some_and(|u| !u.is_null()) {
            "deferred"
        } else {
            "held"
        };
        return Some(format!("node:{}:{kind}:{code}", s("node")?));
    }
    None
}

/// When a journey with a schedule is activated, its campaign is due at its `at` — unless it was planned from
/// that `at` already (then a one-off that fired keeps its NULL, a recurring one its next time).
pub(crate) fn schedule_on_activation(
    conn: &Connection,
    ws: i64,
    id: &str,
) -> Result<(), StoreError> {
    let definition: Option<String> = conn
        .prepare_cached("SELECT definition FROM journeys WHERE ws = ?1 AND id = ?2")?
        .query_row(params![ws, id], |r| r.get(0))
        .optional()?;
    let at = definition
        .and_then(|d| serde_json::from_str::<Value>(&d).ok())
        .and_then(|d| {
            d.pointer("/trigger/schedule/at")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .and_then(|at| seam_core::clock::parse_rfc3339(&at));
    if let Some(at) = at {
        conn.prepare_cached(
            "INSERT INTO journey_schedules (ws, journey, next_at, planned_from) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (ws, journey) DO UPDATE SET next_at = excluded.next_at, planned_from = excluded.planned_from
             WHERE journey_schedules.planned_from IS NOT excluded.planned_from",
        )?
        .execute(params![ws, id, at])?;
    }
    Ok(())
}

/// A run as the API shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RunView {
    pub run: String,
    pub journey: String,
    pub version: u32,
    /// `active`, or why it ended (`completed`, `goal`, `holdout`, `preempted`).
    pub status: String,
    /// The node it is at (or ended at).
    pub node: Option<String>,
    /// What it waits for (`time`, `event`, `outcome`) and until when.
    pub waiting: Option<Value>,
    pub entered_at: String,
    pub converted: bool,
    pub messages: Vec<Value>,
}

/// A message of the outbox.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MessageView {
    pub key: String,
    pub run: String,
    pub journey: String,
    pub node: String,
    pub profile_id: ProfileId,
    pub channel: String,
    pub address: String,
    pub category: String,
    pub content: Value,
    pub created_at: String,
    /// With its channel: `pending`, `retry`, `sent`, `dead`.
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
}

impl crate::Store {
    /// The person's runs, newest first.
    pub fn runs_of(
        &self,
        ws: WorkspaceKey,
        profile: &ProfileId,
    ) -> Result<Vec<RunView>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT r.state, v.definition FROM p.journey_runs r INDEXED BY journey_runs_by_profile
                 LEFT JOIN p.journey_versions v ON v.ws = r.ws AND v.id = r.journey
                     AND v.version = json_extract(r.state, '$.version')
                 WHERE r.ws = ?1 AND r.profile = ?2 ORDER BY r.entered_at DESC, r.run DESC",
            )?;
            let rows = stmt.query_map(params![ws.0, crate::process::key(profile)], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })?;
            let mut out = vec![];
            for row in rows {
                let (state, definition) = row?;
                let run: Run = serde_json::from_str(&state)?;
                let j = definition.and_then(|d| compile(&d, run.version));
                let node = j
                    .as_ref()
                    .and_then(|j| j.nodes.get(run.node))
                    .map(|n| n.name.clone());
                let status = match &run.status {
                    run::Status::Active => "active".to_owned(),
                    run::Status::Exited { reason, .. } => reason.code().to_owned(),
                };
                let waiting = run.wait.as_ref().map(|w| {
                    let mut v = serde_json::to_value(w).unwrap_or(Value::Null);
                    if let Some(until) = v.get("until").and_then(Value::as_i64) {
                        v["until"] = json!(seam_core::clock::format_rfc3339(until));
                    }
                    v
                });
                out.push(RunView {
                    run: run.id.clone(),
                    journey: run.journey.clone(),
                    version: run.version,
                    status,
                    node,
                    waiting,
                    entered_at: seam_core::clock::format_rfc3339(run.entered_at),
                    converted: run.converted,
                    messages: run
                        .messages
                        .iter()
                        .map(
                            |m| json!({"key": m.key, "channel": m.channel, "outcomes": m.outcomes}),
                        )
                        .collect(),
                });
            }
            Ok(out)
        })
    }

    /// Messages in the outbox, newest first, for a journey, a person and/or a delivery status (`dead`: the
    /// dead letters).
    pub fn messages(
        &self,
        ws: WorkspaceKey,
        journey: Option<&str>,
        profile: Option<&ProfileId>,
        status: Option<&str>,
        limit: usize,
    ) -> Result<Vec<MessageView>, StoreError> {
        self.with_reader(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT m.key, m.run, m.journey, m.node, m.profile, m.channel, m.address, m.category, m.content,
                        m.created_at, d.status, d.attempts, d.last_error
                 FROM p.messages m JOIN p.deliveries d ON d.ws = m.ws AND d.key = m.key
                 WHERE m.ws = ?1 AND (?2 IS NULL OR m.journey = ?2) AND (?3 IS NULL OR m.profile = ?3)
                   AND (?5 IS NULL OR d.status = ?5)
                 ORDER BY m.created_at DESC, m.key DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(
                params![ws.0, journey, profile.map(crate::process::key), limit as i64, status],
                |r| {
                    Ok(MessageView {
                        key: r.get(0)?,
                        run: r.get(1)?,
                        journey: r.get(2)?,
                        node: r.get(3)?,
                        profile_id: ProfileId::from_seq(r.get(4)?),
                        channel: r.get(5)?,
                        address: r.get(6)?,
                        category: r.get(7)?,
                        content: serde_json::from_str(&r.get::<_, String>(8)?).unwrap_or(Value::Null),
                        created_at: seam_core::clock::format_rfc3339(r.get(9)?),
                        status: r.get(10)?,
                        attempts: r.get(11)?,
                        last_error: r.get(12)?,
                    })
                },
            )?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// A journey's counters: entered, converted, exited by reason, per node; and runs still waiting.
    pub fn journey_stats(&self, ws: WorkspaceKey, journey: &str) -> Result<Value, StoreError> {
        self.with_reader(|c| {
            let mut out = json!({"journey": journey, "entered": 0, "converted": 0, "waiting": 0, "exited": {}, "nodes": {}});
            let mut stmt =
                c.prepare_cached("SELECT counter, n FROM p.journey_stats WHERE ws = ?1 AND journey = ?2 ORDER BY counter")?;
            for row in stmt.query_map(params![ws.0, journey], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
                let (counter, n) = row?;
                match counter.split_once(':') {
                    None => out[counter.as_str()] = json!(n),
                    Some(("exited", reason)) => out["exited"][reason] = json!(n),
                    Some(("node", rest)) => {
                        if let Some((node, what)) = rest.split_once(':') {
                            if out["nodes"].get(node).is_none() {
                                out["nodes"][node] = json!({});
                            }
                            out["nodes"][node][what] = json!(n);
                        }
                    }
                    Some(_) => {}
                }
            }
            out["waiting"] = json!(c
                .prepare_cached("SELECT COUNT(*) FROM p.journey_runs WHERE ws = ?1 AND journey = ?2 AND active")?
                .query_row(params![ws.0, journey], |r| r.get::<_, i64>(0))?);
            Ok(out)
        })
    }

    /// Starts a run of an API-triggered (or any active) journey for a person: a `journey_enter` event in the log.
    /// Whether it starts is decided like any entry (re-entry, caps, exclusion).
    pub async fn request_entry(
        &self,
        ws: WorkspaceKey,
        journey: &str,
        profile: &ProfileId,
        now: Millis,
    ) -> Result<(), StoreError> {
        let token = crate::workspace::random_token("", 12)?;
        let event = Event::system(
            format!("$seam:journey_enter:{journey}:{token}"),
            EventType::JourneyEnter,
            now,
            json!({"journey": journey, "profile_id": profile})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        let body = serde_json::to_string(&event)?;
        self.append(ws, vec![crate::LogRow::new(event, body)])
            .await?;
        self.caught_up().await;
        Ok(())
    }

    /// A channel reports an outcome of a message: a `Message Read` (…) event of the person, carrying the
    /// message's key, through the log like any event. Reporting the same outcome again changes nothing.
    /// Returns false when there is no such message.
    pub async fn report_outcome(
        &self,
        ws: WorkspaceKey,
        key: &str,
        outcome: seam_journeys::Outcome,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let found: Option<(i64, String, String)> = self.with_reader(|c| {
            Ok(c.prepare_cached(
                "SELECT profile, channel, journey FROM p.messages WHERE ws = ?1 AND key = ?2",
            )?
            .query_row(params![ws.0, key], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?)
        })?;
        let Some((profile, channel, journey)) = found else {
            return Ok(false);
        };
        let ids = self.with_reader(|c| crate::read::identities_of(c, "p", ws, profile))?;
        let Some((kind, value)) = ids.into_iter().next() else {
            return Ok(false);
        };
        let kind = seam_core::IdentifierType::parse(&kind)
            .map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let mut event = Event::system(
            format!("$seam:outcome:{key}:{}", outcome.as_str()),
            EventType::Track,
            now,
            json!({"message_id": key, "channel": channel, "journey": journey})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        );
        event.event = Some(outcome.event_name().to_owned());
        event.identifiers = vec![Identifier::new(kind, value)];
        let body = serde_json::to_string(&event)?;
        self.append(ws, vec![crate::LogRow::new(event, body)])
            .await?;
        self.caught_up().await;
        Ok(true)
    }
}

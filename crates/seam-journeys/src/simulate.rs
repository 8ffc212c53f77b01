//! A scripted world on a virtual clock: profiles, segments, templates, journeys and a script of events at
//! virtual times. The world runs the same journey machine, governance and templates as the server, keeps
//! segment membership current (entered/exited as events and as time passes), and records a timeline of every
//! decision and message. `seam simulate` prints it; the scenario tests assert on it.
//!
//! At one instant, due timers run before the script's steps, runs in the order they started.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use jiff::tz::TimeZone;
use seam_audiences::ast::Expr;
use seam_audiences::digest::Needs;
use seam_audiences::PersonEvent;
use seam_core::clock::{format_rfc3339, parse_rfc3339};
use seam_core::Millis;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::channel::{Category, Channel, Outcome};
use crate::definition::{self, Catalog, Journey, JourneySpec, Problem, Trigger};
use crate::governance::{self, Cap, Clearance, Facts, Policy, QuietHours, Request};
use crate::local;
use crate::run::{self, Effect, Env, Run, TriggerEvent};
use crate::template::{self, Template, TemplateSpec};

/// A scenario as written (YAML or JSON).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default)]
    pub name: String,
    /// The virtual clock's start, RFC 3339.
    pub start: String,
    /// How long the world runs after `start` (`7 days`); the default is a week.
    #[serde(default)]
    pub run_for: Option<String>,
    /// The workspace's time zone, for people without their own.
    #[serde(default = "utc")]
    pub timezone: String,
    #[serde(default)]
    pub governance: GovernanceSpec,
    /// Segment name → definition in the segment language.
    #[serde(default)]
    pub segments: BTreeMap<String, String>,
    #[serde(default)]
    pub templates: Vec<TemplateSpec>,
    #[serde(default)]
    pub journeys: Vec<JourneySpec>,
    #[serde(default)]
    pub profiles: Vec<ProfileSpec>,
    #[serde(default)]
    pub script: Vec<StepSpec>,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GovernanceSpec {
    #[serde(default)]
    pub caps: Vec<CapSpec>,
    #[serde(default)]
    pub quiet_hours: Option<QuietHoursSpec>,
    /// How long a bought item stays out of offers (`7 days`).
    #[serde(default)]
    pub bought_window: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapSpec {
    #[serde(default)]
    pub channel: Option<Channel>,
    pub max: u32,
    pub per: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursSpec {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileSpec {
    pub id: String,
    /// Identifier type → value.
    #[serde(default)]
    pub identities: BTreeMap<String, String>,
    #[serde(default)]
    pub traits: Map<String, Value>,
    #[serde(default)]
    pub timezone: Option<String>,
    /// Channels whose address is on the suppression list.
    #[serde(default)]
    pub suppressed: Vec<Channel>,
}

/// One thing that happens at a virtual time. Exactly one of `track`, `identify`, `outcome`, `enter`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// `+20 minutes`, `+1 day 3 hours` after the start, or an RFC 3339 time.
    pub at: String,
    pub profile: String,
    #[serde(default)]
    pub track: Option<String>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Traits to set.
    #[serde(default)]
    pub identify: Option<Map<String, Value>>,
    /// The channel reports this outcome of the latest message to the person on `channel`.
    #[serde(default)]
    pub outcome: Option<Outcome>,
    #[serde(default)]
    pub channel: Option<Channel>,
    /// Starts a run of the journey by API.
    #[serde(default)]
    pub enter: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_rfc3339(*at))
}

/// One line of the timeline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    #[serde(serialize_with = "rfc3339")]
    pub at: Millis,
    pub profile: String,
    pub journey: String,
    /// `entered`, `send`, `held`, `deferred`, `converted`, `exited`, `event`, `not_entered`, `update`.
    pub kind: &'static str,
    pub detail: String,
}

/// A message the outbox accepted.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sent {
    #[serde(serialize_with = "rfc3339")]
    pub at: Millis,
    pub key: String,
    pub profile: String,
    pub journey: String,
    pub node: String,
    pub channel: Channel,
    pub category: Category,
    pub address: String,
    /// Part → text, or the rendering error.
    #[serde(serialize_with = "content")]
    pub content: Result<BTreeMap<&'static str, String>, String>,
}

fn content<S: serde::Serializer>(
    c: &Result<BTreeMap<&'static str, String>, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match c {
        Ok(parts) => parts.serialize(s),
        Err(e) => json!({ "rendering_error": e }).serialize(s),
    }
}

/// Counts per journey and node.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Stats {
    pub entered: u64,
    pub converted: u64,
    pub waiting: u64,
    pub exited: BTreeMap<String, u64>,
    /// node → counts (`reached`, `sent`, `held:<reason>`, `deferred:<reason>`).
    pub nodes: BTreeMap<String, BTreeMap<String, u64>>,
}

#[derive(Clone)]
struct Person {
    identities: Vec<(String, String)>,
    traits: Map<String, Value>,
    zone: TimeZone,
    suppressed: BTreeSet<String>,
    events: Vec<PersonEvent>,
    bought: Vec<(Millis, String)>,
    segments: BTreeSet<String>,
    /// When time alone may next change a segment membership.
    segment_wake: Option<Millis>,
}

/// The world being simulated. Cloning it is taking a snapshot of everything it keeps.
#[derive(Clone)]
pub struct World {
    now: Millis,
    end: Millis,
    policy: Policy,
    segments: Vec<(String, Expr)>,
    /// What the segments read of events, for when time alone may change one of them.
    needs: Needs,
    templates: BTreeMap<String, Arc<Template>>,
    journeys: Vec<Journey>,
    people: BTreeMap<String, Person>,
    runs: Vec<Run>,
    /// Written before a message is handed to a channel, with its idempotency key: durable.
    outbox: BTreeMap<String, Sent>,
    /// Marketing messages per person, from the outbox: (time, channel, key), for frequency caps.
    sent: BTreeMap<String, Vec<(Millis, Channel, String)>>,
    /// Entry times per journey, for entry caps.
    entries: BTreeMap<String, Vec<Millis>>,
    /// Next firing of each scheduled journey.
    schedules: BTreeMap<String, Millis>,
    /// Next firing of each date-triggered journey for each person: (journey, profile) → time.
    dates: BTreeMap<(String, String), Millis>,
    script: Vec<(Millis, StepSpec)>,
    next_step: usize,
    timeline: Vec<Line>,
    stats: BTreeMap<String, Stats>,
    /// How the run being started was entered, when no event triggered it.
    entered_via: String,
}

/// What a simulation produced.
#[derive(Debug, Serialize)]
pub struct Report {
    pub name: String,
    pub timeline: Vec<Line>,
    pub messages: Vec<Sent>,
    pub stats: BTreeMap<String, Stats>,
}

fn problem(field: impl Into<String>, reason: impl Into<String>) -> Problem {
    Problem {
        field: field.into(),
        reason: reason.into(),
    }
}

/// `+20 minutes`, `+1 day 3 hours` (after `start`), or an RFC 3339 time.
pub fn parse_at(text: &str, start: Millis) -> Result<Millis, String> {
    if let Some(rest) = text.trim().strip_prefix('+') {
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.is_empty() || !words.len().is_multiple_of(2) {
            return Err(format!(
                "`{text}` is not an offset such as `+20 minutes` or `+1 day 3 hours`"
            ));
        }
        let mut total = 0;
        for pair in words.chunks(2) {
            // `+0 minutes` is the start itself.
            let amount = if pair[0] == "0" { "1" } else { pair[0] };
            let d = seam_audiences::parse_duration(&format!("{amount} {}", pair[1]))
                .map_err(|e| format!("`{text}`: {}", e.message))?;
            if pair[0] != "0" {
                total += d.millis();
            }
        }
        return Ok(start + total);
    }
    parse_rfc3339(text)
        .ok_or_else(|| format!("`{text}` is neither `+<duration>` nor an RFC 3339 time"))
}

struct SimCatalog<'a> {
    segments: &'a [(String, Expr)],
    templates: &'a BTreeMap<String, Arc<Template>>,
}

impl Catalog for SimCatalog<'_> {
    fn has_segment(&self, name: &str) -> bool {
        self.segments.iter().any(|(n, _)| n == name)
    }

    fn template_for(&self, template: &str, channel: Channel) -> Result<(), String> {
        if channel == Channel::Webhook {
            return Ok(());
        }
        match self.templates.get(template) {
            None => Err(format!("there is no template named `{template}`")),
            Some(t) if !t.has_variant(channel) => {
                Err(format!("template `{template}` has no {channel} variant"))
            }
            Some(_) => Ok(()),
        }
    }

    fn channel_enabled(&self, _channel: Channel) -> bool {
        true
    }
}

impl World {
    /// Builds the world, checking everything in the scenario; every problem is reported.
    pub fn new(s: Scenario) -> Result<World, Vec<Problem>> {
        let mut problems = vec![];
        let start = parse_rfc3339(&s.start).unwrap_or_else(|| {
            problems.push(problem(
                "start",
                format!("`{}` is not an RFC 3339 time", s.start),
            ));
            0
        });
        let end = match &s.run_for {
            None => start + 7 * 86_400_000,
            Some(d) => parse_at(&format!("+{d}"), start).unwrap_or_else(|e| {
                problems.push(problem("run_for", e));
                start
            }),
        };
        let default_zone = local::zone(&s.timezone).unwrap_or_else(|e| {
            problems.push(problem("timezone", e));
            TimeZone::UTC
        });
        let policy = policy(&s.governance, &mut problems);
        let mut segments = vec![];
        for (name, text) in &s.segments {
            match seam_audiences::parse(text) {
                Ok(e) => segments.push((name.clone(), e)),
                Err(e) => problems.push(problem(
                    format!("segments.{name}"),
                    format!("line {}, column {}: {}", e.line, e.column, e.message),
                )),
            }
        }
        let mut templates = BTreeMap::new();
        for (i, t) in s.templates.into_iter().enumerate() {
            let id = t.id.clone();
            match Template::check(t, 1) {
                Ok(t) => {
                    templates.insert(id, Arc::new(t));
                }
                Err(ps) => problems.extend(
                    ps.into_iter()
                        .map(|p| problem(format!("templates[{i}].{}", p.field), p.reason)),
                ),
            }
        }
        let catalog = SimCatalog {
            segments: &segments,
            templates: &templates,
        };
        let mut journeys = vec![];
        let mut schedules = BTreeMap::new();
        for (i, spec) in s.journeys.iter().enumerate() {
            match definition::validate(spec, 1, &catalog) {
                Ok(j) => {
                    if let Trigger::Schedule { at, .. } = j.trigger {
                        schedules.insert(j.id.clone(), at);
                    }
                    journeys.push(j);
                }
                Err(ps) => problems.extend(
                    ps.into_iter()
                        .map(|p| problem(format!("journeys[{i}].{}", p.field), p.reason)),
                ),
            }
        }
        let mut people = BTreeMap::new();
        for (i, p) in s.profiles.into_iter().enumerate() {
            let zone = match &p.timezone {
                None => default_zone.clone(),
                Some(z) => local::zone(z).unwrap_or_else(|e| {
                    problems.push(problem(format!("profiles[{i}].timezone"), e));
                    TimeZone::UTC
                }),
            };
            let identities: Vec<(String, String)> = p.identities.into_iter().collect();
            let suppressed = p
                .suppressed
                .iter()
                .filter_map(|c| governance::address(&identities, *c))
                .collect();
            people.insert(
                p.id,
                Person {
                    identities,
                    traits: p.traits,
                    zone,
                    suppressed,
                    events: vec![],
                    bought: vec![],
                    segments: BTreeSet::new(),
                    segment_wake: None,
                },
            );
        }
        let mut script = vec![];
        for (i, step) in s.script.into_iter().enumerate() {
            let f = |x: &str| format!("script[{i}].{x}");
            let at = parse_at(&step.at, start).unwrap_or_else(|e| {
                problems.push(problem(f("at"), e));
                start
            });
            if !people.contains_key(&step.profile) {
                problems.push(problem(
                    f("profile"),
                    format!("no profile `{}` in `profiles`", step.profile),
                ));
            }
            let kinds = [
                step.track.is_some(),
                step.identify.is_some(),
                step.outcome.is_some(),
                step.enter.is_some(),
            ];
            if kinds.iter().filter(|k| **k).count() != 1 {
                problems.push(problem(
                    f("track"),
                    "a step has exactly one of `track`, `identify`, `outcome`, `enter`",
                ));
            }
            if step.outcome.is_some() && step.channel.is_none() {
                problems.push(problem(
                    f("channel"),
                    "an outcome names the channel of the message it reports on",
                ));
            }
            if let Some(j) = &step.enter {
                if !journeys.iter().any(|x| &x.id == j) && !s.journeys.iter().any(|x| &x.id == j) {
                    problems.push(problem(f("enter"), format!("no journey `{j}`")));
                }
            }
            if at < start {
                problems.push(problem(f("at"), "before the start"));
            }
            script.push((at, step));
        }
        script.sort_by_key(|(at, _)| *at);
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut world = World {
            now: start,
            end,
            policy,
            needs: Needs::of(segments.iter().map(|(_, e)| e), []),
            segments,
            templates,
            journeys,
            people,
            runs: vec![],
            outbox: BTreeMap::new(),
            sent: BTreeMap::new(),
            entries: BTreeMap::new(),
            schedules,
            dates: BTreeMap::new(),
            script,
            next_step: 0,
            timeline: vec![],
            stats: BTreeMap::new(),
            entered_via: String::new(),
        };
        let ids: Vec<String> = world.people.keys().cloned().collect();
        for id in ids {
            world.refresh_segments(&id);
            world.plan_dates(&id, start);
        }
        Ok(world)
    }

    /// What happened, with the statistics; runs still waiting are counted as `waiting`.
    pub fn report(mut self, name: String) -> Report {
        for r in &self.runs {
            if r.is_active() {
                self.stats.entry(r.journey.clone()).or_default().waiting += 1;
            }
        }
        Report {
            name,
            timeline: self.timeline,
            messages: self
                .outbox
                .into_values()
                .collect::<Vec<_>>()
                .sorted_by_time(),
            stats: self.stats,
        }
    }

    /// The world after a crash: everything as in `snapshot` (the last committed state) except the outbox,
    /// which is written before each message goes out and so holds what `crashed` had written.
    pub fn recover(snapshot: &World, crashed: &World) -> World {
        let mut w = snapshot.clone();
        w.outbox = crashed.outbox.clone();
        w.sent = crashed.sent.clone();
        w
    }

    pub fn now(&self) -> Millis {
        self.now
    }

    /// Advances the clock to `until`, firing timers and script steps in time order.
    pub fn run_until(&mut self, until: Millis) {
        while let Some(at) = self.next_due().filter(|t| *t <= until) {
            self.now = self.now.max(at);
            self.fire_due();
        }
        self.now = self.now.max(until);
    }

    /// Runs the next due thing (timers first, then one script step); false when nothing is left.
    pub fn step(&mut self) -> bool {
        match self.next_due().filter(|t| *t <= self.end) {
            Some(at) => {
                self.now = self.now.max(at);
                self.fire_due();
                true
            }
            None => false,
        }
    }

    fn next_due(&self) -> Option<Millis> {
        let runs = self.runs.iter().filter_map(Run::wake_at);
        let segs = self.people.values().filter_map(|p| p.segment_wake);
        let sched = self.schedules.values().copied();
        let dates = self.dates.values().copied();
        let script = self.script.get(self.next_step).map(|(at, _)| *at);
        runs.chain(segs)
            .chain(sched)
            .chain(dates)
            .chain(script)
            .min()
    }

    /// When the person's date-triggered journeys next fire, from `from` on.
    fn plan_dates(&mut self, profile: &str, from: Millis) {
        let p = &self.people[profile];
        for j in &self.journeys {
            if !matches!(j.trigger, Trigger::Date { .. }) {
                continue;
            }
            let key = (j.id.clone(), profile.to_owned());
            match run::next_date(j, &p.traits, &p.zone, from) {
                Some(t) => self.dates.insert(key, t),
                None => self.dates.remove(&key),
            };
        }
    }

    fn fire_due(&mut self) {
        let now = self.now;
        let due: Vec<String> = self
            .people
            .iter()
            .filter(|(_, p)| p.segment_wake.is_some_and(|t| t <= now))
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            self.refresh_segments(&id);
        }
        for i in 0..self.runs.len() {
            if self.runs[i].wake_at().is_some_and(|t| t <= now) {
                let j = self.journey_of(&self.runs[i]);
                let mut run = self.runs[i].clone();
                let fx = {
                    let mut env = self.env(&run.profile, &j);
                    run::on_timer(&j, &mut run, &mut env)
                };
                self.runs[i] = run;
                self.apply(i, fx);
            }
        }
        let due: Vec<String> = self
            .schedules
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(j, _)| j.clone())
            .collect();
        for id in due {
            self.fire_schedule(&id);
        }
        let due: Vec<(String, String)> = self
            .dates
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for (journey, profile) in due {
            self.dates.remove(&(journey.clone(), profile.clone()));
            self.try_enter(&journey, &profile, None, "on its date");
            self.plan_dates(&profile, now + 1);
        }
        if let Some((at, _)) = self.script.get(self.next_step) {
            if *at <= now && self.next_due_timer().is_none_or(|t| t > now) {
                let (_, step) = self.script[self.next_step].clone();
                self.next_step += 1;
                self.play(step);
            }
        }
    }

    fn next_due_timer(&self) -> Option<Millis> {
        let runs = self.runs.iter().filter_map(Run::wake_at);
        let segs = self.people.values().filter_map(|p| p.segment_wake);
        let dates = self.dates.values().copied();
        runs.chain(segs)
            .chain(self.schedules.values().copied())
            .chain(dates)
            .min()
    }

    fn journey_of(&self, run: &Run) -> Journey {
        self.journeys
            .iter()
            .find(|j| j.id == run.journey)
            .cloned()
            .expect("a run's journey exists")
    }

    /// The person's runs of other journeys, with their journeys.
    fn others<'w>(
        &'w self,
        profile: &'w str,
        j: &'w Journey,
    ) -> impl Iterator<Item = (&'w Journey, &'w Run)> + 'w {
        self.runs
            .iter()
            .filter(move |r| r.profile == profile && r.journey != j.id)
            .filter_map(|r| Some((self.journeys.iter().find(|x| x.id == r.journey)?, r)))
    }

    fn env<'w>(&'w self, profile: &str, j: &Journey) -> SimEnv<'w> {
        let person = &self.people[profile];
        let excluded_by = run::excluder(j, self.others(profile, j));
        SimEnv {
            now: self.now,
            person,
            policy: &self.policy,
            segments: &self.segments,
            excluded_by,
            sent: self.sent.get(profile).cloned().unwrap_or_default(),
        }
    }

    fn line(&mut self, profile: &str, journey: &str, kind: &'static str, detail: String) {
        self.timeline.push(Line {
            at: self.now,
            profile: profile.to_owned(),
            journey: journey.to_owned(),
            kind,
            detail,
        });
    }

    fn play(&mut self, step: StepSpec) {
        let profile = step.profile.clone();
        if let Some(name) = step.track {
            self.record(&profile, name, step.properties);
        } else if let Some(traits) = step.identify {
            self.set_traits(&profile, traits);
            self.record(&profile, "Identify".into(), Map::new());
        } else if let (Some(outcome), Some(channel)) = (step.outcome, step.channel) {
            let latest = self
                .outbox
                .values()
                .filter(|m| m.profile == profile && m.channel == channel)
                .max_by_key(|m| (m.at, m.key.clone()))
                .map(|m| m.key.clone());
            match latest {
                Some(key) => {
                    let props = json!({"message_id": key, "channel": channel.as_str()});
                    self.record(
                        &profile,
                        outcome.event_name().into(),
                        props.as_object().cloned().unwrap_or_default(),
                    );
                }
                None => self.line(
                    &profile,
                    "",
                    "event",
                    format!("{outcome} reported, but no {channel} message was sent"),
                ),
            }
        } else if let Some(journey) = step.enter {
            self.try_enter(&journey, &profile, None, "by API");
        }
    }

    fn set_traits(&mut self, profile: &str, traits: Map<String, Value>) {
        if let Some(p) = self.people.get_mut(profile) {
            for (k, v) in traits {
                p.traits.insert(k, v);
            }
            self.plan_dates(profile, self.now);
        }
    }

    /// An event of the person: segments, runs waiting for it, journeys it triggers.
    fn record(&mut self, profile: &str, name: String, properties: Map<String, Value>) {
        let ev = PersonEvent {
            name,
            at: self.now,
            properties,
        };
        self.line(profile, "", "event", describe_event(&ev));
        {
            let p = self.people.get_mut(profile).expect("validated profile");
            if ev.name == "Order Completed" {
                p.bought.extend(
                    governance::bought_items(&ev.properties)
                        .into_iter()
                        .map(|i| (ev.at, i)),
                );
            }
            p.events.push(ev.clone());
        }
        for i in 0..self.runs.len() {
            let r = &self.runs[i];
            if r.profile != profile {
                continue;
            }
            let j = self.journey_of(r);
            let converted_or_idle =
                !r.is_active() && (r.converted || !j.goal_reached(&ev, r.entered_at));
            if converted_or_idle {
                continue;
            }
            let mut run = self.runs[i].clone();
            let fx = {
                let mut env = self.env(profile, &j);
                run::on_event(&j, &mut run, &ev, &mut env)
            };
            self.runs[i] = run;
            self.apply(i, fx);
        }
        let triggered: Vec<String> = self
            .journeys
            .iter()
            .filter(|j| j.triggered_by(&ev))
            .map(|j| j.id.clone())
            .collect();
        for j in triggered {
            let trigger = TriggerEvent {
                name: ev.name.clone(),
                at: ev.at,
                properties: ev.properties.clone(),
            };
            self.try_enter(&j, profile, Some(trigger), "");
        }
        self.refresh_segments(profile);
    }

    /// Re-evaluates the person's segments; changes become events.
    fn refresh_segments(&mut self, profile: &str) {
        let now = self.now;
        let changes: Vec<(String, bool)> = {
            let p = &self.people[profile];
            let before = p.segments.clone();
            let mut inside = BTreeSet::new();
            // Segments may refer to segments: evaluate in order until nothing changes.
            for _ in 0..=self.segments.len() {
                let mut next = BTreeSet::new();
                for (name, e) in &self.segments {
                    let person = seam_audiences::Person {
                        traits: &p.traits,
                        identities: &p.identities,
                        events: &p.events,
                        in_segment: &|s| inside.contains(s),
                    };
                    if seam_audiences::evaluate(e, &person, now) {
                        next.insert(name.clone());
                    }
                }
                if next == inside {
                    break;
                }
                inside = next;
            }
            let wake = self.needs.next_change(&p.events, now);
            let p = self.people.get_mut(profile).expect("profile");
            p.segment_wake = wake;
            let changes = before
                .symmetric_difference(&inside)
                .map(|s| (s.clone(), inside.contains(s)))
                .collect();
            p.segments = inside;
            changes
        };
        for (segment, entered) in changes {
            let name = if entered {
                "Segment Entered"
            } else {
                "Segment Exited"
            };
            let props = json!({ "segment": segment });
            self.record(
                profile,
                name.into(),
                props.as_object().cloned().unwrap_or_default(),
            );
        }
    }

    fn fire_schedule(&mut self, id: &str) {
        let Some(j) = self.journeys.iter().find(|j| j.id == id).cloned() else {
            return;
        };
        let Trigger::Schedule { at, segment, every } = &j.trigger else {
            return;
        };
        let audience: Vec<String> = self
            .people
            .iter()
            .filter(|(_, p)| segment.as_ref().is_none_or(|s| p.segments.contains(s)))
            .map(|(id, _)| id.clone())
            .collect();
        for profile in audience {
            self.try_enter(id, &profile, None, "on schedule");
        }
        match every {
            Some(e) if *e > 0 => {
                let fired = self.schedules[id].max(*at);
                self.schedules.insert(id.to_owned(), fired + e);
            }
            _ => {
                self.schedules.remove(id);
            }
        }
    }

    fn try_enter(
        &mut self,
        journey: &str,
        profile: &str,
        trigger: Option<TriggerEvent>,
        via: &str,
    ) {
        let Some(j) = self.journeys.iter().find(|j| j.id == journey).cloned() else {
            return;
        };
        let now = self.now;
        let own: Vec<&Run> = self
            .runs
            .iter()
            .filter(|r| r.profile == profile && r.journey == journey)
            .collect();
        let recent = j.entry_cap.map_or(0, |(_, per)| {
            self.entries
                .get(journey)
                .map_or(0, |e| e.iter().filter(|t| **t > now - per).count())
        });
        let preempt = match run::admit(&j, &own, self.others(profile, &j), recent, now) {
            Ok(p) => p,
            Err(reason) => {
                self.line(profile, journey, "not_entered", reason);
                return;
            }
        };
        let preempt: Vec<usize> = preempt
            .iter()
            .filter_map(|id| self.runs.iter().position(|r| &r.id == id))
            .collect();
        for i in preempt {
            let fx = run::preempt(&mut self.runs[i], journey, now);
            self.apply(i, fx);
        }
        self.entries
            .entry(journey.to_owned())
            .or_default()
            .push(now);
        let id = format!("run-{}", self.runs.len() + 1);
        let (run, fx) = {
            let mut env = self.env(profile, &j);
            run::start(&j, id, profile.to_owned(), trigger, &mut env)
        };
        self.entered_via = via.to_owned();
        self.runs.push(run);
        let i = self.runs.len() - 1;
        self.apply(i, fx);
    }

    /// Carries out a run's effects: the outbox, traits, the timeline and the statistics.
    fn apply(&mut self, i: usize, fx: Vec<Effect>) {
        let (profile, journey) = (self.runs[i].profile.clone(), self.runs[i].journey.clone());
        let node_name = |w: &World| {
            let r = &w.runs[i];
            w.journeys
                .iter()
                .find(|j| j.id == r.journey)
                .and_then(|j| j.nodes.get(r.node))
                .map(|n| n.name.clone())
                .unwrap_or_default()
        };
        for e in fx {
            let stats = self.stats.entry(journey.clone()).or_default();
            match e {
                Effect::Entered => {
                    stats.entered += 1;
                    let via = match &self.runs[i].trigger {
                        Some(t) => format!("on {}", t.name),
                        None => self.entered_via.clone(),
                    };
                    self.line(&profile, &journey, "entered", via);
                }
                Effect::Reached { node } => {
                    *stats
                        .nodes
                        .entry(node)
                        .or_default()
                        .entry("reached".into())
                        .or_default() += 1;
                }
                Effect::Send(m) => {
                    *stats
                        .nodes
                        .entry(m.node.clone())
                        .or_default()
                        .entry("sent".into())
                        .or_default() += 1;
                    if let Some(earlier) = self.outbox.get(&m.key) {
                        // The same step again (a replay after a crash): the outbox keeps each key once, and
                        // the message already written is the one that goes out.
                        let line =
                            format!("{} ({}): {}", m.channel, m.node, shown(&earlier.content));
                        self.line(&profile, &journey, "send", line);
                        continue;
                    }
                    let content = self.render(&m, i);
                    let line = format!("{} ({}): {}", m.channel, m.node, shown(&content));
                    self.line(&profile, &journey, "send", line);
                    if m.category == Category::Marketing && m.channel != Channel::Webhook {
                        let record = (self.now, m.channel, m.key.clone());
                        self.sent.entry(profile.clone()).or_default().push(record);
                    }
                    self.outbox.insert(
                        m.key.clone(),
                        Sent {
                            at: self.now,
                            key: m.key,
                            profile: profile.clone(),
                            journey: journey.clone(),
                            node: m.node,
                            channel: m.channel,
                            category: m.category,
                            address: m.address,
                            content,
                        },
                    );
                }
                Effect::Held {
                    node,
                    channel,
                    reason,
                    deferred_until,
                } => {
                    let (kind, detail) = match deferred_until {
                        Some(t) => (
                            "deferred",
                            format!("{channel} ({node}): {reason}; until {}", show_time(t)),
                        ),
                        None => ("held", format!("{channel} ({node}): {reason}")),
                    };
                    *stats
                        .nodes
                        .entry(node)
                        .or_default()
                        .entry(format!("{kind}:{}", reason.code()))
                        .or_default() += 1;
                    self.line(&profile, &journey, kind, detail);
                }
                Effect::UpdateTraits(traits) => {
                    let keys: Vec<String> = traits.keys().cloned().collect();
                    self.set_traits(&profile, traits);
                    self.line(&profile, &journey, "update", keys.join(", "));
                }
                Effect::Converted => {
                    stats.converted += 1;
                    self.line(&profile, &journey, "converted", node_name(self));
                }
                Effect::Exited(reason) => {
                    *stats.exited.entry(reason.code().to_owned()).or_default() += 1;
                    let detail = match &reason {
                        run::ExitReason::Preempted { by } => format!("preempted by `{by}`"),
                        other => other.code().to_owned(),
                    };
                    self.line(&profile, &journey, "exited", detail);
                }
            }
        }
    }

    fn render(&self, m: &run::Message, i: usize) -> Result<BTreeMap<&'static str, String>, String> {
        let Some(t) = m.template.as_ref() else {
            return Ok(BTreeMap::from([("body", format!("POST {}", m.address))]));
        };
        let template = self
            .templates
            .get(t)
            .ok_or_else(|| format!("no template `{t}`"))?;
        let p = &self.people[&m.profile];
        let run = &self.runs[i];
        let event = run.trigger.as_ref().map_or(
            json!({}),
            |t| json!({"name": t.name, "properties": t.properties}),
        );
        let ctx = template::context(
            json!({"id": m.profile, "traits": p.traits, "computed": {}, "segments": p.segments}),
            event,
            json!({"channel": m.channel.as_str(), "journey": m.journey, "id": m.key}),
        );
        template.render(m.channel, &ctx)
    }
}

trait SortedByTime {
    fn sorted_by_time(self) -> Self;
}

impl SortedByTime for Vec<Sent> {
    fn sorted_by_time(mut self) -> Self {
        self.sort_by(|a, b| (a.at, &a.key).cmp(&(b.at, &b.key)));
        self
    }
}

fn policy(g: &GovernanceSpec, problems: &mut Vec<Problem>) -> Policy {
    let mut dur = |field: String, text: &str| match seam_audiences::parse_duration(text) {
        Ok(d) => d.millis(),
        Err(e) => {
            problems.push(problem(field, format!("`{text}`: {}", e.message)));
            0
        }
    };
    let caps = g
        .caps
        .iter()
        .enumerate()
        .map(|(i, c)| Cap {
            channel: c.channel,
            max: c.max,
            per: dur(format!("governance.caps[{i}].per"), &c.per),
            text: match c.channel {
                Some(ch) => format!("{} {ch} per {}", c.max, c.per),
                None => format!("{} per {}", c.max, c.per),
            },
        })
        .collect();
    let bought_window = g.bought_window.as_ref().map_or(7 * 86_400_000, |w| {
        dur("governance.bought_window".into(), w)
    });
    let quiet_hours = g.quiet_hours.as_ref().and_then(|q| {
        match (
            local::parse_time_of_day(&q.start),
            local::parse_time_of_day(&q.end),
        ) {
            (Ok(start), Ok(end)) => Some(QuietHours { start, end }),
            (Err(e), _) => {
                problems.push(problem("governance.quiet_hours.start", e));
                None
            }
            (_, Err(e)) => {
                problems.push(problem("governance.quiet_hours.end", e));
                None
            }
        }
    });
    Policy {
        caps,
        quiet_hours,
        bought_window,
    }
}

/// The headline of a message: its subject, title or text.
fn shown(content: &Result<BTreeMap<&'static str, String>, String>) -> String {
    match content {
        Ok(parts) => ["subject", "title", "text", "body"]
            .iter()
            .find_map(|k| parts.get(k).cloned())
            .unwrap_or_default(),
        Err(e) => format!("rendering failed: {e}"),
    }
}

fn describe_event(ev: &PersonEvent) -> String {
    if ev.properties.is_empty() {
        ev.name.clone()
    } else {
        format!("{} {}", ev.name, Value::Object(ev.properties.clone()))
    }
}

/// `2026-11-23 10:20` (UTC).
pub fn show_time(at: Millis) -> String {
    let t = format_rfc3339(at);
    format!("{} {}", &t[..10], &t[11..16])
}

struct SimEnv<'w> {
    now: Millis,
    person: &'w Person,
    policy: &'w Policy,
    segments: &'w [(String, Expr)],
    excluded_by: Option<String>,
    /// Marketing messages sent, including those of this step.
    sent: Vec<(Millis, Channel, String)>,
}

impl Env for SimEnv<'_> {
    fn now(&self) -> Millis {
        self.now
    }

    fn zone(&self) -> TimeZone {
        self.person.zone.clone()
    }

    fn holds(&mut self, test: &Expr) -> bool {
        let p = self.person;
        let _ = self.segments;
        let person = seam_audiences::Person {
            traits: &p.traits,
            identities: &p.identities,
            events: &p.events,
            in_segment: &|s| p.segments.contains(s),
        };
        seam_audiences::evaluate(test, &person, self.now)
    }

    fn clear(&mut self, req: &Request<'_>) -> Clearance {
        let p = self.person;
        let facts = Facts {
            identities: &p.identities,
            traits: &p.traits,
            suppressed: &p.suppressed,
            sent: &self.sent,
            zone: &p.zone,
            bought: &p.bought,
            excluded_by: self.excluded_by.as_deref(),
        };
        let c = governance::clear(self.policy, &facts, req, self.now);
        if matches!(c, Clearance::Send { .. }) && req.category == Category::Marketing {
            self.sent.push((self.now, req.channel, req.key.to_owned()));
        }
        c
    }
}

impl Report {
    /// The timeline as text, one line per decision, then the statistics.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if !self.name.is_empty() {
            out.push_str(&format!("# {}\n", self.name));
        }
        for l in &self.timeline {
            out.push_str(&format!(
                "{}  {:<16} {:<16} {:<11} {}\n",
                show_time(l.at),
                l.profile,
                l.journey,
                l.kind,
                l.detail
            ));
        }
        out.push('\n');
        for (j, s) in &self.stats {
            out.push_str(&format!(
                "{j}: entered {}, converted {}, waiting {}, exited {}\n",
                s.entered,
                s.converted,
                s.waiting,
                s.exited
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
            for (node, counts) in &s.nodes {
                let counts: Vec<String> = counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
                out.push_str(&format!("  {node}: {}\n", counts.join(", ")));
            }
        }
        out
    }
}

/// Reads a scenario and runs it.
pub fn simulate(text: &str) -> Result<Report, Vec<Problem>> {
    let scenario: Scenario = serde_norway::from_str(text).map_err(|e| {
        vec![problem(
            e.location()
                .map(|l| format!("line {}, column {}", l.line(), l.column()))
                .unwrap_or_else(|| "scenario".into()),
            e.to_string(),
        )]
    })?;
    let name = scenario.name.clone();
    let mut world = World::new(scenario)?;
    world.run_until(world.end);
    Ok(world.report(name))
}

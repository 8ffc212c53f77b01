//! The journey definition format (YAML or JSON; one serde model) and its validation into a [`Journey`].
//!
//! Validation names the place of each problem (`nodes.remind.steps[1].template`) and says what is wrong:
//! unknown nodes, segments, templates or channels, unreachable nodes, loops that never wait, percentages that
//! do not add up, durations and times of day that do not parse.

use std::collections::{BTreeMap, BTreeSet};

use seam_audiences::ast::{EventSel, Expr};
use seam_audiences::PersonEvent;
use seam_core::Millis;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel::{Category, Channel, Outcome};
use crate::governance::QuietAction;
use crate::local;

/// A journey as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JourneySpec {
    pub id: String,
    #[serde(default)]
    pub name: String,
    pub trigger: TriggerSpec,
    /// The node a run starts at.
    pub start: String,
    pub nodes: BTreeMap<String, NodeSpec>,
    #[serde(default)]
    pub goal: Option<GoalSpec>,
    #[serde(default)]
    pub reentry: Reentry,
    /// At most `max` entries (all people together) in any `per`.
    #[serde(default)]
    pub entry_cap: Option<EntryCapSpec>,
    /// Journeys of one group exclude each other: a person in a run of a journey with a higher priority gets
    /// no messages from a lower one (and does not enter it).
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub quiet_hours: QuietAction,
}

/// What starts a run. Exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    /// A tracked event by name …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// … filtered on its properties in the segment language (`category = "coffee" and price > 1000`).
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub filter: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_entered: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_exited: Option<String>,
    /// A campaign: everyone in `segment` (or everyone) at `at`, and again `every` after that if set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<ScheduleSpec>,
    /// A date trait: a birthday every year, three days after `signed_up_at`, at a local time of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub date: Option<DateTriggerSpec>,
    /// Runs start by an API call only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub api: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DateTriggerSpec {
    /// The trait holding a date (`YYYY-MM-DD`) or a time (RFC 3339); a dotted path reaches into objects.
    #[serde(rename = "trait")]
    pub trait_name: String,
    /// Local time of day in the person's zone (default 10:00).
    #[serde(default)]
    pub at: Option<String>,
    /// Added to the date and time (`3 days` after sign-up).
    #[serde(default)]
    pub offset: Option<String>,
    /// Every year on the date's month and day (birthdays), rather than once.
    #[serde(default)]
    pub yearly: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// RFC 3339.
    pub at: String,
    #[serde(default)]
    pub segment: Option<String>,
    #[serde(default)]
    pub every: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoalSpec {
    pub event: String,
    #[serde(default, rename = "where")]
    pub filter: Option<String>,
    /// How long after entry the goal still counts as the journey's conversion.
    pub within: String,
    /// Whether reaching the goal ends the run (the purchase ends the abandoned-cart flow). Default: yes.
    #[serde(default = "yes")]
    pub exits: bool,
}

fn yes() -> bool {
    true
}

/// Whether a person may start a run again: `once` (the default), `after_exit`, or
/// `{ at_most: N, per: <duration> }` (one run at a time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reentry {
    Mode(ReentryMode),
    AtMost { at_most: u32, per: String },
}

impl Default for Reentry {
    fn default() -> Self {
        Self::Mode(ReentryMode::Once)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReentryMode {
    /// Once in a lifetime.
    Once,
    /// Again once the previous run has ended.
    AfterExit,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntryCapSpec {
    pub max: u32,
    pub per: String,
}

/// One step of a journey.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeSpec {
    /// Waits a duration (`for: 20 minutes`) or until a local time of day (`until: "10:00"`).
    Wait {
        #[serde(default, rename = "for")]
        duration: Option<String>,
        #[serde(default)]
        until: Option<String>,
        next: Option<String>,
    },
    /// Waits for an event of the person, or for an outcome of a message an earlier node sent, with a timeout.
    WaitFor {
        #[serde(default)]
        event: Option<String>,
        #[serde(default, rename = "where")]
        filter: Option<String>,
        #[serde(default)]
        outcome: Option<Outcome>,
        /// The node whose message the outcome is awaited for.
        #[serde(default)]
        of: Option<String>,
        timeout: String,
        next: Option<String>,
        on_timeout: Option<String>,
    },
    /// Branches on a condition in the segment language (`trait plan = "gold" and in segment "VIP"`).
    Condition {
        #[serde(rename = "if")]
        test: String,
        then: Option<String>,
        #[serde(rename = "else")]
        otherwise: Option<String>,
    },
    /// Sends each person down one branch by a stable hash; `holdout` percent get nothing (for uplift).
    Split {
        branches: Vec<BranchSpec>,
        #[serde(default)]
        holdout: f64,
    },
    Send {
        channel: Channel,
        template: String,
        #[serde(default)]
        category: Category,
        #[serde(default)]
        topic: Option<String>,
        /// The trigger event's property naming the item offered (held back if bought recently).
        #[serde(default)]
        offer: Option<String>,
        next: Option<String>,
    },
    /// Ordered channels: each skipped when the person cannot be reached or has not consented there, each
    /// waiting `within` for its outcome (`until`, default read) before the next is tried.
    Cascade {
        steps: Vec<CascadeStepSpec>,
        #[serde(default)]
        category: Category,
        #[serde(default)]
        topic: Option<String>,
        #[serde(default)]
        offer: Option<String>,
        next: Option<String>,
    },
    /// One message per person, on the first of `channels` that can carry it.
    FirstReachable {
        channels: Vec<Channel>,
        template: String,
        #[serde(default)]
        category: Category,
        #[serde(default)]
        topic: Option<String>,
        next: Option<String>,
    },
    /// Sets traits on the profile.
    Update {
        traits: Map<String, Value>,
        next: Option<String>,
    },
    /// An HMAC-signed HTTP POST of the run's context to the shop's endpoint.
    Webhook {
        url: String,
        next: Option<String>,
    },
    Exit {},
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    pub percent: f64,
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CascadeStepSpec {
    pub channel: Channel,
    pub template: String,
    #[serde(default)]
    pub until: Option<Outcome>,
    /// How long to wait for the outcome before the next channel; the last step may leave it out.
    #[serde(default)]
    pub within: Option<String>,
}

/// What a definition may refer to.
pub trait Catalog {
    fn has_segment(&self, name: &str) -> bool;
    /// Whether the template exists and has a variant for the channel: `Err` says which is missing.
    fn template_for(&self, template: &str, channel: Channel) -> Result<(), String>;
    fn channel_enabled(&self, channel: Channel) -> bool;
}

/// A catalog that knows every segment, template and channel: for definitions that were checked against the
/// real one when they were saved, and need no second check to run.
pub struct Trusted;

impl Catalog for Trusted {
    fn has_segment(&self, _: &str) -> bool {
        true
    }
    fn template_for(&self, _: &str, _: Channel) -> Result<(), String> {
        Ok(())
    }
    fn channel_enabled(&self, _: Channel) -> bool {
        true
    }
}

/// A problem in a definition, at a place in it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub field: String,
    pub reason: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

/// Reads a definition from YAML (JSON is YAML too); syntax and shape errors name the line and column.
pub fn from_yaml(text: &str) -> Result<JourneySpec, Problem> {
    serde_norway::from_str(text).map_err(|e| Problem {
        field: e
            .location()
            .map(|l| format!("line {}, column {}", l.line(), l.column()))
            .unwrap_or_else(|| "definition".into()),
        reason: e.to_string(),
    })
}

/// A validated journey, nodes by index.
#[derive(Debug, Clone)]
pub struct Journey {
    pub id: String,
    pub name: String,
    pub version: u32,
    pub trigger: Trigger,
    pub start: usize,
    pub nodes: Vec<Node>,
    pub goal: Option<Goal>,
    pub reentry: Reentry,
    pub reentry_per: Millis,
    pub entry_cap: Option<(u32, Millis)>,
    pub group: Option<String>,
    pub priority: i32,
    pub quiet: QuietAction,
    /// Whether deciding a step can read the person's event history: a condition over events, or an offer held
    /// back when the item was bought recently. A journey that cannot is decided without loading it.
    pub reads_history: bool,
}

#[derive(Debug, Clone)]
pub enum Trigger {
    Event(EventSel),
    SegmentEntered(String),
    SegmentExited(String),
    Schedule {
        at: Millis,
        segment: Option<String>,
        every: Option<Millis>,
    },
    Date {
        path: Vec<String>,
        minute: u16,
        offset: Millis,
        yearly: bool,
    },
    Api,
}

#[derive(Debug, Clone)]
pub struct Goal {
    pub event: EventSel,
    pub within: Millis,
    pub exits: bool,
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
}

/// A message step: channel and template, with the rules it is sent under.
#[derive(Debug, Clone)]
pub struct MessageSpec {
    pub channel: Channel,
    pub template: String,
    pub until: Outcome,
    pub within: Option<Millis>,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    WaitFor {
        duration: Millis,
        next: Option<usize>,
    },
    WaitUntil {
        minute: u16,
        next: Option<usize>,
    },
    WaitEvent {
        event: EventSel,
        timeout: Millis,
        next: Option<usize>,
        on_timeout: Option<usize>,
    },
    WaitOutcome {
        outcome: Outcome,
        of: usize,
        timeout: Millis,
        next: Option<usize>,
        on_timeout: Option<usize>,
    },
    Condition {
        test: Expr,
        then: Option<usize>,
        otherwise: Option<usize>,
    },
    Split {
        /// (cumulative basis points, next)
        branches: Vec<(u32, usize)>,
    },
    Send {
        message: MessageSpec,
        category: Category,
        topic: Option<String>,
        offer: Option<String>,
        next: Option<usize>,
    },
    Cascade {
        steps: Vec<MessageSpec>,
        category: Category,
        topic: Option<String>,
        offer: Option<String>,
        next: Option<usize>,
    },
    FirstReachable {
        channels: Vec<Channel>,
        template: String,
        category: Category,
        topic: Option<String>,
        next: Option<usize>,
    },
    Update {
        traits: Map<String, Value>,
        next: Option<usize>,
    },
    Webhook {
        url: String,
        next: Option<usize>,
    },
    Exit,
}

impl NodeKind {
    /// The nodes a run may go to from here.
    pub fn successors(&self) -> Vec<usize> {
        let opt = |o: &Option<usize>| o.iter().copied().collect::<Vec<_>>();
        match self {
            Self::WaitFor { next, .. }
            | Self::WaitUntil { next, .. }
            | Self::Send { next, .. }
            | Self::Cascade { next, .. }
            | Self::FirstReachable { next, .. }
            | Self::Update { next, .. }
            | Self::Webhook { next, .. } => opt(next),
            Self::WaitEvent {
                next, on_timeout, ..
            }
            | Self::WaitOutcome {
                next, on_timeout, ..
            } => [opt(next), opt(on_timeout)].concat(),
            Self::Condition {
                then, otherwise, ..
            } => [opt(then), opt(otherwise)].concat(),
            Self::Split { branches } => branches.iter().map(|(_, n)| *n).collect(),
            Self::Exit => vec![],
        }
    }

    /// Whether a run always stops here for a while (so a loop through it is not a busy loop).
    pub fn waits(&self) -> bool {
        match self {
            Self::WaitFor { duration, .. } => *duration > 0,
            Self::WaitUntil { .. } | Self::WaitEvent { .. } => true,
            // A cascade whose channels are all held, or an outcome wait with nothing sent, goes straight on:
            // neither is a wait a loop can count on.
            _ => false,
        }
    }
}

impl Journey {
    /// Whether `ev` reaches the journey's goal for a run entered at `entered_at`.
    pub fn goal_reached(&self, ev: &PersonEvent, entered_at: Millis) -> bool {
        self.goal.as_ref().is_some_and(|g| {
            ev.at >= entered_at
                && ev.at <= entered_at + g.within
                && seam_audiences::event_matches(&g.event, ev)
        })
    }

    /// Whether `ev` starts a run: the trigger event (with its filter), or entering or leaving the segment
    /// (`Segment Entered` / `Segment Exited` with the segment's name in `segment`).
    pub fn triggered_by(&self, ev: &PersonEvent) -> bool {
        let segment = || ev.properties.get("segment").and_then(Value::as_str);
        match &self.trigger {
            Trigger::Event(sel) => seam_audiences::event_matches(sel, ev),
            Trigger::SegmentEntered(s) => ev.name == "Segment Entered" && segment() == Some(s),
            Trigger::SegmentExited(s) => ev.name == "Segment Exited" && segment() == Some(s),
            _ => false,
        }
    }

    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}

struct Checker<'c> {
    catalog: &'c dyn Catalog,
    problems: Vec<Problem>,
    names: BTreeMap<String, usize>,
}

impl Checker<'_> {
    fn problem(&mut self, field: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            field: field.into(),
            reason: reason.into(),
        });
    }

    fn duration(&mut self, field: &str, text: &str) -> Millis {
        match seam_audiences::parse_duration(text) {
            Ok(d) => d.millis(),
            Err(e) => {
                self.problem(
                    field,
                    format!("`{text}` is not a duration such as `20 minutes`, `3 hours` or `1 day` ({})", e.message),
                );
                0
            }
        }
    }

    fn event(&mut self, field: &str, name: &str, filter: Option<&str>) -> EventSel {
        if name.trim().is_empty() {
            self.problem(field, "the event name is empty");
        }
        let filters = match filter {
            None => vec![],
            Some(text) => seam_audiences::parse_filters(text).unwrap_or_else(|e| {
                self.problem(
                    field.replace("event", "where"),
                    format!("line {}, column {}: {}", e.line, e.column, e.message),
                );
                vec![]
            }),
        };
        EventSel {
            event: name.to_owned(),
            filters,
        }
    }

    fn target(&mut self, field: &str, name: &Option<String>) -> Option<usize> {
        let name = name.as_ref()?;
        match self.names.get(name) {
            Some(i) => Some(*i),
            None => {
                self.problem(field, format!("there is no node named `{name}`"));
                None
            }
        }
    }

    fn segment(&mut self, field: &str, name: &str) {
        if !self.catalog.has_segment(name) {
            self.problem(field, format!("there is no segment named `{name}`"));
        }
    }

    fn template(&mut self, field: &str, template: &str, channel: Channel) {
        if !self.catalog.channel_enabled(channel) {
            self.problem(
                field.replace("template", "channel"),
                format!("the channel `{channel}` is not enabled"),
            );
        }
        if let Err(reason) = self.catalog.template_for(template, channel) {
            self.problem(field, reason);
        }
    }
}

/// Validates `spec` against what exists; every problem is reported, not only the first.
pub fn validate(
    spec: &JourneySpec,
    version: u32,
    catalog: &dyn Catalog,
) -> Result<Journey, Vec<Problem>> {
    let mut c = Checker {
        catalog,
        problems: vec![],
        names: spec
            .nodes
            .keys()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect(),
    };
    if spec.id.is_empty()
        || spec.id.len() > 100
        || !spec
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        c.problem("id", "an id is 1–100 letters, digits, `-` or `_`");
    }
    let trigger = trigger(&mut c, &spec.trigger);
    let start = c.target("start", &Some(spec.start.clone())).unwrap_or(0);
    let mut nodes = Vec::with_capacity(spec.nodes.len());
    for (name, node) in &spec.nodes {
        let kind = node_kind(&mut c, name, node);
        nodes.push(Node {
            name: name.clone(),
            kind,
        });
    }
    if spec.nodes.is_empty() {
        c.problem("nodes", "a journey needs at least one node");
    }
    let goal = spec.goal.as_ref().map(|g| Goal {
        event: c.event("goal.event", &g.event, g.filter.as_deref()),
        within: c.duration("goal.within", &g.within),
        exits: g.exits,
    });
    let reentry_per = match &spec.reentry {
        Reentry::AtMost { at_most, per } => {
            if *at_most == 0 {
                c.problem("reentry.at_most", "must be at least 1");
            }
            c.duration("reentry.per", per)
        }
        _ => 0,
    };
    let entry_cap = spec.entry_cap.as_ref().map(|e| {
        if e.max == 0 {
            c.problem("entry_cap.max", "must be at least 1");
        }
        (e.max, c.duration("entry_cap.per", &e.per))
    });
    if c.problems.is_empty() {
        graph_checks(&mut c, start, &nodes);
    }
    if !c.problems.is_empty() {
        return Err(c.problems);
    }
    Ok(Journey {
        reads_history: reads_history(&nodes),
        id: spec.id.clone(),
        name: if spec.name.is_empty() {
            spec.id.clone()
        } else {
            spec.name.clone()
        },
        version,
        trigger,
        start,
        nodes,
        goal,
        reentry: spec.reentry.clone(),
        reentry_per,
        entry_cap,
        group: spec.group.clone(),
        priority: spec.priority,
        quiet: spec.quiet_hours,
    })
}

/// See [`Journey::reads_history`].
fn reads_history(nodes: &[Node]) -> bool {
    nodes.iter().any(|n| match &n.kind {
        NodeKind::Condition { test, .. } => {
            !seam_audiences::digest::Needs::of([test], []).is_empty()
        }
        NodeKind::Send { offer, .. } | NodeKind::Cascade { offer, .. } => offer.is_some(),
        _ => false,
    })
}

fn trigger(c: &mut Checker<'_>, t: &TriggerSpec) -> Trigger {
    let set = [
        t.event.is_some(),
        t.segment_entered.is_some(),
        t.segment_exited.is_some(),
        t.schedule.is_some(),
        t.date.is_some(),
        t.api,
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if set != 1 {
        c.problem(
            "trigger",
            "name exactly one trigger: `event`, `segment_entered`, `segment_exited`, `schedule`, `date` or `api: true`",
        );
        return Trigger::Api;
    }
    if t.filter.is_some() && t.event.is_none() {
        c.problem(
            "trigger.where",
            "filters the properties of a trigger `event`; there is none",
        );
    }
    if let Some(e) = &t.event {
        return Trigger::Event(c.event("trigger.event", e, t.filter.as_deref()));
    }
    if let Some(s) = &t.segment_entered {
        c.segment("trigger.segment_entered", s);
        return Trigger::SegmentEntered(s.clone());
    }
    if let Some(s) = &t.segment_exited {
        c.segment("trigger.segment_exited", s);
        return Trigger::SegmentExited(s.clone());
    }
    if let Some(s) = &t.schedule {
        let at = seam_core::clock::parse_rfc3339(&s.at).unwrap_or_else(|| {
            c.problem(
                "trigger.schedule.at",
                format!("`{}` is not an RFC 3339 time", s.at),
            );
            0
        });
        if let Some(seg) = &s.segment {
            c.segment("trigger.schedule.segment", seg);
        }
        let every = s
            .every
            .as_ref()
            .map(|e| c.duration("trigger.schedule.every", e));
        return Trigger::Schedule {
            at,
            segment: s.segment.clone(),
            every,
        };
    }
    if let Some(d) = &t.date {
        if d.trait_name.trim().is_empty() {
            c.problem("trigger.date.trait", "name the trait that holds the date");
        }
        let minute = match &d.at {
            None => 600,
            Some(at) => local::parse_time_of_day(at).unwrap_or_else(|e| {
                c.problem("trigger.date.at", e);
                0
            }),
        };
        let offset = d
            .offset
            .as_ref()
            .map_or(0, |o| c.duration("trigger.date.offset", o));
        return Trigger::Date {
            path: d.trait_name.split('.').map(str::to_owned).collect(),
            minute,
            offset,
            yearly: d.yearly,
        };
    }
    Trigger::Api
}

fn node_kind(c: &mut Checker<'_>, name: &str, node: &NodeSpec) -> NodeKind {
    let f = |field: &str| format!("nodes.{name}.{field}");
    match node {
        NodeSpec::Wait {
            duration,
            until,
            next,
        } => {
            let next = c.target(&f("next"), next);
            match (duration, until) {
                (Some(d), None) => NodeKind::WaitFor {
                    duration: c.duration(&f("for"), d),
                    next,
                },
                (None, Some(u)) => NodeKind::WaitUntil {
                    minute: local::parse_time_of_day(u).unwrap_or_else(|e| {
                        c.problem(f("until"), e);
                        0
                    }),
                    next,
                },
                _ => {
                    c.problem(
                        f("for"),
                        "a wait has either `for` (a duration) or `until` (a time of day)",
                    );
                    NodeKind::Exit
                }
            }
        }
        NodeSpec::WaitFor {
            event,
            filter,
            outcome,
            of,
            timeout,
            next,
            on_timeout,
        } => {
            let timeout = c.duration(&f("timeout"), timeout);
            let next = c.target(&f("next"), next);
            let on_timeout = c.target(&f("on_timeout"), on_timeout);
            match (event, outcome, of) {
                (Some(e), None, None) => NodeKind::WaitEvent {
                    event: c.event(&f("event"), e, filter.as_deref()),
                    timeout,
                    next,
                    on_timeout,
                },
                (None, Some(o), Some(of)) => {
                    let target = c.target(&f("of"), &Some(of.clone()));
                    NodeKind::WaitOutcome {
                        outcome: *o,
                        of: target.unwrap_or(0),
                        timeout,
                        next,
                        on_timeout,
                    }
                }
                _ => {
                    c.problem(
                        f("event"),
                        "a wait_for has either `event` (with an optional `where`) or `outcome` with `of` (the node that sent the message)",
                    );
                    NodeKind::Exit
                }
            }
        }
        NodeSpec::Condition {
            test,
            then,
            otherwise,
        } => {
            let expr = match seam_audiences::parse(test) {
                Ok(e) => {
                    for s in segments_in(&e) {
                        c.segment(&f("if"), &s);
                    }
                    e
                }
                Err(e) => {
                    c.problem(
                        f("if"),
                        format!("line {}, column {}: {}", e.line, e.column, e.message),
                    );
                    Expr::And { args: vec![] }
                }
            };
            NodeKind::Condition {
                test: expr,
                then: c.target(&f("then"), then),
                otherwise: c.target(&f("else"), otherwise),
            }
        }
        NodeSpec::Split { branches, holdout } => {
            let total: f64 = branches.iter().map(|b| b.percent).sum::<f64>() + holdout;
            if branches.is_empty() {
                c.problem(f("branches"), "a split needs at least one branch");
            }
            if branches
                .iter()
                .any(|b| b.percent.is_nan() || b.percent <= 0.0)
                || holdout.is_nan()
                || *holdout < 0.0
            {
                c.problem(
                    f("branches"),
                    "every percentage is above 0 (the holdout may be 0)",
                );
            }
            if (total - 100.0).abs() > 1e-9 {
                c.problem(
                    f("branches"),
                    format!("the branches and the holdout add up to {total}%, not 100%"),
                );
            }
            let mut acc = 0.0;
            let mut out = vec![];
            for (i, b) in branches.iter().enumerate() {
                acc += b.percent;
                if let Some(n) = c.target(&f(&format!("branches[{i}].next")), &Some(b.next.clone()))
                {
                    out.push(((acc * 100.0).round() as u32, n));
                }
            }
            NodeKind::Split { branches: out }
        }
        NodeSpec::Send {
            channel,
            template,
            category,
            topic,
            offer,
            next,
        } => {
            c.template(&f("template"), template, *channel);
            NodeKind::Send {
                message: MessageSpec {
                    channel: *channel,
                    template: template.clone(),
                    until: Outcome::Read,
                    within: None,
                },
                category: *category,
                topic: topic.clone(),
                offer: offer.clone(),
                next: c.target(&f("next"), next),
            }
        }
        NodeSpec::Cascade {
            steps,
            category,
            topic,
            offer,
            next,
        } => {
            if steps.is_empty() {
                c.problem(f("steps"), "a cascade needs at least one channel");
            }
            let mut seen = BTreeSet::new();
            let mut out = vec![];
            for (i, s) in steps.iter().enumerate() {
                let sf = |x: &str| f(&format!("steps[{i}].{x}"));
                if !seen.insert(s.channel) {
                    c.problem(
                        sf("channel"),
                        format!("`{}` is already an earlier step", s.channel),
                    );
                }
                c.template(&sf("template"), &s.template, s.channel);
                let within = s.within.as_ref().map(|w| c.duration(&sf("within"), w));
                if within.is_none() && i + 1 < steps.len() {
                    c.problem(
                        sf("within"),
                        "every step but the last says how long to wait for its outcome",
                    );
                }
                out.push(MessageSpec {
                    channel: s.channel,
                    template: s.template.clone(),
                    until: s.until.unwrap_or(Outcome::Read),
                    within,
                });
            }
            NodeKind::Cascade {
                steps: out,
                category: *category,
                topic: topic.clone(),
                offer: offer.clone(),
                next: c.target(&f("next"), next),
            }
        }
        NodeSpec::FirstReachable {
            channels,
            template,
            category,
            topic,
            next,
        } => {
            if channels.is_empty() {
                c.problem(f("channels"), "name at least one channel");
            }
            for ch in channels {
                c.template(&f("template"), template, *ch);
            }
            NodeKind::FirstReachable {
                channels: channels.clone(),
                template: template.clone(),
                category: *category,
                topic: topic.clone(),
                next: c.target(&f("next"), next),
            }
        }
        NodeSpec::Update { traits, next } => {
            if traits.is_empty() {
                c.problem(f("traits"), "name at least one trait to set");
            }
            NodeKind::Update {
                traits: traits.clone(),
                next: c.target(&f("next"), next),
            }
        }
        NodeSpec::Webhook { url, next } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                c.problem(f("url"), "an http:// or https:// address");
            }
            NodeKind::Webhook {
                url: url.clone(),
                next: c.target(&f("next"), next),
            }
        }
        NodeSpec::Exit {} => NodeKind::Exit,
    }
}

/// Unreachable nodes, outcome waits on nodes that send nothing, and loops in which no node waits.
fn graph_checks(c: &mut Checker<'_>, start: usize, nodes: &[Node]) {
    let mut reached = vec![false; nodes.len()];
    let mut stack = vec![start];
    while let Some(i) = stack.pop() {
        if !std::mem::replace(&mut reached[i], true) {
            stack.extend(nodes[i].kind.successors());
        }
    }
    for (i, n) in nodes.iter().enumerate() {
        if !reached[i] {
            c.problem(
                format!("nodes.{}", n.name),
                "no path from `start` reaches this node",
            );
        }
        if let NodeKind::WaitOutcome { of, .. } = n.kind {
            if !matches!(
                nodes[of].kind,
                NodeKind::Send { .. } | NodeKind::Cascade { .. } | NodeKind::FirstReachable { .. }
            ) {
                c.problem(
                    format!("nodes.{}.of", n.name),
                    format!("`{}` sends no message to wait for", nodes[of].name),
                );
            }
        }
    }
    // A cycle among nodes that do not wait would spin without end: depth-first search over them.
    let mut state = vec![0u8; nodes.len()]; // 0 new, 1 on the path, 2 done
    let mut path = vec![];
    for i in 0..nodes.len() {
        if let Some(cycle) = busy_cycle(i, nodes, &mut state, &mut path) {
            let names: Vec<&str> = cycle.iter().map(|i| nodes[*i].name.as_str()).collect();
            c.problem(
                format!("nodes.{}", names[0]),
                format!(
                    "the loop {} never waits; put a wait in it",
                    names.join(" → ")
                ),
            );
            return;
        }
    }
}

fn busy_cycle(
    i: usize,
    nodes: &[Node],
    state: &mut [u8],
    path: &mut Vec<usize>,
) -> Option<Vec<usize>> {
    if nodes[i].kind.waits() || state[i] == 2 {
        return None;
    }
    if state[i] == 1 {
        let from = path.iter().position(|p| *p == i).unwrap_or(0);
        let mut cycle = path[from..].to_vec();
        cycle.push(i);
        return Some(cycle);
    }
    state[i] = 1;
    path.push(i);
    for n in nodes[i].kind.successors() {
        if let Some(c) = busy_cycle(n, nodes, state, path) {
            return Some(c);
        }
    }
    path.pop();
    state[i] = 2;
    None
}

/// The segments a condition refers to.
pub fn segments_in(e: &Expr) -> Vec<String> {
    let mut out = vec![];
    let mut stack = vec![e];
    while let Some(e) = stack.pop() {
        match e {
            Expr::InSegment { segment } => out.push(segment.clone()),
            Expr::And { args } | Expr::Or { args } => stack.extend(args),
            Expr::Not { arg } => stack.push(arg),
            Expr::ForSome { expr, .. } => stack.push(expr),
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journey(nodes: &str) -> Journey {
        let text = format!("id: j\ntrigger: {{event: Signed Up}}\nstart: first\nnodes:\n{nodes}");
        let spec = from_yaml(&text).expect("the journey parses");
        validate(&spec, 1, &Trusted).expect("the journey checks")
    }

    #[test]
    fn only_conditions_over_events_and_offers_read_the_history() {
        let send = "    type: send\n    channel: email\n    template: t\n";
        let cases = [
            (format!("  first:\n{send}"), false),
            (format!("  first:\n{send}    offer: product_id\n"), true),
            (
                format!("  first:\n    type: condition\n    if: 'trait plan = \"gold\"'\n    then: mail\n  mail:\n{send}"),
                false,
            ),
            (
                format!("  first:\n    type: condition\n    if: 'in segment \"VIP\"'\n    then: mail\n  mail:\n{send}"),
                false,
            ),
            (
                format!("  first:\n    type: condition\n    if: 'count of \"Order Completed\" in last 30 days >= 1'\n    then: mail\n  mail:\n{send}"),
                true,
            ),
        ];
        for (nodes, reads) in cases {
            assert_eq!(journey(&nodes).reads_history, reads, "{nodes}");
        }
    }
}

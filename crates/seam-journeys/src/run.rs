//! The run state machine: one person's way through one journey.
//!
//! A [`Run`] is plain data (serde), so it can be stored between steps and survive restarts. The machine is
//! deterministic: the same run, inputs and answers from the [`Env`] give the same effects, and every message
//! carries an idempotency key (run, step, channel) — a replay after a crash proposes the same keys again, and
//! the outbox, which keeps each key once, sends nothing twice.

use jiff::tz::TimeZone;
use seam_audiences::ast::Expr;
use seam_audiences::PersonEvent;
use seam_core::Millis;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel::{Category, Channel, Outcome};
use crate::definition::{Journey, MessageSpec, NodeKind};
use crate::governance::{Clearance, Reason, Request};
use crate::local;

/// What the machine asks of the world around it, about the run's person, at the current time.
pub trait Env {
    fn now(&self) -> Millis;
    /// The person's time zone.
    fn zone(&self) -> TimeZone;
    /// A condition in the segment language.
    fn holds(&mut self, test: &Expr) -> bool;
    /// Delivery governance on a proposed message.
    fn clear(&mut self, req: &Request<'_>) -> Clearance;
}

/// The event that started a run, kept for templates (`{{ event.properties.product_name }}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TriggerEvent {
    pub name: String,
    pub at: Millis,
    pub properties: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: String,
    pub journey: String,
    pub version: u32,
    pub profile: String,
    pub entered_at: Millis,
    pub trigger: Option<TriggerEvent>,
    pub node: usize,
    /// Counts node visits; part of each message's idempotency key.
    pub step: u32,
    pub wait: Option<Wait>,
    /// The cascade step being tried, in a cascade node.
    pub cascade_at: usize,
    pub messages: Vec<SentMessage>,
    pub status: Status,
    pub converted: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Status {
    Active,
    Exited { reason: ExitReason, at: Millis },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitReason {
    /// The path ended.
    Completed,
    /// The goal was reached.
    Goal,
    /// Put in the hold-out group of a split: gets nothing, counts for uplift.
    Holdout,
    /// A journey with a higher priority in the same group started.
    Preempted { by: String },
}

impl ExitReason {
    pub fn code(&self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Goal => "goal",
            Self::Holdout => "holdout",
            Self::Preempted { .. } => "preempted",
        }
    }
}

/// Why a run is waiting, and until when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "for", rename_all = "snake_case")]
pub enum Wait {
    /// A duration, a time of day, or a deferred message (`retry`: run the node again then).
    Time { until: Millis, retry: bool },
    /// An event of the person, or the timeout.
    Event { until: Millis },
    /// An outcome of the message `key`, or the timeout.
    Outcome { key: String, until: Millis },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SentMessage {
    pub key: String,
    pub node: usize,
    pub channel: Channel,
    /// The outcomes reported so far.
    pub outcomes: Vec<Outcome>,
}

/// A message for the outbox. `key` is its idempotency key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub key: String,
    pub run: String,
    pub journey: String,
    pub profile: String,
    pub node: String,
    pub channel: Channel,
    /// For a webhook, the URL.
    pub address: String,
    pub template: Option<String>,
    pub category: Category,
    pub topic: Option<String>,
}

/// What a step did. The caller writes each as an event and acts on it.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    Entered,
    /// The run reached a node (per-node statistics).
    Reached {
        node: String,
    },
    Send(Message),
    /// A message held back: suppressed, or deferred until a time.
    Held {
        node: String,
        channel: Channel,
        reason: Reason,
        deferred_until: Option<Millis>,
    },
    UpdateTraits(Map<String, Value>),
    Converted,
    Exited(ExitReason),
}

enum Flow {
    Goto(Option<usize>),
    Stop,
}

impl Run {
    /// When the run wants to be woken, if it waits for time.
    pub fn wake_at(&self) -> Option<Millis> {
        if self.status != Status::Active {
            return None;
        }
        self.wait.as_ref().map(|w| match w {
            Wait::Time { until, .. } | Wait::Event { until } | Wait::Outcome { until, .. } => {
                *until
            }
        })
    }

    pub fn is_active(&self) -> bool {
        self.status == Status::Active
    }
}

/// Starts a run of `j` for `profile` at its start node.
pub fn start(
    j: &Journey,
    id: String,
    profile: String,
    trigger: Option<TriggerEvent>,
    env: &mut dyn Env,
) -> (Run, Vec<Effect>) {
    // A run triggered by an event entered when the event happened: a purchase made a moment after adding to the
    // cart reaches the goal even if the run was decided later (a lagging projector, a batched SDK).
    let entered_at = trigger.as_ref().map_or(env.now(), |t| t.at.min(env.now()));
    let mut run = Run {
        id,
        journey: j.id.clone(),
        version: j.version,
        profile,
        entered_at,
        trigger,
        node: j.start,
        step: 0,
        wait: None,
        cascade_at: 0,
        messages: vec![],
        status: Status::Active,
        converted: false,
    };
    let mut fx = vec![Effect::Entered];
    go(j, &mut run, Some(j.start), env, &mut fx);
    (run, fx)
}

/// Wakes the run if its time has come.
pub fn on_timer(j: &Journey, run: &mut Run, env: &mut dyn Env) -> Vec<Effect> {
    let mut fx = vec![];
    let now = env.now();
    if !run.is_active() || run.wake_at().is_none_or(|t| t > now) {
        return fx;
    }
    let Some(wait) = run.wait.take() else {
        return fx;
    };
    let Some(node) = j.nodes.get(run.node).map(|n| &n.kind) else {
        // Stored under a journey that no longer has this node: end it rather than guess.
        exit(run, ExitReason::Completed, now, &mut fx);
        return fx;
    };
    let flow = match (wait, node) {
        (Wait::Time { retry: true, .. }, _) => execute(j, run, env, &mut fx),
        (Wait::Time { .. }, NodeKind::WaitFor { next, .. } | NodeKind::WaitUntil { next, .. }) => {
            Flow::Goto(*next)
        }
        (Wait::Event { .. }, NodeKind::WaitEvent { on_timeout, .. })
        | (Wait::Outcome { .. }, NodeKind::WaitOutcome { on_timeout, .. }) => {
            Flow::Goto(*on_timeout)
        }
        (Wait::Outcome { .. }, NodeKind::Cascade { .. }) => {
            run.cascade_at += 1;
            execute(j, run, env, &mut fx)
        }
        // A run stored under another version of the journey: end it rather than guess.
        _ => Flow::Goto(None),
    };
    continue_from(j, run, flow, env, &mut fx);
    fx
}

/// Shows the run one of its person's events: a goal, an awaited event, an outcome of one of its messages.
pub fn on_event(j: &Journey, run: &mut Run, ev: &PersonEvent, env: &mut dyn Env) -> Vec<Effect> {
    let mut fx = vec![];
    if let Some(outcome) = Outcome::from_event_name(&ev.name) {
        let key = ev.properties.get("message_id").and_then(Value::as_str);
        if let Some(m) = run
            .messages
            .iter_mut()
            .find(|m| Some(m.key.as_str()) == key)
        {
            if !m.outcomes.contains(&outcome) {
                m.outcomes.push(outcome);
            }
        }
    }
    if !run.converted && j.goal_reached(ev, run.entered_at) {
        run.converted = true;
        fx.push(Effect::Converted);
        if run.is_active() && j.goal.as_ref().is_some_and(|g| g.exits) {
            exit(run, ExitReason::Goal, env.now(), &mut fx);
            return fx;
        }
    }
    if !run.is_active() {
        return fx;
    }
    let Some(node) = j.nodes.get(run.node) else {
        exit(run, ExitReason::Completed, env.now(), &mut fx);
        return fx;
    };
    let flow = match (&run.wait, &node.kind) {
        (Some(Wait::Event { until }), NodeKind::WaitEvent { event, next, .. })
            if ev.at <= *until && seam_audiences::event_matches(event, ev) =>
        {
            Some(Flow::Goto(*next))
        }
        (Some(Wait::Outcome { key, .. }), kind) => {
            let m = run.messages.iter().find(|m| &m.key == key);
            let wanted = match kind {
                NodeKind::WaitOutcome { outcome, .. } => Some(*outcome),
                NodeKind::Cascade { steps, .. } => steps.get(run.cascade_at).map(|s| s.until),
                _ => None,
            };
            match (m, wanted) {
                (Some(m), Some(w)) if m.outcomes.iter().any(|o| o.satisfies(w)) => {
                    Some(Flow::Goto(match kind {
                        NodeKind::WaitOutcome { next, .. } | NodeKind::Cascade { next, .. } => {
                            *next
                        }
                        _ => None,
                    }))
                }
                (Some(m), Some(_)) if m.outcomes.iter().any(|o| o.is_failure()) => match kind {
                    NodeKind::WaitOutcome { on_timeout, .. } => Some(Flow::Goto(*on_timeout)),
                    _ => {
                        run.wait = None;
                        run.cascade_at += 1;
                        Some(execute(j, run, env, &mut fx))
                    }
                },
                _ => None,
            }
        }
        _ => None,
    };
    if let Some(flow) = flow {
        if matches!(flow, Flow::Goto(_)) {
            run.wait = None;
        }
        continue_from(j, run, flow, env, &mut fx);
    }
    fx
}

/// Ends an active run from outside (a journey with a higher priority took the person).
pub fn preempt(run: &mut Run, by: &str, now: Millis) -> Vec<Effect> {
    let mut fx = vec![];
    if run.is_active() {
        exit(
            run,
            ExitReason::Preempted { by: by.to_owned() },
            now,
            &mut fx,
        );
    }
    fx
}

fn exit(run: &mut Run, reason: ExitReason, now: Millis, fx: &mut Vec<Effect>) {
    run.wait = None;
    run.status = Status::Exited {
        reason: reason.clone(),
        at: now,
    };
    fx.push(Effect::Exited(reason));
}

fn continue_from(j: &Journey, run: &mut Run, flow: Flow, env: &mut dyn Env, fx: &mut Vec<Effect>) {
    if let Flow::Goto(next) = flow {
        if run.is_active() {
            go(j, run, next, env, fx);
        }
    }
}

/// Enters `next` and carries on until the run waits or ends.
fn go(
    j: &Journey,
    run: &mut Run,
    mut next: Option<usize>,
    env: &mut dyn Env,
    fx: &mut Vec<Effect>,
) {
    // Validation rejects loops that never wait; the bound guards a run stored under an older version.
    for _ in 0..=j.nodes.len() * 4 {
        let Some(n) = next else {
            exit(run, ExitReason::Completed, env.now(), fx);
            return;
        };
        run.node = n;
        run.step += 1;
        run.wait = None;
        run.cascade_at = 0;
        fx.push(Effect::Reached {
            node: j.nodes[n].name.clone(),
        });
        match execute(j, run, env, fx) {
            Flow::Goto(n) => next = n,
            Flow::Stop => return,
        }
        if !run.is_active() {
            return;
        }
    }
    exit(run, ExitReason::Completed, env.now(), fx);
}

/// Runs the current node (first visit, or again after a deferral or a cascade step that did not work).
fn execute(j: &Journey, run: &mut Run, env: &mut dyn Env, fx: &mut Vec<Effect>) -> Flow {
    let now = env.now();
    let Some(node) = j.nodes.get(run.node) else {
        exit(run, ExitReason::Completed, now, fx);
        return Flow::Stop;
    };
    match &node.kind {
        NodeKind::WaitFor { duration, next } => {
            if *duration == 0 {
                return Flow::Goto(*next);
            }
            run.wait = Some(Wait::Time {
                until: now + duration,
                retry: false,
            });
            Flow::Stop
        }
        NodeKind::WaitUntil { minute, .. } => {
            run.wait = Some(Wait::Time {
                until: local::next_time_of_day(now, &env.zone(), *minute),
                retry: false,
            });
            Flow::Stop
        }
        NodeKind::WaitEvent { timeout, .. } => {
            run.wait = Some(Wait::Event {
                until: now + timeout,
            });
            Flow::Stop
        }
        NodeKind::WaitOutcome {
            outcome,
            of,
            timeout,
            next,
            on_timeout,
        } => {
            let Some(m) = run.messages.iter().rev().find(|m| m.node == *of) else {
                // Nothing was sent (held back): there will be no outcome.
                return Flow::Goto(*on_timeout);
            };
            if m.outcomes.iter().any(|o| o.satisfies(*outcome)) {
                return Flow::Goto(*next);
            }
            if m.outcomes.iter().any(|o| o.is_failure()) {
                return Flow::Goto(*on_timeout);
            }
            run.wait = Some(Wait::Outcome {
                key: m.key.clone(),
                until: now + timeout,
            });
            Flow::Stop
        }
        NodeKind::Condition {
            test,
            then,
            otherwise,
        } => Flow::Goto(if env.holds(test) { *then } else { *otherwise }),
        NodeKind::Split { branches } => {
            let bucket = stable_bucket(&run.id, &node.name);
            match branches.iter().find(|(upto, _)| bucket < *upto) {
                Some((_, n)) => Flow::Goto(Some(*n)),
                None => {
                    exit(run, ExitReason::Holdout, now, fx);
                    Flow::Stop
                }
            }
        }
        NodeKind::Send {
            message,
            category,
            topic,
            offer,
            next,
        } => {
            let offer = offered(run, offer.as_deref());
            match propose(
                j,
                run,
                message,
                *category,
                topic.as_deref(),
                offer.as_deref(),
                env,
                fx,
            ) {
                Proposal::Sent(_) | Proposal::Held => Flow::Goto(*next),
                Proposal::Deferred => Flow::Stop,
            }
        }
        NodeKind::Cascade {
            steps,
            category,
            topic,
            offer,
            next,
        } => {
            let offer = offered(run, offer.as_deref());
            while let Some(step) = steps.get(run.cascade_at) {
                match propose(
                    j,
                    run,
                    step,
                    *category,
                    topic.as_deref(),
                    offer.as_deref(),
                    env,
                    fx,
                ) {
                    Proposal::Sent(key) => {
                        return match step.within {
                            Some(within) => {
                                run.wait = Some(Wait::Outcome {
                                    key,
                                    until: now + within,
                                });
                                Flow::Stop
                            }
                            None => Flow::Goto(*next),
                        };
                    }
                    Proposal::Deferred => return Flow::Stop,
                    Proposal::Held => run.cascade_at += 1,
                }
            }
            Flow::Goto(*next)
        }
        NodeKind::FirstReachable {
            channels,
            template,
            category,
            topic,
            next,
        } => {
            for channel in channels {
                let spec = MessageSpec {
                    channel: *channel,
                    template: template.clone(),
                    until: Outcome::Read,
                    within: None,
                };
                match propose(j, run, &spec, *category, topic.as_deref(), None, env, fx) {
                    Proposal::Sent(_) => return Flow::Goto(*next),
                    Proposal::Deferred => return Flow::Stop,
                    Proposal::Held => {}
                }
            }
            Flow::Goto(*next)
        }
        NodeKind::Update { traits, next } => {
            fx.push(Effect::UpdateTraits(traits.clone()));
            Flow::Goto(*next)
        }
        NodeKind::Webhook { url, next } => {
            let key = message_key(run, Channel::Webhook);
            fx.push(Effect::Send(Message {
                key,
                run: run.id.clone(),
                journey: j.id.clone(),
                profile: run.profile.clone(),
                node: node.name.clone(),
                channel: Channel::Webhook,
                address: url.clone(),
                template: None,
                category: Category::Transactional,
                topic: None,
            }));
            Flow::Goto(*next)
        }
        NodeKind::Exit => Flow::Goto(None),
    }
}

enum Proposal {
    Sent(String),
    Held,
    Deferred,
}

#[allow(clippy::too_many_arguments)]
fn propose(
    j: &Journey,
    run: &mut Run,
    spec: &MessageSpec,
    category: Category,
    topic: Option<&str>,
    offer: Option<&str>,
    env: &mut dyn Env,
    fx: &mut Vec<Effect>,
) -> Proposal {
    let node = j
        .nodes
        .get(run.node)
        .map(|n| n.name.clone())
        .unwrap_or_default();
    let key = message_key(run, spec.channel);
    let req = Request {
        key: &key,
        channel: spec.channel,
        category,
        topic,
        offer,
        quiet: j.quiet,
    };
    match env.clear(&req) {
        Clearance::Send { address } => {
            run.messages.push(SentMessage {
                key: key.clone(),
                node: run.node,
                channel: spec.channel,
                outcomes: vec![],
            });
            fx.push(Effect::Send(Message {
                key: key.clone(),
                run: run.id.clone(),
                journey: j.id.clone(),
                profile: run.profile.clone(),
                node,
                channel: spec.channel,
                address,
                template: Some(spec.template.clone()),
                category,
                topic: topic.map(str::to_owned),
            }));
            Proposal::Sent(key)
        }
        Clearance::Suppress(reason) => {
            fx.push(Effect::Held {
                node,
                channel: spec.channel,
                reason,
                deferred_until: None,
            });
            Proposal::Held
        }
        Clearance::Defer { until, reason } => {
            fx.push(Effect::Held {
                node,
                channel: spec.channel,
                reason,
                deferred_until: Some(until),
            });
            run.wait = Some(Wait::Time { until, retry: true });
            Proposal::Deferred
        }
    }
}

/// The idempotency key of the run's message on `channel` at its current step.
fn message_key(run: &Run, channel: Channel) -> String {
    format!("{}:{}:{}", run.id, run.step, channel)
}

/// The item a message offers: the trigger event's property named by `offer`.
fn offered(run: &Run, offer: Option<&str>) -> Option<String> {
    let v = run.trigger.as_ref()?.properties.get(offer?)?;
    Some(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// A stable number in 0..10000 for (run, node): the same person lands in the same branch on every replay.
pub fn stable_bucket(run: &str, node: &str) -> u32 {
    // FNV-1a, 64 bit: stable across versions and platforms, unlike the standard library's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in run.bytes().chain([0]).chain(node.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % 10_000) as u32
}

/// The journey whose active run of the person excludes `j` (same group, higher priority), if any. `others` are
/// the person's runs of other journeys with their journeys.
pub fn excluder<'a>(
    j: &Journey,
    others: impl IntoIterator<Item = (&'a Journey, &'a Run)>,
) -> Option<String> {
    let group = j.group.as_ref()?;
    others
        .into_iter()
        .find(|(o, r)| {
            r.is_active()
                && o.id != j.id
                && o.group.as_ref() == Some(group)
                && o.priority > j.priority
        })
        .map(|(o, _)| o.id.clone())
}

/// Whether the person may enter `j` at `now`: re-entry policy, the entry cap (`recent_entries`: entries of all
/// people in the cap's period) and exclusion by group. `Ok` names the runs (of lower-priority journeys of the
/// same group) the new run preempts.
pub fn admit<'a>(
    j: &Journey,
    own: &[&Run],
    others: impl IntoIterator<Item = (&'a Journey, &'a Run)>,
    recent_entries: usize,
    now: Millis,
) -> Result<Vec<String>, String> {
    if let Some(refusal) = reentry_refusal(j, own, now) {
        return Err(refusal.to_owned());
    }
    if let Some((max, _)) = j.entry_cap {
        if recent_entries >= max as usize {
            return Err("the journey's entry cap is reached".into());
        }
    }
    let mut preempt = vec![];
    if let Some(g) = &j.group {
        for (o, r) in others {
            if !r.is_active() || o.id == j.id || o.group.as_ref() != Some(g) {
                continue;
            }
            if o.priority >= j.priority {
                return Err(format!("in journey `{}`, which excludes this one", o.id));
            }
            preempt.push(r.id.clone());
        }
    }
    Ok(preempt)
}

/// When a date-triggered journey next starts a run for a person with these traits, at or after `from`.
pub fn next_date(
    j: &Journey,
    traits: &Map<String, Value>,
    zone: &TimeZone,
    from: Millis,
) -> Option<Millis> {
    let crate::definition::Trigger::Date {
        path,
        minute,
        offset,
        yearly,
    } = &j.trigger
    else {
        return None;
    };
    let mut v = traits.get(path.first()?);
    for part in &path[1..] {
        v = v.and_then(|x| x.get(part));
    }
    let date = local::date_of(v?.as_str()?, zone)?;
    local::next_date_time(date, *yearly, *minute, *offset, zone, from)
}

/// Whether a person with these runs of `j` may enter it again at `now`.
pub fn reentry_refusal(j: &Journey, runs: &[&Run], now: Millis) -> Option<&'static str> {
    use crate::definition::{Reentry, ReentryMode};
    if runs.iter().any(|r| r.is_active()) {
        return Some("already in the journey");
    }
    match &j.reentry {
        Reentry::Mode(ReentryMode::Once) if !runs.is_empty() => Some("entered once already"),
        Reentry::AtMost { at_most, .. } => {
            let recent = runs
                .iter()
                .filter(|r| r.entered_at > now - j.reentry_per)
                .count();
            (recent >= *at_most as usize).then_some("entered as often as allowed in the period")
        }
        _ => None,
    }
}

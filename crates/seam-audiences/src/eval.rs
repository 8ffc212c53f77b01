//! Evaluating a definition from scratch against one person's data, and explaining the result condition by
//! condition. This is the reference semantics: previews, `explain`, and the check that incrementally kept
//! membership equals a fresh evaluation all use it.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;
use serde_json::{Map, Value};

use crate::ast::{Agg, Cmp, EventSel, Expr, Literal, Metric, Operand, Test, Window};
use crate::digest::Needs;
use crate::print::print;

use seam_core::clock::format_rfc3339 as rfc3339;
pub use seam_core::Millis;

/// One of the person's events as evaluation sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonEvent {
    pub name: String,
    pub at: Millis,
    pub properties: Map<String, Value>,
}

/// What a definition is evaluated against.
pub struct Person<'a> {
    pub traits: &'a Map<String, Value>,
    /// `(type, value)` of each identifier the person holds.
    pub identities: &'a [(String, String)],
    pub events: &'a [PersonEvent],
    /// Membership of other segments, by name.
    pub in_segment: &'a dyn Fn(&str) -> bool,
}

/// Why a condition holds or not, with the values that decided it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub condition: String,
    pub result: bool,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Explanation>,
}

/// Whether `person` belongs to the segment `e` at `now`.
pub fn evaluate(e: &Expr, person: &Person<'_>, now: Millis) -> bool {
    Evaluator::new(person, now, false).explain(e).result
}

/// Evaluates `e` and says why, condition by condition.
pub fn explain(e: &Expr, person: &Person<'_>, now: Millis) -> Explanation {
    Evaluator::new(person, now, true).explain(e)
}

struct Evaluator<'p, 'a> {
    person: &'p Person<'a>,
    now: Millis,
    /// The value bound by the innermost `for some`.
    item: Option<Value>,
    /// Whether to say why (conditions and details as text, every part evaluated); without it only `result`
    /// is meaningful, and `and`/`or` stop at the first part that decides.
    explaining: bool,
}

impl<'p, 'a> Evaluator<'p, 'a> {
    fn new(person: &'p Person<'a>, now: Millis, explaining: bool) -> Self {
        Self {
            person,
            now,
            item: None,
            explaining,
        }
    }

    /// A result with its condition and the detail that decided it (the text only when explaining).
    fn node(
        &self,
        e: &Expr,
        result: bool,
        detail: impl FnOnce() -> String,
        parts: Vec<Explanation>,
    ) -> Explanation {
        let (condition, detail) = if self.explaining {
            (print(e), detail())
        } else {
            (String::new(), String::new())
        };
        Explanation {
            condition,
            result,
            detail,
            parts,
        }
    }

    fn explain(&mut self, e: &Expr) -> Explanation {
        let none = String::new;
        match e {
            Expr::And { args } | Expr::Or { args } => {
                let is_and = matches!(e, Expr::And { .. });
                if !self.explaining {
                    let result = if is_and {
                        args.iter().all(|a| self.explain(a).result)
                    } else {
                        args.iter().any(|a| self.explain(a).result)
                    };
                    return self.node(e, result, none, Vec::new());
                }
                let parts: Vec<Explanation> = args.iter().map(|a| self.explain(a)).collect();
                let result = if is_and {
                    parts.iter().all(|p| p.result)
                } else {
                    parts.iter().any(|p| p.result)
                };
                self.node(e, result, none, parts)
            }
            Expr::Not { arg } => {
                let inner = self.explain(arg);
                self.node(e, !inner.result, none, vec![inner])
            }
            Expr::Trait { path, test } => {
                let v = lookup(self.person.traits, path);
                let result = self.test(test, v);
                self.node(
                    e,
                    result,
                    || format!("{} is {}", path.join("."), shown(v)),
                    Vec::new(),
                )
            }
            Expr::Has { identifier } => {
                let n = self
                    .person
                    .identities
                    .iter()
                    .filter(|(t, _)| t == identifier)
                    .count();
                self.node(
                    e,
                    n > 0,
                    || format!("{n} {identifier} identifier(s)"),
                    Vec::new(),
                )
            }
            Expr::Consent { channel, topic } => {
                // Consents are traits: `consent.email = true` for the channel, `consent.email.marketing = true`
                // for one topic on it.
                let mut path = vec!["consent".to_owned(), channel.clone()];
                path.extend(topic.iter().cloned());
                let v = lookup(self.person.traits, &path);
                self.node(
                    e,
                    v == Some(&Value::Bool(true)),
                    || format!("{} is {}", path.join("."), shown(v)),
                    Vec::new(),
                )
            }
            Expr::InSegment { segment } => {
                let r = (self.person.in_segment)(segment);
                self.node(
                    e,
                    r,
                    || {
                        format!(
                            "{} a member of {segment:?}",
                            if r { "is" } else { "is not" }
                        )
                    },
                    Vec::new(),
                )
            }
            Expr::Compare { left, cmp, right } => {
                let l = self.metric(left);
                let r = match right {
                    Operand::Value { value } => match value {
                        Literal::Number(n) => Measure::Number(Some(*n)),
                        Literal::String(t) => Measure::Value(Some(Value::String(t.clone()))),
                        Literal::Bool(b) => Measure::Value(Some(Value::Bool(*b))),
                    },
                    Operand::Metric { metric } => self.metric(metric),
                    Operand::Ago { duration } => Measure::Time(Some(self.now - duration.millis())),
                };
                let r_shown = || match right {
                    Operand::Value { value } => literal_shown(value),
                    Operand::Metric { .. } | Operand::Ago { .. } => r.shown(),
                };
                let result = match (l.as_value(), r.as_value()) {
                    (Some(a), Some(b)) => match (a.as_f64(), b.as_f64()) {
                        (Some(x), Some(y)) => compare(*cmp, x, y),
                        _ => match cmp {
                            Cmp::Eq => a == b,
                            Cmp::Ne => a != b,
                            _ => false,
                        },
                    },
                    _ => false,
                };
                self.node(
                    e,
                    result,
                    || format!("{} {} {}", l.shown(), cmp.as_str(), r_shown()),
                    Vec::new(),
                )
            }
            Expr::Sequence {
                first,
                then,
                within,
                negated,
            } => {
                let firsts: Vec<Millis> =
                    self.matching(first, &Window::Ever).map(|e| e.at).collect();
                let thens: Vec<Millis> = self.matching(then, &Window::Ever).map(|e| e.at).collect();
                let w = within.millis();
                let followed = |a: Millis| thens.iter().any(|&b| b >= a && b <= a + w);
                if *negated {
                    // The most recent first event whose time to be followed has run out, not followed.
                    let last = firsts.iter().copied().filter(|&a| a + w <= self.now).max();
                    let result = last.is_some_and(|a| !followed(a));
                    let detail = || match last {
                        None => format!(
                            "no {:?} whose {} have passed",
                            first.event,
                            print_duration(within)
                        ),
                        Some(a) => format!(
                            "last {:?} at {}, {}",
                            first.event,
                            rfc3339(a),
                            if result { "not followed" } else { "followed" }
                        ),
                    };
                    self.node(e, result, detail, Vec::new())
                } else {
                    let hit = firsts.iter().copied().find(|&a| followed(a));
                    self.node(
                        e,
                        hit.is_some(),
                        || match hit {
                            Some(a) => format!("{:?} at {} was followed", first.event, rfc3339(a)),
                            None => {
                                format!("{} {:?}, none followed in time", firsts.len(), first.event)
                            }
                        },
                        Vec::new(),
                    )
                }
            }
            Expr::ForSome { property, expr } => {
                let mut values: HashSet<Distinct<'_>> = HashSet::new();
                let mut candidates = Vec::new();
                for ev in self.person.events {
                    if let Some(v) = lookup(&ev.properties, property) {
                        if values.insert(Distinct::of(v)) {
                            candidates.push(v.clone());
                        }
                    }
                }
                let saved = self.item.take();
                let mut found = None;
                for v in candidates {
                    self.item = Some(v.clone());
                    let inner = self.explain(expr);
                    if inner.result {
                        found = Some((v, inner));
                        break;
                    }
                }
                self.item = saved;
                match found {
                    Some((v, inner)) => self.node(
                        e,
                        true,
                        || format!("{} = {}", property.join("."), v),
                        vec![inner],
                    ),
                    None => self.node(
                        e,
                        false,
                        || {
                            format!(
                                "no value of {} among {} satisfies it",
                                property.join("."),
                                values.len()
                            )
                        },
                        Vec::new(),
                    ),
                }
            }
        }
    }

    fn matching<'s>(
        &'s self,
        sel: &'s EventSel,
        window: &'s Window,
    ) -> impl Iterator<Item = &'s PersonEvent> + 's {
        let now = self.now;
        self.person.events.iter().filter(move |ev| {
            ev.name == sel.event
                && in_window(ev.at, window, now)
                && sel
                    .filters
                    .iter()
                    .all(|f| self.test(&f.test, lookup(&ev.properties, &f.property)))
        })
    }

    fn metric(&self, m: &Metric) -> Measure {
        let events: Vec<&PersonEvent> = self.matching(&m.of, &m.window).collect();
        let numbers = |p: &Vec<String>| -> Vec<f64> {
            events
                .iter()
                .filter_map(|e| lookup(&e.properties, p).and_then(Value::as_f64))
                .collect()
        };
        match &m.agg {
            Agg::Count => Measure::Number(Some(events.len() as f64)),
            Agg::Sum { property } => Measure::Number(Some(numbers(property).iter().sum())),
            Agg::Avg { property } => {
                let v = numbers(property);
                Measure::Number((!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64))
            }
            Agg::Min { property } => {
                Measure::Number(numbers(property).into_iter().reduce(f64::min))
            }
            Agg::Max { property } => {
                Measure::Number(numbers(property).into_iter().reduce(f64::max))
            }
            Agg::Distinct { property } => {
                let set: HashSet<Distinct<'_>> = events
                    .iter()
                    .filter_map(|e| lookup(&e.properties, property))
                    .map(Distinct::of)
                    .collect();
                Measure::Number(Some(set.len() as f64))
            }
            Agg::FirstTime => Measure::Time(events.iter().map(|e| e.at).min()),
            Agg::LastTime => Measure::Time(events.iter().map(|e| e.at).max()),
            Agg::LastValue { property } => Measure::Value(
                events
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        lookup(&e.properties, property)
                            .filter(|v| !v.is_null())
                            .map(|v| (e.at, i, v))
                    })
                    .max_by_key(|(at, i, _)| (*at, *i))
                    .map(|(_, _, v)| v.clone()),
            ),
            Agg::MostFrequent { property } => Measure::Value(most_frequent(
                events.iter().enumerate().filter_map(|(i, e)| {
                    lookup(&e.properties, property)
                        .filter(|v| !v.is_null())
                        .map(|v| (e.at, i, v))
                }),
            )),
            Agg::PreferredHour => {
                let hours: Vec<Value> = events
                    .iter()
                    .map(|e| Value::from(e.at.rem_euclid(86_400_000) / 3_600_000))
                    .collect();
                Measure::Value(most_frequent(
                    events
                        .iter()
                        .zip(&hours)
                        .enumerate()
                        .map(|(i, (e, h))| (e.at, i, h)),
                ))
            }
        }
    }

    fn test(&self, t: &Test, v: Option<&Value>) -> bool {
        test_value(t, v, self.item.as_ref())
    }
}

/// Whether `ev` is one of the events `sel` selects (its name, and every filter on its properties).
pub fn event_matches(sel: &EventSel, ev: &PersonEvent) -> bool {
    ev.name == sel.event
        && sel
            .filters
            .iter()
            .all(|f| test_value(&f.test, lookup(&ev.properties, &f.property), None))
}

/// The test of one value; `item` is the value `for some` is trying, if any.
fn test_value(t: &Test, v: Option<&Value>, item: Option<&Value>) -> bool {
    {
        let present = v.filter(|v| !v.is_null());
        match t {
            Test::IsSet => present.is_some(),
            Test::IsNotSet => present.is_none(),
            Test::IsItem => match (present, item) {
                (Some(v), Some(item)) => v == item,
                _ => false,
            },
            Test::Contains { value } => match present {
                Some(Value::String(s)) => s.contains(value.as_str()),
                Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(value.as_str())),
                _ => false,
            },
            Test::In { values } => present.is_some_and(|v| values.iter().any(|l| literal_eq(l, v))),
            Test::Compare { cmp, value } => match present {
                None => *cmp == Cmp::Ne,
                Some(v) => match (cmp, value, v) {
                    (Cmp::Eq, l, v) => literal_eq(l, v),
                    (Cmp::Ne, l, v) => !literal_eq(l, v),
                    (c, Literal::Number(n), Value::Number(x)) => {
                        x.as_f64().is_some_and(|x| compare(*c, x, *n))
                    }
                    _ => false,
                },
            },
        }
    }
}

enum Measure {
    Number(Option<f64>),
    Time(Option<Millis>),
    /// A value of any type (last value, most frequent value, preferred hour).
    Value(Option<Value>),
}

/// A JSON value as values are told apart: a string by its text, anything else by its JSON text (so the string
/// `"1"` and the number `1` are two values). Strings, the usual item, are neither copied nor printed.
#[derive(PartialEq, Eq, Hash)]
enum Distinct<'v> {
    Text(&'v str),
    Other(String),
}

impl<'v> Distinct<'v> {
    fn of(v: &'v Value) -> Self {
        match v {
            Value::String(s) => Distinct::Text(s),
            other => Distinct::Other(other.to_string()),
        }
    }
}

/// The most frequent value; a tie goes to the one seen most recently. Items are (time, order, value).
fn most_frequent<'v>(items: impl Iterator<Item = (Millis, usize, &'v Value)>) -> Option<Value> {
    let mut counts: HashMap<Distinct<'v>, (usize, (Millis, usize), &'v Value)> = HashMap::new();
    for (at, i, v) in items {
        let entry = counts.entry(Distinct::of(v)).or_insert((0, (at, i), v));
        entry.0 += 1;
        entry.1 = entry.1.max((at, i));
    }
    counts
        .into_values()
        .max_by_key(|(n, last, _)| (*n, *last))
        .map(|(_, _, v)| v.clone())
}

impl Measure {
    /// The measure as a JSON value (times as milliseconds); `None` when there is nothing to measure.
    fn as_value(&self) -> Option<Value> {
        match self {
            Measure::Number(n) => n.map(Value::from),
            Measure::Time(t) => t.map(Value::from),
            Measure::Value(v) => v.clone(),
        }
    }

    fn shown(&self) -> String {
        match self {
            Measure::Number(Some(n)) => format!("{n}"),
            Measure::Time(Some(t)) => rfc3339(*t),
            Measure::Value(Some(v)) => v.to_string(),
            Measure::Number(None) | Measure::Time(None) | Measure::Value(None) => {
                "nothing".to_owned()
            }
        }
    }
}

fn in_window(at: Millis, w: &Window, now: Millis) -> bool {
    match w {
        Window::Ever => at <= now,
        Window::Last { duration } => at > now - duration.millis() && at <= now,
        Window::Between { from, to } => at > now - from.millis() && at <= now - to.millis(),
    }
}

fn compare(c: Cmp, a: f64, b: f64) -> bool {
    match c {
        Cmp::Eq => a == b,
        Cmp::Ne => a != b,
        Cmp::Lt => a < b,
        Cmp::Le => a <= b,
        Cmp::Gt => a > b,
        Cmp::Ge => a >= b,
    }
}

fn literal_eq(l: &Literal, v: &Value) -> bool {
    match (l, v) {
        (Literal::Bool(a), Value::Bool(b)) => a == b,
        (Literal::Number(a), Value::Number(b)) => b.as_f64() == Some(*a),
        (Literal::String(a), Value::String(b)) => a == b,
        _ => false,
    }
}

fn literal_shown(l: &Literal) -> String {
    match l {
        Literal::Bool(b) => b.to_string(),
        Literal::Number(n) => format!("{n}"),
        Literal::String(s) => format!("{s:?}"),
    }
}

fn lookup<'v>(map: &'v Map<String, Value>, path: &[String]) -> Option<&'v Value> {
    let (first, rest) = path.split_first()?;
    let mut v = map.get(first)?;
    for p in rest {
        v = v.as_object()?.get(p)?;
    }
    Some(v)
}

fn shown(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => "not set".to_owned(),
        Some(v) => v.to_string(),
    }
}

fn print_duration(d: &crate::ast::Duration) -> String {
    format!("{} {}", d.amount, d.unit.as_str())
}

/// The earliest instant after `now` at which the definition's result for this person may change with no new
/// event (see [`Needs::next_change`], which gives it for several definitions at once).
pub fn next_change(e: &Expr, person: &Person<'_>, now: Millis) -> Option<Millis> {
    Needs::of([e], []).next_change(person.events, now)
}

/// How definitions use the events of one name.
#[derive(Debug, Default)]
pub(crate) struct EventUse<'e> {
    /// Durations after an event at which a result may change because of it (windows, `N ago`, `within`).
    pub durations: BTreeSet<Millis>,
    /// Whether some use looks at all of time (a window of `ever`, a sequence): such events never stop mattering.
    pub forever: bool,
    /// Top-level properties read (filters, measured properties).
    pub properties: BTreeSet<&'e str>,
}

/// What one or more definitions read of a person's events.
#[derive(Debug, Default)]
pub(crate) struct Uses<'e> {
    pub events: std::collections::BTreeMap<&'e str, EventUse<'e>>,
    /// Top-level properties whose values `for some` ranges over (taken from events of any name).
    pub items: BTreeSet<&'e str>,
}

impl<'e> Uses<'e> {
    fn select(&mut self, sel: &'e EventSel) -> &mut EventUse<'e> {
        let u = self.events.entry(sel.event.as_str()).or_default();
        for f in &sel.filters {
            if let Some(p) = f.property.first() {
                u.properties.insert(p);
            }
        }
        u
    }

    pub(crate) fn metric(&mut self, m: &'e Metric, ago: Option<Millis>) {
        let u = self.select(&m.of);
        match &m.agg {
            Agg::Sum { property }
            | Agg::Avg { property }
            | Agg::Min { property }
            | Agg::Max { property }
            | Agg::Distinct { property }
            | Agg::LastValue { property }
            | Agg::MostFrequent { property } => {
                if let Some(p) = property.first() {
                    u.properties.insert(p);
                }
            }
            Agg::Count | Agg::FirstTime | Agg::LastTime | Agg::PreferredHour => {}
        }
        match &m.window {
            Window::Ever => u.forever = true,
            Window::Last { duration } => {
                u.durations.insert(duration.millis());
            }
            Window::Between { from, to } => {
                u.durations.insert(from.millis());
                u.durations.insert(to.millis());
            }
        }
        if let Some(d) = ago {
            u.durations.insert(d);
        }
    }

    pub(crate) fn expr(&mut self, e: &'e Expr) {
        match e {
            Expr::And { args } | Expr::Or { args } => args.iter().for_each(|a| self.expr(a)),
            Expr::Not { arg } => self.expr(arg),
            Expr::ForSome { property, expr } => {
                if let Some(p) = property.first() {
                    self.items.insert(p);
                }
                self.expr(expr);
            }
            Expr::Compare { left, right, .. } => {
                let ago = match right {
                    Operand::Ago { duration } => Some(duration.millis()),
                    Operand::Value { .. } | Operand::Metric { .. } => None,
                };
                self.metric(left, ago);
                if let Operand::Metric { metric } = right {
                    self.metric(metric, None);
                }
            }
            Expr::Sequence {
                first,
                then,
                within,
                ..
            } => {
                for sel in [first, then] {
                    let u = self.select(sel);
                    u.forever = true;
                    u.durations.insert(within.millis());
                }
            }
            Expr::Trait { .. }
            | Expr::Has { .. }
            | Expr::Consent { .. }
            | Expr::InSegment { .. } => {}
        }
    }
}

/// Definitions that may refer to each other by name (`in segment "…"`), evaluated together.
#[derive(Debug, Clone, Default)]
pub struct Library {
    defs: HashMap<String, Expr>,
}

/// How deep `in segment` may refer through other segments.
const MAX_REFERENCE_DEPTH: usize = 8;

impl Library {
    pub fn new(defs: impl IntoIterator<Item = (String, Expr)>) -> Self {
        Self {
            defs: defs.into_iter().collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&Expr> {
        self.defs.get(name)
    }

    /// Explains `e` for a person, resolving `in segment` through this library.
    pub fn explain(
        &self,
        e: &Expr,
        traits: &Map<String, Value>,
        identities: &[(String, String)],
        events: &[PersonEvent],
        now: Millis,
    ) -> Explanation {
        self.explain_at(e, traits, identities, events, now, 0, true)
    }

    #[allow(clippy::too_many_arguments)]
    fn explain_at(
        &self,
        e: &Expr,
        traits: &Map<String, Value>,
        identities: &[(String, String)],
        events: &[PersonEvent],
        now: Millis,
        depth: usize,
        explaining: bool,
    ) -> Explanation {
        let in_segment = |name: &str| {
            depth < MAX_REFERENCE_DEPTH
                && self.defs.get(name).is_some_and(|d| {
                    self.explain_at(d, traits, identities, events, now, depth + 1, false)
                        .result
                })
        };
        let person = Person {
            traits,
            identities,
            events,
            in_segment: &in_segment,
        };
        Evaluator::new(&person, now, explaining).explain(e)
    }

    /// Whether the person is in `e`. When time alone may change that is [`Needs::next_change`] of the
    /// definitions evaluated together (with those `e` refers to).
    pub fn evaluate(
        &self,
        e: &Expr,
        traits: &Map<String, Value>,
        identities: &[(String, String)],
        events: &[PersonEvent],
        now: Millis,
    ) -> bool {
        self.explain_at(e, traits, identities, events, now, 0, false)
            .result
    }
}

/// The value of a measure for a person at `now` (a computed trait); `None` when there is nothing to measure.
/// Times are milliseconds since the epoch. When time alone may change it is [`Needs::next_change`] of the
/// measures (and definitions) evaluated together.
pub fn measure(m: &Metric, person: &Person<'_>, now: Millis) -> Option<Value> {
    Evaluator::new(person, now, false).metric(m).as_value()
}

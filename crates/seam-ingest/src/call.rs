//! Segment-spec calls validated field by field into normalised events, written in the form the log stores.
//!
//! An event is read from its body without building it as a tree: only the fields Seam looks into (ids,
//! times, names, identify traits, a few parts of `context`) are parsed, and the stored JSON is written
//! directly, with `properties` and the rest of `context` copied over as they came (`crate::json`). What it
//! stores parses to the same [`Event`] a field-by-field reading of the parsed body gives (property test
//! against `call::reference`).

use std::fmt::Write as _;

use phonenumber::country::Id as Region;
use seam_core::clock::parse_rfc3339;
use seam_core::{Event, EventType, Identifier, IdentifierRules, IdentifierType, Millis};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::body::Body;
use crate::json::{self, is_null, Members};
use crate::normalize::{is_junk_identifier, EmailAddress, PhoneE164};

/// The endpoint a body arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
    Batch,
}

impl CallKind {
    /// The call named by the last path segment: `identify` or its short form `i`, and so on.
    pub fn from_path(segment: &str) -> Option<Self> {
        Some(match segment {
            "identify" | "i" => Self::Identify,
            "track" | "t" => Self::Track,
            "page" | "p" => Self::Page,
            "screen" | "s" => Self::Screen,
            "group" | "g" => Self::Group,
            "alias" | "a" => Self::Alias,
            "batch" | "b" | "import" => Self::Batch,
            _ => return None,
        })
    }

    fn event_type(self) -> Option<EventType> {
        Some(match self {
            Self::Identify => EventType::Identify,
            Self::Track => EventType::Track,
            Self::Page => EventType::Page,
            Self::Screen => EventType::Screen,
            Self::Group => EventType::Group,
            Self::Alias => EventType::Alias,
            Self::Batch => return None,
        })
    }
}

/// Size and shape limits at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub max_message_id_chars: usize,
    pub max_identifier_chars: usize,
    /// Nesting depth of objects and arrays inside one event.
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_event_bytes: 32 * 1024,
            max_batch_bytes: 500 * 1024,
            max_batch_events: 2_500,
            max_message_id_chars: 100,
            max_identifier_chars: 255,
            max_depth: 32,
        }
    }
}

/// What validation needs to know about the workspace.
#[derive(Debug, Clone)]
pub struct IngestOptions<'a> {
    pub limits: Limits,
    pub default_region: Option<Region>,
    pub rules: &'a IdentifierRules,
}

/// An event that passed validation: its stored JSON form and the columns the log keeps beside it.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub index: usize,
    pub message_id: String,
    pub kind: EventType,
    /// The track event's name, or the page/screen name.
    pub name: Option<String>,
    pub timestamp: Millis,
    pub received_at: Millis,
    /// The normalised [`Event`] as JSON.
    pub json: String,
}

impl Accepted {
    /// The normalised event, read back from its JSON.
    pub fn event(&self) -> Event {
        serde_json::from_str(&self.json).expect("an accepted event's JSON is an Event")
    }
}

/// One rejected event (or the whole body when `index` is `None`), with the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub index: Option<usize>,
    pub field: String,
    pub reason: String,
    /// The rejection is about size (HTTP 413 when it is the only kind of rejection).
    pub too_large: bool,
}

impl FieldError {
    fn new(index: Option<usize>, field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            index,
            field: field.into(),
            reason: reason.into(),
            too_large: false,
        }
    }
}

/// The outcome of one request: the write key the body carried, the accepted events and the rejected ones.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    pub write_key: Option<String>,
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<FieldError>,
}

/// Validates a decoded body received at `received_at` on the endpoint `kind`.
pub fn parse_call(
    kind: CallKind,
    body: &Body<'_>,
    received_at: Millis,
    opts: &IngestOptions<'_>,
) -> Parsed {
    let top = body.members();
    let mut out = Parsed {
        write_key: body.write_key(),
        ..Default::default()
    };

    if kind != CallKind::Batch {
        let event = Item {
            members: top,
            left_out: &["writeKey"],
        };
        let result = parse_event(
            0,
            kind.event_type(),
            &event,
            &Batch::default(),
            received_at,
            opts,
        );
        push(&mut out, 0, result);
        return out;
    }

    let batch_sent_at = match top.get("sentAt").map(|v| time_field(&json::value(v))) {
        Some(Err(reason)) => {
            out.rejected.push(FieldError::new(None, "sentAt", reason));
            return out;
        }
        Some(Ok(t)) => t,
        None => None,
    };
    let batch_context = match top.get("context") {
        None => Members::default(),
        Some(v) if is_null(v) => Members::default(),
        Some(v) => match Members::of(v) {
            Some(m) => m,
            None => {
                out.rejected
                    .push(FieldError::new(None, "context", "must be an object"));
                return out;
            }
        },
    };
    let items = match body.batch() {
        Some(json::Items::Events(items)) => items,
        Some(json::Items::NotAnArray) => {
            out.rejected.push(batch_not_an_array());
            return out;
        }
        None => {
            out.rejected.push(batch_missing());
            return out;
        }
    };
    if let Some(e) = batch_too_large(items.len(), opts) {
        out.rejected.push(e);
        return out;
    }
    let batch = Batch {
        sent_at: batch_sent_at,
        context: batch_context,
    };
    out.accepted.reserve(items.len());
    for (i, item) in items.iter().enumerate() {
        let result = match item {
            Some(members) => {
                let event = Item {
                    members,
                    left_out: &[],
                };
                parse_event(i, None, &event, &batch, received_at, opts)
            }
            None => Err(item_not_an_object(i)),
        };
        push(&mut out, i, result);
    }
    out
}

/// The refusals of a batch as a whole and of one of its items, one wording for both readings of a body (this
/// one and the test oracle's): no `batch` member, ...
fn batch_missing() -> FieldError {
    FieldError::new(None, "batch", "is required: an array of events")
}

/// ... a `batch` that is not an array, ...
fn batch_not_an_array() -> FieldError {
    FieldError::new(None, "batch", "must be an array of events")
}

/// ... a batch of `events` past the configured limit (too large), ...
fn batch_too_large(events: usize, opts: &IngestOptions<'_>) -> Option<FieldError> {
    let limit = opts.limits.max_batch_events;
    (events > limit).then(|| FieldError {
        too_large: true,
        ..FieldError::new(
            None,
            "batch",
            format!("holds {events} events; the limit is {limit}"),
        )
    })
}

/// ... and an item `i` that is not an object.
fn item_not_an_object(i: usize) -> FieldError {
    FieldError::new(Some(i), "", "each batch item must be a JSON object")
}

fn push(out: &mut Parsed, index: usize, r: Result<Accepted, FieldError>) {
    match r {
        Ok(mut a) => {
            a.index = index;
            out.accepted.push(a);
        }
        Err(e) => out.rejected.push(e),
    }
}

#[derive(Default)]
struct Batch<'a> {
    sent_at: Option<Millis>,
    context: Members<'a>,
}

/// One event's members, and those of them that are the request's, not the event's (a single call's
/// `writeKey`).
struct Item<'m, 'a> {
    members: &'m Members<'a>,
    left_out: &'static [&'static str],
}

/// A part of the stored event: as it came in the request, or as Seam changed it.
enum Part<'a> {
    Text(&'a RawValue),
    Parsed(Value),
}

impl Part<'_> {
    fn push(&self, out: &mut String) {
        match self {
            Self::Text(raw) => json::push_compact(out, raw),
            Self::Parsed(v) => out.push_str(&v.to_string()),
        }
    }
}

/// `traits` or `properties`: absent, `null` and `{}` are all empty, and stored as absent.
fn object_part(raw: Option<&RawValue>) -> Option<&RawValue> {
    raw.filter(|v| !is_null(v) && !is_empty_object(v))
}

fn is_empty_object(raw: &RawValue) -> bool {
    let inner = raw.get().trim();
    inner.starts_with('{') && inner[1..].trim_start().starts_with('}')
}

fn parse_event(
    i: usize,
    implied: Option<EventType>,
    item: &Item<'_, '_>,
    batch: &Batch<'_>,
    received_at: Millis,
    opts: &IngestOptions<'_>,
) -> Result<Accepted, FieldError> {
    let err = |field: &str, reason: String| FieldError::new(Some(i), field, reason);
    let lim = &opts.limits;
    let obj = item.members;
    let f = Fields::of(obj);
    let field = |raw: Option<&RawValue>| raw.map(json::value);

    let kind = match implied {
        Some(k) => k,
        None => call_type(i, field(f.kind))?,
    };

    // Structure first: nesting depth and object-typed fields.
    for (name, raw) in [
        ("traits", f.traits),
        ("properties", f.properties),
        ("context", f.context),
        ("integrations", f.integrations),
    ] {
        if let Some(v) = raw {
            if !v.get().starts_with('{') && !is_null(v) {
                return Err(err(name, "must be an object".into()));
            }
            if let Some(d) = json::deeper_than(v, lim.max_depth) {
                return Err(err(
                    name,
                    format!("is nested {d} levels deep; the limit is {}", lim.max_depth),
                ));
            }
        }
    }
    let is_identify = kind == EventType::Identify;
    let own_context = f.context.and_then(Members::of).unwrap_or_default();
    // Identify traits are changed (canonical e-mail and phone, context.traits filled in), so they are parsed;
    // the traits of other calls are stored as they came.
    let mut traits = match object_part(f.traits) {
        Some(raw) if !is_identify => TraitsPart::Text(raw),
        Some(raw) => TraitsPart::Parsed(json::object(raw)),
        None if is_identify => TraitsPart::Parsed(Map::new()),
        None => TraitsPart::None,
    };
    if let TraitsPart::Parsed(traits) = &mut traits {
        // Some SDKs (RudderStack's) send identify traits only in context.traits.
        if let Some(ct) = own_context.get("traits").and_then(Members::of) {
            for (k, v) in ct.distinct() {
                if !traits.contains_key(k) {
                    traits.insert(k.to_owned(), json::value(v));
                }
            }
        }
    }
    // The event's context, then what the batch's adds.
    let mut context: Vec<(&str, Part<'_>)> = own_context
        .distinct()
        .into_iter()
        .map(|(k, v)| (k, Part::Text(v)))
        .collect();
    let own_keys = own_context.key_set();
    for (k, v) in batch.context.distinct() {
        if !own_keys.contains(k) {
            context.push((k, Part::Text(v)));
        }
    }
    let in_context = |context: &[(&str, Part<'_>)], key: &str| -> Option<Value> {
        context
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, p)| match p {
                Part::Text(raw) => json::value(raw),
                Part::Parsed(v) => v.clone(),
            })
    };

    let message_id = message_id_field(i, field(f.message_id), lim)?;
    let ids = Ids::read(
        i,
        kind,
        [
            field(f.user_id),
            field(f.anonymous_id),
            field(f.previous_id),
            field(f.group_id),
        ],
        lim,
    )?;
    let name = event_name(i, kind, field(f.event), field(f.name))?;
    let (timestamp, sent_at, original) = times(
        i,
        field(f.timestamp).or_else(|| field(f.original_timestamp)),
        field(f.sent_at),
        batch.sent_at,
        received_at,
    )?;

    // Identifiers, normalised; the traits keep the canonical forms too.
    let mut identifiers = ids.identifiers();
    if let TraitsPart::Parsed(traits) = &mut traits {
        take_identifiers("traits", traits, opts, &mut identifiers).map_err(|(f, r)| err(&f, r))?;
    }
    if let Some(slot) = context.iter_mut().find(|(k, _)| *k == "traits") {
        let mut parsed = match &slot.1 {
            Part::Text(raw) => json::value(raw),
            Part::Parsed(v) => v.clone(),
        };
        if let Value::Object(ct) = &mut parsed {
            take_identifiers("context.traits", ct, opts, &mut identifiers)
                .map_err(|(f, r)| err(&f, r))?;
            slot.1 = Part::Parsed(parsed);
        }
    }
    if let Some(Value::Array(ext)) = in_context(&context, "externalIds") {
        external_ids(i, &ext, opts, &mut identifiers)?;
    }
    identifiers.sort();
    identifiers.dedup();

    let source = context
        .iter()
        .find(|(k, _)| *k == "library")
        .and_then(|(_, p)| match p {
            Part::Text(raw) => Members::of(raw)?.get("name").map(json::value),
            Part::Parsed(v) => v.get("name").cloned(),
        })
        .and_then(|v| v.as_str().map(str::to_owned));
    let channel = field(f.channel)
        .or_else(|| in_context(&context, "channel"))
        .and_then(|v| v.as_str().map(str::to_owned));

    let properties = object_part(f.properties);
    let message_id = match message_id {
        Some(id) => id,
        None => {
            let mut left_out = vec!["traits", "properties", "context"];
            left_out.extend_from_slice(item.left_out);
            let traits = match &traits {
                TraitsPart::Parsed(m) => m.clone(),
                TraitsPart::Text(raw) => json::object(raw),
                TraitsPart::None => Map::new(),
            };
            let properties = properties.map(json::object).unwrap_or_default();
            derived_message_id(
                i,
                kind,
                &obj.to_map(&left_out),
                &traits,
                &properties,
                original,
                received_at,
            )
        }
    };

    // The stored form: the fields of `Event` in its order, those empty left out as its serde form does.
    let mut out =
        String::with_capacity(256 + obj.iter().map(|(_, v)| v.get().len()).sum::<usize>());
    out.push_str("{\"message_id\":");
    json::push_str(&mut out, &message_id);
    out.push_str(",\"type\":\"");
    out.push_str(kind.as_str());
    out.push('"');
    for (key, value) in [
        ("event", &name),
        ("user_id", &ids.user_id),
        ("anonymous_id", &ids.anonymous_id),
        ("previous_id", &ids.previous_id),
        ("group_id", &ids.group_id),
    ] {
        if let Some(v) = value {
            push_key(&mut out, key);
            json::push_str(&mut out, v);
        }
    }
    if !identifiers.is_empty() {
        push_key(&mut out, "identifiers");
        out.push('[');
        for (n, id) in identifiers.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            out.push_str("{\"type\":");
            json::push_str(&mut out, id.kind.as_str());
            out.push_str(",\"value\":");
            json::push_str(&mut out, &id.value);
            out.push('}');
        }
        out.push(']');
    }
    match &traits {
        TraitsPart::Parsed(m) if !m.is_empty() => {
            push_key(&mut out, "traits");
            out.push_str(&serde_json::to_string(m).unwrap_or_default());
        }
        TraitsPart::Text(raw) => {
            push_key(&mut out, "traits");
            json::push_compact(&mut out, raw);
        }
        _ => {}
    }
    if let Some(raw) = properties {
        push_key(&mut out, "properties");
        json::push_compact(&mut out, raw);
    }
    if !context.is_empty() {
        push_key(&mut out, "context");
        out.push('{');
        for (n, (k, part)) in context.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            json::push_str(&mut out, k);
            out.push(':');
            part.push(&mut out);
        }
        out.push('}');
    }
    push_key(&mut out, "timestamp");
    let _ = write!(out, "{timestamp}");
    push_key(&mut out, "received_at");
    let _ = write!(out, "{received_at}");
    for (key, value) in [("sent_at", sent_at), ("original_timestamp", original)] {
        if let Some(t) = value {
            push_key(&mut out, key);
            let _ = write!(out, "{t}");
        }
    }
    for (key, value) in [("source", &source), ("channel", &channel)] {
        if let Some(v) = value {
            push_key(&mut out, key);
            json::push_str(&mut out, v);
        }
    }
    out.push('}');

    if out.len() > lim.max_event_bytes {
        let mut e = err(
            "",
            format!(
                "the event is {} bytes; the limit is {}",
                out.len(),
                lim.max_event_bytes
            ),
        );
        e.too_large = true;
        return Err(e);
    }
    Ok(Accepted {
        index: i,
        message_id,
        kind,
        name,
        timestamp,
        received_at,
        json: out,
    })
}

/// The members an event is read from, found in one pass (a key written twice: the later).
#[derive(Default)]
struct Fields<'a> {
    kind: Option<&'a RawValue>,
    message_id: Option<&'a RawValue>,
    user_id: Option<&'a RawValue>,
    anonymous_id: Option<&'a RawValue>,
    previous_id: Option<&'a RawValue>,
    group_id: Option<&'a RawValue>,
    event: Option<&'a RawValue>,
    name: Option<&'a RawValue>,
    timestamp: Option<&'a RawValue>,
    original_timestamp: Option<&'a RawValue>,
    sent_at: Option<&'a RawValue>,
    channel: Option<&'a RawValue>,
    traits: Option<&'a RawValue>,
    properties: Option<&'a RawValue>,
    context: Option<&'a RawValue>,
    integrations: Option<&'a RawValue>,
}

impl<'a> Fields<'a> {
    fn of(members: &Members<'a>) -> Self {
        let mut f = Self::default();
        for (key, value) in members.iter() {
            let slot = match key {
                "type" => &mut f.kind,
                "messageId" => &mut f.message_id,
                "userId" => &mut f.user_id,
                "anonymousId" => &mut f.anonymous_id,
                "previousId" => &mut f.previous_id,
                "groupId" => &mut f.group_id,
                "event" => &mut f.event,
                "name" => &mut f.name,
                "timestamp" => &mut f.timestamp,
                "originalTimestamp" => &mut f.original_timestamp,
                "sentAt" => &mut f.sent_at,
                "channel" => &mut f.channel,
                "traits" => &mut f.traits,
                "properties" => &mut f.properties,
                "context" => &mut f.context,
                "integrations" => &mut f.integrations,
                _ => continue,
            };
            *slot = Some(value);
        }
        f
    }
}

/// An event's traits: none, as they came, or parsed (an identify's, which Seam changes).
enum TraitsPart<'a> {
    None,
    Text(&'a RawValue),
    Parsed(Map<String, Value>),
}

fn push_key(out: &mut String, key: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
}

/// The `type` of a batch item: one of the calls.
fn call_type(i: usize, v: Option<Value>) -> Result<EventType, FieldError> {
    let err = |reason: String| FieldError::new(Some(i), "type", reason);
    match v {
        Some(Value::String(t)) => match EventType::parse(&t) {
            Some(k) if k.kind() == seam_core::EventKind::Received => Ok(k),
            _ => Err(err(format!(
                "{t:?} is not one of identify, track, page, screen, group, alias"
            ))),
        },
        Some(_) => Err(err("must be a string".into())),
        None => Err(err("is required in a batch item".into())),
    }
}

/// The `messageId` sent, if a usable one was.
fn message_id_field(
    i: usize,
    v: Option<Value>,
    lim: &Limits,
) -> Result<Option<String>, FieldError> {
    let err = |reason: String| FieldError::new(Some(i), "messageId", reason);
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match scalar_string(&v) {
            Some(s) if s.trim().is_empty() => Ok(None),
            Some(s) if s.chars().count() > lim.max_message_id_chars => Err(err(format!(
                "is longer than {} characters",
                lim.max_message_id_chars
            ))),
            Some(s) => Ok(Some(s)),
            None => Err(err("must be a string".into())),
        },
    }
}

/// The ids of a call (junk values dropped), checked against what the call needs.
struct Ids {
    user_id: Option<String>,
    anonymous_id: Option<String>,
    previous_id: Option<String>,
    group_id: Option<String>,
}

impl Ids {
    /// `sent`: the values of `userId`, `anonymousId`, `previousId` and `groupId`, where sent.
    fn read(
        i: usize,
        kind: EventType,
        sent: [Option<Value>; 4],
        lim: &Limits,
    ) -> Result<Self, FieldError> {
        let err = |field: &str, reason: String| FieldError::new(Some(i), field, reason);
        let [user, anonymous, previous, group] = sent;
        let (user_sent, anonymous_sent) = (user.is_some(), anonymous.is_some());
        let (previous_sent, group_sent) = (previous.is_some(), group.is_some());
        let ids = Self {
            user_id: identifier_field(user, lim).map_err(|r| err("userId", r))?,
            anonymous_id: identifier_field(anonymous, lim).map_err(|r| err("anonymousId", r))?,
            previous_id: identifier_field(previous, lim).map_err(|r| err("previousId", r))?,
            group_id: identifier_field(group, lim).map_err(|r| err("groupId", r))?,
        };
        let required = |sent: bool, what: &str| {
            if sent {
                format!("{what}; the value sent is not a usable identifier")
            } else {
                format!("is required: {what}")
            }
        };
        match kind {
            EventType::Alias if ids.user_id.is_none() => Err(err(
                "userId",
                required(user_sent, "alias needs the new userId"),
            )),
            EventType::Alias if ids.previous_id.is_none() => Err(err(
                "previousId",
                required(previous_sent, "alias needs the previousId"),
            )),
            EventType::Alias => Ok(ids),
            _ if ids.user_id.is_none() && ids.anonymous_id.is_none() => Err(err(
                if user_sent || !anonymous_sent {
                    "userId"
                } else {
                    "anonymousId"
                },
                "userId or anonymousId is required and must be a usable identifier".into(),
            )),
            EventType::Group if ids.group_id.is_none() => Err(err(
                "groupId",
                required(group_sent, "group needs a groupId"),
            )),
            _ => Ok(ids),
        }
    }

    fn identifiers(&self) -> Vec<Identifier> {
        let mut out = Vec::with_capacity(4);
        if let Some(u) = &self.user_id {
            out.push(Identifier::new(
                IdentifierType::builtin(IdentifierType::USER_ID),
                u.clone(),
            ));
        }
        if let Some(a) = &self.anonymous_id {
            out.push(Identifier::new(
                IdentifierType::builtin(IdentifierType::ANONYMOUS_ID),
                a.clone(),
            ));
        }
        out
    }
}

/// A track event's name (`event`), or a page's or screen's (`name`).
fn event_name(
    i: usize,
    kind: EventType,
    event: Option<Value>,
    name: Option<Value>,
) -> Result<Option<String>, FieldError> {
    let err = |field: &str, reason: &str| FieldError::new(Some(i), field, reason);
    match kind {
        EventType::Track => match event {
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 255 => {
                Ok(Some(s.trim().to_owned()))
            }
            Some(Value::String(s)) if s.trim().is_empty() => Err(err("event", "must not be empty")),
            Some(Value::String(_)) => Err(err("event", "is longer than 255 characters")),
            Some(_) => Err(err("event", "must be a string")),
            None => Err(err("event", "is required for track")),
        },
        EventType::Page | EventType::Screen => match name {
            Some(Value::String(s)) => Ok(Some(s)),
            None | Some(Value::Null) => Ok(None),
            Some(_) => Err(err("name", "must be a string")),
        },
        _ => Ok(None),
    }
}

/// `(timestamp, sent_at, original_timestamp)`: when it happened, corrected for the sender's clock skew
/// (`receivedAt − (sentAt − originalTimestamp)`), from the event's time, its `sentAt` or the batch's.
fn times(
    i: usize,
    original: Option<Value>,
    sent_at: Option<Value>,
    batch_sent_at: Option<Millis>,
    received_at: Millis,
) -> Result<(Millis, Option<Millis>, Option<Millis>), FieldError> {
    let err = |field: &str, reason: String| FieldError::new(Some(i), field, reason);
    let original = match original {
        Some(v) => time_field(&v).map_err(|r| err("timestamp", r))?,
        None => None,
    };
    let sent_at = match sent_at {
        Some(v) => time_field(&v).map_err(|r| err("sentAt", r))?,
        None => None,
    }
    .or(batch_sent_at);
    let timestamp = match (original, sent_at) {
        (Some(orig), Some(sent)) => received_at - (sent - orig),
        (Some(orig), None) => orig,
        (None, _) => received_at,
    };
    Ok((timestamp, sent_at, original))
}

/// The identifiers of `context.externalIds` whose types the workspace knows, normalised.
fn external_ids(
    i: usize,
    ext: &[Value],
    opts: &IngestOptions<'_>,
    identifiers: &mut Vec<Identifier>,
) -> Result<(), FieldError> {
    for (j, item) in ext.iter().enumerate() {
        let field = format!("context.externalIds[{j}]");
        let err = |reason: String| FieldError::new(Some(i), field.as_str(), reason);
        let t = item
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| err("needs a string type".into()))?;
        let v = item
            .get("id")
            .and_then(scalar_string)
            .ok_or_else(|| err("needs an id".into()))?;
        let v = v.trim();
        let Ok(kind) = IdentifierType::parse(t) else {
            continue;
        };
        if !opts.rules.knows(kind.as_str())
            || is_junk_identifier(v)
            || v.chars().count() > opts.limits.max_identifier_chars
        {
            continue;
        }
        let value = match kind.as_str() {
            IdentifierType::EMAIL => EmailAddress::parse(v).map_err(err)?.as_str().to_owned(),
            IdentifierType::PHONE => PhoneE164::parse(v, opts.default_region)
                .map_err(err)?
                .as_str()
                .to_owned(),
            _ => v.to_owned(),
        };
        identifiers.push(Identifier::new(kind, value));
    }
    Ok(())
}

/// The e-mail, phone and custom identifiers a traits object holds (`where_` names it in errors); the
/// e-mail and phone are written back in their canonical forms.
fn take_identifiers(
    where_: &str,
    map: &mut Map<String, Value>,
    opts: &IngestOptions<'_>,
    identifiers: &mut Vec<Identifier>,
) -> Result<(), (String, String)> {
    let field = |name: &str| format!("{where_}.{name}");
    if let Some(v) = map.get("email").filter(|v| !v.is_null()) {
        let raw = scalar_string(v).ok_or_else(|| (field("email"), "must be a string".into()))?;
        if !is_junk_identifier(&raw) {
            let e = EmailAddress::parse(&raw).map_err(|r| (field("email"), r))?;
            map.insert("email".into(), Value::String(e.as_str().to_owned()));
            identifiers.push(Identifier::new(
                IdentifierType::builtin(IdentifierType::EMAIL),
                e.as_str(),
            ));
        }
    }
    if let Some(v) = map.get("phone").filter(|v| !v.is_null()) {
        let raw = scalar_string(v).ok_or_else(|| (field("phone"), "must be a string".into()))?;
        if !is_junk_identifier(&raw) {
            let p = PhoneE164::parse(&raw, opts.default_region).map_err(|r| (field("phone"), r))?;
            map.insert("phone".into(), Value::String(p.as_str().to_owned()));
            identifiers.push(Identifier::new(
                IdentifierType::builtin(IdentifierType::PHONE),
                p.as_str(),
            ));
        }
    }
    for custom in opts.rules.custom_types() {
        if let Some(v) = map.get(custom.as_str()).and_then(scalar_string) {
            let v = v.trim();
            if !is_junk_identifier(v) && v.chars().count() <= opts.limits.max_identifier_chars {
                identifiers.push(Identifier::new(custom.clone(), v));
            }
        }
    }
    Ok(())
}

/// A string, or a number written as a string (many SDKs send numeric ids).
fn scalar_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// An identifier field: absent, junk (treated as absent) or a usable trimmed value.
fn identifier_field(v: Option<Value>, lim: &Limits) -> Result<Option<String>, String> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let s = scalar_string(&v)
                .ok_or_else(|| format!("must be a string or a number, not {}", type_name(&v)))?;
            let s = s.trim();
            if s.chars().count() > lim.max_identifier_chars {
                return Err(format!(
                    "is longer than {} characters",
                    lim.max_identifier_chars
                ));
            }
            Ok((!is_junk_identifier(s)).then(|| s.to_owned()))
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// An ISO 8601 string or epoch milliseconds.
fn time_field(v: &Value) -> Result<Option<Millis>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => parse_rfc3339(s)
            .map(Some)
            .ok_or_else(|| format!("{s:?} is not an ISO 8601 date-time")),
        Value::Number(n) => n
            .as_i64()
            .filter(|ms| (0..=32_503_680_000_000).contains(ms))
            .map(Some)
            .ok_or_else(|| "must be an ISO 8601 string or epoch milliseconds".to_owned()),
        _ => Err("must be an ISO 8601 date-time string".into()),
    }
}

/// A stable id for an event sent without a messageId, so that a retried identical call is still stored once.
fn derived_message_id(
    i: usize,
    kind: EventType,
    rest: &Map<String, Value>,
    traits: &Map<String, Value>,
    properties: &Map<String, Value>,
    original: Option<Millis>,
    received_at: Millis,
) -> String {
    let mut h1: u64 = 0xcbf2_9ce4_8422_2325;
    let mut h2: u64 = 0x6c62_272e_07bb_0142;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            h1 = (h1 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
            h2 = (h2 ^ b as u64)
                .wrapping_mul(0x0000_0100_0000_01b3)
                .rotate_left(5);
        }
    };
    feed(kind.as_str().as_bytes());
    feed(serde_json::to_string(rest).unwrap_or_default().as_bytes());
    feed(serde_json::to_string(traits).unwrap_or_default().as_bytes());
    feed(
        serde_json::to_string(properties)
            .unwrap_or_default()
            .as_bytes(),
    );
    match original {
        Some(t) => feed(&t.to_le_bytes()),
        // Without a client timestamp two identical calls are only the same if they arrive together.
        None => {
            feed(&received_at.to_le_bytes());
            feed(&i.to_le_bytes());
        }
    }
    format!("seam-{h1:016x}{h2:016x}")
}

#[cfg(test)]
mod reference;
#[cfg(test)]
mod tests;

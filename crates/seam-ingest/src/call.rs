//! Segment-spec calls validated field by field into normalised [`Event`]s.

use phonenumber::country::Id as Region;
use seam_core::clock::parse_rfc3339;
use seam_core::{Event, EventType, Identifier, IdentifierRules, IdentifierType, Millis};
use serde_json::{Map, Value};

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

/// An event that passed validation, with its stored JSON form.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub index: usize,
    pub event: Event,
    pub json: String,
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
    body: Value,
    received_at: Millis,
    opts: &IngestOptions<'_>,
) -> Parsed {
    let Value::Object(mut top) = body else {
        return Parsed {
            rejected: vec![FieldError::new(None, "", "the body must be a JSON object")],
            ..Default::default()
        };
    };
    let write_key = top
        .get("writeKey")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut out = Parsed {
        write_key,
        ..Default::default()
    };

    if kind != CallKind::Batch {
        top.remove("writeKey");
        push(
            &mut out,
            0,
            parse_event(
                0,
                kind.event_type(),
                top,
                &Batch::default(),
                received_at,
                opts,
            ),
        );
        return out;
    }

    let batch_sent_at = match top.get("sentAt").map(|v| time_field(v, "sentAt")) {
        Some(Err(reason)) => {
            out.rejected.push(FieldError::new(None, "sentAt", reason));
            return out;
        }
        Some(Ok(t)) => t,
        None => None,
    };
    let batch_context = match top.remove("context") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => Map::new(),
        Some(_) => {
            out.rejected
                .push(FieldError::new(None, "context", "must be an object"));
            return out;
        }
    };
    let items = match top.remove("batch") {
        Some(Value::Array(items)) => items,
        Some(_) => {
            out.rejected
                .push(FieldError::new(None, "batch", "must be an array of events"));
            return out;
        }
        None => {
            out.rejected.push(FieldError::new(
                None,
                "batch",
                "is required: an array of events",
            ));
            return out;
        }
    };
    if items.len() > opts.limits.max_batch_events {
        let mut e = FieldError::new(
            None,
            "batch",
            format!(
                "holds {} events; the limit is {}",
                items.len(),
                opts.limits.max_batch_events
            ),
        );
        e.too_large = true;
        out.rejected.push(e);
        return out;
    }
    let batch = Batch {
        sent_at: batch_sent_at,
        context: batch_context,
    };
    out.accepted.reserve(items.len());
    for (i, item) in items.into_iter().enumerate() {
        let result = match item {
            Value::Object(obj) => parse_event(i, None, obj, &batch, received_at, opts),
            _ => Err(FieldError::new(
                Some(i),
                "",
                "each batch item must be a JSON object",
            )),
        };
        push(&mut out, i, result);
    }
    out
}

fn push(out: &mut Parsed, index: usize, r: Result<(Event, String), FieldError>) {
    match r {
        Ok((event, json)) => out.accepted.push(Accepted { index, event, json }),
        Err(e) => out.rejected.push(e),
    }
}

#[derive(Default)]
struct Batch {
    sent_at: Option<Millis>,
    context: Map<String, Value>,
}

fn parse_event(
    i: usize,
    implied: Option<EventType>,
    mut obj: Map<String, Value>,
    batch: &Batch,
    received_at: Millis,
    opts: &IngestOptions<'_>,
) -> Result<(Event, String), FieldError> {
    let err = |field: &str, reason: String| FieldError::new(Some(i), field, reason);
    let lim = &opts.limits;

    let kind = match implied {
        Some(k) => k,
        None => match obj.get("type") {
            Some(Value::String(t)) => match EventType::parse(t) {
                Some(k) if k.kind() == seam_core::EventKind::Received => k,
                _ => {
                    return Err(err(
                        "type",
                        format!("{t:?} is not one of identify, track, page, screen, group, alias"),
                    ))
                }
            },
            Some(_) => return Err(err("type", "must be a string".into())),
            None => return Err(err("type", "is required in a batch item".into())),
        },
    };

    // Structure first: nesting depth and object-typed fields.
    for field in ["traits", "properties", "context", "integrations"] {
        if let Some(v) = obj.get(field) {
            if !v.is_object() && !v.is_null() {
                return Err(err(field, "must be an object".into()));
            }
            let d = depth(v);
            if d > lim.max_depth {
                return Err(err(
                    field,
                    format!("is nested {d} levels deep; the limit is {}", lim.max_depth),
                ));
            }
        }
    }
    let mut traits = take_object(&mut obj, "traits");
    let properties = take_object(&mut obj, "properties");
    let mut context = take_object(&mut obj, "context");
    if kind == EventType::Identify {
        // Some SDKs (RudderStack's) send identify traits only in context.traits.
        if let Some(Value::Object(ct)) = context.get("traits") {
            for (k, v) in ct {
                traits.entry(k.clone()).or_insert_with(|| v.clone());
            }
        }
    }
    for (k, v) in &batch.context {
        context.entry(k.clone()).or_insert_with(|| v.clone());
    }

    let message_id = match obj.get("messageId") {
        None | Some(Value::Null) => None,
        Some(v) => match scalar_string(v) {
            Some(s) if s.trim().is_empty() => None,
            Some(s) if s.chars().count() > lim.max_message_id_chars => {
                return Err(err(
                    "messageId",
                    format!("is longer than {} characters", lim.max_message_id_chars),
                ))
            }
            Some(s) => Some(s),
            None => return Err(err("messageId", "must be a string".into())),
        },
    };

    let user_id = identifier_field(&obj, "userId", lim).map_err(|r| err("userId", r))?;
    let anonymous_id =
        identifier_field(&obj, "anonymousId", lim).map_err(|r| err("anonymousId", r))?;
    let previous_id =
        identifier_field(&obj, "previousId", lim).map_err(|r| err("previousId", r))?;
    let group_id = identifier_field(&obj, "groupId", lim).map_err(|r| err("groupId", r))?;

    match kind {
        EventType::Alias => {
            if user_id.is_none() {
                return Err(err(
                    "userId",
                    required_reason(&obj, "userId", "alias needs the new userId"),
                ));
            }
            if previous_id.is_none() {
                return Err(err(
                    "previousId",
                    required_reason(&obj, "previousId", "alias needs the previousId"),
                ));
            }
        }
        _ if user_id.is_none() && anonymous_id.is_none() => {
            let field = if obj.contains_key("userId") || !obj.contains_key("anonymousId") {
                "userId"
            } else {
                "anonymousId"
            };
            return Err(err(
                field,
                "userId or anonymousId is required and must be a usable identifier".into(),
            ));
        }
        EventType::Group if group_id.is_none() => {
            return Err(err(
                "groupId",
                required_reason(&obj, "groupId", "group needs a groupId"),
            ));
        }
        _ => {}
    }

    let name = match kind {
        EventType::Track => match obj.get("event") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 255 => {
                Some(s.trim().to_owned())
            }
            Some(Value::String(s)) if s.trim().is_empty() => {
                return Err(err("event", "must not be empty".into()))
            }
            Some(Value::String(_)) => {
                return Err(err("event", "is longer than 255 characters".into()))
            }
            Some(_) => return Err(err("event", "must be a string".into())),
            None => return Err(err("event", "is required for track".into())),
        },
        EventType::Page | EventType::Screen => match obj.get("name") {
            Some(Value::String(s)) => Some(s.clone()),
            None | Some(Value::Null) => None,
            Some(_) => return Err(err("name", "must be a string".into())),
        },
        _ => None,
    };

    let original = match obj
        .get("timestamp")
        .or_else(|| obj.get("originalTimestamp"))
    {
        Some(v) => time_field(v, "timestamp").map_err(|r| err("timestamp", r))?,
        None => None,
    };
    let sent_at = match obj.get("sentAt") {
        Some(v) => time_field(v, "sentAt").map_err(|r| err("sentAt", r))?,
        None => None,
    }
    .or(batch.sent_at);
    let timestamp = match (original, sent_at) {
        (Some(orig), Some(sent)) => received_at - (sent - orig),
        (Some(orig), None) => orig,
        (None, _) => received_at,
    };

    // Identifiers, normalised; the traits keep the canonical forms too.
    let mut identifiers = Vec::with_capacity(4);
    if let Some(u) = &user_id {
        identifiers.push(Identifier::new(
            IdentifierType::builtin(IdentifierType::USER_ID),
            u.clone(),
        ));
    }
    if let Some(a) = &anonymous_id {
        identifiers.push(Identifier::new(
            IdentifierType::builtin(IdentifierType::ANONYMOUS_ID),
            a.clone(),
        ));
    }
    let is_identify = kind == EventType::Identify;
    for (where_, map) in [
        ("traits", Some(&mut traits)),
        ("context.traits", context_traits(&mut context)),
    ] {
        let Some(map) = map else { continue };
        if where_ == "traits" && !is_identify {
            continue; // group traits describe the group, not the person
        }
        if let Some(v) = map.get("email").filter(|v| !v.is_null()) {
            let raw = scalar_string(v)
                .ok_or_else(|| err(&format!("{where_}.email"), "must be a string".into()))?;
            if !is_junk_identifier(&raw) {
                let e =
                    EmailAddress::parse(&raw).map_err(|r| err(&format!("{where_}.email"), r))?;
                map.insert("email".into(), Value::String(e.as_str().to_owned()));
                identifiers.push(Identifier::new(
                    IdentifierType::builtin(IdentifierType::EMAIL),
                    e.as_str(),
                ));
            }
        }
        if let Some(v) = map.get("phone").filter(|v| !v.is_null()) {
            let raw = scalar_string(v)
                .ok_or_else(|| err(&format!("{where_}.phone"), "must be a string".into()))?;
            if !is_junk_identifier(&raw) {
                let p = PhoneE164::parse(&raw, opts.default_region)
                    .map_err(|r| err(&format!("{where_}.phone"), r))?;
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
                if !is_junk_identifier(v) && v.chars().count() <= lim.max_identifier_chars {
                    identifiers.push(Identifier::new(custom.clone(), v));
                }
            }
        }
    }
    if let Some(Value::Array(ext)) = context.get("externalIds") {
        for (j, item) in ext.iter().enumerate() {
            let field = format!("context.externalIds[{j}]");
            let t = item
                .get("type")
                .and_then(Value::as_str)
                .ok_or_else(|| err(&field, "needs a string type".into()))?;
            let v = item
                .get("id")
                .and_then(scalar_string)
                .ok_or_else(|| err(&field, "needs an id".into()))?;
            let v = v.trim();
            if let Ok(kind) = IdentifierType::parse(t) {
                if opts.rules.knows(kind.as_str())
                    && !is_junk_identifier(v)
                    && v.chars().count() <= lim.max_identifier_chars
                {
                    let value = match kind.as_str() {
                        IdentifierType::EMAIL => EmailAddress::parse(v)
                            .map_err(|r| err(&field, r))?
                            .as_str()
                            .to_owned(),
                        IdentifierType::PHONE => PhoneE164::parse(v, opts.default_region)
                            .map_err(|r| err(&field, r))?
                            .as_str()
                            .to_owned(),
                        _ => v.to_owned(),
                    };
                    identifiers.push(Identifier::new(kind, value));
                }
            }
        }
    }
    identifiers.sort();
    identifiers.dedup();

    let source = context
        .get("library")
        .and_then(|l| l.get("name"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let channel = obj
        .get("channel")
        .or_else(|| context.get("channel"))
        .and_then(Value::as_str)
        .map(str::to_owned);

    let message_id = message_id.unwrap_or_else(|| {
        derived_message_id(i, kind, &obj, &traits, &properties, original, received_at)
    });

    let event = Event {
        message_id,
        kind,
        event: name,
        user_id,
        anonymous_id,
        previous_id,
        group_id,
        identifiers,
        traits,
        properties,
        context,
        timestamp,
        received_at,
        sent_at,
        original_timestamp: original,
        source,
        channel,
    };
    let json = serde_json::to_string(&event).expect("events serialise");
    if json.len() > lim.max_event_bytes {
        let mut e = err(
            "",
            format!(
                "the event is {} bytes; the limit is {}",
                json.len(),
                lim.max_event_bytes
            ),
        );
        e.too_large = true;
        return Err(e);
    }
    Ok((event, json))
}

fn take_object(obj: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match obj.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

fn context_traits(context: &mut Map<String, Value>) -> Option<&mut Map<String, Value>> {
    context.get_mut("traits").and_then(Value::as_object_mut)
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
fn identifier_field(
    obj: &Map<String, Value>,
    key: &str,
    lim: &Limits,
) -> Result<Option<String>, String> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            let s = scalar_string(v)
                .ok_or_else(|| format!("must be a string or a number, not {}", type_name(v)))?;
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

fn required_reason(obj: &Map<String, Value>, key: &str, what: &str) -> String {
    if obj.contains_key(key) {
        format!("{what}; the value sent is not a usable identifier")
    } else {
        format!("is required: {what}")
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
fn time_field(v: &Value, _name: &str) -> Result<Option<Millis>, String> {
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

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
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
mod tests;

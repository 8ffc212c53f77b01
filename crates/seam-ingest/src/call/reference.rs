//! The straightforward reading of a call, kept as the oracle the text-based one in `call` is checked against:
//! the whole body parsed into a `Value`, each event's fields taken out of its map.

use seam_core::{Event, EventType, Identifier, IdentifierType, Millis};
use serde_json::{Map, Value};

use super::{
    derived_message_id, scalar_string, time_field, CallKind, FieldError, IngestOptions, Limits,
};
use crate::normalize::{is_junk_identifier, EmailAddress, PhoneE164};

/// What one request gives: the write key, then each event by index, accepted or rejected.
#[derive(Debug, Default)]
pub(super) struct Parsed {
    pub write_key: Option<String>,
    pub accepted: Vec<(usize, Event)>,
    pub rejected: Vec<FieldError>,
}

/// Validates a parsed body received at `received_at` on the endpoint `kind`.
pub(super) fn parse_call(
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

    let batch_sent_at = match top.get("sentAt").map(time_field) {
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

fn push(out: &mut Parsed, index: usize, r: Result<Event, FieldError>) {
    match r {
        Ok(event) => out.accepted.push((index, event)),
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
) -> Result<Event, FieldError> {
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
        Some(v) => time_field(v).map_err(|r| err("timestamp", r))?,
        None => None,
    };
    let sent_at = match obj.get("sentAt") {
        Some(v) => time_field(v).map_err(|r| err("sentAt", r))?,
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
    Ok(event)
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

fn identifier_field(
    obj: &Map<String, Value>,
    key: &str,
    lim: &Limits,
) -> Result<Option<String>, String> {
    super::identifier_field(obj.get(key).cloned(), lim)
}

fn required_reason(obj: &Map<String, Value>, key: &str, what: &str) -> String {
    if obj.contains_key(key) {
        format!("{what}; the value sent is not a usable identifier")
    } else {
        format!("is required: {what}")
    }
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

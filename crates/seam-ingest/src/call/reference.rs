//! The straightforward reading of a call, kept as the oracle the text-based one in `call` is checked against:
//! the whole body parsed into a `Value`, each event's fields taken out of its map, `context` merged and
//! traits canonicalised in place, the event built and serialised. The checks of single values (ids, names,
//! times, external ids) are `call`'s own, shared: what this oracle checks is the reading of the text.

use seam_core::{Event, EventType, Millis};
use serde_json::{Map, Value};

use super::{
    batch_missing, batch_not_an_array, batch_too_large, call_type, derived_message_id, event_name,
    external_ids, item_not_an_object, message_id_field, take_identifiers, time_field, times,
    CallKind, FieldError, Ids, IngestOptions,
};

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
    for (i, item) in items.into_iter().enumerate() {
        let result = match item {
            Value::Object(obj) => parse_event(i, None, obj, &batch, received_at, opts),
            _ => Err(item_not_an_object(i)),
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
        None => call_type(i, obj.get("type").cloned())?,
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

    let message_id = message_id_field(i, obj.get("messageId").cloned(), lim)?;
    let ids = Ids::read(
        i,
        kind,
        ["userId", "anonymousId", "previousId", "groupId"].map(|k| obj.get(k).cloned()),
        lim,
    )?;
    let name = event_name(i, kind, obj.get("event").cloned(), obj.get("name").cloned())?;
    let (timestamp, sent_at, original) = times(
        i,
        obj.get("timestamp")
            .or_else(|| obj.get("originalTimestamp"))
            .cloned(),
        obj.get("sentAt").cloned(),
        batch.sent_at,
        received_at,
    )?;

    let mut identifiers = ids.identifiers();
    let found = |(field, reason): (String, String)| FieldError::new(Some(i), field, reason);
    if kind == EventType::Identify {
        // group traits describe the group, not the person
        take_identifiers("traits", &mut traits, opts, &mut identifiers).map_err(found)?;
    }
    if let Some(ct) = context_traits(&mut context) {
        take_identifiers("context.traits", ct, opts, &mut identifiers).map_err(found)?;
    }
    if let Some(Value::Array(ext)) = context.get("externalIds") {
        external_ids(i, ext, opts, &mut identifiers)?;
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
        user_id: ids.user_id,
        anonymous_id: ids.anonymous_id,
        previous_id: ids.previous_id,
        group_id: ids.group_id,
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

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

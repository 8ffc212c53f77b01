use serde_json::json;

use super::*;
use crate::normalize::parse_region;

const NOW: Millis = 1_795_392_000_000; // 2026-11-23T00:00:00Z

fn parse(kind: CallKind, body: Value) -> Parsed {
    let rules = IdentifierRules::default();
    let opts = IngestOptions {
        limits: Limits::default(),
        default_region: parse_region("RU").ok(),
        rules: &rules,
    };
    parse_call(kind, body, NOW, &opts)
}

fn only_error(p: &Parsed) -> &FieldError {
    assert!(p.accepted.is_empty(), "{:?}", p.accepted);
    assert_eq!(p.rejected.len(), 1, "{:?}", p.rejected);
    &p.rejected[0]
}

#[test]
fn an_identify_call_is_normalised() {
    let p = parse(
        CallKind::Identify,
        json!({"userId": 42, "anonymousId": "a-1", "messageId": "m1", "writeKey": "wk",
               "traits": {"email": " Anna@Example.com ", "phone": "8 (912) 345-67-89", "name": "Anna"},
               "context": {"library": {"name": "analytics-python"}}}),
    );
    assert_eq!(p.write_key.as_deref(), Some("wk"));
    let e = &p.accepted[0].event;
    assert_eq!(e.user_id.as_deref(), Some("42"));
    assert_eq!(e.traits["email"], "anna@example.com");
    assert_eq!(e.traits["phone"], "+79123456789");
    let ids: Vec<String> = e.identifiers.iter().map(ToString::to_string).collect();
    assert_eq!(
        ids,
        [
            "anonymous_id:a-1",
            "email:anna@example.com",
            "phone:+79123456789",
            "user_id:42"
        ]
    );
    assert_eq!(e.source.as_deref(), Some("analytics-python"));
    assert_eq!(e.timestamp, NOW);
}

#[test]
fn clock_skew_is_corrected_from_sent_at() {
    // The device clock is 1 hour fast: it says the event happened at 01:00 and was sent at 01:05.
    let p = parse(
        CallKind::Batch,
        json!({"sentAt": "2026-11-23T01:05:00Z",
               "batch": [{"type": "track", "event": "Order Completed", "userId": "1",
                          "timestamp": "2026-11-23T01:00:00Z"}]}),
    );
    let e = &p.accepted[0].event;
    assert_eq!(
        e.timestamp,
        NOW - 5 * 60_000,
        "receivedAt − (sentAt − originalTimestamp)"
    );
    assert_eq!(e.original_timestamp, Some(NOW + 3_600_000));
}

#[test]
fn a_batch_keeps_valid_events_and_names_each_rejected_one_by_index() {
    let p = parse(
        CallKind::Batch,
        json!({"batch": [
            {"type": "track", "event": "A", "userId": "1"},
            {"type": "track", "event": "B", "userId": {"id": 1}},
            {"type": "track", "event": "C"},
            {"type": "bogus", "userId": "1"},
            {"type": "identify", "userId": "2", "traits": {"email": "nope"}},
            {"type": "page", "anonymousId": "x"},
        ]}),
    );
    assert_eq!(
        p.accepted.iter().map(|a| a.index).collect::<Vec<_>>(),
        [0, 5]
    );
    let errs: Vec<(Option<usize>, &str)> = p
        .rejected
        .iter()
        .map(|e| (e.index, e.field.as_str()))
        .collect();
    assert_eq!(
        errs,
        [
            (Some(1), "userId"),
            (Some(2), "userId"),
            (Some(3), "type"),
            (Some(4), "traits.email")
        ]
    );
    assert!(p.rejected[0].reason.contains("not an object"));
}

#[test]
fn junk_identifiers_are_never_used_for_identity() {
    let p = parse(
        CallKind::Track,
        json!({"event": "X", "userId": "undefined", "anonymousId": "0"}),
    );
    assert_eq!(only_error(&p).field, "userId");
    let p = parse(
        CallKind::Track,
        json!({"event": "X", "userId": "null", "anonymousId": "a-7"}),
    );
    let e = &p.accepted[0].event;
    assert_eq!(e.user_id, None);
    assert_eq!(e.identifiers.len(), 1);
}

#[test]
fn oversized_events_and_batches_are_refused_as_too_large() {
    let big = "x".repeat(40_000);
    let p = parse(
        CallKind::Track,
        json!({"event": "X", "userId": "1", "properties": {"blob": big}}),
    );
    let e = only_error(&p);
    assert!(e.too_large && e.reason.contains("limit is 32768"), "{e:?}");
    let items: Vec<Value> = (0..2_501)
        .map(|_| json!({"type": "track", "event": "X", "userId": "1"}))
        .collect();
    let p = parse(CallKind::Batch, json!({ "batch": items }));
    let e = only_error(&p);
    assert_eq!(
        (e.index, e.field.as_str(), e.too_large),
        (None, "batch", true)
    );
}

#[test]
fn absurd_nesting_and_long_message_ids_are_named() {
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!({ "x": deep });
    }
    let p = parse(
        CallKind::Track,
        json!({"event": "X", "userId": "1", "properties": deep}),
    );
    assert_eq!(only_error(&p).field, "properties");
    let p = parse(
        CallKind::Track,
        json!({"event": "X", "userId": "1", "messageId": "m".repeat(101)}),
    );
    assert_eq!(only_error(&p).field, "messageId");
}

#[test]
fn alias_needs_both_ids_and_group_needs_a_group_id() {
    assert_eq!(
        only_error(&parse(CallKind::Alias, json!({"userId": "1"}))).field,
        "previousId"
    );
    assert_eq!(
        only_error(&parse(CallKind::Group, json!({"userId": "1"}))).field,
        "groupId"
    );
    let p = parse(
        CallKind::Alias,
        json!({"userId": "1", "previousId": "anon-1"}),
    );
    assert_eq!(p.accepted[0].event.previous_id.as_deref(), Some("anon-1"));
}

#[test]
fn events_without_a_message_id_get_a_stable_one() {
    let body = json!({"event": "X", "userId": "1", "timestamp": "2026-11-22T10:00:00Z"});
    let a = parse(CallKind::Track, body.clone());
    let b = parse(CallKind::Track, body);
    assert_eq!(
        a.accepted[0].event.message_id,
        b.accepted[0].event.message_id
    );
    assert!(a.accepted[0].event.message_id.starts_with("seam-"));
}

#[test]
fn custom_identifier_types_come_from_external_ids_and_traits() {
    let mut rules = IdentifierRules::default();
    rules.set(
        IdentifierType::parse("loyalty_card").unwrap(),
        seam_core::TypeRule {
            priority: 60,
            limit: 1,
        },
    );
    let opts = IngestOptions {
        limits: Limits::default(),
        default_region: None,
        rules: &rules,
    };
    let p = parse_call(
        CallKind::Identify,
        json!({"userId": "1", "traits": {"loyalty_card": "C-77"},
               "context": {"externalIds": [{"id": "C-78", "type": "loyalty_card", "collection": "users"},
                                           {"id": "x", "type": "not_configured"}]}}),
        NOW,
        &opts,
    );
    let ids: Vec<String> = p.accepted[0]
        .event
        .identifiers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, ["loyalty_card:C-77", "loyalty_card:C-78", "user_id:1"]);
}

use serde_json::json;

use super::reference;
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
    parse_value(kind, &body, &opts)
}

/// `body` sent as JSON text and read as the server reads it.
fn parse_value(kind: CallKind, body: &Value, opts: &IngestOptions<'_>) -> Parsed {
    let decoded = crate::Decoded::json(body.to_string());
    parse_call(kind, &decoded.body(kind).unwrap(), NOW, opts)
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
    let e = &p.accepted[0].event();
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
    let e = &p.accepted[0].event();
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
    let e = &p.accepted[0].event();
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
    assert_eq!(p.accepted[0].event().previous_id.as_deref(), Some("anon-1"));
}

#[test]
fn events_without_a_message_id_get_a_stable_one() {
    let body = json!({"event": "X", "userId": "1", "timestamp": "2026-11-22T10:00:00Z"});
    let a = parse(CallKind::Track, body.clone());
    let b = parse(CallKind::Track, body);
    assert_eq!(
        a.accepted[0].event().message_id,
        b.accepted[0].event().message_id
    );
    assert!(a.accepted[0].event().message_id.starts_with("seam-"));
}

#[test]
fn custom_identifier_types_come_from_external_ids_and_traits() {
    let rules = rules_with_a_loyalty_card();
    let opts = IngestOptions {
        limits: Limits::default(),
        default_region: None,
        rules: &rules,
    };
    let p = parse_value(
        CallKind::Identify,
        &json!({"userId": "1", "traits": {"loyalty_card": "C-77"},
               "context": {"externalIds": [{"id": "C-78", "type": "loyalty_card", "collection": "users"},
                                           {"id": "x", "type": "not_configured"}]}}),
        &opts,
    );
    let ids: Vec<String> = p.accepted[0]
        .event()
        .identifiers
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(ids, ["loyalty_card:C-77", "loyalty_card:C-78", "user_id:1"]);
}

/// Compares the text-based reading of `text` with the oracle's reading of the same text parsed into a `Value`.
fn same_as_the_reference(
    kind: CallKind,
    text: &str,
    opts: &IngestOptions<'_>,
) -> Result<(), String> {
    let decoded = crate::Decoded::json(text);
    let parsed = parse_call(kind, &decoded.body(kind).unwrap(), NOW, opts);
    let expected = reference::parse_call(kind, serde_json::from_str(text).unwrap(), NOW, opts);
    if parsed.write_key != expected.write_key {
        return Err(format!(
            "write key {:?} / {:?}",
            parsed.write_key, expected.write_key
        ));
    }
    if parsed.rejected != expected.rejected {
        return Err(format!(
            "rejected {:?} / {:?}",
            parsed.rejected, expected.rejected
        ));
    }
    let got: Vec<(usize, Event)> = parsed
        .accepted
        .iter()
        .map(|a| (a.index, a.event()))
        .collect();
    if got != expected.accepted {
        return Err(format!("accepted {got:?} / {:?}", expected.accepted));
    }
    for a in &parsed.accepted {
        let e = a.event();
        let columns = (&a.message_id, a.kind, &a.name, a.timestamp, a.received_at);
        if columns != (&e.message_id, e.kind, &e.event, e.timestamp, e.received_at) {
            return Err(format!("columns {columns:?} / {e:?}"));
        }
    }
    Ok(())
}

fn rules_with_a_loyalty_card() -> IdentifierRules {
    let mut rules = IdentifierRules::default();
    rules.set(
        IdentifierType::parse("loyalty_card").unwrap(),
        seam_core::TypeRule {
            priority: 60,
            limit: 1,
        },
    );
    rules
}

#[test]
fn keys_written_twice_and_whitespace_read_as_a_parsed_body_reads_them() {
    let rules = rules_with_a_loyalty_card();
    let opts = IngestOptions {
        limits: Limits::default(),
        default_region: parse_region("RU").ok(),
        rules: &rules,
    };
    for (kind, text) in [
        (
            CallKind::Track,
            r#"{"userId": "a", "userId": "b", "event": "X", "properties": {"x": 1, "x": {"y": [1, 2]}},
                "context": {"ip": "1", "ip": "2", "traits": {"email": "A@B.co"}, "traits": {"phone": "89123456789"}}}"#,
        ),
        (
            CallKind::Identify,
            "{ \"userId\" : \"7\" ,\n\t\"traits\" : { \"email\" : \" Anna@Example.com \" , \"n\" : [ 1 , \"a b\" ] } ,\n \"context\" : { \"traits\" : { \"x\" : 1 , \"email\" : \"b@c.de\" } } }",
        ),
        (
            CallKind::Batch,
            r#"{"context": {"library": {"name": "b"}, "channel": "server", "traits": {"loyalty_card": "L-1"}},
                "sentAt": "2026-11-23T00:00:01Z",
                "batch": [ {"type": "page", "anonymousId": "a-1", "context": {"library": {"name": "e"}}},
                           {"type": "track", "event": "Y", "anonymousId": "a-2", "channel": 5},
                           {"type": "identify", "userId": "u", "context": {"traits": {"email": "x@y.zz"}}} ] }"#,
        ),
        (
            CallKind::Track,
            r#"{"event": "\u0058\n", "userId": "\u00e9", "messageId": "m\"1", "properties": {"k\u00e9": "\ud83d\ude00"}}"#,
        ),
    ] {
        same_as_the_reference(kind, text, &opts).unwrap();
    }
}

mod generated {
    use proptest::prelude::*;
    use serde_json::{json, Map, Value};

    use super::*;

    /// Absent now and then; otherwise the first value (the usual one) half the time, any of them else.
    fn one_of(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
        let usual = values[0].clone();
        prop::option::weighted(
            0.8,
            prop_oneof![4 => Just(usual), 1 => prop::sample::select(values)],
        )
    }

    fn id() -> impl Strategy<Value = Option<Value>> {
        one_of(vec![
            json!("u-1"),
            json!(" u-2 "),
            json!("null"),
            json!("0"),
            json!(""),
            json!(42),
            json!({"id": 1}),
            json!(true),
            Value::Null,
            json!("x".repeat(256)),
        ])
    }

    fn time() -> impl Strategy<Value = Option<Value>> {
        one_of(vec![
            json!("2026-11-22T10:00:00Z"),
            json!("2026-11-23T00:30:00.250+03:00"),
            json!("yesterday"),
            json!(1_795_392_000_000i64),
            json!(-1),
            json!(true),
            Value::Null,
        ])
    }

    fn traits() -> impl Strategy<Value = Option<Value>> {
        let value = prop::sample::select(vec![
            json!(" Anna@Example.COM "),
            json!("nope"),
            json!("8 (912) 345-67-89"),
            json!("+79123456789"),
            json!("12"),
            json!("undefined"),
            json!("C-77"),
            json!(5),
            Value::Null,
            json!({"a": [1, {"b": "c"}]}),
        ]);
        let key = prop::sample::select(vec!["email", "phone", "name", "loyalty_card", "a b"]);
        prop_oneof![
            4 => prop::collection::btree_map(key, value, 0..4)
                .prop_map(|m| Some(Value::Object(m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))),
            1 => one_of(vec![Value::Null, json!("str"), json!([1])]),
        ]
    }

    fn context() -> impl Strategy<Value = Option<Value>> {
        (
            one_of(vec![json!({"name": "analytics-node", "version": "1"}), json!({"name": 5}), json!("lib")]),
            one_of(vec![json!("web"), json!(5)]),
            traits(),
            one_of(vec![
                json!([{"type": "loyalty_card", "id": "C-78"}, {"type": "email", "id": "E@X.io"}]),
                json!([{"type": "phone", "id": "89123456789"}, {"type": "unknown_kind", "id": "z"}]),
                json!([{"type": "email", "id": "bad"}]),
                json!([{"id": "no-type"}]),
                json!("not a list"),
            ]),
            one_of(vec![json!("127.0.0.1")]),
        )
            .prop_map(|(library, channel, traits, external, ip)| {
                let mut m = Map::new();
                for (k, v) in [("library", library), ("channel", channel), ("traits", traits),
                               ("externalIds", external), ("ip", ip)] {
                    if let Some(v) = v {
                        m.insert(k.to_owned(), v);
                    }
                }
                Some(Value::Object(m))
            })
            .boxed()
            .prop_union(one_of(vec![Value::Null, json!(5)]).boxed())
    }

    fn properties() -> impl Strategy<Value = Option<Value>> {
        one_of(vec![
            json!({"product_id": "sku-1", "price": 1.5, "tags": ["a", "b"], "n": null, "big": 12345678901234567890u64}),
            json!({}),
            json!({"nested": {"a": {"b": {"c": [[[1]]]}}}}),
            json!({"text": "line\nbreak \"quoted\" \\ é 😀"}),
            Value::Null,
            json!("not an object"),
        ])
    }

    prop_compose! {
        fn event(batched: bool)(
            kind in one_of(vec![json!("track"), json!("identify"), json!("page"), json!("screen"),
                                json!("group"), json!("alias"), json!("merge"), json!("bogus"), json!(5)]),
            message_id in one_of(vec![json!("7f1c-0b6a"), json!("  "), json!(17), json!({}), Value::Null,
                                      json!("m".repeat(101))]),
            user_id in id(), anonymous_id in id(), previous_id in id(), group_id in id(),
            name in one_of(vec![json!("Product Viewed"), json!(" Order Completed "), json!(""), json!(5),
                                Value::Null, json!("n".repeat(256))]),
            timestamp in time(), original in time(), sent_at in time(),
            traits in traits(), properties in properties(), context in context(),
            channel in one_of(vec![json!("mobile"), json!(3)]),
            integrations in one_of(vec![json!({"All": true}), json!(5)]),
        ) -> Value {
            let mut m = Map::new();
            let fields = [
                ("type", if batched { kind } else { None }),
                ("messageId", message_id), ("userId", user_id), ("anonymousId", anonymous_id),
                ("previousId", previous_id), ("groupId", group_id), ("event", name.clone()),
                ("name", name), ("timestamp", timestamp), ("originalTimestamp", original),
                ("sentAt", sent_at), ("traits", traits), ("properties", properties), ("context", context),
                ("channel", channel), ("integrations", integrations),
            ];
            for (k, v) in fields {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        }
    }

    fn call() -> impl Strategy<Value = (CallKind, Value)> {
        let single = (
            prop::sample::select(vec![
                CallKind::Identify,
                CallKind::Track,
                CallKind::Page,
                CallKind::Screen,
                CallKind::Group,
                CallKind::Alias,
            ]),
            event(false),
            one_of(vec![json!("wk_1"), json!(5)]),
        )
            .prop_map(|(kind, mut e, key)| {
                if let Some(key) = key {
                    e["writeKey"] = key;
                }
                (kind, e)
            });
        let batch = (
            prop::collection::vec(event(true), 0..4),
            one_of(vec![
                json!("2026-11-23T00:00:05Z"),
                json!("soon"),
                Value::Null,
            ]),
            context(),
            one_of(vec![json!("wk_2")]),
            prop::bool::weighted(0.1),
        )
            .prop_map(|(items, sent_at, context, key, not_a_list)| {
                let mut m = Map::new();
                m.insert(
                    "batch".to_owned(),
                    if not_a_list {
                        json!({"a": 1})
                    } else {
                        Value::Array(items)
                    },
                );
                for (k, v) in [("sentAt", sent_at), ("context", context), ("writeKey", key)] {
                    if let Some(v) = v {
                        m.insert(k.to_owned(), v);
                    }
                }
                (CallKind::Batch, Value::Object(m))
            });
        prop_oneof![single, batch]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The reading that leaves members as text stores what a field-by-field reading of the parsed body
        /// stores, and rejects the same events with the same fields and reasons.
        #[test]
        fn reading_the_text_equals_reading_the_parsed_body(
            (kind, body) in call(),
            pretty in any::<bool>(),
        ) {
            let rules = rules_with_a_loyalty_card();
            let opts = IngestOptions {
                limits: Limits::default(),
                default_region: parse_region("RU").ok(),
                rules: &rules,
            };
            let text = if pretty { serde_json::to_string_pretty(&body).unwrap() } else { body.to_string() };
            if let Err(e) = same_as_the_reference(kind, &text, &opts) {
                prop_assert!(false, "{} for {}", e, text);
            }

        }
    }
}

use proptest::prelude::*;

use crate::ast::*;
use crate::{parse, print, EXAMPLES};

#[test]
fn the_shipped_examples_parse_and_print_back_to_the_same_tree() {
    for (name, text) in EXAMPLES {
        let tree = parse(text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(parse(&print(&tree)).unwrap(), tree, "{name}");
        let json = serde_json::to_string(&tree).unwrap();
        assert_eq!(
            serde_json::from_str::<Expr>(&json).unwrap(),
            tree,
            "{name}: the JSON form round-trips"
        );
    }
}

#[test]
fn the_same_item_example_reads_as_intended() {
    let tree = parse(EXAMPLES[0].1).unwrap();
    let Expr::ForSome { property, expr } = tree else {
        panic!("for some")
    };
    assert_eq!(property, ["product_id"]);
    let Expr::And { args } = *expr else {
        panic!("and")
    };
    let Expr::Compare { left, cmp, right } = &args[0] else {
        panic!("compare")
    };
    assert_eq!(left.of.event, "Product Viewed");
    assert_eq!(left.of.filters[0].test, Test::IsItem);
    assert_eq!(
        left.window,
        Window::Last {
            duration: Duration {
                amount: 7,
                unit: Unit::Days
            }
        }
    );
    assert_eq!(
        (*cmp, right),
        (
            Cmp::Ge,
            &Operand::Value {
                value: Literal::Number(3.0)
            }
        )
    );
}

#[test]
fn a_filter_and_is_told_apart_from_a_condition_and() {
    let tree = parse(r#"count of "Product Viewed" where category = "coffee" and price > 500 in last 7 days >= 3 and has email"#)
        .unwrap();
    let Expr::And { args } = tree else {
        panic!("and")
    };
    assert_eq!(args.len(), 2);
    let Expr::Compare { left, .. } = &args[0] else {
        panic!("compare")
    };
    assert_eq!(left.of.filters.len(), 2);
    assert_eq!(
        args[1],
        Expr::Has {
            identifier: "email".into()
        }
    );
}

#[test]
fn every_kind_of_condition_parses() {
    for text in [
        r#"trait plan = "gold""#,
        r#"trait age >= 18 and trait city in ("Kazan", "Moscow") and trait name contains "ann""#,
        "trait email is set or trait phone is not set",
        "trait address.city = \"Kazan\"",
        "has push_token and has telegram_id",
        "consents to email and consents to sms for marketing",
        r#"in segment "VIP""#,
        r#"sum revenue of "Order Completed" in last 90 days > 10000"#,
        r#"avg revenue of "Order Completed" >= 1500.5"#,
        r#"distinct category of "Product Viewed" in last 30 days >= 3"#,
        r#"first time of "Order Completed" > 30 days ago"#,
        r#"last category of "Product Viewed" = "coffee" and most frequent category of "Product Viewed" != "tea""#,
        r#"preferred hour of "Order Completed" >= 18 and last `time` of "X" = true"#,
        r#""Product Added" not followed by "Order Completed" within 20 minutes"#,
        r#""Product Viewed" where product_id = "sku-1" then "Product Added" within 1 hour"#,
        r#"not (has email or has phone)"#,
        "trait `count` = 1",
    ] {
        let tree = parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(parse(&print(&tree)).unwrap(), tree, "{text}");
    }
}

#[test]
fn broken_definitions_name_the_line_the_column_and_what_was_expected() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "",
            1,
            1,
            "expected a condition, found the end of the definition",
        ),
        ("trait plan", 1, 11, "expected a test"),
        ("trait plan = ", 1, 14, "expected a value"),
        ("trait age > \"old\"", 1, 13, "`>` compares numbers"),
        (
            "count of Product",
            1,
            10,
            "expected an event name as a string",
        ),
        (
            "count of \"X\" >= ",
            1,
            17,
            "expected a number or another aggregate",
        ),
        (
            "count of \"X\" in last 7 days",
            1,
            28,
            "expected a comparison",
        ),
        (
            "count of \"X\" in last 7 fortnights >= 1",
            1,
            24,
            "expected a unit",
        ),
        (
            "count of \"X\" in last 0 days >= 1",
            1,
            22,
            "a whole number from 1",
        ),
        (
            "has email and\n  (has phone",
            2,
            13,
            "expected `)` to close the parenthesis",
        ),
        (
            "has email has phone",
            1,
            11,
            "expected `and`, `or` or the end",
        ),
        ("last time of \"Order\" < 5", 1, 25, "expected a unit"),
        (
            "last time of \"Order\" < count of \"X\"",
            1,
            1,
            "a time (first/last time of …) can only be compared with a time",
        ),
        (
            "count of \"X\" where id = item >= 1",
            1,
            25,
            "`item` only has a meaning inside `for some",
        ),
        (
            "count of \"X\" between 1 days ago and 5 days ago >= 1",
            1,
            14,
            "needs A longer than B",
        ),
        ("\"A\" then \"B\"", 1, 13, "expected `within`"),
        ("trait x = \"unclosed", 1, 11, "a string is not closed"),
        ("trait x = 1 @", 1, 13, "unexpected character '@'"),
        ("banana", 1, 1, "expected a condition: `trait …`"),
        (
            "in segment VIP",
            1,
            12,
            "expected the segment's name as a string",
        ),
    ];
    for (text, line, column, message) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!((e.line, e.column), (*line, *column), "{text:?}: {e}");
        assert!(e.message.contains(message), "{text:?}: {e}");
    }
}

#[test]
fn definitions_too_large_or_too_deep_are_refused() {
    let deep = format!("{}has email{}", "(".repeat(40), ")".repeat(40));
    assert!(parse(&deep)
        .unwrap_err()
        .message
        .contains("nested deeper than 32"));
    let wide = vec!["has email"; 300].join(" and ");
    assert!(parse(&wide)
        .unwrap_err()
        .message
        .contains("more than 256 conditions"));
    let huge = format!("trait x = \"{}\"", "a".repeat(70_000));
    assert!(parse(&huge).unwrap_err().message.contains("limit is 65536"));
}

// Generated trees, printed and parsed back.

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9_]{0,8}",
        Just("count".to_owned()),
        Just("item".to_owned()),
        "[A-Za-z][A-Za-z0-9 ._-]{0,8}",
    ]
}

fn path() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(word(), 1..3)
}

fn literal() -> impl Strategy<Value = Literal> {
    prop_oneof![
        any::<bool>().prop_map(Literal::Bool),
        (-1e9f64..1e9).prop_map(Literal::Number),
        (-1000i32..1000).prop_map(|n| Literal::Number(n.into())),
        ".{0,12}".prop_map(Literal::String),
    ]
}

fn cmp() -> impl Strategy<Value = Cmp> {
    prop_oneof![
        Just(Cmp::Eq),
        Just(Cmp::Ne),
        Just(Cmp::Lt),
        Just(Cmp::Le),
        Just(Cmp::Gt),
        Just(Cmp::Ge)
    ]
}

fn test_value(item: bool) -> impl Strategy<Value = Test> {
    let t = prop_oneof![
        (cmp(), literal()).prop_map(|(cmp, value)| {
            let value = match (cmp, value) {
                (Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge, Literal::Number(n)) => Literal::Number(n),
                (Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge, _) => Literal::Number(1.0),
                (_, v) => v,
            };
            Test::Compare { cmp, value }
        }),
        ".{0,8}".prop_map(|value| Test::Contains { value }),
        prop::collection::vec(literal(), 1..4).prop_map(|values| Test::In { values }),
        Just(Test::IsSet),
        Just(Test::IsNotSet),
    ];
    if item {
        prop_oneof![4 => t, 1 => Just(Test::IsItem)].boxed()
    } else {
        t.boxed()
    }
}

fn duration() -> impl Strategy<Value = Duration> {
    let unit = prop_oneof![
        Just(Unit::Minutes),
        Just(Unit::Hours),
        Just(Unit::Days),
        Just(Unit::Weeks)
    ];
    (1u32..1000, unit).prop_map(|(amount, unit)| Duration { amount, unit })
}

fn event_sel(item: bool) -> impl Strategy<Value = EventSel> {
    (
        ".{1,12}",
        prop::collection::vec((path(), test_value(item)), 0..3),
    )
        .prop_map(|(event, fs)| EventSel {
            event,
            filters: fs
                .into_iter()
                .map(|(property, test)| Filter { property, test })
                .collect(),
        })
}

fn window() -> impl Strategy<Value = Window> {
    prop_oneof![
        Just(Window::Ever),
        duration().prop_map(|duration| Window::Last { duration }),
        (duration(), 1u32..100).prop_map(|(to, extra)| Window::Between {
            from: Duration {
                amount: to.amount + extra,
                unit: to.unit
            },
            to,
        }),
    ]
}

fn metric(time: bool, item: bool) -> impl Strategy<Value = Metric> {
    let agg = if time {
        prop_oneof![Just(Agg::FirstTime), Just(Agg::LastTime)].boxed()
    } else {
        prop_oneof![
            Just(Agg::Count),
            path().prop_map(|property| Agg::Sum { property }),
            path().prop_map(|property| Agg::Avg { property }),
            path().prop_map(|property| Agg::Min { property }),
            path().prop_map(|property| Agg::Max { property }),
            path().prop_map(|property| Agg::Distinct { property }),
            path().prop_map(|property| Agg::LastValue { property }),
            path().prop_map(|property| Agg::MostFrequent { property }),
            Just(Agg::PreferredHour),
        ]
        .boxed()
    };
    (agg, event_sel(item), window()).prop_map(|(agg, of, window)| Metric { agg, of, window })
}

fn condition(item: bool) -> impl Strategy<Value = Expr> {
    prop_oneof![
        (path(), test_value(false)).prop_map(|(path, test)| Expr::Trait { path, test }),
        word().prop_map(|identifier| Expr::Has { identifier }),
        (word(), prop::option::of(word()))
            .prop_map(|(channel, topic)| Expr::Consent { channel, topic }),
        ".{0,10}".prop_map(|segment| Expr::InSegment { segment }),
        (
            metric(false, item),
            cmp(),
            prop_oneof![
                (-1e6f64..1e6).prop_map(|n| Operand::Value {
                    value: Literal::Number(n)
                }),
                metric(false, item).prop_map(|metric| Operand::Metric { metric }),
            ]
        )
            .prop_map(|(left, cmp, right)| Expr::Compare { left, cmp, right }),
        (
            metric(true, item),
            cmp(),
            prop_oneof![
                duration().prop_map(|duration| Operand::Ago { duration }),
                metric(true, item).prop_map(|metric| Operand::Metric { metric }),
            ]
        )
            .prop_map(|(left, cmp, right)| Expr::Compare { left, cmp, right }),
        (event_sel(item), event_sel(item), duration(), any::<bool>()).prop_map(
            |(first, then, within, negated)| Expr::Sequence {
                first,
                then,
                within,
                negated
            }
        ),
    ]
}

fn tree() -> impl Strategy<Value = Expr> {
    let leaf = prop_oneof![
        4 => condition(false),
        1 => (path(), condition(true)).prop_map(|(property, e)| Expr::ForSome { property, expr: Box::new(e) }),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 2..4).prop_map(|args| Expr::And {
                args: args
                    .into_iter()
                    .flat_map(|a| match a {
                        Expr::And { args } => args,
                        a => vec![a],
                    })
                    .collect(),
            }),
            prop::collection::vec(inner.clone(), 2..4).prop_map(|args| Expr::Or {
                args: args
                    .into_iter()
                    .flat_map(|a| match a {
                        Expr::Or { args } => args,
                        a => vec![a],
                    })
                    .collect(),
            }),
            inner.prop_map(|a| Expr::Not { arg: Box::new(a) }),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1_000, ..ProptestConfig::default() })]

    #[test]
    fn text_to_tree_to_text_round_trips(t in tree()) {
        let text = print(&t);
        let back = parse(&text).map_err(|e| TestCaseError::fail(format!("{text}\n{e}")))?;
        prop_assert_eq!(&back, &t, "{}", text);
        prop_assert_eq!(print(&back), text);
    }
}

#[test]
fn the_json_form_in_the_docs_is_the_tree_of_its_text() {
    let json = r#"{"op": "and", "args": [
      {"op": "compare",
       "left": {"agg": {"fn": "count"}, "of": {"event": "Call Started"}, "window": {"kind": "last", "duration": {"amount": 30, "unit": "days"}}},
       "cmp": ">=", "right": {"kind": "value", "value": 3.0}},
      {"op": "has", "identifier": "email"}
    ]}"#;
    let tree: Expr = serde_json::from_str(json).unwrap();
    assert_eq!(
        tree,
        parse(r#"count of "Call Started" in last 30 days >= 3 and has email"#).unwrap()
    );
}

mod evaluation {
    use serde_json::{json, Map, Value};

    use crate::eval::{evaluate, explain, Person, PersonEvent};
    use crate::{parse, EXAMPLES};

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_795_392_000_000;

    fn ev(name: &str, days_ago: f64, props: Value) -> PersonEvent {
        PersonEvent {
            name: name.into(),
            at: NOW - (days_ago * DAY as f64) as i64,
            properties: props.as_object().cloned().unwrap_or_default(),
        }
    }

    fn holds(def: &str, events: &[PersonEvent], traits: Value, now: i64) -> bool {
        let traits: Map<String, Value> = traits.as_object().cloned().unwrap_or_default();
        let ids = [("email".to_owned(), "a@x.io".to_owned())];
        let person = Person {
            traits: &traits,
            identities: &ids,
            events,
            in_segment: &|s| s == "VIP",
        };
        evaluate(&parse(def).unwrap(), &person, now)
    }

    #[test]
    fn viewed_the_same_product_three_times_without_adding_it() {
        let def = EXAMPLES[0].1;
        let mut events = vec![
            ev("Product Viewed", 1.0, json!({"product_id": "sku-1"})),
            ev("Product Viewed", 2.0, json!({"product_id": "sku-2"})),
            ev("Product Viewed", 3.0, json!({"product_id": "sku-1"})),
        ];
        assert!(
            !holds(def, &events, json!({}), NOW),
            "two views of one product are not enough"
        );
        events.push(ev("Product Viewed", 0.5, json!({"product_id": "sku-1"})));
        assert!(holds(def, &events, json!({}), NOW));
        events.push(ev("Product Added", 0.2, json!({"product_id": "sku-1"})));
        assert!(!holds(def, &events, json!({}), NOW), "added to the cart");
        events.push(ev("Product Viewed", 0.1, json!({"product_id": "sku-2"})));
        events.push(ev("Product Viewed", 0.1, json!({"product_id": "sku-2"})));
        assert!(
            holds(def, &events, json!({}), NOW),
            "another product now qualifies"
        );
        assert!(
            !holds(def, &events, json!({}), NOW + 8 * DAY),
            "the views are older than 7 days"
        );
    }

    #[test]
    fn calls_often_but_does_not_buy() {
        let def = EXAMPLES[1].1;
        let mut events: Vec<PersonEvent> = (0..3)
            .map(|i| ev("Call Started", i as f64 * 5.0, json!({})))
            .collect();
        assert!(holds(def, &events, json!({}), NOW));
        assert!(
            !holds(def, &events, json!({}), NOW + 20 * DAY),
            "the calls fall out of the 30 days"
        );
        events.push(ev("Order Completed", 1.0, json!({"revenue": 100})));
        assert!(!holds(def, &events, json!({}), NOW));
    }

    #[test]
    fn last_purchase_long_ago_and_buying_less() {
        let def = EXAMPLES[2].1;
        let mut events: Vec<PersonEvent> = [300.0, 250.0, 200.0, 100.0]
            .iter()
            .map(|&d| ev("Order Completed", d, json!({})))
            .collect();
        assert!(holds(def, &events, json!({}), NOW));
        assert!(
            !holds(def, &[], json!({}), NOW),
            "never bought: not a lapsing buyer"
        );
        events.push(ev("Order Completed", 10.0, json!({})));
        assert!(!holds(def, &events, json!({}), NOW));
    }

    #[test]
    fn a_cart_not_followed_by_an_order_qualifies_only_once_the_time_has_passed() {
        let def = r#""Product Added" not followed by "Order Completed" within 20 minutes"#;
        let added = ev("Product Added", 0.0, json!({}));
        let min = 60_000;
        assert!(!holds(
            def,
            std::slice::from_ref(&added),
            json!({}),
            NOW + 10 * min
        ));
        assert!(holds(
            def,
            std::slice::from_ref(&added),
            json!({}),
            NOW + 21 * min
        ));
        let mut bought = vec![added.clone(), added];
        bought[1] = PersonEvent {
            name: "Order Completed".into(),
            at: NOW + 15 * min,
            properties: Map::new(),
        };
        assert!(!holds(def, &bought, json!({}), NOW + 21 * min));
    }

    #[test]
    fn traits_identities_consents_and_membership() {
        let traits = json!({"plan": "gold", "age": 31, "tags": ["b2b"], "consent": {"email": true, "sms": {"marketing": true}}});
        for (def, expected) in [
            (r#"trait plan = "gold""#, true),
            (r#"trait plan != "gold""#, false),
            ("trait age > 30 and trait age <= 31", true),
            (r#"trait tags contains "b2b""#, true),
            (r#"trait plan in ("silver", "gold")"#, true),
            ("trait city is not set", true),
            ("has email and not has phone", true),
            ("consents to email", true),
            ("consents to sms", false),
            ("consents to sms for marketing", true),
            (r#"in segment "VIP""#, true),
        ] {
            assert_eq!(holds(def, &[], traits.clone(), NOW), expected, "{def}");
        }
    }

    #[test]
    fn last_and_most_frequent_values_and_the_preferred_hour() {
        let hour = 3_600_000;
        let events = [
            PersonEvent {
                name: "V".into(),
                at: NOW - DAY + 20 * hour,
                properties: json!({"c": "tea"}).as_object().cloned().unwrap(),
            },
            PersonEvent {
                name: "V".into(),
                at: NOW - 2 * DAY + 20 * hour,
                properties: json!({"c": "coffee"}).as_object().cloned().unwrap(),
            },
            PersonEvent {
                name: "V".into(),
                at: NOW - 3 * DAY + 9 * hour,
                properties: json!({"c": "coffee"}).as_object().cloned().unwrap(),
            },
        ];
        for (def, expected) in [
            (r#"last c of "V" = "tea""#, true),
            (r#"most frequent c of "V" = "coffee""#, true),
            (r#"most frequent c of "V" in last 36 hours = "tea""#, true),
            (r#"preferred hour of "V" = 20"#, true),
            (r#"last c of "Nothing" = "tea""#, false),
            (r#"last c of "Nothing" != "tea""#, false),
        ] {
            assert_eq!(holds(def, &events, json!({}), NOW), expected, "{def}");
        }
    }

    /// Values are told apart by type as well as by text: the string "1" and the number 1 are two values.
    #[test]
    fn a_string_and_a_number_with_the_same_text_are_two_values() {
        let events = [
            ev("V", 3.0, json!({"c": "1"})),
            ev("V", 2.0, json!({"c": 1})),
            ev("V", 1.0, json!({"c": 1})),
            ev("V", 0.5, json!({"c": "2"})),
        ];
        for (def, expected) in [
            (r#"distinct c of "V" = 3"#, true),
            (r#"most frequent c of "V" = 1"#, true),
            (r#"most frequent c of "V" = "1""#, false),
            (r#"for some c: (count of "V" where c = item >= 2)"#, true),
            (r#"for some c: (count of "V" where c = item >= 3)"#, false),
        ] {
            assert_eq!(holds(def, &events, json!({}), NOW), expected, "{def}");
        }
    }

    #[test]
    fn explain_says_which_values_decided() {
        let events = [
            ev("Call Started", 1.0, json!({})),
            ev("Call Started", 2.0, json!({})),
        ];
        let traits = Map::new();
        let person = Person {
            traits: &traits,
            identities: &[],
            events: &events,
            in_segment: &|_| false,
        };
        let x = explain(&parse(EXAMPLES[1].1).unwrap(), &person, NOW);
        assert!(!x.result);
        assert_eq!(x.parts.len(), 2);
        assert_eq!(x.parts[0].detail, "2 >= 3");
        assert!(!x.parts[0].result);
        assert_eq!(x.parts[1].detail, "0 = 0");
        assert!(x.parts[1].result);
    }
}

mod time {
    use proptest::prelude::*;
    use serde_json::{json, Map};

    use crate::digest::Needs;
    use crate::eval::{evaluate, next_change, Person, PersonEvent};
    use crate::parse;

    const MIN: i64 = 60_000;
    const DAY: i64 = 86_400_000;
    const START: i64 = 1_795_392_000_000;

    /// Definitions whose result depends on time passing.
    const DEFINITIONS: &[&str] = &[
        r#"count of "A" in last 2 days >= 2"#,
        r#"count of "A" between 3 days ago and 1 days ago = 1"#,
        r#"last time of "A" < 1 days ago and count of "B" in last 1 days = 0"#,
        r#"first time of "B" > 2 days ago"#,
        r#""A" not followed by "B" within 20 minutes"#,
        r#""A" then "B" within 1 hours"#,
        r#"for some sku: (count of "A" where sku = item in last 1 days >= 2 and count of "B" where sku = item = 0)"#,
        r#"not (sum v of "A" in last 3 days > 5) or count of "B" in last 12 hours >= 1"#,
    ];

    fn history() -> impl Strategy<Value = Vec<PersonEvent>> {
        prop::collection::vec(
            (
                prop_oneof![Just("A"), Just("B")],
                0i64..(4 * DAY / MIN),
                0u8..3,
                0u8..4,
            ),
            0..12,
        )
        .prop_map(|v| {
            v.into_iter()
                .map(|(name, minutes, sku, val)| PersonEvent {
                    name: name.into(),
                    at: START + minutes * MIN,
                    properties: json!({"sku": format!("s{sku}"), "v": val})
                        .as_object()
                        .cloned()
                        .unwrap(),
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

        /// Between now and `next_change` the result cannot change: time-driven membership changes are never
        /// missed by a scheduler that wakes at `next_change`.
        #[test]
        fn nothing_changes_before_next_change(events in history(), def in 0..DEFINITIONS.len(), probes in prop::collection::vec(0u32..1000, 8)) {
            let expr = parse(DEFINITIONS[def]).unwrap();
            let traits = Map::new();
            let person = Person { traits: &traits, identities: &[], events: &events, in_segment: &|_| false };
            let mut now = START;
            // Walk forward through time from change point to change point, probing in between.
            for _ in 0..30 {
                let at_now = evaluate(&expr, &person, now);
                let next = next_change(&expr, &person, now);
                let horizon = next.unwrap_or(now + 10 * DAY);
                for p in &probes {
                    let t = now + 1 + (horizon - now - 1) * i64::from(*p) / 1000;
                    if t < horizon {
                        prop_assert_eq!(evaluate(&expr, &person, t), at_now, "{} changed at {} before {:?}", DEFINITIONS[def], t, next);
                    }
                }
                if horizon - 1 > now {
                    prop_assert_eq!(evaluate(&expr, &person, horizon - 1), at_now);
                }
                match next {
                    Some(n) => now = n,
                    None => break,
                }
            }
        }

        /// The next change of several definitions found at once is the earliest of each one's own: a person
        /// evaluated against all of them is woken when the first of them may change.
        #[test]
        fn the_next_change_of_several_definitions_is_the_earliest_of_each(
            events in history(),
            defs in prop::collection::btree_set(0..DEFINITIONS.len(), 1..4),
            offset in 0i64..(5 * DAY),
        ) {
            let exprs: Vec<_> = defs.iter().map(|&d| parse(DEFINITIONS[d]).unwrap()).collect();
            let traits = Map::new();
            let person = Person { traits: &traits, identities: &[], events: &events, in_segment: &|_| false };
            let now = START + offset;
            let each = exprs.iter().filter_map(|e| next_change(e, &person, now)).min();
            prop_assert_eq!(Needs::of(&exprs, []).next_change(&events, now), each);
        }
    }
}

mod computed {
    use serde_json::{json, Map};

    use crate::eval::{measure, Person, PersonEvent};
    use crate::{parse_metric, print_metric};

    #[test]
    fn measures_parse_print_and_compute() {
        let day = 86_400_000;
        let now = 1_795_392_000_000;
        let events: Vec<PersonEvent> = [(5, 100), (40, 250), (100, 1000)]
            .iter()
            .map(|&(d, r)| PersonEvent {
                name: "Order Completed".into(),
                at: now - d * day,
                properties: json!({"revenue": r}).as_object().cloned().unwrap(),
            })
            .collect();
        let traits = Map::new();
        let person = Person {
            traits: &traits,
            identities: &[],
            events: &events,
            in_segment: &|_| false,
        };
        for (text, value, changes) in [
            (r#"sum revenue of "Order Completed""#, json!(1350.0), false),
            (
                r#"count of "Order Completed" in last 90 days"#,
                json!(2.0),
                true,
            ),
            (r#"last revenue of "Order Completed""#, json!(100), false),
        ] {
            let m = parse_metric(text).unwrap();
            assert_eq!(parse_metric(&print_metric(&m)).unwrap(), m);
            let v = measure(&m, &person, now);
            let next = crate::digest::Needs::of([], [&m]).next_change(&events, now);
            assert_eq!(v, Some(value), "{text}");
            assert_eq!(next.is_some(), changes, "{text}");
        }
        let e = parse_metric("has email").unwrap_err();
        assert!(e.message.contains("expected a measure"), "{e}");
        assert!(parse_metric(r#"count of "X" >= 3"#)
            .unwrap_err()
            .message
            .contains("end of the measure"));
    }
}

#[test]
fn filters_and_durations_parse_alone_for_journeys() {
    let filters = crate::parse_filters(r#"category = "coffee" and price > 1000"#).unwrap();
    let sel = EventSel {
        event: "Product Added".into(),
        filters,
    };
    let ev = |category: &str, price: i64| crate::PersonEvent {
        name: "Product Added".into(),
        at: 0,
        properties: serde_json::json!({"category": category, "price": price})
            .as_object()
            .unwrap()
            .clone(),
    };
    assert!(crate::event_matches(&sel, &ev("coffee", 1500)));
    assert!(!crate::event_matches(&sel, &ev("coffee", 500)));
    assert!(!crate::event_matches(&sel, &ev("tea", 1500)));
    let e = crate::parse_filters("category = ").unwrap_err();
    assert_eq!((e.line, e.column), (1, 12));
    assert!(
        crate::parse_filters("product_id = item").is_err(),
        "no `for some` here"
    );
    assert_eq!(
        crate::parse_duration("3 hours").unwrap().millis(),
        3 * 3_600_000
    );
    assert!(crate::parse_duration("3 fortnights").is_err());
    assert!(crate::parse_duration("3 hours later").is_err());
}

mod digests {
    use proptest::prelude::*;
    use serde_json::{json, Map};

    use crate::digest::{Digest, Needs};
    use crate::eval::{evaluate, explain, measure, next_change, Person, PersonEvent};
    use crate::{parse, parse_metric};

    const MIN: i64 = 60_000;
    const START: i64 = 1_795_392_000_000;

    fn name() -> impl Strategy<Value = &'static str> {
        prop_oneof![Just("A"), Just("B"), Just("C")]
    }

    fn span() -> impl Strategy<Value = String> {
        (
            1u32..40,
            prop_oneof![Just("minutes"), Just("hours"), Just("days")],
        )
            .prop_map(|(n, u)| format!("{n} {u}"))
    }

    fn window() -> impl Strategy<Value = String> {
        prop_oneof![
            Just(String::new()),
            span().prop_map(|s| format!(" in last {s}")),
            (1u32..30, 1u32..30)
                .prop_map(|(a, b)| format!(" between {} hours ago and {a} hours ago", a + b)),
        ]
    }

    fn filter(item: bool) -> impl Strategy<Value = String> {
        let mut options = vec![
            Just(String::new()).boxed(),
            Just(" where v > 1".to_owned()).boxed(),
            Just(r#" where sku = "s1""#.to_owned()).boxed(),
        ];
        if item {
            options.push(Just(" where sku = item".to_owned()).boxed());
        }
        proptest::strategy::Union::new(options)
    }

    fn measure_text(item: bool) -> BoxedStrategy<String> {
        (
            prop_oneof![
                Just("count of"),
                Just("sum v of"),
                Just("max v of"),
                Just("distinct sku of"),
                Just("last sku of"),
                Just("most frequent sku of"),
                Just("preferred hour of"),
            ],
            name(),
            filter(item),
            window(),
        )
            .prop_map(|(agg, n, f, w)| format!(r#"{agg} "{n}"{f}{w}"#))
            .boxed()
    }

    fn condition(item: bool) -> BoxedStrategy<String> {
        prop_oneof![
            (measure_text(item), 0u32..4).prop_map(|(m, k)| format!("{m} >= {k}")),
            (measure_text(item), measure_text(item)).prop_map(|(a, b)| format!("{a} < {b}")),
            (
                prop_oneof![Just("last time of"), Just("first time of")],
                name(),
                filter(item),
                prop_oneof![Just("<"), Just(">")],
                span()
            )
                .prop_map(|(t, n, f, c, s)| format!(r#"{t} "{n}"{f} {c} {s} ago"#)),
            (
                name(),
                name(),
                prop_oneof![Just("then"), Just("not followed by")],
                span()
            )
                .prop_map(|(a, b, how, s)| format!(r#""{a}" {how} "{b}" within {s}"#)),
        ]
        .boxed()
    }

    fn definition() -> BoxedStrategy<String> {
        let leaf = prop_oneof![
            3 => condition(false),
            1 => (condition(true), condition(true))
                .prop_map(|(a, b)| format!("for some sku: ({a} and not ({b}))")),
        ];
        prop::collection::vec(
            (leaf, prop_oneof![Just("and"), Just("or"), Just("and not")]),
            1..4,
        )
        .prop_map(|parts| {
            let mut text = String::new();
            for (i, (c, op)) in parts.into_iter().enumerate() {
                if i > 0 {
                    text.push_str(&format!(" {op} "));
                }
                text.push_str(&format!("({c})"));
            }
            text
        })
        .boxed()
    }

    /// Events in the order they arrive (not the order of their times), and how far the clock moves after each.
    fn arrivals() -> impl Strategy<Value = Vec<(PersonEvent, i64)>> {
        prop::collection::vec(
            (
                prop_oneof![Just("A"), Just("B"), Just("C"), Just("D")],
                -(3 * 24 * 60i64)..(6 * 60),
                0u8..4,
                0u8..4,
                0i64..(12 * 60),
            ),
            0..24,
        )
        .prop_map(|v| {
            let mut now = START;
            v.into_iter()
                .map(|(name, offset, sku, val, step)| {
                    let mut properties = json!({"v": val, "other": "x"})
                        .as_object()
                        .cloned()
                        .unwrap_or_default();
                    if sku < 3 {
                        properties.insert("sku".into(), json!(format!("s{sku}")));
                    }
                    let e = PersonEvent {
                        name: name.into(),
                        at: now + offset * MIN,
                        properties,
                    };
                    now += step * MIN;
                    (e, step * MIN)
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

        /// Membership, `next_change` and computed measures read from a digest kept event by event (and pruned as
        /// the clock moves) equal those read from the whole history, at every step.
        #[test]
        fn a_digest_decides_exactly_as_the_whole_history(
            defs in prop::collection::vec(definition(), 1..3),
            measures in prop::collection::vec(measure_text(false), 0..2),
            arrivals in arrivals(),
        ) {
            let exprs: Vec<_> = defs.iter().map(|d| parse(d).map_err(|e| TestCaseError::fail(format!("{d}\n{e}")))).collect::<Result<_, _>>()?;
            let metrics: Vec<_> = measures.iter().map(|m| parse_metric(m).map_err(|e| TestCaseError::fail(format!("{m}\n{e}")))).collect::<Result<_, _>>()?;
            let needs = Needs::of(&exprs, &metrics);
            let traits = Map::new();
            let mut digest = Digest::default();
            let mut all: Vec<(i64, PersonEvent)> = Vec::new();
            let mut now = START;
            for (seq, (event, step)) in arrivals.into_iter().enumerate() {
                let seq = seq as i64 + 1;
                needs.admit(&mut digest, seq, &event.name, event.at, &event.properties);
                // Stored and read back at each step, as the live path does.
                digest = Digest::from_bytes(&digest.to_bytes()).map_err(|e| TestCaseError::fail(e.to_string()))?;
                all.push((seq, event));
                all.sort_by_key(|(s, e)| (e.at, *s));
                for _ in 0..2 {
                    needs.prune(&mut digest, now);
                    let full: Vec<PersonEvent> = all.iter().map(|(_, e)| e.clone()).collect();
                    let kept = digest.person_events();
                    let whole = Person { traits: &traits, identities: &[], events: &full, in_segment: &|_| false };
                    let part = Person { traits: &traits, identities: &[], events: &kept, in_segment: &|_| false };
                    for (e, text) in exprs.iter().zip(&defs) {
                        let member = evaluate(e, &whole, now);
                        // Evaluating without explaining (and stopping `and`/`or` early) agrees with explaining.
                        prop_assert_eq!(member, explain(e, &whole, now).result, "{} at {}", text, now);
                        prop_assert_eq!(evaluate(e, &part, now), member, "{} at {}", text, now);
                        prop_assert_eq!(next_change(e, &part, now), next_change(e, &whole, now), "{} at {}", text, now);
                    }
                    for (m, text) in metrics.iter().zip(&measures) {
                        prop_assert_eq!(measure(m, &part, now), measure(m, &whole, now), "{} at {}", text, now);
                    }
                    prop_assert_eq!(needs.next_change(&kept, now), needs.next_change(&full, now), "at {}", now);
                    now += step / 2;
                }
            }
            // Kept only what is read: events of a name no definition uses carry only `for some` values.
            for k in &digest.events {
                prop_assert!(!k.properties.contains_key("other"));
            }
        }
    }

    /// Any JSON value serde_json reads, nested as deeply as it allows.
    fn value() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|i| json!(i)),
            any::<u64>().prop_map(|u| json!(u)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            prop_oneof![Just("sku-1".to_owned()), Just(String::new()), ".{0,12}"]
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![Just("sku".to_owned()), ".{0,6}"],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn kept() -> impl Strategy<Value = crate::digest::Kept> {
        (
            any::<i64>(),
            any::<i64>(),
            prop_oneof![Just("Product Viewed".to_owned()), ".{0,8}"],
            prop::collection::btree_map(
                prop_oneof![Just("sku".to_owned()), ".{0,6}"],
                value(),
                0..4,
            ),
        )
            .prop_map(|(seq, at, name, p)| crate::digest::Kept {
                seq,
                at,
                name,
                properties: p.into_iter().collect(),
            })
    }

    proptest! {
        /// The stored form reads back as the digest it was made from, and a stored form cut short or with a
        /// byte changed reads back as that digest, another one or an error — never a panic.
        #[test]
        fn a_digest_reads_back_from_its_stored_form(
            events in prop::collection::vec(kept(), 0..6),
            cut in any::<prop::sample::Index>(),
            flip in any::<prop::sample::Index>(),
            byte in any::<u8>(),
        ) {
            let digest = Digest { events };
            let bytes = digest.to_bytes();
            prop_assert_eq!(Digest::from_bytes(&bytes), Ok(digest));
            let end = cut.index(bytes.len());
            prop_assert!(Digest::from_bytes(&bytes[..end]).is_err());
            let mut changed = bytes.clone();
            changed[flip.index(bytes.len())] = byte;
            let _ = Digest::from_bytes(&changed);
        }
    }

    #[test]
    fn a_stored_form_that_is_not_a_digest_is_an_error_that_says_where() {
        let digest = Digest {
            events: vec![crate::digest::Kept {
                seq: 7,
                at: START,
                name: "Product Viewed".into(),
                properties: json!({"sku": "s1", "tags": ["s1", 2, -3, 1.5, null, true]})
                    .as_object()
                    .cloned()
                    .unwrap(),
            }],
        };
        let bytes = digest.to_bytes();
        // The second mention of "s1" is a reference, not the string again.
        assert_eq!(
            bytes.windows(2).filter(|w| *w == b"s1").count(),
            1,
            "a repeated string is written once"
        );
        let e = Digest::from_bytes(&bytes[..bytes.len() - 1]).unwrap_err();
        assert_eq!(e.reason, "ends too soon");
        assert_eq!(e.at, bytes.len() - 1);
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Digest::from_bytes(&longer).unwrap_err().reason,
            "bytes after the last event"
        );
        assert_eq!(
            Digest::from_bytes(b"{\"events\":[]}").unwrap_err().reason,
            "unknown version"
        );
        // Version, one event at 0/0 named "a" with one property named "" holding an array inside an array…
        // deeper than serde_json reads.
        let mut deep = vec![1, 1, 0, 0, 2, b'a', 1, 0];
        deep.extend(std::iter::repeat_n([7u8, 1], 200).flatten());
        assert_eq!(
            Digest::from_bytes(&deep).unwrap_err().reason,
            "values nested too deeply"
        );
    }

    #[test]
    fn old_events_leave_the_digest_but_a_value_for_some_ranges_over_stays() {
        let expr = parse(
            r#"for some sku: (count of "A" where sku = item in last 1 hours >= 1) or count of "B" in last 2 hours >= 1"#,
        )
        .unwrap();
        let needs = Needs::of([&expr], []);
        let mut d = Digest::default();
        let props = |sku: &str| json!({"sku": sku, "v": 1}).as_object().cloned().unwrap();
        needs.admit(&mut d, 1, "A", START, &props("s1"));
        needs.admit(&mut d, 2, "A", START + MIN, &props("s1"));
        needs.admit(&mut d, 3, "B", START, &props("s2"));
        needs.admit(&mut d, 4, "D", START, &props("s3"));
        needs.admit(&mut d, 5, "D", START + MIN, &props("s3"));
        assert_eq!(
            d.events.len(),
            4,
            "a second event of an unread name with a known value is not kept"
        );
        assert!(needs.prune(&mut d, START + 3 * 86_400_000));
        let left: Vec<_> = d
            .events
            .iter()
            .map(|k| (k.seq, k.properties.get("sku").cloned()))
            .collect();
        assert_eq!(
            left,
            vec![
                (1, Some(json!("s1"))),
                (3, Some(json!("s2"))),
                (4, Some(json!("s3")))
            ]
        );
        assert!(d.events.iter().all(|k| !k.properties.contains_key("v")));
    }
}

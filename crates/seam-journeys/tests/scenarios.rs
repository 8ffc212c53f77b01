//! Journeys end to end on the virtual clock: the shipped scenarios, each node kind, validation, and properties
//! across crashes and caps.

use std::collections::BTreeMap;

use proptest::prelude::*;
use seam_core::clock::parse_rfc3339;
use seam_journeys::simulate::{simulate, Report, Scenario, World};

const ABANDONED_CART: &str = include_str!("../../../scenarios/abandoned-cart.yaml");
const REACH_EVERYONE_ONCE: &str = include_str!("../../../scenarios/reach-everyone-once.yaml");

fn run(text: &str) -> Report {
    simulate(text).unwrap_or_else(|ps| panic!("scenario refused: {ps:?}"))
}

/// (channel, minutes after `start`) of each message to `profile`.
fn sends(r: &Report, start: &str, profile: &str) -> Vec<(String, i64)> {
    let start = parse_rfc3339(start).unwrap();
    r.messages
        .iter()
        .filter(|m| m.profile == profile)
        .map(|m| (m.channel.to_string(), (m.at - start) / 60_000))
        .collect()
}

fn lines(r: &Report, profile: &str, kind: &str) -> Vec<String> {
    r.timeline
        .iter()
        .filter(|l| l.profile == profile && l.kind == kind)
        .map(|l| l.detail.clone())
        .collect()
}

fn s(items: &[(&str, i64)]) -> Vec<(String, i64)> {
    items.iter().map(|(c, m)| (c.to_string(), *m)).collect()
}

#[test]
fn the_abandoned_cart_cascade_takes_every_branch() {
    let r = run(ABANDONED_CART);
    let at = "2026-11-23T07:00:00Z";
    let (h, d) = (60, 24 * 60);
    // The web push read: nothing after it.
    assert_eq!(sends(&r, at, "web-reader"), s(&[("web_push", 20)]));
    // The mobile push read, an hour after the unread web push.
    assert_eq!(
        sends(&r, at, "app-reader"),
        s(&[("web_push", 20), ("mobile_push", 20 + h)])
    );
    // The e-mail read, three hours after the first push.
    assert_eq!(
        sends(&r, at, "mail-reader"),
        s(&[
            ("web_push", 20),
            ("mobile_push", 20 + h),
            ("email", 20 + 3 * h)
        ])
    );
    // Nothing read: Viber a day after the e-mail.
    assert_eq!(
        sends(&r, at, "unread"),
        s(&[
            ("web_push", 20),
            ("mobile_push", 20 + h),
            ("email", 20 + 3 * h),
            ("viber", 20 + 3 * h + d)
        ])
    );
    for p in ["web-reader", "app-reader", "mail-reader", "unread"] {
        assert_eq!(lines(&r, p, "exited"), ["completed"], "{p}");
    }
    // A purchase at each point ends the run: nothing more is sent, and it counts as the conversion.
    assert_eq!(sends(&r, at, "buy-early"), s(&[]));
    assert_eq!(sends(&r, at, "buy-after-web"), s(&[("web_push", 20)]));
    assert_eq!(
        sends(&r, at, "buy-after-app"),
        s(&[("web_push", 20), ("mobile_push", 20 + h)])
    );
    assert_eq!(
        sends(&r, at, "buy-after-mail"),
        s(&[
            ("web_push", 20),
            ("mobile_push", 20 + h),
            ("email", 20 + 3 * h)
        ])
    );
    for p in [
        "buy-early",
        "buy-after-web",
        "buy-after-app",
        "buy-after-mail",
    ] {
        assert_eq!(lines(&r, p, "exited"), ["goal"], "{p}");
        assert_eq!(lines(&r, p, "converted").len(), 1, "{p}");
    }
    // No push token: both push steps are skipped and the e-mail goes at once.
    assert_eq!(
        sends(&r, at, "no-push"),
        s(&[("email", 20), ("viber", 20 + d)])
    );
    assert_eq!(
        lines(&r, "no-push", "held"),
        [
            "web_push (remind): no address on the channel",
            "mobile_push (remind): no address on the channel"
        ]
    );
    // Quiet hours (22:00–09:00 Moscow): the push due at 00:10 waits until 09:00, the cascade goes on from there.
    let owl_added = 13 * h + 50;
    let nine_next_morning = 23 * h; // 06:00 UTC the next day
    assert_eq!(
        sends(&r, at, "night-owl"),
        s(&[
            ("web_push", nine_next_morning),
            ("mobile_push", nine_next_morning + h),
            ("email", nine_next_morning + 3 * h),
            ("viber", nine_next_morning + 3 * h + d),
        ])
    );
    assert_eq!(
        lines(&r, "night-owl", "deferred"),
        ["web_push (remind): quiet hours; until 2026-11-24 06:00"]
    );
    assert!(owl_added + 20 < nine_next_morning);
    // A frequency cap reached (3 newsletters today): every step is held with the reason, nothing is sent.
    assert_eq!(
        sends(&r, at, "capped"),
        s(&[("email", 0), ("email", 1), ("email", 2)])
    );
    let held = lines(&r, "capped", "held");
    assert_eq!(held.len(), 4);
    assert!(
        held.iter()
            .all(|l| l.ends_with("frequency cap 3 per 1 day reached")),
        "{held:?}"
    );
    // Per-node statistics.
    let st = &r.stats["abandoned-cart"];
    assert_eq!((st.entered, st.converted, st.waiting), (11, 4, 0));
    assert_eq!(st.nodes["remind"]["held:frequency_cap"], 4);
    assert_eq!(st.nodes["remind"]["deferred:quiet_hours"], 1);
    // Templates were rendered with the profile and the trigger event.
    let viber = r
        .messages
        .iter()
        .find(|m| m.profile == "unread" && m.channel.as_str() == "viber")
        .unwrap();
    assert_eq!(
        viber.content.as_ref().unwrap()["text"],
        "Anna, your promo code CART10 for Coffee grinder expires tonight."
    );
}

#[test]
fn reach_everyone_once_sends_one_message_per_person_in_the_first_channel_that_can_carry_it() {
    let r = run(REACH_EVERYONE_ONCE);
    let at = "2026-11-24T10:00:00Z";
    let expected = [
        ("all-three", "email"),
        ("email-only", "email"),
        ("viber-only", "viber"),
        ("phone-only", "sms"),
        ("email-opted-out", "viber"),
        ("email-bounced", "sms"),
    ];
    for (p, channel) in expected {
        assert_eq!(sends(&r, at, p), s(&[(channel, 0)]), "{p}");
    }
    assert_eq!(sends(&r, at, "unreachable"), s(&[]));
    assert_eq!(lines(&r, "unreachable", "held").len(), 3);
    assert!(
        lines(&r, "not-subscribed", "entered").is_empty(),
        "outside the segment"
    );
    assert_eq!(r.messages.len(), expected.len());
}

const SMALL: &str = r#"
start: 2026-11-23T08:00:00Z
run_for: 3 days
templates:
  - { id: t, variants: { email: { subject: "Hi", body: "b" }, sms: { text: "Hi" }, webhook: { body: "{}" } } }
profiles:
  - { id: a, identities: { email: a@example.com, phone: "+4915112345671" }, traits: { plan: gold, consent: { email: true, sms: true } } }
  - { id: b, identities: { email: b@example.com }, traits: { plan: free, consent: { email: true } } }
"#;

fn small(journeys: &str, script: &str) -> Report {
    run(&format!(
        "{SMALL}\njourneys:\n{journeys}\nscript:\n{script}"
    ))
}

#[test]
fn a_condition_branches_and_waits_for_an_event_take_the_event_or_the_timeout() {
    let r = small(
        r#"
  - id: j
    trigger: { event: Signed Up }
    start: gold
    nodes:
      gold: { type: condition, if: 'trait plan = "gold"', then: wait_open, else: done }
      wait_open: { type: wait_for, event: App Opened, where: 'platform = "ios"', timeout: 1 day, next: thanks, on_timeout: nudge }
      thanks: { type: send, channel: email, template: t }
      nudge: { type: send, channel: sms, template: t }
      done: { type: exit }
"#,
        r#"
  - { at: "+0 minutes", profile: a, track: Signed Up }
  - { at: "+0 minutes", profile: b, track: Signed Up }
  - { at: "+2 hours", profile: a, track: App Opened, properties: { platform: android } }
"#,
    );
    assert_eq!(
        sends(&r, "2026-11-23T08:00:00Z", "a"),
        s(&[("sms", 24 * 60)]),
        "android does not match the filter"
    );
    assert_eq!(sends(&r, "2026-11-23T08:00:00Z", "b"), s(&[]));
    let r = small(
        r#"
  - id: j
    trigger: { event: Signed Up }
    start: wait_open
    nodes:
      wait_open: { type: wait_for, event: App Opened, where: 'platform = "ios"', timeout: 1 day, next: thanks, on_timeout: nudge }
      thanks: { type: send, channel: email, template: t }
      nudge: { type: send, channel: sms, template: t }
"#,
        r#"
  - { at: "+0 minutes", profile: a, track: Signed Up }
  - { at: "+2 hours", profile: a, track: App Opened, properties: { platform: ios } }
"#,
    );
    assert_eq!(sends(&r, "2026-11-23T08:00:00Z", "a"), s(&[("email", 120)]));
}

#[test]
fn waits_until_a_local_time_of_day_and_for_a_message_outcome() {
    let r = small(
        r#"
  - id: j
    trigger: { api: true }
    start: morning
    nodes:
      morning: { type: wait, until: "10:00", next: mail }
      mail: { type: send, channel: email, template: t, next: clicked }
      clicked: { type: wait_for, outcome: clicked, of: mail, timeout: 2 hours, next: thanks, on_timeout: sms }
      thanks: { type: update, traits: { engaged: true } }
      sms: { type: send, channel: sms, template: t }
"#,
        r#"
  - { at: "+0 minutes", profile: a, enter: j }
  - { at: "+0 minutes", profile: b, enter: j }
  - { at: "+2 hours 30 minutes", profile: b, outcome: clicked, channel: email }
"#,
    );
    // 10:00 UTC (no zone given), two hours after the start.
    assert_eq!(
        sends(&r, "2026-11-23T08:00:00Z", "a"),
        s(&[("email", 120), ("sms", 240)])
    );
    assert_eq!(sends(&r, "2026-11-23T08:00:00Z", "b"), s(&[("email", 120)]));
    assert_eq!(lines(&r, "b", "update"), ["engaged"]);
}

#[test]
fn a_split_is_stable_and_its_holdout_gets_nothing_but_counts_conversions() {
    let people: String = (0..200)
        .map(|i| format!("  - {{ id: p{i}, identities: {{ email: p{i}@example.com }}, traits: {{ consent: {{ email: true }} }} }}\n"))
        .collect();
    let script: String = (0..200)
        .map(|i| format!("  - {{ at: \"+0 minutes\", profile: p{i}, enter: j }}\n  - {{ at: \"+1 hour\", profile: p{i}, track: Order Completed }}\n"))
        .collect();
    let text = format!(
        r#"
start: 2026-11-23T08:00:00Z
run_for: 1 day
templates: [ {{ id: t, variants: {{ email: {{ subject: s, body: b }} }} }} ]
profiles:
{people}
journeys:
  - id: j
    trigger: {{ api: true }}
    goal: {{ event: Order Completed, within: 1 day }}
    start: split
    nodes:
      split: {{ type: split, branches: [ {{ percent: 45, next: a }}, {{ percent: 45, next: b }} ], holdout: 10 }}
      a: {{ type: send, channel: email, template: t }}
      b: {{ type: exit }}
script:
{script}
"#
    );
    let r1 = run(&text);
    let r2 = run(&text);
    assert_eq!(
        r1.messages, r2.messages,
        "the same people land in the same branches"
    );
    let st = &r1.stats["j"];
    let holdout = st.exited.get("holdout").copied().unwrap_or(0);
    let sent = r1.messages.len() as u64;
    assert!((5..=35).contains(&holdout), "about 10% held out: {holdout}");
    assert!((70..=110).contains(&sent), "about 45% sent: {sent}");
    assert_eq!(
        st.converted, 200,
        "held-out people's purchases count too, for uplift"
    );
}

#[test]
fn reentry_policies_entry_caps_and_exclusion_between_journeys() {
    let r = small(
        r#"
  - id: once
    trigger: { event: Ping }
    start: w
    nodes: { w: { type: wait, for: 10 minutes } }
  - id: again
    trigger: { event: Ping }
    reentry: after_exit
    start: w
    nodes: { w: { type: wait, for: 10 minutes } }
  - id: limited
    trigger: { event: Ping }
    reentry: { at_most: 2, per: 1 day }
    start: w
    nodes: { w: { type: wait, for: 10 minutes } }
  - id: capped
    trigger: { event: Ping }
    reentry: after_exit
    entry_cap: { max: 1, per: 1 day }
    start: w
    nodes: { w: { type: wait, for: 10 minutes } }
"#,
        r#"
  - { at: "+0 minutes", profile: a, track: Ping }
  - { at: "+5 minutes", profile: a, track: Ping }
  - { at: "+1 hour", profile: a, track: Ping }
  - { at: "+2 hours", profile: a, track: Ping }
"#,
    );
    let st = |j: &str| r.stats.get(j).map_or(0, |s| s.entered);
    assert_eq!(st("once"), 1);
    assert_eq!(st("again"), 3, "not while the first run waits (+5 minutes)");
    assert_eq!(st("limited"), 2);
    assert_eq!(st("capped"), 1);

    let r = small(
        r#"
  - id: win-back
    trigger: { event: Lapsed }
    group: lifecycle
    priority: 10
    start: w
    nodes: { w: { type: wait, for: 2 days } }
  - id: welcome
    trigger: { event: Signed Up }
    group: lifecycle
    priority: 1
    start: w
    nodes:
      w: { type: wait, for: 1 hour, next: mail }
      mail: { type: send, channel: email, template: t }
"#,
        r#"
  - { at: "+0 minutes", profile: a, track: Lapsed }
  - { at: "+10 minutes", profile: a, track: Signed Up }
  - { at: "+0 minutes", profile: b, track: Signed Up }
  - { at: "+10 minutes", profile: b, track: Lapsed }
"#,
    );
    assert_eq!(
        lines(&r, "a", "not_entered"),
        ["in journey `win-back`, which excludes this one"]
    );
    assert_eq!(lines(&r, "b", "exited")[0], "preempted by `win-back`");
    assert!(
        r.messages.is_empty(),
        "no welcome series for anyone in a win-back"
    );
}

#[test]
fn segment_triggers_fire_when_membership_changes_with_events_and_with_time() {
    let r = run(r#"
start: 2026-11-23T08:00:00Z
run_for: 5 days
segments:
  Recent buyers: 'count of "Order Completed" in last 2 days >= 1'
templates: [ { id: t, variants: { email: { subject: s, body: b } } } ]
profiles:
  - { id: a, identities: { email: a@example.com }, traits: { consent: { email: true } } }
journeys:
  - id: thanks
    trigger: { segment_entered: Recent buyers }
    start: m
    nodes: { m: { type: send, channel: email, template: t } }
  - id: come-back
    trigger: { segment_exited: Recent buyers }
    start: m
    nodes: { m: { type: send, channel: email, template: t } }
script:
  - { at: "+1 hour", profile: a, track: Order Completed }
"#);
    assert_eq!(
        sends(&r, "2026-11-23T08:00:00Z", "a"),
        s(&[("email", 60), ("email", 60 + 2 * 24 * 60)]),
        "entered on the order, exited exactly two days later"
    );
}

#[test]
fn broken_definitions_are_refused_with_every_problem_named() {
    let cases: &[(&str, &[&str])] = &[
        (
            r#"
  - id: j
    trigger: { event: X }
    start: a
    nodes:
      a: { type: send, channel: email, template: nope, next: b }
      b: { type: condition, if: 'in segment "Ghosts"', then: a, else: zz }
      c: { type: exit }
"#,
            &[
                "journeys[0].nodes.a.template: there is no template named `nope`",
                "journeys[0].nodes.b.else: there is no node named `zz`",
                "journeys[0].nodes.b.if: there is no segment named `Ghosts`",
            ],
        ),
        (
            r#"
  - id: j
    trigger: { event: X }
    start: a
    nodes:
      a: { type: send, channel: email, template: t, next: b }
      b: { type: condition, if: 'trait plan = "gold"', then: a, else: c }
      c: { type: exit }
      d: { type: exit }
"#,
            &[
                "journeys[0].nodes.d: no path from `start` reaches this node",
                "journeys[0].nodes.a: the loop a → b → a never waits; put a wait in it",
            ],
        ),
        (
            // A cascade can fall straight through (every channel held): it is no wait for a loop.
            r#"
  - id: j
    trigger: { event: X }
    start: a
    nodes:
      a: { type: cascade, steps: [ { channel: email, template: t, within: 1 hour }, { channel: sms, template: t } ], next: b }
      b: { type: webhook, url: "http://127.0.0.1:9/x", next: a }
"#,
            &["journeys[0].nodes.a: the loop a → b → a never waits"],
        ),
        (
            r#"
  - id: j
    trigger: { event: X, segment_entered: Y }
    start: a
    nodes:
      a: { type: cascade, steps: [ { channel: email, template: t }, { channel: viber, template: t, within: 2 fortnights } ] }
      b: { type: split, branches: [ { percent: 50, next: a } ], holdout: 10 }
"#,
            &[
                "journeys[0].trigger: name exactly one trigger",
                "journeys[0].nodes.a.steps[0].within: every step but the last",
                "journeys[0].nodes.a.steps[1].template: template `t` has no viber variant",
                "journeys[0].nodes.a.steps[1].within: `2 fortnights` is not a duration",
                "journeys[0].nodes.b.branches: the branches and the holdout add up to 60%",
            ],
        ),
    ];
    for (journeys, expected) in cases {
        let text = format!("{SMALL}\njourneys:\n{journeys}");
        let problems: Vec<String> = simulate(&text)
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect();
        for e in *expected {
            assert!(
                problems.iter().any(|p| p.starts_with(e)),
                "expected {e:?} in {problems:#?}"
            );
        }
    }
    // Shape errors come from the reader with the line and column.
    let text = format!("{SMALL}\njourneys:\n  - id: j\n    trigger: {{ event: X }}\n    start: a\n    nodes:\n      a: {{ type: send, channel: pigeon, template: t }}\n");
    let p = simulate(&text).unwrap_err();
    assert!(p[0].field.starts_with("line "), "{p:?}");
    assert!(
        p[0].reason.contains("pigeon") && p[0].reason.contains("web_push"),
        "{p:?}"
    );
}

/// Runs `text` step by step, crashing at the steps in `crash_at`: the world goes back to the state before
/// the step (its last commit) but keeps the outbox written during it, and the step runs again.
fn run_with_crashes(text: &str, crash_at: &[usize]) -> (Report, usize) {
    let scenario: Scenario = serde_norway::from_str(text).unwrap();
    let mut world = World::new(scenario).unwrap();
    let mut steps = 0;
    let mut replays = 0;
    loop {
        let snapshot = world.clone();
        if !world.step() {
            break;
        }
        if crash_at.contains(&steps) && replays < crash_at.len() * 2 {
            world = World::recover(&snapshot, &world);
            replays += 1;
            assert!(world.step());
        }
        steps += 1;
    }
    (world.report(String::new()), replays)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// No step sends twice (or is skipped) across crashes and replays: the outcome equals a run without them.
    #[test]
    fn crashes_and_replays_change_nothing(crash_at in proptest::collection::vec(0usize..25, 1..12)) {
        let (clean, _) = run_with_crashes(ABANDONED_CART, &[]);
        let (crashed, replays) = run_with_crashes(ABANDONED_CART, &crash_at);
        prop_assert!(replays > 0);
        prop_assert_eq!(clean.to_text(), crashed.to_text());
        prop_assert_eq!(&clean.messages, &crashed.messages);
        let keys: std::collections::BTreeSet<_> = crashed.messages.iter().map(|m| &m.key).collect();
        prop_assert_eq!(keys.len(), crashed.messages.len());
    }

    /// However many journeys want to message a person, the caps hold in every rolling window.
    #[test]
    fn caps_are_never_exceeded(
        pings in proptest::collection::vec((0u32..4, 0u32..(3 * 24 * 60)), 1..60),
        day_cap in 1u32..4,
        sms_cap in 1u32..3,
    ) {
        let script: String = pings
            .iter()
            .map(|(p, m)| format!("  - {{ at: \"+{m} minutes\", profile: p{p}, track: Ping }}\n"))
            .collect();
        let people: String = (0..4)
            .map(|i| format!("  - {{ id: p{i}, identities: {{ email: p{i}@example.com, phone: \"+491511234567{i}\" }}, traits: {{ consent: {{ email: true, sms: true }} }} }}\n"))
            .collect();
        let text = format!(r#"
start: 2026-11-23T00:00:00Z
run_for: 4 days
governance:
  caps: [ {{ max: {day_cap}, per: 1 day }}, {{ channel: sms, max: {sms_cap}, per: 2 days }} ]
templates: [ {{ id: t, variants: {{ email: {{ subject: s, body: b }}, sms: {{ text: x }} }} }} ]
profiles:
{people}
journeys:
  - id: mail
    trigger: {{ event: Ping }}
    reentry: after_exit
    start: m
    nodes: {{ m: {{ type: send, channel: email, template: t, next: s }}, s: {{ type: send, channel: sms, template: t }} }}
  - id: chain
    trigger: {{ event: Ping }}
    reentry: after_exit
    start: w
    nodes:
      w: {{ type: wait, for: 3 hours, next: c }}
      c: {{ type: cascade, steps: [ {{ channel: sms, template: t, within: 1 hour }}, {{ channel: email, template: t }} ] }}
script:
{script}
"#);
        let r = run(&text);
        let mut by_person: BTreeMap<&str, Vec<(i64, &str)>> = BTreeMap::new();
        for m in &r.messages {
            by_person.entry(&m.profile).or_default().push((m.at, m.channel.as_str()));
        }
        for (p, msgs) in by_person {
            for (at, _) in &msgs {
                let day = msgs.iter().filter(|(t, _)| *t > at - 86_400_000 && t <= at).count();
                prop_assert!(day <= day_cap as usize, "{} got {} in a day (cap {})", p, day, day_cap);
                let sms = msgs.iter().filter(|(t, c)| *c == "sms" && *t > at - 2 * 86_400_000 && t <= at).count();
                prop_assert!(sms <= sms_cap as usize, "{} got {} sms in two days (cap {})", p, sms, sms_cap);
            }
        }
    }
}

#[test]
fn date_triggers_fire_on_birthdays_and_days_after_a_trait_in_the_persons_zone() {
    let r = run(r#"
start: 2026-11-23T00:00:00Z
run_for: 10 days
timezone: Europe/Moscow
templates: [ { id: t, variants: { email: { subject: "Happy birthday", body: b } } } ]
profiles:
  - { id: a, identities: { email: a@example.com }, traits: { birthday: "1990-11-25", signed_up_at: "2026-11-22T15:00:00Z", consent: { email: true } } }
  - { id: b, identities: { email: b@example.com }, traits: { consent: { email: true } } }
journeys:
  - id: birthday
    trigger: { date: { trait: birthday, at: "09:00", yearly: true } }
    reentry: after_exit
    start: m
    nodes: { m: { type: send, channel: email, template: t } }
  - id: day-three
    trigger: { date: { trait: signed_up_at, offset: 3 days } }
    start: m
    nodes: { m: { type: send, channel: email, template: t } }
script:
  - { at: "+1 day", profile: b, identify: { birthday: "2000-11-30" } }
"#);
    let at = "2026-11-23T00:00:00Z";
    // 25 November 09:00 Moscow = 06:00 UTC; sign-up on the 22nd + 3 days at 10:00 Moscow = 25th 07:00 UTC.
    assert_eq!(
        sends(&r, at, "a"),
        s(&[
            ("email", 2 * 24 * 60 + 6 * 60),
            ("email", 2 * 24 * 60 + 7 * 60)
        ])
    );
    // A birthday learned later still fires.
    assert_eq!(sends(&r, at, "b"), s(&[("email", 7 * 24 * 60 + 6 * 60)]));
    assert_eq!(lines(&r, "a", "entered")[0], "on its date");
}

#[test]
fn a_recurring_campaign_starts_runs_every_period_under_the_reentry_policy() {
    let r = run(r#"
start: 2026-11-23T08:00:00Z
run_for: 15 days
templates: [ { id: t, variants: { email: { subject: "This week", body: b } } } ]
profiles:
  - { id: a, identities: { email: a@example.com }, traits: { consent: { email: true } } }
journeys:
  - id: weekly
    trigger: { schedule: { at: 2026-11-23T10:00:00Z, every: 7 days } }
    reentry: after_exit
    start: m
    nodes: { m: { type: send, channel: email, template: t } }
"#);
    let week = 7 * 24 * 60;
    assert_eq!(
        sends(&r, "2026-11-23T08:00:00Z", "a"),
        s(&[
            ("email", 120),
            ("email", 120 + week),
            ("email", 120 + 2 * week)
        ])
    );
}

use std::collections::BTreeSet;

use proptest::prelude::*;
use seam_core::{Identifier, IdentifierRules, IdentifierType, ProfileId};

use crate::{alias_previous, co_occurrence_groups, resolve, MemoryGraph};

fn id(kind: &'static str, value: &str) -> Identifier {
    Identifier::new(IdentifierType::builtin(kind), value)
}

/// Feeds calls through `resolve` + `apply`, as the store does, numbering events from 1.
fn run(calls: &[Vec<Identifier>]) -> MemoryGraph {
    let rules = IdentifierRules::default();
    let mut g = MemoryGraph::default();
    for (i, call) in calls.iter().enumerate() {
        let r = resolve(&rules, &mut g, call, ProfileId::from_seq(i as i64 + 1)).unwrap();
        g.apply(&r);
    }
    g
}

#[test]
fn anonymous_browsing_before_login_ends_up_on_the_person() {
    let g = run(&[
        vec![id("anonymous_id", "a1")],
        vec![id("anonymous_id", "a1")],
        vec![
            id("anonymous_id", "a1"),
            id("user_id", "42"),
            id("email", "anna@example.com"),
        ],
    ]);
    assert_eq!(g.profiles().len(), 1);
    let (pid, held) = g.profiles().iter().next().unwrap();
    assert_eq!(pid, &ProfileId::from_seq(1), "the oldest profile survives");
    assert_eq!(held.len(), 3);
}

#[test]
fn two_devices_are_stitched_by_a_shared_login_and_the_oldest_profile_survives() {
    let g = run(&[
        vec![id("anonymous_id", "phone")],
        vec![id("anonymous_id", "laptop")],
        vec![id("anonymous_id", "laptop"), id("user_id", "7")],
        vec![id("anonymous_id", "phone"), id("user_id", "7")],
    ]);
    assert_eq!(g.profiles().len(), 1);
    assert_eq!(g.current(&ProfileId::from_seq(2)), ProfileId::from_seq(1));
}

#[test]
fn a_shared_tablet_never_merges_two_customers_with_different_user_ids() {
    let rules = IdentifierRules::default();
    let mut g = run(&[
        vec![id("anonymous_id", "tablet"), id("user_id", "mum")],
        vec![id("user_id", "dad"), id("email", "dad@example.com")],
    ]);
    let r = resolve(
        &rules,
        &mut g,
        &[id("anonymous_id", "tablet"), id("user_id", "dad")],
        ProfileId::from_seq(3),
    )
    .unwrap();
    assert_eq!(
        r.profile,
        ProfileId::from_seq(2),
        "the event belongs to its highest-priority identifier"
    );
    assert!(r.merge.is_empty());
    assert_eq!(r.conflicts.len(), 1);
    assert_eq!(r.conflicts[0].held_by, Some(ProfileId::from_seq(1)));
    assert_eq!(r.conflicts[0].limit_type.as_str(), "user_id");
    g.apply(&r);
    assert_eq!(g.profiles().len(), 2);
}

#[test]
fn a_second_user_id_on_an_identified_profile_starts_its_own_profile() {
    let g = run(&[
        vec![id("anonymous_id", "a"), id("user_id", "1")],
        vec![id("anonymous_id", "a"), id("user_id", "2")],
    ]);
    assert_eq!(g.profiles().len(), 2);
    assert_eq!(
        g.owner_of(&id("user_id", "2")),
        Some(&ProfileId::from_seq(2))
    );
    assert_eq!(
        g.owner_of(&id("anonymous_id", "a")),
        Some(&ProfileId::from_seq(1))
    );
}

#[test]
fn a_limit_that_would_be_exceeded_stops_the_merge() {
    let mut rules = IdentifierRules::default();
    rules.set(
        IdentifierType::builtin("email"),
        seam_core::TypeRule {
            priority: 80,
            limit: 1,
        },
    );
    let mut g = MemoryGraph::default();
    for (i, call) in [
        vec![id("email", "a@x.io")],
        vec![id("email", "b@x.io"), id("phone", "+79123456789")],
    ]
    .iter()
    .enumerate()
    {
        let r = resolve(&rules, &mut g, call, ProfileId::from_seq(i as i64 + 1)).unwrap();
        g.apply(&r);
    }
    let r = resolve(
        &rules,
        &mut g,
        &[id("email", "a@x.io"), id("phone", "+79123456789")],
        ProfileId::from_seq(3),
    )
    .unwrap();
    assert!(r.merge.is_empty());
    assert_eq!(r.conflicts[0].limit_type.as_str(), "email");
}

#[test]
fn alias_previous_id_is_a_known_user_id_or_else_an_anonymous_id() {
    let mut g = run(&[vec![id("user_id", "old-42")]]);
    assert_eq!(
        alias_previous(&mut g, "old-42").unwrap(),
        id("user_id", "old-42")
    );
    assert_eq!(
        alias_previous(&mut g, "cookie-1").unwrap(),
        id("anonymous_id", "cookie-1")
    );
}

#[test]
fn identifiers_of_unknown_types_are_not_used_for_identity() {
    let rules = IdentifierRules::default();
    let mut g = MemoryGraph::default();
    let loyalty = Identifier::new(IdentifierType::parse("loyalty_card").unwrap(), "C-1");
    assert!(resolve(&rules, &mut g, &[loyalty], ProfileId::from_seq(1)).is_err());
}

/// A generated shop population: each person's own identifiers, and calls that each carry some of them.
#[derive(Debug, Clone)]
struct History {
    calls: Vec<Vec<Identifier>>,
}

fn person_ids(p: usize, user: bool, anons: usize, emails: usize, phones: usize) -> Vec<Identifier> {
    let mut v = Vec::new();
    if user {
        v.push(id("user_id", &format!("u{p}")));
    }
    v.extend((0..anons).map(|a| id("anonymous_id", &format!("a{p}-{a}"))));
    v.extend((0..emails).map(|e| id("email", &format!("p{p}.{e}@example.com"))));
    v.extend((0..phones).map(|e| id("phone", &format!("+7912{p:04}{e:03}"))));
    v
}

fn history() -> impl Strategy<Value = History> {
    let person = (any::<bool>(), 1usize..4, 0usize..3, 0usize..2);
    prop::collection::vec(person, 1..8).prop_flat_map(|people| {
        let owned: Vec<Vec<Identifier>> = people
            .iter()
            .enumerate()
            .map(|(p, &(user, anons, emails, phones))| person_ids(p, user, anons, emails, phones))
            .collect();
        let n = owned.len();
        let call = (
            0..n,
            prop::collection::vec(any::<prop::sample::Index>(), 1..4),
        );
        prop::collection::vec(call, 1..30).prop_map(move |calls| History {
            calls: calls
                .into_iter()
                .map(|(p, picks)| picks.iter().map(|i| i.get(&owned[p]).clone()).collect())
                .collect(),
        })
    })
}

fn grouping(g: &MemoryGraph) -> BTreeSet<BTreeSet<Identifier>> {
    g.profiles()
        .values()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn stitching_does_not_depend_on_the_order_calls_arrive_in(
        h in history(),
        seed in any::<u64>(),
    ) {
        let mut shuffled = h.calls.clone();
        // Fisher–Yates with a tiny deterministic generator.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        let expected = co_occurrence_groups(&h.calls);
        prop_assert_eq!(grouping(&run(&h.calls)), expected.clone());
        prop_assert_eq!(grouping(&run(&shuffled)), expected);
    }

    #[test]
    fn every_identifier_is_held_or_its_conflict_recorded_and_no_profile_holds_two_user_ids(
        calls in prop::collection::vec(
            prop::collection::vec((0usize..3, 0usize..4), 1..4)
                .prop_map(|v| v.into_iter().map(|(t, n)| match t {
                    0 => id("user_id", &format!("u{n}")),
                    1 => id("anonymous_id", &format!("shared-device-{n}")),
                    _ => id("email", &format!("e{n}@example.com")),
                }).collect::<Vec<_>>()),
            1..40),
    ) {
        let g = run(&calls);
        for call in &calls {
            for x in call {
                let recorded = g.conflicts().iter().any(|c| &c.identifier == x);
                prop_assert!(g.owner_of(x).is_some() || recorded, "{} was lost", x);
            }
        }
        for held in g.profiles().values() {
            prop_assert!(held.iter().filter(|x| x.kind.as_str() == "user_id").count() <= 1);
        }
    }
}

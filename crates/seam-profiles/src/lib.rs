//! The profile projection as pure code: what an event does to a person's profile, and what a merge does.
//!
//! [`ProfileState`] holds each trait with the time and log position of the value, so the latest value wins
//! whatever order events are applied in, and two profiles merge into the same state whichever absorbs the other.

use std::collections::BTreeMap;

use seam_core::{Event, EventKind, EventType, Millis, Seq};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// One trait value with its provenance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraitValue {
    #[serde(rename = "v")]
    pub value: Value,
    /// Event time of the call that set it.
    #[serde(rename = "t")]
    pub at: Millis,
    /// Log position of that call (breaks ties between calls with the same time).
    #[serde(rename = "s")]
    pub seq: Seq,
}

impl TraitValue {
    fn newer_than(&self, other: &TraitValue) -> bool {
        (self.at, self.seq) > (other.at, other.seq)
    }
}

/// What Seam knows of a person apart from identities and the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ProfileState {
    pub traits: BTreeMap<String, TraitValue>,
    pub first_seen: Option<Millis>,
    pub last_seen: Option<Millis>,
    /// Events received for the person (each messageId once); system events are not counted.
    pub event_count: u64,
    /// Log position of the person's latest track event (0 before the first): tells whether a digest of the
    /// person's events made earlier has seen all of them.
    #[serde(default)]
    pub last_track_seq: Seq,
}

impl ProfileState {
    /// Applies one event at log position `seq`.
    pub fn apply(&mut self, event: &Event, seq: Seq) {
        if event.kind.kind() == EventKind::System {
            return;
        }
        self.event_count += 1;
        if event.kind == EventType::Track {
            self.last_track_seq = self.last_track_seq.max(seq);
        }
        self.first_seen = Some(
            self.first_seen
                .map_or(event.timestamp, |f| f.min(event.timestamp)),
        );
        self.last_seen = Some(
            self.last_seen
                .map_or(event.timestamp, |l| l.max(event.timestamp)),
        );
        if event.kind == EventType::Identify {
            for (k, v) in &event.traits {
                self.set_trait(
                    k,
                    TraitValue {
                        value: v.clone(),
                        at: event.timestamp,
                        seq,
                    },
                );
            }
        }
    }

    fn set_trait(&mut self, key: &str, value: TraitValue) {
        match self.traits.get_mut(key) {
            Some(old) if !value.newer_than(old) => {}
            Some(old) => *old = value,
            None => {
                self.traits.insert(key.to_owned(), value);
            }
        }
    }

    /// Takes in everything a merged-away profile knew.
    pub fn absorb(&mut self, other: ProfileState) {
        self.event_count += other.event_count;
        self.last_track_seq = self.last_track_seq.max(other.last_track_seq);
        self.first_seen = min_opt(self.first_seen, other.first_seen);
        self.last_seen = max_opt(self.last_seen, other.last_seen);
        for (k, v) in other.traits {
            self.set_trait(&k, v);
        }
    }

    /// The latest value of each trait.
    pub fn trait_values(&self) -> Map<String, Value> {
        self.traits
            .iter()
            .map(|(k, v)| (k.clone(), v.value.clone()))
            .collect()
    }

    /// The latest value of each trait, moved out of the state.
    pub fn into_trait_values(self) -> Map<String, Value> {
        self.traits.into_iter().map(|(k, v)| (k, v.value)).collect()
    }
}

fn min_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn max_opt(a: Option<Millis>, b: Option<Millis>) -> Option<Millis> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn identify(at: Millis, traits: Value) -> Event {
        let mut e = Event::system(format!("m{at}"), EventType::Identify, at, Map::new());
        e.traits = traits.as_object().cloned().unwrap_or_default();
        e
    }

    #[test]
    fn the_latest_trait_value_wins_by_event_time_not_arrival() {
        let mut p = ProfileState::default();
        p.apply(&identify(2_000, json!({"plan": "gold"})), 1);
        p.apply(
            &identify(1_000, json!({"plan": "silver", "city": "Kazan"})),
            2,
        );
        assert_eq!(
            p.trait_values(),
            json!({"plan": "gold", "city": "Kazan"})
                .as_object()
                .cloned()
                .unwrap()
        );
        assert_eq!(
            (p.first_seen, p.last_seen, p.event_count),
            (Some(1_000), Some(2_000), 2)
        );
        assert_eq!(p.clone().into_trait_values(), p.trait_values());
    }

    #[test]
    fn system_events_do_not_count_for_the_person() {
        let mut p = ProfileState::default();
        p.apply(
            &Event::system("m".into(), EventType::Merge, 5, Map::new()),
            1,
        );
        assert_eq!(p, ProfileState::default());
    }

    proptest! {
        #[test]
        fn any_split_and_merge_of_a_history_gives_the_same_profile(
            events in prop::collection::vec((0i64..50, 0usize..3, 0u8..4, any::<bool>()), 1..30),
            split in any::<prop::sample::Index>(),
        ) {
            let keys = ["plan", "city", "name"];
            let evs: Vec<(Event, Seq)> = events.iter().enumerate()
                .map(|(i, &(t, k, v, tracked))| {
                    let mut e = identify(t, json!({ keys[k]: v }));
                    if tracked {
                        e.kind = EventType::Track;
                    }
                    (e, i as Seq + 1)
                })
                .collect();
            let mut whole = ProfileState::default();
            for (e, s) in &evs { whole.apply(e, *s); }
            let cut = split.index(evs.len() + 1);
            let (mut a, mut b) = (ProfileState::default(), ProfileState::default());
            for (e, s) in &evs[..cut] { a.apply(e, *s); }
            for (e, s) in evs[cut..].iter().rev() { b.apply(e, *s); }
            let mut ab = a.clone(); ab.absorb(b.clone());
            let mut ba = b; ba.absorb(a);
            prop_assert_eq!(&ab, &whole);
            prop_assert_eq!(&ba, &whole);
            let last_track = evs.iter().filter(|(e, _)| e.kind == EventType::Track).map(|(_, s)| *s).max();
            prop_assert_eq!(whole.last_track_seq, last_track.unwrap_or(0));
        }
    }
}

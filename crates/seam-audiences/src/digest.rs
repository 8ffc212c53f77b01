//! A person's digest: the part of their event history that a set of definitions can still read, so that
//! deciding membership reads the digest and the events since it was last brought up to date, never the whole
//! history again.
//!
//! [`Needs`] says, for the segments and computed traits of a workspace, which events matter (by name), which of
//! their properties are read, and for how long after it happened an event can still change a result. A
//! [`Digest`] holds the events that pass: an event is admitted once and dropped once it is older than every
//! window that reads it. Evaluating a definition of the same set on the digest gives the same
//! membership and the same `next_change` as evaluating it on the whole history (a property test below holds
//! this for random definitions and histories): events of other names match nothing, properties not read are
//! never looked at, and an event older than every window of its name is outside all of them for good.
//!
//! `for some p` ranges over the values of `p` on events of any name at any time. The digest keeps those
//! values too: an event that brings a value no kept event has is kept for it (with only `p`), so the set of
//! candidates is the same.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::ast::{Expr, Metric};
use crate::eval::{PersonEvent, Uses};
use seam_core::Millis;

/// How long past the last window an event is kept anyway: a clock that steps back a little must not find it
/// gone.
const MARGIN: Millis = 86_400_000;

/// What a set of definitions reads of a person's events.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Needs {
    events: BTreeMap<String, Need>,
    items: BTreeSet<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
struct Need {
    /// After how long an event stops mattering; `None`: never.
    keep: Option<Millis>,
    properties: BTreeSet<String>,
}

impl Needs {
    /// The needs of segment definitions and computed-trait measures taken together.
    pub fn of<'e>(
        segments: impl IntoIterator<Item = &'e Expr>,
        measures: impl IntoIterator<Item = &'e Metric>,
    ) -> Self {
        let mut uses = Uses::default();
        segments.into_iter().for_each(|e| uses.expr(e));
        measures.into_iter().for_each(|m| uses.metric(m, None));
        Self {
            events: uses
                .events
                .into_iter()
                .map(|(name, u)| {
                    let need = Need {
                        keep: (!u.forever)
                            .then(|| u.durations.last().copied().unwrap_or(0) + MARGIN),
                        properties: u.properties.into_iter().map(str::to_owned).collect(),
                    };
                    (name.to_owned(), need)
                })
                .collect(),
            items: uses.items.into_iter().map(str::to_owned).collect(),
        }
    }

    /// Whether no definition reads any event.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.items.is_empty()
    }

    /// Whether an event of this name may be admitted (every event may, when a definition ranges over the
    /// values of a property with `for some`).
    pub fn reads(&self, name: &str) -> bool {
        !self.items.is_empty() || self.events.contains_key(name)
    }

    /// Whether the property `property` of an event named `name` may be kept (see [`Needs::admit`]).
    pub fn keeps(&self, name: &str, property: &str) -> bool {
        self.items.contains(property)
            || self
                .events
                .get(name)
                .is_some_and(|n| n.properties.contains(property))
    }

    /// A fingerprint of these needs (FNV-1a of their canonical form): a digest made under other needs is
    /// rebuilt, not used.
    pub fn fingerprint(&self) -> i64 {
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in text.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h as i64
    }

    /// Adds an event to the digest if a definition may read it; keeps only the properties read. Events may
    /// come in any order of time; `seq` (the log position) orders events of the same instant.
    pub fn admit(
        &self,
        digest: &mut Digest,
        seq: i64,
        name: &str,
        at: Millis,
        properties: &Map<String, Value>,
    ) {
        let need = self.events.get(name);
        let new_item = self.items.iter().any(|p| {
            properties
                .get(p)
                .is_some_and(|v| !digest.events.iter().any(|k| k.properties.get(p) == Some(v)))
        });
        if need.is_none() && !new_item {
            return;
        }
        let kept: Map<String, Value> = properties
            .iter()
            .filter(|(k, _)| self.keeps(name, k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let event = Kept {
            seq,
            at,
            name: name.to_owned(),
            properties: kept,
        };
        let i = digest
            .events
            .partition_point(|k| (k.at, k.seq) <= (event.at, event.seq));
        if i > 0 && digest.events[i - 1].seq == seq {
            return; // admitted already (a replay)
        }
        digest.events.insert(i, event);
    }

    /// Drops the events that no window can contain from `now` on (an event that alone carries a `for some`
    /// value stays, for the value). Returns whether anything was dropped.
    pub fn prune(&self, digest: &mut Digest, now: Millis) -> bool {
        let before = digest.events.len();
        let mut carried: BTreeSet<(String, String)> = BTreeSet::new();
        digest.events.retain(|k| {
            let mut keep = self
                .events
                .get(&k.name)
                .is_some_and(|n| n.keep.is_none_or(|keep| k.at.saturating_add(keep) >= now));
            for p in &self.items {
                if let Some(v) = k.properties.get(p) {
                    // The first event carrying each value stays for it.
                    keep |= carried.insert((p.clone(), v.to_string()));
                }
            }
            keep
        });
        digest.events.len() != before
    }
}

/// The events of a person that definitions may still read, in time order.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    pub events: Vec<Kept>,
}

/// One event kept in a digest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    #[serde(rename = "s")]
    pub seq: i64,
    #[serde(rename = "t")]
    pub at: Millis,
    #[serde(rename = "n")]
    pub name: String,
    #[serde(rename = "p", default, skip_serializing_if = "Map::is_empty")]
    pub properties: Map<String, Value>,
}

impl Digest {
    /// The kept events as evaluation reads them.
    pub fn person_events(&self) -> Vec<PersonEvent> {
        self.events
            .iter()
            .map(|k| PersonEvent {
                name: k.name.clone(),
                at: k.at,
                properties: k.properties.clone(),
            })
            .collect()
    }
}

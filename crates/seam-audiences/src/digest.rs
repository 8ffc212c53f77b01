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

use serde::Serialize;
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
    /// Durations after an event at which a result may change because of it (windows, `N ago`, `within`), for
    /// [`Needs::next_change`]. Not part of the fingerprint: they change no digest (`keep` says how long one
    /// holds an event).
    #[serde(skip)]
    durations: BTreeSet<Millis>,
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
                        durations: u.durations,
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

    /// A fingerprint of these needs and of the digest's stored form (FNV-1a of their canonical form): a
    /// digest made under other needs, or stored in another form, is rebuilt, not used.
    pub fn fingerprint(&self) -> i64 {
        let text = serde_json::to_string(self).unwrap_or_default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in std::iter::once(codec::VERSION).chain(text.bytes()) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h as i64
    }

    /// The earliest instant after `now` at which the result of one of these definitions for a person with
    /// `events` may change with no new event: an event entering or leaving a window, a `N days ago` threshold
    /// passing an event's time, a sequence's time running out. `None` when only new events can change them. It
    /// may be earlier than the actual change (the caller evaluates again then and asks again), never later: the
    /// scheduler of time-driven membership relies on it. The same as the earliest of each definition's own,
    /// found in one pass over the events.
    pub fn next_change(&self, events: &[PersonEvent], now: Millis) -> Option<Millis> {
        let mut next: Option<Millis> = None;
        let mut consider = |t: Millis| {
            if t > now {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        for ev in events {
            let Some(need) = self.events.get(&ev.name) else {
                continue;
            };
            consider(ev.at);
            for d in &need.durations {
                // Windows are half-open, comparisons strict or not: the flip is at the instant or the one after.
                consider(ev.at + d);
                consider(ev.at + d + 1);
            }
        }
        next
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
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Digest {
    pub events: Vec<Kept>,
}

/// One event kept in a digest.
#[derive(Debug, Clone, PartialEq)]
pub struct Kept {
    pub seq: i64,
    pub at: Millis,
    pub name: String,
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

    /// The kept events as evaluation reads them, moved out of the digest.
    pub fn into_person_events(self) -> Vec<PersonEvent> {
        self.events
            .into_iter()
            .map(|k| PersonEvent {
                name: k.name,
                at: k.at,
                properties: k.properties,
            })
            .collect()
    }

    /// The digest in its stored form (see the `codec` module).
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// A digest from its stored form; an error names what is wrong with the bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, DigestError> {
        codec::decode(bytes)
    }
}

/// Stored bytes that are not a digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stored digest is unreadable at byte {at}: {reason}")]
pub struct DigestError {
    pub at: usize,
    pub reason: &'static str,
}

/// The stored form of a digest: compact bytes rather than JSON, since a digest is written at every evaluation
/// and its events repeat the same names, property keys and values (a product's id on each view of it).
///
/// A version byte, then the number of events and each event: its log position and time as the signed
/// difference from the previous event's (zigzag varints), its name, and its properties (a count, then each
/// key and value). Every string (name, key or string value) is written in full the first time and as its
/// number in the order of first appearance after that. A value is a tag byte and its content: null, false,
/// true, an unsigned or a negative integer (varint), a float (8 bytes, little-endian, so it reads back
/// bit for bit), a string, an array (count, values) or an object (count, key and value each).
mod codec {
    use std::collections::HashMap;

    use serde_json::{Map, Number, Value};

    use super::{Digest, DigestError, Kept};

    /// The form's version: part of [`Needs::fingerprint`](super::Needs::fingerprint).
    pub(super) const VERSION: u8 = 1;
    const NULL: u8 = 0;
    const FALSE: u8 = 1;
    const TRUE: u8 = 2;
    const UNSIGNED: u8 = 3;
    const NEGATIVE: u8 = 4;
    const FLOAT: u8 = 5;
    const STRING: u8 = 6;
    const ARRAY: u8 = 7;
    const OBJECT: u8 = 8;
    /// How deeply values may nest: serde_json's own limit, so every property read from an event fits.
    const MAX_DEPTH: usize = 128;

    pub(super) fn encode(digest: &Digest) -> Vec<u8> {
        let mut w = Writer {
            out: Vec::with_capacity(16 + digest.events.len() * 32),
            strings: HashMap::new(),
        };
        w.out.push(VERSION);
        w.varint(digest.events.len() as u64);
        let (mut seq, mut at) = (0i64, 0i64);
        for k in &digest.events {
            w.signed(k.seq.wrapping_sub(seq));
            w.signed(k.at.wrapping_sub(at));
            (seq, at) = (k.seq, k.at);
            w.string(&k.name);
            w.object(&k.properties);
        }
        w.out
    }

    pub(super) fn decode(bytes: &[u8]) -> Result<Digest, DigestError> {
        let mut r = Reader {
            bytes,
            at: 0,
            strings: Vec::new(),
        };
        if r.byte()? != VERSION {
            return Err(r.error("unknown version"));
        }
        let n = r.count()?;
        let mut events = Vec::with_capacity(n);
        let (mut seq, mut at) = (0i64, 0i64);
        for _ in 0..n {
            seq = seq.wrapping_add(r.signed()?);
            at = at.wrapping_add(r.signed()?);
            let name = r.string()?.to_owned();
            let properties = r.object(0)?;
            events.push(Kept {
                seq,
                at,
                name,
                properties,
            });
        }
        if r.at != bytes.len() {
            return Err(r.error("bytes after the last event"));
        }
        Ok(Digest { events })
    }

    struct Writer<'d> {
        out: Vec<u8>,
        /// Each string written so far and its number.
        strings: HashMap<&'d str, u64>,
    }

    impl<'d> Writer<'d> {
        fn varint(&mut self, mut v: u64) {
            while v >= 0x80 {
                self.out.push((v as u8) | 0x80);
                v >>= 7;
            }
            self.out.push(v as u8);
        }

        fn signed(&mut self, v: i64) {
            self.varint(((v << 1) ^ (v >> 63)) as u64);
        }

        /// A string seen before is its number (odd); a new one its length (even) and its bytes.
        fn string(&mut self, s: &'d str) {
            match self.strings.get(s) {
                Some(&i) => self.varint((i << 1) | 1),
                None => {
                    let i = self.strings.len() as u64;
                    self.strings.insert(s, i);
                    self.varint((s.len() as u64) << 1);
                    self.out.extend_from_slice(s.as_bytes());
                }
            }
        }

        fn object(&mut self, map: &'d Map<String, Value>) {
            self.varint(map.len() as u64);
            for (k, v) in map {
                self.string(k);
                self.value(v);
            }
        }

        fn value(&mut self, v: &'d Value) {
            match v {
                Value::Null => self.out.push(NULL),
                Value::Bool(false) => self.out.push(FALSE),
                Value::Bool(true) => self.out.push(TRUE),
                Value::Number(n) => {
                    if let Some(u) = n.as_u64() {
                        self.out.push(UNSIGNED);
                        self.varint(u);
                    } else if let Some(i) = n.as_i64() {
                        // Negative: its distance below zero, less one (so i64::MIN fits).
                        self.out.push(NEGATIVE);
                        self.varint(!(i as u64));
                    } else {
                        self.out.push(FLOAT);
                        let f = n.as_f64().unwrap_or(0.0);
                        self.out.extend_from_slice(&f.to_le_bytes());
                    }
                }
                Value::String(s) => {
                    self.out.push(STRING);
                    self.string(s);
                }
                Value::Array(items) => {
                    self.out.push(ARRAY);
                    self.varint(items.len() as u64);
                    for item in items {
                        self.value(item);
                    }
                }
                Value::Object(map) => {
                    self.out.push(OBJECT);
                    self.object(map);
                }
            }
        }
    }

    struct Reader<'b> {
        bytes: &'b [u8],
        at: usize,
        /// The strings read so far, by number.
        strings: Vec<&'b str>,
    }

    impl<'b> Reader<'b> {
        fn error(&self, reason: &'static str) -> DigestError {
            DigestError {
                at: self.at,
                reason,
            }
        }

        fn byte(&mut self) -> Result<u8, DigestError> {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| self.error("ends too soon"))?;
            self.at += 1;
            Ok(b)
        }

        fn varint(&mut self) -> Result<u64, DigestError> {
            let mut v = 0u64;
            for shift in (0..64).step_by(7) {
                let b = self.byte()?;
                v |= u64::from(b & 0x7f) << shift;
                if b & 0x80 == 0 {
                    return Ok(v);
                }
            }
            Err(self.error("a number longer than 64 bits"))
        }

        fn signed(&mut self) -> Result<i64, DigestError> {
            let v = self.varint()?;
            Ok((v >> 1) as i64 ^ -((v & 1) as i64))
        }

        /// A count of things that each take at least a byte: never more than the bytes left.
        fn count(&mut self) -> Result<usize, DigestError> {
            let n = self.varint()?;
            match usize::try_from(n) {
                Ok(n) if n <= self.bytes.len() - self.at => Ok(n),
                _ => Err(self.error("a count larger than the bytes left")),
            }
        }

        fn string(&mut self) -> Result<&'b str, DigestError> {
            let v = self.varint()?;
            if v & 1 == 1 {
                return usize::try_from(v >> 1)
                    .ok()
                    .and_then(|i| self.strings.get(i).copied())
                    .ok_or_else(|| self.error("a string number not yet seen"));
            }
            let len = usize::try_from(v >> 1)
                .ok()
                .filter(|&len| len <= self.bytes.len() - self.at)
                .ok_or_else(|| self.error("a string longer than the bytes left"))?;
            let s = std::str::from_utf8(&self.bytes[self.at..self.at + len])
                .map_err(|_| self.error("a string that is not UTF-8"))?;
            self.at += len;
            self.strings.push(s);
            Ok(s)
        }

        fn object(&mut self, depth: usize) -> Result<Map<String, Value>, DigestError> {
            if depth > MAX_DEPTH {
                return Err(self.error("values nested too deeply"));
            }
            let n = self.count()?;
            let mut map = Map::new();
            for _ in 0..n {
                let k = self.string()?.to_owned();
                let v = self.value(depth)?;
                map.insert(k, v);
            }
            Ok(map)
        }

        fn value(&mut self, depth: usize) -> Result<Value, DigestError> {
            Ok(match self.byte()? {
                NULL => Value::Null,
                FALSE => Value::Bool(false),
                TRUE => Value::Bool(true),
                UNSIGNED => Value::Number(self.varint()?.into()),
                NEGATIVE => Value::Number((!self.varint()? as i64).into()),
                FLOAT => {
                    let end = self.at + 8;
                    let raw = self
                        .bytes
                        .get(self.at..end)
                        .ok_or_else(|| self.error("ends too soon"))?;
                    let f = f64::from_le_bytes(raw.try_into().unwrap_or_default());
                    self.at = end;
                    Value::Number(
                        Number::from_f64(f)
                            .ok_or_else(|| self.error("a number that is not finite"))?,
                    )
                }
                STRING => Value::String(self.string()?.to_owned()),
                ARRAY => {
                    if depth >= MAX_DEPTH {
                        return Err(self.error("values nested too deeply"));
                    }
                    let n = self.count()?;
                    let mut items = Vec::with_capacity(n);
                    for _ in 0..n {
                        items.push(self.value(depth + 1)?);
                    }
                    Value::Array(items)
                }
                OBJECT => Value::Object(self.object(depth + 1)?),
                _ => return Err(self.error("an unknown value tag")),
            })
        }
    }
}

//! JSON read without building it: a body is checked once as a whole, then its objects are taken apart into
//! members whose values stay JSON text. Only the fields Seam looks into are parsed; the rest (a track event's
//! `properties`, most of `context`) is copied from the request into the stored event as it came, with the
//! whitespace between tokens taken out.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Checks `text` exactly as parsing it into a [`Value`] would (syntax, numbers within `f64`, string escapes,
/// serde_json's nesting limit) without allocating. Text that passes is parsed by every later step without
/// error, whichever part of it is read.
pub(crate) fn check(text: &str) -> Result<(), serde_json::Error> {
    let mut d = serde_json::Deserializer::from_str(text);
    Check.deserialize(&mut d)?;
    d.end()
}

struct Check;

impl<'de> DeserializeSeed<'de> for Check {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(CheckVisitor)
    }
}

/// A key is read as a string, so its escapes are checked as a `Value`'s keys are.
struct CheckKey;

impl<'de> DeserializeSeed<'de> for CheckKey {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_str(CheckVisitor)
    }
}

struct CheckVisitor;

impl<'de> Visitor<'de> for CheckVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(Check)?.is_some() {}
        Ok(())
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while map.next_key_seed(CheckKey)?.is_some() {
            map.next_value_seed(Check)?;
        }
        Ok(())
    }
}

/// The members of a JSON object in the order written: keys decoded, values left as JSON text. A key written
/// twice keeps both; [`Members::get`] answers with the later one, as a parsed `Value` would hold it.
#[derive(Debug, Default)]
pub(crate) struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'a> Members<'a> {
    /// The members of `raw`, or `None` when it is not an object. `raw` must have passed [`check`].
    pub(crate) fn of(raw: &'a RawValue) -> Option<Self> {
        if !raw.get().starts_with('{') {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// The members of checked text that is an object, or `None` when it is not one.
    pub(crate) fn of_text(text: &'a str) -> Option<Self> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    pub(crate) fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&str, &'a RawValue)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), *v))
    }

    /// The members whose key is not written again later: what a parsed object holds, in the order written.
    pub(crate) fn distinct(&self) -> Vec<(&str, &'a RawValue)> {
        let mut out: Vec<(&str, &'a RawValue)> = if self.0.len() <= SMALL {
            self.0
                .iter()
                .enumerate()
                .filter(|(i, (k, _))| !self.0[i + 1..].iter().any(|(later, _)| later == k))
                .map(|(_, (k, v))| (k.as_ref(), *v))
                .collect()
        } else {
            // A body may hold an object of many thousand members: no comparing each with every other.
            let mut seen = HashSet::with_capacity(self.0.len());
            self.0
                .iter()
                .rev()
                .filter(|(k, _)| seen.insert(k.as_ref()))
                .map(|(k, v)| (k.as_ref(), *v))
                .collect()
        };
        if self.0.len() > SMALL {
            out.reverse();
        }
        out
    }

    /// Whether each of `keys` is a member, answered in one pass for many of them.
    pub(crate) fn key_set(&self) -> KeySet<'_> {
        if self.0.len() <= SMALL {
            KeySet::Few(self)
        } else {
            KeySet::Many(self.0.iter().map(|(k, _)| k.as_ref()).collect())
        }
    }

    /// The object as a parsed map, leaving out `skip`.
    pub(crate) fn to_map(&self, skip: &[&str]) -> Map<String, Value> {
        self.distinct()
            .into_iter()
            .filter(|(k, _)| !skip.contains(k))
            .map(|(k, v)| (k.to_owned(), value(v)))
            .collect()
    }
}

/// Up to this many members, comparing keys one by one is faster than hashing them.
const SMALL: usize = 16;

/// The keys of an object, to look up many of them.
pub(crate) enum KeySet<'m> {
    Few(&'m Members<'m>),
    Many(HashSet<&'m str>),
}

impl KeySet<'_> {
    pub(crate) fn contains(&self, key: &str) -> bool {
        match self {
            Self::Few(m) => m.contains(key),
            Self::Many(set) => set.contains(key),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
                while let Some(Key(k)) = map.next_key()? {
                    out.push((k, map.next_value()?));
                }
                Ok(Members(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// A key borrowed from the text unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// A batch body taken apart in one pass: its members but `batch` as text, and `batch` element by element,
/// each event's members as text.
#[derive(Debug, Default)]
pub(crate) struct BatchText<'a> {
    pub top: Members<'a>,
    pub batch: Option<Items<'a>>,
}

/// The value of a batch's `batch` member.
#[derive(Debug)]
pub(crate) enum Items<'a> {
    /// An array: each element an event's members, or `None` when it is not an object.
    Events(Vec<Option<Members<'a>>>),
    NotAnArray,
}

impl<'a> BatchText<'a> {
    /// A batch body from checked text, or `None` when it is not an object.
    pub(crate) fn of_text(text: &'a str) -> Option<Self> {
        if !text.trim_start().starts_with('{') {
            return None;
        }
        serde_json::from_str(text).ok()
    }
}

impl<'de> serde::Deserialize<'de> for BatchText<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = BatchText<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = BatchText::default();
                while let Some(Key(k)) = map.next_key()? {
                    if k == "batch" {
                        out.batch = Some(map.next_value_seed(ItemsSeed)?);
                    } else {
                        out.top.0.push((k, map.next_value()?));
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// Reads a value whatever it is: `Some` of what `shape` makes of an object or array, `None` for anything
/// else (skipped, as are the objects and arrays `shape` does not take).
macro_rules! only_for {
    ($name:ident, $out:ty, map: $on_map:expr, seq: $on_seq:expr) => {
        struct $name;
        impl<'de> DeserializeSeed<'de> for $name {
            type Value = Option<$out>;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Option<$out>;
                    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                        f.write_str("any JSON value")
                    }
                    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                        Ok(None)
                    }
                    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                        Ok(None)
                    }
                    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                        Ok(None)
                    }
                    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                        Ok(None)
                    }
                    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
                        Ok(None)
                    }
                    fn visit_unit<E>(self) -> Result<Self::Value, E> {
                        Ok(None)
                    }
                    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                        #[allow(clippy::redundant_closure_call)]
                        ($on_seq)(seq)
                    }
                    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                        #[allow(clippy::redundant_closure_call)]
                        ($on_map)(map)
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

fn skip_seq<'de, A: SeqAccess<'de>, T>(mut seq: A) -> Result<Option<T>, A::Error> {
    while seq.next_element::<de::IgnoredAny>()?.is_some() {}
    Ok(None)
}

fn skip_map<'de, A: MapAccess<'de>, T>(mut map: A) -> Result<Option<T>, A::Error> {
    while map
        .next_entry::<de::IgnoredAny, de::IgnoredAny>()?
        .is_some()
    {}
    Ok(None)
}

only_for!(ItemsSeedInner, Vec<Option<Members<'de>>>,
map: skip_map,
seq: |mut seq: A| {
    let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(100));
    while let Some(item) = seq.next_element_seed(EventSeed)? {
        out.push(item);
    }
    Ok(Some(out))
});

struct ItemsSeed;

impl<'de> DeserializeSeed<'de> for ItemsSeed {
    type Value = Items<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Ok(match ItemsSeedInner.deserialize(d)? {
            Some(events) => Items::Events(events),
            None => Items::NotAnArray,
        })
    }
}

only_for!(EventSeed, Members<'de>,
    map: |mut map: A| {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
        while let Some(Key(k)) = map.next_key()? {
            out.push((k, map.next_value()?));
        }
        Ok(Some(Members(out)))
    },
    seq: skip_seq);

/// A checked value parsed.
pub(crate) fn value(raw: &RawValue) -> Value {
    // Text that passed `check` parses; a part of it parses too (it is nested less deeply).
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// A checked object parsed (an empty map for anything else).
pub(crate) fn object(raw: &RawValue) -> Map<String, Value> {
    match value(raw) {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub(crate) fn is_null(raw: &RawValue) -> bool {
    raw.get() == "null"
}

/// The end of the string that starts at `bytes[start]` (a `"`): the index after its closing quote.
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(j) = memchr::memchr2(b'"', b'\\', &bytes[i..]) {
        i += j;
        if bytes[i] == b'"' {
            return i + 1;
        }
        i += 2; // an escape: the backslash and the character after it
    }
    bytes.len()
}

/// How deeply objects and arrays nest in a checked value: 0 for a scalar, 1 for `{}` or `[1]`, and so on.
pub(crate) fn depth(raw: &RawValue) -> usize {
    let bytes = raw.get().as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i = string_end(bytes, i);
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth -= 1,
            _ => {}
        }
        i += 1;
    }
    deepest
}

/// The depth of a checked value when it is over `limit` (its brackets are counted first, strings and all:
/// fewer than the limit cannot nest past it).
pub(crate) fn deeper_than(raw: &RawValue, limit: usize) -> Option<usize> {
    let brackets = raw
        .get()
        .bytes()
        .filter(|b| matches!(b, b'{' | b'['))
        .count();
    if brackets <= limit {
        return None;
    }
    Some(depth(raw)).filter(|d| *d > limit)
}

/// Appends a checked value without the whitespace between its tokens.
pub(crate) fn push_compact(out: &mut String, raw: &RawValue) {
    let text = raw.get();
    let bytes = text.as_bytes();
    let (mut start, mut i) = (0, 0);
    while i < bytes.len() {
        match bytes[i] {
            b'"' => i = string_end(bytes, i),
            b' ' | b'\t' | b'\n' | b'\r' => {
                out.push_str(&text[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    out.push_str(&text[start..]);
}

/// Appends `s` as a JSON string.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.push('"');
    if !s.bytes().any(|b| b == b'"' || b == b'\\' || b < 0x20) {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escape = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        // Every byte escaped is ASCII, so `i` is on a character boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str(&format!("\\u{b:04x}"));
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw(text: &str) -> Box<RawValue> {
        RawValue::from_string(text.to_owned()).unwrap()
    }

    #[test]
    fn the_check_refuses_what_a_value_cannot_hold() {
        for bad in [
            r#"{"a": 1e400}"#,
            r#"{"a": "\ud800"}"#,
            r#"{"\udc00": 1}"#,
            r#"{"a": "\x"}"#,
            r#"{"a": 1,}"#,
            "{\"a\": \"\u{1}\"}",
        ] {
            assert!(check(bad).is_err(), "{bad}");
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(check(&deep)
            .unwrap_err()
            .to_string()
            .contains("recursion limit"));
        assert!(check(r#"{"a": [1, -2.5e3, "\ud83d\ude00", null, true, {"b\n": {}}]}"#).is_ok());
    }

    #[test]
    fn members_answer_with_the_later_of_a_key_written_twice() {
        let text = r#"{"a": 1, "b\"": [2], "a": {"c": 3}}"#;
        let m = Members::of_text(text).unwrap();
        assert_eq!(m.get("a").unwrap().get(), r#"{"c": 3}"#);
        assert_eq!(m.get("b\"").unwrap().get(), "[2]");
        assert_eq!(
            m.distinct().into_iter().map(|(k, _)| k).collect::<Vec<_>>(),
            ["b\"", "a"]
        );
        assert_eq!(
            Value::Object(m.to_map(&[])),
            serde_json::from_str::<Value>(text).unwrap()
        );
        assert!(Members::of_text("[1]").is_none());
    }

    #[test]
    fn depth_counts_nesting_outside_strings() {
        assert_eq!(depth(&raw("1")), 0);
        assert_eq!(depth(&raw("{}")), 1);
        assert_eq!(depth(&raw(r#"{"a": "[[[{{", "b": [[1], {"c": []}]}"#)), 4);
        assert_eq!(depth(&raw(r#"["\"]]]", [["\\"]]]"#)), 3);
        let brackets_in_a_string = format!(r#"{{"a": "{}"}}"#, "[".repeat(40));
        assert_eq!(deeper_than(&raw(&brackets_in_a_string), 32), None);
        let deep = format!("{}{}", "[".repeat(33), "]".repeat(33));
        assert_eq!(deeper_than(&raw(&deep), 32), Some(33));
        assert_eq!(deeper_than(&raw(&deep), 33), None);
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            (-1e300f64..1e300).prop_map(Value::from),
            "[ a-z\"\\\\\n\u{e9}\u{1f600}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
                prop::collection::btree_map("[a-z \"]{0,4}", inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn strings_are_written_as_json_reads_them_back(text in "(?s).{0,40}") {
            let mut out = String::from("x");
            push_str(&mut out, &text);
            prop_assert_eq!(serde_json::from_str::<String>(&out[1..]).unwrap(), text);
        }

        #[test]
        fn compact_text_parses_to_the_same_value(v in json_value()) {
            let pretty = serde_json::to_string_pretty(&v).unwrap();
            prop_assert!(check(&pretty).is_ok());
            let mut out = String::new();
            push_compact(&mut out, &raw(&pretty));
            prop_assert_eq!(&out, &serde_json::to_string(&v).unwrap());
            let nesting = |v: &Value| -> usize {
                fn d(v: &Value) -> usize {
                    match v {
                        Value::Array(a) => 1 + a.iter().map(d).max().unwrap_or(0),
                        Value::Object(o) => 1 + o.values().map(d).max().unwrap_or(0),
                        _ => 0,
                    }
                }
                d(v)
            };
            prop_assert_eq!(depth(&raw(&pretty)), nesting(&v));
        }
    }
}

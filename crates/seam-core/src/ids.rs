//! Ids that people see are prefixed and checked; a value of these types is always well formed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Position of an event in the event log; strictly increasing, assigned when the event becomes durable.
pub type Seq = i64;

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// The id of a profile, `prof_` followed by 13 base-32 characters.
///
/// A profile's id is derived from the log position of the event that created it, so replaying the same log
/// yields the same ids. It never contains `:`, which keeps `GET /v1/profiles/{type}:{value}` unambiguous.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ProfileId(String);

impl ProfileId {
    pub const PREFIX: &'static str = "prof_";

    /// The id of the profile created by the event at `seq`.
    pub fn from_seq(seq: Seq) -> Self {
        let mut n = seq as u64;
        let mut out = [b'0'; 13];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(n & 31) as usize];
            n >>= 5;
        }
        Self(format!(
            "{}{}",
            Self::PREFIX,
            std::str::from_utf8(&out).expect("ascii")
        ))
    }

    /// The log position this profile was created at; older profiles have smaller values.
    pub fn created_seq(&self) -> Seq {
        self.0[Self::PREFIX.len()..].bytes().fold(0u64, |acc, c| {
            (acc << 5) | ALPHABET.iter().position(|&a| a == c).unwrap_or(0) as u64
        }) as Seq
    }

    pub fn parse(s: &str) -> Result<Self, InvalidId> {
        let body = s
            .strip_prefix(Self::PREFIX)
            .ok_or(InvalidId("profile id must start with prof_"))?;
        if body.len() != 13 || !body.bytes().all(|c| ALPHABET.contains(&c)) {
            return Err(InvalidId(
                "profile id must be prof_ and 13 base-32 characters",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProfileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ProfileId {
    type Error = InvalidId;
    fn try_from(s: String) -> Result<Self, InvalidId> {
        Self::parse(&s)
    }
}

impl From<ProfileId> for String {
    fn from(p: ProfileId) -> String {
        p.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidId(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn profile_ids_round_trip_and_keep_their_order(a in 0i64..i64::MAX, b in 0i64..i64::MAX) {
            let (pa, pb) = (ProfileId::from_seq(a), ProfileId::from_seq(b));
            prop_assert_eq!(pa.created_seq(), a);
            prop_assert_eq!(ProfileId::parse(pa.as_str()).unwrap(), pa.clone());
            prop_assert_eq!(pa.cmp(&pb), a.cmp(&b));
            prop_assert!(!pa.as_str().contains(':'));
        }
    }

    #[test]
    fn malformed_profile_ids_are_refused() {
        assert!(ProfileId::parse("prof_").is_err());
        assert!(ProfileId::parse("user_0000000000001").is_err());
        assert!(ProfileId::parse("prof_000000000000I").is_err());
    }
}

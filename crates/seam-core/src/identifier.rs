//! Identifiers of a person and the per-workspace rules for each identifier type.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// The name of an identifier type: `anonymous_id`, `user_id`, `email`, `phone` or a workspace's own
/// (`loyalty_card`, `telegram_id`, …): 1–64 characters of `a-z`, `0-9` and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdentifierType(String);

impl IdentifierType {
    pub const ANONYMOUS_ID: &'static str = "anonymous_id";
    pub const USER_ID: &'static str = "user_id";
    pub const EMAIL: &'static str = "email";
    pub const PHONE: &'static str = "phone";

    pub fn parse(s: &str) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.as_bytes()[0].is_ascii_lowercase()
            && s.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(format!("identifier type {s:?} must be 1-64 characters of a-z, 0-9 and _, starting with a letter"))
        }
    }

    /// One of the four built-in types; panics on anything else (for constants only).
    pub fn builtin(s: &'static str) -> Self {
        assert!(matches!(
            s,
            Self::ANONYMOUS_ID | Self::USER_ID | Self::EMAIL | Self::PHONE
        ));
        Self(s.to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdentifierType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse(&s)
    }
}

impl From<IdentifierType> for String {
    fn from(t: IdentifierType) -> String {
        t.0
    }
}

impl fmt::Display for IdentifierType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One identity of a person: a type and a normalised value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identifier {
    #[serde(rename = "type")]
    pub kind: IdentifierType,
    pub value: String,
}

impl Identifier {
    pub fn new(kind: IdentifierType, value: impl Into<String>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

impl fmt::Display for Identifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.kind, self.value)
    }
}

/// How one identifier type takes part in stitching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TypeRule {
    /// Higher wins: the event's highest-priority identifier decides whose event it is.
    pub priority: i32,
    /// How many distinct values of this type one profile may hold; a merge that would exceed it is refused.
    pub limit: u32,
}

/// The identifier types a workspace knows, with their rules. Types not listed are not used for identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentifierRules {
    types: BTreeMap<IdentifierType, TypeRule>,
}

impl Default for IdentifierRules {
    fn default() -> Self {
        let mut types = BTreeMap::new();
        types.insert(
            IdentifierType::builtin(IdentifierType::USER_ID),
            TypeRule {
                priority: 100,
                limit: 1,
            },
        );
        types.insert(
            IdentifierType::builtin(IdentifierType::EMAIL),
            TypeRule {
                priority: 80,
                limit: 5,
            },
        );
        types.insert(
            IdentifierType::builtin(IdentifierType::PHONE),
            TypeRule {
                priority: 70,
                limit: 5,
            },
        );
        types.insert(
            IdentifierType::builtin(IdentifierType::ANONYMOUS_ID),
            TypeRule {
                priority: 10,
                limit: 500,
            },
        );
        Self { types }
    }
}

impl IdentifierRules {
    /// Rules with no type at all (the default rules hold the four built-in types).
    pub fn empty() -> Self {
        Self {
            types: BTreeMap::new(),
        }
    }

    /// Adds or replaces the rule of one type.
    pub fn set(&mut self, kind: IdentifierType, rule: TypeRule) {
        self.types.insert(kind, rule);
    }

    pub fn rule(&self, kind: &IdentifierType) -> Option<TypeRule> {
        self.types.get(kind).copied()
    }

    pub fn knows(&self, kind: &str) -> bool {
        self.types.keys().any(|k| k.as_str() == kind)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&IdentifierType, &TypeRule)> {
        self.types.iter()
    }

    /// The custom (non built-in) types, which ingest also reads from traits of the same name.
    pub fn custom_types(&self) -> impl Iterator<Item = &IdentifierType> {
        self.types.keys().filter(|k| {
            !matches!(
                k.as_str(),
                IdentifierType::ANONYMOUS_ID
                    | IdentifierType::USER_ID
                    | IdentifierType::EMAIL
                    | IdentifierType::PHONE
            )
        })
    }
}

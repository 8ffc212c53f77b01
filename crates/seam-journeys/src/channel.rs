//! The channels a journey sends through, how a person is addressed on each, and the outcomes a channel reports.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A way to reach a person.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Email,
    Sms,
    WebPush,
    MobilePush,
    Telegram,
    Viber,
    Whatsapp,
    /// An HTTP POST to the shop's own endpoint: not a message to the person, so not governed.
    Webhook,
}

impl Channel {
    pub const ALL: [Channel; 8] = [
        Self::Email,
        Self::Sms,
        Self::WebPush,
        Self::MobilePush,
        Self::Telegram,
        Self::Viber,
        Self::Whatsapp,
        Self::Webhook,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Sms => "sms",
            Self::WebPush => "web_push",
            Self::MobilePush => "mobile_push",
            Self::Telegram => "telegram",
            Self::Viber => "viber",
            Self::Whatsapp => "whatsapp",
            Self::Webhook => "webhook",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }

    /// The identifier types that address a person on this channel, the preferred first.
    pub fn address_types(self) -> &'static [&'static str] {
        match self {
            Self::Email => &["email"],
            Self::Sms => &["phone"],
            Self::WebPush => &["web_push_token"],
            Self::MobilePush => &["push_token"],
            Self::Telegram => &["telegram_id"],
            Self::Viber => &["viber_id"],
            Self::Whatsapp => &["whatsapp_id", "phone"],
            Self::Webhook => &[],
        }
    }

    /// The consent traits that speak for this channel (`consent.<key>`), the most specific first.
    pub fn consent_keys(self) -> &'static [&'static str] {
        match self {
            Self::WebPush => &["web_push", "push"],
            Self::MobilePush => &["mobile_push", "push"],
            other => std::slice::from_ref(&CONSENT_KEYS[other as usize]),
        }
    }
}

const CONSENT_KEYS: [&str; 8] = [
    "email",
    "sms",
    "web_push",
    "mobile_push",
    "telegram",
    "viber",
    "whatsapp",
    "webhook",
];

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a channel reports about a message. Reports come back as events (`Message Read`, …) that carry the
/// message id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Delivered,
    Read,
    Clicked,
    Failed,
    Bounced,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Self::Delivered,
        Self::Read,
        Self::Clicked,
        Self::Failed,
        Self::Bounced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Clicked => "clicked",
            Self::Failed => "failed",
            Self::Bounced => "bounced",
        }
    }

    /// The event that reports it: `Message Delivered`, `Message Read`, …
    pub fn event_name(self) -> &'static str {
        match self {
            Self::Delivered => "Message Delivered",
            Self::Read => "Message Read",
            Self::Clicked => "Message Clicked",
            Self::Failed => "Message Failed",
            Self::Bounced => "Message Bounced",
        }
    }

    pub fn from_event_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|o| o.event_name() == name)
    }

    /// The message did not arrive: a cascade moves on at once.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::Bounced)
    }

    /// Whether having seen `self` means that `wanted` happened too: a click implies a read, a read a delivery.
    pub fn satisfies(self, wanted: Outcome) -> bool {
        let rank = |o: Outcome| match o {
            Self::Delivered => 1,
            Self::Read => 2,
            Self::Clicked => 3,
            Self::Failed | Self::Bounced => 0,
        };
        if wanted.is_failure() {
            return self == wanted;
        }
        rank(self) >= rank(wanted) && rank(self) > 0
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a message is sent: marketing needs consent and obeys caps and quiet hours; transactional messages (an
/// order status, a password reset) pass a marketing opt-out, never a hard suppression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    #[default]
    Marketing,
    Transactional,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_channel_parses_back_from_its_name_and_has_consent_keys() {
        for c in Channel::ALL {
            assert_eq!(Channel::parse(c.as_str()), Some(c));
            assert_eq!(c.consent_keys()[0], c.as_str());
        }
    }

    #[test]
    fn a_click_implies_a_read_and_a_delivery_but_a_failure_implies_nothing() {
        assert!(Outcome::Clicked.satisfies(Outcome::Read));
        assert!(Outcome::Read.satisfies(Outcome::Delivered));
        assert!(!Outcome::Delivered.satisfies(Outcome::Read));
        assert!(!Outcome::Failed.satisfies(Outcome::Delivered));
        assert!(Outcome::Bounced.satisfies(Outcome::Bounced));
        for o in Outcome::ALL {
            assert_eq!(Outcome::from_event_name(o.event_name()), Some(o));
        }
    }
}

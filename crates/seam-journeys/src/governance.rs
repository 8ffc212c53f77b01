//! Delivery governance: the one set of rules every journey and campaign obeys before a message goes out —
//! reachability, the suppression list, consent per channel and topic, mutual exclusion between journeys,
//! "do not offer what was just bought", frequency caps and quiet hours in the person's time zone.
//!
//! Pure: the caller gathers the facts about the person, [`clear`] decides.

use std::collections::BTreeSet;
use std::fmt;

use jiff::tz::TimeZone;
use seam_core::Millis;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::channel::{Category, Channel};
use crate::local;

/// The workspace's rules.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    pub caps: Vec<Cap>,
    pub quiet_hours: Option<QuietHours>,
    /// How long a bought item stays out of offers.
    pub bought_window: Millis,
}

/// At most `max` marketing messages in any `per` (on one channel, or on all together).
#[derive(Debug, Clone, PartialEq)]
pub struct Cap {
    pub channel: Option<Channel>,
    pub max: u32,
    pub per: Millis,
    /// As written in the configuration (`3 per 1 day`), for the reason a message was held back.
    pub text: String,
}

/// Local hours in which marketing messages wait (or are dropped): from `start` to `end`, minutes after
/// midnight; `start > end` spans midnight.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuietHours {
    pub start: u16,
    pub end: u16,
}

impl QuietHours {
    pub fn contains(&self, minute: u16) -> bool {
        if self.start <= self.end {
            minute >= self.start && minute < self.end
        } else {
            minute >= self.start || minute < self.end
        }
    }
}

/// What a journey does with a message that falls in quiet hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuietAction {
    #[default]
    Defer,
    Skip,
}

/// What is known about the person when a message is proposed.
pub struct Facts<'a> {
    pub identities: &'a [(String, String)],
    pub traits: &'a Map<String, Value>,
    /// Addresses (`email:anna@example.com`) on the suppression list: bounced, complained, erased.
    pub suppressed: &'a BTreeSet<String>,
    /// Marketing messages already sent to the person: (time, channel, idempotency key).
    pub sent: &'a [(Millis, Channel, String)],
    pub zone: &'a TimeZone,
    /// Items the person bought: (time, item id).
    pub bought: &'a [(Millis, String)],
    /// The journey whose run excludes this one (same group, higher priority), if any.
    pub excluded_by: Option<&'a str>,
}

/// A message a journey wants to send.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The message's idempotency key: a replay of a step that already sent it does not count it against
    /// the caps.
    pub key: &'a str,
    pub channel: Channel,
    pub category: Category,
    pub topic: Option<&'a str>,
    /// The item the message offers, if any, to hold back offers of what was just bought.
    pub offer: Option<&'a str>,
    pub quiet: QuietAction,
}

/// The verdict on a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Clearance {
    /// Send it, to this address (`type:value`).
    Send { address: String },
    /// Not now: try again at `until`.
    Defer { until: Millis, reason: Reason },
    /// Not at all.
    Suppress(Reason),
}

/// Why a message was held back. Each becomes an event on the person's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// The person has no address on the channel.
    Unreachable,
    /// The address is on the suppression list.
    Suppressed,
    /// No marketing consent on the channel (or for the topic).
    NoConsent,
    /// A run of a journey with a higher priority in the same group.
    Excluded {
        by: String,
    },
    /// The offered item was bought recently.
    AlreadyBought {
        item: String,
    },
    FrequencyCap {
        cap: String,
    },
    QuietHours,
}

impl Reason {
    /// Whether the reason concerns the channel alone, so that the next channel of a cascade may still work.
    pub fn is_channel_specific(&self) -> bool {
        matches!(self, Self::Unreachable | Self::Suppressed | Self::NoConsent)
            || matches!(self, Self::FrequencyCap { .. })
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::Unreachable => "unreachable",
            Self::Suppressed => "suppressed",
            Self::NoConsent => "no_consent",
            Self::Excluded { .. } => "excluded",
            Self::AlreadyBought { .. } => "already_bought",
            Self::FrequencyCap { .. } => "frequency_cap",
            Self::QuietHours => "quiet_hours",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unreachable => f.write_str("no address on the channel"),
            Self::Suppressed => f.write_str("the address is on the suppression list"),
            Self::NoConsent => f.write_str("no marketing consent on the channel"),
            Self::Excluded { by } => write!(f, "in journey `{by}`, which excludes this one"),
            Self::AlreadyBought { item } => write!(f, "bought `{item}` recently"),
            Self::FrequencyCap { cap } => write!(f, "frequency cap {cap} reached"),
            Self::QuietHours => f.write_str("quiet hours"),
        }
    }
}

/// Decides whether `req` may go to the person described by `facts` at `now`.
pub fn clear(policy: &Policy, facts: &Facts<'_>, req: &Request<'_>, now: Millis) -> Clearance {
    let Some(address) = address(facts.identities, req.channel) else {
        return Clearance::Suppress(Reason::Unreachable);
    };
    if facts.suppressed.contains(&address) {
        return Clearance::Suppress(Reason::Suppressed);
    }
    if req.category == Category::Transactional {
        return Clearance::Send { address };
    }
    if !consents(facts.traits, req.channel, req.topic) {
        return Clearance::Suppress(Reason::NoConsent);
    }
    if let Some(by) = facts.excluded_by {
        return Clearance::Suppress(Reason::Excluded { by: by.to_owned() });
    }
    if let Some(item) = req.offer {
        let bought = facts
            .bought
            .iter()
            .any(|(at, i)| i == item && *at > now - policy.bought_window && *at <= now);
        if bought {
            return Clearance::Suppress(Reason::AlreadyBought {
                item: item.to_owned(),
            });
        }
    }
    for cap in &policy.caps {
        let used = facts
            .sent
            .iter()
            .filter(|(at, c, key)| {
                *at > now - cap.per
                    && *at <= now
                    && cap.channel.is_none_or(|cc| cc == *c)
                    && key != req.key
            })
            .count();
        let applies = cap.channel.is_none_or(|c| c == req.channel);
        if applies && used >= cap.max as usize {
            return Clearance::Suppress(Reason::FrequencyCap {
                cap: cap.text.clone(),
            });
        }
    }
    if let Some(q) = policy.quiet_hours {
        if q.contains(local::minute_of_day(now, facts.zone)) {
            return match req.quiet {
                QuietAction::Defer => Clearance::Defer {
                    until: local::next_time_of_day(now, facts.zone, q.end),
                    reason: Reason::QuietHours,
                },
                QuietAction::Skip => Clearance::Suppress(Reason::QuietHours),
            };
        }
    }
    Clearance::Send { address }
}

/// The person's address on `channel`, as `type:value`.
pub fn address(identities: &[(String, String)], channel: Channel) -> Option<String> {
    channel.address_types().iter().find_map(|t| {
        identities
            .iter()
            .rev()
            .find(|(it, _)| it == t)
            .map(|(it, v)| format!("{it}:{v}"))
    })
}

/// The items an `Order Completed` event bought: `products[].product_id`, or `product_id`.
pub fn bought_items(props: &Map<String, Value>) -> Vec<String> {
    let id = |v: &Value| match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    };
    let mut out: Vec<String> = props
        .get("products")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|p| p.get("product_id").and_then(id))
                .collect()
        })
        .unwrap_or_default();
    out.extend(props.get("product_id").and_then(id));
    out
}

/// Marketing consent: `consent.<channel>` is `true`, or an object of topics in which the message's topic (or,
/// without one, `marketing`) is `true`. An explicit `false` anywhere on the way refuses.
pub fn consents(traits: &Map<String, Value>, channel: Channel, topic: Option<&str>) -> bool {
    let Some(Value::Object(consent)) = traits.get("consent") else {
        return false;
    };
    for key in channel.consent_keys() {
        match consent.get(*key) {
            Some(Value::Bool(b)) => return *b,
            Some(Value::Object(topics)) => {
                return topics.get(topic.unwrap_or("marketing")) == Some(&Value::Bool(true));
            }
            _ => {}
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use seam_core::clock::parse_rfc3339;
    use serde_json::json;

    struct Person {
        identities: Vec<(String, String)>,
        traits: Map<String, Value>,
        suppressed: BTreeSet<String>,
        sent: Vec<(Millis, Channel, String)>,
        bought: Vec<(Millis, String)>,
        zone: TimeZone,
    }

    fn anna() -> Person {
        Person {
            identities: vec![
                ("email".into(), "anna@example.com".into()),
                ("phone".into(), "+79123456789".into()),
            ],
            traits: json!({"consent": {"email": true, "sms": {"promo": true, "news": false}}})
                .as_object()
                .unwrap()
                .clone(),
            suppressed: BTreeSet::new(),
            sent: vec![],
            bought: vec![],
            zone: local::zone("Europe/Moscow").unwrap(),
        }
    }

    fn ask(
        p: &Person,
        policy: &Policy,
        channel: Channel,
        category: Category,
        at: &str,
    ) -> Clearance {
        let facts = Facts {
            identities: &p.identities,
            traits: &p.traits,
            suppressed: &p.suppressed,
            sent: &p.sent,
            zone: &p.zone,
            bought: &p.bought,
            excluded_by: None,
        };
        let req = Request {
            key: "run-1:1:x",
            channel,
            category,
            topic: Some("promo"),
            offer: Some("sku-1"),
            quiet: QuietAction::Defer,
        };
        clear(policy, &facts, &req, parse_rfc3339(at).unwrap())
    }

    const NOON_MSK: &str = "2026-11-23T09:00:00Z";

    #[test]
    fn reachability_suppression_and_consent_come_first() {
        let mut p = anna();
        let policy = Policy::default();
        let send = |a: &str| Clearance::Send { address: a.into() };
        assert_eq!(
            ask(&p, &policy, Channel::Email, Category::Marketing, NOON_MSK),
            send("email:anna@example.com")
        );
        assert_eq!(
            ask(&p, &policy, Channel::Sms, Category::Marketing, NOON_MSK),
            send("phone:+79123456789")
        );
        assert_eq!(
            ask(
                &p,
                &policy,
                Channel::Viber,
                Category::Transactional,
                NOON_MSK
            ),
            Clearance::Suppress(Reason::Unreachable)
        );
        p.traits = json!({"consent": {"email": false}})
            .as_object()
            .unwrap()
            .clone();
        assert_eq!(
            ask(&p, &policy, Channel::Email, Category::Marketing, NOON_MSK),
            Clearance::Suppress(Reason::NoConsent)
        );
        assert_eq!(
            ask(
                &p,
                &policy,
                Channel::Email,
                Category::Transactional,
                NOON_MSK
            ),
            send("email:anna@example.com"),
            "transactional passes a marketing opt-out"
        );
        p.suppressed.insert("email:anna@example.com".into());
        assert_eq!(
            ask(
                &p,
                &policy,
                Channel::Email,
                Category::Transactional,
                NOON_MSK
            ),
            Clearance::Suppress(Reason::Suppressed),
            "but never a hard suppression"
        );
    }

    #[test]
    fn caps_count_marketing_messages_in_a_rolling_window() {
        let mut p = anna();
        let day = 86_400_000;
        let policy = Policy {
            caps: vec![
                Cap {
                    channel: None,
                    max: 2,
                    per: day,
                    text: "2 per 1 day".into(),
                },
                Cap {
                    channel: Some(Channel::Sms),
                    max: 1,
                    per: 7 * day,
                    text: "1 sms per 7 days".into(),
                },
            ],
            ..Policy::default()
        };
        let now = parse_rfc3339(NOON_MSK).unwrap();
        p.sent = vec![(now - 2 * day, Channel::Sms, "a".into())];
        assert_eq!(
            ask(&p, &policy, Channel::Sms, Category::Marketing, NOON_MSK),
            Clearance::Suppress(Reason::FrequencyCap {
                cap: "1 sms per 7 days".into()
            })
        );
        assert!(matches!(
            ask(&p, &policy, Channel::Email, Category::Marketing, NOON_MSK),
            Clearance::Send { .. }
        ));
        p.sent.push((now - 3_600_000, Channel::Email, "b".into()));
        p.sent.push((now - day + 1, Channel::Email, "c".into()));
        assert_eq!(
            ask(&p, &policy, Channel::Email, Category::Marketing, NOON_MSK),
            Clearance::Suppress(Reason::FrequencyCap {
                cap: "2 per 1 day".into()
            })
        );
        p.sent.pop();
        p.sent.push((now - day, Channel::Email, "d".into()));
        assert!(
            matches!(
                ask(&p, &policy, Channel::Email, Category::Marketing, NOON_MSK),
                Clearance::Send { .. }
            ),
            "the window rolls"
        );
    }

    #[test]
    fn quiet_hours_defer_to_their_end_in_the_persons_zone() {
        let p = anna();
        let policy = Policy {
            quiet_hours: Some(QuietHours {
                start: 21 * 60,
                end: 9 * 60,
            }),
            ..Policy::default()
        };
        // 23:30 in Moscow.
        assert_eq!(
            ask(
                &p,
                &policy,
                Channel::Email,
                Category::Marketing,
                "2026-11-23T20:30:00Z"
            ),
            Clearance::Defer {
                until: parse_rfc3339("2026-11-24T06:00:00Z").unwrap(),
                reason: Reason::QuietHours
            }
        );
        assert!(matches!(
            ask(
                &p,
                &policy,
                Channel::Email,
                Category::Transactional,
                "2026-11-23T20:30:00Z"
            ),
            Clearance::Send { .. }
        ));
        assert!(matches!(
            ask(
                &p,
                &policy,
                Channel::Email,
                Category::Marketing,
                "2026-11-23T06:00:00Z"
            ),
            Clearance::Send { .. }
        ));
    }

    #[test]
    fn a_recent_purchase_holds_back_its_offer() {
        let mut p = anna();
        let policy = Policy {
            bought_window: 7 * 86_400_000,
            ..Policy::default()
        };
        p.bought.push((
            parse_rfc3339("2026-11-20T10:00:00Z").unwrap(),
            "sku-1".into(),
        ));
        assert_eq!(
            ask(&p, &policy, Channel::Email, Category::Marketing, NOON_MSK),
            Clearance::Suppress(Reason::AlreadyBought {
                item: "sku-1".into()
            })
        );
        assert!(matches!(
            ask(
                &p,
                &policy,
                Channel::Email,
                Category::Marketing,
                "2026-12-01T09:00:00Z"
            ),
            Clearance::Send { .. }
        ));
    }

    #[test]
    fn consent_reads_channel_and_topic() {
        let t = json!({"consent": {"push": true, "sms": {"promo": true, "news": false}}});
        let t = t.as_object().unwrap();
        assert!(
            consents(t, Channel::WebPush, None),
            "push speaks for web push"
        );
        assert!(consents(t, Channel::Sms, Some("promo")));
        assert!(!consents(t, Channel::Sms, Some("news")));
        assert!(!consents(t, Channel::Sms, None), "no `marketing` topic");
        assert!(!consents(t, Channel::Email, None), "never asked");
    }
}

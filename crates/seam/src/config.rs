//! Configuration in layers: built-in defaults → `seam.toml` → `SEAM_*` environment → command-line flags.
//!
//! Environment variables name a key path with `__` between levels: `SEAM_SERVER__LISTEN=0.0.0.0:8080`,
//! `SEAM_DEFAULT_REGION=RU`, `SEAM_LIMITS__MAX_BATCH_EVENTS=1000`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use seam_core::{IdentifierRules, IdentifierType, TypeRule};
use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The data folder.
    pub data: PathBuf,
    /// ISO 3166-1 region for phone numbers written without a country code (`RU`, `DE`, …).
    pub default_region: Option<String>,
    pub server: ServerConfig,
    pub limits: LimitsConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub identity: IdentityConfig,
    pub delivery: DeliveryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data: PathBuf::from("./seam-data"),
            default_region: None,
            server: ServerConfig::default(),
            limits: LimitsConfig::default(),
            store: StoreConfig::default(),
            log: LogConfig::default(),
            identity: IdentityConfig::default(),
            delivery: DeliveryConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub listen: SocketAddr,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub max_event_bytes: usize,
    pub max_batch_bytes: usize,
    pub max_batch_events: usize,
    pub max_message_id_chars: usize,
    pub max_depth: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let l = seam_ingest::Limits::default();
        Self {
            max_event_bytes: l.max_event_bytes,
            max_batch_bytes: l.max_batch_bytes,
            max_batch_events: l.max_batch_events,
            max_message_id_chars: l.max_message_id_chars,
            max_depth: l.max_depth,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    pub queue_capacity: usize,
    pub max_commit_events: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        let s = seam_store::StoreOptions::default();
        Self {
            queue_capacity: s.queue_capacity,
            max_commit_events: s.max_commit_events,
        }
    }
}

/// The rules every journey and campaign sends under.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// The time zone of people without a `timezone` trait (IANA name).
    pub timezone: String,
    /// Local hours in which marketing messages wait: `{ start = "22:00", end = "09:00" }`.
    pub quiet_hours: Option<QuietHoursConfig>,
    /// At most `max` marketing messages in any `per`, on one `channel` or on all.
    pub caps: Vec<CapConfig>,
    /// How long a bought item stays out of offers.
    pub bought_window: String,
    /// Delays before the second, third, … attempt to hand a message to its channel; then it is a dead letter.
    pub retry: Vec<String>,
    /// The key webhook requests are signed with (HMAC-SHA-256). Without one, Seam makes one and keeps it in
    /// `<data>/webhook.secret`.
    pub webhook_secret: Option<String>,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            timezone: "UTC".into(),
            quiet_hours: None,
            caps: vec![],
            bought_window: "7 days".into(),
            retry: ["1 minute", "10 minutes", "1 hour", "6 hours"]
                .map(String::from)
                .to_vec(),
            webhook_secret: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHoursConfig {
    pub start: String,
    pub end: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapConfig {
    pub channel: Option<String>,
    pub max: u32,
    pub per: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug`, `trace`, or a tracing filter such as `seam_store=debug,info`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentityConfig {
    /// Identifier types beyond (or overriding) the built-in ones.
    pub types: Vec<IdentifierTypeConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentifierTypeConfig {
    pub name: String,
    pub priority: i32,
    pub limit: u32,
}

impl Config {
    /// Loads the layers; `explicit` is the --config file (which must then exist).
    pub fn load(explicit: Option<&Path>) -> anyhow::Result<Self> {
        let mut table = match explicit {
            Some(p) => read_table(p)?,
            None if Path::new("seam.toml").exists() => read_table(Path::new("seam.toml"))?,
            None => toml::Table::new(),
        };
        for (key, value) in std::env::vars() {
            let Some(rest) = key.strip_prefix("SEAM_") else {
                continue;
            };
            if rest == "CONFIG" || rest == "LOG" || rest.is_empty() {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
            insert(&mut table, &path, env_value(&value))
                .with_context(|| format!("environment variable {key}"))?;
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .context("configuration is invalid")?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        if let Some(r) = &self.default_region {
            seam_ingest::normalize::parse_region(r)
                .map_err(|e| anyhow::anyhow!("default_region: {e}"))?;
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            bail!(
                "log.format: must be \"text\" or \"json\", not {:?}",
                self.log.format
            );
        }
        let l = &self.limits;
        if l.max_event_bytes == 0
            || l.max_batch_bytes < l.max_event_bytes
            || l.max_batch_events == 0
        {
            bail!("limits: max_event_bytes must be positive and at most max_batch_bytes; max_batch_events positive");
        }
        self.identifier_rules()?;
        self.delivery()?;
        self.retry_schedule()?;
        Ok(())
    }

    pub fn api_settings(&self) -> seam_server::ApiSettings {
        let l = &self.limits;
        seam_server::ApiSettings {
            limits: seam_ingest::Limits {
                max_event_bytes: l.max_event_bytes,
                max_batch_bytes: l.max_batch_bytes,
                max_batch_events: l.max_batch_events,
                max_message_id_chars: l.max_message_id_chars,
                max_depth: l.max_depth,
                ..seam_ingest::Limits::default()
            },
            default_region: self
                .default_region
                .as_deref()
                .and_then(|r| seam_ingest::normalize::parse_region(r).ok()),
        }
    }

    pub fn store_options(&self) -> anyhow::Result<seam_store::StoreOptions> {
        Ok(seam_store::StoreOptions {
            queue_capacity: self.store.queue_capacity.max(1),
            max_commit_events: self.store.max_commit_events.max(1),
            delivery: self.delivery()?,
        })
    }

    /// The dispatcher's settings: the back-off schedule, the outbox folder, the webhook signing key.
    pub fn dispatch_settings(&self) -> anyhow::Result<seam_server::dispatch::DispatchSettings> {
        let secret = match &self.delivery.webhook_secret {
            Some(s) if !s.is_empty() => s.clone(),
            Some(_) => bail!("delivery.webhook_secret: empty"),
            None => {
                let path = self.data.join("webhook.secret");
                match std::fs::read_to_string(&path) {
                    Ok(s) if !s.trim().is_empty() => s.trim().to_owned(),
                    _ => {
                        let s = seam_store::workspace::random_token("whsec_", 32)?;
                        let mut options = std::fs::OpenOptions::new();
                        options.write(true).create(true).truncate(true);
                        #[cfg(unix)]
                        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
                        std::io::Write::write_all(
                            &mut options
                                .open(&path)
                                .with_context(|| format!("writing {}", path.display()))?,
                            s.as_bytes(),
                        )?;
                        s
                    }
                }
            }
        };
        let mut settings =
            seam_server::dispatch::DispatchSettings::new(self.data.join("outbox"), secret);
        settings.retry = self.retry_schedule()?;
        Ok(settings)
    }

    fn retry_schedule(&self) -> anyhow::Result<Vec<i64>> {
        self.delivery
            .retry
            .iter()
            .enumerate()
            .map(|(i, d)| {
                seam_audiences::parse_duration(d)
                    .map(|d| d.millis())
                    .map_err(|e| {
                        anyhow::anyhow!(
                            "delivery.retry[{i}]: {d:?} is not a duration ({})",
                            e.message
                        )
                    })
            })
            .collect()
    }

    /// The delivery rules, each value checked with the key named.
    pub fn delivery(&self) -> anyhow::Result<seam_store::journeys::Delivery> {
        use seam_journeys::governance::{Cap, Policy, QuietHours};
        use seam_journeys::local;
        let d = &self.delivery;
        let duration = |key: &str, text: &str| -> anyhow::Result<i64> {
            seam_audiences::parse_duration(text)
                .map(|d| d.millis())
                .map_err(|e| {
                    anyhow::anyhow!(
                        "{key}: {text:?} is not a duration such as \"1 day\" ({})",
                        e.message
                    )
                })
        };
        let zone =
            local::zone(&d.timezone).map_err(|e| anyhow::anyhow!("delivery.timezone: {e}"))?;
        let quiet_hours = match &d.quiet_hours {
            None => None,
            Some(q) => Some(QuietHours {
                start: local::parse_time_of_day(&q.start)
                    .map_err(|e| anyhow::anyhow!("delivery.quiet_hours.start: {e}"))?,
                end: local::parse_time_of_day(&q.end)
                    .map_err(|e| anyhow::anyhow!("delivery.quiet_hours.end: {e}"))?,
            }),
        };
        let mut caps = vec![];
        for (i, c) in d.caps.iter().enumerate() {
            let channel = match &c.channel {
                None => None,
                Some(name) => Some(seam_journeys::Channel::parse(name).ok_or_else(|| {
                    anyhow::anyhow!("delivery.caps[{i}].channel: {name:?} is not a channel (email, sms, web_push, mobile_push, telegram, viber, whatsapp)")
                })?),
            };
            if c.max == 0 {
                bail!("delivery.caps[{i}].max: must be at least 1");
            }
            caps.push(Cap {
                channel,
                max: c.max,
                per: duration(&format!("delivery.caps[{i}].per"), &c.per)?,
                text: match &c.channel {
                    Some(ch) => format!("{} {ch} per {}", c.max, c.per),
                    None => format!("{} per {}", c.max, c.per),
                },
            });
        }
        Ok(seam_store::journeys::Delivery {
            policy: Policy {
                caps,
                quiet_hours,
                bought_window: duration("delivery.bought_window", &d.bought_window)?,
            },
            zone,
        })
    }

    /// The built-in identifier rules with the configured types added or overridden.
    pub fn identifier_rules(&self) -> anyhow::Result<IdentifierRules> {
        let mut rules = IdentifierRules::default();
        for (i, t) in self.identity.types.iter().enumerate() {
            let kind = IdentifierType::parse(&t.name)
                .map_err(|e| anyhow::anyhow!("identity.types[{i}].name: {e}"))?;
            if t.limit == 0 {
                bail!("identity.types[{i}].limit: must be at least 1");
            }
            rules.set(
                kind,
                TypeRule {
                    priority: t.priority,
                    limit: t.limit,
                },
            );
        }
        Ok(rules)
    }
}

fn read_table(path: &Path) -> anyhow::Result<toml::Table> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.parse::<toml::Table>()
        .with_context(|| format!("{} is not valid TOML", path.display()))
}

/// Environment values are typed like TOML scalars when they parse as one (`8080`, `true`), else strings.
fn env_value(raw: &str) -> toml::Value {
    let probe = format!("v = {raw}");
    match probe.parse::<toml::Table>() {
        Ok(mut t) if !raw.trim().is_empty() => match t.remove("v") {
            Some(
                v @ (toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_)),
            ) => v,
            _ => toml::Value::String(raw.to_owned()),
        },
        _ => toml::Value::String(raw.to_owned()),
    }
}

fn insert(table: &mut toml::Table, path: &[String], value: toml::Value) -> anyhow::Result<()> {
    let (last, parents) = path.split_last().context("empty key")?;
    let mut cur = table;
    for p in parents {
        let entry = cur
            .entry(p.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cur = entry
            .as_table_mut()
            .with_context(|| format!("{p} is not a table"))?;
    }
    cur.insert(last.clone(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_values_are_typed_like_toml_scalars() {
        assert_eq!(env_value("8080"), toml::Value::Integer(8080));
        assert_eq!(env_value("RU"), toml::Value::String("RU".into()));
        assert_eq!(
            env_value("127.0.0.1:9000"),
            toml::Value::String("127.0.0.1:9000".into())
        );
    }

    #[test]
    fn nested_keys_are_built_from_double_underscores() {
        let mut t = toml::Table::new();
        insert(
            &mut t,
            &["server".into(), "listen".into()],
            toml::Value::String("127.0.0.1:1".into()),
        )
        .unwrap();
        let c: Config = toml::Value::Table(t).try_into().unwrap();
        assert_eq!(c.server.listen.port(), 1);
    }

    #[test]
    fn the_example_configuration_is_valid() {
        let text = include_str!("../../../seam.example.toml");
        let c: Config = toml::Value::Table(text.parse().unwrap())
            .try_into()
            .unwrap();
        c.validate().unwrap();
        assert!(c.identifier_rules().unwrap().knows("loyalty_card"));
        let d = c.delivery().unwrap();
        assert_eq!(d.policy.caps.len(), 2);
        assert!(d.policy.quiet_hours.is_some());
    }

    #[test]
    fn bad_delivery_rules_are_refused_with_the_key_named() {
        for (toml, key) in [
            ("[delivery]\ntimezone = \"Mars/Base\"", "delivery.timezone"),
            (
                "[delivery]\nquiet_hours = { start = \"25:00\", end = \"09:00\" }",
                "delivery.quiet_hours.start",
            ),
            (
                "[[delivery.caps]]\nmax = 3\nper = \"3 fortnights\"",
                "delivery.caps[0].per",
            ),
            (
                "[[delivery.caps]]\nchannel = \"pigeon\"\nmax = 3\nper = \"1 day\"",
                "delivery.caps[0].channel",
            ),
        ] {
            let c: Config = toml::Value::Table(toml.parse().unwrap())
                .try_into()
                .unwrap();
            let e = c.validate().unwrap_err().to_string();
            assert!(e.starts_with(key), "{toml}: {e}");
        }
    }
}

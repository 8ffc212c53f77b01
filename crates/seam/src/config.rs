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

    pub fn store_options(&self) -> seam_store::StoreOptions {
        seam_store::StoreOptions {
            queue_capacity: self.store.queue_capacity.max(1),
            max_commit_events: self.store.max_commit_events.max(1),
            delivery: Default::default(),
        }
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
    }
}

//! Layered configuration: built-in defaults, then an optional TOML file, then environment variables
//! `PENSION__SECTION__KEY` (double underscores separate levels, so `PENSION__GATEWAY__HTTP_PORT=9000` sets
//! `gateway.http_port`).
//!
//! Every section is a plain struct with `#[serde(default)]` whose `Default` holds the development defaults, which
//! point at localhost so that `make run` needs nothing else. A value of the wrong type stops start-up with an error
//! that names the key.

use std::collections::HashMap;
use std::path::Path;

use serde::de::DeserializeOwned;

/// The prefix of every environment variable the platform reads.
pub const ENV_PREFIX: &str = "PENSION";

/// A configuration problem, with the key it concerns.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(#[from] config::ConfigError),
    #[error("configuration key `{key}`: {message}")]
    Key { key: String, message: String },
}

/// The merged configuration sources, read section by section.
#[derive(Debug, Clone)]
pub struct Settings {
    merged: config::Config,
}

impl Settings {
    /// Reads the optional file and the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_from(file, None)
    }

    /// Reads the optional file and the given variables instead of the process environment, so tests can check
    /// overrides without touching global state.
    pub fn load_from(file: Option<&Path>, environment: Option<HashMap<String, String>>) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(file) = file {
            builder = builder.add_source(config::File::from(file).required(true));
        }
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator("__")
            .separator("__")
            .try_parsing(true)
            .source(environment);
        let merged = builder.add_source(environment).build()?;
        Ok(Self { merged })
    }

    /// One section, with defaults for every key that no source sets. A section nobody configured is its default.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        match self.merged.get::<T>(key) {
            Ok(section) => Ok(section),
            Err(config::ConfigError::NotFound(_)) => Ok(T::default()),
            Err(error) => Err(ConfigError::Key { key: self.offending_key::<T>(key), message: error.to_string() }),
        }
    }

    /// The full key of the value that spoils a section (`gateway.http_addr`, not just `gateway`): the config crate
    /// names only the section, so each entry is tried alone, the others taking their defaults.
    fn offending_key<T: DeserializeOwned>(&self, section: &str) -> String {
        let Ok(table) = self.merged.get_table(section) else {
            return section.to_owned();
        };
        for (field, value) in table {
            let alone = config::Value::new(None, config::ValueKind::Table(config::Map::from([(field.clone(), value)])));
            if alone.try_deserialize::<T>().is_err() {
                return format!("{section}.{field}");
            }
        }
        section.to_owned()
    }
}

/// Serde helpers for durations written as whole milliseconds, the unit every timeout in the configuration uses.
pub mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(u64::try_from(value.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        u64::deserialize(deserializer).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default)]
    struct Section {
        port: u16,
        name: String,
    }

    impl Default for Section {
        fn default() -> Self {
            Self { port: 8080, name: "default".into() }
        }
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn an_environment_variable_overrides_a_default() {
        let settings = Settings::load_from(None, Some(env(&[("PENSION__WEB__PORT", "9000")]))).expect("loads");
        let section: Section = settings.section("web").expect("valid");
        assert_eq!(section, Section { port: 9000, name: "default".into() });
    }

    #[test]
    fn an_unconfigured_section_is_its_default() {
        let settings = Settings::load_from(None, Some(env(&[]))).expect("loads");
        assert_eq!(settings.section::<Section>("web").expect("valid"), Section::default());
    }

    #[test]
    fn an_invalid_value_is_refused_with_its_key() {
        let settings = Settings::load_from(None, Some(env(&[("PENSION__WEB__PORT", "eighty")]))).expect("loads");
        let error = settings.section::<Section>("web").expect_err("must be refused").to_string();
        assert!(error.contains("web") && error.contains("port"), "error names the key: {error}");
    }

    #[test]
    fn a_file_is_read_under_the_environment() {
        let dir = std::env::temp_dir().join(format!("kit-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("pension.toml");
        std::fs::write(&file, "[web]\nport = 7000\nname = \"from-file\"\n").expect("write");
        let settings =
            Settings::load_from(Some(&file), Some(env(&[("PENSION__WEB__NAME", "from-env")]))).expect("loads");
        let section: Section = settings.section("web").expect("valid");
        assert_eq!(section, Section { port: 7000, name: "from-env".into() });
    }
}

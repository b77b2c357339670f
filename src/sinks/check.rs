//! The sinks' configuration helpers: the range checks are the config's own (re-exported
//! from `config::check`); secrets that never show in logs; MQTT topic levels.

use std::fmt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

pub use crate::config::check::{int, non_empty, port, seconds};

/// A secret: its `Debug` and `Display` print `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads a secret from a file (its first line, trailing newline dropped) or an environment
/// variable; at most one of the two may be set. Errors name the key and the source, never
/// the value.
pub fn secret(key_file: &str, file: Option<&PathBuf>, key_env: &str, env: Option<&String>) -> Result<Option<Secret>> {
    match (file, env) {
        (Some(_), Some(_)) => bail!("{key_file} and {key_env}: set at most one"),
        (Some(path), None) => {
            let s = std::fs::read_to_string(path).with_context(|| format!("{key_file}: reading {}", path.display()))?;
            let s = s.lines().next().unwrap_or("").to_string();
            if s.is_empty() {
                bail!("{key_file}: {} is empty", path.display());
            }
            Ok(Some(Secret(s)))
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(s) if !s.is_empty() => Ok(Some(Secret(s))),
            _ => bail!("{key_env}: the environment variable `{var}` is unset or empty"),
        },
        (None, None) => Ok(None),
    }
}

/// Makes a name safe as one MQTT topic level (no `/`, `+`, `#`, NUL).
pub fn topic_level(s: &str) -> String {
    s.chars().map(|c| if matches!(c, '/' | '+' | '#' | '\0') { '_' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key_and_secrets_are_redacted() {
        assert!(seconds("sinks.mqtt.keepalive_s", f64::NAN, 1.0, 10.0).unwrap_err().to_string().contains("sinks.mqtt.keepalive_s"));
        assert!(seconds("k", 11.0, 1.0, 10.0).is_err());
        assert!(int("sinks.x.n", 0usize, 1, 5).unwrap_err().to_string().contains("sinks.x.n"));
        assert!(port("sinks.mqtt.port", 0).unwrap_err().to_string().contains("sinks.mqtt.port"));
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "<redacted> <redacted>");
        assert_eq!(topic_level("a/b+#c"), "a_b__c");
    }
}

//! YAML parsing with errors that name the file and the offending key (configs, presets,
//! bundle manifests, recording indexes, training specs all go through it).

use std::path::Path;

use anyhow::Result;

/// Parses YAML into `T`, naming the file and the offending key on error.
pub fn parse_yaml<T: serde::de::DeserializeOwned>(path: &Path, text: &str) -> Result<T> {
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        if key == "." || key.is_empty() {
            anyhow::anyhow!("{}: {inner}", path.display())
        } else {
            anyhow::anyhow!("{}: key `{key}`: {inner}", path.display())
        }
    })
}

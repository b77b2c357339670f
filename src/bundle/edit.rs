//! Rewriting one top-level block of a bundle.yaml (`defaults:` from `glad tune`,
//! `calibration:` from `glad calibrate --write-bundle`) while keeping every other line and
//! comment as written; the result must still parse as a manifest before it replaces the file.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::Manifest;
use crate::yaml::parse_yaml;

/// Replaces (or appends) the top-level `key:` block of the manifest at `path` with `value`.
pub fn write_block<T: Serialize>(path: &Path, key: &str, value: &T) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    let mut block = String::new();
    let yaml = serde_yaml::to_string(&serde_yaml::to_value(value)?)?;
    let _ = writeln!(block, "{key}:");
    for line in yaml.lines().filter(|l| !l.trim_end().ends_with(": null")) {
        let _ = writeln!(block, "  {line}");
    }
    let lines: Vec<&str> = text.lines().collect();
    let head = format!("{key}:");
    let (mut out, mut i, mut replaced) = (String::new(), 0, false);
    while i < lines.len() {
        if lines[i] == head || lines[i].starts_with(&format!("{head} ")) {
            out.push_str(&block);
            i += 1;
            while i < lines.len() && (lines[i].starts_with(' ') || lines[i].trim().is_empty()) {
                i += 1;
            }
            replaced = true;
            continue;
        }
        out.push_str(lines[i]);
        out.push('\n');
        i += 1;
    }
    if !replaced {
        out.push_str(&block);
    }
    parse_yaml::<Manifest>(path, &out).with_context(|| format!("{}: the rewritten `{key}` block does not parse", path.display()))?;
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, &out).with_context(|| format!("{}: cannot write", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}: cannot replace", path.display()))?;
    Ok(())
}

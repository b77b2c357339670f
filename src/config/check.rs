//! The one set of value checks every config section and flag uses: numbers finite and in
//! range, whole numbers in range, durations, ports, names, thresholds. Each keyed check
//! returns an error naming the key (`<key>: must be ...`); callers add the file.

use std::fmt;
use std::time::Duration;

use anyhow::{bail, Result};

/// Largest `inspect.batch` / `--batch`.
pub const MAX_BATCH: usize = 256;
/// Largest `inspect.workers` / `--workers`.
pub const MAX_WORKERS: usize = 64;
/// Largest `runtime.threads` / `--threads`.
pub const MAX_THREADS: usize = 1024;

/// A finite number within `lo..=hi`.
pub fn number(key: &str, v: f64, lo: f64, hi: f64) -> Result<f64> {
    if !v.is_finite() || v < lo || v > hi {
        bail!("{key}: must be a finite number in {lo}..={hi}, got {v}");
    }
    Ok(v)
}

/// A finite number of seconds within `lo..=hi`, as a `Duration`.
pub fn seconds(key: &str, v: f64, lo: f64, hi: f64) -> Result<Duration> {
    if !v.is_finite() || v < lo || v > hi {
        bail!("{key}: must be a number of seconds in {lo}..={hi}, got {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// A finite number of milliseconds within `lo..=hi`, as a `Duration`.
pub fn millis(key: &str, v: f64, lo: f64, hi: f64) -> Result<Duration> {
    number(key, v, lo, hi)?;
    Ok(Duration::from_secs_f64(v / 1e3))
}

/// A whole number within `lo..=hi`.
pub fn int<T: PartialOrd + fmt::Display + Copy>(key: &str, v: T, lo: T, hi: T) -> Result<T> {
    if v < lo || v > hi {
        bail!("{key}: must be in {lo}..={hi}, got {v}");
    }
    Ok(v)
}

/// `runtime.scoring` / `--scoring`: `rust`, `onnx` or `auto`.
pub fn check_scoring(s: &str) -> std::result::Result<crate::runtime::Scoring, String> {
    crate::runtime::Scoring::parse(s).ok_or_else(|| format!("must be {}, got `{s}`", crate::runtime::Scoring::VALUES))
}

/// A port other than 0.
pub fn port(key: &str, v: u16) -> Result<u16> {
    if v == 0 {
        bail!("{key}: must be a port in 1..=65535, got 0");
    }
    Ok(v)
}

/// A non-empty string.
pub fn non_empty<'a>(key: &str, v: &'a str) -> Result<&'a str> {
    if v.trim().is_empty() {
        bail!("{key}: must not be empty");
    }
    Ok(v)
}

/// The rule for a verdict threshold (flag, config, station config, reload, calibration file
/// and bundle alike): finite and above 0. A NaN would call every image normal, 0 or a
/// negative one every image anomalous.
pub fn check_threshold(t: f32) -> std::result::Result<f32, String> {
    if t.is_finite() && t > 0.0 && t <= MAX_THRESHOLD {
        Ok(t)
    } else {
        Err(format!("must be a finite number above 0 and at most {MAX_THRESHOLD:e}, got {t}"))
    }
}

/// Largest threshold: scores are sums of cosine distances (at most 2 per layer) plus the
/// pixel term; anything near f32's range is a typo that would call every image normal.
pub const MAX_THRESHOLD: f32 = 1e6;

/// [`check_threshold`] with the key named.
pub fn threshold(key: &str, t: f32) -> Result<f32> {
    check_threshold(t).map_err(|e| anyhow::anyhow!("{key}: {e}"))
}

/// The rule for a batch size (flag and config key alike): 1..=[`MAX_BATCH`].
pub fn check_batch(n: usize) -> std::result::Result<usize, String> {
    if (1..=MAX_BATCH).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be in 1..={MAX_BATCH} (the batch limit), got {n}"))
    }
}

/// The rule for a worker count: 1..=[`MAX_WORKERS`].
pub fn check_workers(n: usize) -> std::result::Result<usize, String> {
    if (1..=MAX_WORKERS).contains(&n) {
        Ok(n)
    } else {
        Err(format!("must be in 1..={MAX_WORKERS} (the worker limit), got {n}"))
    }
}

/// The rule for a thread count: 0 (all cores) ..=[`MAX_THREADS`].
pub fn check_threads(n: usize) -> std::result::Result<usize, String> {
    if n <= MAX_THREADS {
        Ok(n)
    } else {
        Err(format!("must be in 0..={MAX_THREADS} (0 = all cores), got {n}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_the_key() {
        assert!(seconds("sinks.mqtt.keepalive_s", f64::NAN, 1.0, 10.0).unwrap_err().to_string().contains("sinks.mqtt.keepalive_s"));
        assert!(seconds("k", 11.0, 1.0, 10.0).is_err());
        assert!(number("k", f64::INFINITY, 0.0, f64::MAX).is_err());
        assert!(int("sinks.x.n", 0usize, 1, 5).unwrap_err().to_string().contains("sinks.x.n"));
        assert!(port("sinks.mqtt.port", 0).unwrap_err().to_string().contains("sinks.mqtt.port"));
        for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0, 1e40_f64 as f32, 1e7] {
            assert!(threshold("threshold", bad).is_err(), "{bad}");
        }
        assert_eq!(threshold("threshold", 0.5).unwrap(), 0.5);
    }
}

//! Triggers: "inspect this camera's next frame", from the PLC's coil or `POST /api/trigger`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{bail, Result};

/// Most triggers waiting per camera; more are refused (HTTP 429, Modbus exception).
pub const MAX_PENDING: u64 = 64;

/// Why a trigger was refused.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    #[error("camera `{camera}`: {pending} triggers are already waiting (at most {MAX_PENDING}); refused")]
    Full { camera: String, pending: u64 },
}

/// Pending triggers per camera. A triggered camera's scheduler inspects its next frame and
/// then calls `take`; cameras without `trigger: true` ignore it.
#[derive(Debug, Default)]
pub struct Triggers {
    pending: Mutex<BTreeMap<String, u64>>,
}

impl Triggers {
    pub fn new<I: IntoIterator<Item = String>>(cameras: I) -> Triggers {
        Triggers { pending: Mutex::new(cameras.into_iter().map(|c| (c, 0)).collect()) }
    }

    /// Asks for one more inspection of `camera`; unknown cameras are an error, and so is a
    /// trigger while [`MAX_PENDING`] wait already ([`TriggerError::Full`]: refused, not lost).
    pub fn fire(&self, camera: &str) -> Result<()> {
        let mut p = self.pending.lock().expect("trigger lock");
        match p.get_mut(camera) {
            Some(n) if *n >= MAX_PENDING => Err(TriggerError::Full { camera: camera.to_string(), pending: *n }.into()),
            Some(n) => {
                *n += 1;
                Ok(())
            }
            None => bail!("unknown camera `{camera}`"),
        }
    }

    /// Consumes one pending trigger of `camera`; false when none is pending.
    pub fn take(&self, camera: &str) -> bool {
        let mut p = self.pending.lock().expect("trigger lock");
        match p.get_mut(camera) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }

    pub fn pending(&self, camera: &str) -> u64 {
        self.pending.lock().expect("trigger lock").get(camera).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fire_take_counts_and_unknown_camera_is_refused() {
        let t = Triggers::new(["a".to_string()]);
        assert!(!t.take("a"));
        t.fire("a").unwrap();
        t.fire("a").unwrap();
        assert_eq!(t.pending("a"), 2);
        assert!(t.take("a") && t.take("a") && !t.take("a"));
        assert!(t.fire("b").unwrap_err().to_string().contains("unknown camera `b`"));
    }
}

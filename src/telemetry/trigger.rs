//! Triggers: "inspect this camera's next frame", from the PLC's coil or `POST /api/trigger`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{bail, Result};

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

    /// Asks for one more inspection of `camera`; unknown cameras are an error.
    pub fn fire(&self, camera: &str) -> Result<()> {
        let mut p = self.pending.lock().expect("trigger lock");
        match p.get_mut(camera) {
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

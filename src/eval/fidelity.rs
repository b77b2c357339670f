//! Reconstruction fidelity: whether a model keeps normal texture and repairs defects, as
//! numbers a user reads before trusting its scores. Per backbone layer of the final map, each
//! input patch is compared with the reconstruction's patch at the same position
//! (`1 - <Px_i, Prec_i>`, tokens L2-normalised): low on normal texture means the texture was
//! kept; high inside a defect means the defect was repaired (replaced by normal texture).

use anyhow::{ensure, Result};
use ndarray::Array2;
use serde::Serialize;

use crate::glad::features::Tokens;

/// Sums of same-position feature distances, split by where the patch lies.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Fidelity {
    /// Mean distance over every patch of the normal images.
    pub normal: Option<f64>,
    /// Mean distance over the patches of anomalous images that lie inside the defect mask.
    pub defect: Option<f64>,
    /// Mean distance over the patches of anomalous images outside the mask.
    pub around_defect: Option<f64>,
    pub normal_images: usize,
    pub anomalous_images: usize,
    #[serde(skip)]
    sums: [(f64, usize); 3],
}

impl Fidelity {
    /// Adds one image: its input and reconstruction tokens (same layers, same grids) and, for
    /// an anomalous image, its defect mask (any size; a patch is inside when at least half of
    /// the mask pixels it covers are set).
    pub fn add(&mut self, input: &[Tokens], rec: &[Tokens], mask: Option<&Array2<bool>>) -> Result<()> {
        ensure!(input.len() == rec.len(), "fidelity: {} input layers, {} reconstruction layers", input.len(), rec.len());
        match mask {
            None => self.normal_images += 1,
            Some(_) => self.anomalous_images += 1,
        }
        for (tx, tr) in input.iter().zip(rec) {
            ensure!(tx.grid == tr.grid && tx.data.dim() == tr.data.dim(), "fidelity: token grids differ: {:?} and {:?}", tx.grid, tr.grid);
            let inside = mask.map(|m| patch_mask(m, tx.grid));
            for (i, (a, b)) in tx.data.rows().into_iter().zip(tr.data.rows()).enumerate() {
                let d = 1.0 - a.dot(&b) as f64;
                let slot = match &inside {
                    None => 0,
                    Some(m) if m[i] => 1,
                    Some(_) => 2,
                };
                self.sums[slot].0 += d;
                self.sums[slot].1 += 1;
            }
        }
        let mean = |(s, n): (f64, usize)| (n > 0).then(|| s / n as f64);
        self.normal = mean(self.sums[0]);
        self.defect = mean(self.sums[1]);
        self.around_defect = mean(self.sums[2]);
        Ok(())
    }

    /// Defect distance over normal distance: how much more the reconstruction changes a defect
    /// than normal texture (above 1: it repairs; near 1: it copies or blurs everything alike).
    pub fn repair_ratio(&self) -> Option<f64> {
        match (self.defect, self.normal.or(self.around_defect)) {
            (Some(d), Some(n)) if n > 0.0 => Some(d / n),
            _ => None,
        }
    }

    /// One line for logs and tables.
    pub fn summary(&self) -> String {
        let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.4}"));
        format!(
            "feature distance input vs reconstruction: normal images {} ({} images), inside defects {}, around defects {} ({} images), repair ratio {}",
            f(self.normal),
            self.normal_images,
            f(self.defect),
            f(self.around_defect),
            self.anomalous_images,
            self.repair_ratio().map_or("-".to_string(), |v| format!("{v:.2}"))
        )
    }
}

/// Row-major per-patch flags of a `grid`: the share of set mask pixels in each cell >= 0.5.
fn patch_mask(mask: &Array2<bool>, grid: (usize, usize)) -> Vec<bool> {
    let (mh, mw) = mask.dim();
    let (gh, gw) = grid;
    let mut out = Vec::with_capacity(gh * gw);
    for gy in 0..gh {
        let (y0, y1) = (gy * mh / gh, ((gy + 1) * mh / gh).max(gy * mh / gh + 1).min(mh));
        for gx in 0..gw {
            let (x0, x1) = (gx * mw / gw, ((gx + 1) * mw / gw).max(gx * mw / gw + 1).min(mw));
            let cell = mask.slice(ndarray::s![y0..y1, x0..x1]);
            let set = cell.iter().filter(|&&v| v).count();
            out.push(2 * set >= cell.len().max(1));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens(rows: &[[f32; 2]], grid: (usize, usize)) -> Tokens {
        let data = Array2::from_shape_fn((rows.len(), 2), |(i, j)| rows[i][j]);
        Tokens { data, grid }
    }

    #[test]
    fn distances_split_by_mask_match_a_hand_computation() {
        // 2x2 grid; the reconstruction keeps patches 0, 1, 3 and turns patch 2 by 90 degrees
        let x = tokens(&[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]], (2, 2));
        let r = tokens(&[[1.0, 0.0], [0.0, 1.0], [0.0, 1.0], [0.6, 0.8]], (2, 2));
        // mask 4x4: bottom-left quadrant set (patch 2)
        let mask = Array2::from_shape_fn((4, 4), |(y, x)| y >= 2 && x < 2);
        let mut f = Fidelity::default();
        f.add(std::slice::from_ref(&x), std::slice::from_ref(&r), Some(&mask)).unwrap();
        assert!((f.defect.unwrap() - 1.0).abs() < 1e-9);
        // outside: patches 0, 1 (distance 0) and 3 (1 - 0.8)
        assert!((f.around_defect.unwrap() - 0.2 / 3.0).abs() < 1e-6);
        f.add(std::slice::from_ref(&x), std::slice::from_ref(&x), None).unwrap();
        assert_eq!(f.normal, Some(0.0));
        assert_eq!((f.normal_images, f.anomalous_images), (1, 1));
        // a normal distance of 0 gives no ratio rather than infinity
        assert_eq!(f.repair_ratio(), None);
    }

    #[test]
    fn a_patch_is_inside_when_half_its_pixels_are_set() {
        let mut m = Array2::from_elem((4, 4), false);
        m[[0, 0]] = true;
        m[[0, 1]] = true; // half of the top-left 2x2 cell
        m[[3, 3]] = true; // a quarter of the bottom-right cell
        assert_eq!(patch_mask(&m, (2, 2)), vec![true, false, false, false]);
    }

    #[test]
    fn mismatched_layers_are_refused() {
        let x = tokens(&[[1.0, 0.0]], (1, 1));
        let y = tokens(&[[1.0, 0.0], [0.0, 1.0]], (1, 2));
        assert!(Fidelity::default().add(std::slice::from_ref(&x), &[y], None).is_err());
        assert!(Fidelity::default().add(&[x.clone(), x.clone()], &[x], None).is_err());
    }
}

//! The memory bank of normal patches: per final-map backbone layer, the normalised tokens of
//! a class's normal training images. The feature-only baseline compares test patches with it
//! alone; the `union` map reference (beyond GLAD) with it and the reconstruction together.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use ndarray::{concatenate, Array2, Array4, ArrayView4, Axis};

use super::features::{min_cosine_distance, Tokens};
use super::score::{add_layer, backbone_input, finish};
use super::{AnomalyMap, Models, Params};

#[derive(Debug, Clone)]
pub struct FeatureBank {
    /// Per layer, the normalised tokens of every normal image stacked (`grid` = `(1, N)`).
    pub layers: Vec<Tokens>,
}

/// `[B,3,R,R]` in [-1,1] → the final-map backbone's input at `s`.
pub fn backbone_batch(x: ArrayView4<'_, f32>, s: usize) -> Array4<f32> {
    let mut out = Array4::<f32>::zeros((x.shape()[0], 3, s, s));
    for (i, img) in x.axis_iter(Axis(0)).enumerate() {
        out.index_axis_mut(Axis(0), i).assign(&backbone_input(img, s));
    }
    out
}

impl FeatureBank {
    /// Builds the bank from normal images `[N,3,R,R]` in [-1,1], fed in chunks of `chunk`.
    pub fn fit<M: Models>(models: &mut M, p: &Params, normal: ArrayView4<'_, f32>, chunk: usize) -> Result<FeatureBank> {
        let mut per_layer: Vec<Vec<Array2<f32>>> = Vec::new();
        for start in (0..normal.shape()[0]).step_by(chunk.max(1)) {
            let end = (start + chunk.max(1)).min(normal.shape()[0]);
            let batch = backbone_batch(normal.slice_axis(Axis(0), (start..end).into()), p.backbone_resolution);
            for img in models.map_tokens(batch.view())? {
                per_layer.resize_with(img.len(), Vec::new);
                for (l, t) in img.into_iter().enumerate() {
                    per_layer[l].push(t.data);
                }
            }
        }
        ensure!(!per_layer.is_empty(), "feature bank: no normal images");
        let layers = per_layer
            .into_iter()
            .map(|rows| {
                let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
                let data = concatenate(Axis(0), &views).expect("same channel count per layer");
                let n = data.nrows();
                Tokens { data, grid: (1, n) }
            })
            .collect();
        Ok(FeatureBank { layers })
    }

    /// A greedy k-center coreset of each layer (as PatchCore subsamples its memory bank):
    /// `fraction` of the rows, chosen one by one as the row farthest (in cosine distance) from
    /// all rows chosen so far, starting from row 0. Every dropped row then lies within the
    /// coreset's covering radius of a kept one, so nearest-patch distances grow by at most
    /// that radius, while the bank shrinks by `1 / fraction`.
    pub fn coreset(&self, fraction: f64) -> Result<FeatureBank> {
        ensure!(fraction.is_finite() && fraction > 0.0 && fraction <= 1.0, "coreset fraction must be in (0, 1], got {fraction}");
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let n = l.data.nrows();
                let k = ((n as f64 * fraction).ceil() as usize).clamp(1, n);
                if k == n {
                    return l.clone();
                }
                let mut chosen = vec![0usize];
                // Distance of every row to its nearest chosen row: 1 - cos (rows are unit norm).
                let mut dist: Vec<f32> = l.data.dot(&l.data.row(0)).iter().map(|s| 1.0 - s).collect();
                while chosen.len() < k {
                    let (far, _) =
                        dist.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &d)| if d > best.1 { (i, d) } else { best });
                    chosen.push(far);
                    let sims = l.data.dot(&l.data.row(far));
                    for (d, s) in dist.iter_mut().zip(sims.iter()) {
                        *d = d.min(1.0 - s);
                    }
                }
                let data = l.data.select(Axis(0), &chosen);
                Tokens { data, grid: (1, k) }
            })
            .collect();
        Ok(FeatureBank { layers })
    }

    /// Writes `dir/layer<i>.npy` (`[N, C]` float32 per layer).
    pub fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the bank folder", dir.display()))?;
        for (i, l) in self.layers.iter().enumerate() {
            let p = dir.join(format!("layer{i}.npy"));
            ndarray_npy::write_npy(&p, &l.data).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", p.display()))?;
        }
        Ok(())
    }

    /// Reads a bank written by `save`; every layer must have `channels[i]` columns, finite,
    /// unit-norm rows (what `fit` stores).
    pub fn load(dir: &Path, channels: &[usize]) -> Result<FeatureBank> {
        if !dir.is_dir() {
            bail!("{}: no feature bank (build one with `glad bank --bundle DIR --images NORMAL_DIR`)", dir.display());
        }
        let mut layers = Vec::new();
        for (i, &c) in channels.iter().enumerate() {
            let p = dir.join(format!("layer{i}.npy"));
            let data: Array2<f32> =
                ndarray_npy::read_npy(&p).map_err(|e| anyhow::anyhow!("{}: cannot read the bank layer: {e}", p.display()))?;
            ensure!(data.ncols() == c && data.nrows() > 0, "{}: expected [N, {c}] patch tokens, got {:?}", p.display(), data.shape());
            for (r, row) in data.rows().into_iter().enumerate() {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                ensure!(n.is_finite() && (n - 1.0).abs() < 1e-3, "{}: row {r} has norm {n}, expected normalised tokens", p.display());
            }
            let n = data.nrows();
            layers.push(Tokens { data, grid: (1, n) });
        }
        ensure!(
            !dir.join(format!("layer{}.npy", channels.len())).exists(),
            "{}: the bank has more layers than the backbone's {}",
            dir.display(),
            channels.len()
        );
        Ok(FeatureBank { layers })
    }

    /// Anomaly maps of `x` `[B,3,R,R]`: per layer, each patch's cosine distance to its nearest
    /// bank patch, upsampled and summed; then GLAD's blur, object mask and top-K score.
    pub fn maps<M: Models>(&self, models: &mut M, p: &Params, x: ArrayView4<'_, f32>) -> Result<Vec<AnomalyMap>> {
        let s = p.backbone_resolution;
        let tokens = models.map_tokens(backbone_batch(x, s).view())?;
        tokens
            .into_iter()
            .enumerate()
            .map(|(i, layers)| {
                ensure!(layers.len() == self.layers.len(), "backbone returned {} layers, the bank has {}", layers.len(), self.layers.len());
                let mut map = Array2::<f32>::zeros((s, s));
                for (t, bank) in layers.iter().zip(&self.layers) {
                    add_layer(&mut map, min_cosine_distance(t, bank), t.grid)?;
                }
                finish(map, x.index_axis(ndarray::Axis(0), i), p)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coreset_keeps_the_farthest_points_first() {
        // Unit vectors at angles 0, 1, 2, 90 degrees: after row 0 the farthest is 90 degrees.
        let rows: Vec<[f32; 2]> = [0.0f32, 1.0, 2.0, 90.0].iter().map(|d| [d.to_radians().cos(), d.to_radians().sin()]).collect();
        let data = Array2::from_shape_fn((4, 2), |(i, j)| rows[i][j]);
        let bank = FeatureBank { layers: vec![Tokens { data, grid: (1, 4) }] };
        let c = bank.coreset(0.5).unwrap();
        assert_eq!(c.layers[0].data.nrows(), 2);
        assert!((c.layers[0].data[[1, 1]] - 1.0).abs() < 1e-6, "{:?}", c.layers[0].data);
        assert_eq!(bank.coreset(1.0).unwrap().layers[0].data.nrows(), 4);
        assert!(bank.coreset(0.0).is_err() && bank.coreset(f64::NAN).is_err());
    }
}

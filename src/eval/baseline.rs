//! The feature-only baseline: the same backbone and map pipeline as GLAD's final map, but each
//! test patch is compared with its nearest patch among the normal training images (a memory
//! bank per layer) instead of with a diffusion reconstruction.

use anyhow::{ensure, Result};
use ndarray::{concatenate, Array2, Array4, ArrayView4, Axis};

use crate::glad::anomaly::{add_layer, backbone_input, finish};
use crate::glad::features::{min_cosine_distance, Tokens};
use crate::glad::{AnomalyMap, Models, Params};

pub struct FeatureBank {
    /// Per layer, the normalised tokens of every training image stacked.
    layers: Vec<Tokens>,
}

fn backbone_batch(x: ArrayView4<'_, f32>, s: usize) -> Array4<f32> {
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
                finish(map, x.index_axis(Axis(0), i), p)
            })
            .collect()
    }
}

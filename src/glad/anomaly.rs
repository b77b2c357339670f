//! The final anomaly map and image score (GLAD.md, "Final anomaly map and score").

use anyhow::{ensure, Result};
use ndarray::{Array2, Array3, Array4, ArrayView4, Axis};

use super::bank::FeatureBank;
use super::score::{add_layer, backbone_input, finish, AnomalyMap};
use super::{MapReference, Models, Params};

/// Anomaly maps of the inputs `x` against their reconstructions `rec` (both `[B,3,R,R]`).
/// `bank` is needed for `p.reference` `bank` and `union` only.
pub fn anomaly_maps<M: Models>(
    models: &mut M,
    p: &Params,
    x: ArrayView4<'_, f32>,
    rec: ArrayView4<'_, f32>,
    bank: Option<&FeatureBank>,
) -> Result<Vec<AnomalyMap>> {
    let b = x.shape()[0];
    let bank = match (p.reference, bank) {
        (MapReference::Reconstruction, _) => None,
        (_, Some(bank)) => Some(bank),
        (r, None) => anyhow::bail!("reference `{r:?}` needs the bundle's feature bank (`glad bank`)"),
    };
    ensure!(rec.shape()[0] == b, "reconstruction batch {} differs from the input batch {b}", rec.shape()[0]);
    let s = p.backbone_resolution;
    // 1. Resize to S (bilinear, align_corners), (v+1)/2, ImageNet-normalise.
    let prep = |img| backbone_input(img, s);
    let xs: Vec<Array3<f32>> = x.axis_iter(Axis(0)).map(prep).collect();
    let rs: Vec<Array3<f32>> = rec.axis_iter(Axis(0)).map(prep).collect();
    let mut both = Array4::<f32>::zeros((2 * b, 3, s, s));
    for (i, img) in xs.iter().chain(rs.iter()).enumerate() {
        both.index_axis_mut(Axis(0), i).assign(img);
    }
    // 2. Backbone on inputs and reconstructions in one call.
    let tokens = models.map_tokens(both.view())?;
    ensure!(tokens.len() == 2 * b, "backbone returned {} images for {}", tokens.len(), 2 * b);

    let mut out = Vec::with_capacity(b);
    for i in 0..b {
        let (tx, tr) = (&tokens[i], &tokens[b + i]);
        let mut map = Array2::<f32>::zeros((s, s));
        if let Some(bank) = bank {
            ensure!(bank.layers.len() == tx.len(), "the feature bank has {} layers, the backbone {}", bank.layers.len(), tx.len());
        }
        for (l, (px, pr)) in tx.iter().zip(tr).enumerate() {
            // m1[i] = min_j (1 - <Px_i, Prec_j>), with j over the reference patches: the
            // reconstruction's (GLAD), the bank's, or both (the minimum of the two minima).
            // m2 (the symmetric term) comes out of the same similarity matrix as m1 when the
            // reference is the reconstruction.
            let (m1, m2) = match (p.reference, bank) {
                (MapReference::Bank, Some(bank)) => (models.cosine_maps(px, &bank.layers[l], false)?.0, None),
                (MapReference::Union, Some(bank)) => {
                    let (from_bank, _) = models.cosine_maps(px, &bank.layers[l], false)?;
                    let (from_rec, m2) = models.cosine_maps(px, pr, p.symmetric)?;
                    (from_rec.into_iter().zip(from_bank).map(|(a, b)| a.min(b)).collect(), m2)
                }
                _ => models.cosine_maps(px, pr, p.symmetric)?,
            };
            add_layer(&mut map, m1, px.grid)?;
            // 3. symmetric term m2[j] = min_i (1 - <Px_i, Prec_j>)
            if p.symmetric {
                let m2 = match m2 {
                    Some(m2) => m2,
                    None => models.cosine_maps(px, pr, true)?.1.expect("asked for both"),
                };
                add_layer(&mut map, m2, pr.grid)?;
            }
        }
        // 4. pixel term, with per-image maxima (the reference takes them over the test batch).
        if p.v > 0.0 {
            let d = (&xs[i] - &rs[i]).mapv(f32::abs).mean_axis(Axis(0)).expect("3 channels");
            let max_map = map.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let max_d = d.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if max_d > 0.0 {
                let k = p.v * max_map / max_d;
                map.zip_mut_with(&d, |m, &d| *m += k * d);
            }
        }
        out.push(finish(map, x.index_axis(Axis(0), i), p)?);
    }
    Ok(out)
}

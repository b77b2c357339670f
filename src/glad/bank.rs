//! The memory bank of normal patches: per final-map backbone layer, the normalised tokens of
//! a class's normal training images. The feature-only baseline compares test patches with it
//! alone; the `union` map reference (beyond GLAD) with it and the reconstruction together.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use ndarray::{concatenate, Array2, Array4, ArrayView4, Axis};

use super::features::{min_cosine_distance, Tokens};
use super::score::{add_layer, backbone_input, finish};
use super::{AnomalyMap, Models, Params};

/// The half-precision bank file inside a bank folder.
pub const BANK_FILE: &str = "bank.safetensors";

/// How `save` stores the tokens: half precision (half the bytes; nearest-patch distances move
/// by about 1e-3) or float32 `.npy` files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BankPrecision {
    F16,
    F32,
}

fn remove_npy_layers(dir: &Path) -> Result<()> {
    for i in 0.. {
        let p = dir.join(format!("layer{i}.npy"));
        if !p.exists() {
            break;
        }
        std::fs::remove_file(&p).with_context(|| format!("{}: cannot remove the older bank layer", p.display()))?;
    }
    Ok(())
}

fn read_npy_layers(dir: &Path, count: usize) -> Result<Vec<Array2<f32>>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let p = dir.join(format!("layer{i}.npy"));
        out.push(ndarray_npy::read_npy(&p).map_err(|e| anyhow::anyhow!("{}: cannot read the bank layer: {e}", p.display()))?);
    }
    ensure!(!dir.join(format!("layer{count}.npy")).exists(), "{}: the bank has more layers than the backbone's {count}", dir.display());
    Ok(out)
}

fn read_safetensors(path: &Path, count: usize) -> Result<Vec<Array2<f32>>> {
    let bytes = std::fs::read(path).with_context(|| format!("{}: cannot read the bank", path.display()))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: not a safetensors file: {e}", path.display()))?;
    ensure!(st.len() == count, "{}: {} tensors, expected one per backbone layer ({count})", path.display(), st.len());
    (0..count)
        .map(|i| {
            let name = format!("layer{i}");
            let t = st.tensor(&name).map_err(|e| anyhow::anyhow!("{}: tensor `{name}`: {e}", path.display()))?;
            let shape = t.shape();
            ensure!(shape.len() == 2, "{}: tensor `{name}`: expected [N, C], got {shape:?}", path.display());
            let values: Vec<f32> = match t.dtype() {
                safetensors::Dtype::F16 => t.data().chunks_exact(2).map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
                safetensors::Dtype::F32 => t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
                d => bail!("{}: tensor `{name}`: expected F16 or F32, got {d:?}", path.display()),
            };
            Ok(Array2::from_shape_vec((shape[0], shape[1]), values)?)
        })
        .collect()
}

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

    /// Writes the bank into `dir`: `bank.safetensors` (one `[N, C]` tensor `layer<i>` per
    /// layer) in half precision, or `layer<i>.npy` in float32. Files of the other format are
    /// removed so `load` cannot pick a stale one.
    pub fn save(&self, dir: &Path, precision: BankPrecision) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the bank folder", dir.display()))?;
        let st = dir.join(BANK_FILE);
        match precision {
            BankPrecision::F16 => {
                let halves: Vec<(String, Vec<u8>, Vec<usize>)> = self
                    .layers
                    .iter()
                    .enumerate()
                    .map(|(i, l)| {
                        let bytes = l.data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
                        (format!("layer{i}"), bytes, l.data.shape().to_vec())
                    })
                    .collect();
                let views = halves
                    .iter()
                    .map(|(name, bytes, shape)| {
                        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, shape.clone(), bytes).map(|v| (name.clone(), v))
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| anyhow::anyhow!("{}: cannot encode the bank: {e}", st.display()))?;
                let bytes =
                    safetensors::serialize(views, None).map_err(|e| anyhow::anyhow!("{}: cannot encode the bank: {e}", st.display()))?;
                // whole file or nothing: a bank is read at every engine start
                let tmp = dir.join(format!(".{BANK_FILE}.tmp"));
                std::fs::write(&tmp, &bytes).with_context(|| format!("{}: cannot write", tmp.display()))?;
                std::fs::rename(&tmp, &st).with_context(|| format!("{}: cannot write", st.display()))?;
                remove_npy_layers(dir)?;
            }
            BankPrecision::F32 => {
                for (i, l) in self.layers.iter().enumerate() {
                    let p = dir.join(format!("layer{i}.npy"));
                    ndarray_npy::write_npy(&p, &l.data).map_err(|e| anyhow::anyhow!("{}: cannot write: {e}", p.display()))?;
                }
                if st.exists() {
                    std::fs::remove_file(&st).with_context(|| format!("{}: cannot remove the older bank", st.display()))?;
                }
            }
        }
        Ok(())
    }

    /// Reads a bank written by `save` (`bank.safetensors` when present, else `layer<i>.npy`);
    /// every layer must have `channels[i]` columns and finite, unit-norm rows (what `fit`
    /// stores; half-precision rows are renormalised after the norm check).
    pub fn load(dir: &Path, channels: &[usize]) -> Result<FeatureBank> {
        if !dir.is_dir() {
            bail!("{}: no feature bank (build one with `glad bank --bundle DIR --images NORMAL_DIR`)", dir.display());
        }
        let st = dir.join(BANK_FILE);
        let (arrays, tol) =
            if st.exists() { (read_safetensors(&st, channels.len())?, 1e-2) } else { (read_npy_layers(dir, channels.len())?, 1e-3) };
        let mut layers = Vec::new();
        for (i, (mut data, &c)) in arrays.into_iter().zip(channels).enumerate() {
            let what = if st.exists() {
                format!("{}: tensor `layer{i}`", st.display())
            } else {
                dir.join(format!("layer{i}.npy")).display().to_string()
            };
            ensure!(data.ncols() == c && data.nrows() > 0, "{what}: expected [N, {c}] patch tokens, got {:?}", data.shape());
            for (r, mut row) in data.rows_mut().into_iter().enumerate() {
                let n = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                ensure!(n.is_finite() && (n - 1.0).abs() < tol, "{what}: row {r} has norm {n}, expected normalised tokens");
                row.mapv_inplace(|v| v / n);
            }
            let n = data.nrows();
            layers.push(Tokens { data, grid: (1, n) });
        }
        Ok(FeatureBank { layers })
    }

    /// Bytes of the stored tokens at `precision`.
    pub fn stored_bytes(&self, precision: BankPrecision) -> usize {
        let per = match precision {
            BankPrecision::F16 => 2,
            BankPrecision::F32 => 4,
        };
        self.layers.iter().map(|l| l.data.len() * per).sum()
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

    fn unit_rows(n: usize, c: usize, seed: u64) -> Array2<f32> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let mut a = Array2::from_shape_fn((n, c), |_| rng.random_range(-1.0f32..1.0));
        for mut r in a.rows_mut() {
            let norm = r.iter().map(|v| v * v).sum::<f32>().sqrt();
            r.mapv_inplace(|v| v / norm);
        }
        a
    }

    #[test]
    fn half_precision_bank_round_trips_within_fp16_rounding() {
        let dir = tempfile::tempdir().unwrap();
        let layers = vec![Tokens { data: unit_rows(300, 40, 1), grid: (1, 300) }, Tokens { data: unit_rows(70, 112, 2), grid: (1, 70) }];
        let bank = FeatureBank { layers };
        bank.save(dir.path(), BankPrecision::F16).unwrap();
        assert!(dir.path().join(BANK_FILE).exists() && !dir.path().join("layer0.npy").exists());
        let back = FeatureBank::load(dir.path(), &[40, 112]).unwrap();
        for (a, b) in bank.layers.iter().zip(&back.layers) {
            let worst = (&a.data - &b.data).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v));
            // fp16 has an 11-bit significand: |v| < 1 rounds by at most 2^-12, plus renormalisation
            assert!(worst < 1e-3, "max difference {worst}");
        }
        assert_eq!(bank.stored_bytes(BankPrecision::F16) * 2, bank.stored_bytes(BankPrecision::F32));
        // float32 again: the safetensors file goes, the npy layers come back, values exact
        bank.save(dir.path(), BankPrecision::F32).unwrap();
        assert!(!dir.path().join(BANK_FILE).exists());
        let exact = FeatureBank::load(dir.path(), &[40, 112]).unwrap();
        assert!((&exact.layers[0].data - &bank.layers[0].data).mapv(f32::abs).fold(0.0f32, |m, &v| m.max(v)) < 1e-6);
    }

    #[test]
    fn a_bank_with_the_wrong_layers_is_refused_with_the_tensor_named() {
        let dir = tempfile::tempdir().unwrap();
        let bank = FeatureBank { layers: vec![Tokens { data: unit_rows(10, 8, 3), grid: (1, 10) }] };
        bank.save(dir.path(), BankPrecision::F16).unwrap();
        let e = format!("{:#}", FeatureBank::load(dir.path(), &[8, 16]).unwrap_err());
        assert!(e.contains("bank.safetensors") && e.contains("expected one per backbone layer"), "{e}");
        let e = format!("{:#}", FeatureBank::load(dir.path(), &[9]).unwrap_err());
        assert!(e.contains("tensor `layer0`") && e.contains("expected [N, 9]"), "{e}");
    }
}

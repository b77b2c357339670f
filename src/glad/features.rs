//! Backbone outputs → L2-normalised patch tokens, and the nearest-neighbour cosine maps GLAD
//! compares them with: `map[i] = min_j (1 - <P_i, Q_j>)`.

use ndarray::{s, Array2, ArrayView2, ArrayViewD, Axis};

use anyhow::{bail, Result};

/// How a backbone lays out its features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// ViT tokens `[B, 1+N, C]`, CLS first (dropped), N = h*w in row-major order.
    Tokens,
    /// CNN feature maps `[B, C, h, w]`.
    FeatureMap,
}

/// One image's patch tokens of one layer: `[N, C]`, rows L2-normalised, on an `h x w` grid.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub data: Array2<f32>,
    pub grid: (usize, usize),
}

/// Splits one backbone output (batch `B`) into per-image normalised tokens.
pub fn tokens_per_image(out: ArrayViewD<'_, f32>, layout: Layout, name: &str) -> Result<Vec<Tokens>> {
    let shape = out.shape().to_vec();
    let mut result = Vec::new();
    match layout {
        Layout::Tokens => {
            if shape.len() != 3 || shape[1] < 2 {
                bail!("backbone output `{name}`: expected tokens [B,1+N,C], got {shape:?}");
            }
            let n = shape[1] - 1;
            let g = (n as f64).sqrt().round() as usize;
            if g * g != n {
                bail!("backbone output `{name}`: {n} patch tokens do not form a square grid");
            }
            for b in 0..shape[0] {
                let t = out.slice(s![b, 1.., ..]);
                result.push(normalise(t, (g, g)));
            }
        }
        Layout::FeatureMap => {
            if shape.len() != 4 {
                bail!("backbone output `{name}`: expected a feature map [B,C,h,w], got {shape:?}");
            }
            let (c, h, w) = (shape[1], shape[2], shape[3]);
            for b in 0..shape[0] {
                // [C, h, w] → [h*w, C]
                let fm = out.slice(s![b, .., .., ..]);
                let t = fm.into_shape_with_order((c, h * w)).map(|v| v.reversed_axes());
                let t = match t {
                    Ok(v) => normalise(v, (h, w)),
                    Err(_) => {
                        let owned = fm.to_owned();
                        let v = owned.into_shape_with_order((c, h * w)).expect("contiguous").reversed_axes();
                        normalise(v.view(), (h, w))
                    }
                };
                result.push(t);
            }
        }
    }
    Ok(result)
}

fn normalise(t: ArrayView2<'_, f32>, grid: (usize, usize)) -> Tokens {
    let mut data = t.as_standard_layout().into_owned();
    for mut row in data.axis_iter_mut(Axis(0)) {
        let n = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.mapv_inplace(|v| v / n);
    }
    Tokens { data, grid }
}

/// `m[i] = min_j (1 - <p_i, q_j>)` for every row `i` of `p`, as one matrix product
/// (`p q^T`, a BLAS-grade GEMM through matrixmultiply) followed by a row max:
/// `min_j (1 - s_ij) = 1 - max_j s_ij` exactly, since subtraction from 1 is monotonic.
pub fn min_cosine_distance(p: &Tokens, q: &Tokens) -> Vec<f32> {
    // Blocks of rows keep the similarity block in cache (4096 x 4096 would be 64 MiB).
    const BLOCK: usize = 256;
    let qt = q.data.t();
    let mut out = Vec::with_capacity(p.data.nrows());
    for block in p.data.axis_chunks_iter(Axis(0), BLOCK) {
        let sim = block.dot(&qt);
        out.extend(sim.rows().into_iter().map(|row| 1.0 - row.iter().copied().fold(f32::NEG_INFINITY, f32::max)));
    }
    out
}

/// Mean of the `k` largest values (all of them when there are fewer than `k`).
pub fn top_k_mean(values: &[f32], k: usize) -> f32 {
    let k = k.clamp(1, values.len().max(1));
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    let idx = v.len() - k;
    v.select_nth_unstable_by(idx, |a, b| a.total_cmp(b));
    let top = &v[idx..];
    (top.iter().map(|&x| x as f64).sum::<f64>() / k as f64) as f32
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array3};

    #[test]
    fn min_cosine_matches_closed_form() {
        // p0 = e0, p1 = (e0+e1)/√2; q0 = e1, q1 = -e0.
        let p = normalise(array![[1.0, 0.0], [1.0, 1.0]].view(), (1, 2));
        let q = normalise(array![[0.0, 2.0], [-3.0, 0.0]].view(), (1, 2));
        let m = min_cosine_distance(&p, &q);
        assert!((m[0] - 1.0).abs() < 1e-6, "{m:?}");
        assert!((m[1] - (1.0 - 1.0 / 2f32.sqrt())).abs() < 1e-6, "{m:?}");
    }

    #[test]
    fn tokens_drop_cls_and_feature_maps_transpose() {
        let mut a = Array3::<f32>::zeros((1, 5, 2));
        a[[0, 0, 0]] = 100.0; // CLS
        a[[0, 1, 1]] = 3.0;
        let t = tokens_per_image(a.view().into_dyn(), Layout::Tokens, "x").unwrap();
        assert_eq!(t[0].grid, (2, 2));
        assert_eq!(t[0].data.row(0).to_vec(), vec![0.0, 1.0]);
        let mut f = ndarray::Array4::<f32>::zeros((1, 2, 1, 3));
        f[[0, 0, 0, 2]] = 5.0;
        f[[0, 1, 0, 1]] = -2.0;
        let t = tokens_per_image(f.view().into_dyn(), Layout::FeatureMap, "y").unwrap();
        assert_eq!(t[0].grid, (1, 3));
        assert_eq!(t[0].data.row(2).to_vec(), vec![1.0, 0.0]);
        assert_eq!(t[0].data.row(1).to_vec(), vec![0.0, -1.0]);
    }

    #[test]
    fn top_k_mean_takes_largest() {
        assert_eq!(top_k_mean(&[1.0, 5.0, 3.0, 4.0], 2), 4.5);
        assert_eq!(top_k_mean(&[2.0], 10), 2.0);
    }
}

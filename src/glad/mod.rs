//! The GLAD algorithm, written to read like GLAD.md: the scheduler, reconstruction with
//! adaptive denoising (ADP) and spatially adaptive fusion (SAFF), and the anomaly map.
//! It sees the models only through the [`Models`] trait, so it runs on ONNX sessions in
//! production and on closed-form fakes in tests.

pub mod anomaly;
pub mod bank;
pub mod checked;
pub mod features;
pub mod maps;
pub mod params;
pub mod reconstruct;
pub mod schedule;
pub mod score;

use anyhow::Result;
use ndarray::{Array4, ArrayView4};

pub use anomaly::anomaly_maps;
pub use checked::Checked;
pub use features::Tokens;
pub use params::{LatentMode, MapReference, ParamOverrides, Params};
pub use reconstruct::{reconstruct, Reconstruction};
pub use score::AnomalyMap;

/// The networks GLAD calls. Batch in, batch out; every method sees `[B, ...]` arrays.
pub trait Models {
    /// VAE encoder: the latent distribution `(mean, std)` of each image, before scaling.
    /// A pixel-space bundle returns `(x, 0)`.
    fn encode(&mut self, x: ArrayView4<'_, f32>) -> Result<(Array4<f32>, Array4<f32>)>;
    /// The VAE scaling factor (1 for pixel space).
    fn scaling_factor(&self) -> f32;
    /// Noise predictions `(e_uncond, e_cond)` at timestep `t`, from one UNet call on the
    /// batch `[z, z]` with `[uncond, cond]` embeddings (uncond first). An unconditional
    /// UNet returns the same prediction twice.
    fn eps_pair(&mut self, z: ArrayView4<'_, f32>, t: i64) -> Result<(Array4<f32>, Array4<f32>)>;
    /// VAE decoder on latents already divided by the scaling factor (identity for pixel space).
    fn decode(&mut self, z: ArrayView4<'_, f32>) -> Result<Array4<f32>>;
    /// The ADP backbone's last layer, per image, normalised tokens.
    fn adp_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Tokens>>;
    /// Every layer of the final-map backbone, per image (outer) and layer (inner).
    fn map_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Vec<Tokens>>>;
    /// `m1[i] = min_j (1 - <p_i, q_j>)` and, with `both`, `m2[j] = min_i (1 - <p_i, q_j>)`
    /// (the symmetric term). The equations are [`features::min_cosine_distance`]; an
    /// implementation may compute them elsewhere (the engine's ONNX scoring graphs).
    fn cosine_maps(&mut self, p: &Tokens, q: &Tokens, both: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        Ok((features::min_cosine_distance(p, q), both.then(|| features::min_cosine_distance(q, p))))
    }
    /// The ADP map `min_j (1 - <a_i, r_j>)` of the `xa` tokens against the `x0` tokens and its
    /// score, the mean of its `k` largest values ([`features::top_k_mean`]).
    fn adp_score(&mut self, a: &Tokens, r: &Tokens, k: usize) -> Result<(Vec<f32>, f32)> {
        let map = features::min_cosine_distance(a, r);
        let score = features::top_k_mean(&map, k);
        Ok((map, score))
    }
}

//! [`Checked`]: any [`Models`] with every output checked before GLAD uses it — the shape the
//! call promises (batch, latent or image shape, token grid) and finite values. A model that
//! returns the wrong shape, the wrong batch, NaN or Inf makes the call an error (one line
//! naming the model and the output) instead of an ndarray panic or a silently wrong score.

use anyhow::{bail, Result};
use ndarray::{Array4, ArrayView4};

use super::{Models, Tokens};

/// `model {role} output {what} contains NaN|Inf`, or Ok.
pub fn check_finite<'a>(values: impl IntoIterator<Item = &'a f32>, role: &str, what: &str) -> Result<()> {
    let mut inf = false;
    for v in values {
        if v.is_nan() {
            bail!("model {role} output {what} contains NaN");
        }
        inf |= v.is_infinite();
    }
    if inf {
        bail!("model {role} output {what} contains Inf");
    }
    Ok(())
}

fn check_shape(a: &Array4<f32>, want: [usize; 4], role: &str, what: &str) -> Result<()> {
    if a.shape() != want {
        bail!("model {role} output {what} has shape {:?} at run time, expected {want:?}", a.shape());
    }
    check_finite(a.iter(), role, what)
}

fn check_tokens(t: &[&Tokens], n: usize, role: &str, what: &str) -> Result<()> {
    if t.len() != n {
        bail!("model {role} output {what}: {} images returned for a batch of {n}", t.len());
    }
    let cols = t.first().map(|t| (t.data.ncols(), t.grid));
    for (i, tok) in t.iter().enumerate() {
        if tok.data.nrows() != tok.grid.0 * tok.grid.1 || tok.data.nrows() == 0 {
            bail!("model {role} output {what}: image {i} has {} tokens for a {:?} grid", tok.data.nrows(), tok.grid);
        }
        if Some((tok.data.ncols(), tok.grid)) != cols {
            bail!("model {role} output {what}: image {i} has {} channels on a {:?} grid, image 0 {:?}", tok.data.ncols(), tok.grid, cols);
        }
        check_finite(tok.data.iter(), role, what)?;
    }
    Ok(())
}

/// `inner` with its outputs checked against latents `[B, channels, side, side]` and images
/// `[B, 3, resolution, resolution]`.
pub struct Checked<'m, M: Models> {
    pub inner: &'m mut M,
    pub latent: (usize, usize),
    pub resolution: usize,
}

impl<'m, M: Models> Checked<'m, M> {
    pub fn new(inner: &'m mut M, latent: (usize, usize), resolution: usize) -> Self {
        Checked { inner, latent, resolution }
    }
}

impl<M: Models> Models for Checked<'_, M> {
    fn encode(&mut self, x: ArrayView4<'_, f32>) -> Result<(Array4<f32>, Array4<f32>)> {
        let (mean, std) = self.inner.encode(x)?;
        let want = [x.shape()[0], self.latent.0, self.latent.1, self.latent.1];
        check_shape(&mean, want, "vae_encoder", "mean")?;
        check_shape(&std, want, "vae_encoder", "std")?;
        Ok((mean, std))
    }

    fn scaling_factor(&self) -> f32 {
        self.inner.scaling_factor()
    }

    fn eps_pair(&mut self, z: ArrayView4<'_, f32>, t: i64) -> Result<(Array4<f32>, Array4<f32>)> {
        let (u, c) = self.inner.eps_pair(z, t)?;
        let want = [z.shape()[0], z.shape()[1], z.shape()[2], z.shape()[3]];
        check_shape(&u, want, "unet", "eps (unconditional)")?;
        check_shape(&c, want, "unet", "eps (conditional)")?;
        Ok((u, c))
    }

    fn decode(&mut self, z: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let out = self.inner.decode(z)?;
        check_shape(&out, [z.shape()[0], 3, self.resolution, self.resolution], "vae_decoder", "image")?;
        Ok(out)
    }

    fn adp_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Tokens>> {
        let t = self.inner.adp_tokens(images)?;
        check_tokens(&t.iter().collect::<Vec<_>>(), images.shape()[0], "adp_backbone", "tokens")?;
        Ok(t)
    }

    fn map_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Vec<Tokens>>> {
        let t = self.inner.map_tokens(images)?;
        let n = images.shape()[0];
        if t.len() != n {
            bail!("model backbone output tokens: {} images returned for a batch of {n}", t.len());
        }
        let layers = t.first().map_or(0, Vec::len);
        if layers == 0 {
            bail!("model backbone output tokens: no layers");
        }
        for (i, img) in t.iter().enumerate() {
            if img.len() != layers {
                bail!("model backbone output tokens: image {i} has {} layers, image 0 {layers}", img.len());
            }
        }
        for l in 0..layers {
            let layer: Vec<&Tokens> = t.iter().map(|img| &img[l]).collect();
            check_tokens(&layer, n, "backbone", &format!("layer {l}"))?;
        }
        Ok(t)
    }

    fn cosine_maps(&mut self, p: &Tokens, q: &Tokens, both: bool) -> Result<(Vec<f32>, Option<Vec<f32>>)> {
        let (m1, m2) = self.inner.cosine_maps(p, q, both)?;
        check_len(&m1, p.data.nrows(), "m1")?;
        if let Some(m2) = &m2 {
            check_len(m2, q.data.nrows(), "m2")?;
        }
        Ok((m1, m2))
    }

    fn adp_score(&mut self, a: &Tokens, r: &Tokens, k: usize) -> Result<(Vec<f32>, f32)> {
        let (map, score) = self.inner.adp_score(a, r, k)?;
        check_len(&map, a.data.nrows(), "ADP map")?;
        check_finite([score].iter(), "scoring", "ADP score")?;
        Ok((map, score))
    }
}

fn check_len(v: &[f32], n: usize, what: &str) -> Result<()> {
    if v.len() != n {
        bail!("model scoring output {what} has {} values for {n} tokens", v.len());
    }
    check_finite(v.iter(), "scoring", what)
}

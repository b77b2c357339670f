//! Where a reconstruction's noise comes from: a seeded generator, or .npy files.
//!
//! The generator is ChaCha8 (rand_chacha, a portable, reproducible stream) seeded with
//! `seed_from_u64(seed)`, drawing float32 standard normals with rand_distr's ziggurat
//! `StandardNormal`: first the VAE sampling noise `[C,h,w]`, then the diffusion noise `eps`
//! `[C,h,w]`. Every image gets the same draw, so an image's result does not depend on its
//! position in a batch or a stream.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use ndarray::{Array3, Array4, ArrayD, Axis, Ix4};
use rand::SeedableRng;
use rand_distr::{Distribution, StandardNormal};

use crate::glad::reconstruct::Noise;

pub enum NoiseSource {
    Seeded(u64),
    /// `vae_noise.npy` and `eps.npy`, `[N,C,h,w]` (image k of a run uses row k) or `[C,h,w]`.
    Files {
        vae: Box<Array4<f32>>,
        eps: Box<Array4<f32>>,
        dir: PathBuf,
    },
}

fn read4(path: &Path) -> Result<Array4<f32>> {
    let a: ArrayD<f32> =
        ndarray_npy::read_npy(path).map_err(|e| anyhow::anyhow!("{}: cannot read float32 .npy noise: {e}", path.display()))?;
    let shape = a.shape().to_vec();
    match shape.len() {
        3 => Ok(a.insert_axis(Axis(0)).into_dimensionality::<Ix4>()?),
        4 => Ok(a.into_dimensionality::<Ix4>()?),
        _ => bail!("{}: noise has shape {shape:?}, expected [N,C,h,w] or [C,h,w]", path.display()),
    }
}

impl NoiseSource {
    pub fn from_dir(dir: &Path) -> Result<NoiseSource> {
        Ok(NoiseSource::Files {
            vae: Box::new(read4(&dir.join("vae_noise.npy"))?),
            eps: Box::new(read4(&dir.join("eps.npy"))?),
            dir: dir.to_path_buf(),
        })
    }

    /// Noise for the images with run indices `indices`, latents `[C, side, side]`.
    pub fn draw(&self, indices: &[usize], (c, side): (usize, usize)) -> Result<Noise> {
        let b = indices.len();
        match self {
            NoiseSource::Seeded(seed) => {
                let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(*seed);
                let mut one = || Array3::from_shape_simple_fn((c, side, side), || StandardNormal.sample(&mut rng));
                let (vae, eps): (Array3<f32>, Array3<f32>) = (one(), one());
                let rep = |a: &Array3<f32>| a.broadcast((b, c, side, side)).expect("broadcast over batch").to_owned();
                Ok(Noise { vae: rep(&vae), eps: rep(&eps) })
            }
            NoiseSource::Files { vae, eps, dir } => {
                let pick = |a: &Array4<f32>, name: &str| -> Result<Array4<f32>> {
                    if a.shape()[1..] != [c, side, side] {
                        bail!("{}: {name} has shape {:?}, expected [N,{c},{side},{side}]", dir.join(name).display(), a.shape());
                    }
                    let n = a.shape()[0];
                    let rows: Vec<usize> = indices.iter().map(|&i| if n == 1 { 0 } else { i }).collect();
                    if let Some(&bad) = rows.iter().find(|&&i| i >= n) {
                        bail!("{}: {name} has {n} rows, image {bad} needs row {bad}", dir.join(name).display());
                    }
                    Ok(a.select(Axis(0), &rows))
                };
                Ok(Noise { vae: pick(vae, "vae_noise.npy")?, eps: pick(eps, "eps.npy")? })
            }
        }
    }
}

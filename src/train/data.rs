//! Training data: the normal images of one class (decoded once, kept at the training
//! resolution), optional texture images for the anomaly source, and the seeded order in which
//! samples are visited.
//!
//! Every random draw of the training loop comes from a generator derived from
//! `(seed, purpose, index)`, so step `k` sees the same images, anomalies, timesteps and noise
//! whether or not the run was interrupted before it.

use std::cell::RefCell;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::synth::TextureSource;
use crate::imaging;

/// The images under `dir` (the one walker); a path that cannot be read is an error here.
fn collect_images(dir: &Path) -> Result<Vec<PathBuf>> {
    let w = crate::files::images(&[dir.to_path_buf()]);
    if let Some(p) = w.problems.first() {
        bail!("{}", p.error);
    }
    Ok(w.files)
}

/// What a derived generator is for (its stream number's top byte).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// The visiting order of epoch `index`.
    Epoch = 1,
    /// Timesteps, VAE sampling noise and eps of step `index`.
    Step = 2,
    /// Anomaly synthesis of sample number `index` (step * batch + position).
    Sample = 3,
}

/// A ChaCha8 generator for `(seed, purpose, index)`.
pub fn rng_for(seed: u64, purpose: Purpose, index: u64) -> ChaCha8Rng {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    r.set_stream(((purpose as u64) << 56) | (index & ((1 << 56) - 1)));
    r
}

/// The normal images of one class, resized to the training resolution.
pub struct Dataset {
    pub dir: PathBuf,
    pub paths: Vec<PathBuf>,
    pub images: Vec<RgbImage>,
    /// Visiting order of the epoch last asked for.
    order: RefCell<Option<(u64, Vec<usize>)>>,
    /// VAE latent distributions `(mean, std)` per image, and the bundle they came from.
    pub(crate) encoded: RefCell<Option<(PathBuf, Vec<LatentDist>)>>,
}

/// `(mean, std)` of an image's latent, `[C, h, w]` each, before scaling.
pub type LatentDist = (ndarray::Array3<f32>, ndarray::Array3<f32>);

impl Dataset {
    /// Decodes every image under `dir` (recursively; png, jpg, jpeg, bmp, tif, tiff) and resizes it to `r`.
    pub fn load(dir: &Path, r: usize) -> Result<Dataset> {
        if !dir.is_dir() {
            bail!("{}: image folder does not exist", dir.display());
        }
        let paths = collect_images(dir)?;
        if paths.is_empty() {
            bail!("{}: no images (png, jpg, jpeg, bmp, tif, tiff) found", dir.display());
        }
        let images = paths.iter().map(|p| imaging::load_rgb(p).map(|i| imaging::resize(&i, r))).collect::<Result<Vec<_>>>()?;
        Ok(Dataset { dir: dir.to_path_buf(), paths, images, order: RefCell::new(None), encoded: RefCell::new(None) })
    }

    /// In-memory images (tests, benches).
    pub fn from_images(images: Vec<RgbImage>) -> Dataset {
        let paths = (0..images.len()).map(|i| PathBuf::from(format!("<memory {i}>"))).collect();
        Dataset { dir: PathBuf::from("<memory>"), paths, images, order: RefCell::new(None), encoded: RefCell::new(None) }
    }

    pub fn len(&self) -> usize {
        self.images.len()
    }
    pub fn is_empty(&self) -> bool {
        self.images.is_empty()
    }

    /// Image indices of step `step`: sample `k = step * batch + i` is position `k mod N` of
    /// epoch `k div N`'s seeded permutation (every image once per epoch).
    pub fn batch_indices(&self, seed: u64, step: u64, batch: usize) -> Vec<usize> {
        let n = self.len() as u64;
        (0..batch as u64)
            .map(|i| {
                let k = step * batch as u64 + i;
                let (epoch, pos) = (k / n, (k % n) as usize);
                let mut cache = self.order.borrow_mut();
                if cache.as_ref().map(|c| c.0) != Some(epoch) {
                    let mut order: Vec<usize> = (0..self.len()).collect();
                    order.shuffle(&mut rng_for(seed, Purpose::Epoch, epoch));
                    *cache = Some((epoch, order));
                }
                cache.as_ref().expect("just set").1[pos]
            })
            .collect()
    }
}

/// Texture images for the anomaly source, decoded when drawn.
pub struct TextureDir {
    pub dir: PathBuf,
    pub paths: Vec<PathBuf>,
}

impl TextureDir {
    pub fn open(dir: &Path) -> Result<TextureDir> {
        if !dir.is_dir() {
            bail!("{}: texture folder does not exist", dir.display());
        }
        let paths = collect_images(dir)?;
        if paths.is_empty() {
            bail!("{}: no texture images (png, jpg, jpeg, bmp, tif, tiff) found", dir.display());
        }
        Ok(TextureDir { dir: dir.to_path_buf(), paths })
    }
}

impl TextureSource for TextureDir {
    fn count(&self) -> usize {
        self.paths.len()
    }
    fn load(&self, i: usize, r: u32) -> Result<RgbImage> {
        Ok(imaging::resize(&imaging::load_rgb(&self.paths[i])?, r as usize))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn epochs_visit_every_image_once() {
        let ds = Dataset::from_images(vec![RgbImage::new(2, 2); 5]);
        let mut seen: Vec<usize> = (0..5).flat_map(|s| ds.batch_indices(1, s, 2)).collect();
        assert_eq!(seen.len(), 10);
        let (first, second) = seen.split_at_mut(5);
        first.sort();
        second.sort();
        assert_eq!(first, &[0, 1, 2, 3, 4]);
        assert_eq!(second, &[0, 1, 2, 3, 4]);
        // a fresh dataset (a resumed run) gives the same indices for the same step
        let ds2 = Dataset::from_images(vec![RgbImage::new(2, 2); 5]);
        assert_eq!(ds2.batch_indices(1, 3, 2), ds.batch_indices(1, 3, 2));
    }

    #[test]
    fn derived_generators_differ_by_purpose_and_index() {
        let a: u64 = rng_for(0, Purpose::Step, 1).random();
        let b: u64 = rng_for(0, Purpose::Step, 2).random();
        let c: u64 = rng_for(0, Purpose::Sample, 1).random();
        let d: u64 = rng_for(1, Purpose::Step, 1).random();
        let a2: u64 = rng_for(0, Purpose::Step, 1).random();
        assert_eq!(a, a2);
        assert!(a != b && a != c && a != d);
    }
}

//! The steps of the final anomaly map shared by GLAD's map and the feature bank: the
//! backbone's input (step 1), adding one layer's upsampled values, and blur, object mask and
//! top-K score (steps 5-7). GLAD.md, "Final anomaly map and score".

use anyhow::Result;
use ndarray::{Array2, Array3};

use super::features::top_k_mean;
use super::maps::{gaussian_blur, imagenet_normalise, object_mask, resize_align_corners, resize_image_align_corners, Border};
use super::Params;

#[derive(Debug, Clone)]
pub struct AnomalyMap {
    /// `[S, S]`, after blur and object mask.
    pub map: Array2<f32>,
    /// Mean of the `top_k` largest values of `map`.
    pub score: f32,
}

/// Upsamples one layer's per-patch values (bilinear, align_corners) onto the map and adds them.
pub fn add_layer(map: &mut Array2<f32>, values: Vec<f32>, grid: (usize, usize)) -> Result<()> {
    let g = Array2::from_shape_vec(grid, values)?;
    let (h, w) = map.dim();
    *map += &resize_align_corners(g.view(), h, w);
    Ok(())
}

/// Steps 5-7: Gaussian blur (kornia's reflect border), object mask (made from the input `x`,
/// `[3,R,R]` in [-1,1], at R, then resized to S), top-K mean.
pub fn finish(map: Array2<f32>, x: ndarray::ArrayView3<'_, f32>, p: &Params) -> Result<AnomalyMap> {
    let (h, w) = map.dim();
    let mut map = gaussian_blur(&map, p.blur_sigma, Border::Reflect)?;
    if let Some(mask) = object_mask(x, p.object_mask, p.blur_sigma) {
        map *= &resize_align_corners(mask.view(), h, w);
    }
    let score = top_k_mean(map.as_slice().expect("standard layout"), p.top_k);
    Ok(AnomalyMap { map, score })
}

/// Step 1: an image `[3,R,R]` in [-1,1] resized to `S` (bilinear, align_corners), mapped to
/// [0,1] and ImageNet-normalised: what the final-map backbone sees.
pub fn backbone_input(img: ndarray::ArrayView3<'_, f32>, s: usize) -> Array3<f32> {
    let mut r = resize_image_align_corners(img, s);
    imagenet_normalise(&mut r);
    r
}

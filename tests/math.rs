//! The hand-written GLAD math against golden numbers from scripts/make_parity_goldens.py
//! (numpy, diffusers-equivalent formulas; scipy-equivalent blur).

use std::path::{Path, PathBuf};

use glad_edge::glad::maps::{gaussian_blur, resize_align_corners, Border};
use glad_edge::glad::schedule::{glad_grid, AlphaBar, BetaSchedule, SchedulerConfig};
use ndarray::{Array1, Array2, ArrayD, Ix1, Ix2};

fn golden(rel: &str) -> ArrayD<f32> {
    let p: PathBuf = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(rel);
    ndarray_npy::read_npy(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn max_rel(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| ((x - y) / y.abs().max(1e-30)).abs()).fold(0.0, f32::max)
}

/// alpha-bar in float32 for the three beta schedules: relative error <= 1e-6 (the betas come
/// from a float64 linspace rounded to float32, as the reference; torch's float32 linspace can
/// differ by one ulp).
#[test]
fn alpha_bar_matches_reference_for_all_schedules() {
    for (sched, file, start, end) in [
        (BetaSchedule::ScaledLinear, "schedule/ab_scaled_linear.npy", 0.00085, 0.012),
        (BetaSchedule::Linear, "schedule/ab_linear.npy", 0.0001, 0.02),
        (BetaSchedule::SquaredcosCapV2, "schedule/ab_squaredcos_cap_v2.npy", 0.0001, 0.02),
    ] {
        let cfg = SchedulerConfig { beta_schedule: sched, beta_start: start, beta_end: end, ..SchedulerConfig::sd14() };
        let ab = AlphaBar::new(&cfg).unwrap();
        let want = golden(file);
        let e = max_rel(ab.as_slice(), want.as_slice().unwrap());
        assert!(e <= 1e-6, "{file}: max relative error {e}");
    }
}

/// GLAD's truncated grid: exact timesteps; ab and ab_prev within 1e-6 relative.
#[test]
fn glad_grid_matches_reference() {
    let cfg = SchedulerConfig::sd14();
    let ab = AlphaBar::new(&cfg).unwrap();
    for (t, k) in [(750usize, 25usize), (450, 15), (850, 25), (600, 25)] {
        let grid = glad_grid(&ab, &cfg, t, k).unwrap();
        let ts: Array1<i64> = {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/schedule/T{t}_K{k}_timesteps.npy"));
            let a: ArrayD<i64> = ndarray_npy::read_npy(&p).unwrap();
            a.into_dimensionality::<Ix1>().unwrap()
        };
        let got: Vec<i64> = grid.iter().map(|s| s.t).collect();
        assert_eq!(got, ts.to_vec(), "T={t} K={k}");
        let abs: Vec<f32> = grid.iter().map(|s| s.ab).collect();
        let prev: Vec<f32> = grid.iter().map(|s| s.ab_prev).collect();
        assert!(max_rel(&abs, golden(&format!("schedule/T{t}_K{k}_ab.npy")).as_slice().unwrap()) <= 1e-6);
        assert!(max_rel(&prev, golden(&format!("schedule/T{t}_K{k}_ab_prev.npy")).as_slice().unwrap()) <= 1e-6);
    }
    // Closed form: T=750, K=25 → ratio 30, 721 ... 1, the last step goes to ab[0].
    let grid = glad_grid(&ab, &cfg, 750, 25).unwrap();
    assert_eq!((grid[0].t, grid[24].t), (721, 1));
    assert_eq!(grid[24].ab_prev, ab.at(0));
    assert_eq!(grid[0].ab_prev, ab.at(691));
}

/// The object mask's blur (sigma 6, edge repeated): max abs diff <= 1e-6 of
/// `scipy.ndimage.gaussian_filter`'s default border.
#[test]
fn mask_blur_matches_scipy() {
    let input: Array2<f32> = golden("blur/input.npy").into_dimensionality::<Ix2>().unwrap();
    let want: Array2<f32> = golden("blur/sigma6.npy").into_dimensionality::<Ix2>().unwrap();
    let got = gaussian_blur(&input, 6.0, Border::Symmetric).unwrap();
    let d = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
    assert!(d <= 1e-6, "max abs diff {d}");
}

/// The final map's blur (sigma 6, 49 taps, kornia's reflect border = `numpy.pad(mode="reflect")`,
/// edge not repeated) at 64 and 512 px: max abs diff <= 1e-6 of the numpy golden, on the whole
/// map and so also on the 24-pixel border where the two rules differ.
#[test]
fn final_map_blur_matches_numpy_reflect() {
    for n in [64usize, 512] {
        let m = Array2::from_shape_fn((n, n), |(y, x)| ((7 * y + 13 * x) % 29) as f32 / 29.0 + if y == x { 1.0 } else { 0.0 });
        let want: Array2<f32> = golden(&format!("blur/reflect{n}.npy")).into_dimensionality::<Ix2>().unwrap();
        let got = gaussian_blur(&m, 6.0, Border::Reflect).unwrap();
        let d = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
        assert!(d <= 1e-6, "{n} px: max abs diff {d}");
        // The edge-repeating rule is measurably different at the border (what issue 16 fixed).
        let sym = gaussian_blur(&m, 6.0, Border::Symmetric).unwrap();
        let d_sym = (&sym - &want).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
        assert!(d_sym > 1e-3, "{n} px: the symmetric border should differ, got {d_sym}");
    }
}

/// Bilinear align_corners=True upsampling 16 → 128 of values up to 2.7: max abs diff <= 5e-6
/// of torch's (a few float32 ulps: the two interpolation passes round separately).
#[test]
fn resize_matches_torch_align_corners() {
    let input: Array2<f32> = golden("resize/input.npy").into_dimensionality::<Ix2>().unwrap();
    let want: Array2<f32> = golden("resize/output.npy").into_dimensionality::<Ix2>().unwrap();
    let got = resize_align_corners(input.view(), 128, 128);
    let d = (&got - &want).mapv(f32::abs).fold(0.0f32, |a, &v| a.max(v));
    assert!(d <= 5e-6, "max abs diff {d}");
}

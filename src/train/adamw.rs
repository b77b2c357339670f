//! AdamW as `torch.optim.AdamW` (decoupled weight decay, bias correction), global
//! gradient-norm clipping as `torch.nn.utils.clip_grad_norm_`, and a constant learning rate
//! with a linear warm-up. State and updates in float32, as torch keeps them.

use serde::{Deserialize, Serialize};

/// Optimiser settings. Defaults are GLAD.md's (the reference's): lr 5e-6, betas 0.9/0.999,
/// weight decay 1e-2, eps 1e-8, clip 1.0, no warm-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamWConfig {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Global gradient-norm clip (`None`: no clipping).
    pub clip_norm: Option<f64>,
    /// Linear warm-up steps: step `k` (0-based) uses `lr * min(1, (k + 1) / warmup)`.
    pub warmup: u64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig { lr: 5e-6, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 1e-2, clip_norm: Some(1.0), warmup: 0 }
    }
}

impl AdamWConfig {
    /// The learning rate of step `k` (0-based). Unlike diffusers' warm-up (whose first step has
    /// lr 0), the first step already moves: `(k + 1) / warmup`.
    pub fn lr_at(&self, k: u64) -> f64 {
        if self.warmup == 0 {
            self.lr
        } else {
            self.lr * ((k + 1) as f64 / self.warmup as f64).min(1.0)
        }
    }
}

/// Scales `grads` in place so that their global L2 norm is at most `max_norm` (torch:
/// `coef = max_norm / (norm + 1e-6)`, applied when below 1). Returns the norm before clipping.
pub fn clip_grad_norm(grads: &mut [&mut [f32]], max_norm: f64) -> f64 {
    let norm = grads.iter().flat_map(|g| g.iter()).map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt();
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = coef as f32;
        for g in grads.iter_mut() {
            for x in g.iter_mut() {
                *x *= c;
            }
        }
    }
    norm
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepInfo {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
}

/// AdamW state: first and second moments per tensor and the number of steps taken.
#[derive(Debug, Clone, PartialEq)]
pub struct AdamW {
    pub cfg: AdamWConfig,
    pub m: Vec<Vec<f32>>,
    pub v: Vec<Vec<f32>>,
    /// Steps taken so far (torch's `state["step"]`).
    pub step: u64,
}

impl AdamW {
    /// Fresh state for tensors of the given lengths.
    pub fn new(cfg: AdamWConfig, lens: impl IntoIterator<Item = usize>) -> AdamW {
        let (m, v): (Vec<_>, Vec<_>) = lens.into_iter().map(|n| (vec![0.0f32; n], vec![0.0f32; n])).unzip();
        AdamW { cfg, m, v, step: 0 }
    }

    /// One update of `params` with `grads` (clipped in place first when `clip_norm` is set).
    pub fn update(&mut self, params: &mut [&mut [f32]], grads: &mut [&mut [f32]]) -> StepInfo {
        assert_eq!(params.len(), self.m.len(), "one gradient per parameter tensor");
        assert_eq!(grads.len(), self.m.len(), "one gradient per parameter tensor");
        let grad_norm = match self.cfg.clip_norm {
            Some(max) => clip_grad_norm(grads, max),
            None => grads.iter().flat_map(|g| g.iter()).map(|&x| (x as f64) * (x as f64)).sum::<f64>().sqrt(),
        };
        let lr = self.cfg.lr_at(self.step);
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.cfg.beta1, self.cfg.beta2);
        let decay = (1.0 - lr * self.cfg.weight_decay) as f32;
        let step_size = (lr / (1.0 - b1.powi(t))) as f32;
        let bc2_sqrt = (1.0 - b2.powi(t)).sqrt() as f32;
        let (b1f, b2f, eps) = (b1 as f32, b2 as f32, self.cfg.eps as f32);
        for (((p, g), m), v) in params.iter_mut().zip(grads.iter()).zip(&mut self.m).zip(&mut self.v) {
            assert_eq!(p.len(), g.len(), "parameter and gradient lengths differ");
            for i in 0..p.len() {
                let gi = g[i];
                p[i] *= decay;
                m[i] = b1f * m[i] + (1.0 - b1f) * gi;
                v[i] = b2f * v[i] + (1.0 - b2f) * gi * gi;
                let denom = v[i].sqrt() / bc2_sqrt + eps;
                p[i] -= step_size * m[i] / denom;
            }
        }
        StepInfo { grad_norm, lr }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(p: &mut [f32], opt: &mut AdamW, g: &[f32]) -> StepInfo {
        let mut g = g.to_vec();
        opt.update(&mut [p], &mut [g.as_mut_slice()])
    }

    #[test]
    fn two_steps_match_hand_computation_and_torch() {
        // lr 0.1, weight decay 0.01, betas 0.9/0.999, eps 1e-8, no clipping, p = [1, -2].
        let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.01, clip_norm: None, ..AdamWConfig::default() };
        let mut p = vec![1.0f32, -2.0];
        let mut opt = AdamW::new(cfg, [2]);
        // Step 1, g = [0.5, -0.1]:
        //   decay  p = p * (1 - 0.1*0.01) = [0.999, -1.998]
        //   m = 0.1 g = [0.05, -0.01];  v = 0.001 g^2 = [2.5e-4, 1e-5]
        //   m^ = m / (1-0.9) = [0.5, -0.1];  sqrt(v / (1-0.999)) = [0.5, 0.1]
        //   p -= 0.1 * m^ / (sqrt(v^) + 1e-8) = 0.1 * [1, -1]  ->  [0.899, -1.898]
        run(&mut p, &mut opt, &[0.5, -0.1]);
        assert!((p[0] - 0.899).abs() < 1e-6 && (p[1] + 1.898).abs() < 1e-6, "{p:?}");
        // Step 2, g = [-0.25, 0.2]:
        //   decay  p = [0.899*0.999, -1.898*0.999] = [0.898101, -1.896102]
        //   m = 0.9*[0.05, -0.01] + 0.1*[-0.25, 0.2] = [0.02, 0.011]
        //   v = 0.999*[2.5e-4, 1e-5] + 0.001*[0.0625, 0.04] = [3.1225e-4, 4.999e-5]
        //   bias corrections 1-0.9^2 = 0.19, 1-0.999^2 = 0.001999
        //   m^ = [0.105263, 0.057895];  sqrt(v^) = sqrt([0.156203, 0.025008]) = [0.395225, 0.158138]
        //   p -= 0.1 * m^/sqrt(v^) = [0.026634, 0.036610]  ->  [0.871467, -1.932712]
        // torch.optim.AdamW in float64 gives [0.8714672987, -1.9327123604].
        let info = run(&mut p, &mut opt, &[-0.25, 0.2]);
        assert!((p[0] - 0.871_467_3).abs() < 2e-6, "{p:?}");
        assert!((p[1] + 1.932_712_4).abs() < 2e-6, "{p:?}");
        assert_eq!(opt.step, 2);
        assert!((info.grad_norm - (0.25f64.powi(2) + 0.04).sqrt()).abs() < 1e-7);
    }

    #[test]
    fn clipping_scales_to_the_global_norm() {
        // two tensors [3] and [4]: global norm 5, clipped to 1 -> [0.6], [0.8] (coef 1/(5+1e-6))
        let (mut a, mut b) = (vec![3.0f32], vec![4.0f32]);
        let n = clip_grad_norm(&mut [a.as_mut_slice(), b.as_mut_slice()], 1.0);
        assert_eq!(n, 5.0);
        assert!((a[0] - 0.6).abs() < 1e-6 && (b[0] - 0.8).abs() < 1e-6);
        // below the limit: untouched
        let mut c = vec![0.3f32, 0.4];
        clip_grad_norm(&mut [c.as_mut_slice()], 1.0);
        assert_eq!(c, vec![0.3, 0.4]);
    }

    #[test]
    fn warmup_is_linear_then_constant() {
        let cfg = AdamWConfig { lr: 1e-3, warmup: 4, ..AdamWConfig::default() };
        let lrs: Vec<f64> = (0..6).map(|k| cfg.lr_at(k)).collect();
        assert_eq!(lrs, vec![2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3]);
        assert_eq!(AdamWConfig::default().lr_at(0), 5e-6);
    }

    #[test]
    fn first_step_moves_each_weight_by_about_lr() {
        // Adam's first step is lr * sign(g) (plus decay): a scale-free check of the update.
        let cfg = AdamWConfig { lr: 0.01, weight_decay: 0.0, clip_norm: Some(1.0), ..AdamWConfig::default() };
        let mut p = vec![0.0f32; 3];
        let mut opt = AdamW::new(cfg, [3]);
        let mut g = vec![100.0f32, -0.001, 3.0];
        opt.update(&mut [p.as_mut_slice()], &mut [g.as_mut_slice()]);
        for (x, s) in p.iter().zip([-1.0f32, 1.0, -1.0]) {
            assert!((x - s * 0.01).abs() < 1e-5, "{p:?}");
        }
    }
}

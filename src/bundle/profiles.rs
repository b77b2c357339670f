//! TensorRT optimisation profiles for the batch sizes a bundle is used with.
//!
//! With a dynamic batch dimension and no explicit profile, ONNX Runtime's TensorRT provider
//! builds an engine for the first shape it sees and rebuilds it whenever a larger one turns
//! up (minutes per UNet on a Jetson). The shapes GLAD feeds each role are known from the
//! manifest, so the profiles are set up front: for an image batch of 1..B,
//!
//! | role | batch range | why |
//! |---|---|---|
//! | vae_encoder | 1..B | the input batch |
//! | unet | 2..2B (1..B without a prompt) | classifier-free guidance runs `[z; z]` with `[uncond; cond]` |
//! | vae_decoder | 1..2B | the ADP pairs `[xa; x0]` of the samples still searching, the final decode of B |
//! | backbone | 1..2B | `[x; rec]` for the final map (and the ADP pairs when it is also the ADP backbone) |
//! | adp_backbone | 2..2B | the decoded ADP pairs |
//!
//! The optimum is the maximum: a station runs full batches. The UNet's timestep is taken to
//! be `[n]`, as both exporters write it; a UNet with a scalar timestep needs
//! `tensorrt.profiles: false`.

use super::manifest::{Manifest, Space};
use crate::runtime::TrtProfile;

/// `(role, profile)` for every model the manifest names; `prompt` is the `(L, D)` of the
/// prompt embeddings (`None` for an unconditional UNet).
pub fn tensorrt_profiles(m: &Manifest, prompt: Option<(usize, usize)>, max_batch: usize) -> Vec<(&'static str, TrtProfile)> {
    let b = max_batch.max(1);
    let r = m.resolution;
    let (lc, side) = match (&m.space, &m.latent) {
        (Space::Latent, Some(l)) => (l.channels, r / l.factor.max(1)),
        _ => (3, r),
    };
    let mut out = Vec::new();
    if let Some(e) = &m.models.vae_encoder {
        out.push(("vae_encoder", TrtProfile::batch_range(&[(e.input.as_str(), vec![3, r, r])], 1, b)));
    }
    let u = &m.models.unet;
    let mut unet_inputs: Vec<(&str, Vec<usize>)> = vec![(u.sample.as_str(), vec![lc, side, side]), (u.timestep.as_str(), vec![])];
    let (lo, hi) = match (u.context.as_deref(), prompt) {
        (Some(name), Some((l, d))) => {
            unet_inputs.push((name, vec![l, d]));
            (2, 2 * b)
        }
        _ => (1, b),
    };
    out.push(("unet", TrtProfile::batch_range(&unet_inputs, lo, hi)));
    if let Some(d) = &m.models.vae_decoder {
        out.push(("vae_decoder", TrtProfile::batch_range(&[(d.input.as_str(), vec![lc, side, side])], 1, 2 * b)));
    }
    let bb = &m.models.backbone;
    let s = bb.resolution;
    out.push(("backbone", TrtProfile::batch_range(&[(bb.input.as_str(), vec![3, s, s])], 1, 2 * b)));
    if let Some(a) = m.models.adp_backbone.as_ref().filter(|a| *a != bb) {
        let s = a.resolution;
        out.push(("adp_backbone", TrtProfile::batch_range(&[(a.input.as_str(), vec![3, s, s])], 2, 2 * b)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Manifest {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("onnx/tiny");
        Manifest::read(&dir).unwrap()
    }

    fn get<'a>(p: &'a [(&'static str, TrtProfile)], role: &str) -> &'a TrtProfile {
        &p.iter().find(|(r, _)| *r == role).unwrap_or_else(|| panic!("no profile for {role}")).1
    }

    #[test]
    fn tiny_bundle_profiles_for_batch_4() {
        let p = tensorrt_profiles(&tiny(), Some((77, 32)), 4);
        let roles: Vec<&str> = p.iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, ["vae_encoder", "unet", "vae_decoder", "backbone"]);
        let e = get(&p, "vae_encoder");
        assert_eq!((e.min.as_str(), e.opt.as_str(), e.max.as_str()), ("image:1x3x128x128", "image:4x3x128x128", "image:4x3x128x128"));
        let u = get(&p, "unet");
        assert_eq!(u.min, "sample:2x4x16x16,timestep:2,encoder_hidden_states:2x77x32");
        assert_eq!(u.max, "sample:8x4x16x16,timestep:8,encoder_hidden_states:8x77x32");
        assert_eq!(u.opt, u.max);
        let d = get(&p, "vae_decoder");
        assert_eq!((d.min.as_str(), d.max.as_str()), ("latent:1x4x16x16", "latent:8x4x16x16"));
        let bb = get(&p, "backbone");
        assert_eq!((bb.min.as_str(), bb.max.as_str()), ("image:1x3x128x128", "image:8x3x128x128"));
    }

    #[test]
    fn sd14_sizes_batch_1_and_zero_means_one() {
        let mut m = tiny();
        m.resolution = 512;
        m.models.backbone.resolution = 512;
        let p = tensorrt_profiles(&m, Some((77, 768)), 0);
        let u = get(&p, "unet");
        assert_eq!(u.min, "sample:2x4x64x64,timestep:2,encoder_hidden_states:2x77x768");
        assert_eq!(u.max, u.min);
        assert_eq!(get(&p, "vae_decoder").max, "latent:2x4x64x64");
        assert_eq!(get(&p, "backbone").max, "image:2x3x512x512");
    }

    #[test]
    fn unconditional_pixel_unet_and_separate_adp_backbone() {
        let mut m = tiny();
        m.space = Space::Pixel;
        m.latent = None;
        m.models.vae_encoder = None;
        m.models.vae_decoder = None;
        m.models.unet.context = None;
        let mut adp = m.models.backbone.clone();
        adp.file = "adp.onnx".into();
        adp.input = "x".into();
        m.models.adp_backbone = Some(adp);
        let p = tensorrt_profiles(&m, None, 3);
        let roles: Vec<&str> = p.iter().map(|(r, _)| *r).collect();
        assert_eq!(roles, ["unet", "backbone", "adp_backbone"]);
        assert_eq!(get(&p, "unet").min, "sample:1x3x128x128,timestep:1");
        assert_eq!(get(&p, "unet").max, "sample:3x3x128x128,timestep:3");
        assert_eq!(get(&p, "adp_backbone").min, "x:2x3x128x128");
        assert_eq!(get(&p, "adp_backbone").max, "x:6x3x128x128");
    }
}

//! Fault injection in the engine: a fake `Models` that returns NaN, Inf, the wrong shape, the
//! wrong batch or an error (as ONNX Runtime would) in the middle of a stream. The faulty batch
//! is an error with one line naming the model and output; the batches after it are inspected
//! as if nothing had happened.

use anyhow::{bail, Result};
use glad_edge::engine::inspect_with;
use glad_edge::glad::features::{tokens_per_image, Layout};
use glad_edge::glad::reconstruct::Noise;
use glad_edge::glad::schedule::{AlphaBar, SchedulerConfig};
use glad_edge::glad::{Models, ParamOverrides, Params, Tokens};
use ndarray::{s, Array4, ArrayView4};

const R: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    UnetNan,
    UnetInf,
    UnetWrongShape,
    DecoderWrongBatch,
    DecoderNan,
    EncoderError,
    UnetErrorMidway,
    BackboneWrongBatch,
    BackboneNan,
}

struct Fake {
    fault: Fault,
    unet_calls: usize,
}

impl Fake {
    fn tokens(images: ArrayView4<'_, f32>) -> Result<Vec<Tokens>> {
        tokens_per_image(images.into_dyn(), Layout::FeatureMap, "fake")
    }
}

impl Models for Fake {
    fn encode(&mut self, x: ArrayView4<'_, f32>) -> Result<(Array4<f32>, Array4<f32>)> {
        if self.fault == Fault::EncoderError {
            bail!("vae_encoder: inference failed: simulated ONNX Runtime error");
        }
        Ok((x.to_owned(), Array4::zeros(x.raw_dim())))
    }
    fn scaling_factor(&self) -> f32 {
        1.0
    }
    fn eps_pair(&mut self, z: ArrayView4<'_, f32>, _t: i64) -> Result<(Array4<f32>, Array4<f32>)> {
        self.unet_calls += 1;
        let mut e = z.mapv(|v| 0.1 * v);
        match self.fault {
            Fault::UnetNan => e[[0, 0, 3, 3]] = f32::NAN,
            Fault::UnetInf => e[[0, 1, 2, 2]] = f32::INFINITY,
            Fault::UnetWrongShape => e = Array4::zeros((z.shape()[0], 3, R / 2, R / 2)),
            Fault::UnetErrorMidway if self.unet_calls == 2 => bail!("unet: inference failed: simulated ONNX Runtime error"),
            _ => {}
        }
        Ok((e.clone(), e))
    }
    fn decode(&mut self, z: ArrayView4<'_, f32>) -> Result<Array4<f32>> {
        let mut out = z.to_owned();
        match self.fault {
            Fault::DecoderWrongBatch => out = out.slice(s![..z.shape()[0] - 1, .., .., ..]).to_owned(),
            Fault::DecoderNan => out[[0, 0, 0, 0]] = f32::NAN,
            _ => {}
        }
        Ok(out)
    }
    fn adp_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Tokens>> {
        Fake::tokens(images)
    }
    fn map_tokens(&mut self, images: ArrayView4<'_, f32>) -> Result<Vec<Vec<Tokens>>> {
        let mut t: Vec<Vec<Tokens>> = Fake::tokens(images)?.into_iter().map(|t| vec![t]).collect();
        match self.fault {
            Fault::BackboneWrongBatch => {
                t.pop();
            }
            Fault::BackboneNan => t[0][0].data[[0, 0]] = f32::NAN,
            _ => {}
        }
        Ok(t)
    }
}

fn params(tau: f32) -> Params {
    ParamOverrides {
        denoise_step: Some(20),
        steps: Some(3),
        tau: Some(tau),
        min_step: Some(5),
        top_k: Some(8),
        adp_top_k: Some(4),
        blur_sigma: Some(1.0),
        ..Default::default()
    }
    .resolve(R)
    .unwrap()
}

fn batch(b: usize, k: usize) -> (Array4<f32>, Noise) {
    let x = Array4::from_shape_fn((b, 3, R, R), |(i, c, y, xx)| (((i + k) * 7 + c * 3 + y * 5 + xx) % 17) as f32 / 8.5 - 1.0);
    let n = Array4::from_shape_fn((b, 3, R, R), |(_, c, y, xx)| ((c + y * 3 + xx * 7) % 11) as f32 / 5.5 - 1.0);
    (x, Noise { vae: n.clone(), eps: n })
}

#[test]
fn a_faulty_batch_is_an_error_and_the_stream_goes_on() {
    let sched = SchedulerConfig::sd14();
    let ab = AlphaBar::new(&sched).unwrap();
    let stream = [
        (Fault::None, ""),
        (Fault::UnetNan, "model unet output eps (unconditional) contains NaN"),
        (Fault::None, ""),
        (Fault::UnetInf, "contains Inf"),
        (Fault::UnetWrongShape, "model unet output eps (unconditional) has shape [2, 3, 8, 8] at run time, expected [2, 3, 16, 16]"),
        (Fault::DecoderWrongBatch, "model vae_decoder output image has shape"),
        (Fault::DecoderNan, "model vae_decoder output image contains NaN"),
        (Fault::EncoderError, "simulated ONNX Runtime error"),
        (Fault::UnetErrorMidway, "simulated ONNX Runtime error"),
        (Fault::BackboneWrongBatch, "model backbone output tokens: 3 images returned for a batch of 4"),
        (Fault::BackboneNan, "model backbone output layer 0 contains NaN"),
        (Fault::None, ""),
    ];
    for tau in [0.0, 0.05] {
        let p = params(tau);
        let mut reference: Option<Vec<f32>> = None;
        let (mut ok, mut failed) = (0, 0);
        for (k, (fault, want)) in stream.iter().enumerate() {
            let (x, noise) = batch(2, 0);
            let mut fake = Fake { fault: *fault, unet_calls: 0 };
            let r = inspect_with(&mut fake, &sched, &ab, &p, (3, R), x.view(), &noise, None);
            match (fault, r) {
                (Fault::None, Ok((insp, _, _))) => {
                    let scores: Vec<f32> = insp.iter().map(|i| i.score).collect();
                    assert!(scores.iter().all(|s| s.is_finite()), "batch {k}: {scores:?}");
                    // Earlier faults left nothing behind: the same input scores the same.
                    if let Some(r) = &reference {
                        assert_eq!(r, &scores, "batch {k}");
                    }
                    reference = Some(scores);
                    ok += 1;
                }
                (Fault::None, Err(e)) => panic!("batch {k}: {e:#}"),
                (_, Ok(_)) => panic!("batch {k}: fault {fault:?} not detected"),
                (_, Err(e)) => {
                    let msg = format!("{e:#}");
                    assert!(msg.contains(want), "batch {k} ({fault:?}): {msg}");
                    assert_eq!(msg.lines().count(), 1, "{msg}");
                    failed += 1;
                }
            }
        }
        assert_eq!((ok, failed), (3, 9));
    }
}

#[test]
fn noise_of_the_wrong_shape_is_an_error() {
    let sched = SchedulerConfig::sd14();
    let ab = AlphaBar::new(&sched).unwrap();
    let (x, _) = batch(2, 0);
    let noise = Noise { vae: Array4::zeros((2, 3, 8, 8)), eps: Array4::zeros((2, 3, 8, 8)) };
    let e = inspect_with(&mut Fake { fault: Fault::None, unet_calls: 0 }, &sched, &ab, &params(0.0), (3, R), x.view(), &noise, None)
        .unwrap_err();
    assert!(format!("{e:#}").contains("noise `eps` has shape"), "{e:#}");
}

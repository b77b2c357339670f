//! Sources → engine → sinks. With `pipelined`, decoding/preprocessing runs on one thread,
//! the engine on the caller's, and the sink (PNG encoding, file output) on a third, joined
//! by bounded crossbeam channels so a slow stage applies back-pressure instead of queueing
//! images in memory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_channel::bounded;
use image::RgbImage;
use ndarray::{Array3, Array4, Axis};

use crate::engine::{Engine, Inspection, NoiseSource, StageTimes};
use crate::imaging;

/// Per-image share of the batch's stage times, plus its own decode/preprocess time.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ImageTimes {
    pub load_ms: f64,
    pub encode_ms: f64,
    pub unet_ms: f64,
    pub decode_ms: f64,
    pub adp_backbone_ms: f64,
    pub backbone_ms: f64,
    pub reconstruct_ms: f64,
    pub anomaly_map_ms: f64,
    /// Engine wall time (reconstruction + anomaly map).
    pub engine_ms: f64,
    /// The part of `engine_ms` spent inside ONNX Runtime calls.
    pub onnxruntime_ms: f64,
}

impl ImageTimes {
    /// One image's share of a batch of `b`, plus its own `load` time.
    pub fn from_batch(load: Duration, t: &StageTimes, b: usize) -> Self {
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / b as f64;
        ImageTimes {
            load_ms: load.as_secs_f64() * 1e3,
            encode_ms: ms(t.models.encode),
            unet_ms: ms(t.models.unet),
            decode_ms: ms(t.models.decode),
            adp_backbone_ms: ms(t.models.adp_backbone),
            backbone_ms: ms(t.models.backbone),
            reconstruct_ms: ms(t.reconstruct),
            anomaly_map_ms: ms(t.anomaly_map),
            engine_ms: ms(t.reconstruct + t.anomaly_map),
            onnxruntime_ms: ms(t.models.total()),
        }
    }
}

/// One image through the pipeline: its result, or why it failed.
pub struct Inspected {
    pub index: usize,
    pub path: PathBuf,
    /// The decoded input (absent when decoding failed).
    pub image: Option<RgbImage>,
    pub result: Result<(Inspection, ImageTimes)>,
}

struct Loaded {
    index: usize,
    path: PathBuf,
    elapsed: Duration,
    decoded: Result<(RgbImage, Array3<f32>)>,
}

fn load(index: usize, path: PathBuf, r: usize) -> Loaded {
    let t0 = Instant::now();
    let decoded = imaging::load_rgb(&path).map(|img| {
        let t = imaging::preprocess(&img, r);
        (img, t)
    });
    Loaded { index, path, elapsed: t0.elapsed(), decoded }
}

/// Runs the engine over batches of successfully loaded images; failures skip the engine.
fn run_batch(engine: &mut Engine, noise: &NoiseSource, batch: Vec<Loaded>, mut emit: impl FnMut(Inspected)) {
    let (ok, failed): (Vec<Loaded>, Vec<Loaded>) = batch.into_iter().partition(|l| l.decoded.is_ok());
    for l in failed {
        emit(Inspected { index: l.index, path: l.path, image: None, result: Err(l.decoded.expect_err("partitioned on is_ok")) });
    }
    if ok.is_empty() {
        return;
    }
    let r = engine.resolution();
    let mut x = Array4::<f32>::zeros((ok.len(), 3, r, r));
    for (i, l) in ok.iter().enumerate() {
        x.index_axis_mut(Axis(0), i).assign(&l.decoded.as_ref().expect("ok").1);
    }
    let indices: Vec<usize> = ok.iter().map(|l| l.index).collect();
    let result = noise.draw(&indices, engine.latent_shape()).and_then(|n| engine.inspect(x.view(), &n));
    match result {
        Ok((inspections, times)) => {
            let b = ok.len();
            for (l, insp) in ok.into_iter().zip(inspections) {
                let t = ImageTimes::from_batch(l.elapsed, &times, b);
                let img = l.decoded.expect("ok").0;
                emit(Inspected { index: l.index, path: l.path, image: Some(img), result: Ok((insp, t)) });
            }
        }
        Err(e) => {
            let msg = format!("{e:#}");
            for l in ok {
                let img = l.decoded.expect("ok").0;
                emit(Inspected {
                    index: l.index,
                    path: l.path,
                    image: Some(img),
                    result: Err(anyhow::anyhow!("inspection failed: {msg}")),
                });
            }
        }
    }
}

/// Inspects `files` in batches of `batch`, handing every image (inspected or failed) to
/// `sink`. Sequential: one engine does load → inspect → sink per batch. Pipelined: a loader
/// thread, one worker thread per engine (each engine its own sessions, so N engines inspect N
/// batches at once) and a sink thread; images reach the sink in completion order.
pub fn run<S>(engines: &mut [Engine], noise: &NoiseSource, files: &[PathBuf], batch: usize, pipelined: bool, mut sink: S) -> Result<()>
where
    S: FnMut(Inspected) + Send,
{
    let batch = batch.max(1);
    let Some(first) = engines.first() else {
        anyhow::bail!("pipeline: no engine");
    };
    let r = first.resolution();
    if !pipelined {
        let engine = &mut engines[0];
        for (k, chunk) in files.chunks(batch).enumerate() {
            let loaded: Vec<Loaded> = chunk.iter().enumerate().map(|(i, p)| load(k * batch + i, p.clone(), r)).collect();
            run_batch(engine, noise, loaded, &mut sink);
        }
        return Ok(());
    }
    let (batch_tx, batch_rx) = bounded::<Vec<Loaded>>(engines.len() + 1);
    let (out_tx, out_rx) = bounded::<Inspected>(2 * batch * engines.len());
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for (k, chunk) in files.chunks(batch).enumerate() {
                let loaded = chunk.iter().enumerate().map(|(i, p)| load(k * batch + i, p.clone(), r)).collect();
                if batch_tx.send(loaded).is_err() {
                    break;
                }
            }
        });
        scope.spawn(move || {
            for item in out_rx {
                sink(item);
            }
        });
        for engine in engines.iter_mut() {
            let (rx, tx) = (batch_rx.clone(), out_tx.clone());
            scope.spawn(move || {
                for loaded in rx {
                    run_batch(engine, noise, loaded, |i| {
                        let _ = tx.send(i);
                    });
                }
            });
        }
        drop(out_tx);
    });
    Ok(())
}

//! `glad bank`: the memory bank of normal patches that the `bank` and `union` map references
//! compare with, built once per bundle from the class's normal images and saved beside it.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use ndarray::{Array4, Axis};

use super::{CommonArgs, ParamArgs, Settings};
use crate::engine::{bank_dir, Engine, OnnxModels};
use crate::files as walk;
use crate::glad::bank::{BankPrecision, FeatureBank};
use crate::glad::MapReference;
use crate::imaging;

#[derive(Debug, Clone, Args)]
pub struct BankArgs {
    /// Normal images of the class (folders are searched recursively), e.g. <class>/train/good.
    #[arg(long, required = true, num_args = 1.., value_name = "PATH")]
    pub images: Vec<PathBuf>,
    #[command(flatten)]
    pub common: CommonArgs,
    /// Output folder (default: `<bundle>/bank`, where the engine looks for it).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Keep this fraction of each layer's patches, chosen by greedy k-center (PatchCore's
    /// coreset): 0.1 makes the bank 10x smaller at a small cost in distance accuracy.
    #[arg(long, default_value_t = 1.0, value_name = "F")]
    pub coreset: f64,
    /// Storage: `f16` (bank/bank.safetensors, half the bytes; nearest-patch distances move by
    /// about 1e-3) or `f32` (bank/layer<i>.npy).
    #[arg(long, default_value = "f16", value_name = "P", value_parser = parse_precision)]
    pub precision: BankPrecision,
}

fn parse_precision(s: &str) -> Result<BankPrecision, String> {
    match s {
        "f16" => Ok(BankPrecision::F16),
        "f32" => Ok(BankPrecision::F32),
        _ => Err(format!("expected f16 or f32, got `{s}`")),
    }
}

pub fn run(args: BankArgs) -> Result<bool> {
    let settings = Settings::new(&args.common, ParamArgs::default())?;
    let bundle = settings.load_bundle()?;
    let mut params = settings.overrides(&bundle)?.resolve(bundle.manifest.models.backbone.resolution)?;
    // The bank is made from the backbone alone: the engine must not look for it yet.
    params.reference = MapReference::Reconstruction;
    let mut engine = Engine::new(bundle, params.clone())?;
    let out = args.out.clone().unwrap_or_else(|| bank_dir(&engine.bundle));
    let walk = walk::images(&args.images);
    if !walk.problems.is_empty() {
        bail!("{}", walk.messages().join("; "));
    }
    let files = walk.files;
    if files.is_empty() {
        bail!("no images found in {:?}", args.images);
    }
    let r = engine.resolution();
    let mut x = Array4::<f32>::zeros((files.len(), 3, r, r));
    for (i, p) in files.iter().enumerate() {
        x.index_axis_mut(Axis(0), i).assign(&imaging::preprocess(&imaging::load_rgb(p)?, r));
    }
    let mut models = OnnxModels::new(&mut engine.bundle);
    let bank = FeatureBank::fit(&mut models, &params, x.view(), 8)?.coreset(args.coreset)?;
    bank.save(&out, args.precision)?;
    let sizes: Vec<String> = bank.layers.iter().map(|l| format!("{}x{}", l.data.nrows(), l.data.ncols())).collect();
    println!(
        "bank of {} images written to {}: layers {}, {:.2} MB ({:?})",
        files.len(),
        out.display(),
        sizes.join(", "),
        bank.stored_bytes(args.precision) as f64 / 1e6,
        args.precision
    );
    Ok(true)
}

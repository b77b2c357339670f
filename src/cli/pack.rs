//! `glad bundle pack SRC DST` and `glad bundle verify DIR`: closed, hash-listed bundles.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::bundle::{pack, Manifest};

#[derive(Debug, Subcommand)]
pub enum BundleCommand {
    /// Write a closed copy of a bundle: files it shares with other bundles (`../effnet-lite0/…`)
    /// are copied under DST/shared/, the manifest's paths rewritten, and MANIFEST.sha256 lists
    /// the SHA-256 of every file. DST must not exist.
    Pack {
        /// The bundle folder to pack.
        src: PathBuf,
        /// The new folder.
        dst: PathBuf,
    },
    /// Check a bundle folder: every path inside it, and every file against MANIFEST.sha256.
    Verify {
        /// The bundle folder.
        dir: PathBuf,
    },
}

/// Runs a `glad bundle` command; `Ok(false)` when `verify` found a problem.
pub fn run(cmd: BundleCommand) -> Result<bool> {
    match cmd {
        BundleCommand::Pack { src, dst } => {
            let report = pack::pack(&src, &dst)?;
            for (key, old, new) in &report.rewritten {
                println!("{key}: {} -> {}", old.display(), new.display());
            }
            println!(
                "packed {} into {}: {} files, {:.1} MB, closed; hashes in {}",
                src.display(),
                dst.display(),
                report.files,
                report.bytes as f64 / 1e6,
                pack::HASH_FILE
            );
            Ok(true)
        }
        BundleCommand::Verify { dir } => {
            let m = Manifest::read(&dir)?;
            let mut ok = true;
            let outside = pack::outside_refs(&dir, &m);
            if outside.is_empty() {
                println!("closed: every file the manifest names is inside {}", dir.display());
            } else {
                ok = false;
                for o in &outside {
                    println!("outside: {} = {} is outside the bundle folder", o.key, o.path.display());
                }
            }
            match pack::verify_hashes(&dir)? {
                None => {
                    ok = false;
                    println!("no {}: not a packed bundle (glad bundle pack writes one)", pack::HASH_FILE);
                }
                Some((n, bad)) if bad.is_empty() => println!("hashes: {n} files match {}", pack::HASH_FILE),
                Some((n, bad)) => {
                    ok = false;
                    println!("hashes: {} of {n} files do not match {}: {}", bad.len(), pack::HASH_FILE, bad.join(", "));
                }
            }
            Ok(ok)
        }
    }
}

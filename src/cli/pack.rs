//! `glad bundle pack SRC DST`, `verify DIR`, `sign DIR` and `keygen OUT`: closed, hash-listed,
//! signed bundles.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::bundle::{pack, sign, Manifest};

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
    /// Check a bundle folder whole: every path the manifest names is inside it, every file is
    /// listed in MANIFEST.sha256 with its hash, and nothing else (unlisted files, symbolic links,
    /// devices) is there. With --key, also its signature.
    Verify {
        /// The bundle folder.
        dir: PathBuf,
        /// A minisign public key (repeat for several): the bundle must be signed by one of them.
        #[arg(long = "key", value_name = "PUB")]
        keys: Vec<PathBuf>,
    },
    /// Sign a closed bundle: writes MANIFEST.sha256.minisig (Ed25519, minisign's format) over
    /// its hash list. The bundle must verify whole first. An encrypted key's password is read
    /// from GLAD_SIGN_PASSWORD.
    Sign {
        /// The closed bundle folder.
        dir: PathBuf,
        /// The secret key file (from `glad bundle keygen` or `minisign -G`).
        #[arg(long, value_name = "KEY")]
        key: PathBuf,
    },
    /// Make a signing key pair: OUT.key (secret, mode 0600; encrypted when GLAD_SIGN_PASSWORD
    /// is set) and OUT.pub (for stations' `trusted_keys`). Never overwrites.
    Keygen {
        /// Path of the pair without extension.
        out: PathBuf,
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
        BundleCommand::Keygen { out } => {
            let (secret, public, id) = sign::keygen(&out)?;
            println!("key {id}: secret {} (keep it off stations), public {}", secret.display(), public.display());
            Ok(true)
        }
        BundleCommand::Sign { dir, key } => {
            let id = sign::sign(&dir, &key)?;
            println!("signed {} with key {id}: {}", dir.display(), dir.join(sign::SIG_FILE).display());
            Ok(true)
        }
        BundleCommand::Verify { dir, keys } => {
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
            match pack::verify_whole(&dir)? {
                None => {
                    ok = false;
                    println!("no {}: an open bundle, not packed (glad bundle pack writes a closed copy)", pack::HASH_FILE);
                }
                Some(v) if v.problems.is_empty() => {
                    println!("whole: {} files, {:.1} MB, match {}, nothing else present", v.listed, v.bytes as f64 / 1e6, pack::HASH_FILE)
                }
                Some(v) => {
                    ok = false;
                    for p in &v.problems {
                        println!("mismatch: {p}");
                    }
                }
            }
            if !keys.is_empty() && ok {
                match sign::verify_signature(&dir, &keys) {
                    Ok(k) => println!("signed: by the key in {}", k.display()),
                    Err(e) => {
                        ok = false;
                        println!("signature: {e:#}");
                    }
                }
            }
            Ok(ok)
        }
    }
}

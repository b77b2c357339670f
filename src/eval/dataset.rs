//! MVTec-layout datasets: `<class>/train/good`, `<class>/test/<defect>`,
//! `<class>/ground_truth/<defect>/<name>_mask.png` (VisA and PCB-Bank: `<name>.png`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

/// One test image.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub path: PathBuf,
    /// Folder name under `test/` (`good` for normal images).
    pub defect: String,
    /// true for anomalous.
    pub label: bool,
    /// Ground-truth mask; `None` for normal images and for anomalous ones whose mask is missing.
    pub mask: Option<PathBuf>,
}

/// A class's test set, plus the problems found (missing masks), which are reported, not fatal.
#[derive(Debug, Clone)]
pub struct TestSet {
    pub class: String,
    pub samples: Vec<Sample>,
    pub problems: Vec<String>,
}

/// The images directly in `dir` (the one walker), and the paths that could not be taken.
fn images_in(dir: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let w = crate::files::images_in(dir);
    let problems = w.messages();
    (w.files, problems)
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("{}: cannot list folder", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    v.sort();
    Ok(v)
}

/// The classes under `root` (folders with a `test/` folder).
pub fn classes(root: &Path) -> Result<Vec<String>> {
    let v: Vec<String> = subdirs(root)?
        .into_iter()
        .filter(|d| d.join("test").is_dir())
        .filter_map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    if v.is_empty() {
        bail!("{}: no class folders with a test/ folder (MVTec layout expected)", root.display());
    }
    Ok(v)
}

pub fn test_set(root: &Path, class: &str) -> Result<TestSet> {
    let test = root.join(class).join("test");
    if !test.is_dir() {
        bail!("{}: no such folder (expected <root>/<class>/test/<defect>/)", test.display());
    }
    let mut samples = Vec::new();
    let mut problems = Vec::new();
    for d in subdirs(&test)? {
        let defect = d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let label = defect != "good";
        let (files, unreadable) = images_in(&d);
        problems.extend(unreadable);
        for path in files {
            let mask = if label {
                let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let gt = root.join(class).join("ground_truth").join(&defect);
                let found = [format!("{stem}_mask.png"), format!("{stem}.png")].into_iter().map(|n| gt.join(n)).find(|p| p.is_file());
                if found.is_none() {
                    problems.push(format!(
                        "{}: no ground-truth mask ({}/{stem}_mask.png or {stem}.png); left out of the pixel metrics",
                        path.display(),
                        gt.display()
                    ));
                }
                found
            } else {
                None
            };
            samples.push(Sample { path, defect: defect.clone(), label, mask });
        }
    }
    if samples.is_empty() {
        bail!("{}: no test images", test.display());
    }
    Ok(TestSet { class: class.to_string(), samples, problems })
}

/// The class's normal training images.
pub fn train_good(root: &Path, class: &str) -> Result<Vec<PathBuf>> {
    let (files, problems) = images_in(&root.join(class).join("train").join("good"));
    if let Some(p) = problems.first() {
        bail!("{p}");
    }
    Ok(files)
}

//! The YAML config and presets: defaults, unknown keys and wrong types refused naming the key.

use std::path::Path;

use glad_edge::config::{preset, preset_names, Config};

fn write(dir: &Path, text: &str) -> std::path::PathBuf {
    let p = dir.join("c.yaml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn default_yaml_is_the_built_in_default() {
    let c = Config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/config/default.yaml"))).unwrap();
    assert_eq!(c, Config::default());
}

#[test]
fn unknown_key_is_refused_naming_it() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "runtime:\n  threads: 2\n  thread_count: 4\n");
    let e = format!("{:#}", Config::load(&p).unwrap_err());
    assert!(e.contains("c.yaml") && e.contains("thread_count"), "{e}");
    assert!(!e.contains('\n'), "one line: {e}");
    let p = write(d.path(), "glad:\n  taux: 0.3\n");
    let e = format!("{:#}", Config::load(&p).unwrap_err());
    assert!(e.contains("taux") && e.contains("key `glad"), "{e}");
}

#[test]
fn wrong_type_is_refused_naming_the_key() {
    let d = tempfile::tempdir().unwrap();
    let p = write(d.path(), "glad:\n  tau: high\n");
    let e = format!("{:#}", Config::load(&p).unwrap_err());
    assert!(e.contains("key `glad.tau`") && e.contains("c.yaml"), "{e}");
    let p = write(d.path(), "runtime:\n  execution:\n    provider: gpu\n");
    let e = format!("{:#}", Config::load(&p).unwrap_err());
    assert!(e.contains("runtime.execution.provider"), "{e}");
    let p = write(d.path(), "inspect:\n  batch: 0\n");
    let e = format!("{:#}", Config::load(&p).unwrap_err());
    assert!(e.contains("inspect.batch"), "{e}");
}

#[test]
fn presets_carry_the_reference_values() {
    let names = preset_names();
    assert_eq!(names.len(), 15 + 6 + 12 + 7, "{names:?}");
    for n in &names {
        preset(n).unwrap();
    }
    let carpet = preset("mvtec/carpet").unwrap().resolve(512).unwrap();
    assert_eq!((carpet.denoise_step, carpet.noise_step, carpet.steps, carpet.min_step), (750, 750, 25, 350));
    assert_eq!((carpet.tau, carpet.v, carpet.symmetric), (0.32, 0.0, false));
    let t = preset("mvtec/transistor").unwrap().resolve(512).unwrap();
    assert_eq!((t.denoise_step, t.tau, t.symmetric), (850, 0.5, true));
    let p = preset("visa/pcb4").unwrap().resolve(256).unwrap();
    assert_eq!((p.denoise_step, p.noise_step, p.steps, p.min_step, p.v, p.symmetric), (450, 449, 15, 200, 2.0, true));
    assert_eq!(p.backbone_resolution, 256);
    let w = preset("mpdd/bracket_white").unwrap().resolve(512).unwrap();
    assert_eq!((w.denoise_step, w.min_step, w.object_mask), (450, 200, glad_edge::glad::maps::ObjectMask::Bright));
    let e = format!("{:#}", preset("mvtec/carpett").unwrap_err());
    assert!(e.contains("unknown class `carpett`"), "{e}");
}

//! Locating and loading the ONNX Runtime shared library (ort's `load-dynamic`).
//!
//! The path comes from, in order: the config (`runtime.library`), the `ORT_DYLIB_PATH`
//! environment variable, the folders of [`EXE_RELATIVE_DIRS`] relative to the running
//! executable (where the Debian package and `scripts/install-service.sh` put the library), and
//! the project default baked in at compile time from `.cargo/config.toml`
//! (`.ort/libonnxruntime.so.1.31.1`, filled by `scripts/fetch-ort.sh`).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{bail, Result};

/// Oldest ONNX Runtime this build works with (ort's `api-31`).
pub const MIN_VERSION: &str = "1.31";

/// Where the library path came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LibrarySource {
    Config,
    Environment,
    BesideExecutable,
    BuildDefault,
}

/// Folders searched for the library, relative to the folder of the running executable, after
/// `runtime.library` and `ORT_DYLIB_PATH` and before the build default: the private library
/// folder of an installed glad (`/usr/bin/glad` → `/usr/lib/glad-edge/`, the Debian package;
/// `/usr/local/bin/glad` → `/usr/local/lib/glad-edge/`, scripts/install-service.sh), then the
/// executable's own folder. In each, `libonnxruntime.so` wins, else the highest-named
/// `libonnxruntime.so.<version>`.
pub const EXE_RELATIVE_DIRS: &[&str] = &["../lib/glad-edge", "."];

impl std::fmt::Display for LibrarySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LibrarySource::Config => "runtime.library in the config",
            LibrarySource::Environment => "ORT_DYLIB_PATH",
            LibrarySource::BesideExecutable => "the library folder next to the executable (../lib/glad-edge)",
            LibrarySource::BuildDefault => "the build default (run scripts/fetch-ort.sh)",
        })
    }
}

/// Resolves which library file to load.
pub fn resolve_library(configured: Option<&Path>) -> Result<(PathBuf, LibrarySource)> {
    if let Some(p) = configured {
        return Ok((p.to_path_buf(), LibrarySource::Config));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok((PathBuf::from(p), LibrarySource::Environment));
    }
    if let Some(p) = std::env::current_exe().ok().and_then(|exe| find_beside(&exe)) {
        return Ok((p, LibrarySource::BesideExecutable));
    }
    match option_env!("ORT_DYLIB_PATH") {
        Some(p) => Ok((PathBuf::from(p), LibrarySource::BuildDefault)),
        None => bail!(
            "no ONNX Runtime library configured: set runtime.library in the config or ORT_DYLIB_PATH \
             (ONNX Runtime >= {MIN_VERSION} needed; scripts/fetch-ort.sh downloads one)"
        ),
    }
}

/// The library in the [`EXE_RELATIVE_DIRS`] of `exe`, if one is there.
pub fn find_beside(exe: &Path) -> Option<PathBuf> {
    let exe = exe.canonicalize().unwrap_or_else(|_| exe.to_path_buf());
    let base = exe.parent()?;
    EXE_RELATIVE_DIRS.iter().filter_map(|d| base.join(d).canonicalize().ok()).find_map(|d| find_in(&d))
}

fn find_in(dir: &Path) -> Option<PathBuf> {
    let plain = dir.join("libonnxruntime.so");
    if plain.is_file() {
        return Some(plain);
    }
    let mut versioned: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("libonnxruntime.so.")))
        .collect();
    versioned.sort();
    versioned.pop()
}

struct Loaded {
    env: ort::environment::Environment,
    path: PathBuf,
    version: String,
}

static ENV: OnceLock<Loaded> = OnceLock::new();
static INIT: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The process-wide ONNX Runtime environment, created on first use.
///
/// ONNX Runtime allows one environment per process, so later calls return the first one
/// whatever they ask for; `intra_threads` sizes the thread pool shared by every session
/// (spinning off: a station shares its cores with camera capture and I/O).
pub fn environment(configured: Option<&Path>, intra_threads: usize) -> Result<&'static ort::environment::Environment> {
    if let Some(l) = ENV.get() {
        return Ok(&l.env);
    }
    let _guard = INIT.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = ENV.get() {
        return Ok(&l.env);
    }
    let (path, source) = resolve_library(configured)?;
    if !path.exists() {
        bail!("ONNX Runtime library {} (from {source}) does not exist; glad needs ONNX Runtime >= {MIN_VERSION}", path.display());
    }
    // ONNX Runtime starts its telemetry (a device id and an event database under
    // $HOME/.cache/Microsoft, HTTPS uploads) when the library loads, before the environment's
    // telemetry switch below is read; only this variable stops it. Set once, under the lock,
    // before any ONNX Runtime code runs.
    if std::env::var_os("ORT_DISABLE_TELEMETRY").is_none() {
        std::env::set_var("ORT_DISABLE_TELEMETRY", "1");
    }
    let builder = ort::init_from(&path).map_err(|e| {
        // libloading displays only "dlopen failed"; dlerror()'s text is in its Debug form.
        let debug = format!("{e:?}");
        let reason = match debug.split_once("source: \"").and_then(|(_, rest)| rest.split_once('"')) {
            Some((desc, _)) => desc.to_string(),
            None => e.to_string(),
        };
        anyhow::anyhow!(
            "cannot load ONNX Runtime library {} (from {source}): {reason}; glad needs ONNX Runtime >= {MIN_VERSION}",
            path.display()
        )
    })?;
    let pool = ort::environment::GlobalThreadPoolOptions::default()
        .with_intra_threads(intra_threads.max(1))
        .and_then(|p| p.with_inter_threads(1))
        .and_then(|p| p.with_spin_control(false))
        .map_err(super::ort_err)?;
    // Telemetry off: a station must not try to reach anyone, and ORT would otherwise write a
    // device id under $HOME/.cache/Microsoft and warn about a missing CA bundle on every start.
    let env = builder.with_name("glad-edge").with_telemetry(false).with_global_thread_pool(pool).build().map_err(super::ort_err)?;
    let version = version_of(&path).unwrap_or_else(|e| format!("unknown ({e})"));
    tracing::info!(library = %path.display(), %version, "ONNX Runtime loaded");
    let _ = ENV.set(Loaded { env, path, version });
    Ok(&ENV.get().expect("just set").env)
}

/// The loaded library's path, once `environment` has succeeded.
pub fn library_path() -> Option<&'static Path> {
    ENV.get().map(|l| l.path.as_path())
}

/// ONNX Runtime's version as the loaded library reports it (`1.31.1`).
pub fn library_version() -> String {
    ENV.get().map_or_else(|| "not loaded".into(), |l| l.version.clone())
}

/// Asks the library itself (`OrtGetApiBase()->GetVersionString()`); ort only logs it.
fn version_of(path: &Path) -> Result<String> {
    // SAFETY: the library is already loaded by ort (this only bumps its reference count);
    // OrtGetApiBase and GetVersionString have no preconditions and return static data.
    unsafe {
        let lib = libloading::Library::new(path)?;
        let get: libloading::Symbol<unsafe extern "C" fn() -> *const ort::sys::OrtApiBase> = lib.get(b"OrtGetApiBase")?;
        let base = get();
        anyhow::ensure!(!base.is_null(), "OrtGetApiBase returned null");
        let v = ((*base).GetVersionString)();
        Ok(std::ffi::CStr::from_ptr(v).to_string_lossy().into_owned())
    }
}

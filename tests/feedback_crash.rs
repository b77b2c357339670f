//! The feedback overlay's state survives a crash at every write step: a child process is
//! killed (abort) at each step of a teach, an eviction and an undo, and the next start must
//! find a consistent state (every entry's folder there, nothing unnamed left, either the old
//! or the new set of entries) and work. Also: a torn index and a missing folder never stop a
//! start, a repeat teach changes nothing, a lower budget is enforced at start, and eviction
//! only takes entries that count against the budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use glad_edge::glad::bank::FeatureBank;
use glad_edge::glad::features::Tokens;
use glad_edge::station::feedback::{Added, BankSlot, CameraFeedback, Overlays};
use glad_edge::telemetry::feedback::FrameId;
use ndarray::Array2;

const CHANNELS: [usize; 2] = [4, 6];

fn tokens(n: usize, seed: u64) -> Vec<Array2<f32>> {
    CHANNELS
        .iter()
        .map(|&c| {
            let mut a = Array2::from_shape_fn((n, c), |(i, j)| (((i * 31 + j * 7) as u64 + seed * 13) % 17) as f32 + 1.0);
            for mut row in a.rows_mut() {
                let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt();
                row.mapv_inplace(|v| v / norm);
            }
            a
        })
        .collect()
}

fn cams(hash: &str) -> BTreeMap<String, CameraFeedback> {
    let base = FeatureBank { layers: tokens(8, 99).into_iter().map(|d| Tokens { grid: (1, d.nrows()), data: d }).collect() };
    let (jobs, _) = crossbeam_channel::bounded(1);
    let (wake, _) = crossbeam_channel::bounded(1);
    let c = CameraFeedback {
        base: Some(Arc::new(base)),
        bundle_hash: hash.into(),
        slot: Arc::new(BankSlot::default()),
        engine: "e".into(),
        jobs,
        wake,
    };
    BTreeMap::from([("cam0".to_string(), c)])
}

fn frame(seq: u64) -> FrameId {
    FrameId { camera: "cam0".into(), run_id: "run".into(), seq }
}

/// (entry versions, versions named by folders) of a state folder, after a start.
fn reopen(state: &Path, budget: usize) -> (Vec<u64>, Vec<u64>, Overlays) {
    let o = Overlays::open(state, budget, &cams("h")).unwrap();
    let versions: Vec<u64> = o.entries().iter().map(|e| e.version).collect();
    let mut folders: Vec<u64> = std::fs::read_dir(state.join("overlay"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().parse::<u64>().expect("only entry folders are left"))
        .collect();
    folders.sort();
    (versions, folders, o)
}

/// The child side: runs one operation on the state folder named in CRASH_DIR (the parent
/// sets GLAD_CRASH_AT, so it dies at that step). A no-op in a normal test run.
#[test]
fn crash_child() {
    let Ok(dir) = std::env::var("CRASH_DIR") else { return };
    let op = std::env::var("CRASH_OP").unwrap();
    let mut o = Overlays::open(Path::new(&dir), 20, &cams("h")).unwrap();
    match op.as_str() {
        "teach" => drop(o.add("cam0", &frame(10), "h", tokens(4, 10)).unwrap()),
        "evict" => drop(o.add("cam0", &frame(11), "h", tokens(16, 11)).unwrap()),
        "undo" => drop(o.undo(1).unwrap()),
        _ => panic!("unknown op {op}"),
    }
}

/// A state folder with two entries of 4 patches each (versions 1 and 2), budget 20.
fn seeded(dir: &Path) -> PathBuf {
    let state = dir.join("state");
    let mut o = Overlays::open(&state, 20, &cams("h")).unwrap();
    assert!(matches!(o.add("cam0", &frame(1), "h", tokens(4, 1)).unwrap(), Added::New { version: 1, .. }));
    assert!(matches!(o.add("cam0", &frame(2), "h", tokens(4, 2)).unwrap(), Added::New { version: 2, .. }));
    state
}

#[test]
fn a_crash_at_every_write_step_leaves_a_state_that_starts() {
    /// (operation, steps, acceptable entry sets after the restart)
    type Case<'a> = (&'a str, &'a [&'a str], &'a [&'a [u64]]);
    let cases: &[Case] = &[
        // (operation, steps, acceptable entry sets after the restart)
        (
            "teach",
            &["overlay-folder-written", "overlay-folder-renamed", "overlay-index-write", "overlay-index-written"],
            &[&[1, 2], &[1, 2, 3]],
        ),
        // 16 new patches + 8 kept > 20: the oldest entry (4 patches) goes.
        (
            "evict",
            &["overlay-folder-written", "overlay-folder-renamed", "overlay-index-write", "overlay-index-written", "overlay-delete"],
            &[&[1, 2], &[2, 3]],
        ),
        ("undo", &["overlay-index-write", "overlay-index-written", "overlay-delete"], &[&[1, 2], &[2]]),
    ];
    for (op, steps, allowed) in cases {
        for step in *steps {
            let tmp = tempfile::tempdir().unwrap();
            let state = seeded(tmp.path());
            let out = Command::new(std::env::current_exe().unwrap())
                .args(["--exact", "crash_child", "--nocapture", "--test-threads", "1"])
                .env("CRASH_DIR", &state)
                .env("CRASH_OP", op)
                .env("GLAD_CRASH_AT", step)
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                !out.status.success() && err.contains(&format!("aborting at {step}")),
                "{op} at {step}: the child did not die there: {err}"
            );
            let (versions, folders, mut o) = reopen(&state, 20);
            assert!(allowed.contains(&versions.as_slice()), "{op} at {step}: entries {versions:?}");
            assert_eq!(versions, folders, "{op} at {step}: folders and index disagree");
            // The state works: a new teach is taken and survives another start.
            let Added::New { version, .. } = o.add("cam0", &frame(50), "h", tokens(2, 50)).unwrap() else { panic!() };
            let (again, folders, _) = reopen(&state, 20);
            assert!(again.contains(&version) && again == folders, "{op} at {step}: {again:?} {folders:?}");
        }
    }
}

#[test]
fn a_torn_index_or_a_missing_folder_never_stops_a_start() {
    let tmp = tempfile::tempdir().unwrap();
    let state = seeded(tmp.path());
    // A missing folder: the entry is dropped, the other kept.
    std::fs::remove_dir_all(state.join("overlay/1")).unwrap();
    let (versions, folders, _) = reopen(&state, 20);
    assert_eq!((versions, folders), (vec![2], vec![2]));
    let index = std::fs::read_to_string(state.join("overlay/index.json")).unwrap();
    assert!(!index.contains("\"version\": 1,"), "the dropped entry is gone from disk too: {index}");
    // A torn index: set aside, the start goes on with no overlay.
    std::fs::write(state.join("overlay/index.json"), b"{\"version\": 3, \"entr").unwrap();
    let (versions, folders, _) = reopen(&state, 20);
    assert!(versions.is_empty() && folders.is_empty(), "{versions:?} {folders:?}");
    let aside: Vec<_> = std::fs::read_dir(state.join("overlay"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("index.json.torn-"))
        .collect();
    assert_eq!(aside.len(), 1);
}

#[test]
fn repeats_budget_at_start_and_eviction_of_counted_entries_only() {
    let tmp = tempfile::tempdir().unwrap();
    let state = seeded(tmp.path());
    // The same frame again: its entry, nothing new.
    let mut o = Overlays::open(&state, 20, &cams("h")).unwrap();
    assert_eq!(o.add("cam0", &frame(1), "h", tokens(4, 1)).unwrap(), Added::Repeat { version: 1 });
    assert_eq!(o.entries().len(), 2);
    drop(o);
    // A lower budget at start: the oldest applied entry goes.
    let (versions, folders, _) = reopen(&state, 5);
    assert_eq!((versions, folders), (vec![2], vec![2]));
    // An entry of another bundle is kept but does not count, and is never evicted for it.
    let mut other = Overlays::open(&state, 20, &cams("other-bundle")).unwrap();
    assert_eq!(other.patches("cam0"), 0);
    let Added::New { version, evicted } = other.add("cam0", &frame(5), "other-bundle", tokens(18, 5)).unwrap() else { panic!() };
    assert!(evicted.is_empty(), "{evicted:?}");
    let Added::New { evicted, .. } = other.add("cam0", &frame(6), "other-bundle", tokens(4, 6)).unwrap() else { panic!() };
    assert_eq!(evicted, vec![version], "only the applied entry goes");
    assert!(other.entries().iter().any(|e| e.version == 2), "the other bundle's entry stays");
}

//! The layering rule of ARCHITECTURE.md: a module imports only from its own layer or the
//! layers below, and modules of one layer import each other without cycles. Read from the
//! source: every `crate::<module>` path in src/ (comments excluded).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, lowest first (ARCHITECTURE.md).
const LAYERS: &[&[&str]] = &[
    &["glad", "runtime", "imaging", "yaml", "files", "asyncrt", "logging"],
    &["bundle", "config"],
    &["engine"],
    &["record", "telemetry", "sources", "pipeline", "train", "eval"],
    &["sinks"],
    &["station"],
    &["service"],
    &["cli", "bin", "lib"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file of src/ belongs to.
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file names through `crate::` (also inside `use crate::{a, b}`).
fn imports(text: &str) -> BTreeSet<String> {
    let code: String = text
        .lines()
        .map(|l| match l.find("//") {
            Some(i) if !l[..i].contains('"') => &l[..i],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut out = BTreeSet::new();
    let ident = |s: &str| s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            // Only the first level of a group: `crate::{a::b, c}` names a and c.
            let mut depth = 0;
            let mut item = String::new();
            for ch in group[..end].chars() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.insert(ident(item.trim()));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(ch);
            }
            out.insert(ident(item.trim()));
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty() && m != "self");
    out
}

#[test]
fn imports_only_go_down_and_have_no_cycles() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut bad = Vec::new();
    for f in &files {
        let from = module_of(&src, f);
        let Some(lf) = layer(&from) else {
            bad.push(format!(
                "{}: module `{from}` has no layer in ARCHITECTURE.md (add it to the table and to tests/layers.rs)",
                f.display()
            ));
            continue;
        };
        for to in imports(&std::fs::read_to_string(f).unwrap()) {
            if to == from {
                continue;
            }
            match layer(&to) {
                None => bad.push(format!("{}: imports `crate::{to}`, which has no layer", f.display())),
                Some(lt) if lt > lf => {
                    bad.push(format!("{}: `{from}` (layer {lf}) imports `crate::{to}` (layer {lt}): imports only go down", f.display()))
                }
                Some(_) => {
                    edges.entry(from.clone()).or_default().insert(to);
                }
            }
        }
    }
    // Cycles among modules of one layer.
    fn reaches(edges: &BTreeMap<String, BTreeSet<String>>, from: &str, to: &str, seen: &mut BTreeSet<String>) -> bool {
        if from == to {
            return true;
        }
        if !seen.insert(from.to_string()) {
            return false;
        }
        edges.get(from).is_some_and(|next| next.iter().any(|n| reaches(edges, n, to, seen)))
    }
    for (from, tos) in &edges {
        for to in tos {
            if reaches(&edges, to, from, &mut BTreeSet::new()) {
                bad.push(format!("import cycle: `{from}` imports `{to}`, which leads back to `{from}`"));
            }
        }
    }
    assert!(bad.is_empty(), "layering violations:\n{}", bad.join("\n"));
}

#[test]
fn the_parser_sees_grouped_and_nested_paths() {
    let got = imports("use crate::{a::b, c::{d, e}};\nlet x = crate::f::g(); // crate::h\n");
    assert_eq!(got, ["a", "c", "f"].iter().map(|s| s.to_string()).collect());
}

#[test]
fn the_glad_core_imports_nothing_else_of_the_crate() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/glad");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    for f in files {
        let other: Vec<String> = imports(&std::fs::read_to_string(&f).unwrap()).into_iter().filter(|m| m != "glad").collect();
        assert!(other.is_empty(), "{}: the GLAD core imports {other:?}", f.display());
    }
}

//! The core's modules form layers; a module may use only modules of its own layer or
//! below (see the comment at the top of `lib.rs` and README's architecture section).
//! This test reads every file under `core/src` and checks each `crate::<module>` path
//! it contains (in `use` lines and inline paths alike).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Top-level module -> layer.
const LAYERS: &[(&str, u8)] = &[
    ("error", 0),
    ("util", 0),
    ("types", 0),
    ("plot", 0),
    ("catalog", 1),
    ("events", 1),
    ("models", 1),
    ("diffusion", 1),
    ("tokenizer", 1),
    ("store", 1),
    ("tabular", 1),
    ("notify", 1),
    ("gguf", 1),
    ("tokens", 1),
    ("data", 2),
    ("registry", 2),
    ("training", 2),
    ("generation", 2),
    ("images", 2),
    ("continual", 2),
    ("home", 3),
];

/// Modules that may use only layer 0, although they sit in layer 1: the catalog maps
/// types to rows and knows nothing of tensors.
const ONLY_L0: &[&str] = &["catalog"];

fn layer(module: &str) -> Option<u8> {
    LAYERS.iter().find(|(m, _)| *m == module).map(|(_, l)| *l)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `crate::x` paths in `text`, with the module names of `use crate::{a, b::c}` groups.
fn crate_paths(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // `$crate::`, `some_crate::`
        }
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level items of the group only: `{error::Error, types::{A, B}}`.
            let (mut depth, mut items, mut item) = (0usize, Vec::new(), String::new());
            for c in group.chars() {
                match c {
                    '}' if depth == 0 => break,
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => items.push(std::mem::take(&mut item)),
                    c => item.push(c),
                }
            }
            items.push(item);
            for item in items {
                let name: String = item.trim().chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if !name.is_empty() {
                    found.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            found.push(name);
        }
    }
    found
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(files.len() > 20, "read {} files", files.len());
    let mut violations = BTreeMap::new();
    let mut unknown = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel.components().next().unwrap().as_os_str().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue; // re-exports only
        }
        let Some(own) = layer(&top) else {
            unknown.push(top);
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for used in crate_paths(&text) {
            // Items re-exported at the root (`crate::Result`, ...) are not modules.
            let Some(theirs) = layer(&used) else { continue };
            let only_l0 = ONLY_L0.contains(&top.as_str()) && used != top;
            if theirs > own || (only_l0 && theirs > 0) {
                violations.entry(rel.display().to_string()).or_insert_with(Vec::new).push(used);
            }
        }
    }
    assert!(unknown.is_empty(), "modules without a layer (add them to LAYERS and lib.rs): {unknown:?}");
    assert!(violations.is_empty(), "modules using a layer above their own: {violations:#?}");
}

#[test]
fn the_types_layer_knows_no_tensors_and_no_sql() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = vec![src.join("types.rs")];
    rust_files(&src.join("types"), &mut files);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for dep in ["candle_core", "candle_nn", "rusqlite", "tokenizers"] {
            assert!(!text.contains(dep), "{} uses {dep}", f.display());
        }
    }
}

#[test]
fn the_plot_module_uses_no_crate_but_image() {
    // Every dependency of the core, as Rust spells it, but `image`.
    let manifest = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")).unwrap();
    let deps: Vec<String> = manifest
        .lines()
        .skip_while(|l| l.trim() != "[dependencies]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter_map(|l| l.split_once('=').map(|(name, _)| name.trim().replace('-', "_")))
        .filter(|name| !name.is_empty() && name != "image")
        .collect();
    assert!(deps.iter().any(|d| d == "candle_core") && deps.iter().any(|d| d == "serde"), "{deps:?}");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/plot.rs")).unwrap();
    for dep in deps {
        // A path that starts with the crate (`png::x`, not `codecs::png::x`).
        let used = text.match_indices(&format!("{dep}::")).any(|(i, _)| {
            !text[..i].ends_with("::") && !text[..i].chars().last().is_some_and(|c| c.is_alphanumeric() || c == '_')
        });
        assert!(!used, "plot.rs uses {dep}: only `image` is allowed there");
    }
}

#[test]
fn the_checker_sees_every_form_of_path() {
    let text = "use crate::models::Model;\nuse crate::{error::Error, types::{A, B}};\nlet x = crate::home::Home::open(p);\n$crate::types::names::unknown";
    assert_eq!(crate_paths(text), ["models", "error", "types", "home"]);
}

#![allow(dead_code, clippy::unwrap_used)]
//! Shared helpers for the end-to-end tests.

use std::path::{Path, PathBuf};

pub fn fixtures() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures"))
}

pub fn write(dir: &Path, name: &str, content: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// Entries of `<home>/datasets` (sorted).
pub fn dataset_dirs(home: &anneal::Home) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.root().join("datasets"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

/// Entries of `<home>/models` (sorted).
pub fn model_dirs(home: &anneal::Home) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(home.root().join("models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    v.sort();
    v
}

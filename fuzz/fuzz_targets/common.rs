//! Shared by the fuzz targets: one home per process, typed-error checks.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

pub struct Env {
    _dir: tempfile::TempDir,
    pub home: anneal::Home,
    /// Scratch space for inputs (next to the home).
    pub work: PathBuf,
}

pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let home = anneal::Home::open(dir.path().join("home")).expect("home");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&work).expect("work dir");
        Env { _dir: dir, home, work }
    })
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// A name no other input uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!("{prefix}{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// A refusal must be one of `codes` (never `internal`, never a panic).
pub fn typed(e: &anneal::Error, codes: &[&str]) {
    assert!(codes.contains(&e.code()), "unexpected {} error: {e}", e.code());
}

/// The catalog rows a refused call must not change.
pub fn rows(h: &anneal::Home) -> (usize, usize) {
    let ds = h.datasets().list().expect("list datasets").len();
    let models = h.models().list(&Default::default()).expect("list models").len();
    (ds, models)
}

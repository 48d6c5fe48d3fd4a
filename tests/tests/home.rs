#![allow(clippy::unwrap_used)]
//! Home: creation, migration, refusal of newer schemas, and two real processes
//! reading and writing one home at once.

use std::process::Command;

use anneal::{Home, ImportOptions, ModelFilter, PresetOptions};

#[test]
fn open_creates_layout_and_reopens() {
    let d = tempfile::tempdir().unwrap();
    let h = Home::open(d.path().join("h")).unwrap();
    for sub in ["anneal.db", "datasets", "models", "jobs"] {
        assert!(h.root().join(sub).exists(), "{sub}");
    }
    assert_eq!(h.schema_version().unwrap(), Home::supported_schema_version());
    drop(h);
    let h = Home::open(d.path().join("h")).unwrap();
    assert_eq!(h.schema_version().unwrap(), Home::supported_schema_version());
    let f = d.path().join("file");
    std::fs::write(&f, "x").unwrap();
    assert_eq!(Home::open(&f).unwrap_err().code(), "invalid_config");
}

#[test]
fn newer_schema_is_refused_untouched() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("h");
    drop(Home::open(&p).unwrap());
    let conn = rusqlite_like_set_version(&p.join("anneal.db"), 99);
    assert!(conn);
    let before = std::fs::read(p.join("anneal.db")).unwrap();
    let e = Home::open(&p).unwrap_err();
    assert_eq!(e.code(), "incompatible_home");
    assert!(e.to_string().contains("99"), "{e}");
    assert_eq!(std::fs::read(p.join("anneal.db")).unwrap(), before);
}

/// Sets `PRAGMA user_version` with the sqlite3 CLI if present, else python3's sqlite3.
fn rusqlite_like_set_version(db: &std::path::Path, v: i64) -> bool {
    let py = format!(
        "import sqlite3; c = sqlite3.connect({:?}); c.execute('PRAGMA user_version = {v}'); c.commit(); c.close()",
        db.display().to_string()
    );
    Command::new("python3").arg("-c").arg(py).status().map(|s| s.success()).unwrap_or(false)
}

const CHILD_ENV: &str = "ANNEAL_TEST_CHILD_HOME";
const N: usize = 15;

/// The child half of `two_processes_share_a_home` (does nothing unless spawned by it).
#[test]
fn child_worker() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let h = Home::open(&dir).unwrap();
    run_writer(&h, "child");
}

fn run_writer(h: &Home, who: &str) {
    let tmp = tempfile::tempdir().unwrap();
    for i in 0..N {
        let p = tmp.path().join(format!("{who}-{i}.jsonl"));
        std::fs::write(&p, format!("{{\"text\": \"{who} {i}\"}}\n")).unwrap();
        h.datasets().import_file(&p, &ImportOptions::default()).unwrap();
        // Versions of one shared name are handed out without collisions.
        h.models()
            .create_preset("nano", &PresetOptions { name: Some("shared".into()), seed: i as u64, ..Default::default() })
            .unwrap();
        // Reads interleave with the other process's writes.
        assert!(!h.datasets().list().unwrap().is_empty());
    }
}

#[test]
fn two_processes_share_a_home() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("h");
    let h = Home::open(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args(["--exact", "home::child_worker", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &dir)
        .spawn()
        .unwrap();
    run_writer(&h, "parent");
    assert!(child.wait().unwrap().success(), "child process failed");
    let names: Vec<String> = h.datasets().list().unwrap().into_iter().map(|d| d.name).collect();
    assert_eq!(names.len(), 2 * N);
    for who in ["parent", "child"] {
        for i in 0..N {
            assert!(names.contains(&format!("{who}-{i}")), "{who}-{i} missing");
        }
    }
    let mut versions: Vec<u32> = h
        .models()
        .list(&ModelFilter { name: Some("shared".into()), ..Default::default() })
        .unwrap()
        .into_iter()
        .map(|m| m.version)
        .collect();
    versions.sort();
    assert_eq!(versions, (1..=2 * N as u32).collect::<Vec<_>>());
}

#![allow(clippy::unwrap_used)]
//! A process killed (SIGKILL) in the middle of an import leaves the home consistent:
//! no catalog row, nothing visible, only a `.tmp-*` staging directory that a later open
//! sweeps once it is old.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use anneal::{Home, ImportOptions};

const CHILD_ENV: &str = "ANNEAL_TEST_KILL_HOME";

#[test]
fn kill_child_importer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let file = std::env::var("ANNEAL_TEST_KILL_FILE").unwrap();
    let h = Home::open(&dir).unwrap();
    // Runs until killed (the file is large); finishing would fail the parent's check.
    h.datasets().import_file(&file, &ImportOptions::default()).unwrap();
}

#[test]
fn sigkill_during_import_leaves_home_consistent() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path().join("h");
    let h = Home::open(&dir).unwrap();
    let big = d.path().join("big.jsonl");
    {
        use std::io::Write;
        let mut w = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        for i in 0..1_500_000 {
            writeln!(w, "{{\"prompt\": \"question number {i}\", \"completion\": \"answer {i}\"}}").unwrap();
        }
    }
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "kill_child_importer", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, &dir)
        .env("ANNEAL_TEST_KILL_FILE", &big)
        .spawn()
        .unwrap();
    // Wait until the child is writing its staging directory, then kill it.
    let t = Instant::now();
    loop {
        let staging = common::dataset_dirs(&h).iter().any(|n| n.starts_with(".tmp-"));
        if staging {
            std::thread::sleep(Duration::from_millis(50));
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "child never started importing");
        if let Some(status) = child.try_wait().unwrap() {
            panic!("child exited before it could be killed: {status}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "child finished the import before the kill");

    let h2 = Home::open(&dir).unwrap();
    assert!(h2.datasets().list().unwrap().is_empty());
    let left = common::dataset_dirs(&h2);
    assert!(left.iter().all(|n| n.starts_with(".tmp-")), "visible leftovers: {left:?}");
    // The same import then succeeds.
    let rec = h2.datasets().import_file(&big, &ImportOptions::default()).unwrap();
    assert_eq!(rec.num_records, 1_500_000);
}

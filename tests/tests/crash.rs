#![allow(clippy::unwrap_used)]
//! A process killed in the middle of a write leaves the home consistent. An import
//! killed (SIGKILL) leaves no catalog row, nothing visible, only a `.tmp-*` staging
//! directory that a later open sweeps once it is old. A training run killed (failpoint
//! `abort`) just before or just after the transaction that registers its model and
//! completes its job leaves either nothing registered (resume trains and registers once)
//! or a completed job with its model (resume refuses): never two models.

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use anneal::{
    CancelToken, Home, ImportOptions, JobId, JobStatus, Method, ModelFilter, ModelKind, RecordingSink, TrainSpec,
};

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
        .args(["--exact", "crash::kill_child_importer", "--nocapture", "--test-threads", "1"])
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

const REG_HOME: &str = "ANNEAL_TEST_REG_HOME";
const REG_JOB: &str = "ANNEAL_TEST_REG_JOB";

/// A home with the `nano` preset, a tiny text dataset and a pending 4-step full
/// fine-tune (a checkpoint at step 2).
fn training_home(dir: &std::path::Path) -> (Home, JobId) {
    let home = Home::open(dir).unwrap();
    let base = home.models().create_preset("nano", &Default::default()).unwrap();
    let records = (0..16).map(|i| Ok(serde_json::json!({"text": format!("the cat sat on mat {i}")})));
    home.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
    let spec = TrainSpec {
        base: base.id.into(),
        dataset: "toy".into(),
        method: Method::Full,
        batch_size: 4,
        seq_len: 32,
        max_steps: Some(4),
        checkpoint_every: Some(2),
        ..Default::default()
    };
    let job = home.training().create_job(&spec).unwrap();
    (home, job.id)
}

fn trained(home: &Home) -> Vec<anneal::ModelRecord> {
    home.models().list(&ModelFilter { kind: Some(ModelKind::Full), ..Default::default() }).unwrap()
}

#[test]
fn kill_child_registrar() {
    let Ok(dir) = std::env::var(REG_HOME) else { return };
    let job = JobId(std::env::var(REG_JOB).unwrap());
    let home = Home::open(dir).unwrap();
    // The failpoint aborts the process; returning would fail the parent's check.
    let r = home.training().run(&job, &mut RecordingSink::new(), &CancelToken::new());
    println!("child was not killed: {r:?}");
}

/// Runs the job in a child process armed with `failpoint=abort`; it must die there.
fn run_killed_at(home: &Home, job: &JobId, failpoint: &str) {
    // No core file for the abort (`ulimit -c 0`), the test binary exec'd by the shell.
    let out = Command::new("sh")
        .args(["-c", "ulimit -c 0; exec \"$0\" \"$@\""])
        .arg(std::env::current_exe().unwrap())
        .args(["--exact", "crash::kill_child_registrar", "--nocapture", "--test-threads", "1"])
        .env(REG_HOME, home.root())
        .env(REG_JOB, &job.0)
        .env("ANNEAL_FAILPOINTS", format!("{failpoint}=abort"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success() && !stdout.contains("child was not killed"), "{}: {stdout}", out.status);
}

#[cfg(unix)]
#[test]
fn killed_before_the_registration_commits_resume_registers_once() {
    let d = tempfile::tempdir().unwrap();
    let (home, job) = training_home(&d.path().join("h"));
    run_killed_at(&home, &job, "register.before_commit");
    // Nothing was committed: no model, and the job of the dead runner is interrupted.
    assert!(trained(&home).is_empty());
    let rec = home.training().job(&job).unwrap();
    assert_eq!((rec.status, rec.output_model_id.as_ref()), (JobStatus::Interrupted, None));
    let report = home.training().resume(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(report.steps, 4);
    let models = trained(&home);
    assert_eq!(models.iter().map(|m| &m.id).collect::<Vec<_>>(), [&report.model], "exactly one model");
    let rec = home.training().job(&job).unwrap();
    assert_eq!((rec.status, rec.output_model_id.as_ref()), (JobStatus::Completed, Some(&report.model)));
    // The same after reopening (and sweeping) the home.
    let again = Home::open(home.root()).unwrap();
    assert_eq!(trained(&again).len(), 1);
    assert_eq!(again.training().job(&job).unwrap().output_model_id.as_ref(), Some(&report.model));
}

#[cfg(unix)]
#[test]
fn killed_after_the_registration_commits_the_job_is_complete_with_its_model() {
    let d = tempfile::tempdir().unwrap();
    let (home, job) = training_home(&d.path().join("h"));
    run_killed_at(&home, &job, "register.after_commit");
    let models = trained(&home);
    assert_eq!(models.len(), 1, "registered once");
    let rec = home.training().job(&job).unwrap();
    assert_eq!((rec.status, rec.output_model_id.as_ref()), (JobStatus::Completed, Some(&models[0].id)));
    assert_eq!(models[0].lineage.job.as_ref(), Some(&job));
    // Nothing to resume: the job is done, and no second model appears.
    let e = home.training().resume(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap_err();
    assert_eq!(e.code(), "in_use", "{e}");
    let e = home.training().run(&job, &mut RecordingSink::new(), &CancelToken::new()).unwrap_err();
    assert_eq!(e.code(), "in_use", "{e}");
    let again = Home::open(home.root()).unwrap();
    assert_eq!(trained(&again).iter().map(|m| &m.id).collect::<Vec<_>>(), [&models[0].id]);
    let rec = again.training().job(&job).unwrap();
    assert_eq!((rec.status, rec.output_model_id.as_ref()), (JobStatus::Completed, Some(&models[0].id)));
}

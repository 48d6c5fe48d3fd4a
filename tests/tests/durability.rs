#![allow(clippy::unwrap_used)]
//! A full disk while training: a checkpoint or the final model that cannot be written
//! fails the job with an `io` error naming the file (never `compute`), recorded in the
//! catalog, and the job resumes once there is room. A catalog that cannot record how a
//! run ended (full disk under it) is retried, then the end is kept in
//! `jobs/<id>/failure.json` and recorded by the next open of the home.
//!
//! Faults are injected in a child process (this test binary re-executed) armed with
//! `ANNEAL_FAILPOINTS`; on Linux with permission to mount, a real full tmpfs is tried too.

use std::path::{Path, PathBuf};
use std::process::Command;

use anneal::{
    CancelToken, Home, ImportOptions, JobId, JobStatus, LoraConfig, Method, ModelFilter, ModelKind, RecordingSink,
    TrainSpec,
};

const CHILD_HOME: &str = "ANNEAL_TEST_DURABILITY_HOME";
const CHILD_JOB: &str = "ANNEAL_TEST_DURABILITY_JOB";

struct Env {
    _dir: tempfile::TempDir,
    home: Home,
    base: anneal::ModelRecord,
}

impl Env {
    fn new() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::open(dir.path().join("h")).unwrap();
        let base = home.models().create_preset("nano", &Default::default()).unwrap();
        import_toy(&home);
        Env { _dir: dir, home, base }
    }

    fn spec(&self, steps: u64) -> TrainSpec {
        spec(&self.base, steps)
    }
}

/// A full fine-tune of `steps` steps with a checkpoint every 2.
fn spec(base: &anneal::ModelRecord, steps: u64) -> TrainSpec {
    TrainSpec {
        base: base.id.clone().into(),
        dataset: "toy".into(),
        method: Method::Full,
        batch_size: 4,
        seq_len: 32,
        max_steps: Some(steps),
        checkpoint_every: Some(2),
        ..Default::default()
    }
}

fn import_toy(home: &Home) {
    let records = (0..16).map(|i| Ok(serde_json::json!({"text": format!("the cat sat on mat {i}")})));
    home.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
}

fn trained(home: &Home) -> usize {
    let f = |kind| ModelFilter { kind: Some(kind), ..Default::default() };
    home.models().list(&f(ModelKind::Full)).unwrap().len() + home.models().list(&f(ModelKind::Lora)).unwrap().len()
}

fn failure_file(home: &Home, job: &JobId) -> PathBuf {
    home.root().join("jobs").join(&job.0).join("failure.json")
}

/// What the child saw, one `KEY value` line each.
struct ChildReport(String);

impl ChildReport {
    fn get(&self, key: &str) -> &str {
        let prefix = format!("{key} ");
        let line = self.0.lines().find_map(|l| l.strip_prefix(prefix.as_str()));
        line.unwrap_or_else(|| panic!("child printed no {key} line:\n{}", self.0))
    }
}

/// The child: runs the job under the failpoints its parent armed and reports.
#[test]
fn durability_child() {
    let Ok(dir) = std::env::var(CHILD_HOME) else { return };
    let job = JobId(std::env::var(CHILD_JOB).unwrap());
    let home = Home::open(dir).unwrap();
    let engine = home.training();
    let mut sink = RecordingSink::new();
    println!(); // after the harness's `test durability_child ... `
    match engine.run(&job, &mut sink, &CancelToken::new()) {
        Ok(r) => println!("OUTCOME ok {}", r.model),
        Err(e) => println!("OUTCOME {} {e}", e.code()),
    }
    let logs: Vec<String> = sink
        .events()
        .iter()
        .filter_map(|e| match e {
            anneal::Event::Log { message, .. } => Some(message.clone()),
            _ => None,
        })
        .collect();
    println!("KEPT {}", failure_file(&home, &job).exists());
    println!("SINK_LOGS {}", logs.join(" | "));
    // Read in this process, where (under `catalog.job_end`) the catalog still refuses it.
    let rec = engine.job(&job).unwrap();
    println!("JOB {} {}", rec.status, rec.error.map(|e| e.code).unwrap_or_default());
}

fn run_child(home: &Home, job: &JobId, failpoints: &str) -> ChildReport {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "durability::durability_child", "--nocapture", "--test-threads", "1"])
        .env(CHILD_HOME, home.root())
        .env(CHILD_JOB, &job.0)
        .env("ANNEAL_FAILPOINTS", failpoints)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "child failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    ChildReport(stdout)
}

/// The job failed with an `io` error (`error` is `<code> <message>`) whose message names
/// a path containing each of `path_parts`, and is recorded so; resuming it completes
/// and registers exactly one model.
fn assert_failed_then_resumes(home: &Home, job: &JobId, error: &str, path_parts: &[&str], resumes_at: Option<u64>) {
    let (code, message) = error.split_once(' ').unwrap();
    assert_eq!(code, "io", "{error}");
    assert!(path_parts.iter().all(|p| message.contains(p)), "{error} should name {path_parts:?}");
    assert!(message.contains("No space left on device"), "{error}");
    let rec = home.training().job(job).unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    let recorded = rec.error.unwrap();
    assert_eq!(recorded.code, "io");
    assert_eq!(recorded.message, message);
    assert_eq!(trained(home), 0, "nothing registered");
    let mut sink = RecordingSink::new();
    let report = home.training().resume(job, &mut sink, &CancelToken::new()).unwrap();
    let want = match resumes_at {
        Some(step) => format!("resuming at step {step}"),
        None => "resuming from the start".to_string(),
    };
    let logs = home.training().logs(job).unwrap();
    assert!(logs.iter().any(|l| l.message.starts_with(&want)), "{want}: {logs:?}");
    let rec = home.training().job(job).unwrap();
    assert_eq!((rec.status, rec.output_model_id.as_ref()), (JobStatus::Completed, Some(&report.model)));
    assert_eq!(trained(home), 1);
}

/// Entries of `dir` whose name starts with `.tmp-` (interrupted writes left behind).
fn temp_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|es| es.flatten().map(|e| e.file_name().to_string_lossy().to_string()).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .filter(|n| n.starts_with(".tmp-"))
        .collect()
}

#[test]
fn a_full_disk_while_writing_a_checkpoint_fails_the_job_with_an_io_error() {
    let env = Env::new();
    let job = env.home.training().create_job(&env.spec(6)).unwrap();
    // Checkpoint at step 2 is written; the one at step 4 hits a full disk.
    let child = run_child(&env.home, &job.id, "write:optimizer.safetensors=enospc@2");
    assert_eq!(child.get("KEPT"), "false");
    assert_eq!(child.get("JOB"), "failed io");
    let ckpts = env.home.root().join("jobs").join(&job.id.0).join("checkpoints");
    assert_eq!(temp_entries(&ckpts), Vec::<String>::new(), "the partial checkpoint is removed");
    assert!(ckpts.join("step-2").is_dir() && !ckpts.join("step-4").exists());
    let rec = env.home.training().job(&job.id).unwrap();
    assert_eq!(rec.checkpoint.as_deref(), Some(format!("jobs/{}/checkpoints/step-2", job.id.0).as_str()));
    let path = ckpts.join(".tmp-");
    let parts = [path.to_str().unwrap(), "/optimizer.safetensors"];
    assert_failed_then_resumes(&env.home, &job.id, child.get("OUTCOME"), &parts, Some(2));
}

#[test]
fn a_full_disk_while_saving_the_final_model_fails_the_job_with_an_io_error() {
    let env = Env::new();
    // model.safetensors: the checkpoint at step 2 (1st write), then the final model (2nd).
    let job = env.home.training().create_job(&env.spec(4)).unwrap();
    let child = run_child(&env.home, &job.id, "write:model.safetensors=enospc@2");
    assert_eq!(child.get("JOB"), "failed io");
    assert_eq!(temp_entries(&env.home.root().join("models")), Vec::<String>::new(), "the staged model is removed");
    let path = env.home.root().join("models").join(".tmp-");
    let parts = [path.to_str().unwrap(), "/model.safetensors"];
    assert_failed_then_resumes(&env.home, &job.id, child.get("OUTCOME"), &parts, Some(2));

    // A LoRA adapter's weights, and its config, the same.
    for (file, failpoint) in [
        ("adapter_model.safetensors", "write:adapter_model.safetensors=enospc"),
        ("adapter_config.json", "write:adapter_config.json=enospc"),
    ] {
        let spec = TrainSpec { method: Method::Lora(LoraConfig::default()), checkpoint_every: None, ..env.spec(2) };
        let job = env.home.training().create_job(&spec).unwrap();
        let child = run_child(&env.home, &job.id, failpoint);
        let error = child.get("OUTCOME");
        assert!(error.starts_with("io ") && error.contains(file) && error.contains("models"), "{error}");
        assert_eq!(env.home.training().job(&job.id).unwrap().error.unwrap().code, "io");
    }
}

#[test]
fn an_end_the_catalog_refuses_is_kept_and_recorded_by_the_next_open() {
    let env = Env::new();
    let job = env.home.training().create_job(&env.spec(6)).unwrap();
    // The run fails (a full disk at the step-4 checkpoint); recording that fails too.
    let child = run_child(&env.home, &job.id, "write:optimizer.safetensors=enospc@2;catalog.job_end=enospc");
    // The caller gets the run's own error, not the catalog's.
    let error = child.get("OUTCOME");
    assert!(error.starts_with("io ") && error.contains("optimizer.safetensors"), "{error}");
    assert_eq!(child.get("KEPT"), "true");
    assert!(child.get("SINK_LOGS").contains("could not be written to the catalog"), "{}", child.0);
    // Read again in that process (the catalog still refusing): reported from the file.
    assert_eq!(child.get("JOB"), "failed io");
    let kept = failure_file(&env.home, &job.id);
    assert!(kept.is_file());

    let home = Home::open(env.home.root()).unwrap();
    assert!(!kept.exists(), "the open recorded the kept end in the catalog");
    let rec = home.training().job(&job.id).unwrap();
    assert_eq!(rec.status, JobStatus::Failed);
    let recorded = rec.error.unwrap();
    assert_eq!((recorded.code.as_str(), recorded.message.as_str()), ("io", error.split_once(' ').unwrap().1));
    assert_eq!((rec.step, rec.checkpoint.is_some()), (4, true));
    let logs: Vec<String> = home.training().logs(&job.id).unwrap().into_iter().map(|l| l.message).collect();
    assert!(logs.iter().any(|m| m.contains("recorded from failure.json")), "{logs:?}");
    assert!(logs.iter().any(|m| m.contains("optimizer.safetensors")), "{logs:?}");
    let report = home.training().resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(report.steps, 6);
    assert_eq!(home.training().job(&job.id).unwrap().status, JobStatus::Completed);
}

#[test]
fn a_catalog_that_refuses_the_end_twice_records_it_on_a_retry() {
    let env = Env::new();
    let job = env.home.training().create_job(&env.spec(6)).unwrap();
    let child = run_child(&env.home, &job.id, "write:optimizer.safetensors=enospc@2;catalog.job_end=enospc*2");
    assert!(child.get("OUTCOME").starts_with("io "), "{}", child.0);
    assert_eq!(child.get("KEPT"), "false");
    assert_eq!(child.get("JOB"), "failed io");
    assert!(!child.get("SINK_LOGS").contains("could not be written"), "{}", child.0);
    let rec = env.home.training().job(&job.id).unwrap();
    assert_eq!((rec.status, rec.error.unwrap().code.as_str()), (JobStatus::Failed, "io"));
}

#[test]
fn reopening_sweeps_interrupted_writes_in_job_folders() {
    let env = Env::new();
    let job = env.home.training().create_job(&env.spec(2)).unwrap();
    let dir = env.home.root().join("jobs").join(&job.id.0);
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    let stale = [dir.join(".tmp-failure.json-w_1"), dir.join("checkpoints").join(".tmp-s_1")];
    std::fs::create_dir_all(&stale[1]).unwrap();
    std::fs::write(&stale[0], b"{").unwrap();
    let ghost = env.home.root().join("jobs").join("job_00000000deadbeef");
    std::fs::create_dir_all(ghost.join("checkpoints")).unwrap();
    let fresh = dir.join(".tmp-failure.json-w_2");
    std::fs::write(&fresh, b"{").unwrap();
    for p in stale.iter().chain([&ghost]) {
        std::fs::File::open(p).unwrap().set_modified(old).unwrap();
    }
    Home::open(env.home.root()).unwrap();
    assert!(stale.iter().all(|p| !p.exists()) && !ghost.exists(), "old leftovers are swept");
    assert!(fresh.exists(), "a young one may belong to a live writer");
}

/// A tmpfs mounted at a path, unmounted on drop.
#[cfg(target_os = "linux")]
struct Tmpfs(PathBuf);

#[cfg(target_os = "linux")]
impl Tmpfs {
    /// None when mounting is not permitted here (not root, no CAP_SYS_ADMIN, no mount).
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let s = Command::new("mount").args(["-o", &format!("remount,size={size}")]).arg(&self.0).status().unwrap();
        assert!(s.success());
    }
}

#[cfg(target_os = "linux")]
impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The same on a real full file system: small tmpfs mounts under `jobs/` and `models/`.
#[cfg(target_os = "linux")]
#[test]
fn a_real_full_disk_fails_the_job_with_an_io_error_and_it_resumes_after() {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("h");
    Home::open(&root).unwrap();
    // 64 KiB of jobs/: the first checkpoint (a ~400 KB model) does not fit.
    let Some(jobs) = Tmpfs::mount(&root.join("jobs"), "64k") else {
        eprintln!("skipped: cannot mount a tmpfs here (the failpoint tests cover full disks)");
        return;
    };
    let Some(models) = Tmpfs::mount(&root.join("models"), "8m") else { return };
    let home = Home::open(&root).unwrap();
    let base = home.models().create_preset("nano", &Default::default()).unwrap();
    import_toy(&home);

    let job = home.training().create_job(&spec(&base, 4)).unwrap();
    let e = home.training().run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap_err();
    let error = format!("{} {e}", e.code());
    jobs.resize("16m");
    // Failed at the first checkpoint: resumes from the start.
    let ckpts = root.join("jobs").join(&job.id.0).join("checkpoints").join(".tmp-");
    assert_failed_then_resumes(&home, &job.id, &error, &[ckpts.to_str().unwrap()], None);

    // models/ with room for what it holds and 64 KiB more: the final model does not fit.
    let used: u64 = walk(&root.join("models")).iter().map(|p| p.metadata().unwrap().len().div_ceil(4096) * 4096).sum();
    models.resize(&format!("{}k", used / 1024 + 64));
    let job = home.training().create_job(&TrainSpec { checkpoint_every: None, ..spec(&base, 2) }).unwrap();
    let e = home.training().run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap_err();
    let error = format!("{} {e}", e.code());
    let staged = root.join("models").join(".tmp-");
    assert!(error.starts_with("io ") && error.contains(staged.to_str().unwrap()), "{error}");
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(temp_entries(&root.join("models")), Vec::<String>::new(), "the staged model is removed");
    assert_eq!(home.training().job(&job.id).unwrap().error.unwrap().code, "io");
    models.resize("16m");
    home.training().resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    assert_eq!(trained(&home), 2);
}

#[cfg(target_os = "linux")]
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

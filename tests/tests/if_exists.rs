//! Re-running the same steps on one home (a script or a notebook cell run twice):
//! `on_duplicate: reuse` for datasets, `if_exists` for presets, registrations and
//! training jobs. Run: cargo test -p anneal-tests --test integration if_exists::
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anneal::{
    CancelToken, Home, IfExists, ImportOptions, JobStatus, Method, NoopSink, OnDuplicate, PresetOptions, RecordingSink,
    RegisterOptions, Storage, TrainSpec,
};
use serde_json::json;

fn home() -> (tempfile::TempDir, Home) {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path().join("home")).unwrap();
    (dir, home)
}

fn import_toy(home: &Home, on_duplicate: OnDuplicate) -> anneal::Result<anneal::DatasetRecord> {
    let records = (0..16).map(|i| Ok(json!({"prompt": format!("{i}+1="), "completion": format!("{}", i + 1)})));
    home.datasets()
        .import_records(records, &ImportOptions { name: Some("toy".into()), on_duplicate, ..Default::default() })
}

#[test]
fn the_same_content_under_the_same_name_is_reused() {
    let (dir, home) = home();
    let first = import_toy(&home, OnDuplicate::Reuse).unwrap();
    let again = import_toy(&home, OnDuplicate::Reuse).unwrap();
    assert_eq!(again.id, first.id);
    // Without reuse it says which dataset holds it, not that the name is taken.
    let e = import_toy(&home, OnDuplicate::Error).unwrap_err();
    assert_eq!(e.code(), "duplicate_content", "{e}");
    // From a file too, twice.
    let file = dir.path().join("toy.jsonl");
    std::fs::write(&file, "{\"text\": \"a\"}\n{\"text\": \"b\"}\n").unwrap();
    let opts = ImportOptions { name: Some("file-toy".into()), on_duplicate: OnDuplicate::Reuse, ..Default::default() };
    let a = home.datasets().import_file(&file, &opts).unwrap();
    let b = home.datasets().import_file(&file, &opts).unwrap();
    assert_eq!(a.id, b.id);
    assert_eq!(home.datasets().list().unwrap().len(), 2);
}

#[test]
fn presets_new_version_reuse_or_error() {
    let (_dir, home) = home();
    let models = home.models();
    let opts = |seed, if_exists| PresetOptions { name: Some("base".into()), seed, if_exists, ..Default::default() };
    let v1 = models.create_preset("nano", &opts(0, IfExists::Reuse)).unwrap();
    assert_eq!(v1.version, 1);
    // The same preset and seed: the same model, nothing written.
    let dirs = std::fs::read_dir(home.root().join("models")).unwrap().count();
    let again = models.create_preset("nano", &opts(0, IfExists::Reuse)).unwrap();
    assert_eq!((again.id.clone(), again.version), (v1.id.clone(), 1));
    assert_eq!(std::fs::read_dir(home.root().join("models")).unwrap().count(), dirs);
    // Another seed under the name: the next version, even with reuse.
    let v2 = models.create_preset("nano", &opts(1, IfExists::Reuse)).unwrap();
    assert_eq!(v2.version, 2);
    assert_eq!(models.create_preset("nano", &opts(1, IfExists::Reuse)).unwrap().id, v2.id);
    assert_eq!(models.create_preset("nano", &opts(0, IfExists::Reuse)).unwrap().id, v1.id);
    // The default adds a version.
    let v3 = models.create_preset("nano", &opts(0, IfExists::default())).unwrap();
    assert_eq!(v3.version, 3);
    // Error: the name is taken, whatever the seed; nothing is left behind.
    for seed in [0, 7] {
        let e = models.create_preset("nano", &opts(seed, IfExists::Error)).unwrap_err();
        assert_eq!(e.code(), "already_exists", "{e}");
        assert!(e.to_string().contains("base@3") && e.to_string().contains("reuse"), "{e}");
    }
    assert_eq!(std::fs::read_dir(home.root().join("models")).unwrap().count(), dirs + 2);
    let fresh = PresetOptions { name: Some("other".into()), if_exists: IfExists::Error, ..Default::default() };
    assert_eq!(models.create_preset("nano", &fresh).unwrap().version, 1);
    // The option reads from JSON by its names.
    let o: PresetOptions = anneal::options_from_json(json!({"if_exists": "reuse"})).unwrap();
    assert_eq!(o.if_exists, IfExists::Reuse);
    let e = anneal::options_from_json::<PresetOptions>(json!({"if_exists": "get"})).unwrap_err();
    assert!(e.to_string().contains("new_version") && e.to_string().contains("reuse"), "{e}");
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

#[test]
fn register_dir_reuses_the_same_files() {
    let (dir, home) = home();
    let models = home.models();
    let a = models.create_preset("nano", &PresetOptions { name: Some("a".into()), seed: 0, ..Default::default() });
    let b = models.create_preset("nano", &PresetOptions { name: Some("b".into()), seed: 1, ..Default::default() });
    let (a, b) = (a.unwrap(), b.unwrap());
    let src = dir.path().join("hf");
    copy_dir(&a.path, &src);
    for storage in [Storage::Copy, Storage::Reference] {
        let name = format!("reg-{}", storage.as_str());
        let opts = |if_exists| RegisterOptions { name: Some(name.clone()), storage, if_exists, ..Default::default() };
        let v1 = models.register_dir(&src, &opts(IfExists::Reuse)).unwrap();
        let again = models.register_dir(&src, &opts(IfExists::Reuse)).unwrap();
        assert_eq!((again.id.clone(), again.version), (v1.id.clone(), 1), "{storage}");
        let e = models.register_dir(&src, &opts(IfExists::Error)).unwrap_err();
        assert_eq!(e.code(), "already_exists", "{e}");
        assert_eq!(models.register_dir(&src, &opts(IfExists::NewVersion)).unwrap().version, 2);
        // Other files under the name: a new version even with reuse.
        let other = dir.path().join(format!("other-{}", storage.as_str()));
        copy_dir(&b.path, &other);
        let v3 = models.register_dir(&other, &opts(IfExists::Reuse)).unwrap();
        assert_eq!(v3.version, 3);
        // The latest equal version is returned.
        assert_eq!(models.register_dir(&src, &opts(IfExists::Reuse)).unwrap().version, 2);
    }
}

#[test]
fn training_the_same_spec_twice_trains_once_with_reuse() {
    let (_dir, home) = home();
    let base = home.models().create_preset("nano", &PresetOptions::default()).unwrap();
    import_toy(&home, OnDuplicate::Reuse).unwrap();
    let engine = home.training();
    let spec = |if_exists| TrainSpec {
        base: base.id.clone().into(),
        dataset: "toy".into(),
        method: Method::Full,
        batch_size: 4,
        seq_len: 16,
        max_steps: Some(2),
        output_name: Some("toy-full".into()),
        if_exists,
        ..Default::default()
    };
    let first = engine.train(&spec(IfExists::Reuse), &mut NoopSink, &CancelToken::new()).unwrap();
    let mut sink = RecordingSink::default();
    let again = engine.train(&spec(IfExists::Reuse), &mut sink, &CancelToken::new()).unwrap();
    assert_eq!((again.job_id.clone(), again.model.clone()), (first.job_id.clone(), first.model.clone()));
    assert_eq!((again.steps, again.final_loss, again.tokens), (first.steps, first.final_loss, first.tokens));
    assert!(sink.events().is_empty(), "nothing was trained: {:?}", sink.events());
    assert_eq!(engine.jobs(&Default::default()).unwrap().len(), 1);
    assert_eq!(home.models().get(&first.model).unwrap().version, 1);
    // Error: the same job exists.
    let e = engine.create_job(&spec(IfExists::Error)).unwrap_err();
    assert_eq!(e.code(), "already_exists", "{e}");
    assert!(e.to_string().contains(first.job_id.as_str()), "{e}");
    // Another setting is another job, even with reuse; error refuses the taken output name.
    let other = TrainSpec { max_steps: Some(3), ..spec(IfExists::Reuse) };
    let job = engine.create_job(&other).unwrap();
    assert_ne!(job.id, first.job_id);
    assert_eq!(engine.create_job(&other).unwrap().id, job.id, "a pending job is reused too");
    let e = engine.create_job(&TrainSpec { max_steps: Some(4), ..spec(IfExists::Error) }).unwrap_err();
    assert!(e.to_string().contains("toy-full"), "{e}");
    // The default makes a new job and, trained, a new version.
    let report = engine.train(&spec(IfExists::NewVersion), &mut NoopSink, &CancelToken::new()).unwrap();
    assert_ne!(report.job_id, first.job_id);
    assert_eq!(home.models().get(&report.model).unwrap().version, 2);
    // A cancelled job is resumed by the same call, not started again.
    let third = TrainSpec { max_steps: Some(5), ..spec(IfExists::Reuse) };
    let job = engine.create_job(&third).unwrap();
    engine.cancel(&job.id).unwrap();
    assert_eq!(engine.job(&job.id).unwrap().status, JobStatus::Cancelled);
    let done = engine.train(&third, &mut NoopSink, &CancelToken::new()).unwrap();
    assert_eq!((done.job_id, done.steps), (job.id, 5));
    // The resume hint names the job and the call that continues it.
    let hint = engine.resume_hint(&first.job_id);
    assert!(hint.contains("completed"), "{hint}");
}

#[test]
fn a_deleted_or_failed_result_is_trained_again() {
    let (_dir, home) = home();
    let base = home.models().create_preset("nano", &PresetOptions::default()).unwrap();
    import_toy(&home, OnDuplicate::Reuse).unwrap();
    let engine = home.training();
    let spec = TrainSpec {
        base: base.id.clone().into(),
        dataset: "toy".into(),
        method: Method::Full,
        batch_size: 4,
        seq_len: 16,
        max_steps: Some(1),
        if_exists: IfExists::Reuse,
        ..Default::default()
    };
    let first = engine.train(&spec, &mut NoopSink, &CancelToken::new()).unwrap();
    home.models().delete(&first.model, false).unwrap();
    let second = engine.train(&spec, &mut NoopSink, &CancelToken::new()).unwrap();
    assert_ne!(second.job_id, first.job_id);
}

#[test]
fn a_method_name_alone_trains_with_its_defaults() {
    let (_dir, home) = home();
    let base = home.models().create_preset("nano", &PresetOptions::default()).unwrap();
    import_toy(&home, OnDuplicate::Reuse).unwrap();
    let spec = TrainSpec::from_json(json!({
        "base": base.id.0, "dataset": "toy", "method": "lora", "max_steps": 1, "seq_len": 16, "batch_size": 4
    }))
    .unwrap();
    let job = home.training().create_job(&spec).unwrap();
    assert_eq!(job.spec.method, Method::Lora(Default::default()));
    let report = home.training().run(&job.id, &mut NoopSink, &CancelToken::new()).unwrap();
    assert_eq!(home.models().get(&report.model).unwrap().kind.as_str(), "lora");
}

//! A run's curves where people look: TensorBoard event files, an MLflow run (file
//! store) and the PNG of `TrainingEngine::plot`, from a real tiny training job.
//! (The Python suite reads the same files back with tensorboard's and mlflow's own
//! readers.) Run: cargo test -p anneal --test integration curves::
#![allow(clippy::unwrap_used)]

use std::path::Path;

use anneal::plot::{BACKGROUND, BLUE, ORANGE};
use anneal::{
    CancelToken, CurveOptions, Event, Fanout, Home, ImportOptions, Method, MlflowSink, PlotOptions, RecordingSink,
    TensorBoardSink, TrainSpec,
};
use serde_json::json;

fn home(dir: &Path) -> (Home, TrainSpec) {
    let home = Home::open(dir.join("home")).unwrap();
    let base = home.models().create_preset("nano", &Default::default()).unwrap();
    let records: Vec<_> = (0..24).map(|i| Ok(json!({"text": format!("the cat sat on the mat {}.", i % 4)}))).collect();
    home.datasets().import_records(records, &ImportOptions { name: Some("toy".into()), ..Default::default() }).unwrap();
    let spec = TrainSpec {
        base: base.id.into(),
        dataset: "toy".into(),
        method: Method::Full,
        batch_size: 4,
        seq_len: 16,
        learning_rate: 3e-3,
        max_steps: Some(6),
        eval_fraction: Some(0.25),
        eval_every: Some(3),
        ..Default::default()
    };
    (home, spec)
}

/// TFRecord payloads of an event file (CRCs are checked by the unit tests and by
/// tensorboard's reader in the Python suite).
fn tf_records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 12 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[i..i + 8].try_into().unwrap()) as usize;
        out.push(&bytes[i + 12..i + 12 + len]);
        i += 16 + len;
    }
    assert_eq!(i, bytes.len(), "whole records only");
    out
}

#[test]
fn a_run_writes_tensorboard_mlflow_and_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let (home, spec) = home(dir.path());
    let engine = home.training();
    let job = engine.create_job(&spec).unwrap();
    let rec = RecordingSink::new();
    let tb = dir.path().join("runs");
    let mlruns = dir.path().join("mlruns");
    let mut sink = Fanout::new()
        .with(TensorBoardSink::new(&tb))
        .with(MlflowSink::new(mlruns.to_str().unwrap()).unwrap().spec(&spec))
        .with(rec.clone());
    let report = engine.run(&job.id, &mut sink, &CancelToken::new()).unwrap();
    let steps = rec.events().iter().filter(|e| matches!(e, Event::Step { .. })).count();
    let evals = rec.events().iter().filter(|e| matches!(e, Event::Eval { .. })).count();
    assert_eq!((steps, evals), (6, 2));

    // TensorBoard: one file in the job's run directory; file_version, then a record
    // per step and per evaluation.
    let files: Vec<_> = std::fs::read_dir(tb.join(job.id.as_str())).unwrap().flatten().collect();
    assert_eq!(files.len(), 1);
    let bytes = std::fs::read(files[0].path()).unwrap();
    let records = tf_records(&bytes);
    assert_eq!(records.len(), 1 + steps + evals);
    assert!(records[0].ends_with(b"brain.Event:2"));
    assert!(records.iter().filter(|r| r.windows(10).any(|w| w == b"train/loss")).count() == steps);
    assert!(records.iter().filter(|r| r.windows(9).any(|w| w == b"eval/loss")).count() == evals);

    // MLflow: the run in experiment 0, finished, with every step's loss in order.
    let runs: Vec<_> = std::fs::read_dir(mlruns.join("0")).unwrap().flatten().filter(|e| e.path().is_dir()).collect();
    assert_eq!(runs.len(), 1);
    let run = runs[0].path();
    assert!(std::fs::read_to_string(run.join("meta.yaml")).unwrap().contains("status: 3\n"));
    let loss = std::fs::read_to_string(run.join("metrics/train/loss")).unwrap();
    let logged: Vec<u64> = loss.lines().map(|l| l.rsplit(' ').next().unwrap().parse().unwrap()).collect();
    assert_eq!(logged, [1, 2, 3, 4, 5, 6]);
    let last: f64 = loss.lines().last().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    assert!((last - report.final_loss).abs() < 1e-9, "{last} vs {}", report.final_loss);
    assert_eq!(std::fs::read_to_string(run.join("params/max_steps")).unwrap(), "6");
    assert_eq!(std::fs::read_to_string(run.join("tags/anneal.model_id")).unwrap(), report.model_id.as_str());

    // The plot: the requested size, the train line in blue and eval dots in orange.
    let opts = PlotOptions { width: 640, height: 400, title: None };
    let png = engine.plot(&job.id, &opts).unwrap();
    let img = image::load_from_memory(&png).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (640, 400));
    let count = |c: [u8; 3]| img.pixels().filter(|p| p.0 == c).count();
    assert!(count(BLUE) > 100, "train loss line: {} px", count(BLUE));
    assert!(count(ORANGE) > 20, "eval loss dots: {} px", count(ORANGE));
    assert!(count(BACKGROUND) < 640 * 400 * 98 / 100);
    let out = dir.path().join("loss.png");
    let written = engine.plot_to(&job.id, &out, &opts).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), written);
    assert_eq!(written.len(), png.len());
}

#[test]
fn plot_errors_name_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let (home, spec) = home(dir.path());
    let engine = home.training();
    // A pending job has no points yet: axes without data, still a PNG.
    let job = engine.create_job(&spec).unwrap();
    let png = engine.plot(&job.id, &PlotOptions::default()).unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8().dimensions(), (1200, 700));
    assert_eq!(engine.plot("job_nope", &PlotOptions::default()).unwrap_err().code(), "not_found");
    let e = engine.plot(&job.id, &PlotOptions { width: 10, ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("`width`"), "{e}");
    let e = engine.plot_to(&job.id, dir.path().join("no/such/dir/x.png"), &PlotOptions::default()).unwrap_err();
    assert!(["io", "file_not_found"].contains(&e.code()), "{e}");
    assert!(e.to_string().contains("x.png"), "{e}");
}

#[test]
fn curve_options_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_home, spec) = home(dir.path());
    let opts: CurveOptions = anneal::options_from_json(json!({"tensorboard": "runs", "mlflow": "http://"})).unwrap();
    let e = opts.sinks(&spec).err().unwrap();
    assert_eq!(e.code(), "invalid_config");
    assert!(e.to_string().contains("`mlflow`"), "{e}");
    let e = anneal::options_from_json::<CurveOptions>(json!({"tensorbord": "runs"})).unwrap_err();
    assert!(e.to_string().contains("tensorbord"), "{e}");
}

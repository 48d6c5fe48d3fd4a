//! anneal's side of the drift-check time comparison with scipy
//! (benches/continual/run.sh drift runs both; the peer is benches/continual/scipy_drift.py).
//!
//! Run:    cargo run --release -p anneal-benches --bin drift_time -- --data DIR [--rows 100000] [--numeric 16] [--categorical 4] [--reps 3]
//! Output: DIR/train.jsonl and DIR/window.jsonl (the rows, for the peer), then one JSON line.
//!
//! A seeded synthetic scenario (`anneal::tabular::synthetic`: 3 classes, `--numeric`
//! normal columns and `--categorical` columns of 5 levels, 20 columns by default) of
//! 2 x `--rows` rows, with a covariate drift (0.5 standard deviations, on the first half of
//! the numeric and categorical columns) from row `--rows` on: the first half is the
//! training set, the second the window. A logistic regression classifier is trained on
//! the first half through the engine (which stores its reference profile), and
//! `Continual::drift(model, DriftWindow::Dataset(window))` is timed `--reps` times
//! (untimed once first). With a reference of more than 1000 rows, numbers are compared
//! with the normalised Wasserstein distance on the profile's 1000-value sample, categories
//! with Jensen-Shannon, PSI for both, and the expected accuracy is the window's mean
//! top-class probability (CBPE-style): the check reads the dataset's file, compares every
//! column and runs the model over every row, and stores the check in the catalog.
//!
//! The phases are also timed apart, in memory, like the peer's: `parse_s` (the window
//! file's JSON lines into rows), `stats_s` (`Profile::compare` against the stored profile)
//! and `predict_s` (`Classifier::predict_proba` over the window).

use std::time::Instant;

use anneal::tabular::classifier::Classifier;
use anneal::tabular::profile::Profile;
use anneal::tabular::synthetic;
use anneal::types::{DriftOptions, ScenarioDrift, ScenarioDriftKind, ScenarioOptions};
use anneal::{
    CancelToken, ClassifierConfig, ClassifierModel, DriftWindow, Home, ImportOptions, Method, NoopSink, TrainSpec,
};
use serde_json::{json, Map, Value};

fn arg(args: &[String], name: &str, default: &str) -> String {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned().unwrap_or_else(|| default.to_string())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn write_jsonl(path: &std::path::Path, records: impl Iterator<Item = Value>) -> anyhow::Result<()> {
    let mut text = String::new();
    for r in records {
        text.push_str(&serde_json::to_string(&r)?);
        text.push('\n');
    }
    std::fs::write(path, text)?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    // As anneal's front-ends do (`CANDLE_NUM_THREADS=2` in the environment restores candle's pool).
    anneal::keep_candle_ops_on_calling_thread();
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--help") {
        println!("drift_time --data DIR [--rows 100000] [--numeric 16] [--categorical 4] [--reps 3]");
        return Ok(());
    }
    let data = std::path::PathBuf::from(arg(&args, "--data", ""));
    anyhow::ensure!(!data.as_os_str().is_empty(), "--data DIR is required (the rows are written there)");
    std::fs::create_dir_all(&data)?;
    let rows: usize = arg(&args, "--rows", "100000").parse()?;
    let numeric: usize = arg(&args, "--numeric", "16").parse()?;
    let categorical: usize = arg(&args, "--categorical", "4").parse()?;
    let reps: usize = arg(&args, "--reps", "3").parse::<usize>()?.max(1);

    let opts =
        ScenarioOptions { rows: 2 * rows, numeric, categorical, categories: 5, classes: 3, ..Default::default() };
    let moved: Vec<String> =
        (0..numeric / 2).map(|i| format!("x{i}")).chain((0..categorical / 2).map(|i| format!("c{i}"))).collect();
    let opts = ScenarioOptions {
        drift: vec![ScenarioDrift {
            kind: ScenarioDriftKind::Covariate,
            start: rows,
            magnitude: 0.5,
            columns: moved,
            ..Default::default()
        }],
        ..opts
    };
    let generated = synthetic::generate(&opts)?;
    let records: Vec<Value> = generated.records().collect();
    drop(generated);
    let (train_path, window_path) = (data.join("train.jsonl"), data.join("window.jsonl"));
    write_jsonl(&train_path, records[..rows].iter().cloned())?;
    write_jsonl(&window_path, records[rows..].iter().cloned())?;
    drop(records);

    let dir = tempfile::tempdir()?;
    let home = Home::open(dir.path().join("home"))?;
    let import = |path: &std::path::Path, name: &str| {
        home.datasets().import_file(path, &ImportOptions { name: Some(name.into()), ..Default::default() })
    };
    let train = import(&train_path, "drift-train")?;
    let window = import(&window_path, "drift-window")?;
    let spec = TrainSpec {
        dataset: train.id.clone(),
        method: Method::Classifier(ClassifierConfig { model: ClassifierModel::Logistic, ..Default::default() }),
        output_name: Some("drift-bench".into()),
        ..Default::default()
    };
    let engine = home.training();
    let job = engine.create_job(&spec)?;
    let report = engine.run(&job.id, &mut NoopSink, &CancelToken::new())?;
    let model = home.models().get(&report.model)?;

    let continual = home.continual();
    let win = DriftWindow::Dataset(window.id.clone());
    let first = continual.drift(model.id.clone(), &win)?;
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t0 = Instant::now();
        let check = continual.drift(model.id.clone(), &win)?;
        times.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(check);
    }

    // The phases apart, in memory.
    let profile: Profile = serde_json::from_slice(&std::fs::read(model.path.join("reference_profile.json"))?)?;
    let classifier = Classifier::load(&model.path)?;
    let (mut parse, mut stats, mut predict) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let t0 = Instant::now();
        let text = std::fs::read_to_string(&window_path)?;
        let mut rows_in: Vec<Map<String, Value>> = Vec::with_capacity(rows);
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let mut r: Map<String, Value> = serde_json::from_str(line)?;
            r.remove("label");
            rows_in.push(r);
        }
        parse.push(t0.elapsed().as_secs_f64());
        let t0 = Instant::now();
        let r = profile.compare(&rows_in, &DriftOptions::default())?;
        stats.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(r);
        let t0 = Instant::now();
        let p = classifier.predict_proba(&rows_in)?;
        predict.push(t0.elapsed().as_secs_f64());
        std::hint::black_box(p);
    }

    let rep = first.report.clone().ok_or_else(|| anyhow::anyhow!("a classifier's check has a report"))?;
    let test_of = |numeric: bool| {
        rep.columns
            .iter()
            .find(|c| (c.kind == anneal::types::ColumnKind::Numeric) == numeric)
            .map(|c| c.test.to_string())
    };
    println!(
        "{}",
        json!({
            "impl": "anneal",
            "rows": rows,
            "columns": numeric + categorical,
            "reps": reps,
            "drift_s": median(times),
            "parse_s": median(parse),
            "stats_s": median(stats),
            "predict_s": median(predict),
            "verdict": first.verdict.to_string(),
            "drifted_columns": rep.drifted_columns,
            "drifted": rep.columns.iter().filter(|c| c.drifted).map(|c| c.column.clone()).collect::<Vec<_>>(),
            "numeric_test": test_of(true),
            "categorical_test": test_of(false),
            "expected_accuracy": first.expected_accuracy,
        })
    );
    Ok(())
}

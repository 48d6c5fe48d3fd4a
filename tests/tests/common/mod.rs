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

/// A home whose `churn` v1 (logistic regression on the first 200 rows of `s`) is in
/// production (the monitor and timeline tests).
pub fn churn_in_production(dir: &Path, s: &anneal::tabular::synthetic::SyntheticRows) -> anneal::Home {
    use anneal::{CancelToken, ClassifierConfig, ImportOptions, Method, RecordingSink, TrainSpec};
    let home = anneal::Home::open(dir).unwrap();
    let records: Vec<serde_json::Value> = s.records().take(200).collect();
    home.datasets()
        .import_records(
            records.into_iter().map(Ok),
            &ImportOptions { name: Some("churn-train".into()), ..Default::default() },
        )
        .unwrap();
    let spec = TrainSpec {
        dataset: "churn-train".into(),
        eval_fraction: Some(0.2),
        method: Method::Classifier(ClassifierConfig::default()),
        output_name: Some("churn".into()),
        ..Default::default()
    };
    let job = home.training().create_job(&spec).unwrap();
    home.training().run(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    home.models().promote("churn@1", &Default::default()).unwrap();
    home
}

/// Predicts rows `range` of `s` with `churn@production` and labels each with its truth.
pub fn stream_labelled(
    home: &anneal::Home,
    s: &anneal::tabular::synthetic::SyntheticRows,
    range: std::ops::Range<usize>,
) {
    let p = home.predictor("churn@production", &Default::default()).unwrap();
    let c = home.continual();
    for i in range {
        let pred = p.predict(&s.rows[i]).unwrap();
        c.label(&pred.prediction_id, &serde_json::json!(s.labels[i])).unwrap();
    }
}

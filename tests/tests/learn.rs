//! `Continual::learn`: SGD updates of a registered classifier on new labelled records
//! register a new version with its lineage; the version learned from, and predictors
//! loaded on it, are unchanged; bad records are typed errors naming the record and the
//! field, with nothing registered.

#![allow(clippy::unwrap_used)]

use crate::common;

use anneal::tabular::synthetic::{generate, SyntheticRows};
use anneal::{
    Error, Home, LearnOptions, ModelFilter, PredictorOptions, ScenarioDrift, ScenarioDriftKind, ScenarioOptions,
};
use serde_json::{json, Value};

/// Rows 0..300 follow one concept, rows 300.. another (and moved features).
fn scenario() -> SyntheticRows {
    generate(&ScenarioOptions {
        rows: 600,
        numeric: 3,
        categorical: 1,
        categories: 3,
        classes: 2,
        separation: 3.0,
        seed: 11,
        drift: vec![
            ScenarioDrift { kind: ScenarioDriftKind::Concept, start: 300, magnitude: 2.0, ..Default::default() },
            ScenarioDrift { kind: ScenarioDriftKind::Covariate, start: 300, magnitude: 1.0, ..Default::default() },
        ],
    })
    .unwrap()
}

/// Accuracy of `model` on rows `range` of `s` (through a predictor, as served).
fn accuracy(home: &Home, model: &str, s: &SyntheticRows, range: std::ops::Range<usize>) -> f64 {
    let p = home.predictor(model, &PredictorOptions { log_features: false, ..Default::default() }).unwrap();
    let preds = p.predict_batch(&s.rows[range.clone()]).unwrap();
    let correct = preds.iter().zip(&s.labels[range.clone()]).filter(|(p, &y)| p.label == json!(y)).count();
    correct as f64 / range.len() as f64
}

fn versions(home: &Home) -> usize {
    home.models().list(&ModelFilter { name: Some("churn".into()), ..Default::default() }).unwrap().len()
}

#[test]
fn learning_on_a_shifted_stream_registers_a_better_version_with_lineage() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario();
    let home = common::churn_in_production(dir.path(), &s);
    let v1 = home.models().resolve("churn@1").unwrap();
    let served = home.predictor("churn@production", &Default::default()).unwrap();
    let probe = served.predict(&s.rows[500]).unwrap();

    // After the shift: learn from rows 300..450, one SGD step per record.
    let records: Vec<Value> = s.records().skip(300).take(150).collect();
    let opts = LearnOptions { epochs: 3, learning_rate: Some(0.1), ..Default::default() };
    let v2 = home.continual().learn("churn@production", &records, &opts).unwrap();
    assert_eq!((v2.name.as_str(), v2.version, v2.kind), ("churn", 2, anneal::ModelKind::Classifier));
    let before = accuracy(&home, "churn@1", &s, 450..600);
    let after = accuracy(&home, "churn@2", &s, 450..600);
    assert!(after > before + 0.1, "held-out accuracy after the shift: v1 {before}, learned v2 {after}");

    // Lineage: the parent, the records (stored with the version, hashed), the steps.
    assert_eq!(v2.lineage.base.as_ref(), Some(&v1.id));
    assert_eq!(v2.lineage.base_ref.as_deref(), Some("churn@1"));
    assert_eq!(v2.source, format!("learn:{}", v1.id));
    let l = v2.lineage.learned.as_ref().unwrap();
    assert_eq!((l.records, l.epochs, l.batch_size, l.steps, l.learning_rate), (150, 3, 1, 450, 0.1));
    assert!(l.accuracy_after > l.accuracy_before && l.log_loss_after < l.log_loss_before, "{l:?}");
    let stored = std::fs::read(v2.path.join("learned_records.jsonl")).unwrap();
    let file = v2.files.iter().find(|f| f.name == "learned_records.jsonl").unwrap();
    assert_eq!((l.records_sha256.as_str(), file.bytes), (file.sha256.as_str(), stored.len() as u64));
    let first: Value = serde_json::from_slice(stored.split(|b| *b == b'\n').next().unwrap()).unwrap();
    assert_eq!(first["label"], json!(s.labels[300]));
    assert_eq!(first["features"], Value::Object(s.rows[300].clone()));
    assert!(v2.files.iter().any(|f| f.name == "reference_profile.json"));
    assert_eq!(home.models().get(&v2.id).unwrap().lineage, v2.lineage, "the lineage is the catalog's");

    // The parent is untouched: same files, same answers from a predictor loaded before.
    let v1_after = home.models().resolve("churn@1").unwrap();
    assert_eq!((v1_after.sha256, v1_after.aliases), (v1.sha256, vec!["production".to_string()]));
    assert_eq!(served.predict(&s.rows[500]).unwrap().probabilities, probe.probabilities);

    // Batches (learn_many) and another output name.
    let opts = LearnOptions { batch_size: 50, output_name: Some("churn-sgd".into()), ..Default::default() };
    let other = home.continual().learn("churn@1", &records, &opts).unwrap();
    assert_eq!((other.name.as_str(), other.version), ("churn-sgd", 1));
    assert_eq!(other.lineage.learned.unwrap().steps, 3);
}

#[test]
fn bad_records_and_options_are_typed_errors_and_register_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = scenario();
    let home = common::churn_in_production(dir.path(), &s);
    let c = home.continual();
    let good: Vec<Value> = s.records().skip(300).take(5).collect();
    let dirs = common::model_dirs(&home);
    let at = |e: Error| match e {
        Error::InvalidData { location, .. } => (location.record, location.field),
        e => panic!("not invalid_data: {e}"),
    };
    let with = |i: usize, f: &dyn Fn(&mut serde_json::Map<String, Value>)| {
        let mut r = good.clone();
        f(r[i].as_object_mut().unwrap());
        r
    };
    let learn = |r: &[Value]| c.learn("churn", r, &LearnOptions::default()).unwrap_err();
    let cases: Vec<(Vec<Value>, Option<u64>, Option<&str>)> = vec![
        (with(2, &|r| r.insert("nope".into(), json!(1.0)).map_or((), |_| ())), Some(3), Some("nope")),
        (with(3, &|r| r.remove("x1").map_or((), |_| ())), Some(4), Some("x1")),
        (with(0, &|r| r.insert("x0".into(), json!("high")).map_or((), |_| ())), Some(1), Some("x0")),
        (with(4, &|r| r.insert("label".into(), json!(7)).map_or((), |_| ())), Some(5), Some("label")),
        (with(1, &|r| r.remove("label").map_or((), |_| ())), Some(2), Some("label")),
        (with(1, &|r| r.insert("label".into(), Value::Null).map_or((), |_| ())), Some(2), Some("label")),
        ([good.clone(), vec![json!([1, 2])]].concat(), Some(6), None),
        (Vec::new(), None, None),
    ];
    for (records, record, field) in cases {
        assert_eq!(at(learn(&records)), (record, field.map(String::from)), "{records:?}");
    }
    let field = |e: Error| match e {
        Error::InvalidConfig { field, .. } => field,
        e => panic!("not invalid_config: {e}"),
    };
    for (opts, name) in [
        (LearnOptions { epochs: 0, ..Default::default() }, "epochs"),
        (LearnOptions { batch_size: 0, ..Default::default() }, "batch_size"),
        (LearnOptions { learning_rate: Some(f64::NAN), ..Default::default() }, "learning_rate"),
        (LearnOptions { learning_rate: Some(-1.0), ..Default::default() }, "learning_rate"),
        (LearnOptions { output_name: Some(String::new()), ..Default::default() }, "output_name"),
    ] {
        assert_eq!(field(c.learn("churn", &good, &opts).unwrap_err()), name);
    }
    let lm = home.models().create_preset("nano", &Default::default()).unwrap();
    assert_eq!(field(c.learn("nano", &good, &LearnOptions::default()).unwrap_err()), "model");
    assert_eq!(c.learn("nobody", &good, &LearnOptions::default()).unwrap_err().code(), "not_found");
    // Nothing registered, no directory left behind (but the preset's).
    assert_eq!(versions(&home), 1);
    let mut want = dirs.clone();
    want.push(lm.id.0.clone());
    want.sort();
    assert_eq!(common::model_dirs(&home), want);
}

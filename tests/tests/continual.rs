//! Continual learning end to end: a tabular dataset trains logistic and MLP
//! classifiers through the training engine (jobs, events, registration with lineage
//! and a reference profile), a Predictor serves and logs predictions, labels join
//! later, evaluations and drift checks are catalog rows; language models evaluate and
//! check loss drift.

#![allow(clippy::unwrap_used)]

use crate::common;

use std::time::Instant;

use anneal::types::DriftVerdict;
use anneal::{
    AccuracyOptions, CancelToken, ClassifierConfig, ClassifierModel, DatasetFormat, DriftWindow, ErrorKind, Event,
    Home, ImportOptions, Method, ModelFilter, ModelKind, PredictionFilter, PredictorOptions, RecordingSink, TrainSpec,
};
use serde_json::{json, Map, Value};

/// A deterministic generator (xorshift64*) with normal draws.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

const CLASSES: [&str; 3] = ["a", "b", "c"];
const COLORS: [&str; 3] = ["red", "green", "blue"];

/// Iris-like rows: two numeric features around a class centre, a colour that mostly
/// follows the class; `shift` moves the numbers.
fn rows(n: usize, seed: u64, shift: f64) -> Vec<(Map<String, Value>, &'static str)> {
    let mut r = Rng(seed);
    (0..n)
        .map(|i| {
            let c = i % 3;
            let color = if r.next() < 0.8 { COLORS[c] } else { COLORS[(c + 1) % 3] };
            let f = json!({
                "x1": c as f64 * 2.0 + r.normal() * 0.6 + shift,
                "x2": (2 - c) as f64 * 1.5 + r.normal() * 0.6 + shift,
                "color": color,
            });
            (f.as_object().unwrap().clone(), CLASSES[c])
        })
        .collect()
}

fn write_jsonl(dir: &std::path::Path, name: &str, rows: &[(Map<String, Value>, &str)]) -> std::path::PathBuf {
    let mut text = String::new();
    for (f, y) in rows {
        let mut o = f.clone();
        o.insert("label".into(), json!(y));
        text.push_str(&serde_json::to_string(&o).unwrap());
        text.push('\n');
    }
    common::write(dir, name, text.as_bytes())
}

fn import(home: &Home, path: &std::path::Path, name: &str) -> anneal::DatasetRecord {
    home.datasets().import_file(path, &ImportOptions { name: Some(name.into()), ..Default::default() }).unwrap()
}

fn train(home: &Home, spec: &TrainSpec) -> (anneal::TrainReport, Vec<Event>) {
    let engine = home.training();
    let job = engine.create_job(spec).unwrap();
    let mut sink = RecordingSink::new();
    let report = engine.run(&job.id, &mut sink, &CancelToken::new()).unwrap();
    (report, sink.events())
}

fn field_of(e: &anneal::Error) -> (Option<u64>, Option<String>) {
    match e {
        anneal::Error::InvalidData { location, .. } => (location.record, location.field.clone()),
        anneal::Error::InvalidConfig { field, .. } => (None, Some(field.clone())),
        other => panic!("not a data or config error: {other}"),
    }
}

#[test]
fn classifiers_train_predict_label_evaluate_and_drift() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path().join("home")).unwrap();
    let train_rows = rows(150, 1, 0.0);
    let test_rows = rows(60, 2, 0.0);
    let ds = import(&home, &write_jsonl(dir.path(), "train.jsonl", &train_rows), "iris");
    assert_eq!(ds.format, DatasetFormat::Tabular);
    let test = import(&home, &write_jsonl(dir.path(), "test.jsonl", &test_rows), "iris-test");
    let shifted = import(&home, &write_jsonl(dir.path(), "shifted.jsonl", &rows(60, 3, 3.0)), "iris-shifted");

    // Bad specs fail at creation, naming the field.
    let bad = TrainSpec {
        base: "nano".into(),
        dataset: "iris".into(),
        method: Method::Classifier(ClassifierConfig::default()),
        ..Default::default()
    };
    assert_eq!(field_of(&home.training().create_job(&bad).unwrap_err()).1.as_deref(), Some("base"));
    let bad = TrainSpec {
        dataset: "iris".into(),
        method: Method::Classifier(ClassifierConfig {
            hidden: vec![],
            model: ClassifierModel::Mlp,
            ..Default::default()
        }),
        ..Default::default()
    };
    assert_eq!(field_of(&home.training().create_job(&bad).unwrap_err()).1.as_deref(), Some("method.classifier.hidden"));

    // Logistic regression, with a held-out share for the final metrics.
    let spec = TrainSpec {
        dataset: "iris".into(),
        eval_fraction: Some(0.2),
        method: Method::Classifier(ClassifierConfig::default()),
        output_name: Some("iris-lr".into()),
        ..Default::default()
    };
    let (report, events) = train(&home, &spec);
    let types: Vec<&str> = events.iter().map(Event::type_name).collect();
    assert_eq!(types.first(), Some(&"job_started"));
    assert_eq!(types.last(), Some(&"job_finished"));
    let steps = types.iter().filter(|t| **t == "step").count() as u64;
    assert!(steps >= 1 && steps == report.steps, "{steps} step events, report {}", report.steps);
    assert!(types.contains(&"eval"));
    let lr = home.models().get(&report.model).unwrap();
    assert_eq!((lr.kind, lr.name.as_str(), lr.version), (ModelKind::Classifier, "iris-lr", 1));
    assert_eq!(lr.family.as_str(), "tabular");
    assert_eq!(lr.lineage.dataset.as_ref(), Some(&ds.id));
    assert_eq!(lr.lineage.job.as_ref(), Some(&report.job_id));
    let m = lr.lineage.metrics.clone().unwrap();
    assert!(m.train_accuracy.unwrap() > 0.85, "{m:?}");
    assert!(m.eval_accuracy.unwrap() > 0.8, "{m:?}");
    assert_eq!(m.eval_loss, report.eval_loss);
    let files: Vec<&str> = lr.files.iter().map(|f| f.name.as_str()).collect();
    for f in ["classifier.json", "model.safetensors", "reference_profile.json"] {
        assert!(files.contains(&f), "{files:?}");
    }
    let job = home.training().job(&report.job_id).unwrap();
    assert_eq!((job.status.as_str(), job.output_model_id.as_ref()), ("completed", Some(&lr.id)));
    assert!(job.base_model_id.is_none());
    assert_eq!(home.training().metrics(&report.job_id).unwrap().len() as u64, report.steps + 1);

    // A small MLP with early stopping on its validation split.
    let spec = TrainSpec {
        dataset: "iris".into(),
        method: Method::Classifier(ClassifierConfig {
            model: ClassifierModel::Mlp,
            hidden: vec![8],
            learning_rate: 0.02,
            validation_fraction: 0.2,
            max_iter: 150,
            ..Default::default()
        }),
        output_name: Some("iris-mlp".into()),
        ..Default::default()
    };
    let (mlp_report, events) = train(&home, &spec);
    assert!(events.iter().any(|e| matches!(e, Event::Eval { metrics, .. } if metrics.contains_key("val_loss"))));
    let mlp = home.models().resolve("iris-mlp@1").unwrap();
    assert_eq!((mlp.kind, mlp.architecture.as_str()), (ModelKind::Classifier, "mlp"));
    assert_eq!(mlp.id, mlp_report.model);
    assert!(mlp.lineage.metrics.unwrap().eval_accuracy.unwrap() > 0.8);
    let listed = home.models().list(&ModelFilter { kind: Some(ModelKind::Classifier), ..Default::default() }).unwrap();
    assert_eq!(listed.len(), 2);
    // A classifier is no base for fine-tuning.
    let bad = TrainSpec { base: "iris-lr".into(), dataset: "iris".into(), method: Method::Full, ..Default::default() };
    assert_eq!(field_of(&home.training().create_job(&bad).unwrap_err()).1.as_deref(), Some("base"));

    // Predict: one row, then a batch; every row is logged.
    fn send_sync<T: Send + Sync>(_: &T) {}
    let predictor = home.predictor("iris-lr", &PredictorOptions::default()).unwrap();
    send_sync(&predictor);
    send_sync(&home.continual());
    let (row, truth) = &test_rows[0];
    let p = predictor.predict(row).unwrap();
    assert_eq!(p.model, "iris-lr@1");
    assert_eq!(p.model_id, lr.id);
    let sum: f64 = p.probabilities.values().sum();
    assert!((sum - 1.0).abs() < 1e-9);
    assert_eq!(p.confidence, p.probabilities[p.label.as_str().unwrap()]);
    assert!(p.probabilities.values().all(|v| *v <= p.confidence));
    assert_eq!(p.label, json!(truth));
    // A sanity check (not a benchmark): logging does not dominate a single prediction.
    let t0 = Instant::now();
    for (r, _) in &test_rows[..10] {
        predictor.predict(r).unwrap();
    }
    let per_call_ms = t0.elapsed().as_secs_f64() * 100.0;
    let recent = home.continual().predictions("iris-lr", &PredictionFilter { limit: Some(10), ..Default::default() });
    let model_ms = recent.unwrap().iter().map(|p| p.latency_ms).sum::<f64>() / 10.0;
    eprintln!("single-row predict: {per_call_ms:.3} ms per call with logging, {model_ms:.3} ms of model time");
    assert!(per_call_ms < 200.0, "{per_call_ms} ms per single-row predict");
    let rows_only: Vec<Map<String, Value>> = test_rows.iter().map(|(r, _)| r.clone()).collect();
    let batch = predictor.predict_batch(&rows_only).unwrap();
    assert_eq!(batch.len(), 60);
    let continual = home.continual();
    let logged = continual.predictions("iris-lr", &PredictionFilter::default()).unwrap();
    assert_eq!(logged.len(), 71);
    assert_eq!(logged[0].id, batch[59].prediction_id, "newest first");
    assert_eq!(logged[0].features.as_ref(), Some(&rows_only[59]));

    // Labels join later; realised accuracy comes from them.
    let mut correct = 0;
    for (pred, (_, y)) in batch.iter().zip(&test_rows) {
        let rec = continual.label(&pred.prediction_id, &json!(y)).unwrap();
        assert_eq!(rec.actual, Some(json!(y)));
        assert_eq!(rec.correct, Some(pred.label == json!(y)));
        correct += usize::from(pred.label == json!(y));
    }
    let acc = continual.realised_accuracy("iris-lr", &AccuracyOptions::default()).unwrap();
    assert_eq!((acc.labelled, acc.correct), (60, correct as u64));
    assert_eq!(acc.accuracy, Some(correct as f64 / 60.0));
    assert!(acc.accuracy.unwrap() > 0.8);
    // Labelling again overwrites: a wrong label turns a hit into a miss.
    let first = &batch[0];
    let wrong = CLASSES.iter().find(|c| json!(c) != first.label).unwrap();
    let rec = continual.label(&first.prediction_id, &json!(wrong)).unwrap();
    assert_eq!(rec.correct, Some(false));
    let acc2 = continual.realised_accuracy("iris-lr", &AccuracyOptions::default()).unwrap();
    assert_eq!(acc2.labelled, 60);
    assert_eq!(acc2.correct, acc.correct - u64::from(first.label == json!(test_rows[0].1)));
    let last10 = continual.realised_accuracy("iris-lr", &AccuracyOptions { last: Some(10), ..Default::default() });
    assert_eq!(last10.unwrap().labelled, 10);
    let since = |s: &str| AccuracyOptions { since: Some(s.into()), ..Default::default() };
    assert_eq!(continual.realised_accuracy("iris-lr", &since("2000-01-01T00:00:00Z")).unwrap().labelled, 60);
    assert_eq!(continual.realised_accuracy("iris-lr", &since("2999-01-01T00:00:00Z")).unwrap().labelled, 0);
    let e = continual.realised_accuracy("iris-lr", &since("yesterday")).unwrap_err();
    assert_eq!(field_of(&e).1.as_deref(), Some("since"));
    // Bad labels: typed errors naming the id or the field, nothing written.
    let e = continual.label(&"pred_nope".into(), &json!("a")).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);
    assert!(e.to_string().contains("pred_nope"), "{e}");
    for y in [json!("zebra"), json!(5), json!(1.5), json!(null)] {
        let e = continual.label(&batch[1].prediction_id, &y).unwrap_err();
        assert_eq!(field_of(&e).1.as_deref(), Some("label"), "{y}: {e}");
    }
    assert_eq!(continual.prediction(&batch[1].prediction_id).unwrap().actual, Some(json!(test_rows[1].1)));

    // Bad features: typed errors naming the record and column; nothing logged.
    let before = continual.predictions("iris-lr", &PredictionFilter::default()).unwrap().len();
    let mut missing = rows_only[0].clone();
    missing.remove("x2");
    let mut extra = rows_only[0].clone();
    extra.insert("x9".into(), json!(1));
    let mut mistyped = rows_only[0].clone();
    mistyped.insert("x1".into(), json!("tall"));
    for (bad, col) in [(missing, "x2"), (extra, "x9"), (mistyped, "x1")] {
        let e = predictor.predict(&bad).unwrap_err();
        assert_eq!(field_of(&e), (Some(1), Some(col.to_string())), "{e}");
        let mut batch = rows_only[..4].to_vec();
        batch[2] = bad;
        let e = predictor.predict_batch(&batch).unwrap_err();
        assert_eq!(field_of(&e), (Some(3), Some(col.to_string())), "{e}");
    }
    assert_eq!(continual.predictions("iris-lr", &PredictionFilter::default()).unwrap().len(), before);
    // An unseen category is counted, not an error.
    let mut purple = rows_only[0].clone();
    purple.insert("color".into(), json!("purple"));
    assert_eq!(predictor.predict(&purple).unwrap().unseen, vec!["color".to_string()]);
    let labelled = PredictionFilter { labelled: Some(true), ..Default::default() };
    assert_eq!(continual.predictions("iris-lr", &labelled).unwrap().len(), 60);

    // Evaluate: accuracy as the predictions say; the metrics are rows listed per model.
    let ev = continual.evaluate("iris-lr", "iris-test").unwrap();
    let hits = batch.iter().zip(&test_rows).filter(|(p, (_, y))| p.label == json!(y)).count();
    assert_eq!(ev.metrics["accuracy"], hits as f64 / 60.0);
    assert_eq!((ev.rows, &ev.dataset_id, ev.model.as_str()), (60, &test.id, "iris-lr@1"));
    let expected_conf: f64 = batch.iter().map(|p| p.confidence).sum::<f64>() / 60.0;
    let nll: f64 = batch.iter().zip(&test_rows).map(|(p, (_, y))| -p.probabilities[*y].ln()).sum::<f64>() / 60.0;
    assert!((ev.metrics["log_loss"] - nll).abs() < 1e-9, "{} vs {nll}", ev.metrics["log_loss"]);
    assert!(ev.metrics["f1_macro"] > 0.8 && ev.metrics["f1_macro"] <= 1.0);
    assert!((0.0..1.0).contains(&ev.metrics["ece"]));
    let ev2 = continual.evaluate("iris-mlp", "iris-test").unwrap();
    // Stored rows read back (JSON numbers: within an ulp).
    let listed = continual.evaluations("iris-lr").unwrap();
    assert_eq!(listed.iter().map(|e| &e.id).collect::<Vec<_>>(), vec![&ev.id]);
    for (k, v) in &ev.metrics {
        assert!((listed[0].metrics[k] - v).abs() < 1e-12, "{k}");
    }
    assert_eq!(continual.evaluations("iris-mlp").unwrap()[0].id, ev2.id);
    let e = continual.evaluate("iris-lr", "nope").unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound);

    // Drift: the last 60 predictions (same distribution), a shifted dataset, a small window.
    let same = continual.drift("iris-lr", &DriftWindow::Predictions(60)).unwrap();
    let report = same.report.clone().unwrap();
    assert_eq!(same.verdict, DriftVerdict::NoDrift, "{report:?}");
    assert_eq!(report.window_rows, 60);
    assert!(report.columns.iter().all(|c| c.psi.is_some()));
    // The window is the purple row and 59 of the batch: its expected accuracy is
    // their mean confidence.
    let window = continual.predictions("iris-lr", &PredictionFilter { limit: Some(60), ..Default::default() }).unwrap();
    let mean_conf = window.iter().map(|p| p.confidence).sum::<f64>() / 60.0;
    assert!((same.expected_accuracy.unwrap() - mean_conf).abs() < 1e-12);
    assert!((mean_conf - expected_conf).abs() < 0.05);
    assert_eq!(same.labelled, 59);
    let moved = continual.drift("iris-lr", &DriftWindow::Dataset(shifted.id.clone())).unwrap();
    assert_eq!(moved.verdict, DriftVerdict::Drift, "{:?}", moved.report);
    assert!(moved.report.as_ref().unwrap().drifted_columns >= 2);
    assert!(moved.expected_accuracy.is_some());
    let few = continual.drift("iris-lr", &DriftWindow::Predictions(20)).unwrap();
    assert_eq!(few.verdict, DriftVerdict::InsufficientData);
    let checks = continual.drift_checks("iris-lr").unwrap();
    assert_eq!(checks.iter().map(|c| c.id.clone()).collect::<Vec<_>>(), vec![few.id, moved.id, same.id]);
    assert_eq!(checks[1].window, format!("dataset:{}", shifted.id));

    // Hashes only: no features logged, and a prediction window refuses to check drift.
    // Retention keeps the newest rows only.
    let hashed = home
        .predictor("iris-mlp", &PredictorOptions { log_features: false, max_rows: Some(5), ..Default::default() })
        .unwrap();
    let out = hashed.predict_batch(&rows_only[..8]).unwrap();
    let kept = continual.predictions("iris-mlp", &PredictionFilter::default()).unwrap();
    assert_eq!(kept.len(), 5);
    assert_eq!(kept[0].id, out[7].prediction_id);
    assert_eq!(kept[4].id, out[3].prediction_id);
    assert!(kept.iter().all(|p| p.features.is_none() && p.features_sha256.len() == 64));
    let e = continual.drift("iris-mlp", &DriftWindow::Predictions(5)).unwrap_err();
    assert_eq!(field_of(&e).1.as_deref(), Some("window"), "{e}");
    assert!(continual.drift_checks("iris-mlp").unwrap().is_empty(), "a failed check stores nothing");

    // A predictor serves classifiers only; the registry deletes a classifier.
    home.models().create_preset("nano", &Default::default()).unwrap();
    let e = home.predictor("nano", &PredictorOptions::default()).unwrap_err();
    assert_eq!(field_of(&e).1.as_deref(), Some("model"));
    let e = home.generator("iris-lr", &Default::default()).unwrap_err();
    eprintln!("generator on a classifier: {e}");
    assert_ne!(e.kind(), ErrorKind::Internal);
    home.models().delete("iris-mlp", false).unwrap();
    assert_eq!(home.models().resolve("iris-mlp").unwrap_err().kind(), ErrorKind::NotFound);
    assert!(!mlp.path.exists());
}

#[test]
fn language_models_evaluate_and_check_loss_drift() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path().join("home")).unwrap();
    let lines: Vec<String> =
        (0..40).map(|i| json!({"text": format!("the cat sat on mat number {i}")}).to_string()).collect();
    let text = common::write(dir.path(), "text.jsonl", (lines.join("\n") + "\n").as_bytes());
    let ds = import(&home, &text, "cats");
    let few = common::write(dir.path(), "few.jsonl", (lines[..5].join("\n") + "\n").as_bytes());
    let few = import(&home, &few, "few-cats");
    home.models().create_preset("nano", &Default::default()).unwrap();

    // Loss and perplexity agree with Generator::score (token-weighted).
    let continual = home.continual();
    let ev = continual.evaluate("nano", "cats").unwrap();
    let texts: Vec<String> = (0..40).map(|i| format!("the cat sat on mat number {i}")).collect();
    let g = home.generator("nano", &Default::default()).unwrap();
    let scores = g.score(&texts).unwrap();
    let tokens: usize = scores.iter().map(|s| s.tokens).sum();
    let loss = scores.iter().map(|s| s.loss * s.tokens as f64).sum::<f64>() / tokens as f64;
    assert!((ev.metrics["loss"] - loss).abs() < 1e-9, "{} vs {loss}", ev.metrics["loss"]);
    assert!((ev.metrics["perplexity"] - loss.exp()).abs() < 1e-9);
    assert_eq!(ev.rows, 40);
    assert_eq!(continual.evaluations("nano").unwrap().len(), 1);

    // A preset has no dataset to compare losses with; a trained model does.
    let e = continual.drift("nano", &DriftWindow::Dataset(ds.id.clone())).unwrap_err();
    assert_eq!(field_of(&e).1.as_deref(), Some("model"));
    let spec = TrainSpec {
        base: "nano".into(),
        dataset: "cats".into(),
        method: Method::Full,
        max_steps: Some(1),
        batch_size: 4,
        seq_len: 32,
        output_name: Some("cats-lm".into()),
        ..Default::default()
    };
    train(&home, &spec);
    let same = continual.drift("cats-lm", &DriftWindow::Dataset(ds.id.clone())).unwrap();
    assert_eq!(same.verdict, DriftVerdict::NoDrift);
    let loss = same.loss.unwrap();
    assert_eq!((loss.statistic, loss.reference_samples, loss.window_samples), (0.0, 40, 40));
    let small = continual.drift("cats-lm", &DriftWindow::Dataset(few.id)).unwrap();
    assert_eq!(small.verdict, DriftVerdict::InsufficientData);
    let e = continual.drift("cats-lm", &DriftWindow::Predictions(10)).unwrap_err();
    assert_eq!(field_of(&e).1.as_deref(), Some("window"));
    assert_eq!(continual.drift_checks("cats-lm").unwrap().len(), 2);
}

/// Cancel is honoured around the fit (it cannot checkpoint mid-fit); resuming runs the
/// same deterministic fit, so the model equals a fresh run's, file for file.
#[test]
fn a_cancelled_classifier_job_resumes_to_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    let home = Home::open(dir.path().join("home")).unwrap();
    import(&home, &write_jsonl(dir.path(), "train.jsonl", &rows(90, 7, 0.0)), "iris");
    let spec = TrainSpec {
        dataset: "iris".into(),
        method: Method::Classifier(ClassifierConfig {
            model: ClassifierModel::Mlp,
            hidden: vec![4],
            max_iter: 20,
            ..Default::default()
        }),
        output_name: Some("small".into()),
        ..Default::default()
    };
    let engine = home.training();
    let job = engine.create_job(&spec).unwrap();
    let cancel = CancelToken::new();
    cancel.cancel();
    let mut sink = RecordingSink::new();
    let e = engine.run(&job.id, &mut sink, &cancel).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Cancelled);
    let events = sink.events();
    assert!(matches!(events.last(), Some(Event::JobFinished { status, .. }) if status.as_str() == "cancelled"));
    assert_eq!(engine.job(&job.id).unwrap().status.as_str(), "cancelled");
    assert!(home.models().resolve("small").is_err(), "nothing registered");

    let resumed = engine.resume(&job.id, &mut RecordingSink::new(), &CancelToken::new()).unwrap();
    let (fresh, _) = train(&home, &spec);
    let (a, b) = (home.models().get(&resumed.model).unwrap(), home.models().get(&fresh.model).unwrap());
    assert_eq!((a.version, b.version), (1, 2));
    assert_eq!(a.sha256, b.sha256, "same seed, same files");
    assert_eq!(resumed.steps, fresh.steps);
    assert_eq!(resumed.final_loss, fresh.final_loss);
}

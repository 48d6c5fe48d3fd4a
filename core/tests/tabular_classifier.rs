//! Tabular classifiers against scikit-learn, and their preprocessing.
//
// The fixtures in tests/fixtures/tabular/ were made by
// tests/fixtures/make_tabular_refs.py (scikit-learn 1.9.1; not run in CI): the bundled
// iris, wine, breast_cancer and digits datasets split with
// train_test_split(test_size=0.25, stratify=y, random_state=0), and scikit-learn's test
// accuracy for StandardScaler + LogisticRegression(C=1, lbfgs) and StandardScaler +
// MLPClassifier(hidden (32,), random_state=0). For iris also the probabilities of a
// converged LogisticRegression (tol 1e-10).
#![allow(clippy::unwrap_used)]

use anneal::tabular::classifier::{ClassWeight, Classifier, ClassifierKind, FitOptions, Optimizer};
use anneal::tabular::preprocess::{LabelEncoder, PreprocessOptions, Preprocessor};
use anneal::types::ColumnKind;
use serde_json::{json, Map, Value};

const REFS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tabular");

struct Split {
    train: Vec<Map<String, Value>>,
    y_train: Vec<Value>,
    test: Vec<Map<String, Value>>,
    y_test: Vec<Value>,
    refs: Value,
}

fn rows(features: &[String], x: &Value) -> Vec<Map<String, Value>> {
    x.as_array()
        .unwrap()
        .iter()
        .map(|r| features.iter().cloned().zip(r.as_array().unwrap().iter().cloned()).collect())
        .collect()
}

fn load(name: &str) -> Split {
    let refs: Value = serde_json::from_str(&std::fs::read_to_string(format!("{REFS}/{name}.json")).unwrap()).unwrap();
    let features: Vec<String> = serde_json::from_value(refs["features"].clone()).unwrap();
    Split {
        train: rows(&features, &refs["x_train"]),
        y_train: refs["y_train"].as_array().unwrap().clone(),
        test: rows(&features, &refs["x_test"]),
        y_test: refs["y_test"].as_array().unwrap().clone(),
        refs,
    }
}

fn accuracy(m: &Classifier, rows: &[Map<String, Value>], y: &[Value]) -> f64 {
    let p = m.predict(rows).unwrap();
    p.iter().zip(y).filter(|(a, b)| a == b).count() as f64 / y.len() as f64
}

fn mlp() -> FitOptions {
    FitOptions { kind: ClassifierKind::Mlp, hidden: vec![32], max_iter: 300, ..Default::default() }
}

fn row(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}

#[test]
fn logistic_regression_probabilities_match_scikit_learn_on_iris() {
    let s = load("iris");
    let opts = FitOptions { tol: 1e-10, max_iter: 10_000, ..Default::default() };
    let (m, h) = Classifier::fit(&s.train, &s.y_train, &opts).unwrap();
    assert!(h.converged, "{:?}", h.epochs.last());
    assert_eq!(h.optimizer, Optimizer::Lbfgs);
    // Classes sorted as LabelEncoder; standardisation as StandardScaler.
    assert_eq!(Value::from(m.classes().to_vec()), s.refs["classes"]);
    let pre = &m.config().preprocess;
    for (i, c) in pre.columns.iter().enumerate() {
        let anneal::tabular::preprocess::ColumnEncoding::Numeric { mean, scale, .. } = c else { panic!() };
        assert!((mean - s.refs["scaler_mean"][i].as_f64().unwrap()).abs() < 1e-12);
        assert!((scale - s.refs["scaler_scale"][i].as_f64().unwrap()).abs() < 1e-12);
    }
    let p = m.predict_proba(&s.test).unwrap();
    let mut worst: f64 = 0.0;
    for (ours, theirs) in p.rows.iter().zip(s.refs["logreg_proba_test"].as_array().unwrap()) {
        for (a, b) in ours.iter().zip(theirs.as_array().unwrap()) {
            worst = worst.max((a - b.as_f64().unwrap()).abs());
        }
    }
    println!("iris logistic regression: largest probability difference to scikit-learn {worst:e}");
    assert!(worst < 1e-4, "largest probability difference to scikit-learn {worst}");
}

#[test]
fn accuracy_is_within_two_points_of_scikit_learn() {
    // scikit-learn's figures (LogisticRegression / MLPClassifier): iris 0.974 / 0.974,
    // wine 1.000 / 1.000, breast_cancer 0.958 / 0.958, digits 0.969 / 0.980.
    let mut report = Vec::new();
    let mut results = Vec::new();
    for name in ["iris", "wine", "breast_cancer", "digits"] {
        let s = load(name);
        let (lr, _) = Classifier::fit(&s.train, &s.y_train, &FitOptions::default()).unwrap();
        let (nn, h) = Classifier::fit(&s.train, &s.y_train, &mlp()).unwrap();
        let (a_lr, a_nn) = (accuracy(&lr, &s.test, &s.y_test), accuracy(&nn, &s.test, &s.y_test));
        let (r_lr, r_nn) = (s.refs["logreg_accuracy"].as_f64().unwrap(), s.refs["mlp_accuracy"].as_f64().unwrap());
        report.push(format!(
            "{name}: logreg {a_lr:.4} (sklearn {r_lr:.4}), mlp {a_nn:.4} (sklearn {r_nn:.4}, {} epochs)",
            h.epochs.len()
        ));
        results.push((name, a_lr, r_lr, a_nn, r_nn, s.y_test.len()));
    }
    println!("{}", report.join("\n"));
    for (name, a_lr, r_lr, a_nn, r_nn, n) in results {
        // Two points, or one test row where a row is worth more (wine: 45 rows, 2.2 points).
        let slack = (0.02f64).max(1.0 / n as f64) + 1e-9;
        assert!(a_lr >= r_lr - slack, "{name} logistic regression {a_lr} vs scikit-learn {r_lr}");
        assert!(a_nn >= r_nn - slack, "{name} MLP {a_nn} vs scikit-learn {r_nn}");
    }
}

#[test]
fn fits_are_deterministic_for_a_seed() {
    let s = load("wine");
    let opts = FitOptions { validation_fraction: 0.2, patience: 5, ..mlp() };
    let (a, ha) = Classifier::fit(&s.train, &s.y_train, &opts).unwrap();
    let (b, hb) = Classifier::fit(&s.train, &s.y_train, &opts).unwrap();
    assert_eq!(ha, hb);
    assert_eq!(a.predict_proba(&s.test).unwrap(), b.predict_proba(&s.test).unwrap());
    let (c, _) = Classifier::fit(&s.train, &s.y_train, &FitOptions { seed: 1, ..opts }).unwrap();
    assert_ne!(a.predict_proba(&s.test).unwrap(), c.predict_proba(&s.test).unwrap());
}

#[test]
fn early_stopping_keeps_the_best_validation_epoch() {
    let s = load("breast_cancer");
    let opts = FitOptions { validation_fraction: 0.2, patience: 3, learning_rate: 0.05, max_iter: 500, ..mlp() };
    let (m, h) = Classifier::fit(&s.train, &s.y_train, &opts).unwrap();
    assert_eq!(h.train_rows + h.validation_rows, s.train.len());
    assert_eq!(h.validation_rows, 85); // round(0.2 * 159) + round(0.2 * 267)
    assert!(h.stopped_early, "{} epochs", h.epochs.len());
    assert_eq!(h.epochs.len(), h.best_epoch + 3);
    let best = h.epochs[h.best_epoch - 1].val_loss.unwrap();
    assert!(h.epochs.iter().all(|e| e.val_loss.unwrap() >= best));
    assert!(accuracy(&m, &s.test, &s.y_test) > 0.9);
    // L-BFGS has no early stopping.
    let bad = FitOptions { validation_fraction: 0.2, ..Default::default() };
    assert_eq!(Classifier::fit(&s.train, &s.y_train, &bad).unwrap_err().code(), "invalid_config");
}

#[test]
fn balanced_class_weights_raise_minority_recall() {
    // 190 rows of class "a" around x = 0, 10 of class "b" around x = 1.2 (overlapping).
    let mut rows = Vec::new();
    let mut labels = Vec::new();
    for i in 0..200 {
        let minority = i % 20 == 0;
        let jitter = ((i * 37) % 100) as f64 / 100.0 - 0.5;
        rows.push(row(json!({ "x": if minority { 1.2 } else { 0.0 } + jitter })));
        labels.push(json!(if minority { "b" } else { "a" }));
    }
    let (plain, _) = Classifier::fit(&rows, &labels, &FitOptions::default()).unwrap();
    let opts = FitOptions { class_weight: ClassWeight::Balanced, ..Default::default() };
    let (balanced, _) = Classifier::fit(&rows, &labels, &opts).unwrap();
    let w = &balanced.config().class_weights;
    assert!((w[0] - 200.0 / (2.0 * 190.0)).abs() < 1e-12 && (w[1] - 10.0).abs() < 1e-12, "{w:?}");
    let recall = |m: &Classifier| {
        let p = m.predict(&rows).unwrap();
        p.iter().zip(&labels).filter(|(a, b)| *b == "b" && a == b).count()
    };
    assert!(recall(&balanced) > recall(&plain), "{} vs {}", recall(&balanced), recall(&plain));
    assert!(recall(&balanced) >= 8);
}

#[test]
fn learn_updates_incrementally_and_refuses_bad_rows_without_change() {
    let s = load("iris");
    let (mut m, _) = Classifier::fit(&s.train[..30], &s.y_train[..30], &FitOptions::default()).unwrap();
    let before = m.predict_proba(&s.test).unwrap();
    // Steps on the rest of the training rows, one at a time (learn_one) then in batches.
    let mut first = None;
    let mut last = 0.0;
    for _ in 0..20 {
        for (r, y) in s.train[30..].iter().zip(&s.y_train[30..]) {
            m.learn(std::slice::from_ref(r), std::slice::from_ref(y)).unwrap();
        }
        last = m.learn(&s.train[30..], &s.y_train[30..]).unwrap();
        first.get_or_insert(last);
    }
    assert!(last < first.unwrap(), "loss {last} after vs {} before", first.unwrap());
    assert_ne!(m.predict_proba(&s.test).unwrap(), before);
    assert!(accuracy(&m, &s.test, &s.y_test) >= 0.9);
    // Unknown class and bad rows: typed errors, no change.
    let snapshot = m.predict_proba(&s.test).unwrap();
    let e = m.learn(&s.train[..1], &[json!("rosa")]).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    assert!(e.to_string().contains("rosa"), "{e}");
    let mut bad = s.train[..2].to_vec();
    bad[1].insert("petal width (cm)".into(), json!("wide"));
    let e = m.learn(&bad, &s.y_train[..2]).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    assert!(e.to_string().contains("record 2") && e.to_string().contains("petal width"), "{e}");
    assert_eq!(m.predict_proba(&s.test).unwrap(), snapshot);
}

#[test]
fn save_and_load_round_trip_and_refuse_a_damaged_model() {
    let s = load("wine");
    let (m, _) = Classifier::fit(&s.train, &s.y_train, &mlp()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    m.save(dir.path()).unwrap();
    let back = Classifier::load(dir.path()).unwrap();
    // Weights are bit-exact (safetensors); the JSON config's floats may differ in the last
    // bit (serde_json parses without its `float_roundtrip` feature).
    let (a, b) = (back.config(), m.config());
    assert_eq!((&a.layers, &a.labels, &a.class_weights, a.kind), (&b.layers, &b.labels, &b.class_weights, b.kind));
    assert_eq!(a.preprocess.feature_names(), b.preprocess.feature_names());
    let (pa, pb) = (back.predict_proba(&s.test).unwrap(), m.predict_proba(&s.test).unwrap());
    for (x, y) in pa.rows.iter().flatten().zip(pb.rows.iter().flatten()) {
        assert!((x - y).abs() < 1e-12, "{x} vs {y}");
    }
    assert_eq!(back.predict(&s.test).unwrap(), m.predict(&s.test).unwrap());
    // A config whose layers do not fit the weights.
    let cfg = dir.path().join("classifier.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    v["layers"][1] = json!(33);
    std::fs::write(&cfg, serde_json::to_vec(&v).unwrap()).unwrap();
    let e = Classifier::load(dir.path()).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
    assert!(e.to_string().contains("model.safetensors"), "{e}");
    std::fs::write(&cfg, b"{").unwrap();
    assert_eq!(Classifier::load(dir.path()).unwrap_err().code(), "invalid_data");
}

#[test]
fn preprocessing_one_hot_missing_values_and_unseen_categories() {
    let train = vec![
        row(json!({"age": 30, "city": "Paris", "member": true, "zip": 75})),
        row(json!({"age": null, "city": "Lyon", "member": false, "zip": 69})),
        row(json!({"age": 50, "city": "Paris", "member": true, "zip": 75})),
    ];
    let opts = PreprocessOptions {
        kinds: [("zip".to_string(), ColumnKind::Categorical)].into(),
        missing_indicator: true,
        ..Default::default()
    };
    let p = Preprocessor::fit(&train, &opts).unwrap();
    assert_eq!(
        p.feature_names(),
        ["zip=69", "zip=75", "age", "age__missing", "city=Lyon", "city=Paris", "member=false", "member=true"]
    );
    let t = p.transform(&[row(json!({"age": null, "city": "Nice", "member": true, "zip": "75"}))]).unwrap();
    // Missing age -> mean (0 after scaling) and the indicator; unseen Nice -> zeros, counted.
    assert_eq!(t.data, [0.0, 1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]);
    assert_eq!(t.unseen.get("city"), Some(&1));
    let t = p.transform(&[row(json!({"age": 50, "city": "Lyon", "member": false, "zip": 69}))]).unwrap();
    assert_eq!(t.data, [1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0]); // (50 - 40) / 10
    assert!(t.unseen.is_empty());
    // Serialised with the model.
    let back: Preprocessor = serde_json::from_value(serde_json::to_value(&p).unwrap()).unwrap();
    assert_eq!(back, p);

    let good = json!({"age": 1, "city": "Paris", "member": true, "zip": 75});
    let cases = [
        ("age", json!({"city": "Paris", "member": true, "zip": 75}), "missing"),
        ("age", json!({"age": "old", "city": "Paris", "member": true, "zip": 75}), "numeric"),
        ("city", json!({"age": 1, "city": [1], "member": true, "zip": 75}), "categorical"),
        ("height", json!({"age": 1, "city": "Paris", "member": true, "zip": 75, "height": 2}), "no such column"),
    ];
    for (field, bad, why) in cases {
        let e = p.transform(&[row(good.clone()), row(bad)]).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        let msg = e.to_string();
        assert!(msg.contains("record 2") && msg.contains(field) && msg.contains(why), "{msg}");
    }
    // A mistyped training value names its record and column.
    let mut bad_train = train.clone();
    bad_train[2].insert("age".into(), json!("fifty"));
    let e = Preprocessor::fit(&bad_train, &opts).unwrap_err();
    assert!(e.to_string().contains("record 3") && e.to_string().contains("age"), "{e}");
}

#[test]
fn labels_are_encoded_in_sorted_order_and_checked() {
    let enc = LabelEncoder::fit(&[json!("b"), json!("a"), json!("c"), json!("a")]).unwrap();
    assert_eq!(enc.classes, [json!("a"), json!("b"), json!("c")]);
    assert_eq!(enc.encode(&[json!("c"), json!("a")]).unwrap(), [2, 0]);
    let enc = LabelEncoder::fit(&[json!(10), json!(-1), json!(2)]).unwrap();
    assert_eq!(enc.classes, [json!(-1), json!(2), json!(10)]);
    let enc = LabelEncoder::fit(&[json!(true), json!(false)]).unwrap();
    assert_eq!(enc.classes, [json!(false), json!(true)]);
    for (labels, why) in [
        (vec![json!("a"), json!(1)], "record 2"),
        (vec![json!(1.5), json!(1)], "record 1"),
        (vec![json!("a"), json!(null)], "record 2"),
        (vec![json!("a"), json!("a")], "at least 2 classes"),
    ] {
        let e = LabelEncoder::fit(&labels).unwrap_err();
        assert_eq!(e.code(), "invalid_data");
        assert!(e.to_string().contains(why) && e.to_string().contains("label"), "{e}");
    }
    let rows = vec![row(json!({"x": 1})), row(json!({"x": 2}))];
    let e = Classifier::fit(&rows, &[json!("a")], &FitOptions::default()).unwrap_err();
    assert_eq!(e.code(), "invalid_data");
}

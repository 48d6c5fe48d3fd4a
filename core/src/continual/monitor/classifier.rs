//! What a monitor does its own way for a classifier: its triggers read the production
//! model's labelled predictions, its retrain refits on them (and a replay share of the
//! old training rows), its shadow scores the candidate on logged traffic.

use serde_json::{json, Map, Value};

use super::{spread, Decision, Draft, Monitor, Prepared, Signals};
use crate::catalog::monitor::{self as sql, MonitorRow};
use crate::continual::{argmax, read_records};
use crate::error::{Error, Result};
use crate::tabular::classifier::Classifier;
use crate::types::{
    AccuracyOptions, DatasetFormat, DecisionKind, DriftVerdict, DriftWindow, Event, ImportOptions, JobId, Method,
    ModelRecord, OnDuplicate, PredictionFilter, TrainSpec,
};
use crate::util;

/// The production model's reference accuracy: held out at training time, else on
/// its training rows.
fn reference_accuracy(m: &ModelRecord) -> Option<f64> {
    let metrics = m.lineage.metrics.as_ref()?;
    metrics.eval_accuracy.or(metrics.train_accuracy)
}

/// Reads the accuracy triggers (realised accuracy of the last `window` labelled
/// predictions), the drift of the last `drift_window` predictions' features and the
/// labels counted since the last retrain.
pub(super) fn signals(mon: &Monitor, row: &MonitorRow, prod: &ModelRecord, draft: &mut Draft) -> Result<Signals> {
    let policy = &row.rec.policy;
    let (t, g) = (&policy.triggers, &policy.guards);
    let continual = mon.continual();
    let acc = continual.realised_accuracy(&prod.id, &AccuracyOptions { since: None, last: Some(t.window) })?;
    draft.report.realised_accuracy = acc.accuracy;
    draft.report.labelled = acc.labelled;
    let mut s = Signals::default();
    let enough = acc.labelled >= g.min_samples;
    if let Some(a) = acc.accuracy.filter(|_| enough) {
        if let Some(floor) = t.accuracy_floor {
            if a < floor {
                s.breach = Some((
                    "accuracy_floor",
                    format!(
                        "realised accuracy {a:.4} on the last {} labelled predictions is under the floor {floor}",
                        acc.labelled
                    ),
                ));
            }
        }
        if let (None, Some(drop)) = (&s.breach, t.relative_drop) {
            match reference_accuracy(prod) {
                Some(r) if a < r * (1.0 - drop) => {
                    s.breach = Some((
                        "relative_drop",
                        format!(
                            "realised accuracy {a:.4} is more than {:.1} % under the reference accuracy {r:.4}",
                            drop * 100.0
                        ),
                    ))
                }
                Some(_) => {}
                None => s.notes.push(format!("{} has no reference accuracy: relative_drop skipped", prod.reference())),
            }
        }
    } else if t.accuracy_floor.is_some() || t.relative_drop.is_some() {
        s.notes.push(format!("{} labelled predictions, under min_samples {}", acc.labelled, g.min_samples));
    }
    if let (None, Some(n)) = (&s.breach, t.drift_window) {
        let check = continual.drift(&prod.id, &DriftWindow::Predictions(n))?;
        if check.verdict == DriftVerdict::Drift {
            let report = check.report.as_ref();
            let drifted: Vec<String> = report
                .map(|r| r.columns.iter().filter(|c| c.drifted).map(|c| c.column.clone()).collect())
                .unwrap_or_default();
            let rows = report.map(|r| r.window_rows).unwrap_or(0);
            let score = report.map(|r| r.drift_share).unwrap_or(1.0);
            let threshold = crate::types::DriftOptions::default().drift_share;
            let reason = format!(
                "drift on the last {rows} predictions: {} of the columns drifted ({})",
                drifted.len(),
                drifted.join(", ")
            );
            draft.events.push(Event::DriftDetected {
                monitor: mon.name.clone(),
                model: prod.reference(),
                model_id: prod.id.0.clone(),
                signal: "features".into(),
                window_rows: rows,
                drifted_columns: drifted,
                score,
                threshold,
                expected_accuracy: check.expected_accuracy,
            });
            draft.decisions.push(
                Decision::new(DecisionKind::DriftDetected, reason.clone(), json!({"drift_check": check.id}))
                    .trigger(Some("drift")),
            );
            s.breach = Some(("drift", reason));
        }
    }
    if let Some(n) = t.new_labels {
        let since = row.rec.last_retrain_at.as_deref();
        let count = mon.store.catalog.read(|c| sql::labelled_since(c, &prod.id, since))?;
        if count >= n {
            s.fire = Some(("new_labels", format!("{count} predictions labelled since the last retrain (>= {n})")));
        }
    }
    Ok(s)
}

/// A stored tabular record (`{"features": {...}, "label": y}`) as the flat record an
/// import reads.
fn flatten(r: Value) -> Value {
    match r {
        Value::Object(mut o) => {
            let mut flat = match o.remove("features") {
                Some(Value::Object(f)) => f,
                _ => Map::new(),
            };
            flat.insert("label".into(), o.remove("label").unwrap_or(Value::Null));
            Value::Object(flat)
        }
        other => other,
    }
}

/// Writes the retrain's datasets and creates its job: the training rows (a
/// `replay_fraction` share of the production model's training dataset plus the
/// labelled predictions not held out) and the gate's evaluation dataset.
pub(super) fn prepare(mon: &Monitor, row: &MonitorRow, prod: &ModelRecord) -> Result<Prepared> {
    let policy = &row.rec.policy;
    let datasets = mon.datasets();
    let mut spec: TrainSpec = prod
        .lineage
        .spec
        .clone()
        .unwrap_or_else(|| TrainSpec { method: Method::Classifier(Default::default()), ..Default::default() });
    if let Some(c) = &policy.action.config {
        spec.method = Method::Classifier(c.clone());
    }
    if !matches!(spec.method, Method::Classifier(_)) {
        return Err(Error::config("action.config", format!("{} was not trained as a classifier", prod.reference())));
    }
    // New rows: the production model's labelled predictions, newest first.
    let preds = mon.continual().predictions(&prod.id, &PredictionFilter { labelled: Some(true), limit: None })?;
    let mut new_rows = Vec::with_capacity(preds.len());
    for p in &preds {
        let (Some(f), Some(y)) = (&p.features, &p.actual) else {
            if p.features.is_none() {
                return Err(Error::config(
                    "action",
                    format!(
                        "prediction {} of {} was logged as a features hash only (log_features = false): \
                         a retrain needs the features of labelled predictions",
                        p.id,
                        prod.reference()
                    ),
                ));
            }
            continue;
        };
        let mut o = f.clone();
        o.insert("label".into(), y.clone());
        new_rows.push(Value::Object(o));
    }
    let (eval_id, train_new) = match &policy.gate.dataset {
        Some(ds) => (datasets.get(ds.clone())?.id, new_rows),
        None => {
            if new_rows.len() < 2 {
                return Err(Error::config(
                    "gate.dataset",
                    format!(
                        "{} labelled predictions: at least 2 are needed to hold some out for the gate \
                         (or set gate.dataset)",
                        new_rows.len()
                    ),
                ));
            }
            let hold =
                ((new_rows.len() as f64 * policy.gate.holdout_fraction).ceil() as usize).clamp(1, new_rows.len() - 1);
            let train = new_rows.split_off(hold);
            let eval = datasets.import_records(
                new_rows.into_iter().map(Ok),
                &ImportOptions {
                    name: Some(util::new_id(&format!("{}-gate", row.rec.model_name))),
                    format: Some(DatasetFormat::Tabular),
                    on_duplicate: OnDuplicate::Reuse,
                    ..Default::default()
                },
            )?;
            (eval.id, train)
        }
    };
    // Old rows: an even share of the production model's training dataset.
    let mut old = Vec::new();
    let mut old_total = 0usize;
    if policy.action.replay_fraction > 0.0 {
        if let Some(ds) = &prod.lineage.dataset {
            let ds = datasets.get(ds.clone())?;
            let records = read_records(&ds.path)?;
            old_total = records.len();
            let share = policy.action.replay_fraction;
            old.extend(records.into_iter().enumerate().filter(|(i, _)| spread(*i, share)).map(|(_, r)| flatten(r)));
        }
    }
    let (n_old, n_new) = (old.len(), train_new.len());
    if n_old + n_new == 0 {
        return Err(Error::config("action.replay_fraction", "leaves no row to train on"));
    }
    let train = datasets.import_records(
        old.into_iter().chain(train_new).map(Ok),
        &ImportOptions {
            name: Some(util::new_id(&format!("{}-retrain", row.rec.model_name))),
            format: Some(DatasetFormat::Tabular),
            on_duplicate: OnDuplicate::Reuse,
            ..Default::default()
        },
    )?;
    spec.dataset = train.id.clone();
    spec.output_name = Some(row.rec.model_name.clone());
    let job = mon.engine().create_job(&spec)?;
    let details = json!({
        "dataset_id": train.id,
        "eval_dataset_id": eval_id,
        "replayed_rows": n_old,
        "of_training_rows": old_total,
        "source_dataset_id": prod.lineage.dataset,
        "labelled_prediction_rows": n_new,
        "production": prod.reference(),
    });
    Ok(Prepared { job: job.id, eval: eval_id, details, feeds: Vec::new() })
}

/// Scores `cand` on the logged features of production's last `window` labelled
/// predictions, without serving it.
pub(super) fn shadow(
    mon: &Monitor,
    row: &MonitorRow,
    prod: &ModelRecord,
    cand: &ModelRecord,
    _job: &JobId,
) -> Result<(String, Value)> {
    let window = row.rec.policy.triggers.window;
    let preds =
        mon.continual().predictions(&prod.id, &PredictionFilter { labelled: Some(true), limit: Some(window) })?;
    let mut rows: Vec<Map<String, Value>> = Vec::new();
    let mut truth = Vec::new();
    let mut prod_correct = 0usize;
    for p in &preds {
        if let (Some(f), Some(y), Some(c)) = (&p.features, &p.actual, p.correct) {
            rows.push(f.clone());
            truth.push(y.clone());
            prod_correct += usize::from(c);
        }
    }
    if rows.is_empty() {
        return Ok(("no labelled traffic with logged features to score on".into(), json!({"rows": 0})));
    }
    let model = Classifier::load(&cand.path)?;
    let classes = model.classes().to_vec();
    let p = model.predict_proba(&rows)?;
    let hits = p.rows.iter().zip(&truth).filter(|(r, y)| classes[argmax(r)] == **y).count();
    let n = rows.len() as f64;
    let (ca, pa) = (hits as f64 / n, prod_correct as f64 / n);
    Ok((
        format!(
            "on {} logged labelled predictions {} would score {ca:.4}, {} scored {pa:.4}",
            rows.len(),
            cand.reference(),
            prod.reference()
        ),
        json!({"rows": rows.len(), "candidate_accuracy": ca, "production_accuracy": pa}),
    ))
}

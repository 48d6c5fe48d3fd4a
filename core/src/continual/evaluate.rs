//! Evaluation metrics: classifiers (accuracy, macro F1, log-loss, ECE) and language
//! models (loss, perplexity through [`Generator::score`]). See
//! [`crate::EvaluationRecord`] for the definitions.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::{read_records, split_records};
use crate::error::{Error, Location, Result};
use crate::generation::Generator;
use crate::registry::ModelRegistry;
use crate::tabular::classifier::Classifier;
use crate::types::{DatasetFormat, DatasetRecord, GeneratorOptions, ModelRecord};

/// Bins of the expected calibration error.
pub(crate) const ECE_BINS: usize = 10;

/// Accuracy, macro F1, log-loss and ECE of class probabilities `probs` (one row per
/// sample, `k` columns) against the true class indices `truth`.
pub(crate) fn classification_metrics(probs: &[Vec<f64>], truth: &[usize], k: usize) -> Result<BTreeMap<String, f64>> {
    if probs.len() != truth.len() {
        return Err(Error::Internal(format!("{} probability rows for {} labels", probs.len(), truth.len())));
    }
    let n = probs.len();
    if n == 0 {
        return Err(Error::data(Location::default(), "no rows to evaluate"));
    }
    let eps = f64::EPSILON;
    let (mut hits, mut nll) = (0usize, 0.0);
    let mut tp = vec![0u64; k];
    let mut fp = vec![0u64; k];
    let mut fn_ = vec![0u64; k];
    let mut present = BTreeSet::new();
    let mut bins = vec![(0u64, 0.0f64, 0.0f64); ECE_BINS]; // (count, sum confidence, sum correct)
    for (p, &y) in probs.iter().zip(truth) {
        let pred = super::argmax(p);
        let conf = p[pred];
        let correct = pred == y;
        present.insert(y);
        present.insert(pred);
        if correct {
            hits += 1;
            tp[y] += 1;
        } else {
            fp[pred] += 1;
            fn_[y] += 1;
        }
        nll -= p[y].clamp(eps, 1.0 - eps).ln();
        // Bin b holds confidences in (b/10, (b+1)/10]; bin 0 also holds 0.
        let b = ((conf * ECE_BINS as f64).ceil() as usize).saturating_sub(1).min(ECE_BINS - 1);
        bins[b].0 += 1;
        bins[b].1 += conf;
        bins[b].2 += f64::from(u8::from(correct));
    }
    let f1: Vec<f64> = present
        .iter()
        .map(|&c| {
            let d = 2 * tp[c] + fp[c] + fn_[c];
            if d == 0 {
                0.0
            } else {
                2.0 * tp[c] as f64 / d as f64
            }
        })
        .collect();
    let ece: f64 = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(c, conf, acc)| (acc - conf).abs() / c as f64 * (c as f64 / n as f64))
        .sum();
    let mut m = BTreeMap::new();
    m.insert("accuracy".to_string(), hits as f64 / n as f64);
    m.insert("f1_macro".to_string(), f1.iter().sum::<f64>() / f1.len() as f64);
    m.insert("log_loss".to_string(), nll / n as f64);
    m.insert("ece".to_string(), ece);
    Ok(m)
}

/// Moves an error's record and field onto the dataset's file.
pub(crate) fn on_file(e: Error, ds: &DatasetRecord) -> Error {
    match e {
        Error::InvalidData { location, reason } => {
            let mut loc = Location::file(&ds.path);
            loc.record = location.record;
            loc.field = location.field.map(|f| if f == "label" { f } else { format!("features.{f}") });
            Error::InvalidData { location: loc, reason }
        }
        o => o,
    }
}

/// A classifier's metrics on a tabular dataset, and the rows evaluated.
pub(crate) fn classifier(m: &ModelRecord, ds: &DatasetRecord) -> Result<(BTreeMap<String, f64>, u64)> {
    if ds.format != DatasetFormat::Tabular {
        return Err(Error::config(
            "dataset",
            format!("{} is a {} dataset; a classifier evaluates on tabular data", ds.name, ds.format),
        ));
    }
    let model = Classifier::load(&m.path)?;
    let (rows, labels) = split_records(read_records(&ds.path)?, &Location::file(&ds.path))?;
    let truth = model.config().labels.encode(&labels).map_err(|e| on_file(e, ds))?;
    let p = model.predict_proba(&rows).map_err(|e| on_file(e, ds))?;
    Ok((classification_metrics(&p.rows, &truth, model.classes().len())?, rows.len() as u64))
}

/// The text each record of a text or completion dataset is scored on (the first
/// `max` records).
fn lm_texts(ds: &DatasetRecord, max: usize) -> Result<Vec<String>> {
    let mut records = read_records(&ds.path)?;
    records.truncate(max);
    let s = |r: &Value, f: &str| r.get(f).and_then(Value::as_str).unwrap_or_default().to_string();
    match ds.format {
        DatasetFormat::Text => Ok(records.iter().map(|r| s(r, "text")).collect()),
        DatasetFormat::Completion => Ok(records.iter().map(|r| s(r, "prompt") + &s(r, "completion")).collect()),
        other => Err(Error::config(
            "dataset",
            format!("{} is a {other} dataset; a language model evaluates on text or completion records", ds.name),
        )),
    }
}

/// Per-record (mean loss, tokens) of a language model on the first `max` records of a
/// text or completion dataset.
pub(crate) fn lm_scores(
    registry: &ModelRegistry,
    m: &ModelRecord,
    ds: &DatasetRecord,
    max: usize,
) -> Result<Vec<(f64, usize)>> {
    let texts = lm_texts(ds, max)?;
    if texts.is_empty() {
        return Err(Error::data(Location::file(&ds.path), "no record to score"));
    }
    let generator = Generator::load(registry, m.id.clone(), &GeneratorOptions { record: false, ..Default::default() })?;
    let scores = generator.score(&texts).map_err(|e| match e {
        Error::InvalidConfig { field, reason } => {
            let record = field.trim_start_matches("texts[").trim_end_matches(']').parse::<u64>().ok();
            let mut loc = Location::file(&ds.path);
            loc.record = record.map(|r| r + 1);
            Error::data(loc, reason)
        }
        o => o,
    })?;
    Ok(scores.into_iter().map(|s| (s.loss, s.tokens)).collect())
}

/// A language model's loss (token-weighted) and perplexity on a dataset.
pub(crate) fn language_model(
    registry: &ModelRegistry,
    m: &ModelRecord,
    ds: &DatasetRecord,
) -> Result<(BTreeMap<String, f64>, u64)> {
    let scores = lm_scores(registry, m, ds, usize::MAX)?;
    let tokens: usize = scores.iter().map(|s| s.1).sum();
    let loss = scores.iter().map(|(l, t)| l * *t as f64).sum::<f64>() / tokens.max(1) as f64;
    let mut metrics = BTreeMap::new();
    metrics.insert("loss".to_string(), loss);
    metrics.insert("perplexity".to_string(), loss.exp());
    metrics.insert("tokens".to_string(), tokens as f64);
    Ok((metrics, scores.len() as u64))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The metrics agree with scikit-learn (accuracy_score, f1_score macro, log_loss)
    /// and with the numpy ECE of `tests/fixtures/make_continual_refs.py`.
    #[test]
    fn metrics_match_scikit_learn() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/continual/metrics.json");
        let refs: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        for case in refs["cases"].as_array().unwrap() {
            let probs: Vec<Vec<f64>> = serde_json::from_value(case["proba"].clone()).unwrap();
            let truth: Vec<usize> = serde_json::from_value(case["y_true"].clone()).unwrap();
            let k = probs[0].len();
            let got = classification_metrics(&probs, &truth, k).unwrap();
            for name in ["accuracy", "f1_macro", "log_loss", "ece"] {
                let want = case[name].as_f64().unwrap();
                assert!((got[name] - want).abs() < 1e-9, "{} {name}: {} vs sklearn {want}", case["name"], got[name]);
            }
        }
    }
}

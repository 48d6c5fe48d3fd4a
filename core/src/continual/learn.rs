//! [`Continual::learn`]: incremental SGD updates of a registered classifier (River's
//! `learn_one` / `learn_many`) that register a new version with its lineage; the
//! version learned from is never changed.

use std::time::Instant;

use serde_json::{Map, Value};
use sha2::Digest;

use super::evaluate::classification_metrics;
use super::{Continual, PROFILE_FILE};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::tabular::classifier::Classifier;
use crate::types::{LearnLineage, LearnOptions, Lineage, ModelKind, ModelRecord, ModelRef, TrainMetrics};
use crate::util::{self, StagingDir};

/// The file of a learned version's records, in its model directory.
pub(crate) const LEARNED_RECORDS_FILE: &str = "learned_records.jsonl";

/// Feature rows and labels of records given as `{"column": value, .., "label": y}`
/// (the form a tabular dataset imports). Record numbers in errors are 1-based.
fn split(records: &[Value]) -> Result<super::Rows> {
    if records.is_empty() {
        return Err(Error::data(Location::default(), "no records to learn from"));
    }
    let mut rows = Vec::with_capacity(records.len());
    let mut labels = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let at = Location::default().at(i as u64 + 1);
        let Value::Object(o) = r else {
            return Err(Error::data(at, "a record is an object of column -> value with a `label`"));
        };
        let mut features = o.clone();
        match features.remove("label") {
            None => return Err(Error::data(at.field("label"), "the label is missing")),
            Some(Value::Null) => return Err(Error::data(at.field("label"), "label is null")),
            Some(y) => labels.push(y),
        }
        if features.is_empty() {
            return Err(Error::data(at, "a record needs at least one feature column besides the label"));
        }
        rows.push(features);
    }
    Ok((rows, labels))
}

/// Accuracy and log-loss of `model` on rows whose classes are `truth`.
fn scores(model: &Classifier, rows: &[Map<String, Value>], truth: &[usize]) -> Result<(f64, f64)> {
    let p = model.predict_proba(rows)?;
    let m = classification_metrics(&p.rows, truth, model.classes().len())?;
    let get = |k: &str| m.get(k).copied().ok_or_else(|| Error::Internal(format!("no {k} in the metrics")));
    Ok((get("accuracy")?, get("log_loss")?))
}

impl Continual {
    /// Updates the classifier `model` with labelled `records` by SGD (River's
    /// `learn_one` per record with the default `batch_size` 1, `learn_many` with more;
    /// the class weights and L2 of its fit; see [`LearnOptions`]) and registers the
    /// result as a new version (of `output_name`, default the model's name), with its
    /// lineage: `base` / `base_ref` the version learned from, `learned` the records'
    /// count and sha256, the steps, and accuracy and log-loss on the records before and
    /// after. The records themselves are stored in the new version's directory
    /// (`learned_records.jsonl`); the reference profile is the parent's (drift is still
    /// measured against the original training rows).
    ///
    /// Records are `{"column": value, .., "label": y}` (a tabular dataset's rows). The
    /// version learned from is never changed, so predictors loaded on it answer as
    /// before; aliases do not move (promote the new version to serve it).
    ///
    /// Errors, with nothing registered: a model that is not a classifier is
    /// `invalid_config` naming `model`; a record that is not an object, has no or a null
    /// label, a missing, unknown or mistyped column, a non-finite number or a class the
    /// model does not have is `invalid_data` naming the 1-based record and the field;
    /// bad options are `invalid_config` naming the field.
    pub fn learn(&self, model: impl Into<ModelRef>, records: &[Value], opts: &LearnOptions) -> Result<ModelRecord> {
        opts.validate()?;
        let started = Instant::now();
        let parent = self.registry().resolve(model)?;
        if parent.kind != ModelKind::Classifier {
            return Err(Error::config(
                "model",
                format!("{} is a {} model: learn updates tabular classifiers", parent.reference(), parent.kind),
            ));
        }
        let name = opts.output_name.clone().unwrap_or_else(|| parent.name.clone());
        util::validate_name("output_name", &name)?;
        let (rows, labels) = split(records)?;
        let mut clf = Classifier::load(&parent.path)?;
        // Everything checked before the first step (record numbers of the whole list).
        let truth = clf.config().labels.encode(&labels)?;
        clf.config().preprocess.transform(&rows)?;
        if let Some(lr) = opts.learning_rate {
            clf.set_sgd_learning_rate(lr)?;
        }
        let (accuracy_before, log_loss_before) = scores(&clf, &rows, &truth)?;
        let batch = opts.batch_size as usize;
        let mut steps = 0u64;
        for _ in 0..opts.epochs {
            for (r, y) in rows.chunks(batch).zip(labels.chunks(batch)) {
                clf.learn(r, y)?;
                steps += 1;
            }
        }
        let (accuracy_after, log_loss_after) = scores(&clf, &rows, &truth)?;
        if !log_loss_after.is_finite() {
            return Err(Error::Compute(format!(
                "the log-loss after learning is {log_loss_after}: lower the learning rate"
            )));
        }

        // The new version's directory: the classifier, the parent's reference profile,
        // the records learned from.
        let registry = self.registry();
        let mut staging = StagingDir::new(&registry.staging_root())?;
        clf.save(staging.path())?;
        let profile = parent.path.join(PROFILE_FILE);
        if profile.exists() {
            std::fs::copy(&profile, staging.path().join(PROFILE_FILE)).with_path(&profile)?;
        }
        let mut jsonl = Vec::new();
        for (r, y) in rows.iter().zip(&labels) {
            let line = serde_json::json!({"features": r, "label": y});
            serde_json::to_writer(&mut jsonl, &line).map_err(|e| Error::Internal(e.to_string()))?;
            jsonl.push(b'\n');
        }
        let records_sha256 = hex::encode(sha2::Sha256::digest(&jsonl));
        util::write_atomic(&staging.path().join(LEARNED_RECORDS_FILE), &jsonl)?;
        let config = serde_json::to_value(clf.config()).map_err(|e| Error::Internal(e.to_string()))?;
        let lineage = Lineage {
            base: Some(parent.id.clone()),
            base_ref: Some(parent.reference()),
            metrics: Some(TrainMetrics {
                final_loss: Some(log_loss_after),
                steps,
                duration_s: started.elapsed().as_secs_f64(),
                train_accuracy: Some(accuracy_after),
                ..Default::default()
            }),
            learned: Some(LearnLineage {
                records: rows.len() as u64,
                records_sha256,
                epochs: opts.epochs,
                batch_size: opts.batch_size,
                learning_rate: clf.config().sgd_learning_rate,
                steps,
                accuracy_before,
                accuracy_after,
                log_loss_before,
                log_loss_after,
            }),
            ..Default::default()
        };
        registry.register_classifier(
            &mut staging,
            &name,
            &parent.architecture,
            parent.params,
            config,
            format!("learn:{}", parent.id),
            lineage,
            &|_, _| Ok(()),
        )
    }
}

//! [`Predictor`]: a registered classifier loaded once, answering rows and logging
//! every answer in the catalog.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Map, Value};
use sha2::Digest;

use super::{argmax, class_key};
use crate::catalog::continual as sql;
use crate::error::{Error, Result};
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::tabular::classifier::Classifier;
use crate::tabular::preprocess::ColumnEncoding;
use crate::types::{ModelKind, ModelRecord, ModelRef, Prediction, PredictionId, PredictionRecord, PredictorOptions};
use crate::util;

/// A classifier served from a home: loaded once, `Send + Sync` (share it across
/// threads behind an `Arc` or by reference).
///
/// Every successful call logs one catalog row per input row (one transaction per
/// call, with the retention of [`PredictorOptions`] applied in it); a call that fails
/// (a bad row anywhere in a batch) logs nothing and returns `invalid_data` naming the
/// record (1-based in the batch) and the column.
pub struct Predictor {
    store: Arc<Store>,
    record: ModelRecord,
    model: Classifier,
    options: PredictorOptions,
    /// `name@version`.
    reference: String,
    class_keys: Vec<String>,
}

impl std::fmt::Debug for Predictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Predictor").field("model", &self.reference).finish()
    }
}

/// sha256 of a row's JSON (serde_json maps keep their keys sorted).
fn features_sha256(row: &Map<String, Value>) -> Result<String> {
    let bytes = serde_json::to_vec(row).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// A categorical value's text, as the preprocessor matches it.
fn category_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Predictor {
    pub(crate) fn load(
        registry: &ModelRegistry,
        model: impl Into<ModelRef>,
        options: &PredictorOptions,
    ) -> Result<Self> {
        options.validate()?;
        let record = registry.resolve(model)?;
        if record.kind != ModelKind::Classifier {
            return Err(Error::config(
                "model",
                format!("{} is a {} model: a predictor serves classifiers", record.reference(), record.kind),
            ));
        }
        let model = Classifier::load(&record.path)?;
        let class_keys = model.classes().iter().map(class_key).collect();
        Ok(Predictor {
            store: registry.store().clone(),
            reference: record.reference(),
            record,
            model,
            options: options.clone(),
            class_keys,
        })
    }

    /// The served model's record.
    pub fn model(&self) -> &ModelRecord {
        &self.record
    }

    /// The classes, in the order of the model's outputs.
    pub fn classes(&self) -> &[Value] {
        self.model.classes()
    }

    /// Predicts one row (`{"column": value, ...}`) and logs it.
    pub fn predict(&self, row: &Map<String, Value>) -> Result<Prediction> {
        let mut out = self.predict_batch(std::slice::from_ref(row))?;
        out.pop().ok_or_else(|| Error::Internal("a prediction went missing".into()))
    }

    /// Predicts rows and logs them in one transaction: all or nothing.
    pub fn predict_batch(&self, rows: &[Map<String, Value>]) -> Result<Vec<Prediction>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let t0 = Instant::now();
        let probs = self.model.predict_proba(rows)?;
        let latency_ms = t0.elapsed().as_secs_f64() * 1000.0 / rows.len() as f64;
        let now = util::now();
        let mut out = Vec::with_capacity(rows.len());
        let mut logged = Vec::with_capacity(rows.len());
        for (row, p) in rows.iter().zip(&probs.rows) {
            let best = argmax(p);
            let label = self.model.classes()[best].clone();
            let id = PredictionId(util::new_id("pred"));
            let unseen = self.unseen(row);
            logged.push(PredictionRecord {
                id: id.clone(),
                model_id: self.record.id.clone(),
                features: self.options.log_features.then(|| row.clone()),
                features_sha256: features_sha256(row)?,
                label: label.clone(),
                confidence: p[best],
                latency_ms,
                actual: None,
                correct: None,
                labelled_at: None,
                created_at: now.clone(),
            });
            out.push(Prediction {
                label,
                confidence: p[best],
                probabilities: self.class_keys.iter().cloned().zip(p.iter().copied()).collect::<BTreeMap<_, _>>(),
                model: self.reference.clone(),
                model_id: self.record.id.clone(),
                prediction_id: id,
                unseen,
            });
        }
        let cutoff = self.options.max_age_days.map(|d| {
            let t = SystemTime::now() - Duration::from_secs(u64::from(d) * 86_400);
            humantime::format_rfc3339_millis(t).to_string()
        });
        let model_id = &self.record.id;
        self.store.catalog.write(|tx| {
            sql::insert_predictions(tx, &logged)?;
            sql::apply_retention(tx, model_id, self.options.max_rows, cutoff.as_deref())
        })?;
        Ok(out)
    }

    /// Categorical columns of `row` whose value the model has not seen.
    fn unseen(&self, row: &Map<String, Value>) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.model.config().preprocess.columns {
            if let ColumnEncoding::Categorical { name, categories } = c {
                if let Some(text) = row.get(name).and_then(category_text) {
                    if categories.binary_search(&text).is_err() {
                        out.push(name.clone());
                    }
                }
            }
        }
        out
    }
}

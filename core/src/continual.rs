//! Layer 2: continual learning on registered models. A [`Predictor`] serves a
//! classifier and logs every prediction; [`Continual`] joins labels that arrive later,
//! reports realised accuracy, evaluates models on datasets and checks drift, each
//! result a catalog row; [`Continual::timeline`] reads them back over time and
//! [`Continual::plot_timeline`] draws them.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{DriftWindow, Home, PredictorOptions};
//! let home = Home::open("./anneal-home")?;
//! let predictor = home.predictor("churn", &PredictorOptions::default())?;
//! let row = serde_json::json!({"age": 41, "plan": "pro"});
//! let p = predictor.predict(row.as_object().unwrap())?;
//! let continual = home.continual();
//! continual.label(&p.prediction_id, &serde_json::json!("stays"))?;
//! let check = continual.drift("churn", &DriftWindow::Predictions(500))?;
//! println!("{} ({:?} expected accuracy)", check.verdict, check.expected_accuracy);
//! # Ok(()) }
//! ```

mod drift;
pub(crate) mod evaluate;
mod learn;
mod monitor;
mod predict;
mod timeline;

use std::path::Path;
use std::sync::Arc;

use serde_json::{Map, Value};

pub use monitor::{Monitor, MonitorHandle, Monitors};
pub use predict::Predictor;
pub use timeline::{event_color, timeline_chart, version_color};

use crate::catalog::continual as sql;
use crate::data::{for_each_record, DatasetStore};
use crate::error::{Error, Location, Result};
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::tabular::preprocess::LabelEncoder;
use crate::types::{
    AccuracyOptions, DatasetId, DriftCheck, DriftOptions, DriftWindow, EvaluationRecord, ModelKind, ModelRecord,
    ModelRef, PredictionFilter, PredictionId, PredictionRecord, RealisedAccuracy,
};
use crate::util;

/// The reference profile of the training rows, in a classifier's model directory.
pub(crate) const PROFILE_FILE: &str = "reference_profile.json";
/// The fit's history, in a classifier's model directory.
pub(crate) const HISTORY_FILE: &str = "fit_history.json";

/// Feature rows and their labels.
pub(crate) type Rows = (Vec<Map<String, Value>>, Vec<Value>);

/// Features and labels of tabular records (`{"features": {...}, "label": v}`).
pub(crate) fn split_records(records: Vec<Value>, loc: &Location) -> Result<Rows> {
    let mut rows = Vec::with_capacity(records.len());
    let mut labels = Vec::with_capacity(records.len());
    for (i, r) in records.into_iter().enumerate() {
        let Value::Object(mut o) = r else {
            return Err(Error::data(loc.clone().at(i as u64 + 1), "a tabular record is an object"));
        };
        let features = match o.remove("features") {
            Some(Value::Object(f)) => f,
            _ => return Err(Error::data(loc.clone().at(i as u64 + 1).field("features"), "is not an object")),
        };
        rows.push(features);
        labels.push(o.remove("label").unwrap_or(Value::Null));
    }
    Ok((rows, labels))
}

/// The records of a dataset file.
pub(crate) fn read_records(path: &Path) -> Result<Vec<Value>> {
    let mut v = Vec::new();
    for_each_record(path, |r| {
        v.push(r);
        Ok(true)
    })?;
    Ok(v)
}

/// Index of the largest value (the first on a tie).
pub(crate) fn argmax(p: &[f64]) -> usize {
    let mut best = 0;
    for (i, v) in p.iter().enumerate() {
        if *v > p[best] {
            best = i;
        }
    }
    best
}

/// A class as the key of [`crate::Prediction::probabilities`]: a string as is, any
/// other value as its JSON.
pub(crate) fn class_key(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The label encoder of a registered classifier (from its record's config).
pub(crate) fn label_encoder(rec: &ModelRecord) -> Result<LabelEncoder> {
    serde_json::from_value(rec.config.get("labels").cloned().unwrap_or(Value::Null))
        .map_err(|e| Error::data(Location::file(rec.path.join("classifier.json")).field("labels"), e.to_string()))
}

/// Labels, evaluations and drift checks of a home's models. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Continual {
    store: Arc<Store>,
}

impl Continual {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    fn registry(&self) -> ModelRegistry {
        ModelRegistry::new(self.store.clone())
    }

    fn datasets(&self) -> DatasetStore {
        DatasetStore::new(self.store.clone())
    }

    /// Records the true class `y` of a logged prediction; returns the updated row.
    /// Labelling again overwrites the earlier label (the latest truth wins, and
    /// `labelled_at` moves). An unknown id is `not_found` naming it; a `y` that is not
    /// one of the model's classes (or of another type) is `invalid_data` naming the
    /// field `label`; nothing is written then.
    pub fn label(&self, prediction: &PredictionId, y: &Value) -> Result<PredictionRecord> {
        let p = self.store.catalog.read(|c| sql::prediction(c, prediction))?;
        let model = self.registry().get(&p.model_id).map_err(|e| match e {
            Error::NotFound { .. } => Error::not_found("model", format!("{} (of prediction {prediction})", p.model_id)),
            o => o,
        })?;
        let enc = label_encoder(&model)?;
        let class = enc.encode(std::slice::from_ref(y)).map_err(|e| match e {
            Error::InvalidData { reason, .. } => Error::data(
                Location::default().field("label"),
                format!("{reason} (prediction {prediction} of {})", model.reference()),
            ),
            o => o,
        })?[0];
        let predicted = enc.encode(std::slice::from_ref(&p.label))?[0];
        let now = util::now();
        self.store.catalog.write(|tx| {
            // Deleted meanwhile (retention): not_found, as before.
            sql::prediction(tx, prediction)?;
            sql::set_label(tx, prediction, &enc.classes[class], class == predicted, &now)?;
            sql::prediction(tx, prediction)
        })
    }

    /// A logged prediction by id.
    pub fn prediction(&self, id: &PredictionId) -> Result<PredictionRecord> {
        self.store.catalog.read(|c| sql::prediction(c, id))
    }

    /// The model's logged predictions, newest first.
    pub fn predictions(&self, model: impl Into<ModelRef>, filter: &PredictionFilter) -> Result<Vec<PredictionRecord>> {
        let m = self.registry().resolve(model)?;
        self.store.catalog.read(|c| sql::predictions(c, &m.id, filter))
    }

    /// Accuracy of the model's labelled predictions (see [`AccuracyOptions`]).
    pub fn realised_accuracy(&self, model: impl Into<ModelRef>, opts: &AccuracyOptions) -> Result<RealisedAccuracy> {
        let m = self.registry().resolve(model)?;
        // Rows store UTC times with milliseconds: compare in that form.
        let since = match &opts.since {
            Some(s) => Some(
                humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
                    .map(|t| humantime::format_rfc3339_millis(t).to_string())
                    .map_err(|e| Error::config("since", format!("`{s}` is not an RFC 3339 UTC time: {e}")))?,
            ),
            None => None,
        };
        if opts.last == Some(0) {
            return Err(Error::config("last", "must be at least 1"));
        }
        self.store.catalog.read(|c| sql::realised_accuracy(c, &m.id, since.as_deref(), opts.last))
    }

    /// Evaluates `model` on `dataset` and stores the result (see [`EvaluationRecord`]
    /// for the metrics).
    pub fn evaluate(&self, model: impl Into<ModelRef>, dataset: impl Into<DatasetId>) -> Result<EvaluationRecord> {
        let m = self.registry().resolve(model)?;
        let ds = self.datasets().get(dataset)?;
        let (metrics, rows) = match m.kind {
            ModelKind::Classifier => evaluate::classifier(&m, &ds)?,
            ModelKind::Base | ModelKind::Full | ModelKind::Lora => evaluate::language_model(&self.registry(), &m, &ds)?,
        };
        let rec = EvaluationRecord {
            id: crate::types::EvaluationId(util::new_id("eval")),
            model_id: m.id.clone(),
            model: m.reference(),
            dataset_id: ds.id,
            metrics,
            rows,
            created_at: util::now(),
        };
        self.store.catalog.write(|tx| sql::insert_evaluation(tx, &rec))?;
        Ok(rec)
    }

    /// The model's evaluations, newest first.
    pub fn evaluations(&self, model: impl Into<ModelRef>) -> Result<Vec<EvaluationRecord>> {
        let m = self.registry().resolve(model)?;
        self.store.catalog.read(|c| sql::evaluations(c, &m.id))
    }

    /// [`Continual::drift_with`] with the default [`DriftOptions`].
    pub fn drift(&self, model: impl Into<ModelRef>, window: &DriftWindow) -> Result<DriftCheck> {
        self.drift_with(model, window, &DriftOptions::default())
    }

    /// Compares `window` with the model's reference and stores the check.
    ///
    /// Classifiers: the window's features against the reference profile of the
    /// training rows stored with the model ([`crate::tabular::profile::Profile::compare`]:
    /// per-column tests, PSI, a verdict, `insufficient_data` under `min_rows`), with the
    /// label-free expected accuracy (see [`DriftCheck::expected_accuracy`]). A
    /// prediction window needs logged features (`invalid_config` naming `window`
    /// otherwise). Language models: a dataset window only; KS of its per-sample losses
    /// against the reference dataset's (drift when p < `p_value`; `insufficient_data`
    /// under `min_rows` samples on either side).
    pub fn drift_with(
        &self,
        model: impl Into<ModelRef>,
        window: &DriftWindow,
        opts: &DriftOptions,
    ) -> Result<DriftCheck> {
        opts.validate()?;
        let m = self.registry().resolve(model)?;
        let check = match m.kind {
            ModelKind::Classifier => drift::classifier(&self.store, &self.datasets(), &m, window, opts)?,
            _ => drift::language_model(&self.registry(), &self.datasets(), &m, window, opts)?,
        };
        self.store.catalog.write(|tx| sql::insert_drift_check(tx, &check))?;
        Ok(check)
    }

    /// The model's drift checks, newest first.
    pub fn drift_checks(&self, model: impl Into<ModelRef>) -> Result<Vec<DriftCheck>> {
        let m = self.registry().resolve(model)?;
        self.store.catalog.read(|c| sql::drift_checks(c, &m.id))
    }
}

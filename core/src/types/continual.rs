//! Continual learning: how a tabular classifier trains (the `classifier` training
//! method), what a served prediction returns and how it is logged, evaluation rows and
//! drift checks. Plain data; the SQL is in `catalog::continual`, the logic in the
//! `continual` module.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::drift::{DriftReport, DriftVerdict};
use super::ids::{DatasetId, DriftCheckId, EvaluationId, ModelId, PredictionId};
use super::names::named_enum;
use crate::error::{Error, Result};

named_enum! {
    /// The classifier a `classifier` job trains.
    #[derive(Default)]
    pub enum ClassifierModel("classifier model") {
        /// Multinomial logistic regression (scikit-learn's `LogisticRegression` objective).
        #[default]
        Logistic = "logistic",
        /// A small ReLU MLP (scikit-learn's `MLPClassifier` objective).
        Mlp = "mlp",
    }
}

named_enum! {
    /// The optimiser of a classifier fit.
    pub enum ClassifierOptimizer("classifier optimizer") {
        /// Full-batch L-BFGS (logistic regression's default).
        Lbfgs = "lbfgs",
        /// Seeded mini-batch Adam (the MLP's default; needed for early stopping).
        Adam = "adam",
    }
}

named_enum! {
    /// Per-class weights of a classifier's loss.
    #[derive(Default)]
    pub enum ClassWeighting("class weight") {
        /// Every row weighs 1.
        #[default]
        None = "none",
        /// `n / (classes * count(class))`, as scikit-learn's `"balanced"`.
        Balanced = "balanced",
    }
}

/// The `classifier` training method: a tabular classifier fitted on a `tabular`
/// dataset (`{"features": {...}, "label": v}` records). JSON:
/// `{"classifier": {"model": "mlp", "hidden": [32]}}`. Mirrors
/// `anneal::tabular::classifier::FitOptions`; every field has a default.
///
/// A classifier job has no base model (`base` stays empty). The fit runs in one piece:
/// it cannot checkpoint mid-fit, so a cancelled or interrupted job resumes by running
/// the same deterministic fit again from the start. `eval_dataset` or `eval_fraction`
/// of the spec give the held-out accuracy and log-loss of the final metrics;
/// `validation_fraction` here is the fit's own early-stopping split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    /// `logistic` (default) or `mlp`.
    pub model: ClassifierModel,
    /// Hidden layer sizes of the MLP (one or two). Default `[32]`.
    pub hidden: Vec<usize>,
    /// Inverse L2 strength of logistic regression (scikit-learn's `C`). Default 1.
    pub c: f64,
    /// L2 strength of the MLP (scikit-learn's `alpha`). Default 1e-4.
    pub alpha: f64,
    /// Default: `lbfgs` for logistic regression, `adam` for the MLP.
    pub optimizer: Option<ClassifierOptimizer>,
    /// L-BFGS iterations or Adam epochs at most. Default 1000.
    pub max_iter: usize,
    /// Adam mini-batch size. Default `min(200, rows)`.
    pub batch_size: Option<usize>,
    /// Adam step size. Default 1e-3.
    pub learning_rate: f64,
    /// L-BFGS: largest gradient component at convergence; Adam: the loss improvement
    /// that resets the patience. Default 1e-4.
    pub tol: f64,
    /// `none` (default) or `balanced`.
    pub class_weight: ClassWeighting,
    /// Share of the training rows held out (stratified) for early stopping; 0 (the
    /// default) for none. Adam only.
    pub validation_fraction: f64,
    /// Epochs without improvement before stopping (Adam). Default 10.
    pub patience: usize,
    /// Seed of the initialisation, the validation split and the batch order. Default:
    /// the spec's `seed`.
    pub seed: Option<u64>,
    /// Step size of incremental `learn` updates. Default 0.01.
    pub sgd_learning_rate: f64,
    /// Add a 0/1 "missing" feature for numeric columns that have nulls. Default false.
    pub missing_indicator: bool,
    /// Columns to treat as categories whatever their values look like.
    pub categorical: Vec<String>,
    /// Columns to treat as numbers.
    pub numeric: Vec<String>,
    /// Feature columns left out of the model (and of its reference profile).
    pub exclude: Vec<String>,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        Self {
            model: ClassifierModel::Logistic,
            hidden: vec![32],
            c: 1.0,
            alpha: 1e-4,
            optimizer: None,
            max_iter: 1000,
            batch_size: None,
            learning_rate: 1e-3,
            tol: 1e-4,
            class_weight: ClassWeighting::None,
            validation_fraction: 0.0,
            patience: 10,
            seed: None,
            sgd_learning_rate: 0.01,
            missing_indicator: false,
            categorical: Vec::new(),
            numeric: Vec::new(),
            exclude: Vec::new(),
        }
    }
}

impl ClassifierConfig {
    /// The optimiser the fit uses.
    pub fn effective_optimizer(&self) -> ClassifierOptimizer {
        self.optimizer.unwrap_or(match self.model {
            ClassifierModel::Logistic => ClassifierOptimizer::Lbfgs,
            ClassifierModel::Mlp => ClassifierOptimizer::Adam,
        })
    }

    /// Checks ranges (`invalid_config` naming the field, without a prefix).
    pub fn validate(&self) -> Result<()> {
        let positive = |field: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                Err(Error::config(field, format!("must be a positive number, got {v}")))
            }
        };
        positive("c", self.c)?;
        positive("learning_rate", self.learning_rate)?;
        positive("sgd_learning_rate", self.sgd_learning_rate)?;
        if !(self.alpha.is_finite() && self.alpha >= 0.0) {
            return Err(Error::config("alpha", format!("must be at least 0, got {}", self.alpha)));
        }
        if !(self.tol.is_finite() && self.tol >= 0.0) {
            return Err(Error::config("tol", format!("must be at least 0, got {}", self.tol)));
        }
        if self.max_iter == 0 {
            return Err(Error::config("max_iter", "must be at least 1"));
        }
        if self.batch_size == Some(0) {
            return Err(Error::config("batch_size", "must be at least 1"));
        }
        if self.model == ClassifierModel::Mlp
            && (self.hidden.is_empty() || self.hidden.len() > 2 || self.hidden.contains(&0))
        {
            return Err(Error::config("hidden", "an MLP has one or two hidden layers of at least 1 unit"));
        }
        if !(0.0..1.0).contains(&self.validation_fraction) {
            return Err(Error::config("validation_fraction", "must be in [0, 1)"));
        }
        if self.validation_fraction > 0.0 && self.effective_optimizer() == ClassifierOptimizer::Lbfgs {
            return Err(Error::config("validation_fraction", "early stopping needs the adam optimizer"));
        }
        if self.validation_fraction > 0.0 && self.patience == 0 {
            return Err(Error::config("patience", "must be at least 1 with a validation split"));
        }
        if let Some(c) = self.categorical.iter().find(|c| self.numeric.contains(c)) {
            return Err(Error::config("categorical", format!("`{c}` is also listed as numeric")));
        }
        Ok(())
    }
}

/// How a [`crate::Predictor`] logs its predictions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PredictorOptions {
    /// Log each row's features as JSON (default). False: only their sha256 is logged,
    /// and drift checks on recent predictions refuse this model's window.
    pub log_features: bool,
    /// Keep at most this many logged predictions of the model (the oldest go first),
    /// applied in the transaction of each predict call.
    pub max_rows: Option<u64>,
    /// Keep logged predictions at most this many days, applied likewise.
    pub max_age_days: Option<u32>,
}

impl Default for PredictorOptions {
    fn default() -> Self {
        Self { log_features: true, max_rows: None, max_age_days: None }
    }
}

impl PredictorOptions {
    pub fn validate(&self) -> Result<()> {
        if self.max_rows == Some(0) {
            return Err(Error::config("max_rows", "must be at least 1 (leave it unset to keep every row)"));
        }
        if self.max_age_days == Some(0) {
            return Err(Error::config("max_age_days", "must be at least 1 (leave it unset to keep every row)"));
        }
        Ok(())
    }
}

/// What a [`crate::Predictor`] answers for one row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Prediction {
    /// The most probable class (the first in class order on a tie).
    pub label: Value,
    /// Its probability.
    pub confidence: f64,
    /// Class (as text: a string class as is, others as JSON) -> probability.
    pub probabilities: BTreeMap<String, f64>,
    /// `name@version` of the model.
    pub model: String,
    pub model_id: ModelId,
    /// The logged row: pass it to `label` when the truth arrives.
    pub prediction_id: PredictionId,
    /// Categorical columns whose value was not seen in training (encoded as no
    /// category; counted, not an error).
    pub unseen: Vec<String>,
}

/// A logged prediction (a catalog row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PredictionRecord {
    pub id: PredictionId,
    pub model_id: ModelId,
    /// The row's features, when the predictor logged them.
    pub features: Option<Map<String, Value>>,
    /// sha256 of the features' JSON (keys sorted).
    pub features_sha256: String,
    /// The predicted class.
    pub label: Value,
    pub confidence: f64,
    /// Milliseconds of model time per row (a batch's time divided by its rows).
    pub latency_ms: f64,
    /// The true class, once labelled.
    pub actual: Option<Value>,
    /// Whether `label` equals `actual`, once labelled.
    pub correct: Option<bool>,
    pub labelled_at: Option<String>,
    pub created_at: String,
}

/// Filters for `Continual::predictions`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PredictionFilter {
    /// Only labelled (true) or unlabelled (false) rows.
    pub labelled: Option<bool>,
    /// Newest first, at most this many.
    pub limit: Option<u64>,
}

/// Most passes [`crate::Continual::learn`] makes over its records, and most records
/// one SGD step takes.
pub const MAX_LEARN_EPOCHS: u32 = 1000;
pub const MAX_LEARN_BATCH: u32 = 100_000;

/// How [`crate::Continual::learn`] updates a classifier with new records.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct LearnOptions {
    /// Passes over the records, in their order (1 to 1000). Default 1.
    pub epochs: u32,
    /// Records per SGD step (1 to 100 000): 1 (the default) is one step per record,
    /// River's `learn_one`; more is `learn_many` on consecutive records.
    pub batch_size: u32,
    /// Step size (positive, finite). Default: the model's (`sgd_learning_rate` of its
    /// fit, 0.01 unless set); the new version keeps the one used.
    pub learning_rate: Option<f64>,
    /// Name of the new version. Default: the model's name (its next version).
    pub output_name: Option<String>,
}

impl Default for LearnOptions {
    fn default() -> Self {
        Self { epochs: 1, batch_size: 1, learning_rate: None, output_name: None }
    }
}

impl LearnOptions {
    pub fn validate(&self) -> Result<()> {
        if !(1..=MAX_LEARN_EPOCHS).contains(&self.epochs) {
            return Err(Error::config("epochs", format!("must be 1 to {MAX_LEARN_EPOCHS}, got {}", self.epochs)));
        }
        if !(1..=MAX_LEARN_BATCH).contains(&self.batch_size) {
            return Err(Error::config(
                "batch_size",
                format!("must be 1 to {MAX_LEARN_BATCH}, got {}", self.batch_size),
            ));
        }
        if let Some(lr) = self.learning_rate {
            if !(lr.is_finite() && lr > 0.0) {
                return Err(Error::config("learning_rate", format!("must be positive and finite, got {lr}")));
            }
        }
        Ok(())
    }
}

/// How a version made by [`crate::Continual::learn`] came from its parent (in its
/// [`crate::Lineage::learned`]; the parent is `lineage.base` / `lineage.base_ref`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LearnLineage {
    /// The records learned from, as stored in the version's directory
    /// (`learned_records.jsonl`, one `{"features": {..}, "label": y}` per line), and
    /// the sha256 of that file.
    pub records: u64,
    pub records_sha256: String,
    pub epochs: u32,
    pub batch_size: u32,
    pub learning_rate: f64,
    /// SGD steps taken.
    pub steps: u64,
    /// Accuracy and mean log-loss of the parent, then of the new version, on the
    /// records.
    pub accuracy_before: f64,
    pub accuracy_after: f64,
    pub log_loss_before: f64,
    pub log_loss_after: f64,
}

/// Which labelled predictions realised accuracy counts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct AccuracyOptions {
    /// Only predictions made at or after this RFC 3339 time.
    pub since: Option<String>,
    /// Only the last N labelled predictions.
    pub last: Option<u64>,
}

/// Accuracy of a model's predictions whose label arrived (`label`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RealisedAccuracy {
    pub model_id: ModelId,
    pub labelled: u64,
    pub correct: u64,
    /// `correct / labelled`; null without a labelled prediction.
    pub accuracy: Option<f64>,
}

/// An evaluation of a model on a dataset (a catalog row).
///
/// Classifiers: `accuracy`, `f1_macro` (over the classes of the truth and the
/// predictions, as scikit-learn's `f1_score(average="macro")`), `log_loss`
/// (probabilities clipped to `[eps, 1 - eps]`, eps = f64 epsilon, as scikit-learn
/// 1.5 and later do) and `ece`: the expected calibration error of the top-class confidence over
/// 10 equal-width bins (bin b holds confidences in `(b/10, (b+1)/10]`, the first one
/// also 0), the sum over bins of `n_b / n * abs(accuracy_b - mean_confidence_b)`.
/// Language models: `loss` (token-weighted mean next-token cross-entropy, nats),
/// `perplexity` (`exp(loss)`) and `tokens`, from `Generator::score`. `rows` is the
/// number of records evaluated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EvaluationRecord {
    pub id: EvaluationId,
    pub model_id: ModelId,
    /// `name@version` at evaluation time.
    pub model: String,
    pub dataset_id: DatasetId,
    pub metrics: BTreeMap<String, f64>,
    pub rows: u64,
    pub created_at: String,
}

/// What a drift check compares with the model's reference. JSON: `{"predictions": 500}`
/// (the model's last 500 logged predictions) or `{"dataset": "<id or name>"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DriftWindow {
    /// The last N logged predictions of the model (their features: the predictor must
    /// log features, not hashes only). Classifiers only.
    Predictions(u64),
    /// A dataset: its features (classifiers) or its per-sample losses (language models).
    Dataset(DatasetId),
}

impl DriftWindow {
    /// How a check row describes the window: `predictions:last=500`, `dataset:<id>`.
    pub fn describe(&self) -> String {
        match self {
            DriftWindow::Predictions(n) => format!("predictions:last={n}"),
            DriftWindow::Dataset(d) => format!("dataset:{d}"),
        }
    }
}

/// Language models: the two-sample KS test of per-sample losses (the window
/// dataset's against the reference dataset's: the model's eval dataset, else its
/// training dataset; at most the first 1000 records of each are scored).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct LossDrift {
    pub reference_dataset: DatasetId,
    pub statistic: f64,
    pub p_value: f64,
    pub reference_samples: u64,
    pub window_samples: u64,
    pub reference_mean_loss: f64,
    pub window_mean_loss: f64,
}

/// A stored drift check (a catalog row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriftCheck {
    pub id: DriftCheckId,
    pub model_id: ModelId,
    /// `name@version` at check time.
    pub model: String,
    /// [`DriftWindow::describe`].
    pub window: String,
    pub verdict: DriftVerdict,
    /// Classifiers: the column-by-column comparison with the reference profile.
    pub report: Option<DriftReport>,
    /// Language models: drift of the per-sample loss.
    pub loss: Option<LossDrift>,
    /// Classifiers: label-free expected accuracy (CBPE-style): the mean top-class
    /// probability of the window's predictions. The model's probabilities are used as
    /// they are (no recalibration step): an uncalibrated model's estimate is off by its
    /// calibration error (see the `ece` of an evaluation).
    pub expected_accuracy: Option<f64>,
    /// Prediction windows: accuracy of the window's labelled predictions, if any.
    pub realised_accuracy: Option<f64>,
    /// Prediction windows: how many of the window's predictions were labelled.
    pub labelled: u64,
    pub created_at: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn classifier_config_json_and_validation() {
        let c: ClassifierConfig = serde_json::from_str(r#"{"model": "mlp", "hidden": [8, 4]}"#).unwrap();
        assert_eq!((c.model, c.hidden.as_slice(), c.c), (ClassifierModel::Mlp, &[8usize, 4][..], 1.0));
        assert_eq!(c.effective_optimizer(), ClassifierOptimizer::Adam);
        assert!(serde_json::from_str::<ClassifierConfig>(r#"{"kind": "mlp"}"#).is_err());
        for (c, field) in [
            (ClassifierConfig { c: 0.0, ..Default::default() }, "c"),
            (ClassifierConfig { validation_fraction: 0.2, ..Default::default() }, "validation_fraction"),
            (ClassifierConfig { model: ClassifierModel::Mlp, hidden: vec![], ..Default::default() }, "hidden"),
            (ClassifierConfig { max_iter: 0, ..Default::default() }, "max_iter"),
        ] {
            match c.validate().unwrap_err() {
                Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
                e => panic!("{e}"),
            }
        }
        // As a training method: no base; fields under `method.classifier.`.
        let spec = super::super::training::TrainSpec::from_json(
            serde_json::json!({"dataset": "d", "method": {"classifier": {"model": "mlp", "hidden": [4]}}}),
        )
        .unwrap();
        assert_eq!(spec.method.as_str(), "classifier");
        let e = super::super::training::TrainSpec::from_json(
            serde_json::json!({"dataset": "d", "method": {"classifier": {"c": -1}}}),
        )
        .unwrap_err();
        assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "method.classifier.c"), "{e}");
        let w: DriftWindow = serde_json::from_str(r#"{"predictions": 50}"#).unwrap();
        assert_eq!(w, DriftWindow::Predictions(50));
        assert_eq!(w.describe(), "predictions:last=50");
    }
}

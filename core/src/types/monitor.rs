//! Retraining policies and monitors: when a production model is retrained, how the
//! candidate is gated, and the state and decision trail a monitor keeps in the catalog
//! (see [`crate::Monitor`]).
//!
//! One policy type serves both kinds of production model. Some fields are for one kind
//! only; a policy is checked against the kind it watches
//! ([`RetrainPolicy::validate_for`]) and a field of the other kind is `invalid_config`
//! naming it:
//!
//! | | classifiers | language models (base, full, LoRA) |
//! |---|---|---|
//! | what the triggers read | the last `window` labelled predictions | the newest `window` rows fed with [`crate::Monitor::feed`] and not trained on yet |
//! | absolute trigger | `accuracy_floor` | `metric_limit` (on `metric`: loss, perplexity) |
//! | relative trigger | `relative_drop` of realised accuracy vs the reference accuracy | `relative_drop` of `metric` on the window vs on the reference dataset |
//! | drift | `drift_window` predictions' features | `drift_window` fed rows' per-sample losses (KS) |
//! | new data | `new_labels` | `new_rows` |
//! | action | `config` | `lm_method`, `lora`, `max_steps`, `learning_rate` |
//! | gate metrics | `accuracy`, `f1_macro`, `log_loss` | `loss`, `perplexity` |
//!
//! Metrics where lower is better (`loss`, `perplexity`, `log_loss`) flip every
//! comparison: a floor is then the highest value allowed, a margin an improvement
//! downwards, a drop a rise.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::continual::ClassifierConfig;
use super::ids::{DatasetId, JobId, ModelId};
use super::model::{LoraConfig, ModelKind};
use super::names::named_enum;
use crate::error::{Error, Result};

/// What triggers a retrain. Each trigger is off unless set; at least one must be set.
///
/// Classifiers: the accuracy triggers read the realised accuracy of the production
/// model's last `window` labelled predictions ([`crate::Continual::realised_accuracy`]).
/// Language models: the metric triggers read the production model's `metric` on the
/// newest `window` rows fed to the monitor ([`crate::Monitor::feed`]) and not trained
/// on yet. Either way they breach only once `guards.min_samples` rows are there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainTriggers {
    /// Classifiers: breach when realised accuracy falls below this absolute floor (0..=1).
    pub accuracy_floor: Option<f64>,
    /// Breach when the model got worse than its reference by more than this share
    /// (0 < relative_drop < 1; 0.1 = 10 %). Classifiers: realised accuracy under the
    /// reference accuracy (held out at training time, else on the training rows) times
    /// `1 - relative_drop`. Language models: `metric` on the window above its value on
    /// the reference dataset (the lineage's eval dataset, else its training dataset)
    /// times `1 + relative_drop`.
    pub relative_drop: Option<f64>,
    /// Breach when a drift check ([`crate::Continual::drift`]) has the verdict `drift`
    /// (at least 1). Classifiers: of the last `drift_window` predictions' features.
    /// Language models: of the per-sample losses of the newest `drift_window` fed rows
    /// against the reference dataset's.
    pub drift_window: Option<u64>,
    /// Classifiers: retrain once this many predictions were labelled since the last
    /// retrain (or since the monitor was created) (at least 1).
    pub new_labels: Option<u64>,
    /// Language models: retrain once this many rows were fed
    /// ([`crate::Monitor::feed`]) since the last retrain (or since the monitor was
    /// created) (at least 1).
    pub new_rows: Option<u64>,
    /// Retrain every this many seconds (since the last retrain, or since the monitor
    /// was created) (> 0). A language model's schedule waits for fed data.
    pub schedule_secs: Option<f64>,
    /// Language models: the metric `metric_limit` and `relative_drop` read, `loss`
    /// (default) or `perplexity`.
    pub metric: Option<String>,
    /// Language models: breach when `metric` on the window is above this value (> 0).
    pub metric_limit: Option<f64>,
    /// Rows the accuracy or metric triggers read (newest first): labelled predictions,
    /// or fed rows. Default 200.
    pub window: u64,
}

impl Default for RetrainTriggers {
    fn default() -> Self {
        Self {
            accuracy_floor: None,
            relative_drop: None,
            drift_window: None,
            new_labels: None,
            new_rows: None,
            schedule_secs: None,
            metric: None,
            metric_limit: None,
            window: 200,
        }
    }
}

/// What holds a trigger back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainGuards {
    /// The accuracy and metric triggers need at least this many rows in their window
    /// (at least 1, at most `triggers.window`). Default 30.
    pub min_samples: u64,
    /// A breach (accuracy floor, metric limit, relative drop, drift) retrains only after
    /// this many ticks in a row found one (at least 1). `new_labels`, `new_rows` and
    /// `schedule` are not breaches: they fire at once. Default 1.
    pub consecutive_breaches: u32,
    /// No retrain within this many seconds of the last one (>= 0). Default 0.
    pub cooldown_secs: f64,
    /// At most this many retrains per UTC day (at least 1); unset: no cap.
    pub daily_cap: Option<u32>,
}

impl Default for RetrainGuards {
    fn default() -> Self {
        Self { min_samples: 30, consecutive_breaches: 1, cooldown_secs: 0.0, daily_cap: None }
    }
}

named_enum! {
    /// How a language model's retrain trains the candidate.
    #[derive(Default)]
    pub enum LmRetrainMethod("language-model retrain method") {
        /// A new LoRA adapter on the base: the production adapter's parent, or the
        /// production model itself when it is a full fine-tune or a base model.
        #[default]
        Lora = "lora",
        /// The production LoRA adapter trained further: its weights are the start and
        /// its LoRA settings are kept (the production model must be an adapter).
        Continue = "continue",
    }
}

/// The training job a retrain creates.
///
/// Classifiers: a refit on the production model's training dataset (a
/// `replay_fraction` share of it, spread evenly) plus the production model's labelled
/// predictions (their logged features and true labels), written together as a new
/// tabular dataset. The job's spec is the production model's own (from its lineage)
/// with that dataset and, when given, `config`.
///
/// Language models: LoRA (`lm_method`) on the new data, the rows fed with
/// [`crate::Monitor::feed`] and not yet taken by a retrain, mixed with a
/// `replay_fraction` share of the production model's training dataset (spread evenly),
/// written together as a new dataset of the same format. The job's spec is the
/// production model's own (from its lineage: sequence length, batch size, steps,
/// learning rate, seed ...) with that dataset, the gate's dataset as its eval dataset
/// (so the candidate's lineage keeps it: the reference of its drift checks and its
/// retention set later), and the overrides below.
/// The candidate is the next version of the watched name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainAction {
    /// Classifiers: the classifier's settings; default: those the production model was
    /// trained with.
    pub config: Option<ClassifierConfig>,
    /// Share of the old training rows kept (0..=1; 0 trains on the new rows only).
    /// Default 1.
    pub replay_fraction: f64,
    /// Language models: a new LoRA adapter on the base (`lora`, default) or the
    /// production adapter trained further (`continue`).
    pub lm_method: Option<LmRetrainMethod>,
    /// Language models, `lm_method` `lora`: the new adapter's settings; default: the
    /// production adapter's (from its lineage), else [`LoraConfig::default`].
    pub lora: Option<LoraConfig>,
    /// Language models: optimiser steps of the retrain; default: the production
    /// model's spec's.
    pub max_steps: Option<u64>,
    /// Language models: peak learning rate of the retrain; default: the production
    /// model's spec's.
    pub learning_rate: Option<f64>,
}

impl Default for RetrainAction {
    fn default() -> Self {
        Self { config: None, replay_fraction: 1.0, lm_method: None, lora: None, max_steps: None, learning_rate: None }
    }
}

named_enum! {
    /// What happens to a candidate that passed the gate.
    #[derive(Default)]
    pub enum PromotionMode("promotion mode") {
        /// Promoted at once (`production` moves to it).
        #[default]
        Auto = "auto",
        /// Left as the `candidate` alias until [`crate::Monitor::approve`].
        Manual = "manual",
        /// Left as the `candidate` alias and scored on recent data without serving it;
        /// the comparison is recorded. Classifiers: the features of the production
        /// model's recent labelled predictions (accuracy). Language models: the newest
        /// `triggers.window` rows of the data the retrain took (mean loss).
        /// [`crate::Monitor::approve`] promotes it.
        Shadow = "shadow",
    }
}

/// Metrics a gate may compare: classifiers' `accuracy`, `f1_macro` (higher is better)
/// and `log_loss`; language models' `loss` and `perplexity` (lower is better).
pub const GATE_METRICS: &[&str] = &["accuracy", "f1_macro", "log_loss", "loss", "perplexity"];
/// The gate metrics of classifiers.
pub const CLASSIFIER_METRICS: &[&str] = &["accuracy", "f1_macro", "log_loss"];
/// The gate and trigger metrics of language models.
pub const LM_METRICS: &[&str] = &["loss", "perplexity"];

/// Whether a smaller value of `metric` is better (`loss`, `perplexity`, `log_loss`).
pub fn lower_is_better(metric: &str) -> bool {
    matches!(metric, "loss" | "perplexity" | "log_loss")
}

/// The promotion gate: the candidate and the production model are evaluated on the
/// same dataset ([`crate::Continual::evaluate`]); the candidate passes when its
/// `metric` clears `floor` and beats production's by `margin`, and when it does not
/// regress by more than `retention_tolerance` on any retention set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatePolicy {
    pub mode: PromotionMode,
    /// The metric compared. Default: `accuracy` for classifiers, `loss` for language
    /// models (see [`GATE_METRICS`]).
    pub metric: Option<String>,
    /// The absolute bound the candidate must clear: at least this for a higher-is-better
    /// metric (0..=1), at most this for a lower-is-better one (> 0). Default: none.
    pub floor: Option<f64>,
    /// How much the candidate must beat production by, in the metric's units: at least
    /// production's value plus `margin` (higher is better), at most production's value
    /// minus `margin` (lower is better). Negative: a regression of that much is allowed.
    /// -1..=1 for higher-is-better metrics. Default 0 (at least as good).
    pub margin: f64,
    /// A fixed evaluation dataset (id or name; a name is resolved at each retrain, so
    /// it may be replaced). Default: a `holdout_fraction` share of the new rows (the
    /// newest labelled predictions for classifiers, an even spread of the fed rows for
    /// language models), held out of the retrain's training rows.
    pub dataset: Option<DatasetId>,
    /// Share of the new rows held out for the gate when `dataset` is unset
    /// (0 < share < 1). Default 0.3.
    pub holdout_fraction: f64,
    /// Retention sets from earlier versions: the reference datasets (lineage eval
    /// dataset, else training dataset) of the production model and of the production
    /// versions before it (from the alias history, newest first), this many versions in
    /// all. Default: 3 for language models, 0 for classifiers.
    pub retention_versions: Option<u32>,
    /// More retention sets, named (ids or names).
    pub retention_datasets: Vec<DatasetId>,
    /// How much worse than production the candidate may be on a retention set, as a
    /// share of production's value there (0..=1): at most production x (1 + tolerance)
    /// for a lower-is-better metric, at least production x (1 - tolerance) otherwise.
    /// Default 0.05.
    pub retention_tolerance: f64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            mode: PromotionMode::Auto,
            metric: None,
            floor: None,
            margin: 0.0,
            dataset: None,
            holdout_fraction: 0.3,
            retention_versions: None,
            retention_datasets: Vec::new(),
            retention_tolerance: 0.05,
        }
    }
}

impl GatePolicy {
    /// The gate's metric for a model of `kind` (the default when unset).
    pub fn metric_for(&self, kind: ModelKind) -> &str {
        match (&self.metric, kind) {
            (Some(m), _) => m,
            (None, ModelKind::Classifier) => "accuracy",
            (None, _) => "loss",
        }
    }

    /// Production versions whose reference datasets are retention sets, for `kind`.
    pub fn retention_versions_for(&self, kind: ModelKind) -> u32 {
        self.retention_versions.unwrap_or(if kind == ModelKind::Classifier { 0 } else { 3 })
    }
}

impl RetrainTriggers {
    /// A language model's trigger metric (the default when unset).
    pub fn metric_or_default(&self) -> &str {
        self.metric.as_deref().unwrap_or("loss")
    }
}

/// When to retrain a production model, how, and how to gate the result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainPolicy {
    pub triggers: RetrainTriggers,
    pub guards: RetrainGuards,
    pub action: RetrainAction,
    pub gate: GatePolicy,
}

fn unit(field: &str, v: f64) -> Result<()> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::config(field, format!("must be between 0 and 1 (got {v})")));
    }
    Ok(())
}

fn positive(field: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v > 0.0) {
        return Err(Error::config(field, format!("must be a positive number (got {v})")));
    }
    Ok(())
}

/// `field` is set on a policy for the other kind of model.
fn other_kind(field: &str, what: &str) -> Error {
    Error::config(field, what.to_string())
}

impl RetrainPolicy {
    /// Checks every field and the guards against each other; `invalid_config` naming
    /// the field (`triggers.accuracy_floor`, `guards.min_samples`, ...). The checks
    /// that depend on the kind of the watched model are [`RetrainPolicy::validate_for`]'s.
    pub fn validate(&self) -> Result<()> {
        let t = &self.triggers;
        let g = &self.guards;
        let a = &self.action;
        if t.accuracy_floor.is_none()
            && t.relative_drop.is_none()
            && t.drift_window.is_none()
            && t.new_labels.is_none()
            && t.new_rows.is_none()
            && t.metric_limit.is_none()
            && t.schedule_secs.is_none()
        {
            return Err(Error::config(
                "triggers",
                "no trigger is set: set accuracy_floor, metric_limit, relative_drop, drift_window, new_labels, \
                 new_rows or schedule_secs",
            ));
        }
        if let Some(f) = t.accuracy_floor {
            unit("triggers.accuracy_floor", f)?;
        }
        if let Some(d) = t.relative_drop {
            if !(d > 0.0 && d < 1.0) {
                return Err(Error::config(
                    "triggers.relative_drop",
                    format!("must be between 0 and 1, exclusive (got {d})"),
                ));
            }
        }
        if t.drift_window == Some(0) {
            return Err(Error::config("triggers.drift_window", "must be at least 1"));
        }
        if t.new_labels == Some(0) {
            return Err(Error::config("triggers.new_labels", "must be at least 1"));
        }
        if t.new_rows == Some(0) {
            return Err(Error::config("triggers.new_rows", "must be at least 1"));
        }
        if let Some(s) = t.schedule_secs {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::config("triggers.schedule_secs", format!("must be a positive number (got {s})")));
            }
        }
        if let Some(m) = &t.metric {
            if !LM_METRICS.contains(&m.as_str()) {
                return Err(Error::config(
                    "triggers.metric",
                    format!("`{m}` is not a trigger metric; use one of {}", LM_METRICS.join(", ")),
                ));
            }
        }
        if let Some(l) = t.metric_limit {
            positive("triggers.metric_limit", l)?;
        }
        if t.window == 0 {
            return Err(Error::config("triggers.window", "must be at least 1"));
        }
        if g.min_samples == 0 {
            return Err(Error::config("guards.min_samples", "must be at least 1"));
        }
        if g.min_samples > t.window {
            return Err(Error::config(
                "guards.min_samples",
                format!(
                    "is {} but the window (triggers.window) holds only {}: the accuracy and metric triggers could \
                     never fire",
                    g.min_samples, t.window
                ),
            ));
        }
        if g.consecutive_breaches == 0 {
            return Err(Error::config("guards.consecutive_breaches", "must be at least 1"));
        }
        if !(g.cooldown_secs.is_finite() && g.cooldown_secs >= 0.0) {
            return Err(Error::config(
                "guards.cooldown_secs",
                format!("must be 0 or more seconds (got {})", g.cooldown_secs),
            ));
        }
        if g.daily_cap == Some(0) {
            return Err(Error::config("guards.daily_cap", "must be at least 1 (leave it unset for no cap)"));
        }
        if let (Some(s), true) = (t.schedule_secs, g.cooldown_secs > 0.0) {
            if g.cooldown_secs > s {
                return Err(Error::config(
                    "guards.cooldown_secs",
                    format!(
                        "is longer than the schedule (triggers.schedule_secs = {s}): the schedule could never hold"
                    ),
                ));
            }
        }
        unit("action.replay_fraction", a.replay_fraction)?;
        if let Some(c) = &a.config {
            c.validate().map_err(|e| match e {
                Error::InvalidConfig { field, reason } => Error::config(format!("action.config.{field}"), reason),
                o => o,
            })?;
        }
        if let Some(l) = &a.lora {
            l.validate().map_err(|e| match e {
                Error::InvalidConfig { field, reason } => Error::config(format!("action.lora.{field}"), reason),
                o => o,
            })?;
            if a.lm_method == Some(LmRetrainMethod::Continue) {
                return Err(Error::config(
                    "action.lora",
                    "lm_method `continue` keeps the production adapter's own settings: leave action.lora unset",
                ));
            }
        }
        if a.max_steps == Some(0) {
            return Err(Error::config("action.max_steps", "must be at least 1"));
        }
        if let Some(lr) = a.learning_rate {
            positive("action.learning_rate", lr)?;
        }
        if a.config.is_some() {
            let lm = [
                ("action.lm_method", a.lm_method.is_some()),
                ("action.lora", a.lora.is_some()),
                ("action.max_steps", a.max_steps.is_some()),
                ("action.learning_rate", a.learning_rate.is_some()),
            ];
            if let Some((field, _)) = lm.iter().find(|f| f.1) {
                return Err(Error::config(
                    *field,
                    "is a language model's setting, and action.config a classifier's: a policy retrains one kind",
                ));
            }
        }
        if t.accuracy_floor.is_some() && t.metric_limit.is_some() {
            return Err(Error::config(
                "triggers.metric_limit",
                "is a language model's trigger, and accuracy_floor a classifier's: a policy watches one kind",
            ));
        }
        if t.new_labels.is_some() && t.new_rows.is_some() {
            return Err(Error::config(
                "triggers.new_rows",
                "is a language model's trigger, and new_labels a classifier's: a policy watches one kind",
            ));
        }
        let gate = &self.gate;
        if let Some(m) = &gate.metric {
            if !GATE_METRICS.contains(&m.as_str()) {
                return Err(Error::config(
                    "gate.metric",
                    format!("`{m}` is not a gate metric; use one of {}", GATE_METRICS.join(", ")),
                ));
            }
        }
        let lower = gate.metric.as_deref().map(lower_is_better);
        if let Some(f) = gate.floor {
            match lower {
                Some(true) => positive("gate.floor", f)?,
                Some(false) => unit("gate.floor", f)?,
                None if !(f.is_finite() && f >= 0.0) => {
                    return Err(Error::config("gate.floor", format!("must be 0 or more (got {f})")))
                }
                None => {}
            }
        }
        if !gate.margin.is_finite() || (lower == Some(false) && !(-1.0..=1.0).contains(&gate.margin)) {
            return Err(Error::config("gate.margin", format!("must be between -1 and 1 (got {})", gate.margin)));
        }
        if !(gate.holdout_fraction > 0.0 && gate.holdout_fraction < 1.0) {
            return Err(Error::config(
                "gate.holdout_fraction",
                format!("must be between 0 and 1, exclusive (got {})", gate.holdout_fraction),
            ));
        }
        unit("gate.retention_tolerance", gate.retention_tolerance)?;
        if let Some(i) = gate.retention_datasets.iter().position(|d| d.0.trim().is_empty()) {
            return Err(Error::config(format!("gate.retention_datasets[{i}]"), "is empty"));
        }
        Ok(())
    }

    /// [`RetrainPolicy::validate`], then the checks against the kind of the production
    /// model watched: a field of the other kind (an accuracy trigger on a language
    /// model, a LoRA setting on a classifier, a gate metric the model has not) is
    /// `invalid_config` naming it, and so is `lm_method` `continue` on a model that is
    /// not a LoRA adapter.
    pub fn validate_for(&self, kind: ModelKind) -> Result<()> {
        self.validate()?;
        let (t, a, gate) = (&self.triggers, &self.action, &self.gate);
        let metric = gate.metric_for(kind);
        if kind == ModelKind::Classifier {
            let lm_only = [
                ("triggers.metric", t.metric.is_some(), "classifiers are watched by accuracy_floor and relative_drop"),
                ("triggers.metric_limit", t.metric_limit.is_some(), "classifiers have accuracy_floor instead"),
                ("triggers.new_rows", t.new_rows.is_some(), "classifiers count labels: use new_labels"),
                ("action.lm_method", a.lm_method.is_some(), "a classifier is refitted, not trained with LoRA"),
                ("action.lora", a.lora.is_some(), "a classifier is refitted, not trained with LoRA"),
                ("action.max_steps", a.max_steps.is_some(), "set the classifier's settings in action.config"),
                ("action.learning_rate", a.learning_rate.is_some(), "set the classifier's settings in action.config"),
            ];
            if let Some((field, _, why)) = lm_only.iter().find(|f| f.1) {
                return Err(other_kind(
                    field,
                    &format!("is for language models; the production model is a classifier ({why})"),
                ));
            }
            if !CLASSIFIER_METRICS.contains(&metric) {
                return Err(Error::config(
                    "gate.metric",
                    format!(
                        "`{metric}` is a language-model metric; a classifier gates on {}",
                        CLASSIFIER_METRICS.join(", ")
                    ),
                ));
            }
        } else {
            let classifier_only = [
                ("triggers.accuracy_floor", t.accuracy_floor.is_some(), "use metric_limit (loss, perplexity)"),
                ("triggers.new_labels", t.new_labels.is_some(), "count fed rows with new_rows"),
                ("action.config", a.config.is_some(), "use lm_method, lora, max_steps, learning_rate"),
            ];
            if let Some((field, _, why)) = classifier_only.iter().find(|f| f.1) {
                return Err(other_kind(
                    field,
                    &format!("is for classifiers; the production model is a language model ({why})"),
                ));
            }
            if !LM_METRICS.contains(&metric) {
                return Err(Error::config(
                    "gate.metric",
                    format!("`{metric}` is a classifier metric; a language model gates on {}", LM_METRICS.join(", ")),
                ));
            }
            if a.lm_method == Some(LmRetrainMethod::Continue) && kind != ModelKind::Lora {
                return Err(Error::config(
                    "action.lm_method",
                    format!("`continue` trains the production adapter further, but the production model is a {kind} model, not a LoRA adapter"),
                ));
            }
        }
        if let Some(f) = gate.floor {
            if lower_is_better(metric) {
                positive("gate.floor", f)?;
            } else {
                unit("gate.floor", f)?;
            }
        }
        if !lower_is_better(metric) && !(-1.0..=1.0).contains(&gate.margin) {
            return Err(Error::config("gate.margin", format!("must be between -1 and 1 (got {})", gate.margin)));
        }
        Ok(())
    }
}

/// Options of [`crate::Monitors::create`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorOptions {
    /// The monitor's name (unique in the home). Default: the model name.
    pub name: Option<String>,
}

/// Options of [`crate::Monitor::tick_with`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TickOptions {
    /// Run the retraining job on this thread (default). `false`: submit it only (a
    /// pending job for another process's runner or a later tick).
    pub run_jobs: bool,
}

impl Default for TickOptions {
    fn default() -> Self {
        Self { run_jobs: true }
    }
}

named_enum! {
    /// What one tick of a monitor did.
    pub enum TickOutcome("tick outcome") {
        /// Nothing triggered.
        Idle = "idle",
        /// A trigger breached but a guard (minimum samples, consecutive breaches,
        /// cooldown, daily cap) held it back; `reason` says which.
        Held = "held",
        /// A retraining job was created (and not run by this tick).
        RetrainStarted = "retrain_started",
        /// The monitor's job is running elsewhere (or was claimed by another tick).
        Waiting = "waiting",
        /// The candidate passed the gate and was promoted.
        Promoted = "promoted",
        /// The candidate failed the gate: production stays.
        Kept = "kept",
        /// The candidate passed and waits for [`crate::Monitor::approve`] (manual
        /// and shadow modes).
        AwaitingApproval = "awaiting_approval",
        /// The pass failed (recorded as a `monitor_error` decision).
        Error = "error",
    }
}

/// The result of one [`crate::Monitor::tick`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TickReport {
    pub monitor: String,
    pub outcome: TickOutcome,
    /// The production model at the tick, `name@version`.
    pub model: Option<String>,
    /// Classifiers: realised accuracy of its last `triggers.window` labelled predictions.
    pub realised_accuracy: Option<f64>,
    /// The rows the accuracy or metric triggers read: labelled predictions
    /// (classifiers) or fed rows not trained on yet (language models).
    pub labelled: u64,
    /// Language models: the production model's `triggers.metric` on those rows.
    #[serde(default)]
    pub window_metric: Option<f64>,
    /// The trigger that fired or breached (`accuracy_floor`, `metric_limit`,
    /// `relative_drop`, `drift`, `new_labels`, `new_rows`, `schedule`).
    pub trigger: Option<String>,
    /// Why, in a sentence (values and thresholds).
    pub reason: String,
    /// The retraining job involved.
    pub job_id: Option<JobId>,
    /// The candidate involved, `name@version`.
    pub candidate: Option<String>,
    pub at: String,
}

/// A monitor as stored in the catalog: its policy and its state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MonitorRecord {
    pub id: String,
    pub name: String,
    /// The watched model name (its `production` alias is the model watched).
    pub model_name: String,
    pub policy: RetrainPolicy,
    /// Ticks in a row that found a breach.
    pub consecutive_breaches: u32,
    /// When the last retrain was started (RFC 3339).
    pub last_retrain_at: Option<String>,
    /// Retrains started today (UTC), counted from the decision trail.
    pub retrains_today: u64,
    /// The retraining job in flight (created, running, interrupted or finished but not
    /// gated yet).
    pub current_job_id: Option<JobId>,
    /// The candidate waiting for approval (manual and shadow modes).
    pub candidate_id: Option<ModelId>,
    /// The gate's evaluation dataset of the job in flight.
    pub eval_dataset_id: Option<DatasetId>,
    pub last_tick: Option<TickReport>,
    pub created_at: String,
    pub updated_at: String,
}

/// A dataset fed to a language model's monitor ([`crate::Monitor::feed`]): new data
/// for its triggers and its next retrain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MonitorFeed {
    /// Increasing: the order of feeds.
    pub id: u64,
    pub dataset_id: DatasetId,
    /// The dataset's name when it was fed.
    pub dataset: String,
    pub rows: u64,
    pub fed_at: String,
    /// The retraining job that took it; none while it waits for a retrain (a retrain
    /// whose candidate was refused, or whose job failed, gives it back).
    pub job_id: Option<JobId>,
}

named_enum! {
    /// The kind of a monitor decision (a row of the decision trail).
    pub enum DecisionKind("decision kind") {
        /// A breach held back by a guard.
        Held = "held",
        /// The drift check found drift.
        DriftDetected = "drift_detected",
        /// A retraining job was created.
        RetrainStarted = "retrain_started",
        /// A job of the monitor left interrupted, failed or pending was run again.
        RetrainResumed = "retrain_resumed",
        /// The gate's verdict on a candidate.
        CandidateEvaluated = "candidate_evaluated",
        /// The candidate scored on logged traffic (shadow mode).
        Shadow = "shadow",
        /// `production` moved to the candidate.
        Promoted = "promoted",
        /// The candidate failed the gate; production kept.
        Kept = "kept",
        /// `production` moved back to `previous`.
        RolledBack = "rolled_back",
        /// A pass failed.
        Error = "error",
    }
}

/// One decision of a monitor, with its reason (a row of `monitor_decisions`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MonitorDecision {
    /// Increasing: the order of decisions.
    pub id: u64,
    pub monitor_id: String,
    pub kind: DecisionKind,
    /// The production model at the time.
    pub model_id: Option<ModelId>,
    pub job_id: Option<JobId>,
    pub candidate_id: Option<ModelId>,
    pub trigger: Option<String>,
    pub reason: String,
    /// Figures behind the decision (accuracies, metrics, datasets, rows).
    pub details: Value,
    pub at: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn field(p: &RetrainPolicy) -> String {
        match p.validate().unwrap_err() {
            Error::InvalidConfig { field, .. } => field,
            o => panic!("{o}"),
        }
    }

    fn ok() -> RetrainPolicy {
        RetrainPolicy {
            triggers: RetrainTriggers { accuracy_floor: Some(0.8), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn policies_validate_and_name_the_field() {
        ok().validate().unwrap();
        assert_eq!(field(&RetrainPolicy::default()), "triggers");
        let mut p = ok();
        p.triggers.accuracy_floor = Some(1.5);
        assert_eq!(field(&p), "triggers.accuracy_floor");
        let mut p = ok();
        p.triggers.relative_drop = Some(1.0);
        assert_eq!(field(&p), "triggers.relative_drop");
        let mut p = ok();
        p.guards.min_samples = 500;
        assert_eq!(field(&p), "guards.min_samples");
        let mut p = ok();
        p.guards.cooldown_secs = -1.0;
        assert_eq!(field(&p), "guards.cooldown_secs");
        let mut p = ok();
        p.guards.cooldown_secs = f64::NAN;
        assert_eq!(field(&p), "guards.cooldown_secs");
        let mut p = ok();
        p.guards.consecutive_breaches = 0;
        assert_eq!(field(&p), "guards.consecutive_breaches");
        let mut p = ok();
        p.guards.daily_cap = Some(0);
        assert_eq!(field(&p), "guards.daily_cap");
        let mut p = ok();
        p.triggers.schedule_secs = Some(60.0);
        p.guards.cooldown_secs = 120.0;
        assert_eq!(field(&p), "guards.cooldown_secs");
        let mut p = ok();
        p.triggers.schedule_secs = Some(0.0);
        assert_eq!(field(&p), "triggers.schedule_secs");
        let mut p = ok();
        p.triggers.new_labels = Some(0);
        assert_eq!(field(&p), "triggers.new_labels");
        let mut p = ok();
        p.triggers.drift_window = Some(0);
        assert_eq!(field(&p), "triggers.drift_window");
        let mut p = ok();
        p.gate.floor = Some(1.01);
        p.gate.metric = Some("accuracy".into());
        assert_eq!(field(&p), "gate.floor");
        let mut p = ok();
        p.gate.floor = Some(-1.0);
        assert_eq!(field(&p), "gate.floor");
        let mut p = ok();
        p.gate.metric = Some("bleu".into());
        assert_eq!(field(&p), "gate.metric");
        let mut p = ok();
        p.gate.retention_tolerance = 1.5;
        assert_eq!(field(&p), "gate.retention_tolerance");
        let mut p = ok();
        p.triggers.new_rows = Some(0);
        assert_eq!(field(&p), "triggers.new_rows");
        let mut p = ok();
        p.triggers.metric_limit = Some(-1.0);
        assert_eq!(field(&p), "triggers.metric_limit");
        let mut p = ok();
        p.triggers.metric = Some("accuracy".into());
        assert_eq!(field(&p), "triggers.metric");
        let mut p = ok();
        p.action.max_steps = Some(0);
        assert_eq!(field(&p), "action.max_steps");
        let mut p = ok();
        p.gate.margin = 2.0;
        assert_eq!(field_for(&p, ModelKind::Classifier), "gate.margin");
        p.gate.margin = f64::INFINITY;
        assert_eq!(field(&p), "gate.margin");
        let mut p = ok();
        p.gate.holdout_fraction = 0.0;
        assert_eq!(field(&p), "gate.holdout_fraction");
        let mut p = ok();
        p.action.replay_fraction = -0.1;
        assert_eq!(field(&p), "action.replay_fraction");
    }

    #[test]
    fn policies_read_from_json_with_defaults_and_refuse_unknown_fields() {
        let p: RetrainPolicy = serde_json::from_value(serde_json::json!({
            "triggers": {"accuracy_floor": 0.7},
            "guards": {"cooldown_secs": 60},
            "gate": {"mode": "manual", "margin": 0.01}
        }))
        .unwrap();
        assert_eq!(p.gate.mode, PromotionMode::Manual);
        assert_eq!(p.triggers.window, 200);
        assert_eq!(p.guards.min_samples, 30);
        p.validate().unwrap();
        let bad = serde_json::from_value::<RetrainPolicy>(serde_json::json!({"triggers": {"floor": 0.7}}));
        assert!(bad.is_err());
        let lm: RetrainPolicy = serde_json::from_value(serde_json::json!({
            "triggers": {"metric_limit": 3.5, "new_rows": 100, "metric": "perplexity"},
            "action": {"lm_method": "continue", "replay_fraction": 0.25, "max_steps": 20},
            "gate": {"metric": "loss", "floor": 4.0, "retention_versions": 2, "retention_datasets": ["old"],
                     "retention_tolerance": 0.1}
        }))
        .unwrap();
        assert_eq!(lm.action.lm_method, Some(LmRetrainMethod::Continue));
        lm.validate_for(ModelKind::Lora).unwrap();
        assert!(lower_is_better(lm.gate.metric_for(ModelKind::Lora)));
    }

    fn field_for(p: &RetrainPolicy, kind: ModelKind) -> String {
        match p.validate_for(kind).unwrap_err() {
            Error::InvalidConfig { field, .. } => field,
            o => panic!("{o}"),
        }
    }

    /// A field of the other kind of model, or one that contradicts another, is
    /// refused naming it.
    #[test]
    fn policies_are_checked_against_the_kind_they_watch() {
        let lm = RetrainPolicy {
            triggers: RetrainTriggers { metric_limit: Some(3.0), ..Default::default() },
            ..Default::default()
        };
        lm.validate_for(ModelKind::Lora).unwrap();
        lm.validate_for(ModelKind::Full).unwrap();
        assert_eq!(field_for(&lm, ModelKind::Classifier), "triggers.metric_limit");
        assert_eq!(field_for(&ok(), ModelKind::Lora), "triggers.accuracy_floor");
        ok().validate_for(ModelKind::Classifier).unwrap();
        // Classifier settings on a language model, LoRA on a classifier.
        let mut p = lm.clone();
        p.action.config = Some(ClassifierConfig::default());
        assert_eq!(field_for(&p, ModelKind::Lora), "action.config");
        let mut p = ok();
        p.action.lora = Some(LoraConfig::default());
        assert_eq!(field_for(&p, ModelKind::Classifier), "action.lora");
        let mut p = ok();
        p.action.lm_method = Some(LmRetrainMethod::Lora);
        assert_eq!(field_for(&p, ModelKind::Classifier), "action.lm_method");
        // Both at once contradict each other whatever the model.
        let mut p = ok();
        p.action.config = Some(ClassifierConfig::default());
        p.action.lora = Some(LoraConfig::default());
        assert_eq!(field(&p), "action.lora");
        let mut p = lm.clone();
        p.action.lm_method = Some(LmRetrainMethod::Continue);
        p.action.lora = Some(LoraConfig::default());
        assert_eq!(field(&p), "action.lora");
        // `continue` needs an adapter in production.
        let mut p = lm.clone();
        p.action.lm_method = Some(LmRetrainMethod::Continue);
        p.validate_for(ModelKind::Lora).unwrap();
        assert_eq!(field_for(&p, ModelKind::Full), "action.lm_method");
        // Metrics of the other kind; bounds that flip with the metric's direction.
        let mut p = lm.clone();
        p.gate.metric = Some("accuracy".into());
        assert_eq!(field_for(&p, ModelKind::Lora), "gate.metric");
        let mut p = ok();
        p.gate.metric = Some("perplexity".into());
        assert_eq!(field_for(&p, ModelKind::Classifier), "gate.metric");
        let mut p = lm.clone();
        p.gate.floor = Some(2.5); // a loss of at most 2.5
        p.gate.margin = 1.5;
        p.validate_for(ModelKind::Lora).unwrap();
        let mut p = ok();
        p.gate.floor = Some(2.5);
        assert_eq!(field_for(&p, ModelKind::Classifier), "gate.floor");
        let mut p = lm;
        p.triggers.new_labels = Some(10);
        assert_eq!(field_for(&p, ModelKind::Lora), "triggers.new_labels");
    }
}

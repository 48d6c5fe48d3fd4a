//! Retraining policies and monitors: when a production model is retrained, how the
//! candidate is gated, and the state and decision trail a monitor keeps in the catalog
//! (see [`crate::Monitor`]).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::continual::ClassifierConfig;
use super::ids::{DatasetId, JobId, ModelId};
use super::names::named_enum;
use crate::error::{Error, Result};

/// What triggers a retrain. Each trigger is off unless set; at least one must be set.
///
/// The accuracy triggers read the realised accuracy of the production model's last
/// `window` labelled predictions ([`crate::Continual::realised_accuracy`]); they
/// breach only once `guards.min_samples` labels are there.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainTriggers {
    /// Breach when realised accuracy falls below this absolute floor (0..=1).
    pub accuracy_floor: Option<f64>,
    /// Breach when realised accuracy falls below the production model's reference
    /// accuracy (its held-out accuracy at training time, else its training accuracy)
    /// times `1 - relative_drop` (0 < relative_drop < 1; 0.1 = a 10 % drop).
    pub relative_drop: Option<f64>,
    /// Breach when a drift check ([`crate::Continual::drift`]) of the last
    /// `drift_window` predictions has the verdict `drift` (at least 1).
    pub drift_window: Option<u64>,
    /// Retrain once this many predictions were labelled since the last retrain (or
    /// since the monitor was created) (at least 1).
    pub new_labels: Option<u64>,
    /// Retrain every this many seconds (since the last retrain, or since the monitor
    /// was created) (> 0).
    pub schedule_secs: Option<f64>,
    /// Labelled predictions the accuracy triggers read (newest first). Default 200.
    pub window: u64,
}

impl Default for RetrainTriggers {
    fn default() -> Self {
        Self {
            accuracy_floor: None,
            relative_drop: None,
            drift_window: None,
            new_labels: None,
            schedule_secs: None,
            window: 200,
        }
    }
}

/// What holds a trigger back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainGuards {
    /// The accuracy triggers need at least this many labelled predictions in their
    /// window (at least 1, at most `triggers.window`). Default 30.
    pub min_samples: u64,
    /// A breach (accuracy floor, relative drop, drift) retrains only after this many
    /// ticks in a row found one (at least 1). `new_labels` and `schedule` are not
    /// breaches: they fire at once. Default 1.
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

/// The training job a retrain creates: a classifier refit on the production model's
/// training dataset (a `replay_fraction` share of it, spread evenly) plus the
/// production model's labelled predictions (their logged features and true labels),
/// written together as a new tabular dataset. The job's spec is the production
/// model's own (from its lineage) with that dataset and, when given, `config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RetrainAction {
    /// The classifier's settings; default: those the production model was trained with.
    pub config: Option<ClassifierConfig>,
    /// Share of the old training rows kept (0..=1; 0 trains on the new rows only).
    /// Default 1.
    pub replay_fraction: f64,
}

impl Default for RetrainAction {
    fn default() -> Self {
        Self { config: None, replay_fraction: 1.0 }
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
        /// Left as the `candidate` alias and scored on logged traffic (the features
        /// of the production model's recent labelled predictions) without serving
        /// it; the comparison is recorded. [`crate::Monitor::approve`] promotes it.
        Shadow = "shadow",
    }
}

/// Metrics a gate may compare (higher is better).
pub const GATE_METRICS: &[&str] = &["accuracy", "f1_macro"];

/// The promotion gate: the candidate and the production model are evaluated on the
/// same dataset ([`crate::Continual::evaluate`]); the candidate passes when its
/// `metric` is at least `floor` and at least production's plus `margin`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct GatePolicy {
    pub mode: PromotionMode,
    /// `accuracy` (default) or `f1_macro`.
    pub metric: String,
    /// Absolute floor on the candidate's metric (0..=1). Default 0.
    pub floor: f64,
    /// How much the candidate must beat production by (-1..=1). Default 0 (at least
    /// as good).
    pub margin: f64,
    /// A fixed evaluation dataset (id or name). Default: the newest `holdout_fraction`
    /// of the labelled predictions used by the retrain, held out of its training rows.
    pub dataset: Option<DatasetId>,
    /// Share of the new labelled rows held out for the gate when `dataset` is unset
    /// (0 < share < 1). Default 0.3.
    pub holdout_fraction: f64,
}

impl Default for GatePolicy {
    fn default() -> Self {
        Self {
            mode: PromotionMode::Auto,
            metric: "accuracy".into(),
            floor: 0.0,
            margin: 0.0,
            dataset: None,
            holdout_fraction: 0.3,
        }
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

impl RetrainPolicy {
    /// Checks every field and the guards against each other; `invalid_config` naming
    /// the field (`triggers.accuracy_floor`, `guards.min_samples`, ...).
    pub fn validate(&self) -> Result<()> {
        let t = &self.triggers;
        let g = &self.guards;
        if t.accuracy_floor.is_none()
            && t.relative_drop.is_none()
            && t.drift_window.is_none()
            && t.new_labels.is_none()
            && t.schedule_secs.is_none()
        {
            return Err(Error::config(
                "triggers",
                "no trigger is set: set accuracy_floor, relative_drop, drift_window, new_labels or schedule_secs",
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
        if let Some(s) = t.schedule_secs {
            if !(s.is_finite() && s > 0.0) {
                return Err(Error::config("triggers.schedule_secs", format!("must be a positive number (got {s})")));
            }
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
                    "is {} but the accuracy window (triggers.window) holds only {}: the accuracy triggers could never fire",
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
        unit("action.replay_fraction", self.action.replay_fraction)?;
        if let Some(c) = &self.action.config {
            c.validate().map_err(|e| match e {
                Error::InvalidConfig { field, reason } => Error::config(format!("action.config.{field}"), reason),
                o => o,
            })?;
        }
        let gate = &self.gate;
        if !GATE_METRICS.contains(&gate.metric.as_str()) {
            return Err(Error::config(
                "gate.metric",
                format!("`{}` is not a gate metric; use one of {}", gate.metric, GATE_METRICS.join(", ")),
            ));
        }
        unit("gate.floor", gate.floor)?;
        if !(gate.margin.is_finite() && (-1.0..=1.0).contains(&gate.margin)) {
            return Err(Error::config("gate.margin", format!("must be between -1 and 1 (got {})", gate.margin)));
        }
        if !(gate.holdout_fraction > 0.0 && gate.holdout_fraction < 1.0) {
            return Err(Error::config(
                "gate.holdout_fraction",
                format!("must be between 0 and 1, exclusive (got {})", gate.holdout_fraction),
            ));
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
    /// Realised accuracy of its last `triggers.window` labelled predictions.
    pub realised_accuracy: Option<f64>,
    pub labelled: u64,
    /// The trigger that fired or breached (`accuracy_floor`, `relative_drop`, `drift`,
    /// `new_labels`, `schedule`).
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
        p.gate.floor = 1.01;
        assert_eq!(field(&p), "gate.floor");
        let mut p = ok();
        p.gate.metric = "loss".into();
        assert_eq!(field(&p), "gate.metric");
        let mut p = ok();
        p.gate.margin = 2.0;
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
    }
}

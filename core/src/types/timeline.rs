//! The timeline of a monitored model name ([`crate::Continual::timeline`]): realised
//! accuracy, drift checks, evaluations and alias/monitor events over time, all read
//! from catalog rows; and the options of its PNG plot
//! ([`crate::Continual::plot_timeline`]).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::drift::DriftVerdict;
use super::ids::{DatasetId, DriftCheckId, EvaluationId, JobId, ModelId, PredictionId};
use super::names::named_enum;
use crate::error::{Error, Result};

/// Most labelled predictions one rolling-accuracy window may hold, and most points
/// one timeline returns.
pub const MAX_TIMELINE_WINDOW: u64 = 1_000_000;
pub const MAX_TIMELINE_POINTS: u64 = 1_000_000;

/// What [`crate::Continual::timeline`] reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TimelineOptions {
    /// Labelled predictions in the rolling accuracy window (1 to 1 000 000). Default 50.
    pub window: u64,
    /// Only what happened at or after this RFC 3339 time (predictions by the time they
    /// were made; checks, evaluations and events by theirs). The rolling window of the
    /// first points still reaches back before it. Default: from the beginning.
    pub since: Option<String>,
    /// Only what happened at or before this RFC 3339 time. Default: until now.
    pub until: Option<String>,
    /// At most this many accuracy points (2 to 1 000 000): beyond it, every k-th
    /// labelled prediction is kept, evenly spaced, the first and the last always.
    /// Default 2000.
    pub max_points: u64,
}

impl Default for TimelineOptions {
    fn default() -> Self {
        Self { window: 50, since: None, until: None, max_points: 2000 }
    }
}

impl TimelineOptions {
    /// Checks the ranges; returns `since` and `until` in the catalog's form (UTC,
    /// milliseconds). `invalid_config` naming the field otherwise.
    pub(crate) fn checked(&self) -> Result<(Option<String>, Option<String>)> {
        if !(1..=MAX_TIMELINE_WINDOW).contains(&self.window) {
            return Err(Error::config(
                "window",
                format!("must be 1 to {MAX_TIMELINE_WINDOW} labelled predictions, got {}", self.window),
            ));
        }
        if !(2..=MAX_TIMELINE_POINTS).contains(&self.max_points) {
            return Err(Error::config(
                "max_points",
                format!("must be 2 to {MAX_TIMELINE_POINTS}, got {}", self.max_points),
            ));
        }
        let since = self.since.as_deref().map(|s| super::alias::catalog_time("since", s)).transpose()?;
        let until = self.until.as_deref().map(|s| super::alias::catalog_time("until", s)).transpose()?;
        if let (Some(s), Some(u)) = (&since, &until) {
            if u < s {
                return Err(Error::config("until", format!("{u} is before since ({s})")));
            }
        }
        Ok((since, until))
    }
}

/// How [`crate::Continual::plot_timeline`] draws.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct PlotOptions {
    /// Pixels (160 to 10 000). Default 1200.
    pub width: u32,
    /// Pixels (120 to 10 000; enough for both panels). Default 700.
    pub height: u32,
    /// Default: `<name>: realised accuracy and drift`.
    pub title: Option<String>,
}

impl Default for PlotOptions {
    fn default() -> Self {
        Self { width: 1200, height: 700, title: None }
    }
}

/// Realised accuracy after one labelled prediction: the share of correct ones among
/// the last `window_rows` labelled predictions of the model name (every version),
/// in the order they were made, this one included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AccuracyPoint {
    /// Position among the name's labelled predictions (1 = the first ever made).
    pub index: u64,
    /// When the prediction was made (RFC 3339, UTC).
    pub at: String,
    pub prediction_id: PredictionId,
    /// The model that served it.
    pub model_id: ModelId,
    pub version: u32,
    pub correct: bool,
    pub accuracy: f64,
    /// Labelled predictions in the window (below `window` at the start).
    pub window_rows: u64,
}

/// One drift check of a version of the model name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct DriftPoint {
    pub at: String,
    pub check_id: DriftCheckId,
    pub model_id: ModelId,
    pub version: u32,
    /// The checked window ([`crate::DriftWindow::describe`]).
    pub window: String,
    pub verdict: DriftVerdict,
    /// The dataset-level score: the share of drifted columns (classifiers) or the KS
    /// statistic of the per-sample losses (language models). Null when the verdict is
    /// `insufficient_data` (no conclusion, not a score of 0).
    pub score: Option<f64>,
    /// Classifiers: drifted and compared columns.
    pub drifted_columns: Option<u64>,
    pub columns: Option<u64>,
    /// Rows (or samples) in the checked window.
    pub window_rows: Option<u64>,
    /// As stored with the check ([`crate::DriftCheck`]).
    pub expected_accuracy: Option<f64>,
    pub realised_accuracy: Option<f64>,
}

/// One evaluation of a version of the model name (e.g. a gate's, on its holdout).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct EvaluationPoint {
    pub at: String,
    pub evaluation_id: EvaluationId,
    pub model_id: ModelId,
    pub version: u32,
    pub dataset_id: DatasetId,
    pub metrics: BTreeMap<String, f64>,
    pub rows: u64,
}

named_enum! {
    /// What a timeline marks.
    pub enum TimelineEventKind("timeline event") {
        /// `production` was promoted to `version` (alias history, action `promote`:
        /// by hand or by a monitor).
        Promoted = "promoted",
        /// `production` went back to `version` (alias history, action `rollback`).
        RolledBack = "rolled_back",
        /// A monitor started retraining production `version` (its decision trail).
        RetrainStarted = "retrain_started",
        /// A monitor's candidate `version` failed the gate; production stayed.
        Kept = "kept",
    }
}

/// A moment to mark on the timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TimelineEvent {
    pub at: String,
    pub kind: TimelineEventKind,
    /// Promoted / rolled back: what production points at afterwards. Retrain started:
    /// the production model retrained. Kept: the rejected candidate.
    pub model_id: Option<ModelId>,
    pub version: Option<u32>,
    /// Promoted / rolled back: what production pointed at before.
    pub previous_version: Option<u32>,
    /// Retrain started, kept: the retraining job.
    pub job_id: Option<JobId>,
    /// Retrain started, kept: the monitor that decided.
    pub monitor: Option<String>,
    pub reason: Option<String>,
}

/// Realised accuracy of one version over the timeline's range.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct VersionAccuracy {
    pub model_id: ModelId,
    pub version: u32,
    /// Predictions it made in the range, and how many of them were labelled.
    pub predictions: u64,
    pub labelled: u64,
    pub correct: u64,
    /// `correct / labelled`; null without a label.
    pub accuracy: Option<f64>,
    /// Its first and last prediction in the range.
    pub first_at: String,
    pub last_at: String,
}

/// A model name over time ([`crate::Continual::timeline`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Timeline {
    pub model_name: String,
    /// [`TimelineOptions::window`].
    pub window: u64,
    /// The range applied (UTC, milliseconds).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Labelled predictions in the range (before `max_points` thinned them).
    pub labelled: u64,
    /// Oldest first.
    pub accuracy: Vec<AccuracyPoint>,
    /// Per version, oldest version first.
    pub versions: Vec<VersionAccuracy>,
    /// Oldest first.
    pub drift: Vec<DriftPoint>,
    /// Oldest first.
    pub evaluations: Vec<EvaluationPoint>,
    /// Oldest first.
    pub events: Vec<TimelineEvent>,
    /// The highest `triggers.accuracy_floor` of the monitors of this name, if any.
    pub accuracy_floor: Option<f64>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn options_read_from_json_and_name_the_bad_field() {
        let o: TimelineOptions = serde_json::from_value(serde_json::json!({"window": 20})).unwrap();
        assert_eq!((o.window, o.max_points), (20, 2000));
        assert!(serde_json::from_value::<TimelineOptions>(serde_json::json!({"windows": 20})).is_err());
        let field = |o: TimelineOptions| match o.checked().unwrap_err() {
            Error::InvalidConfig { field, .. } => field,
            e => panic!("{e}"),
        };
        assert_eq!(field(TimelineOptions { window: 0, ..Default::default() }), "window");
        assert_eq!(field(TimelineOptions { max_points: 1, ..Default::default() }), "max_points");
        assert_eq!(field(TimelineOptions { since: Some("yesterday".into()), ..Default::default() }), "since");
        let o = TimelineOptions {
            since: Some("2026-01-02T00:00:00Z".into()),
            until: Some("2026-01-01T00:00:00Z".into()),
            ..Default::default()
        };
        assert_eq!(field(o), "until");
        let o = TimelineOptions { since: Some("2026-01-01T01:00:00+01:00".into()), ..Default::default() };
        assert_eq!(o.checked().unwrap().0.as_deref(), Some("2026-01-01T00:00:00.000Z"));
        let p: PlotOptions = serde_json::from_value(serde_json::json!({"width": 800})).unwrap();
        assert_eq!((p.width, p.height), (800, 700));
    }
}

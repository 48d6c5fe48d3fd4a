//! Event payloads: what anneal reports while it works (see [`crate::EventSink`] for
//! the order of a run's events).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::named_enum;
use crate::error::Error;

named_enum! {
    /// How an operation ended.
    pub enum FinishStatus("status") {
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

named_enum! {
    /// A promotion gate's conclusion on a candidate.
    pub enum GateVerdict("gate verdict") {
        /// The candidate cleared the floor and beat production by the margin.
        Passed = "passed",
        /// It did not; `reason` says which condition failed.
        Failed = "failed",
    }
}

/// An error as carried inside an event: the stable code and the message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorInfo {
    pub code: String,
    pub message: String,
}

impl From<&Error> for ErrorInfo {
    fn from(e: &Error) -> Self {
        ErrorInfo { code: e.code().to_string(), message: e.to_string() }
    }
}

/// Everything anneal reports while it works.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// A training job started (or resumed).
    JobStarted { job_id: String, total_steps: u64, epochs: u32 },
    /// One optimiser step finished.
    Step {
        job_id: String,
        epoch: u32,
        step: u64,
        total_steps: u64,
        loss: f64,
        lr: f64,
        tokens_per_sec: f64,
        progress: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sample: Option<String>,
        /// Image models: the latest validation image (absolute path of a PNG), once one
        /// has been rendered.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        image: Option<String>,
    },
    /// An evaluation finished.
    Eval { job_id: String, step: u64, metrics: BTreeMap<String, f64> },
    /// A checkpoint was written.
    Checkpoint { job_id: String, step: u64, path: String },
    /// A log line.
    Log { job_id: String, level: String, message: String },
    /// The job ended. Always the last event of a run.
    JobFinished {
        job_id: String,
        status: FinishStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model_id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    /// A long task (an import, a registration) started. `total` is in the task's unit.
    TaskStarted {
        task: String,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
        unit: String,
    },
    /// Progress of a long task.
    TaskProgress {
        task: String,
        done: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        total: Option<u64>,
    },
    /// The task ended. Always the last event of a task.
    TaskFinished {
        task: String,
        status: FinishStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<ErrorInfo>,
    },
    /// A monitor found the recent window drifting away from the model's reference
    /// profile (a dataset verdict of `drift`, or a stream detector firing).
    DriftDetected {
        /// The monitor (or policy) that ran the check.
        monitor: String,
        /// The watched model, `name@version`, and its id.
        model: String,
        model_id: String,
        /// What drifted: `features` (per-column tests), `loss` (per-sample loss of a
        /// language model) or a stream detector (`page_hinkley`, `ddm`, `adwin`).
        signal: String,
        /// Rows in the window compared with the reference.
        window_rows: u64,
        /// Names of the columns that drifted (empty for a stream signal).
        drifted_columns: Vec<String>,
        /// The drift score: the share of drifting columns, or the detector's statistic.
        score: f64,
        /// The score at or above which drift is declared.
        threshold: f64,
        /// Label-free expected accuracy on the window (CBPE-style), when estimated.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expected_accuracy: Option<f64>,
    },
    /// A monitor's policy triggered and its retraining job was submitted.
    RetrainStarted {
        monitor: String,
        /// The production model being replaced, `name@version`, and its id.
        model: String,
        model_id: String,
        /// The training job (follow it with the `job_*` events or `training().job(id)`).
        job_id: String,
        /// The trigger that fired: `accuracy_floor`, `relative_drop`, `drift`,
        /// `new_labels`, `schedule` or `manual`.
        trigger: String,
        /// A sentence saying why (values and thresholds).
        reason: String,
    },
    /// A candidate went through the promotion gate.
    CandidateEvaluated {
        /// The monitor that ran the gate; absent for a manual evaluation.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        monitor: Option<String>,
        /// The candidate, `name@version`, and its id.
        candidate: String,
        candidate_id: String,
        /// The production model it was compared with, `name@version` (absent when there is
        /// none yet).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        production: Option<String>,
        /// The evaluation dataset's id (the same set for both models).
        dataset_id: String,
        /// The gating metric (`accuracy`, `f1_macro`, `loss`, ...).
        metric: String,
        /// The candidate's and production's value of `metric`.
        candidate_value: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        production_value: Option<f64>,
        /// Every metric of the candidate's evaluation.
        metrics: BTreeMap<String, f64>,
        verdict: GateVerdict,
        /// Why it passed or failed (floor, margin, retention set).
        reason: String,
    },
    /// An alias (normally `production`) moved to a new version.
    Promoted {
        /// The promoted version, `name@version`, and its id.
        model: String,
        model_id: String,
        /// The alias that moved.
        alias: String,
        /// The version the alias pointed at before, `name@version` (absent on the first
        /// promotion).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
        /// `auto` (the gate passed under auto-promote) or `manual` (an approval).
        mode: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        monitor: Option<String>,
        reason: String,
    },
    /// An alias moved back to the version it pointed at before.
    RolledBack {
        /// The version now serving, `name@version`, and its id.
        model: String,
        model_id: String,
        alias: String,
        /// The version the alias pointed at before (taken out of service), `name@version`.
        previous: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        monitor: Option<String>,
        reason: String,
    },
    /// A monitor's pass failed (a check, a retrain, a gate); the monitor keeps running.
    MonitorError {
        monitor: String,
        /// The model it was watching, `name@version`, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
        /// The job involved, when the failure is a retraining job's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_id: Option<String>,
        error: ErrorInfo,
    },
}

impl Event {
    /// The `type` tag, as serialized.
    pub fn type_name(&self) -> &'static str {
        match self {
            Event::JobStarted { .. } => "job_started",
            Event::Step { .. } => "step",
            Event::Eval { .. } => "eval",
            Event::Checkpoint { .. } => "checkpoint",
            Event::Log { .. } => "log",
            Event::JobFinished { .. } => "job_finished",
            Event::TaskStarted { .. } => "task_started",
            Event::TaskProgress { .. } => "task_progress",
            Event::TaskFinished { .. } => "task_finished",
            Event::DriftDetected { .. } => "drift_detected",
            Event::RetrainStarted { .. } => "retrain_started",
            Event::CandidateEvaluated { .. } => "candidate_evaluated",
            Event::Promoted { .. } => "promoted",
            Event::RolledBack { .. } => "rolled_back",
            Event::MonitorError { .. } => "monitor_error",
        }
    }

    /// Every `type` tag, in declaration order (what webhook event filters may name).
    pub const TYPE_NAMES: &'static [&'static str] = &[
        "job_started",
        "step",
        "eval",
        "checkpoint",
        "log",
        "job_finished",
        "task_started",
        "task_progress",
        "task_finished",
        "drift_detected",
        "retrain_started",
        "candidate_evaluated",
        "promoted",
        "rolled_back",
        "monitor_error",
    ];

    /// Frequent progress events that a [`Throttle`] may drop.
    pub fn is_progress(&self) -> bool {
        matches!(self, Event::Step { .. } | Event::TaskProgress { .. })
    }

    /// The event as a JSON value (what Python and Node callbacks receive).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

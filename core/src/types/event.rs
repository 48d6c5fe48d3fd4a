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
        }
    }

    /// Frequent progress events that a [`Throttle`] may drop.
    pub fn is_progress(&self) -> bool {
        matches!(self, Event::Step { .. } | Event::TaskProgress { .. })
    }

    /// The event as a JSON value (what Python and Node callbacks receive).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

//! Monitors: a [`RetrainPolicy`] on a model name's production classifier, run one
//! pass at a time ([`Monitor::tick`]) or on a background thread ([`Monitor::spawn`]).
//!
//! ```text
//! tick ─▶ job in flight? ── completed ─▶ gate ─▶ promote (auto) | candidate (manual, shadow) | keep
//!   │                   └─ pending / interrupted ─▶ run / resume it here (never a second job)
//!   │                   └─ running elsewhere ─▶ wait
//!   └─▶ triggers (floor, relative drop, drift, new labels, schedule) ─▶ guards
//!          ─▶ claim (transaction) ─▶ dataset (old rows + labelled predictions) ─▶ job
//!          ─▶ record the job id (transaction) ─▶ run it ─▶ gate ...
//! ```
//!
//! Every state change is one catalog transaction that also writes the decision row
//! (`monitor_decisions`) and enqueues the event to the webhooks' outbox; the event goes
//! to the caller's sink after the commit. A retrain is claimed before its job is
//! created and the job id recorded once it exists, so a second process, a restart or a
//! kill -9 mid-retrain finds that job and runs, resumes or waits for it.

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde_json::{json, Map, Value};

use super::{read_records, Continual};
use crate::catalog::models as alias_sql;
use crate::catalog::monitor::{self as sql, MonitorRow, NewDecision};
use crate::catalog::Conn;
use crate::data::DatasetStore;
use crate::error::{Error, Result};
use crate::events::{CancelToken, EventSink};
use crate::notify;
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::tabular::classifier::Classifier;
use crate::training::TrainingEngine;
use crate::types::{
    AccuracyOptions, AliasAction, AliasMove, DatasetFormat, DatasetId, DecisionKind, DriftVerdict, DriftWindow,
    ErrorInfo, Event, GateVerdict, ImportOptions, JobId, JobStatus, Method, ModelId, ModelKind, ModelRecord,
    MonitorDecision, MonitorOptions, MonitorRecord, OnDuplicate, PredictionFilter, PromotionMode, RetrainPolicy,
    RollbackOptions, TickOptions, TickOutcome, TickReport, TrainSpec, CANDIDATE, PREVIOUS, PRODUCTION,
};
use crate::util;

/// A claim whose job was not recorded within this long is taken over (its claimer
/// died while preparing the retrain).
const CLAIM_STALE_MS: i64 = 10 * 60 * 1000;

fn now_ms() -> i64 {
    crate::training::now_ms()
}

/// The monitors of a home ([`crate::Home::monitors`]). Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Monitors {
    store: Arc<Store>,
}

impl Monitors {
    pub(crate) fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Creates a monitor of model name `model_name` (its `production` alias must point
    /// at a classifier) with `policy`. A bad policy is `invalid_config` naming the
    /// field; a taken monitor name is `already_exists`.
    pub fn create(&self, model_name: &str, policy: &RetrainPolicy, opts: &MonitorOptions) -> Result<Monitor> {
        policy.validate()?;
        let name = opts.name.clone().unwrap_or_else(|| model_name.to_string());
        util::validate_name("name", &name)?;
        let registry = ModelRegistry::new(self.store.clone());
        let prod = production(&registry, model_name).map_err(|e| match e {
            Error::NotFound { .. } => Error::config(
                "model",
                format!("`{model_name}` has no production model: promote a version first (models().promote)"),
            ),
            o => o,
        })?;
        if prod.kind != ModelKind::Classifier {
            return Err(Error::config(
                "model",
                format!(
                    "{} is a {} model: monitors retrain classifiers (language-model retraining is not supported yet)",
                    prod.reference(),
                    prod.kind
                ),
            ));
        }
        if let Some(ds) = &policy.gate.dataset {
            DatasetStore::new(self.store.clone()).get(ds.clone()).map_err(|e| match e {
                Error::NotFound { .. } => Error::config("gate.dataset", format!("dataset `{ds}` does not exist")),
                o => o,
            })?;
        }
        let now = util::now();
        let rec = MonitorRecord {
            id: util::new_id("mon"),
            name: name.clone(),
            model_name: model_name.to_string(),
            policy: policy.clone(),
            consecutive_breaches: 0,
            last_retrain_at: None,
            retrains_today: 0,
            current_job_id: None,
            candidate_id: None,
            eval_dataset_id: None,
            last_tick: None,
            created_at: now.clone(),
            updated_at: now,
        };
        self.store.catalog.write(|tx| {
            if sql::by_name(tx, &name)?.is_some() {
                return Err(Error::AlreadyExists {
                    what: "monitor",
                    id: name.clone(),
                    detail: " (choose another name or delete it first)".into(),
                });
            }
            sql::insert(tx, &rec, now_ms())
        })?;
        Ok(Monitor { store: self.store.clone(), id: rec.id, name })
    }

    /// A monitor by name or id.
    pub fn get(&self, name: &str) -> Result<Monitor> {
        let row = self.store.catalog.read(|c| sql::get(c, name))?;
        Ok(Monitor { store: self.store.clone(), id: row.rec.id, name: row.rec.name })
    }

    /// Every monitor, by name.
    pub fn list(&self) -> Result<Vec<MonitorRecord>> {
        self.store.catalog.read(sql::list)
    }

    /// Deletes a monitor and its decision trail (its models, jobs and datasets stay).
    pub fn delete(&self, name: &str) -> Result<()> {
        self.store.catalog.write(|tx| {
            let row = sql::get(tx, name)?;
            sql::delete(tx, &row.rec.id)
        })
    }
}

/// One monitor (see the module documentation). Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct Monitor {
    store: Arc<Store>,
    id: String,
    name: String,
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor").field("name", &self.name).field("id", &self.id).finish()
    }
}

fn production(registry: &ModelRegistry, name: &str) -> Result<ModelRecord> {
    registry.resolve(format!("{name}@{PRODUCTION}").as_str())
}

/// The production model's reference accuracy: held out at training time, else on
/// its training rows.
fn reference_accuracy(m: &ModelRecord) -> Option<f64> {
    let metrics = m.lineage.metrics.as_ref()?;
    metrics.eval_accuracy.or(metrics.train_accuracy)
}

/// What a pass decided before writing it.
struct Draft {
    report: TickReport,
    decisions: Vec<(DecisionKind, Option<String>, Value)>,
    events: Vec<Event>,
}

impl Monitor {
    /// The monitor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn registry(&self) -> ModelRegistry {
        ModelRegistry::new(self.store.clone())
    }

    fn continual(&self) -> Continual {
        Continual::new(self.store.clone())
    }

    fn engine(&self) -> TrainingEngine {
        TrainingEngine::new(self.store.clone())
    }

    fn row(&self) -> Result<MonitorRow> {
        self.store.catalog.read(|c| sql::get(c, &self.id))
    }

    /// The monitor's policy and state as stored now.
    pub fn record(&self) -> Result<MonitorRecord> {
        Ok(self.row()?.rec)
    }

    /// The decision trail, oldest first.
    pub fn decisions(&self) -> Result<Vec<MonitorDecision>> {
        self.store.catalog.read(|c| sql::decisions(c, &self.id))
    }

    /// Replaces the policy (validated first); the state is kept.
    pub fn set_policy(&self, policy: &RetrainPolicy) -> Result<MonitorRecord> {
        policy.validate()?;
        let now = util::now();
        self.store.catalog.write(|tx| sql::set_policy(tx, &self.id, policy, &now))?;
        self.record()
    }

    /// Writes `f`'s changes, the decisions and the events' outbox rows in one
    /// transaction; then hands the events to `sink`.
    fn commit<T>(
        &self,
        sink: &mut dyn EventSink,
        decisions: &[(DecisionKind, NewRefs<'_>, &str, Value)],
        events: &[Event],
        f: impl FnOnce(&Conn) -> Result<T>,
    ) -> Result<T> {
        let at = util::now();
        let out = self.store.catalog.write(|tx| {
            let out = f(tx)?;
            for (kind, refs, reason, details) in decisions {
                let d = NewDecision {
                    kind: *kind,
                    model_id: refs.model,
                    job_id: refs.job,
                    candidate_id: refs.candidate,
                    trigger: refs.trigger,
                    reason,
                    details,
                };
                sql::add_decision(tx, &self.id, &d, &at)?;
            }
            let now = SystemTime::now();
            for e in events {
                notify::enqueue_in(tx, e, now)?;
            }
            Ok(out)
        })?;
        for e in events {
            let _ = sink.on_event(e);
        }
        Ok(out)
    }

    /// [`Monitor::tick_with`] with the default options (jobs run on this thread).
    pub fn tick(&self, sink: &mut dyn EventSink) -> Result<TickReport> {
        self.tick_with(sink, &TickOptions::default(), &CancelToken::new())
    }

    /// One pass: follows the job in flight (runs a pending one, resumes an interrupted
    /// one, waits for one running elsewhere, gates a completed one) or checks the
    /// triggers and guards and maybe starts a retrain. Events (`drift_detected`,
    /// `retrain_started`, `candidate_evaluated`, `promoted`, the job's `job_*`,
    /// `monitor_error`) go to `sink` and to the webhooks. A failed pass is recorded
    /// (decision `error`, event `monitor_error`) and returned as the error.
    pub fn tick_with(&self, sink: &mut dyn EventSink, opts: &TickOptions, cancel: &CancelToken) -> Result<TickReport> {
        let row = self.row()?;
        match self.pass(&row, sink, opts, cancel) {
            Ok(report) => {
                let _ = self.store.catalog.write(|tx| sql::set_last_tick(tx, &self.id, &report));
                Ok(report)
            }
            Err(e) => {
                let job = self.row().ok().and_then(|r| r.rec.current_job_id);
                let model = production(&self.registry(), &row.rec.model_name).ok();
                let report = TickReport {
                    monitor: self.name.clone(),
                    outcome: TickOutcome::Error,
                    model: model.as_ref().map(ModelRecord::reference),
                    realised_accuracy: None,
                    labelled: 0,
                    trigger: None,
                    reason: e.to_string(),
                    job_id: job.clone(),
                    candidate: None,
                    at: util::now(),
                };
                let event = Event::MonitorError {
                    monitor: self.name.clone(),
                    model: report.model.clone(),
                    job_id: job.as_ref().map(|j| j.0.clone()),
                    error: ErrorInfo::from(&e),
                };
                let refs = NewRefs { model: model.as_ref().map(|m| &m.id), job: job.as_ref(), ..Default::default() };
                let details = json!({"code": e.code()});
                let _ = self.commit(sink, &[(DecisionKind::Error, refs, &report.reason, details)], &[event], |tx| {
                    sql::set_last_tick(tx, &self.id, &report)
                });
                Err(e)
            }
        }
    }

    fn report(&self, outcome: TickOutcome, reason: impl Into<String>) -> TickReport {
        TickReport {
            monitor: self.name.clone(),
            outcome,
            model: None,
            realised_accuracy: None,
            labelled: 0,
            trigger: None,
            reason: reason.into(),
            job_id: None,
            candidate: None,
            at: util::now(),
        }
    }

    fn pass(
        &self,
        row: &MonitorRow,
        sink: &mut dyn EventSink,
        opts: &TickOptions,
        cancel: &CancelToken,
    ) -> Result<TickReport> {
        if let Some(job) = &row.rec.current_job_id {
            return self.follow(row, job, sink, opts, cancel);
        }
        let policy = &row.rec.policy;
        let (t, g) = (&policy.triggers, &policy.guards);
        let prod = production(&self.registry(), &row.rec.model_name)?;
        if let Some(c) = &row.rec.candidate_id {
            // A candidate awaiting approval holds further retrains, while it is still
            // the `candidate` (promoted or replaced by other means: forgotten).
            let target = self.store.catalog.read(|tx| alias_sql::alias_target(tx, &row.rec.model_name, CANDIDATE))?;
            if target.as_deref() == Some(c.0.as_str()) && prod.id != *c {
                let mut r = self.report(
                    TickOutcome::AwaitingApproval,
                    format!("candidate {c} awaits approval (Monitor::approve promotes it)"),
                );
                r.model = Some(prod.reference());
                r.candidate = self.registry().get(c).ok().map(|m| m.reference());
                return Ok(r);
            }
            let nowt = util::now();
            self.store.catalog.write(|tx| sql::clear_candidate(tx, &self.id, &nowt))?;
        }
        let continual = self.continual();
        let acc = continual.realised_accuracy(&prod.id, &AccuracyOptions { since: None, last: Some(t.window) })?;
        let mut draft = Draft { report: self.report(TickOutcome::Idle, ""), decisions: Vec::new(), events: Vec::new() };
        draft.report.model = Some(prod.reference());
        draft.report.realised_accuracy = acc.accuracy;
        draft.report.labelled = acc.labelled;
        let enough = acc.labelled >= g.min_samples;
        let mut breach: Option<(&str, String)> = None;
        let mut notes = Vec::new();
        if let Some(a) = acc.accuracy.filter(|_| enough) {
            if let Some(floor) = t.accuracy_floor {
                if a < floor {
                    breach = Some((
                        "accuracy_floor",
                        format!(
                            "realised accuracy {a:.4} on the last {} labelled predictions is under the floor {floor}",
                            acc.labelled
                        ),
                    ));
                }
            }
            if let (None, Some(drop)) = (&breach, t.relative_drop) {
                match reference_accuracy(&prod) {
                    Some(r) if a < r * (1.0 - drop) => {
                        breach = Some((
                            "relative_drop",
                            format!(
                                "realised accuracy {a:.4} is more than {:.1} % under the reference accuracy {r:.4}",
                                drop * 100.0
                            ),
                        ))
                    }
                    Some(_) => {}
                    None => {
                        notes.push(format!("{} has no reference accuracy: relative_drop skipped", prod.reference()))
                    }
                }
            }
        } else if t.accuracy_floor.is_some() || t.relative_drop.is_some() {
            notes.push(format!("{} labelled predictions, under min_samples {}", acc.labelled, g.min_samples));
        }
        if let (None, Some(n)) = (&breach, t.drift_window) {
            let check = continual.drift(&prod.id, &DriftWindow::Predictions(n))?;
            if check.verdict == DriftVerdict::Drift {
                let report = check.report.as_ref();
                let drifted: Vec<String> = report
                    .map(|r| r.columns.iter().filter(|c| c.drifted).map(|c| c.column.clone()).collect())
                    .unwrap_or_default();
                let rows = report.map(|r| r.window_rows).unwrap_or(0);
                let score = report.map(|r| r.drift_share).unwrap_or(1.0);
                let threshold = crate::types::DriftOptions::default().drift_share;
                let reason = format!(
                    "drift on the last {rows} predictions: {} of the columns drifted ({})",
                    drifted.len(),
                    drifted.join(", ")
                );
                draft.events.push(Event::DriftDetected {
                    monitor: self.name.clone(),
                    model: prod.reference(),
                    model_id: prod.id.0.clone(),
                    signal: "features".into(),
                    window_rows: rows,
                    drifted_columns: drifted,
                    score,
                    threshold,
                    expected_accuracy: check.expected_accuracy,
                });
                draft.decisions.push((
                    DecisionKind::DriftDetected,
                    Some("drift".into()),
                    json!({"drift_check": check.id, "reason": reason}),
                ));
                breach = Some(("drift", reason));
            }
        }
        let mut fire: Option<(&str, String)> = None;
        if let Some(n) = t.new_labels {
            let since = row.rec.last_retrain_at.as_deref();
            let count = self.store.catalog.read(|c| sql::labelled_since(c, &prod.id, since))?;
            if count >= n {
                fire = Some(("new_labels", format!("{count} predictions labelled since the last retrain (>= {n})")));
            }
        }
        if let (None, Some(secs)) = (&fire, t.schedule_secs) {
            let since = row.last_retrain_ms.unwrap_or(row.created_ms);
            let due = since + (secs * 1000.0) as i64;
            if now_ms() >= due {
                fire = Some(("schedule", format!("the schedule (every {secs} s) is due")));
            }
        }
        let breaches = if breach.is_some() { row.rec.consecutive_breaches + 1 } else { 0 };
        let chosen = match (&breach, &fire) {
            (Some(b), _) if breaches >= g.consecutive_breaches => Some(b.clone()),
            (_, Some(f)) => Some(f.clone()),
            _ => None,
        };
        let Some((trigger, why)) = chosen else {
            let (outcome, reason) = match &breach {
                Some((trig, why)) => {
                    draft.report.trigger = Some((*trig).to_string());
                    (
                        TickOutcome::Held,
                        format!("{why}; breach {breaches} of {} consecutive needed", g.consecutive_breaches),
                    )
                }
                None if notes.is_empty() => (TickOutcome::Idle, "no trigger fired".to_string()),
                None => (TickOutcome::Idle, format!("no trigger fired ({})", notes.join("; "))),
            };
            if outcome == TickOutcome::Held {
                draft.decisions.push((DecisionKind::Held, draft.report.trigger.clone(), json!({"breaches": breaches})));
            }
            draft.report.outcome = outcome;
            draft.report.reason = reason;
            return self.write_draft(&prod, draft, sink, |tx| sql::set_breaches(tx, &self.id, breaches, &util::now()));
        };
        draft.report.trigger = Some(trigger.to_string());
        // Guards on starting a retrain.
        let mut held = None;
        if let Some(last) = row.last_retrain_ms {
            let until = last + (g.cooldown_secs * 1000.0) as i64;
            if now_ms() < until {
                held = Some(format!(
                    "{why}; held by the cooldown ({} s since the last retrain, cooldown {} s)",
                    (now_ms() - last) / 1000,
                    g.cooldown_secs
                ));
            }
        }
        if let (None, Some(cap)) = (&held, g.daily_cap) {
            if row.rec.retrains_today >= u64::from(cap) {
                held = Some(format!(
                    "{why}; held by the daily cap ({} retrains today, cap {cap})",
                    row.rec.retrains_today
                ));
            }
        }
        if let Some(reason) = held {
            draft.decisions.push((DecisionKind::Held, Some(trigger.to_string()), json!({"breaches": breaches})));
            draft.report.outcome = TickOutcome::Held;
            draft.report.reason = reason;
            return self.write_draft(&prod, draft, sink, |tx| sql::set_breaches(tx, &self.id, breaches, &util::now()));
        }
        // Claim the retrain before creating anything.
        let token = util::new_id("claim");
        let now = now_ms();
        let claimed = self.store.catalog.write(|tx| {
            sql::set_breaches(tx, &self.id, breaches, &util::now())?;
            sql::claim(tx, &self.id, &token, now, now - CLAIM_STALE_MS)
        })?;
        if !claimed {
            draft.report.outcome = TickOutcome::Waiting;
            draft.report.reason = format!("{why}; another tick has claimed the retrain");
            return self.write_draft(&prod, draft, sink, |_| Ok(()));
        }
        let prepared = self.prepare(row, &prod);
        let (job, eval, details) = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = self.store.catalog.write(|tx| sql::release(tx, &self.id, &token));
                return Err(e);
            }
        };
        let mut details = details;
        details["trigger_reason"] = Value::String(why.clone());
        draft.events.push(Event::RetrainStarted {
            monitor: self.name.clone(),
            model: prod.reference(),
            model_id: prod.id.0.clone(),
            job_id: job.0.clone(),
            trigger: trigger.to_string(),
            reason: why.clone(),
        });
        draft.decisions.push((DecisionKind::RetrainStarted, Some(trigger.to_string()), details));
        draft.report.outcome = TickOutcome::RetrainStarted;
        draft.report.reason = why;
        draft.report.job_id = Some(job.clone());
        let nowt = util::now();
        let ok = self.write_draft_job(&prod, &draft, sink, Some(&job), |tx| {
            sql::start_job(tx, &self.id, &token, &job, &eval, now_ms(), &nowt)
        })?;
        if !ok {
            // The claim was taken over meanwhile: this job is not the monitor's.
            let _ = self.engine().cancel(&job);
            let mut r = draft.report;
            r.outcome = TickOutcome::Waiting;
            r.reason = "the retrain claim was taken over by another tick".into();
            return Ok(r);
        }
        if !opts.run_jobs {
            return Ok(draft.report);
        }
        let row = self.row()?;
        let mut r = self.follow(&row, &job, sink, opts, cancel)?;
        r.trigger = draft.report.trigger;
        r.realised_accuracy = draft.report.realised_accuracy;
        r.labelled = draft.report.labelled;
        Ok(r)
    }

    fn write_draft(
        &self,
        prod: &ModelRecord,
        draft: Draft,
        sink: &mut dyn EventSink,
        f: impl FnOnce(&Conn) -> Result<()>,
    ) -> Result<TickReport> {
        self.write_draft_job(prod, &draft, sink, None, |tx| f(tx).map(|_| true))?;
        Ok(draft.report)
    }

    fn write_draft_job(
        &self,
        prod: &ModelRecord,
        draft: &Draft,
        sink: &mut dyn EventSink,
        job: Option<&JobId>,
        f: impl FnOnce(&Conn) -> Result<bool>,
    ) -> Result<bool> {
        let decisions: Vec<(DecisionKind, NewRefs<'_>, &str, Value)> = draft
            .decisions
            .iter()
            .map(|(k, trig, d)| {
                let reason = d.get("reason").and_then(Value::as_str).unwrap_or(draft.report.reason.as_str());
                (
                    *k,
                    NewRefs { model: Some(&prod.id), job, candidate: None, trigger: trig.as_deref() },
                    reason,
                    d.clone(),
                )
            })
            .collect();
        // The decisions and events only count when `f` says the change happened.
        let at = util::now();
        let ok = self.store.catalog.write(|tx| {
            if !f(tx)? {
                return Ok(false);
            }
            for (kind, refs, reason, details) in &decisions {
                let d = NewDecision {
                    kind: *kind,
                    model_id: refs.model,
                    job_id: refs.job,
                    candidate_id: refs.candidate,
                    trigger: refs.trigger,
                    reason,
                    details,
                };
                sql::add_decision(tx, &self.id, &d, &at)?;
            }
            let now = SystemTime::now();
            for e in &draft.events {
                notify::enqueue_in(tx, e, now)?;
            }
            Ok(true)
        })?;
        if ok {
            for e in &draft.events {
                let _ = sink.on_event(e);
            }
        }
        Ok(ok)
    }

    /// Writes the retrain's datasets and creates its job: the training rows (a
    /// `replay_fraction` share of the production model's training dataset plus the
    /// labelled predictions not held out) and the gate's evaluation dataset.
    fn prepare(&self, row: &MonitorRow, prod: &ModelRecord) -> Result<(JobId, DatasetId, Value)> {
        let policy = &row.rec.policy;
        let datasets = DatasetStore::new(self.store.clone());
        let mut spec: TrainSpec = prod
            .lineage
            .spec
            .clone()
            .unwrap_or_else(|| TrainSpec { method: Method::Classifier(Default::default()), ..Default::default() });
        if let Some(c) = &policy.action.config {
            spec.method = Method::Classifier(c.clone());
        }
        if !matches!(spec.method, Method::Classifier(_)) {
            return Err(Error::config(
                "action.config",
                format!("{} was not trained as a classifier", prod.reference()),
            ));
        }
        // New rows: the production model's labelled predictions, newest first.
        let preds = self.continual().predictions(&prod.id, &PredictionFilter { labelled: Some(true), limit: None })?;
        let mut new_rows = Vec::with_capacity(preds.len());
        for p in &preds {
            let (Some(f), Some(y)) = (&p.features, &p.actual) else {
                if p.features.is_none() {
                    return Err(Error::config(
                        "action",
                        format!(
                            "prediction {} of {} was logged as a features hash only (log_features = false): \
                             a retrain needs the features of labelled predictions",
                            p.id,
                            prod.reference()
                        ),
                    ));
                }
                continue;
            };
            let mut o = f.clone();
            o.insert("label".into(), y.clone());
            new_rows.push(Value::Object(o));
        }
        let (eval_id, train_new) = match &policy.gate.dataset {
            Some(ds) => (datasets.get(ds.clone())?.id, new_rows),
            None => {
                if new_rows.len() < 2 {
                    return Err(Error::config(
                        "gate.dataset",
                        format!(
                            "{} labelled predictions: at least 2 are needed to hold some out for the gate \
                             (or set gate.dataset)",
                            new_rows.len()
                        ),
                    ));
                }
                let hold = ((new_rows.len() as f64 * policy.gate.holdout_fraction).ceil() as usize)
                    .clamp(1, new_rows.len() - 1);
                let train = new_rows.split_off(hold);
                let eval = datasets.import_records(
                    new_rows.into_iter().map(Ok),
                    &ImportOptions {
                        name: Some(util::new_id(&format!("{}-gate", row.rec.model_name))),
                        format: Some(DatasetFormat::Tabular),
                        on_duplicate: OnDuplicate::Reuse,
                        ..Default::default()
                    },
                )?;
                (eval.id, train)
            }
        };
        // Old rows: an even share of the production model's training dataset.
        let mut old = Vec::new();
        let mut old_total = 0usize;
        if policy.action.replay_fraction > 0.0 {
            if let Some(ds) = &prod.lineage.dataset {
                let ds = datasets.get(ds.clone())?;
                let records = read_records(&ds.path)?;
                old_total = records.len();
                let share = policy.action.replay_fraction;
                for (i, r) in records.into_iter().enumerate() {
                    if ((i + 1) as f64 * share).floor() > (i as f64 * share).floor() {
                        old.push(flatten(r));
                    }
                }
            }
        }
        let (n_old, n_new) = (old.len(), train_new.len());
        if n_old + n_new == 0 {
            return Err(Error::config("action.replay_fraction", "leaves no row to train on"));
        }
        let train = datasets.import_records(
            old.into_iter().chain(train_new).map(Ok),
            &ImportOptions {
                name: Some(util::new_id(&format!("{}-retrain", row.rec.model_name))),
                format: Some(DatasetFormat::Tabular),
                on_duplicate: OnDuplicate::Reuse,
                ..Default::default()
            },
        )?;
        spec.dataset = train.id.clone();
        spec.output_name = Some(row.rec.model_name.clone());
        let job = self.engine().create_job(&spec)?;
        let details = json!({
            "dataset_id": train.id,
            "eval_dataset_id": eval_id,
            "replayed_rows": n_old,
            "of_training_rows": old_total,
            "source_dataset_id": prod.lineage.dataset,
            "labelled_prediction_rows": n_new,
            "production": prod.reference(),
        });
        Ok((job.id, eval_id, details))
    }

    /// The job in flight: run, resume, wait for or gate it.
    fn follow(
        &self,
        row: &MonitorRow,
        job_id: &JobId,
        sink: &mut dyn EventSink,
        opts: &TickOptions,
        cancel: &CancelToken,
    ) -> Result<TickReport> {
        let engine = self.engine();
        let job = engine.job(job_id)?;
        let mut report = self.report(TickOutcome::Waiting, "");
        report.job_id = Some(job_id.clone());
        let prod = production(&self.registry(), &row.rec.model_name).ok();
        report.model = prod.as_ref().map(ModelRecord::reference);
        match job.status {
            JobStatus::Completed => {}
            JobStatus::Running => {
                report.reason = format!("retraining job {job_id} is running");
                return Ok(report);
            }
            JobStatus::Failed => {
                let why = format!(
                    "retraining job {job_id} ended {}{}; production kept",
                    job.status,
                    job.error.as_ref().map(|e| format!(": {}", e.message)).unwrap_or_default()
                );
                let refs = NewRefs { model: prod.as_ref().map(|m| &m.id), job: Some(job_id), ..Default::default() };
                let event = Event::MonitorError {
                    monitor: self.name.clone(),
                    model: report.model.clone(),
                    job_id: Some(job_id.0.clone()),
                    error: job.error.clone().unwrap_or(ErrorInfo { code: "internal".into(), message: why.clone() }),
                };
                let nowt = util::now();
                let done = ended(self.commit(
                    sink,
                    &[(DecisionKind::Error, refs, &why, json!({"status": job.status}))],
                    &[event],
                    |tx| self.finish(tx, job_id, None, &nowt),
                ))?;
                return Ok(self.settled(report, done, TickOutcome::Error, why));
            }
            JobStatus::Pending | JobStatus::Interrupted | JobStatus::Cancelled => {
                if !opts.run_jobs {
                    report.reason = format!("retraining job {job_id} is {} (not run by this tick)", job.status);
                    return Ok(report);
                }
                let resume = job.status != JobStatus::Pending;
                if resume {
                    let why = format!("retraining job {job_id} was {}: resumed", job.status);
                    let refs = NewRefs { model: prod.as_ref().map(|m| &m.id), job: Some(job_id), ..Default::default() };
                    self.commit(sink, &[(DecisionKind::RetrainResumed, refs, &why, json!({}))], &[], |_| Ok(()))?;
                }
                let run = if resume { engine.resume(job_id, sink, cancel) } else { engine.run(job_id, sink, cancel) };
                match run {
                    Ok(_) => {}
                    Err(Error::InUse { .. }) => {
                        report.reason = format!("retraining job {job_id} was taken by another runner");
                        return Ok(report);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        let job = engine.job(job_id)?;
        let Some(candidate) = job.output_model_id.clone() else {
            return Err(Error::Internal(format!("completed job {job_id} has no output model")));
        };
        self.gate(row, job_id, &candidate, sink, report)
    }

    /// Evaluates the candidate and production on the same dataset and acts on the
    /// verdict (promote, leave as candidate, keep production).
    fn gate(
        &self,
        row: &MonitorRow,
        job_id: &JobId,
        candidate: &ModelId,
        sink: &mut dyn EventSink,
        mut report: TickReport,
    ) -> Result<TickReport> {
        let policy = &row.rec.policy;
        let gate = &policy.gate;
        let registry = self.registry();
        let cand = registry.get(candidate)?;
        let prod = production(&registry, &row.rec.model_name)?;
        let dataset = match (&row.rec.eval_dataset_id, &gate.dataset) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => return Err(Error::config("gate.dataset", "the retrain recorded no evaluation dataset")),
        };
        let continual = self.continual();
        let ce = continual.evaluate(&cand.id, dataset.clone())?;
        let pe = continual.evaluate(&prod.id, dataset.clone())?;
        let metric = gate.metric.as_str();
        let cv = ce.metrics.get(metric).copied().unwrap_or(f64::NAN);
        let pv = pe.metrics.get(metric).copied().unwrap_or(f64::NAN);
        let floor_ok = cv >= gate.floor;
        let margin_ok = cv - pv >= gate.margin - 1e-12;
        let passed = floor_ok && margin_ok;
        let reason = if !floor_ok {
            format!("{metric} {cv:.4} of {} is under the floor {}", cand.reference(), gate.floor)
        } else if !margin_ok {
            format!(
                "{metric} {cv:.4} of {} does not beat {pv:.4} of {} by the margin {}",
                cand.reference(),
                prod.reference(),
                gate.margin
            )
        } else {
            format!(
                "{metric} {cv:.4} of {} >= floor {} and beats {pv:.4} of {} by {:.4} (margin {})",
                cand.reference(),
                gate.floor,
                prod.reference(),
                cv - pv,
                gate.margin
            )
        };
        let verdict = if passed { GateVerdict::Passed } else { GateVerdict::Failed };
        let evaluated = Event::CandidateEvaluated {
            monitor: Some(self.name.clone()),
            candidate: cand.reference(),
            candidate_id: cand.id.0.clone(),
            production: Some(prod.reference()),
            dataset_id: dataset.0.clone(),
            metric: metric.to_string(),
            candidate_value: cv,
            production_value: Some(pv),
            metrics: ce.metrics.clone(),
            verdict,
            reason: reason.clone(),
        };
        let gate_details = json!({
            "dataset_id": dataset, "metric": metric, "candidate_value": cv, "production_value": pv,
            "floor": gate.floor, "margin": gate.margin, "verdict": verdict.as_str(),
            "candidate_evaluation": ce.id, "production_evaluation": pe.id, "mode": gate.mode.as_str(),
        });
        let refs = || NewRefs { model: Some(&prod.id), job: Some(job_id), candidate: Some(&cand.id), trigger: None };
        report.candidate = Some(cand.reference());
        report.model = Some(prod.reference());
        let nowt = util::now();
        let mut decisions = vec![(DecisionKind::CandidateEvaluated, refs(), reason.as_str(), gate_details)];
        let mut events = vec![evaluated];
        let outcome;
        let shadow_reason;
        if !passed {
            let keep = format!("{}: production {} kept", reason, prod.reference());
            shadow_reason = keep;
            decisions.push((DecisionKind::Kept, refs(), shadow_reason.as_str(), json!({})));
            outcome = TickOutcome::Kept;
            let done = ended(self.commit(sink, &decisions, &events, |tx| self.finish(tx, job_id, None, &nowt)))?;
            return Ok(self.settled(report, done, outcome, shadow_reason.clone()));
        }
        match gate.mode {
            PromotionMode::Auto => {
                let promo_reason = format!("auto-promoted: {reason}");
                events.push(Event::Promoted {
                    model: cand.reference(),
                    model_id: cand.id.0.clone(),
                    alias: PRODUCTION.into(),
                    previous: Some(prod.reference()),
                    mode: "auto".into(),
                    monitor: Some(self.name.clone()),
                    reason: promo_reason.clone(),
                });
                decisions.push((DecisionKind::Promoted, refs(), promo_reason.as_str(), json!({"mode": "auto"})));
                let done = ended(self.commit(sink, &decisions, &events, |tx| {
                    self.finish(tx, job_id, None, &nowt)?;
                    promote_in(tx, &cand, Some(&promo_reason), &nowt).map(|_| ())
                }))?;
                Ok(self.settled(report, done, TickOutcome::Promoted, promo_reason))
            }
            PromotionMode::Manual | PromotionMode::Shadow => {
                let mut why = format!("{reason}; left as {}@{CANDIDATE} until approved", cand.name);
                let mut shadow = Value::Null;
                if gate.mode == PromotionMode::Shadow {
                    let (text, details) = self.shadow(&prod, &cand, policy.triggers.window)?;
                    why = format!("{why}; shadow: {text}");
                    shadow = details;
                }
                shadow_reason = why;
                if gate.mode == PromotionMode::Shadow {
                    decisions.push((DecisionKind::Shadow, refs(), shadow_reason.as_str(), shadow));
                }
                let done = ended(self.commit(sink, &decisions, &events, |tx| {
                    self.finish(tx, job_id, Some(&cand.id), &nowt)?;
                    let change =
                        alias_sql::Change { action: AliasAction::Set, reason: Some(shadow_reason.as_str()), at: &nowt };
                    alias_sql::set_alias(tx, &cand.name, CANDIDATE, &cand.id.0, &change).map(|_| ())
                }))?;
                Ok(self.settled(report, done, TickOutcome::AwaitingApproval, shadow_reason.clone()))
            }
        }
    }

    /// Ends the job in flight inside a transaction; when another tick ended it first,
    /// fails with the error [`ended`] reads as "not done" (rolling the transaction back,
    /// decisions and outbox rows included).
    fn finish(&self, tx: &Conn, job: &JobId, candidate: Option<&ModelId>, now: &str) -> Result<()> {
        if sql::finish_job(tx, &self.id, job, candidate, now)? {
            Ok(())
        } else {
            Err(Error::InUse { what: "monitor job", id: job.0.clone(), reason: "another tick ended it first".into() })
        }
    }

    fn settled(&self, mut report: TickReport, done: bool, outcome: TickOutcome, reason: String) -> TickReport {
        if done {
            report.outcome = outcome;
            report.reason = reason;
        } else {
            report.outcome = TickOutcome::Waiting;
            report.reason = "another tick gated this job".into();
        }
        report
    }

    /// Scores `cand` on the logged features of production's last `window` labelled
    /// predictions, without serving it.
    fn shadow(&self, prod: &ModelRecord, cand: &ModelRecord, window: u64) -> Result<(String, Value)> {
        let preds =
            self.continual().predictions(&prod.id, &PredictionFilter { labelled: Some(true), limit: Some(window) })?;
        let mut rows: Vec<Map<String, Value>> = Vec::new();
        let mut truth = Vec::new();
        let mut prod_correct = 0usize;
        for p in &preds {
            if let (Some(f), Some(y), Some(c)) = (&p.features, &p.actual, p.correct) {
                rows.push(f.clone());
                truth.push(y.clone());
                prod_correct += usize::from(c);
            }
        }
        if rows.is_empty() {
            return Ok(("no labelled traffic with logged features to score on".into(), json!({"rows": 0})));
        }
        let model = Classifier::load(&cand.path)?;
        let classes = model.classes().to_vec();
        let p = model.predict_proba(&rows)?;
        let hits = p.rows.iter().zip(&truth).filter(|(r, y)| classes[super::argmax(r)] == **y).count();
        let n = rows.len() as f64;
        let (ca, pa) = (hits as f64 / n, prod_correct as f64 / n);
        Ok((
            format!(
                "on {} logged labelled predictions {} would score {ca:.4}, {} scored {pa:.4}",
                rows.len(),
                cand.reference(),
                prod.reference()
            ),
            json!({"rows": rows.len(), "candidate_accuracy": ca, "production_accuracy": pa}),
        ))
    }

    /// Promotes the candidate left by a gate in `manual` or `shadow` mode: the
    /// promotion, the decision, and the `promoted` event (mode `manual`) in one
    /// transaction. No candidate waiting is `not_found`.
    pub fn approve(&self, reason: Option<&str>, sink: &mut dyn EventSink) -> Result<AliasMove> {
        let row = self.row()?;
        let Some(cid) = row.rec.candidate_id.clone() else {
            return Err(Error::not_found("candidate", format!("of monitor {} (nothing awaits approval)", self.name)));
        };
        let registry = self.registry();
        let cand = registry.get(&cid)?;
        let prod = production(&registry, &row.rec.model_name).ok();
        let why = reason.map(str::to_string).unwrap_or_else(|| format!("{} approved", cand.reference()));
        let event = Event::Promoted {
            model: cand.reference(),
            model_id: cand.id.0.clone(),
            alias: PRODUCTION.into(),
            previous: prod.as_ref().map(ModelRecord::reference),
            mode: "manual".into(),
            monitor: Some(self.name.clone()),
            reason: why.clone(),
        };
        let refs = NewRefs { model: prod.as_ref().map(|m| &m.id), candidate: Some(&cand.id), ..Default::default() };
        let nowt = util::now();
        self.commit(sink, &[(DecisionKind::Promoted, refs, &why, json!({"mode": "manual"}))], &[event], |tx| {
            sql::clear_candidate(tx, &self.id, &nowt)?;
            promote_in(tx, &cand, Some(&why), &nowt)
        })
    }

    /// Moves `production` back to `previous` ([`ModelRegistry::rollback`]), then
    /// records the decision and emits `rolled_back`.
    ///
    /// The alias move is the registry's own transaction; the decision and the outbox
    /// row follow in a second one (the registry has no in-transaction rollback to
    /// share yet).
    pub fn rollback(&self, reason: Option<&str>, sink: &mut dyn EventSink) -> Result<AliasMove> {
        let row = self.row()?;
        let registry = self.registry();
        let before = production(&registry, &row.rec.model_name)?;
        let why = reason.map(str::to_string).unwrap_or_else(|| format!("{} rolled back", before.reference()));
        let moved = registry.rollback(&row.rec.model_name, &RollbackOptions { reason: Some(why.clone()) })?;
        let now_serving = registry.get(&moved.production)?;
        let event = Event::RolledBack {
            model: now_serving.reference(),
            model_id: now_serving.id.0.clone(),
            alias: PRODUCTION.into(),
            previous: before.reference(),
            monitor: Some(self.name.clone()),
            reason: why.clone(),
        };
        let refs = NewRefs { model: Some(&now_serving.id), candidate: Some(&before.id), ..Default::default() };
        self.commit(
            sink,
            &[(DecisionKind::RolledBack, refs, &why, json!({"from": before.reference()}))],
            &[event],
            |_| Ok(()),
        )?;
        Ok(moved)
    }

    /// Runs [`Monitor::tick`] every `interval` on a background thread until
    /// [`MonitorHandle::stop`]; events go to `sink`. A failing tick is recorded (and
    /// kept as [`MonitorHandle::last_error`]); the loop goes on.
    pub fn spawn(&self, interval: Duration, sink: impl EventSink + 'static) -> Result<MonitorHandle> {
        if interval.is_zero() {
            return Err(Error::config("interval", "must be longer than 0"));
        }
        let (tx, rx) = mpsc::channel::<()>();
        let cancel = CancelToken::new();
        let last_error = Arc::new(Mutex::new(None));
        let ticks = Arc::new(Mutex::new(0u64));
        let (me, token, errors, count) = (self.clone(), cancel.clone(), last_error.clone(), ticks.clone());
        let mut sink = sink;
        let thread = std::thread::Builder::new()
            .name(format!("anneal-monitor-{}", self.name))
            .spawn(move || loop {
                let r = me.tick_with(&mut sink, &TickOptions::default(), &token);
                if let Ok(mut n) = count.lock() {
                    *n += 1;
                }
                if let (Err(e), Ok(mut slot)) = (r, errors.lock()) {
                    *slot = Some(e);
                }
                match rx.recv_timeout(interval) {
                    Err(RecvTimeoutError::Timeout) if !token.is_cancelled() => continue,
                    _ => break,
                }
            })
            .map_err(|e| Error::Internal(format!("cannot start a monitor thread: {e}")))?;
        Ok(MonitorHandle { stop: Some(tx), thread: Some(thread), cancel, last_error, ticks })
    }
}

/// Removes nothing but the `label` key collision: a stored tabular record
/// (`{"features": {...}, "label": y}`) as the flat record an import reads.
fn flatten(r: Value) -> Value {
    match r {
        Value::Object(mut o) => {
            let mut flat = match o.remove("features") {
                Some(Value::Object(f)) => f,
                _ => Map::new(),
            };
            flat.insert("label".into(), o.remove("label").unwrap_or(Value::Null));
            Value::Object(flat)
        }
        other => other,
    }
}

/// Whether a commit guarded by [`Monitor::finish`] happened.
fn ended(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(Error::InUse { what: "monitor job", .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// The ids a decision row refers to.
#[derive(Default, Clone, Copy)]
struct NewRefs<'a> {
    model: Option<&'a ModelId>,
    job: Option<&'a JobId>,
    candidate: Option<&'a ModelId>,
    trigger: Option<&'a str>,
}

/// [`ModelRegistry::promote`] inside the caller's transaction (so that the alias
/// moves, the monitor's decision and the outbox rows commit together): `production`
/// moves to `m`, the model it replaces to `previous`, and `candidate` is removed if it
/// pointed at `m`; each change recorded with action `promote`.
fn promote_in(tx: &Conn, m: &ModelRecord, reason: Option<&str>, now: &str) -> Result<AliasMove> {
    if !alias_sql::exists(tx, &m.id.0)? {
        return Err(Error::not_found("model", m.reference()));
    }
    let change = alias_sql::Change { action: AliasAction::Promote, reason, at: now };
    let mut changes = Vec::new();
    let current = alias_sql::alias_target(tx, &m.name, PRODUCTION)?;
    if current.as_deref() != Some(m.id.0.as_str()) {
        if let Some(old) = &current {
            changes.extend(alias_sql::set_alias(tx, &m.name, PREVIOUS, old, &change)?);
        }
        changes.extend(alias_sql::set_alias(tx, &m.name, PRODUCTION, &m.id.0, &change)?);
    }
    if alias_sql::alias_target(tx, &m.name, CANDIDATE)?.as_deref() == Some(m.id.0.as_str()) {
        changes.extend(alias_sql::remove_alias(tx, &m.name, CANDIDATE, &change)?);
    }
    let previous = alias_sql::alias_target(tx, &m.name, PREVIOUS)?.map(ModelId);
    Ok(AliasMove { production: m.id.clone(), previous, changes })
}

/// A monitor ticking on a background thread ([`Monitor::spawn`]).
pub struct MonitorHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    cancel: CancelToken,
    last_error: Arc<Mutex<Option<Error>>>,
    ticks: Arc<Mutex<u64>>,
}

impl std::fmt::Debug for MonitorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MonitorHandle").field("ticks", &self.ticks()).finish()
    }
}

impl MonitorHandle {
    /// Stops after the current tick, cancelling a retraining job it runs (the job
    /// ends `cancelled` and the next tick resumes it).
    pub fn cancel(&self) {
        self.cancel.cancel();
        if let Some(s) = &self.stop {
            let _ = s.send(());
        }
    }

    /// Stops after the current tick (letting a running job finish) and waits for it.
    pub fn stop(mut self) -> Result<()> {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            t.join().map_err(|_| Error::Internal("the monitor thread panicked".into()))?;
        }
        Ok(())
    }

    /// The error of the last failed tick, if any.
    pub fn last_error(&self) -> Option<Error> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Ticks run so far.
    pub fn ticks(&self) -> u64 {
        self.ticks.lock().map(|n| *n).unwrap_or(0)
    }
}

impl Drop for MonitorHandle {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

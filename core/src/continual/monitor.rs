//! Monitors: a [`RetrainPolicy`] on a model name's production model (a classifier or a
//! language model), run one pass at a time ([`Monitor::tick`]) or on a background
//! thread ([`Monitor::spawn`]).
//!
//! ```text
//! tick ─▶ job in flight? ── completed ─▶ gate ─▶ promote (auto) | candidate (manual, shadow) | keep
//!   │                   └─ pending / interrupted ─▶ run / resume it here (never a second job)
//!   │                   └─ running elsewhere ─▶ wait
//!   └─▶ triggers ─▶ guards ─▶ claim (transaction) ─▶ prepare: datasets + job
//!          ─▶ record the job id (transaction) ─▶ run it ─▶ gate ...
//! ```
//!
//! The pass is one for both kinds of model: following the job in flight, the guards,
//! the claim, the gate (floor, margin, retention sets) and the promotion are shared;
//! what differs is in [`classifier`] and [`lm`]: reading the triggers, preparing the
//! retrain's data and job, and scoring a shadow candidate.
//!
//! - Classifiers read the production model's labelled predictions; a retrain refits on
//!   them and a replay share of the old training rows.
//! - Language models read the data fed to the monitor with [`Monitor::feed`]: datasets
//!   the user hands over as they arrive (text, completion, instruction or chat
//!   records). A feed waits until a retrain takes it; the triggers read the newest
//!   `triggers.window` waiting rows (their loss or perplexity, the drift of their
//!   per-sample losses), `triggers.new_rows` counts the rows fed since the last retrain;
//!   a retrain trains LoRA on every waiting feed plus a replay share of the production
//!   model's training dataset, and takes those feeds. A candidate that is refused, or
//!   a job that fails, gives them back (the next retrain trains on them again); a
//!   promoted (or approved) one keeps them: they are in production's training data now.
//!
//! Every state change is one catalog transaction that also writes the decision rows
//! (`monitor_decisions`) and enqueues the events to the webhooks' outbox; the events go
//! to the caller's sink after the commit. A retrain is claimed before its job is
//! created and the job id recorded once it exists (with the feeds it takes), so a
//! second process, a restart or a kill -9 mid-retrain finds that job and runs, resumes
//! or waits for it.

mod classifier;
mod gate;
mod lm;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use super::Continual;
use crate::catalog::models as alias_sql;
use crate::catalog::monitor::{self as sql, MonitorRow, NewDecision};
use crate::catalog::Conn;
use crate::data::DatasetStore;
use crate::error::{Error, Result};
use crate::events::{CancelToken, EventSink};
use crate::notify;
use crate::registry::aliases;
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::training::TrainingEngine;
use crate::types::{
    check_reason, AliasMove, DatasetFormat, DatasetId, DecisionKind, ErrorInfo, Event, Family, JobId, JobStatus,
    ModelId, ModelKind, ModelRecord, MonitorDecision, MonitorFeed, MonitorOptions, MonitorRecord, RetrainPolicy,
    TickOptions, TickOutcome, TickReport, CANDIDATE, PRODUCTION,
};
use crate::util;

/// A claim whose job was not recorded within this long is taken over (its claimer
/// died while preparing the retrain).
const CLAIM_STALE_MS: i64 = 10 * 60 * 1000;

fn now_ms() -> i64 {
    crate::training::now_ms()
}

/// The kind of production model a monitor watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Classifier,
    LanguageModel,
}

impl Watched {
    fn of(m: &ModelRecord) -> Result<Watched> {
        match (m.kind, m.family) {
            (ModelKind::Classifier, _) => Ok(Watched::Classifier),
            (_, Family::StableDiffusion) => Err(Error::config(
                "model",
                format!("{} is an image model: monitors watch classifiers and language models", m.reference()),
            )),
            _ => Ok(Watched::LanguageModel),
        }
    }
}

/// Formats a language model is evaluated on ([`Continual::evaluate`]).
fn scorable(f: DatasetFormat) -> bool {
    matches!(f, DatasetFormat::Text | DatasetFormat::Completion)
}

/// Checks that the datasets a policy names exist (and, for a language model, can be
/// scored); `invalid_config` naming the field.
fn check_policy_datasets(datasets: &DatasetStore, policy: &RetrainPolicy, watched: Watched) -> Result<()> {
    let named = policy.gate.dataset.iter().map(|d| ("gate.dataset".to_string(), d)).chain(
        policy.gate.retention_datasets.iter().enumerate().map(|(i, d)| (format!("gate.retention_datasets[{i}]"), d)),
    );
    for (field, ds) in named {
        let rec = datasets.get(ds.clone()).map_err(|e| match e {
            Error::NotFound { .. } => Error::config(field.clone(), format!("dataset `{ds}` does not exist")),
            o => o,
        })?;
        let fits = match watched {
            Watched::Classifier => rec.format == DatasetFormat::Tabular,
            Watched::LanguageModel => scorable(rec.format),
        };
        if !fits {
            let want = match watched {
                Watched::Classifier => "a classifier is evaluated on tabular data",
                Watched::LanguageModel => "a language model is evaluated on text or completion records",
            };
            return Err(Error::config(field, format!("`{}` is a {} dataset: {want}", rec.name, rec.format)));
        }
    }
    Ok(())
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
    /// at a classifier or a language model) with `policy`. A bad policy, or one that
    /// does not fit the production model's kind ([`RetrainPolicy::validate_for`]), is
    /// `invalid_config` naming the field; a taken monitor name is `already_exists`.
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
        let watched = Watched::of(&prod)?;
        policy.validate_for(prod.kind)?;
        check_policy_datasets(&DatasetStore::new(self.store.clone()), policy, watched)?;
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

    /// Deletes a monitor, its decision trail and its feeds (its models, jobs and
    /// datasets stay).
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

/// A decision to record (a row of `monitor_decisions`).
#[derive(Debug, Clone)]
struct Decision {
    kind: DecisionKind,
    model: Option<ModelId>,
    job: Option<JobId>,
    candidate: Option<ModelId>,
    trigger: Option<String>,
    /// Empty: the tick report's reason, when written with a draft.
    reason: String,
    details: Value,
}

impl Decision {
    fn new(kind: DecisionKind, reason: impl Into<String>, details: Value) -> Self {
        Self { kind, model: None, job: None, candidate: None, trigger: None, reason: reason.into(), details }
    }

    fn model(mut self, m: Option<&ModelId>) -> Self {
        self.model = m.cloned();
        self
    }

    fn job(mut self, j: Option<&JobId>) -> Self {
        self.job = j.cloned();
        self
    }

    fn candidate(mut self, c: Option<&ModelId>) -> Self {
        self.candidate = c.cloned();
        self
    }

    fn trigger(mut self, t: Option<&str>) -> Self {
        self.trigger = t.map(str::to_string);
        self
    }
}

/// What a transaction of a monitor writes besides its own changes.
struct Staged<T> {
    value: T,
    decisions: Vec<Decision>,
    events: Vec<Event>,
}

impl<T> Staged<T> {
    fn new(value: T, decisions: Vec<Decision>, events: Vec<Event>) -> Self {
        Self { value, decisions, events }
    }

    /// A change that did not happen: nothing recorded.
    fn nothing(value: T) -> Self {
        Self { value, decisions: Vec::new(), events: Vec::new() }
    }
}

/// What a pass decided before writing it.
struct Draft {
    report: TickReport,
    decisions: Vec<Decision>,
    events: Vec<Event>,
}

/// The readings of the triggers that differ by kind (accuracy or metric, drift, new
/// labels or rows); the schedule and the guards are the pass's.
#[derive(Default)]
struct Signals {
    /// A breach (held by `consecutive_breaches`): trigger name and why.
    breach: Option<(&'static str, String)>,
    /// A trigger that fires at once.
    fire: Option<(&'static str, String)>,
    /// What was skipped and why (goes into an idle reason).
    notes: Vec<String>,
    /// Why a fired trigger is not acted on (a language model with no new data).
    nothing_new: Option<String>,
}

/// A retrain's job and data, as [`classifier::prepare`] and [`lm::prepare`] make them.
struct Prepared {
    job: JobId,
    /// The gate's evaluation dataset.
    eval: DatasetId,
    /// Goes into the `retrain_started` decision.
    details: Value,
    /// Language models: the feeds the retrain takes.
    feeds: Vec<u64>,
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

    fn datasets(&self) -> DatasetStore {
        DatasetStore::new(self.store.clone())
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

    /// Replaces the policy (validated first, against the production model's kind when
    /// there is one); the state is kept.
    pub fn set_policy(&self, policy: &RetrainPolicy) -> Result<MonitorRecord> {
        policy.validate()?;
        let row = self.row()?;
        if let Ok(prod) = production(&self.registry(), &row.rec.model_name) {
            let watched = Watched::of(&prod)?;
            policy.validate_for(prod.kind)?;
            check_policy_datasets(&self.datasets(), policy, watched)?;
        }
        let now = util::now();
        self.store.catalog.write(|tx| sql::set_policy(tx, &self.id, policy, &now))?;
        self.record()
    }

    /// Feeds new data to the monitor of a language model: `dataset` (id or name; text,
    /// completion, instruction or chat records) waits for the next retrain, which
    /// trains on it (with a replay share of the old data) and takes it. Until then its
    /// rows count for `triggers.new_rows` and, newest first, make the window the metric
    /// and drift triggers read. A dataset is fed once (`already_exists` after);
    /// a classifier's monitor takes labelled predictions instead (`invalid_config`
    /// naming `monitor`); an image or tabular dataset is `invalid_config` naming
    /// `dataset`.
    pub fn feed(&self, dataset: impl Into<DatasetId>) -> Result<MonitorFeed> {
        let row = self.row()?;
        if let Ok(prod) = production(&self.registry(), &row.rec.model_name) {
            if Watched::of(&prod)? == Watched::Classifier {
                return Err(Error::config(
                    "monitor",
                    format!(
                        "{} watches the classifier {}: its new data are labelled predictions (Continual::label)",
                        self.name,
                        prod.reference()
                    ),
                ));
            }
        }
        let ds = self.datasets().get(dataset)?;
        if matches!(ds.format, DatasetFormat::Tabular | DatasetFormat::Image) {
            return Err(Error::config(
                "dataset",
                format!(
                    "`{}` is a {} dataset: a language model trains on text, completion, instruction or chat records",
                    ds.name, ds.format
                ),
            ));
        }
        let at = util::now();
        self.store.catalog.write(|tx| {
            if sql::feeds(tx, &self.id, false)?.iter().any(|f| f.dataset_id == ds.id) {
                return Err(Error::AlreadyExists {
                    what: "feed",
                    id: ds.name.clone(),
                    detail: format!(" (dataset {} was fed to monitor {} before)", ds.id, self.name),
                });
            }
            sql::insert_feed(tx, &self.id, (&ds.id, &ds.name, ds.num_records), now_ms(), &at)
        })
    }

    /// The datasets fed to the monitor ([`Monitor::feed`]), oldest first.
    pub fn feeds(&self) -> Result<Vec<MonitorFeed>> {
        self.store.catalog.read(|c| sql::feeds(c, &self.id, false))
    }

    /// Runs `f` in one catalog transaction; the decisions and the outbox rows of the
    /// events it stages are written in the same transaction, and after the commit the
    /// events go to `sink`.
    fn transact<T>(&self, sink: &mut dyn EventSink, f: impl FnOnce(&Conn) -> Result<Staged<T>>) -> Result<T> {
        let at = util::now();
        let staged = self.store.catalog.write(|tx| {
            let staged = f(tx)?;
            for d in &staged.decisions {
                let row = NewDecision {
                    kind: d.kind,
                    model_id: d.model.as_ref(),
                    job_id: d.job.as_ref(),
                    candidate_id: d.candidate.as_ref(),
                    trigger: d.trigger.as_deref(),
                    reason: &d.reason,
                    details: &d.details,
                };
                sql::add_decision(tx, &self.id, &row, &at)?;
            }
            let now = SystemTime::now();
            for e in &staged.events {
                notify::enqueue_in(tx, e, now)?;
            }
            Ok(staged)
        })?;
        for e in &staged.events {
            let _ = sink.on_event(e);
        }
        Ok(staged.value)
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
                let mut report = self.report(TickOutcome::Error, e.to_string());
                report.model = model.as_ref().map(ModelRecord::reference);
                report.job_id = job.clone();
                let event = Event::MonitorError {
                    monitor: self.name.clone(),
                    model: report.model.clone(),
                    job_id: job.as_ref().map(|j| j.0.clone()),
                    error: ErrorInfo::from(&e),
                };
                let decision = Decision::new(DecisionKind::Error, report.reason.clone(), json!({"code": e.code()}))
                    .model(model.as_ref().map(|m| &m.id))
                    .job(job.as_ref());
                let _ = self.transact(sink, |tx| {
                    sql::set_last_tick(tx, &self.id, &report)?;
                    Ok(Staged::new((), vec![decision], vec![event]))
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
            window_metric: None,
            trigger: None,
            reason: reason.into(),
            job_id: None,
            candidate: None,
            at: util::now(),
        }
    }

    /// A candidate awaiting approval holds further retrains, while it is still the
    /// `candidate` (promoted or replaced by other means: forgotten).
    fn awaiting(&self, row: &MonitorRow, prod: &ModelRecord) -> Result<Option<TickReport>> {
        let Some(c) = &row.rec.candidate_id else { return Ok(None) };
        let target = self.store.catalog.read(|tx| alias_sql::alias_target(tx, &row.rec.model_name, CANDIDATE))?;
        if target.as_deref() == Some(c.0.as_str()) && prod.id != *c {
            let mut r = self.report(
                TickOutcome::AwaitingApproval,
                format!("candidate {c} awaits approval (Monitor::approve promotes it)"),
            );
            r.model = Some(prod.reference());
            r.candidate = self.registry().get(c).ok().map(|m| m.reference());
            return Ok(Some(r));
        }
        let nowt = util::now();
        self.store.catalog.write(|tx| sql::clear_candidate(tx, &self.id, &nowt))?;
        Ok(None)
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
        let watched = Watched::of(&prod)?;
        policy.validate_for(prod.kind)?;
        if let Some(r) = self.awaiting(row, &prod)? {
            return Ok(r);
        }
        let mut draft = Draft { report: self.report(TickOutcome::Idle, ""), decisions: Vec::new(), events: Vec::new() };
        draft.report.model = Some(prod.reference());
        let mut signals = match watched {
            Watched::Classifier => classifier::signals(self, row, &prod, &mut draft)?,
            Watched::LanguageModel => lm::signals(self, row, &prod, &mut draft)?,
        };
        if let (None, Some(secs)) = (&signals.fire, t.schedule_secs) {
            let since = row.last_retrain_ms.unwrap_or(row.created_ms);
            let due = since + (secs * 1000.0) as i64;
            if now_ms() >= due {
                signals.fire = Some(("schedule", format!("the schedule (every {secs} s) is due")));
            }
        }
        let breach = signals.breach.take();
        let breaches = if breach.is_some() { row.rec.consecutive_breaches + 1 } else { 0 };
        let chosen = match (&breach, &signals.fire) {
            (Some(b), _) if breaches >= g.consecutive_breaches => Some(b.clone()),
            (_, Some(f)) => Some(f.clone()),
            _ => None,
        };
        let set_breaches = |tx: &Conn| sql::set_breaches(tx, &self.id, breaches, &util::now());
        let Some((trigger, why)) = chosen else {
            let (outcome, reason) = match &breach {
                Some((trig, why)) => {
                    draft.report.trigger = Some((*trig).to_string());
                    (
                        TickOutcome::Held,
                        format!("{why}; breach {breaches} of {} consecutive needed", g.consecutive_breaches),
                    )
                }
                None if signals.notes.is_empty() => (TickOutcome::Idle, "no trigger fired".to_string()),
                None => (TickOutcome::Idle, format!("no trigger fired ({})", signals.notes.join("; "))),
            };
            if outcome == TickOutcome::Held {
                let trig = draft.report.trigger.clone();
                draft.decisions.push(
                    Decision::new(DecisionKind::Held, "", json!({"breaches": breaches})).trigger(trig.as_deref()),
                );
            }
            draft.report.outcome = outcome;
            draft.report.reason = reason;
            return self.write_draft(&prod, draft, sink, set_breaches);
        };
        draft.report.trigger = Some(trigger.to_string());
        if let Some(nothing) = &signals.nothing_new {
            draft.report.reason = format!("{why}, but {nothing}");
            return self.write_draft(&prod, draft, sink, set_breaches);
        }
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
            draft
                .decisions
                .push(Decision::new(DecisionKind::Held, "", json!({"breaches": breaches})).trigger(Some(trigger)));
            draft.report.outcome = TickOutcome::Held;
            draft.report.reason = reason;
            return self.write_draft(&prod, draft, sink, set_breaches);
        }
        // Claim the retrain before creating anything.
        let token = util::new_id("claim");
        let now = now_ms();
        let claimed = self.store.catalog.write(|tx| {
            set_breaches(tx)?;
            sql::claim(tx, &self.id, &token, now, now - CLAIM_STALE_MS)
        })?;
        if !claimed {
            draft.report.outcome = TickOutcome::Waiting;
            draft.report.reason = format!("{why}; another tick has claimed the retrain");
            return self.write_draft(&prod, draft, sink, |_| Ok(()));
        }
        let prepared = match watched {
            Watched::Classifier => classifier::prepare(self, row, &prod),
            Watched::LanguageModel => lm::prepare(self, row, &prod),
        };
        let p = match prepared {
            Ok(p) => p,
            Err(e) => {
                let _ = self.store.catalog.write(|tx| sql::release(tx, &self.id, &token));
                return Err(e);
            }
        };
        let job = p.job.clone();
        let mut details = p.details;
        details["trigger_reason"] = Value::String(why.clone());
        draft.events.push(Event::RetrainStarted {
            monitor: self.name.clone(),
            model: prod.reference(),
            model_id: prod.id.0.clone(),
            job_id: job.0.clone(),
            trigger: trigger.to_string(),
            reason: why.clone(),
        });
        draft.decisions.push(Decision::new(DecisionKind::RetrainStarted, "", details).trigger(Some(trigger)));
        draft.report.outcome = TickOutcome::RetrainStarted;
        draft.report.reason = why;
        draft.report.job_id = Some(job.clone());
        let nowt = util::now();
        let ok = self.write_draft_if(&prod, &draft, sink, Some(&job), |tx| {
            if !sql::start_job(tx, &self.id, &token, &job, &p.eval, now_ms(), &nowt)? {
                return Ok(false);
            }
            sql::take_feeds(tx, &self.id, &p.feeds, &job)?;
            Ok(true)
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
        r.window_metric = draft.report.window_metric;
        Ok(r)
    }

    fn write_draft(
        &self,
        prod: &ModelRecord,
        draft: Draft,
        sink: &mut dyn EventSink,
        f: impl FnOnce(&Conn) -> Result<()>,
    ) -> Result<TickReport> {
        self.write_draft_if(prod, &draft, sink, None, |tx| f(tx).map(|_| true))?;
        Ok(draft.report)
    }

    /// Writes the draft's decisions (about `prod` and `job`; an empty reason is the
    /// report's) and events with `f`'s change, when `f` says the change happened.
    fn write_draft_if(
        &self,
        prod: &ModelRecord,
        draft: &Draft,
        sink: &mut dyn EventSink,
        job: Option<&JobId>,
        f: impl FnOnce(&Conn) -> Result<bool>,
    ) -> Result<bool> {
        let decisions: Vec<Decision> = draft
            .decisions
            .iter()
            .map(|d| {
                let mut d = d.clone().model(Some(&prod.id)).job(job);
                if d.reason.is_empty() {
                    d.reason = draft.report.reason.clone();
                }
                d
            })
            .collect();
        self.transact(sink, |tx| {
            Ok(if f(tx)? { Staged::new(true, decisions, draft.events.clone()) } else { Staged::nothing(false) })
        })
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
        let prod_id = prod.as_ref().map(|m| &m.id);
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
                let event = Event::MonitorError {
                    monitor: self.name.clone(),
                    model: report.model.clone(),
                    job_id: Some(job_id.0.clone()),
                    error: job.error.clone().unwrap_or(ErrorInfo { code: "internal".into(), message: why.clone() }),
                };
                let decision = Decision::new(DecisionKind::Error, why.clone(), json!({"status": job.status}))
                    .model(prod_id)
                    .job(Some(job_id));
                let nowt = util::now();
                let done = self.transact(sink, |tx| {
                    if !sql::finish_job(tx, &self.id, job_id, None, &nowt)? {
                        return Ok(Staged::nothing(false));
                    }
                    sql::release_feeds(tx, &self.id, job_id)?;
                    Ok(Staged::new(true, vec![decision], vec![event]))
                })?;
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
                    let d =
                        Decision::new(DecisionKind::RetrainResumed, why, json!({})).model(prod_id).job(Some(job_id));
                    self.transact(sink, |_| Ok(Staged::new((), vec![d], Vec::new())))?;
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

    /// The report of a pass whose final write may have lost to another tick's.
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

    /// Promotes the candidate left by a gate in `manual` or `shadow` mode: the
    /// promotion, the decision, and the `promoted` event (mode `manual`) in one
    /// transaction. No candidate waiting is `not_found`.
    pub fn approve(&self, reason: Option<&str>, sink: &mut dyn EventSink) -> Result<AliasMove> {
        check_reason(&reason.map(str::to_string))?;
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
        let decision = Decision::new(DecisionKind::Promoted, why.clone(), json!({"mode": "manual"}))
            .model(prod.as_ref().map(|m| &m.id))
            .candidate(Some(&cand.id));
        let nowt = util::now();
        self.transact(sink, |tx| {
            sql::clear_candidate(tx, &self.id, &nowt)?;
            let moved = aliases::promote_in(tx, &cand, Some(&why), &nowt)?;
            Ok(Staged::new(moved, vec![decision], vec![event]))
        })
    }

    /// Moves `production` back to `previous` ([`ModelRegistry::rollback`]), records
    /// the decision and emits `rolled_back`: the alias moves, the decision and the
    /// outbox row commit in one transaction.
    pub fn rollback(&self, reason: Option<&str>, sink: &mut dyn EventSink) -> Result<AliasMove> {
        check_reason(&reason.map(str::to_string))?;
        let row = self.row()?;
        let name = row.rec.model_name.clone();
        let home = self.store.root.clone();
        let nowt = util::now();
        self.transact(sink, |tx| {
            let model =
                |id: &str| alias_sql::by_id(tx, &home, id)?.ok_or_else(|| Error::not_found("model", id.to_string()));
            let Some(before) = alias_sql::alias_target(tx, &name, PRODUCTION)? else {
                return Err(Error::not_found("model", format!("{name}@{PRODUCTION}")));
            };
            let before = model(&before)?;
            let why = reason.map(str::to_string).unwrap_or_else(|| format!("{} rolled back", before.reference()));
            let moved = aliases::rollback_in(tx, &name, Some(&why), &nowt)?;
            let now_serving = model(&moved.production.0)?;
            let event = Event::RolledBack {
                model: now_serving.reference(),
                model_id: now_serving.id.0.clone(),
                alias: PRODUCTION.into(),
                previous: before.reference(),
                monitor: Some(self.name.clone()),
                reason: why.clone(),
            };
            let decision = Decision::new(DecisionKind::RolledBack, why, json!({"from": before.reference()}))
                .model(Some(&now_serving.id))
                .candidate(Some(&before.id));
            Ok(Staged::new(moved, vec![decision], vec![event]))
        })
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
        Ok(MonitorHandle { stop: Mutex::new(Some(tx)), thread: Mutex::new(Some(thread)), cancel, last_error, ticks })
    }
}

/// Rows `i` of `n` kept by an even spread of `share` (0..=1) of them.
fn spread(i: usize, share: f64) -> bool {
    ((i + 1) as f64 * share).floor() > (i as f64 * share).floor()
}

/// A monitor ticking on a background thread ([`Monitor::spawn`]).
pub struct MonitorHandle {
    stop: Mutex<Option<mpsc::Sender<()>>>,
    thread: Mutex<Option<JoinHandle<()>>>,
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
        if let Some(s) = self.stop.lock().ok().as_ref().and_then(|s| s.as_ref()) {
            let _ = s.send(());
        }
    }

    /// Stops after the current tick (letting a running job finish) and waits for it.
    /// Idempotent; [`MonitorHandle::ticks`] and [`MonitorHandle::last_error`] stay
    /// readable afterwards.
    pub fn stop(&self) -> Result<()> {
        if let Ok(mut s) = self.stop.lock() {
            s.take();
        }
        let thread = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(t) = thread {
            t.join().map_err(|_| Error::Internal("the monitor thread panicked".into()))?;
        }
        Ok(())
    }

    /// False once stopped.
    pub fn is_running(&self) -> bool {
        self.thread.lock().map(|t| t.is_some()).unwrap_or(false)
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
        let _ = self.stop();
    }
}

//! What a monitor does its own way for a language model: its triggers read the data
//! fed to it ([`Monitor::feed`]), its retrain trains LoRA on that data and a replay
//! share of the old training data, its shadow scores the candidate on the fed rows.
//!
//! The window the metric and drift triggers read is the newest rows of the feeds no
//! retrain holds: when that is exactly one whole fed dataset it is used as it is,
//! otherwise the rows are written as a dataset of their own (`<name>-window-<id>`; the
//! same rows give the same dataset), so that the evaluations and drift checks stored
//! name a real dataset.

use serde_json::{json, Value};

use super::gate::{evaluation, value};
use super::{scorable, spread, Decision, Draft, Monitor, Prepared, Signals};
use crate::catalog::monitor::{self as sql, MonitorRow};
use crate::continual::read_records;
use crate::error::{Error, Location, Result};
use crate::models::lora::peft;
use crate::types::{
    DatasetRecord, DecisionKind, DriftOptions, DriftVerdict, DriftWindow, Event, ImportOptions, JobId, LmRetrainMethod,
    LoraConfig, Method, ModelKind, ModelRecord, ModelRef, MonitorFeed, OnDuplicate, TrainSpec,
};
use crate::util;

/// The datasets of `feeds` that still exist, in the feeds' order; the gone ones noted.
fn fed_datasets(mon: &Monitor, feeds: &[MonitorFeed], notes: &mut Vec<String>) -> Result<Vec<DatasetRecord>> {
    let datasets = mon.datasets();
    let mut out = Vec::with_capacity(feeds.len());
    for f in feeds {
        match datasets.get(f.dataset_id.clone()) {
            Ok(ds) => out.push(ds),
            Err(Error::NotFound { .. }) => {
                notes.push(format!("fed dataset `{}` ({}) was deleted: skipped", f.dataset, f.dataset_id))
            }
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The newest `n` rows of `fed` (oldest dataset first) as one dataset and its rows
/// (see the module documentation); `None` without rows. Only datasets of the newest
/// one's format are taken.
fn window(mon: &Monitor, name: &str, fed: &[DatasetRecord], n: u64) -> Result<Option<(DatasetRecord, u64)>> {
    let Some(newest) = fed.last() else { return Ok(None) };
    // (dataset, rows taken from its end), newest first.
    let mut parts: Vec<(&DatasetRecord, u64)> = Vec::new();
    let mut total = 0u64;
    for ds in fed.iter().rev().take_while(|d| d.format == newest.format) {
        if total >= n {
            break;
        }
        let take = ds.num_records.min(n - total);
        total += take;
        parts.push((ds, take));
    }
    match parts.as_slice() {
        [] => return Ok(None),
        _ if total == 0 => return Ok(None),
        [(ds, take)] if *take == ds.num_records => return Ok(Some(((*ds).clone(), *take))),
        _ => {}
    }
    let mut rows: Vec<Value> = Vec::with_capacity(total as usize);
    for (ds, take) in parts.iter().rev() {
        let mut records = read_records(&ds.path)?;
        let skip = records.len().saturating_sub(*take as usize);
        rows.extend(records.drain(skip..));
    }
    let ds = mon.datasets().import_records(
        rows.into_iter().map(Ok),
        &ImportOptions {
            name: Some(util::new_id(&format!("{name}-window"))),
            format: Some(newest.format),
            on_duplicate: OnDuplicate::Reuse,
            ..Default::default()
        },
    )?;
    Ok(Some((ds, total)))
}

/// The critical KS statistic of two samples of sizes `n` and `m` at significance
/// `alpha` (the asymptotic formula): the statistic at or above which the check
/// declares drift.
fn ks_critical(n: u64, m: u64, alpha: f64) -> f64 {
    let (n, m) = (n.max(1) as f64, m.max(1) as f64);
    (-(alpha / 2.0).ln() / 2.0).sqrt() * ((n + m) / (n * m)).sqrt()
}

/// Reads the metric triggers (production's `metric` on the window of fed rows, against
/// `metric_limit` and against its value on the reference dataset), the drift of the
/// newest `drift_window` fed rows' losses and the rows fed since the last retrain.
pub(super) fn signals(mon: &Monitor, row: &MonitorRow, prod: &ModelRecord, draft: &mut Draft) -> Result<Signals> {
    let policy = &row.rec.policy;
    let (t, g) = (&policy.triggers, &policy.guards);
    let name = &row.rec.model_name;
    let mut s = Signals::default();
    let pending = mon.store.catalog.read(|c| sql::feeds(c, &mon.id, true))?;
    let fed = fed_datasets(mon, &pending, &mut s.notes)?;
    let waiting: u64 = fed.iter().map(|d| d.num_records).sum();
    if waiting == 0 {
        s.nothing_new =
            Some("no data was fed since the last retrain (Monitor::feed): there is nothing new to train on".into());
    }
    let scored = fed.last().is_some_and(|d| scorable(d.format));
    if let Some(d) = fed.last().filter(|_| !scored) {
        s.notes.push(format!(
            "the fed data is {}: the metric and drift triggers score text or completion records only",
            d.format
        ));
    }
    let reference = prod.lineage.eval_dataset.clone().or_else(|| prod.lineage.dataset.clone());
    let metric = t.metric_or_default();
    if (t.metric_limit.is_some() || t.relative_drop.is_some()) && scored {
        match window(mon, name, &fed, t.window)? {
            Some((ds, rows)) if rows >= g.min_samples => {
                draft.report.labelled = rows;
                let v = value(&evaluation(mon, prod, &ds.id, true)?, metric);
                draft.report.window_metric = Some(v);
                if let Some(limit) = t.metric_limit {
                    if v > limit {
                        s.breach = Some((
                            "metric_limit",
                            format!("{metric} {v:.4} on the newest {rows} fed rows is above the limit {limit}"),
                        ));
                    }
                }
                if let (None, Some(drop)) = (&s.breach, t.relative_drop) {
                    match &reference {
                        Some(r) => {
                            let rds = mon.datasets().get(r.clone())?;
                            let rv = value(&evaluation(mon, prod, &rds.id, true)?, metric);
                            if v > rv * (1.0 + drop) {
                                s.breach = Some((
                                    "relative_drop",
                                    format!(
                                        "{metric} {v:.4} on the newest {rows} fed rows is more than {:.1} % above \
                                         {rv:.4} on the reference dataset `{}`",
                                        drop * 100.0,
                                        rds.name
                                    ),
                                ));
                            }
                        }
                        None => s.notes.push(format!(
                            "{} has no training or eval dataset in its lineage: relative_drop skipped",
                            prod.reference()
                        )),
                    }
                }
            }
            other => {
                let rows = other.map(|w| w.1).unwrap_or(0);
                draft.report.labelled = rows;
                s.notes.push(format!("{rows} fed rows waiting, under min_samples {}", g.min_samples));
            }
        }
    }
    if let (None, Some(n), true) = (&s.breach, t.drift_window, scored) {
        match (&reference, window(mon, name, &fed, n)?) {
            (None, _) => s.notes.push(format!(
                "{} has no training or eval dataset in its lineage to compare losses with: drift skipped",
                prod.reference()
            )),
            (Some(_), None) => {}
            (Some(_), Some((ds, _))) => {
                let check = mon.continual().drift(&prod.id, &DriftWindow::Dataset(ds.id.clone()))?;
                if let (DriftVerdict::Drift, Some(loss)) = (check.verdict, &check.loss) {
                    let alpha = DriftOptions::default().p_value;
                    let threshold = ks_critical(loss.reference_samples, loss.window_samples, alpha);
                    let reason = format!(
                        "drift of the per-sample loss on the newest {} fed rows: KS {:.3} (p = {:.2e}), mean loss \
                         {:.4} vs {:.4} on the reference",
                        loss.window_samples,
                        loss.statistic,
                        loss.p_value,
                        loss.window_mean_loss,
                        loss.reference_mean_loss
                    );
                    draft.events.push(Event::DriftDetected {
                        monitor: mon.name.clone(),
                        model: prod.reference(),
                        model_id: prod.id.0.clone(),
                        signal: "loss".into(),
                        window_rows: loss.window_samples,
                        drifted_columns: Vec::new(),
                        score: loss.statistic,
                        threshold,
                        expected_accuracy: None,
                    });
                    draft.decisions.push(
                        Decision::new(
                            DecisionKind::DriftDetected,
                            reason.clone(),
                            json!({"drift_check": check.id, "window_dataset_id": ds.id, "ks": loss.statistic,
                                   "p_value": loss.p_value}),
                        )
                        .trigger(Some("drift")),
                    );
                    s.breach = Some(("drift", reason));
                }
            }
        }
    }
    if let Some(n) = t.new_rows {
        let count = mon.store.catalog.read(|c| sql::rows_fed_since(c, &mon.id, row.last_retrain_ms))?;
        if count >= n {
            s.fire = Some(("new_rows", format!("{count} rows fed since the last retrain (>= {n})")));
        }
    }
    Ok(s)
}

/// The production adapter's own LoRA settings (from its lineage, else its
/// `adapter_config.json`).
fn adapter_config(prod: &ModelRecord) -> Result<LoraConfig> {
    if let Some(TrainSpec { method: Method::Lora(c), .. }) = &prod.lineage.spec {
        return Ok(c.clone());
    }
    Ok(peft::read_config(&prod.path.join(peft::CONFIG_FILE))?.config)
}

/// Writes the retrain's datasets and creates its job: the training rows (every waiting
/// feed, but the rows held out for the gate, plus a `replay_fraction` share of the
/// production model's training dataset) and the gate's evaluation dataset; LoRA on
/// the base, or the production adapter continued.
pub(super) fn prepare(mon: &Monitor, row: &MonitorRow, prod: &ModelRecord) -> Result<Prepared> {
    let policy = &row.rec.policy;
    let (action, gate) = (&policy.action, &policy.gate);
    let name = &row.rec.model_name;
    let datasets = mon.datasets();
    let registry = mon.registry();
    // New rows: the waiting feeds, oldest first.
    let pending = mon.store.catalog.read(|c| sql::feeds(c, &mon.id, true))?;
    let mut notes = Vec::new();
    let fed = fed_datasets(mon, &pending, &mut notes)?;
    let Some(format) = fed.first().map(|d| d.format) else {
        return Err(Error::config(
            "feed",
            "no data was fed since the last retrain (Monitor::feed): there is nothing new to train on",
        ));
    };
    if let Some(other) = fed.iter().find(|d| d.format != format) {
        return Err(Error::config(
            "feed",
            format!(
                "the fed datasets mix formats (`{}` is {format}, `{}` is {}): a retrain trains on one format",
                fed[0].name, other.name, other.format
            ),
        ));
    }
    let mut new_rows = Vec::new();
    for ds in &fed {
        new_rows.extend(read_records(&ds.path)?);
    }
    let n_fed = new_rows.len();
    // The gate's dataset: fixed, or an even spread of the new rows held out.
    let (eval_id, train_new) = match &gate.dataset {
        Some(ds) => (datasets.get(ds.clone())?.id, new_rows),
        None => {
            if !scorable(format) {
                return Err(Error::config(
                    "gate.dataset",
                    format!(
                        "the fed data is {format}: the gate scores text or completion records; set gate.dataset to \
                         a text or completion dataset"
                    ),
                ));
            }
            if n_fed < 2 {
                return Err(Error::config(
                    "gate.dataset",
                    format!(
                        "{n_fed} fed rows: at least 2 are needed to hold some out for the gate (or set gate.dataset)"
                    ),
                ));
            }
            let hold = ((n_fed as f64 * gate.holdout_fraction).ceil() as usize).clamp(1, n_fed - 1);
            let share = hold as f64 / n_fed as f64;
            let (mut held, mut train) = (Vec::with_capacity(hold), Vec::with_capacity(n_fed - hold));
            for (i, r) in new_rows.into_iter().enumerate() {
                if spread(i, share) {
                    held.push(r);
                } else {
                    train.push(r);
                }
            }
            let eval = datasets.import_records(
                held.into_iter().map(Ok),
                &ImportOptions {
                    name: Some(util::new_id(&format!("{name}-gate"))),
                    format: Some(format),
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
    if action.replay_fraction > 0.0 {
        match &prod.lineage.dataset {
            Some(id) => {
                let ds = datasets.get(id.clone())?;
                if ds.format != format {
                    return Err(Error::config(
                        "action.replay_fraction",
                        format!(
                            "{} was trained on `{}` ({}) and the fed data is {format}: they cannot be mixed in one \
                             dataset (feed {} records, or set replay_fraction to 0)",
                            prod.reference(),
                            ds.name,
                            ds.format,
                            ds.format
                        ),
                    ));
                }
                let records = read_records(&ds.path)?;
                old_total = records.len();
                let share = action.replay_fraction;
                old.extend(records.into_iter().enumerate().filter(|(i, _)| spread(*i, share)).map(|(_, r)| r));
            }
            None => {
                notes.push(format!("{} has no training dataset in its lineage: nothing replayed", prod.reference()))
            }
        }
    }
    let (n_old, n_new) = (old.len(), train_new.len());
    if n_new == 0 {
        return Err(Error::config("gate.dataset", "every fed row is held out for the gate: nothing new to train on"));
    }
    let train = datasets.import_records(
        old.into_iter().chain(train_new).map(Ok),
        &ImportOptions {
            name: Some(util::new_id(&format!("{name}-retrain"))),
            format: Some(format),
            on_duplicate: OnDuplicate::Reuse,
            ..Default::default()
        },
    )?;
    // The job: the production model's own spec, LoRA on the base or the adapter continued.
    let method = action.lm_method.unwrap_or_default();
    let parent = || -> Result<ModelRecord> {
        let id = prod.parent_id.clone().ok_or_else(|| {
            Error::data(Location::file(&prod.path), format!("the adapter {} has no base model", prod.reference()))
        })?;
        registry.get(&id).map_err(|e| match e {
            Error::NotFound { .. } => {
                Error::config("action.lm_method", format!("the base {id} of {} was deleted", prod.reference()))
            }
            o => o,
        })
    };
    let lineage_lora = match &prod.lineage.spec {
        Some(TrainSpec { method: Method::Lora(c), .. }) => Some(c.clone()),
        _ => None,
    };
    let (base, lora, init) = match (method, prod.kind) {
        (LmRetrainMethod::Continue, ModelKind::Lora) => (parent()?, adapter_config(prod)?, Some(prod)),
        (LmRetrainMethod::Continue, kind) => {
            return Err(Error::config(
                "action.lm_method",
                format!("`continue` trains the production adapter further, but {} is a {kind} model", prod.reference()),
            ))
        }
        (LmRetrainMethod::Lora, kind) => {
            let base = if kind == ModelKind::Lora { parent()? } else { prod.clone() };
            (base, action.lora.clone().or(lineage_lora).unwrap_or_default(), None)
        }
    };
    let mut spec =
        prod.lineage.spec.clone().filter(|s| matches!(s.method, Method::Lora(_) | Method::Full)).unwrap_or_default();
    spec.base = ModelRef(base.id.0.clone());
    spec.dataset = train.id.clone();
    spec.method = Method::Lora(lora);
    spec.init_adapter = init.map(|a| ModelRef(a.id.0.clone()));
    // The gate's dataset is the candidate's eval dataset: held-out rows its lineage
    // keeps as the reference of its drift checks and as its retention set later.
    spec.eval_dataset = Some(eval_id.clone());
    spec.eval_fraction = None;
    spec.eval_every = None;
    spec.early_stopping_patience = None;
    spec.image = None;
    spec.output_name = Some(name.clone());
    if let Some(n) = action.max_steps {
        spec.max_steps = Some(n);
    }
    if let Some(lr) = action.learning_rate {
        spec.learning_rate = lr;
    }
    let job = mon.engine().create_job(&spec)?;
    let details = json!({
        "dataset_id": train.id,
        "eval_dataset_id": eval_id,
        "replayed_rows": n_old,
        "of_training_rows": old_total,
        "source_dataset_id": prod.lineage.dataset,
        "fed_rows": n_fed,
        "new_rows": n_new,
        "held_out_rows": n_fed - n_new,
        "fed_datasets": fed.iter().map(|d| d.id.0.clone()).collect::<Vec<_>>(),
        "lm_method": method.as_str(),
        "base": base.reference(),
        "init_adapter": init.map(ModelRecord::reference),
        "production": prod.reference(),
        "notes": notes,
    });
    Ok(Prepared { job: job.id, eval: eval_id, details, feeds: pending.iter().map(|f| f.id).collect() })
}

/// Scores `cand` and production on the newest `triggers.window` rows of the data the
/// retrain took (mean loss), without serving it.
pub(super) fn shadow(
    mon: &Monitor,
    row: &MonitorRow,
    prod: &ModelRecord,
    cand: &ModelRecord,
    job: &JobId,
) -> Result<(String, Value)> {
    let feeds = mon.store.catalog.read(|c| sql::feeds_of_job(c, &mon.id, job))?;
    let mut notes = Vec::new();
    let fed = fed_datasets(mon, &feeds, &mut notes)?;
    if let Some(d) = fed.last().filter(|d| !scorable(d.format)) {
        return Ok((format!("the fed data is {}: not scored", d.format), json!({"rows": 0})));
    }
    let Some((ds, rows)) = window(mon, &row.rec.model_name, &fed, row.rec.policy.triggers.window)? else {
        return Ok(("no fed rows to score on".into(), json!({"rows": 0})));
    };
    let cl = value(&evaluation(mon, cand, &ds.id, true)?, "loss");
    let pl = value(&evaluation(mon, prod, &ds.id, true)?, "loss");
    Ok((
        format!(
            "on the newest {rows} fed rows {} would score loss {cl:.4}, {} scores {pl:.4}",
            cand.reference(),
            prod.reference()
        ),
        json!({"rows": rows, "dataset_id": ds.id, "candidate_loss": cl, "production_loss": pl}),
    ))
}

//! The promotion gate, one for both kinds of model: the candidate and the production
//! model evaluated on the same dataset (floor and margin, the comparisons flipped for
//! lower-is-better metrics) and on the retention sets of earlier versions; then
//! promote, leave as candidate (manual, shadow) or keep production.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::{classifier, lm, production, scorable, Decision, Monitor, Staged, Watched};
use crate::catalog::models as alias_sql;
use crate::catalog::monitor::{self as sql, MonitorRow};
use crate::error::{Error, Result};
use crate::events::EventSink;
use crate::registry::aliases;
use crate::types::{
    lower_is_better, AliasAction, DatasetFormat, DatasetId, DatasetRecord, DecisionKind, EvaluationRecord, Event,
    GateVerdict, JobId, ModelId, ModelKind, ModelRecord, PromotionMode, TickOutcome, TickReport, CANDIDATE, PRODUCTION,
};
use crate::util;

/// `model`'s evaluation on `dataset`: a stored one when `reuse` and there is one
/// (models and datasets do not change), else a new one.
pub(super) fn evaluation(
    mon: &Monitor,
    model: &ModelRecord,
    dataset: &DatasetId,
    reuse: bool,
) -> Result<EvaluationRecord> {
    let continual = mon.continual();
    if reuse {
        if let Some(e) = continual.evaluations(&model.id)?.into_iter().find(|e| e.dataset_id == *dataset) {
            return Ok(e);
        }
    }
    continual.evaluate(&model.id, dataset.clone())
}

/// `metric` of an evaluation (NaN when it has none).
pub(super) fn value(e: &EvaluationRecord, metric: &str) -> f64 {
    e.metrics.get(metric).copied().unwrap_or(f64::NAN)
}

/// A retention set and where it comes from.
struct Retention {
    dataset: DatasetRecord,
    source: String,
}

/// One retention set's comparison.
struct Retained {
    set: Retention,
    candidate: f64,
    production: f64,
    passed: bool,
}

impl Monitor {
    /// The retention sets of a gate: the reference datasets (lineage eval dataset, else
    /// training dataset) of the production model and of the production versions before
    /// it (from the alias history, newest first), `gate.retention_versions` versions in
    /// all, then `gate.retention_datasets`; each once, never the gate's own dataset.
    /// Sets that are gone or cannot be scored are skipped with a note.
    fn retention_sets(
        &self,
        row: &MonitorRow,
        prod: &ModelRecord,
        exclude: &DatasetId,
    ) -> Result<(Vec<Retention>, Vec<String>)> {
        let gate = &row.rec.policy.gate;
        let registry = self.registry();
        let datasets = self.datasets();
        let wanted = gate.retention_versions_for(prod.kind) as usize;
        let mut versions = Vec::new();
        if wanted > 0 {
            versions.push(prod.clone());
            let history = registry.alias_history(&row.rec.model_name, Some(PRODUCTION))?;
            let mut seen = HashSet::from([prod.id.clone()]);
            for change in history {
                if versions.len() >= wanted {
                    break;
                }
                let Some(id) = change.model_id else { continue };
                if !seen.insert(id.clone()) {
                    continue;
                }
                if let Ok(m) = registry.get(&id) {
                    versions.push(m);
                }
            }
        }
        let mut sets: Vec<Retention> = Vec::new();
        let mut notes = Vec::new();
        let mut seen = HashSet::from([exclude.clone()]);
        let mut add = |ds: DatasetRecord, source: String, notes: &mut Vec<String>| {
            let fits = if prod.kind == ModelKind::Classifier {
                ds.format == DatasetFormat::Tabular
            } else {
                scorable(ds.format)
            };
            if !fits {
                notes.push(format!("{source} `{}` is a {} dataset: not scored", ds.name, ds.format));
            } else if seen.insert(ds.id.clone()) {
                sets.push(Retention { dataset: ds, source });
            }
        };
        for v in &versions {
            let (id, which) = match (&v.lineage.eval_dataset, &v.lineage.dataset) {
                (Some(e), _) => (e, "eval"),
                (None, Some(d)) => (d, "training"),
                (None, None) => {
                    notes.push(format!("{} has no dataset in its lineage", v.reference()));
                    continue;
                }
            };
            match datasets.get(id.clone()) {
                Ok(ds) => add(ds, format!("{}'s {which} dataset", v.reference()), &mut notes),
                Err(Error::NotFound { .. }) => notes.push(format!("{}'s {which} dataset {id} is gone", v.reference())),
                Err(e) => return Err(e),
            }
        }
        for (i, id) in gate.retention_datasets.iter().enumerate() {
            let ds = datasets.get(id.clone()).map_err(|e| match e {
                Error::NotFound { .. } => {
                    Error::config(format!("gate.retention_datasets[{i}]"), format!("dataset `{id}` does not exist"))
                }
                o => o,
            })?;
            add(ds, format!("retention dataset {id}"), &mut notes);
        }
        Ok((sets, notes))
    }

    /// Evaluates the candidate and production on the same dataset and on the retention
    /// sets, and acts on the verdict (promote, leave as candidate, keep production).
    pub(super) fn gate(
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
        let watched = Watched::of(&prod)?;
        let dataset = match (&row.rec.eval_dataset_id, &gate.dataset) {
            (Some(d), _) => d.clone(),
            (None, Some(d)) => self.datasets().get(d.clone())?.id,
            (None, None) => return Err(Error::config("gate.dataset", "the retrain recorded no evaluation dataset")),
        };
        let ce = evaluation(self, &cand, &dataset, false)?;
        let pe = evaluation(self, &prod, &dataset, false)?;
        let metric = gate.metric_for(prod.kind);
        let lower = lower_is_better(metric);
        let (cv, pv) = (value(&ce, metric), value(&pe, metric));
        let floor_ok = gate.floor.is_none_or(|f| if lower { cv <= f } else { cv >= f });
        let gain = if lower { pv - cv } else { cv - pv };
        let margin_ok = gain >= gate.margin - 1e-12;
        // Retention sets: the candidate may not regress on them beyond the tolerance.
        let (sets, notes) = self.retention_sets(row, &prod, &dataset)?;
        let tol = gate.retention_tolerance;
        let mut retained = Vec::with_capacity(sets.len());
        for set in sets {
            let c = value(&evaluation(self, &cand, &set.dataset.id, true)?, metric);
            let p = value(&evaluation(self, &prod, &set.dataset.id, true)?, metric);
            let passed = if lower { c <= p * (1.0 + tol) + 1e-12 } else { c >= p * (1.0 - tol) - 1e-12 };
            retained.push(Retained { set, candidate: c, production: p, passed });
        }
        let regressed = retained.iter().find(|r| !r.passed);
        let passed = floor_ok && margin_ok && regressed.is_none();
        let (cref, pref) = (cand.reference(), prod.reference());
        let floor_text = match (gate.floor, lower) {
            (Some(f), false) => format!(">= floor {f}"),
            (Some(f), true) => format!("<= limit {f}"),
            (None, _) => "(no floor)".into(),
        };
        let reason = if !floor_ok {
            let f = gate.floor.unwrap_or(f64::NAN);
            if lower {
                format!("{metric} {cv:.4} of {cref} is above the limit {f}")
            } else {
                format!("{metric} {cv:.4} of {cref} is under the floor {f}")
            }
        } else if !margin_ok {
            format!("{metric} {cv:.4} of {cref} does not beat {pv:.4} of {pref} by the margin {}", gate.margin)
        } else if let Some(r) = regressed {
            format!(
                "{cref} regresses on the retention set `{}` ({}): {metric} {:.4} vs {:.4} of {pref}, beyond the \
                 tolerance of {:.1} %",
                r.set.dataset.name,
                r.set.source,
                r.candidate,
                r.production,
                tol * 100.0
            )
        } else {
            let kept = if retained.is_empty() {
                String::new()
            } else {
                format!("; within {:.1} % of it on {} retention set(s)", tol * 100.0, retained.len())
            };
            format!(
                "{metric} {cv:.4} of {cref} {floor_text} and beats {pv:.4} of {pref} by {gain:.4} (margin {}){kept}",
                gate.margin
            )
        };
        let verdict = if passed { GateVerdict::Passed } else { GateVerdict::Failed };
        let evaluated = Event::CandidateEvaluated {
            monitor: Some(self.name.clone()),
            candidate: cref.clone(),
            candidate_id: cand.id.0.clone(),
            production: Some(pref.clone()),
            dataset_id: dataset.0.clone(),
            metric: metric.to_string(),
            candidate_value: cv,
            production_value: Some(pv),
            metrics: ce.metrics.clone(),
            verdict,
            reason: reason.clone(),
        };
        let retention: Vec<Value> = retained
            .iter()
            .map(|r| {
                json!({
                    "dataset_id": r.set.dataset.id, "dataset": r.set.dataset.name, "source": r.set.source,
                    "candidate_value": r.candidate, "production_value": r.production, "passed": r.passed,
                })
            })
            .collect();
        let gate_details = json!({
            "dataset_id": dataset, "metric": metric, "lower_is_better": lower, "candidate_value": cv,
            "production_value": pv, "floor": gate.floor, "margin": gate.margin, "verdict": verdict.as_str(),
            "candidate_evaluation": ce.id, "production_evaluation": pe.id, "mode": gate.mode.as_str(),
            "retention": retention, "retention_tolerance": tol, "retention_notes": notes,
        });
        let decision = |kind, why: &str, details| {
            Decision::new(kind, why, details).model(Some(&prod.id)).job(Some(job_id)).candidate(Some(&cand.id))
        };
        report.candidate = Some(cref.clone());
        report.model = Some(pref.clone());
        let nowt = util::now();
        let mut decisions = vec![decision(DecisionKind::CandidateEvaluated, &reason, gate_details)];
        let mut events = vec![evaluated];
        if !passed {
            let keep = format!("{reason}: production {pref} kept");
            decisions.push(decision(DecisionKind::Kept, &keep, json!({})));
            let done = self.transact(sink, |tx| {
                if !sql::finish_job(tx, &self.id, job_id, None, &nowt)? {
                    return Ok(Staged::nothing(false));
                }
                sql::release_feeds(tx, &self.id, job_id)?;
                Ok(Staged::new(true, decisions, events))
            })?;
            return Ok(self.settled(report, done, TickOutcome::Kept, keep));
        }
        match gate.mode {
            PromotionMode::Auto => {
                let promo_reason = format!("auto-promoted: {reason}");
                events.push(Event::Promoted {
                    model: cref.clone(),
                    model_id: cand.id.0.clone(),
                    alias: PRODUCTION.into(),
                    previous: Some(pref.clone()),
                    mode: "auto".into(),
                    monitor: Some(self.name.clone()),
                    reason: promo_reason.clone(),
                });
                decisions.push(decision(DecisionKind::Promoted, &promo_reason, json!({"mode": "auto"})));
                let done = self.transact(sink, |tx| {
                    if !sql::finish_job(tx, &self.id, job_id, None, &nowt)? {
                        return Ok(Staged::nothing(false));
                    }
                    aliases::promote_in(tx, &cand, Some(&promo_reason), &nowt)?;
                    Ok(Staged::new(true, decisions, events))
                })?;
                Ok(self.settled(report, done, TickOutcome::Promoted, promo_reason))
            }
            PromotionMode::Manual | PromotionMode::Shadow => {
                let mut why = format!("{reason}; left as {}@{CANDIDATE} until approved", cand.name);
                if gate.mode == PromotionMode::Shadow {
                    let (text, details) = match watched {
                        Watched::Classifier => classifier::shadow(self, row, &prod, &cand, job_id)?,
                        Watched::LanguageModel => lm::shadow(self, row, &prod, &cand, job_id)?,
                    };
                    why = format!("{why}; shadow: {text}");
                    decisions.push(decision(DecisionKind::Shadow, &why, details));
                }
                let done = self.transact(sink, |tx| {
                    if !sql::finish_job(tx, &self.id, job_id, Some(&cand.id), &nowt)? {
                        return Ok(Staged::nothing(false));
                    }
                    let change = alias_sql::Change { action: AliasAction::Set, reason: Some(why.as_str()), at: &nowt };
                    alias_sql::set_alias(tx, &cand.name, CANDIDATE, &cand.id.0, &change)?;
                    Ok(Staged::new(true, decisions, events))
                })?;
                Ok(self.settled(report, done, TickOutcome::AwaitingApproval, why))
            }
        }
    }
}

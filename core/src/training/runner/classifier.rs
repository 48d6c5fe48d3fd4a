//! The `classifier` method: a tabular classifier fitted on a `tabular` dataset, run
//! under the same job machinery as the optimiser loop (claim, lease, heartbeat,
//! events, logs, metrics, cancel, registration in the job's completing transaction).
//!
//! The fit ([`Classifier::fit`]) runs in one piece: cancel is honoured before and
//! after it, and there is no mid-fit checkpoint, so a cancelled, failed or interrupted
//! job resumes by running the same (deterministic for its seed) fit from the start.
//! Its per-iteration history becomes `step` events (one per L-BFGS iteration or Adam
//! epoch, emitted once the fit returns) and train metric points; validation losses
//! become `eval` events.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{default_name, storage_failure, Run};
use crate::catalog::jobs::{self as sql, Progress};
use crate::continual::evaluate::classification_metrics;
use crate::continual::{read_records, split_records, Rows, HISTORY_FILE, PROFILE_FILE};
use crate::error::{Error, Location, Result};
use crate::events::CancelToken;
use crate::tabular::classifier::{self, Classifier, ClassifierKind, FitOptions, Optimizer};
use crate::tabular::preprocess::PreprocessOptions;
use crate::tabular::profile::{Profile, ProfileOptions};
use crate::training::data;
use crate::types::{
    ClassWeighting, ClassifierConfig, ClassifierModel, ClassifierOptimizer, ColumnKind, DatasetFormat, Event,
    JobStatus, Lineage, MetricKind, MetricPoint, ModelRecord, TrainMetrics, TrainReport,
};
use crate::util::{self, StagingDir};

/// The L1 fit options of a job's classifier config.
fn fit_options(cfg: &ClassifierConfig, seed: u64) -> FitOptions {
    let mut kinds = BTreeMap::new();
    kinds.extend(cfg.categorical.iter().map(|c| (c.clone(), ColumnKind::Categorical)));
    kinds.extend(cfg.numeric.iter().map(|c| (c.clone(), ColumnKind::Numeric)));
    FitOptions {
        kind: match cfg.model {
            ClassifierModel::Logistic => ClassifierKind::LogisticRegression,
            ClassifierModel::Mlp => ClassifierKind::Mlp,
        },
        hidden: cfg.hidden.clone(),
        c: cfg.c,
        alpha: cfg.alpha,
        optimizer: cfg.optimizer.map(|o| match o {
            ClassifierOptimizer::Lbfgs => Optimizer::Lbfgs,
            ClassifierOptimizer::Adam => Optimizer::Adam,
        }),
        max_iter: cfg.max_iter,
        batch_size: cfg.batch_size,
        learning_rate: cfg.learning_rate,
        tol: cfg.tol,
        class_weight: match cfg.class_weight {
            ClassWeighting::None => classifier::ClassWeight::None,
            ClassWeighting::Balanced => classifier::ClassWeight::Balanced,
        },
        validation_fraction: cfg.validation_fraction,
        patience: cfg.patience,
        seed,
        sgd_learning_rate: cfg.sgd_learning_rate,
        preprocess: PreprocessOptions { kinds, exclude: cfg.exclude.clone(), missing_indicator: cfg.missing_indicator },
    }
}

impl Run<'_> {
    /// Loads the training (and held-out) rows of the job.
    fn classifier_data(&self) -> Result<(Rows, Rows)> {
        let spec = &self.job.spec;
        let store = self.engine.datasets();
        let ds_id = self.job.dataset_id.clone().ok_or_else(|| Error::NotFound {
            what: "dataset",
            id: format!("{} (the job's dataset was deleted)", spec.dataset),
        })?;
        let ds = store.get(ds_id)?;
        if ds.format != DatasetFormat::Tabular {
            return Err(Error::config("dataset", format!("is a {} dataset, not tabular", ds.format)));
        }
        let loc = Location::file(&ds.path);
        let records = read_records(&ds.path)?;
        let (train, eval) = match (spec.eval_fraction, &self.job.eval_dataset_id) {
            (Some(f), _) => {
                let mask = data::eval_mask(records.len(), f, spec.seed)?;
                let (mut t, mut e) = (Vec::new(), Vec::new());
                for (r, is_eval) in records.into_iter().zip(mask) {
                    if is_eval {
                        e.push(r)
                    } else {
                        t.push(r)
                    }
                }
                (split_records(t, &loc)?, split_records(e, &loc)?)
            }
            (None, Some(eid)) => {
                let eds = store.get(eid.clone())?;
                if eds.format != DatasetFormat::Tabular {
                    return Err(Error::config("eval_dataset", format!("is a {} dataset, not tabular", eds.format)));
                }
                let e = read_records(&eds.path)?;
                (split_records(records, &loc)?, split_records(e, &Location::file(&eds.path))?)
            }
            (None, None) => (split_records(records, &loc)?, (Vec::new(), Vec::new())),
        };
        Ok((train, eval))
    }

    /// Runs a `classifier` job to its registered model.
    pub(super) fn train_classifier(&mut self, cfg: &ClassifierConfig, cancel: &CancelToken) -> Result<TrainReport> {
        let started = Instant::now();
        let spec = self.job.spec.clone();
        let job_id = self.job.id.clone();
        let seed = cfg.seed.unwrap_or(spec.seed);
        let opts = fit_options(cfg, seed);
        let planned = cfg.max_iter as u64;
        let epochs = if cfg.effective_optimizer() == ClassifierOptimizer::Adam { cfg.max_iter as u32 } else { 1 };
        let loaded = self.classifier_data();
        self.emit(Event::JobStarted { job_id: job_id.0.clone(), total_steps: planned, epochs })?;
        let ((rows, labels), (eval_rows, eval_labels)) = loaded?;
        self.log(
            "info",
            format!(
                "starting: classifier ({}, {}) on {} rows ({} held out), seed {seed}; the fit runs in one piece \
                 (no mid-fit checkpoint: a resumed job fits again from the start)",
                cfg.model,
                cfg.effective_optimizer(),
                rows.len(),
                eval_rows.len()
            ),
        )?;
        let idle = Progress {
            progress: 0.0,
            epoch: 0,
            step: 0,
            total_steps: planned,
            tokens: 0,
            loss: None,
            eval_loss: None,
            lr: None,
            tokens_per_sec: None,
            sample: None,
            checkpoint: None,
            image: None,
        };
        self.write_live(&idle)?;
        if self.check_cancel(cancel)? {
            self.log("info", "cancelled before the fit".into())?;
            return Err(Error::Cancelled);
        }
        let (model, history) = Classifier::fit(&rows, &labels, &opts)?;
        let profile = Profile::from_rows(
            &rows,
            &ProfileOptions {
                seed,
                kinds: opts.preprocess.kinds.clone(),
                exclude: cfg.exclude.clone(),
                ..Default::default()
            },
        )?;

        // The fit's history as step / eval events and metric points.
        let total = history.epochs.len() as u64;
        let lr = match history.optimizer {
            Optimizer::Adam => cfg.learning_rate,
            Optimizer::Lbfgs => 1.0,
        };
        let mut last_loss = None;
        let mut best_val: Option<f64> = None;
        for e in &history.epochs {
            let step = e.epoch as u64;
            let epoch = if history.optimizer == Optimizer::Adam { e.epoch as u32 } else { 1 };
            let progress = step as f64 / total.max(1) as f64;
            self.emit(Event::Step {
                job_id: job_id.0.clone(),
                epoch,
                step,
                total_steps: total,
                loss: e.loss,
                lr,
                tokens_per_sec: 0.0,
                progress,
                sample: None,
                image: None,
            })?;
            self.metrics.push(MetricPoint {
                kind: MetricKind::Train,
                step,
                epoch,
                loss: e.loss,
                lr: Some(lr),
                tokens_per_sec: None,
                at: util::now(),
            });
            last_loss = Some(e.loss);
            if let Some(vl) = e.val_loss {
                best_val = Some(best_val.map_or(vl, |b: f64| b.min(vl)));
                let mut metrics = BTreeMap::new();
                metrics.insert("val_loss".to_string(), vl);
                if let Some(a) = e.val_accuracy {
                    metrics.insert("val_accuracy".to_string(), a);
                }
                self.emit(Event::Eval { job_id: job_id.0.clone(), step, metrics })?;
                self.metrics.push(MetricPoint {
                    kind: MetricKind::Eval,
                    step,
                    epoch,
                    loss: vl,
                    lr: None,
                    tokens_per_sec: None,
                    at: util::now(),
                });
            }
        }
        let why = if history.stopped_early {
            format!("stopped early; kept epoch {}", history.best_epoch)
        } else if history.converged {
            "converged".to_string()
        } else {
            "reached max_iter".to_string()
        };
        self.log("info", format!("fit: {total} {} iterations, {why}", history.optimizer_name()))?;

        // Final figures: training accuracy, held-out accuracy and log-loss.
        let k = model.classes().len();
        let train_truth = model.config().labels.encode(&labels)?;
        let train_p = model.predict_proba(&rows)?;
        let train_accuracy = classification_metrics(&train_p.rows, &train_truth, k)?.get("accuracy").copied();
        let (mut eval_loss, mut eval_accuracy) = (None, None);
        if !eval_rows.is_empty() {
            let truth = model.config().labels.encode(&eval_labels).map_err(|e| match e {
                Error::InvalidData { reason, .. } => {
                    Error::data(Location::default().field("label"), format!("held-out rows: {reason}"))
                }
                o => o,
            })?;
            let p = model.predict_proba(&eval_rows)?;
            let m = classification_metrics(&p.rows, &truth, k)?;
            eval_loss = m.get("log_loss").copied();
            eval_accuracy = m.get("accuracy").copied();
            let mut metrics = BTreeMap::new();
            metrics.insert("eval_loss".to_string(), eval_loss.unwrap_or(f64::NAN));
            metrics.insert("eval_accuracy".to_string(), eval_accuracy.unwrap_or(f64::NAN));
            self.emit(Event::Eval { job_id: job_id.0.clone(), step: total, metrics })?;
            if let Some(l) = eval_loss {
                self.metrics.push(MetricPoint {
                    kind: MetricKind::Eval,
                    step: total,
                    epoch: 1,
                    loss: l,
                    lr: None,
                    tokens_per_sec: None,
                    at: util::now(),
                });
            }
        } else if history.validation_rows > 0 {
            let best = history.epochs.iter().find(|e| e.epoch == history.best_epoch);
            eval_accuracy = best.and_then(|e| e.val_accuracy);
            eval_loss = best.and_then(|e| e.val_loss);
        }
        if self.check_cancel(cancel)? {
            self.log("info", "cancelled after the fit (nothing registered)".into())?;
            return Err(Error::Cancelled);
        }

        // Register: the classifier's files and the reference profile, in one transaction
        // with the job's completion.
        let registry = self.engine.registry();
        let mut staging = StagingDir::new(&registry.staging_root())?;
        model.save(staging.path())?;
        let json = |v: &dyn erased::Json| v.bytes();
        util::write_atomic(&staging.path().join(PROFILE_FILE), &json(&profile)?)?;
        util::write_atomic(&staging.path().join(HISTORY_FILE), &json(&history)?)?;
        let config = serde_json::to_value(model.config()).map_err(|e| Error::Internal(e.to_string()))?;
        let layers = &model.config().layers;
        let params: u64 = layers.windows(2).map(|w| (w[0] * w[1] + w[1]) as u64).sum();
        let name = match &spec.output_name {
            Some(n) => n.clone(),
            None => {
                let ds = self.engine.datasets().get(spec.dataset.clone()).map(|d| d.name).unwrap_or_default();
                default_name(if ds.is_empty() { "tabular" } else { &ds }, "classifier", &job_id)
            }
        };
        let duration_s = started.elapsed().as_secs_f64();
        let lineage = Lineage {
            dataset: self.job.dataset_id.clone(),
            eval_dataset: self.job.eval_dataset_id.clone(),
            job: Some(job_id.clone()),
            spec: Some(spec.clone()),
            metrics: Some(TrainMetrics {
                final_loss: last_loss,
                eval_loss,
                best_eval_loss: best_val.or(eval_loss),
                steps: total,
                tokens: 0,
                duration_s,
                train_accuracy,
                eval_accuracy,
            }),
            ..Default::default()
        };
        let lease = self.lease.clone();
        let complete = |tx: &crate::catalog::Conn, rec: &ModelRecord| {
            sql::check_lease(tx, &job_id.0, &lease)?;
            sql::finish(tx, &job_id.0, JobStatus::Completed, None, Some(rec.id.as_str()), &util::now())?;
            util::failpoint("register.before_commit").map_err(storage_failure)
        };
        let architecture = cfg.model.as_str();
        let rec = registry.register_classifier(
            &mut staging,
            &name,
            architecture,
            params,
            config,
            format!("job:{}", job_id.0),
            lineage,
            &complete,
        )?;
        let _ = util::failpoint("register.after_commit");
        let _ = self.log(
            "info",
            format!(
                "registered {} (classifier) as {}: train accuracy {}{}",
                rec.reference(),
                rec.id,
                train_accuracy.map_or("-".into(), |a| format!("{a:.4}")),
                eval_accuracy.map_or(String::new(), |a| format!(", held-out accuracy {a:.4}")),
            ),
        );
        let done =
            Progress { progress: 1.0, epoch: 1, step: total, total_steps: total, loss: last_loss, eval_loss, ..idle };
        let _ = self.write_live(&done);
        Ok(TrainReport {
            job_id: job_id.clone(),
            model: rec.id.clone(),
            model_id: rec.id,
            final_loss: last_loss.unwrap_or(f64::NAN),
            eval_loss,
            steps: total,
            tokens: 0,
            duration_s,
        })
    }
}

/// Serialising the two side files through one closure.
mod erased {
    use crate::error::{Error, Result};

    pub(super) trait Json {
        fn bytes(&self) -> Result<Vec<u8>>;
    }

    impl<T: serde::Serialize> Json for T {
        fn bytes(&self) -> Result<Vec<u8>> {
            serde_json::to_vec(self).map_err(|e| Error::Internal(e.to_string()))
        }
    }
}

trait OptimizerName {
    fn optimizer_name(&self) -> &'static str;
}

impl OptimizerName for classifier::FitHistory {
    fn optimizer_name(&self) -> &'static str {
        match self.optimizer {
            Optimizer::Lbfgs => "L-BFGS",
            Optimizer::Adam => "Adam",
        }
    }
}

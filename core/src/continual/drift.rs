//! Drift checks of a model against its reference (see [`super::Continual::drift_with`]).

use serde_json::{Map, Value};

use super::evaluate::{lm_scores, on_file};
use super::{argmax, read_records, split_records, PROFILE_FILE};
use crate::catalog::continual as sql;
use crate::data::DatasetStore;
use crate::error::{Error, Location, Result};
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::tabular::classifier::Classifier;
use crate::tabular::drift::ks_2samp;
use crate::tabular::profile::{Profile, SMALL_REFERENCE_ROWS};
use crate::types::{
    DatasetFormat, DriftCheck, DriftCheckId, DriftOptions, DriftVerdict, DriftWindow, LossDrift, ModelRecord,
    PredictionFilter,
};
use crate::util;

fn check(m: &ModelRecord, window: &DriftWindow, verdict: DriftVerdict) -> DriftCheck {
    DriftCheck {
        id: DriftCheckId(util::new_id("drift")),
        model_id: m.id.clone(),
        model: m.reference(),
        window: window.describe(),
        verdict,
        report: None,
        loss: None,
        expected_accuracy: None,
        realised_accuracy: None,
        labelled: 0,
        created_at: util::now(),
    }
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

/// A classifier's window against the reference profile stored with it.
pub(super) fn classifier(
    store: &Store,
    datasets: &DatasetStore,
    m: &ModelRecord,
    window: &DriftWindow,
    opts: &DriftOptions,
) -> Result<DriftCheck> {
    let ppath = m.path.join(PROFILE_FILE);
    let bytes = std::fs::read(&ppath).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::data(
            Location::file(&ppath),
            format!("{} has no reference profile (it was not trained by a classifier job)", m.reference()),
        ),
        _ => Error::io(&ppath, e),
    })?;
    let profile: Profile =
        serde_json::from_slice(&bytes).map_err(|e| Error::data(Location::file(&ppath), e.to_string()))?;
    let mut out = check(m, window, DriftVerdict::InsufficientData);
    let report = match window {
        DriftWindow::Predictions(n) => {
            if *n == 0 {
                return Err(Error::config("window", "the last 0 predictions are no window: give at least 1"));
            }
            let filter = PredictionFilter { labelled: None, limit: Some(*n) };
            let preds = store.catalog.read(|c| sql::predictions(c, &m.id, &filter))?;
            let mut rows: Vec<Map<String, Value>> = Vec::with_capacity(preds.len());
            for p in &preds {
                match &p.features {
                    Some(f) => rows.push(f.clone()),
                    None => {
                        return Err(Error::config(
                            "window",
                            format!(
                                "prediction {} of {} was logged as a features hash only (log_features = false): \
                                 a drift check on predictions needs their features; check a dataset instead",
                                p.id,
                                m.reference()
                            ),
                        ))
                    }
                }
            }
            let confidences: Vec<f64> = preds.iter().map(|p| p.confidence).collect();
            out.expected_accuracy = mean(&confidences);
            let labelled: Vec<bool> = preds.iter().filter_map(|p| p.correct).collect();
            out.labelled = labelled.len() as u64;
            out.realised_accuracy =
                (!labelled.is_empty()).then(|| labelled.iter().filter(|c| **c).count() as f64 / labelled.len() as f64);
            profile.compare(&rows, opts)?
        }
        DriftWindow::Dataset(id) => {
            let ds = datasets.get(id.clone())?;
            if ds.format != DatasetFormat::Tabular {
                return Err(Error::config(
                    "window",
                    format!("{} is a {} dataset; a classifier's drift window is tabular", ds.name, ds.format),
                ));
            }
            let (rows, _) = split_records(read_records(&ds.path)?, &Location::file(&ds.path))?;
            let report = profile.compare(&rows, opts).map_err(|e| on_file(e, &ds))?;
            if !rows.is_empty() {
                let model = Classifier::load(&m.path)?;
                let p = model.predict_proba(&rows).map_err(|e| on_file(e, &ds))?;
                let conf: Vec<f64> = p.rows.iter().map(|r| r[argmax(r)]).collect();
                out.expected_accuracy = mean(&conf);
            }
            report
        }
    };
    out.verdict = report.verdict;
    out.report = Some(report);
    Ok(out)
}

/// A language model: KS of the window dataset's per-sample losses against the
/// reference dataset's (its lineage's eval dataset, else its training dataset).
pub(super) fn language_model(
    registry: &ModelRegistry,
    datasets: &DatasetStore,
    m: &ModelRecord,
    window: &DriftWindow,
    opts: &DriftOptions,
) -> Result<DriftCheck> {
    let DriftWindow::Dataset(id) = window else {
        return Err(Error::config(
            "window",
            format!("{} is a language model: its drift window is a dataset, not logged predictions", m.reference()),
        ));
    };
    let reference = m.lineage.eval_dataset.clone().or_else(|| m.lineage.dataset.clone()).ok_or_else(|| {
        Error::config(
            "model",
            format!("{} has no training or eval dataset in its lineage to compare losses with", m.reference()),
        )
    })?;
    let rds = datasets.get(reference)?;
    let wds = datasets.get(id.clone())?;
    let cap = SMALL_REFERENCE_ROWS as usize;
    let losses =
        |ds| -> Result<Vec<f64>> { Ok(lm_scores(registry, m, ds, cap)?.into_iter().map(|(l, _)| l).collect()) };
    let r = losses(&rds)?;
    let w = losses(&wds)?;
    let ks = ks_2samp(&r, &w)?;
    let enough = r.len() as u64 >= opts.min_rows && w.len() as u64 >= opts.min_rows;
    let verdict = match (enough, ks.p_value < opts.p_value) {
        (false, _) => DriftVerdict::InsufficientData,
        (true, true) => DriftVerdict::Drift,
        (true, false) => DriftVerdict::NoDrift,
    };
    let mut out = check(m, window, verdict);
    out.loss = Some(LossDrift {
        reference_dataset: rds.id,
        statistic: ks.statistic,
        p_value: ks.p_value,
        reference_samples: r.len() as u64,
        window_samples: w.len() as u64,
        reference_mean_loss: mean(&r).unwrap_or(f64::NAN),
        window_mean_loss: mean(&w).unwrap_or(f64::NAN),
    });
    Ok(out)
}

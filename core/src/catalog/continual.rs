//! SQL for continual learning: the `predictions`, `evaluations` and `drift_checks`
//! tables (migration 0006).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::{Map, Value};

use super::{from_json, json_col, to_json};
use crate::error::{Error, Result};
use crate::types::{
    DriftCheck, EvaluationRecord, ModelId, PredictionFilter, PredictionId, PredictionRecord, RealisedAccuracy,
};

const PRED_COLS: &str =
    "id, model_id, features, features_sha256, label, confidence, latency_ms, actual, correct, labelled_at, created_at";

fn row_to_prediction(r: &Row<'_>) -> rusqlite::Result<PredictionRecord> {
    let features: Option<String> = r.get("features")?;
    let actual: Option<String> = r.get("actual")?;
    let correct: Option<i64> = r.get("correct")?;
    Ok(PredictionRecord {
        id: r.get("id")?,
        model_id: r.get("model_id")?,
        features: features.map(|f| from_json::<Map<String, Value>>(&f)).transpose()?,
        features_sha256: r.get("features_sha256")?,
        label: json_col(r, "label")?,
        confidence: r.get("confidence")?,
        latency_ms: r.get("latency_ms")?,
        actual: actual.map(|a| from_json::<Value>(&a)).transpose()?,
        correct: correct.map(|c| c != 0),
        labelled_at: r.get("labelled_at")?,
        created_at: r.get("created_at")?,
    })
}

/// Inserts `rows` (the caller's transaction).
pub(crate) fn insert_predictions(conn: &Connection, rows: &[PredictionRecord]) -> Result<()> {
    let mut st = conn.prepare_cached(&format!(
        "INSERT INTO predictions ({PRED_COLS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, NULL, NULL, NULL, ?8)"
    ))?;
    for p in rows {
        let features = p.features.as_ref().map(to_json).transpose()?;
        st.execute(params![
            p.id,
            p.model_id,
            features,
            p.features_sha256,
            to_json(&p.label)?,
            p.confidence,
            p.latency_ms,
            p.created_at
        ])?;
    }
    Ok(())
}

/// Deletes the model's predictions beyond the newest `max_rows` and those created
/// before `cutoff` (RFC 3339; both optional). Both use an index of the model's rows.
pub(crate) fn apply_retention(
    conn: &Connection,
    model_id: &ModelId,
    max_rows: Option<u64>,
    cutoff: Option<&str>,
) -> Result<()> {
    if let Some(n) = max_rows {
        let n = i64::try_from(n).unwrap_or(i64::MAX);
        conn.prepare_cached(
            "DELETE FROM predictions WHERE model_id = ?1 AND rowid <= (SELECT rowid FROM predictions \
             WHERE model_id = ?1 ORDER BY rowid DESC LIMIT 1 OFFSET ?2)",
        )?
        .execute(params![model_id, n])?;
    }
    if let Some(c) = cutoff {
        conn.prepare_cached("DELETE FROM predictions WHERE model_id = ?1 AND created_at < ?2")?
            .execute(params![model_id, c])?;
    }
    Ok(())
}

pub(crate) fn prediction(conn: &Connection, id: &PredictionId) -> Result<PredictionRecord> {
    conn.query_row(&format!("SELECT {PRED_COLS} FROM predictions WHERE id = ?1"), [id], row_to_prediction)
        .optional()?
        .ok_or_else(|| Error::not_found("prediction", id.0.clone()))
}

/// Records the true class of a prediction (overwriting an earlier label).
pub(crate) fn set_label(conn: &Connection, id: &PredictionId, actual: &Value, correct: bool, now: &str) -> Result<()> {
    conn.execute(
        "UPDATE predictions SET actual = ?2, correct = ?3, labelled_at = ?4 WHERE id = ?1",
        params![id, to_json(actual)?, i64::from(correct), now],
    )?;
    Ok(())
}

/// The model's predictions, newest first.
pub(crate) fn predictions(
    conn: &Connection,
    model_id: &ModelId,
    f: &PredictionFilter,
) -> Result<Vec<PredictionRecord>> {
    let limit = f.limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let labelled = f.labelled.map(i64::from);
    let mut st = conn.prepare(&format!(
        "SELECT {PRED_COLS} FROM predictions WHERE model_id = ?1 \
         AND (?2 IS NULL OR (actual IS NOT NULL) = ?2) ORDER BY rowid DESC LIMIT ?3"
    ))?;
    let rows = st.query_map(params![model_id, labelled, limit], row_to_prediction)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Labelled predictions of the model (made since `since`; the last `last` of them).
pub(crate) fn realised_accuracy(
    conn: &Connection,
    model_id: &ModelId,
    since: Option<&str>,
    last: Option<u64>,
) -> Result<RealisedAccuracy> {
    let limit = last.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX));
    let (labelled, correct): (i64, Option<i64>) = conn.query_row(
        "SELECT COUNT(*), SUM(correct) FROM (SELECT correct FROM predictions WHERE model_id = ?1 \
         AND correct IS NOT NULL AND (?2 IS NULL OR created_at >= ?2) ORDER BY rowid DESC LIMIT ?3)",
        params![model_id, since, limit],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (labelled, correct) = (labelled as u64, correct.unwrap_or(0) as u64);
    Ok(RealisedAccuracy {
        model_id: model_id.clone(),
        labelled,
        correct,
        accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
    })
}

pub(crate) fn insert_evaluation(conn: &Connection, e: &EvaluationRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO evaluations (id, model_id, model, dataset_id, metrics, rows, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![e.id, e.model_id, e.model, e.dataset_id, to_json(&e.metrics)?, e.rows, e.created_at],
    )?;
    Ok(())
}

/// The model's evaluations, newest first.
pub(crate) fn evaluations(conn: &Connection, model_id: &ModelId) -> Result<Vec<EvaluationRecord>> {
    let mut st = conn.prepare(
        "SELECT id, model_id, model, dataset_id, metrics, rows, created_at FROM evaluations \
         WHERE model_id = ?1 ORDER BY created_at DESC, rowid DESC",
    )?;
    let rows = st.query_map([model_id], |r| {
        Ok(EvaluationRecord {
            id: r.get("id")?,
            model_id: r.get("model_id")?,
            model: r.get("model")?,
            dataset_id: r.get("dataset_id")?,
            metrics: json_col(r, "metrics")?,
            rows: r.get("rows")?,
            created_at: r.get("created_at")?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn insert_drift_check(conn: &Connection, d: &DriftCheck) -> Result<()> {
    conn.execute(
        "INSERT INTO drift_checks (id, model_id, model, window_desc, verdict, check_json, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![d.id, d.model_id, d.model, d.window, d.verdict, to_json(d)?, d.created_at],
    )?;
    Ok(())
}

/// The model's drift checks, newest first.
pub(crate) fn drift_checks(conn: &Connection, model_id: &ModelId) -> Result<Vec<DriftCheck>> {
    let mut st =
        conn.prepare("SELECT check_json FROM drift_checks WHERE model_id = ?1 ORDER BY created_at DESC, rowid DESC")?;
    let rows = st.query_map([model_id], |r| json_col(r, "check_json"))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::catalog::Catalog;

    fn row(id: &str, model: &str, at: &str) -> PredictionRecord {
        PredictionRecord {
            id: PredictionId(id.into()),
            model_id: ModelId(model.into()),
            features: None,
            features_sha256: "0".repeat(64),
            label: Value::from("a"),
            confidence: 0.9,
            latency_ms: 0.1,
            actual: None,
            correct: None,
            labelled_at: None,
            created_at: at.into(),
        }
    }

    #[test]
    fn retention_by_count_and_age_touches_one_model() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::open(&dir.path().join("a.db")).unwrap();
        let rows = [
            row("p1", "m", "2026-01-01T00:00:00.000Z"),
            row("p2", "m", "2026-01-02T00:00:00.000Z"),
            row("p3", "m", "2026-01-03T00:00:00.000Z"),
            row("p4", "m", "2026-01-04T00:00:00.000Z"),
            row("q1", "other", "2026-01-01T00:00:00.000Z"),
        ];
        c.write(|tx| insert_predictions(tx, &rows)).unwrap();
        let m = ModelId("m".into());
        let ids = |c: &Catalog, model: &str| -> Vec<String> {
            c.read(|conn| predictions(conn, &ModelId(model.into()), &PredictionFilter::default()))
                .unwrap()
                .into_iter()
                .map(|p| p.id.0)
                .collect()
        };
        c.write(|tx| apply_retention(tx, &m, Some(3), None)).unwrap();
        assert_eq!(ids(&c, "m"), ["p4", "p3", "p2"]);
        c.write(|tx| apply_retention(tx, &m, None, Some("2026-01-03T00:00:00.000Z"))).unwrap();
        assert_eq!(ids(&c, "m"), ["p4", "p3"]);
        c.write(|tx| apply_retention(tx, &m, Some(10), None)).unwrap();
        assert_eq!(ids(&c, "m"), ["p4", "p3"]);
        assert_eq!(ids(&c, "other"), ["q1"]);
        let e = c.read(|conn| prediction(conn, &PredictionId("p1".into()))).unwrap_err();
        assert!(e.to_string().contains("p1"), "{e}");
    }
}

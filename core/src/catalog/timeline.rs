//! SQL of [`crate::Continual::timeline`]: a model name's labelled predictions (rolling
//! accuracy as a window function), drift checks, evaluations, alias history and
//! monitor decisions, each read from its rows at the call.
//!
//! The versions of a name are the models of that name plus those its alias history
//! remembers (a deleted version's rows stay on the timeline when the history names it).
//! `since` / `until` are in the catalog's time form (UTC, milliseconds), so they compare
//! with the stored times as text.

use rusqlite::{params, Connection, OptionalExtension};

use super::json_col;
use crate::error::{Error, Result};
use crate::types::{AccuracyPoint, DriftPoint, EvaluationPoint, TimelineEvent, TimelineEventKind, VersionAccuracy};

/// `versions(id, version)`: every model id the name has had; `?1` is the name.
const VERSIONS: &str = "versions(id, version) AS (
    SELECT id, MAX(version) FROM (
        SELECT id, version FROM models WHERE name = ?1
        UNION ALL SELECT model_id, version FROM alias_history
            WHERE name = ?1 AND model_id IS NOT NULL AND version IS NOT NULL
        UNION ALL SELECT previous_id, previous_version FROM alias_history
            WHERE name = ?1 AND previous_id IS NOT NULL AND previous_version IS NOT NULL)
    GROUP BY id)";

/// True when the name has (or had, per its alias history) a model.
pub(crate) fn name_known(conn: &Connection, name: &str) -> Result<bool> {
    Ok(conn.query_row(&format!("WITH {VERSIONS} SELECT EXISTS (SELECT 1 FROM versions)"), [name], |r| r.get(0))?)
}

/// The rolling accuracy after each labelled prediction of the name in the range
/// (`window` rows, the window reaching back before `since`), thinned to at most
/// `max_points` evenly spaced points (first and last kept); and how many there were.
pub(crate) fn accuracy(
    conn: &Connection,
    name: &str,
    window: u64,
    since: Option<&str>,
    until: Option<&str>,
    max_points: u64,
) -> Result<(Vec<AccuracyPoint>, u64)> {
    // A frame bound must be a constant: `window` is a checked integer.
    let preceding = window.saturating_sub(1);
    let max = i64::try_from(max_points).unwrap_or(i64::MAX).max(2);
    let sql = format!(
        "WITH {VERSIONS},
         labelled AS (
             SELECT p.id, p.model_id, v.version, p.correct, p.created_at,
                    AVG(p.correct) OVER w AS accuracy, COUNT(*) OVER w AS n,
                    ROW_NUMBER() OVER (ORDER BY p.created_at, p.rowid) AS idx
             FROM predictions p JOIN versions v ON v.id = p.model_id
             WHERE p.correct IS NOT NULL
             WINDOW w AS (ORDER BY p.created_at, p.rowid ROWS BETWEEN {preceding} PRECEDING AND CURRENT ROW)),
         shown AS (
             SELECT *, ROW_NUMBER() OVER (ORDER BY idx) AS k, COUNT(*) OVER () AS total FROM labelled
             WHERE (?2 IS NULL OR created_at >= ?2) AND (?3 IS NULL OR created_at <= ?3))
         SELECT idx, created_at, id, model_id, version, correct, accuracy, n, total FROM shown
         WHERE k = total OR (k - 1) % MAX(1, (total - 1 + ?4 - 2) / (?4 - 1)) = 0
         ORDER BY idx"
    );
    let mut st = conn.prepare(&sql)?;
    let mut total = 0u64;
    let rows = st.query_map(params![name, since, until, max], |r| {
        Ok((
            AccuracyPoint {
                index: r.get(0)?,
                at: r.get(1)?,
                prediction_id: r.get(2)?,
                model_id: r.get(3)?,
                version: r.get(4)?,
                correct: r.get::<_, i64>(5)? != 0,
                accuracy: r.get(6)?,
                window_rows: r.get(7)?,
            },
            r.get::<_, u64>(8)?,
        ))
    })?;
    let mut points = Vec::new();
    for row in rows {
        let (p, t) = row?;
        total = t;
        points.push(p);
    }
    Ok((points, total))
}

/// Per version: predictions made in the range, labelled, correct.
pub(crate) fn versions(
    conn: &Connection,
    name: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<VersionAccuracy>> {
    let mut st = conn.prepare(&format!(
        "WITH {VERSIONS}
         SELECT p.model_id, v.version, COUNT(*), COUNT(p.correct), COALESCE(SUM(p.correct), 0),
                MIN(p.created_at), MAX(p.created_at)
         FROM predictions p JOIN versions v ON v.id = p.model_id
         WHERE (?2 IS NULL OR p.created_at >= ?2) AND (?3 IS NULL OR p.created_at <= ?3)
         GROUP BY p.model_id ORDER BY v.version, p.model_id"
    ))?;
    let rows = st.query_map(params![name, since, until], |r| {
        let (labelled, correct): (u64, u64) = (r.get(3)?, r.get(4)?);
        Ok(VersionAccuracy {
            model_id: r.get(0)?,
            version: r.get(1)?,
            predictions: r.get(2)?,
            labelled,
            correct,
            accuracy: (labelled > 0).then(|| correct as f64 / labelled as f64),
            first_at: r.get(5)?,
            last_at: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The drift checks of the name's versions in the range, oldest first.
pub(crate) fn drift(
    conn: &Connection,
    name: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<DriftPoint>> {
    let mut st = conn.prepare(&format!(
        "WITH {VERSIONS}
         SELECT d.created_at, d.id, d.model_id, v.version, d.window_desc, d.verdict,
                CASE WHEN d.verdict = 'insufficient_data' THEN NULL
                     ELSE COALESCE(json_extract(d.check_json, '$.report.drift_share'),
                                   json_extract(d.check_json, '$.loss.statistic')) END,
                json_extract(d.check_json, '$.report.drifted_columns'),
                json_array_length(d.check_json, '$.report.columns'),
                COALESCE(json_extract(d.check_json, '$.report.window_rows'),
                         json_extract(d.check_json, '$.loss.window_samples')),
                json_extract(d.check_json, '$.expected_accuracy'),
                json_extract(d.check_json, '$.realised_accuracy')
         FROM drift_checks d JOIN versions v ON v.id = d.model_id
         WHERE (?2 IS NULL OR d.created_at >= ?2) AND (?3 IS NULL OR d.created_at <= ?3)
         ORDER BY d.created_at, d.rowid"
    ))?;
    let rows = st.query_map(params![name, since, until], |r| {
        Ok(DriftPoint {
            at: r.get(0)?,
            check_id: r.get(1)?,
            model_id: r.get(2)?,
            version: r.get(3)?,
            window: r.get(4)?,
            verdict: r.get(5)?,
            score: r.get(6)?,
            drifted_columns: r.get(7)?,
            columns: r.get(8)?,
            window_rows: r.get(9)?,
            expected_accuracy: r.get(10)?,
            realised_accuracy: r.get(11)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The evaluations of the name's versions in the range, oldest first.
pub(crate) fn evaluations(
    conn: &Connection,
    name: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<EvaluationPoint>> {
    let mut st = conn.prepare(&format!(
        "WITH {VERSIONS}
         SELECT e.created_at, e.id, e.model_id, v.version, e.dataset_id, e.metrics, e.rows
         FROM evaluations e JOIN versions v ON v.id = e.model_id
         WHERE (?2 IS NULL OR e.created_at >= ?2) AND (?3 IS NULL OR e.created_at <= ?3)
         ORDER BY e.created_at, e.rowid"
    ))?;
    let rows = st.query_map(params![name, since, until], |r| {
        Ok(EvaluationPoint {
            at: r.get(0)?,
            evaluation_id: r.get(1)?,
            model_id: r.get(2)?,
            version: r.get(3)?,
            dataset_id: r.get(4)?,
            metrics: json_col(r, "metrics")?,
            rows: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Promotions and rollbacks of the name's `production` alias, and the retrains its
/// monitors started and the candidates they kept out, in the range, oldest first.
pub(crate) fn events(
    conn: &Connection,
    name: &str,
    since: Option<&str>,
    until: Option<&str>,
) -> Result<Vec<TimelineEvent>> {
    // One ordering across both tables: time, then the order of the step in a retrain
    // (started, kept / promoted, rolled back), then the row's own sequence.
    let mut st = conn.prepare(&format!(
        "WITH {VERSIONS},
         ev(at, rank, seq, kind, model_id, version, previous_version, job_id, monitor, reason) AS (
             SELECT at, CASE action WHEN 'promote' THEN 2 ELSE 3 END, id,
                    CASE action WHEN 'promote' THEN 'promoted' ELSE 'rolled_back' END,
                    model_id, version, previous_version, NULL, NULL, reason
             FROM alias_history WHERE name = ?1 AND alias = 'production' AND action IN ('promote', 'rollback')
             UNION ALL
             SELECT d.at, CASE d.kind WHEN 'retrain_started' THEN 0 ELSE 1 END, d.id, d.kind,
                    CASE d.kind WHEN 'kept' THEN d.candidate_id ELSE d.model_id END,
                    (SELECT version FROM versions WHERE id = CASE d.kind WHEN 'kept' THEN d.candidate_id
                                                                    ELSE d.model_id END),
                    NULL, d.job_id, m.name, d.reason
             FROM monitor_decisions d JOIN monitors m ON m.id = d.monitor_id
             WHERE m.model_name = ?1 AND d.kind IN ('retrain_started', 'kept'))
         SELECT at, kind, model_id, version, previous_version, job_id, monitor, reason FROM ev
         WHERE (?2 IS NULL OR at >= ?2) AND (?3 IS NULL OR at <= ?3)
         ORDER BY at, rank, seq"
    ))?;
    let rows = st.query_map(params![name, since, until], |r| {
        let kind: String = r.get(1)?;
        Ok((
            kind,
            TimelineEvent {
                at: r.get(0)?,
                kind: TimelineEventKind::Promoted,
                model_id: r.get(2)?,
                version: r.get(3)?,
                previous_version: r.get(4)?,
                job_id: r.get(5)?,
                monitor: r.get(6)?,
                reason: r.get(7)?,
            },
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (kind, mut e) = row?;
        e.kind = kind.parse().map_err(|_| Error::Internal(format!("timeline: unknown event kind {kind}")))?;
        out.push(e);
    }
    Ok(out)
}

/// The highest accuracy floor of the name's monitors.
pub(crate) fn accuracy_floor(conn: &Connection, name: &str) -> Result<Option<f64>> {
    Ok(conn
        .query_row(
            "SELECT MAX(json_extract(policy, '$.triggers.accuracy_floor')) FROM monitors WHERE model_name = ?1",
            [name],
            |r| r.get::<_, Option<f64>>(0),
        )
        .optional()?
        .flatten())
}

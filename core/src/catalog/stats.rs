//! SQL of [`crate::Home::stats`]: every figure is a query on the rows, run at the call.
//!
//! `since` is in the catalog's time form (UTC, milliseconds), so it compares with the
//! stored times as text.

use std::collections::BTreeMap;

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::Result;
use crate::types::{
    Activity, AliasStats, DurationStats, JobStats, MethodUsage, ModelCount, ModelGenerations, ModelId, PresetUsage,
    ProductionModel,
};

/// Jobs created since `since`, by stored status (`running` includes runs whose
/// process is gone: the caller asks the engine about those, see [`running_jobs`]).
pub(crate) fn jobs(conn: &Connection, since: Option<&str>) -> Result<JobStats> {
    let mut st = conn.prepare(
        "SELECT status, COUNT(*) FROM jobs WHERE (?1 IS NULL OR created_at >= ?1) GROUP BY status ORDER BY status",
    )?;
    let rows = st.query_map([since], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
    let mut out = JobStats::default();
    for row in rows {
        let (status, n) = row?;
        out.total += n;
        match status.as_str() {
            "pending" => out.pending += n,
            "running" => out.running += n,
            "completed" => out.completed += n,
            "failed" => out.failed += n,
            "cancelled" => out.cancelled += n,
            "interrupted" => out.interrupted += n,
            // A status of a newer build: in the total only.
            _ => {}
        }
    }
    out.duration = durations(conn, since)?;
    Ok(out)
}

/// Ids of the jobs (created since `since`) stored as `running`.
pub(crate) fn running_jobs(conn: &Connection, since: Option<&str>) -> Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT id FROM jobs WHERE status = 'running' AND (?1 IS NULL OR created_at >= ?1) ORDER BY created_at, id",
    )?;
    let rows = st.query_map([since], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

/// Durations of completed jobs finished since `since` (seconds, to the millisecond).
fn durations(conn: &Connection, since: Option<&str>) -> Result<DurationStats> {
    Ok(conn.query_row(
        "WITH d AS (
             SELECT ROUND(unixepoch(finished_at, 'subsec') - unixepoch(started_at, 'subsec'), 3) AS s FROM jobs
             WHERE status = 'completed' AND started_at IS NOT NULL AND finished_at IS NOT NULL
               AND (?1 IS NULL OR finished_at >= ?1)),
         r AS (SELECT s, ROW_NUMBER() OVER (ORDER BY s) AS rn, COUNT(*) OVER () AS n FROM d)
         SELECT (SELECT COUNT(*) FROM d), (SELECT AVG(s) FROM d), (SELECT MIN(s) FROM d), (SELECT MAX(s) FROM d),
                (SELECT s FROM r WHERE rn = MAX(1, (50 * n + 99) / 100)),
                (SELECT s FROM r WHERE rn = MAX(1, (95 * n + 99) / 100))",
        [since],
        |r| {
            Ok(DurationStats {
                count: r.get(0)?,
                mean_s: r.get(1)?,
                min_s: r.get(2)?,
                max_s: r.get(3)?,
                p50_s: r.get(4)?,
                p95_s: r.get(5)?,
            })
        },
    )?)
}

/// The method of a job's spec (`"full"` or `{"lora": {...}}`).
const METHOD: &str = "CASE json_type(j.spec, '$.method') WHEN 'text' THEN json_extract(j.spec, '$.method')
    ELSE (SELECT key FROM json_each(j.spec, '$.method') LIMIT 1) END";

/// `name@version` of model `m` (NULL when it is gone).
const MODEL_REF: &str = "m.name || '@' || m.version";

/// The latest `limit` events, newest first (ties: by kind order, then insertion).
pub(crate) fn recent(conn: &Connection, since: Option<&str>, limit: usize) -> Result<Vec<Activity>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT kind, id, name, at, detail FROM (
             SELECT 'dataset_created' AS kind, id, name, created_at AS at, format AS detail, 1 AS prio, rowid AS seq
             FROM datasets
           UNION ALL
             SELECT 'model_registered', m.id, {MODEL_REF}, m.created_at, m.kind, 2, m.rowid FROM models m
           UNION ALL
             SELECT 'job_created', j.id, COALESCE(b.name || '@' || b.version, json_extract(j.spec, '$.base')),
                    j.created_at, {METHOD}, 3, j.rowid
             FROM jobs j LEFT JOIN models b ON b.id = j.base_model_id
           UNION ALL
             SELECT 'generation', g.id, COALESCE({MODEL_REF}, g.model_id), g.created_at, g.kind, 4, g.rowid
             FROM generations g LEFT JOIN models m ON m.id = g.model_id
           UNION ALL
             SELECT 'alias_changed', COALESCE(h.model_id, h.previous_id), h.name || '@' || h.alias, h.at, h.action, 5,
                    h.id
             FROM alias_history h
           UNION ALL
             SELECT 'job_finished', j.id, COALESCE({MODEL_REF}, json_extract(j.spec, '$.base')), j.finished_at,
                    j.status, 6, j.rowid
             FROM jobs j LEFT JOIN models m ON m.id = j.output_model_id WHERE j.finished_at IS NOT NULL
         ) WHERE (?1 IS NULL OR at >= ?1)
         ORDER BY at DESC, prio DESC, seq DESC LIMIT ?2"
    );
    let mut st = conn.prepare(&sql)?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![since, limit], |r| {
        Ok(Activity {
            kind: r.get::<_, String>(0)?.parse().map_err(|e: crate::error::Error| {
                rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
            })?,
            id: r.get(1)?,
            name: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
            at: r.get(3)?,
            detail: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Presets by use: models created from each (all time) and jobs created since `since`
/// whose base descends from it (through `parent_id`, at any depth).
pub(crate) fn presets(conn: &Connection, since: Option<&str>) -> Result<Vec<PresetUsage>> {
    let mut st = conn.prepare(
        "WITH RECURSIVE up(job_id, model_id, depth) AS (
             SELECT id, base_model_id, 0 FROM jobs
             WHERE base_model_id IS NOT NULL AND (?1 IS NULL OR created_at >= ?1)
           UNION ALL
             SELECT up.job_id, m.parent_id, up.depth + 1 FROM up JOIN models m ON m.id = up.model_id
             WHERE m.parent_id IS NOT NULL AND up.depth < 64),
         job_presets AS (
             SELECT json_extract(m.lineage, '$.preset') AS preset, COUNT(DISTINCT up.job_id) AS jobs
             FROM up JOIN models m ON m.id = up.model_id
             WHERE json_extract(m.lineage, '$.preset') IS NOT NULL GROUP BY preset),
         model_presets AS (
             SELECT json_extract(lineage, '$.preset') AS preset, COUNT(*) AS models FROM models
             WHERE json_extract(lineage, '$.preset') IS NOT NULL GROUP BY preset)
         SELECT p.preset, COALESCE(mp.models, 0) AS models, COALESCE(jp.jobs, 0) AS jobs
         FROM (SELECT preset FROM model_presets UNION SELECT preset FROM job_presets) p
         LEFT JOIN model_presets mp ON mp.preset = p.preset LEFT JOIN job_presets jp ON jp.preset = p.preset
         ORDER BY jobs DESC, models DESC, p.preset",
    )?;
    let rows = st.query_map([since], |r| Ok(PresetUsage { preset: r.get(0)?, models: r.get(1)?, jobs: r.get(2)? }))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Training methods of the jobs created since `since`.
pub(crate) fn methods(conn: &Connection, since: Option<&str>) -> Result<Vec<MethodUsage>> {
    let mut st = conn.prepare(&format!(
        "SELECT {METHOD} AS method, COUNT(*) AS jobs, SUM(j.status = 'completed') AS completed FROM jobs j
         WHERE (?1 IS NULL OR j.created_at >= ?1) GROUP BY method ORDER BY jobs DESC, method"
    ))?;
    let rows = st.query_map([since], |r| {
        Ok(MethodUsage {
            method: r.get::<_, Option<String>>(0)?.unwrap_or_default(),
            jobs: r.get(1)?,
            completed: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Generation calls per model version since `since`. Texts: one per `generate` /
/// `stream` call, a batch's prompts; images: a txt2img call's prompts x `num_images`.
pub(crate) fn generations(conn: &Connection, since: Option<&str>) -> Result<Vec<ModelGenerations>> {
    let mut st = conn.prepare(
        "SELECT g.model_id, m.name, m.version, COUNT(*) AS calls,
                COALESCE(SUM(CASE g.kind WHEN 'generate' THEN 1 WHEN 'stream' THEN 1
                    WHEN 'batch' THEN COALESCE(json_extract(g.params, '$.prompts'), 1) ELSE 0 END), 0) AS texts,
                COALESCE(SUM(CASE g.kind WHEN 'txt2img' THEN COALESCE(json_array_length(g.params, '$.prompts'), 1)
                    * COALESCE(json_extract(g.params, '$.num_images'), 1) ELSE 0 END), 0) AS images,
                SUM(g.kind = 'score') AS scores, COALESCE(SUM(g.generated_tokens), 0) AS tokens,
                MAX(g.created_at) AS last_at
         FROM generations g LEFT JOIN models m ON m.id = g.model_id
         WHERE (?1 IS NULL OR g.created_at >= ?1)
         GROUP BY g.model_id ORDER BY texts + images DESC, calls DESC, m.name, m.version, g.model_id",
    )?;
    let rows = st.query_map([since], |r| {
        Ok(ModelGenerations {
            model_id: r.get(0)?,
            name: r.get(1)?,
            version: r.get(2)?,
            calls: r.get(3)?,
            texts: r.get(4)?,
            images: r.get(5)?,
            scores: r.get(6)?,
            generated_tokens: r.get(7)?,
            last_at: r.get(8)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Rows per value of `column` in `table` (the home's contents now).
fn counts_by(conn: &Connection, table: &str, column: &str) -> Result<BTreeMap<String, u64>> {
    let mut st = conn.prepare(&format!("SELECT {column}, COUNT(*) FROM {table} GROUP BY {column}"))?;
    let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()?)
}

pub(crate) fn models_by_kind(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    counts_by(conn, "models", "kind")
}

pub(crate) fn datasets_by_format(conn: &Connection) -> Result<BTreeMap<String, u64>> {
    counts_by(conn, "datasets", "format")
}

/// Promotions and rollbacks (each counted once, by its `production` row) and every
/// alias change since `since`.
pub(crate) fn aliases(conn: &Connection, since: Option<&str>) -> Result<AliasStats> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(action = 'promote' AND alias = 'production' AND model_id IS NOT NULL), 0),
                COALESCE(SUM(action = 'rollback' AND alias = 'production' AND model_id IS NOT NULL), 0),
                COUNT(*)
         FROM alias_history WHERE (?1 IS NULL OR at >= ?1)",
        [since],
        |r| Ok(AliasStats { promotions: r.get(0)?, rollbacks: r.get(1)?, changes: r.get(2)? }),
    )?)
}

/// Every model name's `production` model and when the alias last moved to it.
pub(crate) fn production(conn: &Connection) -> Result<Vec<ProductionModel>> {
    let mut st = conn.prepare(
        "SELECT a.name, a.model_id, m.version,
                (SELECT MAX(h.at) FROM alias_history h WHERE h.name = a.name AND h.alias = a.alias
                    AND h.model_id = a.model_id AND (h.previous_id IS NULL OR h.previous_id <> a.model_id)) AS since
         FROM aliases a JOIN models m ON m.id = a.model_id WHERE a.alias = 'production' ORDER BY a.name",
    )?;
    let rows = st.query_map([], |r| {
        Ok(ProductionModel {
            name: r.get(0)?,
            model_id: r.get::<_, ModelId>(1)?,
            version: r.get(2)?,
            since: r.get(3)?,
            latest_evaluation: None,
            latest_drift: None,
        })
    })?;
    let mut out = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    for p in &mut out {
        p.latest_evaluation = latest_evaluation(conn, &p.model_id)?;
        p.latest_drift = conn
            .query_row(
                "SELECT check_json FROM drift_checks WHERE model_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
                [&p.model_id],
                |r| r.get::<_, String>(0),
            )
            .optional()?
            .map(|s| super::from_json::<serde_json::Value>(&s))
            .transpose()?;
    }
    Ok(out)
}

/// The newest evaluation of `model_id`, as a JSON object (an `EvaluationRecord`).
fn latest_evaluation(conn: &Connection, model_id: &ModelId) -> Result<Option<serde_json::Value>> {
    let row = conn
        .query_row(
            "SELECT id, model_id, model, dataset_id, metrics, rows, created_at FROM evaluations
             WHERE model_id = ?1 ORDER BY created_at DESC, rowid DESC LIMIT 1",
            [model_id],
            |r| {
                Ok(serde_json::json!({
                    "id": r.get::<_, String>("id")?,
                    "model_id": r.get::<_, String>("model_id")?,
                    "model": r.get::<_, String>("model")?,
                    "dataset_id": r.get::<_, String>("dataset_id")?,
                    "metrics": super::from_json::<serde_json::Value>(&r.get::<_, String>("metrics")?)?,
                    "rows": r.get::<_, u64>("rows")?,
                    "created_at": r.get::<_, String>("created_at")?,
                }))
            },
        )
        .optional()?;
    Ok(row)
}

/// Logged predictions per model version since `since`, most first.
pub(crate) fn predictions(conn: &Connection, since: Option<&str>) -> Result<Vec<ModelCount>> {
    let mut st = conn.prepare(
        "SELECT p.model_id, m.name, m.version, COUNT(*) AS n FROM predictions p LEFT JOIN models m ON m.id = p.model_id
         WHERE (?1 IS NULL OR p.created_at >= ?1)
         GROUP BY p.model_id ORDER BY n DESC, m.name, m.version, p.model_id",
    )?;
    let rows = st.query_map([since], |r| {
        Ok(ModelCount { model_id: r.get(0)?, name: r.get(1)?, version: r.get(2)?, count: r.get(3)? })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Retraining jobs started by monitors since `since` (their `retrain_started` decisions).
pub(crate) fn retrains(conn: &Connection, since: Option<&str>) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM monitor_decisions WHERE kind = 'retrain_started' AND (?1 IS NULL OR at >= ?1)",
        [since],
        |r| r.get(0),
    )?)
}

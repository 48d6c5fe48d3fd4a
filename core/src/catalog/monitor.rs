//! SQL for monitors: the `monitors` table (policy and state) and the decision trail in
//! `monitor_decisions` (migration 0009); the data fed to language models' monitors in
//! `monitor_feeds` (migration 0010).

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde_json::Value;

use super::{from_json, json_col, opt_json_col, to_json};
use crate::error::{Error, Result};
use crate::types::{DatasetId, DecisionKind, JobId, ModelId, MonitorDecision, MonitorFeed, MonitorRecord, TickReport};

const COLS: &str = "id, name, model_name, policy, consecutive_breaches, last_retrain_at, last_retrain_ms, claim_token,
    claimed_ms, current_job_id, eval_dataset_id, candidate_id, last_tick, created_ms, created_at, updated_at,
    (SELECT COUNT(*) FROM monitor_decisions d WHERE d.monitor_id = monitors.id AND d.kind = 'retrain_started'
        AND substr(d.at, 1, 10) = substr(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), 1, 10)) AS retrains_today";

/// A monitor row and the state only the monitor's own code reads.
#[derive(Debug, Clone)]
pub(crate) struct MonitorRow {
    pub(crate) rec: MonitorRecord,
    pub(crate) last_retrain_ms: Option<i64>,
    pub(crate) created_ms: i64,
}

fn row_to_monitor(r: &Row<'_>) -> rusqlite::Result<MonitorRow> {
    Ok(MonitorRow {
        rec: MonitorRecord {
            id: r.get("id")?,
            name: r.get("name")?,
            model_name: r.get("model_name")?,
            policy: json_col(r, "policy")?,
            consecutive_breaches: r.get("consecutive_breaches")?,
            last_retrain_at: r.get("last_retrain_at")?,
            retrains_today: r.get("retrains_today")?,
            current_job_id: r.get::<_, Option<JobId>>("current_job_id")?,
            candidate_id: r.get::<_, Option<ModelId>>("candidate_id")?,
            eval_dataset_id: r.get::<_, Option<DatasetId>>("eval_dataset_id")?,
            last_tick: opt_json_col::<TickReport>(r, "last_tick")?,
            created_at: r.get("created_at")?,
            updated_at: r.get("updated_at")?,
        },
        last_retrain_ms: r.get("last_retrain_ms")?,
        created_ms: r.get("created_ms")?,
    })
}

pub(crate) fn insert(conn: &Connection, rec: &MonitorRecord, created_ms: i64) -> Result<()> {
    conn.execute(
        "INSERT INTO monitors (id, name, model_name, policy, created_ms, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![rec.id, rec.name, rec.model_name, to_json(&rec.policy)?, created_ms, rec.created_at],
    )?;
    Ok(())
}

pub(crate) fn by_name(conn: &Connection, name: &str) -> Result<Option<MonitorRow>> {
    Ok(conn
        .query_row(&format!("SELECT {COLS} FROM monitors WHERE name = ?1 OR id = ?1"), [name], row_to_monitor)
        .optional()?)
}

pub(crate) fn get(conn: &Connection, name: &str) -> Result<MonitorRow> {
    by_name(conn, name)?.ok_or_else(|| Error::not_found("monitor", name))
}

pub(crate) fn list(conn: &Connection) -> Result<Vec<MonitorRecord>> {
    let mut st = conn.prepare(&format!("SELECT {COLS} FROM monitors ORDER BY name"))?;
    let rows = st.query_map([], row_to_monitor)?;
    Ok(rows.map(|r| r.map(|m| m.rec)).collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn delete(conn: &Connection, id: &str) -> Result<()> {
    conn.execute("DELETE FROM monitors WHERE id = ?1", [id])?;
    Ok(())
}

pub(crate) fn set_policy(conn: &Connection, id: &str, policy: &crate::types::RetrainPolicy, now: &str) -> Result<()> {
    conn.execute("UPDATE monitors SET policy = ?2, updated_at = ?3 WHERE id = ?1", params![id, to_json(policy)?, now])?;
    Ok(())
}

pub(crate) fn set_breaches(conn: &Connection, id: &str, n: u32, now: &str) -> Result<()> {
    conn.execute("UPDATE monitors SET consecutive_breaches = ?2, updated_at = ?3 WHERE id = ?1", params![id, n, now])?;
    Ok(())
}

pub(crate) fn set_last_tick(conn: &Connection, id: &str, tick: &TickReport) -> Result<()> {
    conn.execute(
        "UPDATE monitors SET last_tick = ?2, updated_at = ?3 WHERE id = ?1",
        params![id, to_json(tick)?, tick.at],
    )?;
    Ok(())
}

/// Claims a retrain: only when no job is in flight and no live claim is held.
/// `stale_before_ms`: a claim older than this is taken over (its claimer died before
/// recording a job). True when this call holds the claim.
pub(crate) fn claim(conn: &Connection, id: &str, token: &str, now_ms: i64, stale_before_ms: i64) -> Result<bool> {
    let n = conn.execute(
        "UPDATE monitors SET claim_token = ?2, claimed_ms = ?3
         WHERE id = ?1 AND current_job_id IS NULL AND (claim_token IS NULL OR claimed_ms < ?4)",
        params![id, token, now_ms, stale_before_ms],
    )?;
    Ok(n == 1)
}

/// Gives a claim up (the retrain could not be prepared).
pub(crate) fn release(conn: &Connection, id: &str, token: &str) -> Result<()> {
    conn.execute(
        "UPDATE monitors SET claim_token = NULL, claimed_ms = NULL WHERE id = ?1 AND claim_token = ?2",
        params![id, token],
    )?;
    Ok(())
}

/// Records the claimed retrain's job; false when the claim was lost meanwhile.
pub(crate) fn start_job(
    conn: &Connection,
    id: &str,
    token: &str,
    job: &JobId,
    eval_dataset: &DatasetId,
    now_ms: i64,
    now: &str,
) -> Result<bool> {
    let n = conn.execute(
        "UPDATE monitors SET claim_token = NULL, claimed_ms = NULL, current_job_id = ?3, eval_dataset_id = ?4,
             last_retrain_at = ?5, last_retrain_ms = ?6, consecutive_breaches = 0, updated_at = ?5
         WHERE id = ?1 AND claim_token = ?2 AND current_job_id IS NULL",
        params![id, token, job, eval_dataset, now, now_ms],
    )?;
    Ok(n == 1)
}

/// Ends the job in flight (gated or given up); false when another tick ended it first.
pub(crate) fn finish_job(
    conn: &Connection,
    id: &str,
    job: &JobId,
    candidate: Option<&ModelId>,
    now: &str,
) -> Result<bool> {
    let n = conn.execute(
        "UPDATE monitors SET current_job_id = NULL, eval_dataset_id = NULL,
             candidate_id = COALESCE(?3, candidate_id), updated_at = ?4
         WHERE id = ?1 AND current_job_id = ?2",
        params![id, job, candidate, now],
    )?;
    Ok(n == 1)
}

pub(crate) fn clear_candidate(conn: &Connection, id: &str, now: &str) -> Result<()> {
    conn.execute("UPDATE monitors SET candidate_id = NULL, updated_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(())
}

/// A decision to record.
pub(crate) struct NewDecision<'a> {
    pub(crate) kind: DecisionKind,
    pub(crate) model_id: Option<&'a ModelId>,
    pub(crate) job_id: Option<&'a JobId>,
    pub(crate) candidate_id: Option<&'a ModelId>,
    pub(crate) trigger: Option<&'a str>,
    pub(crate) reason: &'a str,
    pub(crate) details: &'a Value,
}

pub(crate) fn add_decision(conn: &Connection, monitor_id: &str, d: &NewDecision<'_>, at: &str) -> Result<u64> {
    conn.execute(
        "INSERT INTO monitor_decisions (monitor_id, kind, model_id, job_id, candidate_id, trigger_name, reason, details, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![monitor_id, d.kind, d.model_id, d.job_id, d.candidate_id, d.trigger, d.reason, to_json(d.details)?, at],
    )?;
    Ok(conn.last_insert_rowid() as u64)
}

fn row_to_decision(r: &Row<'_>) -> rusqlite::Result<MonitorDecision> {
    Ok(MonitorDecision {
        id: r.get("id")?,
        monitor_id: r.get("monitor_id")?,
        kind: r.get("kind")?,
        model_id: r.get("model_id")?,
        job_id: r.get("job_id")?,
        candidate_id: r.get("candidate_id")?,
        trigger: r.get("trigger_name")?,
        reason: r.get("reason")?,
        details: from_json(&r.get::<_, String>("details")?)?,
        at: r.get("at")?,
    })
}

/// The monitor's decisions, oldest first.
pub(crate) fn decisions(conn: &Connection, monitor_id: &str) -> Result<Vec<MonitorDecision>> {
    let mut st = conn.prepare(
        "SELECT id, monitor_id, kind, model_id, job_id, candidate_id, trigger_name, reason, details, at
         FROM monitor_decisions WHERE monitor_id = ?1 ORDER BY id",
    )?;
    let rows = st.query_map([monitor_id], row_to_decision)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Predictions of `model_id` labelled after `after` (all labelled ones without it).
pub(crate) fn labelled_since(conn: &Connection, model_id: &ModelId, after: Option<&str>) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COUNT(*) FROM predictions WHERE model_id = ?1 AND correct IS NOT NULL
             AND (?2 IS NULL OR labelled_at > ?2)",
        params![model_id, after],
        |r| r.get(0),
    )?)
}

/// Records a dataset fed to a monitor; returns the feed.
pub(crate) fn insert_feed(
    conn: &Connection,
    monitor_id: &str,
    dataset: (&DatasetId, &str, u64),
    fed_ms: i64,
    fed_at: &str,
) -> Result<MonitorFeed> {
    conn.execute(
        "INSERT INTO monitor_feeds (monitor_id, dataset_id, dataset, rows, fed_ms, fed_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![monitor_id, dataset.0, dataset.1, dataset.2, fed_ms, fed_at],
    )?;
    Ok(MonitorFeed {
        id: conn.last_insert_rowid() as u64,
        dataset_id: dataset.0.clone(),
        dataset: dataset.1.to_string(),
        rows: dataset.2,
        fed_at: fed_at.to_string(),
        job_id: None,
    })
}

fn row_to_feed(r: &Row<'_>) -> rusqlite::Result<MonitorFeed> {
    Ok(MonitorFeed {
        id: r.get("id")?,
        dataset_id: r.get("dataset_id")?,
        dataset: r.get("dataset")?,
        rows: r.get("rows")?,
        fed_at: r.get("fed_at")?,
        job_id: r.get("job_id")?,
    })
}

/// The monitor's feeds, oldest first: all of them, or those no retrain holds
/// (`pending`).
pub(crate) fn feeds(conn: &Connection, monitor_id: &str, pending: bool) -> Result<Vec<MonitorFeed>> {
    let mut st = conn.prepare(
        "SELECT id, dataset_id, dataset, rows, fed_at, job_id FROM monitor_feeds
         WHERE monitor_id = ?1 AND (?2 = 0 OR job_id IS NULL) ORDER BY id",
    )?;
    let rows = st.query_map(params![monitor_id, pending], row_to_feed)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// The feeds a retraining job took, oldest first.
pub(crate) fn feeds_of_job(conn: &Connection, monitor_id: &str, job: &JobId) -> Result<Vec<MonitorFeed>> {
    let mut st = conn.prepare(
        "SELECT id, dataset_id, dataset, rows, fed_at, job_id FROM monitor_feeds
         WHERE monitor_id = ?1 AND job_id = ?2 ORDER BY id",
    )?;
    let rows = st.query_map(params![monitor_id, job], row_to_feed)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Rows fed to the monitor after `after_ms` (all of them without it).
pub(crate) fn rows_fed_since(conn: &Connection, monitor_id: &str, after_ms: Option<i64>) -> Result<u64> {
    Ok(conn.query_row(
        "SELECT COALESCE(SUM(rows), 0) FROM monitor_feeds WHERE monitor_id = ?1 AND (?2 IS NULL OR fed_ms > ?2)",
        params![monitor_id, after_ms],
        |r| r.get(0),
    )?)
}

/// Hands the pending feeds `ids` to `job`; the number taken.
pub(crate) fn take_feeds(conn: &Connection, monitor_id: &str, ids: &[u64], job: &JobId) -> Result<usize> {
    let mut st =
        conn.prepare("UPDATE monitor_feeds SET job_id = ?3 WHERE monitor_id = ?1 AND id = ?2 AND job_id IS NULL")?;
    let mut n = 0;
    for id in ids {
        n += st.execute(params![monitor_id, id, job])?;
    }
    Ok(n)
}

/// Gives the feeds `job` took back (its candidate was refused, or it failed).
pub(crate) fn release_feeds(conn: &Connection, monitor_id: &str, job: &JobId) -> Result<()> {
    conn.execute(
        "UPDATE monitor_feeds SET job_id = NULL WHERE monitor_id = ?1 AND job_id = ?2",
        params![monitor_id, job],
    )?;
    Ok(())
}

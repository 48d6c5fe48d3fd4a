//! SQL for the `jobs`, `job_logs` and `job_metrics` tables.

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::{json_col, opt_json_col, to_json};
use crate::error::{Error, Result};
use crate::types::{ErrorInfo, JobFilter, JobLog, JobRecord, JobStatus, MetricPoint};

const COLS: &str = "id, status, base_model_id, dataset_id, eval_dataset_id, output_model_id, spec, created_at, \
    updated_at, progress, epoch, step, total_steps, tokens, loss, eval_loss, lr, tokens_per_sec, sample, \
    heartbeat_at, runner_pid, cancel_requested, error, checkpoint, image, started_at, finished_at";

/// A job that failed before its first step holds nothing worth keeping its inputs for:
/// it does not block deleting its dataset or base (it loses the link instead).
pub(crate) const FAILED_BEFORE_FIRST_STEP: &str = "status = 'failed' AND step = 0 AND checkpoint IS NULL";

fn row_to_record(r: &Row<'_>) -> rusqlite::Result<JobRecord> {
    Ok(JobRecord {
        id: r.get("id")?,
        status: r.get("status")?,
        base_model_id: r.get("base_model_id")?,
        dataset_id: r.get("dataset_id")?,
        eval_dataset_id: r.get("eval_dataset_id")?,
        output_model_id: r.get("output_model_id")?,
        spec: json_col(r, "spec")?,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        progress: r.get("progress")?,
        epoch: r.get("epoch")?,
        step: r.get("step")?,
        total_steps: r.get("total_steps")?,
        tokens: r.get("tokens")?,
        loss: r.get("loss")?,
        eval_loss: r.get("eval_loss")?,
        lr: r.get("lr")?,
        tokens_per_sec: r.get("tokens_per_sec")?,
        sample: r.get("sample")?,
        heartbeat_at: r.get("heartbeat_at")?,
        runner_pid: r.get("runner_pid")?,
        cancel_requested: r.get("cancel_requested")?,
        error: opt_json_col(r, "error")?,
        checkpoint: r.get("checkpoint")?,
        image: r.get("image")?,
        started_at: r.get("started_at")?,
        finished_at: r.get("finished_at")?,
    })
}

pub(crate) fn insert(conn: &Connection, rec: &JobRecord) -> Result<()> {
    conn.execute(
        "INSERT INTO jobs (id, status, base_model_id, dataset_id, eval_dataset_id, spec, created_at, updated_at,
             total_steps)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            rec.id,
            rec.status,
            rec.base_model_id,
            rec.dataset_id,
            rec.eval_dataset_id,
            to_json(&rec.spec)?,
            rec.created_at,
            rec.updated_at,
            rec.total_steps,
        ],
    )?;
    Ok(())
}

pub(crate) fn by_id(conn: &Connection, id: &str) -> Result<Option<JobRecord>> {
    let sql = format!("SELECT {COLS} FROM jobs WHERE id = ?1");
    Ok(conn.query_row(&sql, [id], row_to_record).optional()?)
}

pub(crate) fn get(conn: &Connection, id: &str) -> Result<JobRecord> {
    by_id(conn, id)?.ok_or_else(|| Error::not_found("job", id))
}

pub(crate) fn list(conn: &Connection, f: &JobFilter) -> Result<Vec<JobRecord>> {
    let mut clauses = Vec::new();
    let mut args: Vec<&dyn rusqlite::ToSql> = Vec::new();
    for (col, val) in [
        ("base_model_id = ?", f.base_model.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
        ("dataset_id = ?", f.dataset.as_ref().map(|v| v as &dyn rusqlite::ToSql)),
    ] {
        if let Some(v) = val {
            clauses.push(format!("{col}{}", args.len() + 1));
            args.push(v);
        }
    }
    let where_ = if clauses.is_empty() { String::new() } else { format!("WHERE {}", clauses.join(" AND ")) };
    let sql = format!("SELECT {COLS} FROM jobs {where_} ORDER BY created_at, id");
    let mut st = conn.prepare(&sql)?;
    let rows = st.query_map(args.as_slice(), row_to_record)?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Marks the job running in this process under a new `lease` (clears the cancel flag
/// and the error).
pub(crate) fn claim(conn: &Connection, id: &str, pid: u32, lease: &str, now_ms: i64, now: &str) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET status = 'running', runner_pid = ?2, heartbeat_at = ?3, cancel_requested = 0, error = NULL,
             started_at = COALESCE(started_at, ?4), finished_at = NULL, updated_at = ?4, lease = ?5
         WHERE id = ?1",
        params![id, pid, now_ms, now, lease],
    )?;
    Ok(())
}

/// Fails unless the job is still held under `lease` (another runner may have taken it
/// over after this one was presumed dead). Called inside every write of a runner.
pub(crate) fn check_lease(conn: &Connection, id: &str, lease: &str) -> Result<()> {
    let held: Option<Option<String>> =
        conn.query_row("SELECT lease FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    if held.flatten().as_deref() == Some(lease) {
        return Ok(());
    }
    Err(Error::InUse {
        what: "job",
        id: id.to_string(),
        reason: "another runner took it over (this one was presumed dead); this run stops without writing".into(),
    })
}

/// Whether the job is still `running` under `lease` (its end not recorded yet).
pub(crate) fn running_under(conn: &Connection, id: &str, lease: &str) -> Result<bool> {
    let n: i64 = conn.query_row(
        "SELECT COUNT(*) FROM jobs WHERE id = ?1 AND lease = ?2 AND status = 'running'",
        params![id, lease],
        |r| r.get(0),
    )?;
    Ok(n > 0)
}

/// Live progress of a running job.
pub(crate) struct Progress<'a> {
    pub(crate) progress: f64,
    pub(crate) epoch: u32,
    pub(crate) step: u64,
    pub(crate) total_steps: u64,
    pub(crate) tokens: u64,
    pub(crate) loss: Option<f64>,
    pub(crate) eval_loss: Option<f64>,
    pub(crate) lr: Option<f64>,
    pub(crate) tokens_per_sec: Option<f64>,
    pub(crate) sample: Option<&'a str>,
    pub(crate) checkpoint: Option<&'a str>,
    /// The latest validation image, relative to the home.
    pub(crate) image: Option<&'a str>,
}

pub(crate) fn update_progress(conn: &Connection, id: &str, p: &Progress<'_>, now_ms: i64, now: &str) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET progress = ?2, epoch = ?3, step = ?4, total_steps = ?5, tokens = ?6, loss = ?7,
             eval_loss = COALESCE(?8, eval_loss), lr = COALESCE(?9, lr), tokens_per_sec = COALESCE(?10, tokens_per_sec), sample = COALESCE(?11, sample),
             checkpoint = COALESCE(?12, checkpoint), heartbeat_at = ?13, updated_at = ?14,
             image = COALESCE(?15, image)
         WHERE id = ?1",
        params![
            id,
            p.progress,
            p.epoch,
            p.step,
            p.total_steps,
            p.tokens,
            p.loss,
            p.eval_loss,
            p.lr,
            p.tokens_per_sec,
            p.sample,
            p.checkpoint,
            now_ms,
            now,
            p.image
        ],
    )?;
    Ok(())
}

pub(crate) fn add_metrics(conn: &Connection, id: &str, points: &[MetricPoint]) -> Result<()> {
    let mut st = conn.prepare_cached(
        "INSERT OR REPLACE INTO job_metrics (job_id, kind, step, epoch, loss, lr, tokens_per_sec, at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    for p in points {
        st.execute(params![id, p.kind, p.step, p.epoch, p.loss, p.lr, p.tokens_per_sec, p.at])?;
    }
    Ok(())
}

pub(crate) fn add_logs(conn: &Connection, id: &str, logs: &[JobLog]) -> Result<()> {
    let mut st = conn.prepare_cached("INSERT INTO job_logs (job_id, at, level, message) VALUES (?1, ?2, ?3, ?4)")?;
    for l in logs {
        st.execute(params![id, l.at, l.level, l.message])?;
    }
    Ok(())
}

pub(crate) fn logs(conn: &Connection, id: &str) -> Result<Vec<JobLog>> {
    let mut st = conn.prepare("SELECT at, level, message FROM job_logs WHERE job_id = ?1 ORDER BY id")?;
    let rows =
        st.query_map([id], |r| Ok(JobLog { at: r.get("at")?, level: r.get("level")?, message: r.get("message")? }))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

pub(crate) fn metrics(conn: &Connection, id: &str) -> Result<Vec<MetricPoint>> {
    let mut st = conn.prepare(
        "SELECT kind, step, epoch, loss, lr, tokens_per_sec, at FROM job_metrics WHERE job_id = ?1
         ORDER BY step, kind DESC",
    )?;
    let rows = st.query_map([id], |r| {
        Ok(MetricPoint {
            kind: r.get("kind")?,
            step: r.get("step")?,
            epoch: r.get("epoch")?,
            loss: r.get("loss")?,
            lr: r.get("lr")?,
            tokens_per_sec: r.get("tokens_per_sec")?,
            at: r.get("at")?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Refreshes the heartbeat of a job this runner holds.
pub(crate) fn heartbeat(conn: &Connection, id: &str, lease: &str, now_ms: i64) -> Result<()> {
    conn.execute(
        "UPDATE jobs SET heartbeat_at = ?3 WHERE id = ?1 AND status = 'running' AND lease = ?2",
        params![id, lease, now_ms],
    )?;
    Ok(())
}

pub(crate) fn cancel_requested(conn: &Connection, id: &str) -> Result<bool> {
    let v: Option<bool> =
        conn.query_row("SELECT cancel_requested FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?;
    Ok(v.unwrap_or(false))
}

pub(crate) fn request_cancel(conn: &Connection, id: &str, now: &str) -> Result<()> {
    conn.execute("UPDATE jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1", params![id, now])?;
    Ok(())
}

/// Final state of a run.
pub(crate) fn finish(
    conn: &Connection,
    id: &str,
    status: JobStatus,
    error: Option<&ErrorInfo>,
    output: Option<&str>,
    now: &str,
) -> Result<()> {
    let error = match error {
        Some(e) => Some(to_json(e)?),
        None => None,
    };
    conn.execute(
        "UPDATE jobs SET status = ?2, error = ?3, output_model_id = COALESCE(?4, output_model_id),
             runner_pid = NULL, finished_at = ?5, updated_at = ?5, progress = CASE WHEN ?2 = 'completed' THEN 1.0
             ELSE progress END
         WHERE id = ?1",
        params![id, status, error, output, now],
    )?;
    Ok(())
}

/// Every job id (for sweeping folders no row refers to).
pub(crate) fn all_ids(conn: &Connection) -> Result<Vec<String>> {
    let mut st = conn.prepare("SELECT id FROM jobs")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
}

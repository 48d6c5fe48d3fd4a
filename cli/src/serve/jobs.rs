//! `/api/jobs`: create (from a `TrainSpec` JSON) and run, list, show, progress,
//! metrics, logs, the current sample image, cancel, resume, and live events (SSE).
//!
//! Events are tailed from the catalog (the rows a runner writes every 250 ms), so a
//! job started anywhere (this server, the CLI, Python, Node) streams the same way.
//! Each SSE message is one event as the callbacks get it (`JsonLinesSink`'s JSON):
//! `job_started`, `step`, `eval`, `checkpoint`, `log`, and `job_finished` last, after
//! which the stream ends. A stream replays the job's history first (a page can draw
//! the whole curve from it); its `id` (`<metrics>.<logs>` rows seen) lets a client
//! reconnect with `Last-Event-ID` and get only what it missed.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::time::{Duration, Instant};

use anneal::{ErrorInfo, Event, FinishStatus, JobFilter, JobLog, JobRecord, JobStatus, MetricKind, MetricPoint};
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::Stream;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::{ApiError, ApiResult};
use super::http::{check_param, parse_query, query_options, JsonBody};
use super::state::{blocking, Shared};

/// How often a stream reads the job's row.
const POLL: Duration = Duration::from_millis(250);
/// How often a stream reads the job's metrics and logs even when its row did not change.
const FULL_READ: Duration = Duration::from_secs(2);

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/api/jobs", get(list).post(create))
        .route("/api/jobs/{id}", get(show))
        .route("/api/jobs/{id}/progress", get(progress))
        .route("/api/jobs/{id}/metrics", get(metrics))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/events", get(events))
        .route("/api/jobs/{id}/image", get(image))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/jobs/{id}/resume", post(resume))
}

async fn list(State(state): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Vec<JobRecord>>> {
    let filter: JobFilter = query_options(q.as_deref())?;
    let engine = state.home.training();
    Ok(Json(blocking(move || engine.jobs(&filter)).await?))
}

/// `POST /api/jobs` with a `TrainSpec` as the body: the job is created and run by
/// this server (`?start=false`: created only, pending). 201 with the job; 200 with the
/// existing job when `if_exists: "reuse"` found one.
async fn create(State(state): State<Shared>, RawQuery(q): RawQuery, body: JsonBody) -> ApiResult<Response> {
    let start = match parse_query(q.as_deref().unwrap_or("")).iter().find(|(k, _)| k == "start") {
        None => true,
        Some((_, v)) => match v.as_str() {
            "true" | "1" | "" => true,
            "false" | "0" => false,
            other => return Err(ApiError::config("start", format!("must be true or false, got `{other}`"))),
        },
    };
    let spec: anneal::TrainSpec = anneal::options_from_json(Value::Object(body.object()?))?;
    let engine = state.home.training();
    let rec = blocking(move || engine.create_job(&spec)).await?;
    // With `if_exists: "reuse"` the job may be an existing one: a completed or running
    // job is returned as it is (200); a stopped one is resumed.
    let reused = rec.status != anneal::JobStatus::Pending;
    let rec = if start && rec.status.is_resumable() { run(&state, &rec.id.0).await? } else { rec };
    let code = if reused { StatusCode::OK } else { StatusCode::CREATED };
    Ok((code, Json(rec)).into_response())
}

/// Runs (or resumes) job `id` on a thread of its own, kept for shutdown; returns the
/// job as it is now.
async fn run(state: &Shared, id: &str) -> ApiResult<JobRecord> {
    if *state.shutdown.borrow() {
        return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", "the server is shutting down"));
    }
    let engine = state.home.training();
    let job_id = anneal::JobId(id.to_string());
    let handle = blocking({
        let engine = engine.clone();
        move || engine.spawn(&job_id)
    })
    .await?;
    if let Ok(mut jobs) = state.jobs.lock() {
        jobs.insert(id.to_string(), handle.clone());
    }
    // Events are read from the catalog; the handle's copies are drained here.
    let s = state.clone();
    let key = id.to_string();
    tokio::task::spawn_blocking(move || {
        for _ in handle.events() {}
        let _ = handle.wait();
        if let Ok(mut jobs) = s.jobs.lock() {
            jobs.remove(&key);
        }
    });
    let id = id.to_string();
    blocking(move || engine.job(id.as_str())).await
}

async fn job(state: &Shared, id: &str) -> ApiResult<JobRecord> {
    check_param("job", id)?;
    let engine = state.home.training();
    let id = id.to_string();
    blocking(move || engine.job(id.as_str())).await
}

async fn show(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<JobRecord>> {
    Ok(Json(job(&state, &id).await?))
}

/// The figures a progress bar needs, for clients that poll.
async fn progress(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let j = job(&state, &id).await?;
    Ok(Json(json!({
        "id": j.id, "status": j.status, "progress": j.progress, "epoch": j.epoch, "step": j.step,
        "total_steps": j.total_steps, "tokens": j.tokens, "loss": j.loss, "eval_loss": j.eval_loss, "lr": j.lr,
        "tokens_per_sec": j.tokens_per_sec, "sample": j.sample, "has_image": j.image.is_some(),
        "output_model_id": j.output_model_id, "error": j.error, "updated_at": j.updated_at,
    })))
}

async fn metrics(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Vec<MetricPoint>>> {
    check_param("job", &id)?;
    let engine = state.home.training();
    Ok(Json(blocking(move || engine.metrics(id.as_str())).await?))
}

async fn logs(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Vec<JobLog>>> {
    check_param("job", &id)?;
    let engine = state.home.training();
    Ok(Json(blocking(move || engine.logs(id.as_str())).await?))
}

/// The job's latest validation image (image models), `image/png`.
async fn image(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Response> {
    let j = job(&state, &id).await?;
    let Some(rel) = j.image else {
        return Err(ApiError::not_found(format!("job {} has no image yet", j.id)));
    };
    let root = state.home.root().to_path_buf();
    let bytes = blocking(move || {
        let p = root.join(&rel);
        let real = std::fs::canonicalize(&p).map_err(|e| anneal::Error::io(&p, e))?;
        if !real.starts_with(&root) {
            return Err(anneal::Error::not_found("image", rel));
        }
        std::fs::read(&real).map_err(|e| anneal::Error::io(&real, e))
    })
    .await?;
    Ok(([(header::CONTENT_TYPE, "image/png"), (header::CACHE_CONTROL, "no-store")], bytes).into_response())
}

/// Asks the job to stop (from any process: the runner checks every step, writes a
/// checkpoint and ends `cancelled`, resumable). Returns the job.
async fn cancel(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<JobRecord>> {
    check_param("job", &id)?;
    if let Some(h) = state.jobs.lock().ok().and_then(|j| j.get(&id).cloned()) {
        h.cancel();
    }
    let engine = state.home.training();
    Ok(Json(blocking(move || engine.cancel(id.as_str())).await?))
}

/// Resumes a cancelled, failed or interrupted job from its last checkpoint, here.
async fn resume(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<JobRecord>> {
    let j = job(&state, &id).await?;
    if !j.status.is_resumable() || state.jobs.lock().is_ok_and(|m| m.contains_key(&id)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "in_use",
            format!("job {id} is {}: only pending, cancelled, failed or interrupted jobs run", j.status),
        ));
    }
    Ok(Json(run(&state, &id).await?))
}

/// What a stream has sent so far.
#[derive(Debug, Default, Clone, PartialEq)]
struct Cursor {
    metrics: usize,
    logs: usize,
    started: bool,
    checkpoint: Option<String>,
}

impl Cursor {
    /// `Last-Event-ID`: `<metrics>.<logs>`.
    fn parse(s: &str) -> Option<Cursor> {
        let (m, l) = s.split_once('.')?;
        Some(Cursor { metrics: m.parse().ok()?, logs: l.parse().ok()?, started: true, checkpoint: None })
    }

    fn id(&self) -> String {
        format!("{}.{}", self.metrics, self.logs)
    }
}

/// `GET /api/jobs/{id}/events`: the job's events as Server-Sent Events.
async fn events(
    State(state): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>> {
    job(&state, &id).await?;
    let cursor = headers.get("last-event-id").and_then(|v| v.to_str().ok()).and_then(Cursor::parse).unwrap_or_default();
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(tail(state, id, cursor, tx));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Polls the catalog and sends what is new until the job ends, the client leaves or
/// the server stops.
async fn tail(state: Shared, id: String, mut cursor: Cursor, tx: mpsc::Sender<sse::Event>) {
    let mut stop = state.shutdown.clone();
    let root = state.home.root().to_path_buf();
    // The job row as last read: its metrics and logs are read again when it changed (a
    // runner updates it with its rows), and at least every `FULL_READ` regardless.
    let mut last: Option<(String, JobStatus, Instant)> = None;
    loop {
        let engine = state.home.training();
        let jid = id.clone();
        let seen = last.clone();
        let read = blocking(move || {
            let rec = engine.job(jid.as_str())?;
            if seen
                .is_some_and(|(at, status, t)| at == rec.updated_at && status == rec.status && t.elapsed() < FULL_READ)
            {
                return Ok(None);
            }
            Ok(Some((rec, engine.metrics(jid.as_str())?, engine.logs(jid.as_str())?)))
        });
        let (rec, points, lines) = match read.await {
            Ok(Some(r)) => r,
            Ok(None) => {
                tokio::select! {
                    _ = tokio::time::sleep(POLL) => continue,
                    _ = super::state::stopped(&mut stop) => return,
                    _ = tx.closed() => return,
                }
            }
            Err(e) => {
                let _ = tx.send(sse::Event::default().event("error").data(e.body().to_string())).await;
                return;
            }
        };
        last = Some((rec.updated_at.clone(), rec.status, Instant::now()));
        let (events, finished) = diff(&mut cursor, &rec, &points, &lines, &root);
        for (ev, id) in events {
            let data = serde_json::to_string(&ev).unwrap_or_default();
            if tx.send(sse::Event::default().id(id).data(data)).await.is_err() {
                return;
            }
        }
        if finished || tx.is_closed() {
            return;
        }
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = super::state::stopped(&mut stop) => return,
            _ = tx.closed() => return,
        }
    }
}

/// The events between what `cursor` has seen and the rows now, each with the stream
/// id after it (`<metrics>.<logs>` rows delivered, so a reconnect resumes right after
/// the last event received); whether the job ended.
fn diff(
    cursor: &mut Cursor,
    rec: &JobRecord,
    points: &[MetricPoint],
    lines: &[JobLog],
    root: &std::path::Path,
) -> (Vec<(Event, String)>, bool) {
    let job_id = rec.id.0.clone();
    let mut out = Vec::new();
    let ended =
        matches!(rec.status, JobStatus::Completed | JobStatus::Failed | JobStatus::Cancelled | JobStatus::Interrupted);
    if !cursor.started && (rec.status == JobStatus::Running || (ended && rec.started_at.is_some())) {
        cursor.started = true;
        let ev = Event::JobStarted { job_id: job_id.clone(), total_steps: rec.total_steps, epochs: rec.spec.epochs };
        out.push((ev, cursor.id()));
    }
    // Rows of both kinds, merged by time; `true` marks a metrics row.
    let mut timed: Vec<(String, bool, Event)> = Vec::new();
    let new_points = points.get(cursor.metrics..).unwrap_or(&[]);
    let last_train = new_points.iter().rposition(|p| p.kind == MetricKind::Train);
    for (i, p) in new_points.iter().enumerate() {
        let ev = match p.kind {
            MetricKind::Train => {
                let last = Some(i) == last_train;
                Event::Step {
                    job_id: job_id.clone(),
                    epoch: p.epoch,
                    step: p.step,
                    total_steps: rec.total_steps,
                    loss: p.loss,
                    lr: p.lr.unwrap_or(0.0),
                    tokens_per_sec: p.tokens_per_sec.unwrap_or(0.0),
                    progress: if rec.total_steps > 0 { p.step as f64 / rec.total_steps as f64 } else { 0.0 },
                    sample: if last { rec.sample.clone() } else { None },
                    image: if last { rec.image.as_ref().map(|i| root.join(i).display().to_string()) } else { None },
                }
            }
            _ => Event::Eval {
                job_id: job_id.clone(),
                step: p.step,
                metrics: BTreeMap::from([
                    ("eval_loss".to_string(), p.loss),
                    ("eval_perplexity".to_string(), p.loss.exp()),
                ]),
            },
        };
        timed.push((p.at.clone(), true, ev));
    }
    for l in lines.get(cursor.logs..).unwrap_or(&[]) {
        let ev = Event::Log { job_id: job_id.clone(), level: l.level.clone(), message: l.message.clone() };
        timed.push((l.at.clone(), false, ev));
    }
    timed.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, metric, ev) in timed {
        if metric {
            cursor.metrics += 1;
        } else {
            cursor.logs += 1;
        }
        out.push((ev, cursor.id()));
    }
    if rec.checkpoint.is_some() && rec.checkpoint != cursor.checkpoint {
        cursor.checkpoint = rec.checkpoint.clone();
        let path = rec.checkpoint.clone().unwrap_or_default();
        let step = path.rsplit(|c: char| !c.is_ascii_digit()).next().and_then(|d| d.parse().ok()).unwrap_or(rec.step);
        let ev = Event::Checkpoint { job_id: job_id.clone(), step, path: root.join(&path).display().to_string() };
        out.push((ev, cursor.id()));
    }
    if ended {
        let (status, error) = match rec.status {
            JobStatus::Completed => (FinishStatus::Completed, None),
            JobStatus::Cancelled => (FinishStatus::Cancelled, rec.error.clone()),
            JobStatus::Interrupted => (
                FinishStatus::Failed,
                Some(rec.error.clone().unwrap_or(ErrorInfo {
                    code: "interrupted".into(),
                    message: "the runner stopped without finishing; the job can be resumed".into(),
                })),
            ),
            _ => (FinishStatus::Failed, rec.error.clone()),
        };
        let ev =
            Event::JobFinished { job_id, status, model_id: rec.output_model_id.as_ref().map(|m| m.0.clone()), error };
        out.push((ev, cursor.id()));
    }
    (out, ended)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn point(kind: MetricKind, step: u64, at: &str) -> MetricPoint {
        MetricPoint { kind, step, epoch: 1, loss: 2.0, lr: Some(0.1), tokens_per_sec: Some(9.0), at: at.into() }
    }

    #[test]
    fn each_event_carries_the_cursor_after_it_and_rows_merge_by_time() {
        let spec: anneal::TrainSpec = anneal::options_from_json(json!({"base": "b", "dataset": "d"})).unwrap();
        let rec: JobRecord = serde_json::from_value(json!({
            "id": "job_1", "status": "running", "base_model_id": null, "dataset_id": null, "eval_dataset_id": null,
            "output_model_id": null, "spec": spec, "progress": 0.2, "epoch": 1, "step": 2, "total_steps": 10,
            "tokens": 0, "loss": 2.0, "eval_loss": null, "lr": 0.1, "tokens_per_sec": 9.0, "sample": "abc",
            "heartbeat_at": null, "runner_pid": null, "cancel_requested": false, "error": null, "checkpoint": null,
            "image": null, "created_at": "t0", "updated_at": "t0", "started_at": "t0", "finished_at": null,
        }))
        .unwrap();
        let points = [point(MetricKind::Train, 1, "t1"), point(MetricKind::Train, 2, "t3")];
        let logs = [JobLog { at: "t2".into(), level: "info".into(), message: "hi".into() }];
        let mut c = Cursor::default();
        let (events, ended) = diff(&mut c, &rec, &points, &logs, std::path::Path::new("/h"));
        assert!(!ended);
        let got: Vec<(&str, &str)> = events.iter().map(|(e, id)| (e.type_name(), id.as_str())).collect();
        assert_eq!(got, [("job_started", "0.0"), ("step", "1.0"), ("log", "1.1"), ("step", "2.1")]);
        let Event::Step { sample, progress, .. } = &events[3].0 else { panic!() };
        assert_eq!((sample.as_deref(), *progress), (Some("abc"), 0.2));
        // Nothing new: nothing sent. Reconnecting after the log gets the last step only.
        assert!(diff(&mut c, &rec, &points, &logs, std::path::Path::new("/h")).0.is_empty());
        let mut again = Cursor::parse("1.1").unwrap();
        let (events, _) = diff(&mut again, &rec, &points, &logs, std::path::Path::new("/h"));
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0].0, Event::Step { step: 2, .. }));
        let done = JobRecord { status: JobStatus::Completed, ..rec };
        let (events, ended) = diff(&mut again, &done, &points, &logs, std::path::Path::new("/h"));
        assert!(ended);
        assert_eq!(events.last().unwrap().0.type_name(), "job_finished");
    }
}

//! `/health`, `/metrics`, `/api/stats`, datasets (multipart upload with preview),
//! models (lineage, aliases, usage), generations, predictions and monitoring, tokens.

use std::path::PathBuf;

use anneal::{
    AccuracyOptions, DatasetRecord, GenerationFilter, GenerationRecord, Home, ImportOptions, JobFilter, ModelFilter,
    ModelRecord, PredictionFilter, PredictorOptions, PresetOptions, StatsOptions, TimelineOptions, TokenOptions,
};
use axum::extract::{Multipart, Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use super::error::{ApiError, ApiResult};
use super::http::{check_param, parse_query, query_options, JsonBody};
use super::state::{blocking, Shared};

/// Rows a dataset preview returns at most.
const MAX_PREVIEW: usize = 1000;

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/api/stats", get(stats))
        .route("/api/datasets", get(datasets).post(upload))
        .route("/api/datasets/{id}", get(dataset).delete(delete_dataset))
        .route("/api/datasets/{id}/preview", get(preview))
        .route("/api/datasets/{id}/stats", get(dataset_stats))
        .route("/api/models", get(models).post(create_model))
        .route("/api/models/{model}", get(model).delete(delete_model))
        .route("/api/models/{model}/lineage", get(lineage))
        .route("/api/models/{model}/aliases", get(aliases).post(set_alias))
        .route("/api/models/{model}/aliases/{alias}", delete(remove_alias))
        .route("/api/models/{model}/usage", get(usage))
        .route("/api/models/{model}/predictions", get(predictions))
        .route("/api/models/{model}/predict", post(predict))
        .route("/api/models/{model}/accuracy", get(accuracy))
        .route("/api/models/{model}/evaluations", get(evaluations))
        .route("/api/models/{model}/drift-checks", get(drift_checks))
        .route("/api/models/{model}/timeline", get(timeline))
        .route("/api/predictions/{id}/label", post(label))
        .route("/api/generations", get(generations))
        .route("/api/monitors", get(monitors))
        .route("/api/monitors/{name}", get(monitor))
        .route("/api/tokens", get(tokens).post(create_token))
        .route("/api/tokens/{id}", delete(revoke_token))
}

/// `GET /health` (no token needed): version and the catalog's state.
async fn health(State(state): State<Shared>) -> Response {
    let home = state.home.clone();
    let supported = Home::supported_schema_version();
    let (status, catalog) = match blocking(move || home.schema_version()).await {
        Ok(v) => (StatusCode::OK, json!({"ok": v == supported, "schema_version": v, "supported": supported})),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, json!({"ok": false, "error": e.body()["error"]})),
    };
    let ok = status == StatusCode::OK && catalog["ok"] == true;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "version": env!("CARGO_PKG_VERSION"),
        "catalog": catalog,
        "shutting_down": *state.shutdown.borrow(),
    });
    (status, Json(body)).into_response()
}

/// `GET /metrics`: Prometheus text.
async fn metrics(State(state): State<Shared>) -> ApiResult<Response> {
    let engine = state.home.training();
    let jobs = blocking(move || engine.jobs(&JobFilter::default())).await?;
    let text = state.metrics.render(&jobs);
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response())
}

async fn stats(State(state): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    let opts: StatsOptions = query_options(q.as_deref())?;
    let home = state.home.clone();
    let s = blocking(move || home.stats(&opts)).await?;
    Ok(Json(serde_json::to_value(s).map_err(|e| ApiError::internal(e.to_string()))?))
}

async fn datasets(State(state): State<Shared>) -> ApiResult<Json<Vec<DatasetRecord>>> {
    let store = state.home.datasets();
    Ok(Json(blocking(move || store.list()).await?))
}

async fn dataset(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<DatasetRecord>> {
    check_param("dataset", &id)?;
    let store = state.home.datasets();
    Ok(Json(blocking(move || store.get(id.as_str())).await?))
}

async fn preview(
    State(state): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Vec<Value>>> {
    check_param("dataset", &id)?;
    let n = match parse_query(q.as_deref().unwrap_or("")).into_iter().find(|(k, _)| k == "n") {
        None => 10,
        Some((_, v)) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PREVIEW).contains(n))
            .ok_or_else(|| ApiError::config("n", format!("must be 1 to {MAX_PREVIEW}, got `{v}`")))?,
    };
    let store = state.home.datasets();
    Ok(Json(blocking(move || store.preview(id.as_str(), n)).await?))
}

async fn dataset_stats(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_param("dataset", &id)?;
    let store = state.home.datasets();
    let s = blocking(move || store.stats(id.as_str())).await?;
    Ok(Json(serde_json::to_value(s).map_err(|e| ApiError::internal(e.to_string()))?))
}

fn force(q: Option<&str>) -> ApiResult<bool> {
    match parse_query(q.unwrap_or("")).into_iter().find(|(k, _)| k == "force") {
        None => Ok(false),
        Some((_, v)) => match v.as_str() {
            "true" | "1" | "" => Ok(true),
            "false" | "0" => Ok(false),
            other => Err(ApiError::config("force", format!("must be true or false, got `{other}`"))),
        },
    }
}

async fn delete_dataset(
    State(state): State<Shared>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    check_param("dataset", &id)?;
    let force = force(q.as_deref())?;
    let store = state.home.datasets();
    blocking(move || store.delete(id.as_str(), force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A client's file name reduced to a safe one (`[A-Za-z0-9._-]`, not starting with a
/// dot): the upload keeps its extension (the format is detected from it) and its stem
/// (the dataset's default name), never its directories.
fn safe_file_name(name: Option<&str>) -> String {
    let base = name.and_then(|n| n.rsplit(['/', '\\']).next()).unwrap_or("");
    let clean: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') { c } else { '_' })
        .take(100)
        .collect();
    let clean = clean.trim_start_matches('.').to_string();
    if clean.is_empty() {
        "upload".into()
    } else {
        clean
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the upload is larger than --max-body")
    } else {
        ApiError::config("body", e.body_text())
    }
}

/// `POST /api/datasets`, multipart: `file` (the data, its file name's extension picks
/// the format), optional `name`, optional `options` (ImportOptions as JSON). 201 with
/// `{"dataset": <record>, "preview": <first records>}`. A failed import stores
/// nothing (the upload is staged in a temporary directory removed afterwards).
async fn upload(State(state): State<Shared>, mut form: Multipart) -> ApiResult<Response> {
    let staging = tempfile::Builder::new()
        .prefix("anneal-upload-")
        .tempdir()
        .map_err(|e| ApiError::from(anneal::Error::io(std::env::temp_dir(), e)))?;
    let (mut name, mut options, mut file): (Option<String>, Value, Option<PathBuf>) = (None, Value::Null, None);
    let timeout = |_: tokio::time::error::Elapsed| super::http::body_timeout();
    let wait = state.config.body_timeout;
    while let Some(mut field) =
        tokio::time::timeout(wait, form.next_field()).await.map_err(timeout)?.map_err(multipart_error)?
    {
        match field.name().unwrap_or("") {
            "name" => {
                let text = tokio::time::timeout(wait, field.text()).await.map_err(timeout)?;
                name = Some(text.map_err(multipart_error)?);
            }
            "options" => {
                let text = tokio::time::timeout(wait, field.text()).await.map_err(timeout)?;
                let text = text.map_err(multipart_error)?;
                options = serde_json::from_str(&text)
                    .map_err(|e| ApiError::config("options", format!("not valid JSON: {e}")))?;
            }
            "file" if file.is_none() => {
                let path = staging.path().join(safe_file_name(field.file_name()));
                let io = |e: std::io::Error| ApiError::from(anneal::Error::io(&path, e));
                let mut out = tokio::fs::File::create(&path).await.map_err(io)?;
                while let Some(chunk) =
                    tokio::time::timeout(wait, field.chunk()).await.map_err(timeout)?.map_err(multipart_error)?
                {
                    out.write_all(&chunk).await.map_err(io)?;
                }
                out.flush().await.map_err(io)?;
                file = Some(path);
            }
            "file" => return Err(ApiError::config("file", "one file per upload")),
            other => {
                return Err(ApiError::config(
                    other,
                    "unknown form field (an upload has `file`, and optionally `name` and `options`)",
                ))
            }
        }
    }
    let Some(path) = file else { return Err(ApiError::config("file", "is required (a multipart file field)")) };
    let mut opts: ImportOptions = anneal::options_from_json(options)?;
    if name.is_some() {
        opts.name = name;
    }
    let store = state.home.datasets();
    let (rec, preview) = blocking(move || {
        let rec = store.import_file(&path, &opts)?;
        let preview = store.preview(&rec.id, 5)?;
        drop(staging);
        Ok((rec, preview))
    })
    .await?;
    Ok((StatusCode::CREATED, Json(json!({"dataset": rec, "preview": preview}))).into_response())
}

async fn models(State(state): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Vec<ModelRecord>>> {
    let filter: ModelFilter = query_options(q.as_deref())?;
    let registry = state.home.models();
    Ok(Json(blocking(move || registry.list(&filter)).await?))
}

/// `POST /api/models` `{"preset": "nano", "name": ..., "seed": ...}`: a model with
/// fresh weights from a preset (`anneal::Preset`). 201 with its record.
async fn create_model(State(state): State<Shared>, body: JsonBody) -> ApiResult<Response> {
    let mut body = body.object()?;
    let preset = super::generate::take_str(&mut body, "preset")?;
    let opts: PresetOptions = anneal::options_from_json(Value::Object(body))?;
    let registry = state.home.models();
    let rec = blocking(move || registry.create_preset(&preset, &opts)).await?;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

async fn resolve(state: &Shared, reference: &str) -> ApiResult<ModelRecord> {
    check_param("model", reference)?;
    let registry = state.home.models();
    let r = reference.to_string();
    blocking(move || registry.resolve(r.as_str())).await
}

async fn model(State(state): State<Shared>, Path(m): Path<String>) -> ApiResult<Json<ModelRecord>> {
    Ok(Json(resolve(&state, &m).await?))
}

async fn delete_model(
    State(state): State<Shared>,
    Path(m): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<StatusCode> {
    check_param("model", &m)?;
    let force = force(q.as_deref())?;
    let registry = state.home.models();
    blocking(move || registry.delete(m.as_str(), force)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where a model came from and what came of it: its ancestors (parent first), its
/// children (adapters and fine-tunes of it), and the job and datasets that made it.
async fn lineage(State(state): State<Shared>, Path(m): Path<String>) -> ApiResult<Json<Value>> {
    let rec = resolve(&state, &m).await?;
    let home = state.home.clone();
    let out = blocking(move || {
        let registry = home.models();
        let mut ancestors = Vec::new();
        let mut next = rec.parent_id.clone().or_else(|| rec.lineage.base.clone());
        while let Some(id) = next.take() {
            if ancestors.len() >= 32 {
                break;
            }
            match registry.get(&id) {
                Ok(p) => {
                    next = p.parent_id.clone().or_else(|| p.lineage.base.clone());
                    ancestors.push(p);
                }
                Err(anneal::Error::NotFound { .. }) => break,
                Err(e) => return Err(e),
            }
        }
        let children = registry.list(&ModelFilter { parent: Some(rec.id.clone()), ..Default::default() })?;
        let job = match &rec.lineage.job {
            Some(j) => home.training().job(j).ok(),
            None => None,
        };
        let dataset = rec.lineage.dataset.as_ref().and_then(|d| home.datasets().get(d).ok());
        Ok(json!({"model": rec, "ancestors": ancestors, "children": children, "job": job, "dataset": dataset}))
    })
    .await?;
    Ok(Json(out))
}

async fn aliases(State(state): State<Shared>, Path(m): Path<String>) -> ApiResult<Json<Value>> {
    let rec = resolve(&state, &m).await?;
    let registry = state.home.models();
    let name = rec.name.clone();
    let history = blocking(move || registry.alias_history(&name, None)).await?;
    Ok(Json(json!({"model": rec.reference(), "aliases": rec.aliases, "history": history})))
}

/// `POST /api/models/{model}/aliases` `{"alias": "production"}`: points the alias of
/// the model's name at this version.
async fn set_alias(State(state): State<Shared>, Path(m): Path<String>, body: JsonBody) -> ApiResult<Json<ModelRecord>> {
    check_param("model", &m)?;
    let mut body = body.object()?;
    let alias = super::generate::take_str(&mut body, "alias")?;
    let registry = state.home.models();
    Ok(Json(blocking(move || registry.set_alias(m.as_str(), &alias)).await?))
}

async fn remove_alias(State(state): State<Shared>, Path((m, alias)): Path<(String, String)>) -> ApiResult<StatusCode> {
    let rec = resolve(&state, &m).await?;
    check_param("alias", &alias)?;
    let registry = state.home.models();
    blocking(move || registry.remove_alias(&rec.name, &alias)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn usage(State(state): State<Shared>, Path(m): Path<String>) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let registry = state.home.models();
    let u = blocking(move || registry.usage(m.as_str())).await?;
    Ok(Json(serde_json::to_value(u).map_err(|e| ApiError::internal(e.to_string()))?))
}

async fn generations(State(state): State<Shared>, RawQuery(q): RawQuery) -> ApiResult<Json<Vec<GenerationRecord>>> {
    let filter: GenerationFilter = query_options(q.as_deref())?;
    let registry = state.home.models();
    Ok(Json(blocking(move || registry.generations(&filter)).await?))
}

/// Serialises a core value, for the endpoints that return one as is.
fn to_json<T: serde::Serialize>(v: T) -> ApiResult<Json<Value>> {
    serde_json::to_value(v).map(Json).map_err(|e| ApiError::internal(e.to_string()))
}

async fn predictions(
    State(state): State<Shared>,
    Path(m): Path<String>,
    RawQuery(q): RawQuery,
) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let filter: PredictionFilter = query_options(q.as_deref())?;
    let c = state.home.continual();
    to_json(blocking(move || c.predictions(m.as_str(), &filter)).await?)
}

/// `POST /api/models/{model}/predict` `{"rows": [{column: value, ...}, ...]}`: one
/// logged prediction per row.
async fn predict(State(state): State<Shared>, Path(m): Path<String>, body: JsonBody) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let mut body = body.object()?;
    let rows: Vec<Map<String, Value>> = match body.remove("rows") {
        Some(Value::Array(rows)) => rows
            .into_iter()
            .enumerate()
            .map(|(i, r)| match r {
                Value::Object(o) => Ok(o),
                _ => Err(ApiError::config(&format!("rows[{i}]"), "must be an object of column values")),
            })
            .collect::<ApiResult<_>>()?,
        _ => return Err(ApiError::config("rows", "is required: a list of {column: value} objects")),
    };
    let home = state.home.clone();
    to_json(blocking(move || home.predictor(m.as_str(), &PredictorOptions::default())?.predict_batch(&rows)).await?)
}

/// `POST /api/predictions/{id}/label` `{"label": <y>}`.
async fn label(State(state): State<Shared>, Path(id): Path<String>, body: JsonBody) -> ApiResult<Json<Value>> {
    check_param("prediction", &id)?;
    let mut body = body.object()?;
    let y = body.remove("label").ok_or_else(|| ApiError::config("label", "is required"))?;
    let c = state.home.continual();
    to_json(blocking(move || c.label(&anneal::PredictionId(id), &y)).await?)
}

async fn accuracy(State(state): State<Shared>, Path(m): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let opts: AccuracyOptions = query_options(q.as_deref())?;
    let c = state.home.continual();
    to_json(blocking(move || c.realised_accuracy(m.as_str(), &opts)).await?)
}

async fn evaluations(State(state): State<Shared>, Path(m): Path<String>) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let c = state.home.continual();
    to_json(blocking(move || c.evaluations(m.as_str())).await?)
}

async fn drift_checks(State(state): State<Shared>, Path(m): Path<String>) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let c = state.home.continual();
    to_json(blocking(move || c.drift_checks(m.as_str())).await?)
}

async fn timeline(State(state): State<Shared>, Path(m): Path<String>, RawQuery(q): RawQuery) -> ApiResult<Json<Value>> {
    check_param("model", &m)?;
    let opts: TimelineOptions = query_options(q.as_deref())?;
    let c = state.home.continual();
    to_json(blocking(move || c.timeline(&m, &opts)).await?)
}

async fn monitors(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let mons = state.home.monitors();
    to_json(blocking(move || mons.list()).await?)
}

async fn monitor(State(state): State<Shared>, Path(name): Path<String>) -> ApiResult<Json<Value>> {
    check_param("monitor", &name)?;
    let mons = state.home.monitors();
    let out = blocking(move || {
        let m = mons.get(&name)?;
        Ok(json!({"monitor": m.record()?, "decisions": m.decisions()?, "feeds": m.feeds()?}))
    })
    .await?;
    Ok(Json(out))
}

async fn tokens(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let t = state.home.tokens();
    to_json(blocking(move || t.list()).await?)
}

/// `POST /api/tokens` `{"scope": "read", "name": "..."}` (admin): the token, once.
async fn create_token(State(state): State<Shared>, body: JsonBody) -> ApiResult<Response> {
    let opts: TokenOptions = anneal::options_from_json(Value::Object(body.object()?))?;
    let t = state.home.tokens();
    let new = blocking(move || t.create(&opts)).await?;
    Ok((StatusCode::CREATED, Json(new)).into_response())
}

async fn revoke_token(State(state): State<Shared>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    check_param("token", &id)?;
    let t = state.home.tokens();
    to_json(blocking(move || t.revoke(&id)).await?)
}

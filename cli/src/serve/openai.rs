//! OpenAI-compatible endpoints: `/v1/models`, `/v1/chat/completions`,
//! `/v1/completions`, streaming (SSE `data:` chunks, then `data: [DONE]`) and not.
//!
//! `model` is any model reference: an id, `name`, `name@3`, `name@alias`; an adapter
//! is applied per request on its loaded base. Beyond OpenAI's fields a request may
//! set `top_k`, `min_p`, `repetition_penalty` and `adapter` (the openai clients pass
//! them through `extra_body`). Fields anneal has no use for (`user`, penalties,
//! `logit_bias`, ...) are ignored; `n` above 1 and tools are refused.

use std::time::{SystemTime, UNIX_EPOCH};

use anneal::{ChatMessage, FinishReason, Generation, GenerationConfig, ModelFilter, ModelKind, ModelRecord, Prompt};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::error::{ApiError, ApiResult};
use super::generate::{load, permit, run_once, run_stream, sse_of, take_bool, take_str, Piece};
use super::http::{check_param, JsonBody};
use super::state::{blocking, Shared};

pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/models", get(models))
        .route("/v1/models/{model}", get(model))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn unix_of(rfc3339: &str) -> u64 {
    humantime::parse_rfc3339(rfc3339).ok().and_then(|t| t.duration_since(UNIX_EPOCH).ok()).map_or(0, |d| d.as_secs())
}

/// Language models: what `/v1` can run (not classifiers, not image models).
fn is_text_model(m: &ModelRecord) -> bool {
    m.kind != ModelKind::Classifier && matches!(m.family, anneal::Family::Gpt2 | anneal::Family::Llama)
}

fn model_object(id: String, m: &ModelRecord) -> Value {
    json!({"id": id, "object": "model", "created": unix_of(&m.created_at), "owned_by": "anneal"})
}

/// Every language model as `name@version`, and each alias as `name@alias`.
async fn models(State(state): State<Shared>) -> ApiResult<Json<Value>> {
    let registry = state.home.models();
    let all = blocking(move || registry.list(&ModelFilter::default())).await?;
    let mut data = Vec::new();
    for m in all.iter().filter(|m| is_text_model(m)) {
        data.push(model_object(m.reference(), m));
        for a in &m.aliases {
            data.push(model_object(format!("{}@{a}", m.name), m));
        }
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn model(State(state): State<Shared>, Path(reference): Path<String>) -> ApiResult<Json<Value>> {
    check_param("model", &reference)?;
    let registry = state.home.models();
    let r = reference.clone();
    let m = blocking(move || registry.resolve(r.as_str())).await?;
    if !is_text_model(&m) {
        return Err(ApiError::not_found(format!("{} is not a language model", m.reference())));
    }
    Ok(Json(model_object(reference, &m)))
}

fn finish(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Length => "length",
        _ => "stop",
    }
}

fn usage(g: &Generation) -> Value {
    json!({
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.generated_tokens,
        "total_tokens": g.prompt_tokens + g.generated_tokens,
    })
}

fn number(body: &Map<String, Value>, field: &str) -> ApiResult<Option<f64>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_f64().map(Some).ok_or_else(|| ApiError::config(field, format!("must be a number, got {v}"))),
    }
}

fn count(body: &Map<String, Value>, field: &str) -> ApiResult<Option<u64>> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => {
            v.as_u64().map(Some).ok_or_else(|| ApiError::config(field, format!("must be a whole number, got {v}")))
        }
    }
}

/// The sampling settings shared by both endpoints.
fn settings(body: &Map<String, Value>) -> ApiResult<GenerationConfig> {
    if count(body, "n")?.is_some_and(|n| n != 1) {
        return Err(ApiError::config("n", "only one choice per request (n = 1) is supported"));
    }
    if body.get("tools").is_some_and(|t| !t.is_null()) {
        return Err(ApiError::config("tools", "tool calls are not supported"));
    }
    let max = match count(body, "max_completion_tokens")? {
        Some(n) => Some(n),
        None => count(body, "max_tokens")?,
    };
    let stop = match body.get("stop") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .map(|s| s.as_str().map(str::to_string).ok_or_else(|| ApiError::config("stop", "must be strings")))
            .collect::<ApiResult<_>>()?,
        Some(other) => return Err(ApiError::config("stop", format!("must be a string or a list, got {other}"))),
    };
    let adapter = match body.get("adapter") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => return Err(ApiError::config("adapter", format!("must be a model reference, got {other}"))),
    };
    let usize_of = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
    Ok(GenerationConfig {
        max_new_tokens: max.map(usize_of),
        temperature: number(body, "temperature")?,
        top_p: number(body, "top_p")?,
        top_k: count(body, "top_k")?.map(usize_of),
        min_p: number(body, "min_p")?,
        repetition_penalty: number(body, "repetition_penalty")?,
        seed: count(body, "seed")?,
        stop,
        adapter,
        ..Default::default()
    })
}

/// Message content: a string, or a list of `{"type": "text", "text"}` parts.
fn content(v: &Value, i: usize) -> ApiResult<String> {
    let field = format!("messages[{i}].content");
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        Value::Array(parts) => parts
            .iter()
            .map(|p| match (p.get("type").and_then(Value::as_str), p.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(t)) => Ok(t.to_string()),
                _ => {
                    Err(ApiError::config(&field, "only text parts ({\"type\": \"text\", \"text\": ...}) are supported"))
                }
            })
            .collect::<ApiResult<Vec<_>>>()
            .map(|t| t.join("")),
        other => Err(ApiError::config(&field, format!("must be a string or a list of text parts, got {other}"))),
    }
}

fn messages(body: &mut Map<String, Value>) -> ApiResult<Vec<ChatMessage>> {
    let Some(Value::Array(items)) = body.remove("messages") else {
        return Err(ApiError::config("messages", "is required: a list of {role, content} messages"));
    };
    if items.is_empty() {
        return Err(ApiError::config("messages", "must not be empty"));
    }
    items
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or_else(|| ApiError::config(&format!("messages[{i}].role"), "is required"))?;
            let role = if role == "developer" { "system" } else { role };
            Ok(ChatMessage::new(role, content(m.get("content").unwrap_or(&Value::Null), i)?))
        })
        .collect()
}

/// `POST /v1/chat/completions`.
async fn chat(State(state): State<Shared>, body: JsonBody) -> ApiResult<Response> {
    let mut body = body.object()?;
    let model = take_str(&mut body, "model")?;
    let msgs = messages(&mut body)?;
    let stream = take_bool(&mut body, "stream")?;
    let include_usage = body.get("stream_options").and_then(|o| o.get("include_usage")).and_then(Value::as_bool);
    let cfg = settings(&body)?;
    let permit = permit(&state)?;
    let (loaded, cfg) = load(&state, &model, cfg).await?;
    let created = unix_now();
    if !stream {
        let g = run_once(&state, "chat", &loaded, Prompt::Chat(msgs), cfg, permit).await?;
        return Ok(Json(json!({
            "id": completion_id("chatcmpl", &g),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": g.text},
                "logprobs": null,
                "finish_reason": finish(g.finish_reason),
            }],
            "usage": usage(&g),
        }))
        .into_response());
    }
    let rx = run_stream(&state, "chat", &loaded, Prompt::Chat(msgs), cfg, permit).await?;
    let id = format!("chatcmpl-{}", unique());
    let chunk = move |delta: Value, finish_reason: Value| {
        json!({
            "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish_reason}],
        })
    };
    let mut first = true;
    Ok(sse_of(rx, true, move |piece| {
        let mut out = Vec::new();
        if first {
            first = false;
            out.push(chunk(json!({"role": "assistant", "content": ""}), Value::Null));
        }
        match piece {
            Piece::Chunk(c) if c.text.is_empty() => {}
            Piece::Chunk(c) => out.push(chunk(json!({"content": c.text}), Value::Null)),
            Piece::Done(g) => {
                out.push(chunk(json!({}), json!(finish(g.finish_reason))));
                if include_usage == Some(true) {
                    let mut u = chunk(json!({}), Value::Null);
                    u["choices"] = json!([]);
                    u["usage"] = usage(&g);
                    out.push(u);
                }
            }
            Piece::Failed(e) => out.push(e.body()),
        }
        out
    })
    .into_response())
}

/// `POST /v1/completions` (one prompt string).
async fn completions(State(state): State<Shared>, body: JsonBody) -> ApiResult<Response> {
    let mut body = body.object()?;
    let model = take_str(&mut body, "model")?;
    let prompt = match body.remove("prompt") {
        Some(Value::String(s)) => s,
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        _ => return Err(ApiError::config("prompt", "is required: one string (batches are not supported)")),
    };
    let stream = take_bool(&mut body, "stream")?;
    let echo = take_bool(&mut body, "echo")?;
    let cfg = settings(&body)?;
    let permit = permit(&state)?;
    let (loaded, cfg) = load(&state, &model, cfg).await?;
    let created = unix_now();
    let echoed = if echo { prompt.clone() } else { String::new() };
    if !stream {
        let g = run_once(&state, "completions", &loaded, Prompt::Text(prompt), cfg, permit).await?;
        return Ok(Json(json!({
            "id": completion_id("cmpl", &g),
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "text": format!("{echoed}{}", g.text), "logprobs": null,
                         "finish_reason": finish(g.finish_reason)}],
            "usage": usage(&g),
        }))
        .into_response());
    }
    let rx = run_stream(&state, "completions", &loaded, Prompt::Text(prompt), cfg, permit).await?;
    let id = format!("cmpl-{}", unique());
    let chunk = move |text: String, finish_reason: Value| {
        json!({
            "id": id, "object": "text_completion", "created": created, "model": model,
            "choices": [{"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason}],
        })
    };
    let mut pending_echo = Some(echoed).filter(|e| !e.is_empty());
    Ok(sse_of(rx, true, move |piece| {
        let mut out: Vec<Value> = pending_echo.take().map(|e| chunk(e, Value::Null)).into_iter().collect();
        match piece {
            Piece::Chunk(c) if c.text.is_empty() => {}
            Piece::Chunk(c) => out.push(chunk(c.text, Value::Null)),
            Piece::Done(g) => out.push(chunk(String::new(), json!(finish(g.finish_reason)))),
            Piece::Failed(e) => out.push(e.body()),
        }
        out
    })
    .into_response())
}

fn completion_id(prefix: &str, g: &Generation) -> String {
    match &g.id {
        Some(id) => format!("{prefix}-{id}"),
        None => format!("{prefix}-{}", unique()),
    }
}

fn unique() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(unix_now());
    format!("{:016x}", h.finish())
}

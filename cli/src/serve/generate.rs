//! `/api/generate` (a JSON answer, or SSE when `stream` is true) and
//! `/api/images/generate`; the generation plumbing the OpenAI endpoints share: the
//! concurrency limit (429 + `Retry-After`), loaded models, per-request adapters,
//! cancelling when the client goes away, latency and token counts for `/metrics`.

use std::convert::Infallible;
use std::time::Instant;

use anneal::{
    CancelToken, Generation, GenerationConfig, ImageGeneratorOptions, ImageRequest, NoopSink, Prompt, StreamChunk,
};
use axum::extract::State;
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use base64::Engine;
use futures_util::Stream;
use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, OwnedSemaphorePermit};

use super::error::{ApiError, ApiResult};
use super::http::JsonBody;
use super::state::{blocking, Loaded, Shared};

pub(crate) fn routes() -> Router<Shared> {
    Router::new().route("/api/generate", post(generate)).route("/api/images/generate", post(images))
}

/// A permit to generate, or 429 with `Retry-After: 1`.
pub(crate) fn permit(state: &Shared) -> ApiResult<OwnedSemaphorePermit> {
    state.generation_permits.clone().try_acquire_owned().map_err(|_| {
        state.metrics.rejected();
        ApiError::busy(
            format!(
                "{} generation(s) already running (--max-generations); retry after a second",
                state.config.max_generations
            ),
            1,
        )
    })
}

/// Takes a required string field out of a request object.
pub(crate) fn take_str(body: &mut Map<String, Value>, field: &str) -> ApiResult<String> {
    match body.remove(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None | Some(Value::Null) => Err(ApiError::config(field, "is required")),
        Some(other) => Err(ApiError::config(field, format!("must be a string, got {other}"))),
    }
}

/// Takes an optional boolean field out of a request object.
pub(crate) fn take_bool(body: &mut Map<String, Value>, field: &str) -> ApiResult<bool> {
    match body.remove(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(b),
        Some(other) => Err(ApiError::config(field, format!("must be true or false, got {other}"))),
    }
}

/// The loaded model for `model` (any reference; an adapter is applied per request on
/// its base) and `cfg` with the adapter set.
pub(crate) async fn load(
    state: &Shared,
    model: &str,
    mut cfg: GenerationConfig,
) -> ApiResult<(Loaded, GenerationConfig)> {
    let loaded = state.generators.get(&state.home, model).await?;
    if cfg.adapter.is_none() {
        cfg.adapter = loaded.adapter.as_ref().map(|a| a.id.0.clone());
    }
    Ok((loaded, cfg))
}

/// Cancels a generation when the request's future is dropped (the client left).
struct CancelOnDrop(CancelToken);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// One generation to the end, on the blocking pool; counted in `/metrics`.
pub(crate) async fn run_once(
    state: &Shared,
    endpoint: &'static str,
    loaded: &Loaded,
    prompt: Prompt,
    cfg: GenerationConfig,
    permit: OwnedSemaphorePermit,
) -> ApiResult<Generation> {
    let t0 = Instant::now();
    let guard = CancelOnDrop(CancelToken::new());
    let token = guard.0.clone();
    let generator = loaded.generator.clone();
    let g = blocking(move || {
        let _permit = permit;
        generator.generate_with(prompt, &cfg, &mut NoopSink, &token)
    })
    .await?;
    drop(guard);
    count(state, endpoint, t0, &g);
    Ok(g)
}

fn count(state: &Shared, endpoint: &'static str, t0: Instant, g: &Generation) {
    state.metrics.generation(
        endpoint,
        t0.elapsed().as_secs_f64(),
        g.prompt_tokens as u64,
        g.generated_tokens as u64,
        g.timings.decode_tokens_per_s,
    );
}

/// What a streaming generation hands out.
pub(crate) enum Piece {
    Chunk(StreamChunk),
    Done(Box<Generation>),
    Failed(ApiError),
}

/// Starts a streaming generation: settings are checked before this returns (a bad
/// request is an HTTP error, not a broken stream); pieces then come on the receiver
/// as they are decoded. The decoding thread stops when the receiver is dropped.
pub(crate) async fn run_stream(
    state: &Shared,
    endpoint: &'static str,
    loaded: &Loaded,
    prompt: Prompt,
    cfg: GenerationConfig,
    permit: OwnedSemaphorePermit,
) -> ApiResult<mpsc::Receiver<Piece>> {
    let t0 = Instant::now();
    let generator = loaded.generator.clone();
    let mut stream = blocking(move || generator.stream(prompt, &cfg)).await?;
    let (tx, rx) = mpsc::channel(32);
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        for piece in stream.by_ref() {
            let msg = match piece {
                Ok(c) => Piece::Chunk(c),
                Err(e) => {
                    let _ = tx.blocking_send(Piece::Failed(e.into()));
                    return;
                }
            };
            if tx.blocking_send(msg).is_err() {
                return; // the client left: dropping the stream stops decoding
            }
        }
        match stream.generation().cloned() {
            Some(g) => {
                count(&state, endpoint, t0, &g);
                let _ = tx.blocking_send(Piece::Done(Box::new(g)));
            }
            None => {
                let _ = tx.blocking_send(Piece::Failed(ApiError::internal("the stream ended without a result")));
            }
        }
    });
    Ok(rx)
}

/// `POST /api/generate`: `{"model": <reference>, "prompt": <text | messages | token
/// ids>, "stream": false, ...GenerationConfig}`. The answer is the `Generation`
/// (plus `model`, the reference that ran); with `stream: true`, SSE messages
/// `{"type": "chunk", "text", "token_ids"}` then `{"type": "done", "generation"}`
/// (or `{"type": "error", "error"}`).
async fn generate(State(state): State<Shared>, body: JsonBody) -> ApiResult<Response> {
    let mut body = body.object()?;
    let model = take_str(&mut body, "model")?;
    let prompt = Prompt::from_json(body.remove("prompt").unwrap_or(Value::Null), "prompt")?;
    let stream = take_bool(&mut body, "stream")?;
    let cfg: GenerationConfig = anneal::options_from_json(Value::Object(body))?;
    let permit = permit(&state)?;
    let (loaded, cfg) = load(&state, &model, cfg).await?;
    let reference = loaded.model.reference();
    if !stream {
        let g = run_once(&state, "generate", &loaded, prompt, cfg, permit).await?;
        let mut v = serde_json::to_value(&g).map_err(|e| ApiError::internal(e.to_string()))?;
        if let Value::Object(m) = &mut v {
            m.insert("model".into(), Value::String(reference));
        }
        return Ok(Json(v).into_response());
    }
    let rx = run_stream(&state, "generate", &loaded, prompt, cfg, permit).await?;
    Ok(sse_of(rx, false, move |piece| match piece {
        Piece::Chunk(c) => vec![json!({"type": "chunk", "text": c.text, "token_ids": c.token_ids})],
        Piece::Done(g) => vec![json!({"type": "done", "model": reference, "generation": g})],
        Piece::Failed(e) => {
            let mut b = e.body();
            b["type"] = Value::String("error".into());
            vec![b]
        }
    })
    .into_response())
}

/// An SSE response of the JSON messages `f` makes of each piece; with `done_marker`,
/// a final `data: [DONE]` after a generation that completed (OpenAI's end of stream).
pub(crate) fn sse_of<F>(
    rx: mpsc::Receiver<Piece>,
    done_marker: bool,
    f: F,
) -> Sse<impl Stream<Item = Result<sse::Event, Infallible>>>
where
    F: FnMut(Piece) -> Vec<Value> + Send + 'static,
{
    let stream = futures_util::stream::unfold((rx, f, false), move |(mut rx, mut f, done)| async move {
        if done {
            return None;
        }
        let piece = rx.recv().await?;
        let last = !matches!(piece, Piece::Chunk(_));
        let completed = matches!(piece, Piece::Done(_));
        let mut events: Vec<Result<sse::Event, Infallible>> =
            f(piece).into_iter().map(|v| Ok(sse::Event::default().data(v.to_string()))).collect();
        if completed && done_marker {
            events.push(Ok(sse::Event::default().data("[DONE]")));
        }
        Some((futures_util::stream::iter(events), (rx, f, last)))
    });
    Sse::new(futures_util::StreamExt::flatten(stream)).keep_alive(KeepAlive::default())
}

/// `POST /api/images/generate`: `{"model": <stable diffusion reference>,
/// ...ImageRequest}` -> `{id, model, seed, warnings, duration_ms, images: [{png_base64,
/// width, height, seed}]}`.
async fn images(State(state): State<Shared>, body: JsonBody) -> ApiResult<Json<Value>> {
    let mut body = body.object()?;
    let model = take_str(&mut body, "model")?;
    let req: ImageRequest = anneal::options_from_json(Value::Object(body))?;
    let permit = permit(&state)?;
    let t0 = Instant::now();
    let home = state.home.clone();
    let guard = CancelOnDrop(CancelToken::new());
    let token = guard.0.clone();
    let out = blocking(move || {
        let _permit = permit;
        let generator = home.image_generator(model.as_str(), &ImageGeneratorOptions::default())?;
        generator.generate_with(&req, &mut NoopSink, &token)
    })
    .await?;
    drop(guard);
    state.metrics.generation("images", t0.elapsed().as_secs_f64(), 0, 0, 0.0);
    let b64 = base64::engine::general_purpose::STANDARD;
    let images: Vec<Value> = out
        .images
        .iter()
        .map(|i| json!({"png_base64": b64.encode(&i.png), "width": i.width, "height": i.height, "seed": i.seed}))
        .collect();
    Ok(Json(json!({
        "id": out.id, "model": out.model, "seed": out.seed, "warnings": out.warnings,
        "duration_ms": out.duration_ms, "images": images,
    })))
}

//! `ImageGenerator`: text-to-image with a registered stable-diffusion model. Loading and
//! every `generate` run on the libuv pool; `generate` resolves to an object whose images
//! carry their PNG files (and RGB pixels) as `Buffer`s, so it has its own `Task` rather
//! than `LongTask` (which resolves to JSON). Settings are the core's `ImageRequest` in
//! camelCase (`negativePrompt`, `guidanceScale`, `numImages`, `adapters: [{model, scale}]`),
//! checked by the core; events, `cancel` and `signal` work as for every long call.

use std::panic::{catch_unwind, AssertUnwindSafe};

use napi::bindgen_prelude::{AsyncTask, Buffer, Object, ToNapiValue, TypeName, Unknown, ValueType};
use napi::{sys, Env, Status, Task};
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, CallOptions, Detach, JsJson};
use crate::errors;
use crate::events::{JsSink, OnEvent, THROTTLE};

/// Loads an image generator on the libuv pool; resolves with the `ImageGenerator`.
pub struct LoadImageGenerator {
    registry: anneal::ModelRegistry,
    model: String,
    options: Option<anneal::ImageGeneratorOptions>,
    error: Option<anneal::Error>,
}

impl LoadImageGenerator {
    pub(crate) fn spawn(
        registry: anneal::ModelRegistry,
        model: Unknown<'_>,
        options: Option<Unknown<'_>>,
    ) -> AsyncTask<LoadImageGenerator> {
        let parsed = conv::string(model, "model").and_then(|m| {
            let opts: anneal::ImageGeneratorOptions = options!(conv::plain(options)?)?;
            Ok((m, opts))
        });
        AsyncTask::new(match parsed {
            Ok((model, opts)) => LoadImageGenerator { registry, model, options: Some(opts), error: None },
            Err(e) => LoadImageGenerator { registry, model: String::new(), options: None, error: Some(e) },
        })
    }
}

impl Task for LoadImageGenerator {
    type Output = anneal::ImageGenerator;
    type JsValue = ImageGenerator;

    fn compute(&mut self) -> napi::Result<anneal::ImageGenerator> {
        let result = match (self.error.take(), self.options.take()) {
            (Some(e), _) => Err(e),
            (None, Some(opts)) => {
                let (registry, model) = (&self.registry, self.model.as_str());
                catch_unwind(AssertUnwindSafe(|| anneal::ImageGenerator::load(registry, model, &opts)))
                    .unwrap_or_else(|p| Err(panicked(p)))
            }
            (None, None) => Err(anneal::Error::Internal("task ran twice".into())),
        };
        result.map_err(|e| {
            let out = napi::Error::from_reason(e.to_string());
            self.error = Some(e);
            out
        })
    }

    fn resolve(&mut self, _env: Env, inner: anneal::ImageGenerator) -> napi::Result<ImageGenerator> {
        Ok(ImageGenerator { inner })
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<ImageGenerator> {
        match self.error.take() {
            Some(e) => Err(errors::to_js(&env, e)),
            None => Err(err),
        }
    }
}

/// A panic in the core as an `internal` error.
fn panicked(p: Box<dyn std::any::Any + Send>) -> anneal::Error {
    let msg = p
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    anneal::Error::Internal(format!("panic in anneal: {msg}"))
}

/// The request of `generate(prompt, options)`: the prompts are the first argument (a
/// string or an array of strings), the settings the options object (no `prompts` key).
fn request(prompt: Unknown<'_>, settings: Value) -> anneal::Result<anneal::ImageRequest> {
    let prompts = match conv::json(prompt, "prompt")? {
        Value::String(s) => vec![Value::String(s)],
        Value::Array(items) if items.iter().all(Value::is_string) => items,
        _ => return Err(anneal::Error::config("prompt", "expected a string or an array of strings")),
    };
    let mut map = match settings {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    if map.contains_key("prompts") {
        return Err(anneal::Error::config("prompts", "pass the prompts as the first argument of generate"));
    }
    map.insert("prompts".into(), Value::Array(prompts));
    options!(Value::Object(map))
}

/// One `generate` call on the libuv pool; resolves to an `ImageGeneration` object.
pub struct GenerateImages {
    gen: Option<anneal::ImageGenerator>,
    request: Option<anneal::ImageRequest>,
    on_event: Option<OnEvent>,
    cancel: anneal::CancelToken,
    detach: Option<Detach>,
    error: Option<anneal::Error>,
}

impl GenerateImages {
    fn failed(error: anneal::Error) -> AsyncTask<GenerateImages> {
        AsyncTask::new(into_failed(error))
    }
}

impl Task for GenerateImages {
    type Output = anneal::ImageGeneration;
    type JsValue = ImageResult;

    fn compute(&mut self) -> napi::Result<anneal::ImageGeneration> {
        let result = match (self.error.take(), self.gen.take(), self.request.take()) {
            (Some(e), _, _) => Err(e),
            (None, Some(gen), Some(req)) => {
                let js = JsSink::new(self.on_event.take());
                let in_flight = js.in_flight();
                let mut sink = anneal::Throttle::new(js, THROTTLE);
                let cancel = &self.cancel;
                let result = catch_unwind(AssertUnwindSafe(|| gen.generate_with(&req, &mut sink, cancel)))
                    .unwrap_or_else(|p| Err(panicked(p)));
                drop(sink);
                in_flight.flush();
                result
            }
            _ => Err(anneal::Error::Internal("task ran twice".into())),
        };
        result.map_err(|e| {
            let out = napi::Error::new(Status::GenericFailure, e.to_string());
            self.error = Some(e);
            out
        })
    }

    fn resolve(&mut self, _env: Env, output: anneal::ImageGeneration) -> napi::Result<ImageResult> {
        Ok(ImageResult(output))
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<ImageResult> {
        match self.error.take() {
            Some(e) => Err(errors::to_js(&env, e)),
            None => Err(err),
        }
    }

    fn finally(self, env: Env) -> napi::Result<()> {
        conv::detach(&env, self.detach)
    }
}

/// An `anneal::ImageGeneration` for JavaScript: `{ id, model, images: [{ png, rgb,
/// width, height, seed, settings }], seed, warnings, durationMs }`, PNG and pixels as
/// `Buffer`s (handed over without a copy), settings with camelCase keys.
pub struct ImageResult(anneal::ImageGeneration);

impl TypeName for ImageResult {
    fn type_name() -> &'static str {
        "ImageGeneration"
    }
    fn value_type() -> ValueType {
        ValueType::Object
    }
}

/// An image's settings (what its PNG's text chunks hold) with camelCase keys.
fn settings(s: &anneal::diffusion::ImageSettings) -> napi::Result<Value> {
    let json = serde_json::to_value(s).map_err(|e| napi::Error::from_reason(format!("serialize: {e}")))?;
    Ok(match json {
        Value::Object(m) => Value::Object(m.into_iter().map(|(k, v)| (anneal::Spelling::Camel.spell(&k), v)).collect()),
        other => other,
    })
}

/// A seed as a JS number (seeds come from JS numbers or from a random u32).
fn seed(s: u64) -> f64 {
    s as f64
}

impl ToNapiValue for ImageResult {
    unsafe fn to_napi_value(raw: sys::napi_env, val: Self) -> napi::Result<sys::napi_value> {
        let env = Env::from_raw(raw);
        let g = val.0;
        let mut images = env.create_array(g.images.len() as u32)?;
        for (i, img) in g.images.into_iter().enumerate() {
            let mut o = Object::new(&env)?;
            o.set("settings", settings(&img.settings)?)?;
            o.set("png", Buffer::from(img.png))?;
            o.set("rgb", Buffer::from(img.rgb))?;
            o.set("width", img.width as u32)?;
            o.set("height", img.height as u32)?;
            o.set("seed", img.seed.map(seed))?;
            images.set(i as u32, o)?;
        }
        let mut out = Object::new(&env)?;
        out.set("id", g.id.map(|i| i.0))?;
        out.set("model", g.model)?;
        out.set("images", images)?;
        out.set("seed", seed(g.seed))?;
        out.set("warnings", g.warnings)?;
        out.set("durationMs", g.duration_ms)?;
        // SAFETY: `out` is a live object of this env.
        unsafe { Object::to_napi_value(raw, out) }
    }
}

/// Generates images with one loaded Stable Diffusion model (base, full fine-tune or
/// LoRA): `await home.imageGenerator(model, options)`. Requests with different adapters
/// take turns; requests with the same one run together.
#[napi]
pub struct ImageGenerator {
    inner: anneal::ImageGenerator,
}

#[napi]
impl ImageGenerator {
    /// Generates images for `prompt` (a string or an array of strings; `numImages` each).
    /// Rejects with `invalid_config` naming the setting (`width`, `steps`,
    /// `adapters[0].model`, ...) before any work. `options.onEvent` gets `task_started` /
    /// `task_progress` (denoising steps) / `task_finished`; `options.cancel` (a
    /// `CancelToken`) or `options.signal` (an `AbortSignal`) stops at the next step (rejects
    /// with `cancelled`; nothing is recorded).
    #[napi(catch_unwind, ts_return_type = "Promise<ImageGeneration>")]
    pub fn generate(
        &self,
        #[napi(ts_arg_type = "string | string[]")] prompt: Unknown<'_>,
        #[napi(ts_arg_type = "ImageOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<GenerateImages> {
        let o = match CallOptions::parse(options, true) {
            Ok(o) => o,
            Err(e) => return GenerateImages::failed(e),
        };
        let CallOptions { json, on_event, cancel, detach } = o;
        match request(prompt, json) {
            Ok(req) => AsyncTask::new(GenerateImages {
                gen: Some(self.inner.clone()),
                request: Some(req),
                on_event,
                cancel,
                detach,
                error: None,
            }),
            // The listener on `signal` is removed when the task settles.
            Err(e) => AsyncTask::new(GenerateImages { detach, ..into_failed(e) }),
        }
    }

    /// The model this generator was loaded with.
    #[napi(getter, catch_unwind, ts_return_type = "ModelRecord")]
    pub fn model(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.model()))
    }

    /// The pipeline whose weights are loaded (a LoRA's base).
    #[napi(getter, catch_unwind, ts_return_type = "ModelRecord")]
    pub fn base_model(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.base_model()))
    }

    /// Widths and heights must be multiples of this.
    #[napi(getter, catch_unwind)]
    pub fn size_multiple(&self, env: Env) -> napi::Result<u32> {
        errors::sync(&env, || self.inner.size_multiple()).map(|n| n as u32)
    }

    /// The size of a request that gives none (the model's trained size).
    #[napi(getter, catch_unwind, ts_return_type = "{ width: number; height: number }")]
    pub fn default_size(&self, env: Env) -> napi::Result<JsJson> {
        errors::sync(&env, || self.inner.default_size())
            .map(|(height, width)| JsJson(serde_json::json!({ "width": width, "height": height })))
    }
}

/// The fields of a task that rejects with `error`.
fn into_failed(error: anneal::Error) -> GenerateImages {
    GenerateImages {
        gen: None,
        request: None,
        on_event: None,
        cancel: anneal::CancelToken::new(),
        detach: None,
        error: Some(error),
    }
}

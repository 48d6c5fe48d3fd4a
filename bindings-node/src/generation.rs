//! `Generator` and `TokenStream`. Loading, `generate`, `generateBatch`, `score` and
//! every step of a stream run on the libuv pool (Promises); settings are objects with
//! camelCase keys (`maxNewTokens`, `topP`, `stop`: one string or a list, ...) built by
//! the core into its `GenerationConfig`, and prompts are parsed by the core
//! (`Prompt::from_json`), so defaults and validation stay in the core. A `TokenStream`
//! is an async iterator: `for await (const chunk of gen.stream(prompt)) ...`.

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::{AsyncTask, ClassInstance, JavaScriptClassExt, JsObjectValue, Unknown};
use napi::{Env, Task};
use napi_derive::napi;
use serde_json::Value;

use crate::conv::{self, js, options, JsJson};
use crate::errors;
use crate::events::{arg, LongTask};

/// A prompt argument, parsed by the core (`Prompt::from_json`).
fn prompt(v: Unknown<'_>) -> anneal::Result<anneal::Prompt> {
    anneal::Prompt::from_json(conv::json(v, "prompt")?, "prompt")
}

/// The prompts of a batch; a bad one is named `prompts[i]`.
fn prompts(v: Unknown<'_>) -> anneal::Result<Vec<anneal::Prompt>> {
    conv::list(v, "prompts", "an array of prompts")?
        .into_iter()
        .enumerate()
        .map(|(i, item)| anneal::Prompt::from_json(item, &format!("prompts[{i}]")))
        .collect()
}

/// The settings object as the core's `GenerationConfig`.
fn config(options: Option<Unknown<'_>>) -> anneal::Result<anneal::GenerationConfig> {
    options!(conv::plain(options)?)
}

/// Loads a generator on the libuv pool; resolves with the `Generator` instance.
pub struct LoadGenerator {
    registry: anneal::ModelRegistry,
    model: String,
    options: Option<anneal::GeneratorOptions>,
    error: Option<anneal::Error>,
}

impl LoadGenerator {
    pub(crate) fn spawn(
        registry: anneal::ModelRegistry,
        model: Unknown<'_>,
        options: Option<Unknown<'_>>,
    ) -> AsyncTask<LoadGenerator> {
        let parsed = conv::string(model, "model").and_then(|m| {
            let opts: anneal::GeneratorOptions = options!(conv::plain(options)?)?;
            Ok((m, opts))
        });
        AsyncTask::new(match parsed {
            Ok((model, opts)) => LoadGenerator { registry, model, options: Some(opts), error: None },
            Err(e) => LoadGenerator { registry, model: String::new(), options: None, error: Some(e) },
        })
    }
}

impl Task for LoadGenerator {
    type Output = anneal::Generator;
    type JsValue = Generator;

    fn compute(&mut self) -> napi::Result<anneal::Generator> {
        let result = match (self.error.take(), self.options.take()) {
            (Some(e), _) => Err(e),
            (None, Some(opts)) => anneal::Generator::load(&self.registry, self.model.as_str(), &opts),
            (None, None) => Err(anneal::Error::Internal("task ran twice".into())),
        };
        result.map_err(|e| {
            let out = napi::Error::from_reason(e.to_string());
            self.error = Some(e);
            out
        })
    }

    fn resolve(&mut self, _env: Env, inner: anneal::Generator) -> napi::Result<Generator> {
        Ok(Generator { inner })
    }

    fn reject(&mut self, env: Env, err: napi::Error) -> napi::Result<Generator> {
        match self.error.take() {
            Some(e) => Err(errors::to_js(&env, e)),
            None => Err(err),
        }
    }
}

/// Generates with one loaded model (`await home.generator(model, options)`). Requests
/// from several callers take turns one forward pass at a time.
#[napi]
pub struct Generator {
    inner: anneal::Generator,
}

#[napi]
impl Generator {
    /// Loads `model` from `models`; the same as `home.generator(model, options)`.
    #[napi(catch_unwind, ts_return_type = "Promise<Generator>")]
    pub fn load(
        models: &crate::registry::ModelRegistry,
        #[napi(ts_arg_type = "string")] model: Unknown<'_>,
        #[napi(ts_arg_type = "GeneratorOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LoadGenerator> {
        LoadGenerator::spawn(models.inner.clone(), model, options)
    }

    /// Generates a completion of `prompt`. Rejects with `invalid_config` (naming the
    /// setting) or `not_found` before any work. `options.onEvent` gets `task_started` /
    /// `task_progress` (tokens) / `task_finished`; `options.cancel` stops at the next
    /// token (rejects with `cancelled`).
    #[napi(catch_unwind, ts_return_type = "Promise<Generation>")]
    pub fn generate(
        &self,
        #[napi(ts_arg_type = "Prompt")] prompt: Unknown<'_>,
        #[napi(ts_arg_type = "GenerationConfig")] config: Option<Unknown<'_>>,
        #[napi(ts_arg_type = "CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let p = arg!(self::prompt(prompt));
        let cfg = arg!(self::config(config));
        let gen = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            conv::fields(json, &[])?;
            js!(gen.generate_with(p, &cfg, sink, cancel)?)
        })
    }

    /// Generates for several prompts in one batch (results in prompt order).
    #[napi(catch_unwind, ts_return_type = "Promise<Generation[]>")]
    pub fn generate_batch(
        &self,
        #[napi(ts_arg_type = "Prompt[]")] prompts: Unknown<'_>,
        #[napi(ts_arg_type = "GenerationConfig")] config: Option<Unknown<'_>>,
        #[napi(ts_arg_type = "CallOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let ps = arg!(self::prompts(prompts));
        let cfg = arg!(self::config(config));
        let gen = self.inner.clone();
        LongTask::spawn(options, true, move |json, sink, cancel| {
            conv::fields(json, &[])?;
            js!(gen.generate_batch_with(&ps, &cfg, sink, cancel)?)
        })
    }

    /// Generates as `generate` does, as an async iterator of `StreamChunk`s (valid UTF-8
    /// pieces); `stream.generation` is the full result once it ends. Throws
    /// `invalid_config` / `not_found` for bad settings.
    #[napi(catch_unwind, ts_return_type = "TokenStream")]
    pub fn stream<'env>(
        &self,
        env: &'env Env,
        #[napi(ts_arg_type = "Prompt")] prompt: Unknown<'_>,
        #[napi(ts_arg_type = "GenerationConfig")] config: Option<Unknown<'_>>,
    ) -> napi::Result<ClassInstance<'env, TokenStream>> {
        let s = errors::sync(env, || self.inner.stream(self::prompt(prompt)?, &self::config(config)?))?;
        let mut instance = TokenStream { inner: Arc::new(Mutex::new(s)) }.into_instance(env)?;
        // `for await` looks up Symbol.asyncIterator; the stream is its own iterator.
        let key: Unknown = env.run_script("Symbol.asyncIterator")?;
        let itself: Unknown = env.run_script("(function () { return this })")?;
        instance.set_property(key, itself)?;
        Ok(instance)
    }

    /// Loss, perplexity and token count of each text.
    #[napi(catch_unwind, ts_return_type = "Promise<Score[]>")]
    pub fn score(
        &self,
        #[napi(ts_arg_type = "string[]")] texts: Unknown<'_>,
        #[napi(ts_arg_type = "ScoreOptions")] options: Option<Unknown<'_>>,
    ) -> AsyncTask<LongTask> {
        let texts = arg!(strings(texts, "texts"));
        let gen = self.inner.clone();
        LongTask::spawn(options, false, move |json, _, _| {
            let o: anneal::ScoreOptions = options!(json)?;
            js!(gen.score_with(&texts, o.adapter.as_deref())?)
        })
    }

    /// Loads an adapter of this generator's base, for requests' `adapter` setting.
    #[napi(catch_unwind, ts_return_type = "Promise<ModelRecord>")]
    pub fn add_adapter(&self, #[napi(ts_arg_type = "string")] model: Unknown<'_>) -> AsyncTask<LongTask> {
        let model = arg!(conv::string(model, "model"));
        let gen = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| js!(gen.add_adapter(model)?))
    }

    /// The adapters loaded unmerged on this generator.
    #[napi(catch_unwind, ts_return_type = "ModelRecord[]")]
    pub fn adapters(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.adapters()?))
    }

    /// The settings a request gets for what it leaves unset.
    #[napi(catch_unwind, ts_return_type = "GenerationConfig")]
    pub fn defaults(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.defaults()))
    }

    /// The model this generator was loaded with.
    #[napi(getter, catch_unwind, ts_return_type = "ModelRecord")]
    pub fn model(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.model()))
    }

    /// The model whose weights are loaded (an adapter's base).
    #[napi(getter, catch_unwind, ts_return_type = "ModelRecord")]
    pub fn base_model(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || js!(self.inner.base_model()))
    }

    #[napi(getter, catch_unwind)]
    pub fn context_length(&self) -> u32 {
        self.inner.context_length() as u32
    }

    #[napi(getter, catch_unwind)]
    pub fn eos_token_ids(&self) -> Vec<u32> {
        self.inner.eos_token_ids().to_vec()
    }
}

/// An array of strings (`score`'s texts).
fn strings(v: Unknown<'_>, name: &str) -> anneal::Result<Vec<String>> {
    const EXPECTED: &str = "an array of strings";
    conv::list(v, name, EXPECTED)?
        .into_iter()
        .map(|item| match item {
            Value::String(s) => Ok(s),
            _ => Err(anneal::Error::config(name, format!("expected {EXPECTED}"))),
        })
        .collect()
}

/// A generation in progress: an async iterator of `StreamChunk`s.
#[napi]
pub struct TokenStream {
    inner: Arc<Mutex<anneal::TokenStream>>,
}

#[napi]
impl TokenStream {
    /// The iterator protocol's `next()`: one step on the libuv pool; resolves with
    /// `{ value: chunk, done: false }`, then `{ value: undefined, done: true }`.
    #[napi(catch_unwind, ts_return_type = "Promise<IteratorResult<StreamChunk, undefined>>")]
    pub fn next(&self) -> AsyncTask<LongTask> {
        let inner = self.inner.clone();
        LongTask::spawn(None, false, move |_, _, _| {
            let mut s = inner.lock().map_err(|_| anneal::Error::Internal("stream poisoned by a panic".into()))?;
            match s.next() {
                Some(Ok(chunk)) => Ok(serde_json::json!({ "value": js!(chunk)?, "done": false })),
                Some(Err(e)) => Err(e),
                None => Ok(serde_json::json!({ "done": true })),
            }
        })
    }

    /// The full result once the stream has ended (`null` before).
    #[napi(getter, catch_unwind, ts_return_type = "Generation | null")]
    pub fn generation(&self, env: Env) -> napi::Result<JsJson> {
        errors::json(&env, || {
            let s = self.inner.lock().map_err(|_| anneal::Error::Internal("stream poisoned by a panic".into()))?;
            match s.generation() {
                Some(g) => js!(g),
                None => Ok(Value::Null),
            }
        })
    }
}

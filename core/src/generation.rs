//! Generator: text generation with any registered model (base, full fine-tune, or a
//! base with LoRA adapters), with a KV cache, greedy or sampled decoding, stop
//! sequences, streaming, batches, and scoring. Every call is recorded in the catalog.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{GenerationConfig, GeneratorOptions, Home};
//! let home = Home::open("./anneal-home")?;
//! let gen = home.generator("my-model@latest", &GeneratorOptions::default())?;
//! let out = gen.generate("Question: what is 2+2?\nAnswer:", &GenerationConfig::default())?;
//! println!("{} ({:?}, {:.0} tokens/s)", out.text, out.finish_reason, out.timings.decode_tokens_per_s);
//! for piece in gen.stream("Once upon a time", &GenerationConfig { temperature: Some(0.8), seed: Some(1), ..Default::default() })? {
//!     print!("{}", piece?.text);
//! }
//! # Ok(()) }
//! ```

mod decode;
mod sampling;
mod text;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use serde::Serialize;
use serde_json::Value;

use crate::catalog::generations as sql;
use crate::error::{Error, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::models::memory;
use crate::models::{AdapterSlot, LoadOptions, Model, ModelConfig};
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::tokenizer::Tokenizer;
use crate::types::{
    FinishReason, Generation, GenerationConfig, GenerationId, GenerationKind, GenerationRecord, GeneratorOptions,
    ModelId, ModelKind, ModelRecord, ModelRef, Prompt, Score, StreamChunk, Timings, DEFAULT_MAX_NEW_TOKENS,
};
use crate::util::{new_id, now};
use decode::{Batcher, Finished, Request};

/// Fully resolved settings of one request.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Resolved {
    pub(crate) max_new_tokens: usize,
    pub(crate) temperature: f64,
    pub(crate) top_k: usize,
    pub(crate) top_p: f64,
    pub(crate) min_p: f64,
    pub(crate) repetition_penalty: f64,
    pub(crate) seed: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) stop: Vec<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub(crate) ignore_eos: bool,
}

impl Resolved {
    #[cfg(test)]
    pub(crate) fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            seed: 0,
            stop: Vec::new(),
            ignore_eos: false,
        }
    }

    fn sampled(&self) -> bool {
        self.temperature > 0.0
    }

    /// The catalog's `params` (no seed for greedy decoding).
    fn params(&self, adapter: Option<&str>) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Value::Object(m) = &mut v {
            if !self.sampled() {
                m.remove("seed");
            }
            if let Some(a) = adapter {
                m.insert("adapter".into(), Value::String(a.into()));
            }
        }
        v
    }
}

/// Defaults read from generation_config.json.
#[derive(Debug, Clone, Default, PartialEq)]
struct ModelDefaults {
    max_new_tokens: Option<usize>,
    temperature: f64,
    top_k: usize,
    top_p: f64,
    min_p: f64,
    repetition_penalty: f64,
}

impl ModelDefaults {
    fn read(dir: &std::path::Path) -> Result<Self> {
        let p = dir.join("generation_config.json");
        let gc: Value = if p.is_file() {
            let bytes = std::fs::read(&p).map_err(|e| Error::io(&p, e))?;
            serde_json::from_slice(&bytes)
                .map_err(|e| Error::data(crate::error::Location::file(&p), format!("not valid JSON: {e}")))?
        } else {
            Value::Null
        };
        let f = |k: &str| gc.get(k).and_then(Value::as_f64);
        let sample = gc.get("do_sample").and_then(Value::as_bool).unwrap_or(false);
        // transformers' GenerationConfig defaults when sampling: temperature 1, top_k 50.
        Ok(Self {
            max_new_tokens: gc
                .get("max_new_tokens")
                .and_then(Value::as_u64)
                .map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            temperature: if sample { f("temperature").unwrap_or(1.0) } else { 0.0 },
            top_k: if sample {
                gc.get("top_k").and_then(Value::as_u64).map_or(50, |k| usize::try_from(k).unwrap_or(usize::MAX))
            } else {
                0
            },
            top_p: if sample { f("top_p").unwrap_or(1.0) } else { 1.0 },
            min_p: if sample { f("min_p").unwrap_or(0.0) } else { 0.0 },
            repetition_penalty: f("repetition_penalty").unwrap_or(1.0),
        })
    }
}

/// The loaded model and the adapters that can be switched on it.
struct Loaded {
    model: Model,
    /// Unmerged adapters by model id.
    adapters: HashMap<String, (ModelRecord, AdapterSlot)>,
    /// The adapter on the layers now.
    active: Option<String>,
}

impl Loaded {
    /// Puts adapter `want` (or none) on the layers.
    fn activate(&mut self, want: Option<&str>) -> Result<()> {
        if self.active.as_deref() == want {
            return Ok(());
        }
        let slot = match want {
            Some(id) => {
                Some(&self.adapters.get(id).ok_or_else(|| Error::Internal(format!("adapter {id} is not loaded")))?.1)
            }
            None => None,
        };
        self.model.put_adapter(slot)?;
        self.active = want.map(str::to_string);
        Ok(())
    }
}

struct Inner {
    store: Arc<Store>,
    registry: ModelRegistry,
    /// What `load` was given (resolved).
    record: ModelRecord,
    /// The weights that are loaded (the adapter's parent for an adapter).
    base: ModelRecord,
    /// The adapter merged into the weights at load.
    merged: Option<ModelRecord>,
    /// The adapter requests use by default (unmerged mode).
    default_adapter: Option<String>,
    tokenizer: Option<Tokenizer>,
    eos: Vec<u32>,
    context: usize,
    vocab: usize,
    /// The loaded model's configuration, its weights' estimated bytes and the bytes of
    /// its compute dtype, to size each request's memory before allocating it.
    config: ModelConfig,
    weights: u128,
    dtype_bytes: u128,
    defaults: ModelDefaults,
    options: GeneratorOptions,
    /// Forward passes share it (the batches of requests on the same adapter pass
    /// while it is on); loading or switching an adapter takes it exclusively.
    state: RwLock<Loaded>,
    /// Concurrent requests' shared decoding batches (one per adapter).
    batcher: Batcher,
}

/// Generates with one loaded model. Cheap to clone, `Send + Sync`; concurrent requests
/// (from several threads) share one decoding batch: one forward pass per step for all
/// of them.
#[derive(Clone)]
pub struct Generator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Generator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Generator")
            .field("model", &self.inner.record.reference())
            .field("base", &self.inner.base.reference())
            .field("merged", &self.inner.merged.as_ref().map(|m| m.reference()))
            .finish()
    }
}

fn parse_dtype(s: &str) -> Result<DType> {
    match s {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(Error::config("dtype", format!("unsupported dtype `{other}` (f32, bf16 or f16)"))),
    }
}

impl Generator {
    /// Loads a registered model: a base, a full fine-tune, or an adapter (with its base;
    /// merged into it unless `options.merge_adapter` is false).
    ///
    /// `options.quantize` holds the linear layers' weights (and the token embedding /
    /// LM head where they are read quantized) compactly, as GGML does: `"q8_0"` (8-bit
    /// blocks of 32, each layer's input quantized alike for integer products) or
    /// `"bf16"` (each weight rounded to bfloat16, half of f32's bytes, each layer's input
    /// rounded to bfloat16 too, products exact and summed in f32: logits within 1% of
    /// their largest magnitude on the test models, greedy tokens equal where f32's
    /// top-1 margin is clear). Norms, attention and sampling stay f32. Both need `dtype`
    /// `f32` (`invalid_config` otherwise, as for any other value); an adapter is merged
    /// before quantizing.
    pub fn load(registry: &ModelRegistry, model: impl Into<ModelRef>, options: &GeneratorOptions) -> Result<Self> {
        use crate::models::gemv::Quant;
        let dtype = parse_dtype(&options.dtype)?;
        let quantize = match options.quantize.as_deref() {
            None => None,
            Some("q8_0") if dtype == DType::F32 => Some(Quant::Q8_0),
            Some("bf16") if dtype == DType::F32 => Some(Quant::Bf16),
            Some(q @ ("q8_0" | "bf16")) => {
                return Err(Error::config(
                    "quantize",
                    format!(
                        "{q} needs dtype f32 (it computes everything but the products in f32), got `{}`",
                        options.dtype
                    ),
                ))
            }
            Some(other) => return Err(Error::config("quantize", format!("unsupported `{other}` (q8_0 or bf16)"))),
        };
        let record = registry.resolve(model)?;
        let base = match record.kind {
            ModelKind::Lora => {
                let parent = record.parent_id.clone().ok_or_else(|| {
                    Error::data(
                        crate::error::Location::file(&record.path).field("parent_id"),
                        format!("adapter {} has no base model", record.reference()),
                    )
                })?;
                let base = registry.get(&parent)?;
                if base.kind == ModelKind::Lora {
                    return Err(Error::config(
                        "model",
                        format!("adapter {} applies to another adapter ({})", record.reference(), base.reference()),
                    ));
                }
                base
            }
            _ => record.clone(),
        };
        let dtype_bytes = dtype.size_in_bytes() as u128;
        let base_cfg = ModelConfig::from_json(&base.config)?;
        // A registered GGUF file with block-quantized matrices runs them as q8_0 as they
        // are (no dense copy), unless an adapter is to be merged into them: then it
        // loads dense, merges, and is quantized to q8_0 after the merge.
        let gguf = crate::models::gguf::gguf_load(&base.path, &base_cfg)?.filter(|g| g.quantized);
        let direct =
            gguf.is_some() && dtype == DType::F32 && !(record.kind == ModelKind::Lora && options.merge_adapter);
        let quantize = quantize.or((gguf.is_some() && dtype == DType::F32 && !direct).then_some(Quant::Q8_0));
        // A safetensors model asked for as q8_0 or bf16 (and a GGUF one's float matrices
        // asked for as bf16) is quantized while it is read, unless an adapter applies to
        // it (merged into dense weights first, or switched per request).
        let is_gguf = crate::models::gguf::is_gguf_model(&base.path);
        let on_load = quantize.is_some_and(|q| !is_gguf || q == Quant::Bf16) && record.kind != ModelKind::Lora;
        let weights = match (gguf, quantize) {
            (Some(g), _) if direct => g.quantized_bytes,
            (None, Some(q)) if on_load => crate::models::gguf::quantized_bytes(&base_cfg, q)?,
            _ => memory::param_count(&base_cfg).saturating_mul(dtype_bytes),
        };
        let limit = registry.store().memory_limit;
        memory::Estimate::new().add("weights", "model", weights).check(limit)?;
        let lo = LoadOptions { trainable: false, dtype, device: Device::Cpu };
        let load_quant = if direct || on_load { quantize.or(Some(Quant::Q8_0)) } else { None };
        let mut model = Model::load_with(&base, &lo, load_quant)?;
        model.prepare_for_inference()?;
        let tokenizer = if base.path.join("tokenizer.json").is_file() { Some(Tokenizer::load(&base)?) } else { None };
        let defaults = ModelDefaults::read(&base.path)?;
        let mut merged = None;
        let mut adapters = HashMap::new();
        let mut default_adapter = None;
        if record.kind == ModelKind::Lora {
            model.load_adapter(&record.path)?;
            if options.merge_adapter {
                model.merge_lora()?;
                merged = Some(record.clone());
            } else {
                if let Some(slot) = model.take_adapter()? {
                    adapters.insert(record.id.0.clone(), (record.clone(), slot));
                }
                default_adapter = Some(record.id.0.clone());
            }
        }
        if let Some(q) = quantize {
            model.quantize(q)?;
        }
        let config = model.config().clone();
        let (context, vocab) = (config.max_position_embeddings, config.vocab_size);
        let eos = tokenizer.as_ref().map(|t| t.eos_token_ids().to_vec()).unwrap_or_else(|| config_eos(&base.config));
        Ok(Generator {
            inner: Arc::new(Inner {
                store: registry.store().clone(),
                registry: registry.clone(),
                record,
                base,
                merged,
                default_adapter,
                tokenizer,
                eos,
                context,
                vocab,
                config,
                weights,
                dtype_bytes,
                defaults,
                options: options.clone(),
                state: RwLock::new(Loaded { model, adapters, active: None }),
                batcher: Batcher::default(),
            }),
        })
    }

    /// The model this generator was loaded with.
    pub fn model(&self) -> &ModelRecord {
        &self.inner.record
    }

    /// The model whose weights are loaded (the adapter's base for an adapter).
    pub fn base_model(&self) -> &ModelRecord {
        &self.inner.base
    }

    /// The tokenizer (`None` when the model has no tokenizer.json: prompts must be token ids).
    pub fn tokenizer(&self) -> Option<&Tokenizer> {
        self.inner.tokenizer.as_ref()
    }

    /// The model's context length (positions).
    pub fn context_length(&self) -> usize {
        self.inner.context
    }

    /// Tokens that end generation.
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.inner.eos
    }

    /// The adapters loaded unmerged on this generator, by model id.
    pub fn adapters(&self) -> Result<Vec<ModelRecord>> {
        let st = self.read()?;
        let mut v: Vec<ModelRecord> = st.adapters.values().map(|(r, _)| r.clone()).collect();
        v.sort_by(|a, b| a.id.0.cmp(&b.id.0));
        Ok(v)
    }

    /// The settings a request gets for the fields it leaves unset (from the model's
    /// generation_config.json and the built-in defaults).
    pub fn defaults(&self) -> GenerationConfig {
        let d = &self.inner.defaults;
        GenerationConfig {
            max_new_tokens: Some(d.max_new_tokens.unwrap_or(DEFAULT_MAX_NEW_TOKENS)),
            temperature: Some(d.temperature),
            top_k: Some(d.top_k),
            top_p: Some(d.top_p),
            min_p: Some(d.min_p),
            repetition_penalty: Some(d.repetition_penalty),
            ..Default::default()
        }
    }

    /// Loads an adapter of this generator's base so requests can pick it with
    /// [`GenerationConfig::adapter`]. Returns its record.
    pub fn add_adapter(&self, adapter: impl Into<ModelRef>) -> Result<ModelRecord> {
        let rec = self.inner.registry.resolve(adapter)?;
        let mut st = self.write()?;
        self.add_adapter_locked(&mut st, rec)
    }

    fn add_adapter_locked(&self, st: &mut Loaded, rec: ModelRecord) -> Result<ModelRecord> {
        if st.adapters.contains_key(&rec.id.0) {
            return Ok(rec);
        }
        if rec.kind != ModelKind::Lora {
            return Err(Error::config(
                "adapter",
                format!("{} is a {} model, not an adapter", rec.reference(), rec.kind.as_str()),
            ));
        }
        if rec.parent_id.as_ref() != Some(&self.inner.base.id) {
            return Err(Error::config(
                "adapter",
                format!(
                    "adapter {} applies to {}, this generator's base is {}",
                    rec.reference(),
                    rec.parent_id.as_ref().map_or("no model", |p| p.0.as_str()),
                    self.inner.base.reference()
                ),
            ));
        }
        if let Some(m) = &self.inner.merged {
            return Err(Error::config(
                "adapter",
                format!("adapter {} is merged into this generator's weights; load with merge_adapter: false to switch adapters", m.reference()),
            ));
        }
        st.activate(None)?;
        st.model.load_adapter(&rec.path)?;
        let slot = st.model.take_adapter()?.ok_or_else(|| Error::Internal("adapter vanished after loading".into()))?;
        st.adapters.insert(rec.id.0.clone(), (rec.clone(), slot));
        Ok(rec)
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Loaded>> {
        self.inner.state.read().map_err(|_| Error::Internal("generator state poisoned by a panic".into()))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Loaded>> {
        self.inner.state.write().map_err(|_| Error::Internal("generator state poisoned by a panic".into()))
    }

    /// Runs `f` (a forward pass) with adapter `want` (or none) on the layers. Under the
    /// shared lock when it is on already (scoring and a decoding batch on the same
    /// adapter pass at the same time); a switch takes the exclusive lock, and after a
    /// few switches lost to other requests the pass runs under it.
    fn with_adapter<T>(&self, want: Option<&str>, mut f: impl FnMut(&Loaded) -> Result<T>) -> Result<T> {
        for _ in 0..3 {
            {
                let st = self.read()?;
                if st.active.as_deref() == want {
                    return f(&st);
                }
            }
            self.write()?.activate(want)?;
        }
        let mut st = self.write()?;
        st.activate(want)?;
        f(&st)
    }

    /// Checks `cfg` and fills its unset fields. Nothing runs before this passes.
    fn resolve(&self, cfg: &GenerationConfig) -> Result<(Resolved, Option<ModelRecord>)> {
        self.check_still_registered()?;
        let d = &self.inner.defaults;
        let r = Resolved {
            max_new_tokens: cfg.max_new_tokens.or(d.max_new_tokens).unwrap_or(DEFAULT_MAX_NEW_TOKENS),
            temperature: cfg.temperature.unwrap_or(d.temperature),
            top_k: cfg.top_k.unwrap_or(d.top_k),
            top_p: cfg.top_p.unwrap_or(d.top_p),
            min_p: cfg.min_p.unwrap_or(d.min_p),
            repetition_penalty: cfg.repetition_penalty.unwrap_or(d.repetition_penalty),
            // Below 2^53: a seed JavaScript can hold exactly, to pass back and reproduce.
            seed: cfg.seed.unwrap_or_else(|| rand::random::<u64>() >> 11),
            stop: cfg.stop.clone(),
            ignore_eos: cfg.ignore_eos,
        };
        if r.max_new_tokens == 0 {
            return Err(Error::config("max_new_tokens", "must be at least 1"));
        }
        if !(r.temperature.is_finite() && r.temperature >= 0.0) {
            return Err(Error::config("temperature", format!("must be 0 (greedy) or positive, got {}", r.temperature)));
        }
        if !(r.top_p > 0.0 && r.top_p <= 1.0) {
            return Err(Error::config("top_p", format!("must be in (0, 1], got {}", r.top_p)));
        }
        if !(0.0..1.0).contains(&r.min_p) {
            return Err(Error::config("min_p", format!("must be in [0, 1), got {}", r.min_p)));
        }
        if !(r.repetition_penalty.is_finite() && r.repetition_penalty > 0.0) {
            return Err(Error::config(
                "repetition_penalty",
                format!("must be positive (1 = off), got {}", r.repetition_penalty),
            ));
        }
        if let Some(i) = r.stop.iter().position(String::is_empty) {
            return Err(Error::config(format!("stop[{i}]"), "must not be empty"));
        }
        if !r.stop.is_empty() && self.inner.tokenizer.is_none() {
            return Err(Error::config("stop", "stop sequences need a tokenizer; this model has none"));
        }
        let adapter = match cfg.adapter.as_deref() {
            None => None,
            Some(a) => {
                let rec = self.inner.registry.resolve(a).map_err(|e| match e {
                    Error::NotFound { .. } => Error::config("adapter", format!("no model `{a}` in the registry")),
                    other => other,
                })?;
                if self.inner.merged.as_ref().is_some_and(|m| m.id == rec.id) {
                    None
                } else {
                    Some(rec)
                }
            }
        };
        Ok((r, adapter))
    }

    /// Refuses requests once the loaded model (or the adapter merged into it, or its
    /// base) was deleted from the registry: its files may be gone and its usage rows
    /// would point at nothing.
    fn check_still_registered(&self) -> Result<()> {
        let i = &self.inner;
        for rec in std::iter::once(&i.record).chain(Some(&i.base)).chain(i.merged.as_ref()) {
            if !i.registry.is_registered(&rec.id)? {
                // The id alone, as every not_found carries; the model is gone from the catalog.
                return Err(Error::not_found("model", rec.id.0.clone()));
            }
        }
        Ok(())
    }

    /// Loads a request's adapter (if not loaded yet), after its prompts passed the checks.
    fn ensure_adapter(&self, adapter: &Option<ModelRecord>) -> Result<()> {
        if let Some(rec) = adapter {
            let mut st = self.write()?;
            self.add_adapter_locked(&mut st, rec.clone())?;
        }
        Ok(())
    }

    /// Token ids of `prompt`, checked against the vocabulary and the context.
    fn encode(&self, prompt: &Prompt, field: &str) -> Result<Vec<u32>> {
        let tok = || {
            self.inner
                .tokenizer
                .as_ref()
                .ok_or_else(|| Error::config(field, "this model has no tokenizer.json: pass the prompt as token ids"))
        };
        let too_long = |text: &str, t: &Tokenizer| -> Result<()> {
            let at_least = t.min_tokens(text);
            if at_least > self.inner.context {
                return Err(Error::config(
                    field,
                    format!(
                        "is {} bytes, at least {at_least} tokens: longer than the model's context of {} tokens",
                        text.len(),
                        self.inner.context
                    ),
                ));
            }
            Ok(())
        };
        let ids = match prompt {
            Prompt::Text(s) => {
                let t = tok()?;
                too_long(s, t)?;
                t.encode(s, true)?
            }
            Prompt::Chat(m) => {
                if m.is_empty() {
                    return Err(Error::config(field, "holds no messages"));
                }
                if let Some(i) = m.iter().position(|msg| !crate::types::CHAT_ROLES.contains(&msg.role.as_str())) {
                    return Err(Error::config(
                        format!("{field}[{i}].role"),
                        format!("`{}` is not a chat role ({})", m[i].role, crate::types::CHAT_ROLES.join(", ")),
                    ));
                }
                let t = tok()?;
                let text = t.apply_chat_template(m, true)?;
                too_long(&text, t)?;
                t.encode(&text, false)?
            }
            Prompt::Tokens(ids) => ids.clone(),
        };
        if ids.is_empty() {
            return Err(Error::config(field, "is empty (no tokens)"));
        }
        if let Some(bad) = ids.iter().find(|&&i| i as usize >= self.inner.vocab) {
            return Err(Error::config(
                field,
                format!("token id {bad} is outside the vocabulary (0..{})", self.inner.vocab),
            ));
        }
        if ids.len() > self.inner.context {
            return Err(Error::config(
                field,
                format!("is {} tokens, longer than the model's context of {} tokens", ids.len(), self.inner.context),
            ));
        }
        Ok(ids)
    }

    fn request_adapter<'a>(&'a self, explicit: &'a Option<ModelRecord>) -> Option<&'a str> {
        explicit.as_ref().map(|r| r.id.0.as_str()).or(self.inner.default_adapter.as_deref())
    }

    /// The model id a request is recorded under.
    fn used_model(&self, adapter: Option<&str>) -> ModelId {
        match (adapter, &self.inner.merged) {
            (Some(a), _) => ModelId(a.to_string()),
            (None, Some(m)) => m.id.clone(),
            (None, None) => self.inner.base.id.clone(),
        }
    }

    /// Generates a completion of `prompt`.
    pub fn generate(&self, prompt: impl Into<Prompt>, cfg: &GenerationConfig) -> Result<Generation> {
        self.generate_with(prompt, cfg, &mut NoopSink, &CancelToken::new())
    }

    /// [`Generator::generate`] as a task: `task_started {task: "generate", name: <model>,
    /// total: max_new_tokens, unit: "tokens"}`, a `task_progress` per token, then
    /// `task_finished` with the generation's id. Cancelling `cancel` (or a sink error,
    /// e.g. Ctrl-C in Python) stops at the next token with `cancelled`; nothing is
    /// recorded then. Settings are checked before the task starts.
    pub fn generate_with(
        &self,
        prompt: impl Into<Prompt>,
        cfg: &GenerationConfig,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<Generation> {
        let s = self.start(vec![prompt.into()], cfg, GenerationKind::Generate, sink.wants_progress())?;
        let (mut request, r, adapter) = (s.request, s.cfg, s.adapter);
        let name = self.used_model_ref(adapter.as_deref());
        run_task(sink, "generate", &name, Some(s.max_new as u64), "tokens", |rep| {
            let mut reported = 0;
            loop {
                cancel.check()?;
                for n in request.wait(Some(cancel), &mut || rep.poll())? {
                    if n.generated > reported {
                        reported = n.generated;
                        rep.progress(reported as u64)?;
                    }
                    if let Some(done) = n.done {
                        let mut g = self.generation(done?, &r, adapter.as_deref());
                        g.id = self.record(GenerationKind::Generate, Some(&r), adapter.as_deref(), usage_of(&g))?;
                        let id = g.id.as_ref().map(|i| i.0.clone());
                        return Ok((g, id));
                    }
                }
            }
        })
    }

    /// The reference (`name@version`) of the model a request runs.
    fn used_model_ref(&self, adapter: Option<&str>) -> String {
        let id = self.used_model(adapter);
        if id == self.inner.base.id {
            return self.inner.base.reference();
        }
        if let Some(m) = self.inner.merged.as_ref().filter(|m| m.id == id) {
            return m.reference();
        }
        self.read().ok().and_then(|st| st.adapters.get(&id.0).map(|(r, _)| r.reference())).unwrap_or(id.0)
    }

    /// Generates as [`Generator::generate`] does, handing out text as it is produced.
    pub fn stream(&self, prompt: impl Into<Prompt>, cfg: &GenerationConfig) -> Result<TokenStream> {
        let s = self.start(vec![prompt.into()], cfg, GenerationKind::Stream, true)?;
        Ok(TokenStream {
            gen: self.clone(),
            request: s.request,
            cfg: s.cfg,
            adapter: s.adapter,
            prompt_len: s.prompt_lens.first().copied().unwrap_or(0),
            generated: 0,
            chunks: Default::default(),
            done: false,
            result: None,
        })
    }

    /// The most tokens a request of `prompt` tokens generates: its setting, bounded by
    /// the context.
    fn max_new(&self, r: &Resolved, prompt: usize) -> usize {
        r.max_new_tokens.min((self.inner.context + 1).saturating_sub(prompt)).max(1)
    }

    /// Checks a request (settings, then prompts, its memory, then its adapter) and
    /// queues its prompts to join the adapter's decoding batch.
    /// `watch`: the caller looks at every step's news (streams, progress events);
    /// otherwise it is woken only for its results.
    fn start(
        &self,
        prompts: Vec<Prompt>,
        cfg: &GenerationConfig,
        kind: GenerationKind,
        watch: bool,
    ) -> Result<Started> {
        let t0 = Instant::now();
        let (r, adapter) = self.resolve(cfg)?;
        // A batch names its prompts by index, even a batch of one.
        let rows: Vec<Vec<u32>> = match kind {
            GenerationKind::Batch => prompts
                .iter()
                .enumerate()
                .map(|(i, p)| self.encode(p, &format!("prompts[{i}]")))
                .collect::<Result<_>>()?,
            _ => prompts.iter().map(|p| self.encode(p, "prompt")).collect::<Result<_>>()?,
        };
        // What the request needs on its own (in a shared batch, a request that does
        // not fit next to the others waits for rows to leave).
        let width = rows.iter().map(Vec::len).max().unwrap_or(1);
        let max_new = rows.iter().map(|p| self.max_new(&r, p.len())).max().unwrap_or(1);
        let positions = rows.iter().map(|p| p.len() + self.max_new(&r, p.len()) - 1).max().unwrap_or(1);
        let inner = &self.inner;
        memory::decoding(&inner.config, inner.dtype_bytes, rows.len(), width, positions)
            .add("weights", "model", inner.weights)
            .check(inner.store.memory_limit)?;
        self.ensure_adapter(&adapter)?;
        let adapter = self.request_adapter(&adapter).map(str::to_string);
        let prompt_lens = rows.iter().map(Vec::len).collect();
        let request = Request::submit(self, adapter.clone(), rows, r.clone(), t0, watch)?;
        Ok(Started { request, cfg: r, adapter, max_new, prompt_lens })
    }

    /// A finished row as a [`Generation`] (not recorded yet).
    fn generation(&self, f: Finished, r: &Resolved, adapter: Option<&str>) -> Generation {
        Generation {
            id: None,
            model_id: self.used_model(adapter),
            timings: timings(f.ttft, f.end, f.prompt_len, f.generated.len()),
            finish_reason: f.finish,
            stop_sequence: f.stop_sequence,
            prompt_tokens: f.prompt_len,
            generated_tokens: f.generated.len(),
            text: f.text,
            token_ids: f.generated,
            seed: r.sampled().then_some(r.seed),
        }
    }

    /// Generates for several prompts at once (one batch: one forward pass per step for
    /// all rows, shared with concurrent requests). Results are in prompt order; each row
    /// decodes exactly as it would alone (same settings and seed).
    pub fn generate_batch<P: Into<Prompt> + Clone>(
        &self,
        prompts: &[P],
        cfg: &GenerationConfig,
    ) -> Result<Vec<Generation>> {
        self.generate_batch_with(prompts, cfg, &mut NoopSink, &CancelToken::new())
    }

    /// [`Generator::generate_batch`] as a task (`task: "generate_batch"`, progress in
    /// decoding steps), cancellable between steps like [`Generator::generate_with`].
    pub fn generate_batch_with<P: Into<Prompt> + Clone>(
        &self,
        prompts: &[P],
        cfg: &GenerationConfig,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<Vec<Generation>> {
        if prompts.is_empty() {
            return Ok(Vec::new());
        }
        let s = self.start(
            prompts.iter().cloned().map(Into::into).collect(),
            cfg,
            GenerationKind::Batch,
            sink.wants_progress(),
        )?;
        let (mut request, r, adapter) = (s.request, s.cfg, s.adapter);
        let name = self.used_model_ref(adapter.as_deref());
        run_task(sink, "generate_batch", &name, Some(s.max_new as u64), "steps", |rep| {
            let mut rows: Vec<Option<Finished>> = vec![None; prompts.len()];
            let mut steps = 0;
            while rows.iter().any(Option::is_none) {
                cancel.check()?;
                for n in request.wait(Some(cancel), &mut || rep.poll())? {
                    steps = steps.max(n.generated);
                    if let Some(done) = n.done {
                        rows[n.index] = Some(done?);
                    }
                }
                rep.progress(steps as u64)?;
            }
            let mut out: Vec<Generation> =
                rows.into_iter().flatten().map(|f| self.generation(f, &r, adapter.as_deref())).collect();
            let usage = Usage {
                prompt_tokens: out.iter().map(|g| g.prompt_tokens).sum(),
                generated_tokens: out.iter().map(|g| g.generated_tokens).sum(),
                finish: None,
                ttft_ms: out.iter().map(|g| g.timings.ttft_ms).reduce(f64::min),
                duration_ms: out.iter().map(|g| g.timings.total_ms).fold(0.0, f64::max),
                prompts: out.len(),
            };
            let id = self.record(GenerationKind::Batch, Some(&r), adapter.as_deref(), usage)?;
            for g in &mut out {
                g.id = id.clone();
            }
            let first = id.map(|i| i.0);
            Ok((out, first))
        })
    }

    /// Loss and perplexity of each text (tokenised with special tokens, e.g. BOS).
    pub fn score<S: AsRef<str>>(&self, texts: &[S]) -> Result<Vec<Score>> {
        self.score_with(texts, None)
    }

    /// [`Generator::score`] with an adapter picked as in [`GenerationConfig::adapter`].
    pub fn score_with<S: AsRef<str>>(&self, texts: &[S], adapter: Option<&str>) -> Result<Vec<Score>> {
        let t0 = Instant::now();
        let cfg =
            GenerationConfig { adapter: adapter.map(str::to_string), max_new_tokens: Some(1), ..Default::default() };
        let (_, explicit) = self.resolve(&cfg)?;
        let mut all = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let field = format!("texts[{i}]");
            let ids = self.encode(&Prompt::Text(t.as_ref().to_string()), &field)?;
            if ids.len() < 2 {
                return Err(Error::config(field, "needs at least two tokens to score"));
            }
            memory::scoring(&self.inner.config, self.inner.dtype_bytes, ids.len(), &field)
                .add("weights", "model", self.inner.weights)
                .check(self.inner.store.memory_limit)?;
            all.push(ids);
        }
        self.ensure_adapter(&explicit)?;
        let adapter = self.request_adapter(&explicit).map(str::to_string);
        let mut out = Vec::with_capacity(all.len());
        for ids in &all {
            let x = Tensor::new(ids.as_slice(), &Device::Cpu)?.unsqueeze(0)?;
            let labels = x.to_dtype(DType::I64)?;
            let loss = self
                .with_adapter(adapter.as_deref(), |st| st.model.loss(&x, &labels, crate::models::ForwardMode::Infer))?;
            let loss = f64::from(loss.to_dtype(DType::F32)?.to_scalar::<f32>()?);
            if !loss.is_finite() {
                return Err(Error::Compute(format!(
                    "the loss of texts[{}] is {loss}: the model's weights or activations are not finite \
                     (NaN or infinite values, e.g. from a diverged training run)",
                    out.len()
                )));
            }
            out.push(Score { loss, perplexity: loss.exp(), tokens: ids.len() - 1 });
        }
        let usage = Usage {
            prompt_tokens: all.iter().map(Vec::len).sum(),
            duration_ms: t0.elapsed().as_secs_f64() * 1e3,
            ..Default::default()
        };
        self.record(GenerationKind::Score, None, adapter.as_deref(), usage)?;
        Ok(out)
    }

    /// Writes one `generations` row (when recording is on); returns its id. `r`: the
    /// request's resolved settings (none for scoring).
    fn record(
        &self,
        kind: GenerationKind,
        r: Option<&Resolved>,
        adapter: Option<&str>,
        u: Usage,
    ) -> Result<Option<GenerationId>> {
        if !self.inner.options.record {
            return Ok(None);
        }
        let mut params = r.map_or_else(|| Value::Object(Default::default()), |r| r.params(adapter));
        if let (GenerationKind::Batch, Value::Object(m)) = (kind, &mut params) {
            m.insert("prompts".into(), Value::from(u.prompts));
        }
        let rec = GenerationRecord {
            id: GenerationId(new_id("gen")),
            model_id: self.used_model(adapter),
            base_model_id: self.inner.base.id.clone(),
            kind,
            params,
            prompt_tokens: u.prompt_tokens as u64,
            generated_tokens: u.generated_tokens as u64,
            finish_reason: u.finish,
            ttft_ms: u.ttft_ms,
            duration_ms: u.duration_ms,
            created_at: now(),
        };
        self.inner.store.catalog.write(|tx| sql::insert(tx, &rec))?;
        Ok(Some(rec.id))
    }
}

/// The figures of one recorded call.
#[derive(Debug, Default)]
struct Usage {
    prompt_tokens: usize,
    generated_tokens: usize,
    /// Single generations only (a batch's rows each have their own).
    finish: Option<FinishReason>,
    ttft_ms: Option<f64>,
    duration_ms: f64,
    prompts: usize,
}

/// The catalog figures of one single generation.
fn usage_of(g: &Generation) -> Usage {
    Usage {
        prompt_tokens: g.prompt_tokens,
        generated_tokens: g.generated_tokens,
        finish: Some(g.finish_reason),
        ttft_ms: Some(g.timings.ttft_ms),
        duration_ms: g.timings.total_ms,
        prompts: 1,
    }
}

/// A request checked and queued.
struct Started {
    request: Request,
    cfg: Resolved,
    adapter: Option<String>,
    /// The most tokens any of its prompts generates.
    max_new: usize,
    prompt_lens: Vec<usize>,
}

/// EOS ids from config.json when there is no tokenizer.
fn config_eos(config: &Value) -> Vec<u32> {
    crate::tokenizer::ids_of(config.get("eos_token_id"))
}

fn timings(ttft: std::time::Duration, end: std::time::Duration, prompt: usize, generated: usize) -> Timings {
    let ttft_ms = ttft.as_secs_f64() * 1e3;
    let total_ms = end.as_secs_f64() * 1e3;
    let decode_ms = (total_ms - ttft_ms).max(0.0);
    let per_s = |n: usize, ms: f64| if ms > 0.0 { n as f64 / (ms / 1e3) } else { 0.0 };
    Timings {
        ttft_ms,
        decode_ms,
        total_ms,
        prompt_tokens_per_s: per_s(prompt, ttft_ms),
        decode_tokens_per_s: per_s(generated.saturating_sub(1), decode_ms),
    }
}

/// A generation in progress: an iterator of [`StreamChunk`]s. After the last one,
/// [`TokenStream::generation`] holds the full result. Dropping it early stops
/// generating (its row leaves the batch; nothing is recorded then).
pub struct TokenStream {
    gen: Generator,
    request: Request,
    cfg: Resolved,
    adapter: Option<String>,
    prompt_len: usize,
    generated: usize,
    chunks: std::collections::VecDeque<StreamChunk>,
    done: bool,
    result: Option<Generation>,
}

impl std::fmt::Debug for TokenStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenStream")
            .field("prompt_tokens", &self.prompt_tokens())
            .field("generated_tokens", &self.generated_tokens())
            .field("done", &self.done)
            .finish()
    }
}

impl TokenStream {
    /// The result, once the stream is exhausted.
    pub fn generation(&self) -> Option<&Generation> {
        self.result.as_ref()
    }

    /// Tokens generated so far.
    pub fn generated_tokens(&self) -> usize {
        self.result.as_ref().map_or(self.generated, |g| g.generated_tokens)
    }

    /// Prompt length in tokens.
    pub fn prompt_tokens(&self) -> usize {
        self.prompt_len
    }
}

impl Iterator for TokenStream {
    type Item = Result<StreamChunk>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(c) = self.chunks.pop_front() {
                return Some(Ok(c));
            }
            if self.done {
                return None;
            }
            let news = match self.request.wait(None, &mut || Ok(())) {
                Ok(news) => news,
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            };
            for n in news {
                self.chunks.extend(n.chunks);
                self.generated = n.generated;
                if let Some(done) = n.done {
                    self.done = true;
                    let g = done.and_then(|f| {
                        let mut g = self.gen.generation(f, &self.cfg, self.adapter.as_deref());
                        g.id = self.gen.record(
                            GenerationKind::Stream,
                            Some(&self.cfg),
                            self.adapter.as_deref(),
                            usage_of(&g),
                        )?;
                        Ok(g)
                    });
                    match g {
                        Ok(g) => self.result = Some(g),
                        Err(e) => {
                            self.chunks.clear();
                            return Some(Err(e));
                        }
                    }
                }
            }
        }
    }
}

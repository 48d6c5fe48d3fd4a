//! Text-to-image with a registered Stable Diffusion model: [`ImageGenerator`].
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::{Home, ImageGeneratorOptions, ImageRequest};
//! let home = Home::open("my-home")?;
//! let gen = home.image_generator("tiny-sd", &ImageGeneratorOptions::default())?;
//! let out = gen.generate(&ImageRequest { steps: Some(20), seed: Some(1), ..ImageRequest::new("a red circle") })?;
//! std::fs::write("circle.png", &out.images[0].png).unwrap();
//! # Ok(()) }
//! ```
//!
//! **Adapters per request.** A base model (or a LoRA loaded unmerged) serves requests
//! with any LoRA of the same base at any scale ([`ImageRequest::adapters`]). Each
//! adapter's file is read once and cached; its text-encoder part, when it has one, goes
//! to the text encoder and the request's scale applies to both (as diffusers'
//! `cross_attention_kwargs["scale"]`). The pipeline holds one adapter at a time:
//! requests that want the adapter (and scale) currently attached run concurrently
//! under a shared lock; a request that wants another one waits for the running ones,
//! swaps it in under the exclusive lock, then runs. So a request never sees another
//! request's adapter, and requests with different adapters run one after the other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Instant;

use serde_json::{json, Value};

use crate::catalog::generations as sql;
use crate::diffusion::{GeneratedImage, ImageSettings, LoraFile, StableDiffusionPipeline, Txt2ImgRequest};
use crate::error::{Error, Location, Result};
use crate::events::{run_task, CancelToken, EventSink, NoopSink};
use crate::models::memory;
use crate::models::LoadOptions;
use crate::registry::ModelRegistry;
use crate::store::Store;
use crate::types::{
    Family, GenerationId, GenerationKind, GenerationRecord, ImageGeneratorOptions, ImageRequest, ModelId, ModelKind,
    ModelRecord, ModelRef,
};
use crate::util::{new_id, now, AllocatorTuning};

/// One generated image.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedPng {
    /// The PNG file, with the settings in its text chunks (`parameters`, `anneal`).
    pub png: Vec<u8>,
    /// The pixels: RGB, 8 bits per channel, row-major `height x width x 3`.
    pub rgb: Vec<u8>,
    pub width: usize,
    pub height: usize,
    /// The seed that regenerates this image alone.
    pub seed: Option<u64>,
    pub settings: ImageSettings,
}

/// What [`ImageGenerator::generate`] returns.
#[derive(Debug, Clone)]
pub struct ImageGeneration {
    /// The catalog row (`None` when recording is off).
    pub id: Option<GenerationId>,
    /// The model that ran (`name@version`; the adapter's when one was applied).
    pub model: String,
    /// Prompt by prompt, `num_images` each.
    pub images: Vec<GeneratedPng>,
    /// The base seed (image `i` used `seed + i`).
    pub seed: u64,
    /// Truncated prompts, an ignored negative prompt, a substituted scheduler.
    pub warnings: Vec<String>,
    pub duration_ms: f64,
}

/// The pipeline and the adapter attached to its UNet.
struct Loaded {
    pipeline: StableDiffusionPipeline,
    /// The attached (unmerged) adapter and its scale.
    active: Option<(ModelId, f64)>,
}

struct Inner {
    store: Arc<Store>,
    registry: ModelRegistry,
    /// The model asked for (a base, a full fine-tune, or a LoRA).
    record: ModelRecord,
    /// The pipeline whose weights are loaded.
    base: ModelRecord,
    /// The LoRA merged at load.
    merged: Option<ModelRecord>,
    /// The adapter of requests that name none (a LoRA loaded unmerged).
    default_adapter: Option<ModelRecord>,
    options: ImageGeneratorOptions,
    loaded: RwLock<Loaded>,
    /// LoRA files by model id, read once.
    adapters: Mutex<HashMap<String, (ModelRecord, Arc<LoraFile>)>>,
}

/// A Stable Diffusion model loaded for text-to-image. Cheap to clone; `Send + Sync`.
#[derive(Clone)]
pub struct ImageGenerator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ImageGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageGenerator").field("model", &self.inner.record.reference()).finish()
    }
}

/// The weights file of a registered LoRA.
fn lora_file(rec: &ModelRecord) -> Result<LoraFile> {
    let f = rec.files.iter().find(|f| f.name.ends_with(".safetensors")).ok_or_else(|| {
        Error::data(Location::file(&rec.path), format!("{} has no LoRA weights file", rec.reference()))
    })?;
    LoraFile::read(rec.path.join(&f.name))
}

/// The pipeline's names of request fields, as [`ImageRequest`] names them.
fn rename_fields(e: Error) -> Error {
    match e {
        Error::InvalidConfig { field, reason } => {
            let field = match field.as_str() {
                "num_inference_steps" => "steps".to_string(),
                "num_images_per_prompt" => "num_images".to_string(),
                "negative_prompts" => "negative_prompt".to_string(),
                _ => field,
            };
            Error::InvalidConfig { field, reason }
        }
        other => other,
    }
}

impl ImageGenerator {
    /// Loads a registered stable-diffusion model: a base or full fine-tune, or a LoRA
    /// whose parent is one (unmerged at scale 1, the default adapter of every request;
    /// merged with `merge_adapter`). The weights (at f32) must fit the home's memory limit.
    pub fn load(
        registry: &ModelRegistry,
        model: impl Into<ModelRef>,
        options: &ImageGeneratorOptions,
    ) -> Result<ImageGenerator> {
        let record = registry.resolve(model)?;
        if record.family != Family::StableDiffusion {
            return Err(Error::config(
                "model",
                format!(
                    "{} is a {} model; text-to-image needs a stable-diffusion model (use a generator for text)",
                    record.reference(),
                    record.family.as_str()
                ),
            ));
        }
        let base = match record.kind {
            ModelKind::Lora => {
                let parent = record.parent_id.clone().ok_or_else(|| {
                    Error::data(
                        Location::file(&record.path).field("parent_id"),
                        format!("adapter {} has no base model", record.reference()),
                    )
                })?;
                registry.get(&parent)?
            }
            _ => record.clone(),
        };
        let limit = registry.store().memory_limit;
        let weights = u128::from(base.params).saturating_mul(4);
        memory::Estimate::new().add("weights", "model", weights).check(limit)?;
        let sampling_limit = u64::try_from(u128::from(limit).saturating_sub(weights)).unwrap_or(u64::MAX).max(1);
        let mut pipeline =
            StableDiffusionPipeline::load(&base.path, &LoadOptions::default())?.with_memory_limit(sampling_limit);
        let mut merged = None;
        let mut default_adapter = None;
        let mut adapters = HashMap::new();
        if record.kind == ModelKind::Lora {
            let file = lora_file(&record)?;
            if options.merge_adapter {
                pipeline.load_lora_file(&file)?;
                pipeline.merge_lora()?;
                merged = Some(record.clone());
            } else {
                adapters.insert(record.id.0.clone(), (record.clone(), Arc::new(file)));
                default_adapter = Some(record.clone());
            }
        }
        Ok(ImageGenerator {
            inner: Arc::new(Inner {
                store: registry.store().clone(),
                registry: registry.clone(),
                record,
                base,
                merged,
                default_adapter,
                options: options.clone(),
                loaded: RwLock::new(Loaded { pipeline, active: None }),
                adapters: Mutex::new(adapters),
            }),
        })
    }

    /// The model this generator was loaded with.
    pub fn model(&self) -> &ModelRecord {
        &self.inner.record
    }

    /// The pipeline whose weights are loaded (the adapter's base for a LoRA).
    pub fn base_model(&self) -> &ModelRecord {
        &self.inner.base
    }

    /// Image sizes must be multiples of this (the VAE's factor times the UNet's downsampling).
    pub fn size_multiple(&self) -> Result<usize> {
        Ok(self.read()?.pipeline.size_multiple())
    }

    /// `(height, width)` of a request that gives none.
    pub fn default_size(&self) -> Result<(usize, usize)> {
        Ok(self.read()?.pipeline.default_size())
    }

    fn read(&self) -> Result<RwLockReadGuard<'_, Loaded>> {
        self.inner.loaded.read().map_err(|_| Error::Internal("image generator lock poisoned".into()))
    }

    fn write(&self) -> Result<RwLockWriteGuard<'_, Loaded>> {
        self.inner.loaded.write().map_err(|_| Error::Internal("image generator lock poisoned".into()))
    }

    /// Generates images for `req`.
    pub fn generate(&self, req: &ImageRequest) -> Result<ImageGeneration> {
        self.generate_with(req, &mut NoopSink, &CancelToken::new())
    }

    /// [`ImageGenerator::generate`] as a task: `task_started {task: "txt2img", name:
    /// <model>, total: steps, unit: "steps"}`, a `task_progress` per denoising step,
    /// then `task_finished` with the catalog row's id. Cancelling `cancel` (or a sink
    /// error) stops at the next step with `cancelled`; nothing is recorded then. The
    /// request is checked before the task starts (the memory estimate inside it).
    pub fn generate_with(
        &self,
        req: &ImageRequest,
        sink: &mut dyn EventSink,
        cancel: &CancelToken,
    ) -> Result<ImageGeneration> {
        let _malloc = AllocatorTuning::acquire();
        let t0 = Instant::now();
        let adapter = self.request_adapter(req)?;
        let used = match &adapter {
            Some((rec, _, scale)) if *scale != 1.0 => format!("{} (scale {scale})", rec.reference()),
            Some((rec, _, _)) => rec.reference(),
            None => self.inner.merged.as_ref().unwrap_or(&self.inner.base).reference(),
        };
        let t2i = Txt2ImgRequest {
            prompts: req.prompts.clone(),
            negative_prompts: req.negative_prompt.iter().cloned().collect(),
            guidance_scale: req.guidance_scale.unwrap_or(7.5),
            num_inference_steps: req.steps.unwrap_or(50),
            scheduler: req.scheduler.clone(),
            seed: Some(req.seed.unwrap_or_else(|| rand::random::<u32>() as u64)),
            height: req.height,
            width: req.width,
            num_images_per_prompt: req.num_images.unwrap_or(1),
            clip_skip: req.clip_skip,
            model: Some(used.clone()),
            latents: None,
        };
        if let Some(a) = &req.adapters {
            for (i, x) in a.iter().enumerate() {
                if !x.scale.is_finite() {
                    return Err(Error::config(format!("adapters[{i}].scale"), "must be a finite number"));
                }
            }
        }
        self.read()?.pipeline.estimate_memory(&t2i).map_err(rename_fields)?;
        let total = t2i.num_inference_steps as u64;
        run_task(sink, "txt2img", &used, Some(total), "steps", |rep| {
            let out = loop {
                cancel.check()?;
                {
                    let g = self.read()?;
                    let want = adapter.as_ref().map(|(r, _, s)| (r.id.clone(), *s));
                    if g.active == want {
                        let mut progress = |step: usize, _total: usize| rep.progress(step as u64);
                        break g.pipeline.txt2img(&t2i, &mut progress, cancel).map_err(rename_fields)?;
                    }
                }
                let mut w = self.write()?;
                swap(&mut w, adapter.as_ref().map(|(r, f, s)| (&r.id, f.as_ref(), *s)))?;
            };
            let images = out
                .images
                .into_iter()
                .map(|img: GeneratedImage| {
                    Ok(GeneratedPng {
                        png: img.to_png()?,
                        width: img.width,
                        height: img.height,
                        seed: img.settings.seed,
                        settings: img.settings,
                        rgb: img.rgb,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let duration_ms = t0.elapsed().as_secs_f64() * 1000.0;
            let mut g = ImageGeneration {
                id: None,
                model: used.clone(),
                images,
                seed: out.seed,
                warnings: out.warnings,
                duration_ms,
            };
            g.id = self.record(&t2i, &adapter, &g)?;
            let id = g.id.as_ref().map(|i| i.0.clone());
            Ok((g, id))
        })
    }

    /// The adapter of a request: (record, file, scale).
    fn request_adapter(&self, req: &ImageRequest) -> Result<Option<(ModelRecord, Arc<LoraFile>, f64)>> {
        let inner = &self.inner;
        let wanted: Vec<(String, f64, String)> = match &req.adapters {
            None => match &inner.default_adapter {
                Some(r) => vec![(r.id.0.clone(), 1.0, "model".to_string())],
                None => Vec::new(),
            },
            Some(a) => {
                if a.len() > 1 {
                    return Err(Error::config(
                        "adapters",
                        format!("{} adapters: one adapter per request is supported", a.len()),
                    ));
                }
                if let (Some(m), false) = (&inner.merged, a.is_empty()) {
                    return Err(Error::config(
                        "adapters",
                        format!(
                            "the adapter {} is merged into this generator's weights; load it with merge_adapter = false \
                             to switch adapters per request",
                            m.reference()
                        ),
                    ));
                }
                a.iter().enumerate().map(|(i, x)| (x.model.clone(), x.scale, format!("adapters[{i}].model"))).collect()
            }
        };
        let Some((model, scale, field)) = wanted.into_iter().next() else { return Ok(None) };
        if !scale.is_finite() {
            return Err(Error::config(field.replace(".model", ".scale"), "must be a finite number"));
        }
        if let Some((rec, file)) = self.cached(&model)? {
            return Ok(Some((rec, file, scale)));
        }
        let rec = inner.registry.resolve(model.as_str()).map_err(|e| match e {
            Error::NotFound { .. } => Error::config(field.clone(), format!("{e}")),
            other => other,
        })?;
        if let Some((rec, file)) = self.cached(&rec.id.0)? {
            return Ok(Some((rec, file, scale)));
        }
        if rec.kind != ModelKind::Lora || rec.parent_id.as_ref() != Some(&inner.base.id) {
            return Err(Error::config(
                field,
                format!(
                    "{} is not a LoRA of {} (this generator's base model)",
                    rec.reference(),
                    inner.base.reference()
                ),
            ));
        }
        let file = Arc::new(lora_file(&rec)?);
        let mut cache = inner.adapters.lock().map_err(|_| Error::Internal("adapter cache lock poisoned".into()))?;
        cache.insert(rec.id.0.clone(), (rec.clone(), file.clone()));
        Ok(Some((rec, file, scale)))
    }

    fn cached(&self, key: &str) -> Result<Option<(ModelRecord, Arc<LoraFile>)>> {
        let cache = self.inner.adapters.lock().map_err(|_| Error::Internal("adapter cache lock poisoned".into()))?;
        Ok(cache.get(key).map(|(r, f)| (r.clone(), f.clone())))
    }

    /// Records the call in the catalog (unless recording is off).
    fn record(
        &self,
        t2i: &Txt2ImgRequest,
        adapter: &Option<(ModelRecord, Arc<LoraFile>, f64)>,
        g: &ImageGeneration,
    ) -> Result<Option<GenerationId>> {
        if !self.inner.options.record {
            return Ok(None);
        }
        let first = g.images.first().map(|i| &i.settings);
        let params: Value = json!({
            "prompts": t2i.prompts,
            "negative_prompt": t2i.negative_prompts.first(),
            "guidance_scale": t2i.guidance_scale,
            "steps": t2i.num_inference_steps,
            "scheduler": first.map(|s| s.scheduler.clone()),
            "seed": g.seed,
            "width": first.map(|s| s.width),
            "height": first.map(|s| s.height),
            "num_images": t2i.num_images_per_prompt,
            "clip_skip": t2i.clip_skip,
            "adapter": adapter.as_ref().map(|(r, _, s)| json!({"model": r.reference(), "scale": s})),
        });
        let model_id = match adapter {
            Some((r, _, _)) => r.id.clone(),
            None => self.inner.merged.as_ref().unwrap_or(&self.inner.base).id.clone(),
        };
        let rec = GenerationRecord {
            id: GenerationId(new_id("gen")),
            model_id,
            base_model_id: self.inner.base.id.clone(),
            kind: GenerationKind::Txt2Img,
            params,
            prompt_tokens: 0,
            generated_tokens: 0,
            finish_reason: None,
            ttft_ms: None,
            duration_ms: g.duration_ms,
            created_at: now(),
        };
        self.inner.store.catalog.write(|tx| sql::insert(tx, &rec))?;
        Ok(Some(rec.id))
    }
}

/// Attaches `want` (adapter id, file, scale) to the pipeline (UNet and, when the file
/// has a part for it, text encoder) in place of what is attached.
fn swap(l: &mut Loaded, want: Option<(&ModelId, &LoraFile, f64)>) -> Result<()> {
    let pipe = &mut l.pipeline;
    let same = matches!((&l.active, &want), (Some((a, _)), Some((b, _, _))) if a == *b);
    if l.active.is_some() && !same {
        pipe.remove_lora()?;
        l.active = None;
    }
    if let Some((id, file, scale)) = want {
        if l.active.is_none() {
            pipe.load_lora_file(file)?;
            l.active = Some((id.clone(), 1.0));
        }
        if l.active.as_ref().is_some_and(|(_, s)| *s != scale) {
            pipe.set_lora_scale(scale)?;
            l.active = Some((id.clone(), scale));
        }
    }
    Ok(())
}

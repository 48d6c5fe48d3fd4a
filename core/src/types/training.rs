//! Training: jobs, their states and records, metrics, reports, and the job spec.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::continual::ClassifierConfig;
use super::event::ErrorInfo;
use super::ids::{DatasetId, JobId, ModelId, ModelRef};
use super::model::{IfExists, LoraConfig};
use super::names::named_enum;
use crate::error::{Error, Result};
use crate::util;

/// A running job whose heartbeat is older than this is reported `interrupted`.
pub const HEARTBEAT_STALE_SECS: u64 = 30;

named_enum! {
    /// A job's state.
    pub enum JobStatus("status") {
        Pending = "pending",
        Running = "running",
        Completed = "completed",
        Failed = "failed",
        Cancelled = "cancelled",
        /// Stored as running, but its process is gone (stale heartbeat): resumable.
        Interrupted = "interrupted",
    }
}

impl JobStatus {
    /// Whether [`crate::TrainingEngine::resume`] accepts a job in this state.
    pub fn is_resumable(self) -> bool {
        matches!(self, JobStatus::Failed | JobStatus::Cancelled | JobStatus::Interrupted | JobStatus::Pending)
    }
}

named_enum! {
    /// What a metrics point measures.
    pub enum MetricKind("kind") {
        /// An optimiser step's training loss.
        Train = "train",
        /// An evaluation's loss.
        Eval = "eval",
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobRecord {
    pub id: JobId,
    pub status: JobStatus,
    /// `None` once the base model was deleted (forced).
    pub base_model_id: Option<ModelId>,
    pub dataset_id: Option<DatasetId>,
    pub eval_dataset_id: Option<DatasetId>,
    pub output_model_id: Option<ModelId>,
    pub spec: TrainSpec,
    pub progress: f64,
    pub epoch: u32,
    pub step: u64,
    pub total_steps: u64,
    pub tokens: u64,
    pub loss: Option<f64>,
    pub eval_loss: Option<f64>,
    pub lr: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    /// A preview of the sequence being trained on.
    pub sample: Option<String>,
    /// Unix milliseconds of the runner's last sign of life.
    pub heartbeat_at: Option<i64>,
    pub runner_pid: Option<u32>,
    pub cancel_requested: bool,
    pub error: Option<ErrorInfo>,
    /// The latest checkpoint directory, relative to the home.
    pub checkpoint: Option<String>,
    /// Image models: the latest validation image (a PNG grid of the validation
    /// prompts), relative to the home; the dashboards' "current image".
    #[serde(default)]
    pub image: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
}

/// Filters for [`TrainingEngine::jobs`]; every set field must match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct JobFilter {
    /// Status as reported (so `interrupted` finds stale running jobs).
    pub status: Option<JobStatus>,
    pub base_model: Option<ModelId>,
    pub dataset: Option<DatasetId>,
}

/// A log line of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JobLog {
    pub at: String,
    pub level: String,
    pub message: String,
}

/// One point of a job's metrics time series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MetricPoint {
    pub kind: MetricKind,
    pub step: u64,
    pub epoch: u32,
    /// Training loss of the step, or the eval loss.
    pub loss: f64,
    pub lr: Option<f64>,
    pub tokens_per_sec: Option<f64>,
    pub at: String,
}

/// The result of a successful run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TrainReport {
    pub job_id: JobId,
    /// The registered output model.
    pub model: ModelId,
    /// The same id under the name events and job records use (`job_finished.model_id`).
    pub model_id: ModelId,
    /// Loss of the last optimiser step.
    pub final_loss: f64,
    /// Last eval loss, when there was eval data.
    pub eval_loss: Option<f64>,
    pub steps: u64,
    /// Real (non-padding) tokens trained on.
    pub tokens: u64,
    pub duration_s: f64,
}

/// Full fine-tuning, a LoRA adapter or a tabular classifier. JSON: a name with the
/// method's defaults (`"full"`, `"lora"`, `"classifier"`), or the method with settings
/// (`{"lora": {"r": 16}}`, `{"classifier": {"model": "mlp"}}`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Every weight is trained; the output is a `full` model.
    Full,
    /// A LoRA adapter is trained on frozen base weights; the output is a `lora` model
    /// whose parent is the base.
    Lora(LoraConfig),
    /// A tabular classifier fitted from scratch on a `tabular` dataset (no base); the
    /// output is a `classifier` model. JSON: `{"classifier": {"model": "mlp"}}`.
    Classifier(ClassifierConfig),
}

/// The method names, in the order of [`Method`]'s variants.
const METHOD_NAMES: &[&str] = &["full", "lora", "classifier"];

impl<'de> Deserialize<'de> for Method {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::{self, IgnoredAny, MapAccess, Visitor};

        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Method;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"full\", \"lora\", \"classifier\", or one of them with settings ({\"lora\": {...}})")
            }

            fn visit_str<E: de::Error>(self, s: &str) -> std::result::Result<Method, E> {
                match s {
                    "full" => Ok(Method::Full),
                    "lora" => Ok(Method::Lora(LoraConfig::default())),
                    "classifier" => Ok(Method::Classifier(ClassifierConfig::default())),
                    other => Err(E::unknown_variant(other, METHOD_NAMES)),
                }
            }

            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> std::result::Result<Method, A::Error> {
                let Some(key) = m.next_key::<String>()? else {
                    return Err(de::Error::custom(
                        "an empty object names no method: use \"full\", \"lora\" or \"classifier\"",
                    ));
                };
                let method = match key.as_str() {
                    "full" => {
                        m.next_value::<IgnoredAny>()?;
                        Method::Full
                    }
                    "lora" => Method::Lora(m.next_value()?),
                    "classifier" => Method::Classifier(m.next_value()?),
                    other => return Err(de::Error::unknown_variant(other, METHOD_NAMES)),
                };
                if let Some(extra) = m.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "one method at a time: `{key}` and `{extra}` were both given"
                    )));
                }
                Ok(method)
            }
        }
        d.deserialize_any(V)
    }
}

impl JsonSchema for Method {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Method".into()
    }

    fn json_schema(g: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let lora = g.subschema_for::<LoraConfig>();
        let classifier = g.subschema_for::<ClassifierConfig>();
        schemars::json_schema!({
            "description": "Full fine-tuning, a LoRA adapter or a tabular classifier: a name (the method with its defaults) or the method with settings.",
            "oneOf": [
                { "type": "string", "enum": METHOD_NAMES },
                {
                    "type": "object",
                    "properties": { "lora": lora },
                    "required": ["lora"],
                    "additionalProperties": false
                },
                {
                    "type": "object",
                    "properties": { "classifier": classifier },
                    "required": ["classifier"],
                    "additionalProperties": false
                }
            ]
        })
    }
}

impl Method {
    pub fn as_str(&self) -> &'static str {
        match self {
            Method::Full => "full",
            Method::Lora(_) => "lora",
            Method::Classifier(_) => "classifier",
        }
    }
}

named_enum! {
    /// Learning-rate schedule after the linear warmup.
    #[derive(Default)]
    pub enum Schedule("schedule") {
        Constant = "constant",
        /// Linear decay to 0 at the last step (transformers' default).
        #[default]
        Linear = "linear",
        /// Half-cosine decay to 0 at the last step.
        Cosine = "cosine",
    }
}

named_enum! {
    /// Mixed precision for a language model's training (accelerate's and diffusers'
    /// `mixed_precision`): `bf16` multiplies every linear layer's (LoRA's and the LM
    /// head's) inputs and weights rounded to bfloat16 and sums in f32, forward and
    /// backward, as PyTorch's CPU autocast does for linear layers; the weights, their
    /// gradients, the optimizer state, attention, norms and the loss stay f32.
    #[derive(Default)]
    pub enum MixedPrecision("mixed_precision") {
        /// Everything in f32.
        #[default]
        No = "no",
        Bf16 = "bf16",
    }
}

named_enum! {
    /// How a training image becomes a square (or bucketed) training sample.
    #[derive(Default)]
    pub enum ImageCrop("crop") {
        /// Shorter side resized to `resolution`, then the centre cut (diffusers' default).
        #[default]
        Center = "center",
        /// Shorter side resized to `resolution`, then a random cut per step.
        Random = "random",
        /// Aspect-ratio buckets: each image resized to the bucket (of about
        /// `resolution`² pixels, sides multiples of the model's size multiple) nearest its
        /// aspect ratio, centre cut; a batch holds images of one bucket.
        Buckets = "buckets",
    }
}

/// Most DreamBooth class images a job renders and keeps.
pub const MAX_CLASS_IMAGES: usize = 10_000;
/// Most denoising steps of a validation or class image.
pub const MAX_VALIDATION_STEPS: usize = 1_000;
/// Most validation prompts (one grid cell each).
pub const MAX_VALIDATION_PROMPTS: usize = 64;

/// Options of image (diffusion) training; every field has a default. DreamBooth is
/// `instance_prompt` (with `class_prompt` for prior preservation) with either method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImageTrainOptions {
    /// Side of the training images in pixels (buckets: of the bucket area). Default: the
    /// model's default size (UNet `sample_size` x VAE factor). Must be a multiple of the
    /// model's size multiple (VAE factor x UNet downsampling).
    pub resolution: Option<usize>,
    pub crop: ImageCrop,
    /// Flip half of the images horizontally (per step, from the seed). Default false.
    pub random_flip: bool,
    /// Min-SNR-gamma loss weighting (diffusers' `--snr_gamma`; 5.0 is the usual value).
    /// Default: unweighted MSE.
    pub snr_gamma: Option<f64>,
    /// Train the text encoder with the UNet: every weight in a full fine-tune (a
    /// from-scratch preset's encoder starts random); with LoRA, an adapter of the same
    /// rank and alpha on its attention projections (`q_proj`, `k_proj`, `v_proj`,
    /// `out_proj`, or the LoRA's `target_modules` when they name encoder layers), saved
    /// in the same file. Default false.
    pub train_text_encoder: bool,
    /// Share of training captions replaced by the empty prompt at each step (diffusers'
    /// `--proportion_empty_prompts`), so classifier-free guidance has an unconditional
    /// model. Default 0.
    pub caption_dropout: f64,
    /// Offset noise (diffusers' `--noise_offset`; 0.05-0.1 helps very dark or bright
    /// images). Default 0.
    pub noise_offset: f64,
    /// DreamBooth: the prompt of every training image (e.g. "a photo of sks dog"),
    /// replacing the dataset's captions.
    pub instance_prompt: Option<String>,
    /// DreamBooth prior preservation: the class prompt (e.g. "a photo of a dog"). The
    /// base model renders `num_class_images` for it before training (kept under the job),
    /// and each step adds `prior_loss_weight` x their loss.
    pub class_prompt: Option<String>,
    /// Default 50.
    pub num_class_images: usize,
    /// Default 1.0.
    pub prior_loss_weight: f64,
    /// Prompts rendered with a fixed seed every `validation_every` steps and at the end,
    /// stored under the job as one PNG grid; the step events and the job row point to
    /// the latest one.
    pub validation_prompts: Vec<String>,
    /// Default: only at the end.
    pub validation_every: Option<u64>,
    /// Denoising steps of validation (and class) images. Default 20.
    pub validation_steps: usize,
    /// Classifier-free guidance of validation (and class) images. Default 7.5.
    pub validation_guidance_scale: f64,
    /// Sampler of validation (and class) images. Default: the pipeline's own.
    pub validation_scheduler: Option<String>,
    /// Seed of validation images. Default: the job's seed.
    pub validation_seed: Option<u64>,
}

impl Default for ImageTrainOptions {
    fn default() -> Self {
        Self {
            resolution: None,
            crop: ImageCrop::Center,
            random_flip: false,
            snr_gamma: None,
            train_text_encoder: false,
            caption_dropout: 0.0,
            noise_offset: 0.0,
            instance_prompt: None,
            class_prompt: None,
            num_class_images: 50,
            prior_loss_weight: 1.0,
            validation_prompts: Vec::new(),
            validation_every: None,
            validation_steps: 20,
            validation_guidance_scale: 7.5,
            validation_scheduler: None,
            validation_seed: None,
        }
    }
}

impl ImageTrainOptions {
    /// Checks ranges (InvalidConfig naming the field under `image.`).
    pub fn validate(&self) -> Result<()> {
        let f = |name: &str| format!("image.{name}");
        if self.resolution == Some(0) {
            return Err(Error::config(f("resolution"), "must be > 0"));
        }
        if let Some(g) = self.snr_gamma {
            positive(&f("snr_gamma"), g)?;
        }
        if !(0.0..1.0).contains(&self.caption_dropout) {
            return Err(Error::config(
                f("caption_dropout"),
                format!("must be in [0, 1), got {}", self.caption_dropout),
            ));
        }
        if !(self.noise_offset.is_finite() && self.noise_offset >= 0.0) {
            return Err(Error::config(f("noise_offset"), format!("must be >= 0, got {}", self.noise_offset)));
        }
        if self.instance_prompt.as_deref().is_some_and(|p| p.trim().is_empty()) {
            return Err(Error::config(f("instance_prompt"), "is empty"));
        }
        if let Some(c) = &self.class_prompt {
            if c.trim().is_empty() {
                return Err(Error::config(f("class_prompt"), "is empty"));
            }
            if self.instance_prompt.is_none() {
                return Err(Error::config(f("class_prompt"), "prior preservation needs instance_prompt (DreamBooth)"));
            }
            if !(1..=MAX_CLASS_IMAGES).contains(&self.num_class_images) {
                return Err(Error::config(
                    f("num_class_images"),
                    format!("must be between 1 and {MAX_CLASS_IMAGES} with a class_prompt"),
                ));
            }
            positive(&f("prior_loss_weight"), self.prior_loss_weight)?;
        }
        if self.validation_every == Some(0) {
            return Err(Error::config(f("validation_every"), "must be > 0 (leave it unset for the end only)"));
        }
        if self.validation_every.is_some() && self.validation_prompts.is_empty() {
            return Err(Error::config(f("validation_every"), "needs validation_prompts"));
        }
        if !(1..=MAX_VALIDATION_STEPS).contains(&self.validation_steps) {
            return Err(Error::config(f("validation_steps"), format!("must be between 1 and {MAX_VALIDATION_STEPS}")));
        }
        if self.validation_prompts.len() > MAX_VALIDATION_PROMPTS {
            return Err(Error::config(
                f("validation_prompts"),
                format!("{} prompts: at most {MAX_VALIDATION_PROMPTS} are rendered", self.validation_prompts.len()),
            ));
        }
        if !(self.validation_guidance_scale.is_finite() && self.validation_guidance_scale >= 0.0) {
            return Err(Error::config(f("validation_guidance_scale"), "must be >= 0"));
        }
        Ok(())
    }
}

/// A training job's configuration. Build it with `..Default::default()`; bindings pass
/// JSON through [`TrainSpec::from_json`], where unknown keys are `invalid_config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct TrainSpec {
    /// The model to start from: id, `name`, `name@3` or `name@alias`. Required, but
    /// for the `classifier` method (which has no base: leave it empty).
    pub base: ModelRef,
    /// The training dataset (id or name). Required.
    pub dataset: DatasetId,
    /// A separate evaluation dataset (id or name).
    pub eval_dataset: Option<DatasetId>,
    /// Hold out this fraction of `dataset` for evaluation (deterministic from `seed`).
    pub eval_fraction: Option<f64>,
    /// `full` or `lora`. Default: LoRA with [`LoraConfig::default`].
    pub method: Method,
    /// Passes over the data. Default 1. Ignored when `max_steps` is set.
    pub epochs: u32,
    /// Stop after this many optimiser steps (cycling through epochs as needed).
    pub max_steps: Option<u64>,
    /// Sequences per micro-batch. Default 8.
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before one optimiser step. Default 1.
    pub grad_accum: usize,
    /// Maximum tokens per sequence (longer examples are truncated; text is packed into
    /// sequences of exactly this length). Default 256.
    pub seq_len: usize,
    /// Peak learning rate. Default 2e-4.
    pub learning_rate: f64,
    /// Linear warmup from 0 over this many steps. Default 0.
    pub warmup_steps: u64,
    pub schedule: Schedule,
    /// `bf16`: linear layers multiply in bfloat16 (see [`MixedPrecision`]). Language
    /// models only. Default `no`.
    pub mixed_precision: MixedPrecision,
    /// AdamW (torch semantics). Defaults 0.9, 0.999, 1e-8, weight decay 0.
    pub adam_beta1: f64,
    pub adam_beta2: f64,
    pub adam_eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value. Default 1.0; `None` disables.
    pub max_grad_norm: Option<f64>,
    /// Seeds data order (per epoch: seed + epoch), the eval split and LoRA init. Default 42.
    pub seed: u64,
    /// Evaluate every N steps (and always at the end when there is eval data).
    pub eval_every: Option<u64>,
    /// Stop when the eval loss has not improved for this many evaluations.
    pub early_stopping_patience: Option<u32>,
    /// Write a checkpoint every N steps (one is always written on cancel).
    pub checkpoint_every: Option<u64>,
    /// Checkpoints kept per job (older ones are deleted). Default 2.
    pub keep_last_checkpoints: usize,
    /// Registry name of the result (next version if it exists). Default
    /// `<base>-<method>-<yyyymmdd-hhmmss>-<job8>`.
    pub output_name: Option<String>,
    /// Image (Stable Diffusion) bases only: resolution, crops, min-SNR, offset noise,
    /// DreamBooth, validation images. Default: [`ImageTrainOptions::default`].
    pub image: Option<ImageTrainOptions>,
    /// LoRA on a language model only: start from this adapter's weights (a LoRA adapter
    /// of `base`: id, `name@3`, `name@alias`) instead of a fresh initialisation, so the
    /// run continues training it. The adapter keeps its own settings (rank, alpha,
    /// targets); `method.lora` should match them (it sizes the memory check). Default: a
    /// new adapter.
    pub init_adapter: Option<ModelRef>,
    /// `create_job` when a job with this same spec (every other field equal) on the same
    /// base and data exists: `new_version` (default: a new job, and a new version of
    /// the output), `reuse` (that job is returned, unless it failed or its model was
    /// deleted; `train` returns its report, or runs or resumes it) or `error`
    /// (`already_exists`).
    pub if_exists: IfExists,
}

impl Default for TrainSpec {
    fn default() -> Self {
        Self {
            base: ModelRef(String::new()),
            dataset: DatasetId(String::new()),
            eval_dataset: None,
            eval_fraction: None,
            method: Method::Lora(LoraConfig::default()),
            epochs: 1,
            max_steps: None,
            batch_size: 8,
            grad_accum: 1,
            seq_len: 256,
            learning_rate: 2e-4,
            warmup_steps: 0,
            schedule: Schedule::Linear,
            mixed_precision: MixedPrecision::No,
            adam_beta1: 0.9,
            adam_beta2: 0.999,
            adam_eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
            seed: 42,
            eval_every: None,
            early_stopping_patience: None,
            checkpoint_every: None,
            keep_last_checkpoints: 2,
            output_name: None,
            image: None,
            init_adapter: None,
            if_exists: IfExists::NewVersion,
        }
    }
}

fn positive(field: &str, v: f64) -> Result<()> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(Error::config(field, format!("must be a positive number, got {v}")))
    }
}

impl TrainSpec {
    /// Builds a spec from JSON (unknown or mistyped fields are `invalid_config` naming
    /// the field) and validates it.
    pub fn from_json(value: serde_json::Value) -> Result<Self> {
        let spec: TrainSpec = super::schema::options_from_json(value)?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks every field; the error names the first bad one.
    pub fn validate(&self) -> Result<()> {
        if let Method::Classifier(cfg) = &self.method {
            if !self.base.0.trim().is_empty() {
                return Err(Error::config("base", "a classifier is trained from scratch: leave base empty"));
            }
            cfg.validate().map_err(|e| match e {
                Error::InvalidConfig { field, reason } => Error::config(format!("method.classifier.{field}"), reason),
                other => other,
            })?;
            if self.image.is_some() {
                return Err(Error::config("image", "image options apply to stable-diffusion bases, not classifiers"));
            }
            if self.mixed_precision != MixedPrecision::No {
                return Err(Error::config(
                    "mixed_precision",
                    "mixed precision is for language models, not classifiers",
                ));
            }
        } else if self.base.0.trim().is_empty() {
            return Err(Error::config("base", "is required (a model id, name or name@version)"));
        }
        if self.dataset.0.trim().is_empty() {
            return Err(Error::config("dataset", "is required (a dataset id or name)"));
        }
        if let Some(e) = &self.eval_dataset {
            if e.0.trim().is_empty() {
                return Err(Error::config("eval_dataset", "is empty"));
            }
            if self.eval_fraction.is_some() {
                return Err(Error::config("eval_fraction", "set either eval_dataset or eval_fraction, not both"));
            }
        }
        if let Some(f) = self.eval_fraction {
            if !(f > 0.0 && f < 1.0) {
                return Err(Error::config("eval_fraction", format!("must be between 0 and 1 (exclusive), got {f}")));
            }
        }
        if let Method::Lora(cfg) = &self.method {
            cfg.validate().map_err(|e| match e {
                Error::InvalidConfig { field, reason } => Error::config(format!("method.lora.{field}"), reason),
                other => other,
            })?;
        }
        if self.epochs == 0 && self.max_steps.is_none() {
            return Err(Error::config("epochs", "must be > 0 (or set max_steps)"));
        }
        if self.max_steps == Some(0) {
            return Err(Error::config("max_steps", "must be > 0"));
        }
        if self.batch_size == 0 {
            return Err(Error::config("batch_size", "must be > 0"));
        }
        if self.grad_accum == 0 {
            return Err(Error::config("grad_accum", "must be > 0"));
        }
        if self.seq_len < 2 {
            return Err(Error::config("seq_len", "must be at least 2 (a next-token loss needs two positions)"));
        }
        positive("learning_rate", self.learning_rate)?;
        for (field, b) in [("adam_beta1", self.adam_beta1), ("adam_beta2", self.adam_beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Err(Error::config(field, format!("must be in [0, 1), got {b}")));
            }
        }
        positive("adam_eps", self.adam_eps)?;
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(Error::config("weight_decay", format!("must be >= 0, got {}", self.weight_decay)));
        }
        if let Some(n) = self.max_grad_norm {
            positive("max_grad_norm", n)?;
        }
        for (field, v) in [("eval_every", self.eval_every), ("checkpoint_every", self.checkpoint_every)] {
            if v == Some(0) {
                return Err(Error::config(field, "must be > 0 (leave it unset to disable)"));
            }
        }
        if self.early_stopping_patience == Some(0) {
            return Err(Error::config("early_stopping_patience", "must be > 0 (leave it unset to disable)"));
        }
        if self.early_stopping_patience.is_some() && self.eval_dataset.is_none() && self.eval_fraction.is_none() {
            return Err(Error::config("early_stopping_patience", "needs eval data: set eval_dataset or eval_fraction"));
        }
        if self.keep_last_checkpoints == 0 {
            return Err(Error::config("keep_last_checkpoints", "must be > 0"));
        }
        if let Some(n) = &self.output_name {
            util::validate_name("output_name", n)?;
        }
        if let Some(i) = &self.image {
            i.validate()?;
        }
        if let Some(a) = &self.init_adapter {
            if a.0.trim().is_empty() {
                return Err(Error::config("init_adapter", "is empty"));
            }
            if !matches!(self.method, Method::Lora(_)) {
                return Err(Error::config(
                    "init_adapter",
                    format!("continues a LoRA adapter: it needs method lora (not {})", self.method.as_str()),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ok() -> TrainSpec {
        TrainSpec { base: "m".into(), dataset: "d".into(), ..Default::default() }
    }

    #[test]
    fn validation_names_the_field() {
        assert!(ok().validate().is_ok());
        let cases: Vec<(TrainSpec, &str)> = vec![
            (TrainSpec { base: "".into(), ..ok() }, "base"),
            (TrainSpec { batch_size: 0, ..ok() }, "batch_size"),
            (TrainSpec { learning_rate: -1.0, ..ok() }, "learning_rate"),
            (TrainSpec { eval_fraction: Some(1.5), ..ok() }, "eval_fraction"),
            (TrainSpec { adam_beta2: 1.0, ..ok() }, "adam_beta2"),
            (TrainSpec { method: Method::Lora(LoraConfig { r: 0, ..Default::default() }), ..ok() }, "method.lora.r"),
            (TrainSpec { output_name: Some("/bad".into()), ..ok() }, "output_name"),
            (TrainSpec { early_stopping_patience: Some(2), ..ok() }, "early_stopping_patience"),
            (TrainSpec { method: Method::Full, init_adapter: Some("a@1".into()), ..ok() }, "init_adapter"),
        ];
        for (spec, field) in cases {
            match spec.validate().unwrap_err() {
                Error::InvalidConfig { field: f, .. } => assert_eq!(f, field),
                e => panic!("{e}"),
            }
        }
    }

    #[test]
    fn json_round_trip_and_unknown_fields() {
        let s = TrainSpec { method: Method::Full, ..ok() };
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(v["method"], "full");
        assert_eq!(TrainSpec::from_json(v).unwrap(), s);
        let v = serde_json::json!({"base": "m", "dataset": "d", "method": {"lora": {"r": 4}}});
        assert!(matches!(TrainSpec::from_json(v).unwrap().method, Method::Lora(LoraConfig { r: 4, .. })));
        let e = TrainSpec::from_json(serde_json::json!({"base": "m", "dataset": "d", "lr": 1})).unwrap_err();
        assert!(matches!(&e, Error::InvalidConfig { field, .. } if field == "lr"), "{e}");
    }
}

//! Text-to-image diffusion in the diffusers layout (Stable Diffusion 1.x / 2.x): the
//! UNet2DConditionModel noise predictor, the AutoencoderKL, the CLIP text encoder with its
//! tokenizer (`text_encoder/`, `tokenizer/`), the noise schedulers
//! (`scheduler/scheduler_config.json`), and the configuration files that describe a
//! pipeline directory, and the text-to-image pipeline over them
//! ([`StableDiffusionPipeline`], PNG output with the settings in [`png`]). Written for training like the language models:
//! every op of the [`crate::models::ForwardMode::Train`] path has a backward, linear layers
//! are the project's LoRA-capable `Linear`, weights load frozen or as `Var`s.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::diffusion::{PipelineConfig, UNet2DConditionModel};
//! use anneal::{ForwardMode, LoadOptions};
//! let cfg = PipelineConfig::read("tests/fixtures/tiny-sd")?;
//! let unet = UNet2DConditionModel::load(cfg.dir.join("unet"), &LoadOptions::default())?;
//! let latents = candle_core::Tensor::randn(0f32, 1., (1, 4, 8, 8), unet.device())?;
//! let text = candle_core::Tensor::zeros((1, 5, cfg.text_hidden_size), candle_core::DType::F32, unet.device())?;
//! let t = candle_core::Tensor::new(&[500f32], unet.device())?;
//! let eps = unet.forward(&latents, &t, &text, ForwardMode::Infer)?;
//! # Ok(()) }
//! ```

pub mod clip;
pub mod config;
mod conv;
mod group_norm;
pub mod image;
mod load;
pub mod lora;
mod nn;
pub mod pipeline;
pub mod png;
pub mod presets;
pub mod schedulers;
pub mod shapes;
mod torch_rng;
pub mod unet;
pub mod vae;

pub use clip::{ClipActivation, ClipTextConfig, ClipTextModel, ClipTextOutput, ClipTokenizer};

pub use config::{
    DownBlockType, MidBlockType, ModelIndex, PipelineConfig, UNetConfig, UpBlockType, VaeConfig, MODEL_INDEX_FILE,
    PIXEL_CHANNELS, SUPPORTED_PIPELINES,
};
pub use lora::{
    save_lora_weights, LoraComponent, LoraFile, LoraLayout, LoraModule, DEFAULT_TEXT_ENCODER_TARGETS,
    DEFAULT_UNET_TARGETS, LORA_WEIGHTS_FILE,
};
pub use pipeline::{
    scheduler_name, GeneratedImage, ImageSettings, StableDiffusionPipeline, Txt2ImgOutput, Txt2ImgRequest,
    FALLBACK_SCHEDULER,
};
pub use schedulers::{
    BetaSchedule, DpmAlgorithm, DpmSolverType, FinalSigmas, PredictionType, Scheduler, SchedulerConfig, SchedulerKind,
    TimestepSpacing, VarianceType,
};
pub use unet::{timestep_embedding, UNet2DConditionModel};
pub use vae::{AutoencoderKL, DiagonalGaussian};

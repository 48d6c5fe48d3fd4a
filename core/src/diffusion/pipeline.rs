//! Text-to-image with a Stable Diffusion pipeline directory, as diffusers'
//! `StableDiffusionPipeline.__call__` runs it: CLIP prompt embeddings (and the negative
//! or empty unconditional ones for classifier-free guidance), the scheduler's
//! denoising loop over the UNet, the VAE decoder, and `(x / 2 + 0.5).clamp(0, 1)`.
//! A pipeline without a VAE (`"vae": [null, null]` in model_index.json, see
//! [`PipelineConfig`]) denoises the pixels themselves (`[-1, 1]`, RGB): the same
//! `(x / 2 + 0.5).clamp(0, 1)` maps its final latents to the image.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::diffusion::{StableDiffusionPipeline, Txt2ImgRequest};
//! use anneal::{CancelToken, LoadOptions};
//! let sd = StableDiffusionPipeline::load("tests/fixtures/tiny-sd", &LoadOptions::default())?;
//! let req = Txt2ImgRequest {
//!     negative_prompts: vec!["blurry".into()],
//!     num_inference_steps: 20,
//!     scheduler: Some("dpmpp_2m".into()),
//!     seed: Some(42),
//!     ..Txt2ImgRequest::new("a red circle on a white background")
//! };
//! let out = sd.txt2img(&req, &mut |step, total| { eprintln!("{step}/{total}"); Ok(()) }, &CancelToken::new())?;
//! out.images[0].save_png("circle.png")?;
//! # Ok(()) }
//! ```
//!
//! **Randomness.** Image `i` of a call (prompt `i / num_images_per_prompt`) has its own
//! generator: PyTorch's CPU generator (reimplemented) seeded with `seed + i` (wrapping;
//! torch seeds its engine with the low 32 bits). The initial latent is one float32
//! `torch.randn((1, channels, h, w))` from it, times the scheduler's `init_noise_sigma`;
//! a stochastic scheduler draws each step's noise from the same generator, one
//! `randn((1, channels, h, w))` per image wherever diffusers draws it (DDPM at the steps
//! with `t > 0`, Euler ancestral and SDE-DPM-Solver++ at every step; see
//! [`Scheduler::draws_noise`]). So a call gives the images of diffusers'
//! `StableDiffusionPipeline` on the CPU with
//! `generator=[torch.Generator().manual_seed(seed + i) for i in range(n)]`, `n` the
//! number of images (for one image, `generator=torch.Generator().manual_seed(seed)`), up
//! to float rounding in the models: the noise is bit-equal to torch's x86-64 AVX2
//! kernel and within a few 1e-6 of its portable one (see `torch_rng.rs`). One generator
//! for several images (`generator=torch.Generator().manual_seed(seed)` with `n > 1`)
//! draws the batch as one tensor and gives other images, as does a CUDA generator. An
//! image's `seed` in its [`ImageSettings`] regenerates it alone (batch of one, same
//! prompt and settings), up to the rounding differences a batch size can make. The
//! initial latents can also be given (`latents`), as diffusers' `latents=` argument; the
//! scheduler's noise still comes from the seed's generators.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::clip::{ClipTextModel, ClipTokenizer};
use super::config::PipelineConfig;
use super::schedulers::{Scheduler, SchedulerConfig, SchedulerKind};
use super::torch_rng::TorchGenerator;
use super::unet::UNet2DConditionModel;
use super::vae::AutoencoderKL;
use crate::error::{Error, IoResultExt, Result};
use crate::events::CancelToken;
use crate::models::memory;
use crate::models::{ForwardMode, LoadOptions};

/// The scheduler used when a request names none and the pipeline was saved with a
/// scheduler class anneal does not implement (SD 1.5 ships `PNDMScheduler`).
pub const FALLBACK_SCHEDULER: SchedulerKind = SchedulerKind::DpmSolverMultistep;

/// The short name anneal reports for a scheduler kind (what [`SchedulerKind::parse`]
/// reads back): `ddpm`, `ddim`, `euler`, `euler_ancestral`, `dpmpp_2m`.
pub fn scheduler_name(kind: SchedulerKind) -> &'static str {
    match kind {
        SchedulerKind::Ddpm => "ddpm",
        SchedulerKind::Ddim => "ddim",
        SchedulerKind::EulerDiscrete => "euler",
        SchedulerKind::EulerAncestral => "euler_ancestral",
        SchedulerKind::DpmSolverMultistep => "dpmpp_2m",
    }
}

/// What to generate. `Default` gives diffusers' defaults (50 steps, guidance 7.5, the
/// UNet's trained size, the pipeline's own scheduler) and no prompt.
#[derive(Debug, Clone)]
pub struct Txt2ImgRequest {
    /// One or more prompts; each gives `num_images_per_prompt` images.
    pub prompts: Vec<String>,
    /// None (the empty prompt is the unconditional one, as in diffusers), one for every
    /// prompt, or one per prompt. Ignored (and reported so) without guidance.
    pub negative_prompts: Vec<String>,
    /// Classifier-free guidance weight; at most 1 runs the UNet on the prompts only.
    pub guidance_scale: f64,
    pub num_inference_steps: usize,
    /// `ddpm`, `ddim`, `euler`, `euler_ancestral` (`euler_a`), `dpmpp_2m` (`dpm++`), or
    /// a diffusers class name; configured from the pipeline's `scheduler_config.json`
    /// as diffusers' `from_config` does. None: the pipeline's own scheduler, or
    /// [`FALLBACK_SCHEDULER`] when anneal does not implement it.
    pub scheduler: Option<String>,
    /// None: a random seed below 2^32, reported in the output.
    pub seed: Option<u64>,
    /// Pixels; None: the UNet's `sample_size` times the VAE's factor. Both must be
    /// multiples of [`StableDiffusionPipeline::size_multiple`].
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub num_images_per_prompt: usize,
    /// Condition on the text encoder's hidden state this many layers before the last
    /// (through the final LayerNorm), as diffusers' `clip_skip`. As in diffusers, the
    /// negative prompts are encoded without it.
    pub clip_skip: Option<usize>,
    /// How the caller names the model (`name@version`), copied into the settings.
    pub model: Option<String>,
    /// Initial latents `[images, latent_channels, height / f, width / f]` (before the
    /// scheduler's `init_noise_sigma`, as diffusers' `latents=`), instead of drawing them
    /// from the seed. The seed still drives a stochastic scheduler's noise.
    pub latents: Option<Tensor>,
}

impl Default for Txt2ImgRequest {
    fn default() -> Self {
        Self {
            prompts: Vec::new(),
            negative_prompts: Vec::new(),
            guidance_scale: 7.5,
            num_inference_steps: 50,
            scheduler: None,
            seed: None,
            height: None,
            width: None,
            num_images_per_prompt: 1,
            clip_skip: None,
            model: None,
            latents: None,
        }
    }
}

impl Txt2ImgRequest {
    /// One prompt with the default settings.
    pub fn new(prompt: impl Into<String>) -> Self {
        Self { prompts: vec![prompt.into()], ..Self::default() }
    }
}

/// The settings one image was made with: what its PNG carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSettings {
    pub prompt: String,
    /// Empty when there was none or guidance was off.
    pub negative_prompt: String,
    /// The seed that regenerates this image alone (see the module docs); None when the
    /// initial latents were given by the caller.
    pub seed: Option<u64>,
    pub steps: usize,
    pub guidance_scale: f64,
    /// The scheduler's short name ([`scheduler_name`]).
    pub scheduler: String,
    /// True when the scheduler used Karras sigmas (from scheduler_config.json).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub karras_sigmas: bool,
    pub width: usize,
    pub height: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_skip: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

/// One generated image: RGB, 8 bits per channel, row-major `height x width x 3`.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratedImage {
    pub width: usize,
    pub height: usize,
    pub rgb: Vec<u8>,
    pub settings: ImageSettings,
}

impl GeneratedImage {
    /// The image as PNG bytes, with its settings in text chunks (see [`super::png`]).
    pub fn to_png(&self) -> Result<Vec<u8>> {
        super::png::encode_rgb8(self.width, self.height, &self.rgb, &super::png::settings_chunks(&self.settings)?)
    }

    /// Writes [`GeneratedImage::to_png`] to `path` atomically (a temporary file renamed
    /// into place: a failure leaves no partial file).
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        let bytes = self.to_png()?;
        crate::util::write_atomic(path.as_ref(), &bytes)
    }
}

/// What [`StableDiffusionPipeline::txt2img`] returns.
#[derive(Debug, Clone)]
pub struct Txt2ImgOutput {
    /// Prompt by prompt, `num_images_per_prompt` each.
    pub images: Vec<GeneratedImage>,
    /// The same images as `f32` in `[0, 1]`, `[images, height, width, 3]` (diffusers'
    /// `output_type="np"`), before rounding to 8 bits.
    pub pixels: Tensor,
    /// The denoised latents the VAE decoded (UNet scale), `[images, channels, h, w]`; in
    /// pixel space, the image itself in `[-1, 1]` before clamping.
    pub latents: Tensor,
    /// The base seed (image `i` used `seed + i`).
    pub seed: u64,
    /// Things the caller should know: truncated prompts, an ignored negative prompt, a
    /// substituted scheduler.
    pub warnings: Vec<String>,
}

#[derive(Clone)]
struct Inner {
    config: PipelineConfig,
    unet: UNet2DConditionModel,
    /// None in pixel space.
    vae: Option<Arc<AutoencoderKL>>,
    text_encoder: ClipTextModel,
    tokenizer: ClipTokenizer,
    scheduler_path: PathBuf,
    scheduler_json: String,
    /// The pipeline's own scheduler, when anneal implements it.
    own_scheduler: Option<SchedulerKind>,
    device: Device,
    dtype: DType,
}

/// A Stable Diffusion pipeline loaded once, for text-to-image. Cheap to clone,
/// `Send + Sync`: calls take `&self` and keep their sampling state to themselves, so
/// several threads can generate at once.
#[derive(Clone)]
pub struct StableDiffusionPipeline {
    inner: Arc<Inner>,
    memory_limit: u64,
}

impl std::fmt::Debug for StableDiffusionPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StableDiffusionPipeline")
            .field("dir", &self.inner.config.dir)
            .field("dtype", &self.inner.dtype)
            .field("memory_limit", &self.memory_limit)
            .finish()
    }
}

/// A checked request.
struct Plan {
    prompts: Vec<String>,
    /// One per prompt ("" for the empty unconditional prompt); empty without guidance.
    negatives: Vec<String>,
    guidance: bool,
    kind: SchedulerKind,
    steps: usize,
    per_prompt: usize,
    height: usize,
    width: usize,
    latent: [usize; 3],
    seed: u64,
    warnings: Vec<String>,
}

impl Plan {
    fn images(&self) -> usize {
        self.prompts.len() * self.per_prompt
    }
}

impl StableDiffusionPipeline {
    /// Loads a diffusers pipeline directory (`model_index.json`, `unet/`, `vae/`,
    /// `text_encoder/`, `tokenizer/`, `scheduler/`) for inference with `opts.dtype` on
    /// `opts.device` (`opts.trainable` is ignored; bf16 needs a GPU). The memory limit of each request
    /// starts at [`crate::default_memory_limit`]; see
    /// [`StableDiffusionPipeline::with_memory_limit`].
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        if opts.dtype == DType::BF16 && opts.device.is_cpu() {
            return Err(Error::config(
                "dtype",
                "bf16 is not supported on the CPU (candle's CPU convolutions have no bf16 kernel): use f32 or f16",
            ));
        }
        let config = PipelineConfig::read(dir)?;
        let dir = config.dir.clone();
        let lo = LoadOptions { trainable: false, ..opts.clone() };
        let unet = UNet2DConditionModel::load(dir.join("unet"), &lo)?;
        let vae = match config.vae {
            Some(_) => {
                let vae = AutoencoderKL::load(dir.join("vae"), &lo)?;
                if vae.config().out_channels != 3 {
                    return Err(Error::config(
                        "vae/config.json:out_channels",
                        format!("{} channels: text-to-image writes RGB images (3 channels)", vae.config().out_channels),
                    ));
                }
                Some(Arc::new(vae))
            }
            None => None,
        };
        let text_encoder = ClipTextModel::load(dir.join("text_encoder"), &lo)?;
        let tokenizer = ClipTokenizer::from_dir(dir.join("tokenizer"))?;
        check_tokenizer_fits(&tokenizer, &text_encoder)?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_json = std::fs::read_to_string(&scheduler_path).with_path(&scheduler_path)?;
        let own_scheduler = SchedulerKind::from_class_name(config.index.scheduler_class());
        // The noise schedule must be readable whichever sampler a request picks.
        SchedulerConfig::from_json_text(
            &scheduler_json,
            Some(own_scheduler.unwrap_or(FALLBACK_SCHEDULER)),
            Some(&scheduler_path),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                unet,
                vae,
                text_encoder,
                tokenizer,
                scheduler_path,
                scheduler_json,
                own_scheduler,
                device: opts.device.clone(),
                dtype: opts.dtype,
            }),
            memory_limit: memory::default_memory_limit(),
        })
    }

    /// The same pipeline (sharing its weights) refusing requests whose estimated memory
    /// is above `bytes` (with `invalid_config` naming the size or the batch).
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.memory_limit = bytes;
        self
    }

    pub fn memory_limit(&self) -> u64 {
        self.memory_limit
    }

    pub fn config(&self) -> &PipelineConfig {
        &self.inner.config
    }

    pub fn dir(&self) -> &Path {
        &self.inner.config.dir
    }

    pub fn dtype(&self) -> DType {
        self.inner.dtype
    }

    pub fn device(&self) -> &Device {
        &self.inner.device
    }

    pub fn unet(&self) -> &UNet2DConditionModel {
        &self.inner.unet
    }

    /// The UNet, mutably (to attach, scale, merge or remove a LoRA), while no clone of
    /// this pipeline shares its weights; `None` otherwise.
    pub fn unet_mut(&mut self) -> Option<&mut UNet2DConditionModel> {
        Arc::get_mut(&mut self.inner).map(|i| &mut i.unet)
    }

    /// The text encoder, mutably (as [`StableDiffusionPipeline::unet_mut`]).
    pub fn text_encoder_mut(&mut self) -> Option<&mut ClipTextModel> {
        Arc::get_mut(&mut self.inner).map(|i| &mut i.text_encoder)
    }

    /// Both models LoRA attaches to, mutably (while no clone shares them).
    fn lora_hosts(&mut self) -> Result<(&mut UNet2DConditionModel, &mut ClipTextModel)> {
        let inner = Arc::get_mut(&mut self.inner).ok_or_else(|| {
            Error::config("adapter", "the pipeline's weights are shared with a clone: attach adapters before cloning")
        })?;
        Ok((&mut inner.unet, &mut inner.text_encoder))
    }

    /// Attaches every part of a LoRA file, as `pipe.load_lora_weights` does: the UNet's
    /// modules to the UNet, the text encoder's to the text encoder. A part for a model
    /// this pipeline does not have (SDXL's second text encoder) is refused, and so is a
    /// module that does not fit; then nothing is attached.
    pub fn load_lora_file(&mut self, file: &super::lora::LoraFile) -> Result<()> {
        use super::lora::LoraComponent;
        if let Some(m) = file.modules.iter().find(|m| m.component == LoraComponent::TextEncoder2) {
            return Err(Error::data(
                crate::error::Location::file(&file.path).field(&m.down_key),
                "LoRA for SDXL's second text encoder: this pipeline has one text encoder (SD 1.x / 2.x)",
            ));
        }
        let parts = file.components();
        if parts.is_empty() {
            return Err(Error::data(crate::error::Location::file(&file.path), "the file holds no LoRA module"));
        }
        let (unet, te) = self.lora_hosts()?;
        if parts.contains(&LoraComponent::Unet) {
            super::lora::load(unet, file)?;
        }
        if parts.contains(&LoraComponent::TextEncoder) {
            if let Err(e) = super::lora::load(te, file) {
                if parts.contains(&LoraComponent::Unet) {
                    super::lora::remove(unet)?;
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// [`StableDiffusionPipeline::load_lora_file`] of a file, or of the weights file of a
    /// directory (as `pipe.load_lora_weights(dir)` finds it).
    pub fn load_lora(&mut self, path: impl AsRef<Path>) -> Result<()> {
        self.load_lora_file(&super::lora::LoraFile::read(path)?)
    }

    /// Multiplies the scale of every attached adapter (UNet and text encoder) by `scale`,
    /// as diffusers' `cross_attention_kwargs={"scale": s}` does for both. Refused while
    /// merged or when no adapter is attached.
    pub fn set_lora_scale(&mut self, scale: f64) -> Result<()> {
        let (unet, te) = self.lora_hosts()?;
        if unet.lora.is_none() && te.lora.is_none() {
            return Err(Error::config("adapter", "the pipeline has no LoRA adapter"));
        }
        for_each_adapter(unet, te, |u| u.set_lora_scale(scale), |t| t.set_lora_scale(scale))
    }

    /// Folds the attached adapters into the weights (diffusers' `fuse_lora`).
    pub fn merge_lora(&mut self) -> Result<()> {
        let (unet, te) = self.lora_hosts()?;
        if unet.lora.is_none() && te.lora.is_none() {
            return Err(Error::config("adapter", "the pipeline has no LoRA adapter to merge"));
        }
        for_each_adapter(unet, te, UNet2DConditionModel::merge_lora, ClipTextModel::merge_lora)
    }

    /// Takes the attached adapters off (unmerging them first): the base pipeline again.
    pub fn remove_lora(&mut self) -> Result<()> {
        let (unet, te) = self.lora_hosts()?;
        for_each_adapter(unet, te, UNet2DConditionModel::remove_lora, ClipTextModel::remove_lora)
    }

    /// Writes the attached adapters as one `dir/pytorch_lora_weights.safetensors` (see
    /// [`super::lora::save_lora_weights`]).
    pub fn save_lora(&self, dir: impl AsRef<Path>) -> Result<PathBuf> {
        let (unet, te) = (&self.inner.unet, &self.inner.text_encoder);
        super::lora::save_lora_weights(dir, unet.lora.as_ref().map(|_| unet), te.lora.as_ref().map(|_| te))
    }

    /// None for a pixel-space pipeline.
    pub fn vae(&self) -> Option<&AutoencoderKL> {
        self.inner.vae.as_deref()
    }

    pub fn text_encoder(&self) -> &ClipTextModel {
        &self.inner.text_encoder
    }

    pub fn tokenizer(&self) -> &ClipTokenizer {
        &self.inner.tokenizer
    }

    /// The VAE's factor: image pixels per latent pixel (8 for SD, 1 in pixel space).
    pub fn vae_scale_factor(&self) -> usize {
        self.inner.config.vae_scale_factor()
    }

    /// Heights and widths must be multiples of this: the VAE's factor times the UNet's
    /// own downsampling (64 for SD 1.x and 2.x; anneal's UNet does not pad odd sizes).
    pub fn size_multiple(&self) -> usize {
        self.vae_scale_factor() * self.inner.config.unet.downsample_factor()
    }

    /// `(height, width)` when a request gives none: the UNet's `sample_size` times the
    /// VAE's factor (512 x 512 for SD 1.5), or 64 latent pixels when the config has none.
    pub fn default_size(&self) -> (usize, usize) {
        let [h, w] = self.inner.config.unet.sample_size.unwrap_or([64, 64]);
        let f = self.vae_scale_factor();
        (h * f, w * f)
    }

    /// The scheduler a request without `scheduler` gets.
    pub fn default_scheduler(&self) -> SchedulerKind {
        self.inner.own_scheduler.unwrap_or(FALLBACK_SCHEDULER)
    }

    /// The same pipeline (sharing everything else) generating with `unet`: e.g. the UNet
    /// a training run is updating (a clone of it shares its `Var`s, so the images show
    /// the weights as they are at each call). It must be on the pipeline's device with
    /// its dtype, and take and predict the pipeline's latent channels and attend to its
    /// text encoder's hidden states (`invalid_config` naming the key otherwise). Its own
    /// config (sample size, downsampling) replaces the loaded UNet's. A clone shares
    /// tensors, not structure: attach a LoRA adapter (or change its scale) before
    /// cloning, or call this again afterwards.
    pub fn with_unet(&self, unet: UNet2DConditionModel) -> Result<Self> {
        let inner = &*self.inner;
        self.check_component("unet", unet.device(), unet.dtype())?;
        inner.config.check_unet(unet.config())?;
        let mut config = inner.config.clone();
        config.unet = unet.config().clone();
        Ok(self.rebuilt(Inner { config, unet, ..inner.clone() }))
    }

    /// The same pipeline (sharing everything else) generating with the text encoder
    /// `te` (see [`StableDiffusionPipeline::with_unet`]): its `hidden_size` must match
    /// the UNet's cross_attention_dim and its positions must hold the tokenizer's
    /// `model_max_length`.
    pub fn with_text_encoder(&self, te: ClipTextModel) -> Result<Self> {
        let inner = &*self.inner;
        self.check_component("text_encoder", te.device(), te.dtype())?;
        let tc = te.config();
        inner.config.check_cross_attention(&inner.config.unet, tc.hidden_size)?;
        check_tokenizer_fits(&inner.tokenizer, &te)?;
        let mut config = inner.config.clone();
        config.text_hidden_size = tc.hidden_size;
        Ok(self.rebuilt(Inner { config, text_encoder: te, ..inner.clone() }))
    }

    fn check_component(&self, name: &str, device: &Device, dtype: DType) -> Result<()> {
        if !device.same_device(&self.inner.device) {
            return Err(Error::config(name, format!("is on {device:?}, the pipeline on {:?}", self.inner.device)));
        }
        if dtype != self.inner.dtype {
            return Err(Error::config(name, format!("has dtype {dtype:?}, the pipeline {:?}", self.inner.dtype)));
        }
        Ok(())
    }

    fn rebuilt(&self, inner: Inner) -> Self {
        Self { inner: Arc::new(inner), memory_limit: self.memory_limit }
    }

    /// The memory a request would need beyond the loaded weights (bytes, a rough upper
    /// bound), after checking it as [`StableDiffusionPipeline::txt2img`] does.
    pub fn estimate_memory(&self, req: &Txt2ImgRequest) -> Result<u64> {
        let plan = self.plan(req, false)?;
        let e = self.estimate(&plan, plan.images(), "batch");
        Ok(u64::try_from(e.total()).unwrap_or(u64::MAX))
    }

    fn estimate(&self, plan: &Plan, images: usize, field: &str) -> memory::Estimate {
        let c = &self.inner.config;
        let text = (self.inner.tokenizer.model_max_length(), c.text_hidden_size);
        let bytes = self.inner.dtype.size_in_bytes() as u128;
        memory::diffusion_sampling(
            &c.unet,
            c.vae.as_ref(),
            text,
            images,
            plan.guidance,
            (plan.height, plan.width),
            bytes,
            field,
        )
    }

    /// Checks `req` and resolves its defaults; with `check_memory`, refuses what the
    /// memory limit cannot hold.
    fn plan(&self, req: &Txt2ImgRequest, check_memory: bool) -> Result<Plan> {
        let inner = &*self.inner;
        let mut warnings = Vec::new();
        if req.prompts.is_empty() {
            return Err(Error::config("prompts", "at least one prompt is needed"));
        }
        if req.num_images_per_prompt == 0 {
            return Err(Error::config("num_images_per_prompt", "must be at least 1"));
        }
        if req.num_inference_steps == 0 {
            return Err(Error::config("num_inference_steps", "must be at least 1"));
        }
        if !req.guidance_scale.is_finite() {
            return Err(Error::config(
                "guidance_scale",
                format!("must be a finite number, got {}", req.guidance_scale),
            ));
        }
        let guidance = req.guidance_scale > 1.0;
        let n = req.prompts.len();
        let negatives = match req.negative_prompts.len() {
            _ if !guidance => {
                if req.negative_prompts.iter().any(|p| !p.is_empty()) {
                    warnings.push(format!(
                        "negative prompts are ignored: guidance_scale {} <= 1 turns classifier-free guidance off",
                        req.guidance_scale
                    ));
                }
                Vec::new()
            }
            0 => vec![String::new(); n],
            1 => vec![req.negative_prompts[0].clone(); n],
            m if m == n => req.negative_prompts.clone(),
            m => {
                return Err(Error::config(
                    "negative_prompts",
                    format!("{m} negative prompts for {n} prompts: give none, one, or one per prompt"),
                ))
            }
        };
        let kind = match req.scheduler.as_deref() {
            Some(name) => SchedulerKind::parse(name).ok_or_else(|| {
                let names: Vec<&str> = SchedulerKind::ALL.iter().map(|k| scheduler_name(*k)).collect();
                Error::config("scheduler", format!("unknown scheduler `{name}` (supported: {})", names.join(", ")))
            })?,
            None => match inner.own_scheduler {
                Some(k) => k,
                None => {
                    warnings.push(format!(
                        "the pipeline's {} is not implemented by anneal; sampling with {}",
                        inner.config.index.scheduler_class(),
                        scheduler_name(FALLBACK_SCHEDULER)
                    ));
                    FALLBACK_SCHEDULER
                }
            },
        };
        let (dh, dw) = self.default_size();
        let (height, width) = (req.height.unwrap_or(dh), req.width.unwrap_or(dw));
        let m = self.size_multiple();
        for (field, v) in [("height", height), ("width", width)] {
            if v == 0 || !v.is_multiple_of(m) {
                return Err(Error::config(
                    field,
                    format!(
                        "{v} is not a positive multiple of {m} (the VAE's factor {} times the UNet's downsampling {})",
                        self.vae_scale_factor(),
                        inner.config.unet.downsample_factor()
                    ),
                ));
            }
        }
        if let Some(k) = req.clip_skip {
            let layers = inner.text_encoder.config().num_hidden_layers;
            if k >= layers {
                return Err(Error::config(
                    "clip_skip",
                    format!("{k} skips every layer of the {layers}-layer text encoder (at most {})", layers - 1),
                ));
            }
        }
        let f = self.vae_scale_factor();
        let latent = [inner.config.unet.in_channels, height / f, width / f];
        let seed = req.seed.unwrap_or_else(|| rand::random::<u32>() as u64);
        let plan = Plan {
            prompts: req.prompts.clone(),
            negatives,
            guidance,
            kind,
            steps: req.num_inference_steps,
            per_prompt: req.num_images_per_prompt,
            height,
            width,
            latent,
            seed,
            warnings,
        };
        if check_memory {
            // One image alone must fit (else the size is the problem), then the batch.
            self.estimate(&plan, 1, "height/width").check(self.memory_limit)?;
            let field = if plan.per_prompt > 1 { "num_images_per_prompt" } else { "prompts" };
            self.estimate(&plan, plan.images(), field).check(self.memory_limit)?;
        }
        Ok(plan)
    }

    /// Prompt embeddings `[prompts, tokens, hidden]`, with warnings for truncated ones.
    fn embed(
        &self,
        what: &str,
        prompts: &[String],
        clip_skip: Option<usize>,
        warnings: &mut Vec<String>,
    ) -> Result<Tensor> {
        let inner = &*self.inner;
        let max = inner.tokenizer.model_max_length();
        for (i, p) in prompts.iter().enumerate() {
            let full = inner.tokenizer.encode_full(p)?.len();
            if full > max {
                warnings.push(format!(
                    "{what} {i} has {full} tokens; the text encoder reads the first {max}, the rest is ignored"
                ));
            }
        }
        let refs: Vec<&str> = prompts.iter().map(String::as_str).collect();
        let ids = inner.tokenizer.to_tensor(&refs, &inner.device)?;
        // Detached: a text encoder being trained (`with_text_encoder`) has `Var` weights,
        // and sampling must not record a backward graph.
        Ok(inner.text_encoder.prompt_embeds(&ids, clip_skip, ForwardMode::Infer)?.detach())
    }

    /// Generates `req.num_images_per_prompt` images for each prompt. `progress(step,
    /// total)` is called after every denoising step (an error from it stops the call);
    /// `cancel` is checked before every step and before decoding (error `cancelled`).
    pub fn txt2img(
        &self,
        req: &Txt2ImgRequest,
        progress: &mut dyn FnMut(usize, usize) -> Result<()>,
        cancel: &CancelToken,
    ) -> Result<Txt2ImgOutput> {
        cancel.check()?;
        let inner = &*self.inner;
        let mut plan = self.plan(req, true)?;
        let device = &inner.device;
        let b = plan.images();
        let [c, lh, lw] = plan.latent;

        let sched_cfg =
            SchedulerConfig::from_json_text(&inner.scheduler_json, Some(plan.kind), Some(&inner.scheduler_path))?;
        let karras_sigmas = sched_cfg.use_karras_sigmas
            && matches!(plan.kind, SchedulerKind::EulerDiscrete | SchedulerKind::DpmSolverMultistep);
        let mut sched = Scheduler::new(sched_cfg)?;
        sched.set_timesteps(plan.steps)?;

        // Text conditioning: [b, tokens, hidden], uncond rows first as diffusers batches them.
        let cond =
            repeat_rows(&self.embed("prompt", &plan.prompts, req.clip_skip, &mut plan.warnings)?, plan.per_prompt)?;
        let context = if plan.guidance {
            let uncond = self.embed("negative prompt", &plan.negatives, None, &mut plan.warnings)?;
            Tensor::cat(&[&repeat_rows(&uncond, plan.per_prompt)?, &cond], 0)?
        } else {
            cond
        };

        let mut rngs: Vec<TorchGenerator> =
            (0..b).map(|i| TorchGenerator::manual_seed(plan.seed.wrapping_add(i as u64))).collect();
        let initial = match &req.latents {
            Some(t) => {
                if t.dims() != [b, c, lh, lw] {
                    return Err(Error::config(
                        "latents",
                        format!(
                            "shape {:?}, expected {:?} (images, latent channels, height / {f}, width / {f})",
                            t.dims(),
                            [b, c, lh, lw],
                            f = self.vae_scale_factor()
                        ),
                    ));
                }
                t.to_dtype(DType::F32)?.to_device(device)?
            }
            None => normal(&mut rngs, [c, lh, lw], device)?,
        };
        let mut x = initial.affine(sched.init_noise_sigma(), 0.0)?;
        let timesteps = sched.timesteps().to_vec();
        let total = timesteps.len();
        let g = req.guidance_scale;
        for (i, &t) in timesteps.iter().enumerate() {
            cancel.check()?;
            let input = if plan.guidance { Tensor::cat(&[&x, &x], 0)? } else { x.clone() };
            let input = sched.scale_model_input(&input, t)?;
            let ts = Tensor::new(&[t as f32], device)?;
            // Detached: with a UNet being trained (`with_unet`, `Var` weights) the steps
            // would otherwise chain one backward graph through every step. On the compute
            // pool, as a training step: the step's parallel ops fork and join there
            // instead of waking the pool and parking this thread once per op.
            let unet = &inner.unet;
            let out = crate::util::on_compute_pool(|| unet.forward(&input, &ts, &context, ForwardMode::Infer))?;
            let out = out.detach().to_dtype(DType::F32)?;
            let eps = if plan.guidance {
                let uncond = out.narrow(0, 0, b)?;
                let text = out.narrow(0, b, b)?;
                (&uncond + ((&text - &uncond)? * g)?)?
            } else {
                out
            };
            let noise = if sched.draws_noise(t) { Some(normal(&mut rngs, [c, lh, lw], device)?) } else { None };
            x = sched.step(&eps, t, &x, noise.as_ref())?;
            progress(i + 1, total)?;
        }

        let pixels = match &inner.vae {
            Some(vae) => {
                // Decode one image at a time (the VAE's full-resolution activations dominate).
                let z = vae.from_unet_latents(&x)?;
                let mut pixels = Vec::with_capacity(b);
                for i in 0..b {
                    cancel.check()?;
                    let img = vae.decode(&z.narrow(0, i, 1)?, ForwardMode::Infer)?.to_dtype(DType::F32)?;
                    pixels.push(to_unit_hwc(&img)?);
                }
                Tensor::cat(&pixels, 0)?
            }
            None => {
                cancel.check()?;
                to_unit_hwc(&x)?
            }
        };
        let (height, width) = (plan.height, plan.width);
        let mut images = Vec::with_capacity(b);
        for i in 0..b {
            let v: Vec<f32> = pixels.get(i)?.flatten_all()?.to_vec1()?;
            let rgb = v.iter().map(|&p| (p * 255.0).round_ties_even().clamp(0.0, 255.0) as u8).collect();
            let p = i / plan.per_prompt;
            let settings = ImageSettings {
                prompt: plan.prompts[p].clone(),
                negative_prompt: plan.negatives.get(p).cloned().unwrap_or_default(),
                seed: if req.latents.is_some() { None } else { Some(plan.seed.wrapping_add(i as u64)) },
                steps: plan.steps,
                guidance_scale: g,
                scheduler: scheduler_name(plan.kind).to_string(),
                karras_sigmas,
                width,
                height,
                clip_skip: req.clip_skip,
                model: req.model.clone(),
            };
            images.push(GeneratedImage { width, height, rgb, settings });
        }
        Ok(Txt2ImgOutput { images, pixels, latents: x, seed: plan.seed, warnings: plan.warnings })
    }
}

/// Runs `on_unet` / `on_te` on the models that have an adapter.
fn for_each_adapter(
    unet: &mut UNet2DConditionModel,
    te: &mut ClipTextModel,
    on_unet: impl FnOnce(&mut UNet2DConditionModel) -> Result<()>,
    on_te: impl FnOnce(&mut ClipTextModel) -> Result<()>,
) -> Result<()> {
    if unet.lora.is_some() {
        on_unet(unet)?;
    }
    if te.lora.is_some() {
        on_te(te)?;
    }
    Ok(())
}

/// `[b, 3, h, w]` in `[-1, 1]` to `[b, h, w, 3]` in `[0, 1]` (clamped).
fn to_unit_hwc(img: &Tensor) -> Result<Tensor> {
    let img = ((img / 2.0)? + 0.5)?.clamp(0f32, 1f32)?;
    Ok(img.permute((0, 2, 3, 1))?.contiguous()?)
}

/// Refuses a text encoder with fewer positions than the tokenizer's padded length.
fn check_tokenizer_fits(tokenizer: &ClipTokenizer, te: &ClipTextModel) -> Result<()> {
    let tc = te.config();
    if tokenizer.model_max_length() > tc.max_position_embeddings {
        return Err(Error::config(
            "tokenizer/tokenizer_config.json:model_max_length",
            format!(
                "{} is more than the text encoder's {} positions",
                tokenizer.model_max_length(),
                tc.max_position_embeddings
            ),
        ));
    }
    Ok(())
}

/// Each row of `t` repeated `n` times in place (diffusers' `repeat` + `view`).
fn repeat_rows(t: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(t.clone());
    }
    let dims = t.dims().to_vec();
    let mut expanded = vec![dims[0], n];
    expanded.extend_from_slice(&dims[1..]);
    let mut out = dims.clone();
    out[0] *= n;
    Ok(t.unsqueeze(1)?.broadcast_as(expanded)?.contiguous()?.reshape(out)?)
}

/// `[rngs.len(), c, h, w]` standard normal draws, image `i` one `torch.randn((1, c, h, w))`
/// from `rngs[i]` (diffusers' `randn_tensor` with a list of generators).
fn normal(rngs: &mut [TorchGenerator], [c, h, w]: [usize; 3], device: &Device) -> Result<Tensor> {
    let per = c * h * w;
    let mut v = vec![0f32; rngs.len() * per];
    for (i, rng) in rngs.iter_mut().enumerate() {
        rng.fill_randn(&mut v[i * per..(i + 1) * per]);
    }
    Ok(Tensor::from_vec(v, (rngs.len(), c, h, w), device)?)
}

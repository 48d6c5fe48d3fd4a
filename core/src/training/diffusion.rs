//! Image training: a Stable Diffusion UNet (full, or a LoRA on its attention) learning
//! to predict the noise added to the training images, as diffusers' `train_text_to_image`,
//! `train_text_to_image_lora` and `train_dreambooth(_lora)` scripts do:
//!
//! - images are resized (shorter side to the resolution), cut (centre, random or
//!   aspect-ratio bucket), optionally flipped, mapped to [-1, 1] and encoded by the VAE
//!   (a sample of its latent distribution, times its scaling factor; pixel-space
//!   pipelines train on the pixels); centre cuts without flips are encoded once;
//! - captions (or the DreamBooth instance prompt) are encoded once by the frozen text
//!   encoder (each step when it is trained), a `caption_dropout` share of them replaced
//!   by the empty prompt;
//! - each step draws noise (plus offset noise), timesteps uniform in the DDPM schedule of
//!   `scheduler_config.json`, and regresses the UNet on the target of its
//!   `prediction_type` (epsilon, v or sample) with MSE, optionally min-SNR-gamma weighted;
//! - DreamBooth prior preservation adds the class images' loss (rendered by the base
//!   before training and kept under the job) times `prior_loss_weight`.
//!
//! Every random draw comes from the seed, the step and the micro-batch, so a resumed run
//! repeats the same steps. `train_text_encoder` trains the text encoder too: all its
//! weights in a full fine-tune; a LoRA on its attention projections beside the UNet's
//! (saved in the same diffusers LoRA file, under `text_encoder.`) in a LoRA run.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde_json::Value;

use super::trainee::Trainee;
use crate::data::DatasetStore;
use crate::diffusion::image::{self as img, ImageLimits, RgbImage};
use crate::diffusion::{
    lora, ClipTextModel, LoraFile, PredictionType, Scheduler, SchedulerKind, StableDiffusionPipeline, Txt2ImgRequest,
    UNet2DConditionModel,
};
use crate::error::{Error, IoResultExt, Location, Result};
use crate::events::CancelToken;
use crate::models::{ForwardMode, LoadOptions};
use crate::types::{DatasetRecord, ImageCrop, ImageTrainOptions, LoraConfig, Method, ModelRecord, TrainSpec};
use crate::util;

/// Class images of DreamBooth prior preservation, under the job directory.
const CLASS_DIR: &str = "class_images";
/// The UNet of a full fine-tune's checkpoint, under the checkpoint directory.
const UNET_DIR: &str = "unet";
/// The text encoder when it is trained too.
const TEXT_ENCODER_DIR: &str = "text_encoder";
/// Aspect ratios (width / height) of the buckets.
const BUCKET_RATIOS: [f64; 7] = [0.5, 0.667, 0.75, 1.0, 1.333, 1.5, 2.0];

/// Where a run loads from: its job directory, the datasets, its cancel token and the
/// home's memory limit.
#[derive(Clone, Copy)]
pub(crate) struct RunEnv<'a> {
    pub(crate) job_dir: &'a Path,
    pub(crate) datasets: &'a DatasetStore,
    pub(crate) cancel: &'a CancelToken,
    pub(crate) memory_limit: u64,
}

/// What a training image is kept as.
enum Input {
    /// `[3, h, w]` in [-1, 1]: the final cut for centre and bucket crops, the resized
    /// image for random ones (cut and flipped at each step).
    Pixels(Tensor),
    /// The latent distribution `(mean, std)` `[c, h/f, w/f]`, encoded once, when the cut
    /// never changes (centre or bucket crop without flips, with a VAE).
    Latent(Tensor, Tensor),
}

/// A prepared training image.
struct Sample {
    input: Input,
    /// Index of the caption's embedding.
    caption: usize,
    /// The training size `(h, w)` (the bucket).
    size: (usize, usize),
}

pub(crate) struct DiffusionTrainee {
    /// The base pipeline with the trained UNet in it (validation and class images).
    pipe: StableDiffusionPipeline,
    unet: UNet2DConditionModel,
    /// Trained with the UNet (`train_text_encoder`); None: frozen, captions encoded once.
    text_encoder: Option<ClipTextModel>,
    method: Method,
    base_dir: PathBuf,
    /// The base's files (relative paths), copied into a full fine-tune's output.
    base_files: Vec<String>,
    train: Vec<Sample>,
    class: Vec<Sample>,
    eval: Vec<Sample>,
    /// Per distinct caption: its embedding (frozen encoder) and its token ids.
    captions: Vec<Tensor>,
    caption_ids: Vec<Tensor>,
    texts: Vec<String>,
    /// The empty prompt's caption index (caption dropout).
    empty: Option<usize>,
    alphas_cumprod: Vec<f64>,
    prediction: PredictionType,
    opts: ImageTrainOptions,
    seed: u64,
    resolution: usize,
    device: Device,
}

impl DiffusionTrainee {
    /// Loads the base pipeline and the UNet to train (from the checkpoint when resuming),
    /// and prepares the images of the two datasets (records of `image` datasets).
    pub(crate) fn load(
        spec: &TrainSpec,
        base: &ModelRecord,
        train: (&DatasetRecord, &[Value]),
        eval: (&DatasetRecord, &[Value]),
        checkpoint: Option<&Path>,
        env: &RunEnv<'_>,
    ) -> Result<Self> {
        let RunEnv { job_dir, datasets, cancel, memory_limit } = *env;
        let opts = spec.image.clone().unwrap_or_default();
        let lo = LoadOptions::default();
        let pipe = StableDiffusionPipeline::load(&base.path, &lo)?;
        let multiple = pipe.size_multiple();
        let resolution = match opts.resolution {
            Some(r) => r,
            None => pipe.default_size().0,
        };
        if resolution % multiple != 0 {
            return Err(Error::config(
                "image.resolution",
                format!("{resolution} is not a multiple of {multiple} (the VAE factor x the UNet's downsampling)"),
            ));
        }
        let unet_dir = base.path.join("unet");
        // A LoRA run resumes from its checkpoint's LoRA file (UNet and text-encoder parts).
        let resumed_lora = match (&spec.method, checkpoint) {
            (Method::Lora(_), Some(c)) => Some(LoraFile::read(c)?),
            _ => None,
        };
        let unet = match &spec.method {
            Method::Full => {
                let dir = checkpoint.map(|c| c.join(UNET_DIR)).unwrap_or(unet_dir);
                UNet2DConditionModel::load(dir, &LoadOptions { trainable: true, ..lo.clone() })?
            }
            Method::Lora(cfg) => {
                let mut u = UNet2DConditionModel::load(unet_dir, &lo)?;
                match &resumed_lora {
                    Some(file) => lora::load(&mut u, file)?,
                    None => u.add_lora(cfg, spec.seed)?,
                }
                u
            }
            Method::Classifier(_) => {
                return Err(Error::config("method", "a classifier is not trained on a Stable Diffusion base"))
            }
        };
        let mut pipe = pipe.with_unet(unet.clone())?;
        let text_encoder = if opts.train_text_encoder {
            let te = match &spec.method {
                // LoRA on the frozen encoder's projections, as `train_dreambooth_lora.py
                // --train_text_encoder` does (seeded apart from the UNet's adapter).
                Method::Lora(cfg) => {
                    let mut te = ClipTextModel::load(base.path.join(TEXT_ENCODER_DIR), &lo)?;
                    match &resumed_lora {
                        Some(file) => lora::load(&mut te, file)?,
                        None => {
                            let te_cfg = text_encoder_lora_config(cfg, &mut te);
                            te.add_lora(&te_cfg, spec.seed.wrapping_add(1))?;
                        }
                    }
                    te
                }
                _ => {
                    let dir = checkpoint.map(|c| c.join(TEXT_ENCODER_DIR)).unwrap_or(base.path.join(TEXT_ENCODER_DIR));
                    ClipTextModel::load(dir, &LoadOptions { trainable: true, ..lo.clone() })?
                }
            };
            pipe = pipe.with_text_encoder(te.clone())?;
            Some(te)
        } else {
            None
        };
        let sched = Scheduler::from_pipeline_dir(&base.path, Some(SchedulerKind::Ddpm))?;
        let alphas_cumprod: Vec<f64> = sched.alphas_cumprod().iter().map(|&a| f64::from(a)).collect();
        let mut me = Self {
            device: pipe.device().clone(),
            pipe,
            unet,
            text_encoder,
            method: spec.method.clone(),
            base_dir: base.path.clone(),
            base_files: base.files.iter().map(|f| f.name.clone()).collect(),
            train: Vec::new(),
            class: Vec::new(),
            eval: Vec::new(),
            captions: Vec::new(),
            caption_ids: Vec::new(),
            texts: Vec::new(),
            empty: None,
            alphas_cumprod,
            prediction: sched.prediction_type(),
            seed: spec.seed,
            resolution,
            opts,
        };
        let mut embeds = HashMap::new();
        let mut budget = Budget { limit: memory_limit, left: memory_limit, cancel };
        if me.opts.caption_dropout > 0.0 {
            me.empty = Some(me.caption("", &mut embeds)?);
        }
        me.train = me.prepare(datasets, train.0, train.1, &mut embeds, &mut budget)?;
        if me.train.is_empty() {
            return Err(Error::data(Location::file(&train.0.path), "no training image"));
        }
        me.eval = me.prepare(datasets, eval.0, eval.1, &mut embeds, &mut budget)?;
        if let Some(prompt) = me.opts.class_prompt.clone() {
            me.class = me.class_images(&prompt, &job_dir.join(CLASS_DIR), &mut embeds, &mut budget)?;
        }
        Ok(me)
    }

    /// The index of `text`'s embedding, encoding it once.
    fn caption(&mut self, text: &str, cache: &mut HashMap<String, usize>) -> Result<usize> {
        if let Some(&i) = cache.get(text) {
            return Ok(i);
        }
        let tok = self.pipe.tokenizer();
        let ids = tok.to_tensor(&[text], &self.device)?;
        let e = self.pipe.text_encoder().prompt_embeds(&ids, None, ForwardMode::Infer)?.squeeze(0)?;
        self.captions.push(e);
        self.caption_ids.push(ids.squeeze(0)?);
        self.texts.push(text.to_string());
        cache.insert(text.to_string(), self.captions.len() - 1);
        Ok(self.captions.len() - 1)
    }

    /// Decodes, sizes and (when the cut is fixed) encodes the images of `records`.
    fn prepare(
        &mut self,
        datasets: &DatasetStore,
        ds: &DatasetRecord,
        records: &[Value],
        cache: &mut HashMap<String, usize>,
        budget: &mut Budget<'_>,
    ) -> Result<Vec<Sample>> {
        if records.is_empty() {
            return Ok(Vec::new());
        }
        if ds.format != crate::types::DatasetFormat::Image {
            return Err(Error::config(
                "dataset",
                format!("`{}` is a {} dataset: a diffusion model trains on an image dataset", ds.name, ds.format),
            ));
        }
        let mut out = Vec::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            budget.cancel.check()?;
            let path = datasets.image_path(ds, r).map_err(|e| match e {
                Error::InvalidData { location, reason } => {
                    Error::InvalidData { location: location.at(i as u64 + 1), reason }
                }
                other => other,
            })?;
            let (image, _) = img::decode(&path, &ImageLimits::default())?;
            let text = match &self.opts.instance_prompt {
                Some(p) => p.clone(),
                None => r.get("text").and_then(Value::as_str).unwrap_or("").to_string(),
            };
            let caption = self.caption(&text, cache)?;
            out.push(self.sample(&image, caption, budget)?);
        }
        Ok(out)
    }

    /// The training size of an image: the square resolution, or the nearest bucket.
    fn size_for(&self, w: u32, h: u32) -> (usize, usize) {
        let r = self.resolution;
        if self.opts.crop != ImageCrop::Buckets {
            return (r, r);
        }
        let m = self.pipe.size_multiple();
        let ratio = f64::from(w) / f64::from(h.max(1));
        let best = BUCKET_RATIOS
            .iter()
            .copied()
            .min_by(|a, b| (a.ln() - ratio.ln()).abs().total_cmp(&(b.ln() - ratio.ln()).abs()))
            .unwrap_or(1.0);
        // Sides of about r^2 pixels with that ratio, rounded to the size multiple.
        let area = (r * r) as f64;
        let bw = ((area * best).sqrt() / m as f64).round().max(1.0) as usize * m;
        let bh = ((area / best).sqrt() / m as f64).round().max(1.0) as usize * m;
        (bh, bw)
    }

    /// The image sized for training (see [`Input`]), its bytes taken from `budget`
    /// before anything is allocated.
    fn sample(&self, image: &RgbImage, caption: usize, budget: &mut Budget<'_>) -> Result<Sample> {
        let (h, w) = self.size_for(image.width, image.height);
        // Shorter side (relative to the target) resized to cover the target.
        let scale = (w as f64 / f64::from(image.width)).max(h as f64 / f64::from(image.height));
        let rw = ((f64::from(image.width) * scale).round() as u32).max(w as u32);
        let rh = ((f64::from(image.height) * scale).round() as u32).max(h as u32);
        let fixed = self.opts.crop != ImageCrop::Random;
        let kept_pixels = if fixed { (w * h) as u64 } else { u64::from(rw) * u64::from(rh) };
        // The resized RGB8 image, then the f32 tensor kept.
        budget.take(u64::from(rw) * u64::from(rh) * 3 + kept_pixels * 3 * 4)?;
        let resized = img::resize(image, rw, rh)?;
        let kept = if fixed { img::center_crop(&resized, w as u32, h as u32)? } else { resized };
        let pixels = img::to_tensor(&kept, &self.device)?;
        let input = match (self.pipe.vae(), fixed && !self.opts.random_flip) {
            (Some(vae), true) => {
                let d = vae.encode(&pixels.unsqueeze(0)?, ForwardMode::Infer)?;
                Input::Latent(d.mode().squeeze(0)?, d.std()?.squeeze(0)?)
            }
            _ => Input::Pixels(pixels),
        };
        Ok(Sample { input, caption, size: (h, w) })
    }

    /// DreamBooth class images: those already under `dir` (an earlier run of the job),
    /// the missing ones rendered by the base now (before any training step).
    fn class_images(
        &mut self,
        prompt: &str,
        dir: &Path,
        cache: &mut HashMap<String, usize>,
        budget: &mut Budget<'_>,
    ) -> Result<Vec<Sample>> {
        std::fs::create_dir_all(dir).with_path(dir)?;
        let n = self.opts.num_class_images;
        let caption = self.caption(prompt, cache)?;
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            budget.cancel.check()?;
            let path = dir.join(format!("{i:05}.png"));
            if !path.is_file() {
                let req = Txt2ImgRequest {
                    prompts: vec![prompt.to_string()],
                    guidance_scale: self.opts.validation_guidance_scale,
                    num_inference_steps: self.opts.validation_steps,
                    scheduler: self.opts.validation_scheduler.clone(),
                    seed: Some(self.seed.wrapping_add(i as u64)),
                    height: Some(self.resolution),
                    width: Some(self.resolution),
                    ..Default::default()
                };
                // Before the first step the trained UNet is the base's (a full fine-tune's
                // copy, or a LoRA whose B is 0); a checkpoint exists only once every class
                // image does, so a resumed run never renders them with trained weights.
                let out = self.pipe.txt2img(&req, &mut |_, _| Ok(()), budget.cancel)?;
                let image = out.images.into_iter().next().ok_or_else(|| Error::Internal("no class image".into()))?;
                util::write_atomic(&path, &image.to_png()?)?;
            }
            let (image, _) = img::decode(&path, &ImageLimits::default())?;
            out.push(self.sample(&image, caption, budget)?);
        }
        Ok(out)
    }

    /// The step's random source: a pure function of the seed, the step and the micro-batch.
    fn rng(&self, step: u64, micro: usize, stream: u64) -> ChaCha8Rng {
        let mut r = ChaCha8Rng::seed_from_u64(self.seed);
        r.set_stream(step.wrapping_mul(1 << 20).wrapping_add((micro as u64) << 4).wrapping_add(stream));
        r
    }

    fn normal(rng: &mut ChaCha8Rng, shape: &[usize], device: &Device) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        let v: Vec<f32> = (0..n).map(|_| rng.sample::<f32, _>(StandardNormal)).collect();
        Ok(Tensor::from_vec(v, shape, device)?)
    }

    /// The clean latents `x0` `[b, c, h, w]` of `samples`, cut and flipped for this step.
    fn latents(&self, samples: &[&Sample], rng: &mut ChaCha8Rng) -> Result<Tensor> {
        let (h, w) = samples[0].size;
        let mut pixels = Vec::with_capacity(samples.len());
        let mut cached = Vec::with_capacity(samples.len());
        for s in samples {
            let mut p = match &s.input {
                Input::Latent(mean, std) => {
                    cached.push((mean, std));
                    continue;
                }
                Input::Pixels(p) => p.clone(),
            };
            let (ph, pw) = (p.dim(1)?, p.dim(2)?);
            if ph != h || pw != w {
                let y = rng.random_range(0..=ph - h);
                let x = rng.random_range(0..=pw - w);
                p = p.narrow(1, y, h)?.narrow(2, x, w)?;
            }
            if self.opts.random_flip && rng.random_bool(0.5) {
                let idx: Vec<u32> = (0..w as u32).rev().collect();
                // A random cut is a strided view; index_select takes contiguous input.
                p = p.contiguous()?.index_select(&Tensor::new(idx.as_slice(), &self.device)?, 2)?;
            }
            pixels.push(p);
        }
        let Some(vae) = self.pipe.vae() else {
            return Ok(Tensor::stack(&pixels, 0)?);
        };
        let z = if cached.is_empty() {
            let d = vae.encode(&Tensor::stack(&pixels, 0)?, ForwardMode::Infer)?;
            let noise = Self::normal(rng, d.mode().dims(), &self.device)?;
            d.sample(&noise)?
        } else {
            let means: Vec<&Tensor> = cached.iter().map(|c| c.0).collect();
            let stds: Vec<&Tensor> = cached.iter().map(|c| c.1).collect();
            let (mean, std) = (Tensor::stack(&means, 0)?, Tensor::stack(&stds, 0)?);
            let noise = Self::normal(rng, mean.dims(), &self.device)?;
            (mean + std.mul(&noise)?)?
        };
        vae.to_unet_latents(&z)
    }

    /// The noise added to the latents `[b, c, h, w]`: standard normal, plus the offset
    /// noise (one draw per sample and channel, times `noise_offset`) when set.
    fn noise(&self, rng: &mut ChaCha8Rng, dims: &[usize]) -> Result<Tensor> {
        let noise = Self::normal(rng, dims, &self.device)?;
        if self.opts.noise_offset <= 0.0 {
            return Ok(noise);
        }
        let off = Self::normal(rng, &[dims[0], dims[1], 1, 1], &self.device)?;
        Ok(noise.broadcast_add(&(off * self.opts.noise_offset)?)?)
    }

    /// The loss of `samples` (per-sample MSE, min-SNR weighted when set) and the
    /// per-sample losses, drawing noise and timesteps from `rng`.
    fn per_sample_loss(&self, samples: &[&Sample], rng: &mut ChaCha8Rng, mode: ForwardMode) -> Result<Tensor> {
        let x0 = self.latents(samples, rng)?.detach();
        let b = x0.dim(0)?;
        let noise = self.noise(rng, x0.dims())?;
        let n = self.alphas_cumprod.len();
        let t: Vec<usize> = (0..b).map(|_| rng.random_range(0..n)).collect();
        // Caption dropout: some captions become the empty prompt for this step.
        let caption: Vec<usize> = samples
            .iter()
            .map(|s| match self.empty {
                Some(e) if rng.random_bool(self.opts.caption_dropout) => e,
                _ => s.caption,
            })
            .collect();
        let context = match &self.text_encoder {
            Some(te) => {
                let ids: Vec<&Tensor> = caption.iter().map(|&c| &self.caption_ids[c]).collect();
                te.prompt_embeds(&Tensor::stack(&ids, 0)?, None, mode)?
            }
            None => Tensor::stack(&caption.iter().map(|&c| &self.captions[c]).collect::<Vec<_>>(), 0)?,
        };
        let target = Target {
            alphas_cumprod: &self.alphas_cumprod,
            prediction: self.prediction,
            snr_gamma: self.opts.snr_gamma,
        };
        target.loss(&self.unet, &x0, &noise, &t, &context, mode)
    }
}

impl DiffusionTrainee {
    /// The adapters (the UNet's, and the text encoder's when it is trained) as one
    /// diffusers LoRA file.
    fn save_lora(&self, dir: &Path) -> Result<()> {
        lora::save_lora_weights(dir, Some(&self.unet), self.text_encoder.as_ref()).map(|_| ())
    }
}

/// The text encoder's LoRA config for a run whose UNet gets `cfg`: the same rank, alpha
/// and dropout; `cfg.target_modules` when they name layers of the encoder (`all-linear`,
/// `q_proj`, ...), else diffusers' `q_proj`, `k_proj`, `v_proj`, `out_proj`.
fn text_encoder_lora_config(cfg: &LoraConfig, te: &mut ClipTextModel) -> LoraConfig {
    let fits = te.linears_mut().iter().any(|(n, _)| LoraConfig::matches(&cfg.target_modules, n));
    LoraConfig { target_modules: if fits { cfg.target_modules.clone() } else { Vec::new() }, ..cfg.clone() }
}

impl Trainee for DiffusionTrainee {
    /// The UNet's, then (when trained) the text encoder's under `text_encoder.`.
    fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        let mut vars = self.unet.named_trainable_vars();
        match &self.text_encoder {
            // A LoRA's names are its file keys (`text_encoder.<module>.lora_A.weight`).
            Some(te) if te.lora_config().is_some() => vars.extend(te.named_trainable_vars()),
            Some(te) => {
                vars.extend(te.named_trainable_vars().into_iter().map(|(n, v)| (format!("{TEXT_ENCODER_DIR}.{n}"), v)))
            }
            None => {}
        }
        vars
    }

    fn num_trainable_params(&self) -> usize {
        self.named_trainable_vars().iter().map(|(_, v)| v.elem_count()).sum()
    }

    fn num_train(&self) -> usize {
        self.train.len()
    }

    fn num_eval(&self) -> usize {
        self.eval.len()
    }

    fn unit(&self) -> &'static str {
        "images"
    }

    /// Shuffled from the seed and the epoch; with buckets, batches of one bucket each
    /// (in a shuffled order of batches).
    fn epoch_batches(&self, seed: u64, epoch: u32, batch_size: usize) -> Vec<Vec<usize>> {
        if self.opts.crop != ImageCrop::Buckets {
            let order = super::data::epoch_order(self.train.len(), seed, epoch);
            return order.chunks(batch_size).map(<[usize]>::to_vec).collect();
        }
        let sizes: Vec<(usize, usize)> = self.train.iter().map(|s| s.size).collect();
        bucket_batches(&sizes, seed, epoch, batch_size)
    }

    fn loss(&self, batch: &[usize], step: u64, micro: usize) -> Result<(Tensor, usize)> {
        let samples: Vec<&Sample> = batch.iter().map(|&i| &self.train[i]).collect();
        let mut rng = self.rng(step, micro, 0);
        let loss = self.per_sample_loss(&samples, &mut rng, ForwardMode::Train)?.mean_all()?;
        if self.class.is_empty() {
            return Ok((loss, batch.len()));
        }
        // Prior preservation: as many class images as instance images, in turn.
        let n = self.class.len();
        let start = (step as usize).wrapping_mul(batch.len()).wrapping_add(micro * batch.len());
        let class: Vec<&Sample> = (0..batch.len()).map(|j| &self.class[(start + j) % n]).collect();
        let mut rng = self.rng(step, micro, 1);
        let prior = self.per_sample_loss(&class, &mut rng, ForwardMode::Train)?.mean_all()?;
        Ok(((loss + (prior * self.opts.prior_loss_weight)?)?, batch.len()))
    }

    /// The mean loss over the eval images with noise and timesteps fixed by the seed
    /// (the same draws at every evaluation, so the figures compare).
    fn eval_loss(&self, batch_size: usize) -> Result<f64> {
        let mut rng = self.rng(u64::MAX, 0, 2);
        let (mut sum, mut n) = (0f64, 0usize);
        let mut i = 0;
        while i < self.eval.len() {
            // Batches of one size (buckets differ).
            let size = self.eval[i].size;
            let mut chunk = Vec::new();
            while i < self.eval.len() && chunk.len() < batch_size && self.eval[i].size == size {
                chunk.push(&self.eval[i]);
                i += 1;
            }
            let l = self.per_sample_loss(&chunk, &mut rng, ForwardMode::Infer)?;
            sum += l.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            n += chunk.len();
        }
        Ok(sum / n.max(1) as f64)
    }

    fn sample(&self, i: usize) -> Option<String> {
        let s = self.train.get(i)?;
        Some(self.texts[s.caption].clone())
    }

    /// LoRA: the diffusers LoRA file; full: the UNet (`unet/`).
    fn save_checkpoint(&self, dir: &Path) -> Result<()> {
        match self.method {
            Method::Lora(_) | Method::Classifier(_) => self.save_lora(dir),
            Method::Full => {
                if let Some(te) = &self.text_encoder {
                    te.save(dir.join(TEXT_ENCODER_DIR))?;
                }
                self.unet.save(dir.join(UNET_DIR))
            }
        }
    }

    /// LoRA: the diffusers LoRA file (what `pipe.load_lora_weights(dir)` reads); full: a
    /// complete pipeline directory, the base's files with the trained UNet.
    fn save_output(&self, dir: &Path) -> Result<()> {
        match self.method {
            Method::Lora(_) | Method::Classifier(_) => self.save_lora(dir),
            Method::Full => {
                let trained_te = self.text_encoder.is_some();
                for f in &self.base_files {
                    let rel = Path::new(f);
                    if rel.starts_with(UNET_DIR) || (trained_te && rel.starts_with(TEXT_ENCODER_DIR)) {
                        continue;
                    }
                    let to = dir.join(rel);
                    if let Some(parent) = to.parent() {
                        std::fs::create_dir_all(parent).with_path(parent)?;
                    }
                    std::fs::copy(self.base_dir.join(rel), &to).with_path(&to)?;
                }
                if let Some(te) = &self.text_encoder {
                    te.save(dir.join(TEXT_ENCODER_DIR))?;
                }
                self.unet.save(dir.join(UNET_DIR))
            }
        }
    }

    fn render_due(&self, step: u64, total: u64) -> bool {
        !self.opts.validation_prompts.is_empty()
            && (step == total || self.opts.validation_every.is_some_and(|k| step.is_multiple_of(k)))
    }

    /// The validation prompts with the fixed seed, as one PNG grid
    /// `samples/step-<N>.png` (prompts, seed and step in its text chunks).
    fn render(&self, step: u64, dir: &Path, cancel: &CancelToken) -> Result<Option<PathBuf>> {
        if self.opts.validation_prompts.is_empty() {
            return Ok(None);
        }
        let req = Txt2ImgRequest {
            prompts: self.opts.validation_prompts.clone(),
            guidance_scale: self.opts.validation_guidance_scale,
            num_inference_steps: self.opts.validation_steps,
            scheduler: self.opts.validation_scheduler.clone(),
            seed: Some(self.opts.validation_seed.unwrap_or(self.seed)),
            height: Some(self.resolution),
            width: Some(self.resolution),
            ..Default::default()
        };
        let out = self.pipe.txt2img(&req, &mut |_, _| Ok(()), cancel)?;
        let cells: Vec<RgbImage> = out
            .images
            .into_iter()
            .map(|i| RgbImage::new(i.width as u32, i.height as u32, i.rgb))
            .collect::<Result<_>>()?;
        let rows: Vec<Vec<&RgbImage>> = cells.chunks(4).map(|c| c.iter().collect()).collect();
        let sheet = img::grid(&rows)?;
        let (w, h, rgb) = (sheet.width as usize, sheet.height as usize, sheet.data);
        let text = vec![
            ("prompts".to_string(), self.opts.validation_prompts.join("\n")),
            ("seed".to_string(), out.seed.to_string()),
            ("step".to_string(), step.to_string()),
        ];
        let png = crate::diffusion::png::encode_rgb8(w, h, &rgb, &text)?;
        std::fs::create_dir_all(dir).with_path(dir)?;
        let path = dir.join(format!("step-{step:06}.png"));
        util::write_atomic(&path, &png)?;
        Ok(Some(path))
    }
}

/// What the UNet regresses on and how each sample's error is weighted.
struct Target<'a> {
    alphas_cumprod: &'a [f64],
    prediction: PredictionType,
    snr_gamma: Option<f64>,
}

impl Target<'_> {
    /// The per-sample loss `[b]` of predicting from `x0` noised with `noise` at
    /// timesteps `t` (diffusers' `add_noise`): MSE against the prediction type's target
    /// (the noise, `get_velocity`, or `x0`), times the min-SNR-gamma weight
    /// `min(snr, gamma) / snr` (`/ (snr + 1)` for v) when set. The mean over the batch
    /// is the loss of diffusers' training scripts.
    fn loss(
        &self,
        unet: &UNet2DConditionModel,
        x0: &Tensor,
        noise: &Tensor,
        t: &[usize],
        context: &Tensor,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let b = t.len();
        let device = x0.device();
        let acp: Vec<f64> = t.iter().map(|&i| self.alphas_cumprod[i]).collect();
        let col = |f: &dyn Fn(f64) -> f64| -> Result<Tensor> {
            let v: Vec<f32> = acp.iter().map(|&a| f(a) as f32).collect();
            Ok(Tensor::from_vec(v, (b, 1, 1, 1), device)?)
        };
        let (sa, s1a) = (col(&|a| a.sqrt())?, col(&|a| (1.0 - a).sqrt())?);
        let noisy = (x0.broadcast_mul(&sa)? + noise.broadcast_mul(&s1a)?)?;
        let target = match self.prediction {
            PredictionType::Epsilon => noise.clone(),
            PredictionType::VPrediction => (noise.broadcast_mul(&sa)? - x0.broadcast_mul(&s1a)?)?,
            PredictionType::Sample => x0.clone(),
        };
        let tt: Vec<f32> = t.iter().map(|&i| i as f32).collect();
        let tt = Tensor::from_vec(tt, b, device)?;
        let pred = unet.forward(&noisy, &tt, context, mode)?;
        let mse = (pred - target)?.sqr()?.flatten_from(1)?.mean(1)?;
        let Some(gamma) = self.snr_gamma else { return Ok(mse) };
        let w: Vec<f32> = acp
            .iter()
            .map(|&a| {
                let snr = a / (1.0 - a);
                let m = snr.min(gamma);
                (match self.prediction {
                    PredictionType::VPrediction => m / (snr + 1.0),
                    _ => m / snr,
                }) as f32
            })
            .collect();
        Ok(mse.mul(&Tensor::from_vec(w, b, device)?)?)
    }
}

/// The batches of an epoch over examples of the given sizes: each size's examples in
/// the epoch's shuffled order, cut into batches of one size, the batches shuffled.
fn bucket_batches(sizes: &[(usize, usize)], seed: u64, epoch: u32, batch_size: usize) -> Vec<Vec<usize>> {
    let mut by_size: Vec<((usize, usize), Vec<usize>)> = Vec::new();
    for i in super::data::epoch_order(sizes.len(), seed, epoch) {
        match by_size.iter_mut().find(|(s, _)| *s == sizes[i]) {
            Some((_, v)) => v.push(i),
            None => by_size.push((sizes[i], vec![i])),
        }
    }
    let batches: Vec<Vec<usize>> =
        by_size.iter().flat_map(|(_, v)| v.chunks(batch_size).map(<[usize]>::to_vec)).collect();
    let shuffle = super::data::epoch_order(batches.len(), seed.wrapping_add(0x5eed), epoch);
    shuffle.into_iter().map(|i| batches[i].clone()).collect()
}

/// The memory the prepared images may take (the home's limit), and the run's cancel
/// token, checked image by image while they are prepared.
struct Budget<'a> {
    limit: u64,
    left: u64,
    cancel: &'a CancelToken,
}

impl Budget<'_> {
    fn take(&mut self, bytes: u64) -> Result<()> {
        match self.left.checked_sub(bytes) {
            Some(left) => {
                self.left = left;
                Ok(())
            }
            None => Err(Error::config(
                "dataset",
                format!(
                    "its images, prepared at the training size, need more than the memory limit ({}); use \
                     fewer or smaller images, a lower image.resolution, or crop center instead of random",
                    crate::models::memory::human(u128::from(self.limit))
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn fixtures() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
    }

    #[test]
    fn bucket_batches_hold_one_size_and_cover_every_example_once() {
        let sizes = [(16, 16), (16, 24), (16, 16), (24, 16), (16, 24), (16, 16), (16, 16)];
        let batches = bucket_batches(&sizes, 7, 0, 2);
        for b in &batches {
            assert!(b.iter().all(|&i| sizes[i] == sizes[b[0]]), "{b:?} mixes sizes");
            assert!(b.len() <= 2);
        }
        let mut seen: Vec<usize> = batches.concat();
        seen.sort();
        assert_eq!(seen, (0..sizes.len()).collect::<Vec<_>>());
        // Four 16x16, two 16x24, one 24x16: 2 + 1 + 1 batches.
        assert_eq!(batches.len(), 4);
        assert_eq!(bucket_batches(&sizes, 7, 0, 2), batches, "deterministic from seed and epoch");
        assert_ne!(bucket_batches(&sizes, 7, 1, 2), batches, "another epoch, another order");
    }

    #[test]
    fn the_image_budget_refuses_what_does_not_fit_naming_the_dataset() {
        let cancel = CancelToken::new();
        let mut b = Budget { limit: 100, left: 100, cancel: &cancel };
        b.take(60).unwrap();
        match b.take(60).unwrap_err() {
            Error::InvalidConfig { field, reason } => {
                assert_eq!(field, "dataset");
                assert!(reason.contains("100 B") || reason.contains("100"), "{reason}");
            }
            e => panic!("{e}"),
        }
    }

    fn first5_and_norm(t: &Tensor) -> (Vec<f32>, f32) {
        let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let norm = v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt() as f32;
        (v[..v.len().min(5)].to_vec(), norm)
    }

    /// One step of diffusers' train_text_to_image.py on tiny-sd (fixed latents, noise,
    /// timesteps and text states; tests/fixtures/make_sd_train_refs.py): the loss for
    /// the epsilon and v targets, plain and min-SNR weighted, within 1e-4; the full
    /// fine-tune's gradients: every parameter's whole gradient for epsilon plain and v
    /// min-SNR (each tensor within 1e-4 at every element; the worst is printed), the
    /// first 5 values and norm of 5 weights' for the other two.
    #[test]
    fn the_training_loss_and_gradients_match_diffusers() {
        let r =
            candle_core::safetensors::load(fixtures().join("sd-train/train_step.safetensors"), &Device::Cpu).unwrap();
        let dir = fixtures().join("tiny-sd");
        let unet = UNet2DConditionModel::load(dir.join("unet"), &LoadOptions { trainable: true, ..Default::default() })
            .unwrap();
        let sched = Scheduler::from_pipeline_dir(&dir, Some(SchedulerKind::Ddpm)).unwrap();
        let acp: Vec<f64> = sched.alphas_cumprod().iter().map(|&a| f64::from(a)).collect();
        let t: Vec<usize> = r["timesteps"].to_vec1::<f32>().unwrap().iter().map(|&x| x as usize).collect();
        let vars: HashMap<String, Var> = unet.named_trainable_vars().into_iter().collect();
        let mut whole = Vec::new();
        for (prediction, p) in [(PredictionType::Epsilon, "epsilon"), (PredictionType::VPrediction, "v_prediction")] {
            for (snr_gamma, g) in [(None, "plain"), (Some(5.0), "snr5")] {
                let key = format!("{p}_{g}");
                let target = Target { alphas_cumprod: &acp, prediction, snr_gamma };
                let loss = target
                    .loss(&unet, &r["x0"], &r["noise"], &t, &r["context"], ForwardMode::Train)
                    .unwrap()
                    .mean_all()
                    .unwrap();
                let want = r[&format!("{key}.loss")].to_vec1::<f32>().unwrap()[0];
                let got = loss.to_scalar::<f32>().unwrap();
                assert!((got - want).abs() < 1e-4, "{key}: loss {got} vs diffusers {want}");
                let grads = loss.backward().unwrap();
                let names: Vec<String> = r
                    .keys()
                    .filter_map(|k| k.strip_prefix(&format!("{key}.grad.")).and_then(|k| k.strip_suffix(".norm")))
                    .map(String::from)
                    .collect();
                assert_eq!(names.len(), 5);
                for n in names {
                    let (first, norm) = first5_and_norm(grads.get(&vars[&n]).unwrap());
                    let want_first = r[&format!("{key}.grad.{n}.first5")].to_vec1::<f32>().unwrap();
                    let want_norm = r[&format!("{key}.grad.{n}.norm")].to_vec1::<f32>().unwrap()[0];
                    assert!(
                        (norm - want_norm).abs() <= 1e-4 * want_norm.max(1.0),
                        "{key} {n}: norm {norm} vs {want_norm}"
                    );
                    for (a, b) in first.iter().zip(&want_first) {
                        assert!((a - b).abs() < 1e-4, "{key} {n}: {first:?} vs {want_first:?}");
                    }
                }
                // Every parameter's whole gradient, where the fixture has them.
                let prefix = format!("{key}.full_grad.");
                let want: HashMap<&str, &Tensor> =
                    r.iter().filter_map(|(k, v)| k.strip_prefix(&prefix).map(|n| (n, v))).collect();
                if want.is_empty() {
                    continue;
                }
                let mut missing: Vec<&String> = vars.keys().filter(|n| !want.contains_key(n.as_str())).collect();
                missing.sort();
                let mut extra: Vec<&&str> = want.keys().filter(|n| !vars.contains_key(**n)).collect();
                extra.sort();
                assert!(
                    missing.is_empty() && extra.is_empty(),
                    "{key}: not in diffusers {missing:?}, not here {extra:?}"
                );
                let mut worst = (0f32, String::new(), 0f32);
                for (n, var) in &vars {
                    let w = want[n.as_str()];
                    // A parameter the loss does not reach has no gradient here, zeros there.
                    let g = match grads.get(var) {
                        Some(g) => g.clone(),
                        None => w.zeros_like().unwrap(),
                    };
                    // 1x1-conv proj_in / proj_out are held as linear layers: [o, i] for [o, i, 1, 1].
                    assert_eq!(g.elem_count(), w.elem_count(), "{key} {n}: {:?} vs {:?}", g.dims(), w.dims());
                    let d = max_diff(&g.reshape(w.dims()).unwrap(), w);
                    assert!(d <= 1e-4, "{key} {n}: gradient differs from diffusers' by up to {d}");
                    if d >= worst.0 {
                        let scale = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                        worst = (d, n.clone(), scale);
                    }
                }
                whole.push(key.clone());
                eprintln!(
                    "{key}: {} gradients within 1e-4 of diffusers'; worst {} (max abs diff {:e}, its max |grad| {:e})",
                    vars.len(),
                    worst.1,
                    worst.0,
                    worst.2
                );
            }
        }
        assert_eq!(whole, ["epsilon_plain", "v_prediction_snr5"], "configurations compared gradient by gradient");
    }

    /// A `w` x `h` ramp: the red channel is `8 x` along x (`vertical`: along y), so the
    /// offset of a cut can be read back from its pixels.
    fn ramp(w: usize, h: usize, vertical: bool) -> Vec<u8> {
        let mut px = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let v = (8 * if vertical { y } else { x }) as u8;
                px.extend_from_slice(&[v, 255 - v, 0]);
            }
        }
        px
    }

    /// One training picture: file, (width, height), RGB bytes, caption.
    type Picture<'a> = (&'a str, (usize, usize), Vec<u8>, &'a str);

    /// The trainee of a full fine-tune of the tiny-shapes preset (pixel space: what
    /// `latents` returns is the cut picture itself) at resolution 16 on `pictures`, as
    /// the engine loads it (job directory under the returned temporary directory).
    fn trainee(pictures: &[Picture<'_>], opts: ImageTrainOptions, seed: u64) -> (tempfile::TempDir, DiffusionTrainee) {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::Home::open(dir.path().join("home")).unwrap();
        let folder = dir.path().join("pictures");
        std::fs::create_dir_all(&folder).unwrap();
        let mut meta = String::new();
        for (file, (w, h), rgb, caption) in pictures {
            std::fs::write(folder.join(file), crate::diffusion::png::encode_rgb8(*w, *h, rgb, &[]).unwrap()).unwrap();
            meta.push_str(&format!("{}\n", serde_json::json!({"file_name": file, "text": caption})));
        }
        std::fs::write(folder.join("metadata.jsonl"), meta).unwrap();
        let store = home.datasets();
        let ds = store.import_images(&folder, &crate::types::ImageImportOptions::default()).unwrap();
        let mut records = Vec::new();
        crate::data::for_each_record(&ds.path, |r| {
            records.push(r);
            Ok(true)
        })
        .unwrap();
        let base = home.models().create_preset("tiny-shapes", &Default::default()).unwrap();
        let spec = TrainSpec {
            base: base.id.clone().into(),
            dataset: ds.id.clone(),
            method: Method::Full,
            seed,
            image: Some(ImageTrainOptions { resolution: Some(16), ..opts }),
            ..Default::default()
        };
        let cancel = CancelToken::new();
        let job_dir = dir.path().join("job");
        let env = RunEnv { job_dir: &job_dir, datasets: &store, cancel: &cancel, memory_limit: u64::MAX };
        let t = DiffusionTrainee::load(&spec, &base, (&ds, &records), (&ds, &[]), None, &env).unwrap();
        (dir, t)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
    }

    fn scalar(t: &Tensor) -> f64 {
        f64::from(t.to_scalar::<f32>().unwrap())
    }

    /// Centre crops cut the middle of the picture; random crops cut a window of it at
    /// an offset drawn from the seed, the step and the micro-batch: always a whole
    /// window of the resized picture, at varying offsets, the same ones again for the
    /// same seed and others for another seed.
    #[test]
    fn random_crops_are_windows_of_the_picture_drawn_from_the_seed() {
        let pictures = [
            ("wide.png", (32, 16), ramp(32, 16, false), "a wide picture"),
            ("tall.png", (16, 32), ramp(16, 32, true), "a tall picture"),
        ];
        let opts = |crop| ImageTrainOptions { crop, ..Default::default() };
        let (_d1, center) = trainee(&pictures, opts(ImageCrop::Center), 7);
        let (_d2, random) = trainee(&pictures, opts(ImageCrop::Random), 7);
        let (_d3, again) = trainee(&pictures, opts(ImageCrop::Random), 7);
        let (_d4, other) = trainee(&pictures, opts(ImageCrop::Random), 8);
        // Which sample is which: the dataset's order is the import's.
        let wide = random.train.iter().position(|s| random.texts[s.caption] == "a wide picture").unwrap();
        let tall = 1 - wide;
        // The offset along `dim` of the window `x0` `[1, 3, 16, 16]` of sample `i`
        // (its resized picture, kept whole by a random crop); None: not a window.
        let offset = |t: &DiffusionTrainee, i: usize, dim: usize, x0: &Tensor| -> Option<usize> {
            let full = match &t.train[i].input {
                Input::Pixels(p) => p.clone(),
                Input::Latent(..) => panic!("a pixel-space pipeline keeps pixels"),
            };
            assert_eq!(full.dim(dim).unwrap(), 32, "32 x 16 already covers 16 x 16: not resized");
            (0..=16).find(|&o| max_diff(&x0.squeeze(0).unwrap(), &full.narrow(dim, o, 16).unwrap()) < 1e-6)
        };
        // Offsets of the wide and tall pictures' cuts at steps 0..12.
        let offsets = |t: &DiffusionTrainee| -> Vec<(usize, usize)> {
            (0..12u64)
                .map(|step| {
                    let cut = |i: usize, dim: usize| {
                        let x0 = t.latents(&[&t.train[i]], &mut t.rng(step, 0, 0)).unwrap();
                        assert_eq!(x0.dims(), [1, 3, 16, 16]);
                        if t.opts.crop == ImageCrop::Random {
                            offset(t, i, dim, &x0).unwrap_or_else(|| panic!("step {step}: not a window of the picture"))
                        } else {
                            // A centre crop keeps only its cut: compare with the random
                            // trainee's whole picture.
                            offset(&random, i, dim, &x0).unwrap_or_else(|| panic!("not a window"))
                        }
                    };
                    (cut(wide, 2), cut(tall, 1))
                })
                .collect()
        };
        let c = offsets(&center);
        assert!(c.iter().all(|&o| o == (8, 8)), "centre crops cut the middle: {c:?}");
        let r = offsets(&random);
        let distinct = |v: Vec<usize>| {
            let mut v = v;
            v.sort();
            v.dedup();
            v.len()
        };
        assert!(distinct(r.iter().map(|o| o.0).collect()) >= 4, "random x offsets barely vary: {r:?}");
        assert!(distinct(r.iter().map(|o| o.1).collect()) >= 4, "random y offsets barely vary: {r:?}");
        assert_eq!(offsets(&again), r, "the same seed cuts the same windows");
        assert_ne!(offsets(&other), r, "another seed cuts other windows");
        // A batch of both: each sample cut on its own, stacked.
        let both = random.latents(&[&random.train[wide], &random.train[tall]], &mut random.rng(3, 0, 0)).unwrap();
        assert_eq!(both.dims(), [2, 3, 16, 16]);
        assert!(offset(&random, wide, 2, &both.narrow(0, 0, 1).unwrap()).is_some());
    }

    /// Offset noise (diffusers' `noise += noise_offset * randn(b, c, 1, 1)`): the same
    /// per-pixel draw shifted by one more draw per sample and channel, times the offset;
    /// the loss of a step changes with it and repeats for the same seed.
    #[test]
    fn noise_offset_shifts_each_channel_and_changes_the_loss() {
        let pictures = [("a.png", (16, 16), ramp(16, 16, false), "a picture")];
        let (_d, mut t) = trainee(&pictures, ImageTrainOptions::default(), 7);
        let dims = [2, 3, 16, 16];
        let plain = t.noise(&mut t.rng(3, 0, 0), &dims).unwrap();
        let plain_loss = scalar(&t.loss(&[0], 3, 0).unwrap().0);
        t.opts.noise_offset = 0.25;
        let shifted = t.noise(&mut t.rng(3, 0, 0), &dims).unwrap();
        let mut rng = t.rng(3, 0, 0);
        let base = DiffusionTrainee::normal(&mut rng, &dims, &t.device).unwrap();
        let off = DiffusionTrainee::normal(&mut rng, &[2, 3, 1, 1], &t.device).unwrap();
        assert_eq!(max_diff(&plain, &base), 0.0, "without an offset: the plain draw");
        let want = base.broadcast_add(&(off.clone() * 0.25).unwrap()).unwrap();
        assert!(max_diff(&shifted, &want) < 1e-6, "with an offset: the plain draw plus 0.25 x one per channel");
        // The shift is one value per (sample, channel), not zero, not all the same.
        let shift = (&shifted - &plain).unwrap().flatten_from(2).unwrap();
        let (lo, hi) = (shift.min(2).unwrap(), shift.max(2).unwrap());
        assert!(max_diff(&lo, &hi) < 1e-5, "constant over the pixels");
        let per_channel: Vec<f32> = lo.flatten_all().unwrap().to_vec1().unwrap();
        assert!(per_channel.iter().all(|v| v.abs() > 1e-4), "{per_channel:?}");
        assert!(per_channel.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3), "{per_channel:?}");
        let loss = scalar(&t.loss(&[0], 3, 0).unwrap().0);
        assert!((loss - plain_loss).abs() > 1e-6, "the offset leaves the loss at {loss}");
        assert_eq!(scalar(&t.loss(&[0], 3, 0).unwrap().0), loss, "the same seed and step: the same loss");
    }

    /// DreamBooth prior preservation: the class images are rendered under the job, and
    /// the step's loss is the instance loss plus `prior_loss_weight` times the loss of the
    /// step's class images (as many as instance images, in turn; their own draws).
    #[test]
    fn prior_preservation_adds_the_class_loss_times_its_weight() {
        let pictures = [
            ("a.png", (16, 16), ramp(16, 16, false), "unused: the instance prompt"),
            ("b.png", (16, 16), ramp(16, 16, true), "unused too"),
        ];
        let opts = ImageTrainOptions {
            instance_prompt: Some("a photo of sks square".into()),
            class_prompt: Some("a photo of a square".into()),
            num_class_images: 3,
            validation_steps: 2,
            ..Default::default()
        };
        let (dir, mut t) = trainee(&pictures, opts, 7);
        assert_eq!(t.class.len(), 3);
        for i in 0..3 {
            assert!(dir.path().join(format!("job/{CLASS_DIR}/{i:05}.png")).is_file());
        }
        assert!(t.train.iter().all(|s| t.texts[s.caption] == "a photo of sks square"));
        let (step, batch) = (5u64, [0usize, 1]);
        let loss_at = |t: &mut DiffusionTrainee, w: f64| {
            t.opts.prior_loss_weight = w;
            let (l, n) = t.loss(&batch, step, 0).unwrap();
            assert_eq!(n, 2);
            scalar(&l)
        };
        let (l0, l1, l2) = (loss_at(&mut t, 0.0), loss_at(&mut t, 1.0), loss_at(&mut t, 2.5));
        let class = std::mem::take(&mut t.class);
        let instance = loss_at(&mut t, 1.0);
        assert!((l0 - instance).abs() < 1e-6, "weight 0: the instance loss ({l0} vs {instance})");
        let prior = l1 - l0;
        assert!(prior > 1e-3, "the class images add nothing ({l0} -> {l1})");
        assert!(((l2 - l0) - 2.5 * prior).abs() < 1e-4 * prior.max(1.0), "not linear in the weight: {l0} {l1} {l2}");
        // The prior term: class images (5 x 2) % 3 = 1 and 2, with the step's stream 1.
        let pair = [&class[1], &class[2]];
        let want = t.per_sample_loss(&pair, &mut t.rng(step, 0, 1), ForwardMode::Train).unwrap().mean_all().unwrap();
        assert!((prior - scalar(&want)).abs() < 1e-4 * prior.max(1.0), "prior {prior} vs class loss {want}");
    }
}

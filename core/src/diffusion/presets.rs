//! From-scratch diffusion pipelines: small architectures written as complete diffusers
//! directories with random (seeded, deterministic) weights, to train on a CPU in
//! minutes (see [`super::shapes`] for toy data they learn).
//!
//! A preset is pixel-space (no VAE: `"vae": [null, null]`, see
//! [`super::PipelineConfig`]): the UNet denoises RGB images in `[-1, 1]` directly. Its
//! text encoder is a small CLIP text transformer behind a byte-level CLIP tokenizer
//! (the 256 byte symbols and their `</w>` end-of-word forms, no merges: every word is
//! spelled out byte by byte), which transformers' `CLIPTokenizer` reads as well.
//! The directory also loads in diffusers (`StableDiffusionPipeline.from_pretrained(dir,
//! vae=None)`, `UNet2DConditionModel`, `CLIPTextModel`, `CLIPTokenizer` and
//! `CLIPTokenizerFast` give the same ids), though diffusers' pipeline cannot sample
//! without a VAE.
//!
//! Weights start as diffusers and transformers initialise them: PyTorch's defaults
//! for convolutions and linear layers (uniform in `±1/sqrt(fan_in)`, weights and
//! biases), ones and zeros for the norms; CLIP's own normal initialisation for the
//! text encoder (`initializer_range` 0.02, factor 1, zero biases).
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::diffusion::{presets, StableDiffusionPipeline};
//! let p = presets::find("tiny-shapes").unwrap();
//! presets::write_dir(p, 0, std::path::Path::new("/tmp/tiny-shapes"))?;
//! let sd = StableDiffusionPipeline::load("/tmp/tiny-shapes", &anneal::LoadOptions::default())?;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde_json::{json, Value};

use super::config::{DownBlockType, MidBlockType, UNetConfig, UpBlockType, MODEL_INDEX_FILE, PIXEL_CHANNELS};
use super::load::save_component;
use crate::error::{Error, IoResultExt, Result};
use crate::types::Schedule;

/// Training and sampling settings to start from for a preset (see the preset's
/// description for what they were measured to reach).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Recommended {
    /// AdamW peak learning rate, after a linear warmup, then `schedule`.
    pub learning_rate: f64,
    pub warmup_steps: usize,
    pub schedule: Schedule,
    pub steps: usize,
    pub batch_size: usize,
    /// Min-SNR-gamma loss weighting ([`crate::ImageTrainOptions::snr_gamma`]).
    pub snr_gamma: Option<f64>,
    /// Train the text encoder together with the UNet (it starts random too).
    pub train_text_encoder: bool,
    /// Sampling: scheduler short name, steps and classifier-free guidance.
    pub scheduler: &'static str,
    pub inference_steps: usize,
    pub guidance_scale: f64,
    /// Share of training captions replaced by the empty prompt, so that classifier-free
    /// guidance has an unconditional model to push away from.
    pub caption_dropout: f64,
}

/// A from-scratch pixel-space text-to-image architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct DiffusionPreset {
    pub name: &'static str,
    pub description: &'static str,
    /// Square images of this many pixels a side.
    pub resolution: usize,
    pub block_out_channels: &'static [usize],
    pub down_block_types: &'static [&'static str],
    pub up_block_types: &'static [&'static str],
    pub mid_block_type: Option<&'static str>,
    pub layers_per_block: usize,
    /// Attention heads per block (what diffusers' config calls `attention_head_dim`).
    pub attention_heads: usize,
    pub norm_num_groups: usize,
    pub text_hidden_size: usize,
    pub text_layers: usize,
    pub text_heads: usize,
    pub text_intermediate_size: usize,
    /// The tokenizer's `model_max_length` and the text encoder's positions.
    pub max_length: usize,
    /// `linear` or `squaredcos_cap_v2`.
    pub beta_schedule: &'static str,
    pub num_train_timesteps: usize,
    pub recommended: Recommended,
}

static PRESETS: &[DiffusionPreset] = &[DiffusionPreset {
    name: "tiny-shapes",
    description: "16x16 RGB pixel-space UNet (~0.26M parameters, channels 16/32, attention at 8x8) with a \
                  2-layer byte-level CLIP text encoder, for the toy shapes data (anneal::diffusion::shapes); \
                  its recommended settings (1,200 steps of 8) learn them in a few minutes on 2 CPU cores",
    resolution: 16,
    block_out_channels: &[16, 32],
    down_block_types: &["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types: &["CrossAttnUpBlock2D", "UpBlock2D"],
    mid_block_type: Some("UNetMidBlock2DCrossAttn"),
    layers_per_block: 1,
    attention_heads: 4,
    norm_num_groups: 8,
    text_hidden_size: 64,
    text_layers: 2,
    text_heads: 4,
    text_intermediate_size: 256,
    max_length: 32,
    beta_schedule: "squaredcos_cap_v2",
    num_train_timesteps: 1000,
    recommended: Recommended {
        learning_rate: 3e-3,
        warmup_steps: 20,
        schedule: Schedule::Cosine,
        steps: 1200,
        batch_size: 8,
        snr_gamma: Some(5.0),
        // The text encoder keeps its random weights: their features already tell the
        // captions apart, and the UNet learns to read fixed features faster than both
        // learn together (measured: colour and shape matched sooner).
        train_text_encoder: false,
        // DDPM with clip_sample: its x0 clipped to [-1, 1] at each step gives cleaner,
        // flatter colours than DDIM, Euler (ancestral) or DPM-Solver++ after a short
        // training (measured on the shapes score at 25 steps).
        scheduler: "ddpm",
        inference_steps: 25,
        guidance_scale: 3.0,
        caption_dropout: 0.1,
    },
}];

/// Every preset.
pub fn presets() -> &'static [DiffusionPreset] {
    PRESETS
}

/// The preset called `name`.
pub fn find(name: &str) -> Option<&'static DiffusionPreset> {
    PRESETS.iter().find(|p| p.name == name)
}

/// The byte-level tokenizer's special tokens, after the 512 byte tokens.
const BOS: &str = "<|startoftext|>";
const EOS: &str = "<|endoftext|>";

/// GPT-2's (and CLIP's) reversible mapping of bytes to printable characters, in CLIP's
/// vocabulary order.
fn byte_symbols() -> Vec<char> {
    let mut bs: Vec<u32> = (u32::from(b'!')..=u32::from(b'~')).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    cs.into_iter().map(|c| char::from_u32(c).unwrap_or('?')).collect()
}

impl DiffusionPreset {
    /// Token ids: the 256 byte symbols, their 256 `</w>` forms, then BOS and EOS.
    pub fn vocab_size(&self) -> usize {
        2 * 256 + 2
    }

    pub fn unet_config(&self) -> Value {
        json!({
            "_class_name": "UNet2DConditionModel",
            "_diffusers_version": "0.30.0",
            "sample_size": self.resolution,
            "in_channels": PIXEL_CHANNELS,
            "out_channels": PIXEL_CHANNELS,
            "center_input_sample": false,
            "flip_sin_to_cos": true,
            "freq_shift": 0,
            "down_block_types": self.down_block_types,
            "mid_block_type": self.mid_block_type,
            "up_block_types": self.up_block_types,
            "only_cross_attention": false,
            "block_out_channels": self.block_out_channels,
            "layers_per_block": self.layers_per_block,
            "downsample_padding": 1,
            "mid_block_scale_factor": 1,
            "dropout": 0.0,
            "act_fn": "silu",
            "norm_num_groups": self.norm_num_groups,
            "norm_eps": 1e-5,
            "cross_attention_dim": self.text_hidden_size,
            "transformer_layers_per_block": 1,
            "attention_head_dim": self.attention_heads,
            "use_linear_projection": false,
            "upcast_attention": false,
            "resnet_time_scale_shift": "default",
            "time_embedding_type": "positional",
            "conv_in_kernel": 3,
            "conv_out_kernel": 3,
        })
    }

    pub fn text_encoder_config(&self) -> Value {
        json!({
            "architectures": ["CLIPTextModel"],
            "model_type": "clip_text_model",
            "vocab_size": self.vocab_size(),
            "hidden_size": self.text_hidden_size,
            "intermediate_size": self.text_intermediate_size,
            "projection_dim": self.text_hidden_size,
            "num_hidden_layers": self.text_layers,
            "num_attention_heads": self.text_heads,
            "max_position_embeddings": self.max_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "bos_token_id": 512,
            "eos_token_id": 513,
            "pad_token_id": 513,
            "torch_dtype": "float32",
        })
    }

    pub fn scheduler_config(&self) -> Value {
        json!({
            "_class_name": "DDPMScheduler",
            "_diffusers_version": "0.30.0",
            "num_train_timesteps": self.num_train_timesteps,
            "beta_start": 0.0001,
            "beta_end": 0.02,
            "beta_schedule": self.beta_schedule,
            "variance_type": "fixed_small",
            "clip_sample": true,
            "clip_sample_range": 1.0,
            "prediction_type": "epsilon",
            "timestep_spacing": "leading",
            "steps_offset": 0,
        })
    }

    pub fn model_index(&self) -> Value {
        json!({
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": "0.30.0",
            "unet": ["diffusers", "UNet2DConditionModel"],
            "vae": [null, null],
            "text_encoder": ["transformers", "CLIPTextModel"],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "scheduler": ["diffusers", "DDPMScheduler"],
            "safety_checker": [null, null],
            "feature_extractor": [null, null],
            "image_encoder": [null, null],
            "requires_safety_checker": false,
            "_anneal_preset": self.name,
        })
    }
}

/// Draws weights in a fixed order from one seeded generator.
struct Init {
    rng: ChaCha8Rng,
    tensors: Vec<(String, Tensor)>,
}

impl Init {
    fn new(seed: u64) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), tensors: Vec::new() }
    }

    fn push(&mut self, name: String, data: Vec<f32>, shape: &[usize]) -> Result<()> {
        self.tensors.push((name, Tensor::from_vec(data, shape, &Device::Cpu)?));
        Ok(())
    }

    /// PyTorch's default: `kaiming_uniform_(a=sqrt(5))`, i.e. uniform in `±1/sqrt(fan_in)`.
    fn uniform(&mut self, name: String, shape: &[usize], fan_in: usize) -> Result<()> {
        let bound = 1.0 / (fan_in as f32).sqrt();
        let n = shape.iter().product();
        let data = (0..n).map(|_| self.rng.random_range(-bound..bound)).collect();
        self.push(name, data, shape)
    }

    fn normal(&mut self, name: String, shape: &[usize], std: f32) -> Result<()> {
        let d = Normal::new(0f32, std).map_err(|e| Error::Internal(format!("normal init: {e}")))?;
        let n = shape.iter().product();
        let data = (0..n).map(|_| d.sample(&mut self.rng)).collect();
        self.push(name, data, shape)
    }

    fn constant(&mut self, name: String, shape: &[usize], v: f32) -> Result<()> {
        self.push(name, vec![v; shape.iter().product()], shape)
    }

    fn conv(&mut self, p: &str, in_c: usize, out_c: usize, k: usize) -> Result<()> {
        let fan_in = in_c * k * k;
        self.uniform(format!("{p}.weight"), &[out_c, in_c, k, k], fan_in)?;
        self.uniform(format!("{p}.bias"), &[out_c], fan_in)
    }

    fn linear(&mut self, p: &str, in_f: usize, out_f: usize, bias: bool) -> Result<()> {
        self.uniform(format!("{p}.weight"), &[out_f, in_f], in_f)?;
        if bias {
            self.uniform(format!("{p}.bias"), &[out_f], in_f)?;
        }
        Ok(())
    }

    fn norm(&mut self, p: &str, c: usize) -> Result<()> {
        self.constant(format!("{p}.weight"), &[c], 1.0)?;
        self.constant(format!("{p}.bias"), &[c], 0.0)
    }

    fn resnet(&mut self, p: &str, in_c: usize, out_c: usize, temb: usize) -> Result<()> {
        self.norm(&format!("{p}.norm1"), in_c)?;
        self.conv(&format!("{p}.conv1"), in_c, out_c, 3)?;
        self.linear(&format!("{p}.time_emb_proj"), temb, out_c, true)?;
        self.norm(&format!("{p}.norm2"), out_c)?;
        self.conv(&format!("{p}.conv2"), out_c, out_c, 3)?;
        if in_c != out_c {
            self.conv(&format!("{p}.conv_shortcut"), in_c, out_c, 1)?;
        }
        Ok(())
    }

    /// A Transformer2DModel with 1x1-convolution projections and one block.
    fn transformer(&mut self, p: &str, c: usize, cross: usize, layers: usize) -> Result<()> {
        self.norm(&format!("{p}.norm"), c)?;
        self.conv(&format!("{p}.proj_in"), c, c, 1)?;
        for i in 0..layers {
            let b = format!("{p}.transformer_blocks.{i}");
            for (n, attn, ctx) in [(1, "attn1", c), (2, "attn2", cross)] {
                self.norm(&format!("{b}.norm{n}"), c)?;
                self.linear(&format!("{b}.{attn}.to_q"), c, c, false)?;
                self.linear(&format!("{b}.{attn}.to_k"), ctx, c, false)?;
                self.linear(&format!("{b}.{attn}.to_v"), ctx, c, false)?;
                self.linear(&format!("{b}.{attn}.to_out.0"), c, c, true)?;
            }
            self.norm(&format!("{b}.norm3"), c)?;
            self.linear(&format!("{b}.ff.net.0.proj"), c, c * 8, true)?;
            self.linear(&format!("{b}.ff.net.2"), c * 4, c, true)?;
        }
        self.conv(&format!("{p}.proj_out"), c, c, 1)
    }
}

/// The UNet's weights under their diffusers names, in diffusers' module order.
fn unet_weights(c: &UNetConfig, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut w = Init::new(seed);
    let boc = &c.block_out_channels;
    let n = boc.len();
    let temb = c.time_embed_dim;
    w.conv("conv_in", c.in_channels, boc[0], c.conv_in_kernel)?;
    w.linear("time_embedding.linear_1", boc[0], temb, true)?;
    w.linear("time_embedding.linear_2", temb, temb, true)?;
    let mut out_c = boc[0];
    for (i, kind) in c.down_block_types.iter().enumerate() {
        let in_c = out_c;
        out_c = boc[i];
        for j in 0..c.layers_per_block[i] {
            let r_in = if j == 0 { in_c } else { out_c };
            w.resnet(&format!("down_blocks.{i}.resnets.{j}"), r_in, out_c, temb)?;
            if *kind == DownBlockType::CrossAttnDownBlock2D {
                let p = format!("down_blocks.{i}.attentions.{j}");
                w.transformer(&p, out_c, c.cross_attention_dim[i], c.transformer_layers_per_block[i])?;
            }
        }
        if i + 1 < n {
            w.conv(&format!("down_blocks.{i}.downsamplers.0.conv"), out_c, out_c, 3)?;
        }
    }
    let last = n - 1;
    let mid_c = boc[last];
    if let Some(kind) = c.mid_block_type {
        w.resnet("mid_block.resnets.0", mid_c, mid_c, temb)?;
        if kind == MidBlockType::UNetMidBlock2DCrossAttn {
            let (cross, layers) = (c.cross_attention_dim[last], c.transformer_layers_per_block[last]);
            w.transformer("mid_block.attentions.0", mid_c, cross, layers)?;
            w.resnet("mid_block.resnets.1", mid_c, mid_c, temb)?;
        }
    }
    let rboc: Vec<usize> = boc.iter().rev().copied().collect();
    let mut out_c = rboc[0];
    for (i, kind) in c.up_block_types.iter().enumerate() {
        let prev_out = out_c;
        out_c = rboc[i];
        let in_c = rboc[(i + 1).min(last)];
        let num = c.layers_per_block[last - i] + 1;
        for j in 0..num {
            let skip = if j + 1 == num { in_c } else { out_c };
            let r_in = if j == 0 { prev_out } else { out_c };
            w.resnet(&format!("up_blocks.{i}.resnets.{j}"), r_in + skip, out_c, temb)?;
            if *kind == UpBlockType::CrossAttnUpBlock2D {
                let p = format!("up_blocks.{i}.attentions.{j}");
                w.transformer(&p, out_c, c.cross_attention_dim[last - i], c.transformer_layers_per_block[last - i])?;
            }
        }
        if i < last {
            w.conv(&format!("up_blocks.{i}.upsamplers.0.conv"), out_c, out_c, 3)?;
        }
    }
    w.norm("conv_norm_out", boc[0])?;
    w.conv("conv_out", boc[0], c.out_channels, c.conv_out_kernel)?;
    Ok(w.tensors)
}

/// The CLIP text encoder's weights (transformers names, `text_model.` prefix), with
/// transformers' CLIP initialisation.
fn text_encoder_weights(p: &DiffusionPreset, seed: u64) -> Result<Vec<(String, Tensor)>> {
    let mut w = Init::new(seed);
    let h = p.text_hidden_size;
    let (range, factor) = (0.02f32, 1.0f32);
    let t = "text_model";
    w.normal(format!("{t}.embeddings.token_embedding.weight"), &[p.vocab_size(), h], range * factor)?;
    w.normal(format!("{t}.embeddings.position_embedding.weight"), &[p.max_length, h], range * factor)?;
    let hf = h as f32;
    let layers = p.text_layers as f32;
    let in_proj_std = hf.powf(-0.5) * (2.0 * layers).powf(-0.5) * factor;
    let out_proj_std = hf.powf(-0.5) * factor;
    let fc_std = (2.0 * hf).powf(-0.5) * factor;
    for i in 0..p.text_layers {
        let b = format!("{t}.encoder.layers.{i}");
        let lin = |w: &mut Init, name: &str, i_f: usize, o_f: usize, std: f32| -> Result<()> {
            w.normal(format!("{b}.{name}.weight"), &[o_f, i_f], std)?;
            w.constant(format!("{b}.{name}.bias"), &[o_f], 0.0)
        };
        for proj in ["q_proj", "k_proj", "v_proj"] {
            lin(&mut w, &format!("self_attn.{proj}"), h, h, in_proj_std)?;
        }
        lin(&mut w, "self_attn.out_proj", h, h, out_proj_std)?;
        lin(&mut w, "mlp.fc1", h, p.text_intermediate_size, fc_std)?;
        lin(&mut w, "mlp.fc2", p.text_intermediate_size, h, in_proj_std)?;
        w.norm(&format!("{b}.layer_norm1"), h)?;
        w.norm(&format!("{b}.layer_norm2"), h)?;
    }
    w.norm(&format!("{t}.final_layer_norm"), h)?;
    Ok(w.tensors)
}

/// Writes a UNet component directory (`config.json` + `diffusion_pytorch_model.safetensors`)
/// for any supported `unet/config.json` value, with PyTorch's default initialisation
/// drawn from `seed`: a from-scratch UNet of one's own shape (benchmarks use it).
/// Only convolution projections (`use_linear_projection` false) are written.
pub fn write_unet(config: &Value, seed: u64, dir: &Path) -> Result<()> {
    let cfg = UNetConfig::from_json(config, "unet/config.json")?;
    if cfg.use_linear_projection {
        return Err(Error::config("unet/config.json:use_linear_projection", "only false is supported here"));
    }
    save_component(dir, config, unet_weights(&cfg, seed)?)
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    std::fs::write(path, text + "\n").with_path(path)
}

/// Writes the byte-level CLIP tokenizer: vocab.json, an empty merges.txt,
/// tokenizer_config.json and special_tokens_map.json.
fn write_tokenizer(p: &DiffusionPreset, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_path(dir)?;
    let symbols = byte_symbols();
    let mut vocab = serde_json::Map::new();
    for (i, c) in symbols.iter().enumerate() {
        vocab.insert(c.to_string(), json!(i));
    }
    for (i, c) in symbols.iter().enumerate() {
        vocab.insert(format!("{c}</w>"), json!(256 + i));
    }
    vocab.insert(BOS.into(), json!(512));
    vocab.insert(EOS.into(), json!(513));
    write_json(&dir.join("vocab.json"), &Value::Object(vocab))?;
    let merges = dir.join("merges.txt");
    std::fs::write(&merges, "#version: 0.2\n").with_path(&merges)?;
    let special = |content: &str| json!({"content": content, "lstrip": false, "normalized": true, "rstrip": false, "single_word": false, "special": true});
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "tokenizer_class": "CLIPTokenizer",
            "model_max_length": p.max_length,
            "bos_token": BOS,
            "eos_token": EOS,
            "pad_token": EOS,
            "unk_token": EOS,
            "do_lower_case": true,
            "errors": "replace",
            "clean_up_tokenization_spaces": true,
            "add_prefix_space": false,
            "added_tokens_decoder": {"512": special(BOS), "513": special(EOS)},
        }),
    )?;
    write_json(
        &dir.join("special_tokens_map.json"),
        &json!({"bos_token": BOS, "eos_token": EOS, "pad_token": EOS, "unk_token": EOS}),
    )
}

fn write_all(p: &DiffusionPreset, seed: u64, dir: &Path) -> Result<()> {
    let unet_cfg = p.unet_config();
    // Independent streams per component: the text encoder does not depend on the UNet's size.
    write_unet(&unet_cfg, seed, &dir.join("unet"))?;
    let te = dir.join("text_encoder");
    std::fs::create_dir_all(&te).with_path(&te)?;
    let tensors: HashMap<String, Tensor> = text_encoder_weights(p, seed ^ 0x7e87_e4c0_de00_0001)?.into_iter().collect();
    candle_core::safetensors::save(&tensors, te.join("model.safetensors"))?;
    write_json(&te.join("config.json"), &p.text_encoder_config())?;
    write_tokenizer(p, &dir.join("tokenizer"))?;
    let sched = dir.join("scheduler");
    std::fs::create_dir_all(&sched).with_path(&sched)?;
    write_json(&sched.join("scheduler_config.json"), &p.scheduler_config())?;
    write_json(&dir.join(MODEL_INDEX_FILE), &p.model_index())
}

/// Writes preset `p` as a diffusers pipeline directory at `dir` with weights drawn
/// from `seed` (the same seed gives the same bytes). `dir` must not exist or be empty
/// (`already_exists` otherwise); the directory is built next to it and renamed into
/// place, so a failure leaves nothing behind.
pub fn write_dir(p: &DiffusionPreset, seed: u64, dir: &Path) -> Result<()> {
    crate::util::write_new_dir(dir, |tmp| write_all(p, seed, tmp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_symbols_are_256_distinct_printable_chars() {
        let s = byte_symbols();
        assert_eq!(s.len(), 256);
        let set: std::collections::BTreeSet<char> = s.iter().copied().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(s[0], '!');
        assert!(s.iter().all(|c| !c.is_whitespace() && !c.is_control()));
    }
}

//! diffusers' UNet2DConditionModel as Stable Diffusion 1.x and 2.x use it: the noise
//! predictor `eps(latents, timestep, text hidden states)`.
//!
//! Weights keep their diffusers names (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight`),
//! both in [`UNet2DConditionModel::named_trainable_vars`] and in saved files.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::config::{config_label, DownBlockType, MidBlockType, UNetConfig, UpBlockType};
use super::load::{load_weights, read_json, save_component, Loader, CONFIG_FILE};
use super::nn::{
    join, linear, linear_weights, Conv2d, Downsample2D, GroupNorm, LinearList, ResnetBlock2D, ResnetSpec,
    Transformer2D, Upsample2D, WeightList,
};
use crate::error::{Error, Result};
use crate::models::linear::Linear;
use crate::models::{ForwardMode, LoadOptions};

/// Sinusoidal timestep embedding as diffusers' `get_timestep_embedding` computes it in
/// float32: `dim / 2` frequencies `exp(-ln(10000) * i / (dim / 2 - freq_shift))`, then
/// `[sin, cos]` of `t * freq` (`[cos, sin]` with `flip_sin_to_cos`), zero-padded to an odd
/// `dim`. Returns `timesteps.len() * dim` values, row-major.
pub fn timestep_embedding(timesteps: &[f32], dim: usize, flip_sin_to_cos: bool, freq_shift: f64) -> Vec<f32> {
    let half = dim / 2;
    // Rounded to f32 where PyTorch's float32 tensors round (transcendentals in f64,
    // so each value is the correctly rounded one).
    let ln = (-(10000f64.ln())) as f32;
    let denom = (half as f64 - freq_shift) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((ln * i as f32 / denom) as f64).exp() as f32).collect();
    let mut out = Vec::with_capacity(timesteps.len() * dim);
    for &t in timesteps {
        let args: Vec<f64> = freqs.iter().map(|&f| (t * f) as f64).collect();
        let sin = args.iter().map(|a| a.sin() as f32);
        let cos = args.iter().map(|a| a.cos() as f32);
        if flip_sin_to_cos {
            out.extend(cos.chain(sin));
        } else {
            out.extend(sin.chain(cos));
        }
        if !dim.is_multiple_of(2) {
            out.push(0.0);
        }
    }
    out
}

/// A down block: resnets (each followed by a transformer in CrossAttnDownBlock2D) and an
/// optional downsampler.
#[derive(Debug, Clone)]
struct DownBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    downsampler: Option<Downsample2D>,
}

/// An up block: resnets on [hidden, skip] (each followed by a transformer in
/// CrossAttnUpBlock2D) and an optional upsampler.
#[derive(Debug, Clone)]
struct UpBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
    upsampler: Option<Upsample2D>,
}

/// The middle block: `resnets[0]`, then (attention, resnet) pairs.
#[derive(Debug, Clone)]
struct MidBlock {
    resnets: Vec<ResnetBlock2D>,
    attentions: Vec<Transformer2D>,
}

/// Stable Diffusion's noise-prediction UNet. `Clone` shares the weights (and `Var`s):
/// a clone sees what training does to the original.
#[derive(Clone)]
pub struct UNet2DConditionModel {
    config: UNetConfig,
    raw_config: Value,
    dir: PathBuf,
    device: Device,
    dtype: DType,
    conv_in: Conv2d,
    time_linear_1: Linear,
    time_linear_2: Linear,
    down_blocks: Vec<DownBlock>,
    mid_block: Option<MidBlock>,
    up_blocks: Vec<UpBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
    /// Full fine-tuning: every weight, under its diffusers name.
    vars: Vec<(String, Var)>,
    /// The attached LoRA adapter (see [`super::lora`]).
    pub(crate) lora: Option<super::lora::ComponentLora>,
}

impl std::fmt::Debug for UNet2DConditionModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UNet2DConditionModel")
            .field("dir", &self.dir)
            .field("block_out_channels", &self.config.block_out_channels)
            .field("trainable", &!self.vars.is_empty())
            .field("lora", &self.lora.as_ref().map(|l| l.modules.len()))
            .finish()
    }
}

impl UNet2DConditionModel {
    /// Loads a UNet directory (`config.json` + `diffusion_pytorch_model.safetensors`): the
    /// `unet/` folder of a pipeline. With `opts.trainable` every weight is a `Var`.
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let label = config_label(dir);
        let raw_config = read_json(&dir.join(CONFIG_FILE))?;
        let config = UNetConfig::from_json(&raw_config, &label)?;
        let weights = load_weights(dir, opts.dtype, &opts.device)?;
        let mut l = Loader::new(&weights, opts.trainable, label);
        let c = &config;
        let n = c.block_out_channels.len();
        let boc = &c.block_out_channels;
        let (groups, eps) = (c.norm_num_groups, c.norm_eps);
        let temb = Some(c.time_embed_dim);
        let spec = |in_c, out_c, scale| ResnetSpec { in_c, out_c, temb, groups, eps, output_scale_factor: scale };

        let k = c.conv_in_kernel;
        let conv_in = Conv2d::load(&mut l, "conv_in", c.in_channels, boc[0], k, 1, (k - 1) / 2, true)?;
        let time_linear_1 = linear(&mut l, "time_embedding.linear_1", boc[0], c.time_embed_dim, true)?;
        let time_linear_2 = linear(&mut l, "time_embedding.linear_2", c.time_embed_dim, c.time_embed_dim, true)?;

        let mut down_blocks = Vec::with_capacity(n);
        let mut out_c = boc[0];
        for (i, kind) in c.down_block_types.iter().enumerate() {
            let in_c = out_c;
            out_c = boc[i];
            let p = format!("down_blocks.{i}");
            let mut blk = DownBlock { resnets: Vec::new(), attentions: Vec::new(), downsampler: None };
            for j in 0..c.layers_per_block[i] {
                let r_in = if j == 0 { in_c } else { out_c };
                blk.resnets.push(ResnetBlock2D::load(&mut l, &format!("{p}.resnets.{j}"), &spec(r_in, out_c, 1.0))?);
                if *kind == DownBlockType::CrossAttnDownBlock2D {
                    blk.attentions.push(Transformer2D::load(
                        &mut l,
                        &format!("{p}.attentions.{j}"),
                        out_c,
                        c.num_attention_heads[i],
                        c.transformer_layers_per_block[i],
                        c.cross_attention_dim[i],
                        groups,
                        c.use_linear_projection,
                    )?);
                }
            }
            if i + 1 < n {
                blk.downsampler =
                    Some(Downsample2D::load(&mut l, &format!("{p}.downsamplers.0"), out_c, c.downsample_padding)?);
            }
            down_blocks.push(blk);
        }

        let last = n - 1;
        let mid_c = boc[last];
        let mid_block = match c.mid_block_type {
            None => None,
            Some(kind) => {
                let scale = c.mid_block_scale_factor;
                let mut mid = MidBlock {
                    resnets: vec![ResnetBlock2D::load(&mut l, "mid_block.resnets.0", &spec(mid_c, mid_c, scale))?],
                    attentions: Vec::new(),
                };
                if kind == MidBlockType::UNetMidBlock2DCrossAttn {
                    mid.attentions.push(Transformer2D::load(
                        &mut l,
                        "mid_block.attentions.0",
                        mid_c,
                        c.num_attention_heads[last],
                        c.transformer_layers_per_block[last],
                        c.cross_attention_dim[last],
                        groups,
                        c.use_linear_projection,
                    )?);
                    mid.resnets.push(ResnetBlock2D::load(&mut l, "mid_block.resnets.1", &spec(mid_c, mid_c, scale))?);
                }
                Some(mid)
            }
        };

        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<_>>();
        let (rboc, rheads, rlayers, rcross, rtlayers) = (
            rev(boc),
            rev(&c.num_attention_heads),
            rev(&c.layers_per_block),
            rev(&c.cross_attention_dim),
            rev(&c.transformer_layers_per_block),
        );
        let mut up_blocks = Vec::with_capacity(n);
        let mut out_c = rboc[0];
        for (i, kind) in c.up_block_types.iter().enumerate() {
            let prev_out = out_c;
            out_c = rboc[i];
            let in_c = rboc[(i + 1).min(last)];
            let p = format!("up_blocks.{i}");
            let num = rlayers[i] + 1;
            let mut blk = UpBlock { resnets: Vec::new(), attentions: Vec::new(), upsampler: None };
            for j in 0..num {
                let skip = if j + 1 == num { in_c } else { out_c };
                let r_in = if j == 0 { prev_out } else { out_c };
                blk.resnets.push(ResnetBlock2D::load(
                    &mut l,
                    &format!("{p}.resnets.{j}"),
                    &spec(r_in + skip, out_c, 1.0),
                )?);
                if *kind == UpBlockType::CrossAttnUpBlock2D {
                    blk.attentions.push(Transformer2D::load(
                        &mut l,
                        &format!("{p}.attentions.{j}"),
                        out_c,
                        rheads[i],
                        rtlayers[i],
                        rcross[i],
                        groups,
                        c.use_linear_projection,
                    )?);
                }
            }
            if i < last {
                blk.upsampler = Some(Upsample2D::load(&mut l, &format!("{p}.upsamplers.0"), out_c)?);
            }
            up_blocks.push(blk);
        }

        let conv_norm_out = GroupNorm::load(&mut l, "conv_norm_out", boc[0], groups, eps)?;
        let k = c.conv_out_kernel;
        let conv_out = Conv2d::load(&mut l, "conv_out", boc[0], c.out_channels, k, 1, (k - 1) / 2, true)?;
        let vars = l.finish()?;
        Ok(Self {
            config,
            raw_config,
            dir: dir.to_path_buf(),
            device: opts.device.clone(),
            dtype: weights.dtype(),
            conv_in,
            time_linear_1,
            time_linear_2,
            down_blocks,
            mid_block,
            up_blocks,
            conv_norm_out,
            conv_out,
            vars,
            lora: None,
        })
    }

    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    /// config.json as read (written back unchanged by [`UNet2DConditionModel::save`]).
    pub fn raw_config(&self) -> &Value {
        &self.raw_config
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The time embedding after its MLP: `[b, time_embed_dim]` for `timesteps` `[b]`.
    fn time_embedding(&self, timesteps: &[f32], mode: ForwardMode) -> Result<Tensor> {
        let dim = self.config.block_out_channels[0];
        let e = timestep_embedding(timesteps, dim, self.config.flip_sin_to_cos, self.config.freq_shift);
        let e = Tensor::from_vec(e, (timesteps.len(), dim), &self.device)?.to_dtype(self.dtype)?;
        let train = mode == ForwardMode::Train;
        let h = self.time_linear_1.forward(&e, train)?.silu()?;
        self.time_linear_2.forward(&h, train)
    }

    /// Predicts the noise (or whatever the model was trained to predict) for `sample`
    /// `[b, in_channels, h, w]` at `timesteps` (a scalar, `[1]` or `[b]`, any float or
    /// integer dtype), attending to `encoder_hidden_states` `[b, seq, cross_attention_dim]`.
    /// `h` and `w` must be multiples of [`UNetConfig::downsample_factor`]. Returns
    /// `[b, out_channels, h, w]`. [`ForwardMode::Train`] keeps every op differentiable.
    pub fn forward(
        &self,
        sample: &Tensor,
        timesteps: &Tensor,
        encoder_hidden_states: &Tensor,
        mode: ForwardMode,
    ) -> Result<Tensor> {
        let c = &self.config;
        let (b, ch, h, w) = sample.dims4().map_err(|_| {
            Error::config("sample", format!("must be [batch, channels, height, width], got {:?}", sample.dims()))
        })?;
        if ch != c.in_channels {
            return Err(Error::config("sample", format!("has {ch} channels, the UNet takes {}", c.in_channels)));
        }
        let f = c.downsample_factor();
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(Error::config(
                "sample",
                format!("latent size {h}x{w} is not a multiple of the UNet's downsampling factor {f}"),
            ));
        }
        let (eb, _, ed) = encoder_hidden_states.dims3().map_err(|_| {
            Error::config(
                "encoder_hidden_states",
                format!("must be [batch, tokens, width], got {:?}", encoder_hidden_states.dims()),
            )
        })?;
        if eb != b {
            return Err(Error::config("encoder_hidden_states", format!("batch {eb} does not match the sample's {b}")));
        }
        if let Some(&want) = c.cross_attention_dim.iter().find(|&&d| d != ed) {
            return Err(Error::config(
                "encoder_hidden_states",
                format!("width {ed}, the UNet attends to width {want}"),
            ));
        }
        let ts: Vec<f32> = timesteps.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let ts = match ts.len() {
            1 => vec![ts[0]; b],
            n if n == b => ts,
            n => return Err(Error::config("timesteps", format!("{n} timesteps for a batch of {b}"))),
        };
        if ts.iter().any(|t| !t.is_finite()) {
            return Err(Error::config("timesteps", "must be finite"));
        }
        let ehs = encoder_hidden_states.to_dtype(self.dtype)?;
        let mut x = sample.to_dtype(self.dtype)?;
        if c.center_input_sample {
            x = ((x * 2.0)? - 1.0)?;
        }

        let emb = self.time_embedding(&ts, mode)?;
        // Every resnet applies SiLU to the embedding before its projection.
        let temb = emb.silu()?;
        let temb = Some(&temb);

        let mut x = self.conv_in.forward(&x)?;
        let mut skips = vec![x.clone()];
        for blk in &self.down_blocks {
            for (j, r) in blk.resnets.iter().enumerate() {
                x = r.forward(&x, temb, mode)?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(&x, &ehs, mode)?;
                }
                skips.push(x.clone());
            }
            if let Some(d) = &blk.downsampler {
                x = d.forward(&x)?;
                skips.push(x.clone());
            }
        }
        if let Some(mid) = &self.mid_block {
            x = mid.resnets[0].forward(&x, temb, mode)?;
            for (a, r) in mid.attentions.iter().zip(&mid.resnets[1..]) {
                x = a.forward(&x, &ehs, mode)?;
                x = r.forward(&x, temb, mode)?;
            }
        }
        for blk in &self.up_blocks {
            for (j, r) in blk.resnets.iter().enumerate() {
                let skip = skips.pop().ok_or_else(|| Error::Internal("UNet ran out of skip connections".into()))?;
                x = Tensor::cat(&[&x, &skip], 1)?;
                x = r.forward(&x, temb, mode)?;
                if let Some(a) = blk.attentions.get(j) {
                    x = a.forward(&x, &ehs, mode)?;
                }
            }
            if let Some(u) = &blk.upsampler {
                x = u.forward(&x, mode)?;
            }
        }
        let x = self.conv_norm_out.forward_silu(&x)?;
        self.conv_out.forward(&x)
    }

    /// What an optimiser should update: the LoRA adapter's A and B matrices when one is
    /// attached, else every weight of a UNet loaded with `trainable`, else nothing.
    pub fn trainable_vars(&self) -> Vec<Var> {
        self.named_trainable_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// [`UNet2DConditionModel::trainable_vars`] under their names: diffusers' weight names
    /// for full fine-tuning, the keys of the saved LoRA file
    /// (`unet.<module>.lora_A.weight`, `lora_B.weight`) for an adapter.
    pub fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(l) => l.named_vars(),
            None => self.vars.clone(),
        }
    }

    /// Whether the weights themselves are trainable (loaded with `trainable`).
    pub(crate) fn weights_are_trainable(&self) -> bool {
        !self.vars.is_empty()
    }

    /// Number of weights.
    pub fn num_params(&self) -> Result<usize> {
        Ok(self.named_weights()?.iter().map(|(_, t)| t.elem_count()).sum())
    }

    /// Every weight under its diffusers name (a merged LoRA adapter included).
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = WeightList::new();
        self.conv_in.weights("conv_in", &mut out);
        linear_weights(&self.time_linear_1, "time_embedding.linear_1", &mut out)?;
        linear_weights(&self.time_linear_2, "time_embedding.linear_2", &mut out)?;
        for (i, blk) in self.down_blocks.iter().enumerate() {
            let p = format!("down_blocks.{i}");
            for (j, r) in blk.resnets.iter().enumerate() {
                r.weights(&format!("{p}.resnets.{j}"), &mut out)?;
            }
            for (j, a) in blk.attentions.iter().enumerate() {
                a.weights(&format!("{p}.attentions.{j}"), &mut out)?;
            }
            if let Some(d) = &blk.downsampler {
                d.weights(&format!("{p}.downsamplers.0"), &mut out);
            }
        }
        if let Some(mid) = &self.mid_block {
            for (j, r) in mid.resnets.iter().enumerate() {
                r.weights(&format!("mid_block.resnets.{j}"), &mut out)?;
            }
            for (j, a) in mid.attentions.iter().enumerate() {
                a.weights(&format!("mid_block.attentions.{j}"), &mut out)?;
            }
        }
        for (i, blk) in self.up_blocks.iter().enumerate() {
            let p = format!("up_blocks.{i}");
            for (j, r) in blk.resnets.iter().enumerate() {
                r.weights(&format!("{p}.resnets.{j}"), &mut out)?;
            }
            for (j, a) in blk.attentions.iter().enumerate() {
                a.weights(&format!("{p}.attentions.{j}"), &mut out)?;
            }
            if let Some(u) = &blk.upsampler {
                u.weights(&format!("{p}.upsamplers.0"), &mut out);
            }
        }
        self.conv_norm_out.weights("conv_norm_out", &mut out);
        self.conv_out.weights("conv_out", &mut out);
        Ok(out)
    }

    /// Every linear layer under its diffusers module name
    /// (`down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q`): where LoRA attaches.
    pub(crate) fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = LinearList::new();
        out.push(("time_embedding.linear_1".to_string(), &mut self.time_linear_1));
        out.push(("time_embedding.linear_2".to_string(), &mut self.time_linear_2));
        let blocks = self
            .down_blocks
            .iter_mut()
            .enumerate()
            .map(|(i, b)| (format!("down_blocks.{i}"), &mut b.resnets, &mut b.attentions))
            .chain(self.mid_block.iter_mut().map(|m| ("mid_block".to_string(), &mut m.resnets, &mut m.attentions)))
            .chain(
                self.up_blocks
                    .iter_mut()
                    .enumerate()
                    .map(|(i, b)| (format!("up_blocks.{i}"), &mut b.resnets, &mut b.attentions)),
            );
        for (p, resnets, attentions) in blocks {
            for (j, r) in resnets.iter_mut().enumerate() {
                r.linears(&join(&p, &format!("resnets.{j}")), &mut out);
            }
            for (j, a) in attentions.iter_mut().enumerate() {
                a.linears(&join(&p, &format!("attentions.{j}")), &mut out);
            }
        }
        out
    }

    /// Writes config.json and diffusion_pytorch_model.safetensors into `dir`: a `unet/`
    /// folder diffusers loads.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_component(dir.as_ref(), &self.raw_config, self.named_weights()?)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn linear_layers_carry_their_diffusers_names() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny-sd/unet");
        let mut unet = UNet2DConditionModel::load(&dir, &LoadOptions::default()).unwrap();
        let weights: std::collections::HashMap<String, Tensor> = unet.named_weights().unwrap().into_iter().collect();
        let linears = unet.linears_mut();
        for (name, lin) in &linears {
            let w = &weights[&format!("{name}.weight")];
            // proj_in / proj_out are 1x1 convolutions in this SD 1.x-style fixture.
            let conv = name.ends_with(".proj_in") || name.ends_with(".proj_out");
            let mut dims = lin.dense().unwrap().dims().to_vec();
            if conv {
                dims.extend([1, 1]);
            }
            assert_eq!(w.dims(), dims.as_slice(), "{name}");
        }
        let names: Vec<&str> = linears.iter().map(|(n, _)| n.as_str()).collect();
        // The fixture has 4 transformers (1 down, 1 mid, 2 up), each with a self- and a
        // cross-attention.
        let to_q = names.iter().filter(|n| n.ends_with(".to_q")).count();
        let transformers = names.iter().filter(|n| n.ends_with("attn1.to_q")).count();
        assert_eq!(to_q, 2 * transformers);
        assert_eq!(transformers, 4);
        assert!(names.contains(&"down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k"));
        assert!(names.contains(&"up_blocks.1.attentions.1.transformer_blocks.0.attn1.to_out.0"));
        assert!(names.contains(&"mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj"));
        assert!(names.contains(&"time_embedding.linear_1"));
        assert!(names.contains(&"down_blocks.0.attentions.0.proj_in"));
        assert!(!names.contains(&"up_blocks.0.resnets.2.time_emb_proj"));
        assert!(names.contains(&"up_blocks.0.resnets.1.time_emb_proj"));
    }

    #[test]
    fn timestep_embedding_layout() {
        // dim 4: frequencies 1 and 10000^(-1/2) = 0.01 (freq_shift 0).
        let e = timestep_embedding(&[0.0, 100.0], 4, false, 0.0);
        assert_eq!(&e[..4], &[0.0, 0.0, 1.0, 1.0]);
        let want = [100f32.sin(), 1f32.sin(), 100f32.cos(), 1f32.cos()];
        for (a, b) in e[4..].iter().zip(want) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
        let flipped = timestep_embedding(&[100.0], 4, true, 0.0);
        assert_eq!(&flipped[..2], &e[6..8]);
        assert_eq!(&flipped[2..], &e[4..6]);
        // freq_shift 1 with dim 4: denominator 1, frequencies 1 and 1e-4; odd dim pads.
        let shifted = timestep_embedding(&[1.0], 5, false, 1.0);
        assert_eq!(shifted.len(), 5);
        assert!((shifted[1] - 1e-4f32.sin()).abs() < 1e-9);
        assert_eq!(shifted[4], 0.0);
    }
}

//! diffusers' AutoencoderKL: images to latents (a diagonal Gaussian) and back.
//!
//! Stable Diffusion trains its UNet on `scaling_factor * z` with `z` sampled from
//! [`AutoencoderKL::encode`] ([`AutoencoderKL::to_unet_latents`]) and decodes
//! [`AutoencoderKL::from_unet_latents`] of the denoised latents.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

use super::config::{config_label, VaeConfig};
use super::load::{load_weights, read_json, save_component, Loader, CONFIG_FILE};
use super::nn::{
    Conv2d, Downsample2D, GroupNorm, LinearList, ResnetBlock2D, ResnetSpec, SpatialSelfAttention, Upsample2D,
    WeightList,
};
use crate::error::{Error, Result};
use crate::models::linear::Linear;
use crate::models::{ForwardMode, LoadOptions};

/// The VAE's norms and resnets use this epsilon (fixed in diffusers).
const VAE_EPS: f64 = 1e-6;

/// `mean` and `logvar` (clamped to [-30, 20]) of the latent distribution.
#[derive(Debug, Clone)]
pub struct DiagonalGaussian {
    pub mean: Tensor,
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// Splits `moments` `[b, 2 * c, h, w]` into mean and log-variance.
    pub fn from_moments(moments: &Tensor) -> Result<Self> {
        let c2 = moments.dim(1)?;
        if !c2.is_multiple_of(2) {
            return Err(Error::Internal(format!("moments have an odd channel count {c2}")));
        }
        let c = c2 / 2;
        let mean = moments.narrow(1, 0, c)?;
        let logvar = moments.narrow(1, c, c)?.clamp(-30f32, 20f32)?;
        Ok(Self { mean, logvar })
    }

    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Result<Tensor> {
        Ok((&self.logvar * 0.5)?.exp()?)
    }

    /// `mean + std * noise`, with `noise` (standard normal, the mean's shape) from the caller.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        if noise.dims() != self.mean.dims() {
            return Err(Error::config(
                "noise",
                format!("has shape {:?}, the latents have {:?}", noise.dims(), self.mean.dims()),
            ));
        }
        Ok((&self.mean + self.std()?.mul(&noise.to_dtype(self.mean.dtype())?)?)?)
    }

    /// The mean: the deterministic latents.
    pub fn mode(&self) -> &Tensor {
        &self.mean
    }
}

/// UNetMidBlock2D as the VAE uses it: resnet, self-attention (optional), resnet.
#[derive(Debug, Clone)]
struct VaeMidBlock {
    resnet0: ResnetBlock2D,
    attention: Option<SpatialSelfAttention>,
    resnet1: ResnetBlock2D,
}

impl VaeMidBlock {
    fn load(l: &mut Loader, p: &str, c: usize, groups: usize, attention: bool) -> Result<Self> {
        let spec = ResnetSpec { in_c: c, out_c: c, temb: None, groups, eps: VAE_EPS, output_scale_factor: 1.0 };
        Ok(Self {
            resnet0: ResnetBlock2D::load(l, &format!("{p}.resnets.0"), &spec)?,
            attention: if attention {
                Some(SpatialSelfAttention::load(l, &format!("{p}.attentions.0"), c, groups, VAE_EPS)?)
            } else {
                None
            },
            resnet1: ResnetBlock2D::load(l, &format!("{p}.resnets.1"), &spec)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let mut x = self.resnet0.forward(x, None, mode)?;
        if let Some(a) = &self.attention {
            x = a.forward(&x, mode)?;
        }
        self.resnet1.forward(&x, None, mode)
    }

    fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        self.resnet0.weights(&format!("{p}.resnets.0"), out)?;
        if let Some(a) = &self.attention {
            a.weights(&format!("{p}.attentions.0"), out)?;
        }
        self.resnet1.weights(&format!("{p}.resnets.1"), out)
    }
}

/// DownEncoderBlock2D / UpDecoderBlock2D: resnets and an optional resampler.
#[derive(Debug, Clone)]
struct VaeBlock {
    resnets: Vec<ResnetBlock2D>,
    down: Option<Downsample2D>,
    up: Option<Upsample2D>,
}

#[derive(Debug, Clone)]
struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<VaeBlock>,
    mid_block: VaeMidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

#[derive(Debug, Clone)]
struct Decoder {
    conv_in: Conv2d,
    mid_block: VaeMidBlock,
    up_blocks: Vec<VaeBlock>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

fn resnet_spec(in_c: usize, out_c: usize, groups: usize) -> ResnetSpec {
    ResnetSpec { in_c, out_c, temb: None, groups, eps: VAE_EPS, output_scale_factor: 1.0 }
}

impl Encoder {
    fn load(l: &mut Loader, c: &VaeConfig) -> Result<Self> {
        let boc = &c.block_out_channels;
        let g = c.norm_num_groups;
        let conv_in = Conv2d::load_3x3(l, "encoder.conv_in", c.in_channels, boc[0])?;
        let mut down_blocks = Vec::new();
        let mut out_c = boc[0];
        for i in 0..boc.len() {
            let in_c = out_c;
            out_c = boc[i];
            let p = format!("encoder.down_blocks.{i}");
            let resnets = (0..c.layers_per_block)
                .map(|j| {
                    let r_in = if j == 0 { in_c } else { out_c };
                    ResnetBlock2D::load(l, &format!("{p}.resnets.{j}"), &resnet_spec(r_in, out_c, g))
                })
                .collect::<Result<Vec<_>>>()?;
            let down = if i + 1 < boc.len() {
                Some(Downsample2D::load(l, &format!("{p}.downsamplers.0"), out_c, 0)?)
            } else {
                None
            };
            down_blocks.push(VaeBlock { resnets, down, up: None });
        }
        let last = boc[boc.len() - 1];
        Ok(Self {
            conv_in,
            down_blocks,
            mid_block: VaeMidBlock::load(l, "encoder.mid_block", last, g, c.mid_block_add_attention)?,
            conv_norm_out: GroupNorm::load(l, "encoder.conv_norm_out", last, g, VAE_EPS)?,
            conv_out: Conv2d::load_3x3(l, "encoder.conv_out", last, 2 * c.latent_channels)?,
        })
    }

    fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for blk in &self.down_blocks {
            for r in &blk.resnets {
                x = r.forward(&x, None, mode)?;
            }
            if let Some(d) = &blk.down {
                x = d.forward(&x)?;
            }
        }
        let x = self.mid_block.forward(&x, mode)?;
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&x)?)
    }

    fn weights(&self, out: &mut WeightList) -> Result<()> {
        self.conv_in.weights("encoder.conv_in", out);
        for (i, blk) in self.down_blocks.iter().enumerate() {
            for (j, r) in blk.resnets.iter().enumerate() {
                r.weights(&format!("encoder.down_blocks.{i}.resnets.{j}"), out)?;
            }
            if let Some(d) = &blk.down {
                d.weights(&format!("encoder.down_blocks.{i}.downsamplers.0"), out);
            }
        }
        self.mid_block.weights("encoder.mid_block", out)?;
        self.conv_norm_out.weights("encoder.conv_norm_out", out);
        self.conv_out.weights("encoder.conv_out", out);
        Ok(())
    }
}

impl Decoder {
    fn load(l: &mut Loader, c: &VaeConfig) -> Result<Self> {
        let boc = &c.block_out_channels;
        let g = c.norm_num_groups;
        let n = boc.len();
        let top = boc[n - 1];
        let conv_in = Conv2d::load_3x3(l, "decoder.conv_in", c.latent_channels, top)?;
        let mid_block = VaeMidBlock::load(l, "decoder.mid_block", top, g, c.mid_block_add_attention)?;
        let mut up_blocks = Vec::new();
        let mut out_c = top;
        for i in 0..n {
            let prev = out_c;
            out_c = boc[n - 1 - i];
            let p = format!("decoder.up_blocks.{i}");
            let resnets = (0..=c.layers_per_block)
                .map(|j| {
                    let r_in = if j == 0 { prev } else { out_c };
                    ResnetBlock2D::load(l, &format!("{p}.resnets.{j}"), &resnet_spec(r_in, out_c, g))
                })
                .collect::<Result<Vec<_>>>()?;
            let up = if i + 1 < n { Some(Upsample2D::load(l, &format!("{p}.upsamplers.0"), out_c)?) } else { None };
            up_blocks.push(VaeBlock { resnets, down: None, up });
        }
        Ok(Self {
            conv_in,
            mid_block,
            up_blocks,
            conv_norm_out: GroupNorm::load(l, "decoder.conv_norm_out", boc[0], g, VAE_EPS)?,
            conv_out: Conv2d::load_3x3(l, "decoder.conv_out", boc[0], c.out_channels)?,
        })
    }

    fn forward(&self, z: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let x = self.conv_in.forward(z)?;
        let mut x = self.mid_block.forward(&x, mode)?;
        for blk in &self.up_blocks {
            for r in &blk.resnets {
                x = r.forward(&x, None, mode)?;
            }
            if let Some(u) = &blk.up {
                x = u.forward(&x, mode)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&x)?)
    }

    fn weights(&self, out: &mut WeightList) -> Result<()> {
        self.conv_in.weights("decoder.conv_in", out);
        self.mid_block.weights("decoder.mid_block", out)?;
        for (i, blk) in self.up_blocks.iter().enumerate() {
            for (j, r) in blk.resnets.iter().enumerate() {
                r.weights(&format!("decoder.up_blocks.{i}.resnets.{j}"), out)?;
            }
            if let Some(u) = &blk.up {
                u.weights(&format!("decoder.up_blocks.{i}.upsamplers.0"), out);
            }
        }
        self.conv_norm_out.weights("decoder.conv_norm_out", out);
        self.conv_out.weights("decoder.conv_out", out);
        Ok(())
    }
}

/// Stable Diffusion's variational autoencoder.
pub struct AutoencoderKL {
    config: VaeConfig,
    raw_config: Value,
    dir: PathBuf,
    device: Device,
    dtype: DType,
    encoder: Encoder,
    decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    vars: Vec<(String, Var)>,
}

impl std::fmt::Debug for AutoencoderKL {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AutoencoderKL")
            .field("dir", &self.dir)
            .field("block_out_channels", &self.config.block_out_channels)
            .field("trainable", &!self.vars.is_empty())
            .finish()
    }
}

impl AutoencoderKL {
    /// Loads a VAE directory (`config.json` + `diffusion_pytorch_model.safetensors`): the
    /// `vae/` folder of a pipeline.
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let label = config_label(dir);
        let raw_config = read_json(&dir.join(CONFIG_FILE))?;
        let config = VaeConfig::from_json(&raw_config, &label)?;
        let weights = load_weights(dir, opts.dtype, &opts.device)?;
        let mut l = Loader::new(&weights, opts.trainable, label);
        let encoder = Encoder::load(&mut l, &config)?;
        let decoder = Decoder::load(&mut l, &config)?;
        let lc = config.latent_channels;
        let quant_conv =
            if config.use_quant_conv { Some(Conv2d::load_1x1(&mut l, "quant_conv", 2 * lc, 2 * lc)?) } else { None };
        let post_quant_conv =
            if config.use_post_quant_conv { Some(Conv2d::load_1x1(&mut l, "post_quant_conv", lc, lc)?) } else { None };
        let vars = l.finish()?;
        Ok(Self {
            config,
            raw_config,
            dir: dir.to_path_buf(),
            device: opts.device.clone(),
            dtype: weights.dtype(),
            encoder,
            decoder,
            quant_conv,
            post_quant_conv,
            vars,
        })
    }

    pub fn config(&self) -> &VaeConfig {
        &self.config
    }

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

    /// The latent distribution of `images` `[b, in_channels, h, w]` (pixels in [-1, 1]);
    /// `h` and `w` must be multiples of [`VaeConfig::downsample_factor`].
    pub fn encode(&self, images: &Tensor, mode: ForwardMode) -> Result<DiagonalGaussian> {
        let (_, c, h, w) = images.dims4().map_err(|_| {
            Error::config("images", format!("must be [batch, channels, height, width], got {:?}", images.dims()))
        })?;
        if c != self.config.in_channels {
            return Err(Error::config(
                "images",
                format!("have {c} channels, the VAE takes {}", self.config.in_channels),
            ));
        }
        let f = self.config.downsample_factor();
        if h == 0 || w == 0 || !h.is_multiple_of(f) || !w.is_multiple_of(f) {
            return Err(Error::config(
                "images",
                format!("size {h}x{w} is not a multiple of the VAE's downsampling factor {f}"),
            ));
        }
        let moments = self.encoder.forward(&images.to_dtype(self.dtype)?, mode)?;
        let moments = match &self.quant_conv {
            Some(q) => q.forward(&moments)?,
            None => moments,
        };
        DiagonalGaussian::from_moments(&moments)
    }

    /// Images `[b, out_channels, h * f, w * f]` (about [-1, 1]) from latents `z`
    /// `[b, latent_channels, h, w]` (VAE scale: divide UNet latents by the scaling factor
    /// first, see [`AutoencoderKL::from_unet_latents`]).
    pub fn decode(&self, z: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let (_, c, _, _) = z.dims4().map_err(|_| {
            Error::config("latents", format!("must be [batch, channels, height, width], got {:?}", z.dims()))
        })?;
        if c != self.config.latent_channels {
            return Err(Error::config(
                "latents",
                format!("have {c} channels, the VAE's latent_channels is {}", self.config.latent_channels),
            ));
        }
        let z = z.to_dtype(self.dtype)?;
        let z = match &self.post_quant_conv {
            Some(q) => q.forward(&z)?,
            None => z,
        };
        self.decoder.forward(&z, mode)
    }

    /// VAE latents -> the UNet's scale: `(z - shift_factor) * scaling_factor`.
    pub fn to_unet_latents(&self, z: &Tensor) -> Result<Tensor> {
        let z = match self.config.shift_factor {
            Some(s) => (z - s)?,
            None => z.clone(),
        };
        Ok((z * self.config.scaling_factor)?)
    }

    /// The UNet's latents -> VAE scale: `z / scaling_factor + shift_factor`.
    pub fn from_unet_latents(&self, z: &Tensor) -> Result<Tensor> {
        let z = (z / self.config.scaling_factor)?;
        Ok(match self.config.shift_factor {
            Some(s) => (z + s)?,
            None => z,
        })
    }

    pub fn trainable_vars(&self) -> Vec<Var> {
        self.vars.iter().map(|(_, v)| v.clone()).collect()
    }

    pub fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        self.vars.clone()
    }

    /// Every weight under its diffusers name.
    pub fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = WeightList::new();
        self.encoder.weights(&mut out)?;
        self.decoder.weights(&mut out)?;
        if let Some(q) = &self.quant_conv {
            q.weights("quant_conv", &mut out);
        }
        if let Some(q) = &self.post_quant_conv {
            q.weights("post_quant_conv", &mut out);
        }
        Ok(out)
    }

    /// The attention projections of the two mid blocks.
    #[allow(dead_code)] // for adapters on the VAE, like the UNet's
    pub(crate) fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = LinearList::new();
        if let Some(a) = &mut self.encoder.mid_block.attention {
            a.linears("encoder.mid_block.attentions.0", &mut out);
        }
        if let Some(a) = &mut self.decoder.mid_block.attention {
            a.linears("decoder.mid_block.attentions.0", &mut out);
        }
        out
    }

    /// Writes config.json and diffusion_pytorch_model.safetensors into `dir`. Attention
    /// weights are written under diffusers' current names (`to_q`, ...).
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        save_component(dir.as_ref(), &self.raw_config, self.named_weights()?)
    }
}

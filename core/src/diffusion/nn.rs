//! The layers the UNet and the VAE are made of, named and shaped as in diffusers.
//!
//! Every op of the [`ForwardMode::Train`] path has a backward in candle: GroupNorm and
//! LayerNorm go through the project's fused normalisation (a `CustomOp` with its own
//! backward) or their composite form, attention through the project's memory-efficient
//! attention node (f32 on the CPU) or `candle_nn::ops::softmax`, the nearest upsampling
//! through a broadcast and a reshape (candle's `upsample_nearest2d` backward overwrites,
//! rather than adds to, the gradient already gathered for its input). Linear layers are the
//! project's [`Linear`], so LoRA attaches to them as to the language models'.

use candle_core::{DType, Tensor, D};

use super::load::Loader;
use crate::error::{Error, Result};
use crate::models::fused;
use crate::models::linear::Linear;
use crate::models::{ops, ForwardMode};

/// Collects `(name, tensor)` of every weight, in diffusers' names.
pub(crate) type WeightList = Vec<(String, Tensor)>;
/// Collects `(module name, layer)` of every linear layer.
pub(crate) type LinearList<'a> = Vec<(String, &'a mut Linear)>;

/// `prefix.name` (just `name` at the top).
pub(crate) fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

fn is_train(mode: ForwardMode) -> bool {
    mode == ForwardMode::Train
}

// ---------------------------------------------------------------- linear

/// Loads `{p}.weight` `[out, in]` (and `{p}.bias`) as a [`Linear`]. A weight stored as a
/// 1x1 convolution (`[out, in, 1, 1]`) is accepted too.
pub(crate) fn linear(l: &mut Loader, p: &str, in_f: usize, out_f: usize, bias: bool) -> Result<Linear> {
    let w = l.get_as(&join(p, "weight"), &[out_f, in_f], &[out_f, in_f, 1, 1])?;
    let w = l.take(&join(p, "weight"), w)?;
    let b = if bias { Some(l.get(&join(p, "bias"), &[out_f])?) } else { None };
    Ok(Linear::new(w, b, false))
}

pub(crate) fn linear_weights(lin: &Linear, p: &str, out: &mut WeightList) -> Result<()> {
    out.push((join(p, "weight"), lin.stored_weight()?));
    if let Some(b) = &lin.bias {
        out.push((join(p, "bias"), b.clone()));
    }
    Ok(())
}

// ---------------------------------------------------------------- conv

/// A 2D convolution (`weight` `[out, in, k, k]`, bias `[out]`).
#[derive(Debug, Clone)]
pub(crate) struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    stride: usize,
    padding: usize,
}

impl Conv2d {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        l: &mut Loader,
        p: &str,
        in_c: usize,
        out_c: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
        bias: bool,
    ) -> Result<Self> {
        let weight = l.get(&join(p, "weight"), &[out_c, in_c, kernel, kernel])?;
        let bias = if bias { Some(l.get(&join(p, "bias"), &[out_c])?) } else { None };
        Ok(Self { weight, bias, stride, padding })
    }

    /// A 1x1 convolution: channel mixing.
    pub(crate) fn load_1x1(l: &mut Loader, p: &str, in_c: usize, out_c: usize) -> Result<Self> {
        Self::load(l, p, in_c, out_c, 1, 1, 0, true)
    }

    /// A 3x3 convolution that keeps the size.
    pub(crate) fn load_3x3(l: &mut Loader, p: &str, in_c: usize, out_c: usize) -> Result<Self> {
        Self::load(l, p, in_c, out_c, 3, 1, 1, true)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(super::conv::conv2d(x, &self.weight, self.bias.as_ref(), self.padding, self.stride)?)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) {
        out.push((join(p, "weight"), self.weight.clone()));
        if let Some(b) = &self.bias {
            out.push((join(p, "bias"), b.clone()));
        }
    }
}

// ---------------------------------------------------------------- norms

/// Normalises the last dim of `x` (no affine part), with a backward in every mode.
fn normalize_rows(x: &Tensor, eps: f64) -> Result<Tensor> {
    if fused::usable(x) {
        return Ok(x.contiguous()?.apply_op1(fused::Norm { eps: eps as f32, center: true })?);
    }
    let dtype = x.dtype();
    let xf = x.to_dtype(DType::F32)?;
    let centered = xf.broadcast_sub(&xf.mean_keepdim(D::Minus1)?)?;
    let var = centered.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(centered.broadcast_div(&(var + eps)?.sqrt()?)?.to_dtype(dtype)?)
}

/// `torch.nn.GroupNorm` with affine parameters, on `[b, c, ...]`.
#[derive(Debug, Clone)]
pub(crate) struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub(crate) fn load(l: &mut Loader, p: &str, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        if !channels.is_multiple_of(groups) {
            return Err(l.config_error(
                "norm_num_groups",
                format!("{groups} groups do not divide the {channels} channels of `{p}`"),
            ));
        }
        let weight = l.get(&join(p, "weight"), &[channels])?;
        let bias = l.get(&join(p, "bias"), &[channels])?;
        Ok(Self { weight, bias, groups, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, false)
    }

    /// `silu(self.forward(x))`, fused where it can be.
    pub(crate) fn forward_silu(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(x, true)
    }

    fn forward_with(&self, x: &Tensor, silu: bool) -> Result<Tensor> {
        if super::group_norm::usable(x, &self.weight, &self.bias) {
            return Ok(super::group_norm::group_norm(x, &self.weight, &self.bias, self.groups, self.eps, silu)?);
        }
        let y = self.composite(x)?;
        Ok(if silu { y.silu()? } else { y })
    }

    fn composite(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        if dims.len() < 3 {
            return Err(Error::Internal(format!("group norm expects [b, c, ...], got {dims:?}")));
        }
        let (b, c) = (dims[0], dims[1]);
        let normed = normalize_rows(&x.reshape((b, self.groups, ()))?, self.eps)?.reshape(dims.as_slice())?;
        let mut affine = vec![1usize; dims.len()];
        affine[1] = c;
        Ok(normed
            .broadcast_mul(&self.weight.reshape(affine.as_slice())?)?
            .broadcast_add(&self.bias.reshape(affine)?)?)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) {
        out.push((join(p, "weight"), self.weight.clone()));
        out.push((join(p, "bias"), self.bias.clone()));
    }
}

/// `torch.nn.LayerNorm` over the last dim.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    pub(crate) fn load(l: &mut Loader, p: &str, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: l.get(&join(p, "weight"), &[dim])?, bias: l.get(&join(p, "bias"), &[dim])?, eps })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        ops::layer_norm(x, &self.weight, &self.bias, self.eps, mode)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) {
        out.push((join(p, "weight"), self.weight.clone()));
        out.push((join(p, "bias"), self.bias.clone()));
    }
}

// ---------------------------------------------------------------- attention

/// `softmax(q k^T * scale) v` over `heads` heads of `head_dim`: q `[b, n, heads *
/// head_dim]`, k and v `[b, m, heads * head_dim]`, the output `[b, n, heads * head_dim]`.
/// f32 on the CPU runs as one memory-efficient node with its own backward (no `[n, m]`
/// scores kept per head); other dtypes and devices split the heads, multiply, and take
/// the softmax (differentiable in Train mode, candle's fused one in Infer mode).
fn multi_head_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    (heads, head_dim): (usize, usize),
    mode: ForwardMode,
) -> Result<Tensor> {
    let scale = 1.0 / (head_dim as f64).sqrt();
    if fused::usable(q) && fused::usable(k) && fused::usable(v) {
        return Ok(fused::flash_attention(q, k, v, heads, head_dim, scale as f32)?);
    }
    let (b, n, _) = q.dims3()?;
    let m = k.dim(1)?;
    let split = |t: &Tensor, len: usize| -> Result<Tensor> {
        Ok(t.reshape((b, len, heads, head_dim))?.transpose(1, 2)?.contiguous()?)
    };
    let (q, k, v) = (split(q, n)?, split(k, m)?, split(v, m)?);
    let s = (q.matmul(&k.t()?)? * scale)?;
    let probs = match mode {
        ForwardMode::Infer => candle_nn::ops::softmax_last_dim(&s.contiguous()?)?,
        ForwardMode::Train => candle_nn::ops::softmax(&s, D::Minus1)?,
    };
    Ok(probs.matmul(&v)?.transpose(1, 2)?.reshape((b, n, heads * head_dim))?)
}

/// diffusers' `Attention`: q from `x`, k and v from the context (or `x`), several heads,
/// `to_out.0` back to the query width. q/k/v/out are LoRA-capable [`Linear`]s.
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    pub(crate) to_q: Linear,
    pub(crate) to_k: Linear,
    pub(crate) to_v: Linear,
    pub(crate) to_out: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    /// `{p}.to_q`, `to_k`, `to_v` (bias when `qkv_bias`) and `to_out.0` (with bias).
    pub(crate) fn load(
        l: &mut Loader,
        p: &str,
        query_dim: usize,
        context_dim: usize,
        heads: usize,
        qkv_bias: bool,
    ) -> Result<Self> {
        let head_dim = query_dim / heads;
        let inner = heads * head_dim;
        Ok(Self {
            to_q: linear(l, &join(p, "to_q"), query_dim, inner, qkv_bias)?,
            to_k: linear(l, &join(p, "to_k"), context_dim, inner, qkv_bias)?,
            to_v: linear(l, &join(p, "to_v"), context_dim, inner, qkv_bias)?,
            to_out: linear(l, &join(p, "to_out.0"), inner, query_dim, true)?,
            heads,
            head_dim,
        })
    }

    /// The VAE's single-head attention, also under the names of older diffusers files
    /// (`query`, `key`, `value`, `proj_attn`).
    pub(crate) fn load_vae(l: &mut Loader, p: &str, channels: usize) -> Result<Self> {
        if l.contains(&join(p, "to_q.weight")) || !l.contains(&join(p, "query.weight")) {
            return Self::load(l, p, channels, channels, 1, true);
        }
        Ok(Self {
            to_q: linear(l, &join(p, "query"), channels, channels, true)?,
            to_k: linear(l, &join(p, "key"), channels, channels, true)?,
            to_v: linear(l, &join(p, "value"), channels, channels, true)?,
            to_out: linear(l, &join(p, "proj_attn"), channels, channels, true)?,
            heads: 1,
            head_dim: channels,
        })
    }

    /// `x`: `[b, n, query_dim]`; `context`: `[b, m, context_dim]` (None: self-attention).
    pub(crate) fn forward(&self, x: &Tensor, context: Option<&Tensor>, mode: ForwardMode) -> Result<Tensor> {
        let train = is_train(mode);
        let ctx = context.unwrap_or(x);
        let q = self.to_q.forward(x, train)?;
        let k = self.to_k.forward(ctx, train)?;
        let v = self.to_v.forward(ctx, train)?;
        let o = multi_head_attention(&q, &k, &v, (self.heads, self.head_dim), mode)?;
        self.to_out.forward(&o, train)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        linear_weights(&self.to_q, &join(p, "to_q"), out)?;
        linear_weights(&self.to_k, &join(p, "to_k"), out)?;
        linear_weights(&self.to_v, &join(p, "to_v"), out)?;
        linear_weights(&self.to_out, &join(p, "to_out.0"), out)
    }

    pub(crate) fn linears<'a>(&'a mut self, p: &str, out: &mut LinearList<'a>) {
        out.push((join(p, "to_q"), &mut self.to_q));
        out.push((join(p, "to_k"), &mut self.to_k));
        out.push((join(p, "to_v"), &mut self.to_v));
        out.push((join(p, "to_out.0"), &mut self.to_out));
    }
}

/// The VAE mid block's attention: GroupNorm, single-head self-attention over the pixels,
/// residual.
#[derive(Debug, Clone)]
pub(crate) struct SpatialSelfAttention {
    group_norm: GroupNorm,
    attn: Attention,
}

impl SpatialSelfAttention {
    pub(crate) fn load(l: &mut Loader, p: &str, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            group_norm: GroupNorm::load(l, &join(p, "group_norm"), channels, groups, eps)?,
            attn: Attention::load_vae(l, p, channels)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let t = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?;
        let y = self.attn.forward(&t, None, mode)?;
        let y = y.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((y + x)?)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        self.group_norm.weights(&join(p, "group_norm"), out);
        self.attn.weights(p, out)
    }

    pub(crate) fn linears<'a>(&'a mut self, p: &str, out: &mut LinearList<'a>) {
        self.attn.linears(p, out);
    }
}

// ---------------------------------------------------------------- transformer

/// GEGLU feed-forward: `net.0.proj` to twice the inner width, `hidden * gelu(gate)`,
/// `net.2` back.
#[derive(Debug, Clone)]
pub(crate) struct FeedForward {
    proj: Linear,
    out: Linear,
    inner: usize,
}

impl FeedForward {
    pub(crate) fn load(l: &mut Loader, p: &str, dim: usize) -> Result<Self> {
        let inner = dim * 4;
        Ok(Self {
            proj: linear(l, &join(p, "net.0.proj"), dim, inner * 2, true)?,
            out: linear(l, &join(p, "net.2"), inner, dim, true)?,
            inner,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let train = is_train(mode);
        let h = self.proj.forward(x, train)?;
        if fused::usable(&h) {
            // f32 on the CPU: one node, the halves read in place.
            return self.out.forward(&h.contiguous()?.apply_op1(fused::GeGlu)?, train);
        }
        let hidden = h.narrow(D::Minus1, 0, self.inner)?;
        let gate = h.narrow(D::Minus1, self.inner, self.inner)?;
        self.out.forward(&(hidden * gate.gelu_erf()?)?, train)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        linear_weights(&self.proj, &join(p, "net.0.proj"), out)?;
        linear_weights(&self.out, &join(p, "net.2"), out)
    }

    pub(crate) fn linears<'a>(&'a mut self, p: &str, out: &mut LinearList<'a>) {
        out.push((join(p, "net.0.proj"), &mut self.proj));
        out.push((join(p, "net.2"), &mut self.out));
    }
}

/// diffusers' `BasicTransformerBlock` (layer_norm type): self-attention, cross-attention
/// to the text, GEGLU feed-forward, each after a LayerNorm and with a residual.
#[derive(Debug, Clone)]
pub(crate) struct TransformerBlock {
    norm1: LayerNorm,
    attn1: Attention,
    norm2: LayerNorm,
    attn2: Attention,
    norm3: LayerNorm,
    ff: FeedForward,
}

const LAYER_NORM_EPS: f64 = 1e-5;

impl TransformerBlock {
    pub(crate) fn load(l: &mut Loader, p: &str, dim: usize, heads: usize, cross_dim: usize) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::load(l, &join(p, "norm1"), dim, LAYER_NORM_EPS)?,
            attn1: Attention::load(l, &join(p, "attn1"), dim, dim, heads, false)?,
            norm2: LayerNorm::load(l, &join(p, "norm2"), dim, LAYER_NORM_EPS)?,
            attn2: Attention::load(l, &join(p, "attn2"), dim, cross_dim, heads, false)?,
            norm3: LayerNorm::load(l, &join(p, "norm3"), dim, LAYER_NORM_EPS)?,
            ff: FeedForward::load(l, &join(p, "ff"), dim)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let x = (self.attn1.forward(&self.norm1.forward(x, mode)?, None, mode)? + x)?;
        let x = (self.attn2.forward(&self.norm2.forward(&x, mode)?, Some(context), mode)? + &x)?;
        Ok((self.ff.forward(&self.norm3.forward(&x, mode)?, mode)? + &x)?)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        self.norm1.weights(&join(p, "norm1"), out);
        self.attn1.weights(&join(p, "attn1"), out)?;
        self.norm2.weights(&join(p, "norm2"), out);
        self.attn2.weights(&join(p, "attn2"), out)?;
        self.norm3.weights(&join(p, "norm3"), out);
        self.ff.weights(&join(p, "ff"), out)
    }

    pub(crate) fn linears<'a>(&'a mut self, p: &str, out: &mut LinearList<'a>) {
        self.attn1.linears(&join(p, "attn1"), out);
        self.attn2.linears(&join(p, "attn2"), out);
        self.ff.linears(&join(p, "ff"), out);
    }
}

/// proj_in / proj_out of a transformer: a linear layer (SD 2.x) or a 1x1 convolution
/// (SD 1.x). A 1x1 convolution is a linear layer over the channels, and is held as one
/// (weight `[out, in]`, saved back as `[out, in, 1, 1]`) so that LoRA attaches to it as
/// PEFT's and kohya's convolution LoRA do.
#[derive(Debug, Clone)]
enum Proj {
    Linear(Linear),
    Conv1x1(Linear),
}

impl Proj {
    fn load(l: &mut Loader, p: &str, in_c: usize, out_c: usize, linear_proj: bool) -> Result<Self> {
        let lin = linear(l, p, in_c, out_c, true)?;
        Ok(if linear_proj { Proj::Linear(lin) } else { Proj::Conv1x1(lin) })
    }

    fn layer(&self) -> &Linear {
        match self {
            Proj::Linear(l) | Proj::Conv1x1(l) => l,
        }
    }

    fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        match self {
            Proj::Linear(lin) => linear_weights(lin, p, out),
            Proj::Conv1x1(lin) => {
                let (in_c, out_c) = lin.features()?;
                out.push((join(p, "weight"), lin.stored_weight()?.reshape((out_c, in_c, 1, 1))?));
                if let Some(b) = &lin.bias {
                    out.push((join(p, "bias"), b.clone()));
                }
                Ok(())
            }
        }
    }
}

/// diffusers' `Transformer2DModel` on continuous input: GroupNorm, proj_in, transformer
/// blocks over the `h * w` pixels, proj_out, residual.
#[derive(Debug, Clone)]
pub(crate) struct Transformer2D {
    norm: GroupNorm,
    proj_in: Proj,
    blocks: Vec<TransformerBlock>,
    proj_out: Proj,
}

/// Transformer2DModel's GroupNorm epsilon (fixed in diffusers).
const TRANSFORMER_NORM_EPS: f64 = 1e-6;

impl Transformer2D {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        l: &mut Loader,
        p: &str,
        channels: usize,
        heads: usize,
        layers: usize,
        cross_dim: usize,
        groups: usize,
        linear_proj: bool,
    ) -> Result<Self> {
        let norm = GroupNorm::load(l, &join(p, "norm"), channels, groups, TRANSFORMER_NORM_EPS)?;
        let proj_in = Proj::load(l, &join(p, "proj_in"), channels, channels, linear_proj)?;
        let blocks = (0..layers)
            .map(|i| {
                TransformerBlock::load(l, &join(p, &format!("transformer_blocks.{i}")), channels, heads, cross_dim)
            })
            .collect::<Result<Vec<_>>>()?;
        let proj_out = Proj::load(l, &join(p, "proj_out"), channels, channels, linear_proj)?;
        Ok(Self { norm, proj_in, blocks, proj_out })
    }

    pub(crate) fn forward(&self, x: &Tensor, context: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        let train = is_train(mode);
        let (b, c, h, w) = x.dims4()?;
        let normed = self.norm.forward(x)?;
        let to_tokens = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(1)?;
            Ok(t.permute((0, 2, 3, 1))?.reshape((b, h * w, c))?)
        };
        let mut t = self.proj_in.layer().forward(&to_tokens(&normed)?, train)?;
        for blk in &self.blocks {
            t = blk.forward(&t, context, mode)?;
        }
        let to_image = |t: &Tensor| -> Result<Tensor> {
            let c = t.dim(2)?;
            Ok(t.reshape((b, h, w, c))?.permute((0, 3, 1, 2))?)
        };
        let y = to_image(&self.proj_out.layer().forward(&t, train)?)?;
        debug_assert_eq!(y.dim(1).ok(), Some(c));
        Ok((y + x)?)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        self.norm.weights(&join(p, "norm"), out);
        self.proj_in.weights(&join(p, "proj_in"), out)?;
        for (i, blk) in self.blocks.iter().enumerate() {
            blk.weights(&join(p, &format!("transformer_blocks.{i}")), out)?;
        }
        self.proj_out.weights(&join(p, "proj_out"), out)
    }

    pub(crate) fn linears<'a>(&'a mut self, p: &str, out: &mut LinearList<'a>) {
        let (Proj::Linear(lin) | Proj::Conv1x1(lin)) = &mut self.proj_in;
        out.push((join(p, "proj_in"), lin));
        for (i, blk) in self.blocks.iter_mut().enumerate() {
            blk.linears(&join(p, &format!("transformer_blocks.{i}")), out);
        }
        let (Proj::Linear(lin) | Proj::Conv1x1(lin)) = &mut self.proj_out;
        out.push((join(p, "proj_out"), lin));
    }
}

// ---------------------------------------------------------------- resnet

/// diffusers' `ResnetBlock2D` (time_embedding_norm "default"): GroupNorm, SiLU, conv,
/// plus the projected time embedding, GroupNorm, SiLU, conv, plus the (1x1-projected
/// when the width changes) input, divided by `output_scale_factor`.
#[derive(Debug, Clone)]
pub(crate) struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    time_emb_proj: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
    output_scale_factor: f64,
}

/// How a resnet is built: widths, time embedding width (None in the VAE), norm settings.
pub(crate) struct ResnetSpec {
    pub(crate) in_c: usize,
    pub(crate) out_c: usize,
    pub(crate) temb: Option<usize>,
    pub(crate) groups: usize,
    pub(crate) eps: f64,
    pub(crate) output_scale_factor: f64,
}

impl ResnetBlock2D {
    pub(crate) fn load(l: &mut Loader, p: &str, s: &ResnetSpec) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::load(l, &join(p, "norm1"), s.in_c, s.groups, s.eps)?,
            conv1: Conv2d::load_3x3(l, &join(p, "conv1"), s.in_c, s.out_c)?,
            time_emb_proj: match s.temb {
                Some(t) => Some(linear(l, &join(p, "time_emb_proj"), t, s.out_c, true)?),
                None => None,
            },
            norm2: GroupNorm::load(l, &join(p, "norm2"), s.out_c, s.groups, s.eps)?,
            conv2: Conv2d::load_3x3(l, &join(p, "conv2"), s.out_c, s.out_c)?,
            conv_shortcut: if s.in_c != s.out_c {
                Some(Conv2d::load_1x1(l, &join(p, "conv_shortcut"), s.in_c, s.out_c)?)
            } else {
                None
            },
            output_scale_factor: s.output_scale_factor,
        })
    }

    /// `temb_act`: the time embedding after its SiLU (`[b, temb]`), or None in the VAE.
    pub(crate) fn forward(&self, x: &Tensor, temb_act: Option<&Tensor>, mode: ForwardMode) -> Result<Tensor> {
        let mut h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        if let (Some(proj), Some(t)) = (&self.time_emb_proj, temb_act) {
            let t = proj.forward(t, is_train(mode))?;
            h = h.broadcast_add(&t.unsqueeze(2)?.unsqueeze(3)?)?;
        }
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        let y = (shortcut + h)?;
        Ok(if self.output_scale_factor == 1.0 { y } else { (y / self.output_scale_factor)? })
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) -> Result<()> {
        self.norm1.weights(&join(p, "norm1"), out);
        self.conv1.weights(&join(p, "conv1"), out);
        if let Some(t) = &self.time_emb_proj {
            linear_weights(t, &join(p, "time_emb_proj"), out)?;
        }
        self.norm2.weights(&join(p, "norm2"), out);
        self.conv2.weights(&join(p, "conv2"), out);
        if let Some(c) = &self.conv_shortcut {
            c.weights(&join(p, "conv_shortcut"), out);
        }
        Ok(())
    }

    pub(crate) fn linears<'a>(&'a mut self, p: &str, out: &mut LinearList<'a>) {
        if let Some(t) = &mut self.time_emb_proj {
            out.push((join(p, "time_emb_proj"), t));
        }
    }
}

// ---------------------------------------------------------------- resampling

/// diffusers' `Downsample2D` with a convolution: stride 2; with `padding` 0 the input is
/// first padded by one on the right and bottom (the VAE's encoder).
#[derive(Debug, Clone)]
pub(crate) struct Downsample2D {
    conv: Conv2d,
    pad_right_bottom: bool,
}

impl Downsample2D {
    pub(crate) fn load(l: &mut Loader, p: &str, channels: usize, padding: usize) -> Result<Self> {
        Ok(Self {
            conv: Conv2d::load(l, &join(p, "conv"), channels, channels, 3, 2, padding, true)?,
            pad_right_bottom: padding == 0,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.pad_right_bottom {
            let x = x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(2, 0, 1)?;
            return self.conv.forward(&x);
        }
        self.conv.forward(x)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) {
        self.conv.weights(&join(p, "conv"), out);
    }
}

/// Nearest-neighbour upsampling by 2 of `[b, c, h, w]`. Training uses a broadcast and a
/// reshape, whose backward sums the four copies' gradients into what the input already
/// gathered.
pub(crate) fn upsample_nearest_2x(x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
    let (b, c, h, w) = x.dims4()?;
    Ok(match mode {
        ForwardMode::Infer => x.upsample_nearest2d(2 * h, 2 * w)?,
        ForwardMode::Train => {
            x.unsqueeze(3)?.unsqueeze(5)?.broadcast_as((b, c, h, 2, w, 2))?.reshape((b, c, 2 * h, 2 * w))?
        }
    })
}

/// diffusers' `Upsample2D` with a convolution: nearest upsampling by 2, then a 3x3 conv.
#[derive(Debug, Clone)]
pub(crate) struct Upsample2D {
    conv: Conv2d,
}

impl Upsample2D {
    pub(crate) fn load(l: &mut Loader, p: &str, channels: usize) -> Result<Self> {
        Ok(Self { conv: Conv2d::load_3x3(l, &join(p, "conv"), channels, channels)? })
    }

    pub(crate) fn forward(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        self.conv.forward(&upsample_nearest_2x(x, mode)?)
    }

    pub(crate) fn weights(&self, p: &str, out: &mut WeightList) {
        self.conv.weights(&join(p, "conv"), out);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn upsample_forms_agree_and_training_form_accumulates_gradients() {
        let dev = Device::Cpu;
        let x = Var::new(&[[[[1f32, 2.], [3., 4.]]]], &dev).unwrap();
        let a = upsample_nearest_2x(x.as_tensor(), ForwardMode::Train).unwrap();
        let b = upsample_nearest_2x(x.as_tensor(), ForwardMode::Infer).unwrap();
        let want: Vec<f32> = vec![1., 1., 2., 2., 1., 1., 2., 2., 3., 3., 4., 4., 3., 3., 4., 4.];
        assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        assert_eq!(b.flatten_all().unwrap().to_vec1::<f32>().unwrap(), want);
        // The input also feeds a second branch: its gradient must be the sum of both.
        let loss = (a.sum_all().unwrap() + (x.as_tensor() * 10.0).unwrap().sum_all().unwrap()).unwrap();
        let g = loss.backward().unwrap();
        let gx = g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(gx, vec![14f32; 4]);
    }

    #[test]
    fn group_norm_matches_the_definition() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 16., &dev).unwrap().reshape((1, 4, 2, 2)).unwrap();
        let gn = GroupNorm {
            weight: Tensor::new(&[1f32, 2., 1., 1.], &dev).unwrap(),
            bias: Tensor::new(&[0f32, 0., 0., 1.], &dev).unwrap(),
            groups: 2,
            eps: 0.0,
        };
        let y = gn.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Each group holds 0..8 (shifted): mean 3.5, variance 5.25.
        let sd = 5.25f32.sqrt();
        for (i, v) in y.iter().enumerate() {
            let z = ((i % 8) as f32 - 3.5) / sd;
            let want = match i / 4 {
                1 => 2.0 * z,
                3 => z + 1.0,
                _ => z,
            };
            assert!((v - want).abs() < 1e-5, "{i}: {v} vs {want}");
        }
    }
}

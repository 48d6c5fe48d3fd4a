//! GPT-2: learned positions, pre-LayerNorm blocks, Conv1D weights (`[in, out]`), GELU
//! MLP and an LM head tied to the token embedding.

use std::sync::Arc;

use candle_core::{Tensor, D};

use super::cache::KvCache;
use super::config::{Activation, ModelConfig};
use super::gemv::QuantWeight;
use super::linear::Linear;
use super::load::Weights;
use super::{ops, ForwardMode, Params};
use crate::error::Result;

pub(crate) struct Block {
    ln_1: (Tensor, Tensor),
    c_attn: Linear,
    attn_proj: Linear,
    ln_2: (Tensor, Tensor),
    c_fc: Linear,
    mlp_proj: Linear,
}

pub(crate) struct Gpt2 {
    /// An empty placeholder when the table is held quantized (`wte_quant`).
    wte: Tensor,
    wte_quant: Option<Arc<QuantWeight>>,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: (Tensor, Tensor),
    cfg: ModelConfig,
}

/// Canonical (transformers) prefix of every module.
const PREFIX: &str = "transformer.";

impl Gpt2 {
    pub(crate) fn load(cfg: &ModelConfig, w: &Weights, p: &mut Params) -> Result<Self> {
        // Hub GPT-2 checkpoints store `h.0...`, transformers-saved ones `transformer.h.0...`.
        let file_prefix = if w.contains("transformer.wte.weight") || !w.contains("wte.weight") { PREFIX } else { "" };
        let h = cfg.hidden_size;
        let get = |p: &mut Params, name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = w.get(&format!("{file_prefix}{name}"), shape)?;
            p.take(&format!("{PREFIX}{name}"), t)
        };
        let ln = |p: &mut Params, name: &str| -> Result<(Tensor, Tensor)> {
            Ok((get(p, &format!("{name}.weight"), &[h])?, get(p, &format!("{name}.bias"), &[h])?))
        };
        let conv = |p: &mut Params, name: &str, i: usize, o: usize| -> Result<Linear> {
            let bias = get(p, &format!("{name}.bias"), &[o])?;
            // Held as `[out, in]` already (a GGUF file's layout).
            if let Some(q) = super::load_quant(w, &format!("{PREFIX}{name}.weight"), i, o)? {
                return Ok(Linear::quant(q, Some(bias), true));
            }
            let weight = get(p, &format!("{name}.weight"), &[i, o])?;
            Ok(Linear::new(weight, Some(bias), true))
        };
        let wte_quant = super::load_quant(w, &format!("{PREFIX}wte.weight"), h, cfg.vocab_size)?;
        let wte = match &wte_quant {
            Some(_) => Tensor::zeros(0, w.dtype(), &candle_core::Device::Cpu)?,
            None => get(p, "wte.weight", &[cfg.vocab_size, h])?,
        };
        let wpe = get(p, "wpe.weight", &[cfg.max_position_embeddings, h])?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = format!("h.{i}");
            blocks.push(Block {
                ln_1: ln(p, &format!("{b}.ln_1"))?,
                c_attn: conv(p, &format!("{b}.attn.c_attn"), h, 3 * h)?,
                attn_proj: conv(p, &format!("{b}.attn.c_proj"), h, h)?,
                ln_2: ln(p, &format!("{b}.ln_2"))?,
                c_fc: conv(p, &format!("{b}.mlp.c_fc"), h, cfg.intermediate_size)?,
                mlp_proj: conv(p, &format!("{b}.mlp.c_proj"), cfg.intermediate_size, h)?,
            });
        }
        let ln_f = ln(p, "ln_f")?;
        Ok(Self { wte, wte_quant, wpe, blocks, ln_f, cfg: cfg.clone() })
    }

    /// The LM head: the token embedding, tied.
    pub(crate) fn head(&self) -> Linear {
        match &self.wte_quant {
            Some(q) => Linear::quant(q.clone(), None, false),
            None => Linear::new(self.wte.clone(), None, false),
        }
    }

    /// [`Gpt2::forward`] without the LM head: the final hidden states `[batch, seq,
    /// hidden]`, after the final LayerNorm.
    pub(crate) fn hidden(
        &self,
        ids: &Tensor,
        offset: usize,
        mode: ForwardMode,
        mut cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let p = ops::Pass::new(ids, offset, cache.as_deref(), cfg.max_position_embeddings, "n_positions")?;
        let (b, t) = (p.b, p.t);
        let train = mode == ForwardMode::Train;
        let h = cfg.hidden_size;
        let (nh, hd) = (cfg.num_attention_heads, cfg.head_dim);
        let tok = super::embed(&self.wte, self.wte_quant.as_ref(), ids)?;
        let mut x = match cache.as_ref().filter(|_| p.padded) {
            Some(c) => {
                let pos: Vec<u32> = c.positions(t).into_iter().map(|p| p as u32).collect();
                let pos = Tensor::from_vec(pos, (b, t), tok.device())?;
                (tok + ops::embed(&self.wpe, &pos)?)?
            }
            None => tok.broadcast_add(&self.wpe.narrow(0, p.offset, t)?)?,
        };
        let mask = ops::CausalMask::new(t, p.past, None, &p.pads, x.device());
        for (i, blk) in self.blocks.iter().enumerate() {
            let r = ops::layer_norm(&x, &blk.ln_1.0, &blk.ln_1.1, cfg.norm_eps, mode)?;
            let qkv = blk.c_attn.forward(&r, train)?;
            let part = |j: usize| qkv.narrow(D::Minus1, j * h, h);
            let mut scale = 1.0 / (hd as f64).sqrt();
            if cfg.scale_attn_by_inverse_layer_idx {
                scale /= (i + 1) as f64;
            }
            let y = match cache.as_mut() {
                Some(c) => {
                    let heads = |j: usize| -> Result<Tensor> {
                        Ok(part(j)?.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
                    };
                    let (k, v) = c.append(i, &heads(1)?, &heads(2)?)?;
                    let y = ops::attention(&heads(0)?, &k, &v, &mask, scale, mode)?;
                    y.transpose(1, 2)?.reshape((b, t, h))?
                }
                None => ops::packed_self_attention(&qkv, (nh, nh, hd), &mask, scale, mode)?,
            };
            x = (x + blk.attn_proj.forward(&y, train)?)?;
            let r = ops::layer_norm(&x, &blk.ln_2.0, &blk.ln_2.1, cfg.norm_eps, mode)?;
            let m = blk.c_fc.forward(&r, train)?;
            let m = match cfg.activation {
                Activation::GeluTanh if super::fused::usable(&m) => m.apply_op1(super::fused::GeluTanh)?,
                Activation::GeluTanh => m.gelu()?,
                Activation::Gelu => m.gelu_erf()?,
                Activation::Relu => m.relu()?,
                Activation::Silu => m.silu()?,
            };
            x = (x + blk.mlp_proj.forward(&m, train)?)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = if last_only { x.narrow(1, t - 1, 1)? } else { x };
        ops::layer_norm(&x, &self.ln_f.0, &self.ln_f.1, cfg.norm_eps, mode)
    }

    /// Every linear layer with its transformers module name.
    pub(crate) fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, b) in self.blocks.iter_mut().enumerate() {
            let p = format!("{PREFIX}h.{i}");
            out.push((format!("{p}.attn.c_attn"), &mut b.c_attn));
            out.push((format!("{p}.attn.c_proj"), &mut b.attn_proj));
            out.push((format!("{p}.mlp.c_fc"), &mut b.c_fc));
            out.push((format!("{p}.mlp.c_proj"), &mut b.mlp_proj));
        }
        out
    }

    /// Every weight under its transformers name (for saving).
    pub(crate) fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let wte = match &self.wte_quant {
            Some(q) => Linear::quant(q.clone(), None, false).stored_weight()?,
            None => self.wte.clone(),
        };
        let mut out = vec![(format!("{PREFIX}wte.weight"), wte), (format!("{PREFIX}wpe.weight"), self.wpe.clone())];
        for (i, b) in self.blocks.iter().enumerate() {
            let p = format!("{PREFIX}h.{i}");
            out.push((format!("{p}.ln_1.weight"), b.ln_1.0.clone()));
            out.push((format!("{p}.ln_1.bias"), b.ln_1.1.clone()));
            out.push((format!("{p}.ln_2.weight"), b.ln_2.0.clone()));
            out.push((format!("{p}.ln_2.bias"), b.ln_2.1.clone()));
            for (name, l) in [
                ("attn.c_attn", &b.c_attn),
                ("attn.c_proj", &b.attn_proj),
                ("mlp.c_fc", &b.c_fc),
                ("mlp.c_proj", &b.mlp_proj),
            ] {
                out.push((format!("{p}.{name}.weight"), l.stored_weight()?));
                if let Some(bias) = &l.bias {
                    out.push((format!("{p}.{name}.bias"), bias.clone()));
                }
            }
        }
        out.push((format!("{PREFIX}ln_f.weight"), self.ln_f.0.clone()));
        out.push((format!("{PREFIX}ln_f.bias"), self.ln_f.1.clone()));
        Ok(out)
    }
}

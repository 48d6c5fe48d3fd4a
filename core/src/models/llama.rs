//! The Llama family (Llama, Mistral, Qwen2, SmolLM, TinyLlama): RMSNorm, RoPE
//! (rotate-half), grouped-query attention, SwiGLU MLP, tied or untied LM head.

use std::sync::Arc;

use candle_core::Tensor;

use super::cache::KvCache;
use super::config::ModelConfig;
use super::gemv::QuantWeight;
use super::linear::Linear;
use super::load::Weights;
use super::{ops, ForwardMode, Params};
use crate::error::Result;

pub(crate) struct Layer {
    input_layernorm: Tensor,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    post_attention_layernorm: Tensor,
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

pub(crate) struct Llama {
    /// An empty placeholder when the table is held quantized (`embed_quant`).
    embed_tokens: Tensor,
    embed_quant: Option<Arc<QuantWeight>>,
    layers: Vec<Layer>,
    norm: Tensor,
    /// `None` when tied to `embed_tokens`.
    lm_head: Option<Linear>,
    cfg: ModelConfig,
}

impl Llama {
    pub(crate) fn load(cfg: &ModelConfig, w: &Weights, p: &mut Params) -> Result<Self> {
        let h = cfg.hidden_size;
        let (q_out, kv_out) = (cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim);
        let get = |p: &mut Params, name: &str, shape: &[usize]| -> Result<Tensor> { p.take(name, w.get(name, shape)?) };
        let lin = |p: &mut Params, name: &str, i: usize, o: usize, bias: bool| -> Result<Linear> {
            let bias = if bias { Some(get(p, &format!("{name}.bias"), &[o])?) } else { None };
            if let Some(q) = super::load_quant(w, &format!("{name}.weight"), i, o)? {
                return Ok(Linear::quant(q, bias, false));
            }
            let weight = get(p, &format!("{name}.weight"), &[o, i])?;
            Ok(Linear::new(weight, bias, false))
        };
        let embed_quant = super::load_quant(w, "model.embed_tokens.weight", h, cfg.vocab_size)?;
        let embed_tokens = match &embed_quant {
            Some(_) => Tensor::zeros(0, w.dtype(), &candle_core::Device::Cpu)?,
            None => get(p, "model.embed_tokens.weight", &[cfg.vocab_size, h])?,
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let l = format!("model.layers.{i}");
            let ffn = cfg.intermediate_size;
            layers.push(Layer {
                input_layernorm: get(p, &format!("{l}.input_layernorm.weight"), &[h])?,
                q_proj: lin(p, &format!("{l}.self_attn.q_proj"), h, q_out, cfg.qkv_bias)?,
                k_proj: lin(p, &format!("{l}.self_attn.k_proj"), h, kv_out, cfg.qkv_bias)?,
                v_proj: lin(p, &format!("{l}.self_attn.v_proj"), h, kv_out, cfg.qkv_bias)?,
                o_proj: lin(p, &format!("{l}.self_attn.o_proj"), q_out, h, cfg.o_bias)?,
                post_attention_layernorm: get(p, &format!("{l}.post_attention_layernorm.weight"), &[h])?,
                gate_proj: lin(p, &format!("{l}.mlp.gate_proj"), h, ffn, cfg.mlp_bias)?,
                up_proj: lin(p, &format!("{l}.mlp.up_proj"), h, ffn, cfg.mlp_bias)?,
                down_proj: lin(p, &format!("{l}.mlp.down_proj"), ffn, h, cfg.mlp_bias)?,
            });
        }
        let norm = get(p, "model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(lin(p, "lm_head", h, cfg.vocab_size, false)?) };
        Ok(Self { embed_tokens, embed_quant, layers, norm, lm_head, cfg: cfg.clone() })
    }

    /// The LM head: `lm_head`, or the token embedding when tied.
    pub(crate) fn head(&self) -> Linear {
        match (&self.lm_head, &self.embed_quant) {
            (Some(head), _) => head.clone(),
            (None, Some(q)) => Linear::quant(q.clone(), None, false),
            (None, None) => Linear::new(self.embed_tokens.clone(), None, false),
        }
    }

    /// [`Llama::forward`] without the LM head: the final hidden states `[batch, seq,
    /// hidden]`, after the final RMSNorm.
    pub(crate) fn hidden(
        &self,
        ids: &Tensor,
        offset: usize,
        mode: ForwardMode,
        mut cache: Option<&mut KvCache>,
        last_only: bool,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let p = ops::Pass::new(ids, offset, cache.as_deref(), cfg.max_position_embeddings, "max_position_embeddings")?;
        let (b, t) = (p.b, p.t);
        let train = mode == ForwardMode::Train;
        let (nh, nkv, hd) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim);
        let mut x = super::embed(&self.embed_tokens, self.embed_quant.as_ref(), ids)?;
        let (cos, sin) = match cache.as_ref().filter(|_| p.padded) {
            Some(c) => {
                let (cos, sin) =
                    ops::rope_tables_at(cfg.rope_theta, cfg.rope_scaling, hd, &c.positions(t), x.dtype(), x.device())?;
                (cos.reshape((b, t, hd / 2))?, sin.reshape((b, t, hd / 2))?)
            }
            None => ops::rope_tables(cfg.rope_theta, cfg.rope_scaling, hd, p.offset, t, x.dtype(), x.device())?,
        };
        let mask = ops::CausalMask::new(t, p.past, cfg.sliding_window, &p.pads, x.device());
        let scale = 1.0 / (hd as f64).sqrt();
        let cached = cache.is_some();
        for (i, l) in self.layers.iter().enumerate() {
            // Every activation inside the layer is internal (`forward_internal`,
            // `rms_norm_internal`): the backward releases each one once it has passed it.
            let r = ops::rms_norm_internal(&x, &l.input_layernorm, cfg.norm_eps, mode)?;
            // (With a cache, k and v may reach it as views: kept.)
            let proj = |lin: &Linear| if cached { lin.forward(&r, train) } else { lin.forward_internal(&r, train) };
            let (q, k, v) = (proj(&l.q_proj)?, proj(&l.k_proj)?, proj(&l.v_proj)?);
            let y = match cache.as_mut() {
                Some(c) => {
                    let split = |y: Tensor, n: usize| -> Result<Tensor> {
                        Ok(y.reshape((b, t, n, hd))?.transpose(1, 2)?.contiguous()?)
                    };
                    let q = ops::rope(&split(q, nh)?, &cos, &sin, mode)?;
                    let k = ops::rope(&split(k, nkv)?, &cos, &sin, mode)?;
                    let (k, v) = c.append(i, &k, &split(v, nkv)?)?;
                    let y = ops::attention(&q, &k, &v, &mask, scale, mode)?;
                    y.transpose(1, 2)?.reshape((b, t, nh * hd))?
                }
                None => {
                    // RoPE in the projections' [b, t, heads, d] layout: no head split.
                    let rope = |y: Tensor, n: usize| -> Result<Tensor> {
                        Ok(ops::rope_thd(&y.reshape((b, t, n, hd))?, &cos, &sin, mode)?.reshape((b, t, n * hd))?)
                    };
                    let (q, k) = (rope(q, nh)?, rope(k, nkv)?);
                    ops::self_attention(&q, &k, &v, (nh, nkv, hd), &mask, scale, mode)?
                }
            };
            x = (x + l.o_proj.forward_internal(&y, train)?)?;
            let r = ops::rms_norm_internal(&x, &l.post_attention_layernorm, cfg.norm_eps, mode)?;
            let g = l.gate_proj.forward_internal(&r, train)?;
            let u = l.up_proj.forward_internal(&r, train)?;
            let m = if super::fused::usable(&g) {
                g.contiguous()?.apply_op2(&u.contiguous()?, super::fused::SwiGlu { release: true })?
            } else {
                (g.silu()? * u)?
            };
            x = (x + l.down_proj.forward_internal(&m, train)?)?;
        }
        if let Some(c) = cache {
            c.advance(t);
        }
        let x = if last_only { x.narrow(1, t - 1, 1)? } else { x };
        ops::rms_norm(&x, &self.norm, cfg.norm_eps, mode)
    }

    /// Every linear layer with its transformers module name.
    pub(crate) fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.self_attn.q_proj"), &mut l.q_proj));
            out.push((format!("{p}.self_attn.k_proj"), &mut l.k_proj));
            out.push((format!("{p}.self_attn.v_proj"), &mut l.v_proj));
            out.push((format!("{p}.self_attn.o_proj"), &mut l.o_proj));
            out.push((format!("{p}.mlp.gate_proj"), &mut l.gate_proj));
            out.push((format!("{p}.mlp.up_proj"), &mut l.up_proj));
            out.push((format!("{p}.mlp.down_proj"), &mut l.down_proj));
        }
        if let Some(h) = self.lm_head.as_mut() {
            out.push(("lm_head".to_string(), h));
        }
        out
    }

    /// Every weight under its transformers name (for saving).
    pub(crate) fn named_weights(&self) -> Result<Vec<(String, Tensor)>> {
        let embed = match &self.embed_quant {
            Some(q) => Linear::quant(q.clone(), None, false).stored_weight()?,
            None => self.embed_tokens.clone(),
        };
        let mut out = vec![("model.embed_tokens.weight".to_string(), embed)];
        for (i, l) in self.layers.iter().enumerate() {
            let p = format!("model.layers.{i}");
            out.push((format!("{p}.input_layernorm.weight"), l.input_layernorm.clone()));
            out.push((format!("{p}.post_attention_layernorm.weight"), l.post_attention_layernorm.clone()));
            for (name, lin) in [
                ("self_attn.q_proj", &l.q_proj),
                ("self_attn.k_proj", &l.k_proj),
                ("self_attn.v_proj", &l.v_proj),
                ("self_attn.o_proj", &l.o_proj),
                ("mlp.gate_proj", &l.gate_proj),
                ("mlp.up_proj", &l.up_proj),
                ("mlp.down_proj", &l.down_proj),
            ] {
                out.push((format!("{p}.{name}.weight"), lin.stored_weight()?));
                if let Some(bias) = &lin.bias {
                    out.push((format!("{p}.{name}.bias"), bias.clone()));
                }
            }
        }
        out.push(("model.norm.weight".to_string(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".to_string(), h.stored_weight()?));
        }
        Ok(out)
    }
}

//! The CLIP text encoder of Stable Diffusion (transformers' `CLIPTextModel`): token and
//! position embeddings, pre-LayerNorm transformer layers under a causal mask, a final
//! LayerNorm; `last_hidden_state`, the pooled output at the end-of-text token, and the
//! hidden states diffusers' `clip_skip` reads. Loaded from a diffusers `text_encoder/`
//! directory (config.json + model.safetensors, transformers' tensor names with or
//! without the `text_model.` prefix).
//!
//! Written for training like the language models: the projections are the project's
//! [`Linear`] (so LoRA attaches to them), and [`ForwardMode::Train`] uses only ops with
//! a backward.
//!
//! ```no_run
//! # fn main() -> anneal::Result<()> {
//! use anneal::diffusion::{ClipTextModel, ClipTokenizer};
//! use anneal::{ForwardMode, LoadOptions};
//! let tok = ClipTokenizer::from_dir("sd/tokenizer")?;
//! let enc = ClipTextModel::load("sd/text_encoder", &LoadOptions::default())?;
//! let ids = tok.to_tensor(&["a red circle"], enc.device())?;
//! let cond = enc.prompt_embeds(&ids, None, ForwardMode::Infer)?; // [1, 77, hidden]
//! # Ok(()) }
//! ```

mod tokenizer;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;

pub use tokenizer::ClipTokenizer;

use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::linear::Linear;
use crate::models::load::Weights;
use crate::models::{ops, ForwardMode, LoadOptions};

/// The MLP activation (`hidden_act`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipActivation {
    /// `quick_gelu`: `x * sigmoid(1.702 x)` (OpenAI CLIP, Stable Diffusion 1.x).
    QuickGelu,
    /// `gelu` (erf form; OpenCLIP, Stable Diffusion 2.x).
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
}

/// The text encoder's config.json, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipTextConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: ClipActivation,
    pub layer_norm_eps: f64,
    /// The pooled output sits at the first `eos_token_id`, or, for configs with the old
    /// value 2, at the largest id (transformers' rule).
    pub eos_token_id: u32,
}

impl Default for ClipTextConfig {
    /// transformers' `CLIPTextConfig()` defaults.
    fn default() -> Self {
        Self {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: ClipActivation::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: 49407,
        }
    }
}

impl ClipTextConfig {
    /// Reads `config.json` (a `CLIPTextModel` / `CLIPTextModelWithProjection` config, or
    /// a `CLIPModel` one through its `text_config`).
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).with_path(path)?;
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| Error::data(Location::file(path), format!("not valid JSON: {e}")))?;
        Self::from_json(&v, path)
    }

    /// [`ClipTextConfig::from_file`] on parsed JSON; `path` names the source in errors.
    pub fn from_json(v: &Value, path: &Path) -> Result<Self> {
        let v = v.get("text_config").filter(|t| t.is_object()).unwrap_or(v);
        let err = |field: &str, reason: String| Error::data(Location::file(path).field(field), reason);
        if !v.is_object() {
            return Err(Error::data(Location::file(path), "expected a JSON object"));
        }
        let d = Self::default();
        let num = |field: &str, default: usize| -> Result<usize> {
            match v.get(field).filter(|x| !x.is_null()) {
                None => Ok(default),
                Some(x) => match x.as_u64() {
                    Some(n) if n > 0 => Ok(n as usize),
                    _ => Err(err(field, format!("expected a positive whole number, got {x}"))),
                },
            }
        };
        let cfg = Self {
            vocab_size: num("vocab_size", d.vocab_size)?,
            hidden_size: num("hidden_size", d.hidden_size)?,
            intermediate_size: num("intermediate_size", d.intermediate_size)?,
            num_hidden_layers: num("num_hidden_layers", d.num_hidden_layers)?,
            num_attention_heads: num("num_attention_heads", d.num_attention_heads)?,
            max_position_embeddings: num("max_position_embeddings", d.max_position_embeddings)?,
            hidden_act: match v.get("hidden_act").and_then(Value::as_str) {
                None | Some("quick_gelu") => ClipActivation::QuickGelu,
                Some("gelu") => ClipActivation::Gelu,
                Some("gelu_new" | "gelu_pytorch_tanh") => ClipActivation::GeluTanh,
                Some(other) => {
                    return Err(err(
                        "hidden_act",
                        format!("unsupported activation `{other}` (quick_gelu, gelu, gelu_new, gelu_pytorch_tanh)"),
                    ))
                }
            },
            layer_norm_eps: match v.get("layer_norm_eps").filter(|x| !x.is_null()) {
                None => d.layer_norm_eps,
                Some(x) => x
                    .as_f64()
                    .filter(|e| *e > 0.0)
                    .ok_or_else(|| err("layer_norm_eps", format!("expected a positive number, got {x}")))?,
            },
            eos_token_id: match v.get("eos_token_id").filter(|x| !x.is_null()) {
                None => d.eos_token_id,
                Some(x) => x
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| err("eos_token_id", format!("expected a token id, got {x}")))?,
            },
        };
        if !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads) {
            return Err(err(
                "num_attention_heads",
                format!("{} does not divide hidden_size {}", cfg.num_attention_heads, cfg.hidden_size),
            ));
        }
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
}

/// The outputs of [`ClipTextModel::forward`].
#[derive(Debug, Clone)]
pub struct ClipTextOutput {
    /// `[b, t, hidden]`, after the final LayerNorm.
    pub last_hidden_state: Tensor,
    /// `[b, hidden]`: `last_hidden_state` at each row's end-of-text token.
    pub pooler_output: Tensor,
}

#[derive(Clone)]
struct Layer {
    ln1: (Tensor, Tensor),
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: (Tensor, Tensor),
    fc1: Linear,
    fc2: Linear,
}

/// CLIP's text transformer. `Clone` shares the weights (and `Var`s): a clone sees what
/// training does to the original.
#[derive(Clone)]
pub struct ClipTextModel {
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_ln: (Tensor, Tensor),
    cfg: ClipTextConfig,
    /// Full fine-tuning: every weight, under its canonical (`text_model.`) name.
    vars: Vec<(String, Var)>,
    /// The attached LoRA adapter (see [`super::lora`]).
    pub(crate) lora: Option<super::lora::ComponentLora>,
    dir: PathBuf,
    device: Device,
    dtype: DType,
}

impl std::fmt::Debug for ClipTextModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTextModel")
            .field("config", &self.cfg)
            .field("dir", &self.dir)
            .field("trainable", &!self.vars.is_empty())
            .field("lora", &self.lora.as_ref().map(|l| l.modules.len()))
            .finish()
    }
}

/// Canonical prefix of every tensor (Stable Diffusion checkpoints, transformers 4).
const PREFIX: &str = "text_model.";

impl ClipTextModel {
    /// Loads `dir/config.json` and `dir/model.safetensors` (or sharded weights). Tensor
    /// shapes are checked against the config; errors name the file and the tensor.
    pub fn load(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let cfg = ClipTextConfig::from_file(dir.join("config.json"))?;
        let w = Weights::load(dir, opts.dtype, &opts.device)?;
        // transformers 5 saves CLIPTextModel without the `text_model.` prefix
        let file_prefix = if w.contains(&format!("{PREFIX}embeddings.token_embedding.weight")) { PREFIX } else { "" };
        let mut vars = Vec::new();
        let mut get = |name: &str, shape: &[usize]| -> Result<Tensor> {
            let t = w.get(&format!("{file_prefix}{name}"), shape)?;
            if !opts.trainable {
                return Ok(t);
            }
            let v = Var::from_tensor(&t)?;
            let t = v.as_tensor().clone();
            vars.push((format!("{PREFIX}{name}"), v));
            Ok(t)
        };
        let h = cfg.hidden_size;
        let token_embedding = get("embeddings.token_embedding.weight", &[cfg.vocab_size, h])?;
        let position_embedding = get("embeddings.position_embedding.weight", &[cfg.max_position_embeddings, h])?;
        let mut ln = |name: &str| -> Result<(Tensor, Tensor)> {
            Ok((get(&format!("{name}.weight"), &[h])?, get(&format!("{name}.bias"), &[h])?))
        };
        let mut layer_norms = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let b = format!("encoder.layers.{i}");
            layer_norms.push((ln(&format!("{b}.layer_norm1"))?, ln(&format!("{b}.layer_norm2"))?));
        }
        let final_ln = ln("final_layer_norm")?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for (i, (ln1, ln2)) in layer_norms.into_iter().enumerate() {
            let b = format!("encoder.layers.{i}");
            let mut linear = |name: &str, i_f: usize, o_f: usize| -> Result<Linear> {
                let weight = get(&format!("{b}.{name}.weight"), &[o_f, i_f])?;
                let bias = get(&format!("{b}.{name}.bias"), &[o_f])?;
                Ok(Linear::new(weight, Some(bias), false))
            };
            layers.push(Layer {
                q: linear("self_attn.q_proj", h, h)?,
                k: linear("self_attn.k_proj", h, h)?,
                v: linear("self_attn.v_proj", h, h)?,
                out: linear("self_attn.out_proj", h, h)?,
                fc1: linear("mlp.fc1", h, cfg.intermediate_size)?,
                fc2: linear("mlp.fc2", cfg.intermediate_size, h)?,
                ln1,
                ln2,
            });
        }
        Ok(Self {
            token_embedding,
            position_embedding,
            layers,
            final_ln,
            cfg,
            vars,
            lora: None,
            dir: dir.to_path_buf(),
            device: opts.device.clone(),
            dtype: opts.dtype,
        })
    }

    pub fn config(&self) -> &ClipTextConfig {
        &self.cfg
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// What an optimiser should update: a LoRA adapter's A and B under their keys in the
    /// saved file (`text_encoder.<module>.lora_A.weight`, `lora_B.weight`) when one is
    /// attached; else, loaded with `trainable`, every weight under its transformers name
    /// (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...); else nothing.
    pub fn named_trainable_vars(&self) -> Vec<(String, Var)> {
        match &self.lora {
            Some(l) => l.named_vars(),
            None => self.vars.clone(),
        }
    }

    /// The base weights' variables (full fine-tuning; empty when loaded frozen).
    pub(crate) fn named_base_vars(&self) -> &[(String, Var)] {
        &self.vars
    }

    pub fn trainable_vars(&self) -> Vec<Var> {
        self.named_trainable_vars().into_iter().map(|(_, v)| v).collect()
    }

    /// Writes the weights as `dir/model.safetensors` (atomically) with the config.json
    /// it was loaded with, a directory `CLIPTextModel.from_pretrained` reads.
    pub fn save(&self, dir: impl AsRef<Path>) -> Result<()> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_path(dir)?;
        let cfg = self.dir.join("config.json");
        let text = std::fs::read(&cfg).with_path(&cfg)?;
        crate::util::write_atomic(&dir.join("config.json"), &text)?;
        let tensors: std::collections::HashMap<String, Tensor> = self.named_weights().into_iter().collect();
        crate::models::write_safetensors(&tensors, &dir.join("model.safetensors"))
    }

    /// Every weight under its transformers name (with the `text_model.` prefix).
    pub fn named_weights(&self) -> Vec<(String, Tensor)> {
        let mut out = vec![
            (format!("{PREFIX}embeddings.token_embedding.weight"), self.token_embedding.clone()),
            (format!("{PREFIX}embeddings.position_embedding.weight"), self.position_embedding.clone()),
        ];
        for (i, l) in self.layers.iter().enumerate() {
            let b = format!("{PREFIX}encoder.layers.{i}");
            for (name, (w, bias)) in [("layer_norm1", &l.ln1), ("layer_norm2", &l.ln2)] {
                out.push((format!("{b}.{name}.weight"), w.clone()));
                out.push((format!("{b}.{name}.bias"), bias.clone()));
            }
            for (name, lin) in l.linears() {
                // CLIP's layers are never quantized: always dense.
                if let crate::models::linear::Weight::Dense(w) = &lin.weight {
                    out.push((format!("{b}.{name}.weight"), w.clone()));
                }
                if let Some(bias) = &lin.bias {
                    out.push((format!("{b}.{name}.bias"), bias.clone()));
                }
            }
        }
        out.push((format!("{PREFIX}final_layer_norm.weight"), self.final_ln.0.clone()));
        out.push((format!("{PREFIX}final_layer_norm.bias"), self.final_ln.1.clone()));
        out
    }

    /// Every linear layer under its transformers module name
    /// (`text_model.encoder.layers.{i}.self_attn.q_proj`, `....mlp.fc1`, ...): where LoRA
    /// attaches.
    pub(crate) fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let mut out = Vec::new();
        for (i, l) in self.layers.iter_mut().enumerate() {
            let b = format!("{PREFIX}encoder.layers.{i}");
            for (name, lin) in [
                ("self_attn.q_proj", &mut l.q),
                ("self_attn.k_proj", &mut l.k),
                ("self_attn.v_proj", &mut l.v),
                ("self_attn.out_proj", &mut l.out),
                ("mlp.fc1", &mut l.fc1),
                ("mlp.fc2", &mut l.fc2),
            ] {
                out.push((format!("{b}.{name}"), lin));
            }
        }
        out
    }

    /// Checks `ids` (`[b, t]`, integer) and returns them as u32.
    fn check_ids(&self, ids: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2().map_err(|_| {
            Error::config("input_ids", format!("expected a [batch, seq] tensor, got shape {:?}", ids.dims()))
        })?;
        if t == 0 {
            return Err(Error::config("input_ids", "empty sequence"));
        }
        if t > self.cfg.max_position_embeddings {
            return Err(Error::config(
                "input_ids",
                format!("{t} tokens exceed max_position_embeddings ({})", self.cfg.max_position_embeddings),
            ));
        }
        let ids = match ids.dtype() {
            DType::U32 => ids.clone(),
            DType::I64 => {
                let min = ids.flatten_all()?.min(0)?.to_scalar::<i64>()?;
                if min < 0 {
                    return Err(Error::config("input_ids", format!("negative token id {min}")));
                }
                ids.to_dtype(DType::U32)?
            }
            DType::U8 => ids.to_dtype(DType::U32)?,
            other => return Err(Error::config("input_ids", format!("token ids must be integers, got {other:?}"))),
        };
        let max = ids.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= self.cfg.vocab_size {
            return Err(Error::config(
                "input_ids",
                format!("token id {max} is outside the vocabulary ({} tokens)", self.cfg.vocab_size),
            ));
        }
        Ok(ids)
    }

    /// The embeddings and the first `n_layers` layers (no final LayerNorm).
    fn run(&self, ids: &Tensor, n_layers: usize, mode: ForwardMode) -> Result<Tensor> {
        let (b, t) = ids.dims2()?;
        let cfg = &self.cfg;
        let train = mode == ForwardMode::Train;
        let (h, nh, hd) = (cfg.hidden_size, cfg.num_attention_heads, cfg.head_dim());
        let tok = ops::embed(&self.token_embedding, ids)?;
        let mut x = tok.broadcast_add(&self.position_embedding.narrow(0, 0, t)?)?;
        let mask = ops::CausalMask::new(t, 0, None, &[0], x.device());
        let scale = (hd as f64).powf(-0.5);
        for l in self.layers.iter().take(n_layers) {
            let r = ops::layer_norm(&x, &l.ln1.0, &l.ln1.1, cfg.layer_norm_eps, mode)?;
            let heads = |lin: &Linear| -> Result<Tensor> {
                Ok(lin.forward(&r, train)?.reshape((b, t, nh, hd))?.transpose(1, 2)?.contiguous()?)
            };
            let (q, k, v) = (heads(&l.q)?, heads(&l.k)?, heads(&l.v)?);
            let y = ops::attention(&q, &k, &v, &mask, scale, mode)?;
            let y = y.transpose(1, 2)?.reshape((b, t, h))?;
            x = (x + l.out.forward(&y, train)?)?;
            let r = ops::layer_norm(&x, &l.ln2.0, &l.ln2.1, cfg.layer_norm_eps, mode)?;
            let m = l.fc1.forward(&r, train)?;
            let m = match cfg.hidden_act {
                ClipActivation::QuickGelu => (&m * candle_nn::ops::sigmoid(&(&m * 1.702)?)?)?,
                ClipActivation::Gelu => m.gelu_erf()?,
                ClipActivation::GeluTanh => m.gelu()?,
            };
            x = (x + l.fc2.forward(&m, train)?)?;
        }
        Ok(x)
    }

    /// The final LayerNorm (diffusers applies it to a `clip_skip` hidden state).
    pub fn final_layer_norm(&self, x: &Tensor, mode: ForwardMode) -> Result<Tensor> {
        ops::layer_norm(x, &self.final_ln.0, &self.final_ln.1, self.cfg.layer_norm_eps, mode)
    }

    /// `last_hidden_state` and the pooled output of `ids` (`[b, t]`).
    pub fn forward(&self, ids: &Tensor, mode: ForwardMode) -> Result<ClipTextOutput> {
        let ids = self.check_ids(ids)?;
        let x = self.run(&ids, self.layers.len(), mode)?;
        let last_hidden_state = self.final_layer_norm(&x, mode)?;
        let pooler_output = self.pool(&ids, &last_hidden_state)?;
        Ok(ClipTextOutput { last_hidden_state, pooler_output })
    }

    /// The end-of-text position of each row: the first `eos_token_id` (0 when absent),
    /// or the largest id when `eos_token_id` is 2 (configs older than transformers 4.33).
    fn eos_positions(&self, ids: &Tensor) -> Result<Vec<usize>> {
        let rows: Vec<Vec<u32>> = ids.to_vec2()?;
        Ok(rows
            .iter()
            .map(|r| {
                if self.cfg.eos_token_id == 2 {
                    // torch's argmax: the first maximum
                    let max = r.iter().copied().max().unwrap_or(0);
                    r.iter().position(|&x| x == max).unwrap_or(0)
                } else {
                    r.iter().position(|&x| x == self.cfg.eos_token_id).unwrap_or(0)
                }
            })
            .collect())
    }

    fn pool(&self, ids: &Tensor, last: &Tensor) -> Result<Tensor> {
        let (b, t, h) = last.dims3()?;
        let idx: Vec<u32> = self.eos_positions(ids)?.iter().enumerate().map(|(row, &p)| (row * t + p) as u32).collect();
        let idx = Tensor::from_vec(idx, b, last.device())?;
        Ok(last.reshape((b * t, h))?.index_select(&idx, 0)?)
    }

    /// transformers' `hidden_states` (`output_hidden_states=True`): the embeddings, then
    /// the output of every layer; none has the final LayerNorm.
    pub fn hidden_states(&self, ids: &Tensor, mode: ForwardMode) -> Result<Vec<Tensor>> {
        let ids = self.check_ids(ids)?;
        (0..=self.layers.len()).map(|n| self.run(&ids, n, mode)).collect()
    }

    /// The hidden state after all but the last `skip` layers, without the final
    /// LayerNorm (`skip = 1`: the penultimate one, as SDXL conditions on).
    pub fn hidden_state(&self, ids: &Tensor, skip: usize, mode: ForwardMode) -> Result<Tensor> {
        let n = self.layers.len();
        if skip > n {
            return Err(Error::config("clip_skip", format!("{skip} is more than the {n} layers")));
        }
        let ids = self.check_ids(ids)?;
        self.run(&ids, n - skip, mode)
    }

    /// The prompt embeddings diffusers' Stable Diffusion pipelines condition on:
    /// `last_hidden_state` without `clip_skip` (or with 0); with `clip_skip = k` the
    /// hidden state k layers before the last, through the final LayerNorm.
    pub fn prompt_embeds(&self, ids: &Tensor, clip_skip: Option<usize>, mode: ForwardMode) -> Result<Tensor> {
        match clip_skip {
            None | Some(0) => Ok(self.forward(ids, mode)?.last_hidden_state),
            Some(k) => self.final_layer_norm(&self.hidden_state(ids, k, mode)?, mode),
        }
    }
}

impl Layer {
    fn linears(&self) -> [(&'static str, &Linear); 6] {
        [
            ("self_attn.q_proj", &self.q),
            ("self_attn.k_proj", &self.k),
            ("self_attn.v_proj", &self.v),
            ("self_attn.out_proj", &self.out),
            ("mlp.fc1", &self.fc1),
            ("mlp.fc2", &self.fc2),
        ]
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let p = Path::new("text_encoder/config.json");
        let e = ClipTextConfig::from_json(&serde_json::json!({"hidden_act": "swish"}), p).unwrap_err();
        assert!(e.to_string().contains("hidden_act") && e.to_string().contains("config.json"), "{e}");
        let e = ClipTextConfig::from_json(&serde_json::json!({"hidden_size": 30, "num_attention_heads": 4}), p)
            .unwrap_err();
        assert!(e.to_string().contains("num_attention_heads"), "{e}");
        let c = ClipTextConfig::from_json(&serde_json::json!({"text_config": {"hidden_size": 64}}), p).unwrap();
        assert_eq!(c.hidden_size, 64);
    }

    /// The projections are the project's `Linear`: a LoRA adapter put on them changes
    /// the output and receives gradients.
    #[test]
    fn lora_attaches_to_the_projections() {
        use crate::models::linear::LoraAdapter;
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny-clip/text_encoder");
        let dev = Device::Cpu;
        let mut enc = ClipTextModel::load(dir, &LoadOptions::default()).unwrap();
        let ids = Tensor::new(&[[998u32, 353, 617, 584, 999]], &dev).unwrap();
        let base = enc.forward(&ids, ForwardMode::Train).unwrap().last_hidden_state;
        let names: Vec<String> = enc.linears_mut().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names.len(), 12);
        assert!(names.iter().any(|n| n == "text_model.encoder.layers.0.self_attn.q_proj"));
        let mut vars = Vec::new();
        for (name, lin) in enc.linears_mut() {
            if name.ends_with("q_proj") || name.ends_with("fc1") {
                let (i, o) = lin.features().unwrap();
                let a = Var::randn(0f32, 0.1, (2, i), &dev).unwrap();
                let b = Var::randn(0f32, 0.1, (o, 2), &dev).unwrap();
                vars.push(a.clone());
                vars.push(b.clone());
                lin.lora = Some(LoraAdapter { a, b, scale: 2.0, dropout: 0.0, merged: false });
            }
        }
        let out = enc.forward(&ids, ForwardMode::Train).unwrap().last_hidden_state;
        let d = (&out - &base).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d > 1e-4, "the adapters changed nothing ({d})");
        let grads = out.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        assert_eq!(vars.len(), 8);
        for v in &vars {
            let g = grads.get(v).unwrap().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(g > 0.0);
        }
    }
}

//! Hugging Face `config.json` "wire" structs, converted into one resolved runtime
//! [`ModelConfig`].
//!
//! The wire structs accept unknown keys (every transformers release adds some), but any
//! value that changes the computation and that anneal does not implement is rejected with
//! [`Error::InvalidConfig`] naming the field, rather than silently ignored.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::Family;

/// Largest size accepted for one width: hidden, intermediate, head and attention
/// (heads x head_dim) sizes. Larger values are refused as corrupt before any tensor is read.
pub(crate) const MAX_DIM: usize = 1 << 20;
/// Largest number of layers accepted.
pub(crate) const MAX_LAYERS: usize = 1 << 12;
/// Largest vocabulary accepted.
pub(crate) const MAX_VOCAB: usize = 1 << 24;
/// Largest context (`max_position_embeddings`, `n_positions`, `sliding_window`) accepted.
pub(crate) const MAX_CONTEXT: usize = 1 << 24;

/// The MLP activation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU, tanh approximation (`gelu_new`, `gelu_pytorch_tanh`).
    GeluTanh,
    /// GELU, exact (erf).
    Gelu,
    Relu,
    /// SiLU (swish), used gated (SwiGLU) in the Llama family.
    Silu,
}

/// RoPE frequency scaling, as transformers' `rope_type`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rope_type", rename_all = "snake_case")]
pub enum RopeScaling {
    /// `linear`: every inverse frequency divided by `factor`.
    Linear { factor: f64 },
    /// `llama3` (Llama 3.1 / 3.2): low frequencies divided by `factor`, a smooth
    /// blend between `low_freq_factor` and `high_freq_factor`.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
}

/// A resolved model configuration: every value the forward pass needs, with the
/// family's defaults applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    pub family: Family,
    /// `model_type` of config.json (`gpt2`, `llama`, `mistral`, `qwen2`).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Equal to `num_attention_heads` without GQA; 1 for MQA.
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub max_position_embeddings: usize,
    /// LayerNorm (GPT-2) or RMSNorm (Llama) epsilon.
    pub norm_eps: f64,
    /// RoPE base (Llama family only; 0 for GPT-2).
    pub rope_theta: f64,
    /// RoPE frequency scaling (`rope_type` other than `default`).
    pub rope_scaling: Option<RopeScaling>,
    /// The LM head shares the token embedding matrix.
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2, Llama with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the attention output projection (Llama with `attention_bias`).
    pub o_bias: bool,
    /// Bias on the MLP projections (Llama with `mlp_bias`; always on for GPT-2).
    pub mlp_bias: bool,
    pub activation: Activation,
    /// Attention window (Mistral); `None` is full causal attention.
    pub sliding_window: Option<usize>,
    /// GPT-2's `scale_attn_by_inverse_layer_idx`.
    pub scale_attn_by_inverse_layer_idx: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

impl ModelConfig {
    /// Resolves a parsed config.json.
    pub fn from_json(v: &Value) -> Result<Self> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or_else(|| Error::config("model_type", "config.json has no `model_type`"))?;
        match model_type {
            "gpt2" => parse::<Gpt2Wire>(v)?.resolve(),
            "llama" | "mistral" | "qwen2" => parse::<LlamaWire>(v)?.resolve(model_type),
            other => Err(Error::config(
                "model_type",
                format!("unsupported model_type `{other}` (supported: gpt2, llama, mistral, qwen2)"),
            )),
        }
    }

    /// Number of query heads per key/value head.
    pub fn kv_groups(&self) -> usize {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }
}

/// A linear module of a loaded model, with its sizes as config.json implies them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinearModule {
    /// The module's transformers name, as [`crate::models::Model`] names its linear
    /// layers (the names LoRA adapters target): `model.layers.0.self_attn.q_proj`,
    /// `transformer.h.0.attn.c_attn`.
    pub(crate) name: String,
    pub(crate) in_features: usize,
    pub(crate) out_features: usize,
    /// The config.json keys `in_features` and `out_features` come from (for messages).
    pub(crate) in_from: &'static str,
    pub(crate) out_from: &'static str,
    pub(crate) bias: bool,
    /// GPT-2's Conv1D: the weight is stored `[in, out]` (else `[out, in]`).
    pub(crate) conv1d: bool,
}

/// A tensor the family's loader takes: its transformers name, the shape config.json
/// implies and the config.json keys of each dimension (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WeightSpec {
    pub(crate) name: String,
    pub(crate) shape: Vec<usize>,
    pub(crate) dims: Vec<&'static str>,
}

impl LinearModule {
    fn weight(&self) -> WeightSpec {
        let (shape, dims) = if self.conv1d {
            (vec![self.in_features, self.out_features], vec![self.in_from, self.out_from])
        } else {
            (vec![self.out_features, self.in_features], vec![self.out_from, self.in_from])
        };
        WeightSpec { name: format!("{}.weight", self.name), shape, dims }
    }

    fn specs(&self) -> Vec<WeightSpec> {
        let mut out = vec![self.weight()];
        if self.bias {
            out.push(WeightSpec {
                name: format!("{}.bias", self.name),
                shape: vec![self.out_features],
                dims: vec![self.out_from],
            });
        }
        out
    }
}

impl ModelConfig {
    /// The linear modules of layer `i`, in the loader's order.
    fn layer_linears(&self, i: usize) -> Vec<LinearModule> {
        let lin = |name: String, i: (usize, &'static str), o: (usize, &'static str), bias: bool, conv1d: bool| {
            LinearModule { name, in_features: i.0, out_features: o.0, in_from: i.1, out_from: o.1, bias, conv1d }
        };
        match self.family {
            Family::Gpt2 => {
                let p = format!("transformer.h.{i}");
                let (h, ffn) = ((self.hidden_size, "n_embd"), (self.intermediate_size, "n_inner"));
                vec![
                    lin(format!("{p}.attn.c_attn"), h, (3 * h.0, "3 * n_embd"), true, true),
                    lin(format!("{p}.attn.c_proj"), h, h, true, true),
                    lin(format!("{p}.mlp.c_fc"), h, ffn, true, true),
                    lin(format!("{p}.mlp.c_proj"), ffn, h, true, true),
                ]
            }
            // Never built: `ModelConfig::from_json` only makes language-model families.
            Family::StableDiffusion | Family::Tabular => {
                vec![]
            }
            Family::Llama => {
                let p = format!("model.layers.{i}");
                let h = (self.hidden_size, "hidden_size");
                let ffn = (self.intermediate_size, "intermediate_size");
                let q = (self.num_attention_heads * self.head_dim, "num_attention_heads * head_dim");
                let kv = (self.num_key_value_heads * self.head_dim, "num_key_value_heads * head_dim");
                let (qkv_bias, o_bias, mlp_bias) = (self.qkv_bias, self.o_bias, self.mlp_bias);
                vec![
                    lin(format!("{p}.self_attn.q_proj"), h, q, qkv_bias, false),
                    lin(format!("{p}.self_attn.k_proj"), h, kv, qkv_bias, false),
                    lin(format!("{p}.self_attn.v_proj"), h, kv, qkv_bias, false),
                    lin(format!("{p}.self_attn.o_proj"), q, h, o_bias, false),
                    lin(format!("{p}.mlp.gate_proj"), h, ffn, mlp_bias, false),
                    lin(format!("{p}.mlp.up_proj"), h, ffn, mlp_bias, false),
                    lin(format!("{p}.mlp.down_proj"), ffn, h, mlp_bias, false),
                ]
            }
        }
    }

    /// The untied LM head, when the model has one.
    fn lm_head(&self) -> Option<LinearModule> {
        (self.family == Family::Llama && !self.tie_word_embeddings).then(|| LinearModule {
            name: "lm_head".into(),
            in_features: self.hidden_size,
            out_features: self.vocab_size,
            in_from: "hidden_size",
            out_from: "vocab_size",
            bias: false,
            conv1d: false,
        })
    }

    /// Every linear module the loader builds, in its order: the modules a LoRA adapter
    /// can target, with their features.
    pub(crate) fn linear_modules(&self) -> Vec<LinearModule> {
        let mut out: Vec<LinearModule> = (0..self.num_hidden_layers).flat_map(|i| self.layer_linears(i)).collect();
        out.extend(self.lm_head());
        out
    }

    /// Every tensor the family's loader takes, with the shape config.json implies, under
    /// its transformers name (GPT-2's with the `transformer.` prefix, which Hub
    /// checkpoints may leave out). The loaders ignore any other tensor of the files.
    pub(crate) fn weight_specs(&self) -> Vec<WeightSpec> {
        let spec =
            |name: &str, shape: Vec<usize>, dims: Vec<&'static str>| WeightSpec { name: name.into(), shape, dims };
        let h = self.hidden_size;
        let mut out = Vec::new();
        match self.family {
            Family::Gpt2 => {
                let norm = |out: &mut Vec<WeightSpec>, name: &str| {
                    out.push(spec(&format!("{name}.weight"), vec![h], vec!["n_embd"]));
                    out.push(spec(&format!("{name}.bias"), vec![h], vec!["n_embd"]));
                };
                out.push(spec("transformer.wte.weight", vec![self.vocab_size, h], vec!["vocab_size", "n_embd"]));
                out.push(spec(
                    "transformer.wpe.weight",
                    vec![self.max_position_embeddings, h],
                    vec!["n_positions", "n_embd"],
                ));
                for i in 0..self.num_hidden_layers {
                    let lin = self.layer_linears(i);
                    norm(&mut out, &format!("transformer.h.{i}.ln_1"));
                    lin[..2].iter().for_each(|l| out.extend(l.specs()));
                    norm(&mut out, &format!("transformer.h.{i}.ln_2"));
                    lin[2..].iter().for_each(|l| out.extend(l.specs()));
                }
                norm(&mut out, "transformer.ln_f");
            }
            // Never built: `ModelConfig::from_json` only makes language-model families.
            Family::StableDiffusion | Family::Tabular => {}
            Family::Llama => {
                let norm = |name: String| spec(&name, vec![h], vec!["hidden_size"]);
                out.push(spec(
                    "model.embed_tokens.weight",
                    vec![self.vocab_size, h],
                    vec!["vocab_size", "hidden_size"],
                ));
                for i in 0..self.num_hidden_layers {
                    let lin = self.layer_linears(i);
                    out.push(norm(format!("model.layers.{i}.input_layernorm.weight")));
                    lin[..4].iter().for_each(|l| out.extend(l.specs()));
                    out.push(norm(format!("model.layers.{i}.post_attention_layernorm.weight")));
                    lin[4..].iter().for_each(|l| out.extend(l.specs()));
                }
                out.push(norm("model.norm.weight".into()));
                out.extend(self.lm_head().iter().flat_map(LinearModule::specs));
            }
        }
        out
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: &Value) -> Result<T> {
    serde_path_to_error::deserialize(v.clone()).map_err(|e| {
        let path = e.path().to_string();
        Error::config(path, e.into_inner().to_string())
    })
}

/// `eos_token_id` may be a number or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<u32> {
        match self {
            OneOrMany::One(x) => vec![x],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `x` if it is in `1..=max`.
fn size(field: &str, x: usize, max: usize) -> Result<usize> {
    if x == 0 {
        Err(Error::config(field, "must be > 0"))
    } else if x > max {
        Err(Error::config(field, format!("{x} is larger than anneal accepts ({max})")))
    } else {
        Ok(x)
    }
}

/// `x` if it is a finite number > 0.
fn positive_f64(field: &str, x: f64) -> Result<f64> {
    if x.is_finite() && x > 0.0 {
        Ok(x)
    } else {
        Err(Error::config(field, format!("must be a positive number, got {x}")))
    }
}

/// A count or size: any JSON number is read, so that `-64` or `1e30` is reported as
/// such rather than as a type mismatch.
fn count<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<usize, D::Error> {
    let v = Value::deserialize(d)?;
    match v.as_u64().and_then(|x| usize::try_from(x).ok()) {
        Some(x) => Ok(x),
        None => Err(serde::de::Error::custom(format!("must be a positive integer, got {v}"))),
    }
}

/// [`count`] for an optional key (`null` is absent).
fn opt_count<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<usize>, D::Error> {
    let v = Value::deserialize(d)?;
    if v.is_null() {
        return Ok(None);
    }
    count(v).map(Some).map_err(serde::de::Error::custom)
}

#[derive(Debug, Deserialize)]
struct Gpt2Wire {
    #[serde(deserialize_with = "count")]
    vocab_size: usize,
    #[serde(deserialize_with = "count")]
    n_embd: usize,
    #[serde(deserialize_with = "count")]
    n_layer: usize,
    #[serde(deserialize_with = "count")]
    n_head: usize,
    #[serde(deserialize_with = "count")]
    n_positions: usize,
    #[serde(default, deserialize_with = "opt_count")]
    n_inner: Option<usize>,
    #[serde(default = "default_gelu_new")]
    activation_function: String,
    #[serde(default = "default_ln_eps")]
    layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    tie_word_embeddings: bool,
    #[serde(default = "yes")]
    scale_attn_weights: bool,
    #[serde(default)]
    scale_attn_by_inverse_layer_idx: bool,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

fn default_gelu_new() -> String {
    "gelu_new".into()
}
fn default_ln_eps() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl Gpt2Wire {
    fn resolve(self) -> Result<ModelConfig> {
        let n_embd = size("n_embd", self.n_embd, MAX_DIM)?;
        let n_head = size("n_head", self.n_head, MAX_DIM)?;
        if n_embd % n_head != 0 {
            return Err(Error::config("n_head", format!("n_embd {n_embd} is not a multiple of n_head {n_head}")));
        }
        let activation = match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "gelu" => Activation::Gelu,
            "relu" => Activation::Relu,
            "silu" | "swish" => Activation::Silu,
            other => {
                return Err(Error::config("activation_function", format!("unsupported activation `{other}`")));
            }
        };
        if !self.scale_attn_weights {
            return Err(Error::config("scale_attn_weights", "only scale_attn_weights = true is supported"));
        }
        if !self.tie_word_embeddings {
            return Err(Error::config("tie_word_embeddings", "GPT-2 with an untied head is not supported"));
        }
        Ok(ModelConfig {
            family: Family::Gpt2,
            model_type: "gpt2".into(),
            vocab_size: size("vocab_size", self.vocab_size, MAX_VOCAB)?,
            hidden_size: n_embd,
            intermediate_size: size("n_inner", self.n_inner.unwrap_or(4 * n_embd), MAX_DIM)?,
            num_hidden_layers: size("n_layer", self.n_layer, MAX_LAYERS)?,
            num_attention_heads: n_head,
            num_key_value_heads: n_head,
            head_dim: n_embd / n_head,
            max_position_embeddings: size("n_positions", self.n_positions, MAX_CONTEXT)?,
            norm_eps: positive_f64("layer_norm_epsilon", self.layer_norm_epsilon)?,
            rope_theta: 0.0,
            rope_scaling: None,
            tie_word_embeddings: true,
            qkv_bias: true,
            o_bias: true,
            mlp_bias: true,
            activation,
            sliding_window: None,
            scale_attn_by_inverse_layer_idx: self.scale_attn_by_inverse_layer_idx,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
            pad_token_id: self.pad_token_id,
        })
    }
}

#[derive(Debug, Deserialize)]
struct LlamaWire {
    #[serde(deserialize_with = "count")]
    vocab_size: usize,
    #[serde(deserialize_with = "count")]
    hidden_size: usize,
    #[serde(deserialize_with = "count")]
    intermediate_size: usize,
    #[serde(deserialize_with = "count")]
    num_hidden_layers: usize,
    #[serde(deserialize_with = "count")]
    num_attention_heads: usize,
    #[serde(default, deserialize_with = "opt_count")]
    num_key_value_heads: Option<usize>,
    #[serde(default, deserialize_with = "opt_count")]
    head_dim: Option<usize>,
    #[serde(default = "default_max_pos", deserialize_with = "count")]
    max_position_embeddings: usize,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    rope_theta: Option<f64>,
    /// transformers >= 5 spelling: `{"rope_theta": .., "rope_type": "default"}`.
    #[serde(default)]
    rope_parameters: Option<Value>,
    /// Older spelling of non-default RoPE types.
    #[serde(default)]
    rope_scaling: Option<Value>,
    #[serde(default)]
    tie_word_embeddings: Option<bool>,
    #[serde(default)]
    attention_bias: Option<bool>,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "default_silu")]
    hidden_act: String,
    #[serde(default, deserialize_with = "opt_count")]
    sliding_window: Option<usize>,
    #[serde(default)]
    use_sliding_window: Option<bool>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<OneOrMany>,
    #[serde(default)]
    pad_token_id: Option<u32>,
}

/// Reads `rope_type` and its parameters from `rope_parameters` or `rope_scaling`.
fn parse_rope_scaling(field: &str, v: &Value) -> Result<Option<RopeScaling>> {
    let t = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        let x = v
            .get(k)
            .and_then(Value::as_f64)
            .ok_or_else(|| Error::config(format!("{field}.{k}"), format!("required by rope_type `{t}`")))?;
        if x.is_finite() && x > 0.0 {
            Ok(x)
        } else {
            Err(Error::config(format!("{field}.{k}"), format!("must be a positive number, got {x}")))
        }
    };
    Ok(match t {
        "default" => None,
        "linear" => Some(RopeScaling::Linear { factor: num("factor")? }),
        "llama3" => {
            let (low, high) = (num("low_freq_factor")?, num("high_freq_factor")?);
            if high <= low {
                return Err(Error::config(
                    format!("{field}.high_freq_factor"),
                    format!("must be greater than low_freq_factor ({low})"),
                ));
            }
            Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: low,
                high_freq_factor: high,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            })
        }
        other => {
            return Err(Error::config(
                format!("{field}.rope_type"),
                format!("unsupported rope_type `{other}` (supported: default, linear, llama3)"),
            ))
        }
    })
}

fn default_max_pos() -> usize {
    2048
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_silu() -> String {
    "silu".into()
}

impl LlamaWire {
    fn resolve(self, model_type: &str) -> Result<ModelConfig> {
        let hidden = size("hidden_size", self.hidden_size, MAX_DIM)?;
        let heads = size("num_attention_heads", self.num_attention_heads, MAX_DIM)?;
        let kv = size("num_key_value_heads", self.num_key_value_heads.unwrap_or(heads), MAX_DIM)?;
        if heads % kv != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => size("head_dim", d, MAX_DIM)?,
            None if hidden % heads == 0 => hidden / heads,
            None => {
                return Err(Error::config(
                    "head_dim",
                    format!("hidden_size {hidden} is not a multiple of num_attention_heads {heads}; set head_dim"),
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(Error::config("head_dim", format!("RoPE needs an even head_dim, got {head_dim}")));
        }
        // The attention width (q_proj's output); with an explicit head_dim it may differ
        // from hidden_size.
        if heads.checked_mul(head_dim).is_none_or(|w| w > MAX_DIM) {
            return Err(Error::config(
                "head_dim",
                format!("num_attention_heads {heads} x head_dim {head_dim} is larger than anneal accepts ({MAX_DIM})"),
            ));
        }
        // RoPE: the new `rope_parameters` (theta and type in one object) wins over the old
        // top-level `rope_theta` + `rope_scaling`.
        let (rope_theta, rope_scaling) = match &self.rope_parameters {
            Some(p) => {
                let theta = match p.get("rope_theta") {
                    None | Some(Value::Null) => self.rope_theta,
                    Some(v) => Some(v.as_f64().ok_or_else(|| {
                        Error::config("rope_parameters.rope_theta", format!("must be a positive number, got {v}"))
                    })?),
                };
                if let Some(t) = theta {
                    positive_f64("rope_parameters.rope_theta", t)?;
                }
                (theta, parse_rope_scaling("rope_parameters", p)?)
            }
            None => match &self.rope_scaling {
                Some(s) if !s.is_null() => (self.rope_theta, parse_rope_scaling("rope_scaling", s)?),
                _ => (self.rope_theta, None),
            },
        };
        let rope_theta = positive_f64("rope_theta", rope_theta.unwrap_or(10000.0))?;
        let norm_eps = positive_f64("rms_norm_eps", self.rms_norm_eps)?;
        match self.hidden_act.as_str() {
            "silu" | "swish" => {}
            other => {
                return Err(Error::config("hidden_act", format!("unsupported hidden_act `{other}` (supported: silu)")))
            }
        }
        let is_qwen2 = model_type == "qwen2";
        let sliding_window = match model_type {
            "mistral" => self.sliding_window.map(|w| size("sliding_window", w, MAX_CONTEXT)).transpose()?,
            "qwen2" if self.use_sliding_window == Some(true) => {
                return Err(Error::config("use_sliding_window", "Qwen2 sliding-window attention is not supported"));
            }
            _ => None,
        };
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            family: Family::Llama,
            model_type: model_type.to_string(),
            vocab_size: size("vocab_size", self.vocab_size, MAX_VOCAB)?,
            hidden_size: hidden,
            intermediate_size: size("intermediate_size", self.intermediate_size, MAX_DIM)?,
            num_hidden_layers: size("num_hidden_layers", self.num_hidden_layers, MAX_LAYERS)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            max_position_embeddings: size("max_position_embeddings", self.max_position_embeddings, MAX_CONTEXT)?,
            norm_eps,
            rope_theta,
            rope_scaling,
            // transformers' default when the key is absent.
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            qkv_bias: is_qwen2 || attention_bias,
            o_bias: !is_qwen2 && attention_bias,
            mlp_bias: self.mlp_bias,
            activation: Activation::Silu,
            sliding_window,
            scale_attn_by_inverse_layer_idx: false,
            bos_token_id: self.bos_token_id,
            eos_token_ids: self.eos_token_id.map(OneOrMany::into_vec).unwrap_or_default(),
            pad_token_id: self.pad_token_id,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn llama() -> Value {
        json!({"model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
               "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1})
    }

    #[test]
    fn rope_theta_both_spellings() {
        let mut v = llama();
        v["rope_theta"] = json!(500000.0);
        assert_eq!(ModelConfig::from_json(&v).unwrap().rope_theta, 500000.0);
        let mut v = llama();
        v["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "default"});
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 1e6);
        assert_eq!(c.head_dim, 4);
        assert_eq!(c.kv_groups(), 2);
        let mut v = llama();
        v["rope_parameters"] = json!({"rope_theta": 1e6, "rope_type": "yarn"});
        let e = ModelConfig::from_json(&v).unwrap_err();
        assert_eq!(e.code(), "invalid_config");
        assert!(e.to_string().contains("rope_type"), "{e}");
    }

    #[test]
    fn rope_scaling_types() {
        let mut v = llama();
        v["rope_scaling"] = json!({"type": "linear", "factor": 2.0});
        assert_eq!(ModelConfig::from_json(&v).unwrap().rope_scaling, Some(RopeScaling::Linear { factor: 2.0 }));
        let mut v = llama();
        v["rope_parameters"] = json!({"rope_type": "llama3", "rope_theta": 5e5, "factor": 32.0,
            "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192});
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!(c.rope_theta, 5e5);
        assert!(matches!(c.rope_scaling, Some(RopeScaling::Llama3 { factor, .. }) if factor == 32.0));
        v["rope_parameters"]["high_freq_factor"] = json!(0.5);
        let e = ModelConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("rope_parameters.high_freq_factor"), "{e}");
        let mut v = llama();
        v["rope_scaling"] = json!({"rope_type": "llama3", "factor": 8.0});
        let e = ModelConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("rope_scaling.low_freq_factor"), "{e}");
        let mut v = llama();
        v["rope_scaling"] = Value::Null;
        assert_eq!(ModelConfig::from_json(&v).unwrap().rope_scaling, None);
    }

    #[test]
    fn unsupported_and_inconsistent_configs_are_typed() {
        let e = ModelConfig::from_json(&json!({"model_type": "bert"})).unwrap_err();
        assert!(e.to_string().contains("bert"), "{e}");
        let mut v = llama();
        v["num_key_value_heads"] = json!(3);
        assert!(ModelConfig::from_json(&v).unwrap_err().to_string().contains("num_key_value_heads"));
        let mut v = llama();
        v["hidden_size"] = json!("big");
        let e = ModelConfig::from_json(&v).unwrap_err();
        assert!(e.to_string().contains("hidden_size"), "{e}");
        let mut v = llama();
        v["hidden_act"] = json!("gelu");
        assert!(ModelConfig::from_json(&v).unwrap_err().to_string().contains("hidden_act"));
    }

    /// The error `from_json` gives for `v`: invalid_config naming `field`.
    fn refused(v: &Value, field: &str) -> String {
        match ModelConfig::from_json(v) {
            Err(Error::InvalidConfig { field: f, reason }) => {
                assert_eq!(f, field, "{reason}");
                reason
            }
            other => panic!("{field}: expected invalid_config, got {other:?}"),
        }
    }

    fn gpt2() -> Value {
        json!({"model_type": "gpt2", "vocab_size": 10, "n_embd": 8, "n_layer": 1, "n_head": 2, "n_positions": 16})
    }

    #[test]
    fn sizes_must_be_positive_integers_within_bounds() {
        let with = |base: Value, k: &str, x: Value| {
            let mut v = base;
            v[k] = x;
            v
        };
        let r = refused(&with(llama(), "hidden_size", json!(-64)), "hidden_size");
        assert!(r.contains("positive integer") && r.contains("-64"), "{r}");
        assert!(refused(&with(llama(), "vocab_size", json!(1.5)), "vocab_size").contains("1.5"));
        assert!(refused(&with(llama(), "num_hidden_layers", json!(0)), "num_hidden_layers").contains("> 0"));
        let r = refused(&with(llama(), "max_position_embeddings", json!(1u64 << 40)), "max_position_embeddings");
        assert!(r.contains(&(1u64 << 40).to_string()) && r.contains(&MAX_CONTEXT.to_string()), "{r}");
        refused(&with(llama(), "intermediate_size", json!(1u64 << 40)), "intermediate_size");
        refused(&with(llama(), "hidden_size", json!(MAX_DIM + 2)), "hidden_size");
        refused(&with(llama(), "vocab_size", json!(MAX_VOCAB + 1)), "vocab_size");
        refused(&with(llama(), "num_hidden_layers", json!(MAX_LAYERS + 1)), "num_hidden_layers");
        refused(&with(llama(), "num_key_value_heads", json!(-1)), "num_key_value_heads");
        refused(&with(llama(), "head_dim", json!(0)), "head_dim");
        // heads x head_dim is a width too.
        let r = refused(&with(with(llama(), "head_dim", json!(1 << 16)), "num_attention_heads", json!(32)), "head_dim");
        assert!(r.contains("num_attention_heads 32"), "{r}");
        // hidden_size not a multiple of the heads (without head_dim).
        refused(&with(llama(), "num_attention_heads", json!(3)), "head_dim");
        // At the bounds: accepted.
        let v = with(with(llama(), "max_position_embeddings", json!(MAX_CONTEXT)), "vocab_size", json!(MAX_VOCAB));
        let c = ModelConfig::from_json(&v).unwrap();
        assert_eq!((c.max_position_embeddings, c.vocab_size), (MAX_CONTEXT, MAX_VOCAB));
        // null is absent for optional sizes.
        assert_eq!(ModelConfig::from_json(&with(llama(), "head_dim", Value::Null)).unwrap().head_dim, 4);

        let mut m = with(llama(), "model_type", json!("mistral"));
        m["sliding_window"] = json!(0);
        refused(&m, "sliding_window");
        m["sliding_window"] = json!(4);
        assert_eq!(ModelConfig::from_json(&m).unwrap().sliding_window, Some(4));

        refused(&with(gpt2(), "n_embd", json!(-8)), "n_embd");
        refused(&with(gpt2(), "n_layer", json!(0)), "n_layer");
        refused(&with(gpt2(), "n_positions", json!(1u64 << 40)), "n_positions");
        refused(&with(gpt2(), "n_inner", json!(0)), "n_inner");
        refused(&with(gpt2(), "n_inner", json!(1u64 << 40)), "n_inner");
        assert!(refused(&with(gpt2(), "n_head", json!(3)), "n_head").contains("multiple"));
        let c = ModelConfig::from_json(&with(gpt2(), "n_inner", Value::Null)).unwrap();
        assert_eq!(c.intermediate_size, 32);
    }

    #[test]
    fn eps_and_rope_theta_must_be_positive() {
        let mut v = llama();
        v["rms_norm_eps"] = json!(0.0);
        refused(&v, "rms_norm_eps");
        v["rms_norm_eps"] = json!(-1e-6);
        refused(&v, "rms_norm_eps");
        let mut v = llama();
        v["rope_theta"] = json!(-1.0);
        refused(&v, "rope_theta");
        let mut v = llama();
        v["rope_parameters"] = json!({"rope_theta": "big", "rope_type": "default"});
        refused(&v, "rope_parameters.rope_theta");
        v["rope_parameters"] = json!({"rope_theta": 0, "rope_type": "default"});
        refused(&v, "rope_parameters.rope_theta");
        let mut v = gpt2();
        v["layer_norm_epsilon"] = json!(-1.0);
        refused(&v, "layer_norm_epsilon");
    }

    /// The tensor and linear-module tables are what the loaders take: same names, same
    /// shapes, for every family and variant in the fixtures.
    #[test]
    fn weight_tables_match_the_loaders() {
        let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures"));
        for dir in [
            "tiny-llama",
            "tiny-gpt2",
            "tiny-qwen2",
            "variants/llama-linear-rope-tied",
            "variants/llama-mqa-bias-llama3rope",
            "variants/mistral-window",
        ] {
            let mut m = crate::models::Model::load(root.join(dir), &Default::default()).unwrap();
            let cfg = m.config().clone();
            let mut loaded: Vec<(String, Vec<usize>)> =
                m.named_weights().unwrap().into_iter().map(|(n, t)| (n, t.dims().to_vec())).collect();
            let mut table: Vec<(String, Vec<usize>)> =
                cfg.weight_specs().into_iter().map(|w| (w.name, w.shape)).collect();
            assert!(cfg.weight_specs().iter().all(|w| w.dims.len() == w.shape.len()), "{dir}");
            loaded.sort();
            table.sort();
            assert_eq!(loaded, table, "{dir}");
            let linears: Vec<(String, usize, usize, bool, bool)> = m
                .linears_mut()
                .into_iter()
                .map(|(n, l)| {
                    let (i, o) = l.features().unwrap();
                    (n, i, o, l.bias.is_some(), l.conv1d)
                })
                .collect();
            let table: Vec<(String, usize, usize, bool, bool)> = cfg
                .linear_modules()
                .into_iter()
                .map(|l| (l.name, l.in_features, l.out_features, l.bias, l.conv1d))
                .collect();
            assert_eq!(linears, table, "{dir}");
        }
    }

    #[test]
    fn qwen2_bias_and_eos_list() {
        let mut v = llama();
        v["model_type"] = json!("qwen2");
        v["eos_token_id"] = json!([1, 2]);
        let c = ModelConfig::from_json(&v).unwrap();
        assert!(c.qkv_bias && !c.o_bias);
        assert_eq!(c.eos_token_ids, vec![1, 2]);
    }
}

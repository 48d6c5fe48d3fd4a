//! Hugging Face `config.json` "wire" structs, converted into one resolved runtime
//! [`ModelConfig`].
//!
//! The wire structs accept unknown keys (every transformers release adds some), but any
//! value that changes the computation and that anneal does not implement is rejected with
//! [`Error::InvalidConfig`] naming the field, rather than silently ignored.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::types::Family;

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

fn positive(field: &str, x: usize) -> Result<usize> {
    if x == 0 {
        Err(Error::config(field, "must be > 0"))
    } else {
        Ok(x)
    }
}

#[derive(Debug, Deserialize)]
struct Gpt2Wire {
    vocab_size: usize,
    n_embd: usize,
    n_layer: usize,
    n_head: usize,
    n_positions: usize,
    #[serde(default)]
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
        let n_embd = positive("n_embd", self.n_embd)?;
        let n_head = positive("n_head", self.n_head)?;
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
            vocab_size: positive("vocab_size", self.vocab_size)?,
            hidden_size: n_embd,
            intermediate_size: self.n_inner.unwrap_or(4 * n_embd),
            num_hidden_layers: positive("n_layer", self.n_layer)?,
            num_attention_heads: n_head,
            num_key_value_heads: n_head,
            head_dim: n_embd / n_head,
            max_position_embeddings: positive("n_positions", self.n_positions)?,
            norm_eps: self.layer_norm_epsilon,
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
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "default_max_pos")]
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
    #[serde(default)]
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
        let hidden = positive("hidden_size", self.hidden_size)?;
        let heads = positive("num_attention_heads", self.num_attention_heads)?;
        let kv = positive("num_key_value_heads", self.num_key_value_heads.unwrap_or(heads))?;
        if heads % kv != 0 {
            return Err(Error::config(
                "num_key_value_heads",
                format!("num_attention_heads {heads} is not a multiple of num_key_value_heads {kv}"),
            ));
        }
        let head_dim = match self.head_dim {
            Some(d) => positive("head_dim", d)?,
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
        // RoPE: the new `rope_parameters` (theta and type in one object) wins over the old
        // top-level `rope_theta` + `rope_scaling`.
        let (rope_theta, rope_scaling) = match &self.rope_parameters {
            Some(p) => (
                p.get("rope_theta").and_then(Value::as_f64).or(self.rope_theta),
                parse_rope_scaling("rope_parameters", p)?,
            ),
            None => match &self.rope_scaling {
                Some(s) if !s.is_null() => (self.rope_theta, parse_rope_scaling("rope_scaling", s)?),
                _ => (self.rope_theta, None),
            },
        };
        let rope_theta = rope_theta.unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(Error::config("rope_theta", format!("must be a positive number, got {rope_theta}")));
        }
        match self.hidden_act.as_str() {
            "silu" | "swish" => {}
            other => {
                return Err(Error::config("hidden_act", format!("unsupported hidden_act `{other}` (supported: silu)")))
            }
        }
        let is_qwen2 = model_type == "qwen2";
        let sliding_window = match model_type {
            "mistral" => self.sliding_window,
            "qwen2" if self.use_sliding_window == Some(true) => {
                return Err(Error::config("use_sliding_window", "Qwen2 sliding-window attention is not supported"));
            }
            _ => None,
        };
        let attention_bias = self.attention_bias.unwrap_or(false);
        Ok(ModelConfig {
            family: Family::Llama,
            model_type: model_type.to_string(),
            vocab_size: positive("vocab_size", self.vocab_size)?,
            hidden_size: hidden,
            intermediate_size: positive("intermediate_size", self.intermediate_size)?,
            num_hidden_layers: positive("num_hidden_layers", self.num_hidden_layers)?,
            num_attention_heads: heads,
            num_key_value_heads: kv,
            head_dim,
            max_position_embeddings: positive("max_position_embeddings", self.max_position_embeddings)?,
            norm_eps: self.rms_norm_eps,
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

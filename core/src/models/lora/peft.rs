//! PEFT's on-disk layout (followed: PEFT 0.21.2): `adapter_config.json` with PEFT's
//! field names, and `adapter_model.safetensors` with keys
//! `base_model.model.<module>.lora_A.weight` (`[r, in]`) and `.lora_B.weight` (`[out, r]`).

use std::path::Path;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::LoraConfig;
use crate::error::{Error, IoResultExt, Location, Result};

/// The config file name.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The weights file name.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// The PEFT release whose layout the files follow.
pub const PEFT_VERSION: &str = "0.21.2";

/// Key of an adapter matrix in `adapter_model.safetensors` (`which`: `A` or `B`).
pub(crate) fn key(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// adapter_config.json as PEFT writes it (the fields anneal reads; others are ignored).
#[derive(Debug, Deserialize)]
struct PeftWire {
    #[serde(default)]
    peft_type: Option<String>,
    #[serde(default)]
    task_type: Option<String>,
    #[serde(default)]
    base_model_name_or_path: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    #[serde(default)]
    target_modules: Option<Value>,
    #[serde(default)]
    bias: Option<String>,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    lora_bias: bool,
    #[serde(default)]
    modules_to_save: Option<Value>,
    #[serde(default)]
    rank_pattern: Option<Map<String, Value>>,
    #[serde(default)]
    alpha_pattern: Option<Map<String, Value>>,
    #[serde(default)]
    layers_to_transform: Option<Value>,
    #[serde(default)]
    target_parameters: Option<Value>,
    #[serde(default)]
    trainable_token_indices: Option<Value>,
    #[serde(default)]
    exclude_modules: Option<Value>,
}

/// How the adapter names its targets.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Targets {
    /// Names matched by suffix (or `all-linear`).
    Names(Vec<String>),
    /// A regular expression that must match the whole module name.
    Regex(String),
}

/// A parsed adapter_config.json.
#[derive(Debug, Clone)]
pub(crate) struct PeftConfig {
    pub(crate) config: LoraConfig,
    pub(crate) targets: Targets,
    pub(crate) base_model_name_or_path: Option<String>,
}

/// Reads and checks an adapter_config.json; features anneal does not implement are
/// InvalidData naming the field.
pub(crate) fn read_config(path: &Path) -> Result<PeftConfig> {
    let text = std::fs::read_to_string(path).with_path(path)?;
    let v: Value = serde_json::from_str(&text).map_err(|e| Error::data(Location::file(path), e.to_string()))?;
    let w: PeftWire = serde_path_to_error::deserialize(v)
        .map_err(|e| Error::data(Location::file(path).field(e.path().to_string()), e.into_inner().to_string()))?;
    let bad = |field: &str, reason: String| Error::data(Location::file(path).field(field), reason);
    if let Some(t) = &w.peft_type {
        if t != "LORA" {
            return Err(bad("peft_type", format!("unsupported adapter type `{t}` (only LORA)")));
        }
    }
    if let Some(t) = &w.task_type {
        if t != "CAUSAL_LM" {
            return Err(bad("task_type", format!("unsupported task_type `{t}` (only CAUSAL_LM)")));
        }
    }
    if let Some(b) = &w.bias {
        if b != "none" {
            return Err(bad("bias", format!("bias `{b}` is not supported (only none)")));
        }
    }
    if w.use_dora {
        return Err(bad("use_dora", "DoRA adapters are not supported".into()));
    }
    if w.lora_bias {
        return Err(bad("lora_bias", "LoRA bias terms are not supported".into()));
    }
    let non_null = |v: &Option<Value>| v.as_ref().is_some_and(|v| !v.is_null());
    for (field, v) in [
        ("modules_to_save", &w.modules_to_save),
        ("layers_to_transform", &w.layers_to_transform),
        ("target_parameters", &w.target_parameters),
        ("trainable_token_indices", &w.trainable_token_indices),
        ("exclude_modules", &w.exclude_modules),
    ] {
        if non_null(v) {
            return Err(bad(field, "is set, which anneal does not support".into()));
        }
    }
    for (field, v) in [("rank_pattern", &w.rank_pattern), ("alpha_pattern", &w.alpha_pattern)] {
        if v.as_ref().is_some_and(|m| !m.is_empty()) {
            return Err(bad(field, "per-module ranks or alphas are not supported".into()));
        }
    }
    let targets = match &w.target_modules {
        Some(Value::Array(a)) => {
            let mut names = Vec::new();
            for x in a {
                names.push(
                    x.as_str()
                        .ok_or_else(|| bad("target_modules", format!("expected module names, found {x}")))?
                        .to_string(),
                );
            }
            if names.is_empty() {
                return Err(bad("target_modules", "is empty".into()));
            }
            Targets::Names(names)
        }
        Some(Value::String(s)) if s == "all-linear" => Targets::Names(vec![s.clone()]),
        Some(Value::String(s)) => Targets::Regex(s.clone()),
        _ => return Err(bad("target_modules", "missing: a list of module names or a regex".into())),
    };
    let config = LoraConfig {
        r: w.r,
        alpha: w.lora_alpha,
        dropout: w.lora_dropout,
        target_modules: match &targets {
            Targets::Names(n) => n.clone(),
            Targets::Regex(_) => Vec::new(),
        },
        // PEFT forces the right value per layer type (with a warning); so do we.
        fan_in_fan_out: None,
        use_rslora: w.use_rslora,
    };
    config.validate().map_err(|e| match e {
        Error::InvalidConfig { field, reason } => bad(&field, reason),
        other => other,
    })?;
    Ok(PeftConfig { config, targets, base_model_name_or_path: w.base_model_name_or_path })
}

/// A number as PEFT writes it: integers without a fraction.
fn num(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}

/// adapter_config.json for `cfg`, with every field PEFT 0.21.2 writes.
/// `target_modules` are the resolved suffix names; `fan_in_fan_out` the resolved value.
pub(crate) fn config_json(
    cfg: &LoraConfig,
    target_modules: &[String],
    fan_in_fan_out: bool,
    base_model_name_or_path: Option<&str>,
) -> Value {
    json!({
        "alora_invocation_tokens": null,
        "alpha_pattern": {},
        "arrow_config": null,
        "auto_mapping": null,
        "base_model_name_or_path": base_model_name_or_path,
        "bias": "none",
        "corda_config": null,
        "ensure_weight_tying": false,
        "eva_config": null,
        "exclude_modules": null,
        "fan_in_fan_out": fan_in_fan_out,
        "inference_mode": true,
        "init_lora_weights": true,
        "kasa_config": null,
        "layer_replication": null,
        "layers_pattern": null,
        "layers_to_transform": null,
        "loftq_config": {},
        "lora_alpha": num(cfg.alpha),
        "lora_bias": false,
        "lora_dropout": cfg.dropout,
        "lora_ga_config": null,
        "megatron_config": null,
        "megatron_core": "megatron.core",
        "modules_to_save": null,
        "monteclora_config": null,
        "peft_type": "LORA",
        "peft_version": PEFT_VERSION,
        "qalora_group_size": 16,
        "r": cfg.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": target_modules,
        "target_parameters": null,
        "task_type": "CAUSAL_LM",
        "trainable_token_indices": null,
        "use_bdlora": null,
        "use_dora": false,
        "use_qalora": false,
        "use_rslora": cfg.use_rslora,
        "velora_config": null,
    })
}

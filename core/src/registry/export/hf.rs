//! Hugging Face directories: a model (an adapter merged into its base) as transformers
//! loads it, and an adapter as PEFT loads it.

use std::collections::HashMap;
use std::fs;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde_json::{json, Value};

use super::{card, copy_checked, Chain};
use crate::error::{Error, IoResultExt, Result};
use crate::events::CancelToken;
use crate::gguf::GgufFile;
use crate::models::{self, memory, LoadOptions, Model, ModelConfig};
use crate::registry::ModelRegistry;
use crate::types::{ExportFormat, ExportOptions, Family, ModelKind, ModelRecord};
use crate::util;

/// Default largest shard: transformers' own `max_shard_size` default is 5 GB; 2 GiB keeps
/// every shard under the 32-bit size limits some readers still have.
const DEFAULT_SHARD_BYTES: u64 = 2 << 30;

/// Files of a text model directory that are weights or describe weights: written anew.
fn is_weights(name: &str) -> bool {
    name.ends_with(".safetensors")
        || name.ends_with(".bin")
        || name.ends_with(".index.json")
        || name.ends_with(".gguf")
        || name == "README.md"
}

/// `hf`: base and full models as they are stored (every file, checked against its
/// recorded sha256), an adapter merged into its base's weights (in the base's dtype),
/// a model registered from a GGUF file as safetensors dequantized from it (beside the
/// config.json and tokenizer files derived at registration), plus
/// `generation_config.json` when missing and a model card.
pub(super) fn write_merged(
    registry: &ModelRegistry,
    chain: &Chain,
    dir: &Path,
    opts: &ExportOptions,
    cancel: &CancelToken,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let m = &chain.model;
    match (m.family, &chain.base) {
        (Family::Tabular, _) => {
            return Err(Error::config(
                "format",
                format!("{} is a tabular classifier: export it as `bundle`", m.reference()),
            ))
        }
        (Family::StableDiffusion, Some(_)) => {
            return Err(Error::config(
                "format",
                format!(
                    "{} is a Stable Diffusion LoRA: export it as `peft` (its diffusers LoRA file, which \
                     `load_lora_weights` takes); merging it into a pipeline directory is not supported",
                    m.reference()
                ),
            ))
        }
        (_, None) if models::gguf::is_gguf_model(&m.path) => {
            gguf_weights(registry, m, dir, opts, step)?;
            for f in &m.files {
                if !is_weights(&f.name) {
                    copy_checked(m, &f.name, &dir.join(&f.name), cancel)?;
                    step()?;
                }
            }
        }
        (_, None) => {
            for f in &m.files {
                if f.name != "README.md" {
                    copy_checked(m, &f.name, &dir.join(&f.name), cancel)?;
                }
                step()?;
            }
        }
        (Family::Gpt2 | Family::Llama, Some(base)) => {
            merged_weights(registry, m, base, dir, opts, step)?;
            for f in &base.files {
                if !is_weights(&f.name) {
                    copy_checked(base, &f.name, &dir.join(&f.name), cancel)?;
                    step()?;
                }
            }
        }
    }
    if matches!(m.family, Family::Gpt2 | Family::Llama) && !dir.join("generation_config.json").exists() {
        let cfg = chain.base.as_ref().map_or(&m.config, |b| &b.config);
        write_json(&dir.join("generation_config.json"), &generation_config(cfg))?;
    }
    let text = card::render(chain, ExportFormat::Hf, &card::base_name(chain, opts));
    util::write_atomic(&dir.join("README.md"), text.as_bytes())
}

/// The base's weights with the adapter folded in, in shards of at most
/// `max_shard_bytes`, with `model.safetensors.index.json` when there are several.
fn merged_weights(
    registry: &ModelRegistry,
    adapter: &ModelRecord,
    base: &ModelRecord,
    dir: &Path,
    opts: &ExportOptions,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let f32_bytes = memory::param_count(&ModelConfig::from_json(&base.config)?).saturating_mul(4);
    memory::Estimate::new().add("weights", "merged model (f32)", f32_bytes).check(registry.store().memory_limit)?;
    let mut model = Model::load(base, &LoadOptions { trainable: false, dtype: DType::F32, device: Device::Cpu })?;
    model.load_adapter(&adapter.path)?;
    model.merge_lora()?;
    step()?;
    let out_dtype = float_dtype(&base.dtype);
    let mut weights: HashMap<String, Tensor> = model.named_weights()?.into_iter().collect();
    drop(model);
    let sizes = weights.iter().map(|(n, t)| (n.clone(), (t.elem_count() * out_dtype.size_in_bytes()) as u64)).collect();
    let limit = opts.max_shard_bytes.unwrap_or(DEFAULT_SHARD_BYTES);
    write_shards(dir, sizes, limit, step, |name| {
        let t = weights.remove(name).ok_or_else(|| Error::Internal(format!("merged model has no `{name}`")))?;
        Ok(t.to_dtype(out_dtype)?)
    })
}

/// The safetensors dtype of a record's `dtype`: its own float type, f32 for anything
/// else (a block-quantized GGUF file's dequantized values are exact in f32).
fn float_dtype(dtype: &str) -> DType {
    match dtype {
        "f16" | "float16" => DType::F16,
        "bf16" | "bfloat16" => DType::BF16,
        _ => DType::F32,
    }
}

/// The weights of model `m`, registered from a GGUF file, as safetensors: every tensor
/// the family's loader takes, dequantized one at a time into transformers' names and
/// layout, in the file's float type (f32 for a block-quantized file).
fn gguf_weights(
    registry: &ModelRegistry,
    m: &ModelRecord,
    dir: &Path,
    opts: &ExportOptions,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let cfg = ModelConfig::from_json(&m.config)?;
    let file = GgufFile::open(m.path.join(models::gguf::GGUF_FILE))?;
    let out_dtype = float_dtype(&m.dtype);
    let mapped: HashMap<String, models::gguf::Mapped> =
        models::gguf::tensor_map(&cfg)?.into_iter().map(|t| (t.hf.clone(), t)).collect();
    let sizes: Vec<(String, u64)> = mapped
        .values()
        .map(|t| (t.hf.clone(), (t.shape.iter().product::<usize>() * out_dtype.size_in_bytes()) as u64))
        .collect();
    let limit = opts.max_shard_bytes.unwrap_or(DEFAULT_SHARD_BYTES);
    // One shard is in memory at a time (plus the f32 values of one tensor).
    let total: u64 = sizes.iter().map(|(_, b)| b).sum();
    let biggest = sizes.iter().map(|(_, b)| *b).max().unwrap_or(0);
    let shard = total.min(limit).max(biggest);
    memory::Estimate::new()
        .add("weights", "one safetensors shard", u128::from(shard))
        .check(registry.store().memory_limit)?;
    write_shards(dir, sizes, limit, step, |name| {
        let t = mapped.get(name).ok_or_else(|| Error::Internal(format!("no GGUF tensor for `{name}`")))?;
        let x = models::gguf::hf_values(&file, t)?;
        Ok(Tensor::from_vec(x, t.shape.as_slice(), &Device::Cpu)?.to_dtype(out_dtype)?)
    })
}

/// Writes tensors (name, size in bytes) in name order into `model.safetensors`, or
/// into shards of at most `limit` bytes with `model.safetensors.index.json`; `tensor`
/// makes each tensor when its shard is written.
fn write_shards(
    dir: &Path,
    mut sizes: Vec<(String, u64)>,
    limit: u64,
    step: &mut dyn FnMut() -> Result<()>,
    mut tensor: impl FnMut(&str) -> Result<Tensor>,
) -> Result<()> {
    sizes.sort();
    let mut shards: Vec<Vec<String>> = vec![Vec::new()];
    let (mut size, mut total) = (0u64, 0u64);
    for (name, bytes) in sizes {
        if size > 0 && size + bytes > limit {
            shards.push(Vec::new());
            size = 0;
        }
        size += bytes;
        total += bytes;
        if let Some(s) = shards.last_mut() {
            s.push(name);
        }
    }
    let n = shards.len();
    let meta = || Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    let mut map = serde_json::Map::new();
    for (i, names) in shards.into_iter().enumerate() {
        let file =
            if n == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{n:05}.safetensors", i + 1) };
        let mut tensors = HashMap::new();
        for name in names {
            tensors.insert(name.clone(), tensor(&name)?);
            map.insert(name, Value::String(file.clone()));
        }
        models::write_safetensors_with_metadata(&tensors, meta(), &dir.join(&file))?;
        step()?;
    }
    if n == 1 {
        return Ok(());
    }
    let index = json!({"metadata": {"total_size": total}, "weight_map": map});
    write_json(&dir.join("model.safetensors.index.json"), &index)
}

/// What transformers' `GenerationConfig.from_model_config` takes from config.json.
fn generation_config(config: &Value) -> Value {
    let mut g = serde_json::Map::new();
    for key in ["bos_token_id", "eos_token_id", "pad_token_id"] {
        if let Some(v) = config.get(key).filter(|v| !v.is_null()) {
            g.insert(key.to_string(), v.clone());
        }
    }
    g.insert("_from_model_config".into(), Value::Bool(true));
    Value::Object(g)
}

/// `peft`: an adapter's files, with `base_model_name_or_path` set to where the base can
/// be found outside the home ([`ExportOptions::base_model`], or the directory the base
/// was registered from, or its name), and a model card.
pub(super) fn write_adapter(
    chain: &Chain,
    dir: &Path,
    opts: &ExportOptions,
    cancel: &CancelToken,
    step: &mut dyn FnMut() -> Result<()>,
) -> Result<()> {
    let m = &chain.model;
    if m.kind != ModelKind::Lora {
        return Err(Error::config(
            "format",
            format!("`peft` exports adapters; {} is a {} model (export it as `hf`)", m.reference(), m.kind.as_str()),
        ));
    }
    let base_name = card::base_name(chain, opts);
    for f in &m.files {
        if f.name == "README.md" {
            continue;
        }
        copy_checked(m, &f.name, &dir.join(&f.name), cancel)?;
        if f.name == "adapter_config.json" {
            let p = dir.join(&f.name);
            let text = fs::read_to_string(&p).with_path(&p)?;
            let mut cfg: Value = serde_json::from_str(&text)
                .map_err(|e| Error::data(crate::error::Location::file(m.path.join(&f.name)), e.to_string()))?;
            if let Some(o) = cfg.as_object_mut() {
                o.insert("base_model_name_or_path".into(), Value::String(base_name.clone()));
            }
            write_json(&p, &cfg)?;
        }
        step()?;
    }
    let text = card::render(chain, ExportFormat::Peft, &base_name);
    util::write_atomic(&dir.join("README.md"), text.as_bytes())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Internal(e.to_string()))?;
    util::write_atomic(path, text.as_bytes())
}

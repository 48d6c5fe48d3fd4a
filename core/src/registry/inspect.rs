//! Reads an HF-layout model directory or a PEFT adapter directory without loading
//! tensors: config, weight files (single or sharded), safetensors headers.

use std::collections::BTreeMap;
use std::fs::{self};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::st_header::read_safetensors_header;
use crate::types::{Family, ModelKind};

/// `model_type` values anneal can train and run, and their family.
pub const SUPPORTED_MODEL_TYPES: [(&str, Family); 4] =
    [("gpt2", Family::Gpt2), ("llama", Family::Llama), ("mistral", Family::Llama), ("qwen2", Family::Llama)];

/// What a directory holds.
#[derive(Debug)]
pub(crate) struct Inspected {
    pub(crate) kind: ModelKind,
    /// `None` for adapters: theirs is their parent's.
    pub(crate) family: Option<Family>,
    pub(crate) architecture: String,
    pub(crate) model_type: String,
    pub(crate) params: u64,
    pub(crate) dtype: String,
    /// Files to keep (relative names), weights included.
    pub(crate) files: Vec<String>,
    pub(crate) tokenizer: Option<String>,
    pub(crate) config: Value,
    /// Adapters: `base_model_name_or_path` from adapter_config.json.
    pub(crate) base_hint: Option<String>,
}
fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).with_path(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::data(Location::file(path).at(e.line() as u64), format!("invalid JSON: {e}")))
}

/// Files worth keeping from a model directory besides the weights.
fn is_side_file(name: &str) -> bool {
    name.ends_with(".json") || name.ends_with(".jinja") || name == "merges.txt" || name == "tokenizer.model"
}

/// Inspects a model or adapter directory.
pub(crate) fn inspect_dir(dir: &Path) -> Result<Inspected> {
    let meta = fs::metadata(dir).with_path(dir)?;
    if !meta.is_dir() {
        return Err(Error::config("path", format!("{} is not a directory", dir.display())));
    }
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(dir).with_path(dir)? {
        let e = e.with_path(dir)?;
        if e.file_type().with_path(e.path())?.is_file() {
            names.push(e.file_name().to_string_lossy().to_string());
        }
    }
    names.sort();
    if names.iter().any(|n| n == "adapter_config.json") && !names.iter().any(|n| n == "config.json") {
        return inspect_adapter(dir, &names);
    }
    let config_path = dir.join("config.json");
    if !config_path.exists() {
        return Err(Error::data(
            Location::file(&config_path),
            "missing config.json: not a Hugging Face model directory",
        ));
    }
    let config = read_json(&config_path)?;
    let model_type = config
        .get("model_type")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::data(Location::file(&config_path).field("model_type"), "missing or not a string"))?
        .to_string();
    let family = SUPPORTED_MODEL_TYPES.iter().find(|(t, _)| *t == model_type).map(|(_, f)| *f).ok_or_else(|| {
        Error::data(
            Location::file(&config_path).field("model_type"),
            format!(
                "unsupported model_type `{model_type}` (supported: {})",
                SUPPORTED_MODEL_TYPES.map(|(t, _)| t).join(", ")
            ),
        )
    })?;
    let architecture = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{model_type}ForCausalLM"));

    let weight_files = weight_files(dir, &names)?;
    let (params, dtype) = count_params(dir, &weight_files)?;
    let mut files: Vec<String> = names.iter().filter(|n| is_side_file(n)).cloned().collect();
    files.extend(weight_files.iter().cloned());
    files.sort();
    files.dedup();
    let tokenizer = names.iter().find(|n| *n == "tokenizer.json").cloned();
    Ok(Inspected {
        kind: ModelKind::Base,
        family: Some(family),
        architecture,
        model_type,
        params,
        dtype,
        files,
        tokenizer,
        config,
        base_hint: None,
    })
}

/// The weight files: `model.safetensors`, or the shards named by the index.
fn weight_files(dir: &Path, names: &[String]) -> Result<Vec<String>> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let v = read_json(&index)?;
        let map = v
            .get("weight_map")
            .and_then(Value::as_object)
            .ok_or_else(|| Error::data(Location::file(&index).field("weight_map"), "missing or not an object"))?;
        let mut shards: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (tensor, file) in map {
            let file = file.as_str().ok_or_else(|| {
                Error::data(Location::file(&index).field(format!("weight_map.{tensor}")), "not a file name")
            })?;
            if file.contains('/') || file.contains('\\') || file.starts_with('.') {
                return Err(Error::data(
                    Location::file(&index).field(format!("weight_map.{tensor}")),
                    format!("unsafe shard name `{file}`"),
                ));
            }
            shards.entry(file.to_string()).or_default().push(tensor.clone());
        }
        if shards.is_empty() {
            return Err(Error::data(Location::file(&index).field("weight_map"), "is empty"));
        }
        for (file, tensors) in &shards {
            let p = dir.join(file);
            if !p.exists() {
                return Err(Error::data(
                    Location::file(&index).field(format!("weight_map.{}", tensors[0])),
                    format!("shard {file} is missing"),
                ));
            }
            let header = read_safetensors_header(&p)?;
            for t in tensors {
                if !header.contains_key(t) {
                    return Err(Error::data(
                        Location::file(&p).field(t.clone()),
                        format!("tensor listed in {} is not in this shard", index.display()),
                    ));
                }
            }
        }
        let mut out: Vec<String> = shards.into_keys().collect();
        out.push("model.safetensors.index.json".into());
        return Ok(out);
    }
    if names.iter().any(|n| n == "model.safetensors") {
        return Ok(vec!["model.safetensors".into()]);
    }
    let other: Vec<&String> =
        names.iter().filter(|n| n.ends_with(".bin") || n.ends_with(".pt") || n.ends_with(".pth")).collect();
    let hint = if other.is_empty() {
        String::new()
    } else {
        format!(
            " (found {}: only safetensors weights are supported)",
            other.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        )
    };
    Err(Error::data(
        Location::file(dir.join("model.safetensors")),
        format!("no weights: expected model.safetensors or model.safetensors.index.json{hint}"),
    ))
}

fn count_params(dir: &Path, weight_files: &[String]) -> Result<(u64, String)> {
    let mut params = 0u64;
    let mut by_dtype: BTreeMap<String, u64> = BTreeMap::new();
    for f in weight_files.iter().filter(|f| f.ends_with(".safetensors")) {
        for t in read_safetensors_header(&dir.join(f))?.into_values() {
            let n: u64 = t.shape.iter().product();
            params += n;
            *by_dtype.entry(t.dtype).or_default() += n;
        }
    }
    let dtype = by_dtype.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d.to_lowercase()).unwrap_or_default();
    Ok((params, dtype))
}

fn inspect_adapter(dir: &Path, names: &[String]) -> Result<Inspected> {
    let cfg_path = dir.join("adapter_config.json");
    let config = read_json(&cfg_path)?;
    let peft_type = config.get("peft_type").and_then(Value::as_str).unwrap_or("LORA");
    if !peft_type.eq_ignore_ascii_case("lora") {
        return Err(Error::data(
            Location::file(&cfg_path).field("peft_type"),
            format!("unsupported adapter type `{peft_type}` (only LORA)"),
        ));
    }
    for field in ["r", "lora_alpha"] {
        if config.get(field).and_then(Value::as_f64).is_none() {
            return Err(Error::data(Location::file(&cfg_path).field(field), "missing or not a number"));
        }
    }
    if !names.iter().any(|n| n == "adapter_model.safetensors") {
        return Err(Error::data(
            Location::file(dir.join("adapter_model.safetensors")),
            "missing adapter weights (adapter_model.safetensors)",
        ));
    }
    let weights = vec!["adapter_model.safetensors".to_string()];
    let (params, dtype) = count_params(dir, &weights)?;
    let mut files: Vec<String> = names.iter().filter(|n| is_side_file(n)).cloned().collect();
    files.extend(weights);
    files.sort();
    files.dedup();
    Ok(Inspected {
        kind: ModelKind::Lora,
        family: None,
        architecture: "lora".into(),
        model_type: "lora".into(),
        params,
        dtype,
        files,
        tokenizer: names.iter().find(|n| *n == "tokenizer.json").cloned(),
        base_hint: config.get("base_model_name_or_path").and_then(Value::as_str).map(str::to_string),
        config,
    })
}

/// Total bytes of `files` under `dir`.
pub(crate) fn total_bytes(dir: &Path, files: &[String]) -> Result<u64> {
    let mut total = 0;
    for f in files {
        let p: PathBuf = dir.join(f);
        total += fs::metadata(&p).with_path(&p)?.len();
    }
    Ok(total)
}

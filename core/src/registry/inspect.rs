//! Reads an HF-layout model directory or a PEFT adapter directory without loading
//! tensors, and checks at the door everything a later load needs: config.json's values
//! (through [`ModelConfig`]), every tensor the family's loader takes (present, with the
//! shape config.json implies and a float dtype, read from the safetensors headers only),
//! the tokenizer (it loads; no id beyond the model's vocabulary), and an adapter's rank,
//! targets and tensor shapes against each other and against its base model.
//!
//! Tensors the loader does not take are allowed, as the loader ignores them (Hub
//! checkpoints carry buffers such as GPT-2's `attn.bias` or Llama's
//! `rotary_emb.inv_freq`), but they must have a dtype the loader reads. In an adapter,
//! every tensor must be a LoRA matrix of a targeted module (the adapter loader refuses
//! any other).

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::diffusion::{self, DiffusionLora};
use crate::diffusion::LORA_WEIGHTS_FILE;
use crate::error::{Error, IoResultExt, Location, Result};
use crate::models::lora::peft::{self, Targets};
use crate::models::st_header::{read_safetensors_header, TensorInfo, FLOAT_DTYPES, LOADABLE_DTYPES};
use crate::models::ModelConfig;
use crate::tokenizer::Tokenizer;
use crate::types::{Family, LoraConfig, ModelKind, ModelRecord};

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
    /// Adapters: what [`check_adapter`] compares with the base model.
    pub(crate) adapter: Option<AdapterFiles>,
    /// A diffusers LoRA: what [`check_adapter`] fits to the base pipeline's UNet.
    pub(crate) diffusion_lora: Option<DiffusionLora>,
}

impl Inspected {
    /// A tabular classifier's directory (`files`): kind `classifier`, family `tabular`.
    pub(crate) fn classifier(architecture: String, params: u64, config: Value, files: Vec<String>) -> Self {
        Inspected {
            kind: ModelKind::Classifier,
            family: Some(Family::Tabular),
            architecture,
            model_type: "classifier".to_string(),
            params,
            dtype: "f64".to_string(),
            files,
            tokenizer: None,
            config,
            base_hint: None,
            adapter: None,
            diffusion_lora: None,
        }
    }
}

/// An adapter directory's parsed config and the modules its tensors adapt.
#[derive(Debug)]
pub(crate) struct AdapterFiles {
    config_path: PathBuf,
    weights_path: PathBuf,
    r: usize,
    targeted: TargetMatcher,
    /// Module name -> (in features from lora_A, out features from lora_B).
    modules: BTreeMap<String, (u64, u64)>,
    tokenizer: Option<PathBuf>,
}

/// target_modules as the adapter loader applies it to module names.
#[derive(Debug)]
struct TargetMatcher {
    targets: Targets,
    /// The whole-name regex of `Targets::Regex`.
    re: Option<regex::Regex>,
}

impl TargetMatcher {
    fn new(targets: &Targets, cfg_path: &Path) -> Result<Self> {
        let re = match targets {
            Targets::Regex(s) => Some(regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| {
                Error::data(Location::file(cfg_path).field("target_modules"), format!("invalid regex: {e}"))
            })?),
            Targets::Names(_) => None,
        };
        Ok(Self { targets: targets.clone(), re })
    }

    fn hits(&self, module: &str) -> bool {
        match (&self.targets, &self.re) {
            (_, Some(re)) => re.is_match(module),
            (Targets::Names(t), None) => LoraConfig::matches(t, module),
            (Targets::Regex(_), None) => false,
        }
    }
}

pub(super) fn read_json(path: &Path) -> Result<Value> {
    let bytes = fs::read(path).with_path(path)?;
    serde_json::from_slice(&bytes)
        .map_err(|e| Error::data(Location::file(path).at(e.line() as u64), format!("invalid JSON: {e}")))
}

/// An `invalid_config` error about the values of a file read from disk, as
/// `invalid_data` naming the file and the field.
pub(super) fn in_file(path: &Path, e: Error) -> Error {
    match e {
        Error::InvalidConfig { field, reason } => Error::data(Location::file(path).field(field), reason),
        other => other,
    }
}

/// transformers' generation defaults, read by the generator.
const GENERATION_CONFIG: &str = "generation_config.json";

/// What a path that is not a regular file is, for errors.
pub(super) fn file_kind(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_block_device() || t.is_char_device() {
            return "a device";
        }
    }
    "not a regular file"
}

/// Files worth keeping from a model directory besides the weights.
pub(super) fn is_side_file(name: &str) -> bool {
    name.ends_with(".json") || name.ends_with(".jinja") || name == "merges.txt" || name == "tokenizer.model"
}

/// Inspects a model or adapter directory: an HF model, a PEFT adapter, a diffusers
/// pipeline or a diffusers LoRA ([`super::diffusion`]; `budget` bounds the memory its
/// checks may load). An adapter is checked against its base by [`check_adapter`] once
/// the base is known.
pub(crate) fn inspect_dir(dir: &Path, budget: u64) -> Result<Inspected> {
    let meta = fs::metadata(dir).with_path(dir)?;
    if !meta.is_dir() {
        return Err(Error::config("path", format!("{} is not a directory", dir.display())));
    }
    let mut names: Vec<String> = Vec::new();
    for e in fs::read_dir(dir).with_path(dir)? {
        let e = e.with_path(dir)?;
        let name = e.file_name().to_string_lossy().to_string();
        // Symlinks are followed (Hugging Face's cache links snapshots to blobs).
        let meta = fs::metadata(e.path()).with_path(e.path())?;
        if meta.is_file() {
            names.push(name);
        } else if is_side_file(&name) || name.ends_with(".safetensors") {
            // Opening a FIFO would block forever; a device or socket is no model file.
            return Err(Error::data(
                Location::file(e.path()),
                format!("is not a regular file ({}); model files must be regular files", file_kind(&meta)),
            ));
        }
    }
    names.sort();
    if diffusion::is_pipeline(&names) {
        return diffusion::inspect_pipeline(dir, budget);
    }
    if diffusion::is_lora_dir(&names) {
        return diffusion::inspect_lora(dir, LORA_WEIGHTS_FILE);
    }
    if names.iter().any(|n| n == GENERATION_CONFIG) {
        // Read by every generator of the model: it must be a JSON object.
        let p = dir.join(GENERATION_CONFIG);
        if !read_json(&p)?.is_object() {
            return Err(Error::data(Location::file(&p), "must be a JSON object"));
        }
    }
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
    let cfg = ModelConfig::from_json(&config).map_err(|e| in_file(&config_path, e))?;
    let architecture = config
        .get("architectures")
        .and_then(Value::as_array)
        .and_then(|a| a.first())
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("{model_type}ForCausalLM"));

    let weights = read_weights(dir, &names)?;
    check_weights(&config_path, &cfg, &weights)?;
    let (params, dtype) = count_params(weights.tensors.values().map(|(_, t)| t));
    let tokenizer = names.iter().find(|n| *n == "tokenizer.json").cloned();
    if tokenizer.is_some() {
        check_tokenizer(dir, cfg.vocab_size, &format!("vocab_size {} in {}", cfg.vocab_size, config_path.display()))?;
    }
    let mut files: Vec<String> = names.iter().filter(|n| is_side_file(n)).cloned().collect();
    files.extend(weights.files.iter().cloned());
    files.sort();
    files.dedup();
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
        adapter: None,
        diffusion_lora: None,
    })
}

/// The weight files of a directory and every tensor in their headers.
struct Weights {
    /// Files to keep: the safetensors files (and the index).
    files: Vec<String>,
    /// The safetensors files.
    paths: Vec<PathBuf>,
    /// Where a missing tensor is reported: the index, or the single file.
    main: PathBuf,
    /// Tensor name -> (index in `paths`, header entry).
    tensors: BTreeMap<String, (usize, TensorInfo)>,
}

/// The weight files (`model.safetensors`, or the shards named by the index) and their
/// headers: each listed tensor must be in its shard, and no tensor in two shards.
fn read_weights(dir: &Path, names: &[String]) -> Result<Weights> {
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
        let mut w = Weights { files: Vec::new(), paths: Vec::new(), main: index.clone(), tensors: BTreeMap::new() };
        for (file, listed) in &shards {
            let p = dir.join(file);
            if !p.exists() {
                return Err(Error::data(
                    Location::file(&index).field(format!("weight_map.{}", listed[0])),
                    format!("shard {file} is missing"),
                ));
            }
            let header = read_safetensors_header(&p)?;
            for t in listed {
                if !header.contains_key(t) {
                    return Err(Error::data(
                        Location::file(&p).field(t.clone()),
                        format!("tensor listed in {} is not in this shard", index.display()),
                    ));
                }
            }
            w.add(file, p, header)?;
        }
        w.files.push("model.safetensors.index.json".into());
        return Ok(w);
    }
    if names.iter().any(|n| n == "model.safetensors") {
        let p = dir.join("model.safetensors");
        let header = read_safetensors_header(&p)?;
        let mut w = Weights { files: Vec::new(), paths: Vec::new(), main: p.clone(), tensors: BTreeMap::new() };
        w.add("model.safetensors", p, header)?;
        return Ok(w);
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

impl Weights {
    fn add(&mut self, file: &str, path: PathBuf, header: BTreeMap<String, TensorInfo>) -> Result<()> {
        let i = self.paths.len();
        for (name, info) in header {
            if let Some((j, _)) = self.tensors.get(&name) {
                return Err(Error::data(
                    Location::file(&path).field(name),
                    format!("tensor is also in {}: a tensor must be in one shard only", self.paths[*j].display()),
                ));
            }
            self.tensors.insert(name, (i, info));
        }
        self.files.push(file.to_string());
        self.paths.push(path);
        Ok(())
    }
}

/// Checks the tensors against config.json, as the family's loader takes them: every
/// tensor it needs present with the implied shape and a float dtype; every tensor of
/// the files (the loader reads them all) of a dtype it reads.
fn check_weights(config_path: &Path, cfg: &ModelConfig, w: &Weights) -> Result<()> {
    for (name, (file, info)) in &w.tensors {
        if !LOADABLE_DTYPES.contains(&info.dtype.as_str()) {
            return Err(Error::data(
                Location::file(&w.paths[*file]).field(name.clone()),
                format!(
                    "tensor dtype {} is not supported for weights (supported: {})",
                    info.dtype,
                    LOADABLE_DTYPES.join(", ")
                ),
            ));
        }
    }
    // GPT-2 as the loader reads it: Hub checkpoints name `wte.weight`, transformers-saved
    // ones `transformer.wte.weight`.
    let bare_gpt2 = cfg.family == Family::Gpt2
        && w.tensors.contains_key("wte.weight")
        && !w.tensors.contains_key("transformer.wte.weight");
    let config_name = config_path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    for spec in cfg.weight_specs() {
        let name = match spec.name.strip_prefix("transformer.") {
            Some(bare) if bare_gpt2 => bare,
            _ => spec.name.as_str(),
        };
        let Some((file, info)) = w.tensors.get(name) else {
            return Err(Error::data(
                Location::file(&w.main).field(name),
                format!("missing tensor required by {config_name} ({})", config_path.display()),
            ));
        };
        let at = || Location::file(&w.paths[*file]).field(name);
        if !FLOAT_DTYPES.contains(&info.dtype.as_str()) {
            return Err(Error::data(
                at(),
                format!("tensor has dtype {}; a weight must be one of {}", info.dtype, FLOAT_DTYPES.join(", ")),
            ));
        }
        let expected: Vec<u64> = spec.shape.iter().map(|&d| d as u64).collect();
        if info.shape != expected {
            return Err(Error::data(
                at(),
                format!(
                    "tensor has shape {:?} but {config_name} implies {:?} ([{}])",
                    info.shape,
                    expected,
                    spec.dims.join(", ")
                ),
            ));
        }
    }
    Ok(())
}

/// Parameter count and the dtype holding most of them.
pub(super) fn count_params<'a>(tensors: impl Iterator<Item = &'a TensorInfo>) -> (u64, String) {
    let mut params = 0u64;
    let mut by_dtype: BTreeMap<&str, u64> = BTreeMap::new();
    for t in tensors {
        let n: u64 = t.shape.iter().product();
        params += n;
        *by_dtype.entry(t.dtype.as_str()).or_default() += n;
    }
    let dtype = by_dtype.into_iter().max_by_key(|(_, n)| *n).map(|(d, _)| d.to_lowercase()).unwrap_or_default();
    (params, dtype)
}

/// The tokenizer of `dir` loads as generation loads it, and produces no id beyond the
/// model's `vocab_size` (`vocab_from` says where that size comes from).
fn check_tokenizer(dir: &Path, vocab_size: usize, vocab_from: &str) -> Result<()> {
    let tok = Tokenizer::from_dir(dir)?;
    if let Some((id, text)) = tok.max_token() {
        if id as usize >= vocab_size {
            return Err(Error::data(
                Location::file(dir.join("tokenizer.json")),
                format!(
                    "token {text:?} has id {id}, outside the model's vocabulary ({vocab_from}): \
                     the embedding has no row for it"
                ),
            ));
        }
    }
    Ok(())
}

/// Inspects a PEFT adapter directory: adapter_config.json as the adapter loader reads
/// it, and its tensors against it (every tensor a `lora_A` `[r, in]` or `lora_B`
/// `[out, r]` of a targeted module, both present). [`check_adapter`] then compares them
/// with the base model.
fn inspect_adapter(dir: &Path, names: &[String]) -> Result<Inspected> {
    let cfg_path = dir.join(peft::CONFIG_FILE);
    let config = read_json(&cfg_path)?;
    let pc = peft::read_config(&cfg_path)?;
    let targeted = TargetMatcher::new(&pc.targets, &cfg_path)?;
    if !names.iter().any(|n| n == peft::WEIGHTS_FILE) {
        return Err(Error::data(
            Location::file(dir.join(peft::WEIGHTS_FILE)),
            "missing adapter weights (adapter_model.safetensors)",
        ));
    }
    let st = dir.join(peft::WEIGHTS_FILE);
    let header = read_safetensors_header(&st)?;
    let r = pc.config.r as u64;
    let mut a_in: BTreeMap<String, u64> = BTreeMap::new();
    let mut b_out: BTreeMap<String, u64> = BTreeMap::new();
    for (key, info) in &header {
        let at = || Location::file(&st).field(key.clone());
        let parsed = key.strip_prefix("base_model.model.").and_then(|k| {
            k.strip_suffix(".lora_A.weight")
                .map(|m| (m, 'A'))
                .or_else(|| k.strip_suffix(".lora_B.weight").map(|m| (m, 'B')))
        });
        let Some((module, which)) = parsed.filter(|(m, _)| !m.is_empty()) else {
            return Err(Error::data(
                at(),
                "not a LoRA matrix (expected base_model.model.<module>.lora_A.weight or .lora_B.weight)",
            ));
        };
        if !targeted.hits(module) {
            return Err(Error::data(
                at(),
                format!("module `{module}` is not targeted by target_modules of {}", cfg_path.display()),
            ));
        }
        if !FLOAT_DTYPES.contains(&info.dtype.as_str()) {
            return Err(Error::data(
                at(),
                format!("tensor has dtype {}; a weight must be one of {}", info.dtype, FLOAT_DTYPES.join(", ")),
            ));
        }
        let rank_at = if which == 'A' { 0 } else { 1 };
        if info.shape.len() != 2 || info.shape[rank_at] != r {
            let want = if which == 'A' { "[r, in_features]" } else { "[out_features, r]" };
            return Err(Error::data(
                at(),
                format!("tensor has shape {:?}, expected {want} with r = {r} from {}", info.shape, cfg_path.display()),
            ));
        }
        if which == 'A' {
            a_in.insert(module.to_string(), info.shape[1]);
        } else {
            b_out.insert(module.to_string(), info.shape[0]);
        }
    }
    let mut modules = BTreeMap::new();
    for m in a_in.keys().chain(b_out.keys()).collect::<BTreeSet<_>>() {
        match (a_in.get(m), b_out.get(m)) {
            (Some(&i), Some(&o)) => {
                modules.insert(m.clone(), (i, o));
            }
            (None, _) => {
                return Err(Error::data(
                    Location::file(&st).field(peft::key(m, 'A')),
                    "missing tensor: lora_B without lora_A",
                ))
            }
            (_, None) => {
                return Err(Error::data(
                    Location::file(&st).field(peft::key(m, 'B')),
                    "missing tensor: lora_A without lora_B",
                ))
            }
        }
    }
    if modules.is_empty() {
        return Err(Error::data(Location::file(&st), "holds no LoRA tensors"));
    }
    let (params, dtype) = count_params(header.values());
    let weights = vec![peft::WEIGHTS_FILE.to_string()];
    let mut files: Vec<String> = names.iter().filter(|n| is_side_file(n)).cloned().collect();
    files.extend(weights);
    files.sort();
    files.dedup();
    let tokenizer = names.iter().find(|n| *n == "tokenizer.json").cloned();
    Ok(Inspected {
        kind: ModelKind::Lora,
        family: None,
        architecture: "lora".into(),
        model_type: "lora".into(),
        params,
        dtype,
        files,
        tokenizer: tokenizer.clone(),
        base_hint: pc.base_model_name_or_path.clone(),
        config,
        adapter: Some(AdapterFiles {
            config_path: cfg_path,
            weights_path: st,
            r: pc.config.r,
            targeted,
            modules,
            tokenizer: tokenizer.map(|_| dir.join("tokenizer.json")),
        }),
        diffusion_lora: None,
    })
}

/// Checks an inspected adapter against its base model, as loading it onto the base
/// would: every adapted module is a linear module of the base with the features of
/// lora_A and lora_B, and every module of the base that target_modules selects is
/// adapted. `fan_in_fan_out` is not compared: the adapter loader (like PEFT) sets it
/// from the layer type, and the LoRA matrices have the same layout either way. A
/// tokenizer shipped with the adapter must load and fit the base's vocabulary.
///
/// A diffusers LoRA is fitted to the base pipeline's UNet ([`diffusion::check_lora`],
/// within `budget`).
pub(crate) fn check_adapter(ins: &Inspected, base: &ModelRecord, budget: u64) -> Result<()> {
    if let Some(l) = &ins.diffusion_lora {
        return diffusion::check_lora(l, base, budget);
    }
    let Some(a) = &ins.adapter else { return Ok(()) };
    if base.family == Family::StableDiffusion {
        return Err(Error::config(
            "parent",
            format!(
                "{} is a stable-diffusion pipeline; {} is a PEFT adapter for a language model",
                base.reference(),
                a.weights_path.display()
            ),
        ));
    }
    let cfg = ModelConfig::from_json(&base.config)
        .map_err(|e| Error::config("parent", format!("the config of {} cannot be used: {e}", base.reference())))?;
    let linears = cfg.linear_modules();
    let by_name: BTreeMap<&str, _> = linears.iter().map(|l| (l.name.as_str(), l)).collect();
    let st = &a.weights_path;
    let base_ref = base.reference();
    for (module, &(in_f, out_f)) in &a.modules {
        let Some(l) = by_name.get(module.as_str()) else {
            let mut short: Vec<&str> = linears.iter().map(|l| l.name.rsplit('.').next().unwrap_or(&l.name)).collect();
            short.sort();
            short.dedup();
            return Err(Error::data(
                Location::file(st).field(peft::key(module, 'A')),
                format!(
                    "`{module}` is not a linear module of the base model {base_ref} ({} with {} layers; its linear modules: {})",
                    cfg.model_type,
                    cfg.num_hidden_layers,
                    short.join(", ")
                ),
            ));
        };
        let r = a.r;
        if in_f != l.in_features as u64 {
            return Err(Error::data(
                Location::file(st).field(peft::key(module, 'A')),
                format!(
                    "tensor has shape [{r}, {in_f}], expected [{r}, {}] from r and the base model {base_ref} ({})",
                    l.in_features, l.in_from
                ),
            ));
        }
        if out_f != l.out_features as u64 {
            return Err(Error::data(
                Location::file(st).field(peft::key(module, 'B')),
                format!(
                    "tensor has shape [{out_f}, {r}], expected [{}, {r}] from r and the base model {base_ref} ({})",
                    l.out_features, l.out_from
                ),
            ));
        }
    }
    for l in &linears {
        if a.targeted.hits(&l.name) && !a.modules.contains_key(&l.name) {
            return Err(Error::data(
                Location::file(st).field(peft::key(&l.name, 'A')),
                format!(
                    "missing tensor: target_modules of {} selects {} in the base model {base_ref}",
                    a.config_path.display(),
                    l.name
                ),
            ));
        }
    }
    if let Some(t) = &a.tokenizer {
        let dir = t.parent().unwrap_or(Path::new("."));
        check_tokenizer(dir, cfg.vocab_size, &format!("vocab_size {} of the base model {base_ref}", cfg.vocab_size))?;
    }
    Ok(())
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

//! GGUF import (`register_file("model.gguf")`): the inverse of `export::gguf`.
//!
//! A llama.cpp model file of architecture `llama` (Llama, Mistral), `qwen2` or `gpt2`
//! is checked whole before anything is copied: the architecture, the hyperparameters
//! (`<arch>.*` keys, resolved through [`ModelConfig`] like a config.json), every
//! tensor the loader takes (present, with the GGML dims the hyperparameters imply, of
//! a type anneal dequantizes: f32, f16, bf16, q8_0, q4_0, q5_0, q4_K, q6_K) and the
//! tokenizer. The file is then copied into the home beside files derived from its
//! metadata, so the rest of anneal sees an ordinary model directory:
//!
//! - `config.json`, Hugging Face style (`model_type`, sizes, epsilon, RoPE base and
//!   linear scaling, tied embeddings from the absence of `output.weight`, biases from
//!   their tensors, BOS / EOS (+ EOT) / padding ids);
//! - `tokenizer.json` from `tokenizer.ggml.*`: `gpt2` as byte-level BPE (tokens +
//!   merges, the pre-tokenizer named by `tokenizer.ggml.pre`), `llama` as
//!   SentencePiece-style BPE with byte fallback (merges rebuilt from the scores, as
//!   transformers converts a SentencePiece model: every split of a piece into two
//!   pieces, by the merged piece's score); control tokens become special added tokens,
//!   `[PAD<i>]` padding tokens (type unused) are left out;
//! - `tokenizer_config.json`: the special tokens, `add_bos_token`, and
//!   `tokenizer.chat_template`.
//!
//! Not representable, so refused: LoRA adapter files (`general.type = adapter`), Llama 3
//! RoPE scaling (`rope_freqs`) and other scaling types than linear, partial rotary
//! embeddings, tokenizers other than `gpt2` / `llama`.

use std::collections::HashMap;
use std::path::Path;

use serde_json::{json, Map, Value as Json};

use crate::error::{Error, IoResultExt, Location, Result};
use crate::gguf::{GgmlType, GgufFile, Value};
use crate::models::gguf::{tensor_map, GGUF_FILE};
use crate::models::ModelConfig;
use crate::tokenizer::Tokenizer;
use crate::types::{Family, ModelKind};

use super::inspect::Inspected;

/// GGUF token types (`llama_token_type`).
const NORMAL: i64 = 1;
const UNKNOWN: i64 = 2;
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;
const UNUSED: i64 = 5;

/// Files written beside `model.gguf`.
pub(super) const SIDE_FILES: [&str; 3] = ["config.json", "tokenizer.json", "tokenizer_config.json"];

/// A checked GGUF model file and what registering it writes.
pub(super) struct GgufModel {
    pub(super) file: GgufFile,
    pub(super) inspected: Inspected,
    tokenizer: Option<(Json, Json)>,
}

fn at(path: &Path, key: &str) -> Location {
    Location::file(path).field(format!("metadata `{key}`"))
}

/// Metadata of one file, read with errors naming the key.
struct Meta<'a> {
    f: &'a GgufFile,
}

impl Meta<'_> {
    fn get(&self, key: &str) -> Option<&Value> {
        self.f.get(key)
    }

    fn count(&self, key: &str) -> Result<Option<usize>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_u64().and_then(|x| usize::try_from(x).ok()).map(Some).ok_or_else(|| {
                Error::data(at(&self.f.path, key), format!("must be a non-negative integer, got {v:?}"))
            }),
        }
    }

    fn need(&self, key: &str) -> Result<usize> {
        self.count(key)?.ok_or_else(|| Error::data(at(&self.f.path, key), "missing"))
    }

    /// A float, as the shortest decimal that reads back as the stored f32 (1e-5, not
    /// 9.99999974e-6), so the derived config.json says what the model's own did.
    fn float(&self, key: &str) -> Result<Option<f64>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::F32(x)) => Ok(format!("{x}").parse::<f64>().ok()),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| Error::data(at(&self.f.path, key), format!("must be a number, got {v:?}"))),
        }
    }

    fn string(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| Error::data(at(&self.f.path, key), format!("must be a string, got {v:?}"))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&[Value]>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => v.as_array().map(Some).ok_or_else(|| Error::data(at(&self.f.path, key), "must be an array")),
        }
    }
}

/// llama.cpp's `llama_ftype` names of the types anneal exports (`general.file_type`).
fn file_type_name(ftype: u64) -> Option<&'static str> {
    Some(match ftype {
        0 => "f32",
        1 => "f16",
        2 => "q4_0",
        7 => "q8_0",
        8 => "q5_0",
        14 => "q4_k_s",
        15 => "q4_k_m",
        18 => "q6_k",
        32 => "bf16",
        _ => return None,
    })
}

/// Reads and checks GGUF file `path` (see the module doc). Nothing is written.
pub(super) fn inspect(path: &Path) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let m = Meta { f: &file };
    let arch_key = "general.architecture";
    let arch = m.string(arch_key)?.ok_or_else(|| Error::data(at(path, arch_key), "missing"))?.to_string();
    if m.string("general.type")? == Some("adapter") {
        return Err(Error::data(
            at(path, "general.type"),
            "a GGUF LoRA adapter, not a model: register_file takes model files",
        ));
    }
    let (model_type, family, architecture) = match arch.as_str() {
        "llama" => ("llama", Family::Llama, "LlamaForCausalLM"),
        "qwen2" => ("qwen2", Family::Llama, "Qwen2ForCausalLM"),
        "gpt2" => ("gpt2", Family::Gpt2, "GPT2LMHeadModel"),
        other => {
            return Err(Error::data(
                at(path, arch_key),
                format!("unsupported architecture `{other}` (supported: llama (Llama, Mistral), qwen2, gpt2)"),
            ))
        }
    };
    let a = arch.as_str();
    let has = |name: &str| file.tensor(name).is_some();
    let embd = file.tensor("token_embd.weight").ok_or_else(|| {
        Error::data(Location::file(path).field("token_embd.weight"), "missing tensor: the token embedding")
    })?;
    let vocab = embd.dims.get(1).copied().unwrap_or(0) as usize;
    let tokens = m.array("tokenizer.ggml.tokens")?;
    if let Some(t) = tokens {
        if t.len() > vocab {
            return Err(Error::data(
                at(path, "tokenizer.ggml.tokens"),
                format!("{} tokens, but the token embedding has {vocab} rows", t.len()),
            ));
        }
    }
    let hidden = m.need(&format!("{a}.embedding_length"))?;
    let layers = m.need(&format!("{a}.block_count"))?;
    let ffn = m.need(&format!("{a}.feed_forward_length"))?;
    let heads = m.need(&format!("{a}.attention.head_count"))?;
    let context = m.need(&format!("{a}.context_length"))?;
    let mut config = Map::new();
    config.insert("architectures".into(), json!([architecture]));
    config.insert("model_type".into(), json!(model_type));
    config.insert("vocab_size".into(), json!(vocab));
    if family == Family::Gpt2 {
        let eps = m.float(&format!("{a}.attention.layer_norm_epsilon"))?.unwrap_or(1e-5);
        for (k, v) in [
            ("n_embd", json!(hidden)),
            ("n_layer", json!(layers)),
            ("n_head", json!(heads)),
            ("n_positions", json!(context)),
            ("n_inner", json!(ffn)),
            ("activation_function", json!("gelu_new")),
            ("layer_norm_epsilon", json!(eps)),
            ("tie_word_embeddings", json!(true)),
        ] {
            config.insert(k.into(), v);
        }
    } else {
        let kv = m.count(&format!("{a}.attention.head_count_kv"))?.unwrap_or(heads);
        let head_dim = m.count(&format!("{a}.attention.key_length"))?.unwrap_or(hidden.checked_div(heads).unwrap_or(0));
        let rot_key = format!("{a}.rope.dimension_count");
        if let Some(rot) = m.count(&rot_key)? {
            if rot != head_dim {
                return Err(Error::data(
                    at(path, &rot_key),
                    format!("RoPE on {rot} of {head_dim} dimensions per head (partial rotary) is not supported"),
                ));
            }
        }
        if has("rope_freqs.weight") {
            return Err(Error::data(
                Location::file(path).field("rope_freqs.weight"),
                "Llama 3 RoPE scaling (rope frequency factors) is not supported by GGUF import",
            ));
        }
        let eps = m.float(&format!("{a}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-6);
        let theta = m.float(&format!("{a}.rope.freq_base"))?.unwrap_or(10000.0);
        for (k, v) in [
            ("hidden_size", json!(hidden)),
            ("intermediate_size", json!(ffn)),
            ("num_hidden_layers", json!(layers)),
            ("num_attention_heads", json!(heads)),
            ("num_key_value_heads", json!(kv)),
            ("head_dim", json!(head_dim)),
            ("max_position_embeddings", json!(context)),
            ("rms_norm_eps", json!(eps)),
            ("rope_theta", json!(theta)),
            ("hidden_act", json!("silu")),
            ("tie_word_embeddings", json!(!has("output.weight"))),
            ("mlp_bias", json!(has("blk.0.ffn_up.bias"))),
        ] {
            config.insert(k.into(), v);
        }
        if a == "llama" {
            config.insert("attention_bias".into(), json!(has("blk.0.attn_q.bias")));
        }
        let scaling_key = format!("{a}.rope.scaling.type");
        match m.string(&scaling_key)? {
            None | Some("none") => {}
            Some("linear") => {
                let factor = m.float(&format!("{a}.rope.scaling.factor"))?.unwrap_or(1.0);
                config.insert("rope_scaling".into(), json!({"rope_type": "linear", "factor": factor}));
            }
            Some(other) => {
                return Err(Error::data(
                    at(path, &scaling_key),
                    format!("RoPE scaling `{other}` is not supported (linear is)"),
                ))
            }
        }
    }
    let id = |key: &str| -> Result<Option<usize>> { m.count(&format!("tokenizer.ggml.{key}_token_id")) };
    let (bos, eos, eot, pad) = (id("bos")?, id("eos")?, id("eot")?, id("padding")?);
    for (key, v) in [("bos", bos), ("eos", eos), ("eot", eot), ("padding", pad)] {
        if v.is_some_and(|v| v >= vocab) {
            return Err(Error::data(
                at(path, &format!("tokenizer.ggml.{key}_token_id")),
                format!("id {} is outside the vocabulary of {vocab}", v.unwrap_or(0)),
            ));
        }
    }
    if let Some(b) = bos {
        config.insert("bos_token_id".into(), json!(b));
    }
    match (eos, eot) {
        (Some(e), Some(t)) if t != e => config.insert("eos_token_id".into(), json!([e, t])),
        (Some(e), _) => config.insert("eos_token_id".into(), json!(e)),
        (None, Some(t)) => config.insert("eos_token_id".into(), json!(t)),
        (None, None) => None,
    };
    if let Some(p) = pad {
        config.insert("pad_token_id".into(), json!(p));
    }
    let config = Json::Object(config);
    let cfg = ModelConfig::from_json(&config).map_err(|e| match e {
        Error::InvalidConfig { field, reason } => {
            Error::data(Location::file(path).field(format!("hyperparameters ({field})")), reason)
        }
        other => other,
    })?;

    let (params, by_type) = check_tensors(&file, &cfg)?;
    let dtype = m
        .get("general.file_type")
        .and_then(Value::as_u64)
        .and_then(file_type_name)
        .map(str::to_string)
        .or_else(|| by_type.iter().max_by_key(|(_, n)| **n).map(|(t, _)| t.name().to_string()))
        .unwrap_or_default();
    let tokenizer = match tokens {
        None => None,
        Some(tokens) => Some(tokenizer_files(&m, tokens, bos, eos, pad)?),
    };
    let mut files: Vec<String> = vec!["config.json".into(), GGUF_FILE.into()];
    if tokenizer.is_some() {
        files.extend(["tokenizer.json".to_string(), "tokenizer_config.json".to_string()]);
    }
    files.sort();
    let inspected = Inspected {
        kind: ModelKind::Base,
        family: Some(family),
        architecture: architecture.to_string(),
        model_type: model_type.to_string(),
        params,
        dtype,
        files,
        tokenizer: tokenizer.as_ref().map(|_| "tokenizer.json".to_string()),
        config,
        base_hint: None,
        adapter: None,
        diffusion_lora: None,
    };
    Ok(GgufModel { file, inspected, tokenizer })
}

/// Every tensor the loader takes for `cfg`: present in `file`, with the dims the
/// hyperparameters imply, of a type anneal reads. Returns the parameter count and the
/// elements of each type.
fn check_tensors(file: &GgufFile, cfg: &ModelConfig) -> Result<(u64, HashMap<GgmlType, u64>)> {
    let path = &file.path;
    let mut params = 0u64;
    let mut by_type: HashMap<GgmlType, u64> = HashMap::new();
    for t in tensor_map(cfg)? {
        let loc = || Location::file(path).field(t.gguf.clone());
        let info =
            file.tensor(&t.gguf).ok_or_else(|| Error::data(loc(), "missing tensor required by the hyperparameters"))?;
        if info.dims != t.ggml_dims() {
            return Err(Error::data(
                loc(),
                format!("tensor has GGML dims {:?}, the hyperparameters imply {:?}", info.dims, t.ggml_dims()),
            ));
        }
        if !info.ty.is_convertible() {
            return Err(Error::data(
                loc(),
                format!("tensor type {} is not supported (f32, f16, bf16, q8_0, q4_0, q5_0, q4_K, q6_K are)", info.ty),
            ));
        }
        params += info.elements();
        *by_type.entry(info.ty).or_default() += info.elements();
    }
    Ok((params, by_type))
}

/// Checks a model directory that holds a registered GGUF file beside its derived files
/// (a bundle being restored): the file as [`inspect`] checks it, every tensor the
/// config.json beside it implies (present, with its dims), and the tokenizer files
/// (they must load). The model is described with that config.json.
pub(super) fn inspect_dir(dir: &Path) -> Result<Inspected> {
    let model = inspect(&dir.join(GGUF_FILE))?;
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).with_path(&p)?;
    let config: Json = serde_json::from_str(&text).map_err(|e| Error::data(Location::file(&p), e.to_string()))?;
    let cfg = ModelConfig::from_json(&config).map_err(|e| match e {
        Error::InvalidConfig { field, reason } => Error::data(Location::file(&p).field(field), reason),
        other => other,
    })?;
    check_tensors(&model.file, &cfg)?;
    let mut files = vec![GGUF_FILE.to_string()];
    files.extend(SIDE_FILES.iter().filter(|f| dir.join(f).is_file()).map(|f| f.to_string()));
    files.sort();
    let tokenizer = if dir.join("tokenizer.json").is_file() {
        Tokenizer::from_dir(dir)
            .map_err(|e| Error::data(Location::file(dir.join("tokenizer.json")), format!("does not load: {e}")))?;
        Some("tokenizer.json".to_string())
    } else {
        None
    };
    Ok(Inspected { config, files, tokenizer, ..model.inspected })
}

impl GgufModel {
    /// Writes config.json and the tokenizer files into `dir` and checks that the
    /// tokenizer loads as generation loads it and fits the vocabulary.
    pub(super) fn write_side_files(&self, dir: &Path) -> Result<()> {
        let pretty = |v: &Json| serde_json::to_vec_pretty(v).map_err(|e| Error::Internal(e.to_string()));
        crate::util::write_atomic(&dir.join("config.json"), &pretty(&self.inspected.config)?)?;
        if let Some((tj, tc)) = &self.tokenizer {
            crate::util::write_atomic(&dir.join("tokenizer.json"), &pretty(tj)?)?;
            crate::util::write_atomic(&dir.join("tokenizer_config.json"), &pretty(tc)?)?;
            let tok = Tokenizer::from_dir(dir).map_err(|e| {
                Error::data(
                    Location::file(&self.file.path).field("tokenizer.ggml.tokens"),
                    format!("the tokenizer does not load: {e}"),
                )
            })?;
            let vocab = self.inspected.config.get("vocab_size").and_then(Json::as_u64).unwrap_or(0);
            if let Some((id, text)) = tok.max_token() {
                if u64::from(id) >= vocab {
                    return Err(Error::data(
                        Location::file(&self.file.path).field("tokenizer.ggml.tokens"),
                        format!("token {text:?} has id {id}, outside the token embedding's {vocab} rows"),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Checks that the copy at `copy` is the file that was inspected (same metadata
    /// and tensors): what is registered is what was checked.
    pub(super) fn check_copy(&self, copy: &Path) -> Result<()> {
        let c = GgufFile::open(copy)?;
        if c.metadata != self.file.metadata || c.tensors != self.file.tensors || c.data_offset != self.file.data_offset
        {
            return Err(Error::data(Location::file(&self.file.path), "the file changed while it was being registered"));
        }
        Ok(())
    }
}

/// Token texts, types and (llama) scores of `tokenizer.ggml.*`.
fn token_table<'a>(m: &'a Meta<'_>, tokens: &'a [Value]) -> Result<(Vec<&'a str>, Vec<i64>, Vec<f64>)> {
    let path = &m.f.path;
    let texts: Vec<&str> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            t.as_str()
                .ok_or_else(|| Error::data(at(path, "tokenizer.ggml.tokens"), format!("token {i} is not a string")))
        })
        .collect::<Result<_>>()?;
    let n = texts.len();
    let types: Vec<i64> = match m.array("tokenizer.ggml.token_type")? {
        None => vec![NORMAL; n],
        Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().map_or(NORMAL, |x| x as i64)).collect(),
        Some(a) => {
            return Err(Error::data(at(path, "tokenizer.ggml.token_type"), format!("{} types for {n} tokens", a.len())))
        }
    };
    let scores: Vec<f64> = match m.array("tokenizer.ggml.scores")? {
        None => vec![0.0; n],
        Some(a) if a.len() == n => a.iter().map(|v| v.as_f64().unwrap_or(0.0)).collect(),
        Some(a) => {
            return Err(Error::data(at(path, "tokenizer.ggml.scores"), format!("{} scores for {n} tokens", a.len())))
        }
    };
    Ok((texts, types, scores))
}

/// The Split regex of llama.cpp's pre-tokenizer `pre`, as tokenizer.json spells it.
fn split_pattern(pre: &str) -> Option<&'static str> {
    Some(match pre {
        "llama-bpe" | "llama3" | "llama-v3" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        "qwen2" => {
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
        }
        _ => return None,
    })
}

/// tokenizer.json and tokenizer_config.json from `tokenizer.ggml.*`.
fn tokenizer_files(
    m: &Meta<'_>,
    tokens: &[Value],
    bos: Option<usize>,
    eos: Option<usize>,
    pad: Option<usize>,
) -> Result<(Json, Json)> {
    let path = &m.f.path;
    let kind = m.string("tokenizer.ggml.model")?.unwrap_or("llama");
    let (texts, types, scores) = token_table(m, tokens)?;
    let mut vocab = Map::new();
    let mut added = Vec::new();
    let mut unk = None;
    for (i, (&text, &ty)) in texts.iter().zip(&types).enumerate() {
        if ty == UNUSED {
            continue;
        }
        vocab.insert(text.to_string(), json!(i));
        if ty == UNKNOWN {
            unk = Some(text);
        }
        if matches!(ty, CONTROL | USER_DEFINED | UNKNOWN) {
            added.push(json!({
                "id": i, "content": text, "single_word": false, "lstrip": false, "rstrip": false,
                "normalized": ty == USER_DEFINED, "special": ty != USER_DEFINED,
            }));
        }
    }
    let tokenizer = match kind {
        "gpt2" => {
            let merges: Vec<Json> = match m.array("tokenizer.ggml.merges")? {
                None => Vec::new(),
                Some(a) => a
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match v.as_str().and_then(|s| s.split_once(' ')) {
                        Some((l, r)) => Ok(json!([l, r])),
                        None => Err(Error::data(
                            at(path, "tokenizer.ggml.merges"),
                            format!("merge {i} is not two tokens separated by a space"),
                        )),
                    })
                    .collect::<Result<_>>()?,
            };
            let pre = m.string("tokenizer.ggml.pre")?.unwrap_or("gpt-2");
            let byte_level = |regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": regex});
            let pre_tokenizer = match (pre, split_pattern(pre)) {
                (_, Some(p)) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Split", "pattern": {"Regex": p}, "behavior": "Isolated", "invert": false},
                    byte_level(false),
                ]}),
                ("smollm", _) => json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true},
                    byte_level(true),
                ]}),
                _ => byte_level(true),
            };
            json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": null,
                "pre_tokenizer": pre_tokenizer,
                "post_processor": null,
                "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
                "model": {
                    "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
                    "ignore_merges": split_pattern(pre).is_some() && pre != "qwen2",
                    "vocab": vocab, "merges": merges,
                },
            })
        }
        "llama" => {
            let merges = spm_merges(&texts, &types, &scores);
            let prefix = m.get("tokenizer.ggml.add_space_prefix").and_then(Value::as_bool).unwrap_or(true);
            let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"});
            let normalizer = if prefix {
                json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "\u{2581}"}, replace]})
            } else {
                replace
            };
            let mut decoders = vec![
                json!({"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "}),
                json!({"type": "ByteFallback"}),
                json!({"type": "Fuse"}),
            ];
            if prefix {
                decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
            }
            json!({
                "version": "1.0",
                "truncation": null,
                "padding": null,
                "added_tokens": added,
                "normalizer": normalizer,
                "pre_tokenizer": null,
                "post_processor": null,
                "decoder": {"type": "Sequence", "decoders": decoders},
                "model": {
                    "type": "BPE", "dropout": null, "unk_token": unk, "continuing_subword_prefix": null,
                    "end_of_word_suffix": null, "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
                    "vocab": vocab, "merges": merges,
                },
            })
        }
        other => {
            return Err(Error::data(
                at(path, "tokenizer.ggml.model"),
                format!("tokenizer `{other}` is not supported (gpt2: byte-level BPE; llama: SentencePiece-style BPE)"),
            ))
        }
    };
    let text = |id: Option<usize>| id.and_then(|i| texts.get(i)).map(|t| json!(t)).unwrap_or(Json::Null);
    let mut tc = Map::new();
    tc.insert("bos_token".into(), text(bos));
    tc.insert("eos_token".into(), text(eos));
    tc.insert("pad_token".into(), text(pad));
    if let Some(u) = unk {
        tc.insert("unk_token".into(), json!(u));
    }
    let flag = |k: &str, default: bool| m.get(k).and_then(Value::as_bool).unwrap_or(default);
    tc.insert("add_bos_token".into(), json!(flag("tokenizer.ggml.add_bos_token", kind == "llama")));
    tc.insert("add_eos_token".into(), json!(flag("tokenizer.ggml.add_eos_token", false)));
    if let Some(t) = m.string("tokenizer.chat_template")? {
        tc.insert("chat_template".into(), json!(t));
    }
    Ok((tokenizer, Json::Object(tc)))
}

/// BPE merges of a SentencePiece vocabulary, as transformers derives them: every split
/// of a normal piece into two normal pieces, ordered by the merged piece's score (high
/// first), then its id, then the ids of the two parts.
fn spm_merges(texts: &[&str], types: &[i64], scores: &[f64]) -> Vec<Json> {
    let index: HashMap<&str, usize> =
        texts.iter().enumerate().filter(|(i, _)| types[*i] == NORMAL).map(|(i, t)| (*t, i)).collect();
    let mut merges: Vec<(f64, usize, usize, usize)> = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        if types[i] != NORMAL || t.chars().nth(1).is_none() {
            continue;
        }
        for (k, _) in t.char_indices().skip(1) {
            if let (Some(&l), Some(&r)) = (index.get(&t[..k]), index.get(&t[k..])) {
                merges.push((scores[i], i, l, r));
            }
        }
    }
    merges.sort_by(|a, b| {
        b.0.partial_cmp(&a.0)
            .unwrap_or(std::cmp::Ordering::Equal)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then(a.3.cmp(&b.3))
    });
    merges.into_iter().map(|(_, _, l, r)| json!([texts[l], texts[r]])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_merges_follow_the_scores_of_the_merged_pieces() {
        let texts = ["<unk>", "a", "b", "c", "ab", "abc", "bc", "<0x41>"];
        let types = [UNKNOWN, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, NORMAL, 6];
        let scores = [0.0, 0.0, 0.0, 0.0, -0.0, -2.0, -1.0, 0.0];
        let got = spm_merges(&texts, &types, &scores);
        let want = vec![json!(["a", "b"]), json!(["b", "c"]), json!(["a", "bc"]), json!(["ab", "c"])];
        assert_eq!(got, want);
    }
}

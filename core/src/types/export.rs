//! Export and import: the formats a model leaves the home in, their options, and what
//! an export reports.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::names::named_enum;
use crate::error::{Error, Result};

named_enum! {
    /// Where a model goes.
    pub enum ExportFormat("export format") {
        /// A Hugging Face directory (`config.json`, `model.safetensors` (sharded above
        /// [`ExportOptions::max_shard_bytes`]), `generation_config.json`, tokenizer files,
        /// a model card); a LoRA adapter is merged into its base.
        Hf = "hf",
        /// A PEFT adapter directory (`adapter_config.json`, `adapter_model.safetensors`,
        /// a model card), what `PeftModel.from_pretrained` loads. Adapters only.
        Peft = "peft",
        /// One GGUF file, what llama.cpp loads (tensor types from
        /// [`ExportOptions::quantization`]); an adapter becomes a GGUF LoRA adapter
        /// (llama.cpp `--lora`, Ollama `ADAPTER`) unless [`ExportOptions::merge`] is set.
        Gguf = "gguf",
        /// A folder with `model.gguf`, a `Modelfile` (template, stop tokens, generation
        /// defaults) and a README, ready for `ollama create`; an adapter is merged into
        /// its base unless `merge` is false (then `adapter.gguf` and an `ADAPTER` line).
        Ollama = "ollama",
        /// One ZIP with the model's files, `manifest.json` (sha256 of every file,
        /// lineage, versions) and the model card; `import_bundle` restores it.
        Bundle = "bundle",
    }
}

named_enum! {
    /// The tensor type of a GGUF export. Norms, biases and other 1-D tensors stay f32,
    /// and a matrix whose rows are not whole blocks of the type falls back as
    /// llama.cpp's quantizer does.
    pub enum GgufType("GGUF type") {
        F32 = "f32",
        F16 = "f16",
        Bf16 = "bf16",
        /// 8-bit blocks of 32 with an f16 scale.
        Q8_0 = "q8_0",
        /// 4-bit blocks of 32 with an f16 scale (the output matrix at 6 bits, as
        /// llama.cpp's `Q4_0`).
        Q4_0 = "q4_0",
        /// 4-bit k-quants (super-blocks of 256) with the mix llama.cpp calls Q4_K_M:
        /// the output matrix, and half of the attention value and FFN down matrices, at
        /// 6 bits.
        Q4KM = "q4_k_m",
    }
}

/// How an export is written. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ExportOptions {
    /// Replace the destination when it exists (otherwise an existing destination is
    /// `already_exists`).
    pub overwrite: bool,
    /// HF, merged adapters: the largest safetensors shard in bytes before the weights are
    /// split into `model-0000i-of-0000n.safetensors` with an index (transformers'
    /// `max_shard_size`; default 2 GiB).
    pub max_shard_bytes: Option<u64>,
    /// HF, PEFT and the model card: where the base model is found outside this home
    /// (a Hub id or a path), written as the adapter's `base_model_name_or_path`.
    /// Default: the directory the base was registered from, or its `name@version` for
    /// a preset.
    pub base_model: Option<String>,
    /// GGUF and Ollama: the tensor type (default `f16`).
    pub quantization: Option<GgufType>,
    /// GGUF and Ollama, adapters: merge the adapter into its base and write one model
    /// (default: false for `gguf`, which then writes a GGUF LoRA adapter; true for
    /// `ollama`).
    pub merge: Option<bool>,
    /// Ollama: the model name shown in the README's `ollama create` line (default the
    /// model's name).
    pub name: Option<String>,
}

impl ExportOptions {
    pub fn validate(&self) -> Result<()> {
        if self.max_shard_bytes.is_some_and(|b| b < 1024) {
            return Err(Error::config("max_shard_bytes", "must be at least 1024"));
        }
        if let Some(n) = &self.name {
            let ok = |c: char| c.is_ascii_alphanumeric() || "._-:/".contains(c);
            if n.is_empty() || n.len() > 128 || !n.chars().all(ok) {
                return Err(Error::config(
                    "name",
                    format!("`{n}` is not an Ollama model name (1-128 of A-Z a-z 0-9 . _ - : /)"),
                ));
            }
        }
        Ok(())
    }
}

/// One file an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExportedFile {
    /// Relative to the export's destination ('/'-separated).
    pub path: String,
    pub bytes: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ExportReport {
    /// `name@version` of the exported model.
    pub model: String,
    pub format: ExportFormat,
    /// The destination (a directory, or the file for `gguf` and `bundle`).
    pub path: String,
    pub files: Vec<ExportedFile>,
}

/// How a bundle is imported.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default, deny_unknown_fields)]
pub struct ImportBundleOptions {
    /// Register the bundle's model under this name (its base keeps its own). Default:
    /// the name it had in the home it was exported from.
    pub name: Option<String>,
}
